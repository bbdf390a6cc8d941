#include "fhir/search_index.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "common/clock.h"
#include "fhir/fhirpath.h"
#include "fhir/model.h"
#include "fhir/resources.h"
#include "json/utf8.h"

namespace fhirward::fhir {
namespace {

using fhirpath::Item;
using fhirpath::Temporal;

unsigned DaysInMonth(int y, unsigned m) {
  static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
  return kDays[m - 1];
}

std::optional<std::pair<int64_t, int64_t>> RangeOf(const Temporal& t) {
  if (t.kind == Temporal::Kind::kTime) return std::nullopt;
  constexpr int64_t kDay = 86400000;
  int64_t start = DaysFromCivil(t.year, t.month, t.day) * kDay;
  int64_t span = 0;
  switch (t.precision) {
    case Temporal::kYear:
      start = DaysFromCivil(t.year, 1, 1) * kDay;
      span = (DaysFromCivil(t.year + 1, 1, 1) - DaysFromCivil(t.year, 1, 1)) * kDay;
      break;
    case Temporal::kMonth:
      start = DaysFromCivil(t.year, t.month, 1) * kDay;
      span = DaysInMonth(t.year, t.month) * kDay;
      break;
    case Temporal::kDay:
      span = kDay;
      break;
    case Temporal::kHour:
      start += t.hour * 3600000LL;
      span = 3600000LL;
      break;
    case Temporal::kMinute:
      start += t.hour * 3600000LL + t.minute * 60000LL;
      span = 60000;
      break;
    case Temporal::kSecond:
      start += t.hour * 3600000LL + t.minute * 60000LL + t.second * 1000LL;
      span = 1000;
      break;
    case Temporal::kMillisecond:
      start += t.hour * 3600000LL + t.minute * 60000LL + t.second * 1000LL + t.millisecond;
      span = 1;
      break;
  }
  if (t.has_tz && t.precision >= Temporal::kHour) start -= t.tz_minutes * 60000LL;
  return std::make_pair(start, start + span - 1);
}

bool IsPrimitiveString(std::string_view t) {
  return t == "string" || t == "markdown" || t == "code" || t == "id" || t == "uri" || t == "url" ||
         t == "canonical" || t == "oid" || t == "uuid" || t == "base64Binary";
}

bool IsQuantityType(std::string_view t) {
  return t == "Quantity" || t == "Age" || t == "Duration" || t == "Distance" || t == "Count" ||
         t == "SimpleQuantity" || t == "MoneyQuantity";
}

// Lower-case Latin letter without its diacritic for U+00C0..U+017F; 0 when
// there is none.
const char* FoldLatin(uint32_t cp) {
  static const char* const k00C0[] = {
      "a", "a", "a", "a", "a", "a", "ae", "c",
      "e", "e", "e", "e", "i", "i", "i",  "i",  // C0-CF
      "d", "n", "o", "o", "o", "o", "o",  nullptr,
      "o", "u", "u", "u", "u", "y", "th", "ss",  // D0-DF
      "a", "a", "a", "a", "a", "a", "ae", "c",
      "e", "e", "e", "e", "i", "i", "i",  "i",  // E0-EF
      "d", "n", "o", "o", "o", "o", "o",  nullptr,
      "o", "u", "u", "u", "u", "y", "th", "y",  // F0-FF
  };
  if (cp >= 0xC0 && cp <= 0xFF) return k00C0[cp - 0xC0];
  if (cp == 0x218 || cp == 0x219) return "s";  // Ș ș
  if (cp == 0x21A || cp == 0x21B) return "t";  // Ț ț
  if (cp >= 0x1CD && cp <= 0x1DC) {            // Ǎ ǎ Ǐ ǐ Ǒ ǒ Ǔ ǔ Ǖ..ǜ
    static const char* const k[] = {"a", "a", "i", "i", "o", "o", "u", "u",
                                    "u", "u", "u", "u", "u", "u", "u", "u"};
    return k[cp - 0x1CD];
  }
  if (cp >= 0x100 && cp <= 0x17F) {
    // Latin Extended-A: pairs of upper/lower case letters in alphabetical runs.
    static constexpr std::pair<uint32_t, const char*> kRuns[] = {
        {0x100, "a"}, {0x106, "c"},  {0x10E, "d"},  {0x112, "e"}, {0x11C, "g"},
        {0x124, "h"}, {0x128, "i"},  {0x132, "ij"}, {0x134, "j"}, {0x136, "k"},
        {0x138, "k"}, {0x139, "l"},  {0x143, "n"},  {0x149, "n"}, {0x14A, "n"},
        {0x14C, "o"}, {0x152, "oe"}, {0x154, "r"},  {0x15A, "s"}, {0x162, "t"},
        {0x168, "u"}, {0x174, "w"},  {0x176, "y"},  {0x179, "z"}, {0x17F, "s"}};
    const char* out = nullptr;
    for (const auto& [start, s] : kRuns) {
      if (cp >= start) out = s;
    }
    return out;
  }
  return nullptr;
}

// Simple lower-case mapping beyond Latin-1: Latin Extended-B letters with
// comma/cedilla below (ș ț), Greek and Cyrillic capitals.
uint32_t LowerCase(uint32_t cp) {
  if (cp >= 0x391 && cp <= 0x3A9 && cp != 0x3A2) return cp + 0x20;  // Greek capitals
  if (cp >= 0x410 && cp <= 0x42F) return cp + 0x20;                 // Cyrillic А-Я
  if (cp >= 0x400 && cp <= 0x40F) return cp + 0x50;                 // Cyrillic Ѐ-Џ
  return cp;
}

bool ParseDouble(std::string_view text, double* out) {
  std::string s(text);
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() && !s.empty() && std::isfinite(*out);
}

// Rewrites `X.where(resolve() is T)` into a test on the reference text:
// references to other servers' resources cannot be resolved at index time,
// and the type is what the parameter means.
std::string RewriteResolve(std::string expr) {
  constexpr std::string_view kOpen = ".where(resolve() is ";
  size_t pos = 0;
  while ((pos = expr.find(kOpen, pos)) != std::string::npos) {
    size_t type_start = pos + kOpen.size();
    size_t close = expr.find(')', type_start);
    if (close == std::string::npos) break;
    std::string type = expr.substr(type_start, close - type_start);
    std::string repl =
        ".where(reference.startsWith('" + type + "/') or reference.contains('/" + type + "/'))";
    expr.replace(pos, close + 1 - pos, repl);
    pos += repl.size();
  }
  return expr;
}

struct Compiled {
  const SearchParamDef* def;
  std::shared_ptr<const fhirpath::Expression> expr;
  // composite: the components' expressions (relative to each item) and types
  std::vector<std::shared_ptr<const fhirpath::Expression>> components;
  std::vector<std::string> component_types;
};

}  // namespace

std::string NormalizeSearchString(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool space = false;
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        space = !out.empty();
        continue;
      }
      if (space) out.push_back(' ');
      space = false;
      out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : static_cast<char>(c));
      continue;
    }
    auto* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t len = json::internal::Utf8SequenceLength(p + i, p + s.size());
    if (space) out.push_back(' ');
    space = false;
    if (len == 0) {  // invalid byte: kept as is
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    uint32_t cp = 0;
    if (len == 2) {
      cp = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F);
    } else if (len == 3) {
      cp = ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    } else {
      cp = ((c & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6) |
           (s[i + 3] & 0x3F);
    }
    if (const char* folded = FoldLatin(cp)) {
      out += folded;
    } else if (cp == 0xA0) {
      space = !out.empty();
    } else if (cp >= 0x300 && cp <= 0x36F) {
      // Combining diacritical marks (decomposed accents): dropped.
    } else if (uint32_t lower = LowerCase(cp); lower != cp) {
      json::internal::AppendUtf8(out, lower);
    } else {
      out.append(s.substr(i, len));
    }
    i += len;
  }
  return out;
}

