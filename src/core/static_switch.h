// Runtime value -> compile-time constant, the one dispatch idiom of the backends (after FlashAttention's
// static_switch.h). Each macro evaluates its last argument, a lambda, with a constexpr or a type alias named by the
// caller in scope, and returns what the lambda returns:
//
//   return SLA_BOOL_SWITCH(cfg.variant == Variant::complement, kComplement, [&] {
//     return run<kComplement>(args);
//   });
//
// Backend-specific switches (the CPU's input dtypes, src/cpu/dispatch.h; the CUDA build's dtypes and head dims) are
// written in the same form. Plain C++17, usable from host code compiled by nvcc as well.
#pragma once

#include "sla/config.h"

// COND (bool) -> `constexpr bool CONST_NAME`.
#define SLA_BOOL_SWITCH(COND, CONST_NAME, ...)  \
  [&] {                                         \
    if (COND) {                                 \
      constexpr static bool CONST_NAME = true;  \
      return __VA_ARGS__();                     \
    } else {                                    \
      constexpr static bool CONST_NAME = false; \
      return __VA_ARGS__();                     \
    }                                           \
  }()

// sla::FeatureMap -> `constexpr sla::FeatureMap CONST_NAME`. The validated Config holds one of the three values;
// anything else falls to softmax's branch only if validation was skipped, which the API never does. Also used inside
// CUDA kernels (the forward's linear epilogue), in the form they were tuned with: a plain constexpr and softmax as
// the default branch (a static constant or a separate softmax label changed ptxas' schedule of every forward kernel).
#define SLA_FEATURE_MAP_SWITCH(FM, CONST_NAME, ...)                          \
  [&] {                                                                      \
    switch (FM) {                                                            \
      case ::sla::FeatureMap::elu: {                                         \
        constexpr ::sla::FeatureMap CONST_NAME = ::sla::FeatureMap::elu;     \
        return __VA_ARGS__();                                                \
      }                                                                      \
      case ::sla::FeatureMap::relu: {                                        \
        constexpr ::sla::FeatureMap CONST_NAME = ::sla::FeatureMap::relu;    \
        return __VA_ARGS__();                                                \
      }                                                                      \
      default: { /* softmax */                                               \
        constexpr ::sla::FeatureMap CONST_NAME = ::sla::FeatureMap::softmax; \
        return __VA_ARGS__();                                                \
      }                                                                      \
    }                                                                        \
  }()
