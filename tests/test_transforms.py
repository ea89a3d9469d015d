"""jit / grad / vmap / checkpoint compose with jax_fa3.attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jax_fa3
from conftest import assert_fa3_close, grad_references, make_qkv, randn, references


def test_jit_matches_eager(rng):
  q, k, v = make_qkv(rng, 2, 33, 33, 2, 2, 64, jnp.bfloat16)
  eager = jax_fa3.attention(q, k, v, causal=True)
  jitted = jax.jit(lambda a, b, c: jax_fa3.attention(a, b, c, causal=True))(q, k, v)
  np.testing.assert_array_equal(np.asarray(eager, np.float32), np.asarray(jitted, np.float32))


def test_vmap_folds_into_batch(rng):
  # (vmap=3, batch=2, seqlen, heads, d): vmap over the leading axis.
  q = randn(rng, (3, 2, 37, 4, 64), jnp.bfloat16)
  k = randn(rng, (3, 2, 29, 2, 64), jnp.bfloat16)
  v = randn(rng, (3, 2, 29, 2, 64), jnp.bfloat16)
  f = jax.jit(jax.vmap(lambda a, b, c: jax_fa3.attention(a, b, c, causal=True)))
  out = f(q, k, v)
  ref, naive = references(q, k, v, causal=True)
  assert_fa3_close("vmap out", out, ref, naive, jnp.bfloat16)


def test_vmap_with_unbatched_kv(rng):
  q = randn(rng, (3, 1, 21, 2, 64), jnp.bfloat16)
  k = randn(rng, (1, 25, 2, 64), jnp.bfloat16)
  v = randn(rng, (1, 25, 2, 64), jnp.bfloat16)
  out = jax.vmap(lambda a: jax_fa3.attention(a, k, v))(q)
  kb, vb = (jnp.broadcast_to(x, (3,) + x.shape) for x in (k, v))
  ref, naive = references(q, kb, vb)
  assert_fa3_close("vmap out", out, ref, naive, jnp.bfloat16)


def test_grad_of_vmap(rng):
  q = randn(rng, (2, 1, 19, 2, 64), jnp.bfloat16)
  k = randn(rng, (2, 1, 23, 1, 64), jnp.bfloat16)
  v = randn(rng, (2, 1, 23, 1, 64), jnp.bfloat16)
  dout = randn(rng, q.shape, jnp.bfloat16)
  fn = jax.vmap(lambda a, b, c: jax_fa3.attention(a, b, c, causal=True))
  _, vjp = jax.vjp(fn, q, k, v)
  got = jax.jit(vjp)(dout)
  ref, naive = grad_references(q, k, v, dout, causal=True)
  for name, g, r, n in zip(("dq", "dk", "dv"), got, ref, naive):
    assert_fa3_close(name, g, r, n, jnp.bfloat16)


def test_checkpoint_and_grad_of_loss(rng):
  q, k, v = make_qkv(rng, 2, 40, 40, 4, 2, 64, jnp.bfloat16)
  w = randn(rng, (64,), jnp.float32)

  def loss(fn, a, b, c):
    return jnp.sum(fn(a, b, c).astype(jnp.float32) @ w)

  ours = jax.jit(jax.grad(
      lambda a, b, c: loss(jax.checkpoint(lambda x, y, z: jax_fa3.attention(x, y, z, causal=True)), a, b, c),
      argnums=(0, 1, 2)))(q, k, v)
  dout = jnp.broadcast_to(w, q.shape).astype(jnp.bfloat16)
  ref, naive = grad_references(q, k, v, dout, causal=True)
  for name, g, r, n in zip(("dq", "dk", "dv"), ours, ref, naive):
    assert_fa3_close(name, g, r, n, jnp.bfloat16)


def test_return_lse_has_no_gradient(rng):
  q, k, v = make_qkv(rng, 1, 16, 16, 2, 2, 64, jnp.float32)
  g = jax.grad(lambda a: jnp.sum(jax_fa3.attention(a, k, v, return_lse=True)[1]))(q)
  assert float(jnp.max(jnp.abs(g))) == 0.0
