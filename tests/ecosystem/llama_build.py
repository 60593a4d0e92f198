"""llama.cpp for the ecosystem suite: ``llama-cpp-python`` built from its source distribution, and llama.cpp's own
converter (``convert_hf_to_gguf.py``), which ships inside that source distribution.

PyPI has no binary wheel of llama-cpp-python for Linux, so it is compiled here (about 4 minutes on 2 cores).  The
wheel is kept OUTSIDE the checkout, in ``~/.cache/gpt-scratch/wheels`` (or ``$GPT_SCRATCH_WHEEL_CACHE``), under a
name made from everything that shapes the binary -- the version, the CMake flags, the Python, the platform and the C
library -- so a later run on the same machine, from any clone, reuses it; a machine without it builds it once.

The build is portable across x86-64 CPUs: ``GGML_NATIVE=OFF`` compiles for a baseline with AVX2 instead of the CPU at
hand, so a wheel cached on one machine still runs on another.  Only the library is built (no tools, server, tests
or examples).

Environment variables:
    GPT_SCRATCH_WHEEL_CACHE   where built wheels and the extracted converter live (default ~/.cache/gpt-scratch/wheels)
    GPT_SCRATCH_LLAMA_SDIST   a local copy of llama_cpp_python-<version>.tar.gz (default: downloaded once by pip)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

VERSION = "0.3.36"
REQUIREMENT = f"llama-cpp-python=={VERSION}"
BUILD_RECIPE = 1  # bump to rebuild the cached wheel after a change to how it is built
CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF",  # a baseline x86-64 build (AVX2), not one tuned to this CPU: the cached wheel travels
    "-DLLAVA_BUILD=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
BUILD_TIMEOUT = 3600
CACHE = Path(os.environ.get("GPT_SCRATCH_WHEEL_CACHE", Path.home() / ".cache" / "gpt-scratch" / "wheels"))
# what the converter needs inside the source distribution (the rest of llama.cpp's tree is not needed)
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


class BuildError(RuntimeError):
    pass


def _run(cmd, what: str, env=None, timeout=900, nice=False) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
        preexec_fn=(lambda: os.nice(10)) if nice else None,  # a compile shares the machine: lower its priority
    )
    if proc.returncode != 0:
        raise BuildError(
            f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc.stdout


@contextlib.contextmanager
def _locked(name: str):
    """One builder at a time per cache (two test sessions on one machine would otherwise compile twice)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def wheel_key() -> str:
    """What the wheel depends on, hashed: the same key means the cached wheel is the one a build would give."""
    material = dict(
        package=REQUIREMENT,
        cmake_args=list(CMAKE_ARGS),
        python=f"{sys.implementation.name}{sys.version_info.major}.{sys.version_info.minor}",
        platform=sysconfig.get_platform(),
        machine=platform.machine(),
        libc=list(platform.libc_ver()),
        recipe=BUILD_RECIPE,
    )
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def sdist(timings: dict | None = None) -> Path:
    """The source distribution ``llama_cpp_python-<version>.tar.gz`` (given, cached, or downloaded once by pip)."""
    given = os.environ.get("GPT_SCRATCH_LLAMA_SDIST")
    if given:
        if not Path(given).is_file():
            raise BuildError(f"GPT_SCRATCH_LLAMA_SDIST={given} is not a file")
        return Path(given)
    folder = CACHE / "_sdists"
    name = f"llama_cpp_python-{VERSION}.tar.gz"
    with _locked("sdist"):
        if (folder / name).is_file():
            return folder / name
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=".download.", dir=CACHE))
        try:
            _run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp,
                 REQUIREMENT],
                f"downloading the {REQUIREMENT} source distribution",
            )
            if not (tmp / name).is_file():
                raise BuildError(f"pip download left {sorted(p.name for p in tmp.iterdir())}, not {name}")
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, folder / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if timings is not None:
            timings[f"download {name}"] = time.perf_counter() - start
        return folder / name


def wheel(timings: dict | None = None) -> Path:
    """The built llama-cpp-python wheel: from the cache when its key matches, else compiled now (and cached)."""
    home = CACHE / f"llama_cpp_python-{VERSION}-{wheel_key()}"
    with _locked(home.name):
        found = sorted(home.glob("llama_cpp_python-*.whl")) if (home / ".ready").is_file() else []
        if found:
            return found[0]
        source = sdist(timings)
        start = time.perf_counter()
        shutil.rmtree(home, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=CACHE))
        env = {
            **os.environ,
            "CMAKE_ARGS": " ".join(CMAKE_ARGS),
            "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1),
        }
        env.pop("PYTHONPATH", None)
        try:
            _run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp, source],
                f"building {REQUIREMENT} from {source.name}", env=env, timeout=BUILD_TIMEOUT, nice=True,
            )
            built = sorted(tmp.glob("llama_cpp_python-*.whl"))
            if len(built) != 1:
                raise BuildError(f"building {REQUIREMENT} left {sorted(p.name for p in tmp.iterdir())}")
            (tmp / "build.json").write_text(json.dumps({"cmake_args": list(CMAKE_ARGS), "key": wheel_key()}))
            (tmp / ".ready").write_text(wheel_key())
            os.replace(tmp, home)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if timings is not None:
            timings[f"build {REQUIREMENT}"] = time.perf_counter() - start
        return sorted(home.glob("llama_cpp_python-*.whl"))[0]


def converter(timings: dict | None = None) -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` with its ``conversion`` package and ``gguf-py``, taken from the source
    distribution (the script puts its own ``gguf-py`` first on ``sys.path``)."""
    home = CACHE / f"llama.cpp-converter-{VERSION}"
    script = home / "convert_hf_to_gguf.py"
    with _locked(home.name):
        if (home / ".ready").is_file() and script.is_file():
            return script
        source = sdist(timings)
        prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
        shutil.rmtree(home, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=CACHE))
        try:
            with tarfile.open(source) as archive:
                members = []
                for member in archive.getmembers():
                    if not member.name.startswith(prefix):
                        continue
                    rest = member.name[len(prefix):]
                    if rest.split("/", 1)[0] in CONVERTER_PARTS and (member.isfile() or member.isdir()):
                        member.name = rest
                        members.append(member)
                archive.extractall(tmp, members=members, filter="data")
            missing = [part for part in CONVERTER_PARTS if not (tmp / part).exists()]
            if missing:
                raise BuildError(f"{source.name} has no vendor/llama.cpp/{', '.join(missing)}")
            (tmp / ".ready").write_text(VERSION)
            os.replace(tmp, home)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return script
