// CPU backward (FlashAttention-2/3 math), deterministic and race-free.
//
// With P_ij = exp(s_ij - lse_i) recomputed from the saved LSE:
//   D_i   = rowsum(dO_i * O_i)
//   dV_j  = sum_i P_ij dO_i
//   dP_ij = dO_i . V_j
//   dS_ij = P_ij (dP_ij - D_i)          (* (1 - tanh^2) with softcap)
//   dQ_i  = scale * sum_j dS_ij K_j
//   dK_j  = scale * sum_i dS_ij Q_i
//
// Two passes so no output is written by two workers and no atomics are
// needed (results do not depend on the thread count or schedule):
//   pass 1, one item per (sequence, head, query block): D and dQ;
//   pass 2, one item per (sequence, kv head, key block): dK and dV, looping over
//   the query heads of the GQA group and the query rows that can see the
//   block (mask.h row_range). P and dP are recomputed in both passes; pass 2
//   works on transposed tiles (key rows x query columns) so dV and dK are
//   plain row-major matmuls.
// A sequence is a batch entry or one packed varlen sequence (seqs.h); both
// passes only see its attended rows. Rows with lse = -inf (they see no key)
// contribute nothing; packed rows that no sequence attends get zero dQ (and
// zero dK, dV on the key side), written before the passes.
#include <algorithm>
#include <cmath>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "cc/common/mask.h"
#include "cc/cpu/cpu_backend.h"
#include "cc/cpu/kernels.h"
#include "cc/cpu/parallel.h"
#include "cc/cpu/seqs.h"
#include "cc/cpu/tile.h"

namespace jax_fa3::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// One row of a score tile, in place:
//   on entry  s[0..n) = raw q.k, dp[0..n) = dO.V, visible columns [lb, le);
//   on exit   s[0..n) = P, dp[0..n) = dS (both exactly 0 outside [lb, le)).
// lse/D are per column when lse_col/d_col are given (pass 2's transposed
// tiles: a row is one key, the columns are queries), else the per-row
// scalars lse_row/d_row (pass 1). `dtanh` is n floats of scratch.
inline void probs_and_ds(const AttnParams& p, float* s, float* dp, int n, int lb, int le,
                         float lse_row, float d_row, const float* lse_col, const float* d_col,
                         float* dtanh) {
  if (lb >= le) {
    std::fill(s, s + n, 0.0f);
    std::fill(dp, dp + n, 0.0f);
    return;
  }
  const bool cap = p.softcap > 0.0f;
  transform_scores(s + lb, le - lb, p.softmax_scale, p.softcap, cap ? dtanh + lb : nullptr);
  for (int j = 0; j < lb; ++j) s[j] = kNegInf;
  if (lse_col) {
    // An empty query row (lse = -inf) must give P = 0, not exp(+inf).
    for (int j = lb; j < le; ++j) s[j] = lse_col[j] == kNegInf ? kNegInf : s[j] - lse_col[j];
  } else {
    for (int j = lb; j < le; ++j) s[j] -= lse_row;
  }
  for (int j = le; j < n; ++j) s[j] = kNegInf;
  exp_inplace(s, n);  // P; masked entries exactly 0
  for (int j = 0; j < lb; ++j) dp[j] = 0.0f;
  if (d_col) {
    for (int j = lb; j < le; ++j) dp[j] = s[j] * (dp[j] - d_col[j]);
  } else {
    for (int j = lb; j < le; ++j) dp[j] = s[j] * (dp[j] - d_row);
  }
  for (int j = le; j < n; ++j) dp[j] = 0.0f;
  if (cap)
    for (int j = lb; j < le; ++j) dp[j] *= dtanh[j];
}

// ---- pass 1: D and dQ ------------------------------------------------------

struct DqScratch {
  DqScratch(int dp, int64_t nkb, int workers)
      : q(kBlockQ * dp),
        dout(kBlockQ * dp),
        orow(dp),
        stage(kBlockK * dp),
        s(kBlockQ * kBlockK),
        dpm(kBlockQ * kBlockK),
        dq(kBlockQ * dp),
        dtanh(kBlockK),
        kv(nkb, 3 * static_cast<size_t>(kBlockK) * dp, workers) {}
  std::vector<float> q, dout;  // kBlockQ x dp
  std::vector<float> orow;     // one row of O, for D
  std::vector<float> stage;    // V tile before its transpose
  std::vector<float> s, dpm;   // kBlockQ x kBlockK: scores -> P, dP -> dS
  std::vector<float> dq;       // kBlockQ x dp accumulator
  std::vector<float> dtanh;
  // Per key block: K (kBlockK x dp, right operand of dS K), K^T and V^T
  // (dp x kBlockK, right operands of Q K^T and dO V^T).
  TileCache kv;
};

