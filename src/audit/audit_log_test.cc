#include "audit/audit_log.h"

#include <sqlite3.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "crypto/aead.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "json/value.h"

namespace fhirward::audit {
namespace {

using ::testing::HasSubstr;

SecretBytes Key() { return SecretBytes(std::string(32, 'k')); }
SecretBytes OtherKey() { return SecretBytes(std::string(32, 'x')); }

AuditRecord MakeRecord(int i) {
  AuditRecord r;
  r.time = "2024-05-01T12:00:00." + std::to_string(100000 + i % 900000) + "Z";
  r.request_id = "req-" + std::to_string(i);
  r.trace_id = "trace";
  r.client_address = "10.0.0.1";
  r.user_agent = "curl/8";
  r.subject = "user-1";
  r.client_id = "app";
  r.scopes = "patient/*.rs";
  r.action = "read";
  r.method = "GET";
  r.resource_type = "Patient";
  r.resource_id = "p" + std::to_string(i);
  r.version_id = "1";
  r.patient_id = "p" + std::to_string(i);
  r.outcome = "success";
  r.status_code = 200;
  r.policy_id = "default@1";
  r.count = 1;
  return r;
}

std::string U64Be(uint64_t v) {
  std::string s;
  for (int shift = 56; shift >= 0; shift -= 8) s.push_back(static_cast<char>((v >> shift) & 0xff));
  return s;
}

// The documented formulas, written independently of the implementation.
std::string ChainHash(int64_t seq, const std::string& prev, const std::string& record) {
  return crypto::Sha256("fhirward-audit-v1" + U64Be(seq) + prev + record);
}
std::string AnchorMac(const SecretBytes& key, int64_t seq, const std::string& hash) {
  return crypto::HmacSha256(key.UnsafeView(), "fhirward-audit-anchor-v1" + U64Be(seq) + hash);
}

// A raw connection to the audit database, for inspection and tampering.
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
    sqlite3_busy_timeout(db_, 5000);
  }
  ~RawDb() { sqlite3_close_v2(db_); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;

  // Returns the sqlite result code; `error` gets the message.
  int Exec(const std::string& sql, std::string* error = nullptr) {
    char* err = nullptr;
    int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
    if (error != nullptr) *error = err != nullptr ? err : "";
    sqlite3_free(err);
    return rc;
  }
  void MustExec(const std::string& sql) {
    std::string err;
    ASSERT_EQ(Exec(sql, &err), SQLITE_OK) << sql << ": " << err;
  }
  void DropTriggers() {
    MustExec("DROP TRIGGER audit_records_no_update");
    MustExec("DROP TRIGGER audit_records_no_delete");
    MustExec("DROP TRIGGER audit_anchor_no_delete");
  }
  // Column `col` (text or blob) of the row `seq`.
  std::string Get(int64_t seq, const std::string& col) {
    return Query("SELECT " + col + " FROM audit_records WHERE seq = ?1", seq);
  }
  std::string Query(const std::string& sql, int64_t param) {
    sqlite3_stmt* s = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr), SQLITE_OK) << sql;
    sqlite3_bind_int64(s, 1, param);
    std::string out;
    if (sqlite3_step(s) == SQLITE_ROW) {
      const void* p = sqlite3_column_blob(s, 0);
      out.assign(static_cast<const char*>(p), sqlite3_column_bytes(s, 0));
    }
    sqlite3_finalize(s);
    return out;
  }
  // Runs `sql` with ?1 = seq, ?2 = text/blob `a`, ?3 = blob `b` (each if used).
  void Run(const std::string& sql, int64_t seq, const std::string& a = {},
           const std::string& b = {}, bool a_is_blob = false) {
    sqlite3_stmt* s = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr), SQLITE_OK) << sql;
    int n = sqlite3_bind_parameter_count(s);
    sqlite3_bind_int64(s, 1, seq);
    if (n >= 2) {
      if (a_is_blob) {
        sqlite3_bind_blob(s, 2, a.data(), static_cast<int>(a.size()), SQLITE_TRANSIENT);
      } else {
        sqlite3_bind_text(s, 2, a.data(), static_cast<int>(a.size()), SQLITE_TRANSIENT);
      }
    }
    if (n >= 3) sqlite3_bind_blob(s, 3, b.data(), static_cast<int>(b.size()), SQLITE_TRANSIENT);
    int rc = sqlite3_step(s);
    std::string err = sqlite3_errmsg(db_);
    sqlite3_finalize(s);
    ASSERT_EQ(rc, SQLITE_DONE) << sql << ": " << err;
  }
  sqlite3* get() { return db_; }

 private:
  sqlite3* db_ = nullptr;
};

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "audit_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/audit.db";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<AuditLog> OpenLog(const AuditOptions& options = {}) {
    auto log = AuditLog::Open(path_, Key(), options);
    EXPECT_TRUE(log.ok()) << log.status();
    return log.ok() ? std::move(*log) : nullptr;
  }
  // A closed log with records 1..n.
  void Fill(int n) {
    auto log = OpenLog();
    ASSERT_NE(log, nullptr);
    for (int i = 1; i <= n; ++i) {
      auto seq = log->Append(MakeRecord(i));
      ASSERT_TRUE(seq.ok()) << seq.status();
      ASSERT_EQ(*seq, i);
    }
    log->Close();
  }
  VerifyReport Verify(const SecretBytes& key) {
    auto r = VerifyAuditLog(path_, key);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : VerifyReport{};
  }
  VerifyReport Verify() { return Verify(Key()); }

  std::string dir_;
  std::string path_;
};

