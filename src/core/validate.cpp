// Argument checking for the public API (see validate.h for what is and is not checked).
#include "core/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace sla {
namespace {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
// A caller computing negligible = 1 - topk in floating point may land a hair above the bound.
constexpr double kNegligibleSlack = 1e-12;

template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream s;
  (s << ... << args);
  return s.str();
}

std::string list_str(const int64_t* values, int n) {
  std::string s = "(";
  for (int i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(values[i]);
  return s + ")";
}

std::string device_str(Device d, int index) { return cat(device_name(d), ":", index); }
std::string device_str(const TensorView& t) { return device_str(t.device, t.device_index); }

// Non-negative int64 arithmetic that reports overflow instead of wrapping (L up to 1e6 and far beyond).
bool mul_fits(int64_t a, int64_t b, int64_t* out) {
  if (a != 0 && b > kInt64Max / a) return false;
  *out = a * b;
  return true;
}
bool add_fits(int64_t a, int64_t b, int64_t* out) {
  if (b > kInt64Max - a) return false;
  *out = a + b;
  return true;
}

// One expected dimension: its size, its name in docs/SPEC.md, and (optionally) the argument the size is taken from.
struct Dim {
  int64_t size;
  const char* label;
  const char* like;  // nullptr: the size is derived, the label says how
};

std::string labels_str(const char* const* labels, int n) {
  std::string s = "(";
  for (int i = 0; i < n; ++i) s += (i ? ", " : "") + std::string(labels[i]);
  return s + ")";
}

// Presence, rank and the properties every tensor needs whatever its role: a data pointer, valid enums, sizes and
// strides >= 1, and an address range that fits int64 bytes.
Status check_structure(const std::string& name, const TensorView& t, const char* const* labels, int ndim) {
  if (!t.present()) {
    return Status::Invalid(cat(name, ": required but absent; expected a tensor of shape ", labels_str(labels, ndim)));
  }
  if (t.ndim != ndim) {
    return Status::Invalid(cat(name, ": expected ", ndim, " dimensions ", labels_str(labels, ndim), ", got ", t.ndim,
                               t.ndim < 0 || t.ndim > TensorView::kMaxDims
                                   ? " (a malformed view: more than 5 dims or a stride list of another length)"
                                   : ""));
  }
  // Sizes before the pointer: a tensor with a zero-size dimension (D = 0, L = 0) often has no data pointer, and
  // "shape[3] (D) >= 1, got 0" is the message that explains it.
  for (int i = 0; i < ndim; ++i) {
    if (t.shape[i] < 1) {
      return Status::Invalid(cat(name, ": expected shape[", i, "] (", labels[i], ") >= 1, got ", t.shape[i]));
    }
  }
  if (t.data == nullptr) return Status::Invalid(cat(name, ": data is null; expected a valid pointer"));
  if (dtype_size(t.dtype) == 0) {
    return Status::Invalid(cat(name, ": invalid dtype value ", static_cast<int>(t.dtype)));
  }
  if (t.device != Device::cpu && t.device != Device::cuda) {
    return Status::Invalid(cat(name, ": invalid device value ", static_cast<int>(t.device)));
  }
  if (t.device_index < 0) {
    return Status::Invalid(cat(name, ": expected device_index >= 0, got ", t.device_index));
  }
  for (int i = 0; i < ndim; ++i) {
    if (t.stride[i] < 1) {
      return Status::Invalid(
          cat(name, ": expected stride[", i, "] >= 1 (no zero or negative strides), got ", t.stride[i]));
    }
  }
  // The largest element offset, the element count and the byte extent must all fit int64.
  int64_t last = 0, count = 1, term = 0, bytes = 0;
  bool fits = true;
  for (int d = 0; d < ndim && fits; ++d) {
    fits = mul_fits(t.shape[d] - 1, t.stride[d], &term) && add_fits(last, term, &last) &&
           mul_fits(count, t.shape[d], &count);
  }
  fits = fits && add_fits(last, 1, &last) && mul_fits(last, static_cast<int64_t>(dtype_size(t.dtype)), &bytes);
  if (!fits) {
    return Status::Invalid(cat(name, ": shape ", list_str(t.shape, ndim), " with strides ", list_str(t.stride, ndim),
                               " addresses more than 2^63 bytes"));
  }
  return Status::Ok();
}

Status check_structure(const std::string& name, const TensorView& t, std::initializer_list<const char*> labels) {
  return check_structure(name, t, labels.begin(), static_cast<int>(labels.size()));
}

// check_structure plus exact sizes.
Status check_tensor(const std::string& name, const TensorView& t, std::initializer_list<Dim> dims) {
  const char* labels[TensorView::kMaxDims] = {};
  int n = 0;
  for (const Dim& d : dims) labels[n++] = d.label;
  SLA_RETURN_IF_ERROR(check_structure(name, t, labels, n));
  int i = 0;
  for (const Dim& d : dims) {
    if (t.shape[i] != d.size) {
      return Status::Invalid(cat(name, ": expected shape[", i, "] (", d.label, ") = ", d.size,
                                 d.like ? cat(" like ", d.like) : std::string(), ", got ", t.shape[i]));
    }
    ++i;
  }
  return Status::Ok();
}

Status check_dtype(const std::string& name, const TensorView& t, DType expected, const std::string& why) {
  if (t.dtype == expected) return Status::Ok();
  return Status::Invalid(cat(name, ": expected dtype ", dtype_name(expected), " ", why, ", got ", dtype_name(t.dtype)));
}

Status check_device(const std::string& name, const TensorView& t, const TensorView& ref, const char* ref_name) {
  if (t.device == ref.device && t.device_index == ref.device_index) return Status::Ok();
  return Status::Invalid(cat(name, ": expected device ", device_str(ref), " like ", ref_name, ", got ", device_str(t)));
}

Status check_last_dim_contiguous(const std::string& name, const TensorView& t) {
  if (t.stride[t.ndim - 1] == 1) return Status::Ok();
  return Status::Invalid(
      cat(name, ": expected stride[", t.ndim - 1, "] = 1 (contiguous last dimension), got ", t.stride[t.ndim - 1]));
}

Status check_contiguous(const std::string& name, const TensorView& t) {
  if (t.is_contiguous()) return Status::Ok();
  return Status::Invalid(cat(name, ": expected a contiguous (row-major) tensor, got strides ",
                             list_str(t.stride, t.ndim), " for shape ", list_str(t.shape, t.ndim)));
}

// Outputs written in parallel must not have two indices mapping to one element.
Status check_no_overlap(const std::string& name, const TensorView& t) {
  int order[TensorView::kMaxDims];
  int n = 0;
  for (int d = 0; d < t.ndim; ++d) {
    if (t.shape[d] > 1) order[n++] = d;
  }
  // Insertion sort by stride: at most five entries (std::sort on so small an array trips GCC 12's -Warray-bounds).
  for (int i = 1; i < n; ++i) {
    for (int j = i; j > 0 && t.stride[order[j]] < t.stride[order[j - 1]]; --j) std::swap(order[j], order[j - 1]);
  }
  for (int i = 1; i < n; ++i) {
    const int inner = order[i - 1];
    // stride * shape fits: check_structure bounded (shape - 1) * stride and the stride itself.
    if (t.stride[order[i]] < t.stride[inner] * t.shape[inner]) {
      return Status::Invalid(cat(name, ": strides ", list_str(t.stride, t.ndim), " for shape ",
                                 list_str(t.shape, t.ndim),
                                 " make elements overlap; expected a non-overlapping output layout"));
    }
  }
  return Status::Ok();
}

bool is_floating(DType t) { return t == DType::f16 || t == DType::bf16 || t == DType::f32 || t == DType::f64; }

std::string acc_reason(const Problem& p) { return cat("(the accumulation type for ", dtype_name(p.dtype), " inputs)"); }

// q, k or v: logical (B, H, L, D), any strides >= 1 with a contiguous last dimension.
Status check_attention_input(const char* name, const TensorView& t, std::initializer_list<const char*> labels) {
  SLA_RETURN_IF_ERROR(check_structure(name, t, labels));
  if (!is_floating(t.dtype)) {
    return Status::Invalid(cat(name, ": expected dtype f16, bf16, f32 or f64, got ", dtype_name(t.dtype)));
  }
  return check_last_dim_contiguous(name, t);
}

Status check_head_dim(const char* name, const char* label, int64_t size) {
  if (size <= kMaxHeadDim) return Status::Ok();
  return Status::Unsupported(
      cat(name, ": head dim ", label, " = ", size, " is not supported (at most ", kMaxHeadDim, ")"));
}

// An accumulation-type tensor (saved forward outputs, W, b and their gradients): contiguous, on q's device.
Status check_acc_tensor(const std::string& name, const TensorView& t, std::initializer_list<Dim> dims,
                        const TensorView& q, const Problem& p) {
  SLA_RETURN_IF_ERROR(check_tensor(name, t, dims));
  SLA_RETURN_IF_ERROR(check_dtype(name, t, p.acc, acc_reason(p)));
  SLA_RETURN_IF_ERROR(check_device(name, t, q, "q"));
  return check_contiguous(name, t);
}

// An int32 block-map table: contiguous, on the device of `ref`.
Status check_table(const std::string& name, const TensorView& t, std::initializer_list<Dim> dims, const TensorView& ref,
                   const char* ref_name) {
  SLA_RETURN_IF_ERROR(check_tensor(name, t, dims));
  SLA_RETURN_IF_ERROR(check_dtype(name, t, DType::i32, "(block-map tables are int32)"));
  SLA_RETURN_IF_ERROR(check_device(name, t, ref, ref_name));
  return check_contiguous(name, t);
}

Status check_absent(const std::string& name, const TensorView& t, const std::string& why) {
  if (!t.present()) return Status::Ok();
  return Status::Invalid(cat(name, ": expected absent ", why, ", got a present view"));
}

// The int32 tables hold block indices and offsets into inv_index: all must fit int32.
Status check_int32_range(const BlockMapShape& s, bool inverse_present, bool negl_inverse_present) {
  if (s.k_blocks > kInt32Max || s.q_blocks > kInt32Max) {
    return Status::Unsupported(
        cat("map.lut: Nq = ", s.q_blocks, " or Nk = ", s.k_blocks, " exceeds the int32 range of the block-map tables"));
  }
  int64_t entries = 0;
  if (inverse_present && (!mul_fits(s.q_blocks, s.critical, &entries) || entries > kInt32Max)) {
    return Status::Unsupported(cat("map.inv_index: Nq * T = ", s.q_blocks, " * ", s.critical,
                                   " entries exceed the int32 range of map.inv_offset"));
  }
  if (negl_inverse_present && (!mul_fits(s.q_blocks, s.negligible, &entries) || entries > kInt32Max)) {
    return Status::Unsupported(cat("map.negl_inv_index: Nq * Tn = ", s.q_blocks, " * ", s.negligible,
                                   " entries exceed the int32 range of map.negl_inv_offset"));
  }
  return Status::Ok();
}

// Both views of a pair present, or both absent.
Status check_pair(const char* a_name, const TensorView& a, const char* b_name, const TensorView& b) {
  if (a.present() == b.present()) return Status::Ok();
  const bool a_missing = !a.present();
  return Status::Invalid(cat(a_missing ? a_name : b_name, ": absent but ", a_missing ? b_name : a_name,
                             " is present; expected both present or both absent"));
}

// What a call needs of the critical class's inverse tables (map.inv_offset, map.inv_index):
// - optional: nothing; checked when given (forward, predict_block_map);
// - rebuilt: the CUDA backward, which rebuilds them from the checked LUT in its workspace and never reads the
//   caller's (cuda/map_check.h): optional and checked when given, but their Nq * T entries must fit int32 anyway;
// - required: the CPU backward, which reads them (cpu/backward.cpp).
enum class InverseTables { optional, rebuilt, required };

// The map predict_block_map writes: its widths T and Tn follow from cfg (resolve_block_map_shape).
Status check_predicted_map(const BlockMap& m, const BlockMapShape& s, const TensorView& q, InverseTables inverse) {
  const Dim b{s.batch, "B", "q"}, h{s.heads, "H", "q"};
  const Dim nq{s.q_blocks, "Nq = ceil(Lq / block_q)", nullptr};
  const Dim nk1{s.k_blocks + 1, "Nk + 1 = ceil(Lk / block_k) + 1", nullptr};
  SLA_RETURN_IF_ERROR(
      check_table("map.lut", m.lut, {b, h, nq, {s.critical, "T = clamp(floor(topk * Nk), 1, Nk)", nullptr}}, q, "q"));
  SLA_RETURN_IF_ERROR(check_table("map.count", m.count, {b, h, nq}, q, "q"));

  const bool need_inverse = inverse == InverseTables::required;
  const bool has_inverse = m.inv_offset.present() || m.inv_index.present();
  if (need_inverse || has_inverse) {
    SLA_RETURN_IF_ERROR(check_pair("map.inv_offset", m.inv_offset, "map.inv_index", m.inv_index));
    SLA_RETURN_IF_ERROR(check_int32_range(s, true, false));
    SLA_RETURN_IF_ERROR(check_table("map.inv_offset", m.inv_offset, {b, h, nk1}, q, "q"));
    SLA_RETURN_IF_ERROR(
        check_table("map.inv_index", m.inv_index, {b, h, {s.q_blocks * s.critical, "Nq * T", nullptr}}, q, "q"));
  }

  if (s.negligible == 0) {
    const std::string why = "because Tn = 0 (global variant or floor(negligible * Nk) = 0)";
    SLA_RETURN_IF_ERROR(check_absent("map.negl_lut", m.negl_lut, why));
    SLA_RETURN_IF_ERROR(check_absent("map.negl_count", m.negl_count, why));
    SLA_RETURN_IF_ERROR(check_absent("map.negl_inv_offset", m.negl_inv_offset, why));
    return check_absent("map.negl_inv_index", m.negl_inv_index, why);
  }
  const Dim tn{s.negligible, "Tn = min(floor(negligible * Nk), Nk - T)", nullptr};
  SLA_RETURN_IF_ERROR(check_table("map.negl_lut", m.negl_lut, {b, h, nq, tn}, q, "q"));
  SLA_RETURN_IF_ERROR(check_table("map.negl_count", m.negl_count, {b, h, nq}, q, "q"));
  // The negligible inverse tables are optional everywhere: no backward reads them; checked when given.
  const bool has_negl_inverse = m.negl_inv_offset.present() || m.negl_inv_index.present();
  if (has_negl_inverse) {
    SLA_RETURN_IF_ERROR(check_pair("map.negl_inv_offset", m.negl_inv_offset, "map.negl_inv_index", m.negl_inv_index));
    SLA_RETURN_IF_ERROR(check_int32_range(s, false, true));
    SLA_RETURN_IF_ERROR(check_table("map.negl_inv_offset", m.negl_inv_offset, {b, h, nk1}, q, "q"));
    SLA_RETURN_IF_ERROR(check_table("map.negl_inv_index", m.negl_inv_index,
                                    {b, h, {s.q_blocks * s.negligible, "Nq * Tn", nullptr}}, q, "q"));
  }
  return Status::Ok();
}

// The width T of map.lut, read from the table itself (forward, backward, invert_block_map, check_block_map): in
// [1, Nk]. `nk_from` says where Nk comes from. An absent table or one of another rank gets check_structure's message.
Status lut_width(const TensorView& lut, int64_t nk, const std::string& nk_from, int64_t* t) {
  if (!lut.present() || lut.ndim != 4) return check_structure("map.lut", lut, {"B", "H", "Nq", "T"});
  *t = lut.shape[3];
  if (*t < 1 || *t > nk) {
    return Status::Invalid(cat("map.lut: expected last dimension T in [1, Nk = ", nk, "]", nk_from, ", got ", *t));
  }
  return Status::Ok();
}

// The width Tn of a present map.negl_lut: in [1, Nk - T] (an absent table is Tn = 0).
Status negl_width(const TensorView& negl_lut, int64_t nk, int64_t t, int64_t* tn) {
  if (negl_lut.ndim != 4) return check_structure("map.negl_lut", negl_lut, {"B", "H", "Nq", "Tn"});
  *tn = negl_lut.shape[3];
  if (*tn < 1) {
    return Status::Invalid(
        cat("map.negl_lut: expected last dimension Tn >= 1 (pass an absent view when Tn = 0), got ", *tn));
  }
  if (*tn > nk - t) {
    return Status::Invalid(
        cat("map.negl_lut: expected last dimension Tn in [0, Nk - T = ", nk, " - ", t, " = ", nk - t, "], got ", *tn));
  }
  return Status::Ok();
}

// The map of a forward or backward call: Nq and Nk follow from Lq, Lk and the block sizes; T and Tn are the
// tables' own widths (map.lut's last dimension, map.negl_lut's or 0 when it is absent). Sets s->critical and
// s->negligible. Negligible tables belong to the complement variant only.
Status check_call_map(const BlockMap& m, const Config& cfg, const TensorView& q, InverseTables inverse,
                      BlockMapShape* s) {
  const Dim b{s->batch, "B", "q"}, h{s->heads, "H", "q"};
  const Dim nq{s->q_blocks, "Nq = ceil(Lq / block_q)", nullptr};
  const Dim nk1{s->k_blocks + 1, "Nk + 1 = ceil(Lk / block_k) + 1", nullptr};
  int64_t t = 0;
  SLA_RETURN_IF_ERROR(lut_width(m.lut, s->k_blocks, "", &t));
  s->critical = t;
  SLA_RETURN_IF_ERROR(check_table("map.lut", m.lut, {b, h, nq, {t, "T", nullptr}}, q, "q"));
  SLA_RETURN_IF_ERROR(check_table("map.count", m.count, {b, h, nq}, q, "q"));

  const bool has_inverse = m.inv_offset.present() || m.inv_index.present();
  if (inverse == InverseTables::required && !has_inverse) {
    const int64_t offset_shape[] = {s->batch, s->heads, s->k_blocks + 1};
    const int64_t index_shape[] = {s->batch, s->heads, s->q_blocks * t};
    return Status::Invalid(cat("map.inv_offset: required but absent; the CPU backward reads the inverse tables: ",
                               "expected map.inv_offset (B, H, Nk + 1) = ", list_str(offset_shape, 3),
                               " and map.inv_index (B, H, Nq * T) = ", list_str(index_shape, 3),
                               ", filled from the LUT by invert_block_map (or by predict_block_map given their views; "
                               "in Python BlockMap.with_inverse()). Only the CUDA backward builds its own"));
  }
  if (has_inverse) {
    SLA_RETURN_IF_ERROR(check_pair("map.inv_offset", m.inv_offset, "map.inv_index", m.inv_index));
    SLA_RETURN_IF_ERROR(check_int32_range(*s, true, false));
    SLA_RETURN_IF_ERROR(check_table("map.inv_offset", m.inv_offset, {b, h, nk1}, q, "q"));
    SLA_RETURN_IF_ERROR(
        check_table("map.inv_index", m.inv_index, {b, h, {s->q_blocks * t, "Nq * T", nullptr}}, q, "q"));
  } else if (inverse == InverseTables::rebuilt) {
    SLA_RETURN_IF_ERROR(check_int32_range(*s, true, false));  // the tables the CUDA backward rebuilds
  }

  s->negligible = 0;
  if (cfg.variant != Variant::complement || !m.negl_lut.present()) {
    const std::string why = cfg.variant != Variant::complement
                                ? "for the global variant (only the complement variant skips blocks)"
                                : "because map.negl_lut is absent (Tn = 0)";
    SLA_RETURN_IF_ERROR(check_absent("map.negl_lut", m.negl_lut, why));
    SLA_RETURN_IF_ERROR(check_absent("map.negl_count", m.negl_count, why));
    SLA_RETURN_IF_ERROR(check_absent("map.negl_inv_offset", m.negl_inv_offset, why));
    return check_absent("map.negl_inv_index", m.negl_inv_index, why);
  }
  int64_t tn = 0;
  SLA_RETURN_IF_ERROR(negl_width(m.negl_lut, s->k_blocks, t, &tn));
  s->negligible = tn;
  SLA_RETURN_IF_ERROR(check_table("map.negl_lut", m.negl_lut, {b, h, nq, {tn, "Tn", nullptr}}, q, "q"));
  SLA_RETURN_IF_ERROR(check_table("map.negl_count", m.negl_count, {b, h, nq}, q, "q"));
  // The negligible inverse tables are optional everywhere: no backward reads them; checked when given.
  if (!m.negl_inv_offset.present() && !m.negl_inv_index.present()) return Status::Ok();
  SLA_RETURN_IF_ERROR(check_pair("map.negl_inv_offset", m.negl_inv_offset, "map.negl_inv_index", m.negl_inv_index));
  SLA_RETURN_IF_ERROR(check_int32_range(*s, false, true));
  SLA_RETURN_IF_ERROR(check_table("map.negl_inv_offset", m.negl_inv_offset, {b, h, nk1}, q, "q"));
  return check_table("map.negl_inv_index", m.negl_inv_index, {b, h, {s->q_blocks * tn, "Nq * Tn", nullptr}}, q, "q");
}

// v (B, H, Lk, Dv): like k except for its head dim.
Status check_v(const TensorView& v, const TensorView& q, const TensorView& k) {
  SLA_RETURN_IF_ERROR(check_attention_input("v", v, {"B", "H", "Lk", "Dv"}));
  SLA_RETURN_IF_ERROR(check_dtype("v", v, q.dtype, "like q"));
  SLA_RETURN_IF_ERROR(check_device("v", v, q, "q"));
  SLA_RETURN_IF_ERROR(check_tensor(
      "v", v, {{k.shape[0], "B", "k"}, {k.shape[1], "H", "k"}, {k.shape[2], "Lk", "k"}, {v.shape[3], "Dv", nullptr}}));
  return check_head_dim("v", "Dv", v.shape[3]);
}

// A (B, H, Lq, Dv) tensor in the input dtype: o, d_o.
Status check_output_like(const char* name, const TensorView& t, const Problem& p, const TensorView& q, bool written) {
  SLA_RETURN_IF_ERROR(
      check_tensor(name, t, {{p.batch, "B", "q"}, {p.heads, "H", "q"}, {p.lq, "Lq", "q"}, {p.dv, "Dv", "v"}}));
  SLA_RETURN_IF_ERROR(check_dtype(name, t, p.dtype, "like q"));
  SLA_RETURN_IF_ERROR(check_device(name, t, q, "q"));
  SLA_RETURN_IF_ERROR(check_last_dim_contiguous(name, t));
  return written ? check_no_overlap(name, t) : Status::Ok();
}

// A gradient with the shape, dtype and device of its input.
Status check_gradient(const char* name, const TensorView& t, const TensorView& input, const char* input_name) {
  SLA_RETURN_IF_ERROR(check_tensor(name, t,
                                   {{input.shape[0], "B", input_name},
                                    {input.shape[1], "H", input_name},
                                    {input.shape[2], "L", input_name},
                                    {input.shape[3], "D", input_name}}));
  SLA_RETURN_IF_ERROR(check_dtype(name, t, input.dtype, cat("like ", input_name)));
  SLA_RETURN_IF_ERROR(check_device(name, t, input, input_name));
  SLA_RETURN_IF_ERROR(check_last_dim_contiguous(name, t));
  return check_no_overlap(name, t);
}

// The optional projection W (Dv, Dv) and b (Dv), or their gradients.
Status check_projection(const char* w_name, const TensorView& w, const char* b_name, const TensorView& bias,
                        const TensorView& q, const Problem& p) {
  if (w.present()) {
    SLA_RETURN_IF_ERROR(check_acc_tensor(w_name, w, {{p.dv, "Dv", "v"}, {p.dv, "Dv", "v"}}, q, p));
  }
  if (bias.present()) SLA_RETURN_IF_ERROR(check_acc_tensor(b_name, bias, {{p.dv, "Dv", "v"}}, q, p));
  return Status::Ok();
}

// The tensors forward saves for backward. o_lin is optional: only the CPU backward reads it.
struct SavedOutputs {
  const TensorView &lse, &o_lin, &lin_h, &lin_z;
};

Status check_saved(const SavedOutputs& s, const TensorView& q, const Problem& p) {
  const Dim b{p.batch, "B", "q"}, h{p.heads, "H", "q"}, lq{p.lq, "Lq", "q"};
  const Dim d{p.d, "D", "q"}, dv{p.dv, "Dv", "v"};
  SLA_RETURN_IF_ERROR(check_acc_tensor("lse", s.lse, {b, h, lq}, q, p));
  if (s.o_lin.present()) SLA_RETURN_IF_ERROR(check_acc_tensor("o_lin", s.o_lin, {b, h, lq, dv}, q, p));
  SLA_RETURN_IF_ERROR(check_acc_tensor("lin_h", s.lin_h, {b, h, d, dv}, q, p));
  return check_acc_tensor("lin_z", s.lin_z, {b, h, d}, q, p);
}

// q and k and the sizes that follow from them and the block sizes (Nq, Nk); the table widths stay 0. cfg's fields
// are assumed valid (validate_config or validate_attention_config ran).
Status resolve_qk(const TensorView& q, const TensorView& k, const Config& cfg, Problem* p) {
  SLA_RETURN_IF_ERROR(check_attention_input("q", q, {"B", "H", "Lq", "D"}));
  SLA_RETURN_IF_ERROR(check_head_dim("q", "D", q.shape[3]));
  SLA_RETURN_IF_ERROR(check_attention_input("k", k, {"B", "H", "Lk", "D"}));
  SLA_RETURN_IF_ERROR(check_dtype("k", k, q.dtype, "like q"));
  SLA_RETURN_IF_ERROR(check_device("k", k, q, "q"));
  SLA_RETURN_IF_ERROR(check_tensor(
      "k", k, {{q.shape[0], "B", "q"}, {q.shape[1], "H", "q"}, {k.shape[2], "Lk", nullptr}, {q.shape[3], "D", "q"}}));
  Problem r;
  r.batch = q.shape[0];
  r.heads = q.shape[1];
  r.lq = q.shape[2];
  r.lk = k.shape[2];
  r.d = q.shape[3];
  r.dtype = q.dtype;
  r.acc = q.dtype == DType::f64 ? DType::f64 : DType::f32;
  r.device = q.device;
  r.scale = cfg.scale != 0.0 ? cfg.scale : 1.0 / std::sqrt(static_cast<double>(r.d));
  r.map.batch = r.batch;
  r.map.heads = r.heads;
  // Ceiling division without lq + bq - 1 (which could overflow near INT64_MAX).
  r.map.q_blocks = r.lq / cfg.block_q + (r.lq % cfg.block_q != 0 ? 1 : 0);
  r.map.k_blocks = r.lk / cfg.block_k + (r.lk % cfg.block_k != 0 ? 1 : 0);
  SLA_RETURN_IF_ERROR(check_int32_range(r.map, false, false));
  *p = r;
  return Status::Ok();
}

// q, k, v and everything derived from them, for forward and backward: only the Config fields these passes read are
// checked (validate_attention_config); the block-map fields (topk, negligible, the adaptive rules) are not read.
Status resolve_qkv(const TensorView& q, const TensorView& k, const TensorView& v, const Config& cfg, Problem* p) {
  SLA_RETURN_IF_ERROR(validate_attention_config(cfg));
  SLA_RETURN_IF_ERROR(resolve_qk(q, k, cfg, p));
  SLA_RETURN_IF_ERROR(check_v(v, q, k));
  p->dv = v.shape[3];
  return Status::Ok();
}

// A fraction in (0, 1]: topk, top_p and their per-head values.
bool is_unit_fraction(double x) { return std::isfinite(x) && x > 0.0 && x <= 1.0; }

double max_topk(const Config& cfg) {
  if (cfg.head_topk.empty()) return cfg.topk;
  double m = 0.0;
  for (double t : cfg.head_topk) m = std::max(m, t);
  return m;
}

Status check_head_values(const char* name, const std::vector<double>& values) {
  for (std::size_t h = 0; h < values.size(); ++h) {
    if (!is_unit_fraction(values[h])) {
      return Status::Invalid(cat(name, "[", h, "]: expected a finite value in (0, 1], got ", values[h]));
    }
  }
  return Status::Ok();
}

// The adaptive fields of Config (docs/BLOCK_MAP.md). A field the chosen rule does not use must keep its default,
// so that a misspelt configuration fails loudly instead of being ignored.
Status validate_rule(const Config& cfg) {
  if (cfg.rule != CriticalRule::topk && cfg.rule != CriticalRule::top_p) {
    return Status::Invalid(cat("cfg.rule: expected topk (0) or top_p (1), got ", static_cast<int>(cfg.rule)));
  }
  SLA_RETURN_IF_ERROR(check_head_values("cfg.head_topk", cfg.head_topk));
  SLA_RETURN_IF_ERROR(check_head_values("cfg.head_top_p", cfg.head_top_p));
  if (cfg.rule == CriticalRule::topk) {
    if (cfg.top_p != 0.0 || !cfg.head_top_p.empty()) {
      return Status::Invalid(
          "cfg.top_p: expected 0 and cfg.head_top_p empty with cfg.rule = topk (set cfg.rule = "
          "top_p to use them)");
    }
    if (cfg.min_blocks != 1 || cfg.max_blocks != 0) {
      return Status::Invalid(
          cat("cfg.min_blocks/max_blocks: expected the defaults 1 and 0 with cfg.rule = topk "
              "(only the top_p rule clamps counts), got ",
              cfg.min_blocks, " and ", cfg.max_blocks));
    }
  } else {
    if (!cfg.head_topk.empty()) {
      return Status::Invalid("cfg.head_topk: expected empty with cfg.rule = top_p (per-head p goes in head_top_p)");
    }
    if (cfg.head_top_p.empty() && !is_unit_fraction(cfg.top_p)) {
      return Status::Invalid(
          cat("cfg.top_p: expected a finite value in (0, 1] with cfg.rule = top_p, got ", cfg.top_p));
    }
    if (!cfg.head_top_p.empty() && !(cfg.top_p == 0.0 || is_unit_fraction(cfg.top_p))) {
      return Status::Invalid(cat("cfg.top_p: expected 0 or a value in (0, 1] (head_top_p is given), got ", cfg.top_p));
    }
    if (cfg.min_blocks < 1) {
      return Status::Invalid(cat("cfg.min_blocks: expected >= 1, got ", cfg.min_blocks));
    }
    if (cfg.max_blocks != 0 && cfg.max_blocks < cfg.min_blocks) {
      return Status::Invalid(cat("cfg.max_blocks: expected 0 (meaning Nk) or >= cfg.min_blocks = ", cfg.min_blocks,
                                 ", got ", cfg.max_blocks));
    }
  }
  const double thr = cfg.negligible_threshold;
  if (!(std::isfinite(thr) && thr >= 0.0 && thr < 1.0)) {
    return Status::Invalid(cat("cfg.negligible_threshold: expected a finite value in [0, 1), got ", thr));
  }
  if (thr == 0.0) {
    if (cfg.max_negligible != 0.0) {
      return Status::Invalid(
          cat("cfg.max_negligible: expected 0 when cfg.negligible_threshold is 0 (only the "
              "threshold rule uses it), got ",
              cfg.max_negligible));
    }
    return Status::Ok();
  }
  if (cfg.variant != Variant::complement) {
    return Status::Invalid(
        cat("cfg.negligible_threshold: expected 0 for the global variant (only the complement "
            "variant skips blocks), got ",
            thr));
  }
  if (cfg.negligible != 0.0) {
    return Status::Invalid(
        cat("cfg.negligible: expected 0 when cfg.negligible_threshold is set (one negligible "
            "rule at a time), got ",
            cfg.negligible));
  }
  if (!is_unit_fraction(cfg.max_negligible)) {
    return Status::Invalid(
        cat("cfg.max_negligible: expected a finite value in (0, 1] with a negligible threshold, "
            "got ",
            cfg.max_negligible));
  }
  return Status::Ok();
}

// The negligible tables of a caller's map: absent together with their inverse pair, or shaped like the critical
// table (B, H, Nq as b, h, dq) with Tn <= Nk - T; `nk1` says where Nk + 1 comes from. Sets s->negligible.
Status check_negligible_tables(const BlockMap& m, const Dim& b, const Dim& h, const Dim& dq, int64_t nk, int64_t t,
                               const Dim& nk1, const TensorView& ref, BlockMapShape* s) {
  if (!m.negl_lut.present()) {
    const std::string why = "because map.negl_lut is absent";
    SLA_RETURN_IF_ERROR(check_absent("map.negl_count", m.negl_count, why));
    SLA_RETURN_IF_ERROR(check_absent("map.negl_inv_offset", m.negl_inv_offset, why));
    return check_absent("map.negl_inv_index", m.negl_inv_index, why);
  }
  int64_t tn = 0;
  SLA_RETURN_IF_ERROR(negl_width(m.negl_lut, nk, t, &tn));
  s->negligible = tn;
  SLA_RETURN_IF_ERROR(check_table("map.negl_lut", m.negl_lut, {b, h, dq, {tn, "Tn", nullptr}}, ref, "map.lut"));
  SLA_RETURN_IF_ERROR(check_table("map.negl_count", m.negl_count, {b, h, dq}, ref, "map.lut"));
  if (!m.negl_inv_offset.present() && !m.negl_inv_index.present()) return Status::Ok();
  SLA_RETURN_IF_ERROR(check_pair("map.negl_inv_offset", m.negl_inv_offset, "map.negl_inv_index", m.negl_inv_index));
  SLA_RETURN_IF_ERROR(check_int32_range(*s, false, true));
  SLA_RETURN_IF_ERROR(check_table("map.negl_inv_offset", m.negl_inv_offset, {b, h, nk1}, ref, "map.lut"));
  return check_table("map.negl_inv_index", m.negl_inv_index, {b, h, {dq.size * tn, "Nq * Tn", nullptr}}, ref,
                     "map.lut");
}

}  // namespace

