// Forward main kernel instantiation: f16, head dim 128 (compiled out unless SLA_CUDA_DTYPE_F16 and SLA_CUDA_HDIM_128).
#if defined(SLA_CUDA_DTYPE_F16) && defined(SLA_CUDA_HDIM_128)
#include "cuda/forward_launch.cuh"

namespace sla::cuda::fwd {
template Status launch_forward_main<__half, 128>(const ForwardParams&, int, int, cudaStream_t);
}  // namespace sla::cuda::fwd
#endif
