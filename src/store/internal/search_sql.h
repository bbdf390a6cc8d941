// The search index in SQL (shared by the store backends): index rows built
// from a resource's search values (identifying values as keyed HMACs), their
// tables, and the compilation of a SearchQuery to parameterised SQL.
#ifndef FHIRWARD_STORE_INTERNAL_SEARCH_SQL_H_
#define FHIRWARD_STORE_INTERNAL_SEARCH_SQL_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/secret_bytes.h"
#include "json/value.h"
#include "store/internal/sqlite.h"
#include "store/search.h"

namespace fhirward::store::internal {

extern const char* const kSearchSchema;

// Computes blind-index values: HMAC-SHA-256 under a per-tenant key derived
// from the instance's blind-index secret, domain-separated by kind and
// parameter, truncated to 128 bits, hex.
class BlindIndex {
 public:
  BlindIndex(const SecretBytes& instance_key, std::string_view tenant);
  std::string Of(std::string_view kind, std::string_view param, std::string_view value) const;

 private:
  SecretBytes key_;
};

struct IndexRows {
  struct Token {
    std::string param;
    int blind = 0;
    std::string system, code, text;
  };
  struct String {
    std::string param;
    int blind = 0;
    std::string norm, exact;  // exact empty: none on this row
  };
  struct Date {
    std::string param;
    int64_t lo = 0, hi = 0;
  };
  struct Number {
    std::string param;
    std::string system, code;
    double value = 0;
  };
  struct Ref {
    std::string param;
    std::string target_type, target_id, url;
  };
  struct Composite {  // token$(token|quantity|date|string)
    std::string param;
    std::string c1_system, c1_code;
    std::string c2_system, c2_code, c2_text;
    double c2_value = 0;
    int64_t c2_lo = 0, c2_hi = 0;
  };
  std::vector<Token> tokens;
  std::vector<String> strings;
  std::vector<Date> dates;
  std::vector<Number> numbers;
  std::vector<Ref> refs;
  std::vector<Composite> composites;
  size_t size() const {
    return tokens.size() + strings.size() + dates.size() + numbers.size() + refs.size() +
           composites.size();
  }
};

// The longest prefix (in code points) of a normalized string kept as a blind
// prefix; longer queries compare their first kBlindPrefixMax code points.
constexpr size_t kBlindPrefixMax = 64;

IndexRows BuildIndexRows(const BlindIndex& blind, std::string_view type,
                         const json::Value& resource, std::string_view base_url);

// Replaces the index rows of one resource (current version only). `fresh`:
// the resource has never been stored (no rows to remove).
absl::Status WriteIndex(Db& db, std::string_view tenant, std::string_view type, std::string_view id,
                        const IndexRows& rows, bool fresh = false);
absl::Status DeleteIndex(Db& db, std::string_view tenant, std::string_view type,
                         std::string_view id);

// A wall-clock budget on `db` for the lifetime of this object: a statement
// running beyond it is interrupted (kTooCostly). 0 or less: none.
class ScopedBudget {
 public:
  ScopedBudget(Db& db, int64_t ms);
  ~ScopedBudget();
  ScopedBudget(const ScopedBudget&) = delete;
  ScopedBudget& operator=(const ScopedBudget&) = delete;

 private:
  Db& db_;
  std::chrono::steady_clock::time_point deadline_;
  bool active_ = false;
};

// The ids matching `q` in order, at most q.count + 1 (the extra one tells
// that more exist), from q.offset; and the total when q.total.
struct SearchIds {
  std::vector<std::string> ids;
  int64_t total = -1;
};
absl::StatusOr<SearchIds> RunSearch(Db& db, const BlindIndex& blind, const SearchQuery& q);

// References held by resources `ids` of `type` through `param` ("*": any
// reference parameter), optionally only to `target_type`.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReferencesFrom(
    Db& db, std::string_view tenant, std::string_view type, const std::vector<std::string>& ids,
    std::string_view param, std::string_view target_type);

// Ids of resources of `source_type` that reference one of `targets` through
// `param` ("*": any), confined to `patients`' compartments when set; at most `limit`.
absl::StatusOr<std::vector<std::string>> ReferencedBy(
    Db& db, std::string_view tenant, std::string_view source_type, std::string_view param,
    const std::vector<std::pair<std::string, std::string>>& targets,
    const std::optional<std::vector<std::string>>& patients, int limit);

}  // namespace fhirward::store::internal

#endif  // FHIRWARD_STORE_INTERNAL_SEARCH_SQL_H_
