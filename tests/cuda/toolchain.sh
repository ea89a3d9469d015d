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
