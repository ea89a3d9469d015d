"""Sequence layouts for ring attention: which global chunks a device holds.

With a causal mask and the plain ("contiguous") split, device i of n holds
positions [i*S/n, (i+1)*S/n): the last device sees every key block and the
first sees only its own, so the ring runs at the speed of the slowest device
(about 2x the balanced time). The "zigzag" (dual-chunk) layout splits the
sequence into 2n chunks and gives device i chunks i and 2n-1-i: one early,
one late chunk, so every device does the same causal work at every ring step
(the layout of zhuzilin/ring-flash-attention and Brandon et al.'s striped /
Llama-3 context parallelism).

The layout is a pure permutation of the sequence axis: apply
``zigzag_permute`` to q, k, v (and the targets of a loss) before sharding the
sequence axis, run ``ring_attention(..., layout="zigzag")`` and
``zigzag_unpermute`` the output. Everything here is static numpy index
arithmetic; the permutation itself is one gather.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

LAYOUTS = ("contiguous", "zigzag")


def chunks_of(layout: str, device: int, axis_size: int) -> tuple[int, ...]:
  """Global chunk indices held by `device`, in local order.

  Chunk length is (global seqlen) / (axis_size * len(result)).
  """
  if layout == "contiguous":
    return (device,)
  if layout == "zigzag":
    return (device, 2 * axis_size - 1 - device)
  raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def num_chunks(layout: str) -> int:
  return len(chunks_of(layout, 0, 1))


def _zigzag_index(seqlen: int, axis_size: int) -> np.ndarray:
  """perm such that x_zigzag = x[perm] along the sequence axis."""
  n2 = 2 * axis_size
  if seqlen % n2:
    raise ValueError(
        f"zigzag layout needs seqlen divisible by 2 * axis_size = {n2}, got"
        f" seqlen {seqlen}")
  c = seqlen // n2
  order = [g for d in range(axis_size) for g in chunks_of("zigzag", d, axis_size)]
  return np.concatenate([np.arange(g * c, (g + 1) * c) for g in order])


def zigzag_permute(x, axis_size: int, seq_axis: int = 1):
  """Reorder the sequence axis so that a contiguous shard over `axis_size`
  devices gives device i the global chunks (i, 2*axis_size-1-i)."""
  perm = _zigzag_index(x.shape[seq_axis], axis_size)
  return jnp.take(x, jnp.asarray(perm), axis=seq_axis)


def zigzag_unpermute(x, axis_size: int, seq_axis: int = 1):
  """Inverse of ``zigzag_permute``."""
  inv = np.argsort(_zigzag_index(x.shape[seq_axis], axis_size))
  return jnp.take(x, jnp.asarray(inv), axis=seq_axis)
