// Policy scenario tests: parsing scenario files (format: scenario.h) and
// running them against a policy.
#include "policy/scenario.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <set>
#include <tuple>
#include <utility>

#include "common/clock.h"
#include "common/error.h"
#include "common/str_cat.h"
#include "fhir/resources.h"
#include "toml++/toml.h"

namespace fhirward::policy {
namespace {

using StringNode = toml::value<std::string>;

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

bool ValidDate(int y, int m, int d) {
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (m < 1 || m > 12 || d < 1) return false;
  int max = kDays[m - 1];
  if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) max = 29;
  return d <= max;
}

// "2026-03-02T10:00:00Z", "2026-03-02T11:00:00.5+01:00" -> unix seconds.
std::optional<int64_t> ParseRfc3339(std::string_view s) {
  auto num = [&](size_t pos, size_t len) -> int {
    int v = 0;
    for (size_t i = pos; i < pos + len; ++i) {
      if (i >= s.size() || !IsDigit(s[i])) return -1;
      v = v * 10 + (s[i] - '0');
    }
    return v;
  };
  if (s.size() < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
      s[13] != ':' || s[16] != ':') {
    return std::nullopt;
  }
  const int y = num(0, 4), mo = num(5, 2), d = num(8, 2);
  const int h = num(11, 2), mi = num(14, 2), sec = num(17, 2);
  if (y < 0 || mo < 0 || d < 0 || h < 0 || mi < 0 || sec < 0) return std::nullopt;
  if (!ValidDate(y, mo, d) || h > 23 || mi > 59 || sec > 60) return std::nullopt;
  size_t i = 19;
  if (i < s.size() && s[i] == '.') {
    ++i;
    const size_t start = i;
    while (i < s.size() && IsDigit(s[i])) ++i;
    if (i == start) return std::nullopt;
  }
  int offset = 0;
  if (i < s.size() && (s[i] == 'Z' || s[i] == 'z')) {
    ++i;
  } else if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
    const int oh = num(i + 1, 2), om = num(i + 4, 2);
    if (i + 6 > s.size() || s[i + 3] != ':' || oh < 0 || om < 0 || oh > 23 || om > 59) {
      return std::nullopt;
    }
    offset = (oh * 60 + om) * (s[i] == '-' ? -1 : 1);
    i += 6;
  } else {
    return std::nullopt;
  }
  if (i != s.size()) return std::nullopt;
  return DaysFromCivil(y, mo, d) * 86400 + h * 3600 + mi * 60 + std::min(sec, 59) -
         int64_t{offset} * 60;
}

std::string Join(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) out += ", ";
    out += v[i];
  }
  out += "]";
  return out;
}

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

std::optional<ErrorCode> ErrorCodeByName(std::string_view name) {
  for (int i = 0; i < static_cast<int>(ErrorCode::kCount_); ++i) {
    const ErrorCode code = static_cast<ErrorCode>(i);
    if (Describe(code).name == name) return code;
  }
  return std::nullopt;
}

struct Expect {
  bool allow = false;
  std::optional<std::string> role, rule, rule_prefix, reason, deny_code;
  std::optional<std::vector<std::string>> patients, masked, denied_labels, consent_hidden,
      consent_excluded;
  std::optional<bool> confined, consent, break_glass, alert;
  std::optional<bool> resource_allow;
  std::optional<std::string> resource_reason;
};

struct Scenario {
  std::string name;
  int line = 0;
  Principal principal;
  AccessRequest request;
  Environment env;
  // Facts.
  std::map<std::string, std::vector<std::string>, std::less<>> related;
  std::vector<json::Value> consents;
  std::vector<std::string> consent_patients;
  bool break_glass_active = false;
  // The resource step.
  bool has_resource = false;
  std::string resource_type;
  std::vector<std::string> resource_patients;
  bool in_compartment_definition = false;
  std::optional<std::vector<std::string>> resource_labels;
  Interaction resource_interaction = Interaction::kRead;
  Expect expect;
};

// Builds scenarios from a parsed TOML document, collecting every error.
class Parser {
 public:
  Parser(const PolicySet& policy, std::string_view file) : policy_(policy), file_(file) {}

  // Parses one [[scenario]] table; false (and errors added) when invalid.
  bool ParseScenario(const toml::table& t, int index, Scenario* s);

