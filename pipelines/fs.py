"""Files that appear whole: a killed process never leaves anything half-written, and everything it writes gets the
modes the process umask gives (0644 files and 0755 folders under umask 022), so a run folder on a shared machine or
behind a server running as another user can be read.

Everything is first written under a temporary name in the same folder, flushed, then renamed into place
(``os.replace`` is atomic on one filesystem).  Temporary names are made here rather than by ``tempfile``, whose files
(0600) and folders (0700) would keep their private modes after the rename; and what libraries write into a staged
folder gets the umask's modes before it appears (:func:`apply_umask`: safetensors writes its files 0600).

The test-only fault hook (:func:`fault_point`) lives here too: it interrupts a process at exact moments of a write.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.cache
def _umask() -> int:
    """This process's umask: read from ``/proc/self/status`` (Linux), else by setting it and setting it back."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a new file (0666) or folder (0777) gets from the umask."""
    mask = _umask()
    for path in [Path(root), *Path(root).rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def package_folder(name: str) -> Path:
    """The folder of the data package ``name`` (``pipelines.configs``: the repository's ``configs/``, shipped inside
    the wheel), found without importing it."""
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


def temp_name(dest: Path, suffix: str = ".tmp") -> Path:
    """A fresh hidden name beside ``dest``: ``.NAME.<random>.tmp``."""
    return dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}{suffix}"


def make_dir(path: Path) -> Path:
    """Create the folder ``path`` (it must not exist), with the umask's mode."""
    os.mkdir(path, 0o777)
    return path


def temp_dir(parent: Path, prefix: str, suffix: str = ".tmp") -> Path:
    """A new folder inside ``parent`` named ``PREFIX<random>SUFFIX``, with the umask's mode."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    return make_dir(Path(parent) / f"{prefix}{uuid.uuid4().hex[:12]}{suffix}")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike):
    """Yield a temporary file path next to ``dest`` (the file exists, empty, with the umask's mode); on success it
    is renamed onto ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dest)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(dest: str | os.PathLike, obj) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, overwrite: bool = True):
    """Yield a temporary folder next to ``dest``; on success it replaces ``dest`` as a whole.

    If ``dest`` exists it is moved aside first and removed only after the new folder is in place, so at every
    moment either the old or the new complete folder exists under its name (or, during the two renames, the old one
    under the aside name).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_dir(temp_name(dest))
    try:
        yield tmp
        apply_umask(tmp)
        if dest.exists():
            if not overwrite:
                raise FileExistsError(dest)
            aside = temp_name(dest, ".old")
            os.replace(dest, aside)
            os.replace(tmp, dest)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_files(src_dir: str | os.PathLike, dest_dir: str | os.PathLike, after_each=None) -> None:
    """Move every file of ``src_dir`` into ``dest_dir`` (each by an atomic rename), keeping other files there.

    ``after_each()`` is called after each move (the test-only fault hook uses it)."""
    src_dir, dest_dir = Path(src_dir), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(src_dir.iterdir()):
        target = dest_dir / item.name
        if item.is_dir() and target.exists():
            shutil.rmtree(target)
        os.replace(item, target)
        if after_each is not None:
            after_each()
    _fsync_dir(dest_dir)


# ---- the test-only fault hook ----------------------------------------------------------------------------------
# GPT_SCRATCH_FAULT=POINT:N[:ACTION] makes the process SIGKILL itself (ACTION "kill", the default) or hang until it
# is killed ("hang") at the N-th time it reaches POINT -- for step, at the end of optimizer step N (after that step's
# checkpoint).  Points: step, checkpoint-write (inside a checkpoint write: the state saved into the temporary
# folder, not yet renamed into place), final-write (the final model folder staged, nothing published), final-publish
# (after each file of the final folder is moved into place).  tests/runs/test_faults.py uses it to interrupt a run at
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
    print(f"{FAULT_ENV}: {action or 'kill'} at {name} {index}", file=sys.stderr, flush=True)
    if action == "hang":
        while True:
            time.sleep(60)
    os.kill(os.getpid(), signal.SIGKILL)
