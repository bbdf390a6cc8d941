#include "policy/obligations.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "json/patch.h"
#include "json/value.h"

namespace fhirward::policy {
namespace {

using json::Value;

constexpr std::string_view kObservationValueSystem =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
constexpr std::string_view kRedacted = "REDACTED";
constexpr std::string_view kConsentScopeSystem =
    "http://terminology.hl7.org/CodeSystem/consentscope";
constexpr std::string_view kConsentActionSystem =
    "http://terminology.hl7.org/CodeSystem/consentaction";

// ---------------------------------------------------------------------------
// Element paths
// ---------------------------------------------------------------------------

struct Segment {
  std::string name;     // "telecom", or "value" for "value[x]"
  bool choice = false;  // "value[x]"
};

// The segments after the resource type, or nothing when the path is malformed
// or names another resource type.
std::optional<std::vector<Segment>> ParsePath(std::string_view path, const Value& resource) {
  const std::optional<std::string_view> type = resource.GetString("resourceType");
  if (!type || type->empty()) return std::nullopt;
  std::vector<Segment> segments;
  bool first = true;
  while (true) {
    const size_t dot = path.find('.');
    const std::string_view part = path.substr(0, dot);
    if (part.empty()) return std::nullopt;
    if (first) {
      if (part != *type) return std::nullopt;
      first = false;
    } else {
      Segment s;
      if (part.size() > 3 && part.ends_with("[x]")) {
        s.name = std::string(part.substr(0, part.size() - 3));
        s.choice = true;
      } else {
        s.name = std::string(part);
      }
      if (s.name.find_first_of("[]_") != std::string::npos) return std::nullopt;
      segments.push_back(std::move(s));
    }
    if (dot == std::string_view::npos) break;
    path.remove_prefix(dot + 1);
  }
  if (segments.empty()) return std::nullopt;
  return segments;
}

// The element a JSON member belongs to: "_birthDate" (a primitive's id and
// extensions) belongs to "birthDate".
std::string_view BaseKey(std::string_view key) {
  return !key.empty() && key[0] == '_' ? key.substr(1) : key;
}

bool Matches(std::string_view base, const Segment& s) {
  if (!s.choice) return base == s.name;
  return base.size() > s.name.size() && base.starts_with(s.name) && base[s.name.size()] >= 'A' &&
         base[s.name.size()] <= 'Z';
}

// The keys of `node` (with or without "_") that belong to `s`, in member order.
std::vector<std::string> MatchingKeys(const Value& node, const Segment& s) {
  std::vector<std::string> keys;
  if (!node.is_object()) return keys;
  for (const auto& [key, value] : node.members()) {
    if (Matches(BaseKey(key), s)) keys.push_back(key);
  }
  return keys;
}

// The stored counterpart of the i-th item of an incoming element (an object
// element is item 0): arrays on the way are aligned by position.
const Value* StoredItem(const Value* stored, size_t i) {
  if (stored == nullptr) return nullptr;
  if (stored->is_array()) return i < stored->items().size() ? &stored->items()[i] : nullptr;
  if (stored->is_object() && i == 0) return stored;
  return nullptr;
}

// ---------------------------------------------------------------------------
// Masking
// ---------------------------------------------------------------------------

bool IsPrimitiveTypeName(std::string_view t) {
  static constexpr std::array<std::string_view, 20> kPrimitives = {
      "boolean",      "integer",  "string",      "decimal",     "uri",  "url",  "canonical",
      "base64Binary", "instant",  "date",        "dateTime",    "time", "code", "oid",
      "id",           "markdown", "unsignedInt", "positiveInt", "uuid", "xhtml"};
  return std::find(kPrimitives.begin(), kPrimitives.end(), t) != kPrimitives.end();
}

// Whether the choice element `base` ("valueString") of `s` ("value[x]") has a
// primitive type: its suffix with the first letter lowered is a FHIR
// primitive type name ("String" -> "string", "DateTime" -> "dateTime").
bool IsPrimitiveChoice(std::string_view base, const Segment& s) {
  std::string type(base.substr(s.name.size()));
  if (type.empty()) return false;
  type[0] = static_cast<char>(type[0] - 'A' + 'a');
  return IsPrimitiveTypeName(type);
}

Value Placeholder() {
  return Value::MakeObject(
      {{"extension", Value::MakeArray({Value::MakeObject(
                         {{"url", Value::String(std::string(kDataAbsentReasonUrl))},
                          {"valueCode", Value::String("masked")}})})}});
}

// Replaces member `from` of `parent` by (`to`, value) at the same position.
void Rename(Value& parent, std::string_view from, std::string to, Value value) {
  for (auto& member : parent.members()) {
    if (member.first == from) {
      member.first = std::move(to);
      member.second = std::move(value);
      return;
    }
  }
  parent.Set(std::move(to), std::move(value));
}

// Masks element `base` of `parent` (both its "base" and "_base" members);
// false when the element is absent or holds no data.
bool MaskElement(Value& parent, const std::string& base, const Segment& s) {
  const std::string ukey = "_" + base;
  const Value* v = parent.Find(base);
  const Value* e = parent.Find(ukey);
  const bool has_v = v != nullptr && !v->is_null() && !(v->is_array() && v->items().empty());
  const bool has_e = e != nullptr && !e->is_null();
  if (!has_v && !has_e) return false;

  const bool array = (v != nullptr && v->is_array()) || (!has_v && e->is_array());
  if (array) {
    bool primitive = has_e;
    if (v != nullptr && v->is_array()) {
      for (const Value& item : v->items()) primitive = primitive || !item.is_object();
    }
    if (primitive) {
      parent.Set(base, Value::MakeArray({Value::Null()}));
      parent.Set(ukey, Value::MakeArray({Placeholder()}));
    } else {
      parent.Set(base, Value::MakeArray({Placeholder()}));
      parent.Erase(ukey);
    }
    return true;
  }

  const bool primitive = s.choice ? IsPrimitiveChoice(base, s) : !(has_v && v->is_object());
  if (primitive) {
    if (e != nullptr) {
      parent.Set(ukey, Placeholder());
      parent.Erase(base);
    } else {
      Rename(parent, base, ukey, Placeholder());
    }
  } else {
    parent.Set(base, Placeholder());
    parent.Erase(ukey);
  }
  return true;
}

int MaskIn(Value& node, const std::vector<Segment>& segments, size_t i) {
  if (!node.is_object()) return 0;
  const Segment& s = segments[i];
  if (i + 1 == segments.size()) {
    std::vector<std::string> bases;
    for (const std::string& key : MatchingKeys(node, s)) {
      const std::string base(BaseKey(key));
      if (std::find(bases.begin(), bases.end(), base) == bases.end()) bases.push_back(base);
    }
    int masked = 0;
    for (const std::string& base : bases) masked += MaskElement(node, base, s) ? 1 : 0;
    return masked;
  }
  int masked = 0;
  for (auto& [key, child] : node.members()) {
    if (!Matches(BaseKey(key), s)) continue;
    if (child.is_object()) {
      masked += MaskIn(child, segments, i + 1);
    } else if (child.is_array()) {
      for (Value& item : child.items()) masked += MaskIn(item, segments, i + 1);
    }
  }
  return masked;
}

bool IsRedactedLabel(const Value& coding) {
  if (!coding.is_object() || coding.GetString("code") != kRedacted) return false;
  const Value* system = coding.Find("system");
  return system == nullptr || coding.GetString("system") == kObservationValueSystem;
}

bool HasRedactedLabel(const Value& resource) {
  const Value* meta = resource.Find("meta");
  const Value* security = meta != nullptr ? meta->Find("security") : nullptr;
  if (security == nullptr || !security->is_array()) return false;
  return std::any_of(security->items().begin(), security->items().end(), IsRedactedLabel);
}

void AddRedactedLabel(Value& resource) {
  Value label = Value::MakeObject({{"system", Value::String(std::string(kObservationValueSystem))},
                                   {"code", Value::String(std::string(kRedacted))}});
  Value* meta = resource.Find("meta");
  if (meta == nullptr || !meta->is_object()) {
    resource.Set("meta", Value::MakeObject({{"security", Value::MakeArray({std::move(label)})}}));
    return;
  }
  Value* security = meta->Find("security");
  if (security == nullptr || !security->is_array()) {
    meta->Set("security", Value::MakeArray({std::move(label)}));
    return;
  }
  if (std::none_of(security->items().begin(), security->items().end(), IsRedactedLabel)) {
    security->Push(std::move(label));
  }
}

// Removes REDACTED labels from meta.security, and security/meta when that
// removal leaves them empty.
void DropRedactedLabel(Value& resource) {
  Value* meta = resource.Find("meta");
  if (meta == nullptr || !meta->is_object()) return;
  Value* security = meta->Find("security");
  if (security == nullptr || !security->is_array()) return;
  auto& items = security->items();
  const auto removed = std::remove_if(items.begin(), items.end(), IsRedactedLabel);
  if (removed == items.end()) return;
  items.erase(removed, items.end());
  if (!items.empty()) return;
  meta->Erase("security");
  if (meta->members().empty()) resource.Erase("meta");
}

// ---------------------------------------------------------------------------
// Keeping stored values
// ---------------------------------------------------------------------------

void KeepIn(Value& incoming, const Value* stored, const std::vector<Segment>& segments, size_t i) {
  if (!incoming.is_object()) return;
  if (stored != nullptr && !stored->is_object()) stored = nullptr;
  const Segment& s = segments[i];
  if (i + 1 == segments.size()) {
    for (const std::string& key : MatchingKeys(incoming, s)) {
      if (stored == nullptr || stored->Find(key) == nullptr) incoming.Erase(key);
    }
    if (stored != nullptr) {
      for (const std::string& key : MatchingKeys(*stored, s)) incoming.Set(key, *stored->Find(key));
    }
    return;
  }
  for (auto& [key, child] : incoming.members()) {
    if (!Matches(BaseKey(key), s)) continue;
    const Value* stored_child = stored != nullptr ? stored->Find(key) : nullptr;
    if (child.is_object()) {
      KeepIn(child, StoredItem(stored_child, 0), segments, i + 1);
    } else if (child.is_array()) {
      for (size_t n = 0; n < child.items().size(); ++n) {
        KeepIn(child.items()[n], StoredItem(stored_child, n), segments, i + 1);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------

using Located = std::vector<std::pair<std::string, const Value*>>;

// Every member at the path with a locator naming the members and array
// positions that lead to it ("contact[1].telecom").
void Collect(const Value& node, const std::vector<Segment>& segments, size_t i,
             const std::string& at, Located& out) {
  if (!node.is_object()) return;
  const Segment& s = segments[i];
  const bool last = i + 1 == segments.size();
  for (const auto& [key, child] : node.members()) {
    if (!Matches(BaseKey(key), s)) continue;
    const std::string here = at + "." + key;
    if (last) {
      out.emplace_back(here, &child);
    } else if (child.is_object()) {
      Collect(child, segments, i + 1, here, out);
    } else if (child.is_array()) {
      for (size_t n = 0; n < child.items().size(); ++n) {
        Collect(child.items()[n], segments, i + 1, here + "[" + std::to_string(n) + "]", out);
      }
    }
  }
}

bool SameAt(const Value& incoming, const Value* stored, const std::vector<Segment>& segments) {
  Located a, b;
  Collect(incoming, segments, 0, "", a);
  if (stored != nullptr) Collect(*stored, segments, 0, "", b);
  if (a.size() != b.size()) return false;
  auto by_locator = [](const auto& x, const auto& y) { return x.first < y.first; };
  std::sort(a.begin(), a.end(), by_locator);
  std::sort(b.begin(), b.end(), by_locator);
  for (size_t n = 0; n < a.size(); ++n) {
    if (a[n].first != b[n].first || !json::JsonEquals(*a[n].second, *b[n].second)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// FHIR dateTime to unix seconds
// ---------------------------------------------------------------------------

int DaysInMonth(int64_t y, int64_t m) {
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : kDays[m - 1];
}

// Reads exactly `n` digits at `pos`.
std::optional<int64_t> Digits(std::string_view s, size_t& pos, size_t n) {
  if (pos + n > s.size()) return std::nullopt;
  int64_t v = 0;
  for (size_t k = 0; k < n; ++k) {
    const char c = s[pos + k];
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  pos += n;
  return v;
}

bool Expect(std::string_view s, size_t& pos, char c) {
  if (pos >= s.size() || s[pos] != c) return false;
  ++pos;
  return true;
}

// A FHIR date, dateTime or instant as unix seconds: the first second of the
// period it names (`end` false) or the last one (`end` true), so "2026" as an
// end covers all of 2026. Dates without a time are taken as UTC, and so is a
// time without an offset (which FHIR does not allow). Fractional seconds are
// dropped. nullopt when the text is not such a value.
std::optional<int64_t> ParseFhirDateTime(std::string_view s, bool end) {
  size_t pos = 0;
  const auto year = Digits(s, pos, 4);
  if (!year) return std::nullopt;
  int64_t month = 1, day = 1;
  enum { kYear, kMonth, kDay, kSecond } precision = kYear;
  int64_t seconds_of_day = 0, offset = 0;
  if (pos < s.size()) {
    if (!Expect(s, pos, '-')) return std::nullopt;
    const auto m = Digits(s, pos, 2);
    if (!m || *m < 1 || *m > 12) return std::nullopt;
    month = *m;
    precision = kMonth;
  }
  if (pos < s.size()) {
    if (!Expect(s, pos, '-')) return std::nullopt;
    const auto d = Digits(s, pos, 2);
    if (!d || *d < 1 || *d > DaysInMonth(*year, month)) return std::nullopt;
    day = *d;
    precision = kDay;
  }
  if (pos < s.size()) {
    if (!Expect(s, pos, 'T')) return std::nullopt;
    size_t p = pos;
    const auto hh = Digits(s, p, 2);
    if (!hh || !Expect(s, p, ':')) return std::nullopt;
    const auto mm = Digits(s, p, 2);
    if (!mm || !Expect(s, p, ':')) return std::nullopt;
    const auto ss = Digits(s, p, 2);
    if (!ss || *hh > 23 || *mm > 59 || *ss > 60) return std::nullopt;
    seconds_of_day = *hh * 3600 + *mm * 60 + std::min<int64_t>(*ss, 59);
    if (p < s.size() && s[p] == '.') {
      ++p;
      const size_t digits_start = p;
      while (p < s.size() && s[p] >= '0' && s[p] <= '9') ++p;
      if (p == digits_start) return std::nullopt;
    }
    if (p < s.size()) {
      if (s[p] == 'Z') {
        ++p;
      } else if (s[p] == '+' || s[p] == '-') {
        const int64_t sign = s[p] == '-' ? -1 : 1;
        ++p;
        const auto oh = Digits(s, p, 2);
        if (!oh || !Expect(s, p, ':')) return std::nullopt;
        const auto om = Digits(s, p, 2);
        if (!om || *oh > 14 || *om > 59) return std::nullopt;
        offset = sign * (*oh * 3600 + *om * 60);
      } else {
        return std::nullopt;
      }
    }
    if (p != s.size()) return std::nullopt;
    pos = p;
    precision = kSecond;
  }
  const int64_t first = DaysFromCivil(*year, month, day) * 86400 + seconds_of_day - offset;
  if (!end) return first;
  switch (precision) {
    case kYear:
      return DaysFromCivil(*year + 1, 1, 1) * 86400 - 1;
    case kMonth:
      return (month == 12 ? DaysFromCivil(*year + 1, 1, 1) : DaysFromCivil(*year, month + 1, 1)) *
                 86400 -
             1;
    case kDay:
      return first + 86400 - 1;
    case kSecond:
      return first;
  }
  return first;
}

// ---------------------------------------------------------------------------
// Consents
// ---------------------------------------------------------------------------
//
// Malformed consents fail closed. Each criterion of a provision evaluates to
// match, no match or unknown (present but of the wrong shape, or a criterion
// this evaluator does not understand, such as data[], code[] or dataPeriod).
// An unknown criterion is taken the way that can only make the outcome more
// restrictive: a deny provision with unknown criteria (and none that clearly
// does not match) is taken to match, a permit provision with them is taken not
// to match; more generally the outcome of a provision whose match is unknown
// counts only when it is a deny. A provision whose type is neither "permit"
// nor "deny" (or, nested, is absent), and a provision that is not an object
// at all, denies. A consent whose base provision is of unknown match can deny
// but never permit. Status and scope only say which resources are active
// privacy consents: a consent whose status is not the string "active", or
// whose scope does not carry the patient-privacy coding, is ignored.

enum class Match { kYes, kNo, kUnknown };

// One criterion's result; `detail` names what matched ("Practitioner/p1").
struct Result {
  Match match = Match::kNo;
  std::string detail;
};

// Combines the results of the items of one criterion: any item matching
// matches; otherwise any unknown item makes the criterion unknown.
struct AnyOf {
  bool unknown = false;
  std::optional<std::string> yes;
  void Add(Match m, std::string_view detail = {}) {
    if (m == Match::kYes && !yes) yes = std::string(detail);
    unknown = unknown || m == Match::kUnknown;
  }
  Result Get() const {
    if (yes) return {Match::kYes, *yes};
    return {unknown ? Match::kUnknown : Match::kNo, {}};
  }
};

Result Unknown() { return {Match::kUnknown, {}}; }

bool Contains(const std::vector<std::string>& list, std::string_view s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

// "http://x/fhir/Practitioner/p1/_history/2" -> "Practitioner/p1".
std::string_view TypeAndId(std::string_view ref) {
  const size_t history = ref.find("/_history/");
  if (history != std::string_view::npos) ref = ref.substr(0, history);
  const size_t last = ref.rfind('/');
  if (last == std::string_view::npos || last == 0) return ref;
  const size_t before = ref.rfind('/', last - 1);
  return before == std::string_view::npos ? ref : ref.substr(before + 1);
}

// The request actor `ref` names, if any.
const std::string* MatchingActor(std::string_view ref, const std::vector<std::string>& actors) {
  const std::string_view want = TypeAndId(ref);
  for (const std::string& actor : actors) {
    if (actor == ref || TypeAndId(actor) == want) return &actor;
  }
  return nullptr;
}

// A criterion's items: a non-empty array, else nullptr (unknown).
const json::Array* Items(const Value& criterion) {
  if (!criterion.is_array() || criterion.items().empty()) return nullptr;
  return &criterion.items();
}

// Codings one of whose codes is in `codes` (a Coding without a string code is
// unknown).
Result CodingsIn(const Value& criterion, const std::vector<std::string>& codes) {
  const json::Array* items = Items(criterion);
  if (items == nullptr) return Unknown();
  AnyOf any;
  for (const Value& coding : *items) {
    const std::optional<std::string_view> code = coding.GetString("code");
    if (!code) {
      any.Add(Match::kUnknown);
    } else {
      any.Add(Contains(codes, *code) ? Match::kYes : Match::kNo, *code);
    }
  }
  return any.Get();
}

Result ActorCriterion(const Value& criterion, const std::vector<std::string>& actors) {
  const json::Array* items = Items(criterion);
  if (items == nullptr) return Unknown();
  AnyOf any;
  for (const Value& actor : *items) {
    const Value* reference = actor.is_object() ? actor.Find("reference") : nullptr;
    const std::optional<std::string_view> ref =
        reference != nullptr ? reference->GetString("reference") : std::nullopt;
    // An actor named only by identifier (or not at all) cannot be resolved here.
    if (!ref || ref->empty()) {
      any.Add(Match::kUnknown);
    } else if (const std::string* who = MatchingActor(*ref, actors)) {
      any.Add(Match::kYes, *who);
    } else {
      any.Add(Match::kNo);
    }
  }
  return any.Get();
}

Result ActionCriterion(const Value& criterion) {
  const json::Array* items = Items(criterion);
  if (items == nullptr) return Unknown();
  AnyOf any;
  for (const Value& action : *items) {
    const Value* codings = action.is_object() ? action.Find("coding") : nullptr;
    const json::Array* list = codings != nullptr ? Items(*codings) : nullptr;
    if (list == nullptr) {
      any.Add(Match::kUnknown);
      continue;
    }
    for (const Value& coding : *list) {
      const std::optional<std::string_view> code = coding.GetString("code");
      if (!code) {
        any.Add(Match::kUnknown);
      } else if ((*code == "access" || *code == "use") &&
                 coding.GetString("system") == kConsentActionSystem) {
        any.Add(Match::kYes, *code);
      } else {
        any.Add(Match::kNo);
      }
    }
  }
  return any.Get();
}

Result PeriodCriterion(const Value& period, int64_t now) {
  if (!period.is_object()) return Unknown();
  bool unknown = false;
  for (const bool end : {false, true}) {
    const Value* bound = period.Find(end ? "end" : "start");
    if (bound == nullptr) continue;
    const auto t = bound->is_string() ? ParseFhirDateTime(bound->as_string(), end) : std::nullopt;
    if (!t) {
      unknown = true;
    } else if (end ? now > *t : now < *t) {
      return {Match::kNo, {}};
    }
  }
  if (unknown) return Unknown();
  return {Match::kYes, "covers now"};
}

struct ProvisionMatch {
  Match match = Match::kYes;
  std::string what;  // the criteria that matched, e.g. " actor Practitioner/p1"
};

// Whether a provision's stated criteria match the request.
ProvisionMatch MatchProvision(const Value& provision, const ConsentRequest& request) {
  ProvisionMatch result;
  for (const auto& [key, value] : provision.members()) {
    if (key == "type" || key == "provision" || key == "id" || key == "extension") continue;
    Result r;
    if (key == "actor") {
      r = ActorCriterion(value, request.actors);
    } else if (key == "purpose") {
      r = CodingsIn(value, request.purposes);
    } else if (key == "class") {
      r = CodingsIn(value, {request.resource_type});
    } else if (key == "securityLabel") {
      r = CodingsIn(value, request.labels);
    } else if (key == "action") {
      r = ActionCriterion(value);
    } else if (key == "period") {
      r = PeriodCriterion(value, request.now);
    } else {
      // data, dataPeriod, code, modifierExtension and anything unknown: not
      // evaluated here.
      r = Unknown();
    }
    if (r.match == Match::kNo) return {Match::kNo, {}};
    if (r.match == Match::kUnknown) {
      result.match = Match::kUnknown;
      result.what += " " + key + " (unreadable)";
    } else {
      result.what += " " + key + " " + r.detail;
    }
  }
  return result;
}

struct Outcome {
  ConsentVerdict::Kind kind = ConsentVerdict::Kind::kNone;
  std::string reason;
};

constexpr int kMaxProvisionDepth = 32;

Outcome Denied(std::string reason) { return {ConsentVerdict::Kind::kDeny, std::move(reason)}; }

// The outcome of a provision already known to apply (or whose application is
// unknown: the caller then keeps only a deny): its own type unless one of its
// nested provisions matches, a matching deny among them winning.
Outcome Evaluate(const Value& provision, const ConsentRequest& request, bool base,
                 const std::string& what, int depth) {
  if (depth > kMaxProvisionDepth) return Denied("provision nesting too deep, denied");
  ConsentVerdict::Kind kind = ConsentVerdict::Kind::kDeny;
  const Value* type = provision.Find("type");
  if (type == nullptr) {
    if (base) kind = ConsentVerdict::Kind::kPermit;
  } else if (type->is_string() && type->as_string() == "permit") {
    kind = ConsentVerdict::Kind::kPermit;
  } else if (type->is_string() && type->as_string() == "deny") {
    kind = ConsentVerdict::Kind::kDeny;
  }
  const std::string name = base ? "base provision" : "provision";
  Outcome own{kind, name + what + (kind == ConsentVerdict::Kind::kDeny ? " denied" : " permitted")};
  const Value* nested = provision.Find("provision");
  if (nested == nullptr) return own;
  json::Array single;
  const json::Array* children = nullptr;
  if (nested->is_array()) {
    children = &nested->items();
  } else if (nested->is_object()) {
    single.push_back(*nested);
    children = &single;
  } else {
    return Denied("unreadable nested provision, denied");
  }
  std::optional<Outcome> permit;
  for (const Value& child : *children) {
    if (!child.is_object()) return Denied("unreadable nested provision, denied");
    const ProvisionMatch m = MatchProvision(child, request);
    if (m.match == Match::kNo) continue;
    Outcome o = Evaluate(child, request, false, m.what, depth + 1);
    if (o.kind == ConsentVerdict::Kind::kDeny) return o;
    if (m.match == Match::kYes && o.kind == ConsentVerdict::Kind::kPermit && !permit) {
      permit = std::move(o);
    }
  }
  return permit ? *permit : own;
}

bool HasPrivacyScope(const Value& consent) {
  const Value* scope = consent.Find("scope");
  const Value* coding = scope != nullptr ? scope->Find("coding") : nullptr;
  if (coding == nullptr || !coding->is_array()) return false;
  return std::any_of(coding->items().begin(), coding->items().end(), [](const Value& c) {
    return c.is_object() && c.GetString("system") == kConsentScopeSystem &&
           c.GetString("code") == "patient-privacy";
  });
}

// One consent's verdict (kNone when it does not apply).
Outcome EvaluateConsent(const Value& consent, const ConsentRequest& request) {
  if (!consent.is_object()) return {};
  if (consent.Find("resourceType") != nullptr && consent.GetString("resourceType") != "Consent") {
    return {};
  }
  if (consent.GetString("status") != "active" || !HasPrivacyScope(consent)) return {};
  const Value* provision = consent.Find("provision");
  if (provision == nullptr) return {ConsentVerdict::Kind::kPermit, "no provision, permitted"};
  if (!provision->is_object()) return Denied("unreadable provision, denied");
  const ProvisionMatch m = MatchProvision(*provision, request);
  if (m.match == Match::kNo) return {};
  Outcome o = Evaluate(*provision, request, true, m.what, 0);
  if (m.match == Match::kUnknown && o.kind != ConsentVerdict::Kind::kDeny) return {};
  return o;
}

}  // namespace

std::vector<std::string> ConsentLabels(const json::Value& consent) {
  std::vector<std::string> labels;
  if (!consent.is_object()) return labels;
  const Value* root = consent.Find("provision");
  if (root == nullptr) return labels;
  std::vector<std::pair<const Value*, int>> stack{{root, 0}};
  while (!stack.empty()) {
    auto [provision, depth] = stack.back();
    stack.pop_back();
    // Evaluate matches provisions down to one level below its depth limit.
    if (depth > kMaxProvisionDepth + 1 || !provision->is_object()) continue;
    if (const Value* codings = provision->Find("securityLabel"); codings && codings->is_array()) {
      for (const Value& coding : codings->items()) {
        if (const auto code = coding.GetString("code")) labels.emplace_back(*code);
      }
    }
    if (const Value* nested = provision->Find("provision")) {
      if (nested->is_array()) {
        for (const Value& child : nested->items()) stack.emplace_back(&child, depth + 1);
      } else {
        stack.emplace_back(nested, depth + 1);
      }
    }
  }
  std::sort(labels.begin(), labels.end());
  labels.erase(std::unique(labels.begin(), labels.end()), labels.end());
  return labels;
}

int ApplyMasks(json::Value& resource, const std::vector<std::string>& paths) {
  if (!resource.is_object()) return 0;
  int masked = 0;
  for (const std::string& path : paths) {
    const auto segments = ParsePath(path, resource);
    if (segments) masked += MaskIn(resource, *segments, 0);
  }
  if (masked > 0) AddRedactedLabel(resource);
  return masked;
}

void KeepStored(json::Value& incoming, const json::Value* stored,
                const std::vector<std::string>& paths) {
  if (!incoming.is_object()) return;
  if (stored != nullptr && (!stored->is_object() || stored->GetString("resourceType") !=
                                                        incoming.GetString("resourceType"))) {
    stored = nullptr;
  }
  for (const std::string& path : paths) {
    const auto segments = ParsePath(path, incoming);
    if (segments) KeepIn(incoming, stored, *segments, 0);
  }
  if (stored == nullptr || !HasRedactedLabel(*stored)) DropRedactedLabel(incoming);
}

std::optional<std::string> ChangedPath(const json::Value& incoming, const json::Value* stored,
                                       const std::vector<std::string>& paths) {
  if (!incoming.is_object()) return std::nullopt;
  if (stored != nullptr && (!stored->is_object() || stored->GetString("resourceType") !=
                                                        incoming.GetString("resourceType"))) {
    stored = nullptr;
  }
  for (const std::string& path : paths) {
    const auto segments = ParsePath(path, incoming);
    if (segments && !SameAt(incoming, stored, *segments)) return path;
  }
  return std::nullopt;
}

std::vector<std::string> SecurityLabels(const json::Value& resource) {
  std::vector<std::string> labels;
  const Value* meta = resource.Find("meta");
  const Value* security = meta != nullptr ? meta->Find("security") : nullptr;
  if (security == nullptr || !security->is_array()) return labels;
  for (const Value& coding : security->items()) {
    if (const auto code = coding.GetString("code")) labels.emplace_back(*code);
  }
  return labels;
}

ConsentVerdict EvaluateConsents(const std::vector<json::Value>& consents,
                                const ConsentRequest& request) {
  ConsentVerdict permit;
  for (const Value& consent : consents) {
    Outcome o = EvaluateConsent(consent, request);
    if (o.kind == ConsentVerdict::Kind::kNone) continue;
    ConsentVerdict v;
    v.kind = o.kind;
    v.consent_id = std::string(consent.GetString("id").value_or(""));
    v.reason = std::move(o.reason);
    if (v.kind == ConsentVerdict::Kind::kDeny) return v;
    if (permit.kind == ConsentVerdict::Kind::kNone) permit = std::move(v);
  }
  return permit;
}

}  // namespace fhirward::policy
