// Policy files: TOML parsing and validation (format: docs/policy.md), CIDR
// networks.
#include "policy/policy_set.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "fhir/resources.h"
#include "policy/policy.h"
#include "toml++/toml.h"

namespace fhirward::policy {
namespace {

using StringNode = toml::value<std::string>;

// String concatenation over std::string_view (absl's AlphaNum here takes
// absl::string_view, which is not std::string_view in this build).
template <typename T>
void AppendOne(std::string& out, const T& v) {
  if constexpr (std::is_arithmetic_v<T>) {
    out += std::to_string(v);
  } else {
    out += std::string_view(v);
  }
}
template <typename... Ts>
void AppendTo(std::string& out, const Ts&... parts) {
  (AppendOne(out, parts), ...);
}
template <typename... Ts>
std::string Cat(const Ts&... parts) {
  std::string out;
  AppendTo(out, parts...);
  return out;
}

bool IsLower(char c) { return c >= 'a' && c <= 'z'; }
bool IsUpper(char c) { return c >= 'A' && c <= 'Z'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsAlnum(char c) { return IsLower(c) || IsUpper(c) || IsDigit(c); }

// [a-z0-9][a-z0-9._-]{0,63}
bool IsPolicyId(std::string_view s) {
  if (s.empty() || s.size() > 64 || !(IsLower(s[0]) || IsDigit(s[0]))) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return IsLower(c) || IsDigit(c) || c == '.' || c == '_' || c == '-';
  });
}

// [A-Za-z0-9._-]{1,max}
bool IsCode(std::string_view s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return IsAlnum(c) || c == '.' || c == '_' || c == '-'; });
}

// [a-z][a-z0-9-]{0,max-1}: role names, rule and relationship source ids,
// search parameter codes.
bool IsName(std::string_view s, size_t max) {
  if (s.empty() || s.size() > max || !IsLower(s[0])) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return IsLower(c) || IsDigit(c) || c == '-'; });
}

// [A-Z]{2,16}
bool IsPurpose(std::string_view s) {
  return s.size() >= 2 && s.size() <= 16 && std::all_of(s.begin(), s.end(), IsUpper);
}

constexpr std::string_view kInteractions[] = {"read",   "vread",  "search", "history",
                                              "create", "update", "patch",  "delete"};

constexpr std::string_view kInteractionList =
    "read, vread, search, history, create, update, patch or delete";

bool IsInteractionName(std::string_view s) {
  return std::find(std::begin(kInteractions), std::end(kInteractions), s) !=
         std::end(kInteractions);
}

// "Type.seg(.seg){0,7}", each segment [a-z][A-Za-z0-9]* with an optional "[x]".
// Returns "" when valid, else why not.
std::string CheckElementPath(std::string_view path) {
  size_t dot = path.find('.');
  if (dot == std::string_view::npos) {
    return Cat("invalid element path '", path, "': expected Type.element(.element)*");
  }
  std::string_view type = path.substr(0, dot);
  if (!fhir::IsResourceType(type)) {
    return Cat("unknown resource type '", type, "' in element path '", path, "'");
  }
  std::string_view rest = path.substr(dot + 1);
  int segments = 0;
  while (true) {
    size_t next = rest.find('.');
    std::string_view seg = rest.substr(0, next);
    if (seg.size() > 3 && seg.substr(seg.size() - 3) == "[x]") seg.remove_suffix(3);
    bool ok = !seg.empty() && IsLower(seg[0]) && std::all_of(seg.begin(), seg.end(), IsAlnum);
    if (!ok || ++segments > 8) {
      return Cat("invalid element path '", path,
                 "': expected Type.element(.element)* (at most 8 elements, each "
                 "[a-z][A-Za-z0-9]* with an optional [x])");
    }
    if (next == std::string_view::npos) break;
    rest = rest.substr(next + 1);
  }
  return "";
}

// "HH:MM" -> minutes since midnight, -1 when invalid.
int ParseClock(std::string_view s) {
  if (s.size() != 5 || s[2] != ':' || !IsDigit(s[0]) || !IsDigit(s[1]) || !IsDigit(s[3]) ||
      !IsDigit(s[4])) {
    return -1;
  }
  int h = (s[0] - '0') * 10 + (s[1] - '0');
  int m = (s[3] - '0') * 10 + (s[4] - '0');
  if (h > 23 || m > 59) return -1;
  return h * 60 + m;
}

