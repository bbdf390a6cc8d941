#include "server/search.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>

#include "common/error.h"
#include "fhir/model.h"
#include "fhir/resources.h"
#include "fhir/search_index.h"

namespace fhirward::server {
namespace {

using store::SearchClause;
using store::SearchPrefix;
using store::SearchValue;

absl::Status Bad(std::string_view detail) { return Error(ErrorCode::kInvalidParameter, detail); }

int Hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> Decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      int hi = Hex(s[i + 1]), lo = Hex(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (s[i] == '+') {
      out.push_back(' ');
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// Raw comma-separated parts of a parameter value, escapes kept (the '|' and
// '$' splits of tokens and composites need them).
std::vector<std::string> SplitRaw(std::string_view v) {
  std::vector<std::string> out(1);
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\\' && i + 1 < v.size()) {
      out.back().push_back(v[i]);
      out.back().push_back(v[++i]);
    } else if (v[i] == ',') {
      out.emplace_back();
    } else {
      out.back().push_back(v[i]);
    }
  }
  return out;
}

// "\," "\|" "\$" "\\" → the character itself (R4 §3.1.1.6).
std::string Unescape(std::string_view v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\\' && i + 1 < v.size()) ++i;
    out.push_back(v[i]);
  }
  return out;
}

// A parameter value split on unescaped commas, each part unescaped.
std::vector<std::string> SplitValues(std::string_view v) {
  std::vector<std::string> out;
  for (const std::string& part : SplitRaw(v)) out.push_back(Unescape(part));
  return out;
}

// The first unescaped '|' in a raw (still escaped) token value.
std::pair<std::string, std::optional<std::string>> SplitBar(std::string_view v) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\\') {
      ++i;  // an escaped character, not a separator
    } else if (v[i] == '|') {
      return {std::string(v.substr(0, i)), std::string(v.substr(i + 1))};
    }
  }
  return {std::string(v), std::nullopt};
}

std::optional<SearchPrefix> PrefixOf(std::string_view p) {
  static constexpr std::pair<std::string_view, SearchPrefix> kPrefixes[] = {
      {"eq", SearchPrefix::kEq}, {"ne", SearchPrefix::kNe}, {"gt", SearchPrefix::kGt},
      {"lt", SearchPrefix::kLt}, {"ge", SearchPrefix::kGe}, {"le", SearchPrefix::kLe},
      {"sa", SearchPrefix::kSa}, {"eb", SearchPrefix::kEb}, {"ap", SearchPrefix::kAp}};
  for (const auto& [k, v] : kPrefixes) {
    if (p == k) return v;
  }
  return std::nullopt;
}

// Splits an optional two-letter prefix off a date/number/quantity value.
SearchPrefix TakePrefix(std::string& v) {
  if (v.size() > 2 && v[0] >= 'a' && v[0] <= 'z' && v[1] >= 'a' && v[1] <= 'z') {
    if (auto p = PrefixOf(std::string_view(v).substr(0, 2))) {
      v.erase(0, 2);
      return *p;
    }
  }
  return SearchPrefix::kEq;
}

bool ParseNumber(std::string_view text, SearchValue* out) {
  if (text.empty() || text.size() > 64) return false;
  std::string s(text);
  // JSON number grammar (optional exponent), no hex, no inf/nan.
  size_t i = 0;
  if (s[i] == '-' || s[i] == '+') ++i;
  size_t digits = 0, frac = 0;
  while (i < s.size() && isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && isdigit(static_cast<unsigned char>(s[i]))) ++i, ++frac;
  }
  int exp = 0;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    size_t start = i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    size_t ed = 0;
    while (i < s.size() && isdigit(static_cast<unsigned char>(s[i]))) ++i, ++ed;
    if (ed == 0 || ed > 3) return false;
    exp = std::atoi(s.c_str() + start);
  }
  if (i != s.size() || digits + frac == 0) return false;
  out->value = std::strtod(s.c_str(), nullptr);
  if (!std::isfinite(out->value)) return false;
  // The precision of the value: half a unit of its last digit either side.
  const double half = 0.5 * std::pow(10.0, -static_cast<double>(frac) + exp);
  out->vlo = out->value - half;
  out->vhi = out->value + half;
  return true;
}

bool IsBlindDateText(std::string_view t) {
  auto digits = [&](size_t pos, size_t n) {
    for (size_t i = pos; i < pos + n; ++i) {
      if (i >= t.size() || !isdigit(static_cast<unsigned char>(t[i]))) return false;
    }
    return true;
  };
  if (t.size() == 4) return digits(0, 4);
  if (t.size() == 7) return digits(0, 4) && t[4] == '-' && digits(5, 2);
  if (t.size() == 10)
    return digits(0, 4) && t[4] == '-' && digits(5, 2) && t[7] == '-' && digits(8, 2);
  return false;
}

