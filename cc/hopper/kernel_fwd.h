// The warp-specialized FlashAttention-3 forward kernel (FA3 paper §3.1-3.2).
//
//   warpgroup 0  : producer. setmaxnreg down (24-40 registers); warp 0 walks
//                  the tiles, its lane 0 issues every TMA load (Q per tile,
//                  K/V blocks through two PipelineTmaAsync rings).
//   warpgroups 1..: consumers, 64 query rows each (2, or 3 for d=64
//                  without mask). setmaxnreg up (160-240 registers).
//                  S = QK^T (WGMMA, smem x smem), softcap, mask on boundary
//                  blocks, online softmax, O += PV (WGMMA, registers x smem),
//                  epilogue straight from registers.
// Scheduling (kernel_traits.h decides per config): intra-warpgroup overlap
// (next S issued with the current P*V; softmax runs under the P*V) and
// pingpong between the consumer warpgroups through named barriers.
//
// Persistent: gridDim.x CTAs walk a static tile list (tile_scheduler.h).
// kVarlen: packed sequences (params.h); tiles come from VarlenTileWalker,
// and each carries its sequence's mask and row offsets.
#pragma once

// First: it enables CuTe's extended WGMMA shapes before any CuTe header.
#include "cc/hopper/kernel_traits.h"

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "cc/hopper/epilogue_fwd.h"
#include "cc/hopper/mainloop_fwd.h"
#include "cc/hopper/mask_fwd.h"
#include "cc/hopper/softmax.h"
#include "cc/hopper/tile_scheduler.h"

namespace jax_fa3::hopper {

using namespace cute;

template <class Traits>
struct FwdConsumer {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::MainloopPipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kD = Traits::kHeadDim;

  // Pingpong between the consumer warpgroups (FA3 §3.2): before issuing its
  // WGMMAs a warpgroup waits for its turn; after issuing, it hands the turn
  // to the next one (a ring for 3 warpgroups). Each barrier counts 256
  // threads: 128 syncing (the warpgroup whose turn it is) + 128 arriving (the
  // previous one). The kernel's prologue gives warpgroup 0 the first turn.
  static constexpr int kNumWG = Traits::kNumMmaWarpGroups;
  __device__ __forceinline__ static void warp_sched_wait(int wg) {
    if constexpr (Traits::kPingpong) {
      cutlass::arch::NamedBarrier::sync(256, uint32_t(FwdBarrier::kWarpSchedulerWG1) + wg);
    }
  }
  __device__ __forceinline__ static void warp_sched_arrive(int wg) {
    if constexpr (Traits::kPingpong) {
      int next = wg + 1 == kNumWG ? 0 : wg + 1;
      cutlass::arch::NamedBarrier::arrive(256, uint32_t(FwdBarrier::kWarpSchedulerWG1) + next);
    }
  }

