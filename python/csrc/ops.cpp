#include "ops.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <climits>
#include <cstddef>
#include <string>
#include <utility>

#include "sla/sla.h"
#include "tensor_views.h"

namespace sla_torch {
namespace {

// The ops allocate their outputs, so they need the ranks before the library validates anything else.
void check_rank(const at::Tensor& t, int64_t rank, const char* name, const char* dims) {
  TORCH_CHECK_VALUE(t.dim() == rank, name, ": expected ", rank, " dimensions ", dims, ", got ", t.dim());
}

// q, k, v, o, grad_o: a floating-point dtype (the library's own message would also list int32, its table dtype).
void check_floating(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble, name,
                   ": expected dtype float16, bfloat16, float32 or float64, got ", s);
}

// Block-map tables: int32.
void check_int32(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, name, ": expected dtype int32 (block-map tables), got ",
                   t.scalar_type());
}

int to_block_size(int64_t block, const char* name) {
  TORCH_CHECK_VALUE(block > 0 && block <= INT_MAX, name, ": expected a block size such as 64 or 128, got ", block);
  return static_cast<int>(block);
}

// The Config fields forward and backward read; block_map adds the block-map fields (topk, negligible, the rules).
sla::Config make_config(int64_t block_q, int64_t block_k, c10::string_view variant, c10::string_view feature_map,
                        double scale, double eps) {
  sla::Config cfg;
  cfg.block_q = to_block_size(block_q, "block_q");
  cfg.block_k = to_block_size(block_k, "block_k");
  cfg.variant = parse_variant(std::string(variant));
  cfg.feature_map = parse_feature_map(std::string(feature_map));
  cfg.scale = scale;
  cfg.eps = eps;
  return cfg;
}

// The accumulation dtype of docs/SPEC.md: float64 for float64 inputs, float32 otherwise.
at::ScalarType acc_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// A (B, H, L, last) tensor laid out in memory like `like`: (B, L, H, last) memory when `like` has the head stride
// below the sequence stride, so that a (B, L, H, D) caller gets its outputs and gradients back without copies.
// python/sla/_fake.py mirrors this rule exactly.
at::Tensor empty_attention_like(const at::Tensor& like, int64_t last, at::ScalarType dtype) {
  const auto opts = like.options().dtype(dtype);
  if (like.stride(1) < like.stride(2)) {
    return at::empty({like.size(0), like.size(2), like.size(1), last}, opts).transpose(1, 2);
  }
  return at::empty({like.size(0), like.size(1), like.size(2), last}, opts);
}

at::Tensor empty_table(const at::Tensor& like, at::IntArrayRef shape) {
  return at::empty(shape, like.options().dtype(at::kInt));
}

// Owns the workspace for the duration of one library call. On CUDA the buffer comes from the caching allocator on
// the current stream, so it is safe to free (and reuse) as soon as the call has been enqueued.
struct ExecHolder {
  at::Tensor workspace;
  sla::Exec exec;

  ExecHolder(const at::Tensor& like, std::size_t bytes, void* stream) {
    exec.stream = stream;
    exec.num_threads = like.is_cpu() ? at::get_num_threads() : 0;
    if (bytes > 0) {
      workspace = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
      exec.workspace = workspace.data_ptr();
      exec.workspace_bytes = bytes;
    }
  }
};

sla::BlockMap map_views(const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                        const at::Tensor& negl_count, const at::Tensor& inv_offset, const at::Tensor& inv_index,
                        const at::Tensor& negl_inv_offset, const at::Tensor& negl_inv_index) {
  const std::pair<const at::Tensor*, const char*> tables[] = {{&lut, "lut"},
                                                              {&count, "count"},
                                                              {&negl_lut, "negl_lut"},
                                                              {&negl_count, "negl_count"},
                                                              {&inv_offset, "inv_offset"},
                                                              {&inv_index, "inv_index"},
                                                              {&negl_inv_offset, "negl_inv_offset"},
                                                              {&negl_inv_index, "negl_inv_index"}};
  for (const auto& [t, name] : tables) check_int32(*t, name);
  sla::BlockMap map;
  // lut is required: an empty one (T = 0) reaches the library, whose message names T and its range.
  map.lut = view_of(lut, "lut");
  map.count = optional_view_of(count, "count");
  map.negl_lut = optional_view_of(negl_lut, "negl_lut");
  map.negl_count = optional_view_of(negl_count, "negl_count");
  map.inv_offset = optional_view_of(inv_offset, "inv_offset");
  map.inv_index = optional_view_of(inv_index, "inv_index");
  map.negl_inv_offset = optional_view_of(negl_inv_offset, "negl_inv_offset");
  map.negl_inv_index = optional_view_of(negl_inv_index, "negl_inv_index");
  return map;
}

}  // namespace

