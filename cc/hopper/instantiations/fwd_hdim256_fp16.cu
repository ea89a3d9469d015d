// One (head dim, dtype) instantiation of the forward per TU: keeps each
// nvcc invocation's time and memory bounded and lets the build run them in
// parallel.
#include "cc/hopper/launch_fwd.h"

namespace jax_fa3::hopper {
template std::string launch_fwd<256, cutlass::half_t>(const AttnParams&, cudaStream_t);
}  // namespace jax_fa3::hopper
