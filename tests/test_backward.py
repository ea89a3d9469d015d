"""Gradients (dq, dk, dv) of the CPU backend through the FFI path vs float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jax_fa3
from conftest import assert_fa3_close, grad_references, make_qkv, randn

HEAD_DIMS = [64, 96, 128, 192, 256]


def check_grads(rng, q, k, v, dtype, **kw):
  dout = randn(rng, q.shape, dtype)

  @jax.jit
  def grads(a, b, c, g):
    _, f = jax.vjp(lambda x, y, z: jax_fa3.attention(x, y, z, **kw), a, b, c)
    return f(g)

  got = grads(q, k, v, dout)
  ref, naive = grad_references(q, k, v, dout, **kw)
  for name, g, r, n, x in zip(("dq", "dk", "dv"), got, ref, naive, (q, k, v)):
    assert g.shape == x.shape and g.dtype == x.dtype
    assert_fa3_close(name, g, r, n, dtype)


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("mask", [dict(), dict(causal=True), dict(window_size=(16, 8)),
                                  dict(causal=True, window_size=(32, -1))],
                         ids=["full", "causal", "window", "causal_window"])
@pytest.mark.parametrize("softcap", [0.0, 20.0])
def test_head_dims_masks_softcap(rng, d, mask, softcap):
  q, k, v = make_qkv(rng, 2, 71, 103, 4, 2, d, jnp.bfloat16)
  check_grads(rng, q, k, v, jnp.bfloat16, softcap=softcap, **mask)


@pytest.mark.parametrize("sq,sk", [(1, 1), (1, 17), (17, 1), (113, 17), (17, 113),
                                   (300, 300)])
@pytest.mark.parametrize("causal", [False, True])
def test_lengths(rng, sq, sk, causal):
  q, k, v = make_qkv(rng, 1, sq, sk, 2, 2, 64, jnp.bfloat16)
  check_grads(rng, q, k, v, jnp.bfloat16, causal=causal)


@pytest.mark.parametrize("h,hk", [(8, 8), (8, 4), (16, 2), (8, 1)],
                         ids=["mha", "gqa2", "gqa8", "mqa"])
def test_gqa(rng, h, hk):
  q, k, v = make_qkv(rng, 1, 49, 81, h, hk, 64, jnp.bfloat16)
  check_grads(rng, q, k, v, jnp.bfloat16, causal=True)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_dtypes(rng, dtype):
  q, k, v = make_qkv(rng, 2, 45, 45, 2, 2, 64, dtype)
  check_grads(rng, q, k, v, dtype, causal=True, softcap=10.0)


def test_deterministic_flag_bitwise(rng):
  q, k, v = make_qkv(rng, 1, 100, 100, 4, 2, 64, jnp.bfloat16)
  f = jax.jit(jax.grad(lambda a, b, c: jnp.sum(
      jax_fa3.attention(a, b, c, causal=True, deterministic=True).astype(jnp.float32) ** 2),
      argnums=(0, 1, 2)))
  g1 = f(q, k, v)
  g2 = f(q, k, v)
  for a, b in zip(g1, g2):
    assert bool(jnp.all(a == b))
