// The CUDA build's (dtype, head dim) -> compile-time parameters, in the idiom of core/static_switch.h (after
// FlashAttention's static_switch.h). Instantiations pruned from the build (SLA_CUDA_DTYPES, SLA_CUDA_HEAD_DIMS) have
// no case: they return StatusCode::unsupported naming the value and what was built, instead of failing to link.
//
//   return SLA_CUDA_DTYPE_SWITCH(p.dtype, Elem, "forward", [&] {
//     return SLA_CUDA_HEADDIM_SWITCH(p.d, kD, "forward", [&] { return launch<Elem, kD>(params, stream); });
//   });
//
// Host code only (api_cuda.cu, the launchers); the lambdas return sla::Status.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "core/static_switch.h"
#include "sla/types.h"

#ifdef SLA_CUDA_DTYPE_BF16
#define SLA_CUDA_CASE_BF16(ELEM_T, ...) \
  case ::sla::DType::bf16: {            \
    using ELEM_T = __nv_bfloat16;       \
    return __VA_ARGS__();               \
  }
#else
#define SLA_CUDA_CASE_BF16(ELEM_T, ...)
#endif

#ifdef SLA_CUDA_DTYPE_F16
#define SLA_CUDA_CASE_F16(ELEM_T, ...) \
  case ::sla::DType::f16: {            \
    using ELEM_T = __half;             \
    return __VA_ARGS__();              \
  }
#else
#define SLA_CUDA_CASE_F16(ELEM_T, ...)
#endif

#ifdef SLA_CUDA_HDIM_64
#define SLA_CUDA_CASE_HDIM64(CONST_NAME, ...) \
  case 64: {                                  \
    constexpr static int CONST_NAME = 64;     \
    return __VA_ARGS__();                     \
  }
#else
#define SLA_CUDA_CASE_HDIM64(CONST_NAME, ...)
#endif

#ifdef SLA_CUDA_HDIM_128
#define SLA_CUDA_CASE_HDIM128(CONST_NAME, ...) \
  case 128: {                                  \
    constexpr static int CONST_NAME = 128;     \
    return __VA_ARGS__();                      \
  }
#else
#define SLA_CUDA_CASE_HDIM128(CONST_NAME, ...)
#endif

// sla::DType -> `using ELEM_T` (__nv_bfloat16 or __half). WHAT names the entry point in the message.
#define SLA_CUDA_DTYPE_SWITCH(DTYPE, ELEM_T, WHAT, ...)                                                \
  [&]() -> ::sla::Status {                                                                             \
    switch (DTYPE) {                                                                                   \
      SLA_CUDA_CASE_BF16(ELEM_T, __VA_ARGS__)                                                          \
      SLA_CUDA_CASE_F16(ELEM_T, __VA_ARGS__)                                                           \
      default:                                                                                         \
        return ::sla::Status::Unsupported(std::string(WHAT) + ": dtype " + ::sla::dtype_name(DTYPE) +  \
                                          " is not built for the CUDA backend (see SLA_CUDA_DTYPES)"); \
    }                                                                                                  \
  }()

// Head dim (int64 or int) -> `constexpr int CONST_NAME`.
#define SLA_CUDA_HEADDIM_SWITCH(HEAD_DIM, CONST_NAME, WHAT, ...)                                          \
  [&]() -> ::sla::Status {                                                                                \
    switch (HEAD_DIM) {                                                                                   \
      SLA_CUDA_CASE_HDIM64(CONST_NAME, __VA_ARGS__)                                                       \
      SLA_CUDA_CASE_HDIM128(CONST_NAME, __VA_ARGS__)                                                      \
      default:                                                                                            \
        return ::sla::Status::Unsupported(std::string(WHAT) + ": head dim " + std::to_string(HEAD_DIM) +  \
                                          " is not built for the CUDA backend (see SLA_CUDA_HEAD_DIMS)"); \
    }                                                                                                     \
  }()
