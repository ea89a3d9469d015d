// Entry points of the Hopper (sm90a) backend, seen from the FFI handlers.
// Kept free of CUDA and CuTe headers so the handler .cc files compile with
// the host compiler alone (XLA's FFI headers do not survive nvcc's host pass).
// When the CUDA part is not built, cc/hopper/not_built.cc provides versions
// that return a "not built" message.
#pragma once

#include <cstddef>
#include <string>

#include "cc/common/params.h"

namespace jax_fa3::hopper {

// "" when the current device can run our kernels, else why not.
std::string check_device();

// Forward. `stream` is the cudaStream_t XLA hands the handler. Returns "" on
// success, else a message (unsupported combination, launch failure).
std::string run_fwd(const AttnParams& p, void* stream);

// Scratch the backward needs (dQ fp32 accumulator, dPsum, scaled LSE,
// semaphores) for these params; the handler gets it from XLA.
size_t bwd_workspace_bytes(const AttnParams& p);
std::string run_bwd(const AttnParams& p, void* stream);

// Whether this build contains the CUDA kernels.
bool built();

// The launchers' varlen order A/B switch: JAX_FA3_VARLEN_PLAIN_RR=1 gives
// the forward plain round robin over its units (no sorting, no snake;
// tests/cuda/fwd_varlen_harness.cu measures the scheduler against it) and
// keeps the backward's sequences in input order (launch_bwd.h). Defined in
// device.cu.
bool varlen_plain_rr();

// The backward's fused dQ convert, for A/B runs and tests: with
// JAX_FA3_BWD_DQ_FUSE_ROWS=N the main kernel converts the dQ of sequences
// of at most N query rows (0: none, all go to the separate convert kernel)
// instead of the launcher's choice (launch_bwd.h); -1 when unset. Defined in
// device.cu.
int bwd_dq_fuse_rows_env();

// The backward's dQ accumulator without zeroing (bwd_dq.h), for A/B runs and
// tests: JAX_FA3_BWD_DQ_FIRST_STORE=0 zeroes it for every mask (each CTA
// adds), =1 leaves it unzeroed for every mask (the first CTA at each query
// block stores), instead of the launcher's choice (launch_bwd.h); -1 when
// unset. Defined in device.cu.
int bwd_dq_first_store_env();

}  // namespace jax_fa3::hopper
