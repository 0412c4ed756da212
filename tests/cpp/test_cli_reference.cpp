// The demo's yardsticks must be right before they judge the library: the dense reference and attention-mass
// shares against a plain fp64 softmax written here, and the projection fit against a known W, b.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "workload/projection_fit.h"
#include "workload/reference_attention.h"

namespace sla_cli {
namespace {

struct Tiny {
  AttentionProblem p;
  std::vector<float> q, k, v;
};

Tiny make_tiny(int64_t lq, int64_t lk, int64_t d, int64_t dv, unsigned seed) {
  Tiny t;
  std::mt19937 gen(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  t.q.resize(2 * lq * d);
  t.k.resize(2 * lk * d);
  t.v.resize(2 * lk * dv);
  for (float& x : t.q) x = 2.0f * n(gen);
  for (float& x : t.k) x = n(gen);
  for (float& x : t.v) x = n(gen);
  t.p = {1, 2, lq, lk, d, dv, 1.0 / std::sqrt(static_cast<double>(d)), t.q.data(), t.k.data(), t.v.data()};
  return t;
}

// Softmax probabilities of row r of head h over all keys, in fp64.
std::vector<double> probs(const Tiny& t, int64_t h, int64_t r) {
  const AttentionProblem& p = t.p;
  std::vector<double> s(p.lk);
  double mx = -INFINITY, sum = 0;
  for (int64_t c = 0; c < p.lk; ++c) {
    double dot = 0;
    for (int64_t d = 0; d < p.dim; ++d)
      dot += double(t.q[(h * p.lq + r) * p.dim + d]) * t.k[(h * p.lk + c) * p.dim + d];
    s[c] = p.scale * dot;
    mx = std::max(mx, s[c]);
  }
  for (double& x : s) sum += (x = std::exp(x - mx));
  for (double& x : s) x /= sum;
  return s;
}

TEST(CliReference, DenseOutputAndMassShares) {
  // Lk = 100 with 32-key blocks: 4 key blocks, the last one partial (4 keys).
  const Tiny t = make_tiny(70, 100, 16, 8, 1);
  BlockClasses c;
  c.q_blocks = 3;  // ceil(70 / 32)
  c.k_blocks = 4;
  c.block_q = 32;
  c.block_k = 32;
  c.critical = 2;
  c.negligible = 1;
  // Per (head, query block): critical blocks {i % 4, 3} with count 2 (row 0 of head 1 lists only one), and
  // negligible block {(i + 1) % 4} unless it is critical.
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 3; ++i) {
      c.lut.push_back(static_cast<int32_t>(i % 4));
      c.lut.push_back(3);
      c.count.push_back(h == 1 && i == 0 ? 1 : 2);
      c.negl_lut.push_back(static_cast<int32_t>((i + 1) % 4));
      c.negl_count.push_back(1);
    }
  }
  const ReferenceRows ref = dense_reference(t.p, c, 0, 2);
  ASSERT_EQ(ref.rows.size(), 70u);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t r = 0; r < 70; ++r) {
      const std::vector<double> p = probs(t, h, r);
      const int64_t i = r / 32;
      for (int64_t e = 0; e < 8; ++e) {
        double want = 0;
        for (int64_t col = 0; col < 100; ++col) want += p[col] * t.v[(h * 100 + col) * 8 + e];
        EXPECT_NEAR(ref.out[(h * 70 + r) * 8 + e], want, 1e-5) << h << " " << r << " " << e;
      }
      auto block_mass = [&](int64_t j) {
        double m = 0;
        for (int64_t col = j * 32; col < std::min<int64_t>(100, (j + 1) * 32); ++col) m += p[col];
        return m;
      };
      double crit = block_mass(i % 4);
      if (!(h == 1 && i == 0) && i % 4 != 3) crit += block_mass(3);
      EXPECT_NEAR(ref.critical_mass[h * 70 + r], crit, 1e-6) << h << " " << r;
      EXPECT_NEAR(ref.negligible_mass[h * 70 + r], block_mass((i + 1) % 4), 1e-6) << h << " " << r;
      std::vector<double> all = {block_mass(0), block_mass(1), block_mass(2), block_mass(3)};
      std::sort(all.rbegin(), all.rend());
      EXPECT_NEAR(ref.best_mass[h * 70 + r], all[0] + all[1], 1e-6) << h << " " << r;
    }
  }
}

TEST(CliReference, SampledRowsAreEvenlySpacedAndDistinct) {
  const std::vector<int64_t> rows = sample_rows(1000, 4);
  EXPECT_EQ(rows, (std::vector<int64_t>{125, 375, 625, 875}));
  EXPECT_EQ(sample_rows(3, 10), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(sample_rows(3, 0), (std::vector<int64_t>{0, 1, 2}));
}

TEST(CliProjectionFit, RecoversAKnownProjection) {
  // dense = O_s + O_l W0^T + b0 exactly: the fit must find W0, b0 and leave no error.
  const int64_t bh = 2, rows = 50, dv = 4;
  std::mt19937 gen(3);
  std::normal_distribution<double> n(0.0, 1.0);
  std::vector<double> w0(dv * dv), b0(dv), o_s(bh * rows * dv), o_lin(bh * rows * dv), dense(bh * rows * dv);
  for (double& x : w0) x = n(gen);
  for (double& x : b0) x = n(gen);
  for (double& x : o_s) x = n(gen);
  for (double& x : o_lin) x = n(gen);
  for (int64_t s = 0; s < bh * rows; ++s) {
    for (int64_t c = 0; c < dv; ++c) {
      double o = o_s[s * dv + c] + b0[c];
      for (int64_t d = 0; d < dv; ++d) o += w0[c * dv + d] * o_lin[s * dv + d];
      dense[s * dv + c] = o;
    }
  }
  const ProjectionFit fit = fit_projection(o_s, o_lin, dense, bh, rows, dv);
  ASSERT_EQ(fit.weight.size(), w0.size());
  for (std::size_t i = 0; i < w0.size(); ++i) EXPECT_NEAR(fit.weight[i], w0[i], 1e-6) << i;
  for (int64_t c = 0; c < dv; ++c) EXPECT_NEAR(fit.bias[c], b0[c], 1e-6) << c;
  ASSERT_EQ(fit.rel_error_per_head.size(), 2u);
  EXPECT_LT(fit.rel_error_per_head[0], 1e-6);
  EXPECT_LT(fit.rel_error_per_head[1], 1e-6);

  // Fewer samples than unknowns: no fit rather than a meaningless one.
  EXPECT_TRUE(fit_projection(o_s, o_lin, dense, 1, 3, dv).weight.empty());
}

}  // namespace
}  // namespace sla_cli
