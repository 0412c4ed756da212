// sla::cuda (src/core/backend.h): what the CUDA kernels support, their workspace plans, and the launch sequences.
// Everything is enqueued on (cudaStream_t)exec.stream; nothing here allocates or synchronises.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/backend.h"
#include "core/cuda_arch.h"
#include "core/validate.h"
#include "cuda/block_map.h"
#include "cuda/build_switch.h"
#include "cuda/bwd/backward.h"
#include "cuda/bwd/linear_bwd.h"
#include "cuda/common/cuda_status.h"
#include "cuda/common/params.h"
#include "cuda/fwd/launch.h"
#include "cuda/fwd/linear_state.h"
#include "cuda/head_chunks.h"
#include "cuda/map_check.h"

#ifndef SLA_CUDA_ARCHS_STRING
#define SLA_CUDA_ARCHS_STRING "unknown"
#endif

namespace sla::cuda {
namespace {

bool head_dim_built(int64_t d) {
#ifdef SLA_CUDA_HDIM_64
  if (d == 64) return true;
#endif
#ifdef SLA_CUDA_HDIM_128
  if (d == 128) return true;
#endif
  (void)d;
  return false;
}

bool dtype_built(DType t) {
#ifdef SLA_CUDA_DTYPE_BF16
  if (t == DType::bf16) return true;
#endif
#ifdef SLA_CUDA_DTYPE_F16
  if (t == DType::f16) return true;
#endif
  (void)t;
  return false;
}

std::string built_list(bool hd) {
  std::string s;
  auto add = [&](const char* x) { s += s.empty() ? x : std::string(", ") + x; };
  if (hd) {
#ifdef SLA_CUDA_HDIM_64
    add("64");
#endif
#ifdef SLA_CUDA_HDIM_128
    add("128");
#endif
  } else {
#ifdef SLA_CUDA_DTYPE_BF16
    add("bf16");
#endif
#ifdef SLA_CUDA_DTYPE_F16
    add("f16");
#endif
  }
  return s.empty() ? "none" : s;
}

// The cp.async and ldmatrix paths move 16-byte rows pieces: every row of every head must start 16-byte aligned.
Status check_rows_aligned(const char* name, const TensorView& t) {
  if (!t.present()) return Status::Ok();
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) {
    return Status::Unsupported(std::string(name) + ": the CUDA backend needs a 16-byte aligned data pointer");
  }
  for (int a = 0; a < 3 && a < t.ndim; ++a) {
    if (t.shape[a] > 1 && t.stride[a] % 8 != 0) {
      return Status::Unsupported(std::string(name) + ": the CUDA backend needs stride[" + std::to_string(a) +
                                 "] to be a multiple of 8 elements, got " + std::to_string(t.stride[a]));
    }
  }
  return Status::Ok();
}

Status check_int_sizes(const Problem& p) {
  constexpr int64_t kMaxGrid = 65535;
  if (p.heads > kMaxGrid || p.batch > kMaxGrid) {
    return Status::Unsupported("q: the CUDA backend supports at most 65535 heads and 65535 batches, got H = " +
                               std::to_string(p.heads) + ", B = " + std::to_string(p.batch));
  }
  if (p.map.q_blocks > INT32_MAX || p.map.k_blocks > INT32_MAX) {
    return Status::Unsupported("q, k: too many blocks for the CUDA backend's int32 block indices");
  }
  return Status::Ok();
}

Status current_device_capability(int* major, int* minor) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (e != cudaSuccess) {
    cudaGetLastError();  // do not leave a sticky-looking error for the next launch check
    return device_error("cudaDeviceGetAttribute(compute capability)", e);
  }
  return Status::Ok();
}

std::string current_device_name() {
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    cudaGetLastError();
    return "the current CUDA device";
  }
  return prop.name;
}

