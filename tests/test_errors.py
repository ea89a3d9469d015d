"""Bad input raises before lowering with a message naming the argument; the
C++ handler validates again and returns an ffi::Error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fa3
from jax_fa3 import primitives
from conftest import make_qkv, randn


@pytest.fixture
def qkv(rng):
  return make_qkv(rng, 1, 8, 8, 4, 2, 64, jnp.bfloat16)


def test_rank(qkv, rng):
  q, k, v = qkv
  with pytest.raises(ValueError, match=r"q must have shape \(batch, seqlen, heads, head_dim\)"):
    jax_fa3.attention(q[0], k, v)


def test_dtype_int(qkv):
  q, k, v = qkv
  with pytest.raises(TypeError, match="q must be float16 or bfloat16"):
    jax_fa3.attention(q.astype(jnp.int32), k, v)


def test_dtype_mismatch(qkv):
  q, k, v = qkv
  with pytest.raises(TypeError, match="q, k and v must share a dtype"):
    jax_fa3.attention(q, k.astype(jnp.float16), v)


def test_kv_shape_mismatch(qkv):
  q, k, v = qkv
  with pytest.raises(ValueError, match="k and v must have the same shape"):
    jax_fa3.attention(q, k, v[:, :4])


def test_batch_mismatch(qkv, rng):
  q, k, v = qkv
  k2 = randn(rng, (2,) + k.shape[1:], k.dtype)
  with pytest.raises(ValueError, match="same batch dims"):
    jax_fa3.attention(q, k2, k2)


def test_head_dim_mismatch(rng):
  q = randn(rng, (1, 8, 2, 64), jnp.bfloat16)
  k = randn(rng, (1, 8, 2, 32), jnp.bfloat16)
  with pytest.raises(ValueError, match=r"k head_dim \(32\) must equal q head_dim \(64\)"):
    jax_fa3.attention(q, k, k)


@pytest.mark.parametrize("d", [12, 264])
def test_head_dim_unsupported(rng, d):
  q = randn(rng, (1, 8, 2, d), jnp.bfloat16)
  with pytest.raises(ValueError, match="head_dim must be a multiple of 8"):
    jax_fa3.attention(q, q, q)


def test_heads_not_multiple(rng):
  q = randn(rng, (1, 8, 6, 64), jnp.bfloat16)
  k = randn(rng, (1, 8, 4, 64), jnp.bfloat16)
  with pytest.raises(ValueError, match=r"q heads \(6\) must be a multiple of k/v heads \(4\)"):
    jax_fa3.attention(q, k, k)


def test_zero_length(rng):
  q = randn(rng, (1, 0, 2, 64), jnp.bfloat16)
  k = randn(rng, (1, 8, 2, 64), jnp.bfloat16)
  with pytest.raises(ValueError, match="q must not have a zero-sized dim"):
    jax_fa3.attention(q, k, k)


@pytest.mark.parametrize("ws", [(-2, 0), (3,), "ab"])
def test_window_size(qkv, ws):
  with pytest.raises(ValueError, match="window_size"):
    jax_fa3.attention(*qkv, window_size=ws)


@pytest.mark.parametrize("cap,exc", [(-1.0, ValueError), (float("nan"), ValueError),
                                     ("x", TypeError)])
def test_softcap(qkv, cap, exc):
  with pytest.raises(exc, match="softcap"):
    jax_fa3.attention(*qkv, softcap=cap)


@pytest.mark.parametrize("scale,exc", [(0.0, ValueError), (-1.0, ValueError),
                                       (float("inf"), ValueError)])
def test_softmax_scale(qkv, scale, exc):
  with pytest.raises(exc, match="softmax_scale"):
    jax_fa3.attention(*qkv, softmax_scale=scale)


def test_softmax_scale_traced(qkv):
  with pytest.raises(TypeError, match="softmax_scale must be a static Python float"):
    jax.jit(lambda s: jax_fa3.attention(*qkv, softmax_scale=s))(0.5)


def test_causal_not_bool(qkv):
  with pytest.raises(TypeError, match="causal must be a Python bool"):
    jax_fa3.attention(*qkv, causal=1)


@pytest.mark.parametrize("bad,err", [(-1, ValueError), (1024, ValueError), (2.0, TypeError),
                                     (True, TypeError)])
def test_sm_margin_invalid(qkv, bad, err):
  with pytest.raises(err, match="sm_margin must be"):
    jax_fa3.attention(*qkv, sm_margin=bad)


def test_not_an_array():
  with pytest.raises(TypeError, match="q must be an array"):
    jax_fa3.attention([[1.0]], None, None)


# --- the C++ handler's own checks (Python layer bypassed) -------------------

def _cfg(**kw):
  base = dict(softmax_scale=0.125, causal=False, window_left=-1, window_right=-1,
              softcap=0.0)
  base.update(kw)
  return primitives.AttnConfig(**base)


def test_handler_rejects_bad_head_dim(rng):
  q = randn(rng, (1, 8, 2, 12), jnp.bfloat16)
  with pytest.raises(Exception, match="head_dim must be a multiple of 8"):
    jax.block_until_ready(primitives.fwd_call(q, q, q, _cfg()))


def test_handler_rejects_heads(rng):
  q = randn(rng, (1, 8, 6, 64), jnp.bfloat16)
  k = randn(rng, (1, 8, 4, 64), jnp.bfloat16)
  with pytest.raises(Exception, match=r"heads of q \(6\) must be a positive multiple"):
    jax.block_until_ready(primitives.fwd_call(q, k, k, _cfg()))


def test_handler_rejects_softcap(rng):
  q = randn(rng, (1, 8, 2, 64), jnp.bfloat16)
  with pytest.raises(Exception, match="softcap must be finite and >= 0"):
    jax.block_until_ready(primitives.fwd_call(q, q, q, _cfg(softcap=-2.0)))


def test_handler_rejects_sm_margin(rng):
  q = randn(rng, (1, 8, 2, 64), jnp.bfloat16)
  with pytest.raises(Exception, match="sm_margin must be in"):
    jax.block_until_ready(primitives.fwd_call(q, q, q, _cfg(sm_margin=-3)))


def test_handler_rejects_bad_lse(rng):
  q, k, v = make_qkv(rng, 1, 8, 8, 2, 2, 64, jnp.bfloat16)
  out, lse = primitives.fwd_call(q, k, v, _cfg())
  with pytest.raises(Exception, match="lse must be float32 of shape"):
    jax.block_until_ready(primitives.bwd_call(q, k, v, out, lse[:, :1], out, _cfg()))


def test_cuda_handler_reports_not_built():
  """On a CPU-only build, the CUDA handler's stand-in says so clearly."""
  if jax_fa3.cuda_built():
    pytest.skip("CUDA kernels are built here")
  from jax_fa3 import _ffi  # noqa: PLC0415
  assert "built without its CUDA kernels" in _ffi.cuda_device_check()
