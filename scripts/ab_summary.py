"""Summary of an A/B run through JAX (scripts/device.sh dqfuseab).

Reads the benchmark json files of one directory, named <kind>-<tag>.json
with tag base1 / new1 / new2 / base2 (benchmarks.attention and
benchmarks.varlen records), pairs the records of each point across the four
runs, and prints one line per point: the four TF/s values and new / base
(mean over the two runs of each; base-vs-base spread shows the noise).

Usage: python3 scripts/ab_summary.py DIR
"""
import collections
import glob
import json
import os
import sys

from absl import app

TAGS = ("base1", "new1", "new2", "base2")


def point_key(kind: str, rec: dict) -> str:
  parts = [kind, rec.get("impl", "?"), rec.get("mode", "?"), f"d{rec.get('d')}",
           "causal" if rec.get("causal") else "noncausal"]
  if "seqlen" in rec and kind != "varlen":
    parts.append(f"s{rec['seqlen']}")
  return " ".join(parts)


def main(argv) -> None:
  if len(argv) != 2:
    raise app.UsageError("usage: ab_summary.py DIR")
  runs: dict[str, dict[str, float]] = collections.defaultdict(dict)
  for path in sorted(glob.glob(os.path.join(argv[1], "*.json"))):
    name = os.path.basename(path)[:-len(".json")]
    kind, _, tag = name.rpartition("-")
    if tag not in TAGS:
      continue
    with open(path) as fh:
      for rec in json.load(fh):
        if rec.get("tflops"):
          runs[point_key(kind, rec)][tag] = rec["tflops"]
  for key, v in sorted(runs.items()):
    if len(v) < len(TAGS):
      print(f"{key:48s} incomplete: {v}")
      continue
    base = (v["base1"] + v["base2"]) / 2
    new = (v["new1"] + v["new2"]) / 2
    print(f"{key:48s} base {v['base1']:6.1f} {v['base2']:6.1f}  new {v['new1']:6.1f} "
          f"{v['new2']:6.1f}  new/base {new / base:5.3f}")


if __name__ == "__main__":
  app.run(main)