struct Parser {
  const SearchLimits& limits;
  std::string_view base_url;
  const NarrowFn& narrow;
  const fhir::Model& model = fhir::Model::R4();
  const fhir::SearchIndexer& indexer = fhir::SearchIndexer::R4();

  // Parses one parameter (name with modifiers/chain, raw value) of `type`
  // into a clause. `depth`: chain/_has levels used so far.
  absl::StatusOr<SearchClause> Clause(std::string_view type, std::string_view name,
                                      std::string_view raw, int depth) {
    if (name.starts_with("_has:")) return Has(type, name, raw, depth);
    // Chain: "subject:Patient.name" / "subject.name".
    size_t dot = name.find('.');
    if (dot != std::string_view::npos) return Chain(type, name, dot, raw, depth);
    std::string_view code = name;
    std::string modifier;
    if (size_t colon = name.find(':'); colon != std::string_view::npos) {
      code = name.substr(0, colon);
      modifier = std::string(name.substr(colon + 1));
    }
    SearchClause c;
    c.param = std::string(code);
    if (code == "_id") {
      if (!modifier.empty() && modifier != "not") {
        return Bad("_id supports no modifier except :not");
      }
      c.kind = SearchClause::Kind::kId;
      if (modifier == "not") return Bad("_id:not is not supported");
      for (auto& v : SplitValues(raw)) {
        SearchValue sv;
        sv.code = v;
        c.values.push_back(std::move(sv));
      }
      return Finish(std::move(c));
    }
    if (code == "_lastUpdated") {
      if (!modifier.empty()) return Bad("_lastUpdated supports no modifier");
      c.kind = SearchClause::Kind::kLastUpdated;
      for (auto& v : SplitValues(raw)) {
        SearchValue sv;
        sv.prefix = TakePrefix(v);
        auto r = fhir::DateRange(v);
        if (!r) return Bad("_lastUpdated: '" + v + "' is not a date");
        sv.lo = r->first;
        sv.hi = r->second;
        c.values.push_back(std::move(sv));
      }
      return Finish(std::move(c));
    }
    const fhir::SearchParamDef* def = model.FindSearchParam(type, code);
    if (def == nullptr) {
      return Error(ErrorCode::kInvalidParameter,
                   "unknown search parameter '" + std::string(code) + "' for " + std::string(type));
    }
    c.blind = indexer.IsIdentifying(type, code);
    if (modifier == "missing") {
      if (raw != "true" && raw != "false")
        return Bad(std::string(code) + ":missing needs true or false");
      c.modifier = "missing";
      c.missing = raw == "true";
      c.kind = KindOf(def->type);
      if (def->type == "date" && c.blind) c.kind = SearchClause::Kind::kDate;
      if (!fhir::IsIndexedParamType(def->type)) return Unsupported(*def);
      return c;
    }
    const std::string& pt = def->type;
    if (pt == "token") return Token(type, *def, std::move(c), modifier, raw);
    if (pt == "string") return String(*def, std::move(c), modifier, raw);
    if (pt == "date") return Date(*def, std::move(c), modifier, raw);
    if (pt == "number" || pt == "quantity") return Numeric(*def, std::move(c), modifier, raw);
    if (pt == "reference") return Reference(*def, std::move(c), modifier, raw);
    if (pt == "uri") return Uri(*def, std::move(c), modifier, raw);
    if (pt == "composite" && fhir::IsSupportedComposite(type, code)) {
      return Composite(type, *def, std::move(c), modifier, raw);
    }
    return Unsupported(*def);
  }

  static SearchClause::Kind KindOf(std::string_view t) {
    if (t == "token") return SearchClause::Kind::kToken;
    if (t == "string") return SearchClause::Kind::kString;
    if (t == "date") return SearchClause::Kind::kDate;
    if (t == "number") return SearchClause::Kind::kNumber;
    if (t == "quantity") return SearchClause::Kind::kQuantity;
    if (t == "reference") return SearchClause::Kind::kReference;
    return SearchClause::Kind::kUri;
  }

  static absl::Status Unsupported(const fhir::SearchParamDef& def) {
    return Error(ErrorCode::kNotImplemented,
                 "search parameter '" + def.code + "' of type " + def.type + " is not supported");
  }

  absl::StatusOr<SearchClause> Finish(SearchClause c) const {
    if (c.values.size() > static_cast<size_t>(limits.max_values)) {
      return Error(ErrorCode::kTooCostly,
                   c.param + ": more than " + std::to_string(limits.max_values) + " values");
    }
    for (const SearchValue& v : c.values) {
      if (v.code.empty() && v.text.empty() && v.system.empty() && v.target_id.empty() &&
          c.kind != SearchClause::Kind::kDate && c.kind != SearchClause::Kind::kNumber &&
          c.kind != SearchClause::Kind::kQuantity && c.kind != SearchClause::Kind::kLastUpdated &&
          !v.has_system) {
        return Bad(c.param + ": empty value");
      }
    }
    return c;
  }

