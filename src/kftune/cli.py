"""The kftune command line: run the finetune or tune pipeline locally, compile them for a cluster.

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

COMPILED_DIR = Path("pipelines/compiled")
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
    from kftune.components.common.training.config import TrainConfig
    from kftune.components.common.training.loop import resolve_precision
    from kftune.components.evaluate.evaluate import EvaluateConfig
    from kftune.components.preprocess.preprocess import PreprocessConfig, prepare_rows

    train_fields = inspect.signature(TrainConfig).parameters
    config = TrainConfig(**{k: v for k, v in arguments.items() if k in train_fields})
    config.validate()
    if arguments.get("num_nodes", 1) != 1:
        raise KftuneError(
            "num_nodes > 1 trains as a Kubeflow Trainer TrainJob on a cluster (kftune compile, then run it "
            "there); a local run uses one machine: set --nproc-per-node instead"
        )
    if arguments.get("deploy_name"):
        raise KftuneError("deploy_name creates a KServe InferenceService on a cluster (kftune compile, then run it "
                          "there); a local run can publish (--publish-uri) and serve it (kftune serve)")
    resolve_precision(config.mixed_precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    EvaluateConfig(**{k: arguments[k] for k in ("min_accuracy", "min_f1_macro", "min_gain_over_baseline")}).validate()
    resolve_model(arguments["model"])
    prep_fields = inspect.signature(PreprocessConfig).parameters
    prepare_rows(PreprocessConfig(**{k: v for k, v in arguments.items() if k in prep_fields}))


def _run_locally(runner, arguments: dict, output_dir: Path, verbose: bool = False):
    """Run a pipeline with kfp.local, its full log in the run directory: (result, log file)."""
    from kftune.console import local_run_console

    with local_run_console(output_dir, verbose=verbose) as run_console:
        try:
            return runner(arguments, output_dir), run_console.log_path
        except RuntimeError as e:  # kfp.local: a task failed
            raise KftuneError(run_console.failure_message(e)) from e


def _print_artifacts(results: dict, seconds: float, results_file: Path | None) -> None:
    print(f"fine-tuned model: {results['artifacts']['model']}")
    print(f"ONNX model:       {results['artifacts']['onnx']}")
    print(f"wall time:        {seconds:.0f} s")
    if results["artifacts"].get("log"):
        print(f"log file:         {results['artifacts']['log']}")
    if results_file:
        Path(results_file).parent.mkdir(parents=True, exist_ok=True)
        Path(results_file).write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"results:          {results_file}")


def cmd_run(args: argparse.Namespace) -> int:
    """Run the finetune pipeline locally and print the results table and artifact paths."""
    from kftune.components.evaluate.report import evaluation_markdown
    from kftune.pipelines.finetune import finetune
    from kftune.pipelines.local import run_finetune_locally

    arguments = _pipeline_arguments(args, finetune.pipeline_func)
    preflight(arguments)
    result, log_file = _run_locally(run_finetune_locally, arguments, args.output_dir, args.verbose)
    results = result.results()
    results["artifacts"]["log"] = str(log_file)
    print()
    print("kftune finetune results (test split)")
    print()
    print(evaluation_markdown(result.evaluation))
    if arguments["publish_uri"]:
        if result.passed:
            from kftune.components.publish.publish import resolve_published

            results["artifacts"]["published"] = resolve_published(arguments["publish_uri"])
            print(f"published:        {results['artifacts']['published']}")
        else:
            print(f"not published:    the gate failed, so nothing was written under {arguments['publish_uri']}")
    _print_artifacts(results, result.seconds, args.results)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Run the tune pipeline locally: search, train the best, evaluate, export."""
    from kftune.components.common.training.search_space import parse_space
    from kftune.components.evaluate.report import evaluation_markdown
    from kftune.components.tune.report import search_markdown
    from kftune.components.tune.search import check_search
    from kftune.pipelines.local import run_tune_locally
    from kftune.pipelines.tune import tune

    arguments = _pipeline_arguments(args, tune.pipeline_func)
    if arguments["search_backend"] != "pipeline":
        raise KftuneError("search_backend katib creates a Katib Experiment on a cluster (kftune compile --pipeline "
                          "tune, then run it there); a local search uses --search-backend pipeline")
    check_search(arguments["algorithm"], arguments["max_trials"], arguments["metric"], arguments["direction"])
    parse_space(arguments["search_space"], arguments["training_mode"])
    preflight(arguments)
    result, log_file = _run_locally(run_tune_locally, arguments, args.output_dir, args.verbose)
    results = result.results() | {"best_params": result.best_params, "search": result.search,
                                  "search_report": str(result.search_report)}
    results["artifacts"]["log"] = str(log_file)
    print()
    print("kftune hyperparameter search")
    print()
    print(search_markdown(result.search))
    print("best parameters: " + ", ".join(f"{k}={v}" for k, v in result.search["best"]["params"].items()))
    print()
    print("final model (test split)")
    print()
    print(evaluation_markdown(result.evaluation))
    print(f"search report:    {result.search_report}")
    _print_artifacts(results, result.seconds, args.results)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile the finetune or tune pipeline to KFP YAML for a cluster."""
    from kfp import compiler

    from kftune.components.common.images import ImageScheme
    from kftune.pipelines.finetune import StorageAccess, TrainResources, build_finetune_pipeline

    node_selector = []
    for item in args.node_selector:
        key, has_value, value = item.partition("=")
        if not key or not has_value:
            raise KftuneError(f"--node-selector {item!r}: expected LABEL=VALUE")
        node_selector.append((key, value))
    images = ImageScheme(registry=args.registry, tag=args.tag)
    resources = TrainResources(gpus=args.gpus, accelerator_type=args.accelerator_type, cpu=args.train_cpu,
                               memory=args.train_memory, shm_size=args.shm_size, node_selector=tuple(node_selector),
                               tolerations=tuple(args.toleration), shared_pvc=args.shared_pvc, retries=args.retries)
    storage = StorageAccess(s3_secret=args.s3_secret, s3_endpoint=args.s3_endpoint, s3_region=args.s3_region,
                            gcs_secret=args.gcs_secret)
    if args.pipeline == "tune":
        from kftune.pipelines.tune import build_tune_pipeline

        if args.trial_parallelism < 1:
            raise KftuneError(f"--trial-parallelism must be >= 1, got {args.trial_parallelism}")
        pipeline = build_tune_pipeline(images, resources, trial_parallelism=args.trial_parallelism, storage=storage)
    else:
        pipeline = build_finetune_pipeline(images, resources, storage)
    args.output = args.output or COMPILED_DIR / f"{args.pipeline}.yaml"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(args.output))
    print(f"wrote {args.output}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Upload a compiled pipeline to a KFP endpoint as a new version, start a run, optionally wait for it."""
    from kftune.submit import SubmitSettings, parse_param_assignments, submit

    settings = SubmitSettings(
        host=args.host, namespace=args.namespace, token=args.token, ca_cert=args.ca_cert,
        verify_tls=not args.insecure_skip_verify, pipeline_name=args.pipeline_name, version_name=args.version_name,
        experiment=args.experiment, run_name=args.run_name, parameters=parse_param_assignments(args.param),
        wait=args.wait, timeout=args.timeout, poll_interval=args.poll_interval,
    )
    result = submit(settings, args.pipeline_file)
    if args.wait and result["state"] != "SUCCEEDED":
        error = f": {result['error']}" if result.get("error") else ""
        print(f"kftune: run {result['run_id']} ended {result['state']}{error} ({result['run_url']})", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve an exported model with KServe's model server (V1 and Open Inference protocols) until stopped."""
    from kftune.components.serve.config import ServeConfig

    config = ServeConfig(model_name=args.model_name, http_port=args.http_port, grpc_port=args.grpc_port,
                         grpc=args.grpc, workers=args.workers, max_seq_length=args.max_seq_length,
                         batch_size=args.batch_size, max_instances=args.max_instances, threads=args.threads,
                         int8=args.int8)
    config.validate()
    try:
        from kftune.components.serve.serve import serve
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "kserve":
            raise
        raise KftuneError("kftune serve needs KServe's model server: pip install 'kftune[serve]'") from e
    serve(args.model, config)
    return 0


def _add_serve_parser(sub) -> None:
    from kftune.components.serve.config import ServeConfig

    # kserve.model_server parses sys.argv for its own flags when imported (--http_port, --workers, ...):
    # these flags are spelt with dashes, so only --workers, which means the same there, is read by both.
    defaults = ServeConfig()
    serve_parser = sub.add_parser(
        "serve", help="serve an exported model over HTTP and gRPC with KServe's model server (ONNX Runtime)",
        description="Serve an export directory (model.onnx, tokenizer, labels) with KServe's Python model server: "
        "V1 POST /v1/models/NAME:predict {\"instances\": [\"text\", ...]}, Open Inference POST "
        "/v2/models/NAME/infer (input 'text', BYTES) and gRPC, health at /v2/health/ready and "
        "/v2/models/NAME/ready. The KServe ServingRuntime runs: kftune serve /mnt/models --model-name "
        "{{.Name}} --http-port 8080. Needs the serve extra: pip install 'kftune[serve]'.",
    )
    serve_parser.add_argument("model", metavar="MODEL",
                              help="export directory, or an s3:// or gs:// URI of one (downloaded to a temporary "
                              "directory; credentials and endpoint from the environment, as for every kftune URI)")
    serve_parser.add_argument("--model-name", default=defaults.model_name, metavar="NAME",
                              help=f"name in the endpoint paths (default: {defaults.model_name})")
    serve_parser.add_argument("--http-port", type=int, default=defaults.http_port, metavar="PORT",
                              help=f"HTTP port (default: {defaults.http_port})")
    serve_parser.add_argument("--grpc-port", type=int, default=defaults.grpc_port, metavar="PORT",
                              help=f"gRPC port (default: {defaults.grpc_port})")
    serve_parser.add_argument("--grpc", action=argparse.BooleanOptionalAction, default=defaults.grpc,
                              help="serve the Open Inference Protocol over gRPC too (default: on)")
    serve_parser.add_argument("--workers", type=int, default=defaults.workers, metavar="N",
                              help="HTTP worker processes, each with its own copy of the model "
                              f"(default: {defaults.workers})")
    serve_parser.add_argument("--max-seq-length", type=int, default=defaults.max_seq_length, metavar="N",
                              help="truncate texts to this many tokens (default: the preprocess step's value, "
                              "which the export records; 128 where it is missing)")
    serve_parser.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N",
                              help=f"texts per ONNX Runtime call within a request (default: {defaults.batch_size})")
    serve_parser.add_argument("--max-instances", type=int, default=defaults.max_instances, metavar="N",
                              help=f"most texts accepted in one request (default: {defaults.max_instances})")
    serve_parser.add_argument("--threads", type=int, default=defaults.threads, metavar="N",
                              help="ONNX Runtime intra-op threads per worker (default: 0, as many as the CPUs the "
                              "process may use: its CPU affinity, capped by a container CPU limit)")
    serve_parser.add_argument("--int8", action="store_true", default=defaults.int8,
                              help="serve the export's int8 model (model.int8.onnx) instead of model.onnx")
    serve_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                              help="show tracebacks on errors")
    serve_parser.set_defaults(handler=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    from kftune.components.common.images import ImageScheme
    from kftune.pipelines.finetune import StorageAccess, finetune

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
    run.add_argument("--verbose", "-v", action="store_true",
                     help="stream the full kfp.local logs to the console (they always go to the run's kftune.log)")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    run.set_defaults(handler=cmd_run)

    from kftune.pipelines.tune import tune

    tune_parser = sub.add_parser(
        "tune",
        help="search hyperparameters, then train, evaluate and export the best (kfp.local, no cluster)",
        description="Run the tune pipeline locally with kfp.local: a grid, random or Optuna TPE search "
        "whose trials are real training runs, then the finetune steps with the best parameters. "
        "With no flags: TPE over learning rate, batch size, warmup and weight decay, 4 trials, on the "
        "bundled data and model.",
    )
    _add_pipeline_flags(tune_parser, tune.pipeline_func)
    tune_parser.add_argument("--output-dir", type=Path, default=DEFAULT_RUNS_DIR,
                             help=f"where runs keep their artifacts (default: {DEFAULT_RUNS_DIR})")
    tune_parser.add_argument("--results", type=Path, metavar="FILE",
                             help="also write the search, the best parameters and the test results to FILE as JSON")
    tune_parser.add_argument("--verbose", "-v", action="store_true",
                             help="stream the full kfp.local logs to the console (they always go to the run's "
                             "kftune.log)")
    tune_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks on errors")
    tune_parser.set_defaults(handler=cmd_tune)

    comp = sub.add_parser("compile", help="compile the finetune or tune pipeline to KFP YAML for a cluster",
                          description="Compile a pipeline to KFP YAML (upload it in the KFP UI).")
    comp.add_argument("--pipeline", choices=("finetune", "tune"), default="finetune",
                      help="which pipeline (default: finetune)")
    comp.add_argument("--output", "-o", type=Path,
                      help=f"YAML file to write (default: {COMPILED_DIR}/<pipeline>.yaml)")
    comp.add_argument("--trial-parallelism", type=int, default=2,
                      help="tune: grid/random trials running at once, each with the train task's resources "
                      "(default: 2)")
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
    storage = StorageAccess()
    comp.add_argument("--s3-secret", default=storage.s3_secret, metavar="NAME",
                      help="Kubernetes Secret with the S3/MinIO keys (fields accesskey, secretkey) for the tasks that "
                      f"read data or publish models; '' for none (default: {storage.s3_secret}, Kubeflow's MinIO)")
    comp.add_argument("--s3-endpoint", default=storage.s3_endpoint, metavar="URL",
                      help=f"S3 endpoint of those tasks; '' for AWS S3 (default: {storage.s3_endpoint})")
    comp.add_argument("--s3-region", default=storage.s3_region, metavar="REGION", help="S3 region (default: none)")
    comp.add_argument("--gcs-secret", default=storage.gcs_secret, metavar="NAME",
                      help="Kubernetes Secret holding a GCS service-account key file key.json (default: none)")
    comp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    comp.set_defaults(handler=cmd_compile)

    submit_parser = sub.add_parser(
        "submit", help="upload a compiled pipeline to a Kubeflow Pipelines endpoint and start a run",
        description="Upload a compiled pipeline YAML as a new version of a named pipeline (created if needed), "
        "start a run in an experiment (created if needed) and print the run's page in the KFP UI. The token "
        "comes from $KF_PIPELINES_TOKEN, else a service-account token file in a pod; it is never printed. "
        "Exit status: 0, or with --wait 1 when the run does not succeed; 2 on errors.",
    )
    submit_parser.add_argument("--host", help="KFP API base URL, e.g. https://kubeflow.example.com/pipeline or "
                               "http://localhost:8888 (default: $KFP_HOST, $KF_PIPELINES_ENDPOINT, or in a pod the "
                               "in-cluster ml-pipeline service)")
    submit_parser.add_argument("--namespace", help="profile namespace on multi-user KFP (default: $KFP_NAMESPACE, "
                               "or in a pod its namespace)")
    submit_parser.add_argument("--token", help="bearer token; better set $KF_PIPELINES_TOKEN (a flag shows in shell "
                               "history and process lists)")
    submit_parser.add_argument("--ca-cert", metavar="FILE", help="CA certificate (PEM) that verifies the endpoint's "
                               "TLS certificate")
    submit_parser.add_argument("--insecure-skip-verify", action="store_true",
                               help="do not verify the endpoint's TLS certificate (testing only)")
    submit_parser.add_argument("--pipeline-file", type=Path, default=COMPILED_DIR / "finetune.yaml",
                               help=f"compiled pipeline YAML (default: {COMPILED_DIR}/finetune.yaml)")
    submit_parser.add_argument("--pipeline-name", help="pipeline to add the version to (default: the YAML's "
                               "pipelineInfo.name)")
    submit_parser.add_argument("--version-name", help="name of the new version (default: kftune-<version>-<sha256 "
                               "of the YAML>; an unchanged YAML reuses its version)")
    submit_parser.add_argument("--experiment", default="kftune", help="experiment of the run (default: kftune)")
    submit_parser.add_argument("--run-name", help="name of the run (default: '<pipeline> <UTC date time>')")
    submit_parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                               help="run parameter, converted to its declared type, e.g. learning_rate=3e-5 "
                               "(repeatable)")
    submit_parser.add_argument("--wait", action="store_true", help="follow the run's state until it ends")
    submit_parser.add_argument("--timeout", type=float, metavar="SECONDS",
                               help="with --wait: stop waiting after SECONDS (exit 2; the run goes on)")
    submit_parser.add_argument("--poll-interval", type=float, default=10.0, metavar="SECONDS",
                               help="with --wait: seconds between polls (default: 10)")
    submit_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show tracebacks on errors")
    submit_parser.set_defaults(handler=cmd_submit)
    _add_serve_parser(sub)
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
