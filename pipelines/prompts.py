"""The prompt formats, in one place: the Alpaca instruction template and the transcript frame for base models.

* ``format_alpaca`` renders a record ``{"instruction", "input", "output"}`` in the Alpaca-style template used for
  instruction fine-tuning (Taori et al., 2023, "Stanford Alpaca"), as in the book's chapter 7::

      Below is an instruction that describes a task. Write a response that appropriately completes the request.

      ### Instruction:
      {instruction}

      ### Input:            <- only when the input is not empty
      {input}

      ### Response:
      {output}             <- only with with_response=True

* ``ALPACA_CHAT_TEMPLATE`` is the same format as a Jinja chat template, saved as the ``chat_template`` of an
  instruct model's tokenizer, so ``tokenizer.apply_chat_template(messages)`` renders exactly what ``format_alpaca``
  renders.  Conventions (Alpaca models are single-turn):

  - the **last user message** is the instruction; its optional ``input`` field is the record's input
    (``{"role": "user", "content": instruction, "input": "..."}``);
  - an **assistant message after it** is the response (rendered after ``### Response:\\n``); without one the text
    ends at ``### Response:\\n``, with or without ``add_generation_prompt``;
  - a **system message** replaces the first line (the preamble); without one the standard preamble is used;
  - earlier user/assistant turns are not rendered: each turn is a fresh Alpaca prompt.

  The assistant text is wrapped in ``{% generation %}`` markers, so ``return_assistant_tokens_mask=True`` marks the
  response tokens (for loss masking).  No end-of-text token is added: the fine-tune appends ``<|endoftext|>``.

* ``render_transcript`` frames a conversation for a *base* model as a transcript between a helpful assistant bot and
  a user (the "transcript hack"): a short description, then ``User: ...`` / ``Bot: ...`` lines, ending with
  ``Bot:`` for the model to continue.  Generation stops at ``STOP_STRINGS`` (the model starting the next user turn).

This module imports nothing heavy: the judge uses it without torch.
"""

from __future__ import annotations

from .errors import describe_type

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
INSTRUCTION_HEADER = "\n\n### Instruction:\n"
INPUT_HEADER = "\n\n### Input:\n"
RESPONSE_HEADER = "\n\n### Response:\n"

# Where an instruct model's continuation has run past its answer into a new Alpaca block.
ALPACA_STOP_STRINGS = ("\n\n### Instruction:", "\n\n### Input:", "\n\n### Response:")


def _field(record, name: str, index=None) -> str:
    value = record.get(name) if isinstance(record, dict) else None
    if value is None:
        return ""
    if not isinstance(value, str):
        where = f"record {index}: " if index is not None else ""
        raise TypeError(f"{where}field '{name}' is {describe_type(value)}, not text")
    return value


def format_alpaca_instruction(record: dict, preamble: str | None = None) -> str:
    """Preamble, instruction and (when non-empty) input: the template without the response header.

    This is the book's ``format_input``; the judge quotes it as the task's input.
    """
    text = (ALPACA_PREAMBLE if preamble is None else preamble) + INSTRUCTION_HEADER + _field(record, "instruction")
    extra = _field(record, "input")
    if extra:
        text += INPUT_HEADER + extra
    return text


def format_alpaca(record: dict, with_response: bool = False, preamble: str | None = None) -> str:
    """The Alpaca prompt for ``record``, ending with ``"### Response:\\n"`` (plus ``output`` when ``with_response``)."""
    text = format_alpaca_instruction(record, preamble=preamble) + RESPONSE_HEADER
    if with_response:
        text += _field(record, "output")
    return text


def _jinja_literal(text: str) -> str:
    """``text`` as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# Every piece of text is emitted by an expression; the `{%-`/`-%}` markers strip the template's own layout
# whitespace, so the output is exactly the literals and the message contents.
ALPACA_CHAT_TEMPLATE = (
    "{%- set ns = namespace(user=-1, preamble=" + _jinja_literal(ALPACA_PREAMBLE) + ") -%}\n"
    "{%- for message in messages -%}\n"
    "  {%- if message['role'] == 'user' -%}{%- set ns.user = loop.index0 -%}\n"
    "  {%- elif message['role'] == 'system' -%}{%- set ns.preamble = message['content'] -%}\n"
    "  {%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if ns.user < 0 -%}{{- raise_exception('the Alpaca template needs a user message (the instruction)') -}}"
    "{%- endif -%}\n"
    "{%- set turn = messages[ns.user] -%}\n"
    "{{- ns.preamble -}}\n"
    "{{- " + _jinja_literal(INSTRUCTION_HEADER) + " + turn['content'] -}}\n"
    "{%- if turn['input'] is defined and turn['input'] -%}"
    "{{- " + _jinja_literal(INPUT_HEADER) + " + turn['input'] -}}{%- endif -%}\n"
    "{{- " + _jinja_literal(RESPONSE_HEADER) + " -}}\n"
    "{%- if messages | length > ns.user + 1 and messages[ns.user + 1]['role'] == 'assistant' -%}\n"
    "  {%- generation -%}{{- messages[ns.user + 1]['content'] -}}{%- endgeneration -%}\n"
    "{%- endif -%}"
)


# ----------------------------------------------------------------------------------------------------------------
# the transcript frame for base models
# ----------------------------------------------------------------------------------------------------------------

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


__all__ = [
    "ALPACA_PREAMBLE",
    "ALPACA_CHAT_TEMPLATE",
    "ALPACA_STOP_STRINGS",
    "format_alpaca",
    "format_alpaca_instruction",
    "DEFAULT_SYSTEM",
    "USER_PREFIX",
    "BOT_PREFIX",
    "STOP_STRINGS",
    "render_transcript",
    "message_text",
]
