// Copies of strided input rows into contiguous accumulation-type tiles, so that the inner loops of the CPU kernels
// run over contiguous memory and vectorise (no reassociation of sums is needed: see forward.cpp).
#pragma once

#include <cstdint>

#include "cpu/tensor_access.h"

namespace sla {
namespace cpu {

// dst[(r - r0) * width + c] = src(b, h, r)[c] for r in [r0, r1).
template <class Acc, class T>
void stage_rows(const Rows4<const T>& src, int64_t b, int64_t h, int64_t r0, int64_t r1, int64_t width, Acc* dst) {
  for (int64_t r = r0; r < r1; ++r) load_row(src.row(b, h, r), width, dst + (r - r0) * width);
}

// dst[c * ld + r] = src[r * width + c]: a (rows x width) tile into a (width x ld) transposed tile, ld >= rows.
template <class Acc>
void transpose_tile(const Acc* src, int64_t rows, int64_t width, int64_t ld, Acc* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < width; ++c) dst[c * ld + r] = src[r * width + c];
  }
}

// y[0, n) += alpha * x[0, n): the vectorisable building block of every matrix product here.
template <class Acc>
inline void axpy(int64_t n, Acc alpha, const Acc* x, Acc* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <class Acc>
inline Acc dot(int64_t n, const Acc* x, const Acc* y) {
  Acc s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

}  // namespace cpu
}  // namespace sla
