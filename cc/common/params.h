// The one parameter struct shared by every backend (CPU, Hopper).
//
// The FFI handlers (cc/ffi/) fill it from XLA buffers and attributes and
// validate it; backends read it and nothing else, so data flows one way:
// FFI handler -> AttnParams -> backend kernel.
#pragma once

#include <cstdint>

namespace jax_fa3 {

enum class DType : int { kF16 = 0, kBF16 = 1, kF32 = 2 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    case DType::kF32: return "float32";
  }
  return "?";
}

struct AttnParams {
  // ---- shapes -------------------------------------------------------------
  // Layout is (batch, seqlen, heads, head_dim) like FA3 and
  // jax.nn.dot_product_attention; leading dims beyond 4-D fold into batch.
  int64_t batch = 0;
  int64_t seqlen_q = 0;
  int64_t seqlen_k = 0;
  int64_t num_heads = 0;    // query heads
  int64_t num_heads_k = 0;  // key/value heads; num_heads % num_heads_k == 0
  int64_t head_dim = 0;
  int64_t h_h_k_ratio = 1;  // num_heads / num_heads_k (GQA/MQA group size)

  // ---- strides, in elements (last dim is always contiguous) ---------------
  // Q/O/dQ/dO share the q strides, K/V/dK/dV the k strides: XLA hands us
  // dense row-major buffers, and keeping them separate lets later callers
  // (varlen, paged KV) pass views.
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  // LSE is (batch, heads, seqlen_q) float32, as in FA3.
  int64_t lse_batch_stride = 0, lse_head_stride = 0;

  DType dtype = DType::kBF16;

  // ---- semantics (see mask.h for exactly which keys a query sees) --------
  float softmax_scale = 1.0f;
  bool causal = false;
  int window_left = -1;   // -1: unbounded
  int window_right = -1;  // -1: unbounded; causal forces 0
  float softcap = 0.0f;   // 0: off; else s = softcap * tanh(s / softcap)
  // Whether a causal or local mask limits the keys (the launchers' tile and
  // scratch choices depend on it).
  bool masked() const { return causal || window_left >= 0 || window_right >= 0; }

  // FA3's sm_margin: > 0 when kernels on other streams (the ring's NCCL
  // transfers) run beside the forward. FA3 leaves that many SMs idle; the
  // Hopper forward launches one CTA per tile instead of its persistent grid
  // (launch_fwd.h says why), so every positive value acts alike. The CPU
  // backend and the (non-persistent) backward ignore it.
  int sm_margin = 0;

  // ---- forward buffers ----------------------------------------------------
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;

  // ---- backward buffers ---------------------------------------------------
  const void* dout = nullptr;
  const void* out_in = nullptr;   // forward output, read by the backward
  const float* lse_in = nullptr;  // forward LSE, read by the backward
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  bool deterministic = false;
  // Device scratch for the backward (fp32 dQ accumulator, dPsum, ...); the
  // handler obtains it from XLA's scratch allocator, never cudaMalloc.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;

  // ---- variable-length (packed) sequences ---------------------------------
  // With is_varlen, q/out/dq/dout are (total_q, heads, head_dim) and k/v/dk/dv
  // (total_k, kv_heads, head_dim): num_seqs sequences packed one after the
  // other, sequence b occupying rows [cu_seqlens_q[b], cu_seqlens_q[b+1]) of
  // q (and likewise of k). Of those rows only the first seqused_q[b] are
  // attended (all of them when seqused_q is null); rows in no sequence give
  // out 0, lse -inf and zero gradients. LSE is (heads, total_q).
  // batch = num_seqs and seqlen_q/k = max_seqlen_q/k (upper bounds of the
  // per-sequence lengths, for grid sizing), the *_batch_strides are 0 and
  // lse_head_stride = total_q. Masks (mask.h) apply per sequence, on its
  // attended lengths. cc/common/varlen.h reads these fields.
  //
  // The pointers are host memory on the CPU backend and device memory on
  // CUDA: the CPU handler rejects invalid values with an error; the CUDA
  // handler cannot read them without a sync, so its last kernel checks them
  // on the device and, when they break this contract, writes NaN into every
  // output element (out, lse, dq, dk, dv) instead of leaving undefined values.
  bool is_varlen = false;
  int64_t num_seqs = 0;
  int64_t total_q = 0;
  int64_t total_k = 0;
  int64_t max_seqlen_q = 0;
  int64_t max_seqlen_k = 0;
  const int32_t* cu_seqlens_q = nullptr;  // (num_seqs + 1), non-decreasing, [0] = 0
  const int32_t* cu_seqlens_k = nullptr;  // (num_seqs + 1), non-decreasing, [0] = 0
  const int32_t* seqused_q = nullptr;     // (num_seqs) or null
  const int32_t* seqused_k = nullptr;     // (num_seqs) or null

  // ---- derived helpers ----------------------------------------------------
  // Elements of the q-like / k-like / lse tensors (packed ones under varlen).
  int64_t q_elems() const {
    return (is_varlen ? total_q : batch * seqlen_q) * num_heads * head_dim;
  }
  int64_t k_elems() const {
    return (is_varlen ? total_k : batch * seqlen_k) * num_heads_k * head_dim;
  }
  int64_t lse_elems() const {
    return is_varlen ? num_heads * total_q : batch * num_heads * seqlen_q;
  }
};

}  // namespace jax_fa3
