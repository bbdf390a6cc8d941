// Authorization: SMART App Launch scopes (v1 and v2) behind the PolicyEngine
// interface. The full engine (roles, attributes, consent, break-glass,
// masking) arrives with its own issue and replaces ScopePolicyEngine without
// changing callers.
//
// Deny by default. A decision is made in two steps:
//  1. Authorize(principal, request) before execution: does any granted scope
//     allow this interaction on this type? The decision may carry an
//     obligation `patient_compartment`: the executor must confine the request
//     to that Patient's compartment (reads, writes, history).
//  2. AuthorizeResource(principal, decision, type, patients) for each resource
//     the request would read or write: its Patient compartments must include
//     the obligation's patient.
// Engines are immutable and thread-safe.
#ifndef FHIRWARD_POLICY_POLICY_H_
#define FHIRWARD_POLICY_POLICY_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

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
};

// Builds a Principal's scopes from a space-separated scope string.
std::vector<ResourceScope> ParseScopes(std::string_view scope_text);

struct AccessRequest {
  Interaction interaction = Interaction::kRead;
  std::string resource_type;  // empty for system-level interactions
  std::string resource_id;
};

struct Decision {
  bool allow = false;
  std::string policy_id;  // "id@version" of the deciding policy
  std::string rule;       // the scope or rule that decided
  ErrorCode deny_code = ErrorCode::kForbidden;
  std::string reason;  // machine-readable reason for a denial
  // Obligation: confine to this Patient's compartment (empty: unconfined).
  std::string patient_compartment;
};

class PolicyEngine {
 public:
  virtual ~PolicyEngine() = default;
  virtual Decision Authorize(const Principal& principal, const AccessRequest& request) const = 0;
  // `patients` are the Patient compartments of one resource to be returned or
  // written; `in_compartment_definition` tells whether its type can belong to
  // a Patient compartment at all.
  virtual Decision AuthorizeResource(const Principal& principal, const Decision& decision,
                                     Interaction interaction, std::string_view type,
                                     const std::vector<std::string>& patients,
                                     bool in_compartment_definition) const = 0;
};

// SMART scopes only. Policy id "smart-scopes@1".
std::unique_ptr<PolicyEngine> NewScopePolicyEngine();

}  // namespace fhirward::policy

#endif  // FHIRWARD_POLICY_POLICY_H_
