// JSON writer for json::Value. See value.h for the contract.

#include <string>
#include <string_view>

#include "json/utf8.h"
#include "json/value.h"

namespace fhirward::json {
namespace {

constexpr char kHex[] = "0123456789abcdef";

// Appends `s` as a JSON string literal. Valid UTF-8 passes through except
// U+2028/U+2029, which are escaped; bytes that are not valid UTF-8 (possible
// only in values built by hand, never in parsed ones) become U+FFFD so the
// output is always valid JSON.
void AppendString(std::string& out, std::string_view s) {
  out.push_back('"');
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* const end = p + s.size();
  const auto* run = p;
  auto flush = [&](const unsigned char* upto) {
    out.append(reinterpret_cast<const char*>(run), static_cast<size_t>(upto - run));
  };
  while (p != end) {
    const unsigned char c = *p;
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      ++p;
      continue;
    }
    if (c >= 0x80) {
      const size_t len = internal::Utf8SequenceLength(p, end);
      if (len == 0) {
        flush(p);
        out.append("\xEF\xBF\xBD");
        run = ++p;
      } else if (len == 3 && c == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) {
        flush(p);
        out.append(p[2] == 0xA8 ? "\\u2028" : "\\u2029");
        run = p += 3;
      } else {
        p += len;
      }
      continue;
    }
    flush(p);
    switch (c) {
      case '"':
        out.append("\\\"");
        break;
      case '\\':
        out.append("\\\\");
        break;
      case '\b':
        out.append("\\b");
        break;
      case '\f':
        out.append("\\f");
        break;
      case '\n':
        out.append("\\n");
        break;
      case '\r':
        out.append("\\r");
        break;
      case '\t':
        out.append("\\t");
        break;
      default: {
        const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xF]};
        out.append(esc, sizeof(esc));
      }
    }
    run = ++p;
  }
  flush(p);
  out.push_back('"');
}

class Writer {
 public:
  Writer(std::string& out, bool pretty) : out_(out), pretty_(pretty) {}

  void Write(const Value& v, size_t indent) {
    switch (v.kind()) {
      case Value::Kind::kNull:
        out_.append("null");
        return;
      case Value::Kind::kBool:
        out_.append(v.as_bool() ? "true" : "false");
        return;
      case Value::Kind::kNumber:
        out_.append(v.number_text());
        return;
      case Value::Kind::kString:
        AppendString(out_, v.as_string());
        return;
      case Value::Kind::kArray: {
        const Array& items = v.items();
        if (items.empty()) {
          out_.append("[]");
          return;
        }
        out_.push_back('[');
        bool first = true;
        for (const Value& item : items) {
          if (!first) out_.push_back(',');
          first = false;
          NewLine(indent + 1);
          Write(item, indent + 1);
        }
        NewLine(indent);
        out_.push_back(']');
        return;
      }
      case Value::Kind::kObject: {
        const Object& members = v.members();
        if (members.empty()) {
          out_.append("{}");
          return;
        }
        out_.push_back('{');
        bool first = true;
        for (const Member& m : members) {
          if (!first) out_.push_back(',');
          first = false;
          NewLine(indent + 1);
          AppendString(out_, m.first);
          out_.append(pretty_ ? ": " : ":");
          Write(m.second, indent + 1);
        }
        NewLine(indent);
        out_.push_back('}');
        return;
      }
    }
  }

 private:
  void NewLine(size_t indent) {
    if (!pretty_) return;
    out_.push_back('\n');
    out_.append(indent * 2, ' ');
  }

  std::string& out_;
  const bool pretty_;
};

// A cheap upper-bound-ish estimate of the output size (exact for compact
// output without escapes), so the output is allocated once.
size_t EstimateSize(const Value& v, size_t indent, bool pretty) {
  switch (v.kind()) {
    case Value::Kind::kNull:
    case Value::Kind::kBool:
      return 5;
    case Value::Kind::kNumber:
      return v.number_text().size();
    case Value::Kind::kString:
      return v.as_string().size() + 2;
    case Value::Kind::kArray: {
      size_t n = 2;
      for (const Value& item : v.items()) {
        n += 1 + EstimateSize(item, indent + 1, pretty) + (pretty ? 1 + 2 * (indent + 1) : 0);
      }
      return n + (pretty ? 1 + 2 * indent : 0);
    }
    case Value::Kind::kObject: {
      size_t n = 2;
      for (const Member& m : v.members()) {
        n += m.first.size() + 4 + EstimateSize(m.second, indent + 1, pretty) +
             (pretty ? 2 + 2 * (indent + 1) : 0);
      }
      return n + (pretty ? 1 + 2 * indent : 0);
    }
  }
  return 0;
}

}  // namespace

std::string Write(const Value& value, const WriteOptions& options) {
  std::string out;
  const size_t estimate = EstimateSize(value, 0, options.pretty);
  out.reserve(estimate + estimate / 32 + 16);  // some room for escapes
  Writer(out, options.pretty).Write(value, 0);
  return out;
}

}  // namespace fhirward::json
