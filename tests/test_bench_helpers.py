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


def test_model_flops_count_every_linear_layer_and_attention_per_real_token():
    """By hand, d=2, f=4, one layer, one training text of 3 tokens and one validation text of 1, one epoch:
    a token's linear layers 2 x (4x4 + 2x2x4) = 64 FLOPs, attention 4 x 2 x n per token (n^2 over a text), the
    pooler 2 x 4 per text; training 3x the forward pass."""
    bench = load("train_throughput")
    train_forward = 64 * 3 + 4 * 2 * 9 + 8
    validation_forward = 64 * 1 + 4 * 2 * 1 + 8
    assert bench.model_flops([3], [1], 2, 4, 1, 1) == 3 * train_forward + validation_forward
    assert bench.model_flops([3], [1], 2, 4, 2, 2) == 2 * (3 * (2 * train_forward - 8) + 2 * validation_forward - 8)


def test_the_matmul_rate_is_a_rate_of_this_machine_in_each_precision():
    bench = load("train_throughput")
    for precision in ("fp32", "bf16"):
        rate = bench.matmul_rate(precision, 64, 32, 128, seconds=0.05)
        assert 1e6 < rate < 1e16  # FLOP/s: more than a megaflop, less than any machine's peak


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


@pytest.mark.parametrize("name, precision, tf32, expected", [
    ("NVIDIA H100 80GB HBM3", "bf16", True, ("bf16", 989.4)),  # the SXM5 module
    ("NVIDIA H100 PCIe", "bf16", True, ("bf16", 756)),
    ("NVIDIA H100 NVL", "bf16", True, ("bf16", 835)),
    ("NVIDIA H200", "bf16", True, ("bf16", 989.4)),
    ("NVIDIA H200 NVL", "fp16", True, ("fp16", 835)),
    ("NVIDIA A100-SXM4-80GB", "bf16", True, ("bf16", 312)),
    ("NVIDIA A100 80GB PCIe", "no", True, ("tf32", 156)),  # fp32 training with TF32 matmuls: the TF32 peak
    ("NVIDIA A100 80GB PCIe", "no", False, ("fp32", 19.5)),
    ("NVIDIA A10", "bf16", True, ("bf16", 125)),
    ("NVIDIA A10G", "bf16", True, None),  # not the A10: no NVIDIA datasheet
    ("NVIDIA L4", "bf16", True, ("bf16", 121)),
    ("NVIDIA L40", "bf16", True, ("bf16", 181.05)),
    ("NVIDIA L40S", "bf16", True, ("bf16", 362.05)),
    ("NVIDIA L40S", "no", True, ("tf32", 183)),
    ("Tesla T4", "fp16", True, ("fp16", 65)),
    ("Tesla T4", "no", True, ("fp32", 8.1)),  # no TF32 tensor cores
    ("Tesla T4", "bf16", True, None),  # emulated: no peak
    ("Tesla V100-SXM2-16GB", "fp16", True, ("fp16", 125)),
    ("Tesla V100-PCIE-32GB", "fp16", True, ("fp16", 112)),
    ("Tesla V100S-PCIE-32GB", "fp16", True, ("fp16", 130)),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "bf16", True, None),  # a slice of the GPU
    ("NVIDIA GeForce RTX 4090", "bf16", True, None),
    ("x86_64", "no", False, None),
])
def test_the_datasheet_peak_is_the_named_gpus_for_the_precision_trained(name, precision, tf32, expected):
    """Names as torch reports them, each to its own row (no H100 PCIe read as SXM, no L4 as L40, no A10G as A10),
    and the peak of the unit the precision runs on; an unknown device has none (MFU against the measured rate only)."""
    peak = load("gpu_throughput").datasheet_peak(name, precision, tf32)
    assert peak == (expected and (expected[0], pytest.approx(expected[1] * 1e12)))
