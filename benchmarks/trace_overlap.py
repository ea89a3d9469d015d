"""How much of the ring's communication runs under attention compute.

Issue 6 asks that the profile show the collective-permute overlapped with the
attention kernels. This module captures a ``jax.profiler`` trace of a few
calls (Perfetto JSON, which jax writes without extra packages) and measures,
per GPU, from the kernel intervals on its stream lanes:

* ``comm_ms``     time covered by NCCL kernels (the collective-permutes);
* ``exposed_ms``  part of it with no other kernel running on that GPU;
* ``overlap``     1 - exposed / comm: the fraction of communication hidden
                  under compute (1.0 = fully overlapped);
* ``compute_ms``  time covered by non-NCCL kernels, of which ``attn_ms`` by
                  jax_fa3's attention kernels (names with ``fwd_kernel`` /
                  ``bwd_kernel``) and ``other_ms`` by the rest alone (merges,
                  casts, pre/postprocess);
* ``idle_ms``     time in the span with no kernel at all (launch gaps, host
                  syncs), and ``span_ms`` the first kernel start to the last
                  kernel end.

NCCL kernels are recognised by name (``nccl`` in it, case-insensitive), and
every other kernel on a ``Stream`` lane counts as compute, memcpy/memset
events (names starting "Mem") are ignored. Lanes are not filtered by their
name: XLA's "Stream #N(Compute,Memset)" lanes carry compute kernels. Intervals are merged per class before intersecting, so concurrent
kernels are not double counted.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from typing import Any, Callable, Iterable, Sequence


def capture(fn: Callable[..., Any], args: Sequence[Any], log_dir: str, calls: int = 3) -> str:
  """Runs ``fn(*args)`` ``calls`` times under ``jax.profiler.trace`` and returns
  the path of the Perfetto trace (``perfetto_trace.json.gz``)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))  # compiled and warm before tracing
  os.makedirs(log_dir, exist_ok=True)
  before = set(glob.glob(os.path.join(log_dir, "plugins", "profile", "*")))
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
  runs = sorted(set(glob.glob(os.path.join(log_dir, "plugins", "profile", "*"))) - before)
  paths = glob.glob(os.path.join(runs[-1], "perfetto_trace.json.gz")) if runs else []
  if not paths:
    raise RuntimeError(f"no perfetto_trace.json.gz under {log_dir}")
  return paths[0]


def _union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
  merged: list[list[float]] = []
  for a, b in sorted(intervals):
    if merged and a <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], b)
    else:
      merged.append([a, b])
  return [(a, b) for a, b in merged]


def _length(intervals: Sequence[tuple[float, float]]) -> float:
  return sum(b - a for a, b in intervals)


def _intersection(xs: Sequence[tuple[float, float]], ys: Sequence[tuple[float, float]]) -> float:
  """Total length of (union xs) ∩ (union ys); both already merged and sorted."""
  i = j = 0
  total = 0.0
  while i < len(xs) and j < len(ys):
    lo, hi = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
    if hi > lo:
      total += hi - lo
    if xs[i][1] < ys[j][1]:
      i += 1
    else:
      j += 1
  return total


def _kind(name: str) -> str | None:
  """"comm", "compute" or None (ignored) for one event on a Stream lane."""
  low = name.lower()
  if "nccl" in low:
    return "comm"
  # Copies and memsets are told by their event name, not by the lane: XLA's
  # lanes mix kinds ("Stream #50(Compute,Memset)" holds the attention
  # kernels when the program has a memset too; filtering such lanes out had
  # dropped every compute kernel of the zigzag ring's traces).
  if name.startswith("Mem"):
    return None
  return "compute"


