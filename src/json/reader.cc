// Strict RFC 8259 reader producing json::Value. See value.h for the contract.
//
// Recursive descent over the input bytes; the depth limit is checked before
// each recursion so hostile nesting fails fast with kJsonTooDeep. Error details
// carry the byte offset and never echo string values (they may be PHI); key
// names are echoed sanitized and truncated.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "common/error.h"
#include "json/utf8.h"
#include "json/value.h"

namespace fhirward::json {
namespace {

// Regardless of Limits::max_depth, nesting beyond this is refused: reading,
// writing, comparing and destroying a Value all recurse once per level.
constexpr size_t kHardMaxDepth = 2048;
// Objects with at most this many members are checked for duplicates by a
// linear scan; bigger ones use a hash index.
constexpr size_t kLinearKeyScanMax = 16;
// Most bytes of a key echoed in an error detail.
constexpr size_t kMaxEchoedKeyBytes = 32;

// Bytes that can be copied verbatim inside a string: printable ASCII other
// than '"' and '\\'.
constexpr bool IsPlainStringByte(unsigned char c) {
  return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}
struct PlainTable {
  bool v[256];
  constexpr PlainTable() : v() {
    for (int i = 0; i < 256; ++i) v[i] = IsPlainStringByte(static_cast<unsigned char>(i));
  }
};
constexpr PlainTable kPlain;

constexpr bool IsWs(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
constexpr bool IsDigit(char c) { return c >= '0' && c <= '9'; }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A key made safe for an error detail: printable ASCII only, truncated.
std::string EchoKey(std::string_view key) {
  std::string out = "\"";
  const size_t n = std::min(key.size(), kMaxEchoedKeyBytes);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(key[i]);
    out.push_back(c >= 0x20 && c < 0x7F && c != '"' && c != '\\' ? static_cast<char>(c) : '?');
  }
  out += key.size() > n ? "...\"" : "\"";
  return out;
}

std::string DescribeAsciiByte(unsigned char c) {
  if (c >= 0x21 && c < 0x7F) return std::string("character '") + static_cast<char>(c) + "'";
  static constexpr char kHex[] = "0123456789ABCDEF";
  return std::string("byte 0x") + kHex[c >> 4] + kHex[c & 0xF];
}

// Open-addressing index of the keys of an object under construction. Stores
// member indices, not views, because the member vector reallocates.
class KeyIndex {
 public:
  explicit KeyIndex(const Object& members) : members_(members) {
    slots_.assign(64, Slot{});
    for (size_t i = 0; i < members_.size(); ++i) Insert(i, Hash(members_[i].first));
  }

  static size_t Hash(std::string_view key) { return std::hash<std::string_view>{}(key); }

  bool Contains(std::string_view key, size_t hash) const {
    const size_t mask = slots_.size() - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
      const Slot& s = slots_[i];
      if (s.index_plus_one == 0) return false;
      if (s.hash == hash && members_[s.index_plus_one - 1].first == key) return true;
    }
  }

  void Insert(size_t index, size_t hash) {
    if ((count_ + 1) * 2 > slots_.size()) Grow();
    Place(Slot{hash, index + 1});
    ++count_;
  }

 private:
  struct Slot {
    size_t hash = 0;
    size_t index_plus_one = 0;  // 0: empty
  };

  void Place(Slot slot) {
    const size_t mask = slots_.size() - 1;
    size_t i = slot.hash & mask;
    while (slots_[i].index_plus_one != 0) i = (i + 1) & mask;
    slots_[i] = slot;
  }

  void Grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.size() * 2, Slot{});
    for (const Slot& s : old) {
      if (s.index_plus_one != 0) Place(s);
    }
  }

  const Object& members_;
  std::vector<Slot> slots_;
  size_t count_ = 0;
};

class Parser {
 public:
  Parser(std::string_view text, const Limits& limits)
      : begin_(text.data()),
        p_(text.data()),
        end_(text.data() + text.size()),
        limits_(limits),
        max_depth_(std::min(limits.max_depth, kHardMaxDepth)) {}

