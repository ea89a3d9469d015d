#include "cc/ffi/fill_params.h"

#include <cmath>
#include <string>

namespace jax_fa3::ffi_glue {

std::string dims_str(ffi::AnyBuffer::Dimensions d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(d[i]);
  }
  return s + ")";
}

ffi::Error invalid(const std::string& msg) {
  return ffi::Error::InvalidArgument("jax_fa3: " + msg);
}

namespace {

bool to_dtype(ffi::DataType t, DType* out) {
  switch (t) {
    case ffi::DataType::F16: *out = DType::kF16; return true;
    case ffi::DataType::BF16: *out = DType::kBF16; return true;
    case ffi::DataType::F32: *out = DType::kF32; return true;
    default: return false;
  }
}

// Product of the leading (batch-like) dims: vmap adds leading dims, and we
// fold them into batch as the public API promises.
int64_t lead_product(ffi::AnyBuffer::Dimensions d, size_t trailing) {
  int64_t b = 1;
  for (size_t i = 0; i + trailing < d.size(); ++i) b *= d[i];
  return b;
}

bool same_lead(ffi::AnyBuffer::Dimensions a, ffi::AnyBuffer::Dimensions b,
               size_t trailing) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i + trailing < a.size(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

}  // namespace

ffi::Error fill_common(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                       const Attrs& a, bool cuda, AttnParams* p) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() < 4)
    return invalid("q must have rank >= 4 (batch, seqlen_q, heads, head_dim), got " +
                   dims_str(qd));
  if (kd.size() != qd.size() || vd.size() != qd.size())
    return invalid("q, k, v must have the same rank; got q " + dims_str(qd) + ", k " +
                   dims_str(kd) + ", v " + dims_str(vd));
  if (!same_lead(qd, kd, 3) || !same_lead(qd, vd, 3))
    return invalid("q, k, v must have the same batch dims; got q " + dims_str(qd) +
                   ", k " + dims_str(kd) + ", v " + dims_str(vd));
  for (size_t i = 0; i < kd.size(); ++i)
    if (kd[i] != vd[i])
      return invalid("k and v must have the same shape; got k " + dims_str(kd) +
                     ", v " + dims_str(vd));
  size_t r = qd.size();
  p->batch = lead_product(qd, 3);
  p->seqlen_q = qd[r - 3];
  p->num_heads = qd[r - 2];
  p->head_dim = qd[r - 1];
  p->seqlen_k = kd[r - 3];
  p->num_heads_k = kd[r - 2];
  if (kd[r - 1] != p->head_dim)
    return invalid("k head_dim " + std::to_string(kd[r - 1]) + " != q head_dim " +
                   std::to_string(p->head_dim));
  if (p->seqlen_q <= 0 || p->seqlen_k <= 0 || p->batch <= 0)
    return invalid("batch, seqlen_q and seqlen_k must be positive; got q " + dims_str(qd) +
                   ", k " + dims_str(kd));
  JAX_FA3_RETURN_IF_ERROR(fill_shared(q, k, v, a, cuda, p));
  p->q_head_stride = p->head_dim;
  p->q_row_stride = p->num_heads * p->head_dim;
  p->q_batch_stride = p->seqlen_q * p->q_row_stride;
  p->k_head_stride = p->head_dim;
  p->k_row_stride = p->num_heads_k * p->head_dim;
  p->k_batch_stride = p->seqlen_k * p->k_row_stride;
  p->lse_head_stride = p->seqlen_q;
  p->lse_batch_stride = p->num_heads * p->seqlen_q;
  return ffi::Error::Success();
}

