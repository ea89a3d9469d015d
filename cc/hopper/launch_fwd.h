// Host side of the forward: builds the TMA descriptors and kernel params from
// AttnParams, sizes the persistent grid and launches on the caller's stream.
// Included only by the per-(head dim, dtype) instantiation TUs, each of which
// explicitly instantiates launch_fwd<D, Element>.
#pragma once

#include <cuda_runtime.h>

#include <limits>
#include <string>

#include "cc/common/params.h"
#include "cc/hopper/api.h"
#include "cc/hopper/kernel_fwd.h"
#include "cc/hopper/launch_common.h"
#include "cc/hopper/kernel_traits.h"

namespace jax_fa3::hopper {

// Declared for launch_fwd.cu's dispatch; defined below for the instantiations.
template <int D, class Element>
std::string launch_fwd(const AttnParams& p, cudaStream_t stream);

namespace detail {
// SM count of the current device, cached per device (one query per device,
// not per call; cudaDeviceGetAttribute is cheap but not free).
int sm_count_cached();
}  // namespace detail

// One CTA per tile (per unit: a heavy/light causal pair, or a varlen unit)
// instead of a persistent grid for every call, when JAX_FA3_FWD_GRID_PER_TILE
// is 1 (calls with sm_margin > 0 always run so): an A/B knob.
bool fwd_grid_per_tile();

// JAX_FA3_FWD_WIDE=1 / 0: the wide d=128 key block (launch_fwd) for every
// unmasked dense call / for none, instead of by seqlen_k; -1 when unset or
// any other value.
// For A/B runs and to sweep the wide kernel over short sequences.
int fwd_wide_override();

template <class Traits>
std::string launch_fwd_impl(const AttnParams& a, cudaStream_t stream) {
  using Element = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  using GmemLayout = typename Traits::GmemLayout;
  constexpr int kBlockM = Traits::kBlockM;

  // Varlen: the TMA descriptors span the packed tensors, (total rows, D,
  // heads) with a batch extent of 1; the producer offsets rows by each
  // sequence's start. The batch stride is then never applied; any value TMA
  // accepts (a multiple of 16 bytes) will do.
  const bool varlen = a.is_varlen;
  const int64_t rows_q = varlen ? a.total_q : a.seqlen_q;
  const int64_t rows_k = varlen ? a.total_k : a.seqlen_k;
  const int64_t nbatch = varlen ? 1 : a.batch;
  auto q_layout = make_layout(
      make_shape(int32_t(rows_q), int32_t(D), int32_t(a.num_heads), int32_t(nbatch)),
      make_stride(a.q_row_stride, _1{}, a.q_head_stride,
                  varlen ? a.q_row_stride : a.q_batch_stride));
  auto k_layout = make_layout(
      make_shape(int32_t(rows_k), int32_t(D), int32_t(a.num_heads_k), int32_t(nbatch)),
      make_stride(a.k_row_stride, _1{}, a.k_head_stride,
                  varlen ? a.k_row_stride : a.k_batch_stride));
  static_assert(std::is_same_v<decltype(q_layout), GmemLayout>);

  FwdKernelParams<Traits> kp;
  kp.tma_q = make_tma_copy(SM90_TMA_LOAD{},
                           make_tensor(make_gmem_ptr(static_cast<Element const*>(a.q)), q_layout),
                           typename Traits::SmemLayoutQ{}, Shape<Int<kBlockM>, Int<D>>{}, _1{});
  kp.tma_k = make_tma_copy(SM90_TMA_LOAD{},
                           make_tensor(make_gmem_ptr(static_cast<Element const*>(a.k)), k_layout),
                           take<0, 2>(typename Traits::SmemLayoutK{}),
                           Shape<Int<Traits::kBlockN>, Int<D>>{}, _1{});
  kp.tma_v = make_tma_copy(SM90_TMA_LOAD{},
                           make_tensor(make_gmem_ptr(static_cast<Element const*>(a.v)), k_layout),
                           take<0, 2>(typename Traits::SmemLayoutV{}),
                           Shape<Int<Traits::kBlockN>, Int<D>>{}, _1{});
  kp.out = a.out;
  kp.lse = a.lse;
  kp.o_batch_stride = varlen ? 0 : a.q_batch_stride;
  kp.o_row_stride = a.q_row_stride;
  kp.o_head_stride = a.q_head_stride;
  kp.lse_batch_stride = varlen ? 0 : a.lse_batch_stride;
  kp.lse_head_stride = a.lse_head_stride;
  kp.seqlen_q = int(rows_q);
  kp.seqlen_k = int(rows_k);
  kp.num_heads = int(a.num_heads);
  kp.num_heads_k = int(a.num_heads_k);
  kp.h_h_k_ratio = int(a.h_h_k_ratio);
  kp.batch = int(nbatch);
  set_score_scale(a, &kp);
  kp.mask = kernel_mask(a);  // varlen: seqlen_q/k are the max lengths
  const bool local = kp.mask.right >= 0 || kp.mask.left >= 0;

  int num_m = int((a.seqlen_q + kBlockM - 1) / kBlockM);
  int64_t units;  // upper bound on the units (tiles, or tile pairs) the CTAs share
  if (varlen) {
    units = int64_t(local ? (num_m + 1) / 2 : num_m) * a.num_heads * a.num_seqs;
    kp.sched = StaticTileScheduler{0, int(a.num_heads), 0, false};
    bool plain = varlen_plain_rr();
    kp.vsched = VarlenScheduler{a.cu_seqlens_q,     a.cu_seqlens_k,     a.seqused_q,
                                a.seqused_k,        int(a.num_seqs),    int(a.num_heads),
                                int(a.max_seqlen_q), int(a.max_seqlen_k), int(a.total_q),
                                int(a.total_k),     /*pairs=*/local,
                                /*sorted=*/!plain && a.num_seqs <= 32, /*snake=*/!plain};
  } else {
    units = int64_t(num_m) * a.num_heads * a.batch;
    kp.sched = StaticTileScheduler{num_m, int(a.num_heads), int(units), /*zigzag_m=*/local};
    kp.vsched = VarlenScheduler{};
  }
  // sm_margin > 0: share the GPU with kernels on other streams, e.g. the
  // ring's collective-permutes, which would otherwise wait for this grid to
  // finish. FA3 shrinks its persistent grid by sm_margin SMs; we launch one
  // CTA per tile unit instead, which the hardware places around the other
  // kernels as SMs free up. On 4 H200s the ring's exposed NCCL time per
  // causal forward call fell from 1.7 ms (8 SMs kept free) to 0.1 ms, and
  // the forward from 33.4 to 32.0 ms (session 8, benchmarks.ring).
  bool const per_tile = a.sm_margin > 0 || fwd_grid_per_tile();
  int const sms = per_tile ? std::numeric_limits<int>::max() : detail::sm_count_cached();
  // A CTA's next tile or unit index stays below units + grid (varlen) or
  // 2 * units (dense, per tile); int32 in the kernel.
  if (units + (per_tile ? units : (varlen ? int64_t(sms) : 0)) >= (int64_t(1) << 31)) {
    return "jax_fa3 hopper fwd: too many tiles for int32";
  }
  if (units == 0) return "";

  void (*kernel)(FwdKernelParams<Traits>) = fwd_kernel<Traits, false>;
  if constexpr (Traits::kHasVarlenKernel) {  // the varlen configs (launch_fwd)
    if (varlen) kernel = fwd_kernel<Traits, true>;
  } else if (varlen) {
    return "jax_fa3 hopper fwd: no varlen kernel for this tile configuration";
  }
  if (Traits::kUnmasked && (local || a.causal)) {  // launch_fwd picks it without a mask only
    return "jax_fa3 hopper fwd: the unmasked tile got a causal or windowed call";
  }
  constexpr int smem = Traits::kSmemBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) {
    return std::string("jax_fa3 hopper fwd: cudaFuncSetAttribute failed: ") + cudaGetErrorString(err);
  }
  int grid = varlen ? VarlenScheduler::grid_size(units, sms)
                    : StaticTileScheduler::grid_size(int(units), sms,
                                                     kp.sched.zigzag_m);
  kernel<<<grid, Traits::kNumThreads, smem, stream>>>(kp);
  err = cudaGetLastError();
  if (err != cudaSuccess) {
    return std::string("jax_fa3 hopper fwd: launch failed: ") + cudaGetErrorString(err);
  }
  return "";
}