  absl::StatusOr<Value> Run() {
    const size_t size = static_cast<size_t>(end_ - begin_);
    if (size > limits_.max_total_bytes) {
      Fail(ErrorCode::kJsonTooLarge, 0,
           "text is " + std::to_string(size) + " bytes, more than the limit of " +
               std::to_string(limits_.max_total_bytes));
      return error_;
    }
    if (size >= 3 && std::memcmp(begin_, "\xEF\xBB\xBF", 3) == 0) {
      Fail(ErrorCode::kInvalidJson, 0, "byte order mark is not allowed");
      return error_;
    }
    Value root;
    SkipWs();
    if (!ParseValue(root, 0)) return error_;
    SkipWs();
    if (p_ != end_) {
      FailUnexpected("after the top-level value");
      return error_;
    }
    return root;
  }

 private:
  size_t Offset(const char* p) const { return static_cast<size_t>(p - begin_); }

  bool Fail(ErrorCode code, size_t offset, std::string_view msg) {
    std::string detail = "at byte " + std::to_string(offset) + ": ";
    detail.append(msg);
    error_ = Error(code, detail);
    return false;
  }

  // Reports what is at p_ where `context` did not expect it.
  bool FailUnexpected(std::string_view context) {
    std::string msg;
    if (p_ == end_) {
      msg = "unexpected end of input ";
      msg.append(context);
      return Fail(ErrorCode::kInvalidJson, Offset(p_), msg);
    }
    const auto c = static_cast<unsigned char>(*p_);
    if (c >= 0x80) {
      const auto* u = reinterpret_cast<const unsigned char*>(p_);
      if (internal::Utf8SequenceLength(u, reinterpret_cast<const unsigned char*>(end_)) == 0) {
        return Fail(ErrorCode::kInvalidUtf8, Offset(p_), "invalid UTF-8 sequence");
      }
      msg = "unexpected non-ASCII character ";
    } else {
      msg = "unexpected " + DescribeAsciiByte(c) + " ";
    }
    msg.append(context);
    return Fail(ErrorCode::kInvalidJson, Offset(p_), msg);
  }

  void SkipWs() {
    while (p_ != end_ && IsWs(*p_)) ++p_;
  }

  // Parses the value at p_ (whitespace already skipped) into `out`. `depth` is
  // the number of containers enclosing it.
  bool ParseValue(Value& out, size_t depth) {
    if (p_ == end_) return FailUnexpected("where a value was expected");
    switch (*p_) {
      case '{':
      case '[':
        if (depth >= max_depth_) {
          return Fail(ErrorCode::kJsonTooDeep, Offset(p_),
                      "nesting deeper than " + std::to_string(max_depth_) + " levels");
        }
        return *p_ == '{' ? ParseObject(out, depth + 1) : ParseArray(out, depth + 1);
      case '"': {
        std::string s;
        if (!ParseString(s, /*is_key=*/false)) return false;
        out = Value::String(std::move(s));
        return true;
      }
      case 't':
        return ParseLiteral("true", Value::Bool(true), out);
      case 'f':
        return ParseLiteral("false", Value::Bool(false), out);
      case 'n':
        return ParseLiteral("null", Value(), out);
      case '-':
      case '0':
      case '1':
      case '2':
      case '3':
      case '4':
      case '5':
      case '6':
      case '7':
      case '8':
      case '9':
        return ParseNumber(out);
      default:
        return FailUnexpected("where a value was expected");
    }
  }

  bool ParseLiteral(std::string_view word, Value value, Value& out) {
    if (static_cast<size_t>(end_ - p_) < word.size() ||
        std::memcmp(p_, word.data(), word.size()) != 0) {
      return Fail(ErrorCode::kInvalidJson, Offset(p_), "invalid literal");
    }
    p_ += word.size();
    out = std::move(value);
    return true;
  }

