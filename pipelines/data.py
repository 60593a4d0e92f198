"""Every input format the pipelines read, in one place.

Sections, in order:

* **Sources** -- :func:`resolve_source` tells a local file/folder from a Hugging Face Hub dataset id; Hub ids are
  streamed through ``datasets.load_dataset(..., streaming=True)``.
* **Records** -- one reader per file format (JSON list, JSON Lines, headed CSV/TSV, Parquet, Hub), each yielding
  ``(where, record)`` so that every error names the file and the record.
* **Pretraining text** -- :func:`iter_documents` (files, folders, records, Hub, or the embedded default corpus).
* **Token shards** -- :func:`build_token_shards` tokenises once into memory-mappable shards with an EOS token after
  every document; :func:`get_or_build_token_shards` caches them under a key of source + tokenizer.
* **Pretraining datasets** -- the book's sliding window, the "joined" and "cropped" layouts, and a seeded
  train/val/test split of the token stream.
* **Tables** -- labelled text (the SMS Spam Collection as published, and CSV/TSV/JSON variants), class balancing and
  a seeded split.
* **Instructions** -- Alpaca-style records.
* **Collates** -- padding for classification and the instruction collate of the book's chapter 7.

Every problem a user can cause is raised as :class:`~pipelines.errors.UserError` with one line that names the problem,
the file or record, and what to do.
"""

from __future__ import annotations

import array
import csv
import hashlib
import itertools
import json
import logging
import operator
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, describe_type
from .fast_bpe import FastBPE
from .fsutil import atomic_dir, atomic_write_json
from .losses import IGNORE_INDEX

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
DOCUMENT_SUFFIXES = TEXT_SUFFIXES + RECORD_SUFFIXES
"""File types :func:`iter_documents` reads: a text file is one document; a record file gives one per record."""

LOCAL_HINT = "--data PATH (a .txt/.md file or a folder of them, .jsonl/.json, .csv/.tsv or .parquet)"


# ==================================================================================================================
# Sources
# ==================================================================================================================

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<config>[\w.-]+))?$")
# A last path part ending in one of these is a file name, never a Hub dataset name.
_FILE_SUFFIXES = DOCUMENT_SUFFIXES + (".gz", ".bz2", ".xz", ".zst", ".zip", ".tar", ".arrow", ".npy", ".bin", ".yaml")


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
    match = _HUB_ID.match(spec)
    if match and not match["repo"].lower().endswith(_FILE_SUFFIXES):
        return "hub", spec
    raise UserError(
        f"data path '{spec}' does not exist; give an existing file or folder, or a Hugging Face Hub dataset id "
        "as owner/name or owner/name:config"
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _needs_network(hub_id: str, why: str) -> UserError:
    return UserError(
        f"data '{hub_id}' is a Hugging Face Hub dataset id, which needs the network ({why}); "
        f"pass local files instead with {LOCAL_HINT}"
    )


def _open_hub(hub_id: str):
    """The ``train`` split of a Hub dataset, streamed; offline mode and unreachable Hubs are user errors."""
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _env_flag(flag):
            raise _needs_network(hub_id, f"{flag} is set")
    import datasets

    match = _HUB_ID.match(hub_id)
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"Hub dataset '{hub_id}' could not be opened: {first}; name a configuration as owner/name:config"
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


def _jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    index = 0
    for lineno, line in _iter_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}: record index {index} (line {lineno}) is not valid JSON ({_json_msg(exc.msg)} at column {exc.colno}); "
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


