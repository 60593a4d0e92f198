"""gpt-scratch as a user has it: the wheel built from this checkout, installed into a fresh venv, run from a folder
of the user's own with its output going to a log file.

The wheel is built from what a clone of the checkout holds (``envs.build_wheel``) and installed, not editable, into a
venv of its own (``envs.wheel_env``: torch from the local CPU wheel, every other dependency from PyPI, cached by the
wheel's content).  Every command runs from a temporary working folder outside the checkout, offline, under
``umask 022``, with stdin closed and stdout and stderr going to files, as a batch job on a shared machine runs it.

What is expected is read from the checkout, never written here: the packages and data files from ``pyproject.toml``,
the default run from ``configs/tiny-cpu.yaml`` (what ``gpt-scratch pretrain`` runs without ``--config``), the
workflows from ``pipelines.cli.COMMANDS``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import stat
import subprocess
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from . import envs
from .conftest import RUN_TIMES

REPO = envs.REPO
RECIPE_NAME = "tiny-cpu"  # configs/tiny-cpu.yaml: the recipe `gpt-scratch pretrain` runs when no --config is given
MAX_STEPS = 30  # the one flag given: a short run of the default recipe
GENERATE_TOKENS = 8
PRETRAIN_TIMEOUT = 1200
COMMAND_TIMEOUT = 300
LOG_TAIL_LINES = 60

# The lines a pretraining log must show: pipelines.progress's plain report ("pretrain: step N/TOTAL | loss .. |
# tok/s .. | eta ..") and the closing summary ("done: val loss A -> B, ...", then "run folder: OUT ...").
PROGRESS_LINE = re.compile(r"\bstep (\d+)/(\d+)\b")
PROGRESS_FIELDS = ("loss", "tok/s", "eta")
SUMMARY_LINE = re.compile(r"^done: .*\bval loss\b", re.MULTILINE)
RUN_FOLDER_LINE = "run folder: {out}"

# The files of a run folder that loads with AutoModelForCausalLM / AutoTokenizer / GenerationConfig; the code files
# come from config.json's auto_map (what trust_remote_code loads).
RUN_FOLDER_FILES = ("README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                    "generation_config.json", "metrics.json", "run_config.yaml")
# recipe keys that config.json spells differently
CONFIG_JSON_NAMES = {"context_length": "max_position_embeddings"}


def expect(condition, message: str) -> None:
    """Fail with ``message`` alone (what is wrong, and the log where it helps) unless ``condition`` holds."""
    if not condition:
        pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def clients():
    """This module runs no client script, so it replaces the suite's session-wide client runner (which first builds
    every saved folder in the main venv) with nothing: run alone, it costs only its own work."""
    yield None


# ---- the user's machine ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One command, run as a user runs it: its exit status, its log files and how long it took."""

    argv: list[str]
    cwd: Path
    stdout: Path
    stderr: Path | None  # None: stderr went into the stdout file
    returncode: int | None  # None: killed at the timeout
    seconds: float
    entries_after: list[str] = field(default_factory=list)  # what the working folder held when it ended

    @property
    def command(self) -> str:
        return " ".join(self.argv)

    def text(self, which: str = "stdout") -> str:
        path = self.stdout if which == "stdout" else self.stderr
        return path.read_bytes().decode("utf-8", errors="replace") if path and path.is_file() else ""

    def tail(self) -> str:
        """The last lines of each log file, for a failure message."""
        parts = []
        for which in ("stdout", "stderr"):
            path = self.stdout if which == "stdout" else self.stderr
            if path is None:
                continue
            lines = self.text(which).splitlines()
            title = "stdout+stderr" if self.stderr is None else which
            shown = "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty)"
            parts.append(f"--- last {min(len(lines), LOG_TAIL_LINES)} lines of {title} ({path}) ---\n{shown}")
        return "\n".join(parts)

    def status(self) -> str:
        return "ran past its timeout" if self.returncode is None else f"exited {self.returncode}"

    def require_success(self, brief: bool = False) -> None:
        """Fail unless the command exited 0: with the end of its log, or (``brief``, for the checks that build on a
        command another test reports in full) with the log's last line."""
        if self.returncode == 0:
            return
        if brief:
            last = next((line for line in reversed(self.text().splitlines()) if line.strip()), "(empty log)")
            pytest.fail(f"`{self.command}` {self.status()} (see its own test; log {self.stdout}): {last}",
                        pytrace=False)
        pytest.fail(f"`{self.command}` (in {self.cwd}) {self.status()}\n{self.tail()}", pytrace=False)


