"""Serve a causal-LM export over OpenAI-compatible endpoints, on KServe's Python model server.

:class:`GenerativeModel` is a ``kserve.Model``: ``load()`` opens the export directory's Hugging Face
model and tokenizer (the merged fine-tuned model the export step writes at its root), generates
one token to check them and marks the model ready, so KServe's health endpoints
(``/v2/health/ready``, ``/v1/models/<name>``, ...) cover it. :func:`openai_router` adds the
OpenAI endpoints to KServe's FastAPI app, under ``/openai/v1/...`` (KServe's own OpenAI layer's
default prefix) and ``/v1/...`` (where that layer puts them with ``KSERVE_OPENAI_ROUTE_PREFIX=""``):

- ``POST .../v1/completions``: ``prompt`` (a string or a list of strings, one choice each);
- ``POST .../v1/chat/completions``: ``messages``, rendered with the tokenizer's chat template;
- ``GET .../v1/models`` and ``GET .../v1/models/<name>`` (with ``model_card``, the export's card file, where it
  has one).

Both generation endpoints take ``max_tokens`` (chat also ``max_completion_tokens``),
``temperature`` (0: greedy; unset: the export's ``generation_config``), ``top_p``, ``stop`` (up
to 4 strings, not included in the text), ``seed``, ``n`` (1 only) and ``stream`` (Server-Sent
Events as OpenAI sends them, ``stream_options.include_usage`` included, ending ``data: [DONE]``).
Other OpenAI fields are ignored. Generation is ``model.generate``; its tokens are decoded as
they come, and the text of a choice is always ``tokenizer.decode(generated ids,
skip_special_tokens=True)`` cut before the first stop string, streamed or not. Requests are
generated one at a time (one model, one set of threads).

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a
malformed request, a prompt that leaves no room in the context (``max_seq_length``) or
``max_tokens`` beyond it, ``n`` > 1, a chat request to a model without a chat template; 404 for
another model name.

Why not KServe's own OpenAI layer (``kserve.protocol.rest.openai``)? It is typed with vLLM's
protocol classes and imports vLLM; without vLLM it registers nothing, and no vLLM release fits
this project's torch and transformers. KServe's Hugging Face runtime brings vLLM in its own image
(the deploy step uses it on a cluster); ``kftune serve`` keeps to the packages kftune has.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import kserve
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from kserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kftune.components.serve.config import ServeConfig
from kftune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EXPORT_REPORT = "export_report.json"
ROUTE_PREFIXES = ("/openai", "")
"""KServe's OpenAI layer serves ``/openai/v1/...`` (its ``KSERVE_OPENAI_ROUTE_PREFIX`` default) or, with
that variable set to "", ``/v1/...``; both are served here, so a client configured for either works."""
MAX_STOP = 4  # OpenAI's limit on stop sequences
DEFAULT_MAX_NEW_TOKENS = 256  # for an export that records none


# --- requests --------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """What both generation endpoints take."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n=1 is supported, got {n} (send the request again for another choice)")
        return n

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP or not all(stops):
            raise ValueError(f"stop must be a non-empty string or a list of at most {MAX_STOP} of them")
        return stop

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(Sampling):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, prompt):
        if not prompt:
            raise ValueError("prompt is empty; expected some text (or a list of texts)")
        return prompt


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_template_input(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or ())
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class RequestError(Exception):
    """A request the server refuses: answered with OpenAI's error body and ``status``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status

    def response(self) -> JSONResponse:
        kind = {400: "BadRequestError", 404: "NotFoundError"}.get(self.status, "InternalServerError")
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}
        return JSONResponse(body, status_code=self.status)


def parse_request(cls: type[Sampling], body) -> Sampling:
    """``body`` as ``cls``, or a :class:`RequestError` naming the first field in error."""
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        error = e.errors()[0]
        param = ".".join(str(part) for part in error["loc"]) or None
        message = error["msg"].removeprefix("Value error, ")
        raise RequestError(f"{param}: {message}" if param else message, param) from None


# --- generation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    """One choice to generate: the prompt's token ids and the settled sampling parameters."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float | None
    top_p: float | None
    stops: tuple[str, ...]
    seed: int | None