std::optional<std::pair<int64_t, int64_t>> DateRange(std::string_view text) {
  auto t = Temporal::ParseDateTime(text);
  if (!t) t = Temporal::ParseDate(text);
  if (!t) return std::nullopt;
  return RangeOf(*t);
}

bool IsIdentifyingDateParam(std::string_view type, std::string_view code) {
  return (code == "birthdate" || code == "death-date") &&
         (type == "Patient" || type == "Person" || type == "RelatedPerson" ||
          type == "Practitioner");
}

bool IsIndexedParamType(std::string_view t) {
  return t == "token" || t == "string" || t == "date" || t == "number" || t == "quantity" ||
         t == "reference" || t == "uri";
}

// Whether a FHIRPath search expression reaches an element whose type
// identifies people, following plain paths ("Patient.address.city",
// "Patient.telecom.where(system='phone')", "(Person.name)").
bool ExpressionIdentifies(std::string_view type, std::string_view expr) {
  const Model& m = Model::R4();
  size_t start = 0;
  while (start <= expr.size()) {
    size_t bar = expr.find('|', start);
    std::string_view branch =
        expr.substr(start, bar == std::string_view::npos ? std::string_view::npos : bar - start);
    start = bar == std::string_view::npos ? expr.size() + 1 : bar + 1;
    while (!branch.empty() && (branch.front() == ' ' || branch.front() == '(')) {
      if (branch.front() == '(') break;  // "(X as Y)": handled below
      branch.remove_prefix(1);
    }
    std::string path;
    bool skip = false;
    int depth = 0;
    for (char c : branch) {
      if (c == '(') {
        ++depth;
        if (!path.empty() && path.back() != '.') skip = true;  // a function's arguments
        continue;
      }
      if (c == ')') {
        --depth;
        if (depth == 0) skip = false;
        continue;
      }
      if (skip || c == ' ') {
        if (c == ' ' && !skip) break;  // "X as Y": the path ends here
        continue;
      }
      path.push_back(c);
    }
    // Drop function names left at the end of segments ("telecom.where").
    std::vector<std::string> segs;
    size_t p = 0;
    while (p <= path.size()) {
      size_t dot = path.find('.', p);
      std::string seg = path.substr(p, dot == std::string::npos ? std::string::npos : dot - p);
      p = dot == std::string::npos ? path.size() + 1 : dot + 1;
      if (seg.empty()) continue;
      if (seg == "where" || seg == "as" || seg == "ofType" || seg == "exists" || seg == "first") {
        break;
      }
      segs.push_back(seg);
    }
    if (segs.empty() || segs[0] != type) continue;
    std::string prefix = segs[0];
    for (size_t i = 1; i < segs.size(); ++i) {
      prefix += "." + segs[i];
      const ElementDef* e = m.FindElement(prefix);
      if (e == nullptr) break;
      for (const std::string& t : e->types) {
        if (t == "Identifier" || t == "HumanName" || t == "Address" || t == "ContactPoint") {
          return true;
        }
      }
    }
  }
  return false;
}

std::vector<std::string> CompositeComponentTypes(std::string_view type, std::string_view code) {
  const Model& m = Model::R4();
  const SearchParamDef* def = m.FindSearchParam(type, code);
  std::vector<std::string> out;
  if (def == nullptr || def->type != "composite") return out;
  const auto all = m.SearchParamsOf(type);
  for (const auto& [url, expr] : def->components) {
    const SearchParamDef* found = nullptr;
    for (const SearchParamDef* p : all) {
      if (p->url == url) found = p;
    }
    if (found == nullptr) return {};
    out.push_back(found->type);
  }
  return out;
}

bool IsSupportedComposite(std::string_view type, std::string_view code) {
  auto types = CompositeComponentTypes(type, code);
  return types.size() == 2 && types[0] == "token" &&
         (types[1] == "token" || types[1] == "quantity" || types[1] == "date" ||
          types[1] == "string");
}

struct SearchIndexer::Impl {
  std::mutex mu;
  std::map<std::string, bool, std::less<>> identifying;
  std::unordered_map<std::string, std::shared_ptr<const fhirpath::Expression>> by_url;
  std::map<std::string, std::vector<Compiled>, std::less<>> by_type;

  const std::vector<Compiled>& For(std::string_view type) {
    std::lock_guard lock(mu);
    if (auto it = by_type.find(type); it != by_type.end()) return it->second;
    std::vector<Compiled> list;
    auto compile = [&](const std::string& key,
                       const std::string& text) -> std::shared_ptr<const fhirpath::Expression> {
      auto& expr = by_url[key];
      if (!expr) {
        auto parsed = fhirpath::Expression::Parse(RewriteResolve(text));
        if (!parsed.ok()) return nullptr;
        expr = std::make_shared<const fhirpath::Expression>(std::move(*parsed));
      }
      return expr;
    };
    for (const SearchParamDef* def : Model::R4().SearchParamsOf(type)) {
      const bool composite = def->type == "composite" && IsSupportedComposite(type, def->code);
      if ((!IsIndexedParamType(def->type) && !composite) || def->expression.empty()) continue;
      // _id and _lastUpdated come from the store's own columns.
      if (def->code == "_id" || def->code == "_lastUpdated") continue;
      Compiled c{def, compile(def->url, def->expression), {}, {}};
      if (!c.expr) continue;
      if (composite) {
        for (size_t i = 0; i < def->components.size(); ++i) {
          c.components.push_back(
              compile(def->url + "#" + std::to_string(i), def->components[i].second));
        }
        c.component_types = CompositeComponentTypes(type, def->code);
        if (std::find(c.components.begin(), c.components.end(), nullptr) != c.components.end()) {
          continue;
        }
      }
      list.push_back(std::move(c));
    }
    return by_type.emplace(std::string(type), std::move(list)).first->second;
  }
};

