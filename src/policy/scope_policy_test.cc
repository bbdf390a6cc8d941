#include "gtest/gtest.h"
#include "policy/policy.h"

namespace fhirward::policy {
namespace {

Decision Auth(const PolicyEngine& e, const Principal& p, const AccessRequest& r) {
  return e.Authorize(p, r, Environment{});
}

Decision Res(const PolicyEngine& e, const Principal& p, const Decision& d, Interaction i,
             std::string_view type, std::vector<std::string> patients, bool in_def) {
  ResourceFacts f;
  f.type = type;
  f.patients = &patients;
  f.in_compartment_definition = in_def;
  return e.AuthorizeResource(p, d, i, f, Environment{});
}

Principal With(std::string scopes, std::string patient = "") {
  Principal p;
  p.subject = "u1";
  p.scope_text = scopes;
  p.scopes = ParseScopes(scopes);
  p.patient = std::move(patient);
  return p;
}

TEST(Scopes, ParsesV2AndMapsV1) {
  auto s = ParseResourceScope("patient/Observation.rs");
  ASSERT_TRUE(s);
  EXPECT_TRUE(s->r && s->s && !s->c && !s->u && !s->d);
  auto v1 = ParseResourceScope("user/Patient.read");
  ASSERT_TRUE(v1);
  EXPECT_TRUE(v1->r && v1->s && !v1->c);
  auto w = ParseResourceScope("system/*.write");
  ASSERT_TRUE(w);
  EXPECT_TRUE(w->c && w->u && w->d && !w->r);
  auto all = ParseResourceScope("user/*.*");
  ASSERT_TRUE(all);
  EXPECT_TRUE(all->c && all->r && all->u && all->d && all->s);
  EXPECT_TRUE(ParseResourceScope("patient/Observation.rs?category=laboratory")->restricted);
}

TEST(Scopes, RejectsMalformed) {
  for (const char* bad :
       {"patient/Observation.sr", "patient/Observation.rr", "patient/Observation.",
        "patient/Observation.x", "admin/Patient.r", "patient/observation.r", "patient/.r", "openid",
        "launch/patient", "patient/Obs-1.r"}) {
    EXPECT_FALSE(ParseResourceScope(bad).has_value()) << bad;
  }
}

TEST(ScopePolicy, DenyByDefault) {
  auto engine = NewScopePolicyEngine();
  Decision d = Auth(*engine, With("openid fhirUser"), {Interaction::kRead, "Patient", "1"});
  EXPECT_FALSE(d.allow);
  EXPECT_EQ(d.deny_code, ErrorCode::kInsufficientScope);
  EXPECT_EQ(d.policy_id, "smart-scopes@1");
}

TEST(ScopePolicy, LetterPerInteraction) {
  auto engine = NewScopePolicyEngine();
  Principal p = With("user/Observation.rs");
  EXPECT_TRUE(Auth(*engine, p, {Interaction::kRead, "Observation", "1"}).allow);
  EXPECT_TRUE(Auth(*engine, p, {Interaction::kSearch, "Observation", ""}).allow);
  EXPECT_FALSE(Auth(*engine, p, {Interaction::kCreate, "Observation", ""}).allow);
  EXPECT_FALSE(Auth(*engine, p, {Interaction::kDelete, "Observation", "1"}).allow);
  EXPECT_FALSE(Auth(*engine, p, {Interaction::kRead, "Patient", "1"}).allow);
  EXPECT_FALSE(Auth(*engine, p, {Interaction::kHistorySystem, "", ""}).allow);
  EXPECT_TRUE(Auth(*engine, With("system/*.s"), {Interaction::kHistorySystem, "", ""}).allow);
}

TEST(ScopePolicy, RestrictedScopesNeverGrantYet) {
  auto engine = NewScopePolicyEngine();
  Principal p = With("user/Observation.rs?category=laboratory");
  EXPECT_FALSE(Auth(*engine, p, {Interaction::kRead, "Observation", "1"}).allow);
}

TEST(ScopePolicy, PatientScopeConfinesToCompartment) {
  auto engine = NewScopePolicyEngine();
  Principal p = With("patient/*.cruds", "p1");
  Decision d = Auth(*engine, p, {Interaction::kRead, "Observation", "o1"});
  ASSERT_TRUE(d.allow);
  ASSERT_TRUE(d.obligations.patients);
  EXPECT_EQ(*d.obligations.patients, std::vector<std::string>{"p1"});
  EXPECT_TRUE(Res(*engine, p, d, Interaction::kRead, "Observation", {"p1"}, true).allow);
  Decision other = Res(*engine, p, d, Interaction::kRead, "Observation", {"p2"}, true);
  EXPECT_FALSE(other.allow);
  EXPECT_EQ(other.reason, "outside_patient_compartment");
  EXPECT_FALSE(Res(*engine, p, d, Interaction::kRead, "Observation", {}, true).allow);
  // Shared reference data is readable but not writable.
  EXPECT_TRUE(Res(*engine, p, d, Interaction::kRead, "Medication", {}, false).allow);
  EXPECT_FALSE(Res(*engine, p, d, Interaction::kUpdate, "Medication", {}, false).allow);
}

TEST(ScopePolicy, PatientScopeNeedsPatientContext) {
  auto engine = NewScopePolicyEngine();
  Decision d =
      Auth(*engine, With("patient/Observation.rs"), {Interaction::kRead, "Observation", "1"});
  EXPECT_FALSE(d.allow);
  EXPECT_EQ(d.reason, "patient_scope_without_patient_context");
}

TEST(ScopePolicy, UserScopeWinsOverPatientScope) {
  auto engine = NewScopePolicyEngine();
  Decision d = Auth(*engine, With("patient/Observation.rs user/Observation.rs", "p1"),
                    {Interaction::kRead, "Observation", "1"});
  EXPECT_TRUE(d.allow);
  EXPECT_FALSE(d.obligations.confined());
}

TEST(ScopePolicy, PatientScopeDoesNotReachUnconfinableTypes) {
  // Device, Bundle, Contract ... are outside the Patient compartment yet can
  // hold one patient's data: a patient scope can neither confine a search of
  // them nor treat them as shared reference data.
  auto engine = NewScopePolicyEngine();
  Principal p = With("patient/*.rs", "p1");
  for (const char* type : {"Device", "Bundle", "Contract", "GuidanceResponse", "Binary"}) {
    Decision d = Auth(*engine, p, {Interaction::kSearch, type, ""});
    EXPECT_FALSE(d.allow) << type;
    EXPECT_EQ(d.reason, "type_outside_patient_scope") << type;
  }
  for (const char* type : {"Medication", "Organization", "Practitioner", "ValueSet"}) {
    EXPECT_TRUE(Auth(*engine, p, {Interaction::kSearch, type, ""}).allow) << type;
  }
  // And per resource, even under a decision made for another type.
  Decision obs = Auth(*engine, p, {Interaction::kRead, "Observation", ""});
  EXPECT_FALSE(Res(*engine, p, obs, Interaction::kRead, "Device", {}, false).allow);
  // Unconfined scopes are unaffected.
  EXPECT_TRUE(Auth(*engine, With("user/*.rs"), {Interaction::kSearch, "Device", ""}).allow);
}

}  // namespace
}  // namespace fhirward::policy

namespace fhirward::policy {
namespace {

TEST(ScopePolicy, PatientWritesMustStayInTheirOwnCompartment) {
  auto engine = NewScopePolicyEngine();
  Principal p;
  p.scopes = ParseScopes("patient/*.cruds");
  p.patient = "A";
  Decision d = Auth(*engine, p, {Interaction::kCreate, "Observation", ""});
  ASSERT_TRUE(d.allow);
  EXPECT_TRUE(Res(*engine, p, d, Interaction::kCreate, "Observation", {"A"}, true).allow);
  EXPECT_FALSE(Res(*engine, p, d, Interaction::kCreate, "Observation", {"A", "B"}, true).allow);
  // Reading a resource shared with another patient stays allowed.
  Decision r = Auth(*engine, p, {Interaction::kRead, "Observation", "x"});
  EXPECT_TRUE(Res(*engine, p, r, Interaction::kRead, "Observation", {"B", "A"}, true).allow);
}

}  // namespace
}  // namespace fhirward::policy
