"""The causal zigzag ring with one kernel call per step.

In the zigzag layout (``jax_fa3.parallel.zigzag``) device i of n holds
global chunks (i, 2n-1-i), each c tokens long. With a causal mask and equal
global q/k lengths, the block visiting at step s >= 1 comes from device
j = (i - s) mod n and what device i sees of it is always a rectangle:

  j < i: both of its query chunks see the whole first key chunk (j) and
         nothing of the second (2n-1-j, later than both);
  j > i: only its second query chunk (2n-1-i) sees keys, and all of both
         chunks (j < 2n-1-i and 2n-1-j < 2n-1-i).

Step 0 (the own block) is plain causal attention over the local 2c tokens:
chunk i precedes chunk 2n-1-i globally, so the local order is the global
one.

``ring.py``'s general plan runs such a step as two (q chunk, k chunk) calls,
picks their operands per device with ``jnp.where`` and merges twice. Here
the step is ONE varlen call whose offsets (``cu_seqlens``, data computed
from ``axis_index``) select the rectangle: per batch entry, two sequences
over the local 2c rows of q and k,

  j < i: (q [0, 2c), k [0, c)) and (q empty, k [c, 2c))
  j > i: (q [0, c), k empty) and (q [c, 2c), k [0, 2c)),

so rows that see nothing come back as out 0 / lse -inf (weight 0 in the
merge) and keys nobody saw get dK = dV = 0. No control flow, no copies, one
merge per step over the whole accumulator; same FLOPs as the general plan.
On 4 H200s at 32k tokens per GPU both take the same time
(benchmarks/results/ring_ab/s5): what remains of the causal ring's loss is
the exposed transfer time, not these copies.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp

from jax_fa3 import primitives
from jax_fa3.parallel import ring
from jax_fa3.parallel import ring_comm

_SEQ = -3


def applies(cfg: primitives.AttnConfig, layout: str, q_local: int, k_local: int) -> bool:
  """Whether this path computes the ring for (cfg, layout, local lengths):
  zigzag, causal with no left window, equal local lengths (so equal global
  ones: the causal diagonal is the main one). JAX_FA3_RING_ZIGZAG=0 turns
  it off (A/B against ring.py's general plan)."""
  if os.environ.get("JAX_FA3_RING_ZIGZAG", "1") == "0":
    return False
  return (layout == "zigzag" and cfg.causal and cfg.window_left < 0
          and q_local == k_local and q_local % 2 == 0)


def _offsets(before, batch: int, c: int):
  """(cu_seqlens_q, cu_seqlens_k) int32 (2*batch + 1,) of one step; before:
  traced bool, the visiting block's device precedes this one (j < i)."""
  base = jnp.arange(batch, dtype=jnp.int32) * (2 * c)
  mid_q = base + jnp.where(before, 2 * c, c).astype(jnp.int32)
  mid_k = base + jnp.where(before, c, 0).astype(jnp.int32)
  end = jnp.full((1,), 2 * batch * c, jnp.int32)
  cu_q = jnp.concatenate([jnp.stack([base, mid_q], axis=1).reshape(-1), end])
  cu_k = jnp.concatenate([jnp.stack([base, mid_k], axis=1).reshape(-1), end])
  return cu_q, cu_k


def _full(cfg):
  """cfg without a mask: the rectangle is fully visible."""
  return ring._pair_cfg(cfg, ring.PairMask(skip=False))


def _spec(s: int) -> primitives.VarlenSpec:
  return primitives.VarlenSpec(max_seqlen_q=s, max_seqlen_k=s)


def _pack(x):
  """(*batch, s, h, d) -> (batch*s, h, d): each entry's rows contiguous."""
  return x.reshape((-1,) + x.shape[-2:])


def _lse_pack(lse):
  """(*batch, h, s) -> (h, batch*s), the varlen lse layout."""
  h, s = lse.shape[-2:]
  return jnp.moveaxis(lse.reshape(-1, h, s), 1, 0).reshape(h, -1)


def _lse_unpack(lse, like):
  """(h, batch*s) -> like's (*batch, h, s)."""
  h, s = like.shape[-2:]
  return jnp.moveaxis(lse.reshape(h, -1, s), 0, 1).reshape(like.shape)


def _step_offsets(s, n, axis_name, batch, c):
  i = jax.lax.axis_index(axis_name)
  return _offsets((i - s) % n < i, batch, c)


def fwd(q, k, v, cfg, axis_name, n):
  """(out, lse) of the causal zigzag ring; out float32 accumulator cast to
  q.dtype, lse float32 (*batch, heads, local seqlen)."""
  batch, s_loc = math.prod(q.shape[:-3]), q.shape[_SEQ]
  kv = (k, v)
  acc_out = acc_lse = None
  for s in range(n):
    # The next block's transfer is issued before this block's compute.
    kv_next = ring_comm.send_next(kv, n, axis_name) if s < n - 1 else None
    if s == 0:
      out, lse = primitives.fwd_call(q, k, v, cfg)
      out, lse = (ring._vary_like(x, q, k, v) for x in (out, lse))
      acc_out, acc_lse = out.astype(jnp.float32), lse
    else:
      cu_q, cu_k = _step_offsets(s, n, axis_name, batch, s_loc // 2)
      out, lse = primitives.varlen_fwd_call(_pack(q), _pack(kv[0]), _pack(kv[1]), cu_q, cu_k,
                                            None, None, _full(cfg), _spec(s_loc))
      out, lse = (ring._vary_like(x, q, k, v, acc_out) for x in (out, lse))
      acc_out, acc_lse = ring._merge(acc_out, acc_lse, out.reshape(q.shape),
                                     _lse_unpack(lse, acc_lse))
    kv, (acc_out, acc_lse) = ring_comm.step_fence(kv_next, (acc_out, acc_lse))
  return acc_out.astype(q.dtype), acc_lse


def bwd(q, k, v, out, lse, dout, cfg, axis_name, n):
  """(dq, dk, dv) of the causal zigzag ring, given the GLOBAL out and lse;
  dK/dV travel with their block as in ``ring.ring_bwd`` (one transfer per
  step, ``ring_comm.bwd_exchange``, in ``ring_comm.bwd_order``)."""
  batch, s_loc = math.prod(q.shape[:-3]), q.shape[_SEQ]
  dout = dout.astype(q.dtype)
  qp, op, dop, lp = _pack(q), _pack(out), _pack(dout), _lse_pack(lse)
  dq = dkv = None
  kv, schedule = ring_comm.bwd_schedule(k, v, n, axis_name)
  for s, send_kv, own_next in schedule:
    kv_next, dkv_in = ring_comm.bwd_exchange(kv, dkv, send_kv, n, axis_name)
    if s == 0:
      g = primitives.bwd_call(q, k, v, out, lse, dout, cfg)
    else:
      cu_q, cu_k = _step_offsets(s, n, axis_name, batch, s_loc // 2)
      g = primitives.varlen_bwd_call(qp, _pack(kv[0]), _pack(kv[1]), op, lp, dop, cu_q, cu_k,
                                     None, None, _full(cfg), _spec(s_loc))
      g = (g[0].reshape(q.shape), g[1].reshape(k.shape), g[2].reshape(v.shape))
    g_q, g_k, g_v = (ring._vary_like(x, q, k, v, out, lse, dout).astype(jnp.float32)
                     for x in g)
    dq = g_q if dq is None else dq + g_q
    dkv = (g_k, g_v) if dkv_in is None else (dkv_in[0] + g_k, dkv_in[1] + g_v)
    kv, (dq, dkv) = ring_comm.step_fence((k, v) if own_next else kv_next, (dq, dkv))
  dkv = ring_comm.finish_dkv(dkv, schedule[-1][0], n, axis_name, (k.dtype, v.dtype))
  return dq.astype(q.dtype), dkv[0], dkv[1]
