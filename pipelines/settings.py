"""The settings of every training workflow: one schema for YAML files and flags, validated by pydantic.

Each workflow's settings are a pydantic model.  Every field is a YAML key and a ``--flag`` at once; a value is
resolved as: the field's default, then the YAML file (``--config``, or a workflow's default recipe), then the flags
actually given on the command line (the flag wins).  Unknown YAML keys are refused with the closest valid names.
Each field's rule is a pydantic constraint on its type (``ge``, ``gt``, ``lt``, ``le``, a ``Literal`` of choices,
finite floats), declared once through the type aliases below, so a workflow that changes a default keeps the rule.
A broken rule is one line naming the flag, the value, where it came from and what is allowed.

Two pairs of settings are alternatives (:data:`ALTERNATIVES`): ``epochs`` and ``max_steps``, ``evals_per_epoch``
and ``eval_every``.  The one given wins over a default (the field's, or a workflow's default recipe); both given at
the same level (two flags, or two keys of the file) is an error unless the first is 0 (off); a flag wins over a key
of the file.
"""

from __future__ import annotations

import argparse
import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modeling_gpt_scratch import GPTScratchConfig
from modeling_gpt_scratch.configuration_gpt_scratch import PRESETS

from .errors import UserError
from .fs import package_folder

# ---- the rules, as types --------------------------------------------------------------------------------------

Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
Rate = Annotated[float, Field(ge=0, lt=1)]  # dropout, Adam betas, a held-out share that may be 0
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
Schedule = Literal["cosine", "constant"]
Precision = Literal["auto", "no", "bf16", "fp16"]
Tracker = Literal["tensorboard", "trackio", "wandb", "all"]
Trainable = Literal["last-block", "last-two-blocks", "head", "all"]  # what a classifier fine-tune trains
TRAINABLE_MODES = typing.get_args(Trainable)
LORA_TARGETS = ("qkv_proj", "out_proj", "fc_in", "fc_out")


def about(default, help: str, **constraints):
    """A field: its default, its help text (the ``--help`` line and the YAML documentation) and any constraints."""
    return Field(default, description=help, **constraints)


class Settings(BaseModel):
    """The base of every workflow's settings: unknown keys refused, floats finite, numbers given as YAML text
    accepted where text is wanted."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True)


class TrainSettings(Settings):
    """The training loop's settings, shared by every training workflow."""

    seed: Seed = about(1337, "seed for initialisation, data order and dropout")
    max_steps: Count = about(200, "optimizer steps (a --max-steps given wins over a default --epochs)")
    epochs: NonNegativeFloat = about(0.0, "train for this many passes over the training set (0: --max-steps decides)")
    batch_size: Count = about(8, "micro-batch size per device")
    gradient_accumulation_steps: Count = about(1, "micro-batches per optimizer step")
    global_batch_tokens: NonNegative = about(0, "tokens per optimizer step over all devices; >0 sets the accumulation")
    learning_rate: PositiveFloat = about(6e-4, "peak learning rate")
    min_lr_ratio: Fraction = about(0.1, "cosine schedule ends at this fraction of the peak")
    lr_schedule: Schedule = about("cosine", "after warmup")
    warmup_steps: NonNegative = about(0, "linear warmup steps")
    weight_decay: NonNegativeFloat = about(0.1, "AdamW weight decay, on matrices only")
    adam_beta1: Rate = about(0.9, "AdamW beta1")
    adam_beta2: Rate = about(0.95, "AdamW beta2")
    grad_clip: NonNegativeFloat = about(1.0, "clip the global gradient norm; 0 = off")
    mixed_precision: Precision = about(
        "auto", "auto: bf16 where the hardware has it (a CUDA GPU, a CPU with AVX512-BF16 or AMX), else fp32")
    compile: bool = about(False, "torch.compile the model (falls back if it fails)")
    gradient_checkpointing: bool = about(False, "recompute activations in backward")
    eval_every: NonNegative = about(50, "evaluate every N steps (0: only at the end)")
    evals_per_epoch: NonNegativeFloat = about(
        0.0, "evaluate this many times per pass over the training set (0: --eval-every decides)")
    eval_batches: NonNegative = about(0, "batches per evaluation; 0 = the whole split")
    log_every: Count = about(10, "log every N steps")
    checkpoint_every: NonNegative = about(0, "save a checkpoint every N steps; 0 = never")
    keep_checkpoints: Count = about(2, "keep the newest K checkpoints (the one just written always stays)")
    trackers: list[Tracker] = about([], "Accelerate trackers: tensorboard, trackio, wandb, or 'all'")
    num_workers: NonNegative = about(0, "DataLoader worker processes")
    resume: bool = about(False, "continue from the newest checkpoint in --out")
    overwrite: bool = about(False, "replace an existing --out")


