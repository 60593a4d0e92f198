"""``gpt-scratch serve``: an OpenAI-compatible HTTP API over one model folder, on FastAPI under uvicorn, decoding
the requests that arrive together in one batch through the engine (:mod:`pipelines.engine`).

Endpoints: ``GET /v1/models`` (the one model; its id is the folder name), ``GET /health`` (no key needed; the
batcher's counters), ``POST /v1/completions`` (continue ``prompt``: a string or token ids) and ``POST
/v1/chat/completions`` (an instruct model's ``chat_template`` renders the messages; a base model gets the transcript
frame of ``pipelines.prompts.render_transcript`` and stops where it starts the next user turn).  Both POST endpoints
honour ``max_tokens`` (or ``max_completion_tokens``), ``temperature`` (0 = greedy; default 1), ``top_p``, ``top_k``
(an extension), ``stop``, ``seed`` and ``stream``: server-sent events in OpenAI's chunk shapes, ``data: [DONE]`` last,
a usage chunk with ``stream_options.include_usage``.  Unsupported options (``n`` > 1, ``logprobs``, ``echo``, tools)
are refused, not ignored.

**Batching.**  One worker thread owns the engine.  Requests wait in a bounded queue (``--max-queue``; full: 429 at
once); the worker takes up to ``--max-batch-size`` of them -- all that arrived within ``--batch-wait-ms`` of the
oldest -- and decodes them together (``Engine.run``; rows leave the batch as they finish); requests arriving meanwhile
form the next batch.  Text pieces travel from the worker to the event loop through one buffer the loop drains
(``loop.call_soon_threadsafe``), so each stream goes out as it is decoded.  A request still queued after
``--request-timeout`` seconds gets 503; a client that hangs up while queued loses its place, one that hangs up
mid-stream has its text dropped (its row ends with its batch).

**Errors** are JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for anything invalid (pydantic's JSON
parser refuses NaN, Infinity and lone surrogates; pydantic models in strict mode refuse ``"4"`` for 4 and out-of-range
values), 401 (``--api-key`` set, no ``Authorization: Bearer KEY``), 404, 405, 413 (over 8 MiB), 429, 503.  The server
listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import hmac
import json
import logging
import socket
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Literal

import pydantic_core
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import UserError
from .prompts import ALPACA_STOP_STRINGS, STOP_STRINGS, message_text, render_transcript

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256  # characters; the stop filter's work per token grows with the longest
MAX_INT = 2**31 - 1
MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy decoding (and dividing the logits by it would overflow)
ROLES = ("system", "developer", "user", "assistant")
UNSUPPORTED = {  # option -> the values that mean "off"
    "n": (1,), "best_of": (1,), "logprobs": (False, 0), "top_logprobs": (0,), "echo": (False,),
    "tools": ([],), "functions": ([],), "suffix": ("",),
}


class APIError(Exception):
    """A request the server refuses; becomes an OpenAI-style JSON error."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# ----------------------------------------------------------------------------------------------------------------
# request bodies: pydantic models, strict
# ----------------------------------------------------------------------------------------------------------------


class _Body(BaseModel):
    # unknown fields (user, presence_penalty, ...) are accepted and ignored, as OpenAI-compatible servers do
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool | None = None


