#!/usr/bin/env bash
# Device call for the backward harness: runs a prebuilt binary carried in
# .devbuild/bwd_harness (tests/cuda/run_bwd_harness.sh with NO_RUN=1 built it
# here; BWD_HARNESS names another), or builds it on the device when absent. Parts: $PARTS (default
# "quick sweep det bench memcheck racecheck"; the v* parts are the same for
# --varlen, and "sweeps" runs both sweeps at once); logs to $LOGDIR (default
# $OUT).
export PATH=/usr/local/cuda/bin:$PATH
OUT=${LOGDIR:-${OUT:-/tmp/out}}; mkdir -p "$OUT"
B=${BWD_HARNESS:-/tmp/fa3_bwd_build/bwd_harness}  # scripts/device.sh build puts it here
[ -x "$B" ] || B=.devbuild/bwd_harness
if [ ! -x "$B" ]; then
  BUILD=/tmp/fa3_bwd_build NO_RUN=1 tests/cuda/run_bwd_harness.sh > "$OUT/bwd_build.txt" 2>&1 \
    || { tail -c 5000 "$OUT/bwd_build.txt"; exit 1; }
  grep -E "built in|spill stores|C75|warnings present|HGMMA" "$OUT/bwd_build.txt" | grep -v " 0 bytes spill stores" | cut -c1-200
  B=/tmp/fa3_bwd_build/bwd_harness
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
for part in ${PARTS:-quick sweep det bench memcheck racecheck}; do
  case $part in
    quick) timeout 60 $B --quick > "$OUT/bwd_quick.txt" 2>&1; echo "== quick rc=$?"; cut -c1-260 "$OUT/bwd_quick.txt" | tail -12 ;;
    sweep) # one process per head dim: the float64 reference is the slow part
      for d in ${SWEEP_DIMS:-64 96 128 192 256}; do timeout ${SWEEP_T:-240} $B --sweep --d $d > "$OUT/bwd_sweep$d.txt" 2>&1 & done; wait
      for d in ${SWEEP_DIMS:-64 96 128 192 256}; do echo "== sweep d=$d: $(tail -1 "$OUT/bwd_sweep$d.txt")"; grep FAIL "$OUT/bwd_sweep$d.txt" | head -8 | cut -c1-260; done ;;
    sweeps) # dense and varlen, one process per head dim each
      for d in ${SWEEP_DIMS:-64 96 128 192 256}; do
        timeout ${SWEEP_T:-240} $B --sweep --d $d > "$OUT/bwd_sweep$d.txt" 2>&1 &
        timeout ${SWEEP_T:-240} $B --varlen --sweep --d $d > "$OUT/bwdv_sweep$d.txt" 2>&1 &
      done; wait
      for f in "$OUT"/bwd_sweep*.txt "$OUT"/bwdv_sweep*.txt; do echo "== $(basename $f): $(tail -1 $f)"; grep FAIL $f | head -6 | cut -c1-300; done ;;
    vquick) timeout 90 $B --varlen --quick > "$OUT/bwdv_quick.txt" 2>&1; echo "== varlen quick rc=$?"; cut -c1-300 "$OUT/bwdv_quick.txt" | tail -12 ;;
    vsweep) for d in ${SWEEP_DIMS:-64 96 128 192 256}; do timeout ${SWEEP_T:-240} $B --varlen --sweep --d $d > "$OUT/bwdv_sweep$d.txt" 2>&1 & done; wait
      for d in ${SWEEP_DIMS:-64 96 128 192 256}; do echo "== varlen sweep d=$d: $(tail -1 "$OUT/bwdv_sweep$d.txt")"; grep FAIL "$OUT/bwdv_sweep$d.txt" | head -8 | cut -c1-300; done ;;
    vdet) timeout ${DET_T:-120} $B --varlen --deterministic > "$OUT/bwdv_det.txt" 2>&1; echo "== varlen det rc=$?"; grep -E "FAIL|passed" "$OUT/bwdv_det.txt" | cut -c1-300 ;;
    vbench) timeout ${BENCH_T:-120} $B --varlen --bench 2>&1 | tee "$OUT/bwdv_bench.txt" ;;
    vmemcheck) timeout 180 compute-sanitizer --tool memcheck $B --varlen --quick 2>&1 | tail -4 ;;
    detsweep) # the sweep's values in deterministic mode (--deterministic checks reproducibility)
      for d in ${SWEEP_DIMS:-64 96 128 192 256}; do BWD_SWEEP_DET=1 timeout ${SWEEP_T:-240} $B --sweep --d $d > "$OUT/bwd_detsweep$d.txt" 2>&1 & done; wait
      for d in ${SWEEP_DIMS:-64 96 128 192 256}; do echo "== det sweep d=$d: $(tail -1 "$OUT/bwd_detsweep$d.txt")"; grep FAIL "$OUT/bwd_detsweep$d.txt" | head -8 | cut -c1-260; done ;;
    det) timeout ${DET_T:-120} $B --deterministic > "$OUT/bwd_det.txt" 2>&1; echo "== det rc=$?"; tail -16 "$OUT/bwd_det.txt" | cut -c1-200 ;;
    bench) timeout ${BENCH_T:-120} $B --bench ${BENCH_D:+--d $BENCH_D} 2>&1 | tee "$OUT/bwd_bench.txt" | tail -60 ;;
    memcheck) timeout 120 compute-sanitizer --tool memcheck $B --quick 2>&1 | tail -3 ;;
    racecheck) timeout 120 compute-sanitizer --tool racecheck $B --quick --d 128 2>&1 | tail -3 ;;
  esac
done
