// See json_text.h. nlohmann/json parses and escapes; this file adds the position of an error as line and column
// (nlohmann's parse_error gives a byte count), the checks nlohmann does not make (a member name twice, the depth),
// and the layout of the written file.
#include "formats/json_text.h"

#include <algorithm>
#include <set>
#include <sstream>
#include <vector>

#include "cli_error.h"

namespace sla_cli {

namespace {

// Copying and writing a value recurse once per level: deeper files are refused so that a hostile one cannot
// exhaust the stack. A calibration file nests 4 levels.
constexpr int kMaxDepth = 64;

// "line L, column C" of the `count`-th byte of `text` (counting from 1): the last byte a parser read when it
// stopped. 0 is the start of the text; past the end is just after its last byte.
std::string position(const std::string& text, std::size_t count) {
  const std::size_t at = std::min(count > 0 ? count - 1 : 0, text.size());
  const std::size_t newline = at > 0 ? text.rfind('\n', at - 1) : std::string::npos;
  const std::size_t line_start = newline == std::string::npos ? 0 : newline + 1;
  const auto lines = std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at), '\n');
  return "line " + std::to_string(lines + 1) + ", column " + std::to_string(at - line_start + 1);
}

// nlohmann's message without its prefix ("[json.exception.parse_error.101] parse error at line 2, column 7: "),
// whose position position() gives.
std::string reason(const std::exception& e) {
  std::string what = e.what();
  if (what.rfind("[json.exception.", 0) == 0) {
    const std::size_t end = what.find("] ");
    if (end != std::string::npos) what.erase(0, end + 2);
  }
  if (what.rfind("parse error", 0) == 0) {
    const std::size_t colon = what.find(": ");
    if (colon != std::string::npos) what.erase(0, colon + 2);
  }
  return what;
}

bool all_scalar(const Json& v) {
  return std::none_of(v.begin(), v.end(), [](const Json& c) {
    return c.is_structured();
  });
}

// Short enough for one line: no object inside, and arrays inside only of scalars ({"topk": [0.1, 0.2]}).
bool one_line(const Json& v) {
  if (v.is_array()) return all_scalar(v);
  return std::all_of(v.begin(), v.end(), [](const Json& c) {
    return !c.is_structured() || (c.is_array() && all_scalar(c));
  });
}

void write_value(const Json& v, int depth, std::string& out) {
  if (!v.is_structured()) {
    out += v.dump();  // escapes strings (UTF-8 kept), numbers as the shortest text that reads back, NaN as null
    return;
  }
  const bool flat = one_line(v);
  const std::string inner = flat ? "" : "\n" + std::string(depth + 1, ' ');
  out += v.is_object() ? '{' : '[';
  for (auto it = v.begin(); it != v.end(); ++it) {
    out += it == v.begin() ? inner : (flat ? ", " : "," + inner);
    if (v.is_object()) out += Json(it.key()).dump() + ": ";
    write_value(it.value(), depth + 1, out);
  }
  if (!flat && !v.empty()) out += "\n" + std::string(depth, ' ');
  out += v.is_object() ? '}' : ']';
}

}  // namespace

Json parse_json(const std::string& text, const std::string& source) {
  // Parsed from a stream, which nlohmann reads one byte at a time: its position is where the parser is when the
  // callback below or a number overflow stops it.
  std::istringstream in(text);
  const auto bytes_read = [&in] {
    return static_cast<std::size_t>(in.rdbuf()->pubseekoff(0, std::ios::cur, std::ios::in));
  };
  const auto fail = [&](std::size_t count, const std::string& what) {
    throw RunError(source + ": not valid JSON: " + position(text, count) + ": " + what);
  };
  std::vector<std::set<std::string>> names;  // the member names seen so far in each object being read
  const Json::parser_callback_t check = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if ((event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start) &&
        depth > kMaxDepth) {
      fail(bytes_read(), "nested more than " + std::to_string(kMaxDepth) + " levels deep");
    }
    if (event == Json::parse_event_t::object_start) names.emplace_back();
    if (event == Json::parse_event_t::object_end) names.pop_back();
    if (event == Json::parse_event_t::key && !names.back().insert(parsed.get<std::string>()).second) {
      fail(bytes_read(), "member '" + parsed.get<std::string>() + "' appears twice");
    }
    return true;
  };
  try {
    return Json::parse(in, check);
  } catch (const Json::parse_error& e) {
    fail(e.byte, reason(e));
  } catch (const Json::exception& e) {  // a number too large for a double
    fail(bytes_read(), reason(e));
  }
  return Json();  // not reached: fail() throws
}

std::string write_json(const Json& value) {
  std::string out;
  write_value(value, 0, out);
  return out + "\n";
}

bool is_utf8(const std::string& s) {
  try {
    (void)Json(s).dump();
    return true;
  } catch (const Json::type_error&) {
    return false;
  }
}

}  // namespace sla_cli
