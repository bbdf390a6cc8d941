// Value checks for the FHIR R4 primitive types in JSON
// (https://hl7.org/fhir/R4/datatypes.html#primitive, https://hl7.org/fhir/R4/json.html).
//
// Each type is checked against the regular expression of its StructureDefinition
// (the http://hl7.org/fhir/StructureDefinition/regex extension on `.value`), read
// with Java regex semantics as the FHIR validator does (\s is ASCII whitespace),
// plus what the expressions cannot say: integer ranges, calendar validity of dates
// (leap years, days per month), padding of base64, the 1 MiB limit on strings, and
// the JSON kind (boolean as true/false, integer and decimal as JSON numbers,
// everything else as a non-empty JSON string). Matchers are hand-written: linear
// time, no recursion, no std::regex.
//
// Where the specification's prose is stricter than its expression it is followed:
// a code has single spaces only between its tokens, and string/markdown refuse
// control characters other than tab, CR and LF.
//
// CheckPrimitive does not check xhtml content beyond its JSON kind: that is
// CheckNarrativeXhtml (fhir/xhtml.h), which reports every finding with a rule id.
// Pure functions: thread-safe.
#ifndef FHIRWARD_FHIR_PRIMITIVES_H_
#define FHIRWARD_FHIR_PRIMITIVES_H_

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "json/value.h"

namespace fhirward::fhir {

// Strings, markdown and the types derived from them: at most 1024 * 1024 characters.
inline constexpr size_t kMaxStringCharacters = 1024 * 1024;

// True for the 20 R4 primitive type names ("boolean", "dateTime", "xhtml", ...).
bool IsPrimitiveType(std::string_view fhir_type);

// nullopt when `value` is a valid JSON representation of primitive `fhir_type`;
// otherwise a message for a person, quoting (a prefix of) the value:
// "'2023-02-30' is not a valid date: 2023-02 has 28 days". An unknown type name
// is reported the same way. The message repeats the value the client sent; do not
// log it where patient data must not go.
std::optional<std::string> CheckPrimitive(std::string_view fhir_type, const json::Value& value);

}  // namespace fhirward::fhir

#endif  // FHIRWARD_FHIR_PRIMITIVES_H_
