"""An export directory opened for inference: what ``kftune serve`` and ``kftune predict`` share.

The export step writes one of two things, told apart by :func:`export_task`:

- classification: ``model.onnx`` (and ``model.int8.onnx`` when quantized), the tokenizer files,
  ``config.json``, ``labels.json`` and ``export_report.json`` (its ``max_seq_length``). An
  :class:`ExportedClassifier` runs it with ONNX Runtime on texts treated exactly as the evaluate
  step saw them: preprocess's cleaning (:func:`~kftune.data.text.clean_text`), the
  tokenizer with truncation at ``max_seq_length``, batches in length order padded per batch
  (:func:`~kftune.inference.runners.predict_logits`).
- causal-lm: the merged Hugging Face model with its tokenizer (and chat template) at the root,
  ``export_report.json`` naming ``task: causal-lm`` and its ``max_new_tokens``. An
  :class:`ExportedCausalLM` renders each text as one user turn with the export's chat template
  and answers greedily (:func:`~kftune.inference.generation.generate`), as the evaluate
  step answers its test prompts.

Each task's output for a text is a dict made by one function, :data:`TASK_OUTPUTS`
(:func:`classification_outputs`, :func:`causal_lm_outputs`), so serving and batch prediction
give the same fields.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from kftune.data.schema import LABELS_FILE, LabelMap, dataset_task
from kftune.errors import ConfigError, DataError
from kftune.tasks import TASKS, EncoderTask

log = logging.getLogger(__name__)

CLASSIFICATION, CAUSAL_LM = "classification", "causal-lm"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CONFIG_FILE = "config.json"
EXPORT_REPORT = "export_report.json"  # the export step's report: parity figures, max_seq_length, task
DEFAULT_MAX_SEQ_LENGTH = 128  # the pipelines' default
DEFAULT_MAX_NEW_TOKENS = 256  # for a causal-LM export that records none


# --- per-task outputs ----------------------------------------------------------------------------


def classification_outputs(logits: np.ndarray, labels: tuple[str, ...]) -> list[dict]:
    """One ``{"label", "label_id", "probabilities": {name: p}}`` per row of ``logits`` (serve's V1 answer): the
    classification task's ``outputs``."""
    return TASKS[CLASSIFICATION].outputs(np.asarray(logits, dtype=np.float32), {"labels": list(labels)})


def causal_lm_outputs(generations: list[str]) -> list[dict]:
    """One ``{"generation": text}`` per generated text."""
    return [{"generation": text} for text in generations]


TASK_OUTPUTS: dict[str, Callable[..., list[dict]]] = {
    **{name: task.outputs for name, task in TASKS.items() if isinstance(task, EncoderTask)},
    CAUSAL_LM: causal_lm_outputs,
}
"""The function that makes a task's per-text outputs, by the export's task (an encoder task's ``outputs``)."""


# --- the export directory ------------------------------------------------------------------------


def read_export_report(model_dir: Path) -> dict:
    """The export's ``export_report.json`` ({} when there is none)."""
    path = Path(model_dir) / EXPORT_REPORT
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path}: not JSON: {e}") from e
    if not isinstance(report, dict):
        raise DataError(f"{path}: expected a JSON object")
    return report


