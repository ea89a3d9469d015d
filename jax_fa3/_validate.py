"""Argument checks run at trace time, before lowering.

Each error names the argument and what was expected. The C++ handler checks
again (cc/ffi/fill_params.cc) and returns an ffi::Error, so a bypass of this
layer still cannot crash the process.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SUPPORTED_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32)
MAX_HEAD_DIM = 256


def check_qkv(q: Any, k: Any, v: Any, *, allow_float64: bool = False,
              packed: bool = False) -> None:
  """Shapes and dtypes of q, k, v: dense (batch..., seqlen, heads, head_dim)
  or, with ``packed``, varlen (total_tokens, heads, head_dim)."""
  allowed = [np.dtype(d) for d in SUPPORTED_DTYPES] + ([np.dtype(np.float64)] if allow_float64 else [])
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if packed and x.ndim != 3:
      raise ValueError(
          f"{name} must have shape (total_tokens, heads, head_dim) (rank 3) for"
          f" varlen attention, got shape {tuple(x.shape)}")
    if not packed and x.ndim < 4:
      raise ValueError(
          f"{name} must have shape (batch, seqlen, heads, head_dim) (rank >= 4),"
          f" got shape {tuple(x.shape)}")
    if x.dtype not in allowed:
      raise TypeError(
          f"{name} must be float16 or bfloat16 (float32 on the CPU backend), got"
          f" {x.dtype}")
  if not (q.dtype == k.dtype == v.dtype):
    raise TypeError(
        f"q, k and v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
  if k.shape != v.shape:
    raise ValueError(
        f"k and v must have the same shape, got k {tuple(k.shape)} and v"
        f" {tuple(v.shape)}")
  if q.ndim != k.ndim or q.shape[:-3] != k.shape[:-3]:
    raise ValueError(
        f"q and k must have the same batch dims, got q {tuple(q.shape)} and k"
        f" {tuple(k.shape)}")
  d = q.shape[-1]
  if k.shape[-1] != d:
    raise ValueError(
        f"k head_dim ({k.shape[-1]}) must equal q head_dim ({d})")
  if d % 8 != 0 or not 8 <= d <= MAX_HEAD_DIM:
    raise ValueError(
        f"head_dim must be a multiple of 8 in [8, {MAX_HEAD_DIM}], got {d}")
  h, hk = q.shape[-2], k.shape[-2]
  if hk == 0 or h % hk != 0:
    raise ValueError(
        f"q heads ({h}) must be a multiple of k/v heads ({hk}) (GQA/MQA)")
  for name, x in (("q", q), ("k", k)):
    if any(s == 0 for s in x.shape):
      raise ValueError(f"{name} must not have a zero-sized dim, got {tuple(x.shape)}")


def resolve_scale(softmax_scale: Any, head_dim: int) -> float:
  if softmax_scale is None:
    return 1.0 / math.sqrt(head_dim)
  try:
    s = float(softmax_scale)
  except (TypeError, ValueError) as e:
    raise TypeError(
        "softmax_scale must be a static Python float or None, got"
        f" {type(softmax_scale).__name__}") from e
  if not math.isfinite(s) or s <= 0:
    raise ValueError(f"softmax_scale must be finite and > 0, got {s}")
  return s


def resolve_window(window_size: Any) -> tuple[int, int]:
  try:
    left, right = window_size
    left, right = int(left), int(right)
  except (TypeError, ValueError) as e:
    raise ValueError(
        "window_size must be a pair of ints (left, right), -1 for unbounded,"
        f" got {window_size!r}") from e
  if left < -1 or right < -1:
    raise ValueError(
        f"window_size entries must be >= -1 (-1 = unbounded), got {window_size!r}")
  if max(left, right) >= 2**31:
    raise ValueError(f"window_size entries must fit in int32, got {window_size!r}")
  return left, right


def resolve_softcap(softcap: Any) -> float:
  try:
    c = float(softcap)
  except (TypeError, ValueError) as e:
    raise TypeError(
        f"softcap must be a static Python float, got {type(softcap).__name__}") from e
  if not math.isfinite(c) or c < 0:
    raise ValueError(f"softcap must be finite and >= 0 (0 = off), got {c}")
  return c


def check_bool(name: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a Python bool, got {type(value).__name__}")
  return bool(value)


def check_sm_margin(value: Any) -> int:
  """sm_margin: an int in [0, 1024) (FA3's; > 0: the forward shares the GPU)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"sm_margin must be an int, got {type(value).__name__}")
  if not 0 <= int(value) < 1024:
    raise ValueError(f"sm_margin must be in [0, 1024), got {int(value)}")
  return int(value)


# ------------------------------------------------------------------ varlen ----
# Shapes, dtypes and static ints are checked here, before lowering. The
# VALUES of cu_seqlens / seqused cannot be checked under jit (they are
# tracers); when they are concrete (eager calls) check_varlen_values does it
# here, otherwise the CPU handler does (cc/common/varlen.h) and raises an
# XLA runtime error naming the offending entry. The CUDA handler cannot read
# device memory per call, so on GPU only the eager check applies.


def is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_int32_vector(name: str, x: Any, length: int | None = None) -> None:
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"{name} must be an int32 array, got {type(x).__name__}")
  if x.dtype != np.int32:
    raise TypeError(f"{name} must be int32, got {x.dtype}")
  if x.ndim != 1 or (length is not None and x.shape[0] != length):
    want = "(num_seqs + 1,)" if length is None else f"({length},)"
    raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


