// See calibration_file.h.
#include "workload/calibration_file.h"

#include <cerrno>
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

JsonValue number(double x) { return JsonValue::number(x); }
JsonValue integer(int64_t x) { return JsonValue::number_text(std::to_string(x)); }

JsonValue settings_json(const LayerCalibration& cal, const CalibrationSettings& s) {
  JsonValue o = JsonValue::object();
  o.set("target", JsonValue::string(s.target));
  o.set("quality", number(s.quality));
  o.set("rule", JsonValue::string(s.rule));
  o.set("budget", s.budget > 0 ? number(s.budget) : JsonValue::null_value());
  o.set("budget_bound", JsonValue::boolean_value(cal.budget_bound));
  o.set("block_q", integer(cal.config.block_q));
  o.set("block_k", integer(cal.config.block_k));
  o.set("rows_per_head", integer(s.rows));
  o.set("average_density", number(cal.mean_density));
  o.set("tool", JsonValue::string("sla calibrate"));
  return o;
}

JsonValue layer_json(const LayerCalibration& cal, const AttentionProblem& p) {
  JsonValue rule = JsonValue::object();
  JsonValue params = JsonValue::array();
  for (const HeadCalibration& h : cal.heads) params.items.push_back(number(h.param));
  rule.set(cal.family == "topk" ? "topk" : "top_p", params);
  if (cal.family == "top_p") {
    rule.set("min_blocks", integer(1));
    rule.set("max_blocks", JsonValue::null_value());
  }
  JsonValue shape = JsonValue::object();
  shape.set("heads", integer(p.heads));
  shape.set("lq", integer(p.lq));
  shape.set("lk", integer(p.lk));
  shape.set("d", integer(p.dim));
  shape.set("q_blocks", integer(cal.q_blocks));
  shape.set("k_blocks", integer(cal.k_blocks));
  shape.set("passes", integer(1));
  shape.set("batch", integer(p.batch));
  shape.set("scale", number(p.scale));
  JsonValue heads = JsonValue::array();
  for (const HeadCalibration& h : cal.heads) {
    JsonValue e = JsonValue::object();
    e.set("param", number(h.param));
    e.set("density", number(h.density));
    e.set("mass", number(h.mass));
    e.set("error", number(h.error));
    e.set("met", JsonValue::boolean_value(h.met));
    heads.items.push_back(e);
  }
  JsonValue o = JsonValue::object();
  o.set("rule", rule);
  o.set("family", JsonValue::string(cal.family));
  o.set("shape", shape);
  o.set("heads", heads);
  o.set("mean_density", number(cal.mean_density));
  return o;
}

// Python's average_density: the mean over every head of every layer of its density, weighted by the layer's
// Nq * Nk. Layers without the statistics (not written by a calibration) do not count.
double average_density(const JsonValue& layers, double fallback) {
  double weighted = 0, weights = 0;
  for (const auto& [name, layer] : layers.members) {
    const JsonValue* shape = layer.find("shape");
    const JsonValue* heads = layer.find("heads");
    const JsonValue* nq = shape != nullptr ? shape->find("q_blocks") : nullptr;
    const JsonValue* nk = shape != nullptr ? shape->find("k_blocks") : nullptr;
    if (nq == nullptr || nk == nullptr || heads == nullptr || !nq->is(JsonValue::Kind::number) ||
        !nk->is(JsonValue::Kind::number) || !heads->is(JsonValue::Kind::array)) {
      continue;
    }
    const double w = nq->as_double() * nk->as_double();
    for (const JsonValue& h : heads->items) {
      const JsonValue* d = h.find("density");
      if (d == nullptr || !d->is(JsonValue::Kind::number)) continue;
      weighted += w * d->as_double();
      weights += w;
    }
  }
  return weights > 0 ? weighted / weights : fallback;
}

std::string text_of(const JsonValue& v) {
  switch (v.kind) {
    case JsonValue::Kind::null: return "null";
    case JsonValue::Kind::boolean: return v.boolean ? "true" : "false";
    case JsonValue::Kind::number: return v.text;
    case JsonValue::Kind::string: return "'" + v.text + "'";
    default: return "a structure";
  }
}

}  // namespace

