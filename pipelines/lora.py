"""LoRA fine-tuning through PEFT: the one module that knows PEFT.

LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; the book's appendix E) freezes every
weight of the base model and learns, next to each chosen ``nn.Linear(in, out)`` with weight ``W``, two small matrices
``A`` (rank x in) and ``B`` (out x rank): the layer computes ``W x + (alpha / rank) * B A x``.  ``B`` starts at zero,
so training starts from the base model exactly.  Each adapted layer adds ``rank * (in + out)`` trainable parameters.

Here the adapters go on the four projections of every transformer block (``--lora-targets``, default all of them):
the fused query/key/value projection ``att.qkv_proj``, the attention output ``att.out_proj`` and the feed-forward
``ff.fc_in``/``ff.fc_out``.  A classifier also trains its fresh ``score`` head in full (PEFT's ``modules_to_save``),
since a new head cannot be a low-rank change of anything.

The run folder of a LoRA fine-tune is a PEFT adapter folder: ``adapter_config.json`` (rank, alpha, targets and
``base_model_name_or_path``: the base folder's absolute path, or its Hub id when the base came from the Hub) and
``adapter_model.safetensors`` (the adapters and, for a classifier, the ``score`` head), next to the tokenizer,
``metrics.json``, ``run_config.yaml`` and the cards.  It holds no ``config.json``: with one, ``transformers`` would
take the folder for a full model.  ``--merge`` also writes ``merged/``: the adapters folded into the weights
(``merge_and_unload``), saved as an ordinary model folder (config with ``auto_map``, both code files, weights), which
loads with ``trust_remote_code=True`` alone.

``classify`` and ``respond`` open an adapter folder too (:func:`load_adapter`): the base named in its
``adapter_config.json`` is loaded, the adapter applied through ``PeftModel.from_pretrained`` and merged for speed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .folders import looks_like_hub_id

LORA_TARGETS = ("qkv_proj", "out_proj", "fc_in", "fc_out")
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
MERGED_DIR = "merged"
TASK_TYPES = {"classifier": "SEQ_CLS", "causal": "CAUSAL_LM"}
FLAGS = ("lora_alpha", "lora_dropout", "lora_targets")


@dataclass
class LoraOptions:
    """The LoRA settings shared by both fine-tunes (each is a YAML key and a ``--flag``)."""

    lora_rank: int = field(
        default=0,
        metadata={"help": "train rank-R LoRA adapters (PEFT) on --lora-targets of every block, the base weights "
                  "frozen; 0: no LoRA"},
    )
    lora_alpha: float | None = field(
        default=None,
        metadata={"help": "LoRA scale numerator: the update is (alpha / rank) B A (unset: 2 x rank, a scale of 2, "
                  "which beat alpha = rank in the SMS sweep of BENCHMARKS.md)"},
    )
    lora_dropout: float | None = field(
        default=None, metadata={"help": "dropout on the input of the LoRA branch (unset: 0)"}
    )
    lora_targets: list[str] | None = field(
        default=None,
        metadata={"help": f"block Linears that get adapters, comma- or space-separated (unset: "
                  f"{','.join(LORA_TARGETS)})"},
    )
    merge: bool = field(
        default=False,
        metadata={"help": "with --lora-rank: also write OUT/merged, the adapters merged into a full model folder"},
    )


# ----------------------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------------------


def enabled(cfg) -> bool:
    return int(getattr(cfg, "lora_rank", 0) or 0) > 0


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def targets(cfg) -> list[str]:
    """The target module names, from a list (flag, YAML list) or comma-separated strings, in the order given."""
    if cfg.lora_targets is None:
        return list(LORA_TARGETS)
    names = [part.strip() for item in cfg.lora_targets for part in str(item).split(",") if part.strip()]
    return names


ALPHA_PER_RANK = 2  # the default alpha / rank (measured: BENCHMARKS.md, "Classifier defaults by measurement")


def alpha(cfg) -> float:
    return float(ALPHA_PER_RANK * cfg.lora_rank if cfg.lora_alpha is None else cfg.lora_alpha)


def dropout(cfg) -> float:
    return float(cfg.lora_dropout or 0.0)


def check_options(cfg) -> None:
    """Refuse LoRA settings that make no sense, or that are given without ``--lora-rank``, in one line."""
    rank = cfg.lora_rank
    if rank is None or rank < 0:
        raise UserError(f"--lora-rank {rank} must be 0 (no LoRA) or a positive rank such as 8")
    if rank == 0:
        given = [_flag(name) for name in FLAGS if getattr(cfg, name) is not None] + (["--merge"] if cfg.merge else [])
        if given:
            raise UserError(
                f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --lora-rank R: without a rank no LoRA "
                "adapters are trained; add e.g. --lora-rank 8, or drop "
                f"{'it' if len(given) == 1 else 'them'}"
            )
        return
    if cfg.lora_alpha is not None and not cfg.lora_alpha > 0:
        raise UserError(f"--lora-alpha {cfg.lora_alpha:g} must be positive (unset: twice --lora-rank)")
    if cfg.lora_dropout is not None and not 0 <= cfg.lora_dropout < 1:
        raise UserError(f"--lora-dropout {cfg.lora_dropout:g} must be in [0, 1)")
    names = targets(cfg)
    unknown = [n for n in names if n not in LORA_TARGETS]
    if unknown or not names:
        raise UserError(
            f"--lora-targets {','.join(names) or '(empty)'}: "
            + (f"unknown {', '.join(map(repr, unknown))}; " if unknown else "")
            + f"choose among {','.join(LORA_TARGETS)} (the Linears of each transformer block)"
        )
    if len(set(names)) != len(names):
        raise UserError(f"--lora-targets {','.join(names)} names a module twice: name each once")


def describe(cfg, classifier: bool) -> str:
    """``"lora r=8 alpha=16 on qkv_proj,out_proj,fc_in,fc_out + score head"``: what is trained, in one phrase."""
    text = f"lora r={cfg.lora_rank} alpha={alpha(cfg):g}"
    if dropout(cfg):
        text += f" dropout={dropout(cfg):g}"
    text += f" on {','.join(targets(cfg))}"
    return text + (" + score head" if classifier else "")


# ----------------------------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """PEFT calls a transformers method that transformers 5 deprecates: silence that warning only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_adapters(model, cfg, kind: str):
    """``model`` wrapped by PEFT with fresh LoRA adapters (and a trained copy of ``score`` for a classifier).

    Every original parameter is frozen; only the adapters (and the head) train.  Returns the ``PeftModel``.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(cfg.lora_rank),
        lora_alpha=alpha(cfg),
        lora_dropout=dropout(cfg),
        target_modules=targets(cfg),
        bias="none",
        task_type=TASK_TYPES[kind],
        modules_to_save=["score"] if kind == "classifier" else None,
    )
    with _quiet():
        return get_peft_model(model, config)


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency; a bare environment without it simply has no adapters
        return False
    return isinstance(model, PeftModel)


def inner_model(model):
    """The transformers model under a ``PeftModel`` (its Linears carry the adapters, so it computes the same)."""
    return model.get_base_model() if is_peft_model(model) else model


def merge(model):
    """The adapters folded into the base weights: a plain transformers model (PEFT's ``merge_and_unload``)."""
    merged = model.merge_and_unload() if is_peft_model(model) else model
    for param in merged.parameters():
        param.requires_grad = True
    return merged


def base_reference(spec: str, resolved: Path) -> str:
    """What ``base_model_name_or_path`` records: a Hub id as given, a local folder as its absolute path."""
    if looks_like_hub_id(str(spec)):
        return str(spec)  # a Hub id: found again through the Hub (or its cache), wherever the folder goes
    return str(Path(resolved).expanduser().resolve())


# ----------------------------------------------------------------------------------------------------------------
# the adapter folder
# ----------------------------------------------------------------------------------------------------------------


def write_adapter_folder(
    out_dir,
    model,
    tokenizer,
    *,
    base_ref: str,
    metrics: dict,
    run_config: dict,
    workflow: str,
    generation_config=None,
    samples: list[dict] | None = None,
) -> Path:
    """Write the adapter, tokenizer, metrics, config and cards into ``out_dir`` atomically (file by file).

    The counterpart of :func:`pipelines.runfolder.write_model_folder` for a LoRA run; PEFT's own README stub is
    replaced by the project's adapter card.
    """
    from pipelines.tokenization import portable_tokenizer

    from .runfolder import write_run_folder

    model = getattr(model, "module", model)
    tokenizer = portable_tokenizer(tokenizer, inner_model(model).config.max_position_embeddings)
    for adapter in model.peft_config.values():
        adapter.base_model_name_or_path = base_ref

    def save_adapter(staging: Path) -> None:
        with _quiet():
            model.save_pretrained(str(staging), safe_serialization=True)
        (staging / "README.md").unlink(missing_ok=True)  # PEFT's template; the cards write ours
        if generation_config is not None:
            generation_config.save_pretrained(staging)

    return write_run_folder(
        out_dir, save_adapter, tokenizer, metrics=metrics, run_config=run_config, workflow=workflow, samples=samples
    )


def write_merged_folder(out_dir, model, tokenizer, metrics: dict, run_config, workflow: str, **extra) -> Path:
    """``OUT/merged``: the adapters folded into the weights (``merge_and_unload``), written by the project's
    ``write_model_folder`` as an ordinary model folder (config with ``auto_map``, both code files, weights, cards),
    with a copy of the run's plots.  ``model`` is merged in place: write the adapter folder first."""
    import dataclasses

    from .run_record import as_run_record
    from .runfolder import write_model_folder

    out = Path(out_dir)
    merged_dir = out / MERGED_DIR
    if merged_dir.exists():
        shutil.rmtree(merged_dir)
    if (out / "plots").is_dir():
        shutil.copytree(out / "plots", merged_dir / "plots")
    write_model_folder(
        merged_dir, merge(model), tokenizer, metrics=metrics,
        run_config=dataclasses.replace(as_run_record(run_config), lora_merged=True),
        workflow=workflow, **extra,
    )
    return merged_dir


def is_adapter_folder(folder) -> bool:
    from .folders import is_adapter_folder as check  # the one definition of the folder kinds

    return check(folder)


def read_adapter_config(folder, flag: str = "--model") -> dict:
    """``adapter_config.json`` of a LoRA adapter folder made here; anything else is a one-line ``UserError``."""
    folder = Path(str(folder)).expanduser()
    path = folder / ADAPTER_CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{flag} {folder}: {ADAPTER_CONFIG_FILE} cannot be read ({exc}); re-run the fine-tune"
        ) from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise UserError(f"{flag} {folder} holds a '{kind}' PEFT adapter, not a LoRA adapter of gpt-scratch")
    if not config.get("base_model_name_or_path"):
        raise UserError(
            f"{flag} {folder}: {ADAPTER_CONFIG_FILE} names no base model (base_model_name_or_path): set it to the "
            "base model folder or Hub id the adapter was trained on"
        )
    if not (folder / ADAPTER_WEIGHTS_FILE).is_file():
        raise UserError(
            f"{flag} {folder} is a LoRA adapter folder without {ADAPTER_WEIGHTS_FILE}: re-run the fine-tune"
        )
    return config


