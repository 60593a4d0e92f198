"""Instruction records (Alpaca style: ``instruction``, optional ``input``, ``output``) and the template that renders
them.

* :func:`read_instructions` reads the records (JSON list, JSON Lines, CSV/Parquet with those columns, a Hub id).
* :func:`format_alpaca` renders a record in the Alpaca-style template used for instruction fine-tuning (Taori et al.,
  2023, "Stanford Alpaca"), as in the book's chapter 7::

      Below is an instruction that describes a task. Write a response that appropriately completes the request.

      ### Instruction:
      {instruction}

      ### Input:            <- only when the input is not empty
      {input}

      ### Response:
      {output}             <- only with with_response=True

* :data:`ALPACA_CHAT_TEMPLATE` is the same format as a Jinja chat template, saved as the ``chat_template`` of an
  instruct model's tokenizer, so ``tokenizer.apply_chat_template(messages)`` renders exactly what ``format_alpaca``
  renders.  Conventions (Alpaca models are single-turn): the **last user message** is the instruction and its
  optional ``input`` field the record's input (``{"role": "user", "content": instruction, "input": "..."}``); an
  **assistant message after it** is the response (without one the text ends at ``### Response:\\n``, with or without
  ``add_generation_prompt``); a **system message** replaces the preamble; earlier turns are not rendered.  The
  assistant text is wrapped in ``{% generation %}`` markers, so ``return_assistant_tokens_mask=True`` marks the
  response tokens.  No end-of-text token is added: the fine-tune appends ``<|endoftext|>``.
"""

from __future__ import annotations

import os

from ..errors import UserError, describe_type
from .sources import iter_records, require_object


def read_instructions(path_or_hub: str | os.PathLike) -> list[dict]:
    """Alpaca-style records ``{"instruction", "input", "output"}`` from a JSON list, JSON Lines (or CSV/Parquet with
    those columns) or a Hub id (streamed, e.g. ``tatsu-lab/alpaca``).  ``input`` is optional and defaults to ``""``;
    other fields are dropped.  Errors name the record index (and line where known) and the missing field."""
    source, records = iter_records(str(path_or_hub))
    out = []
    for where, record in records:
        record = require_object(source, where, record)
        item = {}
        for field in ("instruction", "input", "output"):
            value = record.get(field)
            if value is None and field == "input":
                value = ""
            if value is None:
                raise UserError(f"{source}: {where} has no '{field}'; every record needs 'instruction' and 'output'")
            if not isinstance(value, str):
                raise UserError(f"{source}: {where} field '{field}' holds {describe_type(value)}, not text")
            item[field] = value
        out.append(item)
    if not out:
        raise UserError(f"{source} holds no records; give instruction records with 'instruction' and 'output'")
    return out


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
