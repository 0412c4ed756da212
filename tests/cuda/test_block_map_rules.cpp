// CUDA block map under the adaptive rules (docs/BLOCK_MAP.md) against the CPU backend on the same bf16 inputs:
// per-head topk, top_p (with per-head p and a count clamp) and the negligible threshold. Its own binary; without a
// CUDA device it prints "skipped: no CUDA device" and exits 77 (CTest: skipped).
//
// Agreement rule (the documented tolerance): the two backends compute the pooled scores in fp32 in different
// orders, so a row may differ only where its selection is ambiguous within rounding. Such a row passes when, judged
// by fp64 pooled scores of the same inputs, (a) topk: every selected block of the GPU scores at least the best
// unselected one minus 1e-5 of the row's largest |score|; (b) top_p: the GPU's set is itself a valid top_p set up to
// 1e-4 in share (its cumulative share reaches p - 1e-4 and without its weakest block stays below p + 1e-4);
// (c) threshold: every block on which the negligible sets differ has a share within 1e-3 relative of the threshold.
// At most 1% of the rows may be such near-boundary rows; every other row must be identical (count, entries, -1
// padding). Two GPU runs must be bitwise identical.
//
//   test_block_map_rules            the agreement cases
//   test_block_map_rules --perf     times predict_block_map at B=1, H=12, L=32760, D=128, bq=128, bk=64
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "sla/sla.h"

namespace {

using sla::Config;
using sla::CriticalRule;
using sla::Variant;

int g_failures = 0;
#define CHECK(cond, ...)                   \
  do {                                     \
    if (!(cond)) {                         \
      std::printf("  FAIL: " __VA_ARGS__); \
      std::printf("\n");                   \
      ++g_failures;                        \
    }                                      \
  } while (0)

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even (inputs are finite)
  return static_cast<uint16_t>(u >> 16);
}
double from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Problem {
  int64_t b, h, lq, lk, d;
  std::vector<uint16_t> q, k;  // (B, H, L, D) bf16
};

// Local attention along the sequence (cos/sin position features, like the demo's local heads) with a per-head
// width, plus noise: pooled shares far from uniform, so top_p counts vary from row to row.
Problem make_problem(int64_t b, int64_t h, int64_t lq, int64_t lk, int64_t d, uint64_t seed) {
  Problem p{b, h, lq, lk, d, {}, {}};
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  p.q.resize(b * h * lq * d);
  p.k.resize(b * h * lk * d);
  const int64_t m = d / 2;
  for (int64_t bh = 0; bh < b * h; ++bh) {
    const double width = 40.0 * (1 + bh % 4);
    const double amp = std::sqrt(8.0 * std::sqrt(static_cast<double>(d)) / m);
    std::vector<double> w(m);
    for (auto& x : w) x = normal(gen) / width;
    auto fill = [&](std::vector<uint16_t>& x, int64_t len) {
      for (int64_t r = 0; r < len; ++r)
        for (int64_t j = 0; j < m; ++j) {
          x[(bh * len + r) * d + 2 * j] =
              to_bf16(static_cast<float>(amp * std::cos(w[j] * r) + 0.3 * amp * normal(gen)));
          x[(bh * len + r) * d + 2 * j + 1] =
              to_bf16(static_cast<float>(amp * std::sin(w[j] * r) + 0.3 * amp * normal(gen)));
        }
    };
    fill(p.q, lq);
    fill(p.k, lk);
  }
  return p;
}

struct Tables {
  sla::BlockMapShape s;
  std::vector<int32_t> lut, count, negl_lut, negl_count, inv_offset;
};

