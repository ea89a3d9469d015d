// Variable-length (packed) sequences: where sequence b lives in the packed
// tensors and how much of it is attended, plus the validation of the offsets.
// Shared by every backend (see params.h for the layout); mirrored by
// jax_fa3/reference.py (attention_varlen).
//
// Conventions (FA3's flash_attn_varlen_func):
//  * sequence b holds rows [cu_seqlens[b], cu_seqlens[b+1]) of the packed
//    tensor: its allocated length;
//  * seqused[b], when given, is how many of those rows are attended (the
//    rest act as padding); without it all allocated rows are;
//  * masks (mask.h) apply per sequence on its attended lengths, so causal is
//    bottom-right aligned per sequence.
#pragma once

#include <cstdint>
#include <string>

#include "cc/common/mask.h"
#include "cc/common/params.h"

namespace jax_fa3 {

struct SeqBounds {
  int64_t q_start;  // first row of the sequence in the packed q
  int64_t k_start;  // first row of the sequence in the packed k
  int64_t len_q;    // attended query rows
  int64_t len_k;    // attended key rows
};

// Bounds of sequence b. Host or device, raw pointers so a kernel can call it
// with its own copies; used_q / used_k may be null.
JAX_FA3_HD SeqBounds seq_bounds(const int32_t* cu_q, const int32_t* cu_k,
                                const int32_t* used_q, const int32_t* used_k, int64_t b) {
  SeqBounds s;
  s.q_start = cu_q[b];
  s.k_start = cu_k[b];
  s.len_q = used_q ? used_q[b] : cu_q[b + 1] - cu_q[b];
  s.len_k = used_k ? used_k[b] : cu_k[b + 1] - cu_k[b];
  return s;
}

// One side (q or k) of a varlen problem as the GPU kernels read it. The
// host cannot validate device offsets without a sync per call, so every
// kernel reads them through this clamp: for offsets that satisfy params.h's
// contract it changes nothing; for any others every row it names lies in
// [0, total) and every length is <= max_len, so no access leaves the tensors
// (the results are then undefined; jax_fa3/varlen.py says so).
struct VarlenSide {
  const int32_t* cu;    // (num_seqs + 1)
  const int32_t* used;  // (num_seqs) or null
  int64_t total;        // rows of the packed tensor
  int64_t max_len;      // max_seqlen of this side

  JAX_FA3_HD int64_t start(int64_t b) const {
    int64_t s = cu[b];
    return s < 0 ? 0 : (s > total ? total : s);
  }
  JAX_FA3_HD int64_t len(int64_t b) const {
    int64_t n = used ? int64_t(used[b]) : int64_t(cu[b + 1]) - cu[b];
    int64_t cap = total - start(b);
    if (max_len < cap) cap = max_len;
    return n < 0 ? 0 : (n > cap ? cap : n);
  }
  // Entry b in [0, n] (n = num_seqs) against params.h's contract, unclamped:
  // the conditions of varlen_detail::check_side below, one entry at a time so
  // that GPU threads can check them in parallel (varlen_fill.cu).
  JAX_FA3_HD bool entry_ok(int64_t b, int64_t n) const {
    if (b == 0 && cu[0] != 0) return false;
    if (b == n) return cu[n] <= total;
    int64_t const alloc = int64_t(cu[b + 1]) - cu[b];
    int64_t const n_used = used ? int64_t(used[b]) : alloc;
    return alloc >= 0 && n_used >= 0 && n_used <= alloc && n_used <= max_len;
  }
};

// The sides of a varlen AttnParams (seqlen_q/k hold the max lengths).
inline VarlenSide varlen_side_q(const AttnParams& p) {
  return VarlenSide{p.cu_seqlens_q, p.seqused_q, p.total_q, p.seqlen_q};
}
inline VarlenSide varlen_side_k(const AttnParams& p) {
  return VarlenSide{p.cu_seqlens_k, p.seqused_k, p.total_k, p.seqlen_k};
}

namespace varlen_detail {
inline std::string check_side(const char* side, const int32_t* cu, const int32_t* used,
                              int64_t n, int64_t total, int64_t max_len) {
  const std::string s(side);
  const std::string cu_name = "cu_seqlens_" + s;
  if (cu[0] != 0) return cu_name + "[0] must be 0, got " + std::to_string(cu[0]);
  for (int64_t b = 0; b < n; ++b) {
    if (cu[b + 1] < cu[b])
      return cu_name + " must be non-decreasing, but " + cu_name + "[" + std::to_string(b + 1) +
             "] = " + std::to_string(cu[b + 1]) + " < " + cu_name + "[" + std::to_string(b) +
             "] = " + std::to_string(cu[b]);
  }
  if (cu[n] > total)
    return cu_name + "[-1] = " + std::to_string(cu[n]) + " is past the end of the packed " + s +
           " (total_" + s + " = " + std::to_string(total) + " rows)";
  for (int64_t b = 0; b < n; ++b) {
    const int64_t alloc = static_cast<int64_t>(cu[b + 1]) - cu[b];
    int64_t len = alloc;
    if (used) {
      len = used[b];
      if (len < 0 || len > alloc)
        return "seqused_" + s + "[" + std::to_string(b) + "] = " + std::to_string(len) +
               " must be in [0, " + std::to_string(alloc) + "] (the length " + cu_name +
               " allocates to sequence " + std::to_string(b) + ")";
    }
    if (len > max_len)
      return "sequence " + std::to_string(b) + " has " + std::to_string(len) + " " + s +
             " rows, more than max_seqlen_" + s + " = " + std::to_string(max_len);
  }
  return "";
}
}  // namespace varlen_detail

// "" when the offsets of a varlen problem are consistent, else why not.
// Reads cu_seqlens / seqused, so only for host pointers (the CPU backend);
// the CUDA handler cannot afford a device-to-host copy per call.
inline std::string check_varlen_offsets(const AttnParams& p) {
  if (!p.is_varlen) return "";
  if (p.num_seqs < 1) return "varlen needs at least one sequence";
  if (!p.cu_seqlens_q || !p.cu_seqlens_k) return "cu_seqlens_q or cu_seqlens_k is null";
  std::string err = varlen_detail::check_side("q", p.cu_seqlens_q, p.seqused_q, p.num_seqs,
                                              p.total_q, p.max_seqlen_q);
  if (err.empty())
    err = varlen_detail::check_side("k", p.cu_seqlens_k, p.seqused_k, p.num_seqs, p.total_k,
                                    p.max_seqlen_k);
  return err;
}

}  // namespace jax_fa3
