r"""Packed variable-length attention against padding (issue 7's benchmark).

``--tokens`` tokens of documents with random lengths, uniform in
``[--min_len, --max_len]`` (the last one cut to fill the budget exactly), are
attended three ways, each timed per METHOD.md (warm-up, median of reps of
back-to-back calls rotating over ``--input_sets`` random input sets):

* ``jax_fa3-varlen``: ``jax_fa3.attention_varlen`` on the packed
  ``(tokens, heads, d)`` tensors with ``cu_seqlens`` (no work on padding);
* ``jax-cudnn-padded``: ``jax.nn.dot_product_attention(implementation=
  'cudnn')`` on the same documents padded to the longest one, with
  ``query_seq_lengths`` / ``key_value_seq_lengths`` (what JAX's public cuDNN
  API offers for ragged batches);
* ``jax_fa3-dense``: ``jax_fa3.attention`` on a dense batch at the documents'
  mean length (rounded to 64) with the same token count: the throughput the
  packed kernel should match.

Two more readings of "cuDNN with a padding mask", for context (issue 7's
target is judged against ``jax-cudnn-padded``, cuDNN's fastest path, which
skips the padding as we do):

* ``jax-cudnn-mask``: the padded documents with a boolean ``mask=`` (what
  ``flax.linen.make_attention_mask(valid, valid)`` gives); JAX turns it into a
  bias, so cuDNN computes every padded pair;
* ``jax-cudnn-repack``: ``jax-cudnn-padded`` on packed inputs, with the
  gather into the padded layout and back inside the timed call (what a
  pipeline that packs documents pays to use cuDNN).

FLOPs count only the useful work, the same for every implementation of one
document set: ``4 * heads * d * sum(visible (q, k) pairs)`` (``len^2`` per
document, ``len * (len + 1) / 2`` causal), x2.5 for ``bwd`` (the backward
alone, residuals precomputed, as in benchmarks.attention). So padded TF/s is
the effective rate and ``speedup = cudnn ms / varlen ms`` on the same
documents. Issue 7's targets: varlen TF/s within 10 % of the dense one, and
speedup >= 1.5.

Before timing, the packed output (fwd) or dq/dk/dv (bwd) is compared with
each cuDNN row's on the valid rows (``rel_err``, rel-L2; the cotangent is zero
on padding rows).

  python -m benchmarks.varlen                  # GPU, writes results/varlen-<gpu>.json
  JAX_PLATFORMS=cpu python -m benchmarks.varlen --smoke
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

from benchmarks import common as bench_common
from benchmarks import cli
from benchmarks import timing

_TOKENS = flags.DEFINE_integer("tokens", 16384, "Packed tokens per batch.")
_MIN_LEN = flags.DEFINE_integer("min_len", 128, "Shortest document.")
_MAX_LEN = flags.DEFINE_integer("max_len", 4096, "Longest document.")
_HEADS = flags.DEFINE_integer("heads", 16, "Query heads (hidden 2048 / 128).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dim.")
_CAUSAL = flags.DEFINE_enum("causal", "both", ["both", "true", "false"], "Causal mask.")
_MODES = flags.DEFINE_list("modes", ["fwd", "bwd"], "fwd and/or bwd (backward alone).")
_IMPLS = flags.DEFINE_list(
    "impls", ["jax_fa3-varlen", "jax-cudnn-padded", "jax-cudnn-mask", "jax-cudnn-repack",
              "jax_fa3-dense"], "Implementations to time.")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "bfloat16", "float16", "float32"],
                           "auto = float32 on the CPU backend, bfloat16 otherwise.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls before timing.")
_ITERS = flags.DEFINE_integer("iters", 20, "Timed reps; the median is kept.")
_MIN_REP_MS = flags.DEFINE_float("min_rep_ms", 50.0, "Each timed rep lasts at least this.")
_INPUT_SETS = flags.DEFINE_integer("input_sets", 3, "Random input sets rotated through.")
_CHECK = flags.DEFINE_bool("check", True, "Compare jax_fa3-varlen with cuDNN on valid rows.")
_PEER_IMPL = flags.DEFINE_enum(
    "peer_implementation", "cudnn", ["cudnn", "xla"],
    "implementation= of the jax-cudnn-* rows; xla lets CPU tests run their wiring.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the document lengths and inputs.")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
    "Where varlen-<tag>.json goes.")
_TAG = flags.DEFINE_string("tag", "", "File tag; default: the device kind, sanitised.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes that run on the CPU in seconds.")

_SMOKE_OVERRIDES = {"tokens": 512, "min_len": 16, "max_len": 200, "heads": 2, "head_dim": 64,
                    "warmup": 1, "iters": 2, "min_rep_ms": 1.0, "input_sets": 1,
                    "impls": ["jax_fa3-varlen", "jax_fa3-dense"]}


def document_lengths(tokens: int, lo: int, hi: int, seed: int) -> list[int]:
  """Uniform random lengths in [lo, hi] summing to exactly ``tokens``."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  lens: list[int] = []
  while sum(lens) < tokens:
    lens.append(int(rng.integers(lo, hi + 1)))
  lens[-1] -= sum(lens) - tokens
  return [n for n in lens if n > 0]


