"""Subprocess helpers for the multi-device tests (tests/test_ring.py,
tests/test_sharding.py).

XLA's host device count is fixed when the CPU backend starts, and the suite's
conftest imports jax, so the multi-device tests re-run their own module in a
fresh interpreter with ``--xla_force_host_platform_device_count`` set
(``run_module_in_subprocess``). Run as a script, this file is one process of
a 2-process ``jax.distributed`` job on localhost (``main``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

CHILD_ENV = "JAX_FA3_MULTIDEVICE_CHILD"
N_DEVICES = 8


def in_child() -> bool:
  return os.environ.get(CHILD_ENV) == "1"


def _env(n_devices: int) -> dict:
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "")
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n_devices}".strip()
  env["JAX_PLATFORMS"] = "cpu"  # the multi-device tests are CPU-backend tests
  env[CHILD_ENV] = "1"
  return env


def run_module_in_subprocess(path: str, timeout: float = 300.0) -> None:
  """pytest `path` in a fresh interpreter with N_DEVICES host devices."""
  cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "-o", "addopts=", path]
  r = subprocess.run(cmd, env=_env(N_DEVICES), capture_output=True, text=True,
                     timeout=timeout, cwd=os.path.dirname(os.path.dirname(path)))
  assert r.returncode == 0, f"child pytest failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_distributed(num_processes: int = 2, devices_per_process: int = 2,
                    timeout: float = 180.0) -> list[str]:
  """Start `num_processes` copies of this file as one jax.distributed job;
  returns their stdouts (each must end with a line 'OK ...')."""
  port = free_port()
  env = _env(devices_per_process)
  procs = [subprocess.Popen(
      [sys.executable, __file__, str(i), str(num_processes), str(port)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  outs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=timeout)
      outs.append(out)
  finally:
    for p in procs:  # only our own children, by handle
      if p.poll() is None:
        p.kill()
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-6000:]}"
  return outs


# ------------------------------------------------ distributed worker body ----

def main(process_id: int, num_processes: int, port: int) -> None:
  import jax  # noqa: PLC0415  (after the env is set by the parent)
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError):  # option renamed/removed: default
    pass
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=num_processes, process_id=process_id)
  import numpy as np  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: PLC0415
  import jax_fa3  # noqa: PLC0415
  from jax_fa3 import primitives  # noqa: PLC0415
  from jax_fa3.parallel import ring_attention, sharding  # noqa: PLC0415

  n = jax.device_count()
  assert jax.process_count() == num_processes and n == num_processes * jax.local_device_count()
  # Same seed in every process: each builds the full inputs and its shards.
  rng = np.random.default_rng(1234)
  b, s, h, hk, d = n, 8 * n, 4, 2, 16
  q, k, v, do = (rng.standard_normal(shape, np.float32) for shape in
                 ((b, s, h, d), (b, s, hk, d), (b, s, hk, d), (b, s, h, d)))
  kw = dict(causal=True, window_size=(3 * s // 4, -1), softcap=3.0)
  out0, vjp0 = jax.vjp(lambda q, k, v: jax_fa3.attention(q, k, v, **kw),
                       *map(jnp.asarray, (q, k, v)))
  ref = (out0,) + vjp0(jnp.asarray(do))

  mesh = Mesh(np.array(jax.devices()), ("sp",))

  def put(x, spec):
    sh = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

  def check(name, got, want, tol=2e-5):
    err = 0.0
    for shard in got.addressable_shards:
      w = np.asarray(want)[shard.index]
      err = max(err, float(np.max(np.abs(np.asarray(shard.data) - w))))
    assert err <= tol * (1 + float(np.max(np.abs(want)))), f"{name}: {err}"
    return err

  # (1) ring attention in shard_map, sequence split across both processes.
  seq = P(None, "sp", None, None)
  shard_map = getattr(jax, "shard_map", None)
  if shard_map is None:  # pragma: no cover - jax < 0.7
    from jax.experimental.shard_map import shard_map  # noqa: PLC0415
  ring = shard_map(lambda q, k, v: ring_attention(q, k, v, axis_name="sp", **kw),
                   mesh=mesh, in_specs=(seq,) * 3, out_specs=seq)

  @jax.jit
  def ring_fwd_bwd(q, k, v, do):
    out, f = jax.vjp(ring, q, k, v)
    return (out,) + f(do)

  got = ring_fwd_bwd(*(put(x, seq) for x in (q, k, v, do)))
  errs = [check(f"ring {nm}", g, r) for nm, g, r in zip("o q k v".split(), got, ref)]

  # (2) the partitioned primitive, batch split across the processes.
  cfg = primitives.AttnConfig(softmax_scale=d ** -0.5, causal=True,
                              window_left=kw["window_size"][0], window_right=0,
                              softcap=kw["softcap"])
  bsp = P("sp", None, None, None)  # b == n

  @jax.jit
  def part_fwd_bwd(q, k, v, do):
    out, f = jax.vjp(lambda q, k, v: sharding.attention_with_lse(q, k, v, cfg)[0], q, k, v)
    return (out,) + f(do)

  got = part_fwd_bwd(*(put(x, bsp) for x in (q, k, v, do)))
  errs += [check(f"partitioned {nm}", g, r) for nm, g, r in zip("o q k v".split(), got, ref)]
  print("OK", process_id, max(errs), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
