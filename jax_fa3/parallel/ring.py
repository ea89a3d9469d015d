"""Ring attention: exact attention over a sequence sharded along a mesh axis.

Use inside ``shard_map`` with the sequence axis (-3) of q, k, v split over
``axis_name`` (n devices). Each device keeps its queries; the K/V blocks
travel around the ring (``ppermute`` to the next device), and at step s
device i computes its queries against the block that started on device
(i - s) mod n with the single-device kernel (``primitives.fwd_call``). The
partial (out, lse) pairs are merged in float32 (Liu et al., "Ring Attention
with Blockwise Transformers", 2023; Brandon et al. 2023 for the causal
balance; the merge is FlashAttention's online softmax at block granularity).

Masks. The kernel's causal/window mask is bottom-right aligned within one
call and its (left, right) window is static. For a (q block, k block) pair
the global mask restricted to the pair is again a band of diagonals,
``c - r in [lo, hi]`` in local coordinates (``_pair_mask``): it is either
empty (the pair is skipped), full (called unmasked), or a partial band that
the kernel expresses after cropping rows/cols that see nothing (so that its
window entries are >= 0). Which case a device is in depends on its index,
a traced value, but the ring is unrolled in Python, so for each step and
pair there are at most n static configurations: we enumerate them, dedupe,
and pick one with ``lax.switch`` on a static table indexed by
``axis_index``. Skipped pairs cost nothing at run time.

A GPU conditional makes the host wait for the device to read the branch
index, which stalls the stream (and the transfers queued beside it). The
zigzag causal ring would need one per step: pair (q chunk 0, k chunk 0) runs
on the devices where the visiting block comes from a lower index and pair
(1, 1) on the others, with the same (full) mask. Such complementary pairs
("couples") run instead as ONE kernel call on operands chosen per device
with ``jnp.where`` (a copy of a chunk, cheap next to the attention), their
results routed back the same way: no control flow at all. The causal
zigzag ring itself (no left window, equal lengths) takes a shorter road:
``ring_zigzag`` runs each step as ONE varlen call whose offsets, computed
from ``axis_index``, select the visible rectangle.

Backward. FlashAttention's backward is exact per block when given the
GLOBAL (merged) lse and out (P = exp(s - lse), D = rowsum(dO * O)), so each
step calls ``primitives.bwd_call`` on (local q, visiting k/v) with the global
out/lse; dQ accumulates locally, dK/dV accumulate in float32 buffers that
travel with their K/V block.

Transfers, their order and the fence that makes each overlap its step's
compute: ``ring_comm``. Set ``ring_comm.COLLECTIVE_OVERLAP_FLAG`` in
XLA_FLAGS, or the transfers of a step do not all overlap it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jax_fa3 import _validate
from jax_fa3 import primitives
from jax_fa3.parallel import ring_comm
from jax_fa3.parallel import zigzag

_SEQ = -3  # sequence axis of q/k/v/out: (*batch, seqlen, heads, head_dim)


# ----------------------------------------------------------------- masks ----

@dataclasses.dataclass(frozen=True)
class PairMask:
  """How to run one (q block, k block) pair. Static, hashable.

  skip: no query of the pair sees a key of it.
  q_len/k_len: leading rows/cols passed to the kernel (the cropped tail sees
    nothing, see ``_pair_mask``); left/right: the kernel's window, -1 = none.
  """
  skip: bool
  q_len: int = 0
  k_len: int = 0
  left: int = -1
  right: int = -1


def _pair_mask(q_start: int, q_len: int, k_start: int, k_len: int,
               left_g: int, right_g: int, offset_g: int) -> PairMask:
  """Local mask of a q block [q_start, +q_len) vs a k block [k_start, +k_len).

  Global rule (cc/common/mask.h): row R sees col C iff
  ``R + G - left_g <= C <= R + G + right_g`` (G = global seqlen_k - seqlen_q,
  a side < 0 unbounded). With R = q_start + r, C = k_start + c this is
  ``lo <= c - r <= hi``, lo = base - left_g, hi = base + right_g,
  base = q_start + G - k_start. The kernel sees ``c - r in [off - left,
  off + right]`` with off = k_len' - q_len' (bottom-right alignment), so
  left = off - lo and right = hi - off; these must be >= 0. We make them so
  by cropping tails that see nothing:
   * right < 0: the last cols c >= hi + q_len are seen by no row; keep
     k_len' = hi + q_len cols, which makes right = 0.
   * then left < 0: the last rows r >= k_len' - lo see no col; keep
     q_len' = k_len' - lo rows, which makes left = 0 (and right = hi - lo).
  """
  base = q_start + offset_g - k_start
  lo = None if left_g < 0 else base - left_g
  hi = None if right_g < 0 else base + right_g
  # The pair's diagonals c - r span [-(q_len-1), k_len-1].
  if ((lo is not None and lo > k_len - 1) or (hi is not None and hi < -(q_len - 1))
      or (lo is not None and hi is not None and lo > hi)):
    return PairMask(skip=True)
  if (lo is None or lo <= -(q_len - 1)) and (hi is None or hi >= k_len - 1):
    return PairMask(skip=False, q_len=q_len, k_len=k_len)  # fully visible
  ql, kl = q_len, k_len
  if hi is not None and hi - (kl - ql) < 0:
    kl = hi + ql
  if lo is not None and (kl - ql) - lo < 0:
    ql = kl - lo
  off = kl - ql
  return PairMask(skip=False, q_len=ql, k_len=kl,
                  left=-1 if lo is None else off - lo,
                  right=-1 if hi is None else hi - off)


def _pair_cfg(cfg: primitives.AttnConfig, m: PairMask) -> primitives.AttnConfig:
  return dataclasses.replace(cfg, causal=False, window_left=m.left,
                             window_right=m.right)


def _global_window(cfg: primitives.AttnConfig) -> tuple[int, int]:
  return cfg.window_left, (0 if cfg.causal else cfg.window_right)


# -------------------------------------------------------------- plumbing ----

def axis_size(axis_name) -> int:
  if hasattr(jax.lax, "axis_size"):
    return int(jax.lax.axis_size(axis_name))
  return int(jax.lax.psum(1, axis_name))  # pragma: no cover - older jax


def _vary_like(x, *refs):
  """Mark `x` as varying over the manual mesh axes the `refs` vary over.

  Under shard_map's type checking (check_vma, the default) the outputs of
  ``ffi_call`` and fresh ``zeros`` are typed as replicated; mixing them with
  the per-device shards (and the two arms of a ``lax.switch``) needs the
  same varying-axes type. A no-op outside shard_map and on jax without vma.
  """
  def vma(a):
    t = jax.typeof(a) if hasattr(jax, "typeof") else None
    if hasattr(t, "vma"):  # jax 0.7 - 0.9
      return frozenset(t.vma)
    mat = getattr(t, "manual_axis_type", None)  # jax >= 0.10
    return frozenset(getattr(mat, "varying", ()))
  want = frozenset().union(*(vma(r) for r in refs))
  missing = tuple(a for a in want if a not in vma(x))
  if not missing:
    return x
  if hasattr(jax.lax, "pcast"):
    return jax.lax.pcast(x, missing, to="varying")
  return jax.lax.pvary(x, missing)  # pragma: no cover - jax < 0.8


def _zeros_like(x, *refs, dtype=jnp.float32, value=0.0):
  return _vary_like(jnp.full(x.shape, value, dtype), x, *refs)


def _pieces(x, n_pieces: int, axis: int):
  step = x.shape[axis] // n_pieces
  return [jax.lax.slice_in_dim(x, p * step, (p + 1) * step, axis=axis)
          for p in range(n_pieces)]


def _crop(x, length: int, axis: int):
  return x if x.shape[axis] == length else jax.lax.slice_in_dim(x, 0, length, axis=axis)


def _pad_tail(x, length: int, axis: int, value=0.0):
  """Pad the cropped tail back (rows/cols the kernel did not see)."""
  extra = length - x.shape[axis]
  if extra == 0:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, extra)
  return jnp.pad(x, pad, constant_values=value)


class _Plan:
  """Static schedule: for step s and pair (a, b), the configs and the table
  device index -> config index."""

  def __init__(self, cfg, layout, n, q_local, k_local):
    pieces = zigzag.num_chunks(layout)
    if q_local % pieces or k_local % pieces:
      raise ValueError(
          f"layout {layout!r} needs the local seqlens divisible by {pieces}, got"
          f" q {q_local}, k {k_local}")
    self.pieces = pieces
    self.cq, self.ck = q_local // pieces, k_local // pieces
    left, right = _global_window(cfg)
    offset = n * (k_local - q_local)  # global seqlen_k - seqlen_q
    self.steps = []  # per step: {(a, b): (masks, table)} run with _select
    self.couples = []  # per step: [(p1, p2, mask, on1)] run with _pick
    for s in range(n):
      pairs = {}
      for a in range(pieces):
        for b in range(pieces):
          masks, table = [], []
          for i in range(n):
            gq = zigzag.chunks_of(layout, i, n)[a]
            gk = zigzag.chunks_of(layout, (i - s) % n, n)[b]
            m = _pair_mask(gq * self.cq, self.cq, gk * self.ck, self.ck,
                           left, right, offset)
            if m not in masks:
              masks.append(m)
            table.append(masks.index(m))
          if not all(m.skip for m in masks):
            pairs[(a, b)] = (tuple(masks), tuple(table))
      couples = _couples(pairs)
      for p1, p2, _, _ in couples:
        del pairs[p1], pairs[p2]
      self.steps.append(pairs)
      self.couples.append(couples)


def _couples(pairs):
  """[(p1, p2, mask, on1)]: pairs whose configs are {skip, mask} (one mask)
  and whose non-skip devices are complementary; on1[i] says whether device
  i runs p1 (else p2). Greedy, in pair order."""
  def only_mask(masks):
    live = [m for m in masks if not m.skip]
    return live[0] if len(live) == 1 and len(masks) == 2 else None
  found, used = [], set()
  keys = sorted(pairs)
  for x, p1 in enumerate(keys):
    for p2 in keys[x + 1:]:
      if p1 in used or p2 in used:
        continue
      (m1, t1), (m2, t2) = pairs[p1], pairs[p2]
      mask = only_mask(m1)
      if mask is None or only_mask(m2) != mask:
        continue
      on1 = tuple(not m1[c].skip for c in t1)
      on2 = tuple(not m2[c].skip for c in t2)
      if all(a != b for a, b in zip(on1, on2)):
        found.append((p1, p2, mask, on1))
        used |= {p1, p2}
  return found


def _select(masks, table, axis_name, branches, *operands):
  """Run the branch of this device's config (static when all agree)."""
  if len(masks) == 1:
    return branches[0](*operands)
  idx = jnp.asarray(table, jnp.int32)[jax.lax.axis_index(axis_name)]
  return jax.lax.switch(idx, branches, *operands)


