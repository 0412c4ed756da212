// Shared helpers of the C++ tests: host tensors of any dtype and strides, seeded random inputs, buffers for the
// block map and the saved forward state, thin wrappers over the public API, and naive dense fp64 references.
//
// The references (namespace sla_test::ref) are adapters of the one fp64 reference of the C++ tests
// (tests/common/reference.h, written from docs/SPEC.md, shared with tests/cuda): they share no code with src/cpu or
// src/cuda.
// (HostTensor does use cpu/half_float.h to store bf16/fp16 values; that header is tested exhaustively against the
// compiler's _Float16 and a brute-force nearest search in test_cpu_half_float.cpp.)
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/half_float.h"
#include "reference.h"
#include "sla/sla.h"

namespace sla_test {

using sla::DType;

// ------------------------------------------------------------------------------------------------------------------
// Seeds and random numbers

// A seed derived from the running test's full name: every test gets its own inputs, reproducibly.
inline uint64_t seed_for_current_test(uint64_t salt = 0) {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "no-test";
  uint64_t h = 1469598103934665603ull ^ salt;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

// ------------------------------------------------------------------------------------------------------------------
// Host tensors

// An owning host tensor with any element strides; storage may be larger than the logical extent (padding).
class HostTensor {
 public:
  DType dtype = DType::f64;
  std::vector<int64_t> shape, stride;
  std::vector<unsigned char> bytes;

  HostTensor() = default;

  static HostTensor contiguous(DType dt, std::vector<int64_t> shape) {
    std::vector<int64_t> stride(shape.size());
    int64_t s = 1;
    for (int64_t i = static_cast<int64_t>(shape.size()) - 1; i >= 0; --i) {
      stride[i] = s;
      s *= shape[i];
    }
    return strided(dt, std::move(shape), std::move(stride));
  }

  // `extra` elements of padding are appended after the last logical element.
  static HostTensor strided(DType dt, std::vector<int64_t> shape, std::vector<int64_t> stride, int64_t extra = 0) {
    HostTensor t;
    t.dtype = dt;
    t.shape = std::move(shape);
    t.stride = std::move(stride);
    int64_t last = 0;
    bool empty = false;
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (t.shape[i] == 0) empty = true;
      last += (t.shape[i] - 1) * t.stride[i];
    }
    const int64_t elems = (empty ? 0 : last + 1) + extra;
    t.bytes.assign(static_cast<size_t>(elems) * sla::dtype_size(dt), 0);
    return t;
  }

  bool empty() const { return bytes.empty() && shape.empty(); }
  int64_t storage_elems() const { return static_cast<int64_t>(bytes.size() / sla::dtype_size(dtype)); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }

  sla::TensorView view() const {
    sla::TensorView v;
    if (shape.empty() && bytes.empty()) return v;  // absent
    v.data = const_cast<unsigned char*>(bytes.data());
    v.dtype = dtype;
    v.ndim = static_cast<int>(shape.size());
    for (int i = 0; i < v.ndim; ++i) {
      v.shape[i] = shape[i];
      v.stride[i] = stride[i];
    }
    return v;
  }

  double get_raw(int64_t off) const {
    const unsigned char* p = bytes.data();
    switch (dtype) {
      case DType::f64: { double x; std::memcpy(&x, p + off * 8, 8); return x; }
      case DType::f32: { float x; std::memcpy(&x, p + off * 4, 4); return x; }
      case DType::i32: { int32_t x; std::memcpy(&x, p + off * 4, 4); return x; }
      case DType::bf16: { sla::cpu::bf16 x; std::memcpy(&x, p + off * 2, 2); return sla::cpu::to_float(x); }
      case DType::f16: { sla::cpu::f16 x; std::memcpy(&x, p + off * 2, 2); return sla::cpu::to_float(x); }
    }
    return 0;
  }

  void set_raw(int64_t off, double value) {
    unsigned char* p = bytes.data();
    switch (dtype) {
      case DType::f64: std::memcpy(p + off * 8, &value, 8); break;
      case DType::f32: { float x = static_cast<float>(value); std::memcpy(p + off * 4, &x, 4); break; }
      case DType::i32: { int32_t x = static_cast<int32_t>(value); std::memcpy(p + off * 4, &x, 4); break; }
      case DType::bf16: {
        sla::cpu::bf16 x = sla::cpu::to_bf16(static_cast<float>(value));
        std::memcpy(p + off * 2, &x, 2);
        break;
      }
      case DType::f16: {
        sla::cpu::f16 x = sla::cpu::to_f16(static_cast<float>(value));
        std::memcpy(p + off * 2, &x, 2);
        break;
      }
    }
  }

  int64_t offset_of_linear(int64_t linear) const {
    int64_t off = 0;
    for (int64_t i = static_cast<int64_t>(shape.size()) - 1; i >= 0; --i) {
      off += (linear % shape[i]) * stride[i];
      linear /= shape[i];
    }
    return off;
  }

  int64_t offset(std::initializer_list<int64_t> idx) const {
    int64_t off = 0, i = 0;
    for (int64_t x : idx) off += x * stride[i++];
    return off;
  }
  double get(std::initializer_list<int64_t> idx) const { return get_raw(offset(idx)); }
  void set(std::initializer_list<int64_t> idx, double value) { set_raw(offset(idx), value); }

  // Logical values in row-major order of `shape`.
  std::vector<double> logical() const {
    std::vector<double> out(static_cast<size_t>(numel()));
    for (int64_t l = 0; l < numel(); ++l) out[l] = get_raw(offset_of_linear(l));
    return out;
  }
  void set_logical(const std::vector<double>& values) {
    for (int64_t l = 0; l < numel(); ++l) set_raw(offset_of_linear(l), values[l]);
  }
  // Every element of the storage, padding included.
  void fill_storage(double value) {
    for (int64_t e = 0; e < storage_elems(); ++e) set_raw(e, value);
  }
  // Storage offsets that are not part of the logical tensor.
  std::vector<int64_t> padding_offsets() const {
    std::vector<char> used(static_cast<size_t>(storage_elems()), 0);
    for (int64_t l = 0; l < numel(); ++l) used[offset_of_linear(l)] = 1;
    std::vector<int64_t> out;
    for (int64_t e = 0; e < storage_elems(); ++e) {
      if (!used[e]) out.push_back(e);
    }
    return out;
  }
};

// Fills the logical elements with uniform values in [lo, hi), rounded to the tensor's dtype.
inline void fill_uniform(HostTensor& t, std::mt19937_64& rng, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  for (int64_t l = 0; l < t.numel(); ++l) t.set_raw(t.offset_of_linear(l), dist(rng));
}

// Memory layout of a (B, H, L, D) tensor.
enum class Layout { bhld, blhd };

// A (B, H, L, D) tensor in `layout`; `row_pad` extra elements per row and `extra_rows` extra rows of padding at the
// end of the storage (used to check that nothing outside the logical tensor is written).
inline HostTensor make_bhld(DType dt, int64_t b, int64_t h, int64_t l, int64_t d, Layout layout = Layout::bhld,
                            int64_t row_pad = 0, int64_t extra_rows = 0) {
  const int64_t ld = d + row_pad;
  std::vector<int64_t> stride = layout == Layout::bhld ? std::vector<int64_t>{h * l * ld, l * ld, ld, 1}
                                                       : std::vector<int64_t>{l * h * ld, ld, h * ld, 1};
  return HostTensor::strided(dt, {b, h, l, d}, stride, extra_rows * ld + row_pad);
}

inline sla::DType acc_dtype(sla::DType input) { return input == DType::f64 ? DType::f64 : DType::f32; }

// ------------------------------------------------------------------------------------------------------------------
// One SLA problem: sizes, options, inputs and every buffer the API writes.

struct Shape {
  int64_t b = 1, h = 2, lq = 100, lk = 100, d = 16, dv = 16;
};

struct Inputs {
  HostTensor q, k, v, w, bias;  // w, bias empty = absent
};

inline Inputs make_inputs(const Shape& s, DType dt, std::mt19937_64& rng, bool with_weight, bool with_bias,
                          Layout layout = Layout::bhld, double qk_range = 1.0) {
  Inputs in;
  in.q = make_bhld(dt, s.b, s.h, s.lq, s.d, layout);
  in.k = make_bhld(dt, s.b, s.h, s.lk, s.d, layout);
  in.v = make_bhld(dt, s.b, s.h, s.lk, s.dv, layout);
  fill_uniform(in.q, rng, -qk_range, qk_range);
  fill_uniform(in.k, rng, -qk_range, qk_range);
  fill_uniform(in.v, rng);
  if (with_weight) {
    in.w = HostTensor::contiguous(acc_dtype(dt), {s.dv, s.dv});
    fill_uniform(in.w, rng, -0.5, 0.5);
  }
  if (with_bias) {
    in.bias = HostTensor::contiguous(acc_dtype(dt), {s.dv});
    fill_uniform(in.bias, rng, -0.5, 0.5);
  }
  return in;
}

struct MapBuffers {
  HostTensor lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index;