def _json_list_records(path: Path, text: str) -> Iterator[tuple[str, object]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        bad = _find_bad_list_record(text)
        if bad is None:
            raise UserError(f"{path} is not valid JSON ({_json_msg(exc.msg)} at line {exc.lineno}, column {exc.colno})") from None
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
    for index, record in enumerate(data):
        yield f"record index {index}", record


def _json_records(path: Path) -> Iterator[tuple[str, object]]:
    """A ``.json`` file starting with ``[`` is a JSON list; any other ``.json`` is read as JSON Lines."""
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8-sig", errors="ignore").lstrip()
    if head.startswith("["):
        return _json_list_records(path, _read_text(path))
    return _jsonl_records(path)


def _is_tab_separated(path: Path) -> bool:
    """``.tsv`` is tab-separated, ``.csv`` comma-separated; any other name is tab-separated if its first line has a
    tab."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return suffix == ".tsv"
    with open(path, "rb") as f:
        return b"\t" in f.readline()


def _iter_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, cells)`` of a delimited file; blank lines skipped.

    Tab-separated files are read with quoting off (texts such as SMS messages contain bare quotes); comma-separated
    files use the usual double-quote rules.
    """
    tab = _is_tab_separated(path)
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
    rows = _iter_rows(path)
    header = next(rows, None)
    if header is None:
        return
    names = [cell.strip() for cell in header[1]]
    for index, (lineno, row) in enumerate(rows):
        yield f"record index {index} (line {lineno})", dict(zip(names, row))


def _parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    import datasets

    rows = datasets.load_dataset("parquet", data_files=[str(path)], split="train", streaming=True)
    for index, record in enumerate(rows):
        yield f"record index {index}", record


def _hub_records(hub_id: str) -> Iterator[tuple[str, dict]]:
    """Rows of a Hub dataset; ``ClassLabel`` columns are given as their names (``"spam"``, not ``1``)."""
    import datasets

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


def _iter_records(spec: str | Path) -> tuple[str, Iterator[tuple[str, object]]]:
    """``(source name, (where, record) iterator)`` for a record file (JSON/JSONL/CSV/TSV/Parquet) or a Hub id."""
    kind, target = resolve_source(str(spec))
    if kind == "hub":
        return target, _hub_records(target)
    if target.is_dir():
        raise UserError(f"'{target}' is a folder; give one data file (.json, .jsonl, .csv, .tsv or .parquet)")
    suffix = target.suffix.lower()
    readers = {
        ".jsonl": _jsonl_records,
        ".json": _json_records,
        ".csv": _headed_table_records,
        ".tsv": _headed_table_records,
        ".parquet": _parquet_records,
    }
    if suffix not in readers:
        raise UserError(f"{target}: unsupported file type '{suffix or '(none)'}'; use one of {', '.join(readers)}")
    return str(target), readers[suffix](target)


def _require_object(source: str, where: str, record: object) -> dict:
    if not isinstance(record, dict):
        raise UserError(f"{source}: {where} is a JSON {type(record).__name__}, not an object with named fields")
    return record


def _get_field(source: str, where: str, record: dict, column: str, flag: str) -> object:
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
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _corpus_files(folder: Path) -> list[Path]:
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
    source, records = _iter_records(path)
    yield from _record_documents(source, records, text_column)


def _record_documents(source: str, records: Iterator[tuple[str, object]], text_column: str) -> Iterator[str]:
    for where, record in records:
        value = _get_field(source, where, _require_object(source, where, record), text_column, "--text-column")
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
            files = _corpus_files(target)
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


# ==================================================================================================================
# Token shards
# ==================================================================================================================

SHARD_FORMAT = "gpt-scratch-token-shards"
SHARD_FORMAT_VERSION = 1


def _token_dtype(vocab_size: int) -> np.dtype:
    """Raw little-endian ``uint16`` when every id fits (vocab_size <= 65536), else ``uint32``."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def _batches(documents: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    """Documents grouped until a group holds at least ``batch_chars`` characters (a long document goes alone)."""
    batch, size = [], 0
    for doc in documents:
        batch.append(doc)
        size += len(doc)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def build_token_shards(
    documents: Iterable[str],
    encode_batch: Callable[[list[str]], Sequence[Sequence[int] | np.ndarray]],
    eos_id: int,
    out_dir: str | os.PathLike,
    vocab_size: int,
    shard_tokens: int = 100_000_000,
    *,
    batch_chars: int = 4_000_000,
    source: str = "",
    cache_key: str | None = None,
) -> Path:
    """Tokenise ``documents`` into ``out_dir``, which appears as a whole (written aside, then renamed).

    Layout of the folder:

    * ``shard_00000.bin``, ``shard_00001.bin``, ...: raw little-endian token ids (``uint16`` when
      ``vocab_size <= 65536``, else ``uint32``), ``shard_tokens`` per shard except the last.  The stream is every
      document's ids followed by ``eos_id``.
    * ``doc_starts.npy``: ``int64`` offset of every document's first token in the stream.
    * ``meta.json``: format, ``dtype``, ``vocab_size``, ``eos_id``, ``num_tokens``, ``num_documents``, the shard
      files with their token counts, ``source`` and ``cache_key``.

    Documents reach ``encode_batch`` in lists of about ``batch_chars`` characters, so a multithreaded encoder can
    work on many at once.  It returns one id sequence per document: lists of ints, or 1-D integer numpy arrays (as
    :class:`~pipelines.fast_bpe.FastBPE` does), which are joined without a round trip through Python ints.
    """
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary (size {vocab_size})")
    if shard_tokens < 1:
        raise ValueError("shard_tokens must be positive")
    dtype = _token_dtype(vocab_size)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        shards: list[dict] = []
        doc_starts = array.array("q")
        pending: list[np.ndarray] = []
        pending_len = total = 0

        def write_shard(tokens: np.ndarray) -> None:
            name = f"shard_{len(shards):05d}.bin"
            tokens.astype(dtype, copy=False).tofile(tmp / name)
            shards.append({"file": name, "num_tokens": int(tokens.size)})

        eos = np.array([eos_id], dtype=np.int64)
        for batch in _batches(documents, batch_chars):
            encoded = encode_batch(batch)
            if len(encoded) != len(batch):
                raise ValueError(f"encode_batch returned {len(encoded)} sequences for {len(batch)} documents")
            arrays = all(isinstance(d, np.ndarray) and d.ndim == 1 for d in encoded)
            pieces = []
            for doc_ids in encoded:
                doc_starts.append(total)
                pieces += [doc_ids, eos] if arrays else [doc_ids, (eos_id,)]
                total += len(doc_ids) + 1
            size = sum(len(p) for p in pieces)
            if arrays:  # numpy ids (the fast encoder): one C-level copy into int64
                ids = np.concatenate(pieces, dtype=np.int64)
            else:
                ids = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64, count=size)
            if ids.min() < 0 or ids.max() >= vocab_size:
                bad = int(ids.max()) if ids.max() >= vocab_size else int(ids.min())
                raise ValueError(f"the encoder produced token id {bad}, outside the vocabulary (size {vocab_size})")
            pending.append(ids)
            pending_len += size
            while pending_len >= shard_tokens:
                stream = np.concatenate(pending)
                write_shard(stream[:shard_tokens])
                pending, pending_len = [stream[shard_tokens:]], pending_len - shard_tokens
        if pending_len:
            write_shard(np.concatenate(pending))
        if total == 0:
            raise UserError(f"the corpus '{source or out_dir}' is empty: it holds no documents to tokenise")
        np.save(tmp / "doc_starts.npy", np.frombuffer(doc_starts, dtype=np.int64))
        atomic_write_json(
            tmp / "meta.json",
            {
                "format": SHARD_FORMAT,
                "version": SHARD_FORMAT_VERSION,
                "dtype": dtype.name,
                "byte_order": "little",
                "vocab_size": vocab_size,
                "eos_id": eos_id,
                "num_tokens": total,
                "num_documents": len(doc_starts),
                "shards": shards,
                "doc_starts_file": "doc_starts.npy",
                "source": source,
                "cache_key": cache_key,
            },
        )
    return out_dir


def load_meta(shard_dir: str | os.PathLike) -> dict:
    """``meta.json`` of a shard folder, plus ``"doc_starts"``: the document offsets as a read-only ``int64`` array."""
    shard_dir = Path(shard_dir)
    path = shard_dir / "meta.json"
    if not path.is_file():
        raise UserError(
            f"'{shard_dir}' is not a token-shard folder (it has no meta.json); build it with the pretrain workflow"
        )
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != SHARD_FORMAT or meta.get("version") != SHARD_FORMAT_VERSION:
        raise UserError(
            f"'{shard_dir}' holds token shards of another format or version; delete the folder to rebuild it"
        )
    meta["doc_starts"] = np.load(shard_dir / meta["doc_starts_file"], mmap_mode="r")
    return meta


class ConcatTokens:
    """A read-only 1-D token sequence made of several arrays (shards, or the blocks of a split), indexed and sliced
    like one array.  Nothing is loaded whole: a slice copies only its own tokens, and only when it spans pieces.

    ``ranges`` is, when known, where each piece lies in the stream it was cut from (:func:`split_tokens` sets it).
    """

    def __init__(self, pieces: list[np.ndarray], ranges: list[tuple[int, int]] | None = None):
        self.pieces = [p for p in pieces if len(p)]
        if not self.pieces:
            raise ValueError("ConcatTokens needs at least one non-empty piece")
        self.offsets = np.cumsum([0] + [len(p) for p in self.pieces])
        self.dtype = self.pieces[0].dtype
        self.ranges = ranges

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def views(self, start: int, stop: int) -> list[np.ndarray]:
        """The pieces' views that together hold ``[start, stop)`` (no copy)."""
        out = []
        k = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            end = min(stop, int(self.offsets[k + 1]))
            out.append(self.pieces[k][start - self.offsets[k] : end - self.offsets[k]])
            start, k = end, k + 1
        return out

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("ConcatTokens supports contiguous slices only")
            parts = self.views(start, max(start, stop))
            if not parts:
                return np.empty(0, dtype=self.dtype)
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        i = operator.index(key)
        i = i + len(self) if i < 0 else i
        if not 0 <= i < len(self):
            raise IndexError(f"index {key} out of range for {len(self)} tokens")
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.pieces[k][i - self.offsets[k]]

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(self.pieces)
        return out if dtype is None else out.astype(dtype)


def load_tokens(shard_dir: str | os.PathLike):
    """The token stream of a shard folder, memory-mapped: a ``np.memmap`` for one shard, a :class:`ConcatTokens`
    over the shards' memmaps for several (sliced like one array, without loading the whole stream)."""
    shard_dir = Path(shard_dir)
    meta = load_meta(shard_dir)
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    maps = []
    for shard in meta["shards"]:
        path = shard_dir / shard["file"]
        expected = shard["num_tokens"] * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise UserError(f"token shard '{path}' is missing or truncated; delete '{shard_dir}' to rebuild it")
        maps.append(np.memmap(path, dtype=dtype, mode="r", shape=(shard["num_tokens"],)))
    return maps[0] if len(maps) == 1 else ConcatTokens(maps)


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's JSON serialisation (and its EOS id): equal fingerprints tokenise alike."""
    payload = tokenizer.backend_tokenizer.to_str() + f"\neos={tokenizer.eos_token_id}"
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _source_identity(spec: str | None) -> tuple[str, dict]:
    """``(readable name, what identifies the content)`` of a corpus source.

    Default corpus: the Python version it comes from.  Local file or folder: each file's resolved path, size and
    modification time.  Hub id: the id (with configuration); a Hub dataset that changes upstream keeps its key.
    """
    if spec is None:
        python = f"{sys.implementation.name}-{platform.python_version()}"
        return "default-corpus", {"kind": "default", "python": python}
    kind, target = resolve_source(spec)
    if kind == "hub":
        return target.replace("/", "--").replace(":", "--"), {"kind": "hub", "id": target, "split": "train"}
    files = _corpus_files(target) if target.is_dir() else [target]
    stats = [(os.path.realpath(f), st.st_size, st.st_mtime_ns) for f in files for st in (f.stat(),)]
    return target.resolve().name, {"kind": "local", "files": stats}


def _cache_key(spec: str | None, fingerprint: str, text_column: str, max_documents: int) -> tuple[str, str]:
    name, identity = _source_identity(spec)
    material = {
        "format": SHARD_FORMAT_VERSION,
        "source": identity,
        "text_column": text_column,
        "max_documents": max_documents or None,
        "tokenizer": fingerprint,
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()
    return name, key


def token_cache(
    source_spec: str | None,
    tokenizer_fingerprint: str,
    cache_root: str | os.PathLike,
    text_column: str = "text",
    max_documents: int = 0,
) -> Path:
    """The cache folder for a source tokenised by a tokenizer: ``cache_root/tokens-<name>-<16 hex of the key>``.

    The key hashes the source's identity (see :func:`_source_identity`), ``text_column``, ``max_documents``, the
    tokenizer fingerprint and the shard format version, so any change to them gives another folder.
    """
    name, key = _cache_key(source_spec, tokenizer_fingerprint, text_column, max_documents)
    return _cache_folder(cache_root, name, key)


def _cache_folder(cache_root: str | os.PathLike, name: str, key: str) -> Path:
    safe = re.sub(r"[^\w.-]+", "_", name)[:60]
    return Path(cache_root) / f"tokens-{safe}-{key[:16]}"


def get_or_build_token_shards(
    spec: str | None,
    tokenizer,
    cache_root: str | os.PathLike,
    text_column: str = "text",
    *,
    max_documents: int = 0,
    shard_tokens: int = 100_000_000,
) -> Path:
    """The shard folder of ``spec`` tokenised by ``tokenizer`` (a ``PreTrainedTokenizerFast``), built only when
    the cache holds no complete folder for the same key.  Special tokens are not added; the tokenizer's
    ``eos_token_id`` separates documents.  ``max_documents`` > 0 reads only the first that many documents.

    Encoding uses :class:`~pipelines.fast_bpe.FastBPE` (the C extension, same ids, several times faster) when the
    tokenizer is a plain GPT-2-style byte-level BPE and the extension is built, else the tokenizer's own
    ``encode_batch``."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    name, key = _cache_key(spec, fingerprint, text_column, max_documents)  # the same folder as token_cache()
    folder = _cache_folder(cache_root, name, key)
    if (folder / "meta.json").is_file() and load_meta(folder).get("cache_key") == key:
        return folder
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no end-of-text token (eos_token); set one so documents can be separated")
    encode_batch = FastBPE.from_tokenizer(tokenizer)
    if encode_batch is None:
        backend = tokenizer.backend_tokenizer

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]

    source = "the default corpus" if spec is None else spec
    documents = iter_documents(spec, text_column)
    if max_documents:
        documents = itertools.islice(documents, max_documents)
    logger.info(
        "tokenising %s into %s (%s)",
        source,
        folder,
        "fast C encoder" if isinstance(encode_batch, FastBPE) else "tokenizers' encode_batch",
    )
    return build_token_shards(
        documents,
        encode_batch,
        tokenizer.eos_token_id,
        folder,
        vocab_size=len(tokenizer),
        shard_tokens=shard_tokens,
        source=source,
        cache_key=key,
    )


# ==================================================================================================================
# Pretraining datasets
# ==================================================================================================================


def _as_tokens(tokens):
    return np.asarray(tokens, dtype=np.int64) if isinstance(tokens, (list, tuple)) else tokens


def _too_short(n_tokens: int, needed: int, what: str) -> UserError:
    return UserError(
        f"corpus shorter than one context: {what} has {n_tokens} tokens but needs at least {needed}; "
        "give more text or a shorter context (--context-length)"
    )


class SlidingWindowDataset(torch.utils.data.Dataset):
    """The book's sliding window: window ``i`` starts at ``i * stride`` for starts in
    ``range(0, len(tokens) - max_length, stride)``; input ``tokens[s : s + max_length]``, labels
    ``tokens[s + 1 : s + max_length + 1]`` -- already the next-token targets (``pipelines.losses``' convention).

    Items are ``{"input_ids", "shift_labels"}`` dicts of ``int64`` tensors.  With ``stride == max_length`` this is the "joined" layout:
    the stream cut into consecutive non-overlapping windows.
    """

    def __init__(self, tokens, max_length: int, stride: int):
        if max_length < 1 or stride < 1:
            raise ValueError("max_length and stride must be positive")
        self.tokens = _as_tokens(tokens)
        self.max_length = max_length
        self.starts = range(0, len(self.tokens) - max_length, stride)
        if len(self.starts) == 0:
            raise _too_short(len(self.tokens), max_length + 1, "the text")

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int):
        s = self.starts[index]
        chunk = torch.from_numpy(np.asarray(self.tokens[s : s + self.max_length + 1], dtype=np.int64))
        return {"input_ids": chunk[:-1], "shift_labels": chunk[1:]}


class CroppedDocumentDataset(torch.utils.data.Dataset):
    """One example per document (the "cropped" layout): the document -- its tokens up to the next entry of
    ``doc_starts`` or the end, so including its EOS -- cropped to ``max_length + 1`` tokens.  Input is all but the
    last of those, ``shift_labels`` all but the first (next-token targets); both are right-padded to ``max_length``,
    the input with ``pad_id`` and the targets with -100.  Documents of fewer than two tokens give no example.
    """

    def __init__(self, tokens, doc_starts, max_length: int, pad_id: int):
        self.tokens = _as_tokens(tokens)
        self.max_length, self.pad_id = max_length, pad_id
        starts = np.asarray(doc_starts, dtype=np.int64)
        ends = np.append(starts[1:], len(self.tokens))
        keep = ends - starts >= 2
        self.spans = np.stack([starts[keep], np.minimum(ends[keep], starts[keep] + max_length + 1)], axis=1)
        if len(self.spans) == 0:
            raise UserError("no document has two or more tokens, so the cropped layout has no examples; give more text")

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, index: int):
        s, e = self.spans[index]
        doc = np.asarray(self.tokens[s:e], dtype=np.int64)
        input_ids = np.full(self.max_length, self.pad_id, dtype=np.int64)
        labels = np.full(self.max_length, IGNORE_INDEX, dtype=np.int64)
        input_ids[: len(doc) - 1] = doc[:-1]
        labels[: len(doc) - 1] = doc[1:]
        return {"input_ids": torch.from_numpy(input_ids), "shift_labels": torch.from_numpy(labels)}


LAYOUTS = ("joined", "sliding", "cropped")


def pretraining_dataset(
    layout: str, tokens, max_length: int, *, stride: int | None = None, doc_starts=None, pad_id: int | None = None
):
    """The dataset of a layout: ``joined`` (non-overlapping windows over the stream), ``sliding`` (the book's window
    with ``stride``, default ``max_length``), ``cropped`` (one example per document; needs ``doc_starts`` and
    ``pad_id`` -- for a split, ``split_doc_starts``)."""
    if layout == "joined":
        return SlidingWindowDataset(tokens, max_length, max_length)
    if layout == "sliding":
        return SlidingWindowDataset(tokens, max_length, stride or max_length)
    if layout == "cropped":
        return CroppedDocumentDataset(tokens, doc_starts, max_length, pad_id)
    raise UserError(f"unknown data layout '{layout}'; choose one of {', '.join(LAYOUTS)}")


SPLIT_NAMES = ("train", "val", "test")


def split_tokens(
    tokens,
    fractions=(0.9, 0.05, 0.05),
    block: int | None = None,
    seed: int = 0,
    *,
    context_length: int | None = None,
) -> dict[str, ConcatTokens]:
    """Split a token stream into train/val/test, fixed by ``seed``.

    Rule: the stream is cut into ``n = len(tokens) // block`` contiguous blocks (the remainder joins the last
    block); ``block`` defaults to ``max(context_length + 1, len(tokens) // 1000)``, so every block holds at least one
    context plus its target and a large corpus gives about 1000 blocks.  Give ``context_length``, ``block`` or both;
    with ``block`` alone, one block is taken as one context.  Val and test get
    ``max(1, round(fraction * n))`` blocks each (none for a zero fraction), train the rest; which blocks is the start
    of ``numpy.random.default_rng(seed).permutation(n)``: first val's, then test's.  So the same seed and stream give
    the same split, the splits are disjoint and together cover every token.

    Returns ``{name: ConcatTokens}`` for the splits with a non-zero fraction, each in stream order and with
    ``ranges`` set to its blocks' ``(start, stop)``.  A split shorter than one context (``context_length + 1``
    tokens) is a :class:`UserError` that says how many tokens the corpus has and needs.
    """
    if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(
            f"split fractions {tuple(fractions)} must be three non-negative numbers (train > 0) adding up to 1"
        )
    if context_length is None and block is None:
        raise ValueError("split_tokens needs context_length or block")
    tokens = _as_tokens(tokens)
    n_tokens = len(tokens)
    need = block if context_length is None else context_length + 1
    names = [name for name, f in zip(SPLIT_NAMES, fractions) if f > 0]
    block = block or max(need, n_tokens // 1000)
    if block < need:
        raise UserError(f"split block of {block} tokens is shorter than one context ({need} tokens); raise it")
    n_blocks = n_tokens // block
    counts = {name: max(1, round(f * n_blocks)) for name, f in zip(SPLIT_NAMES, fractions) if f > 0 and name != "train"}
    if n_blocks - sum(counts.values()) < 1:
        raise _too_short(n_tokens, len(names) * block, f"the corpus (split into {'/'.join(names)})")
    order = np.random.default_rng(seed).permutation(n_blocks)
    assigned, at = {}, 0
    for name, count in counts.items():
        assigned[name] = order[at : at + count]
        at += count
    assigned["train"] = order[at:]
    splits = {}
    for name in names:
        ids = sorted(int(b) for b in assigned[name])
        ranges = [(b * block, n_tokens if b == n_blocks - 1 else (b + 1) * block) for b in ids]
        if isinstance(tokens, ConcatTokens):
            pieces = [view for a, b in ranges for view in tokens.views(a, b)]
        else:
            pieces = [tokens[a:b] for a, b in ranges]
        splits[name] = ConcatTokens(pieces, ranges)
    return splits


def split_doc_starts(doc_starts, ranges: list[tuple[int, int]]) -> np.ndarray:
    """Document starts of a split, in the split's own offsets: every document start inside a block, plus each
    block's start (a block may begin mid-document).  For :class:`CroppedDocumentDataset` over a split."""
    starts = np.asarray(doc_starts, dtype=np.int64)
    out, offset = [], 0
    for a, b in ranges:
        inside = starts[(starts > a) & (starts < b)]
        out.append(np.concatenate([[offset], inside - a + offset]))
        offset += b - a
    return np.concatenate(out).astype(np.int64)


# ==================================================================================================================
# Tables: labelled text
# ==================================================================================================================

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
    rows = list(_iter_rows(path))
    if not rows:
        return [], iter(()), False
    cells = [row for _, row in rows]
    if header is None:
        header = _has_header(cells, requested)
    keys = [c.strip() for c in cells[0]] if header else [str(i) for i in range(min(map(len, cells)))]
    body = rows[1:] if header else rows
    records = ((f"record index {i} (line {lineno})", row) for i, (lineno, row) in enumerate(body))
    return keys, records, _is_tab_separated(path)


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
        source, raw = _iter_records(spec)
        records = ((where, _require_object(source, where, r)) for where, r in raw)
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
        text = _get_field(source, where, record, text_key, "--text-column")
        label = _get_field(source, where, record, label_key, "--label-column")
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


# ==================================================================================================================
# Instructions
# ==================================================================================================================


def read_instructions(path_or_hub: str | os.PathLike) -> list[dict]:
    """Alpaca-style records ``{"instruction", "input", "output"}`` from a JSON list, JSON Lines (or CSV/Parquet with
    those columns) or a Hub id (streamed, e.g. ``tatsu-lab/alpaca``).  ``input`` is optional and defaults to ``""``;
    other fields are dropped.  Errors name the record index (and line where known) and the missing field."""
    source, records = _iter_records(str(path_or_hub))
    out = []
    for where, record in records:
        record = _require_object(source, where, record)
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


# ==================================================================================================================
# Collates
# ==================================================================================================================


def pad_collate_classification(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Items ``{"input_ids": list[int] | tensor, "label": int}`` -> ``input_ids`` right-padded with ``pad_id`` to the
    longest item, ``attention_mask`` (1 on real tokens) and ``labels``; all ``int64``, ready for ``model(**batch)``."""
    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        ids = torch.as_tensor(item["input_ids"], dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    labels = torch.tensor([int(item["label"]) for item in batch], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def instruction_collate(
    batch: list[dict],
    pad_id: int,
    ignore_index: int = IGNORE_INDEX,
    mask_prompt: bool = False,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """The book's chapter-7 collate.  Each item is ``{"input_ids": prompt + response ids, "prompt_len": int}``
    without an end-of-text token; ``pad_id`` is the end-of-text id.

    Per item: one end-of-text is appended, the sequence is right-padded with ``pad_id`` to the longest
    (appended) sequence in the batch, inputs are ``seq[:-1]`` and targets ``seq[1:]``.  In the targets every padding
    position after the appended end-of-text becomes ``ignore_index`` (so the model learns to stop exactly once);
    with ``mask_prompt`` the targets that predict prompt tokens (the first ``prompt_len - 1``) do too.  Finally both
    are cut to ``max_length``.  Returns ``{"input_ids": inputs, "shift_labels": targets}`` (``pipelines.losses``'
    convention: targets already next-token aligned).
    """
    width = max(len(item["input_ids"]) for item in batch) + 1
    inputs = torch.full((len(batch), width - 1), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), width - 1), ignore_index, dtype=torch.long)
    for row, item in enumerate(batch):
        seq = list(item["input_ids"]) + [pad_id]
        seq += [pad_id] * (width - len(seq))
        n = len(item["input_ids"])
        inputs[row] = torch.tensor(seq[:-1])
        targets[row, :n] = torch.tensor(seq[1 : n + 1])
        if mask_prompt:
            targets[row, : max(0, item["prompt_len"] - 1)] = ignore_index
    if max_length is not None:
        inputs, targets = inputs[:, :max_length], targets[:, :max_length]
    return {"input_ids": inputs, "shift_labels": targets}