int64_t topk_block_count(double topk, int64_t k_blocks) {
  // docs/SPEC.md 1.4: floor in double, then clamp to [1, Nk] (the public code yields T = 0 and NaN for small Nk).
  const double t = std::floor(topk * static_cast<double>(k_blocks));
  return std::min(std::max(static_cast<int64_t>(t), int64_t{1}), k_blocks);
}

Status validate_config_heads(const Config& cfg, int64_t heads) {
  const struct {
    const char* name;
    std::size_t size;
  } vectors[] = {{"cfg.head_topk", cfg.head_topk.size()}, {"cfg.head_top_p", cfg.head_top_p.size()}};
  for (const auto& v : vectors) {
    if (v.size != 0 && static_cast<int64_t>(v.size) != heads) {
      return Status::Invalid(cat(v.name, ": expected H = ", heads, " values (one per head) or none, got ", v.size));
    }
  }
  return Status::Ok();
}

RowRule resolve_row_rule(const Config& cfg, const BlockMapShape& s, int64_t head) {
  RowRule r;
  r.top_p = cfg.rule == CriticalRule::top_p;
  const int64_t nk = s.k_blocks;
  if (r.top_p) {
    r.p = cfg.head_top_p.empty() ? cfg.top_p : cfg.head_top_p[static_cast<std::size_t>(head)];
    r.max_count = s.critical;
    r.min_count = std::min(cfg.min_blocks, r.max_count);
  } else {
    const double topk = cfg.head_topk.empty() ? cfg.topk : cfg.head_topk[static_cast<std::size_t>(head)];
    r.min_count = r.max_count = topk_block_count(topk, nk);
  }
  r.threshold = cfg.variant == Variant::complement ? cfg.negligible_threshold : 0.0;
  r.negl_capacity = s.negligible;
  return r;
}

