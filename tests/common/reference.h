// The one fp64 reference of the C++ tests (tests/cpp and tests/cuda): a naive SLA forward and backward (docs/SPEC.md
// sections 1-5) on dense (B, H, L, D) double arrays, written from the SPEC alone (it shares no code with src/cpu
// or src/cuda), with a rounding hook: with the identity it is the exact reference, with rounding to bf16/fp16 it
// is "the same math done at the input precision" (FlashAttention's test rule: a kernel's error must stay within
// 2x of that). The CPU backend in fp64 is the oracle the GPU is compared with; this reference checks that oracle.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "sla/config.h"

namespace sla_ref {

struct RefProblem {
  int64_t batch = 0, heads = 0, lq = 0, lk = 0, d = 0;
  int64_t dv = 0;  // head dim of V; 0 means d
  int bq = 64, bk = 64;
  sla::Variant variant = sla::Variant::global;
  sla::FeatureMap feature_map = sla::FeatureMap::softmax;
  double scale = 0, eps = 1e-5;
  const double* q = nullptr;       // (B, H, Lq, D) contiguous
  const double* k = nullptr;       // (B, H, Lk, D)
  const double* v = nullptr;       // (B, H, Lk, Dv)
  const double* weight = nullptr;  // (Dv, Dv) or null
  const double* bias = nullptr;    // (Dv) or null
  const int32_t* lut = nullptr;    // (B, H, Nq, T)
  const int32_t* count = nullptr;  // (B, H, Nq)
  int64_t t = 0;
  const int32_t* negl_lut = nullptr;  // (B, H, Nq, Tn) or null
  const int32_t* negl_count = nullptr;
  int64_t tn = 0;

  int64_t value_dim() const { return dv > 0 ? dv : d; }
};

struct RefOutputs {
  std::vector<double> o, o_sparse, lse, o_lin, lin_h, lin_z;
};

// Rounding applied where a PyTorch implementation in the input dtype would round (scores, P, O_s, phi, H, z,
// O_l, O; in the backward dP, dS, dO_l and the linear branch's gradients). Pass the identity for the exact
// reference.
using Rounding = std::function<double(double)>;
inline double exact(double x) { return x; }

// phi of one row of length d, exact.
std::vector<double> reference_phi(sla::FeatureMap f, const double* x, int64_t d);

void reference_forward(const RefProblem& p, const Rounding& rnd, RefOutputs* out);

struct RefGradients {
  std::vector<double> dq, dk, dv, dw, db;  // dw, db empty when the problem has no W / b
};

// Gradients of docs/SPEC.md section 5 for the output gradient d_o ((B, H, Lq, Dv) contiguous), recomputing the forward
// with the same rounding hook. Without W the linear branch sends no gradient to q, k, v (only to dW, db).
void reference_backward(const RefProblem& p, const std::vector<double>& d_o, const Rounding& rnd, RefGradients* out);

// The scale at which dK can cancel, for the test rule's floor: dK_c = s sum_r P_rc (dP_rc - Delta_r) q_r, and
// dP_rc - Delta_r cancels completely where P is one-hot (one key: P = 1, so the exact dK is 0). The backend forms dP
// and Delta as fp32 dot products, each within a few u of |dO_r| |v_c| (Cauchy-Schwarz), so its dK_c is within a few
// u of s |v_c| sum_r P_rc |dO_r| max|q_r|. Returns the largest of these over every key of every (b, h), with the
// exact P of the sparse branch (critical blocks only; d_o as in reference_backward).
double reference_dk_cancellation_scale(const RefProblem& p, const std::vector<double>& d_o);

// Block scores S_ij of docs/SPEC.md section 1 in double (smooth-K, pooling): (B, H, Nq, Nk).
std::vector<double> reference_block_scores(const RefProblem& p);

// Block classes per (b, h): crit[(bh * nq + i) * nk + j] = 1 if key block j is critical for query block i.
struct Masks {
  int64_t nq = 0, nk = 0;
  std::vector<uint8_t> crit, negl;

  bool critical(int64_t bh, int64_t i, int64_t j) const { return crit[(bh * nq + i) * nk + j] != 0; }
  bool negligible(int64_t bh, int64_t i, int64_t j) const { return negl[(bh * nq + i) * nk + j] != 0; }
};

// The block map from its definition (reference_block_scores), with an independent selection rule: key block j
// is critical when fewer than T blocks beat it (a higher score, or an equal score at a lower index); negligible
// when it is not critical and fewer than Tn blocks are below it (a lower score, or an equal score at a higher
// index). Uses p's shapes, q and k only.
Masks reference_block_masks(const RefProblem& p, int64_t t, int64_t tn);

// Look-up tables of a mask (ascending key blocks, full rows of capacity = the largest row count), to run the
// reference on a given mask: fills p.lut/count/t and p.negl_lut/negl_count/tn, pointing into `tables`.
struct MaskTables {
  std::vector<int32_t> lut, count, negl_lut, negl_count;
};
void use_masks(const Masks& m, RefProblem* p, MaskTables* tables);

}  // namespace sla_ref
