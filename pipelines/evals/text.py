"""A causal LM scored on text: mean next-token loss (nats), perplexity and bits per byte.

The documents (a file, a folder, JSONL/CSV records or a Hub id, read by ``pipelines.data.sources.iter_documents``) are
tokenised with the folder's tokenizer, joined with an end-of-text token after each (as in pretraining), and cut into
windows of the model's context.  With a stride below the window length the windows overlap and each token is scored
once, in the first window where it has the most context before it (the usual sliding-window perplexity).  Bits per
byte count the bytes of the text the scored tokens decode to (``pipelines.runs.tokenizers``).
"""

from __future__ import annotations

import math

import torch

from ..data.sources import iter_documents
from ..errors import UserError
from ..runs.folders import open_model
from ..runs.tokenizers import bits_per_byte, count_bytes
from ..training.losses import token_cross_entropy


def lm_windows(tokens: list[int], length: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """``(input ids, target ids)`` windows over ``tokens``; targets already scored by an earlier window are -100.

    Window ``k`` starts at ``k * stride`` and reads up to ``length`` tokens; it predicts the token after each of them.
    Every token but the first is a target exactly once.
    """
    windows = []
    scored_until = 0  # targets are tokens[1:]; those at index <= scored_until are counted already
    start = 0
    last = len(tokens) - 1
    while True:
        end = min(start + length, last)  # inputs tokens[start:end], targets tokens[start + 1 : end + 1]
        targets = [t if start + 1 + i > scored_until else -100 for i, t in enumerate(tokens[start + 1 : end + 1])]
        windows.append((tokens[start:end], targets))
        scored_until = end
        if end >= last:
            return windows
        start += stride


def evaluate_lm(model_dir, data, batch_size=8, max_length=0, stride=0, text_column=None) -> dict:
    model, tokenizer = open_model(model_dir)
    context = model.config.max_position_embeddings
    length = min(max_length or context, context)
    stride = stride or length
    if stride > length:
        raise UserError(f"--stride {stride} is longer than the window ({length} tokens): use at most {length}")
    eos = tokenizer.eos_token_id
    tokens: list[int] = []
    documents = 0
    for doc in iter_documents(str(data), text_column=text_column or "text"):
        tokens.extend(tokenizer(doc)["input_ids"])
        if eos is not None:
            tokens.append(eos)
        documents += 1
    if len(tokens) < 2:
        raise UserError(f"{data} holds fewer than two tokens: give more text to score")
    windows = lm_windows(tokens, length, stride)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            width = max(len(x) for x, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (x, y) in enumerate(chunk):
                input_ids[row, : len(x)] = torch.tensor(x)
                labels[row, : len(y)] = torch.tensor(y)
                mask[row, : len(x)] = 1
            logits = model(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).logits.float()
            labels = labels.to(device)
            flat = logits.reshape(-1, logits.shape[-1])
            total += token_cross_entropy(flat, labels.reshape(-1), reduction="sum").item()
            count += int((labels != -100).sum())
    loss = total / count
    n_bytes = count_bytes(tokenizer, tokens[1:])  # every token but the first is a target exactly once
    return {
        "kind": "causal-lm",
        "model": str(model_dir),
        "data": str(data),
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bpb": bits_per_byte(loss, count, n_bytes),
        "tokens_scored": count,
        "bytes_scored": n_bytes,
        "documents": documents,
        "windows": len(windows),
        "window_length": length,
        "stride": stride,
    }


