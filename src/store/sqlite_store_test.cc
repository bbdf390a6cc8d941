// Behaviour of the SQLite ResourceStore as a caller sees it, plus what lands on disk.
// StatusOr::value() throws on an error status; gtest reports that as a failure with the status.
#include <sqlite3.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <latch>
#include <map>
#include <mutex>
#include <ostream>
#include <thread>
#include <tuple>

#include "common/clock.h"
#include "common/error.h"
#include "crypto/envelope.h"
#include "crypto/kms.h"
#include "crypto/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "json/value.h"
#include "store/resource_store.h"

namespace fhirward {
// Lets gtest print error codes by name.
void PrintTo(ErrorCode code, std::ostream* os) { *os << Describe(code).name; }

namespace store {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::IsEmpty;

// The error code of a failed result; nullopt when it succeeded.
template <typename T>
std::optional<ErrorCode> Code(const absl::StatusOr<T>& r) {
  if (r.ok()) return std::nullopt;
  return CodeOf(r.status());
}

ResourceKey Key(std::string type, std::string id, std::string tenant = "t1") {
  return ResourceKey{std::move(tenant), std::move(type), std::move(id)};
}

json::Value Patient(const std::string& family) {
  return json::Parse(R"({"resourceType":"Patient","name":[{"family":")" + family + R"("}]})")
      .value();
}

json::Value ObservationOf(const std::string& patient) {
  return json::Parse(R"({"resourceType":"Observation","subject":{"reference":"Patient/)" + patient +
                     R"("}})")
      .value();
}

// The first name.family of a stored body ("" when absent).
std::string FamilyOf(const std::string& body) {
  json::Value v = json::Parse(body).value();
  const json::Value* name = v.Find("name");
  if (name == nullptr || !name->is_array() || name->items().empty()) return "";
  return std::string(name->items()[0].GetString("family").value_or(""));
}

std::string MetaOf(const std::string& body, std::string_view field) {
  json::Value v = json::Parse(body).value();
  const json::Value* meta = v.Find("meta");
  return meta == nullptr ? "" : std::string(meta->GetString(field).value_or(""));
}

// "type/id/version", with a trailing "!" for a deletion.
std::vector<std::string> Names(const std::vector<HistoryEntry>& entries) {
  std::vector<std::string> out;
  for (const auto& e : entries) {
    out.push_back(e.version.type + "/" + e.version.id + "/" + std::to_string(e.version.version) +
                  (e.version.deleted ? "!" : ""));
  }
  return out;
}

// Every regular file directly in `dir`, concatenated; their names go to `names`.
std::string ReadAllFiles(const std::string& dir, std::vector<std::string>* names) {
  std::string all;
  for (const auto& f : std::filesystem::directory_iterator(dir)) {
    if (!f.is_regular_file()) continue;
    names->push_back(f.path().filename().string());
    std::ifstream in(f.path(), std::ios::binary);
    all.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return all;
}

// Edits the stored envelopes with the sqlite3 C API while no store has the database open:
// `edit` gets each one by "tenant/type/id/version" (nullopt: NULL); all are written back.
using Envelopes = std::map<std::string, std::optional<std::string>>;
void EditEnvelopes(const std::string& path, const std::function<void(Envelopes&)>& edit) {
  const std::string row = "tenant || '/' || type || '/' || id || '/' || version";
  sqlite3* db = nullptr;
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  std::string sql = "SELECT " + row + ", envelope FROM resource_versions";
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK);
  Envelopes envelopes;
  while (sqlite3_step(st) == SQLITE_ROW) {
    auto& blob = envelopes[reinterpret_cast<const char*>(sqlite3_column_text(st, 0))];
    auto p = static_cast<const char*>(sqlite3_column_blob(st, 1));
    if (sqlite3_column_type(st, 1) != SQLITE_NULL) blob.emplace(p, sqlite3_column_bytes(st, 1));
  }
  sqlite3_finalize(st);
  edit(envelopes);
  sql = "UPDATE resource_versions SET envelope = ?2 WHERE " + row + " = ?1";
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK);
  for (const auto& [key, blob] : envelopes) {
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
    if (blob) {
      sqlite3_bind_blob(st, 2, blob->data(), static_cast<int>(blob->size()), SQLITE_TRANSIENT);
    } else {
      sqlite3_bind_null(st, 2);
    }
    EXPECT_EQ(sqlite3_step(st), SQLITE_DONE) << sqlite3_errmsg(db);
    EXPECT_EQ(sqlite3_changes(db), 1) << key;
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
}

// Runs `fn(i)` for i in [0, n) on n threads released together.
void RunConcurrently(int n, const std::function<void(int)>& fn) {
  std::latch start(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      fn(i);
    });
  }
  for (auto& t : threads) t.join();
}

auto Tie(const IdempotencyRecord& r) {
  return std::tie(r.request_hash, r.status, r.response_headers, r.response_body, r.created_at);
}

class SqliteStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/fhirward-store-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::filesystem::create_directory(DbDir());
    keys_ = testing_util::MakeTestKeys(dir_ + "/kek", dir_ + "/keys.db");
    Reopen();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::string DbDir() const { return dir_ + "/db"; }
  std::string DbPath() const { return DbDir() + "/store.db"; }

  // Closes the store (if open) and opens it again, with `other` keys or the test's.
  void Reopen(testing_util::TestKeys* other = nullptr) {
    store_.reset();
    testing_util::TestKeys& k = other != nullptr ? *other : keys_;
    store_ = OpenSqliteStore({.path = DbPath(),
                              .kek = k.kek.get(),
                              .keyring = k.ring.get(),
                              .index_key = &index_key_})
                 .value();
  }

  std::string dir_;
  testing_util::TestKeys keys_;
  SecretBytes index_key_{std::string(32, 'k')};
  std::unique_ptr<ResourceStore> store_;
};

TEST_F(SqliteStoreTest, CreateThenReadStampsMetaAndPutsTypeAndIdFirst) {
  const ResourceKey key = Key("Patient", "p1");
  auto body = json::Parse(R"({"name":[{"family":"Alpha"}],"resourceType":"Patient",)"
                          R"("meta":{"versionId":"9","source":"urn:src"}})");
  StoredVersion created = store_->Create(key, body.value()).value();
  EXPECT_EQ(created.version, 1);
  StoredVersion read = store_->Read(key).value();
  EXPECT_EQ(read.type + "/" + read.id + "/" + std::to_string(read.version), "Patient/p1/1");
  EXPECT_FALSE(read.deleted);
  EXPECT_EQ(read.json, created.json);
  ASSERT_EQ(read.last_updated.size(), 24u) << read.last_updated;  // 2026-11-29T03:36:46.123Z
  // resourceType, id and meta come first; the body's versionId is replaced, other meta kept.
  EXPECT_EQ(read.json, R"({"resourceType":"Patient","id":"p1","meta":{"versionId":"1",)"
                       R"("lastUpdated":")" +
                           read.last_updated +
                           R"(","source":"urn:src"},"name":[{"family":"Alpha"}]})");

  EXPECT_EQ(Code(store_->Create(key, Patient("Beta"))), ErrorCode::kVersionConflict);
  EXPECT_EQ(FamilyOf(store_->Read(key)->json), "Alpha");
  EXPECT_EQ(Code(store_->Read(Key("Patient", "nope"))), ErrorCode::kNotFound);
  EXPECT_EQ(Code(store_->ReadVersion(key, 2)), ErrorCode::kNotFound);
  EXPECT_EQ(Code(store_->Read(Key("Patient", "p1", "t2"))), ErrorCode::kNotFound);  // tenants
}

TEST_F(SqliteStoreTest, UpdateAddsVersionsKeepsOldOnesAndCreatesWhenAllowed) {
  const ResourceKey key = Key("Patient", "p1");
  store_->Create(key, Patient("A")).value();
  WriteResult w2 = store_->Update(key, Patient("B"), std::nullopt, false).value();
  EXPECT_EQ(w2.stored.version, 2);
  EXPECT_FALSE(w2.created);
  EXPECT_EQ(store_->Update(key, Patient("C"), 2, false)->stored.version, 3);
  EXPECT_EQ(Code(store_->Update(key, Patient("stale"), 1, false)), ErrorCode::kPreconditionFailed);
  const char* families[] = {"A", "B", "C"};
  for (int64_t v = 1; v <= 3; ++v) {
    StoredVersion old = store_->ReadVersion(key, v).value();
    EXPECT_EQ(old.version, v);
    EXPECT_EQ(MetaOf(old.json, "versionId"), std::to_string(v));
    EXPECT_EQ(FamilyOf(old.json), families[v - 1]);
  }
  StoredVersion cur = store_->Read(key).value();
  EXPECT_EQ(cur.version, 3);
  EXPECT_EQ(FamilyOf(cur.json), "C");
  EXPECT_EQ(Code(store_->ReadVersion(key, 4)), ErrorCode::kNotFound);

  const ResourceKey absent = Key("Patient", "new");
  EXPECT_EQ(Code(store_->Update(absent, Patient("X"), std::nullopt, false)), ErrorCode::kNotFound);
  EXPECT_EQ(Code(store_->Read(absent)), ErrorCode::kNotFound);
  EXPECT_EQ(Code(store_->Update(absent, Patient("X"), 1, true)), ErrorCode::kPreconditionFailed);
  WriteResult w = store_->Update(absent, Patient("X"), std::nullopt, true).value();
  EXPECT_TRUE(w.created);
  EXPECT_EQ(w.stored.version, 1);
  EXPECT_EQ(FamilyOf(store_->Read(absent)->json), "X");
}