def adapter_kind(config: dict) -> str:
    """``"classifier"`` or ``"causal"`` from an adapter config's ``task_type``."""
    return "classifier" if str(config.get("task_type") or "").upper() == "SEQ_CLS" else "causal"


def resolve_base(folder, config: dict, flag: str = "--model") -> Path:
    """A local folder for the adapter's base: its path (absolute, or relative to here or to the adapter folder), or
    the Hub cache's snapshot of its Hub id."""
    from .classify import resolve_model_dir

    folder = Path(str(folder)).expanduser()
    spec = str(config["base_model_name_or_path"])
    candidates = [Path(spec).expanduser()]
    if not Path(spec).is_absolute():
        candidates.append(folder / spec)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    if not looks_like_hub_id(spec):
        raise UserError(
            f"{flag} {folder} is a LoRA adapter for the base model {spec}, which does not exist here: restore that "
            f"folder, or set base_model_name_or_path in {folder / ADAPTER_CONFIG_FILE} to where the base is now"
        )
    return resolve_model_dir(spec, flag=f"{flag} {folder}: its base model")


def adapter_labels(folder, flag: str = "--model") -> list[str]:
    """The label names of a classifier adapter folder (those of its run record, else of metrics.json)."""
    from .run_record import RunRecord

    folder = Path(str(folder))
    recorded = RunRecord.read(folder).labels
    if recorded is not None and len(recorded) >= 2:
        return recorded
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = None
    labels = metrics.get("labels") if isinstance(metrics, dict) else None
    if isinstance(labels, list) and len(labels) >= 2:
        return [str(label) for label in labels]
    raise UserError(
        f"{flag} {folder} is a classifier adapter without its label names (the 'labels' of run_config.yaml or "
        "metrics.json): re-run finetune-classifier, or restore those files"
    )


