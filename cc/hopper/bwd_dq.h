// dQ accumulation of the Hopper backward (JAX_FA3_BWD).
//
// Every CTA (one key block) adds its dQ partial of each query block into an
// fp32 accumulator in the workspace. Scalar atomicAdd per element made the
// whole backward L2-atomic bound (~200 TF/s at d128 on the H100), so, as in
// FA3, each consumer thread writes its accumulator fragment to shared memory
// and one thread issues a single bulk reduce-add (cp.reduce.async.bulk) of
// the whole chunk, asynchronously.
//
// The accumulator's layout is ours alone (only the converts, BwdDqConvert,
// read it), so it is stored in *fragment order*: each (query block, chunk) is two
// halves, one per consumer warpgroup w, and element i of thread t of w sits
// at w * half + ((i / 4) * 128 + t) * 4 + i % 4. Each warpgroup reduces its
// own half, so the two need not synchronize for dQ.
// The shared-memory writes are then conflict-free float4 stores, and the
// chunk is one contiguous run of bytes in both memories, which is what the
// plain (non-tensor) bulk reduce needs.
#pragma once

#include "cc/hopper/kernel_traits.h"  // first: extended WGMMA shapes

#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/tensor.hpp>

#include "cc/hopper/bwd_scratch.h"

namespace jax_fa3::hopper {

using namespace cute;

// dq_done[bh] once the main kernel has converted head bh's dQ itself
// (bwd_dq_fuse.h; the counts there are >= 0).
constexpr int kDqConverted = -1;

// First store (BwdKernelParams::dq_state not null; BwdWorkspace::
// dq_first_store): the accumulator is not zeroed. Each block has a state,
// zeroed by the preprocess with the counts. The writer warp of the first
// CTA to reach a block claims it (atomicCAS kDqUnwritten -> kDqStoring)
// and *stores* its partial there with a plain bulk copy; once the copy is
// complete it publishes kDqStored. Any other CTA adds (bulk reduce), after
// it has seen kDqStored (waiting while it sees kDqStoring). Blocks no CTA
// reaches stay kDqUnwritten, and the converts give zeros for them. The
// preprocess then moves half the bytes (O and dO read, nothing written
// but lse2 / dPsum): 134 MB less per 16k-token d128 call. A CTA waits when
// it reaches a block while another is storing there: rare under a causal
// or local mask, at most steps without one (the key blocks of a head walk
// the query blocks in step), where the launcher keeps the zeroed
// accumulator (BwdWorkspace::dq_first_store says when, with measurements).
constexpr int kDqUnwritten = 0, kDqStoring = 1, kDqStored = 2;

// CuTe 4.2 wraps only the *tensor* bulk reduces (SM90_TMA_REDUCE_ADD_*,
// which need a tensor map); the contiguous form is one instruction.
__device__ __forceinline__ void bulk_reduce_add_f32(float* gmem, const float* smem,
                                                    uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;"
               :
               : "l"(gmem), "r"(cute::cast_smem_ptr_to_uint(smem)), "r"(bytes)
               : "memory");
}

// Waits until this thread's bulk operations are *complete* (their global
// writes performed), not only done reading shared memory (tma_store_wait):
// the deterministic mode hands the accumulator to the next CTA after this.
__device__ __forceinline__ void bulk_wait_complete() {
  asm volatile("cp.async.bulk.wait_group 0;" : : : "memory");
}

// Row / column of the tile for coordinate c of an accumulator that holds the
// tile (kT false) or its transpose (d256's dQ^T, dK^T, dV^T).
template <bool kT, class C>
__host__ __device__ __forceinline__ int tile_row(C const& c) {
  if constexpr (kT) return int(cute::get<1>(c)); else return int(cute::get<0>(c));
}
template <bool kT, class C>
__host__ __device__ __forceinline__ int tile_col(C const& c) {
  if constexpr (kT) return int(cute::get<0>(c)); else return int(cute::get<1>(c));
}

