"""FA3 attention in Flax's ``attention_fn`` calling convention, the checks
that refuse what the kernels cannot honour, and cached (decode) attention.

Flax layers call ``attention_fn(query, key, value, bias=None, mask=None,
broadcast_dropout=..., dropout_rng=..., dropout_rate=..., deterministic=...,
dtype=..., precision=..., module=...)`` plus extras that differ between NNX
(``promote_dtype``, ``is_causal``) and linen (``force_fp32_for_softmax``,
``einsum_dot_general``, ``qk_attn_weights_einsum``,
``attn_weights_value_einsum``). ``FA3AttentionFn`` names every one of them
explicitly: linen filters the keyword arguments it passes through
``inspect.signature(attention_fn).parameters``, so a ``**kwargs`` catch-all
would make linen drop them silently instead of letting us check them.

The kernels never materialise the score matrix, so anything that needs it (an
arbitrary mask or bias, attention-weight dropout, sowing the weights) is
refused with a ValueError naming the option rather than ignored.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jax_fa3 import _validate
from jax_fa3.attention import attention as fa3_attention


# ---------------------------------------------------------------------------
# Checks shared by the attention_fn and the layers.
# ---------------------------------------------------------------------------

def check_fa3_options(causal: Any, window_size: Any, softcap: Any,
                      softmax_scale: Any) -> tuple[bool, tuple[int, int], float,
                                                   float | None]:
  """Validates the FA3-only options at construction time (static values)."""
  causal = _validate.check_bool("causal", causal)
  window = _validate.resolve_window(window_size)
  softcap = _validate.resolve_softcap(softcap)
  if softmax_scale is not None:
    # head_dim is unknown here; 1 is a placeholder that only affects the
    # default, which we do not use when a scale is given.
    softmax_scale = _validate.resolve_scale(softmax_scale, 1)
  return causal, window, softcap, softmax_scale


def check_mask(mask: Any) -> None:
  if mask is not None:
    raise ValueError(
        "mask is not supported by jax_fa3 (the FA3 kernels never materialise"
        " the score matrix, so an arbitrary boolean mask cannot be applied);"
        " express causal / sliding-window masking with causal= and"
        " window_size=, or use flax's dot_product_attention for this call")


def check_bias(bias: Any) -> None:
  if bias is not None:
    raise ValueError(
        "bias is not supported by jax_fa3 (no additive score bias in the FA3"
        " kernels); use flax's dot_product_attention for biased attention")


def check_sow_weights(sow_weights: bool) -> None:
  if sow_weights:
    raise ValueError(
        "sow_weights=True is not supported by jax_fa3: the FA3 kernels never"
        " materialise the attention weights, so there is nothing to sow")


def check_dropout(dropout_rate: float, deterministic: bool) -> None:
  """Refuses attention-weight dropout that would actually be applied.

  Same condition as flax's dot_product_attention_weights: dropout happens iff
  ``not deterministic and dropout_rate > 0``.
  """
  if dropout_rate > 0.0 and not deterministic:
    raise ValueError(
        f"dropout_rate={dropout_rate} with deterministic=False is not"
        " supported by jax_fa3 (the FA3 kernels have no attention-weight"
        " dropout); set dropout_rate=0.0 or call with deterministic=True")


def check_segment_ids(segment_ids: Any, *, uses_fa3: bool, decode: bool) -> None:
  """segment_ids need the FA3 path and full-sequence attention."""
  if segment_ids is None:
    return
  if not uses_fa3:
    raise ValueError(
        "segment_ids is a jax_fa3 option: with a custom attention_fn express"
        " the segments as a mask instead")
  if decode:
    raise ValueError(
        "segment_ids is not supported with decode=True (one cached token per"
        " call); pass it to the full-sequence call")


def check_is_causal(is_causal: bool, seqlen_q: int, seqlen_k: int) -> None:
  """flax's ``is_causal`` is top-left aligned (``jnp.tril``); FA3's causal is
  bottom-right aligned. They agree only when the lengths are equal."""
  if is_causal and seqlen_q != seqlen_k:
    raise ValueError(
        f"is_causal=True with query length {seqlen_q} != key length"
        f" {seqlen_k}: flax aligns that mask top-left, FA3 bottom-right;"
        " construct the layer with causal=True for FA3's bottom-right"
        " convention instead")


def promote(q, k, v, dtype):
  """flax's promote_dtype for (q, k, v): cast all to ``dtype`` or, if None, to
  their common (inexact) type, as flax's dot_product_attention does first."""
  if dtype is None:
    dtype = jnp.result_type(q, k, v)
    if not jnp.issubdtype(dtype, jnp.inexact):
      dtype = jnp.promote_types(jnp.float32, dtype)
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


