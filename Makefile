# The two README commands (`make demo`, `make test`) each set up everything they need on a
# fresh machine: a local virtualenv in .venv with this package and its test extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all setup clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sora_jax needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded Shapes World (resumes when run again).
demo: $(STAMP)
	$(PY) -m sora_jax.demo --workdir runs/demo

# The default test suite (CPU, 8 fake devices; `slow` tests excluded).
test: $(STAMP)
	$(PY) -m pytest -q

# Everything, slow tests included.
test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

clean:
	rm -rf $(VENV) runs
