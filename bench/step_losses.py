"""The default classification training's first 40 step losses, to show that a change leaves training bit for bit
as it was: run it at two commits and compare the JSON files.

    .venv/bin/python bench/step_losses.py OUT_DIR      # writes OUT_DIR/steps.json (takes a minute or two)

Preprocesses a stratified sample of 3,000 bundled reviews (``max_rows=3000``), then trains the
default ``TrainConfig`` for 40 optimizer steps, logging every step; the JSON holds the split sizes,
the 40 step losses and the validation scores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kftune.components.preprocess.config import PreprocessConfig
from kftune.components.preprocess.preprocess import preprocess
from kftune.training.config import TrainConfig
from kftune.training.loop import train


def main(out: Path) -> dict:
    stats = preprocess(PreprocessConfig(max_rows=3000), out / "data")
    history = train(TrainConfig(max_steps=40, logging_steps=1), out / "data", out / "model")
    result = {"split": stats["split_sizes"], "losses": [s["loss"] for s in history["steps"]],
              "validation": [{k: v for k, v in e.items() if k.startswith("val_")} for e in history["epochs"]]}
    (out / "steps.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=2))