// ---- ToJson ----------------------------------------------------------------

TEST(AuditRecordTest, ToJsonEmptyRecordHasEveryMemberInOrder) {
  AuditRecord r;
  EXPECT_EQ(r.ToJson(),
            R"({"time":"","request_id":"","trace_id":"","client_address":"","user_agent":"",)"
            R"("subject":"","client_id":"","scopes":"","action":"","method":"",)"
            R"("resource_type":"","resource_id":"","version_id":"","patient_id":"",)"
            R"("outcome":"","status_code":0,"error":"","policy_id":"","count":0,"decision":"",)"
            R"("break_glass":"","break_glass_reason":"","shadow":"","roles":"",)"
            R"("purpose_of_use":"","patients":[],"query":"","node":"","bytes":0})");
}

TEST(AuditRecordTest, ToJsonIsCanonicalAndStable) {
  AuditRecord r = MakeRecord(7);
  r.error = "insufficient_scope";
  r.count = 1234567890123;
  const std::string expected =
      R"({"time":"2024-05-01T12:00:00.100007Z","request_id":"req-7","trace_id":"trace",)"
      R"("client_address":"10.0.0.1","user_agent":"curl/8","subject":"user-1",)"
      R"("client_id":"app","scopes":"patient/*.rs","action":"read","method":"GET",)"
      R"("resource_type":"Patient","resource_id":"p7","version_id":"1","patient_id":"p7",)"
      R"("outcome":"success","status_code":200,"error":"insufficient_scope",)"
      R"("policy_id":"default@1","count":1234567890123,"decision":"","break_glass":"",)"
      R"("break_glass_reason":"","shadow":"","roles":"","purpose_of_use":"","patients":[],)"
      R"("query":"","node":"","bytes":0})";
  EXPECT_EQ(r.ToJson(), expected);
  EXPECT_EQ(r.ToJson(), r.ToJson());
  AuditRecord copy = r;
  EXPECT_EQ(copy.ToJson(), expected);
}

TEST(AuditRecordTest, ToJsonEscapesAndHasNoUnexpectedMembers) {
  AuditRecord r = MakeRecord(1);
  r.user_agent = "evil\"agent\\\n\x01\",\"injected\":\"x";
  r.subject = "s\xc3\xa9";  // UTF-8 passes through
  r.status_code = -1;
  std::string text = r.ToJson();
  auto parsed = json::Parse(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status() << " in " << text;
  ASSERT_TRUE(parsed->is_object());
  std::vector<std::string> keys;
  for (const auto& [k, v] : parsed->members()) keys.push_back(k);
  EXPECT_THAT(keys, ::testing::ElementsAre(
                        "time", "request_id", "trace_id", "client_address", "user_agent", "subject",
                        "client_id", "scopes", "action", "method", "resource_type", "resource_id",
                        "version_id", "patient_id", "outcome", "status_code", "error", "policy_id",
                        "count", "decision", "break_glass", "break_glass_reason", "shadow", "roles",
                        "purpose_of_use", "patients", "query", "node", "bytes"));
  EXPECT_EQ(parsed->GetString("user_agent"), r.user_agent);
  EXPECT_EQ(parsed->GetString("subject"), r.subject);
  EXPECT_EQ(parsed->Find("status_code")->as_int64(), -1);
  EXPECT_EQ(parsed->Find("count")->as_int64(), 1);
  EXPECT_EQ(parsed->Find("injected"), nullptr);
}

TEST(AuditRecordTest, FromJsonReadsBackEveryFieldAndOldRecords) {
  AuditRecord r = MakeRecord(3);
  r.roles = "auditor clinician";
  r.purpose_of_use = "TREAT";
  r.patients = {"p3", "p9"};
  r.query = "code=1234-5&_count=10";
  r.node = "node-a";
  r.bytes = 4096;
  r.break_glass = "bg-1";
  auto back = AuditRecord::FromJson(r.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(), r.ToJson());
  // A record of the first version (no roles ... bytes) still reads.
  auto old = AuditRecord::FromJson(R"({"time":"t","action":"read","outcome":"success"})");
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(old->action, "read");
  EXPECT_TRUE(old->patients.empty());
  EXPECT_FALSE(AuditRecord::FromJson("[1]").ok());
  // Search terms: distinct, sorted, from the record's own fields.
  auto terms = IndexTerms(r);
  EXPECT_THAT(terms,
              ::testing::ElementsAre(std::pair<std::string, std::string>{"action", "read"},
                                     std::pair<std::string, std::string>{"agent", "user-1"},
                                     std::pair<std::string, std::string>{"break-glass", "bg-1"},
                                     std::pair<std::string, std::string>{"client", "app"},
                                     std::pair<std::string, std::string>{"entity", "Patient/p3"},
                                     std::pair<std::string, std::string>{"outcome", "success"},
                                     std::pair<std::string, std::string>{"patient", "p3"},
                                     std::pair<std::string, std::string>{"patient", "p9"},
                                     std::pair<std::string, std::string>{"type", "Patient"}));
}

// ---- appending -------------------------------------------------------------

TEST_F(AuditLogTest, RejectsWrongKeySize) {
  EXPECT_FALSE(AuditLog::Open(path_, SecretBytes(std::string(16, 'k'))).ok());
  EXPECT_FALSE(AuditLog::Open(path_, SecretBytes()).ok());
}

TEST_F(AuditLogTest, EmptyLogVerifies) {
  OpenLog()->Close();
  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.records, 0);
  EXPECT_EQ(r.first_bad_seq, 0);
}

TEST_F(AuditLogTest, StoresRecordsWithTheDocumentedChainAndAnchor) {
  Fill(3);
  RawDb db(path_);
  std::string prev(32, '\0');
  for (int seq = 1; seq <= 3; ++seq) {
    std::string record = db.Get(seq, "record");
    EXPECT_EQ(record, MakeRecord(seq).ToJson());
    EXPECT_EQ(db.Get(seq, "time"), MakeRecord(seq).time);
    EXPECT_EQ(db.Get(seq, "prev_hash"), prev);
    std::string hash = ChainHash(seq, prev, record);
    EXPECT_EQ(db.Get(seq, "hash"), hash);
    prev = hash;
  }
  EXPECT_EQ(db.Query("SELECT seq FROM audit_anchor WHERE id = ?1", 1), "3");
  EXPECT_EQ(db.Query("SELECT hash FROM audit_anchor WHERE id = ?1", 1), prev);
  EXPECT_EQ(db.Query("SELECT mac FROM audit_anchor WHERE id = ?1", 1), AnchorMac(Key(), 3, prev));
  EXPECT_EQ(db.Query("PRAGMA journal_mode", 0), "wal");

  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.records, 3);
  EXPECT_THAT(r.summary, HasSubstr("audit chain intact: 3 records"));
  EXPECT_EQ(r.summary.find('\n'), std::string::npos);
}

TEST_F(AuditLogTest, ConcurrentAppendsGetDistinctSeqsAndAreBatched) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 250;
  auto log = OpenLog();
  std::vector<std::vector<int64_t>> seqs(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto seq = log->Append(MakeRecord(t * kPerThread + i));
        if (!seq.ok()) {
          ++failures;
          continue;
        }
        seqs[t].push_back(*seq);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);

  std::set<int64_t> all;
  for (const auto& v : seqs) all.insert(v.begin(), v.end());
  constexpr int kTotal = kThreads * kPerThread;
  ASSERT_EQ(all.size(), static_cast<size_t>(kTotal));
  EXPECT_EQ(*all.begin(), 1);
  EXPECT_EQ(*all.rbegin(), kTotal);

  AuditStats stats = log->stats();
  EXPECT_EQ(stats.records, kTotal);
  EXPECT_LT(stats.commits, kTotal) << "no group commit happened";
  EXPECT_GT(stats.largest_batch, 1);
  EXPECT_EQ(stats.failed_batches, 0);
  std::printf("[ info ] %d appends from %d threads in %lld commits (largest batch %lld)\n", kTotal,
              kThreads, static_cast<long long>(stats.commits),
              static_cast<long long>(stats.largest_batch));
  log->Close();

  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.records, kTotal);
}

TEST_F(AuditLogTest, MaxBatchIsRespected) {
  AuditOptions options;
  options.max_batch = 4;
  options.max_batch_delay = std::chrono::milliseconds(5);
  auto log = OpenLog(options);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) EXPECT_TRUE(log->Append(MakeRecord(t * 20 + i)).ok());
    });
  }
  for (auto& th : threads) th.join();
  AuditStats stats = log->stats();
  EXPECT_EQ(stats.records, 160);
  EXPECT_LE(stats.largest_batch, 4);
  EXPECT_GE(stats.commits, 40);
  log->Close();
  EXPECT_TRUE(Verify().ok);
}

TEST_F(AuditLogTest, ReopenContinuesTheChain) {
  Fill(3);
  {
    auto log = OpenLog();
    ASSERT_NE(log, nullptr);
    auto seq = log->Append(MakeRecord(4));
    ASSERT_TRUE(seq.ok()) << seq.status();
    EXPECT_EQ(*seq, 4);
    EXPECT_EQ(*log->Append(MakeRecord(5)), 5);
  }  // destructor closes
  {
    auto log = OpenLog();
    EXPECT_EQ(*log->Append(MakeRecord(6)), 6);
  }
  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.records, 6);
}

TEST_F(AuditLogTest, AppendAfterCloseFails) {
  auto log = OpenLog();
  ASSERT_TRUE(log->Append(MakeRecord(1)).ok());
  log->Close();
  auto seq = log->Append(MakeRecord(2));
  ASSERT_FALSE(seq.ok());
  EXPECT_EQ(CodeOf(seq.status()), ErrorCode::kAuditUnavailable);
  log->Close();  // idempotent
  log.reset();
  EXPECT_EQ(Verify().records, 1);
}

TEST_F(AuditLogTest, CloseFlushesQueuedAppends) {
  AuditOptions options;
  options.max_batch_delay = std::chrono::milliseconds(200);
  auto log = OpenLog(options);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0}, unavailable{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto s = log->Append(MakeRecord(t));
      if (s.ok()) {
        ++ok;
      } else if (CodeOf(s.status()) == ErrorCode::kAuditUnavailable) {
        ++unavailable;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  log->Close();  // must not wait the full batch delay, must not drop queued records
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load() + unavailable.load(), 4);
  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.records, ok.load());
}

TEST_F(AuditLogTest, LockedDatabaseFailsTheBatchAndTheChainSurvives) {
  AuditOptions options;
  options.busy_timeout = std::chrono::milliseconds(50);
  auto log = OpenLog(options);
  ASSERT_EQ(*log->Append(MakeRecord(1)), 1);
  ASSERT_EQ(*log->Append(MakeRecord(2)), 2);
  {
    RawDb other(path_);
    other.MustExec("BEGIN IMMEDIATE");
    auto seq = log->Append(MakeRecord(3));
    ASSERT_FALSE(seq.ok());
    EXPECT_EQ(CodeOf(seq.status()), ErrorCode::kAuditUnavailable);
    other.MustExec("ROLLBACK");
  }
  EXPECT_EQ(log->stats().failed_batches, 1);
  auto seq = log->Append(MakeRecord(3));
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_EQ(*seq, 3);
  log->Close();
  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.records, 3);
}

TEST_F(AuditLogTest, FailedCommitFailsEveryWaiterAndDoesNotAdvanceTheHead) {
  AuditOptions options;
  options.max_batch_delay = std::chrono::milliseconds(100);
  auto log = OpenLog(options);
  ASSERT_EQ(*log->Append(MakeRecord(1)), 1);
  RawDb db(path_);
  // Fail the anchor update, i.e. after the batch's records were inserted.
  db.MustExec("CREATE TABLE fail_switch(x)");
  db.MustExec(
      "CREATE TRIGGER fail_anchor BEFORE UPDATE ON audit_anchor "
      "WHEN EXISTS(SELECT 1 FROM fail_switch) BEGIN SELECT RAISE(ABORT, 'injected'); END");
  db.MustExec("INSERT INTO fail_switch VALUES(1)");

  std::vector<std::thread> threads;
  std::atomic<int> unavailable{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto s = log->Append(MakeRecord(10 + t));
      if (!s.ok() && CodeOf(s.status()) == ErrorCode::kAuditUnavailable) ++unavailable;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(unavailable.load(), 4);
  EXPECT_GE(log->stats().failed_batches, 1);
  EXPECT_EQ(db.Query("SELECT count(*) FROM audit_records WHERE seq > ?1", 0), "1");

  db.MustExec("DELETE FROM fail_switch");
  auto seq = log->Append(MakeRecord(2));
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_EQ(*seq, 2);
  log->Close();
  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.records, 2);
}

TEST_F(AuditLogTest, SqlUpdateAndDeleteAreRefusedByTriggers) {
  Fill(3);
  RawDb db(path_);
  std::string err;
  EXPECT_NE(db.Exec("UPDATE audit_records SET record = 'x' WHERE seq = 2", &err), SQLITE_OK);
  EXPECT_THAT(err, HasSubstr("append-only"));
  EXPECT_NE(db.Exec("DELETE FROM audit_records WHERE seq = 3", &err), SQLITE_OK);
  EXPECT_THAT(err, HasSubstr("append-only"));
  EXPECT_NE(db.Exec("DELETE FROM audit_anchor", &err), SQLITE_OK);
  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.records, 3);
}

TEST_F(AuditLogTest, VerifyWhileOpenAndAppending) {
  auto log = OpenLog();
  ASSERT_TRUE(log->Append(MakeRecord(0)).ok());
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 1; !stop.load(); ++i) ASSERT_TRUE(log->Append(MakeRecord(i)).ok());
  });
  for (int i = 0; i < 5; ++i) {
    VerifyReport r = Verify();
    EXPECT_TRUE(r.ok) << r.summary;
    EXPECT_GE(r.records, 1);
  }
  stop = true;
  writer.join();
}

// ---- tampering -------------------------------------------------------------

class AuditTamperTest : public AuditLogTest {
 protected:
  void SetUp() override {
    AuditLogTest::SetUp();
    Fill(5);
  }
  void ExpectBroken(int64_t first_bad, const std::string& why) {
    VerifyReport r = Verify();
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.first_bad_seq, first_bad) << r.summary;
    EXPECT_THAT(r.summary, HasSubstr("broken at record " + std::to_string(first_bad)));
    EXPECT_THAT(r.summary, HasSubstr(why));
    std::printf("[ info ] %s\n", r.summary.c_str());
  }
  void ExpectOpenRefused(const std::string& why) {
    auto log = AuditLog::Open(path_, Key());
    ASSERT_FALSE(log.ok());
    EXPECT_EQ(CodeOf(log.status()), ErrorCode::kAuditUnavailable);
    EXPECT_THAT(log.status().message(), HasSubstr(why));
  }
};

TEST_F(AuditTamperTest, AlteredRecord) {
  RawDb db(path_);
  db.DropTriggers();
  std::string record = db.Get(3, "record");
  record.replace(record.find("\"read\""), 6, "\"delete\"");
  db.Run("UPDATE audit_records SET record = ?2 WHERE seq = ?1", 3, record);
  ExpectBroken(3, "hash mismatch (record altered)");
}

TEST_F(AuditTamperTest, AlteredLastRecordIsRefusedAtOpen) {
  RawDb db(path_);
  db.DropTriggers();
  db.Run("UPDATE audit_records SET record = ?2 WHERE seq = ?1", 5, std::string("{}"));
  ExpectBroken(5, "record altered");
  ExpectOpenRefused("record altered");
}

TEST_F(AuditTamperTest, AlteredTimeColumn) {
  RawDb db(path_);
  db.DropTriggers();
  db.Run("UPDATE audit_records SET time = ?2 WHERE seq = ?1", 2,
         std::string("2020-01-01T00:00:00Z"));
  ExpectBroken(2, "time column");
}

TEST_F(AuditTamperTest, DeletedMiddleRecord) {
  RawDb db(path_);
  db.DropTriggers();
  db.Run("DELETE FROM audit_records WHERE seq = ?1", 3);
  ExpectBroken(3, "record missing");
  EXPECT_EQ(Verify().records, 4);
}

TEST_F(AuditTamperTest, DeletedLastRecordAnchorLeftAsIs) {
  RawDb db(path_);
  db.DropTriggers();
  db.Run("DELETE FROM audit_records WHERE seq = ?1", 5);
  ExpectBroken(5, "removed from the tail");
  ExpectOpenRefused("removed from the tail");
}

TEST_F(AuditTamperTest, DeletedEverything) {
  RawDb db(path_);
  db.DropTriggers();
  db.MustExec("DELETE FROM audit_records");
  ExpectBroken(1, "removed from the tail");
  ExpectOpenRefused("removed from the tail");
}

TEST_F(AuditTamperTest, SwappedRecords) {
  RawDb db(path_);
  db.DropTriggers();
  std::string r2 = db.Get(2, "record"), r4 = db.Get(4, "record");
  db.Run("UPDATE audit_records SET record = ?2 WHERE seq = ?1", 2, r4);
  db.Run("UPDATE audit_records SET record = ?2 WHERE seq = ?1", 4, r2);
  ExpectBroken(2, "hash mismatch");
}

TEST_F(AuditTamperTest, SwappedRowsWithTheirHashes) {
  // Move whole rows (record, prev_hash, hash) to each other's seq.
  RawDb db(path_);
  db.DropTriggers();
  db.MustExec("UPDATE audit_records SET seq = -2 WHERE seq = 2");
  db.MustExec("UPDATE audit_records SET seq = 2 WHERE seq = 4");
  db.MustExec("UPDATE audit_records SET seq = 4 WHERE seq = -2");
  ExpectBroken(2, "prev_hash mismatch");
}

TEST_F(AuditTamperTest, SelfConsistentRewriteOfOneRecord) {
  RawDb db(path_);
  db.DropTriggers();
  std::string record = db.Get(3, "record");
  record.replace(record.find("\"success\""), 9, "\"denied\"");
  std::string hash = ChainHash(3, db.Get(3, "prev_hash"), record);
  db.Run("UPDATE audit_records SET record = ?2, hash = ?3 WHERE seq = ?1", 3, record, hash);
  ExpectBroken(4, "prev_hash mismatch");
}

TEST_F(AuditTamperTest, SelfConsistentRewriteOfTheTail) {
  // Recomputing the hash of the last record is caught by the anchor.
  RawDb db(path_);
  db.DropTriggers();
  std::string record = db.Get(5, "record");
  record.replace(record.find("\"success\""), 9, "\"denied\"");
  std::string hash = ChainHash(5, db.Get(5, "prev_hash"), record);
  db.Run("UPDATE audit_records SET record = ?2, hash = ?3 WHERE seq = ?1", 5, record, hash);
  ExpectBroken(5, "anchor hash does not match");
  ExpectOpenRefused("anchor hash does not match");
}

TEST_F(AuditTamperTest, ForgedAppendIsNotCoveredByTheAnchor) {
  RawDb db(path_);
  std::string record = MakeRecord(6).ToJson();
  std::string prev = db.Get(5, "hash");
  std::string hash = ChainHash(6, prev, record);
  sqlite3_stmt* s = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db.get(), "INSERT INTO audit_records VALUES(6, ?1, ?2, ?3, ?4)", -1,
                               &s, nullptr),
            SQLITE_OK);
  std::string time = MakeRecord(6).time;
  sqlite3_bind_text(s, 1, time.data(), static_cast<int>(time.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(s, 2, record.data(), static_cast<int>(record.size()), SQLITE_TRANSIENT);
  sqlite3_bind_blob(s, 3, prev.data(), static_cast<int>(prev.size()), SQLITE_TRANSIENT);
  sqlite3_bind_blob(s, 4, hash.data(), static_cast<int>(hash.size()), SQLITE_TRANSIENT);
  ASSERT_EQ(sqlite3_step(s), SQLITE_DONE);
  sqlite3_finalize(s);
  ExpectBroken(6, "not authenticated");
  ExpectOpenRefused("not authenticated");
}

TEST_F(AuditTamperTest, ForgedAnchorAfterTruncation) {
  // Remove record 5 and point the anchor at record 4, without the key.
  RawDb db(path_);
  db.DropTriggers();
  db.Run("DELETE FROM audit_records WHERE seq = ?1", 5);
  std::string hash4 = db.Get(4, "hash");
  db.Run("UPDATE audit_anchor SET seq = ?1, hash = ?2, mac = ?3", 4, hash4,
         AnchorMac(OtherKey(), 4, hash4), /*a_is_blob=*/true);
  ExpectBroken(4, "anchor MAC invalid");
  ExpectOpenRefused("anchor MAC invalid");
}

