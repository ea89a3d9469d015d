// Host side of the backward (JAX_FA3_BWD).
//
// Part 1 (always, CuTe-free): the workspace layout, shared by
// bwd_workspace_bytes / run_bwd (launch_bwd.cu), the pre/postprocess kernels
// and the main kernel's launcher.
// Part 2 (unless JAX_FA3_BWD_LAYOUT_ONLY): launch_bwd_impl, included by the
// per-(head dim, dtype) instantiation TUs.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cc/common/params.h"
#include "cc/hopper/api.h"
#include "cc/hopper/bwd_scratch.h"

namespace jax_fa3::hopper {

// Varlen: the main kernel's launch order of sequences, longest first, is
// sorted on the device (one block, bwd_preprocess.cu) for up to this many
// sequences; more keep their order, and so do all with the A/B switch
// JAX_FA3_VARLEN_PLAIN_RR=1 (varlen_plain_rr, api.h).
constexpr int64_t kBwdSeqOrderMax = 4096;

struct BwdWorkspace {
  // Dense: per (batch, head), rows padded to sq_pad / sk_pad. Varlen
  // (bwd_scratch.h): per head, all sequences in one padded run of sq_pad /
  // sk_pad rows, so "batch" is 1 in the scratch (ws_batch).
  int64_t sq_pad = 0, sk_pad = 0, num_m = 0, num_n_max = 0, ws_batch = 0;
  // byte offsets; -1: absent
  int64_t off_lse2 = 0, off_dpsum = 0, off_dq = 0, off_dk = -1, off_dv = -1, off_sem_dq = -1,
          off_sem_dkv = -1, off_seq_order = -1;
  // The fused dQ convert's counts (bwd_dq_fuse.h), one int per (batch or
  // sequence, head), then the started CTAs; then (dq_first_store) one state
  // per dQ accumulator block (bwd_dq.h). The preprocess zeroes n_pre_zero
  // ints from off_dq_done: both, and the padding between them.
  int64_t off_dq_done = 0, n_dq_done = 0, off_dq_state = -1, n_pre_zero = 0;
  int64_t bytes = 0;          // total
  int64_t zero_begin = 0;     // [zero_begin, bytes) must be zeroed before the kernel
  int64_t dq_end = 0;         // [zero_begin, dq_end): the dQ accumulator, which the
                              // preprocess zeroes when it runs, unless
                              // dq_first_store (bwd_preprocess.cu)

  // Whether the main kernel runs (else dQ, dK, dV are zeros from the zeroed
  // accumulators). A TMA descriptor cannot describe an empty tensor.
  static bool main_kernel(const AttnParams& p) {
    if (p.is_varlen)
      return p.total_q > 0 && p.total_k > 0 && p.max_seqlen_q > 0 && p.max_seqlen_k > 0;
    return p.seqlen_q > 0 && p.seqlen_k > 0;
  }

  // Whether the dQ accumulator is left unzeroed: the first CTA to reach each
  // query block stores its partial there and the others add after it
  // (BwdDqWriter, bwd_dq.h). Not for the deterministic mode (its ordered
  // adds start from zeros) nor d256 (whose consumers add with red.v4, no
  // writer warp in between); never without the main kernel (the
  // postprocess then converts the zeroed accumulator). And only under a
  // causal or local mask, whose key blocks reach a query block at different
  // steps. Without one, all key blocks of a head walk the query blocks in
  // step, so at every step most CTAs wait for the one storing (H100, through
  // JAX, against the zeroed accumulator: d128 non-causal 2k 0.90x, the
  // packed documents 0.96x; causal 512 / 2k / 8k 1.11 / 1.02 / 1.00x, the
  // documents 1.03x; d64 causal 1.07 / 1.02 / 1.01x, non-causal 1.00-1.01x).
  static bool dq_first_store(const AttnParams& p) {
    if (!main_kernel(p) || p.deterministic || p.head_dim == 256) return false;
    int const env = bwd_dq_first_store_env();
    if (env >= 0) return env == 1;
    return p.masked();
  }