  void Error(const toml::source_region& r, std::string message) {
    errors_.push_back({file_, static_cast<int>(r.begin.line), static_cast<int>(r.begin.column),
                       std::move(message)});
  }
  void Error(const toml::node& n, std::string message) { Error(n.source(), std::move(message)); }

  void CheckKeys(const toml::table& t, std::string_view where,
                 std::initializer_list<std::string_view> allowed) {
    for (auto&& [k, v] : t) {
      if (std::find(allowed.begin(), allowed.end(), k.str()) == allowed.end()) {
        const toml::source_region& r = k.source().begin.line ? k.source() : v.source();
        Error(r, Cat("unknown key '", k.str(), "' in ", where));
      }
    }
  }

  std::vector<PolicyError>& errors() { return errors_; }

 private:
  // The sub-table `key` of `t`; null when absent (an error when `required`)
  // or not a table.
  const toml::table* Table(const toml::table& t, std::string_view key, std::string_view where,
                           bool required) {
    const toml::node* n = t.get(key);
    if (!n) {
      if (required) Error(t, Cat("missing required table [", where, ".", key, "]"));
      return nullptr;
    }
    if (!n->is_table()) {
      Error(*n, Cat("'", key, "' in ", where, " must be a table"));
      return nullptr;
    }
    return n->as_table();
  }

  const StringNode* Str(const toml::table& t, std::string_view key, std::string_view where,
                        bool required = false) {
    const toml::node* n = t.get(key);
    if (!n) {
      if (required) Error(t, Cat("missing required key '", key, "' in ", where));
      return nullptr;
    }
    if (!n->is_string()) {
      Error(*n, Cat("'", key, "' in ", where, " must be a string"));
      return nullptr;
    }
    return n->as_string();
  }

  // Copies the string at `key` into `out` when present.
  void StrInto(const toml::table& t, std::string_view key, std::string_view where,
               std::string* out) {
    if (const StringNode* v = Str(t, key, where)) *out = v->get();
  }

  std::optional<std::vector<std::string>> Strs(const toml::table& t, std::string_view key,
                                               std::string_view where) {
    const toml::node* n = t.get(key);
    if (!n) return std::nullopt;
    return StrsOf(*n, Cat("'", key, "' in ", where));
  }

  std::optional<std::vector<std::string>> StrsOf(const toml::node& n, std::string_view what) {
    const toml::array* a = n.as_array();
    std::vector<std::string> out;
    if (a) {
      for (const toml::node& e : *a) {
        if (!e.is_string()) {
          a = nullptr;
          break;
        }
        out.push_back(e.as_string()->get());
      }
    }
    if (!a) {
      Error(n, Cat(what, " must be an array of strings"));
      return std::nullopt;
    }
    return out;
  }

  std::optional<bool> Bool(const toml::table& t, std::string_view key, std::string_view where) {
    const toml::node* n = t.get(key);
    if (!n) return std::nullopt;
    if (!n->is_boolean()) {
      Error(*n, Cat("'", key, "' in ", where, " must be true or false"));
      return std::nullopt;
    }
    return n->as_boolean()->get();
  }

  // "allow" -> true, "deny" -> false.
  std::optional<bool> Verdict(const toml::table& t, std::string_view key, std::string_view where,
                              bool required) {
    const StringNode* v = Str(t, key, where, required);
    if (!v) return std::nullopt;
    if (v->get() == "allow") return true;
    if (v->get() == "deny") return false;
    Error(*v, Cat("invalid ", key, " '", v->get(), "': expected \"allow\" or \"deny\""));
    return std::nullopt;
  }

  std::optional<Interaction> InteractionAt(const toml::table& t, std::string_view where,
                                           bool required) {
    const StringNode* v = Str(t, "interaction", where, required);
    if (!v) return std::nullopt;
    auto i = InteractionFromName(v->get());
    if (!i) {
      Error(*v, Cat("unknown interaction '", v->get(),
                    "': expected read, vread, search, history-instance, history-type, "
                    "history-system, create, update, patch, delete or capabilities"));
    }
    return i;
  }

  void ParsePrincipal(const toml::table& t, Principal* p);
  void ParseRequest(const toml::table& t, AccessRequest* r);
  void ParseEnvironment(const toml::table& t, Environment* env);
  void ParseFacts(const toml::table& t, Scenario* s);
  void ParseResource(const toml::table& t, Scenario* s);
  void ParseExpect(const toml::table& t, Scenario* s);

