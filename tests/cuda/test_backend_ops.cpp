// GPU-vs-CPU tests of the CUDA backend in the style of ggml's test-backend-ops.
//
//   test_backend_ops [--mode fwd|bwd|perf|ref] [--filter SUBSTRING] [--seed N] [--list]
//
// fwd:  a grid of forward cases (dtype x head dim x block sizes x variant, with feature map, shape and layout
//       rotating through all their values) plus special cases (topk = 1, negligible set, no saved state, int64
//       offsets). Each case: random inputs; GPU block map against the CPU backend's (exact up to fp32 near-ties);
//       inverse tables exact; GPU forward against the CPU backend in fp64 (the oracle) under FlashAttention's rule:
//       the error must be at most 2x that of the same math done at the input precision (reference.cpp with
//       rounding) plus a tiny floor. Outputs are poisoned with NaN before each run, and two runs must match bitwise.
// bwd:  GPU forward + backward against the CPU backend's fp64 gradients (dQ, dK, dV, dW, db) under the same 2x
//       rule, with the emulated-precision backward of reference.cpp; skipped while the CUDA backward is unsupported.
// ref:  host only, no GPU: reference.cpp (exact) against the CPU backend, forward and backward, to 1e-9.
// perf: W1 (B=1, H=12, L=32760, D=128, bf16, topk 0.05, 128/64, global), median of 20: block map and forward
//       (inference), and one training step (map with inverse tables + forward saving state, then backward).
// Exit status: 0 pass, 1 failure, 77 skipped (no CUDA device).
#include <cuda_runtime.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/half_float.h"
#include "reference.h"
#include "sla/sla.h"

namespace {

using sla::DType;
using sla::FeatureMap;
using sla::Variant;
using namespace sla_cuda_test;

constexpr int kSkip = 77;

#define CUDA_OK(expr)                                                                             \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

// ---- host/device buffers ------------------------------------------------------------------------------------------

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : bytes(n) {
    if (n) CUDA_OK(cudaMalloc(&ptr, n));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), bytes(o.bytes) { o.ptr = nullptr; o.bytes = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(bytes, o.bytes);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  // 0xFF bytes are NaN in bf16, fp16 and fp32, and -1 in int32: anything left unwritten shows.
  void poison() const {
    if (bytes) CUDA_OK(cudaMemset(ptr, 0xFF, bytes));
  }
  template <class T>
  std::vector<T> download() const {
    std::vector<T> h(bytes / sizeof(T));
    if (bytes) CUDA_OK(cudaMemcpy(h.data(), ptr, bytes, cudaMemcpyDeviceToHost));
    return h;
  }
};

uint16_t to_bits(double x, DType dt) {
  return dt == DType::bf16 ? sla::cpu::to_bf16(static_cast<float>(x)).bits
                           : sla::cpu::to_f16(static_cast<float>(x)).bits;
}
double from_bits(uint16_t b, DType dt) {
  return dt == DType::bf16 ? sla::cpu::to_float(sla::cpu::bf16{b}) : sla::cpu::to_float(sla::cpu::f16{b});
}
Rounding rounding_of(DType dt) {
  return [dt](double x) { return from_bits(to_bits(x, dt), dt); };
}

// A (B, H, L, D) tensor in (B,H,L,D) or (B,L,H,D) memory, optionally with an extra gap between heads (int64 test).
struct Layout {
  bool blhd = false;
  int64_t head_gap = 0;  // elements added to the head stride ((B,H,L,D) memory only)
  // Element strides of a (B, H, L, D) view of this layout.
  void strides(int64_t H, int64_t L, int64_t D, int64_t out[4]) const {
    if (blhd) {
      out[0] = L * H * D;
      out[1] = D;
      out[2] = H * D;
      out[3] = 1;
    } else {
      out[1] = L * D + head_gap;
      out[0] = H * out[1];
      out[2] = D;
      out[3] = 1;
    }
  }
};

struct DeviceTensor {
  DeviceBuffer buf;
  sla::TensorView view;
};

DeviceTensor make_device_tensor(DType dt, int64_t B, int64_t H, int64_t L, int64_t D, const Layout& lay) {
  int64_t st[4];
  lay.strides(H, L, D, st);
  const int64_t elems = (B - 1) * st[0] + (H - 1) * st[1] + (L - 1) * st[2] + D;
  DeviceTensor t;
  t.buf = DeviceBuffer(static_cast<size_t>(elems) * sla::dtype_size(dt));
  t.view = sla::make_strided_view(t.buf.ptr, dt, {B, H, L, D}, {st[0], st[1], st[2], st[3]}, sla::Device::cuda);
  return t;
}

// Copies canonical (B,H,L,D) doubles into the device tensor, row by row (only the rows, never the gaps).
void upload(const DeviceTensor& t, const std::vector<double>& x) {
  const auto& v = t.view;
  const int64_t B = v.shape[0], H = v.shape[1], L = v.shape[2], D = v.shape[3];
  std::vector<uint16_t> row(D);
  if (v.stride[1] == L * D && v.stride[0] == H * L * D) {  // contiguous: one copy
    std::vector<uint16_t> all(x.size());
    for (size_t e = 0; e < x.size(); ++e) all[e] = to_bits(x[e], v.dtype);
    CUDA_OK(cudaMemcpy(v.data, all.data(), all.size() * 2, cudaMemcpyHostToDevice));
    return;
  }
  std::vector<uint16_t> rows(L * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t e = 0; e < L * D; ++e) rows[e] = to_bits(x[((b * H + h) * L) * D + e], v.dtype);
      char* base = static_cast<char*>(v.data) + (b * v.stride[0] + h * v.stride[1]) * 2;
      CUDA_OK(cudaMemcpy2D(base, v.stride[2] * 2, rows.data(), D * 2, D * 2, L, cudaMemcpyHostToDevice));
    }
}

std::vector<double> download(const DeviceTensor& t) {
  const auto& v = t.view;
  const int64_t B = v.shape[0], H = v.shape[1], L = v.shape[2], D = v.shape[3];
  std::vector<double> x(B * H * L * D);
  std::vector<uint16_t> rows(L * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const char* base = static_cast<const char*>(v.data) + (b * v.stride[0] + h * v.stride[1]) * 2;
      CUDA_OK(cudaMemcpy2D(rows.data(), D * 2, base, v.stride[2] * 2, D * 2, L, cudaMemcpyDeviceToHost));
      for (int64_t e = 0; e < L * D; ++e) x[((b * H + h) * L) * D + e] = from_bits(rows[e], v.dtype);
    }
  return x;
}

template <class T>
DeviceBuffer upload_vec(const std::vector<T>& h) {
  DeviceBuffer d(h.size() * sizeof(T));
  if (!h.empty()) CUDA_OK(cudaMemcpy(d.ptr, h.data(), d.bytes, cudaMemcpyHostToDevice));
  return d;
}

std::vector<double> to_double(const std::vector<float>& f) { return std::vector<double>(f.begin(), f.end()); }

// ---- cases ----------------------------------------------------------------------------------------------------------

struct Case {
  DType dtype = DType::bf16;
  int64_t d = 128;
  int bq = 64, bk = 64;
  Variant variant = Variant::global;
  FeatureMap fmap = FeatureMap::softmax;
  int64_t batch = 1, heads = 2, lq = 300, lk = 300;
  Layout layout;
  double topk = 0.25, negligible = 0.0;
  bool weight = true, bias = true, save = true;
  std::string shape_name = "ragged";

