"""How token classification's defaults were chosen: on the validation split, the test split read once, for the choice.

Preprocesses the bundled token-classification data as the default run does (``bundled:wnut16``, seed 42) and trains
each recipe below, with early stopping as the defaults have it; the recipe with the best validation entity F1 (at
its best epoch, the model training keeps) is chosen, and only that model is scored on the test split, with the
evaluate step's baseline (the most frequent tag per word). Recipes:

- ``encoder``: the classification and regression recipe (learning rate 1e-4, 3 epochs, batches of 32);
- ``1e-4x6``: learning rate 1e-4, up to 6 epochs, batches of 16 (multi-label's recipe, chosen by
  ``bench/multilabel_recipe.py``);
- ``3e-4x6``: learning rate 3e-4, up to 6 epochs, batches of 16 (the task's defaults before this bench).

``1e-4x6`` was chosen on validation (2026-12-07; docs/benchmarks.md), so it is the task's default now.

Every recipe names all three settings, so a later change of the task's defaults does not change what is compared.
The chosen recipe's settings are the task's defaults (``src/kftune/tasks/token_classification/__init__.py``).

About 10 minutes a recipe on 2 CPU cores (fp32):

    .venv/bin/python bench/token_recipe.py --out token_recipe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from dataclasses import replace
from pathlib import Path

RECIPES = {
    "encoder": {"learning_rate": 1e-4, "num_train_epochs": 3, "per_device_train_batch_size": 32},
    "1e-4x6": {"learning_rate": 1e-4, "num_train_epochs": 6, "per_device_train_batch_size": 16},
    "3e-4x6": {"learning_rate": 3e-4, "num_train_epochs": 6, "per_device_train_batch_size": 16},
}
TASK = "token-classification"


def train_recipe(name: str, dataset_dir: Path, out_dir: Path, seed: int, max_steps: int = 0) -> dict:
    from kftune.tasks import resolve_task
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    config = TrainConfig(task=TASK, seed=seed, max_steps=max_steps, **RECIPES[name])
    config = replace(resolve_task(config, dataset_dir), checkpoint_dir=f"{out_dir}.checkpoints")
    history = train(config, dataset_dir, out_dir)
    epochs = [{k: v for k, v in e.items() if k == "epoch" or k.startswith("val_")} for e in history["epochs"]]
    best = epochs[history["best_epoch"] - 1]
    return {"recipe": name, "overrides": RECIPES[name], "settings": {k: getattr(config, k) for k in (
        "learning_rate", "num_train_epochs", "per_device_train_batch_size", "early_stopping_patience")},
            "epochs": epochs, "best_epoch": history["best_epoch"],
            "validation": {k[4:]: v for k, v in best.items() if k.startswith("val_")},
            "train_seconds": history["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-steps", type=int, default=0, help="stop each training here (a quick check)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    args = parser.parse_args()

    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.tasks import task_named

    with tempfile.TemporaryDirectory(prefix="kftune-bench-token-") as tmp:
        data, test_split = Path(tmp) / "data", Path(tmp) / "test_split"  # the recipes train and choose on data alone
        preprocess(PreprocessConfig(task=TASK, seed=args.seed), data, test_split)
        runs = []
        for name in args.recipes:
            runs.append(train_recipe(name, data, Path(tmp) / name, args.seed, args.max_steps))
            if args.out:  # what is done so far, should a later recipe not finish
                args.out.write_text(json.dumps({"recipes": runs}, indent=2))
            print(f"{name}: best epoch {runs[-1]['best_epoch']}, validation entity F1 "
                  f"{runs[-1]['validation']['f1']:.4f}", flush=True)
        chosen = max(runs, key=lambda r: r["validation"]["f1"])
        test = task_named(TASK).evaluate(Path(tmp) / chosen["recipe"], data, test_split, EvaluateConfig(task=TASK))
    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "seed": args.seed,
              "recipes": runs, "chosen": chosen["recipe"],
              "test": {name: {k: s[k] for k in ("precision", "recall", "f1", "accuracy")}
                       for name, s in [("model", test["model"]), *test["baselines"].items()]}}
    print("\n| recipe | settings | best epoch | val entity F1 per epoch | val entity F1 |\n|---|---|---|---|---|")
    for r in runs:
        curve = " ".join(f"{e['val_f1']:.3f}" for e in r["epochs"])
        print(f"| {r['recipe']} | {r['settings']} | {r['best_epoch']} | {curve} | {r['validation']['f1']:.4f} |")
    print(f"\nchosen on validation: {chosen['recipe']}; its test scores (read once):\n")
    print("| test split | precision | recall | f1 | accuracy |\n|---|---|---|---|---|")
    for name, s in result["test"].items():
        print(f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['accuracy']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
