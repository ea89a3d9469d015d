"""Helpers shared by the benchmark programs (attention, varlen): preparing a
jitted attention for forward or backward-alone timing, comparing outputs,
the device tag of result files, FA3's FLOP count. No flags here, so every
program can import it."""

from __future__ import annotations

import os
import re
import traceback

from absl import logging


class Prepared:
  """A jitted callable and the argument sets to time it on."""

  def __init__(self, fn, arg_sets, n_sets):
    self.fn = fn
    self.arg_sets = arg_sets
    self.n_sets = n_sets


def prepare_jitted(fwd, mode: str, inputs) -> Prepared:
  """``prepare`` for any jitted f(q, k, v) -> out (also used by
  benchmarks.varlen)."""
  import jax  # pylint: disable=g-import-not-at-top
  if mode == "fwd":
    return Prepared(fwd, [s[:3] for s in inputs], len(inputs))
  leaves_per_set, treedef = [], None
  for q, k, v, _ in inputs:
    _, vjp_fn = jax.vjp(fwd, q, k, v)
    leaves, td = jax.tree.flatten(vjp_fn)
    if not all(isinstance(x, jax.Array) for x in leaves):
      raise RuntimeError("this jax's vjp fn is not a pytree of arrays; "
                         "cannot time the backward alone")
    if treedef is None:
      treedef, ref_avals = td, [(x.shape, x.dtype) for x in leaves]
    elif [(x.shape, x.dtype) for x in leaves] != ref_avals:
      raise RuntimeError("vjp residuals differ in structure between sets")
    leaves_per_set.append(leaves)
    del vjp_fn
  bwd = jax.jit(lambda leaves, dout: treedef.unflatten(leaves)(dout))
  arg_sets = [(leaves, s[3]) for leaves, s in zip(leaves_per_set, inputs)]
  return Prepared(bwd, arg_sets, len(inputs))


def compare(a, b) -> tuple[float, float]:
  """(max |a - b|, max over leaves of ||a - b|| / ||b||), in float32."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  abs_errs, rel_errs = [], []
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    abs_errs.append(jnp.max(jnp.abs(x - y)))
    rel_errs.append(jnp.linalg.norm(x - y) / jnp.linalg.norm(y))
  abs_errs, rel_errs = jax.device_get((abs_errs, rel_errs))
  return float(max(abs_errs)), float(max(rel_errs))


def device_tag(device=None) -> tuple[str, str]:
  """(device kind, sanitised tag) of ``device`` (default: the first one), e.g.
  ('NVIDIA H100 80GB HBM3', 'h100-80gb-hbm3')."""
  try:
    import jax  # pylint: disable=g-import-not-at-top
    kind = str((device or jax.devices()[0]).device_kind)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("no device: %s", e)
    kind = "unknown"
  tag = re.sub(r"^nvidia[\s_-]*", "", kind.strip().lower())
  tag = re.sub(r"[^a-z0-9.]+", "-", tag).strip("-") or "unknown"
  return kind, tag


def flops(mode: str, batch: int, heads: int, seqlen: int, d: int,
          causal: bool) -> float:
  f = 4.0 * batch * heads * seqlen * seqlen * d
  if causal:
    f /= 2
  return f * (2.5 if mode == "bwd" else 1.0)


def short_error(e: BaseException, limit: int = 600) -> str:
  msg = f"{type(e).__name__}: {e}".strip()
  if not str(e).strip():  # e.g. a bare assert: say where it was raised
    tb = traceback.extract_tb(e.__traceback__)
    if tb:
      msg += f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}"
  return msg if len(msg) <= limit else msg[:limit] + " ..."


def cell(record: dict, key: str, fmt: str, width: int) -> str:
  """One right-aligned table cell: record[key] formatted, or "-" if absent."""
  v = record.get(key)
  return f"{'-' if v is None else format(v, fmt):>{width}}"