def check_cu_seqlens(cu_seqlens_q: Any, cu_seqlens_k: Any) -> int:
  """Returns num_seqs."""
  check_int32_vector("cu_seqlens_q", cu_seqlens_q)
  n1 = cu_seqlens_q.shape[0]
  if n1 < 2:
    raise ValueError(
        "cu_seqlens_q must have shape (num_seqs + 1,) with num_seqs >= 1, got"
        f" {tuple(cu_seqlens_q.shape)}")
  try:
    check_int32_vector("cu_seqlens_k", cu_seqlens_k, n1)
  except ValueError as e:
    raise ValueError(f"{e} (cu_seqlens_q and cu_seqlens_k describe the same"
                     " sequences)") from None
  return n1 - 1


def resolve_max_seqlen(name: str, value: Any) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(
        f"{name} must be a static Python int (it sizes the kernel's grid), got"
        f" {type(value).__name__}")
  value = int(value)
  if not 0 <= value < 2**31:
    raise ValueError(f"{name} must be in [0, 2**31), got {value}")
  return value


def check_varlen_values(cu_q: Any, cu_k: Any, used_q: Any, used_k: Any, total_q: int,
                        total_k: int, max_q: int, max_k: int) -> None:
  """The C++ value checks (cc/common/varlen.h), when the offsets are concrete."""
  if not all(x is None or is_concrete(x) for x in (cu_q, cu_k, used_q, used_k)):
    return
  for side, cu, used, total, max_len in (("q", cu_q, used_q, total_q, max_q),
                                         ("k", cu_k, used_k, total_k, max_k)):
    cu = np.asarray(cu, np.int64)
    name = f"cu_seqlens_{side}"
    if cu[0] != 0:
      raise ValueError(f"{name}[0] must be 0, got {cu[0]}")
    bad = np.flatnonzero(np.diff(cu) < 0)
    if bad.size:
      b = int(bad[0])
      raise ValueError(
          f"{name} must be non-decreasing, but {name}[{b + 1}] = {cu[b + 1]} <"
          f" {name}[{b}] = {cu[b]}")
    if cu[-1] > total:
      raise ValueError(
          f"{name}[-1] = {cu[-1]} is past the end of the packed {side}"
          f" (total_{side} = {total} rows)")
    alloc = np.diff(cu)
    lens = alloc
    if used is not None:
      lens = np.asarray(used, np.int64)
      bad = np.flatnonzero((lens < 0) | (lens > alloc))
      if bad.size:
        b = int(bad[0])
        raise ValueError(
            f"seqused_{side}[{b}] = {lens[b]} must be in [0, {alloc[b]}] (the"
            f" length {name} allocates to sequence {b})")
    bad = np.flatnonzero(lens > max_len)
    if bad.size:
      b = int(bad[0])
      raise ValueError(
          f"sequence {b} has {lens[b]} {side} rows, more than max_seqlen_{side} ="
          f" {max_len}")


def check_segment_ids(segment_ids: Any, q: Any, k: Any) -> tuple[Any, Any]:
  """(q_segment_ids, kv_segment_ids) from ``segment_ids`` (one array when
  seqlen_q == seqlen_k, or a pair); shapes (batch..., seqlen_q) and
  (batch..., seqlen_k), int32."""
  if isinstance(segment_ids, (tuple, list)):
    if len(segment_ids) != 2:
      raise ValueError(
          "segment_ids must be one int32 array (batch..., seqlen) or a pair"
          f" (q_segment_ids, kv_segment_ids), got a sequence of {len(segment_ids)}")
    q_seg, kv_seg = segment_ids
    names = ("q_segment_ids", "kv_segment_ids")
  else:
    if q.shape[-3] != k.shape[-3]:
      raise ValueError(
          f"a single segment_ids array needs seqlen_q == seqlen_k (got {q.shape[-3]}"
          f" and {k.shape[-3]}); pass a pair (q_segment_ids, kv_segment_ids)")
    q_seg = kv_seg = segment_ids
    names = ("segment_ids", "segment_ids")
  for name, x, like, what in ((names[0], q_seg, q, "q"), (names[1], kv_seg, k, "k")):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      raise TypeError(f"{name} must be an int32 array, got {type(x).__name__}")
    if x.dtype != np.int32:
      raise TypeError(f"{name} must be int32, got {x.dtype}")
    want = tuple(like.shape[:-2])
    if tuple(x.shape) != want:
      raise ValueError(
          f"{name} must have shape (batch..., seqlen) = {want} to match {what}"
          f" {tuple(like.shape)}, got {tuple(x.shape)}")
  return q_seg, kv_seg
