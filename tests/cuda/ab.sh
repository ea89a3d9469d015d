#!/usr/bin/env bash
# A/B timing of two harness binaries (forward or backward, `--bench --d N`)
# in one device call, in the order base, new, new, base per head dim (clock
# drift and noise show up as base-vs-base spread). Usage:
# tests/cuda/ab.sh BASE NEW [head dims] (default "64 128 256"). Prints one
# line per (d, seqlen, mode) with the four TF/s values and new/base.
base=$1 new=$2
dims=${3:-64 128 256}
tmp=$(mktemp -d)
for d in $dims; do
  for tag in b1 n1 n2 b2; do
    bin=$base; [ "${tag:0:1}" = n ] && bin=$new
    timeout 120 "$bin" --bench --d "$d" | tee -a "${AB_LOG:-/dev/null}" > "$tmp/$d.$tag"
  done
  python3 - "$tmp" "$d" <<'PY'
import sys, re, statistics
tmp, d = sys.argv[1], sys.argv[2]
runs = {}
for tag in ("b1", "n1", "n2", "b2"):
    for line in open(f"{tmp}/{d}.{tag}"):
        # backward harness: "d= 64 s= 2048 causal det ... 123.4 TF/s"
        m = re.match(r"d=\s*(\d+) s=\s*(\d+) (\S+)\s+(det)?.*?([\d.]+) TF/s", line)
        if m:
            key, tfs = f"d{m[1]} s{m[2]} {m[3]} {m[4] or ''}", m[5]
        else:  # forward harness table: "hdim seqlen causal ms TF/s"
            m = re.match(r"(\d+)\s+(\d+)\s+([01])\s+[\d.]+\s+([\d.]+)\s*$", line)
            if m is None: continue  # headers, other output
            key, tfs = f"d{m[1]} s{m[2]} {'causal' if m[3] == '1' else 'noncausal'}", m[4]
        runs.setdefault(key, {})[tag] = float(tfs)
for key, v in runs.items():
    if len(v) < 4: continue
    b = (v["b1"] + v["b2"]) / 2; n = (v["n1"] + v["n2"]) / 2
    print(f"{key:32s} base {v['b1']:6.1f} {v['b2']:6.1f}  new {v['n1']:6.1f} {v['n2']:6.1f}  new/base {n / b:5.3f}")
PY
done
rm -rf "$tmp"
