// RFC 6902 JSON Patch. See patch.h for the contract.
//
// The patch is checked as a whole first (every operation's shape and pointer
// syntax), so a malformed document is refused with 400 whatever the target
// document holds; then the operations are applied in order to a copy of the
// document, which replaces it only when all of them succeeded.

#include "json/patch.h"

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/str_cat.h"

namespace fhirward::json {
namespace {

// Error codes. FHIR (http://hl7.org/fhir/R4/http.html#patch) and RFC 5789 §2.2
// separate a malformed patch document (400 Bad Request) from a well-formed
// patch that cannot be applied to the resource (422 Unprocessable Entity: a
// failed test, a path that does not resolve). common/error.h has no code of
// its own for patches:
//  - kInvalidRequest is the generic 400 "invalid" code ("The request is
//    malformed"); kInvalidResource is also 400 but speaks of a FHIR resource.
//  - the codes mapped to 422 are kValidationFailed ("processing") and
//    kIdempotencyKeyReused ("conflict", about Idempotency-Key reuse).
//    kValidationFailed is the one that fits: "processing" is the issue type
//    for a request that is well formed but cannot be processed against the
//    resource. Its fixed message speaks of conformance, so the detail carries
//    the patch-specific reason.
//  - PatchLimits bounds use kTooCostly (400 "too-costly", "The request exceeds
//    a processing limit"), like the server's other processing limits.
constexpr ErrorCode kMalformed = ErrorCode::kInvalidRequest;
constexpr ErrorCode kUnprocessable = ErrorCode::kValidationFailed;
constexpr ErrorCode kLimit = ErrorCode::kTooCostly;

// Most bytes of a pointer, key or op name echoed in an error detail.
constexpr size_t kMaxEchoBytes = 64;

struct Failure {
  ErrorCode code;
  std::string detail;
};
using Result = std::optional<Failure>;  // nullopt: success

// `s` cut to at most kMaxEchoBytes on a UTF-8 sequence boundary.
std::string Echo(std::string_view s) {
  if (s.size() <= kMaxEchoBytes) return std::string(s);
  size_t n = kMaxEchoBytes;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return Cat(s.substr(0, n), "...");
}

// A pointer as it appears in a detail: "" for the whole document.
std::string PointerText(std::string_view text) {
  return text.empty() ? std::string("\"\"") : Echo(text);
}

std::string_view KindName(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNull:
      return "null";
    case Value::Kind::kBool:
      return "a boolean";
    case Value::Kind::kNumber:
      return "a number";
    case Value::Kind::kString:
      return "a string";
    case Value::Kind::kArray:
      return "an array";
    case Value::Kind::kObject:
      return "an object";
  }
  return "a value";
}

// ---------------------------------------------------------------------------
// JSON Pointer (RFC 6901)

struct Pointer {
  std::string_view label;           // "path" or "from", for details
  std::string_view text;            // as written in the patch (points into it)
  std::vector<std::string> tokens;  // unescaped reference tokens
  std::vector<size_t> ends;         // ends[i]: offset in text just past tokens[i]

  // The pointer to the value holding tokens[i] (the first i tokens).
  std::string_view Prefix(size_t i) const {
    return i == 0 ? std::string_view() : text.substr(0, ends[i - 1]);
  }
};

Result ParsePointer(std::string_view label, std::string_view text, size_t max_tokens,
                    Pointer& out) {
  out.label = label;
  out.text = text;
  if (text.empty()) return std::nullopt;
  if (text[0] != '/') {
    return Failure{kMalformed,
                   Cat(label, " ", Echo(text),
                       " is not a JSON Pointer (it must be empty or start with \"/\")")};
  }
  const size_t count = static_cast<size_t>(std::count(text.begin(), text.end(), '/'));
  if (count > max_tokens) {
    return Failure{kLimit, Cat(label, " ", Echo(text), " has ", count,
                               " reference tokens; at most ", max_tokens, " are allowed")};
  }
  out.tokens.reserve(count);
  out.ends.reserve(count);
  std::string token;
  for (size_t i = 1; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == '/') {
      out.tokens.push_back(std::move(token));
      out.ends.push_back(i);
      token.clear();
      continue;
    }
    if (text[i] != '~') {
      token.push_back(text[i]);
      continue;
    }
    if (i + 1 == text.size() || (text[i + 1] != '0' && text[i + 1] != '1')) {
      return Failure{kMalformed, Cat(label, " ", Echo(text),
                                     " has an invalid escape (\"~\" must be followed by 0 or 1)")};
    }
    token.push_back(text[i + 1] == '0' ? '~' : '/');
    ++i;
  }
  return std::nullopt;
}

