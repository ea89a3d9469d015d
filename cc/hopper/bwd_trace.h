// Diagnostic timeline of the backward's CTAs (build with
// -DJAX_FA3_BWD_TRACE; off otherwise, and then nothing here exists).
// Each CTA writes kBwdTraceSlots 64-bit values at its linear block id:
//   0 SM id, 1 consumer entry (clock64), 2 K arrived, 3 first step done,
//   4 last step done, 5 dK/dV epilogue done, 6 dQ writer done,
//   7 %globaltimer at entry (ns), 8 fused dQ convert: the CTA's count
//   known to the consumers, 9 its convert done (bwd_dq_fuse.h; 0 if none).
// launch_bwd_impl writes the last call's timeline to
// $JAX_FA3_BWD_TRACE_FILE.d<D>.<seqlen_q>[c] (summary:
// tests/cuda/bwd_trace_summary.py).
#pragma once

#ifdef JAX_FA3_BWD_TRACE
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace jax_fa3::hopper {

constexpr int kBwdTraceSlots = 10;

// Host side (launch_bwd_impl): a zeroed buffer for every CTA of `grid`
// (grown as needed, kept for the process), and after the launch, when
// $JAX_FA3_BWD_TRACE_FILE is set, the timeline to that name + suffix
// (synchronizes: a diagnostic, not for graph capture).
inline unsigned long long* bwd_trace_buffer(dim3 grid, cudaStream_t stream) {
  static unsigned long long* buf = nullptr;
  static size_t have = 0;
  size_t const bytes = size_t(grid.x) * grid.y * grid.z * kBwdTraceSlots * 8;
  if (bytes > have) {
    cudaFree(buf);
    cudaMalloc(&buf, bytes);
    have = bytes;
  }
  cudaMemsetAsync(buf, 0, bytes, stream);
  return buf;
}
inline void bwd_trace_dump(unsigned long long const* buf, dim3 grid, std::string const& suffix,
                           cudaStream_t stream) {
  char const* f = std::getenv("JAX_FA3_BWD_TRACE_FILE");
  if (f == nullptr) return;
  int64_t const ctas = int64_t(grid.x) * grid.y * grid.z;
  std::vector<unsigned long long> h(size_t(ctas) * kBwdTraceSlots);
  cudaStreamSynchronize(stream);
  cudaMemcpy(h.data(), buf, h.size() * 8, cudaMemcpyDeviceToHost);
  if (FILE* fh = std::fopen((std::string(f) + suffix).c_str(), "wb")) {
    int64_t const hdr[4] = {ctas, grid.x, grid.y, grid.z};
    std::fwrite(hdr, 8, 4, fh);
    std::fwrite(h.data(), 8, h.size(), fh);
    std::fclose(fh);
  }
}

__device__ __forceinline__ void bwd_trace_at(unsigned long long* trace, int slot) {
  if (trace == nullptr) return;
  int64_t const id = blockIdx.x + int64_t(gridDim.x) * (blockIdx.y + int64_t(gridDim.y) * blockIdx.z);
  unsigned long long v;
  if (slot == 0) {
    unsigned s;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
    v = s;
  } else if (slot == 7) {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(v));
  } else {
    v = clock64();
  }
  trace[id * kBwdTraceSlots + slot] = v;
}

}  // namespace jax_fa3::hopper
#define JAX_FA3_BWD_TRACE_AT(p, slot) ::jax_fa3::hopper::bwd_trace_at((p).trace, slot)
#else
#define JAX_FA3_BWD_TRACE_AT(p, slot)
#endif
