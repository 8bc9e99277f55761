"""Training throughput: kftune's loop against Hugging Face ``Trainer``, in one run, on this machine.

All runs fine-tune the bundled model (all-MiniLM-L6-v2) on the same preprocessed split of the
bundled data (max 128 tokens), with the same hyperparameters (lr 1e-4, batch 32, 3 epochs,
warmup 10 %, weight decay 0.01, seed 42), validation after every epoch and the best epoch kept:

(a) kftune's training loop, launched by torchrun as the train component does, with the
    pipeline's default settings (no overrides: random batches, bf16 autocast where the CPU is
    fast at it, fused AdamW); ``--set KEY=VALUE`` changes a TrainConfig field, e.g.
    ``--set group_by_length=True`` for length-grouped batches;
(b) ``Trainer`` set up as its text-classification documentation shows: DataCollatorWithPadding
    (dynamic padding), fp32, random batches, eval and save every epoch, ``load_best_model_at_end``;
(c) with ``--trainer-tuned``: the tuned ``Trainer``, (b) plus ``train_sampling_strategy="group_by_length"``
    and the machine's fastest precision: ``bf16=True`` on a GPU of compute capability 8.0 or newer or a
    CPU with fast bf16 (AVX512-BF16 / AMX), fp32 where bf16 would be emulated (and slower than fp32).
    Which it used is reported as ``precision``.

Every seed runs each of them. Reported per run: training samples/s (training examples x epochs /
wall time of the training call, validation included), the machine's ceiling (below), test accuracy /
macro F1 of the model it keeps, precision and torch threads; per seed and over the seeds' means, kftune's speedup over
each ``Trainer`` and its accuracy minus each one's (points). The mean carries a ``criteria``
block (issue 18): speedup over the documented ``Trainer`` >= 3, over the tuned one > 1, and
kftune's mean accuracy >= each ``Trainer``'s mean - 0.3 points. ``Trainer``'s test predictions
are scored against the labels ``predict`` returns with them: with group_by_length ``Trainer``
also length-groups its evaluation batches, so predictions do not come back in dataset order.
The machine's ceiling: each run's model FLOP/s (the matmul FLOPs the model needs for the real tokens,
:func:`model_flops`: every linear layer and attention's two products, x3 for a training step, x1 for
validation, divided by the training call's wall time) as a share of this machine's matmul rate in that
run's precision, measured in the same run by :func:`matmul_rate` (a matmul of the step's shapes: batch x mean
length rows, the hidden size by the feed-forward size). Padding, dropout, casts and the optimizer are what
keep a run below 100 %. About 25 minutes per seed and ``Trainer`` run set on 2 CPU cores (all three: ~40 min
per seed):

    .venv/bin/python bench/train_throughput.py --seed 42 1 2 --trainer-tuned --out bench-results.json
    .venv/bin/python bench/train_throughput.py --out bench-results.json     # seed 42, documented Trainer only
    .venv/bin/python bench/train_throughput.py --skip-trainer --set training_mode=lora   # kftune only
    .venv/bin/python bench/train_throughput.py --max-rows 300 --epochs 1 --trainer-tuned  # smoke run
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
KFTUNE_SETTINGS: dict = {}  # the pipeline's defaults; changed with --set
TRAINERS = {"hf_trainer": "documented", "hf_trainer_tuned": "tuned"}  # result key -> name in comparisons
METRICS = ("samples_per_second", "share_of_matmul_rate", "test_accuracy", "test_f1_macro")
CRITERIA = {"min_speedup_over_documented": 3.0, "min_speedup_over_tuned": 1.0, "max_accuracy_deficit_points": 0.3}


def _test_scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"test_accuracy": float(accuracy_score(y_true, y_pred)),
            "test_f1_macro": float(f1_score(y_true, y_pred, average="macro"))}


def trainer_run(dataset_dir: Path, test_dir: Path, out_dir: Path, hyper: dict, tuned: bool = False) -> dict:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from kftune.data.bundled import bundled_model_dir
    from kftune.data.schema import TEST_SPLIT, load_splits, load_test_split

    splits, labels = load_splits(dataset_dir)
    splits = {**splits, TEST_SPLIT: load_test_split(test_dir)}  # predicted once, after training
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

    bf16 = tuned and fastest_precision() == "bf16"
    args = TrainingArguments(
        output_dir=str(out_dir), learning_rate=hyper["learning_rate"],
        per_device_train_batch_size=hyper["per_device_train_batch_size"], per_device_eval_batch_size=128,
        num_train_epochs=hyper["num_train_epochs"], warmup_steps=hyper["warmup_ratio"],  # a float < 1: a ratio
        weight_decay=hyper["weight_decay"], seed=hyper["seed"], eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="f1", save_total_limit=1, report_to=[],
        logging_steps=50, bf16=bf16, use_cpu=bf16 and not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if tuned else "random",
    )
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    # With group_by_length, Trainer._get_eval_sampler length-groups prediction batches too: the
    # predictions come back in another order than the split's, and label_ids in the same order as them.
    output = trainer.predict(data["test"])
    return {"train_seconds": seconds,
            "samples_per_second": len(data["train"]) * hyper["num_train_epochs"] / seconds,
            **_test_scores(np.asarray(output.label_ids), output.predictions.argmax(-1)),
            "settings": f"bf16={bf16}, train_sampling_strategy=group_by_length" if tuned else "documentation defaults",
            "precision": "bf16" if bf16 else "fp32", "torch_threads": torch.get_num_threads()}


def fastest_precision() -> str:
    """bf16 where this machine computes it natively (a GPU of compute capability 8.0 or newer, a CPU with AVX512-BF16
    or AMX), else fp32."""
    import torch

    from kftune.training.precision import has_native_bf16

    return "bf16" if has_native_bf16(torch.device("cuda" if torch.cuda.is_available() else "cpu")) else "fp32"


def kftune_run(dataset_dir: Path, test_dir: Path, out_dir: Path, hyper: dict, overrides: dict) -> dict:
    from kftune.cpus import available_cpus
    from kftune.data.schema import load_test_split
    from kftune.inference.runners import predict_logits, torch_runner
    from kftune.models.encoder import load_encoder_model
    from kftune.training.config import TrainConfig
    from kftune.training.launch import launch_training

    config = TrainConfig(**{**hyper, "early_stopping_patience": 0, **overrides})
    started = time.perf_counter()
    history = launch_training(config, dataset_dir, out_dir)
    seconds = time.perf_counter() - started
    test = load_test_split(test_dir)
    predictions = predict_logits(torch_runner(load_encoder_model(out_dir)), test, 128).argmax(1)
    train_rows = json.loads((dataset_dir / "stats.json").read_text())["split_sizes"]["train"]
    return {"train_seconds": history["train_seconds"], "wall_seconds_incl_launch": seconds,
            "samples_per_second": train_rows * len(history["epochs"]) / history["train_seconds"],
            **_test_scores(np.asarray(test["label"]), predictions),
            "best_epoch": history["best_epoch"], "precision": history["precision"],
            "training_mode": history["training_mode"],
            # one CPU worker: launch_training sets its OMP_NUM_THREADS to the available CPUs unless given
            "torch_threads": int(os.environ.get("OMP_NUM_THREADS") or available_cpus())}


def model_flops(train_lengths, validation_lengths, d: int, f: int, layers: int, epochs: int) -> float:
    """The matmul FLOPs a run of ``epochs`` epochs needs for the real tokens of a BERT-style encoder of hidden size
    ``d``, feed-forward size ``f`` and ``layers`` layers: per token and layer 2 x (4 d^2 + 2 d f) for the linear
    layers and 4 d n for attention's two products (n the text's length), 2 d^2 per text for the pooler; a training
    example costs 3x its forward pass (forward, then the gradients of the inputs and of the weights), a validation
    example 1x, every epoch."""

    def forward(lengths) -> float:
        lengths = np.asarray(lengths, dtype=np.float64)
        return (layers * 2 * (4 * d * d + 2 * d * f) * lengths.sum() + layers * 4 * d * (lengths**2).sum()
                + len(lengths) * 2 * d * d)

    return epochs * (3 * forward(train_lengths) + forward(validation_lengths))


def matmul_rate(precision: str, rows: int, d: int, f: int, seconds: float = 2.0) -> float:
    """FLOP/s of this machine's best of repeated (rows x d) @ (d x f) matmuls in ``precision`` (``bf16`` or
    ``fp32``), with torch's threads as the runs use them: the ceiling the runs are measured against."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(rows, d, dtype=dtype, device=device), torch.randn(d, f, dtype=dtype, device=device)
    best, ended = float("inf"), time.perf_counter() + seconds
    for _ in range(3):  # warm-up
        a @ b
    while time.perf_counter() < ended:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * rows * d * f / best


