// Kernel parameters, the WGMMA issue helper, and the producer half of the
// forward mainloop (the consumer half is FwdConsumer in kernel_fwd.h).
//
// Producer (warp 0 of warpgroup 0, lane 0 issuing): TMA-loads Q once per tile
// and streams K and V blocks through two multi-stage PipelineTmaAsync rings
// (separate rings so S = QK^T can start as soon as K lands, before V).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "cc/hopper/kernel_traits.h"
#include "cc/hopper/mask_fwd.h"
#include "cc/hopper/tile_scheduler.h"

namespace jax_fa3::hopper {

using namespace cute;

template <class Traits>
struct FwdKernelParams {
  typename Traits::TmaQ tma_q;
  typename Traits::TmaKV tma_k;
  typename Traits::TmaKV tma_v;
  void* out;
  float* lse;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  int64_t lse_batch_stride, lse_head_stride;  // varlen: batch stride 0, rows offset by q_start
  // TMA extents: (seqlen_q/k, batch) dense; (total_q/k, 1) varlen, whose
  // tensors are the packed ones.
  int seqlen_q, seqlen_k, num_heads, num_heads_k, h_h_k_ratio, batch;
  float scale_log2;   // factor before exp2: scale*log2(e), or log2(e) with softcap
  float softcap_pre;  // scale / softcap
  float softcap;      // 0: off
  FwdMask mask;  // varlen: clamped with the max lengths; per sequence via for_seq
  StaticTileScheduler sched;  // dense kernels
  VarlenScheduler vsched;     // varlen kernels (fwd_kernel<Traits, true>)
};

// Issues one WGMMA batch C (+)= A * B over all k-blocks and commits it; the
// caller decides when to wait (warpgroup_wait<N>), which is what lets the
// next GEMM overlap this one's softmax.
template <bool kZeroInit, class TiledMma, class TA, class TB, class TC>
__device__ __forceinline__ void wgmma_issue(TiledMma& mma, TA const& a, TB const& b, TC& c) {
  // A from registers (P) needs the same fence as C; A from smem is a
  // descriptor tensor and must not be fenced.
  constexpr bool kARegs =
      !std::is_same_v<typename TA::engine_type::iterator, GMMA::DescriptorIterator>;
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(a));
  warpgroup_fence_operand(c);
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) {
    cute::gemm(mma, a(_, _, k), b(_, _, k), c);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(c);
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(a));
}

template <class Traits>
struct FwdProducer {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::MainloopPipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kD = Traits::kHeadDim;

  // Loads Q and the key blocks n_max-1 .. n_min (descending, matching the
  // consumers) for one tile. Called by the whole producer warp; lane 0 issues
  // the TMAs. The first K block goes out before waiting for the consumers to
  // release Q (wait_q_empty), so it is in flight while they finish the
  // previous tile.
  //
  // kVarlen: the tensors are the packed ones (batch extent 1) and the tile's
  // rows start at its sequence's q_start / k_start. Blocks reaching past the
  // sequence read the next sequence's rows (or TMA's zero fill past the end
  // of the tensor): the consumers mask those keys (the last partial key
  // block is never "full") and never store those query rows.
  template <bool kVarlen = false>
  __device__ __forceinline__ static void load_tile(FwdKernelParams<Traits> const& p,
                                                   typename Traits::SharedStorage& ss,
                                                   Pipeline& pipe_k, Pipeline& pipe_v,
                                                   PipelineState& state, TileCoord tc,
                                                   int n_min, int n_max, bool wait_q_empty,
                                                   bool leader, int q_start = 0,
                                                   int k_start = 0) {
    Tensor mQ = p.tma_q.get_tma_tensor(make_shape(p.seqlen_q, int(kD), p.num_heads, p.batch));
    Tensor mK = p.tma_k.get_tma_tensor(make_shape(p.seqlen_k, int(kD), p.num_heads_k, p.batch));
    Tensor mV = p.tma_v.get_tma_tensor(make_shape(p.seqlen_k, int(kD), p.num_heads_k, p.batch));
    int head_k = tc.head / p.h_h_k_ratio;  // GQA: index, never copy
    if constexpr (kVarlen) {
      Tensor gQ = local_tile(domain_offset(make_coord(q_start, _0{}), mQ(_, _, tc.head, 0)),
                             Shape<Int<kBlockM>, Int<kD>>{}, make_coord(tc.m_block, _0{}));
      Tensor gK = local_tile(domain_offset(make_coord(k_start, _0{}), mK(_, _, head_k, 0)),
                             Shape<Int<kBlockN>, Int<kD>>{}, make_coord(_, _0{}));
      Tensor gV = local_tile(domain_offset(make_coord(k_start, _0{}), mV(_, _, head_k, 0)),
                             Shape<Int<kBlockN>, Int<kD>>{}, make_coord(_, _0{}));
      issue(p, ss, pipe_k, pipe_v, state, gQ, gK, gV, n_min, n_max, wait_q_empty, leader);
    } else {
      Tensor gQ = local_tile(mQ(_, _, tc.head, tc.batch), Shape<Int<kBlockM>, Int<kD>>{},
                             make_coord(tc.m_block, _0{}));
      Tensor gK = local_tile(mK(_, _, head_k, tc.batch), Shape<Int<kBlockN>, Int<kD>>{},
                             make_coord(_, _0{}));  // (N, D, n_blocks)
      Tensor gV = local_tile(mV(_, _, head_k, tc.batch), Shape<Int<kBlockN>, Int<kD>>{},
                             make_coord(_, _0{}));
      issue(p, ss, pipe_k, pipe_v, state, gQ, gK, gV, n_min, n_max, wait_q_empty, leader);
    }
  }