  const PolicySet& policy_;
  std::string file_;
  std::vector<PolicyError> errors_;
};

bool Parser::ParseScenario(const toml::table& t, int index, Scenario* s) {
  const size_t before = errors_.size();
  s->line = static_cast<int>(t.source().begin.line);
  const std::string where = Cat("[[scenario]] #", index);
  CheckKeys(t, where,
            {"name", "principal", "request", "environment", "facts", "resource", "expect"});
  if (const StringNode* v = Str(t, "name", where, true)) {
    s->name = v->get();
    if (s->name.empty()) Error(*v, "'name' must not be empty");
  }
  Principal& p = s->principal;
  p.subject = "scenario-user";
  p.client_id = "scenario-client";
  if (const toml::table* pt = Table(t, "principal", "scenario", false)) ParsePrincipal(*pt, &p);
  if (const toml::table* rt = Table(t, "request", "scenario", true)) ParseRequest(*rt, &s->request);
  if (const toml::table* et = Table(t, "environment", "scenario", true)) {
    ParseEnvironment(*et, &s->env);
  }
  if (const toml::table* ft = Table(t, "facts", "scenario", false)) ParseFacts(*ft, s);
  if (const toml::table* rt = Table(t, "resource", "scenario", false)) ParseResource(*rt, s);
  if (const toml::table* xt = Table(t, "expect", "scenario", true)) ParseExpect(*xt, s);
  return errors_.size() == before;
}

void Parser::ParsePrincipal(const toml::table& t, Principal* p) {
  constexpr std::string_view kWhere = "[scenario.principal]";
  CheckKeys(t, kWhere,
            {"subject", "client_id", "roles", "scopes", "fhir_user", "patient", "purpose_of_use",
             "break_glass_reason"});
  StrInto(t, "subject", kWhere, &p->subject);
  StrInto(t, "client_id", kWhere, &p->client_id);
  if (auto roles = Strs(t, "roles", kWhere)) {
    p->roles = std::move(*roles);
    p->has_roles_claim = true;
  }
  if (const StringNode* v = Str(t, "scopes", kWhere)) {
    p->scope_text = v->get();
    p->scopes = ParseScopes(p->scope_text);
  }
  StrInto(t, "fhir_user", kWhere, &p->fhir_user);
  StrInto(t, "patient", kWhere, &p->patient);
  if (auto purposes = Strs(t, "purpose_of_use", kWhere)) p->purpose_of_use = std::move(*purposes);
  StrInto(t, "break_glass_reason", kWhere, &p->break_glass_reason);
}

void Parser::ParseRequest(const toml::table& t, AccessRequest* r) {
  constexpr std::string_view kWhere = "[scenario.request]";
  CheckKeys(t, kWhere, {"interaction", "type", "id"});
  auto interaction = InteractionAt(t, kWhere, true);
  if (interaction) r->interaction = *interaction;
  const StringNode* type = Str(t, "type", kWhere);
  if (type) {
    r->resource_type = type->get();
    if (!fhir::IsResourceType(r->resource_type)) {
      Error(*type, Cat("unknown resource type '", r->resource_type, "'"));
    }
  }
  if (interaction) {
    const bool system_level =
        *interaction == Interaction::kHistorySystem || *interaction == Interaction::kCapabilities;
    if (system_level && type) {
      Error(*type, Cat("'type' is not allowed for interaction ", InteractionName(*interaction)));
    } else if (!system_level && *interaction != Interaction::kSearch && !type) {
      Error(t, Cat("missing required key 'type' in ", kWhere, " (interaction ",
                   InteractionName(*interaction), ")"));
    }
  }
  if (const StringNode* v = Str(t, "id", kWhere)) {
    r->resource_id = v->get();
    if (!fhir::IsValidId(r->resource_id)) Error(*v, Cat("invalid id '", r->resource_id, "'"));
  }
}

