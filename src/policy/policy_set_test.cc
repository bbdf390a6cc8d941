#include "policy/policy_set.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fhirward::policy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Every error of `text` as "p.toml:LINE:COLUMN: message".
std::vector<std::string> Errors(std::string_view text) {
  PolicyLoad l = ParsePolicy(text, "p.toml");
  EXPECT_EQ(l.policy == nullptr, !l.errors.empty());
  std::vector<std::string> out;
  for (const PolicyError& e : l.errors) out.push_back(e.ToString());
  return out;
}

constexpr std::string_view kHeader = R"([policy]
id = "p"
version = "1"
)";

constexpr std::string_view kFull = R"(# a complete policy
[policy]
id = "hospital.main_v2"
version = 7
description = "Main hospital policy"
utc_offset = "-05:30"
default_roles = ["app"]

[roles.clinician]
description = "Doctors"
scopes = ["user/*.cruds", "patient/Observation.rs", "system/Patient.read"]
permissions = ["*.read", "Observation.create", "*.*", "Patient.*"]
relationship = "care"
masked = ["Patient.telecom", "Patient.contact.telecom", "Observation.value[x]"]
read_only = ["Patient.identifier"]
denied_labels = ["R", "V", "PSY"]
consent = false
break_glass = true

[roles.app]
relationship = "scopes"
scopes = ["patient/*.rs"]
permissions = ["*.*"]

[[rule]]
id = "night"
description = "No writes at night"
roles = ["clinician"]
types = ["Observation", "Condition"]
interactions = ["create", "update"]
when = { hours = "22:00-06:30", weekdays = ["sun", "sat"], networks = ["10.0.0.0/8", "fd00::/8"] }
unless = { purpose_of_use = ["ETREAT"] }

[[rule]]
id = "lan-only"
unless = { networks = ["192.168.1.7"] }

[[relationship]]
id = "care-team"
type = "CareTeam"
actor = "participant"
status = ["active"]

[[relationship]]
id = "episode"
type = "EpisodeOfCare"
actor = "care-manager"

[break_glass]
enabled = true
purposes = ["ETREAT"]
duration_minutes = 30
min_justification = 10
)";

