// CPU forward pass against the dense fp64 references (docs/SPEC.md sections 2-4, invariants 1-4 and 6-8), for both
// variants and all three feature maps, plus layouts, shapes, dtypes and caller-supplied LUTs.
#include <gtest/gtest.h>

#include <tuple>

#include "test_util.h"

namespace sla_test {
namespace {

using sla::Config;
using sla::DType;
using sla::FeatureMap;
using sla::Variant;

constexpr double kF64Tol = 1e-12;  // fp64 kernel vs fp64 dense reference: different summation order only

struct Case {
  Shape shape;
  Config cfg;
  Inputs in;
  MapBuffers map;
  ForwardOutputs out;
};

// Inputs, predicted map, forward with the saved state.
Case run_case(const Shape& s, const Config& cfg, DType dt, bool weight, bool bias, std::mt19937_64& rng,
             Layout layout = Layout::bhld) {
  Case r;
  r.shape = s;
  r.cfg = cfg;
  r.in = make_inputs(s, dt, rng, weight, bias, layout);
  r.map = alloc_map(map_shape(s, cfg), true);
  sla::Status st = predict(r.in, cfg, r.map);
  EXPECT_TRUE(st.ok()) << st.message;
  r.out = alloc_forward(s, dt, true, layout);
  st = run_forward(r.in, cfg, r.map, r.out);
  EXPECT_TRUE(st.ok()) << st.message;
  return r;
}

double resolved_scale(const Shape& s, const Config& cfg) { return cfg.scale > 0 ? cfg.scale : 1.0 / std::sqrt(double(s.d)); }

// The expected O, O_s, O_l and LSE from the dense references for the map the library used.
struct Expected {
  std::vector<double> o, o_sparse, o_lin, lse, lin_h, lin_z;
};

Expected expected_for(const Case& r) {
  const Shape& s = r.shape;
  const ref::Dims dims = ref::dims_of(s);
  const ref::Masks masks = ref::masks_from_tables(r.map, map_shape(s, r.cfg).k_blocks);
  const std::vector<double> q = r.in.q.logical(), k = r.in.k.logical(), v = r.in.v.logical();
  Expected e;
  e.o_sparse = ref::sparse(dims, q, k, v, masks, r.cfg.block_q, r.cfg.block_k, resolved_scale(s, r.cfg), &e.lse);
  e.o_lin = ref::linear(dims, q, k, v, masks, r.cfg.block_q, r.cfg.block_k, r.cfg.variant, r.cfg.feature_map,
                        r.cfg.eps);
  e.o = ref::output(dims, e.o_sparse, e.o_lin, r.in.w.empty() ? std::vector<double>{} : r.in.w.logical(),
                    r.in.bias.empty() ? std::vector<double>{} : r.in.bias.logical());
  // H and z over all keys (the saved state is the global one in both variants).
  e.lin_h.assign(s.b * s.h * s.d * s.dv, 0.0);
  e.lin_z.assign(s.b * s.h * s.d, 0.0);
  for (int64_t bh = 0; bh < s.b * s.h; ++bh)
    for (int64_t c = 0; c < s.lk; ++c) {
      const std::vector<double> a = ref::phi(r.cfg.feature_map, &k[(bh * s.lk + c) * s.d], s.d);
      for (int64_t x = 0; x < s.d; ++x) {
        e.lin_z[bh * s.d + x] += a[x];
        for (int64_t y = 0; y < s.dv; ++y) e.lin_h[(bh * s.d + x) * s.dv + y] += a[x] * v[(bh * s.lk + c) * s.dv + y];
      }
    }
  return e;
}

// ---- parameterised over (variant, feature map) -------------------------------------------------------------------


class CpuForward : public ::testing::TestWithParam<VariantCase> {
 protected:
  Config config(double topk) const {
    Config cfg;
    cfg.variant = std::get<0>(GetParam());
    cfg.feature_map = std::get<1>(GetParam());
    cfg.topk = topk;
    cfg.block_q = 32;
    cfg.block_k = 16;
    if (cfg.variant == Variant::complement) cfg.negligible = 0.2;
    return cfg;
  }
  static Shape shape(int64_t lq, int64_t lk, int64_t d, int64_t dv) {
    Shape s;
    s.b = 2;
    s.h = 2;
    s.lq = lq;
    s.lk = lk;
    s.d = d;
    s.dv = dv;
    return s;
  }
};

// Invariants 3 and 4 and the output formula: O_s, O_l, O, LSE and the saved H, z equal the dense references,
// with ragged tails, Lq != Lk and Dv != D.
TEST_P(CpuForward, MatchesDenseReferences) {
  std::mt19937_64 rng(seed_for_current_test());
  const Case r = run_case(shape(150, 201, 16, 12), config(0.3), DType::f64, true, true, rng);
  const Expected e = expected_for(r);
  EXPECT_TRUE(all_close(r.out.o.logical(), e.o, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(r.out.o_lin.logical(), e.o_lin, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(r.out.lse.logical(), e.lse, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(r.out.lin_h.logical(), e.lin_h, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(r.out.lin_z.logical(), e.lin_z, kF64Tol, kF64Tol));
}

// Invariant 1 (forward): topk = 1, W = b = 0 gives dense softmax attention; the complement's O_l is exactly 0.
TEST_P(CpuForward, TopkOneIsDenseAttention) {
  std::mt19937_64 rng(seed_for_current_test());
  Config cfg = config(1.0);
  cfg.negligible = 0.0;
  const Shape s = shape(90, 77, 16, 16);
  Case r;
  r.shape = s;
  r.cfg = cfg;
  r.in = make_inputs(s, DType::f64, rng, true, true);
  r.in.w.fill_storage(0.0);
  r.in.bias.fill_storage(0.0);
  r.map = alloc_map(map_shape(s, cfg), false);
  ASSERT_TRUE(predict(r.in, cfg, r.map).ok());
  r.out = alloc_forward(s, DType::f64, true);
  ASSERT_TRUE(run_forward(r.in, cfg, r.map, r.out).ok());

  // Dense attention: every block critical, built here without the library's map.
  ref::Masks all;
  all.nq = map_shape(s, cfg).q_blocks;
  all.nk = map_shape(s, cfg).k_blocks;
  all.crit.assign(s.b * s.h * all.nq * all.nk, 1);
  all.negl.assign(all.crit.size(), 0);
  const std::vector<double> dense = ref::sparse(ref::dims_of(s), r.in.q.logical(), r.in.k.logical(),
                                                r.in.v.logical(), all, 32, 16, resolved_scale(s, cfg), nullptr);
  EXPECT_TRUE(all_close(r.out.o.logical(), dense, kF64Tol, kF64Tol));
  if (cfg.variant == Variant::complement) {
    for (double x : r.out.o_lin.logical()) ASSERT_EQ(x, 0.0);
  }
}

// Invariant 2 (forward): with W = b = 0 present, O equals O_s bit for bit, i.e. the run without any projection.
TEST_P(CpuForward, ZeroProjectionGivesSparseOutputExactly) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(130, 130, 16, 16);
  const Config cfg = config(0.25);
  Inputs in = make_inputs(s, DType::f64, rng, true, true);
  in.w.fill_storage(0.0);
  in.bias.fill_storage(0.0);
  Inputs bare = in;
  bare.w = HostTensor();
  bare.bias = HostTensor();
  MapBuffers map = alloc_map(map_shape(s, cfg), false);
  ASSERT_TRUE(predict(in, cfg, map).ok());
  ForwardOutputs with_zero = alloc_forward(s, DType::f64, true), without = alloc_forward(s, DType::f64, false);
  ASSERT_TRUE(run_forward(in, cfg, map, with_zero).ok());
  ASSERT_TRUE(run_forward(bare, cfg, map, without).ok());
  const std::vector<double> a = with_zero.o.logical(), b = without.o.logical();
  for (size_t x = 0; x < a.size(); ++x) ASSERT_EQ(a[x], b[x]) << x;
  const ref::Masks masks = ref::masks_from_tables(map, map_shape(s, cfg).k_blocks);
  EXPECT_TRUE(all_close(a, ref::sparse(ref::dims_of(s), in.q.logical(), in.k.logical(), in.v.logical(), masks, 32, 16,
                                       resolved_scale(s, cfg), nullptr),
                        kF64Tol, kF64Tol));
}

// Invariant 6: a ragged problem (L not a multiple of any block) stored inside larger padded buffers whose padding
// is NaN: the result equals the references on exactly those tokens, nothing NaN leaks in (padding is not read)
// and the output's padding keeps its sentinel (nothing past the end is written).
TEST_P(CpuForward, RaggedPaddedBuffersReadAndWriteOnlyTheTokens) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(1000, 1000, 8, 8);
  Config cfg = config(0.1);
  cfg.block_q = 64;
  cfg.block_k = 64;
  Case r;
  r.shape = s;
  r.cfg = cfg;
  const Inputs dense_in = make_inputs(s, DType::f64, rng, true, true);
  r.in = dense_in;
  r.in.q = make_bhld(DType::f64, s.b, s.h, s.lq, s.d, Layout::blhd, 3, 5);
  r.in.k = make_bhld(DType::f64, s.b, s.h, s.lk, s.d, Layout::bhld, 2, 7);
  r.in.v = make_bhld(DType::f64, s.b, s.h, s.lk, s.dv, Layout::blhd, 1, 9);
  for (HostTensor* t : {&r.in.q, &r.in.k, &r.in.v}) t->fill_storage(std::nan(""));
  r.in.q.set_logical(dense_in.q.logical());
  r.in.k.set_logical(dense_in.k.logical());
  r.in.v.set_logical(dense_in.v.logical());
  r.map = alloc_map(map_shape(s, cfg), false);
  ASSERT_TRUE(predict(r.in, cfg, r.map).ok());
  r.out = alloc_forward(s, DType::f64, true);
  r.out.o = make_bhld(DType::f64, s.b, s.h, s.lq, s.dv, Layout::bhld, 4, 64);
  r.out.o.fill_storage(-12345.0);
  ASSERT_TRUE(run_forward(r.in, cfg, r.map, r.out).ok());

  for (int64_t off : r.out.o.padding_offsets()) ASSERT_EQ(r.out.o.get_raw(off), -12345.0) << "offset " << off;
  const Expected e = expected_for(r);
  EXPECT_TRUE(all_close(r.out.o.logical(), e.o, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(r.out.lse.logical(), e.lse, kF64Tol, kF64Tol));
  // The same problem in exact-size contiguous buffers gives the same bits.
  MapBuffers map2 = alloc_map(map_shape(s, cfg), false);
  ASSERT_TRUE(predict(dense_in, cfg, map2).ok());
  EXPECT_TRUE(bitwise_equal(r.map.lut, map2.lut));
  ForwardOutputs out2 = alloc_forward(s, DType::f64, true);
  ASSERT_TRUE(run_forward(dense_in, cfg, map2, out2).ok());
  const std::vector<double> a = r.out.o.logical(), b = out2.o.logical();
  for (size_t x = 0; x < a.size(); ++x) ASSERT_EQ(a[x], b[x]) << x;
}

// Invariant 7: permuting the entries of each LUT row changes O only by rounding; scaling V by c scales O_s and
// O_l by c.
TEST_P(CpuForward, LutOrderAndValueScaling) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(128, 160, 16, 8);
  const Config cfg = config(0.5);
  Case r = run_case(s, cfg, DType::f64, false, false, rng);  // no W, b: O is O_s

  MapBuffers permuted = r.map;
  const sla::BlockMapShape ms = map_shape(s, cfg);
  for (int64_t b = 0; b < s.b; ++b)
    for (int64_t h = 0; h < s.h; ++h)
      for (int64_t i = 0; i < ms.q_blocks; ++i) {
        std::vector<double> row(ms.critical);
        for (int64_t e = 0; e < ms.critical; ++e) row[e] = r.map.lut.get({b, h, i, e});
        std::reverse(row.begin(), row.end());
        std::rotate(row.begin(), row.begin() + (i % ms.critical), row.end());
        for (int64_t e = 0; e < ms.critical; ++e) permuted.lut.set({b, h, i, e}, row[e]);
      }
  ForwardOutputs out_perm = alloc_forward(s, DType::f64, true);
  ASSERT_TRUE(run_forward(r.in, cfg, permuted, out_perm).ok());
  EXPECT_TRUE(all_close(out_perm.o.logical(), r.out.o.logical(), 1e-14, 1e-13));
  EXPECT_TRUE(all_close(out_perm.o_lin.logical(), r.out.o_lin.logical(), 0, 0));  // O_l does not use the order

  const double c = 2.75;
  Inputs scaled = r.in;
  std::vector<double> v = r.in.v.logical();
  for (double& x : v) x *= c;
  scaled.v.set_logical(v);
  ForwardOutputs out_scaled = alloc_forward(s, DType::f64, true);
  ASSERT_TRUE(run_forward(scaled, cfg, r.map, out_scaled).ok());
  std::vector<double> os = r.out.o.logical(), ol = r.out.o_lin.logical();
  for (double& x : os) x *= c;
  for (double& x : ol) x *= c;
  EXPECT_TRUE(all_close(out_scaled.o.logical(), os, 1e-14, 1e-13));
  EXPECT_TRUE(all_close(out_scaled.o_lin.logical(), ol, 1e-14, 1e-13));
}

// Invariant 8: two runs, and runs with different thread counts, are bitwise identical (fp32, the production path).
TEST_P(CpuForward, BitwiseIdenticalAcrossRunsAndThreadCounts) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(300, 260, 32, 32);
  const Config cfg = config(0.2);
  const Case r = run_case(s, cfg, DType::f32, true, true, rng);
  for (int threads : {1, 2, 2, 5, 64}) {
    ForwardOutputs again = alloc_forward(s, DType::f32, true);
    ASSERT_TRUE(run_forward(r.in, cfg, r.map, again, threads).ok());
    EXPECT_TRUE(bitwise_equal(again.o, r.out.o)) << threads << " threads";
    EXPECT_TRUE(bitwise_equal(again.lse, r.out.lse));
    EXPECT_TRUE(bitwise_equal(again.o_lin, r.out.o_lin));
    EXPECT_TRUE(bitwise_equal(again.lin_h, r.out.lin_h));
    EXPECT_TRUE(bitwise_equal(again.lin_z, r.out.lin_z));
  }
}

// (B, H, L, D) and (B, L, H, D) memory give identical results.
TEST_P(CpuForward, LayoutsGiveIdenticalResults) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(111, 97, 16, 16);
  const Config cfg = config(0.3);
  const Case a = run_case(s, cfg, DType::f64, true, true, rng);
  Case b;
  b.in = a.in;
  b.in.q = make_bhld(DType::f64, s.b, s.h, s.lq, s.d, Layout::blhd);
  b.in.k = make_bhld(DType::f64, s.b, s.h, s.lk, s.d, Layout::blhd);
  b.in.v = make_bhld(DType::f64, s.b, s.h, s.lk, s.dv, Layout::blhd);
  b.in.q.set_logical(a.in.q.logical());
  b.in.k.set_logical(a.in.k.logical());
  b.in.v.set_logical(a.in.v.logical());
  b.map = alloc_map(map_shape(s, cfg), false);
  ASSERT_TRUE(predict(b.in, cfg, b.map).ok());
  EXPECT_TRUE(bitwise_equal(a.map.lut, b.map.lut));
  b.out = alloc_forward(s, DType::f64, true, Layout::blhd);
  ASSERT_TRUE(run_forward(b.in, cfg, b.map, b.out).ok());
  const std::vector<double> x = a.out.o.logical(), y = b.out.o.logical();
  for (size_t e = 0; e < x.size(); ++e) ASSERT_EQ(x[e], y[e]) << e;
}

// A caller LUT whose rows hold different counts (0 included), a custom scale and eps: the references with the same
// (token-expanded) mask agree. Rows with count 0 have O_s = 0 and LSE = -inf.
TEST_P(CpuForward, CallerLutWithVaryingCounts) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(160, 144, 16, 16);
  Config cfg = config(0.5);
  cfg.scale = 0.37;
  cfg.eps = 0.3;  // large enough that a missing or misplaced eps shows
  const sla::BlockMapShape ms = map_shape(s, cfg);
  Case r;
  r.shape = s;
  r.cfg = cfg;
  r.in = make_inputs(s, DType::f64, rng, true, true);
  r.map = alloc_map(ms, false);
  for (int64_t b = 0; b < s.b; ++b)
    for (int64_t h = 0; h < s.h; ++h)
      for (int64_t i = 0; i < ms.q_blocks; ++i) {
        std::vector<int64_t> perm(ms.k_blocks);
        for (int64_t j = 0; j < ms.k_blocks; ++j) perm[j] = j;
        std::shuffle(perm.begin(), perm.end(), rng);
        const int64_t n = i == 0 ? 0 : static_cast<int64_t>(rng() % (ms.critical + 1));
        std::sort(perm.begin(), perm.begin() + n);
        r.map.count.set({b, h, i}, double(n));
        for (int64_t e = 0; e < n; ++e) r.map.lut.set({b, h, i, e}, double(perm[e]));
        if (ms.negligible > 0) {
          const int64_t nn = static_cast<int64_t>(rng() % (ms.negligible + 1));
          std::sort(perm.begin() + n, perm.begin() + n + nn);
          r.map.negl_count.set({b, h, i}, double(nn));
          for (int64_t e = 0; e < nn; ++e) r.map.negl_lut.set({b, h, i, e}, double(perm[n + e]));
        }
      }
  r.out = alloc_forward(s, DType::f64, true);
  ASSERT_TRUE(run_forward(r.in, cfg, r.map, r.out).ok());
  const Expected e = expected_for(r);
  EXPECT_TRUE(all_close(r.out.o.logical(), e.o, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(r.out.o_lin.logical(), e.o_lin, kF64Tol, kF64Tol));
  for (int64_t b = 0; b < s.b; ++b)
    for (int64_t h = 0; h < s.h; ++h) EXPECT_EQ(r.out.lse.get({b, h, 0}), -std::numeric_limits<double>::infinity());
}

// T and Tn are the tables' own widths: caller maps wider or narrower than cfg.topk and cfg.negligible say
// (floor(0.5 * 9) = 4 and floor(0.2 * 9) = 1 here) run and match the references on their own masks.
TEST_P(CpuForward, CallerMapWidthsNeedNotFollowTopk) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(160, 144, 16, 16);  // Nq = 5, Nk = 9
  const Config cfg = config(0.5);
  const bool complement = cfg.variant == Variant::complement;
  const std::pair<int64_t, int64_t> widths[] = {{1, 3}, {7, 2}, {9, 0}, {5, 4}};
  for (const auto& [t, tn] : widths) {
    sla::BlockMapShape ms = map_shape(s, cfg);
    ASSERT_EQ(ms.k_blocks, 9);
    ms.critical = t;
    ms.negligible = complement ? tn : 0;
    Case r;
    r.shape = s;
    r.cfg = cfg;
    r.in = make_inputs(s, DType::f64, rng, true, true);
    r.map = random_full_map(ms, false, rng);
    r.out = alloc_forward(s, DType::f64, true);
    const sla::Status st = run_forward(r.in, cfg, r.map, r.out);
    ASSERT_TRUE(st.ok()) << "T " << t << ", Tn " << ms.negligible << ": " << st.message;
    const Expected e = expected_for(r);
    EXPECT_TRUE(all_close(r.out.o.logical(), e.o, kF64Tol, kF64Tol)) << "T " << t << ", Tn " << ms.negligible;
    EXPECT_TRUE(all_close(r.out.o_lin.logical(), e.o_lin, kF64Tol, kF64Tol)) << "T " << t << ", Tn " << ms.negligible;
    EXPECT_TRUE(all_close(r.out.lse.logical(), e.lse, kF64Tol, kF64Tol)) << "T " << t << ", Tn " << ms.negligible;
  }
}

// Widths outside [1, Nk] and [0, Nk - T], and negligible tables with the global variant, are argument errors.
TEST_P(CpuForward, CallerMapWidthsOutOfRangeAreRejected) {
  std::mt19937_64 rng(seed_for_current_test());
  const Shape s = shape(160, 144, 16, 16);  // Nq = 5, Nk = 9
  const Config cfg = config(0.5);
  const Inputs in = make_inputs(s, DType::f64, rng, false, false);
  const ForwardOutputs out = alloc_forward(s, DType::f64, false);
  sla::BlockMapShape ms = map_shape(s, cfg);
  ms.negligible = 0;
  ms.critical = 10;
  sla::Status st = run_forward(in, cfg, alloc_map(ms, false), out);
  EXPECT_EQ(st.code, sla::StatusCode::invalid_argument);
  EXPECT_NE(st.message.find("map.lut: expected last dimension T in [1, Nk = 9], got 10"), std::string::npos)
      << st.message;
  ms.critical = 6;
  ms.negligible = 4;
  st = run_forward(in, cfg, alloc_map(ms, false), out);
  EXPECT_EQ(st.code, sla::StatusCode::invalid_argument);
  const std::string expected = cfg.variant == Variant::complement
                                   ? "map.negl_lut: expected last dimension Tn in [0, Nk - T = 9 - 6 = 3], got 4"
                                   : "map.negl_lut: expected absent for the global variant";
  EXPECT_NE(st.message.find(expected), std::string::npos) << st.message;
}

// L smaller than one block, on both sides.
TEST_P(CpuForward, SequenceShorterThanOneBlock) {
  std::mt19937_64 rng(seed_for_current_test());
  Config cfg = config(0.5);
  cfg.block_q = 64;
  cfg.block_k = 128;
  const Case r = run_case(shape(10, 23, 8, 4), cfg, DType::f64, true, true, rng);
  const Expected e = expected_for(r);
  EXPECT_TRUE(all_close(r.out.o.logical(), e.o, kF64Tol, kF64Tol));
  EXPECT_TRUE(all_close(r.out.o_lin.logical(), e.o_lin, kF64Tol, kF64Tol));
}

INSTANTIATE_TEST_SUITE_P(Variants, CpuForward, all_variant_cases(), variant_case_name);

// ---- dtypes ------------------------------------------------------------------------------------------------------

// bf16 / fp16 / fp32 inputs: the output is close to the fp64 result on the same (rounded) inputs and the same map.
// Bounds: a few units of the dtype's rounding of O, plus fp32 accumulation (~1e-6) for fp32.
class CpuForwardDtype : public ::testing::TestWithParam<std::tuple<DType, Variant>> {};

TEST_P(CpuForwardDtype, CloseToF64) {
  const DType dt = std::get<0>(GetParam());
  std::mt19937_64 rng(seed_for_current_test());
  Shape s;
  s.b = 1;
  s.h = 3;
  s.lq = 200;
  s.lk = 180;
  s.d = 64;
  s.dv = 64;
  Config cfg;
  cfg.block_q = 32;
  cfg.block_k = 32;
  cfg.topk = 0.3;
  cfg.variant = std::get<1>(GetParam());
  const Inputs low = make_inputs(s, dt, rng, true, true);
  Inputs high;
  high.q = make_bhld(DType::f64, s.b, s.h, s.lq, s.d);
  high.k = make_bhld(DType::f64, s.b, s.h, s.lk, s.d);
  high.v = make_bhld(DType::f64, s.b, s.h, s.lk, s.dv);
  high.w = HostTensor::contiguous(DType::f64, {s.dv, s.dv});
  high.bias = HostTensor::contiguous(DType::f64, {s.dv});
  high.q.set_logical(low.q.logical());
  high.k.set_logical(low.k.logical());
  high.v.set_logical(low.v.logical());
  high.w.set_logical(low.w.logical());
  high.bias.set_logical(low.bias.logical());
  MapBuffers map = alloc_map(map_shape(s, cfg), false);
  ASSERT_TRUE(predict(high, cfg, map).ok());  // one map for both runs
  ForwardOutputs out_low = alloc_forward(s, dt, true), out_high = alloc_forward(s, DType::f64, true);
  ASSERT_TRUE(run_forward(low, cfg, map, out_low).ok());
  ASSERT_TRUE(run_forward(high, cfg, map, out_high).ok());
  const double unit = dt == DType::bf16 ? 1.0 / 256 : dt == DType::f16 ? 1.0 / 2048 : 1.0 / (1 << 23);
  const double tol = dt == DType::f32 ? 1e-5 : 2 * unit;
  EXPECT_TRUE(all_close(out_low.o.logical(), out_high.o.logical(), tol, tol));
  EXPECT_TRUE(all_close(out_low.o_lin.logical(), out_high.o_lin.logical(), 1e-5, 1e-5));  // fp32 state
  EXPECT_TRUE(all_close(out_low.lse.logical(), out_high.lse.logical(), 1e-5, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CpuForwardDtype,
                         ::testing::Combine(::testing::Values(DType::f32, DType::bf16, DType::f16),
                                            ::testing::Values(Variant::global, Variant::complement)),
                         [](const ::testing::TestParamInfo<std::tuple<DType, Variant>>& info) {
                           return std::string(sla::dtype_name(std::get<0>(info.param))) + "_" +
                                  sla::variant_name(std::get<1>(info.param));
                         });

// Complement, relu: a query block whose rows are all negative has phi(q) = 0, so the denominator is 0 and the
// row's O_l must be exactly 0 (the public code divides by zero there).
TEST(CpuForwardComplement, ZeroDenominatorGivesZeroRow) {
  std::mt19937_64 rng(seed_for_current_test());
  Shape s;
  s.b = 1;
  s.h = 1;
  s.lq = 64;
  s.lk = 128;
  s.d = s.dv = 8;
  Config cfg;
  cfg.block_q = 32;
  cfg.block_k = 32;
  cfg.topk = 0.25;
  cfg.variant = Variant::complement;
  cfg.feature_map = FeatureMap::relu;
  Inputs in = make_inputs(s, DType::f64, rng, true, true);
  for (int64_t r = 0; r < 32; ++r)
    for (int64_t x = 0; x < s.d; ++x) in.q.set({0, 0, r, x}, -std::fabs(in.q.get({0, 0, r, x})) - 0.01);
  MapBuffers map = alloc_map(map_shape(s, cfg), false);
  ASSERT_TRUE(predict(in, cfg, map).ok());
  ForwardOutputs out = alloc_forward(s, DType::f64, true);
  ASSERT_TRUE(run_forward(in, cfg, map, out).ok());
  for (int64_t r = 0; r < 32; ++r)
    for (int64_t x = 0; x < s.dv; ++x) ASSERT_EQ(out.o_lin.get({0, 0, r, x}), 0.0);
  bool any_nonzero = false;
  for (int64_t r = 32; r < 64; ++r) any_nonzero |= out.o_lin.get({0, 0, r, 0}) != 0.0;
  EXPECT_TRUE(any_nonzero);
}

// Inference: without the saved state only O is written, and it equals the training run's O bit for bit.
TEST(CpuForwardInference, WithoutSavedStateSameOutput) {
  std::mt19937_64 rng(seed_for_current_test());
  Shape s;
  s.lq = 100;
  s.lk = 120;
  for (Variant variant : {Variant::global, Variant::complement}) {
    Config cfg;
    cfg.block_q = cfg.block_k = 16;
    cfg.topk = 0.3;
    cfg.variant = variant;
    const Inputs in = make_inputs(s, DType::f32, rng, true, true);
    MapBuffers map = alloc_map(map_shape(s, cfg), false);
    ASSERT_TRUE(predict(in, cfg, map).ok());
    ForwardOutputs train = alloc_forward(s, DType::f32, true), infer = alloc_forward(s, DType::f32, false);
    ASSERT_TRUE(run_forward(in, cfg, map, train).ok());
    ASSERT_TRUE(run_forward(in, cfg, map, infer).ok());
    EXPECT_TRUE(bitwise_equal(train.o, infer.o));
  }
}

// NaN in the data is not an argument error (validate.h): it propagates to the outputs it touches and nowhere
// else, and the call neither fails nor crashes.
TEST(CpuForwardNonFinite, NaNPropagatesOnlyWhereItIsUsed) {
  std::mt19937_64 rng(seed_for_current_test());
  Shape s;
  s.b = 1;
  s.h = 2;
  s.lq = 64;
  s.lk = 64;
  Config cfg;
  cfg.block_q = cfg.block_k = 32;
  cfg.topk = 0.5;
  Inputs in = make_inputs(s, DType::f32, rng, true, true);
  in.q.set({0, 1, 5, 3}, std::nan(""));  // head 1, query block 0
  MapBuffers map = alloc_map(map_shape(s, cfg), true);
  ASSERT_TRUE(predict(in, cfg, map).ok());
  ForwardOutputs out = alloc_forward(s, DType::f32, true);
  ASSERT_TRUE(run_forward(in, cfg, map, out).ok());
  EXPECT_TRUE(std::isnan(out.o.get({0, 1, 5, 0})));
  for (int64_t r = 0; r < s.lq; ++r) {
    for (int64_t e = 0; e < s.dv; ++e) ASSERT_TRUE(std::isfinite(out.o.get({0, 0, r, e}))) << "head 0 row " << r;
  }
  for (int64_t r = 32; r < s.lq; ++r) ASSERT_TRUE(std::isfinite(out.o.get({0, 1, r, 0}))) << "head 1 row " << r;
}

}  // namespace
}  // namespace sla_test
