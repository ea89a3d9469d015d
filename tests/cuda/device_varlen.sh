#!/usr/bin/env bash
# One device call for the varlen forward, on harnesses built elsewhere and
# carried in $BIN (default .devbuild/fwdbin: fwd_varlen_harness, fwd_harness;
# build with TARGETS="fwd_varlen_harness fwd_harness" NO_RUN=1
# BUILD=... tests/cuda/run_fwd_harness.sh, then copy the two binaries).
# Varlen sweep, dense sweep, memcheck (+ racecheck) on the varlen quick
# cases, varlen bench (with the dense kernel at the mean length), dense
# d128 bench. Logs to $OUT.
export PATH=/usr/local/cuda/bin:$PATH
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BIN=${BIN:-.devbuild/fwdbin}
V=$BIN/fwd_varlen_harness; D=$BIN/fwd_harness
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
echo "== varlen quick"; timeout 60 $V --quick > $OUT/vquick.txt 2>&1; echo "rc=$?"; cut -c1-200 $OUT/vquick.txt
echo "== varlen sweep"; timeout ${VSWEEP_T:-150} $V --sweep > $OUT/vsweep.txt 2>&1; echo "rc=$?"
grep FAIL $OUT/vsweep.txt | head -20 | cut -c1-250; tail -1 $OUT/vsweep.txt
echo "== varlen bench"; timeout 90 $V --bench 2>&1 | tee $OUT/vbench.txt | grep -v "^documents"
echo "== dense bench d128"; timeout 60 $D --bench --d 128 2>&1 | tee $OUT/dbench.txt | tail -7
echo "== memcheck"; timeout 120 compute-sanitizer --tool memcheck $V --quick > $OUT/memcheck.txt 2>&1; echo "rc=$?"; tail -3 $OUT/memcheck.txt
echo "== racecheck"; timeout 90 compute-sanitizer --tool racecheck $V --quick > $OUT/racecheck.txt 2>&1; echo "rc=$?"; tail -2 $OUT/racecheck.txt
echo "== dense sweep"; timeout ${DSWEEP_T:-200} $D --sweep > $OUT/dsweep.txt 2>&1; echo "rc=$?"
grep FAIL $OUT/dsweep.txt | head -10 | cut -c1-230; tail -1 $OUT/dsweep.txt
