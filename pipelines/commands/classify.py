"""``gpt-scratch classify --model DIR TEXT...``: the label and its probability for each text, with a classifier folder
(the ``--out`` of ``finetune-classifier``, full or a LoRA adapter); ``-`` reads one text per line from stdin."""

from __future__ import annotations

import sys

from ..data.stdin import read_all
from ..data.tables import encode_texts
from ..errors import UserError
from ..evals.classifier import predict_ids
from ..runs.folders import FolderKind, open_model


def classify_texts(model, tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 0):
    """``[(label, score), ...]`` for each text: the most probable label and its probability."""
    context = model.config.max_position_embeddings
    ids, _ = encode_texts(tokenizer, texts, min(max_length or context, context))
    for i, row in enumerate(ids):
        if not row:
            raise UserError(f"text {i + 1} is empty: give some text to classify")
    probs = predict_ids(model, ids, tokenizer.pad_token_id, batch_size=batch_size)
    scores, best = probs.max(-1)
    return [(model.config.id2label[int(b)], float(s)) for b, s in zip(best, scores)]


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", required=True, help="classifier folder (the --out of finetune-classifier; a LoRA adapter too)"
    )
    parser.add_argument("texts", nargs="+", metavar="TEXT",
                        help="texts to classify ('-': read one per line from stdin)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    parser.add_argument("--max-length", type=int, default=0, help="truncate to N tokens (default: the context)")


def run(args) -> int:
    texts = []
    for text in args.texts:
        if text == "-":
            texts.extend(line for line in read_all(sys.stdin).splitlines() if line.strip())
        else:
            texts.append(text)
    if not texts:
        raise UserError("no text to classify: pass one or more TEXT arguments")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    model, tokenizer = open_model(args.model, (FolderKind.CLASSIFIER, FolderKind.ADAPTER))
    for label, score in classify_texts(model, tokenizer, texts, args.batch_size, args.max_length):
        print(f"{label}\t{score:.4f}")
    return 0


