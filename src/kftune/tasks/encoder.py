"""Tasks that fine-tune an encoder with a head on labelled text rows: what they share.

:class:`EncoderTask` implements the stages' hooks (:mod:`kftune.tasks.base`) for a task whose
examples are rows of one text (or a few: ``text_fields``) and a label: the rows are read and
cleaned rule by rule (:mod:`kftune.data.cleaning`), tokenized with the model's fast tokenizer,
trained with an ``AutoModelFor...`` head, scored on the test split from the model's logits and
exported as an ONNX graph of them. A task of that kind is a subclass that brings its labels
(``parse_labels``, ``label_info``, ``encode_labels``, ``label_feature``, ``label_strata``,
``check_labels``), its head and loss, its scores and baselines, and its answers (``outputs``,
``v2_outputs``). Token classification, whose examples are words with a tag each, overrides the
data hooks too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from kftune.data.bundled import BUNDLED_MODEL
from kftune.data.schema import LABEL, LENGTH, TEXT
from kftune.tasks.base import Prepared, Task, interval_metrics, interval_rows

log = logging.getLogger(__name__)

ENCODER_DEFAULTS = {"model": BUNDLED_MODEL, "max_seq_length": 128, "training_mode": "full"}
"""What the encoder tasks' ``auto`` settings share (each task adds or replaces its own)."""


def encoder_search_space(learning_rate: tuple[float, float]) -> dict:
    """The encoder tasks' default search space: the learning rate over ``learning_rate`` (log scale; around the
    task's default), batch size, warmup and weight decay."""
    low, high = learning_rate
    return {"learning_rate": {"low": low, "high": high, "log": True}, "per_device_train_batch_size": [16, 32],
            "warmup_ratio": {"low": 0.0, "high": 0.2}, "weight_decay": {"low": 0.0, "high": 0.1}}