bool is_allowed_block_size(int block) { return block == 16 || block == 32 || block == 64 || block == 128; }

Status validate_attention_config(const Config& cfg) {
  if (!is_allowed_block_size(cfg.block_q)) {
    return Status::Invalid(cat("cfg.block_q: expected 16, 32, 64 or 128, got ", cfg.block_q));
  }
  if (!is_allowed_block_size(cfg.block_k)) {
    return Status::Invalid(cat("cfg.block_k: expected 16, 32, 64 or 128, got ", cfg.block_k));
  }
  const int variant = static_cast<int>(cfg.variant);
  if (cfg.variant != Variant::global && cfg.variant != Variant::complement) {
    return Status::Invalid(cat("cfg.variant: expected global (0) or complement (1), got ", variant));
  }
  if (cfg.feature_map != FeatureMap::softmax && cfg.feature_map != FeatureMap::elu &&
      cfg.feature_map != FeatureMap::relu) {
    return Status::Invalid(
        cat("cfg.feature_map: expected softmax (0), elu (1) or relu (2), got ", static_cast<int>(cfg.feature_map)));
  }
  if (!(cfg.scale == 0.0 || (std::isfinite(cfg.scale) && cfg.scale > 0.0))) {
    return Status::Invalid(cat("cfg.scale: expected 0 (meaning 1/sqrt(D)) or a finite value > 0, got ", cfg.scale));
  }
  if (!(std::isfinite(cfg.eps) && cfg.eps > 0.0)) {
    return Status::Invalid(cat("cfg.eps: expected a finite value > 0, got ", cfg.eps));
  }
  return Status::Ok();
}

