#include "policy/scenario.h"

#include <fstream>
#include <iterator>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fhirward::policy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr std::string_view kPolicy = R"toml(
[policy]
id = "scenario-test"
version = "3"
default_roles = ["app"]

[roles.app]
relationship = "scopes"
scopes = ["patient/*.rs"]
permissions = ["*.read", "*.search"]

[roles.doc]
relationship = "care"
scopes = ["user/*.cruds"]
permissions = ["*.*"]
masked = ["Patient.telecom"]
denied_labels = ["PSY"]
break_glass = true

[roles.desk]
relationship = "none"
scopes = ["user/*.cruds"]
permissions = ["Patient.*"]

[[rule]]
id = "desk-hours"
roles = ["desk"]
unless = { hours = "08:00-18:00" }

[[relationship]]
id = "team"
type = "CareTeam"
actor = "participant"

[break_glass]
enabled = true
min_justification = 10
)toml";

std::shared_ptr<const PolicySet> Policy() {
  static const std::shared_ptr<const PolicySet> policy = [] {
    PolicyLoad load = ParsePolicy(kPolicy, "test.toml");
    for (const auto& e : load.errors) ADD_FAILURE() << e.ToString();
    return load.policy;
  }();
  return policy;
}

ScenarioRun RunText(std::string_view text) { return RunScenarioText(Policy(), text, "s.toml"); }

std::string Report(const ScenarioRun& run) {
  std::ostringstream out;
  PrintReport(run, out);
  return out.str();
}

std::vector<std::string> ErrorStrings(const ScenarioRun& run) {
  std::vector<std::string> out;
  for (const auto& e : run.errors) out.push_back(e.ToString());
  return out;
}

constexpr std::string_view kDocReads = R"toml(
[[scenario]]
name = "doc reads"
[scenario.principal]
roles = ["doc"]
scopes = "user/*.cruds"
fhir_user = "Practitioner/d1"
[scenario.request]
interaction = "read"
type = "Observation"
id = "o1"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.facts]
related = { team = ["p2", "p1"] }
[scenario.resource]
patients = ["p1"]
labels = ["PSY"]
[scenario.expect]
decision = "allow"
role = "doc"
rule = "role:doc permission:*.* scope:user/*.cruds"
rule_prefix = "role:doc"
patients = ["p1", "p2"]
confined = true
masked = ["Patient.telecom", "Patient.text"]
denied_labels = ["PSY"]
consent = true
break_glass = false
alert = false
resource_decision = "deny"
resource_reason = "security_label:PSY"
)toml";

TEST(Scenario, PassingScenario) {
  ScenarioRun run = RunText(kDocReads);
  EXPECT_THAT(ErrorStrings(run), IsEmpty());
  ASSERT_EQ(run.results.size(), 1u);
  const ScenarioResult& r = run.results[0];
  EXPECT_TRUE(r.passed) << Report(run);
  EXPECT_EQ(r.name, "doc reads");
  EXPECT_EQ(r.file, "s.toml");
  EXPECT_EQ(r.line, 2);
  EXPECT_EQ(run.passed(), 1);
  EXPECT_EQ(run.failed(), 0);
  EXPECT_EQ(Report(run), "PASS doc reads\n1 passed, 0 failed\n");
}