  std::string name() const {
    char buf[256];
    std::snprintf(buf, sizeof buf, "fwd/%s/d%" PRId64 "/bq%d/bk%d/%s/%s/%s/%s/B%" PRId64 "H%" PRId64 "Lq%" PRId64
                  "Lk%" PRId64 "/topk%.2f/kl%.2f%s%s%s%s",
                  sla::dtype_name(dtype), d, bq, bk, sla::variant_name(variant), sla::feature_map_name(fmap),
                  shape_name.c_str(), layout.blhd ? "blhd" : (layout.head_gap ? "bhld-gap" : "bhld"), batch, heads,
                  lq, lk, topk, negligible, weight ? "/W" : "", bias ? "/b" : "", save ? "/save" : "",
                  layout.head_gap ? "/int64" : "");
    return buf;
  }
  sla::Config config() const {
    sla::Config c;
    c.block_q = bq;
    c.block_k = bk;
    c.topk = topk;
    c.negligible = negligible;
    c.variant = variant;
    c.feature_map = fmap;
    return c;
  }
};

std::vector<Case> forward_cases() {
  std::vector<Case> cases;
  const DType dts[] = {DType::bf16, DType::f16};
  const int64_t dims[] = {64, 128};
  const int blocks[] = {64, 128};
  const Variant vars[] = {Variant::global, Variant::complement};
  const FeatureMap fms[] = {FeatureMap::softmax, FeatureMap::elu, FeatureMap::relu};
  struct Shape {
    const char* name;
    int64_t lq, lk;
  };
  const Shape shapes[] = {{"ragged", 333, 333}, {"Lq!=Lk", 200, 517}, {"L<block", 45, 37}, {"aligned", 256, 384}};
  int n = 0;
  for (DType dt : dts)
    for (int64_t d : dims)
      for (int bq : blocks)
        for (int bk : blocks)
          for (Variant var : vars) {
            Case c;
            c.dtype = dt;
            c.d = d;
            c.bq = bq;
            c.bk = bk;
            c.variant = var;
            c.fmap = fms[n % 3];
            const Shape& s = shapes[(n / 3 + n) % 4];
            c.shape_name = s.name;
            c.lq = s.lq;
            c.lk = s.lk;
            c.layout.blhd = (n % 2) == 1;
            c.batch = (n % 5 == 0) ? 2 : 1;
            c.heads = 2;
            c.topk = (n % 4 == 0) ? 0.5 : 0.25;
            c.negligible = (var == Variant::complement && n % 3 != 0) ? 0.25 : 0.0;
            c.weight = n % 7 != 3;
            c.bias = n % 5 != 2;
            c.save = n % 6 != 5;
            cases.push_back(c);
            ++n;
          }
  // Invariant 1: topk = 1 is dense attention (W = b = 0); the complement variant's O_l is 0.
  for (Variant var : vars) {
    Case c;
    c.topk = 1.0;
    c.variant = var;
    c.weight = c.bias = false;
    c.shape_name = "dense";
    c.lq = 190;
    c.lk = 250;
    cases.push_back(c);
  }
  // Inference only (no saved state, no W): O = O_s exactly through the fast path.
  {
    Case c;
    c.weight = c.bias = c.save = false;
    c.bq = 128;
    c.shape_name = "inference";
    c.lq = c.lk = 1000;
    c.topk = 0.1;
    cases.push_back(c);
  }
  // int64 offsets: a head stride past 2^31 elements.
  {
    Case c;
    c.bq = 128;
    c.bk = 64;
    c.lq = c.lk = 777;
    c.layout.head_gap = (int64_t{1} << 31) + 1024;
    c.shape_name = "int64";
    cases.push_back(c);
  }
  // Block-map selection paths that the grid above (Nk <= 16) does not reach: T > 32 (the general threshold search;
  // Nk 71 over 3 warp chunks) with a negligible set of 17 (the candidate-list path after excluding T = 35 entries),
  // and Nk = 516 > 512 (two key passes of the score GEMM) with T = 25 and Tn = 51 (general search for the negligible set).
  {
    Case c;
    c.variant = Variant::complement;
    c.lq = 200;
    c.lk = 4500;
    c.topk = 0.5;
    c.negligible = 0.25;
    c.shape_name = "map-T>32";
    cases.push_back(c);
  }
  {
    Case c;
    c.variant = Variant::complement;
    c.bq = 128;
    c.heads = 1;
    c.lq = 130;
    c.lk = 33000;
    c.topk = 0.05;
    c.negligible = 0.1;
    c.weight = c.bias = c.save = false;
    c.shape_name = "map-Nk>512";
    cases.push_back(c);
  }
  return cases;
}

// ---- comparisons ------------------------------------------------------------------------------------------------------

struct Stats {
  double max_err = 0, ref_max = 0;
  bool nan = false;
};

Stats compare(const std::vector<double>& got, const std::vector<double>& ref) {
  Stats s;
  for (size_t e = 0; e < got.size(); ++e) {
    if (std::isnan(got[e]) != std::isnan(ref[e])) s.nan = true;
    if (std::isinf(ref[e]) || std::isnan(ref[e])) {
      if (got[e] != ref[e] && !(std::isnan(got[e]) && std::isnan(ref[e]))) s.nan = true;
      continue;
    }
    s.max_err = std::max(s.max_err, std::fabs(got[e] - ref[e]));
    s.ref_max = std::max(s.ref_max, std::fabs(ref[e]));
  }
  return s;
}

// FlashAttention's rule: err(gpu, oracle) <= 2 err(emulated, oracle) + floor.
bool check_rule(const char* what, const std::vector<double>& gpu, const std::vector<double>& oracle,
                const std::vector<double>& emulated, std::string* log) {
  const Stats g = compare(gpu, oracle), e = compare(emulated, oracle);
  const double floor = 1e-6 + 1e-6 * g.ref_max;
  const bool ok = !g.nan && g.max_err <= 2 * e.max_err + floor;
  char buf[256];
  std::snprintf(buf, sizeof buf, " %s %.2e/%.2e%s", what, g.max_err, e.max_err, ok ? "" : (g.nan ? "(NaN!)" : "(FAIL)"));
  *log += buf;
  return ok;
}

// ---- the block map ----------------------------------------------------------------------------------------------------

struct HostMap {
  sla::BlockMapShape shape;
  std::vector<int32_t> lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index;
};

// The reference problem of case `c` over host inputs and a block map; it points into its arguments, which must
// outlive it.
RefProblem make_ref_problem(const Case& c, const sla::Config& cfg, const std::vector<double>& q,
                            const std::vector<double>& k, const std::vector<double>& v, const std::vector<double>& w,
                            const std::vector<double>& bias, const HostMap& map) {
  RefProblem rp;
  rp.batch = c.batch;
  rp.heads = c.heads;
  rp.lq = c.lq;
  rp.lk = c.lk;
  rp.d = c.d;
  rp.bq = c.bq;
  rp.bk = c.bk;
  rp.variant = c.variant;
  rp.feature_map = c.fmap;
  rp.scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  rp.eps = cfg.eps;
  rp.q = q.data();
  rp.k = k.data();
  rp.v = v.data();
  rp.weight = c.weight ? w.data() : nullptr;
  rp.bias = c.bias ? bias.data() : nullptr;
  rp.lut = map.lut.data();
  rp.count = map.count.data();
  rp.t = map.shape.critical;
  if (map.shape.negligible > 0) {
    rp.negl_lut = map.negl_lut.data();
    rp.negl_count = map.negl_count.data();
    rp.tn = map.shape.negligible;
  }
  return rp;
}

struct DeviceMap {
  DeviceBuffer lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index;
  sla::BlockMap map;
};

sla::TensorView i32_view(void* p, std::initializer_list<int64_t> shape, sla::Device dev) {
  return sla::make_view(p, DType::i32, shape, dev);
}