Status validate_config(const Config& cfg) {
  SLA_RETURN_IF_ERROR(validate_attention_config(cfg));
  if (!(std::isfinite(cfg.topk) && cfg.topk > 0.0 && cfg.topk <= 1.0)) {
    return Status::Invalid(cat("cfg.topk: expected a finite value in (0, 1], got ", cfg.topk));
  }
  SLA_RETURN_IF_ERROR(validate_rule(cfg));
  // The fixed negligible fraction must leave room for the critical set: 1 - topk (the largest head's topk with
  // per-head values); the top_p rule's row counts vary, so only Tn <= Nk - T (the table widths) binds there.
  const double topk_bound = cfg.rule == CriticalRule::top_p ? 0.0 : max_topk(cfg);
  if (!(std::isfinite(cfg.negligible) && cfg.negligible >= 0.0 &&
        cfg.negligible <= 1.0 - topk_bound + kNegligibleSlack)) {
    return Status::Invalid(cat("cfg.negligible: expected a finite value in [0, 1 - topk] = [0, ", 1.0 - topk_bound,
                               "], got ", cfg.negligible));
  }
  if (cfg.variant == Variant::global && cfg.negligible != 0.0) {
    return Status::Invalid(
        cat("cfg.negligible: expected 0 for the global variant (only the complement variant "
            "skips blocks), got ",
            cfg.negligible));
  }
  return Status::Ok();
}

