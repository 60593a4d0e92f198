"""A fixed FineWeb test-loss slice: ``gpt-scratch evaluate --task fineweb-test``.

The slice, with the defaults in brackets::

    S = --start-token [50_000_000]   B = --batch-size [6]   T = --seq-len [1024]   N = --batches [3200]
    slice = stream[S : S + N*B*T + 1]                  (19,660,801 tokens by default)
    window k = 0 .. N*B - 1:  inputs slice[k*T : (k+1)*T],  targets slice[k*T + 1 : (k+1)*T + 1]

so the windows are consecutive and do not overlap, every token of ``stream[S + 1 : S + N*B*T + 1]`` is a target
exactly once (N*B*T = 19,660,800 by default), windows go through the model B at a time, and the loss is the mean
next-token cross-entropy (nats) over all targets -- the way llm.c and nanoGPT read a validation shard (each batch
reads B*T + 1 tokens and moves on by B*T).  Reported: loss, perplexity ``exp(loss)`` and bits per byte (see
``pipelines.runs.tokenizers``; the bytes are those of the target tokens).

The stream (``--data``):

* default: the Hub dataset ``HuggingFaceFW/fineweb``, configuration ``sample-10BT`` (split ``train``, its only one),
  streamed in order and tokenised with the model's tokenizer, with the end-of-text token *before* every document
  -- the layout of llm.c's ``dev/data/fineweb.py``, so with GPT-2's tokenizer the stream is the one its token shards
  hold, ``fineweb_val_000000.bin`` first.  Only the documents up to the end of the slice are read; it needs the
  network.
* another Hub id (``owner/name`` or ``owner/name:config``), a text file or folder, or JSONL/CSV/Parquet records:
  tokenised the same way on the fly;
* a token file: ``.bin`` in llm.c's format (a header of 256 int32 -- magic 20240520 for uint16 tokens, 20240801 for
  uint32, version, token count -- then the tokens) or a raw little-endian uint16 stream without a header; ``.npy``
  (a 1-D integer array);
* a token-shard folder of ``pipelines.data.tokens`` (``meta.json`` + ``shard_*.bin``, as pretraining caches them; there
  the end-of-text token follows every document).

The token ids of a file must come from the model's tokenizer; ids outside its vocabulary are refused.
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..data.sources import iter_documents, resolve_source
from ..data.tokens import encoder, load_tokens
from ..errors import UserError
from ..hub import offline_flag
from ..progress import Progress
from ..runs.folders import open_model
from ..runs.tokenizers import bits_per_byte, count_bytes
from ..training.losses import token_cross_entropy

DEFAULT_SOURCE = "HuggingFaceFW/fineweb:sample-10BT"
DEFAULTS = {"start_token": 50_000_000, "batches": 3200, "batch_size": 6, "seq_len": 1024}
LLMC_MAGIC = {20240520: np.dtype("<u2"), 20240801: np.dtype("<u4")}
LLMC_HEADER_INTS = 256


def read_token_file(path: Path):
    """The token stream of a ``.bin`` (llm.c header or raw uint16) or ``.npy`` file, memory-mapped."""
    if path.suffix.lower() == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise UserError(f"--data {path} is not a readable .npy file ({exc})") from None
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise UserError(f"--data {path} holds a {tokens.dtype} array of shape {tokens.shape}: need 1-D integer ids")
        return tokens
    size = path.stat().st_size
    header = np.fromfile(path, dtype="<i4", count=3) if size >= LLMC_HEADER_INTS * 4 else np.zeros(3, "<i4")
    if int(header[0]) in LLMC_MAGIC:
        dtype = LLMC_MAGIC[int(header[0])]
        count = int(header[2])
        if size != LLMC_HEADER_INTS * 4 + count * dtype.itemsize:
            raise UserError(
                f"--data {path}: its llm.c header says {count:,} tokens, but the file size does not match; "
                "the file is truncated or not an llm.c token shard"
            )
        return np.memmap(path, dtype=dtype, mode="r", offset=LLMC_HEADER_INTS * 4, shape=(count,))
    if size % 2:
        raise UserError(f"--data {path} has an odd number of bytes: not a raw uint16 token stream (nor llm.c .bin)")
    return np.memmap(path, dtype="<u2", mode="r") if size else np.zeros(0, dtype="<u2")


def tokenised_slice(spec: str | None, tokenizer, start: int, count: int) -> np.ndarray:
    """Tokens ``[start, start + count)`` of a text source's stream: end-of-text before every document."""
    hub = spec is None or resolve_source(spec)[0] == "hub"
    if hub:
        flag = offline_flag()
        if flag:
            raise UserError(
                f"the fineweb-test stream '{spec or DEFAULT_SOURCE}' is a Hub dataset, which needs the network "
                f"({flag} is set): pass a local token file (llm.c .bin, .npy), a token-shard folder or text "
                "with --data"
            )
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the model's tokenizer has no end-of-text token to put between documents")
    encode = encoder(tokenizer)
    documents = iter_documents(spec or DEFAULT_SOURCE)
    if hub:
        print(f"tokenising {spec or DEFAULT_SOURCE} up to token {start + count:,} (streamed; this takes a while)",
              file=sys.stderr)
    kept: list[np.ndarray] = []
    position, have = 0, 0  # stream tokens seen so far; tokens kept
    while have < count:
        batch = list(itertools.islice(documents, 256))
        if not batch:
            break
        for ids in encode(batch):
            piece = np.concatenate([[eos], np.asarray(ids, dtype=np.int64)])
            lo, hi = max(start - position, 0), min(start + count - position, len(piece))
            if lo < hi:
                kept.append(piece[lo:hi])
                have += hi - lo
            position += len(piece)
            if have >= count:
                break
    out = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    if len(out) < count:
        raise UserError(
            f"the stream of {spec or DEFAULT_SOURCE} has {position:,} tokens, but the slice needs tokens up to "
            f"{start + count:,}: lower --start-token, --batches, --batch-size or --seq-len, or give more text"
        )
    return out