std::optional<std::pair<int, int>> ParseHours(std::string_view s) {
  if (s.size() != 11 || s[5] != '-') return std::nullopt;
  int start = ParseClock(s.substr(0, 5));
  int end = ParseClock(s.substr(6));
  if (start < 0 || end < 0 || start == end) return std::nullopt;
  return std::make_pair(start, end);
}

// "[+-]HH:MM" within 14:00 -> minutes.
std::optional<int> ParseUtcOffset(std::string_view s) {
  if (s.size() != 6 || (s[0] != '+' && s[0] != '-')) return std::nullopt;
  int m = ParseClock(s.substr(1));
  if (m < 0 || m > 14 * 60) return std::nullopt;
  return s[0] == '-' ? -m : m;
}

int Weekday(std::string_view s) {
  static constexpr std::string_view kDays[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
  for (int i = 0; i < 7; ++i) {
    if (kDays[i] == s) return i;
  }
  return -1;
}

std::optional<Relationship> ParseRelationship(std::string_view s) {
  if (s == "none") return Relationship::kNone;
  if (s == "scopes") return Relationship::kScopes;
  if (s == "self") return Relationship::kSelf;
  if (s == "care") return Relationship::kCare;
  return std::nullopt;
}

bool ParseAddress(std::string_view text, std::array<uint8_t, 16>* out, bool* v4) {
  if (text.empty() || text.size() > 64) return false;
  std::string s(text);
  in_addr a4;
  if (inet_pton(AF_INET, s.c_str(), &a4) == 1) {
    out->fill(0);
    (*out)[10] = 0xff;
    (*out)[11] = 0xff;
    std::memcpy(out->data() + 12, &a4, 4);
    *v4 = true;
    return true;
  }
  in6_addr a6;
  if (inet_pton(AF_INET6, s.c_str(), &a6) == 1) {
    std::memcpy(out->data(), &a6, 16);
    *v4 = false;
    return true;
  }
  return false;
}

// Whether a and b agree on their first `prefix` bits.
bool SamePrefix(const std::array<uint8_t, 16>& a, const std::array<uint8_t, 16>& b, int prefix) {
  int full = prefix / 8;
  if (std::memcmp(a.data(), b.data(), full) != 0) return false;
  int rest = prefix % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[full] & mask) == (b[full] & mask);
}

// Builds a PolicySet from a parsed TOML document, collecting every error.
class Loader {
 public:
  explicit Loader(std::string_view file) : file_(file) {}

  std::vector<PolicyError> Load(const toml::table& root, PolicySet* p);

 private:
  void Error(const toml::source_region& r, std::string message) {
    errors_.push_back({file_, static_cast<int>(r.begin.line), static_cast<int>(r.begin.column),
                       std::move(message)});
  }
  void Error(const toml::node& n, std::string message) { Error(n.source(), std::move(message)); }
  void FileError(std::string message) { errors_.push_back({file_, 0, 0, std::move(message)}); }

  void CheckKeys(const toml::table& t, std::string_view where,
                 std::initializer_list<std::string_view> allowed) {
    for (auto&& [k, v] : t) {
      if (std::find(allowed.begin(), allowed.end(), k.str()) == allowed.end()) {
        const toml::source_region& r = k.source().begin.line ? k.source() : v.source();
        Error(r, where.empty() ? Cat("unknown key '", k.str(), "' at the top level")
                               : Cat("unknown key '", k.str(), "' in ", where));
      }
    }
  }

  void Missing(const toml::table& t, std::string_view key, std::string_view where) {
    Error(t, Cat("missing required key '", key, "' in ", where));
  }

  // The string at `key`; null when absent (an error when `required`) or not a string.
  const StringNode* Str(const toml::table& t, std::string_view key, std::string_view where,
                        bool required = false) {
    const toml::node* n = t.get(key);
    if (!n) {
      if (required) Missing(t, key, where);
      return nullptr;
    }
    if (!n->is_string()) {
      Error(*n, Cat("'", key, "' must be a string"));
      return nullptr;
    }
    return n->as_string();
  }

