"""LLM-as-a-judge: model responses scored 0-100 by a larger LLM (the book's chapter 7.8); ``gpt-scratch judge``.

Reads the responses file written by ``gpt-scratch respond`` (the book's ``instruction-data-with-response.json``: a
JSON list of records with ``instruction``, ``input``, ``output`` and ``model_response``), asks the judge for each::

    Given the input `<Alpaca instruction + input>` and correct output `<output>`, score the model response
    `<model_response>` on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only.

and writes the records with a ``score`` (an integer, or null when the judge gave none) to ``--out``.

The judge is an Ollama server (``POST /api/chat``) or any OpenAI-compatible server (``POST /v1/chat/completions``:
vLLM, llama.cpp, LM Studio, ``gpt-scratch serve``, ...), chosen with ``--api`` or found by probing
(``GET /api/tags`` answers on Ollama, ``GET /v1/models`` on OpenAI-compatible servers).  Requests are
deterministic (temperature 0, seed 123).  Network failures, timeouts, 429 and 5xx answers are retried with
exponential backoff; a reply without a usable integer is asked again with a reminder, then recorded as unscored.

Only the standard library is used (``urllib``), so judging needs no torch and no GPU.
"""

from __future__ import annotations

import errno
import http.client
import json
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..data.instructions import format_alpaca_instruction
from ..data.sources import json_list_records, jsonl_records
from ..errors import UserError, describe_type

OLLAMA_OPTIONS = {"seed": 123, "temperature": 0, "num_ctx": 2048}
REMINDER = "Respond with the score only: one integer from 0 to 100."
REQUIRED_FIELDS = ("instruction", "output", "model_response")


# ----------------------------------------------------------------------------------------------------------------
# prompt and reply
# ----------------------------------------------------------------------------------------------------------------


def judge_prompt(record: dict) -> str:
    """The book-style scoring prompt for one record."""
    return (
        f"Given the input `{format_alpaca_instruction(record)}` "
        f"and correct output `{record['output']}`, "
        f"score the model response `{record['model_response']}` "
        "on a scale from 0 to 100, where 100 is the best score. "
        "Respond with the integer number only."
    )


_THINKING = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
# "85/100", "85 / 100", "85 out of 100", "85 of 100"
_OUT_OF_100 = re.compile(rf"(?<![\w.])({_NUMBER})\s*(?:/|out\s+of|of)\s*100(?![\d.]*\d)", re.IGNORECASE)
# "0 to 100", "0-100", "between 0 and 100": the scale, not the score
_SCALE = re.compile(r"(?<![\w.])\d+\s*(?:-|–|to|and)\s*100(?!\d)", re.IGNORECASE)
_ANY_NUMBER = re.compile(rf"(?<![\w.]){_NUMBER}(?![\w])")


def parse_score(text) -> int | None:
    """The integer score 0-100 in a judge's reply, or ``None``.

    "85", "85.", "Score: 85/100", "**85**", "I'd give it 85 out of 100" -> 85.  A number written as "N/100" or
    "N out of 100" wins; otherwise the first number that is not part of the scale ("from 0 to 100").  A decimal is
    rounded.  No number ("eighty"), or a number outside 0-100 ("150", "-5") -> ``None``.  A ``<think>...</think>``
    block (reasoning models) is ignored.
    """
    if not isinstance(text, str):
        return None
    text = _THINKING.sub(" ", text)
    match = _OUT_OF_100.search(text)
    if match:
        number = match.group(1)
    else:
        match = _ANY_NUMBER.search(_SCALE.sub(" ", text))
        if not match:
            return None
        number = match.group(0)
    value = float(number)
    if not 0 <= value <= 100:
        return None
    return int(round(value))


# ----------------------------------------------------------------------------------------------------------------
# the responses file
# ----------------------------------------------------------------------------------------------------------------


