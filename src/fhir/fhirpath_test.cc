#include "fhir/fhirpath.h"

#include <atomic>
#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fhir/model.h"
#include "fhir/resources.h"
#include "gtest/gtest.h"
#include "json/value.h"

namespace fhirward::fhir::fhirpath {
namespace {

// A Patient in the spirit of the FHIRPath suite's patient-example.
constexpr std::string_view kPatient = R"({
  "resourceType": "Patient",
  "id": "example",
  "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter</div>"},
  "identifier": [{"use": "usual", "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345",
                  "period": {"start": "2001-05-06"}}],
  "active": true,
  "name": [
    {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
    {"use": "usual", "given": ["Jim"]},
    {"use": "maiden", "family": "Windsor", "given": ["Peter", "James"], "period": {"end": "2002"}}
  ],
  "telecom": [
    {"use": "home"},
    {"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
    {"system": "phone", "value": "(03) 3410 5613", "use": "mobile", "rank": 2}
  ],
  "gender": "male",
  "birthDate": "1974-12-25",
  "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
  "deceasedBoolean": false,
  "contained": [{"resourceType": "Organization", "id": "org1", "name": "Acme"}],
  "managingOrganization": {"reference": "#org1"}
})";

constexpr std::string_view kObservation = R"({
  "resourceType": "Observation",
  "id": "example",
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs"}]}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
  "subject": {"reference": "Patient/example"},
  "effectiveDateTime": "2016-03-28",
  "issued": "2016-03-28T13:10:00.123+02:00",
  "valueQuantity": {"value": 185, "unit": "lbs", "system": "http://unitsofmeasure.org",
                    "code": "[lb_av]"},
  "extension": [{"url": "http://example.com/fhir/StructureDefinition/patient-age",
                 "valueAge": {"value": 41, "unit": "years", "system": "http://unitsofmeasure.org",
                              "code": "a"}}]
})";

class FhirPathTest : public ::testing::Test {
 protected:
  static const json::Value& Doc(std::string_view text) {
    static auto* cache = new std::vector<std::pair<std::string_view, json::Value>>();
    for (const auto& [t, v] : *cache) {
      if (t.data() == text.data()) return v;
    }
    auto v = json::Parse(text);
    EXPECT_TRUE(v.ok()) << v.status();
    cache->emplace_back(text, std::move(*v));
    return cache->back().second;
  }

  // The result rendered by ToDebugString, or "error: <message>".
  static std::string Run(std::string_view expr, std::string_view resource = kPatient,
                         Environment env = {}) {
    auto e = Expression::Parse(expr);
    if (!e.ok()) return "parse error: " + std::string(e.status().message());
    const json::Value& doc = Doc(resource);
    if (env.resource == nullptr) env.resource = &doc;
    if (env.root_resource == nullptr) env.root_resource = &doc;
    auto r = Evaluate(*e, Item::Resource(doc), env);
    if (!r.ok()) return "error: " + std::string(r.status().message());
    return ToDebugString(*r);
  }

  // For expressions without input.
  static std::string Calc(std::string_view expr) {
    auto e = Expression::Parse(expr);
    if (!e.ok()) return "parse error: " + std::string(e.status().message());
    auto r = Evaluate(*e, Collection(), Environment());
    if (!r.ok()) return "error: " + std::string(r.status().message());
    return ToDebugString(*r);
  }

  static bool IsError(const std::string& s) {
    return s.starts_with("error:") || s.starts_with("parse error:");
  }
};

// ---- parsing

TEST_F(FhirPathTest, LiteralsOfEveryKind) {
  EXPECT_EQ(Calc("true | false"), "[true, false]");
  EXPECT_EQ(Calc("'a\\'b\\\\c\\u0041\\n'"), "['a\\'b\\\\cA\n']");
  EXPECT_EQ(Calc("42"), "[42]");
  EXPECT_EQ(Calc("1.50"), "[1.50]");
  EXPECT_EQ(Calc("@2015-02-04"), "[@2015-02-04]");
  EXPECT_EQ(Calc("@2015T"), "[@2015T]");
  EXPECT_EQ(Calc("@2015-02-04T14:34:28.123+09:00"), "[@2015-02-04T14:34:28.123+09:00]");
  EXPECT_EQ(Calc("@T14:34"), "[@T14:34]");
  EXPECT_EQ(Calc("4 'mg'"), "[4 'mg']");
  EXPECT_EQ(Calc("4 days"), "[4 days]");
  EXPECT_EQ(Calc("{}"), "[]");
  EXPECT_EQ(Calc("'\\uD83D\\uDD25'"), "['\xF0\x9F\x94\xA5']");
}

TEST_F(FhirPathTest, OperatorPrecedence) {
  EXPECT_EQ(Calc("1 + 2 * 3 + 4"), "[11]");
  EXPECT_EQ(Calc("(1 | 1 is Integer).count()"), "[2]");
  EXPECT_EQ(Calc("true and '0215' in ('0215' | '0216')"), "[true]");
  EXPECT_EQ(Calc("-(3).abs()"), "[-3]");
  EXPECT_EQ(Calc("2 - 3 - 4"), "[-5]");
  EXPECT_EQ(Calc("false implies false or true"), "[true]");
  EXPECT_EQ(Calc("true xor false and false"), "[true]");
  EXPECT_TRUE(IsError(Calc("1 > 2 is Boolean")));        // 1 > (2 is Boolean)
  EXPECT_TRUE(IsError(Calc("-1.convertsToInteger()")));  // -(true)
  EXPECT_EQ(Calc("(-1).convertsToInteger()"), "[true]");
}

TEST_F(FhirPathTest, Comments) {
  EXPECT_EQ(Calc("2 + 2 // + 4"), "[4]");
  EXPECT_EQ(Calc("2 + /* inline $@%^+ * */ 2"), "[4]");
  EXPECT_EQ(Calc("2 // comment\n / 2"), "[1]");
  EXPECT_TRUE(IsError(Calc("2 + 2 /* not finished")));
}

TEST_F(FhirPathTest, DelimitedIdentifiersAndKeywordsAsNames) {
  EXPECT_EQ(Run("`Patient`.name.`given`.first()"), "[string \"Peter\"]");
  EXPECT_EQ(Run("name.given.contains('et')"),
            "error: fhirpath: contains() requires a single "
            "string, got 5 items (at 1:12)");
  EXPECT_EQ(Run("name.first().given.first().contains('et')"), "[true]");
}

TEST_F(FhirPathTest, ParseErrorsNameThePosition) {
  auto e = Expression::Parse("name.where(given = 'x'");
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(e.status().message()).find("at 1:23"), std::string::npos) << e.status();
  auto bad = Expression::Parse("name.\n  frobnicate()");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("unknown function 'frobnicate' at 2:3"),
            std::string::npos)
      << bad.status();
  EXPECT_FALSE(Expression::Parse("name.where()").ok());      // arity
  EXPECT_FALSE(Expression::Parse("name.as(string1)").ok());  // unknown type
  EXPECT_FALSE(Expression::Parse("1 +").ok());
  EXPECT_FALSE(Expression::Parse("@T14:34:28Z").ok());  // a Time has no zone
  EXPECT_FALSE(Expression::Parse("@2015-13-01").ok());  // month 13
  EXPECT_FALSE(Expression::Parse("'unterminated").ok());
  EXPECT_FALSE(Expression::Parse("'bad \\q escape'").ok());
  EXPECT_FALSE(Expression::Parse("$thus").ok());
  EXPECT_FALSE(Expression::Parse("name.matches('[unclosed')").ok());  // literal regex compiled
  EXPECT_FALSE(Expression::Parse("99999999999999999999").ok());
}

TEST_F(FhirPathTest, NestingAndLengthAreBounded) {
  std::string deep(500, '(');
  deep += "1";
  deep += std::string(500, ')');
  auto e = Expression::Parse(deep);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(std::string(e.status().message()).find("nested too deeply"), std::string::npos);
  std::string chain = "1";
  for (int i = 0; i < 300; ++i) chain += " + 1";
  EXPECT_FALSE(Expression::Parse(chain).ok());  // a left-deep tree is deep too
  ParseOptions wide;
  wide.max_depth = 400;
  EXPECT_TRUE(Expression::Parse(chain, wide).ok());
  std::string minus(1000, '-');
  EXPECT_FALSE(Expression::Parse(minus + "1").ok());
  EXPECT_FALSE(Expression::Parse(std::string(70 * 1024, ' ') + "1").ok());
}

TEST_F(FhirPathTest, EveryR4InvariantCompiles) {
  size_t count = 0;
  for (const TypeDef* type : Model::R4().types()) {
    std::vector<const ElementDef*> stack(type->children.begin(), type->children.end());
    if (type->root) stack.push_back(type->root);
    while (!stack.empty()) {
      const ElementDef* el = stack.back();
      stack.pop_back();
      for (const Constraint& c : el->constraints) {
        auto e = Expression::Parse(c.expression);
        EXPECT_TRUE(e.ok()) << c.key << ": " << c.expression << ": " << e.status();
        ++count;
      }
      for (const ElementDef* child : el->children) {
        if (child->path.starts_with(el->path + ".")) stack.push_back(child);
      }
    }
  }
  EXPECT_GT(count, 1000u);
}

// ---- navigation and FHIR typing