TEST(PolicySet, FullPolicyRoundTrips) {
  PolicyLoad l = ParsePolicy(kFull, "full.toml");
  for (const PolicyError& e : l.errors) ADD_FAILURE() << e.ToString();
  ASSERT_NE(l.policy, nullptr);
  const PolicySet& p = *l.policy;
  EXPECT_EQ(p.id, "hospital.main_v2");
  EXPECT_EQ(p.version, "7");
  EXPECT_EQ(p.IdVersion(), "hospital.main_v2@7");
  EXPECT_EQ(p.description, "Main hospital policy");
  EXPECT_EQ(p.source, "full.toml");
  EXPECT_EQ(p.utc_offset_minutes, -330);
  EXPECT_THAT(p.default_roles, ElementsAre("app"));

  // Roles in file order.
  ASSERT_EQ(p.roles.size(), 2u);
  const Role& c = p.roles[0];
  EXPECT_EQ(c.name, "clinician");
  EXPECT_EQ(c.line, 9);
  EXPECT_EQ(c.description, "Doctors");
  EXPECT_THAT(c.scopes,
              ElementsAre("user/*.cruds", "patient/Observation.rs", "system/Patient.read"));
  ASSERT_EQ(c.permissions.size(), 4u);
  EXPECT_EQ(c.permissions[0].type, "*");
  EXPECT_EQ(c.permissions[0].interaction, "read");
  EXPECT_EQ(c.permissions[1].type, "Observation");
  EXPECT_EQ(c.permissions[1].interaction, "create");
  EXPECT_EQ(c.permissions[2].type, "*");
  EXPECT_EQ(c.permissions[2].interaction, "*");
  EXPECT_EQ(c.permissions[3].type, "Patient");
  EXPECT_EQ(c.permissions[3].interaction, "*");
  EXPECT_EQ(c.relationship, Relationship::kCare);
  EXPECT_THAT(c.masked,
              ElementsAre("Patient.telecom", "Patient.contact.telecom", "Observation.value[x]"));
  EXPECT_THAT(c.read_only, ElementsAre("Patient.identifier"));
  EXPECT_THAT(c.denied_labels, ElementsAre("R", "V", "PSY"));
  EXPECT_FALSE(c.consent);
  EXPECT_TRUE(c.break_glass);

  const Role& app = p.roles[1];
  EXPECT_EQ(app.name, "app");
  EXPECT_EQ(app.line, 20);
  EXPECT_EQ(app.description, "");
  EXPECT_EQ(app.relationship, Relationship::kScopes);
  EXPECT_TRUE(app.consent);  // defaults
  EXPECT_FALSE(app.break_glass);
  EXPECT_TRUE(app.masked.empty());
  EXPECT_EQ(p.FindRole("app"), &app);
  EXPECT_EQ(p.FindRole("clinician"), &c);
  EXPECT_EQ(p.FindRole("nobody"), nullptr);

  ASSERT_EQ(p.rules.size(), 2u);
  const Rule& night = p.rules[0];
  EXPECT_EQ(night.id, "night");
  EXPECT_EQ(night.line, 25);
  EXPECT_EQ(night.description, "No writes at night");
  EXPECT_THAT(night.roles, ElementsAre("clinician"));
  EXPECT_THAT(night.types, ElementsAre("Observation", "Condition"));
  EXPECT_THAT(night.interactions, ElementsAre("create", "update"));
  ASSERT_TRUE(night.when.hours.has_value());
  EXPECT_EQ(night.when.hours->first, 22 * 60);
  EXPECT_EQ(night.when.hours->second, 6 * 60 + 30);  // wraps past midnight
  EXPECT_THAT(night.when.weekdays, ElementsAre(0, 6));
  ASSERT_EQ(night.when.networks.size(), 2u);
  EXPECT_EQ(night.when.networks[0].text, "10.0.0.0/8");
  EXPECT_EQ(night.when.networks[0].prefix, 104);
  EXPECT_EQ(night.when.networks[1].text, "fd00::/8");
  EXPECT_EQ(night.when.networks[1].prefix, 8);
  EXPECT_TRUE(night.when.purpose_of_use.empty());
  EXPECT_THAT(night.unless.purpose_of_use, ElementsAre("ETREAT"));
  EXPECT_FALSE(night.unless.hours.has_value());
  const Rule& lan = p.rules[1];
  EXPECT_EQ(lan.id, "lan-only");
  EXPECT_EQ(lan.line, 34);
  EXPECT_TRUE(lan.roles.empty() && lan.types.empty() && lan.interactions.empty());
  EXPECT_TRUE(lan.when.empty());
  ASSERT_EQ(lan.unless.networks.size(), 1u);
  EXPECT_EQ(lan.unless.networks[0].prefix, 128);  // a bare IPv4 address: /32

  ASSERT_EQ(p.relationships.size(), 2u);
  EXPECT_EQ(p.relationships[0].id, "care-team");
  EXPECT_EQ(p.relationships[0].type, "CareTeam");
  EXPECT_EQ(p.relationships[0].actor, "participant");
  EXPECT_THAT(p.relationships[0].status, ElementsAre("active"));
  EXPECT_EQ(p.relationships[0].line, 38);
  EXPECT_EQ(p.relationships[1].id, "episode");
  EXPECT_EQ(p.relationships[1].type, "EpisodeOfCare");
  EXPECT_EQ(p.relationships[1].actor, "care-manager");
  EXPECT_TRUE(p.relationships[1].status.empty());
  EXPECT_EQ(p.relationships[1].line, 44);

  EXPECT_TRUE(p.break_glass.enabled);
  EXPECT_THAT(p.break_glass.purposes, ElementsAre("ETREAT"));
  EXPECT_EQ(p.break_glass.duration_seconds, 30 * 60);
  EXPECT_EQ(p.break_glass.min_justification, 10u);
}

