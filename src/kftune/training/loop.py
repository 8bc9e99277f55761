"""The training loop, run in every process that torchrun starts.

Read it top to bottom: set up the process group and device, load the tokenized splits and
the pretrained model (wrapped by peft for LoRA / prompt tuning), resume from the newest valid
checkpoint if there is one, then for each epoch run length-grouped (or plain shuffled)
batches through a DistributedDataParallel model under bf16 autocast (or fp16 with loss
scaling), step AdamW with linear warmup and decay, checkpoint every ``save_steps`` and at
each epoch end (and on SIGTERM), validate on rank 0, keep the best weights and stop early
when validation stops improving. Rank 0 writes the best model as a Hugging Face directory,
atomically.

    python -m torch.distributed.run --standalone --nproc_per_node=N \
        -m kftune.training.loop --config C --dataset D --output O
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from kftune.data.bundled import resolve_model
from kftune.data.schema import LABELS_FILE, LENGTH, TASK_FILE, TOKENIZER_DIR, dataset_task, load_splits
from kftune.errors import ConfigError
from kftune.models.encoder import build_encoder_model, save_encoder_model, trainable_parameters
from kftune.storage.atomic import atomic_directory
from kftune.tasks import DEFAULT_TASK, resolve_task, task_named
from kftune.tasks.encoder import EncoderTask
from kftune.training.causal_lm import (
    PEFT_MODES,
    CausalCollator,
    build_causal_lm,
    causal_training_loss,
    evaluate_causal,
    save_causal_lm,
)
from kftune.training.checkpoint import STATE_FILE, latest_checkpoint, save_checkpoint
from kftune.training.config import TrainConfig
from kftune.training.memory import check_training_memory, estimate_training_memory, gib
from kftune.training.precision import autocast, resolve_precision
from kftune.training.progress import ProgressLine
from kftune.training.sharding import (
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
    shard_model,
)
from kftune.training.unpadded import enable_padding_free

log = logging.getLogger("kftune.train")

HISTORY_FILE = "training_history.json"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool, group_batches: int = 8
) -> list[np.ndarray]:
    """The epoch's batches of example indices, the same on every rank.

    With ``group_by_length`` the shuffled order is cut into mega-batches of ``group_batches`` batches, each
    sorted by length (so batches hold texts of similar length and need little padding), and
    the batch order is shuffled again so that the loss sees lengths in random order; this is
    the scheme of transformers' ``LengthGroupedSampler`` (which uses 50).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        mega = batch_size * group_batches
        chunks = np.split(order, range(mega, len(order), mega))
        order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in chunks])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class Collator:
    """Pads a list of examples to the longest one in the batch (dynamic padding); the labels are the task's
    (``task.label_tensor``: class ids, normalised scores, multi-hot rows)."""

    def __init__(self, split, tokenizer, max_length: int = 0, task=None, info: dict | None = None):
        self.task, self.info = task or task_named(DEFAULT_TASK), info or {}
        # Plain lists: indexing a datasets column element by element costs milliseconds per batch
        # (bench/train_step.py times collation both ways).
        self.columns = {name: list(split[name]) for name in (*MODEL_INPUTS, "label") if name in split.column_names}
        self.pad_id = tokenizer.pad_token_id or 0
        if max_length:
            self._truncate(max_length)

    def _truncate(self, max_length: int) -> None:
        """Cut longer texts to ``max_length`` tokens, keeping the closing special token ([SEP])."""
        for name in MODEL_INPUTS:
            if name not in self.columns:
                continue
            if name == "input_ids":  # the last piece is [SEP]
                cut = [r[: max_length - 1] + r[-1:] if len(r) > max_length else r for r in self.columns[name]]
            else:
                cut = [r[:max_length] for r in self.columns[name]]
            self.columns[name] = cut
        if "label" in self.columns:
            self.columns["label"] = self.task.truncate_labels(self.columns["label"], max_length)

    def __call__(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        ids = [self.columns["input_ids"][i] for i in indices]
        width = max(len(x) for x in ids)
        batch = {}
        for name in MODEL_INPUTS:
            if name not in self.columns:
                continue
            pad = self.pad_id if name == "input_ids" else 0
            rows = [self.columns[name][i] for i in indices]
            batch[name] = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        batch["labels"] = self.task.label_tensor([self.columns["label"][i] for i in indices], self.info)
        return batch


@torch.no_grad()
def split_logits(model, collate, lengths: np.ndarray, batch_size: int, device, precision: str):
    """(mean loss, logits, stored labels) of ``model`` on one split, in the split's order (run in length order:
    less padding)."""
    model.eval()
    losses, logits, order = [], [], np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        batch = {k: v.to(device) for k, v in collate(order[start : start + batch_size]).items()}
        with autocast(device, precision):
            out = model(**batch)
        losses.append(out.loss.float().item() * len(batch["labels"]))
        logits.append(out.logits.float().cpu().numpy())
    model.train()
    if logits[0].ndim == 3:  # per-piece logits: pad every batch to the widest
        width = max(x.shape[1] for x in logits)
        logits = [np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0))) for x in logits]
    ordered = np.empty((len(order), *logits[0].shape[1:]), dtype=np.float32)
    ordered[order] = np.concatenate(logits)
    return sum(losses) / len(order), ordered, collate.task.label_array(collate.columns["label"])


