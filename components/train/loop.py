"""The training loop, run in every process that torchrun starts.

Read it top to bottom: set up the process group and device, load the tokenized splits and
the pretrained model, then for each epoch run length-grouped (or plain shuffled) batches
through a DistributedDataParallel model under bf16 autocast, step AdamW with linear warmup
and decay, validate on rank 0, keep the best weights and stop early when validation stops
improving. Rank 0 writes the best model as a Hugging Face directory, atomically.

    python -m torch.distributed.run --standalone --nproc_per_node=N \
        -m kftune.components.train.loop --config C --dataset D --output O
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
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from kftune.components.common.atomic import atomic_directory
from kftune.components.common.bundled import resolve_model
from kftune.components.common.schema import LABELS_FILE, LENGTH, TOKENIZER_DIR, load_splits
from kftune.components.train.config import TrainConfig

log = logging.getLogger("kftune.train")

HISTORY_FILE = "training_history.json"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def cpu_has_fast_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX (bf16 matmuls several times faster than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(setting: str, device: torch.device) -> bool:
    if setting != "auto":
        return setting == "true"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[np.ndarray]:
    """The epoch's batches of example indices, the same on every rank.

    With ``group_by_length`` the shuffled order is cut into mega-batches of 50 batches, each
    sorted by length (so batches hold texts of similar length and need little padding), and
    the batch order is shuffled again so that the loss sees lengths in random order; this is
    the scheme of transformers' ``LengthGroupedSampler``.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        mega = batch_size * 50
        chunks = np.split(order, range(mega, len(order), mega))
        order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in chunks])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class Collator:
    """Pads a list of examples to the longest one in the batch (dynamic padding)."""

    def __init__(self, split, tokenizer):
        # Plain lists: indexing a datasets column element by element is ~20 ms per batch.
        self.columns = {name: list(split[name]) for name in (*MODEL_INPUTS, "label") if name in split.column_names}
        self.pad_id = tokenizer.pad_token_id or 0

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
        batch["labels"] = torch.tensor([self.columns["label"][i] for i in indices], dtype=torch.long)
        return batch


