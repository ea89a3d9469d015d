// Fill and validate AttnParams from XLA FFI buffers and attributes.
// Python validates first (with friendlier messages, before lowering); this
// is the second line of defence: a bad call returns an ffi::Error, never a
// crash or an out-of-bounds access.
#pragma once

#include <string>

#include "cc/common/params.h"
#include "xla/ffi/api/ffi.h"

namespace jax_fa3::ffi_glue {

namespace ffi = xla::ffi;

struct Attrs {
  float softmax_scale;
  bool causal;
  int32_t window_left;
  int32_t window_right;
  float softcap;
};

#define JAX_FA3_RETURN_IF_ERROR(expr) \
  do {                                 \
    ffi::Error _e = (expr);            \
    if (_e.failure()) return _e;       \
  } while (0)

// Shapes, dtypes and attributes of a dense (batch..., seqlen, heads, d)
// call, shared by the forward and backward; fills everything but the output
// buffer pointers. `cuda` narrows the accepted dtypes.
ffi::Error fill_common(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                       const Attrs& attrs, bool cuda, AttnParams* p);

// The part of fill_common that does not depend on the layout (dense or
// packed): head counts, head_dim, dtype, attributes, q/k/v pointers. Expects
// num_heads, num_heads_k and head_dim already set from the shapes.
ffi::Error fill_shared(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                       const Attrs& attrs, bool cuda, AttnParams* p);

// "(d0, d1, ...)" for messages, and an InvalidArgument error prefixed with
// "jax_fa3: ".
std::string dims_str(ffi::AnyBuffer::Dimensions d);
ffi::Error invalid(const std::string& msg);

// `name` must have exactly the shape and dtype of `like` (out, dout, dq...).
ffi::Error expect_like(const char* name, ffi::AnyBuffer buf, const char* like_name,
                       ffi::AnyBuffer like);
ffi::Error expect_like(const char* name, ffi::Result<ffi::AnyBuffer> buf,
                       const char* like_name, ffi::AnyBuffer like);

// LSE must be float32 of shape (*batch_dims, heads, seqlen_q), or
// (heads, total_q) under varlen.
ffi::Error expect_lse(const char* name, ffi::Buffer<ffi::F32> lse, const AttnParams& p,
                      ffi::AnyBuffer q);
ffi::Error expect_lse(const char* name, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                      const AttnParams& p, ffi::AnyBuffer q);

}  // namespace jax_fa3::ffi_glue