def load_adapter(folder, kind: str, flag: str = "--model", merged: bool = True):
    """``(model, tokenizer)`` from an adapter folder: its base plus the adapter through ``PeftModel.from_pretrained``;
    merged into plain weights (``merged=True``, faster) or left as the ``PeftModel``.  Eval mode."""
    from peft import PeftModel

    from pipelines.tokenization import load_tokenizer

    from .folders import LOAD_ERRORS, weights_error
    from .generate import quiet_hf

    folder = Path(str(folder)).expanduser()
    config = read_adapter_config(folder, flag)
    found = adapter_kind(config)
    if found != kind:
        what = {"classifier": "a classifier", "causal": "a causal language model"}
        raise UserError(
            f"{flag} {folder} is a LoRA adapter for {what[found]}, not for {what[kind]}: "
            + ("use `gpt-scratch classify` with it" if found == "classifier" else
               "use `gpt-scratch respond` (or the merged folder with generate/chat) with it")
        )
    base_dir = resolve_base(folder, config, flag)
    if kind == "classifier":
        from .classify import check_causal_lm_folder, load_base_as_classifier

        check_causal_lm_folder(base_dir, need_tokenizer=False, flag=f"{flag} {folder}: its base model")
        model = load_base_as_classifier(base_dir, adapter_labels(folder, flag), flag=f"{flag} {folder}: its base model")
    else:
        from modeling_gpt_scratch import GPTScratchForCausalLM

        from .generate import check_model_folder

        check_model_folder(base_dir, need_tokenizer=False)
        try:
            with quiet_hf():
                model = GPTScratchForCausalLM.from_pretrained(str(base_dir))
        except LOAD_ERRORS as exc:  # a file cut short, a damaged pickle: one line naming the file
            raise weights_error(base_dir, exc, f"{flag} {folder}: its base model") from None
    try:
        with _quiet(), quiet_hf():
            model = PeftModel.from_pretrained(model, str(folder))
    except LOAD_ERRORS as exc:
        if type(exc).__name__ == "SafetensorError":  # the adapter file itself is cut short or damaged
            raise weights_error(folder, exc, flag, folder / ADAPTER_WEIGHTS_FILE) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{flag} {folder}: the adapter does not fit its base model {base_dir} ({first[:200]}): pass the base it "
            "was trained on"
        ) from None
    if merged:
        model = merge(model)
    tokenizer = load_tokenizer(str(folder))
    inner = inner_model(model)
    if tokenizer.pad_token_id is not None:
        inner.config.pad_token_id = tokenizer.pad_token_id
    if kind == "causal" and (folder / "generation_config.json").is_file():
        from transformers import GenerationConfig

        inner.generation_config = GenerationConfig.from_pretrained(str(folder))
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------------
# the adapter's model card
# ----------------------------------------------------------------------------------------------------------------


