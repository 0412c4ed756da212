// See npy_reader.h. The format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
#include "formats/npy_reader.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <utility>

#include "cli_error.h"
#include "device/memory_limits.h"
#include "device/owned_tensor.h"
#include "formats/dtype_convert.h"
#include "formats/zip_archive.h"
#include "number_text.h"

namespace sla_cli {

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

namespace {

constexpr unsigned char kNpyMagic[] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
constexpr unsigned char kZipMagic[] = {'P', 'K', 0x03, 0x04};
// Python's pickle protocol 2+ opcode, the first byte of a torch.save file written with the legacy serialisation.
constexpr unsigned char kPickleProto = 0x80;

// How to turn a torch.save file into the .npz this reader takes (docs/CAPTURE_QKV.md has the full recipe).
std::string torch_conversion_hint(const std::string& path) {
  return "convert it with: python -c \"import torch, numpy as np; d = torch.load('" + path +
         "'); np.savez('qkv.npz', **{n: d[n].float().numpy() for n in ('q', 'k', 'v')})\" and pass --qkv qkv.npz "
         "(see docs/CAPTURE_QKV.md)";
}

// A torch.save archive (the zip format of torch >= 1.6) holds <name>/data.pkl and <name>/version.
bool is_torch_archive(const ZipArchive& zip) {
  for (const std::string& n : zip.names()) {
    const std::size_t slash = n.find('/');
    if (slash != std::string::npos && n.compare(slash, std::string::npos, "/data.pkl") == 0) return true;
  }
  return false;
}

// Counts non-finite values of one (B,H,L,D) tensor and throws, naming the first, when there are any: NaN or Inf
// inputs make every number of the report NaN, which must not pass as a result.
void check_finite(const std::vector<float>& x, const std::vector<int64_t>& bhld, const std::string& name,
                  const std::string& path) {
  std::size_t bad_count = 0, first = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) {
      if (bad_count == 0) first = i;
      ++bad_count;
    }
  }
  if (bad_count == 0) return;
  int64_t idx[4];
  std::size_t rest = first;
  for (int d = 3; d >= 0; --d) {
    idx[d] = static_cast<int64_t>(rest % static_cast<std::size_t>(bhld[d]));
    rest /= static_cast<std::size_t>(bhld[d]);
  }
  throw RunError(path + ": " + name + " holds " + std::to_string(bad_count) +
                 " non-finite values (NaN or Inf), the first at [b, h, l, d] = [" + std::to_string(idx[0]) + ", " +
                 std::to_string(idx[1]) + ", " + std::to_string(idx[2]) + ", " + std::to_string(idx[3]) +
                 "]; SLA needs finite inputs (an fp16 overflow in the captured layer gives these)");
}

[[noreturn]] void bad(const std::string& source, const std::string& what) {
  throw RunError(source + ": not a usable .npy array: " + what);
}

// The value text of `'key': value` in the header dict, up to the next top-level ',' or '}'.
std::string dict_value(const std::string& header, const std::string& key, const std::string& source) {
  const std::string quoted[] = {"'" + key + "'", "\"" + key + "\""};
  std::size_t pos = std::string::npos;
  for (const std::string& q : quoted) {
    pos = header.find(q);
    if (pos != std::string::npos) {
      pos += q.size();
      break;
    }
  }
  if (pos == std::string::npos) bad(source, "header has no '" + key + "' entry: " + header);
  pos = header.find(':', pos);
  if (pos == std::string::npos) bad(source, "header entry '" + key + "' has no value");
  ++pos;
  int depth = 0;
  std::size_t end = pos;
  for (; end < header.size(); ++end) {
    const char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
  }
  std::string v = header.substr(pos, end - pos);
  const auto not_space = [](unsigned char c) {
    return !std::isspace(c);
  };
  v.erase(v.begin(), std::find_if(v.begin(), v.end(), not_space));
  v.erase(std::find_if(v.rbegin(), v.rend(), not_space).base(), v.end());
  return v;
}

sla::DType parse_descr(std::string descr, const std::string& source) {
  if (descr.size() >= 2 && (descr.front() == '\'' || descr.front() == '"')) descr = descr.substr(1, descr.size() - 2);
  if (descr == "<f2") return sla::DType::f16;
  if (descr == "<f4") return sla::DType::f32;
  if (descr == "<f8") return sla::DType::f64;
  if (descr.size() == 3 && descr[0] == '>') {
    bad(source, "dtype '" + descr + "' is big-endian; expected little-endian <f2, <f4 or <f8 (use arr.astype('<f4'))");
  }
  bad(source, "dtype '" + descr + "' is not supported; expected float16 (<f2), float32 (<f4) or float64 (<f8)");
}