def useful_flops(lens, heads: int, d: int, causal: bool, mode: str) -> float:
  pairs = sum(n * (n + 1) // 2 if causal else n * n for n in lens)
  return 4.0 * heads * d * pairs * (2.5 if mode == "bwd" else 1.0)


class Problem:
  """One document set and its packed / padded / dense input sets."""

  def __init__(self, lens, heads, d, dtype, n_sets, seed):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    self.lens, self.heads, self.d = lens, heads, d
    self.total = sum(lens)
    self.max_len = max(lens)
    self.cu = jnp.asarray(np.concatenate([[0], np.cumsum(lens)]), jnp.int32)
    self.seq_lengths = jnp.asarray(lens, jnp.int32)
    # Row i of the padded batch comes from packed row gather[i]; padding rows
    # repeat row 0 (their values do not matter: the masks exclude them).
    gather = np.zeros((len(lens), self.max_len), np.int64)
    valid = np.zeros((len(lens), self.max_len), bool)
    for b, (start, n) in enumerate(zip(np.asarray(self.cu)[:-1], lens)):
      gather[b, :n] = start + np.arange(n)
      valid[b, :n] = True
    self.gather, self.valid = jnp.asarray(gather), jnp.asarray(valid)
    # Packed row r sits at flat padded row valid_rows[r] (documents in order).
    self.valid_rows = jnp.asarray(np.flatnonzero(valid))
    self.mask = self.valid[:, None, :, None] & self.valid[:, None, None, :]
    self.mean_len = max(64, int(round(self.total / len(lens) / 64)) * 64)
    dt = jnp.dtype(dtype)
    key = jax.random.key(seed)
    self.packed = []
    for _ in range(n_sets):
      key, *ks = jax.random.split(key, 5)
      self.packed.append(tuple(jax.random.normal(kk, (self.total, heads, d), dt) for kk in ks))
    pad = jax.jit(lambda xs: tuple(x[self.gather] for x in xs))
    self.padded = jax.block_until_ready([pad(s) for s in self.packed])
    # For the checks: the padded set with the cotangent zero on padding rows,
    # so that padding queries (which attend to every key under the boolean
    # mask) add nothing to dk / dv.
    zero_pad = self.valid[..., None, None].astype(dt)
    self.padded_check = self.padded[0][:3] + (self.padded[0][3] * zero_pad,)
    dense_b = max(1, self.total // self.mean_len)
    self.dense = [tuple(x[:dense_b * self.mean_len].reshape(dense_b, self.mean_len, heads, d)
                        for x in s) for s in self.packed]

  def fn(self, impl: str, causal: bool):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import jax_fa3  # pylint: disable=g-import-not-at-top
    if impl == "jax_fa3-varlen":
      return jax.jit(lambda q, k, v: jax_fa3.attention_varlen(
          q, k, v, self.cu, self.cu, self.max_len, self.max_len, causal=causal))
    padded = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, query_seq_lengths=self.seq_lengths,
        key_value_seq_lengths=self.seq_lengths, implementation=_PEER_IMPL.value)
    if impl == "jax-cudnn-padded":
      return jax.jit(padded)
    if impl == "jax-cudnn-mask":
      return jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
          q, k, v, mask=self.mask, is_causal=causal, implementation=_PEER_IMPL.value))
    if impl == "jax-cudnn-repack":
      # Each padding row reads its own index past the end (zeros), so all
      # indices are unique and the gradients' scatter-adds need no atomics
      # (gathering row 0 for every padding row made them collide there: the
      # d128 backward took 8.9 ms, 3.2 with one index past the end for all
      # padding rows, 2.4 unique; H100).
      idx = jnp.where(self.valid, self.gather,
                      self.total + jnp.arange(self.valid.size).reshape(self.valid.shape))
      def repack(q, k, v):
        pad = lambda x: x.at[idx].get(mode="fill", fill_value=0, unique_indices=True)
        return self.unpad(padded(pad(q), pad(k), pad(v)))
      return jax.jit(repack)
    if impl == "jax_fa3-dense":
      return jax.jit(lambda q, k, v: jax_fa3.attention(q, k, v, causal=causal))
    raise ValueError(f"unknown impl {impl!r}")

  def inputs(self, impl: str):
    return {"jax_fa3-varlen": self.packed, "jax-cudnn-padded": self.padded,
            "jax-cudnn-mask": self.padded, "jax-cudnn-repack": self.packed,
            "jax_fa3-dense": self.dense}[impl]

  def unpad(self, x):
    """Padded (docs, max_len, ...) -> packed (total, ...) rows of the documents."""
    x = x.reshape((-1,) + x.shape[2:])
    return x.at[self.valid_rows].get(unique_indices=True, indices_are_sorted=True)

  def check(self, causal: bool, mode: str, peer: str) -> float:
    """rel-L2 of jax_fa3-varlen against ``peer`` on the valid rows (worst leaf)."""
    import jax  # pylint: disable=g-import-not-at-top
    packed = self.packed[0]  # its cotangent = padded_check's on the valid rows
    ours = bench_common.prepare_jitted(self.fn("jax_fa3-varlen", causal), mode, [packed])
    peer_in = packed if peer == "jax-cudnn-repack" else self.padded_check
    theirs = bench_common.prepare_jitted(self.fn(peer, causal), mode, [peer_in])
    a = ours.fn(*ours.arg_sets[0])
    b = theirs.fn(*theirs.arg_sets[0])
    if peer != "jax-cudnn-repack":
      b = jax.tree.map(self.unpad, b)
    return bench_common.compare(a, b)[1]