JsonValue read_calibration_file(const std::string& path, const std::string& what) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) return JsonValue();
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
  const JsonValue doc = parse_json(text.str(), what);
  const JsonValue* format = doc.find("format");
  const JsonValue* version = doc.find("version");
  const JsonValue* layers = doc.find("layers");
  if (format == nullptr || !format->is(JsonValue::Kind::string) || format->text != kFormat) {
    throw RunError(what + ": is not a calibration file (no \"format\": \"sla-calibration\"); refusing to replace it " +
                   "(choose another --out, or remove the file)");
  }
  if (version == nullptr || !version->is(JsonValue::Kind::number) || version->as_double() != 1.0) {
    throw RunError(what + ": is a calibration file of version " + (version ? text_of(*version) : "none") +
                   "; expected version 1");
  }
  if (layers == nullptr || !layers->is(JsonValue::Kind::object)) {
    throw RunError(what + ": its \"layers\" is not an object of layer name -> rule");
  }
  return doc;
}

void check_same_settings(const JsonValue& file, const CalibrationSettings& s, int block_q, int block_k,
                         const std::string& what) {
  const JsonValue* settings = file.find("settings");
  const JsonValue* layers = file.find("layers");
  if (settings == nullptr || layers == nullptr || layers->members.empty()) return;
  struct Key {
    const char* key;
    const char* flag;
    JsonValue value;
  };
  const Key keys[] = {{"target", "--target", JsonValue::string(s.target)},
                      {"quality", "--quality", number(s.quality)},
                      {"rule", "--rule", JsonValue::string(s.rule)},
                      {"budget", "--budget", s.budget > 0 ? number(s.budget) : JsonValue::null_value()},
                      {"block_q", "--block-q", integer(block_q)},
                      {"block_k", "--block-k", integer(block_k)},
                      {"rows_per_head", "--rows", integer(s.rows)}};
  for (const Key& k : keys) {
    const JsonValue* theirs = settings->find(k.key);
    if (theirs == nullptr) continue;
    const bool same = theirs->kind == k.value.kind &&
                      (theirs->is(JsonValue::Kind::number) ? theirs->as_double() == k.value.as_double()
                                                           : text_of(*theirs) == text_of(k.value));
    if (!same) {
      throw UsageError(std::string(k.flag) + " " + text_of(k.value) + ": " + what + " holds layers calibrated with " +
                       k.key + " " + text_of(*theirs) +
                       "; the file's settings describe every layer, so expected the same value (or another --out)");
    }
  }
}

JsonValue with_layer(JsonValue file, const LayerCalibration& cal, const AttentionProblem& p,
                     const CalibrationSettings& s, const std::string& layer) {
  const JsonValue* old_layers = file.find("layers");
  const JsonValue* old_settings = file.find("settings");
  JsonValue layers = old_layers != nullptr ? *old_layers : JsonValue::object();
  layers.set(layer, layer_json(cal, p));
  JsonValue settings = settings_json(cal, s);
  // A budget that bound an earlier layer still describes the file.
  const JsonValue* bound = old_settings != nullptr ? old_settings->find("budget_bound") : nullptr;
  if (bound != nullptr && bound->is(JsonValue::Kind::boolean) && bound->boolean && old_layers != nullptr &&
      !(old_layers->members.size() == 1 && old_layers->find(layer) != nullptr)) {
    settings.set("budget_bound", JsonValue::boolean_value(true));
  }
  settings.set("average_density", number(average_density(layers, cal.mean_density)));
  JsonValue out = file.is(JsonValue::Kind::object) ? std::move(file) : JsonValue::object();
  out.set("format", JsonValue::string(kFormat));
  out.set("version", integer(1));
  if (old_settings != nullptr && old_settings->is(JsonValue::Kind::object)) {
    // Keep what another writer (python's sla.calibrate: p_grid, seed, ...) recorded; this run's values win.
    JsonValue merged = *old_settings;
    for (auto& [key, value] : settings.members) merged.set(key, value);
    settings = merged;
  }
  out.set("settings", settings);
  out.set("layers", layers);
  return out;
}

std::string calibration_json(const LayerCalibration& cal, const AttentionProblem& p, const CalibrationSettings& s,
                             const std::string& layer) {
  return write_json(with_layer(JsonValue(), cal, p, s, layer));
}

}  // namespace sla_cli
