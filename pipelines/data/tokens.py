"""Token streams: a corpus tokenised once into memory-mapped shards, and the pretraining examples cut from them.

* :func:`get_or_build_token_shards` tokenises a corpus (``pipelines.data.sources``) into a folder of raw token ids
  with an end-of-text token after every document (:func:`build_token_shards`), cached under a key of the source's
  identity and :func:`tokenizer_fingerprint`; :func:`load_tokens` reads it back memory-mapped.
* :func:`encoder` encodes with tiktoken, built from the tokenizer's own vocabulary and merges, when the tokenizer is a
  GPT-2-style byte-level BPE and tiktoken gives its ids on sample texts (the tokenizer's ``encode_batch`` otherwise).
* :func:`split_tokens` deals blocks of the stream to train/val/test by seed; :func:`pretraining_dataset` cuts a
  split into examples: ``joined`` and ``sliding`` (:class:`SlidingWindowDataset`, the book's window) or ``cropped``
  (:class:`CroppedDocumentDataset`, one example per document).
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
import tiktoken
import torch

from ..errors import UserError
from ..fs import atomic_dir, atomic_write_json
from .sources import corpus_files, iter_documents, resolve_source

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # a target that is not scored: transformers' and PyTorch's convention

# GPT-2's pre-tokenisation pattern as tiktoken writes it (Radford et al., 2019); ``tokenizers``' ByteLevel
# pre-tokenizer with use_regex=True splits text the same way, whitespace classes included
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# texts on which a tiktoken encoder must give the tokenizer's own ids before it is used: contractions, whitespace runs,
# numbers in several scripts, letters with combining marks, CJK, emoji with modifiers, long repeats
SAMPLE_TEXTS = (
    "Hello world! It's a test: don't, won't, we'll, they're, I've, I'm, he'd. IT'S LOUD'S 'S 'Re",
    "  leading spaces,\ttabs\t\tand\nnew\n\nlines\r\n  indented\n\t code();  \n   ",
    "numbers 12345 3.14159 1,000,000 \u0663\u0664\u0665 \u096a\u096b\u096c \u00b2\u00b3 \u216b and symbols "
    "@#$%^&*()_+-=[]{}|;:,.<>/?~`",
    "\u00dcn\u00efc\u00f6d\u00e9: na\u00efve caf\u00e9, \u041f\u0440\u0438\u0432\u0435\u0442, "
    "\u4f60\u597d\uff0c\u4e16\u754c\u3002 \U0001f642\U0001f44d\U0001f3fd e\u0301 \u00a0nbsp\u3000ideo",
    "",
    " ",
    "x" * 300 + " " + "ab" * 200 + " <|endoftext|> after",
)


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
    work on many at once.  It returns one id sequence per document: lists of ints, or 1-D integer numpy arrays (joined
    without a round trip through Python ints).
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

    Encoding goes through :func:`encoder` (tiktoken on all cores where it gives the tokenizer's ids)."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    name, key = _cache_key(spec, fingerprint, text_column, max_documents)  # the same folder as token_cache()
    folder = _cache_folder(cache_root, name, key)
    if (folder / "meta.json").is_file() and load_meta(folder).get("cache_key") == key:
        return folder
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no end-of-text token (eos_token); set one so documents can be separated")
    encode_batch = encoder(tokenizer)
    source = "the default corpus" if spec is None else spec
    documents = iter_documents(spec, text_column)
    if max_documents:
        documents = itertools.islice(documents, max_documents)
    logger.info("tokenising %s into %s", source, folder)
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


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte -> the printable character that stands for it in a byte-level vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_level_problem(spec: dict) -> str:
    """Why a tokenizer's JSON is not a plain GPT-2-style byte-level BPE ('' when it is)."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers") or []) == 1:
        pre = pre["pretokenizers"][0]
    model = spec.get("model") or {}
    if spec.get("normalizer") is not None:
        return f"it has a normaliser ({spec['normalizer'].get('type')})"
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return "its pre-tokenizer is not GPT-2's byte-level split"
    if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix") or model.get("byte_fallback") or model.get("ignore_merges"):
        return "its model is not a plain BPE"
    return ""


def tiktoken_encoding(tokenizer):
    """A ``tiktoken.Encoding`` with the vocabulary of a GPT-2-style byte-level BPE tokenizer, or None (and the reason
    logged) when tiktoken cannot reproduce it.

    tiktoken's ranks are both merge priorities and token ids; the ``tokenizers`` trainer (and GPT-2's vocabulary)
    number the learned tokens in the order of their merges after the 256 bytes, so the ids serve as ranks.  Added
    tokens (``<|endoftext|>``) become tiktoken's special tokens, matched in raw text as ``tokenizers`` matches them.
    The encoding is used only when it gives the tokenizer's ids on :data:`SAMPLE_TEXTS`."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    spec = json.loads(backend.to_str())
    problem = _byte_level_problem(spec)
    decode = {char: byte for byte, char in byte_to_unicode().items()}
    special = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
    ranks = {}
    for token, index in (spec.get("model") or {}).get("vocab", {}).items():
        if index in special.values():
            continue
        if not all(ch in decode for ch in token):
            problem = problem or f"token {token!r} is not made of byte symbols"
            break
        ranks[bytes(decode[ch] for ch in token)] = index
    if not problem and len({ranks.get(bytes([b])) for b in range(256)} - {None}) != 256:
        problem = "not every byte is a token"
    if not problem:
        encoding = tiktoken.Encoding(name="gpt-scratch-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=special)
        theirs = [e.ids for e in backend.encode_batch(list(SAMPLE_TEXTS), add_special_tokens=False)]
        if encoding.encode_batch(list(SAMPLE_TEXTS), allowed_special="all") == theirs:
            return encoding
        problem = "tiktoken's ids differ from the tokenizer's on the sample texts"
    logger.info("tiktoken not used: %s", problem)
    return None


def encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """``encode_batch(texts) -> ids per text``, the tokenizer's ids without added special tokens: tiktoken on all
    cores (its Rust core releases the GIL) where :func:`tiktoken_encoding` allows it, else ``tokenizers``.  A text
    that is not valid Unicode (a lone surrogate) goes to ``tokenizers``, which refuses it as it always has."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)

    def by_tokenizers(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]

    encoding = tiktoken_encoding(tokenizer)
    if encoding is None:
        return by_tokenizers
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def by_tiktoken(texts: list[str]) -> list[list[int]]:
        try:
            for text in texts:
                text.encode("utf-8")  # tiktoken would replace a lone surrogate where tokenizers refuses it
        except (UnicodeEncodeError, AttributeError):
            return by_tokenizers(texts)
        return encoding.encode_batch(texts, num_threads=threads, allowed_special="all")

    return by_tiktoken


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
    ``tokens[s + 1 : s + max_length + 1]`` -- already the next-token targets (``pipelines.training.losses``'
    convention).

    Items are ``{"input_ids", "shift_labels"}`` dicts of ``int64`` tensors.  With ``stride == max_length`` this is the
    "joined" layout: the stream cut into consecutive non-overlapping windows.
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
    assigned, first_block = {}, 0
    for name, count in counts.items():
        assigned[name] = order[first_block : first_block + count]
        first_block += count
    assigned["train"] = order[first_block:]
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