class EncoderTask(Task):
    """A task that trains an encoder with a head on text rows; see the module docstring."""

    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    logits_axes = None
    """Dynamic axes of the exported graph's logits beyond the batch's (None: ``{0: "batch"}``)."""
    text_fields = (TEXT,)
    """The texts of one example (a sentence pair has two); the first is ``text_column``'s."""
    training_modes = ("full", "freeze_encoder", "lora", "prompt_tuning")
    pretrainable = True
    augmentable = True

    # --- preprocess: labelled text rows -------------------------------------------------
    def input_columns(self, config) -> dict[str, str]:
        """The column of each text field: ``text`` is ``text_column``'s; a task of several texts adds its own."""
        return {TEXT: config.text_column}

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

    def label_strata(self, labels):
        """Values to stratify by, from the labels (a Series aligned with them), or None."""
        return None

    def check_labels(self, labels, config, source: str) -> None:
        """Raise DataError if the cleaned labels cannot be split and learned."""
        if len(labels) < 10:
            from kftune.errors import DataError

            raise DataError(f"{source}: {len(labels)} rows after cleaning; a train/validation/test split needs at "
                            "least 10")

    def label_distribution(self, stored: list, info: dict) -> dict:
        """A split's stored labels as the data report shows them."""
        return {}

    def read(self, config, frame=None):
        """(rows of the text fields and ``label``, rows read) of ``config.data`` (or of ``frame``, read from it)."""
        from kftune.data.labelled import read_labelled_data, select_columns

        columns = self.input_columns(config)
        more = {name: column for name, column in columns.items() if name != TEXT}
        if frame is None:
            frame = read_labelled_data(config.data, columns[TEXT], config.label_column, config.data_format, more)
        else:
            frame = select_columns(frame, config.data, columns[TEXT], config.label_column, more)
        return frame, len(frame)

    def clean(self, frame, config, source: str = ""):
        """The cleaning rules on ``frame`` (text fields and ``label``): (cleaned frame, rows removed per rule)."""
        from kftune.data.cleaning import clean_rows

        return clean_rows(frame, lambda labels: self.parse_labels(labels, source or config.data, config.label_column,
                                                                  config),
                          config.min_chars, config.max_chars, self.text_fields)

    def prepare(self, config, frame=None) -> Prepared:
        from kftune.data.cleaning import stratified_sample

        frame, rows_read = self.read(config, frame)
        frame, removed = self.clean(frame, config)
        frame = stratified_sample(frame, config.max_rows, config.seed, self.label_strata(frame[LABEL]))
        self.check_labels(frame[LABEL], config, config.data)
        return Prepared(frame, config.data, rows_read, removed)

    def data_info(self, prepared: Prepared, config) -> dict:
        return self.label_info(prepared.frame[LABEL])

    def store_labels(self, frame, info: dict):
        frame = frame.copy()
        frame[LABEL] = self.encode_labels(frame[LABEL], info)
        return frame

    def strata(self, frame, info):
        return self.label_strata(frame[LABEL])

    def encode(self, splits: dict, info: dict, tokenizer, config, prepared: Prepared):
        import datasets

        fields = self.text_fields

        def tokenize(batch):
            encoded = tokenizer(*(batch[name] for name in fields), truncation=True, max_length=config.max_seq_length)
            encoded[LENGTH] = [len(ids) for ids in encoded["input_ids"]]
            return encoded

        features = datasets.Features({**{name: datasets.Value("string") for name in fields},
                                      LABEL: self.label_feature(info)})
        dataset = datasets.DatasetDict({
            name: datasets.Dataset.from_pandas(part[[*fields, LABEL]], features=features, preserve_index=False)
            for name, part in splits.items()})
        return dataset.map(tokenize, batched=True, batch_size=1000, desc="tokenizing")

    def distribution(self, split, info: dict) -> dict:
        return self.label_distribution(split[LABEL], info)

    # --- model and training -----------------------------------------------------------
    def head(self, info: dict) -> dict:
        """Keyword arguments of ``from_pretrained`` that shape the head: num_labels, id2label, problem_type."""
        raise NotImplementedError

    def wrap_prompt_tuned(self, model):
        """A prompt-tuned model made to answer as the plain one does (token classification drops the virtual
        tokens' positions)."""
        return model

    def recipe(self):
        """What the training loop does for this task (:class:`~kftune.training.encoder_recipe.EncoderRecipe`)."""
        from kftune.training.encoder_recipe import EncoderRecipe

        return EncoderRecipe(self)

    def truncate_labels(self, rows: list, max_length: int) -> list:
        """Stored labels of examples cut to ``max_length`` tokens (per-token labels are cut with the tokens)."""
        return rows

    def label_array(self, values) -> np.ndarray:
        """A split's stored labels as one array, as ``scores`` takes them (token classification pads them)."""
        return np.asarray(values)

    def label_tensor(self, values: list, info: dict):
        """The labels of a batch as the loss takes them."""
        raise NotImplementedError

    def init_head(self, model, info: dict) -> None:
        """Set the new head's initial weights, after the pretrained model is loaded (default: as transformers
        initialised them)."""

    def loss(self, model, batch: dict, config):
        """The loss a training step minimises on ``batch`` (model inputs and ``labels``)."""
        raise NotImplementedError

    def scores(self, logits: np.ndarray, labels: np.ndarray, info: dict, full: bool = False) -> dict:
        """Scores of ``logits`` against stored ``labels``: the summary metrics (validation), and with ``full``
        everything the test report shows."""
        raise NotImplementedError

    def trivial_logits(self, logits: np.ndarray, info: dict) -> np.ndarray | None:
        """Logits of the shape of ``logits`` that give the task's trivial answer (fitted on the training split:
        the most frequent class, the training mean, no label, the O tag), whose validation scores early stopping
        waits for the model to beat; None: the task has none (patience counts from the first epoch)."""
        return None

    def after_training(self, logits: np.ndarray, labels: np.ndarray, info: dict) -> dict:
        """``info`` for the trained model, given its validation logits (multi-label picks its thresholds here)."""
        return info

    # --- evaluation -------------------------------------------------------------------
    def baselines(self, train, validation, test, info: dict) -> dict[str, dict]:
        """Baselines fitted on the train split (any choice they make, such as a decision threshold, made on the
        validation split, as the model's is) and scored (``full``) on the test split, by name; for a task with
        ``intervals``, each with its test ``predictions`` too (an array, which evaluate takes out)."""
        raise NotImplementedError

    def trained_info(self, model_dir: Path, model, data_info: dict) -> dict:
        """The task's part of a trained model: its ``task.json``, or for a model without one (trained before
        tasks had one, or built elsewhere) the dataset's, with the labels of the model's ``id2label``."""
        from kftune.data.schema import TASK_FILE, dataset_task

        if (Path(model_dir) / TASK_FILE).is_file():
            return dataset_task(model_dir)
        if "labels" not in data_info:
            return data_info
        return {**data_info, "labels": [model.config.id2label[i] for i in range(model.config.num_labels)]}

    def evaluate(self, model_dir: Path, dataset_dir: Path, test_dir: Path, config,
                 champion_dir: Path | None = None) -> dict:
        from kftune.data.schema import dataset_task, load_splits, load_test_split
        from kftune.errors import KftuneError
        from kftune.inference.runners import predict_logits, torch_runner
        from kftune.models.encoder import load_encoder_model

        splits, _ = load_splits(dataset_dir)
        model = load_encoder_model(model_dir, self)
        data_info = dataset_task(dataset_dir)
        info = self.trained_info(model_dir, model, data_info)
        if info.get("task", self.name) != self.name:
            raise KftuneError(f"{model_dir}: the model was trained for task {info['task']}, the dataset is for "
                              f"{self.name}; evaluate the model on the dataset it was trained on")
        if info.get("labels") != data_info.get("labels"):
            raise KftuneError(
                f"{model_dir}: the model's labels {info.get('labels')} differ from the dataset's "
                f"{data_info.get('labels')}; evaluate the model on the dataset it was trained on")
        train, test = splits["train"], load_test_split(test_dir)
        logits = predict_logits(torch_runner(model), test, config.batch_size)
        truth = self.label_array(test[LABEL])
        model_scores = self.scores(logits, truth, info, full=True)
        baselines = self.baselines(train, splits["validation"], test, info)
        predicted = {name: scores.pop("predictions", None) for name, scores in baselines.items()}
        baseline = baselines[self.baseline]
        result = {
            "task": self.name,
            "labels": info.get("labels", []),
            "test_size": len(test),
            "model": model_scores,
            "baselines": baselines,
            "baseline": self.baseline,
            "delta_vs_baseline": {k: self.gain(k, model_scores[k], baseline[k]) for k in self.metrics},
        }
        if self.intervals and predicted[self.baseline] is not None:
            from kftune.tasks.bootstrap import RESAMPLES, paired_intervals

            result["intervals"] = paired_intervals(
                self.example_statistics(truth, self.predicted(logits, truth, info), info),
                self.example_statistics(truth, predicted[self.baseline], info),
                lambda sums: self.scores_from_sums(sums, info), self.gain)
            result["resamples"] = RESAMPLES
        if champion_dir is not None:
            result["champion"] = self.compare_with_champion(
                Path(champion_dir), Path(dataset_dir), test, truth, self.predicted(logits, truth, info), model_scores,
                info, config)
        return result

    def compare_with_champion(self, champion_dir: Path, dataset_dir: Path, test, truth, predicted,
                              model_scores: dict, info: dict, config) -> dict:
        """The champion's export scored on the candidate's test split: its scores (``model``), the candidate's
        gains over it (``delta``) and their paired 95% intervals (``intervals``); or ``{"error": why}`` where it
        cannot be scored on this split (:mod:`kftune.tracking.champion`)."""
        from kftune.tasks.bootstrap import paired_intervals
        from kftune.tracking.champion import NotComparable

        try:
            champion = self.open_export(champion_dir, batch_size=config.batch_size)
            if champion.info.get("task", self.name) != self.name:
                raise NotComparable(f"it is a {champion.info['task']} model")
            if champion.info.get("labels") != info.get("labels"):
                raise NotComparable(f"its labels {champion.info.get('labels')} differ from the candidate's "
                                    f"{info.get('labels')}")
            logits = self.champion_logits(champion, test, same_tokens(champion, dataset_dir))
            theirs = self.predicted(logits, truth, champion.info)
            scores = self.scores(logits, truth, champion.info, full=True)
            intervals = paired_intervals(self.example_statistics(truth, predicted, info),
                                         self.example_statistics(truth, theirs, champion.info),
                                         lambda sums: self.scores_from_sums(sums, info), self.gain)
        except Exception as e:  # noqa: BLE001 -- the candidate's own evaluation stands; only its promotion waits
            log.warning("champion: not scored on this test split: %s", e)
            return {"error": str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__}
        return {"model": {k: float(scores[k]) for k in self.metrics},
                "delta": {k: float(self.gain(k, model_scores[k], scores[k])) for k in self.metrics},
                "intervals": {k: {"ci_low": v["ci_low"], "ci_high": v["ci_high"]} for k, v in intervals.items()}}

    def champion_logits(self, champion, test, same_tokens: bool) -> np.ndarray:
        """The champion's logits on the test split: on the split's own tokens where the champion's tokenizer and
        token limit are the candidate's, else on the split's texts as the champion's preprocess would treat them."""
        from kftune.inference.runners import predict_logits

        if same_tokens:
            return predict_logits(champion.run, test, champion.batch_size, champion.tokenizer.pad_token_id or 0)
        return champion.logits({name: list(test[name]) for name in self.text_fields})

    def predicted(self, logits: np.ndarray, labels: np.ndarray, info: dict):
        """The model's predictions that its scores are computed from (classes, label sets, numbers; token
        classification's tag sequences, of the words that ``labels`` label)."""
        return self.decisions(logits, info)

    def result_metrics(self, result: dict) -> tuple[str, ...]:
        return self.metrics + (("roc_auc",) if "roc_auc" in result["model"] else ())

    def flat_metrics(self, result: dict) -> dict[str, float]:
        flat = {f"model_{k}": result["model"][k] for k in self.result_metrics(result)}
        for name, scores in result["baselines"].items():
            flat.update({f"{name}_{k}": scores[k] for k in self.metrics})
        flat.update({f"delta_{k}": v for k, v in result["delta_vs_baseline"].items()})
        flat.update(interval_metrics(result))
        for label, scores in (result["model"].get("per_class") or result["model"].get("per_label") or {}).items():
            flat[f"model_f1_{label}"] = scores["f1"]
        flat["passed"] = float(result["passed"])
        return flat

    def summary_table(self, result: dict) -> tuple[list[str], list[tuple]]:
        keys = list(self.metrics)
        rows = [("fine-tuned model", *(result["model"][k] for k in keys))]
        for name, scores in result["baselines"].items():
            rows.append((f"baseline: {name}", *(scores[k] for k in keys)))
        rows.append((f"delta vs {result['baseline']}", *(result["delta_vs_baseline"][k] for k in keys)))
        return keys, rows + interval_rows(result, keys)

    # --- export, serving, prediction --------------------------------------------------
    def decisions(self, logits: np.ndarray, info: dict) -> np.ndarray | None:
        """The discrete predictions the ONNX parity check requires to be identical (None: logits only)."""
        return logits.argmax(-1)

    def outputs(self, logits: np.ndarray, info: dict) -> list[dict]:
        """One answer per example (V1 ``predictions``, a predict step's rows)."""
        raise NotImplementedError

    def v2_outputs(self, logits: np.ndarray, info: dict) -> list[tuple[str, str, np.ndarray]]:
        """The Open Inference outputs: (name, datatype, array) each."""
        raise NotImplementedError

    def answers(self, run_batch, tokenizer, inputs: dict[str, list[str]], info: dict, max_length: int,
                batch_size: int = 32) -> tuple[list[dict], list[tuple[str, str, np.ndarray]]]:
        """(one answer per example, the Open Inference outputs) for raw texts per field (``inputs``), run through
        ``run_batch`` (an ONNX Runtime or PyTorch runner): from the logits of the texts, cleaned and tokenized as
        preprocess did them."""
        from kftune.inference.runners import encode_texts, predict_logits

        encoded = encode_texts(tokenizer, inputs, self.text_fields, max_length)
        logits = predict_logits(run_batch, encoded, batch_size, tokenizer.pad_token_id or 0)
        return self.outputs(logits, info), self.v2_outputs(logits, info)

    def output_types(self, info: dict) -> list[dict]:
        """The Open Inference outputs' metadata (name, datatype, shape)."""
        width = self.head(info)["num_labels"]
        return [{"name": name, "datatype": datatype, "shape": [-1, *array.shape[1:]]}
                for name, datatype, array in self.v2_outputs(np.zeros((1, width), np.float32), info)]

    def open_export(self, model_dir: Path, **options):
        from kftune.inference.exported import ExportedEncoder

        return ExportedEncoder(model_dir, self, **options).load()

    def is_empty(self, text: str) -> bool:
        from kftune.data.text import clean_text

        return not clean_text(text)


def same_tokens(champion, dataset_dir: Path) -> bool:
    """Whether an export (``champion``) tokenizes as the dataset artifact did: the same vocabulary and token limit."""
    import json

    from transformers import AutoTokenizer

    from kftune.data.schema import STATS_FILE

    try:
        limit = json.loads((dataset_dir / STATS_FILE).read_text(encoding="utf-8"))["config"]["max_seq_length"]
        tokenizer = AutoTokenizer.from_pretrained(str(dataset_dir))
    except (OSError, ValueError, KeyError):
        return False
    return int(limit) == champion.max_seq_length and tokenizer.get_vocab() == champion.tokenizer.get_vocab()


def as_float(value):
    """A finite float, or None for a value that is not one."""
    import math

    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def label_values(frame, config) -> list | None:
    """The label column's values present in ``frame`` (lists count, blanks do not), or None without the column."""
    import pandas as pd

    if config.label_column not in set(map(str, frame.columns)):
        return None
    return [v for v in frame[config.label_column] if isinstance(v, (list, tuple, np.ndarray)) or not pd.isna(v)]