  template <class TQ, class TK, class TV>
  __device__ __forceinline__ static void issue(FwdKernelParams<Traits> const& p,
                                               typename Traits::SharedStorage& ss,
                                               Pipeline& pipe_k, Pipeline& pipe_v,
                                               PipelineState& state, TQ const& gQ, TK const& gK,
                                               TV const& gV, int n_min, int n_max,
                                               bool wait_q_empty, bool leader) {
    Tensor sQ = make_tensor(make_smem_ptr(ss.smem_q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.smem_k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.smem_v.data()), typename Traits::SmemLayoutV{});

    auto tma_q = p.tma_q.get_slice(_0{});
    auto tma_k = p.tma_k.get_slice(_0{});
    auto tma_v = p.tma_v.get_slice(_0{});
    Tensor tQgQ = tma_q.partition_S(gQ);
    Tensor tQsQ = tma_q.partition_D(sQ);
    Tensor tKgK = tma_k.partition_S(gK);  // (TMA, .., n_blocks)
    Tensor tKsK = tma_k.partition_D(sK);  // (TMA, .., stages)
    Tensor tVgV = tma_v.partition_S(gV);
    Tensor tVsV = tma_v.partition_D(sV);

    int n = n_max - 1;
    if (leader) {
      pipe_k.producer_acquire(state);
      copy(p.tma_k.with(*pipe_k.producer_get_barrier(state), 0), tKgK(_, _, _, n),
           tKsK(_, _, _, state.index()));
    }
    if (wait_q_empty) {
      cutlass::arch::NamedBarrier::sync(Traits::kNumMmaThreads + 32,
                                        uint32_t(FwdBarrier::kQueryEmpty));
    }
    if (leader) {
      ss.barrier_q.arrive_and_expect_tx(Traits::kTmaBytesQ);
      copy(p.tma_q.with(reinterpret_cast<uint64_t&>(ss.barrier_q), 0), tQgQ, tQsQ);
      pipe_v.producer_acquire(state);
      copy(p.tma_v.with(*pipe_v.producer_get_barrier(state), 0), tVgV(_, _, _, n),
           tVsV(_, _, _, state.index()));
      ++state;
      for (--n; n >= n_min; --n) {
        pipe_k.producer_acquire(state);
        copy(p.tma_k.with(*pipe_k.producer_get_barrier(state), 0), tKgK(_, _, _, n),
             tKsK(_, _, _, state.index()));
        pipe_v.producer_acquire(state);
        copy(p.tma_v.with(*pipe_v.producer_get_barrier(state), 0), tVgV(_, _, _, n),
             tVsV(_, _, _, state.index()));
        ++state;
      }
    }
    __syncwarp();
  }
};

}  // namespace jax_fa3::hopper