// Query rows [q0, q0 + mq) of head h of sequence s (seq_index keys the
// K/V cache). dsum_all is laid out like the LSE.
void dq_tile(const AttnParams& p, const Seq& s, int64_t seq_index, int64_t h, int64_t q0, int mq,
             float* dsum_all, DqScratch& w) {
  const MaskSpec& mask = s.mask;
  const int d = static_cast<int>(p.head_dim);
  const int dp = round_up8(d);
  const size_t tile = static_cast<size_t>(kBlockK) * dp;
  const int64_t kvh = h / p.h_h_k_ratio;
  const int64_t qoff = s.q_off(p, q0, h);
  float* q = w.q.data();
  float* dout = w.dout.data();
  float* dq = w.dq.data();

  load_tile(p.q, p.dtype, qoff, p.q_row_stride, mq, d, q, dp);
  load_tile(p.dout, p.dtype, qoff, p.q_row_stride, mq, d, dout, dp);
  const float* lse = p.lse_in + s.lse_off(p, h) + q0;
  // D_i = rowsum(dO_i * O_i), from O and dO as given, accumulated in fp32.
  float* dsum = dsum_all + s.lse_off(p, h) + q0;
  for (int i = 0; i < mq; ++i) {
    load_row(p.out_in, qoff + i * p.q_row_stride, p.dtype, d, w.orow.data());
    const float* g = dout + static_cast<int64_t>(i) * dp;
    for (int c = 0; c < d; ++c) w.orow[c] *= g[c];
    dsum[i] = row_sum(w.orow.data(), d);
  }
  std::fill(dq, dq + static_cast<size_t>(mq) * dp, 0.0f);

  int64_t c_begin, c_end;
  mask.col_range(q0, q0 + mq, &c_begin, &c_end);
  for (int64_t kb = c_begin / kBlockK; kb * kBlockK < c_end; ++kb) {
    const int64_t k0 = kb * kBlockK;
    const int nk = static_cast<int>(std::min<int64_t>(kBlockK, s.len_k - k0));
    const int nkp = round_up8(nk);
    bool hit;
    float* k = w.kv.get(seq_index * p.num_heads_k + kvh, kb, &hit);
    float* kt = k + tile;
    float* vt = kt + tile;
    if (!hit) {
      const int64_t koff = s.k_off(p, k0, kvh);
      load_tile(p.k, p.dtype, koff, p.k_row_stride, nk, d, k, dp);
      transpose_tile(k, dp, nk, dp, kt, kBlockK);
      load_tile(p.v, p.dtype, koff, p.k_row_stride, nk, d, w.stage.data(), dp);
      transpose_tile(w.stage.data(), dp, nk, dp, vt, kBlockK);
    }

    gemm(mq, nkp, dp, q, dp, kt, kBlockK, w.s.data(), kBlockK, false);       // Q K^T
    gemm(mq, nkp, dp, dout, dp, vt, kBlockK, w.dpm.data(), kBlockK, false);  // dO V^T

    for (int i = 0; i < mq; ++i) {
      const int64_t row = q0 + i;
      int lb = static_cast<int>(std::max<int64_t>(mask.col_begin(row), k0) - k0);
      int le = static_cast<int>(std::min<int64_t>(mask.col_end(row), k0 + nk) - k0);
      if (lse[i] == kNegInf) le = lb;  // empty row: no gradient
      probs_and_ds(p, w.s.data() + static_cast<int64_t>(i) * kBlockK,
                   w.dpm.data() + static_cast<int64_t>(i) * kBlockK, nk, lb, le, lse[i], dsum[i],
                   nullptr, nullptr, w.dtanh.data());
    }
    gemm(mq, dp, nk, w.dpm.data(), kBlockK, k, dp, dq, dp, true);  // dQ += dS K
  }

  for (int64_t e = 0; e < static_cast<int64_t>(mq) * dp; ++e) dq[e] *= p.softmax_scale;
  store_tile(p.dq, p.dtype, qoff, p.q_row_stride, mq, d, dq, dp);
}

// ---- pass 2: dK and dV -----------------------------------------------------

