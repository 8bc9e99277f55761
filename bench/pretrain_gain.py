"""Does domain-adaptive masked-LM pretraining help the bundled classification task? Both arms, three seeds.

    .venv/bin/python bench/pretrain_gain.py OUT_DIR [--max-rows 2000] [--seeds 1 2 3] [--split-seed 1]
        [--pretrain-epochs 1] [--pretrain-max-length 64] [--pretrain-max-steps 0] [--epochs 1] [--threads 1]

Preprocesses a stratified sample of ``max_rows`` bundled reviews once (split seed ``split_seed``);
pretrains all-MiniLM-L6-v2 once with masked-LM (whole-word masking, the default ``PretrainConfig``
but texts cut at ``pretrain_max_length`` tokens) on that split's training texts + the ~1,100 bundled
plot summaries; then, for each seed s, fine-tunes the classification ``TrainConfig`` (seed s:
the head's initialisation and the batch order; ``--epochs`` epochs, the rest default) twice, from
the base model and from the pretrained one, and evaluates both on the test split. The split is the
same for every seed, so the pretraining never sees a text that is validation or test for another seed.
The choice between the arms is to be made on validation accuracy (the kept epoch's); test accuracy is
reported beside it. Writes OUT_DIR/pretrain_gain.json after every run and prints a table; run again
with the same OUT_DIR, it reuses the split, the pretrained model and the fine-tuned models already there.

The defaults are a reduced setting sized for 2 shared CPU cores (a full default fine-tune takes ~10
minutes there, and a masked-LM step over 32 plot texts ~10 s): 2,000 reviews (1,600 / 200 / 200
after the split), plots cut at 64 tokens, one pretraining epoch, one fine-tuning epoch; one
torch thread (with other work on the 2 cores, two threads ran slower). ``--max-rows 0`` takes
every review; ``--epochs 0`` the task's default (3).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from statistics import mean, stdev

import torch

from kftune.components.evaluate.config import EvaluateConfig
from kftune.components.evaluate.evaluate import evaluate
from kftune.components.preprocess.config import PreprocessConfig
from kftune.components.preprocess.preprocess import preprocess
from kftune.components.pretrain.config import PretrainConfig
from kftune.components.pretrain.pretrain import REPORT_FILE, pretrain
from kftune.data.bundled import BUNDLED_MODEL, PLOTS_CORPUS
from kftune.training.config import TrainConfig
from kftune.training.loop import HISTORY_FILE, train

ARMS = ("base", "pretrained")
KEYS = ("val_accuracy", "test_accuracy", "val_f1_macro", "test_f1_macro")


def run_arm(model: str, seed: int, epochs: int, data: Path, test_split: Path, out: Path) -> dict:
    """Fine-tune ``model`` on ``data`` (train, and validation that keeps the epoch), then score it on the test
    split artifact ``test_split``: the arms are compared on validation, test is reported beside it."""
    started = time.perf_counter()
    if (out / HISTORY_FILE).is_file():  # trained by an earlier, interrupted call: evaluate it
        history = json.loads((out / HISTORY_FILE).read_text(encoding="utf-8"))
    else:
        history = train(TrainConfig(model=model, seed=seed, num_train_epochs=epochs), data, out)
    best = next(e for e in history["epochs"] if e["epoch"] == history["best_epoch"])
    scores = evaluate(out, data, test_split, EvaluateConfig())["model"]
    return {"val_accuracy": best["val_accuracy"], "val_f1_macro": best["val_f1_macro"],
            "test_accuracy": scores["accuracy"], "test_f1_macro": scores["f1_macro"],
            "best_epoch": history["best_epoch"], "seconds": round(time.perf_counter() - started, 1)}


def summary(runs: list[dict]) -> dict:
    table = {}
    for arm in ARMS:
        done = [r[arm] for r in runs if arm in r]
        if not done:
            continue
        table[arm] = {k: [mean(d[k] for d in done), stdev(d[k] for d in done) if len(done) > 1 else 0.0]
                      for k in KEYS}
    paired = [r for r in runs if all(a in r for a in ARMS)]
    table["difference"] = {k: mean(r["pretrained"][k] - r["base"][k] for r in paired) for k in KEYS} if paired else {}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-rows", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--split-seed", type=int, default=1)
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--pretrain-max-length", type=int, default=64)
    parser.add_argument("--pretrain-max-steps", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (0: the task's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    doc = {"arguments": {k: v for k, v in vars(args).items() if k != "out"},
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"}
    # what an interrupted call finished is reused (the same arguments are assumed)
    if not (args.out / "data" / "stats.json").is_file():
        preprocess(PreprocessConfig(max_rows=args.max_rows, seed=args.split_seed), args.out / "data",
                   args.out / "test_split")
    doc["split"] = json.loads((args.out / "data" / "stats.json").read_text(encoding="utf-8"))["split_sizes"]
    if not (args.out / "pretrained" / REPORT_FILE).is_file():
        pretrain(PretrainConfig(pretrain=True, pretrain_corpus=PLOTS_CORPUS, seed=args.split_seed,
                                pretrain_epochs=args.pretrain_epochs, pretrain_max_length=args.pretrain_max_length,
                                pretrain_max_steps=args.pretrain_max_steps),
                 args.out / "data", args.out / "pretrained")
    doc["pretrain"] = json.loads((args.out / "pretrained" / REPORT_FILE).read_text(encoding="utf-8"))
    doc["runs"] = []
    for seed in args.seeds:
        run = {"seed": seed}
        doc["runs"].append(run)
        for arm, model in (("base", BUNDLED_MODEL), ("pretrained", str(args.out / "pretrained"))):
            run[arm] = run_arm(model, seed, args.epochs, args.out / "data", args.out / "test_split",
                               args.out / f"seed{seed}-{arm}")
            doc["summary"] = summary(doc["runs"])
            (args.out / "pretrain_gain.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    p = doc["pretrain"]
    print(f"\nsplit {doc['split']}; pretraining: {p['texts']} texts ({p['train_texts']} trained on), "
          f"{p['steps']} steps "
          f"in {p['seconds']:.0f} s, held-out masked-LM loss {p['heldout_loss_before']:.3f} -> "
          f"{p['heldout_loss_after']:.3f}")
    print("| seed | arm | val acc | val F1 | test acc | test F1 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for run in doc["runs"]:
        for arm in ARMS:
            r = run[arm]
            print(f"| {run['seed']} | {arm} | {r['val_accuracy']:.4f} | {r['val_f1_macro']:.4f} | "
                  f"{r['test_accuracy']:.4f} | {r['test_f1_macro']:.4f} | {r['seconds']:.0f} |")
    for arm in ARMS:
        s = doc["summary"][arm]
        print(f"mean ± sd over seeds, {arm}: " + ", ".join(f"{k} {s[k][0]:.4f} ± {s[k][1]:.4f}" for k in KEYS))
    print("mean paired difference (pretrained - base): "
          + ", ".join(f"{k} {v:+.4f}" for k, v in doc["summary"]["difference"].items()))


if __name__ == "__main__":
    main()
