#include "fhir/profiles.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fhir/validator.h"

namespace fhirward::fhir {
namespace {

constexpr char kProfile[] = "http://fhirward.dev/fhir/StructureDefinition/test-patient";

json::Value ParseOrDie(std::string_view text) {
  auto v = json::Parse(text);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? std::move(*v) : json::Value();
}

const ProfileSet& Profiles() {
  static const ProfileSet* set = [] {
    auto s = ProfileSet::Load({std::string(FHIRWARD_TESTDATA) + "/profiles"});
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? s->release() : nullptr;
  }();
  return *set;
}

const Validator& V() {
  static const Validator* v = [] {
    ValidatorOptions o;
    o.profiles = &Profiles();
    return new Validator(o);
  }();
  return *v;
}

// A Patient that conforms to the test profile; each test breaks one rule.
json::Value Conforming() {
  return ParseOrDie(R"({
    "resourceType": "Patient",
    "meta": {"profile": ["http://fhirward.dev/fhir/StructureDefinition/test-patient"]},
    "extension": [{"url": "http://fhirward.dev/fhir/StructureDefinition/consent-flag", "valueBoolean": true},
                  {"url": "http://example.org/other", "valueString": "open slicing"}],
    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"},
                   {"system": "http://example.org/other", "value": "x"}],
    "name": [{"family": "Chalmers", "given": ["Peter"]}],
    "gender": "male",
    "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]},
    "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b.c"}]
  })");
}

std::string Describe(const ValidationReport& r) {
  std::string out;
  for (const ValidationIssue& i : r.issues) {
    out += std::string(SeverityName(i.severity)) + " [" + i.rule + "] " + i.expression + ": " +
           i.message + "\n";
  }
  return out;
}

bool HasError(const ValidationReport& r, std::string_view rule, std::string_view expr) {
  for (const ValidationIssue& i : r.issues) {
    if (i.severity == IssueSeverity::kError && i.rule == rule && i.expression == expr) return true;
  }
  return false;
}

TEST(ProfileTest, LoadsTheNpmPackageLayout) {
  EXPECT_EQ(Profiles().profile_count(), 1u);
  EXPECT_TRUE(Profiles().Has(kProfile));
  EXPECT_TRUE(Profiles().Has(std::string(kProfile) + "|1.0.0"));
  EXPECT_FALSE(Profiles().Has("http://example.org/none"));
}

TEST(ProfileTest, ConformingInstanceIsValid) {
  ValidationReport r = V().Validate(Conforming());
  EXPECT_TRUE(r.valid()) << Describe(r);
  for (const ValidationIssue& i : r.issues)
    EXPECT_NE(i.rule.rfind("profile", 0), 0u) << Describe(r);
}

TEST(ProfileTest, CardinalityOfElementsAndNestedElements) {
  json::Value p = Conforming();
  p.Erase("gender");
  p.Find("name")->items()[0].Erase("family");
  p.Set("contact", ParseOrDie(R"([{"name": {"family": "X"}}])"));
  ValidationReport r = V().Validate(p);
  EXPECT_TRUE(HasError(r, "profile-cardinality", "Patient.gender")) << Describe(r);
  EXPECT_TRUE(HasError(r, "profile-cardinality", "Patient.name[0].family")) << Describe(r);
  EXPECT_TRUE(HasError(r, "profile-cardinality", "Patient.contact")) << Describe(r);
}

