// Naive SLA forward for the CUDA tests; see reference.h. Loops follow the SPEC's formulas one to one.
#include "reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace sla_cuda_test {
namespace {

void phi_row(sla::FeatureMap f, const double* x, int64_t d, const Rounding& rnd, double* a) {
  if (f == sla::FeatureMap::softmax) {
    double m = x[0];
    for (int64_t c = 1; c < d; ++c) m = std::max(m, x[c]);
    double s = 0;
    for (int64_t c = 0; c < d; ++c) s += std::exp(x[c] - m);
    for (int64_t c = 0; c < d; ++c) a[c] = rnd(std::exp(x[c] - m) / s);
  } else if (f == sla::FeatureMap::elu) {
    for (int64_t c = 0; c < d; ++c) a[c] = rnd(x[c] > 0 ? x[c] + 1 : std::exp(x[c]));
  } else {
    for (int64_t c = 0; c < d; ++c) a[c] = rnd(x[c] > 0 ? x[c] : 0.0);
  }
}

}  // namespace

void reference_forward(const RefProblem& p, const Rounding& rnd, RefOutputs* out) {
  const int64_t d = p.d, nq = (p.lq + p.bq - 1) / p.bq, nk = (p.lk + p.bk - 1) / p.bk;
  const bool complement = p.variant == sla::Variant::complement;
  out->o.assign(p.batch * p.heads * p.lq * d, 0);
  out->lse.assign(p.batch * p.heads * p.lq, 0);
  out->o_lin.assign(p.batch * p.heads * p.lq * d, 0);
  out->lin_h.assign(p.batch * p.heads * d * d, 0);
  out->lin_z.assign(p.batch * p.heads * d, 0);
  std::vector<double> phik(p.lk * d), phiq(d), blk_h(nk * d * d), blk_z(nk * d), hi(d * d), zi(d), srow, os(d), ol(d);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t bh = b * p.heads + h;
      const double* q = p.q + bh * p.lq * d;
      const double* k = p.k + bh * p.lk * d;
      const double* v = p.v + bh * p.lk * d;
      for (int64_t r = 0; r < p.lk; ++r) phi_row(p.feature_map, k + r * d, d, rnd, &phik[r * d]);
      // Per key block states, summed exactly; the rounding of a bf16 implementation's H happens once per sum.
      std::fill(blk_h.begin(), blk_h.end(), 0.0);
      std::fill(blk_z.begin(), blk_z.end(), 0.0);
      for (int64_t r = 0; r < p.lk; ++r) {
        const int64_t j = r / p.bk;
        for (int64_t a = 0; a < d; ++a) {
          blk_z[j * d + a] += phik[r * d + a];
          for (int64_t c = 0; c < d; ++c) blk_h[(j * d + a) * d + c] += phik[r * d + a] * v[r * d + c];
        }
      }
      double* lh = &out->lin_h[bh * d * d];
      double* lz = &out->lin_z[bh * d];
      for (int64_t j = 0; j < nk; ++j) {
        for (int64_t e = 0; e < d * d; ++e) lh[e] += blk_h[j * d * d + e];
        for (int64_t e = 0; e < d; ++e) lz[e] += blk_z[j * d + e];
      }
      for (int64_t i = 0; i < nq; ++i) {
        const int32_t* lut = p.lut + (bh * nq + i) * p.t;
        const int64_t n = std::clamp<int64_t>(p.count[bh * nq + i], 0, p.t);
        std::vector<int64_t> keys;
        std::vector<char> removed(nk, 0);
        for (int64_t e = 0; e < n; ++e) {
          const int64_t j = lut[e];
          if (j < 0 || j >= nk) continue;
          removed[j] = 1;
          for (int64_t c = j * p.bk; c < std::min(p.lk, (j + 1) * p.bk); ++c) keys.push_back(c);
        }
        if (p.negl_lut != nullptr) {
          const int64_t nn = std::clamp<int64_t>(p.negl_count[bh * nq + i], 0, p.tn);
          for (int64_t e = 0; e < nn; ++e) {
            const int64_t j = p.negl_lut[(bh * nq + i) * p.tn + e];
            if (j >= 0 && j < nk) removed[j] = 1;
          }
        }
        bool marginal_empty = true;
        if (complement) {
          std::fill(hi.begin(), hi.end(), 0.0);
          std::fill(zi.begin(), zi.end(), 0.0);
          for (int64_t j = 0; j < nk; ++j) {
            if (removed[j]) continue;
            marginal_empty = false;
            for (int64_t e = 0; e < d * d; ++e) hi[e] += blk_h[j * d * d + e];
            for (int64_t e = 0; e < d; ++e) zi[e] += blk_z[j * d + e];
          }
        } else {
          hi.assign(lh, lh + d * d);
          zi.assign(lz, lz + d);
        }
        for (double& x : hi) x = rnd(x);
        for (double& x : zi) x = rnd(x);
        for (int64_t r = i * p.bq; r < std::min(p.lq, (i + 1) * p.bq); ++r) {
          const double* qr = q + r * d;
          // Sparse branch.
          srow.assign(keys.size(), 0);
          double mx = -std::numeric_limits<double>::infinity();
          for (size_t e = 0; e < keys.size(); ++e) {
            double s = 0;
            for (int64_t c = 0; c < d; ++c) s += qr[c] * k[keys[e] * d + c];
            srow[e] = rnd(s * p.scale);
            mx = std::max(mx, srow[e]);
          }
          double sum = 0;
          for (double s : srow) sum += std::exp(s - mx);
          out->lse[bh * p.lq + r] = keys.empty() ? -std::numeric_limits<double>::infinity() : mx + std::log(sum);
          std::fill(os.begin(), os.end(), 0.0);
          for (size_t e = 0; e < keys.size(); ++e) {
            const double pr = rnd(std::exp(srow[e] - mx) / sum);
            for (int64_t c = 0; c < d; ++c) os[c] += pr * v[keys[e] * d + c];
          }
          for (double& x : os) x = rnd(x);
          // Linear branch.
          phi_row(p.feature_map, qr, d, rnd, phiq.data());
          double den = 0;
          for (int64_t a = 0; a < d; ++a) den += phiq[a] * zi[a];
          den = rnd(complement ? den : den + p.eps);
          const bool zero = complement && (marginal_empty || !(den > 0));
          for (int64_t c = 0; c < d; ++c) {
            double s = 0;
            for (int64_t a = 0; a < d; ++a) s += phiq[a] * hi[a * d + c];
            ol[c] = zero ? 0.0 : rnd(rnd(s) / den);
          }
          double* o_row = &out->o[(bh * p.lq + r) * d];
          double* olin_row = &out->o_lin[(bh * p.lq + r) * d];
          for (int64_t c = 0; c < d; ++c) {
            double y = os[c];
            if (p.weight != nullptr) {
              double s = 0;
              for (int64_t a = 0; a < d; ++a) s += ol[a] * p.weight[c * d + a];
              y += s;
            }
            if (p.bias != nullptr) y += p.bias[c];
            o_row[c] = rnd(y);
            olin_row[c] = ol[c];
          }
        }
      }
    }
  }
}