// A pointer that does not resolve in the document.
Failure NotFound(const Pointer& p, std::string_view why) {
  return Failure{kUnprocessable,
                 Cat(p.label, " ", PointerText(p.text), " does not exist (", why, ")")};
}

// The array index tokens[i] of `p` names in an array of `size` items. With
// `allow_end`, "-" and `size` itself (the position after the last item) are
// accepted, as for the target of add.
std::optional<size_t> ArrayIndex(const Pointer& p, size_t i, size_t size, bool allow_end,
                                 Failure& failure) {
  const std::string& tok = p.tokens[i];
  if (tok == "-") {
    if (allow_end) return size;
    failure = NotFound(
        p, "\"-\" names the element after the last one; only add, move and copy may target it");
    return std::nullopt;
  }
  const bool digits = !tok.empty() && std::all_of(tok.begin(), tok.end(),
                                                  [](char c) { return c >= '0' && c <= '9'; });
  if (!digits) {
    failure = NotFound(p, Cat("\"", Echo(tok), "\" is not an array index"));
    return std::nullopt;
  }
  if (tok.size() > 1 && tok[0] == '0') {
    failure = NotFound(p, Cat("array index \"", Echo(tok), "\" has a leading zero"));
    return std::nullopt;
  }
  size_t index = 0;
  auto [ptr, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), index);
  if (ec != std::errc() || ptr != tok.data() + tok.size() || index > size ||
      (index == size && !allow_end)) {
    failure = NotFound(p, Cat("index ", Echo(tok), " is out of range for an array of ", size,
                              size == 1 ? " item" : " items"));
    return std::nullopt;
  }
  return index;
}

// The value the first `count` tokens of `p` name in `root`, or nullptr with
// `failure` set. Iterative.
Value* Resolve(Value& root, const Pointer& p, size_t count, Failure& failure) {
  Value* cur = &root;
  for (size_t i = 0; i < count; ++i) {
    if (cur->is_object()) {
      Value* next = cur->Find(p.tokens[i]);
      if (next == nullptr) {
        failure =
            NotFound(p, Cat("no member \"", Echo(p.tokens[i]), "\" in ", PointerText(p.Prefix(i))));
        return nullptr;
      }
      cur = next;
    } else if (cur->is_array()) {
      std::optional<size_t> index = ArrayIndex(p, i, cur->items().size(), false, failure);
      if (!index) return nullptr;
      cur = &cur->items()[*index];
    } else {
      failure = NotFound(
          p, Cat(PointerText(p.Prefix(i)), " is ", KindName(*cur), ", not an object or array"));
      return nullptr;
    }
  }
  return cur;
}

// ---------------------------------------------------------------------------
// JSON equality (RFC 6902 §4.6)

// A finite decimal: value = (negative ? -1 : 1) * digits * 10^exponent, with
// no leading or trailing zeros in `digits`; zero is {false, "", 0}.
struct Decimal {
  bool negative = false;
  std::string digits;
  int64_t exponent = 0;
  bool operator==(const Decimal&) const = default;
};

