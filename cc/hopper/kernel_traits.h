// Compile-time configuration of the Hopper forward kernel: tile shapes per
// head dim, shared-memory layouts, pipeline depth, warp-group roles, and the
// WGMMA atoms. Everything the kernel needs to know statically lives here so
// the other headers are generic in `Traits`.
#pragma once

// The 64xNx16 WGMMA atoms with N not a power of two (80, 96, 112, 192, ...)
// are behind this switch in CuTe; our tiles use them.
#ifndef CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#endif

#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

namespace jax_fa3::hopper {

using namespace cute;

// Block shapes per head dim (bf16/fp16). Each consumer warpgroup owns 64
// query rows (WGMMA's M); kBlockM = 64 * kMmaWG. kBlockN is the key-block
// width. smem = Q + stages * (K + V) must stay under the 227 KB a block gets
// (the epilogue writes O straight from registers, so none is set aside):
//   d=64 : 128x128, 2 WGs, 3 stages: 16K + 3*32K = 112 KB  (causal / local)
//          192x128, 3 WGs, 3 stages: 24K + 3*32K = 120 KB  (otherwise)
//   d=96 : 128x128, 2 WGs, 2 stages: 24K + 2*48K = 120 KB
//   d=128: 128x128, 2 WGs, 2 stages: 32K + 2*64K = 160 KB
//          128x176, 2 WGs, 2 stages: 32K + 2*88K = 208 KB  (no mask, long
//          seqlen_k: kD128WideBlockN, launch_fwd.h)
//   d=192: 128x64 , 2 WGs, 3 stages: 48K + 3*48K = 192 KB
//   d=256: 128x80 , 2 WGs, 2 stages: 64K + 2*80K = 224 KB
// Measured on H100 (tests/cuda, bf16): d=256 overlapped without pingpong at
// 24/240 registers (FA3's choice) ran 1.12-1.24x the serial 128x64 tile
// (16k: 599 -> 742 TF/s non-causal), 128x64 overlapped 1.07-1.13x; d=64
// with 3 warpgroups ran 6-8% faster non-causal but 25% slower causal at 2k,
// hence two variants.
// Registers (setmaxnreg): the producer's + consumers' counts must fit in
// what the CTA got at launch (65536 / threads, rounded down to 8, x threads):
// 168 x 384 = 64512 for 2 consumer WGs, 128 x 512 = 65536 for 3.
template <int D, int WG> struct TileConfig;
template <> struct TileConfig<64, 2> {
  static constexpr int kBlockN = 128, kStages = 3, kProducerRegs = 40, kConsumerRegs = 232;
};
template <> struct TileConfig<64, 3> {
  static constexpr int kBlockN = 128, kStages = 3, kProducerRegs = 32, kConsumerRegs = 160;
};
template <> struct TileConfig<96, 2> {
  static constexpr int kBlockN = 128, kStages = 2, kProducerRegs = 40, kConsumerRegs = 232;
};
template <> struct TileConfig<128, 2> {
  static constexpr int kBlockN = 128, kStages = 2, kProducerRegs = 40, kConsumerRegs = 232;
};
template <> struct TileConfig<192, 2> {
  static constexpr int kBlockN = 64, kStages = 3, kProducerRegs = 40, kConsumerRegs = 232;
};
template <> struct TileConfig<256, 2> {
  static constexpr int kBlockN = 80, kStages = 2, kProducerRegs = 24, kConsumerRegs = 240;
};

// FA3's key block for d=128 without causal / window: fewer softmax passes and
// pipeline hand-offs per FLOP. Spill-free only because the unmasked kernel
// keeps the mask code out of its loop (FwdTraits::kUnmasked): with it there,
// ptxas spilled ~100-160 bytes. H100 harness against 128 (non-causal): 1.02
// at 8k, 1.05-1.08 at 16k, 0.98 at 2k where its last block is 3 % padding.
inline constexpr int kD128WideBlockN = 176;

// Largest 128B/64B/32B swizzle atom whose row (contiguous run along head_dim)
// divides D: K-major for Q and K, and, read transposed, MN-major for V.
template <class Element, int D>
CUTE_HOST_DEVICE constexpr auto kmajor_atom() {
  if constexpr (D % 64 == 0) return GMMA::Layout_K_SW128_Atom<Element>{};
  else if constexpr (D % 32 == 0) return GMMA::Layout_K_SW64_Atom<Element>{};
  else return GMMA::Layout_K_SW32_Atom<Element>{};
}

// kBlockN_ != 0 overrides the key-block width of TileConfig (launch_fwd.h's
// wide unmasked d=128 tile); such a variant has no varlen kernel.
template <int kHeadDim_, class Element_, int kMmaWG_ = 2, int kBlockN_ = 0>
struct FwdTraits {
  using Element = Element_;   // cutlass::bfloat16_t or cutlass::half_t
  using ElementAcc = float;
  static constexpr int kHeadDim = kHeadDim_;
  using Config = TileConfig<kHeadDim_, kMmaWG_>;
  static constexpr int kBlockN = kBlockN_ != 0 ? kBlockN_ : Config::kBlockN;
  // The varlen kernel is built for the default 2-warpgroup configs only.
  static constexpr bool kHasVarlenKernel = kMmaWG_ == 2 && kBlockN_ == 0;
  static constexpr int kStages = Config::kStages;

