"""Import GPT-2 weights into a GPTScratch folder.

Two sources:

* ``convert_hf_gpt2`` (here) -- a Hugging Face ``gpt2`` checkpoint (``GPT2LMHeadModel``, e.g.
  ``openai-community/gpt2``), a local folder or a Hub id.  Its linear layers are ``Conv1D`` modules that store weights
  as (in, out); ours are ``nn.Linear`` with (out, in), so those weights are transposed.
* ``convert_book`` (``pipelines/book_checkpoint.py``) -- a state dict of the book's ``GPTModel`` (*Build a Large
  Language Model (From Scratch)*, chapter 4), saved with ``torch.save`` (``.pth``) or as ``.safetensors``.

Both share the helpers below: a weights file is read as safetensors or with ``torch.load(weights_only=True)`` (never
arbitrary code), and the result is a folder that ``AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)`` opens: ``config.json`` (with ``auto_map``), ``model.safetensors``, the two code files,
``generation_config.json`` and, when the source has one, the tokenizer.  The folder appears atomically (written under
a temporary name, then renamed).

Every tensor is mapped by name, and the conversion fails -- naming the keys -- unless every parameter of the target
model was filled exactly once from a tensor of the right shape.

The reverse direction, ``gpt-scratch convert --to hf-gpt2`` (a gpt-scratch folder to a plain transformers gpt2
folder), lives in ``pipelines/export.py``; it inverts the name tables below.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from .errors import UserError
from .folders import TOKENIZER_FILES, WEIGHT_FILES, looks_like_hub_id, offline_flag

from modeling_gpt_scratch.configuration_gpt_scratch import PRESETS, GPTScratchConfig

# ----------------------------------------------------------------------------------------------------------------
# shared by both imports (this module and pipelines/book_checkpoint.py)
# ----------------------------------------------------------------------------------------------------------------



def check_out_dir(out_dir, overwrite: bool, src=None) -> Path:
    """Refuse an output folder that exists with content (unless ``overwrite``) or that is the source itself."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is a file, not a folder: choose another --out path")
    if src is not None and out.exists() and Path(src).exists() and out.resolve() == Path(src).resolve():
        raise UserError(f"--out {out} is the source folder itself: write the converted model to another folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"output folder {out} already exists and is not empty: choose another --out, or pass --overwrite to "
            "replace it"
        )
    return out


def load_tensor_file(path: Path) -> dict:
    """One weights file: ``.safetensors``, or a pickle read with ``weights_only=True`` (never runs code)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise UserError(f"cannot read {path} as safetensors ({err}): is the file complete?") from err
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt pickle raises many different types
        raise UserError(
            f"cannot read {path} with torch.load(weights_only=True) ({type(err).__name__}: {err}): it must hold a "
            "plain state dict of tensors"
        ) from err
    if isinstance(obj, dict) and "model_state_dict" in obj and isinstance(obj["model_state_dict"], dict):
        obj = obj["model_state_dict"]  # the book's checkpoint with optimizer state
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            f"{path} does not hold a state dict (name -> tensor), nor a dict with 'model_state_dict': save the "
            "model with torch.save(model.state_dict(), path)"
        )
    return obj


def strip_wrapper_prefixes(state: dict) -> dict:
    """Drop wrappers' prefixes: ``torch.compile`` (``_orig_mod.``) and DDP (``module.``)."""
    out = {}
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def describe_mismatch(missing, unexpected, shape_errors, limit: int = 3) -> str:
    parts = []
    if missing:
        more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
        parts.append(f"missing {', '.join(missing[:limit])}{more}")
    if unexpected:
        more = f" and {len(unexpected) - limit} more" if len(unexpected) > limit else ""
        parts.append(f"unexpected {', '.join(unexpected[:limit])}{more}")
    if shape_errors:
        more = f" and {len(shape_errors) - limit} more" if len(shape_errors) > limit else ""
        parts.append(f"shape mismatch {'; '.join(shape_errors[:limit])}{more}")
    return "; ".join(parts)


