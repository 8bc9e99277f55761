"""Training checkpoints that survive preemption: written atomically, verified on load.

A checkpoint is a directory ``checkpoint-<step>`` holding ``state.pt`` (model, optimizer,
scheduler, loss scaler, every rank's RNG states and the :class:`~kftune.training.state.TrainState`:
the position in the epoch, best-so-far and history) and ``manifest.json`` (size and SHA-256 of
``state.pt``). It is written under a temporary name and renamed into place, so a crash mid-write
leaves no directory that looks complete; a checkpoint whose file is truncated or corrupted later
fails the manifest check and :func:`latest_checkpoint` falls back to the previous one.

:class:`Checkpointer` saves and restores a run: it gathers what the file holds from every rank
(under FSDP the full weights and optimizer state, collective calls) and rank 0 writes it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import torch

from kftune.errors import ConfigError
from kftune.storage.checksums import sha256_of
from kftune.training.distributed import Ranks
from kftune.training.rng import rng_state, set_rng_state
from kftune.training.sharding import (
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
)
from kftune.training.state import TrainState

log = logging.getLogger("kftune.train")

PREFIX = "checkpoint-"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(PREFIX) :])


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete-looking checkpoint directories, newest (highest step) first."""
    if not directory.is_dir():
        return []
    found = [
        p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    ]
    return sorted(found, key=checkpoint_step, reverse=True)


