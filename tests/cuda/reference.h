// A naive SLA forward (SPEC.md sections 2-4) on dense (B, H, L, D) double arrays, written from the SPEC alone, with
// a rounding hook: with the identity it is an fp64 oracle, with rounding to bf16/fp16 it is "the same math done at
// the input precision" (FlashAttention's test rule: the kernel's error must stay within 2x of that).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "sla/config.h"

namespace sla_cuda_test {

struct RefProblem {
  int64_t batch = 0, heads = 0, lq = 0, lk = 0, d = 0;
  int bq = 64, bk = 64;
  sla::Variant variant = sla::Variant::global;
  sla::FeatureMap feature_map = sla::FeatureMap::softmax;
  double scale = 0, eps = 1e-5;
  const double* q = nullptr;  // (B, H, Lq, D) contiguous
  const double* k = nullptr;  // (B, H, Lk, D)
  const double* v = nullptr;  // (B, H, Lk, D)
  const double* weight = nullptr;  // (D, D) or null
  const double* bias = nullptr;    // (D) or null
  const int32_t* lut = nullptr;    // (B, H, Nq, T)
  const int32_t* count = nullptr;  // (B, H, Nq)
  int64_t t = 0;
  const int32_t* negl_lut = nullptr;    // (B, H, Nq, Tn) or null
  const int32_t* negl_count = nullptr;
  int64_t tn = 0;
};

struct RefOutputs {
  std::vector<double> o, lse, o_lin, lin_h, lin_z;
};

// Rounding applied where a PyTorch implementation in the input dtype would round (scores, P, O_s, phi, H, z,
// O_l, O). Pass the identity for the exact reference.
using Rounding = std::function<double(double)>;

void reference_forward(const RefProblem& p, const Rounding& rnd, RefOutputs* out);

struct RefGradients {
  std::vector<double> dq, dk, dv, dw, db;  // dw, db empty when the problem has no W / b
};

// Gradients of SPEC.md section 5 for the output gradient d_o ((B, H, Lq, D) contiguous), recomputing the forward
// with the same rounding hook (dP, dS, dO_l and the linear branch's gradients are rounded too).
void reference_backward(const RefProblem& p, const std::vector<double>& d_o, const Rounding& rnd,
                        RefGradients* out);

// The scale at which dK can cancel, for the test rule's floor: dK_c = s sum_r P_rc (dP_rc - Delta_r) q_r, and
// dP_rc - Delta_r cancels completely where P is one-hot (one key: P = 1, so the exact dK is 0). The backend forms dP
// and Delta as fp32 dot products, each within a few u of |dO_r| |v_c| (Cauchy-Schwarz), so its dK_c is within a few
// u of s |v_c| sum_r P_rc |dO_r| max|q_r|. Returns the largest of these over every key of every (b, h), with the
// exact P of the sparse branch (critical blocks only; d_o as in reference_backward).
double reference_dk_cancellation_scale(const RefProblem& p, const std::vector<double>& d_o);

// Block scores S_ij of SPEC.md section 1 in double (smooth-K, pooling), for judging near-ties: (B, H, Nq, Nk).
std::vector<double> reference_block_scores(const RefProblem& p);

}  // namespace sla_cuda_test
