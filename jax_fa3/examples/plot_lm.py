"""Loss curves of ``jax_fa3.examples.train_lm`` runs, one run or several
overlaid (e.g. fa3 vs cudnn vs xla on the same config and seed).

    python -m jax_fa3.examples.plot_lm RUN.json [MORE.json ...] --out cmp.png

Left panel: loss (nats/byte) against optimiser step, train (smoothed, with
the raw curve faint behind) and validation (markers). Right panel: the same
against training seconds (without evaluation and without the first,
compiling step), which is where a faster attention shows. A dotted line marks
the unigram byte entropy of the training data: the loss a model without
context would reach.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

# Same colours as benchmarks/plot.py: FA3 purple, cuDNN green, XLA grey.
_COLOURS = {"fa3": "#8e44ad", "cudnn": "#27ae60", "xla": "#7f8c8d"}
_FALLBACK = ["#e67e22", "#c0392b", "#2980b9", "#16a085", "#d35400"]


def smooth(values: Sequence[float], alpha: float = 0.1) -> np.ndarray:
  """Bias-corrected exponential moving average (as TensorBoard), so that the
  start of the curve is not pulled towards 0."""
  out, avg = [], 0.0
  for i, v in enumerate(values):
    avg = (1 - alpha) * avg + alpha * v
    out.append(avg / (1 - (1 - alpha) ** (i + 1)))
  return np.asarray(out)


def run_label(log: dict[str, Any]) -> str:
  """E.g. "fa3, seq 2048, 512,000 tok/s"."""
  tps = log.get("tokens_per_s")
  speed = f", {tps:,.0f} tok/s" if tps else ""
  return f"{log['attention']}, seq {log['seq_len']}{speed}"


def plot_runs(logs: Sequence[dict[str, Any]], out_path: str,
              labels: Sequence[str] | None = None,
              title: str | None = None) -> str:
  """Draws the loss curves of ``logs`` (``train_lm.train`` results or their
  JSON) into the PNG ``out_path``; returns it."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  if not logs:
    raise ValueError("no runs to plot")
  if labels:
    labels = list(labels)
    short = labels
  else:
    labels = [run_label(g) for g in logs]
    short = [g["attention"] for g in logs]  # the speed is in the train label
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
  n_fallback = 0
  for log, label, short_label in zip(logs, labels, short):
    colour = _COLOURS.get(log["attention"])
    if colour is None or sum(g["attention"] == log["attention"]
                             for g in logs) > 1:
      # Several runs of one implementation need telling apart.
      colour = _FALLBACK[n_fallback % len(_FALLBACK)]
      n_fallback += 1
    tr, va = log["train"], log["val"]
    for ax, x_tr, x_va in ((axes[0], tr["step"], va["step"]),
                           (axes[1], tr["time_s"], va["time_s"])):
      if tr["loss"]:
        ax.plot(x_tr, tr["loss"], color=colour, alpha=0.2, lw=0.8)
        ax.plot(x_tr, smooth(tr["loss"]), color=colour, lw=1.5,
                label=f"{label} train")
      ax.plot(x_va, va["loss"], color=colour, lw=1.2, ls="--", marker="o",
              ms=4, label=f"{short_label} val")
  h = logs[0].get("unigram_entropy_nats")
  for ax, xlabel in zip(axes, ("step", "training time (s)")):
    if h is not None:
      ax.axhline(h, color="black", ls=":", lw=1,
                 label=f"unigram entropy {h:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats / byte)")
    ax.grid(alpha=0.3)
    # Zoom on the interesting part: the initial ~ln(256) loss dwarfs the end.
    finals = [min(g["val"]["loss"] + g["train"]["loss"]) for g in logs]
    top = max(h if h is not None else 0.0,
              max(g["val"]["loss"][0] for g in logs))
    ax.set_ylim(max(0.0, min(finals) - 0.1), top + 0.3)
  axes[0].legend(fontsize=8)
  first = logs[0]
  fig.suptitle(title or (
      f"byte LM on the Python stdlib: {first.get('n_params', 0) / 1e6:.1f}M "
      f"params, {first.get('device', '?')}, {first['config']['dtype']}"))
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return out_path


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m jax_fa3.examples.plot_lm",
      description="Overlay the loss curves of train_lm JSON logs.")
  parser.add_argument("logs", nargs="+", help="train_<attention>_<seq>.json")
  parser.add_argument("--out", default="train_lm_compare.png",
                      help="output PNG")
  parser.add_argument("--title", default=None)
  args = parser.parse_args(argv)
  logs = []
  for path in args.logs:
    with open(path) as f:
      logs.append(json.load(f))
  print(plot_runs(logs, args.out, title=args.title))


if __name__ == "__main__":
  main()
