"""Task causal-lm: instruction data in its three layouts, completion-only labels, packing equal to
padding, LoRA training with exact resume after SIGKILL, evaluation against the base model, and
an export whose merged model and adapter reproduce the trained model. On a tiny random Llama
with the bundled SmolLM2 tokenizer (its real chat template)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from kftune.components.preprocess.config import PreprocessConfig
from kftune.components.preprocess.preprocess import prepare, preprocess
from kftune.data.chat import PLAIN_TEMPLATE, normalise_answer, read_answer
from kftune.errors import ConfigError, DataError
from kftune.tasks import TASKS
from kftune.training.causal_lm_recipe import CausalCollator, token_losses
from kftune.training.checkpoint import latest_checkpoint
from kftune.training.config import TrainConfig
from tests.intervals import check_intervals, check_the_gate_can_require_the_lower_bound


def prepare_instructions(config):
    """(rows, rows read, removed per rule with ``prompt_truncated``, layout, tokenizer): causal-LM data as the task
    prepares it."""
    prepared = prepare(config)
    removed = {**prepared.removed, "prompt_truncated": prepared.stats["prompt_truncated"]}
    return prepared.frame, prepared.rows_read, removed, prepared.stats["instruction_format"], prepared.tokenizer


def _config(data: Path, model: Path, **overrides) -> PreprocessConfig:
    return PreprocessConfig(task="causal-lm", data=str(data), model=str(model), **overrides)


# --- settings ---------------------------------------------------------------------------------------

def test_auto_settings_take_the_tasks_defaults_and_explicit_values_win():
    assert TrainConfig().task == "auto" and PreprocessConfig().task == "classification"  # the bundled data's
    classification, causal = TrainConfig(task="classification"), TrainConfig(task="causal-lm")
    assert (classification.training_mode, classification.metric_for_best_model, classification.learning_rate,
            classification.model) == ("full", "f1_macro", 1e-4, "bundled:all-MiniLM-L6-v2")
    assert (causal.training_mode, causal.metric_for_best_model, causal.model) == (
        "lora", "loss", "bundled:SmolLM2-135M-Instruct")
    assert TrainConfig(task="causal-lm", training_mode="full", learning_rate=3e-5).training_mode == "full"
    assert PreprocessConfig(task="causal-lm").data == "bundled:rotten-tomatoes-instructions"
    with pytest.raises(ConfigError, match="not a score of task causal-lm"):
        TrainConfig(task="causal-lm", metric_for_best_model="f1_macro").validate()
    with pytest.raises(ConfigError, match="prompt_tuning is for tasks classification, .*; task causal-lm trains with"):
        TrainConfig(task="causal-lm", training_mode="prompt_tuning").validate()


def test_every_auto_setting_says_what_each_task_makes_of_it():
    """The per-task values live in the task modules (src/kftune/tasks/); the descriptions must name them."""
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.settings.catalog import settings_of
    from kftune.tasks import TASKS

    helps = {s.name: s.help for cls in (TrainConfig, PreprocessConfig, EvaluateConfig) for s in settings_of(cls)}
    for task, spec in TASKS.items():
        for name, value in spec.defaults.items():
            assert f"{task}: {value}" in helps[name], (name, task)


# --- data -------------------------------------------------------------------------------------------

def test_three_layouts_give_the_same_conversations(tmp_path, tiny_causal_lm):
    rows = [("Say yes.", "yes"), ("Say no.", "no"), ("Name a colour.", "blue")] * 4
    rows = [(f"{p} ({i})", c) for i, (p, c) in enumerate(rows)]
    pd.DataFrame({"prompt": [p for p, _ in rows], "completion": [c for _, c in rows]}).to_csv(tmp_path / "pc.csv")
    pd.DataFrame({"instruction": [p for p, _ in rows], "input": "", "output": [c for _, c in rows]}).to_parquet(
        tmp_path / "alpaca.parquet")
    with open(tmp_path / "chat.jsonl", "w") as f:
        for p, c in rows:
            f.write(json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]})
                    + "\n")
    encoded = {}
    for name in ("pc.csv", "alpaca.parquet", "chat.jsonl"):
        frame, _, removed, layout, _ = prepare_instructions(_config(tmp_path / name, tiny_causal_lm))
        encoded[layout] = frame
        assert removed["too_long"] == 0
    assert set(encoded) == {"prompt-completion", "alpaca", "messages"}
    ids = [frame["input_ids"].tolist() for frame in encoded.values()]
    assert ids[0] == ids[1] == ids[2]


def test_labels_cover_exactly_the_assistant_turn(tmp_path, tiny_causal_lm):
    from transformers import AutoTokenizer

    path = tmp_path / "d.jsonl"
    pd.DataFrame({"prompt": [f"Question {i}?" for i in range(12)], "completion": [f"Answer {i}." for i in range(12)]}
                 ).to_json(path, orient="records", lines=True)
    frame, *_ = prepare_instructions(_config(path, tiny_causal_lm))
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    row = frame.iloc[3]
    trained = [t for t in row["labels"] if t != -100]
    assert tokenizer.decode(trained).startswith("Answer 3.<|im_end|>")
    first = row["labels"].index(trained[0]) if isinstance(row["labels"], list) else list(row["labels"]).index(
        trained[0])
    assert tokenizer.decode(row["input_ids"][:first]).endswith("<|im_start|>assistant\n")
    assert row["prompt"].endswith("<|im_start|>assistant\n") and row["reference"] == "Answer 3."


def test_a_model_without_chat_template_gets_the_plain_one(tmp_path, tiny_causal_lm):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_causal_lm, model)
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    path = tmp_path / "d.jsonl"
    pd.DataFrame({"prompt": [f"Q{i}" for i in range(12)], "completion": [f"A{i}" for i in range(12)]}).to_json(
        path, orient="records", lines=True)
    frame, _, _, _, tokenizer = prepare_instructions(_config(path, model))
    assert tokenizer.chat_template == PLAIN_TEMPLATE
    assert frame.iloc[0]["prompt"] == "### Instruction:\nQ0\n\n### Response:\n"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("rows", "message"), [
    ([{"question": "a", "answer": "b"}] * 12, r"no recognisable instruction columns \(found: question, answer\)"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 3
     + [{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
     r"row 4: unknown role 'robot'"),
    ([{"prompt": f"p{i}", "completion": "c"} for i in range(5)] + [{"prompt": "p", "completion": "  "}],
     r"row 6: empty completion \(completion\)"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], r"row 1: the conversation ends with a user message"),
    ([{"prompt": f"{i} " + "word " * 400, "completion": "c"} for i in range(12)],
     r"every example is longer than max_seq_length=256"),
])
def test_bad_instruction_data_gets_one_line_naming_file_and_row(tmp_path, tiny_causal_lm, rows, message):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message) as error:
        preprocess(_config(path, tiny_causal_lm), tmp_path / "out", tmp_path / "test_split")
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "test_split").exists()


def test_overlong_examples_are_dropped_or_truncated_on_the_prompt_side(tmp_path, tiny_causal_lm):
    rows = [{"prompt": f"short {i}", "completion": "ok"} for i in range(11)]
    rows.append({"prompt": "long " * 300 + "END", "completion": "ok"})
    path = _jsonl(tmp_path / "d.jsonl", rows)
    _, _, removed, _, _ = prepare_instructions(_config(path, tiny_causal_lm, max_seq_length=64))
    assert removed["too_long"] == 1 and removed["prompt_truncated"] == 0
    frame, _, removed, _, _ = prepare_instructions(_config(path, tiny_causal_lm, max_seq_length=64,
                                                           overlong="truncate_prompt"))
    assert removed["too_long"] == 0 and removed["prompt_truncated"] == 1
    long = frame[frame["prompt"].str.contains("long")].iloc[0]
    assert len(long["input_ids"]) <= 64 and "END" not in long["prompt"] and long["reference"] == "ok"


def test_dataset_artifact_and_report(prepared_lm):
    stats = json.loads((prepared_lm / "stats.json").read_text())
    assert stats["task"] == "causal-lm" and stats["answers"] == ["negative", "positive"]
    assert sum(stats["split_sizes"].values()) == stats["rows_used"]
    # the generation budget's default comes from the training split alone, never from a test completion
    from kftune.data.schema import load_splits

    train = load_splits(prepared_lm)[0]["train"]
    assert json.loads((prepared_lm / "task.json").read_text())["completion_max_tokens"] == max(
        train["completion_length"]) >= 2


def test_answer_normalisation():
    assert normalise_answer("  Positive.\n") == "positive"
    assert read_answer("Positive! The review praises it.", ["negative", "positive"]) == "positive"
    # lenient: the first allowed answer named as a word, after any preamble; never part of a longer word
    assert read_answer("The review is positive", ["negative", "positive"]) == "positive"
    assert read_answer("Negative at first, then positive.", ["negative", "positive"]) == "negative"
    assert read_answer("The text message is indeed spam. It", ["ham", "spam"]) == "spam"
    assert read_answer("It is not spam.", ["not spam", "spam"]) == "not spam"  # the longest at one position
    assert read_answer("positively", ["negative", "positive"]) == ""
    assert read_answer("Spammy hamster", ["ham", "spam"]) == ""


# --- training ---------------------------------------------------------------------------------------

def test_packed_batches_compute_the_padded_batches_loss_and_gradients(prepared_lm, tiny_causal_lm):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    split = load_from_disk(str(prepared_lm / "splits"))["train"]
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32).eval()
    results = []
    for packing in (False, True):
        model.zero_grad()
        batch = CausalCollator(split, 2, packing=packing)(list(range(8)))
        total, count = token_losses(model, batch)
        (total / count).backward()
        results.append((total.item(), count, model.model.layers[0].mlp.up_proj.weight.grad.clone()))
    (padded, n_padded, g_padded), (packed, n_packed, g_packed) = results
    assert n_padded == n_packed > 0
    assert packed == pytest.approx(padded, rel=1e-5)
    torch.testing.assert_close(g_packed, g_padded, rtol=1e-4, atol=1e-6)


def test_each_prompts_reference_loss_is_its_loss_scored_alone(prepared_lm_test, tiny_causal_lm):
    """Evaluate's per-prompt losses (the statistics of perplexity's interval) come from packed batches, each position's
    loss given to the prompt it lies in: each is the prompt's loss scored alone, and together the split's loss."""
    from transformers import AutoModelForCausalLM

    from kftune.data.schema import load_test_split
    from kftune.tasks.causal_lm.evaluation import reference_loss, reference_losses

    split = load_test_split(prepared_lm_test)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32).eval()
    losses, tokens = reference_losses(model, split, 2, batch_size=8)
    collate = CausalCollator(split, 2, packing=True)
    with torch.no_grad():
        alone = [token_losses(model, collate([i])) for i in range(len(split))]
    assert losses.tolist() == pytest.approx([loss.item() for loss, _ in alone], rel=1e-4)
    assert tokens.tolist() == [n for _, n in alone] and tokens.min() > 0
    assert reference_loss(model, split, 2) == pytest.approx(sum(loss.item() for loss, _ in alone) / tokens.sum())


def test_qlora_needs_cuda_and_says_so(tiny_causal_lm):
    """QLoRA's 4-bit base is a bitsandbytes CUDA kernel; on a CPU the run stops with one clear line."""
    from kftune.models.causal_lm import build_causal_lm

    config = TrainConfig(task="causal-lm", model=str(tiny_causal_lm), training_mode="qlora")
    config.validate()
    with pytest.raises(ConfigError, match="qlora quantizes the base model with bitsandbytes on a CUDA GPU"):
        build_causal_lm(config, str(tiny_causal_lm), torch.device("cpu"), "no")
    with pytest.raises(ConfigError, match="qlora is for tasks causal-lm, dpo;"):
        TrainConfig(training_mode="qlora").validate()


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                              ("no", torch.float32)])
def test_qlora_computes_in_the_training_precision(monkeypatch, tiny_causal_lm, precision, dtype):
    """The 4-bit layers compute in the dtype the run trains in (fp16 on a GPU without native bf16), and the recipe
    hands the run's resolved precision to the quantisation config (the 4-bit load itself needs bitsandbytes and CUDA:
    stopped here once transformers is asked for it)."""
    from transformers import AutoModelForCausalLM

    from kftune.models.causal_lm import quantization_config
    from kftune.training.causal_lm_recipe import CausalLMRecipe
    from kftune.training.recipe import Run

    quantized = quantization_config(precision)
    assert quantized.load_in_4bit and quantized.bnb_4bit_quant_type == "nf4" and quantized.bnb_4bit_use_double_quant
    assert quantized.bnb_4bit_compute_dtype == dtype

    asked = {}

    def load(path, **kwargs):
        asked.update(kwargs)
        raise InterruptedError("not loaded on a CPU")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", load)
    config = TrainConfig(task="causal-lm", model=str(tiny_causal_lm), training_mode="qlora")
    run = Run(config, Path("unused"), {}, str(tiny_causal_lm), torch.device("cuda", 1), precision)
    with pytest.raises(InterruptedError):
        CausalLMRecipe().build_model(run)
    assert asked["quantization_config"].bnb_4bit_compute_dtype == dtype and asked["device_map"] == {"": 1}


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_gradient_checkpointing_is_non_reentrant_in_every_mode(tiny_causal_lm, mode):
    """torch's checkpoint defaults to the reentrant variant when not told, and peft's QLoRA preparation does not tell
    it: kftune asks for the non-reentrant one there too. peft turns checkpointing on only for a quantised model;
    the flag bitsandbytes' 4-bit load sets (CUDA only) stands in for it on this fp32 model."""
    from transformers import AutoModelForCausalLM

    from kftune.models.causal_lm import prepare_for_training

    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm), dtype=torch.float32)
    if mode == "qlora":
        model.is_loaded_in_4bit = True
    model = prepare_for_training(model, TrainConfig(task="causal-lm", model=str(tiny_causal_lm), training_mode=mode,
                                                    gradient_checkpointing=True))
    assert model.is_activation_checkpointing
    recomputed = [m._gradient_checkpointing_func for m in model.modules() if getattr(m, "gradient_checkpointing", 0)]
    assert recomputed and all(func.keywords == {"use_reentrant": False} for func in recomputed)