# Default sm_margin of the ring's forward kernels: NCCL's point-to-point
# kernels need SMs of their own while the attention kernel runs; any value
# > 0 makes the Hopper forward launch one CTA per tile instead of a
# persistent grid (jax_fa3.attention's sm_margin; benchmarks.ring
# --profile_dir measures the overlap).
RING_SM_MARGIN = 8


def with_ring_margin(cfg: primitives.AttnConfig) -> primitives.AttnConfig:
  """cfg with RING_SM_MARGIN unless the caller chose a margin."""
  return cfg if cfg.sm_margin else dataclasses.replace(cfg, sm_margin=RING_SM_MARGIN)


def _device_flag(on, axis_name):
  """Scalar bool: on[this device's index on axis_name]."""
  return jnp.asarray(on, jnp.bool_)[jax.lax.axis_index(axis_name)]


def _pick(flag, x1, x2):
  """x1 where flag else x2 (flag a traced scalar); x1 itself if x1 is x2."""
  return x1 if x1 is x2 else jnp.where(flag, x1, x2)


# --------------------------------------------------------------- forward ----

def _merge(acc_out, acc_lse, out, lse):
  """Combine two softmax-normalised partials by their LSEs, in float32.

  Rows with lse = -inf (no key seen in that partial) get weight 0; a row
  that is -inf in both stays -inf with output 0.
  """
  m = jnp.maximum(acc_lse, lse)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  new = m_safe + jnp.log(jnp.exp(acc_lse - m_safe) + jnp.exp(lse - m_safe))
  dead = new == -jnp.inf

  def weight(x):  # (*b, h, s) -> (*b, s, h, 1)
    w = jnp.where(dead, 0.0, jnp.exp(x - jnp.where(dead, 0.0, new)))
    return jnp.swapaxes(w, -1, -2)[..., None]

  return acc_out * weight(acc_lse) + out.astype(jnp.float32) * weight(lse), new


