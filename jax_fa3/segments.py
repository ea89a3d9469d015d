"""``segment_ids`` for ``jax_fa3.attention``: packed sequences given per token.

Semantics (jax_fa3.reference.segment_mask spells them as an explicit mask):
query token i of batch row b sees key j of row b iff they carry the same
segment id, and causal / window apply within that segment on positions
counted inside it (a token's position = how many earlier tokens of its row
share its id; the segment's lengths = how many tokens carry the id in q and
in kv), bottom-right aligned per segment as everywhere in jax_fa3. For packed
self-attention (one segment_ids array, seqlen_q == seqlen_k) with contiguous
segments this is plain "causal AND same segment". A query whose id has no key
gets output 0 and LSE -inf; keys whose id has no query get zero gradients.

Design: no mask operand. The ids are converted, inside jit, into the varlen
offsets of ``jax_fa3.attention_varlen`` so that every backend serves them
through its varlen path (the Hopper kernels will take cu_seqlens, not a
per-element mask):
  1. each row's tokens are stably sorted by id (q and kv separately), which
     makes every segment one contiguous run, in increasing id order in both,
     and keeps the order of tokens inside a segment; ids need not be
     contiguous or sorted to begin with;
  2. slot n of row b is the n-th distinct q id of the row; its query run
     starts where that id starts in the sorted q, its key run is found by
     binary search in the sorted kv (length 0 when the id is absent there):
     cu_seqlens_q / cu_seqlens_k give the run starts, seqused_k the key
     counts (kv ids that no query has fall between runs and are ignored);
  3. a static bound of seqlen_q segments per row (the most there can be)
     gives num_seqs = batch * seqlen_q; unused slots are empty sequences at
     the end of their row, which the kernels skip;
  4. the packed output / LSE are permuted back to the original token order.
Cost beyond the attention: two argsorts of (batch, seqlen) ids and one
gather of q, k, v and out each. Under sharding this path is not partitioned
(see primitives.py, varlen section).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_fa3 import primitives


def _sort_rows(ids):
  """(stable permutation sorting each row by id, the sorted ids)."""
  perm = jnp.argsort(ids, axis=1, stable=True).astype(jnp.int32)
  return perm, jnp.take_along_axis(ids, perm, axis=1)


def _inverse(perm):
  rows = jnp.arange(perm.shape[0])[:, None]
  pos = jnp.broadcast_to(jnp.arange(perm.shape[1], dtype=jnp.int32), perm.shape)
  return jnp.zeros_like(perm).at[rows, perm].set(pos)


def segments_to_varlen(q_seg: jax.Array, kv_seg: jax.Array, same: bool = False):
  """Varlen layout of (batch, seqlen) segment ids (module docstring).

  Returns (perm_q, perm_k, cu_seqlens_q, cu_seqlens_k, seqused_k): row b of
  the packed q is ``q[b, perm_q[b]]`` flattened over rows (likewise k with
  perm_k); the offsets describe 1 + batch * seqlen_q sequences (the first
  one empty). ``same``: kv_seg
  is q_seg (one sort serves both).
  """
  b, sq = q_seg.shape
  sk = kv_seg.shape[1]
  perm_q, ids_q = _sort_rows(q_seg)
  perm_k, ids_k = (perm_q, ids_q) if same else _sort_rows(kv_seg)
  rows = jnp.arange(b)[:, None]
  pos = jnp.broadcast_to(jnp.arange(sq, dtype=jnp.int32), (b, sq))
  # First token of each run of the sorted ids, and the slot of its segment.
  first = jnp.concatenate([jnp.ones((b, 1), bool), ids_q[:, 1:] != ids_q[:, :-1]], axis=1)
  slot = jnp.cumsum(first, axis=1, dtype=jnp.int32) - 1
  # start_q[b, n]: where slot n starts in the sorted row; sq (an empty run at
  # the end of the row) for slots beyond the row's segment count.
  start_q = jnp.full((b, sq), sq, jnp.int32).at[rows, jnp.where(first, slot, sq)].set(
      pos, mode="drop")
  used = start_q < sq
  slot_id = jnp.take_along_axis(ids_q, jnp.minimum(start_q, sq - 1), axis=1)
  search = jax.vmap(lambda a, x, side: jnp.searchsorted(a, x, side=side),
                    in_axes=(0, 0, None))
  k_lo = jnp.where(used, search(ids_k, slot_id, "left"), sk).astype(jnp.int32)
  k_hi = jnp.where(used, search(ids_k, slot_id, "right"), sk).astype(jnp.int32)
  # A leading empty sequence: cu_seqlens must start at 0, but row 0's first
  # slot starts its keys after any smaller kv-only ids (e.g. kv padding).
  zero = jnp.zeros((1,), jnp.int32)
  cu_q = jnp.concatenate([zero, (rows * sq + start_q).reshape(-1).astype(jnp.int32),
                          jnp.full((1,), b * sq, jnp.int32)])
  cu_k = jnp.concatenate([zero, (rows * sk + k_lo).reshape(-1).astype(jnp.int32),
                          jnp.full((1,), b * sk, jnp.int32)])
  return perm_q, perm_k, cu_q, cu_k, jnp.concatenate([zero, (k_hi - k_lo).reshape(-1)])


def attention_with_segments(q, k, v, q_seg, kv_seg, cfg: primitives.AttnConfig,
                            same: bool) -> tuple[jax.Array, jax.Array]:
  """(out, lse) of ``jax_fa3.attention`` with segment ids (validated), as
  dense shapes: out like q, lse float32 (batch..., heads, seqlen_q)."""
  lead = q.shape[:-3]
  sq, h, d = q.shape[-3:]
  sk, hk = k.shape[-3], k.shape[-2]
  q3, k3, v3 = q.reshape(-1, sq, h, d), k.reshape(-1, sk, hk, d), v.reshape(-1, sk, hk, d)
  b = q3.shape[0]
  q_seg, kv_seg = q_seg.reshape(b, sq), kv_seg.reshape(b, sk)
  if b * max(sq, sk) >= 2**31:
    raise ValueError(f"segment_ids: batch * seqlen must be < 2**31 (int32 offsets), got "
                     f"{b} * {max(sq, sk)}")
  perm_q, perm_k, cu_q, cu_k, used_k = segments_to_varlen(q_seg, kv_seg, same)

  def pack(x, perm):
    return jnp.take_along_axis(x, perm[:, :, None, None], axis=1).reshape(-1, *x.shape[2:])

  spec = primitives.VarlenSpec(max_seqlen_q=sq, max_seqlen_k=sk, has_seqused_q=False,
                               has_seqused_k=True)
  out, lse = primitives.varlen_attention_with_lse(
      pack(q3, perm_q), pack(k3, perm_k), pack(v3, perm_k), cu_q, cu_k, None, used_k, cfg,
      spec)
  inv = _inverse(perm_q)
  out = jnp.take_along_axis(out.reshape(b, sq, h, d), inv[:, :, None, None], axis=1)
  lse = jnp.take_along_axis(jnp.swapaxes(lse.reshape(h, b, sq), 0, 1), inv[:, None, :], axis=2)
  return out.reshape(q.shape), lse.reshape(*lead, h, sq)