  absl::StatusOr<SearchClause> Token(std::string_view type, const fhir::SearchParamDef& def,
                                     SearchClause c, const std::string& modifier,
                                     std::string_view raw) {
    c.kind = SearchClause::Kind::kToken;
    if (!modifier.empty() && modifier != "not" && modifier != "text" && modifier != "of-type") {
      return Error(ErrorCode::kNotImplemented,
                   def.code + ":" + modifier + " is not supported on token parameters");
    }
    if (modifier == "text" && c.blind) {
      return Bad(def.code +
                 ":text is not available: the values identify people and are "
                 "blind-indexed (exact match only)");
    }
    if (modifier == "of-type" && !(def.code == "identifier" || c.blind)) {
      return Bad(":of-type applies to identifier parameters");
    }
    c.modifier = modifier;
    for (std::string_view part : SplitRaw(raw)) {
      SearchValue v;
      if (modifier == "text") {
        v.text = Unescape(part);
      } else if (modifier == "of-type") {
        // type-system|type-code|value
        auto [sys, rest] = SplitBar(part);
        if (!rest) return Bad(":of-type needs system|code|value");
        auto [code, value] = SplitBar(*rest);
        if (!value || value->empty() || code.empty())
          return Bad(":of-type needs system|code|value");
        v.has_system = true;
        v.system = Unescape(sys);
        v.code = Unescape(code) + "|" + Unescape(*value);
      } else {
        SetToken(part, &v);
      }
      c.values.push_back(std::move(v));
    }
    (void)type;
    return Finish(std::move(c));
  }

  absl::StatusOr<SearchClause> String(const fhir::SearchParamDef& def, SearchClause c,
                                      const std::string& modifier, std::string_view raw) {
    c.kind = SearchClause::Kind::kString;
    if (!modifier.empty() && modifier != "exact" && modifier != "contains") {
      return Error(ErrorCode::kNotImplemented,
                   def.code + ":" + modifier + " is not supported on string parameters");
    }
    if (modifier == "contains" && c.blind) {
      return Bad(def.code +
                 ":contains is not available: the values identify people and are "
                 "blind-indexed (exact and prefix match only)");
    }
    c.modifier = modifier;
    for (auto& v : SplitValues(raw)) {
      SearchValue sv;
      sv.text = v;
      c.values.push_back(std::move(sv));
    }
    return Finish(std::move(c));
  }

  absl::StatusOr<SearchClause> Date(const fhir::SearchParamDef& def, SearchClause c,
                                    const std::string& modifier, std::string_view raw) {
    c.kind = SearchClause::Kind::kDate;
    if (!modifier.empty()) {
      return Error(ErrorCode::kNotImplemented, def.code + ":" + modifier + " is not supported");
    }
    for (auto& v : SplitValues(raw)) {
      SearchValue sv;
      sv.prefix = TakePrefix(v);
      auto r = fhir::DateRange(v);
      if (!r) return Bad(def.code + ": '" + v + "' is not a FHIR date");
      if (c.blind) {
        if (sv.prefix != SearchPrefix::kEq || !IsBlindDateText(v)) {
          return Bad(def.code +
                     " identifies people and is blind-indexed: only an exact date "
                     "(YYYY, YYYY-MM or YYYY-MM-DD) without prefix can be searched");
        }
        sv.date_text = v;
      }
      sv.lo = r->first;
      sv.hi = r->second;
      c.values.push_back(std::move(sv));
    }
    return Finish(std::move(c));
  }

  absl::StatusOr<SearchClause> Numeric(const fhir::SearchParamDef& def, SearchClause c,
                                       const std::string& modifier, std::string_view raw) {
    c.kind = def.type == "number" ? SearchClause::Kind::kNumber : SearchClause::Kind::kQuantity;
    if (!modifier.empty()) {
      return Error(ErrorCode::kNotImplemented, def.code + ":" + modifier + " is not supported");
    }
    for (std::string_view part : SplitRaw(raw)) {
      SearchValue sv;
      std::string number;
      if (c.kind == SearchClause::Kind::kQuantity) {
        auto [n, rest] = SplitBar(part);
        number = Unescape(n);
        if (rest) {
          auto [sys, code] = SplitBar(*rest);
          if (!code) return Bad(def.code + ": a quantity is number|system|code");
          sv.has_system = !sys.empty();
          sv.system = Unescape(sys);
          sv.code = Unescape(*code);
        }
      } else {
        number = Unescape(part);
      }
      sv.prefix = TakePrefix(number);
      if (!ParseNumber(number, &sv)) return Bad(def.code + ": '" + number + "' is not a number");
      c.values.push_back(std::move(sv));
    }
    return Finish(std::move(c));
  }

