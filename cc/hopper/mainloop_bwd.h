// FA3-style backward (JAX_FA3_BWD): compile-time
// configuration, kernel parameters and the producer (TMA) half of the
// mainloop. The consumer half and the kernel are in kernel_bwd.h.
//
// One CTA per (key block n, query head, batch or varlen sequence). K and V
// of the block are loaded once (TMA) and stay in smem until the dK/dV
// epilogue reuses their space; Q and dO blocks
// stream through two PipelineTmaAsync rings; lse (log2 domain) and dPsum
// come from the fp32 workspace written by bwd_preprocess.cu.
#pragma once

#include "cc/hopper/kernel_traits.h"  // first: extended WGMMA shapes

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "cc/common/varlen.h"
#include "cc/hopper/bwd_scratch.h"
#include "cc/hopper/bwd_trace.h"
#include "cc/hopper/mainloop_fwd.h"  // wgmma_issue
#include "cc/hopper/mask_fwd.h"

namespace jax_fa3::hopper {

using namespace cute;

// Tiles: kBlockM query rows per step (64; 128 at d64), 2 consumer warpgroups.
//   d <= 128: kBlockN = 128; S/dP split along N (64 keys per WG), dK/dV
//             split along N (each WG owns 64 key rows x D), dQ split along D.
//   d192:     kBlockN = 64; S/dP split along N (32 keys per WG), dK/dV and
//             dQ split along D (each WG owns D/2 columns).
//   d256:     kBlockN = 80 (below); S/dP split along N (40 keys per WG),
//             dK^T/dV^T and dQ^T split along D.
// P and dS always go through smem (they feed dV/dK as A^T and dQ as A; at
// d256, transposed, as B of all three).
// With dK/dV split along N a warpgroup's dV/dK read only the P/dS columns it
// wrote itself, so P needs no cross-warpgroup barrier and dS (which dQ reads
// whole) is double-buffered: one all-consumer barrier per step. Split along
// D, every GEMM reads both halves: single buffers, two barriers.
// smem (bf16): d128: K,V 64K + Q,dO 2 stages 64K + P 16K + dS 2x16K + dQ 32K = 208K;
//              d192: K,V 48K + Q,dO 2 stages 96K + P,dS 16K + dQ 48K = 208K.
// d64: 128 query rows per step (the 64-row step's GEMMs were too small next
// to its fixed costs: barriers, softmax, dQ out); smem 224K.
// d <= 128 computes the transposes S^T = K Q^T and dP^T = V dO^T (FA3's
// SdP_swapAB): each warpgroup's accumulator rows are then its own 64 keys,
// so P^T and dS^T feed dV += P^T dO and dK += dS^T Q straight from registers
// (WGMMA RS) and only dS goes through smem (for dQ). The price: the row
// statistics lse2 / dPsum are per column, so the producer stages them in
// smem with Q / dO (consumer_bwd_swap.h).
// d256 runs FA3's 64 x 80 tile: 25 % more work per step than 64 x 64 and
// 20 % fewer dQ adds per FLOP. 80 keys are no WGMMA M, so dK/dV are computed
// transposed, dK^T = Q^T dS and dV^T = dO^T P (kDkvSwap: M = D, each
// warpgroup 128 rows of D x 80 keys, 2 x 80 accumulators per thread), and
// dQ^T = K^T dS^T likewise (kDqSwap, two chunks of 128 rows of D). smem:
// K, V 80K + Q 2 stages 64K + dO one stage 32K + P, dS 20K = 196K (two dO
// stages would be 1K over the limit); dO is released once dV has read it.
// H100 harness against 64 x 64 (same call): default 1.04-1.11x (16k 421 ->
// 450 TF/s non-causal), deterministic 1.05-1.18x.
#ifndef JAX_FA3_BWD_D256_N  // build-time override for A/B experiments (64: the old tile)
#define JAX_FA3_BWD_D256_N 80
#endif
template <int D> struct BwdTileConfig {
  static constexpr int kBlockM = D <= 64 ? 128 : 64;
  static constexpr int kBlockN = D <= 128 ? 128 : D == 256 ? JAX_FA3_BWD_D256_N : 64;
  static constexpr bool kDkvSplitD = D > 128;
  static constexpr bool kDkvSwap = D == 256 && kBlockN != 64;
#ifdef JAX_FA3_BWD_SWAP  // build-time override for A/B experiments
  static constexpr bool kSwapSdP = JAX_FA3_BWD_SWAP && D <= 128;
#else
  static constexpr bool kSwapSdP = D <= 128;
#endif
};

// The fused dQ convert's reduction scratch (bwd_dq_fuse_progress): one int
// per consumer warp (two warpgroups), then one.
constexpr int kDqSumInts = 2 * 4 + 1;

// What one CTA's (sequence or batch entry, head) adds to the params. Dense:
// the params' mask, rows from 0 of batch entry b. Varlen: the sequence's
// mask and its rows in the packed tensors and in the padded scratch
// (bwd_scratch.h).
struct BwdSeq {
  FwdMask mask;
  int64_t ws_row;      // scratch row (lse2, dPsum, dQ accumulator) of query row 0
  int q_row, k_row;    // TMA row of query / key row 0
  int tma_batch;       // TMA batch coordinate
};

template <int kHeadDim_, class Element_>
struct BwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int D = kHeadDim_;
  static constexpr int kBlockM = BwdTileConfig<D>::kBlockM;
  static constexpr int kBlockN = BwdTileConfig<D>::kBlockN;
  static constexpr bool kDkvSplitD = BwdTileConfig<D>::kDkvSplitD;
  static constexpr bool kSwapSdP = BwdTileConfig<D>::kSwapSdP;
  static constexpr bool kDkvSwap = BwdTileConfig<D>::kDkvSwap;
  static constexpr bool kDqSwap = kDkvSwap;
  static_assert(!(kSwapSdP && kDkvSplitD), "S^T needs dK/dV split along N");
  static_assert(!kDkvSwap || kDkvSplitD);
  static constexpr int kStages = 2;
  static constexpr int kStagesdO = kDkvSwap ? 1 : kStages;
  // consumer_bwd_swap.h and the producer's lse2 / dPsum copies assume one
  // ring shape for Q and dO when the scores are transposed.
  static_assert(!kSwapSdP || kStagesdO == kStages);
  // P and dS columns private to their warpgroup (see BwdTileConfig).
  static constexpr bool kPLocal = !kDkvSplitD;
  static constexpr int kDsStages = kPLocal ? 2 : 1;
  static constexpr int kNumMmaWarpGroups = 2;
  static constexpr int kNumThreads = 128 * 3;
  static constexpr int kNumMmaThreads = 256;
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static_assert(kProducerRegs * 128 + kConsumerRegs * kNumMmaThreads <=
                (65536 / kNumThreads) / 8 * 8 * kNumThreads);

