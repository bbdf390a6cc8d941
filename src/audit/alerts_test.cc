#include "audit/alerts.h"

#include <filesystem>
#include <thread>

#include "audit/audit_reader.h"
#include "audit/sink.h"
#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fhirward::audit {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kT0 = 1796472000000;  // 2026-12-05T12:00:00Z

std::string At(int64_t ms) {
  return FormatInstant(std::chrono::system_clock::time_point(std::chrono::milliseconds(ms)));
}

AuditRecord Login(int64_t ms, std::string user, std::string address, bool ok = false) {
  AuditRecord r;
  r.time = At(ms);
  r.action = "login";
  r.subject = std::move(user);
  r.client_id = "portal";
  r.client_address = std::move(address);
  r.outcome = ok ? "success" : "denied";
  r.status_code = ok ? 200 : 401;
  return r;
}

AuditRecord Read(int64_t ms, std::string subject, std::string patient, int64_t count = 1,
                 std::string client = "app") {
  AuditRecord r;
  r.time = At(ms);
  r.action = "read";
  r.subject = std::move(subject);
  r.client_id = std::move(client);
  r.client_address = "10.0.0.5";
  r.resource_type = "Patient";
  r.patient_id = std::move(patient);
  r.outcome = "success";
  r.status_code = 200;
  r.count = count;
  return r;
}

AlertRule Rule(std::string name, std::string kind) {
  AlertRule r;
  r.name = std::move(name);
  r.kind = std::move(kind);
  return r;
}

// Feeds records as seq 1, 2, ...; returns every alert raised.
struct Feed {
  explicit Feed(std::vector<AlertRule> rules) {
    for (AlertRule& r : rules) EXPECT_TRUE(CheckAlertRule(r).ok()) << r.name;
    eval = std::make_unique<AlertRules>(std::move(rules), "node-1");
  }
  std::vector<AuditRecord> operator()(const AuditRecord& r) {
    auto a = eval->Observe(++seq, r);
    all.insert(all.end(), a.begin(), a.end());
    return a;
  }
  std::unique_ptr<AlertRules> eval;
  int64_t seq = 0;
  std::vector<AuditRecord> all;
};

TEST(AlertTime, ParsesRecordInstants) {
  EXPECT_EQ(RecordTimeMs("2026-12-05T12:00:00Z"), kT0);
  EXPECT_EQ(RecordTimeMs("2026-12-05T12:00:00.5Z"), kT0 + 500);
  EXPECT_EQ(RecordTimeMs("2026-12-05T12:00:00.123456Z"), kT0 + 123);
  EXPECT_EQ(RecordTimeMs(At(kT0 + 61001)), kT0 + 61001);
  for (const char* bad : {"", "2026-12-05", "2026-12-05T12:00:00", "2026-12-05T12:00:00+01:00",
                          "2026-13-05T12:00:00Z", "2026-12-05T12:00:00.Z", "x026-12-05T12:00:00Z",
                          "2026-12-05T12:00:00.1234567890Z"}) {
    EXPECT_FALSE(RecordTimeMs(bad).has_value()) << bad;
  }
}

TEST(AlertRuleConfig, IsCheckedAndGetsItsDefaultKey) {
  AlertRule r = Rule("logins", "failed_login");
  EXPECT_FALSE(CheckAlertRule(r).ok());  // threshold missing
  r.threshold = 5;
  ASSERT_TRUE(CheckAlertRule(r).ok());
  EXPECT_EQ(r.by, "user");
  r.by = "principal";
  EXPECT_FALSE(CheckAlertRule(r).ok());
  AlertRule m = Rule("mass", "mass_access");
  EXPECT_FALSE(CheckAlertRule(m).ok());  // neither patients nor resources
  m.resources = 1000;
  EXPECT_TRUE(CheckAlertRule(m).ok());
  AlertRule a = Rule("odd", "anomaly");
  a.alpha = 0;
  EXPECT_FALSE(CheckAlertRule(a).ok());
  a.alpha = 0.2;
  EXPECT_TRUE(CheckAlertRule(a).ok());
  EXPECT_EQ(a.by, "client");
  AlertRule bad = Rule("Bad Name", "break_glass");
  EXPECT_FALSE(CheckAlertRule(bad).ok());
  AlertRule unknown = Rule("u", "geo_velocity");
  EXPECT_FALSE(CheckAlertRule(unknown).ok());
  AlertRule w = Rule("w", "break_glass");
  w.window_seconds = 0;
  EXPECT_FALSE(CheckAlertRule(w).ok());
}

