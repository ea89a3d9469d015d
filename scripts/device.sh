#!/usr/bin/env bash
# Everything the GPU machine does, in one call of the `device` tool:
#   build  - install jax_fa3 from this working tree, all head dims, sm90a
#   test   - the CPU suite and the GPU-marked tests (+ the CUDA harness if present)
#   bench  - the side-by-side benchmark (benchmarks/attention.py)
#   demo   - the README's demo
# Usage (from the repo root, on the device):  bash scripts/device.sh build test bench
# It needs the nvidia-cutlass wheel carried in .whl/ (see README, "GPU machine").
# Logs and results go under $OUT (at most 8 files come back).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test bench)
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

# The GPU machine's compilers (see ../shared/device-notes.md).
[ -x /opt/gcc/bin/g++ ] && export CXX=/opt/gcc/bin/g++ CUDAHOSTCXX=/opt/gcc/bin/g++
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader \
  | sed 's/^/gpu: /' | tee -a "$summary"

for stage in "${stages[@]}"; do
  case "$stage" in
    build)
      t0=$(date +%s)
      JAX_FA3_CUDA=ON python3 -m pip install -v --no-build-isolation --no-deps -e . \
        >"$OUT/build.log" 2>&1
      rc=$?
      note "build: rc=$rc in $(( $(date +%s) - t0 )) s"
      grep -E "C75(10|08|17)|spill|error" "$OUT/build.log" | sort | uniq -c | head -20 | tee -a "$summary"
      python3 -c "import jax_fa3, jax; print('cuda_built', jax_fa3.cuda_built(), jax.devices())" \
        2>&1 | tail -1 | tee -a "$summary"
      ;;
    test)
      # The CPU suite pinned to the CPU backend (else arrays land on the GPU).
      JAX_PLATFORMS=cpu python3 -m pytest -q -m "not gpu" tests >"$OUT/test_cpu.log" 2>&1
      note "cpu tests: rc=$? $(tail -1 "$OUT/test_cpu.log")"
      python3 -m pytest -q -rs -m gpu tests >"$OUT/test_gpu.log" 2>&1
      note "gpu tests: rc=$? $(tail -1 "$OUT/test_gpu.log")"
      if [ -x tests/cuda/run_fwd_harness.sh ]; then
        bash tests/cuda/run_fwd_harness.sh >"$OUT/harness.log" 2>&1
        note "cuda harness: rc=$? $(tail -1 "$OUT/harness.log")"
      fi
      ;;
    bench)
      python3 -m benchmarks.attention --out_dir "$OUT" ${BENCH_FLAGS:-} >"$OUT/bench.log" 2>&1
      note "bench: rc=$?"
      tail -60 "$OUT/bench.log"
      ;;
    demo)
      python3 -m jax_fa3.examples.demo 2>&1 | tail -5 | tee -a "$summary"
      ;;
    *) note "unknown stage $stage" ;;
  esac
done
cat "$summary"
