// Backward consumer for d <= 128 with the transposed scores (FA3's
// SdP_swapAB, BwdTileConfig::kSwapSdP): per query block m
//   S^T = K Q^T, dP^T = V dO^T         (WGMMA ss; warpgroup w: keys 64w..)
//   P^T = exp2(S^T*scale_log2 - lse2)  (lse2, dPsum per column, from smem)
//   dV += P^T dO                       (WGMMA rs: P^T from registers)
//   dS^T = P^T * (dP^T - dPsum)  -> smem as dS (transposing stmatrix)
//   dQ = dS K (ss, bwd_dq_out), dK += dS^T Q (rs)
// Against kernel_bwd.h's BwdConsumer (S = Q K^T): P never goes through smem
// (no store, fence or barrier for it) and dV/dK read one operand from smem
// instead of two. A warpgroup's P^T/dS^T rows are exactly the keys of its
// dV/dK rows, which is what makes the register operand possible.
#pragma once

#include "cc/hopper/kernel_traits.h"  // first: extended WGMMA shapes

#include <cute/atom/copy_atom.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "cc/hopper/epilogue_bwd.h"
#include "cc/hopper/mainloop_bwd.h"
#include "cc/hopper/softmax.h"

namespace jax_fa3::hopper {

using namespace cute;

template <class Traits, bool kVarlen>
struct BwdConsumerSwap {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::MainloopPipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, D = Traits::D;
  static_assert(Traits::kSwapSdP && Traits::kDsStages == 2 && Traits::kDqChunks == 1);

  __device__ __forceinline__ static void run(BwdKernelParams<Traits> const& p,
                                             typename Traits::SharedStorage& ss,
                                             Pipeline& pipe_q, Pipeline& pipe_do, int n_block,
                                             int head, int batch, int m_lo, int m_hi,
                                             int tid) {
    typename Traits::TiledMmaSdP mma_sdp;
    typename Traits::TiledMmadKV mma_dkv;
    typename Traits::TiledMmadQ mma_dq;
    auto thr_sdp = mma_sdp.get_thread_slice(tid);
    auto thr_dkv = mma_dkv.get_thread_slice(tid);
    auto thr_dq = mma_dq.get_thread_slice(tid);

    Tensor tSrK = thr_sdp.make_fragment_A(thr_sdp.partition_A(ss.k()));
    Tensor tSrQ = thr_sdp.make_fragment_B(thr_sdp.partition_B(ss.q()));     // (.., stage)
    Tensor tdPrV = thr_sdp.make_fragment_A(thr_sdp.partition_A(ss.v()));
    Tensor tdPrdO = thr_sdp.make_fragment_B(thr_sdp.partition_B(ss.dO()));  // (.., stage)
    Tensor tdVrdOt = thr_dkv.make_fragment_B(thr_dkv.partition_B(ss.dOt()));  // (.., stage)
    Tensor tdKrQt = thr_dkv.make_fragment_B(thr_dkv.partition_B(ss.qt()));    // (.., stage)
    Tensor tdQrdS = bwd_dq_ds<Traits>(thr_dq, ss);  // (.., dS stage)
    Tensor tdQrKt = bwd_dq_kt<Traits>(thr_dq, ss);  // (.., 1 chunk)

    // dS^T -> smem as dS (queries, keys): the transposing stmatrix writes the
    // accumulator's 8x8 tiles with the keys contiguous.
    auto stsm = make_tiled_copy_C(Copy_Atom<SM90_U16x8_STSM_T, Element>{}, mma_sdp);
    auto thr_stsm = stsm.get_thread_slice(tid);
    Tensor tdSsdS = thr_stsm.partition_D(ss.dst());  // (.., dS stage)

    Tensor tdVrdV = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<D>>{});
    Tensor tdKrdK = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<D>>{});
    clear(tdVrdV);
    clear(tdKrdK);

