// FA3-style backward kernel (JAX_FA3_BWD).
//
//   warpgroup 0  : producer. Warp 0 lane 0 issues TMA: K/V of this CTA's
//                  key block once (K first; V after the first Q, on its own
//                  barrier), then Q/dO blocks m_lo..m_hi-1 through two
//                  PipelineTmaAsync rings of 2 stages (dO: 1 at d256), with
//                  lse2/dPsum when the scores are transposed. Warp 1 is the dQ writer
//                  (epilogue_bwd.h BwdDqWriter): bulk reduce-adds of the
//                  consumers' dQ partials, and the deterministic ordering;
//                  warp 2 a second one (deterministic d96 / d128 /
//                  d192: bwd_dq_two_writers).
//   warpgroups 1-2: consumers. Per query block:
//                  S = Q K^T, dP = dO V^T                    (WGMMA ss)
//                  P = exp2(S*scale_log2 - lse2)  (softcap: S capped first)
//                  dS = P * (dP - dPsum)  (* (1 - tanh^2) with softcap)
//                  P, dS -> smem (input dtype)
//                  dV += P^T dO, dK += dS^T Q                (WGMMA ss, A^T)
//                  dQ_partial = dS K -> smem -> the dQ writer, which adds it
//                  into the fp32 workspace (bwd_dq.h); d256's consumers add
//                  their dQ chunks themselves (red.v4)
//                  dK, dV: through smem (over K / V) -> output (dK scaled) or,
//                  for GQA, fp32 bulk reduce-adds (atomics when split along
//                  D) into the workspace (deterministic: head order).
//                  d <= 128 computes S^T and dP^T instead, with P^T and dS^T
//                  feeding dV/dK from registers (consumer_bwd_swap.h); this
//                  file's BwdConsumer serves d192/d256 (and any d with
//                  -DJAX_FA3_BWD_SWAP=0). d256 (64 x 80 tiles) computes
//                  dV^T, dK^T and dQ^T instead (kDkvSwap, mainloop_bwd.h).
//
// Grid: (num_n_blocks, num_heads, batch), one CTA per key block and query
// head; not persistent. Varlen (bwd_kernel<Traits, true>): batch =
// sequences and num_n_blocks that of the longest; each CTA takes its
// sequence's lengths, mask and offsets (BwdKernelParams::seq) and exits at
// once past its sequence's keys.
// dQ of sequences up to p.dq_fuse_rows query rows: converted into the
// output by the last CTA of each (sequence, head) (bwd_dq_fuse.h); the
// others' by bwd_dq_convert_kernel after this kernel.
#pragma once

#include "cc/hopper/kernel_traits.h"  // first: extended WGMMA shapes

#include <cute/atom/copy_atom.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "cc/hopper/bwd_dq.h"
#include "cc/hopper/bwd_dq_fuse.h"
#include "cc/hopper/consumer_bwd_swap.h"
#include "cc/hopper/epilogue_bwd.h"
#include "cc/hopper/mainloop_bwd.h"
#include "cc/hopper/softmax.h"

namespace jax_fa3::hopper {

using namespace cute;

// kVarlen: the CTA's mask and scratch rows come from its sequence (BwdSeq,
// read from smem at each use); tiles reaching past the sequence hold the next
// one's rows, so masked and out-of-sequence entries get P = dS = 0 set. The
// dense instantiation keeps the params' mask and its register/constant
// addressing: a shared runtime path cost 2-6% at d64/d128 (H100).
template <class Traits, bool kVarlen>
struct BwdConsumer {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::MainloopPipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, D = Traits::D;