// Thread t's fp32 fragment in fragment order: f(float4 index, value).
template <int kThreads, class Frag, class F>
__device__ __forceinline__ void dq_frag_for_each(Frag const& frag, int t, F&& f) {
  static_assert(decltype(size(frag))::value % 4 == 0);
  CUTE_UNROLL
  for (int j = 0; j < size(frag) / 4; ++j) {
    f(j * kThreads + t,
      make_float4(frag(4 * j), frag(4 * j + 1), frag(4 * j + 2), frag(4 * j + 3)));
  }
}

// Thread t's fp32 fragment -> shared memory in fragment order.
template <int kThreads, class Frag>
__device__ __forceinline__ void dq_frag_store(Frag const& frag, float* smem, int t) {
  float4* dst = reinterpret_cast<float4*>(smem);
  dq_frag_for_each<kThreads>(frag, t, [&](int i, float4 v) { dst[i] = v; });
}

// Thread t's fp32 fragment added straight into the accumulator in global
// memory (same order) with vector reductions (sm_90 red.v4.f32): a warp's
// instruction adds 512 contiguous bytes. Not ordered, so never used by the
// deterministic mode.
template <int kThreads, class Frag>
__device__ __forceinline__ void dq_frag_red(Frag const& frag, float* gmem, int t) {
  dq_frag_for_each<kThreads>(frag, t, [&](int i, float4 v) {
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};"
                 :
                 : "l"(gmem + 4 * i), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
                 : "memory");
  });
}

// Query block -> output rows: dQ = softmax_scale * accumulator, cast to the
// input dtype. kThreads = kNumMmaThreads threads; thread t undoes the
// fragment order of consumer thread t with the same TiledMma partition the
// main kernel used. Per chunk, load() fetches the thread's float4s (through
// L2: in the fused convert the main kernel's other CTAs wrote them moments
// before) and store() puts the converted values into `tile` in row-major
// order first, then out in 16-byte row segments: the fragment order puts a
// thread's 4 values in different rows and columns, and storing those 2-byte
// values straight to global memory ran the convert at ~1.2 TB/s (0.34 ms
// per 32k x 16 heads x d128 call on an H200; session 7 ring trace).
// `sync` synchronizes the kThreads threads (the tile is reused per call).
template <class Traits>
struct BwdDqConvert {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM, D = Traits::D;
  static constexpr int kChunks = Traits::kDqChunks, kChunk = Traits::kDqChunk;
  static constexpr int kWg = 128, kHalf = kBlockM * kChunk / 2;
  static constexpr int kThreads = Traits::kNumMmaThreads;
  // Row pitch with 8 elements (16 bytes) of padding: rows start in
  // different banks, and every 16-byte segment stays aligned.
  static constexpr int kPitch = kChunk + 8, kVecs = kChunk / 8;
  static_assert(kChunk % 8 == 0, "16-byte segments");
  static constexpr int kTileElems = kBlockM * kPitch;
  static constexpr int kLoads = kBlockM * kChunk / kThreads / 4;  // float4 per thread per chunk
  static_assert(kLoads * 4 * kThreads == kBlockM * kChunk);

  __device__ __forceinline__ static void load(const float* blk, int ch, float4 (&v)[kLoads],
                                              int t) {
    const float4* src =
        reinterpret_cast<const float4*>(blk + ch * kBlockM * kChunk + (t / kWg) * kHalf);
    CUTE_UNROLL
    for (int j = 0; j < kLoads; ++j) v[j] = __ldcg(src + j * kWg + t % kWg);
  }

  // A block no CTA wrote (first store, kDqUnwritten): zeros instead of a load.
  __device__ __forceinline__ static void zero(float4 (&v)[kLoads]) {
    CUTE_UNROLL
    for (int j = 0; j < kLoads; ++j) v[j] = make_float4(0.f, 0.f, 0.f, 0.f);
  }

  // The same from a copy of the block (chunk 0) in shared memory.
  __device__ __forceinline__ static void load_smem(const float* blk, float4 (&v)[kLoads],
                                                   int t) {
    const float4* src = reinterpret_cast<const float4*>(blk + (t / kWg) * kHalf);
    CUTE_UNROLL
    for (int j = 0; j < kLoads; ++j) v[j] = src[j * kWg + t % kWg];
  }

