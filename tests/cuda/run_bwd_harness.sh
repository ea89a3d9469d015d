#!/usr/bin/env bash
# Builds the Hopper library sources with the backward
# (-DJAX_FA3_BWD=1) + tests/cuda/bwd_harness.cu with parallel
# nvcc and runs the harness. Usage (repo root):
#   tests/cuda/run_bwd_harness.sh [--varlen] [--quick|--sweep|--deterministic|--bench] [--d N]
# Env: CUTLASS_INC, BUILD (default /tmp/fa3_bwd_build), JOBS (default nproc),
# HDIMS (default "64 96 128 192 256"), NO_RUN=1 to only build, EXTRA flags,
# TIMEOUT (default 540 s: a deterministic-mode deadlock must not eat the
# device call).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-/tmp/fa3_bwd_build}
JOBS=${JOBS:-$(nproc)}
HDIMS=${HDIMS:-"64 96 128 192 256"}
source tests/cuda/toolchain.sh
DEFS="-DJAX_FA3_BWD=1"
# The harness calls run_bwd only: the forward (launch_fwd.cu, fwd_*) is not
# built here. Its varlen mode (--varlen) is a TU of its own.
SRCS="cc/hopper/device.cu cc/hopper/varlen_fill.cu cc/hopper/launch_bwd.cu cc/hopper/bwd_preprocess.cu cc/hopper/bwd_postprocess.cu tests/cuda/bwd_varlen_harness.cu"
for d in $HDIMS; do
  DEFS="$DEFS -DJAX_FA3_HAS_HDIM$d=1"
  SRCS="$SRCS $(ls cc/hopper/instantiations/bwd_hdim${d}_*.cu)"
done
build_harness bwd_harness "$DEFS" "$SRCS"
command -v cuobjdump >/dev/null && for o in "$BUILD"/cc_hopper_instantiations_bwd_*.o; do
  echo "$(basename $o): HGMMA $(cuobjdump -sass $o | grep -c HGMMA) LDL/STL $(cuobjdump -sass $o | grep -cE 'LDL|STL')"
done
[ -n "${NO_RUN:-}" ] && exit 0
timeout "${TIMEOUT:-540}" "$BUILD/bwd_harness" "$@"
