"""The run directory a training job on other pods (TrainJob nodes, Katib trials) trains from.

    run_dir/                     on the shared volume, one per job
        train_config.json        TrainConfig
        dataset/                 copy of the preprocessed dataset artifact (train and validation: the
                                 test split is its own artifact, never staged)
        pretrained/              copy of a pretrained model that is not on the volume
        model/                   written by rank 0 (atomically, with the training history)
        model.checkpoints/       checkpoints; a restarted worker resumes from them
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from kftune.data.bundled import resolve_model
from kftune.errors import ConfigError
from kftune.storage import is_remote
from kftune.training.config import TrainConfig

RUNS_DIR = "kftune-runs"
CONFIG_FILE = "train_config.json"


def check_mounted(mount_path: Path, pvc_name: str) -> None:
    """Refuse to stage anything when the shared volume is not mounted in this pod at ``mount_path``."""
    if not mount_path.is_dir():
        raise ConfigError(f"mount_path {mount_path} is not a directory: the PVC {pvc_name!r} must be mounted there")


def stage_run_dir(config: TrainConfig, dataset_dir: Path, run_dir: Path, mount_path: Path) -> TrainConfig:
    """Create ``run_dir`` on the shared volume with what the workers train from; return the config they read.

    The dataset goes to ``run_dir/dataset`` and the config to ``run_dir/train_config.json``; a
    pretrained model in a local directory off the volume is copied to ``run_dir/pretrained`` (and
    the config points there). So is one in ``s3://`` or ``gs://``, fetched first with this pod's
    storage credentials: the worker and trial pods get no Secret, and need none. A partly
    written ``run_dir`` is removed again.
    """
    run_dir.mkdir(parents=True)
    try:
        model = config.model
        if is_remote(model):
            model = resolve_model(model)  # into this pod's model cache, complete or not at all
        model = Path(model).expanduser()
        if model.is_dir() and not model.is_relative_to(mount_path):  # a local model: the workers need a copy
            shutil.copytree(model, run_dir / "pretrained")
            config = replace(config, model=str(run_dir / "pretrained"))
        shutil.copytree(dataset_dir, run_dir / "dataset")
        config.to_json(run_dir / CONFIG_FILE)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return config
