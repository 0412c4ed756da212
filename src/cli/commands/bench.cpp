// `sla bench`: median times of block-map prediction, forward and forward + backward on random inputs.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>

#include "cli_error.h"
#include "commands/backend_select.h"
#include "commands/commands.h"
#include "device/cuda_timer.h"
#include "device/memory_limits.h"
#include "device/wall_timer.h"
#include "report/progress.h"
#include "workload/sla_runner.h"

namespace sla_cli {

namespace {

struct Sample {
  double median_ms = -1, min_ms = -1;
};

// Untimed warm-up runs, then `iters` timed runs: CUDA events on the GPU (host clocks would time the launches),
// a steady clock on the CPU. Each run is counted in `progress`'s current step (after the timer stopped).
Sample measure(sla::Device device, int64_t warmup, int64_t iters, Progress& progress, const std::function<void()>& f) {
  const int64_t runs = warmup + iters;
  for (int64_t i = 0; i < warmup; ++i) {
    f();
    progress.count(i + 1, runs);
  }
  std::vector<double> ms;
  if (device == sla::Device::cuda) {
    CudaEventTimer timer(nullptr);
    for (int64_t i = 0; i < iters; ++i) {
      timer.start();
      f();
      timer.stop();
      ms.push_back(timer.elapsed_ms());
      progress.count(warmup + i + 1, runs);
    }
  } else {
    for (int64_t i = 0; i < iters; ++i) {
      ms.push_back(timed_ms(device, f));
      progress.count(warmup + i + 1, runs);
    }
  }
  std::sort(ms.begin(), ms.end());
  Sample s;
  s.min_ms = ms.front();
  s.median_ms = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
  return s;
}

// Unit-variance uniform values from a counter-based hash: fast for the 10^8 elements of large shapes, and the
// same for every run with the same seed.
std::vector<float> random_values(int64_t n, uint64_t seed) {
  std::vector<float> out(static_cast<std::size_t>(n));
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  for (float& x : out) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const double u = static_cast<double>(z >> 11) * 0x1.0p-53;  // [0, 1)
    x = static_cast<float>((2.0 * u - 1.0) * std::sqrt(3.0));
  }
  return out;
}

sla::DType parse_dtype(const std::string& s, sla::Device device) {
  if (s == "auto") return device == sla::Device::cuda ? sla::DType::bf16 : sla::DType::f32;
  if (s == "f32") return sla::DType::f32;
  if (s == "f64") return sla::DType::f64;
  if (s == "bf16") return sla::DType::bf16;
  return sla::DType::f16;
}

std::string json_sample(const Sample& s) {
  if (s.median_ms < 0) return "null";
  std::ostringstream os;
  os << "{\"median\": " << s.median_ms << ", \"min\": " << s.min_ms << "}";
  return os.str();
}

// Random Q, K, V on one device and a runner for them.
struct BenchProblem {
  sla::Device device = sla::Device::cpu;
  sla::DType dtype = sla::DType::f32;
  OwnedTensor q, k, v;
  std::unique_ptr<SlaRunner> runner;
  std::string backward_note;  // why fwd+bwd is not timed, when it is not
};

// Host bytes of one bench problem, roughly (checked before anything is allocated): each input once as floats, once
// staged in its dtype and once on the device (counted as host memory: on the CPU it is), plus O and, with
// --backward, dO, dQ, dK, dV and the saved tensors.
void check_size(const BenchOptions& o, sla::DType dtype) {
  const double dsize = static_cast<double>(sla::dtype_size(dtype));
  const double bh = static_cast<double>(o.batch) * static_cast<double>(o.heads);
  const double nq = bh * static_cast<double>(o.lq) * o.dim, nk = bh * static_cast<double>(o.lk) * o.dim;
  const double bytes = (4.0 + 2.0 * dsize) * (nq + 2.0 * nk) + dsize * (o.backward ? 3.0 * nq + 2.0 * nk : nq);
  std::ostringstream what;
  what << "--shape B=" << o.batch << " H=" << o.heads << " Lq=" << o.lq << " Lk=" << o.lk << " D=" << o.dim << " ("
       << sla::dtype_name(dtype) << (o.backward ? ", with --backward" : "") << ")";
  const std::string shortfall = host_memory_shortfall(bytes, what.str());
  if (!shortfall.empty()) throw UsageError(shortfall + "; choose a smaller shape");
}

BenchProblem make_problem(const BenchOptions& o, sla::Device device) {
  BenchProblem p;
  p.device = device;
  p.dtype = parse_dtype(o.dtype, device);
  check_size(o, p.dtype);
  p.q = OwnedTensor::from_floats(random_values(o.batch * o.heads * o.lq * o.dim, o.seed), p.dtype,
                                 {o.batch, o.heads, o.lq, o.dim}, device);
  p.k = OwnedTensor::from_floats(random_values(o.batch * o.heads * o.lk * o.dim, o.seed + 1), p.dtype,
                                 {o.batch, o.heads, o.lk, o.dim}, device);
  p.v = OwnedTensor::from_floats(random_values(o.batch * o.heads * o.lk * o.dim, o.seed + 2), p.dtype,
                                 {o.batch, o.heads, o.lk, o.dim}, device);
  if (o.backward) {
    try {
      p.runner =
          std::make_unique<SlaRunner>(p.q.view(), p.k.view(), p.v.view(), o.cfg, SlaRunner::Mode::training, o.threads);
      // One untimed pass finds out whether this backend implements backward for this problem.
      p.runner->predict_block_map();
      p.runner->forward();
      p.runner->backward();
      return p;
    } catch (const UnsupportedError& e) {
      // A backend without backward support still gets its forward timed; the table says why fwd+bwd is missing.
      p.backward_note = e.what();
    }
  }
  p.runner =
      std::make_unique<SlaRunner>(p.q.view(), p.k.view(), p.v.view(), o.cfg, SlaRunner::Mode::inference, o.threads);
  return p;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out + "\"";
}

}  // namespace