@dataclass
class UserMachine:
    venv: envs.ClientEnv
    workdir: Path  # the user's own folder: every command runs here
    home: Path  # HF_HOME and the like, outside the working folder

    def environment(self) -> dict:
        """An activated venv, offline, nothing of the checkout or of this test session on the path."""
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONSTARTUP")
            and not key.startswith(("HF_", "TRANSFORMERS_", "TQDM_", "GPT_SCRATCH_", "PYTEST_"))
        }
        env.update(
            PATH=f"{self.venv.path / 'bin'}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
            VIRTUAL_ENV=str(self.venv.path),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            HF_HOME=str(self.home / "hf-home"),
        )
        return env

    def gpt_scratch(self) -> str:
        """``gpt-scratch`` as the user's shell finds it: the venv's console script."""
        exe = shutil.which("gpt-scratch", path=self.environment()["PATH"])
        expect(exe and Path(exe).parent == self.venv.path / "bin", f"gpt-scratch on PATH is {exe}, not the venv's")
        return exe

    def run(self, name: str, args: list[str], *, separate_stderr: bool = False, timeout: int = COMMAND_TIMEOUT,
            program: str | None = None) -> Run:
        """``program args`` (default ``gpt-scratch``) from the working folder under umask 022, stdout (and stderr,
        unless ``separate_stderr``) into log files beside the working folder; never raises for a failed command."""
        argv = [program or self.gpt_scratch(), *args]
        logs = self.home / "logs"
        logs.mkdir(exist_ok=True)
        out_path = logs / f"{name}.log"
        err_path = logs / f"{name}.stderr.log" if separate_stderr else None
        start = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path or os.devnull, "wb") as err:
            try:
                proc = subprocess.run(
                    argv, cwd=self.workdir, env=self.environment(), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=err if separate_stderr else subprocess.STDOUT, timeout=timeout, umask=0o022,
                )
                returncode = proc.returncode
            except subprocess.TimeoutExpired:
                returncode = None
        seconds = time.perf_counter() - start
        RUN_TIMES[f"wheel:{name}"] = seconds
        return Run(argv, self.workdir, out_path, err_path, returncode, seconds, sorted(os.listdir(self.workdir)))


@pytest.fixture(scope="module")
def recipe() -> dict:
    """The default recipe, as the checkout ships it."""
    return yaml.safe_load((REPO / "configs" / f"{RECIPE_NAME}.yaml").read_text(encoding="utf-8"))


BUILD_ERRORS = (envs.EnvBuildError, OSError, subprocess.SubprocessError)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    error = None
    try:
        return envs.build_wheel(tmp_path_factory.mktemp("wheel-build"))
    except BUILD_ERRORS as err:
        error = err
    pytest.fail(f"cannot build the gpt-scratch wheel:\n{error}", pytrace=False)


@pytest.fixture(scope="module")
def machine(wheel, tmp_path_factory) -> UserMachine:
    error = None
    try:
        venv = envs.wheel_env(wheel)
    except BUILD_ERRORS as err:
        error = err
    if error is not None:
        pytest.fail(f"cannot install {wheel.name} into a fresh venv:\n{error}", pytrace=False)
    root = tmp_path_factory.mktemp("user")
    (root / "work").mkdir()
    (root / "home").mkdir()
    return UserMachine(venv, root / "work", root / "home")


@pytest.fixture(scope="module")
def pretrain(machine) -> Run:
    """``gpt-scratch pretrain --max-steps 30``: the default recipe, cut short, run once for the tests below."""
    return machine.run("pretrain", ["pretrain", "--max-steps", str(MAX_STEPS)], timeout=PRETRAIN_TIMEOUT)


@pytest.fixture(scope="module")
def run_folder(pretrain, machine, recipe) -> Path:
    """The finished run folder: the recipe's ``out``, relative to the working folder."""
    pretrain.require_success(brief=True)
    folder = machine.workdir / recipe["out"]
    if not folder.is_dir():
        pytest.fail(f"`{pretrain.command}` exited 0 but left no {recipe['out']}/ in the working folder "
                    f"(it holds: {', '.join(pretrain.entries_after)})\n{pretrain.tail()}", pytrace=False)
    return folder


# ---- the wheel -------------------------------------------------------------------------------------------------------


