"""Multi-device attention: ring attention over a sharded sequence axis
(``ring_attention``, ``layout="zigzag"`` for causal load balance) and the
batch/head partitioning rule of the primitive (``sharding``)."""

from jax_fa3.parallel.ring import ring_attention
from jax_fa3.parallel.zigzag import zigzag_permute, zigzag_unpermute

__all__ = ["ring_attention", "zigzag_permute", "zigzag_unpermute"]
