#include "fhir/primitives.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "common/str_cat.h"
#include "fhir/resources.h"

namespace fhirward::fhir {
namespace {

constexpr std::string_view kPrimitiveTypes[] = {
    "base64Binary", "boolean",     "canonical", "code",     "date", "dateTime",    "decimal",
    "id",           "instant",     "integer",   "markdown", "oid",  "positiveInt", "string",
    "time",         "unsignedInt", "uri",       "url",      "uuid", "xhtml"};
static_assert(std::is_sorted(std::begin(kPrimitiveTypes), std::end(kPrimitiveTypes)));

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsLowerHex(char c) { return IsDigit(c) || (c >= 'a' && c <= 'f'); }
// Java regex \s (the FHIR validator's reading of the expressions): ASCII whitespace.
bool IsRegexSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}
bool IsControl(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7F;
}

// Length of the well-formed UTF-8 sequence at s[i] (s[i] >= 0x80), 0 if none.
size_t Utf8Length(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  const size_t avail = s.size() - i;
  const auto cont = [&](size_t k) { return (b(k) & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return avail >= 2 && cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (avail < 3 || !cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && b(1) < 0xA0) return 0;  // overlong
    if (c == 0xED && b(1) > 0x9F) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (avail < 4 || !cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && b(1) < 0x90) return 0;  // overlong
    if (c == 0xF4 && b(1) > 0x8F) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

bool IsUtf8(std::string_view s) {
  size_t i = 0;
  // ASCII fast path, eight bytes at a time.
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, s.data() + i, 8);
    if (word & 0x8080808080808080ULL) break;
  }
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t len = Utf8Length(s, i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

// The value for a message: quoted, at most 40 bytes (cut on a character
// boundary), control characters as \xNN. `s` must be valid UTF-8.
std::string Quoted(std::string_view s) {
  constexpr size_t kMax = 40;
  bool cut = false;
  if (s.size() > kMax) {
    size_t end = kMax;
    while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
    s = s.substr(0, end);
    cut = true;
  }
  std::string out = "'";
  for (char c : s) {
    if (IsControl(c)) {
      constexpr char kHex[] = "0123456789abcdef";
      const auto u = static_cast<unsigned char>(c);
      out += "\\x";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 0xF]);
    } else {
      out.push_back(c);
    }
  }
  out += cut ? "...'" : "'";
  return out;
}

// What the JSON value is, for kind-mismatch messages.
std::string Describe(const json::Value& v) {
  switch (v.kind()) {
    case json::Value::Kind::kNull:
      return "null";
    case json::Value::Kind::kBool:
      return v.as_bool() ? "the boolean true" : "the boolean false";
    case json::Value::Kind::kNumber:
      return "the number " + Quoted(v.number_text());
    case json::Value::Kind::kString:
      return IsUtf8(v.as_string()) ? "the string " + Quoted(v.as_string()) : "a string";
    case json::Value::Kind::kArray:
      return "an array";
    case json::Value::Kind::kObject:
      return "an object";
  }
  return "a value";
}

std::string Invalid(std::string_view value, std::string_view type, std::string_view why) {
  std::string out = Cat({Quoted(value), " is not a valid ", type});
  if (!why.empty()) out += Cat({": ", why});
  return out;
}

// -------------------------------------------------------------------- numbers

// integer -?(0|[1-9][0-9]*), positiveInt [1-9][0-9]*, unsignedInt 0|([1-9][0-9]*);
// all three are 32-bit (datatypes.html#integer).
std::optional<std::string> CheckInteger(std::string_view type, std::string_view text) {
  const bool is_integer = type == "integer";
  size_t i = 0;
  const bool negative = !text.empty() && text[0] == '-';
  if (negative && is_integer) ++i;
  const size_t digits = i;
  while (i < text.size() && IsDigit(text[i])) ++i;
  const bool syntax_ok = i == text.size() && i > digits && (text[digits] != '0' || i == digits + 1);
  if (!syntax_ok) {
    return Invalid(text, type,
                   negative && !is_integer
                       ? "it must not be negative"
                       : "a whole number without leading zeros, fraction or exponent is "
                         "expected");
  }
  // More than 10 digits is out of range whatever they are; otherwise it fits in int64.
  int64_t magnitude = 0;
  const bool too_long = i - digits > 10;
  if (!too_long) {
    for (size_t k = digits; k < i; ++k) magnitude = magnitude * 10 + (text[k] - '0');
  }
  const int64_t value = negative ? -magnitude : magnitude;
  const int64_t min = is_integer ? -2147483648LL : (type == "positiveInt" ? 1 : 0);
  constexpr int64_t kMax = 2147483647;
  if (too_long || value < min || value > kMax) {
    const std::string range = is_integer              ? "-2147483648..2147483647"
                              : type == "positiveInt" ? "1..2147483647"
                                                      : "0..2147483647";
    return Invalid(text, type, Cat({"it must be in ", range}));
  }
  return std::nullopt;
}

// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
bool IsDecimalText(std::string_view s) {
  size_t i = 0;
  const auto run = [&] {
    const size_t start = i;
    while (i < s.size() && IsDigit(s[i])) ++i;
    return i - start;
  };
  if (i < s.size() && s[i] == '-') ++i;
  const size_t int_start = i;
  const size_t int_digits = run();
  if (int_digits == 0 || (s[int_start] == '0' && int_digits > 1)) return false;
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (run() == 0) return false;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (run() == 0) return false;
  }
  return i == s.size();
}

// -------------------------------------------------------------------- strings

// string and markdown: [ \r\n\t\S]+ and at most 1 MiB characters; "Strings SHOULD
// not contain Unicode character points below 32, except for u0009 (horizontal tab),
// u0010 (carriage return) and u0013 (line feed)" is enforced.
std::optional<std::string> CheckText(std::string_view type, std::string_view s) {
  size_t chars = 0;
  for (size_t i = 0; i < s.size(); ++chars) {
    const char c = s[i];
    if (static_cast<unsigned char>(c) < 0x80) {
      if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\r' && c != '\n') {
        return Invalid(s, type,
                       "control characters other than tab, carriage return and line feed are "
                       "not allowed");
      }
      ++i;
      continue;
    }
    i += Utf8Length(s, i);  // validated by the caller
  }
  if (chars > kMaxStringCharacters) {
    return Cat({type, " value is longer than 1048576 characters"});
  }
  return std::nullopt;
}

