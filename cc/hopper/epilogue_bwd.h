// Pieces of the backward consumer (JAX_FA3_BWD) shared by both step
// layouts (kernel_bwd.h: S = Q K^T; consumer_bwd_swap.h: S^T = K Q^T): the
// deterministic-mode semaphores, the masking of rows past a varlen
// sequence, the per-step dQ output and the dK/dV epilogue.
#pragma once

#include "cc/hopper/kernel_traits.h"  // first: extended WGMMA shapes

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_conversion.h>

#include "cc/hopper/bwd_dq.h"
#include "cc/hopper/mainloop_bwd.h"

namespace jax_fa3::hopper {

using namespace cute;

// The CTA's mask: the params' (dense, kept in constant/register
// addressing) or its sequence's (varlen, in smem).
template <bool kVarlen, class Params, class Storage>
__device__ __forceinline__ FwdMask const& bwd_cta_mask(Params const& p, Storage& ss) {
  if constexpr (kVarlen) return ss.seq.mask;
  else return p.mask;
}

__device__ __forceinline__ int bwd_ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Deterministic ordering: thread 0 of the consumers spins until *sem ==
// target, then all consumers proceed.
__device__ __forceinline__ void bwd_sem_wait(const int* sem, int target, int tid) {
  if (tid == 0) {
    while (bwd_ld_acquire(sem) != target) {
    }
  }
  cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kDsFull));
}
__device__ __forceinline__ void bwd_sem_signal(int* sem, int tid) {
  __threadfence();
  cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kDsFull));
  if (tid == 0) atomicAdd(sem, 1);
}

// Query rows at or past seqlen_q get -inf scores. Their lse2 is +inf, so P
// is already 0 for finite scores; this also covers non-finite ones (varlen
// tiles hold the next sequence's rows there). `coord` gives (query, key)
// offsets per (row, col) of `s`; the query is the row (kQueryCol false) or
// the column (true, the S^T layout).
template <bool kQueryCol, class TensorS, class TensorC>
__device__ __forceinline__ void bwd_mask_rows(TensorS& s, TensorC const& coord, int row0,
                                              int seqlen_q) {
  CUTE_UNROLL
  for (int r = 0; r < size<0>(s); ++r) {
    CUTE_UNROLL
    for (int c = 0; c < size<1>(s); ++c) {
      int const q = kQueryCol ? int(get<1>(coord(r, c))) : int(get<0>(coord(r, c)));
      if (row0 + q >= seqlen_q) s(r, c) = -INFINITY;
    }
  }
}

// Thread slice thr's fragment of the smem tensor t as operand A (kA) or B:
// d256 computes its dK / dV / dQ GEMMs transposed, with A and B exchanged.
template <bool kA, class ThrMma, class T>
__device__ __forceinline__ auto bwd_operand(ThrMma const& thr, T const& t) {
  if constexpr (kA) return thr.make_fragment_A(thr.partition_A(t));
  else return thr.make_fragment_B(thr.partition_B(t));
}

// The dQ GEMM's operands, the same for both step layouts: dS (.., dS
// stage) and K^T in kDqChunks chunks of D (.., chunk); A and B in that
// order, or swapped (kDqSwap: dQ^T = K^T dS^T).
template <class Traits, class ThrMma>
__device__ __forceinline__ auto bwd_dq_ds(ThrMma const& thr_dq, typename Traits::SharedStorage& ss) {
  return bwd_operand<!Traits::kDqSwap>(thr_dq, ss.ds());
}
template <class Traits, class ThrMma>
__device__ __forceinline__ auto bwd_dq_kt(ThrMma const& thr_dq, typename Traits::SharedStorage& ss) {
  auto chunks = local_tile(ss.kt(), Shape<Int<Traits::kDqChunk>, Int<Traits::kBlockN>>{},
                           make_coord(_, _0{}));
  return bwd_operand<Traits::kDqSwap>(thr_dq, chunks);
}
// Issues dQ chunk ch (zeroing the accumulator first).
template <class Traits, class MmaDq, class TdS, class TKt, class TC>
__device__ __forceinline__ void bwd_dq_issue(MmaDq& mma_dq, TdS const& tdQrdS, TKt const& tdQrKt,
                                             int ch, TC& tdQrdQ) {
  if constexpr (Traits::kDqSwap) wgmma_issue<true>(mma_dq, tdQrKt(_, _, _, ch), tdQrdS, tdQrdQ);
  else wgmma_issue<true>(mma_dq, tdQrdS, tdQrKt(_, _, _, ch), tdQrdQ);
}

