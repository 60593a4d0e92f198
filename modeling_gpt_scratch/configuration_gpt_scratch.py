"""Configuration of a GPT-2-style model written from scratch.

The attribute names are the ones the Hugging Face ecosystem reads (``hidden_size``, ``num_hidden_layers``,
``num_attention_heads``, ``max_position_embeddings``, ...).  The names used in *Build a Large Language Model (From
Scratch)* work as aliases: ``emb_dim``, ``n_layers``, ``n_heads``, ``context_length`` and ``drop_rate``.

This file is uploaded to the Hub as the model's remote code: it imports only ``transformers``.
"""

from transformers import PretrainedConfig

# Architecture presets.  "gpt2-*" are OpenAI's GPT-2 sizes (Radford et al., 2019, Table 2): a tied output head and
# biases on the query/key/value projections.  "gpt2-small-untied" is the 163M variant trained from scratch in the
# book's follow-up series: separate output head, no QKV bias.  "tiny" is a CPU-sized model for demos and tests.
PRESETS = {
    "gpt2-small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "gpt2-small-untied": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, qkv_bias=False, tie_word_embeddings=False
    ),
    "gpt2-medium": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "gpt2-large": dict(hidden_size=1280, num_hidden_layers=36, num_attention_heads=20),
    "gpt2-xl": dict(hidden_size=1600, num_hidden_layers=48, num_attention_heads=25),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128),
}

# The book's configuration keys and the standard attribute each one stands for.
BOOK_ALIASES = {
    "emb_dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "context_length": "max_position_embeddings",
    "drop_rate": "hidden_dropout",
}


class GPTScratchConfig(PretrainedConfig):
    r"""Configuration for :class:`GPTScratchModel` and its heads.

    Args:
        vocab_size: number of token ids (50257 for GPT-2's BPE).
        max_position_embeddings: the context length; positions are learned, so no input may be longer.
        hidden_size: width of the residual stream (the embedding dimension).
        num_hidden_layers: number of transformer blocks.
        num_attention_heads: attention heads per block; must divide ``hidden_size``.
        intermediate_size: width of the feed-forward layer (default ``4 * hidden_size``).
        hidden_dropout: dropout on the embeddings and on each residual branch.
        attention_dropout: dropout on the attention weights.  ``drop_rate`` (the book's single rate) sets both.
        qkv_bias: whether the query/key/value projections have biases (OpenAI's GPT-2 does).
        tie_word_embeddings: share the token embedding with the output head (OpenAI's GPT-2 does).
        layer_norm_epsilon: epsilon of every LayerNorm.
        initializer_range: standard deviation of the normal initialisation.
    """

    model_type = "gpt_scratch"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = dict(BOOK_ALIASES)

    def __init__(
        self,
        vocab_size: int = 50257,
        max_position_embeddings: int = 1024,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int | None = None,
        hidden_dropout: float = 0.0,
        attention_dropout: float | None = None,
        qkv_bias: bool = True,
        tie_word_embeddings: bool = True,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        bos_token_id: int | None = 50256,
        eos_token_id: int | None = 50256,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        # The book's names arrive as keyword arguments when a book-style dict is passed: they win over defaults.
        book = {key: kwargs.pop(key) for key in list(kwargs) if key in BOOK_ALIASES}
        hidden_size = book.get("emb_dim", hidden_size)
        num_hidden_layers = book.get("n_layers", num_hidden_layers)
        num_attention_heads = book.get("n_heads", num_attention_heads)
        max_position_embeddings = book.get("context_length", max_position_embeddings)
        if "drop_rate" in book:  # the book uses one rate for embeddings, attention and residual branches
            hidden_dropout = book["drop_rate"]
            attention_dropout = book["drop_rate"] if attention_dropout is None else attention_dropout
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads}): "
                f"pick a head count that divides it, e.g. {_divisor_hint(hidden_size, num_attention_heads)}"
            )
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * hidden_size
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = hidden_dropout if attention_dropout is None else attention_dropout
        self.qkv_bias = qkv_bias
        self.tie_word_embeddings = tie_word_embeddings
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        # transformers 4.x's base __init__ resets these four to its own defaults (tied, no special tokens) unless given
        super().__init__(
            tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            pad_token_id=pad_token_id, **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTScratchConfig":
        """A config from one of :data:`PRESETS`, with any attribute overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def _divisor_hint(hidden_size: int, heads: int) -> str:
    near = [h for h in range(1, hidden_size + 1) if hidden_size % h == 0]
    best = min(near, key=lambda h: (abs(h - heads), h))
    return f"num_attention_heads={best}"


__all__ = ["GPTScratchConfig", "PRESETS", "BOOK_ALIASES"]