void Parser::ParseEnvironment(const toml::table& t, Environment* env) {
  constexpr std::string_view kWhere = "[scenario.environment]";
  CheckKeys(t, kWhere, {"time", "address", "break_glass_reason"});
  if (const toml::node* n = t.get("time")) {
    std::optional<int64_t> now;
    if (const StringNode* v = n->as_string()) {
      now = ParseRfc3339(v->get());
    } else if (const auto* dt = n->as_date_time(); dt && dt->get().offset) {
      const toml::date_time& d = dt->get();
      if (ValidDate(d.date.year, d.date.month, d.date.day)) {
        now = DaysFromCivil(d.date.year, d.date.month, d.date.day) * 86400 + d.time.hour * 3600 +
              d.time.minute * 60 + d.time.second - int64_t{d.offset->minutes} * 60;
      }
    }
    if (now) {
      env->now = *now;
    } else {
      Error(*n, "invalid 'time': expected an RFC 3339 instant such as \"2026-03-02T10:00:00Z\"");
    }
  } else {
    Error(t, Cat("missing required key 'time' in ", kWhere,
                 " (scenarios must not depend on the clock)"));
  }
  if (const StringNode* v = Str(t, "address", kWhere)) {
    env->client_address = v->get();
    if (env->client_address.find('/') != std::string::npos || !ParseCidr(env->client_address)) {
      Error(*v,
            Cat("invalid address '", env->client_address, "': expected an IPv4 or IPv6 address"));
    }
  }
  StrInto(t, "break_glass_reason", kWhere, &env->break_glass_reason);
}

void Parser::ParseFacts(const toml::table& t, Scenario* s) {
  constexpr std::string_view kWhere = "[scenario.facts]";
  CheckKeys(t, kWhere, {"related", "consents", "consent_patients", "break_glass"});
  if (const toml::node* n = t.get("related")) {
    if (const toml::table* rt = n->as_table()) {
      for (auto&& [k, v] : *rt) {
        std::string id(k.str());
        const bool known = std::any_of(policy_.relationships.begin(), policy_.relationships.end(),
                                       [&](const RelationshipSource& r) { return r.id == id; });
        if (!known) {
          std::vector<std::string> ids;
          for (const auto& r : policy_.relationships) ids.push_back(r.id);
          const toml::source_region& r = k.source().begin.line ? k.source() : v.source();
          Error(r, Cat("unknown relationship source '", id, "' in 'related' (the policy defines ",
                       ids.empty() ? std::string("none") : Join(ids), ")"));
          continue;
        }
        if (auto patients = StrsOf(v, Cat("'related.", id, "'"))) {
          s->related[id] = std::move(*patients);
        }
      }
    } else {
      Error(*n, "'related' in [scenario.facts] must be a table of relationship source ids");
    }
  }
  if (const toml::node* n = t.get("consents")) {
    const toml::array* a = n->as_array();
    if (!a) {
      Error(*n, "'consents' in [scenario.facts] must be an array of JSON texts");
    } else {
      for (const toml::node& e : *a) {
        const StringNode* text = e.as_string();
        if (!text) {
          Error(e, "'consents' in [scenario.facts] must be an array of JSON texts");
          continue;
        }
        auto parsed = json::Parse(text->get());
        if (!parsed.ok()) {
          Error(e, Cat("invalid consent JSON: ", DetailOf(parsed.status())));
          continue;
        }
        if (!parsed->is_object() || parsed->GetString("resourceType") != "Consent") {
          Error(e, "invalid consent: expected a JSON object with \"resourceType\": \"Consent\"");
          continue;
        }
        s->consents.push_back(std::move(*parsed));
      }
    }
  }
  if (auto patients = Strs(t, "consent_patients", kWhere)) {
    s->consent_patients = std::move(*patients);
  }
  if (const StringNode* v = Str(t, "break_glass", kWhere)) {
    if (v->get() == "active") {
      s->break_glass_active = true;
    } else if (v->get() != "none") {
      Error(*v, Cat("invalid break_glass '", v->get(), "': expected \"none\" or \"active\""));
    }
  }
}

void Parser::ParseResource(const toml::table& t, Scenario* s) {
  constexpr std::string_view kWhere = "[scenario.resource]";
  CheckKeys(t, kWhere, {"type", "patients", "in_compartment_definition", "labels", "interaction"});
  s->has_resource = true;
  s->resource_type = s->request.resource_type;
  if (const StringNode* v = Str(t, "type", kWhere)) {
    s->resource_type = v->get();
    if (!fhir::IsResourceType(s->resource_type)) {
      Error(*v, Cat("unknown resource type '", s->resource_type, "'"));
    }
  } else if (s->resource_type.empty()) {
    Error(t, Cat("missing required key 'type' in ", kWhere, " (the request names no type)"));
  }
  if (auto patients = Strs(t, "patients", kWhere)) s->resource_patients = std::move(*patients);
  s->in_compartment_definition = fhir::InPatientCompartmentDefinition(s->resource_type);
  if (auto in = Bool(t, "in_compartment_definition", kWhere)) s->in_compartment_definition = *in;
  if (auto labels = Strs(t, "labels", kWhere)) s->resource_labels = std::move(*labels);
  s->resource_interaction = s->request.interaction;
  if (t.get("interaction")) {
    if (auto i = InteractionAt(t, kWhere, false)) s->resource_interaction = *i;
  }
}

