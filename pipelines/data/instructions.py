"""Instruction records (Alpaca style: ``instruction``, optional ``input``, ``output``) for instruction fine-tuning."""

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
