// Search, conditional writes and transactions of the SQLite ResourceStore, run
// with SearchQuery objects built by hand (the server's parser is tested
// separately), plus what the blind index leaves on disk.
#include "store/search.h"

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/error.h"
#include "crypto/kms.h"
#include "crypto/test_util.h"
#include "fhir/search_index.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "json/value.h"
#include "store/resource_store.h"

namespace fhirward::store {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using Kind = SearchClause::Kind;
using P = SearchPrefix;

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

json::Value J(std::string_view text) { return json::Parse(text).value(); }

// --- search values and clauses ---------------------------------------------------------------

SearchValue Code(std::string code) {
  SearchValue v;
  v.code = std::move(code);
  return v;
}
SearchValue SysCode(std::string system, std::string code) {
  SearchValue v;
  v.has_system = true;
  v.system = std::move(system);
  v.code = std::move(code);
  return v;
}
SearchValue Text(std::string text) {
  SearchValue v;
  v.text = std::move(text);
  return v;
}
SearchValue Date(P prefix, std::string_view date) {
  SearchValue v;
  v.prefix = prefix;
  auto r = fhir::DateRange(date);
  EXPECT_TRUE(r.has_value()) << date;
  if (r) std::tie(v.lo, v.hi) = *r;
  return v;
}
SearchValue BlindDate(std::string text) {
  SearchValue v;
  v.date_text = std::move(text);
  return v;
}
// A number with the range its precision implies: value ± half.
SearchValue Num(P prefix, double value, double half = 0.5) {
  SearchValue v;
  v.prefix = prefix;
  v.value = value;
  v.vlo = value - half;
  v.vhi = value + half;
  return v;
}
SearchValue Quantity(P prefix, double value, std::optional<std::string> system, std::string code) {
  SearchValue v = Num(prefix, value);
  if (system) {
    v.has_system = true;
    v.system = *system;
  }
  v.code = std::move(code);
  return v;
}
SearchValue Ref(std::string type, std::string id) {
  SearchValue v;
  v.target_type = std::move(type);
  v.target_id = std::move(id);
  return v;
}

SearchClause C(Kind kind, std::string param, std::vector<SearchValue> values,
               std::string modifier = "", bool blind = false) {
  SearchClause c;
  c.kind = kind;
  c.param = std::move(param);
  c.values = std::move(values);
  c.modifier = std::move(modifier);
  c.blind = blind;
  return c;
}
SearchClause Blind(Kind kind, std::string param, std::vector<SearchValue> values,
                   std::string modifier = "") {
  return C(kind, std::move(param), std::move(values), std::move(modifier), true);
}
SearchClause Missing(Kind kind, std::string param, bool missing, bool blind = false) {
  SearchClause c = C(kind, std::move(param), {}, "missing", blind);
  c.missing = missing;
  return c;
}
SearchClause Chain(std::string param, std::string target_type, SearchClause sub,
                   std::optional<std::string> narrow = std::nullopt) {
  SearchClause c;
  c.kind = Kind::kChain;
  c.param = std::move(param);
  c.target_type = std::move(target_type);
  c.sub.push_back(std::move(sub));
  if (narrow) c.narrow_patients = std::vector<std::string>{*narrow};
  return c;
}
SearchClause Has(std::string target_type, std::string param, SearchClause sub,
                 std::optional<std::string> narrow = std::nullopt) {
  SearchClause c =
      Chain(std::move(param), std::move(target_type), std::move(sub), std::move(narrow));
  c.kind = Kind::kHas;
  return c;
}

SearchQuery Q(std::string type, std::vector<SearchClause> clauses = {}, std::string tenant = "t1") {
  SearchQuery q;
  q.tenant = std::move(tenant);
  q.type = std::move(type);
  q.clauses = std::move(clauses);
  q.count = 100;
  return q;
}

std::vector<std::string> IdsOf(const SearchPage& page) {
  std::vector<std::string> out;
  for (const auto& m : page.matches) out.push_back(m.id);
  return out;
}

// --- the population ----------------------------------------------------------------------------

// Patients:
//   p1 Alpha Anna, female, 1980-05-01, urn:mrn|MRN-1, managed by org1
//   p2 Beta Bert, male, 1990-01-15, urn:mrn|MRN-2
//   p3 Alphonse Carl, no gender, 1980-07-20, no identifier
// Organizations: org1 "Acme Health" (alias ACME), org2 "Zeta Clinic", org3 "Ácme Labs"
// Observations (LOINC 8867-4 heart rate, 29463-7 body weight):
//   o1 p1 8867-4 final       2019-05-03T10:00:00Z         72 /min
//   o2 p1 29463-7 final      2020-01-10                   80.5 kg
//   o3 p2 8867-4 preliminary 2019-06-01 .. 2019-06-30     100 /min
//   o4 Group/g1 urn:local|X final, no date, no value
//   o5 p3 8867-4 amended     2018-12-31T23:00:00Z         60 /min
// ValueSets: vs1 http://example.org/fhir/ValueSet/a, vs2 .../ValueSet/a/b, vs3 http://other.org/x
// RiskAssessments: ra1 probability 0.25, ra2 0.8, ra3 none
constexpr const char* kPatients[][2] = {
    {"p1", R"({"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"MRN-1"}],
       "active":true,"name":[{"family":"Alpha","given":["Anna"]}],"gender":"female",
       "birthDate":"1980-05-01","managingOrganization":{"reference":"Organization/org1"}})"},
    {"p2", R"({"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"MRN-2"}],
       "active":false,"name":[{"family":"Beta","given":["Bert"]}],"gender":"male",
       "birthDate":"1990-01-15"})"},
    {"p3", R"({"resourceType":"Patient","name":[{"family":"Alphonse","given":["Carl"]}],
       "birthDate":"1980-07-20"})"},
};

std::string Observation(const std::string& subject, const std::string& system,
                        const std::string& code, const std::string& text, const std::string& status,
                        const std::string& effective, const std::string& value) {
  std::string s = R"({"resourceType":"Observation","status":")" + status +
                  R"(","code":{"coding":[{"system":")" + system + R"(","code":")" + code +
                  R"("}],"text":")" + text + R"("},"subject":{"reference":")" + subject + R"("})";
  if (!effective.empty()) s += "," + effective;
  if (!value.empty()) s += R"(,"valueQuantity":)" + value;
  return s + "}";
}

class StoreSearchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/fhirward-search-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::filesystem::create_directory(DbDir());
    keys_ = testing_util::MakeTestKeys(dir_ + "/kek", dir_ + "/keys.db");
    Open();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::string DbDir() const { return dir_ + "/db"; }
  std::string DbPath() const { return DbDir() + "/store.db"; }

  void Open(int read_connections = 8) {
    store_.reset();
    store_ = OpenSqliteStore({.path = DbPath(),
                              .kek = keys_.kek.get(),
                              .keyring = keys_.ring.get(),
                              .read_connections = read_connections,
                              .index_key = &index_key_,
                              .base_url = "https://fhir.example.org/r4"})
                 .value();
  }

  void Create(const std::string& type, const std::string& id, std::string_view body,
              const std::string& tenant = "t1") {
    auto r = store_->Create({tenant, type, id}, J(body));
    ASSERT_TRUE(r.ok()) << type << "/" << id << ": " << r.status();
  }

  void Populate() {
    for (const auto& [id, body] : kPatients) Create("Patient", id, body);
    Create("Organization", "org1",
           R"({"resourceType":"Organization","name":"Acme Health","alias":["ACME"]})");
    Create("Organization", "org2", R"({"resourceType":"Organization","name":"Zeta Clinic"})");
    Create("Organization", "org3", R"({"resourceType":"Organization","name":"Ácme Labs"})");
    const std::string loinc = "http://loinc.org";
    const std::string per_min =
        R"({"value":%,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"})";
    auto value = [&](const std::string& v, const std::string& tmpl) {
      std::string s = tmpl;
      s.replace(s.find('%'), 1, v);
      return s;
    };
    Create("Observation", "o1",
           Observation("Patient/p1", loinc, "8867-4", "Heart rate", "final",
                       R"("effectiveDateTime":"2019-05-03T10:00:00Z")", value("72", per_min)));
    Create("Observation", "o2",
           Observation("Patient/p1", loinc, "29463-7", "Body weight", "final",
                       R"("effectiveDateTime":"2020-01-10")",
                       R"({"value":80.5,"unit":"kg","system":"http://unitsofmeasure.org",
                           "code":"kg"})"));
    Create("Observation", "o3",
           Observation("Patient/p2", loinc, "8867-4", "Heart rate", "preliminary",
                       R"("effectivePeriod":{"start":"2019-06-01","end":"2019-06-30"})",
                       value("100", per_min)));
    Create("Observation", "o4",
           Observation("Group/g1", "urn:local", "X", "Local thing", "final", "", ""));
    Create("Observation", "o5",
           Observation("Patient/p3", loinc, "8867-4", "Heart rate", "amended",
                       R"("effectiveDateTime":"2018-12-31T23:00:00Z")", value("60", per_min)));
    Create(
        "ValueSet", "vs1",
        R"({"resourceType":"ValueSet","status":"active","url":"http://example.org/fhir/ValueSet/a"})");
    Create(
        "ValueSet", "vs2",
        R"({"resourceType":"ValueSet","status":"active","url":"http://example.org/fhir/ValueSet/a/b"})");
    Create("ValueSet", "vs3",
           R"({"resourceType":"ValueSet","status":"active","url":"http://other.org/x"})");
    Create(
        "RiskAssessment", "ra1",
        R"({"resourceType":"RiskAssessment","status":"final","subject":{"reference":"Patient/p1"},
               "prediction":[{"probabilityDecimal":0.25}]})");
    Create(
        "RiskAssessment", "ra2",
        R"({"resourceType":"RiskAssessment","status":"final","subject":{"reference":"Patient/p2"},
               "prediction":[{"probabilityDecimal":0.8}]})");
    Create(
        "RiskAssessment", "ra3",
        R"({"resourceType":"RiskAssessment","status":"final","subject":{"reference":"Patient/p2"}})");
  }

  // Ids of the matches of `q` (in order); a failed search fails the test.
  std::vector<std::string> Ids(const SearchQuery& q) {
    auto page = store_->Search(q);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) return {"<error>"};
    return IdsOf(*page);
  }
  std::vector<std::string> Ids(std::string type, std::vector<SearchClause> clauses) {
    return Ids(Q(std::move(type), std::move(clauses)));
  }

  // Every regular file of the database directory, concatenated.
  std::string RawDatabaseBytes() {
    std::string all;
    for (const auto& f : std::filesystem::directory_iterator(DbDir())) {
      if (!f.is_regular_file()) continue;
      std::ifstream in(f.path(), std::ios::binary);
      all.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    return all;
  }

  std::string dir_;
  testing_util::TestKeys keys_;
  SecretBytes index_key_{std::string(32, 'k')};
  std::unique_ptr<ResourceStore> store_;
};

