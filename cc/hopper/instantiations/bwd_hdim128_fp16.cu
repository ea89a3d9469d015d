// One (head dim, dtype) instantiation of the backward per TU.
// Empty when built with JAX_FA3_BWD=OFF.
#if JAX_FA3_BWD
#include "cc/hopper/launch_bwd.h"

namespace jax_fa3::hopper {
template std::string launch_bwd<128, cutlass::half_t>(const AttnParams&, const BwdWorkspace&, cudaStream_t);
}  // namespace jax_fa3::hopper
#endif
