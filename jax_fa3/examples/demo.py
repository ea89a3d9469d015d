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

  @jax.jit
  def step(q, k, v):
    # A small "layer": attention, then a loss and its gradient w.r.t. q/k/v.
    def loss(q, k, v):
      o = jax_fa3.attention(q, k, v, causal=_CAUSAL.value)
      return jnp.mean(o.astype(jnp.float32) ** 2), o
    (l, o), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return l, o, g

  jax.block_until_ready(step(q, k, v))  # compile + warm up
  t0 = time.perf_counter()
  l, out, grads = jax.block_until_ready(step(q, k, v))
  dt = time.perf_counter() - t0
  flops = 4 * b * h * s * s * d * (0.5 if _CAUSAL.value else 1.0) * 3.5
  print(f"jax_fa3 fwd+bwd on {backend}: b={b} s={s} h={h} hk={hk} d={d} "
        f"causal={_CAUSAL.value}: {dt * 1e3:.1f} ms, {flops / dt / 1e12:.3f} TF/s")

  ref = jax.jit(lambda q, k, v: jax_fa3.reference.attention(q, k, v, causal=_CAUSAL.value))(q, k, v)
  err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))
  scale = float(jnp.max(jnp.abs(ref.astype(jnp.float32))))
  print(f"max |out - reference| = {err:.3e} (max |reference| = {scale:.3f})")
  finite = all(bool(jnp.all(jnp.isfinite(x))) for x in grads)
  print(f"loss={float(l):.5f} gradients finite: {finite}")
  if not finite or err > 2e-2 * max(scale, 1.0):
    raise SystemExit("FAILED: jax_fa3 disagrees with the reference")
  print("OK")


if __name__ == "__main__":
  app.run(main)
