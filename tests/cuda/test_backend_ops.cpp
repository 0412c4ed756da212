// Backend-vs-fp64 tests in the style of ggml's test-backend-ops: a list of test-case objects per mode (each holds
// its variables, its error measure and its FLOPs), run by one loop over the modes asked for.
//
//   test_backend_ops [--backend cuda|cpu] [--mode fwd,bwd,fuzz,ref,perf|all] [--filter SUBSTRING] [--seed N]
//                    [--case K] [--count N] [--max-len N] [--jobs N] [--no-o-sparse] [--list]
//
// --backend: the backend under test: cuda (default in a CUDA build), or cpu: the CPU backend in bf16/fp16 against
//       the same fp64 oracle (the only backend of a build without CUDA; CI runs it).
// fwd:  a grid of forward cases (dtype x head dim x block sizes x variant, with feature map, shape and layout
//       rotating through all their values) plus special cases (topk = 1, negligible set, no saved state, int64
//       offsets, one marginal block of 2048 with V of one sign (the complement state's cancellation), and the adaptive
//       block map of docs/BLOCK_MAP.md: per-head topk, top_p with a count clamp and with min = max, the negligible
//       threshold under top_p and under topk, on both query-block sizes). Each case: random inputs; the CPU backend's
//       fp64 map checked row by row against the rule's definition (count, a prefix of the score order, the negligible
//       suffix, -1 padding; valid_row); the backend's map against it (rows identical except near-boundary rows that
//       must still be valid within the cross-backend tolerance of docs/BLOCK_MAP.md section 2); inverse tables exact;
//       the forward against the CPU backend in fp64 (the oracle) under FlashAttention's rule: the error must be at most
//       2x that of the same math done at the input precision (tests/common/reference.cpp with rounding) plus a small
//       floor (check_rule). Outputs are poisoned with NaN before each run, and two runs must match bitwise.
// bwd:  forward + backward against the oracle's O, dQ, dK, dV, dW, db under the same rule, on the forward grid and
//       on the precision regressions (regress-*); two runs bitwise equal. The map (the CPU backend's in fp64) is
//       checked against its rule first, in every training case (bwd, fuzz, ref).
// fuzz: --count (2000; 300 with --backend cpu) configurations drawn from --seed (fresh and printed when not given)
//       over every option the API accepts, checked like bwd: dtype, head dim (16/32 too on the CPU), block sizes
//       (16/32 too on the CPU), lengths from 1, layouts, variant, feature map, W, b and their scales, softmax scale,
//       eps, and the block map: fixed topk, per-head topk (~35%), top_p (~35%; one p or one per head, min_blocks and
//       max_blocks: 0 = Nk, below Nk, equal, past Nk), and for the complement variant the fixed negligible fraction
//       or (40%) a negligible threshold with max_negligible. Inputs of most adaptive cases get per-block offsets
//       (/blkX), so that the pooled shares differ and the rules choose different counts per row. Bitwise reruns on
//       every 8th case; on every 2nd (CPU backend; every 8th on CUDA) the oracle itself against the exact fp64
//       reference (to 1e-9: the 2x rule cannot see an oracle that is wrong at every precision). Prints the worst
//       error / limit per tensor, how many cases had each rule (and rows below the LUT width, thresholds that cut
//       a row) and the replay command of each failure (--seed N --case K).
// ref:  host only: the fp64 reference (exact) against the CPU backend, forward and backward, to 1e-9.
// perf: W1 (B=1, H=12, L=32760, D=128, bf16, topk 0.05, 128/64, global), median of 20: block map and forward
//       (inference), and one training step (map with inverse tables + forward saving state, then backward). CUDA.
// --no-o-sparse: run the backward without the forward's fp32 O_s (the formulation before 2026-12-01), to see the
//       regressions fail.
// Exit status: 0 pass, 1 failure, 77 skipped (no CUDA device).
#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu/half_float.h"
#include "device_memory.h"
#include "reference.h"
#include "sla/sla.h"

namespace {

using sla::DType;
using sla::FeatureMap;
using sla::Variant;
using namespace sla_cuda_test;
using namespace sla_ref;

constexpr int kSkip = 77;

Rounding rounding_of(DType dt) {
  return [dt](double x) { return from_bits(to_bits(x, dt), dt); };
}

std::vector<double> to_double(const std::vector<float>& f) { return std::vector<double>(f.begin(), f.end()); }

// ---- cases ----------------------------------------------------------------------------------------------------------

struct Case {
  DType dtype = DType::bf16;
  int64_t d = 128;
  int bq = 64, bk = 64;
  Variant variant = Variant::global;
  FeatureMap fmap = FeatureMap::softmax;
  int64_t batch = 1, heads = 2, lq = 300, lk = 300;
  Layout layout;
  double topk = 0.25, negligible = 0.0;
  // Adaptive block map (docs/BLOCK_MAP.md), as in sla::Config: per-head topk, the top_p rule with its count clamp,
  // and the complement variant's negligible threshold (which replaces the fixed fraction `negligible`).
  std::vector<double> head_topk;
  sla::CriticalRule rule = sla::CriticalRule::topk;
  double top_p = 0.0;
  std::vector<double> head_top_p;
  int64_t min_blocks = 1, max_blocks = 0;
  double negligible_threshold = 0.0, max_negligible = 0.0;
  bool weight = true, bias = true, save = true;
  double scale = 0.0;            // softmax scale; 0: 1/sqrt(D)
  double eps = 1e-5;             // global variant's epsilon
  double block_structure = 0.0;  // sd of an offset shared by the rows of each block of Q and K (0: none), so that
                                 // pooled scores differ between blocks and adaptive counts differ between rows
  // Added to every element of V: channels of one sign, so that the linear states of all key blocks add up without
  // cancelling (a large total against a small marginal sum).
  double v_mean = 0.0;
  double weight_gain = 1.0;  // W ~ N(0, 1/D) * weight_gain: large gains make the linear part dominate O
  double bias_sd = 0.1;      // b ~ N(0, bias_sd^2)
  std::string shape_name = "ragged";

  bool top_p_rule() const { return rule == sla::CriticalRule::top_p; }
  // The block-map rule, compactly: "/topk0.25/kl0.10" (the fixed rule), "/topk0.10,0.60" (per head),
  // "/top_p0.90" or "/top_p0.50,0.95" (per head; "+0.30" when top_p is also set) with "/min2/max8" where not the
  // defaults, then "/thr1.0e-03/maxkl0.50" for the negligible threshold.
  std::string rule_name() const {
    char buf[64];
    auto list = [&](const char* what, const std::vector<double>& v, double one) {
      std::string r = std::string("/") + what;
      if (v.empty()) return r + (std::snprintf(buf, sizeof buf, "%.2f", one), buf);
      for (size_t h = 0; h < v.size(); ++h) r += (std::snprintf(buf, sizeof buf, "%s%.2f", h ? "," : "", v[h]), buf);
      if (one != 0) r += (std::snprintf(buf, sizeof buf, "+%.2f", one), buf);
      return r;
    };
    std::string n =
        top_p_rule() ? list("top_p", head_top_p, top_p) : list("topk", head_topk, head_topk.empty() ? topk : 0);
    if (top_p_rule() && min_blocks != 1) n += (std::snprintf(buf, sizeof buf, "/min%" PRId64, min_blocks), buf);
    if (top_p_rule() && max_blocks != 0) n += (std::snprintf(buf, sizeof buf, "/max%" PRId64, max_blocks), buf);
    if (negligible_threshold > 0) {
      n += (std::snprintf(buf, sizeof buf, "/thr%.1e/maxkl%.2f", negligible_threshold, max_negligible), buf);
    } else {
      n += (std::snprintf(buf, sizeof buf, "/kl%.2f", negligible), buf);
    }
    return n;
  }
  std::string name() const {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "fwd/%s/d%" PRId64 "/bq%d/bk%d/%s/%s/%s/%s/B%" PRId64 "H%" PRId64 "Lq%" PRId64 "Lk%" PRId64
                  "%s%s%s%s%s",
                  sla::dtype_name(dtype), d, bq, bk, sla::variant_name(variant), sla::feature_map_name(fmap),
                  shape_name.c_str(), layout.name(), batch, heads, lq, lk, rule_name().c_str(), weight ? "/W" : "",
                  bias ? "/b" : "", save ? "/save" : "", layout.head_gap > (int64_t{1} << 30) ? "/int64" : "");
    std::string n = buf;
    char extra[128];
    if (scale > 0) n += (std::snprintf(extra, sizeof extra, "/scale%.4g", scale), extra);
    if (eps != 1e-5) n += (std::snprintf(extra, sizeof extra, "/eps%.3g", eps), extra);
    if (block_structure > 0) n += (std::snprintf(extra, sizeof extra, "/blk%.2f", block_structure), extra);
    if (v_mean != 0) n += (std::snprintf(extra, sizeof extra, "/vmean%.3g", v_mean), extra);
    if (weight && weight_gain != 1.0) n += (std::snprintf(extra, sizeof extra, "/Wx%.3g", weight_gain), extra);
    if (bias && bias_sd != 0.1) n += (std::snprintf(extra, sizeof extra, "/bsd%.3g", bias_sd), extra);
    return n;
  }
  // Critical blocks per row, averaged over the heads: T_h of each head for the topk rules, the LUT width (the most
  // a row can hold) for top_p, whose counts depend on the inputs.
  double critical_blocks_bound(int64_t nk) const {
    auto fixed = [&](double t) {
      return std::clamp(std::floor(t * static_cast<double>(nk)), 1.0, static_cast<double>(nk));
    };
    if (top_p_rule()) return static_cast<double>(max_blocks == 0 ? nk : std::min(max_blocks, nk));
    if (head_topk.empty()) return fixed(topk);
    double sum = 0;
    for (double t : head_topk) sum += fixed(t);
    return sum / static_cast<double>(head_topk.size());
  }
  sla::Config config() const {
    sla::Config c;
    c.block_q = bq;
    c.block_k = bk;
    c.topk = topk;
    c.negligible = negligible;
    c.head_topk = head_topk;
    c.rule = rule;
    c.top_p = top_p;
    c.head_top_p = head_top_p;
    c.min_blocks = min_blocks;
    c.max_blocks = max_blocks;
    c.negligible_threshold = negligible_threshold;
    c.max_negligible = max_negligible;
    c.variant = variant;
    c.feature_map = fmap;
    c.scale = scale;
    c.eps = eps;
    return c;
  }
};

