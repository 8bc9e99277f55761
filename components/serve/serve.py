"""Serve an exported model with KServe's Python model server, predicting with ONNX Runtime.

:func:`serve` serves what the export holds: a classification model as below, a causal LM over
OpenAI-compatible endpoints (:mod:`kftune.components.serve.generative`), told apart by
:func:`export_task`.

:class:`TextClassifier` is a ``kserve.Model``. ``load()`` opens an export directory (what the
export step writes: ``model.onnx``, the tokenizer files, ``config.json``, ``labels.json``),
starts an ONNX Runtime session, runs one warm-up text and marks the model ready. Requests:

- V1 (``POST /v1/models/<name>:predict``): ``{"instances": ["text", ...]}`` or
  ``{"instances": [{"text": "..."}, ...]}``, answered with
  ``{"predictions": [{"label": "positive", "label_id": 1, "probabilities": {"negative": 0.1,
  "positive": 0.9}}, ...]}``, one prediction per instance, in order.
- Open Inference / V2 (``POST /v2/models/<name>/infer``, and gRPC ``ModelInfer``): one input
  ``text``, datatype ``BYTES``, shape ``[n]``; answered with the outputs ``label`` (BYTES
  ``[n]``), ``label_id`` (INT64 ``[n]``) and ``probabilities`` (FP32 ``[n, num_labels]``, columns
  in label id order).

Texts go through exactly what the evaluate step saw: preprocess's cleaning
(:func:`~kftune.components.common.text.clean_text`), the tokenizer with truncation at
``max_seq_length`` (preprocess's, 128 by default), batches in length order padded per batch
(:func:`~kftune.components.common.inference.predict_logits`). So the served predictions are the
evaluate step's, up to the ONNX/PyTorch difference that export checked (max |logit diff| within
its ``atol``, every test prediction identical).

A malformed request is answered with HTTP 400 (gRPC ``INVALID_ARGUMENT``) and a message saying
what was expected: ``kserve.errors.InvalidInput``, which kserve's server maps; an unknown model
name is kserve's own 404. Nothing a client sends makes the server fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import kserve
import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid

from kftune.components.common.errors import ConfigError, DataError
from kftune.components.common.inference import MODEL_INPUTS, onnx_runner, predict_logits, softmax
from kftune.components.common.schema import LABELS_FILE, LabelMap, dataset_task
from kftune.components.common.storage import fetch, is_remote
from kftune.components.common.tasks import TASKS, encoder_task
from kftune.components.common.text import clean_text
from kftune.components.serve.config import ServeConfig

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CONFIG_FILE = "config.json"
EXPORT_REPORT = "export_report.json"  # the export step's report: parity figures, max_seq_length
DEFAULT_MAX_SEQ_LENGTH = 128  # the pipelines' default
TEXT_INPUT = "text"
"""Name of the V2 input tensor holding the texts."""


class EncodedTexts:
    """Tokenizer output shaped like a ``datasets`` split, for :func:`predict_logits`."""

    def __init__(self, encoding):
        self._columns = {name: encoding[name] for name in MODEL_INPUTS if name in encoding}
        self.column_names = list(self._columns)

    def __getitem__(self, name: str) -> list[list[int]]:
        return self._columns[name]

    def __len__(self) -> int:
        return len(self._columns["input_ids"])


def _describe(value) -> str:
    """A short description of a request value for an error message: its JSON type, and the value if scalar."""
    if value is None:
        return "null"
    kind = {str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value))
    if kind:
        return f"{kind} {json.dumps(value)[:40]}"
    return {list: "list", dict: "object", bytes: "bytes"}.get(type(value), type(value).__name__)


def texts_from_v1(payload) -> list[str]:
    """The texts of a V1 request body: ``{"instances": ["text", ...]}`` or ``[{"text": "..."}, ...]``."""
    expected = 'expected a JSON object {"instances": ["text", ...]} (or [{"text": "..."}, ...])'
    if not isinstance(payload, dict):
        raise InvalidInput(f"{expected}, got {_describe(payload)}; send it with Content-Type: application/json")
    if "instances" not in payload:
        keys = ", ".join(repr(k) for k in payload) or "none"
        hint = " (an Open Inference request goes to /v2/models/<name>/infer)" if "inputs" in payload else ""
        raise InvalidInput(f'{expected}; the object has no "instances" (its keys: {keys}){hint}')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f'"instances" must be a list of texts, got {_describe(instances)}')
    texts = []
    for i, item in enumerate(instances):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            got = 'an object without a string "text"' if isinstance(item, dict) else _describe(item)
            raise InvalidInput(f'instances[{i}]: expected a string or {{"text": "..."}}, got {got}')
        texts.append(text)
    return texts


def texts_from_v2(request: InferRequest) -> list[str]:
    """The texts of an Open Inference request: its ``text`` input, BYTES, shape ``[n]`` (or ``[n, 1]``)."""
    names = [i.name for i in request.inputs]
    if names != [TEXT_INPUT]:
        raise InvalidInput(f'expected one input named "{TEXT_INPUT}" (datatype BYTES, shape [n]), got inputs {names}')
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f'input "{TEXT_INPUT}" has datatype {tensor.datatype}; expected BYTES')
    if any(d < 0 for d in tensor.shape):
        raise InvalidInput(f'input "{TEXT_INPUT}" has shape {list(tensor.shape)}; expected [n], n the number of texts')
    try:
        array = tensor.as_numpy()
    except (ValueError, TypeError) as e:
        raise InvalidInput(f'input "{TEXT_INPUT}": its data does not fit its shape {tensor.shape}: {e}') from e
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InvalidInput(f'input "{TEXT_INPUT}" has shape {list(array.shape)}; expected [n] (or [n, 1])')
    texts = []
    for i, item in enumerate(array.tolist()):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidInput(f'input "{TEXT_INPUT}"[{i}] is not UTF-8 text: {e}') from e
        if not isinstance(item, str):
            raise InvalidInput(f'input "{TEXT_INPUT}"[{i}]: expected a string, got {_describe(item)}')
        texts.append(item)
    return texts


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
    """The ONNX file to serve from ``model_dir``; raises :class:`DataError` naming what is missing."""
    if not model_dir.is_dir():
        raise DataError(f"model {model_dir}: no such directory; expected an export directory (model.onnx, "
                        "tokenizer files, config.json, labels.json)")
    onnx_file = model_dir / (INT8_FILE if int8 else ONNX_FILE)
    if not onnx_file.is_file():
        hint = ""
        if (model_dir / "latest").is_file():
            hint = " (this looks like a publish location: serve one of its versions, e.g. <uri>/v1)"
        elif (model_dir / "model.safetensors").is_file():
            hint = " (this looks like a trained Hugging Face model: serve the export step's output)"
        elif int8 and (model_dir / ONNX_FILE).is_file():
            hint = " (the export ran without quantize_int8: serve without --int8)"
        raise DataError(f"model {model_dir}: no {onnx_file.name}{hint}")
    for name in (CONFIG_FILE, "tokenizer_config.json"):
        if not (model_dir / name).is_file():
            raise DataError(f"model {model_dir}: no {name}; expected an export directory with the tokenizer and "
                            "config the export step writes")
    return onnx_file


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
    """ONNX Runtime session options for serving: all graph optimisations, ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def export_max_seq_length(model_dir: Path, default: int = DEFAULT_MAX_SEQ_LENGTH) -> int:
    """The token limit the export recorded (the preprocess step's), else ``default``."""
    try:
        value = json.loads((model_dir / EXPORT_REPORT).read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        value = None
    if not value:
        log.warning("%s records no max_seq_length; truncating texts at %d tokens", model_dir / EXPORT_REPORT, default)
        return default
    return int(value)


class TextClassifier(kserve.Model):
    """A kserve model that classifies texts with an exported ONNX model (see the module docstring)."""

    def __init__(self, name: str, model_dir: str | Path, config: ServeConfig | None = None):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.config = config or ServeConfig(model_name=name)
        self.labels: tuple[str, ...] = ()
        self.task, self.info = None, {}
        self._tokenizer = None
        self._session = None
        self._run = None

    def load(self) -> bool:
        """Open the ONNX model and tokenizer, check them on one text, and mark the model ready."""
        import onnxruntime as ort
        from transformers import AutoConfig, AutoTokenizer

        onnx_file = check_export_dir(self.model_dir, self.config.int8)
        config = AutoConfig.from_pretrained(str(self.model_dir))
        self.info = dataset_task(self.model_dir)
        self.task = encoder_task(self.info["task"])
        if self.task.name == CLASSIFICATION:
            self.labels = read_labels(self.model_dir, config)
            self.info = {**self.info, "labels": list(self.labels)}
        else:
            self.labels = tuple(self.info.get("labels") or ())
        if not self.config.max_seq_length:
            self.config = replace(self.config, max_seq_length=export_max_seq_length(self.model_dir))
        positions = getattr(config, "max_position_embeddings", None)
        if positions and self.config.max_seq_length > positions:
            raise ConfigError(f"max_seq_length {self.config.max_seq_length} exceeds the model's "
                              f"max_position_embeddings ({positions})")
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        threads = self.config.threads or available_cpus()
        self._session = ort.InferenceSession(str(onnx_file), session_options(threads),
                                             providers=["CPUExecutionProvider"])
        self._run = onnx_runner(self._session)
        width, expected = self.logits(["kftune checks the model on this text"]).shape[-1], self.task.head(
            self.info)["num_labels"]
        if width != expected:
            raise DataError(f"model {self.model_dir}: {onnx_file.name} gives {width} logits per text but its task "
                            f"{self.task.name} expects {expected}" + (f" (labels {list(self.labels)})" if self.labels
                                                                       else ""))
        self.ready = True
        log.info("model %r (%s) loaded from %s: %s, labels %s, max_seq_length %d, %d intra-op thread(s)", self.name,
                 self.task.name, self.model_dir, onnx_file.name, list(self.labels), self.config.max_seq_length, threads)
        return self.ready

    # workers > 1: kserve hands the model to each HTTP worker process by pickling it (spawn).
    # An ONNX Runtime session cannot be pickled, so each worker loads its own, in a thread: the
    # parent kills a worker that does not answer its liveness ping within 5 s, and the ping is
    # answered only once unpickling is over. Until its copy is loaded a worker reports the
    # model not ready (HTTP 503).
    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_tokenizer=None, _session=None, _run=None, ready=False, _load_in_worker=self.ready)
        return state

    def __setstate__(self, state):
        load = state.pop("_load_in_worker", False)
        self.__dict__.update(state)
        if load:
            threading.Thread(target=self._load_logged, name="kftune-load", daemon=True).start()

    def _load_logged(self) -> None:
        try:
            self.load()
        except Exception:
            log.exception("worker %d could not load model %r from %s", os.getpid(), self.name, self.model_dir)

    def logits(self, texts: list[str]) -> np.ndarray:
        """Logits ``[len(texts), num_labels]`` for raw texts, tokenized as preprocess does."""
        cleaned = [clean_text(t) for t in texts]
        for i, text in enumerate(cleaned):
            if not text:
                raise InvalidInput(f"text {i} is empty (after whitespace and markup are removed); expected some text")
        encoded = self._tokenizer(cleaned, truncation=True, max_length=self.config.max_seq_length)
        return predict_logits(self._run, EncodedTexts(encoded), self.config.batch_size,
                              self._tokenizer.pad_token_id or 0)

    def check_count(self, texts: list[str]) -> None:
        if not texts:
            raise InvalidInput("no texts given; expected at least one")
        if len(texts) > self.config.max_instances:
            raise InvalidInput(f"{len(texts)} texts in one request; at most {self.config.max_instances} are "
                               "accepted (split the request)")

    def checked_logits(self, texts: list[str]) -> np.ndarray:
        self.check_count(texts)
        return self.logits(texts)

    def classify(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """classification: (label ids ``[n]`` int64, probabilities ``[n, num_labels]`` float32) for ``texts``."""
        probabilities = softmax(self.checked_logits(texts)).astype(np.float32)
        return probabilities.argmax(axis=1).astype(np.int64), probabilities

    def text_answers(self, texts: list[str]) -> list:
        """Token-level tasks: each text's answer (entities with character offsets into the text as sent)."""
        self.check_count(texts)
        return self.task.text_outputs(self._run, self._tokenizer, texts, self.info, self.config.max_seq_length,
                                      self.config.batch_size)

    async def predict(self, payload, headers=None, response_headers=None):
        """Answer a V1 body (a dict) or an Open Inference request (an ``InferRequest``) with the task's outputs."""
        v2 = isinstance(payload, InferRequest)
        texts = texts_from_v2(payload) if v2 else texts_from_v1(payload)
        # Inference off the event loop, so health checks and other requests are answered meanwhile.
        loop = asyncio.get_running_loop()
        if self.task.token_level:  # answers need the texts themselves (character offsets)
            answers = await loop.run_in_executor(None, self.text_answers, texts)
            if not v2:
                return {"predictions": answers}
            arrays = self.task.v2_text_outputs(answers)
        else:
            logits = await loop.run_in_executor(None, self.checked_logits, texts)
            if not v2:
                return {"predictions": self.task.outputs(logits, self.info)}
            arrays = self.task.v2_outputs(logits, self.info)
        outputs = [InferOutput(name, list(array.shape), datatype, array) for name, datatype, array in arrays]
        return InferResponse(payload.id or generate_uuid(), self.name, outputs,
                             use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs)

    def get_input_types(self) -> list[dict]:
        return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        if self.task.token_level:
            return [{"name": name, "datatype": datatype, "shape": [-1]}
                    for name, datatype, _ in self.task.v2_text_outputs([[]])]
        example = self.task.v2_outputs(np.zeros((1, self.task.head(self.info)["num_labels"]), np.float32), self.info)
        return [{"name": name, "datatype": datatype, "shape": [-1, *array.shape[1:]]}
                for name, datatype, array in example]


CLASSIFICATION, CAUSAL_LM = "classification", "causal-lm"


def export_task(model_dir: Path) -> str:
    """What the export in ``model_dir`` is for: its report's ``task``, else ``causal-lm`` where ``config.json``
    names a ``...ForCausalLM`` architecture, else ``classification`` (exports from before tasks had names)."""
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
    if task not in TASKS:
        raise DataError(f"model {model_dir}: {EXPORT_REPORT} names task {task!r}; kftune serve serves exports of "
                        f"the tasks {', '.join(TASKS)}")
    return task


def serve(model: str, config: ServeConfig) -> None:
    """Load ``model`` (a local export directory, or an ``s3://`` / ``gs://`` URI of one) and serve it until stopped."""
    config.validate()
    with contextlib.ExitStack() as stack:
        model_dir = Path(model).expanduser()
        if is_remote(model):
            model_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kftune-serve-")))
            fetch(model, model_dir)
        try:
            if export_task(model_dir) == CAUSAL_LM:
                from kftune.components.serve.generative import CausalLM, serve_openai

                generator = CausalLM(config.model_name, model_dir, config)
                generator.load()
            else:
                generator = None
                classifier = TextClassifier(config.model_name, model_dir, config)
                classifier.load()
        except DataError as e:
            if is_remote(model):  # name the URI, not the temporary copy
                raise DataError(str(e).replace(str(model_dir), model)) from e
            raise
        if generator is not None:
            serve_openai(generator, config)
            return
        log.info("serving model %r, labels %s: HTTP on port %d (V1 /v1/models/%s:predict, V2 /v2/models/%s/infer)%s, "
                 "%d worker(s)", config.model_name, list(classifier.labels), config.http_port, config.model_name,
                 config.model_name, f", gRPC on port {config.grpc_port}" if config.grpc else "", config.workers)
        kserve.ModelServer(http_port=config.http_port, grpc_port=config.grpc_port, workers=config.workers,
                           enable_grpc=config.grpc).start([classifier])
