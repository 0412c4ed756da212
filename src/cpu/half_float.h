// bf16 and IEEE binary16 storage types for the CPU backend, with float conversions that round to nearest, ties to
// even. Hand-written bit manipulation instead of compiler extensions (_Float16, __bf16) so that the CPU backend
// builds with any C++17 compiler and gives the same bits everywhere.
#pragma once

#include <cstdint>
#include <cstring>

namespace sla {
namespace cpu {

// One bf16 value as stored in memory: the upper 16 bits of an IEEE binary32.
struct bf16 {
  uint16_t bits;
};
// One IEEE binary16 value as stored in memory.
struct f16 {
  uint16_t bits;
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float to_float(bf16 h) { return bits_float(uint32_t(h.bits) << 16); }

inline bf16 to_bf16(float f) {
  uint32_t u = float_bits(f);
  // NaN: truncating could clear every mantissa bit and turn it into infinity, so force a quiet-NaN bit.
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x0040u)};
  // Adding 0x7fff plus the lowest kept bit rounds to nearest with ties to even; a carry into the exponent is the
  // correct result (including rounding the largest finite values up to infinity).
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

inline float to_float(f16 h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu;
  const uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf / NaN
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in binary32.
    const float magnitude = float(mantissa) * bits_float(0x33800000u);  // 2^-24
    return sign ? -magnitude : magnitude;
  }
  return bits_float(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
}

inline f16 to_f16(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return f16{uint16_t(sign | 0x7e00u)};  // NaN stays a (quiet) NaN
  // 65520 is halfway between the largest finite half (65504, odd mantissa) and 2^16: ties to even round it up.
  if (magnitude >= 0x477ff000u) return f16{uint16_t(sign | 0x7c00u)};
  if (magnitude < 0x38800000u) {
    // Below the smallest normal half (2^-14): the result is a multiple of 2^-24. Adding 0.5f, whose ulp is 2^-24,
    // lets the FPU do the round-to-nearest-even; the mantissa bits of the sum are then the half's bits.
    const float sum = bits_float(magnitude) + 0.5f;
    return f16{uint16_t(sign | (float_bits(sum) - 0x3f000000u))};
  }
  // Normal: rebias the exponent and round away the 13 low mantissa bits, ties to even. A carry into the exponent
  // is the correct result.
  const uint32_t lowest_kept = (magnitude >> 13) & 1u;
  magnitude += (uint32_t(15 - 127) << 23) + 0xfffu + lowest_kept;
  return f16{uint16_t(sign | (magnitude >> 13))};
}

}  // namespace cpu
}  // namespace sla