def test_lora_training_writes_merged_model_and_adapter(trained_lm):
    history = json.loads((trained_lm / "training_history.json").read_text())
    assert history["best_metric"] == "loss" and history["training_mode"] == "lora"
    assert {"val_loss", "val_perplexity"} <= set(history["epochs"][0])
    assert history["epochs"][-1]["val_loss"] < history["epochs"][0]["train_loss"]
    assert (trained_lm / "model.safetensors").is_file() and (trained_lm / "adapter" / "adapter_config.json").is_file()
    adapter = load_file(trained_lm / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)


def test_gradient_checkpointing_recomputes_the_same_training(tmp_path, prepared_lm, tiny_causal_lm):
    """Activations recomputed in the backward pass (RNG state kept for dropout): the same weights come out."""
    from kftune.models.causal_lm import build_causal_lm
    from kftune.training.loop import train

    on = build_causal_lm(TrainConfig(task="causal-lm", model=str(tiny_causal_lm), gradient_checkpointing=True),
                         str(tiny_causal_lm), torch.device("cpu"), "no")
    assert on.get_base_model().is_activation_checkpointing
    adapters = []
    for checkpointing in (False, True):
        config = TrainConfig(task="causal-lm", model=str(tiny_causal_lm), num_train_epochs=1, max_steps=3,
                             per_device_train_batch_size=8, learning_rate=1e-2, gradient_checkpointing=checkpointing)
        train(config, prepared_lm, tmp_path / str(checkpointing))
        adapters.append(load_file(tmp_path / str(checkpointing) / "adapter" / "adapter_model.safetensors"))
    for name in adapters[0]:
        torch.testing.assert_close(adapters[1][name], adapters[0][name], rtol=1e-5, atol=1e-7)


