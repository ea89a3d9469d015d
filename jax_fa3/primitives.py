"""The attention primitive: ``jax.ffi.ffi_call`` into the native handlers,
wrapped in a ``custom_vjp`` whose backward calls the backward FFI target.

Data flows one way: public API (``jax_fa3.attention``) -> this module ->
FFI handler (cc/ffi/handlers.cc) -> AttnParams -> backend kernel.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax_fa3 import _ffi


@dataclasses.dataclass(frozen=True)
class AttnConfig:
  """Static (hashable) attributes of one attention call."""

  softmax_scale: float
  causal: bool
  window_left: int
  window_right: int
  softcap: float
  deterministic: bool = False

  def ffi_attrs(self) -> dict:
    # FFI attributes must be numpy scalars of the handler's exact type.
    return dict(
        softmax_scale=np.float32(self.softmax_scale),
        causal=np.bool_(self.causal),
        window_left=np.int32(self.window_left),
        window_right=np.int32(self.window_right),
        softcap=np.float32(self.softcap),
    )


def _lse_shape(q_shape):
  # (*batch, seqlen_q, heads, d) -> (*batch, heads, seqlen_q), FA3's layout.
  return tuple(q_shape[:-3]) + (q_shape[-2], q_shape[-3])


def fwd_call(q, k, v, cfg: AttnConfig):
  """Raw forward: returns (out, lse) with lse float32 (*batch, heads, seqlen_q)."""
  _ffi.extension()
  out_types = (
      jax.ShapeDtypeStruct(q.shape, q.dtype),
      jax.ShapeDtypeStruct(_lse_shape(q.shape), jnp.float32),
  )
  # broadcast_all: under vmap the handler sees extra leading dims and folds
  # them into batch (cc/ffi/fill_params.cc).
  call = jax.ffi.ffi_call(_ffi.FWD_TARGET, out_types, vmap_method="broadcast_all")
  return call(q, k, v, **cfg.ffi_attrs())


def bwd_call(q, k, v, out, lse, dout, cfg: AttnConfig):
  """Raw backward: returns (dq, dk, dv) in the input dtype."""
  _ffi.extension()
  out_types = (
      jax.ShapeDtypeStruct(q.shape, q.dtype),
      jax.ShapeDtypeStruct(k.shape, k.dtype),
      jax.ShapeDtypeStruct(v.shape, v.dtype),
  )
  call = jax.ffi.ffi_call(_ffi.BWD_TARGET, out_types, vmap_method="broadcast_all")
  return call(q, k, v, out, lse, dout.astype(q.dtype),
              deterministic=np.bool_(cfg.deterministic), **cfg.ffi_attrs())


def _sharding():
  # Lazy: jax_fa3.parallel imports this module. The partitioned calls run
  # per shard over batch/heads (custom_partitioning) and run the ring when
  # the sequence axis is sharded; unsharded they lower to the plain call.
  from jax_fa3.parallel import sharding  # pylint: disable=g-import-not-at-top
  return sharding


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def attention_with_lse(q, k, v, cfg: AttnConfig):
  """(out, lse). lse carries no gradient, as in FA3 (its backward ignores it)."""
  out, lse = _sharding().partitioned_fwd(q, k, v, cfg)
  return out, lse


def _vjp_fwd(q, k, v, cfg):
  out, lse = _sharding().partitioned_fwd(q, k, v, cfg)
  # Save (out, lse): O(seqlen) residuals, the scores are recomputed.
  return (out, lse), (q, k, v, out, lse)


def _vjp_bwd(cfg, res, cts):
  q, k, v, out, lse = res
  dout, _ = cts  # lse is not differentiable (see attention_with_lse)
  dq, dk, dv = _sharding().partitioned_bwd(q, k, v, out, lse, dout, cfg)
  return dq, dk, dv


attention_with_lse.defvjp(_vjp_fwd, _vjp_bwd)
