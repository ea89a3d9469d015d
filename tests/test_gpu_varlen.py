"""Varlen (cu_seqlens / seqused) and segment_ids on the Hopper kernels,
through the FFI path: against float64 references run on each sequence alone
(FA3's tolerance rule, tests/test_varlen.py's helpers), bitwise against the
dense kernel per sequence, deterministic gradients, and bad offsets. The
CUDA harnesses (tests/cuda/*_varlen_harness.cu) run the larger poisoned
sweep; this checks the path from jax_fa3.attention_varlen down."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fa3
from conftest import f64, randn
from test_varlen import (LENS_K, LENS_Q, MASK_IDS, MASKS, check_equals_dense_per_sequence,
                         check_forward, check_grads, check_segments, check_seqused,
                         make_packed)

pytestmark = pytest.mark.gpu

# Several tiles per sequence (128-row q tiles, 64..176-column k tiles), ends
# not on a tile boundary, an empty q side and a key-less sequence.
LONG_Q = [300, 0, 1, 1000, 129, 64]
LONG_K = [257, 5, 1, 1000, 0, 700]


@pytest.fixture(autouse=True)
def _on_gpu():
  with jax.default_device(jax.devices("gpu")[0]):
    yield


# Pairwise cover of head dim x mask x (MHA, GQA 4): every head dim with
# two masks, every mask with at least two head dims and both head layouts.
# (The full product, 40 tests of 15-30 s each, ran past the device call's
# limit; the CUDA harness runs the full product on the kernels.)
_MASK = dict(zip(MASK_IDS, MASKS))
SWEEP = [(64, "full", 1), (64, "causal_window_softcap", 4), (96, "causal", 4),
         (96, "window_softcap", 1), (128, "full", 4), (128, "causal", 1),
         (192, "window_softcap", 4), (192, "causal_window_softcap", 1),
         (256, "causal", 4), (256, "full", 1), (128, "window_softcap", 4)]


@pytest.mark.parametrize("d,mask,group", SWEEP,
                         ids=[f"{m}-{'gqa4' if g > 1 else 'mha'}-{d}" for d, m, g in SWEEP])
def test_forward_backward_sweep(rng, d, mask, group):
  kw = _MASK[mask]
  h, hk = 8 if group > 1 else 4, 2 if group > 1 else 4
  for lens_q, lens_k in ((LENS_Q, LENS_K), (LONG_Q, LONG_K)):
    q, k, v, cu_q, cu_k = make_packed(rng, lens_q, lens_k, h, hk, d, jnp.bfloat16)
    out, lse = check_forward(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), jnp.bfloat16, **kw)
    # Rows after the last sequence (make_packed pads 3): 0 and -inf.
    end = int(cu_q[-1])
    assert np.all(f64(out)[end:] == 0) and np.all(np.isneginf(f64(lse)[:, end:]))
    check_grads(rng, q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), jnp.bfloat16, **kw)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_fp16_and_mqa(rng, dtype):
  q, k, v, cu_q, cu_k = make_packed(rng, LONG_Q, LONG_K, 8, 1, 128, dtype)
  kw = dict(causal=True, softcap=10.0)
  check_forward(q, k, v, cu_q, cu_k, 1000, 1000, dtype, **kw)
  check_grads(rng, q, k, v, cu_q, cu_k, 1000, 1000, dtype, **kw)


def test_equals_dense_kernel_per_sequence(rng):
  """The same tile code at per-sequence offsets: each sequence's rows are
  bitwise the dense kernel's on that sequence alone."""
  q, k, v, cu_q, cu_k = make_packed(rng, LONG_Q, LONG_K, 4, 2, 128, jnp.bfloat16)
  check_equals_dense_per_sequence(q, k, v, cu_q, cu_k, LONG_Q, LONG_K, causal=True)


def test_seqused(rng):
  check_seqused(rng, [100, 700, 4, 300], [120, 660, 80, 10],
                np.array([100, 650, 0, 170], np.int32), np.array([30, 660, 80, 0], np.int32))


def test_deterministic_gradients_bitwise(rng):
  q, k, v, cu_q, cu_k = make_packed(rng, LONG_Q, LONG_K, 8, 2, 128, jnp.bfloat16)
  dout = randn(rng, q.shape, jnp.bfloat16)
  f = jax.jit(lambda a, b, c, g: jax.vjp(lambda x, y, z: jax_fa3.attention_varlen(
      x, y, z, cu_q, cu_k, 1000, 1000, causal=True, deterministic=True), a, b, c)[1](g))
  first = [f64(x) for x in f(q, k, v, dout)]
  for _ in range(10):
    for a, b in zip(first, f(q, k, v, dout)):
      np.testing.assert_array_equal(a, f64(b))


