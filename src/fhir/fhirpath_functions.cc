// The FHIRPath function library (N1 §5 and the FHIR R4 additions of fhirpath.html §2.1.9), plus
// the FHIRPath 2.0 string, boundary and sort functions used by the official test suite.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "common/encoding.h"
#include "common/str_cat.h"
#include "fhir/fhirpath.h"
#include "fhir/fhirpath_internal.h"
#include "json/utf8.h"

namespace fhirward::fhir::fhirpath::internal {
namespace {

#define FP_RETURN_IF_ERROR(expr) \
  do {                           \
    absl::Status _st = (expr);   \
    if (!_st.ok()) return _st;   \
  } while (false)

#define FP_ASSIGN_OR_RETURN(lhs, expr)          \
  auto lhs##_or = (expr);                       \
  if (!lhs##_or.ok()) return lhs##_or.status(); \
  auto lhs = std::move(*lhs##_or)

using Status = absl::Status;

// ---- argument helpers

absl::StatusOr<std::optional<Item>> SingleValue(Evaluator& ev, const AstNode& call, Input c,
                                                std::string_view what) {
  if (c.empty()) return std::optional<Item>();
  if (c.size() > 1) {
    return ev.Error(call,
                    Cat(call.name, "() requires a single ", what, ", got ", c.size(), " items"));
  }
  return ToSystem(c[0]);
}

// The input as one String (empty → nullopt); an error for a non-string item.
absl::StatusOr<std::optional<Item>> InputString(Evaluator& ev, const AstNode& call, Input input) {
  if (input.empty()) return std::optional<Item>();
  if (input.size() > 1) {
    return ev.Error(call,
                    Cat(call.name, "() requires a single string, got ", input.size(), " items"));
  }
  auto s = ToSystem(input[0]);
  if (!s || s->kind() != Item::Kind::kString) {
    return ev.Error(call, Cat(call.name, "() requires a string input"));
  }
  return s;
}

absl::StatusOr<std::optional<Item>> ArgString(Evaluator& ev, const AstNode& call, size_t i,
                                              const Frame& frame) {
  Collection c;
  FP_RETURN_IF_ERROR(ev.EvalArg(call, i, frame, &c));
  if (c.empty()) return std::optional<Item>();
  if (c.size() > 1) return ev.Error(call, Cat(call.name, "() argument must be single"));
  auto s = ToSystem(c[0]);
  if (!s || s->kind() != Item::Kind::kString) {
    return ev.Error(call, Cat(call.name, "() argument must be a string"));
  }
  return s;
}

absl::StatusOr<std::optional<int64_t>> ArgInteger(Evaluator& ev, const AstNode& call, size_t i,
                                                  const Frame& frame) {
  Collection c;
  FP_RETURN_IF_ERROR(ev.EvalArg(call, i, frame, &c));
  if (c.empty()) return std::optional<int64_t>();
  if (c.size() > 1) return ev.Error(call, Cat(call.name, "() argument must be single"));
  auto s = ToSystem(c[0]);
  if (!s || s->kind() != Item::Kind::kInteger) {
    return ev.Error(call, Cat(call.name, "() argument must be an Integer"));
  }
  return std::optional<int64_t>(s->integer());
}

Status Push(Collection* out, bool b) {
  out->push_back(Item::MakeBoolean(b));
  return absl::OkStatus();
}

// Boolean of a criteria result: empty → false.
absl::StatusOr<bool> Criteria(Evaluator& ev, Input c) {
  auto b = ev.ToBoolean(c, "a criteria expression");
  if (!b.ok()) return b.status();
  return b->value_or(false);
}

bool ContainsEqual(Input set, const Item& item) {
  for (const Item& x : set) {
    if (ItemEqual(x, item) == Tri::kTrue) return true;
  }
  return false;
}

// ---- existence

Status FnEmpty(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
               Collection* out) {
  return Push(out, input.empty());
}

Status FnExists(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                Collection* out) {
  if (call.args.empty()) return Push(out, !input.empty());
  FP_RETURN_IF_ERROR(ev.Step(input.size()));
  for (size_t i = 0; i < input.size(); ++i) {
    Input one = input.subspan(i, 1);
    Collection r;
    FP_RETURN_IF_ERROR(ev.EvalLambda(call, 0, one, static_cast<int64_t>(i), frame, &r));
    FP_ASSIGN_OR_RETURN(b, Criteria(ev, r));
    if (b) return Push(out, true);
  }
  return Push(out, false);
}

Status FnAll(Evaluator& ev, const AstNode& call, Input input, const Frame& frame, Collection* out) {
  FP_RETURN_IF_ERROR(ev.Step(input.size()));
  for (size_t i = 0; i < input.size(); ++i) {
    Input one = input.subspan(i, 1);
    Collection r;
    FP_RETURN_IF_ERROR(ev.EvalLambda(call, 0, one, static_cast<int64_t>(i), frame, &r));
    FP_ASSIGN_OR_RETURN(b, Criteria(ev, r));
    if (!b) return Push(out, false);
  }
  return Push(out, true);
}

Status BooleanAggregate(Evaluator& ev, const AstNode& call, Input input, Collection* out, bool want,
                        bool all) {
  bool result = all;
  for (const Item& item : input) {
    auto s = ToSystem(item);
    if (!s || s->kind() != Item::Kind::kBoolean) {
      return ev.Error(call, Cat(call.name, "() requires Boolean items"));
    }
    if (all && s->boolean() != want) result = false;
    if (!all && s->boolean() == want) result = true;
  }
  return Push(out, result);
}

Status FnAllTrue(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  return BooleanAggregate(ev, call, input, out, true, true);
}
Status FnAnyTrue(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  return BooleanAggregate(ev, call, input, out, true, false);
}
Status FnAllFalse(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  return BooleanAggregate(ev, call, input, out, false, true);
}
Status FnAnyFalse(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  return BooleanAggregate(ev, call, input, out, false, false);
}

Status FnSubsetOf(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                  Collection* out) {
  Collection other;
  FP_RETURN_IF_ERROR(ev.EvalArg(call, 0, frame, &other));
  FP_RETURN_IF_ERROR(ev.Step(input.size() * std::max<size_t>(other.size(), 1)));
  Input a = call.name == "subsetOf" ? input : Input(other);
  Input b = call.name == "subsetOf" ? Input(other) : input;
  for (const Item& item : a) {
    if (!ContainsEqual(b, item)) return Push(out, false);
  }
  return Push(out, true);
}

Status FnCount(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  out->push_back(Item::MakeInteger(static_cast<int64_t>(input.size())));
  return absl::OkStatus();
}

Status FnDistinct(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  FP_RETURN_IF_ERROR(ev.Step(input.size()));
  Collection c(input.begin(), input.end());
  FP_RETURN_IF_ERROR(ev.Dedupe(&c));
  if (call.name == "isDistinct") return Push(out, c.size() == input.size());
  out->insert(out->end(), c.begin(), c.end());
  return absl::OkStatus();
}

// ---- filtering and projection

Status FnWhere(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
               Collection* out) {
  FP_RETURN_IF_ERROR(ev.Step(input.size()));
  for (size_t i = 0; i < input.size(); ++i) {
    Input one = input.subspan(i, 1);
    Collection r;
    FP_RETURN_IF_ERROR(ev.EvalLambda(call, 0, one, static_cast<int64_t>(i), frame, &r));
    FP_ASSIGN_OR_RETURN(b, Criteria(ev, r));
    if (b) out->push_back(input[i]);
  }
  return absl::OkStatus();
}

Status FnSelect(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                Collection* out) {
  FP_RETURN_IF_ERROR(ev.Step(input.size()));
  for (size_t i = 0; i < input.size(); ++i) {
    Input one = input.subspan(i, 1);
    FP_RETURN_IF_ERROR(ev.EvalLambda(call, 0, one, static_cast<int64_t>(i), frame, out));
    FP_RETURN_IF_ERROR(ev.CheckSize(out->size()));
  }
  return absl::OkStatus();
}

Status FnRepeat(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                Collection* out) {
  // Items already produced are not followed again (equality), so cycles end.
  Deduplicator seen(ev.remaining_steps());
  Collection queue(input.begin(), input.end());
  for (size_t i = 0; i < queue.size(); ++i) {
    uint64_t before = seen.comparisons();
    Collection r;
    Input one(&queue[i], 1);
    FP_RETURN_IF_ERROR(ev.EvalLambda(call, 0, one, static_cast<int64_t>(i), frame, &r));
    for (Item& x : r) {
      bool added;
      if (!seen.Add(x, &added)) {
        return absl::ResourceExhaustedError("fhirpath: evaluation step budget exhausted");
      }
      if (added) queue.push_back(std::move(x));
    }
    FP_RETURN_IF_ERROR(ev.Step(1 + seen.comparisons() - before));
    FP_RETURN_IF_ERROR(ev.CheckSize(seen.kept().size()));
  }
  Collection result = seen.Take();
  out->insert(out->end(), result.begin(), result.end());
  return absl::OkStatus();
}

Status FnOfType(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  for (const Item& item : input) {
    if (ev.TypeMatches(item, call.type, true)) out->push_back(item);
  }
  return absl::OkStatus();
}

Status FnIs(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  auto one = ev.Singleton(input, "is()");
  if (!one.ok()) return one.status();
  if (*one == nullptr) return absl::OkStatus();
  return Push(out, ev.TypeMatches(**one, call.type, false));
}

// as() on several items: an error in strict mode (FHIRPath N1); otherwise the matching items,
// as the R4 invariants expect (dom-3 applies descendants().as(canonical)).
Status FnAs(Evaluator& ev, const AstNode& call, Input input, const Frame& frame, Collection* out) {
  if (input.size() > 1 && ev.env().strict) {
    return ev.Error(call, Cat("as() requires a single item, got ", input.size()));
  }
  return FnOfType(ev, call, input, frame, out);
}

// ---- subsetting and combining

Status FnSingle(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  if (input.size() > 1) return ev.Error(call, "single() on a collection of several items");
  out->insert(out->end(), input.begin(), input.end());
  return absl::OkStatus();
}

Status FnFirst(Evaluator&, const AstNode&, Input input, const Frame&, Collection* out) {
  if (!input.empty()) out->push_back(input.front());
  return absl::OkStatus();
}

Status FnLast(Evaluator&, const AstNode&, Input input, const Frame&, Collection* out) {
  if (!input.empty()) out->push_back(input.back());
  return absl::OkStatus();
}

Status FnTail(Evaluator&, const AstNode&, Input input, const Frame&, Collection* out) {
  if (input.size() > 1) out->insert(out->end(), input.begin() + 1, input.end());
  return absl::OkStatus();
}

Status FnSkipTake(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                  Collection* out) {
  FP_ASSIGN_OR_RETURN(n, ArgInteger(ev, call, 0, frame));
  if (!n) return absl::OkStatus();
  int64_t k = std::clamp<int64_t>(*n, 0, static_cast<int64_t>(input.size()));
  if (call.name == "skip") {
    out->insert(out->end(), input.begin() + k, input.end());
  } else {
    out->insert(out->end(), input.begin(), input.begin() + k);
  }
  return absl::OkStatus();
}

Status FnIntersectExclude(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                          Collection* out) {
  Collection other;
  FP_RETURN_IF_ERROR(ev.EvalArg(call, 0, frame, &other));
  FP_RETURN_IF_ERROR(ev.Step(input.size() * std::max<size_t>(other.size(), 1)));
  bool intersect = call.name == "intersect";
  Collection r;
  for (const Item& item : input) {
    if (ContainsEqual(other, item) == intersect) r.push_back(item);
  }
  if (intersect) FP_RETURN_IF_ERROR(ev.Dedupe(&r));
  out->insert(out->end(), r.begin(), r.end());
  return absl::OkStatus();
}

Status FnUnionCombine(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                      Collection* out) {
  Collection r(input.begin(), input.end());
  FP_RETURN_IF_ERROR(ev.EvalArg(call, 0, frame, &r));
  FP_RETURN_IF_ERROR(ev.CheckSize(r.size()));
  FP_RETURN_IF_ERROR(ev.Step(r.size()));
  if (call.name == "union") FP_RETURN_IF_ERROR(ev.Dedupe(&r));
  out->insert(out->end(), r.begin(), r.end());
  return absl::OkStatus();
}

// ---- conversion

Status FnIif(Evaluator& ev, const AstNode& call, Input input, const Frame& frame, Collection* out) {
  if (input.size() > 1) return ev.Error(call, "iif() on a collection of several items");
  Frame f = frame;
  f.this_ = input;
  Collection c;
  FP_RETURN_IF_ERROR(ev.Eval(*call.args[0], input, f, &c));
  if (c.size() > 1) return ev.Error(call, "iif() criterion must be a single Boolean");
  bool condition = false;
  if (!c.empty()) {
    auto s = ToSystem(c[0]);
    if (!s || s->kind() != Item::Kind::kBoolean) {
      return ev.Error(call, "iif() criterion must be a Boolean");
    }
    condition = s->boolean();
  }
  if (condition) return ev.Eval(*call.args[1], input, f, out);
  if (call.args.size() > 2) return ev.Eval(*call.args[2], input, f, out);
  return absl::OkStatus();
}

bool IsIntegerText(std::string_view s) {
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  return true;
}

bool IsDecimalText(std::string_view s) {
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  size_t digits = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  if (digits == 0) return false;
  if (i < s.size() && s[i] == '.') {
    ++i;
    size_t frac = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++frac;
    if (frac == 0) return false;
  }
  return i == s.size();
}

std::optional<Item> ConvertBoolean(const Item& v) {
  switch (v.kind()) {
    case Item::Kind::kBoolean:
      return v;
    case Item::Kind::kInteger:
      if (v.integer() == 0 || v.integer() == 1) return Item::MakeBoolean(v.integer() == 1);
      return std::nullopt;
    case Item::Kind::kDecimal: {
      int c1 = DecCompare(v.decimal(), Decimal::FromInt(1));
      int c0 = DecCompare(v.decimal(), Decimal::FromInt(0));
      if (c1 == 0 || c0 == 0) return Item::MakeBoolean(c1 == 0);
      return std::nullopt;
    }
    case Item::Kind::kString: {
      std::string s(v.string());
      absl::AsciiStrToLower(&s);
      if (s == "true" || s == "t" || s == "yes" || s == "y" || s == "1" || s == "1.0") {
        return Item::MakeBoolean(true);
      }
      if (s == "false" || s == "f" || s == "no" || s == "n" || s == "0" || s == "0.0") {
        return Item::MakeBoolean(false);
      }
      return std::nullopt;
    }
    default:
      return std::nullopt;
  }
}

std::optional<Item> ConvertInteger(const Item& v) {
  switch (v.kind()) {
    case Item::Kind::kInteger:
      return v;
    case Item::Kind::kBoolean:
      return Item::MakeInteger(v.boolean() ? 1 : 0);
    case Item::Kind::kString: {
      if (!IsIntegerText(v.string())) return std::nullopt;
      auto d = Decimal::Parse(v.string());
      if (!d) return std::nullopt;
      auto i = DecToInt64(*d);
      if (!i || *i > INT32_MAX || *i < INT32_MIN) return std::nullopt;
      return Item::MakeInteger(*i);
    }
    default:
      return std::nullopt;
  }
}

std::optional<Item> ConvertDecimal(const Item& v) {
  switch (v.kind()) {
    case Item::Kind::kDecimal:
      return v;
    case Item::Kind::kInteger:
      return Item::MakeDecimal(Decimal::FromInt(v.integer()));
    case Item::Kind::kBoolean:
      return Item::MakeDecimal(Decimal(v.boolean() ? 10 : 0, 1));
    case Item::Kind::kString: {
      if (!IsDecimalText(v.string())) return std::nullopt;
      auto d = Decimal::Parse(v.string());
      if (!d) return std::nullopt;
      return Item::MakeDecimal(*d);
    }
    default:
      return std::nullopt;
  }
}

std::optional<Item> ConvertString(const Item& v) {
  if (v.kind() == Item::Kind::kString) return v;
  auto s = ItemToString(v);
  if (!s) return std::nullopt;
  return Item::MakeString(std::move(*s));
}

std::optional<Item> ConvertDate(const Item& v) {
  switch (v.kind()) {
    case Item::Kind::kDate:
      return v;
    case Item::Kind::kDateTime:
      return Item::MakeTemporal(TemporalToDate(v.temporal()));
    case Item::Kind::kString: {
      if (auto d = Temporal::ParseDate(v.string())) return Item::MakeTemporal(*d);
      if (auto dt = Temporal::ParseDateTime(v.string())) {
        return Item::MakeTemporal(TemporalToDate(*dt));
      }
      return std::nullopt;
    }
    default:
      return std::nullopt;
  }
}

std::optional<Item> ConvertDateTime(const Item& v) {
  switch (v.kind()) {
    case Item::Kind::kDateTime:
      return v;
    case Item::Kind::kDate: {
      Temporal t = v.temporal();
      t.kind = Temporal::Kind::kDateTime;
      return Item::MakeTemporal(t);
    }
    case Item::Kind::kString:
      if (auto dt = Temporal::ParseDateTime(v.string())) return Item::MakeTemporal(*dt);
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

std::optional<Item> ConvertTime(const Item& v) {
  switch (v.kind()) {
    case Item::Kind::kTime:
      return v;
    case Item::Kind::kString: {
      std::string_view s = v.string();
      if (!s.empty() && s[0] == 'T') s.remove_prefix(1);
      if (auto t = Temporal::ParseTime(s)) return Item::MakeTemporal(*t);
      return std::nullopt;
    }
    default:
      return std::nullopt;
  }
}

std::optional<Quantity> ParseQuantityString(std::string_view s) {
  size_t i = 0;
  while (i < s.size() &&
         (s[i] == '+' || s[i] == '-' || s[i] == '.' || (s[i] >= '0' && s[i] <= '9'))) {
    ++i;
  }
  std::string_view number = s.substr(0, i);
  if (!IsDecimalText(number)) return std::nullopt;
  auto value = Decimal::Parse(number);
  if (!value) return std::nullopt;
  Quantity q;
  q.value = *value;
  std::string_view rest = s.substr(i);
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  if (rest.empty()) return q;
  if (rest.front() == '\'') {
    if (rest.size() < 3 || rest.back() != '\'') return std::nullopt;
    std::string_view unit = rest.substr(1, rest.size() - 2);
    if (unit.find('\'') != std::string_view::npos) return std::nullopt;
    q.unit = std::string(unit);
    return q;
  }
  if (!IsCalendarKeyword(rest)) return std::nullopt;
  q.unit = std::string(rest);
  q.calendar = true;
  return q;
}

std::optional<Item> ConvertQuantityItem(const Item& v) {
  switch (v.kind()) {
    case Item::Kind::kQuantity:
      return v;
    case Item::Kind::kInteger:
    case Item::Kind::kDecimal: {
      Quantity q;
      q.value = v.kind() == Item::Kind::kInteger ? Decimal::FromInt(v.integer()) : v.decimal();
      return Item::MakeQuantity(std::move(q));
    }
    case Item::Kind::kBoolean: {
      Quantity q;
      q.value = Decimal(v.boolean() ? 10 : 0, 1);
      return Item::MakeQuantity(std::move(q));
    }
    case Item::Kind::kString:
      if (auto q = ParseQuantityString(v.string())) return Item::MakeQuantity(std::move(*q));
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

using Converter = std::optional<Item> (*)(const Item&);

Converter ConverterFor(std::string_view name) {
  if (name.ends_with("Boolean")) return ConvertBoolean;
  if (name.ends_with("Integer")) return ConvertInteger;
  if (name.ends_with("Decimal")) return ConvertDecimal;
  if (name.ends_with("String")) return ConvertString;
  if (name.ends_with("DateTime")) return ConvertDateTime;
  if (name.ends_with("Date")) return ConvertDate;
  if (name.ends_with("Time")) return ConvertTime;
  return ConvertQuantityItem;
}

Status FnConvert(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                 Collection* out) {
  if (input.empty()) return absl::OkStatus();
  if (input.size() > 1) {
    return ev.Error(call, Cat(call.name, "() requires a single item, got ", input.size()));
  }
  bool converts = call.name.starts_with("convertsTo");
  auto s = ToSystem(input[0]);
  std::optional<Item> r;
  if (s) r = ConverterFor(call.name)(*s);
  if (r && r->kind() == Item::Kind::kQuantity && !call.args.empty()) {
    FP_ASSIGN_OR_RETURN(unit, ArgString(ev, call, 0, frame));
    if (!unit) return absl::OkStatus();
    const Quantity& q = r->quantity();
    if (q.calendar || q.unit != unit->string()) {
      Quantity target;
      target.unit = std::string(unit->string());
      auto from = QuantityUnit(q);
      auto to = QuantityUnit(target);
      auto v = from && to ? ConvertQuantity(q, *from, *to) : std::nullopt;
      if (v) {
        target.value = *v;
        r = Item::MakeQuantity(std::move(target));
      } else {
        r.reset();
      }
    }
  }
  if (converts) return Push(out, r.has_value());
  if (r) out->push_back(std::move(*r));
  return absl::OkStatus();
}

// ---- strings

std::string_view CodePointPrefix(std::string_view s, size_t n) {
  size_t i = 0, count = 0;
  while (i < s.size() && count < n) {
    ++i;
    while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
    ++count;
  }
  return s.substr(0, i);
}

std::vector<std::string_view> CodePoints(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t start = i++;
    while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
    out.push_back(s.substr(start, i - start));
  }
  return out;
}

Status CheckString(Evaluator& ev, size_t n) {
  if (n > ev.env().limits.max_string_bytes) {
    return absl::ResourceExhaustedError("fhirpath: string result too large");
  }
  return absl::OkStatus();
}

Status FnIndexOf(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                 Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  FP_ASSIGN_OR_RETURN(sub, ArgString(ev, call, 0, frame));
  if (!s || !sub) return absl::OkStatus();
  size_t pos = s->string().find(sub->string());
  int64_t r = pos == std::string_view::npos
                  ? -1
                  : static_cast<int64_t>(Utf8Length(s->string().substr(0, pos)));
  out->push_back(Item::MakeInteger(r));
  return absl::OkStatus();
}

Status FnSubstring(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                   Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  FP_ASSIGN_OR_RETURN(start, ArgInteger(ev, call, 0, frame));
  if (!s || !start) return absl::OkStatus();
  std::optional<int64_t> length;
  if (call.args.size() > 1) {
    FP_ASSIGN_OR_RETURN(l, ArgInteger(ev, call, 1, frame));
    length = l;
  }
  int64_t n = static_cast<int64_t>(Utf8Length(s->string()));
  if (*start < 0 || *start >= n) return absl::OkStatus();
  std::string_view tail = s->string().substr(CodePointPrefix(s->string(), *start).size());
  if (length) tail = CodePointPrefix(tail, static_cast<size_t>(std::max<int64_t>(*length, 0)));
  out->push_back(Item::MakeString(std::string(tail)));
  return absl::OkStatus();
}

Status FnStringTest(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                    Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  FP_ASSIGN_OR_RETURN(arg, ArgString(ev, call, 0, frame));
  if (!s || !arg) return absl::OkStatus();
  std::string_view a = s->string(), b = arg->string();
  if (call.name == "startsWith") return Push(out, a.starts_with(b));
  if (call.name == "endsWith") return Push(out, a.ends_with(b));
  return Push(out, a.find(b) != std::string_view::npos);
}

Status FnCase(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  if (!s) return absl::OkStatus();
  std::string r(s->string());
  if (call.name == "upper") {
    absl::AsciiStrToUpper(&r);
  } else if (call.name == "lower") {
    absl::AsciiStrToLower(&r);
  } else {
    r = std::string(absl::StripAsciiWhitespace(r));
  }
  out->push_back(Item::MakeString(std::move(r)));
  return absl::OkStatus();
}

Status FnReplace(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                 Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  FP_ASSIGN_OR_RETURN(pattern, ArgString(ev, call, 0, frame));
  FP_ASSIGN_OR_RETURN(sub, ArgString(ev, call, 1, frame));
  if (!s || !pattern || !sub) return absl::OkStatus();
  std::string_view text = s->string(), p = pattern->string(), r = sub->string();
  std::string result;
  if (p.empty()) {
    auto cps = CodePoints(text);
    FP_RETURN_IF_ERROR(CheckString(ev, text.size() + (cps.size() + 1) * r.size()));
    result.append(r);
    for (std::string_view cp : cps) {
      result.append(cp);
      result.append(r);
    }
  } else {
    size_t pos = 0;
    while (true) {
      size_t hit = text.find(p, pos);
      if (hit == std::string_view::npos) break;
      result.append(text.substr(pos, hit - pos));
      result.append(r);
      FP_RETURN_IF_ERROR(CheckString(ev, result.size()));
      pos = hit + p.size();
    }
    result.append(text.substr(pos));
  }
  FP_RETURN_IF_ERROR(CheckString(ev, result.size()));
  out->push_back(Item::MakeString(std::move(result)));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const std::regex>> RegexArg(Evaluator& ev, const AstNode& call,
                                                           const Frame& frame, bool* empty) {
  *empty = false;
  if (call.regex) return call.regex;
  FP_ASSIGN_OR_RETURN(pattern, ArgString(ev, call, 0, frame));
  if (!pattern) {
    *empty = true;
    return std::shared_ptr<const std::regex>();
  }
  auto re = CompileRegex(pattern->string(), ev.env().limits.max_regex_pattern_bytes,
                         call.name == "matches");
  if (!re.ok()) return ev.Error(call, std::string(re.status().message()));
  return re;
}

Status CheckRegexInput(Evaluator& ev, std::string_view s) {
  if (s.size() > ev.env().limits.max_regex_input_bytes) {
    return absl::ResourceExhaustedError("fhirpath: text too long for a regular expression");
  }
  return ev.Step(s.size() + 1);
}

Status FnMatches(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                 Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  bool empty;
  FP_ASSIGN_OR_RETURN(re, RegexArg(ev, call, frame, &empty));
  if (!s || empty) return absl::OkStatus();
  FP_RETURN_IF_ERROR(CheckRegexInput(ev, s->string()));
  std::string_view text = s->string();
  try {
    bool m = call.name == "matchesFull" ? std::regex_match(text.begin(), text.end(), *re)
                                        : std::regex_search(text.begin(), text.end(), *re);
    return Push(out, m);
  } catch (const std::exception&) {
    return absl::ResourceExhaustedError("fhirpath: regular expression too complex for its input");
  }
}

Status FnReplaceMatches(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                        Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  bool empty;
  FP_ASSIGN_OR_RETURN(re, RegexArg(ev, call, frame, &empty));
  FP_ASSIGN_OR_RETURN(sub, ArgString(ev, call, 1, frame));
  if (!s || empty || !sub) return absl::OkStatus();
  if (!call.regex) {
    // An empty pattern matches nowhere useful: the input is returned unchanged.
    FP_ASSIGN_OR_RETURN(pattern, ArgString(ev, call, 0, frame));
    if (pattern && pattern->string().empty()) {
      out->push_back(*s);
      return absl::OkStatus();
    }
  } else if (call.args[0]->literal.string().empty()) {
    out->push_back(*s);
    return absl::OkStatus();
  }
  FP_RETURN_IF_ERROR(CheckRegexInput(ev, s->string()));
  std::string_view text = s->string();
  std::string result;
  try {
    std::regex_replace(std::back_inserter(result), text.begin(), text.end(), *re,
                       std::string(sub->string()));
  } catch (const std::exception&) {
    return absl::ResourceExhaustedError("fhirpath: regular expression too complex for its input");
  }
  FP_RETURN_IF_ERROR(CheckString(ev, result.size()));
  out->push_back(Item::MakeString(std::move(result)));
  return absl::OkStatus();
}

Status FnLength(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  if (s) out->push_back(Item::MakeInteger(static_cast<int64_t>(Utf8Length(s->string()))));
  return absl::OkStatus();
}

Status FnToChars(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  if (!s) return absl::OkStatus();
  auto cps = CodePoints(s->string());
  FP_RETURN_IF_ERROR(ev.CheckSize(out->size() + cps.size()));
  for (std::string_view cp : cps) out->push_back(Item::MakeString(std::string(cp)));
  return absl::OkStatus();
}

Status FnSplit(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
               Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  FP_ASSIGN_OR_RETURN(sep, ArgString(ev, call, 0, frame));
  if (!s || !sep) return absl::OkStatus();
  std::string_view text = s->string(), p = sep->string();
  if (p.empty()) return FnToChars(ev, call, input, frame, out);
  size_t pos = 0;
  while (true) {
    FP_RETURN_IF_ERROR(ev.CheckSize(out->size() + 1));
    size_t hit = text.find(p, pos);
    if (hit == std::string_view::npos) {
      out->push_back(Item::MakeString(std::string(text.substr(pos))));
      return absl::OkStatus();
    }
    out->push_back(Item::MakeString(std::string(text.substr(pos, hit - pos))));
    pos = hit + p.size();
  }
}

Status FnJoin(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
              Collection* out) {
  std::string sep;
  if (!call.args.empty()) {
    FP_ASSIGN_OR_RETURN(s, ArgString(ev, call, 0, frame));
    if (s) sep = std::string(s->string());
  }
  std::string result;
  for (size_t i = 0; i < input.size(); ++i) {
    auto s = ToSystem(input[i]);
    if (!s || s->kind() != Item::Kind::kString) return ev.Error(call, "join() requires strings");
    if (i) result += sep;
    result.append(s->string());
    FP_RETURN_IF_ERROR(CheckString(ev, result.size()));
  }
  out->push_back(Item::MakeString(std::move(result)));
  return absl::OkStatus();
}

Status FnEncode(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  FP_ASSIGN_OR_RETURN(format, ArgString(ev, call, 0, frame));
  if (!s || !format) return absl::OkStatus();
  std::string_view f = format->string();
  std::string text(s->string());
  std::optional<std::string> r;
  bool encode = call.name == "encode";
  if (f == "hex") {
    r = encode ? std::optional<std::string>(HexEncode(text))
               : HexDecode(absl::AsciiStrToLower(text));
  } else if (f == "base64" || f == "urlbase64") {
    if (encode) {
      r = Base64Encode(text);
      if (f == "urlbase64")
        std::replace(r->begin(), r->end(), '+', '-'), std::replace(r->begin(), r->end(), '/', '_');
    } else {
      if (f == "urlbase64")
        std::replace(text.begin(), text.end(), '-', '+'),
            std::replace(text.begin(), text.end(), '_', '/');
      r = Base64Decode(text);
    }
  } else {
    return ev.Error(call, Cat("unknown encoding '", f, "'"));
  }
  if (!r) return absl::OkStatus();
  FP_RETURN_IF_ERROR(CheckString(ev, r->size()));
  out->push_back(Item::MakeString(std::move(*r)));
  return absl::OkStatus();
}

std::string EscapeHtml(std::string_view s) {
  std::string r;
  for (char c : s) {
    switch (c) {
      case '&':
        r += "&amp;";
        break;
      case '<':
        r += "&lt;";
        break;
      case '>':
        r += "&gt;";
        break;
      case '"':
        r += "&quot;";
        break;
      case '\'':
        r += "&#39;";
        break;
      default:
        r.push_back(c);
    }
  }
  return r;
}

std::string UnescapeHtml(std::string_view s) {
  std::string r;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      r.push_back(s[i]);
      continue;
    }
    size_t semi = s.find(';', i);
    if (semi == std::string_view::npos || semi - i > 10) {
      r.push_back(s[i]);
      continue;
    }
    std::string_view e = s.substr(i + 1, semi - i - 1);
    std::optional<uint32_t> cp;
    if (e == "amp")
      cp = '&';
    else if (e == "lt")
      cp = '<';
    else if (e == "gt")
      cp = '>';
    else if (e == "quot")
      cp = '"';
    else if (e == "apos")
      cp = '\'';
    else if (e.size() > 1 && e[0] == '#') {
      bool hex = e[1] == 'x' || e[1] == 'X';
      std::string digits(e.substr(hex ? 2 : 1));
      char* end = nullptr;
      unsigned long v = std::strtoul(digits.c_str(), &end, hex ? 16 : 10);
      if (!digits.empty() && end && *end == '\0' && v < 0x110000) cp = static_cast<uint32_t>(v);
    }
    if (!cp) {
      r.push_back(s[i]);
      continue;
    }
    json::internal::AppendUtf8(r, *cp);
    i = semi;
  }
  return r;
}

std::string EscapeJson(std::string_view s) {
  std::string r;
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        r += "\\\"";
        break;
      case '\\':
        r += "\\\\";
        break;
      case '\n':
        r += "\\n";
        break;
      case '\r':
        r += "\\r";
        break;
      case '\t':
        r += "\\t";
        break;
      case '\b':
        r += "\\b";
        break;
      case '\f':
        r += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          r += buf;
        } else {
          r.push_back(static_cast<char>(c));
        }
    }
  }
  return r;
}

std::string UnescapeJson(std::string_view s) {
  std::string r;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 >= s.size()) {
      r.push_back(s[i]);
      continue;
    }
    char e = s[++i];
    switch (e) {
      case 'n':
        r.push_back('\n');
        break;
      case 'r':
        r.push_back('\r');
        break;
      case 't':
        r.push_back('\t');
        break;
      case 'b':
        r.push_back('\b');
        break;
      case 'f':
        r.push_back('\f');
        break;
      case 'u':
        if (i + 4 < s.size()) {
          std::string hex(s.substr(i + 1, 4));
          char* end = nullptr;
          unsigned long v = std::strtoul(hex.c_str(), &end, 16);
          if (end && *end == '\0') {
            json::internal::AppendUtf8(r, static_cast<uint32_t>(v));
            i += 4;
            break;
          }
        }
        r.push_back('u');
        break;
      default:
        r.push_back(e);
    }
  }
  return r;
}

Status FnEscape(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                Collection* out) {
  FP_ASSIGN_OR_RETURN(s, InputString(ev, call, input));
  FP_ASSIGN_OR_RETURN(format, ArgString(ev, call, 0, frame));
  if (!s || !format) return absl::OkStatus();
  std::string_view f = format->string();
  bool escape = call.name == "escape";
  std::string r;
  if (f == "html") {
    r = escape ? EscapeHtml(s->string()) : UnescapeHtml(s->string());
  } else if (f == "json") {
    r = escape ? EscapeJson(s->string()) : UnescapeJson(s->string());
  } else {
    return ev.Error(call, Cat("unknown escape format '", f, "'"));
  }
  FP_RETURN_IF_ERROR(CheckString(ev, r.size()));
  out->push_back(Item::MakeString(std::move(r)));
  return absl::OkStatus();
}

// ---- math

absl::StatusOr<std::optional<Item>> NumberInput(Evaluator& ev, const AstNode& call, Input input,
                                                bool allow_quantity) {
  FP_ASSIGN_OR_RETURN(v, SingleValue(ev, call, input, "number"));
  if (!v) return std::optional<Item>();
  Item::Kind k = v->kind();
  if (k == Item::Kind::kInteger || k == Item::Kind::kDecimal ||
      (allow_quantity && k == Item::Kind::kQuantity)) {
    return v;
  }
  return ev.Error(call, Cat(call.name, "() requires a number"));
}

Decimal ToDec(const Item& v) {
  return v.kind() == Item::Kind::kInteger ? Decimal::FromInt(v.integer()) : v.decimal();
}

Status FnAbs(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  FP_ASSIGN_OR_RETURN(v, NumberInput(ev, call, input, true));
  if (!v) return absl::OkStatus();
  if (v->kind() == Item::Kind::kInteger) {
    if (v->integer() != INT64_MIN) out->push_back(Item::MakeInteger(std::abs(v->integer())));
  } else if (v->kind() == Item::Kind::kDecimal) {
    const Decimal& d = v->decimal();
    out->push_back(Item::MakeDecimal(d.is_negative() ? DecNegate(d) : d));
  } else {
    Quantity q = v->quantity();
    if (q.value.is_negative()) q.value = DecNegate(q.value);
    out->push_back(Item::MakeQuantity(std::move(q)));
  }
  return absl::OkStatus();
}

Status FnRoundTo(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  FP_ASSIGN_OR_RETURN(v, NumberInput(ev, call, input, false));
  if (!v) return absl::OkStatus();
  if (v->kind() == Item::Kind::kInteger) {
    out->push_back(*v);
    return absl::OkStatus();
  }
  Rounding mode = call.name == "ceiling" ? Rounding::kCeiling
                  : call.name == "floor" ? Rounding::kFloor
                                         : Rounding::kTruncate;
  auto r = DecRescale(v->decimal(), 0, mode);
  auto i = r ? DecToInt64(*r) : std::nullopt;
  if (i) out->push_back(Item::MakeInteger(*i));
  return absl::OkStatus();
}

Status FnRound(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
               Collection* out) {
  FP_ASSIGN_OR_RETURN(v, NumberInput(ev, call, input, false));
  int64_t precision = 0;
  if (!call.args.empty()) {
    FP_ASSIGN_OR_RETURN(p, ArgInteger(ev, call, 0, frame));
    if (!p) return absl::OkStatus();
    if (*p < 0) return ev.Error(call, "round() precision must not be negative");
    precision = *p;
  }
  if (!v) return absl::OkStatus();
  auto r = DecRescale(ToDec(*v), static_cast<int>(std::min<int64_t>(precision, 38)),
                      Rounding::kHalfAwayFromZero);
  if (r) out->push_back(Item::MakeDecimal(*r));
  return absl::OkStatus();
}

Status FnMathDouble(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                    Collection* out) {
  FP_ASSIGN_OR_RETURN(v, NumberInput(ev, call, input, false));
  std::optional<Item> arg;
  if (!call.args.empty()) {
    Collection c;
    FP_RETURN_IF_ERROR(ev.EvalArg(call, 0, frame, &c));
    FP_ASSIGN_OR_RETURN(a, NumberInput(ev, call, c, false));
    if (!a) return absl::OkStatus();
    arg = a;
  }
  if (!v) return absl::OkStatus();
  std::string_view name = call.name;
  if (name == "power" && arg->kind() == Item::Kind::kInteger && arg->integer() >= 0 &&
      v->kind() == Item::Kind::kInteger) {
    // Integer ^ Integer is an Integer, empty when it does not fit.
    int64_t base = v->integer(), e = arg->integer(), r = 1;
    if (base == 0 || base == 1) {
      r = e == 0 ? 1 : base;
    } else if (base == -1) {
      r = e % 2 == 0 ? 1 : -1;
    } else {
      for (int64_t k = 0; k < e; ++k) {
        if (__builtin_mul_overflow(r, base, &r)) return absl::OkStatus();
      }
    }
    out->push_back(Item::MakeInteger(r));
    return absl::OkStatus();
  }
  if (name == "power" && arg->kind() == Item::Kind::kInteger && arg->integer() >= 0 &&
      arg->integer() <= 64) {
    // Exact for whole exponents.
    std::optional<Decimal> r = Decimal::FromInt(1);
    for (int64_t k = 0; k < arg->integer() && r; ++k) r = DecMul(*r, v->decimal());
    if (r) out->push_back(Item::MakeDecimal(*r));
    return absl::OkStatus();
  }
  double x = ToDec(*v).ToDouble();
  double r;
  if (name == "exp")
    r = std::exp(x);
  else if (name == "ln")
    r = x > 0 ? std::log(x) : NAN;
  else if (name == "sqrt")
    r = x >= 0 ? std::sqrt(x) : NAN;
  else if (name == "log") {
    double b = ToDec(*arg).ToDouble();
    r = x > 0 && b > 0 && b != 1 ? std::log(x) / std::log(b) : NAN;
  } else {
    r = std::pow(x, ToDec(*arg).ToDouble());
  }
  if (auto d = DecFromDouble(r)) out->push_back(Item::MakeDecimal(*d));
  return absl::OkStatus();
}

// ---- tree and utility

Status FnChildren(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  FP_RETURN_IF_ERROR(ev.Step(input.size()));
  for (const Item& item : input) FP_RETURN_IF_ERROR(ev.Children(item, out));
  return absl::OkStatus();
}

Status FnDescendants(Evaluator& ev, const AstNode& call, Input input, const Frame&,
                     Collection* out) {
  return ev.Descendants(input, out);
}

Status FnTrace(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
               Collection* out) {
  // Without a hook, trace() is the identity: its arguments are not even evaluated (the R4
  // invariants dom-3 and ref-1 trace on every resource and reference).
  if (ev.env().trace) {
    FP_ASSIGN_OR_RETURN(name, ArgString(ev, call, 0, frame));
    std::string_view n = name ? name->string() : std::string_view();
    if (call.args.size() > 1) {
      Collection projected;
      for (size_t i = 0; i < input.size(); ++i) {
        Input one = input.subspan(i, 1);
        FP_RETURN_IF_ERROR(ev.EvalLambda(call, 1, one, static_cast<int64_t>(i), frame, &projected));
      }
      ev.env().trace(n, projected);
    } else {
      ev.env().trace(n, Collection(input.begin(), input.end()));
    }
  }
  out->insert(out->end(), input.begin(), input.end());
  return absl::OkStatus();
}

Status FnNow(Evaluator& ev, const AstNode& call, Input, const Frame&, Collection* out) {
  Temporal t = ev.Now();
  if (call.name == "today") {
    t = TemporalToDate(t);
  } else if (call.name == "timeOfDay") {
    t.kind = Temporal::Kind::kTime;
    t.has_tz = false;
  }
  out->push_back(Item::MakeTemporal(t));
  return absl::OkStatus();
}

Status FnType(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  for (const Item& item : input) {
    if (item.is_node()) {
      if (item.node().type) out->push_back(Item::MakeTypeInfo("FHIR", item.node().type->name));
    } else {
      out->push_back(Item::MakeTypeInfo("System", KindName(item.kind())));
    }
  }
  return absl::OkStatus();
}

Status FnNot(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  auto b = ev.ToBoolean(input, "not()");
  if (!b.ok()) return b.status();
  if (*b) out->push_back(Item::MakeBoolean(!**b));
  return absl::OkStatus();
}

Status FnAggregate(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                   Collection* out) {
  Collection total;
  if (call.args.size() > 1) FP_RETURN_IF_ERROR(ev.EvalArg(call, 1, frame, &total));
  FP_RETURN_IF_ERROR(ev.Step(input.size()));
  for (size_t i = 0; i < input.size(); ++i) {
    Input one = input.subspan(i, 1);
    Collection next;
    Frame f = frame;
    f.this_ = one;
    f.index = static_cast<int64_t>(i);
    f.total = &total;
    FP_RETURN_IF_ERROR(ev.Eval(*call.args[0], one, f, &next));
    FP_RETURN_IF_ERROR(ev.CheckSize(next.size()));
    total = std::move(next);
  }
  out->insert(out->end(), total.begin(), total.end());
  return absl::OkStatus();
}

Status FnSort(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
              Collection* out) {
  size_t nkeys = std::max<size_t>(call.args.size(), 1);
  std::vector<std::vector<std::optional<Item>>> keys(input.size());
  FP_RETURN_IF_ERROR(ev.Step(input.size() * nkeys));
  for (size_t i = 0; i < input.size(); ++i) {
    for (size_t k = 0; k < call.args.size(); ++k) {
      Input one = input.subspan(i, 1);
      Collection r;
      FP_RETURN_IF_ERROR(ev.EvalLambda(call, k, one, static_cast<int64_t>(i), frame, &r));
      if (r.size() > 1) return ev.Error(call, "sort() key must be a single item");
      keys[i].push_back(r.empty() ? std::nullopt : ToSystem(r[0]));
    }
    if (call.args.empty()) keys[i].push_back(ToSystem(input[i]));
  }
  std::vector<size_t> order(input.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  Status error;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    for (size_t k = 0; k < nkeys; ++k) {
      bool desc = k < call.args.size() && call.args[k]->descending;
      const auto& x = keys[a][k];
      const auto& y = keys[b][k];
      int c;
      if (!x || !y) {
        c = x ? -1 : y ? 1 : 0;  // empty keys sort last, first when descending
      } else {
        auto r = ItemCompare(*x, *y);
        if (!r.ok()) {
          if (error.ok()) error = r.status();
          return false;
        }
        c = r->value_or(0);
      }
      if (desc) c = -c;
      if (c != 0) return c < 0;
    }
    return false;
  });
  if (!error.ok()) return ev.Error(call, std::string(error.message()));
  for (size_t i : order) out->push_back(input[i]);
  return absl::OkStatus();
}

