// cuda_memory.h for builds without CUDA: nothing is usable, and any attempt to touch device memory is an error.
#include "cli_error.h"
#include "device/cuda_memory.h"

namespace sla_cli {
namespace cuda_rt {

namespace {
[[noreturn]] void no_cuda() { throw RunError("this build of sla has no CUDA support (configure with -DSLA_CUDA=ON)"); }
}  // namespace

bool compiled() { return false; }

bool device_usable(std::string* why) {
  *why = "this build has no CUDA backend";
  return false;
}

std::string device_description() { no_cuda(); }
void* allocate(std::size_t) { no_cuda(); }
void release(void*) noexcept {}
void copy_to_device(void*, const void*, std::size_t) { no_cuda(); }
void copy_to_host(void*, const void*, std::size_t) { no_cuda(); }
void synchronize() {}

}  // namespace cuda_rt
}  // namespace sla_cli
