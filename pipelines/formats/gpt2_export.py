"""Export a GPTScratch folder to a plain Hugging Face ``gpt2`` folder: ``gpt-scratch convert --to hf-gpt2``.

The reverse of ``convert --from hf-gpt2`` (``pipelines.formats.hf_gpt2``, whose name tables this module inverts,
so the two directions cannot drift apart).  The result opens with transformers' own classes -- ``GPT2LMHeadModel``
or ``GPT2ForSequenceClassification``, through ``AutoModelFor...`` -- without ``trust_remote_code``: a ``config.json``
with ``model_type: gpt2`` and no ``auto_map``, ``model.safetensors`` written by that class's ``save_pretrained``, the
tokenizer (its class recorded as ``GPT2TokenizerFast`` for GPT-2-style byte-level BPEs, a name transformers 4.x and
5.x both resolve) and, for a language model, ``generation_config.json``.

The architectures compute the same function; only the storage differs:

* our ``nn.Linear`` weights are (out, in), GPT-2's ``Conv1D`` weights (in, out): transposed;
* a model without query/key/value biases (``qkv_bias=False``) gets zero ``c_attn`` biases;
* a tied output head stays tied (stored once), an untied one stays untied (``tie_word_embeddings=False`` and
  ``lm_head.weight`` written);
* GPT-2's classifier head ``score`` has no bias.  A zero bias is dropped.  A non-zero one has no exact place in
  GPT-2 except one: ``score`` reads only the final LayerNorm's output, ``W (g * n + beta) + b``, so a shift ``d`` of
  ``ln_f.bias`` with ``W d = b`` (the least-norm solution) gives the same logits.  That changes the exported model's
  final hidden states (by ``d`` at every position), so it happens only when asked for (``--fold-score-bias``);
  otherwise the export is refused.

Pooling differs in one corner: GPT-2's classifier scores the last token whose id is not ``pad_token_id`` and ignores
``attention_mask``; ours follows the attention mask.  Both agree unless a text's own last token is the padding token
(with pad = end-of-text: a text that ends in ``<|endoftext|>``).

Nothing is moved into place unchecked: the folder is written under a temporary name, reloaded with the plain class,
and its logits on a probe input are compared with the source model's (in float64, so the comparison measures the
mapping and not float32 rounding; at most 1e-4 apart); the tokenizer must give the same ids on probe texts.  Only
then is it renamed to ``--out``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, GenerationConfig, GPT2Config

import modeling_gpt_scratch
from modeling_gpt_scratch.configuration_gpt_scratch import GPTScratchConfig

from ..errors import UserError
from ..fs import atomic_dir
from ..runs.folders import WEIGHT_FILES, make_generation_config
from ..runs.tokenizers import TOKENIZER_FILES, save_tokenizer_plain, set_pad_to_eos
from .hf_gpt2 import _HF_BLOCK_MAP, _HF_TOP_MAP
from .weights import check_out_dir

TOLERANCE = 1e-4
CAUSAL_LM = "GPTScratchForCausalLM"
CLASSIFIER = "GPTScratchForSequenceClassification"
_TARGET_CLASS = {CAUSAL_LM: "GPT2LMHeadModel", CLASSIFIER: "GPT2ForSequenceClassification"}
_PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "  two spaces, a tab\tand\nnew lines\n\n",
    "numbers 12345 and 3.14, punctuation?! (yes) -- caf\u00e9 \u00fcber \u4e2d\u6587 \U0001f600",
    "text<|endoftext|>after the end-of-text token",
)


@dataclass
class ExportResult:
    """What ``export_hf_gpt2`` wrote: the folder, the transformers class, the probe's largest logit difference, and
    the caveats: how the export differs from its source (no tokenizer, a folded score bias, GPT-2's pooling)."""

    out: Path
    architecture: str
    max_abs_diff: float
    caveats: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# names and tensors
# ----------------------------------------------------------------------------------------------------------------


def _inverse_tables():
    top = {ours: f"transformer.{hf}" for hf, ours in _HF_TOP_MAP.items()}
    block = {ours: (hf, transpose) for hf, (ours, transpose) in _HF_BLOCK_MAP.items()}
    return top, block


def map_to_hf_gpt2_state_dict(state: dict, config) -> tuple[dict, list[str]]:
    """Our state dict (``transformer.*``, ``lm_head`` or ``score``) in GPT-2's names and layouts.

    Returns (mapped, our keys that have no place in GPT-2).  ``lm_head.weight`` is left out when the config ties it
    to the token embedding; ``score.bias`` is never mapped (GPT-2's ``score`` has none: see ``score_bias_plan``);
    without ``qkv_bias`` every layer gets a zero ``c_attn.bias``.
    """
    top, block = _inverse_tables()
    tied = bool(config.tie_word_embeddings)
    mapped, unknown = {}, []
    for key, tensor in state.items():
        if key == "lm_head.weight":
            if not tied:
                mapped[key] = tensor.contiguous()
            continue
        if key == "score.weight":
            mapped[key] = tensor.contiguous()
            continue
        if key == "score.bias":
            continue
        if key in top:
            mapped[top[key]] = tensor.contiguous()
            continue
        match = re.match(r"^transformer\.blocks\.(\d+)\.(.+)$", key)
        if match and match.group(2) in block:
            hf, transpose = block[match.group(2)]
            tensor = tensor.t() if transpose else tensor
            mapped[f"transformer.h.{match.group(1)}.{hf}"] = tensor.contiguous()
            continue
        unknown.append(key)
    if not config.qkv_bias:
        for layer in range(config.num_hidden_layers):
            weight = mapped.get(f"transformer.h.{layer}.attn.c_attn.weight")
            if weight is not None:
                mapped[f"transformer.h.{layer}.attn.c_attn.bias"] = torch.zeros(weight.shape[1], dtype=weight.dtype)
    return mapped, unknown


def score_bias_plan(state: dict, fold: bool, source: str) -> torch.Tensor | None:
    """The shift of ``ln_f.bias`` that carries our ``score.bias`` into GPT-2 (``None``: nothing to carry).

    A zero bias needs nothing.  A non-zero one is refused unless ``fold``; then ``d`` solves ``W d = b`` exactly
    (least-norm, in float64), which needs ``b`` in the range of ``W`` -- always so when the head's rows are linearly
    independent (fewer labels than the hidden width, as in every trained head).
    """
    bias = state.get("score.bias")
    if bias is None or not torch.count_nonzero(bias):
        return None
    largest = float(bias.abs().max())
    if not fold:
        raise UserError(
            f"the classifier in {source} has a score bias (largest |b| = {largest:.3g}) that GPT-2 cannot hold: "
            "GPT2ForSequenceClassification's score layer has no bias; pass --fold-score-bias to fold it into the "
            "final LayerNorm's bias (ln_f.bias; the logits stay the same, the exported final hidden states shift by a "
            "constant vector)"
        )
    weight = state["score.weight"].double()
    shift = torch.linalg.pinv(weight) @ bias.double()
    residual = float((weight @ shift - bias.double()).abs().max())
    if residual > 1e-9 * max(1.0, largest):
        raise UserError(
            f"the score bias of {source} cannot be folded into ln_f.bias: the head's rows are linearly dependent and "
            f"the bias is not in their span (residual {residual:.3g}); such a head has no exact GPT-2 equivalent"
        )
    return shift


def gpt2_config_from_ours(config, architecture: str, pad_token_id):
    """A ``GPT2Config`` for the same function: sizes, GELU (tanh approximation = ``gelu_new``), dropouts, ids."""
    kwargs = dict(
        vocab_size=config.vocab_size,
        n_positions=config.max_position_embeddings,
        n_ctx=config.max_position_embeddings,  # OpenAI's configs carry it, and llama.cpp's converter reads it
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_inner=None if config.intermediate_size == 4 * config.hidden_size else config.intermediate_size,
        activation_function="gelu_new",
        resid_pdrop=config.hidden_dropout,
        embd_pdrop=config.hidden_dropout,
        attn_pdrop=config.attention_dropout,
        layer_norm_epsilon=config.layer_norm_epsilon,
        initializer_range=config.initializer_range,
        scale_attn_weights=True,
        use_cache=True,
        tie_word_embeddings=bool(config.tie_word_embeddings),
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=pad_token_id,
        architectures=[_TARGET_CLASS[architecture]],
    )
    if architecture == CLASSIFIER:
        kwargs["id2label"] = {int(k): v for k, v in config.id2label.items()}
        kwargs["label2id"] = {k: int(v) for k, v in config.label2id.items()}
        if getattr(config, "problem_type", None):
            kwargs["problem_type"] = config.problem_type
    return GPT2Config(**kwargs)


def build_gpt2_model(gpt2_config, architecture: str, mapped: dict):
    """The transformers GPT-2 class with every parameter taken from ``mapped`` (created on the meta device, so
    nothing is initialised at random); a key missing, left over or of the wrong shape is an error."""
    cls = getattr(transformers, _TARGET_CLASS[architecture])
    with torch.device("meta"):
        model = cls(gpt2_config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tied = bool(gpt2_config.tie_word_embeddings) and "lm_head.weight" in expected
    if tied:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(mapped))
    extra = sorted(set(mapped) - set(expected))
    shapes = [f"{k} {tuple(mapped[k].shape)} vs {expected[k]}" for k in expected if k in mapped
              and tuple(mapped[k].shape) != expected[k]]
    if missing or extra or shapes:  # our tables and GPT-2's layout disagree: a bug, not the user's doing
        raise RuntimeError(f"GPT-2 export: missing {missing[:3]}, unexpected {extra[:3]}, shapes {shapes[:3]}")
    model.load_state_dict(mapped, strict=not tied, assign=True)
    if tied:
        model.lm_head.weight = model.transformer.wte.weight
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"GPT-2 export: tensors left unfilled: {', '.join(left[:5])}")
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# the source folder
# ----------------------------------------------------------------------------------------------------------------


