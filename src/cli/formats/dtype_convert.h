// Array conversions between the dtypes of sla::DType and float on the host (for generating inputs, reading .npy
// files and measuring errors). The element conversions are the library's own (src/cpu/half_float.h): f16 and bf16
// round to nearest even, as the hardware conversions do, and the CLI and the CPU backend agree bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sla/types.h"

namespace sla_cli {

// n elements of `dtype` at src -> floats / doubles. dtype must be f16, bf16, f32 or f64.
void convert_to_float(const void* src, sla::DType dtype, float* dst, std::size_t n);
void convert_to_double(const void* src, sla::DType dtype, double* dst, std::size_t n);
// n floats -> n elements of `dtype` at dst.
void convert_from_float(const float* src, sla::DType dtype, void* dst, std::size_t n);

}  // namespace sla_cli
