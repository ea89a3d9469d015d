// Backward preprocess (JAX_FA3_BWD): per query row,
//   dpsum = rowsum(dO * O) in fp32,
//   lse2  = lse * log2(e) (the kernel computes P = exp2(s * scale_log2 - lse2)),
//           +inf for rows with no visible key (lse = -inf) and for the
//           padding rows up to sq_pad (varlen: of every sequence, and the
//           gaps), so P = 0 there without a row mask.
//   dq_accum = 0 over the row's d floats (the accumulator has one row of d
//           floats per padded row, in the tiles' own order within a block;
//           every row is zeroed, so the whole accumulator is): stores in the
//           same pass as the loads, instead of a separate memset of the
//           accumulator (H100: ~45 us per 16k-token d128 call on its own).
//           Not with BwdWorkspace::dq_first_store, where the main kernel's
//           first add into each block stores (bwd_dq.h): half the bytes.
//   dq_done = 0 and the dQ block states (the fused dQ convert's counts,
//           bwd_dq_fuse.h; BwdWorkspace::n_pre_zero ints).
// The GQA dK/dV accumulators and the semaphores are zeroed by a
// cudaMemsetAsync in run_bwd.
// Varlen also gets the main kernel's launch order of sequences (seq_order).
// Empty unless the gate is on.
#if JAX_FA3_BWD
#include <cub/block/block_radix_sort.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#define JAX_FA3_BWD_LAYOUT_ONLY
#include "cc/hopper/launch_bwd.h"

namespace jax_fa3::hopper {
namespace {

__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

// dO . O over 8 elements (one 16-byte load of each).
template <class T>
__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
  const T* x = reinterpret_cast<const T*>(&a);
  const T* y = reinterpret_cast<const T*>(&b);
  float acc = 0.f;
#pragma unroll
  for (int k = 0; k < 8; ++k) acc += to_f(x[k]) * to_f(y[k]);
  return acc;
}

// `lanes` lanes per padded row (b, h, i), i < sq_pad: the smallest power of
// two >= d / 8, so a row is read in 16-byte loads (d / 8 of them) and a warp
// covers 32 / lanes rows at once; one scalar load per element had kept this
// kernel at ~1.2 TB/s (0.22 ms per 32k x 16 heads x d128 call on an H200;
// session 7 ring trace). Strides and pointers are multiples of 16 bytes
// (run_bwd checks), and so is a row of d elements. Varlen (offsets read
// through the clamp of varlen.h's VarlenSide): b = 0 and i runs over the
// padded rows of all sequences (bwd_scratch.h); row i of sequence s reads
// packed row cu_q[s] + i - pad_start(s).
// Rows per warp (and per sequence lookup): varlen 16, which amortises the
// binary search over the offsets (83 us against 62 dense for the same 16k
// tokens at d128, one search per row pair); dense one pass of the warp.
__host__ __device__ inline int bwd_pre_chunk(bool varlen, int per_warp) {
  return varlen ? 16 : per_warp;
}
static_assert(kBwdPadM % 16 == 0);

template <class T>
__global__ void bwd_preprocess_kernel(const T* __restrict__ dout, const T* __restrict__ out,
                                      const float* __restrict__ lse, float* __restrict__ lse2,
                                      float* __restrict__ dpsum, float* __restrict__ dq_accum,
                                      int64_t rows, int64_t sq,
                                      int64_t sq_pad, int64_t heads, int d, int lanes,
                                      int64_t q_batch_stride, int64_t q_row_stride,
                                      int64_t q_head_stride, int64_t lse_batch_stride,
                                      int64_t lse_head_stride, bool varlen, VarlenSide vq,
                                      int num_seqs, int* dq_done, int64_t n_dq_done,
                                      bool zero_dq) {
  int const lane = threadIdx.x % 32, sub = lane % lanes, per_warp = 32 / lanes;
  int64_t warp = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  int64_t nwarps = int64_t(gridDim.x) * blockDim.x / 32;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_dq_done;
       i += int64_t(gridDim.x) * blockDim.x) {
    dq_done[i] = 0;
  }
  // A warp takes `chunk` consecutive rows (one sequence's, inside one
  // kBwdPadM block: chunk divides it, and rows is a multiple of it), per_warp
  // at a time; varlen looks the sequence up once per chunk.
  int const chunk = bwd_pre_chunk(varlen, per_warp);
  for (int64_t c0 = warp; c0 < rows / chunk; c0 += nwarps) {
    int seq = 0;
    int64_t pad0 = 0;
    if (varlen) {
      seq = bwd_pad_seq(vq, num_seqs, (c0 * chunk) % sq_pad, kBwdPadM);
      pad0 = bwd_pad_start(vq, seq, kBwdPadM);
    }
#pragma unroll 2
    for (int k = 0; k < chunk; k += per_warp) {
      int64_t r = c0 * chunk + k + lane / lanes;  // this lane's row, < rows
      int64_t i = r % sq_pad, bh = r / sq_pad, h = bh % heads, b = bh / heads;
      bool valid = i < sq;
      if (varlen) {
        int64_t j = i - pad0;
        valid = j >= 0 && j < vq.len(seq);
        i = vq.start(seq) + j;
      }
      float acc = 0.f, l = INFINITY;
      if (zero_dq) {
        float4* z = reinterpret_cast<float4*>(dq_accum + r * d);
        for (int c = sub; c < d / 4; c += lanes) z[c] = make_float4(0.f, 0.f, 0.f, 0.f);
      }
      if (valid) {
        int64_t off = b * q_batch_stride + i * q_row_stride + h * q_head_stride;
        const uint4* o = reinterpret_cast<const uint4*>(out + off);
        const uint4* g = reinterpret_cast<const uint4*>(dout + off);
        for (int c = sub; c < d / 8; c += lanes) acc += dot8<T>(g[c], o[c]);
        if (sub == 0) {
          float v = lse[b * lse_batch_stride + h * lse_head_stride + i];
          l = v == -INFINITY ? INFINITY : v * 1.4426950408889634f;
        }
      }
      for (int s = lanes / 2; s > 0; s /= 2) acc += __shfl_xor_sync(0xffffffff, acc, s);
      if (sub == 0) {
        dpsum[r] = acc;
        lse2[r] = l;
      }
    }
  }
}

