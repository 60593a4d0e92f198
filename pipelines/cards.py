"""Model cards (``README.md``) and report cards (``report.md``) for a run folder.

The model card is what the Hub shows: YAML metadata built through ``huggingface_hub.ModelCardData`` /
``EvalResult`` (license, library, pipeline tag, tags, datasets, base model, model-index results) and a Markdown body
rendered from one of the Jinja templates in ``model_cards/`` (base model, classifier, instruct).  The report card is a
one-page summary of the run for the people who trained it: config, metrics, curves, samples, environment.

Both are built only from what the folder holds (``config.json``, ``metrics.json``, ``run_config.yaml``, ``plots/``);
any of these may be missing or partly filled and the cards still render.  Nothing that looks like an access token is
ever written into either card.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import yaml

from .fsutil import atomic_write_text

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "model_cards"
TEMPLATES = {"base": "base.md", "classifier": "classifier.md", "instruct": "instruct.md", "adapter": "adapter.md"}

from .prompts import format_alpaca  # the instruct workflow's prompt format (one place for it)

EXAMPLE_INSTRUCTION = {"instruction": "Rewrite the sentence in passive voice.", "input": "The chef cooked the meal."}

# metrics.json "final" key -> (model-index metric type, human name, dataset split).  Order = order in the card.
EVAL_METRICS = {
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
RESULT_ROWS = {"initial_val_loss": "validation loss before training", **{k: v[1] for k, v in EVAL_METRICS.items()}}

# metrics.json "evaluations" (written by `gpt-scratch evaluate --record`): entry kind -> (key, model-index metric
# type, human name) of the numbers that go into the card.  lm-eval entries carry their own metric names.
BENCHMARK_METRICS = {
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

_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{16,}")
_SECRET_KEY_RE = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|access_?key|auth|credentials?)$", re.I)
_DATA_SUFFIXES = {".txt", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".gz", ".zip", ".md", ".yaml"}


# ------------------------------------------------------------------------------------------------------------------
# reading the folder
# ------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


class _Run:
    """Everything the cards need from one folder, read once and tolerant of missing pieces."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.config = _read_json(self.folder / "config.json")
        self.metrics = _read_json(self.folder / "metrics.json")
        self.run_config = _read_yaml(self.folder / "run_config.yaml")
        self.adapter = _read_json(self.folder / "adapter_config.json")  # a LoRA adapter folder (pipelines.lora)
        if self.adapter and not self.config and isinstance(self.run_config.get("model_config"), dict):
            self.config = dict(self.run_config["model_config"])  # the base's architecture, as the run recorded it
        self.generation = _read_json(self.folder / "generation_config.json")
        final = self.metrics.get("final")
        self.final = final if isinstance(final, dict) else {}
        history = self.metrics.get("history")
        self.history = [r for r in history if isinstance(r, dict)] if isinstance(history, list) else []
        env = self.metrics.get("environment")
        self.environment = env if isinstance(env, dict) else {}
        evaluations = self.metrics.get("evaluations")
        self.evaluations = (
            {k: v for k, v in evaluations.items() if isinstance(v, dict)} if isinstance(evaluations, dict) else {}
        )
        samples = self.metrics.get("samples")
        self.samples = [s for s in samples if isinstance(s, dict)] if isinstance(samples, list) else []
        self.kind = folder_kind(self.folder, self.config, self.metrics)
        plots = self.folder / "plots"
        pngs = plots.glob("*.png") if plots.is_dir() else []
        self.plots = sorted(p.relative_to(self.folder).as_posix() for p in pngs if not p.name.startswith("."))

    def model_config(self) -> dict:
        """Architecture numbers: config.json first, then the run config's ``model`` section."""
        cfg = dict(self.run_config.get("model") or {}) if isinstance(self.run_config.get("model"), dict) else {}
        cfg.update(self.config)
        return cfg


def folder_kind(folder: str | os.PathLike, config: dict | None = None, metrics: dict | None = None) -> str:
    """``"classifier"``, ``"instruct"`` or ``"base"``: from the saved architecture, then metrics.json's workflow."""
    folder = Path(folder)
    config = _read_json(folder / "config.json") if config is None else config
    metrics = _read_json(folder / "metrics.json") if metrics is None else metrics
    architectures = config.get("architectures") or []
    from .folders import architecture_kind  # the one definition of the folder kinds

    if architecture_kind(config) == "classifier":
        return "classifier"
    workflow = str(metrics.get("workflow") or "")
    if workflow == "finetune-classifier" and not architectures:
        return "classifier"
    if workflow == "finetune-instruct":
        return "instruct"
    return "base"