// nullopt for a text that is not a JSON number or whose exponent has more
// than 18 digits (those are compared as text).
std::optional<Decimal> Normalize(std::string_view t) {
  Decimal d;
  size_t i = 0;
  auto is_digit = [&](size_t j) { return j < t.size() && t[j] >= '0' && t[j] <= '9'; };
  if (i < t.size() && t[i] == '-') {
    d.negative = true;
    ++i;
  }
  const size_t int_begin = i;
  while (is_digit(i)) ++i;
  if (i == int_begin) return std::nullopt;
  d.digits.assign(t.substr(int_begin, i - int_begin));
  size_t frac_digits = 0;
  if (i < t.size() && t[i] == '.') {
    const size_t frac_begin = ++i;
    while (is_digit(i)) ++i;
    if (i == frac_begin) return std::nullopt;
    frac_digits = i - frac_begin;
    d.digits.append(t.substr(frac_begin, frac_digits));
  }
  int64_t exponent = 0;
  if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
    ++i;
    bool exp_negative = false;
    if (i < t.size() && (t[i] == '+' || t[i] == '-')) exp_negative = t[i++] == '-';
    while (i < t.size() && t[i] == '0' && is_digit(i + 1)) ++i;  // leading zeros
    const size_t exp_begin = i;
    while (is_digit(i)) ++i;
    if (i == exp_begin || i - exp_begin > 18) return std::nullopt;
    for (size_t j = exp_begin; j < i; ++j) exponent = exponent * 10 + (t[j] - '0');
    if (exp_negative) exponent = -exponent;
  }
  if (i != t.size()) return std::nullopt;
  // |exponent| < 10^18 and the text is far shorter than 2^62: no overflow.
  d.exponent = exponent - static_cast<int64_t>(frac_digits);
  const size_t first = d.digits.find_first_not_of('0');
  if (first == std::string::npos) return Decimal{};  // zero, whatever the sign
  d.digits.erase(0, first);
  const size_t last = d.digits.find_last_not_of('0');
  d.exponent += static_cast<int64_t>(d.digits.size() - 1 - last);
  d.digits.erase(last + 1);
  return d;
}

bool NumbersEqual(const std::string& a, const std::string& b) {
  if (a == b) return true;
  std::optional<Decimal> da = Normalize(a);
  std::optional<Decimal> db = Normalize(b);
  return da && db && *da == *db;
}

// ---------------------------------------------------------------------------
// Sizes

struct Measure {
  size_t bytes = 0;  // approximate compact JSON size
  size_t depth = 0;  // levels of arrays/objects (a scalar is 0)
};

// Per-member and per-item overhead in Measure::bytes: quotes, colon, comma.
size_t MemberOverhead(std::string_view key) { return key.size() + 4; }
constexpr size_t kItemOverhead = 1;

Measure MeasureValue(const Value& v) {
  Measure m;
  std::vector<std::pair<const Value*, size_t>> stack;  // value, containers above it
  stack.emplace_back(&v, 0);
  while (!stack.empty()) {
    auto [x, level] = stack.back();
    stack.pop_back();
    switch (x->kind()) {
      case Value::Kind::kNull:
        m.bytes += 4;
        break;
      case Value::Kind::kBool:
        m.bytes += x->as_bool() ? 4 : 5;
        break;
      case Value::Kind::kNumber:
        m.bytes += x->number_text().size();
        break;
      case Value::Kind::kString:
        m.bytes += x->as_string().size() + 2;
        break;
      case Value::Kind::kArray:
        m.bytes += 2;
        m.depth = std::max(m.depth, level + 1);
        for (const Value& item : x->items()) {
          m.bytes += kItemOverhead;
          stack.emplace_back(&item, level + 1);
        }
        break;
      case Value::Kind::kObject:
        m.bytes += 2;
        m.depth = std::max(m.depth, level + 1);
        for (const Member& member : x->members()) {
          m.bytes += MemberOverhead(member.first);
          stack.emplace_back(&member.second, level + 1);
        }
        break;
    }
  }
  return m;
}

// ---------------------------------------------------------------------------
// Operations

enum class OpKind { kAdd, kRemove, kReplace, kMove, kCopy, kTest };

struct Operation {
  OpKind kind = OpKind::kAdd;
  std::string_view name;  // the op as written; empty until known
  Pointer path;
  Pointer from;                  // move, copy
  const Value* value = nullptr;  // add, replace, test (points into the patch)
};

std::optional<OpKind> KindOf(std::string_view op) {
  if (op == "add") return OpKind::kAdd;
  if (op == "remove") return OpKind::kRemove;
  if (op == "replace") return OpKind::kReplace;
  if (op == "move") return OpKind::kMove;
  if (op == "copy") return OpKind::kCopy;
  if (op == "test") return OpKind::kTest;
  return std::nullopt;
}