ffi::Error fill_shared(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, const Attrs& a,
                       bool cuda, AttnParams* p) {
  if (p->num_heads_k <= 0 || p->num_heads % p->num_heads_k != 0)
    return invalid("heads of q (" + std::to_string(p->num_heads) +
                   ") must be a positive multiple of heads of k/v (" +
                   std::to_string(p->num_heads_k) + ")");
  if (p->head_dim <= 0 || p->head_dim > 256 || p->head_dim % 8 != 0)
    return invalid("head_dim must be a multiple of 8 in [8, 256], got " +
                   std::to_string(p->head_dim));
  if (q.element_type() != k.element_type() || q.element_type() != v.element_type())
    return invalid("q, k, v must have the same dtype");
  if (!to_dtype(q.element_type(), &p->dtype))
    return invalid("dtype must be float16, bfloat16 or float32 (CPU only)");
  if (cuda && p->dtype == DType::kF32)
    return invalid("the CUDA backend takes float16 or bfloat16, not float32");
  if (!std::isfinite(a.softmax_scale) || a.softmax_scale <= 0.f)
    return invalid("softmax_scale must be finite and > 0, got " +
                   std::to_string(a.softmax_scale));
  if (!std::isfinite(a.softcap) || a.softcap < 0.f)
    return invalid("softcap must be finite and >= 0, got " + std::to_string(a.softcap));
  if (a.window_left < -1 || a.window_right < -1)
    return invalid("window_size entries must be >= -1 (-1 = unbounded)");

  p->h_h_k_ratio = p->num_heads / p->num_heads_k;
  p->softmax_scale = a.softmax_scale;
  p->causal = a.causal;
  p->window_left = a.window_left;
  p->window_right = a.causal ? 0 : a.window_right;
  p->softcap = a.softcap;
  p->q = q.untyped_data();
  p->k = k.untyped_data();
  p->v = v.untyped_data();
  return ffi::Error::Success();
}

static ffi::Error like_impl(const char* name, ffi::DataType t, ffi::AnyBuffer::Dimensions d,
                            const char* like_name, ffi::AnyBuffer like) {
  auto ld = like.dimensions();
  bool ok = t == like.element_type() && d.size() == ld.size();
  for (size_t i = 0; ok && i < d.size(); ++i) ok = d[i] == ld[i];
  if (!ok)
    return invalid(std::string(name) + " must have the shape and dtype of " + like_name +
                   " " + dims_str(ld) + ", got " + dims_str(d));
  return ffi::Error::Success();
}

ffi::Error expect_like(const char* name, ffi::AnyBuffer buf, const char* like_name,
                       ffi::AnyBuffer like) {
  return like_impl(name, buf.element_type(), buf.dimensions(), like_name, like);
}
ffi::Error expect_like(const char* name, ffi::Result<ffi::AnyBuffer> buf,
                       const char* like_name, ffi::AnyBuffer like) {
  return like_impl(name, buf->element_type(), buf->dimensions(), like_name, like);
}

static ffi::Error lse_impl(const char* name, ffi::AnyBuffer::Dimensions d,
                           const AttnParams& p, ffi::AnyBuffer q) {
  if (p.is_varlen) {
    // Packed: (heads, total_q), as FA3's varlen LSE.
    if (d.size() != 2 || d[0] != p.num_heads || d[1] != p.total_q)
      return invalid(std::string(name) + " must be float32 of shape (heads=" +
                     std::to_string(p.num_heads) + ", total_q=" + std::to_string(p.total_q) +
                     "), got " + dims_str(d));
    return ffi::Error::Success();
  }
  auto qd = q.dimensions();
  size_t r = qd.size();
  bool ok = d.size() == r - 1;
  // lse dims: (*lead, heads, seqlen_q) where q is (*lead, seqlen_q, heads, d)
  if (ok) {
    for (size_t i = 0; i + 3 < r; ++i) ok = ok && d[i] == qd[i];
    ok = ok && d[r - 3] == p.num_heads && d[r - 2] == p.seqlen_q;
  }
  if (!ok)
    return invalid(std::string(name) + " must be float32 of shape (*batch, heads=" +
                   std::to_string(p.num_heads) + ", seqlen_q=" + std::to_string(p.seqlen_q) +
                   "), got " + dims_str(d));
  return ffi::Error::Success();
}

ffi::Error expect_lse(const char* name, ffi::Buffer<ffi::F32> lse, const AttnParams& p,
                      ffi::AnyBuffer q) {
  return lse_impl(name, lse.dimensions(), p, q);
}
ffi::Error expect_lse(const char* name, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                      const AttnParams& p, ffi::AnyBuffer q) {
  return lse_impl(name, lse->dimensions(), p, q);
}

}  // namespace jax_fa3::ffi_glue