def export_task(model_dir: Path) -> str:
    """What the export in ``model_dir`` is for: its report's ``task``, else ``causal-lm`` where ``config.json``
    names a ``...ForCausalLM`` architecture, else ``classification`` (exports from before tasks had names)."""
    model_dir = Path(model_dir)
    try:
        report = json.loads((model_dir / EXPORT_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    task = report.get("task") if isinstance(report, dict) else None
    if task is None:
        try:
            architectures = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8")).get("architectures")
        except (OSError, ValueError, AttributeError):
            architectures = None
        causal = any(str(name).endswith("ForCausalLM") for name in architectures or ())
        task = CAUSAL_LM if causal else CLASSIFICATION
    if task not in TASK_OUTPUTS:
        raise DataError(f"model {model_dir}: {EXPORT_REPORT} names task {task!r}; kftune serves and predicts with "
                        f"exports of the tasks {', '.join(TASK_OUTPUTS)}")
    return task


def export_max_seq_length(model_dir: Path, default: int = DEFAULT_MAX_SEQ_LENGTH) -> int:
    """The token limit the export recorded (the preprocess step's), else ``default``."""
    try:
        value = json.loads((Path(model_dir) / EXPORT_REPORT).read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        value = None
    if not value:
        log.warning("%s records no max_seq_length; truncating texts at %d tokens", Path(model_dir) / EXPORT_REPORT,
                    default)
        return default
    return int(value)


def read_labels(model_dir: Path, config) -> tuple[str, ...]:
    """Label names in id order: ``labels.json`` where present, which must agree with ``config``'s ``id2label``."""
    from_config = tuple(config.id2label[i] for i in range(config.num_labels))
    if not (model_dir / LABELS_FILE).is_file():
        return from_config
    names = LabelMap.load(model_dir / LABELS_FILE).names
    if names != from_config:
        raise DataError(f"{model_dir}: {LABELS_FILE} labels {list(names)} differ from {CONFIG_FILE} id2label "
                        f"{list(from_config)}")
    return names


def check_export_dir(model_dir: Path, int8: bool = False) -> Path:
    """The ONNX file to run from ``model_dir``; raises :class:`DataError` naming what is missing."""
    if not model_dir.is_dir():
        raise DataError(f"model {model_dir}: no such directory; expected an export directory (model.onnx, "
                        "tokenizer files, config.json, labels.json)")
    onnx_file = model_dir / (INT8_FILE if int8 else ONNX_FILE)
    if not onnx_file.is_file():
        hint = ""
        if (model_dir / "latest").is_file():
            hint = " (this looks like a publish location: use one of its versions, e.g. <uri>/v1)"
        elif (model_dir / "model.safetensors").is_file():
            hint = " (this looks like a trained Hugging Face model: use the export step's output)"
        elif int8 and (model_dir / ONNX_FILE).is_file():
            hint = " (the export ran without quantize_int8: run without --int8)"
        raise DataError(f"model {model_dir}: no {onnx_file.name}{hint}")
    for name in (CONFIG_FILE, "tokenizer_config.json"):
        if not (model_dir / name).is_file():
            raise DataError(f"model {model_dir}: no {name}; expected an export directory with the tokenizer and "
                            "config the export step writes")
    return onnx_file


@contextlib.contextmanager
def local_export(model: str) -> Iterator[Path]:
    """``model`` as a local directory: itself, or an ``s3://`` / ``gs://`` URI's objects fetched to a temporary one."""
    from kftune.storage import fetch, is_remote

    if not is_remote(model):
        yield Path(model).expanduser()
        return
    with tempfile.TemporaryDirectory(prefix="kftune-model-") as tmp:
        fetch(model, tmp)
        try:
            yield Path(tmp)
        except DataError as e:  # name the URI, not the temporary copy
            raise DataError(str(e).replace(tmp, model.rstrip("/"))) from e


# --- CPU threads ---------------------------------------------------------------------------------


def _cgroup_cpu_limit() -> float | None:
    """The container's CPU limit in CPUs (cgroup v2 ``cpu.max``, else v1 CFS quota), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not period.isdigit() or int(period) == 0:
        return None
    return int(quota) / int(period)


def available_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a container CPU limit (a pod's ``limits.cpu``).

    ONNX Runtime's own default is one thread per physical core of the node, which in a pod limited
    to 1 CPU on a 64-core node means 64 threads sharing one CPU's quota.
    """
    cpus = len(os.sched_getaffinity(0))
    limit = _cgroup_cpu_limit()
    return min(cpus, max(1, math.ceil(limit))) if limit else cpus


def session_options(threads: int):
    """ONNX Runtime session options for inference: all graph optimisations, ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


# --- classification ------------------------------------------------------------------------------


class EncodedTexts:
    """Tokenizer output shaped like a ``datasets`` split, for :func:`predict_logits`."""

    def __init__(self, encoding):
        from kftune.inference.runners import MODEL_INPUTS

        self._columns = {name: encoding[name] for name in MODEL_INPUTS if name in encoding}
        self.column_names = list(self._columns)

    def __getitem__(self, name: str) -> list[list[int]]:
        return self._columns[name]

    def __len__(self) -> int:
        return len(self._columns["input_ids"])


class EmptyText(DataError):
    """A text that is empty once cleaned; ``index`` is its position in the list given."""

    def __init__(self, index: int):
        super().__init__(f"text {index} is empty (after whitespace and markup are removed); expected some text")
        self.index = index


def cleaned_texts(texts: list[str]) -> list[str]:
    """``texts`` cleaned as preprocess cleans them; raises :class:`EmptyText` for the first that comes out empty."""
    from kftune.data.text import clean_text

    cleaned = [clean_text(t) for t in texts]
    for i, text in enumerate(cleaned):
        if not text:
            raise EmptyText(i)
    return cleaned


class ExportedClassifier:
    """A classification export on ONNX Runtime: :meth:`load`, then :meth:`logits` / :meth:`predict` on raw texts.

    ``max_seq_length`` 0 takes the export's; ``threads`` 0 the CPUs the process may use.
    """

    task = CLASSIFICATION
    """The export's task (any encoder task: classification, regression, multilabel), set by :meth:`load`."""

    def __init__(self, model_dir: str | Path, *, int8: bool = False, max_seq_length: int = 0, batch_size: int = 32,
                 threads: int = 0):
        self.model_dir = Path(model_dir)
        self.int8 = int8
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.threads = threads
        self.labels: tuple[str, ...] = ()
        self.onnx_file: Path | None = None
        self._tokenizer = None
        self._run = None

    def load(self) -> ExportedClassifier:
        """Open the ONNX model and tokenizer and check them on one text."""
        import onnxruntime as ort
        from transformers import AutoConfig, AutoTokenizer

        from kftune.inference.runners import onnx_runner

        self.onnx_file = check_export_dir(self.model_dir, self.int8)
        config = AutoConfig.from_pretrained(str(self.model_dir))
        self.info = dataset_task(self.model_dir)
        self.task = self.info["task"]
        if self.task == CLASSIFICATION:
            self.labels = read_labels(self.model_dir, config)
            self.info = {**self.info, "labels": list(self.labels)}
        else:
            self.labels = tuple(self.info.get("labels") or ())
        if not self.max_seq_length:
            self.max_seq_length = export_max_seq_length(self.model_dir)
        positions = getattr(config, "max_position_embeddings", None)
        if positions and self.max_seq_length > positions:
            raise ConfigError(f"max_seq_length {self.max_seq_length} exceeds the model's "
                              f"max_position_embeddings ({positions})")
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.threads = self.threads or available_cpus()
        session = ort.InferenceSession(str(self.onnx_file), session_options(self.threads),
                                       providers=["CPUExecutionProvider"])
        self._run = onnx_runner(session)
        width = self.logits(["kftune checks the model on this text"]).shape[-1]  # per text, or per piece
        expected = TASKS[self.task].head(self.info)["num_labels"]
        if width != expected:
            raise DataError(f"model {self.model_dir}: {self.onnx_file.name} gives {width} logits per text but its "
                            f"task {self.task} expects {expected}"
                            + (f" (labels {list(self.labels)})" if self.labels else ""))
        return self

    def logits(self, texts: list[str]) -> np.ndarray:
        """Logits ``[len(texts), num_labels]`` for raw texts, cleaned and tokenized as preprocess does."""
        from kftune.inference.runners import predict_logits

        encoded = self._tokenizer(cleaned_texts(texts), truncation=True, max_length=self.max_seq_length)
        return predict_logits(self._run, EncodedTexts(encoded), self.batch_size, self._tokenizer.pad_token_id or 0)

    @property
    def token_level(self) -> bool:
        """Whether the task answers per word (token classification): its answers need the texts themselves."""
        return TASKS[self.task].token_level

    def predict(self, texts: list[str], progress: bool = False) -> list[dict]:
        """The task's ``outputs`` for ``texts`` (``progress`` is for the causal LM's signature: none here); a
        token-level task's ``text_outputs`` (entities with character offsets into the texts as given)."""
        task = TASKS[self.task]
        if self.token_level:
            return task.text_outputs(self._run, self._tokenizer, texts, self.info, self.max_seq_length,
                                     self.batch_size)
        return task.outputs(self.logits(texts), self.info)

    def v2_outputs(self, logits: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
        return TASKS[self.task].v2_outputs(logits, self.info)

    def v2_answers(self, outputs: list[dict]) -> list[tuple[str, str, np.ndarray]]:
        """A token-level task's Open Inference outputs of its :meth:`predict` answers."""
        return TASKS[self.task].v2_text_outputs(outputs)


# --- causal-lm -----------------------------------------------------------------------------------


class ExportedCausalLM:
    """A causal-LM export on PyTorch: :meth:`load`, then :meth:`predict` greedy answers to raw texts.

    ``max_new_tokens`` 0 takes the export's (the evaluate step's budget); ``threads`` 0 the CPUs the
    process may use.
    """

    task = CAUSAL_LM

    def __init__(self, model_dir: str | Path, *, max_new_tokens: int = 0, batch_size: int = 16, threads: int = 0):
        self.model_dir = Path(model_dir)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.threads = threads
        self.model = None
        self.tokenizer = None

    def load(self) -> ExportedCausalLM:
        """Open the model and tokenizer (with its chat template) and settle the token budget."""
        import torch

        from kftune.data.chat import ensure_chat_template
        from kftune.inference.generation import load_causal_lm

        for name in (CONFIG_FILE, "tokenizer_config.json"):
            if not (self.model_dir / name).is_file():
                raise DataError(f"model {self.model_dir}: no {name}; expected a causal-LM export directory (the "
                                "merged model, its tokenizer and export_report.json at its root)")
        report = read_export_report(self.model_dir)
        torch.set_num_threads(self.threads or available_cpus())
        self.model, self.tokenizer = load_causal_lm(self.model_dir)
        ensure_chat_template(self.tokenizer)  # preprocess gave a template-less tokenizer the plain one, and saved it
        if not self.max_new_tokens:
            self.max_new_tokens = int(report.get("max_new_tokens") or 0)
            if not self.max_new_tokens:
                log.warning("%s records no max_new_tokens; generating at most %d tokens",
                            self.model_dir / EXPORT_REPORT, DEFAULT_MAX_NEW_TOKENS)
                self.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        return self

    def prompts(self, texts: list[str]) -> list[str]:
        """Each text as one user turn, rendered with the export's chat template up to the assistant's answer."""
        from kftune.data.chat import render

        for i, text in enumerate(texts):
            if not text.strip():
                raise EmptyText(i)
        return [render(self.tokenizer, [{"role": "user", "content": text}], generation_prompt=True)
                for text in texts]

    def predict(self, texts: list[str], progress: bool = True) -> list[dict]:
        """:func:`causal_lm_outputs` for ``texts``: greedy, at most ``max_new_tokens`` tokens each
        (``progress``: with a progress bar of the batches)."""
        from kftune.inference.generation import generate

        generations = generate(self.model, self.tokenizer, self.prompts(texts), self.max_new_tokens,
                               self.batch_size, desc="generating", progress=progress)
        return causal_lm_outputs(generations)


def open_export(model_dir: str | Path, *, int8: bool = False, max_seq_length: int = 0, max_new_tokens: int = 0,
                batch_size: int = 32, threads: int = 0) -> ExportedClassifier | ExportedCausalLM:
    """The export in ``model_dir``, loaded as its task says (settings of the other task are ignored)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DataError(f"model {model_dir}: no such directory; expected an export directory (the export step's "
                        "output)")
    if export_task(model_dir) == CAUSAL_LM:
        if int8:
            raise ConfigError("int8 runs a classification export's model.int8.onnx; a causal-LM export has none")
        return ExportedCausalLM(model_dir, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                threads=threads).load()
    return ExportedClassifier(model_dir, int8=int8, max_seq_length=max_seq_length, batch_size=batch_size,
                              threads=threads).load()
