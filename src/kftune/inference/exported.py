"""An export directory opened for inference: what ``kftune serve`` and ``kftune predict`` share.

The export step writes what its task's ``export_format`` says (the registry's
:func:`~kftune.tasks.export_task` reads which task an export is for, and
:func:`~kftune.tasks.open_export` opens it as that task says):

- ``onnx``: ``model.onnx`` (and ``model.int8.onnx`` when quantized), the tokenizer files,
  ``config.json``, ``task.json`` (``labels.json`` for classes) and ``export_report.json`` (its
  ``max_seq_length``). An :class:`ExportedEncoder` runs it with ONNX Runtime on texts treated
  exactly as the evaluate step saw them: preprocess's cleaning (:func:`~kftune.data.text.clean_text`),
  the tokenizer with truncation at ``max_seq_length``, batches in length order padded per batch
  (:func:`~kftune.inference.runners.predict_logits`); its task turns the logits into answers.
- ``huggingface``: a causal LM's merged model with its tokenizer (and chat template) at the root,
  ``export_report.json`` naming the task and its ``max_new_tokens``. An :class:`ExportedCausalLM`
  renders each text as one user turn with the export's chat template and answers greedily
  (:func:`~kftune.inference.generation.generate`), as the evaluate step answers its test prompts.

Either answers ``predict(inputs)`` with one dict per example, the same fields in serving and in
batch prediction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kftune.cpus import available_cpus
from kftune.data.schema import EXPORT_REPORT, LABELS_FILE, LabelMap, dataset_task
from kftune.errors import ConfigError, DataError
from kftune.inference.runners import EmptyText, encode_texts, predict_logits

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CONFIG_FILE = "config.json"
DEFAULT_MAX_SEQ_LENGTH = 128  # the pipelines' default
DEFAULT_MAX_NEW_TOKENS = 256  # for a causal-LM export that records none
__all__ = ["EmptyText", "ExportedCausalLM", "ExportedEncoder", "local_export", "read_export_report"]


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


class ExportedEncoder:
    """An ONNX export of an encoder task: :meth:`load`, then :meth:`predict` (answers) or :meth:`logits` on raw
    texts. ``task`` is the export's task (:class:`~kftune.tasks.encoder.EncoderTask`), which makes the answers.

    ``max_seq_length`` 0 takes the export's; ``threads`` 0 the CPUs the process may use.
    """

    def __init__(self, model_dir: str | Path, task, *, int8: bool = False, max_seq_length: int = 0,
                 batch_size: int = 32, threads: int = 0, **ignored):
        self.model_dir = Path(model_dir)
        self.task = task
        self.int8 = int8
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.threads = threads
        self.labels: tuple[str, ...] = ()
        self.info: dict = {}
        self.onnx_file: Path | None = None
        self.tokenizer = None
        self.run = None

    @property
    def input_fields(self) -> tuple[str, ...]:
        """The texts of one example (``text``; a sentence pair's two)."""
        return self.task.text_fields

    def load(self) -> ExportedEncoder:
        """Open the ONNX model and tokenizer and check them on one example."""
        import onnxruntime as ort
        from transformers import AutoConfig, AutoTokenizer

        from kftune.inference.runners import onnx_runner

        self.onnx_file = check_export_dir(self.model_dir, self.int8)
        config = AutoConfig.from_pretrained(str(self.model_dir))
        self.info = dataset_task(self.model_dir)
        if (self.model_dir / LABELS_FILE).is_file():
            self.info = {**self.info, "labels": list(read_labels(self.model_dir, config))}
        self.labels = tuple(self.info.get("labels") or ())
        if not self.max_seq_length:
            self.max_seq_length = export_max_seq_length(self.model_dir)
        positions = getattr(config, "max_position_embeddings", None)
        if positions and self.max_seq_length > positions:
            raise ConfigError(f"max_seq_length {self.max_seq_length} exceeds the model's "
                              f"max_position_embeddings ({positions})")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.threads = self.threads or available_cpus()
        session = ort.InferenceSession(str(self.onnx_file), session_options(self.threads),
                                       providers=["CPUExecutionProvider"])
        self.run = onnx_runner(session)
        width = self.logits({name: ["kftune checks the model on this text"] for name in self.input_fields}).shape[-1]
        expected = self.task.head(self.info)["num_labels"]
        if width != expected:
            raise DataError(f"model {self.model_dir}: {self.onnx_file.name} gives {width} logits per text but its "
                            f"task {self.task.name} expects {expected}"
                            + (f" (labels {list(self.labels)})" if self.labels else ""))
        return self

    def columns(self, inputs) -> dict[str, list[str]]:
        """``inputs`` as texts per field: a list of texts is the ``text`` field's."""
        return {"text": list(inputs)} if isinstance(inputs, list | tuple) else dict(inputs)

    def logits(self, inputs) -> np.ndarray:
        """Logits for raw texts (a list, or texts per field), cleaned and tokenized as preprocess does."""
        encoded = encode_texts(self.tokenizer, self.columns(inputs), self.input_fields, self.max_seq_length)
        return predict_logits(self.run, encoded, self.batch_size, self.tokenizer.pad_token_id or 0)

    def answers(self, inputs) -> tuple[list[dict], list[tuple[str, str, np.ndarray]]]:
        """(one answer per example, the Open Inference outputs) for raw texts (a list, or texts per field)."""
        return self.task.answers(self.run, self.tokenizer, self.columns(inputs), self.info, self.max_seq_length,
                                 self.batch_size)

    def predict(self, inputs, progress: bool = False) -> list[dict]:
        """One answer per example (``progress`` is for the causal LM's signature: none here)."""
        return self.answers(inputs)[0]

    def output_types(self) -> list[dict]:
        """The Open Inference outputs' metadata (name, datatype, shape)."""
        return self.task.output_types(self.info)


class ExportedCausalLM:
    """A causal-LM export on PyTorch: :meth:`load`, then :meth:`predict` greedy answers to raw texts.

    ``max_new_tokens`` 0 takes the export's (the evaluate step's budget); ``threads`` 0 the CPUs the
    process may use.
    """

    input_fields = ("text",)

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
        from kftune.models.causal_lm import load_causal_lm

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

    def predict(self, inputs, progress: bool = True) -> list[dict]:
        """``{"generation": text}`` for each text (a list, or ``{"text": [...]}``): greedy, at most
        ``max_new_tokens`` tokens each (``progress``: with a progress bar of the batches)."""
        from kftune.inference.generation import generate

        texts = list(inputs) if isinstance(inputs, list | tuple) else list(inputs["text"])
        generations = generate(self.model, self.tokenizer, self.prompts(texts), self.max_new_tokens,
                               self.batch_size, desc="generating", progress=progress)
        return [{"generation": text} for text in generations]
