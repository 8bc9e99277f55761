"""Fine-tune the bundled model on the bundled data two ways, in one run, on this machine:

(a) kftune's training loop (the train component's defaults, launched with torchrun), and
(b) Hugging Face ``Trainer`` set up as its text-classification docs show
    (DataCollatorWithPadding, lr 5e-5, batch 32, 3 epochs, weight decay 0.01),

on the same preprocessed splits, and report train samples/s and test accuracy / F1 of each,
plus the TF-IDF baseline. Usage (takes ~20 minutes on 2 CPU cores):

    .venv/bin/pip install accelerate==1.15.0   # Trainer needs it
    .venv/bin/python bench/finetune_vs_trainer.py --out bench-results.json
    .venv/bin/python bench/finetune_vs_trainer.py --skip-trainer --set learning_rate=5e-5   # one recipe
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def trainer_run(dataset_dir: Path, out_dir: Path, epochs: int) -> dict:
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
    model = AutoModelForSequenceClassification.from_pretrained(
        str(bundled_model_dir()), num_labels=len(labels), id2label=labels.id2label, label2id=labels.label2id)
    keep = ["input_ids", "attention_mask", "token_type_ids", "label"]
    train = splits["train"].remove_columns([c for c in splits["train"].column_names if c not in keep])
    test = splits["test"].remove_columns([c for c in splits["test"].column_names if c not in keep])
    args = TrainingArguments(
        output_dir=str(out_dir), learning_rate=5e-5, per_device_train_batch_size=32,
        per_device_eval_batch_size=128, num_train_epochs=epochs, weight_decay=0.01,
        eval_strategy="no", save_strategy="no", report_to=[], seed=42, logging_steps=50,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    predictions = trainer.predict(test).predictions.argmax(-1)
    from sklearn.metrics import accuracy_score, f1_score

    y = np.asarray(test["label"])
    return {"train_seconds": seconds, "samples_per_second": len(train) * epochs / seconds,
            "test_accuracy": float(accuracy_score(y, predictions)),
            "test_f1_macro": float(f1_score(y, predictions, average="macro")),
            "torch_threads": torch.get_num_threads()}


def kftune_run(dataset_dir: Path, out_dir: Path, epochs: int, overrides: dict) -> dict:
    from kftune.components.evaluate.evaluate import EvaluateConfig, evaluate
    from kftune.components.train.config import TrainConfig
    from kftune.components.train.launch import launch_training

    started = time.perf_counter()
    history = launch_training(TrainConfig(num_train_epochs=epochs, **overrides), dataset_dir, out_dir)
    seconds = time.perf_counter() - started
    result = evaluate(out_dir, dataset_dir, EvaluateConfig())
    epochs_run = len(history["epochs"])
    train_rows = json.loads((dataset_dir / "stats.json").read_text())["split_sizes"]["train"]
    return {"train_seconds": history["train_seconds"], "wall_seconds_incl_launch": seconds,
            "samples_per_second": train_rows * epochs_run / history["train_seconds"],
            "test_accuracy": result["model"]["accuracy"], "test_f1_macro": result["model"]["f1_macro"],
            "tfidf_baseline_accuracy": result["baselines"]["tfidf_logreg"]["accuracy"],
            "best_epoch": history["best_epoch"], "bf16": history["bf16"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--skip-trainer", action="store_true", help="run only kftune's loop")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a TrainConfig field for kftune's run, e.g. --set learning_rate=5e-5")
    args = parser.parse_args()
    import ast

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value

    from kftune.components.preprocess.preprocess import PreprocessConfig, preprocess

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        preprocess(PreprocessConfig(), tmp / "data")
        results = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs", "epochs": args.epochs,
                   "kftune_overrides": overrides,
                   "kftune": kftune_run(tmp / "data", tmp / "kftune", args.epochs, overrides)}
        if not args.skip_trainer:
            results["hf_trainer"] = trainer_run(tmp / "data", tmp / "trainer", args.epochs)
    print(json.dumps(results, indent=2))
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
