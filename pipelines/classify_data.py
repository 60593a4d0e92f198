"""The data of ``finetune-classifier``: a labelled table cut into train/val/test splits, checked, and tokenised.

``build_splits`` reads ``--data`` (``pipelines.data.read_labeled_table``), balances the classes by undersampling
(default on) and cuts a seeded split (or takes ``--val-data``/``--test-data`` files); ``check_labels`` refuses a
one-class training split and labels the training split never shows; ``encode_split`` turns records into
``{"input_ids", "label"}`` examples cut to the context.  The splits are saved in the run folder (``splits/*.jsonl``)
so that a resumed run trains on the same ones.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

SPLIT_NAMES = ("train", "val", "test")


def encode_texts(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of every text, each cut to its first ``max_length`` tokens; also how many were cut."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"] if texts else []
    truncated = sum(1 for row in ids if len(row) > max_length)
    return [row[:max_length] for row in ids], truncated


def build_splits(cfg, log) -> dict[str, list[dict]]:
    """``{"train", "val", "test"}`` lists of ``{"text", "label"}`` records from --data (and the optional split files)."""
    from collections import Counter

    from . import data

    fractions = (cfg.train_fraction, cfg.val_fraction, cfg.test_fraction)
    if min(fractions) < 0 or cfg.train_fraction <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(
            f"--train-fraction/--val-fraction/--test-fraction {fractions} must be non-negative, with training above "
            "0, and add up to 1"
        )
    records = data.read_labeled_table(cfg.data, cfg.text_column, cfg.label_column)
    counts = Counter(r["label"] for r in records)
    log(f"data: {len(records)} records from {cfg.data} ({_counts_text(counts)})")
    if cfg.balance:
        records = data.balance_undersample(records, seed=cfg.seed)
        log(f"balanced by undersampling to {len(records)} records ({_counts_text(Counter(r['label'] for r in records))})")
    separate = {"val": cfg.val_data, "test": cfg.test_data}
    keep = [f if separate.get(name) is None else 0.0 for name, f in zip(SPLIT_NAMES, fractions)]
    total = sum(keep)
    splits = data.split_records(records, tuple(f / total for f in keep), seed=cfg.seed)
    for name, spec in separate.items():
        if spec is not None:
            splits[name] = data.read_labeled_table(spec, cfg.text_column, cfg.label_column, min_classes=1)
    return splits


def _counts_text(counts) -> str:
    return ", ".join(f"{label}: {n}" for label, n in sorted(counts.items()))


def check_labels(splits: dict[str, list[dict]]) -> list[str]:
    """The label names (sorted) of the training split; refuses a one-class training split or unseen labels."""
    from .data import label_names

    names = label_names(splits["train"])
    if len(names) < 2:
        raise UserError(
            f"the training split holds only one class ({', '.join(map(repr, names)) or 'none'}): a classifier needs "
            "at least two; give more data of the other classes"
        )
    known = set(names)
    for split in ("val", "test"):
        unseen = sorted({r["label"] for r in splits[split]} - known)
        if unseen:
            n = sum(1 for r in splits[split] if r["label"] in unseen)
            raise UserError(
                f"label {', '.join(map(repr, unseen))} occurs in the {split} split ({n} records) but never in the "
                f"training split, so the classifier could not learn it: add training examples of it, or drop those "
                f"records (training labels: {', '.join(map(repr, names))})"
            )
    return names


def encode_split(records: list[dict], tokenizer, label2id: dict[str, int], max_length: int) -> tuple[list[dict], int]:
    ids, truncated = encode_texts(tokenizer, [r["text"] for r in records], max_length)
    for i, row in enumerate(ids):
        if not row:
            raise UserError(f"record {i} ({records[i]['text']!r}) has no tokens: remove it or fix its text")
    return [{"input_ids": row, "label": label2id[r["label"]]} for row, r in zip(ids, records)], truncated


def save_splits(folder: Path, splits: dict[str, list[dict]]) -> None:
    """``folder/{train,val,test}.jsonl``, one record a line, each written atomically."""
    from .fsutil import atomic_write_text

    for name in SPLIT_NAMES:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in splits[name])
        atomic_write_text(folder / f"{name}.jsonl", text)


def saved_splits(folder: Path) -> dict[str, list[dict]] | None:
    """The splits :func:`save_splits` wrote into ``folder``; None unless all three are there."""
    files = {name: folder / f"{name}.jsonl" for name in SPLIT_NAMES}
    if not all(f.is_file() for f in files.values()):
        return None
    return {name: [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
            for name, f in files.items()}