# ---------------------------------------------------------------------------
# attention_fn for existing Flax layers.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FA3AttentionFn:
  """A Flax ``attention_fn`` that runs ``jax_fa3.attention``.

  Frozen (hashable by value) so that an NNX module holding it as a static
  attribute gets an equal graphdef across instances built with the same
  options, and ``nnx.jit`` does not retrace for each of them.

  Build it with ``make_attention_fn``; see there for the semantics.
  """

  causal: bool = False
  window_size: tuple[int, int] = (-1, -1)
  softcap: float = 0.0
  softmax_scale: float | None = None

  def __call__(self,
               query: jax.Array,
               key: jax.Array,
               value: jax.Array,
               bias: jax.Array | None = None,
               mask: jax.Array | None = None,
               broadcast_dropout: bool = True,
               dropout_rng: jax.Array | None = None,
               dropout_rate: float = 0.0,
               deterministic: bool = False,
               dtype: Any = None,
               precision: Any = None,
               module: Any = None,
               promote_dtype: Callable[..., Any] | None = None,
               is_causal: bool = False,
               force_fp32_for_softmax: bool = False,
               einsum_dot_general: Callable[..., Any] | None = None,
               qk_attn_weights_einsum: Callable[..., Any] | None = None,
               attn_weights_value_einsum: Callable[..., Any] | None = None,
               *,
               segment_ids: Any = None):
    """Same signature as ``flax.nnx.dot_product_attention`` /
    ``flax.linen.dot_product_attention`` (the union of both), plus the
    keyword-only ``segment_ids`` of ``jax_fa3.attention`` (packed sequences:
    one int32 (batch..., length) array, or a (q, kv) pair), which the stock
    layers never pass but a direct caller may.

    ``query`` (batch..., q_length, num_heads, head_dim), ``key``/``value``
    (batch..., kv_length, num_kv_heads, head_dim) with ``num_heads %
    num_kv_heads == 0`` (GQA without repeating K/V). Returns (batch...,
    q_length, num_heads, head_dim) in the promoted dtype.

    Accepted and irrelevant to the kernel: ``broadcast_dropout``,
    ``dropout_rng`` (no dropout is ever applied), ``precision`` (the kernel
    always accumulates in float32), ``force_fp32_for_softmax`` (the kernel's
    softmax is always float32).
    """
    del broadcast_dropout, dropout_rng, precision, force_fp32_for_softmax
    check_bias(bias)
    check_mask(mask)
    check_dropout(dropout_rate, deterministic)
    if module is not None:
      # Both NNX and linen pass module= exactly when sow_weights=True.
      check_sow_weights(True)
    for name, fn in (("einsum_dot_general", einsum_dot_general),
                     ("qk_attn_weights_einsum", qk_attn_weights_einsum),
                     ("attn_weights_value_einsum", attn_weights_value_einsum)):
      if fn is not None:
        raise ValueError(
            f"{name} is not supported by jax_fa3 (custom/quantised einsums"
            " cannot be injected into the FA3 kernels)")
    if promote_dtype is not None:
      query, key, value = promote_dtype((query, key, value), dtype=dtype)
    else:
      query, key, value = promote(query, key, value, dtype)
    check_is_causal(is_causal, query.shape[-3], key.shape[-3])
    return fa3_attention(query, key, value,
                         softmax_scale=self.softmax_scale,
                         causal=self.causal or bool(is_causal),
                         window_size=self.window_size,
                         softcap=self.softcap,
                         segment_ids=segment_ids)