TEST_F(SqliteStoreTest, DeleteLifecycle) {
  const ResourceKey key = Key("Patient", "p1");
  store_->Create(key, Patient("A")).value();
  store_->Update(key, Patient("B"), 1, false).value();
  EXPECT_EQ(Code(store_->Delete(key, 1)), ErrorCode::kPreconditionFailed);
  StoredVersion del = store_->Delete(key, 2).value();
  EXPECT_EQ(del.version, 3);
  EXPECT_TRUE(del.deleted);
  for (auto result : {store_->Read(key), store_->ReadVersion(key, 3)}) {
    EXPECT_EQ(result.value().version, 3);
    EXPECT_TRUE(result->deleted);
    EXPECT_THAT(result->json, IsEmpty());
    EXPECT_EQ(result->last_updated, del.last_updated);
  }
  EXPECT_EQ(FamilyOf(store_->ReadVersion(key, 2).value().json), "B");

  // Deleting again records nothing new; deleting an absent resource succeeds with version 0.
  EXPECT_EQ(store_->Delete(key, std::nullopt).value().version, 3);
  EXPECT_EQ(Code(store_->ReadVersion(key, 4)), ErrorCode::kNotFound);
  HistoryPage h = store_->History({.tenant = "t1", .type = "Patient", .id = "p1"}).value();
  EXPECT_THAT(Names(h.entries), ElementsAre("Patient/p1/3!", "Patient/p1/2", "Patient/p1/1"));
  EXPECT_EQ(store_->Delete(Key("Patient", "none"), std::nullopt).value().version, 0);
  EXPECT_EQ(Code(store_->Read(Key("Patient", "none"))), ErrorCode::kNotFound);

  // Updating a deleted resource revives it as the next version.
  EXPECT_EQ(store_->Update(key, Patient("C"), std::nullopt, false).value().stored.version, 4);
  StoredVersion cur = store_->Read(key).value();
  EXPECT_EQ(cur.version, 4);
  EXPECT_FALSE(cur.deleted);
  EXPECT_EQ(FamilyOf(cur.json), "C");
  EXPECT_EQ(MetaOf(cur.json, "versionId"), "4");
}

TEST_F(SqliteStoreTest, PatientCompartments) {
  const ResourceKey obs = Key("Observation", "o1");
  EXPECT_THAT(store_->Create(obs, ObservationOf("p1")).value().patients, ElementsAre("p1"));
  EXPECT_THAT(store_->Read(obs).value().patients, ElementsAre("p1"));
  store_->Create(Key("Patient", "p1"), Patient("A")).value();
  EXPECT_THAT(store_->Read(Key("Patient", "p1")).value().patients, ElementsAre("p1"));

  // The stored id decides a Patient's own compartment, not an id in the body.
  const ResourceKey p2 = Key("Patient", "p2");
  EXPECT_THAT(store_->Create(p2, json::Parse(R"({"id":"p9"})").value()).value().patients,
              ElementsAre("p2"));
  EXPECT_THAT(store_->Update(p2, json::Parse(R"({"id":"p9"})").value(), 1, false)->stored.patients,
              ElementsAre("p2"));
  StoredVersion read = store_->Read(p2).value();
  EXPECT_THAT(read.patients, ElementsAre("p2"));
  EXPECT_EQ(json::Parse(read.json)->GetString("id"), "p2");

  EXPECT_THAT(store_->Update(obs, ObservationOf("p2"), 1, false).value().stored.patients,
              ElementsAre("p2"));
  EXPECT_THAT(store_->ReadVersion(obs, 1).value().patients, ElementsAre("p1"));
  // A deletion stays in the compartment so callers can authorize the 410.
  EXPECT_THAT(store_->Delete(obs, std::nullopt).value().patients, ElementsAre("p2"));
  read = store_->Read(obs).value();
  EXPECT_TRUE(read.deleted);
  EXPECT_THAT(read.patients, ElementsAre("p2"));
}

