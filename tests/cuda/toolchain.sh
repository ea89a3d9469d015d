# Sourced by the harness build scripts (from the repo root): sets CUTLASS_INC
# (the installed cutlass_library, else the carried .whl) and CCBIN (the GPU
# machine's host compiler, see ../shared/device-notes.md).
if [ -z "${CUTLASS_INC:-}" ]; then
  if python3 -c "import cutlass_library" 2>/dev/null; then
    CUTLASS_INC=$(python3 -c "import cutlass_library, os; print(os.path.join(cutlass_library.source_path, 'include'))")
  else
    python3 -m pip install -q --no-index --no-deps --target /tmp/cutlass .whl/nvidia_cutlass*.whl
    CUTLASS_INC=/tmp/cutlass/cutlass_library/source/include
  fi
fi
CCBIN=""
if [ -x /opt/gcc/bin/g++ ]; then CCBIN="-ccbin /opt/gcc/bin/g++"; fi

# build_harness NAME "DEFS" "SRCS": compiles SRCS and tests/cuda/NAME.cu with
# $JOBS parallel nvcc jobs into $BUILD (one log per object: registers and
# spills are echoed), links $BUILD/NAME, and flags ptxas wgmma/setmaxnreg
# serialisation warnings. EXTRA adds nvcc flags.
build_harness() {
  local name=$1 defs=$2 srcs=$3
  mkdir -p "$BUILD"
  rm -f "$BUILD"/*.o "$BUILD"/*.log
  FLAGS="${EXTRA:-} $CCBIN -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr --use_fast_math -O3 -DNDEBUG -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED -std=c++17 -lineinfo -I. -I$CUTLASS_INC $defs -Xptxas=--warn-on-spills"
  export FLAGS BUILD
  echo "building with $JOBS jobs..."
  local start=$(date +%s)
  printf '%s\n' $srcs "tests/cuda/$name.cu" | xargs -P "$JOBS" -I{} bash -c \
    'o=$BUILD/$(echo {} | tr / _).o; s=$(date +%s); nvcc $FLAGS -Xptxas -v -c {} -o $o > $o.log 2>&1 || { cat $o.log; exit 255; }; echo "{}: $(( $(date +%s) - s ))s $(grep -h "registers\|spill" $o.log | grep -v "^$" | tr -s " " | tr "\n" " " | cut -c1-200)"' \
    || return 1
  nvcc $CCBIN -gencode=arch=compute_90a,code=sm_90a "$BUILD"/*.o -o "$BUILD/$name" || return 1
  if grep -h "C7510\|C7508\|C7517\|C7512\|C7514\|C7515" "$BUILD"/*.log; then
    echo "ptxas wgmma/setmaxnreg warnings present"
  fi
  echo "built in $(( $(date +%s) - start ))s"
}
