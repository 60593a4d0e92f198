"""``gpt-scratch <workflow>``: one command line for every workflow.

Each workflow lives in its own module and exposes two functions: one that adds its arguments to a parser and one
that runs it.  Only the chosen workflow's module is imported, so ``gpt-scratch --help`` is instant.
User errors (``UserError``) are printed as one line on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# workflow -> (module, one-line help).  Every workflow ``name-x`` is two functions of its module:
# ``add_name_x_arguments(parser)`` adds its flags, ``name_x_main(args) -> exit code`` runs it.
WORKFLOWS = {
    "pretrain": ("pipelines.pretrain", "pretrain a base model (no --data: embedded corpus)"),
    "train-tokenizer": ("pipelines.tokenization", "train a GPT-2-style byte-level BPE tokenizer on local text"),
    "convert": ("pipelines.convert", "import OpenAI GPT-2 (HF gpt2) or book .pth weights; --to hf-gpt2: export"),
    "generate": ("pipelines.generate", "sample text from a model"),
    "chat": ("pipelines.chat", "chat with a base (transcript) or instruct model"),
    "finetune-classifier": ("pipelines.classify", "fine-tune a classifier (e.g. spam) from a base model"),
    "classify": ("pipelines.classify", "predict labels for texts"),
    "finetune-instruct": ("pipelines.instruct", "Alpaca-style instruction fine-tuning"),
    "respond": ("pipelines.instruct", "answer every record of a test file"),
    "judge": ("pipelines.judge", "score responses with an LLM judge (0-100)"),
    "serve": ("pipelines.serve", "OpenAI-compatible HTTP API over a model"),
    "evaluate": ("pipelines.evaluate", "loss, perplexity, bits per byte, classifier accuracy, HellaSwag, lm-eval"),
    "experiments": ("pipelines.experiments", "interventions vs a baseline, same budget"),
    "publish": ("pipelines.publish", "upload a run folder to the Hugging Face Hub"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt-scratch",
        description="Train, fine-tune, evaluate, serve and publish GPT-2-style models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="workflows:\n"
        + "\n".join(f"  {name:<20} {help_text}" for name, (_, help_text) in WORKFLOWS.items())
        + "\n\n'gpt-scratch <workflow> --help' shows a workflow's options.",
    )
    parser.add_argument("workflow", choices=list(WORKFLOWS), metavar="workflow", help="one of the workflows below")
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (a ``UserError``) instead of the usage text plus a line."""

    def error(self, message):
        from .errors import UserError

        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser(workflow: str):
    module_name, help_text = WORKFLOWS[workflow]
    module = importlib.import_module(module_name)
    stem = workflow.replace("-", "_")
    parser = _Parser(prog=f"gpt-scratch {workflow}", description=help_text)
    getattr(module, f"add_{stem}_arguments")(parser)
    return parser, getattr(module, f"{stem}_main")


def main(argv: list[str] | None = None) -> int:
    from .errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in WORKFLOWS:
        top = _top_parser()
        if not argv:
            top.print_help()
            return 2
        top.parse_args(argv[:1])  # prints help, or a one-line error naming the valid workflows
        return 2
    workflow, rest = argv[0], argv[1:]
    try:
        from .textin import check_argv

        check_argv(rest)  # undecodable bytes in an argument: one line here, not a TypeError deep inside
        parser, run = build_parser(workflow)
        args = parser.parse_args(rest)
        result = run(args)
        return int(result or 0)
    except UserError as exc:
        print(f"gpt-scratch {workflow}: error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(f"gpt-scratch {workflow}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
