// Internal pieces of the validator shared by validator.cc, the invariant checker
// and profile validation. Not part of the module's public API.
#ifndef FHIRWARD_FHIR_VALIDATOR_INTERNAL_H_
#define FHIRWARD_FHIR_VALIDATOR_INTERNAL_H_

#include <memory>
#include <string>
#include <string_view>

#include "fhir/model.h"
#include "fhir/validator.h"
#include "json/value.h"

namespace fhirward::fhir {

// A FHIRPath location built lazily: the validator keeps one on the stack per
// level and renders the string only when it reports a finding
// ("Patient.contact[0].name.family").
struct Loc {
  static constexpr size_t kNoIndex = static_cast<size_t>(-1);
  const Loc* parent = nullptr;
  std::string_view name;  // member name, or the resource type at a root
  size_t index = kNoIndex;
  std::string str() const {
    std::string out = parent != nullptr ? parent->str() : std::string();
    if (!name.empty()) {
      if (!out.empty()) out.push_back('.');
      out.append(name);
    }
    if (index != kNoIndex) {
      out.push_back('[');
      out.append(std::to_string(index));
      out.push_back(']');
    }
    return out;
  }
};

// Where findings go during one validation.
class IssueSink {
 public:
  virtual ~IssueSink() = default;
  virtual void Report(IssueSeverity severity, std::string_view code, std::string expression,
                      std::string message, std::string_view rule) = 0;
};

// The resource a value belongs to, for FHIRPath's %resource and %rootResource.
struct ResourceFrame {
  const json::Value* resource = nullptr;  // %resource: the (possibly contained) resource
  const json::Value* root = nullptr;      // %rootResource: the resource holding it
  std::string_view resource_type;
  // JSON values the validator has visited so far in the document: invariants
  // run after the subtree they apply to, so their step budget can grow with
  // its size (large valid resources are not refused as too costly).
  const uint64_t* visited = nullptr;
};

// FHIRPath steps an invariant may take after `visited` JSON values: 200k, plus
// 64 per value and a quadratic allowance (dom-3 looks up every contained id
// among all references), at most 64M.
inline uint64_t StepBudget(uint64_t visited) {
  const uint64_t quadratic = visited < 16'000 ? visited * visited / 4 : 64'000'000;
  const uint64_t budget = 200'000 + 64 * visited + quadratic;
  return budget < 64'000'000 ? budget : 64'000'000;
}

// The FHIRPath invariants of the R4 model, compiled once.
class Invariants {
 public:
  Invariants();
  ~Invariants();
  Invariants(const Invariants&) = delete;
  Invariants& operator=(const Invariants&) = delete;

  // Number of compiled constraints, and those whose expression did not compile
  // (reported as a warning when they would apply, never silently skipped).
  size_t compiled_count() const;

  // Checks the invariants that apply to `obj`, a JSON object holding a value of
  // `type` (null when unknown) described by `element` (null for the `_x`
  // siblings of primitives):
  // the element's own constraints and the root constraints of `type`. ele-1 and
  // ext-1 are checked structurally by the validator and skipped here.
  void Check(const json::Value& obj, const ElementDef* element, const TypeDef* type, const Loc& loc,
             const ResourceFrame& frame, IssueSink& sink) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fhirward::fhir

#endif  // FHIRWARD_FHIR_VALIDATOR_INTERNAL_H_