// Query block m's fp32 dQ accumulator (fragment order, bwd_dq.h).
template <class Traits, bool kVarlen>
__device__ __forceinline__ float* bwd_dq_block(BwdKernelParams<Traits> const& p,
                                               typename Traits::SharedStorage& ss, int bh, int m) {
  int64_t dq_m;  // query block in the scratch
  if constexpr (kVarlen) dq_m = ss.seq.ws_row / Traits::kBlockM + m;
  else dq_m = int64_t(bh) * p.num_m + m;
  return p.dq_accum + dq_m * (Traits::kBlockM * Traits::D);
}

// d256 (2 dQ chunks; 4 in the 64 x 64 A/B build): the consumers add their
// chunks into the accumulator themselves with vector reductions, and have no
// staging buffer. Through the one 16 KB buffer that fitted beside the 64 x 64
// tiles (session 6) each chunk waited for the writer's
// bulk reduce of the previous one to have read it: ncu put ~35 % of the
// warps' stall samples on those waits. Deterministic, the writer still
// keeps the order: it waits for the block's turn (the semaphore), lets the
// consumers add (kDqEmpty), and signals the next key block once they are
// done (kDqFull, then its fence covers their adds, as in a grid sync).
// A next turn it has already seen it grants before that fence
// (BwdDqWriter).
// (At d64 / d128, one chunk, the reductions measured +1 % / -7 % default
// and -4 % / +1 % deterministic on the H100: the staging stays there.)
template <class Traits>
constexpr bool kBwdDqRed = Traits::kDqChunks > 1;

// Whether dQ is staged in two buffers: the deterministic mode where they
// fit (BwdTraits::kDqBufs; never with kBwdDqRed, whose one chunk buffer does
// not exist). The consumers, the writers and the launcher's smem size
// (launch_bwd.h) follow this one choice.
template <class Traits>
__host__ __device__ __forceinline__ constexpr bool bwd_dq_two_bufs(bool det) {
  return Traits::kDqBufs == 2 && det;
}
// Whether the staged dQ goes to two writer warps, one per step parity, on
// mbarriers (SharedStorage::dq_full / dq_empty, indexed by parity): the
// deterministic mode of the 64-row steps, with one buffer (d192) or two
// (d96, d128). One writer's wait for its turn, its reduce's completion and
// its fence then overlap the other's step. With one buffer step s still
// waits for step s - 1's writer to have read it, with two for step s - 2's.
// d192, one buffer: 1.16-1.33x with two writers (H100 harness, session 11).
// d64's 128-row steps are long enough for one writer (with two: 16k
// 0.97x), which keeps the named-barrier hand-off of the default mode.
template <class Traits>
constexpr bool kBwdDqTwoWriters = !kBwdDqRed<Traits> && Traits::kBlockM == 64;
template <class Traits>
__host__ __device__ __forceinline__ constexpr bool bwd_dq_two_writers(bool det) {
  return kBwdDqTwoWriters<Traits> && det;
}
// How many writer warps add dQ in this mode.
template <class Traits>
__host__ __device__ __forceinline__ constexpr int bwd_dq_writers(bool det) {
  return bwd_dq_two_writers<Traits>(det) ? 2 : 1;
}

