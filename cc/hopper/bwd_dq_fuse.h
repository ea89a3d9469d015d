// The dQ convert fused into the backward's main kernel (JAX_FA3_BWD).
//
// The separate convert (bwd_dq_convert_kernel) re-reads the whole fp32
// accumulator from memory after the main kernel: ~70 us per 16k-token d128
// call on the H100 (ncu), 4-5 % of a 2k backward and of the packed-document
// one. Here the last CTA of each (sequence, head) to finish converts that
// head's dQ itself, from L2, while the other SMs go on with the main
// kernel's remaining CTAs:
//   - every CTA of the (sequence, head) counts itself in p.dq_done (per
//     (batch or sequence, head), zeroed by the preprocess) once its dQ adds
//     are complete: its writer warp(s), in parallel with the consumers' dK/dV
//     epilogue (bwd_dq_fuse_signal);
//   - the CTA whose count completes the total converts (bwd_dq_fuse_convert),
//     with its 256 consumer threads, after its epilogue, and marks the head
//     kDqConverted for the separate kernel, which converts every other head.
// Only the last CTA can convert: without a causal mask every key block adds
// into every query block. Converting on one SM pays off while other CTAs
// wait for an SM; once every CTA of the grid has started it would make the
// kernel's tail (a d128 8k causal head took ~100 us: 0.96x), so a last CTA
// that finds all CTAs started (p.dq_started) leaves its head to the
// separate kernel, which converts those few at the whole GPU's bandwidth.
// Sequences longer than p.dq_fuse_rows, and varlen sequences without keys
// (no CTA of their own), are the separate kernel's too.
// Not with d256's dQ reductions by the consumers (kBwdDqRed): no writer
// warp sees their completion.
#pragma once

#include "cc/hopper/kernel_traits.h"  // first: extended WGMMA shapes

#include <cute/arch/copy_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>

#include "cc/hopper/bwd_dq.h"
#include "cc/hopper/bwd_trace.h"
#include "cc/hopper/epilogue_bwd.h"
#include "cc/hopper/mainloop_bwd.h"

namespace jax_fa3::hopper {

template <class Traits>
constexpr bool kBwdDqFuse = !kBwdDqRed<Traits>;

// Whether this CTA's sequence takes part in the fused convert (the
// separate kernel converts every head not marked kDqConverted).
template <class Traits>
__device__ __forceinline__ bool bwd_dq_fused(BwdKernelParams<Traits> const& p,
                                             FwdMask const& seq_mask) {
  if constexpr (!kBwdDqFuse<Traits>) return false;
  return p.dq_fuse_rows > 0 && seq_mask.seqlen_q <= p.dq_fuse_rows;
}

// How many signals complete the count of (batch or sequence, head): one per
// active writer warp of each of its CTAs (those of its key blocks).
template <class Traits>
__device__ __forceinline__ int bwd_dq_fuse_target(BwdKernelParams<Traits> const& p,
                                                  FwdMask const& seq_mask) {
  return bwd_dq_writers<Traits>(p.deterministic) * ((seq_mask.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN);
}

// Writer warp `writer`'s lane 0, after its last dQ add: wait for its bulk
// reduces to be complete (not only read), publish them, count the CTA, and
// tell the consumers (ss.dq_done, one arrival per writer) whether the count
// is now complete. Only the last CTA needs the acquire fence after the
// count (and, through the mbarrier, its consumers' reads). This wait costs
// every CTA ~0.8 us before it can end (d128 2k CTA timeline: 0.94 us from
// the epilogue's end to the count; the reduce's completion is most of it).
template <class Traits>
__device__ __forceinline__ void bwd_dq_fuse_signal(BwdKernelParams<Traits> const& p,
                                                   typename Traits::SharedStorage& ss,
                                                   FwdMask const& mask, int bh, int writer) {
  bulk_wait_complete();
  __threadfence();
  int const old = atomicAdd(p.dq_done + bh, 1);
  bool const last = old == bwd_dq_fuse_target(p, mask) - 1;
  if (last) __threadfence();
  ss.dq_last[writer] = last ? 1 : 0;
  ss.dq_done.arrive();
}

// How many CTAs of the grid do work (every CTA counts itself in
// p.dq_started at its start): dense, all; varlen, the key blocks of every
// sequence, per head. Consumer threads (tid < 256) together; `sum` is
// kDqSumInts ints of shared memory (one per consumer warp, then the
// started count); also returns thread 0's read of p.dq_started,
// taken before the barrier, so that every thread decides alike.
template <class Traits, bool kVarlen>
__device__ __forceinline__ void bwd_dq_fuse_progress(BwdKernelParams<Traits> const& p,
                                                     int* sum, int tid, int* started,
                                                     int* total) {
  int part = 0;
  if constexpr (kVarlen) {
    VarlenSide const vk = p.side_k();
    int const num_seqs = int(gridDim.z);
    for (int s = tid; s < num_seqs; s += 256)
      part += int((vk.len(s) + Traits::kBlockN - 1) / Traits::kBlockN);
    CUTE_UNROLL
    for (int o = 16; o > 0; o /= 2) part += __shfl_xor_sync(0xffffffffu, part, o);
    if (tid % 32 == 0) sum[tid / 32] = part;
  }
  constexpr int kWarps = Traits::kNumMmaThreads / 32;
  static_assert(kWarps + 1 <= kDqSumInts);
  if (tid == 0) sum[kWarps] = *reinterpret_cast<volatile int*>(p.dq_started);
  cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kDsFull));
  *started = sum[kWarps];
  if constexpr (kVarlen) {
    int t = 0;
    CUTE_UNROLL
    for (int w = 0; w < kWarps; ++w) t += sum[w];
    *total = t * p.num_heads;
  } else {
    *total = int(gridDim.x * gridDim.y * gridDim.z);
  }
}

