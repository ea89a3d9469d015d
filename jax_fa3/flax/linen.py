"""``FA3MultiHeadDotProductAttention``: a drop-in for
``flax.linen.MultiHeadDotProductAttention`` (flax 0.12) whose attention core
is ``jax_fa3.attention``.

It subclasses the flax layer, so every flax attribute keeps its name, order
and default (except ``attention_fn``, whose default None means "the FA3
kernel"), and adds ``num_kv_heads`` (GQA) and the FA3 options after them.
``__call__`` is rewritten rather than wrapped because linen's builds a mask
array (causal/cache masks) that the kernels cannot take; the submodules it
creates (query/key/value/out DenseGeneral, query_ln/key_ln) and the cache
variables are named and shaped exactly as flax's.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from flax import linen as nn
from flax.linen.attention import combine_masks
from flax.linen.linear import DenseGeneral
from flax.linen.normalization import LayerNorm
from flax.typing import PRNGKey

from jax_fa3.flax import attention_fn as afn


class FA3MultiHeadDotProductAttention(nn.MultiHeadDotProductAttention):
  """Multi-head dot-product attention on FlashAttention-3 kernels, for linen.

  Mirrors ``flax.linen.MultiHeadDotProductAttention`` (flax 0.12.8): same
  attributes, same ``__call__`` signature, same parameter tree and cache
  collection (``cache/cached_key``, ``cached_value``, ``cache_index``). Note
  that linen names an unnamed submodule after its class, so inside a parent
  ``@compact`` module pass ``name='MultiHeadDotProductAttention_0'`` (or
  whatever flax used) to reuse a checkpoint unchanged.

  Attributes beyond flax's:
    num_kv_heads: K/V heads (GQA); None = ``num_heads``. The key/value
      DenseGeneral produce ``num_kv_heads`` heads, never repeated.
    causal: causal self-attention, FA3 convention (bottom-right aligned when
      query and key lengths differ). Replaces a ``nn.make_causal_mask`` mask.
    window_size: ``(left, right)`` sliding window, -1 = unbounded.
    softcap: if > 0, scores become ``softcap * tanh(scores / softcap)``.
    softmax_scale: multiplier of ``q @ k^T``; default ``1/sqrt(head_dim)``.
    attention_fn: default None = the FA3 kernel with the options above (a
      ``make_attention_fn(...)`` result is the same, with its options); any
      other function is called exactly as flax calls it (with flax's masks),
      and then the FA3 options must keep their defaults.

  Shapes: ``inputs_q`` (batch..., q_length, features), ``inputs_k`` /
  ``inputs_v`` (batch..., kv_length, features); output (batch..., q_length,
  out_features or features). ``head_dim = qkv_features // num_heads`` must be
  a multiple of 8 in [8, 256]. Dtypes: the computation dtype must be float16
  / bfloat16 on GPU (float32 on the CPU backend only); set ``dtype``.

  Refused with ValueError naming the option: a non-None ``mask``,
  ``sow_weights=True``, dropout that would be applied, and
  ``qk_attn_weights_einsum_cls`` / ``attn_weights_value_einsum_cls``.
  ``force_fp32_for_softmax`` is honoured trivially (the kernel's softmax is
  always float32).

  Decode (``decode=True``): as flax, the first call (``init``) creates the
  cache from the input's shape and runs ordinary attention; later calls take
  one token, write it at ``cache_index`` and attend to slots ``[0,
  cache_index]`` (``[cache_index - left, cache_index]`` with a left window)
  via ``attention_fn.decode_attention``. Inference only (no gradient).
  """

  attention_fn: Callable[..., jax.Array] | None = None
  num_kv_heads: int | None = None
  causal: bool = False
  window_size: tuple[int, int] = (-1, -1)
  softcap: float = 0.0
  softmax_scale: float | None = None

  def _fa3_fn(self) -> afn.FA3AttentionFn | None:
    """The kernel's options, or None when a foreign attention_fn is used."""
    causal, window, softcap, scale = afn.check_fa3_options(
        self.causal, self.window_size, self.softcap, self.softmax_scale)
    fn = afn.FA3AttentionFn(causal=causal, window_size=window,
                            softcap=softcap, softmax_scale=scale)
    if self.attention_fn is not None and fn != afn.FA3AttentionFn():
      raise ValueError(
          "causal / window_size / softcap / softmax_scale apply to the FA3"
          " kernel only; with a custom attention_fn leave them at their"
          " defaults (or pass jax_fa3.flax.make_attention_fn(...))")
    if isinstance(self.attention_fn, afn.FA3AttentionFn):
      # make_attention_fn(...) given: same kernel, keep the FA3 (decodable)
      # path with its options.
      return self.attention_fn
    return fn if self.attention_fn is None else None

  @nn.compact
  def __call__(
      self,
      inputs_q: jax.Array,
      inputs_k: jax.Array | None = None,
      inputs_v: jax.Array | None = None,
      *,
      inputs_kv: jax.Array | None = None,
      mask: jax.Array | None = None,
      deterministic: bool | None = None,
      dropout_rng: PRNGKey | None = None,
      sow_weights: bool = False,
      segment_ids: Any = None,
  ) -> jax.Array:
    """Applies multi-head attention; arguments as
    ``flax.linen.MultiHeadDotProductAttention.__call__``.

    Args:
      inputs_q: (batch..., q_length, features).
      inputs_k: (batch..., kv_length, features); None = ``inputs_q``.
      inputs_v: like ``inputs_k``; None = ``inputs_k``.
      inputs_kv: flax's deprecated alias for ``inputs_k = inputs_v``.
      mask: must be None on the FA3 path.
      deterministic: merged with the attribute as flax does; dropout must be
        off on the FA3 path.
      dropout_rng: unused on the FA3 path (no dropout); accepted for parity.
      sow_weights: must be False on the FA3 path.
      segment_ids: jax_fa3 only (not in flax): packed sequences, an int32
        (batch..., length) array for self-attention or a pair (q_segment_ids,
        kv_segment_ids); tokens attend within their segment (see
        ``jax_fa3.attention``). Not with a decode step or a custom
        attention_fn.

    Returns:
      (batch..., q_length, out_features or features).
    """
    fa3_fn = self._fa3_fn()
    use_fa3 = fa3_fn is not None
    if use_fa3:
      afn.check_mask(mask)
      afn.check_sow_weights(sow_weights)
      for name in ("qk_attn_weights_einsum_cls",
                   "attn_weights_value_einsum_cls"):
        if getattr(self, name) is not None:
          raise ValueError(
              f"{name} is not supported by jax_fa3 (custom/quantised einsums"
              " cannot be injected into the FA3 kernels)")

    # Input plumbing: verbatim flax semantics.
    if inputs_kv is not None:
      if inputs_k is not None or inputs_v is not None:
        raise ValueError(
            'If either `inputs_k` or `inputs_v` is not None, `inputs_kv` must'
            ' be None. If `inputs_kv` is not None, both `inputs_k` and'
            ' `inputs_v` must be None.')
      inputs_k = inputs_v = inputs_kv
      warnings.warn(
          'The inputs_kv arg will be deprecated soon. Use inputs_k and'
          ' inputs_v instead.', DeprecationWarning)
    else:
      if inputs_k is None:
        if inputs_v is not None:
          raise ValueError(
              '`inputs_k` cannot be None if `inputs_v` is not None. To have'
              ' both `inputs_k` and `inputs_v` be the same value, pass in the'
              ' value to `inputs_k` and leave `inputs_v` as None.')
        inputs_k = inputs_q
      if inputs_v is None:
        inputs_v = inputs_k

    features = self.out_features or inputs_q.shape[-1]
    qkv_features = self.qkv_features or inputs_q.shape[-1]
    if qkv_features % self.num_heads != 0:
      raise ValueError(
          f'Memory dimension ({qkv_features}) must be divisible by number of'
          f' heads ({self.num_heads}).')
    head_dim = qkv_features // self.num_heads
    num_kv_heads = self.num_kv_heads or self.num_heads
    if self.num_heads % num_kv_heads != 0:
      raise ValueError(
          f'num_heads ({self.num_heads}) must be divisible by num_kv_heads'
          f' ({num_kv_heads}).')

    dense = functools.partial(
        DenseGeneral, axis=-1, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=self.kernel_init, bias_init=self.bias_init,
        use_bias=self.use_bias, precision=self.precision,
        dot_general=self.qkv_dot_general,
        dot_general_cls=self.qkv_dot_general_cls)
    query = dense(features=(self.num_heads, head_dim), name='query')(inputs_q)
    key = dense(features=(num_kv_heads, head_dim), name='key')(inputs_k)
    value = dense(features=(num_kv_heads, head_dim), name='value')(inputs_v)

    if self.normalize_qk:
      query = LayerNorm(name='query_ln', use_bias=False, dtype=self.dtype,
                        param_dtype=self.param_dtype)(query)
      key = LayerNorm(name='key_ln', use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype)(key)

    decode_index = None  # position of this decode step's token, if any
    if self.decode:
      is_initialized = self.has_variable('cache', 'cached_key')
      cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape,
                                 key.dtype)
      cached_value = self.variable('cache', 'cached_value', jnp.zeros,
                                   value.shape, value.dtype)
      cache_index = self.variable('cache', 'cache_index',
                                  lambda: jnp.array(0, dtype=jnp.int32))
      if is_initialized:
        *batch_dims, max_length, kv_heads, depth = cached_key.value.shape
        # flax checks the query against the cache; with GQA the cache has
        # num_kv_heads heads, so the key is what must match.
        expected_shape = tuple(batch_dims) + (1, kv_heads, depth)
        if expected_shape != key.shape:
          raise ValueError(
              'Autoregressive cache shape error, expected key shape'
              f' {expected_shape} instead got {key.shape}.')
        cur_index = cache_index.value
        zero = jnp.array(0, dtype=lax.dtype(cur_index.dtype))
        indices = (zero,) * len(batch_dims) + (cur_index, zero, zero)
        key = lax.dynamic_update_slice(
            cached_key.value, key.astype(cached_key.value.dtype), indices)
        value = lax.dynamic_update_slice(
            cached_value.value, value.astype(cached_value.value.dtype),
            indices)
        cached_key.value = key
        cached_value.value = value
        cache_index.value = cache_index.value + 1
        decode_index = cur_index
        if not use_fa3:
          mask = combine_masks(
              mask,
              jnp.broadcast_to(jnp.arange(max_length) <= cur_index,
                               tuple(batch_dims) + (1, 1, max_length)))

    if self.dropout_rate > 0.0:
      m_deterministic = nn.merge_param('deterministic', self.deterministic,
                                       deterministic)
      if use_fa3:
        afn.check_dropout(self.dropout_rate, m_deterministic)
      elif not m_deterministic and dropout_rng is None:
        dropout_rng = self.make_rng('dropout')
    else:
      m_deterministic = True

    afn.check_segment_ids(segment_ids, uses_fa3=use_fa3,
                          decode=decode_index is not None)
    if use_fa3:
      query, key, value = afn.promote(query, key, value, self.dtype)
      if decode_index is not None:
        x = afn.decode_attention(
            query, key, value, decode_index, window_left=fa3_fn.window_size[0],
            softcap=fa3_fn.softcap, softmax_scale=fa3_fn.softmax_scale)
      else:
        x = fa3_fn(query, key, value, segment_ids=segment_ids)
    else:
      x = self._custom_attention(query, key, value, mask, dropout_rng,
                                 m_deterministic, sow_weights)

    return DenseGeneral(
        features=features, axis=(-2, -1),
        kernel_init=self.out_kernel_init or self.kernel_init,
        bias_init=self.out_bias_init or self.bias_init,
        use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, precision=self.precision,
        dot_general=self.out_dot_general,
        dot_general_cls=self.out_dot_general_cls, name='out')(x)

  def _custom_attention(self, query, key, value, mask, dropout_rng,
                        deterministic, sow_weights):
    """A user-given attention_fn, called exactly as flax 0.12's layer does."""
    qk_einsum = (self.qk_attn_weights_einsum_cls()
                 if self.qk_attn_weights_einsum_cls else None)
    wv_einsum = (self.attn_weights_value_einsum_cls()
                 if self.attn_weights_value_einsum_cls else None)
    kwargs: dict[str, Any] = dict(
        mask=mask, dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
        broadcast_dropout=self.broadcast_dropout, deterministic=deterministic,
        dtype=self.dtype, precision=self.precision,
        force_fp32_for_softmax=self.force_fp32_for_softmax,
        qk_attn_weights_einsum=qk_einsum,
        attn_weights_value_einsum=wv_einsum)
    params = inspect.signature(self.attention_fn).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    if sow_weights:
      return self.attention_fn(query, key, value, **kwargs, module=self)
    return self.attention_fn(query, key, value, **kwargs)