  // The strings of the array at `key`; nullopt when absent or malformed.
  std::optional<std::vector<const StringNode*>> Strs(const toml::table& t, std::string_view key) {
    const toml::node* n = t.get(key);
    if (!n) return std::nullopt;
    const toml::array* a = n->as_array();
    std::vector<const StringNode*> out;
    if (a) {
      for (const toml::node& e : *a) {
        if (!e.is_string()) {
          a = nullptr;
          break;
        }
        out.push_back(e.as_string());
      }
    }
    if (!a) {
      Error(*n, Cat("'", key, "' must be an array of strings"));
      return std::nullopt;
    }
    return out;
  }

  void Bool(const toml::table& t, std::string_view key, bool* out) {
    const toml::node* n = t.get(key);
    if (!n) return;
    if (!n->is_boolean()) {
      Error(*n, Cat("'", key, "' must be true or false"));
      return;
    }
    *out = n->as_boolean()->get();
  }

  // The integer at `key` when present and within [lo, hi].
  std::optional<int64_t> Int(const toml::table& t, std::string_view key, int64_t lo, int64_t hi) {
    const toml::node* n = t.get(key);
    if (!n) return std::nullopt;
    if (!n->is_integer()) {
      Error(*n, Cat("'", key, "' must be an integer"));
      return std::nullopt;
    }
    int64_t v = n->as_integer()->get();
    if (v < lo || v > hi) {
      Error(*n, Cat("'", key, "' must be between ", lo, " and ", hi));
      return std::nullopt;
    }
    return v;
  }

  void LoadPolicy(const toml::table& t, PolicySet* p);
  void LoadRole(std::string_view name, const toml::table& t, Role* role);
  void LoadRule(const toml::table& t, std::string_view where, Rule* rule);
  void LoadConditions(const toml::node& n, std::string_view where, Conditions* c);
  void LoadRelationship(const toml::table& t, std::string_view where, RelationshipSource* s);
  void LoadBreakGlass(const toml::table& t, BreakGlassPolicy* b);
  void CheckRoleRefs(const std::vector<const StringNode*>& names) {
    for (const StringNode* s : names) {
      if (!role_names_.count(s->get())) Error(*s, Cat("unknown role '", s->get(), "'"));
    }
  }

  std::string file_;
  std::vector<PolicyError> errors_;
  std::set<std::string, std::less<>> role_names_;
};

std::vector<PolicyError> Loader::Load(const toml::table& root, PolicySet* p) {
  CheckKeys(root, "", {"policy", "roles", "rule", "relationship", "break_glass"});

  // Roles first: the other sections refer to them.
  if (const toml::node* n = root.get("roles")) {
    if (const toml::table* roles = n->as_table()) {
      for (auto&& [k, v] : *roles) {
        std::string name(k.str());
        const toml::table* rt = v.as_table();
        if (!rt) {
          Error(v, Cat("'roles.", name, "' must be a table"));
          continue;
        }
        if (!IsName(name, 32)) {
          Error(*rt, Cat("invalid role name '", name, "': expected [a-z][a-z0-9-]{0,31}"));
        }
        role_names_.insert(name);
        Role role;
        LoadRole(name, *rt, &role);
        p->roles.push_back(std::move(role));
      }
      // File order, not the table's (alphabetical) order.
      std::map<std::string, int, std::less<>> column;
      for (auto&& [k, v] : *roles) column[std::string(k.str())] = v.source().begin.column;
      std::stable_sort(p->roles.begin(), p->roles.end(), [&](const Role& a, const Role& b) {
        return std::pair(a.line, column[a.name]) < std::pair(b.line, column[b.name]);
      });
    } else {
      Error(*n, "'roles' must be a table");
    }
  }

  if (const toml::node* n = root.get("policy")) {
    if (const toml::table* t = n->as_table()) {
      LoadPolicy(*t, p);
    } else {
      Error(*n, "'policy' must be a table");
    }
  } else {
    FileError("missing [policy] table");
  }

  if (const toml::node* n = root.get("break_glass")) {
    if (const toml::table* t = n->as_table()) {
      LoadBreakGlass(*t, &p->break_glass);
    } else {
      Error(*n, "'break_glass' must be a table");
    }
  }

  if (const toml::node* n = root.get("rule")) {
    const toml::array* a = n->as_array();
    if (a && !a->is_array_of_tables()) a = nullptr;
    if (!a) {
      Error(*n, "'rule' must be an array of tables ([[rule]])");
    } else {
      std::map<std::string, int, std::less<>> ids;
      int index = 0;
      for (const toml::node& e : *a) {
        std::string where = Cat("[[rule]] #", ++index);
        Rule rule;
        LoadRule(*e.as_table(), where, &rule);
        if (!rule.id.empty()) {
          auto [it, fresh] = ids.emplace(rule.id, rule.line);
          if (!fresh) {
            Error(*e.as_table()->get("id"),
                  Cat("duplicate rule id '", rule.id, "' (first at line ", it->second, ")"));
          }
        }
        p->rules.push_back(std::move(rule));
      }
    }
  }

  if (const toml::node* n = root.get("relationship")) {
    const toml::array* a = n->as_array();
    if (a && !a->is_array_of_tables()) a = nullptr;
    if (!a) {
      Error(*n, "'relationship' must be an array of tables ([[relationship]])");
    } else {
      std::map<std::string, int, std::less<>> ids;
      int index = 0;
      for (const toml::node& e : *a) {
        std::string where = Cat("[[relationship]] #", ++index);
        RelationshipSource s;
        LoadRelationship(*e.as_table(), where, &s);
        if (!s.id.empty()) {
          auto [it, fresh] = ids.emplace(s.id, s.line);
          if (!fresh) {
            Error(*e.as_table()->get("id"), Cat("duplicate relationship source id '", s.id,
                                                "' (first at line ", it->second, ")"));
          }
        }
        p->relationships.push_back(std::move(s));
      }
    }
  }

  // Cross-section checks on roles.
  if (const toml::table* roles = root["roles"].as_table()) {
    for (const Role& role : p->roles) {
      const toml::table* rt = (*roles)[role.name].as_table();
      if (!rt) continue;
      if (role.relationship == Relationship::kCare && p->relationships.empty()) {
        Error(*rt, Cat("role '", role.name,
                       "' has relationship \"care\" but the policy defines no "
                       "[[relationship]] sources"));
      }
      if (role.break_glass && !p->break_glass.enabled) {
        Error(*rt->get("break_glass"), Cat("role '", role.name,
                                           "' may break glass but [break_glass] is not "
                                           "enabled"));
      }
    }
  }
  return std::move(errors_);
}

