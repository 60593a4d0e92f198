"""Files that appear whole get the umask's modes, and progress written to a file is plain lines.

Under umask 022 every writer gives 0644 files and 0755 folders: an atomic file, a staged folder (including a file a
library wrote 0600, as safetensors does), a run folder's final write and a checkpoint (the wheel test checks a whole
run folder), and an export.  Progress to a file is one line every ``every`` steps and at the end, without carriage
returns; to a terminal it is a bar.
"""

from __future__ import annotations

import io
import os
import stat

import pytest

from pipelines.fs import apply_umask, atomic_dir, atomic_path, atomic_write_text
from pipelines.progress import Progress


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    from pipelines import fs

    fs._umask.cache_clear()
    yield
    os.umask(old)
    fs._umask.cache_clear()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_and_folders_get_the_umasks_modes(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"y")
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "private.safetensors").write_bytes(b"z")
        (tmp / "private.safetensors").chmod(0o600)  # what safetensors leaves
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "f").write_text("w")
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.bin") == 0o644
    assert mode(tmp_path / "folder") == mode(tmp_path / "folder" / "sub") == 0o755
    assert mode(tmp_path / "folder" / "private.safetensors") == mode(tmp_path / "folder" / "sub" / "f") == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary names left


def test_a_stricter_umask_is_honoured(tmp_path):
    from pipelines import fs

    old = os.umask(0o077)
    fs._umask.cache_clear()
    try:
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "f").write_text("x")
        apply_umask(tmp_path / "d")
        assert mode(tmp_path / "d") == 0o700 and mode(tmp_path / "d" / "f") == 0o600
    finally:
        os.umask(old)
        fs._umask.cache_clear()


def test_progress_to_a_file_is_plain_lines():
    stream = io.StringIO()  # not a terminal
    bar = Progress(25, "pretrain", every=10, stream=stream)
    for step in range(25):
        bar.update(1, **({"loss": f"{5 - step / 10:.4f}"} if (step + 1) % 10 == 0 or step == 24 else {}))
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split(" | ")[0] for line in lines] == ["pretrain: step 10/25", "pretrain: step 20/25",
                                                        "pretrain: step 25/25"]
    assert all("loss" in line and "eta" in line for line in lines)


def test_progress_disabled_writes_nothing():
    stream = io.StringIO()
    bar = Progress(5, "respond", unit="record", disable=True, stream=stream)
    bar.update(5)
    bar.close()
    assert stream.getvalue() == ""
