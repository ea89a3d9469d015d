# Session 13's verification calls for the d256 64x80 backward.
# DEV_STAGE=check: build, the d256 harness checks (background), every gpu test.
# DEV_STAGE=bench: the JAX benchmark with the carried library.
export HARNESS_BUILD=bwd SWEEP_DIMS=256 SWEEP_T=220 BWD_BENCH_PARTS=none
export BWD_CHECK_PARTS="quick sweeps det detsweep memcheck"
export BENCH_FLAGS="--modes bwd --impls jax_fa3,jax_fa3-det,jax-cudnn --head_dims ${BENCH_D:-64,128,256} --seqlens 2048,4096,8192,16384 --tag h100-bwd-s13"
B=/tmp/fa3_bwd_build/bwd_harness
if [ "${DEV_STAGE:-check}" = check ]; then
  timeout 560 bash scripts/device.sh build savelib bwdcheck gpuall bwdbench
  timeout 30 compute-sanitizer --tool racecheck $B --quick --d 256 2>&1 | tail -1
else
  bash scripts/device.sh bench
  tail -60 $OUT/logs/bench.log | grep -E "^(##|impl|jax)" 
fi
