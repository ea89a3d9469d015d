"""Pure-JAX reference attention with the same signature and semantics as
``jax_fa3.attention`` (mask rules of cc/common/mask.h). Materialises the
(seqlen_q, seqlen_k) score matrix: for tests and small inputs only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

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
              upcast: bool = True) -> Any:
  """Reference attention; arguments as ``jax_fa3.attention``.

  ``upcast=True`` computes in float32 (float64 when the inputs are float64),
  ``upcast=False`` does the matmuls in the input dtype with a float32 softmax,
  like FA3's ``attention_ref(upcast=False)``: the "naive computation in the
  input precision" of the tolerance rule. ``deterministic`` is accepted for
  signature parity and has no effect.
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
  ok = visible_mask(q.shape[-3], k.shape[-3], causal, (left, right))
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
