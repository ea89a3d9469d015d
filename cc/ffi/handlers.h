// XLA FFI handler symbols: one per platform and pass. module.cc hands them
// to Python as capsules for jax.ffi.register_ffi_target.
#pragma once

#include "xla/ffi/api/c_api.h"

extern "C" {
XLA_FFI_Error* JaxFa3FwdCpu(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxFa3BwdCpu(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxFa3FwdCuda(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxFa3BwdCuda(XLA_FFI_CallFrame* call_frame);
}