TEST_F(SqliteStoreTest, History) {
  store_->Create(Key("Patient", "a"), Patient("A1")).value();
  store_->Create(Key("Observation", "o1"), ObservationOf("a")).value();
  store_->Create(Key("Patient", "b"), Patient("B1")).value();
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  const std::string since = FormatInstant(std::chrono::system_clock::now());
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  store_->Update(Key("Patient", "a"), Patient("A2"), 1, false).value();
  store_->Create(Key("Observation", "o2"), ObservationOf("b")).value();
  store_->Delete(Key("Observation", "o1"), std::nullopt).value();
  store_->Create(Key("Patient", "x", "t2"), Patient("other tenant")).value();

  const std::vector<std::string> all = {"Observation/o1/2!", "Observation/o2/1", "Patient/a/2",
                                        "Patient/b/1",       "Observation/o1/1", "Patient/a/1"};
  HistoryPage sys = store_->History({.tenant = "t1"}).value();
  EXPECT_THAT(Names(sys.entries), ElementsAreArray(all));
  EXPECT_FALSE(sys.more);
  EXPECT_THAT(sys.entries[0].version.json, IsEmpty());
  EXPECT_EQ(FamilyOf(sys.entries[2].version.json), "A2");
  EXPECT_EQ(FamilyOf(sys.entries[5].version.json), "A1");

  auto names = [&](HistoryQuery q) {
    q.tenant = q.tenant.empty() ? "t1" : q.tenant;
    return Names(store_->History(q).value().entries);
  };
  EXPECT_THAT(names({.type = "Patient"}), ElementsAre("Patient/a/2", "Patient/b/1", "Patient/a/1"));
  EXPECT_THAT(names({.type = "Patient", .id = "a"}), ElementsAre("Patient/a/2", "Patient/a/1"));
  EXPECT_THAT(names({.since = since}),
              ElementsAre("Observation/o1/2!", "Observation/o2/1", "Patient/a/2"));
  EXPECT_THAT(names({.type = "Patient", .since = since}), ElementsAre("Patient/a/2"));
  EXPECT_THAT(names({.patients = std::vector<std::string>{"a"}}),
              ElementsAre("Observation/o1/2!", "Patient/a/2", "Observation/o1/1", "Patient/a/1"));
  EXPECT_THAT(names({.type = "Observation", .patients = std::vector<std::string>{"b"}}),
              ElementsAre("Observation/o2/1"));
  EXPECT_THAT(
      names({.type = "Observation", .patients = std::vector<std::string>{"a", "b"}}),
      ::testing::UnorderedElementsAre("Observation/o1/2!", "Observation/o2/1", "Observation/o1/1"));
  EXPECT_THAT(names({.patients = std::vector<std::string>{}}), IsEmpty());
  EXPECT_THAT(names({.tenant = "t2"}), ElementsAre("Patient/x/1"));
  EXPECT_THAT(names({.type = "Encounter"}), IsEmpty());

  // Paging with count + before_seq visits every entry once, newest first.
  for (int count : {1, 2, 4, 5, 6, 7}) {
    std::vector<HistoryEntry> seen;
    int64_t before = 0;
    for (int pages = 0; pages < 10; ++pages) {
      HistoryPage page =
          store_->History({.tenant = "t1", .count = count, .before_seq = before}).value();
      ASSERT_LE(static_cast<int>(page.entries.size()), count);
      seen.insert(seen.end(), page.entries.begin(), page.entries.end());
      if (!page.more) break;
      ASSERT_EQ(static_cast<int>(page.entries.size()), count);
      before = page.entries.back().seq;
    }
    EXPECT_THAT(Names(seen), ElementsAreArray(all)) << "count " << count;
    for (size_t i = 1; i < seen.size(); ++i) EXPECT_GT(seen[i - 1].seq, seen[i].seq);
  }
}

TEST_F(SqliteStoreTest, ConcurrentUpdatesLoseNoVersion) {
  const ResourceKey key = Key("Patient", "busy");
  store_->Create(key, Patient("initial")).value();
  constexpr int kThreads = 16, kWrites = 20;
  std::mutex mu;
  std::map<int64_t, std::string> written = {{1, "initial"}};  // version -> family
  std::vector<std::string> errors;
  RunConcurrently(kThreads, [&](int t) {
    for (int i = 0; i < kWrites; ++i) {
      std::string family = "T" + std::to_string(t) + "-" + std::to_string(i);
      auto r = store_->Update(key, Patient(family), std::nullopt, false);
      std::lock_guard lk(mu);
      if (!r.ok()) {
        errors.push_back(r.status().ToString());
      } else if (!written.emplace(r->stored.version, family).second) {
        errors.push_back("version " + std::to_string(r->stored.version) + " returned twice");
      }
    }
  });
  EXPECT_THAT(errors, IsEmpty());
  constexpr int64_t kLast = 1 + kThreads * kWrites;
  ASSERT_EQ(written.size(), static_cast<size_t>(kLast));
  EXPECT_EQ(written.rbegin()->first, kLast);
  EXPECT_EQ(store_->Read(key).value().version, kLast);
  std::string previous;
  for (const auto& [version, family] : written) {
    StoredVersion v = store_->ReadVersion(key, version).value();
    EXPECT_EQ(MetaOf(v.json, "versionId"), std::to_string(version));
    EXPECT_EQ(FamilyOf(v.json), family) << "version " << version;
    // A later version never looks older, even when its writer was overtaken.
    EXPECT_EQ(MetaOf(v.json, "lastUpdated"), v.last_updated);
    EXPECT_GE(v.last_updated, previous) << "version " << version;
    previous = v.last_updated;
  }
  HistoryPage h = store_->History({.tenant = "t1", .type = "Patient", .count = 1000}).value();
  ASSERT_EQ(h.entries.size(), static_cast<size_t>(kLast));
  for (int64_t i = 0; i < kLast; ++i) EXPECT_EQ(h.entries[i].version.version, kLast - i);
}