SearchIndexer::SearchIndexer() : impl_(new Impl) {}

bool SearchIndexer::IsIdentifying(std::string_view type, std::string_view code) const {
  if (IsIdentifyingDateParam(type, code)) return true;
  std::string key = std::string(type) + "." + std::string(code);
  {
    std::lock_guard lock(impl_->mu);
    if (auto it = impl_->identifying.find(key); it != impl_->identifying.end()) return it->second;
  }
  const SearchParamDef* def = Model::R4().FindSearchParam(type, code);
  bool result = def != nullptr && ExpressionIdentifies(type, def->expression);
  std::lock_guard lock(impl_->mu);
  impl_->identifying[key] = result;
  return result;
}
SearchIndexer::~SearchIndexer() { delete impl_; }

const SearchIndexer& SearchIndexer::R4() {
  static const SearchIndexer* indexer = new SearchIndexer();
  return *indexer;
}

namespace {

struct Emitter {
  std::string_view resource_type;
  std::string_view base_url;
  std::vector<IndexEntry>* out;

  IndexEntry& Add(const SearchParamDef& def, IndexEntry::Kind kind) {
    IndexEntry& e = out->emplace_back();
    e.kind = kind;
    e.param = def.code;
    return e;
  }

  static std::string_view Str(const json::Value* v, std::string_view key) {
    if (v == nullptr || !v->is_object()) return {};
    auto s = v->GetString(key);
    return s ? *s : std::string_view();
  }

  void Coding(const SearchParamDef& def, const json::Value& c, std::string_view text) {
    if (!c.is_object()) return;
    IndexEntry& e = Add(def, IndexEntry::Kind::kToken);
    e.system = std::string(Str(&c, "system"));
    e.code = std::string(Str(&c, "code"));
    auto display = Str(&c, "display");
    e.text = NormalizeSearchString(text.empty() ? display : text);
  }

