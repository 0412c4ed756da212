// CPU backward pass (docs/SPEC.md section 5).
//
// Per head, four phases of tasks whose results depend only on their index (so the gradients are bitwise
// identical for any thread count; no atomics, no thread-order-dependent sums):
//   0. key blocks:   stage K, K^T, V, V^T and phi(K); the complement variant's per-block states (h_j, z_j).
//   1. query blocks: Delta, dO_l = dO W, the linear branch's da (hence dQ's linear part) and this block's share
//                    (dH_i, dz_i) of dH and dz; the sparse branch's dQ over the LUT row.
//   2. reduction:    dH = sum_i dH_i (global variant) in ascending i.
//   3. key blocks:   the sparse branch's dK, dV over the inverse table (P is recomputed, FlashAttention-2 style,
//                    instead of accumulating dQ with atomics), plus the linear branch's dK, dV.
// dW and db are reduced over every (b, h, row) afterwards, each task owning a range of rows of dW.
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

// Scratch of one worker: sized for either kind of block task.
template <class Acc>
struct BackwardScratch {
  std::vector<Acc> qk_grad;  // dQ rows of a query block, or dK rows of a key block
  std::vector<Acc> v_grad;   // dV rows of a key block
  std::vector<Acc> x, dp;    // one row of scores / probabilities, and of dP (then dS)
  std::vector<Acc> o_row, lin_part, da, h, z;

  BackwardScratch(int64_t bq, int64_t bk, int64_t d, int64_t dv, bool linear_state)
      : qk_grad(std::max(bq, bk) * d), v_grad(bk * dv), x(bk), dp(bk), o_row(dv), lin_part(dv), da(d),
        h(linear_state ? d * dv : 0), z(linear_state ? d : 0) {}
};

