// bf16 / fp16 conversions of the CPU backend (src/cpu/half_float.h) against a brute-force nearest-value search:
// round to nearest, ties to even, overflow to infinity, subnormals, NaN kept NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "cpu/half_float.h"

namespace {

using sla::cpu::bf16;
using sla::cpu::bits_float;
using sla::cpu::f16;
using sla::cpu::float_bits;

// Value of a half's bit pattern by its definition (no bit tricks).
double f16_value(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  double v;
  if (exponent == 0x1f) {
    v = mantissa ? std::nan("") : INFINITY;
  } else if (exponent == 0) {
    v = std::ldexp(double(mantissa), -24);
  } else {
    v = std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
  }
  return sign ? -v : v;
}

// The correctly rounded half of x: the nearest of all finite halves, ties to the even pattern, and infinity from
// 65520 (= 65504 + half an ulp) upward.
uint16_t nearest_f16(float x) {
  const double ax = std::fabs(double(x));
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  if (ax >= 65520.0) return sign | 0x7c00;
  uint16_t lo = 0, hi = 0x7bff;  // positive finite halves are ordered by their bit patterns
  while (hi - lo > 1) {
    const uint16_t mid = uint16_t((lo + hi) / 2);
    (f16_value(mid) <= ax ? lo : hi) = mid;
  }
  const double dlo = ax - f16_value(lo), dhi = f16_value(hi) - ax;
  uint16_t pick;
  if (dlo < dhi) pick = lo;
  else if (dhi < dlo) pick = hi;
  else pick = (lo & 1) ? hi : lo;
  if (ax >= f16_value(hi)) pick = hi;
  return sign | pick;
}

// The correctly rounded bf16 of x (finite x): candidates are the truncation and the next pattern up.
uint16_t nearest_bf16(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
  const double v = std::fabs(double(x));
  const double vlo = std::fabs(double(bits_float(lo)));
  // The pattern above the largest finite bf16 is infinity; for rounding it counts as 2^128.
  const double vhi = ((hi >> 23) & 0xff) == 0xff ? std::ldexp(1.0, 128) : std::fabs(double(bits_float(hi)));
  const double dlo = v - vlo, dhi = vhi - v;
  if (dlo < dhi) return uint16_t(lo >> 16);
  if (dhi < dlo) return uint16_t(hi >> 16);
  return uint16_t(((lo >> 16) & 1) ? hi >> 16 : lo >> 16);
}

TEST(CpuHalfFloat, F16ToFloatExhaustive) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float got = sla::cpu::to_float(f16{uint16_t(h)});
    const double want = f16_value(uint16_t(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(double(got), want) << h;
      ASSERT_EQ(std::signbit(got), std::signbit(want)) << h;
      ASSERT_EQ(sla::cpu::to_f16(got).bits, h) << "round trip " << h;
    }
  }
}

TEST(CpuHalfFloat, BF16RoundTripExhaustive) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = sla::cpu::to_float(bf16{uint16_t(h)});
    ASSERT_EQ(float_bits(f), h << 16) << h;
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(sla::cpu::to_float(sla::cpu::to_bf16(f)))) << h;
    } else {
      ASSERT_EQ(sla::cpu::to_bf16(f).bits, h) << h;
    }
  }
}

// Floats at and around every halfway point between neighbouring halves (the ties and their neighbours), plus
// random floats over the whole half range.
TEST(CpuHalfFloat, FloatToF16RoundsToNearestEven) {
  std::vector<float> xs;
  for (uint16_t h = 0; h < 0x7bff; ++h) {
    const float mid = float((f16_value(h) + f16_value(uint16_t(h + 1))) / 2);  // exact in float
    for (int step = -2; step <= 2; ++step) xs.push_back(bits_float(float_bits(mid) + step));
  }
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> exponent(-30, 17);
  for (int n = 0; n < 200000; ++n) xs.push_back(float(std::ldexp(1.0 + (rng() % 1000000) / 1e6, int(exponent(rng)))));
  for (float x : {65504.0f, 65519.99f, 65520.0f, 1e6f, INFINITY, 0.0f, 1e-10f, 2.98e-8f, 2.99e-8f, 5.96e-8f}) {
    xs.push_back(x);
  }
  for (float x : xs) {
    for (float s : {x, -x}) ASSERT_EQ(sla::cpu::to_f16(s).bits, nearest_f16(s)) << s;
  }
  EXPECT_TRUE(std::isnan(sla::cpu::to_float(sla::cpu::to_f16(std::nanf("")))));
}

TEST(CpuHalfFloat, FloatToBF16RoundsToNearestEven) {
  std::mt19937 rng(11);
  std::vector<uint32_t> patterns;
  for (int n = 0; n < 200000; ++n) patterns.push_back(rng());
  // Exact ties (low half 0x8000) with even and odd kept bits, their neighbours, and the top of the range.
  for (uint32_t hi : {0x3f80u, 0x3f81u, 0x0000u, 0x0001u, 0x7f7fu, 0x7f7eu, 0x4000u, 0x4001u}) {
    for (uint32_t lo : {0x7fffu, 0x8000u, 0x8001u, 0x0000u, 0xffffu}) patterns.push_back((hi << 16) | lo);
  }
  for (uint32_t u : patterns) {
    for (uint32_t s : {u & 0x7fffffffu, u | 0x80000000u}) {
      const float x = bits_float(s);
      if (std::isnan(x) || std::isinf(x)) continue;
      ASSERT_EQ(sla::cpu::to_bf16(x).bits, nearest_bf16(x)) << std::hex << s;
    }
  }
  EXPECT_TRUE(std::isnan(sla::cpu::to_float(sla::cpu::to_bf16(std::nanf("")))));
  EXPECT_EQ(sla::cpu::to_bf16(INFINITY).bits, 0x7f80);
}

}  // namespace
