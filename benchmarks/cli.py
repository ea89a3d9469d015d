"""Command-line helpers shared by the benchmark programs (attention, ring,
varlen)."""

from __future__ import annotations

from absl import app
from absl import flags


def start(argv, smoke: bool, overrides: dict) -> None:
  """Every program's first step: no positional arguments (UsageError), and
  --smoke applied (``apply_smoke``)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if smoke:
    apply_smoke(overrides)


def apply_smoke(overrides: dict) -> None:
  """--smoke: set each flag in `overrides` unless given on the command line."""
  for name, value in overrides.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value


def parse_modes(values) -> list[str]:
  """--modes: a non-empty list of "fwd" / "bwd"; UsageError otherwise."""
  modes = [m.strip() for m in values if m.strip()]
  if not modes or any(m not in ("fwd", "bwd") for m in modes):
    raise app.UsageError(f"--modes: fwd and/or bwd, got {list(values)}")
  return modes
