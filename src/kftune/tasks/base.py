"""What a task is: its defaults, its metrics, and the hooks the stages call.

A :class:`Task` holds what every task has: a name, the values its ``auto`` settings take,
the metrics of its results and which way each is better. :class:`EncoderTask` is a task that
fine-tunes an encoder with a head on one text per row (classification, regression,
multi-label): the stages call its hooks and nothing else of it, so a new task of that kind is
one subclass in one module plus its line in :data:`~kftune.tasks.TASKS`:

========================  ==============================================================
stage                     hooks
========================  ==============================================================
preprocess                ``parse_labels``, ``label_info``, ``encode_labels``,
                          ``label_feature``, ``strata``, ``check_labels``, ``distribution``
train                     ``recipe`` (the training loop's), whose recipe calls ``head``
                          (model class, ``num_labels``, ``problem_type``), ``label_tensor``
                          and ``truncate_labels`` (the collator's labels), ``loss``,
                          ``scores`` (validation), ``after_training`` (e.g. thresholds)
evaluate                  ``scores``, ``baselines``, ``checks``, ``report_sections``
export                    ``decisions`` (what the ONNX parity check compares)
serve / predict           ``outputs`` (V1 and files), ``v2_outputs``
========================  ==============================================================

``info`` is the task's part of the artifacts (``task.json``): the label names, a regression
target's mean and standard deviation, a multi-label model's thresholds; preprocess writes it
into the dataset, train copies it (with what training added) into the model, export into
the export directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Task:
    """One task: its name, what it is, the values its ``auto`` settings take, its metrics."""

    name: str
    summary: str
    defaults: dict = field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    """The scores of the results JSON's ``model``, ``baselines`` and ``delta_vs_baseline``."""
    primary: str = ""
    """The score the gate and the comparison with the baseline go by."""
    lower_is_better: frozenset[str] = frozenset({"loss"})
    best_metrics: tuple[str, ...] = ("loss",)
    """Validation scores that may pick the best epoch (``metric_for_best_model``)."""
    baseline: str = ""
    """The baseline ``delta_vs_baseline`` compares with."""

    def higher_is_better(self, metric: str) -> bool:
        return metric not in self.lower_is_better

    def gain(self, metric: str, model: float, baseline: float) -> float:
        """How much better the model is than the baseline in ``metric``: positive is better (for an error such
        as RMSE, baseline minus model)."""
        return model - baseline if self.higher_is_better(metric) else baseline - model


class EncoderTask(Task):
    """A task that trains an encoder with a head on text rows; see the module docstring for the hooks."""

    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    token_level = False
    """True for a task with one label per word piece (token classification): its logits are ``[texts, pieces,
    labels]``, which the stages pad along the piece axis, and its export keeps that axis dynamic."""

    # --- preprocess -------------------------------------------------------------------
    def parse_labels(self, labels, source: str, column: str, config):
        """The label column as hashable Python values (None where missing); raises DataError naming the first
        row whose value the task cannot take."""
        raise NotImplementedError

    def label_info(self, labels) -> dict:
        """What the dataset artifact records about the (cleaned, parsed) labels."""
        raise NotImplementedError

    def encode_labels(self, labels, info: dict) -> list:
        """The label column as the dataset stores it."""
        raise NotImplementedError

    def label_feature(self, info: dict):
        """The ``datasets`` feature of the stored label column."""
        raise NotImplementedError

    def strata(self, labels):
        """Values to stratify the split by (a Series aligned with ``labels``), or None for a plain random split."""
        return None

    def check_labels(self, labels, config, source: str) -> None:
        """Raise DataError if the cleaned labels cannot be split and learned."""
        if len(labels) < 10:
            from kftune.errors import DataError

            raise DataError(f"{source}: {len(labels)} rows after cleaning; a train/validation/test split needs at "
                            "least 10")

    def distribution(self, stored: list, info: dict) -> dict:
        """A split's labels as the data report shows them."""
        return {}

    # --- model and training -----------------------------------------------------------
    def head(self, info: dict) -> dict:
        """Keyword arguments of ``from_pretrained`` that shape the head: num_labels, id2label, problem_type."""
        raise NotImplementedError

    def label_array(self, values) -> np.ndarray:
        """A split's stored labels as one array, as ``scores`` takes them (token classification pads them)."""
        return np.asarray(values)

    def label_tensor(self, values: list, info: dict):
        """The labels of a batch as the loss takes them."""
        raise NotImplementedError

    def truncate_labels(self, rows: list, max_length: int) -> list:
        """A split's stored labels once its texts are cut to ``max_length`` tokens (one label per text: as they
        are)."""
        return rows

    def loss(self, model, batch: dict, config):
        """The loss a training step minimises on ``batch`` (model inputs and ``labels``)."""
        raise NotImplementedError

    def scores(self, logits: np.ndarray, labels: np.ndarray, info: dict, full: bool = False) -> dict:
        """Scores of ``logits`` against stored ``labels``: the summary metrics (validation), and with ``full``
        everything the test report shows."""
        raise NotImplementedError

    def after_training(self, logits: np.ndarray, labels: np.ndarray, info: dict) -> dict:
        """``info`` for the trained model, given its validation logits (multi-label picks its thresholds here)."""
        return info

    def recipe(self):
        """What the training loop does for this task (:class:`~kftune.training.encoder_recipe.EncoderRecipe`)."""
        from kftune.training.encoder_recipe import EncoderRecipe

        return EncoderRecipe(self)

    # --- evaluation -------------------------------------------------------------------
    def baselines(self, train, test, info: dict) -> dict[str, dict]:
        """Baselines fitted on the train split and scored (``full``) on the test split, by name."""
        raise NotImplementedError

    def checks(self, model: dict, deltas: dict, config) -> dict[str, bool]:
        """The gate's checks (``min_accuracy`` applies to the task's primary score where higher is better)."""
        checks = {}
        if self.higher_is_better(self.primary):
            checks[f"{self.primary} >= {config.min_accuracy}"] = model[self.primary] >= config.min_accuracy
        checks[f"{self.primary} gain over {self.baseline} >= {config.min_gain_over_baseline}"] = (
            deltas[self.primary] >= config.min_gain_over_baseline)
        return checks

    def report_sections(self, result: dict) -> list[str]:
        """HTML sections (tables, plots) of the evaluation report after the summary table and the gate."""
        return []

    # --- export, serving, prediction --------------------------------------------------
    def decisions(self, logits: np.ndarray, info: dict) -> np.ndarray | None:
        """The discrete predictions the ONNX parity check requires to be identical (None: logits only)."""
        return logits.argmax(-1)

    def outputs(self, logits: np.ndarray, info: dict) -> list[dict]:
        """One answer per text (V1 ``predictions``, a predict step's rows)."""
        raise NotImplementedError

    def v2_outputs(self, logits: np.ndarray, info: dict) -> list[tuple[str, str, np.ndarray]]:
        """The Open Inference outputs: (name, datatype, array) each."""
        raise NotImplementedError


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