def _lm_config(model: Path, checkpoint_dir: Path) -> TrainConfig:
    return TrainConfig(task="causal-lm", model=str(model), num_train_epochs=2, per_device_train_batch_size=4,
                       learning_rate=5e-3, save_steps=5, save_total_limit=0, early_stopping_patience=0,
                       logging_steps=5, checkpoint_dir=str(checkpoint_dir))


def _run(config: TrainConfig, dataset: Path, out: Path, work: Path) -> list[str]:
    work.mkdir(parents=True, exist_ok=True)
    config.to_json(work / "config.json")
    return [sys.executable, "-m", "kftune.training.loop", "--config", str(work / "config.json"),
            "--dataset", str(dataset), "--output", str(out)]


def test_sigkill_mid_training_then_rerun_gives_identical_lora_weights(tmp_path, prepared_lm, tiny_causal_lm):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    clean = _run(_lm_config(tiny_causal_lm, tmp_path / "a.ckpt"), prepared_lm, tmp_path / "a", tmp_path / "a.work")
    subprocess.run(clean, env=env, check=True, capture_output=True)

    command = _run(_lm_config(tiny_causal_lm, tmp_path / "b.ckpt"), prepared_lm, tmp_path / "b", tmp_path / "b.work")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (tmp_path / "b.ckpt" / "checkpoint-00000060").exists():  # 48 steps an epoch: mid-epoch 2
        assert process.poll() is None and time.monotonic() < deadline, "training ended before the checkpoint"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "b").exists()
    state = latest_checkpoint(tmp_path / "b.ckpt")[1]
    assert state["micro"] > 0 and all("lora_" in k for k in state["model"]), "a mid-epoch checkpoint of LoRA weights"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "resumed from" in rerun.stdout
    before = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    after = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