TEST(PolicySet, MinimalPolicyDefaults) {
  PolicyLoad l = ParsePolicy(kHeader, "m.toml");
  ASSERT_TRUE(l.errors.empty());
  ASSERT_NE(l.policy, nullptr);
  EXPECT_EQ(l.policy->IdVersion(), "p@1");
  EXPECT_EQ(l.policy->utc_offset_minutes, 0);
  EXPECT_TRUE(l.policy->roles.empty());
  EXPECT_TRUE(l.policy->default_roles.empty());
  EXPECT_FALSE(l.policy->break_glass.enabled);
  EXPECT_THAT(l.policy->break_glass.purposes, ElementsAre("ETREAT", "BTG"));
  EXPECT_EQ(l.policy->break_glass.duration_seconds, 3600);
  EXPECT_EQ(l.policy->break_glass.min_justification, 20u);
}

TEST(PolicySet, ExplainRoles) {
  PolicyLoad l = ParsePolicy(kHeader, "m.toml");
  ASSERT_NE(l.policy, nullptr);
  EXPECT_THAT(l.policy->explain_roles, ElementsAre("admin", "auditor"));
  l = ParsePolicy(R"([policy]
id = "p"
version = "1"
explain_roles = ["sec"]
[roles.sec]
relationship = "none"
scopes = ["user/*.rs"]
permissions = ["*.read"]
)",
                  "m.toml");
  ASSERT_NE(l.policy, nullptr);
  EXPECT_THAT(l.policy->explain_roles, ElementsAre("sec"));
  EXPECT_THAT(Errors(R"([policy]
id = "p"
version = "1"
explain_roles = ["nobody"]
)"),
              ElementsAre("p.toml:4:18: unknown role 'nobody'"));
}

TEST(PolicySet, RelationshipNames) {
  EXPECT_EQ(RelationshipName(Relationship::kNone), "none");
  EXPECT_EQ(RelationshipName(Relationship::kScopes), "scopes");
  EXPECT_EQ(RelationshipName(Relationship::kSelf), "self");
  EXPECT_EQ(RelationshipName(Relationship::kCare), "care");
}

TEST(PolicyError, ToStringOmitsZeroPositions) {
  EXPECT_EQ((PolicyError{"a.toml", 3, 7, "bad"}).ToString(), "a.toml:3:7: bad");
  EXPECT_EQ((PolicyError{"a.toml", 3, 0, "bad"}).ToString(), "a.toml:3: bad");
  EXPECT_EQ((PolicyError{"a.toml", 0, 0, "bad"}).ToString(), "a.toml: bad");
}

TEST(PolicySet, MissingPolicyTable) {
  EXPECT_THAT(Errors("[roles.a]\n"), ElementsAre("p.toml: missing [policy] table"));
  EXPECT_THAT(Errors("policy = 1\n"), ElementsAre("p.toml:1:10: 'policy' must be a table"));
}

TEST(PolicySet, MissingRequiredKeys) {
  EXPECT_THAT(Errors("\n[policy]\ndescription = \"x\"\n"),
              ElementsAre("p.toml:2:1: missing required key 'id' in [policy]",
                          "p.toml:2:1: missing required key 'version' in [policy]"));
  EXPECT_THAT(
      Errors(std::string(kHeader) + "[[rule]]\nroles = []\n\n[[relationship]]\nid = \"x\"\n"),
      ElementsAre("p.toml:4:1: missing required key 'id' in [[rule]] #1",
                  "p.toml:7:1: missing required key 'type' in [[relationship]] #1",
                  "p.toml:7:1: missing required key 'actor' in [[relationship]] #1"));
}

TEST(PolicySet, PolicyKeyErrors) {
  EXPECT_THAT(Errors("[policy]\nid = \"Bad Id\"\nversion = 1.5\nutc_offset = \"+14:30\"\n"
                     "default_roles = [\"ghost\"]\ncolour = \"red\"\n"),
              ElementsAre("p.toml:2:6: invalid policy id 'Bad Id': expected "
                          "[a-z0-9][a-z0-9._-]{0,63}",
                          "p.toml:3:11: 'version' must be a string or an integer",
                          "p.toml:4:14: invalid utc_offset '+14:30': expected +HH:MM or -HH:MM, "
                          "at most 14:00",
                          "p.toml:5:18: unknown role 'ghost'",
                          "p.toml:6:1: unknown key 'colour' in [policy]"));
  // Bounds of utc_offset.
  EXPECT_TRUE(Errors("[policy]\nid = \"p\"\nversion = \"1\"\nutc_offset = \"-14:00\"\n").empty());
  EXPECT_EQ(Errors("[policy]\nid = \"p\"\nversion = \"1\"\nutc_offset = \"+0100\"\n").size(), 1u);
  EXPECT_EQ(Errors("[policy]\nid = \"p\"\nversion = \"1 2\"\n").size(), 1u);
}

