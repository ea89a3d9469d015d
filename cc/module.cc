// nanobind module: hands the FFI handler capsules to Python
// (jax_fa3/_ffi.py registers them with jax.ffi.register_ffi_target).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "cc/ffi/handlers.h"
#include "cc/hopper/api.h"

namespace nb = nanobind;

namespace {
template <typename Fn>
nb::capsule capsule(Fn* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}
}  // namespace

NB_MODULE(_jax_fa3_ext, m) {
  m.doc() = "jax_fa3 native extension: XLA FFI handlers for attention";
  m.def("registrations", []() {
    nb::dict cpu, cuda;
    cpu["jax_fa3_fwd"] = capsule(JaxFa3FwdCpu);
    cpu["jax_fa3_bwd"] = capsule(JaxFa3BwdCpu);
    cuda["jax_fa3_fwd"] = capsule(JaxFa3FwdCuda);
    cuda["jax_fa3_bwd"] = capsule(JaxFa3BwdCuda);
    nb::dict out;
    out["cpu"] = cpu;
    out["CUDA"] = cuda;
    return out;
  });
  m.def("cuda_built", []() { return jax_fa3::hopper::built(); },
        "Whether this build contains the Hopper (sm90a) kernels.");
  m.def("cuda_device_check", []() { return jax_fa3::hopper::check_device(); },
        "'' if the current CUDA device can run the kernels, else why not.");
}