// ---------------------------------------------------------------------------------------------
// Clause kinds

TEST_F(StoreSearchTest, NoClausesFindsEveryCurrentResourceOfTheTypeAndTenant) {
  Populate();
  EXPECT_THAT(Ids("Patient", {}), ElementsAre("p1", "p2", "p3"));
  EXPECT_THAT(Ids("Observation", {}), ElementsAre("o1", "o2", "o3", "o4", "o5"));
  EXPECT_THAT(Ids(Q("Patient", {}, "t2")), IsEmpty());
  EXPECT_THAT(Ids("Encounter", {}), IsEmpty());
}

TEST_F(StoreSearchTest, TokenWithAndWithoutSystem) {
  Populate();
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "code", {Code("8867-4")})}),
              ElementsAre("o1", "o3", "o5"));
  EXPECT_THAT(
      Ids("Observation", {C(Kind::kToken, "code", {SysCode("http://loinc.org", "8867-4")})}),
      ElementsAre("o1", "o3", "o5"));
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "code", {SysCode("urn:local", "8867-4")})}),
              IsEmpty());
  // "system|": any code of the system; "|code": a code without a system.
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "code", {SysCode("urn:local", "")})}),
              ElementsAre("o4"));
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "code", {SysCode("", "X")})}), IsEmpty());
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "status", {Code("final")})}),
              ElementsAre("o1", "o2", "o4"));
  EXPECT_THAT(Ids("Patient", {C(Kind::kToken, "gender", {Code("female")})}), ElementsAre("p1"));
  EXPECT_THAT(Ids("Patient", {C(Kind::kToken, "active", {Code("false")})}), ElementsAre("p2"));
  // Codes are case-sensitive.
  EXPECT_THAT(Ids("Patient", {C(Kind::kToken, "gender", {Code("Female")})}), IsEmpty());
}

TEST_F(StoreSearchTest, BlindTokenIdentifier) {
  Populate();
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kToken, "identifier", {SysCode("urn:mrn", "MRN-1")})}),
              ElementsAre("p1"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kToken, "identifier", {Code("MRN-2")})}),
              ElementsAre("p2"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kToken, "identifier", {SysCode("urn:other", "MRN-1")})}),
              IsEmpty());
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kToken, "identifier", {Code("mrn-1")})}), IsEmpty());
  // A clause not marked blind still finds blind values (the fallback for
  // identifying values under a non-identifying parameter).
  EXPECT_THAT(Ids("Patient", {C(Kind::kToken, "identifier", {Code("MRN-1")})}), ElementsAre("p1"));
}

TEST_F(StoreSearchTest, TokenNotAndText) {
  Populate();
  // :not also finds resources without any value.
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "code", {Code("8867-4")}, "not")}),
              ElementsAre("o2", "o4"));
  EXPECT_THAT(Ids("Patient", {C(Kind::kToken, "gender", {Code("male")}, "not")}),
              ElementsAre("p1", "p3"));
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "code", {Text("HEART")}, "text")}),
              ElementsAre("o1", "o3", "o5"));
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "code", {Text("weight")}, "text")}),
              ElementsAre("o2"));
}

TEST_F(StoreSearchTest, Missing) {
  Populate();
  EXPECT_THAT(Ids("Patient", {Missing(Kind::kToken, "gender", true)}), ElementsAre("p3"));
  EXPECT_THAT(Ids("Patient", {Missing(Kind::kToken, "gender", false)}), ElementsAre("p1", "p2"));
  EXPECT_THAT(Ids("Patient", {Missing(Kind::kToken, "identifier", true, true)}), ElementsAre("p3"));
  EXPECT_THAT(Ids("Patient", {Missing(Kind::kReference, "organization", false)}),
              ElementsAre("p1"));
  EXPECT_THAT(Ids("Patient", {Missing(Kind::kDate, "birthdate", false, true)}),
              ElementsAre("p1", "p2", "p3"));
  EXPECT_THAT(Ids("Observation", {Missing(Kind::kDate, "date", true)}), ElementsAre("o4"));
  EXPECT_THAT(Ids("Observation", {Missing(Kind::kQuantity, "value-quantity", true)}),
              ElementsAre("o4"));
  EXPECT_THAT(Ids("Observation", {Missing(Kind::kReference, "patient", true)}), ElementsAre("o4"));
}

TEST_F(StoreSearchTest, StringPrefixExactContains) {
  Populate();
  // Default: case- and accent-insensitive prefix.
  EXPECT_THAT(Ids("Organization", {C(Kind::kString, "name", {Text("acme")})}),
              ElementsAre("org1", "org3"));
  EXPECT_THAT(Ids("Organization", {C(Kind::kString, "name", {Text("ÀCME H")})}),
              ElementsAre("org1"));
  EXPECT_THAT(Ids("Organization", {C(Kind::kString, "name", {Text("health")})}), IsEmpty());
  // :exact: the whole string, case and accents included.
  EXPECT_THAT(Ids("Organization", {C(Kind::kString, "name", {Text("Acme Health")}, "exact")}),
              ElementsAre("org1"));
  EXPECT_THAT(Ids("Organization", {C(Kind::kString, "name", {Text("acme health")}, "exact")}),
              IsEmpty());
  EXPECT_THAT(Ids("Organization", {C(Kind::kString, "name", {Text("Acme")}, "exact")}), IsEmpty());
  EXPECT_THAT(Ids("Organization", {C(Kind::kString, "name", {Text("Ácme Labs")}, "exact")}),
              ElementsAre("org3"));
  // :contains: anywhere.
  EXPECT_THAT(Ids("Organization", {C(Kind::kString, "name", {Text("LAB")}, "contains")}),
              ElementsAre("org3"));
  EXPECT_THAT(Ids("Organization", {C(Kind::kString, "name", {Text("cli")}, "contains")}),
              ElementsAre("org2"));
  EXPECT_THAT(Ids("Organization", {C(Kind::kString, "name", {Text("c")}, "contains")}),
              ElementsAre("org1", "org2", "org3"));
}

TEST_F(StoreSearchTest, BlindStringPrefixAndExactOnPatientNames) {
  Populate();
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("alph")})}),
              ElementsAre("p1", "p3"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("ALPHA")})}), ElementsAre("p1"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("A")})}),
              ElementsAre("p1", "p3"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("lpha")})}), IsEmpty());
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("Alphax")})}), IsEmpty());
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("Alpha")}, "exact")}),
              ElementsAre("p1"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("alpha")}, "exact")}),
              IsEmpty());
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("Alph")}, "exact")}), IsEmpty());
  // name covers every part; given too.
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "name", {Text("ann")})}), ElementsAre("p1"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "name", {Text("be")})}), ElementsAre("p2"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "given", {Text("Carl")})}), ElementsAre("p3"));
  // Blind rows are only found through HMACs: a non-blind clause with the same
  // text still finds them by the prefix HMAC, never by a clear-text comparison.
  EXPECT_THAT(Ids("Patient", {C(Kind::kString, "family", {Text("alph")})}),
              ElementsAre("p1", "p3"));
  EXPECT_THAT(Ids("Patient", {C(Kind::kString, "family", {Text("lph")}, "contains")}), IsEmpty());
}

