"""Summarise an `ncu --csv --page raw` capture (scripts/device.sh kprof).

One line per kernel launch, in launch order, for the kernels that matter to
attention (ours and cuDNN's); JAX's own small kernels are counted together.
Columns: microseconds, grid size, and the SMs' busy share of the kernel's
elapsed cycles (avg / max over SMs): avg well under max means a tail, some
SMs idle while others finish.
"""

import csv
import re
import sys

_KEEP = re.compile(r"bwd|fwd|dq_convert|convert|preprocess|sdpa|fmha|flash|cudnn", re.I)


def main(path: str) -> None:
  with open(path, newline="") as fh:
    lines = [l for l in fh if l.startswith('"')]
  rows = list(csv.DictReader(lines))
  if not rows:
    print(f"{path}: no rows")
    return
  scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(
      rows[0].get("gpu__time_duration.sum", "nsecond"), 1e-3)
  num = lambda x: float(x.replace(",", ""))
  other_us, other_n = 0.0, 0
  for r in rows[1:]:  # rows[0]: units
    name = r.get("Kernel Name", "")
    try:
      us = num(r["gpu__time_duration.sum"]) * scale
      act_avg = num(r["sm__cycles_active.avg"])
      act_max = num(r["sm__cycles_active.max"])
      elapsed = num(r["sm__cycles_elapsed.max"])
    except (KeyError, ValueError):
      continue
    if not _KEEP.search(name):
      other_us += us
      other_n += 1
      continue
    short = re.sub(r"\(.*", "", name)[:60]
    print(f"{us:9.1f} us  grid {r.get('launch__grid_size', '?'):>7}  busy avg {act_avg / elapsed:5.3f}"
          f" max {act_max / elapsed:5.3f}  {short}")
  print(f"(+ {other_n} other kernels, {other_us:.1f} us)")


if __name__ == "__main__":
  for p in sys.argv[1:]:
    main(p)
