#include "server/audit_api.h"

#include "common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fhirward::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Params = std::vector<std::pair<std::string, std::string>>;

audit::AuditRecord Read(const std::string& patient) {
  audit::AuditRecord r;
  r.time = "2026-12-05T10:00:00.000Z";
  r.request_id = "req-1";
  r.client_address = "10.1.2.3";
  r.user_agent = "EHR/1.0";
  r.subject = "dr-house";
  r.client_id = "ehr-app";
  r.scopes = "user/*.rs";
  r.roles = "clinician";
  r.purpose_of_use = "TREAT";
  r.action = "read";
  r.resource_type = "Observation";
  r.resource_id = "o1";
  r.version_id = "2";
  r.patient_id = patient;
  r.patients = {patient, "other-patient"};
  r.outcome = "success";
  r.status_code = 200;
  r.decision = "default@1 allow role=clinician";
  r.policy_id = "default@1";
  r.query = "name=Smith";
  r.node = "node-7";
  r.count = 1;
  return r;
}

TEST(AuditSearch, DatePrefixesBecomeHalfOpenInstantBounds) {
  auto gt = ParseAuditSearch({{"date", "gt2999-01-01"}}, AuditView::kAuditor, "");
  ASSERT_TRUE(gt.ok()) << gt.status();
  EXPECT_EQ(gt->time_from, "2999-01-02T00:00:00.000Z");
  EXPECT_EQ(gt->time_to, "");
  auto eq = ParseAuditSearch({{"date", "2026-12-05"}}, AuditView::kAuditor, "");
  ASSERT_TRUE(eq.ok());
  EXPECT_EQ(eq->time_from, "2026-12-05T00:00:00.000Z");
  EXPECT_EQ(eq->time_to, "2026-12-06T00:00:00.000Z");
  auto range =
      ParseAuditSearch({{"date", "ge2026-12-05T10:00:00Z"}, {"date", "lt2026-12-05T11:00:00Z"}},
                       AuditView::kAuditor, "");
  ASSERT_TRUE(range.ok());
  EXPECT_EQ(range->time_from, "2026-12-05T10:00:00.000Z");
  EXPECT_EQ(range->time_to, "2026-12-05T11:00:00.000Z");  // lt the second: before 11:00:00.000
  auto le = ParseAuditSearch({{"date", "le2026-12"}}, AuditView::kAuditor, "");
  ASSERT_TRUE(le.ok());
  EXPECT_EQ(le->time_to, "2027-01-01T00:00:00.000Z");
  EXPECT_EQ(CodeOf(ParseAuditSearch({{"date", "yesterday"}}, AuditView::kAuditor, "").status()),
            ErrorCode::kInvalidParameter);
  EXPECT_EQ(CodeOf(ParseAuditSearch({{"date", "sa2026"}}, AuditView::kAuditor, "").status()),
            ErrorCode::kInvalidParameter);
}

TEST(AuditSearch, TermsAreMappedAndTheMostSelectiveDrives) {
  auto q = ParseAuditSearch({{"outcome", "4"},
                             {"agent", "dr-house"},
                             {"patient", "Patient/p1,p2"},
                             {"action", "R"},
                             {"_count", "900"},
                             {"_cursor", "77"}},
                            AuditView::kAuditor, "");
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_EQ(q->terms.size(), 4u);
  EXPECT_EQ(q->terms[0].first, "patient");
  EXPECT_THAT(q->terms[0].second, ::testing::ElementsAre("p1", "p2"));
  EXPECT_EQ(q->terms[1].first, "agent");
  EXPECT_EQ(q->terms[2].first, "action");
  EXPECT_THAT(q->terms[2].second, ::testing::Contains("vread"));
  EXPECT_EQ(q->terms[3].first, "outcome");
  EXPECT_THAT(q->terms[3].second, ::testing::ElementsAre("denied", "unauthenticated"));
  EXPECT_EQ(q->limit, 500);
  EXPECT_EQ(q->before_seq, 77);
  EXPECT_FALSE(ParseAuditSearch({{"bogus", "1"}}, AuditView::kAuditor, "").ok());
  EXPECT_FALSE(ParseAuditSearch({{"action", "X"}}, AuditView::kAuditor, "").ok());
  EXPECT_FALSE(ParseAuditSearch({{"_cursor", "abc"}}, AuditView::kAuditor, "").ok());
}