// ---- boundaries and precision (FHIRPath 2.0)

std::optional<Decimal> DecimalBoundary(const Decimal& x, int64_t p, bool high) {
  if (p < 0 || p > 31) return std::nullopt;
  if (x.is_negative()) {
    auto r = DecimalBoundary(DecNegate(x), p, !high);
    if (!r) return std::nullopt;
    return DecNegate(*r);
  }
  Decimal half(5, x.scale() + 1);
  auto v = high ? DecAdd(x, half) : DecSub(x, half);
  if (!v) return std::nullopt;
  return DecRescale(*v, static_cast<int>(p),
                    high ? Rounding::kHalfAwayFromZero : Rounding::kTruncate);
}

int TemporalDigits(const Temporal& t) {
  static constexpr int kDateDigits[] = {4, 6, 8, 10, 12, 14, 17};
  static constexpr int kTimeDigits[] = {0, 0, 0, 2, 4, 6, 9};
  return t.kind == Temporal::Kind::kTime ? kTimeDigits[t.precision] : kDateDigits[t.precision];
}

std::optional<Temporal::Precision> PrecisionForDigits(const Temporal& t, int64_t digits) {
  for (int p = Temporal::kYear; p <= Temporal::kMillisecond; ++p) {
    Temporal probe = t;
    probe.precision = static_cast<Temporal::Precision>(p);
    if (t.kind == Temporal::Kind::kDate && p > Temporal::kDay) break;
    if (t.kind == Temporal::Kind::kTime && p < Temporal::kHour) continue;
    if (TemporalDigits(probe) == digits) return probe.precision;
  }
  return std::nullopt;
}