BlockMapShape resolve_block_map_shape(int64_t batch, int64_t heads, int64_t lq, int64_t lk, const Config& cfg) {
  BlockMapShape s;
  s.batch = batch;
  s.heads = heads;
  // Ceiling division without lq + bq - 1 (which could overflow near INT64_MAX).
  s.q_blocks = lq / cfg.block_q + (lq % cfg.block_q != 0 ? 1 : 0);
  s.k_blocks = lk / cfg.block_k + (lk % cfg.block_k != 0 ? 1 : 0);
  if (cfg.rule == CriticalRule::top_p) {
    s.critical = cfg.max_blocks == 0 ? s.k_blocks : std::min(cfg.max_blocks, s.k_blocks);
  } else {
    s.critical = topk_block_count(max_topk(cfg), s.k_blocks);
  }
  if (cfg.variant == Variant::complement) {
    const double frac = cfg.negligible_threshold > 0.0 ? cfg.max_negligible : cfg.negligible;
    const double tn = std::floor(frac * static_cast<double>(s.k_blocks));
    s.negligible = std::max(int64_t{0}, std::min(static_cast<int64_t>(tn), s.k_blocks - s.critical));
  }
  return s;
}

Status validate_predict_inputs(const TensorView& q, const TensorView& k, const Config& cfg, Problem* p) {
  SLA_RETURN_IF_ERROR(validate_config(cfg));
  Problem r;
  SLA_RETURN_IF_ERROR(resolve_qk(q, k, cfg, &r));
  SLA_RETURN_IF_ERROR(validate_config_heads(cfg, r.heads));
  r.map = resolve_block_map_shape(r.batch, r.heads, r.lq, r.lk, cfg);
  *p = r;
  return Status::Ok();
}

