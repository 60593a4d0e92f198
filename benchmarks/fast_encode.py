"""A faster ``encode_batch`` for ``pipelines.data.build_token_shards``: tiktoken's BPE with the vocabulary of a
GPT-2-style Hugging Face tokenizer, run in worker processes.

Why: on the benchmark machine the ``tokenizers`` library encodes 1.5-3 MB/s (``encode_batch`` barely uses the second
core on whole documents), tiktoken 10-16 MB/s in one thread, and tiktoken's own thread pool does not scale
(``encode_ordinary_batch`` with 2 threads is slower than 1).  Processes do scale.

Safe only where tiktoken reproduces the tokenizer: a byte-level BPE without normaliser, GPT-2's split pattern, ids in
merge order (what ``tokenizers``' trainer and GPT-2's own vocabulary give).  :class:`TiktokenEncoder` checks that on
sample texts and refuses otherwise, so a caller can fall back to the tokenizer's own ``encode_batch``.

    encoder = TiktokenEncoder(tokenizer, check_texts=documents[:50])
    with encoder:
        build_token_shards(documents, encoder, tokenizer.eos_token_id, out_dir, vocab_size=len(tokenizer))
"""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np

# GPT-2's pre-tokenisation pattern as tiktoken writes it; tokenizers' ByteLevel(use_regex=True) splits the same way
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_decoder() -> dict[str, int]:
    """GPT-2's table of 256 printable characters standing for bytes, inverted (character -> byte)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def tiktoken_parts(tokenizer) -> tuple[dict[bytes, int], dict[str, int]]:
    """``(mergeable_ranks, special_tokens)`` of a byte-level BPE ``PreTrainedTokenizerFast``: its token ids as ranks."""
    decode = byte_decoder()
    specials = set(tokenizer.all_special_tokens)
    special = {t: i for t, i in tokenizer.get_vocab().items() if t in specials}
    ranks = {}
    for token, idx in tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False).items():
        if not all(ch in decode for ch in token):
            raise ValueError(f"token {token!r} is not byte-level BPE: tiktoken cannot reproduce this tokenizer")
        ranks[bytes(decode[ch] for ch in token)] = idx
    return ranks, special


def make_encoding(ranks, special, name: str = "gpt-scratch-bpe"):
    import tiktoken

    return tiktoken.Encoding(name=name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)


_WORKER_ENCODING = None


def _init_worker(ranks, special):
    global _WORKER_ENCODING
    _WORKER_ENCODING = make_encoding(ranks, special)


def _encode_chunk(texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(_WORKER_ENCODING.encode_ordinary(t), dtype=np.uint32) for t in texts]


class TiktokenEncoder:
    """``encode_batch(texts) -> list[list[int]]`` with tiktoken, spread over ``processes`` worker processes."""

    def __init__(self, tokenizer, processes: int | None = None, check_texts: list[str] | None = None):
        self.ranks, self.special = tiktoken_parts(tokenizer)
        self.encoding = make_encoding(self.ranks, self.special)
        if check_texts:
            theirs = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(check_texts, add_special_tokens=False)]
            ours = [self.encoding.encode_ordinary(t) for t in check_texts]
            if ours != theirs:
                bad = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
                raise ValueError(f"tiktoken does not reproduce this tokenizer (sample text {bad} differs)")
        self.processes = processes or os.cpu_count() or 1
        self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.processes <= 1 or len(texts) < 2:
            return [self.encoding.encode_ordinary(t) for t in texts]
        if self.pool is None:
            # fork: the children need nothing but tiktoken; no thread pool of the parent is used in them
            self.pool = mp.get_context("fork").Pool(self.processes, _init_worker, (self.ranks, self.special))
        # about four chunks per process of similar size (in characters), in order, for balance
        target = sum(len(t) for t in texts) / (4 * self.processes) + 1
        chunks, chunk, size = [], [], 0
        for t in texts:
            chunk.append(t)
            size += len(t)
            if size >= target:
                chunks.append(chunk)
                chunk, size = [], 0
        if chunk:
            chunks.append(chunk)
        return [ids.tolist() for part in self.pool.map(_encode_chunk, chunks) for ids in part]