void Loader::LoadPolicy(const toml::table& t, PolicySet* p) {
  constexpr std::string_view kWhere = "[policy]";
  CheckKeys(t, kWhere,
            {"id", "version", "description", "utc_offset", "default_roles", "explain_roles"});
  if (const StringNode* s = Str(t, "id", kWhere, true)) {
    p->id = s->get();
    if (!IsPolicyId(p->id)) {
      Error(*s, Cat("invalid policy id '", p->id, "': expected [a-z0-9][a-z0-9._-]{0,63}"));
    }
  }
  if (const toml::node* n = t.get("version")) {
    if (n->is_string()) {
      p->version = n->as_string()->get();
    } else if (n->is_integer()) {
      p->version = std::to_string(n->as_integer()->get());
    } else {
      Error(*n, "'version' must be a string or an integer");
    }
    if ((n->is_string() || n->is_integer()) && !IsCode(p->version, 32)) {
      Error(*n, Cat("invalid policy version '", p->version, "': expected [A-Za-z0-9._-]{1,32}"));
    }
  } else {
    Missing(t, "version", kWhere);
  }
  if (const StringNode* s = Str(t, "description", kWhere)) p->description = s->get();
  if (const StringNode* s = Str(t, "utc_offset", kWhere)) {
    if (auto m = ParseUtcOffset(s->get())) {
      p->utc_offset_minutes = *m;
    } else {
      Error(*s,
            Cat("invalid utc_offset '", s->get(), "': expected +HH:MM or -HH:MM, at most 14:00"));
    }
  }
  if (auto roles = Strs(t, "default_roles")) {
    CheckRoleRefs(*roles);
    for (const StringNode* s : *roles) p->default_roles.push_back(s->get());
  }
  if (auto roles = Strs(t, "explain_roles")) {
    CheckRoleRefs(*roles);
    p->explain_roles.clear();
    for (const StringNode* s : *roles) p->explain_roles.push_back(s->get());
  }
}