def _fwd_branch(cfg, m: PairMask):
  def run(q, k, v, acc_out, acc_lse):
    if m.skip:
      return acc_out, acc_lse
    out, lse = primitives.fwd_call(_crop(q, m.q_len, _SEQ), _crop(k, m.k_len, _SEQ),
                                   _crop(v, m.k_len, _SEQ), _pair_cfg(cfg, m))
    out, lse = (_vary_like(x, q, k, v, acc_out) for x in (out, lse))
    out = _pad_tail(out, q.shape[_SEQ], _SEQ)
    lse = _pad_tail(lse, q.shape[_SEQ], -1, -jnp.inf)
    return _merge(acc_out, acc_lse, out, lse)
  return run


def ring_fwd(q, k, v, cfg: primitives.AttnConfig, axis_name, layout="contiguous"):
  """(out, lse) of exact attention over the ring; no custom_vjp (see
  ``ring_attention``). lse: float32 (*batch, heads, local seqlen_q)."""
  n = axis_size(axis_name)
  if n > 1:
    ring_comm.warn_if_overlap_flag_missing()
  from jax_fa3.parallel import ring_zigzag  # pylint: disable=g-import-not-at-top (cycle)
  if n > 1 and ring_zigzag.applies(cfg, layout, q.shape[_SEQ], k.shape[_SEQ]):
    return ring_zigzag.fwd(q, k, v, cfg, axis_name, n)
  plan = _Plan(cfg, layout, n, q.shape[_SEQ], k.shape[_SEQ])
  qs = _pieces(q, plan.pieces, _SEQ)
  acc_out = [_zeros_like(x, k, v) for x in qs]
  acc_lse = [_vary_like(jnp.full(x.shape[:-3] + (x.shape[-2], x.shape[-3]), -jnp.inf,
                                 jnp.float32), q, k, v) for x in qs]
  kv = (k, v)
  for s in range(n):
    # Issue the transfer of the next block before this block's compute: no
    # data dependency between them, so XLA can overlap the two.
    kv_next = ring_comm.send_next(kv, n, axis_name) if s < n - 1 else None
    ks, vs = (_pieces(x, plan.pieces, _SEQ) for x in kv)
    for (a, b), (masks, table) in plan.steps[s].items():
      acc_out[a], acc_lse[a] = _select(
          masks, table, axis_name, [_fwd_branch(cfg, m) for m in masks],
          qs[a], ks[b], vs[b], acc_out[a], acc_lse[a])
    for (a1, b1), (a2, b2), m, on1 in plan.couples[s]:
      f = _device_flag(on1, axis_name)
      o, l = _fwd_branch(cfg, m)(
          _pick(f, qs[a1], qs[a2]), _pick(f, ks[b1], ks[b2]), _pick(f, vs[b1], vs[b2]),
          _pick(f, acc_out[a1], acc_out[a2]), _pick(f, acc_lse[a1], acc_lse[a2]))
      if a1 == a2:
        acc_out[a1], acc_lse[a1] = o, l
      else:
        acc_out[a1], acc_out[a2] = _pick(f, o, acc_out[a1]), _pick(f, acc_out[a2], o)
        acc_lse[a1], acc_lse[a2] = _pick(f, l, acc_lse[a1]), _pick(f, acc_lse[a2], l)
    kv, (acc_out, acc_lse) = ring_comm.step_fence(kv_next, (acc_out, acc_lse))
  out = jnp.concatenate(acc_out, axis=_SEQ).astype(q.dtype)
  return out, jnp.concatenate(acc_lse, axis=-1)


