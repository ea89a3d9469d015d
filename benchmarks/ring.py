r"""Weak-scaling benchmark of sequence parallelism (``jax_fa3.ring_attention``).

Every device of a 1-D mesh (axis ``seq``, ``jax.devices()``) holds ``--tokens_per_device``
tokens of ONE sequence (batch 1), so the global sequence is
``S = n * tokens_per_device``. Per point (causal x mode) it times

* ``ring``:   ``jax_fa3.ring_attention`` inside ``jax.shard_map`` over the n
              devices on the global sequence S (``--layout``: zigzag for
              causal by default, contiguous otherwise; the inputs are random,
              so they are generated directly in the layout and the
              permutation is not timed, as in a model that permutes tokens
              once at the input);
* ``single``: ``jax_fa3.attention`` on one device, at seqlen
              ``tokens_per_device`` (same tokens per device) and at seqlen S
              (same total work; the efficiency baseline, below).

Modes: ``fwd`` is the forward; ``bwd`` is forward + backward in one jitted
call (``jax.vjp`` applied to a random ``dout``, giving dq, dk, dv). NOTE this
differs from ``benchmarks.attention``, whose ``bwd`` times the backward alone.

FLOPs (FA3's count, batch 1): forward ``4 * h * S^2 * d``, halved when
causal; the backward is 2.5x the forward, so ``bwd`` (fwd + bwd) counts 3.5x.
For the ring, S is the GLOBAL seqlen and the work is divided by n:
``tflops_per_device = flops(S) / n / time``.

Weak-scaling efficiency. Attention is not work-constant under weak scaling:
with tokens per device fixed, the FLOPs per device grow n-fold (S^2 / n), so
tokens/s per device necessarily falls ~n-fold and is reported only as a
throughput figure (``tokens_per_s_per_device = tokens_per_device / time``).
The efficiency is the standard one for this setting, per-device attention
throughput of the ring against the single-device kernel on the same total
work:

    efficiency = ring tflops_per_device / single-device tflops at seqlen S
               = time(single, S) / (n * time(ring, n devices, S))

i.e. how close n devices come to an n-fold speed-up of the one-device kernel
on the same global sequence; 1.0 means the ring's communication, merge and
block-splitting overheads are fully hidden. If seqlen S does not run on one
device (out of memory, or above ``--single_max_seqlen``), the baseline is the
single-device TF/s at the largest seqlen ``S / 2^k >= tokens_per_device``
that runs (recorded as ``baseline_seqlen``). The issue-6 target is
``efficiency >= 0.9`` on 4 GPUs at 32k tokens per GPU, d 128, causal, zigzag:

  python -m benchmarks.ring --tokens_per_device 32768 --causal true

Check (``--check``, on by default): before timing a ring point, its output
(fwd) or dq/dk/dv (bwd) on random global inputs is compared with
``jax_fa3.attention`` on the unsharded global sequence (replicated, run on
every device), with the zigzag permutation undone:
``max_abs_err`` and ``rel_err`` (||diff|| / ||ref||) go in the record, and
a rel_err above ``--check_rtol`` (default by dtype) makes the exit status 1.

Timing: ``benchmarks/timing.py`` (warm-up, then the median over ``--iters``
reps of back-to-back calls ending in one ``block_until_ready``, rotating over
``--input_sets`` random input sets).

XLA flags: ``--collective_overlap`` (default on) appends
``--xla_gpu_experimental_parallel_collective_overlap_limit=4`` to XLA_FLAGS.
With XLA's default limit of one collective in flight, the second array of
each ppermute (V, and dV in the backward) ran synchronously on the compute
stream (``python -m benchmarks.trace_overlap TRACE`` shows it).

Multi-process (one process per GPU): ``--coordinator host:port
--num_processes N --process_id i`` calls ``jax.distributed.initialize`` first;
the mesh then spans every process's devices, only process 0 prints and
writes, and each rep is a fixed ``--input_sets`` calls (no per-process
calibration, which could make the processes' collective calls disagree).

Output: ``<out_dir>/ring-<device tag>-x<n>.json`` (list of records, rewritten
after every point) and a table on stdout.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
    python -m benchmarks.ring --smoke --out_dir /tmp/ring
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

from benchmarks import cli
from benchmarks import common as bench_common
from benchmarks import timing
from benchmarks import trace_overlap

_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dim.")
_HEADS = flags.DEFINE_integer("heads", 16, "Query heads (hidden 2048 / 128).")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 0, "K/V heads; 0 = --heads.")
_TOKENS = flags.DEFINE_integer(
    "tokens_per_device", 32768,
    "Tokens of the (batch-1) sequence on each device; global = n * this.")
_CAUSAL = flags.DEFINE_enum("causal", "both", ["both", "true", "false"],
                            "Causal mask: both, only causal, or only not.")
_LAYOUT = flags.DEFINE_enum(
    "layout", "auto", ["auto", "zigzag", "contiguous"],
    "Ring layout; auto = zigzag for causal, contiguous otherwise.")
_MODES = flags.DEFINE_list("modes", ["fwd", "bwd"],
                           "fwd and/or bwd (bwd = forward + backward).")
_DTYPE = flags.DEFINE_enum(
    "dtype", "auto", ["auto", "bfloat16", "float16", "float32"],
    "Input dtype; auto = float32 on the CPU backend, bfloat16 otherwise.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls before timing.")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed reps; the median is kept.")
_MIN_REP_MS = flags.DEFINE_float(
    "min_rep_ms", 50.0, "Each timed rep lasts at least this long "
    "(single process only; see the module doc).")
_INPUT_SETS = flags.DEFINE_integer(
    "input_sets", 2, "Random input sets rotated through while timing.")
_SINGLE_MAX = flags.DEFINE_integer(
    "single_max_seqlen", 0, "Largest seqlen tried for the single-device "
    "efficiency baseline; 0 = the global seqlen.")
_CHECK = flags.DEFINE_bool(
    "check", True, "Compare each ring point once with jax_fa3.attention on "
    "the unsharded global sequence.")
_CHECK_RTOL = flags.DEFINE_float(
    "check_rtol", 0.0, "Largest accepted rel-L2 error of the check; 0 = "
    "1e-4 for float32, 2e-2 for 16-bit inputs.")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "results"), "Where ring-<tag>-x<n>.json goes.")
_TAG = flags.DEFINE_string(
    "tag", "", "Device tag in the file name; default: the device kind, "
    "sanitised (e.g. h200).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the random inputs.")
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "Tiny sizes that run on the CPU in seconds (256 tokens per "
    "device, d 64, 2 heads, 2 iters); flags given explicitly win.")
_SM_MARGIN = flags.DEFINE_integer(
    "sm_margin", -1, "sm_margin of ring_attention's forward kernels; -1 = the "
    "library default (jax_fa3.parallel.ring.RING_SM_MARGIN).")
_COLLECTIVE_OVERLAP = flags.DEFINE_bool(
    "collective_overlap", True, "Append jax_fa3.parallel.ring_comm.COLLECTIVE_OVERLAP_FLAG to "
    "XLA_FLAGS (unless it sets the overlap limit already), so that all of a ring step's "
    "transfers run beside its compute.")
_SINGLES = flags.DEFINE_bool(
    "singles", True, "Time the single-device baselines (needed for the "
    "efficiency); off for quick A/B runs of the ring alone.")
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", "", "Given, each ring point is also traced (jax.profiler, "
    "3 calls) into this folder, and the record gets how much of the NCCL "
    "time ran under attention kernels (benchmarks/trace_overlap.py).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", "", "host:port of jax.distributed's coordinator; given, "
    "jax.distributed.initialize runs first (one process per GPU).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "jax.distributed: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "jax.distributed: this process's rank.")

_SMOKE_OVERRIDES = {
    "tokens_per_device": 256,
    "head_dim": 64,
    "heads": 2,
    "warmup": 1,
    "iters": 2,
    "min_rep_ms": 0.0,
    "input_sets": 1,
}

AXIS = "seq"


# ----------------------------------------------------------------- helpers ----

def attn_flops(mode: str, heads: int, seqlen: int, d: int, causal: bool) -> float:
  """FA3's FLOP count for batch 1; ``bwd`` here is forward + backward."""
  f = 4.0 * heads * seqlen * seqlen * d
  if causal:
    f /= 2
  return f * (3.5 if mode == "bwd" else 1.0)


