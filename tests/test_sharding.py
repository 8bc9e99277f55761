"""FSDP2 sharding (kftune.training.sharding): which modules become units (the decoder layers, never the
mixture-of-experts blocks inside them, deepest first), the mixed precision policy of each precision, and on 2 gloo
processes a model placed as shards (never moved whole to the device) that trains a step."""

from __future__ import annotations

import pytest
import torch

from kftune.training.config import TrainConfig
from kftune.training.sharding import UNIT_SUFFIXES, precision_policy, shard_units
from tests.gloo import all_equal, run_ranks

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, num_experts_per_tok=2)


def tiny_moe(kind: str):
    """A 2-layer mixture-of-experts causal LM built from its config (random weights)."""
    import transformers

    if kind == "mixtral":
        config = transformers.MixtralConfig(**SMALL, num_local_experts=4)
    else:
        config = transformers.Qwen2MoeConfig(**SMALL, num_experts=4, moe_intermediate_size=16,
                                             shared_expert_intermediate_size=16)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_the_units_are_the_decoder_layers_and_not_their_moe_blocks_deepest_first(kind):
    model = tiny_moe(kind)
    moe_blocks = [m for m in model.modules() if type(m).__name__.endswith("SparseMoeBlock")]
    assert len(moe_blocks) == 2 and all(type(b).__name__.endswith(UNIT_SUFFIXES) for b in moe_blocks)
    layers = list(model.model.layers)
    assert shard_units(model) == layers[::-1]
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert shard_units(adapted) == layers[::-1]


def test_a_model_that_names_no_units_is_cut_at_its_layer_classes_and_never_inside_one():
    class ToySparseMoeBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))

    class ToyDecoderLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention, self.moe = torch.nn.Linear(4, 4), ToySparseMoeBlock()

    class ToyModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(8, 4)
            self.layers = torch.nn.ModuleList(ToyDecoderLayer() for _ in range(3))
            self.final = ToySparseMoeBlock()  # a block outside every layer is a unit of its own

    model = ToyModel()
    assert shard_units(model) == [model.final, *reversed(model.layers)]


def test_fsdp_gathers_in_the_runs_precision_and_reduces_in_fp32():
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        policy = precision_policy(name)
        assert (policy.param_dtype, policy.reduce_dtype) == (dtype, torch.float32)
    assert (precision_policy("no").param_dtype, precision_policy("no").reduce_dtype) == (None, None)


def _place_and_train_a_step(ranks, precision: str, dtype: torch.dtype) -> None:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from kftune.training.loop import place_model

    model = tiny_moe("mixtral")
    total = sum(p.numel() for p in model.parameters())
    moved, to = [], torch.nn.Module.to

    def recorded(module, *args, **kwargs):
        moved.append(type(module).__name__)
        return to(module, *args, **kwargs)

    torch.nn.Module.to = recorded
    try:
        placed = place_model(model, TrainConfig(task="causal-lm", sharding="fsdp"), ranks, precision)
    finally:
        torch.nn.Module.to = to
    assert placed is model and moved == []  # never moved whole: fully_shard moves each unit as it shards it
    assert all(isinstance(p, DTensor) and p.to_local().device.type == "cpu" for p in model.parameters())
    local = sum(p.to_local().numel() for p in model.parameters())
    assert abs(local - total / ranks.world) <= 0.01 * total, (local, total)
    assert isinstance(model, FSDPModule) and all(isinstance(layer, FSDPModule) for layer in model.model.layers)
    assert not any(isinstance(layer.mlp, FSDPModule) for layer in model.model.layers)  # the MoE blocks
    gathered = []
    model.model.layers[0].register_forward_pre_hook(
        lambda layer, args: gathered.append(layer.self_attn.q_proj.weight.dtype))
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(ranks.rank))
    model(input_ids=ids, labels=ids).loss.backward()
    assert gathered == [dtype]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and isinstance(g, DTensor) for g in grads)
    assert all_equal(ranks, [g.full_tensor().sum().item() for g in grads])  # reduced over the ranks


def _place_sharded(ranks) -> None:
    _place_and_train_a_step(ranks, "no", torch.float32)
    _place_and_train_a_step(ranks, "bf16", torch.bfloat16)


def test_fsdp_places_a_model_as_shards_without_moving_it_whole_and_it_trains():
    """2 gloo ranks: after place_model every parameter is a DTensor whose local shard holds about half the
    weights; no module was moved to the device whole; the decoder layers are units and their MoE blocks are not;
    a step's forward pass gathers the weights in the run's precision and the gradients come back in fp32."""
    run_ranks(_place_sharded, timeout=120)
