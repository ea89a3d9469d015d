// Scalar conversions between the storage dtypes (float16, bfloat16, float32)
// and the fp32 the CPU backend computes in, plus row load/store helpers.
//
// Written by hand with no dependencies (no F16C/AVX512-BF16 intrinsics) so
// the backend builds with any C++17 compiler on any host. Conversions are
// only done when a tile is copied in or out, O(rows * head_dim) against the
// O(rows * cols * head_dim) of the matmuls, so scalar code is fast enough.
#pragma once

#include <cstdint>
#include <cstring>

#include "cc/common/params.h"

namespace jax_fa3::cpu {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// ---- bfloat16: the top 16 bits of an IEEE float32 ------------------------

inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// Round to nearest, ties to even (what JAX/XLA's astype does). NaN stays NaN:
// truncating its payload could otherwise turn it into an infinity.
inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  // Adding 0x7fff plus the lowest kept bit rounds ties towards the even
  // value; a carry out of the mantissa correctly bumps the exponent (and
  // overflows the largest finite values to infinity, as RNE requires).
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// ---- float16: IEEE binary16 (1 sign, 5 exponent, 10 mantissa bits) -------

inline float fp16_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in float32.
    float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  // Normal: rebias the exponent from 15 to 127.
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Round to nearest, ties to even; overflow goes to infinity, tiny values to
// (signed) zero through the subnormal range, NaN stays a quiet NaN.
inline uint16_t float_to_fp16(float f) {
  uint32_t u = float_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u)  // inf or NaN
    return static_cast<uint16_t>(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
  // 65520 is halfway between 65504 (largest finite, odd mantissa) and 2^16,
  // so it and everything above round to infinity.
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (a >= 0x38800000u) {
    // Normal half (>= 2^-14): rebias the exponent by -112, then round the
    // 13 dropped mantissa bits; a carry into the exponent is the right answer.
    uint32_t r = a - (112u << 23);
    r += 0x0fffu + ((r >> 13) & 1u);
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  // Subnormal half: value / 2^-24, rounded to an integer. With the implicit
  // bit, value = m * 2^(e - 150), so the integer is m >> (126 - e).
  uint32_t e = a >> 23;
  if (e < 102) return sign;  // < 2^-25: rounds to zero (2^-25 itself ties to 0 below)
  uint32_t m = (a & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126u - e;  // in [14, 24]
  uint32_t q = m >> shift;
  uint32_t rem = m & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;  // may reach 0x400: smallest normal
  return static_cast<uint16_t>(sign | q);
}

// ---- rows ------------------------------------------------------------------

inline int64_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

// dst[0..n) = src[off .. off + n) converted to fp32. `off` is in elements.
inline void load_row(const void* base, int64_t off, DType t, int64_t n, float* dst) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, static_cast<const float*>(base) + off, n * sizeof(float));
      return;
    case DType::kBF16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(s[i]);
      return;
    }
    case DType::kF16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_float(s[i]);
      return;
    }
  }
}

// dst[off .. off + n) = src[0..n) rounded to the storage dtype.
inline void store_row(void* base, int64_t off, DType t, int64_t n, const float* src) {
  switch (t) {
    case DType::kF32:
      std::memcpy(static_cast<float*>(base) + off, src, n * sizeof(float));
      return;
    case DType::kBF16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(src[i]);
      return;
    }
    case DType::kF16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_fp16(src[i]);
      return;
    }
  }
}

// Writes n zeros in the storage dtype (all three dtypes encode +0 as 0 bits).
inline void zero_row(void* base, int64_t off, DType t, int64_t n) {
  std::memset(static_cast<char*>(base) + off * dtype_size(t), 0, n * dtype_size(t));
}

}  // namespace jax_fa3::cpu