def _preset_names() -> list[str]:
    return list(PRESETS)


class PretrainSettings(TrainSettings):
    """Pretraining: the loop's settings plus data, tokenizer and model."""

    data: str | None = about(None, "text file/folder, JSONL/CSV, or Hub dataset id")
    text_column: str = about("text", "column holding the text in JSONL/CSV/Hub data")
    max_documents: NonNegative = about(0, "read at most N documents (useful for Hub streams; 0: all)")
    out: str = about("runs/pretrain", "run folder (a loadable model folder at the end)")
    tokenizer: str | None = about(None, "tokenizer folder or Hub id; none: train one")
    vocab_size: Annotated[int, Field(ge=257)] = about(  # the 256 byte symbols + <|endoftext|>
        4096, "vocabulary of a tokenizer trained for this run")
    cache_dir: str | None = about(None, "token-shard cache (default: <out>/cache)")
    preset: str = about("tiny", "model preset: tiny, gpt2-small, gpt2-small-untied, ...")
    hidden_size: NonNegative = about(0, "override the preset (0: keep)")
    num_hidden_layers: NonNegative = about(0, "override the preset (0: keep)")
    num_attention_heads: NonNegative = about(0, "override the preset (0: keep)")
    context_length: NonNegative = about(0, "context / max_position_embeddings (0: keep)")
    dropout: Rate = about(0.0, "dropout on embeddings, attention and residuals")
    qkv_bias: bool = about(False, "biases on the query/key/value projections")
    tie_word_embeddings: bool = about(False, "share input embedding and output head")
    layout: Literal["joined", "sliding", "cropped"] = about(
        "joined", "joined: documents concatenated with EOS, cut into contexts; sliding: the same with --stride; "
        "cropped: one document per example, cropped to the context")
    stride: NonNegative = about(0, "sliding layout: window stride in tokens (0: the context)")
    val_fraction: OpenFraction = about(0.05, "share of tokens held out for validation")
    test_fraction: Rate = about(0.05, "share of tokens held out for the final test")
    sample_prompt: str = about("", "prompt for the text samples at each evaluation")
    sample_tokens: NonNegative = about(48, "tokens per sample (0: empty samples)")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in _preset_names():  # read when checked, so that --help does not import transformers
            raise ValueError(f"choose one of {', '.join(_preset_names())}")
        return value

    def gpt_config(self, vocab_size: int, eos_token_id: int | None = None, pad_token_id: int | None = None):
        """The model these settings describe: the preset, with the sizes set here (0 keeps the preset's); a shape
        that makes no model (heads that do not divide the width) is one line."""
        sizes = dict(hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                     num_attention_heads=self.num_attention_heads, max_position_embeddings=self.context_length)
        try:
            return GPTScratchConfig.from_preset(
                self.preset, **{k: v for k, v in sizes.items() if v}, vocab_size=vocab_size,
                hidden_dropout=self.dropout, attention_dropout=self.dropout, qkv_bias=self.qkv_bias,
                tie_word_embeddings=self.tie_word_embeddings, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
                pad_token_id=pad_token_id,
            )
        except ValueError as exc:
            raise UserError(str(exc)) from None


class LoraSettings(Settings):
    """LoRA through PEFT, shared by both fine-tunes (``pipelines.training.lora``)."""

    # checked by pipelines.training.lora.check_options, whose messages say how the LoRA settings go together
    lora_rank: int = about(
        0, "train rank-R LoRA adapters (PEFT) on --lora-targets of every block, the base weights frozen; 0: no LoRA")
    lora_alpha: float | None = about(
        None, "LoRA scale numerator: the update is (alpha / rank) B A (unset: 2 x rank, a scale of 2, which beat "
        "alpha = rank in the SMS sweep of BENCHMARKS.md)")
    lora_dropout: float | None = about(None, "dropout on the input of the LoRA branch (unset: 0)")
    lora_targets: list[str] | None = about(
        None, f"block Linears that get adapters, comma- or space-separated (unset: {','.join(LORA_TARGETS)})")
    merge: bool = about(False, "with --lora-rank: also write OUT/merged, the adapters merged into a full model folder")