  static BwdWorkspace make(const AttnParams& p) {
    BwdWorkspace w;
    auto up = [](int64_t x, int64_t a) { return (x + a - 1) / a * a; };
    if (p.is_varlen) {
      w.sq_pad = bwd_pad_rows(p.total_q, p.num_seqs, kBwdPadM);
      w.sk_pad = bwd_pad_rows(p.total_k, p.num_seqs, kBwdPadN);
      w.ws_batch = 1;
    } else {
      w.sq_pad = up(p.seqlen_q, kBwdPadM);
      w.sk_pad = up(p.seqlen_k, kBwdPadN);
      w.ws_batch = p.batch;
    }
    w.num_m = w.sq_pad / kBwdMinBlockM;  // the most query blocks of any kBlockM
    w.num_n_max = up(p.seqlen_k, kBwdMinBlockN) / kBwdMinBlockN;
    int64_t bh = w.ws_batch * p.num_heads, bhk = w.ws_batch * p.num_heads_k;
    int64_t o = 0;
    auto take = [&](int64_t n) {
      int64_t r = o;
      o = up(o + n, 256);
      return r;
    };
    w.off_lse2 = take(bh * w.sq_pad * 4);
    w.off_dpsum = take(bh * w.sq_pad * 4);
    if (p.is_varlen && p.num_seqs > 1 && p.num_seqs <= kBwdSeqOrderMax && !varlen_plain_rr())
      w.off_seq_order = take(p.num_seqs * 4);
    w.n_dq_done = (p.is_varlen ? p.num_seqs : p.batch) * p.num_heads + 1;
    w.off_dq_done = take(w.n_dq_done * 4);
    if (dq_first_store(p)) w.off_dq_state = take(bh * w.num_m * 4);
    w.n_pre_zero = (o - w.off_dq_done) / 4;
    w.zero_begin = o;
    w.off_dq = take(bh * w.sq_pad * p.head_dim * 4);
    w.dq_end = o;
    // fp32 dK/dV accumulators: GQA sums over the group's query heads;
    // without query rows the kernel does not run and the zeros come from here.
    bool const no_q = p.is_varlen ? (p.total_q == 0 || p.max_seqlen_q == 0) : p.seqlen_q == 0;
    if (p.h_h_k_ratio > 1 || no_q) {
      w.off_dk = take(bhk * w.sk_pad * p.head_dim * 4);
      w.off_dv = take(bhk * w.sk_pad * p.head_dim * 4);
    }
    if (p.deterministic) {
      w.off_sem_dq = take(bh * w.num_m * 4);
      // (batch = sequences, kv heads, key blocks of the longest sequence)
      int64_t nb = p.is_varlen ? p.num_seqs : p.batch;
      if (p.h_h_k_ratio > 1) w.off_sem_dkv = take(nb * p.num_heads_k * w.num_n_max * 4);
    }
    w.bytes = o;
    return w;
  }
  template <class T>
  T* at(void* base, int64_t off) const {
    return off < 0 ? nullptr : reinterpret_cast<T*>(static_cast<char*>(base) + off);
  }
};

// bwd_preprocess.cu / bwd_postprocess.cu. The postprocess converts the GQA
// dK/dV accumulators, and dQ only when the main kernel did not run
// (convert_dq: the accumulator is then all zeros, in any order); otherwise
// launch_bwd converts dQ from its fragment order (bwd_dq.h).
std::string bwd_preprocess(const AttnParams& p, const BwdWorkspace& w, cudaStream_t s);
std::string bwd_postprocess(const AttnParams& p, const BwdWorkspace& w, bool convert_dq,
                            cudaStream_t s);

// Defined in the instantiation TUs.
template <int D, class Element>
std::string launch_bwd(const AttnParams& p, const BwdWorkspace& w, cudaStream_t stream);

}  // namespace jax_fa3::hopper

#ifndef JAX_FA3_BWD_LAYOUT_ONLY

#include "cc/hopper/kernel_bwd.h"
#include "cc/hopper/launch_common.h"

