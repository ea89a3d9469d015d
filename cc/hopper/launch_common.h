// Host-side kernel parameters that the forward and backward launchers
// (launch_fwd.h, launch_bwd.h) derive the same way from AttnParams.
#pragma once

#include <cstdint>

#include "cc/common/mask.h"
#include "cc/common/params.h"
#include "cc/hopper/mask_fwd.h"

namespace jax_fa3::hopper {

// The kernels compute exp2(s * scale_log2 - m). With softcap the score is
// capped first (s <- softcap * tanh(s * softcap_pre)), so the softmax scale
// moves into softcap_pre and scale_log2 is just log2(e).
template <class KernelParams>
void set_score_scale(const AttnParams& a, KernelParams* kp) {
  constexpr float kLog2e = 1.4426950408889634f;
  if (a.softcap > 0.f) {
    kp->softcap = a.softcap;
    kp->softcap_pre = a.softmax_scale / a.softcap;
    kp->scale_log2 = kLog2e;
  } else {
    kp->softcap = 0.f;
    kp->softcap_pre = 0.f;
    kp->scale_log2 = a.softmax_scale * kLog2e;
  }
}

// mask.h's MaskSpec in the kernels' int32 form. Windows wider than the
// sequence are unbounded; clamping keeps the int32 arithmetic in the kernel
// from overflowing.
inline FwdMask kernel_mask(const AttnParams& a) {
  MaskSpec ms = MaskSpec::make(a.seqlen_q, a.seqlen_k, a.causal, a.window_left, a.window_right);
  auto clamp_w = [&](int64_t w) -> int {
    if (w < 0) return -1;
    int64_t lim = a.seqlen_q + a.seqlen_k + 1;
    return int(w > lim ? lim : w);
  };
  return FwdMask{int(a.seqlen_q), int(a.seqlen_k), clamp_w(ms.left), clamp_w(ms.right)};
}

}  // namespace jax_fa3::hopper