def save_checkpoint(directory: Path, step: int, state: dict, keep: int = 0) -> Path:
    """Write ``state`` as ``directory/checkpoint-<step>`` atomically; keep the newest ``keep`` (0: all)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{step:08d}"
    tmp = directory / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state_file = tmp / STATE_FILE
        torch.save(state, state_file)
        _fsync(state_file)
        manifest = {
            "step": step,
            "files": {STATE_FILE: {"bytes": state_file.stat().st_size, "sha256": sha256_of(state_file)}},
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        _fsync(tmp / MANIFEST_FILE)
        if final.exists():  # the same step saved again (mid-epoch, then at the epoch's end)
            stale = directory / f".stale-{final.name}-{uuid.uuid4().hex[:8]}"
            final.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(final)
        _fsync(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        for old in list_checkpoints(directory)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: Path) -> str | None:
    """Why ``path`` is not a valid checkpoint, or None when its files match the manifest."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"unreadable {MANIFEST_FILE}: {err}"
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, the manifest says {expected['bytes']} (truncated?)"
        if sha256_of(file) != expected["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (corrupted)"
    return None


def load_state(path: Path) -> dict:
    """The state a checkpoint directory holds, its tensors mapped from the file (``mmap``) rather than read into
    this process's memory: a tensor's pages are read when it is used, and the ranks of one node that resume from the
    same file share them in the page cache instead of each holding a copy of the whole checkpoint (a rank uses
    what it loads into its model and optimizer; the best epoch's weights only rank 0 reads). The mapping is private:
    writing to a tensor copies its pages and never touches the file, and a file removed while mapped (rank 0 removes
    older checkpoints, never rewrites one in place) stays readable through the mapping. A volume that cannot map
    files (mmap refused: some network filesystems) gets the file read into memory instead."""
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
    except OSError as err:  # mmap(2) refused by the filesystem (ENODEV, EACCES, ...); a bad file fails below too
        log.warning("%s cannot be memory-mapped (%s): reading it into memory", path / STATE_FILE, err)
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


def latest_checkpoint(directory: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies and loads, with its state; invalid ones are skipped with a warning."""
    for path in list_checkpoints(directory):
        problem = verify_checkpoint(path)
        if problem is None:
            try:
                return path, load_state(path)
            except Exception as err:  # noqa: BLE001 - any unpickling failure makes it unusable
                problem = f"{STATE_FILE} does not load: {err}"
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def find_checkpoint(directory: Path, ranks: Ranks) -> tuple[Path, dict] | None:
    """The newest valid checkpoint and its contents, chosen by rank 0 so that every rank resumes from the same one
    (a collective call)."""
    found = latest_checkpoint(directory) if ranks.is_main else None
    chosen = ranks.from_main(str(found[0]) if found else None)
    if chosen is None:
        return None
    if found is None:  # another rank: read the file rank 0 chose
        found = Path(chosen), load_state(Path(chosen))
    return found


class Checkpointer:
    """Saves a run's :class:`TrainState` with its model, optimizer, scheduler, loss scaler and every rank's RNG
    states into ``directory``, and restores the newest valid checkpoint there.

    With a frozen base (``trained_only``: LoRA on a causal LM) checkpoints keep the trained weights only. Under
    FSDP (``fsdp``) the model holds shards: weights and optimizer state are gathered into full state dicts, as
    unsharded training writes them, so either kind of run resumes from either kind of checkpoint."""

    def __init__(self, directory: Path, config, model: torch.nn.Module, optimizer, scheduler, scaler, ranks: Ranks,
                 fsdp: bool = False, trained_only: bool = False):
        self.directory, self.keep, self.config = directory, config.save_total_limit, config
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.ranks, self.fsdp, self.trained_only = ranks, fsdp, trained_only
        self.trained_names = {name for name, p in model.named_parameters() if p.requires_grad}

    def model_weights(self) -> dict:
        """What checkpoints keep of the model (a collective call under FSDP, which gathers the shards)."""
        state = full_model_state(self.model) if self.fsdp else self.model.state_dict()
        return {k: v for k, v in state.items() if k in self.trained_names} if self.trained_only else state

    def load_model_weights(self, weights: dict) -> None:
        if self.fsdp:
            load_full_model_state(self.model, weights, strict=not self.trained_only)
            return
        missing, unexpected = self.model.load_state_dict(weights, strict=not self.trained_only)
        if unexpected:
            raise ConfigError(f"checkpoint weights do not fit the model: {unexpected[:3]}")

    def save(self, state: TrainState) -> Path | None:
        """Checkpoint ``state`` (a collective call); the checkpoint's path on rank 0, None on the others."""
        rng = self.ranks.gather(rng_state())
        weights = self.model_weights()
        optimizer = full_optimizer_state(self.model, self.optimizer) if self.fsdp else self.optimizer.state_dict()
        if not self.ranks.is_main:
            return None
        saved = {
            **state.to_checkpoint(),
            "world_size": self.ranks.world,
            "config": asdict(self.config),
            "model": weights,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
        }
        path = save_checkpoint(self.directory, state.step, saved, keep=self.keep)
        log.info("checkpoint written: %s", path)
        return path

    def restore(self) -> TrainState | None:
        """Load the newest valid checkpoint into the model, optimizer, scheduler, loss scaler and this rank's RNGs
        and return its state; None (and nothing loaded) where there is none. A collective call."""
        found = find_checkpoint(self.directory, self.ranks)
        if found is None:
            return None
        path, saved = found
        differences = self.config.resume_differences(saved["config"])
        if differences:
            raise ConfigError(
                f"{self.directory} holds checkpoints of a different training run "
                f"(differs in {', '.join(differences)}); use another checkpoint_dir or remove it"
            )
        try:
            state = TrainState.from_checkpoint(saved)
        except ValueError as err:
            raise ConfigError(f"checkpoint {path} cannot be resumed: {err}; use another checkpoint_dir or remove "
                              "it") from err
        if saved["world_size"] != self.ranks.world:
            log.warning("checkpoint %s was written by %d process(es), resuming with %d: batch order changes",
                        path, saved["world_size"], self.ranks.world)
        self.load_model_weights(saved["model"])
        if self.fsdp:
            load_full_optimizer_state(self.model, self.optimizer, saved["optimizer"])
        else:
            self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        ranks_rng = saved["rng"]
        set_rng_state(ranks_rng[self.ranks.rank] if self.ranks.rank < len(ranks_rng) else ranks_rng[0])
        if self.ranks.is_main:
            log.info("resumed from %s: step %d, epoch %d, %d micro-batches into it", path, state.step, state.epoch + 1,
                     state.micro)
        return state