// Checked before any launch: without it a GPU this build has no code for (a Blackwell card, or an A100 with a
// 90a-only build) fails at the first kernel with "no kernel image". The name is queried on the error path only.
Status check_device_runs_build() {
  int major = 0, minor = 0;
  SLA_RETURN_IF_ERROR(current_device_capability(&major, &minor));
  if (!cuda_archs_run_on(SLA_CUDA_ARCHS_STRING, major, minor)) {
    const bool kernels_exist = major == 8 || (major == 9 && minor == 0);
    return Status::Unsupported(
        "this build of SLA has no CUDA kernels for " + current_device_name() + " (compute capability " +
        std::to_string(major) + "." + std::to_string(minor) + "); it was built for " + SLA_CUDA_ARCHS_STRING +
        (kernels_exist ? ". Rebuild with SLA_CUDA_ARCHS=\"80;90a\" (80: 8.x GPUs, 90a: H100/H200)"
                       : ". SLA's kernels exist for compute capability 8.x (sm_80) and 9.0 (sm_90a) only: use the "
                         "CPU backend on this machine"));
  }
  return Status::Ok();
}

cudaStream_t stream_of(const Exec& exec) { return static_cast<cudaStream_t>(exec.stream); }

// Kernels run on the current device: a tensor on another device would be read through the wrong address space.
Status check_on_current_device(const char* name, const TensorView& t) {
  if (!t.present()) return Status::Ok();
  int dev = 0;
  const cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return device_error("cudaGetDevice", e);
  }
  if (t.device_index != dev) {
    return Status::Unsupported(std::string(name) + ": tensor is on cuda:" + std::to_string(t.device_index) +
                               " but the current CUDA device is cuda:" + std::to_string(dev) +
                               " (call cudaSetDevice / use a device guard first)");
  }
  return Status::Ok();
}

// Heads per chunk of the forward (head_chunks.h): the linear-state scratch of one chunk within its budget.
int64_t forward_heads_per_chunk(const Problem& p, const Config& cfg) {
  return heads_per_chunk(p, cfg, kForwardChunkBudget, [&](const Problem& one) {
    const LinearStatePlan plan = plan_linear_state(one, cfg);
    const std::size_t ops = linear_ops_share_state(one, cfg)
                                ? 0
                                : static_cast<std::size_t>(one.heads * plan.operand_blocks * plan.layout.bytes());
    return linear_state_workspace_bytes(one, cfg) + ops;
  });
}

// The problem whose workspace the forward's linear stages carve: one chunk of heads (complement) or all of p.
Problem forward_piece(const Problem& p, const Config& cfg) {
  return cfg.variant == Variant::complement ? chunk_problem(p, forward_heads_per_chunk(p, cfg)) : p;
}

// Forward workspace: the block-map check (all heads), the linear-state scratch, then the epilogue operands (or
// inside the scratch: linear_ops_share_state), both for one piece (forward_piece).
struct ForwardWorkspace {
  CheckedMap map;
  unsigned char* lin_ops = nullptr;
  void* state = nullptr;
};

ForwardWorkspace carve_forward(const Problem& p, const Config& cfg, WorkspaceCarver& ws) {
  const Problem piece = forward_piece(p, cfg);
  const LinearStatePlan plan = plan_linear_state(piece, cfg);
  ForwardWorkspace f;
  f.map = carve_map_check(p, /*rebuild_inverse=*/false, ws);
  f.state = ws.take<unsigned char>(linear_state_workspace_bytes(piece, cfg));
  f.lin_ops = linear_ops_share_state(piece, cfg)
                  ? static_cast<unsigned char*>(f.state)
                  : ws.take<unsigned char>(static_cast<std::size_t>(piece.batch * piece.heads * plan.operand_blocks *
                                                                    plan.layout.bytes()));
  return f;
}

}  // namespace

bool device_present() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

std::string build_info() {
  return std::string("archs ") + SLA_CUDA_ARCHS_STRING + "; head dims " + built_list(true) + "; dtypes " +
         built_list(false);
}