# -------------------------------------------------------------- backward ----

def _bwd_branch(cfg, m: PairMask):
  def run(q, k, v, out, lse, dout):
    zeros = tuple(_zeros_like(x, q, k, v, out, lse, dout) for x in (q, k, v))
    if m.skip:
      return zeros
    dq, dk, dv = primitives.bwd_call(
        _crop(q, m.q_len, _SEQ), _crop(k, m.k_len, _SEQ), _crop(v, m.k_len, _SEQ),
        _crop(out, m.q_len, _SEQ), _crop(lse, m.q_len, -1),
        _crop(dout, m.q_len, _SEQ), _pair_cfg(cfg, m))
    dq, dk, dv = (_vary_like(x, q, k, v, out, lse, dout) for x in (dq, dk, dv))
    return (_pad_tail(dq.astype(jnp.float32), q.shape[_SEQ], _SEQ),
            _pad_tail(dk.astype(jnp.float32), k.shape[_SEQ], _SEQ),
            _pad_tail(dv.astype(jnp.float32), k.shape[_SEQ], _SEQ))
  return run


def ring_bwd(q, k, v, out, lse, dout, cfg: primitives.AttnConfig, axis_name,
             layout="contiguous"):
  """(dq, dk, dv) for the local shards, given the GLOBAL out and lse
  (as returned by ``ring_fwd``)."""
  n = axis_size(axis_name)
  from jax_fa3.parallel import ring_zigzag  # pylint: disable=g-import-not-at-top (cycle)
  if n > 1 and ring_zigzag.applies(cfg, layout, q.shape[_SEQ], k.shape[_SEQ]):
    return ring_zigzag.bwd(q, k, v, out, lse, dout, cfg, axis_name, n)
  plan = _Plan(cfg, layout, n, q.shape[_SEQ], k.shape[_SEQ])
  p = plan.pieces
  qs, os_, dos = (_pieces(x, p, _SEQ) for x in (q, out, dout.astype(q.dtype)))
  lses = _pieces(lse, p, -1)
  dq = [_zeros_like(x, k, v, out, lse, dout) for x in qs]
  # dK/dV of the block currently held; float32 so the n partial sums do not
  # round to the input dtype at every hop (costs 2x the bytes of k/v).
  dkv = None
  kv, schedule = ring_comm.bwd_schedule(k, v, n, axis_name)
  for s, send_kv, own_next in schedule:
    kv_next, dkv_in = ring_comm.bwd_exchange(kv, dkv, send_kv, n, axis_name)
    ks, vs = (_pieces(x, p, _SEQ) for x in kv)
    dk_step = [_zeros_like(x, q, out, lse, dout) for x in ks]
    dv_step = [_zeros_like(x, q, out, lse, dout) for x in vs]
    for (a, b), (masks, table) in plan.steps[s].items():
      g_q, g_k, g_v = _select(masks, table, axis_name,
                              [_bwd_branch(cfg, m) for m in masks],
                              qs[a], ks[b], vs[b], os_[a], lses[a], dos[a])
      dq[a] = dq[a] + g_q
      dk_step[b] = dk_step[b] + g_k
      dv_step[b] = dv_step[b] + g_v
    for (a1, b1), (a2, b2), m, on1 in plan.couples[s]:
      f = _device_flag(on1, axis_name)
      g_q, g_k, g_v = _bwd_branch(cfg, m)(
          _pick(f, qs[a1], qs[a2]), _pick(f, ks[b1], ks[b2]), _pick(f, vs[b1], vs[b2]),
          _pick(f, os_[a1], os_[a2]), _pick(f, lses[a1], lses[a2]),
          _pick(f, dos[a1], dos[a2]))
      # Each gradient goes to the pieces of the pair this device ran.
      for acc, g, i1, i2 in ((dq, g_q, a1, a2), (dk_step, g_k, b1, b2), (dv_step, g_v, b1, b2)):
        if i1 == i2:
          acc[i1] = acc[i1] + g
        else:
          zero = jnp.zeros_like(g)
          acc[i1] = acc[i1] + _pick(f, g, zero)
          acc[i2] = acc[i2] + _pick(f, zero, g)
    step = (jnp.concatenate(dk_step, axis=_SEQ), jnp.concatenate(dv_step, axis=_SEQ))
    dkv = step if dkv_in is None else jax.tree.map(jnp.add, dkv_in, step)
    kv, (dq, dkv) = ring_comm.step_fence((k, v) if own_next else kv_next, (dq, dkv))
  dkv = ring_comm.finish_dkv(dkv, schedule[-1][0], n, axis_name, (k.dtype, v.dtype))
  return jnp.concatenate(dq, axis=_SEQ).astype(q.dtype), dkv[0], dkv[1]


