"""The one training loop (``trainer``), its losses, precision rules and LoRA."""