def make_attention_fn(*,
                      causal: bool = False,
                      window_size: tuple[int, int] = (-1, -1),
                      softcap: float = 0.0,
                      softmax_scale: float | None = None) -> FA3AttentionFn:
  """An ``attention_fn`` for ``flax.nnx.MultiHeadAttention`` and
  ``flax.linen.MultiHeadDotProductAttention`` that runs ``jax_fa3.attention``.

  Mirrors the ``attention_fn`` contract of flax 0.12 (``dot_product_attention``
  in flax/nnx/nn/attention.py and flax/linen/attention.py): layout (batch...,
  length, heads, head_dim), GQA when the key/value have fewer heads.

  Args:
    causal: FA3 causal mask, bottom-right aligned when q_length != kv_length
      (query ``i`` sees keys ``j <= i + kv_length - q_length``). A layer
      calling with ``is_causal=True`` (NNX) also turns it on, but only for
      q_length == kv_length, where flax's top-left convention agrees.
    window_size: ``(left, right)`` sliding window, -1 = unbounded (see
      ``jax_fa3.attention``).
    softcap: if > 0, scores become ``softcap * tanh(scores / softcap)``.
    softmax_scale: multiplier of ``q @ k^T``; default ``1/sqrt(head_dim)``,
      flax's scaling.

  Returns:
    A hashable callable with flax's ``attention_fn`` signature. It raises
    ValueError naming the option for what the kernels cannot do: a non-None
    ``mask`` or ``bias``, dropout (``dropout_rate > 0`` and not
    ``deterministic``), ``sow_weights=True`` (``module`` given), custom
    einsums. Note: NNX/linen layers in ``decode`` mode always pass a cache
    mask, so use ``FA3MultiHeadAttention`` / ``FA3MultiHeadDotProductAttention``
    for decoding.

  Dtypes: float16 / bfloat16 (float32 on the CPU backend only); set the
  layer's ``dtype`` accordingly on GPU.
  """
  causal, window, softcap, softmax_scale = check_fa3_options(
      causal, window_size, softcap, softmax_scale)
  return FA3AttentionFn(causal=causal, window_size=window, softcap=softcap,
                        softmax_scale=softmax_scale)


# ---------------------------------------------------------------------------
# Cached (decode) attention.
# ---------------------------------------------------------------------------
#
# A decode step has one query at position c = cache_index and a cache of L
# static slots of which only a dynamic prefix is valid: the query must see
# keys [lo, c] with lo = 0, or lo = max(0, c - left) with a sliding window.
# jax_fa3.attention's masks are static (causal/window are compile-time
# attributes), so a single call cannot hide a dynamic number of slots (the
# only single-call formulation puts the query at row c of an L-row causal
# problem: O(L^2) work for one token).
#
# Instead: split the visible count n = c - lo + 1 into its binary digits.
# For each bit k of n the 2^k keys that follow the higher bits' blocks form a
# contiguous, fully visible block of static size 2^k, read with
# lax.dynamic_slice and attended with no mask. The per-block outputs are
# merged exactly by their log-sum-exp (the same rescaling FlashAttention uses
# between tiles): out = sum_k exp(lse_k - lse) out_k. A block whose bit is 0
# is still computed (static shapes) and given lse = -inf, weight 0.
#
# Cost: floor(log2 L) + 1 kernel calls over at most 2L - 1 key rows per step,
# every row attended only once when its block is taken. Computing every block
# unconditionally rather than under lax.cond avoids a device-to-host sync per
# conditional on GPU, which would cost more than reading the extra keys.
#
# Gradients: the kernel's LSE carries no gradient (as in FA3), so a VJP of
# the merge would be wrong; the custom_vjp below refuses instead.


