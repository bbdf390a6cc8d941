// FHIR-grade JSON value, reader and writer.
//
// Numbers keep the exact text they were written with ("1.50" stays "1.50"), so
// FHIR decimals round-trip. Objects keep member order. The reader rejects
// duplicate keys, invalid UTF-8 (including overlong forms and surrogates),
// lone surrogate escapes, NaN/Infinity, leading zeros, trailing garbage, and
// enforces the limits below; each failure is a Status with an ErrorCode from
// common/error.h (kInvalidJson, kInvalidUtf8, kDuplicateKey, kJsonTooDeep,
// kJsonTooLarge) and a detail naming the byte offset.
//
// Values are plain data: not thread-safe for concurrent mutation, safe to read
// from many threads.
#ifndef FHIRWARD_JSON_VALUE_H_
#define FHIRWARD_JSON_VALUE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace fhirward::json {

class Value;
using Member = std::pair<std::string, Value>;
using Array = std::vector<Value>;
using Object = std::vector<Member>;

struct Limits {
  size_t max_depth = 64;                      // nesting of arrays/objects
  size_t max_string_bytes = 4 * 1024 * 1024;  // one string (after unescaping) or key
  size_t max_array_items = 100000;            // items in one array
  size_t max_object_members = 10000;          // members in one object
  size_t max_total_bytes = 16 * 1024 * 1024;  // the whole text
};

class Value {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  Value() : v_(std::monostate{}) {}  // null
  static Value Null() { return Value(); }
  static Value Bool(bool b);
  // `raw` must be a valid JSON number text; the reader guarantees it, callers of
  // this factory must too (use Int() for integers).
  static Value Number(std::string raw);
  static Value Int(int64_t n);
  static Value String(std::string s);
  static Value MakeArray(Array items = {});
  static Value MakeObject(Object members = {});

  Kind kind() const;
  bool is_null() const { return kind() == Kind::kNull; }
  bool is_bool() const { return kind() == Kind::kBool; }
  bool is_number() const { return kind() == Kind::kNumber; }
  bool is_string() const { return kind() == Kind::kString; }
  bool is_array() const { return kind() == Kind::kArray; }
  bool is_object() const { return kind() == Kind::kObject; }

  // Accessors; calling one on the wrong kind is a programming error (asserts in
  // debug, returns an empty/false value in release). Check kind() first.
  bool as_bool() const;
  const std::string& number_text() const;
  std::optional<int64_t> as_int64() const;  // only for integer texts in range
  const std::string& as_string() const;
  const Array& items() const;
  Array& items();
  const Object& members() const;
  Object& members();

  // Object helpers. Find returns nullptr when absent or when this is not an object.
  const Value* Find(std::string_view key) const;
  Value* Find(std::string_view key);
  // The string member `key`, or nullopt when absent or not a string.
  std::optional<std::string_view> GetString(std::string_view key) const;
  // Replaces an existing member in place (order kept) or appends a new one.
  void Set(std::string key, Value value);
  bool Erase(std::string_view key);
  // Array helper.
  void Push(Value value);

  bool operator==(const Value& other) const;

 private:
  struct NumberText {
    std::string text;
    bool operator==(const NumberText&) const = default;
  };
  std::variant<std::monostate, bool, NumberText, std::string, Array, Object> v_;
};

absl::StatusOr<Value> Parse(std::string_view text, const Limits& limits = {});

struct WriteOptions {
  bool pretty = false;  // two-space indentation
};
// Emits exactly what Parse read: number texts verbatim, member order kept,
// strings escaped minimally (", \, control characters; "/" is not escaped;
// U+2028/U+2029 escaped so the output is safe inside <script> contexts).
std::string Write(const Value& value, const WriteOptions& options = {});

}  // namespace fhirward::json

#endif  // FHIRWARD_JSON_VALUE_H_
