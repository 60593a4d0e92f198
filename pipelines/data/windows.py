"""Pretraining examples cut from a token stream, and the seeded train/val/test split of that stream.

Layouts (:func:`pretraining_dataset`): ``joined`` and ``sliding`` (:class:`SlidingWindowDataset`, the book's
window), ``cropped`` (:class:`CroppedDocumentDataset`, one example per document).  :func:`split_tokens` cuts the
stream into blocks dealt to the splits; :func:`split_doc_starts` gives a split's document starts for ``cropped``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..losses import IGNORE_INDEX
from .shards import ConcatTokens

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
