"""A GPT-2-style language model, written from scratch and native to Hugging Face ``transformers``.

Read top to bottom, in the order the model is learned:

1. ``MultiHeadAttention`` -- causal self-attention over several heads (Vaswani et al., 2017, "Attention Is All You
   Need", section 3.2), through PyTorch's fused ``scaled_dot_product_attention``, with a key/value cache for decoding.
2. ``FeedForward``       -- the position-wise MLP: Linear -> GELU (tanh approximation, Hendrycks & Gimpel, 2016) -> Linear.
3. ``TransformerBlock``  -- pre-LayerNorm residual block, as in GPT-2 (Radford et al., 2019, section 2.3).
4. ``GPTScratchModel``   -- token + learned position embeddings, the blocks, a final LayerNorm.
5. ``GPTScratchForCausalLM`` and ``GPTScratchForSequenceClassification`` -- the two heads.

This file is uploaded to the Hub as the model's remote code: it imports only torch, transformers and its sibling
``configuration_gpt_scratch``.
"""

import contextlib
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
from transformers.generation import GenerationMode
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

from .configuration_gpt_scratch import GPTScratchConfig


def project_few_rows(linear: nn.Linear, x, contiguous: bool = True):
    """``linear(x)``; for a few rows (a decoding step) on CPU in float32, computed in the fastest form measured.

    Every projection of the model goes through here; the fast forms are taken without gradients (inference).  Same
    product, another kernel: measured with torch 2.13 (MKL) on 2-core AMD EPYC machines, ``F.linear`` with 1 to 64
    rows takes MKL's small-M path, ``weight @ x.T`` a gemm with few columns that streams the weight through both cores
    (a 50257 x 384 output head: 6.4 against 11.7 ms for one row).  One row is a single-threaded gemv, so it is
    computed twice (two columns make a gemm).  Inside :func:`packed_for_decoding` (a batched ``generate``) several
    rows go through oneDNN with the weight reordered once into its blocked layout instead (3.6 against 4.8 ms for that
    head at 8 rows).  Each result equals ``F.linear``'s to float rounding.  Modules with hooks, a replaced forward or
    another type (adapters, quantised layers, offloading) are called as usual, and so is every module on other devices
    and dtypes.

    ``contiguous=False`` may return a transposed view instead of copying the result into row-major order: for the
    output head at batch 8 the copy costs twice what the argmax or top-k that reads it does.
    """
    # This runs 4 times a layer at every decoding step: plain attribute reads and methods, no tensor indexing
    # (``t[:, :n]`` costs more Python time than a small product here).
    width = x.shape[-1]
    rows = x.numel() // width if width else 0
    if not 0 < rows <= FEW_ROWS or torch.is_grad_enabled() or not takes_fast_forms(linear, x):
        return linear(x)
    weight = linear.weight
    flat = x.reshape(rows, width)
    packed = linear.__dict__.get(PACKED) if rows > 1 else None
    if packed is not None and packed[1] is weight and packed[2] == weight._version:  # never a stale copy
        out = torch.ops.mkldnn._linear_pointwise(flat, packed[0], linear.bias, "none", [], "")
        return out.view(*x.shape[:-1], weight.shape[0])
    columns = torch.cat((flat, flat)).t() if rows == 1 else flat.t()
    bias = linear.bias
    out = torch.mm(weight, columns) if bias is None else torch.addmm(bias.unsqueeze(1), weight, columns)
    out = out.narrow(1, 0, rows).t()
    return out.contiguous().view(*x.shape[:-1], weight.shape[0]) if contiguous else out.reshape(*x.shape[:-1], -1)


def takes_fast_forms(linear, x=None) -> bool:
    """Whether :func:`project_few_rows` may compute ``linear`` its own way: a plain ``nn.Linear`` on CPU in float32,
    with no hooks and no replaced forward."""
    weight = linear.weight
    return (
        type(linear) is nn.Linear
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and (x is None or x.dtype == torch.float32)
        and not linear._forward_hooks
        and not linear._forward_pre_hooks
        and "_hf_hook" not in linear.__dict__  # Accelerate's offloading and device hooks
        and "forward" not in linear.__dict__
    )