std::vector<Case> forward_cases() {
  std::vector<Case> cases;
  const DType dts[] = {DType::bf16, DType::f16};
  const int64_t dims[] = {64, 128};
  const int blocks[] = {64, 128};
  const Variant vars[] = {Variant::global, Variant::complement};
  const FeatureMap fms[] = {FeatureMap::softmax, FeatureMap::elu, FeatureMap::relu};
  struct Shape {
    const char* name;
    int64_t lq, lk;
  };
  const Shape shapes[] = {{"ragged", 333, 333}, {"Lq!=Lk", 200, 517}, {"L<block", 45, 37}, {"aligned", 256, 384}};
  int n = 0;
  for (DType dt : dts)
    for (int64_t d : dims)
      for (int bq : blocks)
        for (int bk : blocks)
          for (Variant var : vars) {
            Case c;
            c.dtype = dt;
            c.d = d;
            c.bq = bq;
            c.bk = bk;
            c.variant = var;
            c.fmap = fms[n % 3];
            const Shape& s = shapes[(n / 3 + n) % 4];
            c.shape_name = s.name;
            c.lq = s.lq;
            c.lk = s.lk;
            c.layout.blhd = (n % 2) == 1;
            c.batch = (n % 5 == 0) ? 2 : 1;
            c.heads = 2;
            c.topk = (n % 4 == 0) ? 0.5 : 0.25;
            c.negligible = (var == Variant::complement && n % 3 != 0) ? 0.25 : 0.0;
            c.weight = n % 7 != 3;
            c.bias = n % 5 != 2;
            c.save = n % 6 != 5;
            cases.push_back(c);
            ++n;
          }
  // Invariant 1: topk = 1 is dense attention (W = b = 0); the complement variant's O_l is 0.
  for (Variant var : vars) {
    Case c;
    c.topk = 1.0;
    c.variant = var;
    c.weight = c.bias = false;
    c.shape_name = "dense";
    c.lq = 190;
    c.lk = 250;
    cases.push_back(c);
  }
  // Inference only (no saved state, no W): O = O_s exactly through the fast path.
  {
    Case c;
    c.weight = c.bias = c.save = false;
    c.bq = 128;
    c.shape_name = "inference";
    c.lq = c.lk = 1000;
    c.topk = 0.1;
    cases.push_back(c);
  }
  // int64 offsets: a head stride past 2^31 elements.
  {
    Case c;
    c.bq = 128;
    c.bk = 64;
    c.lq = c.lk = 777;
    c.layout.head_gap = (int64_t{1} << 31) + 1024;
    c.shape_name = "int64";
    cases.push_back(c);
  }
  // Block-map selection paths that the grid above (Nk <= 16) does not reach: T > 32 (the general threshold search;
  // Nk 71 over 3 warp chunks) with a negligible set of 17 (the candidate-list path after excluding T = 35 entries),
  // and Nk = 516 > 512 (two key passes of the score GEMM) with T = 25 and Tn = 51 (general search for the negligible set).
  {
    Case c;
    c.variant = Variant::complement;
    c.lq = 200;
    c.lk = 4500;
    c.topk = 0.5;
    c.negligible = 0.25;
    c.shape_name = "map-T>32";
    cases.push_back(c);
  }
  {
    Case c;
    c.variant = Variant::complement;
    c.bq = 128;
    c.heads = 1;
    c.lq = 130;
    c.lk = 33000;
    c.topk = 0.05;
    c.negligible = 0.1;
    c.weight = c.bias = c.save = false;
    c.shape_name = "map-Nk>512";
    cases.push_back(c);
  }
  // Many heads of short rows: the complement kernels' batching per CTA (key_state_kernel's groups_per_cta, the
  // blocks_per_cta of complement_operands_kernel, complement_gmat_kernel and complement_dh_kernel) engages only when
  // B * H * blocks reaches 1024. Here they take 2 key blocks and 2 query blocks per CTA, with a ragged last block
  // (630 = 9 * 64 + 54) and the total row of the selection last in its CTA; with W (the operands' product, G_i and
  // dH_i) and without it (H_i alone).
  for (int bk : {64, 128}) {
    Case c;
    c.variant = Variant::complement;
    c.d = 64;
    c.batch = 2;
    c.heads = bk == 64 ? 64 : 128;
    c.lq = c.lk = 630;
    c.bk = bk;
    c.topk = 0.25;
    c.negligible = 0.1;
    c.weight = bk == 64;
    c.shape_name = "batched-ctas";
    cases.push_back(c);
  }
  {
    // One marginal block per row out of Nk = 2048, V of one sign: the complement's linear state of a query block is
    // one block's state, while the sum over all key blocks is 2048 times larger. A kernel that forms it as that
    // total minus the critical and negligible blocks cancels about 11 bits of fp32 (docs/KERNELS_NEXT.md 1.5);
    // the direct sum does not.
    Case c;
    c.variant = Variant::complement;
    c.d = 64;
    c.bq = 128;
    c.heads = 1;
    c.lq = 128;
    c.lk = 131072;
    c.topk = 0.5;                  // T = 1024
    c.negligible = 1023.5 / 2048;  // Tn = floor(k_l Nk) = 1023: Nk - T - Tn = 1 marginal block
    c.v_mean = 4.0;
    c.save = false;
    c.shape_name = "cancel-one-marginal";
    cases.push_back(c);
  }
  // The adaptive block map (docs/BLOCK_MAP.md): LUT rows with fewer entries than the table's width, per-head widths
  // and negligible sets chosen by threshold, on both query-block sizes (both mainloops' tiles). Blocks with
  // different pooled scores (block_structure), so that counts and sets differ from row to row. These stay within
  // gradient_cases' size bound, so the bwd and ref grids run them too.
  {
    Case c;  // per-head topk with the fixed negligible fraction (at most 1 - the largest topk)
    c.variant = Variant::complement;
    c.heads = 3;
    c.lq = c.lk = 600;
    c.head_topk = {0.1, 0.35, 0.6};
    c.negligible = 0.2;
    c.block_structure = 0.8;
    c.shape_name = "rule-head-topk";
    cases.push_back(c);
  }
  {
    Case c;  // per-head top_p with a count clamp below Nk = 15 (rows of 2 to 8 blocks)
    c.dtype = DType::f16;
    c.d = 64;
    c.bq = 128;
    c.layout.blhd = true;
    c.lq = 400;
    c.lk = 900;
    c.rule = sla::CriticalRule::top_p;
    c.head_top_p = {0.5, 0.9};
    c.min_blocks = 2;
    c.max_blocks = 8;
    c.block_structure = 1.5;
    c.shape_name = "rule-top_p";
    cases.push_back(c);
  }
  {
    Case c;  // top_p with min_blocks = max_blocks (every row 3 blocks) and the fixed negligible fraction
    c.variant = Variant::complement;
    c.fmap = FeatureMap::elu;
    c.bk = 128;
    c.lq = c.lk = 600;
    c.rule = sla::CriticalRule::top_p;
    c.top_p = 0.8;
    c.min_blocks = c.max_blocks = 3;
    c.negligible = 0.3;
    c.block_structure = 0.8;
    c.shape_name = "rule-top_p-min=max";
    cases.push_back(c);
  }
  {
    Case c;  // top_p (at most 5 of Nk = 10) with the negligible threshold at a tenth of the uniform share 1/Nk
    c.variant = Variant::complement;
    c.bq = c.bk = 128;
    c.lq = 300;
    c.lk = 1280;
    c.rule = sla::CriticalRule::top_p;
    c.top_p = 0.7;
    c.max_blocks = 5;
    c.negligible_threshold = 0.01;
    c.max_negligible = 0.5;
    c.block_structure = 1.5;
    c.shape_name = "rule-threshold";
    cases.push_back(c);
  }
  {
    Case c;  // the fixed topk with the negligible threshold, ragged lengths (Nk = 13)
    c.variant = Variant::complement;
    c.dtype = DType::f16;
    c.d = 64;
    c.fmap = FeatureMap::relu;
    c.lq = 333;
    c.lk = 777;
    c.topk = 0.2;
    c.negligible_threshold = 0.04;
    c.max_negligible = 0.6;
    c.block_structure = 1.0;
    c.shape_name = "rule-threshold-topk";
    cases.push_back(c);
  }
  return cases;
}

// ---- comparisons ------------------------------------------------------------------------------------------------------

struct Stats {
  double max_err = 0, ref_max = 0;
  bool nan = false;
};

Stats compare(const std::vector<double>& got, const std::vector<double>& ref) {
  Stats s;
  for (size_t e = 0; e < got.size(); ++e) {
    if (std::isnan(got[e]) != std::isnan(ref[e])) s.nan = true;
    if (std::isinf(ref[e]) || std::isnan(ref[e])) {
      if (got[e] != ref[e] && !(std::isnan(got[e]) && std::isnan(ref[e]))) s.nan = true;
      continue;
    }
    s.max_err = std::max(s.max_err, std::fabs(got[e] - ref[e]));
    s.ref_max = std::max(s.ref_max, std::fabs(ref[e]));
  }
  return s;
}

// FlashAttention's rule: err(backend, oracle) <= 2 err(emulated, oracle) + floor, with max-abs errors. Two
// corrections keep the rule meaningful where the emulation's own error says nothing:
//  - The emulated error counts as at least half an ulp of the tensor's largest reference value in the dtype the
//    result is stored in (`stored_bits` significant bits: 8 bf16, 11 fp16, 24 fp32). Any implementation that stores
//    a 16-bit result makes that error somewhere near its largest elements; on tiny tensors (one query row) the
//    emulation can happen to round every element well and set a limit no correct kernel meets. On larger tensors
//    the emulated error is at least this already, and the rule is unchanged.
//  - A floor for exact cancellation, where the emulation's error is 0: one key (P = 1: exact dq = dk = 0, and the
//    emulation's dS = P (dP - Delta) is exactly 0 too). There the backend's error is fp32 rounding (u = 2^-24):
//    1e-6 (~17 u) of the tensor's own largest value, 1e-6 absolute (~17 u of the unit-scale random inputs), and the
//    fp32 accumulation error of dS = dP - Delta at `natural`, the scale at which the quantity cancels: for dq,
//    s max|dO_r| max|v_c| max|k| (row norms; dq_r = s sum_c P_rc dS_rc k_c with sum_c P_rc = 1); for dk,
//    reference_dk_cancellation_scale (the P-weighted sum over the rows that attend a key: with one key, every row).
//    dP_rc = dO_r . v_c (tensor cores) and Delta_r = dO_r . O_s,r (CUDA cores) are two fp32 sums of `dot_len` exact
//    products, in different orders, whose exact values are equal here; by the probabilistic model of rounding errors
//    (Higham and Mary, SIAM J. Sci. Comput. 41(5), 2019: the error of an n-term fp32 sum is below lambda sqrt(n) u
//    sum |terms| with a probability that tends to 1 quickly in lambda; lambda = 1 per sum) each is off by at most
//    sqrt(dot_len) u sum_d |dO_rd v_cd| <= sqrt(dot_len) u |dO_r| |v_c|: the floor takes 2 sqrt(dot_len) u natural.
//    (A first version took 4 u natural: on an H100 the wgmma mainloop exceeded it, dq 1.65e-4 against 1.42e-4, in a
//    one-key fp16 d128 case, --seed 11361526181690020066 --case 259.) The 16-bit rounding this rule exists to catch
//    is 2^-8 (bf16) or 2^-11 (fp16) relative: at d 128, 2^12.5 and 2^9.5 times larger than 2 sqrt(D) u.
// `ratio` (optional) receives err / limit: the case passes when it is <= 1.
double half_ulp(double x, int stored_bits) {
  if (!(x > 0) || !std::isfinite(x)) return 0;
  return std::ldexp(1.0, std::ilogb(x) - stored_bits);  // half of 2^(e - (bits - 1))
}

bool check_rule(const char* what, const std::vector<double>& gpu, const std::vector<double>& oracle,
                const std::vector<double>& emulated, std::string* log, double natural = 0, double* ratio = nullptr,
                int stored_bits = 24, int dot_len = 0) {
  const Stats g = compare(gpu, oracle), e = compare(emulated, oracle);
  const double u32 = 1.0 / (1 << 24);
  const double floor = 1e-6 + 1e-6 * g.ref_max + 2 * std::sqrt(static_cast<double>(dot_len)) * u32 * natural;
  const double limit = 2 * std::max(e.max_err, half_ulp(g.ref_max, stored_bits)) + floor;
  const bool ok = !g.nan && g.max_err <= limit;
  if (ratio) *ratio = g.nan ? std::numeric_limits<double>::infinity() : g.max_err / limit;
  char buf[256];
  std::snprintf(buf, sizeof buf, " %s %.2e/%.2e%s", what, g.max_err, limit, ok ? "" : (g.nan ? "(NaN!)" : "(FAIL)"));
  *log += buf;
  return ok;
}

// ---- the block map ----------------------------------------------------------------------------------------------------

struct HostMap {
  sla::BlockMapShape shape;
  std::vector<int32_t> lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index;
};

// The reference problem of case `c` over host inputs and a block map; it points into its arguments, which must
// outlive it.
RefProblem make_ref_problem(const Case& c, const sla::Config& cfg, const std::vector<double>& q,
                            const std::vector<double>& k, const std::vector<double>& v, const std::vector<double>& w,
                            const std::vector<double>& bias, const HostMap& map) {
  RefProblem rp;
  rp.batch = c.batch;
  rp.heads = c.heads;
  rp.lq = c.lq;
  rp.lk = c.lk;
  rp.d = c.d;
  rp.bq = c.bq;
  rp.bk = c.bk;
  rp.variant = c.variant;
  rp.feature_map = c.fmap;
  rp.scale = cfg.scale > 0 ? cfg.scale : 1.0 / std::sqrt(static_cast<double>(c.d));
  rp.eps = cfg.eps;
  rp.q = q.data();
  rp.k = k.data();
  rp.v = v.data();
  rp.weight = c.weight ? w.data() : nullptr;
  rp.bias = c.bias ? bias.data() : nullptr;
  rp.lut = map.lut.data();
  rp.count = map.count.data();
  rp.t = map.shape.critical;
  if (map.shape.negligible > 0) {
    rp.negl_lut = map.negl_lut.data();
    rp.negl_count = map.negl_count.data();
    rp.tn = map.shape.negligible;
  }
  return rp;
}

struct DeviceMap {
  DeviceBuffer lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index;
  sla::BlockMap map;
};

sla::TensorView i32_view(void* p, std::initializer_list<int64_t> shape, sla::Device dev) {
  return sla::make_view(p, DType::i32, shape, dev);
}

DeviceMap make_device_map(const sla::BlockMapShape& s) {
  DeviceMap m;
  const int64_t B = s.batch, H = s.heads, nq = s.q_blocks, nk = s.k_blocks, t = s.critical, tn = s.negligible;
  m.lut = DeviceBuffer(B * H * nq * t * 4);
  m.count = DeviceBuffer(B * H * nq * 4);
  m.inv_offset = DeviceBuffer(B * H * (nk + 1) * 4);
  m.inv_index = DeviceBuffer(B * H * nq * t * 4);
  m.map.lut = i32_view(m.lut.ptr, {B, H, nq, t}, dut_device());
  m.map.count = i32_view(m.count.ptr, {B, H, nq}, dut_device());
  m.map.inv_offset = i32_view(m.inv_offset.ptr, {B, H, nk + 1}, dut_device());
  m.map.inv_index = i32_view(m.inv_index.ptr, {B, H, nq * t}, dut_device());
  if (tn > 0) {
    m.negl_lut = DeviceBuffer(B * H * nq * tn * 4);
    m.negl_count = DeviceBuffer(B * H * nq * 4);
    m.negl_inv_offset = DeviceBuffer(B * H * (nk + 1) * 4);
    m.negl_inv_index = DeviceBuffer(B * H * nq * tn * 4);
    m.map.negl_lut = i32_view(m.negl_lut.ptr, {B, H, nq, tn}, dut_device());
    m.map.negl_count = i32_view(m.negl_count.ptr, {B, H, nq}, dut_device());
    m.map.negl_inv_offset = i32_view(m.negl_inv_offset.ptr, {B, H, nk + 1}, dut_device());
    m.map.negl_inv_index = i32_view(m.negl_inv_index.ptr, {B, H, nq * tn}, dut_device());
  }
  return m;
}

void poison(const DeviceMap& m) {
  for (const DeviceBuffer* b : {&m.lut, &m.count, &m.negl_lut, &m.negl_count, &m.inv_offset, &m.inv_index,
                                &m.negl_inv_offset, &m.negl_inv_index})
    b->poison();
}