TEST_F(SqliteStoreTest, ConcurrentConditionalWritesHaveOneWinner) {
  const ResourceKey key = Key("Patient", "race");
  store_->Create(key, Patient("initial")).value();
  std::mutex mu;
  std::vector<std::string> winners, unexpected;
  std::map<std::string, int> creates;  // outcome -> count
  RunConcurrently(16, [&](int t) {
    std::string family = "W" + std::to_string(t);
    auto r = store_->Update(key, Patient(family), 1, false);
    auto c = store_->Create(Key("Patient", "fresh"), Patient(family));
    std::lock_guard lk(mu);
    creates[c.ok() ? "ok" : std::string(Describe(CodeOf(c.status())).name)]++;
    if (r.ok()) {
      winners.push_back(family);
    } else if (Code(r) != ErrorCode::kPreconditionFailed &&
               Code(r) != ErrorCode::kVersionConflict) {
      unexpected.push_back(r.status().ToString());
    }
  });
  ASSERT_EQ(winners.size(), 1u);
  EXPECT_THAT(unexpected, IsEmpty());
  StoredVersion cur = store_->Read(key).value();
  EXPECT_EQ(cur.version, 2);
  EXPECT_EQ(FamilyOf(cur.json), winners[0]);
  EXPECT_EQ(Code(store_->ReadVersion(key, 3)), ErrorCode::kNotFound);
  EXPECT_EQ(creates, (std::map<std::string, int>{{"ok", 1}, {"version_conflict", 15}}));
}

TEST_F(SqliteStoreTest, DataSurvivesReopen) {
  const ResourceKey key = Key("Patient", "p1");
  store_->Create(key, Patient("A")).value();
  store_->Update(key, Patient("B"), 1, false).value();
  store_->Create(Key("Observation", "o1"), ObservationOf("p1")).value();
  store_->Delete(Key("Observation", "o1"), std::nullopt).value();
  Reopen();
  StoredVersion cur = store_->Read(key).value();
  EXPECT_EQ(cur.version, 2);
  EXPECT_EQ(FamilyOf(cur.json), "B");
  EXPECT_EQ(FamilyOf(store_->ReadVersion(key, 1).value().json), "A");
  StoredVersion del = store_->Read(Key("Observation", "o1")).value();
  EXPECT_TRUE(del.deleted);
  EXPECT_THAT(del.patients, ElementsAre("p1"));
  EXPECT_EQ(store_->Update(key, Patient("C"), 2, false).value().stored.version, 3);
}

TEST_F(SqliteStoreTest, NothingReadableOnDisk) {
  const std::string canary = "Zyxwvutsrq-Plaintext-Canary";
  const ResourceKey key = Key("Patient", "canary-id-4711");
  store_->Create(key, Patient(canary)).value();
  store_->Update(key, Patient(canary + "-v2"), 1, false).value();
  store_->PutIdempotency("t1", "c", "k", {.status = 201, .response_body = canary}).value();
  for (bool open : {true, false}) {
    SCOPED_TRACE(open ? "store open" : "store closed");
    if (!open) store_.reset();
    std::vector<std::string> names;
    std::string bytes = ReadAllFiles(DbDir(), &names);
    EXPECT_THAT(names, Contains("store.db"));
    if (open) {
      EXPECT_THAT(names, Contains("store.db-wal"));
    }
    // Ids are stored in clear, so finding this one shows the scan sees the data.
    EXPECT_NE(bytes.find("canary-id-4711"), std::string::npos);
    EXPECT_EQ(bytes.find("Zyxwvutsrq"), std::string::npos);
  }
  Reopen();
  EXPECT_EQ(FamilyOf(store_->Read(key).value().json), canary + "-v2");
}

TEST_F(SqliteStoreTest, AnyFlippedByteFailsDecryption) {
  // Same-length ids and bodies give same-length envelopes; row i gets byte i flipped.
  auto id = [](size_t i) {
    std::string s = std::to_string(i);
    return "r" + std::string(4 - s.size(), '0') + s;
  };
  store_->Create(Key("Patient", id(0)), Patient("Secret")).value();
  store_.reset();
  size_t size = 0;
  EditEnvelopes(DbPath(), [&](Envelopes& e) { size = e.at("t1/Patient/r0000/1")->size(); });
  ASSERT_GT(size, 50u);
  Reopen();
  RunConcurrently(8, [&](int t) {  // concurrent writes share commits
    for (size_t i = 1 + t; i < size; i += 8) {
      EXPECT_TRUE(store_->Create(Key("Patient", id(i)), Patient("Secret")).ok()) << i;
    }
  });
  for (const char* other : {"control", "trunc", "empty", "null"}) {
    store_->Create(Key("Patient", other), Patient("Secret")).value();
  }
  store_.reset();
  EditEnvelopes(DbPath(), [&](Envelopes& e) {
    for (size_t i = 0; i < size; ++i) {
      auto& blob = e.at("t1/Patient/" + id(i) + "/1");
      ASSERT_EQ(blob->size(), size);
      (*blob)[i] ^= 0x01;
    }
    e.at("t1/Patient/trunc/1")->pop_back();
    e.at("t1/Patient/empty/1") = "";
    e.at("t1/Patient/null/1") = std::nullopt;
  });
  Reopen();
  std::vector<std::string> not_refused;
  for (size_t i = 0; i < size + 3; ++i) {
    const char* others[] = {"trunc", "empty", "null"};
    ResourceKey key = Key("Patient", i < size ? id(i) : others[i - size]);
    for (auto r : {store_->Read(key), store_->ReadVersion(key, 1)}) {
      if (Code(r) != ErrorCode::kDecryptionFailed) not_refused.push_back(key.id);
    }
  }
  EXPECT_THAT(not_refused, IsEmpty());
  EXPECT_EQ(Code(store_->History({.tenant = "t1", .type = "Patient", .id = id(7)})),
            ErrorCode::kDecryptionFailed);
  EXPECT_EQ(FamilyOf(store_->Read(Key("Patient", "control")).value().json), "Secret");
}