TEST_F(AuditTamperTest, ForgedAnchorMacOnly) {
  RawDb db(path_);
  std::string mac = std::string(32, '\x5a');
  db.Run("UPDATE audit_anchor SET mac = ?2 WHERE id = ?1", 1, mac, {}, /*a_is_blob=*/true);
  ExpectBroken(5, "anchor MAC invalid");
}

TEST_F(AuditTamperTest, DeletedAnchor) {
  RawDb db(path_);
  db.DropTriggers();
  db.MustExec("DELETE FROM audit_anchor");
  ExpectBroken(5, "anchor missing");
  ExpectOpenRefused("anchor missing");
}

TEST_F(AuditTamperTest, WrongKeyAtVerifyAndOpen) {
  VerifyReport r = Verify(OtherKey());
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.first_bad_seq, 5);
  EXPECT_THAT(r.summary, HasSubstr("wrong audit key"));
  auto log = AuditLog::Open(path_, OtherKey());
  EXPECT_FALSE(log.ok());
  // The right key still works afterwards.
  EXPECT_TRUE(Verify().ok);
}

TEST_F(AuditTamperTest, UntouchedLogVerifies) {
  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.records, 5);
  EXPECT_EQ(r.first_bad_seq, 0);
}

// ---- verify input errors -----------------------------------------------------