def build_model(config: GPTScratchConfig, state: dict, source: str, hint: str = ""):
    """A ``GPTScratchForCausalLM`` whose every parameter comes from ``state`` (our names).

    The model is created on the meta device (no random initialisation) and the tensors are assigned; any target
    parameter left unfilled, any key left over, or any shape that differs is a ``UserError`` naming them.
    ``lm_head.weight`` may be absent when the config ties it to the token embedding.
    """
    from modeling_gpt_scratch.modeling_gpt_scratch import GPTScratchForCausalLM

    with torch.device("meta"):
        model = GPTScratchForCausalLM(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    tied = bool(config.tie_word_embeddings)
    if tied:
        expected.pop("lm_head.weight", None)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shape_errors = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs config {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or shape_errors:
        raise UserError(
            f"the weights of {source} do not fit the model config "
            f"(hidden_size={config.hidden_size}, num_hidden_layers={config.num_hidden_layers}, "
            f"vocab_size={config.vocab_size}, max_position_embeddings={config.max_position_embeddings}): "
            f"{describe_mismatch(missing, unexpected, shape_errors)}{hint}"
        )
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=not tied, assign=True)
    if tied:
        model.lm_head.weight = model.transformer.tok_emb.weight
    leftover = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # cannot happen when the checks above pass; a guard against silent random weights
        raise RuntimeError(f"parameters left unfilled after conversion: {', '.join(leftover)}")
    model.config.dtype = dtype
    model.eval()
    return model


def make_generation_config(config: GPTScratchConfig, pad_token_id=None, **settings):
    """Generation defaults for a saved folder: stop at end-of-text; sample with top-k 50 unless ``settings`` say
    otherwise (e.g. ``do_sample=False`` for an instruction follower).

    No length at all: a saved ``max_new_tokens`` would override a caller's ``max_length`` (lm-evaluation-harness
    passes ``max_length`` = prompt + tokens to generate) and run past the context, and a saved ``max_length`` makes
    every call with ``max_new_tokens`` warn.  Left unset, ``generate`` adds 20 tokens, capped at the context.
    """
    from transformers import GenerationConfig

    pad = pad_token_id if pad_token_id is not None else config.pad_token_id
    if pad is None:
        pad = config.eos_token_id
    defaults = dict(do_sample=True, top_k=50)
    return GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=pad, **{**defaults, **settings}
    )


def save_converted(model, out_dir, overwrite: bool, tokenizer=None) -> Path:
    """Write ``model`` (+ tokenizer + generation config) into ``out_dir`` atomically."""
    from .fsutil import atomic_dir

    from .tokenization import strip_local_files_only

    out = check_out_dir(out_dir, overwrite)
    if tokenizer is not None:
        from .tokenization import portable_tokenizer

        tokenizer = portable_tokenizer(tokenizer, model.config.max_position_embeddings)
        if tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if len(tokenizer) > model.config.vocab_size:
            raise UserError(
                f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size} embeddings: "
                "the checkpoint and its tokenizer do not belong together"
            )
    model.generation_config = make_generation_config(model.config)
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            strip_local_files_only(tmp)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face gpt2 checkpoints
# ----------------------------------------------------------------------------------------------------------------

