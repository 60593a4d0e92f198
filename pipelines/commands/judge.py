"""``gpt-scratch judge --responses FILE --judge-url URL --judge-model NAME``: score each response 0-100 with an LLM
judge (an Ollama or OpenAI-compatible server; ``pipelines.evals.judge``) and write the records with their ``score``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError
from ..evals.judge import JudgeClient, default_out_path, load_responses, score_record
from ..fs import atomic_write_json


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--responses", required=True, help="JSON list of records with instruction, input, output, "
                        "model_response (as written by `gpt-scratch respond`)")
    parser.add_argument("--judge-url", required=True, help="judge server, e.g. http://localhost:11434 (Ollama) or "
                        "http://127.0.0.1:8000 (OpenAI-compatible, e.g. gpt-scratch serve)")
    parser.add_argument("--judge-model", required=True, help="model name on the judge server, e.g. llama3")
    parser.add_argument("--out", default=None, help="scored records (default: next to --responses, *-scored.json)")
    parser.add_argument("--api", choices=("auto", "ollama", "openai"), default="auto",
                        help="judge API (default: probe /api/tags for Ollama, then /v1/models)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one reply (default 120)")
    parser.add_argument("--retries", type=int, default=3, help="tries after the first, for failures and replies "
                        "without a score (default 3)")
    parser.add_argument("--api-key", default=None, help="bearer token for servers that need one")
    parser.add_argument("--max-tokens", type=int, default=None, help="cap on the judge's reply length in tokens")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise UserError(f"--timeout {args.timeout:g} must be positive (seconds)")
    if args.retries < 0:
        raise UserError(f"--retries {args.retries} must be 0 or more")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UserError(f"--max-tokens {args.max_tokens} must be at least 1")
    records = load_responses(args.responses)
    out = Path(args.out).expanduser() if args.out else default_out_path(Path(args.responses).expanduser())
    client = JudgeClient(args.judge_url, args.judge_model, api=args.api, timeout=args.timeout, retries=args.retries,
                         api_key=args.api_key, max_tokens=args.max_tokens)
    api = client.connect()
    print(f"judging {len(records)} responses with {args.judge_model} ({api} API at {client.url})", file=sys.stderr)
    scored = []
    for index, record in enumerate(records):
        score, reply = score_record(client, record, args.retries)
        scored.append({**record, "score": score})
        shown = score if score is not None else f"unscored (reply: {reply[:60]!r})"
        print(f"[{index + 1}/{len(records)}] {shown}", file=sys.stderr)
    atomic_write_json(out, scored)
    scores = [r["score"] for r in scored if r["score"] is not None]
    mean = f"{sum(scores) / len(scores):.1f}" if scores else "n/a"
    print(f"scored {len(scores)}/{len(scored)}, mean {mean}")
    print(f"wrote {out}")
    return 0