def adapter_usage_snippet(kind: str, adapter_ref: str, base_ref: str, labels: list[str] | None = None,
                          context: int | None = None) -> str:
    """Python code that loads the base model, applies this adapter through PEFT and uses it."""
    from .cards import EXAMPLE_INSTRUCTION
    from .prompts import format_alpaca

    adapter, base = json.dumps(adapter_ref), json.dumps(base_ref)
    if kind == "classifier":
        labels = labels or ["LABEL_0", "LABEL_1"]
        return (
            "from peft import PeftModel\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline\n\n"
            f"labels = {json.dumps(list(labels))}\n"
            "base = AutoModelForSequenceClassification.from_pretrained(\n"
            f"    {base}, trust_remote_code=True, num_labels=len(labels),\n"
            "    id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},\n"
            ")\n"
            f"model = PeftModel.from_pretrained(base, {adapter}).merge_and_unload()\n"
            f"tokenizer = AutoTokenizer.from_pretrained({adapter})\n"
            "model.config.pad_token_id = tokenizer.pad_token_id\n"
            "classifier = pipeline(\"text-classification\", model=model, tokenizer=tokenizer)\n"
            "print(classifier([\"Congratulations! You have won a free prize, call now to claim it.\",\n"
            "                  \"Are we still meeting for lunch tomorrow?\"]))"
        )
    new_tokens = max(1, min(50, (context or 1024) // 2))
    lines = format_alpaca(EXAMPLE_INSTRUCTION).splitlines(keepends=True)
    return (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"base = AutoModelForCausalLM.from_pretrained({base}, trust_remote_code=True)\n"
        f"model = PeftModel.from_pretrained(base, {adapter}).merge_and_unload()\n"
        f"tokenizer = AutoTokenizer.from_pretrained({adapter})\n\n"
        + "prompt = (\n" + "".join(f"    {json.dumps(line)}\n" for line in lines) + ")\n"
        + "inputs = tokenizer(prompt, return_tensors=\"pt\")\n"
        + f"output = model.generate(**inputs, max_new_tokens={new_tokens}, do_sample=False)\n"
        + "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"
    )


def adapter_card_facts(folder, kind: str, repo_id: str | None = None, base_model_id: str | None = None) -> dict:
    """What the adapter card says about the adapter, from the folder alone (tolerant of missing pieces).

    ``base_model_id``: the base's Hub id when the adapter names a local folder (``publish --base-model-id``).
    """
    from .card_format import fmt
    from .run_record import RunRecord

    folder = Path(folder)

    def read(name):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    config = read(ADAPTER_CONFIG_FILE)
    record = RunRecord.read(folder)
    final = read("metrics.json").get("final")
    final = final if isinstance(final, dict) else {}
    named = str(config.get("base_model_name_or_path") or "")
    base_id = base_model_id or (named if looks_like_hub_id(named) else None)
    base_ref = base_id or named or "the base model"
    found = config.get("target_modules") or []
    found = [found] if isinstance(found, str) else list(found)
    ordered = [t for t in LORA_TARGETS if t in found] + sorted(t for t in found if t not in LORA_TARGETS)
    context = record.architecture.get("max_position_embeddings")
    trainable = final.get("trainable_parameters", record.trainable_parameters)
    return {
        "base_id": base_id,
        "base_ref": base_ref,
        "classifier": kind == "classifier",
        "rank": fmt(config.get("r")),
        "alpha": f"{config['lora_alpha']:g}" if isinstance(config.get("lora_alpha"), (int, float)) else "unknown",
        "targets": ", ".join(f"`{t}`" for t in ordered) or "the chosen Linears",
        "trainable": fmt(trainable) if trainable is not None else "an unrecorded number of",
        "usage": adapter_usage_snippet(kind, repo_id or str(folder), base_ref, record.labels, context),
    }


__all__ = [
    "LORA_TARGETS",
    "LoraOptions",
    "enabled",
    "check_options",
    "describe",
    "add_adapters",
    "trainable_parameters",
    "inner_model",
    "merge",
    "base_reference",
    "write_adapter_folder",
    "write_merged_folder",
    "is_adapter_folder",
    "read_adapter_config",
    "adapter_kind",
    "resolve_base",
    "load_adapter",
    "adapter_labels",
    "adapter_usage_snippet",
    "adapter_card_facts",
]