TEST(PolicySet, RoleErrorsCarryLineAndColumn) {
  std::string text = std::string(kHeader) + R"(
[roles.nurse]
scopes = "user/*.rs"
permissions = ["Observation.read", "Obs.read", "Observation.write", "read"]
relationship = "friends"
masked = ["Patient.Name", "Foo.bar", "Patient", "Patient.a.b.c.d.e.f.g.h.i"]
read_only = [1]
denied_labels = ["", "ok"]
consent = "yes"
extra = 1

[roles.Bad_Name]
scopes = ["user/*.rs?category=x", "user/Foo.rs", "openid"]
)";
  EXPECT_THAT(
      Errors(text),
      ElementsAre(
          "p.toml:6:10: 'scopes' must be an array of strings",
          "p.toml:7:36: unknown resource type 'Obs' in permission 'Obs.read'",
          "p.toml:7:48: unknown interaction 'write' in permission 'Observation.write': expected "
          "*, read, vread, search, history, create, update, patch or delete",
          "p.toml:7:69: invalid permission 'read': expected Type.interaction",
          "p.toml:8:16: invalid relationship 'friends': expected none, scopes, self or care",
          "p.toml:9:11: invalid element path 'Patient.Name': expected Type.element(.element)* (at "
          "most 8 elements, each [a-z][A-Za-z0-9]* with an optional [x])",
          "p.toml:9:27: unknown resource type 'Foo' in element path 'Foo.bar'",
          "p.toml:9:38: invalid element path 'Patient': expected Type.element(.element)*",
          "p.toml:9:49: invalid element path 'Patient.a.b.c.d.e.f.g.h.i': expected "
          "Type.element(.element)* (at most 8 elements, each [a-z][A-Za-z0-9]* with an optional "
          "[x])",
          "p.toml:10:13: 'read_only' must be an array of strings",
          "p.toml:11:18: invalid security label code '': expected [A-Za-z0-9._-]{1,64}",
          "p.toml:12:11: 'consent' must be true or false",
          "p.toml:13:1: unknown key 'extra' in [roles.nurse]",
          "p.toml:15:1: invalid role name 'Bad_Name': expected [a-z][a-z0-9-]{0,31}",
          "p.toml:16:11: restricted scope 'user/*.rs?category=x' is not allowed in a role",
          "p.toml:16:35: unknown resource type 'Foo' in scope 'user/Foo.rs'",
          "p.toml:16:50: invalid scope 'openid': expected "
          "(patient|user|system)/(Type|*).(cruds|read|write|*)"));
}

TEST(PolicySet, CareNeedsRelationshipSourcesAndBreakGlassNeedsEnabling) {
  std::string text = std::string(kHeader) + R"(
[roles.doctor]
relationship = "care"
break_glass = true
)";
  EXPECT_THAT(Errors(text),
              ElementsAre("p.toml:5:1: role 'doctor' has relationship \"care\" but the policy "
                          "defines no [[relationship]] sources",
                          "p.toml:7:15: role 'doctor' may break glass but [break_glass] is not "
                          "enabled"));
  EXPECT_EQ(Errors(text + "[break_glass]\nenabled = false\n").size(), 2u);
  EXPECT_EQ(Errors(text + "[break_glass]\nenabled = true\n[[relationship]]\nid = \"ct\"\n"
                          "type = \"CareTeam\"\nactor = \"participant\"\n")
                .size(),
            0u);
}

