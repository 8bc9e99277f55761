"""The Katib route of the hyperparameter search: the Experiment spec (checked with Katib's own
models), following an Experiment against a fake Kubernetes API server playing a fake Katib
controller, and the whole launch through a temporary directory standing in for the shared volume.

What kftune sends is checked against what its settings say; what it reads is checked on recorded
Experiment and Trial documents (tests/fixtures/katib/, real Katib shapes) that the fake serves as they
are: no test asserts a best trial, a score or a count that the fake controller worked out."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
import types
import typing
from pathlib import Path

import pydantic
import pytest
from kubeflow_katib_api import models

from kftune.cluster import kube as kube_helpers
from kftune.cluster.resources import SHM_SIZE, TrainResources
from kftune.components.train import trainjob
from kftune.components.tune import katib
from kftune.components.tune.config import SearchConfig
from kftune.components.tune.katib import (
    ALGORITHMS,
    KatibRequest,
    build_experiment,
    katib_parameters,
    launch_katib,
    run_experiment,
    typed_value,
)
from kftune.errors import ConfigError, KftuneError
from kftune.pipelines.cluster import ClusterOptions
from kftune.settings.groups import Seeding
from kftune.tasks import DEFAULT_TASK, TASKS
from kftune.training.config import TrainConfig
from kftune.training.search_space import parse_space
from tests.fake_kube_api import FIXTURES, FakeKatibScenario, FakeKubeApiServer, recorded, write_kubeconfig

DEFAULT_SEARCH_SPACE = json.dumps(TASKS["classification"].search_space)  # the default task's

FAST = dict(poll_seconds=0.01, timeout_seconds=10)
QUIET = dict(log=lambda line: None)
SPACE = parse_space(DEFAULT_SEARCH_SPACE)  # lr log range, batch size choices, two linear float ranges
# Values Katib's webhook accepts (pkg/webhook/v1beta1/experiment/validator).
PARAMETER_TYPES = {"int", "double", "categorical", "discrete"}
DISTRIBUTIONS = {"uniform", "logUniform", "normal", "logNormal"}
PLACEHOLDER = re.compile(r"\$\{trialParameters\.(.+?)\}")


def make_request(**overrides) -> KatibRequest:
    values = dict(
        name="kftune-tune-test0001",
        namespace="team-a",
        image="ghcr.io/kftune/kftune-train:0.1.0",
        space=SPACE,
        config_path="/mnt/shared/run/train_config.json",
        dataset_path="/mnt/shared/run/dataset",
        output_root="/mnt/shared/run/trials",
        pvc_name="kftune-shared",
        mount_path="/mnt/shared",
        max_trials=6,
        parallel_trials=2,
        max_failed_trials=2,
    )
    values.update(overrides)
    return KatibRequest(**values)


@pytest.fixture
def kube():
    """Start a FakeKubeApiServer playing a FakeKatibScenario; returns the server and a real API client."""
    with contextlib.ExitStack() as stack:

        def start(**scenario) -> tuple[FakeKubeApiServer, object]:
            server = stack.enter_context(FakeKubeApiServer(katib=FakeKatibScenario(**scenario)))
            api_client = server.api_client()
            stack.callback(api_client.close)
            return server, api_client

        yield start


def parameters_by_name(doc: dict) -> dict[str, dict]:
    return {p["name"]: p for p in doc["spec"]["parameters"]}


def pod_of(doc: dict) -> dict:
    return doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]


# --- the Experiment spec ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_experiment_spec_passes_katibs_models(algorithm):
    doc = build_experiment(make_request(algorithm=algorithm)).to_dict()

    assert doc["apiVersion"] == "kubeflow.org/v1beta1" and doc["kind"] == "Experiment"
    assert doc["metadata"]["name"] == "kftune-tune-test0001" and doc["metadata"]["namespace"] == "team-a"
    assert doc["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "kftune",
        "app.kubernetes.io/component": "tune",
    }
    spec = doc["spec"]
    assert spec["algorithm"]["algorithmName"] == algorithm
    settings = {s["name"]: s["value"] for s in spec["algorithm"].get("algorithmSettings", [])}
    assert settings == ({} if algorithm == "grid" else {"random_state": "42"})
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (6, 2, 2)
    assert spec["objective"] == {
        "type": "maximize",
        "objectiveMetricName": "val_f1_macro",
        "additionalMetricNames": ["val_accuracy", "val_loss"],
        "metricStrategies": [
            {"name": "val_f1_macro", "value": "latest"},
            {"name": "val_accuracy", "value": "latest"},
            {"name": "val_loss", "value": "latest"},
        ],
    }
    assert spec["metricsCollectorSpec"] == {"collector": {"kind": "StdOut"}}
    for parameter in spec["parameters"]:
        assert parameter["parameterType"] in PARAMETER_TYPES
        feasible = parameter["feasibleSpace"]
        assert feasible.get("distribution", "uniform") in DISTRIBUTIONS
        if parameter["parameterType"] == "categorical":  # Katib: no min/max/step on a list
            assert feasible["list"] and not {"min", "max", "step"} & set(feasible)
        else:
            assert "list" not in feasible and float(feasible["min"]) < float(feasible["max"])

    # Katib's own models read the JSON document back unchanged (nothing dropped, nothing invalid)
    sent = json.loads(json.dumps(doc))
    assert models.V1beta1Experiment.from_dict(sent).to_dict() == doc
    models.IoK8sApiCoreV1PodTemplateSpec.from_dict(pod_of(sent))


def test_parameter_types_per_algorithm():
    grid = parameters_by_name(build_experiment(make_request(algorithm="grid")).to_dict())
    assert {p["parameterType"] for p in grid.values()} == {"categorical"}
    assert grid["learning_rate"]["feasibleSpace"]["list"] == ["3e-05", "7.74597e-05", "0.0002"]
    assert grid["per_device_train_batch_size"]["feasibleSpace"]["list"] == ["16", "32"]
    assert grid["warmup_ratio"]["feasibleSpace"]["list"] == ["0.0", "0.1", "0.2"]

    tpe = parameters_by_name(build_experiment(make_request(algorithm="tpe")).to_dict())
    assert tpe["learning_rate"] == {
        "name": "learning_rate",
        "parameterType": "double",
        "feasibleSpace": {"min": "3e-05", "max": "0.0002", "distribution": "logUniform"},
    }
    assert tpe["warmup_ratio"]["feasibleSpace"] == {"min": "0.0", "max": "0.2", "distribution": "uniform"}
    assert tpe["per_device_train_batch_size"]["parameterType"] == "categorical"

    # Katib's skopt service samples every double log-uniformly: linear ranges go as their grid values
    bayes = parameters_by_name(build_experiment(make_request(algorithm="bayesianoptimization")).to_dict())
    assert bayes["learning_rate"]["parameterType"] == "double"
    assert bayes["learning_rate"]["feasibleSpace"]["distribution"] == "logUniform"
    assert bayes["warmup_ratio"] == {
        "name": "warmup_ratio",
        "parameterType": "categorical",
        "feasibleSpace": {"list": ["0.0", "0.1", "0.2"]},
    }


def test_integer_ranges_and_steps():
    space = parse_space(
        {
            "num_train_epochs": {"low": 2, "high": 5},
            "max_train_length": {"low": 64, "high": 256, "step": 64},
            "weight_decay": {"low": 0.0, "high": 0.1, "step": 0.05},
        }
    )
    params = {p.name: p for p in katib_parameters(space, "random")}
    assert all(isinstance(p, models.V1beta1ParameterSpec) for p in params.values())
    epochs = params["num_train_epochs"]
    assert epochs.parameter_type == "int" and (epochs.feasible_space.min, epochs.feasible_space.max) == ("2", "5")
    assert params["max_train_length"].feasible_space.step == "64"
    assert params["weight_decay"].parameter_type == "double" and params["weight_decay"].feasible_space.step == "0.05"
    grid = {p.name: p for p in katib_parameters(space, "grid")}
    assert grid["max_train_length"].feasible_space.list == ["64", "192", "256"]  # the lattice thinned to 3 grid points
    assert grid["num_train_epochs"].feasible_space.list == ["2", "4", "5"]


def test_trial_parameters_match_the_command():
    doc = build_experiment(make_request()).to_dict()
    template = doc["spec"]["trialTemplate"]
    assert template["primaryContainerName"] == "training"
    defined = {p["name"]: p["reference"] for p in template["trialParameters"]}
    used = set(PLACEHOLDER.findall(json.dumps(template["trialSpec"])))
    assert used == set(defined)  # Katib's webhook: every placeholder defined, every trial parameter used
    assert defined.pop("trialName") == "${trialSpec.Name}"
    assert defined == {name: name for name in SPACE.names}  # each references the search parameter of its name
    assert set(defined) == set(parameters_by_name(doc))

    container = pod_of(doc)["spec"]["containers"][0]
    command = container["command"]
    assert container["name"] == "training" and container["image"] == "ghcr.io/kftune/kftune-train:0.1.0"
    assert command[:3] == ["python", "-m", "kftune.components.tune.trial"]
    assert command[command.index("--config") + 1] == "/mnt/shared/run/train_config.json"
    assert command[command.index("--dataset") + 1] == "/mnt/shared/run/dataset"
    assert command[command.index("--output") + 1] == "/mnt/shared/run/trials/${trialParameters.trialName}"
    assert command[command.index("--metric") + 1] == "f1_macro"
    sets = [command[i + 1] for i, part in enumerate(command) if part == "--set"]
    assert sets == [f"{name}=${{trialParameters.{name}}}" for name in SPACE.names]

    # what a trial runs once Katib substituted its values: shell-safe (Katib wraps it in `sh -c`)
    values = {"trialName": "kftune-tune-test0001-x7k2pq9z", "learning_rate": "3.1e-05",
              "per_device_train_batch_size": "16", "warmup_ratio": "0.1", "weight_decay": "0.05"}  # fmt: skip
    substituted = [PLACEHOLDER.sub(lambda m: values[m[1]], part) for part in command]
    assert all(katib.SHELL_SAFE.match(part) for part in substituted)
    assert "--output" in substituted and "/mnt/shared/run/trials/kftune-tune-test0001-x7k2pq9z" in substituted


def test_trial_pod_spec():
    request = make_request(
        gpus_per_trial=2,
        cpu="8",
        memory="32Gi",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        service_account="kftune",
        active_deadline_seconds=7200,
    )
    doc = build_experiment(request).to_dict()
    job = doc["spec"]["trialTemplate"]["trialSpec"]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert "metadata" not in job  # Katib names the Job after the trial; name/namespace must be omitted
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 7200
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "tune"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["serviceAccountName"] == "kftune"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["kftune-shared"]["persistentVolumeClaim"] == {"claimName": "kftune-shared"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": SHM_SIZE}
    (container,) = spec["containers"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == {
        "kftune-shared": "/mnt/shared",
        "dshm": "/dev/shm",
    }
    expected = {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert container["resources"] == {"requests": expected, "limits": expected}


def test_trial_pod_without_gpus_or_extras():
    doc = build_experiment(make_request(gpus_per_trial=0, shm_size=None)).to_dict()
    spec = pod_of(doc)["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16G"}
    assert not any("gpu" in key for key in container["resources"]["requests"])
    assert [v["name"] for v in spec["volumes"]] == ["kftune-shared"]
    assert not {"nodeSelector", "tolerations", "serviceAccountName"} & set(spec)
    other = pod_of(build_experiment(make_request(gpus_per_trial=1, accelerator_type="amd.com/gpu")).to_dict())
    assert other["spec"]["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "1"


def test_loss_is_minimized():
    request = make_request(metric="loss")
    assert request.direction == "minimize"
    objective = build_experiment(request).to_dict()["spec"]["objective"]
    assert objective["type"] == "minimize" and objective["objectiveMetricName"] == "val_loss"
    assert objective["additionalMetricNames"] == ["val_f1_macro", "val_accuracy"]


def test_request_defaults_are_the_settings_defaults():
    bare = KatibRequest(image="kftune-train:dev", space=SPACE, config_path="/mnt/shared/run/train_config.json",
                        dataset_path="/mnt/shared/run/dataset", output_root="/mnt/shared/run/trials",
                        pvc_name="kftune-shared", mount_path="/mnt/shared")
    search, resources = SearchConfig(), TrainResources()
    assert (bare.algorithm, bare.max_trials, bare.parallel_trials, bare.max_failed_trials) == (
        search.algorithm, search.max_trials, search.parallel_trials, search.max_failed_trials)
    # metric and direction auto: the default task's metric, in the direction that improves it
    default_metric = TASKS[DEFAULT_TASK].defaults["metric_for_best_model"]
    assert (bare.metric, bare.direction) == (default_metric, search.direction_for(default_metric))
    assert bare.seed == Seeding().seed
    assert (bare.gpus_per_trial, bare.accelerator_type, bare.cpu, bare.memory) == (
        int(resources.gpus), resources.accelerator_type, resources.train_cpu, resources.train_memory)
    assert bare.shm_size == SHM_SIZE == ClusterOptions().shm_size  # one /dev/shm size for every training pod


def test_launch_katib_takes_the_search_and_resources_settings(kube, tmp_path, dataset):
    shared = tmp_path / "shared"
    shared.mkdir()
    server, api_client = kube()
    search = SearchConfig(max_trials=3, parallel_trials=3, max_failed_trials=1, algorithm="random")
    resources = TrainResources(gpus="2", accelerator_type="amd.com/gpu", train_cpu="8", train_memory="32Gi",
                               node_selector={"pool": "gpu"}, shared_pvc="team-shared")
    launch_katib(TrainConfig(seed=5), dataset, SPACE, search, resources, image="kftune-train:dev", mount_path=shared,
                 namespace="team-a", api_client=api_client, **QUIET, poll_seconds=0.01)
    spec = server.calls("POST")[0].body["spec"]
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (3, 3, 1)
    assert spec["algorithm"] == {"algorithmName": "random", "algorithmSettings": [{"name": "random_state",
                                                                                   "value": "5"}]}
    pod = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "amd.com/gpu": "2"}
    assert pod["nodeSelector"] == {"pool": "gpu"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kftune-shared"]["persistentVolumeClaim"] == {"claimName": "team-shared"}
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == SHM_SIZE


def test_generated_names_are_fresh_and_katib_valid():
    names = {KatibRequest(**{**make_request().__dict__, "name": trainjob.new_job_name("kftune-tune")}).name
             for _ in range(20)}  # fmt: skip
    assert len(names) == 20
    assert all(n.startswith("kftune-tune-") and len(n) <= 40 and kube_helpers.DNS_LABEL.match(n) for n in names)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"algorithm": "hyperband"}, "algorithm must be one of grid, random, tpe, bayesianoptimization"),
        ({"max_trials": 0, "parallel_trials": 0}, "max_trials must be >= 1"),
        ({"parallel_trials": 7}, r"parallel_trials \(7\) must not exceed max_trials \(6\)"),
        ({"max_failed_trials": 7}, "max_failed_trials must be between 0 and max_trials"),
        ({"max_trials": "6"}, "max_trials must be an integer"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"metric": "auc"}, "metric must be one of"),
        ({"direction": "minimize"}, "would pick the worst trial"),
        ({"algorithm": "grid", "max_trials": 55}, r"max_trials \(55\) exceeds the 54 combinations of the grid"),
        ({"name": "Tune_1"}, "name must be"),
        ({"name": "x" * 41}, "name must be at most 40"),
        ({"namespace": "Team A"}, "namespace must be a DNS-1123 label"),
        ({"image": ""}, "image is required"),
        ({"space": parse_space('{"learning_rate": [1e-4]}').__class__(())}, "space must be a non-empty SearchSpace"),
        ({"pvc_name": ""}, "pvc_name is required"),
        ({"mount_path": "relative"}, "mount_path must be an absolute path"),
        ({"dataset_path": "/elsewhere/dataset"}, "dataset_path must be a path on the shared volume"),
        ({"output_root": "/mnt/shared/my trials"}, "output_root must be a path on the shared volume .* shell"),
        ({"config_path": "/mnt/shared/$(reboot)"}, "config_path must be a path"),
        ({"accelerator_type": "nvidia gpu"}, "accelerator_type must be a resource name"),
        ({"gpus_per_trial": -1}, "gpus_per_trial must be >= 0"),
        ({"cpu": "lots"}, "cpu must be a Kubernetes quantity"),
        ({"memory": "0"}, "memory must be > 0"),
        ({"tolerations": [{"key": 1}]}, "tolerations: invalid toleration"),
        ({"node_selector": {"gpu": True}}, "node_selector must map strings to strings"),
        ({"service_account": "Kftune SA"}, "service_account must be a DNS-1123 subdomain"),
    ],
)
def test_invalid_requests_are_rejected_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_request(**overrides)


def test_typed_values_come_back_as_the_options_types():
    space = parse_space({"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "num_train_epochs": [2, 3],
                         "per_device_train_batch_size": {"low": 8, "high": 64}})  # fmt: skip
    lr, epochs, batch = space.params
    assert typed_value(lr, "3.1e-05") == pytest.approx(3.1e-05) and isinstance(typed_value(lr, "1e-4"), float)
    assert typed_value(epochs, "3") == 3 and isinstance(typed_value(epochs, "3"), int)
    assert typed_value(batch, "16.0") == 16 and isinstance(typed_value(batch, "16.0"), int)
    with pytest.raises(KftuneError, match="not a number"):
        typed_value(batch, "sixteen")


# --- following an Experiment --------------------------------------------------------------------


def lr_score(assignments: dict[str, str]) -> float:
    """A fake validation score: higher learning rate and smaller batches do better."""
    return round(float(assignments["learning_rate"]) * 1000 + 16 / float(assignments["per_device_train_batch_size"]), 6)


# Recorded documents of a random search of SPACE (6 trials, 2 at a time; tests/fixtures/katib/): trial b7xq4mzp is
# Katib's optimal one; one trial failed, one printed no metrics.
RUNNING = recorded("katib/random-running.status.json")
SUCCEEDED = recorded("katib/random-succeeded.status.json")
TRIALS = recorded("katib/random-succeeded.trials.json")
NO_TRIALS = {**TRIALS, "items": []}
BEST_TRIAL = "kftune-tune-test0001-b7xq4mzp"
BEST_PARAMS = {"learning_rate": 0.00016905214386523516, "per_device_train_batch_size": 16,
               "warmup_ratio": 0.04219977291622781, "weight_decay": 0.07315840282458473}  # typed as the options
BEST_LINE = (f"best so far val_f1_macro=0.8612 ({BEST_TRIAL}: learning_rate=0.00016905214386523516, "
             "per_device_train_batch_size=16, warmup_ratio=0.04219977291622781, weight_decay=0.07315840282458473)")


def unknown_fields(value, kind, where: str = "") -> list[str]:
    """The keys of the JSON document ``value`` that are no field of Katib's API model ``kind`` (by their JSON names,
    recursively through the nested models)."""
    args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType, typing.Annotated):
        return unknown_fields(value, args[0], where)
    if typing.get_origin(kind) is list:
        return [key for i, item in enumerate(value) for key in unknown_fields(item, args[0], f"{where}[{i}]")]
    if not (isinstance(kind, type) and issubclass(kind, pydantic.BaseModel)):
        return []
    fields = {info.alias or name: info.annotation for name, info in kind.model_fields.items()}
    unknown = [f"{where}.{key}" for key in value if key not in fields]
    return unknown + [key for name, item in value.items() if name in fields
                      for key in unknown_fields(item, fields[name], f"{where}.{name}")]  # fmt: skip


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "katib").glob("*.json")))
def test_recorded_documents_have_katibs_shape(name):
    """The recorded documents are what Katib writes: every field one of Katib's API models (generated from its Go
    types) has, and the models read them."""
    doc = recorded(f"katib/{name}")
    if name.endswith(".trials.json"):
        assert doc["kind"] == "TrialList" and doc["items"]
        for trial in doc["items"]:
            assert unknown_fields(trial, models.V1beta1Trial) == []
            models.V1beta1Trial.from_dict(trial)
    else:
        assert unknown_fields(doc, models.V1beta1ExperimentStatus) == []
        models.V1beta1ExperimentStatus.from_dict(doc)


def test_run_experiment_sends_what_the_request_says(kube):
    server, api_client = kube(statuses=[SUCCEEDED], trial_list=TRIALS)
    run_experiment(make_request(algorithm="random", seed=11), api_client, **QUIET, **FAST)

    (create,) = server.calls("POST", "/experiments")
    assert create.path == "/apis/kubeflow.org/v1beta1/namespaces/team-a/experiments"
    sent = create.body
    assert (sent["metadata"]["name"], sent["metadata"]["namespace"]) == ("kftune-tune-test0001", "team-a")
    spec = sent["spec"]
    # the request's metric (auto: the default task's f1_macro) in the direction that improves it, the task's other
    # scores beside it, each read as the last value the trial printed
    assert spec["objective"] == {
        "type": "maximize", "objectiveMetricName": "val_f1_macro",
        "additionalMetricNames": ["val_accuracy", "val_loss"],
        "metricStrategies": [{"name": n, "value": "latest"} for n in ("val_f1_macro", "val_accuracy", "val_loss")],
    }  # fmt: skip
    assert spec["algorithm"] == {"algorithmName": "random", "algorithmSettings": [{"name": "random_state",
                                                                                   "value": "11"}]}
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (6, 2, 2)
    assert spec["metricsCollectorSpec"] == {"collector": {"kind": "StdOut"}}
    # SPACE as Katib parameters: the log range log-uniform, the choices a list, the linear ranges uniform
    assert spec["parameters"] == [
        {"name": "learning_rate", "parameterType": "double",
         "feasibleSpace": {"min": "3e-05", "max": "0.0002", "distribution": "logUniform"}},
        {"name": "per_device_train_batch_size", "parameterType": "categorical",
         "feasibleSpace": {"list": ["16", "32"]}},
        {"name": "warmup_ratio", "parameterType": "double",
         "feasibleSpace": {"min": "0.0", "max": "0.2", "distribution": "uniform"}},
        {"name": "weight_decay", "parameterType": "double",
         "feasibleSpace": {"min": "0.0", "max": "0.1", "distribution": "uniform"}},
    ]  # fmt: skip
    template = spec["trialTemplate"]
    assert template["primaryContainerName"] == "training"
    assert template["trialParameters"][0] == {"name": "trialName", "reference": "${trialSpec.Name}",
                                              "description": "the trial's name: its output directory"}
    assert [(p["name"], p["reference"]) for p in template["trialParameters"][1:]] == [(n, n) for n in SPACE.names]
    (container,) = pod_of(sent)["spec"]["containers"]
    assert container["command"] == [
        "python", "-m", "kftune.components.tune.trial", "--config", "/mnt/shared/run/train_config.json",
        "--dataset", "/mnt/shared/run/dataset", "--output", "/mnt/shared/run/trials/${trialParameters.trialName}",
        "--metric", "f1_macro",
        "--set", "learning_rate=${trialParameters.learning_rate}",
        "--set", "per_device_train_batch_size=${trialParameters.per_device_train_batch_size}",
        "--set", "warmup_ratio=${trialParameters.warmup_ratio}",
        "--set", "weight_decay=${trialParameters.weight_decay}",
    ]  # fmt: skip
    # Katib's own models read the sent document back unchanged
    assert models.V1beta1Experiment.from_dict(sent).to_dict() == sent


def test_run_experiment_reads_the_best_trial_from_katibs_status_and_deletes_it(kube):
    server, api_client = kube(statuses=[RUNNING, RUNNING, SUCCEEDED], trial_list=TRIALS)
    request = make_request(algorithm="random")
    lines: list[str] = []

    started = time.monotonic()
    result = run_experiment(request, api_client, log=lines.append, poll_seconds=0.05, timeout_seconds=10)
    elapsed = time.monotonic() - started

    # currentOptimalTrial: its assignments typed like the options, in the space's order; its scores the latest
    assert result["best_trial"] == BEST_TRIAL
    assert result["best_params"] == BEST_PARAMS and list(result["best_params"]) == SPACE.names
    assert isinstance(result["best_params"]["per_device_train_batch_size"], int)
    assert result["best_score"] == 0.861234
    assert result["best_metrics"] == {"val_accuracy": 0.8625, "val_loss": 0.351877, "val_f1_macro": 0.861234}
    assert result["objective"] == "val_f1_macro" and result["direction"] == "maximize"
    handle = result["experiment"]
    assert (handle["name"], handle["namespace"], handle["algorithm"]) == (request.name, "team-a", "random")
    assert (handle["condition"], handle["reason"], handle["message"]) == (
        "Succeeded", "ExperimentMaxTrialsReached", "Experiment has succeeded because max trial count has reached")
    assert handle["trial_counts"] == {"total": 6, "succeeded": 4, "failed": 1, "running": 0, "pending": 0,
                                      "killed": 0, "early_stopped": 0, "metrics_unavailable": 1}
    assert 0.1 <= handle["duration_seconds"] <= elapsed  # create to the third poll, two poll intervals between
    # every Trial, oldest first: its latest scores, or none where it failed or printed none ("unavailable")
    assert [(t["name"].rsplit("-", 1)[1], t["condition"], t["score"]) for t in result["trials"]] == [
        ("5w2rk8tq", "Succeeded", 0.812317), ("b7xq4mzp", "Succeeded", 0.861234), ("c9n2jv6d", "Failed", None),
        ("m6t1pq7e", "MetricsUnavailable", None), ("h3s8kd1w", "Succeeded", 0.790412),
        ("x8v5ne2c", "Succeeded", 0.84875),
    ]  # fmt: skip
    failed = result["trials"][2]
    assert failed["params"] == {"learning_rate": 3.518733260342616e-05, "per_device_train_batch_size": 32,
                                "warmup_ratio": 0.18811467125449744, "weight_decay": 0.0092651174591628}
    assert (failed["reason"], failed["message"]) == ("TrialFailed. Job reason: BackoffLimitExceeded",
                                                     "Trial has failed. Job message: Job has reached the specified "
                                                     "backoff limit")  # fmt: skip
    assert result["trials"][3]["metrics"] == {"val_loss": None, "val_f1_macro": None, "val_accuracy": None}
    assert result["trials"][5]["metrics"] == {"val_accuracy": 0.85, "val_f1_macro": 0.84875, "val_loss": 0.372241}
    # the trials were listed by the Experiment's label, before the Experiment was deleted
    (listing,) = server.calls("GET", "/trials")
    assert listing.query["labelSelector"] == [f"katib.kubeflow.org/experiment={request.name}"]
    assert server.requests[-1].method == "DELETE"
    assert server.requests[-1].path.endswith("/namespaces/team-a/experiments/kftune-tune-test0001")
    assert not server.experiments
    # progress: each condition once, the counts and the best trial as they change
    name = "Experiment kftune-tune-test0001"
    assert [line for line in lines if line.startswith(name)] == [
        f"{name}: Created=True (ExperimentCreated): Experiment is created",
        f"{name}: Running=True (ExperimentRunning): Experiment is running",
        f"{name}: 2/6 trials succeeded, 2 running; {BEST_LINE}",
        f"{name}: Running=False (ExperimentRunning): Experiment is running",
        f"{name}: Succeeded=True (ExperimentMaxTrialsReached): Experiment has succeeded because max trial count has "
        "reached",
        f"{name}: 4/6 trials succeeded, 1 failed, 1 metrics unavailable; {BEST_LINE}",
    ]
    assert lines[-1] == "Katib Experiment team-a/kftune-tune-test0001 deleted"


def test_grid_search_sends_every_grid_point(kube):
    space = parse_space({"learning_rate": {"low": 1e-5, "high": 1e-4, "log": True, "grid": 3},
                         "per_device_train_batch_size": [16, 32]})  # fmt: skip
    server, api_client = kube()
    run_experiment(make_request(algorithm="grid", space=space, max_trials=6), api_client, **QUIET, **FAST)
    spec = server.calls("POST", "/experiments")[0].body["spec"]
    assert spec["algorithm"] == {"algorithmName": "grid"}  # Katib's grid service takes no seed
    assert spec["maxTrialCount"] == 6  # the 3 x 2 combinations
    assert spec["parameters"] == [
        {"name": "learning_rate", "parameterType": "categorical",
         "feasibleSpace": {"list": ["1e-05", "3.16228e-05", "0.0001"]}},  # 3 points, log-spaced
        {"name": "per_device_train_batch_size", "parameterType": "categorical",
         "feasibleSpace": {"list": ["16", "32"]}},
    ]  # fmt: skip


def test_loss_is_minimized_and_read_from_katibs_status(kube):
    server, api_client = kube(statuses=[recorded("katib/loss-succeeded.status.json")], trial_list=NO_TRIALS)
    result = run_experiment(make_request(metric="loss"), api_client, **QUIET, **FAST)
    objective = server.calls("POST", "/experiments")[0].body["spec"]["objective"]
    assert (objective["type"], objective["objectiveMetricName"]) == ("minimize", "val_loss")
    assert objective["additionalMetricNames"] == ["val_f1_macro", "val_accuracy"]
    assert result["objective"] == "val_loss" and result["direction"] == "minimize"
    assert result["best_trial"] == "kftune-tune-test0001-q4w8zd2n"
    assert result["best_score"] == 0.338904  # val_loss, not the first metric listed (val_f1_macro)
    assert result["best_metrics"] == {"val_f1_macro": 0.857004, "val_loss": 0.338904, "val_accuracy": 0.86}
    assert result["best_params"] == {"learning_rate": 0.00014713048321905916, "per_device_train_batch_size": 16,
                                     "warmup_ratio": 0.05581316302781455, "weight_decay": 0.0340612795913279}


def test_run_experiment_failure_raises_the_reason_message_and_failed_trials(kube):
    server, api_client = kube(statuses=[recorded("katib/random-failed.status.json")],
                              trial_list=recorded("katib/random-failed.trials.json"))
    with pytest.raises(KftuneError) as info:
        run_experiment(make_request(), api_client, **QUIET, **FAST)
    assert re.fullmatch(
        r"Katib Experiment team-a/kftune-tune-test0001 failed after \d+ s: ExperimentFailed: Experiment has failed "
        r"because max failed count has reached \(2 of 3 trials failed, max_failed_trials=2\); "
        r"trial kftune-tune-test0001-g5p9mt3x: Failed: TrialFailed\. Job reason: DeadlineExceeded: Trial has failed\. "
        r"Job message: Job was active longer than specified deadline; "
        r"trial kftune-tune-test0001-r8z3hn6v: Failed: TrialFailed\. Job reason: BackoffLimitExceeded: Trial has "
        r"failed\. Job message: Job has reached the specified backoff limit",
        str(info.value),
    ), str(info.value)
    assert len(server.calls("DELETE", "/experiments/kftune-tune-test0001")) == 1
    assert not server.experiments


def test_run_experiment_without_an_optimal_trial_raises(kube):
    """Trials that print no metrics end as MetricsUnavailable; Katib then finishes the Experiment with an empty
    currentOptimalTrial."""
    server, api_client = kube(statuses=[recorded("katib/no-metrics.status.json")],
                              trial_list=recorded("katib/no-metrics.trials.json"))
    with pytest.raises(KftuneError) as info:
        run_experiment(make_request(), api_client, **QUIET, **FAST)
    unavailable = ("MetricsUnavailable: MetricsUnavailable. Job reason: CompletionsReached: Metrics are not "
                   "available. Job message: Reached expected number of succeeded pods")
    assert str(info.value) == (
        "Katib Experiment team-a/kftune-tune-test0001 finished (ExperimentMaxTrialsReached) but no trial reported "
        "val_f1_macro: 0 succeeded, 0 failed, 6 without metrics (each trial must print 'val_f1_macro=<value>' on "
        f"stdout); trial kftune-tune-test0001-a1b2c3d4: {unavailable}; trial kftune-tune-test0001-e5f6g7h8: "
        f"{unavailable}; trial kftune-tune-test0001-j9k1m2n3: {unavailable} (and 3 more)"
    )
    assert len(server.calls("DELETE")) == 1


def test_run_experiment_timeout_deletes_it(kube):
    server, api_client = kube(outcome=None)
    with pytest.raises(KftuneError, match=r"timed out after 0\.2 s without finishing \(last state: Running"):
        run_experiment(make_request(), api_client, **QUIET, poll_seconds=0.01, timeout_seconds=0.2)
    assert len(server.calls("DELETE")) == 1
    assert not server.experiments


def test_run_experiment_rides_out_api_errors(kube):
    server, api_client = kube(statuses=[RUNNING, RUNNING, RUNNING, SUCCEEDED], trial_list=TRIALS,
                              failing_polls={1, 2}, failing_trial_lists=2)
    lines: list[str] = []
    result = run_experiment(make_request(), api_client, log=lines.append, **FAST)
    assert result["experiment"]["condition"] == "Succeeded" and result["best_params"] == BEST_PARAMS
    assert [t["name"] for t in result["trials"]] == [t["metadata"]["name"] for t in TRIALS["items"]]
    assert len(server.calls("GET", "/experiments/")) == 4
    assert sum("HTTP 500" in line and "retrying" in line for line in lines) == 2
    assert len(server.calls("GET", "/trials")) == 3
    assert len(server.calls("DELETE")) == 1


def test_run_experiment_gives_up_when_the_api_server_keeps_failing(kube):
    server, api_client = kube(outcome=None, failing_polls=set(range(1, 100)))
    with pytest.raises(KftuneError, match="HTTP 500.*etcdserver: request timed out"):
        run_experiment(make_request(), api_client, **QUIET, **FAST)
    assert len(server.calls("GET", "/experiments/")) == kube_helpers.MAX_API_ERRORS + 1
    assert len(server.calls("DELETE")) == 1


def test_a_trial_list_that_keeps_failing_only_warns(kube):
    server, api_client = kube(statuses=[SUCCEEDED], trial_list=TRIALS, failing_trial_lists=100)
    lines: list[str] = []
    result = run_experiment(make_request(), api_client, log=lines.append, **FAST)
    assert result["trials"] == [] and result["best_params"] == BEST_PARAMS and result["best_score"] == 0.861234
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert warning.startswith("warning: cannot list the trials of Experiment kftune-tune-test0001 (")
    assert "etcdserver: leader changed" in warning


@pytest.mark.parametrize(
    "scenario, message",
    [
        ({"create_error": 409}, "an Experiment of that name already exists.*kubectl delete experiment -n team-a"),
        ({"create_error": 403}, "not allowed; .* experiments.kubeflow.org .*is forbidden"),
        ({"crd_missing": True}, r"Katib is not installed \(no experiments.kubeflow.org CRD"),
        ({"create_error": 400}, "rejected by Katib's validation: .*denied the request"),
    ],
)
def test_a_refused_create_is_explained_and_nothing_is_deleted(kube, scenario, message):
    server, api_client = kube(**scenario)
    with pytest.raises(KftuneError, match=message):
        run_experiment(make_request(), api_client, **QUIET, **FAST)
    assert not server.calls("DELETE") and not server.calls("GET")


def test_run_experiment_deletes_it_on_keyboard_interrupt(kube):
    server, api_client = kube(outcome=None)

    def interrupt_on_progress(line: str) -> None:
        if line.startswith("Experiment "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(make_request(), api_client, log=interrupt_on_progress, **FAST)
    assert len(server.calls("DELETE")) == 1
    assert not server.experiments


def test_run_experiment_deletes_it_on_sigterm(kube):
    server, api_client = kube(outcome=None)
    before = signal.getsignal(signal.SIGTERM)

    def cancel_the_run(line: str) -> None:
        if line.startswith("Experiment "):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KftuneError, match="stopped by SIGTERM while Katib Experiment team-a/kftune-tune-test0001"):
        run_experiment(make_request(), api_client, log=cancel_the_run, **FAST)
    assert len(server.calls("DELETE")) == 1
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_experiment_can_keep_the_experiment(kube):
    server, api_client = kube()
    lines: list[str] = []
    run_experiment(make_request(), api_client, log=lines.append, delete=False, **FAST)
    assert not server.calls("DELETE") and server.experiments
    assert any("kubectl delete experiment -n team-a kftune-tune-test0001" in line for line in lines)


# --- the whole launch ---------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path) -> Path:
    path = tmp_path / "dataset"
    path.mkdir()
    (path / "data.txt").write_text("tokenized")
    return path


def launch(dataset, shared, api_client, config=None, search=None, resources=None, **overrides):
    """launch_katib with the settings these tests share: a random search of 4 trials, 2 at a time, of CPU pods."""
    search = SearchConfig(**{"algorithm": "random", "max_trials": 4, "parallel_trials": 2, "max_failed_trials": 1,
                             **(search or {})})
    resources = TrainResources(**{"gpus": "0", "shared_pvc": "kftune-shared", **(resources or {})})
    values = dict(image="kftune-train:dev", mount_path=shared, namespace="team-a", api_client=api_client,
                  poll_seconds=0.01, log=lambda line: None)  # fmt: skip
    values.update(overrides)
    return launch_katib(TrainConfig(**(config or {})), dataset, SPACE, search, resources, **values)


def test_launch_katib_stages_the_inputs_on_the_shared_volume(kube, tmp_path, dataset, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    (pretrained / "config.json").write_text("{}")
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("kubeflow-user\n")
    monkeypatch.setattr(kube_helpers, "SERVICE_ACCOUNT_NAMESPACE", namespace_file)
    staged: list[dict] = []

    def score_after_checking_the_volume(assignments: dict[str, str]) -> float:
        """The fake controller plans the trials at create time: the run directory is there by then."""
        (run_dir,) = (shared / trainjob.RUNS_DIR).iterdir()
        staged.append(json.loads((run_dir / trainjob.CONFIG_FILE).read_text()))
        assert (run_dir / "dataset" / "data.txt").read_text() == "tokenized"
        assert (run_dir / "pretrained" / "config.json").is_file() and (run_dir / "trials").is_dir()
        return lr_score(assignments)

    server, api_client = kube(score=score_after_checking_the_volume)
    result = launch(
        dataset, shared, api_client, namespace=None, search=dict(algorithm="tpe"), resources=dict(gpus="1"),
        config=dict(model=str(pretrained), seed=7, checkpoint_dir="/somewhere/else", metric_for_best_model="accuracy"),
    )  # fmt: skip

    assert result["objective"] == "val_accuracy" and result["direction"] == "maximize"
    (create,) = server.calls("POST")
    assert "/namespaces/kubeflow-user/" in create.path
    body = create.body
    name = body["metadata"]["name"]
    run_dir = shared / trainjob.RUNS_DIR / name
    command = pod_of(body)["spec"]["containers"][0]["command"]
    assert command[command.index("--config") + 1] == str(run_dir / trainjob.CONFIG_FILE)
    assert command[command.index("--dataset") + 1] == str(run_dir / "dataset")
    assert command[command.index("--output") + 1] == f"{run_dir}/trials/${{trialParameters.trialName}}"
    assert command[command.index("--metric") + 1] == "accuracy"
    assert body["spec"]["algorithm"] == {"algorithmName": "tpe",
                                         "algorithmSettings": [{"name": "random_state", "value": "7"}]}
    objective = body["spec"]["objective"]
    assert (objective["type"], objective["objectiveMetricName"]) == ("maximize", "val_accuracy")
    assert objective["additionalMetricNames"] == ["val_f1_macro", "val_loss"]
    # tpe: the log range stays log-uniform, the linear ones uniform
    assert [(p["name"], p["parameterType"], p["feasibleSpace"].get("distribution"))
            for p in body["spec"]["parameters"]] == [
        ("learning_rate", "double", "logUniform"), ("per_device_train_batch_size", "categorical", None),
        ("warmup_ratio", "double", "uniform"), ("weight_decay", "double", "uniform")]  # fmt: skip
    pod = pod_of(body)["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "kftune-shared"}
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == str(shared)
    assert body["spec"]["trialTemplate"]["trialSpec"]["spec"]["activeDeadlineSeconds"] == katib.DEFAULT_TIMEOUT_SECONDS
    # the staged config: the local model copied, no shared checkpoint directory, the searched metric
    config = staged[0]
    assert config["model"] == str(run_dir / "pretrained")
    assert config["checkpoint_dir"] == "" and config["metric_for_best_model"] == "accuracy"
    assert len(server.calls("DELETE")) == 1
    assert list((shared / trainjob.RUNS_DIR).iterdir()) == []  # removed after success


def test_launch_katib_can_keep_the_run_directory(kube, tmp_path, dataset):
    shared = tmp_path / "shared"
    shared.mkdir()
    server, api_client = kube()
    result = launch(dataset, shared, api_client, keep_run_dir=True)
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == shared / trainjob.RUNS_DIR and (run_dir / "dataset" / "data.txt").is_file()


def test_launch_katib_keeps_the_run_directory_of_a_failed_experiment(kube, tmp_path, dataset):
    shared = tmp_path / "shared"
    shared.mkdir()
    server, api_client = kube(outcome="Failed", reason="ExperimentMaxFailedTrialsReached", message="too many failed")
    with pytest.raises(KftuneError, match="ExperimentMaxFailedTrialsReached: too many failed.*kept in") as info:
        launch(dataset, shared, api_client)
    (run_dir,) = (shared / trainjob.RUNS_DIR).iterdir()
    assert str(run_dir) in str(info.value)
    assert (run_dir / trainjob.CONFIG_FILE).is_file() and (run_dir / "dataset" / "data.txt").is_file()
    assert len(server.calls("DELETE")) == 1


def test_launch_katib_checks_before_staging(tmp_path, dataset):
    shared = tmp_path / "shared"
    shared.mkdir()
    with pytest.raises(ConfigError, match="mount_path .* is not a directory: the PVC 'kftune-shared' must be mounted"):
        launch(dataset, tmp_path / "not-mounted", None)
    with pytest.raises(ConfigError, match="parallel_trials"):
        launch(dataset, shared, None, search=dict(parallel_trials=9))
    lora_space = parse_space({"lora_r": [4, 8]}, training_mode="lora")
    with pytest.raises(ConfigError, match="lora_r is searched but training_mode is 'full'"):
        launch_katib(TrainConfig(), dataset, lora_space, SearchConfig(), TrainResources(), image="x", mount_path=shared)
    assert not (shared / trainjob.RUNS_DIR).exists()


def test_katib_search_component_hands_its_settings_to_the_launcher(kube, tmp_path, dataset, monkeypatch):
    """The katib_search component's own body, outside KFP: its run parameters become the SearchConfig and the
    TrainResources launch_katib takes (kube config from KUBECONFIG)."""
    from dataclasses import asdict

    from kubernetes.config import kube_config

    from kftune.components.tune.component import katib_search

    monkeypatch.setattr(katib, "new_job_name", lambda prefix: "kftune-tune-test0001")  # the recorded run's name
    server, _ = kube(statuses=[SUCCEEDED], trial_list=TRIALS)  # finished on the first poll: no 15 s poll interval
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    shared = tmp_path / "shared"
    shared.mkdir()
    record = katib_search(dataset=type("Artifact", (), {"path": str(dataset)})(),
                          train_config=json.dumps(asdict(TrainConfig(task=DEFAULT_TASK))), image="kftune-tune:dev",
                          shared_dir=str(shared), namespace="team-a", search_backend="katib", algorithm="random",
                          max_trials=3, parallel_trials=3, max_failed_trials=1, gpus="0", train_cpu="2")
    best = json.loads(record)["best"]
    assert (best["name"], best["params"], best["score"]) == (BEST_TRIAL, BEST_PARAMS, 0.861234)
    spec = server.calls("POST")[0].body["spec"]
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (3, 3, 1)
    pod = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": TrainResources().train_memory}


# --- RBAC ---------------------------------------------------------------------------------------


def test_manifests_rbac_allows_every_call_the_katib_launcher_makes(kube):
    """manifests/base/rbac.yaml grants what run_experiment uses against the API."""
    import yaml

    rbac = Path(__file__).resolve().parents[1] / "manifests" / "base" / "rbac.yaml"
    role = next(doc for doc in yaml.safe_load_all(rbac.read_text()) if doc["kind"] == "Role")
    allowed = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}  # fmt: skip
    server, api_client = kube()
    run_experiment(make_request(), api_client, **QUIET, **FAST)
    verbs = {"POST": "create", "DELETE": "delete"}
    seen = set()
    for request in server.requests:
        parts = request.path.strip("/").split("/")  # /apis/<group>/<version>/namespaces/<ns>/<resource>[/<name>]
        assert parts[0] == "apis"
        group, rest = parts[1], parts[5:]
        verb = verbs.get(request.method) or ("get" if len(rest) > 1 else "list")
        seen.add((group, rest[0], verb))
        assert (group, rest[0], verb) in allowed, f"{request.method} {request.path} needs {verb} on {rest[0]}"
    assert seen == {("kubeflow.org", "experiments", v) for v in ("create", "get", "delete")} | {
        ("kubeflow.org", "trials", "list")
    }


def test_katib_result_becomes_the_search_record_and_report(kube):
    """What the katib_search component writes: the same record, table and plots as the other searches."""
    from kftune.components.tune.report import search_html, search_markdown
    from kftune.components.tune.search import record_from_katib

    server, api_client = kube(statuses=[SUCCEEDED], trial_list=TRIALS)
    outcome = run_experiment(make_request(algorithm="random"), api_client, **QUIET, **FAST)
    record = record_from_katib(outcome, "random", "f1_macro", "maximize")
    assert (record["algorithm"], record["metric"], record["direction"]) == ("katib random", "f1_macro", "maximize")
    assert (record["best"]["number"], record["best"]["name"]) == (1, BEST_TRIAL)
    assert (record["best"]["params"], record["best"]["score"]) == (BEST_PARAMS, 0.861234)
    # Failed and MetricsUnavailable are failed trials, with Katib's reason and message
    assert [(t["number"], t["state"], t["score"]) for t in record["trials"]] == [
        (0, "complete", 0.812317), (1, "complete", 0.861234), (2, "failed", None), (3, "failed", None),
        (4, "complete", 0.790412), (5, "complete", 0.84875)]  # fmt: skip
    assert record["trials"][2]["error"] == ("TrialFailed. Job reason: BackoffLimitExceeded: Trial has failed. "
                                            "Job message: Job has reached the specified backoff limit")
    assert record["trials"][3]["error"] == ("MetricsUnavailable. Job reason: CompletionsReached: Metrics are not "
                                            "available. Job message: Reached expected number of succeeded pods")
    assert "6 trials" in search_markdown(record)
    assert search_html(record).count("<tr>") == len(record["trials"]) + 1
