// JSON values for the calibration file: parsing (with errors that name the file, line and column) and writing.
// `sla calibrate` reads an existing --out file to add or replace one layer, so a value read and written again must
// not change: numbers keep the text they were written with, objects keep their key order.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace sla_cli {

struct JsonValue {
  enum class Kind { null, boolean, number, string, array, object };
  Kind kind = Kind::null;
  bool boolean = false;
  std::string text;              // number: as written (e.g. "0.90000000000000002"); string: the decoded UTF-8
  std::vector<JsonValue> items;  // array
  std::vector<std::pair<std::string, JsonValue>> members;  // object, in order

  static JsonValue null_value() { return JsonValue(); }
  static JsonValue number(double x);  // shortest text that reads back as x (up to 17 digits); null if not finite
  static JsonValue number_text(std::string text);
  static JsonValue string(std::string s);
  static JsonValue boolean_value(bool b);
  static JsonValue array();
  static JsonValue object();

  bool is(Kind k) const { return kind == k; }
  // The member `key` of an object, or nullptr (also when this is not an object).
  const JsonValue* find(const std::string& key) const;
  // Sets member `key`: replaced where it is, or appended.
  void set(const std::string& key, JsonValue value);
  // A number's value (strtod of its text).
  double as_double() const;
};

// Parses the whole of `text`. Throws RunError "<source>: not valid JSON: line L, column C: <what>".
JsonValue parse_json(const std::string& text, const std::string& source);

// JSON text: an array of scalars, or an object of scalars and such arrays, on one line; others one member per line,
// indented by one space per level; ends with a newline.
std::string write_json(const JsonValue& value);

}  // namespace sla_cli