TEST(PolicySet, RuleErrors) {
  std::string text = std::string(kHeader) + R"([roles.a]

[[rule]]
id = "everything"

[[rule]]
id = "everything"
roles = ["a", "b"]
types = ["Observation", "*"]
interactions = ["read", "*", "explain"]
when = { hours = "08:00-08:00", weekdays = ["monday"], networks = ["10.0.0.0/33", "x"], purpose_of_use = ["treat"] }
unless = { colour = "red", hours = "24:00-01:00" }

[[rule]]
id = "Bad"
roles = ["a"]
when = "always"
sometimes = true

[rule]
)";
  // The trailing [rule] redefines the array: a TOML syntax error, reported alone.
  std::vector<std::string> syntax = Errors(text);
  ASSERT_EQ(syntax.size(), 1u);
  EXPECT_THAT(syntax[0], HasSubstr("p.toml:23:"));
  EXPECT_THAT(syntax[0], HasSubstr("TOML syntax error"));

  text.resize(text.size() - std::string("\n[rule]\n").size());
  EXPECT_THAT(
      Errors(text),
      ElementsAre(
          "p.toml:6:1: rule denies everything: [[rule]] #1 has no roles, types, interactions, "
          "when or unless",
          "p.toml:10:6: duplicate rule id 'everything' (first at line 6)",
          "p.toml:11:15: unknown role 'b'", "p.toml:12:25: unknown resource type '*'",
          "p.toml:13:25: unknown interaction '*': expected read, vread, search, history, create, "
          "update, patch or delete",
          "p.toml:13:30: unknown interaction 'explain': expected read, vread, search, history, "
          "create, update, patch or delete",
          "p.toml:14:18: invalid hours '08:00-08:00': expected HH:MM-HH:MM (00:00 to 23:59, start "
          "differs from end)",
          "p.toml:14:45: invalid weekday 'monday': expected sun, mon, tue, wed, thu, fri or sat",
          "p.toml:14:68: invalid network '10.0.0.0/33': expected an IPv4 or IPv6 address or CIDR "
          "block",
          "p.toml:14:83: invalid network 'x': expected an IPv4 or IPv6 address or CIDR block",
          "p.toml:14:107: invalid purpose of use 'treat': expected [A-Z]{2,16}",
          "p.toml:15:12: unknown key 'colour' in 'unless' of [[rule]] #2",
          "p.toml:15:36: invalid hours '24:00-01:00': expected HH:MM-HH:MM (00:00 to 23:59, start "
          "differs from end)",
          "p.toml:18:6: invalid rule id 'Bad': expected [a-z][a-z0-9-]{0,31}",
          "p.toml:20:8: 'when' of [[rule]] #3 must be a table",
          "p.toml:21:1: unknown key 'sometimes' in [[rule]] #3"));
}

TEST(PolicySet, RuleAndRelationshipShapes) {
  EXPECT_THAT(Errors("rule = 1\nrelationship = [1]\nroles = \"all\"\nbreak_glass = true\n" +
                     std::string(kHeader)),
              ElementsAre("p.toml:1:8: 'rule' must be an array of tables ([[rule]])",
                          "p.toml:2:16: 'relationship' must be an array of tables "
                          "([[relationship]])",
                          "p.toml:3:9: 'roles' must be a table",
                          "p.toml:4:15: 'break_glass' must be a table"));
  EXPECT_THAT(Errors(std::string(kHeader) + "[roles]\nx = 1\n"),
              ElementsAre("p.toml:5:5: 'roles.x' must be a table"));
  EXPECT_THAT(Errors(std::string(kHeader) + "[cookies]\n"),
              ElementsAre("p.toml:4:2: unknown key 'cookies' at the top level"));
  // An empty `when` with nothing else still denies everything.
  EXPECT_THAT(Errors(std::string(kHeader) + "[[rule]]\nid = \"r\"\nwhen = {}\nroles = []\n"),
              ElementsAre("p.toml:4:1: rule denies everything: [[rule]] #1 has no roles, types, "
                          "interactions, when or unless"));
}