TEST(Scenario, FailingScenarioNamesEveryDifference) {
  ScenarioRun run = RunText(R"toml(
[[scenario]]
name = "doc without team"
[scenario.principal]
roles = ["doc"]
scopes = "user/*.cruds"
fhir_user = "Practitioner/d1"
[scenario.request]
interaction = "search"
type = "Observation"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.facts]
related = { team = ["p2"] }
[scenario.resource]
patients = ["p1"]
[scenario.expect]
decision = "deny"
role = "desk"
rule_prefix = "rule:"
reason = "no_relationship_to_patient"
deny_code = "insufficient_scope"
patients = ["p1"]
masked = []
consent = false
break_glass = true
alert = true
resource_decision = "allow"
resource_reason = ""
)toml");
  EXPECT_THAT(ErrorStrings(run), IsEmpty());
  ASSERT_EQ(run.results.size(), 1u);
  const ScenarioResult& r = run.results[0];
  EXPECT_FALSE(r.passed);
  EXPECT_EQ(r.line, 2);
  EXPECT_THAT(
      r.failures,
      ElementsAre(
          HasSubstr("decision: expected deny, got allow (scenario-test@3 allow role=doc"),
          "role: expected \"desk\", got \"doc\"",
          "rule: expected a prefix \"rule:\", got \"role:doc permission:*.* scope:user/*.cruds\"",
          "reason: expected \"no_relationship_to_patient\", got \"\"",
          "deny_code: expected \"insufficient_scope\", got \"forbidden\"",
          "patients: expected [p1], got [p2]",
          "masked: expected [], got [Patient.telecom, Patient.text]",
          "consent: expected false, got true", "break_glass: expected true, got false",
          "alert: expected true, got false",
          HasSubstr("resource_decision: expected allow, got deny"),
          "resource_reason: expected \"\", got \"outside_patient_compartment\""));
  EXPECT_EQ(run.passed(), 0);
  EXPECT_EQ(run.failed(), 1);
  const std::string report = Report(run);
  EXPECT_THAT(report, HasSubstr("FAIL s.toml:2 doc without team: decision: expected deny"));
  EXPECT_THAT(report, HasSubstr("; role: expected \"desk\", got \"doc\"; "));
  EXPECT_THAT(report, HasSubstr("\n0 passed, 1 failed\n"));
}

TEST(Scenario, ConfinementChecks) {
  ScenarioRun run = RunText(R"toml(
[[scenario]]
name = "desk is unconfined"
[scenario.principal]
roles = ["desk"]
scopes = "user/*.cruds"
[scenario.request]
interaction = "read"
type = "Patient"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.expect]
decision = "allow"
patients = ["p1"]

[[scenario]]
name = "app is confined"
[scenario.principal]
scopes = "patient/*.rs"
patient = "p1"
[scenario.request]
interaction = "read"
type = "Patient"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.expect]
decision = "allow"
role = "app"
confined = false
)toml");
  EXPECT_THAT(ErrorStrings(run), IsEmpty());
  ASSERT_EQ(run.results.size(), 2u);
  EXPECT_THAT(run.results[0].failures, ElementsAre("patients: expected [p1], got unconfined"));
  EXPECT_THAT(run.results[1].failures,
              ElementsAre("confined: expected false, got confined to [p1]"));
}

TEST(Scenario, TimeOffsetsAndTomlDateTimes) {
  // 17:30 UTC is within the desk's hours (08:00-18:00), 18:30 UTC is not.
  ScenarioRun run = RunText(R"toml(
[[scenario]]
name = "offset inside"
[scenario.principal]
roles = ["desk"]
scopes = "user/*.cruds"
[scenario.request]
interaction = "read"
type = "Patient"
[scenario.environment]
time = "2026-03-02T09:30:00.250-08:00"
[scenario.expect]
decision = "allow"

[[scenario]]
name = "toml date-time outside"
[scenario.principal]
roles = ["desk"]
scopes = "user/*.cruds"
[scenario.request]
interaction = "read"
type = "Patient"
[scenario.environment]
time = 2026-03-02T20:30:00+02:00
[scenario.expect]
decision = "deny"
rule = "rule:desk-hours"
)toml");
  EXPECT_THAT(ErrorStrings(run), IsEmpty());
  for (const auto& r : run.results) EXPECT_TRUE(r.passed) << Report(run);
}

TEST(Scenario, ParseErrorsHaveLinesAndOtherScenariosStillRun) {
  ScenarioRun run = RunText(R"toml(extra = 1
[[scenario]]
name = "bad"
colour = "red"
[scenario.principal]
role = ["doc"]
roles = "doc"
[scenario.request]
interaction = "peek"
type = "Observaton"
[scenario.environment]
time = "2026-02-30T10:00:00Z"
address = "10.0.0.0/8"
[scenario.facts]
related = { teams = ["p1"] }
consents = ['{"resourceType": "Patient"}', '{not json']
break_glass = "maybe"
[scenario.resource]
labels = "R"
[scenario.expect]
decision = "perhaps"
deny_code = "nope"
patients = ["p1"]
confined = false

[[scenario]]
name = "no environment, resource checks without resource"
[scenario.request]
interaction = "read"
type = "Patient"
[scenario.expect]
decision = "allow"
resource_decision = "allow"

[[scenario]]
name = "missing type, time and decision"
[scenario.request]
interaction = "read"
[scenario.environment]
[scenario.expect]

[[scenario]]
name = "capabilities with a type"
[scenario.request]
interaction = "capabilities"
type = "Patient"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.expect]
decision = "allow"

[[scenario]]
name = "good"
[scenario.request]
interaction = "capabilities"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.expect]
decision = "allow"

