"""Batch collates: right padding for classification, and the instruction collate of the book's chapter 7."""

from __future__ import annotations

import torch

from .tokens import IGNORE_INDEX


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
    are cut to ``max_length``.  Returns ``{"input_ids": inputs, "shift_labels": targets}``
    (``pipelines.training.losses``' convention: targets already next-token aligned).
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
