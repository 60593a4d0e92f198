"""``gpt-scratch convert``: weights into and out of gpt-scratch folders.

* ``--from hf-gpt2 --src FOLDER_OR_HUB_ID --out DIR``: a Hugging Face gpt2 checkpoint (``pipelines.formats.hf_gpt2``);
* ``--from book --src FILE.pth --out DIR [--config PRESET_OR_JSON]``: the book's ``GPTModel`` state dict
  (``pipelines.formats.book``);
* ``--to hf-gpt2 --src RUN_DIR --out DIR``: a plain transformers GPT-2 folder, no remote code
  (``pipelines.formats.gpt2_export``);
* ``--to gguf --src RUN_DIR --out FILE.gguf [--outtype f32|f16|q8_0]``: one GGUF file for llama.cpp, Ollama and
  LM Studio (``pipelines.formats.gguf``).
"""

from __future__ import annotations

import argparse
import sys

from modeling_gpt_scratch.configuration_gpt_scratch import PRESETS

from ..errors import UserError
from ..formats.book import convert_book
from ..formats.gguf import OUTTYPES, export_gguf
from ..formats.gpt2_export import export_hf_gpt2
from ..formats.hf_gpt2 import convert_hf_gpt2
from ..runs.folders import quiet_hf


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``gpt-scratch convert``: ``--from FORMAT`` imports into gpt-scratch, ``--to FORMAT`` exports from it."""
    parser.description = (
        "Import weights into a gpt-scratch folder (--from hf-gpt2: a Hugging Face gpt2 checkpoint such as "
        "openai-community/gpt2; --from book: the book's GPTModel state dict), or export a gpt-scratch folder (causal "
        "LM or classifier) to a plain transformers gpt2 folder (--to hf-gpt2: GPT2LMHeadModel or "
        "GPT2ForSequenceClassification, no trust_remote_code). Give exactly one of --from and --to."
    )
    parser.epilog = (
        "--to hf-gpt2 checks the written folder before it appears: reloaded with the plain class, its logits must "
        "match the source's within 1e-4 on a probe input. A GPT-2 classifier pools the last token that is not "
        "pad_token_id (ignoring attention_mask), gpt-scratch the last one the mask keeps: the same unless a text "
        "ends in the padding token."
    )
    parser.add_argument(
        "--from", dest="source_format", default=None, choices=["hf-gpt2", "book"],
        help="import: hf-gpt2 = a Hugging Face gpt2 checkpoint (folder or Hub id); book = the book's GPTModel state "
        "dict",
    )
    parser.add_argument(
        "--to", dest="target_format", default=None, choices=["hf-gpt2", "gguf"],
        help="export: hf-gpt2 = a plain transformers gpt2 folder (config.json with model_type gpt2, "
        "model.safetensors, tokenizer, generation_config.json) from the gpt-scratch folder --src; gguf = one GGUF "
        "file for llama.cpp (Ollama, LM Studio) from the causal LM folder --src",
    )
    parser.add_argument(
        "--src", required=True,
        help="--from hf-gpt2: checkpoint folder / Hub id; --from book: .pth/.safetensors file; --to hf-gpt2: a "
        "gpt-scratch model folder (a run folder)",
    )
    parser.add_argument(
        "--out", required=True, help="output folder (a loadable model folder); --to gguf: the .gguf file to write"
    )
    parser.add_argument(
        "--outtype", default=None, choices=list(OUTTYPES),
        help="--to gguf only: how the weight matrices are stored (default f16; q8_0 = 8-bit blocks, about half the "
        "size of f16); norms, biases and position embeddings stay f32",
    )
    parser.add_argument(
        "--config", default=None,
        help=f"--from book only: a preset ({', '.join(PRESETS)}) or a JSON file with the book's cfg dict; "
        "default: sizes inferred from the weights",
    )
    parser.add_argument(
        "--fold-score-bias", action="store_true",
        help="--to hf-gpt2, classifiers only: GPT-2's score layer has no bias; fold a non-zero score bias into the "
        "final LayerNorm's bias (same logits; the exported final hidden states shift by a constant). Without it such "
        "a classifier is refused",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``gpt-scratch convert``; prints the output folder and returns the exit code."""
    source_format = getattr(args, "source_format", None)
    target_format = getattr(args, "target_format", None)
    if source_format is not None and target_format is not None:
        raise UserError(
            f"--from {source_format} and --to {target_format} exclude each other: --from imports into gpt-scratch, "
            "--to exports from it; give one"
        )
    if source_format is None and target_format is None:
        raise UserError(
            "give --from hf-gpt2|book (import into gpt-scratch) or --to hf-gpt2|gguf (export to plain gpt2 or GGUF)"
        )
    if getattr(args, "config", None) is not None and source_format != "book":
        what = (f"--to {target_format} reads the config of --src" if target_format
                else "an hf-gpt2 checkpoint brings its own")
        raise UserError(f"--config applies only to --from book: {what} config.json")
    if getattr(args, "fold_score_bias", False) and target_format != "hf-gpt2":
        raise UserError("--fold-score-bias applies only to --to hf-gpt2 (exporting a classifier)")
    if getattr(args, "outtype", None) is not None and target_format != "gguf":
        raise UserError("--outtype applies only to --to gguf (how the GGUF file stores its weights)")
    if target_format == "gguf":
        with quiet_hf():
            written = export_gguf(args.src, args.out, args.outtype or "f16", overwrite=args.overwrite)
        print(written.summary(args.src), file=sys.stdout)
        return 0
    with quiet_hf():
        if target_format == "hf-gpt2":
            result = export_hf_gpt2(
                args.src, args.out, overwrite=args.overwrite, fold_score_bias=getattr(args, "fold_score_bias", False)
            )
        elif source_format == "hf-gpt2":
            out = convert_hf_gpt2(args.src, args.out, overwrite=args.overwrite)
        else:
            out = convert_book(args.src, args.config, args.out, overwrite=args.overwrite)
    if target_format is not None:
        print(
            f"exported {args.src} -> {result.out} ({result.architecture}, plain transformers gpt2; on a probe input "
            f"its logits differ from the source's by at most {result.max_abs_diff:.1e})",
            file=sys.stdout,
        )
        for caveat in result.caveats:
            print(f"note: {caveat}", file=sys.stdout)
        return 0
    print(f"converted {args.src} -> {out}", file=sys.stdout)
    return 0


