#!/usr/bin/env bash
# Everything the GPU machine does, in one call of the `device` tool:
#   build    install jax_fa3 from this working tree (all head dims, sm90a); in
#            parallel, build the CUDA harness (tests/cuda) with its own nvcc jobs
#   cputest  start the CPU suite in the background, pinned to the upper half of
#            the cores (JAX_PLATFORMS=cpu), so it overlaps the GPU stages
#   gputest  the tests marked `gpu` (FFI path on the Hopper kernels)
#   bench    python -m benchmarks.attention $BENCH_FLAGS
#   harness  the poisoned-output sweep of tests/cuda + compute-sanitizer memcheck
#   bwdcheck the backward harness (BWD_CHECK_PARTS of device_bwd.sh; quick, sweep,
#            determinism, memcheck by default) in the
#            background, on the upper cores
#   bwdbench the backward harness timings + racecheck (after bwdcheck)
#   gpuall   every `gpu` test, seven pytest processes sharing the GPU
#   savelib  copy the built extension to $OUT (carry it to skip a rebuild)
#   trainlm  examples.train_lm (h100-100m; fa3, cudnn, xla; 8k and 16k context)
#   ring     issue 6 on a several-GPU machine: benchmarks.ring over all GPUs
#            (RING_FLAGS) with the NCCL-overlap profile, a GQA check, and a
#            2-process jax.distributed run (one process per GPU, GPUs 0 and 1)
#   ringcfg  A/B of ring configurations (RING_CFGS: env + XLA flags), json in
#            $OUT/ab; RING_XLA_FLAGS=auto: later ring stages use the fastest
#   ringtrace  traces + optimized HLO of single ring cases, command buffers off
#   ringprof the NCCL-overlap profile, one ring case per process
#            (RINGPROF_CAUSAL: "false true"; XLA_FLAGS from RING_XLA_FLAGS)
#   varlen   issue 7 through JAX: tests/test_gpu_varlen.py, invalid offsets under
#            compute-sanitizer memcheck
#   varlenbench  python -m benchmarks.varlen ($VARLEN_FLAGS)
#   dqfuseab A/B through JAX of the backward (base: AB_BASE_ENV, default the
#            separate dQ convert kernel alone); scripts/ab_summary.py
#   demo     the README's demo
#   kprof    per-kernel times under ncu (no clock or cache control): the
#            backward's pre/main/convert kernels and cuDNN's, for the
#            varlen documents and dense 2k/16k (KPROF_DIM, default 128);
#            summary by scripts/kprof_summary.py
#   energy   the power stage on d128 builds with parts of the backward cut out
#            (ENERGY_VARIANTS of scripts/energy/*.patch): where its energy goes
#   power    SM clock and power (nvidia-smi every 50 ms) while the varlen
#            backward of ours and cuDNN's padded one run (POWER_IMPLS,
#            VARLEN_FLAGS); energy per call by scripts/power_summary.py
# Usage (repo root, on the device): bash scripts/device.sh build cputest gputest bench harness
# Needs the nvidia-cutlass wheel carried in .whl/ (README, "GPU machine").
# $OUT gets summary.txt, the benchmark's json/md/png and logs/ (written there
# directly, so a call killed at its time limit still brings back what ran).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/jax_fa3_out}
LOGS=${LOGS:-$OUT/logs}
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
stamp() { echo "[$(date +%T)] $*" | tee -a "$summary"; }

# The GPU machine's compilers (see ../shared/device-notes.md).
[ -x /opt/gcc/bin/g++ ] && export CXX=/opt/gcc/bin/g++ CUDAHOSTCXX=/opt/gcc/bin/g++
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
ncores=$(nproc)
half=$((ncores / 2))
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
  --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$summary"
cpu_pid=""
harness_pid=""
lowpin=""

