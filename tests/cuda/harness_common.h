// Helpers shared by the standalone CUDA harnesses (fwd_harness.cu,
// bwd_harness.cu): error checks, fp16/bf16 rounding and bit conversions, and
// the description of one test case.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cc/common/params.h"
#include "cc/hopper/api.h"  // check_device (fwd_harness_main)

using jax_fa3::AttnParams;
using jax_fa3::DType;

#define CK(x)                                                                        \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, \
              __LINE__);                                                             \
      exit(2);                                                                       \
    }                                                                                \
  } while (0)

// Median time in ms of `iters` calls of f (which enqueues its work on st),
// timed with events on st, after `warmup` untimed calls. Every harness
// times with this.
template <class F>
static double median_ms(F&& f, cudaStream_t st = nullptr, int warmup = 3, int iters = 10) {
  for (int i = 0; i < warmup; ++i) f();
  CK(cudaStreamSynchronize(st));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    CK(cudaEventRecord(a, st));
    f();
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float t;
    CK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  CK(cudaGetLastError());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

static float round_to(DType t, float x) {
  if (t == DType::kBF16) return __bfloat162float(__float2bfloat16(x));
  return __half2float(__float2half(x));
}
static uint16_t to_bits(DType t, float x) {
  uint16_t b;
  if (t == DType::kBF16) {
    __nv_bfloat16 v = __float2bfloat16(x);
    memcpy(&b, &v, 2);
  } else {
    __half v = __float2half(x);
    memcpy(&b, &v, 2);
  }
  return b;
}
static float from_bits(DType t, uint16_t b) {
  if (t == DType::kBF16) {
    __nv_bfloat16 v;
    memcpy(&v, &b, 2);
    return __bfloat162float(v);
  }
  __half v;
  memcpy(&v, &b, 2);
  return __half2float(v);
}

struct Case {
  int d;
  DType dt;
  int b, sq, sk, h, hk;
  bool causal;
  int wl, wr;
  float softcap;
};

static std::string describe(const Case& c) {
  char buf[256];
  snprintf(buf, sizeof buf, "d=%d %s b=%d sq=%d sk=%d h=%d hk=%d causal=%d win=(%d,%d) cap=%g",
           c.d, c.dt == DType::kBF16 ? "bf16" : "fp16", c.b, c.sq, c.sk, c.h, c.hk, c.causal,
           c.wl, c.wr, c.softcap);
  return buf;
}

// Dense (batch, seqlen, heads, head_dim) strides, dtype and mask of one case;
// each harness adds its scale and buffers.
static void set_shape_and_mask(const Case& c, AttnParams* out) {
  AttnParams& p = *out;
  p.batch = c.b;
  p.seqlen_q = c.sq;
  p.seqlen_k = c.sk;
  p.num_heads = c.h;
  p.num_heads_k = c.hk;
  p.head_dim = c.d;
  p.h_h_k_ratio = c.h / c.hk;
  p.q_row_stride = int64_t(c.h) * c.d;
  p.q_head_stride = c.d;
  p.q_batch_stride = int64_t(c.sq) * c.h * c.d;
  p.k_row_stride = int64_t(c.hk) * c.d;
  p.k_head_stride = c.d;
  p.k_batch_stride = int64_t(c.sk) * c.hk * c.d;
  p.lse_batch_stride = int64_t(c.h) * c.sq;
  p.lse_head_stride = c.sq;
  p.dtype = c.dt;
  p.causal = c.causal;
  p.window_left = c.wl;
  p.window_right = c.causal ? 0 : c.wr;
  p.softcap = c.softcap;
}

// A varlen problem (params.h): c.b sequences packed into total_q / total_k
// rows, c.sq / c.sk the max lengths; the offsets are device pointers (used_*
// may be null). The dense fields as the FFI handler sets them then
// (cc/ffi/fill_varlen.cc): batch = sequences, seqlen = max lengths, batch
// strides 0, LSE (heads, total_q).
static void set_varlen_shape_and_mask(const Case& c, int64_t total_q, int64_t total_k,
                                      const int32_t* cu_q, const int32_t* cu_k,
                                      const int32_t* used_q, const int32_t* used_k,
                                      AttnParams* out) {
  set_shape_and_mask(c, out);
  AttnParams& p = *out;
  p.is_varlen = true;
  p.num_seqs = c.b;
  p.total_q = total_q;
  p.total_k = total_k;
  p.max_seqlen_q = c.sq;
  p.max_seqlen_k = c.sk;
  p.cu_seqlens_q = cu_q;
  p.cu_seqlens_k = cu_k;
  p.seqused_q = used_q;
  p.seqused_k = used_k;
  p.q_batch_stride = p.k_batch_stride = p.lse_batch_stride = 0;
  p.lse_head_stride = total_q;
}

// The command line shared by the forward harnesses: --quick (a few small
// cases, no timing), --sweep (correctness only), --bench (timing only),
// --d N (one head dim, stored in *only_d). Exit status 1 on any failure.
static int fwd_harness_main(int argc, char** argv, int* only_d, int (*sweep)(bool quick),
                            void (*bench)()) {
  bool quick = false, do_sweep = true, do_bench = true;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--quick")) { quick = true; do_bench = false; }
    if (!strcmp(argv[i], "--sweep")) do_bench = false;
    if (!strcmp(argv[i], "--bench")) do_sweep = false;
    if (!strcmp(argv[i], "--d") && i + 1 < argc) *only_d = atoi(argv[++i]);
  }
  std::string dev = jax_fa3::hopper::check_device();
  if (!dev.empty()) { printf("%s\n", dev.c_str()); return 1; }
  int fails = do_sweep ? sweep(quick) : 0;
  if (do_bench) bench();
  return fails ? 1 : 0;
}
