// Bring-up test of the CUDA backward pass (sla_bwd_selftest), until tests/cuda covers gradients: it calls
// bwd::launch_backward directly on random problems and compares dq, dk, dv, dW, db with an fp64 CPU evaluation of
// SPEC.md sections 2-5 written independently here (dense per-row loops, H_i summed over M_i directly). Also checks
// that every output element is written (outputs are poisoned with NaN first) and that two runs are bitwise equal.
// `--bench` times the backward at a given shape instead (CUDA events, median).
//
// Exit status 0 when every case passes.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/bwd/backward_internal.h"

using namespace sla;

namespace {

#define CHECK_CUDA(x)                                                                         \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                           \
    }                                                                                         \
  } while (0)

struct Case {
  Variant variant = Variant::global;
  FeatureMap fm = FeatureMap::softmax;
  DType dtype = DType::bf16;
  int d = 128, bq = 128, bk = 64;
  int64_t b = 1, h = 2, lq = 1000, lk = 900;
  int t_crit = 3, t_negl = 0;
  bool weight = true, bias = true, blhd = false;
  double scale = 0.0;  // 0: 1/sqrt(d)
  unsigned seed = 1;
};

double round_to(DType t, double x) {
  if (t == DType::bf16) return __bfloat162float(__float2bfloat16_rn(static_cast<float>(x)));
  return __half2float(__float2half_rn(static_cast<float>(x)));
}

// Host copy of one (B, H, L, D) tensor: logical values (already rounded to the dtype) plus its device layout.
struct Tensor {
  int64_t b, h, l, d;
  bool blhd;
  std::vector<double> val;  // (b, h, l, d) logical order
  int64_t idx(int64_t bb, int64_t hh, int64_t ll, int64_t dd) const { return ((bb * h + hh) * l + ll) * d + dd; }
  double at(int64_t bb, int64_t hh, int64_t ll, int64_t dd) const { return val[idx(bb, hh, ll, dd)]; }
  int64_t stride(int i) const {
    if (!blhd) {
      const int64_t s[4] = {h * l * d, l * d, d, 1};
      return s[i];
    }
    const int64_t s[4] = {l * h * d, d, h * d, 1};
    return s[i];
  }
  int64_t mem_index(int64_t bb, int64_t hh, int64_t ll, int64_t dd) const {
    return bb * stride(0) + hh * stride(1) + ll * stride(2) + dd;
  }
};

Tensor random_tensor(const Case& c, int64_t l, std::mt19937& rng, double sigma) {
  Tensor t{c.b, c.h, l, c.d, c.blhd, {}};
  std::normal_distribution<double> nd(0.0, sigma);
  t.val.resize(c.b * c.h * l * c.d);
  for (auto& x : t.val) x = round_to(c.dtype, nd(rng));
  return t;
}