HostMap download(const DeviceMap& m, const sla::BlockMapShape& s) {
  HostMap h;
  h.shape = s;
  h.lut = m.lut.download<int32_t>();
  h.count = m.count.download<int32_t>();
  h.negl_lut = m.negl_lut.download<int32_t>();
  h.negl_count = m.negl_count.download<int32_t>();
  h.inv_offset = m.inv_offset.download<int32_t>();
  h.inv_index = m.inv_index.download<int32_t>();
  h.negl_inv_offset = m.negl_inv_offset.download<int32_t>();
  h.negl_inv_index = m.negl_inv_index.download<int32_t>();
  return h;
}

// Host views of a HostMap for the CPU backend.
sla::BlockMap host_views(HostMap& h) {
  const auto& s = h.shape;
  const int64_t B = s.batch, H = s.heads, nq = s.q_blocks, nk = s.k_blocks, t = s.critical, tn = s.negligible;
  h.inv_offset.resize(B * H * (nk + 1));
  h.inv_index.resize(B * H * nq * t);
  sla::BlockMap m;
  m.lut = i32_view(h.lut.data(), {B, H, nq, t}, sla::Device::cpu);
  m.count = i32_view(h.count.data(), {B, H, nq}, sla::Device::cpu);
  m.inv_offset = i32_view(h.inv_offset.data(), {B, H, nk + 1}, sla::Device::cpu);
  m.inv_index = i32_view(h.inv_index.data(), {B, H, nq * t}, sla::Device::cpu);
  if (tn > 0) {
    h.negl_lut.resize(B * H * nq * tn);
    h.negl_count.resize(B * H * nq);
    h.negl_inv_offset.resize(B * H * (nk + 1));
    h.negl_inv_index.resize(B * H * nq * tn);
    m.negl_lut = i32_view(h.negl_lut.data(), {B, H, nq, tn}, sla::Device::cpu);
    m.negl_count = i32_view(h.negl_count.data(), {B, H, nq}, sla::Device::cpu);
    m.negl_inv_offset = i32_view(h.negl_inv_offset.data(), {B, H, nk + 1}, sla::Device::cpu);
    m.negl_inv_index = i32_view(h.negl_inv_index.data(), {B, H, nq * tn}, sla::Device::cpu);
  }
  return m;
}

// ---- the block map's rules, from their definitions ------------------------------------------------------------------
//
// docs/BLOCK_MAP.md written out independently of the library: each row's count, its critical set (a prefix of the
// total order: score descending, index ascending) and its negligible set (a suffix), judged on the fp64 pooled
// scores of reference_block_scores. A row of a table passes when it is a valid map of its rule within `MapTolerance`:
// the CPU backend's fp64 map against these fp64 scores up to summation-order rounding (kExactMap), another
// backend's fp32 map within the documented cross-backend tolerance (kCrossBackendMap, as test_block_map_rules).

// One head's rule: the topk rules fix the count (T), top_p bounds it to [lo, hi] by the mass p.
struct HeadRule {
  bool top_p = false;
  int64_t t = 1;           // topk: the count of every row
  double p = 0;            // top_p: the share to cover
  int64_t lo = 1, hi = 1;  // top_p: the clamp, min(min_blocks, Tmax) and Tmax
  double tau = 0;          // negligible threshold (0: the fixed fraction)
};

int64_t topk_count(double topk, int64_t nk) {
  return std::clamp<int64_t>(static_cast<int64_t>(std::floor(topk * static_cast<double>(nk))), 1, nk);
}

HeadRule head_rule(const Case& c, int64_t nk, int64_t h) {
  HeadRule r;
  r.top_p = c.top_p_rule();
  if (r.top_p) {
    r.p = c.head_top_p.empty() ? c.top_p : c.head_top_p[h];
    r.hi = std::clamp<int64_t>(c.max_blocks == 0 ? nk : c.max_blocks, 1, nk);
    r.lo = std::min(c.min_blocks, r.hi);
  } else {
    r.t = topk_count(c.head_topk.empty() ? c.topk : c.head_topk[h], nk);
  }
  r.tau = c.variant == Variant::complement ? c.negligible_threshold : 0.0;
  return r;
}

// The table widths: T the largest count a row can have, Tn = min(floor(fraction * Nk), Nk - T) (complement only).
void expected_widths(const Case& c, int64_t nk, int64_t* t, int64_t* tn) {
  *t = 0;
  for (int64_t h = 0; h < c.heads; ++h) {
    const HeadRule r = head_rule(c, nk, h);
    *t = std::max(*t, r.top_p ? r.hi : r.t);
  }
  *tn = 0;
  if (c.variant == Variant::complement) {
    const double frac = c.negligible_threshold > 0 ? c.max_negligible : c.negligible;
    *tn = std::clamp<int64_t>(static_cast<int64_t>(std::floor(frac * static_cast<double>(nk))), 0, nk - *t);
  }
}

struct MapTolerance {
  double score;      // relative to the row's largest |score|: ties within it (plus score_abs) may fall either way
  double score_abs;  // absolute, for rows whose scores are all near 0
  double share;      // absolute, on the top_p mass
  double tau;        // relative, on the threshold
};
constexpr MapTolerance kExactMap{1e-9, 1e-12, 1e-9, 1e-9};
constexpr MapTolerance kCrossBackendMap{1e-5, 1e-9, 1e-4, 1e-3};

// Whether one row (count `cnt` of width `t` in `lut`; `ncnt` of width `tn` in `nlut` when tn > 0) is a valid map of
// rule `r` on the scores `s` (nk of them) at softmax scale `scale`; `why` names the first violated condition.
bool valid_row(const double* s, int64_t nk, double scale, const HeadRule& r, int64_t t, int64_t tn, const int32_t* lut,
               int32_t cnt, const int32_t* nlut, int32_t ncnt, const MapTolerance& tol, const char** why) {
  // Table form: ascending distinct block indices below the count, -1 past it.
  auto well_formed = [&](const int32_t* row, int64_t n, int64_t width) {
    for (int64_t e = 0; e < width; ++e) {
      if (e >= n ? row[e] != -1 : (row[e] < 0 || row[e] >= nk || (e > 0 && row[e] <= row[e - 1]))) return false;
    }
    return true;
  };
  if (cnt < 1 || cnt > t || !well_formed(lut, cnt, t)) return *why = "lut-form", false;
  double top = -std::numeric_limits<double>::infinity(), amax = 0;
  for (int64_t j = 0; j < nk; ++j) top = std::max(top, s[j]), amax = std::max(amax, std::fabs(s[j]));
  std::vector<double> share(nk);
  double z = 0;
  for (int64_t j = 0; j < nk; ++j) z += share[j] = s[j] == top ? 1.0 : std::exp(scale * (s[j] - top));
  for (double& x : share) x /= z;
  std::vector<char> cls(nk, 0);  // 1 critical, 2 negligible
  double mass = 0, weakest = 2;
  for (int32_t e = 0; e < cnt; ++e) cls[lut[e]] = 1, mass += share[lut[e]], weakest = std::min(weakest, share[lut[e]]);
  if (r.top_p) {
    if (cnt < r.lo || cnt > r.hi) return *why = "top_p-count-outside-clamp", false;
    // The fewest blocks reaching p: this many reach it (or the count sits at the upper clamp) and one fewer does
    // not (or it sits at the lower clamp).
    if (!(mass >= r.p - tol.share || cnt == r.hi)) return *why = "top_p-mass-short", false;
    if (!(mass - weakest < r.p + tol.share || cnt == r.lo)) return *why = "top_p-count-too-large", false;
  } else if (cnt != r.t) {
    return *why = "topk-count", false;
  }
  if (tn > 0) {
    if (ncnt < 0 || ncnt > std::min<int64_t>(tn, nk - cnt) || !well_formed(nlut, ncnt, tn)) {
      return *why = "negl-form", false;
    }
    for (int32_t e = 0; e < ncnt; ++e) {
      if (cls[nlut[e]] != 0) return *why = "negl-overlaps-critical", false;
      cls[nlut[e]] = 2;
    }
  } else if (ncnt != 0) {
    return *why = "negl-form", false;
  }
  // The critical set is a prefix of the total order and the negligible set a suffix, up to near-ties.
  const double slack = tol.score * amax + tol.score_abs;
  double min_crit = std::numeric_limits<double>::infinity(), max_rest = -min_crit;
  double max_negl = -min_crit, min_marg = min_crit, weakest_marg_share = 2;
  for (int64_t j = 0; j < nk; ++j) {
    if (cls[j] == 1) {
      min_crit = std::min(min_crit, s[j]);
    } else {
      max_rest = std::max(max_rest, s[j]);
      if (cls[j] == 2) max_negl = std::max(max_negl, s[j]);
      if (cls[j] == 0) min_marg = std::min(min_marg, s[j]), weakest_marg_share = std::min(weakest_marg_share, share[j]);
    }
  }
  if (min_crit < max_rest - slack) return *why = "critical-not-the-top-scores", false;
  if (max_negl > min_marg + slack) return *why = "negligible-not-the-bottom-scores", false;
  if (tn > 0) {
    const int64_t cap = std::min<int64_t>(tn, nk - cnt);
    if (r.tau == 0) {
      if (ncnt != cap) return *why = "negl-count", false;
    } else {
      for (int32_t e = 0; e < ncnt; ++e)
        if (share[nlut[e]] >= r.tau * (1 + tol.tau)) return *why = "negl-above-threshold", false;
      if (ncnt < cap && weakest_marg_share < r.tau * (1 - tol.tau))
        return *why = "negl-misses-a-block-below-threshold", false;
    }
  }
  return true;
}

// Every row of a map against its rule (and the table widths against the configuration). Returns the number of
// invalid rows; the first one is described in `log`.
int64_t check_map_rules(const Case& c, const sla::BlockMapShape& shape, double scale, const std::vector<double>& scores,
                        const std::vector<int32_t>& lut, const std::vector<int32_t>& count,
                        const std::vector<int32_t>& negl_lut, const std::vector<int32_t>& negl_count,
                        const MapTolerance& tol, const char* what, std::string* log) {
  const int64_t nq = shape.q_blocks, nk = shape.k_blocks, t = shape.critical, tn = shape.negligible;
  int64_t want_t = 0, want_tn = 0;
  expected_widths(c, nk, &want_t, &want_tn);
  if (t != want_t || tn != want_tn) {
    char buf[128];
    std::snprintf(buf, sizeof buf, " %s-widths T=%" PRId64 ",Tn=%" PRId64 "-expected-%" PRId64 ",%" PRId64 "(FAIL)",
                  what, t, tn, want_t, want_tn);
    *log += buf;
    return 1;
  }
  int64_t bad = 0;
  for (int64_t bh = 0; bh < shape.batch * shape.heads; ++bh) {
    const HeadRule r = head_rule(c, nk, bh % shape.heads);
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t row = bh * nq + i;
      const char* why = "";
      if (valid_row(&scores[row * nk], nk, scale, r, t, tn, &lut[row * t], count[row],
                    tn > 0 ? &negl_lut[row * tn] : nullptr, tn > 0 ? negl_count[row] : 0, tol, &why))
        continue;
      if (bad++ == 0) *log += std::string(" ") + what + "-row" + std::to_string(row) + ":" + why + "(FAIL)";
    }
  }
  return bad;
}

// " counts 2..6/6": the range of a table's row counts over its width, for the logs of the adaptive rules.
std::string count_range(const char* what, const std::vector<int32_t>& count, int64_t width) {
  if (count.empty()) return "";
  const auto mm = std::minmax_element(count.begin(), count.end());
  return std::string(" ") + what + " " + std::to_string(*mm.first) + ".." + std::to_string(*mm.second) + "/" +
         std::to_string(width);
}

// The backend's map against the CPU backend's fp64 map of the same inputs: every row identical (count, entries,
// -1 padding), except rows where the two differ within rounding (their scores in fp32 against fp64): there the
// backend's row must still be a valid map of its rule within kCrossBackendMap. Counts those in `near_ties`.
bool compare_maps(const Case& c, const HostMap& g, const HostMap& cpu, double scale, const std::vector<double>& scores,
                  std::string* log, int* near_ties) {
  const sla::BlockMapShape& s = g.shape;
  const int64_t nq = s.q_blocks, nk = s.k_blocks, t = s.critical, tn = s.negligible;
  int64_t bad = 0;
  for (int64_t bh = 0; bh < s.batch * s.heads; ++bh) {
    const HeadRule r = head_rule(c, nk, bh % s.heads);
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t row = bh * nq + i;
      bool same = g.count[row] == cpu.count[row] && std::equal(&g.lut[row * t], &g.lut[row * t] + t, &cpu.lut[row * t]);
      if (tn > 0) {
        same = same && g.negl_count[row] == cpu.negl_count[row] &&
               std::equal(&g.negl_lut[row * tn], &g.negl_lut[row * tn] + tn, &cpu.negl_lut[row * tn]);
      }
      if (same) continue;
      const char* why = "";
      if (valid_row(&scores[row * nk], nk, scale, r, t, tn, &g.lut[row * t], g.count[row],
                    tn > 0 ? &g.negl_lut[row * tn] : nullptr, tn > 0 ? g.negl_count[row] : 0, kCrossBackendMap, &why)) {
        ++*near_ties;
      } else if (bad++ == 0) {
        *log += " map-row" + std::to_string(row) + ":" + why;
      }
    }
  }
  if (bad) {
    *log += " map:" + std::to_string(bad) + "-rows-differ(FAIL)";
    return false;
  }
  return true;
}

