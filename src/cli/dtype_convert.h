// Element conversions between the dtypes of sla::DType and float on the host (for generating inputs, reading
// .npy files and measuring errors). f16 and bf16 round to nearest even, as the hardware conversions do.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sla/types.h"

namespace sla_cli {

uint16_t float_to_f16(float f);
float f16_to_float(uint16_t h);
uint16_t float_to_bf16(float f);
float bf16_to_float(uint16_t b);

// n elements of `dtype` at src -> floats / doubles. dtype must be f16, bf16, f32 or f64.
void convert_to_float(const void* src, sla::DType dtype, float* dst, std::size_t n);
void convert_to_double(const void* src, sla::DType dtype, double* dst, std::size_t n);
// n floats -> n elements of `dtype` at dst.
void convert_from_float(const float* src, sla::DType dtype, void* dst, std::size_t n);

}  // namespace sla_cli
