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

// Whether both sides' offsets keep params.h's contract: the block checks the
// n + 1 entries of each side together (every block for itself, so no grid
// synchronisation or scratch flag is needed).
__device__ __forceinline__ bool offsets_ok(const VarlenSide& a, const VarlenSide& b,
                                           int64_t num_seqs) {
  bool bad = false;
  for (int64_t i = threadIdx.x; i <= num_seqs && !bad; i += blockDim.x)
    bad = !a.entry_ok(i, num_seqs) || !b.entry_ok(i, num_seqs);
  return !__syncthreads_or(bad);
}

__global__ void fill_unattended_kernel(uint16_t* x, int64_t row_stride, int64_t head_stride,
                                       int64_t heads, int64_t d, VarlenSide v, VarlenSide other,
                                       int64_t num_seqs, float* lse, int64_t lse_head_stride) {
  // 0xffff is a NaN in both bfloat16 and float16 (all exponent bits set,
  // non-zero mantissa); +0 is 0 in both.
  bool const poison = !offsets_ok(v, other, num_seqs);
  uint16_t const value = poison ? uint16_t(0xffff) : uint16_t(0);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < v.total * heads;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t row = i / heads, h = i - row * heads;
    if (!poison && row_attended(row, v, num_seqs)) continue;
    uint16_t* o = x + row * row_stride + h * head_stride;
    for (int64_t c = 0; c < d; ++c) o[c] = value;
    if (lse) lse[h * lse_head_stride + row] = poison ? NAN : -INFINITY;
  }
}

}  // namespace

std::string fill_unattended_rows(void* x, int64_t row_stride, int64_t head_stride, int64_t heads,
                                 int64_t d, VarlenSide rows, VarlenSide other, int64_t num_seqs,
                                 float* lse, int64_t lse_head_stride, cudaStream_t stream) {
  if (rows.total <= 0 || heads <= 0) return "";
  int64_t const n = rows.total * heads;
  // Every block reads all 2 * (num_seqs + 1) offsets for its check: fewer
  // blocks (each striding further) when there are many sequences, so that
  // the checks read at most ~2^20 entries in all.
  int64_t cap = (int64_t(1) << 20) / (num_seqs + 1);
  cap = cap < 128 ? 128 : (cap > 8192 ? 8192 : cap);
  int64_t blocks = (n + 255) / 256;
  fill_unattended_kernel<<<int(blocks < cap ? blocks : cap), 256, 0, stream>>>(
      static_cast<uint16_t*>(x), row_stride, head_stride, heads, d, rows, other, num_seqs, lse,
      lse_head_stride);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return std::string("jax_fa3 varlen fill: launch failed: ") + cudaGetErrorString(err);
  return "";
}

}  // namespace jax_fa3::hopper
