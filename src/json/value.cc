#include "json/value.h"

#include <cassert>
#include <charconv>
#include <string>
#include <string_view>
#include <system_error>

namespace fhirward::json {
namespace {

// Fallbacks returned by accessors called on the wrong kind (release builds).
const std::string& EmptyString() {
  static const std::string* const kEmpty = new std::string();
  return *kEmpty;
}
const Array& EmptyArray() {
  static const Array* const kEmpty = new Array();
  return *kEmpty;
}
const Object& EmptyObject() {
  static const Object* const kEmpty = new Object();
  return *kEmpty;
}

}  // namespace

Value Value::Bool(bool b) {
  Value v;
  v.v_ = b;
  return v;
}

Value Value::Number(std::string raw) {
  Value v;
  v.v_ = NumberText{std::move(raw)};
  return v;
}

Value Value::Int(int64_t n) { return Number(std::to_string(n)); }

Value Value::String(std::string s) {
  Value v;
  v.v_ = std::move(s);
  return v;
}

Value Value::MakeArray(Array items) {
  Value v;
  v.v_ = std::move(items);
  return v;
}

Value Value::MakeObject(Object members) {
  Value v;
  v.v_ = std::move(members);
  return v;
}

Value::Kind Value::kind() const {
  switch (v_.index()) {
    case 0:
      return Kind::kNull;
    case 1:
      return Kind::kBool;
    case 2:
      return Kind::kNumber;
    case 3:
      return Kind::kString;
    case 4:
      return Kind::kArray;
    default:
      return Kind::kObject;
  }
}

bool Value::as_bool() const {
  const bool* b = std::get_if<bool>(&v_);
  assert(b != nullptr && "as_bool() on a non-bool Value");
  return b != nullptr && *b;
}

const std::string& Value::number_text() const {
  const NumberText* n = std::get_if<NumberText>(&v_);
  assert(n != nullptr && "number_text() on a non-number Value");
  return n != nullptr ? n->text : EmptyString();
}

std::optional<int64_t> Value::as_int64() const {
  const NumberText* n = std::get_if<NumberText>(&v_);
  if (n == nullptr) return std::nullopt;
  const std::string& t = n->text;
  if (t.empty()) return std::nullopt;
  size_t i = t[0] == '-' ? 1 : 0;
  if (i == t.size()) return std::nullopt;
  for (size_t j = i; j < t.size(); ++j) {
    if (t[j] < '0' || t[j] > '9') return std::nullopt;  // '.', 'e', 'E', '+'
  }
  int64_t out = 0;
  auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
  if (ec != std::errc() || ptr != t.data() + t.size()) return std::nullopt;
  return out;
}

const std::string& Value::as_string() const {
  const std::string* s = std::get_if<std::string>(&v_);
  assert(s != nullptr && "as_string() on a non-string Value");
  return s != nullptr ? *s : EmptyString();
}

const Array& Value::items() const {
  const Array* a = std::get_if<Array>(&v_);
  assert(a != nullptr && "items() on a non-array Value");
  return a != nullptr ? *a : EmptyArray();
}

Array& Value::items() {
  Array* a = std::get_if<Array>(&v_);
  assert(a != nullptr && "items() on a non-array Value");
  if (a != nullptr) return *a;
  thread_local Array scratch;  // release-mode fallback; contents are discarded
  scratch.clear();
  return scratch;
}

const Object& Value::members() const {
  const Object* o = std::get_if<Object>(&v_);
  assert(o != nullptr && "members() on a non-object Value");
  return o != nullptr ? *o : EmptyObject();
}

Object& Value::members() {
  Object* o = std::get_if<Object>(&v_);
  assert(o != nullptr && "members() on a non-object Value");
  if (o != nullptr) return *o;
  thread_local Object scratch;  // release-mode fallback; contents are discarded
  scratch.clear();
  return scratch;
}

const Value* Value::Find(std::string_view key) const {
  const Object* o = std::get_if<Object>(&v_);
  if (o == nullptr) return nullptr;
  for (const Member& m : *o) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

Value* Value::Find(std::string_view key) {
  return const_cast<Value*>(static_cast<const Value*>(this)->Find(key));
}

std::optional<std::string_view> Value::GetString(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr || !v->is_string()) return std::nullopt;
  return std::string_view(v->as_string());
}

void Value::Set(std::string key, Value value) {
  Object* o = std::get_if<Object>(&v_);
  assert(o != nullptr && "Set() on a non-object Value");
  if (o == nullptr) return;
  for (Member& m : *o) {
    if (m.first == key) {
      m.second = std::move(value);
      return;
    }
  }
  o->emplace_back(std::move(key), std::move(value));
}

bool Value::Erase(std::string_view key) {
  Object* o = std::get_if<Object>(&v_);
  if (o == nullptr) return false;
  for (auto it = o->begin(); it != o->end(); ++it) {
    if (it->first == key) {
      o->erase(it);
      return true;
    }
  }
  return false;
}

void Value::Push(Value value) {
  Array* a = std::get_if<Array>(&v_);
  assert(a != nullptr && "Push() on a non-array Value");
  if (a != nullptr) a->push_back(std::move(value));
}

bool Value::operator==(const Value& other) const { return v_ == other.v_; }

}  // namespace fhirward::json
