"""A GPT-2-style language model, written from scratch and native to Hugging Face ``transformers``.

Read top to bottom, in the order the model is learned:

1. ``MultiHeadAttention`` -- causal self-attention over several heads (Vaswani et al., 2017, "Attention Is All You
   Need", section 3.2), through transformers' attention interface, with a key/value cache for decoding.
2. ``FeedForward``       -- the position-wise MLP: Linear -> GELU (tanh form, Hendrycks & Gimpel, 2016) -> Linear.
3. ``TransformerBlock``  -- pre-LayerNorm residual block, as in GPT-2 (Radford et al., 2019, section 2.3).
4. ``GPTScratchModel``   -- token + learned position embeddings, the blocks, a final LayerNorm.
5. ``GPTScratchForCausalLM`` and ``GPTScratchForSequenceClassification`` -- the two heads.

This file is the model's remote code on the Hub: it runs on the downloader's transformers (4.57 to the latest 5.x),
imports only torch, transformers and ``configuration_gpt_scratch``, and keeps the contracts of built-in models
(attention interface, mask builder, cache classes, ``GenerationMixin``, ``position_ids``).  Speed lives in pipelines/.
"""

import inspect
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_gpt_scratch import GPTScratchConfig

try:  # transformers 5.x: initialisers that leave weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # transformers 4.x
    from torch.nn import init

logger = logging.get_logger(__name__)