[[scenario]]
name = "good"
[scenario.request]
interaction = "capabilities"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.expect]
decision = "deny"
)toml");
  EXPECT_THAT(
      ErrorStrings(run),
      ElementsAre(
          "s.toml:1:1: unknown key 'extra' in the top level",
          "s.toml:4:1: unknown key 'colour' in [[scenario]] #1",
          "s.toml:6:1: unknown key 'role' in [scenario.principal]",
          "s.toml:7:9: 'roles' in [scenario.principal] must be an array of strings",
          HasSubstr("s.toml:9:15: unknown interaction 'peek': expected read, vread"),
          "s.toml:10:8: unknown resource type 'Observaton'",
          HasSubstr("s.toml:12:8: invalid 'time': expected an RFC 3339 instant"),
          "s.toml:13:11: invalid address '10.0.0.0/8': expected an IPv4 or IPv6 address",
          "s.toml:15:13: unknown relationship source 'teams' in 'related' (the policy defines "
          "[team])",
          "s.toml:16:13: invalid consent: expected a JSON object with \"resourceType\": "
          "\"Consent\"",
          HasSubstr("s.toml:16:44: invalid consent JSON: "),
          "s.toml:17:15: invalid break_glass 'maybe': expected \"none\" or \"active\"",
          "s.toml:19:10: 'labels' in [scenario.resource] must be an array of strings",
          "s.toml:21:12: invalid decision 'perhaps': expected \"allow\" or \"deny\"",
          HasSubstr("s.toml:22:13: unknown deny_code 'nope'"),
          "s.toml:24:12: 'confined = false' contradicts 'patients'",
          "s.toml:26:1: missing required table [scenario.environment]",
          "s.toml:33:21: 'resource_decision' needs a [scenario.resource] table",
          "s.toml:37:1: missing required key 'type' in [scenario.request] (interaction read)",
          "s.toml:39:1: missing required key 'time' in [scenario.environment] (scenarios must "
          "not depend on the clock)",
          "s.toml:40:1: missing required key 'decision' in [scenario.expect]",
          "s.toml:46:8: 'type' is not allowed for interaction capabilities",
          "s.toml:62:8: duplicate scenario name 'good' (first at line 52)"));
  ASSERT_EQ(run.results.size(), 1u);
  EXPECT_EQ(run.results[0].name, "good");
  EXPECT_TRUE(run.results[0].passed);
  const std::string report = Report(run);
  EXPECT_THAT(report, HasSubstr("ERROR s.toml:1:1: unknown key 'extra' in the top level\n"));
  EXPECT_THAT(report, HasSubstr("PASS good\n1 passed, 0 failed, 23 errors\n"));
}

TEST(Scenario, SyntaxErrorsAndEmptyFiles) {
  ScenarioRun run = RunText("[[scenario]]\nname = \n");
  ASSERT_EQ(run.errors.size(), 1u);
  EXPECT_EQ(run.errors[0].line, 2);
  EXPECT_THAT(run.errors[0].message, HasSubstr("TOML syntax error"));
  EXPECT_THAT(run.results, IsEmpty());

  run = RunText("# nothing\n");
  EXPECT_THAT(ErrorStrings(run), ElementsAre("s.toml: no [[scenario]] in the file"));

  run = RunText("scenario = 1\n");
  EXPECT_THAT(ErrorStrings(run),
              ElementsAre("s.toml:1:12: 'scenario' must be an array of tables ([[scenario]])"));

  run = RunScenarioText(nullptr, kDocReads, "s.toml");
  EXPECT_EQ(run.errors.size(), 1u);
}