@dataclass
class Piece:
    """Text the generation has settled since the last piece; ``finish_reason`` on the last one."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may still become a stop string or a multi-byte character."""
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    incomplete = len(text) - len(text.rstrip("\ufffd"))  # a character whose bytes are still coming
    return max(hold, incomplete)


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


class GenerativeModel(kserve.Model):
    """A kserve model that generates text with a causal-LM export (see the module docstring)."""

    def __init__(self, name: str, model_dir: str | Path, config: ServeConfig | None = None):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.config = config or ServeConfig(model_name=name)
        self.created = int(time.time())
        self.context = 0
        self.default_max_new_tokens = 0
        self.eos_ids: set[int] = set()
        self.model_card = ""
        """The export's model card (its file name in the export directory, from ``export_report.json``), if any."""
        self.tokenizer = None
        self.model = None
        # one generation at a time: requests queue here rather than share the CPU threads
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kftune-generate")

    def load(self) -> bool:
        """Open the model and tokenizer, settle the token budgets, generate one token, mark the model ready."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from kftune.cpus import available_cpus
        from kftune.inference.exported import read_export_report

        if self.config.int8:
            raise ConfigError("int8 serves a classification export's model.int8.onnx; a causal LM has none")
        if self.config.workers != 1:
            raise ConfigError(f"a causal LM is served by one HTTP worker (the OpenAI routes live in this process), "
                              f"got workers={self.config.workers}")
        for name in ("config.json", "tokenizer_config.json"):
            if not (self.model_dir / name).is_file():
                raise DataError(f"model {self.model_dir}: no {name}; expected a causal-LM export directory (the "
                                "merged model, its tokenizer and export_report.json at its root)")
        report = read_export_report(self.model_dir)
        torch.set_num_threads(self.config.threads or available_cpus())
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype="auto").eval()
        if torch.cuda.is_available():
            self.model.to("cuda")
        positions = getattr(self.model.config, "max_position_embeddings", None)
        self.context = self.config.max_seq_length or report.get("max_seq_length") or positions or 0
        if not self.context:
            raise DataError(f"model {self.model_dir}: no max_seq_length in {EXPORT_REPORT} and no "
                            "max_position_embeddings in config.json; give --max-seq-length")
        if positions and self.context > positions:
            raise ConfigError(f"max_seq_length {self.context} exceeds the model's max_position_embeddings "
                              f"({positions})")
        self.default_max_new_tokens = self.config.max_new_tokens or report.get("max_new_tokens") or 0
        self.model_card = report.get("files", {}).get("model_card", "")
        if not self.default_max_new_tokens:
            log.warning("%s records no max_new_tokens; a request without max_tokens gets at most %d tokens",
                        self.model_dir / EXPORT_REPORT, DEFAULT_MAX_NEW_TOKENS)
            self.default_max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {i for i in [*eos, self.tokenizer.eos_token_id] if i is not None}
        if not self.eos_ids:
            raise DataError(f"model {self.model_dir}: neither generation_config.json nor the tokenizer names an eos "
                            "token; generation could not stop")
        self._generate_ids(self.tokenizer("kftune checks the model").input_ids, self._generation_config(1, 0, None),
                           streamer=None, cancelled=threading.Event())
        self.ready = True
        log.info("model %r loaded from %s: %s, context %d tokens, %d new tokens by default, chat template: %s",
                 self.name, self.model_dir, type(self.model).__name__, self.context, self.default_max_new_tokens,
                 "yes" if self.has_chat_template else "no")
        return self.ready

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    async def predict(self, payload, headers=None, response_headers=None):
        raise InvalidInput(f"model {self.name!r} generates text: send OpenAI requests to POST /openai/v1/completions "
                           "or /openai/v1/chat/completions")

    # prompts -> Generation

    def prompt_ids(self, prompt: str) -> list[int]:
        if not prompt:
            raise RequestError("prompt is empty; expected some text", "prompt")
        return self.tokenizer(prompt).input_ids

    def chat_ids(self, messages: list[ChatMessage]) -> list[int]:
        if not self.has_chat_template:
            raise RequestError(f"model {self.name!r} has no chat template; send the prompt to /v1/completions",
                               "messages")
        try:
            text = self.tokenizer.apply_chat_template([m.as_template_input() for m in messages],
                                                      add_generation_prompt=True, tokenize=False)
        except Exception as e:  # the template's own checks (roles in order, ...) raise jinja errors
            raise RequestError(f"messages: the chat template refuses them: {e}", "messages") from e
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def settle(self, prompt_ids: list[int], request: Sampling, max_tokens: int | None, prompt_param: str,
               tokens_param: str) -> Generation:
        """The generation for ``prompt_ids``, or a :class:`RequestError` when it does not fit the context."""
        room = self.context - len(prompt_ids)
        if max_tokens is not None and max_tokens > room:
            raise RequestError(
                f"This model's maximum context length is {self.context} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the {prompt_param}, {max_tokens} in "
                f"the completion). Please reduce the {prompt_param} or {tokens_param}.", tokens_param)
        if room < 1:
            raise RequestError(
                f"This model's maximum context length is {self.context} tokens. However, the {prompt_param} has "
                f"{len(prompt_ids)} tokens, which leaves no room for a completion. Please reduce the {prompt_param}.",
                prompt_param)
        return Generation(prompt_ids, max_tokens or min(self.default_max_new_tokens, room), request.temperature,
                          request.top_p, request.stops(), request.seed)

    # Generation -> text

    def _generation_config(self, max_new_tokens: int, temperature: float | None, top_p: float | None):
        config = self.model.generation_config
        if temperature is None:  # the export's own sampling settings
            config = replace_generation(config, max_new_tokens=max_new_tokens)
        elif temperature == 0:
            config = replace_generation(config, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                        top_p=None, top_k=None)
        else:
            config = replace_generation(config, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                        top_p=top_p if top_p is not None else 1.0, top_k=None)
        if top_p is not None and config.do_sample:
            config.top_p = top_p
        if config.pad_token_id is None:
            config.pad_token_id = min(self.eos_ids)
        return config

    def _generate_ids(self, prompt_ids: list[int], config, streamer, cancelled: threading.Event):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        ids = torch.tensor([prompt_ids], device=self.model.device)
        with torch.inference_mode():
            return self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                       streamer=streamer, stopping_criteria=StoppingCriteriaList([Cancelled()]))

    async def generate(self, generation: Generation) -> AsyncIterator[Piece]:
        """The generation's text, piece by piece as its tokens come; the last piece has its finish_reason."""
        import torch
        from transformers.generation.streamers import BaseStreamer

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        config = self._generation_config(generation.max_new_tokens, generation.temperature, generation.top_p)

        class TokenQueue(BaseStreamer):
            """Hands each new token id to the event loop (``generate`` first puts the prompt: skipped)."""

            prompt = True

            def put(self, value):
                if self.prompt:
                    self.prompt = False
                    return
                loop.call_soon_threadsafe(queue.put_nowait, value.reshape(-1).tolist())

            def end(self):
                loop.call_soon_threadsafe(queue.put_nowait, None)

        def run():
            if cancelled.is_set():  # the client left while the request waited its turn
                loop.call_soon_threadsafe(queue.put_nowait, None)
                return
            try:
                if generation.seed is not None:
                    torch.manual_seed(generation.seed)
                self._generate_ids(generation.prompt_ids, config, TokenQueue(), cancelled)
            except BaseException as e:  # handed to the request, which answers it
                loop.call_soon_threadsafe(queue.put_nowait, e)

        future = loop.run_in_executor(self._executor, run)
        ids: list[int] = []
        text = sent = ""
        finish = "length"
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                ids.extend(item)
                if ids[-1] in self.eos_ids:
                    finish = "stop"
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                cut = _cut_at_stop(text, generation.stops)
                if cut is not None:
                    finish, text = "stop", text[:cut]
                    break
                settled = text[:len(text) - _held_back(text, generation.stops)]
                if len(settled) > len(sent) and settled.startswith(sent):
                    yield Piece(settled[len(sent):])
                    sent = settled
            yield Piece(text[len(sent):] if text.startswith(sent) else "", finish, len(ids))
        finally:
            cancelled.set()  # stops the generation: a stop string was found, or the client left mid-stream
            future.add_done_callback(lambda f: f.exception())  # retrieved, so never logged as unhandled


