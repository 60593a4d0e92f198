"""The layers of ``pipelines/`` hold, and a workflow loads only what it needs.

* ``lint-imports`` (the contracts in ``pyproject.toml``: cli > commands > services > core > base > the model; no
  command imports another; the model imports nothing of the pipelines) passes on the package as it is, and fails on
  a copy with one forbidden import added: a command importing another command, or the data layer importing the
  training loop.
* A short ``gpt-scratch pretrain`` in a fresh interpreter loads at most 20 ``pipelines`` modules with code (and the
  empty ``__init__`` of each layer's package), and none of the classifier, LoRA, export or serving code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands.test_pretrain import tiny_flags, write_corpus

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300)


def test_the_layers_hold():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("module,line,contract", [
    ("pipelines/commands/pretrain.py", "from . import generate  # noqa: F401", "no command imports another command"),
    ("pipelines/data/sources.py", "from ..training import trainer  # noqa: F401", "pipelines is layered"),
    ("modeling_gpt_scratch/modeling_gpt_scratch.py", "import pipelines.errors  # noqa: F401",
     "the uploaded model imports only"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
    for name in ("pipelines", "modeling_gpt_scratch", "configs", "model_cards"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout[-3000:]
    broken = [row for row in proc.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(row.startswith(contract) for row in broken), proc.stdout[-3000:]


def test_pretrain_loads_few_modules(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_docs=4, words_per_doc=200)
    flags = ["pretrain", *map(str, tiny_flags(corpus, tmp_path / "run", **{"--max-steps": 2, "--eval-every": 0}))]
    code = (
        "import json, sys\n"
        "from pipelines.cli import main\n"
        f"assert main({flags!r}) == 0\n"
        "print(json.dumps({m: sys.modules[m].__file__.endswith('__init__.py') for m in sys.modules\n"
        "                  if m == 'pipelines' or m.startswith('pipelines.')}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])  # module -> is a package's __init__
    code = sorted(m for m, package in loaded.items() if not package)
    assert len(code) <= 20, code
    assert len(loaded) - len(code) <= 6, sorted(loaded)  # pipelines and five layers' packages
    for unwanted in ("classify", "finetune_classifier", "lora", "gpt2_export", "gguf", "serving", "serve"):
        assert not [m for m in loaded if unwanted in m.split(".")], (unwanted, loaded)
