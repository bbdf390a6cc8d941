// Carrying out a decision's obligations on resources: field masking,
// read-only elements, security labels and patients' Consent resources. Pure
// functions over json::Value; the server calls them, the engine decides when.
#ifndef FHIRWARD_POLICY_OBLIGATIONS_H_
#define FHIRWARD_POLICY_OBLIGATIONS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "json/value.h"

namespace fhirward::policy {

inline constexpr std::string_view kDataAbsentReasonUrl =
    "http://hl7.org/fhir/StructureDefinition/data-absent-reason";

// Element paths: "Type.element(.element)*". The first segment must equal the
// resource's resourceType (other paths are ignored). Arrays on the way are
// walked item by item. A segment "value[x]" matches any choice element
// "valueQuantity", "valueString", ...
//
// Masks every element at `paths`: the element's value is replaced by one
// carrying only a data-absent-reason extension with valueCode "masked"
// (complex: {"extension":[...]}; an array: one such item; a primitive:
// removed, with "_name": {"extension":[...]} beside it; a primitive array:
// [null] with "_name": [{"extension":[...]}]). When anything was masked, the
// resource gets meta.security {system
// "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", code
// "REDACTED"} (once). Returns how many elements were masked.
int ApplyMasks(json::Value& resource, const std::vector<std::string>& paths);

// A write by a role that cannot see `paths`: the incoming resource takes the
// stored version's values at those paths (or loses them when the stored
// version has none, or there is no stored version), so masked placeholders
// never overwrite real data and the role cannot change what it cannot see.
// Also drops a REDACTED meta.security label the client echoed back.
void KeepStored(json::Value& incoming, const json::Value* stored,
                const std::vector<std::string>& paths);

// The first of `paths` at which `incoming` differs from `stored` (no stored
// version: any value present counts as a change); nullopt when none does.
std::optional<std::string> ChangedPath(const json::Value& incoming, const json::Value* stored,
                                       const std::vector<std::string>& paths);

// meta.security codes of a resource (any system).
std::vector<std::string> SecurityLabels(const json::Value& resource);

// Consent evaluation (FHIR R4 Consent, privacy scope).
struct ConsentRequest {
  // References identifying the accessor: "Practitioner/p1", plus e.g. its
  // "Organization/o1" or "PractitionerRole/r1". Absolute references in a
  // Consent match on their trailing "Type/id".
  std::vector<std::string> actors;
  std::vector<std::string> purposes;  // HL7 v3 PurposeOfUse codes of the request
  int64_t now = 0;                    // unix seconds
  std::string resource_type;          // of the resource to be read
  std::vector<std::string> labels;    // its meta.security codes
};

struct ConsentVerdict {
  enum class Kind { kNone, kPermit, kDeny };
  Kind kind = Kind::kNone;  // kNone: no applicable consent
  std::string consent_id;   // the deciding Consent's id
  std::string reason;       // e.g. "provision actor Practitioner/p1 denied"
};

// Evaluates a patient's Consent resources for one access. A consent applies
// when status is "active", its scope is patient-privacy (code "patient-privacy"
// of http://terminology.hl7.org/CodeSystem/consentscope; a consent with another
// scope is ignored) and its provision.period (if any) covers `now`. Its base
// provision.type (permit|deny; absent = permit) holds unless a nested
// provision matches the request, which then decides with its own type (and so
// on recursively: a matching deeper provision overrides its parent). A
// provision matches when each criterion it states matches: actor[].reference
// (one of `actors`), purpose[] (a code in `purposes`), period (covers now),
// class[] (code equal to resource_type), securityLabel[] (a code in `labels`),
// action[] (a coding with code "access" or "use", system
// http://terminology.hl7.org/CodeSystem/consentaction). Among applicable
// consents a deny wins over a permit.
ConsentVerdict EvaluateConsents(const std::vector<json::Value>& consents,
                                const ConsentRequest& request);

// The security label codes a consent's provisions name (securityLabel
// criteria, at any depth). For one accessor, purpose, time and resource type
// the verdict of EvaluateConsents depends on nothing of the resource but
// which of these codes it carries (criteria not evaluated here, such as
// data, are unknown whatever the resource).
std::vector<std::string> ConsentLabels(const json::Value& consent);

}  // namespace fhirward::policy

#endif  // FHIRWARD_POLICY_OBLIGATIONS_H_