def main(argv) -> None:
  cli.start(argv, _SMOKE.value, _SMOKE_OVERRIDES)
  modes = cli.parse_modes(_MODES.value)
  import jax  # pylint: disable=g-import-not-at-top
  dtype = _DTYPE.value
  if dtype == "auto":
    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  lens = document_lengths(_TOKENS.value, _MIN_LEN.value, _MAX_LEN.value, _SEED.value)
  prob = Problem(lens, _HEADS.value, _HEAD_DIM.value, dtype, max(1, _INPUT_SETS.value),
                 _SEED.value)
  kind, tag = bench_common.device_tag()
  path = os.path.join(_OUT_DIR.value, f"varlen-{_TAG.value or tag}.json")
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  logging.info("%s: %d documents, %d tokens, mean %.0f, max %d; dense batch at %d -> %s",
               kind, len(lens), prob.total, prob.total / len(lens), prob.max_len,
               prob.mean_len, path)
  common = {"device": kind, "dtype": dtype, "heads": _HEADS.value, "d": _HEAD_DIM.value,
            "tokens": prob.total, "n_docs": len(lens), "max_len": prob.max_len,
            "min_len_flag": _MIN_LEN.value, "max_len_flag": _MAX_LEN.value,
            "seed": _SEED.value}
  records: list[dict[str, Any]] = []
  failed = False
  t_start = time.time()
  for causal in {"both": [False, True], "true": [True], "false": [False]}[_CAUSAL.value]:
    for mode in modes:
      point: dict[str, dict[str, Any]] = {}
      rels: dict[str, float] = {}
      for peer in [i for i in _IMPLS.value if i.startswith("jax-cudnn")] if _CHECK.value else []:
        try:
          rels[peer] = prob.check(causal, mode, peer)
          failed |= rels[peer] > 2e-2
        except Exception as e:  # pylint: disable=broad-except
          logging.warning("check against %s failed to run: %s", peer,
                          bench_common.short_error(e))
      for impl in _IMPLS.value:
        rec = dict(common, impl=impl, mode=mode, causal=causal, ms=None, tflops=None,
                   rel_err_vs_cudnn=(rels.get("jax-cudnn-padded") if impl == "jax_fa3-varlen"
                                     else None))
        if impl in rels:
          rec["rel_err_vs_varlen"] = rels[impl]
        if impl == "jax_fa3-dense":
          rec.update(batch=prob.dense[0][0].shape[0], seqlen=prob.mean_len)
          flops = bench_common.flops(mode, rec["batch"], _HEADS.value, prob.mean_len,
                                   _HEAD_DIM.value, causal)
        else:
          flops = useful_flops(lens, _HEADS.value, _HEAD_DIM.value, causal, mode)
        try:
          prep = bench_common.prepare_jitted(prob.fn(impl, causal), mode, prob.inputs(impl))
          t = timing.time_fn(prep.fn, prep.arg_sets, warmup=_WARMUP.value, reps=_ITERS.value,
                             min_rep_ms=_MIN_REP_MS.value)
          rec.update(ms=t.median_ms, ms_min=t.min_ms, ms_max=t.max_ms,
                     tflops=flops / (t.median_ms * 1e-3) / 1e12)
        except Exception as e:  # pylint: disable=broad-except
          rec["error"] = bench_common.short_error(e)
          failed |= impl == "jax_fa3-varlen"
        point[impl] = rec
        records.append(rec)
      ours = point.get("jax_fa3-varlen", {})
      for impl, other in point.items():
        if not (ours.get("ms") and other.get("ms")):
          continue
        if impl.startswith("jax-cudnn"):  # its time over ours, same documents
          other["varlen_speedup"] = other["ms"] / ours["ms"]
          if impl == "jax-cudnn-padded":  # issue 7's target, on our record
            ours["speedup_vs_cudnn_padded"] = other["varlen_speedup"]
        elif impl == "jax_fa3-dense":
          ours["tflops_vs_dense"] = ours["tflops"] / other["tflops"]
      with open(path, "w") as fh:
        json.dump(records, fh, indent=1)
  print(format_table(records))
  print(f"\n{len(records)} records in {time.time() - t_start:.0f} s -> {path}")
  if failed:
    logging.error("jax_fa3-varlen failed or disagreed with a cuDNN row (rel_err > 2e-2)")
    sys.exit(1)


def format_table(records) -> str:
  """``varlen x``: a cuDNN row's time over jax_fa3-varlen's (same documents);
  ``rel_err``: a cuDNN row's result against jax_fa3-varlen's on the valid rows."""
  head = (f"{'impl':<18}{'mode':<5}{'causal':<7}{'ms':>9}{'TF/s':>8}{'vs dense':>9}"
          f"{'varlen x':>9}{'rel_err':>9}")
  lines = [head, "-" * len(head)]
  for r in records:
    f = functools.partial(bench_common.cell, r)
    lines.append(f"{r['impl']:<18}{r['mode']:<5}{str(r['causal']):<7}" + f("ms", ".3f", 9)
                 + f("tflops", ".1f", 8) + f("tflops_vs_dense", ".3f", 9)
                 + f("varlen_speedup", ".2f", 9) + f("rel_err_vs_varlen", ".2g", 9)
                 + (f"  ERROR {r['error'][:70]}" if r.get("error") else ""))
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