Status validate_predict(const TensorView& q, const TensorView& k, const Config& cfg, const BlockMap& map, Problem* p) {
  SLA_RETURN_IF_ERROR(validate_predict_inputs(q, k, cfg, p));
  return check_predicted_map(map, p->map, q, InverseTables::optional);
}

Status validate_invert(const BlockMap& m, Problem* p) {
  if (!m.lut.present() || m.lut.ndim != 4) return check_structure("map.lut", m.lut, {"B", "H", "Nq", "T"});
  // Nk is known only from the inverse offsets (Nk + 1 entries per row).
  SLA_RETURN_IF_ERROR(check_structure("map.inv_offset", m.inv_offset, {"B", "H", "Nk + 1"}));
  const int64_t nk = m.inv_offset.shape[2] - 1;
  if (nk < 1) {
    return Status::Invalid(cat("map.inv_offset: expected shape[2] (Nk + 1) >= 2, got ", m.inv_offset.shape[2]));
  }
  int64_t t = 0;
  SLA_RETURN_IF_ERROR(lut_width(m.lut, nk, " (Nk from map.inv_offset)", &t));
  const TensorView& ref = m.lut;
  const int64_t batch = ref.shape[0], heads = ref.shape[1], nq = ref.shape[2];
  const Dim b{batch, "B", "map.lut"}, h{heads, "H", "map.lut"}, dq{nq, "Nq", "map.lut"};
  SLA_RETURN_IF_ERROR(check_table("map.lut", m.lut, {b, h, dq, {t, "T", nullptr}}, ref, "map.lut"));
  SLA_RETURN_IF_ERROR(check_table("map.count", m.count, {b, h, dq}, ref, "map.lut"));
  SLA_RETURN_IF_ERROR(check_table("map.inv_offset", m.inv_offset, {b, h, {nk + 1, "Nk + 1", nullptr}}, ref, "map.lut"));
  BlockMapShape s;
  s.batch = batch;
  s.heads = heads;
  s.q_blocks = nq;
  s.k_blocks = nk;
  s.critical = t;
  SLA_RETURN_IF_ERROR(check_int32_range(s, true, false));
  SLA_RETURN_IF_ERROR(check_table("map.inv_index", m.inv_index, {b, h, {nq * t, "Nq * T", nullptr}}, ref, "map.lut"));

  SLA_RETURN_IF_ERROR(check_negligible_tables(m, b, h, dq, nk, t, {nk + 1, "Nk + 1", "map.inv_offset"}, ref, &s));
  Problem r;
  r.batch = batch;
  r.heads = heads;
  r.device = ref.device;
  r.map = s;
  *p = r;
  return Status::Ok();
}