TEST_F(FhirPathTest, NavigationFlattensArrays) {
  EXPECT_EQ(Run("name.given"),
            "[string \"Peter\", string \"James\", string \"Jim\", string \"Peter\", "
            "string \"James\"]");
  EXPECT_EQ(Run("Patient.name.family.count()"), "[2]");
  EXPECT_EQ(Run("name.suffix"), "[]");
  EXPECT_EQ(Run("telecom.use"), "[code \"home\", code \"work\", code \"mobile\"]");
  EXPECT_EQ(Run("name[1].given"), "[string \"Jim\"]");
  EXPECT_EQ(Run("name[5].given"), "[]");
}

TEST_F(FhirPathTest, TypeNameAsFirstStep) {
  EXPECT_EQ(Run("Patient.gender"), "[code \"male\"]");
  EXPECT_EQ(Run("DomainResource.gender"), "[code \"male\"]");
  EXPECT_EQ(Run("Encounter.gender"), "[]");
  Environment strict;
  strict.strict = true;
  EXPECT_TRUE(IsError(Run("Encounter.gender", kPatient, strict)));
}

TEST_F(FhirPathTest, PrimitiveExtensionsComeFromTheUnderscoreSibling) {
  EXPECT_EQ(Run("birthDate.extension.url"),
            "[uri \"http://hl7.org/fhir/StructureDefinition/patient-birthTime\"]");
  EXPECT_EQ(Run("birthDate.extension('http://hl7.org/fhir/StructureDefinition/patient-birthTime')"
                ".value"),
            "[dateTime \"1974-12-25T14:35:45-05:00\"]");
  EXPECT_EQ(Run("Patient.birthDate.extension(%`ext-patient-birthTime`).exists()"), "[true]");
  EXPECT_EQ(Run("birthDate.children().count()"), "[1]");
  EXPECT_EQ(Run("birthDate = @1974-12-25"), "[true]");
}

TEST_F(FhirPathTest, PrimitiveWithOnlyExtensionStillExists) {
  constexpr std::string_view kNames = R"({"resourceType": "Patient",
    "name": [{"given": ["Peter", null, "Jim"],
              "_given": [null, {"extension": [{"url": "http://x", "valueString": "X"}]}, null]}]})";
  EXPECT_EQ(Run("name.given.count()", kNames), "[3]");
  EXPECT_EQ(Run("name.given.select($this.hasValue())", kNames), "[true, false, true]");
  EXPECT_EQ(Run("name.given[1].extension.value", kNames), "[string \"X\"]");
  EXPECT_EQ(Run("name.given[1].getValue()", kNames), "[]");
  EXPECT_EQ(Run("name.given.getValue()", kNames), "[]");  // several items
  EXPECT_EQ(Run("name.given[0].getValue()", kNames), "['Peter']");
  constexpr std::string_view kOnlyExtension = R"({"resourceType": "Patient",
    "_gender": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                               "valueCode": "unknown"}]}})";
  EXPECT_EQ(Run("gender.exists()", kOnlyExtension), "[true]");
  EXPECT_EQ(Run("gender.hasValue()", kOnlyExtension), "[false]");
  EXPECT_EQ(Run("gender.extension.value", kOnlyExtension), "[code \"unknown\"]");
}

TEST_F(FhirPathTest, ChoiceElements) {
  EXPECT_EQ(Run("Observation.value.unit", kObservation), "[string \"lbs\"]");
  EXPECT_EQ(Run("Observation.value is Quantity", kObservation), "[true]");
  EXPECT_EQ(Run("Observation.value.is(Period).not()", kObservation), "[true]");
  EXPECT_EQ(Run("(Observation.value as Quantity).code", kObservation), "[code \"[lb_av]\"]");
  EXPECT_EQ(Run("Observation.value.as(Period).start", kObservation), "[]");
  EXPECT_EQ(Run("Observation.effective", kObservation), "[dateTime \"2016-03-28\"]");
  EXPECT_EQ(Run("Patient.deceased", kPatient), "[boolean false]");
  // The JSON name works too, unless strict.
  EXPECT_EQ(Run("Observation.valueQuantity.unit", kObservation), "[string \"lbs\"]");
  Environment strict;
  strict.strict = true;
  EXPECT_TRUE(IsError(Run("Observation.valueQuantity.unit", kObservation, strict)));
  EXPECT_TRUE(IsError(Run("(Observation.value as Period).unit", kObservation, strict)));
  EXPECT_TRUE(IsError(Run("Patient.name.given1", kPatient, strict)));
  EXPECT_EQ(Run("Patient.name.given1", kPatient), "[]");
}

TEST_F(FhirPathTest, ExtensionValuesAreTypedBySuffix) {
  auto ext = "Observation.extension('http://example.com/fhir/StructureDefinition/patient-age')";
  EXPECT_EQ(Run(std::string(ext) + ".value is Age", kObservation), "[true]");
  EXPECT_EQ(Run(std::string(ext) + ".value is Quantity", kObservation), "[true]");
  EXPECT_EQ(Run(std::string(ext) + ".value is Duration", kObservation), "[false]");
  EXPECT_EQ(Run(std::string(ext) + ".value > 40 'a'", kObservation), "[true]");
}

TEST_F(FhirPathTest, ContainedResourcesAreTypedByResourceType) {
  EXPECT_EQ(Run("contained.name"), "[string \"Acme\"]");
  EXPECT_EQ(Run("contained.id"), "[id \"org1\"]");
  EXPECT_EQ(Run("contained.is(Organization)"), "[true]");
  EXPECT_EQ(Run("contained.ofType(Organization).name"), "[string \"Acme\"]");
  EXPECT_EQ(Run("contained.ofType(Patient)"), "[]");
  EXPECT_EQ(Run("contained.Organization.name"), "[string \"Acme\"]");
  EXPECT_EQ(Run("id.is(id)"), "[true]");
}

TEST_F(FhirPathTest, ChildrenAndDescendants) {
  EXPECT_EQ(Run("name[0].children().count()"), "[4]");
  EXPECT_EQ(Run("telecom[1].descendants().count()"), "[4]");
  EXPECT_EQ(Run("descendants().where($this is Period).count()"), "[2]");
  // resourceType is not an element
  EXPECT_EQ(Run("contained.children().count()"), "[2]");
}

TEST_F(FhirPathTest, UntypedJsonIsNavigable) {
  auto doc = json::Parse(R"({"a": {"b": [1, 2.5, "x", true]}, "valueString": "v"})");
  ASSERT_TRUE(doc.ok());
  auto e = Expression::Parse("a.b");
  ASSERT_TRUE(e.ok());
  auto r = Evaluate(*e, Item::MakeNode(&*doc, ""), Environment());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(ToDebugString(*r), "[? 1, ? 2.5, ? \"x\", ? true]");
  auto sum = Expression::Parse("a.b[0] + a.b[1]");
  ASSERT_TRUE(sum.ok());
  EXPECT_EQ(ToDebugString(*Evaluate(*sum, Item::MakeNode(&*doc, ""), Environment())), "[3.5]");
  auto choice = Expression::Parse("value");
  ASSERT_TRUE(choice.ok());
  EXPECT_EQ(ToDebugString(*Evaluate(*choice, Item::MakeNode(&*doc, ""), Environment())),
            "[string \"v\"]");
}

TEST_F(FhirPathTest, FocusAtAnElement) {
  // What the validator does: per-1 on a Period, with the Period as focus.
  auto doc = json::Parse(R"({"start": "2020-01-02", "end": "2020-01-01"})");
  ASSERT_TRUE(doc.ok());
  auto per1 = Expression::Parse("start.hasValue().not() or end.hasValue().not() or (start <= end)");
  ASSERT_TRUE(per1.ok());
  const ElementDef* def = Model::R4().FindElement("Encounter.period");
  ASSERT_NE(def, nullptr);
  Item focus = Item::MakeNode(&*doc, "Period", def);
  EXPECT_EQ(focus.type_name(), "Period");
  auto r = EvaluateBoolean(*per1, focus, Environment());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, std::optional<bool>(false));
}

// ---- types

TEST_F(FhirPathTest, IsAsOfTypeWithNamespaces) {
  EXPECT_EQ(Run("Patient is DomainResource"), "[true]");
  EXPECT_EQ(Run("Patient.is(FHIR.Patient)"), "[true]");
  EXPECT_EQ(Run("Patient.is(System.Patient)"), "[false]");
  EXPECT_EQ(Run("gender.is(code)"), "[true]");
  EXPECT_EQ(Run("gender.is(string)"), "[true]");  // code specialises string
  EXPECT_EQ(Run("gender.is(id)"), "[false]");
  EXPECT_EQ(Run("gender.as(string)"), "[]");  // as()/ofType() want the exact primitive type
  EXPECT_EQ(Run("gender.ofType(code)"), "[code \"male\"]");
  EXPECT_EQ(Run("active.is(boolean)"), "[true]");
  EXPECT_EQ(Run("active.is(Boolean)"), "[false]");  // System.Boolean
  EXPECT_EQ(Run("active.is(System.Boolean)"), "[false]");
  EXPECT_EQ(Run("active.getValue().is(Boolean)"), "[true]");
  EXPECT_EQ(Calc("1.is(Integer) and 1.0.is(Decimal) and 'a'.is(String) and @2015.is(Date)"),
            "[true]");
  EXPECT_EQ(Calc("@2015T.is(DateTime) and @T10.is(Time) and (1 'mg').is(Quantity)"), "[true]");
  EXPECT_EQ(Calc("1.is(Decimal)"), "[false]");
  EXPECT_TRUE(IsError(Run("name.as(HumanName).use", kPatient, [] {
    Environment e;
    e.strict = true;
    return e;
  }())));
  EXPECT_EQ(Run("name.ofType(HumanName).use.first()"), "[code \"official\"]");
  EXPECT_TRUE(IsError(Run("name is HumanName")));  // several items
}