FEW_ROWS = 64
"""Up to this many rows :func:`project_few_rows` uses its own forms; beyond, transposing the result back costs
about what it saves."""

PACKED = "_packed_for_decoding"
"""Where :func:`packed_for_decoding` keeps a module's reordered weight, with the weight and its version at the time:
a weight replaced or changed in place since is computed from, not the copy."""
_PACKING_USERS = "_packed_for_decoding_users"
_PACKING_LOCK = threading.Lock()


def _packed_product_is_linear(linear, reordered, rows: int) -> bool:
    probe = torch.linspace(-1, 1, rows * linear.in_features).view(rows, linear.in_features)
    expected = F.linear(probe, linear.weight, linear.bias)
    got = torch.ops.mkldnn._linear_pointwise(probe, reordered, linear.bias, "none", [], "")
    scale = float(expected.abs().max()) or 1.0
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


@contextlib.contextmanager
def packed_for_decoding(model, batch_size: int):
    """Within this block, few-row projections of ``model``'s CPU float32 ``nn.Linear`` layers use a copy of each
    weight reordered once for oneDNN (for ``batch_size`` rows), which decodes a batch faster than any MKL call on the
    plain weight.  The copies cost the projections' weight memory once more, and are dropped when the outermost block
    ends (nested and concurrent blocks share them).  Without oneDNN, or for ``batch_size`` 1 (where the two-column
    gemm is faster), nothing changes."""
    if batch_size < 2:
        yield
        return
    with _PACKING_LOCK, torch.no_grad():
        users = model.__dict__.get(_PACKING_USERS, 0)
        model.__dict__[_PACKING_USERS] = users + 1
        linears = [m for m in model.modules() if isinstance(m, nn.Linear) and takes_fast_forms(m)] if users == 0 else []
        if linears:
            try:
                reordered = [torch.ops.mkldnn._reorder_linear_weight(m.weight, batch_size) for m in linears]
                # the ops are private: on the first layer, the packed product must be the plain one
                usable = _packed_product_is_linear(linears[0], reordered[0], batch_size)
            except (AttributeError, RuntimeError):  # a torch built without oneDNN
                usable = False
            if usable:
                for module, copy in zip(linears, reordered):
                    module.__dict__[PACKED] = (copy, module.weight, module.weight._version)
    try:
        yield
    finally:
        with _PACKING_LOCK:
            model.__dict__[_PACKING_USERS] -= 1
            if model.__dict__[_PACKING_USERS] == 0:
                del model.__dict__[_PACKING_USERS]
                for module in model.modules():
                    module.__dict__.pop(PACKED, None)


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention.

    One fused projection produces queries, keys and values for all heads; each head attends over its own
    ``head_dim``-wide slice; the heads are concatenated and mixed by ``out_proj``.
    """

    def __init__(self, config: GPTScratchConfig, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.layer_idx = layer_idx
        self.dropout = config.attention_dropout
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj.is_residual_projection = True

    def forward(self, x, attn_mask=None, past_key_values=None):
        batch, seq_len, width = x.shape
        # (batch, seq, 3 * width) -> three tensors of (batch, heads, seq, head_dim)
        qkv = project_few_rows(self.qkv_proj, x).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        queries, keys, values = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if past_key_values is not None:
            keys, values = past_key_values.update(keys, values, self.layer_idx)
        # With no explicit mask the model guarantees that either this is a plain causal pass over the whole
        # sequence, or a single new token that may see every cached one.
        context = F.scaled_dot_product_attention(
            queries,
            keys,
            values,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None and seq_len > 1,
        )
        context = context.transpose(1, 2).reshape(batch, seq_len, width)
        return project_few_rows(self.out_proj, context)


class FeedForward(nn.Module):
    """Position-wise MLP, widening to ``intermediate_size`` and back."""

    def __init__(self, config: GPTScratchConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.fc_out.is_residual_projection = True

    def forward(self, x):
        return project_few_rows(self.fc_out, F.gelu(project_few_rows(self.fc_in, x), approximate="tanh"))


class TransformerBlock(GradientCheckpointingLayer):
    """x + Attention(LayerNorm(x)), then x + FeedForward(LayerNorm(x)): normalisation before each branch."""

    def __init__(self, config: GPTScratchConfig, layer_idx: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.att = MultiHeadAttention(config, layer_idx)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.ff = FeedForward(config)
        self.drop_resid = nn.Dropout(config.hidden_dropout)

    def forward(self, x, attn_mask=None, past_key_values=None):
        x = x + self.drop_resid(self.att(self.norm1(x), attn_mask, past_key_values))
        x = x + self.drop_resid(self.ff(self.norm2(x)))
        return x


class GPTScratchPreTrainedModel(PreTrainedModel):
    """Weight initialisation, saving and loading shared by the model and its heads."""

    config_class = GPTScratchConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]
    _supports_sdpa = True
    _can_compile_fullgraph = True

    def _init_weights(self, module):
        # GPT-2's scheme: N(0, 0.02) everywhere, and the two projections that write into the residual stream scaled
        # by 1/sqrt(2 * layers), since each block adds two branches to it (Radford et al., 2019, section 2.3).
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading_info) when asked for
        align_cpu_parameters(model)
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        # One folder opens through every Auto class, whichever head was saved.
        self.config.auto_map = {
            "AutoConfig": "configuration_gpt_scratch.GPTScratchConfig",
            "AutoModel": "modeling_gpt_scratch.GPTScratchModel",
            "AutoModelForCausalLM": "modeling_gpt_scratch.GPTScratchForCausalLM",
            "AutoModelForSequenceClassification": "modeling_gpt_scratch.GPTScratchForSequenceClassification",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


def align_cpu_parameters(model, alignment: int = 64) -> None:
    """Copy CPU parameters that do not start on an ``alignment``-byte boundary into fresh (aligned) memory.

    Weights loaded from safetensors are views into the file's mapping, 16 bytes past a 64-byte boundary, and BLAS
    picks its kernels (and so the order of its sums) by alignment too: realigned, a loaded model computes bit for bit
    what the saved one did.  Tied parameters stay tied (the shared ``Parameter`` gets the new storage)."""
    with torch.no_grad():
        for param in model.parameters():
            if param.device.type == "cpu" and param.data_ptr() % alignment:
                param.data = param.data.clone()


CACHE_FIELD = "cache" if "cache" in getattr(BaseModelOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"
"""The output field that holds the cache (``past_key_values`` up to transformers 5.23, ``cache`` from 5.24; both
versions read ``output.past_key_values``)."""


def pick_cache(past_key_values, cache):
    """The key/value cache, whichever name it came by: transformers up to 5.23 pass ``past_key_values``, 5.24 and
    later ``cache``."""
    if cache is None:
        return past_key_values
    if past_key_values is not None and past_key_values is not cache:
        raise ValueError("pass the key/value cache once, as cache or as past_key_values, not both")
    return cache


def build_attention_mask(attention_mask, seq_len: int, past_len: int, device):
    """The mask handed to SDPA, or ``None`` when the fused causal path (or no mask at all) is exact.

    ``attention_mask`` is the usual (batch, past + new) tensor of 1 for real tokens and 0 for padding.  The result is
    a boolean (batch, 1, new, past + new) mask: query ``i`` (absolute position ``past_len + i``) sees key ``j`` when
    ``j <= past_len + i`` and key ``j`` is not padding.  Every query also sees itself, so a padding row (left padding)
    never has an empty softmax.
    """
    no_padding = attention_mask is None or bool(attention_mask.all())
    if no_padding and (past_len == 0 or seq_len == 1):
        return None
    kv_len = past_len + seq_len
    query_pos = torch.arange(past_len, kv_len, device=device)[:, None]
    key_pos = torch.arange(kv_len, device=device)[None, :]
    mask = (key_pos <= query_pos)[None, None]
    if not no_padding:
        mask = mask & attention_mask[:, None, None, -kv_len:].bool()
        mask = mask | (key_pos == query_pos)[None, None]
    return mask


class KVBuffer:
    """A key/value cache preallocated for a whole generation: one (batch, heads, max_length, head_dim) buffer per
    layer, filled in place.

    It offers the two methods the model uses -- ``update(keys, values, layer_idx)``, which stores the new entries and
    returns every key and value so far, and ``get_seq_length()`` -- so attention works with it exactly as with
    ``DynamicCache``.  Unlike ``DynamicCache``, which concatenates (copies the whole cache) at every step, a step here
    writes only the new entries; the views it returns cover the filled part of the buffer.
    """

    def __init__(self, num_layers: int, max_length: int):
        self.max_length = max_length
        self.keys = [None] * num_layers
        self.values = [None] * num_layers
        self.lengths = [0] * num_layers

    def update(self, keys, values, layer_idx: int):
        start = self.lengths[layer_idx]
        end = start + keys.shape[-2]
        if end > self.max_length:
            raise ValueError(f"KVBuffer holds {self.max_length} positions; this step would fill {end}")
        if self.keys[layer_idx] is None:  # allocated on first use, in the dtype and device of the model
            shape = (*keys.shape[:-2], self.max_length, keys.shape[-1])
            self.keys[layer_idx] = keys.new_empty(shape)
            self.values[layer_idx] = values.new_empty(shape)
        key_buffer, value_buffer = self.keys[layer_idx], self.values[layer_idx]
        key_buffer.narrow(-2, start, end - start).copy_(keys)
        value_buffer.narrow(-2, start, end - start).copy_(values)
        self.lengths[layer_idx] = end
        return key_buffer.narrow(-2, 0, end), value_buffer.narrow(-2, 0, end)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.max_length


def sample_next_token(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Draw one token per row of ``logits`` (batch, vocab) with ``torch.multinomial`` (the global generator).

    The distribution is GenerationMixin's: logits divided by ``temperature``, then only the ``top_k`` largest kept
    (0: all), then only the smallest set of the most likely tokens whose probability reaches ``top_p`` (nucleus
    sampling, Holtzman et al., 2020).  With top-k the nucleus is found among the k candidates alone, so no step sorts
    the whole vocabulary; ``top_k=1`` is greedy decoding.
    """
    if temperature != 1.0:
        logits = logits / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        values, indices = torch.topk(logits, top_k)  # sorted, largest first
    elif top_p < 1.0:
        values, indices = torch.sort(logits, descending=True)
    else:
        return torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(-1)
    if top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the more likely candidates; 0 for the first
        values = values.masked_fill(mass_before >= top_p, float("-inf"))
    choice = torch.multinomial(torch.softmax(values, dim=-1), 1)
    return indices.gather(-1, choice).squeeze(-1)


