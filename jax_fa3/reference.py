"""Pure-JAX reference attention with the same signature and semantics as
``jax_fa3.attention`` (mask rules of cc/common/mask.h) and
``jax_fa3.attention_varlen`` (cc/common/varlen.h). Materialises the
(seqlen_q, seqlen_k) score matrix: for tests and small inputs only.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_fa3 import _validate


def visible_mask(seqlen_q: int, seqlen_k: int, causal: bool = False,
                 window_size: tuple[int, int] = (-1, -1)) -> jax.Array:
  """Boolean (seqlen_q, seqlen_k): which keys each query row sees.

  Mirrors cc/common/mask.h: bottom-right aligned (offset = seqlen_k -
  seqlen_q); row i sees j in [i + off - left, i + off + right]; causal sets
  right = 0; -1 = unbounded.
  """
  left, right = window_size
  if causal:
    right = 0
  row = jnp.arange(seqlen_q)[:, None] + (seqlen_k - seqlen_q)
  col = jnp.arange(seqlen_k)[None, :]
  ok = jnp.ones((seqlen_q, seqlen_k), dtype=bool)
  if right >= 0:
    ok &= col <= row + right
  if left >= 0:
    ok &= col >= row - left
  return ok


def segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                 causal: bool = False,
                 window_size: tuple[int, int] = (-1, -1)) -> jax.Array:
  """Boolean (batch..., seqlen_q, seqlen_k): which keys each query sees
  under segment ids (semantics of ``jax_fa3.attention(segment_ids=...)``).

  Query i sees key j iff they share an id and, in positions counted within
  that segment (p_i = number of earlier queries with the id, r_j likewise
  for keys; Lq, Lk = how many queries / keys carry it), r_j lies in
  [p_i + off - left, p_i + off + right] with off = Lk - Lq: visible_mask
  applied to each segment on its own.
  """
  left, right = window_size
  if causal:
    right = 0
  qs, ks = q_segment_ids, kv_segment_ids
  same = qs[..., :, None] == ks[..., None, :]
  eq_q = qs[..., :, None] == qs[..., None, :]
  eq_k = ks[..., :, None] == ks[..., None, :]
  sq, sk = qs.shape[-1], ks.shape[-1]
  before_q = jnp.arange(sq)[None, :] < jnp.arange(sq)[:, None]  # [i, i'] = i' < i
  before_k = jnp.arange(sk)[None, :] < jnp.arange(sk)[:, None]
  pos_q = jnp.sum(eq_q & before_q, axis=-1)          # (..., sq)
  pos_k = jnp.sum(eq_k & before_k, axis=-1)          # (..., sk)
  len_q = jnp.sum(eq_q, axis=-1)                     # (..., sq)
  len_k = jnp.sum(same, axis=-1)                     # keys of the query's id
  row = (pos_q + len_k - len_q)[..., :, None]        # p_i + off
  col = pos_k[..., None, :]
  ok = same
  if right >= 0:
    ok &= col <= row + right
  if left >= 0:
    ok &= col >= row - left
  return ok


def attention(q: jax.Array,
              k: jax.Array,
              v: jax.Array,
              *,
              softmax_scale: float | None = None,
              causal: bool = False,
              window_size: tuple[int, int] = (-1, -1),
              softcap: float = 0.0,
              return_lse: bool = False,
              deterministic: bool = False,
              segment_ids: Any = None,
              upcast: bool = True) -> Any:
  """Reference attention; arguments as ``jax_fa3.attention``.

  ``upcast=True`` computes in float32 (float64 when the inputs are float64),
  ``upcast=False`` does the matmuls in the input dtype with a float32 softmax,
  like FA3's ``attention_ref(upcast=False)``: the "naive computation in the
  input precision" of the tolerance rule. ``deterministic`` is accepted for
  signature parity and has no effect. ``segment_ids`` replaces the dense
  mask by ``segment_mask`` (an explicit per-element mask).
  """
  del deterministic
  _validate.check_qkv(q, k, v, allow_float64=True)
  scale = _validate.resolve_scale(softmax_scale, q.shape[-1])
  left, right = _validate.resolve_window(window_size)
  softcap = _validate.resolve_softcap(softcap)
  in_dtype = q.dtype
  acc = jnp.promote_types(in_dtype, jnp.float32)
  if upcast:
    q, k, v = (x.astype(acc) for x in (q, k, v))
  h, hk = q.shape[-2], k.shape[-2]
  if h != hk:  # GQA: the reference may repeat; the kernels index instead.
    k = jnp.repeat(k, h // hk, axis=-2)
    v = jnp.repeat(v, h // hk, axis=-2)
  s = jnp.einsum("...qhd,...khd->...hqk", q, k).astype(acc) * scale
  if softcap > 0:
    s = softcap * jnp.tanh(s / softcap)
  if segment_ids is None:
    ok = visible_mask(q.shape[-3], k.shape[-3], causal, (left, right))
  else:
    q_seg, kv_seg = _validate.check_segment_ids(segment_ids, q, k)
    ok = segment_mask(q_seg, kv_seg, causal, (left, right))[..., None, :, :]
  s = jnp.where(ok, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.exp(s - m_safe)
  l = jnp.sum(p, axis=-1, keepdims=True)
  empty = l == 0
  p = p / jnp.where(empty, 1.0, l)
  out = jnp.einsum("...hqk,...khd->...qhd", p.astype(v.dtype), v)
  out = out.astype(in_dtype)
  if return_lse:
    lse = jnp.where(empty, -jnp.inf, m_safe + jnp.log(jnp.where(empty, 1.0, l)))
    return out, lse[..., 0].astype(jnp.promote_types(acc, jnp.float32))
  return out


def attention_varlen(q: jax.Array,
                     k: jax.Array,
                     v: jax.Array,
                     cu_seqlens_q: Any,
                     cu_seqlens_k: Any,
                     max_seqlen_q: int,
                     max_seqlen_k: int,
                     *,
                     seqused_q: Any = None,
                     seqused_k: Any = None,
                     softmax_scale: float | None = None,
                     causal: bool = False,
                     window_size: tuple[int, int] = (-1, -1),
                     softcap: float = 0.0,
                     return_lse: bool = False,
                     deterministic: bool = False,
                     upcast: bool = True) -> Any:
  """Reference for ``jax_fa3.attention_varlen``: the dense reference on each
  sequence alone, written into zeros (out) / -inf (lse, (heads, total_q)).

  The offsets are read on the host (they must be concrete: not under jit);
  ``max_seqlen_*`` are accepted for parity and only checked as bounds.
  Differentiable in q, k, v. The per-sequence loop is unrolled into one
  jitted function per layout (one compilation instead of one per op and
  sequence shape).
  """
  del deterministic
  _validate.check_qkv(q, k, v, allow_float64=True, packed=True)
  cu_q, cu_k = (np.asarray(x, np.int64) for x in (cu_seqlens_q, cu_seqlens_k))
  used_q = None if seqused_q is None else np.asarray(seqused_q, np.int64)
  used_k = None if seqused_k is None else np.asarray(seqused_k, np.int64)
  _validate.check_varlen_values(cu_q, cu_k, used_q, used_k, q.shape[0], k.shape[0],
                                max_seqlen_q, max_seqlen_k)
  seqs = []
  for b in range(len(cu_q) - 1):
    lq = int(cu_q[b + 1] - cu_q[b] if used_q is None else used_q[b])
    lk = int(cu_k[b + 1] - cu_k[b] if used_k is None else used_k[b])
    seqs.append((int(cu_q[b]), lq, int(cu_k[b]), lk))
  kw = dict(softmax_scale=_validate.resolve_scale(softmax_scale, q.shape[-1]),
            causal=_validate.check_bool("causal", causal),
            window_size=_validate.resolve_window(window_size),
            softcap=_validate.resolve_softcap(softcap), upcast=bool(upcast))
  out, lse = _varlen_loop(q, k, v, seqs=tuple(seqs), kw=tuple(sorted(kw.items())))
  if return_lse:
    return out, lse
  return out


@functools.partial(jax.jit, static_argnames=("seqs", "kw"))
def _varlen_loop(q, k, v, *, seqs, kw):
  out = jnp.zeros_like(q)
  lse_dtype = jnp.promote_types(q.dtype, jnp.float32)
  lse = jnp.full((q.shape[1], q.shape[0]), -jnp.inf, lse_dtype)
  for q0, lq, k0, lk in seqs:
    if lq == 0 or lk == 0:  # nothing to attend: out 0, lse -inf already
      continue
    o, l = attention(q[None, q0:q0 + lq], k[None, k0:k0 + lk], v[None, k0:k0 + lk],
                     return_lse=True, **dict(kw))
    out = out.at[q0:q0 + lq].set(o[0])
    lse = lse.at[:, q0:q0 + lq].set(l[0].astype(lse_dtype))
  return out, lse