DeviceMap make_device_map(const sla::BlockMapShape& s) {
  DeviceMap m;
  const int64_t B = s.batch, H = s.heads, nq = s.q_blocks, nk = s.k_blocks, t = s.critical, tn = s.negligible;
  m.lut = DeviceBuffer(B * H * nq * t * 4);
  m.count = DeviceBuffer(B * H * nq * 4);
  m.inv_offset = DeviceBuffer(B * H * (nk + 1) * 4);
  m.inv_index = DeviceBuffer(B * H * nq * t * 4);
  m.map.lut = i32_view(m.lut.ptr, {B, H, nq, t}, sla::Device::cuda);
  m.map.count = i32_view(m.count.ptr, {B, H, nq}, sla::Device::cuda);
  m.map.inv_offset = i32_view(m.inv_offset.ptr, {B, H, nk + 1}, sla::Device::cuda);
  m.map.inv_index = i32_view(m.inv_index.ptr, {B, H, nq * t}, sla::Device::cuda);
  if (tn > 0) {
    m.negl_lut = DeviceBuffer(B * H * nq * tn * 4);
    m.negl_count = DeviceBuffer(B * H * nq * 4);
    m.negl_inv_offset = DeviceBuffer(B * H * (nk + 1) * 4);
    m.negl_inv_index = DeviceBuffer(B * H * nq * tn * 4);
    m.map.negl_lut = i32_view(m.negl_lut.ptr, {B, H, nq, tn}, sla::Device::cuda);
    m.map.negl_count = i32_view(m.negl_count.ptr, {B, H, nq}, sla::Device::cuda);
    m.map.negl_inv_offset = i32_view(m.negl_inv_offset.ptr, {B, H, nk + 1}, sla::Device::cuda);
    m.map.negl_inv_index = i32_view(m.negl_inv_index.ptr, {B, H, nq * tn}, sla::Device::cuda);
  }
  return m;
}

void poison(const DeviceMap& m) {
  for (const DeviceBuffer* b : {&m.lut, &m.count, &m.negl_lut, &m.negl_count, &m.inv_offset, &m.inv_index,
                                &m.negl_inv_offset, &m.negl_inv_index})
    b->poison();
}

HostMap download(const DeviceMap& m, const sla::BlockMapShape& s) {
  HostMap h;
  h.shape = s;
  h.lut = m.lut.download<int32_t>();
  h.count = m.count.download<int32_t>();
  h.negl_lut = m.negl_lut.download<int32_t>();
  h.negl_count = m.negl_count.download<int32_t>();
  h.inv_offset = m.inv_offset.download<int32_t>();
  h.inv_index = m.inv_index.download<int32_t>();
  h.negl_inv_offset = m.negl_inv_offset.download<int32_t>();
  h.negl_inv_index = m.negl_inv_index.download<int32_t>();
  return h;
}

// Host views of a HostMap for the CPU backend.
sla::BlockMap host_views(HostMap& h) {
  const auto& s = h.shape;
  const int64_t B = s.batch, H = s.heads, nq = s.q_blocks, nk = s.k_blocks, t = s.critical, tn = s.negligible;
  h.inv_offset.resize(B * H * (nk + 1));
  h.inv_index.resize(B * H * nq * t);
  sla::BlockMap m;
  m.lut = i32_view(h.lut.data(), {B, H, nq, t}, sla::Device::cpu);
  m.count = i32_view(h.count.data(), {B, H, nq}, sla::Device::cpu);
  m.inv_offset = i32_view(h.inv_offset.data(), {B, H, nk + 1}, sla::Device::cpu);
  m.inv_index = i32_view(h.inv_index.data(), {B, H, nq * t}, sla::Device::cpu);
  if (tn > 0) {
    h.negl_lut.resize(B * H * nq * tn);
    h.negl_count.resize(B * H * nq);
    h.negl_inv_offset.resize(B * H * (nk + 1));
    h.negl_inv_index.resize(B * H * nq * tn);
    m.negl_lut = i32_view(h.negl_lut.data(), {B, H, nq, tn}, sla::Device::cpu);
    m.negl_count = i32_view(h.negl_count.data(), {B, H, nq}, sla::Device::cpu);
    m.negl_inv_offset = i32_view(h.negl_inv_offset.data(), {B, H, nk + 1}, sla::Device::cpu);
    m.negl_inv_index = i32_view(h.negl_inv_index.data(), {B, H, nq * tn}, sla::Device::cpu);
  }
  return m;
}

// GPU and CPU sets of one table must agree, except for swaps between entries whose fp64 scores are within fp32
// rounding of the row's selection threshold. Rows must be sorted, distinct and full.
bool compare_table(const char* what, const std::vector<int32_t>& g_lut, const std::vector<int32_t>& g_cnt,
                   const std::vector<int32_t>& c_lut, const std::vector<int32_t>& c_cnt, int64_t rows, int64_t cap,
                   int64_t nk, const std::vector<double>& scores, std::string* log, int* near_ties) {
  int bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (g_cnt[r] != cap || c_cnt[r] != cap) {
      ++bad;
      continue;
    }
    const int32_t* g = &g_lut[r * cap];
    const int32_t* c = &c_lut[r * cap];
    bool sorted = true;
    for (int64_t e = 0; e < cap; ++e) {
      if (g[e] < 0 || g[e] >= nk || (e > 0 && g[e] <= g[e - 1])) sorted = false;
    }
    if (!sorted) {
      ++bad;
      continue;
    }
    if (std::equal(g, g + cap, c)) continue;
    // Scores of the differing entries must tie (within fp32 rounding) with the boundary.
    const double* s = &scores[r * nk];
    double smax = 0;
    for (int64_t j = 0; j < nk; ++j) smax = std::max(smax, std::fabs(s[j]));
    std::vector<int32_t> only_g, only_c;
    std::set_difference(g, g + cap, c, c + cap, std::back_inserter(only_g));
    std::set_difference(c, c + cap, g, g + cap, std::back_inserter(only_c));
    double lo = 1e300, hi = -1e300;
    for (int32_t j : only_g) lo = std::min(lo, s[j]), hi = std::max(hi, s[j]);
    for (int32_t j : only_c) lo = std::min(lo, s[j]), hi = std::max(hi, s[j]);
    if (hi - lo <= 1e-5 * smax + 1e-9) {
      ++*near_ties;
    } else {
      ++bad;
    }
  }
  if (bad) {
    *log += std::string(" ") + what + ":" + std::to_string(bad) + "-rows-differ(FAIL)";
    return false;
  }
  return true;
}

bool compare_inverse(const char* what, const std::vector<int32_t>& g_off, const std::vector<int32_t>& g_idx,
                     const std::vector<int32_t>& c_off, const std::vector<int32_t>& c_idx, int64_t bh, int64_t nk,
                     int64_t stride, std::string* log) {
  for (int64_t x = 0; x < bh; ++x) {
    for (int64_t j = 0; j <= nk; ++j) {
      if (g_off[x * (nk + 1) + j] != c_off[x * (nk + 1) + j]) {
        *log += std::string(" ") + what + "-offsets(FAIL)";
        return false;
      }
    }
    const int64_t n = c_off[x * (nk + 1) + nk];
    for (int64_t e = 0; e < n; ++e) {
      if (g_idx[x * stride + e] != c_idx[x * stride + e]) {
        *log += std::string(" ") + what + "-index(FAIL)";
        return false;
      }
    }
  }
  return true;
}

// ---- one forward case --------------------------------------------------------------------------------------------------

struct Status {
  bool ok = true;
  void require(const sla::Status& s, const char* what, std::string* log) {
    if (!s.ok()) {
      ok = false;
      *log += std::string(" ") + what + ": " + sla::status_code_name(s.code) + ": " + s.message;
    }
  }
};

