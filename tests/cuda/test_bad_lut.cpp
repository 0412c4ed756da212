// Malformed block maps and non-finite inputs on the CUDA backend (include/sla/sla.h, check_block_map; map_check.h).
//
//   test_bad_lut [--dtype bf16|f16] [--hdim 64|128]
//
// Small enough to run under compute-sanitizer memcheck: nothing any case passes may make a kernel read or write
// out of bounds. Per case:
// - bad LUT tables (count above T or below 0, entries out of [0, Nk), a repeated entry, a negligible block that is
//   also critical, negligible counts/entries out of range), put into head 1 only: every call still returns ok (the
//   check runs on the device, no synchronisation), head 1's O, LSE, O_l and dQ, dK, dV are all NaN, dW and db are
//   NaN (they sum over heads), and head 0's outputs are bitwise those of the good map;
// - invert_block_map on each bad LUT returns ok and stays in bounds (it skips and clamps);
// - a permuted LUT row is accepted (finite outputs); garbage caller inverse tables are never read (the backward
//   rebuilds them): gradients bitwise those of the good map;
// - NaN or Inf in one element of q or k (topk = 1): the rows that attend it are NaN in O and dQ (not 0), the other
//   head stays finite.
// Run it once per forward mainloop: SLA_CUDA_MAINLOOP=mma selects mma.sync on Hopper (the default there is wgmma).
// Exit status: 0 pass, 1 failure, 77 skipped (no CUDA device, or the dtype / head dim not built).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cpu/half_float.h"
#include "sla/sla.h"

