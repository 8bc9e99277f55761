"""FSDP2 sharding (``sharding=fsdp``): for a model that does not fit one GPU.

``torch.distributed.fsdp.fully_shard`` splits each decoder layer's parameters, gradients and
optimizer state over the ranks (and the rest of the model as one more unit); a layer's full
weights exist only while it runs. The model arrives on the CPU and ``fully_shard`` moves each unit's
weights to the rank's GPU as it shards them (``_move_states_to_device`` in torch's
``_fully_shard/_fsdp_init.py``): a GPU holds one unit's full weights at a time while sharding, never
the whole model. Weights are gathered and computed in the run's precision (bf16 or fp16) and
gradients averaged in fp32 (:func:`precision_policy`). Checkpoints stay in the same format as
unsharded training: the full state dicts, gathered to CPU (collective calls) and written by rank 0,
so a sharded run resumes from them, and so can an unsharded one.
"""

from __future__ import annotations

import torch

from kftune.training.precision import AUTOCAST_DTYPES

UNIT_SUFFIXES = ("DecoderLayer", "Block")
"""Class-name endings of the units of a model that names none (no ``_no_split_modules``)."""


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules to shard as units, deepest first (``fully_shard`` must reach a module after the units inside
    it): the model's decoder layers, by the classes its transformers model names in ``_no_split_modules`` (the
    blocks it never splits over devices), else by :data:`UNIT_SUFFIXES`. Never a module inside another unit, so
    the mixture-of-experts block inside a decoder layer (``MixtralSparseMoeBlock``, ``Qwen2MoeSparseMoeBlock``)
    stays part of its layer's unit."""
    named = set()
    for module in model.modules():
        named.update(getattr(module, "_no_split_modules", None) or ())

    def is_unit(module: torch.nn.Module) -> bool:
        name = type(module).__name__
        return name in named if named else name.endswith(UNIT_SUFFIXES)

    units = []

    def visit(module: torch.nn.Module) -> None:
        for child in module.children():
            if is_unit(child):
                units.append(child)  # its submodules belong to it
            else:
                visit(child)

    visit(model)
    return units[::-1]


def precision_policy(precision: str):
    """FSDP's mixed precision for a run in ``precision``: parameters gathered and computed in bf16 or fp16 (half
    the all-gather traffic of fp32), gradients reduced in fp32 (a sum over ranks of half-precision gradients loses
    their low bits); all in fp32 for ``no``. The sharded parameters and the optimizer stay in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def shard_model(model: torch.nn.Module, precision: str) -> None:
    """Shard every unit of :func:`shard_units`, deepest first, then the model itself (in place), in
    ``precision``."""
    from torch.distributed.fsdp import fully_shard

    policy = precision_policy(precision)
    for unit in shard_units(model):
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_model_state(model, state: dict, strict: bool = True) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(strict=strict))


def load_full_optimizer_state(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())