  // S = Q K^T and dP = dO V^T: (kBlockM, kBlockN), WGs side by side along N.
  // Swapped: S^T = K Q^T, dP^T = V dO^T: (kBlockN, kBlockM), WGs stacked
  // along the keys (M), both operands K-major as stored.
  using TiledMmaSdP = std::conditional_t<
      kSwapSdP,
      decltype(make_tiled_mma(
          GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockM>, Int<D>>>(),
          Layout<Shape<_2, _1, _1>>{})),
      decltype(make_tiled_mma(
          GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockN / 2>, Int<D>>>(),
          Layout<Shape<_1, _2, _1>>{}))>;
  // dV += P^T dO, dK += dS^T Q: (kBlockN, D), reduction over kBlockM. A is
  // P^T / dS^T read transposed from smem (MN-major), or, swapped, the
  // registers of S^T's accumulator (RS); B is dO^T / Q^T (MN-major).
  // kDkvSwap: dV^T += dO^T P, dK^T += Q^T dS: (D, kBlockN); A = dO^T / Q^T
  // (MN-major), B = P^T / dS^T as (keys, queries) (MN-major); the
  // warpgroups alternate along D in 64-row atoms.
  using AtomShapeKV = std::conditional_t<
      kDkvSwap, Shape<_64, Int<kBlockN>, Int<kBlockM>>,
      std::conditional_t<kDkvSplitD, Shape<_64, Int<D / 2>, Int<kBlockM>>,
                         Shape<_64, Int<D>, Int<kBlockM>>>>;
  using AtomLayoutKV = std::conditional_t<kDkvSplitD && !kDkvSwap, Layout<Shape<_1, _2, _1>>,
                                          Layout<Shape<_2, _1, _1>>>;
  // The accumulator's shape: (kBlockN, D), or (D, kBlockN) swapped.
  using ShapedKV = std::conditional_t<kDkvSwap, Shape<Int<D>, Int<kBlockN>>,
                                      Shape<Int<kBlockN>, Int<D>>>;
  using TiledMmadKV = std::conditional_t<
      kSwapSdP,
      decltype(make_tiled_mma(GMMA::rs_op_selector<Element, Element, float, AtomShapeKV,
                                                   GMMA::Major::K, GMMA::Major::MN>(),
                              AtomLayoutKV{})),
      decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, AtomShapeKV,
                                                   GMMA::Major::MN, GMMA::Major::MN>(),
                              AtomLayoutKV{}))>;
  // dQ = dS K: (kBlockM, D), reduction over kBlockN; WGs split D. d256 does
  // it in chunks, fewer accumulators next to dK/dV's (without chunks the
  // 64 x 64 tile spilled ~90 bytes): swapped (64 x 80), two chunks of 128
  // rows of D (each warpgroup one 64 x 64 atom: 32 registers beside dK^T /
  // dV^T's 160); the 64 x 64 A/B build, 4 chunks of 64 columns.
  static constexpr int kDqChunks = D == 256 ? (kDqSwap ? 2 : 4) : 1;
  static constexpr int kDqChunk = D / kDqChunks;
  // One-chunk dQ staging buffers (epilogue_bwd.h) for the deterministic
  // mode: two where they fit (d96, d128; not beside d64's 128-row tiles or
  // d192's), each with its own writer warp (d192's one buffer also has two:
  // bwd_dq_two_writers). One writer's wait for its turn,
  // its reduce's completion and the fence before it signals took about a
  // whole step, and the consumers stood 32 % of their time at the one
  // buffer (ncu, d128 16k; 4 % by default). H100 harness, d128: the
  // deterministic mode 1.15-1.24x faster, 0.87-0.97x the default (16k:
  // 0.97 non-causal, 0.92 causal; was 0.76-0.79). The default mode keeps
  // one buffer and one writer (launch_bwd.h): with two it ran 0.96-0.98x.
  // d64's deterministic mode runs 0.83-1.0x its default with one buffer.
  static constexpr int kDqBufs = kDqChunks == 1 && D > 64 && D <= 128 ? 2 : 1;
  // Swapped: dQ^T = K^T dS^T, (kDqChunk, kBlockM) per chunk; A = K^T
  // (MN-major), B = dS (K-major); the warpgroups split the chunk's rows.
  using TiledMmadQ = std::conditional_t<
      kDqSwap,
      decltype(make_tiled_mma(
          GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockM>, Int<kBlockN>>,
                               GMMA::Major::MN, GMMA::Major::K>(),
          Layout<Shape<_2, _1, _1>>{})),
      decltype(make_tiled_mma(
          GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kDqChunk / 2>, Int<kBlockN>>,
                               GMMA::Major::K, GMMA::Major::MN>(),
          Layout<Shape<_1, _2, _1>>{}))>;
  // A dQ chunk's accumulator shape (bwd_dq.h tile_row / tile_col read it).
  using ShapedQ = std::conditional_t<kDqSwap, Shape<Int<kDqChunk>, Int<kBlockM>>,
                                     Shape<Int<kBlockM>, Int<kDqChunk>>>;

  // Q, dO, K, V are read along D in halves (dQ, and dK/dV for d >= 192):
  // the swizzle atom's row must divide D/2.
  using AtomQK = decltype(kmajor_atom<Element, D / 2>());
  using SmemLayoutQ = decltype(tile_to_shape(AtomQK{}, Shape<Int<kBlockM>, Int<D>, Int<kStages>>{}));
  using SmemLayoutdO =
      decltype(tile_to_shape(AtomQK{}, Shape<Int<kBlockM>, Int<D>, Int<kStagesdO>>{}));
  using SmemLayoutK = decltype(tile_to_shape(AtomQK{}, Shape<Int<kBlockN>, Int<D>>{}));
  using SmemLayoutV = SmemLayoutK;
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_ordered_layout(Shape<Int<D>, Int<kBlockM>, Int<kStages>>{},
                                         Step<_2, _1, _3>{})));
  using SmemLayoutdOt = decltype(composition(
      SmemLayoutdO{}, make_ordered_layout(Shape<Int<D>, Int<kBlockM>, Int<kStagesdO>>{},
                                          Step<_2, _1, _3>{})));
  using SmemLayoutKt = decltype(composition(
      SmemLayoutK{}, make_ordered_layout(Shape<Int<D>, Int<kBlockN>>{}, Step<_2, _1>{})));
  // A warpgroup's P / dS columns (kBlockN / 2) must be whole swizzle atoms'
  // worth for its stores; d256's 40 are not a multiple of 16, so its P / dS
  // go unswizzled, as in FA3.
  using AtomP = std::conditional_t<(kBlockN / 2) % 16 == 0, decltype(kmajor_atom<Element, kBlockN>()),
                                   GMMA::Layout_K_INTER_Atom<Element>>;
  using SmemLayoutP = decltype(tile_to_shape(AtomP{}, Shape<Int<kBlockM>, Int<kBlockN>>{}));
  using SmemLayoutdS =
      decltype(tile_to_shape(AtomP{}, Shape<Int<kBlockM>, Int<kBlockN>, Int<kDsStages>>{}));
  using SmemLayoutPt = decltype(composition(
      SmemLayoutP{}, make_ordered_layout(Shape<Int<kBlockN>, Int<kBlockM>>{}, Step<_2, _1>{})));
  using SmemLayoutdSt = decltype(composition(
      SmemLayoutdS{}, make_ordered_layout(Shape<Int<kBlockN>, Int<kBlockM>, Int<kDsStages>>{},
                                          Step<_2, _1, _3>{})));

  // stmatrix of P / dS from S's accumulator: x4 stores 16 of a warpgroup's
  // columns per instruction, x2 8 (d256: 40 columns per warpgroup).
  using StsmAtom = std::conditional_t<(kBlockN / 2) % 16 == 0, SM90_U32x4_STSM_N,
                                      SM90_U32x2_STSM_N>;
  using MainloopPipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename MainloopPipeline::PipelineState;
  using PipelinedO = cutlass::PipelineTmaAsync<kStagesdO>;
  using PipelineStatedO = typename PipelinedO::PipelineState;
  static constexpr int kTmaBytesQ = kBlockM * D * int(sizeof(Element));
  // Bytes of one Q (dO) stage: the tile, plus lse2 (dPsum) when swapped.
  static constexpr int kRowStatBytes = kSwapSdP ? kBlockM * int(sizeof(float)) : 0;
  static constexpr int kStageBytesQ = kTmaBytesQ + kRowStatBytes;
  static constexpr int kTmaBytesKV = kBlockN * D * int(sizeof(Element));

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutK>, 1024> smem_k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutV>, 1024> smem_v;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> smem_q;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutdO>, 1024> smem_do;
    // Swapped, P stays in registers: no buffer.
    alignas(1024) cute::array_aligned<Element, kSwapSdP ? 8 : cosize_v<SmemLayoutP>, 1024> smem_p;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutdS>, 1024> smem_ds;
    // A dQ chunk in fragment order, the source of the bulk reduce-adds (the
    // second buffer, smem_dq2, comes last).
    // (None when the consumers add dQ themselves: d256.)
    alignas(128) cute::array_aligned<float, kDqChunks == 1 ? kBlockM * kDqChunk : 4, 128> smem_dq;
    // Swapped: lse2 / dPsum of each stage's query rows, loaded with Q / dO.
    alignas(16) cute::array_aligned<float, kSwapSdP ? kBlockM * kStages : 4, 16> smem_lse2;
    alignas(16) cute::array_aligned<float, kSwapSdP ? kBlockM * kStages : 4, 16> smem_dpsum;
    typename MainloopPipeline::SharedStorage pipeline_q;
    typename PipelinedO::SharedStorage pipeline_do;
    // K and V arrive on barriers of their own: the first S GEMM needs K and
    // Q only, so it starts while V (issued after the first Q) still loads.
    cutlass::arch::ClusterTransactionBarrier barrier_k, barrier_v;
    // The staged dQ hand-off to two writers (deterministic), per step parity
    // and consumer warpgroup: full counts the warpgroup's 4 warps, empty
    // the parity's writer. (The default mode's one writer hands off through
    // named barriers, BwdBarrier.)
    cutlass::arch::ClusterBarrier dq_full[2][2];
    cutlass::arch::ClusterBarrier dq_empty[2][2];
    // Fused dQ convert (bwd_dq_fuse.h): the writer warp(s) -> consumers,
    // one arrival per writer once its adds are counted; dq_last[w]: writer
    // w's count completed the head's.
    cutlass::arch::ClusterBarrier dq_done;
    int dq_last[2];
    int dq_sum[kDqSumInts];  // bwd_dq_fuse_progress
    // The convert's bulk loads of accumulator blocks, one per stage
    // (BwdDqCvtStages, bwd_dq_fuse.h).
    cutlass::arch::ClusterTransactionBarrier dq_cvt[4];
    // Varlen: the CTA's BwdSeq. The consumers read it from here at each use
    // rather than keep it in registers through the mainloop, which has none
    // to spare (kept in registers, d128 spilled).
    BwdSeq seq;
    // The second dQ buffer (kDqBufs 2), last so that the default mode, which
    // stages in smem_dq alone, launches without it (kSmemBytesOneBuf).
    alignas(128) cute::array_aligned<float, kDqBufs == 2 ? kBlockM * kDqChunk : 4, 128> smem_dq2;
    CUTE_DEVICE float* dq_buf(int b) { return b == 0 ? smem_dq.data() : smem_dq2.data(); }

    // Tensor views of the tiles; the ..t ones read the same bytes transposed.
    CUTE_DEVICE auto q() { return make_tensor(make_smem_ptr(smem_q.data()), SmemLayoutQ{}); }
    CUTE_DEVICE auto qt() { return make_tensor(make_smem_ptr(smem_q.data()), SmemLayoutQt{}); }
    CUTE_DEVICE auto dO() { return make_tensor(make_smem_ptr(smem_do.data()), SmemLayoutdO{}); }
    CUTE_DEVICE auto dOt() { return make_tensor(make_smem_ptr(smem_do.data()), SmemLayoutdOt{}); }
    CUTE_DEVICE auto k() { return make_tensor(make_smem_ptr(smem_k.data()), SmemLayoutK{}); }
    CUTE_DEVICE auto kt() { return make_tensor(make_smem_ptr(smem_k.data()), SmemLayoutKt{}); }
    CUTE_DEVICE auto v() { return make_tensor(make_smem_ptr(smem_v.data()), SmemLayoutV{}); }
    CUTE_DEVICE auto p() { return make_tensor(make_smem_ptr(smem_p.data()), SmemLayoutP{}); }
    CUTE_DEVICE auto pt() { return make_tensor(make_smem_ptr(smem_p.data()), SmemLayoutPt{}); }
    CUTE_DEVICE auto ds() { return make_tensor(make_smem_ptr(smem_ds.data()), SmemLayoutdS{}); }
    CUTE_DEVICE auto dst() { return make_tensor(make_smem_ptr(smem_ds.data()), SmemLayoutdSt{}); }
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 232448, "bwd tile does not fit in shared memory");
  // Everything but smem_dq2: the last member, so this covers all the others
  // (sizeof rounds the struct up to its 1024-byte alignment: a little slack).
  static constexpr int kSmemBytesOneBuf =
      kDqBufs == 2 ? kSmemBytes - int(sizeof(SharedStorage::smem_dq2)) : kSmemBytes;

  using GmemStride = cute::Stride<int64_t, _1, int64_t, int64_t>;
  using GmemLayout = cute::Layout<cute::Shape<int32_t, int32_t, int32_t, int32_t>, GmemStride>;
  using TmaQ = decltype(make_tma_copy(
      SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
      take<0, 2>(SmemLayoutQ{}), Shape<Int<kBlockM>, Int<D>>{}, _1{}));
  using TmaKV = decltype(make_tma_copy(
      SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
      SmemLayoutK{}, Shape<Int<kBlockN>, Int<D>>{}, _1{}));
};

