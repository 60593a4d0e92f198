"""Model cards (``README.md``) and report cards (``report.md``) for a run folder.

The model card is what the Hub shows: YAML metadata built through ``huggingface_hub.ModelCardData`` /
``EvalResult`` (license, library, pipeline tag, tags, datasets, base model, model-index results) and a Markdown body
rendered from one of the Jinja templates in ``model_cards/`` (base model, classifier, instruct, LoRA adapter; shipped
inside the package as ``pipelines.model_cards``).  The report card is a one-page summary of the run for the people
who trained it: config, metrics, curves, samples, environment.

Both are built only from what the folder holds (``config.json``, ``metrics.json``, the run record ``run_config.yaml``
(:mod:`pipelines.runs.record`), ``plots/``); any of these may be missing or partly filled and the cards still render.
The final metrics of training (``metrics.json`` ``final``) and the evaluations recorded afterwards (``evaluations``,
written by ``gpt-scratch evaluate --record``) become table rows and model-index results.  A local path appears in a
card by its last component only, and nothing that looks like an access token is ever written into either card.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.instructions import format_alpaca  # the instruct workflow's prompt format (one place for it)
from ..fs import atomic_write_text, package_folder
from ..hub import looks_like_hub_id, redact
from ..settings import LORA_TARGETS
from .folders import ADAPTER_CONFIG_FILE, FolderKind, architecture_kind
from .record import RunRecord, is_number

_SECRET_KEY_RE = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|access_?key|auth|credentials?)$", re.I)


def redact_config(value, key: str = ""):
    """``value`` (a config) with the values of keys that name a secret (token, password, API key) redacted."""
    if key and _SECRET_KEY_RE.search(key) and value not in (None, "", False):
        return "<redacted>"
    if isinstance(value, dict):
        return {k: redact_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_config(v) for v in value]
    return value


def fmt(value) -> str:
    """A number or value as a short human string."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3g}"
        if value == int(value) and abs(value) >= 100:
            return f"{int(value):,}"
        return f"{value:.4g}" if abs(value) < 10 else f"{value:,.2f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def short_count(n: int | None) -> str:
    """A count as ``12.3M``, ``1.25K``."""
    if n is None:
        return "an unknown number of"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{unit}" if n / size >= 10 else f"{n / size:.2f}{unit}"
    return str(n)


def duration(seconds) -> str | None:
    """Seconds as ``42 s``, ``12.5 min`` or ``3.2 h``; ``None`` for anything that is not a finite number."""
    if not is_number(seconds) or not math.isfinite(seconds):
        return None
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _cell(value) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; empty string when there are no rows."""
    if not rows:
        return ""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def tidy(text: str) -> str:
    """Collapse runs of blank lines outside fenced code blocks (templates leave them where a section is empty)."""
    out: list[str] = []
    fence = None
    for line in text.split("\n"):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"(`{3,}|~{3,})", stripped)
            if match:
                fence = match.group(1)
            elif not stripped and (not out or not out[-1].strip()):
                continue
        elif stripped == fence:
            fence = None
        out.append(line)
    return "\n".join(out).strip() + "\n"


def fenced(text: str, lang: str = "") -> str:
    """``text`` in a fenced code block whose fence is longer than any run of backticks in it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def data_name(value) -> str | None:
    """A Hub id as it is; a local path by its last component only (no local folders in a public card)."""
    if value in (None, ""):
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    names = [str(v) if looks_like_hub_id(v) else (Path(str(v)).name or str(v)) for v in values]
    return ", ".join(names)



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


TEMPLATE_DIR = package_folder("pipelines.model_cards")  # model_cards/ of the repository
TEMPLATES = {"base": "base.md", "classifier": "classifier.md", "instruct": "instruct.md", "adapter": "adapter.md"}

EXAMPLE_INSTRUCTION = {"instruction": "Rewrite the sentence in passive voice.", "input": "The chef cooked the meal."}