  // "Type/id", "id", an absolute URL (ours: made relative), a canonical.
  absl::Status ReferenceValue(const fhir::SearchParamDef& def, const std::string& type_modifier,
                              std::string value, SearchValue* sv) {
    if (!base_url.empty() && value.size() > base_url.size() + 1 && value.starts_with(base_url) &&
        value[base_url.size()] == '/') {
      value = value.substr(base_url.size() + 1);
    }
    size_t slash = value.find('/');
    if (value.find(':') == std::string::npos) {
      if (slash == std::string::npos) {
        if (!fhir::IsValidId(value)) return Bad(def.code + ": '" + value + "' is not an id");
        sv->target_id = value;
        sv->target_type = type_modifier;
        if (sv->target_type.empty() && def.target_types.size() == 1) {
          sv->target_type = def.target_types[0];
        }
        return absl::OkStatus();
      }
      std::string t = value.substr(0, slash);
      std::string rest = value.substr(slash + 1);
      std::string id = rest.substr(0, rest.find('/'));
      if (fhir::IsResourceType(t) && fhir::IsValidId(id)) {
        if (!type_modifier.empty() && type_modifier != t) {
          return Bad(def.code + ": the value's type is not the modifier's");
        }
        sv->target_type = t;
        sv->target_id = id;
        return absl::OkStatus();
      }
    }
    sv->text = value;  // canonical or another server's URL
    return absl::OkStatus();
  }

  absl::StatusOr<SearchClause> Reference(const fhir::SearchParamDef& def, SearchClause c,
                                         const std::string& modifier, std::string_view raw) {
    c.kind = SearchClause::Kind::kReference;
    c.blind = false;
    if (modifier == "identifier") {
      c.kind = SearchClause::Kind::kToken;
      c.modifier = "identifier";
      c.blind = true;
      for (std::string_view part : SplitRaw(raw)) {
        SearchValue v;
        SetToken(part, &v);
        c.values.push_back(std::move(v));
      }
      return Finish(std::move(c));
    }
    std::string type_modifier;
    if (!modifier.empty()) {
      if (!fhir::IsResourceType(modifier)) {
        return Error(ErrorCode::kNotImplemented,
                     def.code + ":" + modifier + " is not supported on reference parameters");
      }
      if (!def.target_types.empty() && std::find(def.target_types.begin(), def.target_types.end(),
                                                 modifier) == def.target_types.end()) {
        return Bad(def.code + " cannot refer to " + modifier);
      }
      type_modifier = modifier;
    }
    for (auto& v : SplitValues(raw)) {
      SearchValue sv;
      if (auto s = ReferenceValue(def, type_modifier, v, &sv); !s.ok()) return s;
      c.values.push_back(std::move(sv));
    }
    return Finish(std::move(c));
  }

  // token$second: "code$value", "system|code$ge5.4|http://unitsofmeasure.org|mmol/L".
  absl::StatusOr<SearchClause> Composite(std::string_view type, const fhir::SearchParamDef& def,
                                         SearchClause c, const std::string& modifier,
                                         std::string_view raw) {
    c.kind = SearchClause::Kind::kComposite;
    c.blind = false;
    if (!modifier.empty()) {
      return Error(ErrorCode::kNotImplemented,
                   def.code + ":" + modifier + " is not supported on composite parameters");
    }
    c.component_kind = fhir::CompositeComponentTypes(type, def.code)[1];
    for (std::string_view part : SplitRaw(raw)) {
      size_t dollar = std::string_view::npos;
      for (size_t i = 0; i < part.size(); ++i) {
        if (part[i] == '\\') {
          ++i;
        } else if (part[i] == '$') {
          dollar = i;
          break;
        }
      }
      if (dollar == std::string_view::npos) {
        return Bad(def.code + ": a composite value is first$second");
      }
      std::string_view first = part.substr(0, dollar);
      std::string_view rest = part.substr(dollar + 1);
      SearchValue v;
      SetToken(first, &v);
      if (v.code.empty()) return Bad(def.code + ": the first component needs a code");
      SearchValue w;
      const std::string& kind = c.component_kind;
      if (kind == "token") {
        SetToken(rest, &w);
        if (w.code.empty()) return Bad(def.code + ": the second component needs a code");
      } else if (kind == "quantity") {
        auto [n, unit] = SplitBar(rest);
        std::string number = Unescape(n);
        if (unit) {
          auto [sys, code] = SplitBar(*unit);
          if (!code) return Bad(def.code + ": a quantity is number|system|code");
          w.has_system = !sys.empty();
          w.system = Unescape(sys);
          w.code = Unescape(*code);
        }
        w.prefix = TakePrefix(number);
        if (!ParseNumber(number, &w)) return Bad(def.code + ": '" + number + "' is not a number");
      } else if (kind == "date") {
        std::string d = Unescape(rest);
        w.prefix = TakePrefix(d);
        auto r = fhir::DateRange(d);
        if (!r) return Bad(def.code + ": '" + d + "' is not a FHIR date");
        w.lo = r->first;
        w.hi = r->second;
      } else {
        w.text = Unescape(rest);
        if (w.text.empty()) return Bad(def.code + ": empty value");
      }
      v.second.push_back(std::move(w));
      c.values.push_back(std::move(v));
    }
    return Finish(std::move(c));
  }

