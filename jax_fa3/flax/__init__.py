"""Flax integration of jax_fa3 (needs ``pip install jax_fa3[flax]``).

- ``FA3MultiHeadAttention``: drop-in for ``flax.nnx.MultiHeadAttention``.
- ``FA3MultiHeadDotProductAttention``: drop-in for
  ``flax.linen.MultiHeadDotProductAttention``.
- ``make_attention_fn``: an ``attention_fn`` for the stock flax layers.
"""

from jax_fa3.flax.attention_fn import FA3AttentionFn
from jax_fa3.flax.attention_fn import decode_attention
from jax_fa3.flax.attention_fn import make_attention_fn
from jax_fa3.flax.linen import FA3MultiHeadDotProductAttention
from jax_fa3.flax.nnx import FA3MultiHeadAttention

__all__ = [
    "FA3AttentionFn",
    "FA3MultiHeadAttention",
    "FA3MultiHeadDotProductAttention",
    "decode_attention",
    "make_attention_fn",
]