def ceiling(runs: list[dict], dataset_dir: Path, epochs: int) -> dict:
    """The machine's matmul rate in each precision the runs used (measured now), and per run and loop its model
    FLOP/s and their share of that rate (added to the runs in place)."""
    import transformers

    from kftune.data.bundled import bundled_model_dir
    from kftune.data.schema import load_splits

    config = transformers.AutoConfig.from_pretrained(str(bundled_model_dir()))
    splits = load_splits(dataset_dir)[0]
    train, validation = ([len(x) for x in splits[name]["input_ids"]] for name in ("train", "validation"))
    rows = HYPERPARAMETERS["per_device_train_batch_size"] * int(np.mean(train))
    flops = model_flops(train, validation, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                        epochs)
    precisions = {"bf16" if r[loop]["precision"] == "bf16" else "fp32" for r in runs for loop in ("kftune", *TRAINERS)
                  if loop in r}
    rates = {p: matmul_rate(p, rows, config.hidden_size, config.intermediate_size) for p in sorted(precisions)}
    for run in runs:
        for loop in ("kftune", *TRAINERS):
            if loop in run:
                result = run[loop]
                achieved = flops / result["train_seconds"]
                rate = rates["bf16" if result["precision"] == "bf16" else "fp32"]
                result.update(model_flops_per_second=achieved, share_of_matmul_rate=achieved / rate)
    return {"model_flops_per_run": flops, "matmul_shape": [rows, config.hidden_size, config.intermediate_size],
            "matmul_flops_per_second": rates}


