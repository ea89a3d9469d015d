"""Variable-length (packed) attention and segment_ids through the FFI path
(CPU backend) vs float64 references run on each sequence alone, the error
paths for bad offsets, and the lowering for CUDA (tests/test_gpu_varlen.py
runs the Hopper kernels)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fa3
from jax_fa3 import primitives
from jax_fa3 import reference
from conftest import assert_fa3_close, f64, max_err, randn

# Empty sequences on either side, length 1, lengths around and past one
# 64-row block, and one key-less sequence; plus padding rows after the last
# sequence (no sequence attends them).
LENS_Q = [0, 1, 17, 70, 5, 130, 1]
LENS_K = [5, 1, 33, 64, 0, 129, 1]
MASKS = [dict(), dict(causal=True), dict(window_size=(16, 8), softcap=20.0),
         dict(causal=True, window_size=(32, -1), softcap=20.0)]
MASK_IDS = ["full", "causal", "window_softcap", "causal_window_softcap"]


def on_host():
  """Where the references run: the CPU device, also in the GPU tests. On the
  GPU machine XLA's compile of their unrolled per-sequence float64 graphs
  (with vjp) took longer than the tests themselves; on the CPU it is quick.
  Inputs follow (jax.device_put), results are compared as numpy. Without a
  CPU backend (JAX_PLATFORMS=cuda) they stay on the default device."""
  return jax.default_device(_cpu())


def _cpu():
  try:
    return jax.devices("cpu")[0]
  except RuntimeError:
    return jax.devices()[0]


def _host(*xs):
  return [jax.device_put(x, _cpu()) for x in xs]


def cu_of(lens):
  return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def make_packed(rng, lens_q, lens_k, h, hk, d, dtype, pad_q=3, pad_k=2):
  cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
  q = randn(rng, (int(cu_q[-1]) + pad_q, h, d), dtype)
  k = randn(rng, (int(cu_k[-1]) + pad_k, hk, d), dtype)
  v = randn(rng, (int(cu_k[-1]) + pad_k, hk, d), dtype)
  return q, k, v, jnp.asarray(cu_q), jnp.asarray(cu_k)


def run(q, k, v, cu_q, cu_k, mq, mk, **kw):
  return jax.jit(lambda a, b, c, x, y: jax_fa3.attention_varlen(
      a, b, c, x, y, mq, mk, return_lse=True, **kw))(q, k, v, cu_q, cu_k)


def check_forward(q, k, v, cu_q, cu_k, mq, mk, dtype, **kw):
  out, lse = run(q, k, v, cu_q, cu_k, mq, mk, **kw)
  assert out.shape == q.shape and out.dtype == q.dtype
  assert lse.shape == (q.shape[1], q.shape[0]) and lse.dtype == jnp.float32
  with on_host():
    hq, hk, hv = _host(q, k, v)
    up = [x.astype(jnp.float64) for x in (hq, hk, hv)]
    ref, lse_ref = reference.attention_varlen(*up, cu_q, cu_k, mq, mk, return_lse=True, **kw)
    naive = reference.attention_varlen(hq, hk, hv, cu_q, cu_k, mq, mk, upcast=False, **kw)
  assert_fa3_close("out", out, ref, naive, dtype)
  lse_np, ref_np = f64(lse), f64(lse_ref)
  assert np.array_equal(np.isneginf(lse_np), np.isneginf(ref_np)), "empty rows differ"
  scale = max(1.0, float(np.max(np.abs(ref_np[np.isfinite(ref_np)]), initial=1.0)))
  assert max_err(lse, lse_ref) <= 1e-4 * scale
  return out, lse


def varlen_grads(q, k, v, cu_q, cu_k, mq, mk, dout, fn=jax_fa3.attention_varlen, **kw):
  _, f = jax.vjp(lambda a, b, c: fn(a, b, c, cu_q, cu_k, mq, mk, **kw), q, k, v)
  return f(dout)


def check_grads(rng, q, k, v, cu_q, cu_k, mq, mk, dtype, **kw):
  dout = randn(rng, q.shape, dtype)
  got = jax.jit(lambda a, b, c, x, y, g: varlen_grads(a, b, c, x, y, mq, mk, g, **kw))(
      q, k, v, cu_q, cu_k, dout)
  with on_host():
    hq, hk, hv, hdout = _host(q, k, v, dout)
    up = [x.astype(jnp.float64) for x in (hq, hk, hv)]
    ref = varlen_grads(*up, cu_q, cu_k, mq, mk, hdout.astype(jnp.float64),
                       fn=reference.attention_varlen, **kw)
    naive = varlen_grads(hq, hk, hv, cu_q, cu_k, mq, mk, hdout, fn=reference.attention_varlen,
                         upcast=False, **kw)
  for name, g, r, n, x in zip(("dq", "dk", "dv"), got, ref, naive, (q, k, v)):
    assert g.shape == x.shape and g.dtype == x.dtype
    assert_fa3_close(name, g, r, n, dtype)
  return got


# --------------------------------------------------------------- forward ----

@pytest.mark.parametrize("kw", MASKS, ids=MASK_IDS)
def test_forward(rng, kw):
  q, k, v, cu_q, cu_k = make_packed(rng, LENS_Q, LENS_K, 4, 2, 64, jnp.bfloat16)
  out, lse = check_forward(q, k, v, cu_q, cu_k, max(LENS_Q), max(LENS_K), jnp.bfloat16, **kw)
  # Padding rows after cu_seqlens_q[-1], empty and key-less sequences: 0, -inf.
  end = int(cu_q[-1])
  assert np.all(f64(out)[end:] == 0) and np.all(np.isneginf(f64(lse)[:, end:]))
  s = int(cu_q[4])  # sequence 4 has 5 queries and no key
  assert np.all(f64(out)[s:s + 5] == 0) and np.all(np.isneginf(f64(lse)[:, s:s + 5]))


def test_equals_dense_kernel_per_sequence(rng):
  """Each sequence's rows are bitwise those of jax_fa3.attention on that
  sequence alone: the same tile code runs at per-sequence offsets."""
  q, k, v, cu_q, cu_k = make_packed(rng, LENS_Q, LENS_K, 4, 2, 64, jnp.bfloat16)
  check_equals_dense_per_sequence(q, k, v, cu_q, cu_k, LENS_Q, LENS_K, causal=True, softcap=10.0)


def check_equals_dense_per_sequence(q, k, v, cu_q, cu_k, lens_q, lens_k, **kw):
  out, lse = run(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), **kw)
  for b, (lq, lk) in enumerate(zip(lens_q, lens_k)):
    if lq == 0 or lk == 0:
      continue
    q0, k0 = int(cu_q[b]), int(cu_k[b])
    o, l = jax_fa3.attention(q[None, q0:q0 + lq], k[None, k0:k0 + lk], v[None, k0:k0 + lk],
                             return_lse=True, **kw)
    np.testing.assert_array_equal(f64(out[q0:q0 + lq]), f64(o[0]))
    np.testing.assert_array_equal(f64(lse[:, q0:q0 + lq]), f64(l[0]))


@pytest.mark.parametrize("h,hk", [(8, 2), (8, 1)], ids=["gqa4", "mqa"])
def test_gqa(rng, h, hk):
  q, k, v, cu_q, cu_k = make_packed(rng, [33, 0, 80], [50, 7, 64], h, hk, 64, jnp.bfloat16)
  check_forward(q, k, v, cu_q, cu_k, 80, 64, jnp.bfloat16, causal=True)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_dtypes(rng, dtype):
  q, k, v, cu_q, cu_k = make_packed(rng, [1, 40, 77], [9, 40, 70], 2, 2, 128, dtype)
  kw = dict(causal=True, softcap=10.0)
  check_forward(q, k, v, cu_q, cu_k, 77, 70, dtype, **kw)
  check_grads(rng, q, k, v, cu_q, cu_k, 77, 70, dtype, **kw)


def dead_rows(cu, used, total):
  """Bool mask of the rows of a packed side that no sequence attends."""
  dead = np.ones(total, bool)
  for b, n in enumerate(used):
    dead[int(cu[b]):int(cu[b]) + int(n)] = False
  return dead


def check_dead_rows(out, lse, dq, dk, dv, cu_q, cu_k, used_q, used_k):
  """Unattended rows: out 0, lse -inf, zero gradients; returns (dead_q, dead_k)."""
  dead_q = dead_rows(cu_q, used_q, out.shape[0])
  dead_k = dead_rows(cu_k, used_k, dk.shape[0])
  assert np.all(f64(out)[dead_q] == 0) and np.all(np.isneginf(f64(lse)[:, dead_q]))
  assert np.all(f64(dq)[dead_q] == 0)
  assert np.all(f64(dk)[dead_k] == 0) and np.all(f64(dv)[dead_k] == 0)
  return dead_q, dead_k


def check_seqused(rng, lens_q, lens_k, used_q, used_k):
  """Causal attention with seqused (max_seqlen = the longest used length)
  against the references, forward and gradients, and the rows past seqused
  (and the padding after the last sequence) dead on each side. Returns
  ((q, k, v, cu_q, cu_k), kw, out, dead_k)."""
  q, k, v, cu_q, cu_k = make_packed(rng, lens_q, lens_k, 4, 2, 64, jnp.bfloat16)
  kw = dict(seqused_q=jnp.asarray(used_q), seqused_k=jnp.asarray(used_k), causal=True)
  mq, mk = int(np.max(used_q)), int(np.max(used_k))
  out, lse = check_forward(q, k, v, cu_q, cu_k, mq, mk, jnp.bfloat16, **kw)
  dq, dk, dv = check_grads(rng, q, k, v, cu_q, cu_k, mq, mk, jnp.bfloat16, **kw)
  _, dead_k = check_dead_rows(out, lse, dq, dk, dv, cu_q, cu_k, used_q, used_k)
  return (q, k, v, cu_q, cu_k), kw, out, dead_k


def test_seqused(rng):
  """Only the first seqused rows of each allocated sequence count: past them
  out 0, lse -inf, zero dq (q side) and no influence, zero dk/dv (k side)."""
  used_q = np.array([10, 65, 0, 17], np.int32)
  used_k = np.array([3, 66, 8, 0], np.int32)
  (q, k, v, cu_q, cu_k), kw, out, dead_k = check_seqused(
      rng, [10, 70, 4, 30], [12, 66, 8, 1], used_q, used_k)
  # Garbage in the unused key rows changes nothing.
  k2 = k.at[jnp.asarray(dead_k)].set(1e4)
  out2, _ = run(q, k2, v, cu_q, cu_k, 65, 66, **kw)
  np.testing.assert_array_equal(f64(out2), f64(out))


# -------------------------------------------------------------- backward ----

# Two of the four masks (the forward runs all four; tests/test_backward.py
# sweeps the masks of the shared tile code): each case compiles two
# reference VJPs.
@pytest.mark.parametrize("kw", MASKS[1:3], ids=MASK_IDS[1:3])
def test_grads(rng, kw):
  q, k, v, cu_q, cu_k = make_packed(rng, LENS_Q, LENS_K, 4, 2, 64, jnp.bfloat16)
  dq, dk, dv = check_grads(rng, q, k, v, cu_q, cu_k, max(LENS_Q), max(LENS_K),
                           jnp.bfloat16, **kw)
  assert np.all(f64(dq)[int(cu_q[-1]):] == 0)
  assert np.all(f64(dk)[int(cu_k[-1]):] == 0) and np.all(f64(dv)[int(cu_k[-1]):] == 0)
  s = int(cu_k[0])  # sequence 0: 5 keys, no query
  assert np.all(f64(dk)[s:s + 5] == 0) and np.all(f64(dv)[s:s + 5] == 0)


def test_deterministic_bitwise(rng):
  q, k, v, cu_q, cu_k = make_packed(rng, [100, 3, 60], [90, 50, 60], 4, 2, 64, jnp.bfloat16)
  f = jax.jit(jax.grad(lambda a, b, c: jnp.sum(jax_fa3.attention_varlen(
      a, b, c, cu_q, cu_k, 100, 90, causal=True, deterministic=True).astype(jnp.float32) ** 2),
      argnums=(0, 1, 2)))
  for a, b in zip(f(q, k, v), f(q, k, v)):
    np.testing.assert_array_equal(f64(a), f64(b))


def test_eager_vmap_and_return_lse(rng):
  q, k, v, cu_q, cu_k = make_packed(rng, [20, 9], [20, 30], 2, 1, 32, jnp.float32)
  out = jax_fa3.attention_varlen(q, k, v, cu_q, cu_k, 20, 30)  # eager
  out_j, lse = run(q, k, v, cu_q, cu_k, 20, 30)
  np.testing.assert_array_equal(f64(out), f64(out_j))
  assert lse.shape == (2, q.shape[0])
  # vmap: one call per entry (the offsets batched too).
  qs, ks, vs = (jnp.stack([x, 2 * x]) for x in (q, k, v))
  cus_q, cus_k = jnp.stack([cu_q, cu_q]), jnp.stack([cu_k, cu_k])
  got = jax.vmap(lambda a, b, c, x, y: jax_fa3.attention_varlen(a, b, c, x, y, 20, 30))(
      qs, ks, vs, cus_q, cus_k)
  np.testing.assert_array_equal(f64(got[0]), f64(out))
  np.testing.assert_array_equal(
      f64(got[1]), f64(jax_fa3.attention_varlen(2 * q, 2 * k, 2 * v, cu_q, cu_k, 20, 30)))


# ---------------------------------------------------------------- errors ----

@pytest.fixture
def packed(rng):
  return make_packed(rng, [4, 6], [5, 5], 2, 2, 64, jnp.bfloat16, pad_q=0, pad_k=0)


def test_python_checks(packed):
  q, k, v, cu_q, cu_k = packed
  call = lambda *a, **kw: jax_fa3.attention_varlen(*a, **kw)  # noqa: E731
  with pytest.raises(TypeError, match="cu_seqlens_q must be int32, got int64"):
    call(q, k, v, cu_q.astype(jnp.int64), cu_k, 6, 5)
  with pytest.raises(TypeError, match="cu_seqlens_k must be int32, got float32"):
    call(q, k, v, cu_q, cu_k.astype(jnp.float32), 6, 5)
  with pytest.raises(ValueError, match=r"cu_seqlens_k must have shape \(3,\)"):
    call(q, k, v, cu_q, cu_k[:2], 6, 5)
  with pytest.raises(ValueError, match=r"num_seqs >= 1"):
    call(q, k, v, cu_q[:1], cu_k[:1], 6, 5)
  with pytest.raises(ValueError, match=r"seqused_q must have shape \(2,\)"):
    call(q, k, v, cu_q, cu_k, 6, 5, seqused_q=cu_q)
  with pytest.raises(TypeError, match="seqused_k must be int32"):
    call(q, k, v, cu_q, cu_k, 6, 5, seqused_k=jnp.ones(2, jnp.int64))
  with pytest.raises(ValueError, match=r"q must have shape \(total_tokens, heads, head_dim\)"):
    call(q[None], k, v, cu_q, cu_k, 6, 5)
  with pytest.raises(TypeError, match="max_seqlen_q must be a static Python int"):
    call(q, k, v, cu_q, cu_k, 6.0, 5)
  with pytest.raises(TypeError, match="max_seqlen_k must be a static Python int"):
    jax.jit(lambda m: call(q, k, v, cu_q, cu_k, 6, m))(5)
  with pytest.raises(ValueError, match="max_seqlen_q must be in"):
    call(q, k, v, cu_q, cu_k, -1, 5)


# (cu_seqlens_q, cu_seqlens_k, seqused_q, max_seqlen_q, expected message);
# q has 10 rows, k 10 rows.
BAD_VALUES = [
    ([0, 6, 4], [0, 5, 10], None, 6, r"cu_seqlens_q must be non-decreasing, but "
     r"cu_seqlens_q\[2\] = 4 < cu_seqlens_q\[1\] = 6"),
    ([0, 4, 10], [0, 5, 11], None, 6, r"cu_seqlens_k\[-1\] = 11 is past the end of the "
     r"packed k \(total_k = 10 rows\)"),
    ([1, 4, 10], [0, 5, 10], None, 6, r"cu_seqlens_q\[0\] must be 0, got 1"),
    ([0, 4, 10], [0, 5, 10], [4, 7], 6, r"seqused_q\[1\] = 7 must be in \[0, 6\]"),
    ([0, 4, 10], [0, 5, 10], None, 5, r"sequence 1 has 6 q rows, more than max_seqlen_q = 5"),
]
BAD_IDS = ["not_monotone", "past_end", "not_from_zero", "seqused_too_long", "over_max_seqlen"]


@pytest.mark.parametrize("cu_q,cu_k,used_q,max_q,msg", BAD_VALUES, ids=BAD_IDS)
def test_bad_offsets_eager_raise_in_python(packed, cu_q, cu_k, used_q, max_q, msg):
  q, k, v, _, _ = packed
  used = None if used_q is None else jnp.asarray(used_q, jnp.int32)
  with pytest.raises(ValueError, match=msg):
    jax_fa3.attention_varlen(q, k, v, jnp.asarray(cu_q, jnp.int32),
                             jnp.asarray(cu_k, jnp.int32), max_q, 5, seqused_q=used)


@pytest.mark.parametrize("cu_q,cu_k,used_q,max_q,msg", BAD_VALUES, ids=BAD_IDS)
def test_bad_offsets_under_jit_raise_from_cpu_handler(packed, cu_q, cu_k, used_q, max_q, msg):
  """Under jit the values are tracers: the C++ handler checks them and the
  call fails with an XLA runtime error carrying the same message, forward
  and backward, never an out-of-bounds access."""
  q, k, v, _, _ = packed
  args = [jnp.asarray(cu_q, jnp.int32), jnp.asarray(cu_k, jnp.int32)]
  if used_q is not None:
    args.append(jnp.asarray(used_q, jnp.int32))

  def fwd(q, k, v, cq, ck, *used):
    return jax_fa3.attention_varlen(q, k, v, cq, ck, max_q, 5,
                                    seqused_q=used[0] if used else None)

  with pytest.raises(Exception, match=msg) as e:
    jax.block_until_ready(jax.jit(fwd)(q, k, v, *args))
  assert "jax_fa3" in str(e.value)
  # The backward handler checks on its own (raw call, forward skipped).
  cfg = primitives.AttnConfig(softmax_scale=0.125, causal=False, window_left=-1,
                              window_right=-1, softcap=0.0)
  spec = primitives.VarlenSpec(max_seqlen_q=max_q, max_seqlen_k=5,
                               has_seqused_q=used_q is not None)
  lse = jnp.zeros((q.shape[1], q.shape[0]), jnp.float32)
  used = args[2] if used_q is not None else None
  with pytest.raises(Exception, match=msg):
    jax.block_until_ready(primitives.varlen_bwd_call(q, k, v, q, lse, q, args[0], args[1],
                                                     used, None, cfg, spec))


def test_handler_rejects_bad_operands(packed):
  """Python bypassed: dtypes and shapes of the offsets, LSE layout."""
  q, k, v, cu_q, cu_k = packed
  cfg = primitives.AttnConfig(softmax_scale=0.125, causal=False, window_left=-1,
                              window_right=-1, softcap=0.0)
  spec = primitives.VarlenSpec(max_seqlen_q=6, max_seqlen_k=5)
  raw = lambda *a: jax.block_until_ready(primitives.varlen_fwd_call(*a, cfg, spec))  # noqa: E731
  with pytest.raises(Exception, match="cu_seqlens_q must be int32"):
    raw(q, k, v, cu_q.astype(jnp.int64), cu_k, None, None)
  with pytest.raises(Exception, match=r"cu_seqlens_k must have shape \(3,\)"):
    raw(q, k, v, cu_q, cu_k[:2], None, None)
  with pytest.raises(Exception, match="varlen q, k, v must have rank 3"):
    raw(q[None], k[None], v[None], cu_q, cu_k, None, None)
  out, lse = raw(q, k, v, cu_q, cu_k, None, None)
  with pytest.raises(Exception, match=r"lse must be float32 of shape \(heads=2, total_q=10\)"):
    jax.block_until_ready(primitives.varlen_bwd_call(q, k, v, out, lse[:, :4], out, cu_q,
                                                     cu_k, None, None, cfg, spec))


# ----------------------------------------------------------- segment_ids ----

def seg_references(q, k, v, dout, **kw):
  """(out, lse, grads) of the float64 and naive masked references."""
  @functools.partial(jax.jit, static_argnames="upcast")
  def run_ref(*args, upcast):
    f = lambda a, b, c: reference.attention(a, b, c, return_lse=True, upcast=upcast, **kw)  # noqa: E731
    (out, lse), vjp = jax.vjp(f, *args[:3])
    return out, lse, vjp((args[3], jnp.zeros_like(lse)))

  with on_host():
    host = _host(q, k, v, dout)
    up = [x.astype(jnp.float64) for x in host]
    return run_ref(*up, upcast=True), run_ref(*host, upcast=False)


def check_segments(rng, q, k, v, dtype, **kw):
  dout = randn(rng, q.shape, dtype)

  @jax.jit
  def fa3(a, b, c, g):
    (out, lse), vjp = jax.vjp(lambda x, y, z: jax_fa3.attention(x, y, z, return_lse=True, **kw),
                              a, b, c)
    return out, lse, vjp((g, jnp.zeros_like(lse)))

  out, lse, grads = fa3(q, k, v, dout)
  (ref, lse_ref, gref), (naive, _, gnaive) = seg_references(q, k, v, dout, **kw)
  assert_fa3_close("out", out, ref, naive, dtype)
  assert lse.shape == q.shape[:-3] + (q.shape[-2], q.shape[-3])
  assert np.array_equal(np.isneginf(f64(lse)), np.isneginf(f64(lse_ref)))
  assert max_err(lse, lse_ref) <= 1e-4 * max(1.0, float(np.nanmax(np.abs(
      np.where(np.isfinite(f64(lse_ref)), f64(lse_ref), 0.0)))))
  for name, g, r, n in zip(("dq", "dk", "dv"), grads, gref, gnaive):
    assert_fa3_close(name, g, r, n, dtype)
  return out, lse


def test_segment_ids_packed_self_attention(rng):
  """One array for q and kv, contiguous segments (one of length 1), causal:
  equals the masked reference, whose mask is causal AND same segment."""
  seg = np.array([[0] * 30 + [1] + [2] * 69, [4] * 100], np.int32)
  q, k, v = (randn(rng, (2, 100, 4 if i == 0 else 2, 64), jnp.bfloat16) for i in range(3))
  check_segments(rng, q, k, v, jnp.bfloat16, causal=True, segment_ids=jnp.asarray(seg))
  got = reference.segment_mask(jnp.asarray(seg), jnp.asarray(seg), causal=True)
  want = reference.visible_mask(100, 100, causal=True) & (seg[:, :, None] == seg[:, None, :])
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_segment_ids_pair_unsorted_with_window_softcap(rng):
  """(q, kv) pair of different lengths; ids unsorted and not contiguous; an
  id with queries but no keys (rows 0, lse -inf) and one with keys only."""
  q_seg = np.array([[3, 3, 1, 1, 1, 9, 9, 3, 1, 1] * 7], np.int32)          # (1, 70)
  kv_seg = np.array([[1] * 40 + [3] * 25 + [5] * 15 + [3] * 10], np.int32)  # (1, 90)
  q = randn(rng, (1, 70, 4, 64), jnp.bfloat16)
  k, v = (randn(rng, (1, 90, 2, 64), jnp.bfloat16) for _ in range(2))
  for kw in (dict(causal=True), dict(window_size=(7, 3), softcap=15.0)):
    out, lse = check_segments(rng, q, k, v, jnp.bfloat16,
                              segment_ids=(jnp.asarray(q_seg), jnp.asarray(kv_seg)), **kw)
    no_key = q_seg[0] == 9
    assert np.all(f64(out)[0, no_key] == 0) and np.all(np.isneginf(f64(lse)[0][:, no_key]))


def test_segment_ids_leading_dims_and_vmap(rng):
  seg = jnp.asarray(np.array([[[0] * 10 + [1] * 22], [[5] * 32]], np.int32))  # (2, 1, 32)
  q, k, v = (randn(rng, (2, 1, 32, 2, 32), jnp.float32) for _ in range(3))
  out = jax.jit(lambda a, b, c, s: jax_fa3.attention(a, b, c, causal=True, segment_ids=s))(
      q, k, v, seg)
  ref = jax.jit(lambda a, b, c, s: reference.attention(a, b, c, causal=True, segment_ids=s))(
      q, k, v, seg)
  np.testing.assert_allclose(f64(out), f64(ref), atol=2e-5)
  got = jax.vmap(lambda a, b, c, s: jax_fa3.attention(a, b, c, causal=True, segment_ids=s))(
      q, k, v, seg)
  np.testing.assert_allclose(f64(got), f64(ref), atol=2e-5)


def test_segment_ids_errors(rng):
  q = randn(rng, (2, 8, 2, 64), jnp.bfloat16)
  k = randn(rng, (2, 6, 2, 64), jnp.bfloat16)
  seg8 = jnp.zeros((2, 8), jnp.int32)
  with pytest.raises(TypeError, match="segment_ids must be int32, got float32"):
    jax_fa3.attention(q, q, q, segment_ids=seg8.astype(jnp.float32))
  with pytest.raises(ValueError, match=r"segment_ids must have shape \(batch\.\.\., seqlen\)"):
    jax_fa3.attention(q, q, q, segment_ids=seg8[:1])
  with pytest.raises(ValueError, match="a single segment_ids array needs seqlen_q == seqlen_k"):
    jax_fa3.attention(q, k, k, segment_ids=seg8)
  with pytest.raises(ValueError, match=r"kv_segment_ids must have shape .* = \(2, 6\)"):
    jax_fa3.attention(q, k, k, segment_ids=(seg8, seg8))
  with pytest.raises(ValueError, match="or a pair"):
    jax_fa3.attention(q, q, q, segment_ids=(seg8, seg8, seg8))


# ------------------------------------------------------ lowering for CUDA ----

def _lower_for_cuda(fn, *args):
  traced = jax.jit(fn).trace(*args)
  try:
    return traced.lower(lowering_platforms=("cuda",))
  except TypeError as e:  # pragma: no cover - jax without cross-platform lowering
    pytest.skip(f"this jax cannot lower for another platform: {e}")


def test_cuda_lowering_of_varlen_and_segment_ids(packed):
  """Runs without a GPU: varlen, its gradient and segment_ids lower for CUDA
  to the jax_fa3 custom calls, with the offsets as operands (the Hopper
  kernels take cu_seqlens; tests/test_gpu_varlen.py runs them)."""
  q, k, v, cu_q, cu_k = packed
  fwd = _lower_for_cuda(lambda a, b, c, x, y: jax_fa3.attention_varlen(a, b, c, x, y, 6, 5),
                        q, k, v, cu_q, cu_k).as_text()
  assert "jax_fa3_fwd" in fwd and "varlen = true" in fwd
  bwd = _lower_for_cuda(jax.grad(lambda a: jnp.sum(jax_fa3.attention_varlen(
      a, k, v, cu_q, cu_k, 6, 5).astype(jnp.float32))), q).as_text()
  assert "jax_fa3_bwd" in bwd
  seg = jnp.zeros((1, 10), jnp.int32)
  seg_text = _lower_for_cuda(lambda a, s: jax_fa3.attention(a, a, a, segment_ids=s),
                             q[None], seg).as_text()
  assert "jax_fa3_fwd" in seg_text and "varlen = true" in seg_text


def test_segment_ids_pair_with_smaller_kv_only_id(rng):
  """kv carries an id smaller than every query id in row 0 (kv-side padding
  id 0): those keys are ignored, and the offsets still start at 0."""
  q_seg = np.array([[1] * 12 + [2] * 9, [2] * 21], np.int32)         # (2, 21)
  kv_seg = np.array([[0] * 5 + [1] * 10 + [2] * 10, [0] * 3 + [1] * 4 + [2] * 18], np.int32)
  q = randn(rng, (2, 21, 2, 32), jnp.float32)
  k, v = (randn(rng, (2, 25, 2, 32), jnp.float32) for _ in range(2))
  check_segments(rng, q, k, v, jnp.float32,
                 segment_ids=(jnp.asarray(q_seg), jnp.asarray(kv_seg)), causal=True)


def test_segments_and_varlen_under_disable_jit(rng):
  seg = jnp.asarray(np.array([[0] * 7 + [1] * 9], np.int32))
  q, k, v = (randn(rng, (1, 16, 2, 32), jnp.float32) for _ in range(3))
  with jax.disable_jit():
    out = jax_fa3.attention(q, k, v, causal=True, segment_ids=seg)
  ref = reference.attention(q, k, v, causal=True, segment_ids=seg)
  np.testing.assert_allclose(f64(out), f64(ref), atol=2e-5)
