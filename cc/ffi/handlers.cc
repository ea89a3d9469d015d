// The FFI handlers: decode buffers/attributes, fill AttnParams (validated),
// call the backend. Thin on purpose: no math here.
//
// Contract with jax_fa3/primitives.py:
//   fwd: (q, k, v, *offsets) -> (out, lse)
//   bwd: (q, k, v, out, lse, dout, *offsets) -> (dq, dk, dv)
//   attrs: softmax_scale f32, causal bool, window_left i32, window_right i32,
//          softcap f32, varlen bool, max_seqlen_q i32, max_seqlen_k i32,
//          has_seqused_q bool, has_seqused_k bool (+ sm_margin i32 for fwd,
//          deterministic bool for bwd)
// `offsets` is empty for dense (batch..., seqlen, heads, d) inputs and holds
// cu_seqlens_q, cu_seqlens_k[, seqused_q][, seqused_k] for packed ones
// (fill_varlen.h), so each platform and pass keeps a single handler.
#include "cc/ffi/handlers.h"

#include <string>

#include "cc/cpu/cpu_backend.h"
#include "cc/ffi/fill_params.h"
#include "cc/ffi/fill_varlen.h"
#include "cc/hopper/api.h"
#include "xla/ffi/api/ffi.h"

// CUDA's stream type, declared the way cuda_runtime_api.h does, so this file
// needs no CUDA headers (and builds on machines without the toolkit).
struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;

