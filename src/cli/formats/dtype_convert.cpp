// See dtype_convert.h.
#include "formats/dtype_convert.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu/half_float.h"

namespace sla_cli {

namespace {

template <typename Out>
void convert_to(const void* src, sla::DType dtype, Out* dst, std::size_t n) {
  switch (dtype) {
    case sla::DType::f16: {
      const sla::cpu::f16* s = static_cast<const sla::cpu::f16*>(src);
      for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<Out>(sla::cpu::to_float(s[i]));
      return;
    }
    case sla::DType::bf16: {
      const sla::cpu::bf16* s = static_cast<const sla::cpu::bf16*>(src);
      for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<Out>(sla::cpu::to_float(s[i]));
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
      sla::cpu::f16* d = static_cast<sla::cpu::f16*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = sla::cpu::to_f16(src[i]);
      return;
    }
    case sla::DType::bf16: {
      sla::cpu::bf16* d = static_cast<sla::cpu::bf16*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = sla::cpu::to_bf16(src[i]);
      return;
    }
    case sla::DType::f32: std::memcpy(dst, src, n * sizeof(float)); return;
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
