#!/usr/bin/env bash
# Wan2.1-T2V-1.3B's DiT forward at 81 frames of 480x832 (32760 tokens, 512 text tokens), bf16:
# our DiT (cuDNN attention) vs diffusers (SDPA), same random weights (benchmarks/wan_dit.py).
#
#   bash benchmarks/gpu_wan.sh          # from the repo root on a lent H100; JSON under $OUT
#
# Writes $OUT/wan_dit_gpu.json (the benchmark's JSON), $OUT/wan_dit_gpu.log (its stderr and
# this script's notes) and $OUT/wan_dit_gpu_env.txt (nvidia-smi, the Python used, versions).
# Expected: about 3 minutes (peer init + 2.8 GB of weights through a safetensors file,
# our compile, 6 guided steps a side); every step is under `timeout`, so the whole script
# stays under ~8.5 minutes even when one fails. If the cuDNN run fails (e.g. its dense
# [B, 1, N, N] segment mask does not fit), it is rerun once with `--attention blocked`.
#
# Python: $PYTHON if set, else the first of .venv/bin/python and python3 that imports jax,
# flax, torch and diffusers and sees the GPU from both (the device image's python3 has JAX
# with CUDA and torch+cu13 but not diffusers: carry a folder holding `diffusers/` as
# .gpu_site, e.g. `pip install --no-deps --target .gpu_site diffusers==0.42.1`).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/wan_dit_out}
mkdir -p "$OUT"
LOG="$OUT/wan_dit_gpu.log"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu_site ] && export PYTHONPATH="$PYTHONPATH:$PWD/.gpu_site"

probe='import jax, flax, torch, diffusers
assert torch.cuda.is_available(), "torch sees no GPU"
assert jax.default_backend() == "gpu", "JAX sees no GPU"
print(jax.__version__, torch.__version__, diffusers.__version__)'
PY=""
for candidate in ${PYTHON:-} .venv/bin/python python3; do
  if command -v "$candidate" >/dev/null 2>&1 \
      && timeout 120 "$candidate" -c "$probe" >>"$LOG" 2>&1; then
    PY=$candidate
    break
  fi
  echo "gpu_wan.sh: $candidate cannot run both sides on the GPU (see above)" >>"$LOG"
done
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "python: ${PY:-none}"; } >"$OUT/wan_dit_gpu_env.txt" 2>&1
if [ -z "$PY" ]; then
  echo "gpu_wan.sh: no Python with jax (GPU), torch (CUDA) and diffusers; see $LOG" >&2
  exit 2
fi

GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
run() {  # $1: timeout in seconds, then wan_dit.py's arguments
  local limit=$1; shift
  timeout "$limit" "$PY" benchmarks/wan_dit.py --cases wan1.3b_480p --dtype bfloat16 \
    --repeats 5 --machine "1x $GPU (lent device, $(nproc) CPU cores)" \
    --out "$OUT/wan_dit_gpu.json" "$@" 2> >(tee -a "$LOG" >&2)
}
if ! run 300; then
  echo "gpu_wan.sh: the cuDNN run failed; rerunning with --attention blocked" | tee -a "$LOG" >&2
  run 180 --attention blocked || exit 1
fi