def compare(kftune: dict, trainer: dict) -> dict:
    """kftune's speedup over one Trainer run (or mean) and its accuracy minus that one's, in points."""
    return {"speedup": kftune["samples_per_second"] / trainer["samples_per_second"],
            "accuracy_difference_points": 100 * (kftune["test_accuracy"] - trainer["test_accuracy"])}


def comparisons(result: dict) -> dict:
    return {f"vs_{name}": compare(result["kftune"], result[key]) for key, name in TRAINERS.items() if key in result}


def criteria(mean: dict) -> dict:
    """Issue 18's Done-when, read from the means: speedups and accuracy against each Trainer."""
    out: dict = {}
    vs = mean["comparison"]
    if "vs_documented" in vs:
        speedup = vs["vs_documented"]["speedup"]
        out["speedup_over_documented"] = {"value": speedup, "required": f">= {CRITERIA['min_speedup_over_documented']}",
                                          "met": speedup >= CRITERIA["min_speedup_over_documented"]}
    if "vs_tuned" in vs:
        speedup = vs["vs_tuned"]["speedup"]
        out["speedup_over_tuned"] = {"value": speedup, "required": f"> {CRITERIA['min_speedup_over_tuned']}",
                                     "met": speedup > CRITERIA["min_speedup_over_tuned"]}
    for name, comparison in vs.items():
        points = comparison["accuracy_difference_points"]
        out[f"accuracy_{name}"] = {"kftune_minus_trainer_points": points,
                                   "required": f">= -{CRITERIA['max_accuracy_deficit_points']} points",
                                   "met": points >= -CRITERIA["max_accuracy_deficit_points"]}
    out["all_met"] = all(c["met"] for c in out.values()) if out else None
    return out


