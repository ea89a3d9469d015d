"""jax_fa3.flax: the NNX / linen layers and the attention_fn against flax's
own layers (same parameters, causal mask given as an array), GQA against
repeated K/V heads, decode against the full causal sequence, and the
ValueErrors for what the kernels cannot honour. CPU backend, small shapes."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

flax = pytest.importorskip("flax")
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

from jax_fa3 import reference  # noqa: E402
from jax_fa3.flax import FA3MultiHeadAttention  # noqa: E402
from jax_fa3.flax import FA3MultiHeadDotProductAttention  # noqa: E402
from jax_fa3.flax import decode_attention  # noqa: E402
from jax_fa3.flax import make_attention_fn  # noqa: E402
from conftest import assert_fa3_close, f64, randn  # noqa: E402

B, L, FEAT, H, D = 2, 16, 32, 4, 8  # head_dim = FEAT // H = 8


def seed_of(rng):
  return int(rng.integers(2**31))


def cast(tree, dtype):
  return jax.tree.map(lambda a: a.astype(dtype), tree)


# ---------------------------------------------------------------------------
# NNX helpers
# ---------------------------------------------------------------------------

def pure_params(module):
  return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def nnx_vjp(module, params, x, dout, params_fn=None, **call_kw):
  """(out, dparams, dx) of module(x) with `params` (a pure dict) against the
  cotangent dout. params_fn maps the differentiated params to those the
  module holds (the GQA reference repeats K/V heads there), so the gradients
  of both sides are with respect to the same parameters."""
  params_fn = params_fn or (lambda p: p)

  def f(p, x):
    graphdef, state, rest = nnx.split(module, nnx.Param, ...)
    nnx.replace_by_pure_dict(state, params_fn(p))
    return nnx.merge(graphdef, state, rest)(x, **call_kw)

  out, vjp = jax.vjp(f, params, x)
  return (out,) + vjp(dout.astype(out.dtype))


def nnx_flax_like(dtype, param_dtype, num_kv_heads=None):
  """A stock nnx.MultiHeadAttention (its params are replaced in nnx_vjp)."""
  return nnx.MultiHeadAttention(H, FEAT, num_kv_heads=num_kv_heads,
                                dtype=dtype, param_dtype=param_dtype,
                                decode=False, rngs=nnx.Rngs(0))


def repeat_kv_heads(p, hk):
  """K/V projection heads repeated H // hk times: the MHA equivalent of GQA."""
  if hk == H:
    return p
  p = dict(p)
  for name in ("key", "value"):
    p[name] = {"kernel": jnp.repeat(p[name]["kernel"], H // hk, axis=1),
               "bias": jnp.repeat(p[name]["bias"], H // hk, axis=0)}
  return p



def np_mha(p, x, visible, softcap=0.0):
  """Float64 NumPy forward of a (GQA) multi-head attention layer with pure
  params p, input x (B, L, FEAT) and a boolean (L, L) visibility mask."""
  p = jax.tree.map(f64, p)
  proj = lambda name: (np.einsum("blf,fhd->blhd", x, p[name]["kernel"])  # noqa: E731
                       + p[name]["bias"])
  q, k, v = proj("query"), proj("key"), proj("value")
  k, v = (np.repeat(a, H // a.shape[2], axis=2) for a in (k, v))
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if softcap:
    s = softcap * np.tanh(s / softcap)
  s = np.where(visible, s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", w, v)
  return np.einsum("blhd,hdf->blf", o, p["out"]["kernel"]) + p["out"]["bias"]


def assert_trees_close(name, got, ref64, naive, dtype):
  flat_got = jax.tree.leaves_with_path(got)
  flat_ref = jax.tree.leaves(ref64)
  flat_naive = jax.tree.leaves(naive)
  assert len(flat_got) == len(flat_ref) == len(flat_naive)
  for (path, g), r, n in zip(flat_got, flat_ref, flat_naive):
    if jax.tree_util.keystr(path) == "['key']['bias']":
      # Exactly 0: a key bias shifts a query's scores uniformly and softmax
      # is shift-invariant, so every side holds only rounding noise; bound
      # it by the dtype's eps times the scale of the key kernel gradient.
      scale = float(np.max(np.abs(f64(ref64["key"]["kernel"]))))
      assert np.max(np.abs(f64(g))) <= 4 * float(jnp.finfo(dtype).eps) * scale
      continue
    atol = None
    if jax.tree_util.keystr(path).endswith("['bias']") and jnp.finfo(dtype).bits < 32:
      # A bias gradient is the projection's own sum over the B*L tokens of
      # its output cotangent (dq, dv), in the layer dtype: each rounded term,
      # and each partial sum where XLA accumulates in that dtype, adds up to
      # half an ulp, so the two sides' sums drift apart by chance by more
      # than 2x (seen: seed 331239215, query bias 6 ulp off against the naive
      # layer's 2.4, while the query kernel's error equalled the naive one).
      # The bound for B*L such additions replaces FA3's elementwise atol.
      atol = B * L * 0.5 * float(jnp.finfo(dtype).eps) * float(np.max(np.abs(f64(r))))
    assert_fa3_close(f"{name}{jax.tree_util.keystr(path)}", g, r, n, dtype, atol=atol)


# ---------------------------------------------------------------------------
# Drop-in: signatures and parameter structure
# ---------------------------------------------------------------------------

def test_nnx_signatures_are_flax_superset():
  ours = list(inspect.signature(FA3MultiHeadAttention.__init__).parameters.items())
  theirs = list(inspect.signature(nnx.MultiHeadAttention.__init__).parameters.items())
  # Every flax argument, same order, kind and default (attention_fn's default
  # is None = the FA3 kernel); FA3 options come after them.
  assert [n for n, _ in ours[:len(theirs)]] == [n for n, _ in theirs]
  for (n, a), (_, b) in zip(ours, theirs):
    assert a.kind == b.kind, n
    if n != "attention_fn":
      assert a.default is b.default or a.default == b.default, n
  assert [n for n, _ in ours[len(theirs):]] == [
      "causal", "window_size", "softcap", "softmax_scale"]
  # Every flax call argument, same order; `input_positions` (flax >= 0.12.10)
  # is accepted (and refused when given) whether or not this flax has it;
  # `segment_ids` is jax_fa3's own, keyword-only and last.
  sig = inspect.signature(FA3MultiHeadAttention.__call__).parameters
  ours_call = list(sig)
  theirs_call = list(inspect.signature(nnx.MultiHeadAttention.__call__).parameters)
  assert [n for n in ours_call if n in theirs_call] == theirs_call
  assert set(ours_call) - set(theirs_call) <= {"input_positions", "segment_ids"}
  assert ours_call[-1] == "segment_ids"
  assert sig["segment_ids"].kind == inspect.Parameter.KEYWORD_ONLY


def test_linen_signatures_are_flax_superset():
  # linen appends its own `parent` and `name` fields last.
  fields = lambda c: [f for f in c.__dataclass_fields__  # noqa: E731
                      if f not in ("parent", "name")]
  ours = fields(FA3MultiHeadDotProductAttention)
  theirs = fields(nn.MultiHeadDotProductAttention)
  assert ours[:len(theirs)] == theirs
  assert set(ours) - set(theirs) == {
      "num_kv_heads", "causal", "window_size", "softcap", "softmax_scale"}
  # flax's call arguments, then jax_fa3's keyword-only segment_ids.
  sig = inspect.signature(FA3MultiHeadDotProductAttention.__call__).parameters
  assert (list(sig)
          == list(inspect.signature(nn.MultiHeadDotProductAttention.__call__).parameters)
          + ["segment_ids"])
  assert sig["segment_ids"].kind == inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("num_kv_heads", [None, 2])
def test_nnx_param_structure_matches_flax(num_kv_heads):
  kw = dict(num_kv_heads=num_kv_heads, normalize_qk=True, decode=False)
  ours = nnx.state(FA3MultiHeadAttention(H, FEAT, rngs=nnx.Rngs(0), **kw), nnx.Param)
  theirs = nnx.state(nnx.MultiHeadAttention(H, FEAT, rngs=nnx.Rngs(0), **kw), nnx.Param)
  shapes = lambda s: jax.tree.map(lambda a: (a.shape, a.dtype), s)  # noqa: E731
  assert shapes(ours) == shapes(theirs)


# ---------------------------------------------------------------------------
# NNX layer vs flax with a causal mask array
# ---------------------------------------------------------------------------

# Each case compiles three layers; the matrix is trimmed to keep the file fast
# while covering both dtypes and GQA.
@pytest.mark.parametrize("dtype,num_kv_heads", [
    (jnp.float32, None), (jnp.bfloat16, None), (jnp.bfloat16, 2)])
def test_nnx_matches_flax_causal(rng, dtype, num_kv_heads):
  """Same params: FA3 layer with causal=True vs flax's layer given
  nnx.make_causal_mask; with GQA the reference repeats the K/V heads."""
  hk = num_kv_heads or H
  m = FA3MultiHeadAttention(H, FEAT, num_kv_heads=num_kv_heads, dtype=dtype,
                            causal=True, decode=False,
                            rngs=nnx.Rngs(seed_of(rng)))
  params = pure_params(m)
  assert params["key"]["kernel"].shape == (FEAT, hk, D)
  x = randn(rng, (B, L, FEAT), jnp.float32)
  dout = randn(rng, (B, L, FEAT), jnp.float32)
  mask = nnx.make_causal_mask(x[..., 0])
  rep = lambda p: repeat_kv_heads(p, hk)  # noqa: E731

  out, dp, dx = nnx_vjp(m, params, x, dout)
  ref, rdp, rdx = nnx_vjp(nnx_flax_like(jnp.float64, jnp.float64),
                          cast(params, jnp.float64), x.astype(jnp.float64),
                          dout.astype(jnp.float64), params_fn=rep, mask=mask)
  # Naive = flax in the test dtype. For GQA, flax's own num_kv_heads path:
  # its K/V gradients are reduced over the group before rounding, as the
  # kernel's are (a repeated-heads naive rounds per head, then sums in float32,
  # a stricter baseline than group-reduced GQA gradients, kernel or not).
  naive, ndp, ndx = nnx_vjp(nnx_flax_like(dtype, jnp.float32, num_kv_heads),
                            params, x, dout, mask=mask)

  assert out.dtype == naive.dtype and out.shape == (B, L, FEAT)
  assert_fa3_close("out", out, ref, naive, dtype)
  assert_fa3_close("dx", dx, rdx, ndx, dtype)
  assert_trees_close("dparams", dp, rdp, ndp, dtype)


def test_nnx_options_match_reference(rng):
  """window / softcap / softmax_scale / is_causal reach the kernel: compare
  against jax_fa3.reference on the layer's own projections."""
  kw = dict(window_size=(3, 2), softcap=5.0, softmax_scale=0.7)
  m = FA3MultiHeadAttention(H, FEAT, num_kv_heads=2, decode=False,
                            rngs=nnx.Rngs(seed_of(rng)), **kw)
  x = randn(rng, (B, L, FEAT), jnp.float32)
  q, k, v = m.query(x), m.key(x), m.value(x)
  for is_causal in (False, True):
    want = m.out(reference.attention(q, k, v, causal=is_causal, **kw))
    np.testing.assert_allclose(m(x, is_causal=is_causal), want, atol=2e-5)


def test_nnx_jit_and_custom_attention_fn_delegates(rng):
  x = randn(rng, (B, L, FEAT), jnp.float32)
  seed = seed_of(rng)
  ours = FA3MultiHeadAttention(H, FEAT, causal=True, decode=False,
                               rngs=nnx.Rngs(seed))
  got = nnx.jit(lambda m, x: m(x))(ours, x)
  np.testing.assert_allclose(got, ours(x), atol=1e-6)
  # A given attention_fn makes it behave exactly like flax's layer.
  custom = FA3MultiHeadAttention(H, FEAT, decode=False, rngs=nnx.Rngs(seed),
                                 attention_fn=nnx.dot_product_attention)
  stock = nnx.MultiHeadAttention(H, FEAT, decode=False, rngs=nnx.Rngs(seed))
  mask = nnx.make_causal_mask(x[..., 0])
  np.testing.assert_array_equal(custom(x, mask=mask), stock(x, mask=mask))
  # make_attention_fn(...) as attention_fn keeps the FA3 path and options,
  # so it decodes too.
  via_fn = FA3MultiHeadAttention(H, FEAT, decode=True, rngs=nnx.Rngs(seed),
                                 attention_fn=make_attention_fn(causal=True))
  assert via_fn.uses_fa3 and via_fn.causal
  np.testing.assert_allclose(via_fn(x, decode=False), got, atol=1e-6)
  via_fn.init_cache(x.shape)
  np.testing.assert_allclose(via_fn(x[:, :1]), got[:, :1], atol=1e-6)


# ---------------------------------------------------------------------------
# linen layer
# ---------------------------------------------------------------------------

def linen_vjp(module, variables, x, dout, params_fn=None, **call_kw):
  params_fn = params_fn or (lambda p: p)

  def f(p, x):
    return module.apply({"params": params_fn(p)}, x, **call_kw)

  out, vjp = jax.vjp(f, variables["params"], x)
  return (out,) + vjp(dout.astype(out.dtype))


@pytest.mark.parametrize("dtype,num_kv_heads", [
    (jnp.float32, 2), (jnp.bfloat16, None)])
def test_linen_matches_flax_causal(rng, dtype, num_kv_heads):
  x = randn(rng, (B, L, FEAT), jnp.float32)
  dout = randn(rng, (B, L, FEAT), jnp.float32)
  mask = nn.make_causal_mask(x[..., 0])
  ours = FA3MultiHeadDotProductAttention(num_heads=H, dtype=dtype, causal=True,
                                         num_kv_heads=num_kv_heads)
  variables = ours.init(jax.random.key(seed_of(rng)), x)
  hk = num_kv_heads or H
  assert variables["params"]["key"]["kernel"].shape == (FEAT, hk, D)

  repeat_kv = lambda p: repeat_kv_heads(p, hk)  # noqa: E731

  out, dp, dx = linen_vjp(ours, variables, x, dout)
  ref_mod = nn.MultiHeadDotProductAttention(num_heads=H, dtype=jnp.float64,
                                            param_dtype=jnp.float64)
  ref, rdp, rdx = linen_vjp(ref_mod, cast(variables, jnp.float64),
                            x.astype(jnp.float64), dout.astype(jnp.float64),
                            params_fn=repeat_kv, mask=mask)
  naive_mod = nn.MultiHeadDotProductAttention(num_heads=H, dtype=dtype)
  naive, ndp, ndx = linen_vjp(naive_mod, variables, x, dout,
                              params_fn=repeat_kv, mask=mask)
  assert out.dtype == naive.dtype
  assert_fa3_close("out", out, ref, naive, dtype)
  assert_fa3_close("dx", dx, rdx, ndx, dtype)
  assert_trees_close("dparams", dp, rdp, ndp, dtype)


# ---------------------------------------------------------------------------
# attention_fn in the stock layers
# ---------------------------------------------------------------------------

def test_attention_fn_in_stock_nnx_and_linen(rng):
  x = randn(rng, (B, L, FEAT), jnp.float32)
  seed = seed_of(rng)
  fn = make_attention_fn(causal=True)
  with_fn = nnx.MultiHeadAttention(H, FEAT, decode=False, attention_fn=fn,
                                   rngs=nnx.Rngs(seed))
  stock = nnx.MultiHeadAttention(H, FEAT, decode=False, rngs=nnx.Rngs(seed))
  mask = nnx.make_causal_mask(x[..., 0])
  np.testing.assert_allclose(with_fn(x), stock(x, mask=mask), atol=2e-6)
  # NNX's is_causal (q_length == kv_length) turns the kernel's causal on.
  plain = nnx.MultiHeadAttention(H, FEAT, decode=False, rngs=nnx.Rngs(seed),
                                 attention_fn=make_attention_fn())
  np.testing.assert_allclose(plain(x, is_causal=True), stock(x, mask=mask),
                             atol=2e-6)
  # GQA through flax's own num_kv_heads.
  gqa_fn = nnx.MultiHeadAttention(H, FEAT, num_kv_heads=2, decode=False,
                                  attention_fn=fn, rngs=nnx.Rngs(seed))
  gqa = nnx.MultiHeadAttention(H, FEAT, num_kv_heads=2, decode=False,
                               rngs=nnx.Rngs(seed))
  np.testing.assert_allclose(gqa_fn(x), gqa(x, mask=mask), atol=2e-6)

  lin_fn = nn.MultiHeadDotProductAttention(num_heads=H, attention_fn=fn)
  lin = nn.MultiHeadDotProductAttention(num_heads=H)
  variables = lin.init(jax.random.key(seed), x)
  np.testing.assert_allclose(lin_fn.apply(variables, x),
                             lin.apply(variables, x, mask=mask), atol=2e-6)


def test_attention_fn_options_and_hashable(rng):
  fn = make_attention_fn(causal=True, window_size=(4, -1), softcap=3.0,
                         softmax_scale=0.5)
  assert fn == make_attention_fn(causal=True, window_size=(4, -1), softcap=3.0,
                                 softmax_scale=0.5)
  hash(fn)
  q, k, v = (randn(rng, (B, L, H, D), jnp.float32) for _ in range(3))
  want = reference.attention(q, k, v, causal=True, window_size=(4, -1),
                             softcap=3.0, softmax_scale=0.5)
  np.testing.assert_allclose(fn(q, k, v), want, atol=2e-6)
  # dtype= promotes as flax's dot_product_attention does.
  assert fn(q, k, v, dtype=jnp.bfloat16).dtype == jnp.bfloat16


# ---------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,num_kv_heads,window_size,max_len,steps", [
    (jnp.float32, None, (-1, -1), L, L),    # cache filled exactly
    (jnp.float32, 2, (-1, -1), 13, 11),     # GQA, cache longer than the input
    (jnp.float32, 2, (3, 0), L, L),         # sliding window
    (jnp.bfloat16, 2, (3, 0), 13, 11),      # all of it, in bf16
])
def test_nnx_decode_equals_full_causal(rng, dtype, num_kv_heads, window_size,
                                       max_len, steps):
  seed = seed_of(rng)
  kw = dict(num_kv_heads=num_kv_heads, dtype=dtype, causal=True,
            window_size=window_size, softcap=2.0)
  full = FA3MultiHeadAttention(H, FEAT, decode=False, rngs=nnx.Rngs(seed), **kw)
  dec = FA3MultiHeadAttention(H, FEAT, decode=True, rngs=nnx.Rngs(seed), **kw)
  x = randn(rng, (B, steps, FEAT), jnp.float32)
  want = full(x)
  dec.init_cache((B, max_len, FEAT), dtype)
  step = nnx.jit(lambda m, t: m(t))  # one compile: cache_index is traced
  got = jnp.concatenate([step(dec, x[:, i:i + 1]) for i in range(steps)], 1)
  assert int(dec.cache_index[...]) == steps
  if dtype == jnp.float32:
    np.testing.assert_allclose(got, want, atol=1e-5)
  else:
    # The block merge rounds each block's output to bf16 once more; the
    # float64 reference is NumPy (cheaper here than compiling flax in f64).
    visible = np.asarray(reference.visible_mask(steps, steps, True,
                                                window_size))
    ref = np_mha(pure_params(full), f64(x), visible, softcap=2.0)
    assert_fa3_close("decode", got, ref, want, dtype)


def test_nnx_decode_matches_flax_decode(rng):
  seed = seed_of(rng)
  ours = FA3MultiHeadAttention(H, FEAT, decode=True, rngs=nnx.Rngs(seed))
  stock = nnx.MultiHeadAttention(H, FEAT, decode=True, rngs=nnx.Rngs(seed))
  x = randn(rng, (B, 7, FEAT), jnp.float32)
  ours.init_cache((B, 10, FEAT))
  stock.init_cache((B, 10, FEAT))
  step = nnx.jit(lambda m, t: m(t))
  for i in range(7):
    np.testing.assert_allclose(step(ours, x[:, i:i + 1]),
                               step(stock, x[:, i:i + 1]), atol=2e-6)
  np.testing.assert_allclose(ours.cached_key[...], stock.cached_key[...])


def test_linen_decode_equals_full_causal(rng):
  x = randn(rng, (B, L, FEAT), jnp.float32)
  full = FA3MultiHeadDotProductAttention(num_heads=H, num_kv_heads=2,
                                         causal=True)
  dec = FA3MultiHeadDotProductAttention(num_heads=H, num_kv_heads=2,
                                        causal=True, decode=True)
  variables = dec.init(jax.random.key(seed_of(rng)), x)  # creates the cache
  assert variables["cache"]["cached_key"].shape == (B, L, 2, D)
  want = full.apply({"params": variables["params"]}, x)
  cache = variables["cache"]

  @jax.jit
  def step(cache, t):
    return dec.apply({"params": variables["params"], "cache": cache}, t,
                     mutable=["cache"])

  outs = []
  for i in range(L):
    out, mut = step(cache, x[:, i:i + 1])
    cache = mut["cache"]
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), want, atol=1e-5)
  # make_attention_fn(...) as attention_fn: same FA3 path, decodes too.
  via_fn = FA3MultiHeadDotProductAttention(
      num_heads=H, num_kv_heads=2, decode=True,
      attention_fn=make_attention_fn(causal=True))
  out, _ = via_fn.apply({"params": variables["params"],
                         "cache": variables["cache"]}, x[:, :1],
                        mutable=["cache"])
  np.testing.assert_allclose(out, outs[0], atol=1e-6)


def test_decode_attention_every_index(rng):
  """All cache positions (and an overflowing index) of a non-power-of-two
  cache, with a left window, against a float64 NumPy softmax over the
  visible slots (one jit: cache_index is traced)."""
  n_slots, left, cap = 11, 4, 1.5
  q = randn(rng, (B, 1, H, D), jnp.float32)
  kc, vc = (randn(rng, (B, n_slots, 2, D), jnp.float32) for _ in range(2))
  fn = jax.jit(lambda c: decode_attention(q, kc, vc, c, window_left=left,
                                          softcap=cap))
  k64 = np.repeat(f64(kc), H // 2, axis=2)
  v64 = np.repeat(f64(vc), H // 2, axis=2)
  s = np.einsum("bqhd,bkhd->bhqk", f64(q), k64) / np.sqrt(D)
  s = cap * np.tanh(s / cap)
  for c in range(n_slots + 2):
    ce = min(c, n_slots - 1)
    lo = max(0, ce - left)
    p = np.exp(s[..., lo:ce + 1] - s[..., lo:ce + 1].max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("bhqk,bkhd->bqhd", p, v64[:, lo:ce + 1])
    np.testing.assert_allclose(fn(jnp.int32(c)), want, atol=2e-6,
                               err_msg=f"cache_index={c}")


def test_decode_gradient_refused(rng):
  q = randn(rng, (B, 1, H, D), jnp.float32)
  kc, vc = (randn(rng, (B, 4, H, D), jnp.float32) for _ in range(2))
  with pytest.raises(ValueError, match="decode"):
    jax.grad(lambda q: decode_attention(q, kc, vc, jnp.int32(2)).sum())(q)


# ---------------------------------------------------------------------------
# Unsupported options raise, naming the option
# ---------------------------------------------------------------------------

@pytest.fixture
def x(rng):
  return randn(rng, (B, L, FEAT), jnp.float32)


def test_nnx_refusals(x):
  mask = nnx.make_causal_mask(x[..., 0])
  m = FA3MultiHeadAttention(H, FEAT, decode=False, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="mask"):
    m(x, mask=mask)
  with pytest.raises(ValueError, match="sow_weights"):
    m(x, sow_weights=True)
  with pytest.raises(ValueError, match="is_causal"):
    m(x, x[:, :5], is_causal=True)
  with pytest.raises(ValueError, match="input_positions"):
    m(x, input_positions=jnp.arange(x.shape[1]))
  drop = FA3MultiHeadAttention(H, FEAT, decode=False, dropout_rate=0.1,
                               rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dropout_rate"):
    drop(x, deterministic=False)
  drop(x, deterministic=True)  # dropout configured but off: fine
  with pytest.raises(ValueError, match="causal / window_size"):
    FA3MultiHeadAttention(H, FEAT, causal=True, rngs=nnx.Rngs(0),
                          attention_fn=nnx.dot_product_attention)
  with pytest.raises(ValueError, match="window_size"):
    FA3MultiHeadAttention(H, FEAT, window_size=(-2, 0), rngs=nnx.Rngs(0))
  dec = FA3MultiHeadAttention(H, FEAT, decode=True, rngs=nnx.Rngs(0))
  dec.init_cache(x.shape)
  with pytest.raises(ValueError, match="mask"):
    dec(x[:, :1], mask=mask[:, :, :1])


def test_linen_refusals(x):
  mask = nn.make_causal_mask(x[..., 0])
  m = FA3MultiHeadDotProductAttention(num_heads=H)
  variables = m.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="mask"):
    m.apply(variables, x, mask=mask)
  with pytest.raises(ValueError, match="sow_weights"):
    m.apply(variables, x, sow_weights=True)
  drop = FA3MultiHeadDotProductAttention(num_heads=H, dropout_rate=0.1)
  with pytest.raises(ValueError, match="dropout_rate"):
    drop.apply(variables, x, deterministic=False)
  drop.apply(variables, x, deterministic=True)
  quant = FA3MultiHeadDotProductAttention(
      num_heads=H, qk_attn_weights_einsum_cls=lambda: jnp.einsum)
  with pytest.raises(ValueError, match="qk_attn_weights_einsum_cls"):
    quant.apply(variables, x)
  with pytest.raises(ValueError, match="softcap"):
    FA3MultiHeadDotProductAttention(num_heads=H, softcap=-1.0).apply(variables, x)


def test_attention_fn_refusals(x, rng):
  fn = make_attention_fn()
  q, k, v = (randn(rng, (B, L, H, D), jnp.float32) for _ in range(3))
  with pytest.raises(ValueError, match="mask"):
    fn(q, k, v, mask=jnp.ones((B, 1, L, L), bool))
  with pytest.raises(ValueError, match="bias"):
    fn(q, k, v, bias=jnp.ones((B, 1, L, L)))
  with pytest.raises(ValueError, match="dropout_rate"):
    fn(q, k, v, dropout_rate=0.1, deterministic=False,
       dropout_rng=jax.random.key(0))
  fn(q, k, v, dropout_rate=0.1, deterministic=True)
  with pytest.raises(ValueError, match="qk_attn_weights_einsum"):
    fn(q, k, v, qk_attn_weights_einsum=jnp.einsum)
  with pytest.raises(ValueError, match="is_causal"):
    fn(q, k[:, :5], v[:, :5], is_causal=True)
  # Through the stock layers: sow_weights passes module=, decode a mask.
  stock = nnx.MultiHeadAttention(H, FEAT, decode=False, attention_fn=fn,
                                 rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="sow_weights"):
    stock(x, sow_weights=True)
  lin = nn.MultiHeadDotProductAttention(num_heads=H, attention_fn=fn)
  variables = lin.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="sow_weights"):
    lin.apply(variables, x, sow_weights=True, mutable=["intermediates"])
  with pytest.raises(ValueError, match="mask"):
    lin.apply(variables, x, mask=nn.make_causal_mask(x[..., 0]))


# ---------------------------------------------------------------------------
# segment_ids (packed sequences): against flax's own layer with the mask
# ---------------------------------------------------------------------------

def test_segment_ids_nnx_linen_and_attention_fn(rng):
  """segment_ids = flax's layer given make_attention_mask(seg, seg) & causal
  (self-attention, contiguous segments), for NNX, linen and attention_fn;
  refused with decode and with a custom attention_fn."""
  x = randn(rng, (B, L, FEAT), jnp.float32)
  seg = jnp.asarray(np.array([[0] * 5 + [1] * 1 + [2] * 10, [7] * 16], np.int32))
  mask = nnx.combine_masks(nnx.make_attention_mask(seg, seg, jnp.equal),
                          nnx.make_causal_mask(x[..., 0]))
  seed = seed_of(rng)
  ours = FA3MultiHeadAttention(H, FEAT, causal=True, decode=False, rngs=nnx.Rngs(seed))
  stock = nnx.MultiHeadAttention(H, FEAT, decode=False, rngs=nnx.Rngs(seed))
  want = stock(x, mask=mask)
  np.testing.assert_allclose(ours(x, segment_ids=seg), want, atol=2e-5)
  got = nnx.jit(lambda m, x, s: m(x, segment_ids=s))(ours, x, seg)
  np.testing.assert_allclose(got, want, atol=2e-5)

  lin = FA3MultiHeadDotProductAttention(num_heads=H, causal=True)
  variables = lin.init(jax.random.key(seed), x)
  lin_want = nn.MultiHeadDotProductAttention(num_heads=H).apply(variables, x, mask=mask)
  np.testing.assert_allclose(lin.apply(variables, x, segment_ids=seg), lin_want, atol=2e-5)

  q, k, v = (randn(rng, (B, L, H, D), jnp.float32) for _ in range(3))
  np.testing.assert_allclose(
      make_attention_fn(causal=True)(q, k, v, segment_ids=seg),
      nnx.dot_product_attention(q, k, v, mask=mask), atol=2e-5)

  with pytest.raises(ValueError, match="segment_ids is not supported with decode"):
    FA3MultiHeadAttention(H, FEAT, decode=True, rngs=nnx.Rngs(0))(x, segment_ids=seg)
  custom = FA3MultiHeadAttention(H, FEAT, decode=False, rngs=nnx.Rngs(0),
                                 attention_fn=nnx.dot_product_attention)
  with pytest.raises(ValueError, match="custom attention_fn"):
    custom(x, segment_ids=seg)
