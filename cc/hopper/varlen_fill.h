// Varlen (packed) problems: rows of the packed tensors that belong to no
// attended part of any sequence (past seqused, or after cu_seqlens[-1]) are
// never touched by the attention kernels, yet params.h promises out = 0,
// lse = -inf and zero gradients there. One small kernel writes them, so the
// tile kernels only ever see attended rows. Kept free of CuTe.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace jax_fa3::hopper {

// Zeroes every unattended row of the packed 2-byte tensor x
// (total rows, `heads` heads of `d` elements, row/head strides in elements)
// and, when lse is not null, sets lse[h * lse_head_stride + row] = -inf for
// those rows. `cu` (num_seqs + 1) and `used` (num_seqs, or null) are device
// pointers with the conventions of cc/common/varlen.h. Returns "" or the
// launch error.
std::string fill_unattended_rows(void* x, int64_t row_stride, int64_t head_stride, int64_t heads,
                                 int64_t d, int64_t total, const int32_t* cu, const int32_t* used,
                                 int64_t num_seqs, float* lse, int64_t lse_head_stride,
                                 cudaStream_t stream);

}  // namespace jax_fa3::hopper
