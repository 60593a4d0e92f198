"""Checkpoints of the training loop: written atomically, read back checked, and the test-only fault hook.

A checkpoint is ``<out>/checkpoints/step-N/``: Accelerate's ``save_state`` (weights, optimizer, the random states
of every rank) plus ``trainer_state.json``, the loop's own state (step, tokens seen, history, the workflow's state).
It is written into ``.tmp-step-N`` and renamed into place, so a folder named ``step-N`` is always complete; the
newest ``keep`` stay.  Reading one checks everything a resumed run needs to be exact -- the loop state, the random
state of this rank, the global batch -- and says in one line what is wrong with a damaged one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import torch

from .errors import UserError
from .fsutil import atomic_write_json

STATE_FILE = "trainer_state.json"
DAMAGED = "remove that folder to resume from the checkpoint before it (if any), or start over with --overwrite"

# ---- the test-only fault hook ----------------------------------------------------------------------------------
# GPT_SCRATCH_FAULT=POINT:N[:ACTION] makes the process SIGKILL itself (ACTION "kill", the default) or hang until it
# is killed ("hang") at the N-th time it reaches POINT -- for step, at the end of optimizer step N (after that step's
# checkpoint).  Points: step, checkpoint-write (inside a checkpoint write: the state saved into the temporary
# folder, not yet renamed into place), final-write (the final model folder staged, nothing published), final-publish
# (after each file of the final folder is moved into place).  tests/test_faults.py uses it to interrupt a run at
# exact moments; unset (always, outside the tests) it costs one dictionary lookup.
FAULT_ENV = "GPT_SCRATCH_FAULT"
_fault_counts: dict[str, int] = {}


def fault_point(name: str, index: int | None = None) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    wanted_index, _, action = rest.partition(":")
    if index is None:
        index = _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if str(index) != wanted_index:
        return
    import signal
    import sys

    print(f"{FAULT_ENV}: {action or 'kill'} at {name} {index}", file=sys.stderr, flush=True)
    if action == "hang":
        while True:
            time.sleep(60)
    os.kill(os.getpid(), signal.SIGKILL)


def _checkpoints(folder: Path) -> list[Path]:
    found = [p for p in folder.glob("step-*") if p.is_dir() and re.fullmatch(r"step-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = _checkpoints(Path(out_dir) / "checkpoints")
    return found[-1] if found else None


def save_checkpoint(accelerator, out_dir: Path, state: dict, keep: int) -> Path:
    """``<out_dir>/checkpoints/step-<state["step"]>``: Accelerate's state plus ``state`` as the loop's state, written
    atomically on every rank together; the newest ``keep`` checkpoints stay (never fewer than the one written)."""
    is_main = accelerator.is_main_process
    folder = Path(out_dir) / "checkpoints"
    final = folder / f"step-{state['step']}"
    tmp = folder / f".tmp-step-{state['step']}"
    if is_main:
        # temporary folders of interrupted writes (this step's or an earlier one's) go: this run holds --out
        for stale in folder.glob(".tmp-step-*") if folder.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if is_main:
        fault_point("checkpoint-write")
        atomic_write_json(tmp / STATE_FILE, state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoints(folder)[: -max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
        from .runfolder import checkpoint_written

        checkpoint_written(out_dir)  # an --overwrite's old run is no longer needed
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, global_batch: int) -> dict:
    """Restore Accelerate's state (weights, optimizer, random states) from checkpoint ``path`` and return the loop's
    state saved with it; anything that would make the resumed run inexact is a one-line :class:`UserError`."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise UserError(f"checkpoint '{path}' is incomplete (no {STATE_FILE}): remove it and resume again")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no step number")
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint '{path}': {STATE_FILE} is damaged ({exc}): {DAMAGED}") from None
    rng = _read_rng_state(accelerator, path)
    try:
        accelerator.load_state(str(path))
    except Exception as exc:  # a damaged weights, optimizer or sampler file: one line, not a traceback
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"checkpoint '{path}' cannot be loaded ({type(exc).__name__}: {text}): {DAMAGED}") from None
    if not torch.equal(torch.get_rng_state(), rng["torch_manual_seed"]):
        raise UserError(
            f"checkpoint '{path}': the random state in {_rng_file(accelerator, path).name} was not restored, so the "
            f"resumed run would not be exact: {DAMAGED}"
        )
    if state.get("global_batch") not in (None, global_batch):
        raise UserError(
            f"checkpoint '{path}' was trained with a global batch of {state['global_batch']} examples, this run "
            f"has {global_batch}: resume with the same batch size, accumulation and number of devices"
        )
    return state


def _rng_file(accelerator, path: Path) -> Path:
    return Path(path) / f"random_states_{accelerator.process_index}.pkl"


def _read_rng_state(accelerator, path: Path) -> dict:
    """The random state a checkpoint saved for this rank, checked: Accelerate skips an unreadable one silently,
    and the resumed run would then draw different dropout masks than the uninterrupted run."""
    from accelerate.utils import load

    file = _rng_file(accelerator, path)
    if not file.is_file():
        raise UserError(
            f"checkpoint '{path}' has no {file.name} (the random state of rank {accelerator.process_index}), "
            f"so the resumed run would not be exact: {DAMAGED}"
        )
    try:
        states = load(str(file))  # as Accelerate reads it: weights_only, never running code from the file
        torch_state = states["torch_manual_seed"]
        if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != torch.uint8:
            raise TypeError("torch_manual_seed is not a byte tensor")
        import random

        random.Random().setstate(states["random_state"])  # checks the Python state's shape without using it
    except Exception as exc:  # anything unpickling a tampered file raises
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(
            f"checkpoint '{path}': {file.name} (the saved random state) is damaged ({type(exc).__name__}: {text}), "
            f"so the resumed run would not be exact: {DAMAGED}"
        ) from None
    return states
