"""The OpenAI-compatible HTTP API over one model folder, on FastAPI under uvicorn, decoding the requests that arrive
together in one batch through the engine (:mod:`pipelines.decoding.engine`).

Endpoints: ``GET /v1/models`` (the one model; its id is the folder name), ``GET /health`` (no key needed; the
batcher's counters), ``POST /v1/completions`` (continue ``prompt``: a string or token ids) and ``POST
/v1/chat/completions`` (an instruct model's ``chat_template`` renders the messages; a base model gets the transcript
frame of ``pipelines.decoding.prompts.render_transcript`` and stops where it starts the next user turn).  Both POST
endpoints honour ``max_tokens`` (or ``max_completion_tokens``), ``temperature`` (0 = greedy; default 1), ``top_p``,
``top_k`` (an extension), ``stop``, ``seed`` and ``stream``: server-sent events in OpenAI's chunk shapes,
``data: [DONE]`` last, a usage chunk with ``stream_options.include_usage``.

The request bodies, their validation and the JSON errors are :mod:`pipelines.serving.requests`; the queue and the
worker thread that decodes requests in batches are :mod:`pipelines.serving.batcher`.  This module holds the model
behind the server, the app and its endpoints and the listening socket.  A request still queued after
``--request-timeout`` seconds gets 503; a client that hangs up while queued loses its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import socket
import threading
import time
import uuid
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.instructions import ALPACA_STOP_STRINGS
from ..decoding.engine import Engine
from ..decoding.prompts import STOP_STRINGS, render_transcript
from ..errors import UserError
from ..runs.folders import is_instruct, open_model
from .batcher import Batcher, Job
from .requests import APIError, ChatRequest, CompletionRequest, Message, Sampling, parse_body

MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy decoding (and dividing the logits by it would overflow)


class Service:
    """One loaded model, its engine, and the prompt framing."""

    def __init__(self, model, tokenizer, name: str, max_new_tokens: int = 256):
        self.engine, self.tokenizer, self.name = Engine(model, tokenizer), tokenizer, name
        self.max_new_tokens = max_new_tokens
        self.instruct, self.context = is_instruct(tokenizer), self.engine.context
        self.vocab = min(len(tokenizer), int(getattr(model.config, "vocab_size", None) or len(tokenizer)))
        self.created = int(time.time())

    @classmethod
    def load(cls, model_dir, max_new_tokens: int = 256) -> Service:
        model, tokenizer = open_model(model_dir)
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


class APIServer:
    """A bound socket, the app and a uvicorn server: ``serve_forever()`` blocks (in any thread), ``shutdown()`` stops
    it from another thread, ``server_close()`` releases the socket."""

    def __init__(self, sock: socket.socket, app, access_log: bool = True):
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