  absl::StatusOr<SearchClause> Uri(const fhir::SearchParamDef& def, SearchClause c,
                                   const std::string& modifier, std::string_view raw) {
    c.kind = SearchClause::Kind::kUri;
    if (!modifier.empty() && modifier != "above" && modifier != "below") {
      return Error(ErrorCode::kNotImplemented, def.code + ":" + modifier + " is not supported");
    }
    c.modifier = modifier;
    for (auto& v : SplitValues(raw)) {
      SearchValue sv;
      sv.text = v;
      c.values.push_back(std::move(sv));
    }
    return Finish(std::move(c));
  }

  // The narrowing of a chained or _has target type; refuses types the
  // principal may not search.
  absl::Status Narrow(SearchClause& c) {
    auto n = narrow(c.target_type);
    if (!n.ok()) return n.status();
    c.narrow_patients = std::move(n->patients);
    ExcludeHidden(*n, &c.sub);
    return absl::OkStatus();
  }

  absl::StatusOr<SearchClause> Chain(std::string_view type, std::string_view name, size_t dot,
                                     std::string_view raw, int depth) {
    if (depth >= limits.max_chain_depth) {
      return Error(ErrorCode::kTooCostly, "chains deeper than " +
                                              std::to_string(limits.max_chain_depth) +
                                              " level(s) are not allowed");
    }
    std::string_view head = name.substr(0, dot);
    std::string_view rest = name.substr(dot + 1);
    std::string_view code = head;
    std::string target;
    if (size_t colon = head.find(':'); colon != std::string_view::npos) {
      code = head.substr(0, colon);
      target = std::string(head.substr(colon + 1));
    }
    const fhir::SearchParamDef* def = model.FindSearchParam(type, code);
    if (def == nullptr || def->type != "reference") {
      return Bad("'" + std::string(code) + "' is not a reference parameter of " +
                 std::string(type) + ": it cannot be chained");
    }
    if (target.empty()) {
      if (def->target_types.size() != 1) {
        return Bad(std::string(code) + " may refer to several types: name one (" +
                   std::string(code) + ":Type." + std::string(rest) + ")");
      }
      target = def->target_types[0];
    }
    if (!fhir::IsResourceType(target)) return Bad("unknown resource type " + target);
    SearchClause c;
    c.kind = SearchClause::Kind::kChain;
    c.param = std::string(code);
    c.target_type = target;
    auto sub = Clause(target, rest, raw, depth + 1);
    if (!sub.ok()) return sub.status();
    c.sub.push_back(std::move(*sub));
    if (auto s = Narrow(c); !s.ok()) return s;
    return c;
  }

  // _has:Type:param:rest
  absl::StatusOr<SearchClause> Has(std::string_view type, std::string_view name,
                                   std::string_view raw, int depth) {
    if (depth >= limits.max_chain_depth) {
      return Error(ErrorCode::kTooCostly, "_has deeper than " +
                                              std::to_string(limits.max_chain_depth) +
                                              " level(s) is not allowed");
    }
    std::string_view rest = name.substr(5);
    size_t c1 = rest.find(':');
    if (c1 == std::string_view::npos) return Bad("_has needs _has:Type:reference:parameter");
    std::string_view htype = rest.substr(0, c1);
    rest = rest.substr(c1 + 1);
    size_t c2 = rest.find(':');
    if (c2 == std::string_view::npos) return Bad("_has needs _has:Type:reference:parameter");
    std::string_view hparam = rest.substr(0, c2);
    std::string_view tail = rest.substr(c2 + 1);
    if (!fhir::IsResourceType(htype))
      return Bad("_has: unknown resource type " + std::string(htype));
    const fhir::SearchParamDef* def = model.FindSearchParam(htype, hparam);
    if (def == nullptr || def->type != "reference") {
      return Bad("_has: '" + std::string(hparam) + "' is not a reference parameter of " +
                 std::string(htype));
    }
    if (!def->target_types.empty() && std::find(def->target_types.begin(), def->target_types.end(),
                                                type) == def->target_types.end()) {
      return Bad("_has: " + std::string(htype) + "." + std::string(hparam) + " cannot refer to " +
                 std::string(type));
    }
    SearchClause c;
    c.kind = SearchClause::Kind::kHas;
    c.param = std::string(hparam);
    c.target_type = std::string(htype);
    auto sub = Clause(htype, tail, raw, depth + 1);
    if (!sub.ok()) return sub.status();
    c.sub.push_back(std::move(*sub));
    if (auto s = Narrow(c); !s.ok()) return s;
    return c;
  }