def _shard_map():
  import jax  # pylint: disable=g-import-not-at-top
  sm = getattr(jax, "shard_map", None)
  if sm is None:  # jax < 0.7
    from jax.experimental.shard_map import shard_map as sm  # pylint: disable=g-import-not-at-top
  return sm


def _set_xla_flags() -> None:
  """--collective_overlap: the XLA flag the ring needs, before jax starts."""
  from jax_fa3.parallel import ring_comm  # pylint: disable=g-import-not-at-top
  current = os.environ.get("XLA_FLAGS", "")
  name = ring_comm.COLLECTIVE_OVERLAP_FLAG.split("=")[0]
  if _COLLECTIVE_OVERLAP.value and name not in current:
    os.environ["XLA_FLAGS"] = f"{current} {ring_comm.COLLECTIVE_OVERLAP_FLAG}".strip()


def _init_distributed() -> None:
  """jax.distributed.initialize when --coordinator is given (before any other
  jax call: the backend must not start before it)."""
  if not _COORDINATOR.value:
    return
  if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
    raise app.UsageError("--coordinator needs --num_processes and --process_id")
  import jax  # pylint: disable=g-import-not-at-top
  try:  # CPU runs need cross-process collectives; no effect on the GPU client
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError):
    pass
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value)


class Bench:
  """Builds and times the ring and single-device callables of one config."""

  def __init__(self, heads, kv_heads, d, dtype, seed):
    import jax  # pylint: disable=g-import-not-at-top
    from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    self.heads, self.kv_heads, self.d, self.dtype = heads, kv_heads, d, dtype
    self.devices = jax.devices()  # global: every process's devices
    self.n = len(self.devices)
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self.local0 = jax.local_devices()[0]
    self.key = jax.random.key(seed)
    self.multiprocess = jax.process_count() > 1

  # --------------------------------------------------------------- inputs --

  def _shapes(self, seqlen):
    q = (1, seqlen, self.heads, self.d)
    kv = (1, seqlen, self.kv_heads, self.d)
    return q, kv, kv, q  # q, k, v, dout

  def inputs(self, seqlen, sharding, n_sets):
    """n_sets tuples (q, k, v, dout) of random normals, created directly
    with ``sharding`` (each process makes only its own shards)."""
    import jax  # pylint: disable=g-import-not-at-top
    shapes, dt = self._shapes(seqlen), self.dtype

    def make(key):
      keys = jax.random.split(key, 4)
      return tuple(jax.random.normal(kk, s, dt) for kk, s in zip(keys, shapes))

    make = jax.jit(make, out_shardings=(sharding,) * 4)
    sets = []
    for _ in range(n_sets):
      self.key, sub = jax.random.split(self.key)
      sets.append(make(sub))
    return jax.block_until_ready(sets)

  def seq_sharding(self):
    from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
    return NamedSharding(self.mesh, P(None, AXIS, None, None))

  def replicated(self):
    from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
    return NamedSharding(self.mesh, P())

  # ------------------------------------------------------------ callables --

  @staticmethod
  def _with_mode(attn, mode):
    """jit of f(q, k, v, dout): out (fwd) or (dq, dk, dv) (bwd = fwd + bwd)."""
    import jax  # pylint: disable=g-import-not-at-top
    if mode == "fwd":
      return jax.jit(lambda q, k, v, dout: attn(q, k, v))

    def fwd_bwd(q, k, v, dout):
      _, f_vjp = jax.vjp(attn, q, k, v)
      return f_vjp(dout)
    return jax.jit(fwd_bwd)

  def ring_fn(self, layout, causal, mode):
    import jax_fa3  # pylint: disable=g-import-not-at-top
    spec = self.seq_sharding().spec
    attn = _shard_map()(
        lambda q, k, v: jax_fa3.ring_attention(
            q, k, v, axis_name=AXIS, causal=causal, layout=layout,
            sm_margin=None if _SM_MARGIN.value < 0 else _SM_MARGIN.value),
        mesh=self.mesh, in_specs=(spec,) * 3, out_specs=spec)
    return self._with_mode(attn, mode)

  @staticmethod
  def single_fn(causal, mode):
    import jax_fa3  # pylint: disable=g-import-not-at-top
    return Bench._with_mode(
        lambda q, k, v: jax_fa3.attention(q, k, v, causal=causal), mode)

  def time(self, fn, arg_sets) -> timing.Timing:
    # Several processes: a fixed number of calls per rep (min_rep_ms 0 stops
    # the calibration at len(arg_sets)), so every process issues the same
    # sequence of collective calls.
    min_rep = 0.0 if self.multiprocess else _MIN_REP_MS.value
    return timing.time_fn(fn, arg_sets, warmup=_WARMUP.value,
                          reps=_ITERS.value, min_rep_ms=min_rep)

  # ---------------------------------------------------------------- check --

  def check(self, ring, layout, causal, mode) -> tuple[float, float]:
    """(max |ring - single|, rel-L2) on one random global input set; the
    reference is jax_fa3.attention on the whole sequence on every device."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from jax_fa3.parallel import zigzag_permute, zigzag_unpermute  # pylint: disable=g-import-not-at-top
    n, rep = self.n, self.replicated()
    args = self.inputs(n * _TOKENS.value, rep, 1)[0]
    want = jax.jit(self.single_fn(causal, mode), out_shardings=rep)(*args)
    zz = layout == "zigzag"
    # dout is per token too, so it takes the same permutation as q.
    to_ring = jax.jit(lambda xs: [zigzag_permute(x, n) if zz else x for x in xs],
                      out_shardings=self.seq_sharding())
    got = ring(*to_ring(list(args)))

    def errors(got, want):
      got, want = jax.tree.leaves(got), jax.tree.leaves(want)
      if zz:
        got = [zigzag_unpermute(g, n) for g in got]
      diffs = [(g.astype(jnp.float32) - w.astype(jnp.float32)) for g, w in zip(got, want)]
      abs_err = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in diffs]))
      rel = jnp.max(jnp.stack([jnp.linalg.norm(x) / jnp.linalg.norm(w.astype(jnp.float32))
                               for x, w in zip(diffs, want)]))
      return abs_err, rel

    errs = jax.jit(errors, out_shardings=(rep, rep))(got, want)
    abs_err, rel = (float(jax.device_get(e.addressable_shards[0].data)) for e in errs)
    return abs_err, rel


def _profile(fn, args, name, calls=3) -> dict[str, Any]:
  """Record fields from a trace of ``calls`` ring calls: the NCCL time per
  call and GPU, the part of it not under an attention kernel, and the
  overlap fraction (trace_overlap.py). Every process traces its own GPUs."""
  path = trace_overlap.capture(fn, args, os.path.join(_PROFILE_DIR.value, name), calls)
  stats = trace_overlap.overlap_stats(path)
  total = trace_overlap.summarize(stats)
  if not stats:
    return {"comm_overlap": None}
  per = calls * total["n_gpus"]
  if math.isnan(total["overlap"]):
    logging.warning("profile %s: the trace has NCCL but no compute kernels; overlap unknown "
                    "(see `python -m benchmarks.trace_overlap %s`)", name, path)
    return {"comm_overlap": None, "comm_ms_per_call": total["comm_ms"] / per}
  logging.info("profile %s: %d GPUs, per call and GPU: NCCL %.3f ms (exposed %.3f, overlap "
               "%.3f), attention kernels %.3f ms, other kernels %.3f ms, idle %.3f ms of %.3f "
               "(%s)", name, total["n_gpus"], total["comm_ms"] / per, total["exposed_ms"] / per,
               total["overlap"], total["attn_ms"] / per, total["other_ms"] / per,
               total["idle_ms"] / per, total["span_ms"] / per, path)
  return {"comm_overlap": total["overlap"], "comm_ms_per_call": total["comm_ms"] / per,
          "comm_exposed_ms_per_call": total["exposed_ms"] / per,
          "attn_kernel_ms_per_call": total["attn_ms"] / per,
          "other_kernel_ms_per_call": total["other_ms"] / per,
          "idle_ms_per_call": total["idle_ms"] / per}


# ----------------------------------------------------------------- records --

def _effective_margin() -> int:
  """The sm_margin the ring's forward kernels run with."""
  from jax_fa3.parallel import ring  # pylint: disable=g-import-not-at-top
  return _SM_MARGIN.value if _SM_MARGIN.value >= 0 else ring.RING_SM_MARGIN