class Sampling(_Body):
    """The options both POST endpoints share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_INT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_INT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=MAX_INT)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # torch.Generator.manual_seed's range
    stop: Any = Field(None, validate_default=True)  # -> a list of strings
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        stops = [] if value is None else [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("must be a string or a list of strings")
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"takes at most {MAX_STOP_STRINGS} strings")
        if any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"stop strings are at most {MAX_STOP_LENGTH} characters")
        return [s for s in stops if s]


class CompletionRequest(Sampling):
    prompt: Any

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
            value = value[0]
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(type(t) is int for t in value):
            return value
        raise ValueError("must be a string (or one string in a list, or a list of token ids)")


class Message(_Body):
    role: Literal[ROLES]
    content: Any = None
    input: str | None = None  # the Alpaca template's optional input (see pipelines.prompts)

    @field_validator("content")
    @classmethod
    def _text(cls, value):
        return message_text(value)  # a ValueError for non-text content parts


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _needs_user(cls, messages):
        if not any(m.role == "user" for m in messages):
            raise ValueError("needs at least one user message")
        return messages


def _shown(value, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse_unsupported(data) -> None:
    for name, allowed in UNSUPPORTED.items():
        value = data.get(name) if isinstance(data, dict) else None
        if value is not None and not any(type(value) is type(a) and value == a for a in allowed):
            raise APIError(400, f"'{name}': only {name}={json.dumps(allowed[0])} is supported by this server, not "
                           f"{_shown(value)}", name)


def _validation_error(err: ValidationError) -> APIError:
    first = err.errors(include_url=False)[0]
    loc = first.get("loc") or ()
    if not loc:
        return APIError(400, "the request body must be a JSON object")
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if first.get("type") not in ("missing", "value_error", "too_short", "too_long"):  # those say it already
        message += f", not {_shown(first.get('input'))}"
    return APIError(400, f"'{where}': {message}", str(loc[0]))


async def parse_body(request: Request, model: type[BaseModel]):
    """The request's JSON body as ``model``: 413 past ``MAX_BODY_BYTES``, 400 for bad JSON or bad values."""
    too_big = APIError(413, f"the request body is over {MAX_BODY_BYTES // (1024 * 1024)} MiB")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_big
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise too_big
    try:  # pydantic's parser: strict JSON (no NaN/Infinity, no lone surrogates, no invalid UTF-8)
        data = pydantic_core.from_json(bytes(raw), allow_inf_nan=False)
    except ValueError as err:
        hint = " (a lone UTF-16 surrogate is not text)" if "surrogate" in str(err) or "hex escape" in str(err) else (
            " (NaN and Infinity are not JSON numbers)" if b"NaN" in raw or b"Infinity" in raw else "")
        raise APIError(400, f"the request body is not valid JSON: {err}{hint}") from None
    _refuse_unsupported(data)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err) from None


# ----------------------------------------------------------------------------------------------------------------
# the model behind the server
# ----------------------------------------------------------------------------------------------------------------


class Service:
    """One loaded model, its engine, and the prompt framing."""

    def __init__(self, model, tokenizer, name: str, max_new_tokens: int = 256):
        from .engine import Engine
        from .generate import is_instruct

        self.engine, self.tokenizer, self.name = Engine(model, tokenizer), tokenizer, name
        self.max_new_tokens = max_new_tokens
        self.instruct, self.context = is_instruct(tokenizer), self.engine.context
        self.vocab = min(len(tokenizer), int(getattr(model.config, "vocab_size", None) or len(tokenizer)))
        self.created = int(time.time())

    @classmethod
    def load(cls, model_dir, max_new_tokens: int = 256) -> Service:
        from .generate import load_model, quiet_hf

        with quiet_hf():
            model, tokenizer = load_model(model_dir)
        return cls(model, tokenizer, Path(str(model_dir)).expanduser().resolve().name, max_new_tokens)

    def chat_prompt(self, messages: list[Message]):
        """``(prompt text, stop strings)`` for a conversation."""
        clean = [{"role": "system" if m.role == "developer" else m.role, "content": m.content,
                  **({} if m.input is None else {"input": m.input})} for m in messages]
        if self.instruct:
            try:
                prompt = self.tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True)
            except Exception as err:  # the template's own raise_exception, or a Jinja error
                raise APIError(400, f"the model's chat template cannot render these messages: {err}", "messages")
            return prompt, list(ALPACA_STOP_STRINGS)
        return render_transcript(clean), list(STOP_STRINGS)

    def make_request(self, prompt, body: Sampling, frame_stops=(), trim: bool = False):
        """An engine ``Request`` for ``prompt`` with the body's options (the prompt fitted to the context)."""
        if isinstance(prompt, list) and any(not 0 <= t < self.vocab for t in prompt):
            raise APIError(400, f"'prompt' token ids must be in 0..{self.vocab - 1}", "prompt")
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        if temperature < MIN_TEMPERATURE or top_p <= 0:  # top_p 0 keeps only the likeliest token
            temperature, top_p = 0.0, 1.0
        max_tokens = body.max_completion_tokens or body.max_tokens or self.max_new_tokens
        return self.engine.request(
            prompt, max_new_tokens=max_tokens, temperature=temperature, top_k=body.top_k or 0, top_p=top_p,
            seed=body.seed, stop=[*frame_stops, *body.stop], trim=trim,
        )


# ----------------------------------------------------------------------------------------------------------------
# the batcher: one worker thread, a bounded queue, batches decoded together
# ----------------------------------------------------------------------------------------------------------------

DONE = object()  # the last item of a job: its request is filled in
STARTED = object()


class Job:
    """One request on its way through the batcher; ``items`` receives text pieces, then DONE or an APIError."""

    def __init__(self, request, stream: bool):
        self.request, self.stream = request, stream
        self.items: asyncio.Queue = asyncio.Queue()
        self.started = asyncio.Event()
        self.enqueued = time.monotonic()
        self.state = "queued"  # -> "running", or "withdrawn" (timed out / client gone before it ran)
        self.cancelled = False  # the client went away: drop its text