def stream_slice(spec: str | None, tokenizer, start: int, count: int) -> np.ndarray:
    """``stream[start : start + count]`` of ``--data`` (see the module docstring), as ``int64``."""
    path = Path(spec).expanduser() if spec is not None else None
    if path is not None and path.exists():
        if path.is_dir() and (path / "meta.json").is_file():
            tokens = load_tokens(path)
        elif path.is_file() and path.suffix.lower() in (".bin", ".npy"):
            tokens = read_token_file(path)
        else:
            return tokenised_slice(str(path), tokenizer, start, count)
        if len(tokens) < start + count:
            raise UserError(
                f"--data {path} holds {len(tokens):,} tokens, but the slice needs tokens up to {start + count:,}: "
                "lower --start-token, --batches, --batch-size or --seq-len"
            )
        return np.asarray(tokens[start : start + count], dtype=np.int64)
    return tokenised_slice(spec, tokenizer, start, count)


@torch.no_grad()
def evaluate_fineweb_test(
    model_dir, data=None, start_token: int | None = None, batches: int | None = None, batch_size: int | None = None,
    seq_len: int | None = None,
) -> dict:
    """Loss, perplexity and bits per byte of a causal LM folder on the slice the module docstring defines."""
    start = DEFAULTS["start_token"] if start_token is None else start_token
    n_batches = batches or DEFAULTS["batches"]
    b = batch_size or DEFAULTS["batch_size"]
    t = seq_len or DEFAULTS["seq_len"]
    if start < 0:
        raise UserError(f"--start-token {start} must be 0 or positive")
    model, tokenizer = open_model(model_dir)
    context = model.config.max_position_embeddings
    if t > context:
        raise UserError(
            f"--seq-len {t} is longer than the model's context ({context} tokens): pass --seq-len {context} or less "
            "(the slice then differs from the default protocol's)"
        )
    count = n_batches * b * t + 1
    tokens = stream_slice(data, tokenizer, start, count)
    vocab = model.config.vocab_size
    if int(tokens.max()) >= vocab or int(tokens.min()) < 0:
        raise UserError(
            f"--data holds token id {int(tokens.max())}, outside the model's vocabulary ({vocab}): the tokens come "
            "from another tokenizer"
        )
    device = next(model.parameters()).device
    stream = torch.from_numpy(tokens)
    total = 0.0
    bar = Progress(n_batches, "fineweb-test", unit="batch", every=max(1, n_batches // 20))
    for k in range(n_batches):
        chunk = stream[k * b * t : (k + 1) * b * t + 1].to(device)
        x, y = chunk[:-1].view(b, t), chunk[1:].view(b, t)
        logits = model(input_ids=x, use_cache=False).logits
        total += token_cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        bar.update()
    bar.close()
    scored = n_batches * b * t
    loss = total / scored
    n_bytes = count_bytes(tokenizer, tokens[1:])
    return {
        "kind": "fineweb-test",
        "model": str(model_dir),
        "data": str(data) if data is not None else DEFAULT_SOURCE,
        "start_token": start,
        "batches": n_batches,
        "batch_size": b,
        "seq_len": t,
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bpb": bits_per_byte(loss, scored, n_bytes),
        "tokens_scored": scored,
        "bytes_scored": n_bytes,
        "slice": f"stream[{start}:{start + count}]",
    }
