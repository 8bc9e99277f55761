"""AdamW with the BERT recipe's parameter groups, its linear warmup and decay, and the optimizer step."""

from __future__ import annotations

import re

import torch


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise learning-rate decay: embeddings 0, transformer
    layer i -> i + 1, everything above the encoder (pooler, head) num_layers + 1."""
    match = re.search(r"\.layers?\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return 0 if "embeddings" in name else num_layers + 1


def build_optimizer(model, config, device, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases and LayerNorm weights (the BERT recipe) and,
    with ``layerwise_lr_decay`` < 1, smaller learning rates for lower layers."""
    num_layers = getattr(model.config, "num_hidden_layers", 0)
    groups: dict[tuple[int, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = layer_depth(name, num_layers) if config.layerwise_lr_decay < 1 else 0
        groups.setdefault((depth, param.ndim >= 2), []).append(param)
    param_groups = [
        {
            "params": params,
            "weight_decay": config.weight_decay if decays else 0.0,
            # with the decay off (1.0) every factor is 1 and all groups share learning_rate
            "lr": config.learning_rate * config.layerwise_lr_decay ** (num_layers + 1 - depth),
        }
        for (depth, decays), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=config.learning_rate, fused=fused and device.type in ("cpu", "cuda"))


def build_scheduler(optimizer: torch.optim.Optimizer, config, total_steps: int):
    """Linear warmup over ``warmup_ratio`` of the steps, then linear decay to 0."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)


def optimizer_step(model: torch.nn.Module, optimizer, scheduler, scaler, max_grad_norm: float) -> None:
    """Apply the accumulated gradients (clipped to ``max_grad_norm`` unless 0, unscaled first under fp16's loss
    scaling), advance the learning rate, and clear the gradients."""
    if max_grad_norm:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