bool run_forward_case(const Case& c, uint64_t seed, std::string* log) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const int64_t B = c.batch, H = c.heads, D = c.d;
  const Rounding rnd = rounding_of(c.dtype);
  auto random_tensor = [&](int64_t L, double sd) {
    std::vector<double> x(B * H * L * D);
    for (double& e : x) e = rnd(sd * normal(rng));
    return x;
  };
  std::vector<double> q = random_tensor(c.lq, 1.0), k = random_tensor(c.lk, 1.0), v = random_tensor(c.lk, 1.0);
  std::vector<double> w, bias;
  if (c.weight) {
    w.resize(D * D);
    for (double& e : w) e = static_cast<float>(normal(rng) / std::sqrt(static_cast<double>(D)));
  }
  if (c.bias) {
    bias.resize(D);
    for (double& e : bias) e = static_cast<float>(0.1 * normal(rng));
  }
  const sla::Config cfg = c.config();
  Status st;

  DeviceTensor dq = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
  DeviceTensor dk = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
  DeviceTensor dv = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
  DeviceTensor dout = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
  upload(dq, q);
  upload(dk, k);
  upload(dv, v);

  sla::BlockMapShape shape;
  st.require(sla::block_map_shape(B, H, c.lq, c.lk, cfg, &shape), "block_map_shape", log);
  if (!st.ok) return false;

  // ---- block map: GPU against CPU ----
  DeviceMap gmap = make_device_map(shape);
  poison(gmap);
  size_t ws_bytes = 0;
  st.require(sla::predict_block_map_workspace_size(dq.view, dk.view, cfg, &ws_bytes), "predict workspace", log);
  if (!st.ok) return false;
  DeviceBuffer ws(ws_bytes);
  sla::Exec exec;
  exec.workspace = ws.ptr;
  exec.workspace_bytes = ws_bytes;
  st.require(sla::predict_block_map(dq.view, dk.view, cfg, gmap.map, exec), "predict(cuda)", log);
  CUDA_OK(cudaDeviceSynchronize());
  if (!st.ok) return false;
  HostMap gm = download(gmap, shape);
  // Determinism of the map.
  poison(gmap);
  st.require(sla::predict_block_map(dq.view, dk.view, cfg, gmap.map, exec), "predict(cuda) #2", log);
  CUDA_OK(cudaDeviceSynchronize());
  HostMap gm2 = download(gmap, shape);
  if (gm.lut != gm2.lut || gm.inv_index != gm2.inv_index || gm.negl_lut != gm2.negl_lut) {
    *log += " map-not-deterministic(FAIL)";
    st.ok = false;
  }

  auto host_view = [&](std::vector<double>& x, int64_t L) {
    return sla::make_view(x.data(), DType::f64, {B, H, L, D});
  };
  HostMap cm;
  cm.shape = shape;
  cm.lut.resize(gm.lut.size());
  cm.count.resize(gm.count.size());
  sla::BlockMap cmap = host_views(cm);
  sla::Exec cpu_exec;
  st.require(sla::predict_block_map(host_view(q, c.lq), host_view(k, c.lk), cfg, cmap, cpu_exec), "predict(cpu)", log);
  if (!st.ok) return false;

  const RefProblem rp = make_ref_problem(c, cfg, q, k, v, w, bias, gm);
  const std::vector<double> scores = reference_block_scores(rp);
  const int64_t rows = B * H * shape.q_blocks, nk = shape.k_blocks;
  int near_ties = 0;
  bool map_ok = compare_table("lut", gm.lut, gm.count, cm.lut, cm.count, rows, shape.critical, nk, scores, log,
                              &near_ties);
  if (shape.negligible > 0) {
    map_ok &= compare_table("negl", gm.negl_lut, gm.negl_count, cm.negl_lut, cm.negl_count, rows, shape.negligible,
                            nk, scores, log, &near_ties);
  }
  if (near_ties) *log += " near-ties:" + std::to_string(near_ties);
  // Inverse tables: the CPU's inversion of the GPU's own tables.
  HostMap im = gm;
  sla::BlockMap imap = host_views(im);
  st.require(sla::invert_block_map(imap, cpu_exec), "invert(cpu)", log);
  map_ok &= compare_inverse("inv", gm.inv_offset, gm.inv_index, im.inv_offset, im.inv_index, B * H, nk,
                            shape.q_blocks * shape.critical, log);
  if (shape.negligible > 0) {
    map_ok &= compare_inverse("negl-inv", gm.negl_inv_offset, gm.negl_inv_index, im.negl_inv_offset,
                              im.negl_inv_index, B * H, nk, shape.q_blocks * shape.negligible, log);
  }
  // invert_block_map on the GPU gives the same tables.
  gmap.inv_offset.poison();
  gmap.inv_index.poison();
  gmap.negl_inv_offset.poison();
  gmap.negl_inv_index.poison();
  st.require(sla::invert_block_map(gmap.map, sla::Exec{}), "invert(cuda)", log);
  CUDA_OK(cudaDeviceSynchronize());
  HostMap gi = download(gmap, shape);
  map_ok &= compare_inverse("inv(cuda)", gi.inv_offset, gi.inv_index, im.inv_offset, im.inv_index, B * H, nk,
                            shape.q_blocks * shape.critical, log);
  if (!map_ok) st.ok = false;

  // ---- forward: GPU against the fp64 CPU oracle, with the GPU's map for both ----
  DeviceBuffer d_w = upload_vec(std::vector<float>(w.begin(), w.end()));
  DeviceBuffer d_b = upload_vec(std::vector<float>(bias.begin(), bias.end()));
  DeviceBuffer d_lse(c.save ? B * H * c.lq * 4 : 0), d_olin(c.save ? B * H * c.lq * D * 4 : 0);
  DeviceBuffer d_h(c.save ? B * H * D * D * 4 : 0), d_z(c.save ? B * H * D * 4 : 0);
  sla::ForwardArgs ga;
  ga.q = dq.view;
  ga.k = dk.view;
  ga.v = dv.view;
  if (c.weight) ga.proj_weight = sla::make_view(d_w.ptr, DType::f32, {D, D}, sla::Device::cuda);
  if (c.bias) ga.proj_bias = sla::make_view(d_b.ptr, DType::f32, {D}, sla::Device::cuda);
  ga.map = gmap.map;
  ga.o = dout.view;
  if (c.save) {
    ga.lse = sla::make_view(d_lse.ptr, DType::f32, {B, H, c.lq}, sla::Device::cuda);
    ga.o_lin = sla::make_view(d_olin.ptr, DType::f32, {B, H, c.lq, D}, sla::Device::cuda);
    ga.lin_h = sla::make_view(d_h.ptr, DType::f32, {B, H, D, D}, sla::Device::cuda);
    ga.lin_z = sla::make_view(d_z.ptr, DType::f32, {B, H, D}, sla::Device::cuda);
  }
  size_t fws = 0;
  st.require(sla::forward_workspace_size(ga, cfg, &fws), "forward workspace", log);
  if (!st.ok) return false;
  DeviceBuffer fwsb(fws);
  sla::Exec fexec;
  fexec.workspace = fwsb.ptr;
  fexec.workspace_bytes = fws;
  std::vector<double> o1, o2;
  std::vector<float> lse1, lse2, olin1, olin2, h1, z1;
  for (int run = 0; run < 2; ++run) {
    dout.buf.poison();
    d_lse.poison();
    d_olin.poison();
    d_h.poison();
    d_z.poison();
    st.require(sla::forward(ga, cfg, fexec), "forward(cuda)", log);
    CUDA_OK(cudaDeviceSynchronize());
    if (!st.ok) return false;
    (run == 0 ? o1 : o2) = download(dout);
    (run == 0 ? lse1 : lse2) = d_lse.download<float>();
    (run == 0 ? olin1 : olin2) = d_olin.download<float>();
    if (run == 0) {
      h1 = d_h.download<float>();
      z1 = d_z.download<float>();
    }
  }
  if (std::memcmp(o1.data(), o2.data(), o1.size() * 8) != 0 || lse1 != lse2 ||
      std::memcmp(olin1.data(), olin2.data(), olin1.size() * 4) != 0) {
    *log += " forward-not-deterministic(FAIL)";
    st.ok = false;
  }

  // Oracle: the CPU backend in fp64 through the public API, same LUT.
  HostMap om = gm;
  sla::BlockMap omap = host_views(om);
  std::vector<double> o_ref(B * H * c.lq * D), lse_ref(B * H * c.lq), olin_ref(B * H * c.lq * D), h_ref(B * H * D * D),
      z_ref(B * H * D);
  sla::ForwardArgs ca;
  ca.q = host_view(q, c.lq);
  ca.k = host_view(k, c.lk);
  ca.v = host_view(v, c.lk);
  if (c.weight) ca.proj_weight = sla::make_view(w.data(), DType::f64, {D, D});
  if (c.bias) ca.proj_bias = sla::make_view(bias.data(), DType::f64, {D});
  ca.map = omap;
  ca.o = host_view(o_ref, c.lq);
  ca.lse = sla::make_view(lse_ref.data(), DType::f64, {B, H, c.lq});
  ca.o_lin = host_view(olin_ref, c.lq);
  ca.lin_h = sla::make_view(h_ref.data(), DType::f64, {B, H, D, D});
  ca.lin_z = sla::make_view(z_ref.data(), DType::f64, {B, H, D});
  st.require(sla::forward(ca, cfg, cpu_exec), "forward(cpu f64)", log);
  if (!st.ok) return false;

  // Emulation at the input precision, and the same code without rounding cross-checked against the oracle.
  RefOutputs emu, exact;
  reference_forward(rp, rnd, &emu);
  reference_forward(rp, [](double x) { return x; }, &exact);
  const Stats cross = compare(exact.o, o_ref);
  if (cross.nan || cross.max_err > 1e-9 * std::max(1.0, cross.ref_max)) {
    char buf[96];
    std::snprintf(buf, sizeof buf, " reference-vs-cpu-oracle %.2e(FAIL)", cross.max_err);
    *log += buf;
    st.ok = false;
  }
  bool fwd_ok = check_rule("O", o1, o_ref, emu.o, log);
  if (c.save) {
    fwd_ok &= check_rule("lse", to_double(lse1), lse_ref, emu.lse, log);
    fwd_ok &= check_rule("o_lin", to_double(olin1), olin_ref, emu.o_lin, log);
    // A bf16/fp16 implementation returns H and z in the input dtype: that rounding is the emulated error.
    auto rounded = [&](std::vector<double> x) {
      for (double& e : x) e = rnd(e);
      return x;
    };
    fwd_ok &= check_rule("H", to_double(h1), h_ref, rounded(emu.lin_h), log);
    fwd_ok &= check_rule("z", to_double(z1), z_ref, rounded(emu.lin_z), log);
  }
  if (c.topk == 1.0 && c.variant == Variant::complement && c.save) {
    // Invariant 1: no marginal block, so O_l is exactly 0.
    for (float x : olin1)
      if (x != 0.f) {
        *log += " complement-topk1-o_lin-not-zero(FAIL)";
        fwd_ok = false;
        break;
      }
  }
  return st.ok && fwd_ok;
}

