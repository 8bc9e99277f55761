"""Checkpoint size and write time for the bundled model, as the training loop writes one.

Builds the bundled all-MiniLM-L6-v2 classifier (2 labels) and its fused AdamW as the loop does,
takes one optimizer step (so the optimizer holds its two moment buffers per parameter), and
writes the state the loop checkpoints (model, optimizer, scheduler, scaler, RNG states and a
copy of the best weights) with ``save_checkpoint`` (torch.save, fsync, SHA-256 manifest,
atomic rename). Reported: the ``state.pt`` size and the seconds of each write. About 10 s:

    .venv/bin/python bench/checkpoint_size.py
    .venv/bin/python bench/checkpoint_size.py --repeats 5 --out checkpoint.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="checkpoints written (default: 3)")
    parser.add_argument("--dir", type=Path, help="where to write them (default: a temporary directory)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from transformers import get_linear_schedule_with_warmup

    from kftune.data.bundled import resolve_model
    from kftune.models.encoder import build_encoder_model
    from kftune.training.checkpoint import STATE_FILE, save_checkpoint
    from kftune.training.config import TrainConfig
    from kftune.training.optimizer import build_optimizer
    from kftune.training.rng import rng_state

    config = TrainConfig()
    device = torch.device("cpu")
    model = build_encoder_model(config, 2, {0: "fresh", 1: "rotten"}, {"fresh": 0, "rotten": 1},
                             resolve_model(config.model)).train()
    optimizer = build_optimizer(model, config, device)
    scheduler = get_linear_schedule_with_warmup(optimizer, 10, 100)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    batch = {"input_ids": torch.randint(1000, 20000, (4, 32)), "attention_mask": torch.ones(4, 32, dtype=torch.long),
             "labels": torch.tensor([0, 1, 0, 1])}
    model(**batch).loss.backward()
    optimizer.step()
    scheduler.step()
    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    state = {"step": 1, "epoch": 0, "micro": 1, "done": False, "world_size": 1, "config": asdict(config),
             "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "rng": [rng_state()], "best_score": 0.5, "best_epoch": 1,
             "best_state": best_state, "stale_epochs": 0, "history": {"epochs": [], "steps": []},
             "progress": {"loss_sum": 0.0, "loss_count": 0}}
    parameters = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory(prefix="kftune-bench-checkpoint-", dir=args.dir) as tmp:
        seconds, size = [], 0
        for step in range(1, args.repeats + 1):
            started = time.perf_counter()
            path = save_checkpoint(Path(tmp), step, state, keep=1)
            seconds.append(time.perf_counter() - started)
            size = (path / STATE_FILE).stat().st_size
    result = {"parameters": parameters, "state_bytes": size, "write_seconds": seconds}
    print(f"model: {parameters / 1e6:.1f} M parameters (fp32: {parameters * 4 / 1e6:.0f} MB)")
    print(f"checkpoint state.pt: {size / 1e6:.0f} MB (model, AdamW moments, best weights)")
    print("write seconds: " + ", ".join(f"{s:.2f}" for s in seconds))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
