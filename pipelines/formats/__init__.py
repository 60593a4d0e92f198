"""Weights in and out: Hugging Face GPT-2 (both directions), the book's ``.pth``, and GGUF for llama.cpp."""
