// An owning, zero-filled byte buffer in CPU memory or in GPU memory (move-only).
#pragma once

#include <cstddef>

#include "sla/types.h"

namespace sla_cli {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(sla::Device device, std::size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  sla::Device device() const { return device_; }

  // Copies `bytes` (<= this->bytes()) between host memory and this buffer.
  void copy_from_host(const void* src, std::size_t bytes);
  void copy_to_host(void* dst, std::size_t bytes) const;

 private:
  void reset() noexcept;

  sla::Device device_ = sla::Device::cpu;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace sla_cli