TEST_F(AuditLogTest, VerifyFailsOnMissingOrForeignFiles) {
  EXPECT_FALSE(VerifyAuditLog(dir_ + "/missing.db", Key()).ok());
  {
    std::ofstream f(dir_ + "/garbage.db");
    f << "this is not a sqlite database, not even close. ............................";
  }
  EXPECT_FALSE(VerifyAuditLog(dir_ + "/garbage.db", Key()).ok());
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(std::string(dir_ + "/other.db").c_str(), &db), SQLITE_OK);
    sqlite3_exec(db, "CREATE TABLE t(x)", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  auto r = VerifyAuditLog(dir_ + "/other.db", Key());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("not an audit database"));
}

// ---- throughput (informational, no timing assertions) -------------------------

TEST_F(AuditLogTest, Throughput) {
  constexpr int kThreads = 16;
  constexpr int kTotal = 20000;
  auto log = OpenLog();
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < kTotal; i += kThreads) {
        if (!log->Append(MakeRecord(i)).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  AuditStats stats = log->stats();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(stats.records, kTotal);

  // Single-threaded baseline: one fsync per record.
  constexpr int kSerial = 200;
  auto serial_start = std::chrono::steady_clock::now();
  for (int i = 0; i < kSerial; ++i) ASSERT_TRUE(log->Append(MakeRecord(i)).ok());
  double serial_secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - serial_start).count();
  log->Close();

  std::printf(
      "[ info ] throughput: %d appends, %d threads: %.2f s, %.0f appends/s, %lld commits "
      "(avg batch %.1f, largest %lld); single thread: %.0f appends/s\n",
      kTotal, kThreads, secs, kTotal / secs, static_cast<long long>(stats.commits),
      static_cast<double>(stats.records) / static_cast<double>(stats.commits),
      static_cast<long long>(stats.largest_batch), kSerial / serial_secs);

  auto verify_start = std::chrono::steady_clock::now();
  VerifyReport r = Verify();
  double verify_secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - verify_start).count();
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.records, kTotal + kSerial);
  std::printf("[ info ] verify: %lld records in %.2f s: %s\n", static_cast<long long>(r.records),
              verify_secs, r.summary.c_str());
}

}  // namespace
}  // namespace fhirward::audit

