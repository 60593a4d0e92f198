"""Write a gpt-scratch causal language model as one GGUF file: ``gpt-scratch convert --to gguf``.

GGUF is the file format of llama.cpp (and of the tools built on it: Ollama, LM Studio, ...): one file holding the
architecture's settings, the tokenizer and every tensor.  The format is described in the ggml repository's
``docs/gguf.md``; this module writes it only through the format's own Python package, ``gguf`` (``GGUFWriter`` for
the file, ``gguf.quants`` for the Q8_0 blocks), so nothing here encodes bytes by hand.

The model is written as llama.cpp's ``gpt2`` architecture, which computes what ``GPTScratchForCausalLM`` computes:
token plus learned position embeddings, pre-LayerNorm blocks (fused QKV projection, causal attention scaled by
1/sqrt(head_dim), GELU MLP), a final LayerNorm and the output head (llama.cpp's graph: ``src/models/gpt2.cpp``).

* Settings (the ``gpt2.*`` keys): context length = ``max_position_embeddings`` (the rows of the position table),
  embedding length, feed-forward length = ``intermediate_size``, block count, head count, LayerNorm epsilon.
* Tensors, named as ``gguf.TENSOR_NAMES`` spells them for ``MODEL_ARCH.GPT2``: ``token_embd``, ``position_embd``,
  ``blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up, ffn_down}`` (weights and biases), ``output_norm`` and,
  for an untied head only, ``output.weight`` (without it llama.cpp multiplies by ``token_embd``, which is what a
  tied head is).  Our layers are ``nn.Linear`` with (out, in) weights, the order GGUF wants (its shapes list the
  fastest-moving dimension first, so a numpy (out, in) array is a GGUF {in, out} tensor): nothing is transposed.
  (Hugging Face GPT-2 stores ``Conv1D`` weights as (in, out), which is why llama.cpp's own converter transposes
  them.)  llama.cpp's ``gpt2`` requires a QKV bias; a model built without one (``qkv_bias=False``) gets zeros.
* Tokenizer: ``tokenizer.ggml.model = gpt2`` (byte-level BPE) with the tokens in id order as the vocabulary spells
  them, their types, the merges in rank order, and the pre-tokenizer ``gpt-2`` -- GPT-2's split of text into words
  before BPE.  That name is written only for a ``tokenizer.json`` whose pipeline is GPT-2's (no normalizer, a
  ``ByteLevel`` pre-tokenizer with ``use_regex`` on and no prefix space, a plain BPE model); llama.cpp could not
  reproduce the ids of any other, so any other is refused.  End-of-text is the BOS, EOS and padding token, and no BOS
  is added to prompts (``tokenizer.ggml.add_bos_token = false``), as in training.  An instruction-tuned folder's chat
  template goes along as ``tokenizer.chat_template``, for chat clients.
* ``outtype``: ``f32``, ``f16`` or ``q8_0`` for the 2-D weight matrices.  Following llama.cpp's converter, 1-D
  tensors (norms, biases) and the position embeddings stay F32, and a matrix whose rows are not a whole number of
  Q8_0 blocks (32 values) is written as F16 instead.

The file appears only when complete: it is written under a temporary name beside ``out``, read back with
``gguf.GGUFReader`` (every tensor present, in the planned type and shape), then renamed.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file

from modeling_gpt_scratch.configuration_gpt_scratch import GPTScratchConfig
from modeling_gpt_scratch.modeling_gpt_scratch import GPTScratchForCausalLM

from ..errors import UserError
from ..fs import atomic_path
from ..runs.folders import CONFIG_FILE, KIND_WORDS, architecture_kind, is_adapter_folder, loading_weights, read_config

OUTTYPES = ("f32", "f16", "q8_0")
ARCHITECTURE = "gpt2"  # llama.cpp's name for the architecture (gguf.MODEL_ARCH.GPT2)
PRE_TOKENIZER = "gpt-2"  # llama.cpp's name for GPT-2's pre-tokenizer regex
END_OF_TEXT = "<|endoftext|>"
CAUSAL_LM = "GPTScratchForCausalLM"
CLASSIFIER = "GPTScratchForSequenceClassification"
SUPPORTED_TOKENIZER = (
    "GPT-2's byte-level BPE (model BPE, no normalizer, pre-tokenizer ByteLevel with use_regex=true and "
    "add_prefix_space=false)"
)

# our parameter name -> (gguf.MODEL_TENSOR member, suffix); blocks: "transformer.blocks.{i}.<part>.<weight|bias>"
_TOP = {
    "transformer.tok_emb.weight": ("TOKEN_EMBD", "weight"),
    "transformer.pos_emb.weight": ("POS_EMBD", "weight"),
    "transformer.final_norm.weight": ("OUTPUT_NORM", "weight"),
    "transformer.final_norm.bias": ("OUTPUT_NORM", "bias"),
    "lm_head.weight": ("OUTPUT", "weight"),
}
_BLOCK = {
    "norm1": "ATTN_NORM",
    "att.qkv_proj": "ATTN_QKV",
    "att.out_proj": "ATTN_OUT",
    "norm2": "FFN_NORM",
    "ff.fc_in": "FFN_UP",
    "ff.fc_out": "FFN_DOWN",
}
_BLOCK_KEY = re.compile(r"^transformer\.blocks\.(\d+)\.(.+)\.(weight|bias)$")


@dataclass
class GGUFResult:
    """What ``export_gguf`` wrote: the file, its outtype, the tensors by stored type, the matrices that could not be
    Q8_0 (written F16), whether the head is tied, the vocabulary size and the file size."""

    out: Path
    outtype: str
    types: dict = field(default_factory=dict)
    fallbacks: list = field(default_factory=list)
    tied: bool = True
    vocab: int = 0
    size: int = 0

    def summary(self, src) -> str:
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.types.items()))
        note = f"; {len(self.fallbacks)} not a multiple of 32 wide, kept F16" if self.fallbacks else ""
        head = "tied output head" if self.tied else "separate output head"
        return (
            f"exported {src} -> {self.out} (GGUF for llama.cpp, architecture gpt2, {self.outtype}: "
            f"{sum(self.types.values())} tensors: {types}{note}; {head}; vocabulary {self.vocab}; "
            f"{self.size / 2**20:.1f} MiB)"
        )


# ----------------------------------------------------------------------------------------------------------------
# the source folder
# ----------------------------------------------------------------------------------------------------------------


def read_run_folder(src) -> tuple[Path, object]:
    """The folder and its ``GPTScratchConfig``, or one line saying why it cannot be exported."""
    folder = Path(str(src)).expanduser()
    if not folder.exists():
        raise UserError(
            f"--src {folder} does not exist: pass a gpt-scratch run folder (the --out of pretrain, finetune-instruct "
            "or convert --from)"
        )
    if not folder.is_dir():
        raise UserError(f"--src {folder} is a file: pass the run folder that holds config.json and model.safetensors")
    if is_adapter_folder(folder):
        merged = folder / "merged"
        hint = (f"export its merged model instead: --src {merged}" if (merged / CONFIG_FILE).is_file() else
                "fine-tune with --merge to get OUT/merged (the adapters folded into the weights) and export that")
        raise UserError(f"--src {folder} is a LoRA adapter folder (adapter_config.json), not a full model: {hint}")
    if not (folder / CONFIG_FILE).is_file():
        raise UserError(f"--src {folder} is not a model folder: it has no {CONFIG_FILE}")
    config = read_config(folder, "--src")
    kind = architecture_kind(config)
    if kind == "classifier":
        raise UserError(
            f"--src {folder} is {KIND_WORDS['classifier']}: GGUF and llama.cpp run language models; export the causal "
            "LM it was fine-tuned from, or use --to hf-gpt2 for a plain transformers classifier"
        )
    if config.get("model_type") == "gpt2":
        raise UserError(
            f"--src {folder} is a Hugging Face GPT-2 folder, not a gpt-scratch one: convert it with llama.cpp's "
            "convert_hf_to_gguf.py, or import it first with `gpt-scratch convert --from hf-gpt2`"
        )
    if config.get("model_type") != "gpt_scratch" or kind != "causal-lm":
        what = ", ".join(map(str, config.get("architectures") or [])) or f"model_type {config.get('model_type')!r}"
        raise UserError(
            f"--src {folder} holds {what}, not a gpt-scratch causal LM ({CAUSAL_LM}): pass the --out of pretrain, "
            "finetune-instruct or convert --from"
        )
    try:
        return folder, GPTScratchConfig.from_dict(config)
    except (TypeError, ValueError) as err:
        raise UserError(f"--src {folder}/config.json does not describe a valid model ({err})") from None


def load_weights(folder: Path) -> dict:
    """Every tensor of the folder's safetensors weights (one file or shards), as float32 numpy arrays."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError):
            raise UserError(f"--src {index} is not a valid weight index (no 'weight_map'): re-save the model") from None
        files = [folder / name for name in shards]
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise UserError(f"--src {folder}: {index.name} lists {missing[0]}, which is missing: copy the folder again")
    else:
        other = " (only PyTorch .bin weights: re-save the model with safetensors)" if any(
            folder.glob("pytorch_model*.bin")) else ""
        raise UserError(f"--src {folder} is not a complete model folder: it has no model.safetensors{other}")

    state = {}
    for path in files:
        with loading_weights(folder, "--src", path):
            state.update(load_file(str(path), device="cpu"))
    return {name: tensor.detach().to(torch.float32).numpy() for name, tensor in state.items()}