bool compare_inverse(const char* what, const std::vector<int32_t>& g_off, const std::vector<int32_t>& g_idx,
                     const std::vector<int32_t>& c_off, const std::vector<int32_t>& c_idx, int64_t bh, int64_t nk,
                     int64_t stride, std::string* log) {
  for (int64_t x = 0; x < bh; ++x) {
    for (int64_t j = 0; j <= nk; ++j) {
      if (g_off[x * (nk + 1) + j] != c_off[x * (nk + 1) + j]) {
        *log += std::string(" ") + what + "-offsets(FAIL)";
        return false;
      }
    }
    const int64_t n = c_off[x * (nk + 1) + nk];
    for (int64_t e = 0; e < n; ++e) {
      if (g_idx[x * stride + e] != c_idx[x * stride + e]) {
        *log += std::string(" ") + what + "-index(FAIL)";
        return false;
      }
    }
  }
  return true;
}

// ---- one forward case --------------------------------------------------------------------------------------------------

struct Status {
  bool ok = true;
  void require(const sla::Status& s, const char* what, std::string* log) {
    if (!s.ok()) {
      ok = false;
      *log += std::string(" ") + what + ": " + sla::status_code_name(s.code) + ": " + s.message;
    }
  }
};

// With c.block_structure > 0: adds to every row of Q (block size bq) or K (bk) an offset drawn per (b, h, block) with
// that sd, from its own stream (so the inputs of a case without structure are unchanged). Pooled block means then
// differ by about that much, and the pooled-softmax shares of a row are far from uniform.
void add_block_structure(const Case& c, uint64_t seed, int64_t len, int block, std::vector<double>* x) {
  if (!(c.block_structure > 0)) return;
  std::mt19937_64 rng(seed ^ 0x5851F42D4C957F2Dull);
  std::normal_distribution<double> normal(0.0, c.block_structure);
  const int64_t d = c.d, nb = (len + block - 1) / block;
  std::vector<double> off(nb * d);
  for (int64_t bh = 0; bh < c.batch * c.heads; ++bh) {
    for (double& e : off) e = normal(rng);
    for (int64_t r = 0; r < len; ++r)
      for (int64_t e = 0; e < d; ++e) (*x)[(bh * len + r) * d + e] += off[(r / block) * d + e];
  }
}

// W, b and the forward's saved state (LSE, O_l, H, z in fp32) on the device under test, with their views set in a
// ForwardArgs; without `save` (inference) the state buffers are empty and their views stay unset.
struct ForwardBuffers {
  DeviceBuffer w, b, lse, o_lin, h, z;
  ForwardBuffers(const Case& c, const std::vector<double>& w_host, const std::vector<double>& b_host, bool save)
      : w(upload_vec(std::vector<float>(w_host.begin(), w_host.end()))),
        b(upload_vec(std::vector<float>(b_host.begin(), b_host.end()))),
        lse(save ? c.batch * c.heads * c.lq * 4 : 0),
        o_lin(save ? c.batch * c.heads * c.lq * c.d * 4 : 0),
        h(save ? c.batch * c.heads * c.d * c.d * 4 : 0),
        z(save ? c.batch * c.heads * c.d * 4 : 0) {}
  void attach(const Case& c, sla::ForwardArgs* a) const {
    const int64_t B = c.batch, H = c.heads, L = c.lq, D = c.d;
    if (c.weight) a->proj_weight = sla::make_view(w.ptr, DType::f32, {D, D}, dut_device());
    if (c.bias) a->proj_bias = sla::make_view(b.ptr, DType::f32, {D}, dut_device());
    if (lse.bytes == 0) return;
    a->lse = sla::make_view(lse.ptr, DType::f32, {B, H, L}, dut_device());
    a->o_lin = sla::make_view(o_lin.ptr, DType::f32, {B, H, L, D}, dut_device());
    a->lin_h = sla::make_view(h.ptr, DType::f32, {B, H, D, D}, dut_device());
    a->lin_z = sla::make_view(z.ptr, DType::f32, {B, H, D}, dut_device());
  }
  void poison_state() const {
    for (const DeviceBuffer* x : {&lse, &o_lin, &h, &z}) x->poison();
  }
};

bool run_forward_case(const Case& c, uint64_t seed, std::string* log) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const int64_t B = c.batch, H = c.heads, D = c.d;
  const Rounding rnd = rounding_of(c.dtype);
  auto random_tensor = [&](int64_t L, double sd, int block, uint64_t stream) {
    std::vector<double> x(B * H * L * D);
    for (double& e : x) e = sd * normal(rng);
    if (block > 0) add_block_structure(c, seed + stream, L, block, &x);
    for (double& e : x) e = rnd(e);
    return x;
  };
  std::vector<double> q = random_tensor(c.lq, 1.0, c.bq, 1), k = random_tensor(c.lk, 1.0, c.bk, 2),
                      v = random_tensor(c.lk, 1.0, 0, 0);
  for (double& e : v) e = rnd(e + c.v_mean);
  std::vector<double> w, bias;
  if (c.weight) {
    w.resize(D * D);
    for (double& e : w) e = static_cast<float>(normal(rng) / std::sqrt(static_cast<double>(D)));
  }
  if (c.bias) {
    bias.resize(D);
    for (double& e : bias) e = static_cast<float>(0.1 * normal(rng));
  }
  const sla::Config cfg = c.config();
  Status st;

  DeviceTensor dq = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
  DeviceTensor dk = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
  DeviceTensor dv = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
  DeviceTensor dout = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
  upload(dq, q);
  upload(dk, k);
  upload(dv, v);

  sla::BlockMapShape shape;
  st.require(sla::block_map_shape(B, H, c.lq, c.lk, cfg, &shape), "block_map_shape", log);
  if (!st.ok) return false;

  // ---- block map: GPU against CPU ----
  DeviceMap gmap = make_device_map(shape);
  poison(gmap);
  size_t ws_bytes = 0;
  st.require(sla::predict_block_map_workspace_size(dq.view, dk.view, cfg, &ws_bytes), "predict workspace", log);
  if (!st.ok) return false;
  DeviceBuffer ws(ws_bytes);
  sla::Exec exec;
  exec.workspace = ws.ptr;
  exec.workspace_bytes = ws_bytes;
  st.require(sla::predict_block_map(dq.view, dk.view, cfg, gmap.map, exec), "predict(cuda)", log);
  dut_sync();
  if (!st.ok) return false;
  HostMap gm = download(gmap, shape);
  // Determinism of the map.
  poison(gmap);
  st.require(sla::predict_block_map(dq.view, dk.view, cfg, gmap.map, exec), "predict(cuda) #2", log);
  dut_sync();
  HostMap gm2 = download(gmap, shape);
  if (gm.lut != gm2.lut || gm.inv_index != gm2.inv_index || gm.negl_lut != gm2.negl_lut) {
    *log += " map-not-deterministic(FAIL)";
    st.ok = false;
  }

  auto host_view = [&](std::vector<double>& x, int64_t L) {
    return sla::make_view(x.data(), DType::f64, {B, H, L, D});
  };
  HostMap cm;
  cm.shape = shape;
  cm.lut.resize(gm.lut.size());
  cm.count.resize(gm.count.size());
  sla::BlockMap cmap = host_views(cm);
  sla::Exec cpu_exec;
  st.require(sla::predict_block_map(host_view(q, c.lq), host_view(k, c.lk), cfg, cmap, cpu_exec), "predict(cpu)", log);
  if (!st.ok) return false;

  const RefProblem rp = make_ref_problem(c, cfg, q, k, v, w, bias, gm);
  const std::vector<double> scores = reference_block_scores(rp);
  const int64_t rows = B * H * shape.q_blocks, nk = shape.k_blocks;
  int near_ties = 0;
  // The CPU's fp64 map follows the rule's definition; the backend's map equals it up to near-boundary rows.
  bool map_ok = check_map_rules(c, shape, rp.scale, scores, cm.lut, cm.count, cm.negl_lut, cm.negl_count, kExactMap,
                                "cpu-map", log) == 0;
  map_ok &= compare_maps(c, gm, cm, rp.scale, scores, log, &near_ties);
  if (near_ties) *log += " near-ties:" + std::to_string(near_ties) + "/" + std::to_string(rows);
  if (c.top_p_rule() || !c.head_topk.empty()) *log += count_range("counts", gm.count, shape.critical);
  if (c.negligible_threshold > 0 && shape.negligible > 0) *log += count_range("negl", gm.negl_count, shape.negligible);
  // Inverse tables: the CPU's inversion of the GPU's own tables.
  HostMap im = gm;
  sla::BlockMap imap = host_views(im);
  st.require(sla::invert_block_map(imap, cpu_exec), "invert(cpu)", log);
  map_ok &= compare_inverse("inv", gm.inv_offset, gm.inv_index, im.inv_offset, im.inv_index, B * H, nk,
                            shape.q_blocks * shape.critical, log);
  if (shape.negligible > 0) {
    map_ok &= compare_inverse("negl-inv", gm.negl_inv_offset, gm.negl_inv_index, im.negl_inv_offset,
                              im.negl_inv_index, B * H, nk, shape.q_blocks * shape.negligible, log);
  }
  // invert_block_map on the GPU gives the same tables.
  gmap.inv_offset.poison();
  gmap.inv_index.poison();
  gmap.negl_inv_offset.poison();
  gmap.negl_inv_index.poison();
  st.require(sla::invert_block_map(gmap.map, sla::Exec{}), "invert(cuda)", log);
  dut_sync();
  HostMap gi = download(gmap, shape);
  map_ok &= compare_inverse("inv(cuda)", gi.inv_offset, gi.inv_index, im.inv_offset, im.inv_index, B * H, nk,
                            shape.q_blocks * shape.critical, log);
  if (!map_ok) st.ok = false;

  // ---- forward: GPU against the fp64 CPU oracle, with the GPU's map for both ----
  const ForwardBuffers fb(c, w, bias, c.save);
  sla::ForwardArgs ga;
  ga.q = dq.view;
  ga.k = dk.view;
  ga.v = dv.view;
  ga.map = gmap.map;
  ga.o = dout.view;
  fb.attach(c, &ga);
  size_t fws = 0;
  st.require(sla::forward_workspace_size(ga, cfg, &fws), "forward workspace", log);
  if (!st.ok) return false;
  DeviceBuffer fwsb(fws);
  sla::Exec fexec;
  fexec.workspace = fwsb.ptr;
  fexec.workspace_bytes = fws;
  std::vector<double> o1, o2;
  std::vector<float> lse1, lse2, olin1, olin2, h1, z1;
  for (int run = 0; run < 2; ++run) {
    dout.buf.poison();
    fb.poison_state();
    st.require(sla::forward(ga, cfg, fexec), "forward(cuda)", log);
    dut_sync();
    if (!st.ok) return false;
    (run == 0 ? o1 : o2) = download(dout);
    (run == 0 ? lse1 : lse2) = fb.lse.download<float>();
    (run == 0 ? olin1 : olin2) = fb.o_lin.download<float>();
    if (run == 0) {
      h1 = fb.h.download<float>();
      z1 = fb.z.download<float>();
    }
  }
  if (std::memcmp(o1.data(), o2.data(), o1.size() * 8) != 0 || lse1 != lse2 ||
      std::memcmp(olin1.data(), olin2.data(), olin1.size() * 4) != 0) {
    *log += " forward-not-deterministic(FAIL)";
    st.ok = false;
  }

  // Oracle: the CPU backend in fp64 through the public API, same LUT.
  HostMap om = gm;
  sla::BlockMap omap = host_views(om);
  std::vector<double> o_ref(B * H * c.lq * D), lse_ref(B * H * c.lq), olin_ref(B * H * c.lq * D), h_ref(B * H * D * D),
      z_ref(B * H * D);
  sla::ForwardArgs ca;
  ca.q = host_view(q, c.lq);
  ca.k = host_view(k, c.lk);
  ca.v = host_view(v, c.lk);
  if (c.weight) ca.proj_weight = sla::make_view(w.data(), DType::f64, {D, D});
  if (c.bias) ca.proj_bias = sla::make_view(bias.data(), DType::f64, {D});
  ca.map = omap;
  ca.o = host_view(o_ref, c.lq);
  ca.lse = sla::make_view(lse_ref.data(), DType::f64, {B, H, c.lq});
  ca.o_lin = host_view(olin_ref, c.lq);
  ca.lin_h = sla::make_view(h_ref.data(), DType::f64, {B, H, D, D});
  ca.lin_z = sla::make_view(z_ref.data(), DType::f64, {B, H, D});
  st.require(sla::forward(ca, cfg, cpu_exec), "forward(cpu f64)", log);
  if (!st.ok) return false;

  // Emulation at the input precision, and the same code without rounding cross-checked against the oracle.
  RefOutputs emu, exact;
  reference_forward(rp, rnd, &emu);
  reference_forward(rp, [](double x) { return x; }, &exact);
  const Stats cross = compare(exact.o, o_ref);
  if (cross.nan || cross.max_err > 1e-9 * std::max(1.0, cross.ref_max)) {
    char buf[96];
    std::snprintf(buf, sizeof buf, " reference-vs-cpu-oracle %.2e(FAIL)", cross.max_err);
    *log += buf;
    st.ok = false;
  }
  bool fwd_ok = check_rule("O", o1, o_ref, emu.o, log, 0, nullptr, c.dtype == DType::bf16 ? 8 : 11);
  if (c.save) {
    fwd_ok &= check_rule("lse", to_double(lse1), lse_ref, emu.lse, log);
    fwd_ok &= check_rule("o_lin", to_double(olin1), olin_ref, emu.o_lin, log);
    // A bf16/fp16 implementation returns H and z in the input dtype: that rounding is the emulated error.
    auto rounded = [&](std::vector<double> x) {
      for (double& e : x) e = rnd(e);
      return x;
    };
    fwd_ok &= check_rule("H", to_double(h1), h_ref, rounded(emu.lin_h), log);
    fwd_ok &= check_rule("z", to_double(z1), z_ref, rounded(emu.lin_z), log);
  }
  if (!c.top_p_rule() && c.head_topk.empty() && c.topk == 1.0 && c.variant == Variant::complement && c.save) {
    // Invariant 1: no marginal block, so O_l is exactly 0.
    for (float x : olin1)
      if (x != 0.f) {
        *log += " complement-topk1-o_lin-not-zero(FAIL)";
        fwd_ok = false;
        break;
      }
  }
  return st.ok && fwd_ok;
}

