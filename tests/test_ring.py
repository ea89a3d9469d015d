"""Ring attention (jax_fa3.parallel.ring) and the zigzag layout.

The mask algebra and layout tests run in-process. The multi-device tests
need 8 host devices, fixed at backend start, so ``test_multidevice`` re-runs
this module in a subprocess with ``--xla_force_host_platform_device_count=8``
(tests/_multiprocess_worker.py); in the parent they are skipped.
"""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fa3
from jax_fa3.parallel import ring as ring_mod
from jax_fa3.parallel import ring_attention, zigzag, zigzag_permute, zigzag_unpermute

import _multiprocess_worker as mpw
from conftest import assert_fa3_close, grad_references, make_qkv, randn, references

child_only = pytest.mark.skipif(not mpw.in_child(),
                                reason="multi-device: runs in test_multidevice's subprocess")


@pytest.mark.skipif(mpw.in_child(), reason="this is the child")
def test_multidevice():
  mpw.run_module_in_subprocess(__file__)


# ------------------------------------------------------- in-process tests ----

def _kernel_mask(sq, sk, left, right):
  row = np.arange(sq)[:, None] + sk - sq
  col = np.arange(sk)[None]
  ok = np.ones((sq, sk), bool)
  if right >= 0:
    ok &= col <= row + right
  if left >= 0:
    ok &= col >= row - left
  return ok


def test_pair_mask_reproduces_global_mask():
  """For every (q block, k block) pair, cropping + the kernel's shifted
  window give exactly the global mask restricted to the pair."""
  grid = itertools.product(range(0, 13, 3), [1, 4], range(0, 13, 2), [1, 5],
                           [-1, 0, 2, 7], [-1, 0, 5], [-4, 0, 3])
  for qs, sq, ks, sk, left, right, g in grid:
    r = qs + np.arange(sq)[:, None]
    c = ks + np.arange(sk)[None]
    want = np.ones((sq, sk), bool)
    if right >= 0:
      want &= c <= r + g + right
    if left >= 0:
      want &= c >= r + g - left
    m = ring_mod._pair_mask(qs, sq, ks, sk, left, right, g)
    got = np.zeros((sq, sk), bool)
    if not m.skip:
      assert m.left >= -1 and m.right >= -1 and 1 <= m.q_len <= sq and 1 <= m.k_len <= sk
      got[:m.q_len, :m.k_len] = _kernel_mask(m.q_len, m.k_len, m.left, m.right)
    assert (got == want).all(), (qs, sq, ks, sk, left, right, g, m)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_zigzag_permute_roundtrip(rng, n):
  x = randn(rng, (2, 4 * n, 3, 8), jnp.float32)
  y = zigzag_permute(x, n)
  c = x.shape[1] // (2 * n)
  for dev in range(n):  # device dev's contiguous shard holds chunks dev, 2n-1-dev
    shard = y[:, 2 * c * dev:2 * c * (dev + 1)]
    want = jnp.concatenate([x[:, g * c:(g + 1) * c] for g in (dev, 2 * n - 1 - dev)], axis=1)
    np.testing.assert_array_equal(shard, want)
  np.testing.assert_array_equal(zigzag_unpermute(y, n), x)
  with pytest.raises(ValueError, match="divisible"):
    zigzag_permute(x[:, :2 * n + 1], n)