TEST_F(FhirPathTest, TypeFunction) {
  EXPECT_EQ(Calc("1.type().namespace + '.' + 1.type().name"), "['System.Integer']");
  EXPECT_EQ(Run("active.type().namespace"), "['FHIR']");
  EXPECT_EQ(Run("active.type().name"), "['boolean']");
  EXPECT_EQ(Run("type().name"), "['Patient']");
}

// ---- equality, equivalence, comparison

TEST_F(FhirPathTest, EqualityOfNumbersKeepsDecimalsExact) {
  EXPECT_EQ(Calc("1.0 = 1.00"), "[true]");
  EXPECT_EQ(Calc("0.1 + 0.2 = 0.3"), "[true]");
  EXPECT_EQ(Calc("1 = 1.0"), "[true]");
  EXPECT_EQ(Calc("1.1 = 1.2"), "[false]");
  EXPECT_EQ(Calc("1.10 ~ 1.1"), "[true]");
  EXPECT_EQ(Calc("1.2 / 1.8 ~ 0.67"), "[true]");
  EXPECT_EQ(Calc("1234567890987654321.0 + 1 = 1234567890987654322"), "[true]");
  EXPECT_EQ(Calc("1.50.toString()"), "['1.50']");
}

TEST_F(FhirPathTest, EqualityOfCollections) {
  EXPECT_EQ(Calc("{} = {}"), "[]");
  EXPECT_EQ(Calc("true = {}"), "[]");
  EXPECT_EQ(Calc("(1 | 2) = (1 | 2)"), "[true]");
  EXPECT_EQ(Calc("(1 | 2) = (2 | 1)"), "[false]");
  EXPECT_EQ(Calc("(1 | 2) ~ (2 | 1)"), "[true]");
  EXPECT_EQ(Calc("(1 | 2) = (1 | 2 | 3)"), "[false]");
  EXPECT_EQ(Calc("{} ~ {}"), "[true]");
  EXPECT_EQ(Calc("1 ~ {}"), "[false]");
  EXPECT_EQ(Run("name = name"), "[true]");
  EXPECT_EQ(Run("name.take(2) = name.take(2).last() | name.take(2).first()"), "[false]");
  EXPECT_EQ(Run("name.first() = name.last()"), "[false]");
  EXPECT_EQ(Run("name.given.first() = 'Peter'"), "[true]");
}

TEST_F(FhirPathTest, StringEquivalenceIgnoresCaseAndWhitespace) {
  EXPECT_EQ(Calc("'a' = 'A'"), "[false]");
  EXPECT_EQ(Calc("'a' ~ 'A'"), "[true]");
  EXPECT_EQ(Calc("'  Hello   World ' ~ 'hello world'"), "[true]");
  EXPECT_EQ(Calc("'a' != 'b'"), "[true]");
  EXPECT_EQ(Calc("'a' !~ 'A'"), "[false]");
}

TEST_F(FhirPathTest, DatesWithDifferentPrecisionAreIndeterminate) {
  EXPECT_EQ(Calc("@2012-04-15 = @2012-04-15T10:00:00"), "[]");
  EXPECT_EQ(Calc("@2012-04-15 ~ @2012-04-15T10:00:00"), "[false]");
  EXPECT_EQ(Calc("@2018-03 < @2018-03-01"), "[]");
  EXPECT_EQ(Calc("@2018-02 < @2018-03-01"), "[true]");
  EXPECT_EQ(Calc("@2012-04-15T15:30:31 = @2012-04-15T15:30:31.0"), "[true]");
  EXPECT_EQ(Calc("@T10:30 < @T10:30:00"), "[]");
  EXPECT_EQ(Calc("@2012-04-15T15:00:00Z = @2012-04-15T10:00:00"), "[]");
  EXPECT_EQ(Calc("@2012-04-15T15:00:00+02:00 = @2012-04-15T16:00:00+03:00"), "[true]");
  EXPECT_EQ(Calc("@2017-11-05T01:30:00.0-04:00 < @2017-11-05T01:15:00.0-05:00"), "[true]");
  EXPECT_EQ(Run("birthDate != @T12:14"), "[true]");  // a Date is never a Time
  EXPECT_EQ(Run("birthDate < today()"), "[true]");
  EXPECT_EQ(Calc("now() > today()"), "[]");
}

TEST_F(FhirPathTest, ComparisonNeedsComparableTypes) {
  EXPECT_EQ(Calc("'a' < 'b'"), "[true]");
  EXPECT_EQ(Calc("1 < 1.5"), "[true]");
  EXPECT_TRUE(IsError(Calc("1 < 'a'")));
  EXPECT_TRUE(IsError(Calc("true < false")));
  EXPECT_TRUE(IsError(Calc("(1 | 2) < 3")));
  EXPECT_EQ(Calc("{} < 3"), "[]");
  EXPECT_TRUE(IsError(Run("Observation.value.value < 'test'", kObservation)));
  EXPECT_EQ(Run("Observation.value.value > 180.0", kObservation), "[true]");
}

TEST_F(FhirPathTest, QuantitiesCompareAcrossUnits) {
  EXPECT_EQ(Calc("4.0000 'g' = 4000.0 'mg'"), "[true]");
  EXPECT_EQ(Calc("4 'g' ~ 4040 'mg'"), "[true]");
  EXPECT_EQ(Calc("4 'g' != 4040 'mg'"), "[true]");
  EXPECT_EQ(Calc("1 'm' = 100 'cm'"), "[true]");
  EXPECT_EQ(Calc("1 'kg' > 999 'g'"), "[true]");
  EXPECT_EQ(Calc("7 days = 1 week"), "[true]");
  EXPECT_EQ(Calc("7 days = 1 'wk'"), "[true]");
  EXPECT_EQ(Calc("1 'h' = 60 'min'"), "[true]");
  EXPECT_EQ(Calc("1000 'ms' = 1 second"), "[true]");
  EXPECT_EQ(Calc("1 year = 12 months"), "[true]");
  EXPECT_EQ(Calc("1 'a' = 1 year"), "[]");  // calendar years are not definite
  EXPECT_EQ(Calc("1 'mo' = 1 month"), "[]");
  EXPECT_EQ(Calc("1 'mg' = 1 'mL'"), "[]");  // not comparable
  EXPECT_EQ(Calc("2.0 'cm' * 2.0 'm' = 0.040 'm2'"), "[true]");
  EXPECT_EQ(Calc("4.0 'g' / 2.0 'm' = 2 'g/m'"), "[true]");
  EXPECT_EQ(Calc("1.0 'm' / 1.0 'm' = 1 '1'"), "[true]");
  EXPECT_EQ(Calc("5 'mg/dL' = 50 'mg/L'"), "[true]");
  EXPECT_EQ(Calc("1 '[in_i]' = 2.54 'cm'"), "[true]");
  EXPECT_EQ(Calc("1 '10*3/uL' = 1 '10*9/L'"), "[true]");
  EXPECT_EQ(Calc("120 'mm[Hg]' > 15 'kPa'"), "[true]");
  EXPECT_EQ(Calc("(1 'kg' + 500 'g').toString()"), "['1.5 \\'kg\\'']");
  EXPECT_EQ(Run("Observation.value = 185 '[lb_av]'", kObservation), "[true]");
  EXPECT_EQ(Run("Observation.value != 185 'kg'", kObservation), "[true]");
  EXPECT_EQ(Calc("1 'cm'.comparable(1 '[in_i]')"), "[true]");
  EXPECT_EQ(Calc("1 'cm'.comparable(1 's')"), "[false]");
}

// ---- arithmetic

TEST_F(FhirPathTest, Arithmetic) {
  EXPECT_EQ(Calc("5 div 2"), "[2]");
  EXPECT_EQ(Calc("5 mod 2"), "[1]");
  EXPECT_EQ(Calc("2.2 mod 1.8"), "[0.4]");
  EXPECT_EQ(Calc("2.2 div 1.8"), "[1]");
  EXPECT_EQ(Calc("1 / 2"), "[0.5]");
  EXPECT_EQ(Calc("1 / 0"), "[]");
  EXPECT_EQ(Calc("5 div 0"), "[]");
  EXPECT_EQ(Calc("5 mod 0"), "[]");
  EXPECT_EQ(Calc("1.2 * 1.8"), "[2.16]");
  EXPECT_EQ(Calc("9223372036854775807 + 1"), "[]");  // overflow gives empty
  EXPECT_EQ(Calc("'a' + 'b'"), "['ab']");
  EXPECT_EQ(Calc("'a' & {} & 'c'"), "['ac']");
  EXPECT_TRUE(IsError(Calc("'a' - 'b'")));
  EXPECT_TRUE(IsError(Calc("(1 | 2 | 3) & 'b'")));
  EXPECT_TRUE(IsError(Calc("@1974-12-25 + 7")));
  EXPECT_EQ(Calc("{} + 1"), "[]");
}

