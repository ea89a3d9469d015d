"""FA3-paper-style grouped bar chart of attention benchmark records.

One panel per (mode, causal, head_dim); within a panel one group of bars per
seqlen, one bar per implementation, each labelled with its TF/s. Points that
failed or were skipped get no bar.

Standalone: ``python -m benchmarks.plot RESULTS.json [MORE.json ...] [-o OUT.png]``
(several JSON files, e.g. from split device runs, are merged into one chart).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

# Preferred order and colours (FA3 paper: FA3 in purple/red, cuDNN in green).
_COLOURS = {
    "jax_fa3": "#8e44ad",
    "jax_fa3-det": "#c39bd3",
    "jax-cudnn": "#27ae60",
    "pallas-mgpu": "#2980b9",
    "jax-xla": "#95a5a6",
}
_FALLBACK = ["#e67e22", "#c0392b", "#16a085", "#7f8c8d", "#d35400"]


def seqlen_label(s: int) -> str:
  return f"{s // 1024}k" if s >= 1024 and s % 1024 == 0 else str(s)


def fmt_tflops(x: float) -> str:
  """TF/s label: integer on a GPU, a few digits for the tiny CPU numbers."""
  return f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def _impl_order(records: Sequence[dict[str, Any]]) -> list[str]:
  seen: list[str] = []
  for r in records:
    if r["impl"] not in seen:
      seen.append(r["impl"])
  known = [i for i in _COLOURS if i in seen]
  return known + [i for i in seen if i not in known]


def _panels(records):
  keys = sorted({(r["mode"], bool(r["causal"]), int(r["d"])) for r in records},
                key=lambda k: (k[0] != "fwd", k[1], k[2]))
  return keys


def plot_records(records: Sequence[dict[str, Any]], out_path: str,
                 title: str | None = None) -> str:
  """Draws the chart for ``records`` into ``out_path`` (PNG); returns it."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  records = [r for r in records if "impl" in r]
  if not records:
    raise ValueError("no records to plot")
  impls = _impl_order(records)
  colours = {}
  for n, impl in enumerate(impls):
    colours[impl] = _COLOURS.get(impl, _FALLBACK[n % len(_FALLBACK)])

  panels = _panels(records)
  rows_keys = sorted({(m, c) for m, c, _ in panels},
                     key=lambda k: (k[0] != "fwd", k[1]))
  cols_keys = sorted({d for _, _, d in panels})
  n_rows, n_cols = len(rows_keys), len(cols_keys)
  fig, axes = plt.subplots(n_rows, n_cols,
                           figsize=(6.2 * n_cols, 3.9 * n_rows),
                           squeeze=False)

  for ri, (mode, causal) in enumerate(rows_keys):
    for ci, d in enumerate(cols_keys):
      ax = axes[ri][ci]
      pts = [r for r in records
             if r["mode"] == mode and bool(r["causal"]) == causal
             and int(r["d"]) == d]
      name = "Forward" if mode == "fwd" else "Backward"
      ax.set_title(f"{name}, {'with' if causal else 'without'} causal mask, "
                   f"head dim {d}", fontsize=10)
      if not pts:
        ax.set_axis_off()
        continue
      seqlens = sorted({int(r["seqlen"]) for r in pts})
      present = [i for i in impls if any(
          r["impl"] == i and r.get("tflops") is not None for r in pts)]
      width = min(0.35, 0.8 / max(1, len(present)))
      left = -width * len(present) / 2
      ymax = 0.0
      for bi, impl in enumerate(present):
        xs, ys = [], []
        for si, s in enumerate(seqlens):
          rec = next((r for r in pts if r["impl"] == impl
                      and int(r["seqlen"]) == s), None)
          if rec is None or rec.get("tflops") is None:
            continue
          xs.append(si + left + width * (bi + 0.5))
          ys.append(float(rec["tflops"]))
        label = impl
        dts = {r.get("dtype") for r in pts if r["impl"] == impl}
        if len(dts) == 1 and None not in dts:
          label = f"{impl} ({_short_dtype(dts.pop())})"
        bars = ax.bar(xs, ys, width=width, color=colours[impl], label=label)
        for bar, y in zip(bars, ys):
          ax.text(bar.get_x() + bar.get_width() / 2, y, fmt_tflops(y),
                  ha="center", va="bottom", fontsize=6.5,
                  rotation=90 if len(present) > 3 else 0)
        ymax = max([ymax] + ys)
      ax.set_xticks(range(len(seqlens)))
      ax.set_xticklabels([seqlen_label(s) for s in seqlens])
      ax.set_xlabel("Sequence length")
      ax.set_ylabel("Speed (TFLOPS/s)")
      ax.set_ylim(0, (ymax if ymax > 0 else 1.0) * 1.22)
      ax.grid(axis="y", alpha=0.3)
      ax.set_axisbelow(True)
      if present:
        ax.legend(fontsize=7, loc="upper left", ncol=2, frameon=False)
      else:
        ax.text(0.5, 0.5, "no successful points", transform=ax.transAxes,
                ha="center", va="center", color="grey")

  if title:
    fig.suptitle(title, fontsize=12)
  fig.tight_layout(rect=(0, 0, 1, 0.985 if n_rows > 2 else 0.95))
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


def _short_dtype(dtype: str) -> str:
  return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(
      dtype, dtype)


def main(argv: Sequence[str]) -> int:
  args = list(argv[1:])
  if not args or args[0] in ("-h", "--help"):
    print(__doc__)
    return 0 if args else 2
  out_path = None
  if "-o" in args:
    i = args.index("-o")
    out_path = args[i + 1]
    del args[i:i + 2]
  records = []
  for path in args:  # later files replace earlier records of the same point
    with open(path) as f:
      records.extend(json.load(f))
  merged = {(r["impl"], r["mode"], r.get("dtype"), r["d"], r["causal"],
             r["seqlen"]): r for r in records}
  out_path = out_path or os.path.splitext(args[0])[0] + ".png"
  title = os.path.splitext(os.path.basename(args[0]))[0]
  print(plot_records(list(merged.values()), out_path,
                     title=f"Attention throughput: {title}"))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
