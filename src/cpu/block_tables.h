// Read access to the block map tables (LUT, counts, negligible set) for the forward and backward passes, and the
// construction of the inverse tables shared by predict_block_map and invert_block_map.
//
// api.cpp checks a map's contents on the host before the CPU forward and backward (core/map_contents.h). The
// clamps and skips below stay as a second line of defence (and serve invert_block_map, whose input is checked
// too): counts are clamped to [0, capacity] and entries outside [0, Nk) skipped, never read out of bounds.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/backend.h"
#include "cpu/tensor_access.h"

namespace sla {
namespace cpu {

// One table of key-block indices per (b, h, query block): the critical LUT or the negligible set.
struct KeyBlockTable {
  Rows4<const int32_t> entries;  // (B, H, Nq, capacity)
  Elems3<const int32_t> count;   // (B, H, Nq)
  int64_t capacity = 0;          // T or Tn; 0 means the table is absent
  int64_t k_blocks = 0;          // Nk

  bool present() const { return capacity > 0; }

  int64_t row_count(int64_t b, int64_t h, int64_t i) const {
    if (capacity == 0) return 0;
    return std::clamp<int64_t>(count.at(b, h, i), 0, capacity);
  }

  // Calls fn(j) for every valid key block j of row (b, h, i), in table order.
  template <class Fn>
  void for_each(int64_t b, int64_t h, int64_t i, Fn&& fn) const {
    const int64_t n = row_count(b, h, i);
    const int32_t* row = entries.row(b, h, i);
    for (int64_t e = 0; e < n; ++e) {
      const int64_t j = row[e];
      if (j >= 0 && j < k_blocks) fn(j);
    }
  }
};

inline KeyBlockTable critical_table(const BlockMap& map, int64_t k_blocks) {
  KeyBlockTable t;
  if (!map.lut.present() || map.lut.shape[3] == 0) return t;
  t.entries = rows4<const int32_t>(map.lut);
  t.count = elems3<const int32_t>(map.count);
  t.capacity = map.lut.shape[3];
  t.k_blocks = k_blocks;
  return t;
}

inline KeyBlockTable negligible_table(const BlockMap& map, int64_t k_blocks) {
  KeyBlockTable t;
  if (!map.negl_lut.present() || !map.negl_count.present() || map.negl_lut.shape[3] == 0) return t;
  t.entries = rows4<const int32_t>(map.negl_lut);
  t.count = elems3<const int32_t>(map.negl_count);
  t.capacity = map.negl_lut.shape[3];
  t.k_blocks = k_blocks;
  return t;
}

// Fills the inverse (CSR) table of `table` for one (b, h): the query blocks i whose row holds key block j are
// index[offset[j] : offset[j+1]], ascending. Index entries past the last offset are set to -1.
// `fill` is scratch of at least Nk entries.
inline void invert_table_head(const KeyBlockTable& table, int64_t q_blocks, int64_t b, int64_t h,
                              const Elems3<int32_t>& offset, const Elems3<int32_t>& index, int64_t index_len,
                              int64_t* fill) {
  const int64_t nk = table.k_blocks;
  std::fill(fill, fill + nk, int64_t(0));
  for (int64_t i = 0; i < q_blocks; ++i) table.for_each(b, h, i, [&](int64_t j) { ++fill[j]; });
  int64_t total = 0;
  for (int64_t j = 0; j < nk; ++j) {
    offset.at(b, h, j) = static_cast<int32_t>(total);
    const int64_t n = fill[j];
    fill[j] = total;
    total += n;
  }
  offset.at(b, h, nk) = static_cast<int32_t>(total);
  for (int64_t i = 0; i < q_blocks; ++i) {
    table.for_each(b, h, i, [&](int64_t j) { index.at(b, h, fill[j]++) = static_cast<int32_t>(i); });
  }
  for (int64_t e = total; e < index_len; ++e) index.at(b, h, e) = -1;
}

}  // namespace cpu
}  // namespace sla

namespace sla {
namespace cpu {

// mask[j] = 1 for the marginal key blocks of row (b, h, i): neither critical nor negligible (complement variant).
// Returns how many there are.
inline int64_t marginal_mask(const KeyBlockTable& critical, const KeyBlockTable& negligible, int64_t b, int64_t h,
                             int64_t i, int64_t k_blocks, uint8_t* mask) {
  std::fill(mask, mask + k_blocks, uint8_t(1));
  critical.for_each(b, h, i, [&](int64_t j) { mask[j] = 0; });
  negligible.for_each(b, h, i, [&](int64_t j) { mask[j] = 0; });
  int64_t n = 0;
  for (int64_t j = 0; j < k_blocks; ++j) n += mask[j];
  return n;
}

}  // namespace cpu
}  // namespace sla
