// JSON text for the calibration file through nlohmann/json: parsing with errors that name the file, line and column,
// and writing in the file's layout. `sla calibrate` reads an existing --out file to add or replace one layer, so a
// value read and written again must not change:
// - objects keep their key order (nlohmann::ordered_json);
// - numbers keep their value: integers in [-2^63, 2^64) stay integers, other numbers are doubles, written as the
//   shortest text that reads back as the same double (nlohmann's dump: 0.90000000000000002 is written 0.9, the same
//   double; 1e-7 is written 1e-07). Integers outside 64 bits would be read as the nearest double; no field of the
//   file comes near.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace sla_cli {

using Json = nlohmann::ordered_json;

// Parses the whole of `text`. Throws RunError "<source>: not valid JSON: line L, column C: <what>" for text that is
// not JSON (RFC 8259, UTF-8, no comments), a member name that appears twice in one object (the readers would disagree
// on which one counts), or nesting deeper than 64 levels. L and C count from 1; C counts bytes.
Json parse_json(const std::string& text, const std::string& source);

// JSON text: an array of scalars, or an object of scalars and such arrays, on one line (", " and ": " between
// items); others one member per line, indented by one space per level; ends with a newline. Strings must be UTF-8.
std::string write_json(const Json& value);

// Whether `s` can be a JSON string (valid UTF-8).
bool is_utf8(const std::string& s);

}  // namespace sla_cli