  sla::BlockMap view() const {
    sla::BlockMap m;
    m.lut = lut.view();
    m.count = count.view();
    m.negl_lut = negl_lut.view();
    m.negl_count = negl_count.view();
    m.inv_offset = inv_offset.view();
    m.inv_index = inv_index.view();
    m.negl_inv_offset = negl_inv_offset.view();
    m.negl_inv_index = negl_inv_index.view();
    return m;
  }
};

inline sla::BlockMapShape map_shape(const Shape& s, const sla::Config& cfg) {
  sla::BlockMapShape ms;
  sla::Status st = sla::block_map_shape(s.b, s.h, s.lq, s.lk, cfg, &ms);
  EXPECT_TRUE(st.ok()) << st.message;
  return ms;
}

// Allocates the tables of a block map (inverse tables when `with_inverse`), filled with -7 so that unwritten
// entries are visible.
inline MapBuffers alloc_map(const sla::BlockMapShape& ms, bool with_inverse) {
  MapBuffers m;
  m.lut = HostTensor::contiguous(DType::i32, {ms.batch, ms.heads, ms.q_blocks, ms.critical});
  m.count = HostTensor::contiguous(DType::i32, {ms.batch, ms.heads, ms.q_blocks});
  if (ms.negligible > 0) {
    m.negl_lut = HostTensor::contiguous(DType::i32, {ms.batch, ms.heads, ms.q_blocks, ms.negligible});
    m.negl_count = HostTensor::contiguous(DType::i32, {ms.batch, ms.heads, ms.q_blocks});
  }
  if (with_inverse) {
    m.inv_offset = HostTensor::contiguous(DType::i32, {ms.batch, ms.heads, ms.k_blocks + 1});
    m.inv_index = HostTensor::contiguous(DType::i32, {ms.batch, ms.heads, ms.q_blocks * ms.critical});
    if (ms.negligible > 0) {
      m.negl_inv_offset = HostTensor::contiguous(DType::i32, {ms.batch, ms.heads, ms.k_blocks + 1});
      m.negl_inv_index = HostTensor::contiguous(DType::i32, {ms.batch, ms.heads, ms.q_blocks * ms.negligible});
    }
  }
  for (HostTensor* t : {&m.lut, &m.count, &m.negl_lut, &m.negl_count, &m.inv_offset, &m.inv_index,
                        &m.negl_inv_offset, &m.negl_inv_index}) {
    t->fill_storage(-7);
  }
  return m;
}

// A caller map of any widths (ms.critical, ms.negligible; the forward and backward take them from the tables): every
// row holds ms.critical random distinct key blocks, ascending, and ms.negligible others. The inverse tables, when
// allocated, are left for invert_block_map.
inline MapBuffers random_full_map(const sla::BlockMapShape& ms, bool with_inverse, std::mt19937_64& rng) {
  MapBuffers m = alloc_map(ms, with_inverse);
  std::vector<int64_t> perm(static_cast<size_t>(ms.k_blocks));
  for (int64_t b = 0; b < ms.batch; ++b)
    for (int64_t h = 0; h < ms.heads; ++h)
      for (int64_t i = 0; i < ms.q_blocks; ++i) {
        for (int64_t j = 0; j < ms.k_blocks; ++j) perm[j] = j;
        std::shuffle(perm.begin(), perm.end(), rng);
        std::sort(perm.begin(), perm.begin() + ms.critical);
        m.count.set({b, h, i}, double(ms.critical));
        for (int64_t e = 0; e < ms.critical; ++e) m.lut.set({b, h, i, e}, double(perm[e]));
        if (ms.negligible == 0) continue;
        m.negl_count.set({b, h, i}, double(ms.negligible));
        for (int64_t e = 0; e < ms.negligible; ++e) m.negl_lut.set({b, h, i, e}, double(perm[ms.critical + e]));
      }
  return m;
}

inline sla::Exec exec_with_threads(int threads) {
  sla::Exec e;
  e.num_threads = threads;
  return e;
}

inline sla::Status predict(const Inputs& in, const sla::Config& cfg, const MapBuffers& map, int threads = 2) {
  return sla::predict_block_map(in.q.view(), in.k.view(), cfg, map.view(), exec_with_threads(threads));
}

// Forward outputs; the saved state is allocated only when `save`.
struct ForwardOutputs {
  HostTensor o, lse, o_lin, lin_h, lin_z;
};

inline ForwardOutputs alloc_forward(const Shape& s, DType dt, bool save, Layout layout = Layout::bhld) {
  ForwardOutputs f;
  f.o = make_bhld(dt, s.b, s.h, s.lq, s.dv, layout);
  f.o.fill_storage(std::numeric_limits<double>::quiet_NaN());
  if (save) {
    const DType acc = acc_dtype(dt);
    f.lse = HostTensor::contiguous(acc, {s.b, s.h, s.lq});
    f.o_lin = HostTensor::contiguous(acc, {s.b, s.h, s.lq, s.dv});
    f.lin_h = HostTensor::contiguous(acc, {s.b, s.h, s.d, s.dv});
    f.lin_z = HostTensor::contiguous(acc, {s.b, s.h, s.d});
    for (HostTensor* t : {&f.lse, &f.o_lin, &f.lin_h, &f.lin_z}) t->fill_storage(std::nan(""));
  }
  return f;
}

inline sla::ForwardArgs forward_args(const Inputs& in, const MapBuffers& map, const ForwardOutputs& out) {
  sla::ForwardArgs a;
  a.q = in.q.view();
  a.k = in.k.view();
  a.v = in.v.view();
  a.proj_weight = in.w.view();
  a.proj_bias = in.bias.view();
  a.map = map.view();
  a.o = out.o.view();
  a.lse = out.lse.view();
  a.o_lin = out.o_lin.view();
  a.lin_h = out.lin_h.view();
  a.lin_z = out.lin_z.view();
  return a;
}

inline sla::Status run_forward(const Inputs& in, const sla::Config& cfg, const MapBuffers& map,
                               const ForwardOutputs& out, int threads = 2) {
  return sla::forward(forward_args(in, map, out), cfg, exec_with_threads(threads));
}

struct Gradients {
  HostTensor dq, dk, dv, dw, dbias;
};

inline Gradients alloc_gradients(const Shape& s, DType dt, bool with_weight, bool with_bias,
                                 Layout layout = Layout::bhld) {
  Gradients g;
  g.dq = make_bhld(dt, s.b, s.h, s.lq, s.d, layout);
  g.dk = make_bhld(dt, s.b, s.h, s.lk, s.d, layout);
  g.dv = make_bhld(dt, s.b, s.h, s.lk, s.dv, layout);
  if (with_weight) g.dw = HostTensor::contiguous(acc_dtype(dt), {s.dv, s.dv});
  if (with_bias) g.dbias = HostTensor::contiguous(acc_dtype(dt), {s.dv});
  for (HostTensor* t : {&g.dq, &g.dk, &g.dv, &g.dw, &g.dbias}) t->fill_storage(std::nan(""));
  return g;
}

inline sla::Status run_backward(const Inputs& in, const sla::Config& cfg, const MapBuffers& map,
                                const ForwardOutputs& fwd, const HostTensor& d_o, const Gradients& g,
                                int threads = 2) {
  sla::BackwardArgs a;
  a.q = in.q.view();
  a.k = in.k.view();
  a.v = in.v.view();
  a.proj_weight = in.w.view();
  a.proj_bias = in.bias.view();
  a.map = map.view();
  a.o = fwd.o.view();
  a.d_o = d_o.view();
  a.lse = fwd.lse.view();
  a.o_lin = fwd.o_lin.view();
  a.lin_h = fwd.lin_h.view();
  a.lin_z = fwd.lin_z.view();
  a.dq = g.dq.view();
  a.dk = g.dk.view();
  a.dv = g.dv.view();
  a.d_proj_weight = g.dw.view();
  a.d_proj_bias = g.dbias.view();
  return sla::backward(a, cfg, exec_with_threads(threads));
}

// ------------------------------------------------------------------------------------------------------------------
// Comparisons

// Largest |a - b| / (atol + rtol * |b|); <= 1 means close. NaN anywhere counts as infinitely far.
inline double close_ratio(const std::vector<double>& a, const std::vector<double>& b, double atol, double rtol,
                          int64_t* worst = nullptr) {
  double ratio = 0;
  if (worst) *worst = -1;
  for (size_t i = 0; i < a.size(); ++i) {
    const double diff = std::fabs(a[i] - b[i]);
    const double r = diff == 0 ? 0.0 : diff / (atol + rtol * std::fabs(b[i]));
    const double rr = std::isnan(r) ? std::numeric_limits<double>::infinity() : r;
    if (worst && (*worst < 0 || rr > ratio)) *worst = static_cast<int64_t>(i);
    ratio = std::max(ratio, rr);
  }
  return ratio;
}

inline ::testing::AssertionResult all_close(const std::vector<double>& actual, const std::vector<double>& expected,
                                            double atol, double rtol) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << "size " << actual.size() << " != " << expected.size();
  }
  int64_t worst = -1;
  const double ratio = close_ratio(actual, expected, atol, rtol, &worst);
  if (ratio <= 1.0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "element " << worst << ": actual " << actual[worst] << " expected "
                                       << expected[worst] << " (atol " << atol << ", rtol " << rtol
                                       << ", ratio " << ratio << ")";
}

