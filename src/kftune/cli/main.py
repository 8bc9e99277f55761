"""The kftune command line: run the finetune or tune pipeline locally, compile them for a cluster.

``kftune run`` takes one flag per setting of the pipeline's stages (``--learning-rate`` for
``TrainConfig.learning_rate``; ``--data`` and ``--model`` for the input data and pretrained
model), derived from the settings dataclasses (:mod:`kftune.cli.flags`) as the pipeline's run
parameters are, so the CLI, the KFP UI's run form and the compiled YAML always agree.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kftune import __version__
from kftune.cli.flags import add_group_flags, add_setting_flags, setting_values
from kftune.errors import KftuneError

COMPILED_DIR = Path("pipelines/compiled")
DEFAULT_RUNS_DIR = Path("kftune-runs")


def preflight(arguments: dict) -> None:
    """Check input data and settings before a pipeline starts, so errors come as one line."""
    import torch

    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.predict.config import PredictConfig
    from kftune.components.predict.predict import check_inputs
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import prepare, read_data
    from kftune.data.bundled import resolve_model
    from kftune.settings.fields import settings_from
    from kftune.tracking.config import TrackingConfig
    from kftune.training.config import Launch, TrainConfig
    from kftune.training.precision import resolve_precision

    config = settings_from(TrainConfig, arguments)
    config.validate()
    launch = settings_from(Launch, arguments)
    launch.validate()
    if launch.num_nodes != 1:
        raise KftuneError(
            "num_nodes > 1 trains as a Kubeflow Trainer TrainJob on a cluster (kftune compile, then run it "
            "there); a local run uses one machine: set --nproc-per-node instead"
        )
    if arguments.get("deploy_name"):
        raise KftuneError("deploy_name creates a KServe InferenceService on a cluster (kftune compile, then run it "
                          "there); a local run can publish (--publish-uri) and serve it (kftune serve)")
    resolve_precision(config.mixed_precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    settings_from(EvaluateConfig, arguments).validate()
    settings_from(TrackingConfig, arguments).validate()
    if arguments.get("predict_input"):
        settings_from(PredictConfig, arguments).validate()
    elif arguments.get("predict_output"):
        raise KftuneError("predict_output is set but predict_input is empty: set --predict-input, the texts to "
                          "predict on after export")
    resolve_model(config.model)
    data, frame, _ = read_data(settings_from(PreprocessConfig, arguments))  # task auto: decided from the data
    prepare(data, frame)
    settings_from(EvaluateConfig, arguments, task=data.task).validate()  # the gate settings the task has
    if arguments.get("predict_input"):  # the texts to predict on after export: their files and columns, now
        check_inputs(settings_from(PredictConfig, arguments), data.task)


def _run_locally(runner, arguments: dict, output_dir: Path, verbose: bool = False, pipeline: str = "finetune"):
    """Run a pipeline with kfp.local, its full log in the run directory: (result, log file). Runs are tracked in
    the embedded MLflow store under ``output_dir`` unless ``tracking_uri`` names another (or is "off"); what the
    tracking server did not take waits under ``output_dir``/tracking-pending and is sent again at the end."""
    import os

    from kftune.cli.console import local_run_console
    from kftune.tracking.config import local_store
    from kftune.tracking.tracker import ENV_PIPELINE, ENV_SPOOL_DIR

    arguments["tracking_uri"] = arguments.get("tracking_uri") or local_store(output_dir)
    os.environ[ENV_SPOOL_DIR] = str(Path(output_dir).resolve() / "tracking-pending")
    os.environ[ENV_PIPELINE] = pipeline
    with local_run_console(output_dir, verbose=verbose) as run_console:
        try:
            return runner(arguments, output_dir), run_console.log_path
        except RuntimeError as e:  # kfp.local: a task failed
            raise KftuneError(run_console.failure_message(e)) from e
        finally:
            _replay_pending(Path(os.environ[ENV_SPOOL_DIR]))


def _replay_pending(spools: Path) -> None:
    """Send what the tracking server did not take during the run, if it answers now; else say how to later."""
    from kftune.tracking.tracker import replay
    from kftune.tracking.tracker import spools as spool_files

    if not spools.is_dir() or not any(spool_files(spools)):
        return
    try:
        replay(spools)
    except KftuneError as e:
        print(f"kftune: warning: {e}; send them later with: kftune track replay {spools}", file=sys.stderr)


def _print_tracking(results: dict) -> None:
    tracking = results.get("tracking")
    if tracking:
        uri = tracking["tracking_uri"]
        ui = f"mlflow ui --backend-store-uri {uri}" if not uri.startswith("http") else uri
        print(f"MLflow run:       {tracking['run_id']} ({ui})")
    if results.get("registered"):
        registered = results["registered"]
        print(f"registered:       {registered['name']} version {registered['version']} "
              f"({', '.join(registered['aliases'])})")
    if results["artifacts"].get("tensorboard"):
        print(f"TensorBoard:      tensorboard --logdir {results['artifacts']['tensorboard']}")


def _print_artifacts(results: dict, seconds: float, results_file: Path | None) -> None:
    _print_tracking(results)
    print(f"fine-tuned model: {results['artifacts']['model']}")
    if "onnx" in results["artifacts"]:
        print(f"ONNX model:       {results['artifacts']['onnx']}")
    else:
        print(f"exported model:   {results['artifacts']['exported']}")
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
    from kftune.pipelines.finetune import LOCAL_SETTINGS
    from kftune.pipelines.local import run_finetune_locally

    arguments = setting_values(args, *LOCAL_SETTINGS)
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
    if arguments["predict_input"]:
        if result.predictions:
            if arguments["predict_output"]:
                results["artifacts"]["predictions_output"] = arguments["predict_output"]
            print(f"predictions:      {arguments['predict_output'] or result.predictions}")
        else:
            print(f"not predicted:    the gate failed, so the model made no predictions on "
                  f"{arguments['predict_input']}")
    _print_artifacts(results, result.seconds, args.results)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Run the tune pipeline locally: search, train the best, evaluate, export."""
    from kftune.components.evaluate.report import evaluation_markdown
    from kftune.components.tune.config import SearchConfig
    from kftune.components.tune.report import search_markdown
    from kftune.components.tune.search import plan_search
    from kftune.pipelines.local import run_tune_locally
    from kftune.pipelines.tune import LOCAL_SETTINGS
    from kftune.settings.fields import settings_from
    from kftune.training.config import TrainConfig

    arguments = setting_values(args, *LOCAL_SETTINGS)
    if arguments["search_backend"] != "pipeline":
        raise KftuneError("search_backend katib creates a Katib Experiment on a cluster (kftune compile --pipeline "
                          "tune, then run it there); a local search uses --search-backend pipeline")
    plan_search(settings_from(SearchConfig, arguments), settings_from(TrainConfig, arguments))
    preflight(arguments)
    result, log_file = _run_locally(run_tune_locally, arguments, args.output_dir, args.verbose, pipeline="tune")
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

    from kftune.cluster.images import ImageScheme
    from kftune.cluster.resources import TrainResources
    from kftune.pipelines.cluster import ClusterOptions, StorageSecrets
    from kftune.settings.fields import settings_from

    values = vars(args)
    images = settings_from(ImageScheme, values)
    resources, secrets = settings_from(TrainResources, values), settings_from(StorageSecrets, values)
    options = settings_from(ClusterOptions, values)
    if args.pipeline == "tune":
        from kftune.pipelines.tune import build_tune_pipeline as build
    else:
        from kftune.pipelines.finetune import build_finetune_pipeline as build
    pipeline = build(images, resources, secrets, options)
    args.output = args.output or COMPILED_DIR / f"{args.pipeline}.yaml"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(args.output))
    print(f"wrote {args.output}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Upload a compiled pipeline to a KFP endpoint as a new version, start a run, optionally wait for it."""
    from kftune.cli.submit import SubmitSettings, parse_param_assignments, submit

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
    """Serve an exported model with KServe's model server until stopped: a classifier over the V1 and Open Inference
    protocols, a causal LM over OpenAI-compatible endpoints."""
    from kftune.components.serve.config import ServeConfig
    from kftune.settings.fields import settings_from

    config = settings_from(ServeConfig, vars(args))
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
    serve_parser = sub.add_parser(
        "serve", help="serve an exported model with KServe's model server (a classifier on ONNX Runtime, a causal LM "
        "over OpenAI-compatible endpoints)",
        description="Serve an export directory (model.onnx, tokenizer, labels) with KServe's Python model server: "
        "V1 POST /v1/models/NAME:predict {\"instances\": [\"text\", ...]}, Open Inference POST "
        "/v2/models/NAME/infer (input 'text', BYTES) and gRPC, health at /v2/health/ready and "
        "/v2/models/NAME/ready. The KServe ServingRuntime runs: kftune serve /mnt/models --model-name "
        "{{.Name}} --http-port 8080. A causal-LM export (export_report.json task causal-lm) is served over "
        "OpenAI-compatible endpoints instead: POST /openai/v1/completions and /openai/v1/chat/completions (also "
        "streamed), GET /openai/v1/models, also under /v1/. Needs the serve extra: pip install 'kftune[serve]'.",
    )
    serve_parser.add_argument("model", metavar="MODEL",
                              help="export directory, or an s3:// or gs:// URI of one (downloaded to a temporary "
                              "directory; credentials and endpoint from the environment, as for every kftune URI)")
    add_group_flags(serve_parser, ServeConfig)
    serve_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                              help="show tracebacks on errors")
    serve_parser.set_defaults(handler=cmd_serve)


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict with an exported model on every text of a file, directory or prefix; write the predictions."""
    from kftune.components.predict.config import PredictConfig
    from kftune.components.predict.predict import predict
    from kftune.settings.fields import settings_from

    summary = predict(args.model, settings_from(PredictConfig, vars(args)))
    print(json.dumps(summary))
    return 0


def _add_predict_parser(sub) -> None:
    from kftune.components.predict.config import PredictConfig

    parser = sub.add_parser(
        "predict", help="batch predictions of an exported model over a file, directory or bucket prefix of texts",
        description="Run an export over every text of --predict-input (a CSV, TSV, JSON Lines or Parquet file, a "
        "directory of them, or an s3:// / gs:// prefix) and write one prediction row per input row to "
        "--predict-output (a path or URI; CSV, JSON Lines or Parquet from its extension): id (--predict-id-column, "
        "else the row number), source file "
        "(with several), and classification label, label_id, probability and p_<label> columns, or causal-lm "
        "generations. Prints a JSON summary (rows, seconds, rows_per_second).",
    )
    parser.add_argument("model", metavar="MODEL_DIR_OR_URI",
                        help="export directory, or an s3:// or gs:// URI of one (downloaded to a temporary directory)")
    add_group_flags(parser, PredictConfig)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parser.set_defaults(handler=cmd_predict)


def cmd_track_replay(args: argparse.Namespace) -> int:
    """Send the tracking records a run could not send (its spool files) to the tracking server."""
    from kftune.tracking.tracker import replay

    sent = replay(args.directory, args.tracking_uri or "")
    print(f"sent {sent['records']} record(s) from {sent['files']} file(s)")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Move a registered model's champion alias by hand (promote a version, or roll back to the one before); with
    --deploy-name, first serve that version's published copy there (the alias moves only once it is Ready)."""
    from kftune.components.deploy.config import DeployConfig
    from kftune.tracking.registry import promote, rollback, rollback_target

    uri = args.tracking_uri or local_tracking_store()
    version = args.version if args.command == "promote" else rollback_target(uri, args.name)[1]
    deploy = DeployConfig(**setting_values(args, DeployConfig))
    if deploy.deploy_name:
        redeploy(uri, args.name, version, deploy)
    if args.command == "promote":
        move = promote(uri, args.name, version, args.reason or "", args.model_registry_url)
    else:
        move = rollback(uri, args.name, args.reason or "", args.model_registry_url)
    print(f"{args.name}: champion is version {move['version']} (was {move['previous']}), {move['action']} by "
          f"{move['by']}: {move['reason']}")
    return 0