// code: [^\s]+(\s[^\s]+)*, read with the prose: "no leading or trailing whitespace,
// and no whitespace other than single spaces in the contents".
std::optional<std::string> CheckCode(std::string_view s) {
  if (auto text = CheckText("code", s)) return text;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == ' ') {
      if (i == 0 || i + 1 == s.size()) {
        return Invalid(s, "code", "leading or trailing whitespace is not allowed");
      }
      if (s[i + 1] == ' ') return Invalid(s, "code", "runs of spaces are not allowed");
    } else if (IsRegexSpace(c)) {
      return Invalid(s, "code", "whitespace other than single spaces is not allowed");
    }
  }
  return std::nullopt;
}

// uri, url, canonical: \S* (non-empty in JSON); control characters never occur in a URI.
std::optional<std::string> CheckUri(std::string_view type, std::string_view s) {
  for (char c : s) {
    if (IsRegexSpace(c)) return Invalid(s, type, "whitespace is not allowed");
    if (IsControl(c)) return Invalid(s, type, "control characters are not allowed");
  }
  if (type == "canonical") {
    // canonical: url, optionally "|version" (datatypes.html#canonical).
    const size_t bar = s.find('|');
    if (bar != std::string_view::npos && (bar == 0 || bar + 1 == s.size())) {
      return Invalid(s, type, "'|' must separate a URL from a non-empty version");
    }
  }
  return std::nullopt;
}

// urn:oid:[0-2](\.(0|[1-9][0-9]*))+
bool IsOid(std::string_view s) {
  constexpr std::string_view kPrefix = "urn:oid:";
  if (!s.starts_with(kPrefix)) return false;
  s.remove_prefix(kPrefix.size());
  if (s.empty() || s[0] < '0' || s[0] > '2') return false;
  size_t i = 1;
  if (i == s.size()) return false;  // at least one ".arc"
  while (i < s.size()) {
    if (s[i] != '.') return false;
    ++i;
    const size_t start = i;
    while (i < s.size() && IsDigit(s[i])) ++i;
    if (i == start || (s[start] == '0' && i - start > 1)) return false;
  }
  return true;
}

// urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}
bool IsUuid(std::string_view s) {
  constexpr std::string_view kPrefix = "urn:uuid:";
  if (!s.starts_with(kPrefix)) return false;
  s.remove_prefix(kPrefix.size());
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !IsLowerHex(s[i])) return false;
  }
  return true;
}

