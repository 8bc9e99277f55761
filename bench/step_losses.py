"""A default training's first step losses, to show that a change leaves training bit for bit as it was: run it at
two commits and compare the JSON files.

    .venv/bin/python bench/step_losses.py OUT_DIR                    # classification (a minute or two)
    .venv/bin/python bench/step_losses.py OUT_DIR --task causal-lm    # a causal-lm slice (about two minutes)

classification: preprocesses a stratified sample of 3,000 bundled reviews (``max_rows=3000``), then trains the
default ``TrainConfig`` for 40 optimizer steps, logging every step. causal-lm: 300 bundled instruction examples
and 12 steps of the default LoRA training of the bundled SmolLM2. The JSON holds the split sizes, the step losses
and the validation scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kftune.components.preprocess.config import PreprocessConfig
from kftune.components.preprocess.preprocess import preprocess
from kftune.training.config import TrainConfig
from kftune.training.loop import train

SLICES = {"classification": (3000, 40), "causal-lm": (300, 12)}
"""Rows preprocessed and optimizer steps trained, per task measured."""


def main(out: Path, task: str = "classification") -> dict:
    rows, steps = SLICES[task]
    stats = preprocess(PreprocessConfig(task=task, max_rows=rows), out / "data", out / "test_split")
    history = train(TrainConfig(task=task, max_steps=steps, logging_steps=1), out / "data", out / "model")
    result = {"split": stats["split_sizes"], "losses": [s["loss"] for s in history["steps"]],
              "validation": [{k: v for k, v in e.items() if k.startswith("val_")} for e in history["epochs"]]}
    (out / "steps.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for the dataset, the model and steps.json")
    parser.add_argument("--task", choices=sorted(SLICES), default="classification")
    args = parser.parse_args()
    print(json.dumps(main(args.out, args.task), indent=2))