BlockMapTensors block_map(const at::Tensor& q, const at::Tensor& k, int64_t block_q, int64_t block_k, double topk,
                          double negligible, c10::string_view variant, bool with_inverse,
                          c10::ArrayRef<double> head_topk, double top_p, c10::ArrayRef<double> head_top_p,
                          int64_t min_blocks, int64_t max_blocks, double negligible_threshold, double max_negligible,
                          double scale, void* stream) {
  check_rank(q, 4, "q", "(B, H, Lq, D)");
  check_rank(k, 4, "k", "(B, H, Lk, D)");
  check_floating(q, "q");
  check_floating(k, "k");
  sla::Config cfg = make_config(block_q, block_k, variant, "softmax", scale, 1e-5);
  cfg.topk = topk;
  cfg.negligible = negligible;
  cfg.head_topk.assign(head_topk.begin(), head_topk.end());
  cfg.head_top_p.assign(head_top_p.begin(), head_top_p.end());
  cfg.rule = (top_p != 0.0 || !head_top_p.empty()) ? sla::CriticalRule::top_p : sla::CriticalRule::topk;
  cfg.top_p = top_p;
  cfg.min_blocks = min_blocks;
  cfg.max_blocks = max_blocks;
  cfg.negligible_threshold = negligible_threshold;
  cfg.max_negligible = max_negligible;
  const at::Tensor qa = with_attention_strides(q);
  const at::Tensor ka = with_attention_strides(k);
  const sla::TensorView qv = view_of(qa, "q");
  const sla::TensorView kv = view_of(ka, "k");

  // q, k and the options first: their messages name q or k (block_map_shape would name "batch" or "lq").
  std::size_t bytes = 0;
  check_status(sla::predict_block_map_workspace_size(qv, kv, cfg, &bytes), "block_map");
  sla::BlockMapShape s;
  check_status(sla::block_map_shape(q.size(0), q.size(1), q.size(2), k.size(2), cfg, &s), "block_map");
  const int64_t B = s.batch, H = s.heads, Nq = s.q_blocks, Nk = s.k_blocks, T = s.critical, Tn = s.negligible;
  const bool has_negl = Tn > 0;

  at::Tensor lut = empty_table(q, {B, H, Nq, T});
  at::Tensor count = empty_table(q, {B, H, Nq});
  at::Tensor negl_lut = empty_table(q, {B, H, Nq, Tn});
  at::Tensor negl_count = empty_table(q, {B, H, has_negl ? Nq : 0});
  at::Tensor inv_offset = empty_table(q, {B, H, with_inverse ? Nk + 1 : 0});
  at::Tensor inv_index = empty_table(q, {B, H, with_inverse ? Nq * T : 0});
  // The negligible class's inverse tables stay empty: no backward reads them (include/sla/sla.h).
  at::Tensor negl_inv_offset = empty_table(q, {B, H, 0});
  at::Tensor negl_inv_index = empty_table(q, {B, H, 0});

  const sla::BlockMap map =
      map_views(lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index);
  ExecHolder holder(q, bytes, stream);
  check_status(sla::predict_block_map(qv, kv, cfg, map, holder.exec), "block_map");
  return {lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index};
}