std::vector<int64_t> parse_shape(const std::string& text, const std::string& source) {
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') bad(source, "shape '" + text + "' is not a tuple");
  std::vector<int64_t> shape;
  std::string item;
  const std::string inner = text.substr(1, text.size() - 2);
  for (std::size_t i = 0; i <= inner.size(); ++i) {
    if (i == inner.size() || inner[i] == ',') {
      std::string t;
      for (char c : item) {
        if (!std::isspace(static_cast<unsigned char>(c))) t += c;
      }
      if (t.empty() && i == inner.size()) break;  // trailing comma of "(3,)"
      int64_t v = 0;
      if (!parse_int64(t, &v) || v < 0) bad(source, "shape '" + text + "' has a bad dimension '" + t + "'");
      shape.push_back(v);
      item.clear();
    } else {
      item += inner[i];
    }
  }
  return shape;
}

// Why `path` cannot be read as a file, or "" when it can: the stream library reports a directory only as a failed
// read ("basic_filebuf::underflow"), so ask the file system first.
std::string unreadable_reason(const std::string& path) {
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) return "cannot open file for reading: no such file";
  if (std::filesystem::is_directory(st)) return "is a directory; expected a .npy or .npz file";
  if (!std::filesystem::is_regular_file(st)) return "is not a regular file; expected a .npy or .npz file";
  return std::string();
}

std::vector<unsigned char> read_file(const std::string& path, std::size_t limit = static_cast<std::size_t>(-1)) {
  const std::string why = unreadable_reason(path);
  if (!why.empty()) throw RunError(path + ": " + why);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw RunError(path + ": cannot open file for reading: " + std::strerror(errno));
  std::vector<unsigned char> bytes;
  if (limit == static_cast<std::size_t>(-1)) {
    const uintmax_t size = std::filesystem::file_size(path);
    const std::string shortfall = host_memory_shortfall(3.0 * static_cast<double>(size), "reading " + path);
    if (!shortfall.empty()) throw RunError(shortfall);
    bytes.resize(static_cast<std::size_t>(size));
  } else {
    bytes.resize(limit);
  }
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (in.bad()) throw RunError(path + ": read error");
  bytes.resize(static_cast<std::size_t>(in.gcount()));
  return bytes;
}

bool starts_with(const std::vector<unsigned char>& b, const unsigned char* magic, std::size_t n) {
  return b.size() >= n && std::memcmp(b.data(), magic, n) == 0;
}

std::vector<float> to_floats(const NpyArray& a, std::size_t offset_elems, std::size_t count) {
  std::vector<float> out(count);
  convert_to_float(a.data.data() + offset_elems * sla::dtype_size(a.dtype), a.dtype, out.data(), count);
  return out;
}

// (B,H,L,D) from (B,H,L,D) or (H,L,D).
std::vector<int64_t> as_bhld(const NpyArray& a, const std::string& what) {
  if (a.shape.size() == 4) return a.shape;
  if (a.shape.size() == 3) return {1, a.shape[0], a.shape[1], a.shape[2]};
  std::string s;
  for (int64_t d : a.shape) s += (s.empty() ? "" : ",") + std::to_string(d);
  throw RunError(what + ": expected shape (B,H,L,D) or (H,L,D), got (" + s + ")");
}

}  // namespace

NpyArray parse_npy(const std::vector<unsigned char>& bytes, const std::string& source) {
  if (!starts_with(bytes, kNpyMagic, sizeof kNpyMagic)) bad(source, "missing the \\x93NUMPY magic");
  if (bytes.size() < 10) bad(source, "truncated header");
  const int major = bytes[6];
  std::size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = bytes[8] | (static_cast<std::size_t>(bytes[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) bad(source, "truncated header");
    header_len = bytes[8] | (static_cast<std::size_t>(bytes[9]) << 8) | (static_cast<std::size_t>(bytes[10]) << 16) |
                 (static_cast<std::size_t>(bytes[11]) << 24);
    header_start = 12;
  } else {
    bad(source, "format version " + std::to_string(major) + " is not supported; expected 1, 2 or 3");
  }
  if (header_len > bytes.size() - header_start) bad(source, "header runs past the end of the file");
  const std::string header(reinterpret_cast<const char*>(bytes.data() + header_start), header_len);

  NpyArray a;
  a.dtype = parse_descr(dict_value(header, "descr", source), source);
  const std::string fortran = dict_value(header, "fortran_order", source);
  if (fortran == "True") bad(source, "fortran_order is True; expected a C-ordered array (use np.ascontiguousarray)");
  if (fortran != "False") bad(source, "fortran_order is '" + fortran + "'; expected False");
  a.shape = parse_shape(dict_value(header, "shape", source), source);

  const int64_t numel = checked_numel(a.shape, source);
  const std::size_t data_start = header_start + header_len;
  const std::size_t itemsize = sla::dtype_size(a.dtype);
  if (static_cast<uint64_t>(numel) > (bytes.size() - data_start) / itemsize) {
    bad(source, "the data is shorter than its shape says (" + std::to_string(numel) + " elements of " +
                    std::to_string(itemsize) + " bytes, " + std::to_string(bytes.size() - data_start) +
                    " bytes present)");
  }
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(data_start),
                bytes.begin() + static_cast<std::ptrdiff_t>(data_start + numel * itemsize));
  return a;
}