namespace jax_fa3::ffi_glue {
namespace {

ffi::Error from_message(const std::string& msg) {
  if (msg.empty()) return ffi::Error::Success();
  return ffi::Error::Internal("jax_fa3: " + msg);
}

ffi::Error fill_fwd(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                    const ffi::RemainingArgs& offsets, ffi::Result<ffi::AnyBuffer> out,
                    ffi::Result<ffi::Buffer<ffi::F32>> lse, const Attrs& a,
                    const VarlenAttrs& va, int32_t sm_margin, bool cuda, AttnParams* p) {
  JAX_FA3_RETURN_IF_ERROR(fill_layout(q, k, v, offsets, va, a, cuda, p));
  if (sm_margin < 0 || sm_margin >= 1024)
    return ffi::Error::InvalidArgument("jax_fa3: sm_margin must be in [0, 1024), got " +
                                       std::to_string(sm_margin));
  p->sm_margin = sm_margin;
  JAX_FA3_RETURN_IF_ERROR(expect_like("out", out, "q", q));
  JAX_FA3_RETURN_IF_ERROR(expect_lse("lse", lse, *p, q));
  p->out = out->untyped_data();
  p->lse = lse->typed_data();
  return ffi::Error::Success();
}

ffi::Error fill_bwd(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out,
                    ffi::Buffer<ffi::F32> lse, ffi::AnyBuffer dout,
                    const ffi::RemainingArgs& offsets, ffi::Result<ffi::AnyBuffer> dq,
                    ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                    const Attrs& a, const VarlenAttrs& va, bool deterministic, bool cuda,
                    AttnParams* p) {
  JAX_FA3_RETURN_IF_ERROR(fill_layout(q, k, v, offsets, va, a, cuda, p));
  JAX_FA3_RETURN_IF_ERROR(expect_like("out", out, "q", q));
  JAX_FA3_RETURN_IF_ERROR(expect_like("dout", dout, "q", q));
  JAX_FA3_RETURN_IF_ERROR(expect_lse("lse", lse, *p, q));
  JAX_FA3_RETURN_IF_ERROR(expect_like("dq", dq, "q", q));
  JAX_FA3_RETURN_IF_ERROR(expect_like("dk", dk, "k", k));
  JAX_FA3_RETURN_IF_ERROR(expect_like("dv", dv, "v", v));
  p->out_in = out.untyped_data();
  p->lse_in = lse.typed_data();
  p->dout = dout.untyped_data();
  p->dq = dq->untyped_data();
  p->dk = dk->untyped_data();
  p->dv = dv->untyped_data();
  p->deterministic = deterministic;
  return ffi::Error::Success();
}

ffi::Error FwdCpuImpl(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                      ffi::RemainingArgs offsets, ffi::Result<ffi::AnyBuffer> out,
                      ffi::Result<ffi::Buffer<ffi::F32>> lse, float softmax_scale, bool causal,
                      int32_t window_left, int32_t window_right, float softcap, bool varlen,
                      int32_t max_seqlen_q, int32_t max_seqlen_k, bool has_seqused_q,
                      bool has_seqused_k, int32_t sm_margin) {
  AttnParams p;
  Attrs a{softmax_scale, causal, window_left, window_right, softcap};
  VarlenAttrs va{varlen, max_seqlen_q, max_seqlen_k, has_seqused_q, has_seqused_k};
  JAX_FA3_RETURN_IF_ERROR(fill_fwd(q, k, v, offsets, out, lse, a, va, sm_margin,
                                   /*cuda=*/false, &p));
  return from_message(cpu::run_fwd(p));
}

ffi::Error BwdCpuImpl(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                      ffi::AnyBuffer out, ffi::Buffer<ffi::F32> lse, ffi::AnyBuffer dout,
                      ffi::RemainingArgs offsets, ffi::Result<ffi::AnyBuffer> dq,
                      ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                      float softmax_scale, bool causal, int32_t window_left,
                      int32_t window_right, float softcap, bool varlen, int32_t max_seqlen_q,
                      int32_t max_seqlen_k, bool has_seqused_q, bool has_seqused_k,
                      bool deterministic) {
  AttnParams p;
  Attrs a{softmax_scale, causal, window_left, window_right, softcap};
  VarlenAttrs va{varlen, max_seqlen_q, max_seqlen_k, has_seqused_q, has_seqused_k};
  JAX_FA3_RETURN_IF_ERROR(fill_bwd(q, k, v, out, lse, dout, offsets, dq, dk, dv, a, va,
                                   deterministic, /*cuda=*/false, &p));
  return from_message(cpu::run_bwd(p));
}

ffi::Error FwdCudaImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k,
                       ffi::AnyBuffer v, ffi::RemainingArgs offsets,
                       ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                       float softmax_scale, bool causal, int32_t window_left,
                       int32_t window_right, float softcap, bool varlen, int32_t max_seqlen_q,
                       int32_t max_seqlen_k, bool has_seqused_q, bool has_seqused_k,
                       int32_t sm_margin) {
  JAX_FA3_RETURN_IF_ERROR(from_message(hopper::check_device()));
  AttnParams p;
  Attrs a{softmax_scale, causal, window_left, window_right, softcap};
  VarlenAttrs va{varlen, max_seqlen_q, max_seqlen_k, has_seqused_q, has_seqused_k};
  JAX_FA3_RETURN_IF_ERROR(fill_fwd(q, k, v, offsets, out, lse, a, va, sm_margin,
                                   /*cuda=*/true, &p));
  return from_message(hopper::run_fwd(p, stream));
}

ffi::Error BwdCudaImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer q,
                       ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out,
                       ffi::Buffer<ffi::F32> lse, ffi::AnyBuffer dout,
                       ffi::RemainingArgs offsets, ffi::Result<ffi::AnyBuffer> dq,
                       ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                       float softmax_scale, bool causal, int32_t window_left,
                       int32_t window_right, float softcap, bool varlen, int32_t max_seqlen_q,
                       int32_t max_seqlen_k, bool has_seqused_q, bool has_seqused_k,
                       bool deterministic) {
  JAX_FA3_RETURN_IF_ERROR(from_message(hopper::check_device()));
  AttnParams p;
  Attrs a{softmax_scale, causal, window_left, window_right, softcap};
  VarlenAttrs va{varlen, max_seqlen_q, max_seqlen_k, has_seqused_q, has_seqused_k};
  JAX_FA3_RETURN_IF_ERROR(fill_bwd(q, k, v, out, lse, dout, offsets, dq, dk, dv, a, va,
                                   deterministic, /*cuda=*/true, &p));
  size_t bytes = hopper::bwd_workspace_bytes(p);
  if (bytes > 0) {
    // XLA's allocator: no cudaMalloc in our code, and safe under graphs.
    auto mem = scratch.Allocate(bytes, /*alignment=*/16);
    if (!mem.has_value())
      return ffi::Error(ffi::ErrorCode::kResourceExhausted, "jax_fa3: could not allocate " +
                                           std::to_string(bytes) +
                                           " bytes of backward scratch");
    p.workspace = *mem;
    p.workspace_bytes = static_cast<int64_t>(bytes);
  }
  return from_message(hopper::run_bwd(p, stream));
}

}  // namespace
}  // namespace jax_fa3::ffi_glue

namespace ffi = xla::ffi;
using namespace jax_fa3::ffi_glue;  // NOLINT: the *Impl functions above

// Attributes of every call (forward and backward, dense and varlen).
#define JAX_FA3_COMMON_ATTRS        \
  .Attr<float>("softmax_scale")     \
      .Attr<bool>("causal")         \
      .Attr<int32_t>("window_left") \
      .Attr<int32_t>("window_right") \
      .Attr<float>("softcap")       \
      .Attr<bool>("varlen")         \
      .Attr<int32_t>("max_seqlen_q") \
      .Attr<int32_t>("max_seqlen_k") \
      .Attr<bool>("has_seqused_q")  \
      .Attr<bool>("has_seqused_k")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFa3FwdCpu, FwdCpuImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAX_FA3_COMMON_ATTRS
                                  .Attr<int32_t>("sm_margin"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFa3BwdCpu, BwdCpuImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() JAX_FA3_COMMON_ATTRS
                                  .Attr<bool>("deterministic"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFa3FwdCuda, FwdCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAX_FA3_COMMON_ATTRS
                                  .Attr<int32_t>("sm_margin"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFa3BwdCuda, BwdCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() JAX_FA3_COMMON_ATTRS
                                  .Attr<bool>("deterministic"));