class Batcher:
    def __init__(self, engine, max_batch_size: int = 8, max_queue: int = 64, batch_wait: float = 0.015):
        self.engine = engine
        self.max_batch_size, self.max_queue, self.batch_wait = max_batch_size, max_queue, batch_wait
        self.pending: collections.deque[Job] = collections.deque()
        self.cond = threading.Condition()
        self.closing = False
        self.running = 0
        self.batch_sizes: collections.Counter = collections.Counter()
        self.outbox: list = []  # (job, item) pairs on their way to the event loop
        self.flush_scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    # -- the event loop's side ------------------------------------------------------------------------------------
    def start(self, loop) -> None:
        self.loop, self.closing = loop, False
        self.thread = threading.Thread(target=self._work, name="gpt-scratch-batcher", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.cond:
            self.closing = True
            left, self.pending = list(self.pending), collections.deque()
            self.cond.notify_all()
        for job in left:
            self._post(job, APIError(503, "the server is shutting down", kind="server_error"))
        if self.thread is not None:
            self.thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.closing:
                raise APIError(503, "the server is shutting down", kind="server_error")
            if len(self.pending) >= self.max_queue:
                raise APIError(429, f"the server is busy: {len(self.pending)} requests are already waiting "
                               "(--max-queue); retry shortly", kind="rate_limit_error", code="queue_full",
                               headers={"Retry-After": "1"})
            self.pending.append(job)
            self.cond.notify()

    def withdraw(self, job: Job) -> bool:
        """Take a job out of the queue if it has not started; False if it already runs."""
        with self.cond:
            if job.state != "queued":
                return False
            self.pending.remove(job)
            job.state = "withdrawn"
            return True

    def stats(self) -> dict:
        with self.cond:
            sizes = dict(sorted(self.batch_sizes.items()))
            return {"queued": len(self.pending), "running": self.running, "batches": sum(sizes.values()),
                    "largest_batch": max(sizes, default=0), "batch_sizes": {str(k): v for k, v in sizes.items()},
                    "max_batch_size": self.max_batch_size, "max_queue": self.max_queue}

    def _flush(self) -> None:
        with self.cond:
            items, self.outbox, self.flush_scheduled = self.outbox, [], False
        for job, item in items:
            if item is STARTED:
                job.started.set()
            else:
                job.items.put_nowait(item)

    # -- the worker's side ----------------------------------------------------------------------------------------
    def _post(self, job: Job, item) -> None:
        """Hand ``item`` to ``job`` on the event loop; one wake-up carries everything posted until the loop runs."""
        with self.cond:
            self.outbox.append((job, item))
            wake, self.flush_scheduled = not self.flush_scheduled, True
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _next_batch(self) -> list[Job] | None:
        """Wait for work; then for the batch to fill or ``batch_wait`` past its oldest request.  None: closing."""
        with self.cond:
            while True:
                while not self.pending and not self.closing:
                    self.cond.wait()
                if self.closing:
                    return None
                deadline = self.pending[0].enqueued + self.batch_wait
                while self.pending and len(self.pending) < self.max_batch_size and not self.closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.cond.wait(remaining)
                if self.pending and not self.closing:
                    jobs = [self.pending.popleft() for _ in range(min(len(self.pending), self.max_batch_size))]
                    for job in jobs:
                        job.state = "running"
                    self.running = len(jobs)
                    self.batch_sizes[len(jobs)] += 1
                    return jobs

    def _work(self) -> None:
        while (jobs := self._next_batch()) is not None:
            jobs_of = {id(job.request): job for job in jobs}
            for job in jobs:
                self._post(job, STARTED)

            def on_text(request, piece):
                job = jobs_of[id(request)]
                if job.stream and not job.cancelled:
                    self._post(job, piece)

            try:
                self.engine.run([job.request for job in jobs], on_text=on_text)
                outcome = DONE
            except Exception as err:  # a bug, not the client's fault: these requests fail, the server goes on
                traceback.print_exc(file=sys.stderr)
                outcome = APIError(500, f"generation failed: {type(err).__name__}: {err}", kind="server_error")
            with self.cond:
                self.running = 0
            for job in jobs:
                self._post(job, outcome)


# ----------------------------------------------------------------------------------------------------------------
# the app
# ----------------------------------------------------------------------------------------------------------------


def _sse(obj) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def _usage(request) -> dict:
    prompt, completion = len(request.prompt_ids), len(request.tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(service: Service, batcher: Batcher, api_key: str | None = None, request_timeout: float = 300.0):
    """The FastAPI app serving ``service`` through ``batcher`` (started and stopped with the app's lifespan)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="gpt-scratch", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.batcher = service, batcher

    @app.exception_handler(APIError)
    async def _api_error(request, err: APIError):
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):
        method, path = request.method, request.url.path
        if err.status_code == 405:
            return APIError(405, f"{method} is not allowed on {path}", headers=err.headers).response()
        if err.status_code == 404:
            return APIError(404, f"no endpoint {method} {path}: see GET /v1/models, POST /v1/completions, "
                                 "POST /v1/chat/completions", kind="not_found_error").response()
        return APIError(err.status_code, str(err.detail), headers=err.headers).response()

    @app.exception_handler(Exception)
    async def _internal_error(request, err):  # a bug: answer 500 as JSON and keep serving
        return APIError(500, f"internal error: {type(err).__name__}: {err}", kind="server_error").response()

    async def check_key(request: Request):  # async: runs on the event loop, not in a thread
        if not api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})

    def card() -> dict:
        return {"id": service.name, "object": "model", "created": service.created, "owned_by": "gpt-scratch"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.name, **batcher.stats()}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models():
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(check_key)])
    async def model(name: str):
        if name != service.name:
            raise APIError(404, f"no model {name!r}: this server serves {service.name!r}", "model",
                           kind="not_found_error")
        return card()

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(request: Request):
        body = await parse_body(request, CompletionRequest)
        engine_request = await run_in_threadpool(service.make_request, body.prompt, body)
        return await answer(request, engine_request, body, chat=False)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat(request: Request):
        body = await parse_body(request, ChatRequest)

        def build():
            prompt, stops = service.chat_prompt(body.messages)
            return service.make_request(prompt, body, frame_stops=stops, trim=True)

        return await answer(request, await run_in_threadpool(build), body, chat=True)

    async def wait_until_started(job: Job, request: Request) -> None:
        """Until the worker takes ``job``: 503 past the request timeout; withdrawn if the client hangs up."""
        while not job.started.is_set():
            remaining = job.enqueued + request_timeout - time.monotonic()
            if remaining <= 0 and batcher.withdraw(job):
                raise APIError(503, f"the request waited {request_timeout:g} s in the queue without starting "
                               "(--request-timeout); retry later", kind="server_error", code="queue_timeout",
                               headers={"Retry-After": "1"})
            try:
                await asyncio.wait_for(job.started.wait(), max(0.01, min(remaining, 0.5)))
            except asyncio.TimeoutError:
                if await request.is_disconnected() and batcher.withdraw(job):
                    raise APIError(499, "the client closed the connection") from None

    async def answer(request: Request, engine_request, body: Sampling, chat: bool):
        job = Job(engine_request, stream=bool(body.stream))
        batcher.submit(job)
        try:
            await wait_until_started(job, request)
        except asyncio.CancelledError:
            batcher.withdraw(job)
            raise
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": service.name}
        if job.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(events(job, meta, chat, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        outcome = await job.items.get()
        if isinstance(outcome, APIError):
            raise outcome
        r = job.request
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                      "finish_reason": r.finish_reason}
            return {**meta, "object": "chat.completion", "choices": [choice], "usage": _usage(r)}
        choice = {"index": 0, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
        return {**meta, "object": "text_completion", "choices": [choice], "usage": _usage(r)}

    async def events(job: Job, meta: dict, chat: bool, include_usage: bool):
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text=None, finish=None, role=False):
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return _sse({**meta, "object": kind, "choices": [choice]})

        finished = False
        try:
            if chat:
                yield chunk(role=True)
            while True:  # every piece that has arrived goes out in one chunk
                items = [await job.items.get()]
                while not job.items.empty():
                    items.append(job.items.get_nowait())
                text = "".join(item for item in items if isinstance(item, str))
                if text:
                    yield chunk(text)
                if not isinstance(items[-1], str):
                    break
            if isinstance(items[-1], APIError):
                yield _sse(items[-1].body())
            else:
                yield chunk(finish=job.request.finish_reason)
                if include_usage:
                    yield _sse({**meta, "object": kind, "choices": [], "usage": _usage(job.request)})
            yield _sse("[DONE]")
            finished = True
        finally:
            job.cancelled = not finished  # a client that hung up: the worker drops the rest of its text
            job.request.cancelled = job.cancelled  # and the engine takes its row out of the batch

    return app


# ----------------------------------------------------------------------------------------------------------------
# the server
# ----------------------------------------------------------------------------------------------------------------

class APIServer:
    """A bound socket, the app and a uvicorn server: ``serve_forever()`` blocks (in any thread), ``shutdown()`` stops
    it from another thread, ``server_close()`` releases the socket."""

    def __init__(self, sock: socket.socket, app, access_log: bool = True):
        import uvicorn

        self.socket, self.app, self.server_address = sock, app, sock.getsockname()
        self.service, self.batcher = app.state.service, app.state.batcher
        config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=access_log, timeout_graceful_shutdown=3)
        self.uvicorn = uvicorn.Server(config)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        self.uvicorn.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0 picks a free port), or a UserError that says what to do."""
    if not 0 <= int(port) <= 65535:
        raise UserError(f"--port {port} is not a port number: use 1-65535 (or 0 for any free port)")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(2048)
    except socket.gaierror as err:
        sock.close()
        raise UserError(f"--host {host} is not an address of this machine ({err.strerror}): use 127.0.0.1") from err
    except OSError as err:
        sock.close()
        reasons = {
            errno.EADDRINUSE: f"port {port} on {host} is already in use: pick another with --port (e.g. --port "
                              f"{int(port) + 1}), or stop the program that holds it",
            errno.EACCES: f"no permission to listen on port {port}: ports below 1024 need root; use --port 8000",
            errno.EADDRNOTAVAIL: f"--host {host} is not an address of this machine: use 127.0.0.1 (or 0.0.0.0)",
        }
        raise UserError(reasons.get(err.errno, f"cannot listen on {host}:{port}: {err.strerror or err}")) from err
    return sock


def make_server(model_dir, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                max_new_tokens: int = 256, max_batch_size: int = 8, max_queue: int = 64,
                request_timeout: float = 300.0, batch_wait_ms: float = 15.0, access_log: bool = True) -> APIServer:
    """Bind ``host:port``, then load the model (a folder, or a loaded :class:`Service`); the caller runs
    ``serve_forever()``.  The port is taken before the (slow) model load, so a port in use fails at once."""
    checks = [("--max-new-tokens", max_new_tokens, 1), ("--max-batch-size", max_batch_size, 1),
              ("--max-queue", max_queue, 1), ("--request-timeout", request_timeout, 0.001),
              ("--batch-wait-ms", batch_wait_ms, 0)]
    for flag, value, low in checks:
        if not value >= low:
            raise UserError(f"{flag} {value} must be at least {low:g}")
    sock = bind(host, port)
    try:
        service = model_dir if isinstance(model_dir, Service) else Service.load(model_dir, max_new_tokens)
        batcher = Batcher(service.engine, max_batch_size, max_queue, batch_wait_ms / 1000)
        app = create_app(service, batcher, api_key=api_key or None, request_timeout=request_timeout)
        return APIServer(sock, app, access_log=access_log)
    except BaseException:
        sock.close()
        raise


def server_url(server: APIServer) -> str:
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="model folder (e.g. the --out of pretrain or finetune-instruct)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 exposes the server to the network, use it with --api-key)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="reply length when a request gives no max_tokens (default 256)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together (default 8)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests that may wait for a batch; more are answered 429 (default 64)")
    parser.add_argument("--request-timeout", type=float, default=300.0,
                        help="seconds a request may wait in the queue before it gets 503 (default 300)")
    parser.add_argument("--batch-wait-ms", type=float, default=15.0,
                        help="how long the first request of a batch waits for others to join (default 15 ms)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for decoding (default: torch's "
                        "choice; 1 is often faster for a small model on a busy machine)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log each request on stderr")
    return parser


def serve_main(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise UserError(f"--threads {args.threads} must be 0 (torch's choice) or a positive count")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    server = make_server(args.model, args.host, args.port, api_key=args.api_key, max_new_tokens=args.max_new_tokens,
                         max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                         request_timeout=args.request_timeout, batch_wait_ms=args.batch_wait_ms,
                         access_log=not args.no_access_log)
    service = server.service
    logging.basicConfig(format="%(message)s", stream=sys.stderr)  # uvicorn's warnings, and its access log:
    logging.getLogger("uvicorn.access").setLevel(logging.INFO)  # one line per request on stderr (stdout: the URL)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr)
    kind = "instruct model, chat template" if service.instruct else "base model, transcript chat"
    print(f"serving {args.model} on {server_url(server)}", flush=True)
    print(f"(model id {service.name!r}: {kind}; context {service.context} tokens; batches of up to "
          f"{args.max_batch_size}, queue {args.max_queue}; Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped", file=sys.stderr)
    return 0


__all__ = ["make_server", "server_url", "bind", "create_app", "APIServer", "Service", "Batcher", "Job", "APIError",
           "CompletionRequest", "ChatRequest", "add_serve_arguments", "serve_main"]