# --- evaluation and export --------------------------------------------------------------------------

def test_evaluation_compares_with_the_base_model_zero_shot_and_few_shot(trained_lm, prepared_lm, prepared_lm_test):
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate, flat_metrics
    from kftune.components.evaluate.report import evaluation_markdown, evaluation_report_html

    result = evaluate(trained_lm, prepared_lm, prepared_lm_test, EvaluateConfig(task="causal-lm",
                                                                                min_gain_over_baseline=-1))
    assert result["primary_metric"] == "answer_accuracy"
    # the gate's baseline is the base model few-shot; the zero-shot one is reported beside it
    assert result["baseline"] == "base_model_few_shot" == TASKS["causal-lm"].baseline
    assert set(result["baselines"]) == {"base_model_zero_shot", "base_model_few_shot"}
    for scores in (result["model"], *result["baselines"].values()):
        assert {"exact_match", "answer_accuracy", "rouge_l", "perplexity", "loss"} <= set(scores)
        # an exact match is a right answer (the bundled references are allowed answers)
        assert 0 <= scores["exact_match"] <= scores["answer_accuracy"] <= 1
    few, zero = result["baselines"]["base_model_few_shot"], result["baselines"]["base_model_zero_shot"]
    assert result["delta_vs_baseline"] == {k: TASKS["causal-lm"].gain(k, result["model"][k], few[k])
                                           for k in ("answer_accuracy", "exact_match", "rouge_l", "perplexity")}
    assert few != zero  # asked other prompts: with examples before them
    assert result["model"]["loss"] < zero["loss"]  # training lowered it
    assert result["delta_vs_baseline"]["perplexity"] > 0
    assert result["few_shot"]["examples"] == 4 and result["few_shot"]["mean_examples"] == 4
    assert result["max_new_tokens"] < result["baseline_max_new_tokens"] == 32
    assert result["few_shot"]["first_prompt"].count("<|im_start|>assistant") == 5
    assert len(result["samples"]) == min(20, result["test_size"])
    assert all({"base_model_zero_shot", "base_model_few_shot", "fine_tuned"} <= set(s) for s in result["samples"])
    html = evaluation_report_html(result)
    assert "Sample answers" in html and "base model few-shot" in html and "base model zero-shot" in html
    assert "95% interval" in html and "as the few-shot baseline was asked it" in html
    assert "| delta vs base model zero-shot |" in evaluation_markdown(result)
    flat = flat_metrics(result)
    assert flat["passed"] == float(result["passed"])
    assert flat["base_model_few_shot_answer_accuracy"] == few["answer_accuracy"]
    assert flat["base_model_zero_shot_answer_accuracy"] == zero["answer_accuracy"]
    # every gain with its paired bootstrap interval over the prompts; the gate can hold the lower bound
    check_intervals(result)
    check_the_gate_can_require_the_lower_bound(result, TASKS["causal-lm"])
    assert any("gain over base_model_few_shot" in check for check in result["checks"])


