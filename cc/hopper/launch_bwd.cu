// Hopper backward (JAX_FA3_BWD): bwd_workspace_bytes
// and run_bwd (validation, workspace zeroing, preprocess, main kernel per
// (head_dim, dtype), postprocess; varlen: zeros for the unattended rows). Kept free of CuTe. When the gate is off
// (JAX_FA3_BWD=OFF) this TU is empty and device.cu provides stubs.
#if JAX_FA3_BWD
#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "cc/common/params.h"
#include "cc/hopper/api.h"
#include "cc/hopper/varlen_fill.h"
#define JAX_FA3_BWD_LAYOUT_ONLY
#include "cc/hopper/launch_bwd.h"

namespace jax_fa3::hopper {

namespace {

template <class Element>
std::string dispatch_bwd(const AttnParams& p, const BwdWorkspace& w, cudaStream_t s) {
  switch (p.head_dim) {
#ifdef JAX_FA3_HAS_HDIM64
    case 64: return launch_bwd<64, Element>(p, w, s);
#endif
#ifdef JAX_FA3_HAS_HDIM96
    case 96: return launch_bwd<96, Element>(p, w, s);
#endif
#ifdef JAX_FA3_HAS_HDIM128
    case 128: return launch_bwd<128, Element>(p, w, s);
#endif
#ifdef JAX_FA3_HAS_HDIM192
    case 192: return launch_bwd<192, Element>(p, w, s);
#endif
#ifdef JAX_FA3_HAS_HDIM256
    case 256: return launch_bwd<256, Element>(p, w, s);
#endif
    default:
      return "jax_fa3 hopper bwd: head_dim " + std::to_string(p.head_dim) +
             " is not built (built: JAX_FA3_HEAD_DIMS)";
  }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

// Varlen fields run_bwd relies on (the offsets' values live on the device
// and are the caller's to validate: cc/common/varlen.h).
std::string check_varlen(const AttnParams& p) {
  if (p.num_seqs < 1) return "jax_fa3 hopper bwd: varlen needs at least one sequence";
  if (p.num_seqs > 65535) return "jax_fa3 hopper bwd: more than 65535 sequences";
  if (!p.cu_seqlens_q || !p.cu_seqlens_k) return "jax_fa3 hopper bwd: cu_seqlens_q/k is null";
  if (p.total_q < 0 || p.total_k < 0 || p.max_seqlen_q < 0 || p.max_seqlen_k < 0)
    return "jax_fa3 hopper bwd: invalid varlen sizes";
  if (p.seqlen_q != p.max_seqlen_q || p.seqlen_k != p.max_seqlen_k)
    return "jax_fa3 hopper bwd: varlen needs seqlen_q/k = max_seqlen_q/k";
  // Packed rows and padded scratch rows are int32 in the kernels.
  if (p.total_q + (p.num_seqs + 1) * kBwdPadN > (int64_t(1) << 31) - 1 ||
      p.total_k + (p.num_seqs + 1) * kBwdPadN > (int64_t(1) << 31) - 1)
    return "jax_fa3 hopper bwd: varlen total too large for int32 indexing";
  if (p.lse_head_stride != p.total_q)
    return "jax_fa3 hopper bwd: varlen lse must be (heads, total_q)";
  return "";
}

// Varlen rows outside every sequence's attended part get zero gradients
// (params.h); the tile kernels never write them. Then, last, the offsets'
// check: invalid ones turn every element of dq/dk/dv into NaN.
std::string fill_unattended(const AttnParams& p, cudaStream_t s) {
  std::string e = fill_unattended_rows(p.dq, p.q_row_stride, p.q_head_stride, p.num_heads,
                                       p.head_dim, varlen_side_q(p), p.num_seqs, nullptr, 0, s);
  for (void* x : {p.dk, p.dv}) {
    if (e.empty())
      e = fill_unattended_rows(x, p.k_row_stride, p.k_head_stride, p.num_heads_k, p.head_dim,
                               varlen_side_k(p), p.num_seqs, nullptr, 0, s);
  }
  if (!e.empty()) return e;
  VarlenOutput const outs[3] = {
      {p.dq, p.total_q, p.q_row_stride, p.q_head_stride, p.num_heads, p.head_dim},
      {p.dk, p.total_k, p.k_row_stride, p.k_head_stride, p.num_heads_k, p.head_dim},
      {p.dv, p.total_k, p.k_row_stride, p.k_head_stride, p.num_heads_k, p.head_dim}};
  return poison_if_offsets_invalid(varlen_side_q(p), varlen_side_k(p), p.num_seqs, outs, 3,
                                   nullptr, 0, 0, 0, s);
}

}  // namespace

size_t bwd_workspace_bytes(const AttnParams& p) {
  if (p.batch <= 0 || p.num_heads <= 0 || p.num_heads_k <= 0 || p.head_dim <= 0) return 0;
  return size_t(BwdWorkspace::make(p).bytes);
}

std::string run_bwd(const AttnParams& p, void* stream) {
  if (p.dtype != DType::kBF16 && p.dtype != DType::kF16) {
    return std::string("jax_fa3 hopper bwd: dtype ") + dtype_name(p.dtype) +
           " is not supported (bfloat16 and float16 are)";
  }
  if (p.batch <= 0 || p.num_heads <= 0 || p.num_heads_k <= 0 || p.seqlen_q < 0 ||
      p.seqlen_k < 0) {
    return "jax_fa3 hopper bwd: invalid shape";
  }
  if (p.num_heads % p.num_heads_k != 0 || p.h_h_k_ratio != p.num_heads / p.num_heads_k) {
    return "jax_fa3 hopper bwd: num_heads must be a multiple of num_heads_k";
  }
  if (p.is_varlen) {
    std::string e = check_varlen(p);
    if (!e.empty()) return e;
  } else if (p.seqlen_q == 0 && p.seqlen_k == 0) {
    return "";
  }
  if (p.seqlen_q > (int64_t(1) << 30) || p.seqlen_k > (int64_t(1) << 30)) {
    return "jax_fa3 hopper bwd: sequence too long for int32 indexing";
  }
  if (p.softcap < 0.f) return "jax_fa3 hopper bwd: softcap must be >= 0";
  for (int64_t s : {p.q_row_stride, p.q_head_stride, p.q_batch_stride, p.k_row_stride,
                    p.k_head_stride, p.k_batch_stride}) {
    if ((s * 2) % 16 != 0) return "jax_fa3 hopper bwd: strides must be multiples of 16 bytes";
  }
  for (const void* ptr : std::initializer_list<const void*>{p.q, p.k, p.v, p.dout, p.out_in,
                                                           p.dq, p.dk, p.dv}) {
    if (!aligned16(ptr)) return "jax_fa3 hopper bwd: q/k/v/out/dout/dq/dk/dv must be 16-byte aligned";
  }
  if (p.lse_in == nullptr) return "jax_fa3 hopper bwd: lse buffer is required";
  switch (p.head_dim) {
    case 64: case 96: case 128: case 192: case 256: break;
    default:
      return "jax_fa3 hopper bwd: head_dim " + std::to_string(p.head_dim) + " is not supported";
  }
  BwdWorkspace w = BwdWorkspace::make(p);
  if (p.workspace == nullptr || p.workspace_bytes < w.bytes || !aligned16(p.workspace)) {
    return "jax_fa3 hopper bwd: workspace missing or too small (" +
           std::to_string(p.workspace_bytes) + " < " + std::to_string(w.bytes) + " bytes)";
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  bool const main_kernel = BwdWorkspace::main_kernel(p);
  // The preprocess zeroes the dQ accumulator when it runs (with the main
  // kernel); the memset covers the rest.
  int64_t const zero_from = main_kernel ? w.dq_end : w.zero_begin;
  if (w.bytes > zero_from) {
    cudaError_t err = cudaMemsetAsync(static_cast<char*>(p.workspace) + zero_from, 0,
                                      size_t(w.bytes - zero_from), s);
    if (err != cudaSuccess) {
      return std::string("jax_fa3 hopper bwd: cudaMemsetAsync failed: ") +
             cudaGetErrorString(err);
    }
  }
  std::string e;
  if (main_kernel) {
    e = bwd_preprocess(p, w, s);
    if (!e.empty()) return e;
    e = p.dtype == DType::kBF16 ? dispatch_bwd<cutlass::bfloat16_t>(p, w, s)
                                : dispatch_bwd<cutlass::half_t>(p, w, s);
    if (!e.empty()) return e;
  }
  // seqlen_k == 0: dq = 0 from the zeroed accumulator; seqlen_q == 0: dk = dv
  // = 0 from the zeroed fp32 dK/dV accumulators (BwdWorkspace::make).
  e = bwd_postprocess(p, w, /*convert_dq=*/!main_kernel, s);
  if (e.empty() && p.is_varlen) e = fill_unattended(p, s);
  return e;
}

}  // namespace jax_fa3::hopper
#endif  // JAX_FA3_BWD
