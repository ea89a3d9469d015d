"""Public API: ``jax_fa3.attention_varlen`` (packed variable-length sequences,
after FA3's ``flash_attn_varlen_func``)."""

from __future__ import annotations

from typing import Any

import jax

from jax_fa3 import _validate
from jax_fa3 import primitives


def attention_varlen(q: jax.Array,
                     k: jax.Array,
                     v: jax.Array,
                     cu_seqlens_q: jax.Array,
                     cu_seqlens_k: jax.Array,
                     max_seqlen_q: int,
                     max_seqlen_k: int,
                     *,
                     seqused_q: jax.Array | None = None,
                     seqused_k: jax.Array | None = None,
                     softmax_scale: float | None = None,
                     causal: bool = False,
                     window_size: tuple[int, int] = (-1, -1),
                     softcap: float = 0.0,
                     return_lse: bool = False,
                     deterministic: bool = False) -> Any:
  """Attention over variable-length sequences packed along one token axis.

  Sequence ``b`` is rows ``[cu_seqlens_q[b], cu_seqlens_q[b+1])`` of ``q``
  and rows ``[cu_seqlens_k[b], cu_seqlens_k[b+1])`` of ``k``/``v``; each
  sequence attends only to itself, with exactly the semantics of
  ``jax_fa3.attention`` on that sequence alone (causal bottom-right aligned
  per sequence, window, softcap, GQA/MQA). Works under ``jax.jit``,
  ``jax.grad`` (dq, dk, dv for the packed tensors) and ``jax.vmap`` (one
  call per vmapped entry).

  Args:
    q: ``(total_q, heads, head_dim)``; float16 / bfloat16 (float32 on CPU).
    k, v: ``(total_k, kv_heads, head_dim)``, same dtype; ``heads % kv_heads
      == 0``.
    cu_seqlens_q, cu_seqlens_k: int32 ``(num_seqs + 1,)``, non-decreasing,
      starting at 0, ending at most at ``total_q`` / ``total_k``.
    max_seqlen_q, max_seqlen_k: static Python ints >= every (attended)
      sequence length, as in FA3 (they size the GPU grid).
    seqused_q, seqused_k: optional int32 ``(num_seqs,)``: only the first
      ``seqused[b]`` rows of sequence ``b`` are used (``<=`` its allocated
      length). Query rows past it, or past ``cu_seqlens_q[-1]``, get output
      0, LSE ``-inf`` and zero dq; key rows past it (or outside every
      sequence) are ignored and get zero dk/dv.
    softmax_scale, causal, window_size, softcap, deterministic: as
      ``jax_fa3.attention``, applied per sequence on its used lengths.
    return_lse: also return the LSE, float32 ``(heads, total_q)`` (FA3's
      varlen layout); ``-inf`` for rows that see no key or are in no
      sequence. Not differentiable.

  Returns:
    ``out`` like ``q``, or ``(out, lse)``.

  Raises:
    TypeError / ValueError: before lowering, for bad shapes, dtypes (the
      offsets must be int32) or non-static max_seqlen. Offset VALUES are
      checked here only when they are concrete (eager); under ``jax.jit``
      the CPU backend checks them (cu[0] == 0, non-decreasing, cu[-1] <=
      total, seqused <= allocated length, lengths <= max_seqlen) and the
      call fails with an XLA runtime error naming the entry. The Hopper
      backend cannot read device memory per call without a host sync, so
      under ``jax.jit`` on the GPU it checks the same conditions on the
      device and, when any fails, makes EVERY element of the results NaN
      (``out``, ``lse``, and ``dq`` / ``dk`` / ``dv`` in the backward):
      never a partial or silently wrong result, and never an access outside
      the tensors. Validate offsets eagerly (or on CPU) for the message.
  """
  _validate.check_qkv(q, k, v, packed=True)
  num_seqs = _validate.check_cu_seqlens(cu_seqlens_q, cu_seqlens_k)
  for name, x in (("seqused_q", seqused_q), ("seqused_k", seqused_k)):
    if x is not None:
      _validate.check_int32_vector(name, x, num_seqs)
  max_q = _validate.resolve_max_seqlen("max_seqlen_q", max_seqlen_q)
  max_k = _validate.resolve_max_seqlen("max_seqlen_k", max_seqlen_k)
  causal = _validate.check_bool("causal", causal)
  return_lse = _validate.check_bool("return_lse", return_lse)
  deterministic = _validate.check_bool("deterministic", deterministic)
  _validate.check_varlen_values(cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k,
                                q.shape[0], k.shape[0], max_q, max_k)
  cfg = primitives.AttnConfig.from_args(q.shape[-1], softmax_scale=softmax_scale, causal=causal,
                                        window_size=window_size, softcap=softcap,
                                        deterministic=deterministic)
  spec = primitives.VarlenSpec(max_seqlen_q=max_q, max_seqlen_k=max_k,
                               has_seqused_q=seqused_q is not None,
                               has_seqused_k=seqused_k is not None)
  out, lse = primitives.varlen_attention_with_lse(
      q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, cfg, spec)
  if return_lse:
    return out, jax.lax.stop_gradient(lse)
  return out
