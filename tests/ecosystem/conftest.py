"""The ecosystem suite: saved folders run by code gpt-scratch does not control, each client in its own venv.

The main venv (this pytest) builds the folders and the reference answers; each client script runs in a venv of its
own (see ``envs.py``), without gpt-scratch, offline, and reports JSON that the tests compare with the references.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from . import envs, fixtures

CLIENTS_DIR = Path(__file__).resolve().parent / "clients"
CLIENT_TIMEOUT = 600
RUN_TIMES: dict[str, float] = {}


@pytest.fixture(scope="session")
def fx(tmp_path_factory) -> fixtures.Fixtures:
    return fixtures.build(tmp_path_factory.mktemp("folders"))


@pytest.fixture(scope="session")
def venv():
    """``venv(name)``: the client venv, built on first use (a build failure fails the test that asked).
    Thread-safe: the client runs below build their venvs from worker threads."""
    made, locks, guard = {}, {}, threading.Lock()

    def get(name: str) -> envs.ClientEnv:
        with guard:
            lock = locks.setdefault(name, threading.Lock())
        with lock:
            if name not in made:
                try:
                    made[name] = envs.client_env(name)
                except (envs.EnvBuildError, OSError, subprocess.SubprocessError) as err:
                    made[name] = err
        if isinstance(made[name], Exception):
            pytest.fail(f"cannot build the {name} client venv:\n{made[name]}", pytrace=False)
        return made[name]

    return get


# The client runs that read nothing but ``fx.spec()``, by the test module that asserts on them.  They start together
# when the session does, two at a time (the machine has two cores), longest first, while the modules that need a
# spec of their own (lm-eval's task files, the GPT-2 exports) run theirs in the main thread.
PREFETCH = {
    "test_onnx": [("onnx", "onnx_client.py")],
    "test_trl": [("trl", "trl_client.py")],
    "test_peft": [("peft", "peft_client.py"), ("peft-latest", "peft_client.py")],
    "test_transformers": [("hf5", "hf_client.py"), ("hf4", "hf_client.py"), ("hf5", "hf_warnings_client.py")],
}
WORKERS = max(1, min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    config._ecosystem_modules = {Path(str(item.path)).stem for item in items if here in Path(str(item.path)).parents}


class Clients:
    def __init__(self, fx, venv, tmp_path_factory, modules):
        self.fx, self.venv, self.tmp = fx, venv, tmp_path_factory
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="ecosystem-client")
        self.futures = {}
        for module, jobs in PREFETCH.items():
            if module in modules:
                for name, script in jobs:
                    self.futures[(name, script)] = self._submit(name, script)

    def _workdir(self, name, script):
        return self.tmp.mktemp(f"{name}-{script.removesuffix('.py')}")

    def _submit(self, name, script):
        spec, workdir = self.fx.spec(), self._workdir(name, script)
        return self.pool.submit(lambda: run_client(self.venv(name), script, spec, workdir))

    def result(self, name: str, script: str, spec: dict | None = None) -> dict:
        """The report of ``script`` in venv ``name``: the prefetched run for the plain spec, else a run now."""
        if spec is None:
            if (name, script) not in self.futures:
                self.futures[(name, script)] = self._submit(name, script)
            return self.futures[(name, script)].result()
        return run_client(self.venv(name), script, spec, self._workdir(name, script))

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session", autouse=True)
def clients(request, fx, venv, tmp_path_factory):
    runner = Clients(fx, venv, tmp_path_factory, getattr(request.config, "_ecosystem_modules", set()))
    yield runner
    runner.close()


def client_environment(home: Path) -> dict:
    """What a client process sees: offline, its own HF cache, nothing of the checkout on its path."""
    env = {
        key: value
        for key, value in os.environ.items()
        # PYTHONDONTWRITEBYTECODE would make every run compile torch and transformers again (twice the start-up)
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE")
        and not key.startswith(("HF_", "TRANSFORMERS_"))
    }
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(home / "hf-home"),  # a fresh module cache: the remote code is copied from the folder itself
        TOKENIZERS_PARALLELISM="false",
        PYTHONNOUSERSITE="1",
        OMP_NUM_THREADS="1",  # clients run side by side, one core each
    )
    return env


def run_client(env: envs.ClientEnv, script: str, spec: dict, workdir: Path, timeout: int = CLIENT_TIMEOUT) -> dict:
    """Run ``clients/<script>`` in ``env`` on ``spec``; returns its JSON report (a crash or hang fails the test)."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / "spec.json", workdir / "result.json"
    spec_path.write_text(json.dumps(spec))
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [str(env.python), str(CLIENTS_DIR / script), str(spec_path), str(out_path)],
            cwd=workdir, env=client_environment(workdir), capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{script} in the {env.name} venv ran past {timeout}s\n{_tail(err.stdout)}\n{_tail(err.stderr)}")
    key = f"{env.name}:{script}"
    key = key if key not in RUN_TIMES else f"{key} ({workdir.name})"  # a script run twice keeps both times
    RUN_TIMES[key] = time.perf_counter() - start
    (workdir / "stdout.txt").write_text(proc.stdout)
    (workdir / "stderr.txt").write_text(proc.stderr)
    if not out_path.is_file():
        pytest.fail(
            f"{script} in the {env.name} venv wrote no report (exit {proc.returncode})\n"
            f"--- stderr ---\n{_tail(proc.stderr)}"
        )
    report = json.loads(out_path.read_text())
    report["returncode"] = proc.returncode
    report["stderr"] = _tail(proc.stderr, 6000)
    if proc.returncode != 0:  # checks catch their own errors: a non-zero exit is a crash of the interpreter
        report["crash"] = f"exit {proc.returncode}\n{report['stderr']}"
    assert report["env"]["package_importable"] is False, "gpt-scratch is importable in a client venv"
    return report


def _tail(text, n=4000):
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def check(report: dict, name: str):
    """The value a client check returned, or a test failure carrying the client's traceback."""
    record = report["checks"].get(name)
    if record is None:
        done = ", ".join(report["checks"]) or "none"
        pytest.fail(
            f"the client did not run check {name!r} (checks run: {done})\n{report.get('crash') or report['stderr']}",
            pytrace=False,
        )
    if not record["ok"]:
        pytest.fail(f"client check {name!r} raised:\n{record['error']}", pytrace=False)
    return record["value"]


def pytest_terminal_summary(terminalreporter):
    if not (envs.TIMINGS or RUN_TIMES):
        return
    terminalreporter.section("ecosystem timings")
    for what, seconds in envs.TIMINGS.items():
        terminalreporter.write_line(f"build  {what:<28} {seconds:7.1f} s")
    for what, seconds in RUN_TIMES.items():
        terminalreporter.write_line(f"run    {what:<28} {seconds:7.1f} s")