void Loader::LoadRole(std::string_view name, const toml::table& t, Role* role) {
  std::string where = Cat("[roles.", name, "]");
  role->name = std::string(name);
  role->line = static_cast<int>(t.source().begin.line);
  CheckKeys(t, where,
            {"description", "scopes", "permissions", "relationship", "masked", "read_only",
             "denied_labels", "consent", "break_glass"});
  if (const StringNode* s = Str(t, "description", where)) role->description = s->get();
  if (auto scopes = Strs(t, "scopes")) {
    for (const StringNode* s : *scopes) {
      auto scope = ParseResourceScope(s->get());
      if (!scope) {
        Error(*s, Cat("invalid scope '", s->get(),
                      "': expected (patient|user|system)/(Type|*).(cruds|read|write|*)"));
      } else if (scope->restricted) {
        Error(*s, Cat("restricted scope '", s->get(), "' is not allowed in a role"));
      } else if (scope->type != "*" && !fhir::IsResourceType(scope->type)) {
        Error(*s, Cat("unknown resource type '", scope->type, "' in scope '", s->get(), "'"));
      }
      role->scopes.push_back(s->get());
    }
  }
  if (auto perms = Strs(t, "permissions")) {
    for (const StringNode* s : *perms) {
      const std::string& text = s->get();
      size_t dot = text.find('.');
      if (dot == std::string::npos || text.find('.', dot + 1) != std::string::npos) {
        Error(*s, Cat("invalid permission '", text, "': expected Type.interaction"));
        continue;
      }
      Permission perm{text.substr(0, dot), text.substr(dot + 1)};
      if (perm.type != "*" && !fhir::IsResourceType(perm.type)) {
        Error(*s, Cat("unknown resource type '", perm.type, "' in permission '", text, "'"));
      } else if (perm.interaction != "*" && !IsInteractionName(perm.interaction)) {
        Error(*s, Cat("unknown interaction '", perm.interaction, "' in permission '", text,
                      "': expected *, ", kInteractionList));
      } else {
        role->permissions.push_back(std::move(perm));
      }
    }
  }
  if (const StringNode* s = Str(t, "relationship", where)) {
    if (auto r = ParseRelationship(s->get())) {
      role->relationship = *r;
    } else {
      Error(*s, Cat("invalid relationship '", s->get(), "': expected none, scopes, self or care"));
    }
  }
  using PathList = std::pair<std::string_view, std::vector<std::string>*>;
  for (const PathList& list :
       {PathList{"masked", &role->masked}, {"read_only", &role->read_only}}) {
    auto [key, out] = list;
    if (auto paths = Strs(t, key)) {
      for (const StringNode* s : *paths) {
        std::string why = CheckElementPath(s->get());
        if (!why.empty()) {
          Error(*s, std::move(why));
        } else {
          out->push_back(s->get());
        }
      }
    }
  }
  if (auto labels = Strs(t, "denied_labels")) {
    for (const StringNode* s : *labels) {
      if (!IsCode(s->get(), 64)) {
        Error(*s,
              Cat("invalid security label code '", s->get(), "': expected [A-Za-z0-9._-]{1,64}"));
      } else {
        role->denied_labels.push_back(s->get());
      }
    }
  }
  Bool(t, "consent", &role->consent);
  Bool(t, "break_glass", &role->break_glass);
}

void Loader::LoadRule(const toml::table& t, std::string_view where, Rule* rule) {
  rule->line = static_cast<int>(t.source().begin.line);
  const size_t errors_before = errors_.size();
  CheckKeys(t, where, {"id", "description", "roles", "types", "interactions", "when", "unless"});
  if (const StringNode* s = Str(t, "id", where, true)) {
    if (IsName(s->get(), 32)) {
      rule->id = s->get();
    } else {
      Error(*s, Cat("invalid rule id '", s->get(), "': expected [a-z][a-z0-9-]{0,31}"));
    }
  }
  if (const StringNode* s = Str(t, "description", where)) rule->description = s->get();
  if (auto roles = Strs(t, "roles")) {
    CheckRoleRefs(*roles);
    for (const StringNode* s : *roles) rule->roles.push_back(s->get());
  }
  if (auto types = Strs(t, "types")) {
    for (const StringNode* s : *types) {
      if (!fhir::IsResourceType(s->get())) {
        Error(*s, Cat("unknown resource type '", s->get(), "'"));
      } else {
        rule->types.push_back(s->get());
      }
    }
  }
  if (auto interactions = Strs(t, "interactions")) {
    for (const StringNode* s : *interactions) {
      if (!IsInteractionName(s->get())) {
        Error(*s, Cat("unknown interaction '", s->get(), "': expected ", kInteractionList));
      } else {
        rule->interactions.push_back(s->get());
      }
    }
  }
  if (const toml::node* n = t.get("when"))
    LoadConditions(*n, Cat("'when' of ", where), &rule->when);
  if (const toml::node* n = t.get("unless")) {
    LoadConditions(*n, Cat("'unless' of ", where), &rule->unless);
  }
  // Only when the rule is otherwise valid: a malformed key already has its error.
  bool scoped = !rule->roles.empty() || !rule->types.empty() || !rule->interactions.empty();
  if (errors_.size() == errors_before && !scoped && rule->when.empty() && rule->unless.empty()) {
    Error(t, Cat("rule denies everything: ", where,
                 " has no roles, types, interactions, when or unless"));
  }
}

