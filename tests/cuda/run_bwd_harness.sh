#!/usr/bin/env bash
# Builds the Hopper library sources with the backward
# (-DJAX_FA3_BWD=1) + tests/cuda/bwd_harness.cu with parallel
# nvcc and runs the harness. Usage (repo root):
#   tests/cuda/run_bwd_harness.sh [--quick|--sweep|--deterministic|--bench] [--d N]
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
mkdir -p "$BUILD"
rm -f "$BUILD"/*.o "$BUILD"/*.log
DEFS="-DJAX_FA3_BWD=1"
# The harness calls run_bwd only: the forward (launch_fwd.cu, fwd_*) is not
# built here.
SRCS="cc/hopper/device.cu cc/hopper/launch_bwd.cu cc/hopper/bwd_preprocess.cu cc/hopper/bwd_postprocess.cu"
for d in $HDIMS; do
  DEFS="$DEFS -DJAX_FA3_HAS_HDIM$d=1"
  SRCS="$SRCS $(ls cc/hopper/instantiations/bwd_hdim${d}_*.cu)"
done
FLAGS="${EXTRA:-} $CCBIN -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr --use_fast_math -O3 -DNDEBUG -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED -std=c++17 -lineinfo -I. -I$CUTLASS_INC $DEFS -Xptxas=--warn-on-spills"
export FLAGS BUILD
echo "building with $JOBS jobs..."
start=$(date +%s)
printf '%s\n' $SRCS tests/cuda/bwd_harness.cu | xargs -P "$JOBS" -I{} bash -c \
  'o=$BUILD/$(echo {} | tr / _).o; s=$(date +%s); nvcc $FLAGS -Xptxas -v -c {} -o $o > $o.log 2>&1 || { cat $o.log; exit 255; }; echo "{}: $(( $(date +%s) - s ))s $(grep -h "registers\|spill" $o.log | grep -v "^$" | tr -s " " | tr "\n" " " | cut -c1-200)"'
nvcc $CCBIN -gencode=arch=compute_90a,code=sm_90a "$BUILD"/*.o -o "$BUILD/bwd_harness"
if grep -h "C7510\|C7508\|C7517\|C7512" "$BUILD"/*.log; then echo "ptxas wgmma/setmaxnreg warnings present"; fi
command -v cuobjdump >/dev/null && for o in "$BUILD"/cc_hopper_instantiations_bwd_*.o; do
  echo "$(basename $o): HGMMA $(cuobjdump -sass $o | grep -c HGMMA) LDL/STL $(cuobjdump -sass $o | grep -cE 'LDL|STL')"
done
echo "built in $(( $(date +%s) - start ))s"
[ -n "${NO_RUN:-}" ] && exit 0
timeout "${TIMEOUT:-540}" "$BUILD/bwd_harness" "$@"