// dQ of query block m, consumer side: called right after dQ (its first
// chunk) and then dK were issued, with dV issued before them. Each
// warpgroup writes its accumulator half to a staging buffer (smem_dq, or
// with bwd_dq_two_bufs alternately smem_dq2) in fragment order (bwd_dq.h)
// and hands it to a dQ writer warp (BwdDqWriter), while dK runs; further
// chunks (d256) are issued here. kBwdDqRed: dq_red is the block's
// accumulator, to add the chunks into directly instead (det: in the
// writer's turn).
// `step` counts this CTA's query blocks from 0 (the staging buffer's turn).
// dv_done runs once dV (and the first chunk) are done.
template <class Traits, class MmaDq, class TA, class TB, class TC, class F>
__device__ __forceinline__ void bwd_dq_out(typename Traits::SharedStorage& ss, MmaDq& mma_dq,
                                           TA const& tdQrdS, TB const& tdQrKt, TC& tdQrdQ,
                                           int tid, float* dq_red, bool det, int step,
                                           F&& dv_done) {
  constexpr int kDqChunks = Traits::kDqChunks;
  constexpr int kDqHalf = Traits::kBlockM * Traits::kDqChunk / 2;
  int const wg = tid / 128, wg_tid = tid % 128;
  CUTE_UNROLL
  for (int ch = 0; ch < kDqChunks; ++ch) {
    if (ch > 0) {
      bwd_dq_issue<Traits>(mma_dq, tdQrdS, tdQrKt, ch, tdQrdQ);
      warpgroup_wait<0>();
    } else {
      warpgroup_wait<1>();  // dV and dQ done (dK may still run)
      dv_done();
    }
    if constexpr (kBwdDqRed<Traits>) {
      // (Issuing chunk ch+1's GEMM before these, into a second accumulator,
      // measured 2.5 % slower on the H100.)
      if (det && ch == 0) {  // this block's turn
        cutlass::arch::NamedBarrier::sync(kBwdDqBarThreads, uint32_t(BwdBarrier::kDqEmpty) + wg);
      }
      dq_frag_red<128>(tdQrdQ, dq_red + ch * (Traits::kBlockM * Traits::kDqChunk) + wg * kDqHalf,
                       wg_tid);
      if (det && ch + 1 == kDqChunks) {
        cutlass::arch::NamedBarrier::arrive(kBwdDqBarThreads, uint32_t(BwdBarrier::kDqFull) + wg);
      }
    } else if (!bwd_dq_two_writers<Traits>(det)) {
      // One buffer: the writer's previous bulk reduce has read this half.
      cutlass::arch::NamedBarrier::sync(kBwdDqBarThreads, uint32_t(BwdBarrier::kDqEmpty) + wg);
      dq_frag_store<128>(tdQrdQ, ss.smem_dq.data() + wg * kDqHalf, wg_tid);
      cutlass::arch::fence_view_async_shared();
      cutlass::arch::NamedBarrier::arrive(kBwdDqBarThreads, uint32_t(BwdBarrier::kDqFull) + wg);
    } else {
      // bwd_dq_two_writers: step s goes to the writer of parity s % 2.
      // Two buffers: buffer s % 2, once its writer has read its use of step
      // s - 2; one buffer: once the other writer has read step s - 1.
      // dq_empty[e % 2] completes once per read of steps e % 2, e % 2 + 2,
      // ..., so the wait is for the read of step e - 2 (e = s, or s + 1 with
      // one buffer); the first ones pass at once: the wait is for the phase
      // before the barrier's first.
      bool const two_bufs = bwd_dq_two_bufs<Traits>(det);
      int const e = two_bufs ? step : step + 1;
      ss.dq_empty[e % 2][wg].wait(uint32_t((e / 2) & 1) ^ 1u);
      dq_frag_store<128>(tdQrdQ, ss.dq_buf(two_bufs ? step % 2 : 0) + wg * kDqHalf, wg_tid);
      cutlass::arch::fence_view_async_shared();
      __syncwarp();  // the warp's stores and fences, then one arrival per warp
      if (wg_tid % 32 == 0) ss.dq_full[step % 2][wg].arrive();
    }
  }
}

// The dQ writer: warp 1 of the producer warpgroup (as in FA3), and warp 2
// with two writers (bwd_dq_two_writers: odd steps). For each query block (d <= 192: one chunk) it
// takes the two warpgroups' halves from the staging buffer and issues one
// bulk reduce-add each into the fp32 accumulator; d256's consumers add their
// chunks themselves and the writer only keeps the deterministic order.
// Deterministic: the adds into one query block go in descending n_block
// order (bwd_kernel says why): before its first add the writer waits until
// every higher key block that touches the block has added (2 per CTA, one
// per half), and after its last it waits for its adds to be complete and
// counts them.
// Waiting here, off the consumers' path, is what keeps the deterministic
// mode's hand-off latency out of every step (the consumers waited for it
// themselves before, 35-40 % slower at d128).
template <class Traits, bool kVarlen>
struct BwdDqWriter {
  static constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, D = Traits::D;
  static constexpr int kDqChunks = Traits::kDqChunks, kDqChunk = Traits::kDqChunk;
  static constexpr int kDqHalf = kBlockM * kDqChunk / 2;

