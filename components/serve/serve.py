"""Serve an exported model with KServe's Python model server.

:func:`serve` serves what the export holds, over the protocol its task names (``serving``): an
encoder's ONNX export as below, a causal LM over OpenAI-compatible endpoints
(:mod:`kftune.components.serve.openai_server`).

:class:`TextModel` is a ``kserve.Model``. ``load()`` opens an export directory (what the export
step writes: ``model.onnx``, the tokenizer files, ``config.json``, ``task.json``), starts an ONNX
Runtime session, runs one warm-up example and marks the model ready. Requests:

- V1 (``POST /v1/models/<name>:predict``): ``{"instances": ["text", ...]}`` or
  ``{"instances": [{"text": "..."}, ...]}`` (a task of several texts per example names each:
  ``{"text": "...", "text_pair": "..."}``), answered with ``{"predictions": [...]}``, one answer
  per instance, in order, as the task makes it (a classifier's ``{"label": "positive",
  "label_id": 1, "probabilities": {"negative": 0.1, "positive": 0.9}}``).
- Open Inference / V2 (``POST /v2/models/<name>/infer``, and gRPC ``ModelInfer``): one input per
  text field (``text``), datatype ``BYTES``, shape ``[n]``; answered with the task's outputs (a
  classifier's ``label`` BYTES ``[n]``, ``label_id`` INT64 ``[n]`` and ``probabilities`` FP32
  ``[n, num_labels]``, columns in label id order).

Loading and prediction are :class:`~kftune.inference.exported.ExportedEncoder`'s, which
``kftune predict`` shares, so served and batch predictions agree. Texts go through exactly what the
evaluate step saw: preprocess's cleaning (:func:`~kftune.data.text.clean_text`), the tokenizer with
truncation at ``max_seq_length`` (preprocess's, 128 by default), batches in length order padded per
batch (:func:`~kftune.inference.runners.predict_logits`). So the served predictions are the
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

from kftune.components.serve.config import ServeConfig
from kftune.errors import DataError
from kftune.inference.runners import EmptyText
from kftune.storage import fetch, is_remote
from kftune.tasks import export_task, open_export, task_named

log = logging.getLogger(__name__)

TEXT_INPUT = "text"
"""Name of the V2 input tensor holding the texts."""


def _describe(value) -> str:
    """A short description of a request value for an error message: its JSON type, and the value if scalar."""
    if value is None:
        return "null"
    kind = {str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value))
    if kind:
        return f"{kind} {json.dumps(value)[:40]}"
    return {list: "list", dict: "object", bytes: "bytes"}.get(type(value), type(value).__name__)


def texts_from_v1(payload, fields: tuple[str, ...] = (TEXT_INPUT,)) -> dict[str, list[str]]:
    """The texts of a V1 request body, per input field: ``{"instances": ["text", ...]}`` or
    ``[{"text": "..."}, ...]`` (a task of several texts: ``[{"text": "...", "text_pair": "..."}, ...]``)."""
    one = fields == (TEXT_INPUT,)
    shape = "{" + ", ".join(f'"{name}": "..."' for name in fields) + "}"
    expected = (f'expected a JSON object {{"instances": ["text", ...]}} (or [{shape}, ...])' if one
                else f'expected a JSON object {{"instances": [{shape}, ...]}}')
    if not isinstance(payload, dict):
        raise InvalidInput(f"{expected}, got {_describe(payload)}; send it with Content-Type: application/json")
    if "instances" not in payload:
        keys = ", ".join(repr(k) for k in payload) or "none"
        hint = " (an Open Inference request goes to /v2/models/<name>/infer)" if "inputs" in payload else ""
        raise InvalidInput(f'{expected}; the object has no "instances" (its keys: {keys}){hint}')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f'"instances" must be a list of {"texts" if one else "objects"}, got '
                           f"{_describe(instances)}")
    texts: dict[str, list[str]] = {name: [] for name in fields}
    for i, item in enumerate(instances):
        if one and not isinstance(item, dict):
            item = {TEXT_INPUT: item}
        for name in fields:
            text = item.get(name) if isinstance(item, dict) else None
            if not isinstance(text, str):
                got = f'an object without a string "{name}"' if isinstance(item, dict) else _describe(item)
                raise InvalidInput(f"instances[{i}]: expected {'a string or ' if one else ''}{shape}, got {got}")
            texts[name].append(text)
    return texts


def _v2_texts(tensor) -> list[str]:
    """The texts of one BYTES input, shape ``[n]`` (or ``[n, 1]``)."""
    name = tensor.name
    if tensor.datatype != "BYTES":
        raise InvalidInput(f'input "{name}" has datatype {tensor.datatype}; expected BYTES')
    if any(d < 0 for d in tensor.shape):
        raise InvalidInput(f'input "{name}" has shape {list(tensor.shape)}; expected [n], n the number of texts')
    try:
        array = tensor.as_numpy()
    except (ValueError, TypeError) as e:
        raise InvalidInput(f'input "{name}": its data does not fit its shape {tensor.shape}: {e}') from e
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InvalidInput(f'input "{name}" has shape {list(array.shape)}; expected [n] (or [n, 1])')
    texts = []
    for i, item in enumerate(array.tolist()):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidInput(f'input "{name}"[{i}] is not UTF-8 text: {e}') from e
        if not isinstance(item, str):
            raise InvalidInput(f'input "{name}"[{i}]: expected a string, got {_describe(item)}')
        texts.append(item)
    return texts


def texts_from_v2(request: InferRequest, fields: tuple[str, ...] = (TEXT_INPUT,)) -> dict[str, list[str]]:
    """The texts of an Open Inference request, per input field: one input per field (``text``; a task of
    several texts names each), BYTES, shape ``[n]`` (or ``[n, 1]``), the same n."""
    names = [i.name for i in request.inputs]
    if sorted(names) != sorted(fields):
        wanted = " and ".join(f'"{name}"' for name in fields)
        raise InvalidInput(f"expected {'one input named' if len(fields) == 1 else 'inputs named'} {wanted} "
                           f"(datatype BYTES, shape [n]), got inputs {names}")
    texts = {tensor.name: _v2_texts(tensor) for tensor in request.inputs}
    if len({len(v) for v in texts.values()}) > 1:
        raise InvalidInput(f"the inputs hold different numbers of texts: {[len(texts[n]) for n in fields]}")
    return texts


class TextModel(kserve.Model):
    """A kserve model answering texts with an exported ONNX model, as its task says (see the module docstring)."""

    def __init__(self, name: str, model_dir: str | Path, config: ServeConfig | None = None):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.config = config or ServeConfig(model_name=name)
        self.labels: tuple[str, ...] = ()
        self._model = None

    def load(self) -> bool:
        """Open the ONNX model and tokenizer, check them on one example, and mark the model ready."""
        self._model = open_export(self.model_dir, int8=self.config.int8, max_seq_length=self.config.max_seq_length,
                                  batch_size=self.config.batch_size, threads=self.config.threads)
        self.labels = self._model.labels
        self.config = replace(self.config, max_seq_length=self._model.max_seq_length)
        self.ready = True
        log.info("model %r loaded from %s: %s, labels %s, max_seq_length %d, %d intra-op thread(s)", self.name,
                 self.model_dir, self._model.onnx_file.name, list(self.labels), self.config.max_seq_length,
                 self._model.threads)
        return self.ready

    # workers > 1: kserve hands the model to each HTTP worker process by pickling it (spawn).
    # An ONNX Runtime session cannot be pickled, so each worker loads its own, in a thread: the
    # parent kills a worker that does not answer its liveness ping within 5 s, and the ping is
    # answered only once unpickling is over. Until its copy is loaded a worker reports the
    # model not ready (HTTP 503).
    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_model=None, ready=False, _load_in_worker=self.ready)
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

    def answers(self, texts: dict[str, list[str]]) -> tuple[list[dict], list[tuple[str, str, np.ndarray]]]:
        """(one answer per example, the Open Inference outputs) for raw texts per input field (at least one
        example, at most ``max_instances``), treated as preprocess treats them."""
        count = len(next(iter(texts.values())))
        if not count:
            raise InvalidInput("no texts given; expected at least one")
        if count > self.config.max_instances:
            raise InvalidInput(f"{count} texts in one request; at most {self.config.max_instances} are "
                               "accepted (split the request)")
        try:
            return self._model.answers(texts)
        except EmptyText as e:
            raise InvalidInput(str(e)) from None

    async def predict(self, payload, headers=None, response_headers=None):
        """Answer a V1 body (a dict) or an Open Inference request (an ``InferRequest``)."""
        v2 = isinstance(payload, InferRequest)
        fields = self._model.input_fields
        texts = texts_from_v2(payload, fields) if v2 else texts_from_v1(payload, fields)
        # Inference off the event loop, so health checks and other requests are answered meanwhile.
        answers, arrays = await asyncio.get_running_loop().run_in_executor(None, self.answers, texts)
        if not v2:
            return {"predictions": answers}
        outputs = [InferOutput(name, list(array.shape), datatype, array) for name, datatype, array in arrays]
        return InferResponse(payload.id or generate_uuid(), self.name, outputs,
                             use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs)

    def get_input_types(self) -> list[dict]:
        return [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in self._model.input_fields]

    def get_output_types(self) -> list[dict]:
        return self._model.output_types()


def serve(model: str, config: ServeConfig) -> None:
    """Load ``model`` (a local export directory, or an ``s3://`` / ``gs://`` URI of one) and serve it until stopped."""
    config.validate()
    with contextlib.ExitStack() as stack:
        model_dir = Path(model).expanduser()
        if is_remote(model):
            model_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kftune-serve-")))
            fetch(model, model_dir)
        try:
            protocol = task_named(export_task(model_dir)).serving
            if protocol == "openai":
                from kftune.components.serve.openai_server import GenerativeModel, serve_openai

                generator = GenerativeModel(config.model_name, model_dir, config)
                generator.load()
            else:
                generator = None
                classifier = TextModel(config.model_name, model_dir, config)
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
