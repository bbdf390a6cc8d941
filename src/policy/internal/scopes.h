// SMART scope helpers shared by the engine (scope_policy.cc).
#ifndef FHIRWARD_POLICY_INTERNAL_SCOPES_H_
#define FHIRWARD_POLICY_INTERNAL_SCOPES_H_

#include <string_view>

#include "policy/policy.h"

namespace fhirward::policy::internal {

// The permission letter (c, r, u, d, s) an interaction needs; 0 when none.
char LetterFor(Interaction i);
bool Grants(const ResourceScope& s, char letter);
// Reference, terminology and conformance types that hold no patient's data:
// readable (not writable) under patient-confined access.
bool IsSharedReferenceType(std::string_view t);
bool IsWrite(Interaction i);

}  // namespace fhirward::policy::internal

#endif  // FHIRWARD_POLICY_INTERNAL_SCOPES_H_
