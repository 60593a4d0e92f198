# `make demo`: set up, then pretrain the default tiny model on the embedded corpus (a few minutes on 2 CPU cores).
# `make test`: set up, then check the import layers (lint-imports) and run the test suite (the unit tests).
# `make test-ecosystem`: saved folders run by transformers 4.57 and 5.x, PEFT, TRL, lm-eval, ONNX, vLLM and llama.cpp,
#   each in a venv of its own under .cache/ecosystem-venvs/ (built from PyPI on first use, reused while its
#   requirements are unchanged; llama-cpp-python is compiled once and kept in ~/.cache/gpt-scratch/wheels), and the
#   package installed from a freshly built wheel into a venv of its own, run from a folder outside the checkout.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-ecosystem bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of PyTorch first (a plain `torch` would pull a multi-GB CUDA build), then the package.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# The book's package is a test-only oracle; its metadata pulls TensorFlow, so no dependencies.
	$(PY) -m pip install --quiet --no-deps llms-from-scratch
	touch $(STAMP)

demo: setup
	$(VENV)/bin/gpt-scratch pretrain --overwrite

test: setup
	$(VENV)/bin/lint-imports
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests --ignore=tests/ecosystem

test-ecosystem: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests/ecosystem

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache
