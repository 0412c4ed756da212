// Host check of a block map's contents (map_contents.h says what holds afterwards).
#include "core/map_contents.h"

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace sla {
namespace {

template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream s;
  (s << ... << args);
  return s.str();
}

std::string row_str(int64_t b, int64_t h, int64_t i) { return cat("row (b=", b, ", h=", h, ", i=", i, ")"); }

// One (B, H, Nq, cap) LUT and its (B, H, Nq) counts, contiguous.
struct Table {
  const int32_t* entries = nullptr;
  const int32_t* count = nullptr;
  int64_t cap = 0;
  const char* name = "";
  const char* count_name = "";
  const char* cap_label = "";

  const int32_t* row(int64_t bh, int64_t nq, int64_t i) const { return entries + (bh * nq + i) * cap; }
  int64_t n(int64_t bh, int64_t nq, int64_t i) const { return count[bh * nq + i]; }
};

// Counts in [0, cap]; the first count entries of every row in [0, Nk) and distinct (any order: docs/SPEC.md 7.7
// permutes a LUT row); with `other` (the critical table, when `t` is the negligible one), no entry also in `other`'s
// row. `mark` (Nk entries) remembers, per key block, the last row stamp that held it, so no row clears it.
Status check_rows(const Table& t, const Table* other, int64_t batch, int64_t heads, int64_t nq, int64_t nk,
                  std::vector<int64_t>& mark) {
  int64_t stamp = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t bh = b * heads + h;
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t n = t.n(bh, nq, i);
        if (n < 0 || n > t.cap) {
          return Status::Invalid(cat(t.count_name, ": ", row_str(b, h, i), " is ", n,
                                     "; expected 0 <= count <= ", t.cap_label, " = ", t.cap));
        }
        const int64_t own = 2 * ++stamp, theirs = own + 1;
        if (other != nullptr) {
          const int32_t* o = other->row(bh, nq, i);
          for (int64_t e = 0; e < other->n(bh, nq, i); ++e) mark[o[e]] = theirs;  // checked before: in range
        }
        const int32_t* r = t.row(bh, nq, i);
        for (int64_t e = 0; e < n; ++e) {
          const int32_t j = r[e];
          if (j < 0 || j >= nk) {
            return Status::Invalid(cat(t.name, ": ", row_str(b, h, i), " entry ", e, " is ", j,
                                       "; expected a key-block index in [0, Nk) = [0, ", nk, ")"));
          }
          if (mark[j] == own) {
            return Status::Invalid(cat(t.name, ": ", row_str(b, h, i), " entry ", e, " repeats key block ", j,
                                       "; expected distinct key blocks in each row"));
          }
          if (mark[j] == theirs) {
            return Status::Invalid(cat(t.name, ": ", row_str(b, h, i), " entry ", e, " is key block ", j, ", which ",
                                       other->name,
                                       " also holds; expected the negligible set disjoint "
                                       "from the critical set"));
          }
          mark[j] = own;
        }
      }
    }
  }
  return Status::Ok();
}

// The inverse (CSR) tables of `t` must be exactly what invert_block_map builds: rebuilt here per head (a counting
// sort: key blocks ascending, query blocks ascending within each) and compared entry by entry.
Status check_inverse(const Table& t, const TensorView& offset_view, const TensorView& index_view, const char* off_name,
                     const char* idx_name, int64_t batch, int64_t heads, int64_t nq, int64_t nk) {
  const int32_t* offset = static_cast<const int32_t*>(offset_view.data);
  const int32_t* index = static_cast<const int32_t*>(index_view.data);
  const int64_t len = index_view.shape[2];
  const char* fix = " (build the inverse tables with invert_block_map from the same LUT)";
  std::vector<int64_t> start(nk + 1), fill(nk);
  std::vector<int32_t> expect(len);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t bh = b * heads + h;
      std::fill(start.begin(), start.end(), int64_t(0));
      for (int64_t i = 0; i < nq; ++i) {
        const int32_t* r = t.row(bh, nq, i);
        for (int64_t e = 0; e < t.n(bh, nq, i); ++e) ++start[r[e] + 1];
      }
      for (int64_t j = 0; j < nk; ++j) start[j + 1] += start[j];
      std::copy(start.begin(), start.end() - 1, fill.begin());
      for (int64_t i = 0; i < nq; ++i) {
        const int32_t* r = t.row(bh, nq, i);
        for (int64_t e = 0; e < t.n(bh, nq, i); ++e) expect[fill[r[e]]++] = static_cast<int32_t>(i);
      }
      const int32_t* off = offset + bh * (nk + 1);
      const int32_t* idx = index + bh * len;
      for (int64_t j = 0; j <= nk; ++j) {
        if (off[j] != start[j]) {
          return Status::Invalid(
              cat(off_name, ": (b=", b, ", h=", h, ") entry ", j, " is ", off[j], "; expected ", start[j], fix));
        }
      }
      for (int64_t e = 0; e < start[nk]; ++e) {
        if (idx[e] != expect[e]) {
          return Status::Invalid(
              cat(idx_name, ": (b=", b, ", h=", h, ") entry ", e, " is ", idx[e], "; expected ", expect[e], fix));
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace

Status check_map_contents(const BlockMap& m, int64_t nk, MapInverse inverse) {
  const int64_t batch = m.lut.shape[0], heads = m.lut.shape[1], nq = m.lut.shape[2];
  std::vector<int64_t> mark(nk, 0);
  const Table crit{static_cast<const int32_t*>(m.lut.data),
                   static_cast<const int32_t*>(m.count.data),
                   m.lut.shape[3],
                   "map.lut",
                   "map.count",
                   "T"};
  SLA_RETURN_IF_ERROR(check_rows(crit, nullptr, batch, heads, nq, nk, mark));
  const bool has_negl = m.negl_lut.present() && m.negl_lut.shape[3] > 0;
  Table negl;
  if (has_negl) {
    negl = {static_cast<const int32_t*>(m.negl_lut.data),
            static_cast<const int32_t*>(m.negl_count.data),
            m.negl_lut.shape[3],
            "map.negl_lut",
            "map.negl_count",
            "Tn"};
    std::fill(mark.begin(), mark.end(), int64_t(0));
    SLA_RETURN_IF_ERROR(check_rows(negl, &crit, batch, heads, nq, nk, mark));
  }
  if (inverse == MapInverse::skip) return Status::Ok();
  if (m.inv_offset.present()) {
    SLA_RETURN_IF_ERROR(
        check_inverse(crit, m.inv_offset, m.inv_index, "map.inv_offset", "map.inv_index", batch, heads, nq, nk));
  }
  if (has_negl && m.negl_inv_offset.present()) {
    SLA_RETURN_IF_ERROR(check_inverse(negl, m.negl_inv_offset, m.negl_inv_index, "map.negl_inv_offset",
                                      "map.negl_inv_index", batch, heads, nq, nk));
  }
  return Status::Ok();
}

}  // namespace sla
