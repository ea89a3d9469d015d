export PATH=/usr/local/cuda/bin:$PATH
for v in base:0 n32:32 n8:8; do n=${v%%:*}; mb=${v##*:}
  (BUILD=/tmp/$n JOBS=5 NO_RUN=1 HDIMS="64 128 256" EXTRA=-DJAX_FA3_BWD_LPT_MB=$mb bash tests/cuda/run_bwd_harness.sh > $OUT/build_$n.txt 2>&1; echo $n rc=$? >> $OUT/rc.txt) &
done
wait; cat $OUT/rc.txt; grep -hE "built in|C75|warnings present|error" $OUT/build_*.txt | head
B=/tmp/n32/bwd_harness
for d in 64 128 256; do (timeout 300 taskset -c 8-15 $B --sweep --d $d > $OUT/sweep$d.txt 2>&1) & done
echo "== base vs 32 MB"; BWD_BENCH_MODES=default timeout 240 taskset -c 0-7 bash tests/cuda/ab.sh /tmp/base/bwd_harness $B "64 128 256"
echo "== base vs 8 MB"; BWD_BENCH_MODES=default timeout 170 taskset -c 0-7 bash tests/cuda/ab.sh /tmp/base/bwd_harness /tmp/n8/bwd_harness "128 256"
wait; for d in 64 128 256; do echo "sweep $d: $(tail -1 $OUT/sweep$d.txt)"; grep FAIL $OUT/sweep$d.txt | head -3 | cut -c1-200; done
