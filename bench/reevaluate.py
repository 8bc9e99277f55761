"""Re-run the evaluate stage on a finished local run: the same trained model, dataset and test split, today's code.

A causal-LM run spends most of its time training; a change to how it is evaluated (its baselines, its scores) is
measured on a model trained once. This runs :func:`~kftune.components.evaluate.evaluate.evaluate` on the artifacts of
a run directory that ``kftune run`` left (``preprocess/dataset``, ``preprocess/test_split``,
``train/finetuned_model``), prints the summary table the run prints, and writes the whole result (every baseline's
scores, the intervals, the sample answers, the seconds it took and the CPU) as JSON:

    .venv/bin/python bench/reevaluate.py kftune-runs/finetune-<timestamp> --out reevaluated.json
    .venv/bin/python bench/reevaluate.py kftune-runs/finetune-<timestamp> --set few_shot_examples=8
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def parse_value(text: str):
    """A ``--set`` value as JSON where it parses (numbers, booleans), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> dict:
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate
    from kftune.components.evaluate.report import evaluation_markdown

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory of kftune run (kftune-runs/finetune-...)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="an evaluate setting (EvaluateConfig), e.g. few_shot_examples=8; repeatable")
    parser.add_argument("--out", type=Path, help="write the result here (JSON)")
    args = parser.parse_args(argv)

    settings = dict(item.split("=", 1) for item in args.set)
    config = EvaluateConfig(**{name: parse_value(value) for name, value in settings.items()})
    preprocess = args.run_dir / "preprocess"
    started = time.monotonic()
    result = evaluate(args.run_dir / "train" / "finetuned_model", preprocess / "dataset", preprocess / "test_split",
                      config)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["cpu"] = cpu_name()
    result["settings"] = settings
    print(evaluation_markdown(result))
    print(f"evaluate: {result['seconds']} s on {result['cpu']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
