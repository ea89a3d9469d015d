// One (head dim, dtype) instantiation of the experimental backward per TU.
// Empty unless JAX_FA3_EXPERIMENTAL_BWD (cmake option / env var) is on.
#if JAX_FA3_EXPERIMENTAL_BWD
#include "cc/hopper/launch_bwd.h"

namespace jax_fa3::hopper {
template std::string launch_bwd<96, cutlass::half_t>(const AttnParams&, const BwdWorkspace&, cudaStream_t);
}  // namespace jax_fa3::hopper
#endif
