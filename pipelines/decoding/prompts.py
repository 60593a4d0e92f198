"""What the decoding workflows put around a user's text, and take off the model's.

* The transcript frame for a *base* model (the "transcript hack"): a conversation rendered as a transcript between a
  helpful assistant bot and a user, a short description, then ``User: ...`` / ``Bot: ...`` lines, ending with
  ``Bot:`` for the model to continue (:func:`render_transcript`); generation stops at :data:`STOP_STRINGS` (the model
  starting the next user turn).  ``chat`` and ``serve`` use it.
* Answers to Alpaca instruction records (:func:`generate_responses`, :func:`extract_response`): the prompt is the
  record in the template of ``pipelines.data.instructions``, decoded greedily by the engine.  ``respond`` and the
  instruction fine-tune's samples use it.
"""

from __future__ import annotations

import sys

from ..data.instructions import ALPACA_STOP_STRINGS, format_alpaca
from ..progress import Progress
from .engine import Engine

USER_PREFIX = "User:"


BOT_PREFIX = "Bot:"


DEFAULT_SYSTEM = (
    "This is a transcript of a conversation between a user and a helpful assistant bot. "
    "The bot answers the user's questions and requests politely, truthfully and to the point."
)


# The model has finished the bot's turn when it starts the user's next one.
STOP_STRINGS = ("\n" + USER_PREFIX,)


def message_text(content) -> str:
    """A message's text: a string, or OpenAI-style content parts (``[{"type": "text", "text": ...}, ...]``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise ValueError("only text content parts are supported")
        return "".join(parts)
    raise ValueError(f"message content must be text, not {type(content).__name__}")


def render_transcript(messages: list[dict], system: str | None = None) -> str:
    """Frame ``messages`` (roles user/assistant, optional system) as a transcript, ending with ``"Bot:"``.

    ::

        {system}

        User: hello
        Bot: hi, how can I help?
        User: what is 2 + 2?
        Bot:

    ``system`` (or a system message, which wins) replaces the default description; ``""`` leaves it out.
    Each message's text is put on one line (newlines become spaces), so a message cannot forge a turn.
    """
    lines = []
    for message in messages:
        role = message.get("role")
        text = " ".join(message_text(message.get("content")).split())
        if role == "system":
            system = text
        elif role == "user":
            lines.append(f"{USER_PREFIX} {text}")
        elif role == "assistant":
            lines.append(f"{BOT_PREFIX} {text}")
        else:
            raise ValueError(f"unknown message role {role!r}: use system, user or assistant")
    head = DEFAULT_SYSTEM if system is None else system
    head = f"{head}\n\n" if head else ""
    return head + "".join(line + "\n" for line in lines) + BOT_PREFIX


RESPONSE_MARKER = "### Response:"


DEFAULT_MAX_NEW_TOKENS = 256  # the book's answer length; always capped by what fits in the context


def extract_response(text: str) -> str:
    """The answer in a generated continuation of an Alpaca prompt.

    The prompt ends with ``### Response:``, so the continuation is the answer; a repeated header at its start is
    dropped (as in the book), and anything from a new Alpaca block on (a model that runs on past its answer) is cut.
    """
    text = text.lstrip()
    if text.startswith(RESPONSE_MARKER):
        text = text[len(RESPONSE_MARKER) :]
    cut = [i for i in (text.find(stop) for stop in ALPACA_STOP_STRINGS) if i >= 0]
    if cut:
        text = text[: min(cut)]
    return text.strip()


def generate_responses(
    model, tokenizer, records: list[dict], *, batch_size: int = 8, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = False,
) -> list[str]:
    """Greedy answers for ``records`` (in their order), decoded ``batch_size`` at a time by the engine, each row
    stopping at its own end-of-text.

    Records are batched by prompt length (less padding) and the answers put back in order.  A prompt too long for
    the context keeps its newest tokens (the ``### Response:`` header must stay).
    """
    engine = Engine(model, tokenizer)
    prompts = tokenizer([format_alpaca(r) for r in records], add_special_tokens=False)["input_ids"] if records else []
    requests = [engine.request(ids, max_new_tokens=max_new_tokens) for ids in prompts]
    too_long = sum(r.truncated > 0 for r in requests)
    if too_long and progress:
        print(f"note: {too_long} prompt(s) too long for the context ({engine.context} tokens) keep only their "
              "newest tokens", file=sys.stderr)
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids))
    bar = Progress(len(requests), "respond", unit="record", disable=not progress)
    for start in range(0, len(order), max(1, batch_size)):
        chunk = [requests[i] for i in order[start : start + max(1, batch_size)]]
        engine.run(chunk)
        bar.update(len(chunk))
    bar.close()
    return [extract_response(r.text) for r in requests]


def default_max_new_tokens(context: int) -> int:
    return max(1, min(DEFAULT_MAX_NEW_TOKENS, context // 2))
