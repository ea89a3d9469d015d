// Masking semantics: which key columns a query row may see. Shared by every
// backend (CPU, CUDA kernels) and mirrored by jax_fa3/reference.py.
//
// FA3 conventions (flash_attn_interface.py):
//  * causal is bottom-right aligned when seqlen_q != seqlen_k: query row i
//    corresponds to absolute position i + (seqlen_k - seqlen_q), and sees
//    keys j <= that position.
//  * window_size = (left, right), -1 meaning unbounded; row i sees keys
//    j in [i + off - left, i + off + right]. causal == window right = 0.
//  * A row that sees no key outputs 0 and LSE = -inf; its gradients are 0.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define JAX_FA3_HD __host__ __device__ __forceinline__
#else
#define JAX_FA3_HD inline
#endif

namespace jax_fa3 {

struct MaskSpec {
  int64_t seqlen_q;
  int64_t seqlen_k;
  int64_t left;   // < 0: unbounded
  int64_t right;  // < 0: unbounded

  // Normalise (causal, window) into one (left, right) pair.
  JAX_FA3_HD static MaskSpec make(int64_t sq, int64_t sk, bool causal,
                                  int64_t window_left, int64_t window_right) {
    MaskSpec m{sq, sk, window_left < 0 ? -1 : window_left,
               window_right < 0 ? -1 : window_right};
    if (causal) m.right = 0;
    return m;
  }

  JAX_FA3_HD int64_t offset() const { return seqlen_k - seqlen_q; }

  // First visible key column of query row `row` (inclusive), clamped to 0.
  JAX_FA3_HD int64_t col_begin(int64_t row) const {
    if (left < 0) return 0;
    int64_t b = row + offset() - left;
    return b < 0 ? 0 : b;
  }
  // One past the last visible key column of query row `row`, clamped to sk.
  JAX_FA3_HD int64_t col_end(int64_t row) const {
    if (right < 0) return seqlen_k;
    int64_t e = row + offset() + right + 1;
    return e > seqlen_k ? seqlen_k : (e < 0 ? 0 : e);
  }
  JAX_FA3_HD bool visible(int64_t row, int64_t col) const {
    return col >= col_begin(row) && col < col_end(row);
  }
  // Key-column range [begin, end) any row of [row0, row1) may see: the
  // block-level loop bounds a tiled kernel iterates over.
  JAX_FA3_HD void col_range(int64_t row0, int64_t row1, int64_t* begin,
                            int64_t* end) const {
    *begin = col_begin(row0);
    *end = col_end(row1 - 1);
  }
  // Query-row range [begin, end) that may see any column of [col0, col1):
  // used by backward kernels that loop over query blocks for a key block.
  JAX_FA3_HD void row_range(int64_t col0, int64_t col1, int64_t* begin,
                            int64_t* end) const {
    // row sees col iff col - off - right <= row <= col - off + left
    int64_t b = 0, e = seqlen_q;
    if (right >= 0) {
      int64_t r = col0 - offset() - right;
      b = r > 0 ? r : 0;
    }
    if (left >= 0) {
      int64_t r = col1 - 1 - offset() + left + 1;
      e = r < seqlen_q ? r : seqlen_q;
    }
    if (e < b) e = b;
    *begin = b > seqlen_q ? seqlen_q : b;
    *end = e;
  }
};

}  // namespace jax_fa3
