"""The numbers of a run as its cards show them: the final metrics of training (``metrics.json`` ``final``) and the
evaluations recorded afterwards (``evaluations``, written by ``gpt-scratch evaluate --record``), as table rows and as
the model-index results (``huggingface_hub.EvalResult``) of the model card's metadata."""

from __future__ import annotations

import math

from .card_format import data_name, fmt
from .folders import looks_like_hub_id
from .run_record import is_number

# metrics.json "final" key -> (model-index metric type, human name, dataset split).  Order = order in the card.
FINAL_METRICS = {
    "val_loss": ("loss", "validation loss", "validation"),
    "val_perplexity": ("perplexity", "validation perplexity", "validation"),
    "val_bpb": ("bpb", "validation bits per byte", "validation"),
    "test_loss": ("loss", "test loss", "test"),
    "test_perplexity": ("perplexity", "test perplexity", "test"),
    "test_bpb": ("bpb", "test bits per byte", "test"),
    "test_accuracy": ("accuracy", "test accuracy", "test"),
    "test_f1": ("f1", "test F1", "test"),
    "judge_score": ("judge_score", "LLM-as-a-judge score (0-100)", "test"),
}
FINAL_METRIC_LABELS = {
    "initial_val_loss": "validation loss before training", **{k: v[1] for k, v in FINAL_METRICS.items()}
}

# metrics.json "evaluations" (written by `gpt-scratch evaluate --record`): entry kind -> (key, model-index metric
# type, human name) of the numbers that go into the card.  lm-eval entries carry their own metric names.
EVALUATION_METRICS = {
    "hellaswag": (
        ("acc", "acc", "accuracy"),
        ("acc_norm", "acc_norm", "accuracy, length-normalised per byte (acc_norm)"),
        ("acc_norm_tokens", "acc_norm_tokens", "accuracy, normalised per token (llm.c's acc_norm)"),
    ),
    "fineweb-test": (
        ("loss", "loss", "test loss (nats per token)"),
        ("perplexity", "perplexity", "test perplexity"),
        ("bpb", "bpb", "test bits per byte"),
    ),
    "causal-lm": (
        ("loss", "loss", "loss (nats per token)"),
        ("perplexity", "perplexity", "perplexity"),
        ("bpb", "bpb", "bits per byte"),
    ),
    "classifier": (("accuracy", "accuracy", "accuracy"), ("f1", "f1", "macro F1")),
}


def benchmark(entry: dict) -> dict | None:
    """One recorded evaluation as the card shows it: the model-index data-set fields, ``label`` (a readable name of
    the data) and ``values``, ``[(metric type, metric name, value)]``; ``None`` for an entry it cannot read.

    The model-index groups results by data-set type, configuration and split, so local data (type ``custom``) is told
    apart by its name in the configuration field."""
    kind = entry.get("kind")
    data = entry.get("data")
    repo, _, config = str(data).partition(":") if isinstance(data, str) else ("", "", "")
    hub = looks_like_hub_id(repo)
    task_type = "text-classification" if kind == "classifier" else "text-generation"
    if kind == "hellaswag":
        where = "" if hub else f", {data_name(data)}"
        fields = {
            "dataset_type": repo if hub else "hellaswag",
            "dataset_name": "HellaSwag",
            "dataset_split": entry.get("split") or ("validation" if hub else None),
            "dataset_args": {"items": entry["items"]} if is_number(entry.get("items")) else None,
        }
        label = f"HellaSwag ({fmt(entry.get('items'))} items{where})"
    elif kind == "fineweb-test":
        fields = {
            "dataset_type": repo if hub else "custom",
            "dataset_config": (config or None) if hub else data_name(data),
            "dataset_name": f"FineWeb {config} test slice" if hub and config else f"{data_name(data)} test slice",
            "dataset_split": "train" if hub else None,
            "dataset_args": {k: entry[k] for k in ("start_token", "batches", "batch_size", "seq_len") if k in entry},
        }
        label = (f"{fields['dataset_name']} (from token {fmt(entry.get('start_token'))}, "
                 f"{fmt(entry.get('tokens_scored'))} tokens)")
    elif kind in ("causal-lm", "classifier"):
        name = data_name(data) or "custom data"
        fields = {"dataset_type": repo if hub else "custom",
                  "dataset_config": (config or None) if hub else name, "dataset_name": name}
        label = name
    elif kind == "lm-eval":
        task = str(entry.get("task") or "task")
        path = entry.get("dataset_path")
        shots = entry.get("n-shot")
        on_hub = looks_like_hub_id(path)
        fields = {
            "dataset_type": path if on_hub else "custom",
            "dataset_config": (entry.get("dataset_config") or None) if on_hub else f"lm-eval:{task}",
            "dataset_name": f"{task} (lm-evaluation-harness)",
            "dataset_args": {"num_few_shot": shots} if is_number(shots) else None,
        }
        label = f"lm-eval {task}" + (f", {fmt(shots)}-shot" if is_number(shots) else "")
        metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
        values = [(k, k, v) for k, v in metrics.items() if "stderr" not in k]
        return {"fields": {**fields, "task_type": task_type}, "label": label, "values": _finite_values(values)}
    else:
        return None
    values = [(t, name, entry.get(key)) for key, t, name in EVALUATION_METRICS[kind]]
    return {"fields": {**fields, "task_type": task_type}, "label": label, "values": _finite_values(values)}


def _finite_values(values) -> list[tuple[str, str, float]]:
    return [(t, n, float(v)) for t, n, v in values if is_number(v) and math.isfinite(v)]


def benchmarks(evaluations: dict) -> list[dict]:
    """The recorded evaluations that have numbers, in the order recorded (see :func:`benchmark`)."""
    out = []
    for entry in evaluations.values():
        bench = benchmark(entry)
        if bench is not None and bench["values"]:
            out.append(bench)
    return out


def result_rows(final: dict, evaluations: dict) -> list[list]:
    """``[name, value]`` rows of the model card's results table."""
    rows = [[label, fmt(final[key])] for key, label in FINAL_METRIC_LABELS.items() if key in final]
    for bench in benchmarks(evaluations):
        rows += [[f"{bench['label']}: {name}", fmt(value)] for _, name, value in bench["values"]]
    return rows


def eval_results(final: dict, evaluations: dict, task_type: str, dataset_id: str | None, dataset_name: str) -> list:
    """The model-index results: the finite final metrics on the training data, then the recorded evaluations."""
    from huggingface_hub import EvalResult

    results = []
    for key, (metric_type, metric_name, split) in FINAL_METRICS.items():
        value = final.get(key)
        if not is_number(value) or not math.isfinite(value):
            continue
        results.append(
            EvalResult(
                task_type=task_type,
                dataset_type=dataset_id or "custom",
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=float(value),
            )
        )
    for bench in benchmarks(evaluations):
        fields = {k: v for k, v in bench["fields"].items() if v is not None}
        for metric_type, metric_name, value in bench["values"]:
            results.append(EvalResult(metric_type=metric_type, metric_name=metric_name, metric_value=value, **fields))
    return results