def _packaged_sources() -> dict[str, Path]:
    """What ``pyproject.toml`` puts into the wheel, as ``{path in the wheel: file in the checkout}``: every module of
    each listed package (from its ``package-dir``), its ``package-data``, and every module below a top-level package,
    so a sub-package missing from the list shows up too."""
    setup = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    packages, dirs, data = setup["packages"], setup.get("package-dir", {}), setup.get("package-data", {})
    wanted = {}
    for package in packages:
        source = REPO / dirs.get(package, package.replace(".", "/"))
        target = package.replace(".", "/")
        patterns = ["*.py", *data.get(package, [])]
        for pattern in patterns:
            for file in source.glob(pattern):
                if file.is_file():
                    wanted[f"{target}/{file.name}"] = file
    for package in (p for p in packages if "." not in p and p not in dirs):
        for file in (REPO / package).rglob("*.py"):
            if "__pycache__" not in file.parts:
                wanted[file.relative_to(REPO).as_posix()] = file
    return wanted


def test_wheel_holds_every_module_and_data_file(wheel):
    """Each module of the packages and each recipe and card template that pyproject.toml ships is in the wheel, with
    the checkout's bytes, and the wheel declares the ``gpt-scratch`` command: an installed wheel has everything the
    workflows import or read.  A file that git ignores is named as such (it never reaches a clone, nor CI's wheel)."""
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
        wanted = _packaged_sources()
        missing = sorted(name for name in wanted if name not in members)
        differ = sorted(name for name in wanted if name in members and archive.read(name) != wanted[name].read_bytes())
        entry_points = next((archive.read(n).decode() for n in members if n.endswith(".dist-info/entry_points.txt")),
                            "")
    problems = []
    for name in missing:
        source = wanted[name].relative_to(REPO)
        origin = "" if source.as_posix() == name else f" (from {source})"
        why = ": git ignores it (see .gitignore), so no clone has it" if envs.git_ignores(source) else ""
        problems.append(f"{name}{origin} is not in the wheel{why}")
    problems += [f"{name} in the wheel differs from {wanted[name].relative_to(REPO)}" for name in differ]
    expect(not problems, f"{wheel.name}:\n" + "\n".join(problems))
    expect(re.search(r"^gpt-scratch\s*=\s*pipelines\.cli:main\s*$", entry_points, re.MULTILINE),
           f"{wheel.name} declares no `gpt-scratch = pipelines.cli:main` console script:\n{entry_points}")


def test_the_venv_runs_the_installed_wheel_not_the_checkout(machine, wheel):
    """From the user's folder, ``pipelines``, ``modeling_gpt_scratch`` and the packaged recipe resolve inside the
    venv's site-packages, no entry of ``sys.path`` lies in the checkout, and the installed files are the wheel's
    (the installer's record matches the wheel's RECORD hash for hash)."""
    script = (  # find_spec locates a module without running it: this check need not import torch
        "import importlib.metadata as md, importlib.resources as res, importlib.util as iu, json, sys\n"
        "dist = md.distribution('gpt-scratch')\n"
        "print(json.dumps(dict(\n"
        "    pipelines=iu.find_spec('pipelines').origin, modeling=iu.find_spec('modeling_gpt_scratch').origin,\n"
        f"    recipe=str(res.files('pipelines.configs') / '{RECIPE_NAME}.yaml'), path=sys.path,\n"
        "    site=str(dist.locate_file('')),\n"
        "    files={str(f): f.hash.value for f in dist.files if f.hash})))\n"
    )
    run = machine.run("which-package", ["-c", script], separate_stderr=True, program=str(machine.venv.python))
    run.require_success()
    found = json.loads(run.text().strip().splitlines()[-1])
    site = Path(found["site"]).resolve()
    expect(site.is_relative_to(machine.venv.path.resolve()), f"gpt-scratch's files lie in {site}, not in the venv")
    for what in ("pipelines", "modeling", "recipe"):
        where = Path(found[what]).resolve()
        expect(where.is_relative_to(site), f"{what} resolves to {where}, outside the venv's site-packages {site}")
    venv = machine.venv.path.resolve()  # the cache of venvs may itself lie in the checkout (.cache/)
    inside = [p for p in found["path"] if p and Path(p).resolve().is_relative_to(REPO.resolve())
              and not Path(p).resolve().is_relative_to(venv)]
    expect(not inside, f"the checkout is on the installed package's sys.path: {inside}")
    with zipfile.ZipFile(wheel) as archive:
        record_name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        rows = csv.reader(io.StringIO(archive.read(record_name).decode()))
        expected = {row[0]: row[1].split("=", 1)[1] for row in rows if len(row) >= 2 and row[1]}
    differ = sorted(name for name, digest in expected.items() if found["files"].get(name) != digest)
    expect(not differ, f"installed files that are not {wheel.name}'s: {differ[:20]}")


