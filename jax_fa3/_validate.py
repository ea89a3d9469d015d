"""Argument checks run at trace time, before lowering.

Each error names the argument and what was expected. The C++ handler checks
again (cc/ffi/fill_params.cc) and returns an ffi::Error, so a bypass of this
layer still cannot crash the process.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

SUPPORTED_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32)
MAX_HEAD_DIM = 256


def check_qkv(q: Any, k: Any, v: Any, *, allow_float64: bool = False) -> None:
  allowed = [np.dtype(d) for d in SUPPORTED_DTYPES] + ([np.dtype(np.float64)] if allow_float64 else [])
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if x.ndim < 4:
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
