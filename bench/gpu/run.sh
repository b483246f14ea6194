#!/bin/sh
# Issue 21's GPU run, as one command on the GPU machine (JAX, no TensorFlow), from the repository root:
#   sh bench/gpu/run.sh [train.py flags]        with .gpu/ (bench/gpu/prepare.py --wheels) carried
# Installs the carried Keras and keras-hub wheels, then runs bench/gpu/train.py with its output in $OUT.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH=/tmp/site:. KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec python3 bench/gpu/train.py --out "${OUT:-/tmp/gpu-out}" "$@"
