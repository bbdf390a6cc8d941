// libFuzzer target for the FHIRPath engine: any text is parsed as an
// expression and, when it compiles, evaluated against a fixed Patient (with a
// contained resource, extensions and primitive siblings) and against itself as
// a Bundle entry. Parsing and evaluation must never crash, hang or exceed their
// budgets silently: errors are statuses, and every evaluation is bounded by the
// step and size limits of fhirpath::Limits.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fhir/fhirpath.h"
#include "json/value.h"

namespace {

using fhirward::fhir::fhirpath::Environment;
using fhirward::fhir::fhirpath::Expression;
using fhirward::fhir::fhirpath::Item;

const fhirward::json::Value& Patient() {
  static const fhirward::json::Value* v = [] {
    auto p = fhirward::json::Parse(R"({
      "resourceType": "Patient", "id": "p1",
      "meta": {"versionId": "2", "lastUpdated": "2024-01-02T03:04:05.678+01:00"},
      "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
      "contained": [{"resourceType": "Organization", "id": "o1", "name": "Acme"}],
      "extension": [{"url": "http://example.org/a", "valueQuantity": {"value": 1.50, "unit": "mg",
                     "system": "http://unitsofmeasure.org", "code": "mg"}}],
      "identifier": [{"system": "urn:oid:1.2.3", "value": "12345"}],
      "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"],
                "_given": [null, {"extension": [{"url": "http://example.org/b", "valueString": "x"}]}]}],
      "gender": "male", "birthDate": "1974-12-25", "active": true,
      "managingOrganization": {"reference": "#o1"},
      "multipleBirthInteger": 2})");
    return new fhirward::json::Value(std::move(*p));
  }();
  return *v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return 0;
  auto expr = Expression::Parse(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!expr.ok()) return 0;
  Environment env = Environment::ForResource(Patient());
  env.limits.max_steps = 100'000;
  env.limits.max_collection_size = 10'000;
  env.limits.max_string_bytes = 64 * 1024;
  auto r = fhirward::fhir::fhirpath::Evaluate(*expr, Item::Resource(Patient()), env);
  if (r.ok()) (void)fhirward::fhir::fhirpath::ToDebugString(*r);
  env.strict = true;
  (void)fhirward::fhir::fhirpath::EvaluateBoolean(*expr, Item::Resource(Patient()), env);
  return 0;
}
