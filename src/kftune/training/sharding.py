"""FSDP2 sharding (``sharding=fsdp``): for a model that does not fit one GPU.

``torch.distributed.fsdp.fully_shard`` splits each decoder layer's parameters, gradients and
optimizer state over the ranks (and the rest of the model as one more unit); a layer's full
weights exist only while it runs. Checkpoints stay in the same format as unsharded training:
the full state dicts, gathered to CPU (collective calls) and written by rank 0, so a sharded
run resumes from them, and so can an unsharded one.
"""

from __future__ import annotations

import torch


def shard_model(model: torch.nn.Module) -> None:
    """Shard every decoder layer, then the model itself (in place)."""
    from torch.distributed.fsdp import fully_shard

    layers = [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block"))]
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)


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
