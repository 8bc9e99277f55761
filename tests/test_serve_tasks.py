"""`kftune serve` for regression, multilabel and token classification: a real KServe model server in a
subprocess per task, asked over HTTP (V1 and V2) with raw texts.

Each task's answers must equal two in-process predictions for the same texts: the kserve model's own
``predict`` on the same export (what tests/test_tasks.py and tests/test_token_classification.py check), and
PyTorch on the trained model through the task's output hooks (an independent check of the ONNX export and of the
text cleaning, tokenization and truncation the server does).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from tests.serving import Server, v2_body

TEXTS = {
    "regression": ["the film was wonderful and superb", "  an <b>awful</b>,   dreadful plot &amp; a dull scene\n",
                   "good"],
    "multilabel": ["the song and the gun fight", "a melody, a cast and   <i>blood</i>", "the plot of the story"],
    "token-classification": ["Chelsea Smith lives in Austin", "We met Florence near   Georgia today", "",
                             "  Paris Smith lives in  Jordan "],
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, regression_run, multilabel_run, token_run) -> dict[str, tuple[Path, Path]]:
    """Per task: (trained model, ONNX export), one export each (the token run exports itself)."""
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model

    dirs = {}
    for task, run in (("regression", regression_run), ("multilabel", multilabel_run)):
        work, dataset = run[0], run[1]
        out = tmp_path_factory.mktemp(f"serve-{task}") / "onnx"
        export_model(work / "model", dataset, work / "test_split", out, ExportConfig(quantize_int8=False))
        dirs[task] = (work / "model", out)
    dirs["token-classification"] = (token_run[0] / "model", token_run[0] / "export")
    return dirs


@pytest.fixture(scope="module")
def servers(model_dirs, tmp_path_factory):
    """One ``kftune serve`` per task (HTTP only), started together so that they load in parallel."""
    logs = tmp_path_factory.mktemp("serve-tasks-log")
    started = {task: Server(str(export), logs / f"{task}.log", "--no-grpc", model_name=task.replace("-", ""))
               for task, (_, export) in model_dirs.items()}
    try:
        for srv in started.values():
            srv.wait_ready()
        yield started
    finally:
        codes = {task: srv.stop() for task, srv in started.items()}
    assert codes == dict.fromkeys(started, 0), {t: s.log.read_text() for t, s in started.items()}  # clean SIGTERM


def in_process(export: Path, name: str, body):
    """The kserve model's answer to ``body`` in this process."""
    from kftune.components.serve.serve import TextModel

    server = TextModel(name, export)
    assert server.load()
    return asyncio.run(server.predict(body))


def pytorch_answers(task: str, model_dir: Path, export: Path, texts: list[str]) -> list[dict]:
    """The task's V1 answers computed with PyTorch on the trained model, tokenized as the export says."""
    from transformers import AutoTokenizer

    from kftune.data.schema import dataset_task
    from kftune.inference.exported import export_max_seq_length
    from kftune.inference.runners import torch_runner
    from kftune.models.encoder import load_encoder_model
    from kftune.tasks import task_named

    spec, info, max_length = task_named(task), dataset_task(model_dir), export_max_seq_length(export)
    run = torch_runner(load_encoder_model(model_dir, spec))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    answers, _ = spec.answers(run, tokenizer, {"text": texts}, info, max_length, 64)
    return answers


def assert_same_answers(got: list[dict], expected: list[dict], atol: float = 1e-4) -> None:
    """Equal answers: the same keys, labels and spans; numbers within ``atol``."""
    assert len(got) == len(expected)

    def same(a, b, where):
        if isinstance(b, dict):
            assert isinstance(a, dict) and set(a) == set(b), where
            for key in b:
                same(a[key], b[key], f"{where}.{key}")
        elif isinstance(b, list):
            assert isinstance(a, list) and len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                same(x, y, f"{where}[{i}]")
        elif isinstance(b, float):
            assert a == pytest.approx(b, abs=atol), where
        else:
            assert a == b, where

    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        same(a, b, f"answer {i}")


def test_regression_answers_a_score_over_v1_and_v2(servers, model_dirs):
    srv, (model_dir, export), texts = servers["regression"], model_dirs["regression"], TEXTS["regression"]
    v1 = srv.v1({"instances": texts})
    assert v1.status_code == 200, v1.text
    predictions = v1.json()["predictions"]
    assert all(set(p) == {"score"} and isinstance(p["score"], float) for p in predictions)
    assert predictions[0]["score"] > predictions[1]["score"]  # the model learnt the cues' signs
    assert_same_answers(predictions, in_process(export, "regression", {"instances": texts})["predictions"], 1e-6)
    assert_same_answers(predictions, pytorch_answers("regression", model_dir, export, texts))

    v2 = srv.v2(v2_body(texts))
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("score", "FP32", [len(texts)])
    np.testing.assert_allclose(output["data"], [p["score"] for p in predictions], atol=1e-5)


