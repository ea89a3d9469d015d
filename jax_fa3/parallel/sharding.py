"""Partitioning rule of the attention primitive under ``jax.jit`` + sharding.

An ``ffi_call`` is opaque to XLA's partitioner: with q/k/v sharded over a
mesh it would all-gather them and run the whole attention on every device.
Attention is independent per (batch, head), so ``custom_partitioning`` tells
the partitioner to run the kernel per shard:

  * batch dims (all dims before seqlen) keep q's sharding; k/v follow it.
  * heads keep q's sharding when the mesh axes dividing them also divide
    kv_heads (GQA: q head j reads kv head j // group, so contiguous head
    shards line up); with kv_heads == 1 (MQA) k/v are replicated over them;
    otherwise heads are replicated (correct, but gathers). In the MQA case
    the backward all-reduces dK/dV over the head axes (each head shard
    holds a partial sum): that all-reduce is inherent, not a gather.
  * a sharded sequence axis runs ring attention (``ring.ring_fwd/ring_bwd``,
    contiguous layout) over the mesh axes of q's sequence dim when
    ``seq_parallel="ring"``, else it is gathered.
  * head_dim is always replicated.

The forward's outputs are (out, lse) with out like q and lse
(*batch, heads, seqlen_q); the backward's (dq, dk, dv) are like (q, k, v).

With the Shardy partitioner (the default in jax >= 0.7) propagation uses
the einsum-like ``sharding_rule`` below; with GSPMD the
``infer_sharding_from_operands`` callback. ``partition`` is shared.

Inside a fully manual region (``shard_map``) custom_partitioning lowers to
the plain call, so ring attention's per-block calls are unaffected.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.custom_batching  # noqa: F401  (jax.custom_batching.custom_vmap)
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from jax_fa3 import primitives
from jax_fa3.parallel import ring

SEQ_PARALLEL = ("ring", "gather")


# --------------------------------------------------------------- helpers ----

def _spec(sharding, ndim):
  if not isinstance(sharding, NamedSharding):
    return None  # undecodable (GSPMD-only) sharding: caller replicates
  spec = tuple(sharding.spec)
  return spec + (None,) * (ndim - len(spec))


def _axes(entry):
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _size(mesh, entry):
  return math.prod(mesh.shape[a] for a in _axes(entry))


class _Layout:
  """The per-shard plan derived from q's sharding (+ k's head count)."""

  def __init__(self, mesh, q_info, k_info, seq_parallel):
    self.kv_reduce = ()  # mesh axes to psum dK/dV over (MQA head sharding)
    nd = len(q_info.shape)
    spec = _spec(q_info.sharding, nd) or (None,) * nd
    batch = spec[:-3]
    seq, heads = spec[-3], spec[-2]
    h, hk = q_info.shape[-2], k_info.shape[-2]
    kv_heads = heads
    if heads is not None:
      n = _size(mesh, heads)
      if h % n == 0 and hk % n == 0:
        pass
      elif h % n == 0 and hk == 1:
        kv_heads = None  # MQA: every q-head shard reads the one kv head
        # ... so each shard's dK/dV is a partial sum over its q heads.
        self.kv_reduce = _axes(heads)
      else:
        heads = kv_heads = None
    if seq is not None:
      n = _size(mesh, seq)
      used = {a for e in batch + (heads,) for a in _axes(e)}
      ok = (seq_parallel == "ring" and q_info.shape[-3] % n == 0
            and k_info.shape[-3] % n == 0 and not used & set(_axes(seq)))
      if not ok:
        seq = None
    self.mesh = mesh
    self.seq_axis = seq  # mesh axis (or tuple) of the ring, or None
    self.q = NamedSharding(mesh, P(*batch, seq, heads, None))
    self.kv = NamedSharding(mesh, P(*batch, seq, kv_heads, None))
    self.lse = NamedSharding(mesh, P(*batch, heads, seq))


# --------------------------------------------------------------- forward ----

def _fwd_impl(q, k, v, cfg, seq_parallel):
  del seq_parallel
  return primitives.fwd_call(q, k, v, cfg)


def _fwd_partition(cfg, seq_parallel, mesh, arg_infos, result_infos):
  del result_infos
  lay = _Layout(mesh, arg_infos[0], arg_infos[1], seq_parallel)

  def lower(q, k, v):
    if lay.seq_axis is None:
      return primitives.fwd_call(q, k, v, cfg)
    # The ring's transfers need SMs beside the forward kernel (RING_SM_MARGIN).
    return ring.ring_fwd(q, k, v, ring.with_ring_margin(cfg), lay.seq_axis)

  return mesh, lower, (lay.q, lay.lse), (lay.q, lay.kv, lay.kv)


def _fwd_infer(cfg, seq_parallel, mesh, arg_infos, result_infos):
  del cfg, result_infos
  lay = _Layout(mesh, arg_infos[0], arg_infos[1], seq_parallel)
  return lay.q, lay.lse


def _factors(nd, h, hk):
  """Einsum-like factor names: (batch, q-heads expression, kv heads, extra)."""
  batch = " ".join(f"b{i}" for i in range(nd - 3))
  if h == hk:
    return batch, "h", "h", {}
  if hk == 1:  # MQA: Shardy rejects a size-1 factor in a compound; the lone
    return batch, "h", "k", {}  # kv head is simply unrelated to q's heads.
  # q head j belongs to kv head j // g: q heads are the compound (k g).
  return batch, "(k g)", "k", {"g": h // hk}


def _seq_rule_kw(seq_parallel, extra):
  # Listed in order of first appearance in the rule (Shardy requires it).
  need = ("d",) if seq_parallel == "ring" else ("s", "d", "t")
  return dict(extra, need_replication_factors=need)


def _fwd_rule(cfg, seq_parallel, mesh, operand_types, result_types):
  del cfg, mesh, result_types
  qs, ks = operand_types[0].shape, operand_types[1].shape
  b, qh, kh, extra = _factors(len(qs), qs[-2], ks[-2])
  rule = (f"{b} s {qh} d, {b} t {kh} d, {b} t {kh} d -> "
          f"{b} s {qh} d, {b} {qh} s")
  return rule, _seq_rule_kw(seq_parallel, extra)


_fwd = custom_partitioning(_fwd_impl, static_argnums=(3, 4))
_fwd.def_partition(partition=_fwd_partition, infer_sharding_from_operands=_fwd_infer,
                   sharding_rule=_fwd_rule)


# ------------------------------------------------------------------ vmap ----
# custom_partitioning has no batching rule. The kernels fold any extra
# leading dims into batch (as ffi_call's vmap_method="broadcast_all" does for
# the raw calls), so under vmap we broadcast the unbatched operands and call
# again with the vmapped dim in front. The inner call sees one more leading
# dim, which the partitioning rule treats as one more batch dim.

@functools.lru_cache(maxsize=None)
def _vmappable(cp_fn, n_out, static):
  def call(*args):
    return tuple(cp_fn(*args, *static))

  fn = jax.custom_batching.custom_vmap(call)

  @fn.def_vmap
  def _rule(axis_size, in_batched, *args):
    args = [x if b else jnp.broadcast_to(x, (axis_size,) + x.shape)
            for x, b in zip(args, in_batched)]
    return fn(*args), (True,) * n_out

  return fn


def _check_mode(seq_parallel):
  if seq_parallel not in SEQ_PARALLEL:
    raise ValueError(f"seq_parallel must be one of {SEQ_PARALLEL}, got {seq_parallel!r}")


def partitioned_fwd(q, k, v, cfg: primitives.AttnConfig, seq_parallel: str = "ring"):
  """``primitives.fwd_call`` that runs per batch/head shard (and as a ring
  over a sharded sequence axis) under jit with sharded inputs."""
  _check_mode(seq_parallel)
  return _vmappable(_fwd, 2, (cfg, seq_parallel))(q, k, v)


# -------------------------------------------------------------- backward ----

def _bwd_impl(q, k, v, out, lse, dout, cfg, seq_parallel):
  del seq_parallel
  return primitives.bwd_call(q, k, v, out, lse, dout, cfg)


def _bwd_partition(cfg, seq_parallel, mesh, arg_infos, result_infos):
  del result_infos
  lay = _Layout(mesh, arg_infos[0], arg_infos[1], seq_parallel)

  def lower(q, k, v, out, lse, dout):
    if lay.seq_axis is None:
      dq, dk, dv = primitives.bwd_call(q, k, v, out, lse, dout, cfg)
    else:
      dq, dk, dv = ring.ring_bwd(q, k, v, out, lse, dout, cfg, lay.seq_axis)
    if lay.kv_reduce:  # sum the per-head-shard partials, in float32
      dk, dv = (jax.lax.psum(x.astype(jnp.float32), lay.kv_reduce).astype(x.dtype)
                for x in (dk, dv))
    return dq, dk, dv

  args = (lay.q, lay.kv, lay.kv, lay.q, lay.lse, lay.q)
  return mesh, lower, (lay.q, lay.kv, lay.kv), args


def _bwd_infer(cfg, seq_parallel, mesh, arg_infos, result_infos):
  del cfg, result_infos
  lay = _Layout(mesh, arg_infos[0], arg_infos[1], seq_parallel)
  return lay.q, lay.kv, lay.kv


def _bwd_rule(cfg, seq_parallel, mesh, operand_types, result_types):
  del cfg, mesh, result_types
  qs, ks = operand_types[0].shape, operand_types[1].shape
  b, qh, kh, extra = _factors(len(qs), qs[-2], ks[-2])
  q_, kv_ = f"{b} s {qh} d", f"{b} t {kh} d"
  rule = (f"{q_}, {kv_}, {kv_}, {q_}, {b} {qh} s, {q_} -> {q_}, {kv_}, {kv_}")
  return rule, _seq_rule_kw(seq_parallel, extra)


_bwd = custom_partitioning(_bwd_impl, static_argnums=(6, 7))
_bwd.def_partition(partition=_bwd_partition, infer_sharding_from_operands=_bwd_infer,
                   sharding_rule=_bwd_rule)


def partitioned_bwd(q, k, v, out, lse, dout, cfg: primitives.AttnConfig,
                    seq_parallel: str = "ring"):
  """``primitives.bwd_call`` with the same partitioning as ``partitioned_fwd``."""
  _check_mode(seq_parallel)
  return _vmappable(_bwd, 3, (cfg, seq_parallel))(q, k, v, out, lse, dout.astype(q.dtype))


# ------------------------------------------------------------ custom_vjp ----

@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def attention_with_lse(q, k, v, cfg, seq_parallel="ring"):
  """Drop-in for ``primitives.attention_with_lse`` using the partitioned calls."""
  return partitioned_fwd(q, k, v, cfg, seq_parallel)


def _vjp_fwd(q, k, v, cfg, seq_parallel):
  out, lse = partitioned_fwd(q, k, v, cfg, seq_parallel)
  return (out, lse), (q, k, v, out, lse)


def _vjp_bwd(cfg, seq_parallel, res, cts):
  q, k, v, out, lse = res
  dout, _ = cts
  return partitioned_bwd(q, k, v, out, lse, dout, cfg, seq_parallel)


attention_with_lse.defvjp(_vjp_fwd, _vjp_bwd)
