"""The run folder contract: every training workflow's ``--out`` is itself a loadable Hugging Face model folder.

Layout::

    config.json  model.safetensors  configuration_gpt_scratch.py  modeling_gpt_scratch.py   (the model + its code)
    tokenizer.json  tokenizer_config.json  ...                                              (the tokenizer)
    generation_config.json   README.md (model card)   report.md (report card)
    metrics.json (final and per-eval metrics)   run_config.yaml (the run record)   plots/*.png
    checkpoints/step-N/  (for --resume)

Files appear atomically: everything is written into a temporary folder inside the run folder first and then
renamed into place file by file, so a killed run leaves either the old or the new version of each file.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError
from .folders import CODE_FILES, CONFIG_FILE  # a model folder's file names live in pipelines.folders
from .fsutil import atomic_write_json, atomic_write_text, publish_files
from .run_record import RUN_RECORD_FILE, RunRecord, as_run_record

MODEL_FILES = (CONFIG_FILE, "model.safetensors", *CODE_FILES)


# ----------------------------------------------------------------------------------------------------------------
# claiming --out: one writer at a time, nothing half-written
# ----------------------------------------------------------------------------------------------------------------
#
# A training run claims its --out with a lock file created atomically (the full record is written to a temporary
# file first and hard-linked onto LOCK_NAME, which fails if the name exists: O_CREAT|O_EXCL with the content already
# in place).  It holds pid, host, boot id and process start time, so a lock left by a killed process on this machine
# is told apart from one held by a live run (even after the pid is reused).  A live owner is a refusal; a dead one
# is reported, and --take-over-lock takes the folder over.  The lock goes when the run ends (success or error).
#
# State of a folder (folder_state): absent, empty, "unfinished" (only run leftovers -- tokenizer, cache, splits,
# run_config.yaml, an empty checkpoints/, temporary folders -- and no checkpoint and no final model: a run that
# stopped before its first checkpoint), "resumable" (a complete checkpoint), "finished" (a final model), "foreign"
# (anything else).  An unfinished folder is accepted again as it is (its leftovers are cleared, the token cache is
# kept), with or without --resume, so an interruption before the first checkpoint never needs --overwrite.  A run
# that fails (an error, Ctrl-C) before its first checkpoint removes what it wrote, leaving --out as it found it; with
# --overwrite the old contents wait in a temporary folder until the new run's first checkpoint (or its end) and come
# back if it fails before that.
# Stale temporary folders of interrupted writes (.tmp-step-*, .final-*, .NAME.*.tmp, .NAME.*.old) are removed by
# the next run that claims the folder.

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
    from .train_loop import latest_checkpoint

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


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _lock_record() -> dict:
    import datetime
    import socket

    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "process_start": _process_start(os.getpid()),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def read_lock(path: Path) -> dict | None:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def lock_owner_alive(record: dict | None) -> bool | None:
    """True: the owner runs; False: it is gone (same machine, same boot); None: cannot tell (another machine)."""
    import socket

    if not record or not isinstance(record.get("pid"), int):
        return False
    if record.get("host") != socket.gethostname():
        return None
    if record.get("boot_id") and _boot_id() and record["boot_id"] != _boot_id():
        return False  # the machine rebooted since
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    start = _process_start(record["pid"])
    if record.get("process_start") and start and start != record["process_start"]:
        return False  # the pid was reused by another process
    return True


def _owner(record: dict | None) -> str:
    if not record:
        return "an unreadable lock record"
    return f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}"


def _is_ours(record: dict | None) -> bool:
    import socket

    return bool(record) and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname() and (
        record.get("process_start") == _process_start(os.getpid())
    )


def _lock_refusal(out: Path, record: dict | None, alive: bool | None) -> UserError:
    path = out / LOCK_NAME
    if alive:
        return UserError(
            f"--out {out} is in use by another gpt-scratch run ({_owner(record)}): wait for it to finish, or "
            "choose another --out"
        )
    resume = " (with --resume to continue from its newest checkpoint)" if folder_state(out) == "resumable" else ""
    if alive is None and record:
        return UserError(
            f"--out {out} is locked by a run on another machine ({_owner(record)}): if that run has stopped, pass "
            f"--take-over-lock{resume}, or remove {path}"
        )
    return UserError(
        f"--out {out} was left locked by a run that is no longer running ({_owner(record)}; it was killed or "
        f"crashed): pass --take-over-lock to use the folder again{resume}, or remove {path}"
    )


def check_lock(out: Path, take_over: bool = False) -> None:
    """Refuse a folder locked by another run (live, or dead without ``take_over``)."""
    path = Path(out) / LOCK_NAME
    if not path.exists():
        return
    record = read_lock(path)
    if _is_ours(record):
        return
    alive = lock_owner_alive(record)
    if alive or not take_over:
        raise _lock_refusal(Path(out), record, alive)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_out_dir(out_dir: str | Path, resume: bool, overwrite: bool = False, take_over: bool = False) -> Path:
    """Everything ``prepare_out_dir`` would refuse, said before any work is done, touching nothing."""
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
    check_lock(out, take_over)
    state = folder_state(out)
    if resume:
        if state in ("resumable", "unfinished") or (state == "finished" and _has_checkpoint(out)):
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
        from .train_loop import latest_checkpoint

        raise UserError(
            f"output folder '{out}' already holds a run with checkpoints (newest: {latest_checkpoint(out).name}): "
            "pass --resume to continue it, --overwrite to replace it, or choose another --out"
        )
    raise UserError(
        f"output folder '{out}' already exists and is not empty: pass --resume to continue its run, "
        "--overwrite to replace it, or choose another --out"
    )


def _has_checkpoint(out: Path) -> bool:
    from .train_loop import latest_checkpoint

    return latest_checkpoint(out) is not None


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
    """A held lock on a run folder, and what to undo if the run fails before its first checkpoint."""

    def __init__(self, out: Path, created: bool):
        self.out, self.created = out, created
        self.keep: set[str] = set()
        self.aside: Path | None = None  # with --overwrite: the old contents, until the new run has a checkpoint

    def drop_aside(self) -> None:
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def release(self, failed: bool) -> None:
        out = self.out
        if failed and not _has_checkpoint(out) and folder_state(out) != "finished":
            # nothing worth keeping was written: leave --out as the run found it (with --overwrite: the old run back)
            for name in _entries(out):
                if name not in self.keep:
                    _remove(out / name)
            if self.aside is not None and self.aside.is_dir():
                for item in sorted(self.aside.iterdir()):
                    os.replace(item, out / item.name)
                with contextlib.suppress(OSError):
                    self.aside.rmdir()
                self.aside = None
        self.drop_aside()
        path = out / LOCK_NAME
        if _is_ours(read_lock(path)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if failed and self.created and not _entries(out):
            with contextlib.suppress(OSError):
                out.rmdir()


_CLAIMS: list[_Claim] = []


def checkpoint_written(out: str | Path) -> None:
    """The run in ``out`` wrote a checkpoint: the old contents an --overwrite set aside are no longer needed."""
    out = Path(out).resolve()
    for claim in _CLAIMS:
        if claim.out.resolve() == out:
            claim.drop_aside()


def _release_all_at_exit() -> None:
    while _CLAIMS:
        _CLAIMS.pop().release(failed=False)


atexit.register(_release_all_at_exit)


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


def _create_lock(path: Path, record: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f"{LOCK_NAME}.", suffix=".new", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic: fails if the lock exists, and the lock is never seen empty
        except (AttributeError, NotImplementedError):  # pragma: no cover - no hard links on this filesystem
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
            with os.fdopen(os.open(path, flags, 0o644), "w", encoding="utf-8") as f:
                json.dump(record, f)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def claim_out_dir(out: Path, take_over: bool = False) -> _Claim:
    """Create ``out`` if needed and take its lock (see above); the claim is released by :func:`run_scope`."""
    path = out / LOCK_NAME
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"--out {out} cannot be created ({exc.strerror or exc}): choose a folder you can write to"
        ) from None
    record = _lock_record()
    try:
        try:
            _create_lock(path, record)
        except FileExistsError:
            found = read_lock(path)
            alive = lock_owner_alive(found)
            if _is_ours(found):
                pass  # this process holds it already
            elif alive or not take_over:
                raise _lock_refusal(out, found, alive) from None
            else:
                aside = path.with_name(f"{LOCK_NAME}.{os.getpid()}.stale")
                os.replace(path, aside)
                taken = read_lock(aside)
                aside.unlink()
                if taken != found:  # another process took it over in between
                    raise UserError(f"--out {out} was just taken over by another run: choose another --out") from None
                print(f"note: took over the lock of {out} from {_owner(found)}, which is no longer running",
                      file=__import__("sys").stderr)
                try:
                    _create_lock(path, record)
                except FileExistsError:
                    raise _lock_refusal(out, read_lock(path), True) from None
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise UserError(
            f"--out {out} cannot be written ({exc.strerror or exc}): choose a folder you can write to"
        ) from None
    claim = _Claim(out, created)
    claim.keep = set(_entries(out))  # never removed by a failed run: they were here before it
    _CLAIMS.append(claim)
    return claim


def prepare_out_dir(out_dir: str | Path, resume: bool, overwrite: bool = False, take_over: bool = False) -> Path:
    """Check ``--out`` against ``--resume``/``--overwrite``, claim it (the lock), and make it ready: stale temporary
    folders removed; with ``overwrite`` the old contents removed; an unfinished run's leftovers cleared."""
    import sys

    out = check_out_dir(out_dir, resume, overwrite, take_over)
    claim = claim_out_dir(out, take_over)
    state = folder_state(out)  # again, now that no other writer can change it
    check_out_dir(out, resume, overwrite, take_over=True)
    clean_stale_temps(out)
    if overwrite:
        # set aside, not deleted: a run that fails before its first checkpoint puts them back (see _Claim.release)
        old = [name for name in _entries(out) if name != LOCK_NAME]
        if old:
            aside = out / f".overwritten-{os.getpid()}.old"
            aside.mkdir()
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


