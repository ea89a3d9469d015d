r"""Attention throughput: jax_fa3 against JAX's own attention paths.

Grid of the FlashAttention-3 paper: ``--tokens`` tokens per point
(batch = tokens / seqlen), hidden ``--hidden`` (heads = hidden / head_dim),
seqlen x head_dim x causal, forward and backward. Implementations:

* ``jax_fa3``:     ``jax_fa3.attention`` (needs the native extension);
* ``jax_fa3-det``: the same with ``deterministic=True`` (bitwise-reproducible
                   backward; the forward is the same kernel);
* ``jax-cudnn``:   ``jax.nn.dot_product_attention(..., implementation='cudnn')``;
* ``jax-xla``:     the same with ``implementation='xla'`` (skipped above
                   ``--xla_max_seqlen``: it materialises the score matrix);
* ``pallas-mgpu``: ``jax.experimental.pallas.ops.gpu.attention_mgpu`` (float16
                   only, forward only).

FLOPs: forward 4*b*h*s^2*d, halved when causal; backward 2.5x the forward
FLOPs over the backward time alone. Timing: see ``benchmarks/timing.py``.

  python -m benchmarks.attention                       # full grid, GPU
  python -m benchmarks.attention --modes fwd --head_dims 128 --out_dir $OUT
  python -m benchmarks.attention --smoke --impls jax-xla --out_dir /tmp/bench
  python -m benchmarks.attention --dry_run             # list the points

Writes ``<out_dir>/<tag>.json`` (a list of records, rewritten after every
point so a killed run keeps what it measured), ``<tag>.md`` (the tables) and
``<tag>.png`` (bar chart, ``benchmarks/plot.py``).
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging

from benchmarks import cli
from benchmarks import common
from benchmarks.common import Prepared, compare, device_tag, flops
from benchmarks import plot as plot_lib
from benchmarks import timing

ALL_IMPLS = ("jax_fa3", "jax_fa3-det", "jax-cudnn", "jax-xla", "pallas-mgpu")
# Our own variants: never counted as a peer in the "/ best peer" row.
_OURS = ("jax_fa3", "jax_fa3-det")

_IMPLS = flags.DEFINE_list("impls", [i for i in ALL_IMPLS if i != "jax_fa3-det"],
                           f"Implementations to time, of {ALL_IMPLS} (jax_fa3-det: "
                           "backward only, not in the default list).")
_MODES = flags.DEFINE_list("modes", ["fwd", "bwd"], "fwd and/or bwd.")
_HEAD_DIMS = flags.DEFINE_list("head_dims", ["64", "128", "256"], "Head dims.")
_SEQLENS = flags.DEFINE_list(
    "seqlens", ["512", "1024", "2048", "4096", "8192", "16384"],
    "Sequence lengths (q and kv).")
_CAUSAL = flags.DEFINE_enum("causal", "both", ["both", "true", "false"],
                            "Causal mask: both, only causal, or only not.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "bfloat16", ["bfloat16", "float16", "float32"],
    "Input dtype (pallas-mgpu always runs float16 and is recorded so).")
_TOKENS = flags.DEFINE_integer("tokens", 16384,
                               "Tokens per point: batch = tokens / seqlen.")
_HIDDEN = flags.DEFINE_integer("hidden", 2048,
                               "Hidden size: heads = hidden / head_dim.")
_GQA = flags.DEFINE_integer(
    "gqa", 1, "Query heads per K/V head (GQA/MQA): k and v get heads / gqa heads.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls before timing.")
_ITERS = flags.DEFINE_integer(
    "iters", 10, "Timed reps (each a loop of back-to-back calls); median.")
_MIN_REP_MS = flags.DEFINE_float(
    "min_rep_ms", 50.0, "Each timed rep lasts at least this long.")
_INPUT_SETS = flags.DEFINE_integer(
    "input_sets", 3, "Random input sets rotated through while timing "
    "(jax-xla drops to 1 when its score matrices would not fit).")
_XLA_MAX_SEQLEN = flags.DEFINE_integer(
    "xla_max_seqlen", 8192, "Skip jax-xla above this seqlen (memory/time).")
_MGPU_BLOCK_Q = flags.DEFINE_integer("mgpu_block_q", 64, "pallas-mgpu block_q.")
_MGPU_BLOCK_KV = flags.DEFINE_integer("mgpu_block_kv", 128,
                                      "pallas-mgpu block_kv.")
_MGPU_STEPS = flags.DEFINE_integer("mgpu_max_concurrent_steps", 2,
                                   "pallas-mgpu max_concurrent_steps.")
_CHECK = flags.DEFINE_bool(
    "check", True, "Before timing jax_fa3 at a point, record its max abs "
    "error against jax-cudnn (or jax-xla) on the same inputs.")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "results"), "Where <tag>.json/.md/.png go.")
_TAG = flags.DEFINE_string(
    "tag", "", "Output file stem; default: the device name, sanitised "
    "(e.g. h100-80gb-hbm3).")
_APPEND = flags.DEFINE_bool(
    "append", False, "Merge into an existing <tag>.json (new records replace "
    "old ones of the same impl/mode/dtype/d/causal/seqlen).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the random inputs.")
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "Tiny grid that runs on the CPU (seqlen 128/256, d 64, "
    "1024 tokens, hidden 256, few iters); flags given explicitly win.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False,
                             "List the points and exit; runs nothing.")
_PLOT = flags.DEFINE_bool("plot", True, "Write <tag>.png.")

_SMOKE_OVERRIDES = {
    "seqlens": ["128", "256"],
    "head_dims": ["64"],
    "tokens": 1024,
    "hidden": 256,
    "warmup": 1,
    "iters": 3,
    "min_rep_ms": 5.0,
    "input_sets": 2,
}

_NOTES = {
    "fwd": "forward only: jitted fn, median per-call time over reps of "
           "back-to-back calls rotating over random input sets",
    "bwd": "backward only: residuals from jax.vjp (forward not timed), then a "
           "jitted call of the vjp fn giving dq,dk,dv from a fixed random "
           "dout; FLOPs = 2.5 x forward",
}


# --------------------------------------------------------------------------
# Implementations.


def impl_dtype(impl: str, dtype: str) -> str:
  return "float16" if impl == "pallas-mgpu" else dtype


def skip_reason(impl: str, mode: str, d: int, seqlen: int) -> str | None:
  """Why (impl, point) is not run, or None."""
  del d
  if impl == "jax_fa3-det" and mode == "fwd":
    return "skipped: jax_fa3-det runs jax_fa3's forward kernel"
  if impl == "pallas-mgpu" and mode == "bwd":
    return "skipped: pallas-mgpu is timed forward only"
  if impl == "jax-xla" and seqlen > _XLA_MAX_SEQLEN.value:
    return (f"skipped: jax-xla above --xla_max_seqlen="
            f"{_XLA_MAX_SEQLEN.value} (materialises the score matrix)")
  return None


def _attention_fn(impl: str, causal: bool) -> Callable[..., Any]:
  """Un-jitted f(q, k, v) -> out for ``impl``; imports lazily."""
  if impl in _OURS:
    import jax_fa3  # pylint: disable=g-import-not-at-top
    det = impl == "jax_fa3-det"
    return lambda q, k, v: jax_fa3.attention(q, k, v, causal=causal,
                                             deterministic=det)
  if impl in ("jax-cudnn", "jax-xla"):
    import jax  # pylint: disable=g-import-not-at-top
    implementation = impl.split("-", 1)[1]
    return lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, implementation=implementation)
  if impl == "pallas-mgpu":
    # pylint: disable-next=g-import-not-at-top
    from jax.experimental.pallas.ops.gpu import attention_mgpu
    config = attention_mgpu.TuningConfig(
        block_q=_MGPU_BLOCK_Q.value,
        block_kv=_MGPU_BLOCK_KV.value,
        max_concurrent_steps=_MGPU_STEPS.value,
        causal=causal)
    return lambda q, k, v: attention_mgpu.attention(q, k, v, config)
  raise ValueError(f"unknown impl {impl!r}; known: {ALL_IMPLS}")


@functools.lru_cache(maxsize=None)
def _jitted_fwd(impl: str, causal: bool):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(_attention_fn(impl, causal))


def _make_inputs(shape, dtype: str, n_sets: int, seed: int, gqa: int = 1):
  """n_sets tuples (q, k, v, dout) of random normal arrays; k and v have
  heads / gqa heads."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dt = jnp.dtype(dtype)
  kv_shape = shape[:2] + (shape[2] // gqa,) + shape[3:]
  shapes = (shape, kv_shape, kv_shape, shape)
  sets = []
  key = jax.random.key(seed)
  for _ in range(n_sets):
    key, *ks = jax.random.split(key, 5)
    sets.append(tuple(jax.random.normal(kk, sh, dt) for kk, sh in zip(ks, shapes)))
  return jax.block_until_ready(sets)


def prepare(impl: str, mode: str, causal: bool, inputs) -> Prepared:
  """Builds what ``timing.time_fn`` needs for (impl, mode) on ``inputs``.

  fwd: ``jit(f)`` on (q, k, v) sets. bwd: ``jax.vjp`` runs the forward once per
  set outside the timed region; the timed callable is one jit of "rebuild the
  vjp fn from its residual leaves, apply it to dout", so every set shares one
  compiled executable.
  """
  return common.prepare_jitted(_jitted_fwd(impl, causal), mode, inputs)


# --------------------------------------------------------------------------
# The run.


def _parse_ints(values, name):
  try:
    return [int(x) for x in values]
  except ValueError as e:
    raise app.UsageError(f"--{name}: integers expected, got {values}") from e


def _record_key(r):
  return (r["impl"], r["mode"], r["dtype"], r["d"], r["causal"], r["seqlen"])


def _write_json(path: str, records, base) -> None:
  merged = {_record_key(r): r for r in base}
  for r in records:
    merged[_record_key(r)] = r
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(list(merged.values()), f, indent=1)
  os.replace(tmp, path)


def format_tables(records, impls, seqlens) -> str:
  """One table per (mode, causal, d): TF/s, rows impls, columns seqlen."""
  lines = []
  groups = sorted({(r["mode"], r["causal"], r["d"]) for r in records},
                  key=lambda g: (g[0] != "fwd", g[1], g[2]))
  col = 8
  for mode, causal, d in groups:
    pts = {(r["impl"], r["seqlen"]): r for r in records
           if (r["mode"], r["causal"], r["d"]) == (mode, causal, d)}
    lines.append(f"\n## {mode}, causal={causal}, d={d}  (TF/s)")
    lines.append(f"{'impl':<22}" + "".join(
        f"{plot_lib.seqlen_label(s):>{col}}" for s in seqlens))
    for impl in impls:
      cells = []
      for s in seqlens:
        r = pts.get((impl, s))
        if r is None:
          cells.append("")
        elif r.get("tflops") is not None:
          cells.append(plot_lib.fmt_tflops(r["tflops"]))
        elif str(r.get("error", "")).startswith("skipped"):
          cells.append("skip")
        else:
          cells.append("err")
      if any(cells):
        dts = {r["dtype"] for (i, _), r in pts.items() if i == impl}
        name = impl + (" (fp16)" if dts == {"float16"} else "")
        lines.append(f"{name:<22}" + "".join(f"{c:>{col}}" for c in cells))
    def ratio_row(label, num, den):
      """A row of num(s) / den(s) TF/s over the seqlens ("-" where missing)."""
      cells = []
      for s in seqlens:
        n, d = num(s), den(s)
        cells.append(f"{n / d:.2f}" if n and d else "-")
      lines.append(f"{label:<22}" + "".join(f"{c:>{col}}" for c in cells))

    tflops = lambda impl: lambda s: pts.get((impl, s), {}).get("tflops")
    if "jax_fa3" in impls and len(impls) > 1:
      best_peer = lambda s: max(
          [t for t in (tflops(i)(s) for i in impls if i not in _OURS) if t],
          default=None)
      ratio_row("jax_fa3 / best peer", tflops("jax_fa3"), best_peer)
    if "jax_fa3" in impls and "jax_fa3-det" in impls:
      # Issue 4's target: the deterministic backward within 20 % of the default.
      ratio_row("jax_fa3-det / jax_fa3", tflops("jax_fa3-det"), tflops("jax_fa3"))
    errs = [r for r in pts.values() if r.get("max_err_vs_cudnn") is not None]
    if errs:
      worst = max(errs, key=lambda r: r["max_err_vs_cudnn"])
      lines.append(f"jax_fa3 vs {worst.get('err_ref')}: max |err| "
                   f"{worst['max_err_vs_cudnn']:.3g} (seqlen {worst['seqlen']}),"
                   f" max rel-L2 "
                   f"{max(r.get('rel_err_vs_cudnn', 0) for r in errs):.3g}")
  return "\n".join(lines)


def _error_summary(records) -> str:
  seen: dict[tuple[str, str], int] = {}
  for r in records:
    e = r.get("error")
    if e and not e.startswith("skipped"):
      k = (r["impl"], e.splitlines()[0][:160])
      seen[k] = seen.get(k, 0) + 1
  if not seen:
    return ""
  return "\nErrors:\n" + "\n".join(
      f"  {impl} x{n}: {msg}" for (impl, msg), n in sorted(seen.items()))


def main(argv) -> None:
  cli.start(argv, _SMOKE.value, _SMOKE_OVERRIDES)
  impls = [i.strip() for i in _IMPLS.value if i.strip()]
  for i in impls:
    if i not in ALL_IMPLS:
      raise app.UsageError(f"--impls: unknown {i!r}; known: {ALL_IMPLS}")
  modes = cli.parse_modes(_MODES.value)
  head_dims = _parse_ints(_HEAD_DIMS.value, "head_dims")
  seqlens = _parse_ints(_SEQLENS.value, "seqlens")
  for d in head_dims:
    if _GQA.value < 1 or (_HIDDEN.value // d) % _GQA.value:
      raise app.UsageError(f"--gqa {_GQA.value} must divide the {_HIDDEN.value // d} heads "
                           f"of head_dim {d} (--hidden {_HIDDEN.value})")
  causals = {"both": [False, True], "true": [True],
             "false": [False]}[_CAUSAL.value]
  dtype = _DTYPE.value

  points = [(mode, causal, d, s) for mode in modes for causal in causals
            for d in head_dims for s in seqlens]
  if _DRY_RUN.value:
    for mode, causal, d, s in points:
      b, h = max(1, _TOKENS.value // s), _HIDDEN.value // d
      print(f"{mode} causal={causal!s:<5} d={d:<3} seqlen={s:<6} batch={b:<4} "
            f"heads={h:<3} impls={','.join(impls)}")
    print(f"{len(points)} points x {len(impls)} impls")
    return

  import jax  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  kind, auto_tag = device_tag()
  tag = _TAG.value or auto_tag
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  json_path = os.path.join(_OUT_DIR.value, f"{tag}.json")
  base = []
  if _APPEND.value and os.path.exists(json_path):
    with open(json_path) as f:
      base = json.load(f)
  logging.info("device %s (%s), jax %s; %d points x %d impls -> %s", kind,
               jax.default_backend(), jax.__version__, len(points), len(impls),
               json_path)

  records: list[dict[str, Any]] = []
  bar = tqdm(total=len(points) * len(impls), unit="pt", dynamic_ncols=True,
             mininterval=0.5 if sys.stderr.isatty() else 15.0)
  t_start = time.time()
  for mode, causal, d, s in points:
    batch, heads = max(1, _TOKENS.value // s), _HIDDEN.value // d
    shape = (batch, s, heads, d)
    inputs: dict[tuple[str, int], Any] = {}
    prepared: dict[str, Prepared | BaseException] = {}

    def get_inputs(dt: str, n_sets: int):
      if (dt, n_sets) not in inputs:
        inputs[(dt, n_sets)] = _make_inputs(shape, dt, n_sets, _SEED.value, _GQA.value)
      return inputs[(dt, n_sets)]

    def get_prepared(impl: str) -> Prepared:
      if impl not in prepared:
        n_sets = max(1, _INPUT_SETS.value)
        # jax-xla keeps fp32 score matrices (b*h*s^2*4 bytes, several of them
        # as bwd residuals): one input set then (inputs >> L2 anyway).
        if impl == "jax-xla" and batch * heads * s * s * 4 * n_sets > 8 << 30:
          n_sets = 1
        try:
          prepared[impl] = prepare(impl, mode, causal,
                                   get_inputs(impl_dtype(impl, dtype), n_sets))
        except Exception as e:  # pylint: disable=broad-except
          prepared[impl] = e
      p = prepared[impl]
      if isinstance(p, BaseException):
        raise p
      return p

    for impl in impls:
      bar.set_description(f"{mode} c={int(causal)} d={d} s={s} {impl}")
      rec: dict[str, Any] = {
          "impl": impl, "mode": mode, "dtype": impl_dtype(impl, dtype),
          "d": d, "causal": causal, "seqlen": s, "batch": batch,
          "heads": heads, "kv_heads": heads // _GQA.value, "ms": None, "tflops": None,
      }
      reason = skip_reason(impl, mode, d, s)
      if reason:
        rec["error"] = reason
      else:
        try:
          p = get_prepared(impl)
          if impl in _OURS and _CHECK.value:
            ours = jax.block_until_ready(p.fn(*p.arg_sets[0]))
            for ref in ("jax-cudnn", "jax-xla"):
              if skip_reason(ref, mode, d, s):
                continue
              try:
                rp = get_prepared(ref)
                rec["max_err_vs_cudnn"], rec["rel_err_vs_cudnn"] = compare(
                    ours, rp.fn(*rp.arg_sets[0]))
                rec["err_ref"] = ref
                break
              except Exception as e:  # pylint: disable=broad-except
                rec["check_error"] = f"{ref}: {common.short_error(e, 300)}"
            del ours
          t = timing.time_fn(p.fn, p.arg_sets, warmup=_WARMUP.value,
                             reps=_ITERS.value, min_rep_ms=_MIN_REP_MS.value)
          rec["ms"] = t.median_ms
          rec["tflops"] = flops(mode, batch, heads, s, d, causal) / (
              t.median_ms * 1e-3) / 1e12
          rec.update(ms_min=t.min_ms, ms_max=t.max_ms,
                     calls_per_rep=t.calls_per_rep, reps=t.reps,
                     input_sets=p.n_sets)
        except Exception as e:  # pylint: disable=broad-except
          rec["error"] = common.short_error(e)
        finally:
          prepared.pop(impl, None)
      rec["note"] = _NOTES[mode]
      rec["device"] = kind
      records.append(rec)
      if rec["tflops"] is not None:
        logging.info("%s %s causal=%s d=%d s=%d: %.3f ms, %.1f TF/s%s", impl,
                     mode, causal, d, s, rec["ms"], rec["tflops"],
                     f", vs {rec['err_ref']}: max|err| "
                     f"{rec['max_err_vs_cudnn']:.3g} rel-L2 "
                     f"{rec['rel_err_vs_cudnn']:.3g}"
                     if "err_ref" in rec else "")
      else:
        logging.info("%s %s causal=%s d=%d s=%d: %s", impl, mode, causal, d, s,
                     rec["error"].splitlines()[0][:200])
      bar.update(1)
    prepared.clear()
    inputs.clear()
    gc.collect()
    _write_json(json_path, records, base)
  bar.close()

  all_records = records
  if base:
    with open(json_path) as f:
      all_records = json.load(f)
  tables = format_tables(all_records, impls, seqlens)
  md_path = os.path.join(_OUT_DIR.value, f"{tag}.md")
  with open(md_path, "w") as f:
    f.write(f"# Attention throughput on {kind} (jax {jax.__version__})\n"
            f"{tables}\n{_error_summary(all_records)}\n")
  if _PLOT.value and all_records:
    try:
      png = plot_lib.plot_records(
          all_records, os.path.join(_OUT_DIR.value, f"{tag}.png"),
          title=f"Attention throughput, {kind}, {dtype} "
                f"({_TOKENS.value} tokens, hidden {_HIDDEN.value})")
      logging.info("wrote %s", png)
    except Exception as e:  # pylint: disable=broad-except
      logging.error("plot failed: %s", common.short_error(e))
  print(tables)
  print(_error_summary(all_records))
  print(f"\n{len(records)} records in {time.time() - t_start:.0f} s -> "
        f"{json_path}")


if __name__ == "__main__":
  app.run(main)