  __device__ __forceinline__ static void run(BwdKernelParams<Traits> const& p,
                                             typename Traits::SharedStorage& ss,
                                             Pipeline& pipe_q,
                                             typename Traits::PipelinedO& pipe_do, int n_block,
                                             int head, int batch, int m_lo, int m_hi,
                                             int tid) {
    constexpr bool kSwapKV = Traits::kDkvSwap;
    typename Traits::TiledMmaSdP mma_sdp;
    typename Traits::TiledMmadKV mma_dkv;
    typename Traits::TiledMmadQ mma_dq;
    auto thr_sdp = mma_sdp.get_thread_slice(tid);
    auto thr_dkv = mma_dkv.get_thread_slice(tid);
    auto thr_dq = mma_dq.get_thread_slice(tid);

    Tensor tSrQ = thr_sdp.make_fragment_A(thr_sdp.partition_A(ss.q()));     // (MMA, M, K, stage)
    Tensor tSrK = thr_sdp.make_fragment_B(thr_sdp.partition_B(ss.k()));
    Tensor tdPrdO = thr_sdp.make_fragment_A(thr_sdp.partition_A(ss.dO()));  // (MMA, M, K, stage)
    Tensor tdPrV = thr_sdp.make_fragment_B(thr_sdp.partition_B(ss.v()));
    // dV += P^T dO and dK += dS^T Q, or swapped (kDkvSwap) dV^T += dO^T P
    // and dK^T += Q^T dS: the same smem views, as the other operand.
    Tensor tdVrPt = bwd_operand<!kSwapKV>(thr_dkv, ss.pt());
    Tensor tdVrdOt = bwd_operand<kSwapKV>(thr_dkv, ss.dOt());  // (.., dO stage)
    Tensor tdKrdSt = bwd_operand<!kSwapKV>(thr_dkv, ss.dst());  // (.., dS stage)
    Tensor tdKrQt = bwd_operand<kSwapKV>(thr_dkv, ss.qt());     // (.., stage)
    auto issue_kv = [&](auto const& pt_or_dst, auto const& dot_or_qt, auto& acc) {
      if constexpr (kSwapKV) wgmma_issue<false>(mma_dkv, dot_or_qt, pt_or_dst, acc);
      else wgmma_issue<false>(mma_dkv, pt_or_dst, dot_or_qt, acc);
    };
    Tensor tdQrdS = bwd_dq_ds<Traits>(thr_dq, ss);  // (.., dS stage)
    Tensor tdQrKt = bwd_dq_kt<Traits>(thr_dq, ss);  // (.., chunk)

    // P / dS stores with stmatrix (four 8x8 tiles per instruction, two at
    // d256, from the accumulator layout into the tiles): 8x (4x) fewer
    // shared-memory store instructions than one 16-bit store per element.
    auto stsm = make_tiled_copy_C(Copy_Atom<typename Traits::StsmAtom, Element>{}, mma_sdp);
    auto thr_stsm = stsm.get_thread_slice(tid);
    Tensor tPsP = thr_stsm.partition_D(ss.p());

    Tensor tdVrdV = partition_fragment_C(mma_dkv, typename Traits::ShapedKV{});
    Tensor tdKrdK = partition_fragment_C(mma_dkv, typename Traits::ShapedKV{});
    clear(tdVrdV);
    clear(tdKrdK);

    Tensor cS = thr_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
    Tensor cS_rc = make_tensor(cS.data(), acc_rowcol(cS.layout()));
    constexpr int kRows = decltype(size<0>(cS_rc))::value;
    constexpr int kCols = decltype(size<1>(cS_rc))::value;

    FwdMask const& mask = bwd_cta_mask<kVarlen>(p, ss);
    int const bh = batch * p.num_heads + head;  // dense scratch
    int const n0 = n_block * kBlockN;
    bool const cap = p.softcap != 0.f;

    // lse2 / dPsum of this thread's rows: loaded at the top of each step,
    // before the pipeline wait and the S/dP GEMMs, so their latency hides
    // behind both (ncu: long-scoreboard stalls led when they sat between
    // the GEMM issue and the softmax; loading one step ahead spilled).
    float lse2[kRows], dsum[kRows];

    int const wg = tid / 128;

    if (m_hi > m_lo) ss.barrier_k.wait(0);
    if (tid == 0) JAX_FA3_BWD_TRACE_AT(p, 2);
    PipelineState state;
    typename Traits::PipelineStatedO state_do;
    for (int m = m_lo; m < m_hi; ++m) {
      Tensor tSrS = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
      Tensor tdPrdP = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
      Tensor s_rc = make_tensor(tSrS.data(), acc_rowcol(tSrS.layout()));
      Tensor dp_rc = make_tensor(tdPrdP.data(), acc_rowcol(tdPrdP.layout()));

      int const row0 = m * kBlockM;
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        // < the (sequence's) padded rows: always in bounds
        int64_t row = row0 + int(get<0>(cS_rc(r, 0)));
        if constexpr (kVarlen) row += ss.seq.ws_row;
        else row += int64_t(bh) * p.sq_pad;
        lse2[r] = p.lse2[row];
        dsum[r] = p.dpsum[row];
      }
      pipe_q.consumer_wait(state);
      wgmma_issue<true>(mma_sdp, tSrQ(_, _, _, state.index()), tSrK, tSrS);
      pipe_do.consumer_wait(state_do);
      if (m == m_lo) ss.barrier_v.wait(0);
      wgmma_issue<true>(mma_sdp, tdPrdO(_, _, _, state_do.index()), tdPrV, tdPrdP);


      // Step order, so that the tensor cores always have queued work: S, dP |
      // softmax (dP runs) | P -> smem, dV | dS (dV runs) | dS -> smem, dQ, dK
      // | dQ out (dK runs).
      int const ds_stage = Traits::kDsStages == 1 ? 0 : (m - m_lo) & 1;
      warpgroup_wait<1>();  // S done
      // softcap: s <- cap * tanh(s * scale / cap) (scale_log2 is then log2 e).
      if (cap) {
        CUTE_UNROLL
        for (int i = 0; i < size(tSrS); ++i) tSrS(i) = p.softcap * tanh_approx(tSrS(i) * p.softcap_pre);
      }
      // Not full: a mask cuts the tile, or (varlen) it reaches past the
      // sequence's last query row, into the next sequence's rows. (Dense rows
      // past seqlen_q are TMA's zeros, with lse2 = +inf: P = dS = 0.)
      bool full = mask.template block_is_full<kBlockM, kBlockN>(m, n_block);
      if constexpr (kVarlen) full = full && row0 + kBlockM <= mask.seqlen_q;
      if (!full) {
        mask.apply(s_rc, cS_rc, row0, n0);
        if constexpr (kVarlen) bwd_mask_rows<false>(s_rc, cS_rc, row0, mask.seqlen_q);
      }
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        CUTE_UNROLL
        for (int c = 0; c < kCols; ++c) s_rc(r, c) = exp2f(s_rc(r, c) * p.scale_log2 - lse2[r]);
      }
      // Masked entries (score -inf): P = 0 exactly, set rather than computed,
      // whatever the neighbour rows of a varlen tile hold; dS below likewise.
      if (kVarlen && !full) {
        CUTE_UNROLL
        for (int i = 0; i < size(tSrS); ++i) {
          if (!(tSrS(i) > 0.f)) tSrS(i) = 0.f;
        }
      }

