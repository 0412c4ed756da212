// CPU forward pass (docs/SPEC.md sections 2-4): O = O_s + O_l W^T + b.
//
// Heads are processed one after another; within a head the work is split into tasks whose results depend only on
// their index (key blocks, then query blocks), so the output is bitwise identical for any thread count.
// Matrix products are written as sums of contiguous rows (axpy) instead of dot products: the compiler vectorises
// them without reassociating any sum, so the result does not depend on the vector width either.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/backend.h"
#include "cpu/block_tables.h"
#include "cpu/dispatch.h"
#include "cpu/feature_map.h"
#include "cpu/linear_branch.h"
#include "cpu/parallel.h"
#include "cpu/projection.h"
#include "cpu/staging.h"
#include "cpu/tensor_access.h"

namespace sla {
namespace cpu {
namespace {

// Scratch of one worker for one query block.
template <class Acc>
struct QueryBlockScratch {
  std::vector<Acc> q, scores, o_acc, row_max, row_sum, phi_q, o_sparse, o_lin, o_proj, out, h, z;
  std::vector<uint8_t> marginal;

  QueryBlockScratch(int64_t bq, int64_t bk, int64_t d, int64_t dv, int64_t k_blocks, bool per_block_state)
      : q(bq * d), scores(bq * bk), o_acc(bq * dv), row_max(bq), row_sum(bq), phi_q(d), o_sparse(dv), o_lin(dv),
        o_proj(dv), out(dv), h(per_block_state ? d * dv : 0), z(per_block_state ? d : 0),
        marginal(per_block_state ? k_blocks : 0) {}
};

template <class In, class Acc>
Status forward_typed(const Problem& p, const ForwardArgs& args, const Config& cfg, const Exec& exec) {
  const int64_t d = p.d, dv = p.dv, lq = p.lq, lk = p.lk;
  const int64_t bq = cfg.block_q, bk = cfg.block_k;
  const int64_t nq = p.map.q_blocks, nk = p.map.k_blocks;
  const bool complement = cfg.variant == Variant::complement;
  const Acc scale = static_cast<Acc>(p.scale);
  const Acc eps = static_cast<Acc>(cfg.eps);
  const FeatureMap fmap = cfg.feature_map;

  // The linear branch is skipped only when nothing observes it: no W (so O_l does not reach O) and no saved state.
  const bool save_h = args.lin_h.present() && args.lin_z.present();
  const bool need_linear = p.has_weight || args.o_lin.present() || save_h;
  const bool need_total_state = need_linear && (!complement || save_h);

  const Rows4<const In> q = rows4<const In>(args.q), k = rows4<const In>(args.k), v = rows4<const In>(args.v);
  const Rows4<In> o = rows4<In>(args.o);
  const KeyBlockTable critical = critical_table(args.map, nk);
  const KeyBlockTable negligible = negligible_table(args.map, nk);
  const Projection<Acc> proj(args.proj_weight, args.proj_bias, dv);

  const int threads = resolve_thread_count(exec.num_threads);
  const int workers = static_cast<int>(std::min<int64_t>(threads, std::max(nq, nk)));

  // Per-head buffers, reused for every head.
  std::vector<Acc> k_t(nk * d * bk);  // key block j transposed: (d x bk) at j * d * bk
  std::vector<Acc> v_rows(lk * dv);
  std::vector<Acc> h_blocks(need_linear ? nk * d * dv : 0), z_blocks(need_linear ? nk * d : 0);
  std::vector<Acc> h_total(need_total_state ? d * dv : 0), z_total(need_total_state ? d : 0);
  WorkerScratch<Acc> k_rows(workers, static_cast<std::size_t>(bk * d)), phi_k(workers, static_cast<std::size_t>(bk * d));
  std::vector<QueryBlockScratch<Acc>> scratch;
  scratch.reserve(workers);
  for (int w = 0; w < workers; ++w) scratch.emplace_back(bq, bk, d, dv, nk, need_linear && complement);

  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t hd = 0; hd < p.heads; ++hd) {
      // Key blocks: staged K^T and V, and each block's linear state (h_j, z_j).
      parallel_for(nk, threads, [&](int64_t j, int w) {
        const int64_t c0 = j * bk, nc = std::min(lk, c0 + bk) - c0;
        Acc* kr = k_rows(w);
        stage_rows(k, b, hd, c0, c0 + nc, d, kr);
        transpose_tile(kr, nc, d, bk, &k_t[j * d * bk]);
        stage_rows(v, b, hd, c0, c0 + nc, dv, &v_rows[c0 * dv]);
        if (!need_linear) return;
        Acc* pk = phi_k(w);
        for (int64_t c = 0; c < nc; ++c) feature_map_forward(fmap, kr + c * d, d, pk + c * d);
        Acc* hj = &h_blocks[j * d * dv];
        Acc* zj = &z_blocks[j * d];
        std::fill(hj, hj + d * dv, Acc(0));
        std::fill(zj, zj + d, Acc(0));
        add_key_state(pk, &v_rows[c0 * dv], nc, d, dv, hj, zj);
      });

      if (need_total_state) {
        sum_block_states<Acc>(nullptr, nk, h_blocks.data(), z_blocks.data(), d, dv, h_total.data(), z_total.data());
        if (save_h) {
          const Rows4<Acc> lin_h = rows4<Acc>(args.lin_h);
          const Elems3<Acc> lin_z = elems3<Acc>(args.lin_z);
          for (int64_t i = 0; i < d; ++i) {
            std::copy(&h_total[i * dv], &h_total[i * dv] + dv, lin_h.row(b, hd, i));
            lin_z.at(b, hd, i) = z_total[i];
          }
        }
      }

      // Query blocks: sparse branch over the critical key blocks, linear branch, projection, stores.
      parallel_for(nq, threads, [&](int64_t i, int w) {
        QueryBlockScratch<Acc>& s = scratch[w];
        const int64_t r0 = i * bq, nr = std::min(lq, r0 + bq) - r0;
        stage_rows(q, b, hd, r0, r0 + nr, d, s.q.data());
        std::fill(s.row_max.begin(), s.row_max.end(), -std::numeric_limits<Acc>::infinity());
        std::fill(s.row_sum.begin(), s.row_sum.end(), Acc(0));
        std::fill(s.o_acc.begin(), s.o_acc.end(), Acc(0));

        // Online softmax over the critical key blocks, one block at a time.
        critical.for_each(b, hd, i, [&](int64_t j) {
          const int64_t c0 = j * bk, nc = std::min(lk, c0 + bk) - c0;
          const Acc* ktj = &k_t[j * d * bk];
          for (int64_t r = 0; r < nr; ++r) {
            Acc* x = &s.scores[r * bk];
            std::fill(x, x + nc, Acc(0));
            const Acc* qr = &s.q[r * d];
            for (int64_t c = 0; c < d; ++c) axpy(nc, qr[c] * scale, ktj + c * bk, x);
            Acc block_max = x[0];
            for (int64_t c = 1; c < nc; ++c) block_max = std::max(block_max, x[c]);
            const Acc new_max = std::max(s.row_max[r], block_max);
            const Acc rescale = std::exp(s.row_max[r] - new_max);
            Acc sum = 0;
            for (int64_t c = 0; c < nc; ++c) {
              x[c] = std::exp(x[c] - new_max);
              sum += x[c];
            }
            s.row_sum[r] = s.row_sum[r] * rescale + sum;
            s.row_max[r] = new_max;
            Acc* acc = &s.o_acc[r * dv];
            if (rescale != Acc(1)) {
              for (int64_t e = 0; e < dv; ++e) acc[e] *= rescale;
            }
            for (int64_t c = 0; c < nc; ++c) axpy(dv, x[c], &v_rows[(c0 + c) * dv], acc);
          }
        });

        // Complement variant: this query block's state over its marginal blocks.
        bool linear_zero = false;
        if (need_linear && complement) {
          const int64_t n_marginal = marginal_mask(critical, negligible, b, hd, i, nk, s.marginal.data());
          linear_zero = n_marginal == 0;
          if (!linear_zero) {
            sum_block_states(s.marginal.data(), nk, h_blocks.data(), z_blocks.data(), d, dv, s.h.data(), s.z.data());
          }
        }
        const Acc* h_state = complement ? s.h.data() : h_total.data();
        const Acc* z_state = complement ? s.z.data() : z_total.data();

        for (int64_t r = 0; r < nr; ++r) {
          const Acc l = s.row_sum[r];
          const Acc* acc = &s.o_acc[r * dv];
          Acc lse;
          // l is exactly 0 only for a row that visited no key: every visited block adds exp(0) = 1 at its maximum.
          // NaN or Inf in q or k makes l (and acc) NaN; that must reach O and the LSE as in dense attention, so the
          // test is l == 0, not l > 0 (which a NaN fails too).
          if (l != 0) {
            for (int64_t e = 0; e < dv; ++e) s.o_sparse[e] = acc[e] / l;
            lse = s.row_max[r] + std::log(l);
          } else {
            // No critical key (a caller LUT row with count 0): O_s is 0 and the row has no probability mass.
            std::fill(s.o_sparse.begin(), s.o_sparse.end(), Acc(0));
            lse = -std::numeric_limits<Acc>::infinity();
          }

          if (need_linear) {
            if (linear_zero) {
              std::fill(s.o_lin.begin(), s.o_lin.end(), Acc(0));
            } else {
              feature_map_forward(fmap, &s.q[r * d], d, s.phi_q.data());
              linear_row(s.phi_q.data(), h_state, z_state, d, dv, complement, eps, s.o_lin.data());
            }
          }

          proj.linear_part(s.o_lin.data(), dv, s.o_proj.data());
          for (int64_t e = 0; e < dv; ++e) s.out[e] = s.o_sparse[e] + s.o_proj[e];
          store_row(s.out.data(), dv, o.row(b, hd, r0 + r));
          // O_s on its own, for the backward's Delta (see BackwardArgs::o_sparse).
          if (args.o_sparse.present()) {
            std::copy(s.o_sparse.begin(), s.o_sparse.end(), rows4<Acc>(args.o_sparse).row(b, hd, r0 + r));
          }
          if (args.lse.present()) elems3<Acc>(args.lse).at(b, hd, r0 + r) = lse;
          if (args.o_lin.present()) {
            std::copy(s.o_lin.begin(), s.o_lin.end(), rows4<Acc>(args.o_lin).row(b, hd, r0 + r));
          }
        }
      });
    }
  }
  return Status::Ok();
}

}  // namespace

std::size_t forward_workspace(const Problem&, const Config&) { return 0; }

Status forward(const Problem& p, const ForwardArgs& args, const Config& cfg, const Exec& exec) {
  return run_guarded("forward", [&]() -> Status {
    return SLA_CPU_DTYPE_SWITCH(p.dtype, In, Acc, [&] {
      return forward_typed<In, Acc>(p, args, cfg, exec);
    });
  });
}

}  // namespace cpu
}  // namespace sla
