// Search queries as the store executes them: already parsed and checked by the
// server (which knows the FHIR search grammar and the policy), compiled here to
// parameterised SQL. No value of a query is ever spliced into SQL text.
//
// A query is an AND of clauses; a clause is an OR of values. Index values that
// identify a person are stored as keyed HMACs (blind index): a clause on such a
// parameter is compared by HMAC, so it supports exact and prefix matching only.
#ifndef FHIRWARD_STORE_SEARCH_H_
#define FHIRWARD_STORE_SEARCH_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fhirward::store {

enum class SearchPrefix { kEq, kNe, kGt, kLt, kGe, kLe, kSa, kEb, kAp };

struct SearchValue {
  SearchPrefix prefix = SearchPrefix::kEq;
  // token: system (has_system: "system|code" or "|code" was given) and code;
  // for :text, `text` (normalized); for :of-type "type-system|type-code|value"
  // is system = type system, code = "type-code|value".
  bool has_system = false;
  std::string system;
  std::string code;
  // string (as given), uri, reference url.
  std::string text;
  // date: the range of instants the search value covers (ms since epoch).
  int64_t lo = 0, hi = 0;
  // number and quantity: the value and the range its precision implies.
  double value = 0, vlo = 0, vhi = 0;
  // reference: target type (may be empty: any) and id.
  std::string target_type;
  std::string target_id;
  // blind date (birthdate): the date text as given ("1980", "1980-05", "1980-05-01").
  std::string date_text;
  // composite: this value is the first (token) component; `second` holds the
  // other one (kind: SearchClause::component_kind).
  std::vector<SearchValue> second;
};

struct SearchClause {
  enum class Kind {
    kToken,
    kString,
    kDate,
    kNumber,
    kQuantity,
    kReference,
    kUri,
    kId,           // _id: values' code
    kLastUpdated,  // _lastUpdated: values' lo/hi
    kChain,        // param.<sub clause on target_type>
    kHas,          // _has:target_type:param:<sub clause>
    kComposite,    // token$(token|quantity|date|string): values' second component
  };
  Kind kind = Kind::kToken;
  std::string param;  // search parameter code ("subject", "name")
  std::string
      modifier;  // "", exact, contains, text, not, missing, above, below, of-type, identifier
  bool missing = false;  // with modifier "missing": true or false
  bool blind = false;    // the parameter identifies people: compare HMACs (exact/prefix only)
  std::vector<SearchValue> values;  // OR
  // kChain: resources of `target_type` referenced through `param` must match
  // `sub`; kHas: resources of `target_type` whose `param` references this one
  // must match `sub`. `narrow_patients` confines those resources to the
  // principal's Patient compartments. On a kToken clause with modifier "not"
  // it scopes the exclusion: resources in those compartments that match the
  // values are excluded, others are not; without values, every resource in
  // those compartments is excluded.
  std::string target_type;
  std::string component_kind;  // kComposite: "token", "quantity", "date" or "string"
  std::vector<SearchClause> sub;
  std::optional<std::vector<std::string>> narrow_patients;
};

struct SortKey {
  enum class Kind { kId, kLastUpdated, kDate, kString, kToken, kNumber, kReference };
  Kind kind = Kind::kId;
  std::string param;
  bool descending = false;
};

struct SearchQuery {
  std::string tenant;
  std::string type;
  std::vector<SearchClause> clauses;  // AND
  // Confines matches to these Patients' compartments (the policy's
  // obligation; empty: none): applied in SQL, so paging and totals never count
  // hidden resources.
  std::optional<std::vector<std::string>> patients;
  std::vector<SortKey> sort;
  int64_t offset = 0;
  int count = 20;  // at most this many matches; SearchPage.more tells whether more exist
  bool total = false;
  // Wall-clock budget: beyond it the query is interrupted (kTooCostly).
  int64_t time_budget_ms = 0;
};

}  // namespace fhirward::store

#endif  // FHIRWARD_STORE_SEARCH_H_
