"""`kftune serve` on a causal-LM export: OpenAI-compatible endpoints, asked with the `openai` client.

The real CLI serves a tiny random causal LM (tests/causal_lm.py: the bundled SmolLM2 tokenizer and
chat template, random weights) on free 127.0.0.1 ports. Greedy answers must be what
``model.generate`` gives for the same prompt in this process, streamed or not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import requests

from tests.causal_lm import MAX_NEW_TOKENS, MAX_SEQ_LENGTH, tiny_causal_lm_export
from tests.object_servers import HOST, free_port

MODEL_NAME = "tiny-lm"
PROMPT = "The movie was"
CHAT = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Was the movie good?"}]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return tiny_causal_lm_export(tmp_path_factory.mktemp("causal-lm") / "export")


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    http_port, grpc_port = free_port(), free_port()
    url = f"http://{HOST}:{http_port}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, "-m", "kftune", "serve", str(export), "--model-name", MODEL_NAME, "--threads", "1",
               "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"kftune serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if requests.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"kftune serve not ready:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/openai/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(export):
    """Greedy generation straight from transformers, in this process: ``generate(ids, max_new_tokens)`` -> text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(str(export))
    model = AutoModelForCausalLM.from_pretrained(str(export)).eval()

    def generate(ids: list[int], max_new_tokens: int) -> str:
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)

    generate.tokenizer = tokenizer
    return generate


def chat_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def test_completion_is_what_generate_gives(client, reference):
    answer = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=10, temperature=0)
    ids = reference.tokenizer(PROMPT).input_ids
    expected = reference(ids, 10)
    assert expected  # the tiny model says something, so the comparison means something
    assert answer.choices[0].text == expected
    assert answer.object == "text_completion" and answer.model == MODEL_NAME
    assert answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), 10)
    assert answer.usage.total_tokens == len(ids) + 10


def test_chat_completion_streamed_and_not(client, reference):
    answer = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=8, temperature=0)
    message = answer.choices[0].message
    assert message.role == "assistant"
    assert message.content == reference(chat_ids(reference.tokenizer, CHAT), 8)
    assert answer.choices[0].finish_reason in ("stop", "length")

    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [answer.choices[0].finish_reason]
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == answer.usage.prompt_tokens


def test_raw_stream_ends_with_done(server):
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True}
    with requests.post(f"{server}/openai/v1/completions", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_stop_string_cuts_the_text(client, reference):
    full = reference(reference.tokenizer(PROMPT).input_ids, 10)
    stop = full.strip()[:3]  # a stop string the greedy text contains: the answer ends before it
    expected = full[:full.find(stop)]
    answer = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=10, temperature=0, stop=[stop])
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == (expected, "stop")
    streamed = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=10, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_default_max_tokens_is_the_exports(client):
    answer = client.completions.create(model=MODEL_NAME, prompt=PROMPT, temperature=0)
    assert answer.usage.completion_tokens <= MAX_NEW_TOKENS
    if answer.choices[0].finish_reason == "length":
        assert answer.usage.completion_tokens == MAX_NEW_TOKENS


def test_seeded_sampling_repeats(client):
    def ask():
        return client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=1.0,
                                         seed=7).choices[0].text

    assert ask() == ask()


def test_models_and_the_v1_prefix(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    # KServe's OpenAI layer with KSERVE_OPENAI_ROUTE_PREFIX="" serves /v1/...: the same answers there
    plain = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in plain.models.list().data] == [MODEL_NAME]
    same = dict(model=MODEL_NAME, messages=CHAT, max_tokens=4, temperature=0)
    assert (plain.chat.completions.create(**same).choices[0].message.content
            == client.chat.completions.create(**same).choices[0].message.content)
    # KServe's own V1 listing at the same path keeps its "models" key
    assert requests.get(f"{server}/v1/models", timeout=10).json()["models"] == [MODEL_NAME]


@pytest.mark.parametrize("kwargs, param, message", [
    (dict(prompt=PROMPT, n=2), "n", "only n=1"),
    (dict(prompt="word " * (MAX_SEQ_LENGTH + 10)), "prompt", "maximum context length is 128"),
    (dict(prompt=PROMPT, max_tokens=MAX_SEQ_LENGTH), "max_tokens", "maximum context length is 128"),
    (dict(prompt=PROMPT, temperature=5), "temperature", "less than or equal to 2"),
    (dict(prompt=""), "prompt", "empty"),
])  # fmt: skip
def test_bad_requests_are_400_with_a_message(client, kwargs, param, message):
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL_NAME, **kwargs)
    assert raised.value.status_code == 400
    error = raised.value.body
    assert message in error["message"] and error["param"] == param and error["type"] == "BadRequestError"


def test_other_errors(client, server):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="another", prompt=PROMPT)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL_NAME, messages=[])
    r = requests.post(f"{server}/openai/v1/chat/completions", data="{not json", timeout=10,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    # a V1 predict on a causal LM says where to go; the server goes on answering
    r = requests.post(f"{server}/v1/models/{MODEL_NAME}:predict", json={"instances": ["x"]}, timeout=10)
    assert r.status_code == 400 and "/openai/v1/completions" in r.text
    assert client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=1).usage.completion_tokens == 1


def test_the_export_says_what_is_served(tmp_path, export):
    from kftune.components.serve.serve import export_task
    from kftune.errors import DataError

    assert export_task(export) == "causal-lm"
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    assert export_task(tmp_path) == "causal-lm"  # no report: the architecture says it
    (tmp_path / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    assert export_task(tmp_path) == "classification"
    (tmp_path / "export_report.json").write_text('{"task": "regression"}')
    assert export_task(tmp_path) == "regression"  # any registered task
    (tmp_path / "export_report.json").write_text('{"task": "summarization"}')
    with pytest.raises(DataError, match="names task 'summarization'"):
        export_task(tmp_path)


@pytest.mark.parametrize("extra, message", [
    (["--workers", "2"], "a causal LM is served by one HTTP worker"),
    (["--int8"], "a causal LM has none"),
    (["--max-seq-length", "1024"], "exceeds the model's max_position_embeddings (512)"),
])  # fmt: skip
def test_cli_errors_are_one_line(export, capsys, extra, message):
    from kftune.cli.main import main

    assert main(["serve", str(export), "--no-grpc", *extra]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("kftune: error:")]
    assert "Traceback" not in err and len(errors) == 1 and message in errors[0], err