def redeploy(uri: str, name: str, version: str, settings) -> dict:
    """Serve ``version``'s published copy (its ``kftune.storage_uri``) as the InferenceService ``settings`` name."""
    from kftune.components.deploy.deploy import deploy_inference_service, deploy_request
    from kftune.errors import KftuneError
    from kftune.tasks import DEFAULT_TASK
    from kftune.tracking.registry import STORAGE_URI_TAG, version_info

    found = version_info(uri, name, version)
    storage = found["tags"].get(STORAGE_URI_TAG)
    if not storage:
        raise KftuneError(f"{name} version {version} has no published copy to serve (no {STORAGE_URI_TAG} tag: "
                          "its pipeline run had no publish_uri); publish it, or deploy without --deploy-name")
    request = deploy_request(settings, storage, found["tags"].get("task") or DEFAULT_TASK)
    handle = deploy_inference_service(request, timeout_seconds=settings.deploy_timeout_minutes * 60)
    print(f"{request.namespace}/{request.name}: serving {name} version {version} ({storage}) at {handle['url']}")
    return handle


def local_tracking_store() -> str:
    from kftune.tracking.config import local_store

    return local_store(DEFAULT_RUNS_DIR)


def _add_registry_parsers(sub) -> None:
    from kftune.components.deploy.config import DeployConfig
    from kftune.settings.catalog import settings_of
    from kftune.tracking.registry import RegistryConfig

    for name, help_text in (("promote", "make a registered model's version its champion (the model deploy serves)"),
                            ("rollback", "give the champion alias back to the version that held it before")):
        parser = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ", in the "
                                "MLflow registry; the move (who, when, why, from which version) is recorded on the "
                                "registered model (tag kftune.champion_history). With --deploy-name, the version's "
                                "published copy is served there first (created or updated, waited on until Ready), "
                                "and the alias moves only then.")
        parser.add_argument("name", metavar="NAME", help="registered model, e.g. kftune-classification")
        if name == "promote":
            parser.add_argument("version", metavar="VERSION", help="the version to promote")
        parser.add_argument("--reason", help="why (recorded with the move)")
        parser.add_argument("--tracking-uri", help=f"the MLflow registry (default: the local runs' store, "
                            f"{DEFAULT_RUNS_DIR}/mlflow.db)")
        add_group_flags(parser, DeployConfig)  # --deploy-name: serve the new champion there before the alias moves
        # --model-registry-url: mirror the move into the Kubeflow Model Registry (NAME is the registered model)
        add_setting_flags(parser, [s for s in settings_of(RegistryConfig) if s.name == "model_registry_url"])
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show tracebacks on errors")
        parser.set_defaults(handler=cmd_promote)


