// libFuzzer target for FHIR search request parsing (server/search.h).
//
// Input: <selector bytes> NUL <query string>. The first selector byte picks
// the resource type searched (low bits) and the limits (one bit); without a
// NUL, the first byte is the selector and the rest the query string.
//
// ParseQueryString, then ParseSearch (lenient and strict; with a narrowing
// that confines nothing and one that confines every type to a patient and
// refuses Practitioner) and ParseCondition must never crash, and a successful
// parse must respect the limits and be stable: its canonical string parses
// again (leniently) to the same canonical string.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.h"
#include "server/search.h"
#include "store/search.h"

namespace {

using fhirward::ErrorCode;
using fhirward::server::NarrowFn;
using fhirward::server::Narrowing;
using fhirward::server::ParsedSearch;
using fhirward::server::SearchLimits;

constexpr std::string_view kTypes[] = {"Patient",      "Observation",      "Organization",
                                       "Encounter",    "ValueSet",         "RiskAssessment",
                                       "Practitioner", "MedicationRequest"};
constexpr std::string_view kBase = "https://fhir.example.org/r4";

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "server_search_fuzz: %s\n", what);
  std::abort();
}

const NarrowFn& NoNarrowing() {
  static const NarrowFn* fn =
      new NarrowFn([](std::string_view) -> absl::StatusOr<Narrowing> { return Narrowing{}; });
  return *fn;
}

// A patient's view: one compartment, a hidden label, a consent-denied label of
// another patient; no Practitioner search at all.
const NarrowFn& PatientNarrowing() {
  static const NarrowFn* fn = new NarrowFn([](std::string_view type) -> absl::StatusOr<Narrowing> {
    if (type == "Practitioner") {
      return fhirward::Error(ErrorCode::kForbidden, "no Practitioner access");
    }
    Narrowing n;
    n.patients = std::vector<std::string>{"p1"};
    n.hidden_labels = {"R"};
    n.hidden_labels_of = {{"p2", {"PSY"}}};
    n.excluded_patients = {"p3"};
    return n;
  });
  return *fn;
}

// Depth of chains and _has below `c` (0 for a plain clause).
int Depth(const fhirward::store::SearchClause& c) {
  int d = 0;
  for (const auto& s : c.sub) d = std::max(d, 1 + Depth(s));
  return d;
}

void CheckLimits(const ParsedSearch& p, const SearchLimits& limits) {
  if (p.query.clauses.size() > static_cast<size_t>(limits.max_params)) Die("too many clauses");
  if (p.includes.size() > static_cast<size_t>(limits.max_includes)) Die("too many includes");
  if (p.query.count < 0 || p.query.count > limits.max_count) Die("count out of range");
  if (p.query.sort.size() > 4) Die("too many sort keys");
  for (const auto& c : p.query.clauses) {
    if (c.values.size() > static_cast<size_t>(limits.max_values)) Die("too many values");
    if (Depth(c) > limits.max_chain_depth) Die("chain too deep");
  }
  if (p.total != "none" && p.total != "estimate" && p.total != "accurate") Die("bad _total");
  if (p.query.total != (p.total != "none")) Die("total flag disagrees with _total");
}

void Run(std::string_view type, std::string_view qs, const SearchLimits& limits) {
  auto params = fhirward::server::ParseQueryString(qs);
  if (!params.ok()) {
    if (fhirward::CodeOf(params.status()) != ErrorCode::kInvalidParameter) {
      Die("query string error with an unexpected code");
    }
    return;
  }
  for (const NarrowFn* narrow : {&NoNarrowing(), &PatientNarrowing()}) {
    for (bool strict : {false, true}) {
      auto parsed = fhirward::server::ParseSearch(type, *params, limits, strict, kBase, *narrow);
      if (!parsed.ok()) continue;
      CheckLimits(*parsed, limits);
      if (strict && !parsed->ignored.empty()) Die("strict parse ignored a parameter");
      // The canonical form is a query string that parses to itself.
      auto again_params = fhirward::server::ParseQueryString(parsed->canonical);
      if (!again_params.ok()) Die("canonical string does not parse as a query string");
      auto again =
          fhirward::server::ParseSearch(type, *again_params, limits, false, kBase, *narrow);
      if (!again.ok()) Die("canonical string does not parse as a search");
      if (again->canonical != parsed->canonical) Die("canonical string is not stable");
      if (again->query.clauses.size() != parsed->query.clauses.size()) {
        Die("canonical string changes the clauses");
      }
    }
    (void)fhirward::server::ParseCondition(type, qs, limits, kBase, *narrow);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  std::string_view qs;
  uint8_t selector = 0;
  if (nul == std::string_view::npos) {
    selector = data[0];
    qs = in.substr(1);
  } else {
    selector = nul > 0 ? data[0] : 0;
    qs = in.substr(nul + 1);
  }
  if (qs.size() > 8192) return 0;
  const std::string_view type = kTypes[selector % std::size(kTypes)];
  SearchLimits limits;
  if (selector & 0x80) {
    limits.max_params = 4;
    limits.max_values = 3;
    limits.max_includes = 2;
    limits.max_chain_depth = 2;
    limits.max_count = 50;
  }
  Run(type, qs, limits);
  return 0;
}
