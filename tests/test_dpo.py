"""Task dpo: preference data in TRL's standard and conversational forms, bad rows, the DPO loss, the reference's
log-probabilities (the adapter disabled, computed once), training that raises preference accuracy over the
starting model, evaluation with its baseline and intervals, and an export that loads. On the tiny random Llama with
the bundled SmolLM2 tokenizer (its real chat template), but the one ``slow`` test on the bundled model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kftune.components.preprocess.config import PreprocessConfig
from kftune.components.preprocess.preprocess import prepare, preprocess
from kftune.data.schema import load_splits, load_test_split
from kftune.errors import ConfigError, DataError
from kftune.tasks import TASKS, detect_task
from kftune.tasks.dpo.training import PairCollator, preference_loss, sequence_logps
from kftune.training.config import TrainConfig
from tests.conftest import held_out_split
from tests.intervals import check_intervals, check_the_gate_can_require_the_lower_bound

WORDS = ("yes", "no")


def easy_pairs(n: int = 160) -> list[dict]:
    """Pairs whose chosen answer is the word the prompt asks for and whose rejected answer is the other one: a model
    that ignores the prompt prefers the chosen side of about half of them; one that reads it, of all."""
    return [{"prompt": f"Answer {WORDS[i % 2]}. ({i})", "chosen": WORDS[i % 2], "rejected": WORDS[1 - i % 2]}
            for i in range(n)]


def conversational(row: dict) -> dict:
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _config(data: Path, model: Path, **overrides) -> PreprocessConfig:
    return PreprocessConfig(task="dpo", data=str(data), model=str(model), **overrides)


@pytest.fixture(scope="module")
def prepared_pairs(tmp_path_factory, tiny_causal_lm) -> Path:
    data = _jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", easy_pairs())
    out = tmp_path_factory.mktemp("prepared-pairs") / "dataset"
    preprocess(PreprocessConfig(data=str(data), model=str(tiny_causal_lm), seed=1), out, held_out_split(out))
    return out


@pytest.fixture(scope="module")
def trained_pairs(tmp_path_factory, prepared_pairs, tiny_causal_lm) -> Path:
    """The tiny causal LM preference-tuned with LoRA in this process (no torchrun)."""
    from kftune.training.loop import train

    out = tmp_path_factory.mktemp("trained-pairs") / "model"
    train(TrainConfig(task="dpo", model=str(tiny_causal_lm), num_train_epochs=4, learning_rate=1e-2,
                      per_device_train_batch_size=16, logging_steps=5, lora_dropout=0.0), prepared_pairs, out)
    return out


# --- settings and detection -------------------------------------------------------------------------

def test_task_auto_picks_dpo_for_preference_columns_and_its_settings_are_its_own():
    config = PreprocessConfig()
    frame = pd.DataFrame(easy_pairs(3))
    assert detect_task(frame, config)[0] == "dpo"
    assert detect_task(frame.drop(columns=["chosen"]).rename(columns={"rejected": "completion"}), config)[0] == (
        "causal-lm")
    dpo = TrainConfig(task="dpo")
    assert (dpo.training_mode, dpo.metric_for_best_model, dpo.model, dpo.beta, dpo.loss_type) == (
        "lora", "loss", "bundled:SmolLM2-135M-Instruct", 0.1, "sigmoid")
    assert PreprocessConfig(task="dpo").data == "bundled:rotten-tomatoes-preferences"
    assert PreprocessConfig(data="bundled:rotten-tomatoes-preferences").task == "dpo"
    with pytest.raises(ConfigError, match="beta is a setting of task dpo"):
        TrainConfig(task="causal-lm", beta=0.5).validate()
    with pytest.raises(ConfigError, match="beta"):
        TrainConfig(task="dpo", beta=0.0).validate()
    with pytest.raises(ConfigError, match="sharding"):
        TrainConfig(task="dpo", sharding="fsdp").validate()
    assert TASKS["dpo"].gates() == {"min_primary_score": "preference_accuracy",
                                    "min_gain_over_baseline": "preference_accuracy"}
    from kftune.training.search_space import parse_space

    assert {p.name for p in parse_space(TASKS["dpo"].search_space, "lora").params} == {"learning_rate", "beta"}
    with pytest.raises(ConfigError, match="search space: beta: beta must be > 0"):
        parse_space({"beta": {"low": 0.0, "high": 0.5}}, "lora")


def test_bundled_pairs_reject_the_other_allowed_answer():
    from kftune.data.labelled import read_bundled_instructions, read_bundled_preferences

    pairs, instructions = read_bundled_preferences(), read_bundled_instructions()
    assert len(pairs) == 400 and list(pairs["prompt"]) == list(instructions["prompt"][:400])
    assert list(pairs["chosen"]) == list(instructions["completion"][:400])
    assert {(c, r) for c, r in zip(pairs["chosen"], pairs["rejected"], strict=True)} == {
        ("positive", "negative"), ("negative", "positive")}


# --- data -------------------------------------------------------------------------------------------

def test_standard_and_conversational_forms_give_the_same_pairs_in_every_file_type(tmp_path, tiny_causal_lm):
    rows = easy_pairs(12)
    standard = _jsonl(tmp_path / "standard.jsonl", rows)
    parquet = tmp_path / "conversational.parquet"
    pd.DataFrame([conversational(r) for r in rows]).to_parquet(parquet)
    csv = tmp_path / "conversational.csv"  # message lists as JSON text
    pd.DataFrame([{k: json.dumps(v) for k, v in conversational(r).items()} for r in rows]).to_csv(csv, index=False)
    prepared = {path.suffix: prepare(_config(path, tiny_causal_lm)) for path in (standard, parquet, csv)}
    assert prepared[".jsonl"].stats["preference_form"] == "standard"
    assert prepared[".parquet"].stats["preference_form"] == prepared[".csv"].stats["preference_form"] == (
        "conversational")
    columns = ["prompt", "chosen", "rejected", "input_ids", "labels", "rejected_input_ids", "rejected_labels"]
    first = prepared[".jsonl"].frame[columns]
    for other in (".parquet", ".csv"):
        pd.testing.assert_frame_equal(first, prepared[other].frame[columns])

    tokenizer = prepared[".jsonl"].tokenizer
    row = first.iloc[0]
    assert row["prompt"].endswith("<|im_start|>assistant\n") and "Answer yes. (0)" in row["prompt"]
    for ids, labels, answer in ((row["input_ids"], row["labels"], "yes"),
                                (row["rejected_input_ids"], row["rejected_labels"], "no")):
        prompt_length = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
        assert all(x == -100 for x in labels[:prompt_length])  # the prompt is masked
        assert tokenizer.decode([x for x in labels if x != -100]).strip() == f"{answer}<|im_end|>"
        assert ids[:prompt_length] == row["input_ids"][:prompt_length]  # both sides share the prompt


def test_a_multi_turn_prompt_labels_only_the_response(tmp_path, tiny_causal_lm):
    rows = [{"prompt": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello"},
                        {"role": "user", "content": "Say yes"}],
             "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": "no"}]} for i in range(10)]
    prepared = prepare(_config(_jsonl(tmp_path / "multi.jsonl", rows), tiny_causal_lm))
    tokenizer, row = prepared.tokenizer, prepared.frame.iloc[0]
    assert tokenizer.decode([x for x in row["labels"] if x != -100]).strip() == "yes<|im_end|>"  # not "Hello"


@pytest.mark.parametrize("rows, message", [
    (easy_pairs(5) + [{"prompt": "p", "chosen": None, "rejected": "no"}],
     r"row 6: no chosen response; expected the chosen answer"),
    (easy_pairs(3) + [{"prompt": "p", "chosen": "yes", "rejected": "  "}],
     r"row 4: no rejected response; expected the rejected answer"),
    ([conversational(r) for r in easy_pairs(2)] + [{**conversational(easy_pairs(1)[0]), "rejected": [
        {"role": "assistant", "content": "no"}, {"role": "user", "content": "sure?"}]}],
     r"row 3: rejected ends with a user message; expected the assistant's answer last"),
    ([conversational(r) for r in easy_pairs(2)] + [{**conversational(easy_pairs(1)[0]), "chosen": "yes"}],
     r"row 3: chosen must be a list of \{role, content\} messages"),
    ([{"prompt": "p", "chosen": "yes"}], r"needs the columns prompt, chosen and rejected; missing rejected"),
])
def test_bad_preference_rows_get_one_line_naming_file_and_row(tmp_path, tiny_causal_lm, rows, message):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message) as error:
        preprocess(_config(path, tiny_causal_lm), tmp_path / "out", tmp_path / "test_split")
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "test_split").exists()


def test_identical_duplicate_empty_and_overlong_pairs_are_removed_and_counted(tmp_path, tiny_causal_lm):
    rows = easy_pairs(12)
    rows += [{"prompt": "Same?", "chosen": "yes", "rejected": " yes "}, rows[0], {"prompt": " ", "chosen": "a",
                                                                                 "rejected": "b"},
             {"prompt": "long " * 300, "chosen": "yes", "rejected": "no"}]
    prepared = prepare(_config(_jsonl(tmp_path / "d.jsonl", rows), tiny_causal_lm, max_seq_length=64))
    assert prepared.removed == {"empty_example": 1, "identical_pair": 1, "exact_duplicate": 1, "too_long": 1}
    assert len(prepared.frame) == 12 and prepared.rows_read == 16


# --- the loss and the reference ---------------------------------------------------------------------

def test_the_loss_equals_the_hand_computed_value():
    policy_chosen, policy_rejected = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    reference_chosen, reference_rejected = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    # h = (pi_c - ref_c) - (pi_r - ref_r): pair 1: 0.5 - (-1) = 1.5; pair 2: -1 - 1 = -2
    h, beta = [1.5, -2.0], 0.1
    expected = {
        "sigmoid": np.mean([-math.log(1 / (1 + math.exp(-beta * x))) for x in h]),
        "ipo": np.mean([(x - 1 / (2 * beta)) ** 2 for x in h]),
        "hinge": np.mean([max(0.0, 1 - beta * x) for x in h]),
    }
    for loss_type, value in expected.items():
        loss = preference_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, loss_type)
        assert float(loss) == pytest.approx(value, rel=1e-6), loss_type
    assert float(preference_loss(policy_chosen, policy_rejected, policy_chosen, policy_rejected, beta)) == (
        pytest.approx(math.log(2)))  # the starting model against itself


def test_sequence_logprobs_sum_the_response_tokens_alone_padded_or_packed(prepared_pairs, tiny_causal_lm):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm), dtype=torch.float32).eval()
    train = load_splits(prepared_pairs)[0]["train"]
    indices = [0, 3, 5]
    expected = []
    for ids, labels in [(train[i]["input_ids"], train[i]["labels"]) for i in indices] + [
            (train[i]["rejected_input_ids"], train[i]["rejected_labels"]) for i in indices]:
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        expected.append(sum(float(logprobs[p - 1, t]) for p, t in enumerate(labels) if t != -100))
    for packing in (False, True):
        with torch.no_grad():
            got = sequence_logps(model, PairCollator(train, 0, packing=packing)(indices))
        assert got.tolist() == pytest.approx(expected, abs=1e-4), packing


def _perturbed_lora(config, dataset: Path, model_path: Path):
    from kftune.tasks.dpo.training import DPORecipe
    from kftune.training.recipe import Run

    run = Run(config, dataset, {}, str(model_path), torch.device("cpu"), "no")
    recipe = DPORecipe()
    model = recipe.build_model(run)
    with torch.no_grad():  # an adapter that changes the model (peft starts its B matrices at 0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return recipe, run, model


def test_reference_logprobs_are_the_adapter_disabled_models(prepared_pairs, tiny_causal_lm):
    from transformers import AutoModelForCausalLM

    from kftune.tasks.dpo.training import pair_logps
    from kftune.training.loop import load_data

    config = TrainConfig(task="dpo", model=str(tiny_causal_lm))
    recipe, run, model = _perturbed_lora(config, prepared_pairs, tiny_causal_lm)
    _, train, validation = load_data(recipe, run)
    recipe.start(model, train, validation, run)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm), dtype=torch.float32)
    for split in (train, validation):
        assert split.collate.reference.shape == (len(split.lengths), 2)
        expected = pair_logps(base, split.collate, 16, torch.device("cpu"), "no")
        torch.testing.assert_close(split.collate.reference, expected, atol=1e-4, rtol=0)
        adapted = pair_logps(model, split.collate, 16, torch.device("cpu"), "no")
        assert (adapted - expected).abs().max() > 0.1  # the adapter is on again after
    assert model.training  # left as it was
    batch = train.collate([2, 0])
    torch.testing.assert_close(batch["reference"], train.collate.reference[[2, 0]])


def test_reference_logprobs_are_computed_once_per_split(monkeypatch, tmp_path, prepared_pairs, tiny_causal_lm):
    import kftune.tasks.dpo.training as dpo_training
    from kftune.training.loop import train

    calls = []
    real = dpo_training.reference_logps

    def counted(model, collate, *args):
        calls.append(len(collate))
        return real(model, collate, *args)

    monkeypatch.setattr(dpo_training, "reference_logps", counted)
    history = train(TrainConfig(task="dpo", model=str(tiny_causal_lm), num_train_epochs=2, learning_rate=1e-3,
                                per_device_train_batch_size=32, training_mode="full"), prepared_pairs, tmp_path / "m")
    splits = load_splits(prepared_pairs)[0]
    assert calls == [len(splits["train"]), len(splits["validation"])]  # once each, for two epochs
    assert len(history["epochs"]) == 2


def _full_config(model: Path, checkpoint_dir: Path) -> TrainConfig:
    return TrainConfig(task="dpo", model=str(model), training_mode="full", num_train_epochs=2,
                       per_device_train_batch_size=4, learning_rate=1e-3, save_steps=5, save_total_limit=0,
                       early_stopping_patience=0, logging_steps=5, checkpoint_dir=str(checkpoint_dir))


def test_sigkill_mid_full_training_then_rerun_gives_identical_weights(tmp_path, prepared_pairs, tiny_causal_lm):
    """Full fine-tuning keeps no reference copy: a resumed run computes the reference from the starting weights
    before it restores the trained ones, so it ends bit-identical to a run never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from kftune.training.checkpoint import latest_checkpoint

    def command(name: str) -> list[str]:
        (tmp_path / f"{name}.work").mkdir()
        _full_config(tiny_causal_lm, tmp_path / f"{name}.ckpt").to_json(tmp_path / f"{name}.work" / "config.json")
        return [sys.executable, "-m", "kftune.training.loop", "--config", str(tmp_path / f"{name}.work/config.json"),
                "--dataset", str(prepared_pairs), "--output", str(tmp_path / name)]

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(command("a"), env=env, check=True, capture_output=True)
    killed = command("b")
    process = subprocess.Popen(killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (tmp_path / "b.ckpt" / "checkpoint-00000045").exists():  # 32 steps an epoch: mid-epoch 2
        assert process.poll() is None and time.monotonic() < deadline, "training ended before the checkpoint"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "b").exists() and latest_checkpoint(tmp_path / "b.ckpt")[1]["micro"] > 0
    rerun = subprocess.run(killed, env=env, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "resumed from" in rerun.stdout
    before, after = (load_file(tmp_path / name / "model.safetensors") for name in ("a", "b"))
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def _reference_on_rank(ranks, dataset: str, model_path: str, out: str) -> None:
    from transformers import AutoModelForCausalLM

    from kftune.tasks.dpo.training import reference_logps

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    collate = PairCollator(load_splits(Path(dataset))[0]["train"], 0)
    torch.save(reference_logps(model, collate, 16, ranks.device, "no"), f"{out}.{ranks.rank}")


def test_the_ranks_share_the_reference_pass_and_each_gets_every_pair(tmp_path, prepared_pairs, tiny_causal_lm):
    from transformers import AutoModelForCausalLM

    from kftune.tasks.dpo.training import reference_logps
    from tests.gloo import run_ranks

    run_ranks(_reference_on_rank, str(prepared_pairs), str(tiny_causal_lm), str(tmp_path / "reference"))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm), dtype=torch.float32)
    alone = reference_logps(model, PairCollator(load_splits(prepared_pairs)[0]["train"], 0), 16,
                            torch.device("cpu"), "no")
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(tmp_path / f"reference.{rank}"), alone, atol=1e-4, rtol=0)