  void Token(const SearchParamDef& def, const Item& item) {
    if (!item.is_node() || item.node().value == nullptr) return;
    const json::Value& v = *item.node().value;
    std::string_view t = item.type_name();
    if (t == "Coding") {
      Coding(def, v, {});
    } else if (t == "CodeableConcept") {
      std::string_view text = Str(&v, "text");
      if (const json::Value* codings = v.Find("coding"); codings && codings->is_array()) {
        for (const json::Value& c : codings->items()) Coding(def, c, text);
      }
      // The text rides on each coding's entry; alone only without codings.
      const json::Value* codings = v.Find("coding");
      if (!text.empty() &&
          (codings == nullptr || !codings->is_array() || codings->items().empty())) {
        IndexEntry& e = Add(def, IndexEntry::Kind::kToken);
        e.text = NormalizeSearchString(text);
      }
    } else if (t == "Identifier") {
      IndexEntry& e = Add(def, IndexEntry::Kind::kToken);
      e.identifying = true;
      e.system = std::string(Str(&v, "system"));
      e.code = std::string(Str(&v, "value"));
      if (const json::Value* type = v.Find("type"); type && type->is_object()) {
        if (const json::Value* codings = type->Find("coding"); codings && codings->is_array()) {
          for (const json::Value& c : codings->items()) {
            IndexEntry& o = out->emplace_back();
            o.kind = IndexEntry::Kind::kToken;
            o.param = def.code + ":of-type";
            o.identifying = true;
            o.system = std::string(Str(&c, "system"));
            o.code = std::string(Str(&c, "code")) + "|" + std::string(Str(&v, "value"));
          }
        }
      }
    } else if (t == "ContactPoint") {
      IndexEntry& e = Add(def, IndexEntry::Kind::kToken);
      e.identifying = true;
      e.code = std::string(Str(&v, "value"));
    } else if (t == "boolean" && v.is_bool()) {
      Add(def, IndexEntry::Kind::kToken).code = v.as_bool() ? "true" : "false";
    } else if (v.is_string() && IsPrimitiveString(t)) {
      Add(def, IndexEntry::Kind::kToken).code = v.as_string();
    }
  }

  void Text(const SearchParamDef& def, std::string_view s, bool identifying) {
    if (s.empty()) return;
    IndexEntry& e = Add(def, IndexEntry::Kind::kString);
    e.text = std::string(s);
    e.identifying = identifying;
  }

  void Texts(const SearchParamDef& def, const json::Value& v, std::string_view key,
             bool identifying) {
    const json::Value* f = v.Find(key);
    if (f == nullptr) return;
    if (f->is_string()) {
      Text(def, f->as_string(), identifying);
    } else if (f->is_array()) {
      for (const json::Value& x : f->items()) {
        if (x.is_string()) Text(def, x.as_string(), identifying);
      }
    }
  }

  void String(const SearchParamDef& def, const Item& item) {
    if (item.kind() == Item::Kind::kString) {  // computed by the expression
      Text(def, item.string(), false);
      return;
    }
    if (!item.is_node() || item.node().value == nullptr) return;
    const json::Value& v = *item.node().value;
    std::string_view t = item.type_name();
    if (t == "HumanName") {
      for (const char* k : {"family", "given", "prefix", "suffix", "text"}) Texts(def, v, k, true);
    } else if (t == "Address") {
      for (const char* k : {"line", "city", "district", "state", "postalCode", "country", "text"}) {
        Texts(def, v, k, true);
      }
    } else if (v.is_string()) {
      // An address part or a name part selected directly is identifying too.
      const ElementDef* d = item.node().def;
      bool identifying = false;
      if (d != nullptr) {
        std::string_view path = d->path;
        identifying = path.starts_with("HumanName.") || path.starts_with("Address.");
      }
      Text(def, v.as_string(), identifying);
    }
  }

  void Date(const SearchParamDef& def, const Item& item) {
    auto emit = [&](int64_t lo, int64_t hi) {
      IndexEntry& e = Add(def, IndexEntry::Kind::kDate);
      e.lo = lo;
      e.hi = hi;
      e.identifying = IsIdentifyingDateParam(resource_type, def.code);
    };
    if (item.kind() == Item::Kind::kDate || item.kind() == Item::Kind::kDateTime) {
      if (auto r = RangeOf(item.temporal())) emit(r->first, r->second);
      return;
    }
    if (!item.is_node() || item.node().value == nullptr) return;
    const json::Value& v = *item.node().value;
    std::string_view t = item.type_name();
    if (v.is_string() && (t == "date" || t == "dateTime" || t == "instant")) {
      if (auto r = DateRange(v.as_string())) {
        emit(r->first, r->second);
        if (IsIdentifyingDateParam(resource_type, def.code)) {
          // Blind-indexed by its text at each precision: exact match only.
          out->back().text = v.as_string().substr(0, 10);
        }
      }
    } else if (t == "Period") {
      int64_t lo = std::numeric_limits<int64_t>::min();
      int64_t hi = std::numeric_limits<int64_t>::max();
      if (auto s = Str(&v, "start"); !s.empty()) {
        if (auto r = DateRange(s)) lo = r->first;
      }
      if (auto s = Str(&v, "end"); !s.empty()) {
        if (auto r = DateRange(s)) hi = r->second;
      }
      if (lo != std::numeric_limits<int64_t>::min() || hi != std::numeric_limits<int64_t>::max()) {
        emit(lo, hi);
      }
    } else if (t == "Timing") {
      if (const json::Value* ev = v.Find("event"); ev && ev->is_array()) {
        for (const json::Value& x : ev->items()) {
          if (x.is_string()) {
            if (auto r = DateRange(x.as_string())) emit(r->first, r->second);
          }
        }
      }
    }
  }

