"""``gpt-scratch train-tokenizer --data PATH --vocab-size N --out DIR``: a GPT-2-style byte-level BPE learned from
local text or records (``pipelines.runs.tokenizers.train_bpe_tokenizer``), saved so that
``AutoTokenizer.from_pretrained(DIR)`` opens it."""

from __future__ import annotations

import argparse

from ..data.sources import iter_documents
from ..runs.tokenizers import train_bpe_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``gpt-scratch train-tokenizer``."""
    parser.add_argument(
        "--data", required=True, help="text to learn from: a .txt file, a folder of them, or a data set"
    )
    parser.add_argument(
        "--vocab-size", type=int, required=True, help="vocabulary size incl. 256 bytes and <|endoftext|>"
    )
    parser.add_argument("--out", required=True, help="output folder (opens with AutoTokenizer.from_pretrained)")
    parser.add_argument("--text-column", default="text", help="column holding the text, for tabular/JSON data")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``gpt-scratch train-tokenizer``; prints the output folder and the vocabulary size; returns the exit code."""
    tokenizer = train_bpe_tokenizer(
        iter_documents(args.data, text_column=args.text_column),
        args.vocab_size,
        out_dir=args.out,
        overwrite=args.overwrite,
    )
    print(f"trained a byte-level BPE tokenizer with {len(tokenizer)} tokens -> {args.out}")
    return 0


