// Diagnostic timeline of the backward's CTAs (build with
// -DJAX_FA3_BWD_TRACE; off otherwise, and then nothing here exists).
// Each CTA writes kBwdTraceSlots 64-bit values at its linear block id:
//   0 SM id, 1 consumer entry (clock64), 2 K arrived, 3 first step done,
//   4 last step done, 5 dK/dV epilogue done, 6 dQ writer done,
//   7 %globaltimer at entry (ns).
// launch_bwd_impl writes the last call's timeline to
// $JAX_FA3_BWD_TRACE_FILE.d<D>.<seqlen_q>[c] (summary:
// tests/cuda/bwd_trace_summary.py).
#pragma once

#ifdef JAX_FA3_BWD_TRACE
#include <cstdint>

namespace jax_fa3::hopper {

constexpr int kBwdTraceSlots = 8;

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
