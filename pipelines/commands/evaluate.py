"""``gpt-scratch evaluate``: score a model folder on a data set or a benchmark.

``--task`` picks what is measured (default: by the folder -- a classifier is scored on a labelled table, a causal LM
on text):

* a **classifier** folder (the ``--out`` of ``finetune-classifier``) on a labelled table (any format
  ``pipelines.data.tables.read_labeled_table`` reads): accuracy, macro precision/recall/F1, per-class scores and the
  confusion matrix.  Labels the model does not know are refused with the list of those it does.
* ``text`` -- a **causal LM** on text (a file, a folder, JSONL/CSV records or a Hub id, read by
  ``pipelines.data.sources.iter_documents``): the documents are tokenised with the folder's tokenizer, joined with an
  end-of-text token after each (as in pretraining), and cut into windows of the model's context.  With ``--stride``
  below the window length the windows overlap and each token is scored once, in the first window where it has the
  most context before it (the usual sliding-window perplexity).  Reported: mean next-token loss (nats), perplexity
  ``exp(loss)`` and bits per byte (``pipelines.runs.tokenizers``: the bytes of the text the scored tokens decode to).
* ``hellaswag`` -- 4-way completion scoring, ``acc`` and ``acc_norm`` (``pipelines.evals.hellaswag``).
* ``fineweb-test`` -- loss, perplexity and bits per byte on a fixed slice of a token stream, by default FineWeb's
  ``sample-10BT`` (``pipelines.evals.fineweb``).
* ``lm-eval:TASK[,TASK...]`` -- EleutherAI's lm-evaluation-harness, an optional extra (``pipelines.evals.lm_eval``).

Prints a small table; ``--out FILE`` also writes the numbers as JSON (atomically; HellaSwag's include every item's
log-likelihoods).  ``--record`` adds the summary to the model folder's ``metrics.json`` under ``evaluations`` (one
entry per task and data, replaced when measured again; atomically) and, in a run folder, refreshes ``README.md``
and ``report.md``, whose model-index and tables then carry the numbers.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..evals.classifier import evaluate_classifier
from ..evals.fineweb import evaluate_fineweb_test
from ..evals.hellaswag import evaluate_hellaswag
from ..evals.lm_eval import parse_tasks, run_lm_eval
from ..evals.record import record
from ..evals.text import evaluate_lm
from ..fs import atomic_write_json
from ..runs.folders import FolderKind, architecture_kind, check_model_folder, read_config

TASKS = ("text", "hellaswag", "fineweb-test", "lm-eval:TASK[,TASK...]")


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model folder: a classifier or a causal language model")
    parser.add_argument(
        "--task",
        default=None,
        help="text (loss/ppl/bpb on --data), hellaswag, fineweb-test or lm-eval:TASK[,TASK...] "
        "(default: text, or the classifier's accuracy for a classifier folder)",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="labelled table (classifier), text (text), HellaSwag JSONL (default: Hub Rowan/hellaswag validation), "
        "token stream (fineweb-test; default: Hub HuggingFaceFW/fineweb sample-10BT)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="per forward pass: sequences (text, default 8), items of 4 endings (hellaswag, default 8), windows "
        "(fineweb-test, part of the slice, default 6), or the harness's batch size (lm-eval, default 1)",
    )
    parser.add_argument("--limit", type=int, default=0, help="hellaswag/lm-eval: only the first N items (0: all)")
    parser.add_argument("--lm-eval-include", default=None, help="lm-eval: folder of extra task YAML files")
    parser.add_argument("--start-token", type=int, default=None, help="fineweb-test: first token (default 50_000_000)")
    parser.add_argument("--batches", type=int, default=None, help="fineweb-test: batches of windows (default 3200)")
    parser.add_argument("--seq-len", type=int, default=None, help="fineweb-test: tokens per window (default 1024)")
    parser.add_argument("--max-length", type=int, default=0, help="tokens per text/window (default: the context)")
    parser.add_argument("--stride", type=int, default=0, help="text: window step in tokens (default: --max-length)")
    parser.add_argument("--text-column", default=None, help="column holding the text (default: detected / 'text')")
    parser.add_argument("--label-column", default=None, help="classifier: column holding the label (default: detected)")
    parser.add_argument("--out", default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--record",
        action="store_true",
        help="also record the results in the model folder's metrics.json (and its cards) under 'evaluations'",
    )


TABLE_ROWS = {
    "classifier": ("accuracy", "f1", "precision", "recall", "examples", "truncated_texts"),
    "causal-lm": ("loss", "perplexity", "bpb", "tokens_scored", "bytes_scored", "documents", "windows"),
    "hellaswag": ("acc", "acc_norm", "acc_norm_tokens", "acc_stderr", "items", "contexts_cut"),
    "fineweb-test": ("loss", "perplexity", "bpb", "tokens_scored", "bytes_scored", "start_token", "batches",
                     "batch_size", "seq_len"),
}


def _table(results: dict) -> str:
    rows = [(k, results[k]) for k in TABLE_ROWS[results["kind"]] if k in results]
    lines = [f"{'metric':<16} value", f"{'-' * 16} {'-' * 12}"]
    for key, value in rows:
        lines.append(f"{key:<16} {value:.4f}" if isinstance(value, float) else f"{key:<16} {value}")
    if results["kind"] == "classifier":
        cm = results["confusion_matrix"]
        names, matrix = cm["labels"], cm["rows_true_columns_predicted"]
        width = max(8, *(len(n) for n in names))
        lines.append("")
        lines.append("confusion matrix (rows: true, columns: predicted)")
        lines.append(" " * width + "  " + "  ".join(f"{n:>{width}}" for n in names))
        for name, row in zip(names, matrix):
            lines.append(f"{name:>{width}}  " + "  ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def _check_numbers(args) -> None:
    checks = (
        ("--batch-size", args.batch_size, 1),
        ("--max-length", args.max_length, 0),
        ("--stride", args.stride, 0),
        ("--limit", args.limit, 0),
        ("--start-token", args.start_token, 0),
        ("--batches", args.batches, 1),
        ("--seq-len", args.seq_len, 1),
    )
    for flag, value, least in checks:
        if value is not None and value < least:
            raise UserError(f"{flag} {value} must be {'at least 1' if least else '0 or positive'}")


# flags that only some tasks read: (flag, attribute, the tasks that read it)
TASK_FLAGS = (
    ("--limit", "limit", ("hellaswag", "lm-eval")),
    ("--lm-eval-include", "lm_eval_include", ("lm-eval",)),
    ("--start-token", "start_token", ("fineweb-test",)),
    ("--batches", "batches", ("fineweb-test",)),
    ("--seq-len", "seq_len", ("fineweb-test",)),
    ("--max-length", "max_length", ("classifier", "text")),
    ("--stride", "stride", ("text",)),
    ("--text-column", "text_column", ("classifier", "text")),
    ("--label-column", "label_column", ("classifier",)),
)


def _check_flags_apply(args, task: str) -> None:
    """A flag the chosen task does not read is an error, not silently ignored."""
    family = "lm-eval" if task.startswith("lm-eval") else task
    for flag, attr, tasks in TASK_FLAGS:
        if getattr(args, attr) not in (None, 0) and family not in tasks:
            readers = ", ".join(f"--task {t}" if t != "classifier" else "a classifier" for t in tasks)
            raise UserError(f"{flag} does not apply to {family}: it is read by {readers}")


def _task(args, config: dict) -> str:
    task = args.task
    if task is None:
        return "classifier" if architecture_kind(config) == FolderKind.CLASSIFIER else "text"
    if task not in ("text", "hellaswag", "fineweb-test") and not task.startswith("lm-eval:") and task != "lm-eval":
        raise UserError(f"unknown --task '{task}': choose one of {', '.join(TASKS)}")
    if architecture_kind(config) == FolderKind.CLASSIFIER:
        raise UserError(
            f"--task {task} scores a causal language model, and {args.model} is a classifier: leave out --task to "
            "measure its accuracy on --data"
        )
    return task


def run(args) -> int:
    _check_numbers(args)
    # a classifier or a causal LM (not an adapter, a bare transformer or a GPT-2 folder); config.json checked
    folder = check_model_folder(args.model, accept=(FolderKind.CAUSAL_LM, FolderKind.CLASSIFIER))
    config = read_config(folder)
    task = _task(args, config)
    _check_flags_apply(args, task)
    if task in ("classifier", "text") and not args.data:
        raise UserError(
            f"--data is needed to score a {'classifier' if task == 'classifier' else 'causal LM'}: pass "
            f"{'a labelled table' if task == 'classifier' else 'a text file, folder, JSONL/CSV or Hub id'}"
        )
    table = None
    if task == "classifier":
        results = evaluate_classifier(
            folder, args.data, args.batch_size or 8, args.max_length, args.text_column, args.label_column
        )
    elif task == "text":
        results = evaluate_lm(
            folder, args.data, args.batch_size or 8, args.max_length, args.stride, args.text_column
        )
    elif task == "hellaswag":
        results = evaluate_hellaswag(folder, args.data, args.limit, args.batch_size or 8)
    elif task == "fineweb-test":
        results = evaluate_fineweb_test(
            folder, args.data, args.start_token, args.batches, args.batch_size, args.seq_len
        )
    else:
        results, table = run_lm_eval(
            folder, parse_tasks(task), args.limit, args.lm_eval_include, args.batch_size
        )
    print(f"{results['kind']} {folder} on {results.get('data') or task}")
    print(table if table is not None else _table(results))
    if args.out:
        atomic_write_json(Path(args.out), results)
        print(f"results written to {args.out}")
    if args.record:
        keys = record(folder, results)
        print(f"recorded in {folder / 'metrics.json'} under evaluations: {', '.join(keys)}")
    return 0