@torch.no_grad()
def evaluate_split(model, collate, lengths: np.ndarray, batch_size: int, device, bf16: bool) -> dict[str, float]:
    """Loss, accuracy and macro F1 of ``model`` on one split (run in length order: less padding)."""
    from sklearn.metrics import accuracy_score, f1_score

    model.eval()
    losses, preds, labels = [], [], []
    n = len(lengths)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, n, batch_size):
        batch = {k: v.to(device) for k, v in collate(order[start : start + batch_size]).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch)
        losses.append(out.loss.float().item() * len(batch["labels"]))
        preds.append(out.logits.float().argmax(-1).cpu())
        labels.append(batch["labels"].cpu())
    model.train()
    y_pred, y_true = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    return {
        "loss": sum(losses) / n,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro")),
    }


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise learning-rate decay: embeddings 0, transformer
    layer i -> i + 1, everything above the encoder (pooler, head) num_layers + 1."""
    match = re.search(r"\.layers?\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return 0 if "embeddings" in name else num_layers + 1


def build_optimizer(model, config: TrainConfig, device) -> torch.optim.Optimizer:
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
    return torch.optim.AdamW(param_groups, lr=config.learning_rate, fused=device.type in ("cpu", "cuda"))


def train(config: TrainConfig, dataset_dir: Path, output_dir: Path) -> dict:
    """Fine-tune in this process (one rank of a torchrun job); return the history on rank 0."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

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
    bf16 = use_bf16(config.bf16, device)
    is_main = rank == 0
    seed_everything(config.seed)

    splits, label_map = load_splits(dataset_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(dataset_dir / TOKENIZER_DIR))
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(config.model),
        num_labels=len(label_map),
        id2label=label_map.id2label,
        label2id=label_map.label2id,
        ignore_mismatched_sizes=True,
    )
    if config.freeze_encoder:
        for param in model.base_model.parameters():
            param.requires_grad = False
    model.to(device).train()
    ddp_model = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
        if distributed
        else model
    )

    train_split, val_split = splits["train"], splits["validation"]
    collate_train = Collator(train_split, tokenizer)
    collate_val = Collator(val_split, tokenizer)
    lengths = np.asarray(train_split[LENGTH])
    val_lengths = np.asarray(val_split[LENGTH])
    batch_size, accum = config.per_device_train_batch_size, config.gradient_accumulation_steps
    micro_per_epoch = len(epoch_batches(lengths, batch_size, config.seed, 0, False)) // world
    if micro_per_epoch == 0:
        raise ValueError(f"{len(lengths)} training examples are fewer than {world} batches")
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    total_steps = steps_per_epoch * config.num_train_epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    optimizer = build_optimizer(model, config, device)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    if is_main:
        log.info(
            "training %s: %d examples, %d epochs, %d process(es) x batch %d x accumulation %d, "
            "%d optimizer steps, bf16=%s, device=%s, threads=%d",
            config.model, len(lengths), config.num_train_epochs, world, batch_size, accum,
            total_steps, bf16, device.type, torch.get_num_threads(),
        )
    higher_is_better = config.metric_for_best_model != "loss"
    best_score, best_epoch, best_state = None, -1, None
    history: dict = {"epochs": [], "steps": [], "config": vars(config).copy(), "world_size": world}
    step, stale_epochs = 0, 0
    train_start = time.perf_counter()
    for epoch in range(config.num_train_epochs):
        batches = epoch_batches(lengths, batch_size, config.seed, epoch, config.group_by_length)
        mine = batches[rank : micro_per_epoch * world : world]
        epoch_start = window_start = time.perf_counter()
        window_samples, epoch_samples, loss_sum, loss_count = 0, 0, 0.0, 0
        for micro, indices in enumerate(mine):
            batch = {k: v.to(device, non_blocking=True) for k, v in collate_train(indices).items()}
            last_of_group = (micro + 1) % accum == 0 or micro + 1 == len(mine)
            sync = ddp_model.no_sync() if distributed and not last_of_group else contextlib.nullcontext()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = ddp_model(**batch).loss
                (loss / accum).backward()
            loss_sum += loss.item()
            loss_count += 1
            window_samples += len(indices) * world
            epoch_samples += len(indices) * world
            if not last_of_group:
                continue
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if is_main and (step % config.logging_steps == 0 or step == total_steps):
                elapsed = time.perf_counter() - window_start
                rate = window_samples / elapsed if elapsed else float("nan")
                record = {"step": step, "epoch": epoch + micro / len(mine), "loss": loss_sum / loss_count,
                          "learning_rate": scheduler.get_last_lr()[0], "samples_per_second": rate}
                history["steps"].append(record)
                log.info(
                    "epoch %d step %d/%d loss %.4f lr %.2e %.1f samples/s",
                    epoch + 1, step, total_steps, record["loss"], record["learning_rate"], rate,
                )
                window_start, window_samples = time.perf_counter(), 0
            if step >= total_steps:
                break
        epoch_seconds = time.perf_counter() - epoch_start

        result = [None]
        if is_main:
            val = evaluate_split(model, collate_val, val_lengths, config.per_device_eval_batch_size, device, bf16)
            score = val[config.metric_for_best_model]
            improved = best_score is None or (score > best_score if higher_is_better else score < best_score)
            if improved:
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, loss_count),
                      "train_samples_per_second": epoch_samples / epoch_seconds,
                      "epoch_seconds": epoch_seconds, **{f"val_{k}": v for k, v in val.items()}}
            history["epochs"].append(record)
            log.info(
                "epoch %d done in %.1fs (%.1f samples/s): val loss %.4f accuracy %.4f f1_macro %.4f%s",
                epoch + 1, epoch_seconds, record["train_samples_per_second"], val["loss"],
                val["accuracy"], val["f1_macro"], " (best)" if improved else "",
            )
            stale_epochs = 0 if improved else stale_epochs + 1
            result = [config.early_stopping_patience and stale_epochs >= config.early_stopping_patience]
        if distributed:
            dist.broadcast_object_list(result, src=0)
        if result[0]:
            if is_main:
                log.info("early stopping: no improvement of %s for %d epoch(s)",
                         config.metric_for_best_model, stale_epochs)
            break
        if step >= total_steps:
            break

    if is_main:
        history.update(
            best_epoch=best_epoch + 1,
            best_metric=config.metric_for_best_model,
            best_score=best_score,
            train_seconds=time.perf_counter() - train_start,
            bf16=bf16,
        )
        model.load_state_dict(best_state)
        with atomic_directory(output_dir) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            shutil.copy(dataset_dir / LABELS_FILE, tmp / LABELS_FILE)
            (tmp / HISTORY_FILE).write_text(json.dumps(history, indent=2), encoding="utf-8")
        log.info("best epoch %d (%s %.4f); model written to %s",
                 best_epoch + 1, config.metric_for_best_model, best_score, output_dir)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="kftune training worker (started by torchrun)")
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