# HF gpt2 name (after the "transformer." prefix) -> our name (after "transformer."); "transpose" marks Conv1D weights.
_HF_BLOCK_MAP = {
    "ln_1.weight": ("norm1.weight", False),
    "ln_1.bias": ("norm1.bias", False),
    "attn.c_attn.weight": ("att.qkv_proj.weight", True),
    "attn.c_attn.bias": ("att.qkv_proj.bias", False),
    "attn.c_proj.weight": ("att.out_proj.weight", True),
    "attn.c_proj.bias": ("att.out_proj.bias", False),
    "ln_2.weight": ("norm2.weight", False),
    "ln_2.bias": ("norm2.bias", False),
    "mlp.c_fc.weight": ("ff.fc_in.weight", True),
    "mlp.c_fc.bias": ("ff.fc_in.bias", False),
    "mlp.c_proj.weight": ("ff.fc_out.weight", True),
    "mlp.c_proj.bias": ("ff.fc_out.bias", False),
}
_HF_TOP_MAP = {
    "wte.weight": "transformer.tok_emb.weight",
    "wpe.weight": "transformer.pos_emb.weight",
    "ln_f.weight": "transformer.final_norm.weight",
    "ln_f.bias": "transformer.final_norm.bias",
}
# Non-parameter buffers that old gpt2 checkpoints store (the causal mask): no counterpart, dropped.
_HF_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def map_hf_gpt2_state_dict(state: dict) -> tuple[dict, list[str]]:
    """Rename (and transpose) an HF gpt2 state dict into ours; returns (mapped, keys that have no counterpart)."""
    mapped, unknown = {}, []
    for key, tensor in strip_wrapper_prefixes(state).items():
        if key == "lm_head.weight":
            mapped[key] = tensor
            continue
        name = key[len("transformer.") :] if key.startswith("transformer.") else key
        if name in _HF_TOP_MAP:
            mapped[_HF_TOP_MAP[name]] = tensor
            continue
        if _HF_BUFFERS.match(name):
            continue
        match = re.match(r"^h\.(\d+)\.(.+)$", name)
        if match and match.group(2) in _HF_BLOCK_MAP:
            ours, transpose = _HF_BLOCK_MAP[match.group(2)]
            if transpose and tensor.dim() != 2:
                raise UserError(f"{key} should be a 2-D Conv1D weight but has shape {tuple(tensor.shape)}")
            mapped[f"transformer.blocks.{match.group(1)}.{ours}"] = tensor.t().contiguous() if transpose else tensor
            continue
        unknown.append(key)
    return mapped, unknown


def config_from_hf_gpt2(hf: dict, source: str) -> GPTScratchConfig:
    """Our config from an HF gpt2 ``config.json`` dict; refuses variants our architecture does not compute."""
    if hf.get("model_type") != "gpt2":
        raise UserError(
            f"{source} is a '{hf.get('model_type')}' checkpoint, not 'gpt2': --from hf-gpt2 converts only "
            "GPT2LMHeadModel checkpoints such as openai-community/gpt2"
        )
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(
            f"{source} uses activation_function='{act}', but this model computes GELU with the tanh approximation "
            "(gelu_new): the logits would differ, so the checkpoint cannot be converted"
        )
    unsupported = {
        "scale_attn_by_inverse_layer_idx": True,
        "scale_attn_weights": False,
        "add_cross_attention": True,
    }
    for name, bad in unsupported.items():
        if hf.get(name) == bad:
            raise UserError(f"{source} sets {name}={bad}, which this architecture does not compute: cannot convert")
    for name in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size"):
        if name not in hf:
            raise UserError(f"{source}/config.json has no '{name}': is it a complete gpt2 config?")
    try:
        return GPTScratchConfig(
            vocab_size=hf["vocab_size"],
            max_position_embeddings=hf["n_positions"],
            hidden_size=hf["n_embd"],
            num_hidden_layers=hf["n_layer"],
            num_attention_heads=hf["n_head"],
            intermediate_size=hf.get("n_inner"),
            hidden_dropout=hf.get("resid_pdrop", 0.1),
            attention_dropout=hf.get("attn_pdrop", 0.1),
            qkv_bias=True,
            tie_word_embeddings=hf.get("tie_word_embeddings", True),
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
            initializer_range=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id", 50256),
            eos_token_id=hf.get("eos_token_id", 50256),
            pad_token_id=hf.get("pad_token_id"),
        )
    except ValueError as err:
        raise UserError(f"{source}/config.json: {err}") from err


