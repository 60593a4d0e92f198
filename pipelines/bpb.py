"""Bits per byte: a loss that does not depend on the tokenizer.

A mean next-token loss in nats says little across tokenizers: a tokenizer with longer tokens has fewer, harder
predictions.  Bits per byte divides the total information by the length of the text instead::

    bpb = loss_nats / ln(2) * tokens_scored / bytes

where ``loss_nats`` is the mean loss over the ``tokens_scored`` target tokens and ``bytes`` is the number of UTF-8
bytes of the text those target tokens decode to (nanochat's ``val_bpb`` is the same quantity).  Special tokens (the
end-of-text separator between documents) are no text: they count 0 bytes, while their loss stays in the numerator
(nanochat leaves their loss out too; the difference is one token per document).

For byte-level BPE tokenizers (GPT-2's and those ``train-tokenizer`` makes) every token is a fixed string of bytes, so
the byte count of any token sequence is the sum of a per-token table (:func:`token_byte_lengths`), exact even when a
window starts or ends inside a multi-byte character.  Other tokenizers fall back to decoding the tokens.
"""

from __future__ import annotations

import json
import math

import numpy as np

def bits_per_byte(loss_nats: float, tokens: int, n_bytes: int) -> float:
    """``loss_nats / ln 2 * tokens / n_bytes``; NaN when there are no bytes."""
    if n_bytes <= 0 or not math.isfinite(loss_nats):
        return float("nan")
    return loss_nats / math.log(2) * tokens / n_bytes


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    if decoder.get("type") == "Sequence":
        return any(d.get("type") == "ByteLevel" for d in decoder.get("decoders", []))
    return decoder.get("type") == "ByteLevel"


def token_byte_lengths(tokenizer) -> np.ndarray | None:
    """UTF-8 byte length of every token id (``int64``, ``len(tokenizer)`` entries) for a byte-level tokenizer, else
    ``None``.  Special tokens count 0; added tokens that are not special count the bytes of their text."""
    table = None
    if _is_byte_level(tokenizer):
        from .fast_bpe import byte_to_unicode

        symbols = set(byte_to_unicode().values())
        special = set(tokenizer.all_special_ids)
        added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        table = np.zeros(len(tokenizer), dtype=np.int64)
        for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
            if i in special or token is None:
                continue
            if i in added:
                table[i] = len(added[i].encode("utf-8"))
            elif all(ch in symbols for ch in token):
                table[i] = len(token)  # one symbol per byte
            else:  # not a byte-level token after all: decode instead
                table = None
                break
    return table


class ByteCounter:
    """``counter(ids)``: the UTF-8 bytes of the text token ids decode to (special tokens: none).  The per-token
    table is built once per counter."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.table = token_byte_lengths(tokenizer)

    def __call__(self, ids) -> int:
        if self.table is not None:
            total = 0
            for start in range(0, len(ids), 1 << 22):  # in chunks: a long stream is never copied whole
                chunk = np.asarray(ids[start : start + (1 << 22)], dtype=np.int64)
                total += int(self.table[chunk].sum())
            return total
        text = self.tokenizer.decode(np.asarray(ids, dtype=np.int64).tolist(), skip_special_tokens=True)
        return len(text.encode("utf-8"))


def count_bytes(tokenizer, ids) -> int:
    """UTF-8 bytes of the text the token ids decode to (special tokens: none)."""
    return ByteCounter(tokenizer)(ids)


def bytes_per_token(tokenizer, tokens, sample_tokens: int = 16_000_000, pieces: int = 64) -> float:
    """Mean UTF-8 bytes per token of a token stream (a split of the pretraining corpus): over the whole stream when
    it holds at most ``sample_tokens`` tokens, else over ``pieces`` evenly spaced stretches that add up to that."""
    n = len(tokens)
    if n == 0:
        return float("nan")
    counter = ByteCounter(tokenizer)
    if n <= sample_tokens:
        return counter(tokens[:]) / n
    width = sample_tokens // pieces
    starts = np.linspace(0, n - width, pieces).astype(np.int64)
    total = sum(counter(tokens[int(s) : int(s) + width]) for s in starts)
    return total / (width * pieces)


def bpb_from_ratio(loss_nats: float, bytes_per_token_ratio: float) -> float:
    """Bits per byte from a mean loss and the bytes-per-token ratio of the text it was measured on."""
    if not (bytes_per_token_ratio > 0) or not math.isfinite(loss_nats):
        return float("nan")
    return loss_nats / math.log(2) / bytes_per_token_ratio