def _work(plan, step, n):
  """(row, col) pairs each device hands the kernel at `step` (cropped size)."""
  per_dev = [0] * n
  for (masks, table) in plan.steps[step].values():
    for i in range(n):
      m = masks[table[i]]
      if not m.skip:
        per_dev[i] += m.q_len * m.k_len
  for _, _, m, _ in plan.couples[step]:  # one of the two runs on every device
    per_dev = [w + m.q_len * m.k_len for w in per_dev]
  return per_dev


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zigzag_balances_causal_work(n):
  """Zigzag: every device computes the same number of kernel (row, col)
  pairs at every step; contiguous: the last device does n times the first."""
  from jax_fa3.primitives import AttnConfig  # noqa: PLC0415
  cfg = AttnConfig(softmax_scale=1.0, causal=True, window_left=-1, window_right=0, softcap=0.0)
  zz = ring_mod._Plan(cfg, "zigzag", n, 16, 16)
  for s in range(n):
    work = _work(zz, s, n)
    assert len(set(work)) == 1, (s, work)
  cont = ring_mod._Plan(cfg, "contiguous", n, 16, 16)
  totals = np.sum([_work(cont, s, n) for s in range(n)], axis=0)
  assert totals[-1] > totals[0]


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zigzag_causal_needs_no_switch(n):
  """Zigzag causal: the device-dependent pairs (0, 0) / (1, 1) of every step
  after the first form couples, so no step needs lax.switch (a GPU
  conditional makes the host wait for the device)."""
  from jax_fa3.primitives import AttnConfig  # noqa: PLC0415
  cfg = AttnConfig(softmax_scale=1.0, causal=True, window_left=-1, window_right=0, softcap=0.0)
  zz = ring_mod._Plan(cfg, "zigzag", n, 16, 16)
  for s in range(n):
    assert all(len(masks) == 1 for masks, _ in zz.steps[s].values()), (s, zz.steps[s])
    assert [(p1, p2) for p1, p2, _, _ in zz.couples[s]] == ([] if s == 0 else [((0, 0), (1, 1))])


# ------------------------------------------------------ multi-device tests ----

def _shard_map():
  sm = getattr(jax, "shard_map", None)
  if sm is None:  # pragma: no cover - jax < 0.7
    from jax.experimental.shard_map import shard_map as sm  # noqa: PLC0415
  return sm


def _ring_fn(n, layout, **kw):
  """Global-in, global-out ring attention over n devices (axis 'sp')."""
  from jax.sharding import Mesh, PartitionSpec as P  # noqa: PLC0415
  mesh = Mesh(np.array(jax.devices()[:n]), ("sp",))
  spec = P(None, "sp", None, None)
  lse_spec = P(None, None, "sp")
  f = _shard_map()(
      lambda q, k, v: ring_attention(q, k, v, axis_name="sp", layout=layout,
                                     return_lse=True, **kw),
      mesh=mesh, in_specs=(spec,) * 3, out_specs=(spec, lse_spec))

  def run(q, k, v):
    if layout == "zigzag":
      q, k, v = (zigzag_permute(x, n) for x in (q, k, v))
    out, lse = f(q, k, v)
    if layout == "zigzag":
      out, lse = zigzag_unpermute(out, n), zigzag_unpermute(lse, n, seq_axis=-1)
    return out, lse
  return run


def _fwd_bwd(fn, q, k, v, dout):
  def f(q, k, v):
    out, f_vjp = jax.vjp(lambda *a: fn(*a)[0], q, k, v)
    return (out, fn(q, k, v)[1]) + f_vjp(dout)
  return jax.jit(f)(q, k, v)


CASES = [
    # (n, layout, b, sq, sk, h, hk, kwargs)
    (4, "contiguous", 2, 32, 32, 4, 2, dict(causal=True)),
    (4, "zigzag", 2, 32, 32, 4, 2, dict(causal=True)),
    (4, "contiguous", 1, 32, 32, 4, 1, dict()),
    (4, "zigzag", 1, 32, 32, 2, 2, dict(window_size=(5, 3))),
    (4, "contiguous", 1, 32, 48, 4, 2, dict(causal=True, window_size=(9, -1), softcap=2.0)),
    (4, "zigzag", 1, 32, 32, 4, 2, dict(causal=True, window_size=(12, -1), softcap=3.0)),
    (8, "zigzag", 1, 64, 64, 2, 1, dict(causal=True)),
]


