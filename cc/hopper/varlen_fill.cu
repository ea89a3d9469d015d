// See varlen_fill.h. One thread per (row, head): a binary search over
// cu_seqlens finds the row's sequence (the last b with cu[b] <= row), then
// the row is attended iff row - cu[b] < seqlen_b. Unattended rows are rare
// (padding), so almost every thread only reads the few cu_seqlens entries,
// which stay in L1/L2; the pass costs about a kernel launch.
#include "cc/hopper/varlen_fill.h"

#include <cmath>

namespace jax_fa3::hopper {

namespace {

__device__ __forceinline__ bool row_attended(int64_t row, const VarlenSide& v,
                                             int64_t num_seqs) {
  if (row >= v.start(num_seqs)) return false;
  int64_t lo = 0, hi = num_seqs - 1;  // start(lo) <= row < start(num_seqs)
  while (lo < hi) {
    int64_t mid = (lo + hi + 1) / 2;
    if (v.start(mid) <= row) lo = mid; else hi = mid - 1;
  }
  // Empty sequences share their start with the next one; the search picks
  // the last sequence starting at or before row, which is non-empty here.
  int64_t j = row - v.start(lo);
  return j >= 0 && j < v.len(lo);
}

__global__ void fill_unattended_kernel(uint16_t* x, int64_t row_stride, int64_t head_stride,
                                       int64_t heads, int64_t d, VarlenSide v, int64_t num_seqs,
                                       float* lse, int64_t lse_head_stride) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < v.total * heads;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t row = i / heads, h = i - row * heads;
    if (row_attended(row, v, num_seqs)) continue;
    uint16_t* o = x + row * row_stride + h * head_stride;
    for (int64_t c = 0; c < d; ++c) o[c] = 0;  // +0.0 in bf16 and fp16
    if (lse) lse[h * lse_head_stride + row] = -INFINITY;
  }
}

}  // namespace

std::string fill_unattended_rows(void* x, int64_t row_stride, int64_t head_stride, int64_t heads,
                                 int64_t d, VarlenSide v, int64_t num_seqs, float* lse,
                                 int64_t lse_head_stride, cudaStream_t stream) {
  if (v.total <= 0 || heads <= 0) return "";
  int64_t n = v.total * heads;
  int64_t blocks = (n + 255) / 256;
  fill_unattended_kernel<<<int(blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(
      static_cast<uint16_t*>(x), row_stride, head_stride, heads, d, v, num_seqs, lse,
      lse_head_stride);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return std::string("jax_fa3 varlen fill: launch failed: ") + cudaGetErrorString(err);
  return "";
}

}  // namespace jax_fa3::hopper
