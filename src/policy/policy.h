// Authorization: one PolicyEngine decides every access (docs/policy.md).
//
// Deny by default. A decision is made in two steps:
//  1. Authorize(principal, request, environment) before execution: which of
//     the principal's roles allows this interaction on this type, given the
//     token's scopes, the role's permissions, the policy's deny rules and the
//     principal's relationship to patients. An allow carries obligations the
//     executor must carry out: confine to a set of Patient compartments
//     (narrowing searches in SQL), mask elements, hide security labels,
//     evaluate consents, record break-glass.
//  2. AuthorizeResource(principal, decision, ...) for each resource the
//     request would read or write: its Patient compartments must be in the
//     confinement, its labels not denied, its patients' consents not deny.
// Engines are immutable and thread-safe; facts (relationships, consents,
// break-glass episodes) come from a PolicyFacts the server provides.
#ifndef FHIRWARD_POLICY_POLICY_H_
#define FHIRWARD_POLICY_POLICY_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/error.h"
#include "json/value.h"
#include "policy/policy_set.h"

namespace fhirward::policy {

enum class Interaction {
  kRead,
  kVread,
  kSearch,
  kHistoryInstance,
  kHistoryType,
  kHistorySystem,
  kCreate,
  kUpdate,
  kPatch,
  kDelete,
  kCapabilities,
};
std::string_view InteractionName(Interaction i);
// The inverse of InteractionName ("read", "search-type", "history-instance", ...);
// also accepts "search" and "history" (type level).
std::optional<Interaction> InteractionFromName(std::string_view name);

// A SMART scope on resources: (patient|user|system)/(Type|*).(cruds|read|write|*).
struct ResourceScope {
  enum class Context { kPatient, kUser, kSystem };
  Context context = Context::kPatient;
  std::string type;  // resource type or "*"
  bool c = false, r = false, u = false, d = false, s = false;
  bool restricted = false;  // v2 "?param=value" restriction present
  std::string text;         // as granted
};

// Parses one scope token; nullopt for tokens that are not resource scopes
// (openid, launch/patient, ...) or are malformed (letters out of order, ...).
std::optional<ResourceScope> ParseResourceScope(std::string_view token);

struct Principal {
  std::string subject;
  std::string client_id;
  std::string issuer;
  std::string scope_text;  // space-separated, as in the token
  std::vector<ResourceScope> scopes;
  std::string patient;  // launch context: the patient in context, if any
  std::string fhir_user;
  std::vector<std::string> purpose_of_use;
  // Roles from the token's `roles` claim; without the claim the policy's
  // default roles apply.
  std::vector<std::string> roles;
  bool has_roles_claim = false;
  std::string break_glass_reason;  // token claim `break_glass_reason`, if any
};

// Builds a Principal's scopes from a space-separated scope string.
std::vector<ResourceScope> ParseScopes(std::string_view scope_text);

struct AccessRequest {
  Interaction interaction = Interaction::kRead;
  std::string resource_type;  // empty for system-level interactions
  std::string resource_id;
};

// What the request carries besides the token.
struct Environment {
  int64_t now = 0;                 // unix seconds
  std::string client_address;      // IP literal of the peer
  std::string break_glass_reason;  // X-Break-Glass-Reason header
  // Explain only: never open a break-glass episode.
  bool dry_run = false;
};

struct BreakGlassEpisode {
  std::string id;
  std::string issuer;  // of the subject's token: the same sub at another issuer is someone else
  std::string subject;
  std::string client_id;
  std::string role;
  std::string reason;
  std::string purposes;  // space-separated
  int64_t started = 0;
  int64_t expires = 0;
};

// Facts the engine needs from the data: implemented by the server over the
// store (with caching), and by the scenario runner from a scenario file.
class PolicyFacts {
 public:
  virtual ~PolicyFacts() = default;
  // Patient ids related to `actor` ("Practitioner/p1") through `source`.
  virtual absl::StatusOr<std::vector<std::string>> RelatedPatients(const RelationshipSource& source,
                                                                   const std::string& actor) = 0;
  // The patient's Consent resources (any status: the evaluation filters).
  virtual absl::StatusOr<std::vector<json::Value>> Consents(const std::string& patient) = 0;
  // Every patient that has a Consent resource (any status), sorted: the
  // patients whose consents can narrow an unconfined principal's lists.
  virtual absl::StatusOr<std::vector<std::string>> ConsentPatients() = 0;
  // The subject's break-glass episode open at `now`, if any.
  virtual absl::StatusOr<std::optional<BreakGlassEpisode>> ActiveBreakGlass(
      const std::string& issuer, const std::string& subject, const std::string& client_id,
      int64_t now) = 0;
  // Records a new episode (assigns its id); it enters the review queue.
  virtual absl::StatusOr<BreakGlassEpisode> OpenBreakGlass(BreakGlassEpisode episode) = 0;
};

struct Obligations {
  // Confine to these Patient compartments (nullopt: unconfined; empty: no
  // patient at all). Searches are narrowed to them in SQL.
  std::optional<std::vector<std::string>> patients;
  std::vector<std::string> masked;         // element paths to mask on output
  std::vector<std::string> read_only;      // element paths the principal may not change
  std::vector<std::string> denied_labels;  // resources with these labels are hidden
  // Evaluate each patient's consents; actors/purposes identify the accessor.
  bool consent = false;
  std::vector<std::string> consent_actors;
  // Of a list (search, history): per patient, the security labels their
  // consents deny this accessor; searches exclude those resources in SQL so
  // that counts and pages never include them ({patient, labels}, sorted).
  std::vector<std::pair<std::string, std::vector<std::string>>> consent_hidden_labels;
  // Of a list by an unconfined principal: patients whose consents deny this
  // accessor the type; their resources are excluded in SQL.
  std::vector<std::string> consent_excluded_patients;
  // Break-glass access: every access is marked with the episode.
  std::string break_glass_episode;
  std::string break_glass_reason;
  bool alert = false;  // a new break-glass episode was opened by this request
  bool confined() const { return patients.has_value(); }
  bool Allows(std::string_view patient) const;
};

struct Decision {
  bool allow = false;
  std::string policy_id;  // "id@version" of the deciding policy
  std::string role;       // the role that allowed (or was last tried)
  std::string rule;       // the rule, scope or permission that decided
  ErrorCode deny_code = ErrorCode::kForbidden;
  std::string reason;  // machine-readable reason for a denial
  Obligations obligations;
  // Shadow mode: the candidate policy's different outcome ("" when it agrees).
  std::string shadow;
  // One line for the audit trail: "allow role=clinician rule=... patients=2 masked=1".
  std::string Summary() const;
};

// One resource to be returned or written.
struct ResourceFacts {
  std::string_view type;
  std::string_view id;  // when known (a Patient is visible to its own confinement only)
  const std::vector<std::string>* patients = nullptr;  // its Patient compartments
  bool in_compartment_definition = false;            // its type can belong to a Patient compartment
  const std::vector<std::string>* labels = nullptr;  // meta.security codes (null: none known)
};

class PolicyEngine {
 public:
  virtual ~PolicyEngine() = default;
  virtual Decision Authorize(const Principal& principal, const AccessRequest& request,
                             const Environment& env) const = 0;
  virtual Decision AuthorizeResource(const Principal& principal, const Decision& decision,
                                     Interaction interaction, const ResourceFacts& resource,
                                     const Environment& env) const = 0;
  // The enforced policy (for explanations and the CapabilityStatement).
  virtual std::shared_ptr<const PolicySet> policy() const = 0;
};

// The engine for `policy`; `candidate` (may be null) is evaluated beside it in
// shadow mode: disagreements are reported in Decision::shadow, never enforced.
// `facts` must outlive the engine (null: no relationships, consents or
// break-glass; roles needing them deny).
std::unique_ptr<PolicyEngine> NewPolicyEngine(std::shared_ptr<const PolicySet> policy,
                                              std::shared_ptr<const PolicySet> candidate,
                                              PolicyFacts* facts);

// The roles a principal acts under: its token's roles (those the policy
// defines) or, without a roles claim, the policy's default roles.
std::vector<std::string> EffectiveRoles(const PolicySet& policy, const Principal& principal);
// Whether the principal may ask POST /$explain-access: one of its roles is in
// explain_roles and no deny rule of that role that applies to every type and
// interaction (e.g. an admin network restriction) holds now.
bool MayExplain(const PolicySet& policy, const Principal& principal, const Environment& env);

// SMART scopes only: a built-in policy "smart-scopes@1" with one role whose
// relationship is "scopes" and which every token has.
std::shared_ptr<const PolicySet> SmartScopesPolicy();
std::unique_ptr<PolicyEngine> NewScopePolicyEngine();

}  // namespace fhirward::policy

#endif  // FHIRWARD_POLICY_POLICY_H_
