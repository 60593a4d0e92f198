"""The model card templates; installed as ``pipelines.model_cards``."""