# ------------------------------------------------------------------------------------------------------------------
# reading the folder
# ------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _card_metrics(folder: Path) -> dict:
    """What the cards show of ``metrics.json``: ``workflow`` as recorded, and ``final``, ``history``,
    ``environment``, ``evaluations`` and ``samples``, each empty where it is missing or not of its type."""
    metrics = _read_json(folder / "metrics.json")

    def part(key: str, kind: type):
        value = metrics.get(key)
        return value if isinstance(value, kind) else kind()

    return {
        "workflow": metrics.get("workflow"),
        "final": part("final", dict),
        "history": [r for r in part("history", list) if isinstance(r, dict)],
        "environment": part("environment", dict),
        "evaluations": {k: v for k, v in part("evaluations", dict).items() if isinstance(v, dict)},
        "samples": [s for s in part("samples", list) if isinstance(s, dict)],
    }


def _architecture(folder: Path, record: RunRecord) -> dict:
    """The model's architecture numbers: ``config.json`` over the run record's (an adapter folder has no
    ``config.json``: its record holds the base's)."""
    return {**record.architecture, **_read_json(folder / "config.json")}


def _plots(folder: Path) -> list[str]:
    plots = folder / "plots"
    pngs = plots.glob("*.png") if plots.is_dir() else []
    return sorted(p.relative_to(folder).as_posix() for p in pngs if not p.name.startswith("."))


def card_kind(folder: str | os.PathLike, config: dict | None = None, metrics: dict | None = None) -> str:
    """Which card a folder gets: ``"classifier"``, ``"instruct"`` or ``"base"``: from the saved architecture (its
    :class:`~pipelines.runs.folders.FolderKind`), then metrics.json's workflow."""
    folder = Path(folder)
    config = _read_json(folder / "config.json") if config is None else config
    metrics = _read_json(folder / "metrics.json") if metrics is None else metrics
    architectures = config.get("architectures") or []
    if architecture_kind(config) == FolderKind.CLASSIFIER:
        return "classifier"
    workflow = str(metrics.get("workflow") or "")
    if workflow == "finetune-classifier" and not architectures:
        return "classifier"
    if workflow == "finetune-instruct":
        return "instruct"
    return "base"


def count_parameters(config: dict, kind: str = "base") -> int | None:
    """Number of (unique) parameters of the model a config describes, computed from the numbers alone: for folders
    whose run record holds no measured count (written before it did, or by ``convert``)."""
    try:
        vocab = int(config["vocab_size"])
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        positions = int(config["max_position_embeddings"])
    except (KeyError, TypeError, ValueError):
        return None
    try:
        inner = int(config.get("intermediate_size") or 4 * hidden)
        labels = _num_labels(config) if kind == "classifier" else 0
    except (TypeError, ValueError):
        return None
    qkv_bias = bool(config.get("qkv_bias", True))
    block = (
        2 * 2 * hidden  # two LayerNorms
        + 3 * hidden * hidden + (3 * hidden if qkv_bias else 0)  # fused query/key/value projection
        + hidden * hidden + hidden  # attention output projection
        + hidden * inner + inner + inner * hidden + hidden  # feed-forward
    )
    total = vocab * hidden + positions * hidden + layers * block + 2 * hidden
    if kind == "classifier":
        total += hidden * labels + labels
    elif not config.get("tie_word_embeddings", True):
        total += vocab * hidden
    return total


def _num_labels(config: dict) -> int:
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    return int(config.get("num_labels") or 2)


def _labels(config: dict) -> list[str]:
    id2label = config.get("id2label")
    if not isinstance(id2label, dict):
        return []
    try:
        return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]
    except (TypeError, ValueError):
        return [str(v) for v in id2label.values()]


# ------------------------------------------------------------------------------------------------------------------
# the pieces of the cards
# ------------------------------------------------------------------------------------------------------------------


def _source_name(value) -> str:
    """A Hub id as it is, a local path as its last component marked "(local)"."""
    name = data_name(value) or ""
    return name if all(looks_like_hub_id(v) for v in (value if isinstance(value, (list, tuple)) else [value])) \
        else f"{name} (local)"