namespace fhirward::audit {
namespace {

TEST_F(AuditLogTest, AppendAsyncCallsBackOnceDurableAndAfterCloseFailsAtOnce) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  constexpr int kN = 200;
  std::mutex mu;
  std::condition_variable cv;
  std::set<int64_t> seqs;
  int failures = 0;
  for (int i = 0; i < kN; ++i) {
    log->AppendAsync(MakeRecord(i), [&](absl::StatusOr<int64_t> seq) {
      std::lock_guard<std::mutex> lock(mu);
      if (seq.ok()) {
        seqs.insert(*seq);
      } else {
        ++failures;
      }
      cv.notify_all();
    });
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(20),
                            [&] { return static_cast<int>(seqs.size()) + failures == kN; }));
  }
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(*seqs.begin(), 1);
  EXPECT_EQ(*seqs.rbegin(), kN);
  // Durable: a verifier that opens the file now sees every record.
  auto report = VerifyAuditLog(path_, Key());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->records, kN);
  log->Close();
  bool called = false;
  log->AppendAsync(MakeRecord(0), [&](absl::StatusOr<int64_t> seq) {
    called = true;
    EXPECT_EQ(CodeOf(seq.status()), ErrorCode::kAuditUnavailable);
  });
  EXPECT_TRUE(called);
}

}  // namespace
}  // namespace fhirward::audit