// Named barriers (CUTLASS's user ids 0-7).
enum class BwdBarrier : uint32_t {
  kPdSEmpty = 0,  // split D, all consumers: the previous step's GEMMs no longer read sP/sdS
  kDsFull = 1,    // all consumers: sdS written; after the loop, the GQA semaphore hand-off
  kPFull = 2,     // its columns of sP written: one warpgroup (+ its index) when kPLocal, else all
  // The dQ hand-off to one writer warp (every dim by default, d64
  // deterministic), and d256's deterministic turn (its consumers add dQ
  // themselves). Two writer warps (d96 / d128 / d192 deterministic,
  // bwd_dq_two_writers) use SharedStorage's dq_full / dq_empty instead.
  kDqEmpty = 4,   // (+ warpgroup) dQ writer -> consumer warpgroup: half read / your turn
  kDqFull = 6,    // (+ warpgroup) consumer warpgroup -> dQ writer: half written / added
};
// A consumer warpgroup and the dQ writer warp (epilogue_bwd.h).
constexpr int kBwdDqBarThreads = 128 + 32;

template <class Traits>
struct BwdKernelParams {
  typename Traits::TmaQ tma_q;
  typename Traits::TmaQ tma_do;
  typename Traits::TmaKV tma_k;
  typename Traits::TmaKV tma_v;
  void* dk;  // output (input dtype), written directly when h_h_k_ratio == 1
  void* dv;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  // Scratch, dense (batch, heads, *_pad rows) or varlen (heads, *_pad rows),
  // rows padded per sequence (bwd_scratch.h):
  // (.., sq_pad / kBlockM, kBlockM * D) fp32 in fragment order (bwd_dq.h):
  // zeroed, or with dq_state not null uninitialised (first store, bwd_dq.h)
  float* dq_accum;
  float* dk_accum;  // (.., sk_pad, D) fp32 of the kv heads, zeroed (GQA only)
  float* dv_accum;
  const float* lse2;   // (.., sq_pad): lse * log2(e); +inf for empty/pad rows
  const float* dpsum;  // (.., sq_pad)
  int* sem_dq;         // (.., sq_pad / kBlockM) (deterministic)
  int* dq_state;       // (.., sq_pad / kBlockM), zeroed; null: dq_accum zeroed (bwd_dq.h)
  int* sem_dkv;        // (batch or sequences, heads_k, num_n) (deterministic GQA)
  // Fused dQ convert (bwd_dq_fuse.h): sequences of at most dq_fuse_rows query
  // rows (0: none) get their dQ from the last of their CTAs, counted in
  // dq_done (batch or sequences, heads), zeroed, then kDqConverted; dq is the
  // output (input dtype), with Q's strides (varlen: batch stride unused).
  int* dq_done;
  int* dq_started;  // CTAs started (with dq_fuse_rows > 0), zeroed
  int dq_fuse_rows;
  void* dq;
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int rows_q, rows_k;  // TMA row extents: seqlen, or total rows when varlen
  int tma_batch;       // TMA batch extent (1 when varlen)
  int sq_pad, sk_pad, num_m, num_n;  // num_m = sq_pad / kBlockM (dense)
  int num_heads, num_heads_k, h_h_k_ratio;
  float scale_log2;   // scale*log2(e), or log2(e) with softcap
  float softcap_pre;  // scale / softcap
  float softcap;      // 0: off
  float softmax_scale;
  FwdMask mask;       // dense; varlen: lengths per sequence (seq())
  bool deterministic;
  // Deterministic: how many (batch, head) groups the launch interleaves
  // (cta_coords); 1 otherwise.
  int det_groups;
  // Varlen: launch slot (blockIdx.z) -> sequence, longest query first, so
  // the long sequences' CTAs do not form the grid's tail (bwd_seq_order_kernel in
  // bwd_preprocess.cu); null: slot = sequence.
  const int32_t* seq_order;
#ifdef JAX_FA3_BWD_TRACE
  unsigned long long* trace;  // bwd_trace.h
#endif
  // Varlen (params.h), device pointers; read by bwd_kernel<.., true> only.
  const int32_t *cu_q, *cu_k, *used_q, *used_k;
  // The offsets as every varlen kernel reads them (clamped, varlen.h); the
  // mask holds the max lengths under varlen.
  __device__ __forceinline__ VarlenSide side_q() const {
    return VarlenSide{cu_q, used_q, rows_q, mask.seqlen_q};
  }
  __device__ __forceinline__ VarlenSide side_k() const {
    return VarlenSide{cu_k, used_k, rows_k, mask.seqlen_k};
  }

