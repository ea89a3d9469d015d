// The CPU backend's view of "a sequence": where one attention problem's rows
// start in the tensors and how long it is. Dense batches and varlen (packed)
// sequences both become a list of Seq, so the tile code of fwd.cc / bwd.cc
// is written once against a Seq instead of against (batch, seqlen):
//   dense:  one Seq per batch entry, base offsets b * batch_stride;
//   varlen: one Seq per non-empty packed sequence, base offsets
//           cu_seqlens[b] rows, lengths seqused[b] (or the allocated
//           length), mask per sequence.
// Also: the hand-out of (sequence, head, block) work items, whose count per
// sequence varies under varlen, and the rows that belong to no sequence.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cc/common/mask.h"
#include "cc/common/params.h"
#include "cc/common/varlen.h"

namespace jax_fa3::cpu {

struct Seq {
  int64_t q_base = 0;    // element offset of (row 0, head 0) in q / out / dout / dq
  int64_t k_base = 0;    // element offset of (row 0, head 0) in k / v / dk / dv
  int64_t lse_base = 0;  // element offset of (head 0, row 0) in lse (and D)
  int64_t len_q = 0;     // attended query rows
  int64_t len_k = 0;     // attended key rows
  MaskSpec mask{0, 0, -1, -1};

  // Element offsets of (row r, head h) of this sequence.
  int64_t q_off(const AttnParams& p, int64_t r, int64_t h) const {
    return q_base + r * p.q_row_stride + h * p.q_head_stride;
  }
  int64_t k_off(const AttnParams& p, int64_t r, int64_t h) const {
    return k_base + r * p.k_row_stride + h * p.k_head_stride;
  }
  // Offset of this sequence's row 0 for head h in the lse-shaped tensors.
  int64_t lse_off(const AttnParams& p, int64_t h) const {
    return lse_base + h * p.lse_head_stride;
  }
};

// The sequences of p. Varlen offsets must have been validated
// (check_varlen_offsets), which check_params in tile.h does. Sequences with
// neither queries nor keys have no work and no rows, and are left out: the
// segment_ids path (jax_fa3/segments.py) passes a static bound of mostly
// empty slots.
inline std::vector<Seq> make_seqs(const AttnParams& p) {
  const int64_t n = p.is_varlen ? p.num_seqs : p.batch;
  std::vector<Seq> seqs;
  seqs.reserve(static_cast<size_t>(p.is_varlen ? 0 : n));
  for (int64_t b = 0; b < n; ++b) {
    Seq s;
    if (p.is_varlen) {
      const SeqBounds sb =
          seq_bounds(p.cu_seqlens_q, p.cu_seqlens_k, p.seqused_q, p.seqused_k, b);
      s.q_base = sb.q_start * p.q_row_stride;
      s.k_base = sb.k_start * p.k_row_stride;
      s.lse_base = sb.q_start;  // lse is (heads, total_q)
      s.len_q = sb.len_q;
      s.len_k = sb.len_k;
    } else {
      s.q_base = b * p.q_batch_stride;
      s.k_base = b * p.k_batch_stride;
      s.lse_base = b * p.lse_batch_stride;
      s.len_q = p.seqlen_q;
      s.len_k = p.seqlen_k;
    }
    if (s.len_q == 0 && s.len_k == 0) continue;
    s.mask = MaskSpec::make(s.len_q, s.len_k, p.causal, p.window_left, p.window_right);
    seqs.push_back(s);
  }
  return seqs;
}

inline int64_t max_len_q(const std::vector<Seq>& seqs) {
  int64_t m = 0;
  for (const Seq& s : seqs) m = std::max(m, s.len_q);
  return m;
}
inline int64_t max_len_k(const std::vector<Seq>& seqs) {
  int64_t m = 0;
  for (const Seq& s : seqs) m = std::max(m, s.len_k);
  return m;
}

// Work items for parallel_for: for every sequence, `heads` x (its rows /
// block) items, numbered sequence-major, then head, then block, so that
// consecutive items share a (sequence, head) and a worker's tile cache hits.
// With a dense batch every sequence has the same count; under varlen they
// differ (and empty sequences have none), hence the prefix sums.
class Schedule {
 public:
  struct Item {
    int64_t seq;     // index into the Seq list
    int64_t head;    // in [0, heads)
    int64_t block;   // in [0, nblocks)
    int64_t nblocks; // blocks of this sequence
  };

  // `q_side`: blocks over the query rows (else the key rows) of each Seq.
  Schedule(const std::vector<Seq>& seqs, int64_t heads, int block, bool q_side)
      : heads_(heads), block_(block), q_side_(q_side), seqs_(&seqs) {
    start_.reserve(seqs.size() + 1);
    start_.push_back(0);
    for (const Seq& s : seqs) start_.push_back(start_.back() + heads * nblocks(s));
  }

  int64_t size() const { return start_.back(); }

  Item at(int64_t item) const {
    // The last sequence whose first item is <= item (skips empty ones).
    const auto it = std::upper_bound(start_.begin(), start_.end(), item);
    const int64_t seq = static_cast<int64_t>(it - start_.begin()) - 1;
    const int64_t nb = nblocks((*seqs_)[static_cast<size_t>(seq)]);
    const int64_t local = item - start_[static_cast<size_t>(seq)];
    return Item{seq, local / nb, local % nb, nb};
  }

 private:
  int64_t nblocks(const Seq& s) const {
    const int64_t len = q_side_ ? s.len_q : s.len_k;
    return (len + block_ - 1) / block_;
  }
  int64_t heads_;
  int64_t block_;
  bool q_side_;
  const std::vector<Seq>* seqs_;
  std::vector<int64_t> start_;  // first item of each sequence, then the total
};

// Calls fn(r0, r1) for each maximal range of packed rows [r0, r1) that no
// sequence attends: the rows past seqused and those past cu_seqlens[-1].
// Only varlen has any (a dense batch attends every row). The kernels skip
// those rows, so callers write their outputs (0, lse -inf, zero gradients).
template <class Fn>
void for_each_unattended(const AttnParams& p, bool q_side, Fn&& fn) {
  if (!p.is_varlen) return;
  const int32_t* cu = q_side ? p.cu_seqlens_q : p.cu_seqlens_k;
  const int32_t* used = q_side ? p.seqused_q : p.seqused_k;
  const int64_t total = q_side ? p.total_q : p.total_k;
  for (int64_t b = 0; b < p.num_seqs; ++b) {
    const int64_t r0 = cu[b] + (used ? used[b] : cu[b + 1] - cu[b]);
    if (r0 < cu[b + 1]) fn(r0, static_cast<int64_t>(cu[b + 1]));
  }
  if (cu[p.num_seqs] < total) fn(static_cast<int64_t>(cu[p.num_seqs]), total);
}

}  // namespace jax_fa3::cpu
