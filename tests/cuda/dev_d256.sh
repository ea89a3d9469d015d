# Session 13's verification call for the d256 64x80 backward (one device call).
export HARNESS_BUILD=bwd BWD_CHECK_PARTS="quick sweeps det memcheck" BWD_BENCH_PARTS=none SWEEP_T=220
export BENCH_FLAGS="--modes bwd --impls jax_fa3,jax_fa3-det,jax-cudnn --head_dims 64,128,256 --seqlens 2048,4096,8192,16384 --tag h100-bwd-s13"
bash scripts/device.sh build savelib bwdcheck bench bwdbench
B=/tmp/fa3_bwd_build/bwd_harness
SWEEP_DIMS="256" LOGDIR=$OUT/logs PARTS="detsweep" bash tests/cuda/device_bwd.sh 2>&1 | tail -4
timeout 100 compute-sanitizer --tool racecheck $B --quick --d 256 2>&1 | tail -2