def test_help_lists_every_workflow(machine):
    """``gpt-scratch --help`` exits 0 and names every workflow of the command table."""
    from pipelines.cli import COMMANDS  # the checkout's table: the installed one must show each of them

    run = machine.run("help", ["--help"], separate_stderr=True)
    run.require_success()
    listed = {line.split()[0] for line in run.text().splitlines() if line.startswith("  ") and line.split()}
    missing = [name for name in COMMANDS if name not in listed]
    expect(not missing, f"`{run.command}` does not list {missing}\n{run.tail()}")


# ---- gpt-scratch pretrain, with the defaults -------------------------------------------------------------------------


def test_pretrain_exits_0(pretrain):
    """``gpt-scratch pretrain --max-steps 30``, run as a batch job from the user's folder, exits 0 (else: the end of
    its log)."""
    pretrain.require_success()


def test_pretrain_runs_the_default_recipe(pretrain, run_folder, recipe):
    """``gpt-scratch pretrain --max-steps 30`` writes the run folder that ``configs/tiny-cpu.yaml`` names,
    relative to the working folder, and its ``run_config.yaml`` holds every value that recipe sets (``max_steps``:
    the flag's), so the installed wheel found its packaged recipe and nothing else changed it.  The model saved has
    the recipe's shape too (``config.json``)."""
    record = yaml.safe_load((run_folder / "run_config.yaml").read_text(encoding="utf-8"))
    expected = {**recipe, "max_steps": MAX_STEPS}
    wrong = []
    for key, value in expected.items():
        got = record.get(key, "<missing>")
        same = (pretrain.cwd / str(got)).resolve() == run_folder.resolve() if key == "out" else got == value
        if not same:
            wrong.append(f"{key}: {got!r} in run_config.yaml, {value!r} expected")
    expect(not wrong,
           f"{run_folder / 'run_config.yaml'} does not show configs/{RECIPE_NAME}.yaml:\n" + "\n".join(wrong))

    config = json.loads((run_folder / "config.json").read_text(encoding="utf-8"))
    shape = {CONFIG_JSON_NAMES.get(k, k): v for k, v in recipe.items() if CONFIG_JSON_NAMES.get(k, k) in config}
    wrong = [f"{k}: {config[k]!r} in config.json, {v!r} in the recipe" for k, v in shape.items() if config[k] != v]
    expect(not wrong, "the saved model is not the recipe's:\n" + "\n".join(wrong))


def test_pretrain_run_folder_is_complete(run_folder):
    """The run folder is a whole model folder: model card, config, weights, tokenizer, generation defaults, metrics,
    the run record and the code that ``config.json``'s auto_map names (both the configuration and the modeling file);
    the JSON files parse."""
    config = json.loads((run_folder / "config.json").read_text(encoding="utf-8"))
    code = sorted({ref.split(".", 1)[0] + ".py" for ref in config.get("auto_map", {}).values()})
    expect(len(code) >= 2, f"config.json's auto_map names {code}: the configuration and the modeling file expected")
    missing = [name for name in (*RUN_FOLDER_FILES, *code)
               if not (run_folder / name).is_file() or (run_folder / name).stat().st_size == 0]
    expect(not missing, f"{run_folder} lacks (or has empty) {missing}; it holds {sorted(os.listdir(run_folder))}")
    for name in RUN_FOLDER_FILES:
        if name.endswith(".json"):
            json.loads((run_folder / name).read_text(encoding="utf-8"))


def test_pretrain_run_folder_is_readable_by_everyone(run_folder, machine):
    """Under umask 022 every file the run wrote is readable by group and others and every folder readable and
    searchable by them, and nothing is writable by them: a run folder on a shared machine can be read, copied and
    served by colleagues.  (Checked: the run folder, all it holds, and the folders created up to the working
    folder.)"""
    paths = [run_folder, *sorted(run_folder.rglob("*"))]
    parent = run_folder.parent
    while parent != machine.workdir and parent.is_relative_to(machine.workdir):
        paths.append(parent)
        parent = parent.parent
    wrong = []
    for path in paths:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        mode = stat.S_IMODE(info.st_mode)
        wanted = 0o055 if stat.S_ISDIR(info.st_mode) else 0o044
        if mode & wanted != wanted or mode & 0o022:
            kind = "folder" if stat.S_ISDIR(info.st_mode) else "file"
            wrong.append(f"{oct(mode)} {kind} {path.relative_to(machine.workdir)}")
    expect(
        not wrong,
        "under umask 022, expected files 0644-style and folders 0755-style; these are not:\n" + "\n".join(wrong),
    )


