// The calibration file (JSON, format "sla-calibration" version 1) that python's sla.load_rules / sla.apply_rules
// read: file-wide settings and one entry per layer. `sla calibrate` runs once per layer, so it adds its layer to an
// existing file (replacing a layer of the same name) and keeps every other layer as it was.
#pragma once

#include <string>

#include "formats/json_text.h"
#include "workload/rule_calibration.h"

namespace sla_cli {

// The file at `path` to add a layer to: an empty document when there is no file. Throws RunError naming `what`
// (e.g. "--out rules.json") when the file is not valid JSON or not a calibration file: a file that is something
// else is never replaced.
Json read_calibration_file(const std::string& path, const std::string& what);

// Throws UsageError when `file` holds layers calibrated with other settings than `settings` and `block_q/block_k`
// (the file's settings describe every layer): the message names the flag, the file's value and this run's.
void check_same_settings(const Json& file, const CalibrationSettings& settings, int block_q, int block_k,
                         const std::string& what);

// `file` (empty, or from read_calibration_file) with the layer `layer` set to `cal` (added, or replaced where it
// is), the file-wide settings of this run and the average density over all layers (weighted by Nq * Nk per head,
// as python's sla.calibrate computes it).
Json with_layer(Json file, const LayerCalibration& cal, const AttentionProblem& problem,
                const CalibrationSettings& settings, const std::string& layer);

// The text of a new file holding the one layer.
std::string calibration_json(const LayerCalibration& cal, const AttentionProblem& problem,
                             const CalibrationSettings& settings, const std::string& layer);

}  // namespace sla_cli
