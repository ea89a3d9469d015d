// Online softmax on WGMMA accumulator fragments (FA3 §3.1 / FA2 Alg. 1).
//
// A 64xN WGMMA accumulator gives each thread 2 rows (g and g+8 of its warp's
// 16) and N/4 columns of each; the 4 threads of a quad share a row, so row
// reductions are thread-local followed by two xor-shuffles. We keep the row
// max in "raw" units and fold softmax_scale * log2(e) into one FFMA before
// exp2, as FA does. The row sum stays thread-partial until the end.
#pragma once

#include <cmath>
#include <cute/tensor.hpp>

namespace jax_fa3::hopper {

using namespace cute;

// ((2,2,V),M,N) accumulator layout -> ((2,M), (2,V,N)): (row, col) view.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_rowcol(Layout const& l) {
  static_assert(decltype(rank(l))::value == 3);
  auto l0 = get<0>(l);
  return make_layout(make_layout(get<1>(l0), get<1>(l)),
                     make_layout(get<0>(l0), get<2>(l0), get<2>(l)));
}

// ((2,2,V),M,N) accumulator layout of S -> ((2,2,2),M,(V/2,N)): the register
// A-operand layout of a 64xDx16 RS WGMMA, so P feeds the next WGMMA with no
// shuffle (the C and A fragments of WGMMA hold the same (row, col) pairs).
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_to_a_operand(Layout const& l) {
  auto l0 = get<0>(l);
  auto v = logical_divide(get<2>(l0), Int<2>{});
  return make_layout(make_layout(get<0>(l0), get<1>(l0), get<0>(v)), get<1>(l),
                     make_layout(get<1>(v), get<2>(l)));
}

__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
  return x;
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  x += __shfl_xor_sync(0xffffffff, x, 2);
  return x;
}

// Backward: dS of one score from P and dP, P (dP - dPsum). With softcap
// (kCap) times 1 - tanh^2 of the capped score, recovered from P: capped =
// (log2 P + lse2) / log2(e). Where P == 0 (masked, or a row that sees no
// key, whose lse2 is +inf) dS is 0: selected, since 0 * (1 - inf^2) would
// be NaN. kCap is a template argument so that the caller can test softcap
// once, outside its unrolled loop over the tile (see the callers).
template <bool kCap>
__device__ __forceinline__ float bwd_ds(float pv, float dp, float dsum, float lse2,
                                        float softcap) {
  float ds = pv * (dp - dsum);
  if constexpr (kCap) {
    float t = (__log2f(fmaxf(pv, 1e-37f)) + lse2) * (0.6931471805599453f / softcap);
    ds = pv > 0.f ? ds * (1.f - t * t) : 0.f;
  }
  return ds;
}

template <int kRows>
struct OnlineSoftmax {
  float row_max[kRows];
  float row_sum[kRows];   // thread-partial until finalize()
  float scale_log2;       // multiplies raw scores before exp2

  __device__ __forceinline__ explicit OnlineSoftmax(float scale_log2_) : scale_log2(scale_log2_) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) { row_max[r] = -INFINITY; row_sum[r] = 0.f; }
  }

  // softcap: s <- cap * tanh(s * scale / cap). Applied before masking; the
  // caller then uses scale_log2 = log2(e), the scale being folded in here.
  template <class TensorS>
  __device__ __forceinline__ static void apply_softcap(TensorS& s, float pre, float cap) {
    CUTE_UNROLL
    for (int i = 0; i < size(s); ++i) s(i) = cap * tanh_approx(s(i) * pre);
  }

  // One step: s is the (row, col) view of this key block's scores (masked
  // entries are -inf); overwrites it with P = exp(s - new_max) and rescales
  // the (row, col) view of O by exp(old_max - new_max).
  template <class TensorS, class TensorO>
  __device__ __forceinline__ void step(TensorS& s, TensorO& o, bool first) {
    static_assert(decltype(size<0>(s))::value == kRows);
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float mx = row_max[r];
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) mx = fmaxf(mx, s(r, c));
      mx = quad_max(mx);
      // A row with nothing visible so far keeps max = -inf; subtract 0 then
      // so exp2(-inf - (-inf)) never produces NaN.
      float max_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
      if (!first) {
        float corr = exp2f(row_max[r] * scale_log2 - max_scaled);
        row_sum[r] *= corr;
        CUTE_UNROLL
        for (int c = 0; c < size<1>(o); ++c) o(r, c) *= corr;
      }
      row_max[r] = mx;
      float sum = 0.f;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) {
        float p = exp2f(fmaf(s(r, c), scale_log2, -max_scaled));
        s(r, c) = p;
        sum += p;
      }
      row_sum[r] += sum;
    }
  }

  // Split form of step() for the overlapped mainloop: computes P in place
  // and the per-row correction factors, but leaves O alone because the
  // previous P*V WGMMA may still be accumulating into it. rescale() applies
  // the factors once that WGMMA has retired.
  template <class TensorS>
  __device__ __forceinline__ void step_scores(TensorS& s, float (&corr)[kRows], bool first) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float mx = row_max[r];
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) mx = fmaxf(mx, s(r, c));
      mx = quad_max(mx);
      float max_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
      corr[r] = first ? 1.f : exp2f(row_max[r] * scale_log2 - max_scaled);
      row_sum[r] *= corr[r];
      row_max[r] = mx;
      float sum = 0.f;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) {
        float p = exp2f(fmaf(s(r, c), scale_log2, -max_scaled));
        s(r, c) = p;
        sum += p;
      }
      row_sum[r] += sum;
    }
  }
  template <class TensorO>
  __device__ __forceinline__ static void rescale(TensorO& o, float const (&corr)[kRows]) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      CUTE_UNROLL
      for (int c = 0; c < size<1>(o); ++c) o(r, c) *= corr[r];
    }
  }

  // Normalises O and returns the natural-log LSE per row (-inf for rows that
  // saw nothing, whose O is then 0).
  template <class TensorO>
  __device__ __forceinline__ void finalize(TensorO& o, float (&lse)[kRows]) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float sum = quad_sum(row_sum[r]);
      bool empty = !(sum > 0.f);  // also catches NaN
      float inv = empty ? 0.f : 1.f / sum;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(o); ++c) o(r, c) *= inv;
      lse[r] = empty ? -INFINITY
                     : (row_max[r] * scale_log2 + __log2f(sum)) * 0.69314718055994531f;
    }
  }
};

}  // namespace jax_fa3::hopper
