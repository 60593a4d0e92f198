"""Where data comes from and how each file format is read: the one place that knows the formats.

* :func:`resolve_source` tells a local file/folder from a Hugging Face Hub dataset id; Hub ids are streamed through
  ``datasets.load_dataset(..., streaming=True)`` (:func:`offline_flag` says when the environment forbids it).
* One reader per record format -- JSON list, JSON Lines, headed CSV/TSV, Parquet, Hub -- each yielding
  ``(where, record)`` so that every error names the file and the record; :func:`iter_records` picks the reader.
  Text that is not UTF-8 is one :class:`~pipelines.errors.UserError` naming the file (and line).
* :func:`iter_documents`: the documents of a pretraining corpus (files, folders, records, Hub, or the embedded
  :func:`default_corpus`).
"""

from __future__ import annotations

import csv
import itertools
import json
import operator
import re
from collections.abc import Iterator
from pathlib import Path
from pydoc_data.topics import topics

from ..errors import UserError, describe_type, first_line, json_error
from ..hub import HUB_ID, looks_like_hub_id, offline_flag

TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
DOCUMENT_SUFFIXES = TEXT_SUFFIXES + RECORD_SUFFIXES
"""File types :func:`iter_documents` reads: a text file is one document; a record file gives one per record."""

LOCAL_HINT = "--data PATH (a .txt/.md file or a folder of them, .jsonl/.json, .csv/.tsv or .parquet)"


# ==================================================================================================================
# Sources
# ==================================================================================================================



def resolve_source(spec: str) -> tuple[str, Path | str]:
    """Tell where ``spec`` points: ``("local", Path)`` or ``("hub", "owner/name[:config]")``.

    Rules, in order:

    1. An existing file or folder (after ``~`` expansion) is local.
    2. ``owner/name`` or ``owner/name:config`` -- letters, digits, ``_ . -`` in each part, exactly one slash, not
       starting with ``.``/``/``/``~`` and not ending in a file extension such as ``.csv`` -- is a Hub dataset id.
       ``:config`` picks the dataset's configuration (``Salesforce/wikitext:wikitext-2-raw-v1``); the ``train``
       split is always the one read.
    3. Anything else is a local path that does not exist: :class:`UserError`.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return "local", path
    if looks_like_hub_id(spec, config=True):
        return "hub", spec
    raise UserError(
        f"data path '{spec}' does not exist; give an existing file or folder, or a Hugging Face Hub dataset id "
        "as owner/name or owner/name:config"
    )


def _needs_network(hub_id: str, why: str) -> UserError:
    return UserError(
        f"data '{hub_id}' is a Hugging Face Hub dataset id, which needs the network ({why}); "
        f"pass local files instead with {LOCAL_HINT}"
    )


def _open_hub(hub_id: str):
    """The ``train`` split of a Hub dataset, streamed; offline mode and unreachable Hubs are user errors."""
    flag = offline_flag()
    if flag:
        raise _needs_network(hub_id, f"{flag} is set")
    import datasets  # only Hub and Parquet data need it

    match = HUB_ID.match(hub_id)
    try:
        return datasets.load_dataset(match["repo"], match["config"], split="train", streaming=True)
    except ConnectionError as exc:
        raise _needs_network(hub_id, f"the Hub could not be reached: {exc}") from None
    except datasets.exceptions.DatasetNotFoundError:
        raise UserError(
            f"Hub dataset '{match['repo']}' was not found (or it is gated/private: log in with `hf auth login`); "
            f"check the id or pass local files with {LOCAL_HINT}"
        ) from None
    except ValueError as exc:  # e.g. a missing or unknown configuration name
        raise UserError(
            f"Hub dataset '{hub_id}' could not be opened: {first_line(exc)}; name a configuration as owner/name:config"
        ) from None


# ==================================================================================================================
# Records: one reader per format, each yielding (where, record dict)
# ==================================================================================================================


def _not_utf8(path: Path, exc: UnicodeDecodeError, where: str = "") -> UserError:
    bad = exc.object[exc.start : exc.start + 1].hex()
    return UserError(
        f"{path}{where} is not UTF-8 text (invalid byte 0x{bad}); re-save it as UTF-8, "
        f"e.g. iconv -f latin1 -t utf-8 '{path}' > converted{path.suffix}"
    )


def _read_text(path: Path) -> str:
    """The whole file as text (UTF-8, an optional BOM dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number from 1, line)`` without reading the file whole; a non-UTF-8 line is named."""
    lineno = 0
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                yield lineno, line
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc, f" (after line {lineno})") from None


def jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    """The records of a JSON Lines file, one per non-blank line, read lazily; a bad line is named by its index and
    line number."""
    index = 0
    for lineno, line in _iter_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}: record index {index} (line {lineno}) is not valid JSON ({_json_msg(exc.msg)} at column "
                f"{exc.colno}); "
                "each line must hold one JSON object"
            ) from None
        yield f"record index {index} (line {lineno})", record
        index += 1


def _find_bad_list_record(text: str) -> tuple[int, int, str] | None:
    """For a JSON list that does not parse: ``(record index, character offset, message)`` of the first bad record.

    Walks the list with ``json.JSONDecoder.raw_decode`` one element at a time.  None when the list itself is fine
    and the error lies outside it.
    """
    decoder, space = json.JSONDecoder(), re.compile(r"\s*")
    pos = space.match(text).end()
    if text[pos : pos + 1] != "[":
        return None
    pos = space.match(text, pos + 1).end()
    if text[pos : pos + 1] == "]":
        return None
    index = 0
    while True:
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            return index, exc.pos, _json_msg(exc.msg)
        end = space.match(text, pos).end()
        if text[end : end + 1] == "]":
            return None
        if text[end : end + 1] != ",":
            return index + 1, end, f"expected ',' or ']' between it and record index {index}"
        pos = space.match(text, end + 1).end()
        index += 1


def _json_msg(msg: str) -> str:
    """json's message without its dangling 'at' ('Unterminated string starting at'), which our text follows with
    'at line L, column C'."""
    return msg[:-3] if msg.endswith(" at") else msg


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def json_list_records(path: Path) -> Iterator[tuple[str, object]]:
    """The records of a file holding one JSON list, parsed at once; a record that breaks the list is named by its
    index, line and column."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        bad = _find_bad_list_record(text)
        if bad is None:
            raise UserError(f"{path} is not valid JSON ({json_error(exc)})") from None
        index, pos, msg = bad
        line, col = _line_col(text, pos)
        raise UserError(
            f"{path}: record index {index} is not valid JSON ({msg} at line {line}, column {col}); fix or remove it"
        ) from None
    if not isinstance(data, list):
        raise UserError(
            f"{path} holds a JSON {type(data).__name__}, not a list of records; "
            "write a JSON list [{...}, ...] or one JSON object per line (.jsonl)"
        )
    return ((f"record index {index}", record) for index, record in enumerate(data))