def _record(impl, n, layout, causal, mode, tokens_per_device, seqlen, t, flops,
            **extra) -> dict[str, Any]:
  rec = {"impl": impl, "n_devices": n, "layout": layout, "causal": causal,
         "mode": mode, "tokens_per_device": tokens_per_device,
         "global_seqlen": seqlen, "ms": None, "tflops_per_device": None,
         "tokens_per_s_per_device": None, "efficiency": None}
  if t is not None:
    rec.update(ms=t.median_ms, ms_min=t.min_ms, ms_max=t.max_ms,
               calls_per_rep=t.calls_per_rep, reps=t.reps,
               tflops_per_device=flops / n / (t.median_ms * 1e-3) / 1e12,
               tokens_per_s_per_device=tokens_per_device / (t.median_ms * 1e-3))
  rec.update(extra)
  return rec


def format_table(records) -> str:
  head = (f"{'impl':<7}{'n':>3} {'layout':<11}{'causal':<7}{'mode':<5}"
          f"{'tok/dev':>8}{'global':>9}{'ms':>10}{'TF/s/dev':>10}"
          f"{'tok/s/dev':>11}{'eff':>7}{'base_s':>8}{'rel_err':>9}{'overlap':>8}")
  lines = [head, "-" * len(head)]
  for r in records:
    f = functools.partial(bench_common.cell, r)
    lines.append(
        f"{r['impl']:<7}{r['n_devices']:>3} {r['layout']:<11}{str(r['causal']):<7}"
        f"{r['mode']:<5}{r['tokens_per_device']:>8}{r['global_seqlen']:>9}"
        + f("ms", ".3f", 10) + f("tflops_per_device", ".4g", 10)
        + f("tokens_per_s_per_device", ".4g", 11) + f("efficiency", ".3f", 7)
        + f("baseline_seqlen", "d", 8) + f("rel_err", ".2g", 9)
        + f("comm_overlap", ".3f", 8)
        + (f"  ERROR {r['error'][:80]}" if r.get("error") else ""))
  return "\n".join(lines)