TEST_F(StoreSearchTest, BlindBirthdateExactAtEachPrecision) {
  Populate();
  auto birth = [&](const char* text) {
    return Ids("Patient", {Blind(Kind::kDate, "birthdate", {BlindDate(text)})});
  };
  EXPECT_THAT(birth("1980"), ElementsAre("p1", "p3"));
  EXPECT_THAT(birth("1980-05"), ElementsAre("p1"));
  EXPECT_THAT(birth("1980-05-01"), ElementsAre("p1"));
  EXPECT_THAT(birth("1980-05-02"), IsEmpty());
  EXPECT_THAT(birth("1990-01-15"), ElementsAre("p2"));
}

TEST_F(StoreSearchTest, DatePrefixes) {
  Populate();
  auto date = [&](P p, const char* v) {
    return Ids("Observation", {C(Kind::kDate, "date", {Date(p, v)})});
  };
  // o1 2019-05-03T10:00:00Z, o2 2020-01-10, o3 2019-06-01..30, o5 2018-12-31T23:00Z, o4 none.
  EXPECT_THAT(date(P::kEq, "2019"), ElementsAre("o1", "o3"));
  EXPECT_THAT(date(P::kEq, "2019-05"), ElementsAre("o1"));
  EXPECT_THAT(date(P::kEq, "2019-05-03"), ElementsAre("o1"));
  EXPECT_THAT(date(P::kEq, "2019-06-15"), IsEmpty());  // o3's range is not within that day
  EXPECT_THAT(date(P::kEq, "2018-12-31T23:00:00Z"), ElementsAre("o5"));
  EXPECT_THAT(date(P::kEq, "2019-01-01T00:00:00+01:00"), ElementsAre("o5"));  // same instant
  EXPECT_THAT(date(P::kNe, "2019"), ElementsAre("o2", "o5"));
  EXPECT_THAT(date(P::kGt, "2019"), ElementsAre("o2"));
  EXPECT_THAT(date(P::kLt, "2019"), ElementsAre("o5"));
  EXPECT_THAT(date(P::kGe, "2019"), ElementsAre("o1", "o2", "o3"));
  EXPECT_THAT(date(P::kLe, "2019"), ElementsAre("o1", "o3", "o5"));
  EXPECT_THAT(date(P::kGe, "2019-06-15"), ElementsAre("o2", "o3"));  // overlap counts
  EXPECT_THAT(date(P::kLe, "2019-06-15"), ElementsAre("o1", "o3", "o5"));
  EXPECT_THAT(date(P::kSa, "2019-05"), ElementsAre("o2", "o3"));
  EXPECT_THAT(date(P::kEb, "2019-06"), ElementsAre("o1", "o5"));
  EXPECT_THAT(date(P::kSa, "2019-06-15"), ElementsAre("o2"));
  EXPECT_THAT(date(P::kEb, "2019-06-15"), ElementsAre("o1", "o5"));
}

// R4 §3.1.1.4.2: ge is "the range above the search value intersects the
// target's, or the search value's range contains it" (le likewise below): a
// target that only overlaps the search day from the other side does not match.
TEST_F(StoreSearchTest, DateGeLeNeedAboveOrWithin) {
  auto obs = [&](const char* id, const char* effective) {
    Create("Observation", id, Observation("Patient/p1", "urn:x", "c", "t", "final", effective, ""));
  };
  obs("a1", R"("effectivePeriod":{"start":"2019-06-01","end":"2019-06-15T10:00:00Z"})");
  obs("a2", R"("effectivePeriod":{"start":"2019-06-15T10:00:00Z","end":"2019-06-30"})");
  obs("a3", R"("effectiveDateTime":"2019-06-15T12:00:00Z")");
  obs("a4", R"("effectiveDateTime":"2019-06-16")");
  auto date = [&](P p, const char* v) {
    return Ids("Observation", {C(Kind::kDate, "date", {Date(p, v)})});
  };
  EXPECT_THAT(date(P::kGe, "2019-06-15"), ElementsAre("a2", "a3", "a4"));
  EXPECT_THAT(date(P::kLe, "2019-06-15"), ElementsAre("a1", "a3"));
  EXPECT_THAT(date(P::kGt, "2019-06-15"), ElementsAre("a2", "a4"));
  EXPECT_THAT(date(P::kLt, "2019-06-15"), ElementsAre("a1"));
  EXPECT_THAT(date(P::kEq, "2019-06-15"), ElementsAre("a3"));
  EXPECT_THAT(date(P::kNe, "2019-06-15"), ElementsAre("a1", "a2", "a4"));
  EXPECT_THAT(date(P::kSa, "2019-06-15"), ElementsAre("a4"));
  EXPECT_THAT(date(P::kEb, "2019-06-15"), IsEmpty());
}

TEST_F(StoreSearchTest, NumberPrefixes) {
  Populate();
  auto prob = [&](SearchValue v) {
    return Ids("RiskAssessment", {C(Kind::kNumber, "probability", {v})});
  };
  EXPECT_THAT(prob(Num(P::kEq, 0.25, 0.005)), ElementsAre("ra1"));
  EXPECT_THAT(prob(Num(P::kEq, 0.8, 0.05)), ElementsAre("ra2"));  // "0.8": [0.75, 0.85)
  EXPECT_THAT(prob(Num(P::kEq, 1, 0.5)), ElementsAre("ra2"));     // "1": [0.5, 1.5)
  EXPECT_THAT(prob(Num(P::kEq, 0.26, 0.005)), IsEmpty());
  EXPECT_THAT(prob(Num(P::kNe, 0.25, 0.005)), ElementsAre("ra2"));
  EXPECT_THAT(prob(Num(P::kGt, 0.25)), ElementsAre("ra2"));
  EXPECT_THAT(prob(Num(P::kGe, 0.25)), ElementsAre("ra1", "ra2"));
  EXPECT_THAT(prob(Num(P::kLt, 0.8)), ElementsAre("ra1"));
  EXPECT_THAT(prob(Num(P::kLe, 0.8)), ElementsAre("ra1", "ra2"));
  EXPECT_THAT(prob(Num(P::kAp, 0.75)), ElementsAre("ra2"));  // ±10%: [0.675, 0.825]
  EXPECT_THAT(prob(Num(P::kAp, 0.5)), IsEmpty());
}

TEST_F(StoreSearchTest, QuantityWithAndWithoutUnits) {
  Populate();
  auto qty = [&](SearchValue v) {
    return Ids("Observation", {C(Kind::kQuantity, "value-quantity", {v})});
  };
  const std::string ucum = "http://unitsofmeasure.org";
  EXPECT_THAT(qty(Quantity(P::kEq, 72, std::nullopt, "")), ElementsAre("o1"));
  EXPECT_THAT(qty(Quantity(P::kGt, 70, ucum, "/min")), ElementsAre("o1", "o3"));
  EXPECT_THAT(qty(Quantity(P::kGt, 70, std::nullopt, "kg")), ElementsAre("o2"));
  EXPECT_THAT(qty(Quantity(P::kGt, 70, std::string("urn:other"), "kg")), IsEmpty());
  EXPECT_THAT(qty(Quantity(P::kGe, 60, std::nullopt, "")), ElementsAre("o1", "o2", "o3", "o5"));
  EXPECT_THAT(qty(Quantity(P::kLt, 72, std::nullopt, "")), ElementsAre("o5"));
  EXPECT_THAT(qty(Quantity(P::kAp, 100, std::nullopt, "")), ElementsAre("o3"));
  SearchValue exact = Num(P::kEq, 80.5, 0.05);
  exact.code = "kg";
  EXPECT_THAT(qty(exact), ElementsAre("o2"));
}