std::optional<Temporal> TemporalBoundary(const Temporal& t0, std::optional<int64_t> digits,
                                         bool high) {
  Temporal t = t0;
  if (t.kind == Temporal::Kind::kDateTime && t.precision == Temporal::kHour) {
    t.precision = Temporal::kMinute;  // FHIR has no hour-only time: 08 is read as 08:00
  }
  Temporal::Precision target =
      t.kind == Temporal::Kind::kDate ? Temporal::kDay : Temporal::kMillisecond;
  if (digits) {
    auto p = PrecisionForDigits(t, *digits);
    if (!p) return std::nullopt;
    target = *p;
  }
  Temporal r = t;
  for (int p = t.precision + 1; p <= target; ++p) {
    switch (p) {
      case Temporal::kMonth:
        r.month = high ? 12 : 1;
        break;
      case Temporal::kDay: {
        static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        int y = r.year;
        bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        r.day = high ? static_cast<uint8_t>(r.month == 2 && leap ? 29 : kDays[r.month - 1]) : 1;
        break;
      }
      case Temporal::kHour:
        r.hour = high ? 23 : 0;
        break;
      case Temporal::kMinute:
        r.minute = high ? 59 : 0;
        break;
      case Temporal::kSecond:
        r.second = high ? 59 : 0;
        break;
      case Temporal::kMillisecond:
        r.millisecond = high ? 999 : 0;
        break;
    }
  }
  r.precision = target;
  if (r.kind == Temporal::Kind::kDateTime && target > Temporal::kDay && !r.has_tz) {
    r.has_tz = true;
    r.tz_minutes = high ? -12 * 60 : 14 * 60;
  }
  return r;
}