TEST(ScenarioFacts, Behaviour) {
  ScenarioFacts facts;
  facts.related["team"] = {"p1", "p2"};
  auto consent = json::Parse(R"({"resourceType": "Consent", "id": "c1"})");
  ASSERT_TRUE(consent.ok());
  facts.consents = {*consent};
  facts.consent_patients = {"p1"};

  RelationshipSource team, other;
  team.id = "team";
  other.id = "other";
  EXPECT_THAT(*facts.RelatedPatients(team, "Practitioner/d1"), ElementsAre("p1", "p2"));
  EXPECT_THAT(*facts.RelatedPatients(other, "Practitioner/d1"), IsEmpty());

  auto c1 = facts.Consents("p1");
  ASSERT_TRUE(c1.ok());
  ASSERT_EQ(c1->size(), 1u);
  EXPECT_EQ((*c1)[0].GetString("id"), "c1");
  EXPECT_THAT(*facts.Consents("p2"), IsEmpty());

  EXPECT_FALSE(facts.ActiveBreakGlass("iss", "u", "c", 1000)->has_value());
  facts.break_glass_active = true;
  auto active = facts.ActiveBreakGlass("iss", "u", "c", 1000);
  ASSERT_TRUE(active.ok() && active->has_value());
  EXPECT_EQ((*active)->id, "bg-scenario");
  EXPECT_EQ((*active)->subject, "u");
  EXPECT_EQ((*active)->client_id, "c");
  EXPECT_LE((*active)->started, 1000);
  EXPECT_GT((*active)->expires, 1000);

  ScenarioFacts fresh;
  BreakGlassEpisode e;
  e.subject = "u";
  e.reason = "because of an emergency";
  auto opened = fresh.OpenBreakGlass(e);
  ASSERT_TRUE(opened.ok());
  EXPECT_EQ(opened->id, "bg-scenario-new");
  EXPECT_EQ(opened->reason, "because of an emergency");
  ASSERT_TRUE(fresh.opened.has_value());
  EXPECT_EQ(fresh.opened->id, "bg-scenario-new");
}

TEST(ScenarioFacts, ScenariosUseThem) {
  ScenarioRun run = RunText(R"toml(
[[scenario]]
name = "consent for a listed patient denies"
[scenario.principal]
roles = ["doc"]
scopes = "user/*.cruds"
fhir_user = "Practitioner/d1"
[scenario.request]
interaction = "search"
type = "Observation"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.facts]
related = { team = ["p1", "p2"] }
consent_patients = ["p2"]
consents = ['''{"resourceType": "Consent", "id": "c9", "status": "active",
  "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                        "code": "patient-privacy"}]},
  "provision": {"type": "deny"}}''']
[scenario.resource]
patients = ["p1"]
[scenario.expect]
decision = "allow"
patients = ["p1"]
resource_decision = "allow"

[[scenario]]
name = "an active episode lifts the relationship"
[scenario.principal]
roles = ["doc"]
scopes = "user/*.cruds"
fhir_user = "Practitioner/d1"
[scenario.request]
interaction = "read"
type = "Observation"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.facts]
break_glass = "active"
[scenario.expect]
decision = "allow"
confined = false
break_glass = true
alert = false

[[scenario]]
name = "a justification opens an episode"
[scenario.principal]
roles = ["doc"]
scopes = "user/*.cruds"
fhir_user = "Practitioner/d1"
purpose_of_use = ["BTG"]
[scenario.request]
interaction = "read"
type = "Observation"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
break_glass_reason = "long enough reason"
[scenario.expect]
decision = "allow"
confined = false
break_glass = true
alert = true
consent = false
)toml");
  EXPECT_THAT(ErrorStrings(run), IsEmpty());
  ASSERT_EQ(run.results.size(), 3u);
  for (const auto& r : run.results) EXPECT_TRUE(r.passed) << Report(run);
}

TEST(RunScenarios, MissingFilesAreErrors) {
  ScenarioRun run = RunScenarios("/nonexistent/policy.toml", {});
  ASSERT_EQ(run.errors.size(), 1u);
  EXPECT_THAT(run.errors[0].ToString(), HasSubstr("/nonexistent/policy.toml: cannot read"));

  run = RunScenarios(FHIRWARD_SOURCE_DIR "/policies/default.toml", {"/nonexistent/scenarios.toml"});
  ASSERT_EQ(run.errors.size(), 1u);
  EXPECT_THAT(run.errors[0].ToString(), HasSubstr("/nonexistent/scenarios.toml: cannot read"));
  EXPECT_THAT(run.results, IsEmpty());
}