struct DkvScratch {
  DkvScratch(int dp, int64_t q_tiles, int workers)
      : k(kBlockK * dp),
        v(kBlockK * dp),
        st(kBlockK * kBlockQ),
        dpt(kBlockK * kBlockQ),
        dk(kBlockK * dp),
        dv(kBlockK * dp),
        dtanh(kBlockQ),
        qs(q_tiles, 4 * static_cast<size_t>(kBlockQ) * dp, workers) {}
  std::vector<float> k, v;     // kBlockK x dp, left operands of K Q^T, V dO^T
  std::vector<float> st, dpt;  // kBlockK x kBlockQ: S^T -> P^T, dP^T -> dS^T
  std::vector<float> dk, dv;   // kBlockK x dp accumulators
  std::vector<float> dtanh;
  // Per (query head of the group, query block): Q and dO (kBlockQ x dp,
  // right operands of dS^T Q and P^T dO), then Q^T and dO^T (dp x kBlockQ,
  // right operands of K Q^T and V dO^T).
  TileCache qs;
};

// Key rows [k0, k0 + nk) of kv head kvh of sequence s.
void dkv_tile(const AttnParams& p, const Seq& s, int64_t seq_index, int64_t kvh, int64_t k0,
              int nk, const float* dsum_all, DkvScratch& w) {
  const MaskSpec& mask = s.mask;
  const int d = static_cast<int>(p.head_dim);
  const int dp = round_up8(d);
  const size_t tile = static_cast<size_t>(kBlockQ) * dp;
  const int64_t nqb = ceil_div(s.len_q, kBlockQ);
  const int64_t koff = s.k_off(p, k0, kvh);
  float* st = w.st.data();
  float* dpt = w.dpt.data();

  load_tile(p.k, p.dtype, koff, p.k_row_stride, nk, d, w.k.data(), dp);
  load_tile(p.v, p.dtype, koff, p.k_row_stride, nk, d, w.v.data(), dp);
  std::fill(w.dk.begin(), w.dk.begin() + static_cast<size_t>(nk) * dp, 0.0f);
  std::fill(w.dv.begin(), w.dv.begin() + static_cast<size_t>(nk) * dp, 0.0f);

  // Query rows that see any key of this block; the same for every head.
  // Query blocks are aligned to kBlockQ so they can be cached.
  int64_t r_begin, r_end;
  mask.row_range(k0, k0 + nk, &r_begin, &r_end);

  for (int64_t g = 0; g < p.h_h_k_ratio; ++g) {
    const int64_t h = kvh * p.h_h_k_ratio + g;
    const float* lse_h = p.lse_in + s.lse_off(p, h);
    const float* dsum_h = dsum_all + s.lse_off(p, h);
    for (int64_t qb = r_begin / kBlockQ; qb * kBlockQ < r_end; ++qb) {
      const int64_t q0 = qb * kBlockQ;
      const int mq = static_cast<int>(std::min<int64_t>(kBlockQ, s.len_q - q0));
      const int mqp = round_up8(mq);
      bool hit;
      float* q = w.qs.get(seq_index * p.num_heads_k + kvh, g * nqb + qb, &hit);
      float* dout = q + tile;
      float* qt = dout + tile;
      float* doutt = qt + tile;
      if (!hit) {
        const int64_t qoff = s.q_off(p, q0, h);
        load_tile(p.q, p.dtype, qoff, p.q_row_stride, mq, d, q, dp);
        transpose_tile(q, dp, mq, dp, qt, kBlockQ);
        load_tile(p.dout, p.dtype, qoff, p.q_row_stride, mq, d, dout, dp);
        transpose_tile(dout, dp, mq, dp, doutt, kBlockQ);
      }

      gemm(nk, mqp, dp, w.k.data(), dp, qt, kBlockQ, st, kBlockQ, false);     // K Q^T
      gemm(nk, mqp, dp, w.v.data(), dp, doutt, kBlockQ, dpt, kBlockQ, false);  // V dO^T

      const float* lse = lse_h + q0;
      const float* dsum = dsum_h + q0;
      for (int j = 0; j < nk; ++j) {
        // Query rows (local to this q block) that see key k0 + j.
        int64_t rb, re;
        mask.row_range(k0 + j, k0 + j + 1, &rb, &re);
        const int lb = static_cast<int>(std::clamp<int64_t>(rb - q0, 0, mq));
        const int le = static_cast<int>(std::clamp<int64_t>(re - q0, lb, mq));
        probs_and_ds(p, st + static_cast<int64_t>(j) * kBlockQ,
                     dpt + static_cast<int64_t>(j) * kBlockQ, mq, lb, le, 0.0f, 0.0f, lse, dsum,
                     w.dtanh.data());
      }
      // dV += P^T dO and dK += dS^T Q over the mq real query rows.
      gemm(nk, dp, mq, st, kBlockQ, dout, dp, w.dv.data(), dp, true);
      gemm(nk, dp, mq, dpt, kBlockQ, q, dp, w.dk.data(), dp, true);
    }
  }

  for (int64_t e = 0; e < static_cast<int64_t>(nk) * dp; ++e) w.dk[e] *= p.softmax_scale;
  store_tile(p.dk, p.dtype, koff, p.k_row_stride, nk, d, w.dk.data(), dp);
  store_tile(p.dv, p.dtype, koff, p.k_row_stride, nk, d, w.dv.data(), dp);
}

}  // namespace


