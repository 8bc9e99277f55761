"""Validation after each epoch: score the model, keep the best epoch's weights, and decide whether to stop.

Rank 0 validates (under FSDP every rank takes part: the sharded forward pass and gathering the weights are
collective calls) and decides alone whether the run stops: early stopping after ``early_stopping_patience``
epochs without improvement, counted only once the model has beaten the task's trivial answer on validation
(better on at least one score that answer has and worse on none: a model that has not learnt yet is not stopped,
issue 34), or pruning by a hyperparameter search (``TrainConfig.pruning``: the score is reported
to the search's Optuna trial, whose pruner answers). Its decision is broadcast, so every rank stops together.

With ``train_on=train+validation`` the validation split is also trained on: its scores say nothing about
generalisation, so every epoch counts as the best (the last one is kept) and early stopping is off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from kftune.training.distributed import Ranks
from kftune.training.pruning import PruningTarget
from kftune.training.state import BestModel

log = logging.getLogger("kftune.train")


@dataclass(frozen=True)
class EpochScores:
    """One epoch's validation: the scores (loss and the task's metrics), and whether they are the best so far."""

    scores: dict[str, float]
    improved: bool


class Validator:
    """Validates after each epoch and keeps the best model in ``best`` (see the module docstring).

    ``evaluate()`` scores the model on the validation split; ``weights()`` is what a checkpoint keeps of the model
    (the best epoch's are copied to the CPU)."""

    def __init__(self, config, evaluate: Callable[[], dict[str, float]], weights: Callable[[], dict], ranks: Ranks,
                 higher_is_better: bool, best: BestModel, every_rank: bool = False,
                 trivial: Callable[[], dict[str, float]] = dict,
                 gain: Callable[[str, float, float], float] | None = None):
        self.metric, self.patience, self.epochs = (config.metric_for_best_model, config.early_stopping_patience,
                                                   config.num_train_epochs)
        self.keep_last = config.train_on == "train+validation"
        self.pruning = PruningTarget.from_json(config.pruning) if config.pruning else None
        self.evaluate, self.weights, self.ranks = evaluate, weights, ranks
        self.higher_is_better, self.best, self.every_rank = higher_is_better, best, every_rank
        self.trivial, self.gain = trivial, gain or (lambda metric, model, base: model - base)

    def validate(self, epoch: int) -> EpochScores | None:
        """Score the model after ``epoch`` (0-based) and keep its weights if it is the best so far; None on the
        ranks that do not validate."""
        if not (self.ranks.is_main or self.every_rank):
            return None
        scores = self.evaluate()
        score, best = scores[self.metric], self.best
        improved = self.keep_last or best.score is None or (
            score > best.score if self.higher_is_better else score < best.score)
        if improved:
            best.score, best.epoch = score, epoch
            best.weights = {k: v.detach().to("cpu", copy=True) for k, v in self.weights().items()}
        return EpochScores(scores, improved)

    def should_stop(self, epoch: int, validated: EpochScores | None) -> bool:
        """Rank 0's decision after ``epoch``'s validation, on every rank (a collective call)."""
        return self.ranks.from_main(self._decide(epoch, validated) if self.ranks.is_main else None)

    def beats_trivial(self, scores: dict[str, float]) -> tuple[bool, str]:
        """Whether ``scores`` are better than the trivial answer's on at least one score and worse on none (True
        where the task has no trivial answer), and a line saying why not."""
        trivial = {k: v for k, v in self.trivial().items() if k in scores}
        gains = {k: self.gain(k, scores[k], v) for k, v in trivial.items()}
        worse = [f"{k} {scores[k]:.4f} against {trivial[k]:.4f}" for k, g in gains.items() if g < 0]
        if worse:
            return False, "worse than the trivial answer on " + ", ".join(worse)
        if gains and not any(g > 0 for g in gains.values()):
            return False, "no better than the trivial answer on any score"
        return True, ""

    def _decide(self, epoch: int, validated: EpochScores) -> bool:
        best = self.best
        if not best.beat_trivial and self.patience and not self.keep_last:
            best.beat_trivial, why = self.beats_trivial(validated.scores)
            if not best.beat_trivial:
                log.info("early stopping waits after epoch %d: the model is %s on validation", epoch + 1, why)
        learnt = best.beat_trivial or not self.patience or self.keep_last
        best.stale_epochs = 0 if validated.improved or not learnt else best.stale_epochs + 1
        if self.patience and best.stale_epochs >= self.patience and not self.keep_last:
            log.info("early stopping: no improvement of %s for %d epoch(s)", self.metric, best.stale_epochs)
            return True
        if self.pruning is None:
            return False
        score = validated.scores[self.metric]
        if self.pruning.report(score, epoch + 1) and epoch + 1 < self.epochs:
            best.pruned_at_epoch = epoch + 1
            log.info("pruned by the search after epoch %d (%s %.4f)", epoch + 1, self.metric, score)
            return True
        return False
