"""Median pruning of weak trials from inside the training loop, through a shared Optuna study.

The search process creates the study in a journal file (``JournalFileBackend``: safe for
several processes, and for several pods when the file is on a shared volume), asks it for a
trial, and starts training with :class:`PruningTarget` in ``TrainConfig.pruning``. After every
epoch's validation, rank 0 of the training job reports the score to that trial and asks the
study's pruner whether to stop. Training runs under torchrun in other processes, so the trial
is reached through the storage, not passed as an object.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PruningTarget:
    storage: str
    """Path of the study's journal file."""
    study: str
    trial_id: int
    n_startup_trials: int = 2
    """Trials that run to the end before any is pruned."""
    n_warmup_steps: int = 0
    """Epochs of every trial that are never pruned (0: pruning may start after the first epoch)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PruningTarget:
        return cls(**json.loads(text))

    def pruner(self):
        import optuna

        return optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials, n_warmup_steps=self.n_warmup_steps)

    def report(self, value: float, epoch: int) -> bool:
        """Record ``value`` as the trial's score after ``epoch``; True if the trial should stop."""
        import optuna

        study = optuna.load_study(study_name=self.study, storage=journal_storage(self.storage), pruner=self.pruner())
        trial = optuna.trial.Trial(study, self.trial_id)
        trial.report(value, epoch)
        return bool(trial.should_prune())


def journal_storage(path: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))