  bool ParseNumber(Value& out) {
    const char* start = p_;
    if (*p_ == '-') ++p_;
    if (p_ == end_ || !IsDigit(*p_)) {
      return Fail(ErrorCode::kInvalidJson, Offset(p_), "expected a digit after '-'");
    }
    if (*p_ == '0') {
      ++p_;
      if (p_ != end_ && IsDigit(*p_)) {
        return Fail(ErrorCode::kInvalidJson, Offset(start), "number has a leading zero");
      }
    } else {
      while (p_ != end_ && IsDigit(*p_)) ++p_;
    }
    if (p_ != end_ && *p_ == '.') {
      ++p_;
      if (p_ == end_ || !IsDigit(*p_)) {
        return Fail(ErrorCode::kInvalidJson, Offset(p_), "expected a digit after '.'");
      }
      while (p_ != end_ && IsDigit(*p_)) ++p_;
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == end_ || !IsDigit(*p_)) {
        return Fail(ErrorCode::kInvalidJson, Offset(p_), "expected a digit in the exponent");
      }
      while (p_ != end_ && IsDigit(*p_)) ++p_;
    }
    const size_t len = static_cast<size_t>(p_ - start);
    if (len > limits_.max_string_bytes) {
      return Fail(ErrorCode::kJsonTooLarge, Offset(start),
                  "number is longer than " + std::to_string(limits_.max_string_bytes) + " bytes");
    }
    out = Value::Number(std::string(start, len));
    return true;
  }

  bool FailStringTooLong(const char* start, bool is_key) {
    return Fail(ErrorCode::kJsonTooLarge, Offset(start),
                std::string(is_key ? "key" : "string") + " is longer than " +
                    std::to_string(limits_.max_string_bytes) + " bytes");
  }

  // Reads four hex digits at p_ into *out.
  bool ReadHex4(uint32_t* out) {
    if (end_ - p_ < 4) {
      return Fail(ErrorCode::kInvalidJson, Offset(p_), "truncated \\u escape");
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const int h = HexValue(p_[i]);
      if (h < 0)
        return Fail(ErrorCode::kInvalidJson, Offset(p_ + i), "invalid hex digit in \\u escape");
      v = (v << 4) | static_cast<uint32_t>(h);
    }
    p_ += 4;
    *out = v;
    return true;
  }

  // p_ is just past a backslash.
  bool ParseEscape(std::string& out, const char* escape_start) {
    if (p_ == end_) return FailUnexpected("in an escape sequence");
    const char c = *p_++;
    switch (c) {
      case '"':
        out.push_back('"');
        return true;
      case '\\':
        out.push_back('\\');
        return true;
      case '/':
        out.push_back('/');
        return true;
      case 'b':
        out.push_back('\b');
        return true;
      case 'f':
        out.push_back('\f');
        return true;
      case 'n':
        out.push_back('\n');
        return true;
      case 'r':
        out.push_back('\r');
        return true;
      case 't':
        out.push_back('\t');
        return true;
      case 'u': {
        uint32_t cp = 0;
        if (!ReadHex4(&cp)) return false;
        if (cp >= 0xDC00 && cp <= 0xDFFF) {
          return Fail(ErrorCode::kInvalidJson, Offset(escape_start), "lone low surrogate escape");
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') {
            return Fail(ErrorCode::kInvalidJson, Offset(escape_start),
                        "high surrogate escape not followed by a low surrogate");
          }
          p_ += 2;
          uint32_t lo = 0;
          if (!ReadHex4(&lo)) return false;
          if (lo < 0xDC00 || lo > 0xDFFF) {
            return Fail(ErrorCode::kInvalidJson, Offset(escape_start),
                        "high surrogate escape not followed by a low surrogate");
          }
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        internal::AppendUtf8(out, cp);
        return true;
      }
      default:
        --p_;
        if (static_cast<unsigned char>(c) >= 0x80) return FailUnexpected("in an escape sequence");
        return Fail(ErrorCode::kInvalidJson, Offset(escape_start),
                    "backslash followed by " + DescribeAsciiByte(static_cast<unsigned char>(c)) +
                        " is not a valid escape");
    }
  }

  // p_ is at the opening quote. Unescapes into `out`.
  bool ParseString(std::string& out, bool is_key) {
    const char* start = p_;
    ++p_;
    const char* run = p_;
    const size_t max = limits_.max_string_bytes;
    for (;;) {
      // Fast path: printable ASCII.
      while (p_ != end_ && kPlain.v[static_cast<unsigned char>(*p_)]) ++p_;
      if (p_ == end_) {
        return Fail(ErrorCode::kInvalidJson, Offset(start), "unterminated string");
      }
      const auto c = static_cast<unsigned char>(*p_);
      if (c >= 0x80) {
        const size_t len =
            internal::Utf8SequenceLength(reinterpret_cast<const unsigned char*>(p_),
                                         reinterpret_cast<const unsigned char*>(end_));
        if (len == 0) return Fail(ErrorCode::kInvalidUtf8, Offset(p_), "invalid UTF-8 sequence");
        p_ += len;
        continue;
      }
      // A quote, backslash or control character ends the verbatim run.
      const size_t run_len = static_cast<size_t>(p_ - run);
      if (out.size() + run_len > max) return FailStringTooLong(start, is_key);
      out.append(run, run_len);
      if (c == '"') {
        ++p_;
        return true;
      }
      if (c == '\\') {
        const char* escape_start = p_;
        ++p_;
        if (!ParseEscape(out, escape_start)) return false;
        if (out.size() > max) return FailStringTooLong(start, is_key);
        run = p_;
        continue;
      }
      return Fail(ErrorCode::kInvalidJson, Offset(p_),
                  "unescaped control character " + DescribeAsciiByte(c) + " in a string");
    }
  }

  bool ParseArray(Value& out, size_t depth) {
    ++p_;  // '['
    out = Value::MakeArray();
    Array& items = out.items();
    SkipWs();
    if (p_ != end_ && *p_ == ']') {
      ++p_;
      return true;
    }
    for (;;) {
      if (items.size() >= limits_.max_array_items) {
        return Fail(ErrorCode::kJsonTooLarge, Offset(p_),
                    "array has more than " + std::to_string(limits_.max_array_items) + " items");
      }
      items.emplace_back();
      if (!ParseValue(items.back(), depth)) return false;
      SkipWs();
      if (p_ == end_) return FailUnexpected("in an array (expected ',' or ']')");
      if (*p_ == ']') {
        ++p_;
        return true;
      }
      if (*p_ != ',') return FailUnexpected("in an array (expected ',' or ']')");
      ++p_;
      SkipWs();
      if (p_ != end_ && *p_ == ']') {
        return Fail(ErrorCode::kInvalidJson, Offset(p_), "trailing comma in an array");
      }
    }
  }

  bool ParseObject(Value& out, size_t depth) {
    ++p_;  // '{'
    out = Value::MakeObject();
    Object& members = out.members();
    std::unique_ptr<KeyIndex> index;  // built once the object outgrows a linear scan
    SkipWs();
    if (p_ != end_ && *p_ == '}') {
      ++p_;
      return true;
    }
    for (;;) {
      if (p_ == end_ || *p_ != '"') {
        if (p_ != end_ && *p_ == '}' && !members.empty()) {
          return Fail(ErrorCode::kInvalidJson, Offset(p_), "trailing comma in an object");
        }
        return FailUnexpected("where an object key was expected");
      }
      const char* key_start = p_;
      std::string key;
      if (!ParseString(key, /*is_key=*/true)) return false;
      bool duplicate = false;
      size_t hash = 0;
      if (members.size() < kLinearKeyScanMax) {
        for (const Member& m : members) {
          if (m.first == key) {
            duplicate = true;
            break;
          }
        }
      } else {
        if (!index) index = std::make_unique<KeyIndex>(members);
        hash = KeyIndex::Hash(key);
        duplicate = index->Contains(key, hash);
      }
      if (duplicate) {
        return Fail(ErrorCode::kDuplicateKey, Offset(key_start), "duplicate key " + EchoKey(key));
      }
      if (members.size() >= limits_.max_object_members) {
        return Fail(
            ErrorCode::kJsonTooLarge, Offset(key_start),
            "object has more than " + std::to_string(limits_.max_object_members) + " members");
      }
      SkipWs();
      if (p_ == end_ || *p_ != ':') return FailUnexpected("after an object key (expected ':')");
      ++p_;
      SkipWs();
      members.emplace_back(std::piecewise_construct, std::forward_as_tuple(std::move(key)),
                           std::forward_as_tuple());
      if (index) index->Insert(members.size() - 1, hash);
      if (!ParseValue(members.back().second, depth)) return false;
      SkipWs();
      if (p_ == end_) return FailUnexpected("in an object (expected ',' or '}')");
      if (*p_ == '}') {
        ++p_;
        return true;
      }
      if (*p_ != ',') return FailUnexpected("in an object (expected ',' or '}')");
      ++p_;
      SkipWs();
    }
  }

  const char* const begin_;
  const char* p_;
  const char* const end_;
  const Limits& limits_;
  const size_t max_depth_;
  absl::Status error_;
};

}  // namespace

absl::StatusOr<Value> Parse(std::string_view text, const Limits& limits) {
  return Parser(text, limits).Run();
}

}  // namespace fhirward::json