// The string member `key` of `op`, or a Failure when absent or not a string.
Result StringMember(const Value& op, std::string_view key, std::string_view& out) {
  const Value* v = op.Find(key);
  if (v == nullptr) return Failure{kMalformed, Cat("member \"", key, "\" is missing")};
  if (!v->is_string()) {
    return Failure{kMalformed, Cat("member \"", key, "\" is ", KindName(*v), ", not a string")};
  }
  out = v->as_string();
  return std::nullopt;
}

Result ParseOperation(const Value& v, const PatchLimits& limits, Operation& out) {
  if (!v.is_object()) return Failure{kMalformed, Cat("is ", KindName(v), ", not an object")};
  // The reader refuses repeated keys; a Value built by hand may still repeat
  // one, which RFC 6902 §4 (and Appendix A.13) makes an error.
  for (std::string_view key : {"op", "path", "from", "value"}) {
    const auto n = std::count_if(v.members().begin(), v.members().end(),
                                 [&](const Member& member) { return member.first == key; });
    if (n > 1) return Failure{kMalformed, Cat("member \"", key, "\" appears more than once")};
  }
  std::string_view op;
  if (Result f = StringMember(v, "op", op)) return f;
  std::optional<OpKind> kind = KindOf(op);
  if (!kind) {
    return Failure{kMalformed, Cat("op \"", Echo(op),
                                   "\" is not one of add, remove, replace, move, copy, test")};
  }
  out.kind = *kind;
  out.name = op;
  std::string_view path;
  if (Result f = StringMember(v, "path", path)) return f;
  if (Result f = ParsePointer("path", path, limits.max_depth, out.path)) return f;
  switch (out.kind) {
    case OpKind::kAdd:
    case OpKind::kReplace:
    case OpKind::kTest:
      out.value = v.Find("value");
      if (out.value == nullptr) return Failure{kMalformed, "member \"value\" is missing"};
      break;
    case OpKind::kMove:
    case OpKind::kCopy: {
      std::string_view from;
      if (Result f = StringMember(v, "from", from)) return f;
      if (Result f = ParsePointer("from", from, limits.max_depth, out.from)) return f;
      const std::vector<std::string>& ft = out.from.tokens;
      const std::vector<std::string>& pt = out.path.tokens;
      if (out.kind == OpKind::kMove && ft.size() < pt.size() &&
          std::equal(ft.begin(), ft.end(), pt.begin())) {
        return Failure{kMalformed, Cat("path ", PointerText(out.path.text), " is inside from ",
                                       PointerText(out.from.text),
                                       " (a value cannot be moved into one of its own children)")};
      }
      break;
    }
    case OpKind::kRemove:
      if (out.path.tokens.empty()) {
        return Failure{kMalformed, "path \"\" would remove the whole document"};
      }
      break;
  }
  return std::nullopt;
}

// Applies operations to one document, tracking its size.
class Patcher {
 public:
  Patcher(Value& root, const PatchLimits& limits)
      : root_(root), limits_(limits), bytes_(MeasureValue(root).bytes) {}

  Result Apply(const Operation& op) {
    switch (op.kind) {
      case OpKind::kAdd: {
        const Value& value = *op.value;
        return Add(op.path, MeasureValue(value), [&] { return value; });
      }
      case OpKind::kRemove:
        return Remove(op.path, nullptr, nullptr);
      case OpKind::kReplace:
        return Replace(op.path, *op.value);
      case OpKind::kMove:
        return Move(op.from, op.path);
      case OpKind::kCopy: {
        Failure failure;
        const Value* source = Resolve(root_, op.from, op.from.tokens.size(), failure);
        if (source == nullptr) return failure;
        // Copied only after the target resolved and the limits passed.
        return Add(op.path, MeasureValue(*source), [&] { return *source; });
      }
      case OpKind::kTest: {
        Failure failure;
        const Value* target = Resolve(root_, op.path, op.path.tokens.size(), failure);
        if (target == nullptr) return failure;
        if (!JsonEquals(*target, *op.value)) {
          return Failure{kUnprocessable, Cat("the value at ", PointerText(op.path.text),
                                             " differs from the test value")};
        }
        return std::nullopt;
      }
    }
    return Failure{ErrorCode::kInternal, "unknown operation kind"};
  }

