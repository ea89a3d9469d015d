r"""Train a byte-level transformer language model on the Python standard
library, with jax_fa3, cuDNN or XLA attention.

    python -m jax_fa3.examples.train_lm                # preset by backend
    python -m jax_fa3.examples.train_lm --preset h100-100m --attention cudnn
    python -m jax_fa3.examples.train_lm --steps 50 --seq_len 128 --attention xla

Data: every ``*.py`` file of the running interpreter's stdlib, bytes as
tokens, split into train / validation by a hash of each file's path
(``lm_data``). Model: Flax NNX decoder with RoPE, GQA and SwiGLU
(``lm_model``). Optimiser: AdamW (optax) with linear warmup and cosine decay,
gradient clipping at global norm ``--grad_clip``.

``--attention``: ``fa3`` = ``jax_fa3.attention(q, k, v, causal=True)``;
``cudnn`` / ``xla`` = ``jax.nn.dot_product_attention(..., is_causal=True,
implementation=...)``. Without a GPU only fa3 (jax_fa3's CPU backend) and xla
run.

Presets (``--preset``; default ``h100-100m`` on a GPU, ``cpu-small``
otherwise; any flag given overrides its preset value):

========== ======= ====== ===== ======== ======= ===== ===== =====
preset     d_model layers heads kv_heads seq_len batch steps lr
========== ======= ====== ===== ======== ======= ===== ===== =====
cpu-small  128     2      4     2        256     8     200   3e-3
h100-100m  768     12     6     2        2048    16    2000  1e-3
========== ======= ====== ===== ======== ======= ===== ===== =====

``head_dim`` defaults to ``d_model // n_heads`` (32 and 128), ``mlp_hidden``
to ``4 * d_model``; h100-100m has 104.2M parameters.

Outputs in ``--out_dir``: ``train_<attention>_<seq_len>.json`` (config,
per-step train loss and tokens/s, validation losses, throughput, wall time,
parameter count, backend and device, unigram entropy of the training bytes)
and ``train_<attention>_<seq_len>.png``. Overlay several runs with
``python -m jax_fa3.examples.plot_lm a.json b.json --out cmp.png``.

Losses are mean next-byte cross-entropy in nats; the unigram byte entropy
(the loss of the best context-free model) is printed in nats and bits for
comparison. Tokens/s excludes compilation (the first ``--skip_steps`` steps)
and evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import flax
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jax_fa3
from jax_fa3.examples import lm_data
from jax_fa3.examples import lm_model
from jax_fa3.examples import plot_lm

PRESETS: dict[str, dict[str, Any]] = {
    # A few minutes on a 2-core CPU, float32.
    "cpu-small": dict(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                      seq_len=256, batch_size=8, steps=200, lr=3e-3,
                      warmup_steps=20, eval_every=50, eval_batches=8),
    # ~100M parameters (104.2M) for one H100, bfloat16: 32k tokens a step.
    # Heads of 128 (6 query, 2 key/value): the FA3 paper's main head dim.
    "h100-100m": dict(d_model=768, n_layers=12, n_heads=6, n_kv_heads=2,
                      seq_len=2048, batch_size=16, steps=2000, lr=1e-3,
                      warmup_steps=200, eval_every=250, eval_batches=16),
}


def default_preset() -> str:
  return "h100-100m" if jax.default_backend() == "gpu" else "cpu-small"


def default_dtype() -> str:
  # The GPU kernels (jax_fa3 and cuDNN) take bfloat16/float16 only; on the CPU
  # float32 is both supported and faster than emulated bfloat16.
  return "bfloat16" if jax.default_backend() == "gpu" else "float32"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a run depends on (written to the JSON log).

  ``head_dim`` / ``mlp_hidden`` of 0 mean ``d_model // n_heads`` /
  ``4 * d_model``; ``dtype`` "" means ``default_dtype()``. ``lr`` is the
  peak learning rate, reached after ``warmup_steps`` and cosine-decayed to
  ``lr * min_lr_ratio`` at ``steps``.
  """
  preset: str = "cpu-small"
  attention: str = "fa3"
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 0
  mlp_hidden: int = 0
  seq_len: int = 256
  batch_size: int = 8
  steps: int = 200
  lr: float = 3e-3
  warmup_steps: int = 20
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  seed: int = 0
  eval_every: int = 50
  eval_batches: int = 8
  skip_steps: int = 2
  dtype: str = ""
  val_fraction: float = 0.05
  data_root: str | None = None
  out_dir: str = "examples/results/train_lm"

  def resolved(self) -> "TrainConfig":
    """A copy with the derived defaults filled in."""
    return dataclasses.replace(
        self,
        head_dim=self.head_dim or self.d_model // self.n_heads,
        mlp_hidden=self.mlp_hidden or 4 * self.d_model,
        dtype=self.dtype or default_dtype())

  def model_config(self) -> lm_model.LMConfig:
    c = self.resolved()
    return lm_model.LMConfig(
        d_model=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads,
        n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, mlp_hidden=c.mlp_hidden,
        attention=c.attention, dtype=c.dtype)


