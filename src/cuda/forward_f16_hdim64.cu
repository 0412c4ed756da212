// Forward main kernel instantiation: f16, head dim 64 (compiled out unless SLA_CUDA_DTYPE_F16 and SLA_CUDA_HDIM_64).
#if defined(SLA_CUDA_DTYPE_F16) && defined(SLA_CUDA_HDIM_64)
#include "cuda/forward_launch.cuh"

namespace sla::cuda::fwd {
template Status launch_forward_main<__half, 64>(const ForwardParams&, int, int, cudaStream_t);
}  // namespace sla::cuda::fwd
#endif
