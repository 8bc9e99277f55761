"""How the multi-label recipe was chosen: on the validation split, with the test split read once, for the choice.

Preprocesses the bundled multi-label data as the default run does (``bundled:wnut16-entity-types``, seed 42) and
trains each recipe below with the task's defaults otherwise, early stopping included. Per recipe and epoch it
prints the validation scores at the thresholds training picks on validation (micro F1, subset accuracy, Hamming
loss) next to predicting no label at all. The recipe chosen is the one with the best validation micro F1 among
those that beat the empty set on validation subset accuracy and Hamming loss; only that model is then scored on
the test split (with the evaluate step's baselines). Recipes:

- ``before``: the head's bias started at 0 (transformers' initialisation) and each label's threshold the one
  with the best F1 for that label alone, at a learning rate of 3e-4 (kftune before issue 27);
- ``prior+joint@3e-4``: the head's bias at each label's training log-odds (``Multilabel.init_head``), and the
  thresholds that maximise micro F1 over all labels jointly (``best_thresholds``), at 3e-4;
- ``prior+joint@1e-4``: the same at a learning rate of 1e-4 (the other encoder tasks'); chosen on validation
  (2026-12-07), so it is the task's default now.

Every recipe names its learning rate, so a later change of the task's defaults does not change what is compared.

Each kept model is also scored on validation under both threshold rules, which shows what the thresholds alone
change for the same model.

About 10 minutes a recipe on 2 CPU cores (fp32):

    .venv/bin/python bench/multilabel_recipe.py --out multilabel_recipe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np

RECIPES = {
    "before": {"prior": False, "joint": False, "overrides": {"learning_rate": 3e-4}},
    "prior+joint@3e-4": {"prior": True, "joint": True, "overrides": {"learning_rate": 3e-4}},
    "prior+joint@1e-4": {"prior": True, "joint": True, "overrides": {"learning_rate": 1e-4}},
}


def per_label_thresholds(probabilities: np.ndarray, y_true: np.ndarray) -> list[float]:
    """Each label's threshold the one with the best F1 for that label alone (0.5 on ties, and for labels absent
    here): kftune's rule before issue 27."""
    from sklearn.metrics import f1_score

    from kftune.tasks.multilabel import THRESHOLDS

    chosen = []
    for j in range(y_true.shape[1]):
        if not y_true[:, j].any():
            chosen.append(0.5)
            continue
        f1 = [f1_score(y_true[:, j], probabilities[:, j] >= t, zero_division=0) for t in THRESHOLDS]
        at_half = f1[int(np.flatnonzero(THRESHOLDS == 0.5)[0])]
        chosen.append(0.5 if at_half == max(f1) else float(THRESHOLDS[int(np.argmax(f1))]))
    return chosen


def train_recipe(name: str, dataset_dir: Path, out_dir: Path, seed: int, max_steps: int = 0) -> dict:
    from dataclasses import replace

    import kftune.tasks.multilabel as multilabel
    from kftune.tasks import resolve_task
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    recipe = RECIPES[name]
    saved = multilabel.best_thresholds, multilabel.Multilabel.init_head
    config = TrainConfig(task="multilabel", seed=seed, max_steps=max_steps, **recipe["overrides"])
    config = replace(resolve_task(config, dataset_dir), checkpoint_dir=f"{out_dir}.checkpoints")
    try:  # the loop runs in this process (as one worker), so the recipe's variants can replace the task's functions
        if not recipe["joint"]:
            multilabel.best_thresholds = per_label_thresholds
        if not recipe["prior"]:
            multilabel.Multilabel.init_head = lambda self, model, info: None
        history = train(config, dataset_dir, out_dir)
    finally:
        multilabel.best_thresholds, multilabel.Multilabel.init_head = saved
    kept = {rule: validation_scores(out_dir, dataset_dir, rule) for rule in ("per_label", "joint")}
    epochs = [{k: e[k] for k in ("epoch", "train_loss", "val_loss", "val_f1_micro", "val_f1_macro",
                                 "val_subset_accuracy", "val_hamming_loss")} for e in history["epochs"]]
    best = epochs[history["best_epoch"] - 1]
    return {"recipe": name, **recipe, "epochs": epochs, "best_epoch": history["best_epoch"],
            "validation": {k[4:]: best[k] for k in best if k.startswith("val_")},
            "kept_model_validation_by_threshold_rule": kept, "train_seconds": history["train_seconds"]}


