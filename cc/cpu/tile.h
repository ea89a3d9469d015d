// Tile plumbing shared by the CPU forward and backward: block sizes,
// parameter checks, and copies between the (batch, seqlen, heads, head_dim)
// or packed (total, heads, head_dim) tensors and contiguous fp32 tiles
// (element offsets come from a Seq, seqs.h).
//
// Tiles are padded so the matmul kernel (kernels.h) never needs a column
// tail narrower than 8: the feature dimension is padded to a multiple of 8
// (a no-op for the head dims the FFI layer accepts) and transposed tiles pad
// their columns (the rows of the source) to a multiple of 8. Padding is
// always zero, never left uninitialised: 0 * garbage could be NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cc/common/params.h"
#include "cc/common/varlen.h"
#include "cc/cpu/dtype.h"

namespace jax_fa3::cpu {

// Query rows and key columns per tile. 64 x 64 fp32 score tiles (16 KiB) and
// 64 x head_dim operand tiles (<= 64 KiB at d = 256) keep a worker's working
// set in L2, and 64 rows divide evenly into the matmul's register blocks.
constexpr int kBlockQ = 64;
constexpr int kBlockK = 64;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int round_up8(int64_t x) { return static_cast<int>((x + 7) / 8 * 8); }

// Checks what the kernels rely on; the FFI layer validates too, this guards
// other callers (tests, future entry points). "" when fine.
inline std::string check_params(const AttnParams& p, bool backward) {
  if (p.batch < 0 || p.seqlen_q < 0 || p.seqlen_k < 0)
    return "batch and sequence lengths must be >= 0";
  if (p.num_heads <= 0 || p.num_heads_k <= 0 || p.num_heads % p.num_heads_k != 0)
    return "num_heads must be a positive multiple of num_heads_k";
  if (p.h_h_k_ratio != p.num_heads / p.num_heads_k)
    return "h_h_k_ratio must equal num_heads / num_heads_k";
  if (p.head_dim <= 0 || p.head_dim > 1024) return "head_dim must be in [1, 1024]";
  if (p.dtype != DType::kF16 && p.dtype != DType::kBF16 && p.dtype != DType::kF32)
    return "unknown dtype";
  if (!(p.softcap >= 0.0f) || !std::isfinite(p.softcap)) return "softcap must be finite and >= 0";
  if (!std::isfinite(p.softmax_scale)) return "softmax_scale must be finite";
  const bool any_q = p.q_elems() > 0, any_k = p.k_elems() > 0;
  if (any_q && !p.q) return "q is null";
  if (any_k && (!p.k || !p.v)) return "k or v is null";
  if (!backward) {
    if (any_q && (!p.out || !p.lse)) return "out or lse is null";
  } else {
    if (any_q && (!p.dout || !p.out_in || !p.lse_in || !p.dq))
      return "dout, out, lse or dq is null";
    if (any_k && (!p.dk || !p.dv)) return "dk or dv is null";
  }
  // Varlen: the offsets are host memory here, and every row index the
  // kernels form comes from them, so they are checked before any access.
  return check_varlen_offsets(p);
}

// dst[n x ld] <- n rows of d elements starting at element `off`, rows
// `row_stride` apart; columns [d, ld) zeroed.
inline void load_tile(const void* base, DType t, int64_t off, int64_t row_stride, int n, int d,
                      float* dst, int ld) {
  for (int r = 0; r < n; ++r) {
    float* row = dst + static_cast<int64_t>(r) * ld;
    load_row(base, off + r * row_stride, t, d, row);
    for (int c = d; c < ld; ++c) row[c] = 0.0f;
  }
}

// Transpose of a row tile: dst[c * ldt + r] = src[r * ld + c] for r < n and
// c < dp; columns [n, round_up8(n)) of dst are zeroed so the transposed tile
// can be the right-hand operand of the matmul with a padded width.
inline void transpose_tile(const float* src, int ld, int n, int dp, float* dst, int ldt) {
  const int np = round_up8(n);
  for (int c = 0; c < dp; ++c) {
    float* out = dst + static_cast<int64_t>(c) * ldt;
    for (int r = 0; r < n; ++r) out[r] = src[static_cast<int64_t>(r) * ld + c];
    for (int r = n; r < np; ++r) out[r] = 0.0f;
  }
}

// n rows of d elements from src (n x ld fp32) into the tensor at element
// `off`, rows `row_stride` apart, rounded to the storage dtype.
inline void store_tile(void* base, DType t, int64_t off, int64_t row_stride, int n, int d,
                       const float* src, int ld) {
  for (int r = 0; r < n; ++r)
    store_row(base, off + r * row_stride, t, d, src + static_cast<int64_t>(r) * ld);
}

// A worker's direct-mapped cache of converted (fp32, padded, possibly
// transposed) tiles. Without it every (query block, key block) pair would
// re-convert and re-transpose its key/value tiles, which cost about as much
// as the tile matmuls; with it a tile is converted once per head a worker
// visits. Work items are numbered so consecutive ones share a head, so each
// worker mostly hits. The memory cap keeps long sequences bounded: with
// fewer slots than blocks it degrades to converting per use, never worse.
class TileCache {
 public:
  // Total host memory all workers' caches may use together (MiB; a build
  // may override it, e.g. 0 to exercise the one-slot path in tests).
#ifndef JAX_FA3_CPU_CACHE_MIB
#define JAX_FA3_CPU_CACHE_MIB 256
#endif
  static constexpr size_t kBudgetBytes = size_t{JAX_FA3_CPU_CACHE_MIB} << 20;

  // `nblocks` distinct block indices per group, each `floats` floats.
  TileCache(int64_t nblocks, size_t floats, int workers) : floats_(floats) {
    const size_t budget = kBudgetBytes / sizeof(float) / static_cast<size_t>(workers);
    int64_t slots = static_cast<int64_t>(budget / (floats ? floats : 1));
    slots_ = slots < 1 ? 1 : (slots > nblocks ? nblocks : slots);
    if (slots_ < 1) slots_ = 1;
    data_.resize(static_cast<size_t>(slots_) * floats_);
    group_.assign(slots_, -1);
    block_.assign(slots_, -1);
  }

  // The slot for tile (group, index); *hit is true when it already holds
  // that tile, else the caller fills it (and the slot now claims the tile).
  float* get(int64_t group, int64_t index, bool* hit) {
    const int64_t s = index % slots_;
    *hit = group_[s] == group && block_[s] == index;
    group_[s] = group;
    block_[s] = index;
    return data_.data() + static_cast<size_t>(s) * floats_;
  }

 private:
  size_t floats_;
  int64_t slots_ = 1;
  std::vector<float> data_;
  std::vector<int64_t> group_, block_;
};

// Score transform, identical in forward and backward: s = u * scale, then
// with softcap > 0, s = softcap * tanh(s / softcap). When `dtanh` is given it
// receives d s / d (u * scale) = 1 - tanh^2, the factor the backward applies
// to dS.
inline void transform_scores(float* s, int n, float scale, float softcap, float* dtanh) {
  if (softcap > 0.0f) {
    const float inner = scale / softcap;
    for (int j = 0; j < n; ++j) {
      const float th = std::tanh(s[j] * inner);
      s[j] = softcap * th;
      if (dtanh) dtanh[j] = 1.0f - th * th;
    }
  } else {
    for (int j = 0; j < n; ++j) s[j] *= scale;
  }
}

}  // namespace jax_fa3::cpu
