// See sla_runner.h.
#include "workload/sla_runner.h"

#include <random>
#include <stdexcept>

#include "cli_error.h"

namespace sla_cli {

namespace {

sla::TensorView view_or_absent(const OwnedTensor& t) { return t.shape().empty() ? sla::TensorView{} : t.view(); }

OwnedTensor i32(std::vector<int64_t> shape, sla::Device device) {
  return OwnedTensor(sla::DType::i32, std::move(shape), device);
}

}  // namespace

sla::BlockMap OwnedBlockMap::view() const {
  sla::BlockMap m;
  m.lut = view_or_absent(lut);
  m.count = view_or_absent(count);
  m.negl_lut = view_or_absent(negl_lut);
  m.negl_count = view_or_absent(negl_count);
  m.inv_offset = view_or_absent(inv_offset);
  m.inv_index = view_or_absent(inv_index);
  m.negl_inv_offset = view_or_absent(negl_inv_offset);
  m.negl_inv_index = view_or_absent(negl_inv_index);
  return m;
}

SlaRunner::SlaRunner(const sla::TensorView& q, const sla::TensorView& k, const sla::TensorView& v,
                     const sla::Config& cfg, Mode mode, int num_threads)
    : q_(q), k_(k), v_(v), cfg_(cfg), mode_(mode), num_threads_(num_threads) {
  const int64_t b = q.shape[0], h = q.shape[1], lq = q.shape[2], d = q.shape[3];
  const int64_t lk = k.shape[2], dv = v.shape[3];
  const sla::Device dev = q.device;
  const sla::DType acc = q.dtype == sla::DType::f64 ? sla::DType::f64 : sla::DType::f32;

  check_status(sla::block_map_shape(b, h, lq, lk, cfg, &map_.shape), "sla::block_map_shape");
  const sla::BlockMapShape& s = map_.shape;
  map_.lut = i32({b, h, s.q_blocks, s.critical}, dev);
  map_.count = i32({b, h, s.q_blocks}, dev);
  if (s.negligible > 0) {
    map_.negl_lut = i32({b, h, s.q_blocks, s.negligible}, dev);
    map_.negl_count = i32({b, h, s.q_blocks}, dev);
  }
  if (mode == Mode::training) {
    map_.inv_offset = i32({b, h, s.k_blocks + 1}, dev);
    map_.inv_index = i32({b, h, s.q_blocks * s.critical}, dev);
  }
  o_ = OwnedTensor(q.dtype, {b, h, lq, dv}, dev);
  if (mode != Mode::inference) {
    lse_ = OwnedTensor(acc, {b, h, lq}, dev);
    o_lin_ = OwnedTensor(acc, {b, h, lq, dv}, dev);
    lin_h_ = OwnedTensor(acc, {b, h, d, dv}, dev);
    lin_z_ = OwnedTensor(acc, {b, h, d}, dev);
  }
  if (mode == Mode::training) {
    std::mt19937 gen(12345);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> grad(static_cast<std::size_t>(b * h * lq * dv));
    for (float& x : grad) x = normal(gen);
    d_o_ = OwnedTensor::from_floats(grad, q.dtype, {b, h, lq, dv}, dev);
    dq_ = OwnedTensor(q.dtype, {b, h, lq, d}, dev);
    dk_ = OwnedTensor(k.dtype, {b, h, lk, d}, dev);
    dv_ = OwnedTensor(v.dtype, {b, h, lk, dv}, dev);
  }

  // Workspaces are sized once so that timed calls do not allocate.
  std::size_t bytes = 0;
  check_status(sla::predict_block_map_workspace_size(q_, k_, cfg_, &bytes), "sla::predict_block_map_workspace_size");
  predict_ws_ = DeviceBuffer(dev, bytes);
  check_status(sla::forward_workspace_size(forward_args(), cfg_, &bytes), "sla::forward_workspace_size");
  forward_ws_ = DeviceBuffer(dev, bytes);
  if (mode == Mode::training) {
    check_status(sla::backward_workspace_size(backward_args(), cfg_, &bytes), "sla::backward_workspace_size");
    backward_ws_ = DeviceBuffer(dev, bytes);
  }
}

sla::Exec SlaRunner::exec(const DeviceBuffer& workspace) const {
  sla::Exec e;
  e.stream = nullptr;
  e.workspace = workspace.bytes() > 0 ? workspace.data() : nullptr;
  e.workspace_bytes = workspace.bytes();
  e.num_threads = num_threads_;
  return e;
}

sla::ForwardArgs SlaRunner::forward_args() const {
  sla::ForwardArgs a;
  a.q = q_;
  a.k = k_;
  a.v = v_;
  a.map = map_.view();
  a.o = o_.view();
  a.lse = view_or_absent(lse_);
  a.o_lin = view_or_absent(o_lin_);
  a.lin_h = view_or_absent(lin_h_);
  a.lin_z = view_or_absent(lin_z_);
  return a;
}

sla::BackwardArgs SlaRunner::backward_args() const {
  sla::BackwardArgs a;
  a.q = q_;
  a.k = k_;
  a.v = v_;
  a.map = map_.view();
  a.o = o_.view();
  a.d_o = d_o_.view();
  a.lse = lse_.view();
  a.o_lin = o_lin_.view();
  a.lin_h = lin_h_.view();
  a.lin_z = lin_z_.view();
  a.dq = dq_.view();
  a.dk = dk_.view();
  a.dv = dv_.view();
  return a;
}

void SlaRunner::predict_block_map() {
  check_status(sla::predict_block_map(q_, k_, cfg_, map_.view(), exec(predict_ws_)), "sla::predict_block_map");
}

void SlaRunner::forward() { check_status(sla::forward(forward_args(), cfg_, exec(forward_ws_)), "sla::forward"); }

void SlaRunner::backward() {
  if (mode_ != Mode::training) throw std::logic_error("SlaRunner::backward needs Mode::training");
  check_status(sla::backward(backward_args(), cfg_, exec(backward_ws_)), "sla::backward");
}

BlockClasses classes_of(const OwnedBlockMap& m, const sla::Config& cfg) {
  BlockClasses c;
  c.q_blocks = m.shape.q_blocks;
  c.k_blocks = m.shape.k_blocks;
  c.block_q = cfg.block_q;
  c.block_k = cfg.block_k;
  c.critical = m.shape.critical;
  c.negligible = m.shape.negligible;
  c.lut = m.lut.to_int32();
  c.count = m.count.to_int32();
  if (c.negligible > 0) {
    c.negl_lut = m.negl_lut.to_int32();
    c.negl_count = m.negl_count.to_int32();
  }
  return c;
}

}  // namespace sla_cli
