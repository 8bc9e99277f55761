"""The multi-node route: the TrainJob spec, following a job against a fake API server, and the
whole launch through a temporary directory standing in for the shared volume."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from pathlib import Path

import pytest
from kubeflow_trainer_api import models

from kftune.cluster import kube as kube_helpers
from kftune.cluster.kube import current_namespace
from kftune.cluster.resources import SHM_SIZE, TrainResources
from kftune.components.train import trainjob
from kftune.components.train.trainjob import (
    TrainJobRequest,
    build_trainjob,
    launch_multinode,
    run_trainjob,
    worker_command,
)
from kftune.errors import ConfigError, KftuneError
from kftune.pipelines.cluster import ClusterOptions
from kftune.training.config import Launch, TrainConfig
from kftune.training.loop import HISTORY_FILE
from tests.fake_kube_api import FakeKubeApiServer, Scenario

FAST = dict(poll_seconds=0.01, timeout_seconds=10)


def make_request(**overrides) -> TrainJobRequest:
    values = dict(
        name="kftune-train-test0001",
        namespace="team-a",
        image="ghcr.io/kftune/kftune-train:0.1.0",
        command=worker_command("/mnt/shared/run/train_config.json", "/mnt/shared/run/dataset", "/mnt/shared/run/model"),
        num_nodes=2,
        pvc_name="kftune-shared",
        mount_path="/mnt/shared",
    )
    values.update(overrides)
    return TrainJobRequest(**values)


@pytest.fixture
def kube():
    """Start a FakeKubeApiServer playing a Scenario; returns the server and a real API client."""
    with contextlib.ExitStack() as stack:

        def start(**scenario) -> tuple[FakeKubeApiServer, object]:
            server = stack.enter_context(FakeKubeApiServer(Scenario(**scenario)))
            api_client = server.api_client()
            stack.callback(api_client.close)
            return server, api_client

        yield start


# --- the worker command and the TrainJob spec ---------------------------------------------------


def test_worker_command_leaves_the_topology_to_the_torch_runtime():
    command = worker_command("/v/run/c.json", "/v/run/dataset", "/v/run/model", max_restarts=2)
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--max-restarts=2" in command
    assert command[command.index("-m", 3) + 1] == "kftune.training.loop"
    assert command[-6:] == ["--config", "/v/run/c.json", "--dataset", "/v/run/dataset", "--output", "/v/run/model"]
    # PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_* set these; an option would override them
    for option in ("--standalone", "--nnodes", "--nproc_per_node", "--nproc-per-node", "--node-rank", "--master-addr"):
        assert not any(part.startswith(option) for part in command)


def test_build_trainjob_spec():
    request = make_request(
        num_nodes=3,
        gpus_per_node=4,
        cpu="16",
        memory="64Gi",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        env={"NCCL_DEBUG": "INFO"},
        active_deadline_seconds=3600,
    )
    job = build_trainjob(request)
    assert isinstance(job, models.TrainerV1alpha1TrainJob)
    doc = job.to_dict()

    assert doc["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and doc["kind"] == "TrainJob"
    assert doc["metadata"]["name"] == "kftune-train-test0001" and doc["metadata"]["namespace"] == "team-a"
    assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kftune"
    spec = doc["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"}
    assert spec["activeDeadlineSeconds"] == 3600
    trainer = spec["trainer"]
    assert trainer["image"] == "ghcr.io/kftune/kftune-train:0.1.0"
    assert trainer["command"] == request.command
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 4
    resources = {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"}
    assert trainer["resourcesPerNode"] == {"limits": resources, "requests": resources}
    assert trainer["env"] == [{"name": "NCCL_DEBUG", "value": "INFO"}]

    (patch,) = spec["runtimePatches"]
    (node_job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node_job["name"] == "node"
    pod = node_job["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kftune"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["kftune-shared"]["persistentVolumeClaim"] == {"claimName": "kftune-shared"}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "node"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"kftune-shared": "/mnt/shared", "dshm": "/dev/shm"}
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

    # the SDK's own models read the JSON document back unchanged (nothing dropped, nothing invalid)
    sent = json.loads(json.dumps(doc))
    assert models.TrainerV1alpha1TrainJob.from_dict(sent).to_dict() == doc


def test_build_trainjob_on_cpu_nodes():
    doc = build_trainjob(make_request(gpus_per_node=0, shm_size=None)).to_dict()
    trainer = doc["spec"]["trainer"]
    assert trainer["numProcPerNode"] == 1  # not the runtime's "auto": that starts one process per CPU
    assert "resourcesPerNode" not in trainer and "env" not in trainer
    pod_spec = doc["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod_spec = pod_spec["template"]["spec"]["template"]["spec"]
    assert [v["name"] for v in pod_spec["volumes"]] == ["kftune-shared"]
    assert "nodeSelector" not in pod_spec and "tolerations" not in pod_spec


def test_generated_names_are_fresh_dns_labels():
    names = {make_request(name=trainjob.new_job_name()).name for _ in range(20)}
    assert len(names) == 20
    assert all(name.startswith("kftune-train-") and kube_helpers.DNS_LABEL.match(name) for name in names)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_nodes", 0, "num_nodes must be >= 1"),
        ("gpus_per_node", -1, "gpus_per_node must be >= 0"),
        ("num_nodes", "2", "num_nodes must be an integer"),
        ("procs_per_node", 8, "procs_per_node=8 but each node has only 4 GPU"),
        ("name", "Train_Job", "name must be"),
        ("name", "1-starts-with-a-digit", "name must be"),
        ("name", "x" * 41, "name must be at most 40"),
        ("namespace", "Team A", "namespace must be a DNS-1123 label"),
        ("pvc_name", "", "pvc_name is required"),
        ("pvc_name", "Shared_PVC", "pvc_name must be a DNS-1123 subdomain"),
        ("mount_path", "relative/path", "mount_path must be an absolute path"),
        ("image", " ", "image is required"),
        ("command", [], "command must be a non-empty list"),
        ("cpu", "lots", "cpu must be a Kubernetes quantity"),
        ("memory", "0", "memory must be > 0"),
        ("tolerations", [{"key": 1}], "tolerations: invalid toleration"),
        ("env", {"PET_NNODES": "4"}, "env must not set PET_NNODES"),
        ("node_selector", {"gpu": True}, "node_selector must map strings to strings"),
    ],
)
def test_invalid_requests_are_rejected_naming_the_field(field, value, message):
    overrides = {field: value}
    if field == "procs_per_node":
        overrides["gpus_per_node"] = 4
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        make_request(**overrides)


# --- following a job ----------------------------------------------------------------------------


def test_run_trainjob_success_streams_status_and_logs_and_deletes_the_job(kube):
    server, api_client = kube(finish_on_poll=4)
    request = make_request()
    lines: list[str] = []

    handle = run_trainjob(request, api_client, log=lines.append, **FAST)

    assert handle["name"] == request.name and handle["namespace"] == "team-a"
    assert handle["status"] == "Complete" and handle["uid"] and handle["duration_seconds"] >= 0
    (create,) = server.calls("POST", "/trainjobs")
    assert create.path == "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs"
    assert create.body == build_trainjob(request).to_dict()
    # node 0's log, each line once and in order; the other node's log is not followed
    log_lines = [line for line in lines if line.startswith("[node-0]")]
    assert log_lines == ["[node-0] rank 0 starting", "[node-0] epoch 1 done", "[node-0] model written"]
    assert not any("another node" in line for line in lines)
    assert any("node-0 pod" in line and "is Running" in line for line in lines)
    assert any("Complete=True (JobSetCompleted)" in line for line in lines)
    # pods were looked up by JobSet's labels for node 0
    selector = server.calls("GET", "/pods")[0].query["labelSelector"][0]
    assert "jobset.sigs.k8s.io/jobset-name=kftune-train-test0001" in selector
    assert "batch.kubernetes.io/job-completion-index=0" in selector
    assert server.requests[-1].method == "DELETE"
    assert server.requests[-1].path.endswith("/namespaces/team-a/trainjobs/kftune-train-test0001")
    assert not server.jobs


def test_run_trainjob_logs_to_the_module_logger_by_default(kube, caplog):
    server, api_client = kube()
    with caplog.at_level(logging.INFO, logger="kftune.components.train.trainjob"):
        run_trainjob(make_request(), api_client, **FAST)
    assert "[node-0] model written" in caplog.messages
    assert "TrainJob team-a/kftune-train-test0001 deleted" in caplog.messages


def test_run_trainjob_failure_raises_the_jobs_reason_and_message(kube):
    server, api_client = kube(
        outcome="Failed",
        finish_on_poll=2,
        reason="BackoffLimitExceeded",
        message="Job has reached the specified backoff limit",
        node0_log=["Traceback (most recent call last):", "RuntimeError: NCCL error"],
    )
    lines: list[str] = []
    with pytest.raises(KftuneError, match="BackoffLimitExceeded: Job has reached the specified backoff limit"):
        run_trainjob(make_request(), api_client, log=lines.append, **FAST)
    assert "[node-0] RuntimeError: NCCL error" in lines  # the log up to the failure was shown
    assert len(server.calls("DELETE", "/trainjobs/kftune-train-test0001")) == 1
    assert not server.jobs


def test_run_trainjob_timeout_deletes_the_job(kube):
    server, api_client = kube(outcome=None)
    with pytest.raises(KftuneError, match=r"timed out after 0\.2 s"):
        run_trainjob(make_request(), api_client, log=lambda line: None, poll_seconds=0.01, timeout_seconds=0.2)
    assert len(server.calls("DELETE")) == 1
    assert not server.jobs


def test_run_trainjob_deletes_the_job_on_keyboard_interrupt(kube):
    server, api_client = kube(outcome=None)

    def interrupt_on_first_log_line(line: str) -> None:
        if line.startswith("[node-0]"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trainjob(make_request(), api_client, log=interrupt_on_first_log_line, **FAST)
    assert len(server.calls("DELETE")) == 1
    assert not server.jobs


def test_run_trainjob_deletes_the_job_on_sigterm(kube):
    server, api_client = kube(outcome=None)
    before = signal.getsignal(signal.SIGTERM)

    def cancel_the_run(line: str) -> None:
        if line.startswith("[node-0]"):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KftuneError, match="stopped by SIGTERM"):
        run_trainjob(make_request(), api_client, log=cancel_the_run, **FAST)
    assert len(server.calls("DELETE")) == 1
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_trainjob_gives_up_when_the_api_server_keeps_failing(kube):
    server, api_client = kube(outcome=None, failing_polls=set(range(1, 100)))
    with pytest.raises(KftuneError, match="HTTP 500.*etcdserver: request timed out"):
        run_trainjob(make_request(), api_client, log=lambda line: None, **FAST)
    assert len(server.calls("GET", "/trainjobs/")) == kube_helpers.MAX_API_ERRORS + 1
    assert len(server.calls("DELETE")) == 1


def test_run_trainjob_rides_out_a_transient_api_error(kube):
    server, api_client = kube(finish_on_poll=3, failing_polls={1})
    lines: list[str] = []
    assert run_trainjob(make_request(), api_client, log=lines.append, **FAST)["status"] == "Complete"
    assert any("HTTP 500" in line and "retrying" in line for line in lines)
    assert len(server.calls("DELETE")) == 1


def test_run_trainjob_reports_a_rejected_create_and_deletes_nothing(kube):
    server, api_client = kube(create_error=403)
    with pytest.raises(KftuneError, match="not allowed.*trainjobs is forbidden"):
        run_trainjob(make_request(), api_client, log=lambda line: None, **FAST)
    assert not server.calls("DELETE") and not server.calls("GET")


# --- the whole launch ---------------------------------------------------------------------------


def write_model_as_rank0(job: dict) -> None:
    """What rank 0 leaves on the shared volume: the model directory with its training history."""
    command = job["spec"]["trainer"]["command"]
    config_file = Path(command[command.index("--config") + 1])
    dataset_dir = Path(command[command.index("--dataset") + 1])
    output = Path(command[command.index("--output") + 1])
    config = json.loads(config_file.read_text())
    assert (dataset_dir / "data.txt").read_text() == "tokenized"
    assert Path(config["checkpoint_dir"]) == output.with_name("model.checkpoints")
    output.mkdir()
    (output / "config.json").write_text("{}")
    (output / HISTORY_FILE).write_text(json.dumps({"best_epoch": 2, "world_size": 4, "model": config["model"]}))


@pytest.fixture
def dataset(tmp_path) -> Path:
    path = tmp_path / "dataset"
    path.mkdir()
    (path / "data.txt").write_text("tokenized")
    return path


def test_launch_multinode_end_to_end(kube, tmp_path, dataset, monkeypatch):
    server, api_client = kube(on_finish=write_model_as_rank0)
    shared = tmp_path / "shared"
    shared.mkdir()
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    (pretrained / "config.json").write_text("{}")
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("kubeflow-user\n")
    monkeypatch.setattr(kube_helpers, "SERVICE_ACCOUNT_NAMESPACE", namespace_file)

    result = launch_multinode(
        TrainConfig(model=str(pretrained)),
        dataset,
        tmp_path / "out" / "model",
        Launch(num_nodes=2, gpus_per_node=1, max_restarts=3),
        TrainResources(shared_pvc="kftune-shared"),
        image="ghcr.io/kftune/kftune-train:0.1.0",
        mount_path=shared,
        api_client=api_client,
        log=lambda line: None,
        poll_seconds=0.01,
    )

    history = result["history"]
    assert history["best_epoch"] == 2 and history["world_size"] == 4
    # the local pretrained model was copied onto the shared volume for the workers
    assert Path(history["model"]).parent.parent == shared / trainjob.RUNS_DIR
    assert result["trainjob"]["status"] == "Complete" and result["trainjob"]["namespace"] == "kubeflow-user"
    output = tmp_path / "out" / "model"
    assert (output / "config.json").is_file() and (output / HISTORY_FILE).is_file()
    body = server.calls("POST")[0].body
    assert "/namespaces/kubeflow-user/" in server.calls("POST")[0].path
    assert "--max-restarts=3" in body["spec"]["trainer"]["command"]
    assert body["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    assert len(server.calls("DELETE")) == 1
    assert list((shared / trainjob.RUNS_DIR).iterdir()) == []  # the run directory is removed after success


def test_request_defaults_and_ranges_are_the_launch_settings():
    request = TrainJobRequest(image="kftune-train:dev", command=["python"], pvc_name="kftune-shared", mount_path="/v")
    launch = Launch()
    assert (request.num_nodes, request.gpus_per_node, request.procs_per_node) == (
        launch.num_nodes, launch.gpus_per_node, launch.nproc_per_node)
    assert request.shm_size == SHM_SIZE == ClusterOptions().shm_size  # one /dev/shm size for every training pod
    with pytest.raises(ConfigError, match="^procs_per_node must be >= 0, got -1$"):
        make_request(procs_per_node=-1)


def test_launch_multinode_takes_the_launch_and_resources_settings(kube, tmp_path, dataset):
    server, api_client = kube(on_finish=write_model_as_rank0)
    shared = tmp_path / "shared"
    shared.mkdir()
    selector = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    launch = Launch(num_nodes=3, gpus_per_node=2, nproc_per_node=1, max_restarts=1)
    resources = TrainResources(train_cpu="8", train_memory="32Gi", node_selector=selector, tolerations=tolerations,
                               shared_pvc="team-shared")
    launch_multinode(TrainConfig(), dataset, tmp_path / "out", launch, resources, image="kftune-train:dev",
                     mount_path=shared, namespace="team-a", api_client=api_client, log=lambda line: None,
                     poll_seconds=0.01)
    body = server.calls("POST")[0].body
    trainer = body["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 1) and "--max-restarts=1" in trainer["command"]
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    pod = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = pod["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == selector and pod["tolerations"] == tolerations
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kftune-shared"]["persistentVolumeClaim"] == {"claimName": "team-shared"}
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == SHM_SIZE
    with pytest.raises(ConfigError, match="^num_nodes must be >= 1, got 0$"):  # checked before anything is staged
        launch_multinode(TrainConfig(), dataset, tmp_path / "out2", Launch(num_nodes=0), resources,
                         image="kftune-train:dev", mount_path=shared)


def launch_two_nodes(config, dataset, output, mount_path, api_client=None):
    """launch_multinode with the settings these tests share: 2 CPU nodes in team-a."""
    return launch_multinode(
        config, dataset, output, Launch(num_nodes=2, gpus_per_node=0), TrainResources(shared_pvc="kftune-shared"),
        image="kftune-train:dev", mount_path=mount_path, namespace="team-a", api_client=api_client,
        log=lambda line: None, poll_seconds=0.01,
    )


def test_launch_multinode_without_a_model_from_the_workers_raises(kube, tmp_path, dataset):
    server, api_client = kube()  # completes, but nothing writes the model
    shared = tmp_path / "shared"
    shared.mkdir()
    with pytest.raises(KftuneError, match="succeeded but wrote no model"):
        launch_two_nodes(TrainConfig(), dataset, tmp_path / "out", shared, api_client)
    assert not (tmp_path / "out").exists()
    assert len(server.calls("DELETE")) == 1


def test_launch_multinode_refuses_a_taken_output_directory_before_submitting(kube, tmp_path, dataset):
    server, api_client = kube()
    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"an earlier model")
    with pytest.raises(FileExistsError, match="refusing to overwrite existing artifact"):
        launch_two_nodes(TrainConfig(), dataset, tmp_path / "out", shared, api_client)
    assert server.calls("POST") == []
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"an earlier model"


def test_launch_multinode_keeps_the_run_directory_of_a_failed_job(kube, tmp_path, dataset):
    server, api_client = kube(outcome="Failed", reason="DeadlineExceeded", message="deadline")
    shared = tmp_path / "shared"
    shared.mkdir()
    with pytest.raises(KftuneError, match="DeadlineExceeded.*kept in") as info:
        launch_two_nodes(TrainConfig(), dataset, tmp_path / "out", shared, api_client)
    (run_dir,) = (shared / trainjob.RUNS_DIR).iterdir()
    assert str(run_dir) in str(info.value)
    assert (run_dir / trainjob.CONFIG_FILE).is_file() and (run_dir / "dataset" / "data.txt").is_file()


def test_launch_multinode_rejects_checkpoints_off_the_shared_volume(tmp_path, dataset):
    shared = tmp_path / "shared"
    shared.mkdir()
    config = TrainConfig(checkpoint_dir=str(tmp_path / "local-checkpoints"))
    with pytest.raises(ConfigError, match="checkpoint_dir .* must be on the shared volume"):
        launch_two_nodes(config, dataset, tmp_path / "out", shared)
    assert not (shared / trainjob.RUNS_DIR).exists()


def test_launch_multinode_needs_the_shared_volume_mounted_here(tmp_path, dataset):
    with pytest.raises(ConfigError, match="mount_path .* is not a directory: the PVC 'kftune-shared' must be mounted"):
        launch_two_nodes(TrainConfig(), dataset, tmp_path / "out", tmp_path / "not-mounted")


def test_current_namespace(tmp_path, monkeypatch):
    monkeypatch.setattr(kube_helpers, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
    assert current_namespace() == "default"
    (tmp_path / "namespace").write_text("team-b\n")
    monkeypatch.setattr(kube_helpers, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    assert current_namespace() == "team-b"



def test_manifests_rbac_allows_every_call_the_launcher_makes(kube):
    """manifests/base/rbac.yaml grants exactly what run_trainjob uses against the API."""
    import yaml

    rbac = Path(__file__).resolve().parents[1] / "manifests" / "base" / "rbac.yaml"
    role = next(doc for doc in yaml.safe_load_all(rbac.read_text()) if doc["kind"] == "Role")
    allowed = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    server, api_client = kube(finish_on_poll=2)
    run_trainjob(make_request(), api_client, log=lambda line: None, **FAST)
    verbs = {"POST": "create", "DELETE": "delete"}
    for request in server.requests:
        parts = request.path.strip("/").split("/")
        if parts[0] == "apis":  # /apis/<group>/<version>/namespaces/<ns>/<resource>[/<name>]
            group, rest = parts[1], parts[5:]
        else:  # /api/v1/namespaces/<ns>/<resource>[/<name>[/<subresource>]]
            group, rest = "", parts[4:]
        resource = "/".join([rest[0], *rest[2:]])
        verb = verbs.get(request.method) or ("get" if len(rest) > 1 else "list")
        assert (group, resource, verb) in allowed, f"{request.method} {request.path} needs {verb} on {resource}"