def test_ddp_on_two_cpu_processes_trains_with_the_shared_reference(tmp_path, prepared_pairs, tiny_causal_lm):
    """torchrun, 2 processes (gloo): the ranks compute the reference together, then train and write the adapter."""
    import os
    import subprocess

    from safetensors.torch import load_file

    from kftune.training.launch import torchrun_command

    config = TrainConfig(task="dpo", model=str(tiny_causal_lm), num_train_epochs=1, max_steps=4,
                         per_device_train_batch_size=4, learning_rate=5e-3)
    config.to_json(tmp_path / "config.json")
    run = subprocess.run(torchrun_command(2, tmp_path / "config.json", prepared_pairs, tmp_path / "model"),
                         env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    history = json.loads((tmp_path / "model" / "training_history.json").read_text())
    assert history["world_size"] == 2 and 0 < history["epochs"][0]["val_loss"] < 1.0
    adapter = load_file(tmp_path / "model" / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in name and bool(weight.abs().sum() > 0) for name, weight in adapter.items())


# --- training, evaluation, export -------------------------------------------------------------------

def test_training_raises_preference_accuracy_over_the_starting_model(trained_pairs, prepared_pairs):
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate, flat_metrics
    from kftune.components.evaluate.report import evaluation_markdown, evaluation_report_html

    history = json.loads((trained_pairs / "training_history.json").read_text())
    last = history["epochs"][-1]
    assert {"val_loss", "val_preference_accuracy", "val_reward_accuracy", "val_reward_margin"} <= set(last)
    first, last = history["epochs"][0], history["epochs"][-1]
    assert last["val_reward_margin"] > 0 and last["val_loss"] < math.log(2)
    assert last["val_preference_accuracy"] > first["val_preference_accuracy"]

    result = evaluate(trained_pairs, prepared_pairs, held_out_split(prepared_pairs), EvaluateConfig(task="dpo"))
    task = TASKS["dpo"]
    assert result["primary_metric"] == "preference_accuracy" and result["baseline"] == "starting_model"
    assert set(result["model"]) == {"preference_accuracy", "reward_accuracy", "reward_margin"}
    start = result["baselines"]["starting_model"]["preference_accuracy"]
    assert result["model"]["preference_accuracy"] >= start + 0.3, result  # it learned to read the prompt
    assert result["model"]["reward_accuracy"] > 0.8 and result["model"]["reward_margin"] > 0
    assert result["delta_vs_baseline"] == {"preference_accuracy": result["model"]["preference_accuracy"] - start}
    assert result["passed"] and all(result["checks"].values())
    check_intervals(result)
    check_the_gate_can_require_the_lower_bound(result, task)
    assert result["intervals"]["preference_accuracy"]["ci_low"] > 0
    markdown = evaluation_markdown(result)
    assert "| fine-tuned model |" in markdown and "baseline: starting_model" in markdown
    assert "Sample pairs" in evaluation_report_html(result)
    assert flat_metrics(result)["starting_model_preference_accuracy"] == start


def test_export_writes_the_merged_model_and_adapter_that_load(tmp_path, trained_pairs, prepared_pairs):
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.models.causal_lm import load_causal_lm
    from kftune.tasks import export_task
    from kftune.tasks.dpo.evaluation import score_model

    test_dir = held_out_split(prepared_pairs)
    report = export_model(trained_pairs, prepared_pairs, test_dir, tmp_path / "export", ExportConfig(task="dpo"))
    assert report["task"] == "dpo" and report["format"] == "huggingface" and report["files"]["adapter"] == "adapter"
    assert export_task(tmp_path / "export") == "dpo"
    test = load_test_split(test_dir)
    exported = score_model(*load_causal_lm(tmp_path / "export"), test)
    trained = score_model(*load_causal_lm(trained_pairs), test)
    torch.testing.assert_close(exported, trained, atol=1e-4, rtol=0)
    assert (exported[:, 0] > exported[:, 1]).float().mean() > 0.8  # it still prefers the chosen answers

    from kftune.tasks import open_export  # served and predicted as a causal LM's export

    answers = open_export(tmp_path / "export", max_new_tokens=3).predict(["Answer yes. (7)"], progress=False)
    assert len(answers) == 1 and isinstance(answers[0]["generation"], str)

    # the export as the registry's champion: scored on the same pairs, no gain over it, an interval at 0
    from kftune.components.evaluate.config import EvaluateConfig

    result = TASKS["dpo"].evaluate(trained_pairs, prepared_pairs, test_dir, EvaluateConfig(task="dpo"),
                                   champion_dir=tmp_path / "export")
    champion = result["champion"]
    assert champion["model"]["preference_accuracy"] == result["model"]["preference_accuracy"]
    assert champion["delta"]["preference_accuracy"] == 0
    assert champion["intervals"]["preference_accuracy"] == {"ci_low": 0.0, "ci_high": 0.0}


def test_an_sft_export_is_a_starting_model(tmp_path, tiny_causal_lm):
    """The model setting takes a causal-lm export directory (SFT, then DPO): trained from, and the baseline."""
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate
    from kftune.training.loop import train
    from tests.causal_lm import tiny_causal_lm_export

    sft = tiny_causal_lm_export(tmp_path / "sft-export", seed=3)
    data, out = _jsonl(tmp_path / "pairs.jsonl", easy_pairs(40)), tmp_path / "dataset"
    preprocess(_config(data, sft), out, held_out_split(out))
    train(TrainConfig(task="dpo", model=str(sft), max_steps=2, per_device_train_batch_size=8), out, tmp_path / "m")
    assert (tmp_path / "m" / "adapter" / "adapter_model.safetensors").is_file()
    result = evaluate(tmp_path / "m", out, held_out_split(out), EvaluateConfig(task="dpo", min_gain_over_baseline=-1))
    from kftune.models.causal_lm import load_causal_lm
    from kftune.tasks.dpo.evaluation import score_model

    assert result["base_model"] == str(sft) and result["model"]["reward_margin"] != 0
    logps = score_model(*load_causal_lm(sft), load_test_split(held_out_split(out)))
    preferred = ((logps[:, 0] > logps[:, 1]).double() + 0.5 * (logps[:, 0] == logps[:, 1]).double()).mean()
    assert result["baselines"]["starting_model"]["preference_accuracy"] == pytest.approx(float(preferred))


@pytest.mark.slow
def test_bundled_model_on_a_slice_of_the_bundled_pairs(tmp_path):
    """The real SmolLM2-135M-Instruct, a few LoRA steps on 40 bundled pairs: trains, evaluates against itself as
    the starting model."""
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate
    from kftune.training.loop import train

    out = tmp_path / "dataset"
    preprocess(PreprocessConfig(task="dpo", max_rows=40, seed=1), out, held_out_split(out))
    train(TrainConfig(task="dpo", max_steps=3, per_device_train_batch_size=4), out, tmp_path / "model")
    result = evaluate(tmp_path / "model", out, held_out_split(out), EvaluateConfig(task="dpo",
                                                                                  min_gain_over_baseline=-1))
    assert result["test_size"] == 4 and result["base_model"] == "bundled:SmolLM2-135M-Instruct"
    assert 0 <= result["baselines"]["starting_model"]["preference_accuracy"] <= 1
    assert result["model"]["reward_margin"] != 0  # three steps moved it off the reference
