#!/usr/bin/env bash
# Lean device call: build the given head dims, sweep them, time d64/d256,
# sanitizers on the quick cases.
export PATH=/usr/local/cuda/bin:$PATH
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export HDIMS=${HDIMS:-"64 192 256"}
NO_RUN=1 tests/cuda/run_fwd_harness.sh > $OUT/build.txt 2>&1 || { tail -c 5000 $OUT/build.txt; exit 1; }
grep -h "spill\|built\|warnings" $OUT/build.txt | grep -v " 0 bytes spill" | cut -c1-160
for o in /tmp/fa3_build/cc_hopper_instantiations_*.o; do cuobjdump -sass $o > /tmp/sass.txt; echo "$(basename $o): HGMMA=$(grep -c HGMMA /tmp/sass.txt) LDL/STL=$(grep -cE 'LDL|STL' /tmp/sass.txt)"; done
B=/tmp/fa3_build/fwd_harness
for d in $HDIMS; do timeout 60 $B --d $d --sweep > $OUT/sweep$d.txt 2>&1; echo "d=$d rc=$? $(tail -1 $OUT/sweep$d.txt)"; grep FAIL $OUT/sweep$d.txt | head -5 | cut -c1-200; done
for d in 64 256; do timeout 30 $B --d $d --bench 2>&1 | tail -6; done
echo "== memcheck"; timeout 40 compute-sanitizer --tool memcheck $B --quick 2>&1 | tail -2
echo "== racecheck"; timeout 40 compute-sanitizer --tool racecheck $B --quick 2>&1 | tail -2
