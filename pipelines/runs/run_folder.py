"""The run folder: every training workflow's ``--out`` is itself a loadable Hugging Face model folder.

Layout::

    config.json  model.safetensors  configuration_gpt_scratch.py  modeling_gpt_scratch.py   (the model + its code)
    tokenizer.json  tokenizer_config.json  ...                                              (the tokenizer)
    generation_config.json   README.md (model card)   report.md (report card)
    metrics.json (final and per-eval metrics)   run_config.yaml (the run record)   plots/*.png
    checkpoints/step-N/  (for --resume)

**One writer at a time.**  A run claims its ``--out`` with an operating-system file lock on ``.gpt-scratch.lock``
(``filelock``, ``flock`` underneath): the kernel releases it the moment its owner exits, however it ends, so after a
``kill -9`` the next run with ``--resume`` simply takes it.  While a run lives, a second one on the same folder is
refused with one line naming the owner (pid, host, start time: the record the owner writes into the lock file).

**The folder's state** (:func:`folder_state`): absent, empty, "unfinished" (only run leftovers -- tokenizer, cache,
splits, run_config.yaml, an empty checkpoints/, temporary folders -- and no checkpoint and no final model: a run that
stopped before its first checkpoint), "resumable" (a complete checkpoint), "finished" (a final model), "foreign"
(anything else).  An unfinished folder is accepted again as it is (its leftovers are cleared, the token cache is
kept), with or without --resume, so an interruption before the first checkpoint never needs --overwrite.  A run that
fails (an error, Ctrl-C) before its first checkpoint removes what it wrote, leaving --out as it found it; with
--overwrite the old contents wait in a temporary folder until the new run's first checkpoint (or its end) and come
back if it fails before that.  Stale temporary folders of interrupted writes are removed by the next run.

**Checkpoints** are ``checkpoints/step-N/``: Accelerate's ``save_state`` (weights, optimizer, the random states of
every rank) plus ``trainer_state.json``, the loop's own state.  Each is written into ``.tmp-step-N`` and renamed
into place, so a folder named ``step-N`` is always complete; the newest ``keep`` stay.  Reading one checks
everything a resumed run needs to be exact and says in one line what is wrong with a damaged one.

**The final write**: everything is written into a staging folder inside the run folder first and then renamed into
place file by file, so a killed run leaves either the old or the new version of each file.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import os
import platform
import random
import re
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from accelerate.utils import load
from filelock import FileLock, Timeout

from ..errors import UserError
from ..fs import apply_umask, atomic_write_json, atomic_write_text, fault_point, publish_files, temp_dir
from .cards import write_cards
from .folders import CODE_FILES, CONFIG_FILE
from .record import RUN_RECORD_FILE, RunRecord, as_run_record
from .tokenizers import portable_tokenizer, strip_local_files_only

MODEL_FILES = (CONFIG_FILE, "model.safetensors", *CODE_FILES)
LOCK_NAME = ".gpt-scratch.lock"


# entries a run writes before its final model; an --out holding only these (and temporary files) is "unfinished"
RUN_LEFTOVERS = ("tokenizer", "cache", "splits", "checkpoints", "plots", RUN_RECORD_FILE, LOCK_NAME)


KEEP_ON_RESTART = ("cache", LOCK_NAME)  # the token cache is keyed by data and tokenizer: still valid


# any of these means the run wrote (part of) its final model folder
FINAL_MARKERS = (
    "model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "metrics.json", "merged"
)


def _is_temp(name: str) -> bool:
    return name.startswith((".final-", ".tmp-step-", f"{LOCK_NAME}.")) or (
        name.startswith(".") and name.endswith((".tmp", ".old")) and name != LOCK_NAME
    )


def _entries(out: Path) -> list[str]:
    try:
        return sorted(p.name for p in out.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def folder_state(out: str | Path) -> str:
    """``absent``, ``file``, ``empty``, ``unfinished``, ``resumable``, ``finished`` or ``foreign`` (see above)."""
    out = Path(out)
    if not out.exists():
        return "absent"
    if not out.is_dir():
        return "file"
    names = [n for n in _entries(out) if not _is_temp(n)]
    if any(n in FINAL_MARKERS for n in names):
        return "finished"
    if latest_checkpoint(out) is not None:
        return "resumable"
    if not names or names == [LOCK_NAME]:
        return "empty"
    if all(n in RUN_LEFTOVERS for n in names):
        return "unfinished"
    return "foreign"



def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path




# ----------------------------------------------------------------------------------------------------------------
# claiming --out
# ----------------------------------------------------------------------------------------------------------------


def _write_owner(fd: int) -> None:
    """Called by the lock with its descriptor once it is held: the owner's record, for a refused second run."""
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    data = json.dumps(record).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _lock(out: Path):
    """The one lock object of ``out`` in this process (held again, it counts: the holder passes)."""
    return FileLock(str(Path(out).absolute() / LOCK_NAME), timeout=0, is_singleton=True, on_acquired=_write_owner)