  // Whole warp calls (named barriers); lane 0 issues. With
  // bwd_dq_two_writers two writer warps share the steps (writer w takes the
  // query blocks m_lo + w, m_lo + w + 2, ...), so one's wait for its turn,
  // for the reduce to complete and for its fence overlaps the other's step.
  // kWriters: the most writer warps a configuration runs.
  static constexpr int kWriters = kBwdDqTwoWriters<Traits> ? 2 : 1;
  __device__ __forceinline__ static void run(BwdKernelParams<Traits> const& p,
                                             typename Traits::SharedStorage& ss, int n_block,
                                             int bh, int m_lo, int m_hi, int lane,
                                             int writer) {
    using cutlass::arch::NamedBarrier;
    constexpr bool kRed = kBwdDqRed<Traits>;  // the consumers add (d256)
    if (m_hi <= m_lo || (kRed && !p.deterministic)) return;
    uint32_t const empty = uint32_t(BwdBarrier::kDqEmpty), full = uint32_t(BwdBarrier::kDqFull);
    bool const two = bwd_dq_two_writers<Traits>(p.deterministic);
    int const writers = bwd_dq_writers<Traits>(p.deterministic);
    if (writer >= writers) return;
    if (!kRed && !two) {
      // The one buffer starts free: one arrival ahead of the consumers' first wait.
      NamedBarrier::arrive(kBwdDqBarThreads, empty);
      NamedBarrier::arrive(kBwdDqBarThreads, empty + 1);
    }
    // Deterministic: the semaphore of the query block whose accumulator is
    // blk, and the count that means every higher key block touching query
    // block mm has added (2 per block, one per half).
    auto sem_of = [&](float const* blk) { return p.sem_dq + p.dq_block_index(blk); };
    auto target_of = [&](int mm) {
      int nmin, nmax;
      bwd_cta_mask<kVarlen>(p, ss).template block_range<kBlockM, kBlockN>(mm, &nmin, &nmax);
      return 2 * (nmax - 1 - n_block);
    };
    // Lane 0, kRed: whether the next step's turn was already seen. The
    // semaphore is read once ahead, while the consumers add this step's dQ,
    // so that a turn that is already there costs no load round trip, and is
    // granted before this step's fence and signal. Without the wait at all
    // (a non-deterministic A/B build) d256 ran 1.10-1.21x faster; the read
    // ahead gave 1.00-1.12x and the early grant 0.98-1.12x on top (H100
    // harness: the most at 8k/16k; 2k lost 1-2 %). The staging writers
    // (d <= 192) read ahead before their reduce's completion wait measured
    // 0.89-1.04x at d192 and 0.97x at d128 2k, and one deterministic d128
    // bench hung (not understood): they keep the plain wait.
    bool next_ok = false;
    bool granted = false;  // kRed: the turn of this step was granted at the end of the last
    auto probe_next = [&](int m) {
      int const mn = m + writers;
      if (mn < m_hi) {
        next_ok = bwd_ld_acquire(sem_of(bwd_dq_block<Traits, kVarlen>(p, ss, bh, mn))) >=
                  target_of(mn);
      }
    };
#pragma unroll 1
    for (int m = m_lo + writer; m < m_hi; m += writers) {
      float* dq_blk = bwd_dq_block<Traits, kVarlen>(p, ss, bh, m);
      int* sem = nullptr;
      if (p.deterministic && lane == 0) {
        sem = sem_of(dq_blk);
        if (!next_ok) {
          int const target = target_of(m);
          while (bwd_ld_acquire(sem) < target) {
          }
        }
        next_ok = false;
      }
      if constexpr (kRed) {  // deterministic: the consumers' turn, then their adds
        __syncwarp();
        if (!granted) {
          for (int w = 0; w < 2; ++w) NamedBarrier::arrive(kBwdDqBarThreads, empty + w);
        }
        granted = false;
        if (sem != nullptr) probe_next(m);  // lane 0
        __syncwarp();
        for (int w = 0; w < 2; ++w) NamedBarrier::sync(kBwdDqBarThreads, full + w);
        // The next turn already seen: grant it now, before this step's fence
        // and signal below, so the consumers' next adds overlap them. (Their
        // order in the next block is settled by its semaphore alone; the
        // fence still follows every add of this step, seen through the
        // barrier.)
        if (__shfl_sync(0xffffffffu, next_ok ? 1 : 0, 0)) {
          for (int w = 0; w < 2; ++w) NamedBarrier::arrive(kBwdDqBarThreads, empty + w);
          granted = true;
        }
      } else if (!two) {
        // First store (bwd_dq.h). The state is read before the consumers'
        // barrier, so its round trip overlaps the wait: once a CTA trails
        // the block's first writer it finds kDqStored here and just adds.
        // A block still unwritten is claimed only once the partial is ready,
        // so that no CTA waits on a claim whose data is a step away.
        int* state = nullptr;
        int seen = kDqStored;
        if (p.dq_state != nullptr && lane == 0) {
          state = p.dq_state + p.dq_block_index(dq_blk);
          seen = bwd_ld_acquire(state);
        }
        bool store = false;
        for (int w = 0; w < 2; ++w) {
          NamedBarrier::sync(kBwdDqBarThreads, full + w);
          if (lane == 0) {
            if (w == 0 && state != nullptr) {
              if (seen == kDqUnwritten) {
                seen = atomicCAS(state, kDqUnwritten, kDqStoring);
                store = seen == kDqUnwritten;
                if (seen == kDqStored) __threadfence();  // the CAS read it relaxed
              }
              if (seen == kDqStoring) {  // another CTA's store is under way
                while (bwd_ld_acquire(state) != kDqStored) {
                }
              }
              // The add (async proxy) after the store seen complete.
              if (!store) asm volatile("fence.proxy.async.global;" ::: "memory");
            }
            if (store) {
              cute::SM90_BULK_COPY_S2G::copy(ss.smem_dq.data() + w * kDqHalf, dq_blk + w * kDqHalf,
                                             int32_t(kDqHalf * sizeof(float)));
            } else {
              bulk_reduce_add_f32(dq_blk + w * kDqHalf, ss.smem_dq.data() + w * kDqHalf,
                                  uint32_t(kDqHalf * sizeof(float)));
            }
            tma_store_arrive();
          }
        }
        if (lane == 0) tma_store_wait<0>();  // smem_dq read
        __syncwarp();
        if (m + 1 < m_hi) {  // no consumer waits after the last
          NamedBarrier::arrive(kBwdDqBarThreads, empty);
          NamedBarrier::arrive(kBwdDqBarThreads, empty + 1);
        }
        if (store) {  // lane 0: the store complete, then published
          bulk_wait_complete();
          // The async proxy's writes before the generic release (the readers
          // fence the other way before their adds).
          asm volatile("fence.proxy.async.global;" ::: "memory");
          __threadfence();
          atomicExch(state, kDqStored);
        }
      } else {
        // Step i's barriers (and buffer, if two) are i % 2's: this writer's.
        int const i = m - m_lo, b = i % 2;
        uint32_t const phase = uint32_t(i / 2) & 1;
        float const* src = ss.dq_buf(bwd_dq_two_bufs<Traits>(true) ? b : 0);
        for (int w = 0; w < 2; ++w) {
          ss.dq_full[b][w].wait(phase);
          if (lane == 0) {
            bulk_reduce_add_f32(dq_blk + w * kDqHalf, src + w * kDqHalf,
                                uint32_t(kDqHalf * sizeof(float)));
            tma_store_arrive();
          }
        }
        if (lane == 0) {
          tma_store_wait<0>();  // smem_dq read
          ss.dq_empty[b][0].arrive();
          ss.dq_empty[b][1].arrive();
        }
        __syncwarp();
      }
      if (sem != nullptr && lane == 0) {
        // kRed: the barrier, then this fence, publish the consumers' adds.
        if constexpr (!kRed) bulk_wait_complete();
        __threadfence();
        atomicAdd(sem, 2);
      }
    }
    __syncwarp();
  }
};

