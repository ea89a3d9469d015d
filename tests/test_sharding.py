"""Partitioning rule of the primitive (jax_fa3.parallel.sharding).

Under jit with q/k/v sharded over batch and/or heads the kernel must run per
shard: the compiled HLO has no all-gather / all-to-all / collective-permute,
and the numbers match the single-device call. A sharded sequence axis runs
the ring (collective-permutes, no all-gather). The multi-device cases need 8
host devices and run in a subprocess (see tests/_multiprocess_worker.py);
the 2-process ``jax.distributed`` case starts its own two processes.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax_fa3 import primitives
from jax_fa3.parallel import sharding

import _multiprocess_worker as mpw
from conftest import make_qkv, randn

child_only = pytest.mark.skipif(not mpw.in_child(),
                                reason="multi-device: runs in test_multidevice's subprocess")
parent_only = pytest.mark.skipif(mpw.in_child(), reason="run by the parent process")

COLLECTIVES = r"all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter"


@parent_only
def test_multidevice():
  mpw.run_module_in_subprocess(__file__)


@parent_only
def test_two_process_distributed():
  """2 processes x 2 CPU devices (gloo): ring over the 4-device sequence
  axis and the batch-partitioned primitive equal the single-device call."""
  outs = mpw.run_distributed(num_processes=2, devices_per_process=2)
  for out in outs:
    assert out.strip().splitlines()[-1].startswith("OK"), out[-2000:]


def _mesh():
  return Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("b", "h", "s"))


def _cfg(d, **kw):
  base = dict(softmax_scale=d ** -0.5, causal=False, window_left=-1, window_right=-1,
              softcap=0.0)
  base.update(kw)
  return primitives.AttnConfig(**base)


def _fwd_bwd(attn, cfg):
  def f(q, k, v, dout):
    (out, lse), f_vjp = jax.vjp(lambda *a: attn(*a, cfg), q, k, v)
    return (out, lse) + f_vjp((dout, jnp.zeros_like(lse)))
  return f


def _check(rng, q_spec, kv_spec, cfg_kw, shape=(4, 16, 4, 2, 16), seq_parallel="ring"):
  b, s, h, hk, d = shape
  q, k, v = make_qkv(rng, b, s, s, h, hk, d, jnp.float32)
  dout = randn(rng, q.shape, jnp.float32)
  cfg = _cfg(d, **cfg_kw)
  mesh = _mesh()
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
  args = (put(q, q_spec), put(k, kv_spec), put(v, kv_spec), put(dout, q_spec))
  part = jax.jit(_fwd_bwd(
      lambda q, k, v, c: sharding.attention_with_lse(q, k, v, c, seq_parallel), cfg))
  hlo = part.lower(*args).compile().as_text()
  got = part(*args)
  want = _fwd_bwd(primitives.attention_with_lse, cfg)(q, k, v, dout)
  for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
    g, w = np.asarray(g), np.asarray(w)
    finite = np.isfinite(w)
    assert (np.isfinite(g) == finite).all(), name
    err = np.max(np.abs(np.where(finite, g - w, 0.0)))
    assert err <= 2e-5 * (1 + np.max(np.abs(np.where(finite, w, 0.0)))), f"{name}: {err}"
  return hlo, got


@child_only
@pytest.mark.parametrize("q_spec,kv_spec", [
    (P("b", None, "h", None), P("b", None, "h", None)),
    (P(("b", "h", "s"), None, None, None), P(("b", "h", "s"), None, None, None)),
    (P(None, None, ("h", "s"), None), P(None, None, ("h", "s"), None)),
], ids=["batch+heads", "batch8", "heads4"])
def test_batch_head_sharding_runs_per_shard(rng, q_spec, kv_spec):
  shape = (8, 16, 4, 4, 16) if q_spec[0] == ("b", "h", "s") else (4, 16, 8, 4, 16)
  hlo, got = _check(rng, q_spec, kv_spec, dict(causal=True, window_left=5, window_right=0,
                                               softcap=2.0), shape=shape)
  assert not re.search(COLLECTIVES, hlo), sorted(set(re.findall(COLLECTIVES, hlo)))
  assert got[0].sharding.spec[:3] == q_spec[:3] or got[0].sharding.is_equivalent_to(
      NamedSharding(_mesh(), q_spec), 4)


@child_only
def test_mqa_head_sharding_keeps_kv_replicated(rng):
  hlo, _ = _check(rng, P("b", None, "h", None), P("b", None, None, None), dict(causal=True),
                  shape=(2, 16, 4, 1, 16))
  # dK/dV are partial sums over the q-head shards: one all-reduce, no gather.
  assert sorted(set(re.findall(COLLECTIVES, hlo))) == ["all-reduce"]


@child_only
def test_gqa_heads_not_divisible_falls_back(rng):
  # 4-way head sharding, 2 kv heads: heads are gathered, numbers still exact.
  _check(rng, P(None, None, ("h", "s"), None), P(None, None, None, None), dict(),
         shape=(1, 16, 8, 2, 16))


@child_only
@pytest.mark.parametrize("seq_parallel", ["ring", "gather"])
def test_sequence_sharding(rng, seq_parallel):
  spec = P("b", "s", "h", None)
  hlo, _ = _check(rng, spec, spec, dict(causal=True, window_left=6, window_right=0),
                  seq_parallel=seq_parallel)
  if seq_parallel == "ring":
    assert "collective-permute" in hlo
    assert not re.search(r"all-gather|all-to-all", hlo)


@child_only
def test_gspmd_partitioner(rng):
  """The infer_sharding_from_operands path (Shardy off), where supported."""
  try:
    jax.config.update("jax_use_shardy_partitioner", False)
  except (AttributeError, KeyError, ValueError):
    pytest.skip("this jax has no GSPMD switch")
  try:
    hlo, _ = _check(rng, P("b", None, "h", None), P("b", None, "h", None), dict(causal=True))
    assert not re.search(COLLECTIVES, hlo)
  finally:
    jax.config.update("jax_use_shardy_partitioner", True)


@child_only
def test_vmap_over_sharded_axis(rng):
  """custom_partitioning has no batching rule: sharding.py's custom_vmap
  folds the vmapped dim into batch; it may itself be sharded."""
  q, k, v = make_qkv(rng, 2, 16, 16, 2, 2, 16, jnp.float32)
  q, k, v = (jnp.stack([x, 2 * x]) for x in (q, k, v))  # (vmap=2, b=2, ...)
  cfg = _cfg(16, causal=True)
  sh = NamedSharding(_mesh(), P("b", "h", None, None, None))
  args = [jax.device_put(x, sh) for x in (q, k, v)]
  f = jax.jit(jax.vmap(lambda q, k, v: sharding.attention_with_lse(q, k, v, cfg)[0]))
  hlo = f.lower(*args).compile().as_text()
  assert not re.search(COLLECTIVES, hlo)
  want = jax.vmap(lambda q, k, v: primitives.attention_with_lse(q, k, v, cfg)[0])(q, k, v)
  np.testing.assert_allclose(np.asarray(f(*args)), np.asarray(want), atol=2e-5, rtol=2e-5)