// Varlen launch order: the sequences sorted by query length, longest first
// (a stable sort: ties keep their order). A CTA's work is its sequence's
// query blocks, so this is a longest-processing-time-first order at the
// granularity of sequences; launched in input order, a long sequence that
// comes last left most SMs idle at the end (H100, 11 documents of 128-4096
// tokens: SMs busy 93 % of the kernel's time, against 95 % for equal
// lengths). One block of kSortThreads x kSortItems keys (kBwdSeqOrderMax).
constexpr int kSortThreads = 256, kSortItems = 16;
static_assert(kSortThreads * kSortItems == kBwdSeqOrderMax);

__global__ void __launch_bounds__(kSortThreads)
    bwd_seq_order_kernel(VarlenSide vq, int num_seqs, int32_t* order) {
  using Sort = cub::BlockRadixSort<int, kSortThreads, kSortItems, int>;
  __shared__ typename Sort::TempStorage temp;
  int keys[kSortItems], seqs[kSortItems];
  for (int k = 0; k < kSortItems; ++k) {
    int const s = threadIdx.x * kSortItems + k;  // blocked arrangement
    // Absent slots sort last (below every length >= 0).
    keys[k] = s < num_seqs ? int(vq.len(s)) : -1;
    seqs[k] = s;
  }
  Sort(temp).SortDescending(keys, seqs);
  for (int k = 0; k < kSortItems; ++k) {
    int const i = threadIdx.x * kSortItems + k;
    if (i < num_seqs) order[i] = seqs[k];
  }
}

template <class T>
std::string launch_pre(const AttnParams& p, const BwdWorkspace& w, cudaStream_t s) {
  int64_t rows = w.ws_batch * p.num_heads * w.sq_pad;
  if (p.head_dim % 8 != 0) return "jax_fa3 hopper bwd: preprocess needs head_dim % 8 == 0";
  int lanes = 1;
  while (lanes < 32 && lanes * 8 < p.head_dim) lanes *= 2;
  int64_t const warps = rows / bwd_pre_chunk(p.is_varlen, 32 / lanes);
  int64_t blocks = (warps * 32 + 255) / 256;
  if (blocks > 65536) blocks = 65536;
  bwd_preprocess_kernel<T><<<int(blocks), 256, 0, s>>>(
      static_cast<const T*>(p.dout), static_cast<const T*>(p.out_in), p.lse_in,
      w.at<float>(p.workspace, w.off_lse2), w.at<float>(p.workspace, w.off_dpsum),
      w.at<float>(p.workspace, w.off_dq), rows,
      p.seqlen_q, w.sq_pad, p.num_heads, int(p.head_dim), lanes, p.q_batch_stride, p.q_row_stride,
      p.q_head_stride, p.lse_batch_stride, p.lse_head_stride,
      p.is_varlen, varlen_side_q(p),
      int(p.num_seqs), w.at<int>(p.workspace, w.off_dq_done), w.n_pre_zero,
      /*zero_dq=*/w.off_dq_state < 0);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return std::string("jax_fa3 hopper bwd: preprocess launch failed: ") + cudaGetErrorString(err);
  }
  if (w.off_seq_order >= 0) {
    bwd_seq_order_kernel<<<1, kSortThreads, 0, s>>>(
        varlen_side_q(p), int(p.num_seqs), w.at<int32_t>(p.workspace, w.off_seq_order));
    err = cudaGetLastError();
    if (err != cudaSuccess)
      return std::string("jax_fa3 hopper bwd: seq order launch failed: ") + cudaGetErrorString(err);
  }
  return "";
}

}  // namespace

std::string bwd_preprocess(const AttnParams& p, const BwdWorkspace& w, cudaStream_t s) {
  if (p.dtype == DType::kBF16) return launch_pre<__nv_bfloat16>(p, w, s);
  return launch_pre<__half>(p, w, s);
}

}  // namespace jax_fa3::hopper
#endif  // JAX_FA3_BWD