# transformers 5.24 renamed the cache argument and output field from ``past_key_values`` to ``cache``.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
_MASK_ARGUMENTS = inspect.signature(create_causal_mask).parameters  # its argument names changed across versions


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """softmax(Q K^T * scaling + mask) V, written out (the book's chapter 3); also returns the attention weights.

    ``attention_mask`` is boolean (True = may attend) or additive (0 or a large negative number), broadcast to
    (batch, heads, queries, keys); ``None`` for several queries means causal, as SDPA's shortcut."""
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is None and query.shape[-2] > 1:  # the last query sees every key
        attention_mask = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device)
        attention_mask = attention_mask.tril(key.shape[-2] - query.shape[-2])
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention.

    One fused projection produces queries, keys and values for all heads; each head attends over its own
    ``head_dim``-wide slice; the heads are concatenated and mixed by ``out_proj``.  The product itself is whichever
    implementation the config names (``config._attn_implementation``): ``"eager"`` (above), ``"sdpa"`` (PyTorch's
    fused kernel), ``"flash_attention_2"`` on GPUs, or any function registered with transformers' attention interface.
    """

    def __init__(self, config: GPTScratchConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.layer_idx = layer_idx
        self.is_causal = True
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj.is_residual_projection = True

    def forward(self, x, attention_mask=None, past_key_values=None, output_attentions=False, **kwargs):
        batch, seq_len, width = x.shape
        # (batch, seq, 3 * width) -> three tensors of (batch, heads, seq, head_dim)
        qkv = self.qkv_proj(x).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        queries, keys, values = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if past_key_values is not None:
            keys, values = past_key_values.update(keys, values, self.layer_idx)

        attention_interface = eager_attention_forward
        if self.config._attn_implementation != "eager":
            if output_attentions:  # only the eager product has weights to return
                logger.warning_once("output_attentions=True needs eager attention: computing it eagerly")
            elif hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # 5.x (set_attn_implementation looks for it)
                implementation = self.config._attn_implementation
                attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
            else:  # 4.x
                attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        context, weights = attention_interface(
            self,
            queries,
            keys,
            values,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.out_proj(context.reshape(batch, seq_len, width)), weights


class FeedForward(nn.Module):
    """Position-wise MLP, widening to ``intermediate_size`` and back."""

    def __init__(self, config: GPTScratchConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.fc_out.is_residual_projection = True

    def forward(self, x):
        return self.fc_out(F.gelu(self.fc_in(x), approximate="tanh"))


class TransformerBlock(GradientCheckpointingLayer):
    """x + Attention(LayerNorm(x)), then x + FeedForward(LayerNorm(x)): normalisation before each branch."""

    def __init__(self, config: GPTScratchConfig, layer_idx: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.att = MultiHeadAttention(config, layer_idx)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.ff = FeedForward(config)
        self.drop_resid = nn.Dropout(config.hidden_dropout)

    def forward(self, x, attention_mask=None, past_key_values=None, output_attentions=False, **kwargs):
        attended, weights = self.att(self.norm1(x), attention_mask, past_key_values, output_attentions, **kwargs)
        x = x + self.drop_resid(attended)
        x = x + self.drop_resid(self.ff(self.norm2(x)))
        return x, weights


class GPTScratchPreTrainedModel(PreTrainedModel):
    """Weight initialisation, saving and loading shared by the model and its heads."""

    config_class = GPTScratchConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True  # the flag's name on transformers 4.x
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def _init_weights(self, module):
        # GPT-2's scheme: N(0, 0.02) everywhere, and the two projections that write into the residual stream scaled
        # by 1/sqrt(2 * layers), since each block adds two branches to it (Radford et al., 2019, section 2.3).
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = std / (2 * self.config.num_hidden_layers) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # One folder opens through every Auto class, whichever head was saved.
        self.config.auto_map = {
            "AutoConfig": "configuration_gpt_scratch.GPTScratchConfig",
            "AutoModel": "modeling_gpt_scratch.GPTScratchModel",
            "AutoModelForCausalLM": "modeling_gpt_scratch.GPTScratchForCausalLM",
            "AutoModelForSequenceClassification": "modeling_gpt_scratch.GPTScratchForSequenceClassification",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


def pick_cache(past_key_values, cache):
    """The key/value cache, by either name: transformers up to 5.23 pass ``past_key_values``, 5.24 and later
    ``cache`` (and deprecate the old name)."""
    if past_key_values is None:
        return cache
    if cache is not None and cache is not past_key_values:
        raise ValueError("pass the key/value cache once, as cache or as past_key_values, not both")
    if CACHE_FIELD == "cache":
        warnings.warn("`past_key_values` is deprecated: this transformers names the cache `cache`", FutureWarning)
    return past_key_values


def build_causal_mask(config, inputs_embeds, attention_mask, cache, position_ids, past_len):
    """transformers' own mask for this attention implementation (``create_causal_mask``; its arguments are named
    differently across versions): the causal mask combined with a 2-D padding mask, a 4-D mask passed as given, or
    ``None`` where the kernel's causal flag is exact."""
    arguments = dict(config=config, attention_mask=attention_mask, position_ids=position_ids)
    arguments["inputs_embeds" if "inputs_embeds" in _MASK_ARGUMENTS else "input_embeds"] = inputs_embeds
    arguments["cache" if "cache" in _MASK_ARGUMENTS else "past_key_values"] = cache
    if "cache_position" in _MASK_ARGUMENTS:  # transformers 4.x and 5.0-5.11
        seq_len = inputs_embeds.shape[1]
        arguments["cache_position"] = torch.arange(past_len, past_len + seq_len, device=inputs_embeds.device)
    return create_causal_mask(**arguments)


