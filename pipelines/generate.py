"""``gpt-scratch generate``: continue a prompt with a saved model folder.

The folder is opened the way any user of the Hub would open it -- ``AutoModelForCausalLM`` and ``AutoTokenizer`` with
``trust_remote_code=True`` -- so this also checks that a run folder is self-contained.  Temperature 0 means greedy
decoding; otherwise tokens are sampled, optionally restricted to the ``top_k`` most likely tokens and/or the smallest
set whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al., 2020, "The Curious Case of Neural Text
Degeneration").
"""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

from pipelines.errors import UserError

DEFAULT_MAX_NEW_TOKENS = 100


@contextlib.contextmanager
def quiet_hf():
    """Silence transformers' loading reports and progress bars for the length of a CLI command."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def check_model_folder(model_dir, need_tokenizer: bool = True, flag: str = "--model", accept=None) -> Path:
    """Fail with one line unless ``model_dir`` is a folder with a config, weights and (optionally) a tokenizer (and,
    with ``accept``, of one of those kinds); see :func:`pipelines.folders.check_model_folder`."""
    from .folders import check_model_folder as check

    return check(model_dir, need_tokenizer=need_tokenizer, flag=flag, accept=accept)


def load_model_and_tokenizer(model_dir, device=None):
    """The causal LM (eval mode, on ``device`` if given) and tokenizer of a folder, pad = end-of-text; a folder of
    another kind (a classifier, an adapter) or with unreadable files is a one-line ``UserError``."""
    from .folders import load_causal_lm

    return load_causal_lm(model_dir, device)


def load_model(folder, device: str | None = None):
    """``(model, tokenizer)`` from a model folder, in eval mode, on the GPU when there is one (or ``device``)."""
    import torch

    return load_model_and_tokenizer(folder, device or ("cuda" if torch.cuda.is_available() else "cpu"))


def is_instruct(tokenizer) -> bool:
    """An instruct model's tokenizer carries a chat template; a base model's does not."""
    return bool(getattr(tokenizer, "chat_template", None))


def generate_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int | None = None,
) -> str:
    """The continuation of ``prompt`` (the new text only), through the decoding engine.  ``temperature == 0``
    decodes greedily; ``max_new_tokens`` (default 100) is cut to what fits in the context."""
    from .engine import Engine

    if not (temperature >= 0 and math.isfinite(temperature)):  # NaN and infinity too
        raise UserError(
            f"--temperature {temperature} is not allowed: use 0 for greedy decoding or a positive, finite value"
        )
    if top_k is not None and top_k < 0:
        raise UserError(f"--top-k {top_k} is negative: use 0 to turn it off or a positive count")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p {top_p} is outside (0, 1]: use e.g. 0.9, or 1 to turn it off")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens} must be at least 1")
    engine = Engine(model, tokenizer)
    ids = tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
    if len(ids) >= engine.context:
        raise UserError(
            f"the prompt is {len(ids)} tokens, but the model's context holds {engine.context} in all: shorten the "
            f"prompt to at most {engine.context - 1} tokens"
        )
    request = engine.request(
        ids,
        max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        temperature=temperature,
        top_k=top_k or 0,
        top_p=1.0 if top_p is None else top_p,
        seed=seed,
    )
    return engine.run([request])[0].text


def add_generate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``gpt-scratch generate``."""
    parser.add_argument("--model", required=True, help="model folder (config.json, model.safetensors, tokenizer)")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=None, help=f"default {DEFAULT_MAX_NEW_TOKENS}")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; higher = more random (default 1)")
    parser.add_argument(
        "--top-k", type=int, default=50, help="sample among the k likeliest tokens; 0 = off (default 50)"
    )
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]; default off")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for reproducible samples")
    return parser


def generate_main(args: argparse.Namespace) -> int:
    """Run ``gpt-scratch generate``: print the continuation; returns the exit code."""
    with quiet_hf():
        model, tokenizer = load_model_and_tokenizer(args.model)
        text = generate_text(
            model,
            tokenizer,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
    print(text)
    return 0


__all__ = [
    "quiet_hf", "check_model_folder", "load_model_and_tokenizer", "load_model", "is_instruct", "generate_text",
    "add_generate_arguments", "generate_main",
]
