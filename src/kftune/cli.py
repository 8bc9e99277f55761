"""The kftune command line: run the finetune pipeline locally, compile it for a cluster.

``kftune run`` takes one flag per pipeline parameter (``--learning-rate`` for
``learning_rate``; ``--data`` and ``--model`` for the input data and pretrained model), with
the help text and default of the pipeline's own docstring and signature, so the CLI, the
KFP UI's run form and the compiled YAML always agree.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import re
import sys
from pathlib import Path

from kftune import __version__
from kftune.components.common.errors import KftuneError

DEFAULT_COMPILED = Path("pipelines/compiled/finetune.yaml")
DEFAULT_RUNS_DIR = Path("kftune-runs")


def docstring_args(doc: str) -> dict[str, str]:
    """Parse a Google-style docstring's ``Args:`` section into {name: description}."""
    args: dict[str, str] = {}
    section = re.split(r"^\s*Args:\s*$", doc or "", flags=re.M)
    if len(section) < 2:
        return args
    current = None
    for line in section[1].splitlines():
        if re.match(r"^\s*(Returns|Raises|Yields):\s*$", line):
            break
        match = re.match(r"^\s*(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            args[current] = match.group(2).strip()
        elif current and line.strip():
            args[current] += " " + line.strip()
    return args


def _add_pipeline_flags(parser: argparse.ArgumentParser, pipeline_func) -> None:
    helps = docstring_args(pipeline_func.__doc__)
    for name, param in inspect.signature(pipeline_func).parameters.items():
        flag = "--" + name.replace("_", "-")
        kind = param.annotation
        help_text = f"{helps.get(name, '')} (default: {param.default})"
        metavar = {"data": "PATH", "model": "DIR_OR_ID"}.get(name, {str: "TEXT"}.get(kind, kind.__name__.upper()))
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=param.default, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=param.default,
                                metavar=metavar, help=help_text)


def _pipeline_arguments(args: argparse.Namespace, pipeline_func) -> dict:
    return {name: getattr(args, name) for name in inspect.signature(pipeline_func).parameters}


