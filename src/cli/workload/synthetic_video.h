// The default workload of `sla demo`: Q, K, V of video tokens on a T x Hh x Ww latent grid (raster order, frame
// major), shaped like the attention of a video diffusion transformer. In structured heads Q and K are random
// Fourier features of the token's position, so q.k ~ a Gaussian kernel of the distance and each query attends to
// its neighbourhood:
//   local    - features of (t, y, x): a 3D neighbourhood (near the diagonal, plus the rows above/below in raster order)
//   spatial  - features of t only: the whole current frame (contiguous, a few key blocks wide)
//   temporal - features of (y, x) only: the same spatial place in every frame (strided: one spot per frame)
//   global   - unstructured random Q, K: diffuse attention that no small block set covers
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sla_cli {

struct VideoGrid {
  int64_t frames = 8, height = 16, width = 24;
  int64_t tokens() const { return frames * height * width; }
};

struct VideoWorkload {
  int64_t heads = 0, tokens = 0, dim = 0;
  std::vector<float> q, k, v;            // each (1, heads, tokens, dim), row-major
  std::vector<std::string> head_labels;  // e.g. "local", "spatial", ... per head
};

// Head h gets kind h % 4 (local, spatial, temporal, global); repeated kinds use wider neighbourhoods.
VideoWorkload make_video_workload(const VideoGrid& grid, int64_t heads, int64_t dim, uint64_t seed);

}  // namespace sla_cli
