// See reference_attention.h. Floats with several partial sums keep the inner loops vectorisable; the result is
// accurate to ~1e-6 relative, far below the errors the demo measures.
#include "workload/reference_attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <thread>

#include "cpu/parallel.h"

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

// Inlined into the row loops (a call per key and row cost more than the 64 multiply-adds); the lanes fix the order of
// the additions, so every caller gets the same float for the same row and key.
[[gnu::always_inline]] inline float dot(const float* a, const float* b, int64_t n) {
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

struct RowScratch {
  std::vector<float> p, out;
  std::vector<double> block_mass;
};

void one_row(const AttentionProblem& p, const BlockClasses& c, int64_t bh, int64_t row, std::size_t slot, RowScratch& s,
             ReferenceRows& res) {
  const float* q = p.q + (bh * p.lq + row) * p.dim;
  const float* k = p.k + bh * p.lk * p.dim;
  const float* v = p.v + bh * p.lk * p.dv;
  const float scale = static_cast<float>(p.scale);
  float mx = -INFINITY;
  for (int64_t c2 = 0; c2 < p.lk; ++c2) {
    s.p[c2] = scale * dot(q, k + c2 * p.dim, p.dim);
    mx = std::max(mx, s.p[c2]);
  }
  double sum = 0;
  std::fill(s.out.begin(), s.out.end(), 0.0f);
  std::fill(s.block_mass.begin(), s.block_mass.end(), 0.0);
  for (int64_t c2 = 0; c2 < p.lk; ++c2) {
    const float e = std::exp(s.p[c2] - mx);
    sum += e;
    s.block_mass[c2 / c.block_k] += e;
    const float* vr = v + c2 * p.dv;
    for (int64_t d = 0; d < p.dv; ++d) s.out[d] += e * vr[d];
  }
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

BlockSums dense_block_sums(const AttentionProblem& p, int64_t bh, const std::vector<int64_t>& rows, int64_t block_k,
                           int threads) {
  constexpr int64_t kTile = 8;  // rows per tile: their logits (8 x Lk floats) stay in the L2 cache
  BlockSums bs;
  const int64_t n = static_cast<int64_t>(rows.size()), nk = (p.lk + block_k - 1) / block_k;
  bs.k_blocks = nk;
  bs.sum.assign(n, 0.0);
  bs.block_mass.assign(n * nk, 0.0);
  bs.block_pv.assign(n * nk * p.dv, 0.0f);
  bs.out.assign(n * p.dv, 0.0);
  const float* k = p.k + bh * p.lk * p.dim;
  const float* v = p.v + bh * p.lk * p.dv;
  const float scale = static_cast<float>(p.scale);
  const int64_t tiles = (n + kTile - 1) / kTile;
  std::vector<std::vector<float>> logits(static_cast<std::size_t>(std::max(threads, 1)));
  sla::cpu::parallel_for(tiles, threads, [&](int64_t t, int worker) {
    const int64_t r0 = t * kTile, nr = std::min(kTile, n - r0);
    std::vector<float>& s = logits[worker];
    s.resize(kTile * p.lk);
    const float* q[kTile];
    float mx[kTile];
    for (int64_t i = 0; i < nr; ++i) {
      q[i] = p.q + (bh * p.lq + rows[r0 + i]) * p.dim;
      mx[i] = -INFINITY;
    }
    for (int64_t c2 = 0; c2 < p.lk; ++c2) {
      const float* kr = k + c2 * p.dim;
      for (int64_t i = 0; i < nr; ++i) {
        const float x = scale * dot(q[i], kr, p.dim);
        s[i * p.lk + c2] = x;
        mx[i] = std::max(mx[i], x);
      }
    }
    for (int64_t c2 = 0; c2 < p.lk; ++c2) {
      const float* vr = v + c2 * p.dv;
      const int64_t j = c2 / block_k;
      for (int64_t i = 0; i < nr; ++i) {
        const int64_t r = r0 + i;
        const float e = std::exp(s[i * p.lk + c2] - mx[i]);
        bs.sum[r] += e;
        bs.block_mass[r * nk + j] += e;
        float* pv = bs.block_pv.data() + (r * nk + j) * p.dv;
        for (int64_t d = 0; d < p.dv; ++d) pv[d] += e * vr[d];
      }
    }
    for (int64_t r = r0; r < r0 + nr; ++r) {
      double* out = bs.out.data() + r * p.dv;
      for (int64_t j = 0; j < nk; ++j) {
        const float* pv = bs.block_pv.data() + (r * nk + j) * p.dv;
        for (int64_t d = 0; d < p.dv; ++d) out[d] += pv[d];
      }
      for (int64_t d = 0; d < p.dv; ++d) out[d] /= bs.sum[r];
    }
  });
  return bs;
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
    RowScratch s;
    s.p.resize(p.lk);
    s.out.resize(p.dv);
    s.block_mass.resize(classes.k_blocks);
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