def looks_like_hub_id(value) -> bool:
    """True for ``owner/name`` strings that are not local paths (a Hub dataset or model id)."""
    if not isinstance(value, str) or value.count("/") != 1:
        return False
    if value.startswith((".", "/", "~")) or "\\" in value or Path(value).exists():
        return False
    if Path(value).suffix.lower() in _DATA_SUFFIXES:
        return False
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*", value) is not None


def count_parameters(config: dict, kind: str = "base") -> int | None:
    """Number of (unique) parameters of the model a config describes, computed from the numbers alone."""
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
# formatting
# ------------------------------------------------------------------------------------------------------------------


def redact(text: str) -> str:
    """Replace anything that looks like a Hugging Face token, and the token in the environment, with ``***``."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return _TOKEN_RE.sub("hf_***", text)


def _redact_config(value, key: str = ""):
    if key and _SECRET_KEY_RE.search(key) and value not in (None, "", False):
        return "<redacted>"
    if isinstance(value, dict):
        return {k: _redact_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_config(v) for v in value]
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


def _count(n: int | None) -> str:
    if n is None:
        return "an unknown number of"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{unit}" if n / size >= 10 else f"{n / size:.2f}{unit}"
    return str(n)


def _duration(seconds) -> str | None:
    if not _is_number(seconds) or not math.isfinite(seconds):
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


def _fence(text: str, lang: str = "") -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


# ------------------------------------------------------------------------------------------------------------------
# the pieces of the cards
# ------------------------------------------------------------------------------------------------------------------


def _data_name(value) -> str | None:
    """A Hub id as it is; a local path by its last component only (no local folders in a public card)."""
    if value in (None, ""):
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    names = [str(v) if looks_like_hub_id(v) else (Path(str(v)).name or str(v)) for v in values]
    return ", ".join(names)


def _source_name(value) -> str:
    """A Hub id as it is, a local path as its last component marked "(local)"."""
    name = _data_name(value) or ""
    return name if all(looks_like_hub_id(v) for v in (value if isinstance(value, (list, tuple)) else [value])) \
        else f"{name} (local)"


def _base_model_phrase(value) -> str:
    if not value or isinstance(value, (list, tuple, dict)):
        return ""
    if looks_like_hub_id(value):
        return f"[`{value}`](https://huggingface.co/{value})"
    return f"a local base model (`{_data_name(value)}`)"


def _hub_ids(value) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if looks_like_hub_id(v)]


def _architecture_rows(run: _Run, params: int | None) -> list[list]:
    cfg = run.model_config()
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
        if key in cfg:
            if key == "tie_word_embeddings" and run.kind == "classifier":
                continue
            rows.append([label, fmt(cfg[key])])
    if run.kind == "classifier":
        labels = _labels(cfg)
        rows.append(["labels", ", ".join(labels) if labels else fmt(_num_labels(cfg))])
    return rows


def _tokens_seen(run: _Run):
    if _is_number(run.final.get("tokens_seen")):
        return run.final["tokens_seen"]
    tokens = [r.get("tokens") for r in run.history if _is_number(r.get("tokens"))]
    return tokens[-1] if tokens else None


def _training_rows(run: _Run) -> list[list]:
    rc, final, env = run.run_config, run.final, run.environment
    rows: list[list] = []
    workflow = run.metrics.get("workflow")
    if workflow:
        rows.append(["workflow", f"`gpt-scratch {workflow}`"])
    base_model = rc.get("base_model")
    if base_model:
        rows.append(["base model", _source_name(base_model)])
    data = _source_name(rc.get("data")) if rc.get("data") else None
    if data or workflow == "pretrain":
        rows.append(["data", data or "the embedded demo corpus"])
    if _is_number(rc.get("corpus_tokens")):
        rows.append(["corpus size (tokens)", fmt(rc["corpus_tokens"])])
    if rc.get("tokenizer"):
        rows.append(["tokenizer", str(rc["tokenizer"])])
    elif run.kind == "base" and _is_number(rc.get("vocab_size")):
        rows.append(["tokenizer", f"byte-level BPE trained for this run ({fmt(rc['vocab_size'])} tokens)"])
    tokens = _tokens_seen(run)
    if tokens is not None:
        rows.append(["tokens seen", fmt(tokens)])
    step = final.get("step")
    if step is None and run.history:
        step = run.history[-1].get("step")
    if step is None:
        step = rc.get("max_steps")
    if step is not None:
        rows.append(["optimizer steps", fmt(step)])
    if _is_number(rc.get("epochs")) and rc["epochs"] > 0:
        rows.append(["epochs", fmt(rc["epochs"])])
    batch = final.get("global_batch_examples")
    if batch is not None:
        rows.append(["global batch (sequences)", fmt(batch)])
    if rc.get("batch_size") is not None:
        text = f"{fmt(rc['batch_size'])} per device"
        accum = rc.get("gradient_accumulation_steps")
        if _is_number(accum) and accum > 1:
            text += f" x {fmt(accum)} accumulation steps"
        rows.append(["micro-batch", text])
    if rc.get("learning_rate") is not None:
        schedule = str(rc.get("lr_schedule") or "")
        text = f"{fmt(rc['learning_rate'])} peak"
        if rc.get("warmup_steps"):
            text += f", {fmt(rc['warmup_steps'])} linear warmup steps"
        if schedule:
            text += f", then {schedule}"
            if schedule == "cosine" and rc.get("min_lr_ratio") is not None:
                text += f" down to {fmt(rc['min_lr_ratio'])} of the peak"
        rows.append(["learning rate", text])
    for key, label in (("weight_decay", "weight decay (AdamW)"), ("grad_clip", "gradient clipping (norm)"),
                       ("trainable", "trainable parameters"),
                       ("mask_prompt", "loss on response tokens only"), ("seed", "seed")):
        if rc.get(key) is not None:
            rows.append([label, fmt(rc[key])])
    precision = rc.get("mixed_precision")
    if precision:
        rows.append(["precision", "fp32" if str(precision) == "no" else f"{precision} mixed precision"])
    device = env.get("device")
    world = final.get("world_size")
    if device or world:
        hardware = str(device or "")
        if _is_number(world) and world > 1:
            hardware += f" ({fmt(world)} processes)"
        rows.append(["hardware", hardware.strip()])
    duration = _duration(final.get("elapsed_s"))
    if duration:
        rows.append(["training time", duration])
    software = ", ".join(f"{name} {env[name]}" for name in ("torch", "transformers") if env.get(name))
    if software:
        rows.append(["software", software])
    return rows


def _benchmark(entry: dict) -> dict | None:
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
        where = "" if hub else f", {_data_name(data)}"
        fields = {
            "dataset_type": repo if hub else "hellaswag",
            "dataset_name": "HellaSwag",
            "dataset_split": entry.get("split") or ("validation" if hub else None),
            "dataset_args": {"items": entry["items"]} if _is_number(entry.get("items")) else None,
        }
        label = f"HellaSwag ({fmt(entry.get('items'))} items{where})"
    elif kind == "fineweb-test":
        fields = {
            "dataset_type": repo if hub else "custom",
            "dataset_config": (config or None) if hub else _data_name(data),
            "dataset_name": f"FineWeb {config} test slice" if hub and config else f"{_data_name(data)} test slice",
            "dataset_split": "train" if hub else None,
            "dataset_args": {k: entry[k] for k in ("start_token", "batches", "batch_size", "seq_len") if k in entry},
        }
        label = (f"{fields['dataset_name']} (from token {fmt(entry.get('start_token'))}, "
                 f"{fmt(entry.get('tokens_scored'))} tokens)")
    elif kind in ("causal-lm", "classifier"):
        name = _data_name(data) or "custom data"
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
            "dataset_args": {"num_few_shot": shots} if _is_number(shots) else None,
        }
        label = f"lm-eval {task}" + (f", {fmt(shots)}-shot" if _is_number(shots) else "")
        metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
        values = [(k, k, v) for k, v in metrics.items() if "stderr" not in k]
        return {"fields": {**fields, "task_type": task_type}, "label": label, "values": _finite_values(values)}
    else:
        return None
    values = [(t, name, entry.get(key)) for key, t, name in BENCHMARK_METRICS[kind]]
    return {"fields": {**fields, "task_type": task_type}, "label": label, "values": _finite_values(values)}


def _finite_values(values) -> list[tuple[str, str, float]]:
    return [(t, n, float(v)) for t, n, v in values if _is_number(v) and math.isfinite(v)]


def _benchmarks(run: _Run) -> list[dict]:
    """The recorded evaluations (metrics.json ``evaluations``) that have numbers, in the order recorded."""
    out = []
    for entry in run.evaluations.values():
        bench = _benchmark(entry)
        if bench is not None and bench["values"]:
            out.append(bench)
    return out


def _result_rows(run: _Run) -> list[list]:
    rows = [[label, fmt(run.final[key])] for key, label in RESULT_ROWS.items() if key in run.final]
    for bench in _benchmarks(run):
        rows += [[f"{bench['label']}: {name}", fmt(value)] for _, name, value in bench["values"]]
    return rows


def _eval_results(run: _Run, task_type: str, dataset_id: str | None, dataset_name: str) -> list:
    from huggingface_hub import EvalResult

    results = []
    for key, (metric_type, metric_name, split) in EVAL_METRICS.items():
        value = run.final.get(key)
        if not _is_number(value) or not math.isfinite(value):
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
    for bench in _benchmarks(run):
        fields = {k: v for k, v in bench["fields"].items() if v is not None}
        for metric_type, metric_name, value in bench["values"]:
            results.append(EvalResult(metric_type=metric_type, metric_name=metric_name, metric_value=value, **fields))
    return results


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


def _last_sample(run: _Run) -> str:
    if not run.samples:
        return ""
    sample = run.samples[-1]
    text = f"{sample.get('prompt') or ''}{sample.get('text') or ''}"
    if not text.strip():
        return ""
    step = sample.get("step")
    head = f"Generated at step {fmt(step)} (prompt + continuation):" if step is not None else "A generated sample:"
    return head + "\n\n" + _fence(text, "text")


# ------------------------------------------------------------------------------------------------------------------
# the cards
# ------------------------------------------------------------------------------------------------------------------


def render_model_card(folder: str | os.PathLike, repo_id: str | None = None, base_model_id: str | None = None):
    """The model card of a run folder, as a ``huggingface_hub.ModelCard``.

    ``repo_id`` (``user/name``) is used as the model name and in the usage snippet; without it the snippet loads
    the folder by its path.  A LoRA adapter folder gets the adapter card (``model_cards/adapter.md``), naming its base:
    ``base_model_id`` (a Hub id), else the base its ``adapter_config.json`` names.
    """
    from huggingface_hub import ModelCard, ModelCardData

    run = _Run(folder)
    rc = run.run_config
    cfg = run.model_config()
    kind = run.kind
    task = "text-classification" if kind == "classifier" else "text-generation"
    model_name = repo_id.split("/")[-1] if repo_id else run.folder.resolve().name
    datasets = _hub_ids(rc.get("data"))
    base_models = _hub_ids(rc.get("base_model"))
    adapter = {}
    if run.adapter:
        from .lora import adapter_card_facts

        adapter = adapter_card_facts(run.folder, kind, repo_id, base_model_id)
        base_models = [adapter["base_id"]] if adapter["base_id"] else []
    workflow = run.metrics.get("workflow")
    data_name = _data_name(rc.get("data")) or ("the embedded demo corpus" if workflow == "pretrain" else "")
    eval_results = _eval_results(run, task, datasets[0] if datasets else None, data_name or "custom data")
    tags = ["gpt2", "gpt-scratch", "custom_code", task]
    if workflow == "pretrain":
        tags.append("from-scratch")
    tags += {"classifier": ["fine-tuned"], "instruct": ["instruction-tuned"]}.get(kind, [])
    tags += ["peft", "lora"] if adapter else []
    tokens = _tokens_seen(run)
    language = rc.get("language") or "en"
    card_data = ModelCardData(
        license=str(rc.get("license") or "apache-2.0"),
        library_name="peft" if adapter else "transformers",
        pipeline_tag=task,
        language=language,
        tags=tags,
        datasets=datasets or None,
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        model_name=model_name if eval_results else None,  # only the model-index needs a name
        eval_results=eval_results or None,
    )
    params = count_parameters(cfg, kind)
    labels = _labels(cfg)
    loss_plot = "plots/loss.png" if "plots/loss.png" in run.plots else ""
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_DIR / TEMPLATES["adapter" if adapter else kind]),
        model_title=model_name,
        repo_id=repo_id or "",
        parameters=_count(params),
        parameters_exact=fmt(params) if params is not None else "unknown",
        context_length=fmt(cfg.get("max_position_embeddings")),
        architecture_table=md_table(["setting", "value"], _architecture_rows(run, params)),
        training_table=md_table(["setting", "value"], _training_rows(run)),
        results_table=md_table(["metric", "value"], _result_rows(run)),
        has_benchmarks=bool(_benchmarks(run)),
        has_bpb=any(k.endswith("_bpb") for k in run.final)
        or any(t == "bpb" for b in _benchmarks(run) for t, _, _ in b["values"]),
        loss_plot=loss_plot,
        usage=_fence(
            adapter["usage"] if adapter else usage_snippet(kind, repo_id or str(run.folder), cfg), "python"
        ),
        adapter=adapter,
        data_name=data_name,
        trained_from_scratch=workflow == "pretrain",
        tokens_seen=fmt(tokens) if tokens is not None else "",
        base_model_name=_base_model_phrase(adapter["base_ref"] if adapter else rc.get("base_model")),
        label_list=", ".join(f"`{label}`" for label in labels) if labels else "",
        sample=_last_sample(run),
        has_report=True,
        prompt_format=format_alpaca(
            {"instruction": "<what to do>", "input": "<optional input; the section is left out when empty>"}
        ),
        chat_template=(run.folder / "chat_template.jinja").is_file()
        or "chat_template" in _read_json(run.folder / "tokenizer_config.json"),
    )
    content = tidy(redact(card.content))
    return ModelCard(content)


def _history_rows(run: _Run, limit: int = 20) -> tuple[list[str], list[list]]:
    if not run.history:
        return [], []
    keys = ["step", "tokens", "train_loss", "val_loss", "val_perplexity", "val_bpb"]
    extra = sorted({k for r in run.history for k in r} - set(keys))
    keys = [k for k in keys + extra if any(k in r for r in run.history)]
    records = run.history
    if len(records) > limit:  # evenly spaced, always with the first and the last evaluation
        picks = sorted({round(i * (len(records) - 1) / (limit - 1)) for i in range(limit)})
        records = [records[i] for i in picks]
    return keys, [[fmt(r.get(k)) for k in keys] for r in records]


def render_report(folder: str | os.PathLike) -> str:
    """The report card of a run folder (Markdown): config, metrics, curves, samples, environment."""
    run = _Run(folder)
    cfg = run.model_config()
    params = count_parameters(cfg, run.kind)
    workflow = run.metrics.get("workflow") or "unknown workflow"
    parts = [f"# Training report: {run.folder.resolve().name}", ""]
    summary = f"`gpt-scratch {workflow}` run; {run.kind} model"
    if params is not None:
        summary += f" with {fmt(params)} parameters"
    parts += [summary + ". The model card is in [README.md](README.md).", ""]

    final_rows = [[key, fmt(value)] for key, value in run.final.items()]
    parts += ["## Final metrics", "", md_table(["metric", "value"], final_rows) or "No final metrics recorded.", ""]

    bench_rows = [[b["label"], name, fmt(value)] for b in _benchmarks(run) for _, name, value in b["values"]]
    if bench_rows:
        parts += [
            "## Benchmark evaluations",
            "",
            "Recorded with `gpt-scratch evaluate --record` (all numbers are in metrics.json, `evaluations`).",
            "",
            md_table(["evaluation", "metric", "value"], bench_rows),
            "",
        ]

    if run.plots:
        parts += ["## Curves", ""]
        for plot in run.plots:
            parts += [f"![{Path(plot).stem}]({plot})", ""]

    keys, rows = _history_rows(run)
    if rows:
        parts += ["## Evaluations", "", md_table(keys, rows), ""]
        if len(rows) < len(run.history):
            parts += [f"({len(rows)} of {len(run.history)} evaluations shown; all are in metrics.json.)", ""]

    if run.samples:
        parts += ["## Samples", ""]
        for sample in run.samples[-5:]:
            text = f"{sample.get('prompt') or ''}{sample.get('text') or ''}"
            parts += [f"Step {fmt(sample.get('step'))}:", "", _fence(text, "text"), ""]

    arch_rows = _architecture_rows(run, params)
    parts += ["## Model", "", md_table(["setting", "value"], arch_rows), ""]

    parts += ["## Run configuration", ""]
    if run.run_config:
        dumped = yaml.safe_dump(_redact_config(run.run_config), sort_keys=False, allow_unicode=True)
        parts += ["From `run_config.yaml`:", "", _fence(dumped, "yaml"), ""]
    else:
        parts += ["No run configuration recorded.", ""]

    env_rows = [[key, fmt(value)] for key, value in run.environment.items()]
    for key in ("world_size", "elapsed_s"):
        if key in run.final:
            env_rows.append([key, fmt(run.final[key])])
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


__all__ = [
    "render_model_card",
    "render_report",
    "write_report",
    "write_cards",
    "usage_snippet",
    "count_parameters",
    "folder_kind",
    "looks_like_hub_id",
    "redact",
]