// ---- backward and the host-only reference check ------------------------------------------------------------------
//
// Both use the CPU backend's block map (with inverse tables) so that GPU and CPU differentiate the same mask.

struct GradCase {
  Case c;
  uint64_t seed = 0;
};

struct HostProblem {
  std::vector<double> q, k, v, w, bias, d_o;
  HostMap map;
  RefProblem ref;
};

// Inputs (rounded to the case's dtype), the CPU block map and the RefProblem pointing at them. `hp` must outlive
// the returned views; returns false (with a log entry) on an API error.
bool make_host_problem(const Case& c, uint64_t seed, HostProblem* hp, std::string* log) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const int64_t B = c.batch, H = c.heads, D = c.d;
  const Rounding rnd = rounding_of(c.dtype);
  auto random_tensor = [&](int64_t L) {
    std::vector<double> x(B * H * L * D);
    for (double& e : x) e = rnd(normal(rng));
    return x;
  };
  hp->q = random_tensor(c.lq);
  hp->k = random_tensor(c.lk);
  hp->v = random_tensor(c.lk);
  hp->d_o = random_tensor(c.lq);
  if (c.weight) {
    hp->w.resize(D * D);
    for (double& e : hp->w) e = static_cast<float>(normal(rng) / std::sqrt(static_cast<double>(D)));
  }
  if (c.bias) {
    hp->bias.resize(D);
    for (double& e : hp->bias) e = static_cast<float>(0.1 * normal(rng));
  }
  const sla::Config cfg = c.config();
  sla::BlockMapShape shape;
  sla::Status st = sla::block_map_shape(B, H, c.lq, c.lk, cfg, &shape);
  if (!st.ok()) {
    *log += " block_map_shape: " + st.message;
    return false;
  }
  hp->map.shape = shape;
  hp->map.lut.resize(B * H * shape.q_blocks * shape.critical);
  hp->map.count.resize(B * H * shape.q_blocks);
  sla::BlockMap m = host_views(hp->map);
  st = sla::predict_block_map(sla::make_view(hp->q.data(), DType::f64, {B, H, c.lq, D}),
                              sla::make_view(hp->k.data(), DType::f64, {B, H, c.lk, D}), cfg, m, sla::Exec{});
  if (!st.ok()) {
    *log += " predict(cpu): " + st.message;
    return false;
  }
  hp->ref = make_ref_problem(c, cfg, hp->q, hp->k, hp->v, hp->w, hp->bias, hp->map);
  return true;
}

struct CpuGrads {
  std::vector<double> o, lse, o_lin, h, z, dq, dk, dv, dw, db;
};