template <class In, class Acc>
Status backward_typed(const Problem& p, const BackwardArgs& args, const Config& cfg, const Exec& exec) {
  const int64_t d = p.d, dv = p.dv, lq = p.lq, lk = p.lk;
  const int64_t bq = cfg.block_q, bk = cfg.block_k;
  const int64_t nq = p.map.q_blocks, nk = p.map.k_blocks;
  const bool complement = cfg.variant == Variant::complement;
  const Acc scale = static_cast<Acc>(p.scale);
  const Acc eps = static_cast<Acc>(cfg.eps);
  const FeatureMap fmap = cfg.feature_map;
  // The linear branch receives gradient only through dO_l = dO W: without W it is a constant.
  const bool linear = p.has_weight;

  const Rows4<const In> q = rows4<const In>(args.q), k = rows4<const In>(args.k), v = rows4<const In>(args.v);
  const Rows4<const In> o = rows4<const In>(args.o), d_o = rows4<const In>(args.d_o);
  const bool o_sparse_given = args.o_sparse.present();
  const Rows4<const Acc> o_s = rows4<const Acc>(args.o_sparse);  // valid when o_sparse_given
  const bool projected = p.has_weight || p.has_bias;             // O differs from O_s
  const Rows4<In> dq = rows4<In>(args.dq), dk = rows4<In>(args.dk), dvv = rows4<In>(args.dv);
  const Elems3<const Acc> lse = elems3<const Acc>(args.lse);
  const Rows4<const Acc> o_lin = rows4<const Acc>(args.o_lin);
  const Rows4<const Acc> lin_h = rows4<const Acc>(args.lin_h);
  const Elems3<const Acc> lin_z = elems3<const Acc>(args.lin_z);
  const KeyBlockTable critical = critical_table(args.map, nk);
  const KeyBlockTable negligible = negligible_table(args.map, nk);
  const Elems3<const int32_t> inv_offset = elems3<const int32_t>(args.map.inv_offset);
  const Elems3<const int32_t> inv_index = elems3<const int32_t>(args.map.inv_index);
  const int64_t inv_len = args.map.inv_index.shape[2];
  const Projection<Acc> proj(args.proj_weight, args.proj_bias, dv);

  const int threads = resolve_thread_count(exec.num_threads);
  const int workers = static_cast<int>(std::min<int64_t>(threads, std::max(nq, nk)));

  // Per-head buffers, reused for every head.
  std::vector<Acc> q_rows(lq * d), k_rows(lk * d), v_rows(lk * dv), do_rows(lq * dv), delta(lq);
  std::vector<Acc> k_t(nk * d * bk), v_t(nk * dv * bk);  // block j transposed at j * d * bk / j * dv * bk
  std::vector<Acc> phi_q(linear ? lq * d : 0), phi_k(linear ? lk * d : 0), do_lin(linear ? lq * dv : 0);
  std::vector<Acc> h_blocks(linear && complement ? nk * d * dv : 0), z_blocks(linear && complement ? nk * d : 0);
  std::vector<Acc> dh_blocks(linear ? nq * d * dv : 0), dz_blocks(linear ? nq * d : 0);  // (dH_i, dz_i)
  std::vector<Acc> h_total(linear && !complement ? d * dv : 0), z_total(linear && !complement ? d : 0);
  std::vector<Acc> dh_total(linear && !complement ? d * dv : 0), dz_total(linear && !complement ? d : 0);
  std::vector<uint8_t> marginal(linear && complement ? nq * nk : 0);
  std::vector<BackwardScratch<Acc>> scratch;
  scratch.reserve(workers);
  for (int w = 0; w < workers; ++w) scratch.emplace_back(bq, bk, d, dv, linear);

  // One row of the sparse branch for query row r (staged at row index r) against key block j: x = P row,
  // dp = dP row, then x is overwritten with dS = P (dP - Delta). Returns the number of keys of block j.
  auto sparse_row = [&](BackwardScratch<Acc>& s, int64_t b, int64_t hd, int64_t r, int64_t j) -> int64_t {
    const int64_t c0 = j * bk, nc = std::min(lk, c0 + bk) - c0;
    Acc* x = s.x.data();
    Acc* dp = s.dp.data();
    std::fill(x, x + nc, Acc(0));
    std::fill(dp, dp + nc, Acc(0));
    const Acc* qr = &q_rows[r * d];
    const Acc* ktj = &k_t[j * d * bk];
    for (int64_t c = 0; c < d; ++c) axpy(nc, qr[c] * scale, ktj + c * bk, x);
    const Acc* dor = &do_rows[r * dv];
    const Acc* vtj = &v_t[j * dv * bk];
    for (int64_t e = 0; e < dv; ++e) axpy(nc, dor[e], vtj + e * bk, dp);
    const Acc row_lse = lse.at(b, hd, r);
    const Acc row_delta = delta[r];
    for (int64_t c = 0; c < nc; ++c) {
      x[c] = std::exp(x[c] - row_lse);
      dp[c] = x[c] * (dp[c] - row_delta);  // dS
    }
    return nc;
  };

  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t hd = 0; hd < p.heads; ++hd) {
      // ---- 0. key blocks: staging and the complement's per-block states.
      parallel_for(nk, threads, [&](int64_t j, int) {
        const int64_t c0 = j * bk, nc = std::min(lk, c0 + bk) - c0;
        stage_rows(k, b, hd, c0, c0 + nc, d, &k_rows[c0 * d]);
        stage_rows(v, b, hd, c0, c0 + nc, dv, &v_rows[c0 * dv]);
        transpose_tile(&k_rows[c0 * d], nc, d, bk, &k_t[j * d * bk]);
        transpose_tile(&v_rows[c0 * dv], nc, dv, bk, &v_t[j * dv * bk]);
        if (!linear) return;
        for (int64_t c = c0; c < c0 + nc; ++c) feature_map_forward(fmap, &k_rows[c * d], d, &phi_k[c * d]);
        if (complement) {
          Acc* hj = &h_blocks[j * d * dv];
          Acc* zj = &z_blocks[j * d];
          std::fill(hj, hj + d * dv, Acc(0));
          std::fill(zj, zj + d, Acc(0));
          add_key_state(&phi_k[c0 * d], &v_rows[c0 * dv], nc, d, dv, hj, zj);
        }
      });
      if (linear && !complement) {
        for (int64_t i = 0; i < d; ++i) {
          std::copy(lin_h.row(b, hd, i), lin_h.row(b, hd, i) + dv, &h_total[i * dv]);
          z_total[i] = lin_z.at(b, hd, i);
        }
      }

      // ---- 1. query blocks: Delta, the linear branch, the sparse dQ.
      parallel_for(nq, threads, [&](int64_t i, int w) {
        BackwardScratch<Acc>& s = scratch[w];
        const int64_t r0 = i * bq, nr = std::min(lq, r0 + bq) - r0;
        stage_rows(q, b, hd, r0, r0 + nr, d, &q_rows[r0 * d]);
        stage_rows(d_o, b, hd, r0, r0 + nr, dv, &do_rows[r0 * dv]);
        for (int64_t r = r0; r < r0 + nr; ++r) {
          // Delta_r = dO_s . O_s from the forward's O_s in the accumulation dtype (o_sparse): it carries no 16-bit
          // rounding at all. Products in the order of dP = dO . v_c in sparse_row: with one key (P = 1, O_s = v_c)
          // dS is exactly 0. Callers without o_sparse: O itself (no W, no b; FlashAttention's Delta), else
          // O - (O_l W^T + b), which carries the rounding of the whole output.
          Acc acc = 0;
          if (o_sparse_given) {
            const Acc* os = o_s.row(b, hd, r);
            for (int64_t e = 0; e < dv; ++e) acc += do_rows[r * dv + e] * os[e];
          } else if (!projected) {
            load_row(o.row(b, hd, r), dv, s.o_row.data());
            for (int64_t e = 0; e < dv; ++e) acc += do_rows[r * dv + e] * s.o_row[e];
          } else {
            load_row(o.row(b, hd, r), dv, s.o_row.data());
            proj.linear_part(o_lin.row(b, hd, r), dv, s.lin_part.data());
            for (int64_t e = 0; e < dv; ++e) acc += do_rows[r * dv + e] * (s.o_row[e] - s.lin_part[e]);
          }
          delta[r] = acc;
        }

        Acc* dq_acc = s.qk_grad.data();
        std::fill(dq_acc, dq_acc + nr * d, Acc(0));
        critical.for_each(b, hd, i, [&](int64_t j) {
          const int64_t c0 = j * bk;
          for (int64_t r = 0; r < nr; ++r) {
            const int64_t nc = sparse_row(s, b, hd, r0 + r, j);
            for (int64_t c = 0; c < nc; ++c) axpy(d, scale * s.dp[c], &k_rows[(c0 + c) * d], dq_acc + r * d);
          }
        });

        if (linear) {
          Acc* dhi = &dh_blocks[i * d * dv];
          Acc* dzi = &dz_blocks[i * d];
          std::fill(dhi, dhi + d * dv, Acc(0));
          std::fill(dzi, dzi + d, Acc(0));
          bool active = true;
          if (complement) {
            uint8_t* mask = &marginal[i * nk];
            active = marginal_mask(critical, negligible, b, hd, i, nk, mask) > 0;
            if (active) sum_block_states(mask, nk, h_blocks.data(), z_blocks.data(), d, dv, s.h.data(), s.z.data());
          }
          const Acc* h_state = complement ? s.h.data() : h_total.data();
          const Acc* z_state = complement ? s.z.data() : z_total.data();
          for (int64_t r = r0; r < r0 + nr && active; ++r) {
            Acc* a = &phi_q[r * d];
            Acc* dol = &do_lin[r * dv];
            feature_map_forward(fmap, &q_rows[r * d], d, a);
            proj.backward_row(&do_rows[r * dv], dv, dol);
            Acc n = dot(d, a, z_state);
            if (complement) {
              // O_l was set to 0 here (n <= 0): a constant, no gradient. A NaN n is not a zero row (linear_row):
              // it flows on into NaN gradients.
              if (n <= 0) continue;
            } else {
              n += eps;
            }
            const Acc dr = dot(dv, dol, o_lin.row(b, hd, r));
            const Acc inv_n = Acc(1) / n;
            for (int64_t c = 0; c < d; ++c) {
              axpy(dv, a[c] * inv_n, dol, dhi + c * dv);
              dzi[c] -= a[c] * dr * inv_n;
              s.da[c] = (dot(dv, dol, h_state + c * dv) - dr * z_state[c]) * inv_n;
            }
            feature_map_backward_add(fmap, &q_rows[r * d], a, s.da.data(), d, dq_acc + (r - r0) * d);
          }
        }
        for (int64_t r = 0; r < nr; ++r) store_row(dq_acc + r * d, d, dq.row(b, hd, r0 + r));
      });

      // ---- 2. the global variant's dH, dz in ascending query-block order.
      if (linear && !complement) {
        sum_block_states<Acc>(nullptr, nq, dh_blocks.data(), dz_blocks.data(), d, dv, dh_total.data(),
                              dz_total.data());
      }

      // ---- 3. key blocks: dK, dV.
      parallel_for(nk, threads, [&](int64_t j, int w) {
        BackwardScratch<Acc>& s = scratch[w];
        const int64_t c0 = j * bk, nc = std::min(lk, c0 + bk) - c0;
        Acc* dk_acc = s.qk_grad.data();
        Acc* dv_acc = s.v_grad.data();
        std::fill(dk_acc, dk_acc + nc * d, Acc(0));
        std::fill(dv_acc, dv_acc + nc * dv, Acc(0));

        // Query blocks holding j, from the inverse table (bounds-checked like the LUT: see block_tables.h).
        const int64_t e0 = std::clamp<int64_t>(inv_offset.at(b, hd, j), 0, inv_len);
        const int64_t e1 = std::clamp<int64_t>(inv_offset.at(b, hd, j + 1), e0, inv_len);
        for (int64_t e = e0; e < e1; ++e) {
          const int64_t i = inv_index.at(b, hd, e);
          if (i < 0 || i >= nq) continue;
          const int64_t r0 = i * bq, nr = std::min(lq, r0 + bq) - r0;
          for (int64_t r = r0; r < r0 + nr; ++r) {
            sparse_row(s, b, hd, r, j);
            for (int64_t c = 0; c < nc; ++c) {
              axpy(dv, s.x[c], &do_rows[r * dv], dv_acc + c * dv);
              axpy(d, scale * s.dp[c], &q_rows[r * d], dk_acc + c * d);
            }
          }
        }

        if (linear) {
          // This key block's dH, dz: the sum over the query blocks whose linear state includes it.
          const Acc* dh = dh_total.data();
          const Acc* dz = dz_total.data();
          if (complement) {
            Acc* h = s.h.data();
            Acc* z = s.z.data();
            std::fill(h, h + d * dv, Acc(0));
            std::fill(z, z + d, Acc(0));
            for (int64_t i = 0; i < nq; ++i) {
              if (!marginal[i * nk + j]) continue;
              for (int64_t x = 0; x < d * dv; ++x) h[x] += dh_blocks[i * d * dv + x];
              for (int64_t x = 0; x < d; ++x) z[x] += dz_blocks[i * d + x];
            }
            dh = h;
            dz = z;
          }
          for (int64_t c = 0; c < nc; ++c) {
            const Acc* a = &phi_k[(c0 + c) * d];
            const Acc* vc = &v_rows[(c0 + c) * dv];
            for (int64_t x = 0; x < d; ++x) {
              s.da[x] = dz[x] + dot(dv, vc, dh + x * dv);  // dphi(k_c)
              axpy(dv, a[x], dh + x * dv, dv_acc + c * dv);
            }
            feature_map_backward_add(fmap, &k_rows[(c0 + c) * d], a, s.da.data(), d, dk_acc + c * d);
          }
        }
        for (int64_t c = 0; c < nc; ++c) {
          store_row(dk_acc + c * d, d, dk.row(b, hd, c0 + c));
          store_row(dv_acc + c * dv, dv, dvv.row(b, hd, c0 + c));
        }
      });
    }
  }

  // ---- dW = sum over b, h, r of dO[r]^T O_l[r] and db = sum of dO[r]. Each task owns a range of rows e of dW and
  // sums every element in (b, h, r) order, so the grouping (one range per thread, to read O_l once per thread)
  // does not change any bit.
  const bool want_dw = args.d_proj_weight.present(), want_db = args.d_proj_bias.present();
  if (want_dw || want_db) {
    Acc* dw = want_dw ? static_cast<Acc*>(args.d_proj_weight.data) : nullptr;
    Acc* db = want_db ? static_cast<Acc*>(args.d_proj_bias.data) : nullptr;
    const int64_t dw_stride = want_dw ? args.d_proj_weight.stride[0] : 0;
    const int64_t db_stride = want_db ? args.d_proj_bias.stride[0] : 0;
    const int64_t group = (dv + threads - 1) / threads;
    parallel_for((dv + group - 1) / group, threads, [&](int64_t task, int) {
      const int64_t e0 = task * group, e1 = std::min(dv, e0 + group);
      std::vector<Acc> dw_rows(want_dw ? (e1 - e0) * dv : 0), db_rows(e1 - e0, Acc(0)), g(dv);
      for (int64_t b = 0; b < p.batch; ++b)
        for (int64_t hd = 0; hd < p.heads; ++hd)
          for (int64_t r = 0; r < lq; ++r) {
            load_row(d_o.row(b, hd, r), dv, g.data());
            const Acc* ol = o_lin.row(b, hd, r);
            for (int64_t e = e0; e < e1; ++e) {
              db_rows[e - e0] += g[e];
              if (want_dw) axpy(dv, g[e], ol, &dw_rows[(e - e0) * dv]);
            }
          }
      for (int64_t e = e0; e < e1; ++e) {
        if (want_dw) std::copy(&dw_rows[(e - e0) * dv], &dw_rows[(e - e0) * dv] + dv, dw + e * dw_stride);
        if (want_db) db[e * db_stride] = db_rows[e - e0];
      }
    });
  }
  return Status::Ok();
}

}  // namespace

std::size_t backward_workspace(const Problem&, const Config&) { return 0; }

Status backward(const Problem& p, const BackwardArgs& args, const Config& cfg, const Exec& exec) {
  return run_guarded("backward", [&]() -> Status {
    return SLA_CPU_DTYPE_SWITCH(p.dtype, In, Acc, [&] {
      return backward_typed<In, Acc>(p, args, cfg, exec);
    });
  });
}

}  // namespace cpu
}  // namespace sla
