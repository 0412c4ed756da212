// Conversions between torch tensors and the core library's plain types (sla::TensorView, sla::Status).
// Kept apart from the ops so that the CPU and the CUDA op files share one definition of "how a tensor is described
// to the library".
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "sla/config.h"
#include "sla/types.h"

namespace sla_torch {

// The library's dtype for a torch dtype; raises (naming `name`) for dtypes the library has no code for.
sla::DType to_sla_dtype(at::ScalarType t, const char* name);

// Attention operands (q, k, v, o, grad_o and their gradients) reach the library with their real strides: the library
// reads any strides as long as the last dimension is contiguous and every stride is positive. Returns `t` itself when
// it already satisfies that, else a contiguous copy (one copy, only for e.g. a transposed last dim or the zero strides
// of an expanded gradient). The caller keeps the returned tensor alive while the view is in use.
at::Tensor with_attention_strides(const at::Tensor& t);

// A view of `t` with its own strides. Size-1 dimensions get the stride a contiguous tensor would have: they never
// move an address, and torch gives them arbitrary values the library's stride checks need not see.
sla::TensorView view_of(const at::Tensor& t, const char* name);

// An absent view for an empty (numel 0) or missing tensor, a view otherwise: the ops use empty tensors for the
// tables a problem does not have (negligible tables when Tn == 0, inverse tables for inference).
sla::TensorView optional_view_of(const c10::optional<at::Tensor>& t, const char* name);

// Raises a torch error (a Python RuntimeError or ValueError) carrying the library's message, which names the
// offending argument. `op` names the op for context.
void check_status(const sla::Status& status, const char* op);

// "global"/"complement" and "softmax"/"elu"/"relu", raising with the argument name otherwise.
sla::Variant parse_variant(const std::string& s);
sla::FeatureMap parse_feature_map(const std::string& s);

}  // namespace sla_torch
