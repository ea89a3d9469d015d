"""Command-line helpers shared by the benchmark programs (attention, ring)."""

from __future__ import annotations

from absl import app
from absl import flags


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
