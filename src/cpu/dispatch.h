// Turns the runtime dtype of a call into the compile-time (input type, accumulation type) pair of the CPU
// kernels, and turns exceptions (allocation failure of host scratch) into a Status: library code never lets an
// exception escape.
#pragma once

#include <exception>
#include <new>
#include <string>

#include "cpu/half_float.h"
#include "sla/types.h"

namespace sla {
namespace cpu {

template <class T, class A>
struct TypePair {
  using In = T;   // element type of q, k, v, o and the gradients
  using Acc = A;  // accumulation type: f64 for f64 inputs, f32 otherwise (docs/SPEC.md section 6)
};

// Calls fn(TypePair<In, Acc>{}) for the input dtype `t`.
template <class Fn>
Status dispatch_input_dtype(DType t, Fn&& fn) {
  switch (t) {
    case DType::f64: return fn(TypePair<double, double>{});
    case DType::f32: return fn(TypePair<float, float>{});
    case DType::bf16: return fn(TypePair<bf16, float>{});
    case DType::f16: return fn(TypePair<f16, float>{});
    default:
      return Status::Unsupported(std::string("cpu backend: input dtype ") + dtype_name(t) +
                                 " is not supported; expected f64, f32, bf16 or f16");
  }
}

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
