"""Summarise the GPU's clock and power while each backward ran (scripts/device.sh power).

Input: a folder with, per run TAG, `smi_TAG.csv` (nvidia-smi samples every 50 ms:
timestamp, SM clock, power draw, temperature, active clock-event reasons) and
`TAG/*.json` (the records of `python -m benchmarks.varlen` for that run).

Why: at 700 W the H100 lowers its clocks (reason 0x4, the software power cap) for
any kernel that keeps the tensor cores busy. Then a call's time is its energy over
the cap, and the ratio of two implementations' times is the ratio of the energy
they spend on the same work. Samples count as "under load" above 250 W (idle is
~70-120 W), which leaves out the compile and the setup between timed loops.
"""

import csv
import glob
import json
import os
import statistics
import sys

_LOAD_W = 250.0
_POWER_CAP_BIT = 0x4  # nvmlClocksEventReasonSwPowerCap


def _num(field: str) -> float:
  return float(field.strip().split()[0])


def summarise(folder: str) -> list[dict]:
  out = []
  for path in sorted(glob.glob(os.path.join(folder, "smi_*.csv"))):
    tag = os.path.basename(path)[len("smi_"):-len(".csv")]
    with open(path, newline="") as fh:
      rows = [r for r in csv.reader(fh, skipinitialspace=True) if len(r) >= 5]
    load = []
    for r in rows:
      try:
        load.append((_num(r[1]), _num(r[2]), int(r[4].strip(), 16)))
      except ValueError:  # "[N/A]" or a header line
        continue
    load = [s for s in load if s[1] > _LOAD_W]
    recs = []
    for j in glob.glob(os.path.join(folder, tag, "*.json")):
      with open(j) as fh:
        recs += json.load(fh)
    for rec in recs:
      # The power stage's POWER_PREFIX (the energy stage's variant) heads the tag.
      suffix = f"{rec['impl']}_{str(rec['causal']).lower()}"
      variant = tag[:-len(suffix)].rstrip("_") if tag.endswith(suffix) else ""
      row = {"tag": tag, "variant": variant, "impl": rec["impl"], "causal": rec["causal"],
             "ms": rec["ms"],
             "tflops": rec["tflops"], "load_samples": len(load)}
      if load:
        watts = statistics.median(s[1] for s in load)
        row.update(sm_mhz=statistics.median(s[0] for s in load), watts=watts,
                   capped=sum(1 for s in load if s[2] & _POWER_CAP_BIT) / len(load),
                   joules_per_call=watts * rec["ms"] * 1e-3)
      out.append(row)
  return out


def main(folder: str) -> None:
  rows = summarise(folder)
  # A variant column only when the energy stage named variants.
  vw = max((len(r["variant"]) for r in rows), default=0)
  vw = vw and max(vw, len("variant"))

  def lead(variant: str) -> str:
    return f"{variant:{vw}s} " if vw else ""

  print(lead("variant") + f"{'impl':18s} {'causal':6s} {'ms':>7s} {'TF/s':>6s} {'MHz':>5s} "
        f"{'W':>5s} {'capped':>6s} {'J/call':>7s} samples")
  for r in rows:
    line = f"{r['impl']:18s} {str(r['causal']):6s} {r['ms']:7.3f} {r['tflops']:6.1f}"
    if "watts" in r:
      line += (f" {r['sm_mhz']:5.0f} {r['watts']:5.0f} {r['capped']:6.0%} "
               f"{r['joules_per_call']:7.3f} {r['load_samples']}")
    else:
      line += "  no samples under load"
    print(lead(r["variant"]) + line)
  with open(os.path.join(folder, "power.json"), "w") as fh:
    json.dump(rows, fh, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