void Parser::ParseExpect(const toml::table& t, Scenario* s) {
  constexpr std::string_view kWhere = "[scenario.expect]";
  CheckKeys(t, kWhere,
            {"decision", "role", "rule", "rule_prefix", "reason", "deny_code", "patients",
             "confined", "masked", "denied_labels", "consent_hidden", "consent_excluded", "consent",
             "break_glass", "alert", "resource_decision", "resource_reason"});
  Expect& x = s->expect;
  if (auto v = Verdict(t, "decision", kWhere, true)) x.allow = *v;
  auto str = [&](std::string_view key, std::optional<std::string>* out) {
    if (const StringNode* v = Str(t, key, kWhere)) *out = v->get();
  };
  str("role", &x.role);
  str("rule", &x.rule);
  str("rule_prefix", &x.rule_prefix);
  str("reason", &x.reason);
  if (const StringNode* v = Str(t, "deny_code", kWhere)) {
    if (ErrorCodeByName(v->get())) {
      x.deny_code = v->get();
    } else {
      Error(*v, Cat("unknown deny_code '", v->get(),
                    "': expected an error name such as forbidden, insufficient_scope or "
                    "unavailable"));
    }
  }
  x.patients = Strs(t, "patients", kWhere);
  x.confined = Bool(t, "confined", kWhere);
  if (x.patients && x.confined && !*x.confined) {
    Error(*t.get("confined"), "'confined = false' contradicts 'patients'");
  }
  x.masked = Strs(t, "masked", kWhere);
  x.denied_labels = Strs(t, "denied_labels", kWhere);
  x.consent_hidden = Strs(t, "consent_hidden", kWhere);
  x.consent_excluded = Strs(t, "consent_excluded", kWhere);
  x.consent = Bool(t, "consent", kWhere);
  x.break_glass = Bool(t, "break_glass", kWhere);
  x.alert = Bool(t, "alert", kWhere);
  x.resource_allow = Verdict(t, "resource_decision", kWhere, false);
  str("resource_reason", &x.resource_reason);
  if (!s->has_resource) {
    for (std::string_view key : {"resource_decision", "resource_reason"}) {
      if (const toml::node* n = t.get(key)) {
        Error(*n, Cat("'", key, "' needs a [scenario.resource] table"));
      }
    }
  }
}