# ------------------------------------------------------------ custom_vjp ----

@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _ring(q, k, v, cfg, axis_name, layout):
  return ring_fwd(q, k, v, cfg, axis_name, layout)


def _ring_vjp_fwd(q, k, v, cfg, axis_name, layout):
  out, lse = ring_fwd(q, k, v, cfg, axis_name, layout)
  return (out, lse), (q, k, v, out, lse)


def _ring_vjp_bwd(cfg, axis_name, layout, res, cts):
  q, k, v, out, lse = res
  dout, _ = cts  # lse carries no gradient, as in primitives.attention_with_lse
  return ring_bwd(q, k, v, out, lse, dout, cfg, axis_name, layout)


_ring.defvjp(_ring_vjp_fwd, _ring_vjp_bwd)


def ring_attention(q, k, v, *, axis_name, causal: bool = False,
                   softmax_scale: float | None = None,
                   window_size: tuple[int, int] = (-1, -1),
                   softcap: float = 0.0, layout: str = "contiguous",
                   return_lse: bool = False, deterministic: bool = False,
                   sm_margin: int | None = None):
  """``jax_fa3.attention`` over a sequence sharded along ``axis_name``.

  Call inside ``shard_map`` (or ``custom_partitioning``) with q, k, v the
  local shards (*batch, local_seqlen, heads, head_dim) of a sequence split
  over the mesh axis ``axis_name``. Masks refer to GLOBAL positions, with
  the same bottom-right alignment as ``jax_fa3.attention`` when the global
  seqlens differ.

  layout: "contiguous" (device i holds the i-th 1/n of the sequence) or
    "zigzag" (device i holds chunks i and 2n-1-i of 2n; balances causal work;
    see ``jax_fa3.parallel.zigzag``). The output is in the same layout.

  sm_margin: FA3's ``sm_margin`` for each forward kernel (see
    ``jax_fa3.attention``); None = ``RING_SM_MARGIN``. > 0 gives the
    collective-permutes that run beside the kernel SMs as its tiles finish;
    0 (a persistent kernel on every SM) leaves them none until it ends.

  Returns the local output shard, or (out, lse) with ``return_lse`` (lse:
  float32 (*batch, heads, local_seqlen_q), no gradient).
  """
  _validate.check_qkv(q, k, v)
  causal = _validate.check_bool("causal", causal)
  return_lse = _validate.check_bool("return_lse", return_lse)
  deterministic = _validate.check_bool("deterministic", deterministic)
  if layout not in zigzag.LAYOUTS:
    raise ValueError(f"layout must be one of {zigzag.LAYOUTS}, got {layout!r}")
  cfg = primitives.AttnConfig.from_args(q.shape[-1], softmax_scale=softmax_scale, causal=causal,
                                        window_size=window_size, softcap=softcap,
                                        deterministic=deterministic,
                                        sm_margin=RING_SM_MARGIN if sm_margin is None else sm_margin)
  out, lse = _ring(q, k, v, cfg, axis_name, layout)
  if return_lse:
    return out, jax.lax.stop_gradient(lse)
  return out
