#!/usr/bin/env bash
# Install jax_fa3 with its test extras and run the test suite.
# With nvcc present the CUDA part is compile-checked with a single kernel
# instantiation (JAX_FA3_HEAD_DIMS, default 128 here) to fit a 2-core CI
# machine; the GPU machine builds every head dim (scripts/device.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_FA3_HEAD_DIMS=${JAX_FA3_HEAD_DIMS:-128}
python3 -m pip install -q -e '.[test]'
python3 -m pytest -q tests "$@"