def test_multilabel_answers_labels_probabilities_and_thresholds_over_v1_and_v2(servers, model_dirs):
    from kftune.data.schema import dataset_task

    srv, (model_dir, export), texts = servers["multilabel"], model_dirs["multilabel"], TEXTS["multilabel"]
    names, thresholds = dataset_task(model_dir)["labels"], dataset_task(model_dir)["thresholds"]
    predictions = srv.v1({"instances": texts}).json()["predictions"]
    for p in predictions:
        assert set(p) == {"labels", "probabilities", "thresholds"} and list(p["probabilities"]) == names
        assert p["thresholds"] == pytest.approx(dict(zip(names, thresholds, strict=True)))
        assert p["labels"] == [n for n in names if p["probabilities"][n] >= p["thresholds"][n]]
    assert {"music", "violence"} <= set(predictions[0]["labels"]), predictions[0]  # "song", "gun fight"
    assert_same_answers(predictions, in_process(export, "multilabel", {"instances": texts})["predictions"], 1e-6)
    assert_same_answers(predictions, pytorch_answers("multilabel", model_dir, export, texts))

    body = srv.v2(v2_body(texts)).json()
    outputs = {o["name"]: o for o in body["outputs"]}
    assert set(outputs) == {"labels", "predicted", "probabilities", "thresholds"}
    assert outputs["labels"]["datatype"] == "BYTES"
    assert [json.loads(x) for x in outputs["labels"]["data"]] == [p["labels"] for p in predictions]
    assert outputs["predicted"]["datatype"] == "INT64" and outputs["predicted"]["shape"] == [len(texts), len(names)]
    chosen = np.reshape(outputs["predicted"]["data"], (len(texts), len(names)))
    assert [[n for n, c in zip(names, row, strict=True) if c] for row in chosen] == [p["labels"] for p in predictions]
    for name in ("probabilities", "thresholds"):
        assert outputs[name]["datatype"] == "FP32" and outputs[name]["shape"] == [len(texts), len(names)]
        np.testing.assert_allclose(np.reshape(outputs[name]["data"], (len(texts), len(names))),
                                   [[p[name][n] for n in names] for p in predictions], atol=1e-6)


def test_token_classification_answers_entity_spans_over_v1_and_v2(servers, model_dirs):
    srv, (model_dir, export), texts = (servers["token-classification"], model_dirs["token-classification"],
                                       TEXTS["token-classification"])
    predictions = srv.v1({"instances": texts}).json()["predictions"]
    assert [set(p) for p in predictions] == [{"entities"}] * len(texts)
    entities = [p["entities"] for p in predictions]
    assert entities[2] == []  # an empty text has no entities, and is no error
    for text, spans in zip(texts, entities, strict=True):
        for span in spans:
            assert set(span) == {"entity_group", "score", "word", "start", "end"}
            assert text[span["start"]:span["end"]] == span["word"] and 0 < span["score"] <= 1  # offsets as sent
    assert ("LOC", "Georgia") in {(e["entity_group"], e["word"]) for e in entities[1]}, entities[1]
    assert_same_answers(predictions, in_process(export, "ner", {"instances": texts})["predictions"], 1e-6)
    assert_same_answers(predictions, pytorch_answers("token-classification", model_dir, export, texts))

    body = srv.v2(v2_body(texts)).json()
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("entities", "BYTES", [len(texts)])
    assert_same_answers([{"entities": json.loads(x)} for x in output["data"]], predictions, 1e-6)


@pytest.mark.parametrize("task", list(TEXTS))
def test_metadata_names_the_tasks_outputs_and_one_text_is_answered_alone_the_same(servers, task):
    import requests

    srv = servers[task]
    metadata = requests.get(f"{srv.url}/v2/models/{srv.model_name}", timeout=10).json()
    expected = {"regression": {"score"}, "multilabel": {"labels", "predicted", "probabilities", "thresholds"},
                "token-classification": {"entities"}}[task]
    assert {o["name"] for o in metadata["outputs"]} == expected
    texts = [t for t in TEXTS[task] if t.strip()]
    together = srv.v1({"instances": texts}).json()["predictions"]
    alone = [srv.v1({"instances": [{"text": t}]}).json()["predictions"][0] for t in texts]
    assert_same_answers(alone, together, 1e-5)  # padded alone or with others: the same answer
    bad = srv.v1({"instances": ["fine", 3]})
    assert bad.status_code == 400 and "instances[1]: expected a string" in bad.json()["error"]
