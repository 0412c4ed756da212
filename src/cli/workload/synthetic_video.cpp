// See synthetic_video.h.
#include "workload/synthetic_video.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <random>
#include <thread>

namespace sla_cli {

namespace {

enum class HeadKind { local, spatial, temporal, global };

// How peaked the structured heads are: the scaled logit of a query with a key at its own position. Larger values
// concentrate the attention mass on fewer keys.
constexpr double kPeakLogit = 14.0;
// Per-component noise added to the structured Q and K (relative to the feature amplitude).
constexpr double kQkNoise = 0.2;

struct HeadSpec {
  HeadKind kind;
  const char* name;
  double t_scale, yx_scale;  // kernel widths in grid cells along time and along (y, x); 0: the features ignore it
};

HeadSpec head_spec(int64_t h) {
  const double widen = 1.0 + 0.5 * static_cast<double>(h / 4);  // repeated kinds look further
  switch (h % 4) {
    // Local: mostly within the frame (a few rows above and below), weakly into the neighbouring frames.
    case 0: return {HeadKind::local, "local", 0.6 * widen, 1.5 * widen};
    case 1: return {HeadKind::spatial, "spatial", 0.6 * widen, 0.0};
    case 2: return {HeadKind::temporal, "temporal", 0.0, 1.0 * widen};
    default: return {HeadKind::global, "global", 0.0, 0.0};
  }
}

// Fills one head's Q and K (tokens x dim each, row-major).
void fill_qk(const VideoGrid& g, const HeadSpec& spec, int64_t dim, std::mt19937_64& gen, float* q, float* k) {
  std::normal_distribution<double> normal(0.0, 1.0);
  const int64_t n = g.tokens();
  if (spec.kind == HeadKind::global) {
    // Unit-variance Q and K: scaled logits have unit spread, so attention stays diffuse.
    for (int64_t i = 0; i < n * dim; ++i) {
      q[i] = static_cast<float>(normal(gen));
      k[i] = static_cast<float>(normal(gen));
    }
    return;
  }
  // m cos/sin pairs: q.k = a^2/m * sum_m cos(w_m . (p - p')), an unbiased estimate of a^2 * exp(-|dp|^2 / 2s^2).
  const int64_t m = dim / 2;
  const double amp = std::sqrt(kPeakLogit * std::sqrt(static_cast<double>(dim)));  // a with a^2/sqrt(D) = peak
  const double comp = amp / std::sqrt(static_cast<double>(m));
  const double noise = kQkNoise * comp;
  std::vector<double> w(static_cast<std::size_t>(3 * m));
  for (int64_t j = 0; j < m; ++j) {
    w[3 * j + 0] = spec.t_scale > 0 ? normal(gen) / spec.t_scale : 0.0;
    w[3 * j + 1] = spec.yx_scale > 0 ? normal(gen) / spec.yx_scale : 0.0;
    w[3 * j + 2] = spec.yx_scale > 0 ? normal(gen) / spec.yx_scale : 0.0;
  }
  for (int64_t t = 0, tok = 0; t < g.frames; ++t) {
    for (int64_t y = 0; y < g.height; ++y) {
      for (int64_t x = 0; x < g.width; ++x, ++tok) {
        float* qr = q + tok * dim;
        float* kr = k + tok * dim;
        for (int64_t j = 0; j < m; ++j) {
          const double phase = w[3 * j] * t + w[3 * j + 1] * y + w[3 * j + 2] * x;
          const double c = comp * std::cos(phase), s = comp * std::sin(phase);
          qr[2 * j] = static_cast<float>(c + noise * normal(gen));
          qr[2 * j + 1] = static_cast<float>(s + noise * normal(gen));
          kr[2 * j] = static_cast<float>(c + noise * normal(gen));
          kr[2 * j + 1] = static_cast<float>(s + noise * normal(gen));
        }
        for (int64_t j = 2 * m; j < dim; ++j) {  // odd head dim: the last channel is noise only
          qr[j] = static_cast<float>(noise * normal(gen));
          kr[j] = static_cast<float>(noise * normal(gen));
        }
      }
    }
  }
}

// V: a slowly varying wave over the grid plus noise, and a small per-channel offset (real V has a nonzero mean, but a
// large one would hide the errors of the attention weights behind a common term).
void fill_v(const VideoGrid& g, int64_t dim, std::mt19937_64& gen, float* v) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> angle(0.0, 6.283185307179586);
  constexpr double kVLengthScale = 4.0;
  std::vector<double> offset(dim), phase0(dim), w(3 * dim);
  for (int64_t c = 0; c < dim; ++c) {
    offset[c] = 0.3 * normal(gen);
    phase0[c] = angle(gen);
    for (int j = 0; j < 3; ++j) w[3 * c + j] = normal(gen) / kVLengthScale;
  }
  for (int64_t t = 0, tok = 0; t < g.frames; ++t) {
    for (int64_t y = 0; y < g.height; ++y) {
      for (int64_t x = 0; x < g.width; ++x, ++tok) {
        for (int64_t c = 0; c < dim; ++c) {
          const double wave = std::cos(w[3 * c] * t + w[3 * c + 1] * y + w[3 * c + 2] * x + phase0[c]);
          v[tok * dim + c] = static_cast<float>(offset[c] + wave + 0.3 * normal(gen));
        }
      }
    }
  }
}

}  // namespace

VideoWorkload make_video_workload(const VideoGrid& grid, int64_t heads, int64_t dim, uint64_t seed) {
  VideoWorkload w;
  w.heads = heads;
  w.tokens = grid.tokens();
  w.dim = dim;
  const std::size_t per_head = static_cast<std::size_t>(w.tokens * dim);
  w.q.resize(per_head * heads);
  w.k.resize(per_head * heads);
  w.v.resize(per_head * heads);
  w.head_labels.resize(heads);
  // Heads are independent (one generator each, seeded by the head index), so they are built in parallel and the
  // result does not depend on the thread count or on how many heads there are.
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t h = next++; h < heads; h = next++) {
      std::mt19937_64 gen(seed * 1000003ull + static_cast<uint64_t>(h));
      const HeadSpec spec = head_spec(h);
      fill_qk(grid, spec, dim, gen, w.q.data() + h * per_head, w.k.data() + h * per_head);
      fill_v(grid, dim, gen, w.v.data() + h * per_head);
      w.head_labels[h] = spec.name;
    }
  };
  const int64_t n = std::min<int64_t>(heads, std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < n; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  return w;
}

}  // namespace sla_cli
