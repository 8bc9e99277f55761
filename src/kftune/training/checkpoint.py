"""Training checkpoints that survive preemption: written atomically, verified on load.

A checkpoint is a directory ``checkpoint-<step>`` holding ``state.pt`` (model, optimizer,
scheduler, every rank's RNG states, the position in the epoch, best-so-far and history)
and ``manifest.json`` (size and SHA-256 of ``state.pt``). It is written under a temporary
name and renamed into place, so a crash mid-write leaves no directory that looks complete;
a checkpoint whose file is truncated or corrupted later fails the manifest check and
:func:`latest_checkpoint` falls back to the previous one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import torch

from kftune.storage.checksums import sha256_of

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


def latest_checkpoint(directory: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies and loads, with its state; invalid ones are skipped with a warning."""
    for path in list_checkpoints(directory):
        problem = verify_checkpoint(path)
        if problem is None:
            try:
                return path, torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - any unpickling failure makes it unusable
                problem = f"{STATE_FILE} does not load: {err}"
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None
