// Head chunks (docs/KERNELS_NEXT.md 1.6). The complement variant keeps D x D states per key block and per query block,
// hundreds of MB per call at video lengths; its forward and backward therefore run over chunks of heads of one batch
// element, with a workspace sized for one chunk and reused, so that their scratch stays within a fixed budget
// whatever B and H are. Heads are independent; the only sums across heads (dW, db) are reduced per chunk and then
// over the chunks in order, so the results depend on the shape only. The global variant runs in one piece.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/backend.h"

namespace sla::cuda {

// Scratch budgets of one chunk (constants, so that the plan and the workspace queries depend on the shape only).
constexpr std::size_t kForwardChunkBudget = std::size_t{256} << 20;
constexpr std::size_t kBackwardChunkBudget = std::size_t{192} << 20;

// The problem of one chunk: batch 1, `heads` heads, the same lengths and map widths.
Problem chunk_problem(const Problem& p, int64_t heads);

// SLA_CUDA_HEADS_PER_CHUNK (read once; 0 or unset: the budget decides): a fixed number of heads per chunk, so that
// a test can run the chunked paths on small problems. Not a tuning knob.
int64_t forced_heads_per_chunk();

// Heads per chunk: H for the global variant; for the complement, as many as fit `budget` given the scratch of one
// head (`bytes_of(chunk_problem(p, 1))`), at least 1.
template <class BytesOf>
int64_t heads_per_chunk(const Problem& p, const Config& cfg, std::size_t budget, BytesOf&& bytes_of) {
  if (cfg.variant != Variant::complement || p.heads <= 1) return p.heads;
  if (const int64_t forced = forced_heads_per_chunk(); forced > 0) return forced < p.heads ? forced : p.heads;
  const std::size_t one = bytes_of(chunk_problem(p, 1));
  const int64_t fit = one == 0 ? p.heads : static_cast<int64_t>(budget / one);
  return fit < 1 ? 1 : (fit > p.heads ? p.heads : fit);
}

// Whether the call runs in chunks (complement with more than one chunk or batch element).
inline bool chunked(const Problem& p, int64_t per_chunk) { return per_chunk < p.heads || p.batch > 1; }

inline int64_t chunk_count(const Problem& p, int64_t per_chunk) {
  return p.batch * ((p.heads + per_chunk - 1) / per_chunk);
}

// Views of heads [h0, h0 + nh) of batch element b: a (B, H, ...) tensor becomes (1, nh, ...) at the same strides.
TensorView slice_heads(const TensorView& t, int64_t b, int64_t h0, int64_t nh);
BlockMap slice_heads(const BlockMap& m, int64_t b, int64_t h0, int64_t nh);
// Every (B, H, ...) tensor of the arguments; the projection and its gradients are left as they are.
ForwardArgs slice_heads(const ForwardArgs& a, int64_t b, int64_t h0, int64_t nh);
BackwardArgs slice_heads(const BackwardArgs& a, int64_t b, int64_t h0, int64_t nh);

// Calls f(b, h0, nh, chunk index) for every chunk in order; stops at the first error.
template <class F>
Status for_each_chunk(const Problem& p, int64_t per_chunk, F&& f) {
  int64_t c = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h0 = 0; h0 < p.heads; h0 += per_chunk, ++c) {
      const int64_t nh = p.heads - h0 < per_chunk ? p.heads - h0 : per_chunk;
      const Status st = f(b, h0, nh, c);
      if (!st.ok()) return st;
    }
  }
  return Status::Ok();
}

}  // namespace sla::cuda