TEST_F(FhirPathTest, DateArithmetic) {
  EXPECT_EQ(Calc("@1973-12-25 + 7 days"), "[@1974-01-01]");
  EXPECT_EQ(Calc("@1973-12-25 + 7.7 days"), "[@1974-01-01]");
  EXPECT_EQ(Calc("@1974-01-31 + 1 month"), "[@1974-02-28]");
  EXPECT_EQ(Calc("@1974-12-25 - 1 'month'"), "[@1974-11-25]");
  EXPECT_EQ(Calc("@2016-02-29 + 1 year"), "[@2017-02-28]");
  EXPECT_EQ(Calc("@1973-12-25T00:00:00.000+10:00 + 1 'h'"), "[@1973-12-25T01:00:00.000+10:00]");
  EXPECT_EQ(Calc("@1973-12-25T23:59:59.999+10:00 + 1 'ms'"), "[@1973-12-26T00:00:00.000+10:00]");
  EXPECT_EQ(Calc("@T23:00 + 2 hours"), "[@T01:00]");
  EXPECT_EQ(Calc("@2014 + 400 days"), "[@2015]");
  EXPECT_TRUE(IsError(Calc("@1973-12-25 + 1 'mo'")));
  EXPECT_TRUE(IsError(Calc("@1973-12-25 + 1 'a'")));
  EXPECT_TRUE(IsError(Calc("@1974-12-25 - 1 'cm'")));
}

// ---- three-valued logic

TEST_F(FhirPathTest, BooleanLogicTruthTables) {
  struct Row {
    const char* expr;
    const char* want;
  };
  for (const Row& r : std::vector<Row>{
           {"true and true", "[true]"},
           {"true and false", "[false]"},
           {"true and {}", "[]"},
           {"false and {}", "[false]"},
           {"{} and false", "[false]"},
           {"{} and {}", "[]"},
           {"true or {}", "[true]"},
           {"false or {}", "[]"},
           {"{} or true", "[true]"},
           {"false or false", "[false]"},
           {"true xor true", "[false]"},
           {"true xor {}", "[]"},
           {"false implies {}", "[true]"},
           {"{} implies true", "[true]"},
           {"{} implies false", "[]"},
           {"true implies {}", "[]"},
           {"true implies false", "[false]"},
           {"(true and 'foo')", "[true]"},
           {"{}.not()", "[]"},
           {"(0).not()", "[false]"},
       }) {
    EXPECT_EQ(Calc(r.expr), r.want) << r.expr;
  }
  EXPECT_TRUE(IsError(Calc("(true | false) and true")));
  EXPECT_TRUE(IsError(Calc("(1 | 2).not()")));
  // The right side is not evaluated when the left decides.
  EXPECT_EQ(Calc("false and (1 | 2).single()"), "[false]");
  EXPECT_EQ(Calc("true or (1 | 2).single()"), "[true]");
}

// ---- functions

TEST_F(FhirPathTest, ExistenceFunctions) {
  EXPECT_EQ(Run("name.exists()"), "[true]");
  EXPECT_EQ(Run("name.exists(use = 'nickname')"), "[false]");
  EXPECT_EQ(Run("name.all(given.exists())"), "[true]");
  EXPECT_EQ(Run("name.all(period.exists())"), "[false]");
  EXPECT_EQ(Calc("{}.all(false)"), "[true]");
  EXPECT_EQ(Calc("(true | false).allTrue()"), "[false]");
  EXPECT_EQ(Calc("(true | false).anyTrue()"), "[true]");
  EXPECT_EQ(Calc("(false).allFalse()"), "[true]");
  EXPECT_EQ(Calc("{}.anyFalse()"), "[false]");
  EXPECT_TRUE(IsError(Calc("(true | 'foo').allTrue()")));
  EXPECT_EQ(Run("name.first().subsetOf($this.name)"), "[true]");
  EXPECT_EQ(Run("name.supersetOf($this.name.first())"), "[true]");
  EXPECT_EQ(Calc("(1 | 2 | 2).count()"), "[2]");
  EXPECT_EQ(Calc("(1 | 2).combine(2).distinct().count()"), "[2]");
  EXPECT_EQ(Calc("(1).combine(1).isDistinct()"), "[false]");
  EXPECT_EQ(Run("name.given.isDistinct()"), "[false]");
  EXPECT_EQ(Run("name.given.distinct()"), "[string \"Peter\", string \"James\", string \"Jim\"]");
}

TEST_F(FhirPathTest, FilteringAndProjection) {
  EXPECT_EQ(Run("name.where(given = 'Jim').use"), "[code \"usual\"]");
  EXPECT_EQ(Run("name.given.where(substring($this.length() - 3) = 'ter')"),
            "[string \"Peter\", string \"Peter\"]");
  EXPECT_EQ(Run("name.select(given | family).count()"), "[7]");
  EXPECT_EQ(Run("telecom.select(iif(value = '(03) 3410 5613', $index, {}))"), "[2]");
  EXPECT_EQ(Run("name.repeat('test')"), "['test']");
  EXPECT_EQ(Calc("(1 | 2 | 3).where($this > 1)"), "[2, 3]");
  EXPECT_EQ(Calc("(1 | 2 | 3).select($this * 10)"), "[10, 20, 30]");
}

TEST_F(FhirPathTest, RepeatFollowsNestedItems) {
  constexpr std::string_view kQuestionnaire =
      R"({"resourceType": "Questionnaire", "status": "draft",
    "item": [{"linkId": "1", "type": "group",
              "item": [{"linkId": "1.1", "type": "string"},
                       {"linkId": "1.2", "type": "group",
                        "item": [{"linkId": "1.2.1", "type": "string"}]}]},
             {"linkId": "2", "type": "string"}]})";
  EXPECT_EQ(Run("Questionnaire.repeat(item).linkId", kQuestionnaire),
            "[string \"1\", string \"2\", string \"1.1\", string \"1.2\", string \"1.2.1\"]");
  EXPECT_EQ(Run("Questionnaire.descendants().linkId.count()", kQuestionnaire), "[5]");
  EXPECT_EQ(Run("Questionnaire.item.item.item.type", kQuestionnaire), "[code \"string\"]");
}

TEST_F(FhirPathTest, SubsettingAndCombining) {
  EXPECT_EQ(Calc("(0 | 1 | 2).tail()"), "[1, 2]");
  EXPECT_EQ(Calc("(0 | 1 | 2).skip(1)"), "[1, 2]");
  EXPECT_EQ(Calc("(0 | 1 | 2).skip(-1)"), "[0, 1, 2]");
  EXPECT_EQ(Calc("(0 | 1 | 2).take(2)"), "[0, 1]");
  EXPECT_EQ(Calc("(0 | 1 | 2).first() | (0 | 1 | 2).last()"), "[0, 2]");
  EXPECT_EQ(Calc("(1 | 2 | 3).intersect(2 | 4)"), "[2]");
  EXPECT_EQ(Calc("1.combine(1).intersect(1)"), "[1]");
  EXPECT_EQ(Calc("1.combine(1).exclude(2)"), "[1, 1]");
  EXPECT_EQ(Calc("1.union(2).union(1.0)"), "[1, 2]");
  EXPECT_EQ(Calc("1.combine(1).union(2).count()"), "[2]");
  EXPECT_EQ(Calc("5.single()"), "[5]");
  EXPECT_TRUE(IsError(Calc("(1 | 2).single()")));
  EXPECT_EQ(Run("name.given.combine(name.family).exclude('Jim').count()"), "[6]");
}

TEST_F(FhirPathTest, Iif) {
  EXPECT_EQ(Run("iif(name.exists(), 'named', 'unnamed')"), "['named']");
  EXPECT_EQ(Calc("iif(true, true, 1/0)"), "[true]");
  EXPECT_EQ(Calc("iif({}, 1, 2)"), "[2]");
  EXPECT_EQ(Calc("iif(false, 1)"), "[]");
  EXPECT_EQ(Calc("('context').iif($this = 'context', 'yes', 'no')"), "['yes']");
  EXPECT_EQ(Calc("{}.iif(true, 'a', 'b')"), "['a']");
  EXPECT_TRUE(IsError(Calc("('a' | 'b').iif(true, 1, 2)")));
  EXPECT_TRUE(IsError(Calc("iif(1 | 2, 1, 2)")));
  EXPECT_TRUE(IsError(Calc("iif('text', 1, 2)")));
}

