// CPU forward: flash-style attention with an online softmax.
//
// One work item = one (sequence, head, block of kBlockQ query rows), a
// sequence being a batch entry or one packed varlen sequence (seqs.h). It walks
// the key blocks the mask lets those rows see, keeping per row a running max
// m and running sum l of exp(s - m) and an fp32 output accumulator that is
// rescaled by exp(m_old - m_new) whenever the max grows. Memory is one set
// of tiles per worker: never a seqlen_q x seqlen_k matrix.
//
// Output: out = acc / l rounded to the input dtype, lse = m + log(l) (natural
// log, fp32). Rows that see no key (mask.h) get out = 0 and lse = -inf, and
// so do the packed rows no sequence attends (varlen padding).
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

// Per-worker state, sized once for the head dim (dp = head_dim padded to 8).
struct FwdScratch {
  FwdScratch(int dp, int64_t nkb, int workers)
      : q(kBlockQ * dp),
        kstage(kBlockK * dp),
        s(kBlockQ * kBlockK),
        acc(kBlockQ * dp),
        m(kBlockQ),
        l(kBlockQ),
        kv(nkb, 2 * static_cast<size_t>(kBlockK) * dp, workers) {}
  std::vector<float> q;       // Q tile, kBlockQ x dp
  std::vector<float> kstage;  // K tile before its transpose, kBlockK x dp
  std::vector<float> s;       // scores, then probabilities, kBlockQ x kBlockK
  std::vector<float> acc;     // unnormalised output, kBlockQ x dp
  std::vector<float> m;       // running row max of the scores
  std::vector<float> l;       // running row sum of exp(s - m)
  // Per key block: K^T (dp x kBlockK, right operand of Q K^T), then V
  // (kBlockK x dp).
  TileCache kv;
};

// Rows [q0, q0 + mq) of head h of sequence seq (seq_index: its place in the
// Seq list, which keys the K/V cache).
void fwd_tile(const AttnParams& p, const Seq& seq, int64_t seq_index, int64_t h, int64_t q0,
              int mq, FwdScratch& w) {
  const MaskSpec& mask = seq.mask;
  const int d = static_cast<int>(p.head_dim);
  const int dp = round_up8(d);
  const int64_t kvh = h / p.h_h_k_ratio;
  float* q = w.q.data();
  float* acc = w.acc.data();
  float* s = w.s.data();

  load_tile(p.q, p.dtype, seq.q_off(p, q0, h), p.q_row_stride, mq, d, q, dp);
  std::fill(acc, acc + static_cast<size_t>(mq) * dp, 0.0f);
  std::fill(w.m.begin(), w.m.begin() + mq, kNegInf);
  std::fill(w.l.begin(), w.l.begin() + mq, 0.0f);

  // Key columns any row of this block sees; key blocks (aligned to kBlockK
  // so they can be cached) outside that range are skipped.
  int64_t c_begin, c_end;
  mask.col_range(q0, q0 + mq, &c_begin, &c_end);

  for (int64_t kb = c_begin / kBlockK; kb * kBlockK < c_end; ++kb) {
    const int64_t k0 = kb * kBlockK;
    const int nk = static_cast<int>(std::min<int64_t>(kBlockK, seq.len_k - k0));
    const int nkp = round_up8(nk);
    bool hit;
    float* kt = w.kv.get(seq_index * p.num_heads_k + kvh, kb, &hit);
    float* v = kt + static_cast<size_t>(dp) * kBlockK;
    if (!hit) {
      const int64_t koff = seq.k_off(p, k0, kvh);
      load_tile(p.k, p.dtype, koff, p.k_row_stride, nk, d, w.kstage.data(), dp);
      transpose_tile(w.kstage.data(), dp, nk, dp, kt, kBlockK);
      load_tile(p.v, p.dtype, koff, p.k_row_stride, nk, d, v, dp);
    }

    // Raw scores q . k for the whole tile (padded columns come out 0).
    gemm(mq, nkp, dp, q, dp, kt, kBlockK, s, kBlockK, /*accumulate=*/false);

    for (int i = 0; i < mq; ++i) {
      float* srow = s + static_cast<int64_t>(i) * kBlockK;
      const int64_t row = q0 + i;
      // This row's visible columns, local to the block.
      const int lb = static_cast<int>(std::max<int64_t>(mask.col_begin(row), k0) - k0);
      const int le = static_cast<int>(std::min<int64_t>(mask.col_end(row), k0 + nk) - k0);
      if (lb >= le) {
        // Nothing visible here: zero probabilities, state unchanged.
        std::fill(srow, srow + nk, 0.0f);
        continue;
      }
      transform_scores(srow + lb, le - lb, p.softmax_scale, p.softcap, nullptr);
      const float m_old = w.m[i];
      const float m_new = row_max(srow + lb, le - lb, m_old);
      // exp(-inf) = 0 on the first visible block: acc and l are 0 anyway.
      const float alpha = std::exp(m_old - m_new);
      for (int j = 0; j < lb; ++j) srow[j] = kNegInf;
      for (int j = lb; j < le; ++j) srow[j] -= m_new;
      for (int j = le; j < nk; ++j) srow[j] = kNegInf;
      exp_inplace(srow, nk);  // masked entries become exactly 0
      w.l[i] = w.l[i] * alpha + row_sum(srow + lb, le - lb);
      w.m[i] = m_new;
      if (alpha != 1.0f) {
        float* arow = acc + static_cast<int64_t>(i) * dp;
        for (int c = 0; c < dp; ++c) arow[c] *= alpha;
      }
    }

    // acc += P V over the nk real key rows.
    gemm(mq, dp, nk, s, kBlockK, v, dp, acc, dp, /*accumulate=*/true);
  }

  // Normalise and write back.
  float* lse = p.lse + seq.lse_off(p, h) + q0;
  for (int i = 0; i < mq; ++i) {
    float* arow = acc + static_cast<int64_t>(i) * dp;
    if (w.l[i] > 0.0f) {
      const float inv = 1.0f / w.l[i];
      for (int c = 0; c < d; ++c) arow[c] *= inv;
      lse[i] = w.m[i] + std::log(w.l[i]);
    } else {
      // Empty row (mask.h): out = 0, lse = -inf.
      std::fill(arow, arow + d, 0.0f);
      lse[i] = kNegInf;
    }
  }
  store_tile(p.out, p.dtype, seq.q_off(p, q0, h), p.q_row_stride, mq, d, acc, dp);
}

}  // namespace