sla::Status run(const Problem& p, const Config& cfg, bool gpu, Tables* out, float* ms = nullptr, int reps = 1) {
  sla::Status st = sla::block_map_shape(p.b, p.h, p.lq, p.lk, cfg, &out->s);
  if (!st.ok()) return st;
  const sla::BlockMapShape& s = out->s;
  const sla::Device dev = gpu ? sla::Device::cuda : sla::Device::cpu;
  const size_t nq_t = s.batch * s.heads * s.q_blocks;
  out->lut.assign(nq_t * s.critical, -7);
  out->count.assign(nq_t, -7);
  out->negl_lut.assign(nq_t * s.negligible, -7);
  out->negl_count.assign(s.negligible > 0 ? nq_t : 0, -7);
  out->inv_offset.assign(s.batch * s.heads * (s.k_blocks + 1), -7);
  std::vector<void*> owned;
  auto place = [&](void* host, size_t bytes) -> void* {
    if (!gpu) return host;
    void* d = nullptr;
    cudaMalloc(&d, std::max<size_t>(bytes, 4));
    cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice);
    owned.push_back(d);
    return d;
  };
  void* qd = place(const_cast<uint16_t*>(p.q.data()), p.q.size() * 2);
  void* kd = place(const_cast<uint16_t*>(p.k.data()), p.k.size() * 2);
  const sla::TensorView q = sla::make_view(qd, sla::DType::bf16, {p.b, p.h, p.lq, p.d}, dev);
  const sla::TensorView k = sla::make_view(kd, sla::DType::bf16, {p.b, p.h, p.lk, p.d}, dev);
  std::vector<int32_t> inv_index(nq_t * s.critical);
  sla::BlockMap map;
  void* lut = place(out->lut.data(), out->lut.size() * 4);
  void* count = place(out->count.data(), out->count.size() * 4);
  void* inv_off = place(out->inv_offset.data(), out->inv_offset.size() * 4);
  void* inv_idx = place(inv_index.data(), inv_index.size() * 4);
  map.lut = sla::make_view(lut, sla::DType::i32, {s.batch, s.heads, s.q_blocks, s.critical}, dev);
  map.count = sla::make_view(count, sla::DType::i32, {s.batch, s.heads, s.q_blocks}, dev);
  map.inv_offset = sla::make_view(inv_off, sla::DType::i32, {s.batch, s.heads, s.k_blocks + 1}, dev);
  map.inv_index = sla::make_view(inv_idx, sla::DType::i32, {s.batch, s.heads, s.q_blocks * s.critical}, dev);
  void *nl = nullptr, *nc = nullptr;
  if (s.negligible > 0) {
    nl = place(out->negl_lut.data(), out->negl_lut.size() * 4);
    nc = place(out->negl_count.data(), out->negl_count.size() * 4);
    map.negl_lut = sla::make_view(nl, sla::DType::i32, {s.batch, s.heads, s.q_blocks, s.negligible}, dev);
    map.negl_count = sla::make_view(nc, sla::DType::i32, {s.batch, s.heads, s.q_blocks}, dev);
  }
  size_t bytes = 0;
  st = sla::predict_block_map_workspace_size(q, k, cfg, &bytes);
  sla::Exec exec;
  std::vector<char> host_ws;
  if (st.ok() && bytes > 0) {
    if (gpu) {
      cudaMalloc(&exec.workspace, bytes);
      owned.push_back(exec.workspace);
    } else {
      host_ws.resize(bytes);
      exec.workspace = host_ws.data();
    }
    exec.workspace_bytes = bytes;
  }
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  if (gpu && ms) {
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    if (st.ok()) st = sla::predict_block_map(q, k, cfg, map, exec);  // warm-up
    cudaEventRecord(e0);
  }
  for (int r = 0; r < reps && st.ok(); ++r) st = sla::predict_block_map(q, k, cfg, map, exec);
  if (gpu && ms) {
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(ms, e0, e1);
    *ms /= reps;
  }
  if (gpu) {
    cudaDeviceSynchronize();
    cudaMemcpy(out->lut.data(), lut, out->lut.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(out->count.data(), count, out->count.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(out->inv_offset.data(), inv_off, out->inv_offset.size() * 4, cudaMemcpyDeviceToHost);
    if (s.negligible > 0) {
      cudaMemcpy(out->negl_lut.data(), nl, out->negl_lut.size() * 4, cudaMemcpyDeviceToHost);
      cudaMemcpy(out->negl_count.data(), nc, out->negl_count.size() * 4, cudaMemcpyDeviceToHost);
    }
    const cudaError_t e = cudaGetLastError();
    if (st.ok() && e != cudaSuccess) st = {sla::StatusCode::device_error, cudaGetErrorString(e)};
    for (void* d : owned) cudaFree(d);
  }
  return st;
}

// fp64 pooled scores of one (b, h) from the bf16 inputs.
std::vector<double> scores64(const Problem& p, int64_t bh, int bq, int bk, int64_t nq, int64_t nk) {
  const int64_t d = p.d;
  std::vector<double> mean(d, 0.0), qp(nq * d, 0.0), kp(nk * d, 0.0), s(nq * nk, 0.0);
  for (int64_t r = 0; r < p.lk; ++r)
    for (int64_t c = 0; c < d; ++c) mean[c] += from_bf16(p.k[(bh * p.lk + r) * d + c]) / p.lk;
  for (int64_t r = 0; r < p.lq; ++r)
    for (int64_t c = 0; c < d; ++c) qp[(r / bq) * d + c] += from_bf16(p.q[(bh * p.lq + r) * d + c]);
  for (int64_t r = 0; r < p.lk; ++r)
    for (int64_t c = 0; c < d; ++c) kp[(r / bk) * d + c] += from_bf16(p.k[(bh * p.lk + r) * d + c]) - mean[c];
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t c = 0; c < d; ++c) qp[i * d + c] /= std::min<int64_t>(bq, p.lq - i * bq);
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t c = 0; c < d; ++c) kp[j * d + c] /= std::min<int64_t>(bk, p.lk - j * bk);
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t j = 0; j < nk; ++j) {
      double acc = 0.0;
      for (int64_t c = 0; c < d; ++c) acc += qp[i * d + c] * kp[j * d + c];
      s[i * nk + j] = acc;
    }
  return s;
}

