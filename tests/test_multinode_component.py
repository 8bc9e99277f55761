"""The train component's multi-node route under kfp.local: it submits a TrainJob to a fake
Kubernetes API server (no real one can run here), and the fake plays the torch runtime by
running the job's own worker command, so the real training loop runs from the spec.

(No ``from __future__ import annotations`` here: KFP reads the pipeline's annotations.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from kfp import dsl

from kftune.components.preprocess import component as preprocess_component
from kftune.components.train import component as train_component
from kftune.pipelines.local import run_pipeline_locally
from kftune.training.loop import HISTORY_FILE
from tests.fake_kube_api import FakeKubeApiServer, Scenario, write_kubeconfig


def run_command_as_torch_runtime(job: dict) -> None:
    """Play the torch runtime on one 2-process node: run the TrainJob's own command with the
    PET_* variables the runtime sets (the real loop trains; a wrong command fails here)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    trainer = job["spec"]["trainer"]
    # one node stands in for the job's numNodes: torchrun's rendezvous would wait for the others
    env = {**os.environ, "PET_NNODES": "1", "PET_NODE_RANK": "0",
           "PET_NPROC_PER_NODE": "2", "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable if part == "python" else part for part in trainer["command"]]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_train_component_submits_a_trainjob_for_two_nodes(tmp_path, small_csv, tiny_model, monkeypatch):
    server = FakeKubeApiServer(Scenario(on_finish=run_command_as_torch_runtime))
    with server:
        _run_multinode_pipeline(server, tmp_path, small_csv, tiny_model, monkeypatch)


def _run_multinode_pipeline(server, tmp_path, small_csv, tiny_model, monkeypatch):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    shared = tmp_path / "shared"
    shared.mkdir()
    preprocess_op, train_op = preprocess_component.component(), train_component.component()

    class Outputs(NamedTuple):
        model: dsl.Model
        handle: str

    @dsl.pipeline(name="multinode")
    def multinode(data: str, model: str, shared_dir: str) -> Outputs:
        prep = preprocess_op(data=data, model=model)
        trained = train_op(dataset=prep.outputs["dataset"], model=model, num_train_epochs=1,
                           learning_rate=1e-3, per_device_train_batch_size=16, num_nodes=2, gpus_per_node=0,
                           shared_dir=shared_dir, shared_pvc="kftune-shared", run_id="run-1",
                           trainjob_image="ghcr.io/kftune/kftune-train:0.1.0", train_cpu="2", train_memory="4Gi")
        return Outputs(model=trained.outputs["finetuned_model"], handle=trained.outputs["Output"])

    arguments = {"data": str(small_csv), "model": str(tiny_model), "shared_dir": str(shared)}
    task = run_pipeline_locally(multinode, arguments, tmp_path / "runs")
    model_dir = Path(task.outputs["model"].path)
    handle = json.loads(task.outputs["handle"])
    assert handle["status"] == "Complete" and handle["namespace"] == "default"
    history = json.loads((model_dir / HISTORY_FILE).read_text())
    assert history["world_size"] == 2 and (model_dir / "model.safetensors").is_file()
    (post,) = server.calls("POST")
    assert post.body["metadata"]["name"] == handle["name"]
    trainer = post.body["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["image"] == "ghcr.io/kftune/kftune-train:0.1.0"
    assert trainer["resourcesPerNode"]["limits"]["cpu"] == "2"
    assert len(server.calls("DELETE")) == 1
    # checkpoints of this pipeline run stay on the shared volume for a retry to resume from
    assert list((shared / "checkpoints" / "run-1").glob("checkpoint-*"))