inline ::testing::AssertionResult bitwise_equal(const HostTensor& a, const HostTensor& b) {
  if (a.bytes.size() != b.bytes.size()) return ::testing::AssertionFailure() << "storage sizes differ";
  for (size_t i = 0; i < a.bytes.size(); ++i) {
    if (a.bytes[i] != b.bytes[i]) return ::testing::AssertionFailure() << "first differing byte " << i;
  }
  return ::testing::AssertionSuccess();
}

// ------------------------------------------------------------------------------------------------------------------
// Naive dense fp64 references (docs/SPEC.md sections 1-5). Arrays are row-major logical (B, H, L, D) doubles.

// Every combination of linear-branch variant and feature map, the grid the forward and backward suites both run.
using VariantCase = std::tuple<sla::Variant, sla::FeatureMap>;
inline auto all_variant_cases() {
  return ::testing::Combine(::testing::Values(sla::Variant::global, sla::Variant::complement),
                            ::testing::Values(sla::FeatureMap::softmax, sla::FeatureMap::elu, sla::FeatureMap::relu));
}
inline std::string variant_case_name(const ::testing::TestParamInfo<VariantCase>& info) {
  return std::string(sla::variant_name(std::get<0>(info.param))) + "_" + sla::feature_map_name(std::get<1>(info.param));
}