// The fp64 oracle: CPU forward (saving state) and backward through the public API.
bool cpu_oracle(const Case& c, HostProblem& hp, CpuGrads* g, std::string* log) {
  const int64_t B = c.batch, H = c.heads, D = c.d;
  const sla::Config cfg = c.config();
  auto view = [&](std::vector<double>& x, std::initializer_list<int64_t> shape) {
    return sla::make_view(x.data(), DType::f64, shape);
  };
  g->o.resize(B * H * c.lq * D);
  g->lse.resize(B * H * c.lq);
  g->o_lin.resize(B * H * c.lq * D);
  g->h.resize(B * H * D * D);
  g->z.resize(B * H * D);
  g->dq.resize(B * H * c.lq * D);
  g->dk.resize(B * H * c.lk * D);
  g->dv.resize(B * H * c.lk * D);
  g->dw.resize(c.weight ? D * D : 0);
  g->db.resize(c.bias ? D : 0);
  sla::ForwardArgs fa;
  fa.q = view(hp.q, {B, H, c.lq, D});
  fa.k = view(hp.k, {B, H, c.lk, D});
  fa.v = view(hp.v, {B, H, c.lk, D});
  if (c.weight) fa.proj_weight = view(hp.w, {D, D});
  if (c.bias) fa.proj_bias = view(hp.bias, {D});
  fa.map = host_views(hp.map);
  fa.o = view(g->o, {B, H, c.lq, D});
  fa.lse = view(g->lse, {B, H, c.lq});
  fa.o_lin = view(g->o_lin, {B, H, c.lq, D});
  fa.lin_h = view(g->h, {B, H, D, D});
  fa.lin_z = view(g->z, {B, H, D});
  sla::Status st = sla::forward(fa, cfg, sla::Exec{});
  if (!st.ok()) {
    *log += " forward(cpu f64): " + st.message;
    return false;
  }
  sla::BackwardArgs ba;
  ba.q = fa.q;
  ba.k = fa.k;
  ba.v = fa.v;
  ba.proj_weight = fa.proj_weight;
  ba.proj_bias = fa.proj_bias;
  ba.map = fa.map;
  ba.o = fa.o;
  ba.d_o = view(hp.d_o, {B, H, c.lq, D});
  ba.lse = fa.lse;
  ba.o_lin = fa.o_lin;
  ba.lin_h = fa.lin_h;
  ba.lin_z = fa.lin_z;
  ba.dq = view(g->dq, {B, H, c.lq, D});
  ba.dk = view(g->dk, {B, H, c.lk, D});
  ba.dv = view(g->dv, {B, H, c.lk, D});
  if (c.weight) ba.d_proj_weight = view(g->dw, {D, D});
  if (c.bias) ba.d_proj_bias = view(g->db, {D});
  st = sla::backward(ba, cfg, sla::Exec{});
  if (!st.ok()) {
    *log += " backward(cpu f64): " + st.message;
    return false;
  }
  return true;
}

bool close_exact(const char* what, const std::vector<double>& a, const std::vector<double>& b, std::string* log) {
  const Stats s = compare(a, b);
  const bool ok = !s.nan && s.max_err <= 1e-9 * std::max(1.0, s.ref_max);
  char buf[128];
  std::snprintf(buf, sizeof buf, " %s %.1e%s", what, s.max_err, ok ? "" : "(FAIL)");
  *log += buf;
  return ok;
}

// --mode ref (no GPU needed): the test's own fp64 reference against the CPU backend, forward and backward.
bool run_reference_case(const Case& c, uint64_t seed, std::string* log) {
  HostProblem hp;
  CpuGrads g;
  if (!make_host_problem(c, seed, &hp, log) || !cpu_oracle(c, hp, &g, log)) return false;
  const Rounding exact = [](double x) { return x; };
  RefOutputs fo;
  reference_forward(hp.ref, exact, &fo);
  RefGradients go;
  reference_backward(hp.ref, hp.d_o, exact, &go);
  bool ok = close_exact("O", fo.o, g.o, log);
  ok &= close_exact("lse", fo.lse, g.lse, log);
  ok &= close_exact("o_lin", fo.o_lin, g.o_lin, log);
  ok &= close_exact("dq", go.dq, g.dq, log);
  ok &= close_exact("dk", go.dk, g.dk, log);
  ok &= close_exact("dv", go.dv, g.dv, log);
  if (c.weight) ok &= close_exact("dW", go.dw, g.dw, log);
  if (c.bias) ok &= close_exact("db", go.db, g.db, log);
  return ok;
}

// --mode bwd: GPU forward (saving state) and backward against the fp64 oracle, FlashAttention's 2x rule against
// the emulated-precision reference, poisoned outputs, two runs bitwise equal. A backend answering
// StatusCode::unsupported makes the case a skip, not a failure.
int run_backward_case(const Case& c, uint64_t seed, std::string* log) {
  HostProblem hp;
  CpuGrads g;
  if (!make_host_problem(c, seed, &hp, log) || !cpu_oracle(c, hp, &g, log)) return 1;
  const int64_t B = c.batch, H = c.heads, D = c.d;
  const sla::Config cfg = c.config();
  DeviceTensor dq_in = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
  DeviceTensor dk_in = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
  DeviceTensor dv_in = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
  DeviceTensor d_out = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
  DeviceTensor d_do = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
  DeviceTensor d_dq = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
  DeviceTensor d_dk = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
  DeviceTensor d_dv = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
  upload(dq_in, hp.q);
  upload(dk_in, hp.k);
  upload(dv_in, hp.v);
  upload(d_do, hp.d_o);
  DeviceMap dm = make_device_map(hp.map.shape);
  auto put = [](const DeviceBuffer& d, const std::vector<int32_t>& h) {
    if (d.bytes) CUDA_OK(cudaMemcpy(d.ptr, h.data(), d.bytes, cudaMemcpyHostToDevice));
  };
  put(dm.lut, hp.map.lut);
  put(dm.count, hp.map.count);
  put(dm.negl_lut, hp.map.negl_lut);
  put(dm.negl_count, hp.map.negl_count);
  put(dm.inv_offset, hp.map.inv_offset);
  put(dm.inv_index, hp.map.inv_index);
  put(dm.negl_inv_offset, hp.map.negl_inv_offset);
  put(dm.negl_inv_index, hp.map.negl_inv_index);
  DeviceBuffer d_w = upload_vec(std::vector<float>(hp.w.begin(), hp.w.end()));
  DeviceBuffer d_b = upload_vec(std::vector<float>(hp.bias.begin(), hp.bias.end()));
  DeviceBuffer d_lse(B * H * c.lq * 4), d_olin(B * H * c.lq * D * 4), d_h(B * H * D * D * 4), d_z(B * H * D * 4);
  DeviceBuffer d_dw(c.weight ? D * D * 4 : 0), d_db(c.bias ? D * 4 : 0);
  sla::ForwardArgs fa;
  fa.q = dq_in.view;
  fa.k = dk_in.view;
  fa.v = dv_in.view;
  if (c.weight) fa.proj_weight = sla::make_view(d_w.ptr, DType::f32, {D, D}, sla::Device::cuda);
  if (c.bias) fa.proj_bias = sla::make_view(d_b.ptr, DType::f32, {D}, sla::Device::cuda);
  fa.map = dm.map;
  fa.o = d_out.view;
  fa.lse = sla::make_view(d_lse.ptr, DType::f32, {B, H, c.lq}, sla::Device::cuda);
  fa.o_lin = sla::make_view(d_olin.ptr, DType::f32, {B, H, c.lq, D}, sla::Device::cuda);
  fa.lin_h = sla::make_view(d_h.ptr, DType::f32, {B, H, D, D}, sla::Device::cuda);
  fa.lin_z = sla::make_view(d_z.ptr, DType::f32, {B, H, D}, sla::Device::cuda);
  sla::BackwardArgs ba;
  ba.q = fa.q;
  ba.k = fa.k;
  ba.v = fa.v;
  ba.proj_weight = fa.proj_weight;
  ba.proj_bias = fa.proj_bias;
  ba.map = fa.map;
  ba.o = fa.o;
  ba.d_o = d_do.view;
  ba.lse = fa.lse;
  ba.o_lin = fa.o_lin;
  ba.lin_h = fa.lin_h;
  ba.lin_z = fa.lin_z;
  ba.dq = d_dq.view;
  ba.dk = d_dk.view;
  ba.dv = d_dv.view;
  if (c.weight) ba.d_proj_weight = sla::make_view(d_dw.ptr, DType::f32, {D, D}, sla::Device::cuda);
  if (c.bias) ba.d_proj_bias = sla::make_view(d_db.ptr, DType::f32, {D}, sla::Device::cuda);
  size_t fws = 0, bws = 0;
  sla::Status st = sla::forward_workspace_size(fa, cfg, &fws);
  if (st.ok()) st = sla::backward_workspace_size(ba, cfg, &bws);
  if (st.code == sla::StatusCode::unsupported) {
    *log += " skipped: " + st.message;
    return kSkip;
  }
  if (!st.ok()) {
    *log += " workspace: " + st.message;
    return 1;
  }
  DeviceBuffer ws(std::max(fws, bws));
  sla::Exec exec;
  exec.workspace = ws.ptr;
  exec.workspace_bytes = ws.bytes;
  std::vector<double> grads[2][3];
  std::vector<float> dw_run[2], db_run[2];
  for (int run = 0; run < 2; ++run) {
    for (const DeviceBuffer* b : {&d_out.buf, &d_lse, &d_olin, &d_h, &d_z, &d_dq.buf, &d_dk.buf, &d_dv.buf, &d_dw,
                                  &d_db})
      b->poison();
    st = sla::forward(fa, cfg, exec);
    if (st.ok()) st = sla::backward(ba, cfg, exec);
    CUDA_OK(cudaDeviceSynchronize());
    if (st.code == sla::StatusCode::unsupported) {
      *log += " skipped: " + st.message;
      return kSkip;
    }
    if (!st.ok()) {
      *log += std::string(" ") + sla::status_code_name(st.code) + ": " + st.message;
      return 1;
    }
    grads[run][0] = download(d_dq);
    grads[run][1] = download(d_dk);
    grads[run][2] = download(d_dv);
    dw_run[run] = d_dw.download<float>();
    db_run[run] = d_db.download<float>();
  }
  bool ok = true;
  for (int e = 0; e < 3; ++e) {
    if (std::memcmp(grads[0][e].data(), grads[1][e].data(), grads[0][e].size() * 8) != 0) ok = false;
  }
  if (dw_run[0] != dw_run[1] || db_run[0] != db_run[1]) ok = false;
  if (!ok) *log += " backward-not-deterministic(FAIL)";
  RefGradients emu;
  reference_backward(hp.ref, hp.d_o, rounding_of(c.dtype), &emu);
  ok &= check_rule("dq", grads[0][0], g.dq, emu.dq, log);
  ok &= check_rule("dk", grads[0][1], g.dk, emu.dk, log);
  ok &= check_rule("dv", grads[0][2], g.dv, emu.dv, log);
  if (c.weight) ok &= check_rule("dW", to_double(dw_run[0]), g.dw, emu.dw, log);
  if (c.bias) ok &= check_rule("db", to_double(db_run[0]), g.db, emu.db, log);
  return ok ? 0 : 1;
}

