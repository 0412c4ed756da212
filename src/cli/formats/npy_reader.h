// NumPy .npy arrays (format versions 1-3) and the captured Q/K/V files of `sla demo --qkv`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sla/types.h"

namespace sla_cli {

struct NpyArray {
  sla::DType dtype = sla::DType::f32;  // f16, f32 or f64 (little-endian)
  std::vector<int64_t> shape;
  std::vector<unsigned char> data;  // C order, numel * itemsize bytes
  int64_t numel() const;
};

// Parses a whole .npy file held in memory. Throws RunError naming `source` and what is wrong: the magic, the
// header dict, a dtype other than <f2/<f4/<f8, fortran_order True, a bad shape, or too little data.
NpyArray parse_npy(const std::vector<unsigned char>& bytes, const std::string& source);

// Q, K, V as (B, H, L, D) float arrays.
struct QkvTensors {
  int64_t batch = 0, heads = 0, lq = 0, lk = 0, dim = 0, dv = 0;
  std::vector<float> q, k, v;
  sla::DType source_dtype = sla::DType::f32;
};

// Reads a .npy holding (3,B,H,L,D) or (3,H,L,D), or a .npz holding arrays q, k, v of shape (B,H,L,D) or (H,L,D)
// (stored or deflated). The format is recognised by the file's first bytes, not its name.
QkvTensors load_qkv(const std::string& path);

}  // namespace sla_cli