def _json_records(path: Path) -> Iterator[tuple[str, object]]:
    """A ``.json`` file starting with ``[`` is a JSON list; any other ``.json`` is read as JSON Lines."""
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8-sig", errors="ignore").lstrip()
    if head.startswith("["):
        return json_list_records(path)
    return jsonl_records(path)


def is_tab_separated(path: Path) -> bool:
    """``.tsv`` is tab-separated, ``.csv`` comma-separated; any other name is tab-separated if its first line has a
    tab."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return suffix == ".tsv"
    with open(path, "rb") as f:
        return b"\t" in f.readline()


def iter_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, cells)`` of a delimited file; blank lines skipped.

    Tab-separated files are read with quoting off (texts such as SMS messages contain bare quotes); comma-separated
    files use the usual double-quote rules.
    """
    tab = is_tab_separated(path)
    csv.field_size_limit(2**31 - 1)  # whole documents can sit in one cell
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if tab else csv.reader(f)
        try:
            for row in reader:
                if any(cell.strip() for cell in row):
                    yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc, f" (after line {reader.line_num})") from None
        except csv.Error as exc:
            raise UserError(f"{path} line {reader.line_num} is not valid {'TSV' if tab else 'CSV'}: {exc}") from None


def _headed_table_records(path: Path) -> Iterator[tuple[str, dict]]:
    """A CSV/TSV whose first row names the columns."""
    rows = iter_rows(path)
    header = next(rows, None)
    if header is None:
        return
    names = [cell.strip() for cell in header[1]]
    for index, (lineno, row) in enumerate(rows):
        yield f"record index {index} (line {lineno})", dict(zip(names, row))


def _parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    import datasets  # only Hub and Parquet data need it

    rows = datasets.load_dataset("parquet", data_files=[str(path)], split="train", streaming=True)
    for index, record in enumerate(rows):
        yield f"record index {index}", record


def _hub_records(hub_id: str) -> Iterator[tuple[str, dict]]:
    """Rows of a Hub dataset; ``ClassLabel`` columns are given as their names (``"spam"``, not ``1``)."""
    import datasets  # only Hub and Parquet data need it

    ds = _open_hub(hub_id)
    class_labels = {k: f for k, f in (ds.features or {}).items() if isinstance(f, datasets.ClassLabel)}
    rows = iter(ds)
    index = 0
    while True:
        try:
            record = next(rows)
        except StopIteration:
            return
        except ConnectionError as exc:
            raise _needs_network(hub_id, f"the stream broke at record index {index}: {exc}") from None
        for key, feature in class_labels.items():
            if isinstance(record.get(key), int):
                record[key] = feature.int2str(record[key])
        yield f"record index {index}", record
        index += 1


