"""What every weight import shares: reading a weights file safely, checking that a model is filled exactly once
from tensors of the right shape, and writing the converted folder whole.

A weights file is read as safetensors or with ``torch.load(weights_only=True)`` (never arbitrary code).  The written
folder is one that ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` opens: ``config.json``
(with ``auto_map``), ``model.safetensors``, the two code files, ``generation_config.json`` and, when the source has
one, the tokenizer; it appears atomically (written under a temporary name, then renamed).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from modeling_gpt_scratch.configuration_gpt_scratch import GPTScratchConfig
from modeling_gpt_scratch.modeling_gpt_scratch import GPTScratchForCausalLM

from ..errors import UserError
from ..fs import atomic_dir
from ..runs.folders import make_generation_config
from ..runs.tokenizers import portable_tokenizer, strip_local_files_only


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


def save_converted(model, out_dir, overwrite: bool, tokenizer=None) -> Path:
    """Write ``model`` (+ tokenizer + generation config) into ``out_dir`` atomically."""
    out = check_out_dir(out_dir, overwrite)
    if tokenizer is not None:
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


