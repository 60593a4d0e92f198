"""LoRA fine-tuning through PEFT: adapters on, adapters merged, adapter folders written.

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

``classify`` and ``respond`` open an adapter folder too (``pipelines.runs.folders.open_model``): the base named in
its ``adapter_config.json`` is loaded, the adapter applied through ``PeftModel.from_pretrained`` and merged for speed.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ..errors import UserError
from ..hub import looks_like_hub_id
from ..runs.folders import quiet_peft
from ..runs.record import as_run_record
from ..runs.run_folder import write_model_folder, write_run_folder
from ..runs.tokenizers import portable_tokenizer
from ..settings import LORA_TARGETS, flag

MERGED_DIR = "merged"
TASK_TYPES = {"classifier": "SEQ_CLS", "causal": "CAUSAL_LM"}  # PEFT's names
FLAGS = ("lora_alpha", "lora_dropout", "lora_targets")


# ----------------------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------------------


def enabled(cfg) -> bool:
    return int(getattr(cfg, "lora_rank", 0) or 0) > 0


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
        given = [flag(name) for name in FLAGS if getattr(cfg, name) is not None] + (["--merge"] if cfg.merge else [])
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


def add_adapters(model, cfg, kind: str):
    """``model`` wrapped by PEFT with fresh LoRA adapters (and a trained copy of ``score`` for a classifier).

    Every original parameter is frozen; only the adapters (and the head) train.  Returns the ``PeftModel``.
    """
    from peft import LoraConfig, get_peft_model  # seconds to import; only LoRA and adapter folders need PEFT

    config = LoraConfig(
        r=int(cfg.lora_rank),
        lora_alpha=alpha(cfg),
        lora_dropout=dropout(cfg),
        target_modules=targets(cfg),
        bias="none",
        task_type=TASK_TYPES[kind],
        modules_to_save=["score"] if kind == "classifier" else None,
    )
    with quiet_peft():
        return get_peft_model(model, config)


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel  # seconds to import; only LoRA and adapter folders need PEFT
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

    The counterpart of :func:`pipelines.runs.run_folder.write_model_folder` for a LoRA run; PEFT's own README stub is
    replaced by the project's adapter card.
    """
    model = getattr(model, "module", model)
    tokenizer = portable_tokenizer(tokenizer, inner_model(model).config.max_position_embeddings)
    for adapter in model.peft_config.values():
        adapter.base_model_name_or_path = base_ref

    def save_adapter(staging: Path) -> None:
        with quiet_peft():
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


# ----------------------------------------------------------------------------------------------------------------
# the adapter's model card
# ----------------------------------------------------------------------------------------------------------------