namespace {

double phi_backward_elem(sla::FeatureMap f, double x, double a, double da, double dot) {
  if (f == sla::FeatureMap::softmax) return a * (da - dot);
  if (f == sla::FeatureMap::elu) return x > 0 ? da : da * a;
  return x > 0 ? da : 0.0;
}

// dx += phi'(x)^T da for one row.
void phi_backward_row(sla::FeatureMap f, const double* x, const double* a, const double* da, int64_t d, double* dx) {
  double dot = 0;
  for (int64_t c = 0; c < d; ++c) dot += da[c] * a[c];
  for (int64_t c = 0; c < d; ++c) dx[c] += phi_backward_elem(f, x[c], a[c], da[c], dot);
}

}  // namespace

void reference_backward(const RefProblem& p, const std::vector<double>& d_o, const Rounding& rnd,
                        RefGradients* out) {
  const int64_t d = p.d, nq = (p.lq + p.bq - 1) / p.bq, nk = (p.lk + p.bk - 1) / p.bk;
  const bool complement = p.variant == sla::Variant::complement;
  out->dq.assign(p.batch * p.heads * p.lq * d, 0);
  out->dk.assign(p.batch * p.heads * p.lk * d, 0);
  out->dv.assign(p.batch * p.heads * p.lk * d, 0);
  out->dw.assign(p.weight ? d * d : 0, 0);
  out->db.assign(p.bias ? d : 0, 0);
  const Rounding exact = [](double x) { return x; };
  for (int64_t bh = 0; bh < p.batch * p.heads; ++bh) {
    const double* q = p.q + bh * p.lq * d;
    const double* k = p.k + bh * p.lk * d;
    const double* v = p.v + bh * p.lk * d;
    const double* dO = d_o.data() + bh * p.lq * d;
    double* dq = &out->dq[bh * p.lq * d];
    double* dk = &out->dk[bh * p.lk * d];
    double* dv = &out->dv[bh * p.lk * d];
    // Block classes per query block.
    std::vector<char> crit(nq * nk, 0), negl(nq * nk, 0);
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t n = std::clamp<int64_t>(p.count[bh * nq + i], 0, p.t);
      for (int64_t e = 0; e < n; ++e) {
        const int64_t j = p.lut[(bh * nq + i) * p.t + e];
        if (j >= 0 && j < nk) crit[i * nk + j] = 1;
      }
      if (p.negl_lut != nullptr) {
        const int64_t nn = std::clamp<int64_t>(p.negl_count[bh * nq + i], 0, p.tn);
        for (int64_t e = 0; e < nn; ++e) {
          const int64_t j = p.negl_lut[(bh * nq + i) * p.tn + e];
          if (j >= 0 && j < nk) negl[i * nk + j] = 1;
        }
      }
    }
    auto marginal = [&](int64_t i, int64_t j) { return !crit[i * nk + j] && !negl[i * nk + j]; };
    std::vector<double> phik(p.lk * d), phiq(p.lq * d);
    for (int64_t c = 0; c < p.lk; ++c) phi_row(p.feature_map, k + c * d, d, rnd, &phik[c * d]);
    for (int64_t r = 0; r < p.lq; ++r) phi_row(p.feature_map, q + r * d, d, rnd, &phiq[r * d]);
    // Exact phi for the feature-map backward (it needs a = phi(x) of the forward, before any storage rounding).
    std::vector<double> phik_x(p.lk * d), phiq_x(p.lq * d);
    for (int64_t c = 0; c < p.lk; ++c) phi_row(p.feature_map, k + c * d, d, exact, &phik_x[c * d]);
    for (int64_t r = 0; r < p.lq; ++r) phi_row(p.feature_map, q + r * d, d, exact, &phiq_x[r * d]);

    // Linear states: per query block (complement) or one (global).
    const int64_t n_states = complement ? nq : 1;
    std::vector<double> hs(n_states * d * d, 0), zs(n_states * d, 0);
    std::vector<char> has_marginal(n_states, 1);
    for (int64_t st = 0; st < n_states; ++st) {
      bool any = false;
      for (int64_t c = 0; c < p.lk; ++c) {
        if (complement && !marginal(st, c / p.bk)) continue;
        any = true;
        for (int64_t a = 0; a < d; ++a) {
          zs[st * d + a] += phik[c * d + a];
          for (int64_t e = 0; e < d; ++e) hs[(st * d + a) * d + e] += phik[c * d + a] * v[c * d + e];
        }
      }
      has_marginal[st] = any;
      for (int64_t e = 0; e < d * d; ++e) hs[st * d * d + e] = rnd(hs[st * d * d + e]);
      for (int64_t e = 0; e < d; ++e) zs[st * d + e] = rnd(zs[st * d + e]);
    }
    std::vector<double> dH(n_states * d * d, 0), dz(n_states * d, 0);
    std::vector<double> dphik(p.lk * d, 0), da(d), srow, prow, os(d), ol(d), dol(d);
    for (int64_t r = 0; r < p.lq; ++r) {
      const int64_t i = r / p.bq, st = complement ? i : 0;
      const double* qr = q + r * d;
      const double* dOr = dO + r * d;
      // Sparse forward of this row.
      std::vector<int64_t> keys;
      for (int64_t c = 0; c < p.lk; ++c)
        if (crit[i * nk + c / p.bk]) keys.push_back(c);
      srow.assign(keys.size(), 0);
      double mx = -std::numeric_limits<double>::infinity();
      for (size_t e = 0; e < keys.size(); ++e) {
        double s = 0;
        for (int64_t c = 0; c < d; ++c) s += qr[c] * k[keys[e] * d + c];
        srow[e] = rnd(s * p.scale);
        mx = std::max(mx, srow[e]);
      }
      double sum = 0;
      for (double s : srow) sum += std::exp(s - mx);
      prow.assign(keys.size(), 0);
      std::fill(os.begin(), os.end(), 0.0);
      for (size_t e = 0; e < keys.size(); ++e) {
        prow[e] = rnd(std::exp(srow[e] - mx) / sum);
        for (int64_t c = 0; c < d; ++c) os[c] += prow[e] * v[keys[e] * d + c];
      }
      for (double& x : os) x = rnd(x);
      // Linear forward of this row.
      const double* ar = &phiq[r * d];
      const double* hst = &hs[st * d * d];
      const double* zst = &zs[st * d];
      double den = 0;
      for (int64_t a = 0; a < d; ++a) den += ar[a] * zst[a];
      den = rnd(complement ? den : den + p.eps);
      const bool zero = complement && (!has_marginal[st] || !(den > 0));
      for (int64_t e = 0; e < d; ++e) {
        double s = 0;
        for (int64_t a = 0; a < d; ++a) s += ar[a] * hst[a * d + e];
        ol[e] = zero ? 0.0 : rnd(rnd(s) / den);
      }
      // Projection.
      for (int64_t c = 0; c < d; ++c) {
        double s = 0;
        if (p.weight != nullptr)
          for (int64_t n = 0; n < d; ++n) s += dOr[n] * p.weight[n * d + c];
        dol[c] = rnd(s);
      }
      if (p.weight != nullptr)
        for (int64_t n = 0; n < d; ++n)
          for (int64_t c = 0; c < d; ++c) out->dw[n * d + c] += dOr[n] * ol[c];
      if (p.bias != nullptr)
        for (int64_t n = 0; n < d; ++n) out->db[n] += dOr[n];
      // Sparse backward.
      // dP rounded to the input dtype, and Delta as PyTorch's autograd forms it for softmax: rowsum(P * dP) of the
      // rounded P and dP, accumulated in fp32 or better (softmax_backward_data); it never sees O or O_s. (With one
      // key, P = 1 and Delta = dP: dS = 0 exactly, as in exact arithmetic.)
      std::vector<double> dprow(keys.size());
      double delta = 0;
      for (size_t e = 0; e < keys.size(); ++e) {
        const double* vc = v + keys[e] * d;
        double dp = 0;
        for (int64_t c = 0; c < d; ++c) dp += dOr[c] * vc[c];
        dprow[e] = rnd(dp);
        delta += prow[e] * dprow[e];
      }
      for (size_t e = 0; e < keys.size(); ++e) {
        const double* kc = k + keys[e] * d;
        const double ds = rnd(prow[e] * (dprow[e] - delta));
        for (int64_t c = 0; c < d; ++c) {
          dq[r * d + c] += p.scale * ds * kc[c];
          dk[keys[e] * d + c] += p.scale * ds * qr[c];
          dv[keys[e] * d + c] += prow[e] * dOr[c];
        }
      }
      // Linear backward of this row: da, and its share of dH, dz.
      if (zero || p.weight == nullptr) continue;
      double D = 0;
      for (int64_t c = 0; c < d; ++c) D += dol[c] * ol[c];
      for (int64_t a = 0; a < d; ++a) {
        double s = 0;
        for (int64_t e = 0; e < d; ++e) s += dol[e] * hst[a * d + e];
        da[a] = rnd((s - D * zst[a]) / den);
        for (int64_t e = 0; e < d; ++e) dH[(st * d + a) * d + e] += ar[a] * dol[e] / den;
        dz[st * d + a] -= ar[a] * D / den;
      }
      phi_backward_row(p.feature_map, qr, &phiq_x[r * d], da.data(), d, &dq[r * d]);
    }
    // Key side of the linear branch: every key receives the dH, dz of each state it contributes to.
    for (int64_t st = 0; st < n_states; ++st) {
      for (int64_t c = 0; c < p.lk; ++c) {
        if (complement && !marginal(st, c / p.bk)) continue;
        for (int64_t a = 0; a < d; ++a) {
          double s = dz[st * d + a];
          for (int64_t e = 0; e < d; ++e) s += v[c * d + e] * dH[(st * d + a) * d + e];
          dphik[c * d + a] += s;
          for (int64_t e = 0; e < d; ++e) dv[c * d + e] += phik[c * d + a] * dH[(st * d + a) * d + e];
        }
      }
    }
    for (int64_t c = 0; c < p.lk; ++c) {
      for (int64_t a = 0; a < d; ++a) dphik[c * d + a] = rnd(dphik[c * d + a]);
      phi_backward_row(p.feature_map, k + c * d, &phik_x[c * d], &dphik[c * d], d, &dk[c * d]);
    }
    for (int64_t e = 0; e < p.lq * d; ++e) dq[e] = rnd(dq[e]);
    for (int64_t e = 0; e < p.lk * d; ++e) {
      dk[e] = rnd(dk[e]);
      dv[e] = rnd(dv[e]);
    }
  }
}