def expected_shapes(config) -> dict:
    """Our parameter names and shapes for ``config`` (the model built on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        model = GPTScratchForCausalLM(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


# ----------------------------------------------------------------------------------------------------------------
# tensors
# ----------------------------------------------------------------------------------------------------------------


def gguf_tensor_name(ours: str) -> str | None:
    """The GGUF name of our parameter ``ours`` (``None``: not part of the gpt2 layout)."""
    match = _BLOCK_KEY.match(ours)
    if ours in _TOP:
        member, suffix, layer = *_TOP[ours], None
    elif match and match.group(2) in _BLOCK:
        member, suffix, layer = _BLOCK[match.group(2)], match.group(3), int(match.group(1))
    else:
        return None
    tensor = gguf.MODEL_TENSOR[member]
    if tensor not in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GPT2]:  # the tables above disagree with gguf's: a bug
        raise RuntimeError(f"GGUF export: {member} is not a tensor of llama.cpp's gpt2 architecture")
    base = gguf.TENSOR_NAMES[tensor]
    return f"{base.format(bid=layer) if layer is not None else base}.{suffix}"


def map_tensors(state: dict, config, source: str) -> dict:
    """GGUF name -> float32 array for every tensor of the gpt2 layout, checked against the config's shapes.

    A tied head is left out (llama.cpp reuses ``token_embd``); a missing QKV bias becomes zeros.  Weights that do not
    fill the model, or hold tensors it does not have, are one line naming them.
    """
    expected = expected_shapes(config)
    if config.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {expected[k]}" for k in expected
              if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or shapes:
        problems = [f"missing {', '.join(missing[:3])}" if missing else "",
                    f"unexpected {', '.join(extra[:3])}" if extra else "",
                    f"shape {'; '.join(shapes[:3])}" if shapes else ""]
        raise UserError(
            f"--src {source}: its weights do not fit its config.json ({'; '.join(p for p in problems if p)}): re-save "
            "the model"
        )
    out = {}
    for ours in expected:
        name = gguf_tensor_name(ours)
        if name is None:  # the model has a parameter the tables above do not know: a bug, not the user's doing
            raise RuntimeError(f"GGUF export: no gpt2 tensor for {ours}")
        out[name] = np.ascontiguousarray(state[ours], dtype=np.float32)
        if ours.endswith(".att.qkv_proj.weight") and not config.qkv_bias:  # llama.cpp's gpt2 requires the bias
            out[gguf_tensor_name(ours[: -len("weight")] + "bias")] = np.zeros(out[name].shape[0], dtype=np.float32)
    return out


def storage_type(name: str, data, outtype: str):
    """The type a tensor is stored in: what llama.cpp's converter does for the same outtype (1-D tensors, norms and
    the position table in F32; other weight matrices in the outtype)."""
    q = gguf.GGMLQuantizationType
    if data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return q.F32
    if name == f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD]}.weight":
        return q.F32
    return {"f32": q.F32, "f16": q.F16, "q8_0": q.Q8_0}[outtype]


def encode_tensor(name: str, data, outtype: str):
    """``(bytes-or-floats array, stored type, fell back)``: the tensor in its storage type through ``gguf.quants``;
    a Q8_0 matrix whose rows are not whole blocks is stored F16 (llama.cpp's converter falls back the same way)."""
    qtype = storage_type(name, data, outtype)
    try:
        return gguf.quants.quantize(data, qtype), qtype, False
    except gguf.QuantError:
        qtype = gguf.GGMLQuantizationType.F16
        return gguf.quants.quantize(data, qtype), qtype, True


# ----------------------------------------------------------------------------------------------------------------
# tokenizer
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Vocabulary:
    tokens: list
    types: list
    merges: list
    end_of_text: int
    chat_template: str | None = None


def _describe_tokenizer(spec: dict) -> str:
    def name(part):
        if not part:
            return "none"
        kind = part.get("type", "?")
        if kind == "Sequence":
            members = part.get("pretokenizers") or part.get("normalizers") or []
            return f"Sequence[{', '.join(name(m) for m in members)}]"
        if kind == "ByteLevel":
            return (f"ByteLevel(use_regex={str(part.get('use_regex', True)).lower()}, "
                    f"add_prefix_space={str(part.get('add_prefix_space')).lower()})")
        return kind

    model = spec.get("model") or {}
    return (f"model {model.get('type', '?')}, normalizer {name(spec.get('normalizer'))}, pre-tokenizer "
            f"{name(spec.get('pre_tokenizer'))}")


def is_gpt2_byte_level(spec: dict) -> bool:
    """Whether a ``tokenizer.json`` splits and encodes text exactly as GPT-2's tokenizer does (so llama.cpp's
    ``gpt-2`` pre-tokenizer with its byte-level BPE gives the same ids)."""
    normalizer = spec.get("normalizer")
    if normalizer and not (normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")):
        return False
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers") or []) == 1:
        pre = pre["pretokenizers"][0]
    if pre.get("type") != "ByteLevel" or pre.get("use_regex", True) is not True:
        return False
    if pre.get("add_prefix_space") is not False:
        return False
    model = spec.get("model") or {}
    return (
        model.get("type") == "BPE"
        and model.get("dropout") in (None, 0, 0.0)
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
        and not model.get("byte_fallback", False)
        and not model.get("ignore_merges", False)
    )


def read_vocabulary(folder: Path, config) -> Vocabulary:
    """Tokens, types, merges and the end-of-text id from ``tokenizer.json``; other tokenizers are refused."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(
            f"--src {folder} has no tokenizer.json: a GGUF file carries its tokenizer; save the tokenizer into the "
            "folder with transformers (save_pretrained writes tokenizer.json)"
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        model = spec["model"]
        vocab = dict(model["vocab"])
        merges = list(model.get("merges") or [])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"--src {path} is not a readable tokenizer.json ({type(err).__name__}): re-save the tokenizer"
        ) from None
    if not is_gpt2_byte_level(spec):
        raise UserError(
            f"--src {path} is a tokenizer with {_describe_tokenizer(spec)}; GGUF export supports only "
            f"{SUPPORTED_TOKENIZER}, whose ids llama.cpp reproduces"
        )
    size = config.vocab_size
    by_id: dict[int, tuple[str, int]] = {}
    for token, index in vocab.items():
        by_id[int(index)] = (token, gguf.TokenType.NORMAL)
    for added in spec.get("added_tokens") or []:
        # llama.cpp matches CONTROL tokens only when asked to parse special tokens, USER_DEFINED ones always (as the
        # Hugging Face tokenizer does with added tokens that are not special)
        kind = gguf.TokenType.CONTROL if added.get("special", True) else gguf.TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    largest = max(by_id) if by_id else -1
    if largest >= size:
        raise UserError(
            f"--src {folder}: its tokenizer has ids up to {largest} but the model only {size} embeddings: the model "
            "and its tokenizer do not belong together"
        )
    tokens, types = [], []
    for index in range(size):  # ids the tokenizer never produces (a padded embedding table) are marked unused
        token, kind = by_id.get(index, (f"[PAD{index}]", gguf.TokenType.UNUSED))
        tokens.append(token)
        types.append(int(kind))
    pairs = []
    for merge in merges:
        pair = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(pair) != 2 or any(" " in part or not part for part in pair):
            raise UserError(f"--src {path}: the merge {merge!r} is not a pair of tokens: re-save the tokenizer")
        pairs.append(" ".join(pair))
    eos = config.eos_token_id
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if not isinstance(eos, int) or not 0 <= eos < size:
        eos = next((i for i, (token, _) in by_id.items() if token == END_OF_TEXT), None)
    if eos is None:
        raise UserError(
            f"--src {folder}: neither config.json (eos_token_id) nor the tokenizer names an end-of-text token "
            f"({END_OF_TEXT}): llama.cpp would not know where a text ends"
        )
    return Vocabulary(tokens, types, pairs, eos, read_chat_template(folder))


def read_chat_template(folder: Path) -> str | None:
    """The tokenizer's chat template (an instruction-tuned folder has one), carried into the GGUF for chat clients."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        template = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    return template if isinstance(template, str) and template else None


# ----------------------------------------------------------------------------------------------------------------
# the export
# ----------------------------------------------------------------------------------------------------------------


def check_out(out, overwrite: bool, outtype: str) -> Path:
    path = Path(str(out)).expanduser()
    if path.is_dir():
        raise UserError(
            f"--out {path} is a folder: --to gguf writes one file; give a file path such as "
            f"{path / f'model-{outtype}.gguf'}"
        )
    if path.exists() and not overwrite:
        raise UserError(f"--out {path} already exists: choose another path, or pass --overwrite to replace it")
    return path


def model_name(folder: Path) -> str:
    folder = folder.resolve()
    return f"{folder.parent.name}-merged" if folder.name == "merged" and folder.parent.name else folder.name


def export_gguf(src, out, outtype: str = "f16", overwrite: bool = False) -> GGUFResult:
    """Write the gpt-scratch causal LM folder ``src`` as the GGUF file ``out`` (``outtype`` f32, f16 or q8_0).

    Everything is checked before a byte is written; the file is written beside ``out`` under a temporary name, read
    back, and only then renamed to ``out``.  Returns what was written.
    """
    if outtype not in OUTTYPES:
        raise UserError(f"--outtype {outtype} is not supported: choose one of {', '.join(OUTTYPES)}")
    path = check_out(out, overwrite, outtype)
    folder, config = read_run_folder(src)
    vocabulary = read_vocabulary(folder, config)
    tensors = map_tensors(load_weights(folder), config, str(folder))
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]

    planned, fallbacks = {}, []
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCHITECTURE)
        try:
            writer.add_type(gguf.GGUFType.MODEL)
            writer.add_name(model_name(folder))
            writer.add_context_length(config.max_position_embeddings)
            writer.add_embedding_length(config.hidden_size)
            writer.add_feed_forward_length(config.intermediate_size)
            writer.add_block_count(config.num_hidden_layers)
            writer.add_head_count(config.num_attention_heads)
            writer.add_layer_norm_eps(float(config.layer_norm_epsilon))
            writer.add_file_type(int(file_type))
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre(PRE_TOKENIZER)
            writer.add_token_list(vocabulary.tokens)
            writer.add_token_types(vocabulary.types)
            writer.add_token_merges(vocabulary.merges)
            writer.add_bos_token_id(vocabulary.end_of_text)
            writer.add_eos_token_id(vocabulary.end_of_text)
            writer.add_pad_token_id(vocabulary.end_of_text)
            writer.add_add_bos_token(False)
            writer.add_add_eos_token(False)
            if vocabulary.chat_template:
                writer.add_chat_template(vocabulary.chat_template)

            for name, data in tensors.items():
                encoded, qtype, fell_back = encode_tensor(name, data, outtype)
                if fell_back:
                    fallbacks.append(name)
                planned[name] = (qtype, tuple(reversed(data.shape)))
                writer.add_tensor(name, encoded, raw_dtype=qtype)
            del tensors

            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        verify(tmp, planned)
    return GGUFResult(
        out=path, outtype=outtype, types=dict(Counter(q.name for q, _ in planned.values())), fallbacks=fallbacks,
        tied=bool(config.tie_word_embeddings), vocab=len(vocabulary.tokens), size=path.stat().st_size,
    )


def verify(file: Path, planned: dict) -> None:
    """Read the written file back: the gpt2 architecture and every planned tensor in its type and shape."""
    reader = gguf.GGUFReader(str(file))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    found = {t.name: (t.tensor_type, tuple(int(n) for n in t.shape)) for t in reader.tensors}
    del reader
    if arch is None or arch.contents() != ARCHITECTURE or found != planned:
        raise RuntimeError(f"GGUF export: {file} does not read back as written")  # the writer failed, not the user
