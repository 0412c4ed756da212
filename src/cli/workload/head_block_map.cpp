// See head_block_map.h.
#include "workload/head_block_map.h"

#include <vector>

#include "cli_error.h"
#include "device/device_buffer.h"
#include "device/owned_tensor.h"
#include "sla/sla.h"

namespace sla_cli {

BlockClasses head_block_map(const AttentionProblem& p, int64_t bh, const sla::Config& cfg, int threads) {
  const int64_t h = bh % p.heads;
  sla::Config one = cfg;
  if (!one.head_topk.empty()) one.head_topk = {cfg.head_topk.at(h)};
  if (!one.head_top_p.empty()) one.head_top_p = {cfg.head_top_p.at(h)};

  // The library only reads Q and K; its views take non-const pointers.
  const sla::TensorView q = contiguous_view(const_cast<float*>(p.q + bh * p.lq * p.dim), sla::DType::f32,
                                            {1, 1, p.lq, p.dim}, sla::Device::cpu);
  const sla::TensorView k = contiguous_view(const_cast<float*>(p.k + bh * p.lk * p.dim), sla::DType::f32,
                                            {1, 1, p.lk, p.dim}, sla::Device::cpu);
  sla::BlockMapShape s;
  check_status(sla::block_map_shape(1, 1, p.lq, p.lk, one, &s), "sla::block_map_shape");
  BlockClasses c;
  c.q_blocks = s.q_blocks;
  c.k_blocks = s.k_blocks;
  c.block_q = one.block_q;
  c.block_k = one.block_k;
  c.critical = s.critical;
  c.negligible = s.negligible;
  c.lut.assign(s.q_blocks * s.critical, 0);
  c.count.assign(s.q_blocks, 0);
  sla::BlockMap map;
  map.lut = contiguous_view(c.lut.data(), sla::DType::i32, {1, 1, s.q_blocks, s.critical}, sla::Device::cpu);
  map.count = contiguous_view(c.count.data(), sla::DType::i32, {1, 1, s.q_blocks}, sla::Device::cpu);
  if (s.negligible > 0) {
    c.negl_lut.assign(s.q_blocks * s.negligible, 0);
    c.negl_count.assign(s.q_blocks, 0);
    map.negl_lut =
        contiguous_view(c.negl_lut.data(), sla::DType::i32, {1, 1, s.q_blocks, s.negligible}, sla::Device::cpu);
    map.negl_count = contiguous_view(c.negl_count.data(), sla::DType::i32, {1, 1, s.q_blocks}, sla::Device::cpu);
  }
  std::size_t bytes = 0;
  check_status(sla::predict_block_map_workspace_size(q, k, one, &bytes), "sla::predict_block_map_workspace_size");
  const DeviceBuffer workspace(sla::Device::cpu, bytes);
  sla::Exec exec;
  exec.workspace = bytes > 0 ? workspace.data() : nullptr;
  exec.workspace_bytes = bytes;
  exec.num_threads = threads;
  check_status(sla::predict_block_map(q, k, one, map, exec), "sla::predict_block_map");
  return c;
}

}  // namespace sla_cli
