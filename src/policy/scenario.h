// Policy scenario tests: `fhirward policy test POLICY SCENARIOS...`.
//
// A scenario file (TOML) lists scenarios; each gives a principal, a request,
// the environment and the facts the engine would read from the data, and the
// expected decision. Every scenario runs against a fresh engine for the
// policy, with the scenario's facts; optionally a second step authorizes one
// resource (AuthorizeResource) under the request's decision.
//
//   [[scenario]]
//   name = "clinician reads an observation of a patient on their care team"  # required, unique
//
//   [scenario.principal]               # the token
//   subject = "dr-ada"                 # default "scenario-user"
//   client_id = "ehr"                  # default "scenario-client"
//   roles = ["clinician"]              # absent: no roles claim (the policy's default_roles apply)
//   scopes = "user/*.cruds"            # space-separated SMART scopes
//   fhir_user = "Practitioner/pr1"
//   patient = "p1"                     # launch context
//   purpose_of_use = ["TREAT"]
//   break_glass_reason = ""            # the token claim
//
//   [scenario.request]                 # required
//   interaction = "read"               # required: read vread search history-instance
//                                      # history-type history-system create update patch
//                                      # delete capabilities ("history" = history-type)
//   type = "Observation"               # required except for search, history-system and
//                                      # capabilities (not allowed for the last two)
//   id = "o1"
//
//   [scenario.environment]             # required
//   time = "2026-03-02T10:00:00Z"      # required: RFC 3339 instant (Z or an offset), so that
//                                      # scenarios are reproducible; a TOML offset date-time
//                                      # (unquoted) works too
//   address = "10.1.2.3"               # the client's IP address (default: none)
//   break_glass_reason = "..."         # the X-Break-Glass-Reason header
//
//   [scenario.facts]                   # what the data says (PolicyFacts)
//   related = { "care-team" = ["p1"], "encounter" = [] }
//                                      # patients related to the principal per relationship
//                                      # source id of the policy; absent: none
//   consents = [ '''{ "resourceType": "Consent", ... }''' ]
//                                      # Consent resources (JSON texts), returned for every
//                                      # patient in consent_patients
//   consent_patients = ["p1"]
//   break_glass = "none"               # "none" | "active": an episode ("bg-scenario") is
//                                      # already open for this subject and client
//                                      # A new episode gets the id "bg-scenario-new".
//
//   [scenario.resource]                # optional: the second step, for one resource
//   type = "Observation"               # default: request.type
//   patients = ["p1"]                  # its Patient compartments (default: none)
//   in_compartment_definition = true   # default: whether the type can be in a Patient
//                                      # compartment (fhir::InPatientCompartmentDefinition)
//   labels = ["R"]                     # meta.security codes (absent: none known)
//   interaction = "read"               # default: request.interaction
//
//   [scenario.expect]                  # required; each check is made only when given
//   decision = "allow"                 # required: "allow" | "deny", of the request step
//   role = "clinician"                 # the deciding role
//   rule = "rule:front-desk-hours"     # Decision::rule, exact
//   rule_prefix = "role:clinician"     # Decision::rule, prefix
//   reason = "no_relationship_to_patient"
//   deny_code = "forbidden"            # an error name: forbidden, insufficient_scope,
//                                      # unavailable, ...
//   patients = ["p1"]                  # the confinement (order ignored); implies confined
//   confined = true                    # false: unconfined
//   masked = ["Patient.telecom"]       # obligations, order ignored
//   denied_labels = ["R"]
//   consent_hidden = ["p1:PSY"]        # labels patients' consents hide from lists
//   consent_excluded = ["p3"]          # patients whose consents hide the type (unconfined)
//   consent = true                     # consents are evaluated
//   break_glass = true                 # a break-glass episode (opened or active) covers it
//   alert = true                       # this request opened a new episode (false: opened none)
//   resource_decision = "deny"         # of the resource step (needs [scenario.resource])
//   resource_reason = "consent_denied"
//
// Unknown keys and invalid values are errors, reported with their line; a
// scenario with errors does not run, the others do.
#ifndef FHIRWARD_POLICY_SCENARIO_H_
#define FHIRWARD_POLICY_SCENARIO_H_

#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "json/value.h"
#include "policy/policy.h"
#include "policy/policy_set.h"

namespace fhirward::policy {

struct ScenarioResult {
  std::string file;
  std::string name;
  int line = 0;  // of the scenario's [[scenario]] header
  bool passed = false;
  std::vector<std::string> failures;  // what differed from the expectation
};

struct ScenarioRun {
  std::vector<ScenarioResult> results;
  std::vector<PolicyError> errors;  // the policy's, unreadable files, invalid scenarios
  int passed() const;
  int failed() const;
};

// The facts of one scenario ([scenario.facts]).
class ScenarioFacts final : public PolicyFacts {
 public:
  std::map<std::string, std::vector<std::string>, std::less<>> related;  // by source id
  std::vector<json::Value> consents;
  std::vector<std::string> consent_patients;
  // ActiveBreakGlass returns an episode "bg-scenario" when set (else none,
  // until OpenBreakGlass records one: then that one).
  bool break_glass_active = false;
  std::optional<BreakGlassEpisode> opened;  // set by OpenBreakGlass (id "bg-scenario-new")

  absl::StatusOr<std::vector<std::string>> RelatedPatients(const RelationshipSource& source,
                                                           const std::string& actor) override;
  absl::StatusOr<std::vector<json::Value>> Consents(const std::string& patient) override;
  absl::StatusOr<std::vector<std::string>> ConsentPatients() override;
  absl::StatusOr<std::optional<BreakGlassEpisode>> ActiveBreakGlass(const std::string& issuer,
                                                                    const std::string& subject,
                                                                    const std::string& client_id,
                                                                    int64_t now) override;
  absl::StatusOr<BreakGlassEpisode> OpenBreakGlass(BreakGlassEpisode episode) override;
};

// Loads the policy file and each scenario file and runs every scenario. A
// policy with errors runs nothing (its errors are reported).
ScenarioRun RunScenarios(const std::string& policy_file,
                         const std::vector<std::string>& scenario_files);

// Runs the scenarios of one file's text against `policy`.
ScenarioRun RunScenarioText(std::shared_ptr<const PolicySet> policy,
                            std::string_view scenarios_text, std::string_view file_name);

// One line per error ("ERROR file:line:column: message") and per scenario
// ("PASS name", "FAIL file:line name: failure; failure"), then
// "N passed, M failed" (and ", K errors" when there are errors).
void PrintReport(const ScenarioRun& run, std::ostream& out);

}  // namespace fhirward::policy

#endif  // FHIRWARD_POLICY_SCENARIO_H_
