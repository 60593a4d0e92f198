"""``gpt-scratch evaluate``: score a model folder on a data set.

* A **classifier** folder (the ``--out`` of ``finetune-classifier``) is scored on a labelled table (any format
  ``pipelines.data.read_labeled_table`` reads): accuracy, macro precision/recall/F1, per-class scores and the confusion
  matrix.  Labels the model does not know are refused with the list of those it does.
* A **causal LM** folder is scored on text (a file, a folder, JSONL/CSV records or a Hub id, read by
  ``pipelines.data.iter_documents``): the documents are tokenised with the folder's tokenizer, joined with an
  end-of-text token after each (as in pretraining), and cut into windows of the model's context.  With ``--stride``
  below the window length the windows overlap and each token is scored once, in the first window where it has the
  most context before it (the usual sliding-window perplexity).  Reported: mean next-token loss (nats) and
  perplexity ``exp(loss)``.

Prints a small table; ``--out FILE`` also writes the numbers as JSON (atomically).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model folder: a classifier or a causal language model")
    parser.add_argument("--data", required=True, help="labelled table (classifier) or text file/folder/Hub id (LM)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    parser.add_argument("--max-length", type=int, default=0, help="tokens per text/window (default: the context)")
    parser.add_argument("--stride", type=int, default=0, help="LM: window step in tokens (default: --max-length)")
    parser.add_argument("--text-column", default=None, help="column holding the text (default: detected / 'text')")
    parser.add_argument("--label-column", default=None, help="classifier: column holding the label (default: detected)")
    parser.add_argument("--out", default=None, help="also write the results to this JSON file")


def _is_classifier(config: dict) -> bool:
    return any("SequenceClassification" in str(a) for a in config.get("architectures") or [])


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate_classifier(model_dir, data, batch_size=8, max_length=0, text_column=None, label_column=None) -> dict:
    from . import data as data_module
    from .classify import classification_metrics, encode_texts, load_classifier, predict_ids

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
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            count += int((labels != -100).sum())
    loss = total / count
    return {
        "kind": "causal-lm",
        "model": str(model_dir),
        "data": str(data),
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "tokens_scored": count,
        "documents": documents,
        "windows": len(windows),
        "window_length": length,
        "stride": stride,
    }


def _table(results: dict) -> str:
    if results["kind"] == "classifier":
        rows = [(k, results[k]) for k in ("accuracy", "f1", "precision", "recall", "examples", "truncated_texts")]
    else:
        rows = [(k, results[k]) for k in ("loss", "perplexity", "tokens_scored", "documents", "windows")]
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


def run(args) -> int:
    from .fsutil import atomic_write_json
    from .generate import check_model_folder

    for flag, value in (("--batch-size", args.batch_size), ("--max-length", args.max_length), ("--stride", args.stride)):
        if value < (1 if flag == "--batch-size" else 0):
            raise UserError(f"{flag} {value} must be {'at least 1' if flag == '--batch-size' else '0 or positive'}")
    folder = check_model_folder(args.model)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"--model {folder}: config.json is not valid JSON ({exc})") from None
    if _is_classifier(config):
        results = evaluate_classifier(
            folder, args.data, args.batch_size, args.max_length, args.text_column, args.label_column
        )
    else:
        results = evaluate_lm(folder, args.data, args.batch_size, args.max_length, args.stride, args.text_column)
    print(f"{results['kind']} {folder} on {args.data}")
    print(_table(results))
    if args.out:
        atomic_write_json(Path(args.out), results)
        print(f"results written to {args.out}")
    return 0