    // (key, query) of each accumulator element, in (row, col) form: rows are
    // keys, columns queries.
    Tensor cS = thr_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kBlockM>>{}));
    Tensor cS_rc = make_tensor(cS.data(), acc_rowcol(cS.layout()));
    constexpr int kRows = decltype(size<0>(cS_rc))::value;
    constexpr int kCols = decltype(size<1>(cS_rc))::value;

    FwdMask const& mask = bwd_cta_mask<kVarlen>(p, ss);
    int const n0 = n_block * kBlockN;
    bool const cap = p.softcap != 0.f;

    if (m_hi > m_lo) ss.barrier_k.wait(0);
    if (tid == 0) JAX_FA3_BWD_TRACE_AT(p, 2);
    PipelineState state;
    for (int m = m_lo; m < m_hi; ++m) {
      Tensor tSrS = partition_fragment_C(mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
      Tensor tdPrdP = partition_fragment_C(mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
      Tensor s_rc = make_tensor(tSrS.data(), acc_rowcol(tSrS.layout()));
      Tensor dp_rc = make_tensor(tdPrdP.data(), acc_rowcol(tdPrdP.layout()));
      int const row0 = m * kBlockM;
      int const stage = state.index();
      float const* s_lse2 = ss.smem_lse2.data() + stage * kBlockM;
      float const* s_dsum = ss.smem_dpsum.data() + stage * kBlockM;

      pipe_q.consumer_wait(state);
      wgmma_issue<true>(mma_sdp, tSrK, tSrQ(_, _, _, stage), tSrS);
      pipe_do.consumer_wait(state);
      if (m == m_lo) ss.barrier_v.wait(0);
      wgmma_issue<true>(mma_sdp, tdPrV, tdPrdO(_, _, _, stage), tdPrdP);

      int const ds_stage = (m - m_lo) & 1;
      warpgroup_wait<1>();  // S^T done (dP^T runs)
      if (cap) {
        CUTE_UNROLL
        for (int i = 0; i < size(tSrS); ++i) tSrS(i) = p.softcap * tanh_approx(tSrS(i) * p.softcap_pre);
      }
      // Not full: a mask cuts the tile, or (varlen) it reaches past the
      // sequence's last query row into the next sequence's rows. (Dense rows
      // past seqlen_q are TMA's zeros with lse2 = +inf: P = dS = 0.)
      bool full = mask.template block_is_full<kBlockM, kBlockN>(m, n_block);
      if constexpr (kVarlen) full = full && row0 + kBlockM <= mask.seqlen_q;
      if (!full) {
        mask.apply_transposed(s_rc, cS_rc, row0, n0);
        if constexpr (kVarlen) bwd_mask_rows<true>(s_rc, cS_rc, row0, mask.seqlen_q);
      }
      CUTE_UNROLL
      for (int c = 0; c < kCols; ++c) {
        float const l = s_lse2[int(get<1>(cS_rc(0, c)))];
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) s_rc(r, c) = exp2f(s_rc(r, c) * p.scale_log2 - l);
      }
      // Masked entries (score -inf): P = 0 exactly, set rather than computed,
      // whatever the neighbour rows of a varlen tile hold; dS below likewise.
      if (kVarlen && !full) {
        CUTE_UNROLL
        for (int i = 0; i < size(tSrS); ++i) {
          if (!(tSrS(i) > 0.f)) tSrS(i) = 0.f;
        }
      }

      // dV += P^T dO with P^T from registers: the accumulator's (key, query)
      // pairs are the A operand's (row, k) pairs.
      Tensor rP = make_tensor_like<Element>(tSrS);
      CUTE_UNROLL
      for (int i = 0; i < size(tSrS); ++i) rP(i) = static_cast<Element>(tSrS(i));
      Tensor tdVrP = make_tensor(rP.data(), acc_to_a_operand(rP.layout()));
      wgmma_issue<false>(mma_dkv, tdVrP, tdVrdOt(_, _, _, stage), tdVrdV);

      warpgroup_wait<1>();  // dP^T done (dV may still run)
      // The softcap test sits outside the unrolled loop: inside it, each
      // element's skipped softcap code lay inline in the hot path (64
      // branches per step at d64, and instruction-cache stalls).
      auto ds_loop = [&](auto cap_c) {
        CUTE_UNROLL
        for (int c = 0; c < kCols; ++c) {
          int const q = int(get<1>(cS_rc(0, c)));
          float const dsum = s_dsum[q];
          CUTE_UNROLL
          for (int r = 0; r < kRows; ++r) {
            float pv = s_rc(r, c);
            float ds = bwd_ds<decltype(cap_c)::value>(pv, dp_rc(r, c), dsum, s_lse2[q], p.softcap);
            if (kVarlen && !full && !(pv > 0.f)) ds = 0.f;
            dp_rc(r, c) = ds;
          }
        }
      };
      if (cap) ds_loop(cute::true_type{});
      else ds_loop(cute::false_type{});
      Tensor rdS = make_tensor_like<Element>(tdPrdP);
      CUTE_UNROLL
      for (int i = 0; i < size(tdPrdP); ++i) rdS(i) = static_cast<Element>(tdPrdP(i));
      // dS -> smem. Its buffer was last read by the dQ GEMMs of two steps
      // ago, which every consumer finished before the previous kDsFull.
      cute::copy(stsm, thr_stsm.retile_S(rdS), tdSsdS(_, _, _, ds_stage));
      cutlass::arch::fence_view_async_shared();
      cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kDsFull));

      Tensor tdQrdQ = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<D>>{});
      wgmma_issue<true>(mma_dq, tdQrdS(_, _, _, ds_stage), tdQrKt(_, _, _, 0), tdQrdQ);
      Tensor tdKrdS = make_tensor(rdS.data(), acc_to_a_operand(rdS.layout()));
      wgmma_issue<false>(mma_dkv, tdKrdS, tdKrQt(_, _, _, stage), tdKrdK);

      bwd_dq_out<Traits>(ss, mma_dq, tdQrdS(_, _, _, ds_stage), tdQrKt, tdQrdQ, tid, nullptr,
                         p.deterministic, m - m_lo, [] {});
      warpgroup_wait<0>();  // dK done: Q, dO (and their lse2, dPsum) may be overwritten
      pipe_q.consumer_release(state);
      pipe_do.consumer_release(state);
      ++state;
      if (tid == 0 && m == m_lo) JAX_FA3_BWD_TRACE_AT(p, 3);
    }
    if (tid == 0) JAX_FA3_BWD_TRACE_AT(p, 4);
    bwd_dkv_epilogue<Traits, kVarlen>(p, ss, thr_dkv, tdKrdK, tdVrdV, batch, head, n_block,
                                      m_hi > m_lo, tid);
    if (tid == 0) JAX_FA3_BWD_TRACE_AT(p, 5);
  }
};

}  // namespace jax_fa3::hopper