// Runs one parsed scenario.
ScenarioResult Run(const std::shared_ptr<const PolicySet>& policy, const Scenario& s,
                   std::string_view file) {
  ScenarioResult result;
  result.file = std::string(file);
  result.name = s.name;
  result.line = s.line;
  ScenarioFacts facts;
  facts.related = s.related;
  facts.consents = s.consents;
  facts.consent_patients = s.consent_patients;
  facts.break_glass_active = s.break_glass_active;
  auto engine = NewPolicyEngine(policy, nullptr, &facts);
  const Decision d = engine->Authorize(s.principal, s.request, s.env);
  const Obligations& ob = d.obligations;
  const Expect& x = s.expect;
  std::vector<std::string>& f = result.failures;
  auto verdict = [](bool allow) { return std::string(allow ? "allow" : "deny"); };
  auto quoted = [](std::string_view v) { return Cat("\"", v, "\""); };
  auto same = [&](std::string_view what, const std::optional<std::string>& want,
                  const std::string& got) {
    if (want && *want != got) {
      f.push_back(Cat(what, ": expected ", quoted(*want), ", got ", quoted(got)));
    }
  };
  auto flag = [&](std::string_view what, const std::optional<bool>& want, bool got) {
    if (want && *want != got) {
      f.push_back(
          Cat(what, ": expected ", *want ? "true" : "false", ", got ", got ? "true" : "false"));
    }
  };
  auto set = [&](std::string_view what, const std::optional<std::vector<std::string>>& want,
                 const std::vector<std::string>& got) {
    if (want && Sorted(*want) != Sorted(got)) {
      f.push_back(Cat(what, ": expected ", Join(Sorted(*want)), ", got ", Join(Sorted(got))));
    }
  };

  if (d.allow != x.allow) {
    f.push_back(Cat("decision: expected ", verdict(x.allow), ", got ", verdict(d.allow), " (",
                    d.Summary(), ")"));
  }
  same("role", x.role, d.role);
  same("rule", x.rule, d.rule);
  if (x.rule_prefix && d.rule.rfind(*x.rule_prefix, 0) != 0) {
    f.push_back(Cat("rule: expected a prefix ", quoted(*x.rule_prefix), ", got ", quoted(d.rule)));
  }
  same("reason", x.reason, d.reason);
  if (x.deny_code) same("deny_code", x.deny_code, std::string(Describe(d.deny_code).name));
  if (x.patients) {
    if (!ob.patients) {
      f.push_back(Cat("patients: expected ", Join(Sorted(*x.patients)), ", got unconfined"));
    } else {
      set("patients", x.patients, *ob.patients);
    }
  }
  if (x.confined && *x.confined != ob.confined()) {
    f.push_back(Cat(
        "confined: expected ", *x.confined ? "true" : "false", ", got ",
        ob.patients ? Cat("confined to ", Join(Sorted(*ob.patients))) : std::string("unconfined")));
  }
  set("masked", x.masked, ob.masked);
  set("denied_labels", x.denied_labels, ob.denied_labels);
  std::vector<std::string> hidden;
  for (const auto& [patient, labels] : ob.consent_hidden_labels) {
    for (const auto& label : labels) hidden.push_back(patient + ":" + label);
  }
  set("consent_hidden", x.consent_hidden, hidden);
  set("consent_excluded", x.consent_excluded, ob.consent_excluded_patients);
  flag("consent", x.consent, ob.consent);
  flag("break_glass", x.break_glass, !ob.break_glass_episode.empty());
  // The alert is the opening of an episode: a denied request opens none.
  flag("alert", x.alert, ob.alert || facts.opened.has_value());

  if (s.has_resource) {
    ResourceFacts r;
    r.type = s.resource_type;
    r.id = s.request.resource_id;
    r.patients = &s.resource_patients;
    r.in_compartment_definition = s.in_compartment_definition;
    r.labels = s.resource_labels ? &*s.resource_labels : nullptr;
    const Decision rd = engine->AuthorizeResource(s.principal, d, s.resource_interaction, r, s.env);
    if (x.resource_allow && *x.resource_allow != rd.allow) {
      f.push_back(Cat("resource_decision: expected ", verdict(*x.resource_allow), ", got ",
                      verdict(rd.allow), " (", rd.Summary(), ")"));
    }
    same("resource_reason", x.resource_reason, rd.reason);
  }
  result.passed = f.empty();
  return result;
}

std::string ReadFile(const std::string& path, int* err) {
  std::string text;
  std::FILE* file = std::fopen(path.c_str(), "rb");
  *err = file ? 0 : errno;
  if (file) {
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, file)) > 0) text.append(buf, n);
    if (std::ferror(file)) *err = errno ? errno : EIO;
    std::fclose(file);
  }
  return text;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ScenarioFacts::RelatedPatients(
    const RelationshipSource& source, const std::string& actor) {
  auto it = related.find(source.id);
  if (it == related.end()) return std::vector<std::string>();
  return it->second;
}

absl::StatusOr<std::vector<json::Value>> ScenarioFacts::Consents(const std::string& patient) {
  if (std::find(consent_patients.begin(), consent_patients.end(), patient) ==
      consent_patients.end()) {
    return std::vector<json::Value>();
  }
  return consents;
}

