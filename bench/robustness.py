"""Do the defaults learn on every seed and precision? Each task's defaults, several training seeds, each precision.

For each task, the bundled data is preprocessed once as the default run does (seed 42: the split stays fixed), then
the task's defaults are trained once per training seed (``--seeds``, at least 3) and precision (``--precisions``):
``no`` (fp32) and ``bf16``. Where this machine only emulates bf16 (a CPU without AVX512-BF16 or AMX, and no GPU),
the bf16 runs train on a sample of the data (``--emulated-bf16-rows``, 600 by default) and every row of the table
says so: they show that training learns in bf16, not what the full run scores.

Per run it reports the epoch the run stopped at and the epoch kept, the best validation score in the task's
primary metric, and, read once after training, the test score against the task's baseline and its trivial answer,
and whether the default gate passed (with the checks that failed). Nothing is chosen here: the table is what the
defaults do. The summary says, per task and precision, in how many runs the model beat its trivial answer on the
primary metric on test, and how many passed the gate.

About 10 minutes per encoder run on 2 CPU cores (fp32); causal-lm is slower. A full run, on a GPU or a quiet
machine:

    .venv/bin/python bench/robustness.py --out robustness.json
    .venv/bin/python bench/robustness.py --tasks multilabel --seeds 42 1 2 --precisions no   # one task
    .venv/bin/python bench/robustness.py --tasks multilabel --seeds 42 --max-rows 300 --max-steps 20  # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

TASKS = ("classification", "regression", "multilabel", "token-classification", "causal-lm")


def native_bf16() -> bool:
    """Whether bf16 runs at full speed here (a GPU of compute capability 8.0 or newer, or a CPU with AVX512-BF16
    or AMX)."""
    import torch

    from kftune.training.precision import has_native_bf16

    return has_native_bf16(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def one_run(task: str, seed: int, precision: str, rows: int, max_steps: int, work: Path) -> dict:
    """Preprocess (once per task and row count), train with the task's defaults, evaluate with the default gate."""
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.tasks import task_named
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    data, test_split = work / f"{task}-{rows}" / "data", work / f"{task}-{rows}" / "test_split"
    if not data.exists():
        preprocess(PreprocessConfig(task=task, seed=42, max_rows=rows), data, test_split)
    out = work / f"{task}-{rows}-{precision}-{seed}"
    started = time.perf_counter()
    history = train(TrainConfig(task=task, seed=seed, mixed_precision=precision, max_steps=max_steps), data, out)
    seconds = time.perf_counter() - started
    result = evaluate(out, data, test_split, EvaluateConfig(task=task))
    definition = task_named(task)
    primary = result.get("primary_metric", definition.primary)
    trivial = result["baselines"].get(definition.trivial, {}) if definition.trivial else {}
    return {
        "task": task, "seed": seed, "precision": precision, "rows": rows or "all",
        "epochs_run": len(history["epochs"]), "best_epoch": history["best_epoch"],
        "primary": primary, "validation": history["best_score"],
        "test": result["model"][primary],
        "baseline": result["baseline"], "baseline_test": result["baselines"][result["baseline"]][primary],
        "trivial": definition.trivial or None, "trivial_test": trivial.get(primary),
        "beats_trivial": (definition.gain(primary, result["model"][primary], trivial[primary]) > 0
                          if primary in trivial else None),
        "passed": result["passed"], "failed_checks": [c for c, ok in result["checks"].items() if not ok],
        # every score the summary shows, of the model and of the trivial answer (a multi-label model against the
        # empty set on subset accuracy and Hamming loss, not only the primary score)
        "scores": {k: result["model"][k] for k in definition.result_metrics(result)
                   if isinstance(result["model"].get(k), int | float)},
        "trivial_scores": {k: v for k, v in trivial.items() if isinstance(v, int | float)},
        "baseline_scores": {k: v for k, v in result["baselines"][result["baseline"]].items()
                            if isinstance(v, int | float)},
        "train_seconds": seconds,
    }


def summary(runs: list[dict]) -> str:
    lines = ["| task | precision | rows | seed | epochs run | kept | primary | validation | test | baseline | "
             "trivial | beats trivial | gate |", "|---" * 13 + "|"]
    for r in runs:
        trivial = "" if r["trivial_test"] is None else f"{r['trivial_test']:.4f}"
        lines.append(f"| {r['task']} | {r['precision']}{' (emulated, sample)' if r.get('emulated') else ''} | "
                     f"{r['rows']} | {r['seed']} | {r['epochs_run']} | {r['best_epoch']} | {r['primary']} | "
                     f"{r['validation']:.4f} | {r['test']:.4f} | {r['baseline_test']:.4f} | {trivial} | "
                     f"{r['beats_trivial']} | {'passed' if r['passed'] else 'FAILED'} |")
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["precision"]), []).append(r)
    lines.append("")
    for (task, precision), group in groups.items():
        beat = sum(1 for r in group if r["beats_trivial"])
        passed = sum(1 for r in group if r["passed"])
        lines.append(f"{task}, {precision}: beats the trivial answer on test in {beat}/{len(group)} runs, "
                     f"passes the default gate in {passed}/{len(group)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="training seeds (the split stays)")
    parser.add_argument("--precisions", nargs="+", choices=["no", "bf16"], default=["no", "bf16"])
    parser.add_argument("--emulated-bf16-rows", type=int, default=600,
                        help="rows of the sample bf16 runs train on where bf16 is only emulated")
    parser.add_argument("--max-rows", type=int, default=0, help="rows of every run (0: all; smoke runs)")
    parser.add_argument("--max-steps", type=int, default=0, help="stop each training here (smoke runs)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    emulated = not native_bf16()
    runs = []
    with tempfile.TemporaryDirectory(prefix="kftune-bench-robustness-") as tmp:
        for task in args.tasks:
            for precision in args.precisions:
                sample = precision == "bf16" and emulated
                rows = args.emulated_bf16_rows if sample and not args.max_rows else args.max_rows
                for seed in args.seeds:
                    run = one_run(task, seed, precision, rows, args.max_steps, Path(tmp))
                    runs.append({**run, "emulated": sample})
                    print(json.dumps(runs[-1]), flush=True)
                    if args.out:  # what is done so far, should a later run not finish
                        args.out.write_text(json.dumps({"runs": runs}, indent=2))
    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "bf16": "emulated (sample runs)" if emulated else "native", "runs": runs}
    print(summary(runs))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