TEST_F(FhirPathTest, Conversions) {
  EXPECT_EQ(Calc("'1'.toInteger() + '2.5'.toDecimal()"), "[3.5]");
  EXPECT_EQ(Calc("'1.1'.toInteger()"), "[]");
  EXPECT_EQ(Calc("true.toInteger()"), "[1]");
  EXPECT_EQ(Calc("'yes'.toBoolean() and 'F'.toBoolean().not()"), "[true]");
  EXPECT_EQ(Calc("2.toBoolean()"), "[]");
  EXPECT_EQ(Calc("1.0.toBoolean()"), "[true]");
  EXPECT_EQ(Calc("@2014-12-14.toString()"), "['2014-12-14']");
  EXPECT_EQ(Calc("1 'wk'.toString() | 1 week.toString()"), "['1 \\'wk\\'', '1 week']");
  EXPECT_EQ(Calc("'2015-02-04T14:34:28Z'.toDateTime()"), "[@2015-02-04T14:34:28Z]");
  EXPECT_EQ(Calc("'2015-02-04'.toDate() = @2015-02-04"), "[true]");
  EXPECT_EQ(Calc("@2015-02-04T10:00.toDate()"), "[@2015-02-04]");
  EXPECT_EQ(Calc("'14:34'.toTime()"), "[@T14:34]");
  EXPECT_EQ(Calc("'1 day'.toQuantity() = 1 'd'"), "[true]");
  EXPECT_EQ(Calc("'1 \\'wk\\''.toQuantity() = 1 week"), "[true]");
  EXPECT_EQ(Calc("'1 wk'.convertsToQuantity()"), "[false]");
  EXPECT_EQ(Calc("'1'.toQuantity()"), "[1 '1']");
  EXPECT_EQ(Calc("1000 'g'.toQuantity('kg')"), "[1 'kg']");
  EXPECT_EQ(Calc("1 'g'.toQuantity('m')"), "[]");
  EXPECT_EQ(Calc("'a'.convertsToInteger() | 'a'.convertsToDate()"), "[false]");
  EXPECT_EQ(Calc("{}.toString()"), "[]");
  EXPECT_TRUE(IsError(Calc("(1 | 2).toString()")));
}

TEST_F(FhirPathTest, StringFunctions) {
  EXPECT_EQ(Calc("'LogicalModel-Person'.indexOf('-')"), "[12]");
  EXPECT_EQ(Calc("'abc'.indexOf('')"), "[0]");
  EXPECT_EQ(Calc("'12345'.substring(2, 1) | '12345'.substring(2)"), "['3', '345']");
  EXPECT_EQ(Calc("'12345'.substring(25)"), "[]");
  EXPECT_EQ(Calc("'12345'.startsWith('12') and '12345'.endsWith('45')"), "[true]");
  EXPECT_EQ(Calc("'abc'.upper() + 'ABC'.lower()"), "['ABCabc']");
  EXPECT_EQ(Calc("'abc'.replace('', 'x')"), "['xaxbxcx']");
  EXPECT_EQ(Calc("'123456'.replace('234', '')"), "['156']");
  EXPECT_EQ(Calc("'abc123'.replaceMatches('[0-9]', '-')"), "['abc---']");
  EXPECT_EQ(Calc("'2020-01-02'.replaceMatches('(\\\\d+)-(\\\\d+)-(\\\\d+)', '$3/$2/$1')"),
            "['02/01/2020']");
  EXPECT_EQ(Calc("'abc'.replaceMatches('', 'x')"), "['abc']");
  EXPECT_EQ(Calc("'t2'.toChars()"), "['t', '2']");
  EXPECT_EQ(Calc("'héllo'.length()"), "[5]");
  EXPECT_EQ(Calc("'héllo'.substring(1, 2)"), "['él']");
  EXPECT_EQ(Calc("'  x y  '.trim()"), "['x y']");
  EXPECT_EQ(Calc("'A,,C'.split(',').count()"), "[3]");
  EXPECT_EQ(Calc("('a' | 'b').join('+')"), "['a+b']");
  EXPECT_EQ(Calc("'subjects?_d'.encode('urlbase64')"), "['c3ViamVjdHM_X2Q=']");
  EXPECT_EQ(Calc("'74657374'.decode('hex')"), "['test']");
  EXPECT_EQ(Calc("'\"1<2\"'.escape('html')"), "['&quot;1&lt;2&quot;']");
  EXPECT_EQ(Calc("'&quot;1&lt;2&#x41;'.unescape('html')"), "['\"1<2A']");
  EXPECT_EQ(Calc("{}.substring(1)"), "[]");
  EXPECT_EQ(Calc("'abc'.contains({})"), "[]");
  EXPECT_TRUE(IsError(Calc("1.startsWith('1')")));
  EXPECT_TRUE(IsError(Run("identifier.startsWith('rand')")));
}

TEST_F(FhirPathTest, MatchesSearchesInSingleLineMode) {
  EXPECT_EQ(Calc("'FHIR'.matches('FHIR') and 'FHIR'.matches('fhir').not()"), "[true]");
  EXPECT_EQ(Calc("'http://x/Library/y'.matches('Library')"), "[true]");
  EXPECT_EQ(Calc("'http://x/Library/y'.matches('^Library$')"), "[false]");
  EXPECT_EQ(Calc("'http://x/Library/y'.matchesFull('Library')"), "[false]");
  EXPECT_EQ(Calc("'http://x/Library/y'.matchesFull('.*Library.*')"), "[true]");
  EXPECT_EQ(Calc("'A\nB'.matches('A.*B')"), "[true]");
  EXPECT_EQ(Calc("'a.b'.matches('a[.]b') and 'axb'.matches('a\\\\.b').not()"), "[true]");
  EXPECT_EQ(Calc("'FHIR'.matches({})"), "[]");
  // Trailing repetitions (simplified for matches(), kept for matchesFull()).
  EXPECT_EQ(Calc("'Abc'.matches('[A-Z]([A-Za-z0-9_]){0,254}')"), "[true]");
  EXPECT_EQ(Calc("'abc'.matches('[A-Z]([A-Za-z0-9_]){0,254}')"), "[false]");
  EXPECT_EQ(Calc("'aBc'.matches('[A-Z]([a-z]){2,5}')"), "[false]");
  EXPECT_EQ(Calc("'aBcd'.matches('[A-Z]([a-z]){2,5}')"), "[true]");
  EXPECT_EQ(Calc("'aBcd'.matches('^[A-Z]([a-z]){2,5}')"), "[false]");
  EXPECT_EQ(Calc("'Bcdefgh'.matchesFull('[A-Z]([a-z]){2,5}')"), "[false]");
  EXPECT_EQ(Calc("'xy'.matches('a|x(y)+') and 'ab'.matches('(a)(b)?$')"), "[true]");
  EXPECT_EQ(Calc("'a.b'.matches('[^\\\\s\\\\.]{1,64}(\\\\.[^\\\\s\\\\.]{1,64})*')"), "[true]");
  EXPECT_EQ(Calc("'...'.matches('[^\\\\s\\\\.]{1,64}(\\\\.[^\\\\s\\\\.]{1,64})*')"), "[false]");
  // A pattern computed at evaluation time is compiled then.
  EXPECT_EQ(Calc("'abc'.matches('a' + 'b')"), "[true]");
  EXPECT_TRUE(IsError(Calc("'abc'.matches('(' + 'x')")));
}

TEST_F(FhirPathTest, MathFunctions) {
  EXPECT_EQ(Calc("(-5).abs() | (-5.5).abs() | (-5.5 'mg').abs()"), "[5, 5.5, 5.5 'mg']");
  EXPECT_EQ(Calc("1.1.ceiling() | (-1.1).ceiling() | 2.1.floor() | (-2.1).floor()"), "[2, -1, -3]");
  EXPECT_EQ(Calc("(-1.56).truncate()"), "[-1]");
  EXPECT_EQ(Calc("3.14159.round(3)"), "[3.142]");
  EXPECT_EQ(Calc("(-2.5).round()"), "[-3]");
  EXPECT_EQ(Calc("81.sqrt() = 9.0"), "[true]");
  EXPECT_EQ(Calc("(-1).sqrt()"), "[]");
  EXPECT_EQ(Calc("0.exp() = 1"), "[true]");
  EXPECT_EQ(Calc("1.ln() = 0.0"), "[true]");
  EXPECT_EQ(Calc("16.log(2)"), "[4]");
  EXPECT_EQ(Calc("2.power(10) | 2.5.power(2)"), "[1024, 6.25]");
  EXPECT_EQ(Calc("(-1).power(0.5)"), "[]");
  EXPECT_EQ(Calc("2.power(100)"), "[]");  // overflow
  EXPECT_TRUE(IsError(Calc("'a'.abs()")));
}

TEST_F(FhirPathTest, AggregateSortAndTrace) {
  EXPECT_EQ(Calc("(1|2|3|4|5|6|7|8|9).aggregate($this + $total, 0)"), "[45]");
  EXPECT_EQ(Calc("(4|2|9).aggregate(iif($total.empty(), $this, iif($this < $total, $this, "
                 "$total)))"),
            "[2]");
  EXPECT_EQ(Calc("(3 | 1 | 2).sort()"), "[1, 2, 3]");
  EXPECT_EQ(Calc("(3 | 1 | 2).sort(-$this)"), "[3, 2, 1]");
  EXPECT_EQ(Calc("('b' | 'a' | 'c').sort(-$this)"), "['c', 'b', 'a']");
  EXPECT_EQ(Run("name.sort(-family, -given.first()).first().use"), "[code \"usual\"]");
  std::vector<std::string> traced;
  Environment env;
  env.trace = [&](std::string_view name, const Collection& items) {
    traced.push_back(std::string(name) + "=" + ToDebugString(items));
  };
  EXPECT_EQ(Run("name.trace('n', use).count()", kPatient, env), "[3]");
  ASSERT_EQ(traced.size(), 1u);
  EXPECT_EQ(traced[0], "n=[code \"official\", code \"usual\", code \"maiden\"]");
}

