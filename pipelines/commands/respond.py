"""``gpt-scratch respond --model DIR --data FILE --out FILE``: answers for every record of an instruction file.

The model is an instruction-tuned folder (the ``--out`` of ``finetune-instruct``, full or a LoRA adapter).  Prompts
are batched with left padding and decoded greedily until end-of-text (``pipelines.decoding.prompts``); the output is
the book's ``instruction-data-with-response.json`` shape: each record plus ``model_response``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.instructions import read_instructions
from ..decoding.prompts import default_max_new_tokens, generate_responses
from ..errors import UserError
from ..fs import atomic_write_text
from ..runs.folders import FolderKind, open_model


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", required=True,
        help="instruction-tuned model folder (the --out of finetune-instruct; a LoRA adapter folder too)",
    )
    parser.add_argument("--data", required=True, help="instruction records to answer (JSON list or JSONL)")
    parser.add_argument("--out", required=True, help="JSON file to write: each record plus 'model_response'")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None,
        help="longest answer in tokens (default: the model's generation config, else 256; capped by the context)",
    )


def run(args) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give the path of the JSON file to write")
    records = read_instructions(args.data)
    model, tokenizer = open_model(args.model, (FolderKind.CAUSAL_LM, FolderKind.ADAPTER))
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer in {args.model} has no end-of-text (eos) token to stop answers at")
    max_new = args.max_new_tokens or default_max_new_tokens(model.config.max_position_embeddings)
    answers = generate_responses(
        model, tokenizer, records, batch_size=args.batch_size, max_new_tokens=max_new, progress=True
    )
    results = [{**record, "model_response": answer} for record, answer in zip(records, answers)]
    atomic_write_text(out, json.dumps(results, indent=4, ensure_ascii=False) + "\n")
    print(f"wrote {len(results)} responses to {out}")
    return 0