def _owner(out: Path) -> str:
    try:
        record = json.loads((out / LOCK_NAME).read_text(encoding="utf-8"))
        return f"pid {record['pid']} on {record['host']}, started {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its record is not readable"


def _acquire(out: Path):
    """Take the lock of ``out`` now, or one line naming the run that holds it."""
    lock = _lock(out)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(
            f"--out {out} is in use by another gpt-scratch run ({_owner(out)}): wait for it to finish, or choose "
            "another --out"
        ) from None
    except OSError as exc:
        raise UserError(
            f"--out {out} cannot be locked ({exc.strerror or exc}): choose a folder on a file system you can write "
            "to and that supports file locks"
        ) from None
    return lock


def check_lock(out: Path) -> None:
    """Refuse a folder that another live run holds (this process's own hold passes); touches nothing else."""
    if (Path(out) / LOCK_NAME).exists() and not _lock(out).is_locked:
        _acquire(out).release()


def check_out_dir(out_dir: str | Path, resume: bool, overwrite: bool = False) -> Path:
    """Everything ``prepare_out_dir`` would refuse, said before any work is done."""
    out = Path(out_dir).expanduser()
    if resume and overwrite:
        raise UserError("--resume and --overwrite conflict: --resume continues the run in --out, --overwrite "
                        "replaces it; pass one of them")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: choose a folder for the run (a new or empty one)")
    anchor = _nearest_existing(out)
    if not anchor.is_dir():
        raise UserError(f"--out {out} cannot be created: {anchor} is a file, not a folder; choose another --out")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} cannot be written: {anchor} is not writable; choose a folder you can write to")
    check_lock(out)
    state = folder_state(out)
    if resume:
        if state in ("resumable", "unfinished") or (state == "finished" and latest_checkpoint(out) is not None):
            return out
        if state == "finished":
            raise UserError(
                f"--resume: '{out}' holds a finished run and no checkpoint to continue from: it is complete; choose "
                "another --out for a new run, or pass --overwrite instead of --resume to replace it"
            )
        raise UserError(
            f"--resume: there is no checkpoint in '{out / 'checkpoints'}': start the run without --resume "
            "(and set --checkpoint-every N so that it can be resumed)"
        )
    if overwrite or state in ("absent", "empty", "unfinished"):
        return out
    if state == "finished":
        raise UserError(
            f"output folder '{out}' already holds a finished run: pass --overwrite to replace it, or choose another "
            "--out"
        )
    if state == "resumable":
        raise UserError(
            f"output folder '{out}' already holds a run with checkpoints (newest: {latest_checkpoint(out).name}): "
            "pass --resume to continue it, --overwrite to replace it, or choose another --out"
        )
    raise UserError(
        f"output folder '{out}' already exists and is not empty: pass --resume to continue its run, "
        "--overwrite to replace it, or choose another --out"
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale_temps(out: Path) -> list[str]:
    """Remove temporary files and folders that interrupted writes left in a run folder we hold the lock of."""
    removed = []
    for folder in (out, out / "checkpoints", out / "cache", out / "tokenizer", out / "splits", out / "plots"):
        for name in _entries(folder) if folder.is_dir() else []:
            if _is_temp(name):
                _remove(folder / name)
                removed.append(str((folder / name).relative_to(out)))
    for sub in _entries(out / "cache") if (out / "cache").is_dir() else []:
        for name in _entries(out / "cache" / sub):
            if _is_temp(name):
                _remove(out / "cache" / sub / name)
                removed.append(f"cache/{sub}/{name}")
    return removed




class _Claim:
    """A held run folder, and what to undo if the run fails before its first checkpoint."""

    def __init__(self, out: Path, created: bool, lock):
        self.out, self.created, self.lock = out, created, lock
        self.keep: set[str] = set(_entries(out))  # never removed by a failed run: they were here before it
        self.aside: Path | None = None  # with --overwrite: the old contents, until the new run has a checkpoint

    def drop_aside(self) -> None:
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def release(self, failed: bool) -> None:
        out = self.out
        if failed and latest_checkpoint(out) is None and folder_state(out) != "finished":
            # nothing worth keeping was written: leave --out as the run found it (with --overwrite: the old run back)
            for name in _entries(out):
                if name not in self.keep and name != LOCK_NAME:
                    _remove(out / name)
            if self.aside is not None and self.aside.is_dir():
                for item in sorted(self.aside.iterdir()):
                    os.replace(item, out / item.name)
                with contextlib.suppress(OSError):
                    self.aside.rmdir()
                self.aside = None
        self.drop_aside()
        # the lock file goes while it is still held (a run that opened it meanwhile finds its inode gone and retries)
        (out / LOCK_NAME).unlink(missing_ok=True)
        self.lock.release()
        if failed and self.created and not _entries(out):
            with contextlib.suppress(OSError):
                out.rmdir()


_CLAIMS: list[_Claim] = []


@contextlib.contextmanager
def run_scope():
    """Release every run folder claimed inside the block when it ends; after a failure before the first checkpoint,
    remove what the run wrote."""
    first = len(_CLAIMS)
    failed = True
    try:
        yield
        failed = False
    finally:
        claims = _CLAIMS[first:]
        del _CLAIMS[first:]
        for claim in reversed(claims):
            claim.release(failed)


def claims_out_dir(function):
    """Decorator: the workflow function's run folder is released (and cleaned on failure) when it returns."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with run_scope():
            return function(*args, **kwargs)

    return wrapper


def prepare_out_dir(out_dir: str | Path, resume: bool, overwrite: bool = False) -> Path:
    """Check ``--out`` against ``--resume``/``--overwrite``, claim it (the lock), and make it ready: stale temporary
    folders removed; with ``overwrite`` the old contents set aside; an unfinished run's leftovers cleared."""
    out = check_out_dir(out_dir, resume, overwrite)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out} cannot be created ({exc.strerror or exc}): choose a folder you can write to"
                        ) from None
    claim = _Claim(out, created, _acquire(out))
    _CLAIMS.append(claim)
    state = folder_state(out)  # again, now that no other writer can change it
    check_out_dir(out, resume, overwrite)
    clean_stale_temps(out)
    if overwrite:
        # set aside, not deleted: a run that fails before its first checkpoint puts them back (see _Claim.release)
        old = [name for name in _entries(out) if name != LOCK_NAME]
        if old:
            aside = temp_dir(out, ".overwritten-", ".old")
            for name in old:
                os.replace(out / name, aside / name)
            claim.aside = aside
    elif state == "unfinished":
        leftovers = [n for n in _entries(out) if n not in KEEP_ON_RESTART]
        if leftovers:
            print(
                f"note: {out} holds a run that stopped before its first checkpoint (nothing to resume): starting it "
                f"again{' from step 0' if resume else ''}; cleared {', '.join(leftovers)}",
                file=sys.stderr,
            )
        for name in leftovers:
            _remove(out / name)
    claim.keep = set(_entries(out))
    return out


