"""A fast ``encode_batch`` for GPT-2-style byte-level BPE tokenizers: the C extension ``pipelines._bpe``.

:func:`FastBPE.from_tokenizer` takes a ``PreTrainedTokenizerFast`` (or a ``tokenizers.Tokenizer``) and returns an
encoder whose :meth:`FastBPE.encode_batch` gives the same ids as
``[e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]``, several times faster
(a hand-written pre-tokenizer, a cache of encoded pieces, all threads with the GIL released).  It returns ``None``
(and logs why) unless the tokenizer is exactly what the C code reproduces:

* no normaliser; pre-tokenizer ``ByteLevel(add_prefix_space=False, use_regex=True)`` (alone or as the only member of
  a ``Sequence``);
* model ``BPE`` without dropout, ``continuing_subword_prefix``, ``end_of_word_suffix``, ``byte_fallback`` or
  ``ignore_merges``, all 256 byte symbols in the vocabulary (so its ``unk_token`` can never be used), merges without
  repeats whose results are in the vocabulary;
* no truncation or padding set on the backend; a post-processor that adds nothing without special tokens;
* the compiled extension present, and the encoder agreeing with the tokenizer on built-in sample texts.

Documents the C code cannot vouch for are encoded by the tokenizer itself, so results stay identical: those holding
the text of an added token (``<|endoftext|>``: ``tokenizers`` cuts those out of raw text even without special
tokens), a code point unassigned in Python's Unicode database (``tokenizers`` may know a newer Unicode), a lone
surrogate, a code point in planes 4-13 or 15-16 (unassigned or private use), and those with a pre-token longer than
``_bpe.PIECE_LIMIT`` bytes.

Pre-tokenisation classes of code points: ``\\p{L}`` and ``\\p{N}`` are the Unicode general categories L* and N*;
whitespace (Oniguruma's ``\\s`` as ``tokenizers`` uses it) is the set :data:`WHITESPACE`, found by probing the
reference pre-tokenizer over every code point (``tests/test_fast_bpe.py`` checks it again).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import unicodedata

import numpy as np

logger = logging.getLogger(__name__)

try:
    from . import _bpe
except ImportError as _err:  # no compiler at install time: the pure tokenizers path runs
    _bpe = None
    _IMPORT_ERROR = str(_err)
else:
    _IMPORT_ERROR = ""

WHITESPACE = frozenset(
    [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)
"""Code points that ``\\s`` matches in ``tokenizers``' GPT-2 pattern (not U+001C-001F, U+180E, U+200B or U+FEFF)."""

