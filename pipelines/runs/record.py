"""The run record: what a training run writes about itself into its run folder's ``run_config.yaml``.

Every workflow (``pretrain``, ``finetune-classifier``, ``finetune-instruct``, and the LoRA adapter and merged folders
of the fine-tunes) fills one :class:`RunRecord`; the model card, the report card, ``publish`` and the adapter card
read it back with :meth:`RunRecord.read`.  The file is one flat mapping: the workflow's resolved settings at the top
level (as ``--config`` files spell them), then the facts of the run (base model, labels, what was trained, the
architecture and the parameter count measured on the model).

Folders written before the record existed are read as well: their architecture was recorded under ``model``
(pretrain) or ``model_config`` (the fine-tunes), and they carry no parameter count.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

RUN_RECORD_FILE = "run_config.yaml"
ADDED_BY_TRANSFORMERS = ("transformers_version", "architectures", "auto_map", "dtype")
OLD_ARCHITECTURE_KEYS = ("model_config", "model")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_label_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)


_FACT_IS_VALID = {
    "parameters": _is_count,
    "base_model": lambda v: isinstance(v, str) and bool(v),
    "labels": _is_label_list,
    "trainable": lambda v: isinstance(v, str) and bool(v),
    "trainable_parameters": _is_count,
    "trainable_percent": is_number,
    "corpus_tokens": _is_count,
    "lora_merged": lambda v: isinstance(v, bool),
}


def model_architecture(config) -> dict:
    """A model config's architecture as the record keeps it: its non-default values, without what transformers adds
    (version, auto classes, dtype)."""
    return {k: v for k, v in config.to_diff_dict().items() if k not in ADDED_BY_TRANSFORMERS}


@dataclasses.dataclass
class RunRecord:
    """One training run, as its run folder records it.

    ``settings``: the workflow's resolved settings (``dataclasses.asdict`` of its config) and the values it derived
    from them (split sizes, the length and evaluation interval used); ``architecture``: the model's config numbers
    (:func:`model_architecture`); ``parameters``: the parameter count measured on the model (for a fine-tune: the
    base with its head, before any adapter); ``base_model``: what a fine-tune started from (a folder or Hub id);
    ``labels``: a classifier's label names in id order; ``trainable``, ``trainable_parameters``,
    ``trainable_percent``: what a fine-tune trained; ``corpus_tokens``: the size of the pretraining corpus;
    ``lora_merged``: the folder holds the adapters folded into the base (``merged/``).
    """

    settings: dict = dataclasses.field(default_factory=dict)
    architecture: dict = dataclasses.field(default_factory=dict)
    parameters: int | None = None
    base_model: str | None = None
    labels: list[str] | None = None
    trainable: str | None = None
    trainable_parameters: int | None = None
    trainable_percent: float | None = None
    corpus_tokens: int | None = None
    lora_merged: bool = False

    def to_dict(self) -> dict:
        """The mapping written to ``run_config.yaml``: the settings, then every fact that is known."""
        out = dict(self.settings)
        for name in _FACT_IS_VALID:
            value = getattr(self, name)
            if value is not None and value is not False:
                out[name] = value
        if self.architecture:
            out["architecture"] = dict(self.architecture)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        """The record a ``run_config.yaml`` mapping holds, written now or before the record existed; values of the
        wrong type are kept among the settings, so nothing recorded is lost."""
        settings = dict(data)
        architecture = settings.pop("architecture", None)
        for key in OLD_ARCHITECTURE_KEYS:
            if not isinstance(architecture, dict) and isinstance(settings.get(key), dict):
                architecture = settings.pop(key)
        facts = {name: settings.pop(name) for name, check in _FACT_IS_VALID.items() if check(settings.get(name))}
        if "labels" in facts:
            facts["labels"] = [str(label) for label in facts["labels"]]
        architecture = dict(architecture) if isinstance(architecture, dict) else {}
        return cls(settings=settings, architecture=architecture, **facts)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> RunRecord:
        """The record of the run folder ``folder``; an empty record when it has none or it cannot be read."""
        try:
            data = yaml.safe_load((Path(folder) / RUN_RECORD_FILE).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return cls()
        return cls.from_dict(data) if isinstance(data, dict) else cls()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def as_run_record(value: RunRecord | dict) -> RunRecord:
    """``value`` as a record: a :class:`RunRecord` as it is, a mapping read as the file's content."""
    return value if isinstance(value, RunRecord) else RunRecord.from_dict(value)
