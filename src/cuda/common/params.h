// The flat parameter structs that cross from host to device (FlashAttention-2 style): raw pointers, int64 element
// strides and sizes, nothing else. Plain C++ (no CUDA headers) so that host code builds them and kernels take them
// by value.
#pragma once

#include <cstdint>

#include "sla/types.h"

// Members that kernels call too are host and device functions when compiled by nvcc.
#if defined(__CUDACC__)
#define SLA_HOST_DEVICE __host__ __device__
#else
#define SLA_HOST_DEVICE
#endif

namespace sla::cuda {

// A (B, H, L, D) tensor with a contiguous last dimension; strides in elements. Row r of head (b, h) starts at
// ptr + b * batch_stride + h * head_stride + r * row_stride.
struct RowsParams {
  void* ptr = nullptr;
  int64_t batch_stride = 0, head_stride = 0, row_stride = 0;
};

inline RowsParams rows_params(const TensorView& t) {
  RowsParams p;
  p.ptr = t.data;
  p.batch_stride = t.stride[0];
  p.head_stride = t.stride[1];
  p.row_stride = t.stride[2];
  return p;
}

// Per (b, h) [and per query block for the complement variant] operands of the forward epilogue, prepared by the
// linear-state pass in the workspace. With A = phi(q) / n (n = phi(q) . z + eps, or phi(q) . z_i):
//   O   = O_s + A G + b, G = H W^T (only when W is present)
//   O_l = A H          (only when O_l is saved for the backward pass)
// G and H are stored as bf16 hi/lo pairs (see SplitBf16), row-major (D x Dv), then z (D floats) and a flag.
struct LinearOperandLayout {
  int64_t d = 0, dv = 0;
  SLA_HOST_DEVICE int64_t g_hi() const { return 0; }                            // bytes, bf16 D x Dv
  SLA_HOST_DEVICE int64_t g_lo() const { return g_hi() + d * dv * 2; }
  SLA_HOST_DEVICE int64_t h_hi() const { return g_lo() + d * dv * 2; }
  SLA_HOST_DEVICE int64_t h_lo() const { return h_hi() + d * dv * 2; }
  SLA_HOST_DEVICE int64_t z() const { return h_lo() + d * dv * 2; }               // f32 D
  SLA_HOST_DEVICE int64_t marginal_empty() const { return z() + d * 4; }           // int32: 1 when O_l must be 0 (complement)
  SLA_HOST_DEVICE int64_t bytes() const { return (marginal_empty() + 4 + 255) / 256 * 256; }
};

// An opaque CUDA tensor map (CUtensorMap: 128 bytes, 64-byte aligned), built on the host by cuda/tma.h and read by
// the Hopper mainloop's bulk tensor copies from the kernel's parameter space.
struct alignas(64) TmaDescriptor {
  unsigned char bytes[128];
};

struct ForwardParams {
  RowsParams q, k, v, o;
  TmaDescriptor tma_k, tma_v;          // K and V, boxes of (64 columns, block_k rows): set for the wgmma mainloop only
  const int32_t* lut = nullptr;        // (B, H, Nq, T) contiguous
  const int32_t* lut_count = nullptr;  // (B, H, Nq)
  int lut_capacity = 0;                // T
  float* lse = nullptr;                // (B, H, Lq) or null
  float* o_lin = nullptr;              // (B, H, Lq, Dv) or null
  float* o_sparse = nullptr;           // (B, H, Lq, Dv) or null: O_s alone, for the backward's Delta
  const unsigned char* lin_ops = nullptr;  // LinearOperandLayout blocks
  int64_t lin_ops_head_stride = 0;     // bytes between (b, h) blocks, flattened over b * H + h
  int64_t lin_ops_qblock_stride = 0;   // bytes between query blocks (0: one block per head, global variant)
  const float* bias = nullptr;         // (Dv) or null
  int64_t batch = 0, heads = 0, lq = 0, lk = 0;
  int nq = 0, nk = 0;
  int d = 0, dv = 0;
  float scale_log2 = 0.f;              // softmax scale * log2(e)
  float eps = 0.f;                     // global variant's epsilon; 0 for the complement variant
  int feature_map = 0;                 // sla::FeatureMap
  bool has_weight = false;
  bool complement = false;
};

}  // namespace sla::cuda