def _base_model_phrase(value) -> str:
    if not value or isinstance(value, (list, tuple, dict)):
        return ""
    if looks_like_hub_id(value):
        return f"[`{value}`](https://huggingface.co/{value})"
    return f"a local base model (`{data_name(value)}`)"


def _hub_ids(value) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if looks_like_hub_id(v)]


def _parameters(record: RunRecord, architecture: dict, kind: str) -> int | None:
    """The parameter count the run measured, else the one its architecture implies."""
    return record.parameters if record.parameters is not None else count_parameters(architecture, kind)


def _architecture_rows(architecture: dict, kind: str, params: int | None) -> list[list]:
    rows = [["parameters", fmt(params) if params is not None else "unknown"]]
    for key, label in (
        ("vocab_size", "vocabulary size"),
        ("max_position_embeddings", "context length (tokens)"),
        ("hidden_size", "hidden size (embedding dimension)"),
        ("num_hidden_layers", "transformer blocks"),
        ("num_attention_heads", "attention heads"),
        ("intermediate_size", "feed-forward width"),
        ("qkv_bias", "query/key/value bias"),
        ("tie_word_embeddings", "tied input/output embeddings"),
        ("hidden_dropout", "dropout"),
        ("layer_norm_epsilon", "LayerNorm epsilon"),
    ):
        if key in architecture:
            if key == "tie_word_embeddings" and kind == "classifier":
                continue
            rows.append([label, fmt(architecture[key])])
    if kind == "classifier":
        labels = _labels(architecture)
        rows.append(["labels", ", ".join(labels) if labels else fmt(_num_labels(architecture))])
    return rows


def _tokens_seen(metrics: dict):
    if is_number(metrics["final"].get("tokens_seen")):
        return metrics["final"]["tokens_seen"]
    tokens = [r.get("tokens") for r in metrics["history"] if is_number(r.get("tokens"))]
    return tokens[-1] if tokens else None


def _training_rows(record: RunRecord, metrics: dict, kind: str) -> list[list]:
    settings, final, env = record.settings, metrics["final"], metrics["environment"]
    rows: list[list] = []
    workflow = metrics["workflow"]
    if workflow:
        rows.append(["workflow", f"`gpt-scratch {workflow}`"])
    if record.base_model:
        rows.append(["base model", _source_name(record.base_model)])
    data = _source_name(settings.get("data")) if settings.get("data") else None
    if data or workflow == "pretrain":
        rows.append(["data", data or "the embedded demo corpus"])
    if record.corpus_tokens is not None:
        rows.append(["corpus size (tokens)", fmt(record.corpus_tokens)])
    if settings.get("tokenizer"):
        rows.append(["tokenizer", str(settings["tokenizer"])])
    elif kind == "base" and is_number(settings.get("vocab_size")):
        rows.append(["tokenizer", f"byte-level BPE trained for this run ({fmt(settings['vocab_size'])} tokens)"])
    tokens = _tokens_seen(metrics)
    if tokens is not None:
        rows.append(["tokens seen", fmt(tokens)])
    step = final.get("step")
    if step is None and metrics["history"]:
        step = metrics["history"][-1].get("step")
    if step is None:
        step = settings.get("max_steps")
    if step is not None:
        rows.append(["optimizer steps", fmt(step)])
    if is_number(settings.get("epochs")) and settings["epochs"] > 0:
        rows.append(["epochs", fmt(settings["epochs"])])
    batch = final.get("global_batch_examples")
    if batch is not None:
        rows.append(["global batch (sequences)", fmt(batch)])
    if settings.get("batch_size") is not None:
        text = f"{fmt(settings['batch_size'])} per device"
        accum = settings.get("gradient_accumulation_steps")
        if is_number(accum) and accum > 1:
            text += f" x {fmt(accum)} accumulation steps"
        rows.append(["micro-batch", text])
    if settings.get("learning_rate") is not None:
        schedule = str(settings.get("lr_schedule") or "")
        text = f"{fmt(settings['learning_rate'])} peak"
        if settings.get("warmup_steps"):
            text += f", {fmt(settings['warmup_steps'])} linear warmup steps"
        if schedule:
            text += f", then {schedule}"
            if schedule == "cosine" and settings.get("min_lr_ratio") is not None:
                text += f" down to {fmt(settings['min_lr_ratio'])} of the peak"
        rows.append(["learning rate", text])
    for key, label in (("weight_decay", "weight decay (AdamW)"), ("grad_clip", "gradient clipping (norm)"),
                       ("trainable", "trainable parameters"),
                       ("mask_prompt", "loss on response tokens only"), ("seed", "seed")):
        value = record.trainable if key == "trainable" else settings.get(key)
        if value is not None:
            rows.append([label, fmt(value)])
    precision = final.get("mixed_precision") or settings.get("mixed_precision")  # what "auto" resolved to
    if precision:
        rows.append(["precision", "fp32" if str(precision) == "no" else f"{precision} mixed precision"])
    device = env.get("device")
    world = final.get("world_size")
    if device or world:
        hardware = str(device or "")
        if is_number(world) and world > 1:
            hardware += f" ({fmt(world)} processes)"
        rows.append(["hardware", hardware.strip()])
    took = duration(final.get("elapsed_s"))
    if took:
        rows.append(["training time", took])
    software = ", ".join(f"{name} {env[name]}" for name in ("torch", "transformers") if env.get(name))
    if software:
        rows.append(["software", software])
    return rows


