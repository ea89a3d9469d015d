// Stand-ins for the Hopper backend when CMake found no CUDA toolchain (or
// JAX_FA3_CUDA=OFF): every CUDA call reports clearly that it is missing.
#include "cc/hopper/api.h"

namespace jax_fa3::hopper {

static const char* kMsg =
    "jax_fa3 was built without its CUDA kernels (no nvcc found, or "
    "JAX_FA3_CUDA=OFF); reinstall on a machine with nvcc >= 12.3 to run on "
    "GPU, or run on the CPU backend";

std::string check_device() { return kMsg; }
std::string run_fwd(const AttnParams&, void*) { return kMsg; }
size_t bwd_workspace_bytes(const AttnParams&) { return 0; }
std::string run_bwd(const AttnParams&, void*) { return kMsg; }
bool built() { return false; }

}  // namespace jax_fa3::hopper
