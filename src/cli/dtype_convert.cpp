// See dtype_convert.h.
#include "dtype_convert.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace sla_cli {

namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace

uint16_t float_to_f16(float f) {
  const uint32_t u = bits_of(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan (keep nan quiet)
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past the largest half: inf
  if (abs < 0x38800000u) {
    // Subnormal half (or zero): scale into the integer grid of 2^-24 and round to nearest even there.
    const float scaled = float_of(abs) * 16777216.0f;  // * 2^24, exact
    const float r = std::nearbyint(scaled);             // default rounding mode: to nearest even
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(r));
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even.
  uint32_t h = ((abs - 0x38000000u) >> 13);
  const uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return float_of(sign | 0x7f800000u | (man << 13));
  return float_of(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t float_to_bf16(float f) {
  const uint32_t u = bits_of(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet nan
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float bf16_to_float(uint16_t b) { return float_of(static_cast<uint32_t>(b) << 16); }

namespace {

template <typename Out>
void convert_to(const void* src, sla::DType dtype, Out* dst, std::size_t n) {
  switch (dtype) {
    case sla::DType::f16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<Out>(f16_to_float(s[i]));
      return;
    }
    case sla::DType::bf16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<Out>(bf16_to_float(s[i]));
      return;
    }
    case sla::DType::f32: {
      const float* s = static_cast<const float*>(src);
      for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<Out>(s[i]);
      return;
    }
    case sla::DType::f64: {
      const double* s = static_cast<const double*>(src);
      for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<Out>(s[i]);
      return;
    }
    case sla::DType::i32: break;
  }
  throw std::logic_error(std::string("convert: not a floating dtype: ") + sla::dtype_name(dtype));
}

}  // namespace

void convert_to_float(const void* src, sla::DType dtype, float* dst, std::size_t n) { convert_to(src, dtype, dst, n); }

void convert_to_double(const void* src, sla::DType dtype, double* dst, std::size_t n) {
  convert_to(src, dtype, dst, n);
}

void convert_from_float(const float* src, sla::DType dtype, void* dst, std::size_t n) {
  switch (dtype) {
    case sla::DType::f16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = float_to_f16(src[i]);
      return;
    }
    case sla::DType::bf16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = float_to_bf16(src[i]);
      return;
    }
    case sla::DType::f32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case sla::DType::f64: {
      double* d = static_cast<double*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = src[i];
      return;
    }
    case sla::DType::i32: break;
  }
  throw std::logic_error(std::string("convert: not a floating dtype: ") + sla::dtype_name(dtype));
}

}  // namespace sla_cli