def test_pretrain_log_has_plain_lines(pretrain):
    """The log file holds lines and nothing else: no carriage return (a progress bar drawn into a file) and no
    terminal escape sequence."""
    data = pretrain.stdout.read_bytes()
    bad = [(n, line) for n, line in enumerate(data.split(b"\n"), 1) if b"\r" in line or b"\x1b" in line]
    expect(
        not bad,
        f"`{pretrain.command}` > {pretrain.stdout.name} 2>&1 wrote {len(bad)} line(s) with a carriage return or an "
        "escape sequence:\n" + "\n".join(f"line {n}: {line[:300]!r}" for n, line in bad[:10]),
    )


def test_pretrain_log_hides_the_tied_weight_note(pretrain, recipe):
    """The recipe ties the head to the embedding and checkpoints at the end: Accelerate's note that it "removed shared
    tensor lm_head.weight" while saving (harmless: re-tied on load) is not shown; nothing else is hidden."""
    pretrain.require_success(brief=True)
    expect(recipe["tie_word_embeddings"] and recipe["checkpoint_every"], "the recipe no longer ties or checkpoints")
    expect("Removed shared tensor" not in pretrain.text(), "the log shows Accelerate's tied-weight note")


def test_pretrain_log_shows_progress_and_summary(pretrain, recipe):
    """The log shows progress as plain lines -- one every ``log_every`` steps of the recipe and at the last step,
    each with the step out of the total, the loss, tokens per second and the time left -- then the summary of the
    run (the losses, and the run folder)."""
    pretrain.require_success(brief=True)
    text = pretrain.text()
    shown = {}
    for line in text.splitlines():
        match = PROGRESS_LINE.search(line)
        if match and int(match.group(2)) == MAX_STEPS:
            shown[int(match.group(1))] = line
    every = recipe["log_every"]
    expected = sorted({*range(every, MAX_STEPS + 1, every), MAX_STEPS})
    expect(
        sorted(shown) == expected,
        f"progress lines for steps {sorted(shown)}, expected steps {expected} of {MAX_STEPS} (log_every {every})\n"
        f"{pretrain.tail()}",
    )
    for step, line in shown.items():
        fields = [part.split()[0] for part in line.split(" | ")[1:] if part.split()]
        absent = [name for name in PROGRESS_FIELDS if name not in fields]
        expect(not absent, f"the progress line of step {step} lacks {absent}: {line!r}")
    summary = SUMMARY_LINE.search(text)
    expect(summary, f"no summary line (`done: val loss ...`) in the log\n{pretrain.tail()}")
    expect(summary.start() > text.index(shown[MAX_STEPS]), "the summary comes before the last progress line")
    folder_line = RUN_FOLDER_LINE.format(out=recipe["out"])
    expect(folder_line in text[summary.start():], f"no `{folder_line}` after the summary\n{pretrain.tail()}")


def test_pretrain_writes_only_into_its_run_folder(pretrain, recipe):
    """The run leaves nothing in the user's folder but the run folder it was told to write."""
    pretrain.require_success(brief=True)
    expected = {Path(recipe["out"]).parts[0]}
    extra = sorted(set(pretrain.entries_after) - expected)
    expect(not extra, f"`{pretrain.command}` also wrote {extra} into the working folder {pretrain.cwd}")


# ---- using the run folder --------------------------------------------------------------------------------------------


def test_generate_continues_a_prompt_from_the_run_folder(machine, run_folder, recipe):
    """``gpt-scratch generate --model <run folder>`` (the path the user has, relative to the working folder) exits 0
    and prints a continuation of the prompt: the folder opens from the installed package, offline."""
    out = os.path.relpath(run_folder, machine.workdir)
    run = machine.run(
        "generate",
        ["generate", "--model", out, "--prompt", recipe["sample_prompt"], "--max-new-tokens", str(GENERATE_TOKENS),
         "--seed", str(recipe["seed"])],
        separate_stderr=True,
    )
    run.require_success()
    printed = run.text()
    expect(printed.rstrip("\n"), f"`{run.command}` printed no text: {printed!r}\n{run.tail()}")
