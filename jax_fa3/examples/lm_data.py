"""Byte-level text data for ``jax_fa3.examples.train_lm``: the Python standard
library sources of the running interpreter.

Why this corpus: it is real text (about 30 MB of Python source on CPython
3.11), present on every machine that runs the example, needs no download and
no tokenizer (a token is a byte, vocabulary 256).

Split: by FILE, not by position, so that validation measures generalisation
to unseen files rather than to the other half of a file seen in training. A
file goes to validation when a SHA-256 of its path relative to the stdlib root
falls in the lowest ``val_fraction`` of the hash range: deterministic across
runs, machines and Python's hash randomisation, and stable when files are
added or removed (each file's side depends on its own path only).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import pathlib
import sysconfig
from collections.abc import Iterator

import numpy as np

# Directories under the stdlib root that are not the standard library: the
# interpreter's site-packages lives inside it on most installs (~15k files of
# third-party code here), and caches hold no source.
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})

# Separates files in the concatenated stream. NUL never occurs in Python
# source text, so the model can learn "a new file starts here" from it.
FILE_SEPARATOR = 0

_HASH_RANGE = 2**64


def stdlib_root() -> pathlib.Path:
  """The running interpreter's standard library directory."""
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def list_source_files(root: pathlib.Path) -> list[str]:
  """Sorted POSIX paths (relative to ``root``) of the ``*.py`` files under it,
  without site-packages / dist-packages / __pycache__."""
  out = []
  for path in root.rglob("*.py"):
    rel = path.relative_to(root)
    if _EXCLUDED_DIRS.isdisjoint(rel.parts[:-1]) and path.is_file():
      out.append(rel.as_posix())
  return sorted(out)


def is_validation(rel_path: str, val_fraction: float) -> bool:
  """True if the file at ``rel_path`` belongs to the validation split."""
  h = int.from_bytes(hashlib.sha256(rel_path.encode("utf-8")).digest()[:8],
                     "little")
  return h < val_fraction * _HASH_RANGE


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The two splits as flat byte streams (files joined by FILE_SEPARATOR).

  Attributes:
    train, val: uint8 arrays of shape ``(n_bytes,)``.
    train_files, val_files: relative paths of the files in each split.
    root: the directory the files were read from.
  """
  train: np.ndarray
  val: np.ndarray
  train_files: tuple[str, ...]
  val_files: tuple[str, ...]
  root: str


def _concat(root: pathlib.Path, files: list[str]) -> np.ndarray:
  parts = []
  for rel in files:
    parts.append(np.frombuffer((root / rel).read_bytes(), np.uint8))
    parts.append(np.array([FILE_SEPARATOR], np.uint8))
  return np.concatenate(parts) if parts else np.zeros((0,), np.uint8)


@functools.lru_cache(maxsize=4)
def load_corpus(root: str | None = None, val_fraction: float = 0.05) -> Corpus:
  """Reads every stdlib ``*.py`` file and splits them by file.

  Args:
    root: directory to read; default ``stdlib_root()``.
    val_fraction: share of files (by path hash) in the validation split.

  Returns:
    A ``Corpus`` (cached per arguments: the arrays are read-only, ~30 MB).

  Raises:
    ValueError: if either split comes out empty.
  """
  base = pathlib.Path(root) if root is not None else stdlib_root()
  files = list_source_files(base)
  val_files = [f for f in files if is_validation(f, val_fraction)]
  train_files = [f for f in files if not is_validation(f, val_fraction)]
  if not train_files or not val_files:
    raise ValueError(f"{base}: {len(train_files)} train and {len(val_files)} "
                     f"validation .py files; need at least one of each "
                     f"(val_fraction={val_fraction})")
  train, val = _concat(base, train_files), _concat(base, val_files)
  train.flags.writeable = False
  val.flags.writeable = False
  return Corpus(train=train, val=val, train_files=tuple(train_files),
                val_files=tuple(val_files), root=str(base))


def unigram_entropy(data: np.ndarray) -> float:
  """Entropy of the byte histogram of ``data``, in nats per byte.

  The cross-entropy of the best model that ignores context, so the loss of
  a language model (also in nats, natural log) should fall well below it.
  Bits per byte = this / ln(2).
  """
  counts = np.bincount(np.asarray(data, np.uint8), minlength=256)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def nats_to_bits(x: float) -> float:
  return x / math.log(2.0)


def train_batches(data: np.ndarray, batch_size: int, seq_len: int,
                  seed: int) -> Iterator[np.ndarray]:
  """Endless random windows of the training stream.

  Yields int32 arrays of shape ``(batch_size, seq_len + 1)``: inputs are
  ``[:, :-1]``, next-byte targets ``[:, 1:]``. Window starts are uniform over
  the stream (they may cross file separators, as in GPT-style packing), drawn
  from ``np.random.default_rng(seed)``: the same seed gives the same batches
  whatever the attention implementation.
  """
  if len(data) < seq_len + 2:
    raise ValueError(f"training data of {len(data)} bytes is shorter than "
                     f"seq_len + 2 = {seq_len + 2}")
  rng = np.random.default_rng(seed)
  idx = np.arange(seq_len + 1)
  while True:
    starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
    yield data[starts[:, None] + idx].astype(np.int32)


def eval_batches(data: np.ndarray, n_batches: int, batch_size: int,
                 seq_len: int) -> list[np.ndarray]:
  """A fixed validation set: ``n_batches`` int32 arrays of shape
  ``(batch_size, seq_len + 1)`` whose windows are evenly spaced over the
  validation stream, so every evaluation (and every run) sees the same bytes
  and spans as many validation files as possible."""
  if len(data) < seq_len + 2:
    raise ValueError(f"validation data of {len(data)} bytes is shorter than "
                     f"seq_len + 2 = {seq_len + 2}")
  n = n_batches * batch_size
  starts = np.linspace(0, len(data) - seq_len - 1, n).astype(np.int64)
  windows = data[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
  return list(windows.reshape(n_batches, batch_size, seq_len + 1))
