// Owns every buffer one SLA problem needs on one device (block map, output, saved tensors, gradients,
// workspaces) and runs the public API calls on them. Used by `sla demo` and `sla bench`.
#pragma once

#include <cstdint>

#include "device/owned_tensor.h"
#include "sla/sla.h"
#include "workload/reference_attention.h"

namespace sla_cli {

// The block-map tables of sla.h's BlockMap, owned.
struct OwnedBlockMap {
  sla::BlockMapShape shape;
  OwnedTensor lut, count, negl_lut, negl_count;
  OwnedTensor inv_offset, inv_index, negl_inv_offset, negl_inv_index;  // empty unless allocated with inverse

  sla::BlockMap view() const;
};

// The map's tables copied to the host as the reports read them (block sizes from cfg).
BlockClasses classes_of(const OwnedBlockMap& m, const sla::Config& cfg);

class SlaRunner {
 public:
  enum class Mode {
    inference,     // O only
    save_forward,  // O plus the saved LSE, O_l, H, z (the demo reads O_l)
    training,      // save_forward plus the inverse tables and gradient buffers for backward()
  };

  // q (B,H,Lq,D), k (B,H,Lk,D), v (B,H,Lk,Dv) must stay alive and unchanged in shape while the runner lives.
  // Throws RunError when the library rejects the problem.
  SlaRunner(const sla::TensorView& q, const sla::TensorView& k, const sla::TensorView& v, const sla::Config& cfg,
            Mode mode, int num_threads);

  void predict_block_map();
  void forward();
  // Backward with a fixed pseudo-random dO (made at construction; training mode only).
  void backward();

  const OwnedBlockMap& block_map() const { return map_; }
  const OwnedTensor& output() const { return o_; }
  const OwnedTensor& linear_output() const { return o_lin_; }  // O_l (save_forward and training modes)
  const sla::Config& config() const { return cfg_; }

 private:
  sla::ForwardArgs forward_args() const;
  sla::BackwardArgs backward_args() const;
  sla::Exec exec(const DeviceBuffer& workspace) const;

  sla::TensorView q_, k_, v_;
  sla::Config cfg_;
  Mode mode_;
  int num_threads_;
  OwnedBlockMap map_;
  OwnedTensor o_, lse_, o_lin_, lin_h_, lin_z_;
  OwnedTensor d_o_, dq_, dk_, dv_;
  DeviceBuffer predict_ws_, forward_ws_, backward_ws_;
};

}  // namespace sla_cli