void Loader::LoadConditions(const toml::node& n, std::string_view where, Conditions* c) {
  const toml::table* t = n.as_table();
  if (!t) {
    Error(n, Cat(where, " must be a table"));
    return;
  }
  CheckKeys(*t, where, {"hours", "weekdays", "networks", "purpose_of_use"});
  if (const StringNode* s = Str(*t, "hours", where)) {
    c->hours = ParseHours(s->get());
    if (!c->hours) {
      Error(*s, Cat("invalid hours '", s->get(),
                    "': expected HH:MM-HH:MM (00:00 to 23:59, start differs from end)"));
    }
  }
  if (auto days = Strs(*t, "weekdays")) {
    for (const StringNode* s : *days) {
      int d = Weekday(s->get());
      if (d < 0) {
        Error(*s, Cat("invalid weekday '", s->get(),
                      "': expected sun, mon, tue, wed, thu, fri or sat"));
      } else {
        c->weekdays.push_back(d);
      }
    }
  }
  if (auto nets = Strs(*t, "networks")) {
    for (const StringNode* s : *nets) {
      if (auto cidr = ParseCidr(s->get())) {
        c->networks.push_back(std::move(*cidr));
      } else {
        Error(*s, Cat("invalid network '", s->get(),
                      "': expected an IPv4 or IPv6 address or CIDR block"));
      }
    }
  }
  if (auto purposes = Strs(*t, "purpose_of_use")) {
    for (const StringNode* s : *purposes) {
      if (!IsPurpose(s->get())) {
        Error(*s, Cat("invalid purpose of use '", s->get(), "': expected [A-Z]{2,16}"));
      } else {
        c->purpose_of_use.push_back(s->get());
      }
    }
  }
}

void Loader::LoadRelationship(const toml::table& t, std::string_view where, RelationshipSource* s) {
  s->line = static_cast<int>(t.source().begin.line);
  CheckKeys(t, where, {"id", "type", "actor", "status"});
  if (const StringNode* v = Str(t, "id", where, true)) {
    if (IsName(v->get(), 32)) {
      s->id = v->get();
    } else {
      Error(*v,
            Cat("invalid relationship source id '", v->get(), "': expected [a-z][a-z0-9-]{0,31}"));
    }
  }
  if (const StringNode* v = Str(t, "type", where, true)) {
    s->type = v->get();
    if (!fhir::IsResourceType(s->type)) {
      Error(*v, Cat("unknown resource type '", s->type, "'"));
    }
  }
  if (const StringNode* v = Str(t, "actor", where, true)) {
    s->actor = v->get();
    if (!IsName(s->actor, 64)) {
      Error(*v, Cat("invalid search parameter '", s->actor, "': expected [a-z][a-z0-9-]*"));
    }
  }
  if (auto status = Strs(t, "status")) {
    for (const StringNode* v : *status) {
      if (!IsCode(v->get(), 64)) {
        Error(*v, Cat("invalid status code '", v->get(), "'"));
      } else {
        s->status.push_back(v->get());
      }
    }
  }
}

