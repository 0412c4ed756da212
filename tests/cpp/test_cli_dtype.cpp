// Host dtype conversions of the CLI (inputs for the GPU, .npy halves), through its array conversions, which use the
// library's element conversions (src/cpu/half_float.h): checked against IEEE bit patterns written out here,
// including rounding to nearest even, subnormals, overflow to infinity and NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "formats/dtype_convert.h"

namespace sla_cli {
namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// One element through the CLI's array conversions.
uint16_t float_to_f16(float f) {
  uint16_t h = 0;
  convert_from_float(&f, sla::DType::f16, &h, 1);
  return h;
}
float f16_to_float(uint16_t h) {
  float f = 0;
  convert_to_float(&h, sla::DType::f16, &f, 1);
  return f;
}
uint16_t float_to_bf16(float f) {
  uint16_t b = 0;
  convert_from_float(&f, sla::DType::bf16, &b, 1);
  return b;
}
float bf16_to_float(uint16_t b) {
  float f = 0;
  convert_to_float(&b, sla::DType::bf16, &f, 1);
  return f;
}

TEST(CliDtype, FloatToHalf) {
  EXPECT_EQ(float_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_f16(0.0f), 0x0000);
  EXPECT_EQ(float_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);  // halfway to the next binade: ties to even = infinity
  EXPECT_EQ(float_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -24)), 0x0001);         // smallest subnormal
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25)), 0x0000);         // exactly half of it: ties to even (0)
  EXPECT_EQ(float_to_f16(std::ldexp(3.0f, -25)), 0x0002);         // 1.5 ulp: ties to even (2)
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -14)), 0x0400);         // smallest normal
  EXPECT_EQ(float_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // halfway between 1 and 1+2^-10: even is 1
  EXPECT_EQ(float_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // halfway between odd and even: up to even
  EXPECT_EQ(float_to_f16(1.0f + std::ldexp(1.0f, -10) + std::ldexp(1.0f, -20)), 0x3c01);
  const uint16_t nan = float_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
}

TEST(CliDtype, HalfToFloatRoundTripsEveryFiniteHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_float(static_cast<uint16_t>(h));
    if ((h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0) {
      EXPECT_TRUE(std::isnan(f)) << h;
      continue;
    }
    EXPECT_EQ(float_to_f16(f), h) << std::hex << h;
  }
  EXPECT_EQ(f16_to_float(0x3555), from_bits(0x3eaaa000));  // 0.333251953125
}

TEST(CliDtype, Bfloat16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(from_bits(0x3f808000)), 0x3f80);  // halfway, even below
  EXPECT_EQ(float_to_bf16(from_bits(0x3f818000)), 0x3f82);  // halfway, even above
  EXPECT_EQ(float_to_bf16(from_bits(0x3f808001)), 0x3f81);
  EXPECT_EQ(bf16_to_float(0xc0490000 >> 16), from_bits(0xc0490000));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

}  // namespace
}  // namespace sla_cli