TEST(AlertRules, FailedLoginsPerUserFireOnceAboveTheThresholdWithinTheWindow) {
  AlertRule r = Rule("logins", "failed_login");
  r.threshold = 3;
  r.window_seconds = 60;
  Feed feed({r});
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(feed(Login(kT0 + i * 1000, "alice", "10.1.1.1")).empty());
  EXPECT_TRUE(feed(Login(kT0 + 3000, "alice", "10.1.1.1", /*ok=*/true)).empty());  // not counted
  EXPECT_TRUE(feed(Login(kT0 + 3500, "bob", "10.1.1.1")).empty());                 // another user
  auto a = feed(Login(kT0 + 4000, "alice", "10.1.1.2"));
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].action, "alert.logins");
  EXPECT_EQ(a[0].subject, "alice");
  EXPECT_EQ(a[0].count, 4);
  EXPECT_EQ(a[0].resource_type, "AuditEvent");
  EXPECT_EQ(a[0].resource_id, "6");
  EXPECT_EQ(a[0].node, "node-1");
  EXPECT_EQ(a[0].time, At(kT0 + 4000));
  EXPECT_THAT(a[0].decision, HasSubstr("rule=logins kind=failed_login by=user key=alice value=4 "
                                       "threshold=3 window=60s first_seq=1 last_seq=6"));
  // Quiet for the window: more failures raise nothing new.
  EXPECT_TRUE(feed(Login(kT0 + 5000, "alice", "10.1.1.1")).empty());
  // Once the window passed, the old failures no longer count...
  EXPECT_TRUE(feed(Login(kT0 + 70000, "alice", "10.1.1.1")).empty());
  // ...and a new burst alerts again.
  for (int i = 1; i <= 2; ++i) EXPECT_TRUE(feed(Login(kT0 + 70000 + i, "alice", "x")).empty());
  EXPECT_EQ(feed(Login(kT0 + 70010, "alice", "x")).size(), 1u);
  // TOTP failures and client authentication failures are failed logins too.
  AuditRecord totp = Login(kT0, "a", "b");
  totp.action = "login-totp";
  EXPECT_TRUE(IsFailedLogin(totp));
  totp.action = "token-client-auth";
  EXPECT_TRUE(IsFailedLogin(totp));
  totp.action = "token-issue";
  EXPECT_FALSE(IsFailedLogin(totp));
}

TEST(AlertRules, FailedLoginsPerAddressCountEveryNameTried) {
  AlertRule r = Rule("spray", "failed_login");
  r.threshold = 4;
  r.by = "address";
  Feed feed({r});
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(feed(Login(kT0 + i, "user" + std::to_string(i), "203.0.113.9")).empty());
  }
  auto a = feed(Login(kT0 + 10, "user9", "203.0.113.9"));
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].client_address, "203.0.113.9");
  EXPECT_EQ(a[0].subject, "");
}

TEST(AlertRules, BreakGlassAlertsOnTheOpeningOfEachEpisode) {
  Feed feed({Rule("btg", "break_glass")});
  AuditRecord open = Read(kT0, "dr-x", "p1");
  open.break_glass = "ep-1";
  open.break_glass_reason = "unconscious patient";
  open.purpose_of_use = "ETREAT";
  open.decision = "default@1 allow role=clinician break_glass=opened";
  AuditRecord later = open;
  later.decision = "default@1 allow role=clinician";
  later.time = At(kT0 + 1000);
  auto a = feed(open);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].break_glass, "ep-1");
  EXPECT_EQ(a[0].patient_id, "p1");
  EXPECT_EQ(a[0].subject, "dr-x");
  EXPECT_EQ(a[0].purpose_of_use, "ETREAT");
  EXPECT_EQ(a[0].break_glass_reason, "");  // the justification stays in the trail's record
  EXPECT_TRUE(feed(later).empty());        // accesses within the episode
  AuditRecord plain = Read(kT0 + 2000, "dr-x", "p2");
  EXPECT_TRUE(feed(plain).empty());
  AuditRecord second = open;
  second.break_glass = "ep-2";
  EXPECT_EQ(feed(second).size(), 1u);
}

