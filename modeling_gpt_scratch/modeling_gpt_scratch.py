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

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

from .configuration_gpt_scratch import GPTScratchConfig


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
        qkv = self.qkv_proj(x).view(batch, seq_len, 3, self.num_heads, self.head_dim)
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
        return self.out_proj(context)


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

    def save_pretrained(self, save_directory, *args, **kwargs):
        # One folder opens through every Auto class, whichever head was saved.
        self.config.auto_map = {
            "AutoConfig": "configuration_gpt_scratch.GPTScratchConfig",
            "AutoModel": "modeling_gpt_scratch.GPTScratchModel",
            "AutoModelForCausalLM": "modeling_gpt_scratch.GPTScratchForCausalLM",
            "AutoModelForSequenceClassification": "modeling_gpt_scratch.GPTScratchForSequenceClassification",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


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
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.tok_emb(input_ids)
        seq_len = inputs_embeds.shape[1]
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
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
            # the cache goes by keyword: under activation checkpointing the layer wrapper drops it (a recompute in
            # backward would otherwise append the keys/values a second time)
            x = block(x, attn_mask, past_key_values=past_key_values)
        x = self.final_norm(x)
        if all_hidden is not None:
            all_hidden.append(x)

        output = BaseModelOutputWithPast(
            last_hidden_state=x,
            past_key_values=past_key_values,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )
        return output if return_dict is not False else output.to_tuple()


def causal_lm_loss(logits, labels, num_items_in_batch=None, ignore_index=-100):
    """Next-token cross-entropy: position ``t`` predicts ``labels[t + 1]``; ``-100`` labels are ignored.

    With ``num_items_in_batch`` (given by ``transformers.Trainer`` under gradient accumulation) the sum is divided by
    that count instead of averaged here, so accumulated micro-batches weigh every token equally.
    """
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:].to(logits.device)
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index, reduction=reduction
    )
    if num_items_in_batch is not None:
        loss = loss / num_items_in_batch
    return loss


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
        **kwargs,
    ):
        """``labels`` are the input ids themselves (or -100 where ignored): they are shifted here."""
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
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
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, kwargs.get("num_items_in_batch"))
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=out.past_key_values, hidden_states=out.hidden_states
        )
        return output if return_dict is not False else output.to_tuple()


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
        **kwargs,
    ):
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
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
            loss=loss, logits=logits, past_key_values=out.past_key_values, hidden_states=out.hidden_states
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
