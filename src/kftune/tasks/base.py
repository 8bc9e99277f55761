"""What a task is, and everything a stage asks of it.

A task is one package of :mod:`kftune.tasks` holding a :class:`Task`: the stages, the pipelines
and the CLI ask it what differs and never name it. What each stage asks:

===========  ======================================================================================
stage        hooks
===========  ======================================================================================
preprocess   ``detect`` / ``reads_file`` (task auto), ``prepare`` (read, clean, sample, check: every
             error in the input surfaces here, before a tokenizer loads; the CLI calls it to fail
             fast), ``data_info``, ``store_labels``, ``strata``, ``encode``, ``distribution``,
             ``dataset_stats``, ``write_files``; ``augmentable``
train        ``recipe`` (model, batches, objective, validation, what the trained model directory
             holds), ``training_modes``, ``shardings``, ``best_metrics``, ``defaults``
tune         ``search_space``, ``best_metrics``, ``lower_is_better``
evaluate     ``evaluate`` (test scores, baselines, the champion), ``example_statistics`` and ``scores_from_sums``
             (the paired bootstrap intervals), ``checks`` (the gate), ``flat_metrics``,
             ``summary_table``, ``report_intro``, ``report_figures``, ``report_sections``
export       ``export_format`` and, for ONNX, ``decisions`` and ``logits_axes`` (the parity check);
             ``pipeline_tag`` (the model card)
serve        ``serving`` (the protocol), ``open_export``
predict      ``open_export``, ``input_columns``, ``is_empty``, ``prediction_row``
===========  ======================================================================================

A task's own settings (``settings``: dataclass groups by stage, e.g. token classification's
``TokenData`` in preprocess) join the stage's config and every surface; set while another task
runs they are an error. Settings left at ``auto`` take ``defaults``.

``info`` is the task's part of the artifacts (``task.json``): the label names, a regression
target's mean and standard deviation, a multi-label model's thresholds, a causal LM's allowed
answers; preprocess writes it into the dataset, train copies it (with what training added) into
the model, export into the export directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Prepared:
    """A task's data, read, cleaned, sampled and checked (:meth:`Task.prepare`)."""

    frame: Any
    """The examples (a pandas DataFrame) in the columns the task keeps."""
    source: str
    """What was read, for messages and the data report."""
    rows_read: int
    removed: dict[str, int]
    """Rows removed, per cleaning rule."""
    stats: dict = field(default_factory=dict)
    """What the data report shows besides the common figures (conversions, layouts, ...)."""
    tokenizer: Any = None
    """The tokenizer, where preparing needed one (a causal LM's data is encoded while it is cleaned)."""