class ClassifierSettings(LoraSettings, TrainSettings):
    """A classifier fine-tune: the loop's settings plus data, base model, freezing and LoRA.

    The book's chapter 6 settings (AdamW, weight decay 0.1, 5 epochs, batch 8, constant learning rate), except the
    learning rate and --trainable: all layers at 5e-4 instead of the last block at 5e-5, chosen by an SMS sweep
    (BENCHMARKS.md) where it gave the best validation accuracy from the demo base and from random weights alike."""

    seed: Seed = about(123, "seed for balancing, the split, the head and the data order")
    epochs: NonNegativeFloat = about(5.0, "passes over the training split (0: use --max-steps)")
    learning_rate: PositiveFloat = about(5e-4, "AdamW learning rate")
    lr_schedule: Schedule = about("constant", "after warmup")
    adam_beta2: Rate = about(0.999, "AdamW beta2")
    eval_every: NonNegative = about(0, "evaluate every N steps (0: only at the end)")
    evals_per_epoch: NonNegativeFloat = about(
        1.0, "evaluations per pass over the training split (0: --eval-every decides)")

    model: str | None = about(None, "base causal-LM folder (or Hub model id) to start from")
    data: str | None = about(
        None, "labelled table: TSV/CSV (header optional), JSON/JSONL, Parquet, or a Hub dataset id")
    out: str | None = about(None, "run folder (a loadable classifier folder at the end)")
    text_column: str | None = about(None, "column (name or 0-based position) of the text")
    label_column: str | None = about(None, "column (name or 0-based position) of the label")
    val_data: str | None = about(None, "separate validation table (then --data is not split for validation)")
    test_data: str | None = about(None, "separate test table (then --data is not split for testing)")
    tokenizer: str | None = about(None, "tokenizer folder or Hub id (default: the model's)")
    trainable: Trainable | None = about(
        None, "what is trained: last-block (+ final norm + head), last-two-blocks, head, or all (unset: all; must "
        "stay unset with --lora-rank, which trains the adapters and the head)")
    balance: bool = about(True, "undersample every class of --data to the smallest one")
    train_fraction: Fraction = about(0.7, "share of --data for training")
    val_fraction: Fraction = about(0.1, "share of --data for validation")
    test_fraction: Fraction = about(0.2, "share of --data for the final test")
    max_length: NonNegative = about(0, "truncate texts to N tokens (0: the model's context)")
    dropout: Rate | None = about(None, "dropout while fine-tuning (default: the base's)")
    train_accuracy_examples: int = about(256, "training examples scored for train accuracy at each evaluation (0: all)")


SPLIT_FRACTIONS = (0.85, 0.05, 0.10)  # an instruction fine-tune's train / validation / test, as in the book


class InstructSettings(LoraSettings, TrainSettings):
    """An instruction fine-tune: the loop's settings with the book's chapter-7 defaults (AdamW, learning rate 5e-5,
    weight decay 0.1, 2 epochs of batches of 8, a constant learning rate), plus data and model."""

    model: str | None = about(None, "base model folder (a causal LM run folder)")
    data: str | None = about(None, "instruction records: JSON list, JSONL, or a Hub dataset id")
    out: str | None = about(None, "run folder (a loadable model folder at the end)")
    mask_prompt: bool = about(False, "learn only the response: ignore the targets of the prompt tokens")
    max_length: NonNegative = about(0, "cut training sequences to N tokens (0: the model's context)")
    val_fraction: OpenFraction = about(SPLIT_FRACTIONS[1], "share of records for validation")
    test_fraction: Rate = about(SPLIT_FRACTIONS[2], "share of records for the test split")
    sample_count: NonNegative = about(3, "validation instructions answered at each evaluation")
    sample_tokens: Count = about(48, "tokens per sample answer")
    seed: Seed = about(123, "seed for the split, data order and dropout")
    epochs: NonNegativeFloat = about(2.0, "passes over the training split (0: use max_steps)")
    learning_rate: PositiveFloat = about(5e-5, "AdamW learning rate")
    lr_schedule: Schedule = about("constant", "after warmup")
    adam_beta2: Rate = about(0.999, "AdamW beta2")
    eval_every: NonNegative = about(0, "evaluate every N steps (0: only at the end)")
    evals_per_epoch: NonNegativeFloat = about(
        4.0, "evaluations per pass over the training split (0: --eval-every decides)")
    log_every: Count = about(5, "log every N steps")


