"""``gpt-scratch <workflow>``: one command line for every workflow.

:data:`COMMANDS` is the table: a workflow's name, the module under ``pipelines.commands`` that implements it, and its
one-line help.  Each command module has ``add_arguments(parser)`` and ``run(args) -> exit code``.  Only the chosen
command's module is imported, so ``gpt-scratch --help`` is instant.  User errors (``UserError``) are printed as one
line on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import UserError, check_text

COMMANDS = {
    "pretrain": ("pretrain", "pretrain a base model (no --data: embedded corpus)"),
    "train-tokenizer": ("train_tokenizer", "train a GPT-2-style byte-level BPE tokenizer on local text"),
    "convert": ("convert", "import OpenAI GPT-2 (HF gpt2) or book .pth weights; --to hf-gpt2 / gguf: export"),
    "generate": ("generate", "sample text from a model"),
    "chat": ("chat", "chat with a base (transcript) or instruct model"),
    "finetune-classifier": ("finetune_classifier", "fine-tune a classifier (e.g. spam) from a base model"),
    "classify": ("classify", "predict labels for texts"),
    "finetune-instruct": ("finetune_instruct", "Alpaca-style instruction fine-tuning"),
    "respond": ("respond", "answer every record of a test file"),
    "judge": ("judge", "score responses with an LLM judge (0-100)"),
    "serve": ("serve", "OpenAI-compatible HTTP API over a model"),
    "evaluate": ("evaluate", "loss, perplexity, bits per byte, classifier accuracy, HellaSwag, lm-eval"),
    "experiments": ("experiments", "interventions vs a baseline, same budget"),
    "publish": ("publish", "upload a run folder to the Hugging Face Hub"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (a ``UserError``) instead of the usage text plus a line."""

    def error(self, message):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt-scratch",
        description="Train, fine-tune, evaluate, serve and publish GPT-2-style models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="workflows:\n" + "\n".join(f"  {name:<20} {help_text}" for name, (_, help_text) in COMMANDS.items())
        + "\n\n'gpt-scratch <workflow> --help' shows a workflow's options.",
    )
    parser.add_argument("workflow", choices=list(COMMANDS), metavar="workflow", help="one of the workflows below")
    return parser


def build_parser(workflow: str):
    """``(parser, run)`` of a workflow; its module is imported here, not before (``--help`` stays instant)."""
    module_name, help_text = COMMANDS[workflow]
    module = importlib.import_module(f"pipelines.commands.{module_name}")
    parser = _Parser(prog=f"gpt-scratch {workflow}", description=help_text)
    module.add_arguments(parser)
    return parser, module.run


def check_argv(argv: list[str]) -> None:
    """Every command-line argument must be UTF-8 text; the first that is not is named (by its flag)."""
    for index, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if arg.startswith("--") and eq:
            where, text = f"the value of {flag}", value
        elif arg.startswith("-") and len(arg) > 1:
            where, text = f"option {index + 1}", arg
        elif index > 0 and argv[index - 1].startswith("-") and "=" not in argv[index - 1]:
            where, text = f"the value of {argv[index - 1]}", arg
        else:
            where, text = f"argument {index + 1}", arg
        check_text(text, where)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        top = _top_parser()
        if not argv:
            top.print_help()
            return 2
        top.parse_args(argv[:1])  # prints help, or a one-line error naming the valid workflows
        return 2
    workflow, rest = argv[0], argv[1:]
    if not sys.stderr.isatty():  # a log file: the libraries' progress bars would be carriage-return lines there
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        check_argv(rest)  # undecodable bytes in an argument: one line here, not a TypeError deep inside
        parser, run = build_parser(workflow)
        return int(run(parser.parse_args(rest)) or 0)
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
