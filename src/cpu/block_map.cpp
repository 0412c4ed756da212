// CPU block map (docs/SPEC.md section 1): smooth-K, mean pooling, block scores, the critical and negligible sets, and
// the inverse tables. One task per (b, h); a task's result depends only on its inputs, so any thread count gives
// the same tables.
//
// Choices the SPEC leaves open, fixed here:
// - Pooling and scores accumulate in the accumulation type: fp32 for fp32/bf16/fp16 inputs as the SPEC says, and
//   fp64 for fp64 inputs so that the fp64 oracle's map is not perturbed by fp32 rounding.
// - A NaN score ranks below every number (it is treated as -inf), so it is never critical before a finite score.
// - The negligible set is the Tn smallest scores outside the critical set, ties going to the HIGHER index: the
//   exact mirror of the critical rule. Both sets come from one total order (score descending, index ascending):
//   the critical set is its first T entries and the negligible set its last Tn entries, so they are disjoint.
// - The adaptive rules (docs/BLOCK_MAP.md) read the same total order: the top_p count is the first prefix of it
//   whose fp64 cumulative weight reaches p times the row's weight total; the threshold rule's negligible set is the
//   longest suffix of it whose weights are below threshold times the total (capped). Entries past a row's count are
//   -1, so the tables do not depend on what the buffers held before.
// - Host scratch is std::vector, so the *_workspace functions return 0.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/backend.h"
#include "core/validate.h"
#include "cpu/block_tables.h"
#include "cpu/dispatch.h"
#include "cpu/parallel.h"
#include "cpu/tensor_access.h"

namespace sla {
namespace cpu {
namespace {

struct MapOutputs {
  Rows4<int32_t> lut;
  Elems3<int32_t> count;
  Rows4<int32_t> negl_lut;
  Elems3<int32_t> negl_count;
  int64_t critical = 0;    // T, the LUT width
  int64_t negligible = 0;  // Tn, the negligible table width (0: no negligible tables are written)
};

// The count of a row under the top_p rule: the fewest entries of `order` whose weights, added in that order in
// fp64, reach p times the total (the total is added in index order), clamped to [min_count, max_count].
int64_t top_p_count(const std::vector<int32_t>& order, const std::vector<double>& weight, double total,
                    const RowRule& rule) {
  const double target = rule.p * total;
  const int64_t nk = static_cast<int64_t>(order.size());
  double cum = 0.0;
  int64_t n = 0;
  while (n < nk) {
    cum += weight[order[n]];
    ++n;
    if (cum >= target) break;
  }
  return std::clamp(n, rule.min_count, rule.max_count);
}

// Writes `n` entries of `order` starting at `first`, ascending, then -1 up to `width`.
void write_row(const std::vector<int32_t>& order, int64_t first, int64_t n, int64_t width, int32_t* row) {
  std::copy(order.begin() + first, order.begin() + first + n, row);
  std::sort(row, row + n);
  std::fill(row + n, row + width, int32_t{-1});
}

// Mean of the rows [r0, r1) of x (each row minus `center` when given), accumulated in Acc in row order.
template <class Acc, class T>
void pool_block(const Rows4<const T>& x, int64_t b, int64_t h, int64_t r0, int64_t r1, int64_t d, const Acc* center,
                Acc* row_scratch, Acc* mean) {
  std::fill(mean, mean + d, Acc(0));
  for (int64_t r = r0; r < r1; ++r) {
    load_row(x.row(b, h, r), d, row_scratch);
    if (center != nullptr) {
      for (int64_t c = 0; c < d; ++c) mean[c] += row_scratch[c] - center[c];
    } else {
      for (int64_t c = 0; c < d; ++c) mean[c] += row_scratch[c];
    }
  }
  // The real row count: a partial (ragged) block is not diluted by rows that do not exist.
  const Acc inv = Acc(1) / static_cast<Acc>(r1 - r0);
  for (int64_t c = 0; c < d; ++c) mean[c] *= inv;
}

template <class Acc, class T>
void predict_head(const Problem& p, const Config& cfg, const Rows4<const T>& q, const Rows4<const T>& k, int64_t b,
                  int64_t h, const MapOutputs& out) {
  const RowRule rule = resolve_row_rule(cfg, p.map, h);
  const bool weighted = rule.top_p || rule.threshold > 0.0;
  std::vector<double> weight(weighted ? p.map.k_blocks : 0);
  const int64_t d = p.d, nq = p.map.q_blocks, nk = p.map.k_blocks;
  const int64_t bq = cfg.block_q, bk = cfg.block_k;
  std::vector<Acc> row(d), k_mean(d), q_pool(nq * d), k_pool(nk * d), scores(nk);
  std::vector<int32_t> order(nk);

  // Smooth-K: the mean over all Lk rows, subtracted before pooling.
  pool_block<Acc>(k, b, h, 0, p.lk, d, static_cast<const Acc*>(nullptr), row.data(), k_mean.data());
  for (int64_t j = 0; j < nk; ++j) {
    pool_block<Acc>(k, b, h, j * bk, std::min(p.lk, (j + 1) * bk), d, k_mean.data(), row.data(), &k_pool[j * d]);
  }
  for (int64_t i = 0; i < nq; ++i) {
    pool_block<Acc>(q, b, h, i * bq, std::min(p.lq, (i + 1) * bq), d, static_cast<const Acc*>(nullptr), row.data(),
                    &q_pool[i * d]);
  }

  const int64_t t_crit = out.critical, t_negl = out.negligible;
  for (int64_t i = 0; i < nq; ++i) {
    const Acc* qi = &q_pool[i * d];
    for (int64_t j = 0; j < nk; ++j) {
      const Acc* kj = &k_pool[j * d];
      Acc s = 0;
      for (int64_t c = 0; c < d; ++c) s += qi[c] * kj[c];
      scores[j] = std::isnan(s) ? -std::numeric_limits<Acc>::infinity() : s;
    }
    std::iota(order.begin(), order.end(), 0);
    // A strict total order: score descending, then index ascending.
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t c) {
      return scores[a] > scores[c] || (scores[a] == scores[c] && a < c);
    });

