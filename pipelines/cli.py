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

# workflow -> (module, add-arguments function, run function, one-line help)
WORKFLOWS = {
    "pretrain": ("pipelines.pretrain", "add_arguments", "run", "pretrain a base model (no --data: embedded corpus)"),
    "train-tokenizer": (
        "modeling_gpt_scratch.tokenization",
        "add_train_tokenizer_arguments",
        "train_tokenizer_main",
        "train a GPT-2-style byte-level BPE tokenizer on local text",
    ),
    "convert": (
        "modeling_gpt_scratch.convert",
        "add_convert_arguments",
        "convert_main",
        "import OpenAI GPT-2 (HF gpt2) or book .pth weights; --to hf-gpt2: export to plain gpt2",
    ),
    "generate": ("pipelines.generate", "add_generate_arguments", "generate_main", "sample text from a model"),
    "chat": ("pipelines.chat", "add_arguments", "run", "chat with a base (transcript) or instruct model"),
    "finetune-classifier": (
        "pipelines.classify",
        "add_finetune_arguments",
        "finetune_main",
        "fine-tune a classifier (e.g. spam) from a base model",
    ),
    "classify": ("pipelines.classify", "add_classify_arguments", "classify_main", "predict labels for texts"),
    "finetune-instruct": (
        "pipelines.instruct",
        "add_finetune_arguments",
        "finetune_main",
        "Alpaca-style instruction fine-tuning",
    ),
    "respond": ("pipelines.instruct", "add_respond_arguments", "respond_main", "answer every record of a test file"),
    "judge": ("pipelines.judge", "add_arguments", "run", "score responses with an LLM judge (0-100)"),
    "serve": ("pipelines.serve", "add_arguments", "run", "OpenAI-compatible HTTP API over a model"),
    "evaluate": ("pipelines.evaluate", "add_arguments", "run", "loss, perplexity, bits per byte; classifier accuracy; HellaSwag, FineWeb, lm-eval"),
    "experiments": ("pipelines.experiments", "add_arguments", "run", "interventions vs a baseline, same budget"),
    "publish": ("pipelines.publish", "add_arguments", "run", "upload a run folder to the Hugging Face Hub"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt-scratch",
        description="Train, fine-tune, evaluate, serve and publish GPT-2-style models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="workflows:\n"
        + "\n".join(f"  {name:<20} {spec[3]}" for name, spec in WORKFLOWS.items())
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
    module_name, add_name, run_name, help_text = WORKFLOWS[workflow]
    module = importlib.import_module(module_name)
    parser = _Parser(prog=f"gpt-scratch {workflow}", description=help_text)
    getattr(module, add_name)(parser)
    return parser, getattr(module, run_name)


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
