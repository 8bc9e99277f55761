"""Training throughput: kftune's loop against Hugging Face ``Trainer``, in one run, on this machine.

Both fine-tune the bundled model (all-MiniLM-L6-v2) on the same preprocessed split of the
bundled data (max 128 tokens), with the same hyperparameters (lr 1e-4, batch 32, 3 epochs,
warmup 10 %, weight decay 0.01, seed 42), validation after every epoch and the best epoch kept:

(a) kftune's training loop, launched by torchrun as the train component does, with bf16
    autocast where the CPU is fast at it, fused AdamW and length-grouped batches
    (``group_by_length=True``: the loop's fast setting; the pipelines default to random batches,
    measure those with ``--set group_by_length=False``);
(b) ``Trainer`` set up as its text-classification documentation shows: DataCollatorWithPadding
    (dynamic padding), eval and save every epoch, ``load_best_model_at_end``.

Reported: training samples/s (training examples x epochs / wall time of the training call,
validation included for both) and test accuracy / macro F1 of the model each keeps.
``--trainer-bf16`` adds a third run, Trainer with ``bf16=True`` and length-grouped sampling,
to show how much of the gap those two settings explain. About 25 minutes on 2 CPU cores:

    .venv/bin/pip install accelerate==1.15.0   # Trainer needs it (or: pip install -e '.[bench]')
    .venv/bin/python bench/train_throughput.py --out bench-results.json
    .venv/bin/python bench/train_throughput.py --seed 42 1 2 --out bench-results.json   # 3 seeds, means
    .venv/bin/python bench/train_throughput.py --skip-trainer --set training_mode=lora   # kftune only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

HYPERPARAMETERS = {"learning_rate": 1e-4, "per_device_train_batch_size": 32, "num_train_epochs": 3,
                   "warmup_ratio": 0.1, "weight_decay": 0.01, "seed": 42}
KFTUNE_SETTINGS = {"group_by_length": True}  # changed with --set


def _test_scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"test_accuracy": float(accuracy_score(y_true, y_pred)),
            "test_f1_macro": float(f1_score(y_true, y_pred, average="macro"))}


def trainer_run(dataset_dir: Path, out_dir: Path, hyper: dict, tuned: bool = False) -> dict:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from kftune.components.common.bundled import bundled_model_dir
    from kftune.components.common.schema import load_splits

    splits, labels = load_splits(dataset_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(dataset_dir / "tokenizer"))
    torch.manual_seed(hyper["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(
        str(bundled_model_dir()), num_labels=len(labels), id2label=labels.id2label, label2id=labels.label2id)
    keep = ["input_ids", "attention_mask", "token_type_ids", "label"]
    data = {name: split.remove_columns([c for c in split.column_names if c not in keep])
            for name, split in splits.items()}

    def compute_metrics(eval_pred):
        from sklearn.metrics import f1_score

        logits, y = eval_pred
        return {"f1": f1_score(y, logits.argmax(-1), average="macro")}

    args = TrainingArguments(
        output_dir=str(out_dir), learning_rate=hyper["learning_rate"],
        per_device_train_batch_size=hyper["per_device_train_batch_size"], per_device_eval_batch_size=128,
        num_train_epochs=hyper["num_train_epochs"], warmup_steps=hyper["warmup_ratio"],  # a float < 1: a ratio
        weight_decay=hyper["weight_decay"], seed=hyper["seed"], eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="f1", save_total_limit=1, report_to=[],
        logging_steps=50, bf16=tuned, use_cpu=tuned and not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if tuned else "random",
    )
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    predictions = trainer.predict(data["test"]).predictions.argmax(-1)
    return {"train_seconds": seconds,
            "samples_per_second": len(data["train"]) * hyper["num_train_epochs"] / seconds,
            **_test_scores(np.asarray(data["test"]["label"]), predictions),
            "settings": "bf16=True, train_sampling_strategy=group_by_length" if tuned else "documentation defaults",
            "torch_threads": torch.get_num_threads()}


def kftune_run(dataset_dir: Path, out_dir: Path, hyper: dict, overrides: dict) -> dict:
    from kftune.components.common.inference import predict_logits, torch_runner
    from kftune.components.common.modeling import load_classifier
    from kftune.components.common.schema import load_splits
    from kftune.components.common.training.config import TrainConfig
    from kftune.components.common.training.launch import launch_training

    config = TrainConfig(**{**hyper, "early_stopping_patience": 0, **overrides})
    started = time.perf_counter()
    history = launch_training(config, dataset_dir, out_dir)
    seconds = time.perf_counter() - started
    test = load_splits(dataset_dir)[0]["test"]
    predictions = predict_logits(torch_runner(load_classifier(out_dir)), test, 128).argmax(1)
    train_rows = json.loads((dataset_dir / "stats.json").read_text())["split_sizes"]["train"]
    return {"train_seconds": history["train_seconds"], "wall_seconds_incl_launch": seconds,
            "samples_per_second": train_rows * len(history["epochs"]) / history["train_seconds"],
            **_test_scores(np.asarray(test["label"]), predictions),
            "best_epoch": history["best_epoch"], "precision": history["precision"],
            "training_mode": history["training_mode"]}


def _means(runs: list[dict]) -> dict:
    """Mean samples/s and test accuracy of each loop over the seeds, and their ratio / difference."""
    def mean(loop, key):
        values = [r[loop][key] for r in runs if loop in r]
        return sum(values) / len(values) if values else None

    means = {loop: {key: mean(loop, key) for key in ("samples_per_second", "test_accuracy", "test_f1_macro")}
             for loop in ("kftune", "hf_trainer") if loop in runs[0]}
    if "hf_trainer" in means:
        means["speedup"] = means["kftune"]["samples_per_second"] / means["hf_trainer"]["samples_per_second"]
        means["accuracy_difference_points"] = 100 * (
            means["kftune"]["test_accuracy"] - means["hf_trainer"]["test_accuracy"])
    return means


def cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=HYPERPARAMETERS["num_train_epochs"])
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--skip-trainer", action="store_true", help="run only kftune's loop")
    parser.add_argument("--seed", type=int, nargs="+", default=[HYPERPARAMETERS["seed"]],
                        help="training seed(s) of both runs (initialisation, batch order); the data split stays "
                        "fixed. Several seeds: both loops run once per seed and the means are compared (one "
                        "run's test accuracy has a standard error of about 1 point here)")
    parser.add_argument("--max-rows", type=int, default=0, help="use a sample of this many rows (smoke runs)")
    parser.add_argument("--trainer-bf16", action="store_true",
                        help="also run Trainer with bf16=True and train_sampling_strategy=group_by_length")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a TrainConfig field for kftune's run, e.g. --set learning_rate=5e-5")
    args = parser.parse_args()
    import ast

    overrides = dict(KFTUNE_SETTINGS)
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value

    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess

    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {cpu_model()}"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        preprocess(PreprocessConfig(max_rows=args.max_rows), tmp / "data")
        for seed in args.seed:
            hyper = {**HYPERPARAMETERS, "num_train_epochs": args.epochs, "seed": seed}
            run = {"hyperparameters": hyper, "kftune_overrides": overrides,
                   "kftune": kftune_run(tmp / "data", tmp / f"kftune-{seed}", hyper, overrides)}
            if not args.skip_trainer:
                run["hf_trainer"] = trainer_run(tmp / "data", tmp / f"trainer-{seed}", hyper)
                trainer = run["hf_trainer"]
                run["speedup"] = run["kftune"]["samples_per_second"] / trainer["samples_per_second"]
                run["accuracy_difference_points"] = 100 * (run["kftune"]["test_accuracy"] - trainer["test_accuracy"])
            if args.trainer_bf16:
                run["hf_trainer_bf16_grouped"] = trainer_run(tmp / "data", tmp / f"trainer-bf16-{seed}", hyper,
                                                             tuned=True)
            print(json.dumps(run, indent=2), flush=True)
            runs.append(run)
    results = {"machine": machine, **runs[0]} if len(runs) == 1 else {"machine": machine, "runs": runs,
                                                                         "mean": _means(runs)}
    print(json.dumps(results, indent=2))
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