TEST(PolicySet, RelationshipAndBreakGlassErrors) {
  std::string text = std::string(kHeader) + R"([[relationship]]
id = "ct"
type = "Careteam"
actor = "Participant"
status = ["active", "bad code"]

[[relationship]]
id = "ct"
type = "CareTeam"
actor = "participant"
who = 1

[break_glass]
enabled = "yes"
purposes = ["etreat"]
duration_minutes = 0
min_justification = 1001
reason = "x"
)";
  EXPECT_THAT(
      Errors(text),
      ElementsAre("p.toml:6:8: unknown resource type 'Careteam'",
                  "p.toml:7:9: invalid search parameter 'Participant': expected [a-z][a-z0-9-]*",
                  "p.toml:8:21: invalid status code 'bad code'",
                  "p.toml:11:6: duplicate relationship source id 'ct' (first at line 4)",
                  "p.toml:14:1: unknown key 'who' in [[relationship]] #2",
                  "p.toml:17:11: 'enabled' must be true or false",
                  "p.toml:18:13: invalid purpose of use 'etreat': expected [A-Z]{2,16}",
                  "p.toml:19:20: 'duration_minutes' must be between 1 and 1440",
                  "p.toml:20:21: 'min_justification' must be between 1 and 1000",
                  "p.toml:21:1: unknown key 'reason' in [break_glass]"));
  EXPECT_THAT(Errors(std::string(kHeader) + "[break_glass]\npurposes = []\n"),
              ElementsAre("p.toml:5:12: 'purposes' must not be empty"));
}

TEST(PolicySet, ManyErrorsAllReportedSortedByLine) {
  std::string text = R"([roles.z]
scopes = ["bad"]

[policy]
id = "p"
version = "1"
default_roles = ["y"]

[roles.a]
permissions = ["x"]
)";
  std::vector<std::string> errors = Errors(text);
  ASSERT_EQ(errors.size(), 3u);
  EXPECT_THAT(errors[0], HasSubstr("p.toml:2:11: invalid scope 'bad'"));
  EXPECT_EQ(errors[1], "p.toml:7:18: unknown role 'y'");
  EXPECT_EQ(errors[2], "p.toml:10:16: invalid permission 'x': expected Type.interaction");
}

TEST(PolicySet, TomlSyntaxErrorStopsWithItsLine) {
  PolicyLoad l =
      ParsePolicy("[policy]\nid = \"p\"\nversion = \"1\"\ndescription = \"open\n", "s.toml");
  EXPECT_EQ(l.policy, nullptr);
  ASSERT_EQ(l.errors.size(), 1u);
  EXPECT_EQ(l.errors[0].file, "s.toml");
  EXPECT_EQ(l.errors[0].line, 4);
  EXPECT_GT(l.errors[0].column, 0);
  EXPECT_THAT(l.errors[0].ToString(), HasSubstr("s.toml:4:"));
  EXPECT_THAT(l.errors[0].message, HasSubstr("TOML syntax error"));

  // A duplicate key is a syntax error too.
  std::vector<std::string> dup = Errors("[policy]\nid = \"p\"\nid = \"q\"\n");
  ASSERT_EQ(dup.size(), 1u);
  EXPECT_THAT(dup[0], HasSubstr("p.toml:3:"));
}

TEST(PolicySet, LoadPolicyFileReportsReadErrors) {
  PolicyLoad l = LoadPolicyFile("/nonexistent/dir/policy.toml");
  EXPECT_EQ(l.policy, nullptr);
  ASSERT_EQ(l.errors.size(), 1u);
  EXPECT_EQ(l.errors[0].line, 0);
  EXPECT_EQ(l.errors[0].ToString(),
            "/nonexistent/dir/policy.toml: cannot read: No such file or directory");
  PolicyLoad dir = LoadPolicyFile("/");
  ASSERT_EQ(dir.errors.size(), 1u);
  EXPECT_THAT(dir.errors[0].ToString(), HasSubstr("/: cannot read: "));
}