InverseTensors invert_block_map(const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                                const at::Tensor& negl_count, int64_t k_blocks, void* stream) {
  check_rank(lut, 4, "lut", "(B, H, Nq, T)");
  check_rank(negl_lut, 4, "negl_lut", "(B, H, Nq, Tn)");
  TORCH_CHECK_VALUE(k_blocks >= 1, "k_blocks: expected Nk >= 1, got ", k_blocks);
  const int64_t B = lut.size(0), H = lut.size(1), Nq = lut.size(2), T = lut.size(3);

  at::Tensor inv_offset = empty_table(lut, {B, H, k_blocks + 1});
  at::Tensor inv_index = empty_table(lut, {B, H, Nq * T});
  at::Tensor negl_inv_offset = empty_table(lut, {B, H, 0});  // not built: see block_map above
  at::Tensor negl_inv_index = empty_table(lut, {B, H, 0});

  const sla::BlockMap map =
      map_views(lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index);
  ExecHolder holder(lut, 0, stream);
  check_status(sla::invert_block_map(map, holder.exec), "invert_block_map");
  return {inv_offset, inv_index, negl_inv_offset, negl_inv_index};
}

void check_block_map(const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                     const at::Tensor& negl_count, const at::Tensor& inv_offset, const at::Tensor& inv_index,
                     const at::Tensor& negl_inv_offset, const at::Tensor& negl_inv_index, int64_t k_blocks) {
  check_rank(lut, 4, "lut", "(B, H, Nq, T)");
  const sla::BlockMap map =
      map_views(lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index);
  check_status(sla::check_block_map(map, k_blocks), "check_block_map");
}

ForwardTensors forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const c10::optional<at::Tensor>& proj_weight, const c10::optional<at::Tensor>& proj_bias,
                       const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                       const at::Tensor& negl_count, const at::Tensor& inv_offset, const at::Tensor& inv_index,
                       const at::Tensor& negl_inv_offset, const at::Tensor& negl_inv_index, int64_t block_q,
                       int64_t block_k, c10::string_view variant, c10::string_view feature_map, double scale,
                       double eps, bool save_for_backward, void* stream) {
  check_rank(q, 4, "q", "(B, H, Lq, D)");
  check_rank(k, 4, "k", "(B, H, Lk, D)");
  check_rank(v, 4, "v", "(B, H, Lk, Dv)");
  check_floating(q, "q");
  check_floating(k, "k");
  check_floating(v, "v");
  const sla::Config cfg = make_config(block_q, block_k, variant, feature_map, scale, eps);
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Dv = v.size(3);
  const at::ScalarType acc = acc_dtype(q);
  const auto acc_opts = q.options().dtype(acc);

  const at::Tensor qa = with_attention_strides(q), ka = with_attention_strides(k), va = with_attention_strides(v);
  at::Tensor o = empty_attention_like(qa, Dv, q.scalar_type());
  at::Tensor lse = save_for_backward ? at::empty({B, H, Lq}, acc_opts) : at::empty({0}, acc_opts);
  // O_l only where the backward reads it (the CPU backend): the CUDA backward forms D_r and dW without it.
  const bool keep_o_lin = save_for_backward && q.device().is_cpu();
  at::Tensor o_lin = keep_o_lin ? at::empty({B, H, Lq, Dv}, acc_opts) : at::empty({0}, acc_opts);
  at::Tensor lin_h = save_for_backward ? at::empty({B, H, D, Dv}, acc_opts) : at::empty({0}, acc_opts);
  at::Tensor lin_z = save_for_backward ? at::empty({B, H, D}, acc_opts) : at::empty({0}, acc_opts);
  // O_s alone in the accumulation dtype: the backward forms Delta = dO . O_s from it (no 16-bit rounding).
  at::Tensor o_sparse = save_for_backward ? at::empty({B, H, Lq, Dv}, acc_opts) : at::empty({0}, acc_opts);

  sla::ForwardArgs args;
  args.q = view_of(qa, "q");
  args.k = view_of(ka, "k");
  args.v = view_of(va, "v");
  args.proj_weight = optional_view_of(proj_weight, "proj_weight");
  args.proj_bias = optional_view_of(proj_bias, "proj_bias");
  args.map = map_views(lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index);
  args.o = view_of(o, "o");
  if (save_for_backward) {
    args.lse = view_of(lse, "lse");
    if (keep_o_lin) args.o_lin = view_of(o_lin, "o_lin");
    args.lin_h = view_of(lin_h, "lin_h");
    args.lin_z = view_of(lin_z, "lin_z");
    args.o_sparse = view_of(o_sparse, "o_sparse");
  }
  std::size_t bytes = 0;
  check_status(sla::forward_workspace_size(args, cfg, &bytes), "forward");
  ExecHolder holder(q, bytes, stream);
  check_status(sla::forward(args, cfg, holder.exec), "forward");
  return {o, lse, o_lin, lin_h, lin_z, o_sparse};
}

