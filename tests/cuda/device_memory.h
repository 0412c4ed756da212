// Memory of the backend under test: CUDA device memory, or host memory when the binary tests the CPU backend in
// bf16/fp16 (`--backend cpu`, the only backend of a build without CUDA). Every case allocates, fills and reads its
// tensors through these helpers, so the same case code runs against either backend.
#pragma once

#ifdef SLA_TEST_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu/half_float.h"
#include "sla/sla.h"

namespace sla_cuda_test {

// The backend the cases run on (set once by main before any case).
inline sla::Device& dut_device_ref() {
  static sla::Device d = sla::Device::cpu;
  return d;
}
inline sla::Device dut_device() { return dut_device_ref(); }
inline bool dut_is_cuda() { return dut_device() == sla::Device::cuda; }

#ifdef SLA_TEST_WITH_CUDA
#define CUDA_OK(expr)                                                                             \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)
#endif

// Waits for the backend's work (CUDA: the whole device; CPU: calls are synchronous).
inline void dut_sync() {
#ifdef SLA_TEST_WITH_CUDA
  if (dut_is_cuda()) CUDA_OK(cudaDeviceSynchronize());
#endif
}

inline void dut_copy(void* dst, const void* src, size_t bytes, bool to_device) {
  if (bytes == 0) return;
#ifdef SLA_TEST_WITH_CUDA
  if (dut_is_cuda()) {
    CUDA_OK(cudaMemcpy(dst, src, bytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost));
    return;
  }
#endif
  (void)to_device;
  std::memcpy(dst, src, bytes);
}

// Rows of `width` bytes, `rows` of them, with pitches in bytes.
inline void dut_copy_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows,
                        bool to_device) {
#ifdef SLA_TEST_WITH_CUDA
  if (dut_is_cuda()) {
    CUDA_OK(cudaMemcpy2D(dst, dpitch, src, spitch, width, rows,
                         to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost));
    return;
  }
#endif
  (void)to_device;
  for (size_t r = 0; r < rows; ++r)
    std::memcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
}

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : bytes(n) {
    if (n == 0) return;
#ifdef SLA_TEST_WITH_CUDA
    if (dut_is_cuda()) {
      CUDA_OK(cudaMalloc(&ptr, n));
      return;
    }
#endif
    ptr = std::malloc(n);
    if (ptr == nullptr) {
      std::fprintf(stderr, "out of host memory (%zu bytes)\n", n);
      std::exit(1);
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), bytes(o.bytes) {
    o.ptr = nullptr;
    o.bytes = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(bytes, o.bytes);
    return *this;
  }
  ~DeviceBuffer() {
    if (!ptr) return;
#ifdef SLA_TEST_WITH_CUDA
    if (dut_is_cuda()) {
      cudaFree(ptr);
      return;
    }
#endif
    std::free(ptr);
  }
  // 0xFF bytes are NaN in bf16, fp16 and fp32, and -1 in int32: anything left unwritten shows.
  void poison() const {
    if (!bytes) return;
#ifdef SLA_TEST_WITH_CUDA
    if (dut_is_cuda()) {
      CUDA_OK(cudaMemset(ptr, 0xFF, bytes));
      return;
    }
#endif
    std::memset(ptr, 0xFF, bytes);
  }
  template <class T>
  std::vector<T> download() const {
    std::vector<T> h(bytes / sizeof(T));
    dut_copy(h.data(), ptr, bytes, false);
    return h;
  }
};

template <class T>
DeviceBuffer upload_vec(const std::vector<T>& h) {
  DeviceBuffer d(h.size() * sizeof(T));
  dut_copy(d.ptr, h.data(), d.bytes, true);
  return d;
}

inline uint16_t to_bits(double x, sla::DType dt) {
  return dt == sla::DType::bf16 ? sla::cpu::to_bf16(static_cast<float>(x)).bits
                                : sla::cpu::to_f16(static_cast<float>(x)).bits;
}
inline double from_bits(uint16_t b, sla::DType dt) {
  return dt == sla::DType::bf16 ? sla::cpu::to_float(sla::cpu::bf16{b}) : sla::cpu::to_float(sla::cpu::f16{b});
}

// A (B, H, L, D) tensor in (B,H,L,D) or (B,L,H,D) memory, optionally with an extra gap between heads (the int64
// case, and padded heads in the fuzz).
struct Layout {
  bool blhd = false;
  int64_t head_gap = 0;  // elements added to the head stride ((B,H,L,D) memory only)
  // Element strides of a (B, H, L, D) view of this layout.
  void strides(int64_t H, int64_t L, int64_t D, int64_t out[4]) const {
    if (blhd) {
      out[0] = L * H * D;
      out[1] = D;
      out[2] = H * D;
      out[3] = 1;
    } else {
      out[1] = L * D + head_gap;
      out[0] = H * out[1];
      out[2] = D;
      out[3] = 1;
    }
  }
  const char* name() const { return blhd ? "blhd" : (head_gap ? "bhld-gap" : "bhld"); }
};

struct DeviceTensor {
  DeviceBuffer buf;
  sla::TensorView view;
};

inline DeviceTensor make_device_tensor(sla::DType dt, int64_t B, int64_t H, int64_t L, int64_t D, const Layout& lay) {
  int64_t st[4];
  lay.strides(H, L, D, st);
  const int64_t elems = (B - 1) * st[0] + (H - 1) * st[1] + (L - 1) * st[2] + D;
  DeviceTensor t;
  t.buf = DeviceBuffer(static_cast<size_t>(elems) * sla::dtype_size(dt));
  t.view = sla::make_strided_view(t.buf.ptr, dt, {B, H, L, D}, {st[0], st[1], st[2], st[3]}, dut_device());
  return t;
}

// Copies canonical (B,H,L,D) doubles into the 16-bit tensor, row by row (only the rows, never the gaps).
inline void upload(const DeviceTensor& t, const std::vector<double>& x) {
  const auto& v = t.view;
  const int64_t B = v.shape[0], H = v.shape[1], L = v.shape[2], D = v.shape[3];
  std::vector<uint16_t> rows(L * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t e = 0; e < L * D; ++e) rows[e] = to_bits(x[((b * H + h) * L) * D + e], v.dtype);
      char* base = static_cast<char*>(v.data) + (b * v.stride[0] + h * v.stride[1]) * 2;
      dut_copy_2d(base, v.stride[2] * 2, rows.data(), D * 2, D * 2, L, true);
    }
}

inline std::vector<double> download(const DeviceTensor& t) {
  const auto& v = t.view;
  const int64_t B = v.shape[0], H = v.shape[1], L = v.shape[2], D = v.shape[3];
  std::vector<double> x(B * H * L * D);
  std::vector<uint16_t> rows(L * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const char* base = static_cast<const char*>(v.data) + (b * v.stride[0] + h * v.stride[1]) * 2;
      dut_copy_2d(rows.data(), D * 2, base, v.stride[2] * 2, D * 2, L, false);
      for (int64_t e = 0; e < L * D; ++e) x[((b * H + h) * L) * D + e] = from_bits(rows[e], v.dtype);
    }
  return x;
}

}  // namespace sla_cuda_test