TEST_F(SqliteStoreTest, EnvelopeMovedToAnotherRowFailsDecryption) {
  const std::vector<ResourceKey> keys = {Key("Patient", "B"), Key("Patient", "A", "t2"),
                                         Key("Observation", "A")};
  store_->Create(Key("Patient", "A"), Patient("Same")).value();
  store_->Update(Key("Patient", "A"), Patient("Same"), 1, false).value();
  for (const ResourceKey& k : keys) store_->Create(k, Patient("Same")).value();
  store_.reset();
  EditEnvelopes(DbPath(), [](Envelopes& e) {
    // Patient/A version 1 over another id, version, tenant and type.
    for (const char* row :
         {"t1/Patient/B/1", "t1/Patient/A/2", "t2/Patient/A/1", "t1/Observation/A/1"}) {
      e.at(row) = e.at("t1/Patient/A/1");
    }
  });
  Reopen();
  for (const ResourceKey& k : keys) {
    EXPECT_EQ(Code(store_->Read(k)), ErrorCode::kDecryptionFailed) << k.tenant << "/" << k.type;
  }
  EXPECT_EQ(Code(store_->Read(Key("Patient", "A"))), ErrorCode::kDecryptionFailed);
  EXPECT_EQ(FamilyOf(store_->ReadVersion(Key("Patient", "A"), 1).value().json), "Same");
}

TEST_F(SqliteStoreTest, OtherKekCannotRead) {
  const ResourceKey key = Key("Patient", "p1");
  store_->Create(key, Patient("A")).value();
  store_->PutIdempotency("t1", "c", "k", {.status = 200, .response_body = "body"}).value();
  // Another KEK over the same vault: the tenant key does not unwrap.
  auto other = testing_util::MakeTestKeys(dir_ + "/kek2", dir_ + "/keys.db");
  Reopen(&other);
  EXPECT_EQ(Code(store_->Read(key)), ErrorCode::kDecryptionFailed);
  EXPECT_EQ(Code(store_->ReadVersion(key, 1)), ErrorCode::kDecryptionFailed);
  EXPECT_EQ(Code(store_->History({.tenant = "t1"})), ErrorCode::kDecryptionFailed);
  EXPECT_EQ(Code(store_->GetIdempotency("t1", "c", "k")), ErrorCode::kDecryptionFailed);
  Reopen();
  EXPECT_EQ(FamilyOf(store_->Read(key).value().json), "A");
}

TEST_F(SqliteStoreTest, Idempotency) {
  EXPECT_FALSE(store_->GetIdempotency("t1", "c", "k").value().has_value());
  const IdempotencyRecord first{.request_hash = std::string(32, '\x01'),
                                .status = 201,
                                .response_headers = R"([["Location","Patient/p1/_history/1"]])",
                                .response_body = R"({"resourceType":"Patient"})",
                                .created_at = "2020-01-01T00:00:00.000Z"};
  EXPECT_EQ(Tie(store_->PutIdempotency("t1", "c", "k", first).value()), Tie(first));
  EXPECT_EQ(Tie(store_->GetIdempotency("t1", "c", "k").value().value()), Tie(first));

  const IdempotencyRecord second{.request_hash = "h2", .status = 200, .response_body = "other"};
  EXPECT_EQ(Tie(store_->PutIdempotency("t1", "c", "k", second).value()), Tie(first));
  EXPECT_EQ(Tie(store_->GetIdempotency("t1", "c", "k").value().value()), Tie(first));
  // Keys are per client.
  EXPECT_EQ(Tie(store_->PutIdempotency("t1", "other", "k", second).value()), Tie(second));

  // A pending reservation (status 0) is completed only by the request that
  // holds its token, not by another one with the same body.
  const IdempotencyRecord pending{
      .request_hash = "r", .response_headers = "pending:A", .created_at = first.created_at};
  store_->PutIdempotency("t1", "c", "p", pending).value();
  IdempotencyRecord done{.request_hash = "r", .status = 200, .created_at = pending.created_at};
  done.reservation = "pending:B";
  EXPECT_EQ(Tie(store_->PutIdempotency("t1", "c", "p", done).value()), Tie(pending));
  done.reservation = "pending:A";
  EXPECT_EQ(Tie(store_->PutIdempotency("t1", "c", "p", done).value()), Tie(done));

  // A conditional delete removes only the record it names.
  ASSERT_TRUE(store_->DeleteIdempotency("t1", "c", "p", &pending).ok());
  EXPECT_TRUE(store_->GetIdempotency("t1", "c", "p").value().has_value());
  ASSERT_TRUE(store_->DeleteIdempotency("t1", "c", "p", &done).ok());
  EXPECT_FALSE(store_->GetIdempotency("t1", "c", "p").value().has_value());

  ASSERT_TRUE(store_->ExpireIdempotency("2019-12-31T23:59:59.999Z").ok());
  EXPECT_TRUE(store_->GetIdempotency("t1", "c", "k").value().has_value());
  auto cutoff = FormatInstant(std::chrono::system_clock::now() + std::chrono::hours(1));
  ASSERT_TRUE(store_->ExpireIdempotency(cutoff).ok());
  for (const char* client : {"c", "other"}) {
    EXPECT_FALSE(store_->GetIdempotency("t1", client, "k").value().has_value()) << client;
  }
}

}  // namespace
}  // namespace store
}  // namespace fhirward