def iter_records(spec: str | Path) -> tuple[str, Iterator[tuple[str, object]]]:
    """``(source name, (where, record) iterator)`` for a record file (JSON/JSONL/CSV/TSV/Parquet) or a Hub id."""
    kind, target = resolve_source(str(spec))
    if kind == "hub":
        return target, _hub_records(target)
    if target.is_dir():
        raise UserError(f"'{target}' is a folder; give one data file (.json, .jsonl, .csv, .tsv or .parquet)")
    suffix = target.suffix.lower()
    readers = {
        ".jsonl": jsonl_records,
        ".json": _json_records,
        ".csv": _headed_table_records,
        ".tsv": _headed_table_records,
        ".parquet": _parquet_records,
    }
    if suffix not in readers:
        raise UserError(f"{target}: unsupported file type '{suffix or '(none)'}'; use one of {', '.join(readers)}")
    return str(target), readers[suffix](target)


def require_object(source: str, where: str, record: object) -> dict:
    if not isinstance(record, dict):
        raise UserError(f"{source}: {where} is a JSON {type(record).__name__}, not an object with named fields")
    return record


def get_field(source: str, where: str, record: dict, column: str, flag: str) -> object:
    if column not in record:
        available = ", ".join(repr(k) for k in record) or "(none)"
        raise UserError(f"{source}: {where} has no column '{column}'; available columns: {available}; pass {flag} NAME")
    return record[column]


# ==================================================================================================================
# Pretraining text
# ==================================================================================================================


def default_corpus() -> list[str]:
    """The embedded corpus: CPython's reference-manual topics (``pydoc_data.topics``), one document per topic,
    in sorted topic order."""
    return [topics[key] for key in sorted(topics)]


def corpus_files(folder: Path) -> list[Path]:
    """Supported files under ``folder``, recursively, sorted by relative path; hidden files and folders skipped
    (so a token cache kept in a dot-folder beside the data is never read as data)."""
    skip = len(folder.parts)  # rglob's paths are folder / relative parts (cheaper than relative_to per file)
    keyed = [
        ("/".join(p.parts[skip:]), p)
        for p in folder.rglob("*")
        if p.suffix.lower() in DOCUMENT_SUFFIXES
        and not any(part.startswith(".") for part in p.parts[skip:])
        and p.is_file()
    ]
    return [p for _, p in sorted(keyed, key=operator.itemgetter(0))]


def _file_documents(path: Path, text_column: str) -> Iterator[str]:
    """A ``.txt``/``.md`` file is one document; a record file gives the ``text_column`` of each record."""
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        yield _read_text(path)
        return
    if suffix not in RECORD_SUFFIXES:
        raise UserError(
            f"{path}: unsupported file type '{suffix or '(none)'}'; use one of {', '.join(DOCUMENT_SUFFIXES)}"
        )
    source, records = iter_records(path)
    yield from _record_documents(source, records, text_column)


def _record_documents(source: str, records: Iterator[tuple[str, object]], text_column: str) -> Iterator[str]:
    for where, record in records:
        value = get_field(source, where, require_object(source, where, record), text_column, "--text-column")
        if value is not None and not isinstance(value, str):
            raise UserError(f"{source}: {where} column '{text_column}' holds {describe_type(value)}, not text")
        yield value or ""


def iter_documents(spec: str | None, text_column: str = "text") -> Iterator[str]:
    """Documents of a pretraining corpus, in a deterministic order.

    * ``None``: the embedded corpus (:func:`default_corpus`).
    * a ``.txt``/``.md`` file: the whole file is one document.
    * a folder: every supported file under it, recursively, in sorted path order (hidden entries skipped).
    * ``.jsonl``/``.json``/``.parquet``, or ``.csv``/``.tsv`` with a header row: the ``text_column`` of each record.
    * a Hub dataset id: its ``train`` split streamed, ``text_column`` of each row.

    Documents that are empty or only whitespace are skipped; a corpus without any text is a :class:`UserError`.
    """
    if spec is None:
        source, documents = "the default corpus", iter(default_corpus())
    else:
        kind, target = resolve_source(spec)
        source = str(target)
        if kind == "hub":
            documents = _record_documents(source, _hub_records(target), text_column)
        elif target.is_dir():
            files = corpus_files(target)
            if not files:
                raise UserError(f"folder '{target}' holds no supported files ({', '.join(DOCUMENT_SUFFIXES)})")
            documents = itertools.chain.from_iterable(_file_documents(f, text_column) for f in files)
        else:
            documents = _file_documents(target, text_column)
    count = 0
    for doc in documents:
        if doc and not doc.isspace():  # what doc.strip() would say, without the copy
            count += 1
            yield doc
    if count == 0:
        raise UserError(f"the corpus '{source}' is empty: it holds no text; give a source with some text in it")
