// See owned_tensor.h.
#include "device/owned_tensor.h"

#include <cstring>
#include <limits>
#include <stdexcept>
#include <utility>

#include "cli_error.h"
#include "formats/dtype_convert.h"

namespace sla_cli {

sla::TensorView contiguous_view(void* data, sla::DType dtype, const std::vector<int64_t>& shape, sla::Device device) {
  if (shape.size() > static_cast<std::size_t>(sla::TensorView::kMaxDims)) {
    throw std::logic_error("contiguous_view: too many dimensions");
  }
  sla::TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.device = device;
  v.ndim = static_cast<int>(shape.size());
  int64_t stride = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.shape[d] = shape[d];
    v.stride[d] = stride;
    stride *= shape[d];
  }
  return v;
}

int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& what) {
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s < 0 || (s > 0 && n > std::numeric_limits<int64_t>::max() / s)) {
      throw RunError(what + ": shape is negative or too large");
    }
    n *= s;
  }
  return n;
}

OwnedTensor::OwnedTensor(sla::DType dtype, std::vector<int64_t> shape, sla::Device device)
    : dtype_(dtype), shape_(std::move(shape)) {
  numel_ = checked_numel(shape_, "tensor");
  buffer_ = DeviceBuffer(device, static_cast<std::size_t>(numel_) * sla::dtype_size(dtype_));
}

OwnedTensor OwnedTensor::from_floats(const std::vector<float>& values, sla::DType dtype, std::vector<int64_t> shape,
                                     sla::Device device) {
  OwnedTensor t(dtype, std::move(shape), device);
  if (static_cast<int64_t>(values.size()) != t.numel_) {
    throw std::logic_error("OwnedTensor::from_floats: value count does not match the shape");
  }
  std::vector<unsigned char> host(static_cast<std::size_t>(t.numel_) * sla::dtype_size(dtype));
  convert_from_float(values.data(), dtype, host.data(), values.size());
  t.buffer_.copy_from_host(host.data(), host.size());
  return t;
}

sla::TensorView OwnedTensor::view() const { return contiguous_view(buffer_.data(), dtype_, shape_, device()); }

std::vector<double> OwnedTensor::to_doubles() const {
  std::vector<unsigned char> host(buffer_.bytes());
  buffer_.copy_to_host(host.data(), host.size());
  std::vector<double> out(static_cast<std::size_t>(numel_));
  if (dtype_ == sla::DType::i32) {
    const int32_t* p = reinterpret_cast<const int32_t*>(host.data());
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  } else {
    convert_to_double(host.data(), dtype_, out.data(), out.size());
  }
  return out;
}

std::vector<int32_t> OwnedTensor::to_int32() const {
  if (dtype_ != sla::DType::i32) throw std::logic_error("OwnedTensor::to_int32: tensor is not i32");
  std::vector<int32_t> out(static_cast<std::size_t>(numel_));
  buffer_.copy_to_host(out.data(), out.size() * sizeof(int32_t));
  return out;
}

}  // namespace sla_cli