namespace jax_fa3::hopper {

// The fused dQ convert (bwd_dq_fuse.h): sequences of at most this many
// query rows may be converted by their last CTA (JAX_FA3_BWD_DQ_FUSE_ROWS,
// api.h, overrides it at run time). Through JAX, d128 (H100, against the
// separate kernel alone): 512 1.04x, 2k 1.02x, the packed documents of
// benchmarks.varlen (<= 3.5k) 1.013 / 1.018x; at 8k 1.011x non-causal but
// 0.990x causal (one CTA converts a whole 8k head), hence the bound.
#ifndef JAX_FA3_BWD_DQ_FUSE_ROWS  // build-time override for A/B experiments
#define JAX_FA3_BWD_DQ_FUSE_ROWS 4096
#endif

// Deterministic: how many (batch, head) groups the launch interleaves
// (BwdKernelParams::cta_coords), for a group's consecutive key blocks to
// launch about one step apart: with every SM busy, CTAs of m_steps steps
// launch ~m_steps / 132 steps apart (H100), so ~128 / m_steps groups
// (2k at kBlockM 64: 4; from 8k on: 1, the group alone).
#ifndef JAX_FA3_BWD_DET_SPAN  // build-time override for A/B experiments
#define JAX_FA3_BWD_DET_SPAN 128
#endif
inline int bwd_det_groups(int m_steps, int64_t groups) {
  int64_t g = JAX_FA3_BWD_DET_SPAN / std::max(m_steps, 1);
  return int(std::clamp<int64_t>(g, 1, std::max<int64_t>(std::min<int64_t>(groups, 16), 1)));
}

template <class Traits>
std::string launch_bwd_impl(const AttnParams& a, const BwdWorkspace& w, cudaStream_t stream) {
  using Element = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  static_assert(kBwdPadM % kBlockM == 0 && kBlockM >= kBwdMinBlockM && kBlockN <= kBwdPadN &&
                kBlockN >= kBwdMinBlockN);
  int const num_m = int(w.sq_pad / kBlockM);  // this kernel's query blocks
  using GmemLayout = typename Traits::GmemLayout;

  // Varlen: the packed tensors, batch extent 1 (its stride, never stepped,
  // is given the tensor's size rather than 0).
  bool const vl = a.is_varlen;
  int64_t const rows_q = vl ? a.total_q : a.seqlen_q, rows_k = vl ? a.total_k : a.seqlen_k;
  int64_t const tma_batch = vl ? 1 : a.batch;
  auto q_layout = make_layout(
      make_shape(int32_t(rows_q), int32_t(D), int32_t(a.num_heads), int32_t(tma_batch)),
      make_stride(a.q_row_stride, _1{}, a.q_head_stride,
                  vl ? rows_q * a.q_row_stride : a.q_batch_stride));
  auto k_layout = make_layout(
      make_shape(int32_t(rows_k), int32_t(D), int32_t(a.num_heads_k), int32_t(tma_batch)),
      make_stride(a.k_row_stride, _1{}, a.k_head_stride,
                  vl ? rows_k * a.k_row_stride : a.k_batch_stride));
  static_assert(std::is_same_v<decltype(q_layout), GmemLayout>);

  BwdKernelParams<Traits> kp;
  kp.tma_q = make_tma_copy(SM90_TMA_LOAD{},
                           make_tensor(make_gmem_ptr(static_cast<Element const*>(a.q)), q_layout),
                           take<0, 2>(typename Traits::SmemLayoutQ{}),
                           Shape<Int<kBlockM>, Int<D>>{}, _1{});
  kp.tma_do = make_tma_copy(
      SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(a.dout)), q_layout),
      take<0, 2>(typename Traits::SmemLayoutdO{}), Shape<Int<kBlockM>, Int<D>>{}, _1{});
  kp.tma_k = make_tma_copy(SM90_TMA_LOAD{},
                           make_tensor(make_gmem_ptr(static_cast<Element const*>(a.k)), k_layout),
                           typename Traits::SmemLayoutK{}, Shape<Int<kBlockN>, Int<D>>{}, _1{});
  kp.tma_v = make_tma_copy(SM90_TMA_LOAD{},
                           make_tensor(make_gmem_ptr(static_cast<Element const*>(a.v)), k_layout),
                           typename Traits::SmemLayoutV{}, Shape<Int<kBlockN>, Int<D>>{}, _1{});
  kp.dk = a.dk;
  kp.dv = a.dv;
  kp.k_batch_stride = vl ? 0 : a.k_batch_stride;  // varlen: rows from k_start (BwdSeq)
  kp.k_row_stride = a.k_row_stride;
  kp.k_head_stride = a.k_head_stride;
  void* ws = a.workspace;
  kp.dq_accum = w.at<float>(ws, w.off_dq);
  kp.dk_accum = w.at<float>(ws, w.off_dk);
  kp.dv_accum = w.at<float>(ws, w.off_dv);
  kp.lse2 = w.at<float>(ws, w.off_lse2);
  kp.dpsum = w.at<float>(ws, w.off_dpsum);
  kp.sem_dq = w.at<int>(ws, w.off_sem_dq);
  kp.sem_dkv = w.at<int>(ws, w.off_sem_dkv);
  kp.dq_state = w.at<int>(ws, w.off_dq_state);
  kp.rows_q = int(rows_q);
  kp.rows_k = int(rows_k);
  kp.tma_batch = int(tma_batch);
  kp.sq_pad = int(w.sq_pad);
  kp.sk_pad = int(w.sk_pad);
  kp.num_m = num_m;
  // seqlen_k is the longest sequence's under varlen (params.h).
  int num_n = int((a.seqlen_k + kBlockN - 1) / kBlockN);
  kp.num_n = num_n;
  kp.num_heads = int(a.num_heads);
  kp.num_heads_k = int(a.num_heads_k);
  kp.h_h_k_ratio = int(a.h_h_k_ratio);
  set_score_scale(a, &kp);
  kp.softmax_scale = a.softmax_scale;
  kp.mask = kernel_mask(a);
  kp.deterministic = a.deterministic;
  kp.cu_q = vl ? a.cu_seqlens_q : nullptr;
  kp.cu_k = vl ? a.cu_seqlens_k : nullptr;
  kp.used_q = vl ? a.seqused_q : nullptr;
  kp.used_k = vl ? a.seqused_k : nullptr;
  kp.seq_order = w.at<int32_t>(ws, w.off_seq_order);
  kp.dq_done = w.at<int>(ws, w.off_dq_done);
  kp.dq_started = kp.dq_done + (w.n_dq_done - 1);
  int const fuse_env = bwd_dq_fuse_rows_env();
  kp.dq_fuse_rows = !kBwdDqFuse<Traits> ? 0 : fuse_env >= 0 ? fuse_env : JAX_FA3_BWD_DQ_FUSE_ROWS;
  kp.dq = a.dq;
  kp.q_batch_stride = vl ? 0 : a.q_batch_stride;
  kp.q_row_stride = a.q_row_stride;
  kp.q_head_stride = a.q_head_stride;
  int64_t const nb = vl ? a.num_seqs : a.batch;

  if (a.num_heads > 65535 || nb > 65535) return "jax_fa3 hopper bwd: grid too large";
  if (num_n * a.num_heads * nb > INT32_MAX) return "jax_fa3 hopper bwd: grid too large";
  kp.det_groups =
      a.deterministic ? bwd_det_groups(int((a.seqlen_q + kBlockM - 1) / kBlockM),
                                       a.num_heads * nb) : 1;
  // Two instantiations: the dense one keeps its addressing (kernel_bwd.h).
  auto kernel = vl ? bwd_kernel<Traits, true> : bwd_kernel<Traits, false>;
  constexpr int smem = Traits::kSmemBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) {
    return std::string("jax_fa3 hopper bwd: cudaFuncSetAttribute failed: ") +
           cudaGetErrorString(err);
  }
  // blockIdx.x is fastest, then head: the deterministic semaphores wait
  // only on CTAs with a lower linear index (for dQ, higher n_block of the
  // same (batch, head); for GQA dK/dV, lower head of the same (batch, kv
  // head, n_block): cta_coords keeps both), which the hardware has launched
  // before.
  dim3 grid(num_n, unsigned(a.num_heads), unsigned(nb));