TEST_F(FhirPathTest, NowUsesTheInjectedClock) {
  struct FixedClock : Clock {
    std::chrono::system_clock::time_point Now() const override {
      return std::chrono::system_clock::time_point(std::chrono::milliseconds(1700000000123));
    }
  } clock;
  Environment env;
  env.clock = &clock;
  EXPECT_EQ(Run("now()", kPatient, env), "[@2023-11-14T22:13:20.123Z]");
  EXPECT_EQ(Run("today()", kPatient, env), "[@2023-11-14]");
  EXPECT_EQ(Run("timeOfDay()", kPatient, env), "[@T22:13:20.123]");
  EXPECT_EQ(Run("now() = now()", kPatient, env), "[true]");
}

TEST_F(FhirPathTest, BoundariesAndPrecision) {
  EXPECT_EQ(Calc("1.587.lowBoundary()"), "[1.58650000]");
  EXPECT_EQ(Calc("1.587.highBoundary(2)"), "[1.59]");
  EXPECT_EQ(Calc("(-1.587).lowBoundary(2)"), "[-1.59]");
  EXPECT_EQ(Calc("120.lowBoundary(2)"), "[119.50]");
  EXPECT_EQ(Calc("1.587.lowBoundary(40)"), "[]");
  EXPECT_EQ(Calc("@2014.highBoundary(6)"), "[@2014-12]");
  EXPECT_EQ(Calc("@2014-01-01T08.lowBoundary(17)"), "[@2014-01-01T08:00:00.000+14:00]");
  EXPECT_EQ(Calc("@T10:30.highBoundary(9)"), "[@T10:30:59.999]");
  EXPECT_EQ(Calc("@2016-02.highBoundary(8)"), "[@2016-02-29]");
  EXPECT_EQ(Calc("1.58700.precision() | @2014.precision() | @T10:30.precision()"), "[5, 4]");
}

// ---- FHIR functions

TEST_F(FhirPathTest, ResolveFindsContainedAndBundleEntries) {
  EXPECT_EQ(Run("managingOrganization.resolve().name"), "[string \"Acme\"]");
  EXPECT_EQ(Run("managingOrganization.reference.resolve().is(Organization)"), "[true]");
  EXPECT_EQ(Run("'#missing'.resolve()"), "[]");
  EXPECT_EQ(Run("'Patient/123'.resolve()"), "[]");
  constexpr std::string_view kBundle = R"({"resourceType": "Bundle", "type": "collection",
    "entry": [
      {"fullUrl": "http://example.org/fhir/Patient/p1",
       "resource": {"resourceType": "Patient", "id": "p1", "gender": "female"}},
      {"fullUrl": "urn:uuid:0d4bd3d8-7b50-4f1f-a6bf-3c4b6a1b7e3a",
       "resource": {"resourceType": "Observation", "id": "o1", "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "Patient/p1"},
                    "performer": [{"reference": "urn:uuid:0d4bd3d8-7b50-4f1f-a6bf-3c4b6a1b7e3a"},
                                  {"reference": "http://example.org/fhir/Patient/p1"}]}}]})";
  EXPECT_EQ(Run("entry[1].resource.subject.resolve().gender", kBundle), "[code \"female\"]");
  EXPECT_EQ(Run("entry[1].resource.performer.resolve().id", kBundle), "[id \"o1\", id \"p1\"]");
  EXPECT_EQ(Run("entry.resource.ofType(Patient).id", kBundle), "[id \"p1\"]");
}

TEST_F(FhirPathTest, MemberOfUsesTheModelsExpansions) {
  EXPECT_EQ(Run("gender.memberOf('http://hl7.org/fhir/ValueSet/administrative-gender')"), "[true]");
  EXPECT_EQ(Run("'nope'.memberOf(%`vs-administrative-gender`)"), "[false]");
  EXPECT_EQ(Run("gender.memberOf('http://example.org/unknown')"), "[]");
  constexpr std::string_view kCoded = R"({"resourceType": "Observation", "status": "final",
    "code": {"coding": [{"system": "http://hl7.org/fhir/observation-status", "code": "final"}]}})";
  EXPECT_EQ(Run("code.memberOf('http://hl7.org/fhir/ValueSet/observation-status')", kCoded),
            "[true]");
  EXPECT_EQ(Run("code.coding.memberOf('http://hl7.org/fhir/ValueSet/observation-status')", kCoded),
            "[true]");
}

TEST_F(FhirPathTest, HtmlChecksCallsTheHook) {
  EXPECT_EQ(Run("text.div.htmlChecks()"), "[true]");
  Environment env;
  std::string seen;
  env.html_checks = [&](std::string_view xhtml) {
    seen = std::string(xhtml);
    return false;
  };
  EXPECT_EQ(Run("text.div.htmlChecks()", kPatient, env), "[false]");
  EXPECT_NE(seen.find("Peter"), std::string::npos);
}

TEST_F(FhirPathTest, ConformsToKnowsOnlyCoreTypes) {
  EXPECT_EQ(Run("conformsTo('http://hl7.org/fhir/StructureDefinition/Patient')"), "[true]");
  EXPECT_EQ(Run("conformsTo('http://hl7.org/fhir/StructureDefinition/DomainResource')"), "[true]");
  EXPECT_EQ(Run("conformsTo('http://hl7.org/fhir/StructureDefinition/Person')"), "[false]");
  EXPECT_EQ(Run("conformsTo('http://example.org/StructureDefinition/my-patient')"), "[]");
  EXPECT_EQ(Run("subsumes('x') | elementDefinition() | slice('a', 'b')"), "[]");
}

TEST_F(FhirPathTest, Variables) {
  EXPECT_EQ(Run("%ucum | %sct | %loinc"),
            "['http://unitsofmeasure.org', 'http://snomed.info/sct', 'http://loinc.org']");
  EXPECT_EQ(Run("%`vs-administrative-gender`"),
            "['http://hl7.org/fhir/ValueSet/administrative-gender']");
  EXPECT_EQ(Run("%'ext-patient-birthTime'"),
            "['http://hl7.org/fhir/StructureDefinition/patient-birthTime']");
  EXPECT_EQ(Run("%resource.id | %rootResource.gender"), "[id \"example\", code \"male\"]");
  EXPECT_EQ(Run("name.where(%context.gender = 'male').count()"), "[3]");
  Environment env;
  env.variables["limit"] = Collection{Item::MakeInteger(2)};
  EXPECT_EQ(Run("name.count() > %limit", kPatient, env), "[true]");
  EXPECT_TRUE(IsError(Run("%undefined")));
  EXPECT_TRUE(IsError(Run("$index")));
}

TEST_F(FhirPathTest, RepeatedSubexpressionsGiveTheSameResults) {
  // Memoized per evaluation: identical context-free subexpressions inside lambdas.
  EXPECT_EQ(Run("name.where(%resource.name.count() = 3 and %resource.name.count() > 2).count()"),
            "[3]");
  EXPECT_EQ(Run("name.select(%resource.telecom.where(use = 'home').count() + $index)"),
            "[1, 2, 3]");
  EXPECT_EQ(Run("name.select(%resource.name.given.combine($this.given).count())"), "[7, 6, 7]");
  EXPECT_EQ(Calc("(1 | 2).select((3 | 4).where($this > 3) | $this)"), "[4, 1, 4, 2]");
  EXPECT_EQ(Calc("(1 | 2).aggregate($total + (10 | 20).select($this).count(), 0)"), "[4]");
  // Same left side, different right sides: different slots.
  EXPECT_EQ(Run("name.select(%resource.name.use.count() + %resource.name.family.count())"),
            "[5, 5, 5]");
  EXPECT_EQ(Run("name.where(%resource.name.given.count() = 5 and "
                "%resource.name.given.distinct().count() = 3).count()"),
            "[3]");
}

TEST_F(FhirPathTest, R4InvariantsOnResources) {
  constexpr std::string_view kDom3 =
      "contained.where((('#'+id in (%resource.descendants().reference | "
      "%resource.descendants().as(canonical) | %resource.descendants().as(uri) | "
      "%resource.descendants().as(url))) or descendants().where(reference = '#').exists() or "
      "descendants().where(as(canonical) = '#').exists() or "
      "descendants().where(as(canonical) = '#').exists()).not()).trace('unmatched', id).empty()";
  EXPECT_EQ(Run(kDom3), "[true]");
  constexpr std::string_view kUnreferenced = R"({"resourceType": "Patient",
    "contained": [{"resourceType": "Organization", "id": "o", "name": "x"}]})";
  EXPECT_EQ(Run(kDom3, kUnreferenced), "[false]");
  EXPECT_EQ(Run("contained.contained.empty()"), "[true]");
  EXPECT_EQ(Run("text.`div`.exists()"), "[true]");
  // ref-1 at the Reference.
  auto ref1 = Expression::Parse(
      "reference.startsWith('#').not() or (reference.substring(1).trace('url') in "
      "%rootResource.contained.id.trace('ids'))");
  ASSERT_TRUE(ref1.ok());
  const json::Value& patient = Doc(kPatient);
  const json::Value* ref = patient.Find("managingOrganization");
  auto ok =
      EvaluateBoolean(*ref1, Item::MakeNode(ref, "Reference"), Environment::ForResource(patient));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, std::optional<bool>(true));
}

