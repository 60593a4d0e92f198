"""``evaluate --record``: an evaluation's summary kept in the model folder's ``metrics.json`` under ``evaluations``
(one entry per task and data, replaced when measured again; written atomically); in a run folder the cards are
refreshed, so their model-index and tables carry the numbers.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from ..errors import UserError
from ..fs import atomic_write_json
from ..hub import looks_like_hub_id
from ..runs.cards import write_cards

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
        write_cards(folder)
    return list(entries)