// Picks the tile configuration. d=64 without causal / window uses 3
// consumer warpgroups (192-row tiles); with a mask the larger diagonal tiles
// waste more work than the extra warpgroup gains (see kernel_traits.h).
// d=128 without causal / window / varlen uses the 176-wide key block for
// long keys (below).
template <int D, class Element>
std::string launch_fwd(const AttnParams& a, cudaStream_t stream) {
  bool const masked = a.masked();
  if constexpr (D == 64) {
    // Varlen stays on 2 warpgroups: with 3 the producer's 32 registers do
    // not hold the varlen tile walk (88 bytes of spills).
    if (!masked && !a.is_varlen) return launch_fwd_impl<FwdTraits<64, Element, 3>>(a, stream);
  }
  if constexpr (D == 128) {
    // The wide key block (kernel_traits.h) where it was measured faster,
    // seqlen_k >= 8k, unless its padded last block wastes more than ~1.5 %
    // more keys than 128's (e.g. 8273-8320). Shorter lengths keep 128 (at
    // 2k the wide block ran 0.98x); they were not timed at other lengths.
    constexpr int64_t kWide = kD128WideBlockN;
    int64_t const pad_wide = (a.seqlen_k + kWide - 1) / kWide * kWide;
    int64_t const pad_128 = (a.seqlen_k + 127) / 128 * 128;
    int const force = fwd_wide_override();
    bool const wide = force >= 0 ? force == 1
                                 : a.seqlen_k >= 8192 && pad_wide * 1000 <= pad_128 * 1015;
    if (!masked && !a.is_varlen && wide) {
      return launch_fwd_impl<FwdTraits<128, Element, 2, kWide>>(a, stream);
    }
  }
  return launch_fwd_impl<FwdTraits<D, Element>>(a, stream);
}

}  // namespace jax_fa3::hopper
