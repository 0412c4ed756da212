#include "tensor_views.h"

#include <c10/util/Exception.h>

namespace sla_torch {

sla::DType to_sla_dtype(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kHalf: return sla::DType::f16;
    case at::kBFloat16: return sla::DType::bf16;
    case at::kFloat: return sla::DType::f32;
    case at::kDouble: return sla::DType::f64;
    case at::kInt: return sla::DType::i32;
    default: break;
  }
  TORCH_CHECK_TYPE(false, name, ": expected dtype float16, bfloat16, float32, float64 or int32, got ", t);
}

at::Tensor with_attention_strides(const at::Tensor& t) {
  if (t.dim() == 0 || t.numel() == 0) return t;
  bool ok = t.stride(t.dim() - 1) == 1 || t.size(t.dim() - 1) == 1;
  for (int64_t d = 0; ok && d < t.dim(); ++d) {
    if (t.size(d) != 1 && t.stride(d) < 1) ok = false;
  }
  return ok ? t : t.contiguous();
}

sla::TensorView view_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() <= sla::TensorView::kMaxDims, name, ": expected at most ", sla::TensorView::kMaxDims,
                    " dimensions, got ", t.dim());
  TORCH_CHECK_VALUE(t.is_cuda() || t.is_cpu(), name, ": expected a CPU or CUDA tensor, got device ", t.device());
  sla::TensorView v;
  v.data = t.data_ptr();
  v.dtype = to_sla_dtype(t.scalar_type(), name);
  v.device = t.is_cuda() ? sla::Device::cuda : sla::Device::cpu;
  v.device_index = t.is_cuda() ? t.get_device() : 0;
  v.ndim = static_cast<int>(t.dim());
  int64_t contiguous_stride = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.shape[d] = t.size(d);
    v.stride[d] = t.size(d) == 1 ? contiguous_stride : t.stride(d);
    contiguous_stride *= t.size(d);
  }
  return v;
}

sla::TensorView optional_view_of(const c10::optional<at::Tensor>& t, const char* name) {
  if (!t.has_value() || !t->defined() || t->numel() == 0) return sla::TensorView{};
  return view_of(*t, name);
}

void check_status(const sla::Status& status, const char* op) {
  if (status.ok()) return;
  const char* code = sla::status_code_name(status.code);
  switch (status.code) {
    case sla::StatusCode::invalid_argument:
      TORCH_CHECK_VALUE(false, "sla.", op, ": ", status.message);
    case sla::StatusCode::unsupported:
      TORCH_CHECK_NOT_IMPLEMENTED(false, "sla.", op, ": ", status.message);
    default:
      TORCH_CHECK(false, "sla.", op, " failed (", code, "): ", status.message);
  }
}

sla::Variant parse_variant(const std::string& s) {
  if (s == "global") return sla::Variant::global;
  if (s == "complement") return sla::Variant::complement;
  TORCH_CHECK_VALUE(false, "variant: expected 'global' or 'complement', got '", s, "'");
}

sla::FeatureMap parse_feature_map(const std::string& s) {
  if (s == "softmax") return sla::FeatureMap::softmax;
  if (s == "elu") return sla::FeatureMap::elu;
  if (s == "relu") return sla::FeatureMap::relu;
  TORCH_CHECK_VALUE(false, "feature_map: expected 'softmax', 'elu' or 'relu', got '", s, "'");
}

}  // namespace sla_torch
