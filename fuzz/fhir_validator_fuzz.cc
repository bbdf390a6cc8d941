// libFuzzer target for the FHIR validator (structure, primitives, bindings,
// invariants through the FHIRPath engine, narrative XHTML) over arbitrary JSON.
//
// Any JSON document must validate without crashing, hanging or exhausting
// memory; the report must be self-consistent (error count at least the error
// issues listed, issues capped), deterministic (a second run gives the same
// findings) and render as an OperationOutcome that the JSON reader accepts.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "fhir/validator.h"
#include "json/value.h"

namespace {

using fhirward::fhir::IssueSeverity;
using fhirward::fhir::ValidationReport;
using fhirward::fhir::Validator;
using fhirward::fhir::ValidatorOptions;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "fhir_validator_fuzz: %s\n", what);
  std::abort();
}

const Validator& TheValidator() {
  static const Validator* v = [] {
    ValidatorOptions o;
    o.max_issues = 50;
    return new Validator(o);
  }();
  return *v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fhirward::json::Limits limits;
  limits.max_total_bytes = 256 * 1024;
  auto doc =
      fhirward::json::Parse(std::string_view(reinterpret_cast<const char*>(data), size), limits);
  if (!doc.ok()) return 0;
  ValidationReport a = TheValidator().Validate(*doc);
  size_t listed_errors = 0;
  for (const auto& i : a.issues) {
    if (i.severity == IssueSeverity::kError || i.severity == IssueSeverity::kFatal) {
      ++listed_errors;
    }
    if (i.code.empty() || i.message.empty()) Die("issue without code or message");
  }
  if (a.issues.size() > 50) Die("issue cap exceeded");
  if (a.errors < listed_errors) Die("error count below the listed errors");
  if (a.truncated && a.issues.size() < 50) Die("truncated without reaching the cap");
  ValidationReport b = TheValidator().Validate(*doc);
  if (a.errors != b.errors || a.warnings != b.warnings || a.issues.size() != b.issues.size()) {
    Die("validation is not deterministic");
  }
  std::string outcome = fhirward::json::Write(a.ToOperationOutcome());
  if (!fhirward::json::Parse(outcome).ok()) Die("OperationOutcome is not valid JSON");
  return 0;
}
