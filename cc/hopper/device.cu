// Device checks, the stubs of a build without the backward, and the
// launchers' shared A/B switch of the Hopper backend.
#include <cuda_runtime.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cc/hopper/api.h"

namespace jax_fa3::hopper {

namespace {
constexpr int kMaxDevices = 64;
std::mutex g_mu;
// Per-device cache: 0 unknown, 1 ok, 2 not ok (with message).
int g_state[kMaxDevices] = {};
std::string g_msg[kMaxDevices];
int g_sms[kMaxDevices] = {};
}  // namespace

namespace detail {
int sm_count_cached() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return 132;
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_sms[dev] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0)
      n = 132;
    g_sms[dev] = n;
  }
  return g_sms[dev];
}
}  // namespace detail

std::string check_device() {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return std::string("jax_fa3: cudaGetDevice failed: ") + cudaGetErrorString(err);
  if (dev < 0 || dev >= kMaxDevices) return "jax_fa3: device index out of range";
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_state[dev] == 0) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (major == 9 && minor == 0) {
      g_state[dev] = 1;
    } else {
      g_state[dev] = 2;
      g_msg[dev] = "jax_fa3: the Hopper kernels need an sm_90 GPU (H100/H200); device " +
                   std::to_string(dev) + " is sm_" + std::to_string(major) + std::to_string(minor);
    }
  }
  return g_state[dev] == 1 ? std::string() : g_msg[dev];
}

#if !JAX_FA3_BWD
// Built with JAX_FA3_BWD=OFF; otherwise launch_bwd.cu defines these.
size_t bwd_workspace_bytes(const AttnParams&) { return 0; }

std::string run_bwd(const AttnParams&, void*) {
  return "jax_fa3 was built without the Hopper backward kernels (JAX_FA3_BWD=OFF); rebuild "
         "with JAX_FA3_BWD=1";
}
#endif

bool built() { return true; }

// The varlen A/B switch (api.h): here, in the one file every build of both
// launchers links.
bool varlen_plain_rr() {
  const char* e = std::getenv("JAX_FA3_VARLEN_PLAIN_RR");
  return e && e[0] == '1';
}

int bwd_dq_fuse_rows_env() {
  const char* e = std::getenv("JAX_FA3_BWD_DQ_FUSE_ROWS");
  if (e == nullptr || e[0] == '\0') return -1;
  long v = std::strtol(e, nullptr, 10);
  return v < 0 ? 0 : (v > (1L << 30) ? (1 << 30) : int(v));
}

int bwd_dq_first_store_env() {
  const char* e = std::getenv("JAX_FA3_BWD_DQ_FIRST_STORE");
  if (e == nullptr || (e[0] != '0' && e[0] != '1')) return -1;
  return e[0] - '0';
}

}  // namespace jax_fa3::hopper
