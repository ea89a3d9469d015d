// Fill and validate the varlen (packed sequences) part of AttnParams from
// the handlers' optional operands and attributes.
//
// Contract with jax_fa3/primitives.py: every call carries the attributes
//   varlen bool, max_seqlen_q i32, max_seqlen_k i32,
//   has_seqused_q bool, has_seqused_k bool
// and, after its fixed operands, zero extra operands when varlen is false,
// else  cu_seqlens_q, cu_seqlens_k [, seqused_q] [, seqused_k]  (int32,
// rank 1), in that order, seqused ones only when flagged. One handler per
// platform and pass thus serves both layouts.
#pragma once

#include "cc/common/params.h"
#include "cc/ffi/fill_params.h"
#include "xla/ffi/api/ffi.h"

namespace jax_fa3::ffi_glue {

struct VarlenAttrs {
  bool varlen;
  int32_t max_seqlen_q;
  int32_t max_seqlen_k;
  bool has_seqused_q;
  bool has_seqused_k;
};

// Fills shapes, strides and attributes for either layout: dense through
// fill_common, packed (q (total_q, heads, d), k/v (total_k, kv_heads, d))
// here. `offsets` are the extra operands. On the CPU backend (`cuda` false)
// the offsets are host memory and their values are checked too
// (check_varlen_offsets: cu[0] == 0, non-decreasing, cu[-1] <= total,
// seqused <= allocated length, lengths <= max_seqlen); on CUDA only their
// shapes and dtypes can be.
ffi::Error fill_layout(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                       const ffi::RemainingArgs& offsets, const VarlenAttrs& va,
                       const Attrs& attrs, bool cuda, AttnParams* p);

}  // namespace jax_fa3::ffi_glue
