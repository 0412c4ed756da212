// CPU backward pass (docs/SPEC.md section 5, invariants 1, 2, 5, 6 and 8): against dense attention, against the sparse
// branch alone, and against central finite differences of the forward pass with the LUT held fixed, for both
// variants and all three feature maps.
#include <gtest/gtest.h>

#include <tuple>

#include "test_util.h"

namespace sla_test {
namespace {

using sla::Config;
using sla::DType;
using sla::FeatureMap;
using sla::Variant;

constexpr double kF64Tol = 1e-11;  // fp64 kernel vs fp64 dense reference: different summation order only

// Inputs, map (with inverse tables), saved forward state, a random dO and the gradients.
struct GradCase {
  Shape shape;
  Config cfg;
  Inputs in;
  MapBuffers map;
  ForwardOutputs fwd;
  HostTensor d_o;
  Gradients grads;
};

void forward_and_backward(GradCase& g, std::mt19937_64& rng, int threads = 2, Layout layout = Layout::bhld) {
  const Shape& s = g.shape;
  const DType dt = g.in.q.dtype;
  g.fwd = alloc_forward(s, dt, true, layout);
  sla::Status st = run_forward(g.in, g.cfg, g.map, g.fwd, threads);
  ASSERT_TRUE(st.ok()) << st.message;
  if (g.d_o.empty()) {
    g.d_o = make_bhld(dt, s.b, s.h, s.lq, s.dv, layout);
    fill_uniform(g.d_o, rng);
  }
  g.grads = alloc_gradients(s, dt, true, true, layout);
  st = run_backward(g.in, g.cfg, g.map, g.fwd, g.d_o, g.grads, threads);
  ASSERT_TRUE(st.ok()) << st.message;
}

GradCase make_case(const Shape& s, const Config& cfg, DType dt, bool weight, bool bias, std::mt19937_64& rng,
                   Layout layout = Layout::bhld) {
  GradCase g;
  g.shape = s;
  g.cfg = cfg;
  g.in = make_inputs(s, dt, rng, weight, bias, layout);
  g.map = alloc_map(map_shape(s, cfg), true);
  const sla::Status st = predict(g.in, cfg, g.map);
  EXPECT_TRUE(st.ok()) << st.message;
  return g;
}

double resolved_scale(const Shape& s, const Config& cfg) { return cfg.scale > 0 ? cfg.scale : 1.0 / std::sqrt(double(s.d)); }

// dW = sum over rows of dO^T O_l and db = column sums of dO, from given O_l (reference or saved).
void expected_projection_grads(const Shape& s, const std::vector<double>& d_o, const std::vector<double>& o_lin,
                               std::vector<double>* dw, std::vector<double>* db) {
  dw->assign(s.dv * s.dv, 0.0);
  db->assign(s.dv, 0.0);
  for (int64_t row = 0; row < s.b * s.h * s.lq; ++row)
    for (int64_t e = 0; e < s.dv; ++e) {
      (*db)[e] += d_o[row * s.dv + e];
      for (int64_t f = 0; f < s.dv; ++f) (*dw)[e * s.dv + f] += d_o[row * s.dv + e] * o_lin[row * s.dv + f];
    }
}


class CpuBackward : public ::testing::TestWithParam<VariantCase> {
 protected:
  Config config(double topk, int bq = 32, int bk = 16) const {
    Config cfg;
    cfg.variant = std::get<0>(GetParam());
    cfg.feature_map = std::get<1>(GetParam());
    cfg.topk = topk;
    cfg.block_q = bq;
    cfg.block_k = bk;
    if (cfg.variant == Variant::complement && topk < 1) cfg.negligible = 0.25;
    return cfg;
  }
  static Shape shape(int64_t b, int64_t h, int64_t lq, int64_t lk, int64_t d, int64_t dv) {
    Shape s;
    s.b = b;
    s.h = h;
    s.lq = lq;
    s.lk = lk;
    s.d = d;
    s.dv = dv;
    return s;
  }
};

// Invariant 1: topk = 1, W = b = 0: dQ, dK, dV equal dense softmax attention's; dW = dO^T O_l, db = colsum dO.
TEST_P(CpuBackward, TopkOneGradientsEqualDenseAttention) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(2, 2, 90, 75, 16, 12);
  GradCase g = make_case(s, config(1.0), DType::f64, true, true, rng);
  g.in.w.fill_storage(0.0);
  g.in.bias.fill_storage(0.0);
  forward_and_backward(g, rng);
  std::vector<double> dq, dk, dv;
  ref::sparse_backward(ref::dims_of(s), g.in.q.logical(), g.in.k.logical(), g.in.v.logical(), g.d_o.logical(),
                       nullptr, 32, 16, resolved_scale(s, g.cfg), &dq, &dk, &dv);
  EXPECT_TRUE(all_close(g.grads.dq.logical(), dq, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(g.grads.dk.logical(), dk, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(g.grads.dv.logical(), dv, kF64Tol, kF64Tol));
  std::vector<double> dw, db;
  expected_projection_grads(s, g.d_o.logical(), g.fwd.o_lin.logical(), &dw, &db);
  EXPECT_TRUE(all_close(g.grads.dw.logical(), dw, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(g.grads.dbias.logical(), db, kF64Tol, kF64Tol));
  if (g.cfg.variant == Variant::complement) {
    for (double x : g.grads.dw.logical()) ASSERT_EQ(x, 0.0);  // O_l is exactly 0
  }
}

// Invariant 2: W = b = 0: dQ, dK, dV are exactly those of the run without any projection (the sparse branch
// alone) and match the masked dense reference; only W and b receive the linear branch's gradient.
TEST_P(CpuBackward, ZeroProjectionGradientsAreTheSparseBranchOnes) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(1, 3, 130, 150, 16, 16);
  GradCase g = make_case(s, config(0.3), DType::f64, true, true, rng);
  g.in.w.fill_storage(0.0);
  g.in.bias.fill_storage(0.0);
  forward_and_backward(g, rng);

  GradCase bare = g;
  bare.in.w = HostTensor();
  bare.in.bias = HostTensor();
  forward_and_backward(bare, rng);
  const std::vector<double> a = g.grads.dq.logical(), b = bare.grads.dq.logical();
  for (size_t x = 0; x < a.size(); ++x) ASSERT_EQ(a[x], b[x]) << "dq " << x;
  const std::vector<double> ak = g.grads.dk.logical(), bk = bare.grads.dk.logical();
  for (size_t x = 0; x < ak.size(); ++x) ASSERT_EQ(ak[x], bk[x]) << "dk " << x;
  const std::vector<double> av = g.grads.dv.logical(), bv = bare.grads.dv.logical();
  for (size_t x = 0; x < av.size(); ++x) ASSERT_EQ(av[x], bv[x]) << "dv " << x;

  const ref::Masks masks = ref::masks_from_tables(g.map, map_shape(s, g.cfg).k_blocks);
  std::vector<double> dq, dk, dv;
  const std::vector<double> q = g.in.q.logical(), k = g.in.k.logical(), v = g.in.v.logical();
  ref::sparse_backward(ref::dims_of(s), q, k, v, g.d_o.logical(), &masks, 32, 16, resolved_scale(s, g.cfg), &dq, &dk,
                       &dv);
  EXPECT_TRUE(all_close(a, dq, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(ak, dk, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(av, dv, kF64Tol, kF64Tol));
  // dW from the reference O_l (not from the saved one).
  const std::vector<double> o_lin =
      ref::linear(ref::dims_of(s), q, k, v, masks, 32, 16, g.cfg.variant, g.cfg.feature_map, g.cfg.eps);
  std::vector<double> dw, db;
  expected_projection_grads(s, g.d_o.logical(), o_lin, &dw, &db);
  EXPECT_TRUE(all_close(g.grads.dw.logical(), dw, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(g.grads.dbias.logical(), db, kF64Tol, kF64Tol));
}

// Invariant 5: every element of dQ, dK, dV, dW, db against central finite differences of
// loss = sum(O * dO), the map held fixed (the predicted map passed back as a caller LUT).
void check_finite_differences(GradCase& g, std::mt19937_64& rng) {
  forward_and_backward(g, rng, 1);
  const Shape& s = g.shape;
  const std::vector<double> weights = g.d_o.logical();
  auto loss = [&]() {
    ForwardOutputs out = alloc_forward(s, DType::f64, false);
    const sla::Status st = run_forward(g.in, g.cfg, g.map, out, 1);
    EXPECT_TRUE(st.ok()) << st.message;
    const std::vector<double> o = out.o.logical();
    double sum = 0;
    for (size_t x = 0; x < o.size(); ++x) sum += o[x] * weights[x];
    return sum;
  };
  const double h = 1e-5;
  // relu is not differentiable at 0: elements of Q and K that a step could carry across 0 are skipped.
  const bool kink = g.cfg.feature_map == FeatureMap::relu;
  struct Target {
    const char* name;
    HostTensor* x;
    const HostTensor* grad;
    bool has_kink;
  };
  const Target targets[] = {{"dq", &g.in.q, &g.grads.dq, kink},
                            {"dk", &g.in.k, &g.grads.dk, kink},
                            {"dv", &g.in.v, &g.grads.dv, false},
                            {"dw", &g.in.w, &g.grads.dw, false},
                            {"db", &g.in.bias, &g.grads.dbias, false}};
  for (const Target& t : targets) {
    std::vector<double> fd, analytic;
    for (int64_t l = 0; l < t.x->numel(); ++l) {
      const int64_t off = t.x->offset_of_linear(l);
      const double x0 = t.x->get_raw(off);
      if (t.has_kink && std::fabs(x0) < 1e-3) continue;
      t.x->set_raw(off, x0 + h);
      const double up = loss();
      t.x->set_raw(off, x0 - h);
      const double down = loss();
      t.x->set_raw(off, x0);
      fd.push_back((up - down) / (2 * h));
      analytic.push_back(t.grad->get_raw(t.grad->offset_of_linear(l)));
    }
    EXPECT_GT(fd.size(), 0u);
    EXPECT_TRUE(all_close(analytic, fd, 1e-7, 1e-6)) << t.name;
  }
}

TEST_P(CpuBackward, FiniteDifferencesPredictedMap) {
  std::mt19937_64 rng(seed_for_current_test());
  GradCase g = make_case(shape(1, 2, 40, 56, 6, 5), config(0.5, 16, 16), DType::f64, true, true, rng);
  check_finite_differences(g, rng);
}

// Fewer query tokens than one query block, ragged key blocks.
TEST_P(CpuBackward, FiniteDifferencesShortSequence) {
  std::mt19937_64 rng(seed_for_current_test());
  GradCase g = make_case(shape(1, 2, 10, 45, 4, 4), config(0.5, 64, 16), DType::f64, true, true, rng);
  check_finite_differences(g, rng);
}

// The same with a caller LUT whose rows have different counts (one row empty), inverted by invert_block_map, and
// a custom scale and eps.
TEST_P(CpuBackward, FiniteDifferencesCallerLut) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(1, 1, 48, 64, 5, 6);
  Config cfg = config(0.5, 16, 16);
  cfg.scale = 0.37;
  cfg.eps = 0.3;  // large enough that a missing or misplaced eps shows in the gradients
  GradCase g;
  g.shape = s;
  g.cfg = cfg;
  g.in = make_inputs(s, DType::f64, rng, true, true);
  const sla::BlockMapShape ms = map_shape(s, cfg);
  g.map = alloc_map(ms, true);
  for (int64_t i = 0; i < ms.q_blocks; ++i) {
    const int64_t n = i % (ms.critical + 1);  // 0, 1, 2, ...
    g.map.count.set({0, 0, i}, double(n));
    for (int64_t e = 0; e < n; ++e) g.map.lut.set({0, 0, i, e}, double((i + 2 * e) % ms.k_blocks));
    if (ms.negligible > 0) {
      // One negligible block not in the critical set (the row's last block index unused by it).
      g.map.negl_count.set({0, 0, i}, 1);
      g.map.negl_lut.set({0, 0, i, 0}, double((i + 2 * n + 1) % ms.k_blocks));
    }
  }
  // Keep the critical entries sorted.
  for (int64_t i = 0; i < ms.q_blocks; ++i) {
    const int64_t n = static_cast<int64_t>(g.map.count.get({0, 0, i}));
    std::vector<double> row(n);
    for (int64_t e = 0; e < n; ++e) row[e] = g.map.lut.get({0, 0, i, e});
    std::sort(row.begin(), row.end());
    for (int64_t e = 0; e < n; ++e) g.map.lut.set({0, 0, i, e}, row[e]);
  }
  const sla::Status st = sla::invert_block_map(g.map.view(), exec_with_threads(1));
  ASSERT_TRUE(st.ok()) << st.message;
  check_finite_differences(g, rng);
}

// T and Tn are the tables' own widths: caller maps wider or narrower than cfg.topk and cfg.negligible say
// (floor(0.5 * 4) = 2 and floor(0.25 * 4) = 1 here) give the gradients of central finite differences.
TEST_P(CpuBackward, FiniteDifferencesCallerMapOfOtherWidths) {
  const bool complement = std::get<0>(GetParam()) == Variant::complement;
  const std::pair<int64_t, int64_t> widths[] = {{3, 1}, {1, 2}};
  for (const auto& [t, tn] : widths) {
    std::mt19937_64 rng(seed_for_current_test(static_cast<uint64_t>(t)));
    const Shape s = shape(1, 2, 48, 64, 5, 6);  // Nq = 3, Nk = 4
    GradCase g;
    g.shape = s;
    g.cfg = config(0.5, 16, 16);
    g.in = make_inputs(s, DType::f64, rng, true, true);
    sla::BlockMapShape ms = map_shape(s, g.cfg);
    ms.critical = t;
    ms.negligible = complement ? tn : 0;
    g.map = random_full_map(ms, true, rng);
    const sla::Status st = sla::invert_block_map(g.map.view(), exec_with_threads(1));
    ASSERT_TRUE(st.ok()) << st.message;
    SCOPED_TRACE("T " + std::to_string(t) + ", Tn " + std::to_string(ms.negligible));
    check_finite_differences(g, rng);
  }
}

// The same widths against the fp64 reference's gradients of the sparse branch (W = b = 0), on a larger problem.
TEST_P(CpuBackward, CallerMapOfOtherWidthsMatchesTheReference) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(1, 2, 130, 150, 16, 16);  // Nq = 5, Nk = 10 (32 x 16 blocks); topk 0.3 gives T = 3
  GradCase g;
  g.shape = s;
  g.cfg = config(0.3);
  g.in = make_inputs(s, DType::f64, rng, true, true);
  g.in.w.fill_storage(0.0);
  g.in.bias.fill_storage(0.0);
  sla::BlockMapShape ms = map_shape(s, g.cfg);
  ASSERT_EQ(ms.k_blocks, 10);
  ms.critical = 6;
  ms.negligible = g.cfg.variant == Variant::complement ? 3 : 0;
  g.map = random_full_map(ms, true, rng);
  const sla::Status st = sla::invert_block_map(g.map.view(), exec_with_threads(1));
  ASSERT_TRUE(st.ok()) << st.message;
  forward_and_backward(g, rng);
  const ref::Masks masks = ref::masks_from_tables(g.map, ms.k_blocks);
  std::vector<double> dq, dk, dv;
  ref::sparse_backward(ref::dims_of(s), g.in.q.logical(), g.in.k.logical(), g.in.v.logical(), g.d_o.logical(), &masks,
                       32, 16, resolved_scale(s, g.cfg), &dq, &dk, &dv);
  EXPECT_TRUE(all_close(g.grads.dq.logical(), dq, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(g.grads.dk.logical(), dk, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(g.grads.dv.logical(), dv, kF64Tol, kF64Tol));
  const std::vector<double> o_lin = ref::linear(ref::dims_of(s), g.in.q.logical(), g.in.k.logical(), g.in.v.logical(),
                                                masks, 32, 16, g.cfg.variant, g.cfg.feature_map, g.cfg.eps);
  std::vector<double> dw, db;
  expected_projection_grads(s, g.d_o.logical(), o_lin, &dw, &db);
  EXPECT_TRUE(all_close(g.grads.dw.logical(), dw, kF64Tol, kF64Tol));
}

// Invariant 6: a ragged problem inside padded NaN-filled buffers: gradients equal those of the exact-size
// contiguous run bit for bit and the gradients' padding keeps its sentinel.
TEST_P(CpuBackward, RaggedPaddedBuffersReadAndWriteOnlyTheTokens) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(1, 2, 300, 270, 8, 8);
  GradCase g = make_case(s, config(0.2, 64, 64), DType::f64, true, true, rng);
  forward_and_backward(g, rng);

  GradCase p = g;
  auto padded = [&](const HostTensor& src, int64_t pad, int64_t extra_rows, Layout layout) {
    HostTensor t = make_bhld(DType::f64, src.shape[0], src.shape[1], src.shape[2], src.shape[3], layout, pad,
                             extra_rows);
    t.fill_storage(std::nan(""));
    t.set_logical(src.logical());
    return t;
  };
  p.in.q = padded(g.in.q, 3, 2, Layout::blhd);
  p.in.k = padded(g.in.k, 1, 5, Layout::bhld);
  p.in.v = padded(g.in.v, 2, 3, Layout::blhd);
  p.fwd.o = padded(g.fwd.o, 5, 1, Layout::bhld);
  p.d_o = padded(g.d_o, 1, 1, Layout::blhd);
  p.grads.dq = make_bhld(DType::f64, s.b, s.h, s.lq, s.d, Layout::bhld, 2, 4);
  p.grads.dk = make_bhld(DType::f64, s.b, s.h, s.lk, s.d, Layout::blhd, 3, 4);
  p.grads.dv = make_bhld(DType::f64, s.b, s.h, s.lk, s.dv, Layout::bhld, 1, 4);
  for (HostTensor* t : {&p.grads.dq, &p.grads.dk, &p.grads.dv}) t->fill_storage(-777.0);
  const sla::Status st = run_backward(p.in, p.cfg, p.map, p.fwd, p.d_o, p.grads);
  ASSERT_TRUE(st.ok()) << st.message;
  for (const HostTensor* t : {&p.grads.dq, &p.grads.dk, &p.grads.dv}) {
    for (int64_t off : t->padding_offsets()) ASSERT_EQ(t->get_raw(off), -777.0) << "offset " << off;
  }
  const std::pair<const HostTensor*, const HostTensor*> pairs[] = {
      {&p.grads.dq, &g.grads.dq}, {&p.grads.dk, &g.grads.dk}, {&p.grads.dv, &g.grads.dv}};
  for (const auto& [x, y] : pairs) {
    const std::vector<double> a = x->logical(), b = y->logical();
    for (size_t e = 0; e < a.size(); ++e) ASSERT_EQ(a[e], b[e]) << e;
  }
  EXPECT_TRUE(bitwise_equal(p.grads.dw, g.grads.dw));
  EXPECT_TRUE(bitwise_equal(p.grads.dbias, g.grads.dbias));
}

// Invariant 8: fp32 gradients are bitwise identical run to run and for any thread count.
TEST_P(CpuBackward, BitwiseIdenticalAcrossRunsAndThreadCounts) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(2, 2, 200, 230, 32, 32);
  GradCase g = make_case(s, config(0.25), DType::f32, true, true, rng);
  forward_and_backward(g, rng, 1);
  for (int threads : {1, 2, 3}) {
    Gradients again = alloc_gradients(s, DType::f32, true, true);
    ASSERT_TRUE(run_backward(g.in, g.cfg, g.map, g.fwd, g.d_o, again, threads).ok());
    EXPECT_TRUE(bitwise_equal(again.dq, g.grads.dq)) << threads << " threads";
    EXPECT_TRUE(bitwise_equal(again.dk, g.grads.dk));
    EXPECT_TRUE(bitwise_equal(again.dv, g.grads.dv));
    EXPECT_TRUE(bitwise_equal(again.dw, g.grads.dw));
    EXPECT_TRUE(bitwise_equal(again.dbias, g.grads.dbias));
  }
}

// (B, H, L, D) and (B, L, H, D) memory give identical gradients.
TEST_P(CpuBackward, LayoutsGiveIdenticalGradients) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(2, 3, 100, 90, 16, 8);
  GradCase a = make_case(s, config(0.3), DType::f64, true, true, rng);
  forward_and_backward(a, rng);
  GradCase b = a;
  b.in.q = make_bhld(DType::f64, s.b, s.h, s.lq, s.d, Layout::blhd);
  b.in.k = make_bhld(DType::f64, s.b, s.h, s.lk, s.d, Layout::blhd);
  b.in.v = make_bhld(DType::f64, s.b, s.h, s.lk, s.dv, Layout::blhd);
  b.d_o = make_bhld(DType::f64, s.b, s.h, s.lq, s.dv, Layout::blhd);
  b.in.q.set_logical(a.in.q.logical());
  b.in.k.set_logical(a.in.k.logical());
  b.in.v.set_logical(a.in.v.logical());
  b.d_o.set_logical(a.d_o.logical());
  forward_and_backward(b, rng, 2, Layout::blhd);
  const std::pair<const HostTensor*, const HostTensor*> pairs[] = {
      {&a.grads.dq, &b.grads.dq}, {&a.grads.dk, &b.grads.dk}, {&a.grads.dv, &b.grads.dv}};
  for (const auto& [x, y] : pairs) {
    const std::vector<double> u = x->logical(), w = y->logical();
    for (size_t e = 0; e < u.size(); ++e) ASSERT_EQ(u[e], w[e]) << e;
  }
  EXPECT_TRUE(bitwise_equal(a.grads.dw, b.grads.dw));
}

INSTANTIATE_TEST_SUITE_P(Variants, CpuBackward, all_variant_cases(), variant_case_name);

// ---- dtypes ------------------------------------------------------------------------------------------------------

// bf16 / fp16 / fp32 gradients are close to the fp64 gradients on the same (rounded) inputs, map and dO. The bound
// is relative to the largest gradient: a few units of the dtype's rounding (the inputs O and dO of the backward
// pass are themselves rounded to the dtype), or fp32 accumulation error for fp32.
class CpuBackwardDtype : public ::testing::TestWithParam<std::tuple<DType, Variant>> {};

TEST_P(CpuBackwardDtype, CloseToF64) {
  const DType dt = std::get<0>(GetParam());
  std::mt19937_64 rng(seed_for_current_test());
  Shape s;
  s.b = 1;
  s.h = 2;
  s.lq = 160;
  s.lk = 200;
  s.d = 64;
  s.dv = 64;
  Config cfg;
  cfg.block_q = 32;
  cfg.block_k = 32;
  cfg.topk = 0.3;
  cfg.variant = std::get<1>(GetParam());
  GradCase low;
  low.shape = s;
  low.cfg = cfg;
  low.in = make_inputs(s, dt, rng, true, true);
  GradCase high = low;
  auto to_f64 = [](const HostTensor& t) {
    HostTensor r = HostTensor::contiguous(DType::f64, t.shape);
    r.set_logical(t.logical());
    return r;
  };
  high.in.q = to_f64(low.in.q);
  high.in.k = to_f64(low.in.k);
  high.in.v = to_f64(low.in.v);
  high.in.w = to_f64(low.in.w);
  high.in.bias = to_f64(low.in.bias);
  high.map = alloc_map(map_shape(s, cfg), true);
  ASSERT_TRUE(predict(high.in, cfg, high.map).ok());
  low.map = high.map;
  low.d_o = make_bhld(dt, s.b, s.h, s.lq, s.dv);
  fill_uniform(low.d_o, rng);
  high.d_o = to_f64(low.d_o);
  forward_and_backward(low, rng);
  forward_and_backward(high, rng);
  const double unit = dt == DType::bf16 ? 1.0 / 256 : dt == DType::f16 ? 1.0 / 2048 : 1e-6;
  const std::pair<const HostTensor*, const HostTensor*> pairs[] = {{&low.grads.dq, &high.grads.dq},
                                                                  {&low.grads.dk, &high.grads.dk},
                                                                  {&low.grads.dv, &high.grads.dv},
                                                                  {&low.grads.dw, &high.grads.dw},
                                                                  {&low.grads.dbias, &high.grads.dbias}};
  for (const auto& [x, y] : pairs) {
    const std::vector<double> want = y->logical();
    double scale = 0;
    for (double w : want) scale = std::max(scale, std::fabs(w));
    EXPECT_TRUE(all_close(x->logical(), want, 8 * unit * scale, 2 * unit)) << "max |grad| " << scale;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CpuBackwardDtype,
                         ::testing::Combine(::testing::Values(DType::f32, DType::bf16, DType::f16),
                                            ::testing::Values(Variant::global, Variant::complement)),
                         [](const ::testing::TestParamInfo<std::tuple<DType, Variant>>& info) {
                           return std::string(sla::dtype_name(std::get<0>(info.param))) + "_" +
                                  sla::variant_name(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace sla_test
