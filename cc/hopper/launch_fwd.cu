// run_fwd: validates what the kernel supports and dispatches on
// (head_dim, dtype) to the explicitly instantiated launch_fwd<D, Element>
// (cc/hopper/instantiations/). Kept free of CuTe so it compiles fast.
#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cc/common/params.h"
#include "cc/hopper/api.h"
#include "cc/hopper/varlen_fill.h"

namespace jax_fa3::hopper {

template <int D, class Element>
std::string launch_fwd(const AttnParams& p, cudaStream_t stream);

namespace {

template <class Element>
std::string dispatch_hdim(const AttnParams& p, cudaStream_t s) {
  switch (p.head_dim) {
#ifdef JAX_FA3_HAS_HDIM64
    case 64: return launch_fwd<64, Element>(p, s);
#endif
#ifdef JAX_FA3_HAS_HDIM96
    case 96: return launch_fwd<96, Element>(p, s);
#endif
#ifdef JAX_FA3_HAS_HDIM128
    case 128: return launch_fwd<128, Element>(p, s);
#endif
#ifdef JAX_FA3_HAS_HDIM192
    case 192: return launch_fwd<192, Element>(p, s);
#endif
#ifdef JAX_FA3_HAS_HDIM256
    case 256: return launch_fwd<256, Element>(p, s);
#endif
    default:
      return "jax_fa3 hopper fwd: head_dim " + std::to_string(p.head_dim) +
             " is not built (built: JAX_FA3_HEAD_DIMS)";
  }
}

bool hdim_built(int64_t d) {
  switch (d) {
#ifdef JAX_FA3_HAS_HDIM64
    case 64:
#endif
#ifdef JAX_FA3_HAS_HDIM96
    case 96:
#endif
#ifdef JAX_FA3_HAS_HDIM128
    case 128:
#endif
#ifdef JAX_FA3_HAS_HDIM192
    case 192:
#endif
#ifdef JAX_FA3_HAS_HDIM256
    case 256:
#endif
      return true;
    default:
      return false;
  }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

// seqlen_k == 0: every row sees no key, so out = 0 and lse = -inf. Handled
// here because a TMA descriptor cannot describe an empty K/V tensor.
__global__ void fill_empty_rows(uint16_t* out, float* lse, int64_t rows, int64_t sq,
                                int64_t heads, int64_t d, int64_t q_batch_stride,
                                int64_t q_row_stride, int64_t q_head_stride,
                                int64_t lse_batch_stride, int64_t lse_head_stride) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    int64_t i = r % sq, h = (r / sq) % heads, b = r / (sq * heads);
    uint16_t* o = out + b * q_batch_stride + i * q_row_stride + h * q_head_stride;
    for (int64_t x = 0; x < d; ++x) o[x] = 0;  // +0.0 in bf16 and fp16
    lse[b * lse_batch_stride + h * lse_head_stride + i] = -INFINITY;
  }
}

std::string launch_error(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return "";
  return std::string("jax_fa3 hopper fwd: ") + what + " failed: " + cudaGetErrorString(err);
}

std::string dispatch(const AttnParams& p, cudaStream_t s) {
  if (p.dtype == DType::kBF16) return dispatch_hdim<cutlass::bfloat16_t>(p, s);
  return dispatch_hdim<cutlass::half_t>(p, s);
}

// Varlen (params.h): the packed rows outside every sequence's attended part
// get out 0 / lse -inf from fill_unattended_rows, the attended ones from the
// kernel. The offsets live in device memory, so only what the host knows is
// validated here; the kernel clamps the rest (tile_scheduler.h VarlenSeq)
// and a check launched last turns every output into NaN when they are
// invalid (varlen_fill.h).
std::string run_fwd_varlen(const AttnParams& p, cudaStream_t s) {
  const char* bad = nullptr;
  if (p.num_heads <= 0 || p.num_heads_k <= 0 || p.head_dim <= 0) bad = "invalid shape";
  else if (p.num_heads % p.num_heads_k != 0 || p.h_h_k_ratio != p.num_heads / p.num_heads_k)
    bad = "num_heads must be a multiple of num_heads_k";
  else if (p.num_seqs < 1 || !p.cu_seqlens_q || !p.cu_seqlens_k)
    bad = "varlen needs num_seqs >= 1 and cu_seqlens_q / cu_seqlens_k";
  else if (p.total_q < 0 || p.total_k < 0 || p.max_seqlen_q < 0 || p.max_seqlen_k < 0)
    bad = "varlen total and max lengths must be >= 0";
  // Rows are int32 (cu_seqlens are); a tile may reach a block past the end.
  else if (p.total_q > (int64_t(1) << 31) - 1024 || p.total_k > (int64_t(1) << 31) - 1024)
    bad = "packed tensors too long for int32 indexing";
  else if (p.max_seqlen_q > (int64_t(1) << 30) || p.max_seqlen_k > (int64_t(1) << 30))
    bad = "sequence too long for int32 indexing";
  else if (p.num_seqs * p.num_heads >= (int64_t(1) << 31))
    bad = "too many sequences";
  else if (p.softcap < 0.f) bad = "softcap must be >= 0";
  if (bad) return std::string("jax_fa3 hopper fwd: ") + bad;
  const int64_t es = 2;
  for (int64_t st : {p.q_row_stride, p.q_head_stride, p.k_row_stride, p.k_head_stride}) {
    if ((st * es) % 16 != 0) return "jax_fa3 hopper fwd: strides must be multiples of 16 bytes";
  }
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v) || !aligned16(p.out)) {
    return "jax_fa3 hopper fwd: q/k/v/out must be 16-byte aligned";
  }
  if (p.lse == nullptr) return "jax_fa3 hopper fwd: lse buffer is required";
  if (p.num_heads > 1 && p.lse_head_stride < p.total_q) {
    return "jax_fa3 hopper fwd: varlen lse_head_stride must be >= total_q";
  }
  if (p.total_q == 0) return "";
  if (!hdim_built(p.head_dim)) return dispatch(p, s);  // its message
  std::string err;
  if (p.total_k == 0 || p.max_seqlen_k == 0) {
    // No sequence has a key to attend (and no TMA descriptor can describe an
    // empty K/V): every row, attended or not, gets out 0 / lse -inf.
    int64_t rows = p.total_q * p.num_heads;
    int64_t blocks = (rows + 255) / 256;
    fill_empty_rows<<<int(blocks < 4096 ? blocks : 4096), 256, 0, s>>>(
        static_cast<uint16_t*>(p.out), p.lse, rows, p.total_q, p.num_heads, p.head_dim, 0,
        p.q_row_stride, p.q_head_stride, 0, p.lse_head_stride);
    err = launch_error("launch");
  } else {
    if (p.max_seqlen_q > 0) err = dispatch(p, s);  // else no attended query row
    if (err.empty())
      err = fill_unattended_rows(p.out, p.q_row_stride, p.q_head_stride, p.num_heads,
                                 p.head_dim, varlen_side_q(p), p.num_seqs, p.lse,
                                 p.lse_head_stride, s);
  }
  if (!err.empty()) return err;
  // Last, after every write of out / lse.
  VarlenOutput const out{p.out, p.total_q, p.q_row_stride, p.q_head_stride, p.num_heads,
                         p.head_dim};
  return poison_if_offsets_invalid(varlen_side_q(p), varlen_side_k(p), p.num_seqs, &out, 1,
                                   p.lse, p.num_heads, p.total_q, p.lse_head_stride, s);
}