def _means(runs: list[dict]) -> dict:
    """Each loop's mean samples/s, test accuracy and macro F1 over the seeds; comparisons and criteria of the means."""
    loops = [loop for loop in ("kftune", *TRAINERS) if loop in runs[0]]
    mean = {loop: {key: sum(r[loop][key] for r in runs) / len(runs) for key in METRICS
                   if all(key in r[loop] for r in runs)} for loop in loops}
    mean["comparison"] = comparisons(mean)
    mean["criteria"] = criteria(mean)
    return mean


def cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def summary(runs: list[dict], mean: dict | None) -> str:
    """A plain table: samples/s, accuracy and macro F1 of each loop per seed (and mean), then the comparisons."""
    loops = [loop for loop in ("kftune", *TRAINERS) if loop in runs[0]]
    rows = [(str(r["hyperparameters"]["seed"]), r) for r in runs] + ([("mean", mean)] if mean else [])
    lines = []
    for label, result in rows:
        cells = [f"{loop} {result[loop]['samples_per_second']:.1f}/s"
                 + (f" ({100 * result[loop]['share_of_matmul_rate']:.1f} % of the matmul rate)"
                    if "share_of_matmul_rate" in result[loop] else "")
                 + f" acc {result[loop]['test_accuracy']:.4f} F1 {result[loop]['test_f1_macro']:.4f}"
                 for loop in loops]
        vs = [f"{name}: {c['speedup']:.2f}x, {c['accuracy_difference_points']:+.2f} pts"
              for name, c in result["comparison"].items()]
        lines.append(f"seed {label}: " + " | ".join(cells) + ("  [" + "; ".join(vs) + "]" if vs else ""))
    if mean and mean["criteria"]:
        lines.append("criteria: " + ", ".join(f"{k}={'met' if v['met'] else 'NOT met'}"
                                              for k, v in mean["criteria"].items() if k != "all_met"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=HYPERPARAMETERS["num_train_epochs"])
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--skip-trainer", action="store_true", help="run only kftune's loop")
    parser.add_argument("--seed", type=int, nargs="+", default=[HYPERPARAMETERS["seed"]],
                        help="training seed(s) of every run (initialisation, batch order); the data split stays "
                        "fixed. Several seeds: each loop runs once per seed and the means are compared (one "
                        "run's test accuracy has a standard error of about 1 point here)")
    parser.add_argument("--max-rows", type=int, default=0, help="use a sample of this many rows (smoke runs)")
    parser.add_argument("--trainer-tuned", action="store_true",
                        help="also run the tuned Trainer (train_sampling_strategy=group_by_length and the "
                        "machine's fastest precision: bf16 where it is native, else fp32) "
                        "on every seed and compare kftune against it too")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a TrainConfig field for kftune's run, e.g. --set group_by_length=True")
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
        preprocess(PreprocessConfig(max_rows=args.max_rows), tmp / "data", tmp / "test_split")
        for seed in args.seed:
            hyper = {**HYPERPARAMETERS, "num_train_epochs": args.epochs, "seed": seed}
            run = {"hyperparameters": hyper, "kftune_overrides": overrides,
                   "kftune": kftune_run(tmp / "data", tmp / "test_split", tmp / f"kftune-{seed}", hyper, overrides)}
            if not args.skip_trainer:
                run["hf_trainer"] = trainer_run(tmp / "data", tmp / "test_split", tmp / f"trainer-{seed}", hyper)
            if args.trainer_tuned:
                run["hf_trainer_tuned"] = trainer_run(tmp / "data", tmp / "test_split", tmp / f"trainer-tuned-{seed}",
                                                      hyper, tuned=True)
            run["comparison"] = comparisons(run)
            print(json.dumps(run, indent=2), flush=True)
            runs.append(run)
        machine_ceiling = ceiling(runs, tmp / "data", args.epochs)
    mean = _means(runs)
    results = {"machine": machine, "ceiling": machine_ceiling, "runs": runs, "mean": mean}
    print(json.dumps(results, indent=2))
    rates = machine_ceiling["matmul_flops_per_second"]
    print(", ".join(f"{p} matmul rate {rate / 1e9:.0f} GFLOP/s" for p, rate in rates.items()) + f" ({machine})")
    print(summary(runs, mean))
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