  // Runs one tile for this thread (thread_idx in [0, kNumMmaThreads) over
  // all consumer warpgroups). Returns after the epilogue stores. `mask` is
  // the tile's (the params' when dense, its sequence's when varlen);
  // q_start is the packed row of the sequence's row 0 (0 when dense).
  __device__ __forceinline__ static void run_tile(FwdKernelParams<Traits> const& p,
                                                  typename Traits::SharedStorage& ss,
                                                  Pipeline& pipe_k, Pipeline& pipe_v,
                                                  PipelineState& state, uint32_t& q_phase,
                                                  TileCoord tc, int n_min, int n_max,
                                                  int thread_idx, FwdMask const& mask,
                                                  int q_start) {
    typename Traits::TiledMmaQK mma_qk;
    typename Traits::TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(thread_idx);
    auto thr_pv = mma_pv.get_thread_slice(thread_idx);

    Tensor sQ = make_tensor(make_smem_ptr(ss.smem_q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.smem_k.data()), typename Traits::SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(ss.smem_v.data()), typename Traits::SmemLayoutVt{});
    Tensor tSrQ = thr_qk.make_fragment_A(thr_qk.partition_A(sQ));   // descriptors
    // Q's WGMMA descriptors (one per 16-wide k step) are loop invariant, so
    // the compiler keeps all of them live: 32 registers at d=256, which
    // spilled 56 bytes in the main loop with kBlockN 80. Making the smem
    // address opaque per use makes it recompute them (a few integer adds
    // per GEMM) instead.
    auto q_desc = [&]() {
      if constexpr (Traits::kRecomputeQDesc) {
        Element* q = ss.smem_q.data();
        asm volatile("" : "+l"(q));
        Tensor sQ_now = make_tensor(make_smem_ptr(q), typename Traits::SmemLayoutQ{});
        return thr_qk.make_fragment_A(thr_qk.partition_A(sQ_now));
      } else {
        return tSrQ;
      }
    };
    Tensor tSrK = thr_qk.make_fragment_B(thr_qk.partition_B(sK));   // (MMA, N, K, stage)
    Tensor tOrV = thr_pv.make_fragment_B(thr_pv.partition_B(sVt));  // (MMA, D, N, stage)

    Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
    Tensor tOrO = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kD>>{});
    Tensor s_rc = make_tensor(tSrS.data(), acc_rowcol(tSrS.layout()));
    Tensor o_rc = make_tensor(tOrO.data(), acc_rowcol(tOrO.layout()));
    Tensor cS = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
    Tensor cS_rc = make_tensor(cS.data(), acc_rowcol(cS.layout()));
    Tensor cO = thr_pv.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kD>>{}));
    Tensor cO_rc = make_tensor(cO.data(), acc_rowcol(cO.layout()));
    constexpr int kRows = decltype(size<0>(s_rc))::value;

    clear(tOrO);
    float lse[kRows];
    OnlineSoftmax<kRows> softmax(p.scale_log2);
    int const row0 = tc.m_block * kBlockM;
    int const wg = thread_idx / 128;  // consumer warpgroup index

    // Score post-processing shared by both paths: softcap, then the mask on
    // boundary blocks only.
    // in_loop: a block after the first one processed (n < n_max - 1); with
    // Traits::kUnmasked (no causal / window) those are all full, and leaving
    // the mask code out of the loop keeps the wide tile's registers free.
    auto process_scores = [&](int n, bool in_loop) {
      if (p.softcap != 0.f) OnlineSoftmax<kRows>::apply_softcap(tSrS, p.softcap_pre, p.softcap);
      if (Traits::kUnmasked && in_loop) return;
      if (!mask.template block_is_full<kBlockM, kBlockN>(tc.m_block, n)) {
        mask.apply(s_rc, cS_rc, row0, n * kBlockN);
      }
    };
    // P in the input dtype, laid out as the RS-WGMMA A operand.
    Tensor tOrP_acc = make_tensor_like<Element>(tSrS);
    Tensor tOrP = make_tensor(tOrP_acc.data(), acc_to_a_operand(tOrP_acc.layout()));
    auto convert_p = [&]() {
      CUTE_UNROLL
      for (int i = 0; i < size(tSrS); i += 2) {
        cutlass::Array<float, 2> v;
        v[0] = tSrS(i);
        v[1] = tSrS(i + 1);
        cutlass::NumericArrayConverter<Element, float, 2> cvt;
        cutlass::Array<Element, 2> o = cvt(v);
        tOrP_acc(i) = o[0];
        tOrP_acc(i + 1) = o[1];
      }
    };
    auto q_empty = [&]() {
      // Q is no longer read for this tile: let the producer load the next.
      cutlass::arch::NamedBarrier::arrive(Traits::kNumMmaThreads + 32,
                                          uint32_t(FwdBarrier::kQueryEmpty));
    };

    if (n_max > n_min) {
      ss.barrier_q.wait(q_phase);
      q_phase ^= 1;
      if constexpr (Traits::kOverlap) {
        // FA3 §3.2 intra-warpgroup overlap: S(n) = Q K(n)^T and O += P(n+1)
        // V(n+1) are issued back to back; the softmax of S(n) runs while the
        // P*V WGMMA executes. Inter-warpgroup pingpong (warp_sched_*) makes
        // one warpgroup issue its WGMMAs while the other does softmax.
        int n = n_max - 1;
        PipelineState state_v = state;  // V stage of the block whose P is held
        pipe_k.consumer_wait(state);
        warp_sched_wait(wg);
        wgmma_issue<true>(mma_qk, q_desc(), tSrK(_, _, _, state.index()), tSrS);
        warp_sched_arrive(wg);
        warpgroup_wait<0>();
        pipe_k.consumer_release(state);
        if (n == n_min) q_empty();
        process_scores(n, /*in_loop=*/false);
        float corr[kRows];
        softmax.step_scores(s_rc, corr, /*first=*/true);
        convert_p();
        ++state;
        for (--n; n >= n_min; --n) {
          pipe_k.consumer_wait(state);
          warp_sched_wait(wg);
          wgmma_issue<true>(mma_qk, q_desc(), tSrK(_, _, _, state.index()), tSrS);
          pipe_v.consumer_wait(state_v);
          wgmma_issue<false>(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), tOrO);
          warp_sched_arrive(wg);
          warpgroup_wait<1>();  // S done; P*V may still run
          pipe_k.consumer_release(state);
          if (n == n_min) q_empty();
          process_scores(n, /*in_loop=*/true);
          softmax.step_scores(s_rc, corr, /*first=*/false);
          warpgroup_wait<0>();  // P*V done: O and the old P are free
          pipe_v.consumer_release(state_v);
          OnlineSoftmax<kRows>::rescale(o_rc, corr);
          convert_p();
          ++state_v;
          ++state;
        }
        pipe_v.consumer_wait(state_v);
        warp_sched_wait(wg);
        wgmma_issue<false>(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), tOrO);
        warp_sched_arrive(wg);
        warpgroup_wait<0>();
        pipe_v.consumer_release(state_v);
      } else {
        bool first = true;
        for (int n = n_max - 1; n >= n_min; --n) {
          // Serial per warpgroup (pingpong is off on this path, see
          // kernel_traits.h): the other warpgroups' WGMMAs still keep the
          // tensor cores busy during this one's softmax.
          pipe_k.consumer_wait(state);
          warp_sched_wait(wg);
          wgmma_issue<true>(mma_qk, q_desc(), tSrK(_, _, _, state.index()), tSrS);
          warp_sched_arrive(wg);
          warpgroup_wait<0>();
          pipe_k.consumer_release(state);
          if (n == n_min) q_empty();
          process_scores(n, /*in_loop=*/!first);
          softmax.step(s_rc, o_rc, first);
          first = false;
          convert_p();
          pipe_v.consumer_wait(state);
          warp_sched_wait(wg);
          wgmma_issue<false>(mma_pv, tOrP, tOrV(_, _, _, state.index()), tOrO);
          warp_sched_arrive(wg);
          warpgroup_wait<0>();
          pipe_v.consumer_release(state);
          ++state;
        }
      }
      softmax.finalize(o_rc, lse);
    } else {
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) lse[r] = -INFINITY;
    }
    store_output(p, tc, o_rc, cO_rc, lse, thread_idx % 128, q_start, mask.seqlen_q);
  }
};

