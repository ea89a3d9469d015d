"""``FA3MultiHeadAttention``: a drop-in for ``flax.nnx.MultiHeadAttention``
(flax 0.12) whose attention core is ``jax_fa3.attention``.

It subclasses the flax layer: the constructor, the projections
(query/key/value/out LinearGeneral, optional query_ln/key_ln), the parameter
names and shapes, ``init_cache`` / ``set_view`` and the cache variables
(cached_key, cached_value, cache_index) are flax's own, so weights and caches
move across unchanged. Only ``__call__`` is replaced, so that the attention
is expressed with the kernel's static causal/window semantics instead of a
mask array (the kernels never build one).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.module import first_from
from flax.nnx.nn import dtypes
from flax.nnx.nn import initializers
from flax.nnx.nn.linear import default_kernel_init
from flax.typing import Dtype, DotGeneralT, Initializer, PrecisionLike
from flax.typing import PromoteDtypeFn

from jax_fa3.flax import attention_fn as afn


class FA3MultiHeadAttention(nnx.MultiHeadAttention):
  """Multi-head attention on FlashAttention-3 kernels, for Flax NNX.

  Mirrors ``flax.nnx.MultiHeadAttention`` (flax 0.12.8): same constructor
  arguments in the same order, same ``__call__`` signature, same parameters
  (names, shapes, dtypes) and cache layout; a state saved from one loads into
  the other. In addition, keyword-only:

  Args:
    causal: causal self-attention (FA3 convention, bottom-right aligned when
      the query and key lengths differ). Replaces passing
      ``nnx.make_causal_mask(...)`` as ``mask``.
    window_size: ``(left, right)`` sliding window, -1 = unbounded.
    softcap: if > 0, scores become ``softcap * tanh(scores / softcap)``.
    softmax_scale: multiplier of ``q @ k^T``; default ``1/sqrt(head_dim)``
      (flax's scaling).
    attention_fn: default None = the FA3 kernel with the options above (a
      ``make_attention_fn(...)`` result is the same, with its options). Any
      other function (flax's contract) makes the layer behave exactly like
      ``nnx.MultiHeadAttention`` with it, and the FA3 options must then keep
      their defaults.

  ``num_kv_heads`` (flax's own argument) < ``num_heads`` gives GQA: the K/V
  projections produce ``num_kv_heads`` heads and the kernel indexes them
  without repeating.

  Shapes: ``inputs_q`` (batch..., q_length, in_features), ``inputs_k`` /
  ``inputs_v`` (batch..., kv_length, in_kv_features); output (batch...,
  q_length, out_features). ``head_dim = qkv_features // num_heads`` must be
  a multiple of 8 in [8, 256].

  Dtypes: the kernel runs in the promoted computation dtype, which must be
  float16 / bfloat16 on GPU (float32 works on the CPU backend only): set
  ``dtype=jnp.bfloat16`` (and ``init_cache(..., dtype=jnp.bfloat16)``).

  Refused with ValueError naming the option (the kernels never materialise
  the score matrix): a non-None ``mask``, ``sow_weights=True``, dropout that
  would be applied (``dropout_rate > 0`` and not deterministic), and
  ``is_causal=True`` with different query and key lengths (flax aligns that
  top-left; use ``causal=True``).

  Decode (``decode=True`` after ``init_cache``): one token per call, as in
  flax; the token at position ``cache_index`` attends to cache slots
  ``[0, cache_index]`` (``[cache_index - left, cache_index]`` with a left
  window), which is the row the full-sequence causal call computes for it.
  See ``attention_fn.decode_attention``. Inference only (no gradient).
  """

  def __init__(
      self,
      num_heads: int,
      in_features: int,
      qkv_features: int | None = None,
      out_features: int | None = None,
      num_kv_heads: int | None = None,
      in_kv_features: int | None = None,
      *,
      dtype: Dtype | None = None,
      param_dtype: Dtype = jnp.float32,
      broadcast_dropout: bool = True,
      dropout_rate: float = 0.0,
      deterministic: bool | None = None,
      precision: PrecisionLike = None,
      kernel_init: Initializer = default_kernel_init,
      out_kernel_init: Initializer | None = None,
      bias_init: Initializer = initializers.zeros_init(),
      out_bias_init: Initializer | None = None,
      use_bias: bool = True,
      attention_fn: Callable[..., jax.Array] | None = None,
      decode: bool | None = None,
      normalize_qk: bool = False,
      qkv_promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
      out_promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
      ln_promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
      qkv_dot_general: DotGeneralT | None = None,
      out_dot_general: DotGeneralT | None = None,
      qkv_dot_general_cls: Any = None,
      out_dot_general_cls: Any = None,
      rngs: rnglib.Rngs,
      keep_rngs: bool = True,
      kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
      out_kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
      bias_metadata: Mapping[str, Any] = MappingProxyType({}),
      out_bias_metadata: Mapping[str, Any] = MappingProxyType({}),
      query_ln_scale_metadata: Mapping[str, Any] = MappingProxyType({}),
      key_ln_scale_metadata: Mapping[str, Any] = MappingProxyType({}),
      # FA3 options (not in flax).
      causal: bool = False,
      window_size: tuple[int, int] = (-1, -1),
      softcap: float = 0.0,
      softmax_scale: float | None = None,
  ):
    causal, window_size, softcap, softmax_scale = afn.check_fa3_options(
        causal, window_size, softcap, softmax_scale)
    fa3_fn = afn.FA3AttentionFn(causal=causal, window_size=window_size,
                                softcap=softcap, softmax_scale=softmax_scale)
    if attention_fn is not None and fa3_fn != afn.FA3AttentionFn():
      # A custom attention_fn would silently ignore them.
      raise ValueError(
          "causal / window_size / softcap / softmax_scale apply to the FA3"
          " kernel only; with a custom attention_fn leave them at their"
          " defaults (or pass jax_fa3.flax.make_attention_fn(...))")
    if isinstance(attention_fn, afn.FA3AttentionFn):
      # make_attention_fn(...) given: same kernel, so keep the FA3 path
      # (which, unlike flax's, can decode) with its options.
      fa3_fn, attention_fn = attention_fn, None
    super().__init__(
        num_heads, in_features, qkv_features, out_features, num_kv_heads,
        in_kv_features, dtype=dtype, param_dtype=param_dtype,
        broadcast_dropout=broadcast_dropout, dropout_rate=dropout_rate,
        deterministic=deterministic, precision=precision,
        kernel_init=kernel_init, out_kernel_init=out_kernel_init,
        bias_init=bias_init, out_bias_init=out_bias_init, use_bias=use_bias,
        attention_fn=fa3_fn if attention_fn is None else attention_fn,
        decode=decode, normalize_qk=normalize_qk,
        qkv_promote_dtype=qkv_promote_dtype,
        out_promote_dtype=out_promote_dtype,
        ln_promote_dtype=ln_promote_dtype, qkv_dot_general=qkv_dot_general,
        out_dot_general=out_dot_general,
        qkv_dot_general_cls=qkv_dot_general_cls,
        out_dot_general_cls=out_dot_general_cls, rngs=rngs,
        keep_rngs=keep_rngs, kernel_metadata=kernel_metadata,
        out_kernel_metadata=out_kernel_metadata, bias_metadata=bias_metadata,
        out_bias_metadata=out_bias_metadata,
        query_ln_scale_metadata=query_ln_scale_metadata,
        key_ln_scale_metadata=key_ln_scale_metadata)
    # Static attributes (part of the graphdef, not of the state).
    self.causal = fa3_fn.causal
    self.window_size = fa3_fn.window_size
    self.softcap = fa3_fn.softcap
    self.softmax_scale = fa3_fn.softmax_scale
    self.uses_fa3 = attention_fn is None

  def __call__(
      self,
      inputs_q: jax.Array,
      inputs_k: jax.Array | None = None,
      inputs_v: jax.Array | None = None,
      *,
      mask: jax.Array | None = None,
      deterministic: bool | None = None,
      rngs: rnglib.Rngs | rnglib.RngStream | None = None,
      sow_weights: bool = False,
      decode: bool | None = None,
      is_causal: bool = False,
      out_sharding=None,
      qkv_sharding=None,
      input_positions=None,
      segment_ids=None,
  ) -> jax.Array:
    """Applies multi-head attention; arguments as
    ``flax.nnx.MultiHeadAttention.__call__``.

    Args:
      inputs_q: (batch..., q_length, in_features).
      inputs_k: (batch..., kv_length, in_kv_features); None = ``inputs_q``.
      inputs_v: like ``inputs_k``; None = ``inputs_k``.
      mask: must be None on the FA3 path (ValueError otherwise).
      deterministic: overrides the constructor's; dropout must be off.
      rngs: unused on the FA3 path (no dropout); accepted for parity.
      sow_weights: must be False on the FA3 path.
      decode: overrides the constructor's; one token per call.
      is_causal: turns on causal attention for this call (q_length must equal
        kv_length; see the class docstring).
      out_sharding, qkv_sharding: passed to the projections, as in flax.
      input_positions: newer flax (>= 0.12.10) decodes at explicit cache
        positions; not supported on the FA3 path (ValueError if given), which
        decodes at the layer's cache index.
      segment_ids: jax_fa3 only (not in flax): packed sequences, an int32
        (batch..., length) array for self-attention or a pair (q_segment_ids,
        kv_segment_ids); tokens attend within their segment (see
        ``jax_fa3.attention``). Not with decode or a custom attention_fn.

    Returns:
      (batch..., q_length, out_features).
    """
    if not self.uses_fa3:
      afn.check_segment_ids(segment_ids, uses_fa3=False, decode=False)
      # Only forward input_positions where the installed flax knows it.
      extra = {} if input_positions is None else {"input_positions": input_positions}
      return super().__call__(
          inputs_q, inputs_k, inputs_v, mask=mask, deterministic=deterministic,
          rngs=rngs, sow_weights=sow_weights, decode=decode,
          is_causal=is_causal, out_sharding=out_sharding,
          qkv_sharding=qkv_sharding, **extra)

    if input_positions is not None:
      raise ValueError(
          "input_positions is not supported by FA3MultiHeadAttention: decode "
          "attends to the cache up to the layer's cache_index")

    # Refuse before any work what the kernel cannot honour.
    afn.check_mask(mask)
    afn.check_sow_weights(sow_weights)
    if self.dropout_rate > 0.0:
      # As flax: `deterministic` is required only when dropout is configured.
      deterministic = first_from(
          deterministic, self.deterministic,
          error_msg="""No `deterministic` argument was provided to
          FA3MultiHeadAttention as either a __call__ argument, class
          attribute, or nnx.flag.""")
      afn.check_dropout(self.dropout_rate, deterministic)
    del rngs  # dropout is never applied, so no rng is drawn

    if inputs_k is None:
      if inputs_v is not None:
        raise ValueError(
            '`inputs_k` cannot be None if `inputs_v` is not None. To have both'
            ' `inputs_k` and `inputs_v` be the same value, pass in the value'
            ' to `inputs_k` and leave `inputs_v` as None.')
      inputs_k = inputs_q
    if inputs_v is None:
      inputs_v = inputs_k
    if inputs_q.shape[-1] != self.in_features:
      raise ValueError(
          f'Incompatible input dimension, got {inputs_q.shape[-1]} '
          f'but module expects {self.in_features}.')

    query = self.query(inputs_q, out_sharding=qkv_sharding)
    key = self.key(inputs_k, out_sharding=qkv_sharding)
    value = self.value(inputs_v, out_sharding=qkv_sharding)
    if self.normalize_qk:
      assert self.query_ln is not None and self.key_ln is not None
      query = self.query_ln(query)
      key = self.key_ln(key)

    decode = first_from(
        decode, self.decode,
        error_msg="""No `decode` argument was provided to
        FA3MultiHeadAttention as either a __call__ argument, class
        attribute, or nnx.flag.""")

    afn.check_segment_ids(segment_ids, uses_fa3=True, decode=decode)
    if decode:
      x = self._decode_step(query, key, value)
    else:
      query, key, value = afn.promote(query, key, value, self.dtype)
      afn.check_is_causal(is_causal, query.shape[-3], key.shape[-3])
      x = afn.fa3_attention(query, key, value,
                            softmax_scale=self.softmax_scale,
                            causal=self.causal or bool(is_causal),
                            window_size=self.window_size,
                            softcap=self.softcap,
                            segment_ids=segment_ids)
    return self.out(x, out_sharding=out_sharding)

  def _decode_step(self, query, key, value):
    """Writes this token's key/value at cache_index, attends to the prefix.

    Cache bookkeeping is flax's (same variables, same shape check, same
    update); only the masked attention is replaced by decode_attention.
    """
    if (self.cached_key is None or self.cached_value is None
        or self.cache_index is None):
      raise ValueError(
          'Autoregressive cache not initialized, call ``init_cache`` first.')
    *batch_dims, _, num_kv_heads, depth_per_head = self.cached_key.shape
    expected_shape = tuple(batch_dims) + (1, num_kv_heads, depth_per_head)
    if expected_shape != key.shape:
      raise ValueError(
          'Autoregressive cache shape error, '
          f'expected key shape {expected_shape} instead got {key.shape}.')
    cur_index = self.cache_index[...]
    zero = jnp.array(0, dtype=lax.dtype(cur_index.dtype))
    indices = (zero,) * len(batch_dims) + (cur_index, zero, zero)
    # The cache keeps the dtype init_cache gave it (flax would fail on a
    # mismatch inside dynamic_update_slice; casting is the evident intent).
    key = lax.dynamic_update_slice(
        self.cached_key[...], key.astype(self.cached_key.dtype), indices)
    value = lax.dynamic_update_slice(
        self.cached_value[...], value.astype(self.cached_value.dtype), indices)
    self.cached_key[...] = key
    self.cached_value[...] = value
    self.cache_index[...] += 1
    query, key, value = afn.promote(query, key, value, self.dtype)
    # The cache prefix is causal by construction; a right window is moot
    # (later slots are not written yet), a left window still applies.
    return afn.decode_attention(
        query, key, value, cur_index, window_left=self.window_size[0],
        softcap=self.softcap, softmax_scale=self.softmax_scale)