SAMPLE_TEXTS = (
    "Hello world! It's a test: don't, won't, we'll, they're, I've, I'm, he'd. IT'S LOUD'S 'S 'Re",
    "  leading spaces,\ttabs\t\tand\nnew\n\nlines\r\n  indented\n\t code();  \n   ",
    "numbers 12345 3.14159 1,000,000 ٣٤٥ ४५६ ²³ Ⅻ and symbols @#$%^&*()_+-=[]{}|;:,.<>/?~`",
    "Ünïcödé: naïve café, Привет мир, Γειά σου, 你好，世界。こんにちは 한국어 🙂👍🏽 e\u0301 \u00a0nbsp\u3000ideo",
    "",
    " ",
    "x" * 300 + " " + "ab" * 200,
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


@functools.lru_cache(maxsize=1)
def class_table() -> bytes:
    """One byte per code point: its pre-tokenizer class in ``_bpe`` (letter, number, whitespace, other, unsure).

    Letters are the categories L*, numbers N*, whitespace :data:`WHITESPACE`.  Unsure (the document goes to the
    reference tokenizer): unassigned here (Cn; the reference may know a newer Unicode), surrogates (Cs), and planes
    4-13 and 15-16 wholesale (unassigned or private use), which keeps the table quick to build.
    """
    by_category = dict.fromkeys(("Lu", "Ll", "Lt", "Lm", "Lo"), _bpe.CLASS_LETTER)
    by_category.update(dict.fromkeys(("Nd", "Nl", "No"), _bpe.CLASS_NUMBER))
    by_category.update(Cn=_bpe.CLASS_UNSURE, Cs=_bpe.CLASS_UNSURE)

    def classes(first: int, stop: int) -> bytes:
        chars = "".join(map(chr, range(first, stop)))
        other = _bpe.CLASS_OTHER
        return bytes([by_category.get(cat, other) for cat in map(unicodedata.category, chars)])

    unsure = bytes([_bpe.CLASS_UNSURE])
    table = bytearray(classes(0, 0x40000) + unsure * (0xE0000 - 0x40000) + classes(0xE0000, 0xF0000))
    table += unsure * (0x110000 - len(table))
    for c in WHITESPACE:
        table[c] = _bpe.CLASS_SPACE
    return bytes(table)


def _reject(reason: str) -> None:
    logger.info("fast BPE encoder not used: %s", reason)
    return None


def _check_pre_tokenizer(pre) -> str:
    if pre is not None and pre.get("type") == "Sequence" and len(pre.get("pretokenizers") or []) == 1:
        pre = pre["pretokenizers"][0]
    if not pre or pre.get("type") != "ByteLevel":
        return f"pre-tokenizer {pre and pre.get('type')!r} is not ByteLevel"
    if pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return "the ByteLevel pre-tokenizer adds a prefix space or does not split with GPT-2's pattern"
    return ""


_QUIET_POST_PROCESSORS = {"ByteLevel", "TemplateProcessing", "RobertaProcessing", "BertProcessing"}


def _check_post_processor(post) -> str:
    if post is None:
        return ""
    members = post.get("processors") or [] if post.get("type") == "Sequence" else [post]
    for p in members:
        if p.get("type") not in _QUIET_POST_PROCESSORS:
            return f"post-processor {p.get('type')!r} is unknown"
    return ""


class FastBPE:
    """``encode_batch(texts) -> list[np.ndarray]`` (``uint32`` ids per text) with ``pipelines._bpe``.

    Build it with :meth:`from_tokenizer`.  Callable, so it can be given as ``encode_batch`` to
    :func:`pipelines.data.build_token_shards`.
    """

    def __init__(self, backend, encoder, added: list[str], num_threads: int):
        self.backend = backend
        self.encoder = encoder
        self.added = added
        self.num_threads = num_threads

    @classmethod
    def from_tokenizer(cls, tokenizer, num_threads: int | None = None) -> FastBPE | None:
        """The fast encoder for ``tokenizer``, or ``None`` (with the reason logged) where it cannot be exact."""
        if _bpe is None:
            return _reject(f"the C extension pipelines._bpe is not built ({_IMPORT_ERROR})")
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        try:
            text = backend.to_str()
        except Exception as err:  # not a tokenizers.Tokenizer
            return _reject(f"cannot read the tokenizer's JSON ({err})")
        prepared = _prepare(text)
        if isinstance(prepared, str):
            return _reject(prepared)
        encoder, added = prepared
        if not num_threads:
            num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        fast = cls(backend, encoder, added, max(1, int(num_threads)))
        theirs = [e.ids for e in backend.encode_batch(list(SAMPLE_TEXTS), add_special_tokens=False)]
        ours = [None if a is None else a.tolist() for a in fast._encode_fast(list(SAMPLE_TEXTS))[0]]
        if ours != theirs:
            bad = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
            return _reject(f"the C encoder disagrees with the tokenizer on sample text {bad}")
        return fast

    def _encode_fast(self, texts: list[str]) -> tuple[list[np.ndarray | None], list[int]]:
        """C-encoded ids per text, ``None`` where the reference tokenizer must do it; and those indices."""
        ids, lengths = self.encoder.encode(texts, self.num_threads)
        ids = np.frombuffer(ids, dtype=np.uint32)
        lengths = np.frombuffer(lengths, dtype=np.int64)
        ends = np.cumsum(np.maximum(lengths, 0))
        starts = ends - np.maximum(lengths, 0)
        out: list[np.ndarray | None] = []
        todo = []
        for i, (s, e, n) in enumerate(zip(starts.tolist(), ends.tolist(), lengths.tolist())):
            if n < 0:
                out.append(None)
                todo.append(i)
            else:
                out.append(ids[s:e])
        return out, todo

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """One ``uint32`` id array per text, identical to the tokenizer's ``encode_batch(add_special_tokens=False)``."""
        texts = list(texts)
        if not texts:
            return []
        mine = [i for i, t in enumerate(texts) if not isinstance(t, str) or any(a in t for a in self.added)]
        if mine:
            mine_set = set(mine)
            rest = [i for i in range(len(texts)) if i not in mine_set]
            out: list[np.ndarray | None] = [None] * len(texts)
            encoded, todo = self._encode_fast([texts[i] for i in rest])
            for i, arr in zip(rest, encoded):
                out[i] = arr
            todo = sorted(mine + [rest[j] for j in todo])
        else:
            out, todo = self._encode_fast(texts)
        if todo:
            # raises what the tokenizer raises (e.g. TypeError for a lone surrogate or a non-str)
            slow = self.backend.encode_batch([texts[i] for i in todo], add_special_tokens=False)
            for i, enc in zip(todo, slow):
                out[i] = np.asarray(enc.ids, dtype=np.uint32)
        return out  # type: ignore[return-value]

    __call__ = encode_batch


@functools.lru_cache(maxsize=4)
def _prepare(spec_text: str) -> tuple[object, list[str]] | str:
    """``(_bpe.Encoder, texts of the added tokens)`` for a tokenizer's JSON, or why the C code cannot reproduce it.

    Cached: the tables are read-only and the encoder serialises its calls, so instances can share one."""
    try:
        spec = json.loads(spec_text)
    except ValueError as err:
        return f"cannot read the tokenizer's JSON ({err})"
    if spec.get("normalizer") is not None:
        return f"the tokenizer has a normaliser ({spec['normalizer'].get('type')})"
    if spec.get("truncation") is not None or spec.get("padding") is not None:
        return "the tokenizer truncates or pads"
    for why in (_check_pre_tokenizer(spec.get("pre_tokenizer")), _check_post_processor(spec.get("post_processor"))):
        if why:
            return why
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"model {model.get('type')!r} is not BPE"
    if model.get("dropout") not in (None, 0, 0.0):
        return "BPE dropout is on"
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            return f"BPE {key} is set"
    if model.get("byte_fallback") or model.get("ignore_merges"):
        return "BPE byte_fallback or ignore_merges is on"
    added = [t["content"] for t in spec.get("added_tokens") or []]
    if any(not a for a in added):
        return "an added token is empty"
    try:
        return _build_encoder(model), added
    except ValueError as err:
        return str(err)


def _build_encoder(model: dict):
    """The ``_bpe.Encoder`` for a BPE model's JSON; ``ValueError`` where it is not a byte-level BPE."""
    vocab: dict[str, int] = model["vocab"]
    to_char = byte_to_unicode()
    byte_ids = []
    for b in range(256):
        if to_char[b] not in vocab:
            raise ValueError(f"byte {b} ({to_char[b]!r}) is not in the vocabulary: not a byte-level BPE")
        byte_ids.append(vocab[to_char[b]])
    if max(vocab.values(), default=0) >= 2**32 - 1 or min(vocab.values(), default=0) < 0:
        raise ValueError("token ids out of range")
    triples = []
    merges_met = set()
    for m in model.get("merges") or []:
        left, right = m.split(" ", 1) if isinstance(m, str) else m
        if (left, right) in merges_met:
            raise ValueError(f"merge {left!r} {right!r} is listed twice")
        merges_met.add((left, right))
        try:
            triples += (vocab[left], vocab[right], vocab[left + right])
        except KeyError:
            raise ValueError(f"merge {left!r} {right!r} uses or makes a token outside the vocabulary") from None
    # token text -> its bytes: characters standing for themselves stay, the others map to their byte, characters
    # outside the byte alphabet below 256 are deleted (the length then shows it) and those above fail to encode
    to_byte = {ord(c): b for b, c in to_char.items() if ord(c) != b}
    to_byte.update({c: None for c in range(256) if to_char[c] != chr(c)})
    whole = []
    for token, idx in vocab.items():
        if len(token) < 2:
            continue
        raw = token.translate(to_byte)
        if len(raw) == len(token):
            try:
                whole.append((raw.encode("latin-1"), idx))
            except UnicodeEncodeError:
                pass
    return _bpe.Encoder(
        np.asarray(byte_ids, dtype=np.uint32).tobytes(),
        np.asarray(triples, dtype=np.uint32).tobytes(),
        whole,
        class_table(),
    )
