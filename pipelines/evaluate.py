"""``gpt-scratch evaluate``: score a model folder on a data set or a benchmark.

``--task`` picks what is measured (default: by the folder -- a classifier is scored on a labelled table, a causal LM
on text):

* a **classifier** folder (the ``--out`` of ``finetune-classifier``) on a labelled table (any format
  ``pipelines.data.read_labeled_table`` reads): accuracy, macro precision/recall/F1, per-class scores and the
  confusion matrix.  Labels the model does not know are refused with the list of those it does.
* ``text`` -- a **causal LM** on text (a file, a folder, JSONL/CSV records or a Hub id, read by
  ``pipelines.data.iter_documents``): the documents are tokenised with the folder's tokenizer, joined with an
  end-of-text token after each (as in pretraining), and cut into windows of the model's context.  With ``--stride``
  below the window length the windows overlap and each token is scored once, in the first window where it has the
  most context before it (the usual sliding-window perplexity).  Reported: mean next-token loss (nats), perplexity
  ``exp(loss)`` and bits per byte (``pipelines.bpb``: the bytes of the text the scored tokens decode to).
* ``hellaswag`` -- 4-way completion scoring, ``acc`` and ``acc_norm`` (``pipelines.hellaswag``).
* ``fineweb-test`` -- loss, perplexity and bits per byte on a fixed slice of a token stream, by default FineWeb's
  ``sample-10BT`` (``pipelines.fineweb_eval``).
* ``lm-eval:TASK[,TASK...]`` -- EleutherAI's lm-evaluation-harness, an optional extra (``pipelines.lm_eval_task``).

Prints a small table; ``--out FILE`` also writes the numbers as JSON (atomically; HellaSwag's include every item's
log-likelihoods).  ``--record`` adds the summary to the model folder's ``metrics.json`` under ``evaluations`` (one
entry per task and data, replaced when measured again; atomically) and, in a run folder, refreshes ``README.md``
and ``report.md``, whose model-index and tables then carry the numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .errors import UserError
from .folders import looks_like_hub_id
from .losses import token_cross_entropy


TASKS = ("text", "hellaswag", "fineweb-test", "lm-eval:TASK[,TASK...]")


def add_evaluate_arguments(parser) -> None:
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


def _is_classifier(config: dict) -> bool:
    from .folders import architecture_kind

    return architecture_kind(config) == "classifier"


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate_classifier(model_dir, data, batch_size=8, max_length=0, text_column=None, label_column=None) -> dict:
    from . import data as data_module
    from .classify import load_classifier
    from .classify_data import encode_texts
    from .classify_metrics import classification_metrics, predict_ids

    model, tokenizer = load_classifier(str(model_dir))
    known = {str(v): int(k) for k, v in model.config.id2label.items()}
    names = [model.config.id2label[i] for i in range(len(known))]
    records = data_module.read_labeled_table(data, text_column, label_column, min_classes=1)
    unknown = sorted({r["label"] for r in records} - set(known))
    if unknown:
        raise UserError(
            f"{data} has label {', '.join(map(repr, unknown))}, which the classifier does not know; its labels are "
            f"{', '.join(map(repr, names))}: check --label-column or the file"
        )
    context = model.config.max_position_embeddings
    length = min(max_length or context, context)
    ids, truncated = encode_texts(tokenizer, [r["text"] for r in records], length)
    model.to(_device())
    probs = predict_ids(model, ids, tokenizer.pad_token_id, batch_size=batch_size)
    y_true = [known[r["label"]] for r in records]
    scores = classification_metrics(y_true, probs.argmax(-1).tolist(), names)
    return {"kind": "classifier", "model": str(model_dir), "data": str(data), **scores, "truncated_texts": truncated}


def lm_windows(tokens: list[int], length: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """``(input ids, target ids)`` windows over ``tokens``; targets already scored by an earlier window are -100.

    Window ``k`` starts at ``k * stride`` and reads up to ``length`` tokens; it predicts the token after each of them.
    Every token but the first is a target exactly once.
    """
    windows = []
    scored_until = 0  # targets are tokens[1:]; those at index <= scored_until are counted already
    start = 0
    last = len(tokens) - 1
    while True:
        end = min(start + length, last)  # inputs tokens[start:end], targets tokens[start + 1 : end + 1]
        targets = [t if start + 1 + i > scored_until else -100 for i, t in enumerate(tokens[start + 1 : end + 1])]
        windows.append((tokens[start:end], targets))
        scored_until = end
        if end >= last:
            return windows
        start += stride


def evaluate_lm(model_dir, data, batch_size=8, max_length=0, stride=0, text_column=None) -> dict:
    from . import data as data_module
    from .generate import quiet_hf
    from .generate import load_model_and_tokenizer

    with quiet_hf():
        model, tokenizer = load_model_and_tokenizer(str(model_dir))
    context = model.config.max_position_embeddings
    length = min(max_length or context, context)
    stride = stride or length
    if stride > length:
        raise UserError(f"--stride {stride} is longer than the window ({length} tokens): use at most {length}")
    eos = tokenizer.eos_token_id
    tokens: list[int] = []
    documents = 0
    for doc in data_module.iter_documents(str(data), text_column=text_column or "text"):
        tokens.extend(tokenizer(doc)["input_ids"])
        if eos is not None:
            tokens.append(eos)
        documents += 1
    if len(tokens) < 2:
        raise UserError(f"{data} holds fewer than two tokens: give more text to score")
    windows = lm_windows(tokens, length, stride)
    device = _device()
    model.to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            width = max(len(x) for x, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (x, y) in enumerate(chunk):
                input_ids[row, : len(x)] = torch.tensor(x)
                labels[row, : len(y)] = torch.tensor(y)
                mask[row, : len(x)] = 1
            logits = model(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).logits.float()
            labels = labels.to(device)
            flat = logits.reshape(-1, logits.shape[-1])
            total += token_cross_entropy(flat, labels.reshape(-1), reduction="sum").item()
            count += int((labels != -100).sum())
    loss = total / count
    from .bpb import bits_per_byte, count_bytes

    n_bytes = count_bytes(tokenizer, tokens[1:])  # every token but the first is a target exactly once
    return {
        "kind": "causal-lm",
        "model": str(model_dir),
        "data": str(data),
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bpb": bits_per_byte(loss, count, n_bytes),
        "tokens_scored": count,
        "bytes_scored": n_bytes,
        "documents": documents,
        "windows": len(windows),
        "window_length": length,
        "stride": stride,
    }


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


# ------------------------------------------------------------------------------------------------------------------
# --record: the numbers into metrics.json (and the cards)
# ------------------------------------------------------------------------------------------------------------------

SUMMARY_DROP = ("per_item", "per_class", "confusion_matrix", "model")


def _public_data(data) -> str | None:
    """A Hub id (``owner/name[:config]``) as it is; a local path by its last component (metrics.json is published)."""
    if data is None:
        return None
    text = str(data)
    if looks_like_hub_id(text, config=True):
        return text
    return Path(text).name or text


def evaluation_entries(results: dict) -> dict[str, dict]:
    """``{key: summary}`` to record: one entry per task (and data, for text and classifier evaluations)."""
    import datetime

    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    kind = results["kind"]
    if kind == "lm-eval":
        entries = {}
        for task, metrics in results["tasks"].items():
            entries[f"lm-eval:{task}"] = {
                "kind": "lm-eval",
                "task": task,
                "metrics": metrics,
                "dataset_path": (results.get("dataset_paths") or {}).get(task),
                "dataset_config": (results.get("dataset_names") or {}).get(task),
                "n-shot": (results.get("n-shot") or {}).get(task),
                "limit": results.get("limit"),
                "lm_eval_version": results.get("lm_eval_version"),
                "recorded_at": when,
            }
        return entries
    summary = {k: v for k, v in results.items() if k not in SUMMARY_DROP}
    summary["data"] = _public_data(results.get("data"))
    summary["recorded_at"] = when
    if kind in ("hellaswag", "fineweb-test"):
        key = kind
    else:
        key = f"{'text' if kind == 'causal-lm' else 'classifier'}:{summary['data']}"
    return {key: summary}


def record(folder: Path, results: dict) -> list[str]:
    """Merge the results into ``folder/metrics.json`` under ``evaluations`` (atomically); refresh the cards of a
    run folder.  Returns the keys written."""
    from .fsutil import atomic_write_json

    path = folder / "metrics.json"
    metrics = {}
    if path.is_file():
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UserError(f"--record: {path} is not valid JSON ({exc}); fix or remove it") from None
        if not isinstance(metrics, dict):
            raise UserError(f"--record: {path} does not hold a JSON object; fix or remove it")
    run_folder = "workflow" in metrics
    entries = evaluation_entries(results)
    evaluations = metrics.get("evaluations") if isinstance(metrics.get("evaluations"), dict) else {}
    metrics["evaluations"] = {**evaluations, **entries}
    try:
        atomic_write_json(path, metrics)
    except OSError as exc:
        raise UserError(f"--record: cannot write {path} ({exc})") from None
    if run_folder:
        from .cards import write_cards

        write_cards(folder)
    return list(entries)


# ------------------------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------------------------


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
        return "classifier" if _is_classifier(config) else "text"
    if task not in ("text", "hellaswag", "fineweb-test") and not task.startswith("lm-eval:") and task != "lm-eval":
        raise UserError(f"unknown --task '{task}': choose one of {', '.join(TASKS)}")
    if _is_classifier(config):
        raise UserError(
            f"--task {task} scores a causal language model, and {args.model} is a classifier: leave out --task to "
            "measure its accuracy on --data"
        )
    return task


def evaluate_main(args) -> int:
    from .fsutil import atomic_write_json
    from .folders import check_model_folder, read_config

    _check_numbers(args)
    # a classifier or a causal LM (not an adapter, a bare transformer or a GPT-2 folder); config.json checked
    folder = check_model_folder(args.model, accept=("causal-lm", "classifier"))
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
        from .hellaswag import evaluate_hellaswag

        results = evaluate_hellaswag(folder, args.data, args.limit, args.batch_size or 8)
    elif task == "fineweb-test":
        from .fineweb_eval import evaluate_fineweb_test

        results = evaluate_fineweb_test(
            folder, args.data, args.start_token, args.batches, args.batch_size, args.seq_len
        )
    else:
        from .lm_eval_task import parse_tasks, run_lm_eval

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