      // P -> smem. Split D: every consumer's previous GEMMs must be done with
      // sP/sdS first.
      if constexpr (!Traits::kPLocal) {
        cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kPdSEmpty));
      }
      {
        Tensor rP = make_tensor_like<Element>(tSrS);
        CUTE_UNROLL
        for (int i = 0; i < size(tSrS); ++i) rP(i) = static_cast<Element>(tSrS(i));
        cute::copy(stsm, thr_stsm.retile_S(rP), tPsP);
      }
      cutlass::arch::fence_view_async_shared();
      if constexpr (Traits::kPLocal) {
        cutlass::arch::NamedBarrier::sync(128, uint32_t(BwdBarrier::kPFull) + wg);
      } else {
        cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kPFull));
      }
      issue_kv(tdVrPt, tdVrdOt(_, _, _, state_do.index()), tdVrdV);

      warpgroup_wait<1>();  // dP done (dV may still run)
      // Softcap tested once, outside the unrolled loop (consumer_bwd_swap.h
      // says why).
      auto ds_loop = [&](auto cap_c) {
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          CUTE_UNROLL
          for (int c = 0; c < kCols; ++c) {
            float pv = s_rc(r, c);
            float ds = bwd_ds<decltype(cap_c)::value>(pv, dp_rc(r, c), dsum[r], lse2[r], p.softcap);
            if (kVarlen && !full && !(pv > 0.f)) ds = 0.f;
            dp_rc(r, c) = ds;
          }
        }
      };
      if (cap) ds_loop(cute::true_type{});
      else ds_loop(cute::false_type{});
      // dS -> smem. Its buffer was last read by the GEMMs of two steps ago
      // (kDsStages 2), which every consumer finished before the previous
      // step's kDsFull; or (split D) before this step's kPdSEmpty.
      {
        Tensor rdS = make_tensor_like<Element>(tdPrdP);
        CUTE_UNROLL
        for (int i = 0; i < size(tdPrdP); ++i) rdS(i) = static_cast<Element>(tdPrdP(i));
        cute::copy(stsm, thr_stsm.retile_S(rdS), thr_stsm.partition_D(ss.ds()(_, _, ds_stage)));
      }
      cutlass::arch::fence_view_async_shared();
      cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kDsFull));

      Tensor tdQrdQ = partition_fragment_C(mma_dq, typename Traits::ShapedQ{});
      bwd_dq_issue<Traits>(mma_dq, tdQrdS(_, _, _, ds_stage), tdQrKt, 0, tdQrdQ);
      issue_kv(tdKrdSt(_, _, _, ds_stage), tdKrQt(_, _, _, state.index()), tdKrdK);

      // One dO stage (kDkvSwap): released as soon as dV is done, so that the
      // next block's load overlaps dQ and dK.
      bwd_dq_out<Traits>(ss, mma_dq, tdQrdS(_, _, _, ds_stage), tdQrKt, tdQrdQ, tid,
                         kBwdDqRed<Traits> ? bwd_dq_block<Traits, kVarlen>(p, ss, bh, m) : nullptr,
                         p.deterministic, m - m_lo, [&] {
                           if constexpr (Traits::kStagesdO == 1) pipe_do.consumer_release(state_do);
                         });
      warpgroup_wait<0>();  // dK done: Q (and dO, if not released yet) may be overwritten
      pipe_q.consumer_release(state);
      if constexpr (Traits::kStagesdO != 1) pipe_do.consumer_release(state_do);
      ++state;
      ++state_do;
      if (tid == 0 && m == m_lo) JAX_FA3_BWD_TRACE_AT(p, 3);
    }

    if (tid == 0) JAX_FA3_BWD_TRACE_AT(p, 4);
    bwd_dkv_epilogue<Traits, kVarlen>(p, ss, thr_dkv, tdKrdK, tdVrdV, batch, head, n_block,
                                      m_hi > m_lo, tid);
    if (tid == 0) JAX_FA3_BWD_TRACE_AT(p, 5);
  }
};