def usage_snippet(kind: str, model_ref: str, config: dict | None = None) -> str:
    """Python code that loads this folder (or Hub repo) through remote code and uses it."""
    ref = json.dumps(model_ref)
    context = int((config or {}).get("max_position_embeddings") or 1024)
    new_tokens = max(1, min(50, context // 2))
    if kind == "classifier":
        return (
            "from transformers import pipeline\n\n"
            f"classifier = pipeline(\"text-classification\", model={ref}, trust_remote_code=True)\n"
            "print(classifier([\"Congratulations! You have won a free prize, call now to claim it.\",\n"
            "                  \"Are we still meeting for lunch tomorrow?\"]))"
        )
    load = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"tokenizer = AutoTokenizer.from_pretrained({ref}, trust_remote_code=True)\n"
        f"model = AutoModelForCausalLM.from_pretrained({ref}, trust_remote_code=True)\n\n"
    )
    if kind == "instruct":
        # the Alpaca prompt, one source line per line of the prompt
        lines = format_alpaca(EXAMPLE_INSTRUCTION).splitlines(keepends=True)
        prompt = "prompt = (\n" + "".join(f"    {json.dumps(line)}\n" for line in lines) + ")\n"
    else:
        prompt = "prompt = \"Every effort moves you\"\n"
    return (
        load
        + prompt
        + "inputs = tokenizer(prompt, return_tensors=\"pt\")\n"
        + f"output = model.generate(**inputs, max_new_tokens={new_tokens}, do_sample=True, top_k=50, temperature=0.8)\n"
        + "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"
    )


def _last_sample(metrics: dict) -> str:
    if not metrics["samples"]:
        return ""
    sample = metrics["samples"][-1]
    text = f"{sample.get('prompt') or ''}{sample.get('text') or ''}"
    if not text.strip():
        return ""
    step = sample.get("step")
    head = f"Generated at step {fmt(step)} (prompt + continuation):" if step is not None else "A generated sample:"
    return head + "\n\n" + fenced(text, "text")


# ------------------------------------------------------------------------------------------------------------------
# the cards
# ------------------------------------------------------------------------------------------------------------------


def render_model_card(folder: str | os.PathLike, repo_id: str | None = None, base_model_id: str | None = None):
    """The model card of a run folder, as a ``huggingface_hub.ModelCard``.

    ``repo_id`` (``user/name``) is used as the model name and in the usage snippet; without it the snippet loads
    the folder by its path.  A LoRA adapter folder gets the adapter card (``model_cards/adapter.md``), naming its base:
    ``base_model_id`` (a Hub id), else the base its ``adapter_config.json`` names.
    """
    folder = Path(folder)
    record = RunRecord.read(folder)
    metrics = _card_metrics(folder)
    architecture = _architecture(folder, record)
    kind = card_kind(folder, architecture, metrics)
    settings, final, evaluations = record.settings, metrics["final"], metrics["evaluations"]
    task = "text-classification" if kind == "classifier" else "text-generation"
    model_name = repo_id.split("/")[-1] if repo_id else folder.resolve().name
    datasets = _hub_ids(settings.get("data"))
    base_models = _hub_ids(record.base_model)
    adapter = {}
    if _read_json(folder / ADAPTER_CONFIG_FILE):  # a LoRA adapter folder (pipelines.training.lora)
        adapter = adapter_card_facts(folder, kind, repo_id, base_model_id)
        base_models = [adapter["base_id"]] if adapter["base_id"] else []
    workflow = metrics["workflow"]
    data = data_name(settings.get("data")) or ("the embedded demo corpus" if workflow == "pretrain" else "")
    results = eval_results(final, evaluations, task, datasets[0] if datasets else None, data or "custom data")
    tags = ["gpt2", "gpt-scratch", "custom_code", task]
    if workflow == "pretrain":
        tags.append("from-scratch")
    tags += {"classifier": ["fine-tuned"], "instruct": ["instruction-tuned"]}.get(kind, [])
    tags += ["peft", "lora"] if adapter else []
    tokens = _tokens_seen(metrics)
    card_data = ModelCardData(
        license=str(settings.get("license") or "apache-2.0"),
        library_name="peft" if adapter else "transformers",
        pipeline_tag=task,
        language=settings.get("language") or "en",
        tags=tags,
        datasets=datasets or None,
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        model_name=model_name if results else None,  # only the model-index needs a name
        eval_results=results or None,
    )
    params = _parameters(record, architecture, kind)
    labels = _labels(architecture)
    recorded = benchmarks(evaluations)
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_DIR / TEMPLATES["adapter" if adapter else kind]),
        model_title=model_name,
        repo_id=repo_id or "",
        parameters=short_count(params),
        parameters_exact=fmt(params) if params is not None else "unknown",
        context_length=fmt(architecture.get("max_position_embeddings")),
        architecture_table=md_table(["setting", "value"], _architecture_rows(architecture, kind, params)),
        training_table=md_table(["setting", "value"], _training_rows(record, metrics, kind)),
        results_table=md_table(["metric", "value"], result_rows(final, evaluations)),
        has_benchmarks=bool(recorded),
        has_bpb=any(k.endswith("_bpb") for k in final) or any(t == "bpb" for b in recorded for t, _, _ in b["values"]),
        loss_plot="plots/loss.png" if "plots/loss.png" in _plots(folder) else "",
        usage=fenced(adapter["usage"] if adapter else usage_snippet(kind, repo_id or str(folder), architecture),
                     "python"),
        adapter=adapter,
        data_name=data,
        trained_from_scratch=workflow == "pretrain",
        tokens_seen=fmt(tokens) if tokens is not None else "",
        base_model_name=_base_model_phrase(adapter["base_ref"] if adapter else record.base_model),
        label_list=", ".join(f"`{label}`" for label in labels) if labels else "",
        sample=_last_sample(metrics),
        has_report=True,
        prompt_format=format_alpaca(
            {"instruction": "<what to do>", "input": "<optional input; the section is left out when empty>"}
        ),
        chat_template=(folder / "chat_template.jinja").is_file()
        or "chat_template" in _read_json(folder / "tokenizer_config.json"),
    )
    return ModelCard(tidy(redact(card.content)))