PREAMBLE = "Having read this review closely, I would say that it is positive."
"""What the preamble model answers every prompt with: the right answer where the reference is positive, after a
preamble longer than the fine-tuned model's generation budget."""


def test_an_answer_after_a_preamble_is_right_under_answer_accuracy_and_wrong_under_exact_match(
        tmp_path, trained_lm, prepared_lm, prepared_lm_test):
    """A base model that names the right answer only after a preamble: each baseline's answer accuracy counts it
    right on the positive prompts (and wrong on the negative ones), its exact match wrong everywhere; cut to the
    fine-tuned model's budget (shorter than the preamble) it would have answered nothing."""
    import shutil

    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate
    from kftune.data.schema import load_test_split
    from tests.causal_lm import make_preamble_lm

    model = tmp_path / "model"
    shutil.copytree(trained_lm, model)
    history = json.loads((model / "training_history.json").read_text())
    history["config"]["model"] = str(make_preamble_lm(tmp_path / "preamble", PREAMBLE))
    (model / "training_history.json").write_text(json.dumps(history))
    references = [normalise_answer(r) for r in load_test_split(prepared_lm_test)["reference"]]
    positive = float(np.mean([r == "positive" for r in references]))
    assert 0 < positive < 1

    result = evaluate(model, prepared_lm, prepared_lm_test, EvaluateConfig(task="causal-lm",
                                                                           min_gain_over_baseline=-1))
    for name in ("base_model_zero_shot", "base_model_few_shot"):
        assert all(s[name] == PREAMBLE for s in result["samples"])
        scores = result["baselines"][name]
        assert scores["answer_accuracy"] == pytest.approx(positive) and scores["unanswered"] == 0
        assert scores["exact_match"] == 0
    # the gain is over the few-shot baseline's lenient answer accuracy
    assert result["delta_vs_baseline"]["answer_accuracy"] == pytest.approx(
        result["model"]["answer_accuracy"] - positive)

    # with no more room than the fine-tuned model's budget the preamble is cut before the answer
    short = evaluate(model, prepared_lm, prepared_lm_test, EvaluateConfig(
        task="causal-lm", min_gain_over_baseline=-1, baseline_max_new_tokens=1, few_shot_examples=0))
    assert short["baseline_max_new_tokens"] == short["max_new_tokens"] < 14
    assert short["baseline"] == "base_model_zero_shot" and set(short["baselines"]) == {"base_model_zero_shot"}
    assert short["baselines"]["base_model_zero_shot"]["answer_accuracy"] == 0
    assert short["baselines"]["base_model_zero_shot"]["unanswered"] == 1


