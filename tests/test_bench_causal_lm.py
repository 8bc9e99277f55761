"""bench/causal_lm_throughput.py end to end on a tiny random Llama: every system trains, on the same tokens."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "causal_lm_throughput.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("causal_lm_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # four training processes, each importing torch, transformers and TRL: about a minute
def test_bench_compares_kftune_and_trl_on_the_same_tokens(tiny_causal_lm, tmp_path):
    out = tmp_path / "results.json"
    started = time.monotonic()
    load_bench().main(["--model", str(tiny_causal_lm), "--examples", "16", "--max-rows", "120", "--out", str(out)])
    elapsed = time.monotonic() - started

    report = json.loads(out.read_text())
    systems = report["systems"]
    assert set(systems) == {"kftune", "trl", "trl_padded", "kftune_padded"}
    tokens = report["data"]["train_tokens"]
    assert report["data"]["train_examples"] == 16
    # the loss is on the assistant's tokens only: the prompts' tokens are trained through, not scored
    assert 0 < report["data"]["train_assistant_tokens"] < tokens
    for name, run in systems.items():
        assert 0 < run["train_seconds"] < elapsed, name  # a part of this run, measured
        assert run["tokens_per_second"] == pytest.approx(tokens / run["train_seconds"])
        assert math.isfinite(run["heldout_loss"]), name
        assert run["tokens_counted"] == tokens, name  # what each trainer itself counted: the same tokens
        assert run["optimizer_steps"] == 2, name  # 16 examples in batches of 8
    assert report["lora_init_identical"]
    assert report["speedup_vs_trl"] == pytest.approx(
        systems["kftune"]["tokens_per_second"] / systems["trl"]["tokens_per_second"])
    # kftune against its own padded batches: the same loop and batches, only packing differs
    assert report["packing_speedup_vs_padded"] == pytest.approx(
        systems["kftune"]["tokens_per_second"] / systems["kftune_padded"]["tokens_per_second"])
    assert "packing=False" in systems["kftune_padded"]["setup"] and "packing=True" in systems["kftune"]["setup"]
    assert report["data"]["padded_batches_padding_ratio"] > 1  # the examples differ in length
    assert systems["kftune_padded"]["heldout_loss"] == pytest.approx(systems["kftune"]["heldout_loss"], abs=0.01)
    # same initialisation, same batches: after two steps the models score almost alike (dropout masks differ)
    assert systems["kftune"]["heldout_loss"] == pytest.approx(systems["trl"]["heldout_loss"], abs=0.01)
    # the loss kftune's loop reported for its in-memory model is the merged model's, scored by the bench
    assert systems["kftune"]["own_val_loss"] == pytest.approx(systems["kftune"]["heldout_loss"], abs=1e-4)
    import trl

    assert report["machine"]["trl"] == trl.__version__ and report["machine"]["cores"] == os.cpu_count()
    assert "causal_lm_throughput.py" in report["command"]