// ---- training cases (bwd grid, regressions, fuzz) and the host-only reference check ------------------------------
//
// All use the CPU backend's fp64 block map (with inverse tables), so that the backend under test and the oracle
// differentiate the same mask.

struct HostProblem {
  std::vector<double> q, k, v, w, bias, d_o;
  HostMap map;
  RefProblem ref;
};

// Host threads per oracle call: all of them for one case at a time, 1 when the fuzz runs cases in parallel.
int& oracle_threads() {
  static int n = 0;
  return n;
}

// Inputs (rounded to the case's dtype), the CPU block map and the RefProblem pointing at them. `hp` must outlive
// the returned views; returns false (with a log entry) on an API error.
bool make_host_problem(const Case& c, uint64_t seed, HostProblem* hp, std::string* log) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const int64_t B = c.batch, H = c.heads, D = c.d;
  const Rounding rnd = rounding_of(c.dtype);
  auto random_tensor = [&](int64_t L, int block, uint64_t stream) {
    std::vector<double> x(B * H * L * D);
    for (double& e : x) e = normal(rng);
    if (block > 0) add_block_structure(c, seed + stream, L, block, &x);
    for (double& e : x) e = rnd(e);
    return x;
  };
  hp->q = random_tensor(c.lq, c.bq, 1);
  hp->k = random_tensor(c.lk, c.bk, 2);
  hp->v = random_tensor(c.lk, 0, 0);
  for (double& e : hp->v) e = rnd(e + c.v_mean);
  hp->d_o = random_tensor(c.lq, 0, 0);
  if (c.weight) {
    hp->w.resize(D * D);
    for (double& e : hp->w) e = static_cast<float>(c.weight_gain * normal(rng) / std::sqrt(static_cast<double>(D)));
  }
  if (c.bias) {
    hp->bias.resize(D);
    for (double& e : hp->bias) e = static_cast<float>(c.bias_sd * normal(rng));
  }
  const sla::Config cfg = c.config();
  sla::BlockMapShape shape;
  sla::Status st = sla::block_map_shape(B, H, c.lq, c.lk, cfg, &shape);
  if (!st.ok()) {
    *log += " block_map_shape: " + st.message;
    return false;
  }
  hp->map.shape = shape;
  hp->map.lut.resize(B * H * shape.q_blocks * shape.critical);
  hp->map.count.resize(B * H * shape.q_blocks);
  sla::BlockMap m = host_views(hp->map);
  sla::Exec exec;
  exec.num_threads = oracle_threads();
  st = sla::predict_block_map(sla::make_view(hp->q.data(), DType::f64, {B, H, c.lq, D}),
                              sla::make_view(hp->k.data(), DType::f64, {B, H, c.lk, D}), cfg, m, exec);
  if (!st.ok()) {
    *log += " predict(cpu): " + st.message;
    return false;
  }
  hp->ref = make_ref_problem(c, cfg, hp->q, hp->k, hp->v, hp->w, hp->bias, hp->map);
  // The map every check below differentiates: each row as its rule defines it (docs/BLOCK_MAP.md).
  const HostMap& hm = hp->map;
  if (check_map_rules(c, shape, hp->ref.scale, reference_block_scores(hp->ref), hm.lut, hm.count, hm.negl_lut,
                      hm.negl_count, kExactMap, "cpu-map", log) != 0)
    return false;
  return true;
}

struct CpuGrads {
  std::vector<double> o, lse, o_lin, h, z, dq, dk, dv, dw, db;
};

// The fp64 oracle: CPU forward (saving state) and backward through the public API.
bool cpu_oracle(const Case& c, HostProblem& hp, CpuGrads* g, std::string* log) {
  const int64_t B = c.batch, H = c.heads, D = c.d;
  const sla::Config cfg = c.config();
  auto view = [&](std::vector<double>& x, std::initializer_list<int64_t> shape) {
    return sla::make_view(x.data(), DType::f64, shape);
  };
  g->o.resize(B * H * c.lq * D);
  g->lse.resize(B * H * c.lq);
  g->o_lin.resize(B * H * c.lq * D);
  g->h.resize(B * H * D * D);
  g->z.resize(B * H * D);
  g->dq.resize(B * H * c.lq * D);
  g->dk.resize(B * H * c.lk * D);
  g->dv.resize(B * H * c.lk * D);
  g->dw.resize(c.weight ? D * D : 0);
  g->db.resize(c.bias ? D : 0);
  sla::ForwardArgs fa;
  fa.q = view(hp.q, {B, H, c.lq, D});
  fa.k = view(hp.k, {B, H, c.lk, D});
  fa.v = view(hp.v, {B, H, c.lk, D});
  if (c.weight) fa.proj_weight = view(hp.w, {D, D});
  if (c.bias) fa.proj_bias = view(hp.bias, {D});
  fa.map = host_views(hp.map);
  fa.o = view(g->o, {B, H, c.lq, D});
  fa.lse = view(g->lse, {B, H, c.lq});
  fa.o_lin = view(g->o_lin, {B, H, c.lq, D});
  fa.lin_h = view(g->h, {B, H, D, D});
  fa.lin_z = view(g->z, {B, H, D});
  sla::Exec exec;
  exec.num_threads = oracle_threads();
  sla::Status st = sla::forward(fa, cfg, exec);
  if (!st.ok()) {
    *log += " forward(cpu f64): " + st.message;
    return false;
  }
  sla::BackwardArgs ba;
  ba.q = fa.q;
  ba.k = fa.k;
  ba.v = fa.v;
  ba.proj_weight = fa.proj_weight;
  ba.proj_bias = fa.proj_bias;
  ba.map = fa.map;
  ba.o = fa.o;
  ba.d_o = view(hp.d_o, {B, H, c.lq, D});
  ba.lse = fa.lse;
  ba.o_lin = fa.o_lin;
  ba.lin_h = fa.lin_h;
  ba.lin_z = fa.lin_z;
  ba.dq = view(g->dq, {B, H, c.lq, D});
  ba.dk = view(g->dk, {B, H, c.lk, D});
  ba.dv = view(g->dv, {B, H, c.lk, D});
  if (c.weight) ba.d_proj_weight = view(g->dw, {D, D});
  if (c.bias) ba.d_proj_bias = view(g->db, {D});
  st = sla::backward(ba, cfg, exec);
  if (!st.ok()) {
    *log += " backward(cpu f64): " + st.message;
    return false;
  }
  return true;
}

bool close_exact(const char* what, const std::vector<double>& a, const std::vector<double>& b, std::string* log) {
  const Stats s = compare(a, b);
  const bool ok = !s.nan && s.max_err <= 1e-9 * std::max(1.0, s.ref_max);
  char buf[128];
  std::snprintf(buf, sizeof buf, " %s %.1e%s", what, s.max_err, ok ? "" : "(FAIL)");
  *log += buf;
  return ok;
}

// --mode ref (no GPU needed): the test's own fp64 reference against the CPU backend, forward and backward.
bool run_reference_case(const Case& c, uint64_t seed, std::string* log) {
  HostProblem hp;
  CpuGrads g;
  if (!make_host_problem(c, seed, &hp, log) || !cpu_oracle(c, hp, &g, log)) return false;
  const Rounding exact = [](double x) { return x; };
  RefOutputs fo;
  reference_forward(hp.ref, exact, &fo);
  RefGradients go;
  reference_backward(hp.ref, hp.d_o, exact, &go);
  bool ok = close_exact("O", fo.o, g.o, log);
  ok &= close_exact("lse", fo.lse, g.lse, log);
  ok &= close_exact("o_lin", fo.o_lin, g.o_lin, log);
  ok &= close_exact("dq", go.dq, g.dq, log);
  ok &= close_exact("dk", go.dk, g.dk, log);
  ok &= close_exact("dv", go.dv, g.dv, log);
  if (c.weight) ok &= close_exact("dW", go.dw, g.dw, log);
  if (c.bias) ok &= close_exact("db", go.db, g.db, log);
  return ok;
}

// The tensors a training case checks, in this order everywhere (worst-ratio tables, logs).
enum TensorId { kO, kDq, kDk, kDv, kDw, kDb, kTensors };
const char* const kTensorNames[kTensors] = {"O", "dq", "dk", "dv", "dW", "db"};

// What a training case measured: per tensor, its error over the limit of the 2x rule (<= 1 passes; -1 if absent).
struct TrainingResult {
  double ratio[kTensors] = {-1, -1, -1, -1, -1, -1};
  bool determinism_checked = false;
  bool cross_checked = false;  // the exact reference matched the oracle
  bool partial_rows = false;   // some row of the map has fewer critical blocks than the LUT width
  bool threshold_cut = false;  // the negligible threshold left some row's negligible set below its table's room
};

// Largest Euclidean row norm of canonical (rows x d) data, and the largest absolute element.
double max_row_norm(const std::vector<double>& x, int64_t d) {
  double m = 0;
  for (size_t r = 0; r * d < x.size(); ++r) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c) s += x[r * d + c] * x[r * d + c];
    m = std::max(m, s);
  }
  return std::sqrt(m);
}
double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double e : x) m = std::max(m, std::fabs(e));
  return m;
}

// Options of the backend run that a training case makes (the oracle always runs the same way).
struct TrainingOptions {
  bool determinism = true;  // run the forward and backward twice and compare every output bitwise
  bool o_sparse = true;     // pass the forward's o_sparse to the backward (false: the formulation without it)
  // Check the oracle itself: the test's exact fp64 reference (independent code) against the CPU backend in fp64,
  // to 1e-9. The 2x rule alone cannot see an oracle that is wrong the same way at every precision (an error in
  // code the CPU backend shares between its fp64 and 16-bit paths): the emulated error would grow with it.
  bool cross_check = false;
};

std::mutex& device_mutex() {
  static std::mutex m;
  return m;
}

