"""Loads the native extension and registers its XLA FFI targets, once.

The nanobind module (cc/module.cc) hands us one capsule per (platform, pass);
we give them to ``jax.ffi.register_ffi_target``. Import is cheap and has no
side effect beyond registration.
"""

from __future__ import annotations

import functools

import jax

FWD_TARGET = "jax_fa3_fwd"
BWD_TARGET = "jax_fa3_bwd"


@functools.lru_cache(maxsize=None)
def extension():
  """The compiled module ``jax_fa3._jax_fa3_ext``, with its targets registered."""
  try:
    from jax_fa3 import _jax_fa3_ext as ext  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "jax_fa3's native extension is missing; build it with `pip install -e .`"
    ) from e
  for platform, targets in ext.registrations().items():
    for name, capsule in targets.items():
      jax.ffi.register_ffi_target(name, capsule, platform=platform, api_version=1)
  return ext


def cuda_built() -> bool:
  """Whether this install contains the Hopper (sm90a) kernels."""
  return bool(extension().cuda_built())


def cuda_device_check() -> str:
  """'' when the current CUDA device can run the kernels, else the reason."""
  return str(extension().cuda_device_check())
