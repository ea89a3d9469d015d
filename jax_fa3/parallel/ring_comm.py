"""The ring's transfers: what travels when, and how it overlaps compute.

Both ring plans (``ring`` and ``ring_zigzag``) send K/V blocks to the next
device on the ring and, in the backward, the float32 dK/dV accumulators
with them. This module holds the one ring permutation, the schedule of the
backward (own block last, one transfer per step) and the per-step fence
that keeps XLA from hoisting the transfers out of their steps. Measured on
4 H200s (benchmarks/results/ring_ab/s4, s5, s7).
"""

from __future__ import annotations

import os
import warnings

import jax

# XLA_FLAGS entry the ring needs to overlap all of a step's transfers (set
# before jax initialises its backend; benchmarks.ring sets it).
COLLECTIVE_OVERLAP_FLAG = "--xla_gpu_experimental_parallel_collective_overlap_limit=4"


def overlap_flag_missing(platform: str, xla_flags: str) -> bool:
  """Whether a ring on `platform` runs without COLLECTIVE_OVERLAP_FLAG's
  setting in `xla_flags` (any value counts: the user chose one)."""
  return platform == "gpu" and COLLECTIVE_OVERLAP_FLAG.split("=")[0] not in xla_flags


def warn_if_overlap_flag_missing() -> None:
  """A warning (once per call site) when the ring is traced for a GPU while
  XLA_FLAGS lacks the collective overlap limit: it still computes the same
  result, but part of every step's transfer runs exposed."""
  if overlap_flag_missing(jax.default_backend(), os.environ.get("XLA_FLAGS", "")):
    warnings.warn(
        f"jax_fa3 ring attention: XLA_FLAGS has no {COLLECTIVE_OVERLAP_FLAG.split('=')[0]}; "
        "XLA then runs one of each step's K/V transfers synchronously. Set XLA_FLAGS="
        f"{COLLECTIVE_OVERLAP_FLAG} before jax starts to overlap them with compute.",
        stacklevel=3)


def ring_perm(n):
  """ppermute pairs: the block held by device i moves to i + 1, so at step
  s device i holds the block that started on device (i - s) mod n."""
  return [(j, (j + 1) % n) for j in range(n)]


def step_fence(received, computed):
  """Ties the data received during a step to that step's results.

  XLA's scheduler sees the attention custom calls as free, so without this
  it hoisted the whole chain of K/V collective-permutes to the front of the
  program and made them synchronous (HLO of benchmarks.ring on 4 H200s):
  no transfer overlapped a kernel. An optimization barrier over (next
  block, this step's accumulators) means the next block cannot be sent on
  before this step's compute is done, and no later compute starts before
  it arrived: each transfer's only overlap candidate is its step's compute.
  In the backward the accumulators include the dK/dV that arrived during
  the step (``bwd_exchange``).

  4 H200s, 32k tokens per GPU, d128, causal zigzag, with XLA's collective
  overlap limit raised (``COLLECTIVE_OVERLAP_FLAG``): fwd+bwd 125.4 ms
  without the backward's fence, 121.1 ms with it (ring_ab/s7).
  JAX_FA3_RING_FENCE=0 turns it off everywhere (A/B).
  """
  if received is None or os.environ.get("JAX_FA3_RING_FENCE", "1") == "0":
    return received, computed
  return jax.lax.optimization_barrier((received, computed))


def bwd_order(n: int) -> list[int]:
  """The backward's step order: the visiting blocks first (s = 1 .. n-1),
  the device's own block (s = 0) last. Each dK/dV accumulator then comes
  home with the exchange of the last step and is added after its compute;
  with the own block first, its hop home came after the last kernel, with
  nothing left to hide it (1.8 ms of a 121.7 ms fwd+bwd on 4 H200s,
  benchmarks/results/ring_ab/s7). JAX_FA3_RING_BWD_OWN_FIRST=1: the old
  order (A/B)."""
  if os.environ.get("JAX_FA3_RING_BWD_OWN_FIRST", "0") == "1":
    return list(range(n))
  return list(range(1, n)) + [0]


def bwd_schedule(k, v, n: int, axis_name):
  """(block of the first step, [(s, send_kv, own_next)] in ``bwd_order``):
  send_kv says whether the step's exchange sends its block on (the next
  step's block arrives with it), own_next whether the next step is the own
  block (local). The first visiting block is one hop of the own block."""
  order = bwd_order(n)
  first = (k, v) if order[0] == 0 else send_next((k, v), n, axis_name)
  nexts = order[1:] + [None]
  return first, [(s, nxt not in (None, 0), nxt == 0) for s, nxt in zip(order, nexts)]


def bwd_exchange(kv, acc, send_kv: bool, n: int, axis_name):
  """The backward's one transfer at the start of a step: the block for the
  next step (if send_kv) and the float32 dK/dV accumulator of the block this
  device held at the previous step (acc, None at the first step; it follows
  its block: the next device holds that block now). Returns (next block or
  None, incoming accumulator or None); the incoming one is added after this
  step's compute, so the transfer overlaps it."""
  send = (tuple(kv) if send_kv else ()) + (tuple(acc) if acc is not None else ())
  if not send:
    return None, None
  recv = send_next(send, n, axis_name)
  return (recv[:2] if send_kv else None), (recv[-2:] if acc is not None else None)


def finish_dkv(dkv, last_step: int, n: int, axis_name, dtypes):
  """dK/dV of the own block in the output dtypes, after the schedule's last
  step (``bwd_schedule``). If that step was not the own block (s = 0; the
  own-block-first order), the accumulator still makes its n-th hop home,
  cast first (the rounding the cast at home would do; half the bytes)."""
  dkv = tuple(x.astype(t) for x, t in zip(dkv, dtypes))
  return dkv if last_step == 0 else send_next(dkv, n, axis_name)


def send_next(xs: tuple, n: int, axis_name) -> tuple:
  """Sends the arrays xs to the next device on the ring (one ppermute).

  XLA lowers it to one collective-permute per array and by default keeps
  only one collective in flight (xla_gpu_experimental_parallel_collective_
  overlap_limit = 1): the scheduler made the others synchronous on the
  compute stream, which exposed the V transfer of every forward step on 4
  H200s. Raise that limit (``COLLECTIVE_OVERLAP_FLAG``) and every transfer
  overlaps its step (benchmarks/results/ring_ab/s7). Sending the arrays as
  one packed buffer instead needed copies and measured slower."""
  return tuple(jax.lax.ppermute(tuple(xs), axis_name, ring_perm(n)))