bool row_equal(const std::vector<int32_t>& a, const std::vector<int32_t>& b, size_t off, int64_t width) {
  return std::equal(a.begin() + off, a.begin() + off + width, b.begin() + off);
}

void check_case(const char* name, const Problem& p, const Config& cfg) {
  Tables cpu, gpu, gpu2;
  sla::Status st = run(p, cfg, false, &cpu);
  CHECK(st.ok(), "%s: cpu: %s", name, st.message.c_str());
  st = run(p, cfg, true, &gpu);
  CHECK(st.ok(), "%s: gpu: %s", name, st.message.c_str());
  if (!st.ok()) return;
  st = run(p, cfg, true, &gpu2);
  CHECK(st.ok() && gpu.lut == gpu2.lut && gpu.count == gpu2.count && gpu.negl_lut == gpu2.negl_lut &&
            gpu.negl_count == gpu2.negl_count && gpu.inv_offset == gpu2.inv_offset,
        "%s: two GPU runs differ", name);
  const sla::BlockMapShape& s = cpu.s;
  const int64_t nq = s.q_blocks, nk = s.k_blocks, T = s.critical, Tn = s.negligible;
  const double scale = 1.0 / std::sqrt(static_cast<double>(p.d));
  int64_t exact = 0, near = 0, bad = 0, rows = 0;
  double count_sum = 0.0;
  for (int64_t bh = 0; bh < p.b * p.h; ++bh) {
    const int64_t h = bh % p.h;
    const std::vector<double> sc = scores64(p, bh, cfg.block_q, cfg.block_k, nq, nk);
    for (int64_t i = 0; i < nq; ++i, ++rows) {
      const size_t r = bh * nq + i;
      const int gc = gpu.count[r];
      count_sum += gc;
      // Table invariants of the GPU row.
      bool ok = gc >= 1 && gc <= T;
      for (int64_t e = 0; ok && e < T; ++e) {
        const int32_t j = gpu.lut[r * T + e];
        ok = e < gc ? (j >= 0 && j < nk && (e == 0 || gpu.lut[r * T + e - 1] < j)) : j == -1;
      }
      if (!ok) {
        ++bad;
        continue;
      }
      bool same = gc == cpu.count[r] && row_equal(gpu.lut, cpu.lut, r * T, T);
      if (Tn > 0)
        same = same && gpu.negl_count[r] == cpu.negl_count[r] && row_equal(gpu.negl_lut, cpu.negl_lut, r * Tn, Tn);
      if (same) {
        ++exact;
        continue;
      }
      // Not identical: is the GPU's row right within rounding (the header's rule)?
      const double* row = &sc[i * nk];
      double top = -INFINITY, amax = 0.0;
      for (int64_t j = 0; j < nk; ++j) top = std::max(top, row[j]), amax = std::max(amax, std::fabs(row[j]));
      std::vector<double> share(nk);
      double z = 0.0;
      for (int64_t j = 0; j < nk; ++j) z += (share[j] = std::exp(scale * (row[j] - top)));
      for (auto& x : share) x /= z;
      std::vector<char> sel(nk, 0);
      for (int e = 0; e < gc; ++e) sel[gpu.lut[r * T + e]] = 1;
      double min_sel = INFINITY, max_unsel = -INFINITY, mass = 0.0, weakest = INFINITY;
      for (int64_t j = 0; j < nk; ++j) {
        if (sel[j]) {
          min_sel = std::min(min_sel, row[j]);
          mass += share[j];
          weakest = std::min(weakest, share[j]);
        } else {
          max_unsel = std::max(max_unsel, row[j]);
        }
      }
      bool fine = min_sel >= max_unsel - 1e-5 * amax;
      if (cfg.rule == CriticalRule::top_p) {
        const double pp = cfg.head_top_p.empty() ? cfg.top_p : cfg.head_top_p[h];
        const bool clamped = gc == std::min<int64_t>(cfg.min_blocks, T) || gc == T;
        fine = fine && (clamped || (mass >= pp - 1e-4 && mass - weakest < pp + 1e-4));
      } else {
        fine = fine && gc == cpu.count[r];
      }
      if (Tn > 0) {
        std::vector<char> ng(nk, 0), nc(nk, 0);
        for (int e = 0; e < gpu.negl_count[r]; ++e) ng[gpu.negl_lut[r * Tn + e]] = 1;
        for (int e = 0; e < cpu.negl_count[r]; ++e) nc[cpu.negl_lut[r * Tn + e]] = 1;
        for (int64_t j = 0; j < nk; ++j) {
          if (ng[j] == nc[j]) continue;
          // The cases below use the threshold rule only; any other negligible difference is a failure.
          fine = fine && cfg.negligible_threshold > 0.0 &&
                 std::fabs(share[j] - cfg.negligible_threshold) <= 1e-3 * cfg.negligible_threshold;
        }
      }
      ++(fine ? near : bad);
    }
  }
  std::printf("%-34s rows %6lld  identical %6lld  near-boundary %4lld  wrong %lld  mean count %.2f (T %lld, Nk %lld)\n",
              name, static_cast<long long>(rows), static_cast<long long>(exact), static_cast<long long>(near),
              static_cast<long long>(bad), count_sum / rows, static_cast<long long>(T), static_cast<long long>(nk));
  CHECK(bad == 0, "%s: %lld rows wrong", name, static_cast<long long>(bad));
  CHECK(near * 100 <= rows, "%s: %lld near-boundary rows exceed 1%%", name, static_cast<long long>(near));
}