def test_few_shot_examples_come_from_the_training_split_balanced_and_seeded(prepared_lm, prepared_lm_test):
    from transformers import AutoTokenizer

    from kftune.data.schema import load_splits, load_test_split
    from kftune.tasks.causal_lm.few_shot import choose_examples, few_shot_prompts

    train, test = load_splits(prepared_lm)[0]["train"], load_test_split(prepared_lm_test)
    tokenizer = AutoTokenizer.from_pretrained(str(prepared_lm / "tokenizer"))
    answers = ["negative", "positive"]
    references = list(train["reference"])
    args = (tokenizer, list(train["messages"]), references, list(test["messages"])[:10], answers, 4)
    prompts, conversations, used = few_shot_prompts(*args, seed=7, max_prompt_tokens=1 << 30)
    assert used == [4] * 10
    train_turns = {m["content"] for text in train["messages"] for m in json.loads(text)}
    test_asked = [json.loads(text)[-2]["content"] for text in test["messages"][:10]]
    for prompt, conversation, asked in zip(prompts, conversations, test_asked, strict=True):
        # four solved training examples (two of each answer), then the test prompt, rendered with the chat template
        assert [m["role"] for m in conversation if m["role"] != "system"] == ["user", "assistant"] * 5
        shots = conversation[-10:-2]
        assert all(m["content"] in train_turns for m in shots)
        assert sorted(normalise_answer(m["content"]) for m in shots if m["role"] == "assistant") == [
            "negative", "negative", "positive", "positive"]
        assert conversation[-2]["content"] == asked and prompt.endswith("<|im_start|>assistant\n")
        assert prompt.count("<|im_start|>assistant") == 5
    # seeded: the same seed draws the same examples, another seed others; each prompt draws its own
    assert few_shot_prompts(*args, seed=7, max_prompt_tokens=1 << 30)[0] == prompts
    assert few_shot_prompts(*args, seed=8, max_prompt_tokens=1 << 30)[0] != prompts
    assert len({tuple(m["content"] for m in c[:-2]) for c in conversations}) > 1
    # too long for the context: examples leave from the front until the prompt fits
    limit = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts) - 1
    fitted, _, fewer = few_shot_prompts(*args, seed=7, max_prompt_tokens=limit)
    assert min(fewer) < 4 and all(len(tokenizer(p, add_special_tokens=False)["input_ids"]) <= limit or n == 0
                                  for p, n in zip(fitted, fewer, strict=True))
    # three answers, five examples: as even as five allows; without answers, any examples
    rng = np.random.default_rng(0)
    picked = choose_examples(["a", "b", "c"] * 4, ["a", "b", "c"], 5, rng)
    assert len(set(picked)) == 5 and sorted(Counter("abc"[i % 3] for i in picked).values()) == [1, 2, 2]
    assert len(choose_examples(["x"] * 3, [], 5, rng)) == 3 and choose_examples(["x"], [], 0, rng) == []


