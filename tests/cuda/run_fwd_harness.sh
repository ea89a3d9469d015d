#!/usr/bin/env bash
# Builds the Hopper library sources + the forward harness(es) with parallel
# nvcc and runs the first one. Usage (repo root):
#   tests/cuda/run_fwd_harness.sh [harness args...]
# Env: TARGETS (default "fwd_harness"; e.g. "fwd_varlen_harness fwd_harness"
# builds both on one set of library objects and runs the first), CUTLASS_INC
# (default: from a carried .whl/nvidia_cutlass*.whl or the installed
# cutlass_library), BUILD (default /tmp/fa3_build), JOBS (default nproc),
# HDIMS (default "64 96 128 192 256"), NO_RUN=1 to only build.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-/tmp/fa3_build}
JOBS=${JOBS:-$(nproc)}
HDIMS=${HDIMS:-"64 96 128 192 256"}
TARGETS=${TARGETS:-fwd_harness}
source tests/cuda/toolchain.sh
DEFS=""
SRCS="cc/hopper/device.cu cc/hopper/launch_fwd.cu cc/hopper/varlen_fill.cu"
for d in $HDIMS; do
  DEFS="$DEFS -DJAX_FA3_HAS_HDIM$d=1"
  SRCS="$SRCS $(ls cc/hopper/instantiations/fwd_hdim${d}_*.cu)"
done
first=${TARGETS%% *}
build_harness "$first" "$DEFS" "$SRCS"
for t in ${TARGETS#"$first"}; do  # further harnesses: only their own TU
  nvcc $FLAGS -c "tests/cuda/$t.cu" -o "$BUILD/tests_cuda_$t.cu.o"
  nvcc $CCBIN -gencode=arch=compute_90a,code=sm_90a "$BUILD"/cc_*.o \
    "$BUILD/tests_cuda_$t.cu.o" -o "$BUILD/$t"
done
[ -n "${NO_RUN:-}" ] && exit 0
"$BUILD/$first" "$@"
