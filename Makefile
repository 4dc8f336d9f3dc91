# `make demo` and `make test` work on a fresh clone: they create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch: the version CI tests (inside pyproject's `train` range, checked by tests/test_packaging.py).
# TORCH_INDEX=auto installs the CPU build from PyTorch's CPU index on a machine without an NVIDIA GPU
# (falling back to the default index when that is unreachable) and the default index's CUDA build on
# one with a GPU; `cpu`, `default` or an index URL (e.g. https://download.pytorch.org/whl/cu126) force
# a choice. See tools/install-torch.sh and README "Install".
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= auto

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "corticalrnn needs Python >= 3.11 (zarr 3); $(PYTHON) is older: make PYTHON=python3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	bash tools/install-torch.sh $(PY) "$(TORCH_VERSION)" "$(TORCH_INDEX)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -c "import torch; print('torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/corticalrnn demo --out demo-output

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/corticalrnn bench all --json bench-results.json

clean:
	rm -rf $(VENV) demo-output .pytest_cache