TEST_F(StoreSearchTest, ReferenceWithAndWithoutType) {
  Populate();
  Create("Observation", "o6", R"({"resourceType":"Observation","status":"final",
      "code":{"text":"x"},"subject":{"reference":"https://other.org/fhir/Patient/p1"}})");
  Create("Observation", "o7", R"({"resourceType":"Observation","status":"final",
      "code":{"text":"x"},"subject":{"reference":"https://fhir.example.org/r4/Patient/p2"}})");
  EXPECT_THAT(Ids("Observation", {C(Kind::kReference, "subject", {Ref("Patient", "p1")})}),
              ElementsAre("o1", "o2"));
  EXPECT_THAT(Ids("Observation", {C(Kind::kReference, "subject", {Ref("", "p1")})}),
              ElementsAre("o1", "o2"));
  EXPECT_THAT(Ids("Observation", {C(Kind::kReference, "subject", {Ref("Group", "g1")})}),
              ElementsAre("o4"));
  EXPECT_THAT(Ids("Observation", {C(Kind::kReference, "subject", {Ref("Patient", "g1")})}),
              IsEmpty());
  // Our own absolute URL was indexed as relative.
  EXPECT_THAT(Ids("Observation", {C(Kind::kReference, "patient", {Ref("Patient", "p2")})}),
              ElementsAre("o3", "o7"));
  // Another server's URL: by url.
  EXPECT_THAT(Ids("Observation",
                  {C(Kind::kReference, "subject", {Text("https://other.org/fhir/Patient/p1")})}),
              ElementsAre("o6"));
  // OR of values.
  EXPECT_THAT(Ids("Observation",
                  {C(Kind::kReference, "subject", {Ref("Patient", "p3"), Ref("Group", "g1")})}),
              ElementsAre("o4", "o5"));
  EXPECT_THAT(Ids("Patient", {C(Kind::kReference, "organization", {Ref("Organization", "org1")})}),
              ElementsAre("p1"));
}

TEST_F(StoreSearchTest, UriBelowAndAbove) {
  Populate();
  EXPECT_THAT(Ids("ValueSet", {C(Kind::kUri, "url", {Text("http://example.org/fhir/ValueSet/a")})}),
              ElementsAre("vs1"));
  EXPECT_THAT(
      Ids("ValueSet", {C(Kind::kUri, "url", {Text("http://example.org/fhir/ValueSet")}, "below")}),
      ElementsAre("vs1", "vs2"));
  EXPECT_THAT(Ids("ValueSet", {C(Kind::kUri, "url",
                                 {Text("http://example.org/fhir/ValueSet/a/b/c")}, "above")}),
              ElementsAre("vs1", "vs2"));
  EXPECT_THAT(Ids("ValueSet",
                  {C(Kind::kUri, "url", {Text("http://example.org/fhir/ValueSet/a")}, "above")}),
              ElementsAre("vs1"));
  EXPECT_THAT(Ids("ValueSet", {C(Kind::kUri, "url", {Text("http://other.org/x/y")}, "above")}),
              ElementsAre("vs3"));
  EXPECT_THAT(Ids("ValueSet", {C(Kind::kUri, "url", {Text("http://nowhere.org")}, "below")}),
              IsEmpty());
}

TEST_F(StoreSearchTest, IdClause) {
  Populate();
  EXPECT_THAT(Ids("Patient", {C(Kind::kId, "_id", {Code("p3"), Code("p1"), Code("nope")})}),
              ElementsAre("p1", "p3"));
  EXPECT_THAT(Ids("Observation", {C(Kind::kId, "_id", {Code("p1")})}), IsEmpty());
  EXPECT_THAT(Ids("Patient", {C(Kind::kId, "_id", {})}), IsEmpty());
}

TEST_F(StoreSearchTest, LastUpdated) {
  Create("Patient", "early", kPatients[0][1]);
  const std::string early = store_->Read({"t1", "Patient", "early"})->last_updated;
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const std::string between = FormatInstant(std::chrono::system_clock::now());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  Create("Patient", "late", kPatients[1][1]);
  const std::string late = store_->Read({"t1", "Patient", "late"})->last_updated;
  ASSERT_LT(early, between);
  ASSERT_LT(between, late);

  auto lu = [&](P p, const std::string& v) {
    return Ids("Patient", {C(Kind::kLastUpdated, "_lastUpdated", {Date(p, v)})});
  };
  EXPECT_THAT(lu(P::kGt, between), ElementsAre("late"));
  EXPECT_THAT(lu(P::kGe, between), ElementsAre("late"));
  EXPECT_THAT(lu(P::kLt, between), ElementsAre("early"));
  EXPECT_THAT(lu(P::kLe, between), ElementsAre("early"));
  EXPECT_THAT(lu(P::kEq, early), ElementsAre("early"));  // to the millisecond
  EXPECT_THAT(lu(P::kEq, late), ElementsAre("late"));
  EXPECT_THAT(lu(P::kEq, between), IsEmpty());
  EXPECT_THAT(lu(P::kNe, early), ElementsAre("late"));
  EXPECT_THAT(lu(P::kEq, early.substr(0, 4)), ElementsAre("early", "late"));  // the year
  EXPECT_THAT(lu(P::kLt, "2000"), IsEmpty());

  // The current version counts: an update moves "early" past `between`.
  store_->Update({"t1", "Patient", "early"}, J(kPatients[0][1]), std::nullopt, false).value();
  EXPECT_THAT(lu(P::kGt, between), ElementsAre("early", "late"));
}

// ---------------------------------------------------------------------------------------------
// Combinations, chains, _has, compartments

TEST_F(StoreSearchTest, AndOfClausesOrOfValues) {
  Populate();
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "code", {Code("8867-4"), Code("29463-7")})}),
              ElementsAre("o1", "o2", "o3", "o5"));
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "code", {Code("8867-4")}),
                                  C(Kind::kDate, "date", {Date(P::kEq, "2019")})}),
              ElementsAre("o1", "o3"));
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "code", {Code("8867-4"), Code("29463-7")}),
                                  C(Kind::kReference, "subject", {Ref("Patient", "p1")})}),
              ElementsAre("o1", "o2"));
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "code", {Code("29463-7")}),
                                  C(Kind::kReference, "subject", {Ref("Patient", "p2")})}),
              IsEmpty());
  // The same parameter twice: both must hold.
  EXPECT_THAT(Ids("Observation", {C(Kind::kDate, "date", {Date(P::kGe, "2019")}),
                                  C(Kind::kDate, "date", {Date(P::kLt, "2019-06")})}),
              ElementsAre("o1"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("alph")}),
                              C(Kind::kToken, "gender", {Code("female")})}),
              ElementsAre("p1"));
}

TEST_F(StoreSearchTest, Chain) {
  Populate();
  EXPECT_THAT(Ids("Observation",
                  {Chain("subject", "Patient", Blind(Kind::kString, "family", {Text("alpha")}))}),
              ElementsAre("o1", "o2"));
  EXPECT_THAT(
      Ids("Observation", {Chain("subject", "Patient", C(Kind::kToken, "gender", {Code("male")}))}),
      ElementsAre("o3"));
  EXPECT_THAT(Ids("Observation", {Chain("subject", "Patient",
                                        Blind(Kind::kToken, "identifier", {Code("MRN-2")}))}),
              ElementsAre("o3"));
  EXPECT_THAT(Ids("Patient", {Chain("organization", "Organization",
                                    C(Kind::kString, "name", {Text("acme")}))}),
              ElementsAre("p1"));
  // The target type must match the reference's.
  EXPECT_THAT(
      Ids("Observation", {Chain("subject", "Group", C(Kind::kToken, "gender", {Code("male")}))}),
      IsEmpty());
  // Narrowed to a compartment: targets outside it do not count.
  EXPECT_THAT(Ids("Observation",
                  {Chain("subject", "Patient", C(Kind::kToken, "gender", {Code("female")}), "p2")}),
              IsEmpty());
  EXPECT_THAT(Ids("Observation",
                  {Chain("subject", "Patient", C(Kind::kToken, "gender", {Code("female")}), "p1")}),
              ElementsAre("o1", "o2"));
  // Two levels.
  EXPECT_THAT(
      Ids("Observation", {Chain("subject", "Patient",
                                Chain("organization", "Organization",
                                      C(Kind::kString, "name", {Text("Acme Health")}, "exact")))}),
      ElementsAre("o1", "o2"));
}

TEST_F(StoreSearchTest, Has) {
  Populate();
  EXPECT_THAT(
      Ids("Patient", {Has("Observation", "patient", C(Kind::kToken, "code", {Code("29463-7")}))}),
      ElementsAre("p1"));
  EXPECT_THAT(
      Ids("Patient", {Has("Observation", "patient", C(Kind::kToken, "code", {Code("8867-4")}))}),
      ElementsAre("p1", "p2", "p3"));
  EXPECT_THAT(Ids("Patient", {Has("Observation", "subject",
                                  C(Kind::kToken, "status", {Code("preliminary")}))}),
              ElementsAre("p2"));
  EXPECT_THAT(Ids("Patient",
                  {Has("Observation", "patient", C(Kind::kToken, "code", {Code("8867-4")}), "p2")}),
              ElementsAre("p2"));
  EXPECT_THAT(
      Ids("Patient", {Has("Observation", "patient", C(Kind::kToken, "code", {Code("none")}))}),
      IsEmpty());
  EXPECT_THAT(Ids("Organization",
                  {Has("Patient", "organization", C(Kind::kToken, "gender", {Code("female")}))}),
              ElementsAre("org1"));
  // Combined with a direct clause.
  EXPECT_THAT(
      Ids("Patient", {Has("Observation", "patient", C(Kind::kToken, "code", {Code("8867-4")})),
                      C(Kind::kToken, "gender", {Code("male")}, "not")}),
      ElementsAre("p1", "p3"));
}