  template <bool kVarlen>
  __device__ __forceinline__ BwdSeq seq(int batch, int head) const {
    BwdSeq s;
    if constexpr (!kVarlen) {
      s.mask = mask;
      s.ws_row = (int64_t(batch) * num_heads + head) * sq_pad;
      s.q_row = s.k_row = 0;
      s.tma_batch = batch;
    } else {
      VarlenSide const vq = side_q(), vk = side_k();
      s.mask = mask.for_seq(int(vq.len(batch)), int(vk.len(batch)));
      s.ws_row = int64_t(head) * sq_pad + bwd_pad_start(vq, batch, kBwdPadM);
      s.q_row = int(vq.start(batch));
      s.k_row = int(vk.start(batch));
      s.tma_batch = 0;
    }
    return s;
  }

  // The CTA's (key block, head, batch or sequence). Default: blockIdx as is.
  // Deterministic mode reverses the key-block order, both of the launch and
  // of the dQ adds (key block n waits for blocks > n, launched before it):
  // with causal masking, block n's first query block is then one no other
  // key block adds to before it, so the ordered adds do not serialize the
  // CTAs (ascending order made block n idle for ~2n steps first).
  // It also interleaves det_groups (batch, head) groups, key block by key
  // block: without masking every key block adds into every query block, in
  // the same order, so key block n - 1 can add block m only some time (its
  // writer's hand-off: wait, fence, signal) after block n did. Launched
  // right after it, as when its group is launched alone, it waits for that
  // at every step, and a short sequence (few steps per CTA) loses most
  // (d256 2k: 0.76x the default mode). Launched det_groups CTAs later it
  // already lags that much. Every wait is still on a CTA launched before.
  __device__ __forceinline__ void cta_coords(int* n_block, int* head, int* batch) const {
    if (!deterministic) {
      *n_block = int(blockIdx.x);
      *head = int(blockIdx.y);
      *batch = int(blockIdx.z);
      return;
    }
    int const nn = int(gridDim.x);
    int const groups = int(gridDim.y * gridDim.z);
    int const id = int(blockIdx.x) + nn * int(blockIdx.y + gridDim.y * blockIdx.z);
    // Chunks of det_groups groups (the last may be short), each launched
    // key block by key block, the chunk's groups fastest.
    int const chunk = id / (nn * det_groups);
    int const g0 = chunk * det_groups;
    int const in_chunk = min(det_groups, groups - g0);
    int const r = id - chunk * nn * det_groups;
    int const g = g0 + r % in_chunk;
    *n_block = nn - 1 - r / in_chunk;
    *head = g % int(gridDim.y);
    *batch = g / int(gridDim.y);
  }