TEST(AuditSearch, APatientIsConfinedToTheirOwnSuccessfulAccesses) {
  auto q = ParseAuditSearch({{"patient", "p1"}, {"date", "2026"}}, AuditView::kPatient, "p1");
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_EQ(q->terms.size(), 2u);
  EXPECT_EQ(q->terms[0], (std::pair<std::string, std::vector<std::string>>{"patient", {"p1"}}));
  EXPECT_EQ(q->terms[1],
            (std::pair<std::string, std::vector<std::string>>{"outcome", {"success"}}));
  EXPECT_FALSE(ParseAuditSearch({{"patient", "p2"}}, AuditView::kPatient, "p1").ok());
  EXPECT_FALSE(ParseAuditSearch({{"agent", "x"}}, AuditView::kPatient, "p1").ok());
  EXPECT_FALSE(ParseAuditSearch({{"entity", "Patient/p2"}}, AuditView::kPatient, "p1").ok());
}

TEST(AuditEvent, AuditorViewIsBalpWithEveryDetail) {
  json::Value e = ToAuditEvent(42, Read("p1"), AuditView::kAuditor, "https://fhir.example");
  const std::string text = json::Write(e);
  EXPECT_EQ(e.GetString("resourceType"), "AuditEvent");
  EXPECT_EQ(e.GetString("id"), "42");
  EXPECT_THAT(text, HasSubstr("IHE.BasicAudit.PatientRead"));
  EXPECT_EQ(e.GetString("action"), "R");
  EXPECT_EQ(e.GetString("outcome"), "0");
  EXPECT_EQ(e.GetString("recorded"), "2026-12-05T10:00:00.000Z");
  for (const char* want : {"dr-house", "ehr-app", "10.1.2.3", "EHR/1.0", "TREAT", "clinician",
                           "Patient/p1", "Patient/other-patient", "Observation/o1/_history/2",
                           "default@1 allow", "req-1", "node-7", "user/*.rs"}) {
    EXPECT_THAT(text, HasSubstr(want));
  }
  EXPECT_THAT(text, HasSubstr("\"query\":\"bmFtZT1TbWl0aA==\""));  // base64("name=Smith")
}

TEST(AuditEvent, PatientViewShowsWhoWhenWhatWhyAndNoInternals) {
  audit::AuditRecord r = Read("p1");
  r.break_glass = "bg-9";
  r.break_glass_reason = "unconscious in ER, allergy check";
  json::Value e = ToAuditEvent(42, r, AuditView::kPatient, "https://fhir.example", "p1");
  const std::string text = json::Write(e);
  for (const char* want : {"dr-house", "ehr-app", "TREAT", "BTG", "Patient/p1", "Observation/o1",
                           "2026-12-05T10:00:00.000Z"}) {
    EXPECT_THAT(text, HasSubstr(want));
  }
  for (const char* hidden :
       {"10.1.2.3", "EHR/1.0", "other-patient", "user/*.rs", "default@1", "req-1", "node-7",
        "Smith", "bmFtZT1TbWl0aA", "unconscious", "bg-9", "network"}) {
    EXPECT_THAT(text, Not(HasSubstr(hidden))) << hidden;
  }
}

TEST(AuditEvent, DisclosuresAreSuccessfulDataAccessesAboutThePatient) {
  audit::AuditRecord r = Read("p1");
  EXPECT_TRUE(IsDisclosureTo(r, "p1"));
  EXPECT_TRUE(IsDisclosureTo(r, "other-patient"));
  EXPECT_FALSE(IsDisclosureTo(r, "p3"));
  r.outcome = "denied";
  EXPECT_FALSE(IsDisclosureTo(r, "p1"));
  r = Read("p1");
  r.action = "token";
  EXPECT_FALSE(IsDisclosureTo(r, "p1"));
  r = Read("p1");
  r.resource_type = "AuditEvent";
  r.action = "search-type";
  EXPECT_FALSE(IsDisclosureTo(r, "p1"));
}

}  // namespace
}  // namespace fhirward::server
