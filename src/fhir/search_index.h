// Search-parameter extraction: the values of a resource that its R4
// SearchParameters select, as index entries (ARCHITECTURE.md: "search-parameter
// extraction" belongs to fhir; storing them belongs to store).
//
// Contract:
// - Extract() evaluates every search parameter of the resource's type with the
//   FHIRPath engine (expressions compiled once) and returns one entry per value
//   (a HumanName gives one string entry per part, a CodeableConcept one token
//   entry per coding, a Period one date range ...).
// - Entries that identify a person are marked `identifying` (values of type
//   Identifier, HumanName, Address and ContactPoint, and birth/death dates of
//   people): the store keeps those only as keyed HMACs (blind index).
// - Dates become [lo, hi] ranges in milliseconds since the epoch (UTC; a value
//   without a zone is read as UTC); partial dates cover their whole period.
// - Never throws; a value that cannot be read is skipped (the validator, not
//   the indexer, refuses bad input). Thread-safe.
#ifndef FHIRWARD_FHIR_SEARCH_INDEX_H_
#define FHIRWARD_FHIR_SEARCH_INDEX_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "json/value.h"

namespace fhirward::fhir {

struct IndexEntry {
  enum class Kind : uint8_t {
    kToken,
    kString,
    kDate,
    kNumber,
    kQuantity,
    kReference,
    kUri,
    kComposite,  // token$X: system/code (the token), then the second component below
  };
  Kind kind = Kind::kToken;
  std::string param;  // the search parameter code ("name", "identifier:of-type", ...)
  bool identifying = false;
  // token: system and code (an Identifier's value; a ContactPoint's value);
  // string: text (as written); uri: text.
  std::string system;
  std::string code;
  std::string text;
  // date: [lo, hi] in ms; number and quantity: value (system/code name the unit).
  int64_t lo = 0, hi = 0;
  double value = 0;
  // reference: target type and id (relative or our own absolute URL), or a
  // canonical/absolute url in `text`.
  std::string target_type;
  std::string target_id;
  // composite: the second component, of kind `c2_kind` ("token": c2_system,
  // c2_code; "quantity": value, c2_system, c2_code; "date": lo, hi;
  // "string": c2_text normalized).
  std::string c2_kind;
  std::string c2_system;
  std::string c2_code;
  std::string c2_text;
};

// The component types of a composite parameter of `type` ("token", "quantity"),
// from the definitions its components name; empty when one is unknown.
std::vector<std::string> CompositeComponentTypes(std::string_view type, std::string_view code);

// Composite parameters that are indexed: two components, a token then a
// token, quantity, date or string.
bool IsSupportedComposite(std::string_view type, std::string_view code);

// Case- and accent-insensitive form for string search: lower case, Latin
// diacritics removed (é→e, ß→ss, æ→ae, ø→o), whitespace runs collapsed,
// leading and trailing whitespace dropped. Invalid UTF-8 bytes are kept.
std::string NormalizeSearchString(std::string_view s);

// Parses a FHIR date, dateTime or instant into the range of instants it
// covers, in ms since the epoch; nullopt when malformed.
std::optional<std::pair<int64_t, int64_t>> DateRange(std::string_view text);

// True for the date parameters whose values identify a person (birthdate and
// death-date of Patient, Person, RelatedPerson, Practitioner).
bool IsIdentifyingDateParam(std::string_view type, std::string_view code);

// The search parameters of `type` that Extract indexes; composite and special
// parameters are not indexed (the query side refuses them clearly).
bool IsIndexedParamType(std::string_view param_type);

class SearchIndexer {
 public:
  static const SearchIndexer& R4();
  // The index entries of `resource` (of type `type`). `base_url` (no trailing
  // slash) turns absolute references to this server into relative ones.
  std::vector<IndexEntry> Extract(std::string_view type, const json::Value& resource,
                                  std::string_view base_url = {}) const;

  // True when parameter `code` of `type` selects values that identify a
  // person (its expression reaches an Identifier, HumanName, Address or
  // ContactPoint element, or it is a person's birth/death date): its values
  // are blind-indexed, and the query side compares HMACs.
  bool IsIdentifying(std::string_view type, std::string_view code) const;

  SearchIndexer(const SearchIndexer&) = delete;
  SearchIndexer& operator=(const SearchIndexer&) = delete;
  ~SearchIndexer();

 private:
  SearchIndexer();
  struct Impl;
  Impl* impl_;
};

}  // namespace fhirward::fhir

#endif  // FHIRWARD_FHIR_SEARCH_INDEX_H_
