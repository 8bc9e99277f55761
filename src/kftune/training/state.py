"""What a checkpoint holds of a run besides its weights, optimizer, scheduler, loss scaler and RNG states.

:class:`TrainState` is where training is (optimizer step, epoch, micro-batch) and what it has recorded. The loop
owns the position; each unit owns its part and is handed only that part: the
:class:`~kftune.training.history.TrainingLog` its :class:`Records`, the
:class:`~kftune.training.validation.Validator` its :class:`BestModel`, the
:class:`~kftune.training.microbatch.MicroBatchSplitter` its :class:`MicroBatching`.

:meth:`TrainState.to_checkpoint` and :meth:`TrainState.from_checkpoint` walk the dataclass fields, nested ones
included, so a field added here is saved and resumed without being listed anywhere else. Values are plain
Python and tensors: ``torch.load(weights_only=True)`` reads them back.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass


@dataclass
class Records:
    """The run's records, written by the TrainingLog."""

    history: dict
    """``training_history.json`` as far as the run has come: config, world size, step and epoch records."""
    loss_sum: float = 0.0
    """The epoch's training loss so far: the sum of its micro-batches' losses, and their count."""
    loss_count: int = 0


@dataclass
class BestModel:
    """The best epoch so far and the early-stopping and pruning counts, kept by the Validator."""

    score: float | None = None
    epoch: int = -1
    """0-based; -1 before the first validation."""
    weights: dict | None = None
    """Its weights (what a checkpoint keeps of the model), on the CPU."""
    stale_epochs: int = 0
    """Epochs since the score last improved, counted once the model has beaten the trivial answer."""
    beat_trivial: bool = False
    """The model has been better than the task's trivial answer on validation (see the Validator)."""
    pruned_at_epoch: int = 0
    """1-based epoch after which the search pruned the run (0: not pruned)."""


@dataclass
class MicroBatching:
    """How the micro-batch splitter runs micro-batches: changed by out-of-memory errors, kept across a resume."""

    split: int = 1
    """Each micro-batch runs in this many pieces (doubled on each out-of-memory error)."""
    sync_after_backward: bool = False
    """DDP: average gradients after every piece's backward pass (not during the last one's)."""
    changes: list[dict] = field(default_factory=list)
    """One record per change of ``split``: step, micro-batch, gradient accumulation, reason."""


@dataclass
class TrainState:
    """Where a run is, and what its units keep."""

    records: Records
    best: BestModel = field(default_factory=BestModel)
    micro_batching: MicroBatching = field(default_factory=MicroBatching)
    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """The epoch to run (or being run)."""
    micro: int = 0
    """Micro-batches of ``epoch`` done by each rank; 0 at an epoch's start."""
    done: bool = False
    """Training is over (a resumed run only writes the model)."""

    @classmethod
    def start(cls, config, world: int) -> TrainState:
        """The state of a run that has not trained yet."""
        history = {"epochs": [], "steps": [], "config": asdict(config), "world_size": world}
        return cls(Records(history), micro_batching=MicroBatching(
            sync_after_backward=config.ddp_gradient_sync == "after_backward"))

    def to_checkpoint(self) -> dict:
        """Every field as a dict (nested dataclasses as nested dicts); values are not copied."""
        return _to_dict(self)

    @classmethod
    def from_checkpoint(cls, saved: dict) -> TrainState:
        """The state :meth:`to_checkpoint` gave ``saved``; ValueError naming the fields it lacks."""
        return _from_dict(cls, saved)


def _to_dict(obj) -> dict:
    return {f.name: _to_dict(value) if is_dataclass(value := getattr(obj, f.name)) else value for f in fields(obj)}


def _from_dict(cls, saved: dict):
    missing = [f.name for f in fields(cls) if f.name not in saved]
    if missing:
        raise ValueError(f"no {', '.join(missing)} (written by another version of kftune)")
    types = typing.get_type_hints(cls)
    return cls(**{f.name: _from_dict(types[f.name], saved[f.name]) if is_dataclass(types[f.name]) else saved[f.name]
                  for f in fields(cls)})