def _decode_forward(q, k_cache, v_cache, cache_index, window_left, softcap,
                    softmax_scale):
  length = k_cache.shape[-3]
  # Past the end flax's dynamic_update_slice clamps the write to the last
  # slot and its mask shows every slot; clamping c gives the same.
  c = jnp.minimum(jnp.asarray(cache_index, jnp.int32), length - 1)
  lo = jnp.int32(0) if window_left < 0 else jnp.maximum(0, c - window_left)
  n = c - lo + 1
  outs, lses = [], []
  for bit in reversed(range(length.bit_length())):
    size = 1 << bit
    # Blocks are laid out from lo in decreasing size: this one starts after
    # the blocks of all higher bits of n.
    start = lo + ((n >> (bit + 1)) << (bit + 1))
    kb = lax.dynamic_slice_in_dim(k_cache, start, size, axis=-3)
    vb = lax.dynamic_slice_in_dim(v_cache, start, size, axis=-3)
    out, lse = fa3_attention(q, kb, vb, softmax_scale=softmax_scale,
                             softcap=softcap, return_lse=True)
    taken = ((n >> bit) & 1) == 1
    outs.append(out.astype(jnp.float32))
    lses.append(jnp.where(taken, lse, -jnp.inf))
  lse = jnp.stack(lses)                      # (blocks, *batch, h, 1)
  m = jnp.max(lse, axis=0)                    # finite: n >= 1
  w = jnp.exp(lse - m)
  w = w / jnp.sum(w, axis=0)
  w = jnp.swapaxes(w, -1, -2)[..., None]      # (blocks, *batch, 1, h, 1)
  return jnp.sum(w * jnp.stack(outs), axis=0).astype(q.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _decode(q, k_cache, v_cache, cache_index, window_left, softcap,
            softmax_scale):
  return _decode_forward(q, k_cache, v_cache, cache_index, window_left,
                         softcap, softmax_scale)


def _decode_fwd(q, k_cache, v_cache, cache_index, window_left, softcap,
                softmax_scale):
  return _decode_forward(q, k_cache, v_cache, cache_index, window_left,
                         softcap, softmax_scale), None


def _decode_bwd(window_left, softcap, softmax_scale, res, ct):
  del window_left, softcap, softmax_scale, res, ct
  raise ValueError(
      "gradients through decode=True (cached) attention are not supported by"
      " jax_fa3: decoding is inference-only; differentiate the full-sequence"
      " call (decode=False) instead")


_decode.defvjp(_decode_fwd, _decode_bwd)


def decode_attention(q: jax.Array,
                     k_cache: jax.Array,
                     v_cache: jax.Array,
                     cache_index: jax.Array,
                     *,
                     window_left: int = -1,
                     softcap: float = 0.0,
                     softmax_scale: float | None = None) -> jax.Array:
  """One autoregressive step against a key/value cache, with FA3 kernels.

  Args:
    q: (batch..., 1, heads, head_dim): the token at position ``cache_index``.
    k_cache, v_cache: (batch..., max_length, kv_heads, head_dim), same dtype
      as ``q``, already holding this token's key/value at ``cache_index``.
    cache_index: int32 scalar (traced), the query's position.
    window_left: the query sees keys ``[cache_index - window_left,
      cache_index]`` (-1: from 0), i.e. exactly what the full-sequence causal
      (+ sliding window) call shows that row.
    softcap, softmax_scale: as ``jax_fa3.attention``.

  Returns:
    (batch..., 1, heads, head_dim) in ``q``'s dtype. Forward only: a
    gradient through it raises ValueError.
  """
  return _decode(q, k_cache, v_cache, cache_index, int(window_left),
                 float(softcap), softmax_scale)
