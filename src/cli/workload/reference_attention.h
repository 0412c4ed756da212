// Exact dense softmax attention on a subset of query rows, computed independently of the library, and the share
// of each row's attention mass that falls in the key blocks the block map marked critical (and negligible).
// The demo checks SLA against this.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace sla_cli {

struct AttentionProblem {
  int64_t batch = 0, heads = 0, lq = 0, lk = 0, dim = 0, dv = 0;
  double scale = 0;          // softmax scale (1/sqrt(dim) by default)
  const float* q = nullptr;  // (B,H,Lq,D) row-major
  const float* k = nullptr;  // (B,H,Lk,D)
  const float* v = nullptr;  // (B,H,Lk,Dv)
};

// The classes of the block map, per (b,h,query block): the key blocks of each row of lut/negl_lut up to its count.
struct BlockClasses {
  int64_t q_blocks = 0, k_blocks = 0, block_q = 0, block_k = 0;
  int64_t critical = 0, negligible = 0;       // table widths T and Tn
  std::vector<int32_t> lut, count;            // (B*H, Nq, T), (B*H, Nq)
  std::vector<int32_t> negl_lut, negl_count;  // empty when Tn == 0
};

struct ReferenceRows {
  std::vector<int64_t> rows;            // the query rows checked; the same for every (b,h)
  std::vector<double> out;              // (B*H, rows, Dv): dense softmax attention
  std::vector<double> critical_mass;    // (B*H, rows): softmax mass in the row's critical key blocks
  std::vector<double> negligible_mass;  // (B*H, rows): softmax mass in its negligible key blocks
  std::vector<double> best_mass;        // (B*H, rows): mass in the row's own T heaviest key blocks (an upper bound
                                        // for any block map with T blocks: shows what mean pooling loses)
};

// One query row of dense attention with its sums per key block (exp(s - max) in float, as dense_reference computes
// them; the calibration reuses the same arithmetic so that its masses equal dense_reference's bit for bit).
struct DenseRow {
  double sum = 0;                  // the softmax denominator
  std::vector<double> block_mass;  // (Nk): each key block's share of the denominator
  std::vector<float> out;          // (Dv): the unnormalised output, sum over keys of exp(s - max) v
  std::vector<float> logits;       // (Lk) scratch
};
// Fills `row` for query row `query` of (b,h) = bh. With `block_pv` (Nk x Dv floats) also each key block's
// unnormalised P V sum, so that the output of any subset of blocks is a sum of block_pv rows over their block_mass.
void dense_row(const AttentionProblem& p, int64_t bh, int64_t query, int64_t block_k, DenseRow& row,
               float* block_pv = nullptr);

// `max_rows` evenly spaced rows per (b,h) (all rows when max_rows >= Lq). Runs on `threads` CPU threads.
// `progress` (may be empty) is called on the calling thread with the rows done and the total.
ReferenceRows dense_reference(const AttentionProblem& p, const BlockClasses& classes, int64_t max_rows, int threads,
                              const std::function<void(int64_t done, int64_t total)>& progress = {});

// The evenly spaced rows dense_reference uses.
std::vector<int64_t> sample_rows(int64_t lq, int64_t max_rows);

}  // namespace sla_cli