@child_only
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}-{c[1]}-{c[7]}")
def test_ring_matches_single_device(rng, case):
  n, layout, b, sq, sk, h, hk, kw = case
  q, k, v = make_qkv(rng, b, sq, sk, h, hk, 16, jnp.float32)
  dout = randn(rng, q.shape, jnp.float32)
  got = _fwd_bwd(_ring_fn(n, layout, **kw), q, k, v, dout)
  want = _fwd_bwd(lambda q, k, v: jax_fa3.attention(q, k, v, return_lse=True, **kw),
                  q, k, v, dout)
  for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
    g, w = np.asarray(g), np.asarray(w)
    assert g.shape == w.shape, name
    finite = np.isfinite(w)
    assert (np.isfinite(g) == finite).all(), f"{name}: -inf rows differ"
    err = np.max(np.abs(np.where(finite, g - w, 0.0)))
    assert err <= 2e-5 * (1 + np.max(np.abs(np.where(finite, w, 0.0)))), f"{name}: {err}"


@child_only
def test_ring_bf16_within_fa3_tolerance(rng):
  """bf16 zigzag causal GQA over 8 devices vs the float64 reference, by
  FA3's rule (ring partials are merged / accumulated in float32)."""
  kw = dict(causal=True, softcap=5.0)
  q, k, v = make_qkv(rng, 1, 64, 64, 4, 2, 32, jnp.bfloat16)
  dout = randn(rng, q.shape, jnp.bfloat16)
  out, _, dq, dk, dv = _fwd_bwd(_ring_fn(8, "zigzag", **kw), q, k, v, dout)
  # jit: the references are many small ops, slow when dispatched eagerly.
  ref, naive = jax.jit(lambda *a: references(*a, **kw))(q, k, v)
  assert_fa3_close("out", out, ref, naive, jnp.bfloat16)
  gref, gnaive = jax.jit(lambda *a: grad_references(*a, **kw))(q, k, v, dout)
  for name, g, r, nv in zip(("dq", "dk", "dv"), (dq, dk, dv), gref, gnaive):
    assert_fa3_close(name, g, r, nv, jnp.bfloat16)


def _ring_fwd_bwd_lowered(rng, layout):
  """jit(forward + vjp) of a causal 4-device ring, lowered."""
  q, k, v = make_qkv(rng, 1, 32, 32, 2, 2, 16, jnp.float32)
  dout = randn(rng, q.shape, jnp.float32)
  fn = _ring_fn(4, layout, causal=True)

  def f(q, k, v):
    out, f_vjp = jax.vjp(lambda *a: fn(*a)[0], q, k, v)
    return (out,) + f_vjp(dout)

  return jax.jit(f).lower(q, k, v)


@child_only
def test_ring_hlo_is_permutes_not_gathers(rng):
  hlo = _ring_fwd_bwd_lowered(rng, "contiguous").compile().as_text()
  assert "collective-permute" in hlo
  assert not re.search(r"all-gather|all-to-all", hlo)


@child_only
def test_zigzag_causal_ring_hlo_has_no_conditional(rng):
  hlo = _ring_fwd_bwd_lowered(rng, "zigzag").as_text()
  assert "collective_permute" in hlo and "stablehlo.case" not in hlo
  # The detector works: the contiguous causal ring still needs switches.
  assert "stablehlo.case" in _ring_fwd_bwd_lowered(rng, "contiguous").as_text()


@child_only
def test_zigzag_causal_ring_is_one_call_per_step(rng, monkeypatch):
  """ring_zigzag: n forward and n backward kernel calls on 4 devices (the
  general plan needs two per step after the first), and no selects of
  operands."""
  def calls(text):
    return (len(re.findall(r"custom_call @jax_fa3_fwd\b", text)),
            len(re.findall(r"custom_call @jax_fa3_bwd\b", text)))
  fast = _ring_fwd_bwd_lowered(rng, "zigzag").as_text()
  assert calls(fast) == (4, 4)
  monkeypatch.setenv("JAX_FA3_RING_ZIGZAG", "0")
  general = _ring_fwd_bwd_lowered(rng, "zigzag").as_text()
  assert calls(general)[0] > 4 and calls(general)[1] > 4


