// cuBLASLt behind launch_select_gemm (select_gemm.h). One handle per device, created on first use; the algorithm of
// each shape is asked of cuBLASLt's heuristic once and cached, so that a shape always runs the same kernel (bitwise
// reruns) and repeated calls cost no host-side search. Row-major operands are passed as their column-major
// transposes: C^T = B^T A^T, so cuBLASLt's "A" is our B and its "B" our A.
#include "cuda/select/select_gemm.h"

#include <cublasLt.h>

#include <array>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "core/validate.h"
#include "cuda/common/cuda_status.h"

namespace sla::cuda {
namespace {

Status lt_error(const char* what, cublasStatus_t s) {
  return {StatusCode::device_error,
          std::string("selection GEMM (cuBLASLt): ") + what + " failed: " + cublasLtGetStatusName(s)};
}

#define SLA_LT_RETURN_IF_ERROR(what, call)         \
  do {                                             \
    const cublasStatus_t sla_lt_status_ = (call);  \
    if (sla_lt_status_ != CUBLAS_STATUS_SUCCESS) { \
      return lt_error(what, sla_lt_status_);       \
    }                                              \
  } while (0)

constexpr int kMaxDevices = 64;

// One handle per device for the life of the process (cuBLASLt handles hold no stream and no device memory).
Status handle_for(int device, cublasLtHandle_t* out) {
  static std::mutex mu;
  static std::array<cublasLtHandle_t, kMaxDevices> handles{};
  if (device < 0 || device >= kMaxDevices) {
    return Status::Unsupported("selection GEMM: device index " + std::to_string(device) + " out of range");
  }
  std::lock_guard<std::mutex> lock(mu);
  if (handles[device] == nullptr) SLA_LT_RETURN_IF_ERROR("cublasLtCreate", cublasLtCreate(&handles[device]));
  *out = handles[device];
  return Status::Ok();
}

// Descriptor owners: released on every return path.
struct OpDesc {
  cublasLtMatmulDesc_t d = nullptr;
  ~OpDesc() {
    if (d) cublasLtMatmulDescDestroy(d);
  }
};
struct LayoutDesc {
  cublasLtMatrixLayout_t d = nullptr;
  ~LayoutDesc() {
    if (d) cublasLtMatrixLayoutDestroy(d);
  }
};
struct PrefDesc {
  cublasLtMatmulPreference_t d = nullptr;
  ~PrefDesc() {
    if (d) cublasLtMatmulPreferenceDestroy(d);
  }
};

Status make_layout(LayoutDesc* l, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                   int64_t stride) {
  SLA_LT_RETURN_IF_ERROR(
      "cublasLtMatrixLayoutCreate",
      cublasLtMatrixLayoutCreate(&l->d, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  const int32_t count = static_cast<int32_t>(batch);
  SLA_LT_RETURN_IF_ERROR(
      "batch count", cublasLtMatrixLayoutSetAttribute(l->d, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  SLA_LT_RETURN_IF_ERROR(
      "batch stride",
      cublasLtMatrixLayoutSetAttribute(l->d, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  return Status::Ok();
}

// The largest power of two (<= 256) dividing the address and every batch step of an operand: cuBLASLt's heuristic
// assumes 256-byte alignment unless told otherwise.
uint32_t alignment(const void* ptr, int64_t stride_bytes, int64_t ld_bytes) {
  uint64_t bits =
      reinterpret_cast<uintptr_t>(ptr) | static_cast<uint64_t>(stride_bytes) | static_cast<uint64_t>(ld_bytes) | 256u;
  return static_cast<uint32_t>(bits & (~bits + 1));
}

using AlgoKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                           int64_t, uint32_t, uint32_t, uint32_t>;

}  // namespace

Status launch_select_gemm(const SelectGemm& g, const uint16_t* a, const uint16_t* b, float* c, void* workspace,
                          cudaStream_t stream) {
  if (g.m == 0 || g.n == 0 || g.batch == 0) return Status::Ok();
  if (g.batch > INT32_MAX)
    return Status::Unsupported("selection GEMM: batch " + std::to_string(g.batch) + " too large");
  int device = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return device_error("cudaGetDevice", e);
  cublasLtHandle_t handle = nullptr;
  SLA_RETURN_IF_ERROR(handle_for(device, &handle));

  OpDesc op;
  SLA_LT_RETURN_IF_ERROR("cublasLtMatmulDescCreate", cublasLtMatmulDescCreate(&op.d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // cuBLASLt's column-major view: (n x k) times (k x m) gives (n x m), i.e. our C^T.
  LayoutDesc la, lb, lc;
  SLA_RETURN_IF_ERROR(make_layout(&la, CUDA_R_16BF, g.n, g.k, g.ldb, g.batch, g.stride_b));
  SLA_RETURN_IF_ERROR(make_layout(&lb, CUDA_R_16BF, g.k, g.m, g.lda, g.batch, g.stride_a));
  SLA_RETURN_IF_ERROR(make_layout(&lc, CUDA_R_32F, g.n, g.m, g.ldc, g.batch, g.stride_c));

  const uint32_t align_a = alignment(b, g.stride_b * 2, g.ldb * 2);
  const uint32_t align_b = alignment(a, g.stride_a * 2, g.lda * 2);
  const uint32_t align_c = alignment(c, g.stride_c * 4, g.ldc * 4);
  const AlgoKey key{device,     g.m,        g.n,        g.k,     g.lda,   g.ldb,   g.ldc,
                    g.stride_a, g.stride_b, g.stride_c, g.batch, align_a, align_b, align_c};
  static std::mutex cache_mu;
  static std::map<AlgoKey, cublasLtMatmulAlgo_t> cache;
  cublasLtMatmulAlgo_t algo{};
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = cache.find(key);
    if (it != cache.end()) {
      algo = it->second;
    } else {
      PrefDesc pref;
      SLA_LT_RETURN_IF_ERROR("cublasLtMatmulPreferenceCreate", cublasLtMatmulPreferenceCreate(&pref.d));
      const uint64_t ws = kSelectGemmWorkspace;
      // No split-K: each output element is reduced over k inside one kernel, in an order fixed by the algorithm.
      const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_NONE;
      const std::array<std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t>, 3> aligns{
          {{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a},
           {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
           {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c}}};
      SLA_LT_RETURN_IF_ERROR(
          "workspace preference",
          cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
      SLA_LT_RETURN_IF_ERROR("reduction preference",
                             cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                                  &reduction, sizeof(reduction)));
      for (const auto& [attr, value] : aligns) {
        SLA_LT_RETURN_IF_ERROR("alignment preference",
                               cublasLtMatmulPreferenceSetAttribute(pref.d, attr, &value, sizeof(value)));
      }
      SLA_LT_RETURN_IF_ERROR("alignment preference (D)",
                             cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                                  &align_c, sizeof(align_c)));
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      SLA_LT_RETURN_IF_ERROR(
          "cublasLtMatmulAlgoGetHeuristic",
          cublasLtMatmulAlgoGetHeuristic(handle, op.d, la.d, lb.d, lc.d, lc.d, pref.d, 1, &result, &found));
      if (found == 0) {
        return Status::Unsupported("selection GEMM: cuBLASLt has no algorithm for m " + std::to_string(g.m) + ", n " +
                                   std::to_string(g.n) + ", k " + std::to_string(g.k));
      }
      algo = result.algo;
      cache.emplace(key, algo);
    }
  }
  const float alpha = 1.f, beta = 0.f;
  SLA_LT_RETURN_IF_ERROR("cublasLtMatmul", cublasLtMatmul(handle, op.d, &alpha, b, la.d, a, lb.d, &beta, c, lc.d, c,
                                                          lc.d, &algo, workspace, kSelectGemmWorkspace, stream));
  return Status::Ok();
}

}  // namespace sla::cuda