TEST_F(StoreSearchTest, EmptyChainIsRefused) {
  Populate();
  SearchClause chain;
  chain.kind = Kind::kChain;
  chain.param = "subject";
  chain.target_type = "Patient";
  EXPECT_TRUE(FailsWith(store_->Search(Q("Observation", {chain})), ErrorCode::kInvalidParameter));
  chain.kind = Kind::kHas;
  EXPECT_TRUE(FailsWith(store_->Search(Q("Patient", {chain})), ErrorCode::kInvalidParameter));
}

TEST_F(StoreSearchTest, PatientNarrowingConfinesMatchesAndTotals) {
  Populate();
  SearchQuery q = Q("Observation");
  q.patients = std::vector<std::string>{"p1"};
  q.total = true;
  auto page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), ElementsAre("o1", "o2"));
  EXPECT_EQ(page.total, 2);
  EXPECT_FALSE(page.more);

  q.count = 1;
  page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), ElementsAre("o1"));
  EXPECT_EQ(page.total, 2);
  EXPECT_TRUE(page.more);

  // With a clause that would match other compartments too.
  q = Q("Observation", {C(Kind::kToken, "code", {Code("8867-4")})});
  q.patients = std::vector<std::string>{"p2"};
  q.total = true;
  page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), ElementsAre("o3"));
  EXPECT_EQ(page.total, 1);

  // A Patient is in its own compartment only; Group-subject o4 is in none.
  q = Q("Patient");
  q.patients = std::vector<std::string>{"p1"};
  EXPECT_THAT(Ids(q), ElementsAre("p1"));
  q = Q("Observation", {C(Kind::kToken, "code", {Code("X")})});
  q.patients = std::vector<std::string>{"p1"};
  EXPECT_THAT(Ids(q), IsEmpty());
  // Reference data outside the compartment definition is not in it either.
  q = Q("Organization");
  q.patients = std::vector<std::string>{"p1"};
  EXPECT_THAT(Ids(q), IsEmpty());
  q = Q("RiskAssessment");
  q.patients = std::vector<std::string>{"p2"};
  EXPECT_THAT(Ids(q), ElementsAre("ra2", "ra3"));

  // A set of compartments (a clinician's patients), and the empty set.
  q = Q("Observation");
  q.patients = std::vector<std::string>{"p1", "p2"};
  q.total = true;
  page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), ElementsAre("o1", "o2", "o3"));
  EXPECT_EQ(page.total, 3);
  q.patients = std::vector<std::string>{};
  page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), IsEmpty());
  EXPECT_EQ(page.total, 0);
  q = Q("Observation", {C(Kind::kToken, "code", {Code("8867-4")})});
  q.patients = std::vector<std::string>{"p2", "nobody"};
  EXPECT_THAT(Ids(q), ElementsAre("o3"));
}

// A patient-scoped :not (what a patient's consent hides from one accessor):
// excluded in that patient's compartment only, and never counted.
TEST_F(StoreSearchTest, PatientScopedNotExcludesOnlyInThoseCompartments) {
  Populate();
  SearchClause hide = C(Kind::kToken, "code", {Code("8867-4")}, "not");
  hide.narrow_patients = std::vector<std::string>{"p1"};
  SearchQuery q = Q("Observation", {hide});
  q.patients = std::vector<std::string>{"p1", "p2"};
  q.total = true;
  auto page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), ElementsAre("o2", "o3"));
  EXPECT_EQ(page.total, 2);
  // Unconfined: o4 and o5 (in no hidden compartment) stay.
  q = Q("Observation", {hide});
  EXPECT_THAT(Ids(q), ElementsAre("o2", "o3", "o4", "o5"));
  // Without values: every resource in those compartments.
  SearchClause out = C(Kind::kToken, "code", {}, "not");
  out.narrow_patients = std::vector<std::string>{"p1"};
  q = Q("Observation", {out});
  q.total = true;
  page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), ElementsAre("o3", "o4", "o5"));
  EXPECT_EQ(page.total, 3);
  // Scoped to no patient: excludes nothing.
  hide.narrow_patients = std::vector<std::string>{};
  q = Q("Observation", {hide});
  EXPECT_THAT(Ids(q), ElementsAre("o1", "o2", "o3", "o4", "o5"));
}

TEST_F(StoreSearchTest, CompartmentFollowsTheCurrentVersion) {
  Populate();
  // o1 moves from p1 to p2.
  store_
      ->Update(
          {"t1", "Observation", "o1"},
          J(Observation("Patient/p2", "http://loinc.org", "8867-4", "Heart rate", "final", "", "")),
          std::nullopt, false)
      .value();
  SearchQuery q = Q("Observation");
  q.patients = std::vector<std::string>{"p1"};
  EXPECT_THAT(Ids(q), ElementsAre("o2"));
  q.patients = std::vector<std::string>{"p2"};
  EXPECT_THAT(Ids(q), ElementsAre("o1", "o3"));
}

// ---------------------------------------------------------------------------------------------
// Sorting and paging

TEST_F(StoreSearchTest, SortAscendingDescendingNullsLast) {
  Populate();
  auto sorted = [&](SortKey::Kind kind, const std::string& param, bool desc) {
    SearchQuery q = Q("Observation");
    q.sort.push_back({kind, param, desc});
    return Ids(q);
  };
  EXPECT_THAT(sorted(SortKey::Kind::kDate, "date", false),
              ElementsAre("o5", "o1", "o3", "o2", "o4"));
  EXPECT_THAT(sorted(SortKey::Kind::kDate, "date", true),
              ElementsAre("o2", "o3", "o1", "o5", "o4"));
  EXPECT_THAT(sorted(SortKey::Kind::kNumber, "value-quantity", false),
              ElementsAre("o5", "o1", "o2", "o3", "o4"));
  EXPECT_THAT(sorted(SortKey::Kind::kNumber, "value-quantity", true),
              ElementsAre("o3", "o2", "o1", "o5", "o4"));
  // Ties are ordered by id.
  EXPECT_THAT(sorted(SortKey::Kind::kToken, "status", false),
              ElementsAre("o5", "o1", "o2", "o4", "o3"));
  EXPECT_THAT(sorted(SortKey::Kind::kToken, "status", true),
              ElementsAre("o3", "o1", "o2", "o4", "o5"));
  EXPECT_THAT(sorted(SortKey::Kind::kId, "_id", true), ElementsAre("o5", "o4", "o3", "o2", "o1"));
  EXPECT_THAT(sorted(SortKey::Kind::kReference, "subject", false),
              ElementsAre("o4", "o1", "o2", "o3", "o5"));  // Group/g1 < Patient/p1 < ...

  // Two keys: status, then date descending.
  SearchQuery q = Q("Observation");
  q.sort = {{SortKey::Kind::kToken, "status", false}, {SortKey::Kind::kDate, "date", true}};
  EXPECT_THAT(Ids(q), ElementsAre("o5", "o2", "o1", "o4", "o3"));

  // Strings sort by their normalized form.
  q = Q("Organization");
  q.sort = {{SortKey::Kind::kString, "name", true}};
  EXPECT_THAT(Ids(q), ElementsAre("org2", "org3", "org1"));
}

TEST_F(StoreSearchTest, SortByLastUpdated) {
  Create("Patient", "b", kPatients[0][1]);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  Create("Patient", "a", kPatients[1][1]);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  Create("Patient", "c", kPatients[2][1]);
  SearchQuery q = Q("Patient");
  q.sort = {{SortKey::Kind::kLastUpdated, "_lastUpdated", false}};
  EXPECT_THAT(Ids(q), ElementsAre("b", "a", "c"));
  q.sort[0].descending = true;
  EXPECT_THAT(Ids(q), ElementsAre("c", "a", "b"));
}

TEST_F(StoreSearchTest, OffsetCountMoreTotal) {
  Populate();
  SearchQuery q = Q("Observation");
  q.count = 2;
  q.total = true;
  auto page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), ElementsAre("o1", "o2"));
  EXPECT_TRUE(page.more);
  EXPECT_EQ(page.total, 5);
  q.offset = 2;
  page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), ElementsAre("o3", "o4"));
  EXPECT_TRUE(page.more);
  q.offset = 4;
  page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), ElementsAre("o5"));
  EXPECT_FALSE(page.more);
  EXPECT_EQ(page.total, 5);
  q.offset = 10;
  page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), IsEmpty());
  EXPECT_FALSE(page.more);
  EXPECT_EQ(page.total, 5);
  // _count=0: only the total.
  q.offset = 0;
  q.count = 0;
  page = store_->Search(q).value();
  EXPECT_THAT(IdsOf(page), IsEmpty());
  EXPECT_TRUE(page.more);
  EXPECT_EQ(page.total, 5);
  // Exactly count matches: no more.
  q.count = 5;
  page = store_->Search(q).value();
  EXPECT_EQ(page.matches.size(), 5u);
  EXPECT_FALSE(page.more);
  // Without total: none.
  q.total = false;
  EXPECT_EQ(store_->Search(q)->total, std::nullopt);
  // Total of a filtered query.
  q = Q("Observation", {C(Kind::kToken, "code", {Code("8867-4")})});
  q.total = true;
  q.count = 1;
  page = store_->Search(q).value();
  EXPECT_EQ(page.total, 3);
  EXPECT_TRUE(page.more);
}