@dataclass(frozen=True)
class Task:
    """One task: its name and defaults, its metrics, and the hooks of the module docstring."""

    name: str
    summary: str
    """What it learns, in a few words (the ``task`` setting's description lists it)."""
    defaults: dict = field(default_factory=dict)
    """Values of the settings left at ``auto``."""
    search_space: dict = field(default_factory=dict)
    """The default search space of a hyperparameter search (see :mod:`kftune.training.search_space`)."""
    metrics: tuple[str, ...] = ()
    """The scores of the results JSON's ``model``, ``baselines`` and ``delta_vs_baseline``."""
    primary: str = ""
    """The score the gate and the comparison with the baseline go by."""
    lower_is_better: frozenset[str] = frozenset({"loss"})
    best_metrics: tuple[str, ...] = ("loss",)
    """Validation scores that may pick the best epoch (``metric_for_best_model``)."""
    baseline: str = ""
    """The baseline ``delta_vs_baseline`` compares with."""
    trivial: str = ""
    """The baseline that gives the trivial answer (the most frequent class, the mean, no label): the gate fails a
    model worse than it on any score it has (``max_loss_to_trivial``). Empty: the task has none."""
    settings: dict = field(default_factory=dict)
    """Its own settings groups, by stage (``{"preprocess": (TokenData,)}``)."""
    is_default: bool = False
    """The task of a run that says nothing (no task, no data): the bundled default."""

    # What a family of tasks shares (class attributes, so that a subclass sets them once):
    training_modes = ("full",)
    """The ``training_mode`` values it trains with."""
    shardings = ("ddp",)
    """The ``sharding`` values it trains with."""
    detect_order = 100
    """Where ``detect`` is asked among the tasks (lowest first); the default task is asked last."""
    export_format = "onnx"
    """What export writes: ``onnx`` (a graph of the logits) or ``huggingface`` (a model directory)."""
    pipeline_tag = "text-classification"
    """The Hugging Face pipeline its model serves (the model card's ``pipeline_tag``): a regression or multi-label
    head is a ``text-classification`` model there too."""
    serving = "kserve"
    """The protocol ``kftune serve`` speaks for it: ``kserve`` (V1 and Open Inference) or ``openai``."""
    pretrainable = False
    """Whether its encoder can be pretrained first (masked-language-model training, the pretrain step)."""
    augmentable = False
    """Whether its training texts can be augmented with noisy copies."""
    strata_checked = False
    """Whether ``prepare`` already proved its strata splittable (else the split falls back to random)."""
    intervals = False
    """Whether evaluate gives paired bootstrap intervals of its scores and gains (:meth:`example_statistics`)."""
    comparison_heading = "Model vs baselines"
    """The heading of the evaluation report's summary table."""
    predict_chunk_batches = 8
    """Prediction batches handed to the export at a time."""

    # --- metrics ----------------------------------------------------------------------
    def higher_is_better(self, metric: str) -> bool:
        return metric not in self.lower_is_better

    def gain(self, metric: str, model: float, baseline: float) -> float:
        """How much better the model is than the baseline in ``metric``: positive is better (for an error such
        as RMSE, baseline minus model)."""
        return model - baseline if self.higher_is_better(metric) else baseline - model

    def check_settings(self, config) -> None:
        """Refuse values of its own settings that cannot work together (a ConfigError naming them)."""

    # --- preprocess -------------------------------------------------------------------
    def detect(self, frame, config) -> str | None:
        """Why ``frame`` (every column of the data, as read) holds this task's data, or None."""
        return None

    def recognises_export(self, model_config: dict) -> bool:
        """Whether an export without a named task (from before tasks had names) is this task's, by its
        ``config.json``."""
        return False

    def reads_file(self, data: str) -> bool:
        """Whether this task's data is told by the file name alone (a CoNLL file), before any reading."""
        return False

    def prepare(self, config, frame=None) -> Prepared:
        """Read ``config.data`` (or take ``frame``, already read from it), clean, sample and check it."""
        raise NotImplementedError

    def data_info(self, prepared: Prepared, config) -> dict:
        """What the dataset's ``task.json`` records besides the task's name."""
        return {}

    def train_info(self, train, info: dict) -> dict:
        """What ``task.json`` records that is fitted on the training split alone (after the split; e.g. a
        regression target's normalisation): validation and test rows must not shape what training sees."""
        return {}

    def store_labels(self, frame, info: dict):
        """``frame`` with its labels as the dataset stores them (before the split: the strata see them so)."""
        return frame

    def strata(self, frame, info: dict):
        """Values to stratify the split by (a Series aligned with ``frame``), or None for a random split."""
        return None

    def encode(self, splits: dict, info: dict, tokenizer, config, prepared: Prepared):
        """The split frames as a tokenized ``datasets.DatasetDict`` (with a ``length`` column)."""
        raise NotImplementedError

    def distribution(self, split, info: dict) -> dict:
        """A split's labels as the data report shows them."""
        return {}

    def stats_labels(self, info: dict) -> list:
        """The label names the data report shows."""
        return list(info.get("labels", []))

    def dataset_stats(self, dataset, info: dict, config, prepared: Prepared) -> dict:
        """Figures of the encoded dataset the data report adds (they replace common ones of the same name)."""
        return {}

    def write_files(self, directory: Path, info: dict) -> None:
        """Files the dataset artifact holds besides the splits, ``task.json``, tokenizer and stats."""

    # --- training ---------------------------------------------------------------------
    def recipe(self):
        """What the training loop asks of the task: its model, batches, objective and output."""
        raise NotImplementedError

    # --- evaluation -------------------------------------------------------------------
    def evaluate(self, model_dir: Path, dataset_dir: Path, test_dir: Path, config,
                 champion_dir: Path | None = None) -> dict:
        """The trained model and the baselines scored on the test split (the test split artifact ``test_dir``;
        baselines fit on the dataset artifact's train split): ``task``, ``test_size``, ``model``, ``baselines``,
        ``baseline``, ``delta_vs_baseline`` and what the task's report needs. With ``champion_dir`` (the
        registered champion's export, :mod:`kftune.tracking.champion`), also ``champion``: its scores on the same
        split (``model``), the gains over it (``delta``) and their paired intervals (``intervals``), or
        ``{"error": why}`` where it cannot be scored on this split; a task that leaves ``champion`` out is never
        promoted over one automatically."""
        raise NotImplementedError

    def example_statistics(self, truth, predicted, info: dict) -> dict:
        """Per-example sufficient statistics of the task's scores (arrays, the test examples on axis 0), for the
        paired bootstrap (:mod:`kftune.tasks.bootstrap`) of a task with ``intervals``."""
        raise NotImplementedError

    def scores_from_sums(self, sums: dict, info: dict) -> dict:
        """Each of ``metrics`` for every resample (arrays, the resamples on axis 0), from the sums of
        :meth:`example_statistics` over each resample's examples."""
        raise NotImplementedError

    def gates(self, primary: str = "") -> dict[str, str]:
        """The gate's settings that apply to the task, each with the score it bounds: the primary score (a
        minimum for a score, a maximum for an error such as RMSE), its gain over the baseline, macro F1 where
        the task scores it, and (``max_loss_to_trivial``, where the task has a :attr:`trivial` baseline) every
        score that baseline has, against it. ``primary``: the result's, where it depends on the data
        (causal-lm)."""
        primary = primary or self.primary
        gates = {"min_primary_score" if self.higher_is_better(primary) else "max_primary_error": primary,
                 "min_gain_over_baseline": primary}
        if "f1_macro" in self.metrics:
            gates["min_f1_macro"] = "f1_macro"
        if self.trivial:
            gates["max_loss_to_trivial"] = self.trivial
        return gates

    def checks(self, result: dict, config) -> dict[str, bool]:
        """The gate's checks of ``result``, one per setting of :meth:`gates` (a ``max_primary_error`` of -1, no
        limit, checks nothing), by what each requires."""
        model, deltas = result["model"], result["delta_vs_baseline"]
        checks = {}
        for name, metric in self.gates(result.get("primary_metric", "")).items():
            bound = getattr(config, name)
            if name == "min_gain_over_baseline" and config.gain_at_lower_bound:
                low = result["intervals"][metric]["ci_low"]
                checks[f"{metric} gain over {result['baseline']}, lower bound of its 95% interval, >= {bound}"] = (
                    low >= bound)
            elif name == "min_gain_over_baseline":
                checks[f"{metric} gain over {result['baseline']} >= {bound}"] = deltas[metric] >= bound
            elif name == "max_loss_to_trivial":
                if bound >= 0:
                    checks.update(self.trivial_checks(result, bound))
            elif name.startswith("max_"):
                if bound >= 0:
                    checks[f"{metric} <= {bound}"] = model[metric] <= bound
            else:
                checks[f"{metric} >= {bound}"] = model[metric] >= bound
        return checks

    def trivial_checks(self, result: dict, tolerance: float) -> dict[str, bool]:
        """One check per score the :attr:`trivial` baseline has: the model is not worse than it by more than
        ``tolerance`` (in the score's units; for an error such as RMSE, the target's)."""
        import math

        trivial = result["baselines"].get(self.trivial, {})
        checks = {}
        for metric in self.result_metrics(result):
            model, base = result["model"].get(metric), trivial.get(metric)
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in (model, base)):
                continue  # a score the trivial answer does not have
            checks[f"{metric} not worse than {self.trivial} ({base:.4f}) by more than {tolerance}"] = (
                self.gain(metric, model, base) >= -tolerance)
        return checks

    def result_metrics(self, result: dict) -> tuple[str, ...]:
        """The scores of ``result`` the results JSON and the summary table show."""
        return self.metrics

    def result_extras(self, result: dict) -> dict:
        """What the results JSON shows of ``result`` besides its scores."""
        return {"labels": result.get("labels", [])}

    def flat_metrics(self, result: dict) -> dict[str, float]:
        """Scalars for a KFP ``Metrics`` artifact: model, baselines, deltas, gate."""
        keys = self.result_metrics(result)
        flat = {f"model_{k}": result["model"][k] for k in keys}
        for name, scores in result["baselines"].items():
            flat.update({f"{name}_{k}": scores[k] for k in keys if k in scores})
        flat.update({f"delta_{k}": v for k, v in result["delta_vs_baseline"].items()})
        flat.update(interval_metrics(result))
        flat["passed"] = float(result["passed"])
        return flat

    def summary_table(self, result: dict) -> tuple[list[str], list[tuple]]:
        """(score names, rows) of the model-vs-baselines table: the model, each baseline, the delta and its
        interval."""
        keys = list(self.result_metrics(result))
        rows = [("fine-tuned model", *(result["model"][k] for k in keys))]
        for name, scores in result["baselines"].items():
            rows.append((f"baseline: {name}", *(scores.get(k) for k in keys)))
        rows.append((f"delta vs {result['baseline']}", *(result["delta_vs_baseline"].get(k) for k in keys)))
        return keys, rows + interval_rows(result, keys)

    def report_intro(self, result: dict) -> str:
        """The evaluation report's first paragraph (HTML)."""
        return f"<p>Task {self.name}; test split: {result['test_size']} examples.</p>"

    def report_figures(self, result: dict) -> list[str]:
        """HTML figures shown under the summary table."""
        return []

    def report_sections(self, result: dict) -> list[str]:
        """HTML sections (tables, plots) of the evaluation report after the gate."""
        return []

    # --- export, serving, prediction --------------------------------------------------
    def open_export(self, model_dir: Path, **options):
        """The export in ``model_dir`` opened for inference: an object with ``predict(inputs)`` (one answer per
        example) and ``input_fields``."""
        raise NotImplementedError

    def input_columns(self, config) -> dict[str, str]:
        """The columns of a prediction input that hold each input field (``{"text": config.text_column}``)."""
        return {"text": config.text_column}

    def is_empty(self, text: str) -> bool:
        """Whether an input text is empty as the model would see it."""
        return not text.strip()

    def prediction_row(self, output: dict) -> dict:
        """One answer as columns of a prediction row: scalars as they are, a dict's items as ``<key>_<name>``,
        lists as JSON."""
        import json

        row = {}
        for key, value in output.items():
            if isinstance(value, dict):
                row.update({f"{key}_{name}": v for name, v in value.items()})
            elif isinstance(value, list):
                row[key] = json.dumps(value)
            else:
                row[key] = value
        return row


def interval_metrics(result: dict) -> dict[str, float]:
    """The KFP metrics of the gains' intervals (``delta_<score>_ci_low``, ``delta_<score>_ci_high``), where
    ``result`` has them."""
    flat = {}
    for k, interval in result.get("intervals", {}).items():
        flat.update({f"delta_{k}_ci_low": interval["ci_low"], f"delta_{k}_ci_high": interval["ci_high"]})
    return flat


def interval_rows(result: dict, keys) -> list[tuple]:
    """The summary table's rows of the gains' intervals (low, high) in the scores ``keys``, where ``result`` has
    them (a score without an interval: an empty cell)."""
    if "intervals" not in result:
        return []
    return [(f"delta, 95% interval: {bound.removeprefix('ci_')} ({result['resamples']} paired resamples)",
             *(result["intervals"].get(k, {}).get(bound, "") for k in keys)) for bound in ("ci_low", "ci_high")]