// ---- evaluation API

TEST_F(FhirPathTest, EvaluateBooleanFollowsSingletonRules) {
  const json::Value& doc = Doc(kPatient);
  Environment env = Environment::ForResource(doc);
  auto check = [&](std::string_view expr) -> absl::StatusOr<std::optional<bool>> {
    auto e = Expression::Parse(expr);
    if (!e.ok()) return e.status();
    return EvaluateBoolean(*e, Item::Resource(doc), env);
  };
  EXPECT_EQ(*check("name.exists()"), std::optional<bool>(true));
  EXPECT_EQ(*check("name.empty()"), std::optional<bool>(false));
  EXPECT_EQ(*check("name.where(false)"), std::nullopt);
  EXPECT_EQ(*check("gender"), std::optional<bool>(true));
  EXPECT_FALSE(check("name.given").ok());
}

TEST_F(FhirPathTest, ItemsExposeValues) {
  auto e = Expression::Parse("1.5 | 2 | 'x' | true | @2015 | 3 'mg'");
  ASSERT_TRUE(e.ok());
  auto r = Evaluate(*e, Collection(), Environment());
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 6u);
  EXPECT_EQ((*r)[0].kind(), Item::Kind::kDecimal);
  EXPECT_EQ((*r)[0].decimal().ToString(), "1.5");
  EXPECT_EQ((*r)[1].integer(), 2);
  EXPECT_EQ((*r)[2].string(), "x");
  EXPECT_TRUE((*r)[3].boolean());
  EXPECT_EQ((*r)[4].kind(), Item::Kind::kDate);
  EXPECT_EQ((*r)[5].quantity().unit, "mg");
  EXPECT_EQ((*r)[5].type_name(), "Quantity");
}

TEST(FhirPathValues, DecimalParsesAndPrintsExactly) {
  EXPECT_EQ(Decimal::Parse("1.50")->ToString(), "1.50");
  EXPECT_EQ(Decimal::Parse("-0.001")->ToString(), "-0.001");
  EXPECT_EQ(Decimal::Parse("1e3")->ToString(), "1000");
  EXPECT_EQ(Decimal::Parse("1.5E-3")->ToString(), "0.0015");
  EXPECT_EQ(Decimal::Parse("12345678901234567890.123")->ToString(), "12345678901234567890.123");
  EXPECT_FALSE(Decimal::Parse("1e400").has_value());
  EXPECT_FALSE(Decimal::Parse("1.").has_value());
  EXPECT_FALSE(Decimal::Parse(".5").has_value());
  EXPECT_FALSE(Decimal::Parse("abc").has_value());
  EXPECT_FALSE(Decimal::Parse("").has_value());
}

TEST(FhirPathValues, TemporalParsesFhirForms) {
  EXPECT_EQ(Temporal::ParseDateTime("2015-02-07T13:28:17-05:00")->ToString(),
            "2015-02-07T13:28:17-05:00");
  EXPECT_EQ(Temporal::ParseDateTime("2015-02-07T13:28:17.239+02:00")->precision,
            Temporal::kMillisecond);
  EXPECT_EQ(Temporal::ParseDateTime("2017-01-01T00:00:00.1234Z")->millisecond, 123);
  EXPECT_EQ(Temporal::ParseDate("2015-02")->ToString(), "2015-02");
  EXPECT_EQ(Temporal::ParseTime("14:34:28")->ToString(), "14:34:28");
  EXPECT_FALSE(Temporal::ParseDate("2015-02-30").has_value());
  EXPECT_FALSE(Temporal::ParseDate("2015-2-3").has_value());
  EXPECT_FALSE(Temporal::ParseDateTime("2015-02-07T25:00:00Z").has_value());
  EXPECT_FALSE(Temporal::ParseDateTime("2015-02T10:00").has_value());
  EXPECT_FALSE(Temporal::ParseTime("14:34Z").has_value());
  EXPECT_TRUE(Temporal::ParseDate("2016-02-29").has_value());
  EXPECT_FALSE(Temporal::ParseDate("2015-02-29").has_value());
}

// ---- safety

TEST_F(FhirPathTest, StepBudgetStopsRunawayEvaluation) {
  Environment env;
  env.limits.max_steps = 10'000;
  // combine($this) reads the outer item, so nothing here can be memoized.
  auto e = Expression::Parse(
      "(1|2|3|4|5|6|7|8|9|10).select((1|2|3|4|5|6|7|8|9|10).combine($this).select("
      "(1|2|3|4|5|6|7|8|9|10).combine($this).select((1|2|3|4|5|6|7|8|9|10).combine($this)"
      ".select($this))))");
  ASSERT_TRUE(e.ok());
  auto r = Evaluate(*e, Collection(), env);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(FhirPathTest, CollectionAndStringSizesAreBounded) {
  Environment env;
  env.limits.max_collection_size = 500;
  auto e = Expression::Parse(
      "(1|2|3|4|5|6|7|8|9|10).select((1|2|3|4|5|6|7|8|9|10)"
      ".select((1|2|3|4|5|6|7|8|9|10).select($this)))");
  ASSERT_TRUE(e.ok());
  auto r = Evaluate(*e, Collection(), env);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);

  Environment small;
  small.limits.max_string_bytes = 1000;
  auto grow = Expression::Parse("(1|2|3|4|5|6|7|8|9|10|11|12).aggregate($total + $total, 'ab')");
  ASSERT_TRUE(grow.ok());
  auto g = Evaluate(*grow, Collection(), small);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), absl::StatusCode::kResourceExhausted);
  // 10 a -> 100 b -> 1200 c: over the 1000-byte limit.
  auto replace =
      Expression::Parse("'aaaaaaaaaa'.replace('a', 'bbbbbbbbbb').replace('b', 'cccccccccccc')");
  ASSERT_TRUE(replace.ok());
  EXPECT_EQ(Evaluate(*replace, Collection(), small).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(FhirPathTest, RegularExpressionsCannotHang) {
  // A pattern that backtracks exponentially in a naive engine, on a long non-matching input.
  auto e = Expression::Parse("('a' * 1).empty() or %text.matches('^(a+)+$')");
  ASSERT_TRUE(e.ok() || true);
  auto m = Expression::Parse("%text.matches('^(a+)+$')");
  ASSERT_TRUE(m.ok());
  Environment env;
  env.variables["text"] = Collection{Item::MakeString(std::string(5000, 'a') + "!")};
  auto start = std::chrono::steady_clock::now();
  auto r = Evaluate(*m, Collection(), env);
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(elapsed, std::chrono::seconds(5));
  if (r.ok()) {
    EXPECT_EQ(ToDebugString(*r), "[false]");
  }
  // Input beyond the limit is refused, not matched.
  env.variables["text"] = Collection{Item::MakeString(std::string(100 * 1024, 'a'))};
  auto big = Evaluate(*m, Collection(), env);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  // Back-references and huge repetitions are refused at compile time.
  EXPECT_FALSE(Expression::Parse("'aa'.matches('(a)\\\\1')").ok());
  EXPECT_FALSE(Expression::Parse("'a'.matches('((a{100}){100}){100}')").ok());
}

TEST_F(FhirPathTest, HostileInputsNeverCrash) {
  // Arbitrary expressions over arbitrary JSON: every outcome is a value or a Status.
  const char* exprs[] = {
      "descendants().descendants().count()",
      "children().repeat(children()).count()",
      "repeat($this)",
      "descendants().select($this = $this)",
      "aggregate($total)",
      "select(%context).select(%resource)",
      "name.given.toChars().distinct()",
      "descendants().ofType(string).matches('.*')",
      "descendants().toString()",
      "descendants().where(resolve().exists())",
      "(1|2).aggregate($this, $total)",
      "descendants().convertsToDecimal()",
      "descendants().lowBoundary()",
      "(descendants() | descendants()).isDistinct()",
      "1.0.power(1000000)",
      "'x'.substring(-5, 99999999999)",
      "(1 'm').toQuantity('10*99')",
      "@2015 + 99999999999 years",
      "9999999999.round(99999)",
  };
  const char* docs[] = {
      R"({"resourceType": "Patient", "name": [{"given": [1, true, null, {"a": []}]}],
          "_name": 5, "birthDate": 42, "_birthDate": "x", "active": "yes"})",
      R"({"resourceType": "Observation", "valueQuantity": {"value": "1e999", "code": 7},
          "component": [{"valueQuantity": {"value": 1e300, "unit": "m"}}]})",
      R"([1, 2, {"resourceType": 3}])",
      R"({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Bundle",
          "entry": [{"fullUrl": "x", "resource": null}]}}]})",
  };
  for (const char* d : docs) {
    auto doc = json::Parse(d);
    ASSERT_TRUE(doc.ok()) << d;
    Environment env = Environment::ForResource(*doc);
    for (const char* x : exprs) {
      auto e = Expression::Parse(x);
      ASSERT_TRUE(e.ok()) << x << ": " << e.status();
      auto r = Evaluate(*e, Item::Resource(*doc), env);
      (void)r;  // any outcome but a crash or a hang is fine
    }
  }
}

