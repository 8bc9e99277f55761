"""Does domain-adaptive masked-LM pretraining help the bundled classification task? Both arms, three seeds.

    .venv/bin/python bench/pretrain_gain.py OUT_DIR [--max-rows 2000] [--seeds 1 2 3] [--pretrain-epochs 1]
                                                    [--pretrain-max-length 64]

For each seed s: preprocess a stratified sample of ``max_rows`` bundled reviews with seed s (split,
tokenizer); pretrain all-MiniLM-L6-v2 with masked-LM (whole-word masking, the default
``PretrainConfig`` but texts cut at ``pretrain_max_length`` tokens) on that split's training texts + the
~1,100 bundled plot summaries; then
fine-tune with the default classification ``TrainConfig`` (seed s) twice, from the base model and from
the pretrained one, and evaluate both on the test split. The choice between the arms is to be made on
validation accuracy (the best epoch's, which is the model train keeps); test accuracy is reported
beside it. Writes OUT_DIR/pretrain_gain.json after every run and prints a table.

The defaults are a reduced setting sized for 2 shared CPU cores (a full default fine-tune takes ~10
minutes there, and masked-LM steps over the long plot texts cost ~10 s each): 2,000 reviews (1,600 /
200 / 200), plots cut at 64 tokens, one pretraining epoch; the fine-tuning itself is the default
(3 epochs, the best by validation macro F1). ``--max-rows 0`` takes every review.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from statistics import mean, stdev

from kftune.components.common.bundled import PLOTS_CORPUS
from kftune.components.common.training.config import TrainConfig
from kftune.components.common.training.loop import train
from kftune.components.evaluate.config import EvaluateConfig
from kftune.components.evaluate.evaluate import evaluate
from kftune.components.preprocess.config import PreprocessConfig
from kftune.components.preprocess.preprocess import preprocess
from kftune.components.pretrain.config import PretrainConfig
from kftune.components.pretrain.pretrain import pretrain

ARMS = ("base", "pretrained")


def run_arm(model: str, seed: int, data: Path, out: Path) -> dict:
    started = time.perf_counter()
    history = train(TrainConfig(model=model, seed=seed), data, out)
    best = next(e for e in history["epochs"] if e["epoch"] == history["best_epoch"])
    scores = evaluate(out, data, EvaluateConfig())["model"]
    return {"val_accuracy": best["val_accuracy"], "val_f1_macro": best["val_f1_macro"],
            "test_accuracy": scores["accuracy"], "test_f1_macro": scores["f1_macro"],
            "best_epoch": history["best_epoch"], "seconds": round(time.perf_counter() - started, 1)}


def summary(runs: list[dict]) -> dict:
    table = {}
    for arm in ARMS:
        done = [r[arm] for r in runs if arm in r]
        table[arm] = {k: (mean(d[k] for d in done), stdev(d[k] for d in done) if len(done) > 1 else 0.0)
                      for k in ("val_accuracy", "test_accuracy", "val_f1_macro", "test_f1_macro")}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-rows", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--pretrain-max-length", type=int, default=64)
    args = parser.parse_args()
    doc = {"max_rows": args.max_rows, "seeds": args.seeds, "pretrain_epochs": args.pretrain_epochs,
           "pretrain_max_length": args.pretrain_max_length,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "runs": []}
    for seed in args.seeds:
        root = args.out / f"seed{seed}"
        stats = preprocess(PreprocessConfig(max_rows=args.max_rows, seed=seed), root / "data")
        run = {"seed": seed, "split": stats["split_sizes"]}
        run["pretrain"] = pretrain(PretrainConfig(pretrain=True, pretrain_corpus=PLOTS_CORPUS, seed=seed,
                                                  pretrain_epochs=args.pretrain_epochs,
                                                  pretrain_max_length=args.pretrain_max_length), root / "data",
                                   root / "pretrained")
        doc["runs"].append(run)
        for arm, model in (("base", "bundled:all-MiniLM-L6-v2"), ("pretrained", str(root / "pretrained"))):
            run[arm] = run_arm(model, seed, root / "data", root / f"model-{arm}")
            doc["summary"] = summary(doc["runs"])
            (args.out / "pretrain_gain.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    print(f"\nmax_rows={args.max_rows}, seeds {args.seeds}, pretrain {args.pretrain_epochs} epoch(s) on the training "
          f"texts + bundled plots (cut at {args.pretrain_max_length} tokens); default fine-tuning")
    print("| seed | pretrain held-out MLM loss before -> after | steps | arm | val acc | test acc | test F1 |")
    print("|---|---|---|---|---|---|---|")
    for run in doc["runs"]:
        p = run["pretrain"]
        for arm in ARMS:
            r = run[arm]
            print(f"| {run['seed']} | {p['heldout_loss_before']:.3f} -> {p['heldout_loss_after']:.3f} | {p['steps']} | "
                  f"{arm} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['test_f1_macro']:.4f} |")
    for arm, s in doc["summary"].items():
        print(f"mean over seeds, {arm}: val acc {s['val_accuracy'][0]:.4f} ± {s['val_accuracy'][1]:.4f}, "
              f"test acc {s['test_accuracy'][0]:.4f} ± {s['test_accuracy'][1]:.4f}")


if __name__ == "__main__":
    main()