 private:
  // Accounts for replacing `removed` bytes with `added` bytes; fails (changing
  // nothing) when that grows the document past the limit.
  Result Grow(size_t removed, size_t added) {
    const size_t base = bytes_ > removed ? bytes_ - removed : 0;
    if (added > removed &&
        (added > limits_.max_result_bytes || base > limits_.max_result_bytes - added)) {
      return Failure{kLimit, Cat("the result would exceed ", limits_.max_result_bytes, " bytes")};
    }
    bytes_ = base + added;
    return std::nullopt;
  }

  // RFC 6902 §4.1. `make` produces the value to insert; it is called once,
  // after every check passed and before the document changes.
  template <typename Make>
  Result Add(const Pointer& path, const Measure& m, Make&& make) {
    const size_t n = path.tokens.size();
    if (n + m.depth > limits_.max_depth) {
      return Failure{kLimit,
                     Cat("the result would be nested deeper than ", limits_.max_depth, " levels")};
    }
    if (n == 0) {
      if (Result f = Grow(bytes_, m.bytes)) return f;
      root_ = make();
      return std::nullopt;
    }
    Failure failure;
    Value* parent = Resolve(root_, path, n - 1, failure);
    if (parent == nullptr) return failure;
    const std::string& key = path.tokens.back();
    if (parent->is_object()) {
      if (Value* existing = parent->Find(key)) {
        if (Result f = Grow(MeasureValue(*existing).bytes, m.bytes)) return f;
        *existing = make();
      } else {
        if (Result f = Grow(0, MemberOverhead(key) + m.bytes)) return f;
        parent->members().emplace_back(key, make());
      }
      return std::nullopt;
    }
    if (parent->is_array()) {
      std::optional<size_t> index = ArrayIndex(path, n - 1, parent->items().size(), true, failure);
      if (!index) return failure;
      if (Result f = Grow(0, kItemOverhead + m.bytes)) return f;
      Array& items = parent->items();
      Value value = make();
      items.insert(items.begin() + static_cast<std::ptrdiff_t>(*index), std::move(value));
      return std::nullopt;
    }
    return NotFound(path, Cat(PointerText(path.Prefix(n - 1)), " is ", KindName(*parent),
                              ", not an object or array"));
  }

  // RFC 6902 §4.2. Moves the removed value to `out` and its measure to `m`
  // when they are not null.
  Result Remove(const Pointer& path, Value* out, Measure* m) {
    const size_t n = path.tokens.size();
    if (n == 0) return Failure{kMalformed, "path \"\" would remove the whole document"};
    Failure failure;
    Value* parent = Resolve(root_, path, n - 1, failure);
    if (parent == nullptr) return failure;
    const std::string& key = path.tokens.back();
    if (parent->is_object()) {
      Object& members = parent->members();
      auto it = std::find_if(members.begin(), members.end(),
                             [&](const Member& member) { return member.first == key; });
      if (it == members.end()) {
        return NotFound(path,
                        Cat("no member \"", Echo(key), "\" in ", PointerText(path.Prefix(n - 1))));
      }
      const Measure removed = MeasureValue(it->second);
      Grow(MemberOverhead(key) + removed.bytes, 0);
      if (m != nullptr) *m = removed;
      if (out != nullptr) *out = std::move(it->second);
      members.erase(it);
      return std::nullopt;
    }
    if (parent->is_array()) {
      Array& items = parent->items();
      std::optional<size_t> index = ArrayIndex(path, n - 1, items.size(), false, failure);
      if (!index) return failure;
      auto it = items.begin() + static_cast<std::ptrdiff_t>(*index);
      const Measure removed = MeasureValue(*it);
      Grow(kItemOverhead + removed.bytes, 0);
      if (m != nullptr) *m = removed;
      if (out != nullptr) *out = std::move(*it);
      items.erase(it);
      return std::nullopt;
    }
    return NotFound(path, Cat(PointerText(path.Prefix(n - 1)), " is ", KindName(*parent),
                              ", not an object or array"));
  }

  // RFC 6902 §4.3: the target must exist; "" replaces the whole document.
  Result Replace(const Pointer& path, const Value& value) {
    Failure failure;
    Value* target = Resolve(root_, path, path.tokens.size(), failure);
    if (target == nullptr) return failure;
    const Measure m = MeasureValue(value);
    if (path.tokens.size() + m.depth > limits_.max_depth) {
      return Failure{kLimit,
                     Cat("the result would be nested deeper than ", limits_.max_depth, " levels")};
    }
    if (Result f = Grow(MeasureValue(*target).bytes, m.bytes)) return f;
    *target = value;  // `value` is in the patch, never inside the document
    return std::nullopt;
  }