def test_segment_ids(rng):
  seg = np.array([[0] * 300 + [1] + [2] * 211, [4] * 512], np.int32)
  q = randn(rng, (2, 512, 8, 128), jnp.bfloat16)
  k, v = (randn(rng, (2, 512, 2, 128), jnp.bfloat16) for _ in range(2))
  check_segments(rng, q, k, v, jnp.bfloat16, segment_ids=jnp.asarray(seg), causal=True)


def test_bad_offsets_eager_raise(rng):
  q, k, v, cu_q, cu_k = make_packed(rng, [40, 9, 77], [40, 9, 70], 4, 2, 128, jnp.bfloat16)
  bad = cu_q.at[2].set(int(cu_q[1]) - 1)  # not monotone
  with pytest.raises(ValueError, match="cu_seqlens_q must be non-decreasing"):
    jax_fa3.attention_varlen(q, k, v, bad, cu_k, 77, 70)
  with pytest.raises(ValueError, match="past the end"):
    jax_fa3.attention_varlen(q, k, v, cu_q.at[3].set(q.shape[0] + 1), cu_k, 77, 70)


# Invalid offsets under jit (the host never sees the values): every output
# element NaN, forward and backward. case -> (change to (cu_q, cu_k, used_k),
# max_seqlen_q, max_seqlen_k); the valid call uses (77, 70).
_BAD_JIT = {
    "not_monotone": (lambda cq, ck, u: (cq.at[2].set(cq[1] - 1), ck, u), 77, 70),
    "q_past_end": (lambda cq, ck, u: (cq.at[-1].set(cq[-1] + 500), ck, u), 77, 70),
    "k_first_not_0": (lambda cq, ck, u: (cq, ck.at[0].set(3), u), 77, 70),
    "seqused_over": (lambda cq, ck, u: (cq, ck, u.at[1].set(50)), 77, 70),
    "seqused_negative": (lambda cq, ck, u: (cq, ck, u.at[0].set(-1)), 77, 70),
    "max_seqlen_q_short": (lambda cq, ck, u: (cq, ck, u), 60, 70),
    "max_seqlen_k_short": (lambda cq, ck, u: (cq, ck, u), 77, 69),
    # 603 sequences: the broken entry lies in the check's third block.
    "many_seqs_k_not_monotone": (lambda cq, ck, u: (cq, ck.at[590].set(ck[589] - 1), u), 77, 70),
}


@pytest.mark.parametrize("case", list(_BAD_JIT))
def test_bad_offsets_under_jit_give_nan(rng, case):
  from jax_fa3 import primitives  # pylint: disable=g-import-not-at-top
  # Both dtypes: the NaN pattern must be one in each.
  dtype = jnp.float16 if list(_BAD_JIT).index(case) % 2 else jnp.bfloat16
  lens_q, lens_k = [40, 9, 77], [40, 9, 70]
  if case.startswith("many"):
    lens_q, lens_k = lens_q + [2] * 600, lens_k + [3] * 600
  q, k, v, cu_q, cu_k = make_packed(rng, lens_q, lens_k, 4, 2, 128, dtype)
  used = jnp.asarray(lens_k, jnp.int32)
  dout = jnp.asarray(rng.standard_normal(q.shape), q.dtype)
  change, max_q, max_k = _BAD_JIT[case]
  cfg = primitives.AttnConfig.from_args(128, softmax_scale=None, causal=True, window_size=(-1, -1),
                                        softcap=0.0, deterministic=False)

  def spec(mq, mk):
    return primitives.VarlenSpec(max_seqlen_q=mq, max_seqlen_k=mk, has_seqused_q=False,
                                 has_seqused_k=True)

  def fwd(mq, mk):
    return jax.jit(lambda *a: primitives.varlen_fwd_call(*a, cfg, spec(mq, mk)))

  def bwd(mq, mk):
    return jax.jit(lambda *a: primitives.varlen_bwd_call(*a, cfg, spec(mq, mk)))

  # Valid offsets: no NaN anywhere (the pad rows past cu[-1] get lse -inf),
  # so the NaN below come from the check.
  out, lse = fwd(77, 70)(q, k, v, cu_q, cu_k, None, used)
  grads = bwd(77, 70)(q, k, v, out, lse, dout, cu_q, cu_k, None, used)
  for x in (out, lse) + tuple(grads):
    assert not bool(jnp.isnan(x.astype(jnp.float32)).any())
  # Invalid: the forward's outputs, and the backward's from the valid
  # forward's residuals (its own check, not NaN inputs), are NaN throughout.
  bq, bk, bu = change(cu_q, cu_k, used)
  bad_fwd = fwd(max_q, max_k)(q, k, v, bq, bk, None, bu)
  bad_bwd = bwd(max_q, max_k)(q, k, v, out, lse, dout, bq, bk, None, bu)
  for name, x in zip(("out", "lse", "dq", "dk", "dv"), tuple(bad_fwd) + tuple(bad_bwd)):
    assert bool(jnp.isnan(x.astype(jnp.float32)).all()), f"{case}: {name} not all NaN"
