"""A byte-level decoder-only transformer in Flax NNX, for
``jax_fa3.examples.train_lm``.

Llama-style block: pre-norm RMSNorm -> causal self-attention with rotary
position embeddings (RoPE) on q/k and grouped-query attention (GQA) ->
residual; RMSNorm -> SwiGLU MLP -> residual. Final RMSNorm and an untied
output head (a separate ``(d_model, 256)`` matrix: with a 256-byte vocabulary
tying would save only 256 * d_model parameters, and untied keeps the input
embedding free to be a lookup table rather than a classifier).

The attention core is chosen by name (``ATTENTION_IMPLS``) so that the same
weights can run on jax_fa3, cuDNN or XLA and their losses compared. All three
take K/V with ``n_kv_heads`` heads as they are: no ``repeat`` to ``n_heads``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import jax_fa3

ATTENTION_IMPLS = ("fa3", "cudnn", "xla")


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Model hyper-parameters.

  Attributes:
    vocab_size: 256 for bytes.
    d_model: width of the residual stream.
    n_layers: number of transformer blocks.
    n_heads: query heads.
    n_kv_heads: key/value heads; ``n_heads % n_kv_heads == 0`` (GQA).
    head_dim: per-head width (the GPU kernel supports 64/96/128/192/256;
      the CPU backend any multiple of 8 up to 256). ``n_heads * head_dim``
      need not equal ``d_model``.
    mlp_hidden: SwiGLU hidden width.
    rope_theta: RoPE base wavelength.
    attention: one of ``ATTENTION_IMPLS``.
    dtype: compute dtype of matmuls and attention (name, e.g. "bfloat16");
      parameters, norms, RoPE and the loss stay float32.
  """
  vocab_size: int = 256
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 32
  mlp_hidden: int = 384
  rope_theta: float = 10000.0
  attention: str = "fa3"
  dtype: str = "float32"

  def __post_init__(self):
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(f"attention={self.attention!r}: expected one of "
                       f"{ATTENTION_IMPLS}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} is not a multiple of "
                       f"n_kv_heads={self.n_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")