namespace ref {

// Adapters of the one fp64 reference (tests/common/reference.h, shared with tests/cuda) to this file's types:
// dense (B, H, L, D) double arrays and block masks.
using Masks = sla_ref::Masks;

struct Dims {
  int64_t b, h, lq, lk, d, dv;
};

inline Dims dims_of(const Shape& s) { return {s.b, s.h, s.lq, s.lk, s.d, s.dv}; }

inline std::vector<double> phi(sla::FeatureMap f, const double* x, int64_t d) {
  return sla_ref::reference_phi(f, x, d);
}

inline sla_ref::RefProblem problem(const Dims& s, const std::vector<double>& q, const std::vector<double>& k,
                                   const std::vector<double>* v, int64_t bq, int64_t bk) {
  sla_ref::RefProblem p;
  p.batch = s.b;
  p.heads = s.h;
  p.lq = s.lq;
  p.lk = s.lk;
  p.d = s.d;
  p.dv = s.dv;
  p.bq = static_cast<int>(bq);
  p.bk = static_cast<int>(bk);
  p.q = q.data();
  p.k = k.data();
  p.v = v ? v->data() : nullptr;
  return p;
}

// The block map from its definition (smooth-K, pooled scores, an independent selection rule: see
// sla_ref::reference_block_masks).
inline Masks block_map(const Dims& s, const std::vector<double>& q, const std::vector<double>& k, int64_t bq,
                       int64_t bk, int64_t t, int64_t tn) {
  return sla_ref::reference_block_masks(problem(s, q, k, nullptr, bq, bk), t, tn);
}

// Masks from a block map's tables (to feed the references with exactly the map the library used).
inline Masks masks_from_tables(const MapBuffers& map, int64_t nk) {
  Masks m;
  const int64_t b = map.count.shape[0], h = map.count.shape[1];
  m.nq = map.count.shape[2];
  m.nk = nk;
  m.crit.assign(b * h * m.nq * nk, 0);
  m.negl.assign(b * h * m.nq * nk, 0);
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t hi = 0; hi < h; ++hi)
      for (int64_t i = 0; i < m.nq; ++i) {
        const int64_t bh = bi * h + hi;
        const int64_t n = static_cast<int64_t>(map.count.get({bi, hi, i}));
        for (int64_t e = 0; e < n; ++e) m.crit[(bh * m.nq + i) * nk + static_cast<int64_t>(map.lut.get({bi, hi, i, e}))] = 1;
        if (!map.negl_count.empty()) {
          const int64_t nn = static_cast<int64_t>(map.negl_count.get({bi, hi, i}));
          for (int64_t e = 0; e < nn; ++e)
            m.negl[(bh * m.nq + i) * nk + static_cast<int64_t>(map.negl_lut.get({bi, hi, i, e}))] = 1;
        }
      }
  return m;
}

