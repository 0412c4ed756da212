// See reference_attention.h. Floats with several partial sums keep the inner loops vectorisable; the result is
// accurate to ~1e-6 relative, far below the errors the demo measures.
#include "workload/reference_attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <thread>

namespace sla_cli {

std::vector<int64_t> sample_rows(int64_t lq, int64_t max_rows) {
  std::vector<int64_t> rows;
  if (max_rows >= lq || max_rows <= 0) {
    for (int64_t r = 0; r < lq; ++r) rows.push_back(r);
    return rows;
  }
  for (int64_t i = 0; i < max_rows; ++i) {
    rows.push_back(static_cast<int64_t>((static_cast<double>(i) + 0.5) * static_cast<double>(lq) / max_rows));
  }
  return rows;
}

namespace {

float dot(const float* a, const float* b, int64_t n) {
  constexpr int kLanes = 8;
  float acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += a[d + j] * b[d + j];
  }
  float s = 0;
  for (; d < n; ++d) s += a[d] * b[d];
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

void one_row(const AttentionProblem& p, const BlockClasses& c, int64_t bh, int64_t row, std::size_t slot, DenseRow& s,
             ReferenceRows& res) {
  dense_row(p, bh, row, c.block_k, s);
  const double sum = s.sum;
  double* out = res.out.data() + (bh * res.rows.size() + slot) * p.dv;
  for (int64_t d = 0; d < p.dv; ++d) out[d] = s.out[d] / sum;

  const int64_t i = row / c.block_q;
  auto mass_of = [&](const std::vector<int32_t>& lut, const std::vector<int32_t>& count, int64_t width) {
    if (width == 0) return 0.0;
    const int64_t base = (bh * c.q_blocks + i);
    const int64_t n = std::min<int64_t>(count[base], width);
    double m = 0;
    for (int64_t t = 0; t < n; ++t) {
      const int32_t j = lut[base * width + t];
      if (j >= 0 && j < c.k_blocks) m += s.block_mass[j];
    }
    return m / sum;
  };
  res.critical_mass[bh * res.rows.size() + slot] = mass_of(c.lut, c.count, c.critical);
  res.negligible_mass[bh * res.rows.size() + slot] = mass_of(c.negl_lut, c.negl_count, c.negligible);

  const int64_t t = std::min(c.critical, c.k_blocks);
  std::nth_element(s.block_mass.begin(), s.block_mass.begin() + (t - 1), s.block_mass.end(), std::greater<double>());
  double best = 0;
  for (int64_t j = 0; j < t; ++j) best += s.block_mass[j];
  res.best_mass[bh * res.rows.size() + slot] = best / sum;
}

}  // namespace

void dense_row(const AttentionProblem& p, int64_t bh, int64_t query, int64_t block_k, DenseRow& s, float* block_pv) {
  const int64_t nk = (p.lk + block_k - 1) / block_k;
  s.logits.resize(p.lk);
  s.out.assign(p.dv, 0.0f);
  s.block_mass.assign(nk, 0.0);
  if (block_pv != nullptr) std::fill(block_pv, block_pv + nk * p.dv, 0.0f);
  const float* q = p.q + (bh * p.lq + query) * p.dim;
  const float* k = p.k + bh * p.lk * p.dim;
  const float* v = p.v + bh * p.lk * p.dv;
  const float scale = static_cast<float>(p.scale);
  float mx = -INFINITY;
  for (int64_t c2 = 0; c2 < p.lk; ++c2) {
    s.logits[c2] = scale * dot(q, k + c2 * p.dim, p.dim);
    mx = std::max(mx, s.logits[c2]);
  }
  double sum = 0;
  for (int64_t c2 = 0; c2 < p.lk; ++c2) {
    const float e = std::exp(s.logits[c2] - mx);
    sum += e;
    s.block_mass[c2 / block_k] += e;
    const float* vr = v + c2 * p.dv;
    for (int64_t d = 0; d < p.dv; ++d) s.out[d] += e * vr[d];
    if (block_pv != nullptr) {
      float* pv = block_pv + (c2 / block_k) * p.dv;
      for (int64_t d = 0; d < p.dv; ++d) pv[d] += e * vr[d];
    }
  }
  s.sum = sum;
}

ReferenceRows dense_reference(const AttentionProblem& p, const BlockClasses& classes, int64_t max_rows, int threads,
                              const std::function<void(int64_t, int64_t)>& progress) {
  ReferenceRows res;
  res.rows = sample_rows(p.lq, max_rows);
  const int64_t bh_count = p.batch * p.heads;
  const std::size_t nrows = res.rows.size();
  res.out.assign(bh_count * nrows * p.dv, 0.0);
  res.critical_mass.assign(bh_count * nrows, 0.0);
  res.negligible_mass.assign(bh_count * nrows, 0.0);
  res.best_mass.assign(bh_count * nrows, 0.0);

  // Work items of up to 32 rows of one (b,h), taken from a shared counter.
  constexpr std::size_t kRowsPerItem = 32;
  const std::size_t items_per_bh = (nrows + kRowsPerItem - 1) / kRowsPerItem;
  const std::size_t items = static_cast<std::size_t>(bh_count) * items_per_bh;
  std::atomic<std::size_t> next{0};
  std::atomic<int64_t> rows_done{0};
  const int64_t rows_total = bh_count * static_cast<int64_t>(nrows);
  auto worker = [&](bool reports) {
    DenseRow s;
    for (std::size_t it = next++; it < items; it = next++) {
      const int64_t bh = static_cast<int64_t>(it / items_per_bh);
      const std::size_t first = (it % items_per_bh) * kRowsPerItem;
      const std::size_t last = std::min(nrows, first + kRowsPerItem);
      for (std::size_t slot = first; slot < last; ++slot) one_row(p, classes, bh, res.rows[slot], slot, s, res);
      rows_done += static_cast<int64_t>(last - first);
      if (reports && progress) progress(rows_done, rows_total);
    }
  };
  int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(n), std::max<std::size_t>(items, 1)));
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(worker, false);
  worker(true);  // the calling thread reports progress
  for (std::thread& t : pool) t.join();
  return res;
}

}  // namespace sla_cli