// Uploads a Tensor in its layout and dtype; returns the device pointer and fills the view.
void* upload(const Tensor& t, DType dt, TensorView* view) {
  std::vector<uint16_t> host(t.b * t.h * t.l * t.d);
  for (int64_t bb = 0; bb < t.b; ++bb)
    for (int64_t hh = 0; hh < t.h; ++hh)
      for (int64_t ll = 0; ll < t.l; ++ll)
        for (int64_t dd = 0; dd < t.d; ++dd) {
          const float x = static_cast<float>(t.at(bb, hh, ll, dd));
          uint16_t bits;
          if (dt == DType::bf16) {
            __nv_bfloat16 v = __float2bfloat16_rn(x);
            std::memcpy(&bits, &v, 2);
          } else {
            __half v = __float2half_rn(x);
            std::memcpy(&bits, &v, 2);
          }
          host[t.mem_index(bb, hh, ll, dd)] = bits;
        }
  void* dev = nullptr;
  CHECK_CUDA(cudaMalloc(&dev, host.size() * 2));
  CHECK_CUDA(cudaMemcpy(dev, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  *view = make_strided_view(dev, dt, {t.b, t.h, t.l, t.d}, {t.stride(0), t.stride(1), t.stride(2), t.stride(3)},
                            Device::cuda);
  return dev;
}

void* alloc_like(const Tensor& t, DType dt, TensorView* view) {
  void* dev = nullptr;
  CHECK_CUDA(cudaMalloc(&dev, t.b * t.h * t.l * t.d * 2));
  CHECK_CUDA(cudaMemset(dev, 0xFF, t.b * t.h * t.l * t.d * 2));  // NaN poison: unwritten elements fail the check
  *view = make_strided_view(dev, dt, {t.b, t.h, t.l, t.d}, {t.stride(0), t.stride(1), t.stride(2), t.stride(3)},
                            Device::cuda);
  return dev;
}

std::vector<double> download(const TensorView& v, const Tensor& shape_of) {
  const Tensor& t = shape_of;
  std::vector<uint16_t> host(t.b * t.h * t.l * t.d);
  CHECK_CUDA(cudaMemcpy(host.data(), v.data, host.size() * 2, cudaMemcpyDeviceToHost));
  std::vector<double> out(host.size());
  for (int64_t bb = 0; bb < t.b; ++bb)
    for (int64_t hh = 0; hh < t.h; ++hh)
      for (int64_t ll = 0; ll < t.l; ++ll)
        for (int64_t dd = 0; dd < t.d; ++dd) {
          const uint16_t bits = host[t.mem_index(bb, hh, ll, dd)];
          float x;
          if (v.dtype == DType::bf16) {
            __nv_bfloat16 h;
            std::memcpy(&h, &bits, 2);
            x = __bfloat162float(h);
          } else {
            __half h;
            std::memcpy(&h, &bits, 2);
            x = __half2float(h);
          }
          out[t.idx(bb, hh, ll, dd)] = x;
        }
  return out;
}

template <class T>
T* to_device(const std::vector<T>& v) {
  T* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(1, v.size()) * sizeof(T)));
  if (!v.empty()) CHECK_CUDA(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

std::vector<double> phi(FeatureMap fm, const double* x, int d) {
  std::vector<double> a(d);
  if (fm == FeatureMap::softmax) {
    double m = x[0];
    for (int i = 1; i < d; ++i) m = std::max(m, x[i]);
    double s = 0;
    for (int i = 0; i < d; ++i) s += std::exp(x[i] - m);
    for (int i = 0; i < d; ++i) a[i] = std::exp(x[i] - m) / s;
  } else if (fm == FeatureMap::elu) {
    for (int i = 0; i < d; ++i) a[i] = x[i] > 0 ? x[i] + 1 : std::exp(x[i]);
  } else {
    for (int i = 0; i < d; ++i) a[i] = x[i] > 0 ? x[i] : 0;
  }
  return a;
}

std::vector<double> phi_backward(FeatureMap fm, const double* x, const std::vector<double>& a,
                                 const std::vector<double>& da) {
  const int d = static_cast<int>(a.size());
  std::vector<double> dx(d);
  double dot = 0;
  for (int i = 0; i < d; ++i) dot += da[i] * a[i];
  for (int i = 0; i < d; ++i) {
    if (fm == FeatureMap::softmax)
      dx[i] = a[i] * (da[i] - dot);
    else if (fm == FeatureMap::elu)
      dx[i] = x[i] > 0 ? da[i] : da[i] * std::exp(x[i]);
    else
      dx[i] = x[i] > 0 ? da[i] : 0;
  }
  return dx;
}

struct Map {
  int64_t nq, nk;
  std::vector<int32_t> lut, count, negl_lut, negl_count, inv_offset, inv_index, ninv_offset, ninv_index;
};

// Random critical sets (some rows shorter than T) and, for the complement variant, negligible sets disjoint from them.
Map random_map(const Case& c, std::mt19937& rng) {
  Map m;
  m.nq = (c.lq + c.bq - 1) / c.bq;
  m.nk = (c.lk + c.bk - 1) / c.bk;
  const int64_t bh = c.b * c.h, t = c.t_crit, tn = c.t_negl;
  m.lut.assign(bh * m.nq * t, -1);
  m.count.assign(bh * m.nq, 0);
  m.negl_lut.assign(bh * m.nq * tn, -1);
  m.negl_count.assign(bh * m.nq, 0);
  for (int64_t g = 0; g < bh * m.nq; ++g) {
    std::vector<int32_t> perm(m.nk);
    for (int64_t j = 0; j < m.nk; ++j) perm[j] = static_cast<int32_t>(j);
    std::shuffle(perm.begin(), perm.end(), rng);
    const int cnt = (g % 5 == 3 && t > 1) ? static_cast<int>(t - 1) : static_cast<int>(t);
    std::vector<int32_t> crit(perm.begin(), perm.begin() + cnt);
    std::sort(crit.begin(), crit.end());
    for (int i = 0; i < cnt; ++i) m.lut[g * t + i] = crit[i];
    m.count[g] = cnt;
    if (tn > 0) {
      // Every fourth query block gets a full negligible set: with T + Tn == Nk that empties M_i.
      const int ncnt = (g % 4 == 1) ? static_cast<int>(tn) : static_cast<int>(rng() % (tn + 1));
      std::vector<int32_t> negl(perm.begin() + cnt, perm.begin() + cnt + ncnt);
      std::sort(negl.begin(), negl.end());
      for (int i = 0; i < ncnt; ++i) m.negl_lut[g * tn + i] = negl[i];
      m.negl_count[g] = ncnt;
    }
  }
  auto invert = [&](const std::vector<int32_t>& lut, const std::vector<int32_t>& count, int64_t cap,
                    std::vector<int32_t>& off, std::vector<int32_t>& index) {
    off.assign(bh * (m.nk + 1), 0);
    index.assign(bh * m.nq * cap, -1);
    for (int64_t g = 0; g < bh; ++g) {
      std::vector<std::vector<int32_t>> lists(m.nk);
      for (int64_t i = 0; i < m.nq; ++i)
        for (int e = 0; e < count[g * m.nq + i]; ++e)
          lists[lut[(g * m.nq + i) * cap + e]].push_back(static_cast<int32_t>(i));
      int32_t pos = 0;
      for (int64_t j = 0; j < m.nk; ++j) {
        off[g * (m.nk + 1) + j] = pos;
        for (int32_t i : lists[j]) index[g * m.nq * cap + pos++] = i;
      }
      off[g * (m.nk + 1) + m.nk] = pos;
    }
  };
  invert(m.lut, m.count, t, m.inv_offset, m.inv_index);
  if (tn > 0) invert(m.negl_lut, m.negl_count, tn, m.ninv_offset, m.ninv_index);
  return m;
}

struct Reference {
  // forward values (exact) and the gradients
  std::vector<double> o, lse, o_lin, lin_h, lin_z;  // lin_h/lin_z over all keys
  std::vector<double> dq, dk, dv, dw, db;
  // The linear branch's share of dq, dk, dv alone: its norm says how much of the check exercises that branch.
  std::vector<double> dq_lin, dk_lin, dv_lin;
};

// fp64 forward + backward of SPEC.md sections 2-5 for the given map.
Reference reference(const Case& c, const Map& m, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& d_o,
                    const std::vector<double>& w, const std::vector<double>& bias) {
  const int d = c.d;
  const double s = c.scale > 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(d));
  const double eps = 1e-5;
  const bool comp = c.variant == Variant::complement;
  Reference r;
  r.o.assign(q.val.size(), 0);
  r.lse.assign(c.b * c.h * c.lq, 0);
  r.o_lin.assign(q.val.size(), 0);
  r.lin_h.assign(c.b * c.h * d * d, 0);
  r.lin_z.assign(c.b * c.h * d, 0);
  r.dq.assign(q.val.size(), 0);
  r.dk.assign(k.val.size(), 0);
  r.dv.assign(v.val.size(), 0);
  r.dq_lin.assign(q.val.size(), 0);
  r.dk_lin.assign(k.val.size(), 0);
  r.dv_lin.assign(v.val.size(), 0);
  r.dw.assign(d * d, 0);
  r.db.assign(d, 0);
  for (int64_t bb = 0; bb < c.b; ++bb)
    for (int64_t hh = 0; hh < c.h; ++hh) {
      const int64_t g = bb * c.h + hh;
      // phi(K), per-block states h_j
      std::vector<std::vector<double>> phik(c.lk);
      std::vector<double> hj(m.nk * d * d, 0), zj(m.nk * d, 0);
      for (int64_t cc = 0; cc < c.lk; ++cc) {
        std::vector<double> x(d);
        for (int e = 0; e < d; ++e) x[e] = k.at(bb, hh, cc, e);
        phik[cc] = phi(c.fm, x.data(), d);
        const int64_t j = cc / c.bk;
        for (int e = 0; e < d; ++e) {
          zj[j * d + e] += phik[cc][e];
          for (int f = 0; f < d; ++f) hj[(j * d + e) * d + f] += phik[cc][e] * v.at(bb, hh, cc, f);
        }
      }
      for (int64_t j = 0; j < m.nk; ++j)
        for (int e = 0; e < d; ++e) {
          r.lin_z[g * d + e] += zj[j * d + e];
          for (int f = 0; f < d; ++f) r.lin_h[(g * d + e) * d + f] += hj[(j * d + e) * d + f];
        }
      // per query block linear state and marginal sets
      std::vector<double> dh_i(m.nq * d * d, 0), dz_i(m.nq * d, 0);
      std::vector<std::vector<char>> marginal(m.nq, std::vector<char>(m.nk, 1));
      for (int64_t i = 0; i < m.nq; ++i) {
        const int64_t gi = g * m.nq + i;
        std::vector<char>& mi = marginal[i];
        for (int e = 0; e < m.count[gi]; ++e) mi[m.lut[gi * c.t_crit + e]] = 0;
        if (comp)
          for (int e = 0; e < m.negl_count[gi]; ++e) mi[m.negl_lut[gi * c.t_negl + e]] = 0;
        std::vector<double> H(d * d, 0), z(d, 0);
        bool any_marginal = false;
        if (comp) {
          for (int64_t j = 0; j < m.nk; ++j)
            if (mi[j]) {
              any_marginal = true;
              for (int e = 0; e < d; ++e) {
                z[e] += zj[j * d + e];
                for (int f = 0; f < d; ++f) H[e * d + f] += hj[(j * d + e) * d + f];
              }
            }
        } else {
          for (int e = 0; e < d * d; ++e) H[e] = r.lin_h[g * d * d + e];
          for (int e = 0; e < d; ++e) z[e] = r.lin_z[g * d + e];
        }
        for (int64_t row = i * c.bq; row < std::min(c.lq, (i + 1) * c.bq); ++row) {
          std::vector<double> qr(d), dor(d);
          for (int e = 0; e < d; ++e) {
            qr[e] = q.at(bb, hh, row, e);
            dor[e] = d_o.at(bb, hh, row, e);
          }
          // sparse forward over the critical keys
          std::vector<int64_t> keys;
          for (int e = 0; e < m.count[gi]; ++e) {
            const int64_t j = m.lut[gi * c.t_crit + e];
            for (int64_t cc = j * c.bk; cc < std::min(c.lk, (j + 1) * c.bk); ++cc) keys.push_back(cc);
          }
          std::vector<double> x(keys.size());
          double mx = -INFINITY;
          for (size_t t = 0; t < keys.size(); ++t) {
            double acc = 0;
            for (int e = 0; e < d; ++e) acc += qr[e] * k.at(bb, hh, keys[t], e);
            x[t] = s * acc;
            mx = std::max(mx, x[t]);
          }
          double sum = 0;
          for (double xt : x) sum += std::exp(xt - mx);
          const double lse = mx + std::log(sum);
          r.lse[g * c.lq + row] = lse;
          std::vector<double> os(d, 0);
          for (size_t t = 0; t < keys.size(); ++t) {
            const double p = std::exp(x[t] - lse);
            for (int e = 0; e < d; ++e) os[e] += p * v.at(bb, hh, keys[t], e);
          }
          // linear forward
          const std::vector<double> a = phi(c.fm, qr.data(), d);
          double n = comp ? 0 : eps;
          for (int e = 0; e < d; ++e) n += a[e] * z[e];
          const bool lin_on = comp ? (any_marginal && n > 0) : true;
          std::vector<double> ol(d, 0);
          if (lin_on)
            for (int f = 0; f < d; ++f) {
              double acc = 0;
              for (int e = 0; e < d; ++e) acc += a[e] * H[e * d + f];
              ol[f] = acc / n;
            }
          for (int f = 0; f < d; ++f) {
            double acc = os[f] + (bias.empty() ? 0 : bias[f]);
            for (int e = 0; e < d; ++e) acc += (w.empty() ? 0 : w[f * d + e]) * ol[e];
            r.o[q.idx(bb, hh, row, f)] = acc;
            r.o_lin[q.idx(bb, hh, row, f)] = ol[f];
          }
          // backward: projection
          std::vector<double> dol(d, 0);
          for (int e = 0; e < d; ++e)
            for (int f = 0; f < d; ++f) dol[e] += dor[f] * (w.empty() ? 0 : w[f * d + e]);
          for (int f = 0; f < d; ++f) {
            r.db[f] += dor[f];
            for (int e = 0; e < d; ++e) r.dw[f * d + e] += dor[f] * ol[e];
          }
          // sparse backward
          double delta = 0;
          for (int e = 0; e < d; ++e) delta += dor[e] * os[e];
          for (size_t t = 0; t < keys.size(); ++t) {
            const double p = std::exp(x[t] - lse);
            double dp = 0;
            for (int e = 0; e < d; ++e) dp += dor[e] * v.at(bb, hh, keys[t], e);
            const double ds = p * (dp - delta);
            for (int e = 0; e < d; ++e) {
              r.dv[v.idx(bb, hh, keys[t], e)] += p * dor[e];
              r.dq[q.idx(bb, hh, row, e)] += s * ds * k.at(bb, hh, keys[t], e);
              r.dk[k.idx(bb, hh, keys[t], e)] += s * ds * qr[e];
            }
          }
          // linear backward (rows of this query block)
          if (!lin_on) continue;
          double dr = 0;
          for (int e = 0; e < d; ++e) dr += dol[e] * ol[e];
          std::vector<double> da(d);
          for (int e = 0; e < d; ++e) {
            double acc = 0;
            for (int f = 0; f < d; ++f) acc += dol[f] * H[e * d + f];
            da[e] = (acc - dr * z[e]) / n;
            dz_i[i * d + e] -= a[e] * dr / n;
            for (int f = 0; f < d; ++f) dh_i[(i * d + e) * d + f] += a[e] * dol[f] / n;
          }
          const std::vector<double> dx = phi_backward(c.fm, qr.data(), a, da);
          for (int e = 0; e < d; ++e) {
            r.dq[q.idx(bb, hh, row, e)] += dx[e];
            r.dq_lin[q.idx(bb, hh, row, e)] += dx[e];
          }
        }
      }
      // linear backward for keys: block j receives dH_i of the query blocks where it is marginal (all, if global)
      for (int64_t j = 0; j < m.nk; ++j) {
        std::vector<double> dH(d * d, 0), dz(d, 0);
        for (int64_t i = 0; i < m.nq; ++i) {
          if (comp && !marginal[i][j]) continue;
          for (int e = 0; e < d; ++e) {
            dz[e] += dz_i[i * d + e];
            for (int f = 0; f < d; ++f) dH[e * d + f] += dh_i[(i * d + e) * d + f];
          }
        }
        for (int64_t cc = j * c.bk; cc < std::min(c.lk, (j + 1) * c.bk); ++cc) {
          std::vector<double> x(d), dphi(d);
          for (int e = 0; e < d; ++e) x[e] = k.at(bb, hh, cc, e);
          for (int e = 0; e < d; ++e) {
            double acc = dz[e];
            for (int f = 0; f < d; ++f) acc += v.at(bb, hh, cc, f) * dH[e * d + f];
            dphi[e] = acc;
          }
          const std::vector<double> dx = phi_backward(c.fm, x.data(), phik[cc], dphi);
          for (int e = 0; e < d; ++e) {
            r.dk[k.idx(bb, hh, cc, e)] += dx[e];
            r.dk_lin[k.idx(bb, hh, cc, e)] += dx[e];
          }
          for (int f = 0; f < d; ++f) {
            double acc = 0;
            for (int e = 0; e < d; ++e) acc += phik[cc][e] * dH[e * d + f];
            r.dv[v.idx(bb, hh, cc, f)] += acc;
            r.dv_lin[v.idx(bb, hh, cc, f)] += acc;
          }
        }
      }
    }
  return r;
}

double rel_l2(const std::vector<double>& got, const std::vector<double>& want, bool* finite) {
  double num = 0, den = 0;
  *finite = true;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) *finite = false;
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

std::vector<float> to_f32(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

struct DeviceProblem {
  Problem prob;
  Config cfg;
  BackwardArgs args;
  std::vector<void*> owned;
  void* workspace = nullptr;
  size_t ws_bytes = 0;
};

const char* name_of(FeatureMap f) {
  return f == FeatureMap::softmax ? "softmax" : f == FeatureMap::elu ? "elu" : "relu";
}

double norm_ratio(const std::vector<double>& part, const std::vector<double>& whole) {
  double a = 0, b = 0;
  for (size_t i = 0; i < part.size(); ++i) {
    a += part[i] * part[i];
    b += whole[i] * whole[i];
  }
  return std::sqrt(a / std::max(b, 1e-300));
}

bool g_mma_only = false;  // --mma-only: skip the reference kernels (sanitizer runs)

bool run_case(const Case& c, bool bench, int reps) {
  std::mt19937 rng(c.seed);
  const Map m = random_map(c, rng);
  const Tensor q = random_tensor(c, c.lq, rng, 1.0), k = random_tensor(c, c.lk, rng, 1.0),
               v = random_tensor(c, c.lk, rng, 1.0), d_o = random_tensor(c, c.lq, rng, 1.0);
  std::vector<double> w, bias;
  std::normal_distribution<double> nd(0.0, 0.1);
  if (c.weight) {
    w.resize(c.d * c.d);
    for (auto& x : w) x = static_cast<float>(nd(rng));
  }
  if (c.bias) {
    bias.resize(c.d);
    for (auto& x : bias) x = static_cast<float>(nd(rng));
  }
  const int d = c.d;
  const int64_t bh = c.b * c.h;

  Reference ref;
  std::vector<float> o_f, lse_f, olin_f, h_f, z_f;
  Tensor o = q;  // shape/layout holder; values replaced below
  if (!bench) {
    ref = reference(c, m, q, k, v, d_o, w, bias);
    for (size_t i = 0; i < o.val.size(); ++i) o.val[i] = round_to(c.dtype, ref.o[i]);
    lse_f = to_f32(ref.lse);
    olin_f = to_f32(ref.o_lin);
    h_f = to_f32(ref.lin_h);
    z_f = to_f32(ref.lin_z);
  } else {
    // Timing only: plausible magnitudes, P = exp(x - lse) stays small.
    for (auto& x : o.val) x = round_to(c.dtype, nd(rng));
    lse_f.assign(bh * c.lq, 10.f);
    olin_f.assign(q.val.size(), 0.01f);
    h_f.assign(bh * d * d, 0.5f);
    z_f.assign(bh * d, 4.f);
  }

  Problem p;
  p.batch = c.b;
  p.heads = c.h;
  p.lq = c.lq;
  p.lk = c.lk;
  p.d = d;
  p.dv = d;
  p.dtype = c.dtype;
  p.acc = DType::f32;
  p.device = Device::cuda;
  p.scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(d));
  p.map.batch = c.b;
  p.map.heads = c.h;
  p.map.q_blocks = m.nq;
  p.map.k_blocks = m.nk;
  p.map.critical = c.t_crit;
  p.map.negligible = c.t_negl;
  p.has_weight = c.weight;
  p.has_bias = c.bias;
  Config cfg;
  cfg.block_q = c.bq;
  cfg.block_k = c.bk;
  cfg.variant = c.variant;
  cfg.feature_map = c.fm;

  BackwardArgs a;
  std::vector<void*> owned;
  owned.push_back(upload(q, c.dtype, &a.q));
  owned.push_back(upload(k, c.dtype, &a.k));
  owned.push_back(upload(v, c.dtype, &a.v));
  owned.push_back(upload(o, c.dtype, &a.o));
  owned.push_back(upload(d_o, c.dtype, &a.d_o));
  owned.push_back(alloc_like(q, c.dtype, &a.dq));
  owned.push_back(alloc_like(k, c.dtype, &a.dk));
  owned.push_back(alloc_like(v, c.dtype, &a.dv));
  auto f32view = [&](const std::vector<float>& host, std::initializer_list<int64_t> shape) {
    float* dev = to_device(host);
    owned.push_back(dev);
    return make_view(dev, DType::f32, shape, Device::cuda);
  };
  a.lse = f32view(lse_f, {c.b, c.h, c.lq});
  a.o_lin = f32view(olin_f, {c.b, c.h, c.lq, d});
  a.lin_h = f32view(h_f, {c.b, c.h, d, d});
  a.lin_z = f32view(z_f, {c.b, c.h, d});
  if (c.weight) a.proj_weight = f32view(std::vector<float>(w.begin(), w.end()), {d, d});
  if (c.bias) a.proj_bias = f32view(std::vector<float>(bias.begin(), bias.end()), {d});
  std::vector<float> poison_w(d * d, NAN), poison_b(d, NAN);
  a.d_proj_weight = f32view(poison_w, {d, d});
  a.d_proj_bias = f32view(poison_b, {d});
  auto i32view = [&](const std::vector<int32_t>& host, std::initializer_list<int64_t> shape) {
    int32_t* dev = to_device(host);
    owned.push_back(dev);
    return make_view(dev, DType::i32, shape, Device::cuda);
  };
  a.map.lut = i32view(m.lut, {c.b, c.h, m.nq, c.t_crit});
  a.map.count = i32view(m.count, {c.b, c.h, m.nq});
  a.map.inv_offset = i32view(m.inv_offset, {c.b, c.h, m.nk + 1});
  a.map.inv_index = i32view(m.inv_index, {c.b, c.h, m.nq * c.t_crit});
  if (c.t_negl > 0) {
    a.map.negl_lut = i32view(m.negl_lut, {c.b, c.h, m.nq, c.t_negl});
    a.map.negl_count = i32view(m.negl_count, {c.b, c.h, m.nq});
    a.map.negl_inv_offset = i32view(m.ninv_offset, {c.b, c.h, m.nk + 1});
    a.map.negl_inv_index = i32view(m.ninv_index, {c.b, c.h, m.nq * c.t_negl});
  }

  const size_t ws = cuda::bwd::workspace_bytes(p, cfg);
  void* workspace = nullptr;
  CHECK_CUDA(cudaMalloc(&workspace, std::max<size_t>(ws, 1)));
  CHECK_CUDA(
      cudaMemset(workspace, 0xFF, std::max<size_t>(ws, 1)));  // stale NaNs: every piece must be written before read
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  Exec exec;
  exec.stream = stream;
  exec.workspace = workspace;
  exec.workspace_bytes = ws;

  bool ok = true;
  for (cuda::bwd::SparseKernels kernels :
       {cuda::bwd::SparseKernels::tensor_core, cuda::bwd::SparseKernels::reference}) {
    if ((bench || g_mma_only) && kernels == cuda::bwd::SparseKernels::reference) break;
    const char* kname = kernels == cuda::bwd::SparseKernels::reference ? "ref-kernels" : "mma-kernels";
    char label[300];
    std::snprintf(label, sizeof label,
                  "%s %s %s %s D=%d bq=%d bk=%d B=%lld H=%lld Lq=%lld Lk=%lld T=%d Tn=%d W=%d b=%d %s", kname,
                  c.variant == Variant::global ? "global" : "complement", name_of(c.fm),
                  c.dtype == DType::bf16 ? "bf16" : "f16", d, c.bq, c.bk, (long long)c.b, (long long)c.h,
                  (long long)c.lq, (long long)c.lk, c.t_crit, c.t_negl, c.weight, c.bias, c.blhd ? "blhd" : "bhld");

    CHECK_CUDA(cudaMemset(a.dq.data, 0xFF, q.val.size() * 2));
    CHECK_CUDA(cudaMemset(a.dk.data, 0xFF, k.val.size() * 2));
    CHECK_CUDA(cudaMemset(a.dv.data, 0xFF, v.val.size() * 2));
    CHECK_CUDA(cudaMemset(a.d_proj_weight.data, 0xFF, d * d * 4));
    CHECK_CUDA(cudaMemset(a.d_proj_bias.data, 0xFF, d * 4));
    Status st = cuda::bwd::launch_backward_with(p, a, cfg, exec, kernels);
    if (!st.ok()) {
      std::printf("FAIL %s: launch_backward: %s\n", label, st.message.c_str());
      ok = false;
      continue;
    }
    CHECK_CUDA(cudaStreamSynchronize(stream));
    if (bench) {
      std::vector<float> times;
      cudaEvent_t e0, e1;
      CHECK_CUDA(cudaEventCreate(&e0));
      CHECK_CUDA(cudaEventCreate(&e1));
      for (int it = 0; it < reps; ++it) {
        CHECK_CUDA(cudaEventRecord(e0, stream));
        st = cuda::bwd::launch_backward_with(p, a, cfg, exec, kernels);
        CHECK_CUDA(cudaEventRecord(e1, stream));
        CHECK_CUDA(cudaEventSynchronize(e1));
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        times.push_back(ms);
      }
      std::sort(times.begin(), times.end());
      std::printf("BENCH %s: backward median %.3f ms (min %.3f, max %.3f, %d runs), workspace %.1f MB\n", label,
                  times[times.size() / 2], times.front(), times.back(), reps, ws / 1048576.0);
    } else {
      std::vector<double> dq = download(a.dq, q), dk = download(a.dk, k), dv = download(a.dv, v);
      std::vector<float> dw(d * d), db(d);
      CHECK_CUDA(cudaMemcpy(dw.data(), a.d_proj_weight.data, dw.size() * 4, cudaMemcpyDeviceToHost));
      CHECK_CUDA(cudaMemcpy(db.data(), a.d_proj_bias.data, db.size() * 4, cudaMemcpyDeviceToHost));
      // Determinism: a second run into re-poisoned outputs must be bitwise identical.
      std::vector<uint16_t> first_dq(q.val.size());
      CHECK_CUDA(cudaMemcpy(first_dq.data(), a.dq.data, first_dq.size() * 2, cudaMemcpyDeviceToHost));
      std::vector<uint16_t> first_dk(k.val.size());
      CHECK_CUDA(cudaMemcpy(first_dk.data(), a.dk.data, first_dk.size() * 2, cudaMemcpyDeviceToHost));
      CHECK_CUDA(cudaMemset(a.dq.data, 0xFF, first_dq.size() * 2));
      CHECK_CUDA(cudaMemset(a.dk.data, 0xFF, first_dk.size() * 2));
      st = cuda::bwd::launch_backward_with(p, a, cfg, exec, kernels);
      CHECK_CUDA(cudaStreamSynchronize(stream));
      std::vector<uint16_t> second_dq(first_dq.size()), second_dk(first_dk.size());
      CHECK_CUDA(cudaMemcpy(second_dq.data(), a.dq.data, second_dq.size() * 2, cudaMemcpyDeviceToHost));
      CHECK_CUDA(cudaMemcpy(second_dk.data(), a.dk.data, second_dk.size() * 2, cudaMemcpyDeviceToHost));
      const bool deterministic = st.ok() && first_dq == second_dq && first_dk == second_dk;

      // bf16 keeps 8 significant bits, fp16 11: the gradients go through one rounding of P and dS to the input
      // dtype (tensor-core kernels) and one of the output, so the bound is a few units of the dtype's epsilon.
      const double tol = c.dtype == DType::bf16 ? 1.6e-2 : 2e-3;
      const double tol_f32 = 1e-4;  // dW, db: fp32 sums of exact products of the inputs
      bool f1, f2, f3, f4, f5;
      const double e_dq = rel_l2(dq, ref.dq, &f1), e_dk = rel_l2(dk, ref.dk, &f2), e_dv = rel_l2(dv, ref.dv, &f3);
      const double e_dw = rel_l2(std::vector<double>(dw.begin(), dw.end()), ref.dw, &f4);
      const double e_db = rel_l2(std::vector<double>(db.begin(), db.end()), ref.db, &f5);
      // O_l and dW use o_lin as stored in fp32: the fp32 rounding of o_lin bounds dW's error.
      const bool case_ok = f1 && f2 && f3 && f4 && f5 && e_dq < tol && e_dk < tol && e_dv < tol && e_dw < tol_f32 &&
                           e_db < tol_f32 && deterministic;
      ok = ok && case_ok;
      std::printf(
          "%s %s: rel_l2 dq %.2e dk %.2e dv %.2e dW %.2e db %.2e finite %d deterministic %d "
          "(linear share dq %.2f dk %.2f dv %.2f)\n",
          case_ok ? "PASS" : "FAIL", label, e_dq, e_dk, e_dv, e_dw, e_db, f1 && f2 && f3 && f4 && f5, deterministic,
          norm_ratio(ref.dq_lin, ref.dq), norm_ratio(ref.dk_lin, ref.dk), norm_ratio(ref.dv_lin, ref.dv));
    }
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
  for (void* ptr : owned) CHECK_CUDA(cudaFree(ptr));
  CHECK_CUDA(cudaFree(workspace));
  return ok;
}

std::vector<Case> default_cases() {
  std::vector<Case> cs;
  Case c;
  // global, softmax, the W1 block sizes, ragged Lq != Lk
  c = Case{};
  cs.push_back(c);
  // global, elu, D=64, fp16, (B,L,H,D) layout, bq 64 / bk 128, no bias
  c = Case{};
  c.fm = FeatureMap::elu;
  c.dtype = DType::f16;
  c.d = 64;
  c.bq = 64;
  c.bk = 128;
  c.b = 2;
  c.h = 1;
  c.lq = 300;
  c.lk = 777;
  c.t_crit = 2;
  c.bias = false;
  c.blhd = true;
  c.seed = 2;
  cs.push_back(c);
  // global, relu, W absent: the linear branch sends gradient to W only
  c = Case{};
  c.fm = FeatureMap::relu;
  c.bq = 64;
  c.bk = 64;
  c.lq = 257;
  c.lk = 513;
  c.t_crit = 4;
  c.weight = false;
  c.seed = 3;
  cs.push_back(c);
  // complement, softmax, negligible blocks, some query blocks with empty M_i
  c = Case{};
  c.variant = Variant::complement;
  c.lq = 1000;
  c.lk = 1000;
  c.t_crit = 3;
  c.t_negl = 13;
  c.seed = 4;
  cs.push_back(c);
  // complement, elu, D=64, 64/64, blhd
  c = Case{};
  c.variant = Variant::complement;
  c.fm = FeatureMap::elu;
  c.d = 64;
  c.bq = 64;
  c.bk = 64;
  c.lq = 500;
  c.lk = 520;
  c.t_crit = 2;
  c.t_negl = 3;
  c.blhd = true;
  c.seed = 5;
  cs.push_back(c);
  // complement, relu, 128/128, no negligible set, custom scale
  c = Case{};
  c.variant = Variant::complement;
  c.fm = FeatureMap::relu;
  c.bq = 128;
  c.bk = 128;
  c.lq = 700;
  c.lk = 650;
  c.t_crit = 2;
  c.scale = 0.05;
  c.seed = 6;
  cs.push_back(c);
  // topk = 1 (every block critical), bq 128 / bk 128, L < block size
  c = Case{};
  c.bq = 128;
  c.bk = 128;
  c.lq = 100;
  c.lk = 90;
  c.t_crit = 1;
  c.seed = 7;
  cs.push_back(c);
  return cs;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20;
  Case bc;
  // --bench [reps [variant [bq bk [weight]]]]: time W1 (no reference)
  if (argc > 1 && std::string(argv[1]) == "--bench") {
    bc.b = 1;
    bc.h = 12;
    bc.lq = bc.lk = 32760;
    bc.d = 128;
    bc.bq = 128;
    bc.bk = 64;
    bc.t_crit = 25;
    if (argc > 2) reps = std::atoi(argv[2]);
    if (argc > 3) bc.variant = std::string(argv[3]) == "complement" ? Variant::complement : Variant::global;
    if (argc > 5) {
      bc.bq = std::atoi(argv[4]);
      bc.bk = std::atoi(argv[5]);
    }
    if (argc > 6) bc.weight = std::atoi(argv[6]) != 0;
    const int64_t nk = (bc.lk + bc.bk - 1) / bc.bk;
    bc.t_crit = static_cast<int>(std::max<int64_t>(1, static_cast<int64_t>(std::floor(0.05 * nk))));
    return run_case(bc, true, reps) ? 0 : 1;
  }
  g_mma_only = argc > 1 && std::string(argv[1]) == "--mma-only";
  int failures = 0;
  for (const Case& c : default_cases()) failures += run_case(c, false, 0) ? 0 : 1;
  std::printf("%s: %d case(s) failed\n", failures ? "FAILED" : "ALL PASSED", failures);
  return failures ? 1 : 0;
}