// The Q and dO rings: the same parameters, their own stage counts (P).
template <class Traits, class P>
__device__ __forceinline__ P bwd_make_pipe(typename P::SharedStorage& storage, int warp_group) {
  typename P::Params pp;
  pp.transaction_bytes = Traits::kStageBytesQ;
  pp.role = warp_group == 0 ? P::ThreadCategory::Producer : P::ThreadCategory::Consumer;
  pp.is_leader = threadIdx.x == 0;
  pp.num_consumers = Traits::kNumMmaThreads;
  return P(storage, pp, Shape<_1, _1, _1>{});
}

template <class Traits, bool kVarlen>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    bwd_kernel(CUTE_GRID_CONSTANT BwdKernelParams<Traits> const p) {
  using Pipeline = typename Traits::MainloopPipeline;
  using SharedStorage = typename Traits::SharedStorage;
  extern __shared__ __align__(1024) char smem_raw[];
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(smem_raw);

  int const warp_group = threadIdx.x / 128;
  int const warp_idx = cutlass::canonical_warp_idx_sync();
  int const lane = threadIdx.x % 32;
  int n_block, head, batch;
  p.cta_coords(&n_block, &head, &batch);
  if constexpr (kVarlen) {
    if (p.seq_order != nullptr) batch = p.seq_order[batch];
  }
  // Varlen: the grid covers the longest sequence; the others' surplus key
  // blocks have nothing to do (no other CTA waits on them).
  BwdSeq const sq = p.template seq<kVarlen>(batch, head);
  if (kVarlen && n_block * Traits::kBlockN >= sq.mask.seqlen_k) return;
  // The fused dQ convert's count of started CTAs (bwd_dq_fuse.h).
  if (kBwdDqFuse<Traits> && threadIdx.x == 32 && p.dq_fuse_rows > 0) atomicAdd(p.dq_started, 1);
  if (threadIdx.x == 128) {
    JAX_FA3_BWD_TRACE_AT(p, 7);
    JAX_FA3_BWD_TRACE_AT(p, 1);
    JAX_FA3_BWD_TRACE_AT(p, 0);
  }

  if (warp_idx == 0 && lane == 0) {
    cute::prefetch_tma_descriptor(p.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(p.tma_do.get_tma_descriptor());
    cute::prefetch_tma_descriptor(p.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(p.tma_v.get_tma_descriptor());
    ss.barrier_k.init(1);
    ss.barrier_v.init(1);
    if constexpr (kBwdDqTwoWriters<Traits>) {
      for (int b = 0; b < 2; ++b) {
        for (int w = 0; w < 2; ++w) {
          ss.dq_full[b][w].init(4);  // one arrival per consumer warp
          ss.dq_empty[b][w].init(1);
        }
      }
    }
    if constexpr (kVarlen) ss.seq = sq;
    ss.dq_done.init(bwd_dq_writers<Traits>(p.deterministic));
    if constexpr (kBwdDqFuse<Traits>) {
      for (int s = 0; s < BwdDqCvtStages<Traits>::kCount; ++s) ss.dq_cvt[s].init(1);
    }
  }
  auto pipe_q = bwd_make_pipe<Traits, Pipeline>(ss.pipeline_q, warp_group);
  auto pipe_do = bwd_make_pipe<Traits, typename Traits::PipelinedO>(ss.pipeline_do, warp_group);
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  int m_lo, m_hi;
  BwdKernelParams<Traits>::m_range(sq.mask, n_block, &m_lo, &m_hi);
  if (warp_group == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (warp_idx == 0) {
      BwdProducer<Traits>::run(p, ss, pipe_q, pipe_do, n_block, head, sq, m_lo, m_hi,
                               lane == 0);
    } else if (warp_idx <= BwdDqWriter<Traits, kVarlen>::kWriters) {
      int const writer = warp_idx - 1;
      BwdDqWriter<Traits, kVarlen>::run(p, ss, n_block, batch * p.num_heads + head, m_lo, m_hi,
                                        lane, writer);
      if (warp_idx == 1 && lane == 0) JAX_FA3_BWD_TRACE_AT(p, 6);
      FwdMask const& mask = bwd_cta_mask<kVarlen>(p, ss);
      if (bwd_dq_fused(p, mask) && lane == 0 && writer < bwd_dq_writers<Traits>(p.deterministic)) {
        bwd_dq_fuse_signal<Traits>(p, ss, mask, batch * p.num_heads + head, writer);
      }
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    using Consumer = std::conditional_t<Traits::kSwapSdP, BwdConsumerSwap<Traits, kVarlen>,
                                        BwdConsumer<Traits, kVarlen>>;
    int const tid = int(threadIdx.x) - 128;
    Consumer::run(p, ss, pipe_q, pipe_do, n_block, head, batch, m_lo, m_hi, tid);
    if constexpr (kBwdDqFuse<Traits>) {
      if (bwd_dq_fused(p, bwd_cta_mask<kVarlen>(p, ss)))
        bwd_dq_fuse_convert<Traits, kVarlen>(p, ss, batch, head, tid);
    }
  }
}

}  // namespace jax_fa3::hopper