namespace fhirward::store {
namespace {

void ExecSql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

TEST_F(SqliteStoreTest, EditedCompartmentRowsFailDecryption) {
  const ResourceKey obs = Key("Observation", "o1");
  store_->Create(obs, ObservationOf("p1")).value();
  store_->Create(Key("Observation", "o2"), ObservationOf("p1")).value();
  store_.reset();
  // Move o1 into p2's compartment, and take o2 out of every compartment.
  ExecSql(DbPath(),
          "UPDATE compartment_members SET patient = 'p2' WHERE id = 'o1';"
          "DELETE FROM compartment_members WHERE id = 'o2';");
  Reopen();
  EXPECT_EQ(Code(store_->Read(obs)), ErrorCode::kDecryptionFailed);
  EXPECT_EQ(Code(store_->Read(Key("Observation", "o2"))), ErrorCode::kDecryptionFailed);
  EXPECT_EQ(Code(store_->History({.tenant = "t1", .type = "Observation"})),
            ErrorCode::kDecryptionFailed);
}

}  // namespace
}  // namespace fhirward::store

namespace fhirward::store {
namespace {

TEST_F(SqliteStoreTest, ReadsNeverGoBackInTimeWhileWritersCommit) {
  const ResourceKey key = Key("Patient", "hot");
  store_->Create(key, Patient("V")).value();
  std::atomic<bool> done{false};
  std::atomic<int> regressions{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 4; ++r) {
    readers.emplace_back([&] {
      int64_t last = 0;
      while (!done.load()) {
        auto v = store_->Read(key);
        if (!v.ok()) {
          ++regressions;
          continue;
        }
        if (v->version < last) ++regressions;
        last = v->version;
      }
    });
  }
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) {
    writers.emplace_back([&] {
      for (int i = 0; i < 25; ++i) store_->Update(key, Patient("V"), std::nullopt, false).value();
    });
  }
  for (auto& t : writers) t.join();
  // Once the writes have returned, every read sees the last one.
  EXPECT_EQ(store_->Read(key).value().version, 101);
  done = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(regressions.load(), 0);
  store_->Delete(key, std::nullopt).value();
  EXPECT_TRUE(store_->Read(key).value().deleted);
}

}  // namespace
}  // namespace fhirward::store

namespace fhirward::store {
namespace {

TEST_F(SqliteStoreTest, TinyCacheNeverServesAVersionOlderThanAnAcknowledgedWrite) {
  // 16 KiB over 16 shards: shards are emptied all the time.
  auto small = OpenSqliteStore({.path = dir_ + "/small.db",
                                .kek = keys_.kek.get(),
                                .keyring = keys_.ring.get(),
                                .cache_bytes = 16384,
                                .index_key = &index_key_})
                   .value();
  constexpr int kKeys = 40;
  for (int i = 0; i < kKeys; ++i)
    small->Create(Key("Patient", "k" + std::to_string(i)), Patient("V")).value();
  std::atomic<bool> done{false};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&, r] {
      for (int i = 0; !done.load(); i = (i + 7 + r) % kKeys) {
        (void)small->Read(Key("Patient", "k" + std::to_string(i)));
      }
    });
  }
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < kKeys; ++i) {
      const ResourceKey k = Key("Patient", "k" + std::to_string(i));
      auto w = small->Update(k, Patient("V"), std::nullopt, false).value();
      auto seen = small->Read(k).value();
      EXPECT_GE(seen.version, w.stored.version) << k.id;
    }
  }
  for (int i = 0; i < kKeys; ++i) {
    const ResourceKey k = Key("Patient", "k" + std::to_string(i));
    small->Delete(k, std::nullopt).value();
    EXPECT_TRUE(small->Read(k).value().deleted) << k.id;
  }
  done = true;
  for (auto& t : readers) t.join();
  for (int i = 0; i < kKeys; ++i) {
    EXPECT_TRUE(small->Read(Key("Patient", "k" + std::to_string(i))).value().deleted);
  }
}

