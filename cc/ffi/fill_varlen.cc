#include "cc/ffi/fill_varlen.h"

#include <string>

#include "cc/common/varlen.h"

namespace jax_fa3::ffi_glue {
namespace {

// An int32 rank-1 operand of `len` entries, or an error naming it.
ffi::Error offsets_operand(const ffi::RemainingArgs& args, size_t index, const char* name,
                           int64_t len, const int32_t** out) {
  ffi::ErrorOr<ffi::AnyBuffer> buf = args.get<ffi::AnyBuffer>(index);
  if (!buf.has_value())
    return invalid(std::string(name) + ": not a buffer operand (" + buf.error().message() + ")");
  if (buf->element_type() != ffi::DataType::S32)
    return invalid(std::string(name) + " must be int32");
  auto d = buf->dimensions();
  if (d.size() != 1 || (len >= 0 && d[0] != len))
    return invalid(std::string(name) + " must have shape (" +
                   (len >= 0 ? std::to_string(len) : std::string("num_seqs + 1")) + ",), got " +
                   dims_str(d));
  *out = static_cast<const int32_t*>(buf->untyped_data());
  return ffi::Error::Success();
}

ffi::Error fill_packed(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                       const ffi::RemainingArgs& offsets, const VarlenAttrs& va,
                       const Attrs& a, bool cuda, AttnParams* p) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 3 || kd.size() != 3 || vd.size() != 3)
    return invalid("varlen q, k, v must have rank 3 (total, heads, head_dim); got q " +
                   dims_str(qd) + ", k " + dims_str(kd) + ", v " + dims_str(vd));
  for (size_t i = 0; i < 3; ++i)
    if (kd[i] != vd[i])
      return invalid("k and v must have the same shape; got k " + dims_str(kd) + ", v " +
                     dims_str(vd));
  if (kd[2] != qd[2])
    return invalid("k head_dim " + std::to_string(kd[2]) + " != q head_dim " +
                   std::to_string(qd[2]));
  if (qd[0] <= 0 || kd[0] <= 0)
    return invalid("varlen total_q and total_k must be positive; got q " + dims_str(qd) +
                   ", k " + dims_str(kd));
  const size_t want = 2 + (va.has_seqused_q ? 1 : 0) + (va.has_seqused_k ? 1 : 0);
  if (offsets.size() != want)
    return invalid("varlen expects " + std::to_string(want) +
                   " offset operands (cu_seqlens_q, cu_seqlens_k[, seqused_q][, seqused_k]), got " +
                   std::to_string(offsets.size()));
  if (va.max_seqlen_q < 0 || va.max_seqlen_k < 0)
    return invalid("max_seqlen_q and max_seqlen_k must be >= 0");

  p->is_varlen = true;
  p->total_q = qd[0];
  p->total_k = kd[0];
  p->num_heads = qd[1];
  p->num_heads_k = kd[1];
  p->head_dim = qd[2];
  JAX_FA3_RETURN_IF_ERROR(fill_shared(q, k, v, a, cuda, p));

  size_t i = 0;
  JAX_FA3_RETURN_IF_ERROR(offsets_operand(offsets, i++, "cu_seqlens_q", -1, &p->cu_seqlens_q));
  const int64_t n1 = offsets.get<ffi::AnyBuffer>(0)->dimensions()[0];
  if (n1 < 2)
    return invalid("cu_seqlens_q must have shape (num_seqs + 1,) with num_seqs >= 1, got (" +
                   std::to_string(n1) + ",)");
  JAX_FA3_RETURN_IF_ERROR(offsets_operand(offsets, i++, "cu_seqlens_k", n1, &p->cu_seqlens_k));
  if (va.has_seqused_q)
    JAX_FA3_RETURN_IF_ERROR(offsets_operand(offsets, i++, "seqused_q", n1 - 1, &p->seqused_q));
  if (va.has_seqused_k)
    JAX_FA3_RETURN_IF_ERROR(offsets_operand(offsets, i++, "seqused_k", n1 - 1, &p->seqused_k));
  p->num_seqs = n1 - 1;
  p->max_seqlen_q = va.max_seqlen_q;
  p->max_seqlen_k = va.max_seqlen_k;

  // The dense fields, as FA3 sets them for varlen: batch = sequences,
  // seqlen = the max lengths; rows are addressed through cu_seqlens, so the
  // batch strides are unused (0). LSE is (heads, total_q).
  p->batch = p->num_seqs;
  p->seqlen_q = p->max_seqlen_q;
  p->seqlen_k = p->max_seqlen_k;
  p->q_head_stride = p->head_dim;
  p->q_row_stride = p->num_heads * p->head_dim;
  p->q_batch_stride = 0;
  p->k_head_stride = p->head_dim;
  p->k_row_stride = p->num_heads_k * p->head_dim;
  p->k_batch_stride = 0;
  p->lse_head_stride = p->total_q;
  p->lse_batch_stride = 0;

  if (!cuda) {
    const std::string err = check_varlen_offsets(*p);
    if (!err.empty()) return invalid(err);
  }
  return ffi::Error::Success();
}

}  // namespace

ffi::Error fill_layout(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                       const ffi::RemainingArgs& offsets, const VarlenAttrs& va,
                       const Attrs& a, bool cuda, AttnParams* p) {
  if (va.varlen) return fill_packed(q, k, v, offsets, va, a, cuda, p);
  if (!offsets.empty())
    return invalid(std::to_string(offsets.size()) +
                   " unexpected extra operand(s): offsets are only taken with varlen=true");
  return fill_common(q, k, v, a, cuda, p);
}

}  // namespace jax_fa3::ffi_glue