# ----------------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------------


class _NoTiedWeightNote(logging.Filter):
    """Accelerate notes at every checkpoint of a tied model that it "removed shared tensor lm_head.weight": a copy of
    the embedding it re-ties on load.  Nothing a user can act on, so it is not shown."""

    def filter(self, record) -> bool:
        return "Removed shared tensor" not in str(record.getMessage())


STATE_FILE = "trainer_state.json"


DAMAGED = "remove that folder to resume from the checkpoint before it (if any), or start over with --overwrite"


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
    note = _NoTiedWeightNote()
    logging.getLogger("accelerate.utils.other").addFilter(note)
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    finally:
        logging.getLogger("accelerate.utils.other").removeFilter(note)
    if is_main:
        fault_point("checkpoint-write")
        atomic_write_json(tmp / STATE_FILE, state)
        apply_umask(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoints(folder)[: -max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
        for claim in _CLAIMS:  # an --overwrite's old run is no longer needed
            if claim.out.resolve() == Path(out_dir).resolve():
                claim.drop_aside()
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

        random.Random().setstate(states["random_state"])  # checks the Python state's shape without using it
    except Exception as exc:  # anything unpickling a tampered file raises
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(
            f"checkpoint '{path}': {file.name} (the saved random state) is damaged ({type(exc).__name__}: {text}), "
            f"so the resumed run would not be exact: {DAMAGED}"
        ) from None
    return states



# ----------------------------------------------------------------------------------------------------------------
# the final write
# ----------------------------------------------------------------------------------------------------------------


def save_run_config(out_dir: Path, record: RunRecord | dict) -> None:
    """Write the run record (``run_config.yaml``, see :mod:`pipelines.runs.record`) into ``out_dir`` atomically."""
    atomic_write_text(Path(out_dir) / RUN_RECORD_FILE, as_run_record(record).to_yaml())


def environment() -> dict:
    device = "cpu"
    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": device,
        "cpu_count": os.cpu_count(),
    }


def write_run_folder(
    out_dir: str | Path,
    save_model: Callable[[Path], None],
    tokenizer,
    *,
    metrics: dict,
    run_config: RunRecord | dict,
    workflow: str,
    samples: list[dict] | None = None,
) -> Path:
    """The end of every training run: ``save_model(staging)`` writes the weights (a full model, or an adapter),
    then the tokenizer, metrics and resolved config join them in a staging folder inside ``out_dir``, which is
    published into it file by file; the cards come last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {**metrics, "workflow": workflow, "environment": environment()}
    if samples:
        metrics["samples"] = samples
    staging = temp_dir(out, ".final-")
    try:
        save_model(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
            strip_local_files_only(staging)
        atomic_write_json(staging / "metrics.json", metrics)
        save_run_config(staging, run_config)
        fault_point("final-write")
        apply_umask(staging)
        publish_files(staging, out, after_each=lambda: fault_point("final-publish"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_cards(out)
    return out


def write_model_folder(
    out_dir: str | Path,
    model,
    tokenizer,
    *,
    metrics: dict,
    run_config: RunRecord | dict,
    workflow: str,
    generation_config=None,
    samples: list[dict] | None = None,
) -> Path:
    """Write the final model, tokenizer, metrics, config, card and report into ``out_dir`` atomically."""
    model = getattr(model, "module", model)
    if tokenizer is not None:
        tokenizer = portable_tokenizer(tokenizer, model.config.max_position_embeddings)
        model.config.pad_token_id = tokenizer.pad_token_id
    if generation_config is not None:
        model.generation_config = generation_config
    return write_run_folder(
        out_dir, lambda staging: model.save_pretrained(staging, safe_serialization=True), tokenizer,
        metrics=metrics, run_config=run_config, workflow=workflow, samples=samples,
    )