# ---- recipes: the YAML files shipped with the package ------------------------------------------------------------


def recipe(name: str) -> Path | None:
    """The packaged recipe ``configs/NAME.yaml`` (``pipelines.configs`` in an installed wheel), or None."""
    path = package_folder("pipelines.configs") / f"{name.removesuffix('.yaml')}.yaml"
    return path if path.is_file() else None


def recipes() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in package_folder("pipelines.configs").iterdir()
                  if p.name.endswith(".yaml") and not p.name.startswith(("accelerate-", "experiments-")))


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file, or from a packaged recipe when ``path`` names one (``tiny-cpu``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        packaged = recipe(str(path)) if "/" not in str(path) else None
        if packaged is None:
            raise UserError(f"config file '{path}' does not exist: pass a YAML file, or one of the recipes that come "
                            f"with gpt-scratch: {', '.join(recipes())}")
        file = packaged
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"config file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys to values, not {type(data).__name__}")
    return data


# ---- flags --------------------------------------------------------------------------------------------------------


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shape(annotation) -> tuple[type, bool, tuple]:
    """``(python type, is a list, choices)`` of a field's annotation (``int``, ``str | None``, ``list[Literal]``)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _shape(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return _shape(next(a for a in typing.get_args(annotation) if a is not type(None)))
    if origin is list:
        kind, _, choices = _shape(typing.get_args(annotation)[0])
        return kind, True, choices
    if origin is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), False, choices
    return annotation, False, ()


def add_arguments(parser: argparse.ArgumentParser, schema: type[Settings], title: str, defaults: dict | None = None,
                  defaults_source: str | None = None) -> None:
    """One flag per field; defaults stay unset so that only the flags given override the file.

    ``defaults``: the values of a workflow's default recipe (named ``defaults_source``), shown as the defaults."""
    group = parser.add_argument_group(title)
    defaults = defaults or {}
    for name, field in schema.model_fields.items():
        kind, is_list, choices = _shape(field.annotation)
        shown = (f"default: {defaults[name]}, from {defaults_source}" if name in defaults
                 else f"default: {field.get_default(call_default_factory=True)}")
        text = f"{field.description} ({shown})" if field.description else shown
        kwargs = dict(dest=name, default=argparse.SUPPRESS, help=text.replace("%", "%%"))
        if choices:
            kwargs["choices"] = choices
        if kind is bool:
            group.add_argument(flag(name), action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(flag(name), nargs="*" if is_list else None, type=kind, **kwargs)


# ---- validation: pydantic's errors as one line ---------------------------------------------------------------------


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _constraints(field) -> list:
    """The bounds of a field: on its type, or on the type inside ``X | None``."""
    found = list(field.metadata)
    for arg in typing.get_args(field.annotation):
        if typing.get_origin(arg) is Annotated:
            for meta in typing.get_args(arg)[1:]:
                found += list(getattr(meta, "metadata", [meta]))
    return [c for c in found if isinstance(c, (Ge, Gt, Le, Lt))]


def _allowed(field, kind) -> str:
    """What a field's constraints allow, in words: 'a whole number at least 1', 'a finite number from 0 to 1'."""
    bounds = {type(c): c for c in _constraints(field)}
    low, high = bounds.get(Ge), bounds.get(Le)
    parts = []
    if low is not None and high is not None:
        parts.append(f"from {_show(low.ge)} to {_show(high.le)}")
    elif low is not None:
        parts.append(f"at least {_show(low.ge)}")
    elif high is not None:
        parts.append(f"at most {_show(high.le)}")
    if Gt in bounds:
        parts.append(f"above {_show(bounds[Gt].gt)}")
    if Lt in bounds:
        parts.append(f"below {_show(bounds[Lt].lt)}")
    noun = "a finite number" if kind is float else "a whole number" if kind is int else "a value"
    return f"{noun} {' and '.join(parts)}" if parts else noun


TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
RULE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number")


def _one_line(schema: type[Settings], err: ValidationError, sources: dict) -> UserError:
    problem = err.errors(include_url=False)[0]
    name = str(problem["loc"][0])
    field = schema.model_fields[name]
    kind, is_list, _ = _shape(field.annotation)
    value = problem["input"]
    where = sources.get(name)
    origin = f" (from {where})" if where and where != "the command line" else ""
    if problem["type"] in RULE_ERRORS:
        return UserError(f"{flag(name)} {_show(value)}{origin} is not allowed: it must be {_allowed(field, kind)}")
    if problem["type"] == "literal_error":
        choices = problem["ctx"]["expected"].replace("'", "")
        return UserError(f"{flag(name)} {_show(value)}{origin} is not allowed: choose one of {choices}")
    if problem["type"] == "value_error":
        reason = str(problem["msg"]).removeprefix("Value error, ")
        return UserError(f"{flag(name)} {_show(value)}{origin} is not allowed: {reason}")
    what = TYPE_WORDS.get(kind, kind.__name__) + (" (or a list of them)" if is_list else "")
    return UserError(f"config key '{name}' ({flag(name)}) must be {what}, got {value!r}")


def check_keys(keys, schema: type[Settings], source: str) -> None:
    valid = list(schema.model_fields)
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(str(key).replace("-", "_"), valid, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(valid)}"
            raise UserError(f"unknown config key '{key}' in {source}: {hint}")


def build(schema: type[Settings], values: dict, source: str = "the config", sources: dict | None = None):
    """The settings from ``values`` (keys checked, every value validated), or one line saying what is wrong."""
    check_keys(values, schema, source)
    lists = {name for name, f in schema.model_fields.items() if _shape(f.annotation)[1]}
    values = {k: [v] if k in lists and v is not None and not isinstance(v, (list, tuple)) else v
              for k, v in values.items()}
    try:
        return schema.model_validate(values)
    except ValidationError as err:
        raise _one_line(schema, err, sources or {}) from None


# ---- resolution: defaults <- YAML <- flags ---------------------------------------------------------------------------

ALTERNATIVES = {"epochs": "max_steps", "evals_per_epoch": "eval_every"}  # setting -> the one it replaces; 0 is off
# how explicitly a value was given: the field's default < a workflow's default recipe < the user's --config < a flag
LEVEL_DEFAULT, LEVEL_DEFAULT_FILE, LEVEL_FILE, LEVEL_FLAG = range(4)


def _resolve_alternatives(schema, values: dict, levels: dict, sources: dict) -> dict:
    values = dict(values)
    for name, other in ALTERNATIVES.items():
        if name not in schema.model_fields:
            continue
        level, other_level = levels.get(name, LEVEL_DEFAULT), levels.get(other, LEVEL_DEFAULT)
        value = values.get(name, schema.model_fields[name].default)
        if level >= LEVEL_FILE and value != 0 and level == other_level:
            place = "the command line" if level == LEVEL_FLAG else sources.get(name, "the config file")
            raise UserError(
                f"{flag(name)} {_show(value)} and {flag(other)} {_show(values.get(other))} conflict (both given on "
                f"{place}): {flag(name)} above 0 decides and {flag(other)} would be ignored; give one of them"
            )
        if other_level > level:
            values[name] = 0  # the one given wins over a default (or a flag over the file)
    return values


def resolve(schema: type[Settings], args: argparse.Namespace, config_path: str | None = None,
            default_config: str | None = None):
    """Defaults <- YAML file <- flags given on the command line; every setting validated.

    ``config_path`` is the user's ``--config``; ``default_config`` a workflow's default recipe, read only when there
    is no ``--config`` and counted as defaults (a flag is never in conflict with it)."""
    values, levels, sources = {}, {}, {}
    for path, level in ((config_path, LEVEL_FILE), (None if config_path else default_config, LEVEL_DEFAULT_FILE)):
        if path:
            file_values = load_yaml(path)
            check_keys(file_values, schema, f"'{path}'")
            values.update(file_values)
            for key in file_values:
                levels[key], sources[key] = level, f"'{path}'"
    flags = {k: v for k, v in vars(args).items() if k in schema.model_fields}
    values.update(flags)
    for key in flags:
        levels[key], sources[key] = LEVEL_FLAG, "the command line"
    return build(schema, _resolve_alternatives(schema, values, levels, sources), sources=sources)
