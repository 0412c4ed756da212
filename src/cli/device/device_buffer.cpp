// See device_buffer.h. CPU memory is 64-byte aligned so that vectorised backends see aligned rows.
#include "device/device_buffer.h"

#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>

#include "device/cuda_memory.h"

namespace sla_cli {

namespace {
constexpr std::align_val_t kHostAlignment{64};
}  // namespace

DeviceBuffer::DeviceBuffer(sla::Device device, std::size_t bytes) : device_(device), bytes_(bytes) {
  if (device == sla::Device::cuda) {
    data_ = cuda_rt::allocate(bytes);
  } else {
    data_ = ::operator new(bytes == 0 ? 1 : bytes, kHostAlignment);
    std::memset(data_, 0, bytes);
  }
}

DeviceBuffer::~DeviceBuffer() { reset(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : device_(other.device_), data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    device_ = other.device_;
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::reset() noexcept {
  if (data_ == nullptr) return;
  if (device_ == sla::Device::cuda) {
    cuda_rt::release(data_);
  } else {
    ::operator delete(data_, kHostAlignment);
  }
  data_ = nullptr;
  bytes_ = 0;
}

void DeviceBuffer::copy_from_host(const void* src, std::size_t bytes) {
  if (bytes > bytes_) throw std::logic_error("DeviceBuffer::copy_from_host: more bytes than the buffer holds");
  if (device_ == sla::Device::cuda) {
    cuda_rt::copy_to_device(data_, src, bytes);
  } else {
    std::memcpy(data_, src, bytes);
  }
}

void DeviceBuffer::copy_to_host(void* dst, std::size_t bytes) const {
  if (bytes > bytes_) throw std::logic_error("DeviceBuffer::copy_to_host: more bytes than the buffer holds");
  if (device_ == sla::Device::cuda) {
    cuda_rt::copy_to_host(dst, data_, bytes);
  } else {
    std::memcpy(dst, data_, bytes);
  }
}

}  // namespace sla_cli