Status validate_check_map(const BlockMap& m, int64_t k_blocks, Problem* p) {
  if (!m.lut.present() || m.lut.ndim != 4) return check_structure("map.lut", m.lut, {"B", "H", "Nq", "T"});
  if (k_blocks < 1 || k_blocks > kInt32Max) {
    return Status::Invalid(cat("k_blocks: expected Nk in [1, 2^31 - 1], got ", k_blocks));
  }
  const TensorView& ref = m.lut;
  if (ref.device != Device::cpu) {
    return Status::Invalid(cat("map.lut: expected tables in host memory (device cpu), got ", device_str(ref),
                               "; copy them to the host first (the CUDA forward and backward check device tables "
                               "themselves)"));
  }
  int64_t t = 0;
  SLA_RETURN_IF_ERROR(lut_width(m.lut, k_blocks, " (k_blocks)", &t));
  const int64_t batch = ref.shape[0], heads = ref.shape[1], nq = ref.shape[2];
  const Dim b{batch, "B", "map.lut"}, h{heads, "H", "map.lut"}, dq{nq, "Nq", "map.lut"};
  SLA_RETURN_IF_ERROR(check_table("map.lut", m.lut, {b, h, dq, {t, "T", nullptr}}, ref, "map.lut"));
  SLA_RETURN_IF_ERROR(check_table("map.count", m.count, {b, h, dq}, ref, "map.lut"));
  const Dim nk1{k_blocks + 1, "Nk + 1", "k_blocks"};
  BlockMapShape s;
  s.batch = batch;
  s.heads = heads;
  s.q_blocks = nq;
  s.k_blocks = k_blocks;
  s.critical = t;
  if (m.inv_offset.present() || m.inv_index.present()) {
    SLA_RETURN_IF_ERROR(check_pair("map.inv_offset", m.inv_offset, "map.inv_index", m.inv_index));
    SLA_RETURN_IF_ERROR(check_int32_range(s, true, false));
    SLA_RETURN_IF_ERROR(check_table("map.inv_offset", m.inv_offset, {b, h, nk1}, ref, "map.lut"));
    SLA_RETURN_IF_ERROR(check_table("map.inv_index", m.inv_index, {b, h, {nq * t, "Nq * T", nullptr}}, ref, "map.lut"));
  }
  SLA_RETURN_IF_ERROR(check_negligible_tables(m, b, h, dq, k_blocks, t, nk1, ref, &s));
  Problem r;
  r.batch = batch;
  r.heads = heads;
  r.device = ref.device;
  r.map = s;
  *p = r;
  return Status::Ok();
}

