# Two entry points for a fresh machine with Python 3.11 and pip:
#   make demo  - create .venv, install mlip, train -> evaluate on the bundled acac data
#   make test  - create .venv, install mlip[dev], run the test suite
# TORCH is installed first so pip does not pull a multi-GB CUDA build on CPU machines;
# override it (e.g. make test TORCH="torch==2.13.0 --index-url ...") for a CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/mlip train --config configs/quickstart.yaml

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) checkpoints/quickstart data/acac/.mlip_cache