  void Number(const SearchParamDef& def, const Item& item) {
    double d = 0;
    if (item.kind() == Item::Kind::kInteger) {
      d = static_cast<double>(item.integer());
    } else if (item.kind() == Item::Kind::kDecimal) {
      d = item.decimal().ToDouble();
    } else if (item.is_node() && item.node().value && item.node().value->is_number()) {
      if (!ParseDouble(item.node().value->number_text(), &d)) return;
    } else {
      return;
    }
    Add(def, IndexEntry::Kind::kNumber).value = d;
  }

  void QuantityValue(const SearchParamDef& def, const Item& item) {
    if (!item.is_node() || item.node().value == nullptr) return;
    const json::Value& v = *item.node().value;
    std::string_view t = item.type_name();
    const json::Value* value = v.Find("value");
    double d = 0;
    if (value == nullptr || !value->is_number() || !ParseDouble(value->number_text(), &d)) return;
    if (IsQuantityType(t)) {
      IndexEntry& e = Add(def, IndexEntry::Kind::kQuantity);
      e.value = d;
      e.system = std::string(Str(&v, "system"));
      e.code = std::string(Str(&v, "code"));
      e.text = std::string(Str(&v, "unit"));
    } else if (t == "Money") {
      IndexEntry& e = Add(def, IndexEntry::Kind::kQuantity);
      e.value = d;
      e.system = "urn:iso:std:iso:4217";
      e.code = std::string(Str(&v, "currency"));
    }
  }

  void Reference(const SearchParamDef& def, const Item& item) {
    if (!item.is_node() || item.node().value == nullptr) return;
    const json::Value& v = *item.node().value;
    std::string_view t = item.type_name();
    if (t == "Reference") {
      std::string_view ref = Str(&v, "reference");
      if (!ref.empty()) ReferenceText(def, ref);
      if (const json::Value* id = v.Find("identifier"); id && id->is_object()) {
        IndexEntry& e = out->emplace_back();
        e.kind = IndexEntry::Kind::kToken;
        e.param = def.code + ":identifier";
        e.identifying = true;
        e.system = std::string(Str(id, "system"));
        e.code = std::string(Str(id, "value"));
      }
    } else if (v.is_string() && (t == "canonical" || t == "uri" || t == "url")) {
      ReferenceText(def, v.as_string());
    }
  }

  void ReferenceText(const SearchParamDef& def, std::string_view ref) {
    if (ref.starts_with("#")) return;  // contained: not searchable
    std::string_view rel = ref;
    if (!base_url.empty() && ref.size() > base_url.size() + 1 && ref.starts_with(base_url) &&
        ref[base_url.size()] == '/') {
      rel = ref.substr(base_url.size() + 1);
    }
    // Exactly Type/id or Type/id/_history/v (the forms the compartment rules
    // read too: anything else must not be searchable as a reference to Type/id).
    size_t slash = rel.find('/');
    if (slash != std::string_view::npos && rel.find(':') == std::string_view::npos) {
      std::string_view type = rel.substr(0, slash);
      std::string_view rest = rel.substr(slash + 1);
      std::string_view id = rest.substr(0, rest.find('/'));
      std::string_view tail = rest.substr(id.size());
      bool versioned = false;
      if (tail.starts_with("/_history/") && tail.size() > 10) {
        versioned =
            std::all_of(tail.begin() + 10, tail.end(), [](char c) { return c >= '0' && c <= '9'; });
      }
      if (IsResourceType(type) && IsValidId(id) && (tail.empty() || versioned)) {
        IndexEntry& e = Add(def, IndexEntry::Kind::kReference);
        e.target_type = std::string(type);
        e.target_id = std::string(id);
        return;
      }
    }
    IndexEntry& e = Add(def, IndexEntry::Kind::kReference);
    e.text = std::string(ref);
  }

