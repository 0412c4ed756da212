// Timing of the CPU backend (not a test: nothing is asserted): inference forward, then a training step. Default problem: B=1, H=4, L=8192, D=64,
// topk 0.1, fp32, bq = bk = 64, global variant, softmax phi. Usage: bench_cpu_forward [threads] [L] [variant 0|1]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "sla/sla.h"

namespace {

sla::TensorView view4(std::vector<float>& data, int64_t b, int64_t h, int64_t l, int64_t d) {
  return sla::make_view(data.data(), sla::DType::f32, {b, h, l, d});
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 0;
  const int64_t B = 1, H = 4, L = argc > 2 ? std::atoll(argv[2]) : 8192, D = 64;
  sla::Config cfg;
  cfg.block_q = cfg.block_k = 64;
  cfg.topk = 0.1;
  cfg.variant = argc > 3 && std::atoi(argv[3]) == 1 ? sla::Variant::complement : sla::Variant::global;

  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  std::vector<float> q(B * H * L * D), k(q.size()), v(q.size()), o(q.size()), w(D * D), bias(D);
  for (auto* t : {&q, &k, &v}) for (float& x : *t) x = dist(rng);
  for (float& x : w) x = 0.01f * dist(rng);

  sla::BlockMapShape ms;
  sla::block_map_shape(B, H, L, L, cfg, &ms);
  std::vector<int32_t> lut(B * H * ms.q_blocks * ms.critical), count(B * H * ms.q_blocks);
  sla::BlockMap map;
  map.lut = sla::make_view(lut.data(), sla::DType::i32, {B, H, ms.q_blocks, ms.critical});
  map.count = sla::make_view(count.data(), sla::DType::i32, {B, H, ms.q_blocks});
  sla::Exec exec;
  exec.num_threads = threads;

  sla::ForwardArgs args;
  args.q = view4(q, B, H, L, D);
  args.k = view4(k, B, H, L, D);
  args.v = view4(v, B, H, L, D);
  args.proj_weight = sla::make_view(w.data(), sla::DType::f32, {D, D});
  args.proj_bias = sla::make_view(bias.data(), sla::DType::f32, {D});
  args.map = map;
  args.o = view4(o, B, H, L, D);

  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    sla::Status st = sla::predict_block_map(args.q, args.k, cfg, map, exec);
    const double t_map = seconds_since(t0);
    if (!st.ok()) { std::fprintf(stderr, "predict: %s\n", st.message.c_str()); return 1; }
    t0 = std::chrono::steady_clock::now();
    st = sla::forward(args, cfg, exec);
    const double t_fwd = seconds_since(t0);
    if (!st.ok()) { std::fprintf(stderr, "forward: %s\n", st.message.c_str()); return 1; }
    std::printf("L=%lld T=%lld threads=%d %s: block map %.3f s, forward %.3f s\n", (long long)L,
                (long long)ms.critical, threads, sla::variant_name(cfg.variant), t_map, t_fwd);
  }

  // Training step: forward with the saved state, then backward (inverse tables needed).
  std::vector<int32_t> inv_offset(B * H * (ms.k_blocks + 1)), inv_index(B * H * ms.q_blocks * ms.critical);
  map.inv_offset = sla::make_view(inv_offset.data(), sla::DType::i32, {B, H, ms.k_blocks + 1});
  map.inv_index = sla::make_view(inv_index.data(), sla::DType::i32, {B, H, ms.q_blocks * ms.critical});
  std::vector<float> lse(B * H * L), o_lin(q.size()), lin_h(B * H * D * D), lin_z(B * H * D);
  std::vector<float> d_o(q.size()), dq(q.size()), dk(q.size()), dv(q.size()), dw(D * D), db(D);
  for (float& x : d_o) x = dist(rng);
  args.map = map;
  args.lse = sla::make_view(lse.data(), sla::DType::f32, {B, H, L});
  args.o_lin = view4(o_lin, B, H, L, D);
  args.lin_h = view4(lin_h, B, H, D, D);
  args.lin_z = sla::make_view(lin_z.data(), sla::DType::f32, {B, H, D});
  sla::BackwardArgs bw;
  bw.q = args.q;
  bw.k = args.k;
  bw.v = args.v;
  bw.proj_weight = args.proj_weight;
  bw.proj_bias = args.proj_bias;
  bw.map = map;
  bw.o = args.o;
  bw.d_o = view4(d_o, B, H, L, D);
  bw.lse = args.lse;
  bw.o_lin = args.o_lin;
  bw.lin_h = args.lin_h;
  bw.lin_z = args.lin_z;
  bw.dq = view4(dq, B, H, L, D);
  bw.dk = view4(dk, B, H, L, D);
  bw.dv = view4(dv, B, H, L, D);
  bw.d_proj_weight = sla::make_view(dw.data(), sla::DType::f32, {D, D});
  bw.d_proj_bias = sla::make_view(db.data(), sla::DType::f32, {D});
  for (int rep = 0; rep < 2; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    sla::Status st = sla::predict_block_map(args.q, args.k, cfg, map, exec);
    if (st.ok()) st = sla::forward(args, cfg, exec);
    const double t_fwd = seconds_since(t0);
    if (!st.ok()) { std::fprintf(stderr, "training forward: %s\n", st.message.c_str()); return 1; }
    t0 = std::chrono::steady_clock::now();
    st = sla::backward(bw, cfg, exec);
    const double t_bwd = seconds_since(t0);
    if (!st.ok()) { std::fprintf(stderr, "backward: %s\n", st.message.c_str()); return 1; }
    std::printf("training: block map + forward (saved state) %.3f s, backward %.3f s\n", t_fwd, t_bwd);
  }
  return 0;
}
