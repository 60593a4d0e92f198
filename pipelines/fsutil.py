"""Atomic file and folder writes: a killed process never leaves anything half-written.

Everything is first written under a temporary name in the same folder, flushed, then renamed into place
(``os.replace`` is atomic on one filesystem).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike):
    """Yield a temporary file path next to ``dest``; on success it is renamed onto ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            if not overwrite:
                raise FileExistsError(dest)
            aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            aside.rmdir()
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
        if item.is_dir():
            if target.exists():
                shutil.rmtree(target)
            os.replace(item, target)
        else:
            os.replace(item, target)
        if after_each is not None:
            after_each()
    _fsync_dir(dest_dir)