def evaluate_split(model, collate, lengths: np.ndarray, batch_size: int, device, precision: str) -> dict[str, float]:
    """Loss and the task's validation scores (classification: accuracy and macro F1) of ``model`` on one split."""
    loss, logits, labels = split_logits(model, collate, lengths, batch_size, device, precision)
    return {"loss": loss, **collate.task.scores(logits, labels, collate.info)}


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise learning-rate decay: embeddings 0, transformer
    layer i -> i + 1, everything above the encoder (pooler, head) num_layers + 1."""
    match = re.search(r"\.layers?\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return 0 if "embeddings" in name else num_layers + 1


def build_optimizer(model, config: TrainConfig, device, fused: bool = True) -> torch.optim.Optimizer:
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


def rng_state() -> dict:
    """This process's random generator states (CPU and CUDA), in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Preemption:
    """Turns SIGTERM into a request to checkpoint and stop at the next optimizer step.

    Every rank gets SIGTERM (torchrun forwards it), but not at the same step, so the ranks
    agree through an all-reduce before anyone stops."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():  # signal handlers live there
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, distributed: bool, device) -> bool:
        if not distributed:
            return self.requested
        flag = torch.tensor([int(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def any_rank(flag: bool, distributed: bool, device) -> bool:
    """True if ``flag`` is true on any rank (an all-reduce under DDP, so every rank must call it)."""
    if not distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def average_gradients(model: torch.nn.Module, world: int, bucket_bytes: int = 25 * 1024**2) -> None:
    """Average the trainable parameters' gradients over the ranks as DDP does (divided by the world size, then
    summed by all-reduce, in buckets of about ``bucket_bytes``), for gradients accumulated under ``no_sync``."""
    buckets, size = [[]], 0
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:  # unused in this rank's forward: DDP counts it as zero
            param.grad = torch.zeros_like(param)
        grad = param.grad
        if buckets[-1] and (size >= bucket_bytes or grad.dtype != buckets[-1][0].dtype):
            buckets.append([])
            size = 0
        buckets[-1].append(grad)
        size += grad.numel() * grad.element_size()
    for bucket in filter(None, buckets):
        flat = torch.cat([g.reshape(-1) for g in bucket]).div_(world)
        dist.all_reduce(flat)
        for g, averaged in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
            g.copy_(averaged.view_as(g))


def default_checkpoint_dir(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + ".checkpoints")


def train(config: TrainConfig, dataset_dir: Path, output_dir: Path, halve_at_steps: Collection[int] = ()) -> dict:
    """Fine-tune in this process (one rank of a torchrun job); return the history on rank 0.

    Resumes from the newest valid checkpoint in the checkpoint directory if there is one:
    the resumed run continues with the same batches, RNG states and optimizer state, so its
    result equals that of a run that was never interrupted.

    Out of GPU memory in a micro-batch, the loop halves the micro-batch and doubles gradient
    accumulation (the same examples per optimizer step) and redoes the optimizer step: each
    micro-batch of the schedule is run in ``split`` pieces (1, then 2, 4, ...), each piece's mean
    loss weighted by its share of the examples. That is the same loss for the tasks whose loss is
    a mean over examples (classification, regression, multilabel); for token classification and
    causal-lm, whose loss is a mean over tokens, it is a mean of the pieces' means. The schedule,
    checkpoints and resume positions stay those of the configured micro-batch. ``halve_at_steps``
    (1-based optimizer steps) halves deliberately before those steps, as an out-of-memory error in
    them would: for tests, not a setting.
    """
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    config = resolve_task(config, dataset_dir)
    preemption = Preemption()
    distributed = "WORLD_SIZE" in os.environ
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    precision = resolve_precision(config.mixed_precision, device)
    is_main = rank == 0
    checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else default_checkpoint_dir(output_dir)
    seed_everything(config.seed)

    splits, _ = load_splits(dataset_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(dataset_dir / TOKENIZER_DIR))
    info = dataset_task(dataset_dir)
    task = task_named(config.task)
    causal = not isinstance(task, EncoderTask)
    base_path = resolve_model(config.model)
    if causal:
        model = build_causal_lm(config, base_path, device)
    else:
        model = build_encoder_model(config, task.head(info), base_path, task)
        if config.packing:
            enable_padding_free(model)
    if config.training_mode != "qlora":  # a 4-bit model is placed on its device as it loads
        model.to(device)
    model.train()
    frozen_base = causal and config.training_mode in PEFT_MODES
    trained_names = {name for name, p in model.named_parameters() if p.requires_grad}
    fsdp = distributed and config.sharding == "fsdp"
    if fsdp:  # FSDP2: each decoder layer's weights (and their gradients, optimizer state) split over the ranks
        shard_model(model)
        ddp_model = model
    else:
        ddp_model = (
            torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
            if distributed
            else model
        )

    def model_state() -> dict:
        """What checkpoints keep of the model (a collective call under FSDP, which gathers the shards): with a
        frozen base (LoRA), the trained weights only."""
        state = full_model_state(model) if fsdp else model.state_dict()
        return {k: v for k, v in state.items() if k in trained_names} if frozen_base else state

    def load_model_state(state: dict) -> None:
        if fsdp:
            load_full_model_state(model, state, strict=not frozen_base)
            return
        missing, unexpected = model.load_state_dict(state, strict=not frozen_base)
        if unexpected:
            raise ConfigError(f"checkpoint weights do not fit the model: {unexpected[:3]}")

    train_split, val_split = splits["train"], splits["validation"]
    keep_last = config.train_on == "train+validation"
    if keep_last:
        from datasets import concatenate_datasets

        train_split = concatenate_datasets([train_split, val_split])
    if causal:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        collate_train = CausalCollator(train_split, pad_id, config.max_train_length, config.packing)
        collate_val = CausalCollator(val_split, pad_id, config.max_train_length, config.packing)
    else:
        collate_train = Collator(train_split, tokenizer, config.max_train_length, task, info)
        collate_val = Collator(val_split, tokenizer, config.max_train_length, task, info)
    loss_of = causal_training_loss if causal else lambda model, batch, _: task.loss(model, batch, config)
    evaluate = evaluate_causal if causal else evaluate_split
    lengths = np.asarray(train_split[LENGTH])
    val_lengths = np.asarray(val_split[LENGTH])
    if config.max_train_length:
        lengths = np.minimum(lengths, config.max_train_length)
        val_lengths = np.minimum(val_lengths, config.max_train_length)
    batch_size, accum = config.per_device_train_batch_size, config.gradient_accumulation_steps
    micro_per_epoch = len(epoch_batches(lengths, batch_size, config.seed, 0, False)) // world
    if micro_per_epoch == 0:
        raise ValueError(f"{len(lengths)} training examples are fewer than {world} batches")
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    total_steps = steps_per_epoch * config.num_train_epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    if device.type == "cpu":
        trainable, total = trainable_parameters(model)
        shape = {name: getattr(model.config, name, 0) or 0
                 for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")}
        estimate = estimate_training_memory(
            total, trainable, batch_size, int(lengths.max()), shape["hidden_size"], shape["num_hidden_layers"],
            shape["num_attention_heads"], shape["vocab_size"] if causal else 0,
        )
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if is_main:
            log.info("estimated peak memory per process %s (weights %s, gradients and optimizer state %s, "
                     "activations %s)", gib(estimate.total), gib(estimate.weights), gib(estimate.optimizer),
                     gib(estimate.activations))
        check_training_memory(estimate, processes)
    optimizer = build_optimizer(model, config, device, fused=not fsdp)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    higher_is_better = task.higher_is_better(config.metric_for_best_model) if task else False
    best_score, best_epoch, best_state = None, -1, None
    history: dict = {"epochs": [], "steps": [], "config": asdict(config), "world_size": world}
    step, stale_epochs, start_epoch, start_micro, done = 0, 0, 0, 0, False
    progress = {"loss_sum": 0.0, "loss_count": 0}
    split = 1  # each micro-batch runs in this many pieces (doubled on out-of-memory errors)
    # DDP averages gradients during the last piece's backward, unless after_backward: then every piece runs under
    # no_sync and the gradients are averaged once the ranks have agreed that no backward ran out of memory
    sync_after_backward = config.ddp_gradient_sync == "after_backward"

    resumed = find_checkpoint(checkpoint_dir, distributed)
    if resumed is not None:
        path, state = resumed
        differences = config.resume_differences(state["config"])
        if differences:
            raise ConfigError(
                f"{checkpoint_dir} holds checkpoints of a different training run "
                f"(differs in {', '.join(differences)}); use another checkpoint_dir or remove it"
            )
        if state["world_size"] != world:
            log.warning(
                "checkpoint %s was written by %d process(es), resuming with %d: batch order changes",
                path,
                state["world_size"],
                world,
            )
        load_model_state(state["model"])
        if fsdp:
            load_full_optimizer_state(model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, start_epoch, start_micro, done = state["step"], state["epoch"], state["micro"], state["done"]
        best_score, best_epoch, best_state = state["best_score"], state["best_epoch"], state["best_state"]
        stale_epochs, history, progress = state["stale_epochs"], state["history"], state["progress"]
        split = state.get("micro_split", 1)
        sync_after_backward = state.get("sync_after_backward", sync_after_backward)
        ranks_rng = state["rng"]
        set_rng_state(ranks_rng[rank] if rank < len(ranks_rng) else ranks_rng[0])
        if is_main:
            log.info(
                "resumed from %s: step %d, epoch %d, %d micro-batches into it", path, step, start_epoch + 1, start_micro
            )

    def save(epoch: int, micro: int) -> Path | None:
        """Checkpoint the position after ``micro`` micro-batches of ``epoch`` (a collective call)."""
        states = [None] * world
        if distributed:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        path = None
        weights = model_state()
        optimizer_state = full_optimizer_state(model, optimizer) if fsdp else optimizer.state_dict()
        if is_main:
            state = {
                "step": step,
                "epoch": epoch,
                "micro": micro,
                "done": done,
                "world_size": world,
                "config": asdict(config),
                "model": weights,
                "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": states,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "best_state": best_state,
                "stale_epochs": stale_epochs,
                "history": history,
                "progress": progress,
                "micro_split": split,
                "sync_after_backward": sync_after_backward,
            }
            path = save_checkpoint(checkpoint_dir, step, state, keep=config.save_total_limit)
            log.info("checkpoint written: %s", path)
        return path

    def run_group(group: range, batches: list[np.ndarray]) -> list[float] | None:
        """Forward and backward of one optimizer step's micro-batches, each in ``split`` pieces: the micro-batches'
        losses, or None when a rank ran out of memory (then every rank returns None, and the step must be redone).

        Under DDP the ranks agree after each piece, before anything that would start a collective: after the
        backward of an unsynchronised piece, after the forward of the group's last (gradient-synchronising)
        one. An out-of-memory error in that last backward cannot be agreed on and ends the run, unless gradients
        are averaged after the backward pass (``sync_after_backward``): then every piece is unsynchronised."""
        losses = []
        sync_in_backward = distributed and not (sync_after_backward and not fsdp)
        for micro in group:
            indices = batches[micro]
            pieces = np.array_split(indices, min(split, len(indices)))
            micro_loss = 0.0
            for n, piece in enumerate(pieces):
                synced = sync_in_backward and micro == group[-1] and n == len(pieces) - 1
                weight = len(piece) / len(indices)
                out_of_memory = False
                try:
                    with contextlib.nullcontext() if synced or not distributed else ddp_model.no_sync():
                        batch = {k: v.to(device, non_blocking=True) for k, v in collate_train(piece).items()}
                        with autocast(device, precision):
                            loss = loss_of(ddp_model, batch, config.label_smoothing)
                        if not synced:
                            scaler.scale(loss * weight / accum).backward()
                except torch.OutOfMemoryError:
                    if fsdp:  # the other ranks wait in the sharded forward's collectives
                        raise
                    out_of_memory, batch, loss = True, None, None
                if any_rank(out_of_memory, distributed, device):
                    if distributed:
                        # DDP's state back to that of a step's start, the same on every rank (a rank whose forward
                        # failed did not finish it): no backward expected, buffers broadcast in the next forward
                        ddp_model.reducer._reset_state()
                        ddp_model.require_forward_param_sync = True
                    return None
                if synced:
                    try:
                        scaler.scale(loss * weight / accum).backward()
                    except torch.OutOfMemoryError as error:
                        raise ConfigError(
                            f"out of memory in the backward pass of a micro-batch of {len(piece)} (rank {rank}), "
                            "where the ranks cannot agree to retry: lower per_device_train_batch_size, or set "
                            "ddp_gradient_sync=after_backward"
                        ) from error
                micro_loss += loss.item() * weight
            losses.append(micro_loss)
        if distributed and not sync_in_backward:
            average_gradients(model, world)
        return losses

    def change_split(new_split: int, reason: str) -> None:
        """Run micro-batches in ``new_split`` pieces from optimizer step ``step + 1`` on."""
        nonlocal split, sync_after_backward
        old_micro, new_micro = math.ceil(batch_size / split), math.ceil(batch_size / new_split)
        if distributed and not fsdp and not sync_after_backward:
            sync_after_backward = True  # memory is tight: the next error may come in the backward pass
            if is_main:
                log.warning("from optimizer step %d on, gradients are averaged after the backward pass "
                            "(ddp_gradient_sync=after_backward), so that an out-of-memory error there can be "
                            "recovered too", step + 1)
        if is_main:
            (log.warning if reason == "out of memory" else log.info)(
                "%s in optimizer step %d: micro-batch %d -> %d, gradient accumulation %d -> %d "
                "(the same %d examples per step)%s", reason, step + 1, old_micro, new_micro, accum * split,
                accum * new_split, batch_size * accum, "; redoing the step" if reason == "out of memory" else "",
            )
        history.setdefault("micro_batch_changes", []).append(
            {"step": step + 1, "micro_batch": new_micro, "gradient_accumulation": accum * new_split, "reason": reason}
        )
        split = new_split

    if is_main:
        trainable, total = trainable_parameters(model)
        log.info(
            "training %s (%s: %d of %d parameters trainable): %d examples, %d epochs, %d process(es) x batch %d "
            "x accumulation %d, %d optimizer steps, precision=%s, device=%s, threads=%d",
            config.model, config.training_mode, trainable, total, len(lengths), config.num_train_epochs, world,
            batch_size, accum, total_steps, precision, device.type, torch.get_num_threads(),
        )
    progress_line = ProgressLine(total_steps, enabled=is_main)  # for kftune run's progress bar
    progress_line.start(step)
    train_start = time.perf_counter()
    for epoch in range(start_epoch, config.num_train_epochs):
        if done:
            break
        batches = epoch_batches(
            lengths, batch_size, config.seed, epoch, config.group_by_length, config.length_group_batches
        )
        mine = batches[rank : micro_per_epoch * world : world]
        first = start_micro if epoch == start_epoch else 0
        if first == 0:
            progress = {"loss_sum": 0.0, "loss_count": 0}
        epoch_start = window_start = time.perf_counter()
        window_samples, samples_this_run, tokens_this_run = 0, 0, 0
        for group_start in range(first, len(mine), accum):  # one optimizer step's micro-batches
            group = range(group_start, min(group_start + accum, len(mine)))
            if step + 1 in halve_at_steps:
                change_split(split * 2, "halving requested")
            rng_at_start = rng_state()
            while (losses := run_group(group, mine)) is None:
                ddp_model.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                set_rng_state(rng_at_start)  # the redone step draws the same dropout masks
                if math.ceil(batch_size / split) == 1:
                    raise ConfigError(
                        "out of memory at micro-batch 1: use a smaller model or max_train_length, or more memory"
                    )
                change_split(split * 2, "out of memory")
            for micro, loss_value in zip(group, losses, strict=True):
                indices = mine[micro]
                progress["loss_sum"] += loss_value
                progress["loss_count"] += 1
                window_samples += len(indices) * world
                samples_this_run += len(indices) * world
                tokens_this_run += int(lengths[indices].sum()) * world
            if config.max_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress_line.step(step, progress["loss_sum"] / progress["loss_count"],
                               samples_this_run / (time.perf_counter() - epoch_start))
            if is_main and (step % config.logging_steps == 0 or step == total_steps):
                elapsed = time.perf_counter() - window_start
                rate = window_samples / elapsed if elapsed else float("nan")
                record = {
                    "step": step,
                    "epoch": epoch + micro / len(mine),
                    "loss": progress["loss_sum"] / progress["loss_count"],
                    "learning_rate": scheduler.get_last_lr()[0],
                    "samples_per_second": rate,
                }
                history["steps"].append(record)
                log.info(
                    "epoch %d step %d/%d loss %.4f lr %.2e %.1f samples/s",
                    epoch + 1,
                    step,
                    total_steps,
                    record["loss"],
                    record["learning_rate"],
                    rate,
                )
                window_start, window_samples = time.perf_counter(), 0
            if step >= total_steps:
                break
            if preemption.agreed(distributed, device):
                path = save(epoch, micro + 1)
                if distributed:
                    dist.barrier()
                    dist.destroy_process_group()
                if is_main:
                    log.warning("SIGTERM: stopped at step %d after writing %s; a restart resumes from it", step, path)
                raise SystemExit(128 + signal.SIGTERM)
            if config.save_steps and step % config.save_steps == 0:
                save(epoch, micro + 1)
        epoch_seconds = time.perf_counter() - epoch_start

        result = [None]
        # rank 0 validates; under FSDP every rank takes part in the sharded forward pass and in gathering weights
        if is_main or fsdp:
            val = evaluate(model, collate_val, val_lengths, config.per_device_eval_batch_size, device, precision)
            score = val[config.metric_for_best_model]
            improved = keep_last or best_score is None or (
                score > best_score if higher_is_better else score < best_score
            )
            if improved:
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model_state().items()}
        if is_main:
            record = {
                "epoch": epoch + 1,
                "train_loss": progress["loss_sum"] / max(1, progress["loss_count"]),
                "train_samples_per_second": samples_this_run / epoch_seconds,
                "train_tokens_per_second": tokens_this_run / epoch_seconds,
                "epoch_seconds": epoch_seconds,
                **{f"val_{k}": v for k, v in val.items()},
            }
            history["epochs"].append(record)
            log.info(
                "epoch %d done in %.1fs (%.1f samples/s): val %s%s",
                epoch + 1,
                epoch_seconds,
                record["train_samples_per_second"],
                " ".join(f"{k} {v:.4f}" for k, v in val.items()),
                " (best)" if improved else "",
            )
            progress_line.epoch(epoch + 1, config.metric_for_best_model, score)
            stale_epochs = 0 if improved else stale_epochs + 1
            stop = bool(config.early_stopping_patience and stale_epochs >= config.early_stopping_patience)
            stop = stop and not keep_last
            if stop:
                log.info("early stopping: no improvement of %s for %d epoch(s)", config.metric_for_best_model,
                         stale_epochs)
            elif config.pruning:
                from kftune.training.pruning import PruningTarget

                prune = PruningTarget.from_json(config.pruning).report(score, epoch + 1)
                stop = prune and epoch + 1 < config.num_train_epochs
                if stop:
                    history["pruned_at_epoch"] = epoch + 1
                    log.info("pruned by the search after epoch %d (%s %.4f)", epoch + 1,
                             config.metric_for_best_model, score)
            result = [stop]
        if distributed:
            dist.broadcast_object_list(result, src=0)
        early_stop = result[0]
        done = early_stop or step >= total_steps or epoch + 1 == config.num_train_epochs
        save(epoch + 1, 0)
    preemption.restore()

    if is_main:
        history.update(
            best_epoch=best_epoch + 1,
            best_metric=config.metric_for_best_model,
            best_score=best_score,
            train_seconds=time.perf_counter() - train_start,
            precision=precision,
            training_mode=config.training_mode,
        )
        if fsdp:  # the best weights into an unsharded copy of the model, which this rank alone writes
            model = build_causal_lm(config, base_path, device)
            model.load_state_dict(best_state, strict=not frozen_base)
        else:
            load_model_state(best_state)
        with atomic_directory(output_dir) as tmp:
            if causal:
                save_causal_lm(model, tmp, config, base_path)
                shutil.copy(dataset_dir / TASK_FILE, tmp / TASK_FILE)
            else:
                save_encoder_model(model, tmp, config.training_mode)
                if (dataset_dir / LABELS_FILE).is_file():
                    shutil.copy(dataset_dir / LABELS_FILE, tmp / LABELS_FILE)
                _, val_logits, val_labels = split_logits(model, collate_val, val_lengths,
                                                         config.per_device_eval_batch_size, device, precision)
                trained_info = task.after_training(val_logits, val_labels, info)
                (tmp / TASK_FILE).write_text(json.dumps(trained_info, indent=2), encoding="utf-8")
            tokenizer.save_pretrained(str(tmp))
            (tmp / HISTORY_FILE).write_text(json.dumps(history, indent=2), encoding="utf-8")
        log.info(
            "best epoch %d (%s %.4f); model written to %s",
            best_epoch + 1,
            config.metric_for_best_model,
            best_score,
            output_dir,
        )
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return history


def find_checkpoint(checkpoint_dir: Path, distributed: bool) -> tuple[Path, dict] | None:
    """The newest valid checkpoint, chosen by rank 0 so that every rank resumes from the same one."""
    if not distributed:
        return latest_checkpoint(checkpoint_dir)
    choice = [None]
    if dist.get_rank() == 0:
        found = latest_checkpoint(checkpoint_dir)
        choice = [str(found[0]) if found else None]
        state = found[1] if found else None
    dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return None
    if dist.get_rank() != 0:
        state = torch.load(Path(choice[0]) / STATE_FILE, map_location="cpu", weights_only=True)
    return Path(choice[0]), state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="kftune training worker (started by torchrun, or alone for one process)"
    )
    parser.add_argument("--config", required=True, type=Path, help="TrainConfig as JSON")
    parser.add_argument("--dataset", required=True, type=Path, help="preprocessed dataset artifact")
    parser.add_argument("--output", required=True, type=Path, help="model directory to write")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(message)s",
        stream=sys.stdout,
    )
    config = TrainConfig.from_json(args.config)
    train(config, args.dataset, args.output)


if __name__ == "__main__":
    main()
