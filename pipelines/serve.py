"""``gpt-scratch serve``: an OpenAI-compatible HTTP API over one model folder, on the standard library's HTTP server.

Endpoints (the subset of the OpenAI API that chat front-ends, evaluation harnesses and ``gpt-scratch judge`` use):

* ``GET  /v1/models``            -- the one model served (its id is the folder name); ``GET /health`` -> ok
* ``POST /v1/completions``       -- raw text continuation of ``prompt`` (a string, or token ids)
* ``POST /v1/chat/completions``  -- chat: an instruct model's tokenizer ``chat_template`` (the Alpaca template) renders
  the messages; a base model gets the transcript frame (``pipelines.prompts.render_transcript``) and stops when it
  starts the next user turn

Both POST endpoints honour ``max_tokens`` (or ``max_completion_tokens``), ``temperature`` (0 = greedy; default 1),
``top_p``, ``top_k`` (an extension), ``stop`` (a string or a list), ``seed``, and ``stream``: with ``"stream": true``
the answer is server-sent events, ``data: {chunk}`` per piece of text and a final ``data: [DONE]``, in OpenAI's
chunk shapes (``choices[0].delta`` for chat, ``choices[0].text`` for completions); ``stream_options.include_usage``
adds a last chunk with the usage.  Every answer reports ``usage`` (prompt, completion, total tokens).  Unsupported
options (``n`` > 1, ``logprobs``, ``echo``, tools) are refused with 400 rather than silently ignored.

One model, one lock: requests are answered concurrently (a thread each) but generate one at a time.  Errors are JSON
``{"error": {"message", "type", "param", "code"}}`` with 400 (bad request), 401 (``--api-key`` set and the request
lacks ``Authorization: Bearer KEY``), 404, 405, 413.  The server listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import errno
import hmac
import json
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .errors import UserError
from .prompts import ALPACA_STOP_STRINGS, STOP_STRINGS, message_text, render_transcript

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_STOP_STRINGS = 16
ROLES = ("system", "developer", "user", "assistant")


class APIError(Exception):
    """A request the server refuses; becomes an OpenAI-style JSON error."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


# ----------------------------------------------------------------------------------------------------------------
# request parameters
# ----------------------------------------------------------------------------------------------------------------


def _number(body, name, default, low, high, integer=False):
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise APIError(400, f"'{name}' must be {kind}, not {json.dumps(value)}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise APIError(400, f"'{name}' must be {bounds}, not {value}", name)
    return value


def sampling_options(body: dict, default_max_tokens: int) -> dict:
    """The generation options of a completions or chat request, checked; raises ``APIError`` (400)."""
    if body.get("n") not in (None, 1):
        raise APIError(400, "only n=1 is supported", "n")
    if body.get("best_of") not in (None, 1):
        raise APIError(400, "only best_of=1 is supported", "best_of")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") not in (None, 0):
        raise APIError(400, "logprobs are not supported", "logprobs")
    if body.get("echo") not in (None, False):
        raise APIError(400, "echo is not supported", "echo")
    if body.get("tools") or body.get("functions"):
        raise APIError(400, "tools and functions are not supported", "tools")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, name, default_max_tokens, 1, None, integer=True)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise APIError(400, "'stop' must be a string or a list of strings", "stop")
    if len(stop) > MAX_STOP_STRINGS:
        raise APIError(400, f"'stop' takes at most {MAX_STOP_STRINGS} strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options")
    return {
        "max_new_tokens": max_tokens,
        "temperature": float(_number(body, "temperature", 1.0, 0, 2)),
        "top_p": float(_number(body, "top_p", 1.0, 0, 1)),
        "top_k": _number(body, "top_k", None, 0, None, integer=True) or None,
        "seed": _number(body, "seed", None, None, None, integer=True),
        "stop": [s for s in stop if s],
        "stream": stream,
        "include_usage": bool(stream_options.get("include_usage")),
    }


def chat_messages(body: dict) -> list[dict]:
    """The request's messages as ``{"role", "content"[, "input"]}`` with text content; raises ``APIError``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise APIError(400, f"messages[{index}] must be an object with role and content", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise APIError(400, f"messages[{index}].role must be one of {', '.join(ROLES)}, not {role!r}", "messages")
        try:
            content = message_text(message.get("content"))
        except ValueError as err:
            raise APIError(400, f"messages[{index}].content: {err}", "messages") from err
        item = {"role": "system" if role == "developer" else role, "content": content}
        if isinstance(message.get("input"), str):  # the Alpaca template's optional input (see pipelines.prompts)
            item["input"] = message["input"]
        clean.append(item)
    if not any(m["role"] == "user" for m in clean):
        raise APIError(400, "'messages' needs at least one user message", "messages")
    return clean


def completion_prompt(body: dict):
    """The prompt of a completions request: a string, ``[string]``, token ids, or ``[token ids]``."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise APIError(400, "'prompt' must be a string (or one string in a list, or a list of token ids)", "prompt")