# Generation settings the lean loop of GPTScratchForCausalLM.generate leaves out: each must have its neutral value,
# or the call goes to GenerationMixin.generate.
_LEAN_NEUTRAL_SETTINGS = {
    **{name: (lambda v: v is None) for name in (
        "min_new_tokens", "max_time", "stop_strings", "bad_words_ids", "force_words_ids", "constraints",
        "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty", "suppress_tokens",
        "begin_suppress_tokens", "sequence_bias", "guidance_scale", "watermarking_config", "cache_implementation",
        "min_p", "top_h", "prompt_lookup_num_tokens", "assistant_early_exit", "dola_layers", "penalty_alpha",
        "prefill_chunk_size",
    )},
    **{name: (lambda v: not v) for name in (
        "min_length", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "remove_invalid_values",
        "token_healing", "output_attentions", "output_hidden_states", "output_scores", "output_logits",
        "return_dict_in_generate", "renormalize_logits", "use_mtp", "is_assistant", "epsilon_cutoff", "eta_cutoff",
    )},
    **{name: (lambda v: v is None or v == 1) for name in (
        "repetition_penalty", "encoder_repetition_penalty", "typical_p", "num_return_sequences", "num_beams",
        "num_beam_groups",
    )},
}
# Arguments of GenerationMixin.generate that only it implements.
_MIXIN_ONLY_ARGUMENTS = (
    "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
    "negative_prompt_ids", "negative_prompt_attention_mask", "custom_generate", "assistant_tokenizer", "tokenizer",
    "past_key_values", "cache", "inputs_embeds", "position_ids",
)


