// See json_value.h. The grammar is RFC 8259's; nesting is limited so that a hostile file cannot exhaust the stack.
#include "formats/json_value.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli_error.h"

namespace sla_cli {

JsonValue JsonValue::number(double x) {
  if (!std::isfinite(x)) return null_value();  // JSON has no NaN or Inf
  char buf[32];
  for (int digits = 15; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return number_text(buf);
}

JsonValue JsonValue::number_text(std::string text) {
  JsonValue v;
  v.kind = Kind::number;
  v.text = std::move(text);
  return v;
}

JsonValue JsonValue::string(std::string s) {
  JsonValue v;
  v.kind = Kind::string;
  v.text = std::move(s);
  return v;
}

JsonValue JsonValue::boolean_value(bool b) {
  JsonValue v;
  v.kind = Kind::boolean;
  v.boolean = b;
  return v;
}

JsonValue JsonValue::array() {
  JsonValue v;
  v.kind = Kind::array;
  return v;
}

JsonValue JsonValue::object() {
  JsonValue v;
  v.kind = Kind::object;
  return v;
}

const JsonValue* JsonValue::find(const std::string& key) const {
  if (kind != Kind::object) return nullptr;
  for (const auto& m : members) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

void JsonValue::set(const std::string& key, JsonValue value) {
  for (auto& m : members) {
    if (m.first == key) {
      m.second = std::move(value);
      return;
    }
  }
  members.emplace_back(key, std::move(value));
}

double JsonValue::as_double() const { return std::strtod(text.c_str(), nullptr); }

namespace {

constexpr int kMaxDepth = 64;

class Parser {
 public:
  Parser(const std::string& text, const std::string& source) : s_(text), source_(source) {}

  JsonValue document() {
    JsonValue v = value(0);
    skip_space();
    if (pos_ != s_.size()) fail("unexpected text after the value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    std::size_t line = 1, column = 1;
    for (std::size_t i = 0; i < pos_ && i < s_.size(); ++i) {
      if (s_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    throw RunError(source_ + ": not valid JSON: line " + std::to_string(line) + ", column " + std::to_string(column) +
                   ": " + what);
  }

  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  bool literal(const char* word) {
    const std::string w(word);
    if (s_.compare(pos_, w.size(), w) != 0) return false;
    pos_ += w.size();
    return true;
  }

  JsonValue value(int depth) {
    if (depth > kMaxDepth) fail("nested more than " + std::to_string(kMaxDepth) + " levels deep");
    skip_space();
    if (pos_ >= s_.size()) fail("the text ends where a value is expected");
    const char c = s_[pos_];
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    if (c == '"') return JsonValue::string(string());
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    if (literal("true")) return JsonValue::boolean_value(true);
    if (literal("false")) return JsonValue::boolean_value(false);
    if (literal("null")) return JsonValue::null_value();
    fail(std::string("unexpected character '") + c + "'");
  }

  JsonValue object(int depth) {
    JsonValue v = JsonValue::object();
    ++pos_;  // {
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return v;
    }
    for (;;) {
      skip_space();
      if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a member name in double quotes");
      std::string key = string();
      skip_space();
      if (pos_ >= s_.size() || s_[pos_] != ':') fail("expected ':' after the member name");
      ++pos_;
      if (v.find(key) != nullptr) fail("member '" + key + "' appears twice");
      v.members.emplace_back(std::move(key), value(depth + 1));
      skip_space();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return v;
      }
      fail("expected ',' or '}' in an object");
    }
  }

  JsonValue array(int depth) {
    JsonValue v = JsonValue::array();
    ++pos_;  // [
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return v;
    }
    for (;;) {
      v.items.push_back(value(depth + 1));
      skip_space();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return v;
      }
      fail("expected ',' or ']' in an array");
    }
  }

  JsonValue number() {
    const std::size_t start = pos_;
    auto digits = [&] {
      const std::size_t from = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ > from;
    };
    if (s_[pos_] == '-') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;
    } else if (!digits()) {
      fail("expected digits in a number");
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (!digits()) fail("expected digits after the decimal point");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (!digits()) fail("expected digits in the exponent");
    }
    return JsonValue::number_text(s_.substr(start, pos_ - start));
  }

  unsigned hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned u = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = s_[pos_++];
      u <<= 4;
      if (h >= '0' && h <= '9') {
        u |= static_cast<unsigned>(h - '0');
      } else if (h >= 'a' && h <= 'f') {
        u |= static_cast<unsigned>(h - 'a' + 10);
      } else if (h >= 'A' && h <= 'F') {
        u |= static_cast<unsigned>(h - 'A' + 10);
      } else {
        fail("bad hex digit in a \\u escape");
      }
    }
    return u;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string string() {
    ++pos_;  // "
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) fail("the text ends inside a string");
      const char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("a control character inside a string (escape it)");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("the text ends inside a string");
      const char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {  // a surrogate pair encodes one code point past U+FFFF
            if (!literal("\\u")) fail("a high surrogate without its low surrogate");
            const unsigned low = hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("a high surrogate without its low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            fail("a low surrogate without its high surrogate");
          }
          append_utf8(out, cp);
          break;
        }
        default: fail(std::string("unknown escape '\\") + e + "'");
      }
    }
  }

  const std::string& s_;
  const std::string& source_;
  std::size_t pos_ = 0;
};

