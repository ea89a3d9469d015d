"""The attention primitive: ``jax.ffi.ffi_call`` into the native handlers,
wrapped in a ``custom_vjp`` whose backward calls the backward FFI target.

Data flows one way: public API (``jax_fa3.attention``,
``jax_fa3.attention_varlen``) -> this module -> FFI handler
(cc/ffi/handlers.cc) -> AttnParams -> backend kernel.

Dense and varlen (packed) calls share the two FFI targets: a varlen call
passes its offsets (cu_seqlens_q, cu_seqlens_k[, seqused_q][, seqused_k]) as
extra operands and ``varlen=True`` among the attributes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax_fa3 import _ffi
from jax_fa3 import _validate


@dataclasses.dataclass(frozen=True)
class AttnConfig:
  """Static (hashable) attributes of one attention call."""

  softmax_scale: float
  causal: bool
  window_left: int
  window_right: int
  softcap: float
  deterministic: bool = False
  # FA3's sm_margin: > 0 when kernels launched alongside the forward on
  # other streams (the ring's NCCL collective-permutes) need SMs; the Hopper
  # forward then runs one CTA per tile instead of a persistent grid.
  sm_margin: int = 0

  @classmethod
  def from_args(cls, head_dim: int, *, softmax_scale, causal: bool, window_size, softcap,
                deterministic: bool, sm_margin: int = 0) -> "AttnConfig":
    """Validated config from the public arguments (``causal`` and
    ``deterministic`` already checked booleans); causal forces
    window_right = 0 (mask.h)."""
    left, right = _validate.resolve_window(window_size)
    return cls(softmax_scale=_validate.resolve_scale(softmax_scale, head_dim), causal=causal,
               window_left=left, window_right=0 if causal else right,
               softcap=_validate.resolve_softcap(softcap), deterministic=deterministic,
               sm_margin=_validate.check_sm_margin(sm_margin))

  def ffi_attrs(self, varlen: "VarlenSpec | None" = None) -> dict:
    # FFI attributes must be numpy scalars of the handler's exact type. Every
    # call carries the varlen attributes too (one handler serves both
    # layouts, cc/ffi/fill_varlen.h); a dense call has varlen=False.
    return dict(
        softmax_scale=np.float32(self.softmax_scale),
        causal=np.bool_(self.causal),
        window_left=np.int32(self.window_left),
        window_right=np.int32(self.window_right),
        softcap=np.float32(self.softcap),
        **(varlen or _DENSE).ffi_attrs(),
    )

  def fwd_attrs(self, varlen: "VarlenSpec | None" = None) -> dict:
    """ffi_attrs plus what only the forward handler takes."""
    return dict(self.ffi_attrs(varlen), sm_margin=np.int32(self.sm_margin))


@dataclasses.dataclass(frozen=True)
class VarlenSpec:
  """Static (hashable) part of a varlen call: the max lengths and which of
  the optional seqused operands are present. ``varlen=False`` marks a dense
  call."""

  max_seqlen_q: int = 0
  max_seqlen_k: int = 0
  has_seqused_q: bool = False
  has_seqused_k: bool = False
  varlen: bool = True

  def ffi_attrs(self) -> dict:
    return dict(
        varlen=np.bool_(self.varlen),
        max_seqlen_q=np.int32(self.max_seqlen_q),
        max_seqlen_k=np.int32(self.max_seqlen_k),
        has_seqused_q=np.bool_(self.has_seqused_q),
        has_seqused_k=np.bool_(self.has_seqused_k),
    )


_DENSE = VarlenSpec(varlen=False)


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
  return call(q, k, v, **cfg.fwd_attrs())


def _grad_types(q, k, v):
  """(dq, dk, dv) result types: the inputs' shapes and dtypes."""
  return tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))


def bwd_call(q, k, v, out, lse, dout, cfg: AttnConfig):
  """Raw backward: returns (dq, dk, dv) in the input dtype."""
  _ffi.extension()
  out_types = _grad_types(q, k, v)
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


# ------------------------------------------------------------------ varlen ----
# Packed q (total_q, heads, d), k/v (total_k, kv_heads, d); LSE (heads,
# total_q) as FA3's varlen. Not routed through the sharding rules: a packed
# axis mixes sequences, so it is not split per shard (under jit with sharded
# inputs XLA gathers them). Under vmap the call runs once per vmapped entry
# ("sequential"): extra leading dims cannot fold into a packed axis.


def _offsets(cu_q, cu_k, used_q, used_k):
  """The extra operands, in the handler's order (absent seqused omitted)."""
  return (cu_q, cu_k) + tuple(x for x in (used_q, used_k) if x is not None)


def varlen_fwd_call(q, k, v, cu_q, cu_k, used_q, used_k, cfg: AttnConfig, spec: VarlenSpec):
  """Raw varlen forward: (out, lse), lse float32 (heads, total_q)."""
  _ffi.extension()
  out_types = (
      jax.ShapeDtypeStruct(q.shape, q.dtype),
      jax.ShapeDtypeStruct((q.shape[-2], q.shape[-3]), jnp.float32),
  )
  call = jax.ffi.ffi_call(_ffi.FWD_TARGET, out_types, vmap_method="sequential")
  return call(q, k, v, *_offsets(cu_q, cu_k, used_q, used_k), **cfg.fwd_attrs(spec))


def varlen_bwd_call(q, k, v, out, lse, dout, cu_q, cu_k, used_q, used_k, cfg: AttnConfig,
                    spec: VarlenSpec):
  """Raw varlen backward: (dq, dk, dv) for the packed tensors."""
  _ffi.extension()
  out_types = _grad_types(q, k, v)
  call = jax.ffi.ffi_call(_ffi.BWD_TARGET, out_types, vmap_method="sequential")
  return call(q, k, v, out, lse, dout.astype(q.dtype), *_offsets(cu_q, cu_k, used_q, used_k),
              deterministic=np.bool_(cfg.deterministic), **cfg.ffi_attrs(spec))


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def varlen_attention_with_lse(q, k, v, cu_q, cu_k, used_q, used_k, cfg: AttnConfig,
                              spec: VarlenSpec):
  """(out, lse) of packed sequences; the offsets and lse get no gradient."""
  return varlen_fwd_call(q, k, v, cu_q, cu_k, used_q, used_k, cfg, spec)


def _varlen_vjp_fwd(q, k, v, cu_q, cu_k, used_q, used_k, cfg, spec):
  out, lse = varlen_fwd_call(q, k, v, cu_q, cu_k, used_q, used_k, cfg, spec)
  return (out, lse), (q, k, v, out, lse, cu_q, cu_k, used_q, used_k)


def _varlen_vjp_bwd(cfg, spec, res, cts):
  q, k, v, out, lse, cu_q, cu_k, used_q, used_k = res
  dout, _ = cts
  dq, dk, dv = varlen_bwd_call(q, k, v, out, lse, dout, cu_q, cu_k, used_q, used_k, cfg, spec)
  # Integer offsets: no cotangent.
  return dq, dk, dv, None, None, None, None


varlen_attention_with_lse.defvjp(_varlen_vjp_fwd, _varlen_vjp_bwd)
