"""``gpt-scratch experiments --config YAML``: interventions against a baseline at the same budget.

Each variant is one pretraining run that differs from the baseline in the keys it names; every run shares the data,
the tokenizer (trained once), the seed and the number of steps, so differences in test loss come from the
intervention alone (up to run-to-run noise, which a second seed would show).  The result is a markdown table of test
loss and its difference from the baseline, a JSON file, and a plot of validation loss curves.

The YAML::

    base: configs/tiny-cpu.yaml       # a pretraining config every run starts from
    out: runs/experiments
    common: {max_steps: 300}          # applied to every run, baseline included
    baseline: {grad_clip: 0.0, ...}   # the reference run
    variants:                         # name -> keys that differ from the baseline
      gradient-clipping: {grad_clip: 1.0}
      ...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from .. import settings
from ..data.sources import iter_documents
from ..errors import UserError
from ..fs import atomic_path, atomic_write_json, atomic_write_text
from ..runs.tokenizers import train_bpe_tokenizer
from ..settings import PretrainSettings

TOP_KEYS = {"base", "out", "common", "baseline", "variants", "overwrite"}


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiments YAML (see configs/experiments-tiny-cpu.yaml)")
    parser.add_argument("--out", help="output folder (overrides the YAML's out)")
    parser.add_argument("--only", nargs="*", help="run only these variants (and the baseline)")
    parser.add_argument("--overwrite", action="store_true", help="re-run variants whose run folder exists")


def load_experiment_runs(path: str, out_override: str | None = None) -> dict:
    """The experiments YAML at ``path``, resolved into every run's full settings, each checked before any starts.

    Returns ``{"out": folder, "runs": name -> settings, "changes": name -> the settings that differ from the
    baseline}``; the baseline comes first.
    """
    experiments_yaml = settings.load_yaml(path)
    unknown = set(experiments_yaml) - TOP_KEYS
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(sorted(unknown))} in '{path}': valid keys are "
                        f"{', '.join(sorted(TOP_KEYS))}")
    if not experiments_yaml.get("variants"):
        raise UserError(f"'{path}' defines no variants: add a 'variants:' mapping of name -> changed keys")
    base = {}
    if experiments_yaml.get("base"):
        base_path = Path(experiments_yaml["base"])
        if not base_path.is_absolute() and not base_path.exists():  # beside the plan, else a packaged recipe
            beside = Path(path).parent / base_path
            base_path = beside if beside.exists() else Path(base_path.name)
        base = settings.load_yaml(base_path)
    common, baseline = experiments_yaml.get("common") or {}, experiments_yaml.get("baseline") or {}
    runs = {"baseline": {**base, **common, **baseline}}
    for name, changes in experiments_yaml["variants"].items():
        if name == "baseline":
            raise UserError("a variant may not be called 'baseline'")
        runs[name] = {**runs["baseline"], **(changes or {})}
    for name, values in runs.items():
        values.pop("out", None)
        settings.check_keys(values, PretrainSettings, f"'{path}' (run '{name}')")
        try:  # every run's settings checked (ranges, choices) before the first one starts
            settings.build(PretrainSettings, values, f"'{path}' (run '{name}')")
        except UserError as exc:
            raise UserError(f"'{path}' (run '{name}'): {exc}") from None
    changes = {name: {k: v for k, v in values.items() if runs["baseline"].get(k) != v} for name, values in runs.items()}
    out = Path(out_override or experiments_yaml.get("out") or "runs/experiments")
    return {"out": out, "runs": runs, "changes": changes}


def _run_one(name: str, values: dict, changes: dict, out: Path, overwrite: bool) -> dict:
    run_dir = out / name
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file() and not overwrite:
        print(f"[{name}] already done: {run_dir}")
        return json.loads(metrics_file.read_text())
    cfg_file = out / "configs" / f"{name}.yaml"
    atomic_write_text(cfg_file, yaml.safe_dump({**values, "out": str(run_dir), "overwrite": True}, sort_keys=False))
    print(f"[{name}] {', '.join(f'{k}={v}' for k, v in changes.items()) or 'reference'}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "pretrain", "--config", str(cfg_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    atomic_write_text(out / "logs" / f"{name}.log", proc.stdout)
    if proc.returncode != 0:
        last = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise UserError(f"variant '{name}' failed: {last[0]} (full log: {out / 'logs' / (name + '.log')})")
    return json.loads(metrics_file.read_text())


def run(args) -> int:
    experiment = load_experiment_runs(args.config, args.out)
    out: Path = experiment["out"]
    runs: dict = experiment["runs"]
    if args.only:
        missing = [n for n in args.only if n not in runs]
        if missing:
            raise UserError(f"unknown variant(s) {', '.join(missing)}: choose from {', '.join(runs)}")
        runs = {n: v for n, v in runs.items() if n == "baseline" or n in args.only}
    baseline, changes = runs["baseline"], experiment["changes"]
    out.mkdir(parents=True, exist_ok=True)

    # One tokenizer and one token cache for every run, so that all of them see exactly the same data.
    shared = {"cache_dir": str(out / "cache")}
    if not baseline.get("tokenizer"):
        shared["tokenizer"] = str(_shared_tokenizer(baseline, out))
    results = {}
    for name, values in runs.items():
        results[name] = _run_one(name, {**values, **shared}, changes[name], out, args.overwrite)

    rows = summarise(results, changes)
    table = markdown_table(rows)
    atomic_write_text(out / "results.md", table)
    atomic_write_json(out / "results.json", {"runs": rows, "changes": {n: changes[n] for n in results}})
    plot_curves(results, out / "val_loss.png")
    print(table)
    print(f"results: {out / 'results.md'}, plot: {out / 'val_loss.png'}")
    return 0


def _shared_tokenizer(baseline: dict, out: Path) -> Path:
    folder = out / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        cfg = settings.build(PretrainSettings, {k: v for k, v in baseline.items() if k != "out"})
        docs = iter_documents(cfg.data, text_column=cfg.text_column)
        train_bpe_tokenizer(docs, cfg.vocab_size, out_dir=folder, overwrite=True)
    return folder


def summarise(results: dict, changes: dict) -> list[dict]:
    base = results["baseline"]["final"]
    rows = []
    for name, metrics in results.items():
        final = metrics["final"]
        rows.append(
            {
                "run": name,
                "changes": ", ".join(f"{k}={v}" for k, v in changes.get(name, {}).items()) or "reference",
                "test_loss": final.get("test_loss"),
                "delta": None if name == "baseline" else final.get("test_loss") - base.get("test_loss"),
                "val_loss": final.get("val_loss"),
                "elapsed_s": final.get("elapsed_s"),
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| run | change from baseline | test loss | Δ vs baseline | val loss | time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        delta = "—" if r["delta"] is None else f"{r['delta']:+.4f}"
        lines.append(
            f"| {r['run']} | {r['changes']} | {r['test_loss']:.4f} | {delta} | {r['val_loss']:.4f} | "
            f"{r['elapsed_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib  # plotting happens once, at the end of a run

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, metrics in results.items():
        points = [(h["step"], h["val_loss"]) for h in metrics["history"] if h.get("val_loss") is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=name, linewidth=2 if name == "baseline" else 1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss")
    ax.set_title("interventions at the same budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