def make_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
  """The preset's values (default: ``default_preset()``), then ``overrides``
  (TrainConfig field names); derived defaults resolved."""
  preset = preset or default_preset()
  if preset not in PRESETS:
    raise ValueError(f"--preset={preset!r}: expected one of {sorted(PRESETS)}")
  values = {**PRESETS[preset], **overrides}
  return TrainConfig(preset=preset, **values).resolved()


def _decay_mask(params):
  # Weight decay on matrices (projections, embedding, head), not on the
  # RMSNorm scales, whose pull towards 0 would fight the normalisation.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """AdamW (b2 0.95) with linear warmup from ``lr / (warmup + 1)`` to ``lr``
  and cosine decay to ``lr * min_lr_ratio``, after global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=cfg.lr / (cfg.warmup_steps + 1), peak_value=cfg.lr,
      warmup_steps=cfg.warmup_steps,
      decay_steps=max(cfg.steps, cfg.warmup_steps + 1),
      end_value=cfg.lr * cfg.min_lr_ratio)
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay,
                  mask=_decay_mask))


def make_steps(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
  """Jitted ``train_step(params, opt_state, batch) -> (params, opt_state,
  loss)`` (params and optimiser state donated: updated in place) and
  ``eval_step(params, batch) -> loss``.

  The model is split once into a static graphdef and a pytree of parameters
  and re-merged inside the traced function: plain ``jax.jit`` on pytrees, so
  a step costs no Python-side graph traversal (cheaper than ``nnx.jit``).
  ``batch`` is int32 ``(batch_size, seq_len + 1)``; losses are float32 nats.
  """
  def loss_fn(params, batch):
    return lm_model.next_byte_loss(nnx.merge(graphdef, params), batch)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step, jax.jit(loss_fn)


def _device_info() -> dict[str, Any]:
  dev = jax.devices()[0]
  return dict(backend=jax.default_backend(), device=dev.device_kind,
              platform=dev.platform, n_devices=jax.device_count(),
              jax=jax.__version__, flax=flax.__version__,
              optax=optax.__version__,
              jax_fa3_cuda_built=bool(jax_fa3.cuda_built()),
              host=platform.node(), cpu_count=os.cpu_count())


def _fa3_bwd_hint(err: Exception) -> Exception | None:
  # A CUDA build without the Hopper backward kernels (README, "Status") fails
  # the first step inside XLA; say which flag to change. The handler's own
  # message (which names the build option) is quoted, not restated, so that
  # it stays right if the option is renamed.
  msg = str(err)
  if "backward kernel" in msg and jax.default_backend() == "gpu":
    return RuntimeError(
        f"--attention=fa3 cannot train here: {msg.strip()} -- or use "
        f"--attention=cudnn / --attention=xla")
  return None


def train(cfg: TrainConfig, *, progress: bool = True,
          write_files: bool = True) -> dict[str, Any]:
  """Trains ``cfg`` from scratch and returns the run log.

  Args:
    cfg: the run (see ``make_config``).
    progress: show a tqdm bar (loss, tokens/s).
    write_files: write ``train_<attention>_<seq_len>.json`` / ``.png`` into
      ``cfg.out_dir``.

  Returns:
    The JSON-able log: ``train`` (per step: ``step`` = updates done before
    the step's loss, ``loss`` in nats, ``tokens_per_s``, ``time_s``
    cumulative training seconds without evaluation and without step 0, which
    compiles), ``val`` (``step``, ``loss``, ``time_s``), ``tokens_per_s``
    (steady state), ``n_params``, ``unigram_entropy_nats``, ``wall_time_s``
    and the rest described in the module docstring.

  Raises:
    ValueError: bad config, or ``attention="cudnn"`` without a GPU.
    FloatingPointError: the training loss became NaN/inf.
  """
  t_start = time.perf_counter()
  cfg = cfg.resolved()
  lm_model.check_attention_available(cfg.attention)
  model_cfg = cfg.model_config()

  corpus = lm_data.load_corpus(cfg.data_root, cfg.val_fraction)
  h_nats = lm_data.unigram_entropy(corpus.train)
  logging.info("data: %s: %d train files (%.1f MB), %d validation files "
               "(%.2f MB)", corpus.root, len(corpus.train_files),
               corpus.train.size / 1e6, len(corpus.val_files),
               corpus.val.size / 1e6)
  _say(progress, f"unigram byte entropy of the training data: {h_nats:.4f} "
       f"nats/byte ({lm_data.nats_to_bits(h_nats):.4f} bits/byte); "
       f"uniform: {math.log(256):.4f} nats")

  model = lm_model.ByteLM(model_cfg, rngs=nnx.Rngs(cfg.seed))
  # Filtering on Param fails loudly if the model ever grows other state
  # that the pure train step would silently drop.
  graphdef, params = nnx.split(model, nnx.Param)
  del model
  n_params = lm_model.count_params(params)
  tx = make_optimizer(cfg)
  opt_state = tx.init(params)
  train_step, eval_step = make_steps(graphdef, tx)
  info = _device_info()
  _say(progress, f"model: {n_params / 1e6:.3f}M parameters, "
       f"attention={cfg.attention}, dtype={cfg.dtype}, backend="
       f"{info['backend']} ({info['device']}), {cfg.batch_size}x{cfg.seq_len}"
       f" tokens/step")

  batches = lm_data.train_batches(corpus.train, cfg.batch_size, cfg.seq_len,
                                  cfg.seed)
  val_set = [jnp.asarray(b) for b in lm_data.eval_batches(
      corpus.val, cfg.eval_batches, cfg.batch_size, cfg.seq_len)]
  tokens_per_step = cfg.batch_size * cfg.seq_len

  train_log = dict(step=[], loss=[], tokens_per_s=[], time_s=[])
  val_log = dict(step=[], loss=[], time_s=[])
  train_time = 0.0

  def evaluate(step: int) -> float:
    losses = [eval_step(params, b) for b in val_set]
    v = float(np.mean(jax.device_get(losses)))
    val_log["step"].append(step)
    val_log["loss"].append(v)
    val_log["time_s"].append(train_time)
    return v

  val_loss = evaluate(0)
  _say(progress, f"step 0: validation loss {val_loss:.4f}")

  bar = _progress_bar(cfg.steps, progress)
  batch = jax.device_put(next(batches))
  t_prev = time.perf_counter()
  for step in range(cfg.steps):
    try:
      params, opt_state, loss = train_step(params, opt_state, batch)
      if step + 1 < cfg.steps:
        # Host-side sampling of the next batch overlaps the device's step.
        batch = jax.device_put(next(batches))
      loss = float(loss)  # waits for the step
    except Exception as e:  # noqa: BLE001  (re-raised; with a hint on fa3)
      hint = _fa3_bwd_hint(e)
      if hint is None:
        raise
      raise hint from e
    now = time.perf_counter()
    dt = now - t_prev
    if step:  # step 0 is mostly compilation: kept out of the time axis
      train_time += dt
    if not math.isfinite(loss):
      raise FloatingPointError(f"training loss is {loss} at step {step}")
    train_log["step"].append(step)
    train_log["loss"].append(loss)
    train_log["tokens_per_s"].append(tokens_per_step / dt)
    train_log["time_s"].append(train_time)
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.3f}", val=f"{val_loss:.3f}",
                    tok_s=f"{tokens_per_step / dt:,.0f}", refresh=False)
    done = step + 1
    if done % cfg.eval_every == 0 or done == cfg.steps:
      val_loss = evaluate(done)
      _say(progress, f"step {done}: train loss {loss:.4f}, validation loss "
           f"{val_loss:.4f} nats ({lm_data.nats_to_bits(val_loss):.3f} bits)")
      # Restart the clock: evaluation is not training time.
      now = time.perf_counter()
    t_prev = now
  bar.close()

  # Steady-state throughput: without the compiling first step(s).
  counted = [tokens_per_step / tps for tps in
             train_log["tokens_per_s"][cfg.skip_steps:]]
  tokens_per_s = (tokens_per_step * len(counted) / sum(counted)
                  if counted else None)
  tail = train_log["loss"][-10:]
  log = dict(
      config=dataclasses.asdict(cfg),
      model_config=dataclasses.asdict(model_cfg),
      attention=cfg.attention,
      seq_len=cfg.seq_len,
      n_params=n_params,
      **info,
      data=dict(root=corpus.root, n_train_files=len(corpus.train_files),
                n_val_files=len(corpus.val_files),
                train_bytes=int(corpus.train.size),
                val_bytes=int(corpus.val.size)),
      unigram_entropy_nats=h_nats,
      unigram_entropy_bits=lm_data.nats_to_bits(h_nats),
      loss_unit="nats per byte",
      tokens_per_step=tokens_per_step,
      tokens_per_s=tokens_per_s,
      throughput_skip_steps=cfg.skip_steps,
      first_step_s=(tokens_per_step / train_log["tokens_per_s"][0]
                    if cfg.steps else None),
      train_time_s=train_time,
      final_train_loss=float(np.mean(tail)) if tail else None,
      final_val_loss=val_log["loss"][-1],
      train=train_log,
      val=val_log,
  )
  log["wall_time_s"] = time.perf_counter() - t_start
  tps = f"{tokens_per_s:,.0f}" if tokens_per_s else "n/a"
  _say(progress, f"done: final validation loss {log['final_val_loss']:.4f} "
       f"nats vs unigram entropy {h_nats:.4f}; {tps} tokens/s; wall time "
       f"{log['wall_time_s']:.1f} s")
  if write_files:
    write_outputs(log, cfg.out_dir)
  return log


