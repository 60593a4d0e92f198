"""gpt-scratch's model package: a from-scratch GPT-2 registered with the ``transformers`` Auto classes.

Importing this package is enough for ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` /
``AutoModelForSequenceClassification`` to know ``model_type = "gpt_scratch"`` in this process.  Saved folders also
carry the code (``auto_map``), so elsewhere ``from_pretrained(folder, trust_remote_code=True)`` works.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .configuration_gpt_scratch import BOOK_ALIASES, PRESETS, GPTScratchConfig
from .modeling_gpt_scratch import (
    FeedForward,
    GPTScratchForCausalLM,
    GPTScratchForSequenceClassification,
    GPTScratchModel,
    GPTScratchPreTrainedModel,
    MultiHeadAttention,
    TransformerBlock,
)

AutoConfig.register(GPTScratchConfig.model_type, GPTScratchConfig, exist_ok=True)
AutoModel.register(GPTScratchConfig, GPTScratchModel, exist_ok=True)
AutoModelForCausalLM.register(GPTScratchConfig, GPTScratchForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(GPTScratchConfig, GPTScratchForSequenceClassification, exist_ok=True)

__all__ = [
    "GPTScratchConfig",
    "PRESETS",
    "BOOK_ALIASES",
    "MultiHeadAttention",
    "FeedForward",
    "TransformerBlock",
    "GPTScratchPreTrainedModel",
    "GPTScratchModel",
    "GPTScratchForCausalLM",
    "GPTScratchForSequenceClassification",
]