TEST(AlertRules, MassAccessCountsDistinctPatientsAndResourcesPerPrincipal) {
  AlertRule by_patients = Rule("mass-patients", "mass_access");
  by_patients.patients = 5;
  by_patients.window_seconds = 300;
  AlertRule by_resources = Rule("mass-resources", "mass_access");
  by_resources.resources = 1000;
  Feed feed({by_patients, by_resources});
  // The same patients again and again: not breadth.
  for (int i = 0; i < 50; ++i)
    EXPECT_TRUE(feed(Read(kT0 + i, "dr-a", "p" + std::to_string(i % 3))).empty());
  // A search carrying many patients counts every one.
  AuditRecord search = Read(kT0 + 100, "dr-a", "");
  search.action = "search-type";
  search.patients = {"p0", "p3", "p4", "p5"};
  search.count = 4;
  auto a = feed(search);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].action, "alert.mass-patients");
  EXPECT_EQ(a[0].count, 6);
  EXPECT_THAT(a[0].decision, HasSubstr("measure=patients"));
  EXPECT_EQ(a[0].subject, "dr-a");
  // Refused requests carry no data.
  AuditRecord denied = Read(kT0 + 200, "dr-b", "q1", 2000);
  denied.outcome = "denied";
  EXPECT_TRUE(feed(denied).empty());
  // A bulk export by a backend client (no user): resources.
  AuditRecord bulk = Read(kT0 + 300, "", "", 1500, "etl");
  bulk.action = "operation";
  a = feed(bulk);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].action, "alert.mass-resources");
  EXPECT_EQ(a[0].count, 1500);
  EXPECT_THAT(a[0].decision, HasSubstr("key=client:etl"));
  EXPECT_EQ(a[0].client_id, "etl");
}

TEST(AlertRules, DenialSpikes) {
  AlertRule all = Rule("denials", "denial_spike");
  all.threshold = 10;
  all.window_seconds = 10;
  AlertRule per_client = Rule("denials-client", "denial_spike");
  per_client.threshold = 6;
  per_client.by = "client";
  Feed feed({all, per_client});
  for (int i = 0; i < 5; ++i) {
    AuditRecord r = Read(kT0 + i, "u", "p", 0, "app-a");
    r.outcome = i % 2 ? "denied" : "unauthenticated";
    EXPECT_TRUE(feed(r).empty());
    AuditRecord s = Read(kT0 + i, "v", "p", 0, "app-b");
    s.outcome = "denied";
    auto a = feed(s);
    if (i < 4) EXPECT_TRUE(a.empty()) << i;
    if (i == 4) EXPECT_EQ(a.size(), 0u);  // 10 refusals: not more than 10
  }
  AuditRecord r = Read(kT0 + 6, "v", "p", 0, "app-b");
  r.outcome = "denied";
  auto a = feed(r);  // 11 in all, 6 for app-b
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].action, "alert.denials");
  a = feed(r);  // 7 for app-b
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].action, "alert.denials-client");
  EXPECT_EQ(a[0].client_id, "app-b");
  // Successes are not refusals; spread over time, refusals do not spike.
  Feed slow({all});
  for (int i = 0; i < 100; ++i) {
    AuditRecord d = Read(kT0 + i * 2000, "u", "p");
    d.outcome = "denied";
    EXPECT_TRUE(slow(d).empty());
  }
}