  // rows: how many of the block's rows exist (<= kBlockM); out: its first
  // row, column 0 of chunk 0.
  template <class Sync>
  __device__ __forceinline__ static void store(float4 const (&v)[kLoads], int ch, Element* out,
                                               int rows, int64_t row_stride, float scale,
                                               Element* tile, int t, Sync&& sync) {
    typename Traits::TiledMmadQ mma;
    auto thr = mma.get_thread_slice(t);
    Tensor cQ = thr.partition_C(make_identity_tensor(typename Traits::ShapedQ{}));
    static_assert(decltype(size(cQ))::value == 4 * kLoads);
    CUTE_UNROLL
    for (int j = 0; j < kLoads; ++j) {
      float const vals[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
      CUTE_UNROLL
      for (int k = 0; k < 4; ++k) {
        int const row = tile_row<Traits::kDqSwap>(cQ(4 * j + k));
        int const col = tile_col<Traits::kDqSwap>(cQ(4 * j + k));
        tile[row * kPitch + col] = static_cast<Element>(vals[k] * scale);
      }
    }
    sync();
    for (int i = t; i < rows * kVecs; i += kThreads) {
      int const row = i / kVecs, seg = i - row * kVecs;
      *reinterpret_cast<uint4*>(out + int64_t(row) * row_stride + ch * kChunk + seg * 8) =
          *reinterpret_cast<const uint4*>(tile + row * kPitch + seg * 8);
    }
    sync();  // the next call reuses the tile
  }
};

// The accumulator -> dQ for the heads the main kernel did not convert
// itself (done[bh] != kDqConverted, bwd_dq_fuse.h; done indexed by (batch
// or sequence, head)); state: the blocks' first-store states, or null.
// Grid (num_m, heads, batch), kNumMmaThreads threads (BwdDqConvert).
// Varlen (vq.cu not null): grid (padded query blocks of all sequences,
// heads, 1); block m finds its sequence (bwd_scratch.h) and writes the rows
// below its attended length at its offset in the packed output (offsets
// clamped by VarlenSide, varlen.h).
template <class Traits>
__global__ void __launch_bounds__(Traits::kNumMmaThreads)
    bwd_dq_convert_kernel(const float* acc, typename Traits::Element* dq, int seqlen_q,
                          int num_heads, int num_m, int64_t batch_stride, int64_t row_stride,
                          int64_t head_stride, float scale, VarlenSide vq, int num_seqs,
                          const int* done, const int* state) {
  using C = BwdDqConvert<Traits>;
  constexpr int kBlockM = Traits::kBlockM, D = Traits::D;
  __shared__ __align__(16) typename C::Element tile[C::kTileElems];
  int const m = blockIdx.x, head = blockIdx.y, batch = blockIdx.z, t = threadIdx.x;
  int const bh = batch * num_heads + head;
  int m_row = m * kBlockM;  // first row of the block in the sequence
  int64_t seq_row = 0;      // row of the sequence's row 0 in the output
  int done_at = bh;
  if (vq.cu != nullptr) {
    int b = bwd_pad_seq(vq, num_seqs, m_row, kBwdPadM);
    m_row -= int(bwd_pad_start(vq, b, kBwdPadM));
    seq_row = vq.start(b);
    seqlen_q = int(vq.len(b));
    done_at = b * num_heads + head;
    if (m_row < 0 || m_row >= seqlen_q) return;  // padding between sequences (whole block)
  }
  if (done[done_at] == kDqConverted) return;  // by the main kernel
  int const rows = seqlen_q - m_row < kBlockM ? seqlen_q - m_row : kBlockM;
  int64_t const blk_index = int64_t(bh) * num_m + m;
  const float* blk = acc + blk_index * (kBlockM * D);
  // First store: a block no CTA reached holds whatever was there.
  bool const unwritten = state != nullptr && state[blk_index] == kDqUnwritten;
  typename C::Element* out =
      dq + batch * batch_stride + (seq_row + m_row) * row_stride + head * head_stride;
  CUTE_UNROLL
  for (int ch = 0; ch < C::kChunks; ++ch) {
    float4 v[C::kLoads];
    if (unwritten) C::zero(v);
    else C::load(blk, ch, v, t);
    C::store(v, ch, out, rows, row_stride, scale, tile, t, [] { __syncthreads(); });
  }
}

}  // namespace jax_fa3::hopper
