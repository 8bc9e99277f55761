"""Pure helpers of bench/train_throughput.py (comparisons, criteria) and bench/profile_step.py (op categories)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(seed, kftune, documented, tuned):
    loop = lambda sps, acc: {"samples_per_second": sps, "test_accuracy": acc, "test_f1_macro": acc}  # noqa: E731
    return {"hyperparameters": {"seed": seed}, "kftune": loop(*kftune), "hf_trainer": loop(*documented),
            "hf_trainer_tuned": loop(*tuned)}


def test_means_compare_kftune_with_both_trainers_and_read_the_criteria():
    bench = load("train_throughput")
    runs = [run(42, (90, 0.84), (30, 0.845), (80, 0.84)), run(1, (96, 0.85), (30, 0.845), (100, 0.85))]
    mean = bench._means(runs)
    assert mean["kftune"]["samples_per_second"] == pytest.approx(93)
    assert mean["comparison"]["vs_documented"]["speedup"] == pytest.approx(3.1)
    assert mean["comparison"]["vs_tuned"]["speedup"] == pytest.approx(93 / 90)
    assert mean["comparison"]["vs_documented"]["accuracy_difference_points"] == pytest.approx(0.0)
    criteria = mean["criteria"]
    assert criteria["speedup_over_documented"]["met"] and criteria["speedup_over_tuned"]["met"]
    assert criteria["all_met"]
    slower = bench._means([run(42, (85, 0.84), (30, 0.85), (90, 0.84))])  # 2.83x, slower than tuned, -1 point
    assert not slower["criteria"]["speedup_over_documented"]["met"]
    assert not slower["criteria"]["speedup_over_tuned"]["met"]
    assert not slower["criteria"]["accuracy_vs_documented"]["met"] and slower["criteria"]["accuracy_vs_tuned"]["met"]
    assert slower["criteria"]["all_met"] is False


def event(name, parent=None):
    return SimpleNamespace(name=name, cpu_parent=parent)


def test_profile_categories_attribute_generic_ops_to_their_enclosing_op():
    profile = load("profile_step")
    assert profile.event_category(event("aten::mm")) == "matmul/linear/addmm/bmm"
    assert profile.event_category(event("aten::_fused_adamw_")) == "optimizer"
    assert profile.event_category(event("aten::bernoulli_", event("aten::dropout"))) == "dropout"
    node = event("autograd::engine::evaluate_function: AddmmBackward0")
    assert profile.event_category(node) == "backward autograd overhead"  # the node's own time
    assert profile.event_category(event("aten::sum", node)) == "matmul/linear/addmm/bmm"  # bias gradient
    assert profile.event_category(event("aten::copy_", event("aten::addmm"))) == "matmul/linear/addmm/bmm"
    assert profile.event_category(event("aten::copy_", event("aten::to"))) == "copy/cat/index (padding, collation)"
    assert profile.event_category(event("aten::mul")) == "other"