  void Uri(const SearchParamDef& def, const Item& item) {
    if (item.kind() == Item::Kind::kString) {
      Add(def, IndexEntry::Kind::kUri).text = std::string(item.string());
    } else if (item.is_node() && item.node().value && item.node().value->is_string()) {
      Add(def, IndexEntry::Kind::kUri).text = item.node().value->as_string();
    }
  }
};

}  // namespace

namespace {

// One composite value: each token of the first component paired with each
// value of the second (both evaluated relative to `item`).
void Composite(const Compiled& c, const Item& item, const fhirpath::Environment& env, Emitter& em,
               std::vector<IndexEntry>* out) {
  auto first = fhirpath::Evaluate(*c.components[0], item, env);
  auto second = fhirpath::Evaluate(*c.components[1], item, env);
  if (!first.ok() || !second.ok()) return;
  // Reuse the plain emitters into scratch vectors, then pair their entries.
  SearchParamDef scratch;
  scratch.code = c.def->code;
  std::vector<IndexEntry> tokens, values;
  Emitter te{em.resource_type, em.base_url, &tokens};
  for (const Item& i : *first) te.Token(scratch, i);
  Emitter ve{em.resource_type, em.base_url, &values};
  const std::string& kind = c.component_types[1];
  for (const Item& i : *second) {
    if (kind == "token") {
      ve.Token(scratch, i);
    } else if (kind == "quantity") {
      ve.QuantityValue(scratch, i);
    } else if (kind == "date") {
      ve.Date(scratch, i);
    } else if (kind == "string") {
      ve.String(scratch, i);
    }
  }
  for (const IndexEntry& t : tokens) {
    if (t.code.empty()) continue;
    for (const IndexEntry& v : values) {
      IndexEntry& e = out->emplace_back();
      e.kind = IndexEntry::Kind::kComposite;
      e.param = c.def->code;
      e.system = t.system;
      e.code = t.code;
      e.c2_kind = kind;
      e.c2_system = v.system;
      e.c2_code = kind == "quantity" && v.code.empty() ? v.text : v.code;
      e.value = v.value;
      e.lo = v.lo;
      e.hi = v.hi;
      e.c2_text = kind == "string" ? NormalizeSearchString(v.text) : std::string();
      e.identifying = t.identifying || v.identifying;
    }
  }
}

}  // namespace

std::vector<IndexEntry> SearchIndexer::Extract(std::string_view type, const json::Value& resource,
                                               std::string_view base_url) const {
  std::vector<IndexEntry> out;
  const auto& compiled = impl_->For(type);
  if (compiled.empty()) return out;
  fhirpath::Environment env = fhirpath::Environment::ForResource(resource);
  env.limits.max_steps = 200000;
  Item root = Item::Resource(resource);
  Emitter em{type, base_url, &out};
  for (const Compiled& c : compiled) {
    auto result = fhirpath::Evaluate(*c.expr, root, env);
    if (!result.ok()) continue;
    const std::string& pt = c.def->type;
    if (pt == "composite") {
      for (const Item& item : *result) Composite(c, item, env, em, &out);
      continue;
    }
    for (const Item& item : *result) {
      if (pt == "token") {
        em.Token(*c.def, item);
      } else if (pt == "string") {
        em.String(*c.def, item);
      } else if (pt == "date") {
        em.Date(*c.def, item);
      } else if (pt == "number") {
        em.Number(*c.def, item);
      } else if (pt == "quantity") {
        em.QuantityValue(*c.def, item);
      } else if (pt == "reference") {
        em.Reference(*c.def, item);
      } else if (pt == "uri") {
        em.Uri(*c.def, item);
      }
    }
  }
  return out;
}

}  // namespace fhirward::fhir