TEST(AlertRules, AnomalyScoresAClientAgainstItsOwnHistory) {
  AlertRule r = Rule("odd", "anomaly");
  r.bucket_seconds = 60;
  r.warmup_buckets = 20;
  r.z = 4;
  r.min_requests = 20;
  Feed feed({r});
  // 30 minutes of 8-12 requests a minute over a handful of patients.
  int64_t t = kT0;
  for (int b = 0; b < 30; ++b) {
    for (int i = 0; i < 8 + b % 5; ++i) {
      EXPECT_TRUE(feed(Read(t + b * 60000 + i * 1000, "", "p" + std::to_string(i % 4))).empty());
    }
  }
  // Another client's burst is its own (no history: in warm-up).
  for (int i = 0; i < 200; ++i) feed(Read(t + 30 * 60000 + i, "", "x", 1, "other"));
  // Then a minute of 150 requests over 150 patients.
  for (int i = 0; i < 150; ++i) {
    EXPECT_TRUE(feed(Read(t + 31 * 60000 + i * 100, "", "q" + std::to_string(i))).empty());
  }
  EXPECT_TRUE(feed.all.empty());
  // The bucket is scored when it ends: by the clock...
  auto a = feed.eval->Advance(t + 32 * 60000 + 1);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].action, "alert.odd");
  EXPECT_EQ(a[0].client_id, "app");
  EXPECT_EQ(a[0].count, 150);
  EXPECT_THAT(a[0].decision, HasSubstr("requests=150 patients=150"));
  EXPECT_EQ(a[0].time, At(t + 32 * 60000 - 1));
  // Steady traffic afterwards raises nothing.
  for (int b = 33; b < 40; ++b) {
    for (int i = 0; i < 10; ++i) feed(Read(t + b * 60000 + i * 1000, "", "p1"));
  }
  EXPECT_TRUE(feed.eval->Advance(t + 41 * 60000).empty());
  EXPECT_TRUE(feed.all.empty());
}

TEST(AlertRules, AnomalyNeedsTheMinimumVolumeAndIgnoresAlertRecords) {
  AlertRule r = Rule("odd", "anomaly");
  r.warmup_buckets = 5;
  r.min_requests = 50;
  r.min_patients = 50;
  Feed feed({r});
  for (int b = 0; b < 10; ++b) feed(Read(kT0 + b * 60000, "", "p"));
  for (int i = 0; i < 30; ++i) feed(Read(kT0 + 10 * 60000 + i, "", "p"));  // z high, volume low
  EXPECT_TRUE(feed.eval->Advance(kT0 + 12 * 60000).empty());
  AuditRecord alert = Read(kT0 + 13 * 60000, "", "p");
  alert.action = "alert.other";
  for (int i = 0; i < 500; ++i) feed(alert);
  EXPECT_TRUE(feed.eval->Advance(kT0 + 15 * 60000).empty());
}

TEST(AlertRules, StateStaysBounded) {
  AlertRule r = Rule("spray", "failed_login");
  r.threshold = 1000;
  r.by = "address";
  r.window_seconds = 1;
  Feed feed({r});
  for (int i = 0; i < 20000; ++i) {
    feed(Login(kT0 + i * 10, "u", "198.51.100." + std::to_string(i)));
  }
  // Keys whose window emptied are dropped (swept every 4096 records).
  EXPECT_LT(feed.eval->tracked_keys(), 5000u);
}

TEST(AlertRules, EverySyntheticTriggerFiresItsRule) {
  std::vector<AlertRule> rules;
  AlertRule a = Rule("a", "failed_login");
  a.threshold = 5;
  rules.push_back(a);
  AlertRule b = Rule("b", "failed_login");
  b.threshold = 20;
  b.by = "address";
  rules.push_back(b);
  rules.push_back(Rule("c", "break_glass"));
  AlertRule d = Rule("d", "mass_access");
  d.patients = 40;
  d.resources = 5000;
  rules.push_back(d);
  AlertRule e = Rule("e", "denial_spike");
  e.threshold = 30;
  rules.push_back(e);
  AlertRule f = Rule("f", "anomaly");
  rules.push_back(f);
  AlertRule g = Rule("g", "mass_access");
  g.resources = 100000;
  rules.push_back(g);
  for (AlertRule& r : rules) {
    ASSERT_TRUE(CheckAlertRule(r).ok());
    AlertRules eval({r}, "n");
    int64_t advance = 0;
    std::vector<AuditRecord> fired;
    int64_t seq = 0;
    for (const AuditRecord& rec : SyntheticTrigger(r, kT0, &advance)) {
      for (auto& x : eval.Observe(++seq, rec)) fired.push_back(x);
    }
    if (advance > 0) {
      for (auto& x : eval.Advance(advance)) fired.push_back(x);
    }
    ASSERT_EQ(fired.size(), 1u) << r.name << " " << r.kind;
    EXPECT_EQ(fired[0].action, "alert." + r.name);
  }
}

class AlertEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "alerts_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    db_ = dir_ + "/audit.db";
    Reopen();
  }
  void TearDown() override {
    if (log_) log_->Close();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    if (log_) log_->Close();
    log_.reset();
    auto log = AuditLog::Open(db_, SecretBytes(std::string(32, 'k')));
    ASSERT_TRUE(log.ok());
    log_ = std::move(*log);
  }
  std::unique_ptr<AlertEngine> Start() {
    AlertRule r = Rule("logins", "failed_login");
    r.threshold = 2;
    r.window_seconds = 3600;
    AlertEngineOptions o;
    o.cursor_path = dir_ + "/alerts.cursor";
    o.node = "node-1";
    o.poll = std::chrono::milliseconds(20);
    o.on_alert = [this](int64_t seq, const AuditRecord&) { alerted_.push_back(seq); };
    auto e = AlertEngine::Start(db_, log_.get(), {r}, o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }
  int64_t Add(const AuditRecord& r) {
    auto s = log_->Append(r);
    EXPECT_TRUE(s.ok());
    return s.ok() ? *s : 0;
  }
  std::vector<std::string> Alerts() {
    auto reader = AuditReader::Open(db_);
    std::vector<std::string> out;
    auto all = (*reader)->After(0, 10000);
    for (const StoredRecord& r : *all) {
      auto rec = AuditRecord::FromJson(r.json);
      if (rec->action.rfind("alert.", 0) == 0) out.push_back(rec->decision);
    }
    return out;
  }
  std::string dir_, db_;
  std::unique_ptr<AuditLog> log_;
  std::vector<int64_t> alerted_;
};

TEST_F(AlertEngineTest, AppendsAlertsToTheTrailAndKeepsItsWindowsAcrossARestart) {
  const int64_t now = RecordTimeMs(FormatInstant(std::chrono::system_clock::now())).value();
  // History before the rules existed is not news.
  for (int i = 0; i < 5; ++i) Add(Login(now - 10000 + i, "old", "1.1.1.1"));
  auto engine = Start();
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(LoadCursorFile(dir_ + "/alerts.cursor"), 5);
  Add(Login(now, "mallory", "1.1.1.1"));
  Add(Login(now + 1, "mallory", "1.1.1.1"));
  int64_t last = Add(Login(now + 2, "mallory", "1.1.1.1"));
  engine->Notify();
  ASSERT_TRUE(engine->WaitEvaluated(last, std::chrono::seconds(10)));
  auto alerts = Alerts();
  ASSERT_EQ(alerts.size(), 1u);
  EXPECT_THAT(alerts[0], HasSubstr("key=mallory value=3"));
  EXPECT_EQ(alerted_.size(), 1u);
  EXPECT_EQ(engine->Status().alerts, 1);
  // The alert itself is evaluated (and ignored): the cursor passes it.
  ASSERT_TRUE(engine->WaitEvaluated(alerted_[0], std::chrono::seconds(10)));
  engine->Stop();
  engine.reset();

  // Restart: the window is replayed, so mallory is still within the quiet
  // period (no second alert), and eve's earlier failure still counts.
  Add(Login(now + 3, "eve", "2.2.2.2"));
  engine = Start();
  Add(Login(now + 4, "mallory", "1.1.1.1"));
  Add(Login(now + 5, "eve", "2.2.2.2"));
  last = Add(Login(now + 6, "eve", "2.2.2.2"));
  engine->Notify();
  ASSERT_TRUE(engine->WaitEvaluated(last, std::chrono::seconds(10)));
  engine->Stop();
  alerts = Alerts();
  ASSERT_EQ(alerts.size(), 2u);
  EXPECT_THAT(alerts[1], HasSubstr("key=eve value=3"));
  // The trail with its alerts still verifies.
  auto report = VerifyAuditLog(db_, SecretBytes(std::string(32, 'k')));
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok) << report->summary;
}

TEST_F(AlertEngineTest, DuplicateRuleNamesAreRefused) {
  AlertRule r = Rule("x", "break_glass");
  AlertEngineOptions o;
  o.cursor_path = dir_ + "/alerts.cursor";
  EXPECT_FALSE(AlertEngine::Start(db_, log_.get(), {r, r}, o).ok());
}

}  // namespace
}  // namespace fhirward::audit