// GQA with dK/dV split along N (d <= 128: a warpgroup owns 64 whole rows of
// the key block): each warpgroup stages its rows of dK, then of dV, in smem
// as fp32 rows of D (the accumulator's own layout, so 64 rows are one
// contiguous run in both memories) and adds them with one bulk reduce-add,
// as for dQ. Per-element fp32 atomics (2 x 64 x D per warpgroup) cost the
// GQA backward 7 % at d128 on the H100 (train_lm's 6/2 heads: 411 vs 443
// TF/s for the same shapes without GQA). The staging buffers are the Q and
// dO tiles, free once every consumer's last GEMM is done. On return the
// adds are complete (the deterministic hand-off follows).
template <class Traits, class ThrMma, class Acc>
__device__ __forceinline__ void bwd_dkv_bulk_add(BwdKernelParams<Traits> const& p,
                                                 typename Traits::SharedStorage& ss,
                                                 ThrMma const& thr_dkv, Acc const& tdKrdK,
                                                 Acc const& tdVrdV, int64_t base, int tid) {
  constexpr int kRows = 64, D = Traits::D;
  static_assert(!Traits::kDkvSplitD && Traits::kBlockN == 2 * kRows);
  static_assert(kRows * D * sizeof(float) <= sizeof(ss.smem_q) &&
                kRows * D * sizeof(float) <= sizeof(ss.smem_do));
  int const wg = tid / 128, wg_tid = tid % 128;
  uint32_t const wg_bar = uint32_t(BwdBarrier::kPFull) + wg;
  float* buf = reinterpret_cast<float*>(wg == 0 ? ss.smem_q.data() : ss.smem_do.data());
  Tensor cKV = thr_dkv.partition_C(make_identity_tensor(Shape<Int<Traits::kBlockN>, Int<D>>{}));
  cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kDsFull));  // Q, dO read
  CUTE_UNROLL
  for (int t = 0; t < 2; ++t) {
    Acc const& acc = t == 0 ? tdKrdK : tdVrdV;
    if (t == 1) {  // the dK add has read buf
      if (wg_tid == 0) tma_store_wait<0>();
      cutlass::arch::NamedBarrier::sync(128, wg_bar);
    }
    CUTE_UNROLL
    for (int i = 0; i < size(acc); i += 2) {  // (i, i + 1): adjacent columns
      int row = int(get<0>(cKV(i))) - kRows * wg;
      *reinterpret_cast<float2*>(buf + row * D + int(get<1>(cKV(i)))) = make_float2(acc(i), acc(i + 1));
    }
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(128, wg_bar);
    if (wg_tid == 0) {
      float* dst = (t == 0 ? p.dk_accum : p.dv_accum) + (base + kRows * wg) * D;
      bulk_reduce_add_f32(dst, buf, uint32_t(kRows * D * sizeof(float)));
      tma_store_arrive();
    }
  }
  if (wg_tid == 0) bulk_wait_complete();
}

