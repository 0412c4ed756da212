// Definitions of the plain value types of include/sla/types.h and the enum names of include/sla/config.h.
#include "sla/types.h"

#include <cstddef>
#include <initializer_list>

#include "sla/config.h"

namespace sla {

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::i32: return 4;
  }
  // An out-of-range cast: 0 lets callers detect it without the library throwing.
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::i32: return "i32";
  }
  return "invalid-dtype";
}

const char* device_name(Device d) {
  switch (d) {
    case Device::cpu: return "cpu";
    case Device::cuda: return "cuda";
  }
  return "invalid-device";
}

int64_t TensorView::numel() const {
  if (!present() || ndim < 0 || ndim > kMaxDims) return 0;
  int64_t n = 1;  // a present 0-dim view is a scalar
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// Row-major contiguity, ignoring the strides of size-1 dimensions (they never move the address), as torch does.
bool TensorView::is_contiguous() const {
  if (ndim < 0 || ndim > kMaxDims) return false;
  int64_t expected = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    if (shape[i] == 0) return true;  // no elements: nothing is addressed
    if (shape[i] != 1 && stride[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

namespace {

// make_view cannot return a Status. A shape longer than kMaxDims (or a stride list of another length) gives a view
// with ndim = -1: it is "present", and validation rejects it by name instead of reading past the arrays.
constexpr int kMalformedNdim = -1;

TensorView make_base(void* data, DType dtype, Device device, int device_index) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.device = device;
  v.device_index = device_index;
  return v;
}

}  // namespace

TensorView make_view(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device, int device_index) {
  TensorView v = make_base(data, dtype, device, device_index);
  if (shape.size() > static_cast<std::size_t>(TensorView::kMaxDims)) {
    v.ndim = kMalformedNdim;
    return v;
  }
  v.ndim = static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) v.shape[i++] = s;
  int64_t stride = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.stride[d] = stride;
    stride *= v.shape[d];
  }
  return v;
}

TensorView make_strided_view(void* data, DType dtype, std::initializer_list<int64_t> shape,
                             std::initializer_list<int64_t> stride, Device device, int device_index) {
  TensorView v = make_base(data, dtype, device, device_index);
  if (shape.size() > static_cast<std::size_t>(TensorView::kMaxDims) || stride.size() != shape.size()) {
    v.ndim = kMalformedNdim;
    return v;
  }
  v.ndim = static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) v.shape[i++] = s;
  i = 0;
  for (int64_t s : stride) v.stride[i++] = s;
  return v;
}

const char* status_code_name(StatusCode c) {
  switch (c) {
    case StatusCode::ok: return "ok";
    case StatusCode::invalid_argument: return "invalid_argument";
    case StatusCode::unsupported: return "unsupported";
    case StatusCode::workspace_too_small: return "workspace_too_small";
    case StatusCode::device_error: return "device_error";
    case StatusCode::internal: return "internal";
  }
  return "invalid-status-code";
}

const char* variant_name(Variant v) {
  switch (v) {
    case Variant::global: return "global";
    case Variant::complement: return "complement";
  }
  return "invalid-variant";
}

const char* critical_rule_name(CriticalRule r) {
  switch (r) {
    case CriticalRule::topk: return "topk";
    case CriticalRule::top_p: return "top_p";
  }
  return "invalid-rule";
}

const char* feature_map_name(FeatureMap f) {
  switch (f) {
    case FeatureMap::softmax: return "softmax";
    case FeatureMap::elu: return "elu";
    case FeatureMap::relu: return "relu";
  }
  return "invalid-feature-map";
}

}  // namespace sla