QkvTensors load_qkv(const std::string& path) {
  // The first bytes tell the format; only a .npy is read into memory whole (libzip reads .npz members itself).
  const std::vector<unsigned char> head = read_file(path, 8);
  QkvTensors t;
  if (starts_with(head, kNpyMagic, sizeof kNpyMagic)) {
    const NpyArray a = parse_npy(read_file(path), path);
    std::vector<int64_t> s = a.shape;
    if (s.size() == 4) s.insert(s.begin() + 1, 1);  // (3,H,L,D) -> (3,1,H,L,D)
    if (s.size() != 5 || s[0] != 3) {
      throw RunError(path + ": expected one array of shape (3,B,H,L,D) or (3,H,L,D) holding q, k, v; got " +
                     std::to_string(a.shape.size()) + " dimensions" +
                     (a.shape.empty() ? std::string() : " with first dimension " + std::to_string(a.shape[0])));
    }
    t.batch = s[1];
    t.heads = s[2];
    t.lq = t.lk = s[3];
    t.dim = t.dv = s[4];
    t.source_dtype = a.dtype;
    const std::size_t each = static_cast<std::size_t>(a.numel() / 3);
    t.q = to_floats(a, 0, each);
    t.k = to_floats(a, each, each);
    t.v = to_floats(a, 2 * each, each);
  } else if (starts_with(head, kZipMagic, sizeof kZipMagic)) {
    const ZipArchive zip(path);
    if (is_torch_archive(zip)) {
      throw RunError(path + ": is a PyTorch file (torch.save), not a NumPy .npz; " + torch_conversion_hint(path));
    }
    NpyArray arr[3];
    const char* names[3] = {"q", "k", "v"};
    for (int i = 0; i < 3; ++i) {
      const std::string member = std::string(names[i]) + ".npy";
      if (!zip.contains(member)) {
        throw RunError(path + ": the .npz has no array '" + names[i] +
                       "'; expected arrays q, k, v (np.savez(path, q=q, k=k, v=v))");
      }
      arr[i] = parse_npy(zip.read(member), path + ":" + names[i]);
    }
    const std::vector<int64_t> q = as_bhld(arr[0], path + ": q"), k = as_bhld(arr[1], path + ": k"),
                               v = as_bhld(arr[2], path + ": v");
    if (k[0] != q[0] || k[1] != q[1] || k[3] != q[3]) {
      throw RunError(path + ": k must match q in batch, heads and head dim");
    }
    if (v[0] != k[0] || v[1] != k[1] || v[2] != k[2]) {
      throw RunError(path + ": v must match k in batch, heads and length");
    }
    if (arr[0].dtype != arr[1].dtype || arr[0].dtype != arr[2].dtype) {
      throw RunError(path + ": q, k and v must have the same dtype");
    }
    t.batch = q[0];
    t.heads = q[1];
    t.lq = q[2];
    t.lk = k[2];
    t.dim = q[3];
    t.dv = v[3];
    t.source_dtype = arr[0].dtype;
    t.q = to_floats(arr[0], 0, static_cast<std::size_t>(arr[0].numel()));
    t.k = to_floats(arr[1], 0, static_cast<std::size_t>(arr[1].numel()));
    t.v = to_floats(arr[2], 0, static_cast<std::size_t>(arr[2].numel()));
  } else if (!head.empty() && head[0] == kPickleProto && head.size() > 1 && head[1] >= 2 && head[1] <= 5) {
    throw RunError(path + ": is a Python pickle (a torch.save file in the legacy format?), not a .npy or .npz; " +
                   torch_conversion_hint(path));
  } else {
    throw RunError(path + ": neither a .npy file (\\x93NUMPY magic) nor a .npz/zip archive (PK magic)");
  }
  if (t.batch == 0 || t.heads == 0 || t.lq == 0 || t.lk == 0 || t.dim == 0 || t.dv == 0) {
    throw RunError(path + ": q, k and v must not be empty");
  }
  check_finite(t.q, {t.batch, t.heads, t.lq, t.dim}, "q", path);
  check_finite(t.k, {t.batch, t.heads, t.lk, t.dim}, "k", path);
  check_finite(t.v, {t.batch, t.heads, t.lk, t.dv}, "v", path);
  return t;
}

}  // namespace sla_cli
