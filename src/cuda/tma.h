// Host side of the Tensor Memory Accelerator: tensor maps of (B, H, L, D) tensors for the Hopper mainloop.
#pragma once

#include <cstdint>

#include "cuda/common/params.h"
#include "sla/types.h"

namespace sla::cuda {

// Encodes a tensor map of the b16 tensor `t` (rows of `cols` elements, `rows` rows per head, B x H heads with the
// strides of `t`) whose box is `box_rows` rows x 64 columns, 128-byte swizzled: one panel of the layout in
// cuda/common/wgmma.cuh per copy. Rows past `rows` read as zeros. Fails (unsupported) where the driver cannot
// describe the strides, e.g. a stride that is not a multiple of 16 bytes.
Status make_panel_tensor_map(TmaDescriptor* out, const RowsParams& t, int64_t batch, int64_t heads, int64_t rows,
                             int cols, int box_rows, const char* name);

}  // namespace sla::cuda
