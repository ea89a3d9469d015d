#!/usr/bin/env bash
# Builds the Hopper library sources + tests/cuda/fwd_harness.cu with parallel
# nvcc and runs the harness. Usage (repo root):
#   tests/cuda/run_fwd_harness.sh [harness args...]
# Env: CUTLASS_INC (default: from a carried .whl/nvidia_cutlass*.whl or the
# installed cutlass_library), BUILD (default /tmp/fa3_build), JOBS (default
# nproc), HDIMS (default "64 96 128 192 256"), NO_RUN=1 to only build.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-/tmp/fa3_build}
JOBS=${JOBS:-$(nproc)}
HDIMS=${HDIMS:-"64 96 128 192 256"}
source tests/cuda/toolchain.sh
DEFS=""
SRCS="cc/hopper/device.cu cc/hopper/launch_fwd.cu cc/hopper/varlen_fill.cu"
for d in $HDIMS; do
  DEFS="$DEFS -DJAX_FA3_HAS_HDIM$d=1"
  SRCS="$SRCS $(ls cc/hopper/instantiations/*_hdim${d}_*.cu)"
done
build_harness fwd_harness "$DEFS" "$SRCS"
[ -n "${NO_RUN:-}" ] && exit 0
"$BUILD/fwd_harness" "$@"
