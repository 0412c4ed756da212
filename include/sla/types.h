// Plain value types shared by every layer of SLA: tensor views, dtypes, devices and status codes.
// No torch and no CUDA headers: a C++17 compiler is all a caller needs to include this.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace sla {

enum class DType : int { f16 = 0, bf16 = 1, f32 = 2, f64 = 3, i32 = 4 };
enum class Device : int { cpu = 0, cuda = 1 };

// Size in bytes of one element of `t`.
std::size_t dtype_size(DType t);
// "bf16", "f32", ... for messages.
const char* dtype_name(DType t);
const char* device_name(Device d);

// A non-owning view of a strided tensor. Strides are in elements (not bytes), int64, and may be any value
// as long as the last dimension is contiguous (stride 1) where an operation says so. A view with data == nullptr
// and ndim == 0 is "absent" (used for optional inputs such as W and b).
struct TensorView {
  static constexpr int kMaxDims = 5;
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  int device_index = 0;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0, 0};
  int64_t stride[kMaxDims] = {0, 0, 0, 0, 0};

  bool present() const { return data != nullptr || ndim != 0; }
  int64_t numel() const;
  bool is_contiguous() const;
};

// Builds a contiguous (row-major) view.
TensorView make_view(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device = Device::cpu,
                     int device_index = 0);
// Builds a view with explicit element strides (same length as shape).
TensorView make_strided_view(void* data, DType dtype, std::initializer_list<int64_t> shape,
                             std::initializer_list<int64_t> stride, Device device = Device::cpu, int device_index = 0);

enum class StatusCode : int {
  ok = 0,
  invalid_argument = 1,  // the caller passed something the contract forbids
  unsupported = 2,       // valid in principle, but not built or not implemented for this backend / shape / dtype
  workspace_too_small = 3,
  device_error = 4,      // a CUDA call failed; the message holds the CUDA error string
  internal = 5,
};

// Every public call returns a Status. The message names the offending argument and the expected value,
// e.g. "q: expected 4 dimensions (B, H, L, D), got 3".
struct Status {
  StatusCode code = StatusCode::ok;
  std::string message;

  bool ok() const { return code == StatusCode::ok; }
  static Status Ok() { return {}; }
  static Status Invalid(std::string m) { return {StatusCode::invalid_argument, std::move(m)}; }
  static Status Unsupported(std::string m) { return {StatusCode::unsupported, std::move(m)}; }
};

const char* status_code_name(StatusCode c);

}  // namespace sla