def resolve_source(src: str) -> Path:
    """A local folder, or a Hub id downloaded with ``snapshot_download`` (config, weights, tokenizer only)."""
    path = Path(src).expanduser()
    if path.exists():
        return path
    if not looks_like_hub_id(str(src), bare_name=True):
        raise UserError(
            f"--src {src} does not exist: pass an existing folder or a Hub id such as openai-community/gpt2"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]
    try:
        folder = Path(snapshot_download(src, allow_patterns=patterns))
        if not any((folder / name).exists() for name in WEIGHT_FILES):
            folder = Path(snapshot_download(src, allow_patterns=patterns + ["pytorch_model*.bin"]))
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as err:
        raise UserError(f"--src {src}: no accessible Hub repository of that name ({type(err).__name__})") from err
    except Exception as err:  # offline mode, no connection, timeouts: all mean "no network"
        raise UserError(
            f"--src {src} is not a local folder and downloading it from the Hugging Face Hub failed "
            f"({type(err).__name__}{', HF_HUB_OFFLINE is set' if _offline() else ''}): the download needs the "
            "network; pass a local folder that holds the checkpoint instead"
        ) from err
    return folder


def _offline() -> bool:
    return offline_flag(("HF_HUB_OFFLINE",)) is not None


def load_hf_weights(folder: Path) -> dict:
    """All tensors of an HF checkpoint folder: safetensors first, else pytorch_model.bin; sharded or not."""
    formats = (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    )
    for single, index in formats:
        if (folder / single).is_file():
            return load_tensor_file(folder / single)
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError) as err:
                raise UserError(f"{folder / index} is not a valid weight index (no 'weight_map')") from err
            state = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise UserError(f"{folder / index} lists the shard {shard}, which is missing from {folder}")
                state.update(load_tensor_file(folder / shard))
            return state
    raise UserError(
        f"{folder} has no weights: expected model.safetensors or pytorch_model.bin (or a sharded index), "
        f"found {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'}"
    )


