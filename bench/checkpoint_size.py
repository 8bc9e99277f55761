"""Checkpoint size and write time for the bundled model, as the training loop writes one.

Builds the bundled all-MiniLM-L6-v2 classifier (2 labels) and its fused AdamW as the loop does,
takes one optimizer step (so the optimizer holds its two moment buffers per parameter), and
writes what the loop checkpoints (model, optimizer, scheduler, scaler, RNG states and a copy of
the best weights in its ``TrainState``) with the loop's ``Checkpointer`` (torch.save, fsync,
SHA-256 manifest, atomic rename). Reported: the ``state.pt`` size and the seconds of each write. About 10 s:

    .venv/bin/python bench/checkpoint_size.py
    .venv/bin/python bench/checkpoint_size.py --repeats 5 --out checkpoint.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="checkpoints written (default: 3)")
    parser.add_argument("--dir", type=Path, help="where to write them (default: a temporary directory)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from kftune.data.bundled import resolve_model
    from kftune.models.encoder import build_encoder_model
    from kftune.training.checkpoint import STATE_FILE, Checkpointer
    from kftune.training.config import TrainConfig
    from kftune.training.distributed import Ranks
    from kftune.training.optimizer import build_optimizer, build_scheduler
    from kftune.training.precision import loss_scaler
    from kftune.training.state import TrainState

    config = TrainConfig(task="classification")
    ranks = Ranks.start()
    head = {"num_labels": 2, "id2label": {0: "fresh", 1: "rotten"}, "label2id": {"fresh": 0, "rotten": 1}}
    model = build_encoder_model(config, head, resolve_model(config.model)).train()
    optimizer = build_optimizer(model, config, ranks.device)
    scheduler = build_scheduler(optimizer, config, 100)
    batch = {"input_ids": torch.randint(1000, 20000, (4, 32)), "attention_mask": torch.ones(4, 32, dtype=torch.long),
             "labels": torch.tensor([0, 1, 0, 1])}
    model(**batch).loss.backward()
    optimizer.step()
    scheduler.step()
    state = TrainState.start(config, ranks.world)
    state.step, state.micro = 1, 1
    state.best.score, state.best.epoch = 0.5, 1
    state.best.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    parameters = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory(prefix="kftune-bench-checkpoint-", dir=args.dir) as tmp:
        config.save_total_limit = 1
        checkpointer = Checkpointer(Path(tmp), config, model, optimizer, scheduler, loss_scaler("no"), ranks)
        seconds, size = [], 0
        for step in range(1, args.repeats + 1):
            state.step = step
            started = time.perf_counter()
            path = checkpointer.save(state)
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
