"""Import a state dict of the book's ``GPTModel`` into a GPTScratch folder (``gpt-scratch convert --from book``).

The book is *Build a Large Language Model (From Scratch)*, chapter 4; its model is saved with ``torch.save``
(``.pth``, read here only with ``torch.load(weights_only=True)``, which never runs code) or as ``.safetensors``.
Its separate query/key/value projections are concatenated into our fused ``qkv_proj``, its LayerNorm's
``scale``/``shift`` become ``weight``/``bias``, and errors name the keys in the book's terms.

Reading the file, checking that every parameter is filled exactly once and writing the folder atomically are shared
with the Hugging Face gpt2 import and live in :mod:`pipelines.formats.weights`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import AutoTokenizer

from modeling_gpt_scratch.configuration_gpt_scratch import PRESETS, GPTScratchConfig

from ..errors import UserError
from .weights import (
    build_model,
    check_out_dir,
    describe_mismatch,
    load_tensor_file,
    save_converted,
    strip_wrapper_prefixes,
)

_BOOK_BLOCK_MAP = {
    "att.out_proj.weight": "att.out_proj.weight",
    "att.out_proj.bias": "att.out_proj.bias",
    "ff.layers.0.weight": "ff.fc_in.weight",
    "ff.layers.0.bias": "ff.fc_in.bias",
    "ff.layers.2.weight": "ff.fc_out.weight",
    "ff.layers.2.bias": "ff.fc_out.bias",
    # the book's own LayerNorm (scale/shift) and, in its faster variants, torch's nn.LayerNorm (weight/bias)
    "norm1.scale": "norm1.weight",
    "norm1.shift": "norm1.bias",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.scale": "norm2.weight",
    "norm2.shift": "norm2.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
}
_BOOK_TOP_MAP = {
    "tok_emb.weight": "transformer.tok_emb.weight",
    "pos_emb.weight": "transformer.pos_emb.weight",
    "final_norm.scale": "transformer.final_norm.weight",
    "final_norm.shift": "transformer.final_norm.bias",
    "final_norm.weight": "transformer.final_norm.weight",
    "final_norm.bias": "transformer.final_norm.bias",
    "out_head.weight": "lm_head.weight",
}
_BOOK_BUFFERS = re.compile(r"^trf_blocks\.\d+\.att\.mask$")  # the causal mask buffer, rebuilt by our model


def map_book_state_dict(state: dict) -> tuple[dict, list[str], dict]:
    """Rename a book ``GPTModel`` state dict into ours.

    Returns (mapped, unexpected book keys, per-layer q/k/v parts that are incomplete).  The query, key and value
    projections (weights and, when present, biases) are concatenated along the output dimension in that order, the
    order our ``qkv_proj`` splits them in.
    """
    mapped, unexpected = {}, []
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in strip_wrapper_prefixes(state).items():
        if key in _BOOK_TOP_MAP:
            mapped[_BOOK_TOP_MAP[key]] = tensor
            continue
        if _BOOK_BUFFERS.match(key):
            continue
        match = re.match(r"^trf_blocks\.(\d+)\.(.+)$", key)
        if match:
            layer, rest = match.groups()
            part = re.match(r"^att\.W_(query|key|value)\.(weight|bias)$", rest)
            if part:
                qkv.setdefault((layer, part.group(2)), {})[part.group(1)] = tensor
                continue
            if rest in _BOOK_BLOCK_MAP:
                mapped[f"transformer.blocks.{layer}.{_BOOK_BLOCK_MAP[rest]}"] = tensor
                continue
        unexpected.append(key)
    incomplete = {}
    for (layer, kind), parts in sorted(qkv.items(), key=lambda item: (int(item[0][0]), item[0][1])):
        absent = [p for p in ("query", "key", "value") if p not in parts]
        if absent:
            incomplete[f"trf_blocks.{layer}.att.W_{{{','.join(absent)}}}.{kind}"] = absent
            continue
        shapes = {tuple(parts[p].shape) for p in ("query", "key", "value")}
        if len(shapes) != 1:
            raise UserError(
                f"trf_blocks.{layer}.att W_query/W_key/W_value {kind}s differ in shape "
                f"({', '.join(str(tuple(parts[p].shape)) for p in ('query', 'key', 'value'))}): not a book GPTModel"
            )
        mapped[f"transformer.blocks.{layer}.att.qkv_proj.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    return mapped, unexpected, incomplete


def load_config_spec(spec: str | None) -> tuple[dict, set]:
    """A config dict from a preset name or a JSON file (the book's cfg dict or our config.json).

    Returns (kwargs for ``GPTScratchConfig``, the keys the user stated explicitly -- presets state none of
    ``qkv_bias``/``tie_word_embeddings`` as facts about a particular checkpoint).
    """
    if spec is None:
        return {}, set()
    if spec in PRESETS:
        return dict(PRESETS[spec]), set()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(
            f"--config {spec} is neither a preset ({', '.join(PRESETS)}) nor an existing JSON file: pass one of them"
        )
    try:
        cfg = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"--config {path} is not valid JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise UserError(f"--config {path} must hold a JSON object (the book's cfg dict or a config.json)")
    if cfg.get("model_type") not in (None, GPTScratchConfig.model_type):
        raise UserError(
            f"--config {path} describes a '{cfg['model_type']}' model, not '{GPTScratchConfig.model_type}': "
            "pass the book's cfg dict, a gpt_scratch config.json or a preset name"
        )
    drop = {"model_type", "architectures", "auto_map", "transformers_version", "dtype", "torch_dtype"}
    cfg = {k: v for k, v in cfg.items() if k not in drop}
    return cfg, {k for k in ("qkv_bias", "tie_word_embeddings") if k in cfg}


def _infer_book_config(state: dict) -> dict:
    """Sizes read off the tensors, for a book state dict given without ``--config``.

    Widths, layer count, vocabulary and context come from shapes; the head count does not show in any shape, so it
    is taken from the GPT-2 preset of the same width (768 -> 12, 1024 -> 16, 1280 -> 20, 1600 -> 25).
    """
    if "tok_emb.weight" not in state or "pos_emb.weight" not in state:
        raise UserError("the checkpoint has no tok_emb.weight/pos_emb.weight: it is not a book GPTModel state dict")
    vocab, width = state["tok_emb.weight"].shape
    context = state["pos_emb.weight"].shape[0]
    layers = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"^trf_blocks\.(\d+)\.", k))), default=-1)
    heads = {p["hidden_size"]: p["num_attention_heads"] for p in PRESETS.values()}
    if width not in heads:
        raise UserError(
            f"the checkpoint has emb_dim={width}, which matches no preset width, so the head count is unknown: pass "
            "--config with the book's cfg dict (a JSON with n_heads)"
        )
    return dict(
        vocab_size=vocab, hidden_size=width, max_position_embeddings=context, num_hidden_layers=layers,
        num_attention_heads=heads[width],
    )


def convert_book(pth_path, config: str | None, out_dir, overwrite: bool = False) -> Path:
    """Convert a state dict of the book's ``GPTModel`` into a GPTScratch folder.

    ``config`` is a preset name (``gpt2-small``, ...) or a JSON file with the book's cfg dict (``emb_dim``,
    ``n_heads``, ...) or our ``config.json``; ``None`` infers the sizes from the tensor shapes.

    Two choices are read off the weights rather than the config, because they are facts about the checkpoint:

    * ``qkv_bias`` is true exactly when the checkpoint has ``W_query.bias``.  A JSON config that states the opposite
      is an error (presets only name sizes, so they follow the checkpoint).
    * The output head is tied to the token embedding only when ``out_head.weight`` equals ``tok_emb.weight``
      exactly (as in the book's ``load_weights_into_gpt``); then it is stored once.  Otherwise it stays separate,
      even with a preset that ties: tying would silently replace the trained head.  A JSON config that asks for tying
      while the two differ is an error; one that says ``tie_word_embeddings: false`` keeps two tensors even when
      they are equal.  A checkpoint without ``out_head.weight`` is tied unless the config says otherwise.
    """
    path = Path(pth_path).expanduser()
    out = check_out_dir(out_dir, overwrite)
    if not path.is_file():
        raise UserError(
            f"--src {path} is not a file: pass the .pth (torch.save of the state dict) or .safetensors file"
        )
    state = strip_wrapper_prefixes(load_tensor_file(path))
    cfg, stated = load_config_spec(config)
    if config is None:
        cfg = _infer_book_config(state)

    has_qkv_bias = any(re.match(r"^trf_blocks\.\d+\.att\.W_query\.bias$", k) for k in state)
    if "qkv_bias" in stated and bool(cfg["qkv_bias"]) != has_qkv_bias:
        raise UserError(
            f"--config {config} says qkv_bias={cfg['qkv_bias']}, but {path} "
            f"{'has' if has_qkv_bias else 'has no'} query/key/value biases: set qkv_bias to {has_qkv_bias}"
        )
    cfg["qkv_bias"] = has_qkv_bias

    emb, head = state.get("tok_emb.weight"), state.get("out_head.weight")
    identical = emb is not None and head is not None and emb.shape == head.shape and torch.equal(emb, head)
    if cfg.get("tie_word_embeddings") and "tie_word_embeddings" in stated and head is not None and not identical:
        raise UserError(
            f"--config {config} says tie_word_embeddings=true, but out_head.weight differs from tok_emb.weight in "
            f"{path}: tying would discard the trained output head; set tie_word_embeddings to false"
        )
    if "tie_word_embeddings" in stated and not cfg["tie_word_embeddings"]:
        cfg["tie_word_embeddings"] = False  # stated untied: keep two tensors even if equal (e.g. to train apart)
    else:
        cfg["tie_word_embeddings"] = identical or (head is None and cfg.get("tie_word_embeddings", True))
    try:
        gpt_config = GPTScratchConfig(**cfg)
    except (TypeError, ValueError) as err:
        raise UserError(f"--config {config}: {err}") from err

    mapped, unexpected, incomplete = map_book_state_dict(state)
    if unexpected or incomplete:
        missing = list(incomplete)
        raise UserError(
            f"the weights of {path} do not fit a book GPTModel: "
            f"{describe_mismatch(missing, unexpected, [])}"
        )
    if gpt_config.tie_word_embeddings:
        mapped.pop("lm_head.weight", None)
    try:
        model = build_model(gpt_config, mapped, str(path), hint=_book_hint(gpt_config, config))
    except UserError as err:
        # name keys in the book's terms, which is what the user's file holds
        raise UserError(_to_book_names(str(err))) from None
    return save_converted(model, out, overwrite, tokenizer=_gpt2_tokenizer_if_available(gpt_config))


def _book_hint(config: GPTScratchConfig, spec) -> str:
    src = f"--config {spec}" if spec else "the inferred config"
    return f" (check that {src} matches the checkpoint)"


_OURS_TO_BOOK = [
    (r"transformer\.blocks\.(\d+)\.att\.qkv_proj\.(weight|bias)", r"trf_blocks.\1.att.W_query/W_key/W_value.\2"),
    (r"transformer\.blocks\.(\d+)\.ff\.fc_in", r"trf_blocks.\1.ff.layers.0"),
    (r"transformer\.blocks\.(\d+)\.ff\.fc_out", r"trf_blocks.\1.ff.layers.2"),
    (r"transformer\.blocks\.(\d+)\.(norm[12])\.weight", r"trf_blocks.\1.\2.scale"),
    (r"transformer\.blocks\.(\d+)\.(norm[12])\.bias", r"trf_blocks.\1.\2.shift"),
    (r"transformer\.blocks\.(\d+)\.", r"trf_blocks.\1."),
    (r"transformer\.final_norm\.weight", "final_norm.scale"),
    (r"transformer\.final_norm\.bias", "final_norm.shift"),
    (r"transformer\.(tok_emb|pos_emb)", r"\1"),
    (r"lm_head\.weight", "out_head.weight"),
]


def _to_book_names(message: str) -> str:
    for pattern, repl in _OURS_TO_BOOK:
        message = re.sub(pattern, repl, message)
    return message


def _gpt2_tokenizer_if_available(config: GPTScratchConfig):
    """The book uses GPT-2's BPE (tiktoken ``gpt2``); include HF's copy when it is cached and the vocab fits."""
    if config.vocab_size != 50257:
        return None
    try:
        return AutoTokenizer.from_pretrained("openai-community/gpt2", local_files_only=True)
    except Exception:
        return None