Status check_supported(const Problem& p, const Config& cfg) {
  if (!dtype_built(p.dtype)) {
    return Status::Unsupported(std::string("q: dtype ") + dtype_name(p.dtype) +
                               " is not supported by the CUDA backend (built: " + built_list(false) + ")");
  }
  if (p.d != 0 && !head_dim_built(p.d)) {
    return Status::Unsupported("q: head dim " + std::to_string(p.d) + " is not built for the CUDA backend (built: " +
                               built_list(true) + "; see SLA_CUDA_HEAD_DIMS)");
  }
  if (p.dv != 0 && p.dv != p.d) {
    return Status::Unsupported("v: the CUDA backend needs Dv == D, got Dv = " + std::to_string(p.dv) +
                               " and D = " + std::to_string(p.d));
  }
  if ((cfg.block_q != 64 && cfg.block_q != 128) || (cfg.block_k != 64 && cfg.block_k != 128)) {
    return Status::Unsupported("cfg.block_q, cfg.block_k: the CUDA backend supports 64 or 128, got " +
                               std::to_string(cfg.block_q) + " and " + std::to_string(cfg.block_k));
  }
  SLA_RETURN_IF_ERROR(check_int_sizes(p));
  return check_device_runs_build();
}

std::size_t predict_block_map_workspace(const Problem& p, const Config& cfg) {
  return block_map_workspace_bytes(p, cfg);
}

Status predict_block_map(const Problem& p, const TensorView& q, const TensorView& k, const Config& cfg,
                         const BlockMap& map, const Exec& exec) {
  SLA_RETURN_IF_ERROR(check_on_current_device("q", q));
  SLA_RETURN_IF_ERROR(check_rows_aligned("q", q));
  SLA_RETURN_IF_ERROR(check_rows_aligned("k", k));
  return launch_predict_block_map(p, q, k, cfg, map, exec.workspace, stream_of(exec));
}

Status invert_block_map(const Problem& p, const BlockMap& map, const Exec& exec) {
  SLA_RETURN_IF_ERROR(check_device_runs_build());
  SLA_RETURN_IF_ERROR(check_on_current_device("map.lut", map.lut));
  return launch_invert_block_map(p, map, stream_of(exec));
}

std::size_t forward_workspace(const Problem& p, const Config& cfg) {
  WorkspaceCarver ws;
  carve_forward(p, cfg, ws);
  return ws.bytes();
}

namespace {

// The forward pass proper, on a map whose contents are checked (map_check.h).
Status forward_checked(const Problem& p, const ForwardArgs& args, const Config& cfg, const ForwardWorkspace& fw,
                       cudaStream_t stream);

}  // namespace

Status forward(const Problem& p, const ForwardArgs& caller_args, const Config& cfg, const Exec& exec) {
  SLA_RETURN_IF_ERROR(check_on_current_device("q", caller_args.q));
  SLA_RETURN_IF_ERROR(check_rows_aligned("q", caller_args.q));
  SLA_RETURN_IF_ERROR(check_rows_aligned("k", caller_args.k));
  SLA_RETURN_IF_ERROR(check_rows_aligned("v", caller_args.v));
  SLA_RETURN_IF_ERROR(check_rows_aligned("o", caller_args.o));
  const cudaStream_t stream = stream_of(exec);
  WorkspaceCarver ws(exec.workspace);
  ForwardWorkspace fw = carve_forward(p, cfg, ws);
  // A caller's map is arbitrary data: checked on the device first; the kernels then read only checked counts, and
  // every output of a head whose map breaks a rule becomes NaN afterwards.
  SLA_RETURN_IF_ERROR(launch_map_check(p, caller_args.map, &fw.map, stream));
  ForwardArgs args = caller_args;
  args.map = fw.map.map;
  if (cfg.variant == Variant::complement) {
    SLA_RETURN_IF_ERROR(
        for_each_chunk(p, forward_heads_per_chunk(p, cfg), [&](int64_t b, int64_t h0, int64_t nh, int64_t) {
          return forward_checked(chunk_problem(p, nh), slice_heads(args, b, h0, nh), cfg, fw, stream);
        }));
  } else {
    SLA_RETURN_IF_ERROR(forward_checked(p, args, cfg, fw, stream));
  }
  for (const TensorView* t : {&args.o, &args.lse, &args.o_lin, &args.lin_h, &args.lin_z}) {
    SLA_RETURN_IF_ERROR(launch_poison_heads(fw.map, *t, stream));
  }
  return Status::Ok();
}

