// CPU block map (docs/SPEC.md section 1, invariant 9): exact T per row, ties to the lower index, partial blocks pooled
// over their real row count, brute-force agreement, the T clamp, the negligible set and the inverse tables.
#include <gtest/gtest.h>

#include <set>
#include <tuple>

#include "test_util.h"

namespace sla_test {
namespace {

using sla::Config;
using sla::Variant;

// The critical (and negligible) key blocks of every row as sets, checking the table invariants on the way:
// count == expected, entries sorted ascending, distinct and in range.
void expect_well_formed(const MapBuffers& m, const HostTensor& lut, const HostTensor& count, int64_t expected,
                        int64_t nk) {
  for (int64_t b = 0; b < count.shape[0]; ++b)
    for (int64_t h = 0; h < count.shape[1]; ++h)
      for (int64_t i = 0; i < count.shape[2]; ++i) {
        ASSERT_EQ(count.get({b, h, i}), expected) << "row " << b << "," << h << "," << i;
        for (int64_t e = 0; e < expected; ++e) {
          const double j = lut.get({b, h, i, e});
          ASSERT_GE(j, 0);
          ASSERT_LT(j, nk);
          if (e > 0) ASSERT_LT(lut.get({b, h, i, e - 1}), j) << "entries must be sorted and distinct";
        }
      }
  (void)m;
}

void expect_masks_equal(const ref::Masks& got, const ref::Masks& want) {
  ASSERT_EQ(got.crit.size(), want.crit.size());
  for (size_t x = 0; x < got.crit.size(); ++x) {
    ASSERT_EQ(int(got.crit[x]), int(want.crit[x])) << "critical mask differs at row " << x / got.nk << " block "
                                                   << x % got.nk;
    ASSERT_EQ(int(got.negl[x]), int(want.negl[x])) << "negligible mask differs at row " << x / got.nk << " block "
                                                   << x % got.nk;
  }
}

// (lq, lk, bq, bk, topk, negligible)
using MapCase = std::tuple<int64_t, int64_t, int, int, double, double>;

class BlockMapBruteForce : public ::testing::TestWithParam<MapCase> {};

TEST_P(BlockMapBruteForce, MatchesBruteForceRecomputation) {
  const auto [lq, lk, bq, bk, topk, negl] = GetParam();
  std::mt19937_64 rng(seed_for_current_test());
  Shape s;
  s.b = 2;
  s.h = 2;
  s.lq = lq;
  s.lk = lk;
  s.d = 12;
  s.dv = 12;
  Config cfg;
  cfg.block_q = bq;
  cfg.block_k = bk;
  cfg.topk = topk;
  cfg.negligible = negl;
  cfg.variant = negl > 0 ? Variant::complement : Variant::global;
  const Inputs in = make_inputs(s, sla::DType::f64, rng, false, false);
  const sla::BlockMapShape ms = map_shape(s, cfg);
  MapBuffers map = alloc_map(ms, false);
  const sla::Status st = predict(in, cfg, map);
  ASSERT_TRUE(st.ok()) << st.message;

  expect_well_formed(map, map.lut, map.count, ms.critical, ms.k_blocks);
  if (ms.negligible > 0) expect_well_formed(map, map.negl_lut, map.negl_count, ms.negligible, ms.k_blocks);
  const ref::Masks want = ref::block_map(ref::dims_of(s), in.q.logical(), in.k.logical(), bq, bk, ms.critical,
                                         ms.negligible);
  expect_masks_equal(ref::masks_from_tables(map, ms.k_blocks), want);
}

INSTANTIATE_TEST_SUITE_P(Shapes, BlockMapBruteForce,
                         ::testing::Values(MapCase{256, 256, 32, 32, 0.25, 0.0},   // exact blocks
                                           MapCase{250, 301, 32, 16, 0.3, 0.0},    // ragged tails, Lq != Lk
                                           MapCase{100, 333, 64, 16, 0.1, 0.3},    // negligible set
                                           MapCase{70, 40, 16, 16, 1.0, 0.0},      // topk = 1: everything
                                           MapCase{200, 130, 32, 32, 0.4, 0.6}));  // T + Tn = Nk: M_i empty

TEST(CpuBlockMap, TClampGivesOneBlock) {
  // 197 tokens, bk 64, topk 0.2: floor(0.2 * 4) = 0, clamped to 1 (the public code returns NaN here).
  Shape s;
  s.b = 1;
  s.h = 1;
  s.lq = s.lk = 197;
  s.d = s.dv = 8;
  Config cfg;
  cfg.topk = 0.2;
  const sla::BlockMapShape ms = map_shape(s, cfg);
  ASSERT_EQ(ms.k_blocks, 4);
  ASSERT_EQ(ms.critical, 1);
  std::mt19937_64 rng(seed_for_current_test());
  const Inputs in = make_inputs(s, sla::DType::f64, rng, false, false);
  MapBuffers map = alloc_map(ms, false);
  ASSERT_TRUE(predict(in, cfg, map).ok());
  const ref::Masks want = ref::block_map(ref::dims_of(s), in.q.logical(), in.k.logical(), 64, 64, 1, 0);
  expect_masks_equal(ref::masks_from_tables(map, ms.k_blocks), want);
  for (int64_t i = 0; i < ms.q_blocks; ++i) EXPECT_EQ(map.count.get({0, 0, i}), 1);
}

// Every key block gets the same pooled mean, so every score of a row ties: the critical set must be the lowest T
// indices and the negligible set the highest Tn.
TEST(CpuBlockMap, TiesGoToLowerIndexAndNegligibleToHigher) {
  Shape s;
  s.b = 1;
  s.h = 2;
  s.lq = 64;
  s.lk = 160;  // 10 blocks of 16
  s.d = s.dv = 4;
  Config cfg;
  cfg.block_q = 32;
  cfg.block_k = 16;
  cfg.topk = 0.3;
  cfg.negligible = 0.2;
  cfg.variant = Variant::complement;
  std::mt19937_64 rng(seed_for_current_test());
  Inputs in = make_inputs(s, sla::DType::f64, rng, false, false);
  // Within each block the rows differ, but every block holds the same multiset of rows (dyadic values: exact sums).
  for (int64_t h = 0; h < s.h; ++h)
    for (int64_t c = 0; c < s.lk; ++c)
      for (int64_t x = 0; x < s.d; ++x) in.k.set({0, h, c, x}, ((c % 16) * 0.125 - 1.0) * (x + 1));
  // One key block differs on heads 1, so that the lowest index is not simply chosen because it is first.
  for (int64_t c = 16 * 7; c < 16 * 8; ++c) in.k.set({0, 1, c, 0}, 8.0);
  const sla::BlockMapShape ms = map_shape(s, cfg);
  ASSERT_EQ(ms.critical, 3);
  ASSERT_EQ(ms.negligible, 2);
  MapBuffers map = alloc_map(ms, false);
  ASSERT_TRUE(predict(in, cfg, map).ok());
  for (int64_t i = 0; i < ms.q_blocks; ++i) {
    // Head 0: all tie.
    EXPECT_EQ(map.lut.get({0, 0, i, 0}), 0);
    EXPECT_EQ(map.lut.get({0, 0, i, 1}), 1);
    EXPECT_EQ(map.lut.get({0, 0, i, 2}), 2);
    EXPECT_EQ(map.negl_lut.get({0, 0, i, 0}), 8);
    EXPECT_EQ(map.negl_lut.get({0, 0, i, 1}), 9);
  }
  // Head 1: block 7 is above or below the others depending on the sign of the pooled query's first coordinate; the
  // rest tie and fill up from the lowest (critical) or highest (negligible) index.
  const ref::Masks want = ref::block_map(ref::dims_of(s), in.q.logical(), in.k.logical(), 32, 16, 3, 2);
  expect_masks_equal(ref::masks_from_tables(map, ms.k_blocks), want);
}

// Key block 2 holds only 6 rows: pooling must divide by 6, not by the block size 64. With the real count block 2
// has the top score (0.239 against 0.039 for block 0); diluted by 64 it would drop to 0.022, below block 0.
TEST(CpuBlockMap, PartialBlockDividesByRealCount) {
  Shape s;
  s.b = 1;
  s.h = 1;
  s.lq = 64;
  s.lk = 134;
  s.d = s.dv = 2;
  Config cfg;
  cfg.block_q = 64;
  cfg.block_k = 64;
  cfg.topk = 0.34;  // T = 1 of 3
  Inputs in;
  in.q = make_bhld(sla::DType::f64, 1, 1, s.lq, s.d);
  in.k = make_bhld(sla::DType::f64, 1, 1, s.lk, s.d);
  in.v = make_bhld(sla::DType::f64, 1, 1, s.lk, s.dv);
  for (int64_t r = 0; r < s.lq; ++r) in.q.set({0, 0, r, 0}, 1.0);
  for (int64_t c = 0; c < s.lk; ++c) in.k.set({0, 0, c, 0}, c < 64 ? 1.0 : c < 128 ? 0.9 : 1.2);
  const sla::BlockMapShape ms = map_shape(s, cfg);
  ASSERT_EQ(ms.critical, 1);
  MapBuffers map = alloc_map(ms, false);
  ASSERT_TRUE(predict(in, cfg, map).ok());
  EXPECT_EQ(map.lut.get({0, 0, 0, 0}), 2);
}

// Fills the inverse of a table in the most direct way: scan every (i, j).
void expected_inverse(const HostTensor& lut, const HostTensor& count, int64_t nk, int64_t b, int64_t h,
                      std::vector<int64_t>* offset, std::vector<int64_t>* index) {
  offset->assign(1, 0);
  index->clear();
  for (int64_t j = 0; j < nk; ++j) {
    for (int64_t i = 0; i < count.shape[2]; ++i) {
      const int64_t n = static_cast<int64_t>(count.get({b, h, i}));
      for (int64_t e = 0; e < n; ++e) {
        if (lut.get({b, h, i, e}) == j) index->push_back(i);
      }
    }
    offset->push_back(static_cast<int64_t>(index->size()));
  }
}

void expect_inverse(const HostTensor& lut, const HostTensor& count, const HostTensor& inv_offset,
                    const HostTensor& inv_index, int64_t nk) {
  for (int64_t b = 0; b < count.shape[0]; ++b)
    for (int64_t h = 0; h < count.shape[1]; ++h) {
      std::vector<int64_t> offset, index;
      expected_inverse(lut, count, nk, b, h, &offset, &index);
      for (int64_t j = 0; j <= nk; ++j) ASSERT_EQ(inv_offset.get({b, h, j}), offset[j]) << "offset " << j;
      for (size_t e = 0; e < index.size(); ++e) ASSERT_EQ(inv_index.get({b, h, int64_t(e)}), index[e]) << e;
    }
}

TEST(CpuBlockMap, PredictedInverseTablesMatchTheLut) {
  Shape s;
  s.b = 2;
  s.h = 3;
  s.lq = 300;
  s.lk = 200;
  s.d = s.dv = 8;
  Config cfg;
  cfg.block_q = 32;
  cfg.block_k = 16;
  cfg.topk = 0.3;
  cfg.negligible = 0.4;
  cfg.variant = Variant::complement;
  std::mt19937_64 rng(seed_for_current_test());
  const Inputs in = make_inputs(s, sla::DType::f64, rng, false, false);
  const sla::BlockMapShape ms = map_shape(s, cfg);
  MapBuffers map = alloc_map(ms, true);
  ASSERT_TRUE(predict(in, cfg, map).ok());
  expect_inverse(map.lut, map.count, map.inv_offset, map.inv_index, ms.k_blocks);
  expect_inverse(map.negl_lut, map.negl_count, map.negl_inv_offset, map.negl_inv_index, ms.k_blocks);

  // invert_block_map on the predicted LUT reproduces the predicted inverse tables bit for bit.
  MapBuffers again = map;
  for (HostTensor* t : {&again.inv_offset, &again.inv_index, &again.negl_inv_offset, &again.negl_inv_index}) {
    t->fill_storage(-3);
  }
  const sla::Status st = sla::invert_block_map(again.view(), exec_with_threads(3));
  ASSERT_TRUE(st.ok()) << st.message;
  EXPECT_TRUE(bitwise_equal(again.inv_offset, map.inv_offset));
  EXPECT_TRUE(bitwise_equal(again.inv_index, map.inv_index));
  EXPECT_TRUE(bitwise_equal(again.negl_inv_offset, map.negl_inv_offset));
  EXPECT_TRUE(bitwise_equal(again.negl_inv_index, map.negl_inv_index));
}

// A caller-supplied LUT with rows of different counts (0 included): invert_block_map matches the direct inverse.
TEST(CpuBlockMap, InvertCallerLutWithVaryingCounts) {
  Shape s;
  s.b = 1;
  s.h = 2;
  s.lq = 200;
  s.lk = 150;
  s.d = s.dv = 8;
  Config cfg;
  cfg.block_q = 16;
  cfg.block_k = 16;
  cfg.topk = 0.5;
  const sla::BlockMapShape ms = map_shape(s, cfg);
  MapBuffers map = alloc_map(ms, true);
  std::mt19937_64 rng(seed_for_current_test());
  for (int64_t h = 0; h < s.h; ++h)
    for (int64_t i = 0; i < ms.q_blocks; ++i) {
      std::vector<int64_t> all(ms.k_blocks);
      for (int64_t j = 0; j < ms.k_blocks; ++j) all[j] = j;
      std::shuffle(all.begin(), all.end(), rng);
      const int64_t n = static_cast<int64_t>(rng() % (ms.critical + 1));
      std::sort(all.begin(), all.begin() + n);
      map.count.set({0, h, i}, double(n));
      for (int64_t e = 0; e < n; ++e) map.lut.set({0, h, i, e}, double(all[e]));
    }
  const sla::Status st = sla::invert_block_map(map.view(), exec_with_threads(2));
  ASSERT_TRUE(st.ok()) << st.message;
  expect_inverse(map.lut, map.count, map.inv_offset, map.inv_index, ms.k_blocks);
}

TEST(CpuBlockMap, SameTablesForAnyThreadCountAndLayout) {
  Shape s;
  s.b = 2;
  s.h = 3;
  s.lq = 333;
  s.lk = 257;
  s.d = s.dv = 16;
  Config cfg;
  cfg.block_q = 32;
  cfg.block_k = 32;
  cfg.topk = 0.25;
  std::mt19937_64 rng(seed_for_current_test());
  const Inputs in = make_inputs(s, sla::DType::f32, rng, false, false);
  Inputs in_blhd = in;
  in_blhd.q = make_bhld(sla::DType::f32, s.b, s.h, s.lq, s.d, Layout::blhd);
  in_blhd.k = make_bhld(sla::DType::f32, s.b, s.h, s.lk, s.d, Layout::blhd);
  in_blhd.q.set_logical(in.q.logical());
  in_blhd.k.set_logical(in.k.logical());
  const sla::BlockMapShape ms = map_shape(s, cfg);
  MapBuffers first = alloc_map(ms, true);
  ASSERT_TRUE(predict(in, cfg, first, 1).ok());
  for (int threads : {2, 3, 7}) {
    MapBuffers again = alloc_map(ms, true);
    ASSERT_TRUE(predict(in_blhd, cfg, again, threads).ok());
    EXPECT_TRUE(bitwise_equal(first.lut, again.lut)) << threads << " threads";
    EXPECT_TRUE(bitwise_equal(first.count, again.count));
    EXPECT_TRUE(bitwise_equal(first.inv_offset, again.inv_offset));
    EXPECT_TRUE(bitwise_equal(first.inv_index, again.inv_index));
  }
}

// Low-precision inputs produce well-formed tables (count T, sorted, distinct, in range).
class BlockMapDtypes : public ::testing::TestWithParam<sla::DType> {};

TEST_P(BlockMapDtypes, WellFormedTables) {
  Shape s;
  s.b = 1;
  s.h = 2;
  s.lq = 500;
  s.lk = 400;
  s.d = s.dv = 32;
  Config cfg;
  cfg.topk = 0.4;
  cfg.negligible = 0.3;
  cfg.variant = Variant::complement;
  std::mt19937_64 rng(seed_for_current_test());
  const Inputs in = make_inputs(s, GetParam(), rng, false, false);
  const sla::BlockMapShape ms = map_shape(s, cfg);
  MapBuffers map = alloc_map(ms, true);
  ASSERT_TRUE(predict(in, cfg, map).ok());
  expect_well_formed(map, map.lut, map.count, ms.critical, ms.k_blocks);
  expect_well_formed(map, map.negl_lut, map.negl_count, ms.negligible, ms.k_blocks);
  const ref::Masks got = ref::masks_from_tables(map, ms.k_blocks);
  for (size_t x = 0; x < got.crit.size(); ++x) ASSERT_FALSE(got.crit[x] && got.negl[x]) << "sets must be disjoint";
}

INSTANTIATE_TEST_SUITE_P(Dtypes, BlockMapDtypes,
                         ::testing::Values(sla::DType::f32, sla::DType::bf16, sla::DType::f16, sla::DType::f64));

}  // namespace
}  // namespace sla_test
