// See varlen_fill.h. The fill: one thread per (row, head): a binary search
// over cu_seqlens finds the row's sequence (the last b with cu[b] <= row),
// then the row is attended iff row - cu[b] < seqlen_b. Unattended rows are
// rare (padding), so almost every thread only reads the few cu_seqlens
// entries, which stay in L1/L2; the pass costs about a kernel launch.
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

// One thread per offset entry (both sides). A block that finds a broken
// entry writes NaN over every output itself: no other block can know, and
// there is no grid-wide flag without scratch memory (the forward has none).
// That makes the invalid case slow (one or a few blocks write everything),
// which is fine for a call whose results are unusable anyway; the valid case
// costs one read of each entry.
struct PoisonArgs {
  VarlenSide q, k;
  int64_t num_seqs;
  VarlenOutput outs[3];
  int num_outs;
  float* lse;
  int64_t lse_heads, lse_rows, lse_head_stride;
};

__global__ void poison_if_invalid_kernel(PoisonArgs a) {
  bool bad = false;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i <= a.num_seqs && !bad;
       i += int64_t(gridDim.x) * blockDim.x)
    bad = !a.q.entry_ok(i, a.num_seqs) || !a.k.entry_ok(i, a.num_seqs);
  if (!__syncthreads_or(bad)) return;
  // 0xffff is a NaN in both bfloat16 and float16 (all exponent bits set,
  // non-zero mantissa).
  for (int t = 0; t < a.num_outs; ++t) {
    VarlenOutput const& o = a.outs[t];
    uint16_t* x = static_cast<uint16_t*>(o.x);
    for (int64_t i = threadIdx.x; i < o.rows * o.heads * o.d; i += blockDim.x) {
      int64_t const c = i % o.d, rh = i / o.d, h = rh % o.heads, row = rh / o.heads;
      x[row * o.row_stride + h * o.head_stride + c] = 0xffff;
    }
  }
  if (a.lse) {
    for (int64_t i = threadIdx.x; i < a.lse_heads * a.lse_rows; i += blockDim.x)
      a.lse[(i / a.lse_rows) * a.lse_head_stride + i % a.lse_rows] = NAN;
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

std::string poison_if_offsets_invalid(VarlenSide q, VarlenSide k, int64_t num_seqs,
                                      const VarlenOutput* outs, int num_outs, float* lse,
                                      int64_t lse_heads, int64_t lse_rows,
                                      int64_t lse_head_stride, cudaStream_t stream) {
  PoisonArgs a{q, k, num_seqs, {}, 0, lse, lse_heads, lse_rows, lse_head_stride};
  if (num_outs < 0 || num_outs > 3) return "jax_fa3 varlen check: at most 3 outputs";
  for (int t = 0; t < num_outs; ++t) a.outs[t] = outs[t];
  a.num_outs = num_outs;
  int64_t const blocks = (num_seqs + 1 + 255) / 256;
  poison_if_invalid_kernel<<<int(blocks < 1024 ? blocks : 1024), 256, 0, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return std::string("jax_fa3 varlen check: launch failed: ") + cudaGetErrorString(err);
  return "";
}

}  // namespace jax_fa3::hopper