TEST(PolicySet, ShippedDefaultPolicyIsValid) {
  const std::string path = std::string(FHIRWARD_SOURCE_DIR) + "/policies/default.toml";
  PolicyLoad l = LoadPolicyFile(path);
  for (const PolicyError& e : l.errors) ADD_FAILURE() << e.ToString();
  ASSERT_NE(l.policy, nullptr);
  const PolicySet& p = *l.policy;
  EXPECT_EQ(p.id, "fhirward-default");
  EXPECT_EQ(p.source, path);
  std::vector<std::string> names;
  for (const Role& r : p.roles) names.push_back(r.name);
  EXPECT_THAT(names, ElementsAre("smart-app", "patient", "clinician", "care-team-member",
                                 "front-desk", "researcher", "auditor", "admin", "key-admin"));
  EXPECT_THAT(p.default_roles, ElementsAre("smart-app"));
  EXPECT_EQ(p.FindRole("smart-app")->relationship, Relationship::kScopes);
  EXPECT_EQ(p.FindRole("patient")->relationship, Relationship::kSelf);
  EXPECT_FALSE(p.FindRole("patient")->consent);
  EXPECT_EQ(p.FindRole("clinician")->relationship, Relationship::kCare);
  EXPECT_TRUE(p.FindRole("clinician")->break_glass);
  EXPECT_EQ(p.FindRole("researcher")->masked.size(), 7u);
  EXPECT_TRUE(p.FindRole("key-admin")->scopes.empty());
  EXPECT_TRUE(p.FindRole("key-admin")->permissions.empty());
  ASSERT_EQ(p.rules.size(), 3u);
  EXPECT_EQ(p.rules[0].id, "front-desk-hours");
  EXPECT_EQ(p.rules[0].unless.hours, std::make_pair(6 * 60, 20 * 60));
  EXPECT_THAT(p.rules[0].unless.weekdays, ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_EQ(p.rules[1].id, "research-needs-purpose");
  EXPECT_EQ(p.rules[2].id, "admin-from-admin-network");
  EXPECT_EQ(p.rules[2].unless.networks.size(), 5u);
  ASSERT_EQ(p.relationships.size(), 2u);
  EXPECT_EQ(p.relationships[0].id, "care-team");
  EXPECT_EQ(p.relationships[1].id, "encounter");
  EXPECT_TRUE(p.break_glass.enabled);
  EXPECT_EQ(p.break_glass.duration_seconds, 3600);
}

TEST(Cidr, ParsesIpv4AsMappedIpv6) {
  auto c = ParseCidr("10.0.0.0/8");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->prefix, 104);
  EXPECT_EQ(c->text, "10.0.0.0/8");
  EXPECT_EQ(c->addr[10], 0xff);
  EXPECT_EQ(c->addr[11], 0xff);
  EXPECT_EQ(c->addr[12], 10);
  auto host = ParseCidr("192.168.1.7");
  ASSERT_TRUE(host);
  EXPECT_EQ(host->prefix, 128);
  auto v6 = ParseCidr("::1");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->prefix, 128);
  EXPECT_EQ(v6->addr[15], 1);
  EXPECT_EQ(ParseCidr("fd00::/8")->prefix, 8);
  EXPECT_EQ(ParseCidr("0.0.0.0/0")->prefix, 96);
  EXPECT_EQ(ParseCidr("::/0")->prefix, 0);
}

TEST(Cidr, RejectsBadInput) {
  for (const char* bad :
       {"", "/8", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.0.0.0/-1", "10.0.0.0/+8",
        "10.0.0.0/8/8", "10.0.0", "10.0.0.256", "300.1.1.1", "localhost", "fe80::1%eth0",
        "10.0.0.0 /8", "::g", "10.0.0.0/1000", "10.0.0.0/a"}) {
    EXPECT_FALSE(ParseCidr(bad).has_value()) << bad;
  }
}

TEST(Cidr, ContainsIpv4) {
  Cidr net = *ParseCidr("10.0.0.0/8");
  EXPECT_TRUE(CidrContains(net, "10.0.0.1"));
  EXPECT_TRUE(CidrContains(net, "10.255.255.255"));
  EXPECT_FALSE(CidrContains(net, "11.0.0.0"));
  EXPECT_FALSE(CidrContains(net, "9.255.255.255"));
  Cidr odd = *ParseCidr("192.168.1.128/25");
  EXPECT_TRUE(CidrContains(odd, "192.168.1.200"));
  EXPECT_FALSE(CidrContains(odd, "192.168.1.127"));
  Cidr host = *ParseCidr("192.168.1.7");
  EXPECT_TRUE(CidrContains(host, "192.168.1.7"));
  EXPECT_FALSE(CidrContains(host, "192.168.1.8"));
  // Host bits set are accepted and ignored.
  Cidr sloppy = *ParseCidr("10.1.2.3/8");
  EXPECT_EQ(sloppy.text, "10.1.2.3/8");
  EXPECT_TRUE(CidrContains(sloppy, "10.200.0.1"));
  // Unparsable addresses are never contained.
  EXPECT_FALSE(CidrContains(net, ""));
  EXPECT_FALSE(CidrContains(net, "10.0.0"));
  EXPECT_FALSE(CidrContains(net, "example.org"));
}

