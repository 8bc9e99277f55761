"""The compiled pipeline: GPU request on the train task, UI-ready parameters, image scheme,
and the committed YAML kept fresh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kftune.cli.main import main

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipelines" / "compiled" / "finetune.yaml"


def _compile(tmp_path, *flags) -> dict:
    out = tmp_path / "finetune.yaml"
    assert main(["compile", "--output", str(out), *flags]) == 0
    # the pipeline spec, then (with Kubernetes settings) the platform spec as a second document
    pipeline, *platform = yaml.safe_load_all(out.read_text())
    for doc in platform:
        pipeline.update(doc)
    return pipeline


def _executor(doc, component):
    return doc["deploymentSpec"]["executors"][f"exec-{component}"]["container"]


def _placeholder(name: str) -> str:
    return "{{$.inputs.parameters['pipelinechannel--" + name + "']}}"


@pytest.mark.parametrize("pipeline", ["finetune", "tune"])
def test_train_resources_are_run_parameters(tmp_path, pipeline):
    """GPUs, accelerator type, CPU and memory of every training task come from run parameters,
    whose defaults are the compile flags (string-typed: the KFP backend resolves resource
    placeholders from string values only)."""
    compiled, _platform_spec = yaml.safe_load_all((COMPILED if pipeline == "finetune" else TUNE_COMPILED).read_text())
    trainers = ("train",) if pipeline == "finetune" else ("train", "search-trial", "optuna-search")
    for name in trainers:
        resources = _executor(compiled, name)["resources"]
        assert resources["accelerator"] == {"resourceCount": _placeholder("gpus"),
                                            "resourceType": _placeholder("accelerator_type")}, name
        assert resources["resourceCpuLimit"] == resources["resourceCpuRequest"] == _placeholder("train_cpu")
        assert resources["resourceMemoryLimit"] == resources["resourceMemoryRequest"] == _placeholder("train_memory")
    params = compiled["root"]["inputDefinitions"]["parameters"]
    assert {name: (params[name]["parameterType"], params[name]["defaultValue"])
            for name in ("gpus", "accelerator_type", "train_cpu", "train_memory")} == {
        "gpus": ("STRING", "1"), "accelerator_type": ("STRING", "nvidia.com/gpu"),
        "train_cpu": ("STRING", "4"), "train_memory": ("STRING", "16G")}
    assert "accelerator" not in _executor(compiled, "evaluate").get("resources", {})


def test_compile_flags_are_the_run_parameters_defaults(tmp_path):
    doc = _compile(tmp_path, "--gpus", "8", "--accelerator-type", "amd.com/gpu", "--train-cpu", "16",
                   "--train-memory", "64Gi")
    params = doc["root"]["inputDefinitions"]["parameters"]
    assert [params[n]["defaultValue"] for n in ("gpus", "accelerator_type", "train_cpu", "train_memory")] == [
        "8", "amd.com/gpu", "16", "64Gi"]
    # 0 GPUs is a default like any other: a run can still ask for some
    doc = _compile(tmp_path, "--gpus", "0")
    assert doc["root"]["inputDefinitions"]["parameters"]["gpus"]["defaultValue"] == "0"
    assert _executor(doc, "train")["resources"]["accelerator"]["resourceCount"] == _placeholder("gpus")


def test_every_parameter_has_default_and_description(tmp_path):
    doc = _compile(tmp_path)
    params = doc["root"]["inputDefinitions"]["parameters"]
    assert len(params) >= 25
    for name, spec in params.items():
        assert "defaultValue" in spec, name
        assert spec.get("description", "").strip(), name
    # task-dependent settings default to auto (0), resolved per task by the stages
    assert params["task"]["defaultValue"] == "auto"  # decided from the data (the bundled default: classification)
    assert params["learning_rate"]["defaultValue"] == 0.0 and "classification: 0.0001" in params["learning_rate"][
        "description"]
    assert params["data"]["defaultValue"] == "auto"


def test_images_follow_one_scheme(tmp_path):
    doc = _compile(tmp_path, "--registry", "localhost:5001/ml", "--tag", "dev1")
    for stage in ("preprocess", "train", "evaluate", "export", "predict", "publish", "deploy"):
        assert _executor(doc, stage)["image"] == f"localhost:5001/ml/kftune-{stage}:dev1"


def test_compiled_yaml_is_fresh(tmp_path):
    """pipelines/compiled/finetune.yaml must equal a fresh compile (run `make compile`)."""
    fresh = tmp_path / "fresh.yaml"
    assert main(["compile", "--output", str(fresh), "--registry", "ghcr.io/kftune", "--tag", "0.1.0"]) == 0
    assert COMPILED.read_text() == fresh.read_text(), "stale: run `make compile` and commit the YAML"


def _platform(doc, component="train") -> dict:
    return doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"][f"exec-{component}"]


def test_train_task_gets_shm_shared_volume_and_retries(tmp_path):
    doc = _compile(tmp_path)
    platform = _platform(doc)
    (shm,) = platform["emptyDirMounts"]
    assert shm["mountPath"] == "/dev/shm" and shm["medium"] == "Memory" and shm["sizeLimit"] == "8Gi"
    (pvc,) = platform["pvcMount"]
    assert pvc["mountPath"] == "/kftune/shared"
    assert pvc["pvcNameParameter"] == {"componentInputParameter": "shared_pvc"}  # a run parameter
    assert doc["root"]["inputDefinitions"]["parameters"]["shared_pvc"]["defaultValue"] == "kftune-shared"
    train_task = doc["root"]["dag"]["tasks"]["train"]
    assert train_task["retryPolicy"]["maxRetryCount"] == 2
    inputs = train_task["inputs"]["parameters"]
    assert inputs["shared_dir"]["runtimeValue"]["constant"] == "/kftune/shared"
    assert inputs["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert inputs["trainjob_image"]["runtimeValue"]["constant"] == _executor(doc, "train")["image"]
    # runtime parameters for the multi-node route
    params = doc["root"]["inputDefinitions"]["parameters"]
    assert params["num_nodes"]["defaultValue"] == 1 and params["gpus_per_node"]["defaultValue"] == 1
    assert "exec-evaluate" not in doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_node_selector_and_tolerations_are_run_parameters(tmp_path):
    selector = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                   {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"}]
    doc = _compile(tmp_path, "--node-selector", json.dumps(selector), "--tolerations", json.dumps(tolerations),
                   "--shared-pvc", "", "--shm-size", "")
    platform = _platform(doc)
    assert platform["nodeSelector"] == {"nodeSelectorJson": {"componentInputParameter": "node_selector"}}
    assert platform["tolerations"] == [{"tolerationJson": {"componentInputParameter": "tolerations"}}]
    params = doc["root"]["inputDefinitions"]["parameters"]
    assert params["node_selector"]["defaultValue"] == selector
    assert params["tolerations"]["defaultValue"] == tolerations
    # compiled without a shared volume: no mount and no run parameter naming one
    assert "pvcMount" not in platform and "emptyDirMounts" not in platform and "shared_pvc" not in params
    inputs = doc["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    assert inputs["shared_dir"]["runtimeValue"]["constant"] == ""


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gpus=-1"], "gpus must be a whole number >= 0, got '-1'"),
        (["--accelerator-type", "tpu.google.com/v5"], "unknown accelerator type 'tpu.google.com/v5'"),
        (["--tolerations", '[{"key": "gpu", "effect": "Sometimes"}]'], "effect must be one of NoSchedule"),
        (["--tolerations", '["gpu:NoSchedule"]'], "tolerations: expected an object"),
        (["--node-selector", '{"gpu": 1}'], "node_selector must map label names to values"),
        (["--train-memory", "lots"], "train_memory must be a Kubernetes quantity"),
        (["--retries=-1"], "retries must be >= 0"),
    ],
)
def test_bad_compile_flags(tmp_path, flags, message, capsys):
    assert main(["compile", "--output", str(tmp_path / "x.yaml"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_compile_flags_that_are_not_json_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["compile", "--output", str(tmp_path / "x.yaml"), "--node-selector", "gpu=a100"])
    assert "expected JSON" in capsys.readouterr().err


TUNE_COMPILED = REPO / "pipelines" / "compiled" / "tune.yaml"


def test_tune_yaml_is_fresh(tmp_path):
    """pipelines/compiled/tune.yaml must equal a fresh compile (run `make compile`)."""
    fresh = tmp_path / "tune.yaml"
    assert main(["compile", "--pipeline", "tune", "--output", str(fresh), "--registry", "ghcr.io/kftune",
                 "--tag", "0.1.0"]) == 0
    assert TUNE_COMPILED.read_text() == fresh.read_text(), "stale: run `make compile` and commit the YAML"


def test_tune_pipeline_fans_trials_out_with_gpus_and_collects_them(tmp_path):
    out = tmp_path / "tune.yaml"
    assert main(["compile", "--pipeline", "tune", "--output", str(out), "--gpus", "2",
                 "--trial-parallelism", "3"]) == 0
    text = out.read_text()
    pipeline, platform = yaml.safe_load_all(text)
    executors = pipeline["deploymentSpec"]["executors"]
    for name in ("exec-search-trial", "exec-optuna-search", "exec-train"):
        resources = executors[name]["container"]["resources"]
        assert resources["accelerator"]["resourceCount"] == _placeholder("gpus"), name
        assert executors[name]["container"]["image"].endswith(("kftune-tune:0.1.0", "kftune-train:0.1.0"))
    # the trial fan-out: a ParallelFor over plan-search's trials, at most 3 at once, and its results collected
    loops = [t for c in pipeline["components"].values() for t in c.get("dag", {}).get("tasks", {}).values()
             if "parameterIterator" in t]
    assert len(loops) == 1 and loops[0]["iteratorPolicy"]["parallelismLimit"] == 3
    assert "plan-search" in str(loops[0]["parameterIterator"])
    assert "pipelinechannel--search-trial-Output" in text  # dsl.Collected of the trial outputs
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert params["gpus"]["defaultValue"] == "2"
    for name, spec in params.items():
        assert "defaultValue" in spec and spec.get("description", "").strip(), name
    # empty: each task's own space, which the form's description shows
    assert params["search_space"]["defaultValue"] == ""
    assert '"learning_rate": {"low": 3e-05, "high": 0.0002, "log": true}' in params["search_space"]["description"]
    assert params["algorithm"]["defaultValue"] == "tpe"
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-katib-search"]
    assert mounts["pvcMount"][0]["mountPath"] == "/kftune/shared"


@pytest.mark.parametrize("pipeline", ["finetune", "tune"])
def test_only_evaluate_and_export_are_given_the_test_split(pipeline):
    """The test split is preprocess's own artifact: in the committed YAML, no task but evaluate and export takes it,
    and no component but theirs has an input for it (the search's, train's and pretrain's take the dataset only)."""
    compiled, *_ = yaml.safe_load_all((COMPILED if pipeline == "finetune" else TUNE_COMPILED).read_text())
    dags = [compiled["root"]["dag"], *(c["dag"] for c in compiled["components"].values() if "dag" in c)]
    given = {name for dag in dags for name, task in dag["tasks"].items()
             for source in task.get("inputs", {}).get("artifacts", {}).values()
             if source.get("taskOutputArtifact", {}).get("outputArtifactKey") == "test_split"
             or "test_split" in source.get("componentInputArtifact", "")}
    assert given == {"evaluate", "export"}
    taking = {name for name, c in compiled["components"].items()
              if "test_split" in c.get("inputDefinitions", {}).get("artifacts", {})}
    assert taking == {"comp-evaluate", "comp-export"}
    trainers = {"train", "pretrain"} if pipeline == "finetune" else {
        "train", "plan-search", "search-trial", "optuna-search", "katib-search"}
    assert trainers <= {name for dag in dags for name, task in dag["tasks"].items()
                        if "dataset" in task.get("inputs", {}).get("artifacts", {})}


def _task_paths(doc) -> dict[str, list[str]]:
    """{task name: the trigger conditions of every DAG on the way to it, outermost first}."""
    components = doc["components"]
    paths: dict[str, list[str]] = {}

    def walk(dag: dict, conditions: list[str]) -> None:
        for name, task in dag["tasks"].items():
            here = conditions + ([task["triggerPolicy"]["condition"]] if "triggerPolicy" in task else [])
            component = components[task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"], here)
            else:
                paths[name] = here

    walk(doc["root"]["dag"], [])
    return paths


def test_publish_and_deploy_run_only_when_the_gate_passes_and_deploy_only_for_a_new_champion(tmp_path):
    doc = _compile(tmp_path)
    paths = _task_paths(doc)
    assert paths["train"] == [] and paths["evaluate"] == [] and paths["export"] == []
    gate, publish_requested = paths["publish"]
    assert "evaluate-Output" in gate and "true" in gate
    assert "publish_uri" in publish_requested and "!= ''" in publish_requested
    assert paths["deploy"][:2] == paths["publish"]
    assert "deploy_name" in paths["deploy"][2]
    # deploy serves the champion: only an export that became it (export's output) is deployed
    assert "export-Output" in paths["deploy"][3] and "true" in paths["deploy"][3] and len(paths["deploy"]) == 4
    # publish uploads the ONNX export; deploy serves the version publish wrote
    tasks = doc["components"]
    (publish_dag,) = [c["dag"] for c in tasks.values() if "dag" in c and "publish" in c["dag"]["tasks"]]
    publish = publish_dag["tasks"]["publish"]
    assert publish["inputs"]["artifacts"]["model"] == {
        "componentInputArtifact": "pipelinechannel--export-exported_model"}
    assert publish["retryPolicy"]["maxRetryCount"] == 2
    (deploy_dag,) = [c["dag"] for c in tasks.values() if "dag" in c and "deploy" in c["dag"]["tasks"]]
    model_uri = deploy_dag["tasks"]["deploy"]["inputs"]["parameters"]["model_uri"]
    assert model_uri["componentInputParameter"].startswith("pipelinechannel--publish-Output")
    assert _executor(doc, "deploy")["image"] == "ghcr.io/kftune/kftune-deploy:0.1.0"
    assert _executor(doc, "publish")["image"] == "ghcr.io/kftune/kftune-publish:0.1.0"
    params = doc["root"]["inputDefinitions"]["parameters"]
    assert params["publish_uri"]["defaultValue"] == "" and params["deploy_name"]["defaultValue"] == ""
    assert params["serving_runtime"]["defaultValue"] == "kftune-onnx"


def test_predict_runs_after_export_when_the_gate_passes_and_an_input_is_given(tmp_path):
    doc = _compile(tmp_path)
    paths = _task_paths(doc)
    gate, predict_requested = paths["predict"]
    assert gate == paths["publish"][0]  # the gate's sub-DAG, beside publish (not under it)
    assert "predict_input" in predict_requested and "!= ''" in predict_requested
    tasks = doc["components"]
    (predict_dag,) = [c["dag"] for c in tasks.values() if "dag" in c and "predict" in c["dag"]["tasks"]]
    predict = predict_dag["tasks"]["predict"]
    assert predict["inputs"]["artifacts"]["exported_model"] == {
        "componentInputArtifact": "pipelinechannel--export-exported_model"}
    # predict's settings are run parameters: its own named predict_*, text_column and max_new_tokens shared
    assert {name: spec["componentInputParameter"] for name, spec in predict["inputs"]["parameters"].items()} == {
        name: f"pipelinechannel--{name}" for name in (
            "predict_input", "predict_output", "predict_output_format", "predict_id_column", "predict_batch_size",
            "predict_int8", "text_column", "max_new_tokens")}
    params = doc["root"]["inputDefinitions"]["parameters"]
    assert {name: params[name]["defaultValue"] for name in (
        "predict_input", "predict_output", "predict_output_format", "predict_id_column", "predict_batch_size",
        "predict_int8")} == {"predict_input": "", "predict_output": "", "predict_output_format": "auto",
                             "predict_id_column": "", "predict_batch_size": 32, "predict_int8": False}
    assert "files predict reads" in params["text_column"]["description"]
    assert "predict's" in params["max_new_tokens"]["description"]
    for generic in ("input", "output", "batch_size", "id_column", "int8", "output_format"):
        assert generic not in params, generic
    assert _executor(doc, "predict")["image"] == "ghcr.io/kftune/kftune-predict:0.1.0"
    evaluate = [c for c in doc["components"].values() if "evaluate" in str(c.get("executorLabel"))]
    assert "max_new_tokens" in evaluate[0]["inputDefinitions"]["parameters"]  # the same run parameter


def test_storage_credentials_come_from_secrets_on_the_tasks_that_use_storage(tmp_path):
    doc = _compile(tmp_path)
    executors = doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for stage in ("preprocess", "train", "predict", "publish"):  # data, pretrained model, texts, published model
        (secret,) = executors[f"exec-{stage}"]["secretAsEnv"]
        # a run parameter (inside the gate's sub-DAG as the channel that carries it)
        assert secret["secretNameParameter"]["componentInputParameter"] in ("s3_secret", "pipelinechannel--s3_secret")
        assert secret["optional"] is True
        assert {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == {
            ("accesskey", "AWS_ACCESS_KEY_ID"), ("secretkey", "AWS_SECRET_ACCESS_KEY")}
        env = {e["name"]: e["value"] for e in _executor(doc, stage)["env"]}
        assert env["AWS_ENDPOINT_URL"] == "http://seaweedfs.kubeflow:9000"
    for stage in ("evaluate", "export", "deploy"):  # no storage (and no tracking Secret compiled in)
        assert "secretAsEnv" not in executors.get(f"exec-{stage}", {}), stage
    params = doc["root"]["inputDefinitions"]["parameters"]
    assert params["s3_secret"]["defaultValue"] == "mlpipeline-minio-artifact" and "gcs_secret" not in params

    assert "tracking_secret" not in params  # compiled without one

    # the tracking server's credentials, on the tasks that record into the run
    doc = _compile(tmp_path, "--tracking-secret", "mlflow-auth")
    executors = doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {"name": "KFTUNE_PIPELINE", "value": "finetune"} in _executor(doc, "train")["env"]  # the run's tag
    for stage in ("train", "evaluate", "export", "publish"):  # publish: the published URI onto the registry version
        [secret] = [s for s in executors[f"exec-{stage}"]["secretAsEnv"]
                    if "tracking_secret" in s["secretNameParameter"]["componentInputParameter"]]
        assert secret["optional"] is True and {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == {
            (k, k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")}
    for stage in ("preprocess", "predict", "deploy"):
        assert all("tracking_secret" not in s["secretNameParameter"]["componentInputParameter"]
                   for s in executors.get(f"exec-{stage}", {}).get("secretAsEnv", [])), stage
    assert doc["root"]["inputDefinitions"]["parameters"]["tracking_secret"]["defaultValue"] == "mlflow-auth"

    doc = _compile(tmp_path, "--s3-secret", "", "--s3-endpoint", "", "--gcs-secret", "gcs-key")
    executors = doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for stage in ("preprocess", "train", "predict", "publish"):
        assert "secretAsEnv" not in executors[f"exec-{stage}"]
        (volume,) = executors[f"exec-{stage}"]["secretAsVolume"]
        assert volume["mountPath"] == "/var/secrets/google" and volume["optional"] is True
        env = {e["name"]: e["value"] for e in _executor(doc, stage)["env"] if e["name"] != "KFTUNE_PIPELINE"}
        assert env == {"GOOGLE_APPLICATION_CREDENTIALS": "/var/secrets/google/key.json"}
