// Profiles (constraining StructureDefinitions) loaded from npm-format FHIR
// package directories, validated against their snapshots: cardinality, fixed
// and pattern values, required bindings (value sets from the core model or
// enumerated in the packages), and slicing with value and pattern
// discriminators (including extensions sliced by url).
//
// What is not checked is said, never silently passed: a slicing whose
// discriminator is of type "type", "profile" or "exists" is reported as a
// warning once per slicing and its slices are not matched.
//
// Immutable after Load: safe to use from many threads.
#ifndef FHIRWARD_FHIR_PROFILES_H_
#define FHIRWARD_FHIR_PROFILES_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "json/value.h"

namespace fhirward::fhir {

class IssueSink;

class ProfileSet {
 public:
  // Reads every *.json file of each directory (and of its "package/"
  // subdirectory, the npm layout) holding a StructureDefinition with a
  // snapshot, or a ValueSet. Files of other resource types are ignored; an
  // unreadable or malformed StructureDefinition is an error naming the file.
  static absl::StatusOr<std::unique_ptr<ProfileSet>> Load(const std::vector<std::string>& dirs);
  // The same from in-memory resources (tests, $validate of packages).
  static absl::StatusOr<std::unique_ptr<ProfileSet>> FromResources(
      const std::vector<json::Value>& resources);

  ~ProfileSet();
  struct Impl;  // implementation detail (profiles.cc)
  size_t profile_count() const;
  // `url` may carry "|version".
  bool Has(std::string_view url) const;
  // Checks `resource` (whose FHIRPath location is `expr`) against profile
  // `url`; findings go to `sink`. Returns false when the profile is not loaded.
  bool Validate(std::string_view url, const json::Value& resource, const std::string& expr,
                IssueSink& sink) const;

 private:
  ProfileSet();
  static absl::StatusOr<std::unique_ptr<ProfileSet>> Build(
      const std::vector<json::Value>& resources, const std::vector<std::string>& origins);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fhirward::fhir

#endif  // FHIRWARD_FHIR_PROFILES_H_
