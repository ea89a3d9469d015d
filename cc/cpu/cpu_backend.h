// CPU backend: tiled, online-softmax attention with fp32 accumulation.
// The fallback on machines without a Hopper GPU and the oracle for the FFI
// path in CI. Work is spread over std::thread workers; memory is O(seqlen).
#pragma once

#include <string>

#include "cc/common/params.h"

namespace jax_fa3::cpu {

// Each returns "" on success, else a message for an ffi::Error.
// Forward: reads q, k, v; writes out and lse.
std::string run_fwd(const AttnParams& p);
// Backward: reads q, k, v, out_in, lse_in, dout; writes dq, dk, dv.
std::string run_bwd(const AttnParams& p);

}  // namespace jax_fa3::cpu
