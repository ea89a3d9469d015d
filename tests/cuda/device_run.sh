#!/usr/bin/env bash
# One device call: build, quick check, sweep, bench, sanitizers. Logs to $OUT.
export PATH=/usr/local/cuda/bin:$PATH
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
NO_RUN=1 tests/cuda/run_fwd_harness.sh > $OUT/build.txt 2>&1 || { tail -c 6000 $OUT/build.txt; exit 1; }
cat /tmp/fa3_build/*.log > $OUT/ptxas.txt
grep -v "^building" $OUT/build.txt | cut -c1-160
B=/tmp/fa3_build/fwd_harness
for o in /tmp/fa3_build/cc_hopper_instantiations_*.o; do cuobjdump -sass $o > /tmp/sass.txt; echo "$(basename $o): HGMMA=$(grep -c HGMMA /tmp/sass.txt) LDL/STL=$(grep -cE 'LDL|STL' /tmp/sass.txt)"; done
echo "== quick"; timeout 30 $B --quick 2>&1 | tee $OUT/quick.txt | tail -8 || exit 1
echo "== sweep"; timeout ${SWEEP_T:-170} $B --sweep > $OUT/sweep.txt 2>&1; echo "rc=$?"; grep -c FAIL $OUT/sweep.txt; grep FAIL $OUT/sweep.txt | head -25 | cut -c1-230; tail -2 $OUT/sweep.txt
echo "== bench"; timeout ${BENCH_T:-80} $B --bench 2>&1 | tail -20
echo "== memcheck"; timeout 60 compute-sanitizer --tool memcheck $B --quick 2>&1 | tail -4
echo "== racecheck"; timeout 60 compute-sanitizer --tool racecheck $B --quick 2>&1 | tail -4