TEST_F(StoreSearchTest, MatchesAreCurrentDecryptedVersions) {
  Populate();
  store_->Update({"t1", "Patient", "p2"}, J(kPatients[1][1]), std::nullopt, false).value();
  auto page = store_->Search(Q("Patient", {C(Kind::kId, "_id", {Code("p2")})})).value();
  ASSERT_EQ(page.matches.size(), 1u);
  EXPECT_EQ(page.matches[0].version, 2);
  EXPECT_FALSE(page.matches[0].deleted);
  EXPECT_THAT(page.matches[0].json, ::testing::HasSubstr(R"("family":"Beta")"));
  EXPECT_THAT(page.matches[0].patients, ElementsAre("p2"));
}

// ---------------------------------------------------------------------------------------------
// The index follows writes

TEST_F(StoreSearchTest, UpdateReplacesAndDeleteRemovesIndexRows) {
  Populate();
  auto family = [&](const char* f) {
    return Ids("Patient", {Blind(Kind::kString, "family", {Text(f)})});
  };
  ASSERT_THAT(family("alpha"), ElementsAre("p1"));
  store_
      ->Update({"t1", "Patient", "p1"},
               J(R"({"resourceType":"Patient","name":[{"family":"Gamma"}],"gender":"female",
                       "identifier":[{"system":"urn:mrn","value":"MRN-1"}]})"),
               std::nullopt, false)
      .value();
  EXPECT_THAT(family("alpha"), IsEmpty());
  EXPECT_THAT(family("gamma"), ElementsAre("p1"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "given", {Text("anna")})}), IsEmpty());
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kDate, "birthdate", {BlindDate("1980")})}),
              ElementsAre("p3"));

  store_->Delete({"t1", "Patient", "p1"}, std::nullopt).value();
  EXPECT_THAT(family("gamma"), IsEmpty());
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kToken, "identifier", {Code("MRN-1")})}), IsEmpty());
  EXPECT_THAT(Ids("Patient", {C(Kind::kToken, "gender", {Code("female")})}), IsEmpty());
  EXPECT_THAT(Ids("Patient", {C(Kind::kId, "_id", {Code("p1")})}), IsEmpty());
  EXPECT_THAT(Ids("Patient", {}), ElementsAre("p2", "p3"));
  // :missing / :not do not bring a deleted resource back.
  EXPECT_THAT(Ids("Patient", {Missing(Kind::kToken, "gender", true)}), ElementsAre("p3"));
  EXPECT_THAT(Ids("Patient", {C(Kind::kToken, "gender", {Code("male")}, "not")}),
              ElementsAre("p3"));
  // A _has through a deleted Observation no longer matches.
  store_->Delete({"t1", "Observation", "o3"}, std::nullopt).value();
  EXPECT_THAT(
      Ids("Patient", {Has("Observation", "patient", C(Kind::kToken, "code", {Code("8867-4")}))}),
      ElementsAre("p3"));

  // Re-created: indexed again.
  store_->Update({"t1", "Patient", "p1"}, J(kPatients[0][1]), std::nullopt, true).value();
  EXPECT_THAT(family("alpha"), ElementsAre("p1"));
}

TEST_F(StoreSearchTest, TenantsHaveSeparateIndexes) {
  Populate();
  Create("Patient", "q1", kPatients[0][1], "t2");
  EXPECT_THAT(Ids(Q("Patient", {Blind(Kind::kString, "family", {Text("alpha")})}, "t2")),
              ElementsAre("q1"));
  EXPECT_THAT(Ids(Q("Patient", {Blind(Kind::kToken, "identifier", {Code("MRN-1")})}, "t2")),
              ElementsAre("q1"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kToken, "identifier", {Code("MRN-1")})}),
              ElementsAre("p1"));
}

TEST_F(StoreSearchTest, BlindIndexLeavesNoClearTextOnDisk) {
  Create("Patient", "blind-canary-7731",
         R"({"resourceType":"Patient","name":[{"family":"Zqxmarker","given":["Qwvgiven"]}],
             "identifier":[{"system":"urn:zqx","value":"MRN-ZQX"}],
             "telecom":[{"system":"email","value":"zqx@mail.example"}],
             "address":[{"city":"Zqxcity"}],"birthDate":"1971-03-04"})");
  // The search works, so the index rows exist.
  ASSERT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("zqxm")})}),
              ElementsAre("blind-canary-7731"));
  ASSERT_THAT(Ids("Patient", {Blind(Kind::kToken, "identifier", {Code("MRN-ZQX")})}),
              ElementsAre("blind-canary-7731"));
  for (bool open : {true, false}) {
    SCOPED_TRACE(open ? "store open" : "store closed");
    if (!open) store_.reset();
    EXPECT_TRUE(std::filesystem::exists(DbPath()));
    if (open) {
      EXPECT_TRUE(std::filesystem::exists(DbPath() + "-wal"));
    }
    const std::string bytes = RawDatabaseBytes();
    // Ids are in clear: finding this one shows the scan sees the data.
    EXPECT_NE(bytes.find("blind-canary-7731"), std::string::npos);
    for (const char* secret :
         {"Zqxmarker", "zqxmarker", "ZQXMARKER", "zqxm", "MRN-ZQX", "mrn-zqx", "Qwvgiven",
          "qwvgiven", "zqx@mail", "Zqxcity", "zqxcity", "1971-03-04", "1971-03"}) {
      EXPECT_EQ(bytes.find(secret), std::string::npos) << secret;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Transactions

WriteOp CreateOp(const std::string& type, const std::string& id, std::string_view body) {
  WriteOp op;
  op.kind = WriteOp::Kind::kCreate;
  op.key = {"t1", type, id};
  op.resource = J(body);
  return op;
}

SearchQuery Condition(const std::string& type, std::vector<SearchClause> clauses) {
  return Q(type, std::move(clauses));
}

TEST_F(StoreSearchTest, TransactionIsAtomic) {
  Populate();
  std::vector<WriteOp> ops;
  ops.push_back(CreateOp("Patient", "tx1",
                         R"({"resourceType":"Patient","name":[{"family":"Txone"}],
                             "identifier":[{"system":"urn:mrn","value":"MRN-TX"}]})"));
  ops.push_back(CreateOp(
      "Observation", "txo",
      Observation("Patient/tx1", "http://loinc.org", "8867-4", "Heart rate", "final", "", "")));
  WriteOp stale;
  stale.kind = WriteOp::Kind::kUpdate;
  stale.key = {"t1", "Patient", "p1"};
  stale.resource = J(kPatients[1][1]);
  stale.if_match = 99;
  ops.push_back(std::move(stale));
  auto r = store_->Transaction(std::move(ops));
  ASSERT_TRUE(FailsWith(r, ErrorCode::kPreconditionFailed));
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr("entry 2"));

  EXPECT_TRUE(FailsWith(store_->Read({"t1", "Patient", "tx1"}), ErrorCode::kNotFound));
  EXPECT_TRUE(FailsWith(store_->Read({"t1", "Observation", "txo"}), ErrorCode::kNotFound));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("txone")})}), IsEmpty());
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kToken, "identifier", {Code("MRN-TX")})}), IsEmpty());
  EXPECT_THAT(Ids("Observation", {C(Kind::kReference, "subject", {Ref("Patient", "tx1")})}),
              IsEmpty());
  EXPECT_THAT(Ids("Patient", {}), ElementsAre("p1", "p2", "p3"));
  EXPECT_EQ(store_->Read({"t1", "Patient", "p1"})->version, 1);
  SearchQuery q = Q("Observation");
  q.patients = std::vector<std::string>{"tx1"};
  EXPECT_THAT(Ids(q), IsEmpty());

  // A conflicting create as the last op rolls back the same way.
  std::vector<WriteOp> again;
  again.push_back(CreateOp("Patient", "tx1", R"({"resourceType":"Patient"})"));
  again.push_back(CreateOp("Patient", "p2", R"({"resourceType":"Patient"})"));
  EXPECT_TRUE(FailsWith(store_->Transaction(std::move(again)), ErrorCode::kVersionConflict));
  EXPECT_TRUE(FailsWith(store_->Read({"t1", "Patient", "tx1"}), ErrorCode::kNotFound));

  // And a good one is applied in full, searchable at once.
  std::vector<WriteOp> good;
  good.push_back(CreateOp("Patient", "tx1", R"({"resourceType":"Patient",
      "name":[{"family":"Txone"}]})"));
  good.push_back(CreateOp(
      "Observation", "txo",
      Observation("Patient/tx1", "http://loinc.org", "8867-4", "Heart rate", "final", "", "")));
  auto ok = store_->Transaction(std::move(good));
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 2u);
  EXPECT_TRUE((*ok)[0].created);
  EXPECT_EQ((*ok)[1].stored.version, 1);
  EXPECT_THAT((*ok)[1].stored.patients, ElementsAre("tx1"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("txone")})}),
              ElementsAre("tx1"));
  EXPECT_THAT(Ids(q), ElementsAre("txo"));
}