Config rule_cfg(int bq, int bk) {
  Config c;
  c.block_q = bq;
  c.block_k = bk;
  return c;
}

int perf() {
  const Problem p = make_problem(1, 12, 32760, 32760, 128, 7);
  struct Run {
    const char* name;
    Config cfg;
  } runs[4] = {{"topk 0.05", rule_cfg(128, 64)},
               {"per-head topk", rule_cfg(128, 64)},
               {"top_p 0.9", rule_cfg(128, 64)},
               {"top_p 0.9 + threshold", rule_cfg(128, 64)}};
  runs[0].cfg.topk = 0.05;
  runs[1].cfg.head_topk = {0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.05, 0.05, 0.05};
  runs[2].cfg.rule = CriticalRule::top_p;
  runs[2].cfg.top_p = 0.9;
  runs[2].cfg.max_blocks = 64;
  runs[3].cfg = runs[2].cfg;
  runs[3].cfg.variant = Variant::complement;
  runs[3].cfg.negligible_threshold = 1e-4;
  runs[3].cfg.max_negligible = 0.5;
  for (const Run& r : runs) {
    Tables t;
    float ms = 0.f;
    const sla::Status st = run(p, r.cfg, true, &t, &ms, 20);
    if (!st.ok()) {
      std::printf("%-24s error: %s\n", r.name, st.message.c_str());
      ++g_failures;
      continue;
    }
    double mean = 0.0;
    for (int32_t c : t.count) mean += c;
    std::printf("%-24s predict_block_map %.3f ms  mean count %.1f of Nk %lld\n", r.name, ms, mean / t.count.size(),
                static_cast<long long>(t.s.k_blocks));
  }
  return g_failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0 || !sla::cuda_available()) {
    std::printf("skipped: no CUDA device\n");
    return 77;
  }
  if (argc > 1 && std::string(argv[1]) == "--perf") return perf();

  const Problem a = make_problem(2, 4, 4096, 4096, 128, 1);
  const Problem ragged = make_problem(1, 4, 3001, 2777, 128, 2);
  struct Case {
    const char* name;
    const Problem* p;
    Config cfg;
  };
  std::vector<Case> cases;
  for (int bq : {64, 128}) {
    Config c = rule_cfg(bq, 64);
    c.topk = 0.1;
    cases.push_back({bq == 64 ? "topk 0.1 (64/64)" : "topk 0.1 (128/64)", &a, c});
    c.head_topk = {0.03, 0.1, 0.2, 0.5};
    cases.push_back({bq == 64 ? "per-head topk (64/64)" : "per-head topk (128/64)", &a, c});
    Config t = rule_cfg(bq, 64);
    t.rule = CriticalRule::top_p;
    t.top_p = 0.9;
    cases.push_back({bq == 64 ? "top_p 0.9 (64/64)" : "top_p 0.9 (128/64)", &a, t});
    t.top_p = 0.0;
    t.head_top_p = {0.5, 0.8, 0.95, 0.99};
    t.min_blocks = 2;
    t.max_blocks = 24;
    cases.push_back({bq == 64 ? "per-head top_p clamp (64/64)" : "per-head top_p clamp (128/64)", &a, t});
  }
  Config r = rule_cfg(128, 64);
  r.rule = CriticalRule::top_p;
  r.top_p = 0.8;
  r.max_blocks = 32;
  cases.push_back({"top_p ragged", &ragged, r});
  Config th = r;
  th.variant = Variant::complement;
  th.negligible_threshold = 1e-3;
  th.max_negligible = 0.6;
  cases.push_back({"top_p + threshold (complement)", &a, th});
  th.rule = CriticalRule::topk;
  th.top_p = 0.0;
  th.max_blocks = 0;
  th.head_topk = {0.05, 0.1, 0.1, 0.2};
  cases.push_back({"per-head topk + threshold", &ragged, th});
  for (const Case& c : cases) check_case(c.name, *c.p, c.cfg);
  std::printf(g_failures == 0 ? "all block-map rule cases passed\n" : "%d check(s) failed\n", g_failures);
  return g_failures == 0 ? 0 : 1;
}
