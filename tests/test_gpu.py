"""Hopper kernels vs float64 and vs the CPU backend. Marked `gpu`: skipped
unless a Hopper GPU and the CUDA build are present (see conftest)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fa3
from conftest import assert_fa3_close, f64, make_qkv, max_err, references

pytestmark = pytest.mark.gpu

HEAD_DIMS = [64, 96, 128, 192, 256]


def _gpu(x):
  return jax.device_put(x, jax.devices("gpu")[0])


def _cpu(x):
  return jax.device_put(x, jax.devices("cpu")[0])


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("mask", [dict(), dict(causal=True), dict(window_size=(64, 32)),
                                  dict(causal=True, window_size=(100, -1))],
                         ids=["full", "causal", "window", "causal_window"])
@pytest.mark.parametrize("softcap", [0.0, 30.0])
@pytest.mark.parametrize("h,hk", [(4, 4), (8, 2)], ids=["mha", "gqa4"])
def test_forward_sweep(rng, d, dtype, mask, softcap, h, hk):
  # Odd lengths, sq != sk; the CUDA harness (tests/cuda) runs the larger
  # poisoned-output sweep, this checks the FFI path end to end.
  q, k, v = make_qkv(rng, 1, 333, 257, h, hk, d, dtype)
  out, lse = jax.jit(lambda a, b, c: jax_fa3.attention(
      a, b, c, softcap=softcap, return_lse=True, **mask))(*map(_gpu, (q, k, v)))
  ref, naive = references(q, k, v, softcap=softcap, **mask)
  assert_fa3_close("out", _cpu(out), ref, naive, dtype)
  _, lse_ref = jax_fa3.reference.attention(*(x.astype(jnp.float64) for x in (q, k, v)),
                                           softcap=softcap, return_lse=True, **mask)
  assert max_err(_cpu(lse), lse_ref) < 1e-3


@pytest.mark.parametrize("sq,sk", [(1, 1), (1, 300), (17, 113), (113, 17), (4000, 129),
                                   (129, 4000)])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_lengths(rng, sq, sk, causal):
  q, k, v = make_qkv(rng, 1, sq, sk, 2, 1, 128, jnp.bfloat16)
  out = jax.jit(lambda a, b, c: jax_fa3.attention(a, b, c, causal=causal))(
      *map(_gpu, (q, k, v)))
  ref, naive = references(q, k, v, causal=causal)
  assert_fa3_close("out", _cpu(out), ref, naive, jnp.bfloat16)


@pytest.mark.parametrize("sq,sk", [(300, 8200), (129, 16384)])
@pytest.mark.parametrize("softcap", [0.0, 30.0])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_forward_wide_key_block(rng, monkeypatch, sq, sk, softcap, dtype):
  # d=128 without a mask and seqlen_k >= 8k takes the 176-wide key block
  # (cc/hopper/launch_fwd.h): its last block is partial at both lengths.
  monkeypatch.delenv("JAX_FA3_FWD_WIDE", raising=False)
  q, k, v = make_qkv(rng, 1, sq, sk, 4, 2, 128, dtype)
  out, lse = jax.jit(lambda a, b, c: jax_fa3.attention(a, b, c, softcap=softcap,
                                                       return_lse=True))(*map(_gpu, (q, k, v)))
  ref, naive = references(q, k, v, softcap=softcap)
  assert_fa3_close("out", _cpu(out), ref, naive, dtype)
  _, lse_ref = jax_fa3.reference.attention(*(x.astype(jnp.float64) for x in (q, k, v)),
                                           softcap=softcap, return_lse=True)
  assert max_err(_cpu(lse), lse_ref) < 1e-3


@pytest.mark.parametrize("sq,sk", [(1, 1), (17, 113), (333, 257), (1000, 999), (64, 176),
                                   (200, 353)])
@pytest.mark.parametrize("h,hk", [(4, 4), (8, 2)], ids=["mha", "gqa4"])
def test_forward_wide_key_block_forced(rng, monkeypatch, sq, sk, h, hk):
  # JAX_FA3_FWD_WIDE=1 puts every unmasked d=128 call on the wide block:
  # one block, exact multiples of 176 and partial last blocks.
  monkeypatch.setenv("JAX_FA3_FWD_WIDE", "1")
  q, k, v = make_qkv(rng, 2, sq, sk, h, hk, 128, jnp.bfloat16)
  out = jax.jit(lambda a, b, c: jax_fa3.attention(a, b, c))(*map(_gpu, (q, k, v)))
  ref, naive = references(q, k, v)
  assert_fa3_close("out", _cpu(out), ref, naive, jnp.bfloat16)


def test_cpu_and_cuda_backends_agree(rng):
  q, k, v = make_qkv(rng, 2, 511, 511, 8, 2, 128, jnp.bfloat16)
  f = jax.jit(lambda a, b, c: jax_fa3.attention(a, b, c, causal=True))
  g = f(*map(_gpu, (q, k, v)))
  c = f(*map(_cpu, (q, k, v)))
  ref, naive = references(q, k, v, causal=True)
  e_gpu, base = assert_fa3_close("cuda out", _cpu(g), ref, naive, jnp.bfloat16)
  e_cpu, _ = assert_fa3_close("cpu out", c, ref, naive, jnp.bfloat16)
  # Element-wise they may round to different bf16 neighbours (seen: 0.0156
  # apart where |x| < 1 on the H200), but overall they must agree to bf16
  # rounding: a bias in either backend would show here.
  eps = float(jnp.finfo(jnp.bfloat16).eps)
  rel = np.linalg.norm(f64(_cpu(g)) - f64(c)) / np.linalg.norm(f64(ref))
  assert rel <= eps, (rel, e_gpu, e_cpu, base)


def test_grad_through_jit_on_gpu(rng):
  q, k, v = make_qkv(rng, 1, 257, 257, 4, 2, 64, jnp.bfloat16)
  loss = lambda a, b, c: jnp.sum(jax_fa3.attention(a, b, c, causal=True).astype(jnp.float32) ** 2)
  g = jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*map(_gpu, (q, k, v))))
  assert all(np.isfinite(f64(_cpu(x))).all() for x in g)
  # Same loss and gradient on the CPU backend (the CI oracle).
  g_cpu = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*map(_cpu, (q, k, v)))
  for a, b in zip(g, g_cpu):
    scale = float(np.abs(f64(b)).max())
    assert float(np.abs(f64(_cpu(a)) - f64(b)).max()) <= 2e-2 * scale


@pytest.mark.parametrize("causal", [False, True])
def test_sm_margin_same_result(rng, causal):
  # A margin changes only which CTA computes a tile, never the math: the
  # output must be bitwise equal to the full-grid run, and correct.
  q, k, v = make_qkv(rng, 2, 2048, 2048, 16, 16, 128, jnp.bfloat16)
  args = tuple(map(_gpu, (q, k, v)))
  outs = [jax.jit(lambda a, b, c, m=m: jax_fa3.attention(a, b, c, causal=causal,
                                                          sm_margin=m))(*args)
          for m in (0, 8, 100)]
  for o in outs[1:]:
    np.testing.assert_array_equal(f64(_cpu(o)), f64(_cpu(outs[0])))
  ref, naive = references(q, k, v, causal=causal)
  assert_fa3_close("out", _cpu(outs[1]), ref, naive, jnp.bfloat16)