Status validate_forward(const ForwardArgs& a, const Config& cfg, Problem* p) {
  Problem r;
  SLA_RETURN_IF_ERROR(resolve_qkv(a.q, a.k, a.v, cfg, &r));
  SLA_RETURN_IF_ERROR(check_call_map(a.map, cfg, a.q, InverseTables::optional, &r.map));
  SLA_RETURN_IF_ERROR(check_output_like("o", a.o, r, a.q, /*written=*/true));
  SLA_RETURN_IF_ERROR(check_projection("proj_weight", a.proj_weight, "proj_bias", a.proj_bias, a.q, r));
  r.has_weight = a.proj_weight.present();
  r.has_bias = a.proj_bias.present();

  const char* names[] = {"lse", "lin_h", "lin_z"};
  const TensorView* saved[] = {&a.lse, &a.lin_h, &a.lin_z};
  int first_present = -1, first_absent = -1;
  for (int i = 0; i < 3; ++i) {
    int& slot = saved[i]->present() ? first_present : first_absent;
    if (slot < 0) slot = i;
  }
  if (first_present >= 0 && first_absent >= 0) {
    return Status::Invalid(cat(names[first_absent], ": absent but ", names[first_present],
                               " is present; expected lse, lin_h and lin_z all present (training) or all absent "
                               "(inference)"));
  }
  r.save_for_backward = first_present >= 0;
  if (a.o_lin.present() && !r.save_for_backward) {
    return Status::Invalid(
        "o_lin: present but lse, lin_h and lin_z are absent; expected o_lin only with the rest of the saved state "
        "(training), or absent");
  }
  if (r.save_for_backward) {
    SLA_RETURN_IF_ERROR(check_saved({a.lse, a.o_lin, a.lin_h, a.lin_z}, a.q, r));
  }
  if (a.o_sparse.present()) {
    const Dim b{r.batch, "B", "q"}, h{r.heads, "H", "q"}, lq{r.lq, "Lq", "q"}, dv{r.dv, "Dv", "v"};
    SLA_RETURN_IF_ERROR(check_acc_tensor("o_sparse", a.o_sparse, {b, h, lq, dv}, a.q, r));
  }
  *p = r;
  return Status::Ok();
}

Status validate_backward(const BackwardArgs& a, const Config& cfg, Problem* p) {
  Problem r;
  SLA_RETURN_IF_ERROR(resolve_qkv(a.q, a.k, a.v, cfg, &r));
  // The CPU backward reads the caller's inverse tables and O_l; the CUDA backward rebuilds the tables and forms
  // D_r and dW without O_l.
  const bool cpu_backward = a.q.device == Device::cpu;
  const InverseTables inverse = cpu_backward ? InverseTables::required : InverseTables::rebuilt;
  SLA_RETURN_IF_ERROR(check_call_map(a.map, cfg, a.q, inverse, &r.map));
  SLA_RETURN_IF_ERROR(check_projection("proj_weight", a.proj_weight, "proj_bias", a.proj_bias, a.q, r));
  SLA_RETURN_IF_ERROR(check_output_like("o", a.o, r, a.q, /*written=*/false));
  SLA_RETURN_IF_ERROR(check_output_like("d_o", a.d_o, r, a.q, /*written=*/false));
  if (a.o_sparse.present()) {
    const Dim b{r.batch, "B", "q"}, h{r.heads, "H", "q"}, lq{r.lq, "Lq", "q"}, dv{r.dv, "Dv", "v"};
    SLA_RETURN_IF_ERROR(check_acc_tensor("o_sparse", a.o_sparse, {b, h, lq, dv}, a.q, r));
  }
  SLA_RETURN_IF_ERROR(check_saved({a.lse, a.o_lin, a.lin_h, a.lin_z}, a.q, r));
  if (cpu_backward && !a.o_lin.present()) {
    return Status::Invalid(
        "o_lin: absent; expected the forward's O_l (B, H, Lq, Dv), which the CPU backward reads (save it in the "
        "forward: ForwardArgs::o_lin; the CUDA backward does not need it)");
  }
  SLA_RETURN_IF_ERROR(check_gradient("dq", a.dq, a.q, "q"));
  SLA_RETURN_IF_ERROR(check_gradient("dk", a.dk, a.k, "k"));
  SLA_RETURN_IF_ERROR(check_gradient("dv", a.dv, a.v, "v"));
  SLA_RETURN_IF_ERROR(check_projection("d_proj_weight", a.d_proj_weight, "d_proj_bias", a.d_proj_bias, a.q, r));
  r.has_weight = a.proj_weight.present();
  r.has_bias = a.proj_bias.present();
  r.save_for_backward = true;
  *p = r;
  return Status::Ok();
}

Status validate_exec(const Exec& exec, std::size_t needed) {
  if (exec.num_threads < 0) {
    return Status::Invalid(cat("exec.num_threads: expected >= 0 (0 = all hardware threads), got ", exec.num_threads));
  }
  if (exec.workspace_bytes > 0 && exec.workspace == nullptr) {
    return Status::Invalid(cat("exec.workspace: null but exec.workspace_bytes = ", exec.workspace_bytes,
                               "; expected a buffer of that many bytes"));
  }
  if (exec.workspace_bytes < needed) {
    return {StatusCode::workspace_too_small, cat("exec.workspace_bytes: expected at least ", needed,
                                                 " bytes (from *_workspace_size), got ", exec.workspace_bytes)};
  }
  return Status::Ok();
}

}  // namespace sla