// The exact reference forward on the mask `m` (no projection).
inline sla_ref::RefOutputs forward_on(const Dims& s, const std::vector<double>& q, const std::vector<double>& k,
                                      const std::vector<double>& v, const Masks& m, int64_t bq, int64_t bk,
                                      sla::Variant variant, sla::FeatureMap f, double scale, double eps) {
  sla_ref::RefProblem p = problem(s, q, k, &v, bq, bk);
  p.variant = variant;
  p.feature_map = f;
  p.scale = scale;
  p.eps = eps;
  sla_ref::MaskTables tables;
  sla_ref::use_masks(m, &p, &tables);
  sla_ref::RefOutputs out;
  sla_ref::reference_forward(p, sla_ref::exact, &out);
  return out;
}

// Sparse branch: softmax(s Q K^T + log Mask) V with the block mask expanded to tokens. Rows without any allowed
// key get O_s = 0 and LSE = -inf. `lse` may be null.
inline std::vector<double> sparse(const Dims& s, const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v, const Masks& m, int64_t bq, int64_t bk, double scale,
                                  std::vector<double>* lse) {
  sla_ref::RefOutputs out =
      forward_on(s, q, k, v, m, bq, bk, sla::Variant::global, sla::FeatureMap::softmax, scale, 1e-5);
  if (lse) *lse = out.lse;
  return out.o_sparse;
}

