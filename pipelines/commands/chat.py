"""``gpt-scratch chat``: talk to a model in the terminal, the reply streaming as it is generated.

* A **base** model (its tokenizer has no chat template) is prompted with the transcript frame
  (``pipelines.decoding.prompts.render_transcript``): the conversation so far as ``User: ...`` / ``Bot: ...`` lines
  under a short description, ending with ``Bot:``.  The model continues the transcript; the reply ends where it starts
  the user's next turn (``"\\nUser:"``), which is cut from both the printed reply and the history.  The oldest turns
  are dropped when the transcript no longer fits the context.
* An **instruct** model (its tokenizer carries the Alpaca chat template) gets each line as a fresh Alpaca prompt:
  Alpaca-tuned models are single-turn.  ``--system`` replaces the template's preamble.

Reads lines from stdin, so it also works piped (``echo hello | gpt-scratch chat --model DIR``).  Ends at end of input,
``/exit`` or ``/quit``; ``/reset`` forgets the conversation.  Ctrl-C during a reply stops that reply.
"""

from __future__ import annotations

import argparse
import math
import sys

from ..data.instructions import ALPACA_STOP_STRINGS
from ..data.stdin import read_line
from ..decoding.engine import Engine, make_generator
from ..decoding.prompts import BOT_PREFIX, STOP_STRINGS, render_transcript
from ..errors import UserError
from ..runs.folders import is_instruct, open_model

EXIT_COMMANDS = ("/exit", "/quit")


def fit_transcript(tokenizer, history: list[dict], system: str | None, budget: int) -> str:
    """The transcript prompt for ``history`` (ending with the user's new message), dropping the oldest exchanges
    until it fits in ``budget`` tokens (the last user message is always kept; the generator trims what is left)."""
    history = list(history)
    while True:
        prompt = render_transcript(history, system=system)
        if len(history) <= 1 or len(tokenizer.encode(prompt, add_special_tokens=False)) <= budget:
            return prompt
        history = history[2:] if len(history) > 2 else history[-1:]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="model folder (base: transcript chat; instruct: Alpaca)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest reply in tokens (default 128)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9; 1 = off)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens only")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a reproducible conversation")
    parser.add_argument("--system", default=None, help="base model: the transcript's description line; instruct "
                        "model: replaces the Alpaca preamble")
    return parser


def _check(args) -> None:
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):  # NaN and infinity too
        raise UserError(f"--temperature {args.temperature:g} must be 0 (greedy) or a positive, finite value")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p {args.top_p:g} must be in (0, 1]")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k {args.top_k} must be at least 1")


def run(args: argparse.Namespace) -> int:
    _check(args)
    model, tokenizer = open_model(args.model)
    engine = Engine(model, tokenizer)
    instruct = is_instruct(tokenizer)
    generator = make_generator(args.seed)  # one stream of randomness for the whole conversation
    budget = max(engine.context - args.max_new_tokens, engine.context // 2)
    interactive = sys.stdin.isatty()
    mode = "instruct model: Alpaca prompt per turn" if instruct else "base model: transcript chat"
    print(f"chatting with {args.model} ({mode}); /exit or end of input quits, /reset forgets", file=sys.stderr)

    history: list[dict] = []
    out = sys.stdout
    lineno = 0
    while True:
        lineno += 1
        try:
            if interactive:
                out.write("You: ")
                out.flush()
            line = read_line(sys.stdin, lineno)  # not UTF-8: one line naming the input line
        except KeyboardInterrupt:
            out.write("\n")
            break
        if not line:  # end of input
            break
        line = line.strip()
        if not line:
            continue
        if line in EXIT_COMMANDS:
            break
        if line == "/reset":
            history.clear()
            print("(conversation forgotten)", file=sys.stderr)
            continue

        user = {"role": "user", "content": line}
        if instruct:
            messages = ([{"role": "system", "content": args.system}] if args.system else []) + [user]
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            stops = ALPACA_STOP_STRINGS
        else:
            prompt = fit_transcript(tokenizer, history + [user], args.system, budget)
            stops = STOP_STRINGS
        request = engine.request(
            prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=1.0 if args.top_p is None else args.top_p,
            top_k=args.top_k or 0,
            generator=generator,
            stop=stops,
            trim=True,
        )
        out.write(f"{BOT_PREFIX} ")
        out.flush()

        def show(_request, piece):
            out.write(piece)
            out.flush()

        try:
            engine.run([request], on_text=show)
        except KeyboardInterrupt:
            out.write(" [stopped]")
        out.write("\n")
        out.flush()
        if not instruct:
            history += [user, {"role": "assistant", "content": request.text}]
    return 0

