"""benchmarks/varlen.py (packed vs padded vs dense) in its CPU smoke mode, and
its document-length and FLOP helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import _multiprocess_worker as mpw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks import varlen  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize("tokens,lo,hi,seed", [(16384, 128, 4096, 0), (1000, 1, 7, 3),
                                               (100, 300, 400, 1)])
def test_document_lengths_fill_exactly(tokens, lo, hi, seed):
  lens = varlen.document_lengths(tokens, lo, hi, seed)
  assert sum(lens) == tokens
  assert all(0 < n <= hi for n in lens)
  assert all(n >= lo for n in lens[:-1])  # only the last one is cut


def test_useful_flops_counts_visible_pairs():
  # 4 * h * d per visible pair; causal keeps the diagonal.
  assert varlen.useful_flops([3, 2], 2, 8, False, "fwd") == 4 * 2 * 8 * (9 + 4)
  assert varlen.useful_flops([3, 2], 2, 8, True, "fwd") == 4 * 2 * 8 * (6 + 3)
  assert varlen.useful_flops([3], 1, 1, False, "bwd") == 2.5 * 4 * 9


@pytest.mark.skipif(mpw.in_child(), reason="the multi-device child runs other modules")
def test_varlen_benchmark_smoke(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "benchmarks.varlen", "--smoke",
                      f"--out_dir={tmp_path}", "--tag=cpu"],
                     env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
  with open(tmp_path / "varlen-cpu.json") as f:
    records = json.load(f)
  assert {(x["impl"], x["mode"], x["causal"]) for x in records} == {
      (i, m, c) for i in ("jax_fa3-varlen", "jax_fa3-dense") for m in ("fwd", "bwd")
      for c in (False, True)}
  assert all(x["ms"] > 0 and not x.get("error") for x in records), records
  ours = [x for x in records if x["impl"] == "jax_fa3-varlen"]
  assert all(x["tflops_vs_dense"] > 0 and x["tokens"] == 512 for x in ours)


@pytest.mark.skipif(mpw.in_child(), reason="the multi-device child runs other modules")
def test_varlen_benchmark_peer_rows_agree(tmp_path):
  # The three padded readings (seq lengths, boolean mask, repack from packed)
  # run with XLA on the CPU: their padding, masks and unpadding must match the
  # packed kernel on every valid row, or the run exits 1.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  impls = "jax_fa3-varlen,jax-cudnn-padded,jax-cudnn-mask,jax-cudnn-repack"
  r = subprocess.run([sys.executable, "-m", "benchmarks.varlen", "--smoke",
                      f"--out_dir={tmp_path}", "--tag=cpu", f"--impls={impls}",
                      "--peer_implementation=xla"],
                     env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
  with open(tmp_path / "varlen-cpu.json") as f:
    records = json.load(f)
  peers = [x for x in records if x["impl"].startswith("jax-cudnn")]
  assert len(peers) == 3 * 4 and all(x["ms"] > 0 for x in peers), records
  assert all(x["rel_err_vs_varlen"] < 2e-2 and x["varlen_speedup"] > 0 for x in peers), peers
