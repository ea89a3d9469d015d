"""Refuse, while lowering, what one platform's kernels cannot do yet.

The FFI targets are registered for every platform, and which platform a
traced call will run on is only known when it is lowered (under ``jax.jit``
the inputs are tracers; committed devices, ``jax.default_device`` and
``jax.export(platforms=...)`` all decide it later). So the check cannot be a
plain Python ``if`` at trace time. Instead the varlen call threads one of its
operands through an identity primitive whose CUDA lowering rule raises a
``NotImplementedError``: on CPU it lowers to nothing, on CUDA the user gets a
Python exception naming the limitation before anything is compiled or run,
instead of the handler's run-time error (cc/ffi/handlers.cc, which stays as
the second line of defence).

Remove the CUDA rule once the Hopper kernels take cu_seqlens.
"""

from __future__ import annotations

import jax
from jax.interpreters import batching
from jax.interpreters import mlir

try:  # jax >= 0.4.36
  from jax.extend.core import Primitive
except ImportError:  # pragma: no cover
  from jax.core import Primitive  # type: ignore[no-redef]

VARLEN_ON_CUDA = (
    "jax_fa3: variable-length / packed attention (attention_varlen, or"
    " attention(..., segment_ids=...)) is not supported by the Hopper (CUDA)"
    " backend yet; run it on the CPU backend (e.g. inputs on jax.devices('cpu')"
    " or JAX_PLATFORMS=cpu)")


def _identity_primitive(name: str, cuda_message: str) -> Primitive:
  prim = Primitive(name)
  # Eager calls go through jit too, so that they reach the lowering rules.
  # Under jax.disable_jit that jit would call this impl again (endless
  # recursion): the eager on_gpu checks and the CUDA handler refuse then.
  jitted = jax.jit(lambda x: prim.bind(x))
  prim.def_impl(lambda x: x if jax.config.jax_disable_jit else jitted(x))
  prim.def_abstract_eval(lambda x: x)
  batching.primitive_batchers[prim] = lambda args, dims: (prim.bind(*args), dims[0])
  mlir.register_lowering(prim, lambda ctx, x: [x])

  def refuse(ctx, x):
    del ctx, x
    raise NotImplementedError(cuda_message)

  mlir.register_lowering(prim, refuse, platform="cuda")
  return prim


_varlen_guard_p = _identity_primitive("jax_fa3_varlen_guard", VARLEN_ON_CUDA)


def no_varlen_on_cuda(x: jax.Array) -> jax.Array:
  """``x`` unchanged; lowering it for CUDA raises NotImplementedError."""
  return _varlen_guard_p.bind(x)
