"""Summarise a backward CTA timeline (cc/hopper/bwd_trace.h).

  python tests/cuda/bwd_trace_summary.py TRACE_FILE [--ghz 1.98]

Per CTA (medians over CTAs, in microseconds at --ghz): entry -> K
arrived, K -> first step done, the mean later step, last step -> dK/dV
epilogue done, and the gap on the same SM from one CTA's last event to the
next CTA's entry (clock64 is per SM, so only same-SM differences count).
"""

import argparse
import collections
import struct
import statistics as st


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("path")
  ap.add_argument("--ghz", type=float, default=1.98)
  args = ap.parse_args()
  data = open(args.path, "rb").read()
  ctas, gx, gy, gz = struct.unpack("<4q", data[:32])
  slots = (len(data) - 32) // (8 * ctas)  # 8 before the fused dQ convert's two
  vals = struct.unpack(f"<{ctas * slots}Q", data[32:32 + ctas * slots * 8])
  rows = [vals[i * slots:(i + 1) * slots] + (0,) * (10 - slots) for i in range(ctas)]
  rows = [r for r in rows if r[1] and r[5]]  # CTAs that ran (varlen: some exit)
  if not rows:
    print(f"{args.path}: no CTA recorded a timeline")
    return
  us = lambda c: c / args.ghz / 1e3
  kv = [us(r[2] - r[1]) for r in rows]
  first = [us(r[3] - r[2]) for r in rows]
  epi = [us(r[5] - r[4]) for r in rows]
  wr = [us(max(r[6], r[5]) - r[5]) for r in rows]
  body = [us(r[4] - r[3]) for r in rows]
  total = [us(max(r[5], r[6], r[8], r[9]) - r[1]) for r in rows]
  dq_wait = [us(r[8] - r[5]) for r in rows if r[8]]
  conv = [us(r[9] - r[8]) for r in rows if r[9]]
  by_sm = collections.defaultdict(list)
  for r in rows:
    by_sm[r[0]].append(r)
  gaps = []
  for sm_rows in by_sm.values():
    sm_rows.sort(key=lambda r: r[1])
    for a, b in zip(sm_rows, sm_rows[1:]):
      gaps.append(us(b[1] - max(a[5], a[6], a[8], a[9])))
  med = lambda x: st.median(x) if x else float("nan")
  print(f"{args.path}: {len(rows)} CTAs ran of {ctas} (grid {gx} x {gy} x {gz}), "
        f"{len(by_sm)} SMs")
  print(f"  entry -> K arrived       {med(kv):7.2f} us")
  print(f"  K -> first step done     {med(first):7.2f} us")
  print(f"  later steps (all)        {med(body):7.2f} us")
  print(f"  last step -> epilogue    {med(epi):7.2f} us")
  print(f"  epilogue -> writer done  {med(wr):7.2f} us")
  print(f"  epilogue -> dQ count     {med(dq_wait):7.2f} us (fused dQ convert)")
  print(f"  dQ converts              {len(conv):7d} CTAs, median {med(conv):.2f} us, "
        f"sum {sum(conv):.0f} us")
  print(f"  CTA total                {med(total):7.2f} us")
  print(f"  gap to next CTA on SM    {med(gaps):7.2f} us (p90 "
        f"{sorted(gaps)[int(0.9 * len(gaps))] if gaps else float('nan'):.2f})")
  tmin = min(r[7] for r in rows)
  tmax = max(r[7] for r in rows)
  print(f"  entries span {(tmax - tmin) / 1e3:.1f} us (globaltimer)")


if __name__ == "__main__":
  main()