def test_few_shot_settings_belong_to_causal_lm():
    from kftune.components.evaluate.config import EvaluateConfig

    with pytest.raises(ConfigError, match="few_shot_examples is a setting of task causal-lm"):
        EvaluateConfig(task="classification", few_shot_examples=2).validate()
    with pytest.raises(ConfigError, match="baseline_max_new_tokens"):
        EvaluateConfig(task="causal-lm", baseline_max_new_tokens=0).validate()
    EvaluateConfig(task="causal-lm", few_shot_examples=0).validate()


def test_export_reloads_and_reproduces_the_trained_generations(tmp_path, trained_lm, prepared_lm, prepared_lm_test):
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.inference.generation import generate
    from kftune.models.causal_lm import load_causal_lm

    report = export_model(trained_lm, prepared_lm, prepared_lm_test, tmp_path / "export",
                          ExportConfig(task="causal-lm"))
    # checked against the trained model unmerged: the base model with the adapter
    assert report["task"] == "causal-lm" and report["parity"]["reference"] == "base model + adapter (unmerged)"
    assert report["parity"]["max_abs_logit_diff"] < 1e-4
    assert report["parity"]["generation_mismatches"] == 0 and report["parity"]["generation_agreement"] == 1.0
    from kftune.data.schema import load_test_split

    prompts = load_test_split(prepared_lm_test)["prompt"][:6]
    exported = generate(*load_causal_lm(tmp_path / "export"), prompts, 6)
    trained = generate(*load_causal_lm(trained_lm), prompts, 6)
    assert exported == trained

    # the export as the registry's champion: it answers the same prompts as the trained model, so every gain over
    # it and its interval is 0 (tests/test_champion.py: the encoder tasks, registry and promotion end to end)
    from kftune.components.evaluate.config import EvaluateConfig

    result = TASKS["causal-lm"].evaluate(trained_lm, prepared_lm, prepared_lm_test,
                                         EvaluateConfig(task="causal-lm", few_shot_examples=0),
                                         champion_dir=tmp_path / "export")
    champion = result["champion"]
    assert champion["model"] == pytest.approx({k: result["model"][k] for k in champion["model"]}, abs=1e-6)
    assert set(champion["delta"]) >= {"answer_accuracy", "exact_match", "perplexity"}
    assert all(abs(d) < 1e-6 for d in champion["delta"].values())
    assert all(abs(i["ci_low"]) < 1e-6 and abs(i["ci_high"]) < 1e-6 for i in champion["intervals"].values())
    assert [s["champion"] for s in result["samples"]] == [s["fine_tuned"] for s in result["samples"]]


def test_export_refuses_a_merged_model_that_is_not_what_was_trained(tmp_path, trained_lm, prepared_lm,
                                                                     prepared_lm_test):
    """A merged model that drifted from base + adapter (here one weight matrix nudged) is refused, and nothing is
    written: the check compares with the unmerged trained model, not the merged copy with itself."""
    import shutil

    import torch

    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.errors import KftuneError
    from kftune.models.causal_lm import load_causal_lm

    drifted = tmp_path / "drifted"
    shutil.copytree(trained_lm, drifted)
    model, _ = load_causal_lm(drifted)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(1.05)
    model.save_pretrained(str(drifted), safe_serialization=True)
    with pytest.raises(KftuneError, match=r"differs from the base model \+ adapter \(unmerged\) by"):
        export_model(drifted, prepared_lm, prepared_lm_test, tmp_path / "export", ExportConfig(task="causal-lm"))
    assert not (tmp_path / "export").exists()


