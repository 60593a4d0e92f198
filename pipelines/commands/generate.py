"""``gpt-scratch generate``: continue a prompt with a saved model folder.

The folder is opened the way any user of the Hub would open it -- ``AutoModelForCausalLM`` and ``AutoTokenizer`` with
``trust_remote_code=True`` -- so this also checks that a run folder is self-contained.  Temperature 0 means greedy
decoding; otherwise tokens are sampled, optionally restricted to the ``top_k`` most likely tokens and/or the smallest
set whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al., 2020, "The Curious Case of Neural Text
Degeneration").
"""

from __future__ import annotations

import argparse
import math

from ..decoding.engine import Engine
from ..errors import UserError
from ..runs.folders import open_model

DEFAULT_MAX_NEW_TOKENS = 100


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


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
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


def run(args: argparse.Namespace) -> int:
    """Run ``gpt-scratch generate``: print the continuation; returns the exit code."""
    model, tokenizer = open_model(args.model)
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


