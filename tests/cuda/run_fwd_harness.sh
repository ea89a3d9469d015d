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
mkdir -p "$BUILD"
DEFS=""
SRCS="cc/hopper/device.cu cc/hopper/launch_fwd.cu"
for d in $HDIMS; do
  DEFS="$DEFS -DJAX_FA3_HAS_HDIM$d=1"
  SRCS="$SRCS $(ls cc/hopper/instantiations/*_hdim${d}_*.cu)"
done
FLAGS="${EXTRA:-} $CCBIN -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr --use_fast_math -O3 -DNDEBUG -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED -std=c++17 -lineinfo -I. -I$CUTLASS_INC $DEFS -Xptxas=--warn-on-spills"
export FLAGS BUILD
echo "building with $JOBS jobs..."
start=$(date +%s)
printf '%s\n' $SRCS tests/cuda/fwd_harness.cu | xargs -P "$JOBS" -I{} bash -c \
  'o=$BUILD/$(echo {} | tr / _).o; s=$(date +%s); nvcc $FLAGS -Xptxas -v -c {} -o $o > $o.log 2>&1 || { cat $o.log; exit 255; }; echo "{}: $(( $(date +%s) - s ))s $(grep -h "registers\|spill" $o.log | grep -v "^$" | tr -s " " | tr "\n" " " | cut -c1-200)"'
nvcc $CCBIN -gencode=arch=compute_90a,code=sm_90a "$BUILD"/*.o -o "$BUILD/fwd_harness"
if grep -h "C7510\|C7508\|C7517\|C7512" "$BUILD"/*.log; then echo "ptxas wgmma/setmaxnreg warnings present"; fi
echo "built in $(( $(date +%s) - start ))s"
[ -n "${NO_RUN:-}" ] && exit 0
"$BUILD/fwd_harness" "$@"