Status FnBoundary(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                  Collection* out) {
  FP_ASSIGN_OR_RETURN(v, SingleValue(ev, call, input, "value"));
  std::optional<int64_t> digits;
  if (!call.args.empty()) {
    FP_ASSIGN_OR_RETURN(p, ArgInteger(ev, call, 0, frame));
    if (!p) return absl::OkStatus();
    digits = p;
  }
  if (!v) return absl::OkStatus();
  bool high = call.name == "highBoundary";
  switch (v->kind()) {
    case Item::Kind::kInteger:
    case Item::Kind::kDecimal: {
      if (auto d = DecimalBoundary(ToDec(*v), digits.value_or(8), high)) {
        out->push_back(Item::MakeDecimal(*d));
      }
      return absl::OkStatus();
    }
    case Item::Kind::kQuantity: {
      Quantity q = v->quantity();
      auto d = DecimalBoundary(q.value, digits.value_or(8), high);
      if (!d) return absl::OkStatus();
      q.value = *d;
      out->push_back(Item::MakeQuantity(std::move(q)));
      return absl::OkStatus();
    }
    case Item::Kind::kDate:
    case Item::Kind::kDateTime:
    case Item::Kind::kTime:
      if (auto t = TemporalBoundary(v->temporal(), digits, high)) {
        out->push_back(Item::MakeTemporal(*t));
      }
      return absl::OkStatus();
    default:
      return ev.Error(call, Cat(call.name, "() requires a number, quantity or date"));
  }
}

