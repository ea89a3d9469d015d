"""Demo: jax_fa3.attention in jitted code on real-sized inputs, checked
against the reference.

    python -m jax_fa3.examples.demo [--seqlen 2048 --heads 8 --head_dim 128]

On a Hopper GPU with the CUDA build it runs the sm90a kernels; elsewhere the
CPU backend. Exits non-zero if the result is off.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import jax_fa3

_BATCH = flags.DEFINE_integer("batch", 2, "batch size")
_SEQLEN = flags.DEFINE_integer("seqlen", 2048, "sequence length (q and k)")
_HEADS = flags.DEFINE_integer("heads", 8, "query heads")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 2, "key/value heads (GQA)")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "head dim")
_CAUSAL = flags.DEFINE_bool("causal", True, "causal mask")


def main(argv):
  del argv
  b, s, h, hk, d = (_BATCH.value, _SEQLEN.value, _HEADS.value, _KV_HEADS.value,
                    _HEAD_DIM.value)
  backend = jax.default_backend()
  logging.info("backend=%s cuda_built=%s", backend, jax_fa3.cuda_built())
  keys = jax.random.split(jax.random.key(int(time.time())), 4)
  q = jax.random.normal(keys[0], (b, s, h, d), jnp.bfloat16)
  k = jax.random.normal(keys[1], (b, s, hk, d), jnp.bfloat16)
  v = jax.random.normal(keys[2], (b, s, hk, d), jnp.bfloat16)

  causal = _CAUSAL.value
  fwd = jax.jit(lambda q, k, v: jax_fa3.attention(q, k, v, causal=causal))
  jax.block_until_ready(fwd(q, k, v))  # compile + warm up
  t0 = time.perf_counter()
  out = jax.block_until_ready(fwd(q, k, v))
  dt = time.perf_counter() - t0
  flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
  print(f"jax_fa3 forward on {backend}: b={b} s={s} h={h} hk={hk} d={d} "
        f"causal={causal}: {dt * 1e3:.2f} ms, {flops / dt / 1e12:.3f} TF/s")

  ref = jax.jit(lambda q, k, v: jax_fa3.reference.attention(q, k, v, causal=causal))(q, k, v)
  err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))
  scale = float(jnp.max(jnp.abs(ref.astype(jnp.float32))))
  print(f"max |out - reference| = {err:.3e} (max |reference| = {scale:.3f})")
  if not err <= 2e-2 * max(scale, 1.0):
    raise SystemExit("FAILED: jax_fa3 forward disagrees with the reference")

  # The gradient of a loss through jit, against the reference's gradient.
  def grads(attn):
    loss = lambda q, k, v: jnp.mean(attn(q, k, v, causal=causal).astype(jnp.float32) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  g = jax.block_until_ready(grads(jax_fa3.attention))
  g_ref = grads(jax_fa3.reference.attention)
  gerr = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32))) /
                   max(float(jnp.max(jnp.abs(r.astype(jnp.float32)))), 1e-6))
             for a, r in zip(g, g_ref))
  print(f"backward: max relative |grad - reference grad| = {gerr:.3e}")
  if not gerr <= 5e-2:
    raise SystemExit("FAILED: jax_fa3 gradients disagree with the reference")
  print("OK")


if __name__ == "__main__":
  app.run(main)