def _add_track_parser(sub) -> None:
    track = sub.add_parser("track", help="experiment tracking: send what a run could not record",
                           description="MLflow tracking of kftune runs.")
    actions = track.add_subparsers(dest="action", required=True, metavar="ACTION")
    replay_parser = actions.add_parser(
        "replay", help="send the records a run spooled while its tracking server was away",
        description="Send every spool file (*.tracking-pending.jsonl) under DIRECTORY, in order, to the MLflow "
        "server each names (or --tracking-uri), ending each run last; sent files are deleted. A local run's "
        "spools are in <output-dir>/tracking-pending, a pipeline step's inside its artifact (tracking-pending/).")
    replay_parser.add_argument("directory", type=Path, metavar="DIRECTORY")
    replay_parser.add_argument("--tracking-uri", help="send to this server instead of the one each file names")
    replay_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show tracebacks on errors")
    replay_parser.set_defaults(handler=cmd_track_replay)


def _add_local_run_parser(sub, name: str, handler, settings: tuple, help: str, description: str, results: str):
    """``kftune run`` / ``kftune tune``: a pipeline's settings as flags, and where the run goes."""
    parser = sub.add_parser(name, help=help, description=description)
    add_group_flags(parser, *settings)
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_RUNS_DIR,
                        help=f"where runs keep their artifacts (default: {DEFAULT_RUNS_DIR})")
    parser.add_argument("--results", type=Path, metavar="FILE", help=f"also write {results} to FILE as JSON")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="stream the full kfp.local logs to the console (they always go to the run's kftune.log)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parser.set_defaults(handler=handler)


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported as one line like every other error (not the whole usage)."""

    def error(self, message: str):
        self.exit(2, f"kftune: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from kftune.cluster.images import ImageScheme
    from kftune.cluster.resources import TrainResources
    from kftune.pipelines import finetune, tune
    from kftune.pipelines.cluster import ClusterOptions, StorageSecrets
    from kftune.tasks import TASKS

    images = ImageScheme.from_env()
    parser = _Parser(
        prog="kftune",
        description="Fine-tune pretrained transformers with Kubeflow Pipelines: " + "; ".join(
            f"{name} ({task.summary})" for name, task in TASKS.items()) + ".",
    )
    parser.add_argument("--version", action="version", version=f"kftune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_local_run_parser(
        sub, "run", cmd_run, finetune.LOCAL_SETTINGS,
        help="run the finetune pipeline on this machine (kfp.local, no cluster)",
        description="Run the finetune pipeline locally with kfp.local: preprocess, train (torchrun), "
        "evaluate against baselines, export ONNX; when the gate passes, predict on --predict-input (to "
        "--predict-output) and publish to --publish-uri where given. With no flags: the bundled Rotten Tomatoes "
        "reviews and the bundled all-MiniLM-L6-v2.",
        results="the test-split results and artifact paths",
    )
    _add_local_run_parser(
        sub, "tune", cmd_tune, tune.LOCAL_SETTINGS,
        help="search hyperparameters, then train, evaluate and export the best (kfp.local, no cluster)",
        description="Run the tune pipeline locally with kfp.local: a grid, random or Optuna TPE search "
        "whose trials are real training runs, then the finetune steps with the best parameters. "
        "With no flags: TPE over learning rate, batch size, warmup and weight decay, 4 trials, on the "
        "bundled data and model.",
        results="the search, the best parameters and the test results",
    )

    comp = sub.add_parser("compile", help="compile the finetune or tune pipeline to KFP YAML for a cluster",
                          description="Compile a pipeline to KFP YAML (upload it in the KFP UI).")
    comp.add_argument("--pipeline", choices=("finetune", "tune"), default="finetune",
                      help="which pipeline (default: finetune)")
    comp.add_argument("--output", "-o", type=Path,
                      help=f"YAML file to write (default: {COMPILED_DIR}/<pipeline>.yaml)")
    # the defaults of the train task's and Secrets' run parameters, and what is fixed when compiling
    add_group_flags(comp, images, TrainResources(), StorageSecrets(), ClusterOptions())
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
    _add_predict_parser(sub)
    _add_track_parser(sub)
    _add_registry_parsers(sub)
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