// The convert's stages: shared-memory buffers of one fp32 accumulator block
// each, free once the mainloop and the epilogue are done (Q, dO, the dQ
// staging buffer, and dS where it is large enough), filled by bulk copies.
template <class Traits>
struct BwdDqCvtStages {
  using SS = typename Traits::SharedStorage;
  static constexpr int kBytes = Traits::kBlockM * Traits::D * int(sizeof(float));
  static_assert(sizeof(SS::smem_q) >= kBytes && sizeof(SS::smem_do) >= kBytes &&
                sizeof(SS::smem_dq) >= kBytes);
  static constexpr bool kDs = sizeof(SS::smem_ds) >= kBytes;
  static constexpr int kCount = kDs ? 4 : 3;
  __device__ __forceinline__ static float* at(SS& ss, int s) {
    void* p = s == 0 ? static_cast<void*>(ss.smem_q.data())
              : s == 1 ? static_cast<void*>(ss.smem_do.data())
              : s == 2 ? static_cast<void*>(ss.smem_dq.data())
                       : static_cast<void*>(ss.smem_ds.data());
    return static_cast<float*>(p);
  }
};

// Consumers (tid < 256), after the dK/dV epilogue: if this CTA completed
// its head's count and some CTA of the grid has yet to start, convert
// every query block of the (sequence, head) into dQ rows. The blocks come
// through BwdDqCvtStages::kCount shared-memory stages by bulk copies, that
// many blocks ahead: one SM's convert is bound by its loads in flight (two
// blocks ahead in registers: ~46 GB/s, 32 us per d128 2k head; L2
// prefetches of the head's blocks first did not change it). The staging
// tile of the rows lives over smem_k and smem_v (adjacent; the epilogue's
// dK/dV reads of them end at the first barrier here).
template <class Traits, bool kVarlen>
__device__ __forceinline__ void bwd_dq_fuse_convert(BwdKernelParams<Traits> const& p,
                                                    typename Traits::SharedStorage& ss,
                                                    int batch, int head, int tid) {
  using C = BwdDqConvert<Traits>;
  using St = BwdDqCvtStages<Traits>;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kS = St::kCount;
  static_assert(C::kChunks == 1);
  static_assert(C::kTileElems * sizeof(Element) <= sizeof(ss.smem_k) + sizeof(ss.smem_v));
  int const writers = bwd_dq_writers<Traits>(p.deterministic);
  ss.dq_done.wait(0);
  if (tid == 0) JAX_FA3_BWD_TRACE_AT(p, 8);
  if (!(ss.dq_last[0] || (writers == 2 && ss.dq_last[1]))) return;
  // Generic-proxy writes to the stages (dS, dQ staging, GQA's dK/dV) come
  // before the bulk copies' writes; the barrier below orders every thread's.
  cutlass::arch::fence_view_async_shared();
  // (Its barrier also ends the epilogue's use of smem_k / smem_v.)
  int started, total;
  bwd_dq_fuse_progress<Traits, kVarlen>(p, ss.dq_sum, tid, &started, &total);
  if (started >= total) return;  // the tail: the separate kernel's
  int const bh = batch * p.num_heads + head;
  FwdMask const& mask = bwd_cta_mask<kVarlen>(p, ss);
  int const seqlen_q = mask.seqlen_q;
  int const nblk = (seqlen_q + kBlockM - 1) / kBlockM;
  // First store (bwd_dq.h): blocks no CTA reached are zeros, not fetched
  // (every CTA of the head has counted, so the states are final).
  auto unwritten = [&](int m) {
    return p.dq_state != nullptr &&
           __ldcg(p.dq_state + p.dq_block_index(bwd_dq_block<Traits, kVarlen>(p, ss, bh, m))) ==
               kDqUnwritten;
  };
  auto fetch = [&](int m) {  // thread 0: block m into stage m % kS
    int const s = m % kS;
    if (unwritten(m)) {
      ss.dq_cvt[s].arrive();
      return;
    }
    ss.dq_cvt[s].arrive_and_expect_tx(St::kBytes);
    cute::SM90_BULK_COPY_G2S::copy(bwd_dq_block<Traits, kVarlen>(p, ss, bh, m),
                                   reinterpret_cast<uint64_t*>(&ss.dq_cvt[s]), St::at(ss, s),
                                   St::kBytes);
  };
  if (tid == 0) {
    p.dq_done[bh] = kDqConverted;  // read after this kernel
    // The other CTAs' adds were seen through the generic proxy (the count);
    // the bulk copies read them through the async proxy. (CUTLASS 4.2 wraps
    // only the shared-memory form of this fence.)
    asm volatile("fence.proxy.async.global;" ::: "memory");
    for (int m = 0; m < kS && m < nblk; ++m) fetch(m);
  }
  Element* out = static_cast<Element*>(p.dq) + int64_t(head) * p.q_head_stride;
  if constexpr (kVarlen) out += int64_t(ss.seq.q_row) * p.q_row_stride;
  else out += int64_t(batch) * p.q_batch_stride;
  Element* tile = ss.smem_k.data();
  auto sync = [] { cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kDsFull)); };
#pragma unroll 1
  for (int m = 0; m < nblk; ++m) {
    int const s = m % kS;
    bool const zero = unwritten(m);  // read before the wait, which hides its latency
    ss.dq_cvt[s].wait(uint32_t(m / kS) & 1u);
    float4 v[C::kLoads];
    C::load_smem(St::at(ss, s), v, tid);
    if (zero) C::zero(v);
    sync();  // every thread has read stage s
    if (tid == 0 && m + kS < nblk) fetch(m + kS);
    int const row0 = m * kBlockM;
    int const rows = seqlen_q - row0 < kBlockM ? seqlen_q - row0 : kBlockM;
    C::store(v, 0, out + int64_t(row0) * p.q_row_stride, rows, p.q_row_stride, p.softmax_scale,
             tile, tid, sync);
  }
  if (tid == 0) JAX_FA3_BWD_TRACE_AT(p, 9);
}

}  // namespace jax_fa3::hopper
