"""``gpt-scratch evaluate --task lm-eval:TASK[,TASK...]``: EleutherAI's lm-evaluation-harness on a model folder.

lm-evaluation-harness is an optional extra (``pip install 'gpt-scratch[lm-eval]'``).  The folder is run through the
harness's own Python API, exactly as ``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True`` would::

    lm_eval.simple_evaluate(model="hf", model_args="pretrained=DIR,trust_remote_code=True",
                            tasks=[...], limit=N, batch_size=B, device=..., task_manager=TaskManager(include_path=P))

so any task the harness knows (``hellaswag``, ``arc_easy``, ``lambada_openai``, ...; they fetch their data from the
Hub) or a local task YAML found under ``--lm-eval-include PATH`` can be named.  The harness's results table is printed
as it formats it; the numbers are returned per task as ``{metric: value}`` (``acc``, ``acc_norm``, ... with the
harness's filter suffix ``,none`` dropped when it is the only filter).
"""

from __future__ import annotations

import difflib
import math
import os

import torch

from ..errors import UserError
from ..hub import offline_flag

INSTALL_HINT = "pip install 'gpt-scratch[lm-eval]'"


def _import_lm_eval():
    try:
        import lm_eval  # an optional extra
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError(
            f"--task lm-eval:... needs lm-evaluation-harness, an optional extra: {INSTALL_HINT}"
        ) from None
    return lm_eval, TaskManager


def parse_tasks(spec: str) -> list[str]:
    """``lm-eval:a,b`` -> ``["a", "b"]``."""
    names = [t.strip() for t in spec.split(":", 1)[1].split(",")] if ":" in spec else []
    names = [t for t in names if t]
    if not names:
        raise UserError("--task lm-eval: names no task: give lm-eval:TASK[,TASK...], e.g. lm-eval:hellaswag")
    return names


def task_manager(include_path: str | None = None):
    """The harness's task index (its built-in tasks plus those under ``include_path``), built once per path: it
    reads every task YAML the harness ships, which takes seconds."""
    _, TaskManager = _import_lm_eval()
    if include_path is not None and not os.path.exists(include_path):
        raise UserError(f"--lm-eval-include {include_path} does not exist: pass a folder of task YAML files")
    key = os.path.abspath(include_path) if include_path else None
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=include_path) if include_path else TaskManager()
    return _MANAGERS[key]


_MANAGERS: dict = {}


def model_args(model_dir) -> str:
    return f"pretrained={os.fspath(model_dir)},trust_remote_code=True"


def _metrics(row: dict) -> dict:
    """Numeric metrics of one task's row; ``acc,none`` becomes ``acc``."""
    out = {}
    for key, value in row.items():
        if key in ("alias", "name", "sample_len") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        metric, _, filt = key.partition(",")
        out[metric if filt in ("", "none") else key] = float(value)
    return out


def run_lm_eval(
    model_dir, tasks: list[str], limit: int = 0, include_path: str | None = None, batch_size: int | None = None
) -> tuple[dict, str]:
    """``(results, the harness's results table)`` for ``tasks`` on a model folder."""
    lm_eval, _ = _import_lm_eval()
    manager = task_manager(include_path)
    known = set(manager.all_tasks)
    for name in tasks:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            where = f" or under --lm-eval-include {include_path}" if include_path else ""
            raise UserError(f"lm-evaluation-harness has no task '{name}'{where}{hint}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args(model_dir),
            tasks=tasks,
            limit=limit or None,
            batch_size=batch_size or 1,
            device=device,
            task_manager=manager,
            log_samples=False,
        )
    except Exception as exc:
        if not (offline_flag() or isinstance(exc, ConnectionError)):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"lm-evaluation-harness could not run {', '.join(tasks)} ({type(exc).__name__}: {first}); "
            "tasks that read a Hub data set need the network: unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE, or point a "
            "local task YAML at local files with --lm-eval-include"
        ) from None
    if out is None:  # a non-zero rank of a distributed run
        return {}, ""
    from lm_eval.utils import make_table  # an optional extra

    table = make_table(out)
    if out.get("groups"):
        table += "\n" + make_table(out, "groups")
    per_task = {name: _metrics(row) for name, row in out["results"].items()}
    results = {
        "kind": "lm-eval",
        "model": str(model_dir),
        "tasks": per_task,
        "versions": {k: v for k, v in (out.get("versions") or {}).items()},
        "n-shot": out.get("n-shot"),
        "n-samples": out.get("n-samples"),
        "limit": limit or None,
        "lm_eval_version": out.get("lm_eval_version"),
        "dataset_paths": {
            name: cfg.get("dataset_path") for name, cfg in (out.get("configs") or {}).items() if isinstance(cfg, dict)
        },
        "dataset_names": {
            name: cfg.get("dataset_name") for name, cfg in (out.get("configs") or {}).items() if isinstance(cfg, dict)
        },
    }
    return _finite(results), table


def _finite(value):
    """JSON-safe: NaN/inf (an undefined stderr) become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