TEST_F(FhirPathTest, LargeHostileDocumentsStayWithinBudget) {
  // 4900 members with their "_name" siblings, 20000 dates, 20000 equal quantities, and a deep
  // chain: children(), descendants() and deduplication stay linear or hit the step budget.
  std::string wide = R"({"resourceType": "Basic", "code": {"text": "x"})";
  for (int i = 0; i < 4900; ++i) {
    wide +=
        ",\"m" + std::to_string(i) + "\": \"v\", \"_m" + std::to_string(i) + "\": {\"id\": \"i\"}";
  }
  wide += R"(, "dates": [)";
  for (int i = 0; i < 20000; ++i) wide += (i ? ",\"" : "\"") + std::string("2020-01-01\"");
  wide += R"(], "qty": [)";
  for (int i = 0; i < 20000; ++i)
    wide += (i ? "," : "") + std::string(R"({"value": 1, "code": "mg"})");
  wide += R"(], "deep": )";
  for (int i = 0; i < 60; ++i) wide += R"({"a": )";
  wide += "1";
  for (int i = 0; i < 60; ++i) wide += "}";
  wide += "}";
  json::Limits limits;
  limits.max_depth = 100;
  auto doc = json::Parse(wide, limits);
  ASSERT_TRUE(doc.ok()) << doc.status();
  Environment env = Environment::ForResource(*doc);
  env.limits.max_steps = 500'000;
  const char* exprs[] = {
      "children().count()",
      "descendants().count()",
      "m1.extension.exists() or m1.id.exists()",
      "dates.distinct().count()",
      "dates.isDistinct()",
      "dates.select(toDate()).distinct().count()",
      "dates.select(toDate() + 1 day * $index).isDistinct()",
      "(dates | dates).count()",
      "qty.distinct().count()",
      "deep.descendants().count()",
      "deep = deep",
      "descendants().repeat(children()).count()",
  };
  for (const char* x : exprs) {
    auto e = Expression::Parse(x);
    ASSERT_TRUE(e.ok()) << x;
    auto start = std::chrono::steady_clock::now();
    auto r = Evaluate(*e, Item::Resource(*doc), env);
    auto elapsed = std::chrono::steady_clock::now() - start;
    EXPECT_LT(elapsed, std::chrono::seconds(3)) << x;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << x << r.status();
    }
  }
  auto count = Expression::Parse("children().count()");
  EXPECT_EQ(ToDebugString(*Evaluate(*count, Item::Resource(*doc), env)), "[44902]");
  auto m1 = Expression::Parse("m1.id");
  EXPECT_EQ(ToDebugString(*Evaluate(*m1, Item::Resource(*doc), env)), "[? \"i\"]");
}

TEST_F(FhirPathTest, RandomExpressionsNeverCrash) {
  // A deterministic stream of random token sequences: each must parse or fail cleanly, and
  // evaluate or fail cleanly.
  const char* tokens[] = {
      "name",
      "given",
      "family",
      "telecom",
      "use",
      "where(",
      "select(",
      "exists(",
      "all(",
      "repeat(",
      "iif(",
      "first()",
      "last()",
      "count()",
      "distinct()",
      "children()",
      "descendants()",
      "ofType(HumanName)",
      "as(string)",
      "is(Period)",
      "toString()",
      "toInteger()",
      "substring(",
      "matches(",
      "replace(",
      "contains(",
      "extension(",
      "resolve()",
      "aggregate(",
      "$this",
      "$index",
      "$total",
      "%resource",
      "%context",
      "1",
      "2.5",
      "'a'",
      "'x.*'",
      "@2015",
      "@T10:00",
      "4 'mg'",
      "true",
      "{}",
      "+",
      "-",
      "*",
      "/",
      "div",
      "mod",
      "&",
      "|",
      "=",
      "!=",
      "~",
      "<",
      ">=",
      "and",
      "or",
      "xor",
      "implies",
      "in",
      " is ",
      " as ",
      ".",
      ".",
      ".",
      "(",
      ")",
      ")",
      ")",
      ",",
      "[0]",
      "not()",
      "empty()",
  };
  const json::Value& doc = Doc(kPatient);
  Environment env = Environment::ForResource(doc);
  env.limits.max_steps = 20'000;
  uint64_t state = 0x9E3779B97F4A7C15ULL;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  int parsed = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string expr;
    int n = 1 + next() % 12;
    for (int k = 0; k < n; ++k) expr += tokens[next() % std::size(tokens)];
    auto e = Expression::Parse(expr);
    if (!e.ok()) {
      EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument) << expr;
      continue;
    }
    ++parsed;
    auto r = Evaluate(*e, Item::Resource(doc), env);
    if (!r.ok()) {
      EXPECT_TRUE(r.status().code() == absl::StatusCode::kInvalidArgument ||
                  r.status().code() == absl::StatusCode::kResourceExhausted)
          << expr << ": " << r.status();
    }
  }
  EXPECT_GT(parsed, 100);
}

TEST_F(FhirPathTest, OneExpressionManyThreads) {
  auto e = Expression::Parse(
      "name.where(use = 'official').given.first() + ' ' + "
      "name.family.first() + ':' + birthDate.toString()");
  ASSERT_TRUE(e.ok());
  // Quantity literals are shared by all evaluations (reference-counted).
  auto q = Expression::Parse("(4 'g' | 4000 'mg' | 1 week).select($this).count()");
  ASSERT_TRUE(q.ok());
  const json::Value& doc = Doc(kPatient);
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        auto r = Evaluate(*e, Item::Resource(doc), Environment::ForResource(doc));
        if (r.ok() && ToDebugString(*r) == "['Peter Chalmers:1974-12-25']") ++good;
        auto c = Evaluate(*q, Item::Resource(doc), Environment::ForResource(doc));
        if (c.ok() && ToDebugString(*c) == "[2]") ++good;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 1600);
}

}  // namespace
}  // namespace fhirward::fhir::fhirpath

namespace fhirward::fhir::fhirpath {
namespace {

// Found by fhir_fhirpath_fuzz: 38+ digits used to overflow the i128 mantissa
// while parsing (undefined behaviour) instead of being refused.
TEST(FhirPathDecimalTest, TooManyDigitsAreRefusedNotOverflowed) {
  EXPECT_FALSE(Decimal::Parse(std::string(60, '6') + ".667").has_value());
  EXPECT_FALSE(Decimal::Parse(std::string(40, '9')).has_value());
  auto long_fraction = Decimal::Parse("1." + std::string(60, '3'));
  ASSERT_TRUE(long_fraction.has_value());
  EXPECT_EQ(long_fraction->ToString().substr(0, 4), "1.33");
  auto e = Expression::Parse(std::string(60, '6') + ".667");
  if (e.ok()) {
    json::Value empty = json::Value::MakeObject();
    EXPECT_FALSE(Evaluate(*e, Item::Resource(empty), Environment::ForResource(empty)).ok());
  }
}

}  // namespace
}  // namespace fhirward::fhir::fhirpath

namespace fhirward::fhir::fhirpath {
namespace {

// Search (issue 4) evaluates the R4 SearchParameter expressions with this
// engine: each must compile, and a shared expression selects only the part of
// the resource's own type.
TEST(FhirPathSearchParamTest, EveryR4SearchParameterExpressionCompiles) {
  const Model& m = Model::R4();
  std::set<const SearchParamDef*> all;
  for (std::string_view type : ResourceTypes()) {
    for (const SearchParamDef* p : m.SearchParamsOf(type)) all.insert(p);
  }
  EXPECT_GT(all.size(), 1300u);
  for (const SearchParamDef* p : all) {
    EXPECT_TRUE(Expression::Parse(p->expression).ok()) << p->url << ": " << p->expression;
  }
}

TEST(FhirPathSearchParamTest, PatientParametersSelectPatientValues) {
  const Model& m = Model::R4();
  const SearchParamDef* birthdate = m.FindSearchParam("Patient", "birthdate");
  ASSERT_NE(birthdate, nullptr);
  EXPECT_EQ(birthdate->type, "date");
  ASSERT_NE(m.FindSearchParam("Patient", "_id"), nullptr);  // from Resource
  ASSERT_NE(m.FindSearchParam("Observation", "_lastUpdated"), nullptr);
  EXPECT_EQ(m.FindSearchParam("Patient", "code"), nullptr);
  const SearchParamDef* subject = m.FindSearchParam("Observation", "subject");
  ASSERT_NE(subject, nullptr);
  EXPECT_EQ(subject->type, "reference");
  EXPECT_FALSE(subject->target_types.empty());
  auto patient = json::Parse(
      R"({"resourceType": "Patient", "birthDate": "1974-12-25", "address": [{"city": "X"}]})");
  ASSERT_TRUE(patient.ok());
  auto e = Expression::Parse(birthdate->expression);
  ASSERT_TRUE(e.ok());
  auto r = Evaluate(*e, Item::Resource(*patient), Environment::ForResource(*patient));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 1u);
  auto city = Expression::Parse(m.FindSearchParam("Patient", "address-city")->expression);
  ASSERT_TRUE(city.ok());
  auto c = Evaluate(*city, Item::Resource(*patient), Environment::ForResource(*patient));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(ToDebugString(*c).find("X") != std::string::npos, true) << ToDebugString(*c);
}

}  // namespace
}  // namespace fhirward::fhir::fhirpath