BackwardTensors backward(const at::Tensor& grad_o, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const c10::optional<at::Tensor>& proj_weight, const c10::optional<at::Tensor>& proj_bias,
                         const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                         const at::Tensor& negl_count, const at::Tensor& inv_offset, const at::Tensor& inv_index,
                         const at::Tensor& negl_inv_offset, const at::Tensor& negl_inv_index, const at::Tensor& o,
                         const at::Tensor& lse, const at::Tensor& o_lin, const at::Tensor& lin_h,
                         const at::Tensor& lin_z, const at::Tensor& o_sparse, int64_t block_q, int64_t block_k,
                         c10::string_view variant, c10::string_view feature_map, double scale, double eps,
                         void* stream) {
  check_rank(grad_o, 4, "grad_o", "(B, H, Lq, Dv)");
  check_rank(q, 4, "q", "(B, H, Lq, D)");
  check_rank(k, 4, "k", "(B, H, Lk, D)");
  check_rank(v, 4, "v", "(B, H, Lk, Dv)");
  check_floating(grad_o, "grad_o");
  check_floating(q, "q");
  check_floating(k, "k");
  check_floating(v, "v");
  check_floating(o, "o");
  const sla::Config cfg = make_config(block_q, block_k, variant, feature_map, scale, eps);
  const int64_t Dv = v.size(3);
  const auto acc_opts = q.options().dtype(acc_dtype(q));
  const bool has_weight = proj_weight.has_value() && proj_weight->defined();
  const bool has_bias = proj_bias.has_value() && proj_bias->defined();

  const at::Tensor qa = with_attention_strides(q), ka = with_attention_strides(k), va = with_attention_strides(v);
  const at::Tensor oa = with_attention_strides(o), goa = with_attention_strides(grad_o);
  at::Tensor dq = empty_attention_like(qa, q.size(3), q.scalar_type());
  at::Tensor dk = empty_attention_like(ka, k.size(3), k.scalar_type());
  at::Tensor dv = empty_attention_like(va, Dv, v.scalar_type());
  at::Tensor d_weight = has_weight ? at::empty({Dv, Dv}, acc_opts) : at::empty({0}, acc_opts);
  at::Tensor d_bias = has_bias ? at::empty({Dv}, acc_opts) : at::empty({0}, acc_opts);

  sla::BackwardArgs args;
  args.q = view_of(qa, "q");
  args.k = view_of(ka, "k");
  args.v = view_of(va, "v");
  args.proj_weight = optional_view_of(proj_weight, "proj_weight");
  args.proj_bias = optional_view_of(proj_bias, "proj_bias");
  args.map = map_views(lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index);
  args.o = view_of(oa, "o");
  args.d_o = view_of(goa, "grad_o");
  args.lse = optional_view_of(lse, "lse");
  args.o_lin = optional_view_of(o_lin, "o_lin");
  args.lin_h = optional_view_of(lin_h, "lin_h");
  args.lin_z = optional_view_of(lin_z, "lin_z");
  args.o_sparse = optional_view_of(o_sparse, "o_sparse");
  args.dq = view_of(dq, "dq");
  args.dk = view_of(dk, "dk");
  args.dv = view_of(dv, "dv");
  if (has_weight) args.d_proj_weight = view_of(d_weight, "d_proj_weight");
  if (has_bias) args.d_proj_bias = view_of(d_bias, "d_proj_bias");

  std::size_t bytes = 0;
  check_status(sla::backward_workspace_size(args, cfg, &bytes), "backward");
  ExecHolder holder(q, bytes, stream);
  check_status(sla::backward(args, cfg, holder.exec), "backward");
  return {dq, dk, dv, d_weight, d_bias};
}

}  // namespace sla_torch