// Linear branch O_l: global phi(Q) H / (phi(Q) . z + eps); complement the same over the marginal blocks, with
// zero rows where M_i is empty or the denominator is not > 0.
inline std::vector<double> linear(const Dims& s, const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v, const Masks& m, int64_t bq, int64_t bk,
                                  sla::Variant variant, sla::FeatureMap f, double eps) {
  return forward_on(s, q, k, v, m, bq, bk, variant, f, 1.0, eps).o_lin;
}

// O = O_s + O_l W^T + b; w and bias may be empty (absent).
inline std::vector<double> output(const Dims& s, const std::vector<double>& os, const std::vector<double>& ol,
                                  const std::vector<double>& w, const std::vector<double>& bias) {
  std::vector<double> o(os);
  for (int64_t row = 0; row < s.b * s.h * s.lq; ++row)
    for (int64_t e = 0; e < s.dv; ++e) {
      double acc = 0;
      if (!w.empty())
        for (int64_t f = 0; f < s.dv; ++f) acc += ol[row * s.dv + f] * w[e * s.dv + f];
      if (!bias.empty()) acc += bias[e];
      o[row * s.dv + e] += acc;
    }
  return o;
}

// Gradients of the sparse branch O_s = softmax(s Q K^T + log Mask) V with the token-expanded block mask; a null
// `masks` means dense softmax attention over all keys (the topk = 1 case).
inline void sparse_backward(const Dims& s, const std::vector<double>& q, const std::vector<double>& k,
                            const std::vector<double>& v, const std::vector<double>& d_o, const Masks* masks,
                            int64_t bq, int64_t bk, double scale, std::vector<double>* dq, std::vector<double>* dk,
                            std::vector<double>* dv) {
  sla_ref::RefProblem p = problem(s, q, k, &v, bq, bk);
  p.scale = scale;
  Masks all;
  if (masks == nullptr) {
    all.nq = (s.lq + bq - 1) / bq;
    all.nk = (s.lk + bk - 1) / bk;
    all.crit.assign(s.b * s.h * all.nq * all.nk, 1);
    all.negl.assign(s.b * s.h * all.nq * all.nk, 0);
  }
  sla_ref::MaskTables tables;
  sla_ref::use_masks(masks ? *masks : all, &p, &tables);
  sla_ref::RefGradients g;
  sla_ref::reference_backward(p, d_o, sla_ref::exact, &g);  // no W: the sparse branch's gradients alone
  *dq = std::move(g.dq);
  *dk = std::move(g.dk);
  *dv = std::move(g.dv);
}

}  // namespace ref
}  // namespace sla_test
