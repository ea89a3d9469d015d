// Row padding of the Hopper backward's fp32 scratch (CuTe-free; host and
// device), dense and varlen.
//
// Dense: per (batch, head), rows padded to a multiple of the tile.
// Varlen: the scratch (dQ accumulator, lse2, dPsum, dQ semaphores; GQA dK/dV
// accumulators) is tiled in blocks of `blk` rows that the kernels read and
// write whole, so two sequences must never share a block. Sequence b's rows
// therefore start at
//   pad_start(b) = floor((cu[b] + b * blk) / blk) * blk,
// a multiple of blk. With x = cu[b] + b * blk and a = cu[b+1] - cu[b]:
// pad_start(b+1) = floor((x + a + blk) / blk) * blk >= pad_start(b) +
// ceil(a / blk) * blk, so each sequence's ceil(len / blk) blocks (len <= a)
// end before the next sequence starts, and pad_start(num_seqs) <=
// bwd_pad_rows(total, num_seqs, blk). It also grows by at least blk per
// sequence, empty ones included, which the binary search below relies on.
// Rows of a block past the sequence's length, and the gaps, are padding.
#pragma once

#include <cstdint>

#include "cc/common/varlen.h"  // VarlenSide, JAX_FA3_HD

namespace jax_fa3::hopper {

// Rows are padded to multiples of these so every tile's workspace access is
// in bounds (kBlockM 64 or 128, a divisor of kBwdPadM; kBlockN 64 or 128, a
// divisor of kBwdPadN). d256's 80-key blocks can reach past the padding:
// its GQA dK/dV adds skip keys >= seqlen_k (bwd_dkv_epilogue).
constexpr int64_t kBwdPadM = 128;
constexpr int64_t kBwdPadN = 128;
constexpr int64_t kBwdMinBlockM = 64;
constexpr int64_t kBwdMinBlockN = 64;

// From the clamped start (VarlenSide): with start(b) <= total every block
// of every sequence stays below bwd_pad_rows, whatever the device offsets.
JAX_FA3_HD int64_t bwd_pad_start(const VarlenSide& v, int64_t b, int64_t blk) {
  return (v.start(b) + b * blk) / blk * blk;
}

// Rows of the padded layout: enough for every sequence's blocks; computed
// from the sizes alone (the host never reads cu_seqlens).
JAX_FA3_HD int64_t bwd_pad_rows(int64_t total, int64_t num_seqs, int64_t blk) {
  return (total + num_seqs * blk + blk - 1) / blk * blk;
}

#if defined(__CUDACC__)
// The sequence whose padded region holds row r: the last b < num_seqs with
// pad_start(b) <= r (pad_start is strictly increasing and pad_start(0) = 0
// for valid offsets). The caller checks 0 <= r - pad_start(b) < len(b)
// (both bounds: with invalid offsets the search may land anywhere).
__device__ __forceinline__ int bwd_pad_seq(const VarlenSide& v, int num_seqs, int64_t r,
                                           int64_t blk) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (bwd_pad_start(v, mid, blk) <= r) lo = mid; else hi = mid - 1;
  }
  return lo;
}
#endif

}  // namespace jax_fa3::hopper
