"""Forward (out, lse) of the CPU backend through the FFI path vs float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fa3
from conftest import assert_fa3_close, f64, make_qkv, max_err, references

HEAD_DIMS = [64, 96, 128, 192, 256]
MASKS = [
    dict(),
    dict(causal=True),
    dict(window_size=(16, 8)),
    dict(causal=True, window_size=(32, -1)),
]


def run_fwd(q, k, v, **kw):
  return jax.jit(lambda a, b, c: jax_fa3.attention(a, b, c, return_lse=True, **kw))(q, k, v)


def check_fwd(q, k, v, dtype, **kw):
  out, lse = run_fwd(q, k, v, **kw)
  assert out.shape == q.shape and out.dtype == q.dtype
  ref, naive = references(q, k, v, **kw)
  assert_fa3_close("out", out, ref, naive, dtype)
  _, lse_ref = jax_fa3.reference.attention(
      *(x.astype(jnp.float64) for x in (q, k, v)), return_lse=True, **kw)
  assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == jnp.float32
  # LSE is accumulated in fp32 from inputs rounded to `dtype`: compare to the
  # float64 LSE of the same rounded inputs, with an fp32-sized tolerance.
  lse_np, ref_np = f64(lse), f64(lse_ref)
  assert np.array_equal(np.isneginf(lse_np), np.isneginf(ref_np)), "empty rows differ"
  assert max_err(lse, lse_ref) <= 1e-4 * max(1.0, float(np.max(np.abs(ref_np[np.isfinite(ref_np)]), initial=1.0)))


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("mask", MASKS, ids=["full", "causal", "window", "causal_window"])
@pytest.mark.parametrize("softcap", [0.0, 20.0])
def test_head_dims_masks_softcap(rng, d, mask, softcap):
  q, k, v = make_qkv(rng, 2, 113, 173, 4, 2, d, jnp.bfloat16)
  check_fwd(q, k, v, jnp.bfloat16, softcap=softcap, **mask)


@pytest.mark.parametrize("sq,sk", [(1, 1), (1, 17), (17, 1), (17, 113), (113, 17),
                                   (1000, 1000), (1000, 333)])
@pytest.mark.parametrize("causal", [False, True])
def test_lengths(rng, sq, sk, causal):
  q, k, v = make_qkv(rng, 1, sq, sk, 2, 2, 64, jnp.bfloat16)
  check_fwd(q, k, v, jnp.bfloat16, causal=causal)


@pytest.mark.parametrize("h,hk", [(8, 8), (8, 4), (16, 2), (8, 1)],
                         ids=["mha", "gqa2", "gqa8", "mqa"])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa(rng, h, hk, causal):
  q, k, v = make_qkv(rng, 2, 65, 97, h, hk, 128, jnp.bfloat16)
  check_fwd(q, k, v, jnp.bfloat16, causal=causal)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_dtypes(rng, dtype):
  q, k, v = make_qkv(rng, 2, 77, 77, 4, 4, 64, dtype)
  check_fwd(q, k, v, dtype, causal=True, softcap=10.0)


def test_softmax_scale(rng):
  q, k, v = make_qkv(rng, 1, 50, 60, 2, 1, 32, jnp.bfloat16)
  check_fwd(q, k, v, jnp.bfloat16, softmax_scale=0.37)


def test_empty_rows_give_zero_and_neg_inf_lse(rng):
  # window (0, 0) with sq > sk: the first sq - sk rows see no key at all.
  q, k, v = make_qkv(rng, 1, 40, 16, 2, 2, 64, jnp.bfloat16)
  out, lse = run_fwd(q, k, v, causal=True)
  empty = 40 - 16
  assert np.all(f64(out)[:, :empty] == 0.0)
  assert np.all(np.isneginf(f64(lse)[:, :, :empty]))
  assert np.all(np.isfinite(f64(lse)[:, :, empty:]))
  check_fwd(q, k, v, jnp.bfloat16, causal=True)


def test_not_a_copy_of_reference(rng):
  """Guards the tests themselves: a wrong mask must fail the comparison."""
  q, k, v = make_qkv(rng, 1, 64, 64, 2, 2, 64, jnp.bfloat16)
  out = jax_fa3.attention(q, k, v, causal=True)
  ref, naive = references(q, k, v, causal=False)
  with pytest.raises(AssertionError):
    assert_fa3_close("out", out, ref, naive, jnp.bfloat16)
