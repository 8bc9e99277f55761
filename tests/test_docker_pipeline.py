"""The built images, run by a real Docker engine: what each image is, and the finetune pipeline
on a small slice through ``kfp.local.DockerRunner`` with every step in its own stage image.

Needs a Docker engine and the images (`make images`; the names follow KFTUNE_REGISTRY /
KFTUNE_IMAGE_TAG, default ghcr.io/kftune and the package version). Without them (no engine
answering, or an image not built) these tests skip, saying why; with KFTUNE_REQUIRE_DOCKER=1 (CI,
which builds the images) they fail instead. Any other error (an engine that answers with an
error, a broken docker SDK) fails the tests: only a missing engine or image is a reason to skip.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

from kftune.cluster.images import STAGES, ImageScheme
from tests.tools import in_ci

pytestmark = pytest.mark.docker

IMAGE_UID = 1000  # the images' USER (images/base/Dockerfile)
PIPELINE_STAGES = ("preprocess", "train", "evaluate", "export", "publish")  # deploy needs a cluster


def unavailable(reason: str):
    """Skip for a missing engine, SDK or image; fail where they must be there (KFTUNE_REQUIRE_DOCKER=1, CI)."""
    if os.environ.get("KFTUNE_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{reason} (KFTUNE_REQUIRE_DOCKER=1 says this machine must have them)")
    if in_ci():
        pytest.fail(f"{reason}; CI=true, where a missing engine, SDK or image is a failure")
    pytest.skip(reason)


def no_engine_answers(exc: Exception) -> bool:
    """True if ``exc`` (from ``docker.from_env``) means that no engine answered at DOCKER_HOST.

    The SDK asks the engine for its API version first and wraps a failed connection (no socket,
    connection refused, no permission on the socket) in a DockerException whose cause is a
    ``requests`` ConnectionError. Anything else, e.g. an engine that answers with an error or a
    malformed DOCKER_HOST, is a real failure.
    """
    import requests

    return isinstance(exc.__cause__, requests.exceptions.ConnectionError)


@pytest.fixture(scope="module")
def docker_client():
    try:
        import docker
    except ImportError as exc:
        unavailable(f"the docker SDK is not installed (dev extra: {exc})")
    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        if not no_engine_answers(exc):
            raise
        unavailable(f"no Docker engine answers at {os.environ.get('DOCKER_HOST', 'the default socket')} ({exc})")
    assert client.ping()  # an engine that answered the version request must answer a ping
    yield client
    client.close()


@pytest.fixture(scope="module")
def images(docker_client) -> ImageScheme:
    import docker

    scheme = ImageScheme.from_env()
    missing = []
    for stage in STAGES:
        try:
            docker_client.images.get(scheme.image(stage))
        except docker.errors.ImageNotFound:
            missing.append(scheme.image(stage))
    if missing:
        unavailable(f"images not built (make images): {', '.join(missing)}")
    return scheme


def run_in(client, image: str, script: str, **kwargs) -> str:
    """Run ``sh -c script`` in ``image`` (as its own user; by default with no network) and return its output."""
    kwargs.setdefault("network_mode", "none")
    out = client.containers.run(image, entrypoint=["sh", "-c"], command=[script], remove=True,
                                stdout=True, stderr=True, **kwargs)
    return out.decode()


@pytest.mark.parametrize("stage", STAGES)
def test_stage_image_runs_as_its_non_root_user_without_build_inputs(docker_client, images, stage):
    image = images.image(stage)
    assert docker_client.images.get(image).attrs["Config"]["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    out = run_in(docker_client, image, "id -u; find /run/secrets /run/wheelhouse -mindepth 1 2>/dev/null; "
                 "ls -d /etc/pip.conf 2>/dev/null; env | grep -E '^PIP_(CERT|CONFIG_FILE|INDEX_URL|EXTRA|FIND)'; "
                 "python -c 'import kftune; print(kftune.__file__)'")
    lines = out.split()
    assert lines[0] == str(IMAGE_UID)
    # the build's secrets, pip settings and wheels were mounts: nothing of them is left in the image
    assert lines[1:] == ["/opt/venv/lib/python3.11/site-packages/kftune/__init__.py"], out
    # the venv belongs to root: the runtime user cannot change what the image runs
    assert "denied" in run_in(docker_client, image, "touch /opt/venv/x 2>&1 || true")


@pytest.mark.parametrize("stage", STAGES)
def test_stage_image_imports_every_module_of_its_stage(docker_client, images, stage):
    """The image carries what its stage's code imports (e.g. kserve for serve and deploy)."""
    script = ("python -W ignore -c 'import importlib, pkgutil, sys; p = importlib.import_module(sys.argv[1]); "
              "names = [m.name for m in pkgutil.iter_modules(p.__path__, p.__name__ + \".\")]; "
              "[importlib.import_module(n) for n in names]; print(len(names))' kftune.components." + stage)
    out = run_in(docker_client, images.image(stage), script)
    assert int(out.split()[-1]) >= 1, out


