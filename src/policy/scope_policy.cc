#include <algorithm>

#include "fhir/resources.h"
#include "policy/internal/scopes.h"
#include "policy/policy.h"

namespace fhirward::policy {
namespace {

bool IsTypeName(std::string_view t) {
  if (t == "*") return true;
  if (t.empty() || t.size() > 64 || !(t[0] >= 'A' && t[0] <= 'Z')) return false;
  return std::all_of(t.begin(), t.end(),
                     [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); });
}

}  // namespace

namespace internal {

// Which permission letter an interaction needs.
char LetterFor(Interaction i) {
  switch (i) {
    case Interaction::kCreate:
      return 'c';
    case Interaction::kRead:
    case Interaction::kVread:
    case Interaction::kHistoryInstance:
      return 'r';
    case Interaction::kUpdate:
    case Interaction::kPatch:
      return 'u';
    case Interaction::kDelete:
      return 'd';
    case Interaction::kSearch:
    case Interaction::kHistoryType:
    case Interaction::kHistorySystem:
      return 's';
    case Interaction::kCapabilities:
      return 0;
  }
  return 0;
}

bool Grants(const ResourceScope& s, char letter) {
  switch (letter) {
    case 'c':
      return s.c;
    case 'r':
      return s.r;
    case 'u':
      return s.u;
    case 'd':
      return s.d;
    case 's':
      return s.s;
  }
  return false;
}

// Types outside the Patient compartment that hold no patient's data:
// reference, terminology and conformance resources. Under a patient scope
// they are readable (not writable); every other type outside the
// compartment (Device, Bundle, Contract, GuidanceResponse, ...) can hold one
// patient's data without being confinable, so patient scopes do not reach it.
bool IsSharedReferenceType(std::string_view t) {
  static constexpr std::string_view kShared[] = {"Medication",
                                                 "MedicationKnowledge",
                                                 "Substance",
                                                 "SubstanceSpecification",
                                                 "Organization",
                                                 "Practitioner",
                                                 "PractitionerRole",
                                                 "Location",
                                                 "HealthcareService",
                                                 "Endpoint",
                                                 "ValueSet",
                                                 "CodeSystem",
                                                 "ConceptMap",
                                                 "NamingSystem",
                                                 "TerminologyCapabilities",
                                                 "StructureDefinition",
                                                 "StructureMap",
                                                 "CapabilityStatement",
                                                 "SearchParameter",
                                                 "OperationDefinition",
                                                 "CompartmentDefinition",
                                                 "ImplementationGuide",
                                                 "GraphDefinition",
                                                 "MessageDefinition",
                                                 "Questionnaire",
                                                 "PlanDefinition",
                                                 "ActivityDefinition",
                                                 "Library",
                                                 "Measure",
                                                 "ObservationDefinition",
                                                 "SpecimenDefinition",
                                                 "DeviceDefinition",
                                                 "EventDefinition",
                                                 "ChargeItemDefinition",
                                                 "Evidence",
                                                 "EvidenceVariable",
                                                 "EffectEvidenceSynthesis",
                                                 "RiskEvidenceSynthesis",
                                                 "ResearchDefinition",
                                                 "ResearchElementDefinition",
                                                 "MedicinalProduct",
                                                 "MedicinalProductAuthorization",
                                                 "MedicinalProductContraindication",
                                                 "MedicinalProductIndication",
                                                 "MedicinalProductIngredient",
                                                 "MedicinalProductInteraction",
                                                 "MedicinalProductManufactured",
                                                 "MedicinalProductPackaged",
                                                 "MedicinalProductPharmaceutical",
                                                 "MedicinalProductUndesirableEffect",
                                                 "SubstanceNucleicAcid",
                                                 "SubstancePolymer",
                                                 "SubstanceProtein",
                                                 "SubstanceReferenceInformation",
                                                 "SubstanceSourceMaterial"};
  return std::find(std::begin(kShared), std::end(kShared), t) != std::end(kShared);
}

bool IsWrite(Interaction i) {
  return i == Interaction::kCreate || i == Interaction::kUpdate || i == Interaction::kPatch ||
         i == Interaction::kDelete;
}

}  // namespace internal

std::string_view InteractionName(Interaction i) {
  switch (i) {
    case Interaction::kRead:
      return "read";
    case Interaction::kVread:
      return "vread";
    case Interaction::kSearch:
      return "search-type";
    case Interaction::kHistoryInstance:
      return "history-instance";
    case Interaction::kHistoryType:
      return "history-type";
    case Interaction::kHistorySystem:
      return "history-system";
    case Interaction::kCreate:
      return "create";
    case Interaction::kUpdate:
      return "update";
    case Interaction::kPatch:
      return "patch";
    case Interaction::kDelete:
      return "delete";
    case Interaction::kCapabilities:
      return "capabilities";
  }
  return "unknown";
}

std::optional<ResourceScope> ParseResourceScope(std::string_view token) {
  ResourceScope s;
  s.text = std::string(token);
  size_t slash = token.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string_view ctx = token.substr(0, slash);
  if (ctx == "patient") {
    s.context = ResourceScope::Context::kPatient;
  } else if (ctx == "user") {
    s.context = ResourceScope::Context::kUser;
  } else if (ctx == "system") {
    s.context = ResourceScope::Context::kSystem;
  } else {
    return std::nullopt;
  }
  std::string_view rest = token.substr(slash + 1);
  size_t q = rest.find('?');
  if (q != std::string_view::npos) {
    s.restricted = true;
    rest = rest.substr(0, q);
  }
  size_t dot = rest.find('.');
  if (dot == std::string_view::npos) return std::nullopt;
  std::string_view type = rest.substr(0, dot);
  std::string_view perm = rest.substr(dot + 1);
  if (!IsTypeName(type)) return std::nullopt;
  s.type = std::string(type);
  if (perm == "read") {  // SMART v1
    s.r = s.s = true;
  } else if (perm == "write") {
    s.c = s.u = s.d = true;
  } else if (perm == "*") {
    s.c = s.r = s.u = s.d = s.s = true;
  } else {
    // SMART v2: a non-empty subsequence of "cruds", in that order.
    static constexpr std::string_view kOrder = "cruds";
    size_t pos = 0;
    if (perm.empty()) return std::nullopt;
    for (char ch : perm) {
      size_t at = kOrder.find(ch, pos);
      if (at == std::string_view::npos) return std::nullopt;
      pos = at + 1;
      switch (ch) {
        case 'c':
          s.c = true;
          break;
        case 'r':
          s.r = true;
          break;
        case 'u':
          s.u = true;
          break;
        case 'd':
          s.d = true;
          break;
        case 's':
          s.s = true;
          break;
      }
    }
  }
  return s;
}

std::vector<ResourceScope> ParseScopes(std::string_view scope_text) {
  std::vector<ResourceScope> out;
  size_t i = 0;
  while (i < scope_text.size()) {
    size_t j = scope_text.find(' ', i);
    if (j == std::string_view::npos) j = scope_text.size();
    if (j > i) {
      if (auto s = ParseResourceScope(scope_text.substr(i, j - i))) out.push_back(std::move(*s));
    }
    i = j + 1;
  }
  return out;
}

}  // namespace fhirward::policy
