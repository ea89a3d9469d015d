// Fill and validate AttnParams from XLA FFI buffers and attributes.
// Python validates first (with friendlier messages, before lowering); this
// is the second line of defence: a bad call returns an ffi::Error, never a
// crash or an out-of-bounds access.
#pragma once

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

// Shapes, dtypes and attributes shared by the forward and backward; fills
// everything but the buffer pointers. `cuda` narrows the accepted dtypes.
ffi::Error fill_common(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                       const Attrs& attrs, bool cuda, AttnParams* p);

// `name` must have exactly the shape and dtype of `like` (out, dout, dq...).
ffi::Error expect_like(const char* name, ffi::AnyBuffer buf, const char* like_name,
                       ffi::AnyBuffer like);
ffi::Error expect_like(const char* name, ffi::Result<ffi::AnyBuffer> buf,
                       const char* like_name, ffi::AnyBuffer like);

// LSE must be float32 of shape (*batch_dims, heads, seqlen_q).
ffi::Error expect_lse(const char* name, ffi::Buffer<ffi::F32> lse, const AttnParams& p,
                      ffi::AnyBuffer q);
ffi::Error expect_lse(const char* name, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                      const AttnParams& p, ffi::AnyBuffer q);

}  // namespace jax_fa3::ffi_glue
