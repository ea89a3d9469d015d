"""jax_fa3: FlashAttention-3 for JAX.

Hopper (sm90a) CUTLASS/CuTe kernels exposed as XLA FFI custom calls, with a
CPU backend as fallback and oracle. See ``jax_fa3.attention``.
"""

from jax_fa3 import parallel
from jax_fa3 import reference
from jax_fa3._ffi import cuda_built
from jax_fa3.attention import attention
from jax_fa3.varlen import attention_varlen
from jax_fa3.parallel import ring_attention

__all__ = ["attention", "attention_varlen", "ring_attention", "parallel", "reference", "cuda_built"]
__version__ = "0.1.0"