// ---- key rotation: re-sealing records --------------------------------------------------------

// The associated data the store binds (kept in step with sqlite_store.cc).
std::string ResourceAdForTest(const ResourceKey& k, int64_t version,
                              std::vector<std::string> patients) {
  std::sort(patients.begin(), patients.end());
  std::vector<std::string> parts = {"fhirward-resource-v1",  k.tenant,  k.type, k.id,
                                    std::to_string(version), "patients"};
  for (const auto& p : patients) parts.push_back(p);
  std::string out;
  for (const auto& p : parts) out += std::to_string(p.size()) + ":" + p;
  return out;
}

TEST_F(SqliteStoreTest, ResealMovesRecordsToTheCurrentKeysInResumableBatches) {
  for (int i = 0; i < 10; ++i) {
    store_
        ->Create(Key("Observation", "o" + std::to_string(i)),
                 ObservationOf("p" + std::to_string(i % 3)))
        .value();
  }
  store_->Create(Key("Patient", "p0"), Patient("Zero")).value();
  ASSERT_TRUE(keys_.ring->RotateTenant("t1").ok());
  EXPECT_EQ(keys_.ring->Status()->stale_data_keys, 3u);  // p0, p1 and p2
  int64_t cursor = 0;
  uint64_t resealed = 0, scanned = 0;
  int batches = 0;
  for (;;) {
    auto p = store_->ResealBatch(cursor, 4);
    ASSERT_TRUE(p.ok()) << p.status();
    ++batches;
    scanned += p->scanned;
    resealed += p->resealed;
    cursor = p->last_seq;
    // Interrupted after the first batch: a new store (a new process) resumes at the cursor.
    if (batches == 1) Reopen();
    if (p->done) break;
  }
  EXPECT_EQ(scanned, 11u);
  EXPECT_EQ(resealed, 11u);
  EXPECT_EQ(batches, 3);
  EXPECT_EQ(store_->ResealBatch(0, 100)->resealed, 0u) << "nothing left under old keys";
  ASSERT_TRUE(keys_.ring->RewrapKeys().ok());
  auto status = keys_.ring->Status().value();
  EXPECT_EQ(status.stale_data_keys, 0u);
  EXPECT_TRUE(status.tenant_keys[0].destroyed) << "tenant key v1 is retired";
  Reopen();
  for (int i = 0; i < 10; ++i) {
    EXPECT_TRUE(store_->Read(Key("Observation", "o" + std::to_string(i))).ok()) << i;
  }
  EXPECT_EQ(FamilyOf(store_->Read(Key("Patient", "p0")).value().json), "Zero");
}

TEST_F(SqliteStoreTest, Format1EnvelopesFromBeforeTheKeyRingOpenAndAreResealed) {
  const ResourceKey key = Key("Observation", "legacy");
  StoredVersion v = store_->Create(key, ObservationOf("p7")).value();
  store_.reset();
  crypto::EnvelopeCipher v1(keys_.kek.get());
  std::string legacy = v1.Seal(v.json, ResourceAdForTest(key, 1, {"p7"})).value();
  EXPECT_FALSE(crypto::KeyRing::IsRecordEnvelope(legacy));
  EditEnvelopes(DbPath(), [&](Envelopes& e) { e.at("t1/Observation/legacy/1") = legacy; });
  Reopen();
  EXPECT_EQ(store_->Read(key).value().json, v.json);
  auto p = store_->ResealBatch(0, 100);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->resealed, 1u);
  store_.reset();
  EditEnvelopes(DbPath(), [&](Envelopes& e) {
    EXPECT_TRUE(crypto::KeyRing::IsRecordEnvelope(*e.at("t1/Observation/legacy/1")));
  });
  Reopen();
  EXPECT_EQ(store_->Read(key).value().json, v.json);
}

TEST_F(SqliteStoreTest, ErasureShredsFormat1RecordsOfThePatientToo) {
  const ResourceKey key = Key("Observation", "legacy");
  StoredVersion v = store_->Create(key, ObservationOf("p7")).value();
  store_.reset();
  crypto::EnvelopeCipher v1(keys_.kek.get());
  std::string legacy = v1.Seal(v.json, ResourceAdForTest(key, 1, {"p7"})).value();
  EditEnvelopes(DbPath(), [&](Envelopes& e) { e.at("t1/Observation/legacy/1") = legacy; });
  Reopen();
  ASSERT_TRUE(keys_.ring->ErasePatient("t1", "p7").ok());
  auto report = store_->ErasePatient("t1", "p7", keys_.ring->PatientKeyIds("t1", "p7").value());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->resources, 1u);
  EXPECT_EQ(Code(store_->Read(key)), ErrorCode::kErased);
}

}  // namespace
}  // namespace fhirward::store