absl::StatusOr<std::vector<std::string>> ScenarioFacts::ConsentPatients() {
  std::vector<std::string> out = consent_patients;
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

absl::StatusOr<std::optional<BreakGlassEpisode>> ScenarioFacts::ActiveBreakGlass(
    const std::string& issuer, const std::string& subject, const std::string& client_id,
    int64_t now) {
  if (opened) return opened;
  if (!break_glass_active) return std::optional<BreakGlassEpisode>();
  BreakGlassEpisode e;
  e.id = "bg-scenario";
  e.issuer = issuer;
  e.subject = subject;
  e.client_id = client_id;
  e.reason = "scenario: an episode already open";
  e.started = now - 60;
  e.expires = now + 3600;
  return std::optional<BreakGlassEpisode>(std::move(e));
}

absl::StatusOr<BreakGlassEpisode> ScenarioFacts::OpenBreakGlass(BreakGlassEpisode episode) {
  episode.id = "bg-scenario-new";
  opened = episode;
  return episode;
}

int ScenarioRun::passed() const {
  return static_cast<int>(
      std::count_if(results.begin(), results.end(), [](const auto& r) { return r.passed; }));
}

int ScenarioRun::failed() const { return static_cast<int>(results.size()) - passed(); }

ScenarioRun RunScenarioText(std::shared_ptr<const PolicySet> policy,
                            std::string_view scenarios_text, std::string_view file_name) {
  ScenarioRun run;
  const std::string file(file_name);
  if (!policy) {
    run.errors.push_back({file, 0, 0, "no policy to run the scenarios against"});
    return run;
  }
  toml::table root;
  try {
    root = toml::parse(scenarios_text, file_name);
  } catch (const toml::parse_error& e) {
    run.errors.push_back({file, static_cast<int>(e.source().begin.line),
                          static_cast<int>(e.source().begin.column),
                          Cat("TOML syntax error: ", e.description())});
    return run;
  }
  Parser parser(*policy, file_name);
  parser.CheckKeys(root, "the top level", {"scenario"});
  std::vector<Scenario> scenarios;
  const toml::node* n = root.get("scenario");
  const toml::array* a = n ? n->as_array() : nullptr;
  if (a && !a->is_array_of_tables()) a = nullptr;
  if (!n) {
    parser.errors().push_back({file, 0, 0, "no [[scenario]] in the file"});
  } else if (!a) {
    parser.Error(*n, "'scenario' must be an array of tables ([[scenario]])");
  } else {
    std::map<std::string, int, std::less<>> names;
    int index = 0;
    for (const toml::node& e : *a) {
      Scenario s;
      const toml::table& t = *e.as_table();
      if (!parser.ParseScenario(t, ++index, &s)) continue;
      auto [it, fresh] = names.emplace(s.name, s.line);
      if (!fresh) {
        parser.Error(*t.get("name"), Cat("duplicate scenario name '", s.name, "' (first at line ",
                                         it->second, ")"));
        continue;
      }
      scenarios.push_back(std::move(s));
    }
  }
  run.errors = std::move(parser.errors());
  std::stable_sort(run.errors.begin(), run.errors.end(),
                   [](const PolicyError& x, const PolicyError& y) {
                     return std::tie(x.line, x.column) < std::tie(y.line, y.column);
                   });
  for (const Scenario& s : scenarios) run.results.push_back(Run(policy, s, file_name));
  return run;
}

ScenarioRun RunScenarios(const std::string& policy_file,
                         const std::vector<std::string>& scenario_files) {
  ScenarioRun run;
  PolicyLoad load = LoadPolicyFile(policy_file);
  if (!load.policy) {
    run.errors = std::move(load.errors);
    if (run.errors.empty()) run.errors.push_back({policy_file, 0, 0, "cannot load the policy"});
    return run;
  }
  for (const std::string& path : scenario_files) {
    int err = 0;
    std::string text = ReadFile(path, &err);
    if (err != 0) {
      run.errors.push_back({path, 0, 0, Cat("cannot read: ", std::strerror(err))});
      continue;
    }
    ScenarioRun one = RunScenarioText(load.policy, text, path);
    for (auto& r : one.results) run.results.push_back(std::move(r));
    for (auto& e : one.errors) run.errors.push_back(std::move(e));
  }
  return run;
}

void PrintReport(const ScenarioRun& run, std::ostream& out) {
  for (const PolicyError& e : run.errors) out << "ERROR " << e.ToString() << "\n";
  for (const ScenarioResult& r : run.results) {
    if (r.passed) {
      out << "PASS " << r.name << "\n";
      continue;
    }
    out << "FAIL " << r.file << ":" << r.line << " " << r.name << ":";
    for (size_t i = 0; i < r.failures.size(); ++i) {
      out << (i == 0 ? " " : "; ") << r.failures[i];
    }
    out << "\n";
  }
  out << run.passed() << " passed, " << run.failed() << " failed";
  if (!run.errors.empty()) out << ", " << run.errors.size() << " errors";
  out << "\n";
}

}  // namespace fhirward::policy
