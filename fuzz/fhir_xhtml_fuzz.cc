// libFuzzer target for the narrative XHTML checker, and on the same bytes for the
// primitive value matchers, which share its hostile-input contract.
//
// Any input, alone and wrapped in a correct root <div>, must be judged without
// crashing and in bounded time, with at most kMaxXhtmlIssues findings, each with
// a known rule id, an offset inside the input and a message ending in
// "at byte <offset>", in document order; the same input must give the same
// findings every time. Every JSON number must be a valid FHIR decimal.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "fhir/primitives.h"
#include "fhir/xhtml.h"
#include "json/value.h"

namespace {

using fhirward::fhir::CheckNarrativeXhtml;
using fhirward::fhir::CheckPrimitive;
using fhirward::fhir::kMaxXhtmlIssues;
using fhirward::fhir::XhtmlIssue;
namespace rule = fhirward::fhir::xhtml_rule;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "fhir_xhtml_fuzz: %s\n", what);
  std::abort();
}

bool KnownRule(std::string_view r) {
  for (std::string_view known :
       {rule::kNotWellFormed, rule::kRoot, rule::kNamespace, rule::kElement, rule::kAttribute,
        rule::kEventHandler, rule::kUrlScheme, rule::kStyle, rule::kEntity, rule::kDoctype,
        rule::kProcessingInstruction, rule::kCdata, rule::kComment, rule::kTooDeep}) {
    if (r == known) return true;
  }
  return false;
}

void CheckIssues(const std::vector<XhtmlIssue>& issues, size_t size) {
  if (issues.size() > kMaxXhtmlIssues) Die("more findings than the cap");
  for (size_t i = 0; i < issues.size(); ++i) {
    const XhtmlIssue& issue = issues[i];
    if (!KnownRule(issue.rule)) Die("unknown rule id");
    if (issue.offset > size) Die("offset beyond the input");
    if (i > 0 && issues[i - 1].offset > issue.offset) Die("findings out of document order");
    const std::string suffix = " at byte " + std::to_string(issue.offset);
    if (!issue.message.ends_with(suffix)) Die("message does not end with its offset");
    if (issue.message.size() > 600) Die("message too long");
  }
}

bool SameIssues(const std::vector<XhtmlIssue>& a, const std::vector<XhtmlIssue>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].rule != b[i].rule || a[i].message != b[i].message || a[i].offset != b[i].offset) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  const auto issues = CheckNarrativeXhtml(text);
  CheckIssues(issues, size);
  if (!SameIssues(issues, CheckNarrativeXhtml(text))) Die("findings are not deterministic");

  const std::string wrapped =
      "<div xmlns=\"http://www.w3.org/1999/xhtml\">" + std::string(text) + "</div>";
  CheckIssues(CheckNarrativeXhtml(wrapped), wrapped.size());

  // The primitive matchers on the same bytes as a JSON string: they must not
  // crash, and a message, when given, must be non-empty.
  const fhirward::json::Value as_string = fhirward::json::Value::String(std::string(text));
  for (std::string_view type :
       {"string", "markdown", "code", "id", "uri", "url", "canonical", "oid", "uuid",
        "base64Binary", "date", "dateTime", "instant", "time", "xhtml", "boolean", "decimal"}) {
    const auto problem = CheckPrimitive(type, as_string);
    if (problem && problem->empty()) Die("empty primitive message");
  }
  // And as a JSON number text when it is one (numbers reach the matchers only from
  // the reader).
  if (auto parsed = fhirward::json::Parse(text); parsed.ok() && parsed->is_number()) {
    for (std::string_view type : {"integer", "positiveInt", "unsignedInt", "decimal"}) {
      const auto problem = CheckPrimitive(type, *parsed);
      if (type == "decimal" && problem) Die("a JSON number is not a valid decimal");
    }
  }
  return 0;
}