# ----------------------------------------------------------------------------------------------------------------
# the model behind the server
# ----------------------------------------------------------------------------------------------------------------


class ModelWorker:
    """One loaded model and tokenizer, the lock that serialises generation, and the prompt framing."""

    def __init__(self, model_dir, max_new_tokens: int = 256):
        from .generation_utils import context_length, is_instruct, load_model

        self.model, self.tokenizer = load_model(model_dir)
        self.name = Path(str(model_dir)).expanduser().resolve().name
        self.instruct = is_instruct(self.tokenizer)
        self.max_new_tokens = max_new_tokens
        self.context = context_length(self.model)
        self.lock = threading.Lock()
        self.created = int(time.time())

    def chat_prompt(self, messages: list[dict]):
        """``(prompt text, stop strings)`` for a conversation."""
        if self.instruct:
            try:
                prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as err:  # the template's own raise_exception, or a Jinja error
                raise APIError(400, f"the model's chat template cannot render these messages: {err}", "messages")
            return prompt, list(ALPACA_STOP_STRINGS)
        return render_transcript(messages), list(STOP_STRINGS)

    def generation(self, prompt, options: dict, extra_stop=(), trim=False):
        from .generation_utils import StreamingGeneration

        return StreamingGeneration(
            self.model,
            self.tokenizer,
            prompt,
            max_new_tokens=options["max_new_tokens"],
            temperature=options["temperature"],
            top_p=options["top_p"],
            top_k=options["top_k"],
            seed=options["seed"],
            stop=list(extra_stop) + options["stop"],
            trim=trim,
        )


# ----------------------------------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------------------------------


def _usage(gen) -> dict:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "gpt-scratch"
    protocol_version = "HTTP/1.0"  # one request per connection; streams end when the connection closes
    timeout = 120  # seconds a socket read or write may stall: a client that stops reading cannot hold the lock

    # -- plumbing -------------------------------------------------------------------------------------------------
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _send_json(self, status: int, obj, headers=None):
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: APIError):
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        self._send_json(err.status, err.body(), headers)

    def _path(self) -> str:
        path = self.path.split("?", 1)[0]
        return path.rstrip("/") or "/"

    def _check_auth(self):
        key = self.server.api_key
        if not key:
            return
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           kind="authentication_error")

    def _read_json(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None:
            raise APIError(400, "the request needs a JSON body with a Content-Length header")
        try:
            length = int(length)
        except ValueError:
            raise APIError(400, "Content-Length is not a number") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES // (1024 * 1024)} MiB")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise APIError(400, f"the request body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return body

    def _dispatch(self, routes: dict):
        try:
            path = self._path()
            handler = routes.get(path)
            if handler is None:
                if path.startswith("/v1/models/") and self.command == "GET":
                    handler = self._model
                else:
                    other = self._post_routes if self.command == "GET" else self._get_routes
                    if path in other():
                        raise APIError(405, f"{self.command} is not allowed on {path}")
                    raise APIError(404, f"no endpoint {self.command} {path}: see GET /v1/models, "
                                        "POST /v1/completions, POST /v1/chat/completions", kind="not_found_error")
            if path != "/health":
                self._check_auth()
            handler()
        except APIError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass  # the client went away or stalled
        except Exception as err:  # a bug, not the client's fault: answer 500 and keep serving
            self.log_error("internal error: %r", err)
            try:
                self._send_error(APIError(500, f"internal error: {type(err).__name__}: {err}", kind="server_error"))
            except OSError:
                pass

    def _get_routes(self):
        return {"/v1/models": self._models, "/health": self._health}

    def _post_routes(self):
        return {"/v1/completions": self._completions, "/v1/chat/completions": self._chat}

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._dispatch(self._get_routes())

    def do_POST(self):  # noqa: N802
        self._dispatch(self._post_routes())

    # -- endpoints ------------------------------------------------------------------------------------------------
    def _model_card(self) -> dict:
        worker = self.server.worker
        return {"id": worker.name, "object": "model", "created": worker.created, "owned_by": "gpt-scratch"}

    def _models(self):
        self._send_json(200, {"object": "list", "data": [self._model_card()]})

    def _model(self):
        name = self._path()[len("/v1/models/"):]
        if name != self.server.worker.name:
            raise APIError(404, f"no model {name!r}: this server serves {self.server.worker.name!r}", "model",
                           kind="not_found_error")
        self._send_json(200, self._model_card())

    def _health(self):
        self._send_json(200, {"status": "ok"})

    def _completions(self):
        body = self._read_json()
        options = sampling_options(body, self.server.worker.max_new_tokens)
        prompt = completion_prompt(body)
        vocab = len(self.server.worker.tokenizer)
        if isinstance(prompt, list) and any(not 0 <= t < vocab for t in prompt):
            raise APIError(400, f"'prompt' token ids must be in 0..{vocab - 1}", "prompt")
        self._answer(prompt, options, chat=False)

    def _chat(self):
        body = self._read_json()
        options = sampling_options(body, self.server.worker.max_new_tokens)
        prompt, stops = self.server.worker.chat_prompt(chat_messages(body))
        self._answer(prompt, options, chat=True, frame_stops=stops)

    def _answer(self, prompt, options, chat: bool, frame_stops=()):
        worker = self.server.worker
        prefix = "chatcmpl" if chat else "cmpl"
        meta = {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": worker.name}
        with worker.lock:
            gen = worker.generation(prompt, options, extra_stop=frame_stops, trim=chat)
            if options["stream"]:
                self._stream(gen, meta, chat, options["include_usage"])
                return
            text = gen.run()
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": gen.finish_reason}
            obj = {**meta, "object": "chat.completion", "choices": [choice], "usage": _usage(gen)}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": gen.finish_reason}
            obj = {**meta, "object": "text_completion", "choices": [choice], "usage": _usage(gen)}
        self._send_json(200, obj)

    def _event(self, obj):
        payload = obj if isinstance(obj, str) else json.dumps(obj)
        self.wfile.write(f"data: {payload}\n\n".encode("utf-8"))
        self.wfile.flush()

    def _stream(self, gen, meta, chat: bool, include_usage: bool):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece=None, finish=None, first=False):
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece else {})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
            return {**meta, "object": kind, "choices": [choice]}

        pieces = iter(gen)
        try:
            if chat:
                self._event(chunk(first=True))
            for piece in pieces:
                self._event(chunk(piece))
            self._event(chunk(finish=gen.finish_reason))
            if include_usage:
                self._event({**meta, "object": kind, "choices": [], "usage": _usage(gen)})
            self._event("[DONE]")
        finally:
            pieces.close()  # a client that hung up ends the generation here


