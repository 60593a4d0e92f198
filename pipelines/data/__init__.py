"""Every input the pipelines read, one concern per module; ``from pipelines.data import X`` reaches them all.

* :mod:`~pipelines.data.sources` -- where data comes from (local file/folder or Hub id, :func:`resolve_source`) and
  the one reader of each record format (JSON list, JSON Lines, CSV/TSV, Parquet, Hub); :func:`iter_documents` and
  :func:`default_corpus` for pretraining text.
* :mod:`~pipelines.data.shards` -- token shards on disk and their cache (:func:`get_or_build_token_shards`).
* :mod:`~pipelines.data.windows` -- pretraining datasets over a token stream and its train/val/test split.
* :mod:`~pipelines.data.tables` -- labelled text for classification: reading, balancing, splitting, label ids.
* :mod:`~pipelines.data.instructions` -- Alpaca-style instruction records.
* :mod:`~pipelines.data.collates` -- batch collates for classification and instruction fine-tuning.

Every problem a user can cause is raised as :class:`~pipelines.errors.UserError` with one line that names the problem,
the file or record, and what to do.
"""

from __future__ import annotations

import importlib

# Each name's home module.  Names load on first use (PEP 562), so ``pipelines.data.sources`` -- what judge reads
# its records with -- comes without torch, which only the datasets and collates need.
_HOMES = {
    "sources": (
        "TEXT_SUFFIXES", "RECORD_SUFFIXES", "DOCUMENT_SUFFIXES", "resolve_source",
        "iter_records", "jsonl_records", "json_list_records", "default_corpus", "iter_documents",
    ),
    "shards": (
        "SHARD_FORMAT", "SHARD_FORMAT_VERSION", "build_token_shards", "load_meta", "ConcatTokens", "load_tokens",
        "tokenizer_fingerprint", "token_cache", "get_or_build_token_shards",
    ),
    "windows": (
        "SlidingWindowDataset", "CroppedDocumentDataset", "LAYOUTS", "pretraining_dataset", "SPLIT_NAMES",
        "split_tokens", "split_doc_starts",
    ),
    "tables": (
        "TEXT_COLUMN_NAMES", "LABEL_COLUMN_NAMES", "read_labeled_table", "balance_undersample", "split_records",
        "label_names", "label_maps",
    ),
    "instructions": ("read_instructions",),
    "collates": ("pad_collate_classification", "instruction_collate"),
}
_HOME_OF = {name: (module, name) for module, names in _HOMES.items() for name in names}

__all__ = sorted(name for names in _HOMES.values() for name in names)


def __getattr__(name: str):
    if name in _HOMES:  # a submodule: pipelines.data.shards
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home, attr = _HOME_OF[name]
    value = getattr(importlib.import_module(f"{__name__}.{home}"), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_HOMES))