TEST(Cidr, ContainsIpv6AndMappedAddresses) {
  Cidr ula = *ParseCidr("fd00::/8");
  EXPECT_TRUE(CidrContains(ula, "fd12:3456::1"));
  EXPECT_TRUE(CidrContains(ula, "[fd00::1]"));
  EXPECT_FALSE(CidrContains(ula, "fe80::1"));
  EXPECT_FALSE(CidrContains(ula, "10.0.0.1"));
  Cidr loop = *ParseCidr("::1/128");
  EXPECT_TRUE(CidrContains(loop, "::1"));
  EXPECT_TRUE(CidrContains(loop, "0:0:0:0:0:0:0:1"));
  EXPECT_FALSE(CidrContains(loop, "::2"));
  EXPECT_FALSE(CidrContains(loop, "127.0.0.1"));
  Cidr odd = *ParseCidr("2001:db8::/33");
  EXPECT_TRUE(CidrContains(odd, "2001:db8:7fff::1"));
  EXPECT_FALSE(CidrContains(odd, "2001:db8:8000::1"));
  // An IPv4 network contains the IPv4-mapped form of its addresses (dual-stack peers).
  Cidr lan = *ParseCidr("192.168.0.0/16");
  EXPECT_TRUE(CidrContains(lan, "::ffff:192.168.3.4"));
  EXPECT_FALSE(CidrContains(lan, "::ffff:192.169.3.4"));
  // And an IPv4-mapped network contains plain IPv4 addresses.
  Cidr mapped = *ParseCidr("::ffff:10.0.0.0/104");
  EXPECT_TRUE(CidrContains(mapped, "10.9.8.7"));
  EXPECT_FALSE(CidrContains(mapped, "11.9.8.7"));
}

TEST(Cidr, ZeroPrefixes) {
  Cidr any4 = *ParseCidr("0.0.0.0/0");
  EXPECT_TRUE(CidrContains(any4, "1.2.3.4"));
  EXPECT_TRUE(CidrContains(any4, "255.255.255.255"));
  EXPECT_FALSE(CidrContains(any4, "2001:db8::1"));  // IPv4 only
  Cidr any = *ParseCidr("::/0");
  EXPECT_TRUE(CidrContains(any, "2001:db8::1"));
  EXPECT_TRUE(CidrContains(any, "1.2.3.4"));
  EXPECT_FALSE(CidrContains(any, "nonsense"));
}

TEST(PolicySet, HoursWrapAndBounds) {
  auto hours = [](std::string_view h) -> std::vector<std::string> {
    return Errors(std::string(kHeader) + "[[rule]]\nid = \"r\"\nwhen = { hours = \"" +
                  std::string(h) + "\" }\n");
  };
  PolicyLoad l = ParsePolicy(
      std::string(kHeader) + "[[rule]]\nid = \"r\"\nwhen = { hours = \"22:00-06:00\" }\n",
      "h.toml");
  ASSERT_NE(l.policy, nullptr);
  EXPECT_EQ(l.policy->rules[0].when.hours, std::make_pair(22 * 60, 6 * 60));
  EXPECT_TRUE(hours("00:00-23:59").empty());
  EXPECT_TRUE(hours("23:59-00:00").empty());
  for (const char* bad : {"07:00-07:00", "7:00-19:00", "07:00-24:00", "07:60-19:00",
                          "07:00 - 19:00", "07:00", "07:00-19:00-20:00", "ab:cd-ef:gh"}) {
    EXPECT_EQ(hours(bad).size(), 1u) << bad;
  }
}

}  // namespace
}  // namespace fhirward::policy