Status FnPrecision(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  FP_ASSIGN_OR_RETURN(v, SingleValue(ev, call, input, "value"));
  if (!v) return absl::OkStatus();
  switch (v->kind()) {
    case Item::Kind::kInteger:
      out->push_back(Item::MakeInteger(0));
      break;
    case Item::Kind::kDecimal:
      out->push_back(Item::MakeInteger(v->decimal().scale()));
      break;
    case Item::Kind::kDate:
    case Item::Kind::kDateTime:
    case Item::Kind::kTime:
      out->push_back(Item::MakeInteger(TemporalDigits(v->temporal())));
      break;
    default:
      return ev.Error(call, "precision() requires a number or a date/time");
  }
  return absl::OkStatus();
}

Status FnComparable(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                    Collection* out) {
  FP_ASSIGN_OR_RETURN(v, SingleValue(ev, call, input, "quantity"));
  Collection c;
  FP_RETURN_IF_ERROR(ev.EvalArg(call, 0, frame, &c));
  FP_ASSIGN_OR_RETURN(w, SingleValue(ev, call, c, "quantity"));
  if (!v || !w) return absl::OkStatus();
  if (v->kind() != Item::Kind::kQuantity || w->kind() != Item::Kind::kQuantity) {
    return ev.Error(call, "comparable() requires quantities");
  }
  auto a = QuantityUnit(v->quantity()), b = QuantityUnit(w->quantity());
  return Push(out, a && b && SameDims(*a, *b));
}

