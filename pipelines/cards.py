"""Model cards (``README.md``) and report cards (``report.md``) for a run folder.

The model card is what the Hub shows: YAML metadata built through ``huggingface_hub.ModelCardData`` /
``EvalResult`` (license, library, pipeline tag, tags, datasets, base model, model-index results) and a Markdown body
rendered from one of the Jinja templates in ``model_cards/`` (base model, classifier, instruct).  The report card is a
one-page summary of the run for the people who trained it: config, metrics, curves, samples, environment.

Both are built only from what the folder holds (``config.json``, ``metrics.json``, the run record ``run_config.yaml``
(:mod:`pipelines.run_record`), ``plots/``); any of these may be missing or partly filled and the cards still render.
Nothing that looks like an access token is ever written into either card.  How numbers, tables and names are written
is in :mod:`pipelines.card_format`; what the metrics become in the cards, in :mod:`pipelines.card_results`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from .card_format import (
    data_name,
    duration,
    fenced,
    fmt,
    md_table,
    redact,
    redact_config,
    short_count,
    tidy,
)
from .card_results import benchmarks, eval_results, result_rows
from .folders import looks_like_hub_id
from .fsutil import atomic_write_text
from .prompts import format_alpaca  # the instruct workflow's prompt format (one place for it)
from .run_record import RunRecord, is_number

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "model_cards"
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
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    record = RunRecord.read(folder)
    metrics = _card_metrics(folder)
    architecture = _architecture(folder, record)
    kind = folder_kind(folder, architecture, metrics)
    settings, final, evaluations = record.settings, metrics["final"], metrics["evaluations"]
    task = "text-classification" if kind == "classifier" else "text-generation"
    model_name = repo_id.split("/")[-1] if repo_id else folder.resolve().name
    datasets = _hub_ids(settings.get("data"))
    base_models = _hub_ids(record.base_model)
    adapter = {}
    if _read_json(folder / "adapter_config.json"):  # a LoRA adapter folder (pipelines.lora)
        from .lora import adapter_card_facts

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
    kind = folder_kind(folder, architecture, metrics)
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


__all__ = [
    "render_model_card",
    "render_report",
    "write_report",
    "write_cards",
    "usage_snippet",
    "count_parameters",
    "folder_kind",
]
