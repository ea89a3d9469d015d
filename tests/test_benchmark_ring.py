"""benchmarks/ring.py (sequence-parallel weak scaling) in its CPU smoke mode.

The benchmark needs several devices, fixed when the CPU backend starts, so
it runs in a fresh interpreter with 4 forced host devices (the environment
of tests/_multiprocess_worker.py). About 20 s on two cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

import _multiprocess_worker as mpw

N = 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(mpw.in_child(), reason="the multi-device child runs other modules")
def test_ring_benchmark_smoke(tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={N}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  r = subprocess.run([sys.executable, "-m", "benchmarks.ring", "--smoke",
                      f"--out_dir={tmp_path}", "--tag=cpu"],
                     env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
  assert "ring attention weak scaling" in r.stdout  # the table was printed

  with open(tmp_path / f"ring-cpu-x{N}.json") as f:
    records = json.load(f)
  assert all(not rec.get("error") for rec in records), records
  rings = [rec for rec in records if rec["impl"] == "ring"]
  singles = {(rec["global_seqlen"], rec["causal"], rec["mode"]): rec
             for rec in records if rec["impl"] == "single"}
  # --causal both x --modes fwd,bwd; zigzag for causal, contiguous otherwise.
  assert {(rec["causal"], rec["mode"], rec["layout"]) for rec in rings} == {
      (False, "fwd", "contiguous"), (False, "bwd", "contiguous"),
      (True, "fwd", "zigzag"), (True, "bwd", "zigzag")}
  for rec in rings:
    tpd = rec["tokens_per_device"]
    assert rec["n_devices"] == N and rec["global_seqlen"] == N * tpd
    assert rec["dtype"] == "float32" and rec["heads"] == 2 and rec["d"] == 64
    assert rec["ms"] > 0 and rec["tflops_per_device"] > 0
    # tokens/s per device is the local tokens over the step time.
    assert math.isclose(rec["tokens_per_s_per_device"], tpd / (rec["ms"] * 1e-3),
                        rel_tol=1e-9)
    # TF/s per device: FA3's count on the GLOBAL seqlen, split over N devices.
    s, d, h = rec["global_seqlen"], rec["d"], rec["heads"]
    fl = 4.0 * h * s * s * d / (2 if rec["causal"] else 1)
    fl *= 3.5 if rec["mode"] == "bwd" else 1.0
    assert math.isclose(rec["tflops_per_device"], fl / N / (rec["ms"] * 1e-3) / 1e12,
                        rel_tol=1e-9)
    # The ring agrees with single-device attention on the global sequence.
    assert rec["check_ok"] and rec["rel_err"] < 1e-4, rec
    # Efficiency: against one device on the same global sequence.
    base = singles[(rec["baseline_seqlen"], rec["causal"], rec["mode"])]
    assert rec["baseline_seqlen"] == N * tpd
    assert math.isclose(rec["efficiency"],
                        rec["tflops_per_device"] / base["tflops_per_device"], rel_tol=1e-9)
    assert 0 < rec["efficiency"] < 10
    # The same-tokens-per-device single-device point is there too.
    assert singles[(tpd, rec["causal"], rec["mode"])]["tokens_per_s_per_device"] > 0


def _trace(tmp_path, procs, lanes, events):
  """(trace_overlap module, path of a hand-made Perfetto trace): procs
  {pid: name}, lanes {(pid, tid): name}, events (pid, tid, ts_us, dur_us,
  name)."""
  import gzip  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, REPO)
  from benchmarks import trace_overlap  # pylint: disable=g-import-not-at-top
  meta = [{"ph": "M", "pid": p, "name": "process_name", "args": {"name": n}}
          for p, n in procs.items()]
  meta += [{"ph": "M", "pid": p, "tid": t, "name": "thread_name", "args": {"name": n}}
           for (p, t), n in lanes.items()]
  xs = [{"ph": "X", "pid": p, "tid": t, "ts": ts, "dur": dur, "name": n}
        for p, t, ts, dur, n in events]
  path = tmp_path / "t.json.gz"
  with gzip.open(path, "wt") as fh:
    json.dump({"traceEvents": meta + xs}, fh)
  return trace_overlap, str(path)


def _us(stats):
  return {k: round(v * 1e3, 6) for k, v in stats.items() if k.endswith("_ms")}


def test_trace_overlap_on_a_synthetic_trace(tmp_path):
  """NCCL time under other kernels, idle gaps and the attention share, from
  a hand-made Perfetto trace with known answers (in microseconds)."""
  trace_overlap, path = _trace(
      tmp_path, {1: "/device:GPU:0", 2: "/host:CPU"},
      {(1, 7): "Stream #7", (1, 8): "Stream #8"},
      [(1, 7, 0, 10, "fwd_kernel<...>"), (1, 7, 12, 3, "loop_fusion"),
       (1, 8, 5, 10, "ncclDevKernel_SendRecv"), (1, 8, 20, 2, "ncclKernel"),
       (2, 1, 0, 99, "host work is ignored")])
  s = trace_overlap.overlap_stats(path)["/device:GPU:0"]
  assert _us(s) == {"comm_ms": 12, "exposed_ms": 4, "compute_ms": 13, "attn_ms": 10,
                    "other_ms": 3, "idle_ms": 5, "span_ms": 22}
  assert math.isclose(trace_overlap.summarize({"g": s})["overlap"], 8 / 12)


def test_trace_overlap_on_mixed_lanes(tmp_path):
  """Kernels on a lane that also holds memsets ("Stream #50(Compute,Memset)",
  as XLA names it) count as compute; the memset events themselves do not;
  the timeline lists every event of the GPU in start order."""
  trace_overlap, path = _trace(
      tmp_path, {1: "/device:GPU:0"},
      {(1, 50): "Stream #50(Compute,Memset)", (1, 9): "Stream #9(Compute)"},
      [(1, 50, 0, 2, "ncclDevKernel_SendRecv"), (1, 50, 2, 1, "Memset 3"),
       (1, 50, 3, 10, "fwd_kernel<...>"), (1, 9, 4, 12, "ncclDevKernel_SendRecv")])
  s = trace_overlap.overlap_stats(path)["/device:GPU:0"]
  assert _us(s) == {"comm_ms": 14, "exposed_ms": 5, "compute_ms": 10, "attn_ms": 10,
                    "other_ms": 0, "idle_ms": 1, "span_ms": 16}
  assert [line.split()[-1] for line in trace_overlap.timeline(path)] == [
      "ncclDevKernel_SendRecv", "3", "fwd_kernel<...>", "ncclDevKernel_SendRecv"]


def test_trace_without_compute_kernels_gives_no_overlap(tmp_path):
  """NCCL kernels but no compute kernel in a trace: the overlap is unknown
  (NaN), not 0 (trace_overlap.summarize)."""
  trace_overlap, path = _trace(
      tmp_path, {1: "/device:GPU:0"}, {(1, 2): "Stream #2"},
      [(1, 2, 10.0 * i, 4.0, "ncclDevKernel_SendRecv") for i in range(3)])
  total = trace_overlap.summarize(trace_overlap.overlap_stats(path))
  assert total["comm_ms"] > 0 and math.isnan(total["overlap"])
