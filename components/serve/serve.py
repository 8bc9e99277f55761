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

Loading and prediction are :class:`~kftune.inference.exported.ExportedClassifier`'s, which
``kftune predict`` shares, so served and batch predictions agree. Texts go through exactly what the
evaluate step saw: preprocess's cleaning
(:func:`~kftune.data.text.clean_text`), the tokenizer with truncation at
``max_seq_length`` (preprocess's, 128 by default), batches in length order padded per batch
(:func:`~kftune.inference.runners.predict_logits`). So the served predictions are the
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
from kftune.inference.exported import (
    CAUSAL_LM,
    EmptyText,
    ExportedClassifier,
    export_task,
)
from kftune.storage import fetch, is_remote
from kftune.tasks import TASKS

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


class TextClassifier(kserve.Model):
    """A kserve model that classifies texts with an exported ONNX model (see the module docstring)."""

    def __init__(self, name: str, model_dir: str | Path, config: ServeConfig | None = None):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.config = config or ServeConfig(model_name=name)
        self.labels: tuple[str, ...] = ()
        self._model: ExportedClassifier | None = None

    def load(self) -> bool:
        """Open the ONNX model and tokenizer, check them on one text, and mark the model ready."""
        self._model = ExportedClassifier(self.model_dir, int8=self.config.int8,
                                         max_seq_length=self.config.max_seq_length,
                                         batch_size=self.config.batch_size, threads=self.config.threads).load()
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

    def logits(self, texts: list[str]) -> np.ndarray:
        """Logits ``[len(texts), num_labels]`` for raw texts (at least one, at most ``max_instances``), cleaned and
        tokenized as preprocess does."""
        self.check_request(texts)
        try:
            return self._model.logits(texts)
        except EmptyText as e:
            raise InvalidInput(str(e)) from None

    def check_request(self, texts: list[str]) -> None:
        if not texts:
            raise InvalidInput("no texts given; expected at least one")
        if len(texts) > self.config.max_instances:
            raise InvalidInput(f"{len(texts)} texts in one request; at most {self.config.max_instances} are "
                               "accepted (split the request)")

    def answers(self, texts: list[str]) -> list[dict]:
        """A token-level task's answers (entities with character offsets into the texts as sent)."""
        self.check_request(texts)
        return self._model.predict(texts)

    async def predict(self, payload, headers=None, response_headers=None):
        """Answer a V1 body (a dict) or an Open Inference request (an ``InferRequest``)."""
        v2 = isinstance(payload, InferRequest)
        texts = texts_from_v2(payload) if v2 else texts_from_v1(payload)
        # Inference off the event loop, so health checks and other requests are answered meanwhile.
        loop = asyncio.get_running_loop()
        if self._model.token_level:  # the answers need the texts themselves (character offsets)
            answers = await loop.run_in_executor(None, self.answers, texts)
            if not v2:
                return {"predictions": answers}
            arrays = self._model.v2_answers(answers)
        else:
            logits = await loop.run_in_executor(None, self.logits, texts)
            if not v2:
                return {"predictions": TASKS[self._model.task].outputs(logits, self._model.info)}
            arrays = self._model.v2_outputs(logits)
        outputs = [InferOutput(name, list(array.shape), datatype, array) for name, datatype, array in arrays]
        return InferResponse(payload.id or generate_uuid(), self.name, outputs,
                             use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs)

    def get_input_types(self) -> list[dict]:
        return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        if self._model.token_level:
            return [{"name": name, "datatype": datatype, "shape": [-1]}
                    for name, datatype, _ in self._model.v2_answers([])]
        width = TASKS[self._model.task].head(self._model.info)["num_labels"]
        return [{"name": name, "datatype": datatype, "shape": [-1, *array.shape[1:]]}
                for name, datatype, array in self._model.v2_outputs(np.zeros((1, width), np.float32))]


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