TEST_F(StoreSearchTest, ConditionalCreate) {
  Populate();
  auto mrn = [](const char* v) {
    return Blind(Kind::kToken, "identifier", {SysCode("urn:mrn", v)});
  };
  // One match: that resource, nothing written.
  WriteOp one = CreateOp("Patient", "new1", kPatients[0][1]);
  one.condition = Condition("Patient", {mrn("MRN-1")});
  auto r = store_->Transaction({one});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE((*r)[0].matched_existing);
  EXPECT_FALSE((*r)[0].created);
  EXPECT_EQ((*r)[0].stored.id, "p1");
  EXPECT_EQ((*r)[0].stored.version, 1);
  EXPECT_EQ(store_->Read({"t1", "Patient", "p1"})->version, 1);
  EXPECT_TRUE(FailsWith(store_->Read({"t1", "Patient", "new1"}), ErrorCode::kNotFound));

  // No match: created under the op's id.
  WriteOp none = CreateOp("Patient", "new1",
                          R"({"resourceType":"Patient",
                              "identifier":[{"system":"urn:mrn","value":"MRN-9"}]})");
  none.condition = Condition("Patient", {mrn("MRN-9")});
  r = store_->Transaction({none});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE((*r)[0].matched_existing);
  EXPECT_TRUE((*r)[0].created);
  EXPECT_EQ((*r)[0].stored.id, "new1");
  EXPECT_THAT(Ids("Patient", {mrn("MRN-9")}), ElementsAre("new1"));
  // The same request again finds what the first one created.
  r = store_->Transaction({none});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE((*r)[0].matched_existing);
  EXPECT_EQ((*r)[0].stored.id, "new1");

  // Two matches: refused, nothing written.
  WriteOp two = CreateOp("Patient", "new2", kPatients[0][1]);
  two.condition = Condition("Patient", {Blind(Kind::kString, "family", {Text("alph")})});
  EXPECT_TRUE(FailsWith(store_->Transaction({two}), ErrorCode::kPreconditionFailed));
  EXPECT_TRUE(FailsWith(store_->Read({"t1", "Patient", "new2"}), ErrorCode::kNotFound));

  // A condition sees the writes of earlier ops of the same transaction.
  WriteOp first = CreateOp("Patient", "x1",
                           R"({"resourceType":"Patient",
                               "identifier":[{"system":"urn:mrn","value":"MRN-X"}]})");
  WriteOp second = first;
  second.key.id = "x2";
  second.condition = Condition("Patient", {mrn("MRN-X")});
  r = store_->Transaction({first, second});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE((*r)[1].matched_existing);
  EXPECT_EQ((*r)[1].stored.id, "x1");
  EXPECT_TRUE(FailsWith(store_->Read({"t1", "Patient", "x2"}), ErrorCode::kNotFound));
}

TEST_F(StoreSearchTest, ConditionalUpdate) {
  Populate();
  WriteOp up;
  up.kind = WriteOp::Kind::kUpdate;
  up.key = {"t1", "Patient", "fresh"};
  up.resource = J(R"({"resourceType":"Patient","name":[{"family":"Betanew"}],
                      "identifier":[{"system":"urn:mrn","value":"MRN-2"}]})");
  up.condition = Condition("Patient", {Blind(Kind::kToken, "identifier", {Code("MRN-2")})});
  auto r = store_->Transaction({up});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE((*r)[0].created);
  EXPECT_EQ((*r)[0].stored.id, "p2");
  EXPECT_EQ((*r)[0].stored.version, 2);
  EXPECT_EQ(store_->Read({"t1", "Patient", "p2"})->version, 2);
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kString, "family", {Text("betanew")})}),
              ElementsAre("p2"));
  EXPECT_TRUE(FailsWith(store_->Read({"t1", "Patient", "fresh"}), ErrorCode::kNotFound));

  // No match: created under the op's id.
  up.condition = Condition("Patient", {Blind(Kind::kToken, "identifier", {Code("MRN-NONE")})});
  r = store_->Transaction({up});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE((*r)[0].created);
  EXPECT_EQ((*r)[0].stored.id, "fresh");

  // Several matches: refused.
  up.condition = Condition("Patient", {C(Kind::kToken, "identifier", {SysCode("urn:mrn", "")})});
  EXPECT_TRUE(FailsWith(store_->Transaction({up}), ErrorCode::kPreconditionFailed));

  // A body id that is neither the match's nor the op's.
  WriteOp mismatch = up;
  mismatch.condition = Condition("Patient", {C(Kind::kId, "_id", {Code("p3")})});
  mismatch.resource.Set("id", json::Value::String("other"));
  EXPECT_TRUE(FailsWith(store_->Transaction({mismatch}), ErrorCode::kIdMismatch));
  EXPECT_EQ(store_->Read({"t1", "Patient", "p3"})->version, 1);
}

TEST_F(StoreSearchTest, ConditionalDelete) {
  Populate();
  WriteOp del;
  del.kind = WriteOp::Kind::kDelete;
  del.key = {"t1", "Patient", ""};
  del.condition = Condition("Patient", {Blind(Kind::kString, "family", {Text("alphonse")})});
  auto r = store_->Transaction({del});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].stored.id, "p3");
  EXPECT_TRUE((*r)[0].stored.deleted);
  EXPECT_EQ((*r)[0].stored.version, 2);
  EXPECT_TRUE(store_->Read({"t1", "Patient", "p3"})->deleted);
  EXPECT_THAT(Ids("Patient", {}), ElementsAre("p1", "p2"));

  // Nothing matches now: a no-op.
  r = store_->Transaction({del});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].stored.version, 0);
  EXPECT_EQ((*r)[0].stored.id, "");

  // Several matches: refused, nothing deleted.
  del.condition = Condition("Patient", {Missing(Kind::kToken, "gender", false)});
  EXPECT_TRUE(FailsWith(store_->Transaction({del}), ErrorCode::kPreconditionFailed));
  EXPECT_THAT(Ids("Patient", {}), ElementsAre("p1", "p2"));
}

TEST_F(StoreSearchTest, CheckCallbackRefusalFailsTheWholeTransaction) {
  Populate();
  std::vector<std::vector<std::string>> seen;
  auto refuse_p1 = [&](const std::vector<std::string>& patients) -> absl::Status {
    seen.push_back(patients);
    for (const auto& p : patients) {
      if (p == "p1") return Error(ErrorCode::kForbidden, "not yours");
    }
    return absl::OkStatus();
  };
  std::vector<WriteOp> ops;
  ops.push_back(CreateOp("Patient", "ck1", R"({"resourceType":"Patient"})"));
  WriteOp up;
  up.kind = WriteOp::Kind::kUpdate;
  up.key = {"t1", "Observation", "o3"};  // p2's: allowed
  up.resource =
      J(Observation("Patient/p2", "http://loinc.org", "8867-4", "Heart rate", "final", "", ""));
  up.check = refuse_p1;
  ops.push_back(up);
  WriteOp del;
  del.kind = WriteOp::Kind::kDelete;
  del.key = {"t1", "Observation", "o1"};  // p1's: refused
  del.check = refuse_p1;
  ops.push_back(del);
  auto r = store_->Transaction(ops);
  EXPECT_TRUE(FailsWith(r, ErrorCode::kForbidden));
  // o3 is checked as it exists and as it will be stored; o1 as it exists.
  EXPECT_THAT(seen, ElementsAre(ElementsAre("p2"), ElementsAre("p2"), ElementsAre("p1")));
  EXPECT_TRUE(FailsWith(store_->Read({"t1", "Patient", "ck1"}), ErrorCode::kNotFound));
  EXPECT_EQ(store_->Read({"t1", "Observation", "o3"})->version, 1);
  EXPECT_FALSE(store_->Read({"t1", "Observation", "o1"})->deleted);
  EXPECT_THAT(Ids("Observation", {C(Kind::kToken, "status", {Code("preliminary")})}),
              ElementsAre("o3"));

  // A conditional op's check sees the matched resource's compartments.
  seen.clear();
  WriteOp cond = CreateOp("Observation", "o-new",
                          Observation("Patient/p1", "urn:x", "y", "z", "final", "", ""));
  cond.condition = Condition("Observation", {C(Kind::kToken, "code", {Code("29463-7")})});
  cond.check = refuse_p1;
  EXPECT_TRUE(FailsWith(store_->Transaction({cond}), ErrorCode::kForbidden));
  EXPECT_THAT(seen, ElementsAre(ElementsAre("p1")));

  // Without the refusal the same ops go through.
  ops.pop_back();
  ASSERT_TRUE(store_->Transaction(ops).ok());
  EXPECT_EQ(store_->Read({"t1", "Observation", "o3"})->version, 2);
}