    // Pooled-softmax weights w_j = exp(scale * (S_ij - max_j S_ij)) in fp64; w = 1 where S_ij equals the maximum
    // (which also covers an infinite maximum) and the total in index order.
    double total = 0.0;
    if (weighted) {
      const double top = static_cast<double>(scores[order[0]]);
      for (int64_t j = 0; j < nk; ++j) {
        const double sj = static_cast<double>(scores[j]);
        weight[j] = sj == top ? 1.0 : std::exp(p.scale * (sj - top));
        total += weight[j];
      }
    }
    const int64_t t_row = rule.top_p ? top_p_count(order, weight, total, rule) : rule.min_count;
    write_row(order, 0, t_row, t_crit, out.lut.row(b, h, i));
    out.count.at(b, h, i) = static_cast<int32_t>(t_row);

    if (t_negl > 0) {
      int64_t tn_row = std::min(t_negl, nk - t_row);
      if (rule.threshold > 0.0) {
        const double bound = rule.threshold * total;
        int64_t below = 0;
        for (int64_t j = 0; j < nk; ++j) below += weight[j] < bound ? 1 : 0;
        tn_row = std::min(tn_row, below);
      }
      write_row(order, nk - tn_row, tn_row, t_negl, out.negl_lut.row(b, h, i));
      out.negl_count.at(b, h, i) = static_cast<int32_t>(tn_row);
    }
  }
}

// Inverse tables for every (b, h) whose output views are present in `map`.
void invert_all(const Problem& p, const BlockMap& map, const Exec& exec) {
  const int64_t nq = p.map.q_blocks, nk = p.map.k_blocks;
  const KeyBlockTable crit = critical_table(map, nk);
  const KeyBlockTable negl = negligible_table(map, nk);
  const bool do_crit = map.inv_offset.present() && map.inv_index.present();
  const bool do_negl = negl.present() && map.negl_inv_offset.present() && map.negl_inv_index.present();
  if (!do_crit && !do_negl) return;
  const int threads = resolve_thread_count(exec.num_threads);
  WorkerScratch<int64_t> fill(std::min<int64_t>(threads, p.batch * p.heads), static_cast<std::size_t>(nk));
  parallel_for(p.batch * p.heads, threads, [&](int64_t task, int worker) {
    const int64_t b = task / p.heads, h = task % p.heads;
    if (do_crit) {
      invert_table_head(crit, nq, b, h, elems3<int32_t>(map.inv_offset), elems3<int32_t>(map.inv_index),
                        map.inv_index.shape[2], fill(worker));
    }
    if (do_negl) {
      invert_table_head(negl, nq, b, h, elems3<int32_t>(map.negl_inv_offset), elems3<int32_t>(map.negl_inv_index),
                        map.negl_inv_index.shape[2], fill(worker));
    }
  });
}

}  // namespace

std::size_t predict_block_map_workspace(const Problem&, const Config&) { return 0; }

Status predict_block_map(const Problem& p, const TensorView& q, const TensorView& k, const Config& cfg,
                         const BlockMap& map, const Exec& exec) {
  return run_guarded("predict_block_map", [&]() -> Status {
    MapOutputs out;
    out.lut = rows4<int32_t>(map.lut);
    out.count = elems3<int32_t>(map.count);
    out.critical = p.map.critical;
    if (p.map.negligible > 0 && map.negl_lut.present() && map.negl_count.present()) {
      out.negl_lut = rows4<int32_t>(map.negl_lut);
      out.negl_count = elems3<int32_t>(map.negl_count);
      out.negligible = p.map.negligible;
    }
    const int threads = resolve_thread_count(exec.num_threads);
    Status st = SLA_CPU_DTYPE_SWITCH(p.dtype, In, Acc, [&] {
      const Rows4<const In> qr = rows4<const In>(q), kr = rows4<const In>(k);
      parallel_for(p.batch * p.heads, threads, [&](int64_t task, int) {
        predict_head<Acc>(p, cfg, qr, kr, task / p.heads, task % p.heads, out);
      });
      return Status::Ok();
    });
    if (!st.ok()) return st;
    invert_all(p, map, exec);
    return Status::Ok();
  });
}

Status invert_block_map(const Problem& p, const BlockMap& map, const Exec& exec) {
  return run_guarded("invert_block_map", [&]() -> Status {
    invert_all(p, map, exec);
    return Status::Ok();
  });
}

}  // namespace cpu
}  // namespace sla