def replace_generation(config, **changes):
    """A copy of a ``GenerationConfig`` with ``changes``."""
    copy = config.__class__.from_dict(config.to_dict())
    for key, value in changes.items():
        setattr(copy, key, value)
    return copy


# --- endpoints -------------------------------------------------------------------------------


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


@dataclass(frozen=True)
class Kind:
    """What differs between completions and chat completions in a response."""

    id_prefix: str
    object: str
    chunk_object: str
    chat: bool

    def choice(self, index: int, text: str, finish_reason: str | None) -> dict:
        body = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        return {"index": index, **body, "logprobs": None, "finish_reason": finish_reason}

    def delta(self, index: int, text: str | None, finish_reason: str | None, role: bool = False) -> dict:
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


COMPLETION = Kind("cmpl-", "text_completion", "text_completion", chat=False)
CHAT = Kind("chatcmpl-", "chat.completion", "chat.completion.chunk", chat=True)


class OpenAIEndpoints:
    """The OpenAI endpoints of one :class:`GenerativeModel`."""

    def __init__(self, model: GenerativeModel, kserve_v1: bool = False):
        self.model = model
        self.kserve_v1 = kserve_v1
        """These routes stand where KServe's V1 ones would (``GET /v1/models``, ``/v1/models/<name>``): answer both."""

    async def completions(self, request: Request):
        """``POST /v1/completions``."""
        try:
            body = parse_request(CompletionRequest, await _json_body(request))
            self._check_model(body.model)
            prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
            generations = [self.model.settle(self.model.prompt_ids(p), body, body.max_tokens, "prompt", "max_tokens")
                           for p in prompts]
        except RequestError as e:
            return e.response()
        return await self._answer(COMPLETION, body, generations)

    async def chat_completions(self, request: Request):
        """``POST /v1/chat/completions``."""
        try:
            body = parse_request(ChatCompletionRequest, await _json_body(request))
            self._check_model(body.model)
            if body.max_completion_tokens is not None:
                max_tokens, param = body.max_completion_tokens, "max_completion_tokens"
            else:
                max_tokens, param = body.max_tokens, "max_tokens"
            generations = [self.model.settle(self.model.chat_ids(body.messages), body, max_tokens, "messages", param)]
        except RequestError as e:
            return e.response()
        return await self._answer(CHAT, body, generations)

    async def models(self):
        """``GET /v1/models``."""
        answer = {"object": "list", "data": [self._card()]}
        return answer | ({"models": [self.model.name]} if self.kserve_v1 else {})

    async def retrieve_model(self, model_name: str):
        """``GET /v1/models/<name>``."""
        try:
            self._check_model(model_name)
        except RequestError as e:
            return e.response()
        return self._card() | ({"name": self.model.name, "ready": self.model.ready} if self.kserve_v1 else {})

    def _card(self) -> dict:
        """The OpenAI model object, with ``model_card``: the export's model card file, where it has one."""
        return ({"id": self.model.name, "object": "model", "created": self.model.created, "owned_by": "kftune"}
                | ({"model_card": self.model.model_card} if self.model.model_card else {}))

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.model.name:
            raise RequestError(f"The model `{name}` does not exist; this server serves `{self.model.name}`.", "model",
                               status=404)

    async def _answer(self, kind: Kind, body: Sampling, generations: list[Generation]):
        ident, created = f"{kind.id_prefix}{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self._events(kind, ident, created, generations, usage),
                                     media_type="text/event-stream")
        choices, completion_tokens = [], 0
        try:
            for index, generation in enumerate(generations):
                text = ""
                async for piece in self.model.generate(generation):
                    text += piece.text
                choices.append(kind.choice(index, text, piece.finish_reason))
                completion_tokens += piece.completion_tokens
        except Exception as e:
            log.exception("generation failed")
            return RequestError(f"generation failed: {e}", status=500).response()
        prompt_tokens = sum(len(g.prompt_ids) for g in generations)
        return {"id": ident, "object": kind.object, "created": created, "model": self.model.name, "choices": choices,
                "usage": _usage(prompt_tokens, completion_tokens)}

    async def _events(self, kind: Kind, ident: str, created: int, generations: list[Generation], include_usage: bool):
        """The Server-Sent Events of a streamed answer, as OpenAI sends them."""
        head = {"id": ident, "object": kind.chunk_object, "created": created, "model": self.model.name}
        extra = {"usage": None} if include_usage else {}
        completion_tokens = 0
        try:
            for index, generation in enumerate(generations):
                if kind.chat:
                    yield _event(head | {"choices": [kind.delta(index, "", None, role=True)]} | extra)
                async for piece in self.model.generate(generation):
                    if piece.text:
                        yield _event(head | {"choices": [kind.delta(index, piece.text, None)]} | extra)
                    if piece.finish_reason:
                        yield _event(head | {"choices": [kind.delta(index, None, piece.finish_reason)]} | extra)
                        completion_tokens += piece.completion_tokens
            if include_usage:
                prompt_tokens = sum(len(g.prompt_ids) for g in generations)
                yield _event(head | {"choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
        except Exception as e:  # the status line is sent: the error goes in the stream, as OpenAI's does
            log.exception("generation failed")
            yield _event({"error": {"message": f"generation failed: {e}", "type": "InternalServerError",
                                    "param": None, "code": 500}})
        yield "data: [DONE]\n\n"


async def _json_body(request: Request):
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as e:
        raise RequestError(f"the request body is not JSON ({e}); send a JSON object with Content-Type: "
                           "application/json") from None


def openai_router(model: GenerativeModel, prefix: str) -> APIRouter:
    """The OpenAI routes of ``model`` under ``prefix`` (``/openai`` or "")."""
    endpoints = OpenAIEndpoints(model, kserve_v1=prefix == "")
    router = APIRouter(prefix=prefix, tags=["OpenAI"])
    router.add_api_route("/v1/completions", endpoints.completions, methods=["POST"], response_model=None)
    router.add_api_route("/v1/chat/completions", endpoints.chat_completions, methods=["POST"], response_model=None)
    router.add_api_route("/v1/models", endpoints.models, methods=["GET"], response_model=None)
    router.add_api_route("/v1/models/{model_name}", endpoints.retrieve_model, methods=["GET"], response_model=None)
    return router


def serve_openai(model: GenerativeModel, config: ServeConfig) -> None:
    """Serve the loaded ``model`` on KServe's model server, with the OpenAI routes, until stopped."""
    from kserve.model_server import app  # the application KServe's REST server runs (imported by name)

    for prefix in ROUTE_PREFIXES:  # before KServe's own routes, which the server adds when it starts
        app.include_router(openai_router(model, prefix))
    log.info("serving causal LM %r: HTTP on port %d, POST /openai/v1/completions and /openai/v1/chat/completions "
             "(also under /v1/), GET /openai/v1/models", model.name, config.http_port)
    kserve.ModelServer(http_port=config.http_port, grpc_port=config.grpc_port, workers=1,
                       enable_grpc=False).start([model])