class GPTScratchModel(GPTScratchPreTrainedModel):
    """The transformer without a head: returns the final normalised hidden states."""

    def __init__(self, config: GPTScratchConfig):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pos_emb = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop_emb = nn.Dropout(config.hidden_dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_emb

    def set_input_embeddings(self, value):
        self.tok_emb = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        cache=None,
        **kwargs,
    ):
        """``cache`` is the name transformers 5.24 and later give ``past_key_values``; either may be used."""
        past_key_values = pick_cache(past_key_values, cache)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.tok_emb(input_ids)
        seq_len = inputs_embeds.shape[1]
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training:
            # a block recomputed in backward would append its keys and values to the cache a second time
            use_cache, past_key_values = False, None
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        limit = self.config.max_position_embeddings
        if past_len + seq_len > limit:
            raise ValueError(
                f"the input reaches position {past_len + seq_len}, but this model has learned only {limit} positions "
                f"(max_position_embeddings={limit}): shorten the input to at most {limit} tokens in all, "
                "prompt and generated tokens together"
            )
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq_len, device=inputs_embeds.device)[None]
        x = self.drop_emb(inputs_embeds + self.pos_emb(position_ids))
        attn_mask = build_attention_mask(attention_mask, seq_len, past_len, x.device)

        all_hidden = [] if output_hidden_states else None
        for block in self.blocks:
            if all_hidden is not None:
                all_hidden.append(x)
            x = block(x, attn_mask, past_key_values=past_key_values)
        x = self.final_norm(x)
        if all_hidden is not None:
            all_hidden.append(x)

        output = BaseModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            **{CACHE_FIELD: past_key_values},
        )
        return output if return_dict is not False else output.to_tuple()