def _load(trace_path: str):
  """(events, process names by pid, lane names by (pid, tid)) of a trace."""
  with gzip.open(trace_path, "rt") as fh:
    data = json.load(fh)
  events = data["traceEvents"] if isinstance(data, dict) else data
  proc_names: dict[Any, str] = {}
  thread_names: dict[tuple[Any, Any], str] = {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      proc_names[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      thread_names[(e["pid"], e.get("tid"))] = e["args"]["name"]
  return events, proc_names, thread_names


def overlap_stats(trace_path: str) -> dict[str, dict[str, float]]:
  """Per GPU (keyed by the trace's process name): comm_ms, exposed_ms,
  overlap, compute_ms, span_ms, and the kernel counts. Empty when the trace
  holds no GPU kernels (e.g. the CPU backend)."""
  events, proc_names, thread_names = _load(trace_path)
  per_gpu: dict[Any, dict[str, list[tuple[float, float]]]] = {}
  for e in events:
    if e.get("ph") != "X" or "dur" not in e:
      continue
    pname = proc_names.get(e["pid"], "")
    tname = thread_names.get((e["pid"], e.get("tid")), "")
    if "GPU" not in pname or not tname.startswith("Stream"):
      continue
    name = e.get("name", "")
    kind = _kind(name)
    if kind is None:
      continue
    lanes = per_gpu.setdefault(e["pid"], {"comm": [], "compute": [], "attn": []})
    interval = (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
    lanes[kind].append(interval)
    if "fwd_kernel" in name or "bwd_kernel" in name:
      lanes["attn"].append(interval)

  stats: dict[str, dict[str, float]] = {}
  for pid, lanes in per_gpu.items():
    comm, comp = _union(lanes["comm"]), _union(lanes["compute"])
    both = _union(lanes["comm"] + lanes["compute"])
    comm_us = _length(comm)
    exposed_us = comm_us - _intersection(comm, comp)
    attn = _union(lanes["attn"])
    span_us = both[-1][1] - both[0][0] if both else 0.0
    stats[proc_names[pid]] = {
        "comm_ms": comm_us / 1e3,
        "exposed_ms": exposed_us / 1e3,
        "overlap": 1.0 - exposed_us / comm_us if comm_us > 0 else float("nan"),
        "compute_ms": _length(comp) / 1e3,
        "attn_ms": _length(attn) / 1e3,
        "other_ms": (_length(comp) - _length(attn)) / 1e3,
        "idle_ms": (span_us - _length(both)) / 1e3,
        "span_ms": span_us / 1e3,
        "comm_kernels": len(lanes["comm"]),
        "compute_kernels": len(lanes["compute"]),
    }
  return stats


def summarize(stats: dict[str, dict[str, float]]) -> dict[str, float]:
  """Totals over GPUs: comm_ms, exposed_ms, overlap (time-weighted), n_gpus.

  overlap is NaN when the trace holds NCCL kernels but no compute kernel at
  all: "0 % overlap" from such a trace would say nothing about the run (until
  session 7 every zigzag trace looked like that, through the lane filter
  ``_kind`` replaced).
  """
  total = {key: sum(s[key] for s in stats.values())
           for key in ("comm_ms", "exposed_ms", "attn_ms", "other_ms", "idle_ms", "span_ms",
                       "compute_ms")}
  comm = total["comm_ms"]
  valid = comm > 0 and total["compute_ms"] > 0
  total["overlap"] = 1.0 - total["exposed_ms"] / comm if valid else float("nan")
  total["n_gpus"] = len(stats)
  return total


def timeline(trace_path: str, gpu: str = "GPU:0", max_ms: float = 1e9) -> list[str]:
  """One line per GPU event of the device whose name contains ``gpu``, in
  start order: start and duration (ms, from its first event), lane, name.
  An NCCL kernel on the attention kernels' lane is a collective that XLA ran
  synchronously on the compute stream."""
  events, procs, lanes = _load(trace_path)
  mine = sorted((e for e in events if e.get("ph") == "X" and "dur" in e
                 and gpu in procs.get(e["pid"], "")), key=lambda e: float(e["ts"]))
  lines = []
  for e in mine:
    t = (float(e["ts"]) - float(mine[0]["ts"])) / 1e3
    if t > max_ms:
      break
    lines.append(f"{t:10.3f} {float(e['dur']) / 1e3:8.3f}  "
                 f"{lanes.get((e['pid'], e.get('tid')), '')[:26]:26s} {e.get('name', '')[:80]}")
  return lines


if __name__ == "__main__":
  # python -m benchmarks.trace_overlap TRACE [GPU [MAX_MS]]: the per-GPU
  # stats, then the timeline of one GPU.
  import sys  # pylint: disable=g-import-not-at-top
  trace = sys.argv[1]
  for name, st in sorted(overlap_stats(trace).items()):
    print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in st.items()))
  print("\n".join(timeline(trace, *(sys.argv[2:3] or ["GPU:0"]),
                           *[float(x) for x in sys.argv[3:4]])))