def preflight(arguments: dict) -> None:
    """Check input data and settings before a pipeline starts, so errors come as one line."""
    import torch

    from kftune.components.common.bundled import resolve_model
    from kftune.components.evaluate.evaluate import EvaluateConfig
    from kftune.components.preprocess.preprocess import PreprocessConfig, prepare_rows
    from kftune.components.train.config import TrainConfig
    from kftune.components.train.loop import resolve_precision

    train_fields = inspect.signature(TrainConfig).parameters
    config = TrainConfig(**{k: v for k, v in arguments.items() if k in train_fields})
    config.validate()
    if arguments.get("num_nodes", 1) != 1:
        raise KftuneError(
            "num_nodes > 1 trains as a Kubeflow Trainer TrainJob on a cluster (kftune compile, then run it "
            "there); a local run uses one machine: set --nproc-per-node instead"
        )
    resolve_precision(config.mixed_precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    EvaluateConfig(**{k: arguments[k] for k in ("min_accuracy", "min_f1_macro", "min_gain_over_baseline")}).validate()
    resolve_model(arguments["model"])
    prep_fields = inspect.signature(PreprocessConfig).parameters
    prepare_rows(PreprocessConfig(**{k: v for k, v in arguments.items() if k in prep_fields}))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the finetune pipeline locally and print the results table and artifact paths."""
    from kftune.components.evaluate.report import evaluation_markdown
    from kftune.pipelines.finetune import finetune
    from kftune.pipelines.local import run_finetune_locally

    arguments = _pipeline_arguments(args, finetune.pipeline_func)
    preflight(arguments)
    try:
        result = run_finetune_locally(arguments, args.output_dir)
    except RuntimeError as e:  # kfp.local: a task failed; its log is printed above
        raise KftuneError(f"the pipeline failed: {str(e).strip().splitlines()[0]} (see the task log above)") from e
    results = result.results()
    print()
    print("kftune finetune results (test split)")
    print()
    print(evaluation_markdown(result.evaluation))
    print(f"fine-tuned model: {results['artifacts']['model']}")
    print(f"ONNX model:       {results['artifacts']['onnx']}")
    print(f"wall time:        {result.seconds:.0f} s")
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"results:          {args.results}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile the finetune pipeline to KFP YAML for a cluster."""
    from kfp import compiler

    from kftune.components.common.images import ImageScheme
    from kftune.pipelines.finetune import TrainResources, build_finetune_pipeline

    node_selector = []
    for item in args.node_selector:
        key, has_value, value = item.partition("=")
        if not key or not has_value:
            raise KftuneError(f"--node-selector {item!r}: expected LABEL=VALUE")
        node_selector.append((key, value))
    pipeline = build_finetune_pipeline(
        ImageScheme(registry=args.registry, tag=args.tag),
        TrainResources(gpus=args.gpus, accelerator_type=args.accelerator_type, cpu=args.train_cpu,
                       memory=args.train_memory, shm_size=args.shm_size, node_selector=tuple(node_selector),
                       tolerations=tuple(args.toleration), shared_pvc=args.shared_pvc, retries=args.retries),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(args.output))
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from kftune.components.common.images import ImageScheme
    from kftune.pipelines.finetune import finetune

    images = ImageScheme.from_env()
    parser = argparse.ArgumentParser(
        prog="kftune",
        description="Fine-tune pretrained transformers for text classification with Kubeflow Pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"kftune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the finetune pipeline on this machine (kfp.local, no cluster)",
        description="Run the finetune pipeline locally with kfp.local: preprocess, train (torchrun), "
        "evaluate against baselines, export ONNX. With no flags: the bundled Rotten Tomatoes "
        "reviews and the bundled all-MiniLM-L6-v2.",
    )
    _add_pipeline_flags(run, finetune.pipeline_func)
    run.add_argument("--output-dir", type=Path, default=DEFAULT_RUNS_DIR,
                     help=f"where runs keep their artifacts (default: {DEFAULT_RUNS_DIR})")
    run.add_argument("--results", type=Path, metavar="FILE",
                     help="also write the test-split results and artifact paths to FILE as JSON")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    run.set_defaults(handler=cmd_run)

    comp = sub.add_parser("compile", help="compile the finetune pipeline to KFP YAML for a cluster",
                          description="Compile the finetune pipeline to KFP YAML (upload it in the KFP UI).")
    comp.add_argument("--output", "-o", type=Path, default=DEFAULT_COMPILED,
                      help=f"YAML file to write (default: {DEFAULT_COMPILED})")
    comp.add_argument("--registry", default=images.registry,
                      help=f"image registry of the component images (default: $KFTUNE_REGISTRY or {images.registry})")
    comp.add_argument("--tag", default=images.tag,
                      help=f"image tag (default: $KFTUNE_IMAGE_TAG or {images.tag})")
    comp.add_argument("--gpus", type=int, default=1, help="GPUs the train task requests (0: CPU only; default: 1)")
    comp.add_argument("--accelerator-type", default="nvidia.com/gpu",
                      help="accelerator resource of the train task (default: nvidia.com/gpu)")
    comp.add_argument("--train-cpu", default="4", help="CPU request/limit of the train task (default: 4)")
    comp.add_argument("--train-memory", default="16G", help="memory request/limit of the train task (default: 16G)")
    comp.add_argument("--shm-size", default="8Gi",
                      help="size of the train task's memory-backed /dev/shm (default: 8Gi; empty: none)")
    comp.add_argument("--node-selector", action="append", default=[], metavar="LABEL=VALUE",
                      help="node label the train pod needs, e.g. nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3 "
                      "(repeatable)")
    comp.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT",
                      help="taint the train pod tolerates, e.g. nvidia.com/gpu:NoSchedule (repeatable)")
    comp.add_argument("--shared-pvc", default="kftune-shared",
                      help="PVC mounted at /kftune/shared in the train task for checkpoints and multi-node data "
                      "(default: kftune-shared, see manifests/; empty: none)")
    comp.add_argument("--retries", type=int, default=2,
                      help="retries of a failed train task, each resuming from its checkpoint (default: 2)")
    comp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    comp.set_defaults(handler=cmd_compile)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except KftuneError as e:
        if args.debug:
            raise
        print(f"kftune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kftune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