namespace {

using sla::DType;
using sla::TensorView;

constexpr int kSkip = 77;

#define CUDA_OK(expr)                                                                             \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

struct Buffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit Buffer(size_t n = 0) : bytes(n) {
    if (n) CUDA_OK(cudaMalloc(&ptr, n));
    if (n) CUDA_OK(cudaMemset(ptr, 0xFF, n));  // NaN in every float type, -1 in int32: unwritten output shows
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (ptr) cudaFree(ptr);
  }
  template <class T>
  std::vector<T> get() const {
    std::vector<T> h(bytes / sizeof(T));
    if (bytes) CUDA_OK(cudaMemcpy(h.data(), ptr, bytes, cudaMemcpyDeviceToHost));
    return h;
  }
  template <class T>
  void put(const std::vector<T>& h) const {
    CUDA_OK(cudaMemcpy(ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
};

// The problem: B = 1, H = 2 (head 0 stays good, head 1 gets the bad tables), Lq = 200, Lk = 300 (ragged tails).
constexpr int64_t kB = 1, kH = 2, kLq = 200, kLk = 300;

struct Setup {
  DType dt = DType::bf16;
  int64_t d = 128;
  sla::Config cfg;
  sla::BlockMapShape s;
};

TensorView dview(void* p, DType dt, std::initializer_list<int64_t> shape) {
  return sla::make_view(p, dt, shape, sla::Device::cuda, 0);
}

float to_float(uint16_t bits, DType dt) {
  return dt == DType::bf16 ? sla::cpu::to_float(sla::cpu::bf16{bits}) : sla::cpu::to_float(sla::cpu::f16{bits});
}
uint16_t from_float(float x, DType dt) {
  return dt == DType::bf16 ? sla::cpu::to_bf16(x).bits : sla::cpu::to_f16(x).bits;
}

// Inputs on the device, and the block-map tables.
struct Inputs {
  Buffer q, k, v, w, b;
  Buffer lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index;
  Inputs(const Setup& st)
      : q(kB * kH * kLq * st.d * 2),
        k(kB * kH * kLk * st.d * 2),
        v(kB * kH * kLk * st.d * 2),
        w(st.d * st.d * 4),
        b(st.d * 4),
        lut(kB * kH * st.s.q_blocks * st.s.critical * 4),
        count(kB * kH * st.s.q_blocks * 4),
        negl_lut(kB * kH * st.s.q_blocks * st.s.negligible * 4),
        negl_count(st.s.negligible ? kB * kH * st.s.q_blocks * 4 : 0),
        inv_offset(kB * kH * (st.s.k_blocks + 1) * 4),
        inv_index(kB * kH * st.s.q_blocks * st.s.critical * 4),
        negl_inv_offset(st.s.negligible ? kB * kH * (st.s.k_blocks + 1) * 4 : 0),
        negl_inv_index(kB * kH * st.s.q_blocks * st.s.negligible * 4) {}

  sla::BlockMap map(const Setup& st) const {
    const int64_t nq = st.s.q_blocks, nk = st.s.k_blocks, t = st.s.critical, tn = st.s.negligible;
    sla::BlockMap m;
    m.lut = dview(lut.ptr, DType::i32, {kB, kH, nq, t});
    m.count = dview(count.ptr, DType::i32, {kB, kH, nq});
    m.inv_offset = dview(inv_offset.ptr, DType::i32, {kB, kH, nk + 1});
    m.inv_index = dview(inv_index.ptr, DType::i32, {kB, kH, nq * t});
    if (tn > 0) {
      m.negl_lut = dview(negl_lut.ptr, DType::i32, {kB, kH, nq, tn});
      m.negl_count = dview(negl_count.ptr, DType::i32, {kB, kH, nq});
      m.negl_inv_offset = dview(negl_inv_offset.ptr, DType::i32, {kB, kH, nk + 1});
      m.negl_inv_index = dview(negl_inv_index.ptr, DType::i32, {kB, kH, nq * tn});
    }
    return m;
  }
};

// Every output of one forward + backward, on the host.
struct Outputs {
  std::vector<uint16_t> o, dq, dk, dv;
  std::vector<float> lse, o_lin, dw, db;
};

bool check(const sla::Status& s, const char* what, std::string* err) {
  if (s.ok()) return true;
  *err = std::string(what) + ": " + s.message;
  return false;
}

// Forward (saving state) then backward with dO = 1, through the public API, on the legacy stream.
bool run(const Setup& st, const Inputs& in, Outputs* out, std::string* err) {
  const int64_t d = st.d;
  const DType dt = st.dt;
  Buffer o(kB * kH * kLq * d * 2), lse(kB * kH * kLq * 4), o_lin(kB * kH * kLq * d * 4), lin_h(kB * kH * d * d * 4),
      lin_z(kB * kH * d * 4), d_o(kB * kH * kLq * d * 2), dq(kB * kH * kLq * d * 2), dk(kB * kH * kLk * d * 2),
      dv(kB * kH * kLk * d * 2), dw(d * d * 4), db(d * 4);
  d_o.put(std::vector<uint16_t>(kB * kH * kLq * d, from_float(1.0f, dt)));
  sla::ForwardArgs fa;
  fa.q = dview(in.q.ptr, dt, {kB, kH, kLq, d});
  fa.k = dview(in.k.ptr, dt, {kB, kH, kLk, d});
  fa.v = dview(in.v.ptr, dt, {kB, kH, kLk, d});
  fa.proj_weight = dview(in.w.ptr, DType::f32, {d, d});
  fa.proj_bias = dview(in.b.ptr, DType::f32, {d});
  fa.map = in.map(st);
  fa.o = dview(o.ptr, dt, {kB, kH, kLq, d});
  fa.lse = dview(lse.ptr, DType::f32, {kB, kH, kLq});
  fa.o_lin = dview(o_lin.ptr, DType::f32, {kB, kH, kLq, d});
  fa.lin_h = dview(lin_h.ptr, DType::f32, {kB, kH, d, d});
  fa.lin_z = dview(lin_z.ptr, DType::f32, {kB, kH, d});
  size_t bytes = 0;
  if (!check(sla::forward_workspace_size(fa, st.cfg, &bytes), "forward_workspace_size", err)) return false;
  Buffer ws(bytes);
  sla::Exec ex;
  ex.workspace = ws.ptr;
  ex.workspace_bytes = bytes;
  if (!check(sla::forward(fa, st.cfg, ex), "forward", err)) return false;

  sla::BackwardArgs ba;
  ba.q = fa.q;
  ba.k = fa.k;
  ba.v = fa.v;
  ba.proj_weight = fa.proj_weight;
  ba.proj_bias = fa.proj_bias;
  ba.map = fa.map;
  ba.o = fa.o;
  ba.d_o = dview(d_o.ptr, dt, {kB, kH, kLq, d});
  ba.lse = fa.lse;
  ba.o_lin = fa.o_lin;
  ba.lin_h = fa.lin_h;
  ba.lin_z = fa.lin_z;
  ba.dq = dview(dq.ptr, dt, {kB, kH, kLq, d});
  ba.dk = dview(dk.ptr, dt, {kB, kH, kLk, d});
  ba.dv = dview(dv.ptr, dt, {kB, kH, kLk, d});
  ba.d_proj_weight = dview(dw.ptr, DType::f32, {d, d});
  ba.d_proj_bias = dview(db.ptr, DType::f32, {d});
  if (!check(sla::backward_workspace_size(ba, st.cfg, &bytes), "backward_workspace_size", err)) return false;
  Buffer bws(bytes);
  ex.workspace = bws.ptr;
  ex.workspace_bytes = bytes;
  if (!check(sla::backward(ba, st.cfg, ex), "backward", err)) return false;
  CUDA_OK(cudaDeviceSynchronize());
  out->o = o.get<uint16_t>();
  out->dq = dq.get<uint16_t>();
  out->dk = dk.get<uint16_t>();
  out->dv = dv.get<uint16_t>();
  out->lse = lse.get<float>();
  out->o_lin = o_lin.get<float>();
  out->dw = dw.get<float>();
  out->db = db.get<float>();
  return true;
}

// Elements [head * per_head, (head + 1) * per_head) of a (B = 1, H, ...) tensor.
template <class T>
std::vector<T> head_of(const std::vector<T>& v, int64_t head) {
  const int64_t per = static_cast<int64_t>(v.size()) / kH;
  return std::vector<T>(v.begin() + head * per, v.begin() + (head + 1) * per);
}

bool all_nan16(const std::vector<uint16_t>& v, DType dt) {
  for (uint16_t x : v)
    if (!std::isnan(to_float(x, dt))) return false;
  return true;
}
bool all_finite16(const std::vector<uint16_t>& v, DType dt) {
  for (uint16_t x : v)
    if (!std::isfinite(to_float(x, dt))) return false;
  return true;
}
bool all_nan32(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isnan(x)) return false;
  return true;
}

// Head 1 poisoned, head 0 bitwise as in the good run.
std::string expect_head1_nan(const Setup& st, const Outputs& good, const Outputs& r) {
  const DType dt = st.dt;
  const struct {
    const char* name;
    const std::vector<uint16_t>& g;
    const std::vector<uint16_t>& x;
  } halves[] = {{"o", good.o, r.o}, {"dq", good.dq, r.dq}, {"dk", good.dk, r.dk}, {"dv", good.dv, r.dv}};
  for (const auto& t : halves) {
    if (!all_nan16(head_of(t.x, 1), dt)) return std::string(t.name) + ": head 1 not all NaN";
    if (head_of(t.x, 0) != head_of(t.g, 0)) return std::string(t.name) + ": head 0 differs from the good map's";
  }
  if (!all_nan32(head_of(r.lse, 1))) return "lse: head 1 not all NaN";
  if (!all_nan32(head_of(r.o_lin, 1))) return "o_lin: head 1 not all NaN";
  if (head_of(r.lse, 0) != head_of(good.lse, 0)) return "lse: head 0 differs";
  if (!all_nan32(r.dw) || !all_nan32(r.db)) return "d_proj_weight / d_proj_bias: not all NaN";
  return {};
}

struct HostMap {
  std::vector<int32_t> lut, count, negl_lut, negl_count, inv_offset, inv_index;
};

HostMap download(const Inputs& in) {
  return {in.lut.get<int32_t>(),        in.count.get<int32_t>(),      in.negl_lut.get<int32_t>(),
          in.negl_count.get<int32_t>(), in.inv_offset.get<int32_t>(), in.inv_index.get<int32_t>()};
}
void upload(const Inputs& in, const HostMap& m) {
  in.lut.put(m.lut);
  in.count.put(m.count);
  if (!m.negl_lut.empty()) in.negl_lut.put(m.negl_lut);
  if (!m.negl_count.empty()) in.negl_count.put(m.negl_count);
  in.inv_offset.put(m.inv_offset);
  in.inv_index.put(m.inv_index);
}

int failures = 0, passes = 0;
void report(const std::string& name, const std::string& problem) {
  if (problem.empty()) {
    ++passes;
    std::printf("OK   %s\n", name.c_str());
  } else {
    ++failures;
    std::printf("FAIL %s: %s\n", name.c_str(), problem.c_str());
  }
}

// One configuration (variant): the good map, then each mutation of head 1's tables.
void run_variant(Setup st, bool complement) {
  st.cfg.block_q = 64;
  st.cfg.block_k = 64;
  st.cfg.topk = 0.4;  // Nk = 5: T = 2
  st.cfg.variant = complement ? sla::Variant::complement : sla::Variant::global;
  st.cfg.negligible = complement ? 0.2 : 0.0;  // Tn = 1
  if (!sla::block_map_shape(kB, kH, kLq, kLk, st.cfg, &st.s).ok()) std::exit(1);
  const std::string tag = std::string(complement ? "complement" : "global") + "/";
  const int64_t nq = st.s.q_blocks, nk = st.s.k_blocks, t = st.s.critical, tn = st.s.negligible;
  const int64_t row1 = 1 * nq + 2;  // head 1, query block 2

  Inputs in(st);
  std::mt19937 rng(1234);
  std::normal_distribution<float> n01(0.f, 1.f);
  auto fill = [&](const Buffer& b, int64_t n) {
    std::vector<uint16_t> h(n);
    for (auto& x : h) x = from_float(n01(rng), st.dt);
    b.put(h);
  };
  fill(in.q, kB * kH * kLq * st.d);
  fill(in.k, kB * kH * kLk * st.d);
  fill(in.v, kB * kH * kLk * st.d);
  std::vector<float> w(st.d * st.d), bias(st.d);
  for (auto& x : w) x = 0.05f * n01(rng);
  for (auto& x : bias) x = 0.1f * n01(rng);
  in.w.put(w);
  in.b.put(bias);

  // The good map: predicted on the device, with inverse tables.
  {
    sla::BlockMap m = in.map(st);
    const TensorView q = dview(in.q.ptr, st.dt, {kB, kH, kLq, st.d}), k = dview(in.k.ptr, st.dt, {kB, kH, kLk, st.d});
    size_t bytes = 0;
    if (!sla::predict_block_map_workspace_size(q, k, st.cfg, &bytes).ok()) std::exit(1);
    Buffer ws(bytes);
    sla::Exec ex;
    ex.workspace = ws.ptr;
    ex.workspace_bytes = bytes;
    const sla::Status s = sla::predict_block_map(q, k, st.cfg, m, ex);
    if (s.code == sla::StatusCode::unsupported) {
      std::printf("skipped: %s\n", s.message.c_str());
      std::exit(kSkip);
    }
    if (!s.ok()) {
      std::printf("FAIL %spredict_block_map: %s\n", tag.c_str(), s.message.c_str());
      ++failures;
      return;
    }
    CUDA_OK(cudaDeviceSynchronize());
  }
  const HostMap good_map = download(in);
  std::string err;
  Outputs good;
  if (!run(st, in, &good, &err)) {
    report(tag + "good map", err);
    return;
  }
  report(tag + "good map", all_finite16(good.o, st.dt) && all_finite16(good.dq, st.dt) ? "" : "non-finite output");

  struct Mutation {
    const char* name;
    std::function<void(HostMap&)> apply;
  };
  std::vector<Mutation> bad = {
      {"count above T",
       [&](HostMap& m) {
         m.count[row1] = static_cast<int32_t>(t + 1);
       }},
      {"count below 0",
       [&](HostMap& m) {
         m.count[row1] = -1;
       }},
      {"entry = Nk",
       [&](HostMap& m) {
         m.lut[row1 * t + 0] = static_cast<int32_t>(nk);
       }},
      {"entry negative",
       [&](HostMap& m) {
         m.lut[row1 * t + 1] = -7;
       }},
      {"entry INT32_MAX",
       [&](HostMap& m) {
         m.lut[row1 * t + 0] = INT32_MAX;
       }},
      {"entry INT32_MIN",
       [&](HostMap& m) {
         m.lut[row1 * t + 0] = INT32_MIN;
       }},
      {"repeated entry",
       [&](HostMap& m) {
         m.lut[row1 * t + 1] = m.lut[row1 * t + 0];
       }},
  };
  if (tn > 0) {
    bad.push_back({"negligible also critical", [&](HostMap& m) {
                     m.negl_lut[row1 * tn] = m.lut[row1 * t];
                   }});
    bad.push_back({"negligible count above Tn", [&](HostMap& m) {
                     m.negl_count[row1] = static_cast<int32_t>(tn + 1);
                   }});
    bad.push_back({"negligible count below 0", [&](HostMap& m) {
                     m.negl_count[row1] = -3;
                   }});
    bad.push_back({"negligible entry out of range", [&](HostMap& m) {
                     m.negl_lut[row1 * tn] = 1 << 20;
                   }});
  }
  for (const Mutation& mu : bad) {
    HostMap m = good_map;
    mu.apply(m);
    upload(in, m);
    // invert_block_map on the device takes any LUT (it skips entries outside [0, Nk) and clamps counts): it must
    // stay in bounds too (compute-sanitizer); its output is never read by the backward pass, which rebuilds it.
    const sla::Status inv = sla::invert_block_map(in.map(st), sla::Exec{});
    CUDA_OK(cudaDeviceSynchronize());
    Outputs r;
    if (!inv.ok())
      report(tag + mu.name, "invert_block_map: " + inv.message);
    else
      report(tag + mu.name, run(st, in, &r, &err) ? expect_head1_nan(st, good, r) : err);
  }

  // Accepted: a permuted row (docs/SPEC.md 7.7), and caller inverse tables full of garbage (rebuilt, never read).
  {
    HostMap m = good_map;
    std::swap(m.lut[row1 * t + 0], m.lut[row1 * t + 1]);
    upload(in, m);
    Outputs r;
    std::string problem;
    if (!run(st, in, &r, &err))
      problem = err;
    else if (!all_finite16(r.o, st.dt) || !all_finite16(r.dq, st.dt) || !all_finite16(r.dk, st.dt))
      problem = "non-finite output for a permuted (valid) row";
    report(tag + "permuted row accepted", problem);
  }
  {
    HostMap m = good_map;
    for (auto& x : m.inv_offset) x = INT32_MAX - 3;
    for (auto& x : m.inv_index) x = -1000000;
    upload(in, m);
    Outputs r;
    std::string problem;
    if (!run(st, in, &r, &err))
      problem = err;
    else if (r.dq != good.dq || r.dk != good.dk || r.dv != good.dv || r.dw != good.dw)
      problem = "gradients differ from those with the right inverse tables";
    report(tag + "garbage inverse tables are rebuilt", problem);
  }
  upload(in, good_map);

  // Non-finite inputs with topk = 1 (every query block attends every key block, as in dense attention).
  Setup dense = st;
  dense.cfg.topk = 1.0;
  dense.cfg.negligible = 0.0;
  if (!sla::block_map_shape(kB, kH, kLq, kLk, dense.cfg, &dense.s).ok()) std::exit(1);
  Inputs din(dense);
  din.q.put(in.q.get<uint16_t>());
  din.k.put(in.k.get<uint16_t>());
  din.v.put(in.v.get<uint16_t>());
  din.w.put(w);
  din.b.put(bias);
  {
    HostMap m;
    const int64_t dt_ = dense.s.critical;  // = Nk
    for (int64_t r = 0; r < kB * kH * nq; ++r) {
      m.count.push_back(static_cast<int32_t>(dt_));
      for (int64_t j = 0; j < dt_; ++j) m.lut.push_back(static_cast<int32_t>(j));
    }
    m.inv_offset.assign(kB * kH * (nk + 1), 0);  // rebuilt by the backward pass
    m.inv_index.assign(kB * kH * nq * dt_, 0);
    upload(din, m);
  }
  const int64_t d = st.d;
  const std::vector<uint16_t> q0 = din.q.get<uint16_t>(), k0 = din.k.get<uint16_t>();
  for (const float bad_value : {NAN, INFINITY}) {
    const std::string v = std::isnan(bad_value) ? "NaN" : "Inf";
    // q[0, 0, 5, 3]: row 5 of head 0 is NaN in O and dQ; every other row of O stays finite.
    {
      std::vector<uint16_t> q = q0;
      q[5 * d + 3] = from_float(bad_value, st.dt);
      din.q.put(q);
      Outputs r;
      std::string problem;
      if (!run(dense, din, &r, &err)) {
        problem = err;
      } else {
        for (int64_t c = 0; c < d && problem.empty(); ++c) {
          if (!std::isnan(to_float(r.o[5 * d + c], st.dt))) problem = "o[0,0,5,:] not NaN";
          if (!std::isnan(to_float(r.dq[5 * d + c], st.dt))) problem = "dq[0,0,5,:] not NaN";
        }
        if (!std::isnan(r.lse[5])) problem = "lse[0,0,5] not NaN";
        std::vector<uint16_t> others = head_of(r.o, 0);
        others.erase(others.begin() + 5 * d, others.begin() + 6 * d);
        if (problem.empty() && !all_finite16(others, st.dt)) problem = "rows other than 5 of head 0 not finite";
        if (problem.empty() && !all_finite16(head_of(r.o, 1), st.dt)) problem = "head 1 not finite";
      }
      report(tag + v + " in q propagates", problem);
      din.q.put(q0);
    }
    // k[0, 0, 7, 3]: every row of head 0 attends key 7. NaN: all of head 0 is NaN. +Inf: the rows whose score
    // with key 7 is +Inf (q[r, 3] > 0) are NaN as in dense attention (a -Inf score is a weight of 0 there; the
    // global linear branch, through phi(k_7), may make more rows NaN). Head 1 stays finite.
    {
      std::vector<uint16_t> k = k0;
      k[7 * d + 3] = from_float(bad_value, st.dt);
      din.k.put(k);
      Outputs r;
      std::string problem;
      if (!run(dense, din, &r, &err)) {
        problem = err;
      } else {
        for (int64_t row = 0; row < kLq && problem.empty(); ++row) {
          if (!std::isnan(bad_value) && !(to_float(q0[row * d + 3], st.dt) > 0.f)) continue;
          for (int64_t c = 0; c < d && problem.empty(); ++c) {
            if (!std::isnan(to_float(r.o[row * d + c], st.dt)))
              problem = "o[0,0," + std::to_string(row) + ",:] not NaN";
            if (!std::isnan(to_float(r.dq[row * d + c], st.dt)))
              problem = "dq[0,0," + std::to_string(row) + ",:] not NaN";
          }
        }
        if (problem.empty() && !all_finite16(head_of(r.o, 1), st.dt)) problem = "o: head 1 not finite";
        if (problem.empty() && !all_finite16(head_of(r.dq, 1), st.dt)) problem = "dq: head 1 not finite";
      }
      report(tag + v + " in k propagates", problem);
      din.k.put(k0);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  Setup st;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--dtype")
      st.dt = v == "f16" ? DType::f16 : DType::bf16;
    else if (a == "--hdim")
      st.d = std::atoll(v.c_str());
    else {
      std::fprintf(stderr, "usage: test_bad_lut [--dtype bf16|f16] [--hdim 64|128]\n");
      return 2;
    }
  }
  if (!sla::cuda_available()) {
    std::printf("skipped: no CUDA device\n");
    return kSkip;
  }
  const char* mainloop = std::getenv("SLA_CUDA_MAINLOOP");
  std::printf("%s; dtype %s, head dim %lld, SLA_CUDA_MAINLOOP=%s\n", sla::build_info().c_str(), sla::dtype_name(st.dt),
              static_cast<long long>(st.d), mainloop ? mainloop : "(default)");
  run_variant(st, false);
  run_variant(st, true);
  std::printf("test_bad_lut: %d passed, %d failed\n", passes, failures);
  return failures == 0 ? 0 : 1;
}
