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

// Dense attention of some query rows of one (b,h), summed per key block: what the calibration reads every candidate
// rule's statistics from. The per-row arithmetic (logits, exp(s - max) in float, the sums in double) is
// dense_reference's, so a set of blocks' mass equals dense_reference's critical mass bit for bit.
struct BlockSums {
  int64_t k_blocks = 0;
  std::vector<double> sum;         // (rows): the softmax denominators
  std::vector<double> block_mass;  // (rows, Nk): each key block's share of the denominator
  std::vector<float> block_pv;     // (rows, Nk, Dv): each key block's unnormalised P V (float, as the reference)
  std::vector<double> out;         // (rows, Dv): the dense output, sum of block_pv over sum
};
// Rows are taken in tiles that share each K and V row while it is in cache (the rows' K/V reads were the cost).
BlockSums dense_block_sums(const AttentionProblem& p, int64_t bh, const std::vector<int64_t>& rows, int64_t block_k,
                           int threads);

// `max_rows` evenly spaced rows per (b,h) (all rows when max_rows >= Lq). Runs on `threads` CPU threads.
// `progress` (may be empty) is called on the calling thread with the rows done and the total.
ReferenceRows dense_reference(const AttentionProblem& p, const BlockClasses& classes, int64_t max_rows, int threads,
                              const std::function<void(int64_t done, int64_t total)>& progress = {});

// The evenly spaced rows dense_reference uses.
std::vector<int64_t> sample_rows(int64_t lq, int64_t max_rows);

}  // namespace sla_cli
