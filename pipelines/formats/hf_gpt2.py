"""Hugging Face ``gpt2`` checkpoints (``GPT2LMHeadModel``, e.g. ``openai-community/gpt2``, a local folder or a Hub id)
imported into a GPTScratch folder: ``gpt-scratch convert --from hf-gpt2``.

GPT-2's linear layers are ``Conv1D`` modules that store weights as (in, out); ours are ``nn.Linear`` with (out, in),
so those weights are transposed.  Every tensor is mapped by name (the tables below, which the export to plain GPT-2,
``pipelines.formats.gpt2_export``, inverts), and the conversion fails -- naming the keys -- unless every parameter of
the target model was filled exactly once from a tensor of the right shape (``pipelines.formats.weights``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from modeling_gpt_scratch.configuration_gpt_scratch import GPTScratchConfig

from ..errors import UserError
from ..hub import model_folder
from ..runs.tokenizers import TOKENIZER_FILES, open_tokenizer
from .weights import build_model, check_out_dir, load_tensor_file, save_converted, strip_wrapper_prefixes

WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)


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
    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]  # a Hub id: config, weights, tokenizer only
    folder = model_folder(src, "--src", allow_patterns=patterns, bare_name=True)
    if not any((folder / name).exists() for name in WEIGHT_FILES):  # an older repo: pytorch_model.bin only
        folder = model_folder(src, "--src", allow_patterns=[*patterns, "pytorch_model*.bin"], bare_name=True)
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
        tokenizer = open_tokenizer(folder)
    return save_converted(model, out, overwrite, tokenizer)


