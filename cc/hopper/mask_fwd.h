// Applies cc/common/mask.h's semantics to a tile of S accumulators, and
// decides which key blocks need it at all (only boundary blocks do: the last
// partial key block, and the blocks cut by the causal / window diagonals).
#pragma once

#include <cute/tensor.hpp>

#include "cc/common/mask.h"

namespace jax_fa3::hopper {

// The mask for one (m_block) tile in 32-bit form. left/right < 0: unbounded
// (same convention as MaskSpec, which the host normalised for us).
struct FwdMask {
  int seqlen_q, seqlen_k, left, right;

  // The mask of one sequence of a varlen batch (its attended lengths). The
  // host clamped left/right with the longest lengths (launch_common.h
  // kernel_mask), which also bounds every shorter sequence's int32 math.
  __device__ __forceinline__ FwdMask for_seq(int len_q, int len_k) const {
    return FwdMask{len_q, len_k, left, right};
  }

  __device__ __forceinline__ int offset() const { return seqlen_k - seqlen_q; }
  __device__ __forceinline__ int col_begin(int row) const {
    return left < 0 ? 0 : max(row + offset() - left, 0);
  }
  __device__ __forceinline__ int col_end(int row) const {
    return right < 0 ? seqlen_k : min(max(row + offset() + right + 1, 0), seqlen_k);
  }

  // Key-block range [n_min, n_max) that rows [m0, m0 + kBlockM) touch.
  // n_max <= n_min means no row of the tile sees any key.
  template <int kBlockM, int kBlockN>
  __device__ __forceinline__ void block_range(int m_block, int* n_min, int* n_max) const {
    int r0 = m_block * kBlockM;
    int r1 = min(r0 + kBlockM, seqlen_q);
    int b = col_begin(r0), e = col_end(r1 - 1);  // mask.h col_range
    *n_min = b / kBlockN;
    *n_max = e > b ? (e + kBlockN - 1) / kBlockN : *n_min;
  }

  // True if every (row, col) of the tile is visible, i.e. no masking needed.
  // col_begin/col_end are nondecreasing in row, so checking the extreme rows
  // suffices.
  template <int kBlockM, int kBlockN>
  __device__ __forceinline__ bool block_is_full(int m_block, int n_block) const {
    int r0 = m_block * kBlockM;
    int r1 = min(r0 + kBlockM, seqlen_q);
    int c0 = n_block * kBlockN, c1 = c0 + kBlockN;
    return c0 >= col_begin(r1 - 1) && c1 <= col_end(r0);
  }

  // Sets invisible entries of the S fragment to -inf. `s` and `coord` are the
  // (row, col) views of the accumulator and of the identity tensor; row/col
  // offsets are the tile's origin.
  template <class TensorS, class TensorC>
  __device__ __forceinline__ void apply(TensorS& s, TensorC const& coord, int row0,
                                        int col0) const {
    using namespace cute;
    CUTE_UNROLL
    for (int r = 0; r < size<0>(s); ++r) {
      int row = row0 + int(get<0>(coord(r, 0)));
      int lo = col_begin(row) - col0;
      int hi = col_end(row) - col0;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) {
        int col = int(get<1>(coord(r, c)));
        if (col < lo || col >= hi) s(r, c) = -INFINITY;
      }
    }
  }

  // The same on a transposed tile (the backward's S^T): rows of `s` are keys,
  // columns queries; `coord` gives (key, query) offsets from (col0, row0).
  template <class TensorS, class TensorC>
  __device__ __forceinline__ void apply_transposed(TensorS& s, TensorC const& coord, int row0,
                                                   int col0) const {
    using namespace cute;
    CUTE_UNROLL
    for (int c = 0; c < size<1>(s); ++c) {
      int row = row0 + int(get<1>(coord(0, c)));
      int lo = col_begin(row) - col0;
      int hi = col_end(row) - col0;
      CUTE_UNROLL
      for (int r = 0; r < size<0>(s); ++r) {
        int col = int(get<0>(coord(r, c)));
        if (col < lo || col >= hi) s(r, c) = -INFINITY;
      }
    }
  }
};

}  // namespace jax_fa3::hopper
