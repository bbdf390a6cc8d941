// FHIR search request parsing: parameters, values, modifiers, chains, result
// parameters, limits, lenient/strict handling and the canonical string.
#include "server/search.h"

#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fhirward::server {
namespace {

using store::SearchClause;
using store::SearchPrefix;
using store::SortKey;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using Params = std::vector<std::pair<std::string, std::string>>;

constexpr std::string_view kBase = "https://fhir.example.org/r4";

// Succeeds when `r` failed with `code`; the message names what happened instead.
template <typename T>
::testing::AssertionResult FailsWith(const absl::StatusOr<T>& r, ErrorCode code) {
  if (r.ok()) {
    return ::testing::AssertionFailure() << "succeeded; expected " << Describe(code).name;
  }
  if (CodeOf(r.status()) != code) {
    return ::testing::AssertionFailure()
           << "failed with " << Describe(CodeOf(r.status())).name << " (" << r.status()
           << "); expected " << Describe(code).name;
  }
  return ::testing::AssertionSuccess();
}

NarrowFn NoNarrowing() {
  return [](std::string_view) -> absl::StatusOr<Narrowing> { return Narrowing{}; };
}

// Confines every type to patient p1's compartment, and refuses Practitioner outright.
NarrowFn PatientP1() {
  return [](std::string_view type) -> absl::StatusOr<Narrowing> {
    if (type == "Practitioner") return Error(ErrorCode::kForbidden, "no Practitioner access");
    Narrowing n;
    n.patients = std::vector<std::string>{"p1"};
    if (type == "Observation") n.hidden_labels = {"PSY"};
    return n;
  };
}

class ParseSearchTest : public ::testing::Test {
 protected:
  absl::StatusOr<ParsedSearch> Parse(std::string_view type, const Params& params,
                                     bool strict = false) {
    return ParseSearch(type, params, limits_, strict, kBase, narrow_);
  }
  // The single clause of a one-parameter search (a failed parse fails the test).
  SearchClause One(std::string_view type, std::string name, std::string value, bool strict = true) {
    auto r = Parse(type, {{std::move(name), std::move(value)}}, strict);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->query.clauses.size() != 1) {
      ADD_FAILURE() << "expected one clause";
      return SearchClause{};
    }
    return r->query.clauses[0];
  }
  absl::StatusOr<ParsedSearch> Strict(std::string_view type, std::string name, std::string value) {
    return Parse(type, {{std::move(name), std::move(value)}}, true);
  }

  SearchLimits limits_;
  NarrowFn narrow_ = NoNarrowing();
};

// ---------------------------------------------------------------------------------------------
// Query strings

TEST(ParseQueryStringTest, SplitsAndDecodes) {
  auto p = ParseQueryString("name=J%C3%B6rg+M&code=http%3A%2F%2Floinc.org%7C8867-4&&flag&%41=b=c");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(
      *p,
      (Params{
          {"name", "Jörg M"}, {"code", "http://loinc.org|8867-4"}, {"flag", ""}, {"A", "b=c"}}));
  EXPECT_THAT(*ParseQueryString(""), IsEmpty());
}

TEST(ParseQueryStringTest, MalformedEscapesAreErrors) {
  for (const char* bad : {"a=%", "a=%4", "a=%zz", "a=%4g", "%=1", "a%2=1", "a=ok&b=%G0"}) {
    EXPECT_TRUE(FailsWith(ParseQueryString(bad), ErrorCode::kInvalidParameter)) << bad;
  }
  EXPECT_TRUE(ParseQueryString("a=%41%42").ok());
}

TEST(QueryEncodeTest, KeepsUnreservedAndSearchPunctuation) {
  EXPECT_EQ(QueryEncode("http://loinc.org|8867-4,x_y.z~$"), "http://loinc.org|8867-4,x_y.z~$");
  EXPECT_EQ(QueryEncode("a b&c=d"), "a%20b%26c%3Dd");
  EXPECT_EQ(QueryEncode("\\é"), "%5C%C3%A9");
}

// ---------------------------------------------------------------------------------------------
// Prefixes and values

TEST_F(ParseSearchTest, DatePrefixes) {
  const std::pair<const char*, SearchPrefix> cases[] = {
      {"2019", SearchPrefix::kEq},   {"eq2019", SearchPrefix::kEq}, {"ne2019", SearchPrefix::kNe},
      {"gt2019", SearchPrefix::kGt}, {"lt2019", SearchPrefix::kLt}, {"ge2019", SearchPrefix::kGe},
      {"le2019", SearchPrefix::kLe}, {"sa2019", SearchPrefix::kSa}, {"eb2019", SearchPrefix::kEb},
      {"ap2019", SearchPrefix::kAp}};
  for (const auto& [value, prefix] : cases) {
    SearchClause c = One("Observation", "date", value);
    EXPECT_EQ(c.kind, SearchClause::Kind::kDate);
    EXPECT_FALSE(c.blind);
    ASSERT_EQ(c.values.size(), 1u);
    EXPECT_EQ(c.values[0].prefix, prefix) << value;
    EXPECT_EQ(c.values[0].lo, 1546300800000) << value;  // 2019-01-01T00:00:00Z
    EXPECT_EQ(c.values[0].hi, 1577836799999) << value;  // 2019-12-31T23:59:59.999Z
  }
}