// Forward (saving state and O_s) and backward on the backend under test against the fp64 oracle: O, dq, dk, dv,
// dW, db under FlashAttention's 2x rule against the emulated-precision reference, poisoned outputs, optionally two
// runs bitwise equal. A backend answering StatusCode::unsupported makes the case a skip, not a failure.
int run_training_case(const Case& c, uint64_t seed, const TrainingOptions& opt, TrainingResult* res, std::string* log) {
  HostProblem hp;
  CpuGrads g;
  if (!make_host_problem(c, seed, &hp, log) || !cpu_oracle(c, hp, &g, log)) return 1;
  const int64_t B = c.batch, H = c.heads, D = c.d;
  const sla::Config cfg = c.config();
  {
    const HostMap& m = hp.map;
    const int64_t t = m.shape.critical, tn = m.shape.negligible, nk = m.shape.k_blocks;
    if (c.top_p_rule() || !c.head_topk.empty()) *log += count_range("counts", m.count, t);
    if (c.negligible_threshold > 0 && tn > 0) *log += count_range("negl", m.negl_count, tn);
    for (size_t r = 0; r < m.count.size(); ++r) {
      res->partial_rows |= m.count[r] < t;
      if (tn > 0 && c.negligible_threshold > 0)
        res->threshold_cut |= m.negl_count[r] < std::min<int64_t>(tn, nk - m.count[r]);
    }
  }
  std::vector<double> outs[2][4];  // per run: O, dq, dk, dv
  std::vector<float> dw_run[2], db_run[2];
  const int runs = opt.determinism ? 2 : 1;
  {
    std::unique_lock<std::mutex> lock(device_mutex(), std::defer_lock);
    if (dut_is_cuda()) lock.lock();  // one case at a time on the GPU; the host work around it runs in parallel
    DeviceTensor dq_in = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
    DeviceTensor dk_in = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
    DeviceTensor dv_in = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
    DeviceTensor d_out = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
    DeviceTensor d_do = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
    DeviceTensor d_dq = make_device_tensor(c.dtype, B, H, c.lq, D, c.layout);
    DeviceTensor d_dk = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
    DeviceTensor d_dv = make_device_tensor(c.dtype, B, H, c.lk, D, c.layout);
    upload(dq_in, hp.q);
    upload(dk_in, hp.k);
    upload(dv_in, hp.v);
    upload(d_do, hp.d_o);
    DeviceMap dm = make_device_map(hp.map.shape);
    auto put = [](const DeviceBuffer& d, const std::vector<int32_t>& h) {
      dut_copy(d.ptr, h.data(), d.bytes, true);
    };
    put(dm.lut, hp.map.lut);
    put(dm.count, hp.map.count);
    put(dm.negl_lut, hp.map.negl_lut);
    put(dm.negl_count, hp.map.negl_count);
    put(dm.inv_offset, hp.map.inv_offset);
    put(dm.inv_index, hp.map.inv_index);
    put(dm.negl_inv_offset, hp.map.negl_inv_offset);
    put(dm.negl_inv_index, hp.map.negl_inv_index);
    const ForwardBuffers fb(c, hp.w, hp.bias, true);
    DeviceBuffer d_os(B * H * c.lq * D * 4);
    DeviceBuffer d_dw(c.weight ? D * D * 4 : 0), d_db(c.bias ? D * 4 : 0);
    sla::ForwardArgs fa;
    fa.q = dq_in.view;
    fa.k = dk_in.view;
    fa.v = dv_in.view;
    fa.map = dm.map;
    fa.o = d_out.view;
    fb.attach(c, &fa);
    if (opt.o_sparse) fa.o_sparse = sla::make_view(d_os.ptr, DType::f32, {B, H, c.lq, D}, dut_device());
    sla::BackwardArgs ba;
    ba.q = fa.q;
    ba.k = fa.k;
    ba.v = fa.v;
    ba.proj_weight = fa.proj_weight;
    ba.proj_bias = fa.proj_bias;
    ba.map = fa.map;
    ba.o = fa.o;
    ba.o_sparse = fa.o_sparse;
    ba.d_o = d_do.view;
    ba.lse = fa.lse;
    ba.o_lin = fa.o_lin;
    ba.lin_h = fa.lin_h;
    ba.lin_z = fa.lin_z;
    ba.dq = d_dq.view;
    ba.dk = d_dk.view;
    ba.dv = d_dv.view;
    if (c.weight) ba.d_proj_weight = sla::make_view(d_dw.ptr, DType::f32, {D, D}, dut_device());
    if (c.bias) ba.d_proj_bias = sla::make_view(d_db.ptr, DType::f32, {D}, dut_device());
    size_t fws = 0, bws = 0;
    sla::Status st = sla::forward_workspace_size(fa, cfg, &fws);
    if (st.ok()) st = sla::backward_workspace_size(ba, cfg, &bws);
    if (st.code == sla::StatusCode::unsupported) {
      *log += " skipped: " + st.message;
      return kSkip;
    }
    if (!st.ok()) {
      *log += " workspace: " + st.message;
      return 1;
    }
    DeviceBuffer ws(std::max(fws, bws));
    sla::Exec exec;
    exec.workspace = ws.ptr;
    exec.workspace_bytes = ws.bytes;
    exec.num_threads = oracle_threads();
    for (int run = 0; run < runs; ++run) {
      for (const DeviceBuffer* b : {&d_out.buf, &d_os, &d_dq.buf, &d_dk.buf, &d_dv.buf, &d_dw, &d_db}) b->poison();
      fb.poison_state();
      st = sla::forward(fa, cfg, exec);
      if (st.ok()) st = sla::backward(ba, cfg, exec);
      dut_sync();
      if (st.code == sla::StatusCode::unsupported) {
        *log += " skipped: " + st.message;
        return kSkip;
      }
      if (!st.ok()) {
        *log += std::string(" ") + sla::status_code_name(st.code) + ": " + st.message;
        return 1;
      }
      outs[run][0] = download(d_out);
      outs[run][1] = download(d_dq);
      outs[run][2] = download(d_dk);
      outs[run][3] = download(d_dv);
      dw_run[run] = d_dw.download<float>();
      db_run[run] = d_db.download<float>();
    }
  }
  bool ok = true;
  if (runs == 2) {
    res->determinism_checked = true;
    bool same = dw_run[0] == dw_run[1] && db_run[0] == db_run[1];
    for (int e = 0; e < 4; ++e) same &= std::memcmp(outs[0][e].data(), outs[1][e].data(), outs[0][e].size() * 8) == 0;
    if (!same) {
      *log += " not-deterministic(FAIL)";
      ok = false;
    }
  }
  const Rounding rnd = rounding_of(c.dtype);
  RefOutputs emu_f;
  reference_forward(hp.ref, rnd, &emu_f);
  RefGradients emu;
  reference_backward(hp.ref, hp.d_o, rnd, &emu);
  // Cancellation scales of dq and dk (see check_rule).
  const double s = hp.ref.scale;
  const double nat_dq = s * max_row_norm(hp.d_o, D) * max_row_norm(hp.v, D) * max_abs(hp.k);
  const double nat_dk = reference_dk_cancellation_scale(hp.ref, hp.d_o);
  const int bits = c.dtype == DType::bf16 ? 8 : 11;  // O, dq, dk, dv are stored in the input dtype
  if (opt.cross_check) {
    const Rounding exact = [](double x) {
      return x;
    };
    RefOutputs fo;
    reference_forward(hp.ref, exact, &fo);
    RefGradients go;
    reference_backward(hp.ref, hp.d_o, exact, &go);
    std::string xlog;
    bool same = close_exact("O", fo.o, g.o, &xlog);
    same &= close_exact("dq", go.dq, g.dq, &xlog);
    same &= close_exact("dk", go.dk, g.dk, &xlog);
    same &= close_exact("dv", go.dv, g.dv, &xlog);
    if (c.weight) same &= close_exact("dW", go.dw, g.dw, &xlog);
    if (c.bias) same &= close_exact("db", go.db, g.db, &xlog);
    if (!same) *log += " reference-vs-cpu-oracle:" + xlog;
    res->cross_checked = same;
    ok &= same;
  }
  ok &= check_rule("O", outs[0][0], g.o, emu_f.o, log, 0, &res->ratio[kO], bits);
  ok &= check_rule("dq", outs[0][1], g.dq, emu.dq, log, nat_dq, &res->ratio[kDq], bits, static_cast<int>(D));
  ok &= check_rule("dk", outs[0][2], g.dk, emu.dk, log, nat_dk, &res->ratio[kDk], bits, static_cast<int>(D));
  ok &= check_rule("dv", outs[0][3], g.dv, emu.dv, log, 0, &res->ratio[kDv], bits);
  if (c.weight) ok &= check_rule("dW", to_double(dw_run[0]), g.dw, emu.dw, log, 0, &res->ratio[kDw]);
  if (c.bias) ok &= check_rule("db", to_double(db_run[0]), g.db, emu.db, log, 0, &res->ratio[kDb]);
  return ok ? 0 : 1;
}

// The gradient cases: the forward grid without the int64 case (its fp64 backward would take minutes on the CPU).
std::vector<Case> gradient_cases() {
  std::vector<Case> cases;
  for (const Case& c : forward_cases()) {
    if (c.layout.head_gap != 0 || c.lq * c.lk > 400000) continue;
    cases.push_back(c);
  }
  return cases;
}

// Regressions: configurations where an outside fp64 implementation found dq / dk beyond the 2x rule (2026-12-01):
// Delta_r was formed from the 16-bit output O = O_s + O_l W^T + b, so a linear part or bias much larger than O_s
// put its rounding into every dS = P (dP - Delta). Now Delta comes from O_s (ForwardArgs::o_sparse).
std::vector<Case> regression_cases() {
  std::vector<Case> cases;
  {  // A linear part much larger than O_s (relu phi, few marginal keys): dk 69x the limit, dq 12x.
    Case c;
    c.shape_name = "regress-large-linear";
    c.variant = Variant::complement;
    c.fmap = FeatureMap::relu;
    c.d = 128;
    c.bq = 128;
    c.bk = 64;
    c.dtype = DType::f16;
    c.layout.blhd = true;
    c.batch = 1;
    c.heads = 3;
    c.lq = c.lk = 65;
    c.topk = 0.613;
    c.negligible = 0.1;
    c.scale = 0.2445;
    cases.push_back(c);
  }
  {  // One key: P = 1, exact dq and dk are 0; O = round(v + b) gave dq, dk up to 5.4e-4.
    Case c;
    c.shape_name = "regress-one-key";
    c.variant = Variant::complement;
    c.fmap = FeatureMap::elu;
    c.d = 64;
    c.bq = 128;
    c.bk = 64;
    c.dtype = DType::f16;
    c.batch = 2;
    c.heads = 2;
    c.lq = c.lk = 1;
    c.topk = 0.25;
    c.negligible = 0.1;
    cases.push_back(c);
  }
  {  // Long ragged global case, Lq != Lk: dk 1.5x.
    Case c;
    c.shape_name = "regress-global-ragged";
    c.variant = Variant::global;
    c.fmap = FeatureMap::relu;
    c.d = 64;
    c.bq = c.bk = 128;
    c.dtype = DType::bf16;
    c.layout.blhd = true;
    c.batch = 1;
    c.heads = 2;
    c.lq = 1149;
    c.lk = 641;
    c.topk = 0.1;
    c.scale = 0.1328;
    cases.push_back(c);
  }
  {  // The same mechanism made explicit: a bias 30x the size of O_s.
    Case c;
    c.shape_name = "regress-large-bias";
    c.dtype = DType::bf16;
    c.d = 64;
    c.lq = 200;
    c.lk = 150;
    c.weight = false;
    c.bias_sd = 30.0;
    cases.push_back(c);
  }
  {  // ... and a W that makes O_l W^T dominate O.
    Case c;
    c.shape_name = "regress-large-weight";
    c.dtype = DType::f16;
    c.d = 64;
    c.lq = 130;
    c.lk = 257;
    c.weight_gain = 40.0;
    cases.push_back(c);
  }
  return cases;
}

// ---- the random-configuration fuzz -------------------------------------------------------------------------------

// Bounds of the drawn configurations (the CPU slice for CI uses smaller lengths).
struct FuzzLimits {
  int64_t max_len = 1600;
  bool cpu = false;  // the backend under test is the CPU backend: head dims beyond the CUDA build's 64 / 128 and
                     // blocks of 16 and 32 rows too
};

uint64_t mix_seed(uint64_t seed, uint64_t index) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (index + 1);  // splitmix64
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// One configuration over the whole option space the API accepts (docs/SPEC.md section 6), from its own seed.
Case draw_case(uint64_t case_seed, const FuzzLimits& lim) {
  std::mt19937_64 rng(case_seed);
  auto uni = [&](double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(rng);
  };
  auto pick = [&](int n) {
    return static_cast<int>(std::uniform_int_distribution<int>(0, n - 1)(rng));
  };
  auto chance = [&](double p) {
    return uni(0, 1) < p;
  };
  // Lengths log-uniform in [1, max_len]: most cases small, some long, L = 1 and L < block often.
  auto length = [&]() {
    if (chance(0.06)) return int64_t{1};
    return std::max<int64_t>(1, static_cast<int64_t>(std::exp(uni(0, std::log(static_cast<double>(lim.max_len))))));
  };
  Case c;
  c.shape_name = "fuzz";
  c.dtype = chance(0.5) ? DType::bf16 : DType::f16;
  if (lim.cpu) {
    const int64_t dims[] = {16, 32, 64, 128};
    c.d = dims[pick(4)];
  } else {
    c.d = chance(0.5) ? 64 : 128;
  }
  c.bq = chance(0.5) ? 64 : 128;
  c.bk = chance(0.5) ? 64 : 128;
  c.variant = chance(0.5) ? Variant::global : Variant::complement;
  const FeatureMap fms[] = {FeatureMap::softmax, FeatureMap::elu, FeatureMap::relu};
  c.fmap = fms[pick(3)];
  c.batch = 1 + pick(2);
  c.heads = 1 + pick(3);
  c.lq = length();
  c.lk = chance(0.3) ? c.lq : length();
  const int lay = pick(3);
  c.layout.blhd = lay == 1;
  c.layout.head_gap = lay == 2 ? 8 * (1 + pick(4)) : 0;  // padded heads: strides that are not the packed ones
  c.topk = chance(0.12) ? 1.0 : uni(0.01, 1.0);
  c.negligible = (c.variant == Variant::complement && chance(0.6)) ? uni(0.0, 1.0 - c.topk) : 0.0;
  c.weight = chance(0.75);
  c.bias = chance(0.75);
  if (c.weight && chance(0.3)) c.weight_gain = std::exp(uni(0, std::log(50.0)));
  if (c.bias && chance(0.3)) c.bias_sd = std::exp(uni(std::log(0.01), std::log(30.0)));
  c.scale = chance(0.5) ? 0.0 : uni(0.02, 0.5);
  c.eps = chance(0.6) ? 1e-5 : std::exp(uni(std::log(1e-7), std::log(1.0)));
  // Everything below was added with the adaptive block map and is drawn after the parameters above, so that those
  // are drawn as they were before (a seed's configuration still changes: most cases now get a new rule).
  // The CPU backend also takes blocks of 16 and 32 rows (the CUDA backend only 64 and 128): more blocks per row at
  // the CPU slice's short lengths, where the adaptive rules have something to choose from.
  if (lim.cpu && chance(0.3)) c.bq = chance(0.5) ? 16 : 32;
  if (lim.cpu && chance(0.3)) c.bk = chance(0.5) ? 16 : 32;
  // The block map (docs/BLOCK_MAP.md): about 35% per-head topk, 35% top_p, 30% the fixed topk; the complement
  // variant's negligible set by threshold in 40% of its cases, else the fixed fraction as drawn above (rescaled to
  // the room the rule leaves: 1 - the largest topk, or all of [0, 1] under top_p).
  const double which = uni(0, 1);
  const bool threshold = c.variant == Variant::complement && chance(0.4);
  // With one key block a rule has nothing to choose; the lengths above give one in most short cases. So 3/4 of the
  // adaptive cases with one get Lk log-uniform over (bk, max_len] instead (and Lq with it where they were equal).
  if ((which < 0.70 || threshold) && c.lk <= c.bk && lim.max_len > c.bk && chance(0.75)) {
    const bool same = c.lq == c.lk;
    c.lk = std::clamp<int64_t>(
        static_cast<int64_t>(std::exp(uni(std::log(c.bk + 1.0), std::log(static_cast<double>(lim.max_len))))), c.bk + 1,
        lim.max_len);
    if (same) c.lq = c.lk;
  }
  const int64_t nk = (c.lk + c.bk - 1) / c.bk;
  const double negl_share = c.topk < 1.0 ? c.negligible / (1.0 - c.topk) : 0.0;  // where in [0, 1 - topk] it fell
  auto fraction = [&]() {
    return chance(0.12) ? 1.0 : uni(0.01, 1.0);
  };
  if (which < 0.35) {
    for (int64_t h = 0; h < c.heads; ++h) c.head_topk.push_back(fraction());
    const double top = *std::max_element(c.head_topk.begin(), c.head_topk.end());
    c.negligible = negl_share * (1.0 - top);
  } else if (which < 0.70) {
    c.rule = sla::CriticalRule::top_p;
    auto share = [&]() {  // p: all of the mass sometimes, a tiny share (count 1 or the minimum) sometimes
      const double u = uni(0, 1);
      return u < 0.1 ? 1.0 : (u < 0.2 ? uni(0.001, 0.1) : uni(0.1, 1.0));
    };
    if (chance(0.5)) {
      for (int64_t h = 0; h < c.heads; ++h) c.head_top_p.push_back(share());
      c.top_p = chance(0.3) ? share() : 0.0;  // with per-head values top_p may be 0 or any valid p (unused)
    } else {
      c.top_p = share();
    }
    // Clamp: min_blocks >= 1 (past Nk sometimes: clamped to the LUT width), max_blocks 0 (meaning Nk), below Nk,
    // equal to min_blocks, or past Nk.
    c.min_blocks = chance(0.5) ? 1 : 1 + pick(static_cast<int>(std::min<int64_t>(nk + 1, 12)));
    const double m = uni(0, 1);
    if (m < 0.3) {
      c.max_blocks = 0;
    } else if (m < 0.45) {
      c.max_blocks = c.min_blocks;
    } else {
      c.max_blocks =
          c.min_blocks + pick(static_cast<int>(std::min<int64_t>(std::max<int64_t>(nk - c.min_blocks, 0) + 2, 16)));
    }
    c.negligible = c.variant == Variant::complement && c.negligible > 0 ? negl_share : 0.0;
  }
  if (threshold) {
    c.negligible = 0.0;
    // Near the uniform share 1/Nk half the time (where it splits a row), else log-uniform over (1e-6, 0.99).
    c.negligible_threshold = chance(0.5) ? std::min(0.99, std::exp(uni(std::log(0.05), std::log(1.5))) / nk)
                                         : std::exp(uni(std::log(1e-6), std::log(0.99)));
    c.max_negligible = chance(0.25) ? 1.0 : uni(0.01, 1.0);
  }
  // Pooled scores of unstructured random inputs are nearly equal (shares within a few % of 1/Nk): give 70% of the
  // adaptive cases (30% of the others) blocks that differ, so that the rules pick different counts and sets per row.
  const bool adaptive = which < 0.70 || threshold;
  if (chance(adaptive ? 0.7 : 0.3)) c.block_structure = uni(0.3, 2.0);
  return c;
}