std::vector<double> reference_block_scores(const RefProblem& p) {
  const int64_t d = p.d, nq = (p.lq + p.bq - 1) / p.bq, nk = (p.lk + p.bk - 1) / p.bk;
  std::vector<double> scores(p.batch * p.heads * nq * nk);
  std::vector<double> mean(d), qbar(nq * d), kbar(nk * d);
  for (int64_t bh = 0; bh < p.batch * p.heads; ++bh) {
    const double* q = p.q + bh * p.lq * d;
    const double* k = p.k + bh * p.lk * d;
    std::fill(mean.begin(), mean.end(), 0.0);
    for (int64_t r = 0; r < p.lk; ++r)
      for (int64_t c = 0; c < d; ++c) mean[c] += k[r * d + c] / p.lk;
    std::fill(qbar.begin(), qbar.end(), 0.0);
    std::fill(kbar.begin(), kbar.end(), 0.0);
    for (int64_t r = 0; r < p.lq; ++r) {
      const int64_t i = r / p.bq, n = std::min<int64_t>(p.bq, p.lq - i * p.bq);
      for (int64_t c = 0; c < d; ++c) qbar[i * d + c] += q[r * d + c] / n;
    }
    for (int64_t r = 0; r < p.lk; ++r) {
      const int64_t j = r / p.bk, n = std::min<int64_t>(p.bk, p.lk - j * p.bk);
      for (int64_t c = 0; c < d; ++c) kbar[j * d + c] += (k[r * d + c] - mean[c]) / n;
    }
    for (int64_t i = 0; i < nq; ++i)
      for (int64_t j = 0; j < nk; ++j) {
        double s = 0;
        for (int64_t c = 0; c < d; ++c) s += qbar[i * d + c] * kbar[j * d + c];
        scores[(bh * nq + i) * nk + j] = s;
      }
  }
  return scores;
}