#ifdef JAX_FA3_BWD_TRACE
  kp.trace = bwd_trace_buffer(grid, stream);
#endif
  // The default mode stages dQ in one buffer and launches without the
  // second (the last member): with both allocated and used it ran 0.96-0.98x
  // (H100 harness, d128), this way 1.00-1.01x the one-buffer kernel.
  int const smem_launch =
      bwd_dq_two_bufs<Traits>(a.deterministic) ? smem : Traits::kSmemBytesOneBuf;
  kernel<<<grid, Traits::kNumThreads, smem_launch, stream>>>(kp);
  err = cudaGetLastError();
  if (err != cudaSuccess) {
    return std::string("jax_fa3 hopper bwd: launch failed: ") + cudaGetErrorString(err);
  }
#ifdef JAX_FA3_BWD_TRACE
  bwd_trace_dump(kp.trace, grid, ".d" + std::to_string(D) + "." + std::to_string(a.seqlen_q) +
                                     (a.causal ? "c" : ""), stream);
#endif
  // dQ of the heads the main kernel did not convert (bwd_dq.h).
  bwd_dq_convert_kernel<Traits>
      <<<dim3(unsigned(num_m), unsigned(a.num_heads), unsigned(w.ws_batch)),
         Traits::kNumMmaThreads, 0, stream>>>(
          kp.dq_accum, static_cast<Element*>(a.dq), int(a.seqlen_q), int(a.num_heads), num_m,
          a.q_batch_stride, a.q_row_stride, a.q_head_stride, a.softmax_scale,
          vl ? varlen_side_q(a) : VarlenSide{}, int(a.num_seqs), kp.dq_done, kp.dq_state);
  err = cudaGetLastError();
  if (err != cudaSuccess) {
    return std::string("jax_fa3 hopper bwd: dq convert launch failed: ") +
           cudaGetErrorString(err);
  }
  return "";
}

template <int D, class Element>
std::string launch_bwd(const AttnParams& a, const BwdWorkspace& w, cudaStream_t stream) {
  return launch_bwd_impl<BwdTraits<D, Element>>(a, w, stream);
}

}  // namespace jax_fa3::hopper

#endif  // JAX_FA3_BWD_LAYOUT_ONLY
