"""transformers' own common model tests, for the transformers installed here, fetched at test time.

Where the files come from
    The PyPI source distribution of the installed version (``pip download --no-deps --no-binary :all:
    transformers==<version>``) ships transformers' top-level ``tests/*.py``: ``test_modeling_common.py``
    (``ModelTesterMixin``), ``test_configuration_common.py`` (``ConfigTester``) and the other mixins.  They are
    unpacked into ``<repo>/.cache/hf-tests/<version>/transformers_tests/`` (git-ignored; ``GPT_SCRATCH_HF_TESTS_CACHE``
    moves the root) under the package name ``transformers_tests`` -- not ``tests``, which is this repository's own
    package -- and reused on later runs.  Nothing of it is copied into the repository.  Without network and cache
    :func:`load` raises :class:`SuiteUnavailable`, and the tests that need the suite skip with its reason.

    The suite needs the ``parameterized`` package.  Where it is not installed, its wheel is fetched the same way
    (``pip download``) into ``<cache root>/deps/`` and imported from there.

What the source distribution lacks, and what stands in
    ``test_modeling_common.py`` imports three modules from sub-folders that the sdist does not ship:

    - ``generation/test_utils.py`` (``GenerationTesterMixin``: transformers' ``generate`` tests -- greedy,
      sampling, beam search, assisted decoding, the cache classes, ``output_scores`` / ``output_attentions`` in
      ``generate``, left padding, continuing from a cache...).
    - ``exporters/test_export.py`` (``ExportTesterMixin``: ``torch.export`` of each model class).
    - ``utils/test_configuration_utils.py`` (``config_common_kwargs``, read by ``ConfigTester``).

    No PyPI package ships them, so a stand-in is written for each one that is missing: an empty
    ``GenerationTesterMixin``, an empty ``ExportTesterMixin``, and our own ``config_common_kwargs`` (every common
    ``PreTrainedConfig`` attribute of 5.x set away from its default).  With the stand-ins, transformers' generation
    tests and its export tests are NOT run; ``tests/model/test_hf_common.py`` covers the parts the issue asks for with
    tests of its own (static- vs dynamic-cache ``generate``, ``torch.export`` with dynamic batch and sequence).

    The real modules do work when present: copy ``tests/generation/`` (and/or ``tests/exporters/``,
    ``tests/utils/test_configuration_utils.py``) of transformers' git tag ``v<version>`` -- the same version as
    installed -- over the stand-ins in ``.cache/hf-tests/<version>/transformers_tests/``.  A stand-in is recognised by
    the line ``GPT_SCRATCH_STAND_IN = True``; a file without it is never overwritten.  The test class mixes in
    whichever ``GenerationTesterMixin`` is there, so the real one's tests are collected and run as well; with the
    stand-ins, two tests skip to say what is not covered (:func:`real_generation_tests`, :func:`real_export_tests`).

    ``test_pipeline_mixin.py`` is not usable outside transformers' checkout (it reads
    ``tests/utils/tiny_model_summary.json`` at import and downloads tiny models and tokenizers from the Hub), so
    pipeline tests are not run from the suite.
"""

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import pytest
import transformers

REPO = Path(__file__).resolve().parents[2]
CACHE_ROOT = Path(os.environ.get("GPT_SCRATCH_HF_TESTS_CACHE", REPO / ".cache" / "hf-tests"))
PACKAGE = "transformers_tests"
STAND_IN_MARK = "GPT_SCRATCH_STAND_IN = True"
PARAMETERIZED = "parameterized==0.9.0"
PIP_TIMEOUT_S = 300

_GENERATION_STAND_IN = f'''"""Stand-in written by gpt-scratch's tests/model/hf_suite.py: transformers' sdist does not ship
tests/generation/, so its generation tests are NOT run.  Replace this folder with tests/generation/ of transformers'
git tag v<version>."""
{STAND_IN_MARK}


class GenerationTesterMixin:
    """Empty: transformers' generate tests are not available here."""
'''

_EXPORT_STAND_IN = f'''"""Stand-in written by gpt-scratch's tests/model/hf_suite.py: transformers' sdist does not ship
tests/exporters/, so its torch.export tests are NOT run.  Replace this file with tests/exporters/test_export.py of
transformers' git tag v<version>."""
{STAND_IN_MARK}


class ExportTesterMixin:
    """Empty: transformers' export tests are not available here."""
'''

# Every attribute that PreTrainedConfig (5.x) keeps for all models, set away from its default: ConfigTester builds
# the config from these and checks that each one is kept.  dtype is compared as torch.float16.
_CONFIG_UTILS_STAND_IN = f'''"""Stand-in written by gpt-scratch's tests/model/hf_suite.py for transformers'
tests/utils/test_configuration_utils.py, which its sdist does not ship."""
{STAND_IN_MARK}

config_common_kwargs = {{
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["GPTScratchForCausalLM"],
    "id2label": {{0: "negative", 1: "positive", 2: "neutral"}},
    "label2id": {{"negative": 0, "positive": 1, "neutral": 2}},
    "problem_type": "multi_label_classification",
    "tie_word_embeddings": False,
    "bos_token_id": 7,
    "eos_token_id": 8,
    "pad_token_id": 9,
    "sep_token_id": 10,
    "decoder_start_token_id": 11,
    "tokenizer_class": "PreTrainedTokenizerFast",
    "prefix": "summarize: ",
    "task_specific_params": {{"summarization": {{"max_length": 12}}}},
    "finetuning_task": "sst-2",
}}
'''

