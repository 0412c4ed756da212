// See calibration_file.h.
#include "workload/calibration_file.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli_error.h"

namespace sla_cli {

namespace {

constexpr const char* kFormat = "sla-calibration";
// A calibration file holds a few numbers per head and layer; anything far larger is not one.
constexpr std::uintmax_t kMaxFileBytes = 64u << 20;

Json number(double x) { return std::isfinite(x) ? Json(x) : Json(nullptr); }  // JSON has no NaN or Inf

// The member `key` of an object, or nullptr (also when `v` is not an object).
const Json* member(const Json& v, const char* key) {
  if (!v.is_object()) return nullptr;
  const auto it = v.find(key);
  return it != v.end() ? &*it : nullptr;
}

Json settings_json(const LayerCalibration& cal, const CalibrationSettings& s) {
  Json o = Json::object();
  o["target"] = s.target;
  o["quality"] = number(s.quality);
  o["rule"] = s.rule;
  o["budget"] = s.budget > 0 ? number(s.budget) : Json(nullptr);
  o["budget_bound"] = cal.budget_bound;
  o["block_q"] = cal.config.block_q;
  o["block_k"] = cal.config.block_k;
  o["rows_per_head"] = s.rows;
  o["average_density"] = number(cal.mean_density);
  o["tool"] = "sla calibrate";
  return o;
}

Json layer_json(const LayerCalibration& cal, const AttentionProblem& p) {
  Json rule = Json::object();
  Json params = Json::array();
  for (const HeadCalibration& h : cal.heads) params.push_back(number(h.param));
  rule[cal.family == "topk" ? "topk" : "top_p"] = params;
  if (cal.family == "top_p") {
    rule["min_blocks"] = 1;
    rule["max_blocks"] = nullptr;
  }
  Json shape = Json::object();
  shape["heads"] = p.heads;
  shape["lq"] = p.lq;
  shape["lk"] = p.lk;
  shape["d"] = p.dim;
  shape["q_blocks"] = cal.q_blocks;
  shape["k_blocks"] = cal.k_blocks;
  shape["passes"] = 1;
  shape["batch"] = p.batch;
  shape["scale"] = number(p.scale);
  Json heads = Json::array();
  for (const HeadCalibration& h : cal.heads) {
    Json e = Json::object();
    e["param"] = number(h.param);
    e["density"] = number(h.density);
    e["mass"] = number(h.mass);
    e["error"] = number(h.error);
    e["met"] = h.met;
    heads.push_back(e);
  }
  Json o = Json::object();
  o["rule"] = rule;
  o["family"] = cal.family;
  o["shape"] = shape;
  o["heads"] = heads;
  o["mean_density"] = number(cal.mean_density);
  return o;
}

// Python's average_density: the mean over every head of every layer of its density, weighted by the layer's
// Nq * Nk. Layers without the statistics (not written by a calibration) do not count.
double average_density(const Json& layers, double fallback) {
  double weighted = 0, weights = 0;
  for (const Json& layer : layers) {
    const Json* shape = member(layer, "shape");
    const Json* heads = member(layer, "heads");
    const Json* nq = shape != nullptr ? member(*shape, "q_blocks") : nullptr;
    const Json* nk = shape != nullptr ? member(*shape, "k_blocks") : nullptr;
    if (nq == nullptr || nk == nullptr || heads == nullptr || !nq->is_number() || !nk->is_number() ||
        !heads->is_array()) {
      continue;
    }
    const double w = nq->get<double>() * nk->get<double>();
    for (const Json& h : *heads) {
      const Json* d = member(h, "density");
      if (d == nullptr || !d->is_number()) continue;
      weighted += w * d->get<double>();
      weights += w;
    }
  }
  return weights > 0 ? weighted / weights : fallback;
}

std::string text_of(const Json& v) {
  if (v.is_string()) return "'" + v.get<std::string>() + "'";
  return v.is_structured() ? "a structure" : v.dump();
}

}  // namespace

Json read_calibration_file(const std::string& path, const std::string& what) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) return Json();
  if (!fs::is_regular_file(path, ec)) throw RunError(what + ": is not a regular file");
  const std::uintmax_t size = fs::file_size(path, ec);
  if (ec || size > kMaxFileBytes) {
    throw RunError(what + ": holds " + std::to_string(size) +
                   " bytes, more than a calibration file; refusing to replace it (choose another --out)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw RunError(what + ": cannot open for reading: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  Json doc = parse_json(text.str(), what);
  const Json* format = member(doc, "format");
  const Json* version = member(doc, "version");
  const Json* layers = member(doc, "layers");
  if (format == nullptr || *format != kFormat) {
    throw RunError(what + ": is not a calibration file (no \"format\": \"sla-calibration\"); refusing to replace it " +
                   "(choose another --out, or remove the file)");
  }
  if (version == nullptr || !version->is_number() || version->get<double>() != 1.0) {
    throw RunError(what + ": is a calibration file of version " + (version ? text_of(*version) : "none") +
                   "; expected version 1");
  }
  if (layers == nullptr || !layers->is_object()) {
    throw RunError(what + ": its \"layers\" is not an object of layer name -> rule");
  }
  return doc;
}

void check_same_settings(const Json& file, const CalibrationSettings& s, int block_q, int block_k,
                         const std::string& what) {
  const Json* settings = member(file, "settings");
  const Json* layers = member(file, "layers");
  if (settings == nullptr || layers == nullptr || layers->empty()) return;
  struct Key {
    const char* key;
    const char* flag;
    Json value;
  };
  const Key keys[] = {
      {"target", "--target", s.target},   {"quality", "--quality", number(s.quality)},
      {"rule", "--rule", s.rule},         {"budget", "--budget", s.budget > 0 ? number(s.budget) : Json(nullptr)},
      {"block_q", "--block-q", block_q},  {"block_k", "--block-k", block_k},
      {"rows_per_head", "--rows", s.rows}};
  for (const Key& k : keys) {
    const Json* theirs = member(*settings, k.key);
    // nlohmann compares an integer and a double by value (a file may hold 1 where this run has 1.0).
    if (theirs == nullptr || *theirs == k.value) continue;
    throw UsageError(std::string(k.flag) + " " + text_of(k.value) + ": " + what + " holds layers calibrated with " +
                     k.key + " " + text_of(*theirs) +
                     "; the file's settings describe every layer, so expected the same value (or another --out)");
  }
}

Json with_layer(Json file, const LayerCalibration& cal, const AttentionProblem& p, const CalibrationSettings& s,
                const std::string& layer) {
  Json out = file.is_object() ? std::move(file) : Json::object();
  const Json* old_layers = member(out, "layers");
  const Json* old_settings = member(out, "settings");
  Json layers = old_layers != nullptr && old_layers->is_object() ? *old_layers : Json::object();
  layers[layer] = layer_json(cal, p);
  Json settings = settings_json(cal, s);
  // A budget that bound an earlier layer still describes the file.
  const Json* bound = old_settings != nullptr ? member(*old_settings, "budget_bound") : nullptr;
  if (bound != nullptr && *bound == true && old_layers != nullptr &&
      !(old_layers->size() == 1 && old_layers->contains(layer))) {
    settings["budget_bound"] = true;
  }
  settings["average_density"] = number(average_density(layers, cal.mean_density));
  if (old_settings != nullptr && old_settings->is_object()) {
    // Keep what another writer (python's sla.calibrate: p_grid, seed, ...) recorded; this run's values win.
    Json merged = *old_settings;
    for (const auto& [key, value] : settings.items()) merged[key] = value;
    settings = std::move(merged);
  }
  // Members already there keep their place; the pointers into `out` are not used from here on.
  out["format"] = kFormat;
  out["version"] = 1;
  out["settings"] = std::move(settings);
  out["layers"] = std::move(layers);
  return out;
}

std::string calibration_json(const LayerCalibration& cal, const AttentionProblem& p, const CalibrationSettings& s,
                             const std::string& layer) {
  return write_json(with_layer(Json(), cal, p, s, layer));
}

}  // namespace sla_cli