void Loader::LoadBreakGlass(const toml::table& t, BreakGlassPolicy* b) {
  CheckKeys(t, "[break_glass]", {"enabled", "purposes", "duration_minutes", "min_justification"});
  Bool(t, "enabled", &b->enabled);
  if (auto purposes = Strs(t, "purposes")) {
    if (purposes->empty()) Error(*t.get("purposes"), "'purposes' must not be empty");
    b->purposes.clear();
    for (const StringNode* s : *purposes) {
      if (!IsPurpose(s->get())) {
        Error(*s, Cat("invalid purpose of use '", s->get(), "': expected [A-Z]{2,16}"));
      } else {
        b->purposes.push_back(s->get());
      }
    }
  }
  if (auto m = Int(t, "duration_minutes", 1, 1440)) b->duration_seconds = *m * 60;
  if (auto n = Int(t, "min_justification", 1, 1000)) b->min_justification = static_cast<size_t>(*n);
}

}  // namespace

std::string_view RelationshipName(Relationship r) {
  switch (r) {
    case Relationship::kNone:
      return "none";
    case Relationship::kScopes:
      return "scopes";
    case Relationship::kSelf:
      return "self";
    case Relationship::kCare:
      return "care";
  }
  return "none";
}

std::optional<Cidr> ParseCidr(std::string_view text) {
  Cidr c;
  c.text = std::string(text);
  std::string_view addr = text;
  std::optional<int> prefix;
  if (size_t slash = text.find('/'); slash != std::string_view::npos) {
    addr = text.substr(0, slash);
    std::string_view digits = text.substr(slash + 1);
    if (digits.empty() || digits.size() > 3 ||
        !std::all_of(digits.begin(), digits.end(), IsDigit)) {
      return std::nullopt;
    }
    int v = 0;
    for (char ch : digits) v = v * 10 + (ch - '0');
    prefix = v;
  }
  bool v4 = false;
  if (!ParseAddress(addr, &c.addr, &v4)) return std::nullopt;
  int max = v4 ? 32 : 128;
  int bits = prefix.value_or(max);
  if (bits > max) return std::nullopt;
  c.prefix = v4 ? bits + 96 : bits;
  // Host bits set ("10.1.2.3/8") are accepted and ignored.
  for (int i = 0; i < 16; ++i) {
    int keep = std::clamp(c.prefix - i * 8, 0, 8);
    c.addr[i] &= static_cast<uint8_t>(keep == 0 ? 0 : 0xff << (8 - keep));
  }
  return c;
}

bool CidrContains(const Cidr& net, std::string_view address) {
  if (address.size() >= 2 && address.front() == '[' && address.back() == ']') {
    address = address.substr(1, address.size() - 2);
  }
  std::array<uint8_t, 16> a{};
  bool v4 = false;
  if (!ParseAddress(address, &a, &v4)) return false;
  return SamePrefix(net.addr, a, std::clamp(net.prefix, 0, 128));
}

const Role* PolicySet::FindRole(std::string_view name) const {
  for (const Role& r : roles) {
    if (r.name == name) return &r;
  }
  return nullptr;
}

std::string PolicyError::ToString() const {
  std::string out = file.empty() ? "<policy>" : file;
  if (line > 0) {
    AppendTo(out, ":", line);
    if (column > 0) AppendTo(out, ":", column);
  }
  AppendTo(out, ": ", message);
  return out;
}

PolicyLoad ParsePolicy(std::string_view text, std::string_view file_name) {
  PolicyLoad load;
  toml::table root;
  try {
    root = toml::parse(text, file_name);
  } catch (const toml::parse_error& e) {
    load.errors.push_back({std::string(file_name), static_cast<int>(e.source().begin.line),
                           static_cast<int>(e.source().begin.column),
                           Cat("TOML syntax error: ", e.description())});
    return load;
  }
  auto policy = std::make_shared<PolicySet>();
  policy->source = std::string(file_name);
  load.errors = Loader(file_name).Load(root, policy.get());
  std::stable_sort(load.errors.begin(), load.errors.end(),
                   [](const PolicyError& a, const PolicyError& b) {
                     return std::tie(a.line, a.column) < std::tie(b.line, b.column);
                   });
  if (load.errors.empty()) load.policy = std::move(policy);
  return load;
}

PolicyLoad LoadPolicyFile(const std::string& path) {
  std::string text;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  int err = f ? 0 : errno;
  if (f) {
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    if (std::ferror(f)) err = errno ? errno : EIO;
    std::fclose(f);
  }
  if (err != 0) {
    PolicyLoad load;
    load.errors.push_back({path, 0, 0, Cat("cannot read: ", std::strerror(err))});
    return load;
  }
  return ParsePolicy(text, path);
}

}  // namespace fhirward::policy
