export HARNESS_BUILD=none BENCH_FLAGS="--modes bwd --impls jax_fa3,jax_fa3-det,jax-cudnn --head_dims 64,128,256 --seqlens 2048,4096,8192,16384 --tag h100-bwd-s13-lpt"
bash scripts/device.sh build savelib bench
timeout 200 python3 -m pytest -q -m gpu tests/test_gpu_backward.py -k "launch_order or lengths" 2>&1 | tail -3
grep -E "^(##|impl|jax)" $OUT/logs/bench.log