// The launcher's A/B switches: environment variable `name` set to 1.
bool env_on(const char* name) {
  const char* e = std::getenv(name);
  return e && e[0] == '1';
}
}  // namespace

bool fwd_grid_per_tile() { return env_on("JAX_FA3_FWD_GRID_PER_TILE"); }

int fwd_wide_override() {
  const char* e = std::getenv("JAX_FA3_FWD_WIDE");
  if (e == nullptr || (e[0] != '0' && e[0] != '1') || e[1] != '\0') return -1;
  return e[0] == '1' ? 1 : 0;
}

std::string run_fwd(const AttnParams& p, void* stream) {
  if (p.dtype != DType::kBF16 && p.dtype != DType::kF16) {
    return std::string("jax_fa3 hopper fwd: dtype ") + dtype_name(p.dtype) +
           " is not supported (bfloat16 and float16 are)";
  }
  if (p.is_varlen) return run_fwd_varlen(p, static_cast<cudaStream_t>(stream));
  if (p.batch <= 0 || p.num_heads <= 0 || p.num_heads_k <= 0 || p.seqlen_q < 0 ||
      p.seqlen_k < 0) {
    return "jax_fa3 hopper fwd: invalid shape";
  }
  if (p.num_heads % p.num_heads_k != 0 || p.h_h_k_ratio != p.num_heads / p.num_heads_k) {
    return "jax_fa3 hopper fwd: num_heads must be a multiple of num_heads_k";
  }
  if (p.seqlen_q == 0) return "";
  if (p.seqlen_q > (int64_t(1) << 30) || p.seqlen_k > (int64_t(1) << 30)) {
    return "jax_fa3 hopper fwd: sequence too long for int32 indexing";
  }
  if (p.softcap < 0.f) return "jax_fa3 hopper fwd: softcap must be >= 0";
  // TMA: the base address and every stride but the innermost must be
  // multiples of 16 bytes.
  const int64_t es = 2;
  for (int64_t s : {p.q_row_stride, p.q_head_stride, p.q_batch_stride, p.k_row_stride,
                    p.k_head_stride, p.k_batch_stride}) {
    if ((s * es) % 16 != 0) return "jax_fa3 hopper fwd: strides must be multiples of 16 bytes";
  }
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v) || !aligned16(p.out)) {
    return "jax_fa3 hopper fwd: q/k/v/out must be 16-byte aligned";
  }
  if (p.lse == nullptr) return "jax_fa3 hopper fwd: lse buffer is required";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.seqlen_k == 0) {
    if (!hdim_built(p.head_dim)) return dispatch_hdim<cutlass::bfloat16_t>(p, s);  // its message
    int64_t rows = p.batch * p.seqlen_q * p.num_heads;
    int64_t blocks = (rows + 255) / 256;
    fill_empty_rows<<<int(blocks < 4096 ? blocks : 4096), 256, 0, s>>>(
        static_cast<uint16_t*>(p.out), p.lse, rows, p.seqlen_q, p.num_heads, p.head_dim,
        p.q_batch_stride, p.q_row_stride, p.q_head_stride, p.lse_batch_stride,
        p.lse_head_stride);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
      return std::string("jax_fa3 hopper fwd: launch failed: ") + cudaGetErrorString(err);
    }
    return "";
  }
  return dispatch(p, s);
}

}  // namespace jax_fa3::hopper