  // "system|code", "|code" (no system), "system|", "code" (any system), escapes
  // still in place.
  static void SetToken(std::string_view raw, SearchValue* v) {
    auto [a, b] = SplitBar(raw);
    if (b) {
      v->has_system = true;
      v->system = Unescape(a);
      v->code = Unescape(*b);
    } else {
      v->code = Unescape(a);
    }
  }
};

}  // namespace

std::string QueryEncode(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == ':' || c == '|' ||
        c == ',' || c == '/' || c == '$') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseQueryString(
    std::string_view qs) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t start = 0;
  while (start <= qs.size()) {
    size_t amp = qs.find('&', start);
    std::string_view pair =
        qs.substr(start, amp == std::string_view::npos ? std::string_view::npos : amp - start);
    start = amp == std::string_view::npos ? qs.size() + 1 : amp + 1;
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    auto name = Decode(pair.substr(0, eq));
    auto value = Decode(eq == std::string_view::npos ? "" : pair.substr(eq + 1));
    if (!name || !value) return Bad("malformed query string");
    out.emplace_back(std::move(*name), std::move(*value));
  }
  return out;
}

bool ExpressionReaches(std::string_view expression, std::string_view path) {
  size_t start = 0;
  while (start <= expression.size()) {
    size_t bar = expression.find('|', start);
    std::string_view part = expression.substr(
        start, bar == std::string_view::npos ? std::string_view::npos : bar - start);
    // "(Patient.deceased as dateTime)", " Patient.name.where(use='x')": the
    // element path before any function, cast or parenthesis.
    while (!part.empty() && (part.front() == ' ' || part.front() == '(')) part.remove_prefix(1);
    size_t end = part.find_first_of(" ()");
    std::string_view elem = part.substr(0, end);
    for (std::string_view fn : {".where", ".as", ".resolve", ".exists", ".ofType", ".first"}) {
      if (size_t f = elem.find(fn); f != std::string_view::npos) elem = elem.substr(0, f);
    }
    auto prefix = [](std::string_view a, std::string_view b) {  // a is b or above it
      return b.size() >= a.size() && b.compare(0, a.size(), a) == 0 &&
             (b.size() == a.size() || b[a.size()] == '.');
    };
    std::string_view stem = path;
    if (stem.size() > 3 && stem.substr(stem.size() - 3) == "[x]") {
      stem.remove_suffix(3);  // Patient.deceased[x] reaches Patient.deceased...
      if (elem.size() >= stem.size() && elem.compare(0, stem.size(), stem) == 0) return true;
    }
    if (!elem.empty() && (prefix(path, elem) || prefix(elem, path))) return true;
    if (bar == std::string_view::npos) break;
    start = bar + 1;
  }
  return false;
}