  // Index of the dQ accumulator block that starts at blk: its entry in
  // sem_dq (deterministic) and dq_state (first store, bwd_dq.h).
  __device__ __forceinline__ int64_t dq_block_index(const float* blk) const {
    return (blk - dq_accum) / (Traits::kBlockM * Traits::D);
  }

  // First row of the GQA dK/dV accumulator for key block n_block.
  template <bool kVarlen>
  __device__ __forceinline__ int64_t dkv_accum_row(int batch, int head_k, int n_block) const {
    int64_t r;
    if constexpr (kVarlen) r = int64_t(head_k) * sk_pad + bwd_pad_start(side_k(), batch, kBwdPadN);
    else r = (int64_t(batch) * num_heads_k + head_k) * sk_pad;
    return r + int64_t(n_block) * Traits::kBlockN;
  }

  // Query-block range [m_lo, m_hi) whose rows see any key of block n
  // (MaskSpec::row_range in int32), under the CTA's mask.
  __device__ __forceinline__ static void m_range(FwdMask const& mask, int n_block, int* m_lo,
                                                 int* m_hi) {
    int const seqlen_q = mask.seqlen_q, seqlen_k = mask.seqlen_k;
    int c0 = n_block * Traits::kBlockN;
    int c1 = min(c0 + Traits::kBlockN, seqlen_k);
    int off = seqlen_k - seqlen_q;
    int b = 0, e = seqlen_q;
    if (mask.right >= 0) b = max(c0 - off - mask.right, 0);
    if (mask.left >= 0) e = min(c1 - 1 - off + mask.left + 1, seqlen_q);
    if (e < b) e = b;
    b = min(b, seqlen_q);
    *m_lo = b / Traits::kBlockM;
    *m_hi = e > b ? (e + Traits::kBlockM - 1) / Traits::kBlockM : *m_lo;
  }
};