double reference_dk_cancellation_scale(const RefProblem& p, const std::vector<double>& d_o) {
  const int64_t d = p.d, nq = (p.lq + p.bq - 1) / p.bq, nk = (p.lk + p.bk - 1) / p.bk;
  double worst = 0;
  std::vector<double> mass(p.lk), srow;
  for (int64_t bh = 0; bh < p.batch * p.heads; ++bh) {
    const double* q = p.q + bh * p.lq * d;
    const double* k = p.k + bh * p.lk * d;
    const double* v = p.v + bh * p.lk * d;
    const double* g = d_o.data() + bh * p.lq * d;
    std::fill(mass.begin(), mass.end(), 0.0);
    for (int64_t i = 0; i < nq; ++i) {
      std::vector<int64_t> keys;
      const int64_t n = std::clamp<int64_t>(p.count[bh * nq + i], 0, p.t);
      for (int64_t e = 0; e < n; ++e) {
        const int64_t j = p.lut[(bh * nq + i) * p.t + e];
        if (j < 0 || j >= nk) continue;
        for (int64_t c = j * p.bk; c < std::min(p.lk, (j + 1) * p.bk); ++c) keys.push_back(c);
      }
      if (keys.empty()) continue;
      for (int64_t r = i * p.bq; r < std::min(p.lq, (i + 1) * p.bq); ++r) {
        const double* qr = q + r * d;
        double g_norm = 0, q_max = 0;
        for (int64_t c = 0; c < d; ++c) {
          g_norm += g[r * d + c] * g[r * d + c];
          q_max = std::max(q_max, std::fabs(qr[c]));
        }
        g_norm = std::sqrt(g_norm);
        srow.assign(keys.size(), 0);
        double mx = -std::numeric_limits<double>::infinity(), sum = 0;
        for (size_t e = 0; e < keys.size(); ++e) {
          double x = 0;
          for (int64_t c = 0; c < d; ++c) x += qr[c] * k[keys[e] * d + c];
          srow[e] = x * p.scale;
          mx = std::max(mx, srow[e]);
        }
        for (double x : srow) sum += std::exp(x - mx);
        for (size_t e = 0; e < keys.size(); ++e) mass[keys[e]] += std::exp(srow[e] - mx) / sum * g_norm * q_max;
      }
    }
    for (int64_t c = 0; c < p.lk; ++c) {
      double v_norm = 0;
      for (int64_t e = 0; e < d; ++e) v_norm += v[c * d + e] * v[c * d + e];
      worst = std::max(worst, p.scale * std::sqrt(v_norm) * mass[c]);
    }
  }
  return std::isfinite(worst) ? worst : 0.0;
}

}  // namespace sla_cuda_test