// dK / dV accumulators -> output rows (dk, dv: the key block's first row;
// rows: how many of its keys exist), through shared memory: dK into smem_k,
// dV into smem_v (free once every consumer's last GEMM is done), then out
// in 16-byte row segments. key_of / col_of place accumulator element i, so
// one path serves both layouts: dK^T / dV^T (kDkvSwap), whose neighbouring
// elements are neighbouring keys (rows of the output), and dK / dV, whose
// element pairs stored straight from registers took 5.9 us per CTA at d128
// (4-byte stores scattered over 8 rows per warp instruction), against
// 2.4 us for d256's 80 x 256 tiles this way (H100, CTA timeline of
// bwd_trace.h; a 2k CTA lasts ~68 us). The 16-byte chunks of a row are
// XOR-swizzled by the row so that the consumers' 2-byte stores hit
// different banks: key % 8 over groups of 64 columns, key % 4 over groups
// of 32 at D = 96 (the XOR must stay inside a group, and 64 does not divide
// 96).
template <class Traits, class Acc, class KeyOf, class ColOf>
__device__ __forceinline__ void bwd_dkv_store_smem(BwdKernelParams<Traits> const& p,
                                                   typename Traits::SharedStorage& ss,
                                                   Acc const& tdKrdK, Acc const& tdVrdV,
                                                   KeyOf const& key_of, ColOf const& col_of,
                                                   typename Traits::Element* dk,
                                                   typename Traits::Element* dv, int rows,
                                                   int tid) {
  using Element = typename Traits::Element;
  constexpr int kBlockN = Traits::kBlockN, D = Traits::D, kVecs = D / 8;
  static_assert(kBlockN * D * sizeof(Element) <= sizeof(ss.smem_k) &&
                kBlockN * D * sizeof(Element) <= sizeof(ss.smem_v));
  Element* tk = ss.smem_k.data();
  Element* tv = ss.smem_v.data();
  constexpr int kSwz = D % 64 == 0 ? 7 : 3;
  static_assert(D % ((kSwz + 1) * 8) == 0);
  auto at = [](int key, int col) { return key * D + (col ^ ((key & kSwz) << 3)); };
  // Every consumer is done reading K and V.
  cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kDsFull));
  CUTE_UNROLL
  for (int i = 0; i < size(tdKrdK); ++i) {
    int const o = at(key_of(i), col_of(i));
    tk[o] = static_cast<Element>(tdKrdK(i) * p.softmax_scale);
    tv[o] = static_cast<Element>(tdVrdV(i));
  }
  cutlass::arch::NamedBarrier::sync(256, uint32_t(BwdBarrier::kDsFull));
  rows = rows < kBlockN ? rows : kBlockN;
  for (int j = tid; j < rows * kVecs; j += 256) {
    int const key = j / kVecs, c = j - key * kVecs;
    int const o = at(key, c * 8);
    int64_t const g = int64_t(key) * p.k_row_stride + c * 8;
    *reinterpret_cast<uint4*>(dk + g) = *reinterpret_cast<const uint4*>(tk + o);
    *reinterpret_cast<uint4*>(dv + g) = *reinterpret_cast<const uint4*>(tv + o);
  }
}