// ---- FHIR additions (http://hl7.org/fhir/R4/fhirpath.html#functions)

Status FnExtension(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                   Collection* out) {
  FP_ASSIGN_OR_RETURN(url, ArgString(ev, call, 0, frame));
  if (!url) return absl::OkStatus();
  FP_RETURN_IF_ERROR(ev.Step(input.size()));
  for (const Item& item : input) {
    Collection extensions;
    FP_RETURN_IF_ERROR(ev.Member(item, "extension", &extensions));
    for (const Item& e : extensions) {
      const json::Value* v = e.node().value;
      if (v == nullptr || !v->is_object()) continue;
      auto u = v->GetString("url");
      if (u && *u == url->string()) out->push_back(e);
    }
  }
  return absl::OkStatus();
}

bool IsPrimitiveWithValue(const Item& item) {
  if (!item.is_node()) return true;
  const Item::Node& n = item.node();
  if (n.value == nullptr || n.value->is_object() || n.value->is_array()) return false;
  return n.type == nullptr || IsPrimitiveType(n.type);
}

Status FnHasValue(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  return Push(out, input.size() == 1 && IsPrimitiveWithValue(input[0]));
}

Status FnGetValue(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  if (input.size() == 1 && IsPrimitiveWithValue(input[0])) {
    if (auto s = ToSystem(input[0])) out->push_back(std::move(*s));
  }
  return absl::OkStatus();
}