// (\s*([0-9a-zA-Z\+/=]){4}\s*)+ : groups of four alphabet characters, whitespace
// only between groups; '=' only as one or two final padding characters (RFC 4648 §4).
std::optional<std::string> CheckBase64(std::string_view s) {
  size_t in_group = 0;
  size_t groups = 0;
  size_t padding = 0;  // '=' seen so far
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    // Whitespace is ignored wherever it is (line-wrapped base64, as the HL7
    // validator reads it); the rest must be whole groups of four.
    if (IsRegexSpace(c)) continue;
    const bool alphabet =
        (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || IsDigit(c) || c == '+' || c == '/';
    if (c == '=') {
      ++padding;
    } else if (!alphabet) {
      return Invalid(s, "base64Binary", "only A-Z a-z 0-9 + / = and whitespace are allowed");
    } else if (padding > 0) {
      return Invalid(s, "base64Binary", "'=' padding may only end the data");
    }
    if (++in_group == 4) {
      in_group = 0;
      ++groups;
    }
  }
  if (groups == 0 || in_group != 0) {
    return Invalid(s, "base64Binary", "the length is not a multiple of four characters");
  }
  if (padding > 2) return Invalid(s, "base64Binary", "more than two '=' padding characters");
  return std::nullopt;
}

// -------------------------------------------------------------------- dates and times

enum class Temporal { kDate, kDateTime, kInstant, kTime };

bool IsLeapYear(int y) { return y % 4 == 0 && (y % 100 != 0 || y % 400 == 0); }

int DaysInMonth(int y, int m) {
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && IsLeapYear(y) ? 29 : kDays[m - 1];
}

std::string TwoDigits(int v) {
  return std::string{static_cast<char>('0' + v / 10), static_cast<char>('0' + v % 10)};
}

// Why `s` is not a valid date / dateTime / instant / time, or nullopt. Follows the
// R4 expressions (a year 0001-9999; dateTime may stop after year or month, and a
// time of day needs seconds and a timezone; seconds 00-60 for leap seconds;
// offsets -14:00..+14:00) and adds calendar validity.
std::optional<std::string> TemporalProblem(Temporal kind, std::string_view s) {
  size_t i = 0;
  const auto digits = [&](size_t n, int* out) {
    if (s.size() - i < n) return false;
    int v = 0;
    for (size_t k = 0; k < n; ++k) {
      if (!IsDigit(s[i + k])) return false;
      v = v * 10 + (s[i + k] - '0');
    }
    *out = v;
    i += n;
    return true;
  };
  const auto next_is = [&](char c) { return i < s.size() && s[i] == c; };
  const bool at_end_ok = kind == Temporal::kDate || kind == Temporal::kDateTime;
  const char* const incomplete = kind == Temporal::kInstant
                                     ? "an instant needs a full date, time with seconds and a "
                                       "timezone (YYYY-MM-DDThh:mm:ss[.sss]Z)"
                                     : "";

  if (kind != Temporal::kTime) {
    int year = 0;
    if (!digits(4, &year)) return "the year must be four digits (YYYY)";
    if (year == 0) return "year 0000 does not exist";
    if (i == s.size()) return at_end_ok ? std::nullopt : std::optional<std::string>(incomplete);
    if (!next_is('-')) return "expected '-' after the year";
    ++i;
    int month = 0;
    if (!digits(2, &month)) return "the month must be two digits (MM)";
    if (month < 1 || month > 12) return "the month must be 01-12";
    if (i == s.size()) return at_end_ok ? std::nullopt : std::optional<std::string>(incomplete);
    if (!next_is('-')) return "expected '-' after the month";
    ++i;
    int day = 0;
    if (!digits(2, &day)) return "the day must be two digits (DD)";
    if (day < 1 || day > DaysInMonth(year, month)) {
      return Cat({std::to_string(year), "-", TwoDigits(month), " has ",
                  std::to_string(DaysInMonth(year, month)), " days"});
    }
    if (i == s.size()) return at_end_ok ? std::nullopt : std::optional<std::string>(incomplete);
    if (kind == Temporal::kDate) {
      return next_is('T') ? "a date has no time of day (use dateTime)"
                          : "unexpected text after the date";
    }
    if (!next_is('T')) return "expected 'T' between the date and the time";
    ++i;
  }

  int hour = 0, minute = 0, second = 0;
  if (!digits(2, &hour)) return "the hour must be two digits (hh)";
  if (hour > 23) return "the hour must be 00-23 (24:00 is not allowed)";
  if (!next_is(':')) return "expected ':' after the hour";
  ++i;
  if (!digits(2, &minute)) return "the minutes must be two digits (mm)";
  if (minute > 59) return "the minutes must be 00-59";
  if (!next_is(':')) return "seconds are required (hh:mm:ss)";
  ++i;
  if (!digits(2, &second)) return "the seconds must be two digits (ss)";
  if (second > 60) return "the seconds must be 00-60";
  if (next_is('.')) {
    ++i;
    const size_t start = i;
    while (i < s.size() && IsDigit(s[i])) ++i;
    if (i == start) return "expected digits after '.' in the seconds";
  }
  if (kind == Temporal::kTime) {
    if (i != s.size()) return "unexpected text after the time (a time has no timezone)";
    return std::nullopt;
  }
  if (i == s.size()) return "a time of day needs a timezone (Z or +hh:mm / -hh:mm)";
  if (next_is('Z')) {
    ++i;
  } else if (next_is('+') || next_is('-')) {
    ++i;
    int tz_hour = 0, tz_minute = 0;
    if (!digits(2, &tz_hour) || !next_is(':')) return "the timezone must be +hh:mm or -hh:mm";
    ++i;
    if (!digits(2, &tz_minute)) return "the timezone must be +hh:mm or -hh:mm";
    if (tz_minute > 59 || tz_hour > 14 || (tz_hour == 14 && tz_minute != 0)) {
      return "the timezone offset must be within -14:00..+14:00";
    }
  } else {
    return "expected a timezone (Z or +hh:mm / -hh:mm)";
  }
  if (i != s.size()) return "unexpected text after the timezone";
  return std::nullopt;
}

