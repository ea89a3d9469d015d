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

// Whether this CTA's sequence is converted in the kernel (the same test as
// bwd_dq_convert_kernel's, which skips those blocks).
template <class Traits>
__device__ __forceinline__ bool bwd_dq_fused(BwdKernelParams<Traits> const& p,
                                             FwdMask const& seq_mask) {
  if constexpr (!kBwdDqFuse<Traits>) return false;
  return seq_mask.seqlen_q <= p.dq_fuse_rows;
}

// How many signals complete the count of (batch or sequence, head): one per
// active writer warp of each of its CTAs (those of its key blocks).
template <class Traits>
__device__ __forceinline__ int bwd_dq_fuse_target(BwdKernelParams<Traits> const& p,
                                                  FwdMask const& seq_mask) {
  int const writers = bwd_dq_two_writers<Traits>(p.deterministic) ? 2 : 1;
  return writers * ((seq_mask.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN);
}

// Writer warp `writer`'s lane 0, after its last dQ add: wait for its bulk
// reduces to be complete (not only read), publish them, count the CTA, and
// tell the consumers (ss.dq_done, one arrival per writer) whether the count
// is now complete. Only the last CTA needs the acquire fence after the
// count (and, with it, the consumers' reads through the mbarrier); it also
// starts L2 prefetches of the head's blocks, so that the convert's loads
// meet L2 rather than memory (written up to ~60 us earlier at 2k, most of
// the accumulator had left L2: one SM converted ~46 GB/s without them).
template <class Traits, bool kVarlen>
__device__ __forceinline__ void bwd_dq_fuse_signal(BwdKernelParams<Traits> const& p,
                                                   typename Traits::SharedStorage& ss,
                                                   FwdMask const& mask, int bh, int writer) {
  bulk_wait_complete();
  __threadfence();
  int const old = atomicAdd(p.dq_done + bh, 1);
  bool const last = old == bwd_dq_fuse_target(p, mask) - 1;
  if (last) {
    __threadfence();
    int const nblk = (mask.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
    for (int m = 0; m < nblk; ++m) {
      cute::SM90_BULK_COPY_G2S::PREFETCH::copy(bwd_dq_block<Traits, kVarlen>(p, ss, bh, m),
                                               Traits::kBlockM * Traits::D * int(sizeof(float)));
    }
  }
  ss.dq_last[writer] = last ? 1 : 0;
  ss.dq_done.arrive();
}

// How many CTAs of the grid do work (every CTA counts itself in
// p.dq_started at its start): dense, all; varlen, the key blocks of every
// sequence, per head. Consumer threads (tid < 256) together; `sum` is
// 9 ints of shared memory; also returns thread 0's read of p.dq_started,
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
  if (tid == 0) sum[8] = *reinterpret_cast<volatile int*>(p.dq_started);
  cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kDsFull));
  *started = sum[8];
  if constexpr (kVarlen) {
    int t = 0;
    CUTE_UNROLL
    for (int w = 0; w < 8; ++w) t += sum[w];
    *total = t * p.num_heads;
  } else {
    *total = int(gridDim.x * gridDim.y * gridDim.z);
  }
}

// Consumers (tid < 256), after the dK/dV epilogue: if this CTA completed
// its head's count and some CTA of the grid has yet to start, convert
// every query block of the (sequence, head) into dQ rows. Blocks go in
// groups of kGroup, the loads of the next group issued before the current
// one is stored (two register buffers), so that L2 round trips overlap
// with the stores. The staging tile lives over smem_k and smem_v
// (adjacent; the epilogue's dK/dV reads of them end at the first barrier
// here).
template <class Traits, bool kVarlen>
__device__ __forceinline__ void bwd_dq_fuse_convert(BwdKernelParams<Traits> const& p,
                                                    typename Traits::SharedStorage& ss,
                                                    int batch, int head, int tid) {
  using C = BwdDqConvert<Traits>;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kGroup = C::kLoads > 8 ? 1 : 16 / C::kLoads;  // <= 16 float4 per buffer
  static_assert(C::kChunks == 1);
  static_assert(C::kTileElems * sizeof(Element) <= sizeof(ss.smem_k) + sizeof(ss.smem_v));
  int const writers = bwd_dq_two_writers<Traits>(p.deterministic) ? 2 : 1;
  ss.dq_done.wait(0);
  if (tid == 0) JAX_FA3_BWD_TRACE_AT(p, 8);
  if (!(ss.dq_last[0] || (writers == 2 && ss.dq_last[1]))) return;
  // (Its barrier also ends the epilogue's use of smem_k / smem_v.)
  int started, total;
  bwd_dq_fuse_progress<Traits, kVarlen>(p, ss.dq_sum, tid, &started, &total);
  if (started >= total) return;  // the tail: the separate kernel's
  int const bh = batch * p.num_heads + head;
  if (tid == 0) p.dq_done[bh] = kDqConverted;  // read after this kernel
  FwdMask const& mask = bwd_cta_mask<kVarlen>(p, ss);
  int const seqlen_q = mask.seqlen_q;
  Element* out = static_cast<Element*>(p.dq) + int64_t(head) * p.q_head_stride;
  if constexpr (kVarlen) out += int64_t(ss.seq.q_row) * p.q_row_stride;
  else out += int64_t(batch) * p.q_batch_stride;
  Element* tile = ss.smem_k.data();
  int const nblk = (seqlen_q + kBlockM - 1) / kBlockM;
  auto sync = [] { cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kDsFull)); };
  auto load = [&](float4 (&v)[kGroup][C::kLoads], int m0) {
    CUTE_UNROLL
    for (int g = 0; g < kGroup; ++g) {
      if (m0 + g < nblk) C::load(bwd_dq_block<Traits, kVarlen>(p, ss, bh, m0 + g), 0, v[g], tid);
    }
  };
  auto store = [&](float4 const (&v)[kGroup][C::kLoads], int m0) {
    CUTE_UNROLL
    for (int g = 0; g < kGroup; ++g) {
      int const row0 = (m0 + g) * kBlockM;
      if (m0 + g < nblk) {
        int const rows = seqlen_q - row0 < kBlockM ? seqlen_q - row0 : kBlockM;
        C::store(v[g], 0, out + int64_t(row0) * p.q_row_stride, rows, p.q_row_stride,
                 p.softmax_scale, tile, tid, sync);
      }
    }
  };
  float4 a[kGroup][C::kLoads], b[kGroup][C::kLoads];
  load(a, 0);
#pragma unroll 1
  for (int m0 = 0; m0 < nblk; m0 += 2 * kGroup) {
    load(b, m0 + kGroup);
    store(a, m0);
    load(a, m0 + 2 * kGroup);
    store(b, m0 + kGroup);
  }
  if (tid == 0) JAX_FA3_BWD_TRACE_AT(p, 9);
}

}  // namespace jax_fa3::hopper
