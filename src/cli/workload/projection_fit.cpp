// See projection_fit.h. Normal equations with a tiny ridge, solved by Cholesky: Dv is at most a few hundred.
#include "workload/projection_fit.h"

#include <cmath>

namespace sla_cli {

namespace {

// Solves A X = B in place (A n x n symmetric positive definite, B n x m), returning false when A is not.
bool cholesky_solve(std::vector<double>& a, std::vector<double>& b, int64_t n, int64_t m) {
  for (int64_t j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (int64_t k = 0; k < j; ++k) d -= a[j * n + k] * a[j * n + k];
    if (!(d > 0)) return false;
    const double l = std::sqrt(d);
    a[j * n + j] = l;
    for (int64_t i = j + 1; i < n; ++i) {
      double s = a[i * n + j];
      for (int64_t k = 0; k < j; ++k) s -= a[i * n + k] * a[j * n + k];
      a[i * n + j] = s / l;
    }
  }
  for (int64_t c = 0; c < m; ++c) {
    for (int64_t i = 0; i < n; ++i) {  // L y = b
      double s = b[i * m + c];
      for (int64_t k = 0; k < i; ++k) s -= a[i * n + k] * b[k * m + c];
      b[i * m + c] = s / a[i * n + i];
    }
    for (int64_t i = n - 1; i >= 0; --i) {  // L^T x = y
      double s = b[i * m + c];
      for (int64_t k = i + 1; k < n; ++k) s -= a[k * n + i] * b[k * m + c];
      b[i * m + c] = s / a[i * n + i];
    }
  }
  return true;
}

}  // namespace

ProjectionFit fit_projection(const std::vector<double>& o_s, const std::vector<double>& o_lin,
                             const std::vector<double>& dense, int64_t bh, int64_t rows, int64_t dv) {
  ProjectionFit fit;
  const int64_t samples = bh * rows;
  if (samples <= dv) return fit;
  const int64_t n = dv + 1;  // O_l features plus a constant for the bias
  std::vector<double> xtx(n * n, 0.0), xty(n * dv, 0.0);
  std::vector<double> x(n);
  for (int64_t s = 0; s < samples; ++s) {
    for (int64_t d = 0; d < dv; ++d) x[d] = o_lin[s * dv + d];
    x[dv] = 1.0;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j <= i; ++j) xtx[i * n + j] += x[i] * x[j];
      for (int64_t c = 0; c < dv; ++c) xty[i * dv + c] += x[i] * (dense[s * dv + c] - o_s[s * dv + c]);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i + 1; j < n; ++j) xtx[i * n + j] = xtx[j * n + i];
  }
  double trace = 0;
  for (int64_t i = 0; i < n; ++i) trace += xtx[i * n + i];
  // The ridge only guards against collinear O_l columns (e.g. phi features that sum to one).
  double ridge = 1e-9 * trace / n + 1e-300;
  std::vector<double> a, z;
  for (int attempt = 0; attempt < 8; ++attempt, ridge *= 100) {
    a = xtx;
    z = xty;
    for (int64_t i = 0; i < n; ++i) a[i * n + i] += ridge;
    if (cholesky_solve(a, z, n, dv)) break;
    z.clear();
  }
  if (z.empty()) return fit;

  // z holds [W^T; b^T]: row d < dv is column d of W.
  fit.weight.assign(dv * dv, 0.0);
  fit.bias.assign(dv, 0.0);
  for (int64_t d = 0; d < dv; ++d) {
    for (int64_t c = 0; c < dv; ++c) fit.weight[c * dv + d] = z[d * dv + c];
  }
  for (int64_t c = 0; c < dv; ++c) fit.bias[c] = z[dv * dv + c];

  for (int64_t h = 0; h < bh; ++h) {
    double err = 0, ref = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t s = h * rows + r;
      for (int64_t c = 0; c < dv; ++c) {
        double o = o_s[s * dv + c] + fit.bias[c];
        for (int64_t d = 0; d < dv; ++d) o += o_lin[s * dv + d] * fit.weight[c * dv + d];
        err += (o - dense[s * dv + c]) * (o - dense[s * dv + c]);
        ref += dense[s * dv + c] * dense[s * dv + c];
      }
    }
    fit.rel_error_per_head.push_back(ref > 0 ? std::sqrt(err / ref) : std::sqrt(err));
  }
  return fit;
}

}  // namespace sla_cli
