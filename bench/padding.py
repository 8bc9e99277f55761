"""Padding: token positions processed per real token, for each way the training loop batches.

Preprocesses the bundled data as the default run does (Rotten Tomatoes reviews, the bundled
model's tokenizer, max 128 tokens, seeded 80/10/10 split), takes the training split's lengths
and cuts them into batches with the loop's own ``epoch_batches``: random batches (the default),
and length-grouped mega-batches of 4, 8 (``group_by_length``'s default) and 50 batches
(transformers' ``LengthGroupedSampler``). Padded positions = batch size x longest text, summed
over an epoch's batches; the ratio divides that by the real tokens. Seconds on 2 CPU cores
(tokenizing the 12,808 reviews is most of it):

    .venv/bin/python bench/padding.py                      # batch 32, seed 42, epochs 0-2
    .venv/bin/python bench/padding.py --batch-size 16 --out padding.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

SCHEMES = {"random batches": (False, 0), "mega-batches of 4": (True, 4), "mega-batches of 8": (True, 8),
           "mega-batches of 50": (True, 50)}


def padding_ratio(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, grouped: bool, group: int) -> float:
    from kftune.training.loop import epoch_batches

    batches = epoch_batches(lengths, batch_size, seed, epoch, grouped, group or 8)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return padded / int(lengths.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=3, help="epochs whose batches are measured (default: 3)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.data.schema import LENGTH, load_splits

    with tempfile.TemporaryDirectory(prefix="kftune-bench-padding-") as tmp:
        preprocess(PreprocessConfig(), Path(tmp) / "data", Path(tmp) / "test_split")
        lengths = np.asarray(load_splits(Path(tmp) / "data")[0]["train"][LENGTH])
    rows = []
    for name, (grouped, group) in SCHEMES.items():
        ratios = [padding_ratio(lengths, args.batch_size, args.seed, e, grouped, group) for e in range(args.epochs)]
        rows.append({"batching": name, "padded_per_real_token": ratios})
    result = {"train_examples": len(lengths), "mean_tokens": float(lengths.mean()), "batch_size": args.batch_size,
              "seed": args.seed, "rows": rows}
    print(f"training split: {len(lengths)} texts, {lengths.mean():.1f} tokens on average; batch {args.batch_size}, "
          f"seed {args.seed}\n")
    print("| batching | " + " | ".join(f"epoch {e}" for e in range(args.epochs)) + " |")
    print("|---|" + "---|" * args.epochs)
    for row in rows:
        print(f"| {row['batching']} | " + " | ".join(f"{r:.2f}×" for r in row["padded_per_real_token"]) + " |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