def check_attention_available(impl: str) -> None:
  """Raises ValueError naming ``--attention`` when ``impl`` cannot run on the
  default JAX backend (cuDNN needs an NVIDIA GPU; fa3 on a GPU needs the
  CUDA build of jax_fa3)."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"--attention={impl!r}: expected one of {ATTENTION_IMPLS}")
  backend = jax.default_backend()
  if impl == "cudnn" and backend != "gpu":
    raise ValueError(
        f"--attention=cudnn needs an NVIDIA GPU with cuDNN, but the JAX "
        f"backend here is {backend!r}; use --attention=fa3 (jax_fa3's CPU "
        f"backend) or --attention=xla")
  if impl == "fa3" and backend == "gpu" and not jax_fa3.cuda_built():
    raise ValueError(
        "--attention=fa3 on the GPU needs jax_fa3 built with its CUDA kernels"
        " (this install has the CPU backend only; see the README, Building)")


def rope(x: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (rotate-half form) on the last axis.

  Args:
    x: ``(batch, seqlen, heads, head_dim)``, any float dtype; position ``t``
      is the index along axis 1.
    theta: base wavelength; pair ``i`` rotates by ``t * theta**(-2i/d)``.

  Returns:
    Same shape and dtype. Angles and the rotation are computed in float32:
    in bfloat16 the angle of a late position would lose its low bits.
  """
  seqlen, d = x.shape[1], x.shape[-1]
  inv_freq = theta ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2.0 / d)
  angles = jnp.arange(seqlen, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  cos = jnp.cos(angles)[None, :, None, :]
  sin = jnp.sin(angles)[None, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., : d // 2], x32[..., d // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     impl: str) -> jax.Array:
  """Causal self-attention core.

  Args:
    q: ``(batch, seqlen, n_heads, head_dim)``.
    k, v: ``(batch, seqlen, n_kv_heads, head_dim)``, same dtype as ``q``.
    impl: "fa3" (``jax_fa3.attention``), "cudnn" or "xla"
      (``jax.nn.dot_product_attention`` with that implementation).

  Returns:
    ``(batch, seqlen, n_heads, head_dim)`` in ``q``'s dtype; scale
    ``1/sqrt(head_dim)`` in all three.
  """
  if impl == "fa3":
    return jax_fa3.attention(q, k, v, causal=True)
  return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                      implementation=impl)


def _dense(d_in: int, d_out: int, cfg: LMConfig, rngs: nnx.Rngs,
           scale: float = 1.0) -> nnx.Linear:
  # LeCun-normal (std 1/sqrt(d_in)), times `scale` for the projections that
  # write into the residual stream (GPT-2's 1/sqrt(2 * n_layers)), so that the
  # stream's variance does not grow with depth at initialisation.
  init = jax.nn.initializers.variance_scaling(scale**2, "fan_in",
                                              "truncated_normal")
  return nnx.Linear(d_in, d_out, use_bias=False, dtype=jnp.dtype(cfg.dtype),
                    param_dtype=jnp.float32, kernel_init=init, rngs=rngs)


def _rmsnorm(cfg: LMConfig, rngs: nnx.Rngs) -> nnx.RMSNorm:
  # dtype=float32: the mean of squares is taken (and the scale applied) in
  # float32 whatever the compute dtype; the next matmul casts down.
  return nnx.RMSNorm(cfg.d_model, epsilon=1e-6, dtype=jnp.float32,
                     param_dtype=jnp.float32, rngs=rngs)


class Attention(nnx.Module):
  """GQA self-attention with RoPE: ``(b, s, d_model) -> (b, s, d_model)``."""

  def __init__(self, cfg: LMConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    q_width = cfg.n_heads * cfg.head_dim
    kv_width = cfg.n_kv_heads * cfg.head_dim
    # One fused projection for q, k and v: one GEMM instead of three.
    self.qkv = _dense(cfg.d_model, q_width + 2 * kv_width, cfg, rngs)
    self.out = _dense(q_width, cfg.d_model, cfg, rngs,
                      scale=(2 * cfg.n_layers) ** -0.5)

  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    b, s, _ = x.shape
    qkv = self.qkv(x)
    q_width = cfg.n_heads * cfg.head_dim
    kv_width = cfg.n_kv_heads * cfg.head_dim
    q = qkv[..., :q_width].reshape(b, s, cfg.n_heads, cfg.head_dim)
    k = qkv[..., q_width:q_width + kv_width].reshape(b, s, cfg.n_kv_heads,
                                                      cfg.head_dim)
    v = qkv[..., q_width + kv_width:].reshape(b, s, cfg.n_kv_heads,
                                              cfg.head_dim)
    q, k = rope(q, cfg.rope_theta), rope(k, cfg.rope_theta)
    o = causal_attention(q, k, v, cfg.attention)
    return self.out(o.reshape(b, s, q_width))


class SwiGLU(nnx.Module):
  """``down(silu(gate(x)) * up(x))``: ``(b, s, d_model) -> (b, s, d_model)``."""

  def __init__(self, cfg: LMConfig, rngs: nnx.Rngs):
    self.hidden = cfg.mlp_hidden
    # gate and up fused into one GEMM, split after.
    self.gate_up = _dense(cfg.d_model, 2 * cfg.mlp_hidden, cfg, rngs)
    self.down = _dense(cfg.mlp_hidden, cfg.d_model, cfg, rngs,
                       scale=(2 * cfg.n_layers) ** -0.5)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.gate_up(x)
    gate, up = h[..., :self.hidden], h[..., self.hidden:]
    return self.down(jax.nn.silu(gate) * up)


class Block(nnx.Module):
  """Pre-norm transformer block."""

  def __init__(self, cfg: LMConfig, rngs: nnx.Rngs):
    self.attn_norm = _rmsnorm(cfg, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = _rmsnorm(cfg, rngs)
    self.mlp = SwiGLU(cfg, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    # The residual stream stays float32; branches compute in cfg.dtype.
    x = x + self.attn(self.attn_norm(x)).astype(x.dtype)
    return x + self.mlp(self.mlp_norm(x)).astype(x.dtype)


class ByteLM(nnx.Module):
  """Decoder-only byte language model.

  ``__call__(tokens)``: tokens int32 ``(batch, seqlen)`` in ``[0, 256)`` ->
  logits float32 ``(batch, seqlen, 256)``; position ``t``'s logits predict
  token ``t + 1`` and see tokens ``<= t`` only.
  """

  def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    # std-1 embeddings: the first RMSNorm rescales anyway.
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model,
                           param_dtype=jnp.float32, rngs=rngs)
    # nnx.List: flax 0.12 wants a list of modules wrapped (older: a list).
    self.blocks = getattr(nnx, "List", list)(
        [Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = _rmsnorm(cfg, rngs)
    self.head = _dense(cfg.d_model, cfg.vocab_size, cfg, rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens).astype(jnp.float32)
    for block in self.blocks:
      x = block(x)
    return self.head(self.final_norm(x)).astype(jnp.float32)


def count_params(params: Any) -> int:
  """Total number of parameter elements in a pytree of arrays."""
  return int(sum(x.size for x in jax.tree.leaves(params)))


def next_byte_loss(model: ByteLM, batch: jax.Array) -> jax.Array:
  """Mean next-byte cross-entropy in nats (natural log), float32 scalar.

  Args:
    model: the language model.
    batch: int32 ``(batch, seqlen + 1)``; inputs ``[:, :-1]``, targets
      ``[:, 1:]``.
  """
  logits = model(batch[:, :-1])
  targets = batch[:, 1:]
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.mean(logz - picked)