std::optional<std::string> CheckTemporal(std::string_view type, Temporal kind, std::string_view s) {
  if (auto why = TemporalProblem(kind, s)) return Invalid(s, type, *why);
  return std::nullopt;
}

}  // namespace

bool IsPrimitiveType(std::string_view fhir_type) {
  return std::binary_search(std::begin(kPrimitiveTypes), std::end(kPrimitiveTypes), fhir_type);
}

std::optional<std::string> CheckPrimitive(std::string_view fhir_type, const json::Value& value) {
  if (!IsPrimitiveType(fhir_type)) {
    return Cat({Quoted(IsUtf8(fhir_type) ? fhir_type : "?"), " is not an R4 primitive type"});
  }

  if (fhir_type == "boolean") {
    if (value.is_bool()) return std::nullopt;
    return Cat({"boolean must be JSON true or false, not ", Describe(value)});
  }

  if (fhir_type == "integer" || fhir_type == "positiveInt" || fhir_type == "unsignedInt" ||
      fhir_type == "decimal") {
    if (!value.is_number()) {
      return Cat({fhir_type, " must be a JSON number, not ", Describe(value)});
    }
    const std::string& text = value.number_text();
    if (fhir_type == "decimal") {
      if (IsDecimalText(text)) return std::nullopt;
      return Invalid(text, "decimal", "");
    }
    return CheckInteger(fhir_type, text);
  }

  // Every other primitive is a JSON string, never empty (json.html: "String
  // property values can never be empty").
  if (!value.is_string()) {
    return Cat({fhir_type, " must be a JSON string, not ", Describe(value)});
  }
  const std::string& s = value.as_string();
  if (s.empty()) {
    return Cat({fhir_type, " must not be an empty string (omit the element instead)"});
  }
  if (!IsUtf8(s)) return Cat({fhir_type, " value is not valid UTF-8"});

  if (fhir_type == "string" || fhir_type == "markdown") return CheckText(fhir_type, s);
  if (fhir_type == "code") return CheckCode(s);
  if (fhir_type == "id") {
    if (IsValidId(s)) return std::nullopt;
    return Invalid(s, "id", "1-64 characters from A-Z a-z 0-9 - . are expected");
  }
  if (fhir_type == "uri" || fhir_type == "url" || fhir_type == "canonical") {
    return CheckUri(fhir_type, s);
  }
  if (fhir_type == "oid") {
    if (IsOid(s)) return std::nullopt;
    return Invalid(s, "oid", "urn:oid: followed by dotted numbers such as 1.2.3 is expected");
  }
  if (fhir_type == "uuid") {
    if (IsUuid(s)) return std::nullopt;
    return Invalid(s, "uuid", "urn:uuid: followed by a lowercase 8-4-4-4-12 hex UUID is expected");
  }
  if (fhir_type == "base64Binary") return CheckBase64(s);
  if (fhir_type == "date") return CheckTemporal(fhir_type, Temporal::kDate, s);
  if (fhir_type == "dateTime") return CheckTemporal(fhir_type, Temporal::kDateTime, s);
  if (fhir_type == "instant") return CheckTemporal(fhir_type, Temporal::kInstant, s);
  if (fhir_type == "time") return CheckTemporal(fhir_type, Temporal::kTime, s);
  // xhtml: its content is CheckNarrativeXhtml's business.
  return std::nullopt;
}

}  // namespace fhirward::fhir
