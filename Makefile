# The two README commands (`make demo`, `make test`) each set up everything they need on a
# fresh machine: a local virtualenv in .venv with this package and its test extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all setup clean scaling-demo

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

# The CPU scaling micro-sweep (README "Scaling experiments"): the tiny10 VAE unless the
# demo's exists, the 1x/4x/16x ladder (latents encoded once; each rung trains, then is
# evaluated into adherence.json), then the fits, plot and contact sheet in
# benchmarks/results/scaling_cpu*. ~30-40 minutes on 2 cores; resumes when run again.
SCALING_VAE = $(if $(wildcard runs/demo/vae/final_metrics.json),runs/demo/vae,runs/scaling/vae)
scaling-demo: $(STAMP)
	@if [ ! -f $(SCALING_VAE)/final_metrics.json ]; then set -x; \
	  $(PY) -m sora_jax.main --config configs/vae.py:preset=tiny10 --workdir $(SCALING_VAE); fi
	$(PY) launch/sweep.py configs/scaling.py:base=tiny_cpu,vae_workdir=$(SCALING_VAE) \
	  --workdir_root runs/scaling \
	  --precompute_latents data/latents/scaling_tiny_cpu_$(subst /,_,$(SCALING_VAE))
	$(PY) -m sora_jax.scaling.report --root runs/scaling \
	  --out benchmarks/results/scaling_cpu.json --contact_sheet 4

# The default test suite (CPU, 8 fake devices; `slow` tests excluded), in TEST_WORKERS
# pytest-xdist processes, a test file each at a time (its module fixtures built once). One
# process leaves a 2-core machine half idle while XLA compiles (15.4 minutes in one process,
# 10.6 in two, on the 2-core CPU). TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
test: $(STAMP)
	$(PYTEST)

# Everything, slow tests included.
test-all: $(STAMP)
	$(PYTEST) -m ''

clean:
	rm -rf $(VENV) runs
