// A policy: the declarative rules the PolicyEngine enforces, as loaded from a
// TOML policy file (format: docs/policy.md). Immutable once loaded.
//
// Model, deny by default:
// - Roles bind SMART scopes to permissions per resource type and interaction
//   ("Observation.search", "*.read"). A request is allowed through a role only
//   when a token scope the role may carry grants it AND a role permission
//   grants it (the intersection).
// - A role's relationship confines it to patients: "self" (the principal's
//   own compartment), "care" (patients related to the principal's
//   Practitioner through the relationship sources: CareTeam membership,
//   Encounter participation, any configured resource), "scopes" (SMART:
//   patient scopes confine to the launch patient) or "none".
// - Deny rules add attribute conditions (time window, client network,
//   purpose of use) on roles, types and interactions.
// - Obligations travel with an allow: masked elements, read-only elements,
//   security labels the role may not see, consent evaluation, break-glass.
#ifndef FHIRWARD_POLICY_POLICY_SET_H_
#define FHIRWARD_POLICY_POLICY_SET_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fhirward::policy {

// "Type.interaction"; type "*" is any type; interaction one of read, vread,
// search, history, create, update, patch, delete, or "*" (any).
struct Permission {
  std::string type;
  std::string interaction;
};

enum class Relationship { kNone, kScopes, kSelf, kCare };
std::string_view RelationshipName(Relationship r);

struct Role {
  std::string name;
  std::string description;
  // Scope patterns the role may exercise ("user/*.cruds", "patient/*.rs",
  // "system/Patient.r"): a token scope counts for this role only when one
  // pattern covers it (same context, type equal or "*", letters a subset).
  std::vector<std::string> scopes;
  std::vector<Permission> permissions;
  Relationship relationship = Relationship::kNone;
  // Element paths ("Patient.telecom", "Patient.contact.telecom") removed from
  // what this role reads, each replaced by a data-absent-reason "masked"
  // extension. On writes by this role they keep their stored value.
  std::vector<std::string> masked;
  // Element paths this role cannot change (a write that changes one is refused).
  std::vector<std::string> read_only;
  // Security label codes (meta.security code, any system) whose resources this
  // role never sees: such resources are treated as absent.
  std::vector<std::string> denied_labels;
  // Consent: whether patients' Consent resources are evaluated for this role
  // (a patient reading their own record is not bound by their consent to others).
  bool consent = true;
  // May invoke break-glass (see BreakGlassPolicy).
  bool break_glass = false;
  int line = 0;  // where the role is defined in its file (1-based)
};

struct Cidr {
  std::array<uint8_t, 16> addr{};  // IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d)
  int prefix = 0;                  // in bits, over the 128-bit form
  std::string text;
};
// Parses "10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1"; nullopt when invalid.
std::optional<Cidr> ParseCidr(std::string_view text);
// Whether `address` (an IPv4 or IPv6 literal) lies in `net`; false when unparsable.
bool CidrContains(const Cidr& net, std::string_view address);

struct Conditions {
  // Minutes since midnight in the policy's time zone offset, [start, end);
  // start > end wraps past midnight ("22:00-06:00").
  std::optional<std::pair<int, int>> hours;
  std::vector<int> weekdays;                // 0 = Sunday ... 6 = Saturday; empty: any day
  std::vector<Cidr> networks;               // client address in one of them; empty: any
  std::vector<std::string> purpose_of_use;  // one of the token's purposes; empty: any
  bool empty() const {
    return !hours && weekdays.empty() && networks.empty() && purpose_of_use.empty();
  }
};

// A deny rule applies to a request when its roles, types and interactions
// match (empty lists match anything), every condition in `when` holds, and
// not every condition in `unless` holds. The first applying rule denies.
struct Rule {
  std::string id;
  std::string description;
  std::vector<std::string> roles;
  std::vector<std::string> types;
  std::vector<std::string> interactions;
  Conditions when;
  Conditions unless;
  int line = 0;
};

// Resources relating a Practitioner to patients: resources of `type` whose
// search parameter `actor` references the principal's fhirUser, optionally
// with `status` in a list, relate the principal to the patients in whose
// compartments they are.
struct RelationshipSource {
  std::string id;
  std::string type;                 // "CareTeam", "Encounter", "EpisodeOfCare", ...
  std::string actor;                // search parameter: "participant", "care-manager", ...
  std::vector<std::string> status;  // allowed status codes; empty: any
  int line = 0;
};

struct BreakGlassPolicy {
  bool enabled = false;
  std::vector<std::string> purposes = {"ETREAT", "BTG"};  // token purpose_of_use needed
  int64_t duration_seconds = 3600;                        // an episode lasts this long
  size_t min_justification = 20;                          // characters
};

struct PolicySet {
  std::string id;
  std::string version;
  std::string description;
  std::string source;          // file path it came from
  int utc_offset_minutes = 0;  // time zone for hour windows
  std::vector<Role> roles;
  // Roles for principals whose token carries no `roles` claim (e.g. SMART
  // apps of external issuers); empty: such principals are denied everything.
  std::vector<std::string> default_roles;
  // Every principal has the default roles, whatever its token claims (the
  // built-in SMART-scopes policy; not settable from a file).
  bool ignore_token_roles = false;
  std::vector<Rule> rules;
  std::vector<RelationshipSource> relationships;
  BreakGlassPolicy break_glass;
  // Roles that may ask POST /$explain-access.
  std::vector<std::string> explain_roles = {"admin", "auditor"};

  const Role* FindRole(std::string_view name) const;
  std::string IdVersion() const { return id + "@" + version; }
};

// One problem found in a policy file. `line` and `column` are 1-based (0: the
// file as a whole).
struct PolicyError {
  std::string file;
  int line = 0;
  int column = 0;
  std::string message;
  std::string ToString() const;  // "file:line:column: message"
};

struct PolicyLoad {
  std::shared_ptr<const PolicySet> policy;  // null when errors is non-empty
  std::vector<PolicyError> errors;
};

// Parses and validates a policy file's text; every error found is reported
// (not just the first), each with its line.
PolicyLoad ParsePolicy(std::string_view text, std::string_view file_name);
// Reads and parses a file.
PolicyLoad LoadPolicyFile(const std::string& path);

}  // namespace fhirward::policy

#endif  // FHIRWARD_POLICY_POLICY_SET_H_
