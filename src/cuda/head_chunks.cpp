// head_chunks.h: views of a range of heads.
#include "cuda/head_chunks.h"

#include <cstdlib>

namespace sla::cuda {

int64_t forced_heads_per_chunk() {
  static const int64_t forced = [] {
    const char* v = std::getenv("SLA_CUDA_HEADS_PER_CHUNK");
    return v == nullptr ? int64_t{0} : static_cast<int64_t>(std::strtoll(v, nullptr, 10));
  }();
  return forced;
}

Problem chunk_problem(const Problem& p, int64_t heads) {
  Problem c = p;
  c.batch = 1;
  c.heads = heads;
  c.map.batch = 1;
  c.map.heads = heads;
  return c;
}

TensorView slice_heads(const TensorView& t, int64_t b, int64_t h0, int64_t nh) {
  if (!t.present() || t.ndim < 2) return t;
  TensorView s = t;
  s.data = static_cast<unsigned char*>(t.data) +
           (b * t.stride[0] + h0 * t.stride[1]) * static_cast<int64_t>(dtype_size(t.dtype));
  s.shape[0] = 1;
  s.shape[1] = nh;
  return s;
}

BlockMap slice_heads(const BlockMap& m, int64_t b, int64_t h0, int64_t nh) {
  BlockMap s = m;
  for (TensorView* t : {&s.lut, &s.count, &s.negl_lut, &s.negl_count, &s.inv_offset, &s.inv_index, &s.negl_inv_offset,
                        &s.negl_inv_index}) {
    *t = slice_heads(*t, b, h0, nh);
  }
  return s;
}

ForwardArgs slice_heads(const ForwardArgs& a, int64_t b, int64_t h0, int64_t nh) {
  ForwardArgs s = a;
  for (TensorView* t : {&s.q, &s.k, &s.v, &s.o, &s.lse, &s.o_lin, &s.lin_h, &s.lin_z, &s.o_sparse}) {
    *t = slice_heads(*t, b, h0, nh);
  }
  s.map = slice_heads(a.map, b, h0, nh);
  return s;
}

BackwardArgs slice_heads(const BackwardArgs& a, int64_t b, int64_t h0, int64_t nh) {
  BackwardArgs s = a;
  for (TensorView* t :
       {&s.q, &s.k, &s.v, &s.o, &s.d_o, &s.lse, &s.o_lin, &s.lin_h, &s.lin_z, &s.o_sparse, &s.dq, &s.dk, &s.dv}) {
    *t = slice_heads(*t, b, h0, nh);
  }
  s.map = slice_heads(a.map, b, h0, nh);
  return s;
}

}  // namespace sla::cuda
