#include "server/audit_api.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <set>

#include "absl/strings/str_split.h"
#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "fhir/search_index.h"

namespace fhirward::server {
namespace {

using json::Value;

constexpr const char* kBalp = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/";
constexpr const char* kDcm = "http://dicom.nema.org/resources/ontology/DCM";
constexpr const char* kRestful = "http://hl7.org/fhir/restful-interaction";
constexpr const char* kFhirwardAction = "urn:fhirward:audit-action";

Value Str(std::string s) { return Value::String(std::move(s)); }

Value Coding(const char* system, std::string code, std::string display = "") {
  Value c = Value::MakeObject();
  c.Set("system", Str(system));
  c.Set("code", Str(std::move(code)));
  if (!display.empty()) c.Set("display", Str(std::move(display)));
  return c;
}

Value Concept(Value coding) {
  Value cc = Value::MakeObject();
  Value codings = Value::MakeArray();
  codings.Push(std::move(coding));
  cc.Set("coding", std::move(codings));
  return cc;
}

Value Detail(const char* type, std::string value) {
  Value d = Value::MakeObject();
  d.Set("type", Str(type));
  d.Set("valueString", Str(std::move(value)));
  return d;
}

const std::set<std::string>& RestActions() {
  static const std::set<std::string> k = {"read",         "vread",          "update",
                                          "patch",        "delete",         "history-instance",
                                          "history-type", "history-system", "create",
                                          "search-type",  "search-system",  "search-compartment",
                                          "capabilities", "batch",          "transaction"};
  return k;
}

// FHIR restful-interaction code of an action (search-compartment is a type search).
std::string RestCode(const std::string& action) {
  if (action == "search-compartment") return "search-type";
  return action;
}

// AuditEvent.action: C R U D E.
std::string ActionLetter(const std::string& action) {
  if (action == "create") return "C";
  if (action == "read" || action == "vread" || action.rfind("history", 0) == 0) return "R";
  if (action == "update" || action == "patch") return "U";
  if (action == "delete") return "D";
  return "E";  // searches (BALP Query), operations, security events
}

// AuditEvent.outcome: 0 success, 4 minor failure (refused), 8 serious failure.
std::string OutcomeCode(const std::string& outcome) {
  if (outcome == "success") return "0";
  if (outcome == "denied" || outcome == "unauthenticated" || outcome == "requested") return "4";
  return "8";
}

std::string BalpProfile(const audit::AuditRecord& r, bool about_patient) {
  const std::string& a = r.action;
  std::string kind;
  if (a == "create")
    kind = "Create";
  else if (a == "read" || a == "vread")
    kind = "Read";
  else if (a == "update" || a == "patch")
    kind = "Update";
  else if (a == "delete")
    kind = "Delete";
  else if (a.rfind("search", 0) == 0 || a.rfind("history", 0) == 0)
    kind = "Query";
  else if (a == "login" || a == "login-totp" || a == "logout")
    return std::string(kBalp) + "IHE.BasicAudit.Login";
  if (kind.empty()) return "";
  return std::string(kBalp) + "IHE.BasicAudit." + (about_patient ? "Patient" : "") + kind;
}

std::vector<std::string> PatientsOf(const audit::AuditRecord& r) {
  std::vector<std::string> out;
  if (!r.patient_id.empty()) out.push_back(r.patient_id);
  for (const std::string& p : r.patients) {
    if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
  }
  return out;
}

Value Agent(Value type, const std::string& who, bool requestor) {
  Value a = Value::MakeObject();
  a.Set("type", std::move(type));
  Value w = Value::MakeObject();
  Value id = Value::MakeObject();
  id.Set("value", Str(who));
  w.Set("identifier", std::move(id));
  a.Set("who", std::move(w));
  a.Set("requestor", Value::Bool(requestor));
  return a;
}

Value Network(const std::string& address) {
  Value n = Value::MakeObject();
  n.Set("address", Str(address));
  n.Set("type", Str("2"));  // IP address
  return n;
}

}  // namespace

bool IsDataAccess(const audit::AuditRecord& r) {
  const std::string& a = r.action;
  return a == "read" || a == "vread" || a == "update" || a == "patch" || a == "delete" ||
         a == "create" || a.rfind("history", 0) == 0 || a.rfind("search", 0) == 0 ||
         a == "operation" || a == "validate" || a == "key.erase";
}

bool IsDisclosureTo(const audit::AuditRecord& r, const std::string& patient) {
  if (patient.empty() || r.outcome != "success" || !IsDataAccess(r)) return false;
  if (r.resource_type == "AuditEvent")
    return false;  // reading the trail is not a disclosure of data
  for (const std::string& p : PatientsOf(r)) {
    if (p == patient) return true;
  }
  return false;
}

Value ToAuditEvent(int64_t seq, const audit::AuditRecord& r, AuditView view,
                   const std::string& base_url, const std::string& patient) {
  const bool auditor = view == AuditView::kAuditor;
  const std::vector<std::string> patients =
      auditor ? PatientsOf(r) : std::vector<std::string>{patient};
  Value e = Value::MakeObject();
  e.Set("resourceType", Str("AuditEvent"));
  e.Set("id", Str(std::to_string(seq)));
  if (std::string profile = BalpProfile(r, !patients.empty()); !profile.empty()) {
    Value meta = Value::MakeObject();
    Value profiles = Value::MakeArray();
    profiles.Push(Str(profile));
    meta.Set("profile", std::move(profiles));
    e.Set("meta", std::move(meta));
  }
  const bool rest = RestActions().count(r.action) > 0;
  if (rest) {
    e.Set("type", Coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest",
                         "RESTful Operation"));
    Value sub = Value::MakeArray();
    sub.Push(Coding(kRestful, RestCode(r.action)));
    e.Set("subtype", std::move(sub));
  } else {
    const bool login = r.action.rfind("login", 0) == 0 || r.action.rfind("token", 0) == 0 ||
                       r.action == "authorize" || r.action == "logout";
    e.Set("type", login ? Coding(kDcm, "110114", "User Authentication")
                        : Coding(kDcm, "110113", "Security Alert"));
    Value sub = Value::MakeArray();
    sub.Push(Coding(kFhirwardAction, r.action));
    e.Set("subtype", std::move(sub));
  }
  e.Set("action", Str(ActionLetter(r.action)));
  e.Set("recorded", Str(r.time));
  e.Set("outcome", Str(OutcomeCode(r.outcome)));
  if (auditor && !r.error.empty()) e.Set("outcomeDesc", Str(r.outcome + ": " + r.error));