def read_source(src) -> tuple[Path, dict, str]:
    """The source folder, its config.json and its architecture (causal LM or classifier), or a one-line error."""
    folder = Path(src).expanduser()
    if not folder.exists():
        raise UserError(
            f"--src {folder} does not exist: pass a gpt-scratch model folder (the --out of pretrain, "
            "finetune-classifier, finetune-instruct or convert --from)"
        )
    if not folder.is_dir():
        raise UserError(f"--src {folder} is a file: pass the model folder that holds config.json and model.safetensors")
    if not (folder / "config.json").is_file():
        raise UserError(f"--src {folder} is not a model folder: it has no config.json")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"--src {folder}/config.json is not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise UserError(f"--src {folder}/config.json does not hold a JSON object")
    kind = config.get("model_type")
    if kind != GPTScratchConfig.model_type:
        already = " (it already is a plain gpt2 folder)" if kind == "gpt2" else ""
        raise UserError(
            f"--src {folder} holds a '{kind}' model, not '{GPTScratchConfig.model_type}'{already}: --to hf-gpt2 "
            "exports gpt-scratch folders"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"--src {folder} is not a complete model folder: it has no weights (model.safetensors)")
    architectures = config.get("architectures") or [CAUSAL_LM]
    for architecture in (CLASSIFIER, CAUSAL_LM):
        if architecture in architectures:
            return folder, config, architecture
    raise UserError(
        f"--src {folder} holds {', '.join(map(str, architectures))}: --to hf-gpt2 exports a causal LM "
        f"({CAUSAL_LM}) or a classifier ({CLASSIFIER})"
    )


