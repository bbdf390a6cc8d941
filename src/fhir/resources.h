// R4 resource types, ids and the Patient compartment, from tables generated at
// build time from the official definitions (tools/gen-r4-tables.mjs).
// All functions are pure and thread-safe.
#ifndef FHIRWARD_FHIR_RESOURCES_H_
#define FHIRWARD_FHIR_RESOURCES_H_

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "json/value.h"

namespace fhirward::fhir {

// The 145 concrete R4 resource types, sorted.
std::span<const std::string_view> ResourceTypes();
bool IsResourceType(std::string_view type);

// FHIR id: [A-Za-z0-9\-\.]{1,64}.
bool IsValidId(std::string_view id);

// True when resources of `type` can belong to a Patient compartment.
bool InPatientCompartmentDefinition(std::string_view type);

// The ids of every Patient whose compartment contains `resource` (of type
// `type`): a Patient is in its own compartment; other types through the
// reference elements named by CompartmentDefinition/patient. Relative
// ("Patient/1") and absolute ("https://x/fhir/Patient/1") references count;
// versioned references ("Patient/1/_history/2") count for their id.
std::vector<std::string> PatientCompartmentsOf(std::string_view type, const json::Value& resource);

}  // namespace fhirward::fhir

#endif  // FHIRWARD_FHIR_RESOURCES_H_
