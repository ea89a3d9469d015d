"""Shared test helpers: float64 references, FA3's tolerance rule, fresh
random inputs, and the `gpu` marker's skip logic."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# float64 references need x64; our kernels never see float64 inputs.
jax.config.update("jax_enable_x64", True)

from jax_fa3 import reference  # noqa: E402  (after the x64 switch)


@functools.lru_cache(maxsize=None)
def hopper_available() -> str:
  """'' if the GPU tests can run here, else why not."""
  try:
    gpus = jax.devices("gpu")
  except RuntimeError:
    return "no GPU visible to JAX"
  if not gpus:
    return "no GPU visible to JAX"
  import jax_fa3  # noqa: PLC0415
  if not jax_fa3.cuda_built():
    return "jax_fa3 built without CUDA"
  from jax_fa3 import _ffi  # noqa: PLC0415
  why = _ffi.cuda_device_check()
  return why


def pytest_collection_modifyitems(config, items):
  del config
  why = None
  for item in items:
    if "gpu" in item.keywords:
      if why is None:
        why = hopper_available()
      if why:
        item.add_marker(pytest.mark.skip(reason=f"needs a Hopper GPU: {why}"))


@pytest.fixture
def rng():
  """A fresh generator per test; the seed is printed so a failure can be replayed."""
  seed = int(os.environ.get("JAX_FA3_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
  print(f"seed={seed}")
  return np.random.default_rng(seed)


def randn(rng, shape, dtype):
  """Random normal inputs (never zeros) in `dtype`."""
  return jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dtype)


def make_qkv(rng, b, sq, sk, h, hk, d, dtype):
  return (randn(rng, (b, sq, h, d), dtype), randn(rng, (b, sk, hk, d), dtype),
          randn(rng, (b, sk, hk, d), dtype))


def f64(x):
  return np.asarray(jnp.asarray(x).astype(jnp.float64))


def max_err(a, b, ignore_nan=False):
  a, b = f64(a), f64(b)
  both_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
  with np.errstate(invalid="ignore"):
    d = np.where(both_inf, 0.0, np.abs(a - b))
  if ignore_nan:
    d = d[~np.isnan(d)]
  return float(np.max(d)) if d.size else 0.0


def rounding_atol(ref64, dtype):
  """FA3's atol: twice the error of merely rounding the reference to `dtype`."""
  r = f64(ref64)
  r = np.where(np.isfinite(r), r, 0.0)
  rd = f64(jnp.asarray(r).astype(dtype).astype(jnp.float64) + 0.3 - 0.3)
  # The floor covers fp32 noise where the exact result is 0 (dk with a single
  # key: dP - dPsum cancels exactly in float64, ~1e-6 in fp32 at d=256).
  return 2.0 * float(np.max(np.abs(rd - r))) + 2e-5


def assert_fa3_close(name, got, ref64, naive, dtype, atol=None):
  """FA3's rule: |got - ref64| <= 2 |naive - ref64| + atol (max norm)."""
  got_np = f64(got)
  assert not np.isnan(got_np).any(), f"{name}: NaN in output"
  e = max_err(got, ref64)
  # The naive in-precision reference can be NaN where ours must not be: on
  # the GPU, XLA's bf16 softmax gradient of a row that sees no key (seen:
  # window + softcap, tests/test_gpu_varlen.py). Such entries give no
  # baseline; leaving them out only makes the bound stricter.
  base = max_err(naive, ref64, ignore_nan=True)
  atol = rounding_atol(ref64, dtype) if atol is None else atol
  assert e <= 2.0 * base + atol, (
      f"{name}: max error {e:.3e} > 2 * naive {base:.3e} + atol {atol:.3e}")
  return e, base


def references(q, k, v, **kw):
  """(float64 reference, naive in-precision reference) outputs."""
  ref = reference.attention(*(x.astype(jnp.float64) for x in (q, k, v)), **kw)
  naive = reference.attention(q, k, v, upcast=False, **kw)
  return ref, naive


def grad_references(q, k, v, dout, **kw):
  """Gradients (dq, dk, dv) of <out, dout> for the float64 and naive refs."""
  def vjp(fn, args, ct):
    _, f = jax.vjp(fn, *args)
    return f(ct)

  up = tuple(x.astype(jnp.float64) for x in (q, k, v))
  ref = vjp(lambda a, b, c: reference.attention(a, b, c, **kw), up,
            dout.astype(jnp.float64))
  naive = vjp(lambda a, b, c: reference.attention(a, b, c, upcast=False, **kw),
              (q, k, v), dout)
  return ref, naive
