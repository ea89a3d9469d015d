// Varlen (packed) problems: rows of the packed tensors that belong to no
// attended part of any sequence (past seqused, or after cu_seqlens[-1]) are
// never touched by the attention kernels, yet params.h promises out = 0,
// lse = -inf and zero gradients there. One small kernel writes them, so the
// tile kernels only ever see attended rows. It runs after them and also
// checks the offsets on the device: the host cannot read them without a
// sync per call, and invalid ones must not leave undefined results behind
// (params.h: every output element becomes NaN). Kept free of CuTe.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cc/common/varlen.h"

namespace jax_fa3::hopper {

// Zeroes every unattended row of the packed 2-byte tensor x (rows.total rows
// of side `rows`, `heads` heads of `d` elements, row/head strides in
// elements) and, when lse is not null, sets lse[h * lse_head_stride + row] =
// -inf for those rows. When the offsets of `rows` or `other` (the problem's
// other side, checked only) break params.h's contract, writes NaN into every
// element of x (and lse) instead. Launch it after every kernel that writes
// x. The offsets (device pointers) are otherwise read through the attention
// kernels' clamp (VarlenSide). Returns "" or the launch error.
std::string fill_unattended_rows(void* x, int64_t row_stride, int64_t head_stride, int64_t heads,
                                 int64_t d, VarlenSide rows, VarlenSide other, int64_t num_seqs,
                                 float* lse, int64_t lse_head_stride, cudaStream_t stream);

}  // namespace jax_fa3::hopper