def load_responses(path) -> list[dict]:
    """The records of a responses file (JSON list, or JSON Lines), checked record by record."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"--responses {path} does not exist: write it with "
            f"`gpt-scratch respond --model DIR --data FILE --out {path}`"
        )
    read = jsonl_records if path.suffix.lower() == ".jsonl" else json_list_records
    try:
        records = [record for _, record in read(path)]
    except UserError as err:
        raise UserError(f"--responses {err} (judge reads the records written by `gpt-scratch respond`)") from None
    if not records:
        raise UserError(f"{path} holds no records: nothing to judge")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"{path}: record {index} is {describe_type(record)}, not an object with instruction, "
                            "input, output and model_response")
        for field in REQUIRED_FIELDS:
            if field not in record:
                hint = (
                    ": generate the responses first with `gpt-scratch respond`" if field == "model_response" else ""
                )
                raise UserError(f"{path}: record {index} has no '{field}' field{hint}")
        for field in (*REQUIRED_FIELDS, "input"):
            value = record.get(field)
            if field == "input" and value is None:
                continue
            if not isinstance(value, str):
                raise UserError(
                    f"{path}: record {index} field '{field}' is {'null' if value is None else type(value).__name__}, "
                    "not text: fix that record (or regenerate the responses with `gpt-scratch respond`)"
                )
    return records


def default_out_path(responses) -> Path:
    path = Path(responses)
    return path.with_name(f"{path.stem}-scored.json")


# ----------------------------------------------------------------------------------------------------------------
# talking to the judge
# ----------------------------------------------------------------------------------------------------------------


class Unreachable(Exception):
    """Nothing listens at the URL (connection refused, unknown host)."""


class Transient(Exception):
    """A failure worth retrying: timeout, dropped connection, 429, 5xx, a garbled reply."""


class HTTPStatus(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:200]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)[:200]
        if error:
            return str(error)[:200]
    return str(data)[:200]


def http_json(method: str, url: str, payload=None, timeout: float = 60.0, api_key: str | None = None):
    """One HTTP request with a JSON body and a JSON answer; raises Unreachable, Transient or HTTPStatus."""
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        body = err.read() if err.fp is not None else b""
        message = _error_message(body) or err.reason
        if err.code == 429 or err.code >= 500:
            raise Transient(f"HTTP {err.code}: {message}") from err
        raise HTTPStatus(err.code, str(message)) from err
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise Transient(f"no answer within {timeout:g} s") from err
        if isinstance(reason, (ConnectionRefusedError, socket.gaierror)) or (
            isinstance(reason, OSError) and reason.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)
        ):
            raise Unreachable(str(reason)) from err
        raise Transient(str(reason)) from err
    except (socket.timeout, TimeoutError) as err:
        raise Transient(f"no answer within {timeout:g} s") from err
    except (ConnectionError, http.client.HTTPException, OSError) as err:
        raise Transient(f"{type(err).__name__}: {err}") from err
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise Transient(f"the reply is not JSON: {body[:100]!r}") from err


def normalise_url(url: str) -> str:
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--judge-url {url} is not an http(s) URL: pass e.g. http://localhost:11434")
    path = parts.path.rstrip("/")
    for suffix in ("/v1", "/api"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class JudgeClient:
    """A chat client for an Ollama or OpenAI-compatible server, with timeouts and retries."""

    def __init__(
        self, url, model, api="auto", timeout=120.0, retries=3, api_key=None, max_tokens=None, sleep=time.sleep
    ):
        self.url = normalise_url(url)
        self.shown_url = url
        self.model = model
        self.api = api
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.api_key = api_key
        self.max_tokens = max_tokens
        self.sleep = sleep

    # -- errors the user must act on ------------------------------------------------------------------------------
    def _unreachable(self, reason) -> UserError:
        return UserError(
            f"cannot reach the judge at {self.shown_url} ({reason}): start Ollama with `ollama serve` and "
            f"`ollama pull {self.model}`, or serve a model with `gpt-scratch serve --model DIR --port N` "
            "and pass --judge-url http://127.0.0.1:N"
        )

    def _status_error(self, err: HTTPStatus, what: str) -> UserError:
        if err.status in (401, 403):
            return UserError(f"the judge at {self.shown_url} refused the request ({err}): pass its key with --api-key")
        if err.status == 404 and self.api == "ollama":
            return UserError(
                f"the judge at {self.shown_url} says {err.message!r}: run `ollama pull {self.model}` there first"
            )
        if err.status == 404:
            return UserError(
                f"the judge at {self.shown_url} answered 404 to {what} ({err.message}): check --judge-url, --api "
                f"and --judge-model {self.model}"
            )
        return UserError(f"the judge at {self.shown_url} rejected {what} ({err}): check --judge-model and --api")

    # -- finding the API ------------------------------------------------------------------------------------------
    def _probe(self, path):
        try:
            return http_json("GET", self.url + path, timeout=min(self.timeout, 10.0), api_key=self.api_key)
        except Unreachable as err:
            raise self._unreachable(err) from err
        except HTTPStatus as err:
            if err.status in (401, 403):
                raise self._status_error(err, f"GET {path}") from err
            return None
        except Transient:
            return None

    def connect(self) -> str:
        """Check the server (and, for Ollama, that the model is pulled); return the API in use."""
        if self.api in ("auto", "ollama"):
            tags = self._probe("/api/tags")
            if isinstance(tags, dict) and isinstance(tags.get("models"), list):
                self.api = "ollama"
                names = {m.get("name", "") for m in tags["models"] if isinstance(m, dict)}
                names |= {m.get("model", "") for m in tags["models"] if isinstance(m, dict)}
                wanted = {self.model} if ":" in self.model else {self.model, self.model + ":latest"}
                if not names & wanted:
                    raise UserError(
                        f"the Ollama server at {self.shown_url} has no model {self.model}: run `ollama pull "
                        f"{self.model}` (available: {', '.join(sorted(n for n in names if n)) or 'none'})"
                    )
                return self.api
            if self.api == "ollama":
                raise UserError(
                    f"{self.shown_url} does not answer GET /api/tags like an Ollama server: start it with `ollama "
                    "serve`, or pass --api openai for an OpenAI-compatible server"
                )
        models = self._probe("/v1/models")
        if isinstance(models, dict):
            self.api = "openai"
            return self.api
        if self.api == "openai":
            # some servers have no /v1/models; the first request will tell
            return self.api
        raise UserError(
            f"{self.shown_url} answers, but neither as Ollama (GET /api/tags) nor as an OpenAI-compatible server "
            "(GET /v1/models): check --judge-url, or name the API with --api"
        )

    # -- asking ---------------------------------------------------------------------------------------------------
    def _request(self, messages):
        if self.api == "ollama":
            payload = {"model": self.model, "messages": messages, "stream": False, "options": dict(OLLAMA_OPTIONS)}
            if self.max_tokens:
                payload["options"]["num_predict"] = self.max_tokens
            reply = http_json("POST", self.url + "/api/chat", payload, self.timeout, self.api_key)
            try:
                return reply["message"]["content"] or ""
            except (KeyError, TypeError) as err:
                raise Transient(f"the reply has no message.content: {str(reply)[:100]}") from err
        payload = {"model": self.model, "messages": messages, "temperature": 0, "seed": 123, "stream": False}
        if self.max_tokens:
            payload["max_tokens"] = self.max_tokens
        reply = http_json("POST", self.url + "/v1/chat/completions", payload, self.timeout, self.api_key)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise Transient(f"the reply has no choices[0].message.content: {str(reply)[:100]}") from err

    def chat(self, messages) -> str:
        """The judge's reply text; transient failures retried with backoff (0.5 s, 1 s, 2 s, ... at most 8 s).

        Raises ``Transient`` when every try failed or the server rejected this one request (400/413/422, e.g. a
        prompt longer than the judge's context), ``UserError`` when the server is gone or refuses every request.
        """
        for attempt in range(self.retries + 1):
            try:
                return self._request(messages)
            except Unreachable as err:
                if attempt == self.retries:
                    raise self._unreachable(err) from err
                problem = err
            except HTTPStatus as err:
                if err.status in (400, 413, 422):
                    raise Transient(f"the judge rejected this request ({err})") from err
                raise self._status_error(err, f"the chat request for {self.model}") from err
            except Transient as err:
                if attempt == self.retries:
                    raise
                problem = err
            print(f"judge: {problem}; retrying", file=sys.stderr)
            self.sleep(min(0.5 * 2**attempt, 8.0))
        raise AssertionError("not reached")


def score_record(client: JudgeClient, record: dict, retries: int):
    """``(score or None, last reply or error)`` for one record; a reply without a score is asked again."""
    messages = [{"role": "user", "content": judge_prompt(record)}]
    reply = ""
    for attempt in range(retries + 1):
        try:
            reply = client.chat(messages)
        except Transient as err:
            return None, f"error: {err}"
        score = parse_score(reply)
        if score is not None:
            return score, reply
        messages = messages[:1] + [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": REMINDER},
        ]
    return None, reply


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