template <class Traits, bool kVarlen>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    fwd_kernel(CUTE_GRID_CONSTANT FwdKernelParams<Traits> const p) {
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  using Pipeline = typename Traits::MainloopPipeline;
  using PipelineState = typename Traits::PipelineState;
  using SharedStorage = typename Traits::SharedStorage;
  extern __shared__ __align__(1024) char smem_raw[];
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(smem_raw);

  int const warp_group = threadIdx.x / 128;
  int const warp_idx = cutlass::canonical_warp_idx_sync();
  int const lane = threadIdx.x % 32;

  if (warp_idx == 0 && lane == 0) {
    cute::prefetch_tma_descriptor(p.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(p.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(p.tma_v.get_tma_descriptor());
    ss.barrier_q.init(1);
  }

  typename Pipeline::Params pp;
  pp.transaction_bytes = Traits::kTmaBytesKV;
  pp.role = warp_group == 0 ? Pipeline::ThreadCategory::Producer
                            : Pipeline::ThreadCategory::Consumer;
  pp.is_leader = threadIdx.x == 0;
  pp.num_consumers = Traits::kNumMmaThreads;
  // Barriers are initialised by warp 0 inside the constructors; the
  // __syncthreads below publishes them before anyone waits.
  Pipeline pipe_k(ss.pipeline_k, pp, Shape<_1, _1, _1>{});
  Pipeline pipe_v(ss.pipeline_v, pp, Shape<_1, _1, _1>{});
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  StaticTileScheduler const& sched = p.sched;
  if (warp_group == 0) {
    cutlass::arch::warpgroup_reg_dealloc<kVarlen ? Traits::kProducerRegsVarlen
                                                 : Traits::kProducerRegs>();
    if (warp_idx == 0) {
      PipelineState state = cutlass::make_producer_start_state<Pipeline>();
      bool q_in_use = false;
      if constexpr (kVarlen) {
        VarlenTileWalker<kBlockM, kBlockN> walk(p.vsched);
        TileCoord tc;
        while (walk.next(&tc)) {
          VarlenSeq const sq = p.vsched.seq(tc.batch);
          FwdMask const mask = p.mask.for_seq(sq.len_q, sq.len_k);
          int n_min, n_max;
          mask.template block_range<kBlockM, kBlockN>(tc.m_block, &n_min, &n_max);
          if (n_max <= n_min) continue;
          FwdProducer<Traits>::template load_tile<true>(p, ss, pipe_k, pipe_v, state, tc, n_min,
                                                        n_max, q_in_use, lane == 0, sq.q_start,
                                                        sq.k_start);
          q_in_use = true;
        }
      } else {
        for (int tile = sched.first_tile(); tile < sched.total_tiles;
             tile = sched.next_tile(tile)) {
          TileCoord tc = sched.get(tile);
          int n_min, n_max;
          p.mask.template block_range<kBlockM, kBlockN>(tc.m_block, &n_min, &n_max);
          if (n_max <= n_min) continue;  // consumers write zeros; nothing to load
          FwdProducer<Traits>::load_tile(p, ss, pipe_k, pipe_v, state, tc, n_min, n_max,
                                         /*wait_q_empty=*/q_in_use, /*leader=*/lane == 0);
          q_in_use = true;
        }
      }
      // Match the consumers' last Q-empty arrival.
      if (q_in_use) {
        cutlass::arch::NamedBarrier::sync(Traits::kNumMmaThreads + 32,
                                          uint32_t(FwdBarrier::kQueryEmpty));
      }
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<kVarlen ? Traits::kConsumerRegsVarlen
                                               : Traits::kConsumerRegs>();
    int const thread_idx = threadIdx.x - 128;
    PipelineState state;  // index 0, phase 0
    uint32_t q_phase = 0;
    if constexpr (Traits::kPingpong) {
      if (thread_idx / 128 == Traits::kNumMmaWarpGroups - 1) {
        cutlass::arch::NamedBarrier::arrive(256, uint32_t(FwdBarrier::kWarpSchedulerWG1));
      }
    }
    if constexpr (kVarlen) {
      VarlenTileWalker<kBlockM, kBlockN> walk(p.vsched);
      TileCoord tc;
      while (walk.next(&tc)) {
        VarlenSeq const sq = p.vsched.seq(tc.batch);
        FwdMask const mask = p.mask.for_seq(sq.len_q, sq.len_k);
        int n_min, n_max;
        mask.template block_range<kBlockM, kBlockN>(tc.m_block, &n_min, &n_max);
        // threadIdx.x read afresh: kept live across the walk, the thread
        // index was spilled (4 bytes).
        uint32_t tid;
        asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
        FwdConsumer<Traits>::run_tile(p, ss, pipe_k, pipe_v, state, q_phase, tc, n_min, n_max,
                                      int(tid) - 128, mask, sq.q_start);
      }
    } else {
      for (int tile = sched.first_tile(); tile < sched.total_tiles; tile = sched.next_tile(tile)) {
        TileCoord tc = sched.get(tile);
        int n_min, n_max;
        p.mask.template block_range<kBlockM, kBlockN>(tc.m_block, &n_min, &n_max);
        FwdConsumer<Traits>::run_tile(p, ss, pipe_k, pipe_v, state, q_phase, tc, n_min, n_max,
                                      thread_idx, p.mask, 0);
      }
    }
    if constexpr (Traits::kPingpong) {
      // Consume the last warpgroup's final hand-over so no arrival is left pending.
      if (thread_idx < 128) {
        cutlass::arch::NamedBarrier::sync(256, uint32_t(FwdBarrier::kWarpSchedulerWG1));
      }
    }
  }
}

}  // namespace jax_fa3::hopper