  Value purposes = Value::MakeArray();
  for (absl::string_view code : absl::StrSplit(r.purpose_of_use, ' ', absl::SkipEmpty())) {
    purposes.Push(
        Concept(Coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", std::string(code))));
  }
  if (!r.break_glass.empty()) {
    purposes.Push(Concept(
        Coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", "BTG", "break the glass")));
  }
  if (!purposes.items().empty()) e.Set("purposeOfEvent", std::move(purposes));

  Value agents = Value::MakeArray();
  if (!r.subject.empty()) {
    Value user =
        Agent(Concept(Coding("http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                             "humanuser", "human user")),
              r.subject, true);
    if (!r.roles.empty()) {
      Value roles = Value::MakeArray();
      for (absl::string_view role : absl::StrSplit(r.roles, ' ', absl::SkipEmpty())) {
        Value cc = Value::MakeObject();
        cc.Set("text", Str(std::string(role)));
        roles.Push(std::move(cc));
      }
      user.Set("role", std::move(roles));
    }
    if (auditor) {
      if (!r.policy_id.empty()) {
        Value pol = Value::MakeArray();
        pol.Push(Str(r.policy_id));
        user.Set("policy", std::move(pol));
      }
      if (!r.client_address.empty()) user.Set("network", Network(r.client_address));
    }
    agents.Push(std::move(user));
  }
  if (!r.client_id.empty()) {
    Value app =
        Agent(Concept(Coding(kDcm, "110153", "Source Role ID")), r.client_id, r.subject.empty());
    if (auditor && !r.client_address.empty()) app.Set("network", Network(r.client_address));
    agents.Push(std::move(app));
  }
  if (r.subject.empty() && r.client_id.empty() && auditor) {
    // Unauthenticated: the address is all there is.
    Value anon = Agent(Concept(Coding(kDcm, "110153", "Source Role ID")), "anonymous", true);
    if (!r.client_address.empty()) anon.Set("network", Network(r.client_address));
    agents.Push(std::move(anon));
  }
  {
    // Patients see the service they know (its URL), not the node's host name.
    Value server = Agent(Concept(Coding(kDcm, "110152", "Destination Role ID")),
                         auditor && !r.node.empty() ? r.node : base_url, false);
    agents.Push(std::move(server));
  }
  e.Set("agent", std::move(agents));

  Value source = Value::MakeObject();
  source.Set("site", Str(base_url));
  Value observer = Value::MakeObject();
  observer.Set("display", Str(r.node.empty() || !auditor ? "fhirward" : "fhirward " + r.node));
  source.Set("observer", std::move(observer));
  Value stypes = Value::MakeArray();
  stypes.Push(Coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4",
                     "Application Server"));
  source.Set("type", std::move(stypes));
  e.Set("source", std::move(source));

  Value entities = Value::MakeArray();
  for (const std::string& p : patients) {
    Value ent = Value::MakeObject();
    Value what = Value::MakeObject();
    what.Set("reference", Str("Patient/" + p));
    ent.Set("what", std::move(what));
    ent.Set("type",
            Coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person"));
    ent.Set("role", Coding("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient"));
    entities.Push(std::move(ent));
  }
  {
    if (!r.resource_type.empty()) {
      Value ent = Value::MakeObject();
      Value what = Value::MakeObject();
      std::string ref = r.resource_type;
      if (!r.resource_id.empty()) {
        ref += "/" + r.resource_id;
        if (!r.version_id.empty()) ref += "/_history/" + r.version_id;
        what.Set("reference", Str(ref));
      } else {
        what.Set("type", Str(r.resource_type));
      }
      ent.Set("what", std::move(what));
      ent.Set("type", Coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2",
                             "System Object"));
      ent.Set("role",
              Coding("http://terminology.hl7.org/CodeSystem/object-role", "4", "Domain Resource"));
      entities.Push(std::move(ent));
    }
  }
  if (auditor && !r.query.empty()) {
    Value ent = Value::MakeObject();
    ent.Set("type", Coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2",
                           "System Object"));
    ent.Set("role", Coding("http://terminology.hl7.org/CodeSystem/object-role", "24", "Query"));
    ent.Set("query", Str(Base64Encode(r.query)));
    entities.Push(std::move(ent));
  }
  {
    // The transaction: request id, counts and (auditors) the decision.
    Value ent = Value::MakeObject();
    Value what = Value::MakeObject();
    Value id = Value::MakeObject();
    id.Set("value", Str(r.request_id));
    what.Set("identifier", std::move(id));
    ent.Set("what", std::move(what));
    ent.Set("type", Coding("https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
                           "XrequestId", "X-Request-Id"));
    Value details = Value::MakeArray();
    details.Push(Detail("resources", std::to_string(r.count)));
    if (auditor) {
      details.Push(Detail("bytes", std::to_string(r.bytes)));
      details.Push(Detail("status", std::to_string(r.status_code)));
      if (!r.trace_id.empty()) details.Push(Detail("trace-id", r.trace_id));
      if (!r.scopes.empty()) details.Push(Detail("scopes", r.scopes));
      if (!r.user_agent.empty()) details.Push(Detail("user-agent", r.user_agent));
      if (!r.decision.empty()) details.Push(Detail("decision", r.decision));
      if (!r.shadow.empty()) details.Push(Detail("shadow-decision", r.shadow));
      if (!r.break_glass.empty()) details.Push(Detail("break-glass-episode", r.break_glass));
      if (!r.break_glass_reason.empty()) {
        details.Push(Detail("break-glass-justification", r.break_glass_reason));
      }
    } else if (!r.break_glass.empty()) {
      details.Push(Detail("break-glass", "emergency access"));
    }
    ent.Set("detail", std::move(details));
    if (!auditor) ent.Erase("what");
    entities.Push(std::move(ent));
  }
  e.Set("entity", std::move(entities));
  return e;
}

absl::StatusOr<audit::AuditQuery> ParseAuditSearch(
    const std::vector<std::pair<std::string, std::string>>& params, AuditView view,
    const std::string& patient) {
  const bool auditor = view == AuditView::kAuditor;
  audit::AuditQuery q;
  std::vector<std::pair<std::string, std::vector<std::string>>> terms;
  auto bad = [](std::string what) { return Error(ErrorCode::kInvalidParameter, std::move(what)); };
  auto values = [](const std::string& v) {
    std::vector<std::string> out;
    for (absl::string_view x : absl::StrSplit(v, ',')) {
      if (!x.empty()) out.emplace_back(x);
    }
    return out;
  };
  auto add = [&](const std::string& k, std::vector<std::string> vs) -> absl::Status {
    if (vs.empty()) return bad("an empty value");
    for (const auto& v : vs) {
      if (v.size() > 512) return bad("a value is too long");
    }
    terms.emplace_back(k, std::move(vs));
    return absl::OkStatus();
  };
  int64_t from_ms = INT64_MIN, to_ms = INT64_MAX;  // [from, to]
  q.limit = 50;
  for (const auto& [name, value] : params) {
    if (name == "_format" || name == "_pretty") continue;
    if (name == "_count") {
      char* end = nullptr;
      long n = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n < 0) return bad("_count must be a number");
      q.limit = static_cast<int>(std::min<long>(n, 500));
      continue;
    }
    if (name == "_cursor") {
      char* end = nullptr;
      long long n = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n < 1) return bad("_cursor is not a cursor");
      q.before_seq = n;
      continue;
    }
    if (name == "date") {
      std::string_view v = value;
      std::string prefix = "eq";
      if (v.size() > 2 && std::isalpha(static_cast<unsigned char>(v[0])) &&
          std::isalpha(static_cast<unsigned char>(v[1]))) {
        prefix = std::string(v.substr(0, 2));
        v.remove_prefix(2);
      }
      auto range = fhir::DateRange(v);
      if (!range) return bad("date must be a FHIR date, dateTime or instant");
      if (prefix == "eq") {
        from_ms = std::max(from_ms, range->first);
        to_ms = std::min(to_ms, range->second);
      } else if (prefix == "ge") {
        from_ms = std::max(from_ms, range->first);
      } else if (prefix == "gt") {
        from_ms = std::max(from_ms, range->second + 1);
      } else if (prefix == "le") {
        to_ms = std::min(to_ms, range->second);
      } else if (prefix == "lt") {
        to_ms = std::min(to_ms, range->first - 1);
      } else {
        return bad("date supports the prefixes eq, ge, gt, le and lt");
      }
      continue;
    }
    if (name == "subtype") {
      std::vector<std::string> vs;
      for (std::string v : values(value)) {
        if (auto bar = v.find('|'); bar != std::string::npos) v = v.substr(bar + 1);
        vs.push_back(v);
        if (v == "search-type") vs.push_back("search-compartment");
      }
      if (auto s = add("action", std::move(vs)); !s.ok()) return s;
      continue;
    }
    if (name == "action") {
      static const std::vector<std::pair<std::string, std::vector<std::string>>> kLetters = {
          {"C", {"create"}},
          {"R", {"read", "vread", "history-instance", "history-type", "history-system"}},
          {"U", {"update", "patch"}},
          {"D", {"delete"}},
          {"E",
           {"search-type", "search-system", "search-compartment", "operation", "validate",
            "capabilities", "batch", "transaction"}}};
      std::vector<std::string> vs;
      for (const std::string& letter : values(value)) {
        auto it = std::find_if(kLetters.begin(), kLetters.end(),
                               [&](const auto& l) { return l.first == letter; });
        if (it == kLetters.end()) return bad("action is one of C, R, U, D, E");
        vs.insert(vs.end(), it->second.begin(), it->second.end());
      }
      if (auto s = add("action", std::move(vs)); !s.ok()) return s;
      continue;
    }
    if (name == "patient") {
      std::vector<std::string> vs;
      for (std::string v : values(value)) {
        if (v.rfind("Patient/", 0) == 0) v = v.substr(8);
        if (!auditor && v != patient) return bad("patient: only your own record");
        vs.push_back(v);
      }
      if (auditor) {
        if (auto s = add("patient", std::move(vs)); !s.ok()) return s;
      }
      continue;
    }
    if (!auditor) return bad("unknown or unsupported search parameter " + name);
    if (name == "agent" || name == "client" || name == "entity-type" || name == "break-glass") {
      const char* k = name == "entity-type" ? "type" : name.c_str();
      if (auto s = add(k, values(value)); !s.ok()) return s;
    } else if (name == "entity") {
      if (auto s = add("entity", values(value)); !s.ok()) return s;
    } else if (name == "outcome") {
      std::vector<std::string> vs;
      for (const std::string& v : values(value)) {
        if (v == "0")
          vs.push_back("success");
        else if (v == "4")
          vs.insert(vs.end(), {"denied", "unauthenticated"});
        else if (v == "8" || v == "12")
          vs.insert(vs.end(), {"failed", "error"});
        else
          vs.push_back(v);
      }
      if (auto s = add("outcome", std::move(vs)); !s.ok()) return s;
    } else {
      return bad("unknown or unsupported search parameter " + name);
    }
  }
  if (!auditor) {
    // The patient's own record only; the disclosure filter is applied per hit.
    terms.emplace_back("patient", std::vector<std::string>{patient});
    terms.emplace_back("outcome", std::vector<std::string>{"success"});
  }
  // The most selective term drives the index lookup.
  static const std::vector<std::string> kOrder = {"entity", "break-glass", "patient", "agent",
                                                  "client", "type",        "action",  "outcome"};
  std::stable_sort(terms.begin(), terms.end(), [](const auto& a, const auto& b) {
    auto rank = [](const std::string& k) {
      return std::find(kOrder.begin(), kOrder.end(), k) - kOrder.begin();
    };
    return rank(a.first) < rank(b.first);
  });
  q.terms = std::move(terms);
  if (from_ms != INT64_MIN) q.time_from = FormatInstantMs(from_ms);
  if (to_ms != INT64_MAX) {
    if (to_ms < from_ms) to_ms = from_ms - 1;
    q.time_to = FormatInstantMs(to_ms + 1);
  }
  return q;
}

}  // namespace fhirward::server