def load_source_model(folder: Path, architecture: str):
    """Our model from ``folder`` in its stored dtype; refuses a folder whose weights do not fill the model."""
    cls = getattr(modeling_gpt_scratch, architecture)
    try:
        model, info = cls.from_pretrained(str(folder), dtype="auto", output_loading_info=True)
    except (OSError, ValueError, RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--src {folder}: cannot load the model ({first})") from None
    problems = sorted(info.get("missing_keys") or []) + sorted(str(k) for k in info.get("mismatched_keys") or [])
    if problems:
        raise UserError(
            f"--src {folder}: its weights do not fill the model its config.json describes ({len(problems)} missing or "
            f"mismatched tensors, e.g. {problems[0]}): re-save the model"
        )
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        raise UserError(
            f"--src {folder}: its weights hold tensors the model does not use ({len(unexpected)}, e.g. "
            f"{unexpected[0]}): they would be lost in the export; re-save the model"
        )
    return model.eval()


def load_source_tokenizer(folder: Path):
    """The folder's tokenizer (standard classes only: the export must not need remote code), pad = end-of-text."""

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"--src {folder}: cannot load its tokenizer without remote code ({first}); a plain gpt2 folder needs a "
            "standard tokenizer"
        ) from None
    return set_pad_to_eos(tokenizer)