STAND_INS = {
    "generation/test_utils.py": _GENERATION_STAND_IN,
    "exporters/test_export.py": _EXPORT_STAND_IN,
    "utils/test_configuration_utils.py": _CONFIG_UTILS_STAND_IN,
}


class SuiteUnavailable(RuntimeError):
    """transformers' test files could not be had (no network and no cache)."""


def version() -> str:
    return transformers.__version__


def suite_root(ver: str | None = None) -> Path:
    """The folder put on ``sys.path``: it holds the ``transformers_tests`` package."""
    return CACHE_ROOT / (ver or version())


def _pip(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    command = [sys.executable, "-m", "pip", *args, "--retries", "1", "--timeout", "30"]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as error:
        raise SuiteUnavailable(f"`pip {' '.join(args[:2])}` did not finish in {PIP_TIMEOUT_S} s") from error


def _download_sdist(ver: str, into: Path) -> Path:
    done = _pip("download", "--no-deps", "--no-binary", ":all:", f"transformers=={ver}", "-d", str(into))
    archives = sorted(into.glob("transformers-*.tar.gz"))
    if done.returncode != 0 or not archives:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SuiteUnavailable(
            f"transformers' test files for {ver} are not cached in {suite_root(ver)} and its source distribution "
            f"could not be downloaded from PyPI (no network?): {' | '.join(tail)}"
        )
    return archives[0]


def _unpack_tests(archive: Path, package: Path) -> int:
    """Extract the sdist's top-level ``tests/*.py`` into ``package``; returns how many files."""
    count = 0
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts  # transformers-<ver>/tests/<file>.py
            if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                (package / parts[2]).write_bytes(tar.extractfile(member).read())
                count += 1
    return count


def _write_stand_ins(package: Path) -> None:
    (package / "__init__.py").touch()
    for relative, text in STAND_INS.items():
        target = package / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / "__init__.py").touch()
        # a real module placed there by a developer is kept; a stand-in is brought up to date
        if _is_stand_in(target) and (not target.is_file() or target.read_text(encoding="utf-8") != text):
            target.write_text(text, encoding="utf-8")


def ensure(ver: str | None = None) -> Path:
    """The suite for ``ver`` (default: installed) in the cache, downloading it first if needed."""
    ver = ver or version()
    root = suite_root(ver)
    package = root / PACKAGE
    if not (package / "test_modeling_common.py").is_file():
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE_ROOT) as scratch:
            scratch = Path(scratch)
            staged = scratch / PACKAGE
            staged.mkdir()
            if (
                not _unpack_tests(_download_sdist(ver, scratch), staged)
                or not (staged / "test_modeling_common.py").is_file()
            ):
                raise SuiteUnavailable(f"transformers' {ver} source distribution has no tests/test_modeling_common.py")
            root.mkdir(parents=True, exist_ok=True)
            if package.exists():  # half-filled by an interrupted run; keep any real module placed in it
                for item in staged.iterdir():
                    if not (package / item.name).exists():
                        shutil.move(str(item), package / item.name)
            else:
                staged.rename(package)
    _write_stand_ins(package)
    return root


def _ensure_parameterized() -> None:
    if importlib.util.find_spec("parameterized") is not None:
        return
    deps = CACHE_ROOT / "deps"
    wheels = sorted(deps.glob("parameterized-*.whl"))
    if not wheels:
        deps.mkdir(parents=True, exist_ok=True)
        done = _pip("download", "--no-deps", "--only-binary", ":all:", PARAMETERIZED, "-d", str(deps))
        wheels = sorted(deps.glob("parameterized-*.whl"))
        if done.returncode != 0 or not wheels:
            raise SuiteUnavailable(
                "transformers' test suite needs the `parameterized` package: it is not installed, not cached in "
                f"{deps}, and could not be downloaded (pip install parameterized)"
            )
    sys.path.append(str(wheels[-1]))  # a pure-Python wheel imports straight from the archive


def _is_stand_in(path: Path) -> bool:
    return not path.is_file() or STAND_IN_MARK in path.read_text(encoding="utf-8", errors="replace")


def real_generation_tests(ver: str | None = None) -> bool:
    """Whether the cache holds transformers' real ``generation/test_utils.py`` (placed there by hand)."""
    return not _is_stand_in(suite_root(ver) / PACKAGE / "generation" / "test_utils.py")


def real_export_tests(ver: str | None = None) -> bool:
    return not _is_stand_in(suite_root(ver) / PACKAGE / "exporters" / "test_export.py")


def load():
    """Import and return ``(test_modeling_common, test_configuration_common, generation.test_utils)``.

    Raises :class:`SuiteUnavailable` when the files cannot be had."""
    root = ensure()
    _ensure_parameterized()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        with warnings.catch_warnings():
            # transformers registers its own markers (flash_attn_test, ...) in its conftest.py, which is not run here
            warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
            # generation.test_utils first: the real one imports helpers from test_modeling_common, which imports it
            generation = importlib.import_module(f"{PACKAGE}.generation.test_utils")
            modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
            configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in (PACKAGE, "transformers"):
            raise
        raise SuiteUnavailable(
            f"transformers' test suite needs the `{error.name}` package, not installed here"
        ) from error
    return modeling, configuration, generation
