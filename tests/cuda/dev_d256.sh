export PATH=/usr/local/cuda/bin:$PATH
(BUILD=/tmp/new HDIMS=256 JOBS=8 NO_RUN=1 bash tests/cuda/run_bwd_harness.sh > $OUT/build_new.txt 2>&1; echo new rc=$? >> $OUT/rc.txt) &
(BUILD=/tmp/base HDIMS=256 JOBS=8 NO_RUN=1 EXTRA=-DJAX_FA3_BWD_D256_N=64 bash tests/cuda/run_bwd_harness.sh > $OUT/build_base.txt 2>&1; echo base rc=$? >> $OUT/rc.txt) &
wait; cat $OUT/rc.txt; grep -hE "built in|spill stores|C75|warnings present|HGMMA|error" $OUT/build_*.txt | grep -v " 0 bytes spill" | cut -c1-200 | head -20
B=/tmp/new/bwd_harness
timeout 60 $B --quick --d 256 > $OUT/quick.txt 2>&1; echo "quick rc=$?"; grep -E "FAIL|passed" $OUT/quick.txt | cut -c1-300 | tail -5
P="taskset -c 8-15"
(BWD_SWEEP_DET=0 timeout 300 $P $B --sweep --d 256 > $OUT/sweep.txt 2>&1; echo "sweep rc=$?" >> $OUT/bg.txt) &
(BWD_SWEEP_DET=1 timeout 300 $P $B --sweep --d 256 > $OUT/detsweep.txt 2>&1; echo "detsweep rc=$?" >> $OUT/bg.txt) &
(timeout 300 $P $B --varlen --sweep --d 256 > $OUT/vsweep.txt 2>&1; echo "vsweep rc=$?" >> $OUT/bg.txt) &
timeout 200 taskset -c 0-7 bash tests/cuda/ab.sh /tmp/base/bwd_harness $B 256
timeout 60 $B --deterministic --d 256 > $OUT/det.txt 2>&1; echo "det rc=$?"; grep -E "FAIL|passed" $OUT/det.txt | tail -3 | cut -c1-200
wait; cat $OUT/bg.txt; for f in sweep detsweep vsweep; do echo "$f: $(tail -1 $OUT/$f.txt)"; grep FAIL $OUT/$f.txt | head -4 | cut -c1-250; done
timeout 90 compute-sanitizer --tool memcheck $B --quick --d 256 2>&1 | tail -2
