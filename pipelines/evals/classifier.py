"""How well a classifier does: class probabilities, accuracy during training, and the final scores of each split.

* :func:`predict_ids`: class probabilities of already tokenised texts (``classify``, ``evaluate`` and the final
  scores of ``finetune-classifier`` all predict through it);
* :func:`accuracy_hook`: the ``on_eval`` hook of ``finetune-classifier``, adding training accuracy (on a fixed,
  seeded sample) and validation accuracy to each evaluation, through the Trainer's cross-rank
  :meth:`~pipelines.training.trainer.Trainer.evaluate` with :func:`correct_fraction` as the metric;
* :func:`classification_metrics` and :func:`score_splits`: accuracy, macro precision/recall/F1 and the confusion
  matrix.

Metrics: the ``evaluate`` library's metrics (``evaluate.load("accuracy")`` ...) are scripts fetched from the Hub and
do not load offline, so the scores are computed with scikit-learn (which those scripts call anyway).
"""

from __future__ import annotations

import torch

from ..data.collates import pad_collate_classification
from ..data.tables import encode_texts, read_labeled_table
from ..errors import UserError
from ..runs.folders import FolderKind, open_model


@torch.no_grad()
def predict_ids(model, input_ids: list[list[int]], pad_id: int, batch_size: int = 32, device=None) -> torch.Tensor:
    """Class probabilities (n, num_labels) for already tokenised texts; batches of similar length, right-padded."""
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    probs = torch.zeros(len(input_ids), model.config.num_labels)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = pad_collate_classification([{"input_ids": input_ids[i], "label": 0} for i in chunk], pad_id)
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False
        ).logits
        probs[chunk] = torch.softmax(logits.float(), dim=-1).cpu()
    if was_training:
        model.train()
    return probs


def classification_metrics(y_true: list[int], y_pred: list[int], names: list[str], prefix: str = "") -> dict:
    """Accuracy, macro precision/recall/F1, per-class scores and the confusion matrix (rows: true, columns: predicted).

    Computed with scikit-learn: the ``evaluate`` library's metric scripts come from the Hub and do not load offline.
    """
    from sklearn.metrics import (  # only classifier scores need scikit-learn
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    labels = list(range(len(names)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    per_p, per_r, per_f, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    return {
        f"{prefix}accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}precision": float(precision),
        f"{prefix}recall": float(recall),
        f"{prefix}f1": float(f1),
        f"{prefix}examples": len(y_true),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, per_p, per_r, per_f, support)
        },
        "confusion_matrix": {
            "labels": list(names),
            "rows_true_columns_predicted": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        },
    }


def correct_fraction(model, batch: dict):
    """A metric for :meth:`Trainer.evaluate`: the fraction of the batch classified right, and its size."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return (logits.argmax(-1) == batch["labels"]).double().mean(), int(batch["labels"].numel())


def accuracy_hook(datasets: dict, train_examples: int, seed: int):
    """The ``on_eval`` hook that adds ``train_accuracy`` (on ``train_examples`` training examples drawn once by
    ``seed``; 0: all) and ``val_accuracy`` to each evaluation's record (``None`` for an empty split)."""
    n_train = len(datasets["train"])
    rng = torch.Generator().manual_seed(seed)
    train_subset = sorted(torch.randperm(n_train, generator=rng)[: min(train_examples or n_train, n_train)].tolist())
    val_indices = list(range(len(datasets["val"])))

    def accuracy(trainer, dataset, indices):
        return trainer.evaluate(dataset, correct_fraction, indices=indices) if indices else None

    def on_eval(trainer, record):
        record.update(
            train_accuracy=accuracy(trainer, datasets["train"], train_subset),
            val_accuracy=accuracy(trainer, datasets["val"], val_indices),
        )

    return on_eval


def score_splits(model, datasets: dict, names: list[str], pad_id: int, batch_size: int) -> tuple[dict, dict]:
    """The final scores: ``{split}_accuracy`` of every non-empty split plus the test split's ``test_*`` scores, and
    the test report (``per_class`` scores and the ``confusion_matrix``; empty without a test split)."""
    scores, report = {}, {}
    for name, part in datasets.items():
        if not part:
            continue
        probs = predict_ids(model, [x["input_ids"] for x in part], pad_id, batch_size=batch_size)
        split = classification_metrics([x["label"] for x in part], probs.argmax(-1).tolist(), names, f"{name}_")
        scores[f"{name}_accuracy"] = split[f"{name}_accuracy"]
        if name == "test":
            scores.update({k: v for k, v in split.items() if k.startswith("test_")})
            report = {"per_class": split["per_class"], "confusion_matrix": split["confusion_matrix"]}
    return scores, report


def confusion_matrix_lines(report: dict, names: list[str]) -> list[str]:
    """The test report's confusion matrix as aligned text lines (rows: true, columns: predicted)."""
    matrix = report["confusion_matrix"]["rows_true_columns_predicted"]
    width = max(len(n) for n in names)
    lines = ["test confusion matrix (rows: true, columns: predicted):"]
    lines.append("  " + " " * width + "  " + "  ".join(f"{n:>{width}}" for n in names))
    lines += [f"  {n:>{width}}  " + "  ".join(f"{v:>{width}}" for v in row) for n, row in zip(names, matrix)]
    return lines


def evaluate_classifier(model_dir, data, batch_size=8, max_length=0, text_column=None, label_column=None) -> dict:
    model, tokenizer = open_model(model_dir, (FolderKind.CLASSIFIER, FolderKind.ADAPTER))
    known = {str(v): int(k) for k, v in model.config.id2label.items()}
    names = [model.config.id2label[i] for i in range(len(known))]
    records = read_labeled_table(data, text_column, label_column, min_classes=1)
    unknown = sorted({r["label"] for r in records} - set(known))
    if unknown:
        raise UserError(
            f"{data} has label {', '.join(map(repr, unknown))}, which the classifier does not know; its labels are "
            f"{', '.join(map(repr, names))}: check --label-column or the file"
        )
    context = model.config.max_position_embeddings
    length = min(max_length or context, context)
    ids, truncated = encode_texts(tokenizer, [r["text"] for r in records], length)
    probs = predict_ids(model, ids, tokenizer.pad_token_id, batch_size=batch_size)
    y_true = [known[r["label"]] for r in records]
    scores = classification_metrics(y_true, probs.argmax(-1).tolist(), names)
    return {"kind": "classifier", "model": str(model_dir), "data": str(data), **scores, "truncated_texts": truncated}