def save_run_config(out_dir: Path, record: RunRecord | dict) -> None:
    """Write the run record (``run_config.yaml``, see :mod:`pipelines.run_record`) into ``out_dir`` atomically."""
    atomic_write_text(Path(out_dir) / RUN_RECORD_FILE, as_run_record(record).to_yaml())


def environment() -> dict:
    import torch
    import transformers

    device = "cpu"
    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": device,
        "cpu_count": __import__("os").cpu_count(),
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
    from pipelines.tokenization import strip_local_files_only

    from .cards import write_cards
    from .train_loop import fault_point

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {**metrics, "workflow": workflow, "environment": environment()}
    if samples:
        metrics["samples"] = samples
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
    try:
        save_model(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
            strip_local_files_only(staging)
        atomic_write_json(staging / "metrics.json", metrics)
        save_run_config(staging, run_config)
        fault_point("final-write")
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
        from pipelines.tokenization import portable_tokenizer

        tokenizer = portable_tokenizer(tokenizer, model.config.max_position_embeddings)
        model.config.pad_token_id = tokenizer.pad_token_id
    if generation_config is not None:
        model.generation_config = generation_config
    return write_run_folder(
        out_dir, lambda staging: model.save_pretrained(staging, safe_serialization=True), tokenizer,
        metrics=metrics, run_config=run_config, workflow=workflow, samples=samples,
    )


def read_metrics(folder: str | Path) -> dict:
    path = Path(folder) / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