TEST(ProfileTest, PatternSlicedIdentifierMustBePresent) {
  json::Value p = Conforming();
  p.Set("identifier", ParseOrDie(R"([{"system": "http://example.org/other", "value": "x"}])"));
  ValidationReport r = V().Validate(p);
  EXPECT_TRUE(HasError(r, "profile-cardinality", "Patient.identifier:mrn")) << Describe(r);
}

TEST(ProfileTest, SliceChildrenAreChecked) {
  json::Value p = Conforming();
  p.Set("identifier", ParseOrDie(R"([{"system": "urn:oid:1.2.36.146.595.217.0.1"}])"));
  ValidationReport r = V().Validate(p);
  EXPECT_TRUE(HasError(r, "profile-cardinality", "Patient.identifier[0].value")) << Describe(r);
}

TEST(ProfileTest, ExtensionSlicedByUrlFromTheSliceProfile) {
  json::Value p = Conforming();
  p.Set("extension", ParseOrDie(R"([{"url": "http://example.org/other", "valueString": "x"}])"));
  ValidationReport r = V().Validate(p);
  EXPECT_TRUE(HasError(r, "profile-cardinality", "Patient.extension:consentFlag")) << Describe(r);
}

TEST(ProfileTest, ClosedSlicingRefusesUnmatchedItemsAndSliceMaximum) {
  json::Value p = Conforming();
  p.Set("telecom", ParseOrDie(R"([{"system": "fax", "value": "1"},
      {"system": "email", "value": "a"}, {"system": "email", "value": "b"}])"));
  ValidationReport r = V().Validate(p);
  EXPECT_TRUE(HasError(r, "profile-slice", "Patient.telecom[0]")) << Describe(r);
  EXPECT_TRUE(HasError(r, "profile-cardinality", "Patient.telecom:email")) << Describe(r);
}

TEST(ProfileTest, RequiredBindingFromAPackageValueSet) {
  json::Value p = Conforming();
  p.Set("gender", json::Value::String("other"));  // valid R4, not in the profile's value set
  ValidationReport r = V().Validate(p);
  EXPECT_TRUE(HasError(r, "profile-binding", "Patient.gender")) << Describe(r);
}

TEST(ProfileTest, PatternValue) {
  json::Value p = Conforming();
  p.Set("maritalStatus",
        ParseOrDie(R"({"coding": [{"system": "http://example.org", "code": "M"}]})"));
  ValidationReport r = V().Validate(p);
  EXPECT_TRUE(HasError(r, "profile-pattern", "Patient.maritalStatus")) << Describe(r);
}

TEST(ProfileTest, ChoiceTypeRestriction) {
  json::Value p = Conforming();
  p.Set("deceasedDateTime", json::Value::String("2020-01-01"));
  ValidationReport r = V().Validate(p);
  EXPECT_TRUE(HasError(r, "profile-type", "Patient.deceasedDateTime")) << Describe(r);
}

TEST(ProfileTest, UnknownProfileIsOnlyAWarning) {
  json::Value p = Conforming();
  p.Find("meta")->Set("profile", ParseOrDie(R"(["http://example.org/unknown"])"));
  ValidationReport r = V().Validate(p);
  EXPECT_TRUE(r.valid()) << Describe(r);
  size_t unknown = 0;
  for (const ValidationIssue& i : r.issues) unknown += i.rule == "profile-unknown";
  EXPECT_EQ(unknown, 1u) << Describe(r);
}

TEST(ProfileTest, ProfileForAnotherTypeIsAnError) {
  json::Value obs = ParseOrDie(R"({"resourceType": "Observation", "status": "final",
      "code": {"text": "x"},
      "meta": {"profile": ["http://fhirward.dev/fhir/StructureDefinition/test-patient"]}})");
  ValidationReport r = V().Validate(obs);
  EXPECT_TRUE(HasError(r, "profile-type", "Observation")) << Describe(r);
}

TEST(ProfileTest, MalformedStructureDefinitionIsRefusedAtLoad) {
  auto bad = ProfileSet::FromResources({ParseOrDie(
      R"({"resourceType": "StructureDefinition", "url": "http://x", "type": "Patient",
          "derivation": "constraint"})")});
  EXPECT_FALSE(bad.ok());
  auto orphan = ProfileSet::FromResources({ParseOrDie(
      R"({"resourceType": "StructureDefinition", "url": "http://x", "type": "Patient",
          "derivation": "constraint", "snapshot": {"element": [
            {"id": "Patient", "path": "Patient"},
            {"id": "Patient.name.family", "path": "Patient.name.family"}]}})")});
  EXPECT_FALSE(orphan.ok());
  EXPECT_FALSE(ProfileSet::Load({"/nonexistent/dir"}).ok());
}

TEST(ProfileTest, LoadNamesTheFileOfAMalformedProfile) {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("fhirward-profiles-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir / "package");
  std::ofstream(dir / "package" / "StructureDefinition-bad.json")
      << R"({"resourceType": "StructureDefinition", "url": "http://x", "type": "Patient",
            "derivation": "constraint"})";
  auto set = ProfileSet::Load({dir.string()});
  std::filesystem::remove_all(dir);
  ASSERT_FALSE(set.ok());
  EXPECT_NE(std::string(set.status().message()).find("StructureDefinition-bad.json"),
            std::string::npos)
      << set.status();
}

}  // namespace
}  // namespace fhirward::fhir
