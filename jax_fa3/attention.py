"""Public API: ``jax_fa3.attention`` (dense, optionally with segment ids)."""

from __future__ import annotations

from typing import Any

import jax

from jax_fa3 import _validate
from jax_fa3 import primitives
from jax_fa3 import segments


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
              sm_margin: int = 0) -> Any:
  """Exact scaled dot-product attention, FlashAttention-3 style.

  Computes ``softmax(mask(softcap(softmax_scale * q @ k^T))) @ v`` per head
  without materialising the score matrix (FlashAttention-3, Shah et al. 2024;
  API after FA3's ``flash_attn_func`` and ``jax.nn.dot_product_attention``).
  Works under ``jax.jit``, ``jax.grad``, ``jax.vmap`` (extra leading dims fold
  into batch) and ``jax.checkpoint``.

  Args:
    q: queries, shape ``(batch, seqlen_q, heads, head_dim)``; float16 or
      bfloat16 (float32 accepted on the CPU backend). Extra leading dims are
      treated as batch.
    k: keys, shape ``(batch, seqlen_k, kv_heads, head_dim)``, same dtype;
      ``heads % kv_heads == 0`` (GQA/MQA: K/V are indexed, never repeated).
    v: values, same shape and dtype as ``k``.
    softmax_scale: multiplier of ``q @ k^T``; default ``1/sqrt(head_dim)``.
    causal: causal mask, bottom-right aligned when ``seqlen_q != seqlen_k``
      (query ``i`` sees keys ``j <= i + seqlen_k - seqlen_q``), as in FA3.
    window_size: ``(left, right)`` sliding window, ``-1`` = unbounded: query
      ``i`` sees keys in ``[i + off - left, i + off + right]`` with
      ``off = seqlen_k - seqlen_q``. ``causal`` sets ``right = 0``.
    softcap: if > 0, scores become ``softcap * tanh(scores / softcap)``
      (Gemma 2 / Grok style), applied after ``softmax_scale``.
    return_lse: also return the log-sum-exp of each query row (natural log,
      float32, shape ``(batch, heads, seqlen_q)``; ``-inf`` for a row that
      sees no key, whose output is 0). The LSE carries no gradient (as FA3).
    deterministic: make the backward bitwise reproducible run to run (the
      dQ partials of the key blocks are added in a fixed order; on the H100
      13-25 % slower at d128/d256, as fast at d64 from 8k on:
      tests/cuda/NOTES.md).
    segment_ids: packed sequences given per token: an int32 array
      ``(batch..., seqlen)`` used for both q and k/v (needs ``seqlen_q ==
      seqlen_k``), or a pair ``(q_segment_ids, kv_segment_ids)`` of shapes
      ``(batch..., seqlen_q)`` and ``(batch..., seqlen_k)``. A query sees
      only keys of its row with the same id; causal / window apply within the
      segment on positions counted inside it, bottom-right aligned per
      segment (for self-attention with contiguous segments: causal AND same
      segment). Ids need not be sorted or contiguous. A query whose id no key
      has gets output 0 (LSE -inf). Runs through the varlen path (see
      ``jax_fa3.segments``), on the CPU and Hopper backends; not
      partitioned under sharding.
    sm_margin: FA3's ``sm_margin``: > 0 when communication kernels run
      beside the forward on another stream. FA3 leaves that many SMs idle;
      the Hopper forward here launches one CTA per tile instead of its
      persistent grid, so the other kernels get SMs as tiles finish (every
      positive value acts alike; on 4 H200s the ring's exposed transfer time
      fell from 1.7 to 0.1 ms per call). 0: persistent grid on every SM.
      Ignored by the CPU backend and by the backward, whose grid is not
      persistent.

  Returns:
    ``out`` with the shape and dtype of ``q``; or ``(out, lse)`` when
    ``return_lse``.

  Raises:
    TypeError / ValueError: before lowering, naming the offending argument
      (rank, dtype, head_dim not a multiple of 8 in [8, 256], heads not a
      multiple of kv_heads, bad window/softcap/scale, segment_ids shape or
      dtype, sm_margin not an int in [0, 1024)).
  """
  _validate.check_qkv(q, k, v)
  causal = _validate.check_bool("causal", causal)
  return_lse = _validate.check_bool("return_lse", return_lse)
  deterministic = _validate.check_bool("deterministic", deterministic)
  cfg = primitives.AttnConfig.from_args(q.shape[-1], softmax_scale=softmax_scale, causal=causal,
                                        window_size=window_size, softcap=softcap,
                                        deterministic=deterministic, sm_margin=sm_margin)
  if segment_ids is not None:
    q_seg, kv_seg = _validate.check_segment_ids(segment_ids, q, k)
    out, lse = segments.attention_with_segments(
        q, k, v, q_seg, kv_seg, cfg, same=not isinstance(segment_ids, (tuple, list)))
  else:
    out, lse = primitives.attention_with_lse(q, k, v, cfg)
  if return_lse:
    return out, jax.lax.stop_gradient(lse)
  return out