# -------------------------------------------------------------------- main --

def main(argv) -> None:
  cli.start(argv, _SMOKE.value, _SMOKE_OVERRIDES)
  modes = cli.parse_modes(_MODES.value)
  causals = {"both": [False, True], "true": [True], "false": [False]}[_CAUSAL.value]
  _set_xla_flags()
  _init_distributed()

  import jax  # pylint: disable=g-import-not-at-top
  rank0 = jax.process_index() == 0
  if not rank0:
    logging.set_verbosity(logging.WARNING)
  dtype = _DTYPE.value
  if dtype == "auto":
    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  heads, d, tpd = _HEADS.value, _HEAD_DIM.value, _TOKENS.value
  kv_heads = _KV_HEADS.value or heads
  bench = Bench(heads, kv_heads, d, dtype, _SEED.value)
  n = bench.n
  big_s = n * tpd
  rtol = _CHECK_RTOL.value or (1e-4 if dtype == "float32" else 2e-2)

  kind, auto_tag = bench_common.device_tag(bench.local0)
  json_path = os.path.join(_OUT_DIR.value, f"ring-{_TAG.value or auto_tag}-x{n}.json")
  if rank0:
    os.makedirs(_OUT_DIR.value, exist_ok=True)
  logging.info("%s x%d (%d processes), jax %s, %s; heads %d/%d, d %d, %d tokens "
               "per device, global %d -> %s", kind, n, jax.process_count(),
               jax.__version__, dtype, heads, kv_heads, d, tpd, big_s, json_path)
  common = {"dtype": dtype, "heads": heads, "kv_heads": kv_heads, "d": d,
            "sm_margin": _effective_margin(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "device": kind, "n_processes": jax.process_count()}

  records: list[dict[str, Any]] = []
  singles: dict[tuple[int, bool, str], dict[str, Any]] = {}
  failed_checks = 0
  t_start = time.time()

  def emit(rec):
    rec.update(common)
    records.append(rec)
    if rec["ms"] is not None:
      logging.info("%s n=%d %s causal=%s %s global %d: %.3f ms, %.2f TF/s/dev, "
                   "%.4g tok/s/dev%s", rec["impl"], rec["n_devices"], rec["layout"],
                   rec["causal"], rec["mode"], rec["global_seqlen"], rec["ms"],
                   rec["tflops_per_device"], rec["tokens_per_s_per_device"],
                   "" if rec["efficiency"] is None else f", efficiency {rec['efficiency']:.3f}")
    else:
      logging.warning("%s n=%d causal=%s %s: %s", rec["impl"], rec["n_devices"],
                      rec["causal"], rec["mode"], rec.get("error"))
    if rank0:  # rewritten after every point: a killed run keeps what it has
      tmp = json_path + ".tmp"
      with open(tmp, "w") as fh:
        json.dump(records, fh, indent=1)
      os.replace(tmp, json_path)

  def single(seqlen, causal, mode):
    """Single-device record at seqlen (cached; local device 0 of this process)."""
    key = (seqlen, causal, mode)
    if key not in singles:
      from jax.sharding import SingleDeviceSharding  # pylint: disable=g-import-not-at-top
      rec = _record("single", 1, "-", causal, mode, seqlen, seqlen, None, 0.0)
      try:
        args = bench.inputs(seqlen, SingleDeviceSharding(bench.local0),
                            max(1, _INPUT_SETS.value))
        t = bench.time(bench.single_fn(causal, mode), args)
        rec = _record("single", 1, "-", causal, mode, seqlen, seqlen, t,
                      attn_flops(mode, heads, seqlen, d, causal))
      except Exception as e:  # pylint: disable=broad-except
        rec["error"] = bench_common.short_error(e, 400)  # e.g. out of memory at a long seqlen
      singles[key] = rec
      emit(rec)
      gc.collect()
    return singles[key]

  for causal in causals:
    layout = _LAYOUT.value if _LAYOUT.value != "auto" else (
        "zigzag" if causal else "contiguous")
    for mode in modes:
      if _SINGLES.value:
        single(tpd, causal, mode)  # same tokens per device
      # Efficiency baseline: same total work (seqlen S) on one device, else
      # the largest S / 2^k that runs.
      base = None
      s = big_s
      while _SINGLES.value and s >= tpd:
        if not _SINGLE_MAX.value or s <= _SINGLE_MAX.value:
          r = single(s, causal, mode)
          if r["tflops_per_device"] is not None:
            base = r
            break
        s //= 2
      rec = _record("ring", n, layout, causal, mode, tpd, big_s, None, 0.0)
      try:
        ring = bench.ring_fn(layout, causal, mode)
        extra = {}
        if _CHECK.value:
          abs_err, rel = bench.check(ring, layout, causal, mode)
          extra = {"max_abs_err": abs_err, "rel_err": rel, "check_ok": rel <= rtol}
          if rel > rtol:
            failed_checks += 1
            logging.error("check FAILED: ring vs single rel-L2 %.3g > %.3g "
                          "(max abs %.3g)", rel, rtol, abs_err)
          gc.collect()
        args = bench.inputs(big_s, bench.seq_sharding(), max(1, _INPUT_SETS.value))
        t = bench.time(ring, args)
        if _PROFILE_DIR.value:
          extra.update(_profile(ring, args[0], f"{layout}-causal{causal}-{mode}"))
        rec = _record("ring", n, layout, causal, mode, tpd, big_s, t,
                      attn_flops(mode, heads, big_s, d, causal), **extra)
        if base is not None:
          rec["efficiency"] = rec["tflops_per_device"] / base["tflops_per_device"]
          rec["baseline_seqlen"] = base["global_seqlen"]
        del args
      except Exception as e:  # pylint: disable=broad-except
        rec["error"] = bench_common.short_error(e, 400)
      emit(rec)
      gc.collect()

  if rank0:
    print(f"\n# ring attention weak scaling: {kind} x{n}, {dtype}, heads "
          f"{heads}/{kv_heads}, d {d}, {tpd} tokens/device "
          f"(bwd = fwd+bwd; eff = ring TF/s/dev / single TF/s at base_s)")
    print(format_table(records))
    print(f"\n{len(records)} records in {time.time() - t_start:.0f} s -> {json_path}")
  if failed_checks:
    logging.error("%d ring check(s) failed", failed_checks)
  if bench.multiprocess:
    jax.distributed.shutdown()
  if failed_checks or any(r.get("error") and r["impl"] == "ring" for r in records):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