// dK, dV: through smem (bwd_dkv_store_smem) -> output (dK scaled), or for
// GQA fp32 adds into the kv head's accumulator (bwd_dkv_bulk_add, or
// atomics when split along D; deterministic: in query-head order). Varlen:
// the sequence's bounds are read again rather than kept live through the
// loop.
template <class Traits, bool kVarlen, class ThrMma, class Acc>
__device__ __forceinline__ void bwd_dkv_epilogue(BwdKernelParams<Traits> const& p,
                                                 typename Traits::SharedStorage& ss,
                                                 ThrMma const& thr_dkv, Acc const& tdKrdK,
                                                 Acc const& tdVrdV, int batch, int head,
                                                 int n_block, bool any_m, int tid) {
  using Element = typename Traits::Element;
  constexpr int kBlockN = Traits::kBlockN, D = Traits::D;
  int const n0 = n_block * kBlockN;
  BwdSeq const se = p.template seq<kVarlen>(batch, head);
  // (key row, column of D) of accumulator element i.
  Tensor cKV = thr_dkv.partition_C(make_identity_tensor(typename Traits::ShapedKV{}));
  auto key_of = [&](int i) { return tile_row<Traits::kDkvSwap>(cKV(i)); };
  auto col_of = [&](int i) { return tile_col<Traits::kDkvSwap>(cKV(i)); };
  if (p.h_h_k_ratio == 1) {
    Element* dk = static_cast<Element*>(p.dk) + batch * p.k_batch_stride + head * p.k_head_stride;
    Element* dv = static_cast<Element*>(p.dv) + batch * p.k_batch_stride + head * p.k_head_stride;
    if constexpr (kVarlen) {  // packed: batch stride 0, rows from the sequence's start
      dk += int64_t(se.k_row) * p.k_row_stride;
      dv += int64_t(se.k_row) * p.k_row_stride;
    }
    int64_t const off = int64_t(n0) * p.k_row_stride;  // the block's first key row
    bwd_dkv_store_smem<Traits>(p, ss, tdKrdK, tdVrdV, key_of, col_of, dk + off, dv + off,
                               se.mask.seqlen_k - n0, tid);
  } else {
    int const head_k = head / p.h_h_k_ratio;
    int64_t const base = p.template dkv_accum_row<kVarlen>(batch, head_k, n_block);
    int* sem = nullptr;
    if (p.deterministic) {
      sem = p.sem_dkv + (int64_t(batch) * p.num_heads_k + head_k) * p.num_n + n_block;
      bwd_sem_wait(sem, head % p.h_h_k_ratio, tid);
    }
    if constexpr (!Traits::kDkvSplitD) {
      if (any_m) bwd_dkv_bulk_add(p, ss, thr_dkv, tdKrdK, tdVrdV, base, tid);
    } else if (any_m) {
      // Keys past seqlen_k are skipped: with kBlockN 80 the last block may
      // reach past the rows padded to kBwdPadN.
      CUTE_UNROLL
      for (int i = 0; i < size(tdKrdK); ++i) {
        if (n0 + key_of(i) < se.mask.seqlen_k) {
          int64_t off = (base + key_of(i)) * D + col_of(i);
          atomicAdd(p.dk_accum + off, tdKrdK(i));
          atomicAdd(p.dv_accum + off, tdVrdV(i));
        }
      }
    }
    if (p.deterministic) bwd_sem_signal(sem, tid);
  }
}

}  // namespace jax_fa3::hopper
