// The two inner loops the CPU backend spends its time in: a small fp32
// matmul on tiles (C = / += A * B) and exp over a row of scores, plus the
// row max/sum reductions of the softmax.
//
// No intrinsics: both are written with GCC/Clang vector extension types
// (the matmul keeps an R x W block of C in them, i.e. in vector registers;
// the exp is a branch-free polynomial). The build is plain -O3 (baseline SSE2 on x86-64), so on x86-64 with GCC/Clang the same
// source is also compiled for AVX2+FMA and AVX-512 via target attributes and
// picked at run time: measured ~2.5x (AVX2) and ~4x (AVX-512) on the
// matmuls, which dominate.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__GNUC__) || defined(__clang__)
#define JAX_FA3_CPU_INLINE inline __attribute__((always_inline))
#else
#define JAX_FA3_CPU_INLINE inline
#endif

// (JAX_FA3_CPU_NO_DISPATCH forces the baseline loops, for testing them.)
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(JAX_FA3_CPU_NO_DISPATCH)
#define JAX_FA3_CPU_X86_DISPATCH 1
#endif

namespace jax_fa3::cpu {
namespace detail {

#if defined(__GNUC__) || defined(__clang__)
// GCC/Clang vector extensions: portable SIMD without intrinsics (lowered to
// SSE, AVX, AVX-512 or NEON as the target allows). The auto-vectoriser alone
// proved fragile on this loop nest (some R x W shapes came out scalar), so
// the register block is spelled out in vector types.
typedef float vf4 __attribute__((vector_size(16), aligned(4)));
typedef float vf8 __attribute__((vector_size(32), aligned(4)));
typedef float vf16 __attribute__((vector_size(64), aligned(4)));

// C[R x NV*L] (+)= A[R x k] * B[k x NV*L] with V holding L floats. The R*NV
// accumulators stay in vector registers; each k step loads NV vectors of B
// and broadcasts one element of A per row. Loads/stores are unaligned
// (memcpy), tiles need no particular alignment.
template <class V, int R, int NV>
JAX_FA3_CPU_INLINE void gemm_block(int k, const float* A, int lda, const float* B, int ldb,
                                   float* C, int ldc, bool accumulate) {
  constexpr int L = static_cast<int>(sizeof(V) / sizeof(float));
  // (memcpy rather than helper functions: a function taking or returning
  // an AVX vector in a baseline-ISA translation unit draws -Wpsabi notes.)
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = V{};
      if (accumulate) std::memcpy(&acc[r][v], C + r * ldc + v * L, sizeof(V));
    }
  for (int c = 0; c < k; ++c) {
    const float* brow = B + static_cast<int64_t>(c) * ldb;
    V b[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], brow + v * L, sizeof(V));
    for (int r = 0; r < R; ++r) {
      const float a = A[static_cast<int64_t>(r) * lda + c];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(C + r * ldc + v * L, &acc[r][v], sizeof(V));
}

// Row strip of R rows over all n columns: wide blocks, then 8-column blocks
// (two 4-wide vectors; n is always a multiple of 8 since tiles are padded).
template <class V, int R, int NV>
JAX_FA3_CPU_INLINE void gemm_strip(int n, int k, const float* A, int lda, const float* B,
                                   int ldb, float* C, int ldc, bool accumulate) {
  constexpr int W = NV * static_cast<int>(sizeof(V) / sizeof(float));
  int j = 0;
  for (; j + W <= n; j += W)
    gemm_block<V, R, NV>(k, A, lda, B + j, ldb, C + j, ldc, accumulate);
  for (; j < n; j += 8) gemm_block<vf4, R, 2>(k, A, lda, B + j, ldb, C + j, ldc, accumulate);
}

template <class V, int R, int NV>
JAX_FA3_CPU_INLINE void gemm_impl(int m, int n, int k, const float* A, int lda, const float* B,
                                  int ldb, float* C, int ldc, bool accumulate) {
  int i = 0;
  for (; i + R <= m; i += R)
    gemm_strip<V, R, NV>(n, k, A + static_cast<int64_t>(i) * lda, lda, B, ldb,
                         C + static_cast<int64_t>(i) * ldc, ldc, accumulate);
  // Leftover rows (partial tiles): 4 at a time, then one at a time.
  if (R > 4)
    for (; i + 4 <= m; i += 4)
      gemm_strip<V, 4, NV>(n, k, A + static_cast<int64_t>(i) * lda, lda, B, ldb,
                           C + static_cast<int64_t>(i) * ldc, ldc, accumulate);
  for (; i < m; ++i)
    gemm_strip<V, 1, NV>(n, k, A + static_cast<int64_t>(i) * lda, lda, B, ldb,
                         C + static_cast<int64_t>(i) * ldc, ldc, accumulate);
}
#else
// Other compilers: plain loops (correct, slower).
inline void gemm_scalar(int m, int n, int k, const float* A, int lda, const float* B, int ldb,
                        float* C, int ldc, bool accumulate) {
  for (int i = 0; i < m; ++i) {
    float* c = C + static_cast<int64_t>(i) * ldc;
    if (!accumulate)
      for (int j = 0; j < n; ++j) c[j] = 0.0f;
    for (int t = 0; t < k; ++t) {
      const float a = A[static_cast<int64_t>(i) * lda + t];
      const float* b = B + static_cast<int64_t>(t) * ldb;
      for (int j = 0; j < n; ++j) c[j] += a * b[j];
    }
  }
}
#endif

// exp(x) for a row, in place; x <= -87 (including -inf) gives 0, x is
// clamped at 88 (exp(88) ~ 1.6e38 is still finite). Callers only pass
// s - max or s - lse, so x <= ~0 in practice. Max relative error ~2 ulp:
// Cody-Waite reduction x = n ln2 + f, |f| <= ln2/2, and the Cephes expf
// polynomial for e^f, scaled by 2^n built directly in the exponent bits.
// exp_scalar serves row tails; exp_vec below is the same math on vector
// types for the body (the auto-vectoriser refused the scalar loop: "control
// flow in loop").
JAX_FA3_CPU_INLINE float exp_poly(float v, float r) {
  float f = v - r * 0.693359375f;  // ln2 split in two for an exact product
  f = f - r * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  return p * f * f + f + 1.0f;
}
JAX_FA3_CPU_INLINE float exp_scalar(float in) {
  if (in < -87.0f) return 0.0f;
  const float v = in > 88.0f ? 88.0f : in;
  // Round v / ln2 to the nearest integer: adding 1.5 * 2^23 pushes the
  // fraction bits out of the mantissa (round-to-nearest), subtracting
  // restores the integer.
  const float r = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float p = exp_poly(v, r);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(r) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

#if defined(__GNUC__) || defined(__clang__)
// x[0..L) = exp(x[0..L)) lane-wise on a vector type VF (ints VI of equal
// size). Takes a pointer, not a vector value: GCC warns (-Wpsabi) about
// functions passing AVX vectors by value in a baseline-ISA build.
// JAX_FA3_SELECT(I, mask, a, b) is mask ? a : b lane-wise, in bit operations
// (portable between GCC and Clang, unlike ?: on vectors).
#define JAX_FA3_SELECT(VF, VI, mask, a, b) ((VF)((((VI)(a)) & (mask)) | (((VI)(b)) & ~(mask))))
template <class VF, class VI>
JAX_FA3_CPU_INLINE void exp_vec(float* x) {
  VF in;
  std::memcpy(&in, x, sizeof(VF));
  const VF lo = VF{} + -87.0f, hi = VF{} + 88.0f;
  const VI under = in < lo;  // all-ones lanes where the result is 0
  VF v = JAX_FA3_SELECT(VF, VI, under, lo, in);
  const VI over = v > hi;
  v = JAX_FA3_SELECT(VF, VI, over, hi, v);
  const VF magic = VF{} + 12582912.0f;
  const VF r = (v * 1.44269504088896341f + magic) - magic;
  VF f = v - r * 0.693359375f;
  f = f - r * -2.12194440e-4f;
  VF p = VF{} + 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  const VI e = (__builtin_convertvector(r, VI) + 127) << 23;  // in [1, 254] after the clamps
  const VF out = JAX_FA3_SELECT(VF, VI, under, VF{}, p * (VF)e);
  std::memcpy(x, &out, sizeof(VF));
}
#undef JAX_FA3_SELECT

typedef int32_t vi4 __attribute__((vector_size(16)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef int32_t vi16 __attribute__((vector_size(64)));

template <class VF, class VI>
JAX_FA3_CPU_INLINE void exp_impl(float* x, int n) {
  constexpr int L = static_cast<int>(sizeof(VF) / sizeof(float));
  int i = 0;
  for (; i + L <= n; i += L) exp_vec<VF, VI>(x + i);
  for (; i < n; ++i) x[i] = exp_scalar(x[i]);
}
#endif

#if defined(JAX_FA3_CPU_X86_DISPATCH)
// Same loops compiled for wider vectors; register blocks measured on a
// 64 x 64 x 128 tile product: AVX2 4 rows x 16 columns (8 ymm accumulators of
// 16 registers), AVX-512 8 rows x 32 columns (16 zmm of 32).
__attribute__((target("avx2,fma"))) inline void gemm_avx2(int m, int n, int k, const float* A,
                                                           int lda, const float* B, int ldb,
                                                           float* C, int ldc, bool acc) {
  gemm_impl<vf8, 4, 2>(m, n, k, A, lda, B, ldb, C, ldc, acc);
}
__attribute__((target("avx512f,avx2,fma"))) inline void gemm_avx512(
    int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
    bool acc) {
  gemm_impl<vf16, 8, 2>(m, n, k, A, lda, B, ldb, C, ldc, acc);
}
__attribute__((target("avx2,fma"))) inline void exp_avx2(float* x, int n) {
  exp_impl<vf8, vi8>(x, n);
}
__attribute__((target("avx512f,avx2,fma"))) inline void exp_avx512(float* x, int n) {
  exp_impl<vf16, vi16>(x, n);
}

enum class Isa { kBase, kAvx2, kAvx512 };
inline Isa detect_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kBase;
  }();
  return isa;
}
#endif

}  // namespace detail

// C[m x n] = A[m x k] * B[k x n] (accumulate: C += ...). Row-major, leading
// dimensions in floats; n must be a multiple of 8 (callers pad tiles).
inline void gemm(int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* C,
                 int ldc, bool accumulate) {
#if defined(JAX_FA3_CPU_X86_DISPATCH)
  switch (detail::detect_isa()) {
    case detail::Isa::kAvx512:
      return detail::gemm_avx512(m, n, k, A, lda, B, ldb, C, ldc, accumulate);
    case detail::Isa::kAvx2:
      return detail::gemm_avx2(m, n, k, A, lda, B, ldb, C, ldc, accumulate);
    case detail::Isa::kBase:
      break;
  }
#endif
#if defined(__GNUC__) || defined(__clang__)
  // Baseline (SSE2 / NEON: 16 128-bit registers): 2 rows x 16 columns.
  detail::gemm_impl<detail::vf4, 2, 4>(m, n, k, A, lda, B, ldb, C, ldc, accumulate);
#else
  detail::gemm_scalar(m, n, k, A, lda, B, ldb, C, ldc, accumulate);
#endif
}

// x[i] = exp(x[i]) for i in [0, n); see exp_scalar for the range handling.
inline void exp_inplace(float* x, int n) {
#if defined(JAX_FA3_CPU_X86_DISPATCH)
  switch (detail::detect_isa()) {
    case detail::Isa::kAvx512: return detail::exp_avx512(x, n);
    case detail::Isa::kAvx2: return detail::exp_avx2(x, n);
    case detail::Isa::kBase: break;
  }
#endif
#if defined(__GNUC__) || defined(__clang__)
  detail::exp_impl<detail::vf4, detail::vi4>(x, n);
#else
  for (int i = 0; i < n; ++i) x[i] = detail::exp_scalar(x[i]);
#endif
}

// max and sum of x[0..n) with 8 independent partials: breaks the serial
// dependency chain of a plain reduction (which -O3 without -ffast-math may
// not reorder) and lets the compiler use vector max/add.
inline float row_max(const float* x, int n, float init) {
  float m[8];
  for (int t = 0; t < 8; ++t) m[t] = init;
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int t = 0; t < 8; ++t) m[t] = m[t] > x[j + t] ? m[t] : x[j + t];
  for (; j < n; ++j) m[0] = m[0] > x[j] ? m[0] : x[j];
  float r = m[0];
  for (int t = 1; t < 8; ++t) r = r > m[t] ? r : m[t];
  return r;
}
inline float row_sum(const float* x, int n) {
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int t = 0; t < 8; ++t) a[t] += x[j + t];
  for (; j < n; ++j) a[0] += x[j];
  return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

}  // namespace jax_fa3::cpu