TEST(RunScenarios, ShippedScenariosPass) {
  ScenarioRun run = RunScenarios(FHIRWARD_SOURCE_DIR "/policies/default.toml",
                                 {FHIRWARD_SOURCE_DIR "/policies/scenarios/default.toml"});
  const std::string report = Report(run);
  EXPECT_THAT(ErrorStrings(run), IsEmpty()) << report;
  EXPECT_EQ(run.failed(), 0) << report;
  EXPECT_GE(run.results.size(), 20u) << report;
  // Every role of the shipped policy is exercised.
  PolicyLoad load = LoadPolicyFile(FHIRWARD_SOURCE_DIR "/policies/default.toml");
  ASSERT_TRUE(load.policy);
  std::ifstream in(FHIRWARD_SOURCE_DIR "/policies/scenarios/default.toml");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const Role& role : load.policy->roles) {
    EXPECT_THAT(text, HasSubstr("\"" + role.name + "\"")) << "no scenario names role " << role.name;
  }
}

// A rule limited to some types also governs system-level interactions, whose
// results may contain those types (else the system history would bypass it).
TEST(Scenario, TypedRulesGovernSystemLevelInteractions) {
  PolicyLoad load = ParsePolicy(R"toml(
[policy]
id = "typed"
version = "1"
[roles.ops]
relationship = "none"
scopes = ["system/*.rs"]
permissions = ["*.*"]
[[rule]]
id = "no-psych-notes"
types = ["DocumentReference"]
)toml",
                                "typed.toml");
  ASSERT_THAT(load.errors, IsEmpty());
  constexpr std::string_view kScenarios = R"toml(
[[scenario]]
name = "the rule's own type"
[scenario.principal]
roles = ["ops"]
scopes = "system/*.rs"
[scenario.request]
interaction = "search"
type = "DocumentReference"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.expect]
decision = "deny"
rule = "rule:no-psych-notes"

[[scenario]]
name = "another type"
[scenario.principal]
roles = ["ops"]
scopes = "system/*.rs"
[scenario.request]
interaction = "search"
type = "Observation"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.expect]
decision = "allow"

[[scenario]]
name = "the system history"
[scenario.principal]
roles = ["ops"]
scopes = "system/*.rs"
[scenario.request]
interaction = "history-system"
[scenario.environment]
time = "2026-03-02T10:00:00Z"
[scenario.expect]
decision = "deny"
rule = "rule:no-psych-notes"
)toml";
  ScenarioRun run = RunScenarioText(load.policy, kScenarios, "typed-s.toml");
  EXPECT_THAT(ErrorStrings(run), IsEmpty());
  EXPECT_EQ(run.passed(), 3) << Report(run);
}

TEST(MayExplain, NeedsAnExplainRoleThatNoGeneralRuleDeniesNow) {
  PolicyLoad load = ParsePolicy(R"toml(
[policy]
id = "explain"
version = "1"
explain_roles = ["admin"]
[roles.admin]
relationship = "none"
scopes = ["user/*.rs"]
permissions = ["Practitioner.read"]
[roles.doc]
relationship = "none"
scopes = ["user/*.rs"]
permissions = ["*.read"]
[[rule]]
id = "admin-network"
roles = ["admin"]
unless = { networks = ["10.0.0.0/8"] }
[[rule]]
id = "admin-no-observations"
roles = ["admin"]
types = ["Observation"]
)toml",
                                "explain.toml");
  ASSERT_THAT(load.errors, IsEmpty());
  Principal admin;
  admin.roles = {"admin"};
  admin.has_roles_claim = true;
  Principal doc = admin;
  doc.roles = {"doc"};
  Environment inside;
  inside.client_address = "10.1.2.3";
  Environment outside;
  outside.client_address = "192.0.2.7";
  EXPECT_TRUE(MayExplain(*load.policy, admin, inside));
  EXPECT_FALSE(MayExplain(*load.policy, admin, outside)) << "a rule denying the role everything";
  EXPECT_FALSE(MayExplain(*load.policy, doc, inside)) << "not an explain role";
  Principal none;
  EXPECT_FALSE(MayExplain(*load.policy, none, inside)) << "no roles claim, no default roles";
}

}  // namespace
}  // namespace fhirward::policy
