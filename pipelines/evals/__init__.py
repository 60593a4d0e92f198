"""Evaluations: text loss and bits per byte, classifier metrics, HellaSwag, a FineWeb slice, lm-evaluation-harness,
the LLM judge, and recording results in a run folder."""