# ----------------------------------------------------------------------------------------------------------------
# checking the written folder
# ----------------------------------------------------------------------------------------------------------------


def probe_ids(config, pad_token_id) -> torch.Tensor:
    """Two rows of fixed pseudo-random ids (a quarter of the context, 8 to 64 tokens), avoiding the padding id so that
    GPT-2's classifier and ours pool the same (last) token."""
    length = max(1, min(config.max_position_embeddings, max(8, min(64, config.max_position_embeddings // 4))))
    g = torch.Generator().manual_seed(0)
    if pad_token_id is None or not 0 <= pad_token_id < config.vocab_size or config.vocab_size < 2:
        return torch.randint(0, config.vocab_size, (2, length), generator=g)
    ids = torch.randint(0, config.vocab_size - 1, (2, length), generator=g)
    return ids + (ids >= pad_token_id).long()


@torch.no_grad()
def _logits64(model, ids) -> torch.Tensor:
    """Logits in float64, one row at a time (a GPT-2 classifier without ``pad_token_id`` takes no batches)."""
    model = model.to(torch.float64)
    return torch.cat([model(input_ids=row[None], use_cache=False).logits for row in ids])


def check_export(tmp: Path, architecture: str, ids: torch.Tensor, expected: torch.Tensor, tokenizer, source) -> float:
    """Reload ``tmp`` as plain transformers would and compare it with the source; returns the largest logit gap."""
    config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    target = _TARGET_CLASS[architecture]
    if config.get("model_type") != "gpt2" or "auto_map" in config or config.get("architectures") != [target]:
        raise RuntimeError(f"GPT-2 export: config.json is not a plain gpt2 config: {sorted(config)}")
    if any(tmp.glob("*.py")):
        raise RuntimeError("GPT-2 export: the folder holds code files")
    cls = getattr(transformers, target)
    model, info = cls.from_pretrained(str(tmp), dtype=torch.float64, output_loading_info=True)
    bad = [k for name in ("missing_keys", "unexpected_keys", "mismatched_keys") for k in info.get(name) or []]
    if bad:
        raise RuntimeError(f"GPT-2 export: the written folder does not reload cleanly: {bad[:5]}")
    got = _logits64(model.eval(), ids)
    diff = float((got - expected).abs().max())
    if not diff <= TOLERANCE:
        raise UserError(
            f"the exported GPT-2 model's logits differ from those of {source} by {diff:.3g} (more than "
            f"{TOLERANCE:g}) on a probe input: nothing was written"
        )
    if tokenizer is not None:
        reloaded = AutoTokenizer.from_pretrained(str(tmp), trust_remote_code=False)
        for text in _PROBE_TEXTS:
            ours, theirs = tokenizer(text)["input_ids"], reloaded(text)["input_ids"]
            if ours != theirs:
                raise UserError(
                    f"the exported tokenizer ({type(reloaded).__name__}) encodes {text!r} as {theirs[:8]}..., the "
                    f"source's as {ours[:8]}...: nothing was written"
                )
    return diff


# ----------------------------------------------------------------------------------------------------------------
# the export
# ----------------------------------------------------------------------------------------------------------------


def export_hf_gpt2(src, out_dir, overwrite: bool = False, fold_score_bias: bool = False) -> ExportResult:
    """Export the GPTScratch folder ``src`` (causal LM or classifier) to a plain transformers gpt2 folder ``out_dir``.

    The folder is written atomically and only after the reloaded export matched the source on a probe input.
    """

    out = check_out_dir(out_dir, overwrite, src=src)
    folder, _, architecture = read_source(src)
    tokenizer = load_source_tokenizer(folder)
    model = load_source_model(folder, architecture)
    config = model.config
    source = str(folder)

    pad = config.pad_token_id
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id
    if pad is None:
        pad = config.eos_token_id
    caveats = []
    if tokenizer is None:
        caveats.append(f"{source} has no tokenizer, so the export has none")
    elif len(tokenizer) > config.vocab_size:
        raise UserError(
            f"--src {folder}: its tokenizer has {len(tokenizer)} tokens but the model only {config.vocab_size} "
            "embeddings: the model and its tokenizer do not belong together"
        )

    state = model.state_dict()
    mapped, unknown = map_to_hf_gpt2_state_dict(state, config)
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise UserError(f"--src {folder}: tensors with no place in GPT-2: {', '.join(unknown[:3])}{more}")
    if architecture == CLASSIFIER:
        shift = score_bias_plan(state, fold_score_bias, source)
        if shift is not None:
            beta = mapped["transformer.ln_f.bias"]
            mapped["transformer.ln_f.bias"] = (beta.double() + shift).to(beta.dtype)
            caveats.append(
                "score bias folded into ln_f.bias (same logits; the final hidden states are shifted by a constant)"
            )
        if pad is None:
            caveats.append(
                "no padding token anywhere: GPT2ForSequenceClassification scores the last token of each row and takes "
                "no batches of more than one row"
            )
        else:
            caveats.append(
                f"GPT2ForSequenceClassification pools the last token whose id is not pad_token_id={pad} and ignores "
                "the attention mask (gpt-scratch follows the mask): the same unless a text ends in the padding token"
            )

    gpt2_config = gpt2_config_from_ours(config, architecture, pad)
    gpt2 = build_gpt2_model(gpt2_config, architecture, mapped)
    if architecture == CAUSAL_LM:
        generation = None
        if (folder / "generation_config.json").is_file():
            try:
                generation = GenerationConfig.from_pretrained(str(folder))
            except (OSError, ValueError):
                generation = None
        if generation is None:
            generation = make_generation_config(config, pad_token_id=pad)
        if generation.pad_token_id is None:
            generation.pad_token_id = pad
        gpt2.generation_config = generation

    ids = probe_ids(config, pad)
    with atomic_dir(out, overwrite=True) as tmp:
        gpt2.save_pretrained(str(tmp), safe_serialization=True)
        del gpt2, mapped, state
        if tokenizer is not None:
            tokenizer.model_max_length = config.max_position_embeddings  # truncation=True cuts at the context
            save_tokenizer_plain(tokenizer, tmp)
        expected = _logits64(model, ids)
        del model
        diff = check_export(tmp, architecture, ids, expected, tokenizer, source)
    return ExportResult(out=out, architecture=_TARGET_CLASS[architecture], max_abs_diff=diff, caveats=caveats)