for stage in "$@"; do
  case "$stage" in
    build)
      stamp "build start"
      # The CUDA harnesses (tests/cuda) build alongside, 6 nvcc jobs
      # (HARNESS_BUILD: "fwd bwd" by default).
      (for h in ${HARNESS_BUILD:-fwd bwd}; do
         JOBS=6 NO_RUN=1 bash tests/cuda/run_${h}_harness.sh >"$LOGS/harness_build_$h.log" 2>&1
       done) &
      harness_pid=$!
      t0=$(date +%s)
      JAX_FA3_CUDA=ON python3 -m pip install -v --no-build-isolation --no-deps -e . \
        >"$LOGS/build.log" 2>&1
      note "build: rc=$? in $(( $(date +%s) - t0 )) s (pip install -e ., all head dims)"
      grep -hE "C75(10|08|17)|spill stores|error:" "$LOGS/build.log" | grep -v " 0 bytes spill" \
        | sort | uniq -c | head -10 | tee -a "$summary"
      python3 -c "import jax_fa3, jax; print('cuda_built', jax_fa3.cuda_built(), jax.devices())" \
        2>&1 | tail -1 | tee -a "$summary"
      ;;
    cputest)
      pin=""
      [ "$ncores" -ge 8 ] && pin="taskset -c $half-$((ncores - 1))"
      JAX_PLATFORMS=cpu JAX_FA3_CPU_THREADS=$half $pin python3 -m pytest -q -m "not gpu" tests \
        >"$LOGS/test_cpu.log" 2>&1 &
      cpu_pid=$!
      # Keep the GPU stages off the cores the CPU suite runs on.
      [ -n "$pin" ] && lowpin="taskset -c 0-$((half - 1))"
      stamp "cpu tests started in the background (pid $cpu_pid)"
      ;;
    gputest)
      $lowpin python3 -m pytest -q -rs -m gpu ${GPU_TEST_ARGS:-tests} >"$LOGS/test_gpu.log" 2>&1
      stamp "gpu tests: rc=$? $(tail -1 "$LOGS/test_gpu.log")"
      grep -E "^(FAILED|ERROR)" "$LOGS/test_gpu.log" | head -10 | cut -c1-300 | tee -a "$summary"
      ;;
    gpuall)
      # Every `gpu` test (GPU_FWD_K: a -k filter for test_gpu.py), in seven
      # processes at once (the float64 references
      # on the CPU are the slow part); no preallocation, so they share the GPU.
      (export XLA_PYTHON_CLIENT_PREALLOCATE=false
       python3 -m pytest -q -rs -m gpu tests/test_gpu.py ${GPU_FWD_K:+-k "$GPU_FWD_K"} \
         >"$LOGS/gpu_fwd.log" 2>&1 &
       python3 -m pytest -q -rs -m gpu tests/test_gpu_backward.py -k "sweep and (64 or 96 or 128)" \
         >"$LOGS/gpu_bwd1.log" 2>&1 &
       python3 -m pytest -q -rs -m gpu tests/test_gpu_backward.py -k "sweep and not (64 or 96 or 128)" \
         >"$LOGS/gpu_bwd3.log" 2>&1 &
       python3 -m pytest -q -rs -m gpu tests/test_gpu_backward.py -k "not sweep" >"$LOGS/gpu_bwd2.log" 2>&1 &
       # The varlen sweep's float64 references take 15-30 s per test: 2 processes.
       python3 -m pytest -q -rs -m gpu tests/test_gpu_varlen.py -k "sweep and (64 or 96 or 128)" \
         >"$LOGS/gpu_varlen1.log" 2>&1 &
       python3 -m pytest -q -rs -m gpu tests/test_gpu_varlen.py -k "not (sweep and (64 or 96 or 128))" \
         >"$LOGS/gpu_varlen2.log" 2>&1 &
       python3 -m pytest -q -rs -m gpu tests --ignore=tests/test_gpu.py \
         --ignore=tests/test_gpu_backward.py --ignore=tests/test_gpu_varlen.py \
         >"$LOGS/gpu_other.log" 2>&1 &
       wait)
      for f in gpu_fwd gpu_bwd1 gpu_bwd3 gpu_bwd2 gpu_varlen1 gpu_varlen2 gpu_other; do
        stamp "$f: $(tail -1 "$LOGS/$f.log")"
        grep -E "^(FAILED|ERROR)" "$LOGS/$f.log" | head -8 | cut -c1-300 | tee -a "$summary"
      done
      ;;
    trainlm)
      # Issue 5's H100 run: the h100-100m preset at 8k and 16k context (same
      # tokens per step), one run per attention implementation, same seed.
      # TRAIN_IMPLS / TRAIN_STEPS / TRAIN_CTX override; results -> $OUT/train_lm.tar.gz.
      tdir="$LOGS/train_lm"
      mkdir -p "$tdir"
      for ctx in ${TRAIN_CTX:-8192 16384}; do
        for impl in ${TRAIN_IMPLS:-fa3 cudnn xla}; do
          t0=$(date +%s)
          timeout "${TRAIN_T:-240}" python3 -m jax_fa3.examples.train_lm --preset h100-100m \
            --attention "$impl" --seq_len "$ctx" --batch_size $((32768 / ctx)) \
            --steps "${TRAIN_STEPS:-300}" --eval_every "${TRAIN_EVAL_EVERY:-50}" \
            --warmup_steps 30 --eval_batches 4 --progress=false --out_dir "$tdir" \
            >"$tdir/train_${impl}_${ctx}.log" 2>&1
          stamp "train_lm $impl ctx=$ctx: rc=$? in $(( $(date +%s) - t0 )) s: $(grep -iE "tokens/s|error" "$tdir/train_${impl}_${ctx}.log" | tail -1 | cut -c1-200)"
        done
        ls "$tdir"/train_*_"$ctx".json >/dev/null 2>&1 && python3 -m jax_fa3.examples.plot_lm \
          "$tdir"/train_*_"$ctx".json --out "$tdir/compare_$ctx.png" >/dev/null 2>&1
      done
      tar -czf "$OUT/train_lm.tar.gz" -C "$tdir" .
      ;;
    savelib)
      # The built extension, to carry into a later call instead of rebuilding.
      # Gzipped: the device tool returns files of at most 16 MB (gunzip it here).
      python3 -c "import jax_fa3._jax_fa3_ext as e, shutil; shutil.copy(e.__file__, '$OUT')"
      gzip -f "$OUT"/_jax_fa3_ext*.so
      ;;
    bench)
      $lowpin python3 -m benchmarks.attention --out_dir "$OUT" ${BENCH_FLAGS:-} >"$LOGS/bench.log" 2>&1
      stamp "bench: rc=$?"
      ;;
    harness)
      [ -n "$harness_pid" ] && wait "$harness_pid"
      B=/tmp/fa3_build/fwd_harness
      if [ -x "$B" ]; then
        grep -hE "built in|spill|warnings present" "$LOGS/harness_build_fwd.log" \
          | grep -v " 0 bytes spill" | cut -c1-200 | tee -a "$summary"
        for d in ${HARNESS_DIMS:-64 96 128 192 256}; do
          timeout "${HARNESS_T:-60}" "$B" --d "$d" --sweep >"$LOGS/harness_sweep$d.log" 2>&1
          stamp "harness sweep d=$d: rc=$? $(tail -1 "$LOGS/harness_sweep$d.log")"
          grep FAIL "$LOGS/harness_sweep$d.log" | head -5 | cut -c1-200 | tee -a "$summary"
        done
        timeout 60 compute-sanitizer --tool memcheck "$B" --quick >"$LOGS/memcheck.log" 2>&1
        stamp "memcheck: rc=$? $(tail -1 "$LOGS/memcheck.log")"
      else
        note "harness: not built: $(tail -3 "$LOGS/harness_build_fwd.log")"
      fi
      ;;
    bwdcheck)
      # Backward harness correctness parts in the background (upper cores)
      # while the GPU tests run; bwdbench waits for it.
      [ -n "$harness_pid" ] && wait "$harness_pid"
      grep -hE "built in|spill|warnings present|HGMMA" "$LOGS/harness_build_bwd.log" \
        | grep -v " 0 bytes spill" | cut -c1-160 | tee -a "$summary"
      pin=""
      [ "$ncores" -ge 8 ] && pin="taskset -c $half-$((ncores - 1))"
      LOGDIR=$LOGS PARTS="${BWD_CHECK_PARTS:-quick sweep det memcheck}" $pin bash tests/cuda/device_bwd.sh \
        >"$LOGS/bwd_check.log" 2>&1 &
      bwd_pid=$!
      [ -n "$pin" ] && lowpin="taskset -c 0-$((half - 1))"
      stamp "bwd harness checks started in the background"
      ;;
    bwdbench)
      [ -n "${bwd_pid:-}" ] && wait "$bwd_pid" && grep -hE "^==|passed|ERROR SUMMARY|FAIL" \
        "$LOGS/bwd_check.log" | head -40 | cut -c1-220 | tee -a "$summary"
      bwd_pid=""
      LOGDIR=$LOGS PARTS="${BWD_BENCH_PARTS:-bench racecheck}" bash tests/cuda/device_bwd.sh \
        2>&1 | grep -vE "^(PASS|d=.*passed)" | tee -a "$summary" | tail -70
      ;;
    ringcfg)
      # A/B of ring configurations, ring only, no check, one process each:
      # RING_CFGS, ";"-separated "tag|env assignments|XLA_FLAGS|bench flags".
      # json in $OUT/ab. RING_XLA_FLAGS=auto: later ring stages run with the
      # fastest one's env and XLA_FLAGS (sum of its ring times).
      # Default: the library's settings against no step fence and against
      # XLA's default collective overlap limit.
      cfgs=${RING_CFGS:-"default|||;nofence|JAX_FA3_RING_FENCE=0||;lim1|||--nocollective_overlap"}
      ab="--singles=false --check=false --causal ${RING_AB_CAUSAL:-true} --profile_dir /tmp/ring_cfg"
      IFS=';' read -ra cfg_list <<<"$cfgs"
      for cfg in "${cfg_list[@]}"; do
        IFS='|' read -r tag envs flags bflags <<<"$cfg"
        env $envs XLA_FLAGS="$flags" python3 -m benchmarks.ring --out_dir "$OUT/ab" --tag "$tag" \
          $ab $bflags >"$LOGS/ringcfg_$tag.log" 2>&1
        stamp "ring A/B $tag (env '$envs', XLA_FLAGS '$flags', flags '$bflags'): rc=$?"
        grep -E "^ring|profile " "$LOGS/ringcfg_$tag.log" | sed 's/.*\] //; s/ (\/tmp.*//' \
          | cut -c1-220 | tee -a "$summary"
      done
      if [ "${RING_XLA_FLAGS:-}" = auto ]; then
        best=$(python3 - "$OUT/ab" "$cfgs" <<'PY'
import glob, json, sys
best = None
for cfg in sys.argv[2].split(";"):
  tag = cfg.split("|")[0]
  paths = glob.glob(f"{sys.argv[1]}/ring-{tag}-x*.json")
  if not paths:
    continue
  recs = json.load(open(paths[0]))
  ms = [r["ms"] for r in recs if r["impl"] == "ring"]
  if ms and all(ms) and (best is None or sum(ms) < best[0]):
    best = (sum(ms), cfg)
print(best[1] if best else "|||")
PY
)
        # The benchmark flags of the A/B (e.g. --modes) stay behind.
        IFS='|' read -r tag envs RING_XLA_FLAGS _ <<<"$best"
        note "ring: auto -> $tag (env '$envs', XLA_FLAGS '$RING_XLA_FLAGS')"
        [ -n "$envs" ] && export $envs
        export RING_XLA_FLAGS
      fi
      ;;
    ring)
      ngpu=$(nvidia-smi -L | wc -l)
      # RING_XLA_FLAGS: e.g. an HLO dump into $LOGS for the schedule.
      XLA_FLAGS="${RING_XLA_FLAGS:-}" python3 -m benchmarks.ring --out_dir "$OUT" \
        --profile_dir /tmp/ring_prof ${RING_FLAGS:-} >"$LOGS/ring.log" 2>&1
      stamp "ring x$ngpu: rc=$?"
      grep -E "^(ring|single)|FAILED|rror" "$LOGS/ring.log" | cut -c1-200 | tee -a "$summary"
      grep -E "profile " "$LOGS/ring.log" | sed 's/.*\] //; s/ (\/tmp.*//' | tee -a "$summary"
      [ "${RING_EXTRA:-1}" = 1 ] || continue  # RING_EXTRA=0: main run only
      XLA_FLAGS="${RING_XLA_FLAGS:-}" python3 -m benchmarks.ring --out_dir "$LOGS/gqa" \
        --tokens_per_device 8192 --kv_heads 4 \
        --iters 3 >"$LOGS/ring_gqa.log" 2>&1
      stamp "ring GQA 16/4 x$ngpu 8k/device: rc=$? $(grep -c "^ring" "$LOGS/ring_gqa.log") ring points"
      grep -E "^ring|FAILED" "$LOGS/ring_gqa.log" | cut -c1-200 | tee -a "$summary"
      if [ "$ngpu" -ge 2 ]; then
        # One process per GPU, coordinated by jax.distributed over localhost.
        for i in 0 1; do
          CUDA_VISIBLE_DEVICES=$i python3 -m benchmarks.ring --coordinator localhost:29517 \
            --num_processes 2 --process_id $i --out_dir "$OUT/mp" --tag h200-2proc \
            ${RING_MP_FLAGS:-} >"$LOGS/ring_mp$i.log" 2>&1 &
        done
        wait
        stamp "ring 2 processes: $(grep -c "^ring" "$LOGS/ring_mp0.log") ring points"
        grep -E "^(ring|single)|FAILED|rror" "$LOGS/ring_mp0.log" "$LOGS/ring_mp1.log" \
          | cut -c1-200 | tee -a "$summary"
      fi
      ;;
    ringprof)
      # One profiled ring case per process: in one process only the first
      # jax.profiler capture had compute kernels in it (trace_overlap.py).
      for c in ${RINGPROF_CAUSAL:-false true}; do
        for m in fwd bwd; do
          XLA_FLAGS="${RING_XLA_FLAGS:-}" python3 -m benchmarks.ring --singles=false \
            --check=false --causal "$c" --modes "$m" \
            --profile_dir "/tmp/ring_prof_$c$m" --out_dir "$OUT/prof" --tag "prof-causal$c-$m" \
            ${RING_FLAGS:-} >"$LOGS/ringprof_$c$m.log" 2>&1
          stamp "ring profile causal=$c $m: rc=$?"
          grep -E "^ring|profile " "$LOGS/ringprof_$c$m.log" | sed 's/.*\] //; s/ (\/tmp.*//' \
            | cut -c1-220 | tee -a "$summary"
        done
      done
      ;;
    ringtrace)
      # Traces and the optimized HLO of single ring cases (RINGTRACE_CASES,
      # "causal:mode" words), one process each, XLA command buffers off: the
      # kernels XLA runs inside CUDA graphs do not show up in the profiler's
      # trace. -> $OUT/ringtrace.tgz (perfetto traces, *after_optimizations.txt)
      rt=/tmp/ringtrace
      rm -rf "$rt"; mkdir -p "$rt"
      for case in ${RINGTRACE_CASES:-true:fwd true:bwd false:fwd}; do
        c=${case%%:*}; m=${case##*:}
        XLA_FLAGS="${RING_XLA_FLAGS:-} --xla_gpu_enable_command_buffer= --xla_dump_to=$rt/hlo_$c$m --xla_dump_hlo_as_text" \
          python3 -m benchmarks.ring --singles=false --check=false --causal "$c" --modes "$m" \
          --iters 5 --profile_dir "$rt/prof_$c$m" --out_dir "$rt" --tag "trace-$c-$m" \
          >"$LOGS/ringtrace_$c$m.log" 2>&1
        stamp "ring trace causal=$c $m (command buffers off): rc=$?"
        grep -E "^ring|profile " "$LOGS/ringtrace_$c$m.log" | sed 's/.*\] //; s/ (\/tmp.*//' \
          | cut -c1-220 | tee -a "$summary"
      done
      (cd "$rt" && find . -name "perfetto_trace.json.gz" -o -name "*after_optimizations.txt" \
         | tar czf "$OUT/ringtrace.tgz" -T -)
      ;;
    varlen)
      # The sweep's float64 references take 15-30 s per test: one process per
      # head dim, one for the rest, sharing the GPU.
      (export XLA_PYTHON_CLIENT_PREALLOCATE=false
       for d in 64 96 128 192 256; do
         timeout "${VARLEN_T:-300}" python3 -m pytest -q -rs -m gpu tests/test_gpu_varlen.py -k "sweep and -$d]" \
           >"$LOGS/gpu_varlen_$d.log" 2>&1 &
       done
       timeout "${VARLEN_T:-300}" python3 -m pytest -q -rs -m gpu tests/test_gpu_varlen.py -k "not sweep" \
         >"$LOGS/gpu_varlen_rest.log" 2>&1 &
       wait)
      for f in 64 96 128 192 256 rest; do
        stamp "gpu varlen $f: $(tail -1 "$LOGS/gpu_varlen_$f.log")"
        grep -E "^(FAILED|ERROR)" "$LOGS/gpu_varlen_$f.log" | head -10 | cut -c1-300 | tee -a "$summary"
      done
      [ "${VARLEN_MEMCHECK:-1}" = 1 ] || continue
      # PYTHONPATH: the repo root, for a carried extension (no build stage).
      PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 300 \
        compute-sanitizer --tool memcheck --error-exitcode 1 python3 tests/cuda/bad_offsets.py >"$LOGS/bad_offsets.log" 2>&1
      stamp "bad offsets under memcheck: rc=$? $(grep -c ": ran" "$LOGS/bad_offsets.log") cases ran, $(grep "ERROR SUMMARY" "$LOGS/bad_offsets.log" | tail -1)"
      ;;
    varlenbench)
      $lowpin python3 -m benchmarks.varlen --out_dir "$OUT" ${VARLEN_FLAGS:-} >"$LOGS/bench_varlen.log" 2>&1
      stamp "bench varlen: rc=$?"
      grep -A20 "^impl" "$LOGS/bench_varlen.log" | tee -a "$summary"
      ;;
    power)
      pdir="${POWER_DIR:-$OUT/power}"
      mkdir -p "$pdir"
      for impl in ${POWER_IMPLS:-jax_fa3-varlen jax-cudnn-padded}; do
        for c in false true; do
          tag="${POWER_PREFIX:-}${impl}_$c"
          nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active \
            --format=csv,noheader -lms 50 >"$pdir/smi_$tag.csv" &
          smi=$!
          python3 -m benchmarks.varlen --modes bwd --causal $c --impls $impl --check=false \
            --iters 30 --min_rep_ms 100 --out_dir "$pdir/$tag" ${VARLEN_FLAGS:-} \
            >"$LOGS/power_$tag.log" 2>&1
          rc=$?
          kill $smi
          stamp "power $tag: rc=$rc"
        done
      done
      python3 scripts/power_summary.py "$pdir" | tee -a "$summary"
      ;;
    energy)
      # Where the d128 varlen backward's energy goes: the extension rebuilt at
      # d128 with parts of the work cut out (scripts/energy/*.patch; their
      # results are wrong, only their time and power count), each variant's
      # backward under the power stage, with this checkout's build and
      # cuDNN's padded path in the same folder. ENERGY_VARIANTS:
      # "name:patch+patch ...".
      edir="$OUT/energy"
      mkdir -p "$edir"
      variants=${ENERGY_VARIANTS:-"nodq:no_dq_add elementwise:no_elementwise skeleton:no_dq_add+no_elementwise"}
      for v in $variants; do
        (name=${v%%:*}; patches=${v#*:}; dir=/tmp/energy_$name
         rm -rf "$dir" "$dir.whl" && mkdir -p "$dir"
         cp -r cc cmake jax_fa3 benchmarks scripts CMakeLists.txt pyproject.toml README.md "$dir/"
         rm -f "$dir"/jax_fa3/*.so  # a failed build must not time the carried one
         cd "$dir" && for pt in ${patches//+/ }; do patch -p1 -s <"scripts/energy/$pt.patch" || exit 1; done
         JAX_FA3_CUDA=ON JAX_FA3_HEAD_DIMS=128 CMAKE_BUILD_PARALLEL_LEVEL=$half \
           python3 -m pip wheel -v --no-build-isolation --no-deps -w "$dir.whl" . \
           >"$LOGS/energy_build_$name.log" 2>&1 || exit 1
         python3 -m zipfile -e "$dir.whl"/*.whl "$dir.whl/x" && cp "$dir.whl"/x/jax_fa3/_jax_fa3_ext*.so jax_fa3/
         stamp "energy: built $name") &
      done
      wait
      POWER_DIR=$edir POWER_PREFIX=base_ POWER_IMPLS="jax_fa3-varlen jax-cudnn-padded" \
        OUT=$OUT/energy_runs/base bash scripts/device.sh power >/dev/null 2>&1
      for v in $variants; do
        name=${v%%:*}
        POWER_DIR=$edir POWER_PREFIX=${name}_ POWER_IMPLS=jax_fa3-varlen \
          OUT=$OUT/energy_runs/$name bash /tmp/energy_$name/scripts/device.sh power >/dev/null 2>&1
        stamp "energy: $name rc=$?"
      done
      python3 scripts/power_summary.py "$edir" | tee -a "$summary"
      ;;
    kprof)
      d=${KPROF_DIM:-128}
      mets=gpu__time_duration.sum,sm__cycles_active.avg,sm__cycles_active.max,sm__cycles_elapsed.max,launch__grid_size
      quick="--warmup 1 --iters 1 --min_rep_ms 0 --input_sets 1 --check=false"
      ncu --clock-control none --cache-control none --csv --page raw --metrics $mets \
        python3 -m benchmarks.varlen --modes bwd --head_dim $d --heads $((2048 / d)) \
        --impls jax_fa3-varlen,jax-cudnn-padded,jax_fa3-dense --out_dir /tmp/kp $quick \
        >"$OUT/kprof_varlen_d$d.csv" 2>"$LOGS/kprof_varlen.log"
      stamp "kprof varlen d$d: rc=$?"
      python3 scripts/kprof_summary.py "$OUT/kprof_varlen_d$d.csv" | tee -a "$summary"
      ncu --clock-control none --cache-control none --csv --page raw --metrics $mets \
        python3 -m benchmarks.attention --modes bwd --head_dims $d --seqlens 2048,16384 \
        --impls jax_fa3,jax-cudnn --out_dir /tmp/kp $quick \
        >"$OUT/kprof_dense_d$d.csv" 2>"$LOGS/kprof_dense.log"
      stamp "kprof dense d$d: rc=$?"
      python3 scripts/kprof_summary.py "$OUT/kprof_dense_d$d.csv" | tee -a "$summary"
      ;;
    dqfuseab)
      # A/B of the backward through JAX, base = the build run with AB_BASE_ENV
      # (default JAX_FA3_BWD_DQ_FUSE_ROWS=0: the separate dQ convert kernel
      # alone; JAX_FA3_BWD_DQ_FIRST_STORE=0: the zeroed dQ accumulator), in the
      # order base new new base: the varlen documents (DQAB_VARLEN_FLAGS) and
      # dense points (DQAB_DIMS, DQAB_SEQLENS); json in $OUT/ab, summary by
      # scripts/ab_summary.py.
      for tag in base1 new1 new2 base2; do
        envs=""
        [ "${tag:0:4}" = base ] && envs="${AB_BASE_ENV:-JAX_FA3_BWD_DQ_FUSE_ROWS=0}"
        env $envs python3 -m benchmarks.varlen --modes bwd --impls jax_fa3-varlen --check=false \
          --out_dir "$OUT/ab" --tag "$tag" ${DQAB_VARLEN_FLAGS:-} >"$LOGS/ab_varlen_$tag.log" 2>&1
        env $envs python3 -m benchmarks.attention --modes bwd --impls jax_fa3 --check=false \
          --plot=false --head_dims "${DQAB_DIMS:-128}" --seqlens "${DQAB_SEQLENS:-512,2048,8192}" \
          --out_dir "$OUT/ab" --tag "dense-$tag" >"$LOGS/ab_dense_$tag.log" 2>&1
        stamp "dqfuseab $tag done"
      done
      python3 scripts/ab_summary.py "$OUT/ab" | tee -a "$summary"
      ;;
    demo)
      python3 -m jax_fa3.examples.demo 2>&1 | tail -4 | tee -a "$summary"
      ;;
    *) note "unknown stage $stage" ;;
  esac
done
if [ -n "${bwd_pid:-}" ]; then
  wait "$bwd_pid"
  grep -hE "^==|passed|ERROR SUMMARY|FAIL" "$LOGS/bwd_check.log" | head -40 | cut -c1-220 \
    | tee -a "$summary"
fi
if [ -n "$cpu_pid" ]; then
  wait "$cpu_pid"
  stamp "cpu tests: rc=$? $(tail -1 "$LOGS/test_cpu.log")"
fi
[ -f "$LOGS/bench.log" ] && tail -45 "$LOGS/bench.log"
cat "$summary"