  // Warp roles: warpgroup 0 = producer (one warp issues all TMA loads),
  // warpgroups 1.. = consumers (64 query rows each).
  static constexpr int kNumMmaWarpGroups = kMmaWG_;
  static constexpr int kBlockM = 64 * kNumMmaWarpGroups;
  static constexpr int kNumThreads = 128 * (1 + kNumMmaWarpGroups);
  static constexpr int kNumMmaThreads = 128 * kNumMmaWarpGroups;
  // setmaxnreg split (TileConfig): 40 for the producer and 232 per consumer
  // thread, or 24/240 where the consumers need the extra registers. The sum
  // must stay within what the CTA got at launch (168 * 384 = 64512).
  static constexpr int kProducerRegs = Config::kProducerRegs;
  static constexpr int kConsumerRegs = Config::kConsumerRegs;
  // The varlen producer (sequence lookups per tile) spills ~380 bytes at 24
  // registers; the varlen kernel gives it 40 and its consumers 232 (its main
  // loop stays spill-free; per-tile scalars spill ~44 bytes at d=256).
  static constexpr int kProducerRegsVarlen = kProducerRegs == 24 ? 40 : kProducerRegs;
  static constexpr int kConsumerRegsVarlen = kProducerRegs == 24 ? 232 : kConsumerRegs;
  static_assert(kProducerRegs * 128 + kConsumerRegs * kNumMmaThreads <=
                (65536 / kNumThreads) / 8 * 8 * kNumThreads);
  static_assert(kProducerRegsVarlen * 128 + kConsumerRegsVarlen * kNumMmaThreads <=
                (65536 / kNumThreads) / 8 * 8 * kNumThreads);