void write_string(const std::string& s, std::string& out) {
  out += '"';
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(ch)));
      out += buf;
    } else {
      out += ch;
    }
  }
  out += '"';
}

bool is_scalar(const JsonValue& v) { return !v.is(JsonValue::Kind::array) && !v.is(JsonValue::Kind::object); }

bool all_scalar(const JsonValue& v) {
  for (const JsonValue& i : v.items) {
    if (!is_scalar(i)) return false;
  }
  for (const auto& m : v.members) {
    if (!is_scalar(m.second)) return false;
  }
  return true;
}

// Short enough for one line: no object inside, and arrays inside only of scalars ({"topk": [0.1, 0.2]}).
bool one_line(const JsonValue& v) {
  auto child_ok = [](const JsonValue& c) {
    return is_scalar(c) || (c.is(JsonValue::Kind::array) && all_scalar(c));
  };
  for (const JsonValue& i : v.items) {
    if (!is_scalar(i)) return false;
  }
  for (const auto& m : v.members) {
    if (!child_ok(m.second)) return false;
  }
  return true;
}

void write_value(const JsonValue& v, int depth, std::string& out) {
  switch (v.kind) {
    case JsonValue::Kind::null: out += "null"; return;
    case JsonValue::Kind::boolean: out += v.boolean ? "true" : "false"; return;
    case JsonValue::Kind::number: out += v.text; return;
    case JsonValue::Kind::string: write_string(v.text, out); return;
    case JsonValue::Kind::array:
    case JsonValue::Kind::object: break;
  }
  const bool obj = v.is(JsonValue::Kind::object);
  const std::size_t n = obj ? v.members.size() : v.items.size();
  const bool flat = one_line(v);
  const std::string inner = flat ? "" : "\n" + std::string(depth + 1, ' ');
  out += obj ? '{' : '[';
  for (std::size_t i = 0; i < n; ++i) {
    out += i == 0 ? inner : (flat ? ", " : "," + inner);
    if (obj) {
      write_string(v.members[i].first, out);
      out += ": ";
      write_value(v.members[i].second, depth + 1, out);
    } else {
      write_value(v.items[i], depth + 1, out);
    }
  }
  if (!flat && n > 0) out += "\n" + std::string(depth, ' ');
  out += obj ? '}' : ']';
}

}  // namespace

JsonValue parse_json(const std::string& text, const std::string& source) { return Parser(text, source).document(); }

std::string write_json(const JsonValue& value) {
  std::string out;
  write_value(value, 0, out);
  return out + "\n";
}

}  // namespace sla_cli