class GPTScratchModel(GPTScratchPreTrainedModel):
    """The transformer without a head: returns the final normalised hidden states.

    Positions come from ``position_ids`` (default: counting on from the cache).  Rows that pack several documents
    with ``position_ids`` restarting at each one (padding-free training, TRL's packing) are kept apart by every
    backend when no ``attention_mask`` is given: flash-attention-2 through its variable-length path, ``sdpa`` and
    ``eager`` through the block-diagonal mask transformers' mask builder derives from the positions.
    """

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
        self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
        use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None, cache=None, **kwargs,
    ):
        past_key_values = pick_cache(past_key_values, cache)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.tok_emb(input_ids)
        if self.gradient_checkpointing and self.training:
            # a block recomputed in backward would append its keys and values to the cache a second time
            use_cache, past_key_values = False, None
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        seq_len = inputs_embeds.shape[1]
        given_positions = position_ids  # only positions the caller chose can restart (packed rows)
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq_len, device=inputs_embeds.device).unsqueeze(0)
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and position_ids.numel():
            largest = past_len + seq_len - 1 if given_positions is None else int(position_ids.max())
            limit = self.config.max_position_embeddings
            if largest >= limit:
                raise ValueError(
                    f"position {largest} is past the last position this model has learned ({limit - 1}, "
                    f"max_position_embeddings={limit}): keep prompt and generated tokens within {limit} positions"
                )
        x = self.drop_emb(inputs_embeds + self.pos_emb(position_ids).to(inputs_embeds.device))
        mask = build_causal_mask(self.config, inputs_embeds, attention_mask, past_key_values, given_positions, past_len)

        all_hidden = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.blocks:
            if output_hidden_states:
                all_hidden += (x,)
            x, weights = block(
                x,
                attention_mask=mask,
                past_key_values=past_key_values,
                output_attentions=output_attentions,
                position_ids=position_ids,
                **kwargs,
            )
            if output_attentions:
                all_attentions += (weights,)
        x = self.final_norm(x)
        if output_hidden_states:
            all_hidden += (x,)

        output = BaseModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=all_hidden,
            attentions=all_attentions,
            **{CACHE_FIELD: past_key_values if use_cache else None},
        )
        return output if return_dict else output.to_tuple()


class GPTScratchForCausalLM(GPTScratchPreTrainedModel, GenerationMixin):
    """The language model: hidden states -> next-token logits over the vocabulary.

    ``generate`` is ``GenerationMixin``'s, unchanged: every decoding strategy, cache class (``DynamicCache``,
    ``cache_implementation="static"`` for ``torch.compile``) and adapter (PEFT's prompt and prefix tuning replace
    ``prepare_inputs_for_generation``) works as on transformers' own GPT-2.
    """

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
        self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
        labels=None, use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None,
        logits_to_keep=0, cache=None, **kwargs,
    ):
        """``labels`` are the input ids themselves (-100 where ignored): position ``t`` is scored against
        ``labels[t + 1]``.  ``shift_labels`` (already shifted, as in context-parallel training) may be given instead.
        ``num_items_in_batch`` (from ``Trainer``) divides the summed loss instead of averaging it here."""
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=pick_cache(past_key_values, cache),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep  # 0 keeps all
        logits = self.lm_head(hidden[:, keep])
        loss = None
        if labels is not None or kwargs.get("shift_labels") is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            **{CACHE_FIELD: getattr(out, CACHE_FIELD)},
        )
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()


def last_token_index(input_ids, attention_mask, pad_token_id):
    """Index of the last real token of each row, for right or left padding.

    The attention mask decides when given; otherwise the last token that is not ``pad_token_id``; otherwise the last.
    """
    if attention_mask is not None and attention_mask.dim() == 2:
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
    """A classifier: the hidden state of the last real token, through a linear ``score`` head to ``num_labels``.

    The loss follows ``config.problem_type`` as in every transformers classifier: ``"regression"`` (MSE),
    ``"single_label_classification"`` (cross-entropy) or ``"multi_label_classification"`` (binary cross-entropy);
    unset, it is inferred from ``num_labels`` and the labels' dtype."""

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
        self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
        labels=None, use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None,
        cache=None, **kwargs,
    ):
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=pick_cache(past_key_values, cache),
            inputs_embeds=inputs_embeds,
            use_cache=False if use_cache is None else use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
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
            loss = self.loss_function(labels, logits, self.config)
        output = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            **{CACHE_FIELD: getattr(out, CACHE_FIELD)},
        )
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()


# Saving any of these classes copies this file and the configuration file next to the weights and writes
# `auto_map`, so the folder loads with `trust_remote_code=True` where this package is not installed.
GPTScratchConfig.register_for_auto_class()
GPTScratchModel.register_for_auto_class("AutoModel")
GPTScratchForCausalLM.register_for_auto_class("AutoModelForCausalLM")
GPTScratchForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "MultiHeadAttention", "FeedForward", "TransformerBlock", "GPTScratchPreTrainedModel", "GPTScratchModel",
    "GPTScratchForCausalLM", "GPTScratchForSequenceClassification",
]