template <class Traits>
struct BwdProducer {
  using Pipeline = typename Traits::MainloopPipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, D = Traits::D;

  // Whole producer warp calls; lane 0 issues. Varlen: the tensors are the
  // packed ones (batch extent 1) and the CTA's rows start at its sequence's
  // offset; tiles reaching past the sequence read the next one's rows, which
  // the consumers mask (or TMA's zero fill past the tensor's end).
  __device__ __forceinline__ static void run(BwdKernelParams<Traits> const& p,
                                             typename Traits::SharedStorage& ss,
                                             Pipeline& pipe_q,
                                             typename Traits::PipelinedO& pipe_do, int n_block,
                                             int head, BwdSeq const& sq, int m_lo, int m_hi,
                                             bool leader) {
    if (leader && m_hi > m_lo) {
      auto qshape = make_shape(p.rows_q, int(D), p.num_heads, p.tma_batch);
      auto kshape = make_shape(p.rows_k, int(D), p.num_heads_k, p.tma_batch);
      int head_k = head / p.h_h_k_ratio;
      auto qoff = make_coord(sq.q_row, _0{});
      auto koff = make_coord(sq.k_row, _0{});
      Tensor mQ = domain_offset(qoff, p.tma_q.get_tma_tensor(qshape)(_, _, head, sq.tma_batch));
      Tensor mdO = domain_offset(qoff, p.tma_do.get_tma_tensor(qshape)(_, _, head, sq.tma_batch));
      Tensor mK = domain_offset(koff, p.tma_k.get_tma_tensor(kshape)(_, _, head_k, sq.tma_batch));
      Tensor mV = domain_offset(koff, p.tma_v.get_tma_tensor(kshape)(_, _, head_k, sq.tma_batch));
      Tensor gQ = local_tile(mQ, Shape<Int<kBlockM>, Int<D>>{}, make_coord(_, _0{}));
      Tensor gdO = local_tile(mdO, Shape<Int<kBlockM>, Int<D>>{}, make_coord(_, _0{}));
      Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<D>>{}, make_coord(n_block, _0{}));
      Tensor gV = local_tile(mV, Shape<Int<kBlockN>, Int<D>>{}, make_coord(n_block, _0{}));
      auto tq = p.tma_q.get_slice(_0{});
      auto tdo = p.tma_do.get_slice(_0{});
      auto tk = p.tma_k.get_slice(_0{});
      auto tv = p.tma_v.get_slice(_0{});
      Tensor tQgQ = tq.partition_S(gQ);    // (TMA, .., m_blocks)
      Tensor tQsQ = tq.partition_D(ss.q());    // (TMA, .., stages)
      Tensor tdOgdO = tdo.partition_S(gdO);
      Tensor tdOsdO = tdo.partition_D(ss.dO());

      ss.barrier_k.arrive_and_expect_tx(Traits::kTmaBytesKV);
      copy(p.tma_k.with(reinterpret_cast<uint64_t&>(ss.barrier_k), 0), tk.partition_S(gK),
           tk.partition_D(ss.k()));
      PipelineState state = cutlass::make_producer_start_state<Pipeline>();
      auto state_do = cutlass::make_producer_start_state<typename Traits::PipelinedO>();
      // Not unrolled: the producer runs on 24 registers (setmaxnreg).
#pragma unroll 1
      for (int m = m_lo; m < m_hi; ++m) {
        pipe_q.producer_acquire(state);
        copy(p.tma_q.with(*pipe_q.producer_get_barrier(state), 0), tQgQ(_, _, _, m),
             tQsQ(_, _, _, state.index()));
        if constexpr (Traits::kSwapSdP) {  // rows padded: in bounds, 16-byte aligned
          SM90_BULK_COPY_G2S::copy(p.lse2 + sq.ws_row + m * kBlockM,
                                   pipe_q.producer_get_barrier(state),
                                   ss.smem_lse2.data() + state.index() * kBlockM,
                                   Traits::kRowStatBytes);
        }
        if (m == m_lo) {  // V after the first Q, before the first dO (barrier_v)
          ss.barrier_v.arrive_and_expect_tx(Traits::kTmaBytesKV);
          copy(p.tma_v.with(reinterpret_cast<uint64_t&>(ss.barrier_v), 0), tv.partition_S(gV),
               tv.partition_D(ss.v()));
        }
        pipe_do.producer_acquire(state_do);
        copy(p.tma_do.with(*pipe_do.producer_get_barrier(state_do), 0), tdOgdO(_, _, _, m),
             tdOsdO(_, _, _, state_do.index()));
        if constexpr (Traits::kSwapSdP) {
          SM90_BULK_COPY_G2S::copy(p.dpsum + sq.ws_row + m * kBlockM,
                                   pipe_do.producer_get_barrier(state),
                                   ss.smem_dpsum.data() + state.index() * kBlockM,
                                   Traits::kRowStatBytes);
        }
        ++state;
        ++state_do;
      }
      // Drain: wait until the consumers released every stage, so the CTA does
      // not exit with TMA loads in flight.
      pipe_q.producer_tail(state);
      pipe_do.producer_tail(state_do);
    }
    __syncwarp();
  }
};

}  // namespace jax_fa3::hopper