// ---------------------------------------------------------------------------------------------
// Time budget

TEST_F(StoreSearchTest, TimeBudgetInterruptsACostlyQuery) {
  Open(/*read_connections=*/1);  // the budget must be gone from the one reader afterwards
  constexpr int kOrganizations = 3000;
  std::vector<WriteOp> ops;
  for (int i = 0; i < kOrganizations; ++i) {
    ops.push_back(CreateOp("Organization", "org" + std::to_string(i),
                           R"({"resourceType":"Organization","name":"Organization number )" +
                               std::to_string(i * 7919 % kOrganizations) + R"(","alias":["alias )" +
                               std::to_string(i) + R"("]})"));
  }
  ASSERT_TRUE(store_->Transaction(std::move(ops)).ok());

  SearchQuery q = Q("Organization", {C(Kind::kString, "name", {Text("numb")}, "contains")});
  q.sort = {{SortKey::Kind::kString, "name", true}, {SortKey::Kind::kToken, "identifier", false}};
  q.total = true;
  q.count = 0;  // only RunSearch's work is timed: no resource is read
  const auto start = std::chrono::steady_clock::now();
  auto unbudgeted = store_->Search(q);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(unbudgeted.ok()) << unbudgeted.status();
  EXPECT_EQ(unbudgeted->total, kOrganizations);
  if (elapsed < std::chrono::milliseconds(10)) {
    GTEST_SKIP() << "the query took only "
                 << std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count()
                 << " us: a 1 ms budget would not be a deterministic test";
  }
  q.time_budget_ms = 1;
  EXPECT_TRUE(FailsWith(store_->Search(q), ErrorCode::kTooCostly));
  // The budget was removed from the connection: the same query without one runs.
  q.time_budget_ms = 0;
  auto again = store_->Search(q);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->total, kOrganizations);
  // A generous budget is no obstacle.
  q.time_budget_ms = 60000;
  EXPECT_TRUE(store_->Search(q).ok());
}

// ---- crypto-shredding
// ----------------------------------------------------------------------------

TEST_F(StoreSearchTest, ErasedPatientLeavesNothingToReadSearchOrList) {
  Populate();
  store_
      ->Update({"t1", "Patient", "p1"},
               J(R"({"resourceType":"Patient","name":[{"family":"Alpha2"}]})"), std::nullopt, false)
      .value();
  auto destroyed = keys_.ring->ErasePatient("t1", "p1");
  ASSERT_TRUE(destroyed.ok()) << destroyed.status();
  EXPECT_EQ(*destroyed, 1u);
  auto ids = keys_.ring->PatientKeyIds("t1", "p1").value();
  auto report = store_->ErasePatient("t1", "p1", ids);
  ASSERT_TRUE(report.ok()) << report.status();
  // Patient/p1 (2 versions), Observations o1 and o2, and a RiskAssessment.
  EXPECT_EQ(report->resources, 4u);
  EXPECT_EQ(report->versions, 5u);

  for (const char* obs : {"o1", "o2"}) {
    EXPECT_EQ(CodeOf(store_->Read({"t1", "Observation", obs}).status()), ErrorCode::kErased);
    EXPECT_EQ(CodeOf(store_->ReadVersion({"t1", "Observation", obs}, 1).status()),
              ErrorCode::kErased);
  }
  EXPECT_EQ(CodeOf(store_->Read({"t1", "Patient", "p1"}).status()), ErrorCode::kErased);
  EXPECT_EQ(CodeOf(store_->History({.tenant = "t1", .type = "Patient", .id = "p1"}).status()),
            ErrorCode::kErased);
  // Lists, searches by identifying (blind-indexed) and plain values, and history.
  EXPECT_THAT(Ids("Patient", {}), ElementsAre("p2", "p3"));
  EXPECT_THAT(Ids("Patient", {Blind(Kind::kToken, "identifier", {Code("MRN-1")})}), IsEmpty());
  EXPECT_THAT(Ids("Observation", {C(Kind::kReference, "subject", {Ref("Patient", "p1")})}),
              IsEmpty());
  for (const auto& id : Ids("Observation", {})) EXPECT_NE(id, "o1");
  auto history = store_->History({.tenant = "t1", .count = 500}).value();
  for (const auto& e : history.entries) {
    EXPECT_FALSE(e.version.id == "p1" || e.version.id == "o1" || e.version.id == "o2")
        << e.version.type << "/" << e.version.id;
  }
  // Patient/p2 and the rest are untouched.
  EXPECT_TRUE(store_->Read({"t1", "Patient", "p2"}).ok());
  EXPECT_TRUE(store_->Read({"t1", "Observation", "o3"}).ok());

  // Running it again finishes nothing new; nothing new about the patient can be written.
  EXPECT_EQ(store_->ErasePatient("t1", "p1", ids)->resources, 0u);
  auto again = store_->Create({"t1", "Patient", "p1"},
                              J(R"({"resourceType":"Patient","name":[{"family":"Again"}]})"));
  EXPECT_EQ(CodeOf(again.status()), ErrorCode::kErased);
  auto about =
      store_->Create({"t1", "Observation", "late"},
                     J(R"({"resourceType":"Observation","status":"final","code":{"text":"x"},)"
                       R"("subject":{"reference":"Patient/p1"}})"));
  EXPECT_EQ(CodeOf(about.status()), ErrorCode::kErased);
}

TEST_F(StoreSearchTest, ErasureRemovesAGroupNamingThePatientAndReplaysMentioningThem) {
  Populate();
  std::string members;
  for (int i = 0; i < 20; ++i) {
    members += std::string(i ? "," : "") + R"({"entity":{"reference":"Patient/m)" +
               std::to_string(i) + R"("}})";
  }
  Create("Group", "big",
         R"({"resourceType":"Group","type":"person","actual":true,"member":[)" + members +
             R"(,{"entity":{"reference":"Patient/p2"}}]})");
  store_
      ->PutIdempotency(
          "t1", "app", "k1",
          {.status = 201, .response_body = R"({"subject":{"reference":"Patient/p2"}})"})
      .value();
  store_->PutIdempotency("t1", "app", "k2", {.status = 201, .response_body = R"({"other":1})"})
      .value();
  ASSERT_TRUE(keys_.ring->ErasePatient("t1", "p2").ok());
  auto report = store_->ErasePatient("t1", "p2", keys_.ring->PatientKeyIds("t1", "p2").value());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(CodeOf(store_->Read({"t1", "Group", "big"}).status()), ErrorCode::kErased)
      << "a Group sealed under the tenant key but naming the patient";
  EXPECT_EQ(report->idempotency_records, 1u);
  EXPECT_FALSE(store_->GetIdempotency("t1", "app", "k1").value().has_value());
  EXPECT_TRUE(store_->GetIdempotency("t1", "app", "k2").value().has_value());
}

TEST_F(StoreSearchTest, PurgeTenantRemovesEveryRowOfTheTenantOnly) {
  Populate();
  Create("Patient", "x1", R"({"resourceType":"Patient","name":[{"family":"Other"}]})", "t2");
  auto n = store_->PurgeTenant("t1");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_GT(*n, 5u);
  EXPECT_THAT(Ids("Patient", {}), IsEmpty());
  EXPECT_EQ(CodeOf(store_->Read({"t1", "Patient", "p1"}).status()), ErrorCode::kNotFound);
  EXPECT_TRUE(store_->Read({"t2", "Patient", "x1"}).ok());
}

TEST_F(StoreSearchTest, ErasureSurvivesAReopenAndAStaleCache) {
  Populate();
  ASSERT_TRUE(store_->Read({"t1", "Observation", "o1"}).ok());  // cached, sealed
  ASSERT_TRUE(keys_.ring->ErasePatient("t1", "p1").ok());
  // Keys destroyed, rows not yet removed (an interrupted erasure): reads already refuse.
  EXPECT_EQ(CodeOf(store_->Read({"t1", "Observation", "o1"}).status()), ErrorCode::kErased);
  auto page = store_->Search(Q("Observation"));
  ASSERT_TRUE(page.ok()) << page.status();
  for (const auto& m : page->matches) EXPECT_NE(m.id, "o1");
  Open();
  EXPECT_EQ(CodeOf(store_->Read({"t1", "Observation", "o1"}).status()), ErrorCode::kErased);
}

}  // namespace
}  // namespace fhirward::store