// The gradient cases: the forward grid without the int64 case (its fp64 backward would take minutes on the CPU).
std::vector<Case> gradient_cases() {
  std::vector<Case> cases;
  for (const Case& c : forward_cases()) {
    if (c.layout.head_gap != 0 || c.lq * c.lk > 400000) continue;
    cases.push_back(c);
  }
  return cases;
}

// ---- perf ------------------------------------------------------------------------------------------------------------

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

int run_perf(uint64_t seed) {
  const int64_t B = 1, H = 12, L = 32760, D = 128;
  sla::Config cfg;
  cfg.block_q = 128;
  cfg.block_k = 64;
  cfg.topk = 0.05;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  Layout lay;
  DeviceTensor q = make_device_tensor(DType::bf16, B, H, L, D, lay), k = make_device_tensor(DType::bf16, B, H, L, D, lay),
               v = make_device_tensor(DType::bf16, B, H, L, D, lay), o = make_device_tensor(DType::bf16, B, H, L, D, lay);
  {
    std::vector<uint16_t> h(B * H * L * D);
    for (DeviceTensor* t : {&q, &k, &v}) {
      for (auto& e : h) e = sla::cpu::to_bf16(normal(rng)).bits;
      CUDA_OK(cudaMemcpy(t->view.data, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    }
  }
  std::vector<float> w(D * D), b(D);
  for (auto& e : w) e = normal(rng) / std::sqrt(static_cast<float>(D));
  for (auto& e : b) e = 0.1f * normal(rng);
  DeviceBuffer d_w = upload_vec(w), d_b = upload_vec(b);
  sla::BlockMapShape shape;
  sla::block_map_shape(B, H, L, L, cfg, &shape);
  DeviceMap map = make_device_map(shape);
  sla::BlockMap fwd_map = map.map;  // inference: no inverse tables
  fwd_map.inv_offset = sla::TensorView{};
  fwd_map.inv_index = sla::TensorView{};
  size_t pws = 0, fws = 0;
  sla::predict_block_map_workspace_size(q.view, k.view, cfg, &pws);
  sla::ForwardArgs a;
  a.q = q.view;
  a.k = k.view;
  a.v = v.view;
  a.proj_weight = sla::make_view(d_w.ptr, DType::f32, {D, D}, sla::Device::cuda);
  a.proj_bias = sla::make_view(d_b.ptr, DType::f32, {D}, sla::Device::cuda);
  a.map = fwd_map;
  a.o = o.view;
  DeviceBuffer d_lse(B * H * L * 4), d_olin(B * H * L * D * 4), d_h(B * H * D * D * 4), d_z(B * H * D * 4);
  sla::ForwardArgs a_save = a;
  a_save.lse = sla::make_view(d_lse.ptr, DType::f32, {B, H, L}, sla::Device::cuda);
  a_save.o_lin = sla::make_view(d_olin.ptr, DType::f32, {B, H, L, D}, sla::Device::cuda);
  a_save.lin_h = sla::make_view(d_h.ptr, DType::f32, {B, H, D, D}, sla::Device::cuda);
  a_save.lin_z = sla::make_view(d_z.ptr, DType::f32, {B, H, D}, sla::Device::cuda);
  sla::forward_workspace_size(a_save, cfg, &fws);
  // Training: the block map with inverse tables, the forward saving state, then the backward with dW and db.
  DeviceTensor d_do = make_device_tensor(DType::bf16, B, H, L, D, lay), dq = make_device_tensor(DType::bf16, B, H, L, D, lay),
               dk = make_device_tensor(DType::bf16, B, H, L, D, lay), dv = make_device_tensor(DType::bf16, B, H, L, D, lay);
  {
    std::vector<uint16_t> h(B * H * L * D);
    for (auto& e : h) e = sla::cpu::to_bf16(normal(rng)).bits;
    CUDA_OK(cudaMemcpy(d_do.view.data, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  }
  DeviceBuffer d_dw(D * D * 4), d_db(D * 4);
  sla::ForwardArgs a_train = a_save;
  a_train.map = map.map;
  sla::BackwardArgs ba;
  ba.q = q.view;
  ba.k = k.view;
  ba.v = v.view;
  ba.proj_weight = a.proj_weight;
  ba.proj_bias = a.proj_bias;
  ba.map = map.map;
  ba.o = o.view;
  ba.d_o = d_do.view;
  ba.lse = a_save.lse;
  ba.o_lin = a_save.o_lin;
  ba.lin_h = a_save.lin_h;
  ba.lin_z = a_save.lin_z;
  ba.dq = dq.view;
  ba.dk = dk.view;
  ba.dv = dv.view;
  ba.d_proj_weight = sla::make_view(d_dw.ptr, DType::f32, {D, D}, sla::Device::cuda);
  ba.d_proj_bias = sla::make_view(d_db.ptr, DType::f32, {D}, sla::Device::cuda);
  size_t bws = 0;
  const sla::Status sb = sla::backward_workspace_size(ba, cfg, &bws);
  const bool time_bwd = sb.ok();
  if (!time_bwd) std::printf("perf: backward not timed: %s\n", sb.message.c_str());
  DeviceBuffer ws(std::max({pws, fws, bws}));
  sla::Exec exec;
  exec.workspace = ws.ptr;
  exec.workspace_bytes = ws.bytes;
  cudaEvent_t e0, e1, e2;
  CUDA_OK(cudaEventCreate(&e0));
  CUDA_OK(cudaEventCreate(&e1));
  CUDA_OK(cudaEventCreate(&e2));
  sla::BlockMap predict_map = fwd_map;
  sla::ForwardArgs a_sparse = a;  // O = O_s: the main loop alone (no linear state, no projection)
  a_sparse.proj_weight = sla::TensorView{};
  a_sparse.proj_bias = sla::TensorView{};
  std::vector<double> t_map, t_fwd, t_fwd_save, t_sparse, t_train_fwd, t_bwd, t_step;
  for (int it = 0; it < 25; ++it) {
    CUDA_OK(cudaEventRecord(e0));
    sla::Status s1 = sla::predict_block_map(q.view, k.view, cfg, predict_map, exec);
    CUDA_OK(cudaEventRecord(e1));
    sla::Status s2 = sla::forward(a, cfg, exec);
    CUDA_OK(cudaEventRecord(e2));
    CUDA_OK(cudaEventSynchronize(e2));
    if (!s1.ok() || !s2.ok()) {
      std::printf("perf: %s %s\n", s1.message.c_str(), s2.message.c_str());
      return 1;
    }
    float m1, m2;
    CUDA_OK(cudaEventElapsedTime(&m1, e0, e1));
    CUDA_OK(cudaEventElapsedTime(&m2, e1, e2));
    if (it >= 5) {
      t_map.push_back(m1);
      t_fwd.push_back(m2);
    }
    CUDA_OK(cudaEventRecord(e0));
    sla::Status s3 = sla::forward(a_save, cfg, exec);
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    if (!s3.ok()) {
      std::printf("perf: %s\n", s3.message.c_str());
      return 1;
    }
    CUDA_OK(cudaEventElapsedTime(&m1, e0, e1));
    if (it >= 5) t_fwd_save.push_back(m1);
    CUDA_OK(cudaEventRecord(e0));
    sla::Status s4 = sla::forward(a_sparse, cfg, exec);
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    if (!s4.ok()) {
      std::printf("perf: %s\n", s4.message.c_str());
      return 1;
    }
    CUDA_OK(cudaEventElapsedTime(&m1, e0, e1));
    if (it >= 5) t_sparse.push_back(m1);
    if (!time_bwd) continue;
    // One training step: map (with inverse tables) | forward saving state | backward.
    CUDA_OK(cudaEventRecord(e0));
    sla::Status s5 = sla::predict_block_map(q.view, k.view, cfg, map.map, exec);
    if (s5.ok()) s5 = sla::forward(a_train, cfg, exec);
    CUDA_OK(cudaEventRecord(e1));
    if (s5.ok()) s5 = sla::backward(ba, cfg, exec);
    CUDA_OK(cudaEventRecord(e2));
    CUDA_OK(cudaEventSynchronize(e2));
    if (!s5.ok()) {
      std::printf("perf: training step: %s\n", s5.message.c_str());
      return 1;
    }
    float mt1, mt2;
    CUDA_OK(cudaEventElapsedTime(&mt1, e0, e1));
    CUDA_OK(cudaEventElapsedTime(&mt2, e1, e2));
    if (it >= 5) {
      t_train_fwd.push_back(mt1);
      t_bwd.push_back(mt2);
      t_step.push_back(mt1 + mt2);
    }
  }
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  const double mm = median(t_map), mf = median(t_fwd), ms = median(t_fwd_save);
  std::printf("perf W1 on %s: block map %.3f ms, forward (W, b, inference) %.3f ms, total %.3f ms; "
              "forward with saved state %.3f ms (total %.3f ms); workspace %.1f MB\n",
              prop.name, mm, mf, mm + mf, ms, mm + ms, std::max(pws, fws) / 1e6);
  std::printf("sparse branch alone (no W, b): %.3f ms = %.0f TFLOPS on the 322 GFLOP of Q K^T and P V\n",
              median(t_sparse), 4.0 * H * L * (shape.critical * cfg.block_k) * D / (median(t_sparse) * 1e9));
  if (time_bwd) {
    std::printf("training step: map with inverse tables + forward with saved state %.3f ms, backward (dW, db) %.3f ms, "
                "step %.3f ms\n",
                median(t_train_fwd), median(t_bwd), median(t_step));
    std::printf("SLA_PERF_STEP_MS %.4f\n", median(t_step));
  }
  std::printf("SLA_PERF_TOTAL_MS %.4f\n", mm + mf);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = "fwd", filter;
  uint64_t seed = 12345;
  bool list = false;
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--mode" && a + 1 < argc) {
      mode = argv[++a];
    } else if (arg == "--filter" && a + 1 < argc) {
      filter = argv[++a];
    } else if (arg == "--seed" && a + 1 < argc) {
      seed = std::strtoull(argv[++a], nullptr, 10);
    } else if (arg == "--list") {
      list = true;
    } else {
      std::fprintf(stderr, "usage: %s [--mode fwd|bwd|perf|ref] [--filter SUBSTRING] [--seed N] [--list]\n", argv[0]);
      return 2;
    }
  }
  if (list) {
    for (const Case& c : forward_cases()) std::printf("%s\n", c.name().c_str());
    return 0;
  }
  if (mode == "ref") {  // host only: runs without a GPU
    int passed = 0, failed = 0, n = 0;
    for (const Case& c : gradient_cases()) {
      std::string name = c.name();
      name.replace(0, 3, "ref");
      if (!filter.empty() && name.find(filter) == std::string::npos) continue;
      std::string log;
      const bool ok = run_reference_case(c, seed + 7919 * static_cast<uint64_t>(n++), &log);
      std::printf("%s %s:%s\n", ok ? "OK  " : "FAIL", name.c_str(), log.c_str());
      std::fflush(stdout);
      (ok ? passed : failed)++;
    }
    std::printf("%d/%d reference cases passed\n", passed, passed + failed);
    return failed == 0 ? 0 : 1;
  }
  if (!sla::cuda_available()) {
    std::printf("skipped: no CUDA device\n");
    return kSkip;
  }
  std::printf("%s\n", sla::build_info().c_str());
  if (mode == "perf") return run_perf(seed);
  if (mode == "bwd") {
    int passed = 0, failed = 0, skipped = 0, n = 0;
    for (const Case& c : gradient_cases()) {
      std::string name = c.name();
      name.replace(0, 3, "bwd");
      if (!filter.empty() && name.find(filter) == std::string::npos) continue;
      std::string log;
      const int rc = run_backward_case(c, seed + 7919 * static_cast<uint64_t>(n++), &log);
      std::printf("%s %s:%s\n", rc == 0 ? "OK  " : (rc == kSkip ? "SKIP" : "FAIL"), name.c_str(), log.c_str());
      std::fflush(stdout);
      (rc == 0 ? passed : (rc == kSkip ? skipped : failed))++;
    }
    std::printf("%d/%d backward cases passed, %d skipped\n", passed, passed + failed + skipped, skipped);
    if (failed) return 1;
    return passed == 0 && skipped > 0 ? kSkip : 0;
  }
  if (mode != "fwd") {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  int passed = 0, failed = 0, n = 0;
  for (const Case& c : forward_cases()) {
    const std::string name = c.name();
    if (!filter.empty() && name.find(filter) == std::string::npos) continue;
    std::string log;
    const bool ok = run_forward_case(c, seed + 7919 * static_cast<uint64_t>(n++), &log);
    std::printf("%s %s:%s\n", ok ? "OK  " : "FAIL", name.c_str(), log.c_str());
    std::fflush(stdout);
    (ok ? passed : failed)++;
  }
  std::printf("%d/%d cases passed\n", passed, passed + failed);
  return failed == 0 ? 0 : 1;
}