// The resource `ref` points to within the resource, its container or the Bundle.
const json::Value* ResolveReference(const Environment& env, std::string_view ref) {
  if (ref.empty()) return nullptr;
  const json::Value* candidates[] = {env.resource, env.root_resource};
  if (ref[0] == '#') {
    std::string_view id = ref.substr(1);
    for (const json::Value* r : candidates) {
      if (r == nullptr || !r->is_object()) continue;
      if (id.empty()) return r;
      const json::Value* contained = r->Find("contained");
      if (contained == nullptr || !contained->is_array()) continue;
      for (const json::Value& c : contained->items()) {
        if (c.is_object() && c.GetString("id") == id) return &c;
      }
    }
    return nullptr;
  }
  // "Type/id" (optionally with _history) at the end of the reference.
  std::string_view type_id = ref;
  if (size_t h = type_id.find("/_history/"); h != std::string_view::npos) {
    type_id = type_id.substr(0, h);
  }
  std::string_view tail = type_id;
  size_t slash = tail.rfind('/');
  std::string_view id, type;
  if (slash != std::string_view::npos) {
    id = tail.substr(slash + 1);
    std::string_view before = tail.substr(0, slash);
    size_t s2 = before.rfind('/');
    type = s2 == std::string_view::npos ? before : before.substr(s2 + 1);
  }
  for (const json::Value* r : candidates) {
    if (r == nullptr || !r->is_object() || r->GetString("resourceType") != "Bundle") continue;
    const json::Value* entries = r->Find("entry");
    if (entries == nullptr || !entries->is_array()) continue;
    for (const json::Value& e : entries->items()) {
      if (!e.is_object()) continue;
      const json::Value* res = e.Find("resource");
      if (res == nullptr || !res->is_object()) continue;
      auto full = e.GetString("fullUrl");
      if (full && (*full == ref || *full == type_id)) return res;
      if (!type.empty() && res->GetString("resourceType") == type && res->GetString("id") == id) {
        // A relative reference matches; an absolute one only when the fullUrl agrees.
        bool absolute = ref.find("://") != std::string_view::npos;
        if (!absolute || !full) return res;
      }
    }
  }
  return nullptr;
}

Status FnResolve(Evaluator& ev, const AstNode& call, Input input, const Frame&, Collection* out) {
  FP_RETURN_IF_ERROR(ev.Step(input.size()));
  for (const Item& item : input) {
    std::string_view ref;
    if (item.is_node() && item.node().value && item.node().value->is_object()) {
      if (auto r = item.node().value->GetString("reference")) ref = *r;
    } else if (auto s = ToSystem(item); s && s->kind() == Item::Kind::kString) {
      ref = s->string();
    }
    if (const json::Value* r = ResolveReference(ev.env(), ref)) out->push_back(Item::Resource(*r));
  }
  return absl::OkStatus();
}

Status FnConformsTo(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                    Collection* out) {
  FP_ASSIGN_OR_RETURN(url, ArgString(ev, call, 0, frame));
  auto one = ev.Singleton(input, "conformsTo()");
  if (!one.ok()) return one.status();
  if (!url || *one == nullptr || !(*one)->is_node()) return absl::OkStatus();
  constexpr std::string_view kCore = "http://hl7.org/fhir/StructureDefinition/";
  std::string_view u = url->string();
  if (!u.starts_with(kCore)) return absl::OkStatus();  // profiles are not known here
  const TypeDef* type = ev.model().FindType(u.substr(kCore.size()));
  if (type == nullptr) return absl::OkStatus();
  TypeSpec spec;
  spec.fhir = type;
  return Push(out, ev.TypeMatches(**one, spec, false));
}

Status FnMemberOf(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                  Collection* out) {
  FP_ASSIGN_OR_RETURN(url, ArgString(ev, call, 0, frame));
  auto one = ev.Singleton(input, "memberOf()");
  if (!one.ok()) return one.status();
  if (!url || *one == nullptr) return absl::OkStatus();
  const ValueSetExpansion* vs = ev.model().FindValueSet(url->string());
  if (vs == nullptr || !vs->complete) return absl::OkStatus();  // unknown: no verdict
  const Item& item = **one;
  auto coding_in = [&](const json::Value& c) {
    auto code = c.GetString("code");
    if (!code) return false;
    return vs->Contains(c.GetString("system").value_or(""), *code);
  };
  if (item.is_node() && item.node().value && item.node().value->is_object()) {
    const json::Value& v = *item.node().value;
    if (const json::Value* codings = v.Find("coding"); codings && codings->is_array()) {
      for (const json::Value& c : codings->items()) {
        if (c.is_object() && coding_in(c)) return Push(out, true);
      }
      return Push(out, false);
    }
    return Push(out, coding_in(v));
  }
  auto s = ToSystem(item);
  if (!s || s->kind() != Item::Kind::kString) return absl::OkStatus();
  return Push(out, vs->ContainsCode(s->string()));
}

Status FnHtmlChecks(Evaluator& ev, const AstNode& call, Input input, const Frame&,
                    Collection* out) {
  auto one = ev.Singleton(input, "htmlChecks()");
  if (!one.ok()) return one.status();
  if (*one == nullptr) return absl::OkStatus();
  if (!ev.env().html_checks) return Push(out, true);
  auto s = ToSystem(**one);
  if (!s || s->kind() != Item::Kind::kString) return Push(out, false);
  return Push(out, ev.env().html_checks(s->string()));
}

// subsumes(), subsumedBy(), elementDefinition(), slice(), checkModifiers(): need terminology
// or profile knowledge this engine does not have; they give empty (no verdict).
Status FnNoVerdict(Evaluator& ev, const AstNode& call, Input input, const Frame& frame,
                   Collection* out) {
  return absl::OkStatus();
}

constexpr FunctionDef kFunctions[] = {
    {"empty", 0, 0, FnEmpty},
    {"exists", 0, 1, FnExists},
    {"all", 1, 1, FnAll},
    {"allTrue", 0, 0, FnAllTrue},
    {"anyTrue", 0, 0, FnAnyTrue},
    {"allFalse", 0, 0, FnAllFalse},
    {"anyFalse", 0, 0, FnAnyFalse},
    {"subsetOf", 1, 1, FnSubsetOf},
    {"supersetOf", 1, 1, FnSubsetOf},
    {"count", 0, 0, FnCount},
    {"distinct", 0, 0, FnDistinct},
    {"isDistinct", 0, 0, FnDistinct},
    {"where", 1, 1, FnWhere},
    {"select", 1, 1, FnSelect},
    {"repeat", 1, 1, FnRepeat},
    {"ofType", 1, 1, FnOfType, true},
    {"is", 1, 1, FnIs, true},
    {"as", 1, 1, FnAs, true},
    {"single", 0, 0, FnSingle},
    {"first", 0, 0, FnFirst},
    {"last", 0, 0, FnLast},
    {"tail", 0, 0, FnTail},
    {"skip", 1, 1, FnSkipTake},
    {"take", 1, 1, FnSkipTake},
    {"intersect", 1, 1, FnIntersectExclude},
    {"exclude", 1, 1, FnIntersectExclude},
    {"union", 1, 1, FnUnionCombine},
    {"combine", 1, 1, FnUnionCombine},
    {"iif", 2, 3, FnIif},
    {"toBoolean", 0, 0, FnConvert},
    {"convertsToBoolean", 0, 0, FnConvert},
    {"toInteger", 0, 0, FnConvert},
    {"convertsToInteger", 0, 0, FnConvert},
    {"toDecimal", 0, 0, FnConvert},
    {"convertsToDecimal", 0, 0, FnConvert},
    {"toString", 0, 0, FnConvert},
    {"convertsToString", 0, 0, FnConvert},
    {"toDate", 0, 0, FnConvert},
    {"convertsToDate", 0, 0, FnConvert},
    {"toDateTime", 0, 0, FnConvert},
    {"convertsToDateTime", 0, 0, FnConvert},
    {"toTime", 0, 0, FnConvert},
    {"convertsToTime", 0, 0, FnConvert},
    {"toQuantity", 0, 1, FnConvert},
    {"convertsToQuantity", 0, 1, FnConvert},
    {"indexOf", 1, 1, FnIndexOf},
    {"substring", 1, 2, FnSubstring},
    {"startsWith", 1, 1, FnStringTest},
    {"endsWith", 1, 1, FnStringTest},
    {"contains", 1, 1, FnStringTest},
    {"upper", 0, 0, FnCase},
    {"lower", 0, 0, FnCase},
    {"trim", 0, 0, FnCase},
    {"replace", 2, 2, FnReplace},
    {"matches", 1, 1, FnMatches},
    {"matchesFull", 1, 1, FnMatches},
    {"replaceMatches", 2, 2, FnReplaceMatches},
    {"length", 0, 0, FnLength},
    {"toChars", 0, 0, FnToChars},
    {"split", 1, 1, FnSplit},
    {"join", 0, 1, FnJoin},
    {"encode", 1, 1, FnEncode},
    {"decode", 1, 1, FnEncode},
    {"escape", 1, 1, FnEscape},
    {"unescape", 1, 1, FnEscape},
    {"abs", 0, 0, FnAbs},
    {"ceiling", 0, 0, FnRoundTo},
    {"floor", 0, 0, FnRoundTo},
    {"truncate", 0, 0, FnRoundTo},
    {"round", 0, 1, FnRound},
    {"exp", 0, 0, FnMathDouble},
    {"ln", 0, 0, FnMathDouble},
    {"log", 1, 1, FnMathDouble},
    {"power", 1, 1, FnMathDouble},
    {"sqrt", 0, 0, FnMathDouble},
    {"children", 0, 0, FnChildren},
    {"descendants", 0, 0, FnDescendants},
    {"trace", 1, 2, FnTrace},
    {"now", 0, 0, FnNow},
    {"today", 0, 0, FnNow},
    {"timeOfDay", 0, 0, FnNow},
    {"type", 0, 0, FnType},
    {"not", 0, 0, FnNot},
    {"aggregate", 1, 2, FnAggregate},
    {"sort", 0, 255, FnSort},
    {"lowBoundary", 0, 1, FnBoundary},
    {"highBoundary", 0, 1, FnBoundary},
    {"precision", 0, 0, FnPrecision},
    {"comparable", 1, 1, FnComparable},
    {"extension", 1, 1, FnExtension},
    {"hasValue", 0, 0, FnHasValue},
    {"getValue", 0, 0, FnGetValue},
    {"resolve", 0, 0, FnResolve},
    {"conformsTo", 1, 1, FnConformsTo},
    {"memberOf", 1, 1, FnMemberOf},
    {"htmlChecks", 0, 0, FnHtmlChecks},
    {"htmlchecks", 0, 0, FnHtmlChecks},
    {"subsumes", 1, 1, FnNoVerdict},
    {"subsumedBy", 1, 1, FnNoVerdict},
    {"elementDefinition", 0, 0, FnNoVerdict},
    {"slice", 2, 2, FnNoVerdict},
    {"checkModifiers", 1, 1, FnNoVerdict},
};

}  // namespace