  // RFC 6902 §4.4: remove from `from`, then add at `path` (evaluated after the
  // removal). Moving into a child of `from` was refused when parsing.
  Result Move(const Pointer& from, const Pointer& path) {
    if (from.tokens == path.tokens) {  // a no-op, but `from` must exist
      Failure failure;
      if (Resolve(root_, from, from.tokens.size(), failure) == nullptr) return failure;
      return std::nullopt;
    }
    Value value;
    Measure m;
    if (Result f = Remove(from, &value, &m)) return f;
    return Add(path, m, [&] { return std::move(value); });
  }

  Value& root_;
  const PatchLimits& limits_;
  size_t bytes_;  // MeasureValue(root_).bytes, kept up to date
};

std::string OperationPrefix(size_t index, std::string_view name) {
  if (name.empty()) return Cat("operation ", index, ": ");
  return Cat("operation ", index, " (", name, "): ");
}

}  // namespace

bool JsonEquals(const Value& a, const Value& b) {
  std::vector<std::pair<const Value*, const Value*>> stack;
  stack.emplace_back(&a, &b);
  std::vector<const Member*> xs;
  std::vector<const Member*> ys;
  auto by_key = [](const Member* l, const Member* r) { return l->first < r->first; };
  while (!stack.empty()) {
    auto [x, y] = stack.back();
    stack.pop_back();
    if (x->kind() != y->kind()) return false;
    switch (x->kind()) {
      case Value::Kind::kNull:
        break;
      case Value::Kind::kBool:
        if (x->as_bool() != y->as_bool()) return false;
        break;
      case Value::Kind::kNumber:
        if (!NumbersEqual(x->number_text(), y->number_text())) return false;
        break;
      case Value::Kind::kString:
        if (x->as_string() != y->as_string()) return false;
        break;
      case Value::Kind::kArray: {
        const Array& xi = x->items();
        const Array& yi = y->items();
        if (xi.size() != yi.size()) return false;
        for (size_t i = 0; i < xi.size(); ++i) stack.emplace_back(&xi[i], &yi[i]);
        break;
      }
      case Value::Kind::kObject: {
        const Object& xm = x->members();
        const Object& ym = y->members();
        if (xm.size() != ym.size()) return false;
        xs.clear();
        ys.clear();
        for (const Member& member : xm) xs.push_back(&member);
        for (const Member& member : ym) ys.push_back(&member);
        std::stable_sort(xs.begin(), xs.end(), by_key);
        std::stable_sort(ys.begin(), ys.end(), by_key);
        for (size_t i = 0; i < xs.size(); ++i) {
          if (xs[i]->first != ys[i]->first) return false;
          stack.emplace_back(&xs[i]->second, &ys[i]->second);
        }
        break;
      }
    }
  }
  return true;
}

absl::Status ApplyPatch(const Value& patch, Value& doc, const PatchLimits& limits) {
  if (!patch.is_array()) {
    return Error(kMalformed,
                 Cat("the patch document is ", KindName(patch), ", not an array of operations"));
  }
  const Array& ops = patch.items();
  if (ops.size() > limits.max_operations) {
    return Error(kLimit, Cat("the patch has ", ops.size(), " operations; at most ",
                             limits.max_operations, " are allowed"));
  }
  std::vector<Operation> parsed(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    if (Result f = ParseOperation(ops[i], limits, parsed[i])) {
      return Error(f->code, Cat(OperationPrefix(i, parsed[i].name), f->detail));
    }
  }
  if (parsed.empty()) return absl::OkStatus();
  Value work = doc;
  Patcher patcher(work, limits);
  for (size_t i = 0; i < parsed.size(); ++i) {
    if (Result f = patcher.Apply(parsed[i])) {
      return Error(f->code, Cat(OperationPrefix(i, parsed[i].name), f->detail));
    }
  }
  doc = std::move(work);
  return absl::OkStatus();
}

}  // namespace fhirward::json
