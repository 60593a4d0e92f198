"""What ``gpt-scratch serve`` accepts and how it refuses: the OpenAI-style error and the strict request bodies.

**Errors** are JSON ``{"error": {"message", "type", "param", "code"}}`` (:class:`APIError`): 400 for anything invalid
(pydantic's JSON parser refuses NaN, Infinity and lone surrogates; pydantic models in strict mode refuse ``"4"`` for 4
and out-of-range values), 401 (``--api-key`` set, no ``Authorization: Bearer KEY``), 404, 405, 413 (over 8 MiB), 429,
503.  Unsupported options (``n`` > 1, ``logprobs``, ``echo``, tools) are refused, not ignored.

The HTTP app that uses these is :mod:`pipelines.serving.app`; the batcher that answers 429/503 is
:mod:`pipelines.serving.batcher`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pydantic_core
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..decoding.prompts import message_text

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256  # characters; the stop filter's work per token grows with the longest
MAX_INT = 2**31 - 1
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
    input: str | None = None  # the Alpaca template's optional input (see pipelines.data.instructions)

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


def _abbreviated_json(value, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse_unsupported(data) -> None:
    for name, allowed in UNSUPPORTED.items():
        value = data.get(name) if isinstance(data, dict) else None
        if value is not None and not any(type(value) is type(a) and value == a for a in allowed):
            raise APIError(400, f"'{name}': only {name}={json.dumps(allowed[0])} is supported by this server, not "
                           f"{_abbreviated_json(value)}", name)


def _validation_error(err: ValidationError) -> APIError:
    first = err.errors(include_url=False)[0]
    loc = first.get("loc") or ()
    if not loc:
        return APIError(400, "the request body must be a JSON object")
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if first.get("type") not in ("missing", "value_error", "too_short", "too_long"):  # those say it already
        message += f", not {_abbreviated_json(first.get('input'))}"
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
