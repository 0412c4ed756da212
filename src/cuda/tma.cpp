#include "cuda/tma.h"

#include <cuda.h>
#include <cuda_runtime.h>

#include <mutex>
#include <string>

namespace sla::cuda {
namespace {

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled through the runtime's driver entry point, so that the library links no libcuda.
EncodeTiledFn encode_tiled() {
  static EncodeTiledFn fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess) {
      fn = reinterpret_cast<EncodeTiledFn>(p);
    }
  });
  return fn;
}

}  // namespace

Status make_panel_tensor_map(TmaDescriptor* out, const RowsParams& t, int64_t batch, int64_t heads, int64_t rows,
                             int cols, int box_rows, const char* name) {
  static_assert(sizeof(TmaDescriptor) == sizeof(CUtensorMap), "TmaDescriptor must hold a CUtensorMap");
  const EncodeTiledFn fn = encode_tiled();
  if (fn == nullptr) {
    return {StatusCode::device_error, "forward: the CUDA driver has no cuTensorMapEncodeTiled (driver too old)"};
  }
  // Dimensions innermost first: columns, rows, heads, batch; strides in bytes for dimensions 1..3.
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(t.row_stride) * 2, static_cast<cuuint64_t>(t.head_stride) * 2,
                                 static_cast<cuuint64_t>(t.batch_stride) * 2};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  // Only the element size matters to a copy that zero-fills: bf16 stands for fp16 too.
  const CUresult r = fn(reinterpret_cast<CUtensorMap*>(out), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, t.ptr, dims, strides,
                        box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return Status::Unsupported(std::string(name) + ": the CUDA driver cannot build a tensor map for its strides (" +
                               std::to_string(t.row_stride) + ", " + std::to_string(t.head_stride) + ", " +
                               std::to_string(t.batch_stride) + " elements), CUresult " + std::to_string(r));
  }
  return Status::Ok();
}

}  // namespace sla::cuda