namespace {

Status forward_checked(const Problem& p, const ForwardArgs& args, const Config& cfg, const ForwardWorkspace& fw,
                       cudaStream_t stream) {
  const LinearStatePlan plan = plan_linear_state(p, cfg);

  const bool need_linear = args.proj_weight.present() || args.o_lin.present() || args.lin_h.present();
  if (need_linear) {
    SLA_RETURN_IF_ERROR(launch_linear_state(p, args, cfg, fw.lin_ops, fw.state, stream));
  }

  ForwardParams fp;
  fp.q = rows_params(args.q);
  fp.k = rows_params(args.k);
  fp.v = rows_params(args.v);
  fp.o = rows_params(args.o);
  fp.o_sparse = static_cast<float*>(args.o_sparse.data);
  fp.lut = static_cast<const int32_t*>(args.map.lut.data);
  fp.lut_count = static_cast<const int32_t*>(args.map.count.data);
  fp.lut_capacity = static_cast<int>(args.map.lut.shape[3]);
  fp.lse = static_cast<float*>(args.lse.data);
  fp.o_lin = static_cast<float*>(args.o_lin.data);
  fp.lin_ops = fw.lin_ops;
  fp.lin_ops_head_stride = plan.layout.bytes() * plan.operand_blocks;
  fp.lin_ops_qblock_stride = cfg.variant == Variant::complement ? plan.layout.bytes() : 0;
  fp.bias = static_cast<const float*>(args.proj_bias.data);
  fp.batch = p.batch;
  fp.heads = p.heads;
  fp.lq = p.lq;
  fp.lk = p.lk;
  fp.nq = static_cast<int>(p.map.q_blocks);
  fp.nk = static_cast<int>(p.map.k_blocks);
  fp.d = static_cast<int>(p.d);
  fp.dv = static_cast<int>(p.dv);
  fp.scale_log2 = static_cast<float>(p.scale * 1.4426950408889634);
  fp.eps = cfg.variant == Variant::complement ? 0.f : static_cast<float>(cfg.eps);
  fp.feature_map = static_cast<int>(cfg.feature_map);
  fp.has_weight = args.proj_weight.present();
  fp.complement = cfg.variant == Variant::complement;

  const int bq = cfg.block_q, bk = cfg.block_k;
  return SLA_CUDA_DTYPE_SWITCH(p.dtype, Elem, "forward", [&] {
    return SLA_CUDA_HEADDIM_SWITCH(p.d, kHeadDim, "forward", [&] {
      return fwd::launch_forward_main<Elem, kHeadDim>(fp, bq, bk, stream);
    });
  });
}

}  // namespace

namespace {

int64_t backward_heads_per_chunk(const Problem& p, const Config& cfg) {
  return heads_per_chunk(p, cfg, kBackwardChunkBudget, [&](const Problem& one) {
    return bwd::workspace_bytes(one, cfg);
  });
}

// Backward workspace after the map check: the backward kernels' scratch for one chunk of heads, then, when the call
// runs in chunks, each chunk's dW and db (summed over the chunks in order at the end).
struct BackwardPieces {
  int64_t per_chunk = 0;
  bool chunked = false;
  std::size_t kernel_bytes = 0;
  float* dw_slots = nullptr;  // (chunks, Dv, Dv)
  float* db_slots = nullptr;  // (chunks, Dv)
};

BackwardPieces carve_backward(const Problem& p, const Config& cfg, WorkspaceCarver& ws) {
  BackwardPieces b;
  b.per_chunk = cfg.variant == Variant::complement ? backward_heads_per_chunk(p, cfg) : p.heads;
  b.chunked = cfg.variant == Variant::complement && chunked(p, b.per_chunk);
  const Problem piece = b.chunked ? chunk_problem(p, b.per_chunk) : p;
  b.kernel_bytes = bwd::workspace_bytes(piece, cfg);
  ws.take<unsigned char>(b.kernel_bytes);
  if (b.chunked) {
    const std::size_t chunks = static_cast<std::size_t>(chunk_count(p, b.per_chunk));
    b.dw_slots = ws.take<float>(chunks * p.dv * p.dv);
    b.db_slots = ws.take<float>(chunks * p.dv);
  }
  return b;
}

}  // namespace