std::string run_bwd(const AttnParams& p) {
  std::string err = check_params(p, /*backward=*/true);
  if (!err.empty()) return err;
  try {
    const std::vector<Seq> seqs = make_seqs(p);
    const int dp = round_up8(p.head_dim);
    // Varlen rows no sequence attends have no gradient. (The passes below
    // also cover a sequence with no queries: its keys get dK = dV = 0.)
    for_each_unattended(p, /*q_side=*/true, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t h = 0; h < p.num_heads; ++h)
          zero_row(p.dq, r * p.q_row_stride + h * p.q_head_stride, p.dtype, p.head_dim);
    });
    for_each_unattended(p, /*q_side=*/false, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t h = 0; h < p.num_heads_k; ++h) {
          zero_row(p.dk, r * p.k_row_stride + h * p.k_head_stride, p.dtype, p.head_dim);
          zero_row(p.dv, r * p.k_row_stride + h * p.k_head_stride, p.dtype, p.head_dim);
        }
    });
    // D for every (head, row), laid out like the LSE: written by pass 1,
    // read by pass 2.
    std::vector<float> dsum(static_cast<size_t>(p.lse_elems()));

    // Pass 1: dQ and D.
    {
      const int64_t nkb = ceil_div(max_len_k(seqs), kBlockK);
      const Schedule sched(seqs, p.num_heads, kBlockQ, /*q_side=*/true);
      const int workers = plan_workers(sched.size());
      std::vector<DqScratch> scratch;
      scratch.reserve(workers);
      for (int i = 0; i < workers; ++i) scratch.emplace_back(dp, nkb, workers);
      err = parallel_for(sched.size(), workers, [&](int64_t item, int worker) {
        // Consecutive items share (sequence, head) for the K/V cache; heavy
        // (late, under causal) query blocks first, as in the forward.
        const Schedule::Item it = sched.at(item);
        const Seq& s = seqs[static_cast<size_t>(it.seq)];
        const int64_t q0 = (it.nblocks - 1 - it.block) * kBlockQ;
        const int mq = static_cast<int>(std::min<int64_t>(kBlockQ, s.len_q - q0));
        dq_tile(p, s, it.seq, it.head, q0, mq, dsum.data(), scratch[worker]);
      });
      if (!err.empty()) return "CPU backward (dQ) failed: " + err;
    }

    // Pass 2: dK and dV.
    {
      const int64_t q_tiles = p.h_h_k_ratio * ceil_div(max_len_q(seqs), kBlockQ);
      const Schedule sched(seqs, p.num_heads_k, kBlockK, /*q_side=*/false);
      const int workers = plan_workers(sched.size());
      std::vector<DkvScratch> scratch;
      scratch.reserve(workers);
      for (int i = 0; i < workers; ++i) scratch.emplace_back(dp, q_tiles, workers);
      err = parallel_for(sched.size(), workers, [&](int64_t item, int worker) {
        // Consecutive items share (sequence, kv head) for the Q/dO cache;
        // early key blocks first: under a causal mask they are seen by the
        // most query rows.
        const Schedule::Item it = sched.at(item);
        const Seq& s = seqs[static_cast<size_t>(it.seq)];
        const int64_t k0 = it.block * kBlockK;
        const int nk = static_cast<int>(std::min<int64_t>(kBlockK, s.len_k - k0));
        dkv_tile(p, s, it.seq, it.head, k0, nk, dsum.data(), scratch[worker]);
      });
      if (!err.empty()) return "CPU backward (dK, dV) failed: " + err;
    }
    return "";
  } catch (const std::bad_alloc&) {
    return "out of host memory in the CPU backward";
  } catch (const std::exception& e) {
    return std::string("CPU backward failed: ") + e.what();
  }
}

}  // namespace jax_fa3::cpu