class APIServer(ThreadingHTTPServer):
    daemon_threads = True
    worker: ModelWorker | None = None
    api_key: str | None = None


def make_server(model_dir, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                max_new_tokens: int = 256) -> APIServer:
    """Bind ``host:port`` (0 picks a free port), then load the model; the caller runs ``serve_forever()``.

    The port is taken before the (slow) model load, so a port in use fails at once.
    """
    if not 0 <= int(port) <= 65535:
        raise UserError(f"--port {port} is not a port number: use 1-65535 (or 0 for any free port)")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens} must be at least 1")
    server_class = APIServer
    if ":" in host:  # an IPv6 address
        server_class = type("APIServer6", (APIServer,), {"address_family": socket.AF_INET6})
    try:
        server = server_class((host, int(port)), Handler)
    except socket.gaierror as err:
        raise UserError(f"--host {host} is not an address of this machine ({err.strerror}): use 127.0.0.1") from err
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is already in use: pick another with --port (e.g. --port {int(port) + 1}), "
                "or stop the program that holds it"
            ) from err
        if err.errno == errno.EACCES:
            raise UserError(
                f"no permission to listen on port {port}: ports below 1024 need root; use --port 8000"
            ) from err
        if err.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"--host {host} is not an address of this machine: use 127.0.0.1 (or 0.0.0.0)") from err
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    try:
        server.api_key = api_key or None
        server.worker = ModelWorker(model_dir, max_new_tokens=max_new_tokens)
    except BaseException:
        server.server_close()
        raise
    return server


def server_url(server: APIServer) -> str:
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="model folder (e.g. the --out of pretrain or finetune-instruct)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 exposes the server to the network, use it with --api-key)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="reply length when a request gives no max_tokens (default 256)")
    return parser


def run(args: argparse.Namespace) -> int:
    server = make_server(args.model, args.host, args.port, api_key=args.api_key, max_new_tokens=args.max_new_tokens)
    worker = server.worker
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr)
    kind = "instruct model, chat template" if worker.instruct else "base model, transcript chat"
    print(f"serving {args.model} on {server_url(server)}", flush=True)
    print(f"(model id {worker.name!r}: {kind}; context {worker.context} tokens; Ctrl-C stops)", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


__all__ = ["make_server", "server_url", "APIServer", "Handler", "ModelWorker", "APIError", "add_arguments", "run"]
