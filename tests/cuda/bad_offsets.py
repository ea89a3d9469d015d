"""Invalid varlen offsets through the Hopper kernels, for compute-sanitizer.

Under ``jax.jit`` on the GPU the offsets are device values the host never
reads, so nothing rejects them (eager calls and the CPU backend do, see
jax_fa3/varlen.py); the kernels must still keep every access inside the
tensors. Run as

  compute-sanitizer --tool memcheck --error-exitcode 1 python3 tests/cuda/bad_offsets.py

Each case runs the forward and the backward once; the script prints one line
per case and exits 0 when all ran and every output and gradient element came
back NaN, the kernels' answer to offsets they cannot report (memcheck decides
about the accesses).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jax_fa3


def main() -> None:
  rng = np.random.default_rng(0)
  total_q, total_k, h, hk, d = 300, 260, 4, 2, 128
  q = jnp.asarray(rng.standard_normal((total_q, h, d)), jnp.bfloat16)
  k = jnp.asarray(rng.standard_normal((total_k, hk, d)), jnp.bfloat16)
  v = jnp.asarray(rng.standard_normal((total_k, hk, d)), jnp.bfloat16)
  good_q = np.array([0, 100, 250, 300], np.int32)
  good_k = np.array([0, 90, 200, 260], np.int32)
  cases = {
      "not monotone": (np.array([0, 200, 100, 300], np.int32), good_k, None),
      "past the end": (np.array([0, 100, 250, 5000], np.int32), good_k, None),
      "negative": (np.array([0, -70, 250, 300], np.int32), good_k, None),
      "k past the end": (good_q, np.array([0, 90, 4000, 9000], np.int32), None),
      "seqused > allocation": (good_q, good_k, np.array([100, 500, 9999], np.int32)),
      "seqused negative": (good_q, good_k, np.array([100, -5, 50], np.int32)),
  }
  failed = 0
  for name, (cu_q, cu_k, used) in cases.items():
    def loss(a, b, c, cu_q, cu_k, used):
      out = jax_fa3.attention_varlen(a, b, c, cu_q, cu_k, 150, 110, causal=True,
                                     seqused_q=used, seqused_k=used)
      return jnp.sum(out.astype(jnp.float32)), out
    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, out), grads = f(q, k, v, jnp.asarray(cu_q), jnp.asarray(cu_k),
                        None if used is None else jnp.asarray(used))
    jax.block_until_ready((out, grads))
    nan = [bool(jnp.isnan(x.astype(jnp.float32)).all()) for x in (out,) + tuple(grads)]
    print(f"{name}: ran (out, dq, dk, dv all NaN: {nan})", flush=True)
    failed += not all(nan)
  print("bad offsets: all cases ran" + (f", {failed} not all NaN" if failed else ""))
  if failed:
    raise SystemExit(1)


if __name__ == "__main__":
  main()
