"""Device timing of a jitted JAX callable: warm-up, then median of repeated loops.

Method (after /work/.library/device/METHOD.md):

* the callable is run ``warmup`` times first, so compilation, autotuning and
  handle creation stay out of the numbers;
* one *rep* is a loop of ``calls`` back-to-back asynchronous calls followed by a
  single ``jax.block_until_ready`` on the last result, timed with a host clock.
  Calls on one device execute in order, so the last result being ready means
  all are done. ``calls`` is chosen (doubling, as ``timeit.autorange``) so a rep
  lasts at least ``min_rep_ms``: the Python dispatch of one call overlaps the
  device work of the previous ones and launch gaps do not dominate;
* successive calls rotate over several argument sets (different random
  inputs), so no call reads data a previous call left in the L2 cache;
* the result is the median per-call time over ``reps`` reps (min/max kept to
  show the spread).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Sequence

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
  """Per-call times in milliseconds."""
  median_ms: float
  min_ms: float
  max_ms: float
  calls_per_rep: int
  reps: int


def _loop(fn: Callable[..., Any], arg_sets: Sequence[Sequence[Any]],
          calls: int) -> float:
  """Seconds for ``calls`` back-to-back calls, synchronised at the end."""
  n_sets = len(arg_sets)
  out = None
  start = time.perf_counter()
  for i in range(calls):
    out = fn(*arg_sets[i % n_sets])
  jax.block_until_ready(out)
  return time.perf_counter() - start


def time_fn(fn: Callable[..., Any],
            arg_sets: Sequence[Sequence[Any]],
            *,
            warmup: int = 3,
            reps: int = 10,
            min_rep_ms: float = 50.0,
            max_calls: int = 4096) -> Timing:
  """Median per-call device time of ``fn`` over ``arg_sets`` (see module doc).

  Args:
    fn: a jitted callable; ``fn(*arg_sets[i])`` must be valid for every i.
    arg_sets: one or more argument tuples, used round-robin.
    warmup: untimed calls first (at least one per argument set is made).
    reps: timed reps; the median is reported.
    min_rep_ms: each rep lasts at least this long (calls per rep doubles
      until it does, capped at ``max_calls``).
    max_calls: upper bound on calls per rep.
  """
  if not arg_sets:
    raise ValueError("arg_sets is empty")
  # Warm-up: compile + at least one run on each argument set.
  jax.block_until_ready(
      [fn(*arg_sets[i % len(arg_sets)])
       for i in range(max(warmup, len(arg_sets)))])

  # Calibrate the number of calls per rep.
  calls = max(1, len(arg_sets))
  while True:
    elapsed = _loop(fn, arg_sets, calls)
    if elapsed * 1e3 >= min_rep_ms or calls >= max_calls:
      break
    # Jump close to the target directly, at most x8 at a time.
    grow = min(8.0, max(2.0, 1.2 * min_rep_ms / max(elapsed * 1e3, 1e-3)))
    calls = min(max_calls, int(calls * grow) + 1)

  per_call = [_loop(fn, arg_sets, calls) * 1e3 / calls
              for _ in range(max(1, reps))]
  return Timing(
      median_ms=statistics.median(per_call),
      min_ms=min(per_call),
      max_ms=max(per_call),
      calls_per_rep=calls,
      reps=len(per_call),
  )