const FunctionDef* FindFunction(std::string_view name) {
  static const auto* index = [] {
    auto* m = new std::unordered_map<std::string_view, const FunctionDef*>();
    for (const FunctionDef& f : kFunctions) m->emplace(f.name, &f);
    return m;
  }();
  auto it = index->find(name);
  return it == index->end() ? nullptr : it->second;
}

namespace {

// For a search (does any substring match?), a trailing quantified atom only needs its minimum
// count: P X{m,n} finds a match exactly where P X{m} does. The R4 invariants' name rule
// "[A-Z]([A-Za-z0-9_]){0,254}" becomes "[A-Z]", sparing the executor 254 copies of a state.
// Patterns with top-level alternation or an end anchor are left alone.
std::string SimplifyForSearch(std::string_view p) {
  size_t last_atom = std::string_view::npos;
  int depth = 0;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    bool top = depth == 0 && !in_class;
    if (c == '\\') {
      if (top) last_atom = i;
      ++i;
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      continue;
    }
    if (c == '[') {
      if (top) last_atom = i;
      in_class = true;
      if (i + 1 < p.size() && p[i + 1] == '^') ++i;
      if (i + 1 < p.size() && p[i + 1] == ']') ++i;
    } else if (c == '(') {
      if (top) last_atom = i;
      ++depth;
    } else if (c == ')') {
      if (--depth < 0) return std::string(p);
    } else if (top && c == '|') {
      return std::string(p);
    } else if (top && c == '{') {
      size_t close = p.find('}', i);
      if (close == std::string_view::npos) return std::string(p);
      i = close;
    } else if (top && c != '*' && c != '+' && c != '?' && c != '^' && c != '$') {
      last_atom = i;
    }
  }
  if (depth != 0 || in_class || last_atom == std::string_view::npos) return std::string(p);
  // The atom ends where its quantifier starts.
  size_t end = last_atom;
  if (p[end] == '\\') {
    end += 2;
  } else if (p[end] == '[') {
    size_t k = end + 1;
    if (k < p.size() && p[k] == '^') ++k;
    if (k < p.size() && p[k] == ']') ++k;
    while (k < p.size() && p[k] != ']') k += p[k] == '\\' ? 2 : 1;
    end = k + 1;
  } else if (p[end] == '(') {
    int d = 0;
    size_t k = end;
    bool cls = false;
    for (; k < p.size(); ++k) {
      if (p[k] == '\\') {
        ++k;
        continue;
      }
      if (cls) {
        if (p[k] == ']') cls = false;
        continue;
      }
      if (p[k] == '[')
        cls = true;
      else if (p[k] == '(')
        ++d;
      else if (p[k] == ')' && --d == 0)
        break;
    }
    end = k + 1;
  } else {
    end += 1;
  }
  if (end >= p.size()) return std::string(p);
  std::string_view quantifier = p.substr(end);
  if (!quantifier.empty() && quantifier.back() == '?' && quantifier.size() > 1) {
    quantifier.remove_suffix(1);  // lazy form
  }
  int minimum;
  if (quantifier == "*" || quantifier == "?") {
    minimum = 0;
  } else if (quantifier == "+") {
    minimum = 1;
  } else if (quantifier.size() >= 3 && quantifier.front() == '{' && quantifier.back() == '}') {
    std::string_view body = quantifier.substr(1, quantifier.size() - 2);
    std::string_view first = body.substr(0, body.find(','));
    if (first.empty() || first.size() > 4 ||
        !std::all_of(first.begin(), first.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      return std::string(p);
    }
    minimum = std::atoi(std::string(first).c_str());
  } else {
    return std::string(p);
  }
  std::string atom(p.substr(last_atom, end - last_atom));
  std::string out(p.substr(0, last_atom));
  if (minimum == 1) out += atom;
  if (minimum > 1) out += Cat(atom, "{", minimum, "}");
  return out.empty() ? std::string(p) : out;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const std::regex>> CompileRegex(std::string_view pattern_in,
                                                               size_t max_pattern_bytes,
                                                               bool search_only) {
  if (pattern_in.size() > max_pattern_bytes) {
    return absl::InvalidArgumentError("regular expression too long");
  }
  std::string simplified;
  if (search_only) {
    simplified = std::string(pattern_in);
    for (int round = 0; round < 8; ++round) {
      std::string next = SimplifyForSearch(simplified);
      if (next == simplified) break;
      simplified = std::move(next);
    }
  }
  std::string_view pattern = search_only ? std::string_view(simplified) : pattern_in;
  // FHIRPath regexes run in single-line mode: '.' also matches line ends. Rewrite unescaped
  // dots outside character classes; bound brace repetition (each {n} copies the NFA n times).
  std::string rewritten;
  rewritten.reserve(pattern.size() + 16);
  bool in_class = false;
  double repetition = 1;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      if (pattern[i + 1] >= '1' && pattern[i + 1] <= '9' && !in_class) {
        return absl::InvalidArgumentError("back-references are not supported");
      }
      rewritten.push_back(c);
      rewritten.push_back(pattern[++i]);
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      rewritten.push_back(c);
      continue;
    }
    if (c == '[') {
      in_class = true;
      rewritten.push_back(c);
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') rewritten.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') rewritten.push_back(pattern[++i]);
      continue;
    }
    if (c == '.') {
      rewritten += "[\\s\\S]";
      continue;
    }
    if (c == '{') {
      size_t close = pattern.find('}', i);
      if (close != std::string_view::npos) {
        std::string_view body = pattern.substr(i + 1, close - i - 1);
        double bound = 0;
        for (char d : body) {
          if (d >= '0' && d <= '9') bound = bound * 10 + (d - '0');
          if (d == ',') bound = 0;
        }
        double first = std::atof(std::string(body).c_str());
        repetition *= std::max({bound, first, 1.0});
        if (repetition > 1000) return absl::InvalidArgumentError("regular expression too large");
      }
    }
    rewritten.push_back(c);
  }
  try {
    return std::make_shared<const std::regex>(rewritten, std::regex_constants::ECMAScript |
                                                             std::regex_constants::optimize |
                                                             std::regex_constants::__polynomial);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(Cat("invalid regular expression: ", e.what()));
  }
}

}  // namespace fhirward::fhir::fhirpath::internal
