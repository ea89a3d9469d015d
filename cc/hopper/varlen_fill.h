// Varlen (packed) problems: rows of the packed tensors that belong to no
// attended part of any sequence (past seqused, or after cu_seqlens[-1]) are
// never touched by the attention kernels, yet params.h promises out = 0,
// lse = -inf and zero gradients there. One small kernel writes them, so the
// tile kernels only ever see attended rows. A second one, last, checks the
// offsets on the device: the host cannot read them without a sync per call,
// and invalid ones must not leave undefined results behind (params.h: every
// output element becomes NaN). Kept free of CuTe.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cc/common/varlen.h"

namespace jax_fa3::hopper {

// Zeroes every unattended row of the packed 2-byte tensor x (v.total rows,
// `heads` heads of `d` elements, row/head strides in elements) and, when lse
// is not null, sets lse[h * lse_head_stride + row] = -inf for those rows.
// The offsets (device pointers) are read through the same clamp as the
// attention kernels (VarlenSide), so even for invalid offsets every row is
// written by the kernels or by this fill. Returns "" or the launch error.
std::string fill_unattended_rows(void* x, int64_t row_stride, int64_t head_stride, int64_t heads,
                                 int64_t d, VarlenSide v, int64_t num_seqs, float* lse,
                                 int64_t lse_head_stride, cudaStream_t stream);

// A packed 2-byte output of a varlen call: `rows` rows of `heads` x `d`.
struct VarlenOutput {
  void* x = nullptr;
  int64_t rows = 0, row_stride = 0, head_stride = 0, heads = 0, d = 0;
};

// Checks both sides' offsets against params.h's contract (VarlenSide::entry_ok)
// and, if any entry breaks it, writes NaN into every element of the outputs
// (and of lse: lse_heads x lse_rows, row-contiguous, head stride
// lse_head_stride). Launch it after every other kernel of the call. With
// valid offsets it reads each entry once and writes nothing. Returns "" or
// the launch error.
std::string poison_if_offsets_invalid(VarlenSide q, VarlenSide k, int64_t num_seqs,
                                      const VarlenOutput* outs, int num_outs, float* lse,
                                      int64_t lse_heads, int64_t lse_rows,
                                      int64_t lse_head_stride, cudaStream_t stream);

}  // namespace jax_fa3::hopper
