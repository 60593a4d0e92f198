"""The YAML recipes of gpt-scratch (``--config NAME`` finds them here); installed as ``pipelines.configs``."""
