#include "fhir/validator.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "json/value.h"

namespace fhirward::fhir {
namespace {

namespace fs = std::filesystem;

json::Value Load(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  auto v = json::Parse(ss.str());
  EXPECT_TRUE(v.ok()) << p << ": " << v.status();
  return v.ok() ? std::move(*v) : json::Value();
}

json::Value ParseOrDie(std::string_view text) {
  auto v = json::Parse(text);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? std::move(*v) : json::Value();
}

std::string Describe(const ValidationReport& r) {
  std::string out;
  for (const ValidationIssue& i : r.issues) {
    out += std::string(SeverityName(i.severity)) + " [" + i.rule + "] " + i.expression + ": " +
           i.message + "\n";
  }
  return out;
}

const Validator& TheValidator() {
  static const Validator* v = new Validator();
  return *v;
}

std::vector<fs::path> Files(const std::string& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(fs::path(FHIRWARD_TESTDATA) / dir)) {
    if (e.path().extension() == ".json") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Each file in testdata/invalid holds a resource and the findings it must
// produce (rule and FHIRPath location); the validator must report each one as
// an error.
TEST(ValidatorCorpusTest, EveryInvalidResourceIsRejectedWithTheExpectedIssue) {
  auto files = Files("invalid");
  ASSERT_GE(files.size(), 70u);
  for (const fs::path& p : files) {
    json::Value doc = Load(p);
    const json::Value* resource = doc.Find("resource");
    ASSERT_NE(resource, nullptr) << p;
    ValidationReport r = TheValidator().Validate(*resource);
    EXPECT_FALSE(r.valid()) << p.filename() << " was accepted";
    for (const json::Value& want : doc.Find("expect")->items()) {
      std::string rule(*want.GetString("rule"));
      std::string expr(*want.GetString("expression"));
      bool found = false;
      for (const ValidationIssue& i : r.issues) {
        if (i.rule == rule && i.expression == expr &&
            (i.severity == IssueSeverity::kError || i.severity == IssueSeverity::kFatal)) {
          found = true;
        }
      }
      EXPECT_TRUE(found) << p.filename() << ": expected error [" << rule << "] at '" << expr
                         << "'; got:\n"
                         << Describe(r);
    }
  }
}

TEST(ValidatorCorpusTest, OwnValidResourcesHaveNoErrors) {
  auto files = Files("valid");
  ASSERT_GE(files.size(), 4u);
  for (const fs::path& p : files) {
    ValidationReport r = TheValidator().Validate(Load(p));
    EXPECT_TRUE(r.valid()) << p.filename() << ":\n" << Describe(r);
  }
}

TEST(ValidatorTest, ReportsEveryFindingNotJustTheFirst) {
  ValidationReport r = TheValidator().Validate(ParseOrDie(R"({
    "resourceType": "Patient", "foo": 1, "gender": "man", "birthDate": "2023-13-01",
    "name": [{"family": ""}], "active": "yes"})"));
  EXPECT_EQ(r.errors, 5u) << Describe(r);
}

TEST(ValidatorTest, OutcomeCarriesSeverityCodeExpressionAndMessage) {
  ValidationReport r = TheValidator().Validate(ParseOrDie(
      R"({"resourceType": "Patient", "contact": [{"name": {"family": "X", "nick": "Y"}}]})"));
  json::Value oo = r.ToOperationOutcome();
  EXPECT_EQ(oo.GetString("resourceType"), "OperationOutcome");
  const json::Value& issue = oo.Find("issue")->items().at(0);
  EXPECT_EQ(issue.GetString("severity"), "error");
  EXPECT_EQ(issue.GetString("code"), "structure");
  EXPECT_EQ(issue.Find("expression")->items().at(0).as_string(), "Patient.contact[0].name.nick");
  EXPECT_NE(issue.GetString("diagnostics")->find("nick"), std::string_view::npos);
}

TEST(ValidatorTest, CleanResourceGivesAnInformationalOutcome) {
  ValidationReport r = TheValidator().Validate(ParseOrDie(R"({"resourceType": "Patient",
      "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}})"));
  EXPECT_TRUE(r.valid()) << Describe(r);
  EXPECT_EQ(r.warnings, 0u) << Describe(r);
  json::Value oo = r.ToOperationOutcome();
  EXPECT_EQ(oo.Find("issue")->items().at(0).GetString("severity"), "information");
}

TEST(ValidatorTest, UnknownProfileIsAWarningNotAnError) {
  ValidationReport r = TheValidator().Validate(ParseOrDie(
      R"({"resourceType": "Patient", "meta": {"profile": ["http://example.org/StructureDefinition/nope"]}})"));
  EXPECT_TRUE(r.valid()) << Describe(r);
  size_t unknown = 0;
  for (const ValidationIssue& i : r.issues) {
    if (i.rule == "profile-unknown") {
      ++unknown;
      EXPECT_EQ(i.severity, IssueSeverity::kWarning);
      EXPECT_EQ(i.expression, "Patient.meta.profile");
    }
  }
  EXPECT_EQ(unknown, 1u) << Describe(r);
}

TEST(ValidatorTest, IssueCountIsCapped) {
  std::string text = R"({"resourceType": "Patient", "name": [)";
  for (int i = 0; i < 50; ++i) text += std::string(i ? "," : "") + R"({"family": "", "x": 1})";
  text += "]}";
  ValidatorOptions o;
  o.max_issues = 10;
  Validator v(o);
  ValidationReport r = v.Validate(ParseOrDie(text));
  EXPECT_EQ(r.issues.size(), 10u);
  EXPECT_TRUE(r.truncated);
  EXPECT_EQ(r.errors, 100u);
}

TEST(ValidatorTest, MessagesDoNotEchoLongValues) {
  std::string big(5000, 'A');
  ValidationReport r = TheValidator().Validate(
      ParseOrDie(R"({"resourceType": "Patient", "gender": ")" + big + R"("})"));
  ASSERT_FALSE(r.valid());
  for (const ValidationIssue& i : r.issues) EXPECT_LT(i.message.size(), 300u) << i.message;
}

TEST(ValidatorTest, ResourceWithoutNarrativeGetsTheDom6Warning) {
  ValidationReport r = TheValidator().Validate(ParseOrDie(R"({"resourceType": "Patient"})"));
  EXPECT_TRUE(r.valid()) << Describe(r);
  ASSERT_EQ(r.warnings, 1u) << Describe(r);
  EXPECT_EQ(r.issues[0].rule, "dom-6");
  EXPECT_EQ(r.issues[0].code, "invariant");
}

TEST(ValidatorTest, EmptyNarrativeIsATxt2Warning) {
  for (std::string_view div :
       {R"(<div xmlns=\"http://www.w3.org/1999/xhtml\"></div>)",
        R"(<div xmlns=\"http://www.w3.org/1999/xhtml\"> <p>\n</p> </div>)"}) {
    ValidationReport r = TheValidator().Validate(ParseOrDie(
        std::string(R"({"resourceType": "Patient", "text": {"status": "generated", "div": ")") +
        std::string(div) + "\"}}"));
    EXPECT_TRUE(r.valid()) << Describe(r);
    ASSERT_EQ(r.warnings, 1u) << Describe(r);
    EXPECT_EQ(r.issues[0].rule, "txt-2");
    EXPECT_EQ(r.issues[0].expression, "Patient.text.div");
  }
}

TEST(ValidatorTest, Que7ErratumAcceptsABooleanAnswerToExists) {
  // R4 writes "answer is Boolean" (the System type); R5 fixed it to "boolean".
  const char* q = R"({"resourceType": "Questionnaire", "status": "active", "item": [
      {"linkId": "1", "type": "boolean", "text": "a"},
      {"linkId": "2", "type": "string", "text": "b",
       "enableWhen": [{"question": "1", "operator": "exists", "answer%s": %s}]}]})";
  char buf[512];
  std::snprintf(buf, sizeof buf, q, "Boolean", "true");
  ValidationReport ok = TheValidator().Validate(ParseOrDie(buf));
  EXPECT_TRUE(ok.valid()) << Describe(ok);
  std::snprintf(buf, sizeof buf, q, "String", "\"yes\"");
  ValidationReport bad = TheValidator().Validate(ParseOrDie(buf));
  bool que7 = false;
  for (const ValidationIssue& i : bad.issues) que7 |= i.rule == "que-7";
  EXPECT_TRUE(que7) << Describe(bad);
}

TEST(ValidatorTest, ContainedResourcesDoNotNeedTheirOwnNarrative) {
  ValidationReport r = TheValidator().Validate(ParseOrDie(R"({"resourceType": "Patient",
      "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
      "contained": [{"resourceType": "Organization", "id": "o", "name": "x"}],
      "managingOrganization": {"reference": "#o"}})"));
  EXPECT_TRUE(r.valid()) << Describe(r);
  EXPECT_EQ(r.warnings, 0u) << Describe(r);
}

TEST(ValidatorTest, NonObjectsAreRejected) {
  EXPECT_FALSE(TheValidator().Validate(ParseOrDie("[]")).valid());
  EXPECT_FALSE(TheValidator().Validate(ParseOrDie(R"("Patient")")).valid());
  EXPECT_FALSE(TheValidator().Validate(ParseOrDie(R"({"resourceType": 1})")).valid());
  EXPECT_FALSE(TheValidator().Validate(ParseOrDie(R"({"id": "x"})")).valid());
}

TEST(ValidatorTest, InvariantsCanBeSwitchedOff) {
  ValidatorOptions o;
  o.check_invariants = false;
  Validator v(o);
  json::Value pat = ParseOrDie(R"({"resourceType": "Patient", "contact": [{"gender": "male"}]})");
  EXPECT_TRUE(v.Validate(pat).valid());
  EXPECT_FALSE(TheValidator().Validate(pat).valid());
}

TEST(ValidatorTest, BindingsCanBeSwitchedOff) {
  ValidatorOptions o;
  o.check_bindings = false;
  Validator v(o);
  json::Value pat = ParseOrDie(R"({"resourceType": "Patient", "gender": "man"})");
  EXPECT_TRUE(v.Validate(pat).valid());
  EXPECT_FALSE(TheValidator().Validate(pat).valid());
}

}  // namespace
}  // namespace fhirward::fhir
