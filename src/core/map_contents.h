// The contents of a block map (docs/SPEC.md section 1.5-1.7), checked on the host: what validate.h checks for shapes,
// this checks for the int32 values. A caller-supplied LUT is arbitrary data, so every backend needs this guarantee
// before a kernel indexes K, V or Q with it:
//   - map.count[b,h,i] in [0, T]; map.negl_count[b,h,i] in [0, Tn];
//   - the first count entries of each map.lut row in [0, Nk) and distinct, in any order (docs/SPEC.md 7.7: permuting a
//     row changes O only by rounding; the block map itself writes them ascending); entries past the count are
//     unused and never read;
//   - the same for map.negl_lut, and no negligible block also critical in the same row;
//   - when present, the inverse tables exactly invert_block_map's output for their LUT (offsets, and the first
//     inv_offset[b,h,Nk] index entries; the rest are unused).
// The CPU backend runs this before every forward and backward (api.cpp). The CUDA backend runs the same checks in
// a kernel (src/cuda/map_check.cu), without a host synchronisation; sla::check_block_map runs this on host tables.
#pragma once

#include <cstdint>

#include "core/validate.h"
#include "sla/sla.h"

namespace sla {

// Which tables to check: the LUT pair (and negl_* when present) always, the inverse tables on request.
enum class MapInverse { skip, check };

// `map` has the shapes validate.cpp checked (contiguous int32 tables on the host); `k_blocks` is Nk.
// The first problem found is returned, naming the table, the row (b, h, i) or key block j, and the value.
Status check_map_contents(const BlockMap& map, int64_t k_blocks, MapInverse inverse);

}  // namespace sla
