// Backward postprocess (JAX_FA3_BWD): for GQA dK = softmax_scale
// * dk_accum and dV = dv_accum cast to the input dtype (the main kernel writes
// dK/dV directly when num_heads == num_heads_k); dQ = 0 when the main kernel
// did not run (otherwise launch_bwd converts dQ, bwd_dq.h). Varlen: the
// attended rows of each sequence, from the padded scratch (bwd_scratch.h);
// run_bwd zeroes the others. Empty unless the gate is on.
#if JAX_FA3_BWD
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#define JAX_FA3_BWD_LAYOUT_ONLY
#include "cc/hopper/launch_bwd.h"

namespace jax_fa3::hopper {
namespace {

__device__ __forceinline__ void from_f(float x, __nv_bfloat16* y) { *y = __float2bfloat16_rn(x); }
__device__ __forceinline__ void from_f(float x, __half* y) { *y = __float2half_rn(x); }

// acc: (batch, heads, s_pad, d) fp32 -> out (batch, s, heads, d) with strides.
template <class T>
__global__ void bwd_convert_kernel(const float* __restrict__ acc, T* __restrict__ out,
                                   int64_t total, int64_t s, int64_t s_pad, int64_t heads,
                                   int d, int64_t batch_stride, int64_t row_stride,
                                   int64_t head_stride, float scale) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    int64_t x = e % d, r = e / d;
    int64_t i = r % s, bh = r / s, h = bh % heads, b = bh / heads;
    from_f(acc[(bh * s_pad + i) * d + x] * scale,
           out + b * batch_stride + i * row_stride + h * head_stride + x);
  }
}

// Varlen: acc (heads, s_pad, d) in the padded layout of bwd_scratch.h with
// blocks of `blk` rows -> the attended rows of the packed out; one warp per
// (head, padded row), which finds its sequence once.
template <class T>
__global__ void bwd_convert_varlen_kernel(const float* __restrict__ acc, T* __restrict__ out,
                                          int64_t s_pad, int64_t heads, int d, int64_t blk,
                                          VarlenSide v, int num_seqs,
                                          int64_t row_stride, int64_t head_stride, float scale) {
  int lane = threadIdx.x % 32;
  int64_t warp = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  int64_t nwarps = int64_t(gridDim.x) * blockDim.x / 32;
  for (int64_t r = warp; r < heads * s_pad; r += nwarps) {
    int64_t i = r % s_pad, h = r / s_pad;
    int s = bwd_pad_seq(v, num_seqs, i, blk);
    int64_t j = i - bwd_pad_start(v, s, blk);
    if (j < 0 || j >= v.len(s)) continue;  // padding
    T* o = out + (v.start(s) + j) * row_stride + h * head_stride;
    for (int x = lane; x < d; x += 32) from_f(acc[r * d + x] * scale, o + x);
  }
}

// b = 0: varlen (the packed tensor of p, rows padded by blk).
template <class T>
std::string convert(const AttnParams& p, bool q_side, const float* acc, void* out, int64_t b,
                    int64_t s, int64_t s_pad, int64_t blk, int64_t heads, int64_t d, int64_t bs,
                    int64_t rs, int64_t hs, float scale, cudaStream_t st) {
  if (p.is_varlen) {
    int64_t warps = heads * s_pad, blocks = (warps * 32 + 255) / 256;
    if (warps == 0) return "";
    if (blocks > 65536) blocks = 65536;
    bwd_convert_varlen_kernel<T><<<int(blocks), 256, 0, st>>>(
        acc, static_cast<T*>(out), s_pad, heads, int(d), blk,
        q_side ? varlen_side_q(p) : varlen_side_k(p),
        int(p.num_seqs), rs, hs, scale);
  } else {
    int64_t total = b * s * heads * d;
    if (total == 0) return "";
    int64_t blocks = (total + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    bwd_convert_kernel<T><<<int(blocks), 256, 0, st>>>(acc, static_cast<T*>(out), total, s,
                                                       s_pad, heads, int(d), bs, rs, hs, scale);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return std::string("jax_fa3 hopper bwd: postprocess launch failed: ") +
           cudaGetErrorString(err);
  }
  return "";
}

template <class T>
std::string post(const AttnParams& p, const BwdWorkspace& w, bool convert_dq, cudaStream_t st) {
  std::string e;
  if (convert_dq) {
    e = convert<T>(p, true, w.at<float>(p.workspace, w.off_dq), p.dq, p.batch, p.seqlen_q,
                   w.sq_pad, kBwdPadM, p.num_heads, p.head_dim, p.q_batch_stride,
                   p.q_row_stride, p.q_head_stride, p.softmax_scale, st);
  }
  if (!e.empty() || w.off_dk < 0) return e;
  e = convert<T>(p, false, w.at<float>(p.workspace, w.off_dk), p.dk, p.batch, p.seqlen_k,
                 w.sk_pad, kBwdPadN, p.num_heads_k, p.head_dim, p.k_batch_stride,
                 p.k_row_stride, p.k_head_stride, p.softmax_scale, st);
  if (!e.empty()) return e;
  return convert<T>(p, false, w.at<float>(p.workspace, w.off_dv), p.dv, p.batch, p.seqlen_k,
                    w.sk_pad, kBwdPadN, p.num_heads_k, p.head_dim, p.k_batch_stride,
                    p.k_row_stride, p.k_head_stride, 1.f, st);
}

}  // namespace

std::string bwd_postprocess(const AttnParams& p, const BwdWorkspace& w, bool convert_dq,
                            cudaStream_t st) {
  if (p.dtype == DType::kBF16) return post<__nv_bfloat16>(p, w, convert_dq, st);
  return post<__half>(p, w, convert_dq, st);
}

}  // namespace jax_fa3::hopper
#endif  // JAX_FA3_BWD