def test_preprocess_image_reads_the_bundled_regression_data_without_a_network(docker_client, images):
    """vaderSentiment's source distribution is in the image (put there at build time), so the regression default
    needs no PyPI access in a pod."""
    out = run_in(docker_client, images.image("preprocess"),
                 "KFTUNE_CACHE=/tmp/cache python -W ignore -c 'from kftune.data.labelled import "
                 "read_bundled_regression; print(len(read_bundled_regression()))'")
    assert int(out.split()[-1]) > 7000, out


def test_train_image_runs_torchrun_across_processes(docker_client, images):
    """Two torchrun workers all-reduce over gloo in the train image (NCCL takes over on GPUs).

    On Docker's default network, as in a pod: torchrun --standalone hands the workers the
    container's hostname, which only resolves where the container has a network.
    """
    code = ("import torch, torch.distributed as dist; dist.init_process_group('gloo'); "
            "t = torch.tensor([dist.get_rank() + 1.0]); dist.all_reduce(t); "
            "print(f'rank {dist.get_rank()} sum {t.item():.0f} cuda {torch.version.cuda}'); "
            "dist.destroy_process_group()")
    out = run_in(docker_client, images.image("train"), "timeout 120 torchrun --standalone --nproc_per_node=2 "
                 f'--no-python python -W ignore -c "{code}"', network_mode="bridge")
    assert "rank 0 sum 3" in out and "rank 1 sum 3" in out, out


def test_serve_image_runs_kftune_serve(docker_client, images):
    image = images.image("serve")
    assert docker_client.images.get(image).attrs["Config"]["Entrypoint"] == ["kftune", "serve"]
    out = docker_client.containers.run(image, command=["--help"], remove=True, network_mode="none").decode()
    assert "usage: kftune serve" in out
    script = "python -c 'import importlib.metadata as m; print(m.version(\"kserve\"))'"
    assert run_in(docker_client, image, script).strip() == "0.21.0"


@pytest.mark.slow
def test_finetune_pipeline_runs_each_step_in_its_stage_image(docker_client, images, tmp_path, small_frame,
                                                             tiny_model, capsys):
    from kfp import local

    from kftune.pipelines.finetune import build_finetune_pipeline
    from kftune.pipelines.local import local_cluster

    # DockerRunner bind-mounts the pipeline root at the same path in every container, so the
    # inputs go in there too; the steps run as the images' user, who must be able to write the
    # root and read the inputs.
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o777)
    data = root / "reviews.csv"
    small_frame.to_csv(data, index=False)
    model = shutil.copytree(tiny_model, root / "tiny-model")
    for path in model.iterdir():  # save_pretrained writes model.safetensors owner-only (0600)
        path.chmod(0o644)
    published = root / "published"

    finetune = build_finetune_pipeline(images=images, **local_cluster())
    # /dev/shm as big as the train pod's; Docker's default network (torchrun needs the
    # container's hostname to resolve, as it does in a pod)
    local.init(runner=local.DockerRunner(shm_size="1g"), pipeline_root=str(root))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        run = finetune(data=str(data), model=str(model), num_train_epochs=2, learning_rate=1e-3,
                       per_device_train_batch_size=16, min_primary_score=0.0, publish_uri=str(published))

    log = capsys.readouterr().out
    for stage in PIPELINE_STAGES:
        assert f"Found image {images.image(stage)!r}" in log, f"{stage} did not run in its image"
    model_dir = Path(run.outputs["model"].path)
    onnx_dir = Path(run.outputs["exported_model"].path)
    assert (model_dir / "model.safetensors").is_file()
    assert (onnx_dir / "model.onnx").is_file()
    # written inside the containers, by the images' non-root user (not this process's)
    assert model_dir.stat().st_uid == IMAGE_UID and onnx_dir.stat().st_uid == IMAGE_UID
    evaluation = json.loads(run.outputs["evaluation"].metadata["result"])
    assert evaluation["test_size"] == 30
    assert 0 <= evaluation["model"]["accuracy"] <= 1
    assert run.outputs["passed"] is True
    # the gate passed (min_primary_score 0): publish ran in its image and wrote the ONNX model as v1
    assert (published / "v1" / "model.onnx").read_bytes() == (onnx_dir / "model.onnx").read_bytes()
