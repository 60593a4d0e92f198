"""Token shards: a corpus tokenised once into memory-mappable files, and the cache that keeps them.

:func:`build_token_shards` writes a folder of raw token ids with an EOS token after every document (layout in its
docstring); :func:`load_meta` and :func:`load_tokens` read it back (:class:`ConcatTokens` joins several shards
without loading them); :func:`get_or_build_token_shards` caches the folder under a key of source identity +
:func:`tokenizer_fingerprint` (:func:`token_cache` names it).
"""

from __future__ import annotations

import array
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

from ..errors import UserError
from ..fast_bpe import FastBPE
from ..fsutil import atomic_dir, atomic_write_json
from .sources import corpus_files, iter_documents, resolve_source

logger = logging.getLogger(__name__)

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
    files = corpus_files(target) if target.is_dir() else [target]
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