def test_fsdp_sharding_on_two_cpu_processes_matches_ddp(tmp_path, prepared_lm, tiny_causal_lm):
    """FSDP2 (gloo, 2 processes) trains to the weights DDP trains to (up to the order of float sums), both in fp32:
    where bf16 is native (mixed_precision auto picks it), FSDP's bf16 parameter policy and DDP's autocast round
    differently, so the comparison would measure the precision, not the sharding."""
    from kftune.training.launch import torchrun_command

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    adapters = {}
    for sharding in ("ddp", "fsdp"):
        config = TrainConfig(task="causal-lm", model=str(tiny_causal_lm), num_train_epochs=1, max_steps=6,
                             per_device_train_batch_size=4, learning_rate=5e-3, sharding=sharding, save_steps=3,
                             checkpoint_dir=str(tmp_path / f"{sharding}.ckpt"), mixed_precision="no")
        config.to_json(tmp_path / f"{sharding}.json")
        run = subprocess.run(torchrun_command(2, tmp_path / f"{sharding}.json", prepared_lm, tmp_path / sharding),
                             env=env, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        adapters[sharding] = load_file(tmp_path / sharding / "adapter" / "adapter_model.safetensors")
        # the checkpoint holds the full (gathered) LoRA weights and optimizer state, as unsharded training writes
        state = latest_checkpoint(tmp_path / f"{sharding}.ckpt")[1]
        assert state["world_size"] == 2 and all("lora_" in k for k in state["model"])
    assert adapters["ddp"].keys() == adapters["fsdp"].keys()
    moved = 0
    for name, weight in adapters["ddp"].items():
        torch.testing.assert_close(adapters["fsdp"][name], weight, rtol=1e-4, atol=1e-5)
        moved += "lora_B" in name and bool(weight.abs().sum() > 0)
    assert moved, "training changed the LoRA weights"


# --- the pipelines ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_pipeline_runs_the_task_through_the_cli_and_publishes(tmp_path, instructions_jsonl, tiny_causal_lm,
                                                                      capsys):
    from kftune.cli.main import main

    results_file, published = tmp_path / "results.json", tmp_path / "published"
    code = main(["run", "--task", "causal-lm", "--data", str(instructions_jsonl), "--model", str(tiny_causal_lm),
                 "--num-train-epochs", "1", "--learning-rate", "1e-2", "--min-gain-over-baseline", "-1",
                 "--publish-uri", str(published), "--output-dir", str(tmp_path / "runs"),
                 "--results", str(results_file)])
    assert code == 0
    results = json.loads(results_file.read_text())
    assert results["task"] == "causal-lm" and results["baseline"]["name"] == "base_model_few_shot"
    for key in ("exact_match", "answer_accuracy", "rouge_l", "perplexity"):
        assert key in results["model"] and key in results["baseline"] and key in results["delta_vs_baseline"]
    assert results["passed"] is True and results["artifacts"]["published"] == str(published / "v1")
    manifest = {f["path"] for f in json.loads((published / "v1" / "_MANIFEST.json").read_text())["files"]}
    assert {"model.safetensors", "config.json", "adapter/adapter_model.safetensors", "export_report.json"} <= manifest
    run_dir = Path(results["artifacts"]["run_dir"])
    assert "Sample answers" in (run_dir / "evaluate" / "report").read_text()
    assert "answer_accuracy" in capsys.readouterr().out
    # no predict_input: no predict step
    assert "predictions" not in results["artifacts"] and not (run_dir / "predict").exists()


@pytest.mark.slow
def test_tune_pipeline_searches_the_task_on_validation_loss(tmp_path, instructions_jsonl, tiny_causal_lm):
    from kftune.pipelines.local import run_tune_locally

    result = run_tune_locally({
        "task": "causal-lm", "data": str(instructions_jsonl), "model": str(tiny_causal_lm), "algorithm": "grid",
        "max_trials": 2, "search_space": '{"learning_rate": [1e-2, 1e-4]}', "num_train_epochs": 1, "max_rows": 100,
        "min_gain_over_baseline": -1.0,
    }, tmp_path)
    search = result.search
    assert search["metric"] == "loss" and search["direction"] == "minimize"
    trials = [t for t in search["trials"] if t["state"] == "complete"]
    assert len(trials) >= 2
    assert search["best"]["score"] == min(t["score"] for t in trials)
    assert (result.export_dir / "adapter").is_dir() and result.evaluation["task"] == "causal-lm"