int run_bench(const BenchOptions& o) {
  Progress progress(o.backward ? 4 : 3, o.progress || stderr_is_terminal());
  progress.step("random inputs and buffers");
  BackendDecision backend = choose_backend(o.backend);
  BenchProblem problem;
  if (backend.device == sla::Device::cuda) {
    try {
      problem = make_problem(o, sla::Device::cuda);
    } catch (const UnsupportedError& e) {
      if (o.backend == BackendChoice::cuda) throw;
      backend = {sla::Device::cpu, std::string("auto: the GPU cannot run this problem: ") + e.what()};
    }
  }
  if (backend.device == sla::Device::cpu) problem = make_problem(o, sla::Device::cpu);
  const sla::Device device = problem.device;
  const sla::DType dtype = problem.dtype;
  SlaRunner& runner = *problem.runner;
  const bool time_backward = o.backward && problem.backward_note.empty();

  const std::string runs = " (" + std::to_string(o.warmup) + " warm-up + " + std::to_string(o.iters) + " timed runs)";
  progress.step("timing the block map" + runs);
  const Sample map = measure(device, o.warmup, o.iters, progress, [&] {
    runner.predict_block_map();
  });
  progress.step("timing the forward pass" + runs);
  const Sample fwd = measure(device, o.warmup, o.iters, progress, [&] {
    runner.forward();
  });
  Sample fwd_bwd;
  if (time_backward) {
    progress.step("timing forward + backward" + runs);
    fwd_bwd = measure(device, o.warmup, o.iters, progress, [&] {
      runner.forward();
      runner.backward();
    });
  }
  progress.finish_step();
  const sla::BlockMapShape& s = runner.block_map().shape;
  // Two throughputs of block map + forward: "dense-equivalent" divides the FLOPs of full attention (4 B H Lq Lk D)
  // by SLA's time, as sparse-attention papers report speed (it exceeds the hardware peak by design); "sparse
  // branch" divides the FLOPs SLA really spends on its critical blocks, the kernel's achieved rate.
  const double sla_s = (map.median_ms + fwd.median_ms) * 1e-3;
  const double dense_flops = 4.0 * o.batch * o.heads * o.lq * o.lk * o.dim;
  const double sparse_flops =
      4.0 * o.batch * o.heads * o.lq * std::min<double>(o.lk, s.critical * o.cfg.block_k) * o.dim;
  const double eff_tflops = dense_flops / sla_s / 1e12;
  const double sparse_tflops = sparse_flops / sla_s / 1e12;

  if (o.json) {
    std::ostringstream os;
    os << "{\"backend\": \"" << sla::device_name(device) << "\", \"device\": " << json_string(describe_device(device))
       << ", \"dtype\": \"" << sla::dtype_name(dtype) << "\", \"batch\": " << o.batch << ", \"heads\": " << o.heads
       << ", \"lq\": " << o.lq << ", \"lk\": " << o.lk << ", \"dim\": " << o.dim << ", \"variant\": \""
       << sla::variant_name(o.cfg.variant) << "\", \"feature_map\": \"" << sla::feature_map_name(o.cfg.feature_map)
       << "\", \"topk\": " << o.cfg.topk << ", \"negligible\": " << o.cfg.negligible
       << ", \"block_q\": " << o.cfg.block_q << ", \"block_k\": " << o.cfg.block_k
       << ", \"critical_blocks\": " << s.critical << ", \"key_blocks\": " << s.k_blocks << ", \"warmup\": " << o.warmup
       << ", \"iters\": " << o.iters << ", \"block_map_ms\": " << json_sample(map)
       << ", \"forward_ms\": " << json_sample(fwd) << ", \"forward_backward_ms\": " << json_sample(fwd_bwd)
       << ", \"dense_equivalent_tflops\": " << eff_tflops << ", \"sparse_branch_tflops\": " << sparse_tflops;
    if (!problem.backward_note.empty()) os << ", \"backward_note\": " << json_string(problem.backward_note);
    os << "}";
    std::cout << os.str() << "\n";
    return kExitOk;
  }

  std::printf("SLA bench on %s (%s), %s\n", describe_device(device).c_str(), backend.reason.c_str(),
              sla::dtype_name(dtype));
  std::printf(
      "  shape B=%lld H=%lld Lq=%lld Lk=%lld D=%lld; %s variant, %s phi, blocks %d/%d, topk %g -> T = %lld "
      "of %lld key blocks\n",
      static_cast<long long>(o.batch), static_cast<long long>(o.heads), static_cast<long long>(o.lq),
      static_cast<long long>(o.lk), static_cast<long long>(o.dim), sla::variant_name(o.cfg.variant),
      sla::feature_map_name(o.cfg.feature_map), o.cfg.block_q, o.cfg.block_k, o.cfg.topk,
      static_cast<long long>(s.critical), static_cast<long long>(s.k_blocks));
  std::printf("  %lld warm-up + %lld timed runs each\n\n", static_cast<long long>(o.warmup),
              static_cast<long long>(o.iters));
  std::printf("  %-22s %12s %12s\n", "step", "median ms", "min ms");
  std::printf("  %-22s %12.3f %12.3f\n", "block map", map.median_ms, map.min_ms);
  std::printf("  %-22s %12.3f %12.3f\n", "forward", fwd.median_ms, fwd.min_ms);
  if (time_backward) std::printf("  %-22s %12.3f %12.3f\n", "forward + backward", fwd_bwd.median_ms, fwd_bwd.min_ms);
  if (!problem.backward_note.empty())
    std::printf("  %-22s not timed: %s\n", "forward + backward", problem.backward_note.c_str());
  std::printf(
      "\n  throughput of block map + forward: %.4g TFLOP/s dense-equivalent (full attention's FLOPs / time),\n"
      "  %.4g TFLOP/s on the critical blocks actually computed\n",
      eff_tflops, sparse_tflops);
  return kExitOk;
}

}  // namespace sla_cli