def _history_rows(history: list[dict], limit: int = 20) -> tuple[list[str], list[list]]:
    if not history:
        return [], []
    keys = ["step", "tokens", "train_loss", "val_loss", "val_perplexity", "val_bpb"]
    extra = sorted({k for r in history for k in r} - set(keys))
    keys = [k for k in keys + extra if any(k in r for r in history)]
    records = history
    if len(records) > limit:  # evenly spaced, always with the first and the last evaluation
        picks = sorted({round(i * (len(records) - 1) / (limit - 1)) for i in range(limit)})
        records = [records[i] for i in picks]
    return keys, [[fmt(r.get(k)) for k in keys] for r in records]


def render_report(folder: str | os.PathLike) -> str:
    """The report card of a run folder (Markdown): config, metrics, curves, samples, environment."""
    folder = Path(folder)
    record = RunRecord.read(folder)
    metrics = _card_metrics(folder)
    architecture = _architecture(folder, record)
    kind = card_kind(folder, architecture, metrics)
    final, history, samples = metrics["final"], metrics["history"], metrics["samples"]
    params = _parameters(record, architecture, kind)
    workflow = metrics["workflow"] or "unknown workflow"
    parts = [f"# Training report: {folder.resolve().name}", ""]
    summary = f"`gpt-scratch {workflow}` run; {kind} model"
    if params is not None:
        summary += f" with {fmt(params)} parameters"
    parts += [summary + ". The model card is in [README.md](README.md).", ""]

    final_rows = [[key, fmt(value)] for key, value in final.items()]
    parts += ["## Final metrics", "", md_table(["metric", "value"], final_rows) or "No final metrics recorded.", ""]

    bench_rows = [[b["label"], name, fmt(value)] for b in benchmarks(metrics["evaluations"])
                  for _, name, value in b["values"]]
    if bench_rows:
        parts += [
            "## Benchmark evaluations",
            "",
            "Recorded with `gpt-scratch evaluate --record` (all numbers are in metrics.json, `evaluations`).",
            "",
            md_table(["evaluation", "metric", "value"], bench_rows),
            "",
        ]

    plots = _plots(folder)
    if plots:
        parts += ["## Curves", ""]
        for plot in plots:
            parts += [f"![{Path(plot).stem}]({plot})", ""]

    keys, rows = _history_rows(history)
    if rows:
        parts += ["## Evaluations", "", md_table(keys, rows), ""]
        if len(rows) < len(history):
            parts += [f"({len(rows)} of {len(history)} evaluations shown; all are in metrics.json.)", ""]

    if samples:
        parts += ["## Samples", ""]
        for sample in samples[-5:]:
            text = f"{sample.get('prompt') or ''}{sample.get('text') or ''}"
            parts += [f"Step {fmt(sample.get('step'))}:", "", fenced(text, "text"), ""]

    arch_rows = _architecture_rows(architecture, kind, params)
    parts += ["## Model", "", md_table(["setting", "value"], arch_rows), ""]

    parts += ["## Run configuration", ""]
    recorded = record.to_dict()
    if recorded:
        dumped = yaml.safe_dump(redact_config(recorded), sort_keys=False, allow_unicode=True)
        parts += ["From `run_config.yaml`:", "", fenced(dumped, "yaml"), ""]
    else:
        parts += ["No run configuration recorded.", ""]

    env_rows = [[key, fmt(value)] for key, value in metrics["environment"].items()]
    for key in ("world_size", "elapsed_s"):
        if key in final:
            env_rows.append([key, fmt(final[key])])
    parts += ["## Environment", "", md_table(["", ""], env_rows) or "No environment recorded.", ""]
    return tidy(redact("\n".join(parts)))