def causal_lm_loss(logits, labels, num_items_in_batch=None, ignore_index=-100):
    """Next-token cross-entropy: position ``t`` predicts ``labels[t + 1]``; ``-100`` labels are ignored.

    With ``num_items_in_batch`` (given by ``transformers.Trainer`` under gradient accumulation) the sum is divided by
    that count instead of averaged here, so accumulated micro-batches weigh every token equally.
    """
    # The labels are shifted, not the logits: the logits stay one (batch * seq, vocab) view of the largest tensor of a
    # training step (slicing them would copy it, and its gradient), and the last position, which has no next token,
    # gets ignore_index.  .float() is no copy for float32.
    logits = logits.float()
    targets = F.pad(labels[:, 1:], (0, 1), value=ignore_index).to(logits.device)
    return token_cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index, num_items_in_batch
    )


def token_cross_entropy(logits, targets, ignore_index=-100, num_items_in_batch=None):
    """``F.cross_entropy`` of (tokens, vocab) logits: the mean over targets that are not ``ignore_index``, or with
    ``num_items_in_batch`` their sum divided by it.  Equal to ``F.cross_entropy`` to float rounding.

    On CPU it runs as :class:`ChunkedCrossEntropy`, which never allocates a tensor the size of the logits except the
    gradient itself.  Measured on 2048 x 50257 logits (batch 8 x 256, GPT-2's vocabulary) on a 2-core AMD EPYC: 310 ms
    for forward and backward against 570 ms for ``F.cross_entropy``, whose log-probabilities, zero-filled gradient and
    log-softmax gradient are three fresh 412 MB tensors (each paid again in page faults).
    """
    if logits.device.type != "cpu" or torch.compiler.is_compiling():
        reduction = "mean" if num_items_in_batch is None else "sum"
        loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    else:
        loss = ChunkedCrossEntropy.apply(logits, targets, ignore_index)
        if num_items_in_batch is None:
            return loss / (targets != ignore_index).sum()
    return loss if num_items_in_batch is None else loss / num_items_in_batch


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (tokens, vocab) float logits against targets (``ignore_index`` skipped), a few rows
    at a time.

    Forward keeps only each row's log-sum-exp; backward writes ``softmax - one_hot`` straight into the gradient, row
    chunk by row chunk (each chunk's temporaries stay small and in cache): ``exp(logits - lse) * g``, then ``-g`` at
    the target.
    """

    CHUNK_BYTES = 1 << 22  # about 4 MB of logits per chunk

    @staticmethod
    def _chunk(logits):
        return max(1, ChunkedCrossEntropy.CHUNK_BYTES // max(1, logits.shape[-1] * logits.element_size()))

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        valid = targets != ignore_index
        safe = targets.masked_fill(~valid, 0)
        lse = logits.new_empty(logits.shape[0])
        step = ChunkedCrossEntropy._chunk(logits)
        for start in range(0, logits.shape[0], step):
            torch.logsumexp(logits[start : start + step], dim=-1, out=lse[start : start + step])
        picked = logits.gather(-1, safe[:, None]).squeeze(-1)
        ctx.save_for_backward(logits, safe, valid, lse)
        return ((lse - picked) * valid).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, safe, valid, lse = ctx.saved_tensors
        scale = grad * valid.to(logits.dtype)
        out = torch.empty_like(logits)
        step = ChunkedCrossEntropy._chunk(logits)
        for start in range(0, logits.shape[0], step):
            rows = slice(start, start + step)
            chunk = out[rows]
            torch.sub(logits[rows], lse[rows, None], out=chunk)
            chunk.exp_()
            chunk.mul_(scale[rows, None])
        out.scatter_add_(-1, safe[:, None], -scale[:, None])
        return out, None, None


class GPTScratchForCausalLM(GPTScratchPreTrainedModel, GenerationMixin):
    """The language model: hidden states -> next-token logits over the vocabulary."""

    _tied_weights_keys = {"lm_head.weight": "transformer.tok_emb.weight"}

    def __init__(self, config: GPTScratchConfig):
        super().__init__(config)
        self.transformer = GPTScratchModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.tok_emb

    def set_input_embeddings(self, value):
        self.transformer.tok_emb = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep=0,
        cache=None,
        **kwargs,
    ):
        """``labels`` are the input ids themselves (or -100 where ignored): they are shifted here.  ``cache`` is
        ``past_key_values`` under its transformers 5.24 name."""
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=pick_cache(past_key_values, cache),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            if logits_to_keep > 0:
                hidden = hidden[:, -logits_to_keep:]
        else:
            hidden = hidden[:, logits_to_keep]
        logits = project_few_rows(self.lm_head, hidden)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, kwargs.get("num_items_in_batch"))
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, **{CACHE_FIELD: out.past_key_values}
        )
        return output if return_dict is not False else output.to_tuple()

    # -- generation ------------------------------------------------------------------------------------------------
    # ``generate`` runs the common cases -- greedy decoding and sampling with temperature / top-k / top-p, end-of-text
    # stop, left padding, a streamer -- in a short loop of its own: a preallocated ``KVBuffer``, masks and positions
    # computed once, and no logits processors, stopping criteria or output objects per step.  Its tokens equal
    # ``GenerationMixin.generate``'s for greedy decoding.  Anything else (beam search, repetition penalty, logits
    # processors, stopping criteria, ``return_dict_in_generate``, ``use_cache=False``, ...) goes to
    # ``GenerationMixin.generate`` unchanged.  On CPU, a batch of several prompts decodes on weights reordered for
    # oneDNN for the length of the call, whichever loop runs (``packed_for_decoding``).

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """``GenerationMixin.generate``, with a faster loop for greedy decoding and plain sampling (see above)."""
        plan = self._lean_generation_plan(inputs, generation_config, kwargs)
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        batch = prompt.shape[0] if torch.is_tensor(prompt) and prompt.dim() == 2 and self.device.type == "cpu" else 1
        with packed_for_decoding(self, batch):  # both loops compute the same bits: their greedy tokens agree
            if plan is None:
                return super().generate(inputs, generation_config, **kwargs)
            with torch.no_grad():
                return self._lean_generate(**plan)

    def _lean_generation_plan(self, inputs, generation_config, kwargs):
        """The arguments of ``_lean_generate`` for this call, or ``None`` when ``GenerationMixin`` must handle it."""
        kwargs = dict(kwargs)
        streamer = kwargs.pop("streamer", None)
        if self.training or any(kwargs.pop(name, None) is not None for name in _MIXIN_ONLY_ARGUMENTS):
            return None
        try:  # the same resolution as GenerationMixin: call > generation_config > model's > library defaults
            config, model_kwargs = self._prepare_generation_config(generation_config, **kwargs)
        except Exception:  # an invalid request: let GenerationMixin raise its own error
            return None
        input_ids = model_kwargs.pop("input_ids", None)
        attention_mask = model_kwargs.pop("attention_mask", None)
        if inputs is not None:
            if input_ids is not None:
                return None
            input_ids = inputs
        if any(value is not None for value in model_kwargs.values()):
            return None  # position_ids, inputs_embeds, past_key_values, output_* ...
        if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            return None
        if input_ids.dtype not in (torch.long, torch.int) or input_ids.device != self.device:
            return None
        if attention_mask is not None and (
            not torch.is_tensor(attention_mask) or attention_mask.shape != input_ids.shape
        ):
            return None
        mode = config.get_generation_mode()
        if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE) or config.use_cache is False:
            return None
        if any(not neutral(getattr(config, name, None)) for name, neutral in _LEAN_NEUTRAL_SETTINGS.items()):
            return None
        max_new = config.max_new_tokens
        if max_new is None or max_new < 1 or input_ids.shape[1] + max_new > self.config.max_position_embeddings:
            return None  # default max_length rules, or a request that runs out of positions: GenerationMixin's way
        eos = config.eos_token_id
        eos = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
        pad = config.pad_token_id
        if pad is None and eos:
            pad = eos[0]
        sampling = None
        if mode == GenerationMode.SAMPLE:
            temperature = 1.0 if config.temperature is None else float(config.temperature)
            top_k = 0 if config.top_k is None else int(config.top_k)
            top_p = 1.0 if config.top_p is None else float(config.top_p)
            if not (temperature > 0 and top_k >= 0 and 0 < top_p <= 1):
                return None
            sampling = (temperature, top_k, top_p)
        return dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=int(max_new),
            sampling=sampling,
            eos=eos,
            pad=None if pad is None else int(pad),
            streamer=streamer,
        )

    def _lean_step(self, input_ids, position_ids, attn_mask, cache):
        """One forward pass that appends to ``cache``: the next-token logits of the last position in float32,
        computed exactly as ``forward(..., logits_to_keep=1)`` computes them (possibly as a transposed view)."""
        body = self.transformer
        x = body.drop_emb(body.tok_emb(input_ids) + body.pos_emb(position_ids))
        for block in body.blocks:
            x = block(x, attn_mask, cache)
        hidden = body.final_norm(x)
        return project_few_rows(self.lm_head, hidden[:, -1:], contiguous=False)[:, -1].float()

    def _lean_generate(self, input_ids, attention_mask, max_new_tokens, sampling, eos, pad, streamer):
        batch, prompt_len = input_ids.shape
        device = input_ids.device
        total = prompt_len + max_new_tokens
        if attention_mask is None and pad is not None and pad not in eos and bool((input_ids == pad).any()):
            attention_mask = input_ids.ne(pad).long()  # GenerationMixin infers the mask from padding this way
        # Known once for the whole call: is there padding?  Without it no step needs a mask.
        seen = prefill_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.to(device=device, dtype=torch.long)
            position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            prefill_mask = build_attention_mask(mask, prompt_len, 0, device)
            # keys each new token may see: every real prompt token and every generated one (padding never)
            seen = torch.ones(batch, 1, 1, total, dtype=torch.bool, device=device)
            seen[:, 0, 0, :prompt_len] = mask.bool()
        else:
            position_ids = torch.arange(prompt_len, device=device)[None]
        decode_positions = position_ids[:, -1:] + torch.arange(1, max_new_tokens + 1, device=device)
        # top_k=1 keeps only the most likely token: greedy decoding
        greedy = sampling is None or sampling[1] == 1

        cache = KVBuffer(self.config.num_hidden_layers, total)
        out = torch.empty(batch, total, dtype=torch.long, device=device)  # int64, as GenerationMixin returns
        out[:, :prompt_len] = input_ids
        if streamer is not None:
            streamer.put(input_ids.cpu())
        eos_ids = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
        unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        logits = self._lean_step(input_ids, position_ids, prefill_mask, cache)
        length = total
        for step in range(max_new_tokens):
            tokens = logits.argmax(-1) if greedy else sample_next_token(logits, *sampling)
            if eos_ids is not None:  # finished rows get padding, as in GenerationMixin
                tokens = torch.where(unfinished, tokens, pad)
            at = prompt_len + step
            out[:, at] = tokens
            if streamer is not None:
                streamer.put(tokens.cpu())
            if eos_ids is not None:
                unfinished &= ~torch.isin(tokens, eos_ids)
                if not bool(unfinished.any()):
                    length = at + 1
                    break
            if step + 1 < max_new_tokens:
                mask = seen[..., : at + 1] if seen is not None else None
                logits = self._lean_step(tokens[:, None], decode_positions[:, step : step + 1], mask, cache)
        if streamer is not None:
            streamer.end()
        return out[:, :length].contiguous()


def last_token_index(input_ids, attention_mask, pad_token_id):
    """Index of the last real token of each row, for right or left padding.

    The attention mask decides when given; otherwise the last token that is not ``pad_token_id``; otherwise the last.
    """
    if attention_mask is not None:
        real = attention_mask.bool()
    elif pad_token_id is not None and input_ids is not None:
        real = input_ids != pad_token_id
    else:
        return None
    positions = torch.arange(real.shape[-1], device=real.device)
    # rightmost real position; a row with none (all padding) falls back to its last position
    last = torch.where(real, positions, -1).amax(-1)
    return torch.where(last >= 0, last, real.shape[-1] - 1)


class GPTScratchForSequenceClassification(GPTScratchPreTrainedModel):
    """A classifier: the hidden state of the last real token, through a linear ``score`` head to ``num_labels``."""

    def __init__(self, config: GPTScratchConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPTScratchModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.tok_emb

    def set_input_embeddings(self, value):
        self.transformer.tok_emb = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        cache=None,
        **kwargs,
    ):
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=pick_cache(past_key_values, cache),
            inputs_embeds=inputs_embeds,
            use_cache=False if use_cache is None else use_cache,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        index = last_token_index(input_ids, attention_mask, self.config.pad_token_id)
        if index is None:
            pooled = hidden[:, -1]
        else:
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), index.to(hidden.device)]
        logits = self.score(pooled)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.view(-1))
        output = SequenceClassifierOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, **{CACHE_FIELD: out.past_key_values}
        )
        return output if return_dict is not False else output.to_tuple()


# Saving any of these classes copies this file and the configuration file next to the weights and writes
# `auto_map`, so the folder loads with `trust_remote_code=True` where this package is not installed.
GPTScratchConfig.register_for_auto_class()
GPTScratchModel.register_for_auto_class("AutoModel")
GPTScratchForCausalLM.register_for_auto_class("AutoModelForCausalLM")
GPTScratchForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "MultiHeadAttention",
    "FeedForward",
    "TransformerBlock",
    "GPTScratchPreTrainedModel",
    "GPTScratchModel",
    "GPTScratchForCausalLM",
    "GPTScratchForSequenceClassification",
]
