"""Labelled text for classification: reading a table, balancing its classes, a seeded split, label ids.

:func:`read_labeled_table` reads the SMS Spam Collection as published (headerless TSV) and CSV/TSV/JSON/Parquet/Hub
variants, finding the header row and the text and label columns when they are not named.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import UserError, describe_type
from .sources import get_field, is_tab_separated, iter_records, iter_rows, require_object, resolve_source

TEXT_COLUMN_NAMES = ("text", "sms", "message", "v2")
LABEL_COLUMN_NAMES = ("label", "category", "class", "v1")
"""Column names tried, case-insensitively and in this order, when none is given (``v1``/``v2``: Kaggle's spam.csv)."""


def _has_header(rows: list[list[str]], requested: list[str]) -> bool:
    """Whether the first row of a delimited file names its columns.

    Rule: yes when a first-row cell equals (case-insensitively) a requested column name or a name of
    ``TEXT_COLUMN_NAMES``/``LABEL_COLUMN_NAMES``; or when some column's other rows repeat a few values (at most half
    as many distinct values as rows -- a label column) and the first row's cell is not one of them (``Kind`` above
    ``ham``/``spam``).  A headerless label column (``ham`` first, ``ham`` again later) is not taken for a header.
    """
    first, rest = rows[0], rows[1:]
    names = {n.lower() for n in TEXT_COLUMN_NAMES + LABEL_COLUMN_NAMES} | {n.lower() for n in requested}
    if any(cell.strip().lower() in names for cell in first):
        return True
    for j, cell in enumerate(first):
        values = [r[j].strip() for r in rest if j < len(r)]
        distinct = set(values)
        if values and 2 * len(distinct) <= len(values) and cell.strip() not in distinct:
            return True
    return False


def _pick_column(source: str, keys: list[str], requested: str | None, candidates: tuple, role: str, flag: str) -> str:
    """The column holding ``role``: the requested name (exact, then case-insensitive) or position (``"0"``), else the
    first of ``candidates`` present, else -- in a headerless two-column file -- label 0 and text 1."""
    lower = {k.lower(): k for k in reversed(keys)}
    if requested is not None:
        if requested in keys:
            return requested
        if requested.isdigit() and int(requested) < len(keys):
            return keys[int(requested)]
        if requested.lower() in lower:
            return lower[requested.lower()]
        raise UserError(f"{source} has no column '{requested}'; available columns: {', '.join(map(repr, keys))}")
    for name in candidates:
        if name in lower:
            return lower[name]
    if keys == ["0", "1"]:
        return "1" if role == "text" else "0"
    raise UserError(
        f"{source}: cannot tell which column holds the {role}; available columns: {', '.join(map(repr, keys))}; "
        f"pass {flag} NAME"
    )


def _delimited_table(
    path: Path, requested: list[str], header: bool | None
) -> tuple[list[str], Iterator[tuple[str, list[str]]], bool]:
    """``(column names, (where, row) iterator, tab-separated)`` of a CSV/TSV.  Headerless columns are named
    ``"0"``, ``"1"``, ... up to the fewest cells of any row (a text may hold tabs, a label does not)."""
    rows = list(iter_rows(path))
    if not rows:
        return [], iter(()), False
    cells = [row for _, row in rows]
    if header is None:
        header = _has_header(cells, requested)
    keys = [c.strip() for c in cells[0]] if header else [str(i) for i in range(min(map(len, cells)))]
    body = rows[1:] if header else rows
    records = ((f"record index {i} (line {lineno})", row) for i, (lineno, row) in enumerate(body))
    return keys, records, is_tab_separated(path)


def read_labeled_table(
    path_or_hub: str | os.PathLike,
    text_column: str | None = None,
    label_column: str | None = None,
    *,
    header: bool | None = None,
    min_classes: int = 2,
) -> list[dict]:
    """Labelled texts as ``[{"text": str, "label": str}, ...]`` in file order.

    Formats: CSV/TSV with or without a header row (the SMS Spam Collection as published: ``label<TAB>text``, no
    header), JSON list or JSON Lines records, Parquet, or a Hub dataset id (``ClassLabel`` ids become names).
    A ``.tsv`` is tab-separated with quoting off, a ``.csv`` comma-separated with double quotes, any other name
    (``SMSSpamCollection``) tab-separated if its first line has a tab.  ``header=None`` detects the header row
    (rule in :func:`_has_header`).

    Columns: by name, or by position as ``"0"``, ``"1"``, ...; by default the first of ``TEXT_COLUMN_NAMES`` /
    ``LABEL_COLUMN_NAMES`` present (case-insensitive), and in a headerless two-column file label ``"0"`` and text
    ``"1"``.  In a tab-separated file whose text is the last column, extra tabs belong to the text.

    Labels are returned as stripped strings.  Errors: missing column (lists the available ones), empty text or
    label (names the record), fewer than ``min_classes`` classes (two for training; an evaluation or a separate
    test file may hold one).
    """
    spec = str(path_or_hub)
    kind, target = resolve_source(spec)
    requested = [c for c in (text_column, label_column) if c is not None and not c.isdigit()]
    if kind == "local" and target.is_file() and target.suffix.lower() not in (".json", ".jsonl", ".parquet"):
        source = str(target)
        keys, rows, tab = _delimited_table(target, requested, header)
        if not keys:
            raise UserError(f"{source} holds no rows; give a table of labelled texts")
        text_key = _pick_column(source, keys, text_column, TEXT_COLUMN_NAMES, "text", "--text-column")
        tab_text_last = tab and keys.index(text_key) == len(keys) - 1
        records = ((where, _row_record(row, keys, tab_text_last)) for where, row in rows)
    else:
        source, raw = iter_records(spec)
        records = ((where, require_object(source, where, r)) for where, r in raw)
        first = next(records, None)
        if first is None:
            raise UserError(f"{source} holds no records; give a table of labelled texts")
        keys = list(first[1])
        records = itertools.chain([first], records)
        text_key = _pick_column(source, keys, text_column, TEXT_COLUMN_NAMES, "text", "--text-column")
    label_key = _pick_column(source, keys, label_column, LABEL_COLUMN_NAMES, "label", "--label-column")
    if label_key == text_key:
        raise UserError(f"{source}: text and label are both column '{text_key}'; pass --text-column and --label-column")

    out = []
    for where, record in records:
        text = get_field(source, where, record, text_key, "--text-column")
        label = get_field(source, where, record, label_key, "--label-column")
        if not isinstance(text, str):
            raise UserError(f"{source}: {where} column '{text_key}' holds {describe_type(text)}, not text")
        if not text.strip():
            raise UserError(
                f"{source}: {where} has an empty text in column '{text_key}'; fill it in or remove the record"
            )
        if label is None or not str(label).strip():
            raise UserError(
                f"{source}: {where} has an empty label in column '{label_key}'; fill it in or remove the record"
            )
        out.append({"text": text, "label": str(label).strip()})
    classes = sorted({r["label"] for r in out})
    if len(classes) < min_classes:
        raise UserError(
            f"{source} has only one class ({', '.join(map(repr, classes)) or 'none'}) in column '{label_key}'; "
            "a classifier needs at least two -- check --label-column"
        )
    return out


def _row_record(row: list[str], keys: list[str], tab_text_last: bool) -> dict:
    if tab_text_last and len(row) > len(keys):
        row = row[: len(keys) - 1] + ["\t".join(row[len(keys) - 1 :])]
    return dict(zip(keys, row))


def balance_undersample(records: list[dict], seed: int = 123) -> list[dict]:
    """Every class cut to the size of the smallest, by a seeded sample without replacement (the book's protocol for
    the spam data); the kept records stay in their original order."""
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_label.setdefault(r["label"], []).append(i)
    smallest = min(len(v) for v in by_label.values())
    rng = np.random.default_rng(seed)
    keep = sorted(int(i) for label in sorted(by_label) for i in rng.choice(by_label[label], smallest, replace=False))
    return [records[i] for i in keep]


def split_records(records: list, fractions=(0.7, 0.1, 0.2), seed: int = 123) -> dict[str, list]:
    """``{"train", "val", "test"}``: records shuffled by ``seed``, then cut as the book does -- train gets
    ``int(n * f_train)``, val ``int(n * f_val)``, test the rest.  Disjoint, covering, and the same for the same seed.
    A split with a non-zero fraction that comes out empty is a :class:`UserError`."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"split fractions {tuple(fractions)} must be three non-negative numbers adding up to 1")
    order = np.random.default_rng(seed).permutation(len(records))
    n = len(records)
    train_end = int(n * fractions[0])
    val_end = train_end + int(n * fractions[1])
    bounds = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, n)}
    out = {}
    for (name, (a, b)), fraction in zip(bounds.items(), fractions):
        if fraction > 0 and b <= a:
            raise UserError(f"only {n} records: the {name} split ({fraction:.0%}) would be empty; give more data")
        out[name] = [records[i] for i in order[a:b]]
    return out


def label_names(records: list[dict]) -> list[str]:
    """The sorted distinct labels; a label's id is its position (``ham`` 0, ``spam`` 1)."""
    return sorted({r["label"] for r in records})


def label_maps(names: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    """``(id2label, label2id)`` for a model config, from :func:`label_names`."""
    return dict(enumerate(names)), {name: i for i, name in enumerate(names)}


def encode_texts(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of every text, each cut to its first ``max_length`` tokens; also how many were cut."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"] if texts else []
    truncated = sum(1 for row in ids if len(row) > max_length)
    return [row[:max_length] for row in ids], truncated