#ifdef SLA_TEST_WITH_CUDA
// ---- perf ------------------------------------------------------------------------------------------------------------

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

int run_perf(uint64_t seed, bool o_sparse) {
  const int64_t B = 1, H = 12, L = 32760, D = 128;
  sla::Config cfg;
  cfg.block_q = 128;
  cfg.block_k = 64;
  cfg.topk = 0.05;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  Layout lay;
  DeviceTensor q = make_device_tensor(DType::bf16, B, H, L, D, lay), k = make_device_tensor(DType::bf16, B, H, L, D, lay),
               v = make_device_tensor(DType::bf16, B, H, L, D, lay), o = make_device_tensor(DType::bf16, B, H, L, D, lay);
  {
    std::vector<uint16_t> h(B * H * L * D);
    for (DeviceTensor* t : {&q, &k, &v}) {
      for (auto& e : h) e = sla::cpu::to_bf16(normal(rng)).bits;
      CUDA_OK(cudaMemcpy(t->view.data, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    }
  }
  std::vector<float> w(D * D), b(D);
  for (auto& e : w) e = normal(rng) / std::sqrt(static_cast<float>(D));
  for (auto& e : b) e = 0.1f * normal(rng);
  DeviceBuffer d_w = upload_vec(w), d_b = upload_vec(b);
  sla::BlockMapShape shape;
  sla::block_map_shape(B, H, L, L, cfg, &shape);
  DeviceMap map = make_device_map(shape);
  sla::BlockMap fwd_map = map.map;  // inference: no inverse tables
  fwd_map.inv_offset = sla::TensorView{};
  fwd_map.inv_index = sla::TensorView{};
  size_t pws = 0, fws = 0;
  sla::predict_block_map_workspace_size(q.view, k.view, cfg, &pws);
  sla::ForwardArgs a;
  a.q = q.view;
  a.k = k.view;
  a.v = v.view;
  a.proj_weight = sla::make_view(d_w.ptr, DType::f32, {D, D}, dut_device());
  a.proj_bias = sla::make_view(d_b.ptr, DType::f32, {D}, dut_device());
  a.map = fwd_map;
  a.o = o.view;
  DeviceBuffer d_lse(B * H * L * 4), d_olin(B * H * L * D * 4), d_h(B * H * D * D * 4), d_z(B * H * D * 4);
  DeviceBuffer d_os(B * H * L * D * 4);
  sla::ForwardArgs a_save = a;
  a_save.lse = sla::make_view(d_lse.ptr, DType::f32, {B, H, L}, dut_device());
  a_save.o_lin = sla::make_view(d_olin.ptr, DType::f32, {B, H, L, D}, dut_device());
  a_save.lin_h = sla::make_view(d_h.ptr, DType::f32, {B, H, D, D}, dut_device());
  a_save.lin_z = sla::make_view(d_z.ptr, DType::f32, {B, H, D}, dut_device());
  // Training saves O_s too (--no-o-sparse: without it, to time what the fp32 O_s costs).
  if (o_sparse) a_save.o_sparse = sla::make_view(d_os.ptr, DType::f32, {B, H, L, D}, dut_device());
  sla::forward_workspace_size(a_save, cfg, &fws);
  // Training: the block map with inverse tables, the forward saving state, then the backward with dW and db.
  DeviceTensor d_do = make_device_tensor(DType::bf16, B, H, L, D, lay), dq = make_device_tensor(DType::bf16, B, H, L, D, lay),
               dk = make_device_tensor(DType::bf16, B, H, L, D, lay), dv = make_device_tensor(DType::bf16, B, H, L, D, lay);
  {
    std::vector<uint16_t> h(B * H * L * D);
    for (auto& e : h) e = sla::cpu::to_bf16(normal(rng)).bits;
    CUDA_OK(cudaMemcpy(d_do.view.data, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  }
  DeviceBuffer d_dw(D * D * 4), d_db(D * 4);
  sla::ForwardArgs a_train = a_save;
  a_train.map = map.map;
  sla::BackwardArgs ba;
  ba.q = q.view;
  ba.k = k.view;
  ba.v = v.view;
  ba.proj_weight = a.proj_weight;
  ba.proj_bias = a.proj_bias;
  ba.map = map.map;
  ba.o = o.view;
  ba.d_o = d_do.view;
  ba.lse = a_save.lse;
  ba.o_lin = a_save.o_lin;
  ba.lin_h = a_save.lin_h;
  ba.lin_z = a_save.lin_z;
  ba.o_sparse = a_save.o_sparse;
  ba.dq = dq.view;
  ba.dk = dk.view;
  ba.dv = dv.view;
  ba.d_proj_weight = sla::make_view(d_dw.ptr, DType::f32, {D, D}, dut_device());
  ba.d_proj_bias = sla::make_view(d_db.ptr, DType::f32, {D}, dut_device());
  size_t bws = 0;
  const sla::Status sb = sla::backward_workspace_size(ba, cfg, &bws);
  const bool time_bwd = sb.ok();
  if (!time_bwd) std::printf("perf: backward not timed: %s\n", sb.message.c_str());
  DeviceBuffer ws(std::max({pws, fws, bws}));
  sla::Exec exec;
  exec.workspace = ws.ptr;
  exec.workspace_bytes = ws.bytes;
  cudaEvent_t e0, e1, e2;
  CUDA_OK(cudaEventCreate(&e0));
  CUDA_OK(cudaEventCreate(&e1));
  CUDA_OK(cudaEventCreate(&e2));
  sla::BlockMap predict_map = fwd_map;
  sla::ForwardArgs a_sparse = a;  // O = O_s: the main loop alone (no linear state, no projection)
  a_sparse.proj_weight = sla::TensorView{};
  a_sparse.proj_bias = sla::TensorView{};
  std::vector<double> t_map, t_fwd, t_fwd_save, t_sparse, t_train_fwd, t_bwd, t_step;
  for (int it = 0; it < 25; ++it) {
    CUDA_OK(cudaEventRecord(e0));
    sla::Status s1 = sla::predict_block_map(q.view, k.view, cfg, predict_map, exec);
    CUDA_OK(cudaEventRecord(e1));
    sla::Status s2 = sla::forward(a, cfg, exec);
    CUDA_OK(cudaEventRecord(e2));
    CUDA_OK(cudaEventSynchronize(e2));
    if (!s1.ok() || !s2.ok()) {
      std::printf("perf: %s %s\n", s1.message.c_str(), s2.message.c_str());
      return 1;
    }
    float m1, m2;
    CUDA_OK(cudaEventElapsedTime(&m1, e0, e1));
    CUDA_OK(cudaEventElapsedTime(&m2, e1, e2));
    if (it >= 5) {
      t_map.push_back(m1);
      t_fwd.push_back(m2);
    }
    CUDA_OK(cudaEventRecord(e0));
    sla::Status s3 = sla::forward(a_save, cfg, exec);
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    if (!s3.ok()) {
      std::printf("perf: %s\n", s3.message.c_str());
      return 1;
    }
    CUDA_OK(cudaEventElapsedTime(&m1, e0, e1));
    if (it >= 5) t_fwd_save.push_back(m1);
    CUDA_OK(cudaEventRecord(e0));
    sla::Status s4 = sla::forward(a_sparse, cfg, exec);
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    if (!s4.ok()) {
      std::printf("perf: %s\n", s4.message.c_str());
      return 1;
    }
    CUDA_OK(cudaEventElapsedTime(&m1, e0, e1));
    if (it >= 5) t_sparse.push_back(m1);
    if (!time_bwd) continue;
    // One training step: map (with inverse tables) | forward saving state | backward.
    CUDA_OK(cudaEventRecord(e0));
    sla::Status s5 = sla::predict_block_map(q.view, k.view, cfg, map.map, exec);
    if (s5.ok()) s5 = sla::forward(a_train, cfg, exec);
    CUDA_OK(cudaEventRecord(e1));
    if (s5.ok()) s5 = sla::backward(ba, cfg, exec);
    CUDA_OK(cudaEventRecord(e2));
    CUDA_OK(cudaEventSynchronize(e2));
    if (!s5.ok()) {
      std::printf("perf: training step: %s\n", s5.message.c_str());
      return 1;
    }
    float mt1, mt2;
    CUDA_OK(cudaEventElapsedTime(&mt1, e0, e1));
    CUDA_OK(cudaEventElapsedTime(&mt2, e1, e2));
    if (it >= 5) {
      t_train_fwd.push_back(mt1);
      t_bwd.push_back(mt2);
      t_step.push_back(mt1 + mt2);
    }
  }
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  const double mm = median(t_map), mf = median(t_fwd), ms = median(t_fwd_save);
  std::printf("perf W1 on %s: block map %.3f ms, forward (W, b, inference) %.3f ms, total %.3f ms; "
              "forward with saved state %.3f ms (total %.3f ms); workspace %.1f MB\n",
              prop.name, mm, mf, mm + mf, ms, mm + ms, std::max(pws, fws) / 1e6);
  std::printf("sparse branch alone (no W, b): %.3f ms = %.0f TFLOPS on the 322 GFLOP of Q K^T and P V\n",
              median(t_sparse), 4.0 * H * L * (shape.critical * cfg.block_k) * D / (median(t_sparse) * 1e9));
  if (time_bwd) {
    std::printf("training step: map with inverse tables + forward with saved state %.3f ms, backward (dW, db) %.3f ms, "
                "step %.3f ms\n",
                median(t_train_fwd), median(t_bwd), median(t_step));
    std::printf("SLA_PERF_STEP_MS %.4f\n", median(t_step));
  }
  std::printf("SLA_PERF_TOTAL_MS %.4f\n", mm + mf);
  return 0;
}
#endif  // SLA_TEST_WITH_CUDA

// ---- test-case objects and the driver ------------------------------------------------------------------------------

enum class Mode { fwd, bwd, fuzz, ref, perf };
const char* mode_name(Mode m) {
  switch (m) {
    case Mode::fwd: return "fwd";
    case Mode::bwd: return "bwd";
    case Mode::fuzz: return "fuzz";
    case Mode::ref: return "ref";
    case Mode::perf: return "perf";
  }
  return "?";
}

struct RunOptions {
  TrainingOptions training;
  uint64_t seed = 0;
  // The fuzz checks the oracle against the exact reference on every Nth case: 2 on the CPU backend (short lengths,
  // cheap), 8 on CUDA (the naive reference's backward at the GPU fuzz's lengths would double the host time).
  int64_t cross_check_every = 2;
};

// One test case: its variables (the configuration), what it measures (eval: the error measure of its mode, the
// 2x rule for every tensor it checks) and its FLOPs (of one run of what it times or checks).
struct TestCase {
  Case vars;
  Mode mode = Mode::fwd;
  uint64_t seed = 0;  // of its random inputs
  int64_t index = 0;  // position in its mode's list (the fuzz's --case K)
  virtual ~TestCase() = default;
  virtual std::string name() const {
    std::string n = vars.name();
    n.replace(0, 3, mode_name(mode));
    return n;
  }
  // Sparse branch (Q K^T and P V over the selected blocks) and linear branch (phi(K)^T V, phi(Q) H, projection).
  virtual double flops() const {
    const double bh = static_cast<double>(vars.batch * vars.heads), d = static_cast<double>(vars.d);
    const double nk = std::ceil(static_cast<double>(vars.lk) / vars.bk);
    const double keys = std::min<double>(vars.lk, vars.critical_blocks_bound(static_cast<int64_t>(nk)) * vars.bk);
    const double fwd = bh * (4.0 * vars.lq * keys * d + 2.0 * (vars.lq + vars.lk) * d * d * 2);
    return mode == Mode::fwd ? fwd : 3.5 * fwd;  // backward: 5 products per pair instead of 2 (dq 3, dk/dv 4)
  }
  virtual int eval(const RunOptions& opt, TrainingResult* res, std::string* log) const = 0;
};

struct ForwardTest : TestCase {
  int eval(const RunOptions&, TrainingResult*, std::string* log) const override {
    return run_forward_case(vars, seed, log) ? 0 : 1;
  }
};
struct TrainingTest : TestCase {  // bwd grid, regressions and fuzz: O and every gradient
  int eval(const RunOptions& opt, TrainingResult* res, std::string* log) const override {
    TrainingOptions t = opt.training;
    if (mode == Mode::fuzz && index % 8 != 0) t.determinism = false;  // bitwise reruns on every 8th case
    if (mode == Mode::fuzz && index % opt.cross_check_every == 1) t.cross_check = true;
    return run_training_case(vars, seed, t, res, log);
  }
};
struct ReferenceTest : TestCase {
  int eval(const RunOptions&, TrainingResult*, std::string* log) const override {
    return run_reference_case(vars, seed, log) ? 0 : 1;
  }
};
#ifdef SLA_TEST_WITH_CUDA
struct PerfTest : TestCase {
  std::string name() const override { return "perf/W1/bf16/d128/bq128/bk64/global/B1H12L32760/topk0.05/W/b"; }
  int eval(const RunOptions& opt, TrainingResult*, std::string*) const override {
    return run_perf(opt.seed, opt.training.o_sparse);
  }
};
#endif

template <class T>
std::unique_ptr<TestCase> make_test(const Case& c, Mode m, uint64_t seed, int64_t index) {
  auto t = std::make_unique<T>();
  t->vars = c;
  t->mode = m;
  t->seed = seed;
  t->index = index;
  return t;
}

struct CaseListOptions {
  uint64_t seed = 12345;
  int64_t fuzz_count = 2000, fuzz_case = -1;
  FuzzLimits limits;
};

std::vector<std::unique_ptr<TestCase>> make_cases(Mode m, const CaseListOptions& o) {
  std::vector<std::unique_ptr<TestCase>> out;
  auto grid_seed = [&](size_t n) {
    return o.seed + 7919 * static_cast<uint64_t>(n);
  };
  switch (m) {
    case Mode::fwd:
      for (const Case& c : forward_cases())
        out.push_back(make_test<ForwardTest>(c, m, grid_seed(out.size()), out.size()));
      break;
    case Mode::bwd: {
      std::vector<Case> cs = gradient_cases();
      for (const Case& c : regression_cases()) cs.push_back(c);
      for (const Case& c : cs) out.push_back(make_test<TrainingTest>(c, m, grid_seed(out.size()), out.size()));
      break;
    }
    case Mode::ref:
      for (const Case& c : gradient_cases())
        out.push_back(make_test<ReferenceTest>(c, m, grid_seed(out.size()), out.size()));
      break;
    case Mode::fuzz: {
      const int64_t first = o.fuzz_case >= 0 ? o.fuzz_case : 0;
      const int64_t last = o.fuzz_case >= 0 ? o.fuzz_case + 1 : o.fuzz_count;
      for (int64_t k = first; k < last; ++k) {
        const uint64_t cs = mix_seed(o.seed, static_cast<uint64_t>(k));
        out.push_back(make_test<TrainingTest>(draw_case(cs, o.limits), m, mix_seed(cs, 1), k));
      }
      break;
    }
    case Mode::perf:
#ifdef SLA_TEST_WITH_CUDA
      out.push_back(make_test<PerfTest>(Case{}, m, o.seed, 0));
#endif
      break;
  }
  return out;
}

// Worst ratio to the limit per tensor over a run, with the case that reached it.
struct Worst {
  double ratio[kTensors] = {0, 0, 0, 0, 0, 0};
  int64_t where[kTensors] = {-1, -1, -1, -1, -1, -1};
  void add(const TrainingResult& r, int64_t index) {
    for (int t = 0; t < kTensors; ++t)
      if (r.ratio[t] > ratio[t]) ratio[t] = r.ratio[t], where[t] = index;
  }
};

struct ModeSummary {
  int passed = 0, failed = 0, skipped = 0, determinism = 0, cross_checked = 0;
  // Passed cases per block-map rule: fixed topk, per-head topk, top_p, negligible threshold (and those where it cut
  // a row's set); and those whose map has rows below the LUT width (any rule).
  int fixed = 0, head_topk = 0, top_p = 0, partial = 0, threshold = 0, cut = 0;
  double flops = 0;
  Worst worst;
  std::vector<int64_t> failures;
};

// Runs the cases of one mode over `jobs` host threads (the backend calls themselves are serialised on the GPU);
// prints one line per case as it finishes.
ModeSummary run_mode(const std::vector<std::unique_ptr<TestCase>>& cases, const std::string& filter,
                     const RunOptions& opt, int jobs, bool quiet_ok) {
  ModeSummary sum;
  std::mutex out_mutex;
  std::atomic<size_t> next{0};
  auto worker = [&]() {
    for (size_t i = next++; i < cases.size(); i = next++) {
      const TestCase& tc = *cases[i];
      const std::string name = tc.name();
      if (!filter.empty() && name.find(filter) == std::string::npos) continue;
      std::string log;
      TrainingResult res;
      const int rc = tc.eval(opt, &res, &log);
      std::lock_guard<std::mutex> lock(out_mutex);
      if (rc == 0 && quiet_ok) {
        // fuzz: the summary has the worst ratios; the passing lines would be thousands.
      } else {
        std::printf("%s %s%s:%s\n", rc == 0 ? "OK  " : (rc == kSkip ? "SKIP" : "FAIL"),
                    tc.mode == Mode::fuzz ? ("#" + std::to_string(tc.index) + " ").c_str() : "", name.c_str(),
                    log.c_str());
        std::fflush(stdout);
      }
      (rc == 0 ? sum.passed : (rc == kSkip ? sum.skipped : sum.failed))++;
      if (rc == 1) sum.failures.push_back(tc.index);
      if (rc == 0) {
        sum.worst.add(res, tc.index);
        sum.flops += tc.flops();
        if (res.determinism_checked) ++sum.determinism;
        if (res.cross_checked) ++sum.cross_checked;
        const Case& v = tc.vars;
        ++(v.top_p_rule() ? sum.top_p : (v.head_topk.empty() ? sum.fixed : sum.head_topk));
        sum.partial += res.partial_rows;
        sum.threshold += v.negligible_threshold > 0;
        sum.cut += res.threshold_cut;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int j = 1; j < jobs; ++j) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  return sum;
}

void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--backend cuda|cpu] [--mode fwd,bwd,fuzz,ref,perf|all] [--filter SUBSTRING] [--seed N]\n"
               "          [--case K] [--count N] [--max-len N] [--jobs N] [--no-o-sparse] [--list]\n",
               argv0);
}

}  // namespace

int main(int argc, char** argv) {
  std::string modes_arg = "fwd", filter, backend;
#ifdef SLA_TEST_WITH_CUDA
  backend = "cuda";
#else
  backend = "cpu";
#endif
  CaseListOptions lo;
  bool seed_given = false, list = false, count_given = false;
  int jobs = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  RunOptions ro;
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    auto value = [&]() -> const char* {
      if (a + 1 >= argc) {
        usage(argv[0]);
        std::exit(2);
      }
      return argv[++a];
    };
    if (arg == "--mode") {
      modes_arg = value();
    } else if (arg == "--backend") {
      backend = value();
    } else if (arg == "--filter") {
      filter = value();
    } else if (arg == "--seed") {
      lo.seed = std::strtoull(value(), nullptr, 10);
      seed_given = true;
    } else if (arg == "--case") {
      lo.fuzz_case = std::strtoll(value(), nullptr, 10);
    } else if (arg == "--count") {
      lo.fuzz_count = std::strtoll(value(), nullptr, 10);
      count_given = true;
    } else if (arg == "--max-len") {
      lo.limits.max_len = std::max<int64_t>(1, std::strtoll(value(), nullptr, 10));
    } else if (arg == "--jobs") {
      jobs = std::max(1, std::atoi(value()));
    } else if (arg == "--no-o-sparse") {
      ro.training.o_sparse = false;
    } else if (arg == "--list") {
      list = true;
    } else {
      usage(argv[0]);
      return 2;
    }
  }
  std::vector<Mode> modes;
  {
    std::string m = modes_arg == "all" ? "fwd,bwd,fuzz,perf" : modes_arg;
    size_t p = 0;
    while (p <= m.size()) {
      const size_t q = std::min(m.find(',', p), m.size());
      const std::string one = m.substr(p, q - p);
      bool found = false;
      for (Mode x : {Mode::fwd, Mode::bwd, Mode::fuzz, Mode::ref, Mode::perf})
        if (one == mode_name(x)) modes.push_back(x), found = true;
      if (!found) {
        std::fprintf(stderr, "unknown mode '%s'\n", one.c_str());
        usage(argv[0]);
        return 2;
      }
      p = q + 1;
    }
  }
  if (backend == "cpu") {
    dut_device_ref() = sla::Device::cpu;
    lo.limits.cpu = true;
    if (!count_given) lo.fuzz_count = 300;
  } else if (backend == "cuda") {
#ifdef SLA_TEST_WITH_CUDA
    dut_device_ref() = sla::Device::cuda;
    ro.cross_check_every = 8;
#else
    std::printf("skipped: this build has no CUDA backend\n");
    return kSkip;
#endif
  } else {
    std::fprintf(stderr, "unknown backend '%s' (cuda or cpu)\n", backend.c_str());
    return 2;
  }
  bool fuzz = false;
  for (Mode m : modes) fuzz |= m == Mode::fuzz;
  if (fuzz && !seed_given) lo.seed = std::random_device{}() ^ (static_cast<uint64_t>(std::random_device{}()) << 32);
  ro.seed = lo.seed;
  if (list) {
    for (Mode m : modes)
      for (const auto& c : make_cases(m, lo)) std::printf("%s\n", c->name().c_str());
    return 0;
  }
  bool needs_device = false;
  for (Mode m : modes) needs_device |= m != Mode::ref;
  if (needs_device && dut_is_cuda() && !sla::cuda_available()) {
    std::printf("skipped: no CUDA device\n");
    return kSkip;
  }
  std::printf("%s; backend under test: %s\n", sla::build_info().c_str(), backend.c_str());
  int rc = 0;
  int any_passed = 0, any_skipped = 0;
  for (Mode m : modes) {
    const auto cases = make_cases(m, lo);
    if (m == Mode::perf && cases.empty()) {
      std::printf("perf: needs the CUDA backend\n");
      continue;
    }
    const bool parallel = m == Mode::fuzz;
    // In parallel runs each oracle call is single-threaded (the cases are the parallelism).
    oracle_threads() = parallel && jobs > 1 ? 1 : 0;
    if (m == Mode::fuzz) {
      std::printf("fuzz: seed %" PRIu64
                  ", %zu configurations, %d host threads; replay one with: %s --backend %s "
                  "--mode fuzz --seed %" PRIu64 " --case K%s\n",
                  lo.seed, cases.size(), jobs, argv[0], backend.c_str(), lo.seed,
                  lo.limits.max_len != 1600 ? (" --max-len " + std::to_string(lo.limits.max_len)).c_str() : "");
      std::fflush(stdout);
    }
    const ModeSummary s = run_mode(cases, filter, ro, parallel ? jobs : 1, m == Mode::fuzz && lo.fuzz_case < 0);
    any_passed += s.passed;
    any_skipped += s.skipped;
    if (s.failed) rc = 1;
    std::printf("%s: %d/%d cases passed, %d skipped", mode_name(m), s.passed, s.passed + s.failed + s.skipped,
                s.skipped);
    if (m == Mode::bwd || m == Mode::fuzz) {
      std::printf("; bitwise reruns identical on %d; worst error / limit:", s.determinism);
      for (int t = 0; t < kTensors; ++t)
        if (s.worst.where[t] >= 0) {
          std::printf(" %s %.3f (#%" PRId64 ")", kTensorNames[t], s.worst.ratio[t], s.worst.where[t]);
        }
      std::printf("; %.1f GFLOP checked", s.flops / 1e9);
    }
    std::printf("\n");
    if (m == Mode::bwd || m == Mode::fuzz) {
      std::printf(
          "%s: block maps of the passed cases: fixed topk %d, per-head topk %d, top_p %d, negligible threshold "
          "%d (cutting a row's set in %d); rows below the LUT width in %d; exact reference = oracle on %d\n",
          mode_name(m), s.fixed, s.head_topk, s.top_p, s.threshold, s.cut, s.partial, s.cross_checked);
    }
    if (m == Mode::fuzz && !s.failures.empty()) {
      std::printf("fuzz: %zu failing configurations; replay:", s.failures.size());
      for (size_t f = 0; f < s.failures.size() && f < 20; ++f)
        std::printf(" --seed %" PRIu64 " --case %" PRId64 ";", lo.seed, s.failures[f]);
      std::printf("\n");
    }
  }
  if (rc == 0 && any_passed == 0 && any_skipped > 0) return kSkip;
  return rc;
}