def output_stem(log: dict[str, Any]) -> str:
  return f"train_{log['attention']}_{log['seq_len']}"


def write_outputs(log: dict[str, Any], out_dir: str) -> tuple[str, str]:
  """Writes the log as JSON and its loss curves as PNG; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, output_stem(log))
  with open(stem + ".json", "w") as f:
    json.dump(log, f, indent=1)
  plot_lm.plot_runs([log], stem + ".png")
  logging.info("wrote %s.json and %s.png", stem, stem)
  return stem + ".json", stem + ".png"


def _say(progress: bool, msg: str) -> None:
  # Printed above the bar when there is one (a log line would tear it);
  # logged otherwise.
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    tqdm.write(msg)
  else:
    logging.info("%s", msg)


class _NoBar:
  def update(self, n):
    pass

  def set_postfix(self, **kw):
    pass

  def close(self):
    pass


def _progress_bar(total: int, progress: bool):
  if not progress:
    return _NoBar()
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, unit="step", dynamic_ncols=True, mininterval=0.5)


# ---------------------------------------------------------------- CLI ----

_INT_FLAGS = {
    "d_model": "Residual width.",
    "n_layers": "Transformer blocks.",
    "n_heads": "Query heads.",
    "n_kv_heads": "Key/value heads (GQA; divides n_heads).",
    "head_dim": "Head dim; GPU kernel: 64, 96, 128, 192 or 256. Default: "
                "d_model // n_heads.",
    "mlp_hidden": "SwiGLU hidden width. Default: 4 * d_model.",
    "seq_len": "Context length in bytes.",
    "batch_size": "Sequences per step.",
    "steps": "Optimiser steps.",
    "warmup_steps": "Linear warmup steps.",
    "eval_every": "Validate every this many steps (and at the end).",
    "eval_batches": "Validation batches (fixed windows) per evaluation.",
}


def define_flags() -> None:
  """Registers the command-line flags. Only when run as a program: importing
  this module (tests, notebooks) must not claim global absl flag names such
  as --seed or --dtype that other programs define too."""
  flags.DEFINE_enum("preset", None, sorted(PRESETS),
                    "Size preset; default h100-100m on a GPU, cpu-small "
                    "otherwise.")
  flags.DEFINE_enum(
      "attention", "fa3", list(lm_model.ATTENTION_IMPLS),
      "Attention: fa3 (jax_fa3), cudnn or xla (jax.nn.dot_product_attention).")
  for name, text in _INT_FLAGS.items():
    if "Default:" not in text:
      text += " Default: from --preset."
    flags.DEFINE_integer(name, None, text)
  flags.DEFINE_float("lr", None, "Peak AdamW learning rate. Default: from "
                     "--preset.")
  flags.DEFINE_integer("seed", 0, "Seed of the init and the batches.")
  flags.DEFINE_enum("dtype", None, ["bfloat16", "float16", "float32"],
                    "Compute dtype; default bfloat16 on a GPU, float32 "
                    "otherwise.")
  flags.DEFINE_float("weight_decay", 0.1, "AdamW weight decay.")
  flags.DEFINE_float("grad_clip", 1.0, "Global-norm gradient clipping.")
  flags.DEFINE_integer("skip_steps", 2, "First steps left out of the "
                       "tokens/s figure (compilation).")
  flags.DEFINE_string("out_dir", "examples/results/train_lm",
                      "Where the JSON log and the PNG go.")
  flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  overrides = {n: f[n].value for n in [*_INT_FLAGS, "lr", "dtype"]
               if f[n].value is not None}
  try:
    # Flag errors (and cudnn without a GPU) as one line, not a traceback
    # (nor app.UsageError's page of usage text burying it).
    cfg = make_config(
        f.preset, attention=f.attention, seed=f.seed,
        weight_decay=f.weight_decay, grad_clip=f.grad_clip,
        skip_steps=f.skip_steps, out_dir=f.out_dir, **overrides)
    cfg.model_config()
    lm_model.check_attention_available(cfg.attention)
  except ValueError as e:
    raise SystemExit(f"train_lm: error: {e}") from e
  logging.info("config: %s", cfg)
  train(cfg, progress=f.progress)


if __name__ == "__main__":
  define_flags()
  app.run(main)
