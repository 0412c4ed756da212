// Turns the runtime dtype of a call into the compile-time (input type, accumulation type) pair of the CPU
// kernels (SLA_CPU_DTYPE_SWITCH, in the idiom of core/static_switch.h), and turns exceptions (allocation failure of
// host scratch) into a Status: library code never lets an exception escape.
#pragma once

#include <exception>
#include <new>
#include <string>

#include "core/static_switch.h"
#include "cpu/half_float.h"
#include "sla/types.h"

namespace sla {
namespace cpu {

// The message for an input dtype the CPU kernels are not instantiated for.
inline Status unsupported_input_dtype(DType t) {
  return Status::Unsupported(std::string("cpu backend: input dtype ") + dtype_name(t) +
                             " is not supported; expected f64, f32, bf16 or f16");
}

}  // namespace cpu
}  // namespace sla

// The runtime input dtype of a call -> the CPU kernels' compile-time pair, in the idiom of core/static_switch.h:
// IN_T is the element type of q, k, v, o and the gradients, ACC_T the accumulation type (f64 for f64 inputs, f32
// otherwise: docs/SPEC.md section 6). The lambda returns a Status; an unsupported dtype returns one without calling
// it.
//
//   return SLA_CPU_DTYPE_SWITCH(p.dtype, In, Acc, [&] { return forward_typed<In, Acc>(p, args, cfg, exec); });
#define SLA_CPU_DTYPE_SWITCH(DTYPE, IN_T, ACC_T, ...)             \
  [&]() -> ::sla::Status {                                        \
    switch (DTYPE) {                                              \
      case ::sla::DType::f64: {                                   \
        using IN_T = double;                                      \
        using ACC_T = double;                                     \
        return __VA_ARGS__();                                     \
      }                                                           \
      case ::sla::DType::f32: {                                   \
        using IN_T = float;                                       \
        using ACC_T = float;                                      \
        return __VA_ARGS__();                                     \
      }                                                           \
      case ::sla::DType::bf16: {                                  \
        using IN_T = ::sla::cpu::bf16;                            \
        using ACC_T = float;                                      \
        return __VA_ARGS__();                                     \
      }                                                           \
      case ::sla::DType::f16: {                                   \
        using IN_T = ::sla::cpu::f16;                             \
        using ACC_T = float;                                      \
        return __VA_ARGS__();                                     \
      }                                                           \
      default: return ::sla::cpu::unsupported_input_dtype(DTYPE); \
    }                                                             \
  }()

namespace sla {
namespace cpu {

// Runs fn() (returning Status) and reports an escaping exception as a Status naming the operation.
template <class Fn>
Status run_guarded(const char* operation, Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return Status{StatusCode::internal, std::string("cpu backend ") + operation + ": out of host memory for scratch"};
  } catch (const std::exception& e) {
    return Status{StatusCode::internal, std::string("cpu backend ") + operation + ": " + e.what()};
  }
}

}  // namespace cpu
}  // namespace sla