def convert_hf_gpt2(src: str, out_dir, overwrite: bool = False) -> Path:
    """Convert a Hugging Face ``gpt2`` checkpoint (local folder or Hub id) into a GPTScratch folder.

    The config is read from the checkpoint's ``config.json``; every tensor is mapped by name (``Conv1D`` weights
    transposed); the tokenizer, if the source has one, is copied with pad = end-of-text.  Returns the output folder.
    """
    out = check_out_dir(out_dir, overwrite, src=src)
    folder = resolve_source(str(src))
    if not folder.is_dir():
        raise UserError(f"--src {folder} is a file: pass the folder that holds config.json and the weights")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: pass the folder of an HF gpt2 checkpoint (save_pretrained)")
    try:
        hf_config = json.loads((folder / "config.json").read_text())
    except ValueError as err:
        raise UserError(f"{folder}/config.json is not valid JSON ({err})") from err
    config = config_from_hf_gpt2(hf_config, str(src))
    mapped, unknown = map_hf_gpt2_state_dict(load_hf_weights(folder))
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise UserError(
            f"the weights of {src} hold keys that are not part of a gpt2 model: {', '.join(unknown[:3])}{more}"
        )
    model = build_model(config, mapped, str(src))
    tokenizer = None
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        from .tokenization import load_tokenizer

        tokenizer = load_tokenizer(str(folder))
    return save_converted(model, out, overwrite, tokenizer)


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def add_convert_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``gpt-scratch convert``: ``--from FORMAT`` imports into gpt-scratch, ``--to FORMAT`` exports from it."""
    parser.description = (
        "Import weights into a gpt-scratch folder (--from hf-gpt2: a Hugging Face gpt2 checkpoint such as "
        "openai-community/gpt2; --from book: the book's GPTModel state dict), or export a gpt-scratch folder (causal "
        "LM or classifier) to a plain transformers gpt2 folder (--to hf-gpt2: GPT2LMHeadModel or "
        "GPT2ForSequenceClassification, no trust_remote_code). Give exactly one of --from and --to."
    )
    parser.epilog = (
        "--to hf-gpt2 checks the written folder before it appears: reloaded with the plain class, its logits must "
        "match the source's within 1e-4 on a probe input. A GPT-2 classifier pools the last token that is not "
        "pad_token_id (ignoring attention_mask), gpt-scratch the last one the mask keeps: the same unless a text "
        "ends in the padding token."
    )
    parser.add_argument(
        "--from", dest="source_format", default=None, choices=["hf-gpt2", "book"],
        help="import: hf-gpt2 = a Hugging Face gpt2 checkpoint (folder or Hub id); book = the book's GPTModel state "
        "dict",
    )
    parser.add_argument(
        "--to", dest="target_format", default=None, choices=["hf-gpt2"],
        help="export: hf-gpt2 = a plain transformers gpt2 folder (config.json with model_type gpt2, "
        "model.safetensors, tokenizer, generation_config.json) from the gpt-scratch folder --src",
    )
    parser.add_argument(
        "--src", required=True,
        help="--from hf-gpt2: checkpoint folder / Hub id; --from book: .pth/.safetensors file; --to hf-gpt2: a "
        "gpt-scratch model folder (a run folder)",
    )
    parser.add_argument("--out", required=True, help="output folder (a loadable model folder)")
    parser.add_argument(
        "--config", default=None,
        help=f"--from book only: a preset ({', '.join(PRESETS)}) or a JSON file with the book's cfg dict; "
        "default: sizes inferred from the weights",
    )
    parser.add_argument(
        "--fold-score-bias", action="store_true",
        help="--to hf-gpt2, classifiers only: GPT-2's score layer has no bias; fold a non-zero score bias into the "
        "final LayerNorm's bias (same logits; the exported final hidden states shift by a constant). Without it such "
        "a classifier is refused",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def convert_main(args: argparse.Namespace) -> int:
    """Run ``gpt-scratch convert``; prints the output folder and returns the exit code."""
    from .generate import quiet_hf

    source_format = getattr(args, "source_format", None)
    target_format = getattr(args, "target_format", None)
    if source_format is not None and target_format is not None:
        raise UserError(
            f"--from {source_format} and --to {target_format} exclude each other: --from imports into gpt-scratch, "
            "--to exports from it; give one"
        )
    if source_format is None and target_format is None:
        raise UserError("give --from hf-gpt2|book (import into gpt-scratch) or --to hf-gpt2 (export to plain gpt2)")
    if getattr(args, "config", None) is not None and source_format != "book":
        what = "--to hf-gpt2 reads the config of --src" if target_format else "an hf-gpt2 checkpoint brings its own"
        raise UserError(f"--config applies only to --from book: {what} config.json")
    if getattr(args, "fold_score_bias", False) and target_format is None:
        raise UserError("--fold-score-bias applies only to --to hf-gpt2 (exporting a classifier)")
    with quiet_hf():
        if target_format == "hf-gpt2":
            from pipelines.export import export_hf_gpt2

            result = export_hf_gpt2(
                args.src, args.out, overwrite=args.overwrite, fold_score_bias=getattr(args, "fold_score_bias", False)
            )
        elif source_format == "hf-gpt2":
            out = convert_hf_gpt2(args.src, args.out, overwrite=args.overwrite)
        else:
            from pipelines.book_checkpoint import convert_book

            out = convert_book(args.src, args.config, args.out, overwrite=args.overwrite)
    if target_format is not None:
        print(
            f"exported {args.src} -> {result.out} ({result.architecture}, plain transformers gpt2; on a probe input "
            f"its logits differ from the source's by at most {result.max_abs_diff:.1e})",
            file=sys.stdout,
        )
        for caveat in result.caveats:
            print(f"note: {caveat}", file=sys.stdout)
        return 0
    print(f"converted {args.src} -> {out}", file=sys.stdout)
    return 0


__all__ = [
    "convert_hf_gpt2",
    "make_generation_config",
    "add_convert_arguments",
    "convert_main",
]