@child_only
def test_ring_forward_calls_share_the_gpu(rng):
  """Every forward kernel call of the ring carries sm_margin =
  RING_SM_MARGIN (> 0: the Hopper forward runs one CTA per tile, so the
  transfers beside it get SMs)."""
  text = _ring_fwd_bwd_lowered(rng, "zigzag").as_text()
  fwd = [l for l in text.splitlines() if re.search(r"custom_call @jax_fa3_fwd\b", l)]
  assert len(fwd) == 4
  for line in fwd:
    m = re.search(r"sm_margin = (\d+)", line)
    assert m and int(m[1]) == ring_mod.RING_SM_MARGIN > 0, line[:300]


@child_only
@pytest.mark.parametrize("own_first", [False, True])
def test_ring_transfer_count(rng, monkeypatch, own_first):
  """Arrays sent in a 4-device zigzag fwd+bwd (one collective-permute each
  in the lowered program): the forward sends K, V before steps 1-3 (6); the
  backward with the own block last (ring_comm.bwd_order) fetches its first
  block (2) and per step sends K, V unless the own block is next and the
  dK/dV accumulator after the first step: 2 + 4 + 2 + 2 (12). Own block
  first: K, V before steps 1-3, dK/dV after steps 0-2 and home (14)."""
  if own_first:
    monkeypatch.setenv("JAX_FA3_RING_BWD_OWN_FIRST", "1")
  text = _ring_fwd_bwd_lowered(rng, "zigzag").as_text()
  assert len(re.findall(r"collective_permute", text)) == (20 if own_first else 18)


def test_bwd_order_and_overlap_flag():
  """The own block is the backward's last step; the overlap-flag warning is
  for GPU runs whose XLA_FLAGS do not set the limit at all."""
  from jax_fa3.parallel import ring_comm  # pylint: disable=g-import-not-at-top
  assert ring_comm.bwd_order(4) == [1, 2, 3, 0] and ring_comm.bwd_order(1) == [0]
  flag = ring_comm.COLLECTIVE_OVERLAP_FLAG
  assert ring_comm.overlap_flag_missing("gpu", "--xla_dump_to=/tmp/x")
  assert not ring_comm.overlap_flag_missing("gpu", f"--xla_dump_to=/tmp/x {flag}")
  assert not ring_comm.overlap_flag_missing("gpu", flag.split("=")[0] + "=2")
  assert not ring_comm.overlap_flag_missing("cpu", "")


@pytest.mark.parametrize("before", [True, False])
def test_zigzag_offsets_select_the_visible_rectangle(before):
  """Per batch entry: j < i -> (q all, k chunk 0) + (no q, k chunk 1);
  j > i -> (q chunk 0, no k) + (q chunk 1, k all)."""
  from jax_fa3.parallel import ring_zigzag  # pylint: disable=g-import-not-at-top
  cu_q, cu_k = ring_zigzag._offsets(jnp.asarray(before), 2, 8)
  if before:
    np.testing.assert_array_equal(cu_q, [0, 16, 16, 32, 32])
    np.testing.assert_array_equal(cu_k, [0, 8, 16, 24, 32])
  else:
    np.testing.assert_array_equal(cu_q, [0, 8, 16, 24, 32])
    np.testing.assert_array_equal(cu_k, [0, 0, 16, 16, 32])


@child_only
def test_ring_rejects_bad_layout(rng):
  q, k, v = make_qkv(rng, 1, 16, 16, 2, 2, 16, jnp.float32)
  with pytest.raises(ValueError, match="layout"):
    _ring_fn(2, "striped")(q, k, v)
