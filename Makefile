# Two entry points for a fresh machine with Python 3.11 and pip:
#   make demo  - create .venv, install mlip, train -> evaluate on the bundled acac data
#                (replaces the previous demo run in checkpoints/quickstart, and says so)
#   make test  - create .venv, install mlip[dev], run the test suite
#                (make test PYTEST_ARGS='-m "not slow"' for the fast subset)
# make clean removes the demo run and caches and keeps .venv; make distclean removes .venv too.
# TORCH is installed first so pip does not pull a multi-GB CUDA build on CPU machines;
# override it (e.g. make test TORCH="torch==2.13.0 --index-url ...") for a CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test venv clean distclean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/mlip train --config configs/quickstart.yaml --overwrite

# Two worker processes (pytest-xdist), one test file per worker at a time, so module-scoped
# fixtures are built once; TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf checkpoints/quickstart data/acac/.mlip_cache .pytest_cache

distclean: clean
	rm -rf $(VENV)