std::string run_fwd(const AttnParams& p) {
  std::string err = check_params(p, /*backward=*/false);
  if (!err.empty()) return err;
  if (p.q_elems() == 0) return "";
  try {
    const std::vector<Seq> seqs = make_seqs(p);
    // Varlen rows outside every sequence: out 0, lse -inf (as an empty row).
    for_each_unattended(p, /*q_side=*/true, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t h = 0; h < p.num_heads; ++h) {
          zero_row(p.out, r * p.q_row_stride + h * p.q_head_stride, p.dtype, p.head_dim);
          p.lse[h * p.lse_head_stride + r] = kNegInf;
        }
    });
    const int dp = round_up8(p.head_dim);
    const int64_t nkb = ceil_div(max_len_k(seqs), kBlockK);
    const Schedule sched(seqs, p.num_heads, kBlockQ, /*q_side=*/true);
    const int workers = plan_workers(sched.size());
    std::vector<FwdScratch> scratch;
    scratch.reserve(workers);
    for (int i = 0; i < workers; ++i) scratch.emplace_back(dp, nkb, workers);

    return parallel_for(sched.size(), workers, [&](int64_t item, int worker) {
      // Consecutive items share (sequence, head), so a worker's K/V cache
      // hits. Within a head, last query blocks first: under a causal mask
      // they see the most keys, and handing them out early evens out the end.
      const Schedule::Item it = sched.at(item);
      const Seq& s = seqs[static_cast<size_t>(it.seq)];
      const int64_t q0 = (it.nblocks - 1 - it.block) * kBlockQ;
      const int mq = static_cast<int>(std::min<int64_t>(kBlockQ, s.len_q - q0));
      fwd_tile(p, s, it.seq, it.head, q0, mq, scratch[worker]);
    });
  } catch (const std::bad_alloc&) {
    return "out of host memory in the CPU forward";
  } catch (const std::exception& e) {
    return std::string("CPU forward failed: ") + e.what();
  }
}

}  // namespace jax_fa3::cpu
