// FHIR search request parsing: query parameters (GET query or POST _search
// form) → a store::SearchQuery plus what the response needs (_include,
// _revinclude, _summary, _elements, _total). Pure: no store or policy access;
// the caller supplies `narrow` to confine chained and _has targets exactly as
// a direct search of their type would be confined.
#ifndef FHIRWARD_SERVER_SEARCH_H_
#define FHIRWARD_SERVER_SEARCH_H_

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "store/search.h"

namespace fhirward::server {

struct SearchLimits {
  int default_count = 20;
  int max_count = 500;
  int max_params = 32;         // search parameters in one query
  int max_values = 50;         // comma-separated values of one parameter
  int max_chain_depth = 1;     // chained parameters and _has, each
  int max_includes = 8;        // _include + _revinclude parameters
  int max_included = 1000;     // resources added by includes to one page
  int64_t max_window = 10000;  // offset + count
  int64_t time_budget_ms = 2000;
};

struct IncludeSpec {
  std::string source_type;  // "Observation"
  std::string param;        // "subject" or "*"
  std::string target_type;  // optional
  bool iterate = false;
  bool reverse = false;  // _revinclude
};

struct ParsedSearch {
  store::SearchQuery query;
  std::vector<IncludeSpec> includes;
  std::string total = "none";  // none | estimate | accurate
  std::string summary;         // "", true, false, text, data, count
  std::vector<std::string> elements;
  std::vector<std::string> ignored;  // unknown or unsupported parameters (lenient handling)
  // The query as a canonical string (decoded names and values, re-encoded,
  // without paging parameters): self links and cursors.
  std::string canonical;
};

// The policy's narrowing of a search of one type.
struct Narrowing {
  // Confined to these Patients' compartments (nullopt: not confined).
  std::optional<std::vector<std::string>> patients;
  // Resources carrying one of these meta.security codes are excluded.
  std::vector<std::string> hidden_labels;
  // Resources in one of these patients' compartments carrying one of these
  // codes are excluded (what patients' consents deny): {patient, labels}.
  std::vector<std::pair<std::string, std::vector<std::string>>> hidden_labels_of;
  // Resources in one of these patients' compartments are excluded.
  std::vector<std::string> excluded_patients;
};

// Appends the exclusions of `n` to `clauses`: one `_security:not=CODE` clause
// per hidden label, and one patient-scoped `_security:not` clause
// (SearchClause::narrow_patients) per distinct label set of hidden_labels_of.
void ExcludeHidden(const Narrowing& n, std::vector<store::SearchClause>* clauses);

// Refuses (kForbidden) a search whose parameters, at any chain or _has
// depth, or sort keys read an element masked from the principal:
// `masked_of(type)` gives the masked element paths ("Patient.name") for a
// type. Searching on a masked element would tell its value (a researcher
// finding a patient by name), so the search is refused, naming the parameter.
absl::Status RefuseMaskedSearch(
    std::string_view type, const store::SearchQuery& q,
    const std::function<std::vector<std::string>(std::string_view type)>& masked_of);

// Whether a FHIRPath search expression (e.g. "Patient.telecom.where(system='phone')
// | Person.telecom") reads `path` ("Patient.telecom") or below or above it.
bool ExpressionReaches(std::string_view expression, std::string_view path);

// Narrowing of a target type for chains and _has; an error = the principal
// may not search that type at all (the whole request is refused).
using NarrowFn = std::function<absl::StatusOr<Narrowing>(std::string_view type)>;

// `strict`: Prefer: handling=strict (unknown parameters are errors).
absl::StatusOr<ParsedSearch> ParseSearch(
    std::string_view type, const std::vector<std::pair<std::string, std::string>>& params,
    const SearchLimits& limits, bool strict, std::string_view base_url, const NarrowFn& narrow);

// Parses the query part of a conditional URL ("identifier=a|b&active=true")
// for `type` into a query with strict handling and no paging/result params.
absl::StatusOr<store::SearchQuery> ParseCondition(std::string_view type, std::string_view query,
                                                  const SearchLimits& limits,
                                                  std::string_view base_url,
                                                  const NarrowFn& narrow);

// Percent-encoding for query strings (RFC 3986 unreserved kept).
std::string QueryEncode(std::string_view s);

// Splits and decodes "a=b&c=d"; error on malformed percent escapes.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseQueryString(
    std::string_view qs);

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_SEARCH_H_
