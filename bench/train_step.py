"""Where a training step's time goes: collation, forward, backward, clipping, optimizer step.

The bundled model (all-MiniLM-L6-v2, 2 labels) on batches of the preprocessed bundled data,
cut by the loop's ``epoch_batches`` (random batches, the default; ``--group-by-length`` for
mega-batches of 8), with the loop's precision choice (bf16 autocast where the CPU is fast at
it), its fused AdamW and gradient clipping at 1.0. Each phase is timed per step (median over
``--steps`` steps after ``--warmup``). Collation is timed twice: the loop's ``Collator`` (plain
lists) and indexing the datasets split row by row (what a collator reading Arrow columns
directly does). ``--freeze-embeddings`` also times a step with the word embeddings frozen.
About a minute on 2 CPU cores:

    .venv/bin/python bench/train_step.py
    .venv/bin/python bench/train_step.py --group-by-length --freeze-embeddings
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--group-by-length", action="store_true")
    parser.add_argument("--freeze-embeddings", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.data.bundled import resolve_model
    from kftune.data.schema import LENGTH, dataset_task, load_splits
    from kftune.inference.runners import MODEL_INPUTS
    from kftune.models.encoder import build_encoder_model
    from kftune.tasks import task_named, with_task
    from kftune.training.config import TrainConfig
    from kftune.training.encoder_recipe import Collator
    from kftune.training.loop import epoch_batches
    from kftune.training.optimizer import build_optimizer
    from kftune.training.precision import autocast, resolve_precision

    with tempfile.TemporaryDirectory(prefix="kftune-bench-step-") as tmp:
        preprocess(PreprocessConfig(), Path(tmp) / "data", Path(tmp) / "test_split")
        splits, _ = load_splits(Path(tmp) / "data")
        info = dataset_task(Path(tmp) / "data")
        tokenizer = AutoTokenizer.from_pretrained(str(Path(tmp) / "data" / "tokenizer"))
        train_split = splits["train"]
        config = with_task(TrainConfig(group_by_length=args.group_by_length), info["task"])
        task = task_named(config.task)
        device = torch.device("cpu")
        precision = resolve_precision(config.mixed_precision, device)
        lengths = np.asarray(train_split[LENGTH])
        batches = epoch_batches(lengths, args.batch_size, config.seed, 0, config.group_by_length)
        batches = batches[: args.warmup + args.steps]
        collate = Collator(train_split, tokenizer, config.max_train_length, task, info)
        inputs = [n for n in MODEL_INPUTS if n in train_split.column_names]

        def collate_rows(indices):  # the datasets split indexed row by row, then padded
            rows = [train_split[int(i)] for i in indices]
            width = max(len(r["input_ids"]) for r in rows)
            return {n: torch.tensor([r[n] + [0] * (width - len(r[n])) for r in rows]) for n in inputs}

        def run(freeze: bool) -> dict:
            torch.manual_seed(config.seed)
            model = build_encoder_model(config, task.head(info), resolve_model(config.model), task).train()
            if freeze:
                model.get_input_embeddings().weight.requires_grad_(False)
            optimizer = build_optimizer(model, config, device)
            phases: dict[str, list[float]] = {k: [] for k in ("collate", "collate_rows", "forward", "backward",
                                                               "clip", "optimizer", "step")}
            tokens = []
            for k, indices in enumerate(batches):
                t0 = time.perf_counter()
                batch = collate(indices)
                t1 = time.perf_counter()
                collate_rows(indices)
                t2 = time.perf_counter()
                with autocast(device, precision):
                    loss = task.loss(model, batch, config)
                t3 = time.perf_counter()
                loss.backward()
                t4 = time.perf_counter()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                t5 = time.perf_counter()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                t6 = time.perf_counter()
                if k >= args.warmup:
                    for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5,
                                                      (t1 - t0) + (t6 - t2)), strict=True):
                        phases[name].append(seconds)
                    tokens.append(batch["input_ids"].shape[1])
            return {"median_ms": {k: 1000 * statistics.median(v) for k, v in phases.items()},
                    "padded_length_mean": float(np.mean(tokens))}

        result = {"batch_size": args.batch_size, "group_by_length": args.group_by_length, "precision": precision,
                  "steps": args.steps, "torch_threads": torch.get_num_threads(), "full": run(False)}
        if args.freeze_embeddings:
            result["frozen_word_embeddings"] = run(True)
    for name in ("full", "frozen_word_embeddings"):
        if name in result:
            ms = result[name]["median_ms"]
            print(f"{name}: batch {args.batch_size}, {result[name]['padded_length_mean']:.0f} tokens padded, "
                  f"{precision}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