  // FA3 §3.2 scheduling: intra-warpgroup overlap of softmax with the
  // WGMMAs, and pingpong of the consumer warpgroups. The overlapped mainloop
  // keeps S, P and O live at once; the 3-warpgroup d=64 (160 registers per
  // thread) spills with it, so it uses the serial mainloop. Pingpong: added
  // to the serial mainloop it cost 7-10% on H100 (d=64 3-WG 16k: 484 -> 438
  // TF/s), the strict hand-over adding waits; at d=256 (overlapped) it cost
  // 3-5% against none (FA3 also drops it above d=128), the two warpgroups'
  // long GEMMs interleave on their own.
#ifdef JAX_FA3_FWD_OVERLAP  // build-time overrides for experiments
  static constexpr bool kOverlap = JAX_FA3_FWD_OVERLAP;
#else
  static constexpr bool kOverlap = kNumMmaWarpGroups == 2;
#endif
#ifdef JAX_FA3_FWD_PINGPONG
  static constexpr bool kPingpong = JAX_FA3_FWD_PINGPONG;
#else
  static constexpr bool kPingpong = kOverlap && kHeadDim_ <= 192;
#endif
  // kernel_fwd.h (q_desc): recompute Q's descriptors per GEMM at d=256.
  static constexpr bool kRecomputeQDesc = kHeadDim_ == 256;
  // The wide variant runs only without causal / window (launch_fwd.h): every
  // key block but the last (processed first) is then fully visible.
  static constexpr bool kUnmasked = kBlockN_ != 0;

  using TileShapeQK = Shape<Int<kBlockM>, Int<kBlockN>, Int<kHeadDim>>;
  using TileShapePV = Shape<Int<kBlockM>, Int<kHeadDim>, Int<kBlockN>>;
  // Two warpgroups stacked along M; each owns 64 rows of S and O.
  using AtomLayoutMNK = Layout<Shape<Int<kNumMmaWarpGroups>, _1, _1>>;
  // S = Q K^T: both operands from swizzled smem, both K-major.
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, ElementAcc,
                           Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(),
      AtomLayoutMNK{}));
  // O += P V: P from registers (no smem round trip), V from smem read
  // transposed, i.e. MN-major.
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, ElementAcc,
                           Shape<_64, Int<kHeadDim>, Int<kBlockN>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      AtomLayoutMNK{}));

  using SmemAtom = decltype(kmajor_atom<Element, kHeadDim>());
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(tile_to_shape(
      SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutV = SmemLayoutK;
  // V^T view (head_dim, kBlockN, stage) of the same bytes: the K-major atom
  // (8 keys x 64 dims, dims contiguous) read with its modes swapped is exactly
  // the MN-major atom WGMMA wants for B = V^T.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{},
      make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{},
                          Step<_2, _1, _3>{})));

  using MainloopPipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename MainloopPipeline::PipelineState;

  static constexpr int kTmaBytesQ = kBlockM * kHeadDim * int(sizeof(Element));
  static constexpr int kTmaBytesKV = kBlockN * kHeadDim * int(sizeof(Element));

  struct SharedStorage {
    // 1024-byte alignment: the 128B swizzle pattern repeats every 1 KB and
    // TMA/WGMMA assume the atom starts on that boundary.
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> smem_q;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutK>, 1024> smem_k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutV>, 1024> smem_v;
    typename MainloopPipeline::SharedStorage pipeline_k;
    typename MainloopPipeline::SharedStorage pipeline_v;
    cutlass::arch::ClusterTransactionBarrier barrier_q;
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 232448, "tile does not fit in shared memory");

  // Global-memory view used to build the TMA descriptors:
  // (seqlen, head_dim, heads, batch), strides in elements, head_dim contiguous.
  using GmemStride = cute::Stride<int64_t, _1, int64_t, int64_t>;
  using GmemLayout = cute::Layout<cute::Shape<int32_t, int32_t, int32_t, int32_t>, GmemStride>;
  using TmaQ = decltype(make_tma_copy(
      SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
      SmemLayoutQ{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaKV = decltype(make_tma_copy(
      SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
      take<0, 2>(SmemLayoutK{}), Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
};

// Named-barrier ids (offset by CUTLASS's reserved ids inside NamedBarrier).
enum class FwdBarrier : uint32_t {
  kQueryEmpty = 0,   // consumers -> producer: Q smem may be overwritten
  kWarpSchedulerWG1 = 1,  // pingpong: WG1's turn to issue WGMMAs
  kWarpSchedulerWG2 = 2,  // pingpong: WG2's turn
};

}  // namespace jax_fa3::hopper