def write_report(folder: str | os.PathLike) -> Path:
    """Write ``report.md`` into the run folder (atomically)."""
    path = Path(folder) / "report.md"
    atomic_write_text(path, render_report(folder))
    return path


def write_cards(
    folder: str | os.PathLike, repo_id: str | None = None, base_model_id: str | None = None
) -> tuple[Path, Path]:
    """Write the model card (``README.md``) and the report card (``report.md``) into the run folder atomically."""
    folder = Path(folder)
    card = render_model_card(folder, repo_id=repo_id, base_model_id=base_model_id)
    readme = folder / "README.md"
    atomic_write_text(readme, str(card))
    return readme, write_report(folder)


def adapter_usage_snippet(kind: str, adapter_ref: str, base_ref: str, labels: list[str] | None = None,
                          context: int | None = None) -> str:
    """Python code that loads the base model, applies this adapter through PEFT and uses it."""
    adapter, base = json.dumps(adapter_ref), json.dumps(base_ref)
    if kind == "classifier":
        labels = labels or ["LABEL_0", "LABEL_1"]
        return (
            "from peft import PeftModel\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline\n\n"
            f"labels = {json.dumps(list(labels))}\n"
            "base = AutoModelForSequenceClassification.from_pretrained(\n"
            f"    {base}, trust_remote_code=True, num_labels=len(labels),\n"
            "    id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},\n"
            ")\n"
            f"model = PeftModel.from_pretrained(base, {adapter}).merge_and_unload()\n"
            f"tokenizer = AutoTokenizer.from_pretrained({adapter})\n"
            "model.config.pad_token_id = tokenizer.pad_token_id\n"
            "classifier = pipeline(\"text-classification\", model=model, tokenizer=tokenizer)\n"
            "print(classifier([\"Congratulations! You have won a free prize, call now to claim it.\",\n"
            "                  \"Are we still meeting for lunch tomorrow?\"]))"
        )
    new_tokens = max(1, min(50, (context or 1024) // 2))
    lines = format_alpaca(EXAMPLE_INSTRUCTION).splitlines(keepends=True)
    return (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"base = AutoModelForCausalLM.from_pretrained({base}, trust_remote_code=True)\n"
        f"model = PeftModel.from_pretrained(base, {adapter}).merge_and_unload()\n"
        f"tokenizer = AutoTokenizer.from_pretrained({adapter})\n\n"
        + "prompt = (\n" + "".join(f"    {json.dumps(line)}\n" for line in lines) + ")\n"
        + "inputs = tokenizer(prompt, return_tensors=\"pt\")\n"
        + f"output = model.generate(**inputs, max_new_tokens={new_tokens}, do_sample=False)\n"
        + "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"
    )


def adapter_card_facts(folder, kind: str, repo_id: str | None = None, base_model_id: str | None = None) -> dict:
    """What the adapter card says about the adapter, from the folder alone (tolerant of missing pieces).

    ``base_model_id``: the base's Hub id when the adapter names a local folder (``publish --base-model-id``).
    """
    folder = Path(folder)

    def read(name):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    config = read(ADAPTER_CONFIG_FILE)
    record = RunRecord.read(folder)
    final = read("metrics.json").get("final")
    final = final if isinstance(final, dict) else {}
    named = str(config.get("base_model_name_or_path") or "")
    base_id = base_model_id or (named if looks_like_hub_id(named) else None)
    base_ref = base_id or named or "the base model"
    found = config.get("target_modules") or []
    found = [found] if isinstance(found, str) else list(found)
    ordered = [t for t in LORA_TARGETS if t in found] + sorted(t for t in found if t not in LORA_TARGETS)
    context = record.architecture.get("max_position_embeddings")
    trainable = final.get("trainable_parameters", record.trainable_parameters)
    return {
        "base_id": base_id,
        "base_ref": base_ref,
        "classifier": kind == "classifier",
        "rank": fmt(config.get("r")),
        "alpha": f"{config['lora_alpha']:g}" if isinstance(config.get("lora_alpha"), (int, float)) else "unknown",
        "targets": ", ".join(f"`{t}`" for t in ordered) or "the chosen Linears",
        "trainable": fmt(trainable) if trainable is not None else "an unrecorded number of",
        "usage": adapter_usage_snippet(kind, repo_id or str(folder), base_ref, record.labels, context),
    }