TEST_F(ParseSearchTest, DateErrors) {
  for (const char* bad : {"2019-13", "xx2019", "gt", "2019-02-30", "yesterday", ""}) {
    EXPECT_TRUE(FailsWith(Strict("Observation", "date", bad), ErrorCode::kInvalidParameter)) << bad;
  }
  EXPECT_TRUE(
      FailsWith(Strict("Observation", "date:missing", "maybe"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(FailsWith(Strict("Observation", "date:exact", "2019"), ErrorCode::kNotImplemented));
}

TEST_F(ParseSearchTest, DateWithZoneAndSeveralValues) {
  SearchClause c = One("Observation", "date", "ge2019-05-03T10:00:00+02:00,2020");
  ASSERT_EQ(c.values.size(), 2u);
  EXPECT_EQ(c.values[0].prefix, SearchPrefix::kGe);
  EXPECT_EQ(c.values[0].lo, 1556870400000);  // 08:00Z
  EXPECT_EQ(c.values[0].hi, 1556870400999);
  EXPECT_EQ(c.values[1].prefix, SearchPrefix::kEq);
}

TEST_F(ParseSearchTest, BlindBirthdateOnlyExactDates) {
  SearchClause c = One("Patient", "birthdate", "1980-05-01");
  EXPECT_EQ(c.kind, SearchClause::Kind::kDate);
  EXPECT_TRUE(c.blind);
  ASSERT_EQ(c.values.size(), 1u);
  EXPECT_EQ(c.values[0].date_text, "1980-05-01");
  EXPECT_EQ(One("Patient", "birthdate", "1980").values[0].date_text, "1980");
  EXPECT_EQ(One("Patient", "birthdate", "1980-05").values[0].date_text, "1980-05");
  EXPECT_EQ(One("Patient", "birthdate", "eq1980").values[0].date_text,
            "1980");  // eq is the default
  for (const char* bad :
       {"ge1980", "ne1980", "ap1980", "1980-05-01T10:00:00Z", "lt1980-05-01", "1980-5-1"}) {
    EXPECT_TRUE(FailsWith(Strict("Patient", "birthdate", bad), ErrorCode::kInvalidParameter))
        << bad;
  }
}

TEST_F(ParseSearchTest, CommasSplitValuesUnlessEscaped) {
  SearchClause two = One("Organization", "name", "a,b");
  ASSERT_EQ(two.values.size(), 2u);
  EXPECT_EQ(two.values[0].text, "a");
  EXPECT_EQ(two.values[1].text, "b");
  SearchClause one = One("Organization", "name", R"(a\,b)");
  ASSERT_EQ(one.values.size(), 1u);
  EXPECT_EQ(one.values[0].text, "a,b");
  SearchClause escapes = One("Organization", "name", R"(a\\b\$c)");
  ASSERT_EQ(escapes.values.size(), 1u);
  EXPECT_EQ(escapes.values[0].text, R"(a\b$c)");
  SearchClause tok = One("Observation", "code", R"(x\,y,z)");
  ASSERT_EQ(tok.values.size(), 2u);
  EXPECT_EQ(tok.values[0].code, "x,y");
  EXPECT_EQ(tok.values[1].code, "z");
}

TEST_F(ParseSearchTest, TokenSystemAndCode) {
  SearchClause c = One("Observation", "code", "http://loinc.org|8867-4,|nosys,plain,http://s|");
  EXPECT_EQ(c.kind, SearchClause::Kind::kToken);
  EXPECT_FALSE(c.blind);
  ASSERT_EQ(c.values.size(), 4u);
  EXPECT_TRUE(c.values[0].has_system);
  EXPECT_EQ(c.values[0].system, "http://loinc.org");
  EXPECT_EQ(c.values[0].code, "8867-4");
  EXPECT_TRUE(c.values[1].has_system);  // "|code": no system
  EXPECT_EQ(c.values[1].system, "");
  EXPECT_EQ(c.values[1].code, "nosys");
  EXPECT_FALSE(c.values[2].has_system);
  EXPECT_EQ(c.values[2].code, "plain");
  EXPECT_TRUE(c.values[3].has_system);  // "system|": any code of the system
  EXPECT_EQ(c.values[3].system, "http://s");
  EXPECT_EQ(c.values[3].code, "");
}

TEST_F(ParseSearchTest, EscapedBarIsNotASeparator) {
  SearchClause c = One("Observation", "code", R"(a\|b)");
  ASSERT_EQ(c.values.size(), 1u);
  EXPECT_FALSE(c.values[0].has_system);
  EXPECT_EQ(c.values[0].code, "a|b");
  SearchClause d = One("Observation", "code", R"(urn:s\|1|c\|2)");
  ASSERT_EQ(d.values.size(), 1u);
  EXPECT_TRUE(d.values[0].has_system);
  EXPECT_EQ(d.values[0].system, "urn:s|1");
  EXPECT_EQ(d.values[0].code, "c|2");
}

TEST_F(ParseSearchTest, IdentifierIsBlind) {
  SearchClause c = One("Patient", "identifier", "urn:mrn|123");
  EXPECT_TRUE(c.blind);
  EXPECT_EQ(c.values[0].system, "urn:mrn");
  EXPECT_EQ(c.values[0].code, "123");
  EXPECT_FALSE(One("Patient", "gender", "female").blind);
}

TEST_F(ParseSearchTest, TokenModifiers) {
  EXPECT_EQ(One("Observation", "code:not", "x").modifier, "not");
  SearchClause text = One("Observation", "code:text", R"(Heart\, rate)");
  EXPECT_EQ(text.modifier, "text");
  EXPECT_EQ(text.values[0].text, "Heart, rate");
  SearchClause of_type = One("Patient", "identifier:of-type", "urn:v2-0203|MR|12345");
  EXPECT_EQ(of_type.modifier, "of-type");
  EXPECT_TRUE(of_type.values[0].has_system);
  EXPECT_EQ(of_type.values[0].system, "urn:v2-0203");
  EXPECT_EQ(of_type.values[0].code, "MR|12345");

  for (const char* m : {"below", "above", "in", "not-in", "bogus"}) {
    EXPECT_TRUE(
        FailsWith(Strict("Observation", std::string("code:") + m, "x"), ErrorCode::kNotImplemented))
        << m;
  }
  // Blind values cannot be searched by text; :of-type needs three parts on an identifier.
  EXPECT_TRUE(FailsWith(Strict("Patient", "identifier:text", "123"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(
      FailsWith(Strict("Patient", "identifier:of-type", "urn:x|MR"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(FailsWith(Strict("Patient", "identifier:of-type", "urn:x|MR|"),
                        ErrorCode::kInvalidParameter));
  EXPECT_TRUE(
      FailsWith(Strict("Patient", "gender:of-type", "a|b|c"), ErrorCode::kInvalidParameter));
}

TEST_F(ParseSearchTest, NotImplementedModifierIsAnErrorEvenWhenLenient) {
  // Ignoring a known parameter would silently widen the result.
  EXPECT_TRUE(FailsWith(Parse("Observation", {{"code:below", "x"}, {"status", "final"}}, false),
                        ErrorCode::kNotImplemented));
  EXPECT_TRUE(
      FailsWith(Parse("MolecularSequence", {{"chromosome-variant-coordinate", "1$2$3"}}, false),
                ErrorCode::kNotImplemented));
}

TEST_F(ParseSearchTest, StringModifiers) {
  SearchClause plain = One("Organization", "name", "Acme");
  EXPECT_EQ(plain.kind, SearchClause::Kind::kString);
  EXPECT_FALSE(plain.blind);
  EXPECT_EQ(plain.modifier, "");
  EXPECT_EQ(One("Organization", "name:contains", "cm").modifier, "contains");
  EXPECT_EQ(One("Organization", "name:exact", "Acme").modifier, "exact");
  EXPECT_TRUE(FailsWith(Strict("Organization", "name:text", "x"), ErrorCode::kNotImplemented));

  // Patient names are blind-indexed: exact and prefix only.
  SearchClause family = One("Patient", "family", "Smi");
  EXPECT_TRUE(family.blind);
  EXPECT_TRUE(One("Patient", "name:exact", "Smith").blind);
  for (const char* p : {"name:contains", "family:contains", "given:contains", "address:contains"}) {
    auto r = Strict("Patient", p, "mit");
    EXPECT_TRUE(FailsWith(r, ErrorCode::kInvalidParameter)) << p;
    if (!r.ok()) {
      EXPECT_THAT(r.status().message(), HasSubstr("blind")) << p;
    }
  }
  // Refused even when lenient: the parameter is known, the refusal is deliberate.
  EXPECT_TRUE(
      FailsWith(Parse("Patient", {{"name:contains", "mit"}}, false), ErrorCode::kInvalidParameter));
}

TEST_F(ParseSearchTest, MissingModifier) {
  SearchClause t = One("Patient", "gender:missing", "true");
  EXPECT_EQ(t.modifier, "missing");
  EXPECT_TRUE(t.missing);
  EXPECT_EQ(t.kind, SearchClause::Kind::kToken);
  SearchClause f = One("Patient", "name:missing", "false");
  EXPECT_FALSE(f.missing);
  EXPECT_EQ(f.kind, SearchClause::Kind::kString);
  EXPECT_TRUE(f.blind);
  SearchClause b = One("Patient", "birthdate:missing", "true");
  EXPECT_EQ(b.kind, SearchClause::Kind::kDate);
  EXPECT_TRUE(b.blind);
  EXPECT_EQ(One("Observation", "subject:missing", "true").kind, SearchClause::Kind::kReference);
  EXPECT_EQ(One("Observation", "value-quantity:missing", "false").kind,
            SearchClause::Kind::kQuantity);
  for (const char* bad : {"TRUE", "1", "", "yes"}) {
    EXPECT_TRUE(FailsWith(Strict("Patient", "gender:missing", bad), ErrorCode::kInvalidParameter))
        << bad;
  }
}

// R4 §3.1.1.4.1: a number's implicit range is ± half a unit of its last
// significant digit; eq/ne use it, the other prefixes the exact value.
TEST_F(ParseSearchTest, NumberPrecisionRange) {
  struct Case {
    const char* text;
    double value, lo, hi;
  };
  const Case cases[] = {
      {"100", 100, 99.5, 100.5},
      {"100.00", 100, 99.995, 100.005},
      {"1.50", 1.5, 1.495, 1.505},
      {"0.5", 0.5, 0.45, 0.55},
      {"-2.5", -2.5, -2.55, -2.45},
      {"+7", 7, 6.5, 7.5},
      // One significant digit at 10^2: 100 ± 50. (The R4 table's example
      // says [95 ... 105) for 1e2, which contradicts the rule it illustrates;
      // this follows the rule.)
      {"1e2", 100, 50, 150},
      {"1.0e2", 100, 95, 105},
      {"1.5E-1", 0.15, 0.145, 0.155},
  };
  for (const Case& k : cases) {
    SearchClause c = One("RiskAssessment", "probability", k.text);
    EXPECT_EQ(c.kind, SearchClause::Kind::kNumber);
    ASSERT_EQ(c.values.size(), 1u) << k.text;
    EXPECT_EQ(c.values[0].prefix, SearchPrefix::kEq);
    EXPECT_DOUBLE_EQ(c.values[0].value, k.value) << k.text;
    EXPECT_NEAR(c.values[0].vlo, k.lo, 1e-12) << k.text;
    EXPECT_NEAR(c.values[0].vhi, k.hi, 1e-12) << k.text;
  }
  SearchClause lt = One("RiskAssessment", "probability", "lt0.8");
  EXPECT_EQ(lt.values[0].prefix, SearchPrefix::kLt);
  EXPECT_DOUBLE_EQ(lt.values[0].value, 0.8);
  for (const char* bad :
       {"abc", "1e", "1e1000", "1e999", ".", "-", "0x10", "1,5e", "inf", "nan", "1.2.3", "xx5"}) {
    EXPECT_TRUE(
        FailsWith(Strict("RiskAssessment", "probability", bad), ErrorCode::kInvalidParameter))
        << bad;
  }
}

TEST_F(ParseSearchTest, QuantityNumberSystemCode) {
  SearchClause c = One("Observation", "value-quantity",
                       "gt5.4|http://unitsofmeasure.org|mg,5.4||mg,72,ap10|urn:u\\|x|c");
  EXPECT_EQ(c.kind, SearchClause::Kind::kQuantity);
  ASSERT_EQ(c.values.size(), 4u);
  EXPECT_EQ(c.values[0].prefix, SearchPrefix::kGt);
  EXPECT_DOUBLE_EQ(c.values[0].value, 5.4);
  EXPECT_TRUE(c.values[0].has_system);
  EXPECT_EQ(c.values[0].system, "http://unitsofmeasure.org");
  EXPECT_EQ(c.values[0].code, "mg");
  EXPECT_FALSE(c.values[1].has_system);
  EXPECT_EQ(c.values[1].code, "mg");
  EXPECT_FALSE(c.values[2].has_system);
  EXPECT_EQ(c.values[2].code, "");
  EXPECT_EQ(c.values[3].prefix, SearchPrefix::kAp);
  EXPECT_EQ(c.values[3].system, "urn:u|x");
  EXPECT_TRUE(FailsWith(Strict("Observation", "value-quantity", "5.4|http://unitsofmeasure.org"),
                        ErrorCode::kInvalidParameter));
  EXPECT_TRUE(
      FailsWith(Strict("Observation", "value-quantity", "mg|x|y"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(
      FailsWith(Strict("Observation", "value-quantity:exact", "5"), ErrorCode::kNotImplemented));
}

TEST_F(ParseSearchTest, ReferenceForms) {
  SearchClause rel = One("Observation", "subject", "Patient/p1");
  EXPECT_EQ(rel.kind, SearchClause::Kind::kReference);
  EXPECT_FALSE(rel.blind);
  EXPECT_EQ(rel.values[0].target_type, "Patient");
  EXPECT_EQ(rel.values[0].target_id, "p1");
  // A bare id: any type when the parameter has several, the one type otherwise.
  SearchClause bare = One("Observation", "subject", "p1");
  EXPECT_EQ(bare.values[0].target_type, "");
  EXPECT_EQ(bare.values[0].target_id, "p1");
  EXPECT_EQ(One("Observation", "patient", "p1").values[0].target_type, "Patient");
  EXPECT_EQ(One("Observation", "subject:Patient", "p1").values[0].target_type, "Patient");
  // Our own absolute URL is made relative; another server's is a url.
  SearchClause mine = One("Observation", "subject", std::string(kBase) + "/Patient/p2");
  EXPECT_EQ(mine.values[0].target_type, "Patient");
  EXPECT_EQ(mine.values[0].target_id, "p2");
  SearchClause other = One("Observation", "subject", "https://other.org/fhir/Patient/p2");
  EXPECT_EQ(other.values[0].target_id, "");
  EXPECT_EQ(other.values[0].text, "https://other.org/fhir/Patient/p2");
  // A versioned reference searches the resource.
  EXPECT_EQ(One("Observation", "subject", "Patient/p1/_history/2").values[0].target_id, "p1");

  EXPECT_TRUE(FailsWith(Strict("Observation", "subject:Patient", "Group/g1"),
                        ErrorCode::kInvalidParameter));
  EXPECT_TRUE(
      FailsWith(Strict("Observation", "subject:Medication", "m1"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(FailsWith(Strict("Observation", "subject:bogus", "p1"), ErrorCode::kNotImplemented));
  EXPECT_TRUE(
      FailsWith(Strict("Observation", "subject", "not an id!"), ErrorCode::kInvalidParameter));
}

TEST_F(ParseSearchTest, ReferenceIdentifierIsABlindToken) {
  SearchClause c = One("Observation", "subject:identifier", "urn:mrn|42");
  EXPECT_EQ(c.kind, SearchClause::Kind::kToken);
  EXPECT_EQ(c.modifier, "identifier");
  EXPECT_TRUE(c.blind);
  EXPECT_EQ(c.values[0].system, "urn:mrn");
  EXPECT_EQ(c.values[0].code, "42");
}

TEST_F(ParseSearchTest, UriModifiers) {
  SearchClause plain = One("ValueSet", "url", "http://example.org/fhir/ValueSet/x");
  EXPECT_EQ(plain.kind, SearchClause::Kind::kUri);
  EXPECT_EQ(plain.values[0].text, "http://example.org/fhir/ValueSet/x");
  EXPECT_EQ(One("ValueSet", "url:below", "http://example.org/fhir").modifier, "below");
  EXPECT_EQ(One("ValueSet", "url:above", "http://example.org/fhir/ValueSet/x/y").modifier, "above");
  EXPECT_TRUE(FailsWith(Strict("ValueSet", "url:contains", "x"), ErrorCode::kNotImplemented));
}

TEST_F(ParseSearchTest, IdAndLastUpdated) {
  SearchClause id = One("Patient", "_id", "a,b");
  EXPECT_EQ(id.kind, SearchClause::Kind::kId);
  ASSERT_EQ(id.values.size(), 2u);
  EXPECT_EQ(id.values[1].code, "b");
  EXPECT_TRUE(FailsWith(Strict("Patient", "_id:exact", "a"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(FailsWith(Strict("Patient", "_id:not", "a"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(FailsWith(Strict("Patient", "_id", ""), ErrorCode::kInvalidParameter));

  SearchClause lu = One("Patient", "_lastUpdated", "gt2019-05-03T10:00:00+02:00");
  EXPECT_EQ(lu.kind, SearchClause::Kind::kLastUpdated);
  EXPECT_EQ(lu.values[0].prefix, SearchPrefix::kGt);
  EXPECT_EQ(lu.values[0].lo, 1556870400000);
  EXPECT_TRUE(FailsWith(Strict("Patient", "_lastUpdated", "soon"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(
      FailsWith(Strict("Patient", "_lastUpdated:missing", "true"), ErrorCode::kInvalidParameter));
}

TEST_F(ParseSearchTest, EmptyValuesAreRefused) {
  EXPECT_TRUE(FailsWith(Strict("Observation", "code", ""), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(FailsWith(Strict("Observation", "code", "a,"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(FailsWith(Strict("Organization", "name", ""), ErrorCode::kInvalidParameter));
}

TEST_F(ParseSearchTest, CompositeTokenPairsAreParsed) {
  // token$quantity: the code, then a prefixed quantity with its unit.
  auto q = Strict("Observation", "code-value-quantity",
                  "http://loinc.org|8480-6$gt140|http://unitsofmeasure.org|mm[Hg],x$5");
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_EQ(q->query.clauses.size(), 1u);
  const store::SearchClause& c = q->query.clauses[0];
  EXPECT_EQ(c.kind, store::SearchClause::Kind::kComposite);
  EXPECT_EQ(c.component_kind, "quantity");
  ASSERT_EQ(c.values.size(), 2u);
  EXPECT_EQ(c.values[0].system, "http://loinc.org");
  EXPECT_EQ(c.values[0].code, "8480-6");
  ASSERT_EQ(c.values[0].second.size(), 1u);
  EXPECT_EQ(c.values[0].second[0].prefix, store::SearchPrefix::kGt);
  EXPECT_EQ(c.values[0].second[0].value, 140);
  EXPECT_EQ(c.values[0].second[0].code, "mm[Hg]");
  EXPECT_FALSE(c.values[1].has_system);
  // token$token, token$date, token$string.
  EXPECT_EQ(Strict("Observation", "code-value-concept", "a$http://snomed.info/sct|123")
                ->query.clauses[0]
                .component_kind,
            "token");
  EXPECT_EQ(Strict("Observation", "code-value-date", "a$ge2020")->query.clauses[0].component_kind,
            "date");
  EXPECT_EQ(Strict("Observation", "code-value-string", "a$high")->query.clauses[0].component_kind,
            "string");
  // Malformed: no '$', empty first code, bad number or date.
  EXPECT_TRUE(
      FailsWith(Strict("Observation", "code-value-quantity", "x"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(
      FailsWith(Strict("Observation", "code-value-quantity", "$5"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(FailsWith(Strict("Observation", "code-value-quantity", "x$abc"),
                        ErrorCode::kInvalidParameter));
  EXPECT_TRUE(FailsWith(Strict("Observation", "code-value-date", "x$notadate"),
                        ErrorCode::kInvalidParameter));
  // Composites other than token pairs are not supported.
  EXPECT_TRUE(FailsWith(Strict("MolecularSequence", "chromosome-variant-coordinate", "1$2$3"),
                        ErrorCode::kNotImplemented));
}

// ---------------------------------------------------------------------------------------------
// Chains and _has

TEST_F(ParseSearchTest, ChainWithTypeModifier) {
  SearchClause c = One("Observation", "subject:Patient.name", "Smith");
  EXPECT_EQ(c.kind, SearchClause::Kind::kChain);
  EXPECT_EQ(c.param, "subject");
  EXPECT_EQ(c.target_type, "Patient");
  EXPECT_EQ(c.narrow_patients, std::nullopt);
  ASSERT_EQ(c.sub.size(), 1u);
  EXPECT_EQ(c.sub[0].kind, SearchClause::Kind::kString);
  EXPECT_EQ(c.sub[0].param, "name");
  EXPECT_TRUE(c.sub[0].blind);
  EXPECT_EQ(c.sub[0].values[0].text, "Smith");
}

TEST_F(ParseSearchTest, ChainWithoutTypeNeedsASingleTarget) {
  SearchClause c = One("Observation", "patient.gender", "female");
  EXPECT_EQ(c.target_type, "Patient");
  EXPECT_EQ(c.sub[0].kind, SearchClause::Kind::kToken);
  auto several = Strict("Observation", "subject.name", "Smith");
  EXPECT_TRUE(FailsWith(several, ErrorCode::kInvalidParameter));
  EXPECT_TRUE(FailsWith(Strict("Observation", "code.name", "x"), ErrorCode::kInvalidParameter));
  EXPECT_TRUE(
      FailsWith(Strict("Observation", "subject:Nope.name", "x"), ErrorCode::kInvalidParameter));
}

TEST_F(ParseSearchTest, ChainDeeperThanTheLimitIsTooCostly) {
  auto deep = Parse("Observation", {{"subject:Patient.organization.name", "Acme"}});
  EXPECT_TRUE(FailsWith(deep, ErrorCode::kTooCostly));
  limits_.max_chain_depth = 2;
  auto ok = Parse("Observation", {{"subject:Patient.organization.name", "Acme"}});
  ASSERT_TRUE(ok.ok()) << ok.status();
  const SearchClause& c = ok->query.clauses[0];
  ASSERT_EQ(c.sub.size(), 1u);
  EXPECT_EQ(c.sub[0].kind, SearchClause::Kind::kChain);
  EXPECT_EQ(c.sub[0].target_type, "Organization");
  EXPECT_EQ(c.sub[0].sub[0].param, "name");
  EXPECT_FALSE(c.sub[0].sub[0].blind);
}

TEST_F(ParseSearchTest, ChainedUnknownParameterIsIgnoredWhenLenient) {
  auto r = Parse("Observation", {{"subject:Patient.nope", "x"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->query.clauses, IsEmpty());
  EXPECT_EQ(r->ignored.size(), 1u);
  EXPECT_TRUE(FailsWith(Parse("Observation", {{"subject:Patient.nope", "x"}}, true),
                        ErrorCode::kInvalidParameter));
}

TEST_F(ParseSearchTest, Has) {
  SearchClause c = One("Patient", "_has:Observation:patient:code", "http://loinc.org|1234-5");
  EXPECT_EQ(c.kind, SearchClause::Kind::kHas);
  EXPECT_EQ(c.target_type, "Observation");
  EXPECT_EQ(c.param, "patient");
  ASSERT_EQ(c.sub.size(), 1u);
  EXPECT_EQ(c.sub[0].kind, SearchClause::Kind::kToken);
  EXPECT_EQ(c.sub[0].param, "code");
  EXPECT_EQ(c.sub[0].values[0].code, "1234-5");

  for (const char* bad : {"_has:Observation", "_has:Observation:patient", "_has:Nope:patient:code",
                          "_has:Observation:code:status", "_has:Observation:encounter:code"}) {
    EXPECT_TRUE(FailsWith(Strict("Patient", bad, "x"), ErrorCode::kInvalidParameter)) << bad;
  }
  EXPECT_TRUE(
      FailsWith(Strict("Patient", "_has:Observation:patient:_has:Observation:patient:code", "x"),
                ErrorCode::kTooCostly));
}

TEST_F(ParseSearchTest, NarrowingOfChainAndHasTargets) {
  narrow_ = PatientP1();
  SearchClause chain = One("Observation", "subject:Patient.gender", "female");
  EXPECT_EQ(chain.narrow_patients, std::vector<std::string>{"p1"});
  EXPECT_EQ(chain.sub.size(), 1u);  // Patient: no hidden labels
  SearchClause has = One("Patient", "_has:Observation:patient:code", "x");
  EXPECT_EQ(has.narrow_patients, std::vector<std::string>{"p1"});
  // Hidden labels of the target type become _security:not clauses beside the sub-clause.
  ASSERT_EQ(has.sub.size(), 2u);
  EXPECT_EQ(has.sub[1].param, "_security");
  EXPECT_EQ(has.sub[1].modifier, "not");
  EXPECT_EQ(has.sub[1].values[0].code, "PSY");
  // A type the principal may not search refuses the whole request, lenient or not.
  auto refused = Parse("Observation", {{"performer:Practitioner.name", "x"}}, false);
  EXPECT_TRUE(FailsWith(refused, ErrorCode::kForbidden));
  EXPECT_TRUE(FailsWith(Parse("Patient", {{"general-practitioner:Practitioner.gender", "x"}}),
                        ErrorCode::kForbidden));
  // A plain search does not consult the narrowing.
  EXPECT_TRUE(Parse("Practitioner", {{"gender", "female"}}).ok());
}

// ---------------------------------------------------------------------------------------------
// Result parameters

TEST_F(ParseSearchTest, Defaults) {
  auto r = Parse("Patient", {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->query.type, "Patient");
  EXPECT_EQ(r->query.count, 20);
  EXPECT_EQ(r->query.time_budget_ms, 2000);
  EXPECT_FALSE(r->query.total);
  EXPECT_EQ(r->total, "none");
  EXPECT_EQ(r->summary, "");
  EXPECT_EQ(r->canonical, "");
  EXPECT_THAT(r->query.clauses, IsEmpty());
}

TEST_F(ParseSearchTest, Count) {
  EXPECT_EQ(Parse("Patient", {{"_count", "7"}})->query.count, 7);
  auto clamped = Parse("Patient", {{"_count", "100000"}});
  EXPECT_EQ(clamped->query.count, 500);
  EXPECT_EQ(clamped->canonical, "_count=500");
  auto zero = Parse("Patient", {{"_count", "0"}});
  ASSERT_TRUE(zero.ok());
  EXPECT_EQ(zero->query.count, 0);
  EXPECT_EQ(zero->summary, "count");
  EXPECT_EQ(zero->total, "accurate");
  EXPECT_TRUE(zero->query.total);
  for (const char* bad : {"-1", "", "ten", "5x", "1.5"}) {
    EXPECT_TRUE(FailsWith(Parse("Patient", {{"_count", bad}}), ErrorCode::kInvalidParameter))
        << bad;
  }
}

TEST_F(ParseSearchTest, TotalSummaryElements) {
  auto acc = Parse("Patient", {{"_total", "accurate"}});
  EXPECT_EQ(acc->total, "accurate");
  EXPECT_TRUE(acc->query.total);
  EXPECT_TRUE(Parse("Patient", {{"_total", "estimate"}})->query.total);
  EXPECT_FALSE(Parse("Patient", {{"_total", "none"}})->query.total);
  EXPECT_TRUE(FailsWith(Parse("Patient", {{"_total", "all"}}), ErrorCode::kInvalidParameter));

  for (const char* s : {"true", "false", "text", "data"}) {
    EXPECT_EQ(Parse("Patient", {{"_summary", s}})->summary, s);
  }
  auto count = Parse("Patient", {{"_summary", "count"}});
  EXPECT_EQ(count->summary, "count");
  EXPECT_TRUE(count->query.total);
  EXPECT_TRUE(FailsWith(Parse("Patient", {{"_summary", "yes"}}), ErrorCode::kInvalidParameter));

  auto el = Parse("Patient", {{"_elements", "id,name,,birthDate"}});
  EXPECT_THAT(el->elements, ElementsAre("id", "name", "birthDate"));
}

TEST_F(ParseSearchTest, Sort) {
  auto r = Parse("Observation", {{"_sort", "-date,_id,code,value-quantity,-_lastUpdated"}});
  EXPECT_TRUE(FailsWith(r, ErrorCode::kTooCostly));  // five keys
  r = Parse("Observation", {{"_sort", "-date,_id,code,subject"}});
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& s = r->query.sort;
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[0].kind, SortKey::Kind::kDate);
  EXPECT_EQ(s[0].param, "date");
  EXPECT_TRUE(s[0].descending);
  EXPECT_EQ(s[1].kind, SortKey::Kind::kId);
  EXPECT_FALSE(s[1].descending);
  EXPECT_EQ(s[2].kind, SortKey::Kind::kToken);
  EXPECT_EQ(s[3].kind, SortKey::Kind::kReference);
  auto more = Parse("Observation", {{"_sort", "-_lastUpdated,value-quantity"}});
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_EQ(more->query.sort[0].kind, SortKey::Kind::kLastUpdated);
  EXPECT_TRUE(more->query.sort[0].descending);
  EXPECT_EQ(more->query.sort[1].kind, SortKey::Kind::kNumber);
  EXPECT_EQ(Parse("Organization", {{"_sort", "name"}})->query.sort[0].kind, SortKey::Kind::kString);

  // Blind parameters cannot order results.
  for (const char* blind : {"family", "-name", "birthdate", "identifier", "address-city"}) {
    auto b = Parse("Patient", {{"_sort", blind}});
    EXPECT_TRUE(FailsWith(b, ErrorCode::kInvalidParameter)) << blind;
    if (!b.ok()) {
      EXPECT_THAT(b.status().message(), HasSubstr("blind")) << blind;
    }
  }
  EXPECT_TRUE(Parse("Patient", {{"_sort", "gender"}}).ok());
  EXPECT_TRUE(FailsWith(Parse("Patient", {{"_sort", "nope"}}), ErrorCode::kInvalidParameter));
}

TEST_F(ParseSearchTest, IncludeAndRevinclude) {
  auto r = Parse("Observation", {{"_include", "Observation:subject:Patient"},
                                 {"_include", "*"},
                                 {"_revinclude", "Provenance:target"},
                                 {"_include:iterate", "Patient:organization"}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->includes.size(), 4u);
  EXPECT_EQ(r->includes[0].source_type, "Observation");
  EXPECT_EQ(r->includes[0].param, "subject");
  EXPECT_EQ(r->includes[0].target_type, "Patient");
  EXPECT_FALSE(r->includes[0].reverse);
  EXPECT_FALSE(r->includes[0].iterate);
  EXPECT_EQ(r->includes[1].param, "*");
  EXPECT_EQ(r->includes[1].source_type, "Observation");
  EXPECT_TRUE(r->includes[2].reverse);
  EXPECT_EQ(r->includes[2].source_type, "Provenance");
  EXPECT_TRUE(r->includes[3].iterate);
  EXPECT_TRUE(Parse("Observation", {{"_revinclude:iterate", "Observation:has-member"}}).ok());
  EXPECT_TRUE(Parse("Observation", {{"_include:recurse", "Patient:organization"}}).ok());

  for (const auto& [name, value] : Params{{"_include", "Patient:organization"},  // not :iterate
                                          {"_include", "Observation"},
                                          {"_include", "Observation:subject:Patient:x"},
                                          {"_include", "Nope:subject"},
                                          {"_include", "Observation:code"},
                                          {"_include", "Observation:nope"},
                                          {"_include", "Observation:subject:Nope"},
                                          {"_revinclude", "*"}}) {
    EXPECT_TRUE(FailsWith(Parse("Observation", {{name, value}}), ErrorCode::kInvalidParameter))
        << name << "=" << value;
  }
}

// ---------------------------------------------------------------------------------------------
// Limits

TEST_F(ParseSearchTest, TooManyParametersValuesOrIncludes) {
  limits_.max_params = 2;
  EXPECT_TRUE(Parse("Patient", {{"gender", "female"}, {"active", "true"}}).ok());
  EXPECT_TRUE(FailsWith(
      Parse("Patient", {{"gender", "female"}, {"active", "true"}, {"gender:not", "male"}}),
      ErrorCode::kTooCostly));
  // Result parameters do not count.
  EXPECT_TRUE(Parse("Patient", {{"gender", "female"},
                                {"active", "true"},
                                {"_count", "5"},
                                {"_sort", "gender"},
                                {"_total", "accurate"}})
                  .ok());

  limits_.max_values = 3;
  EXPECT_TRUE(Parse("Observation", {{"code", "a,b,c"}}).ok());
  EXPECT_TRUE(FailsWith(Parse("Observation", {{"code", "a,b,c,d"}}), ErrorCode::kTooCostly));
  EXPECT_TRUE(
      FailsWith(Parse("Observation", {{"date", "2019,2020,2021,2022"}}), ErrorCode::kTooCostly));
  EXPECT_TRUE(FailsWith(Parse("Patient", {{"_id", "a,b,c,d"}}), ErrorCode::kTooCostly));

  limits_.max_includes = 2;
  EXPECT_TRUE(Parse("Observation",
                    {{"_include", "Observation:subject"}, {"_revinclude", "Provenance:target"}})
                  .ok());
  EXPECT_TRUE(FailsWith(Parse("Observation", {{"_include", "Observation:subject"},
                                              {"_include", "Observation:performer"},
                                              {"_revinclude", "Provenance:target"}}),
                        ErrorCode::kTooCostly));
}

TEST_F(ParseSearchTest, DefaultLimitsAreTheDocumentedOnes) {
  Params many;
  for (int i = 0; i < 33; ++i) many.emplace_back("gender", "female");
  EXPECT_TRUE(FailsWith(Parse("Patient", many), ErrorCode::kTooCostly));
  many.pop_back();
  EXPECT_TRUE(Parse("Patient", many).ok());
  std::string values = "a";
  for (int i = 1; i < 51; ++i) values += ",a";
  EXPECT_TRUE(FailsWith(Parse("Observation", {{"code", values}}), ErrorCode::kTooCostly));
}

// ---------------------------------------------------------------------------------------------
// Lenient and strict handling, canonical form

TEST_F(ParseSearchTest, UnknownParametersLenientVsStrict) {
  const Params p = {{"gender", "female"}, {"shoe-size", "42"}, {"_format", "json"}};
  auto lenient = Parse("Patient", p, false);
  ASSERT_TRUE(lenient.ok()) << lenient.status();
  EXPECT_EQ(lenient->query.clauses.size(), 1u);
  ASSERT_EQ(lenient->ignored.size(), 1u);
  EXPECT_THAT(lenient->ignored[0], HasSubstr("shoe-size"));
  EXPECT_EQ(lenient->canonical, "gender=female");

  auto strict = Parse("Patient", p, true);
  EXPECT_TRUE(FailsWith(strict, ErrorCode::kInvalidParameter));
  if (!strict.ok()) {
    EXPECT_THAT(strict.status().message(), HasSubstr("shoe-size"));
  }
  // Other errors are errors either way.
  EXPECT_TRUE(
      FailsWith(Parse("Observation", {{"date", "never"}}, false), ErrorCode::kInvalidParameter));
}

TEST_F(ParseSearchTest, CanonicalString) {
  auto r = Parse("Observation", {{"code", "http://loinc.org|8867-4"},
                                 {"_format", "json"},
                                 {"_pretty", "true"},
                                 {"_cursor", "abc"},
                                 {"subject:Patient.name", "O'Brien Jr"},
                                 {"bogus", "1"},
                                 {"_count", "1000"},
                                 {"status", "final&x=y"},
                                 {"category", R"(a\,b)"},
                                 {"value-quantity", "5.0|urn:u|é"},
                                 {"_sort", "-date"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->canonical,
            "code=http://loinc.org|8867-4&subject:Patient.name=O%27Brien%20Jr&_count=500&"
            "status=final%26x%3Dy&category=a%5C,b&value-quantity=5.0|urn:u|%C3%A9&_sort=-date");
  // Decoding the canonical form and parsing it again gives the same canonical form.
  auto again = Parse("Observation", ParseQueryString(r->canonical).value());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->canonical, r->canonical);
}

// ---------------------------------------------------------------------------------------------
// Conditions

TEST_F(ParseSearchTest, ParseCondition) {
  auto q =
      ParseCondition("Patient", "identifier=urn:mrn%7C42&active=true", limits_, kBase, narrow_);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->type, "Patient");
  ASSERT_EQ(q->clauses.size(), 2u);
  EXPECT_EQ(q->clauses[0].values[0].system, "urn:mrn");
  EXPECT_EQ(q->clauses[0].values[0].code, "42");
  EXPECT_TRUE(ParseCondition("Patient", "_id=p1", limits_, kBase, narrow_).ok());
  EXPECT_TRUE(
      ParseCondition("Patient", "_has:Observation:patient:code=x", limits_, kBase, narrow_).ok());

  for (const char* bad : {"_count=1&identifier=x", "identifier=x&_sort=gender", "_summary=count",
                          "_include=Patient:organization", "_total=accurate", "_elements=id", "",
                          "&&", "identifier=%zz", "shoe-size=42"}) {
    EXPECT_TRUE(FailsWith(ParseCondition("Patient", bad, limits_, kBase, narrow_),
                          ErrorCode::kInvalidParameter))
        << bad;
  }
}

TEST(ExcludeHidden, GlobalAndPatientScopedExclusions) {
  Narrowing n;
  n.hidden_labels = {"R", "V"};
  n.hidden_labels_of = {{"p1", {"PSY"}}, {"p2", {"ETH", "PSY"}}, {"p3", {"PSY"}}};
  std::vector<SearchClause> clauses;
  ExcludeHidden(n, &clauses);
  ASSERT_EQ(clauses.size(), 4u);
  for (const auto& c : clauses) {
    EXPECT_EQ(c.param, "_security");
    EXPECT_EQ(c.modifier, "not");
  }
  EXPECT_EQ(clauses[0].values[0].code, "R");
  EXPECT_FALSE(clauses[0].narrow_patients);
  EXPECT_EQ(clauses[1].values[0].code, "V");
  // One clause per distinct label set, scoped to its patients.
  ASSERT_EQ(clauses[2].values.size(), 2u);
  EXPECT_EQ(clauses[2].values[0].code, "ETH");
  EXPECT_EQ(clauses[2].values[1].code, "PSY");
  EXPECT_THAT(*clauses[2].narrow_patients, ElementsAre("p2"));
  ASSERT_EQ(clauses[3].values.size(), 1u);
  EXPECT_THAT(*clauses[3].narrow_patients, ElementsAre("p1", "p3"));
}

}  // namespace
}  // namespace fhirward::server
