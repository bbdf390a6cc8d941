// FHIR R4 resource validation against the structure model (model.h): unknown
// elements, JSON types, cardinality, primitive formats, choice types, required
// bindings, extensions, references, contained resources, narrative safety and
// the invariants of the specification (FHIRPath, fhirpath.h). Every finding is
// reported, each with a FHIRPath location ("Patient.contact[0].name.family").
//
// A Validator is immutable once built: Validate() may run on many threads.
#ifndef FHIRWARD_FHIR_VALIDATOR_H_
#define FHIRWARD_FHIR_VALIDATOR_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "json/value.h"

namespace fhirward::fhir {

class ProfileSet;

enum class IssueSeverity { kFatal, kError, kWarning, kInformation };
std::string_view SeverityName(IssueSeverity s);

struct ValidationIssue {
  IssueSeverity severity = IssueSeverity::kError;
  // OperationOutcome.issue.code (IssueType): structure, required, value,
  // code-invalid, invariant, security, invalid, too-costly, not-supported.
  std::string code;
  std::string expression;  // FHIRPath location of the finding
  std::string message;     // human text; never echoes more than a short value
  std::string rule;        // stable id: "ele-1", "dom-3", "xhtml-event-handler", "cardinality"...
};

struct ValidationReport {
  std::vector<ValidationIssue> issues;
  size_t errors = 0;
  size_t warnings = 0;
  bool truncated = false;  // more findings than ValidatorOptions::max_issues
  bool valid() const { return errors == 0; }
  // An OperationOutcome with one issue per finding (an "information" issue
  // "no issues" when there are none).
  json::Value ToOperationOutcome() const;
};

struct ValidatorOptions {
  bool check_invariants = true;  // FHIRPath constraints of the specification
  bool check_bindings = true;    // required bindings against expanded value sets
  size_t max_issues = 500;       // findings kept (the rest counted in `truncated`)
  // Profiles loaded by the deployment; meta.profile naming one validates against it
  // too; naming an unknown one is a warning. May be null.
  const ProfileSet* profiles = nullptr;
};

class Validator {
 public:
  explicit Validator(ValidatorOptions options = {});
  ~Validator();
  Validator(const Validator&) = delete;
  Validator& operator=(const Validator&) = delete;

  // Validates one resource (any R4 type, including Bundles and their entries).
  ValidationReport Validate(const json::Value& resource) const;

 private:
  ValidatorOptions options_;
  struct Compiled;
  std::unique_ptr<const Compiled> compiled_;  // parsed invariants, shared by all calls
};

}  // namespace fhirward::fhir

#endif  // FHIRWARD_FHIR_VALIDATOR_H_
