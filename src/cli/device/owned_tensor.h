// An owning contiguous tensor on the CPU or the GPU, its sla::TensorView, and float copies to and from the host.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "device/device_buffer.h"
#include "sla/types.h"

namespace sla_cli {

// A contiguous (row-major) view of `data` with the given shape (at most TensorView::kMaxDims dims).
sla::TensorView contiguous_view(void* data, sla::DType dtype, const std::vector<int64_t>& shape, sla::Device device);

// Product of the dims; throws RunError naming `what` when it overflows int64.
int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& what);

class OwnedTensor {
 public:
  OwnedTensor() = default;
  // Zero-filled.
  OwnedTensor(sla::DType dtype, std::vector<int64_t> shape, sla::Device device);

  // A tensor of `dtype` on `device` holding `values` (row-major, numel of shape), converted from float.
  static OwnedTensor from_floats(const std::vector<float>& values, sla::DType dtype, std::vector<int64_t> shape,
                                 sla::Device device);

  sla::TensorView view() const;
  // A copy of the contents on the host, converted to double (floating dtypes) or from int32.
  std::vector<double> to_doubles() const;
  std::vector<int32_t> to_int32() const;  // dtype must be i32

  sla::DType dtype() const { return dtype_; }
  sla::Device device() const { return buffer_.device(); }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const { return numel_; }

 private:
  sla::DType dtype_ = sla::DType::f32;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  DeviceBuffer buffer_;
};

}  // namespace sla_cli