namespace {

absl::Status RefuseMaskedClauses(
    std::string_view type, const std::vector<store::SearchClause>& clauses,
    const std::function<std::vector<std::string>(std::string_view type)>& masked_of, int depth) {
  if (depth > 8) return absl::OkStatus();
  const fhir::Model& model = fhir::Model::R4();
  using K = store::SearchClause::Kind;
  const std::vector<std::string> masked = masked_of(type);
  for (const store::SearchClause& c : clauses) {
    std::string_view on = c.kind == K::kHas ? std::string_view(c.target_type) : type;
    const std::vector<std::string> here = c.kind == K::kHas ? masked_of(on) : masked;
    if (const fhir::SearchParamDef* def = model.FindSearchParam(on, c.param)) {
      for (const std::string& m : here) {
        if (ExpressionReaches(def->expression, m)) {
          return Error(ErrorCode::kForbidden, "searching on " + std::string(on) + "." + c.param +
                                                  " is not permitted: " + m +
                                                  " is masked for this principal");
        }
      }
    }
    if (c.kind == K::kChain || c.kind == K::kHas) {
      if (auto s = RefuseMaskedClauses(c.target_type, c.sub, masked_of, depth + 1); !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RefuseMaskedSearch(
    std::string_view type, const store::SearchQuery& q,
    const std::function<std::vector<std::string>(std::string_view type)>& masked_of) {
  if (auto s = RefuseMaskedClauses(type, q.clauses, masked_of, 0); !s.ok()) return s;
  const std::vector<std::string> masked = masked_of(type);
  if (masked.empty()) return absl::OkStatus();
  const fhir::Model& model = fhir::Model::R4();
  for (const store::SortKey& k : q.sort) {
    const fhir::SearchParamDef* def = model.FindSearchParam(type, k.param);
    if (def == nullptr) continue;
    for (const std::string& m : masked) {
      if (ExpressionReaches(def->expression, m)) {
        return Error(ErrorCode::kForbidden, "sorting by " + std::string(type) + "." + k.param +
                                                " is not permitted: " + m +
                                                " is masked for this principal");
      }
    }
  }
  return absl::OkStatus();
}

void ExcludeHidden(const Narrowing& n, std::vector<store::SearchClause>* clauses) {
  auto exclude = [&](std::vector<std::string> labels,
                     std::optional<std::vector<std::string>> patients) {
    store::SearchClause c;
    c.kind = store::SearchClause::Kind::kToken;
    c.param = "_security";
    c.modifier = "not";
    c.narrow_patients = std::move(patients);
    for (auto& code : labels) {
      store::SearchValue v;
      v.code = std::move(code);
      c.values.push_back(std::move(v));
    }
    clauses->push_back(std::move(c));
  };
  for (const auto& code : n.hidden_labels) exclude({code}, std::nullopt);
  std::map<std::vector<std::string>, std::vector<std::string>> by_labels;
  for (const auto& [patient, labels] : n.hidden_labels_of) by_labels[labels].push_back(patient);
  for (auto& [labels, patients] : by_labels) exclude(labels, std::move(patients));
  // No values: every resource in those compartments.
  if (!n.excluded_patients.empty()) exclude({}, n.excluded_patients);
}

absl::StatusOr<ParsedSearch> ParseSearch(
    std::string_view type, const std::vector<std::pair<std::string, std::string>>& params,
    const SearchLimits& limits, bool strict, std::string_view base_url, const NarrowFn& narrow) {
  Parser parser{limits, base_url, narrow};
  ParsedSearch out;
  out.query.type = std::string(type);
  out.query.count = limits.default_count;
  out.query.time_budget_ms = limits.time_budget_ms;
  std::vector<std::pair<std::string, std::string>> canonical;
  int search_params = 0;
  for (const auto& [name, value] : params) {
    if (name == "_format" || name == "_pretty" || name == "_cursor") continue;
    if (name == "_count") {
      char* end = nullptr;
      long n = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n < 0) return Bad("_count must be a number >= 0");
      out.query.count = static_cast<int>(std::min<long>(n, limits.max_count));
      if (n == 0) out.summary = "count";
      canonical.emplace_back(name, std::to_string(out.query.count));
      continue;
    }
    canonical.emplace_back(name, value);
    if (name == "_total") {
      if (value != "none" && value != "estimate" && value != "accurate") {
        return Bad("_total must be none, estimate or accurate");
      }
      out.total = value;
    } else if (name == "_summary") {
      if (value != "true" && value != "false" && value != "text" && value != "data" &&
          value != "count") {
        return Bad("_summary must be true, false, text, data or count");
      }
      out.summary = value;
    } else if (name == "_elements") {
      for (auto& e : SplitValues(value)) {
        if (!e.empty()) out.elements.push_back(e);
      }
      if (out.elements.size() > 64) return Error(ErrorCode::kTooCostly, "_elements: at most 64");
    } else if (name == "_sort") {
      for (auto& key : SplitValues(value)) {
        store::SortKey k;
        std::string_view code = key;
        if (code.starts_with("-")) {
          k.descending = true;
          code.remove_prefix(1);
        }
        k.param = std::string(code);
        if (code == "_id") {
          k.kind = store::SortKey::Kind::kId;
        } else if (code == "_lastUpdated") {
          k.kind = store::SortKey::Kind::kLastUpdated;
        } else {
          const fhir::SearchParamDef* def = parser.model.FindSearchParam(type, code);
          if (def == nullptr) return Bad("_sort: unknown parameter '" + std::string(code) + "'");
          if (parser.indexer.IsIdentifying(type, code)) {
            return Bad("_sort: '" + std::string(code) +
                       "' identifies people and is blind-indexed: it cannot order results");
          }
          const std::string& t = def->type;
          if (t == "date") {
            k.kind = store::SortKey::Kind::kDate;
          } else if (t == "string") {
            k.kind = store::SortKey::Kind::kString;
          } else if (t == "token" || t == "uri") {
            k.kind = store::SortKey::Kind::kToken;
          } else if (t == "number" || t == "quantity") {
            k.kind = store::SortKey::Kind::kNumber;
          } else if (t == "reference") {
            k.kind = store::SortKey::Kind::kReference;
          } else {
            return Bad("_sort: '" + std::string(code) + "' cannot order results");
          }
        }
        out.query.sort.push_back(std::move(k));
      }
      if (out.query.sort.size() > 4) return Error(ErrorCode::kTooCostly, "_sort: at most 4 keys");
    } else if (name == "_include" || name == "_revinclude" || name == "_include:iterate" ||
               name == "_revinclude:iterate" || name == "_include:recurse" ||
               name == "_revinclude:recurse") {
      IncludeSpec inc;
      inc.reverse = name.starts_with("_revinclude");
      inc.iterate = name.find(':') != std::string::npos;
      if (value == "*") {
        if (inc.reverse) return Bad("_revinclude=* is not supported");
        inc.source_type = std::string(type);
        inc.param = "*";
      } else {
        std::vector<std::string> parts;
        size_t s = 0;
        while (s <= value.size()) {
          size_t c = value.find(':', s);
          parts.push_back(value.substr(s, c == std::string::npos ? std::string::npos : c - s));
          s = c == std::string::npos ? value.size() + 1 : c + 1;
        }
        if (parts.size() < 2 || parts.size() > 3) {
          return Bad(name + " must be Type:parameter[:targetType]");
        }
        inc.source_type = parts[0];
        inc.param = parts[1];
        if (parts.size() == 3) inc.target_type = parts[2];
        if (!fhir::IsResourceType(inc.source_type)) return Bad(name + ": unknown type " + parts[0]);
        const fhir::SearchParamDef* def = parser.model.FindSearchParam(inc.source_type, inc.param);
        if (def == nullptr || def->type != "reference") {
          return Bad(name + ": '" + inc.param + "' is not a reference parameter of " + parts[0]);
        }
        if (!inc.target_type.empty() && !fhir::IsResourceType(inc.target_type)) {
          return Bad(name + ": unknown type " + inc.target_type);
        }
        if (!inc.reverse && !inc.iterate && inc.source_type != type) {
          return Bad(name + ": the source type must be the searched type (or use :iterate)");
        }
      }
      out.includes.push_back(std::move(inc));
      if (out.includes.size() > static_cast<size_t>(limits.max_includes)) {
        return Error(ErrorCode::kTooCostly, "more than " + std::to_string(limits.max_includes) +
                                                " _include/_revinclude parameters");
      }
    } else {
      if (++search_params > limits.max_params) {
        return Error(ErrorCode::kTooCostly,
                     "more than " + std::to_string(limits.max_params) + " search parameters");
      }
      auto clause = parser.Clause(type, name, value, 0);
      if (!clause.ok()) {
        // Lenient handling skips parameters it does not know (and says so).
        // A known parameter with an unsupported modifier or type is always
        // an error: ignoring it would silently widen the result.
        const ErrorCode code = CodeOf(clause.status());
        const bool unknown = code == ErrorCode::kInvalidParameter &&
                             DetailOf(clause.status()).starts_with("unknown search parameter");
        if (unknown && !strict) {
          out.ignored.push_back(name + ": " + DetailOf(clause.status()));
          canonical.pop_back();
          continue;
        }
        return clause.status();
      }
      out.query.clauses.push_back(std::move(*clause));
    }
  }
  if (out.summary == "count") out.total = "accurate";
  out.query.total = out.total != "none";
  for (size_t i = 0; i < canonical.size(); ++i) {
    if (i) out.canonical += "&";
    out.canonical += QueryEncode(canonical[i].first) + "=" + QueryEncode(canonical[i].second);
  }
  // The query travels in links and sealed cursors.
  if (out.canonical.size() > 8192) {
    return Error(ErrorCode::kTooCostly, "the query is longer than 8 KiB");
  }
  return out;
}

absl::StatusOr<store::SearchQuery> ParseCondition(std::string_view type, std::string_view query,
                                                  const SearchLimits& limits,
                                                  std::string_view base_url,
                                                  const NarrowFn& narrow) {
  auto params = ParseQueryString(query);
  if (!params.ok()) return params.status();
  if (params->empty()) return Bad("a conditional request needs search parameters");
  for (const auto& [name, value] : *params) {
    if (name.starts_with("_") && name != "_id" && name != "_lastUpdated" && name != "_tag" &&
        name != "_profile" && name != "_security" && !name.starts_with("_has:")) {
      return Bad("a condition cannot use " + name);
    }
  }
  auto parsed = ParseSearch(type, *params, limits, true, base_url, narrow);
  if (!parsed.ok()) return parsed.status();
  return std::move(parsed->query);
}

}  // namespace fhirward::server