// Backward workspace: the block-map check (with the rebuilt inverse tables) first, then the backward's own.
std::size_t backward_workspace(const Problem& p, const Config& cfg) {
  WorkspaceCarver ws;
  carve_map_check(p, /*rebuild_inverse=*/true, ws);
  carve_backward(p, cfg, ws);
  return ws.bytes();
}

Status backward(const Problem& p, const BackwardArgs& caller_args, const Config& cfg, const Exec& exec) {
  const BackwardArgs& args = caller_args;
  SLA_RETURN_IF_ERROR(check_on_current_device("q", args.q));
  SLA_RETURN_IF_ERROR(check_rows_aligned("q", args.q));
  SLA_RETURN_IF_ERROR(check_rows_aligned("k", args.k));
  SLA_RETURN_IF_ERROR(check_rows_aligned("v", args.v));
  SLA_RETURN_IF_ERROR(check_rows_aligned("o", args.o));
  SLA_RETURN_IF_ERROR(check_rows_aligned("d_o", args.d_o));
  SLA_RETURN_IF_ERROR(check_rows_aligned("dq", args.dq));
  SLA_RETURN_IF_ERROR(check_rows_aligned("dk", args.dk));
  SLA_RETURN_IF_ERROR(check_rows_aligned("dv", args.dv));
  // As in forward: check the caller's map on the device; the inverse tables are rebuilt from the checked LUT (the
  // caller's are never read), so no table can send a kernel out of bounds; a bad head's gradients become NaN.
  const cudaStream_t stream = stream_of(exec);
  WorkspaceCarver ws(exec.workspace);
  CheckedMap checked = carve_map_check(p, /*rebuild_inverse=*/true, ws);
  const std::size_t check_bytes = ws.bytes();
  const BackwardPieces pieces = carve_backward(p, cfg, ws);
  SLA_RETURN_IF_ERROR(launch_map_check(p, caller_args.map, &checked, stream));
  BackwardArgs checked_args = caller_args;
  checked_args.map = checked.map;
  Exec rest = exec;
  rest.workspace = static_cast<unsigned char*>(exec.workspace) + check_bytes;
  rest.workspace_bytes = pieces.kernel_bytes;
  if (!pieces.chunked) {
    SLA_RETURN_IF_ERROR(bwd::launch_backward(p, checked_args, cfg, rest));
  } else {
    const int64_t dv = p.dv, chunks = chunk_count(p, pieces.per_chunk);
    SLA_RETURN_IF_ERROR(for_each_chunk(p, pieces.per_chunk, [&](int64_t b, int64_t h0, int64_t nh, int64_t c) {
      BackwardArgs a = slice_heads(checked_args, b, h0, nh);
      if (a.d_proj_weight.present())
        a.d_proj_weight =
            make_view(pieces.dw_slots + c * dv * dv, DType::f32, {dv, dv}, Device::cuda, a.d_proj_weight.device_index);
      if (a.d_proj_bias.present())
        a.d_proj_bias = make_view(pieces.db_slots + c * dv, DType::f32, {dv}, Device::cuda, a.d_proj_bias.device_index);
      return bwd::launch_backward(chunk_problem(p, nh), a, cfg, rest);
    }));
    if (checked_args.d_proj_weight.present()) {
      SLA_RETURN_IF_ERROR(bwd::launch_sum_partials(pieces.dw_slots,
                                                   static_cast<float*>(checked_args.d_proj_weight.data), 1,
                                                   static_cast<int>(chunks), dv * dv, stream));
    }
    if (checked_args.d_proj_bias.present()) {
      SLA_RETURN_IF_ERROR(bwd::launch_sum_partials(pieces.db_slots, static_cast<float*>(checked_args.d_proj_bias.data),
                                                   1, static_cast<int>(chunks), dv, stream));
    }
  }
  for (const TensorView* t : {&checked_args.dq, &checked_args.dk, &checked_args.dv}) {
    SLA_RETURN_IF_ERROR(launch_poison_heads(checked, *t, stream));
  }
  SLA_RETURN_IF_ERROR(launch_poison_if_any(checked, checked_args.d_proj_weight, stream));
  return launch_poison_if_any(checked, checked_args.d_proj_bias, stream);
}

}  // namespace sla::cuda