def validation_scores(model_dir: Path, dataset_dir: Path, rule: str) -> dict:
    """The kept model's validation scores at the thresholds ``rule`` picks on validation."""
    from kftune.data.schema import LABEL, load_splits
    from kftune.inference.runners import predict_logits, sigmoid, torch_runner
    from kftune.models.encoder import load_encoder_model
    from kftune.tasks.multilabel import best_thresholds, multilabel_scores

    validation = load_splits(dataset_dir)[0]["validation"]
    probabilities = sigmoid(predict_logits(torch_runner(load_encoder_model(model_dir)), validation, 128))
    truth = np.asarray(validation[LABEL], dtype=int)
    thresholds = (best_thresholds if rule == "joint" else per_label_thresholds)(probabilities, truth)
    return multilabel_scores(truth, (probabilities >= np.asarray(thresholds)).astype(int), [])


def empty_set_scores(dataset_dir: Path) -> dict:
    """Predicting no label for every validation example."""
    from kftune.data.schema import LABEL, load_splits
    from kftune.tasks.multilabel import multilabel_scores

    splits, _ = load_splits(dataset_dir)
    truth = np.asarray(splits["validation"][LABEL], dtype=int)
    return multilabel_scores(truth, np.zeros_like(truth), [])


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

    with tempfile.TemporaryDirectory(prefix="kftune-bench-multilabel-") as tmp:
        data, test_split = Path(tmp) / "data", Path(tmp) / "test_split"  # the recipes train and choose on data alone
        preprocess(PreprocessConfig(task="multilabel", seed=args.seed), data, test_split)
        empty = empty_set_scores(data)
        runs = []
        for name in args.recipes:
            runs.append(train_recipe(name, data, Path(tmp) / name, args.seed, args.max_steps))
            v = runs[-1]["validation"]
            if args.out:  # what is done so far, should a later recipe not finish
                args.out.write_text(json.dumps({"validation_empty_set": empty, "recipes": runs}, indent=2))
            print(f"{name}: best epoch {runs[-1]['best_epoch']}, validation micro F1 {v['f1_micro']:.4f}, subset "
                  f"accuracy {v['subset_accuracy']:.4f}, Hamming loss {v['hamming_loss']:.4f}", flush=True)
        beats_empty = [r for r in runs if r["validation"]["subset_accuracy"] > empty["subset_accuracy"]
                       and r["validation"]["hamming_loss"] < empty["hamming_loss"]]
        chosen = max(beats_empty or runs, key=lambda r: r["validation"]["f1_micro"])
        test = task_named("multilabel").evaluate(Path(tmp) / chosen["recipe"], data, test_split,
                                                 EvaluateConfig(task="multilabel"))
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "seed": args.seed,
        "validation_empty_set": {k: empty[k] for k in ("f1_micro", "subset_accuracy", "hamming_loss")},
        "recipes": runs, "chosen": chosen["recipe"], "chosen_beats_empty_set_on_validation": bool(beats_empty),
        "test": {name: {k: scores[k] for k in ("f1_micro", "f1_macro", "subset_accuracy", "hamming_loss")}
                 for name, scores in [("model", test["model"]), *test["baselines"].items()]},
    }
    print("\n| recipe | best epoch | val micro F1 per epoch | val micro F1 | val subset acc | val Hamming |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        curve = " ".join(f"{e['val_f1_micro']:.3f}" for e in r["epochs"])
        v = r["validation"]
        print(f"| {r['recipe']} | {r['best_epoch']} | {curve} | {v['f1_micro']:.4f} | {v['subset_accuracy']:.4f} | "
              f"{v['hamming_loss']:.4f} |")
    e = result["validation_empty_set"]
    print(f"| empty set | | | {e['f1_micro']:.4f} | {e['subset_accuracy']:.4f} | {e['hamming_loss']:.4f} |")
    print(f"\nchosen on validation: {chosen['recipe']}; its test scores (read once):\n")
    print("| test split | f1_micro | f1_macro | subset_accuracy | hamming_loss |\n|---|---|---|---|---|")
    for name, s in result["test"].items():
        print(f"| {name} | {s['f1_micro']:.4f} | {s['f1_macro']:.4f} | {s['subset_accuracy']:.4f} | "
              f"{s['hamming_loss']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
