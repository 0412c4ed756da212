// The few CUDA runtime calls the CLI needs (an application may allocate device memory and synchronise; the library
// does neither). Implemented in cuda_memory.cpp when the build has CUDA, else by cuda_memory_stub.cpp, whose
// functions report that this build has no GPU support. Failures throw RunError with the CUDA error string.
#pragma once

#include <cstddef>
#include <string>

namespace sla_cli {
namespace cuda_rt {

// True when the CLI was built with CUDA.
bool compiled();
// True when a CUDA device can be used; otherwise *why says why not.
bool device_usable(std::string* why);
// "NVIDIA H100 80GB HBM3 (sm_90)".
std::string device_description();

void* allocate(std::size_t bytes);  // zero-filled
void release(void* ptr) noexcept;
void copy_to_device(void* dst, const void* src, std::size_t bytes);
void copy_to_host(void* dst, const void* src, std::size_t bytes);
// Waits for all work on the device (the CLI's timing and copies need it).
void synchronize();

}  // namespace cuda_rt
}  // namespace sla_cli
