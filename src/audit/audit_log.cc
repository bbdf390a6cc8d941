// SQLite audit trail: hash chain + MACed tail anchor, written by one writer
// thread with group commit. See audit_log.h for the format.
#include "audit/audit_log.h"

#include <sqlite3.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "json/value.h"

namespace fhirward::audit {
namespace {

constexpr std::string_view kChainDomain = "fhirward-audit-v1";
constexpr std::string_view kAnchorDomain = "fhirward-audit-anchor-v1";
constexpr size_t kHashBytes = 32;
constexpr size_t kMacKeyBytes = 32;

// Append-only at the SQL level. The triggers stop accidents (a stray UPDATE or
// DELETE from a maintenance script, a bug in another module); they do NOT stop
// anyone who can write the database file: such an attacker simply drops them.
// That is what the hash chain and the MACed anchor are for: VerifyAuditLog()
// detects any edit, removal, reordering, truncation or forged append.
constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS audit_records(
  seq INTEGER PRIMARY KEY,
  time TEXT NOT NULL,
  record TEXT NOT NULL,
  prev_hash BLOB NOT NULL,
  hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit_anchor(
  id INTEGER PRIMARY KEY CHECK(id=1),
  seq INTEGER,
  hash BLOB,
  mac BLOB);
CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit_records is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit_records is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_anchor_no_delete BEFORE DELETE ON audit_anchor
BEGIN SELECT RAISE(ABORT, 'audit_anchor cannot be deleted'); END;
)sql";

void AppendU64Be(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((v >> shift) & 0xff));
}

// hash_n = SHA-256("fhirward-audit-v1" | u64be(seq) | hash_{n-1} | record_json)
std::string ChainHash(int64_t seq, std::string_view prev_hash, std::string_view record_json) {
  std::string buf;
  buf.reserve(kChainDomain.size() + 8 + prev_hash.size() + record_json.size());
  buf.append(kChainDomain);
  AppendU64Be(buf, static_cast<uint64_t>(seq));
  buf.append(prev_hash);
  buf.append(record_json);
  return crypto::Sha256(buf);
}

// HMAC-SHA256(key, "fhirward-audit-anchor-v1" | u64be(seq) | hash)
std::string AnchorMac(const SecretBytes& key, int64_t seq, std::string_view hash) {
  std::string buf;
  buf.reserve(kAnchorDomain.size() + 8 + hash.size());
  buf.append(kAnchorDomain);
  AppendU64Be(buf, static_cast<uint64_t>(seq));
  buf.append(hash);
  return crypto::HmacSha256(key.UnsafeView(), buf);
}

// ---- minimal sqlite3 RAII helpers --------------------------------------------

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;

struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

std::string SqliteMessage(sqlite3* db, int rc) {
  std::string msg = sqlite3_errstr(rc);
  if (db != nullptr) {
    const char* m = sqlite3_errmsg(db);
    if (m != nullptr && msg != m) {
      msg += ": ";
      msg += m;
    }
  }
  return msg;
}

absl::Status Unavailable(std::string_view what, sqlite3* db, int rc) {
  std::string detail(what);
  detail += ": ";
  detail += SqliteMessage(db, rc);
  return Error(ErrorCode::kAuditUnavailable, detail);
}

absl::StatusOr<StmtPtr> Prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* s = nullptr;
  int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(s);
    return Unavailable(std::string("audit: prepare failed (") + sql + ")", db, rc);
  }
  return StmtPtr(s);
}

absl::Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string detail = std::string("audit: ") + (err != nullptr ? err : sqlite3_errstr(rc));
    sqlite3_free(err);
    return Error(ErrorCode::kAuditUnavailable, detail);
  }
  return absl::OkStatus();
}

std::string_view ColumnBlob(sqlite3_stmt* s, int col) {
  const void* p = sqlite3_column_blob(s, col);
  int n = sqlite3_column_bytes(s, col);
  if (p == nullptr || n <= 0) return {};
  return std::string_view(static_cast<const char*>(p), static_cast<size_t>(n));
}

std::string_view ColumnText(sqlite3_stmt* s, int col) {
  const unsigned char* p = sqlite3_column_text(s, col);
  int n = sqlite3_column_bytes(s, col);
  if (p == nullptr || n <= 0) return {};
  return std::string_view(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
}

// Resets and unbinds on scope exit, so a statement is always reusable.
class StmtScope {
 public:
  explicit StmtScope(sqlite3_stmt* s) : s_(s) {}
  ~StmtScope() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  StmtScope(const StmtScope&) = delete;
  StmtScope& operator=(const StmtScope&) = delete;

 private:
  sqlite3_stmt* s_;
};

// The tail of the table and the anchor row, as stored.
struct Tail {
  int64_t last_seq = 0;  // 0 when the table is empty
  std::string last_hash;
  std::string last_prev_hash;
  std::string last_record;
  bool has_anchor = false;
  int64_t anchor_seq = 0;
  std::string anchor_hash;
  std::string anchor_mac;
};

absl::StatusOr<Tail> ReadTail(sqlite3* db) {
  Tail t;
  {
    auto st = Prepare(db,
                      "SELECT seq, hash, prev_hash, record FROM audit_records "
                      "ORDER BY seq DESC LIMIT 1");
    if (!st.ok()) return st.status();
    int rc = sqlite3_step(st->get());
    if (rc == SQLITE_ROW) {
      t.last_seq = sqlite3_column_int64(st->get(), 0);
      t.last_hash = std::string(ColumnBlob(st->get(), 1));
      t.last_prev_hash = std::string(ColumnBlob(st->get(), 2));
      t.last_record = std::string(ColumnText(st->get(), 3));
    } else if (rc != SQLITE_DONE) {
      return Unavailable("audit: reading the last record failed", db, rc);
    }
  }
  {
    auto st = Prepare(db, "SELECT seq, hash, mac FROM audit_anchor WHERE id = 1");
    if (!st.ok()) return st.status();
    int rc = sqlite3_step(st->get());
    if (rc == SQLITE_ROW) {
      t.has_anchor = true;
      t.anchor_seq = sqlite3_column_int64(st->get(), 0);
      t.anchor_hash = std::string(ColumnBlob(st->get(), 1));
      t.anchor_mac = std::string(ColumnBlob(st->get(), 2));
    } else if (rc != SQLITE_DONE) {
      return Unavailable("audit: reading the anchor failed", db, rc);
    }
  }
  return t;
}

// Checks that the anchor vouches for exactly the last row. Returns a one-line
// description of the problem, or nullopt when consistent. `first_bad` gets the
// first sequence number the anchor fails to vouch for.
std::optional<std::string> CheckAnchor(const Tail& t, const SecretBytes& mac_key,
                                       int64_t* first_bad) {
  const int64_t tail_or_1 = t.last_seq > 0 ? t.last_seq : 1;
  if (!t.has_anchor) {
    if (t.last_seq == 0) return std::nullopt;  // empty, never written
    *first_bad = t.last_seq;
    return "anchor missing (anchor row deleted)";
  }
  // The MAC first: an unauthenticated anchor's seq/hash mean nothing.
  if (t.anchor_mac.size() != kHashBytes || t.anchor_hash.size() != kHashBytes ||
      !crypto::ConstantTimeEquals(t.anchor_mac, AnchorMac(mac_key, t.anchor_seq, t.anchor_hash))) {
    *first_bad = tail_or_1;
    return "anchor MAC invalid (wrong audit key or forged anchor)";
  }
  if (t.anchor_seq > t.last_seq) {
    *first_bad = t.last_seq + 1;
    return "anchor is at record " + std::to_string(t.anchor_seq) +
           (t.last_seq == 0 ? std::string(" but no records remain")
                            : " but the last record is " + std::to_string(t.last_seq)) +
           " (records removed from the tail)";
  }
  if (t.anchor_seq < t.last_seq) {
    *first_bad = t.anchor_seq + 1;
    return "records after the anchor (" + std::to_string(t.anchor_seq) +
           ") are not authenticated (appended without the audit key)";
  }
  if (!crypto::ConstantTimeEquals(t.anchor_hash, t.last_hash)) {
    *first_bad = tail_or_1;
    return "anchor hash does not match the last record (chain rewritten)";
  }
  return std::nullopt;
}

// ---- the log -----------------------------------------------------------------

class SqliteAuditLog final : public AuditLog {
 public:
  SqliteAuditLog(DbPtr db, SecretBytes mac_key, const AuditOptions& options, int64_t head_seq,
                 std::string head_hash)
      : db_(std::move(db)),
        mac_key_(std::move(mac_key)),
        options_(options),
        head_seq_(head_seq),
        head_hash_(std::move(head_hash)) {
    if (options_.max_batch == 0) options_.max_batch = 1;
  }

  ~SqliteAuditLog() override { Close(); }

  absl::Status Init() {
    for (auto [slot, sql] : {
             std::pair{&begin_, "BEGIN IMMEDIATE"},
             std::pair{&head_, "SELECT seq, hash, mac FROM audit_anchor WHERE id = 1"},
             std::pair{&hash_at_, "SELECT hash FROM audit_records WHERE seq = ?1"},
             std::pair{&commit_, "COMMIT"},
             std::pair{&rollback_, "ROLLBACK"},
             std::pair{&insert_,
                       "INSERT INTO audit_records(seq, time, record, prev_hash, hash) "
                       "VALUES(?1, ?2, ?3, ?4, ?5)"},
             std::pair{&anchor_,
                       "INSERT INTO audit_anchor(id, seq, hash, mac) VALUES(1, ?1, ?2, ?3) "
                       "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, "
                       "hash = excluded.hash, mac = excluded.mac"},
         }) {
      auto st = Prepare(db_.get(), sql);
      if (!st.ok()) return st.status();
      *slot = std::move(*st);
    }
    writer_ = std::thread([this] { WriterLoop(); });
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> Append(const AuditRecord& record) override {
    std::promise<absl::StatusOr<int64_t>> result;
    std::future<absl::StatusOr<int64_t>> done = result.get_future();
    AppendAsync(record,
                [&result](absl::StatusOr<int64_t> seq) { result.set_value(std::move(seq)); });
    return done.get();
  }

  void AppendAsync(const AuditRecord& record, AppendCallback done) override {
    auto p = std::make_unique<Pending>();
    p->time = record.time;
    p->json = record.ToJson();  // in the caller's thread, off the writer's critical path
    p->done = std::move(done);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!closing_) {
        queue_.push_back(std::move(p));
      }
    }
    if (p) {  // closed: not queued
      p->done(Error(ErrorCode::kAuditUnavailable, "audit log is closed"));
      return;
    }
    cv_.notify_one();
  }

  void Close() override {
    std::lock_guard<std::mutex> close_lock(close_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    if (writer_.joinable()) writer_.join();
    begin_.reset();
    commit_.reset();
    rollback_.reset();
    insert_.reset();
    anchor_.reset();
    db_.reset();
  }

  AuditStats stats() const override {
    AuditStats s;
    s.commits = commits_.load();
    s.records = records_.load();
    s.failed_batches = failed_batches_.load();
    s.largest_batch = largest_batch_.load();
    return s;
  }

 private:
  struct Pending {
    std::string time;
    std::string json;
    AppendCallback done;
  };

  void WriterLoop() {
    std::vector<std::unique_ptr<Pending>> batch;
    batch.reserve(options_.max_batch);
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty() || closing_; });
        if (queue_.empty()) return;  // closing and drained
        if (options_.max_batch_delay.count() > 0 && queue_.size() < options_.max_batch &&
            !closing_) {
          cv_.wait_for(lock, options_.max_batch_delay,
                       [&] { return queue_.size() >= options_.max_batch || closing_; });
        }
        while (!queue_.empty() && batch.size() < options_.max_batch) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      absl::StatusOr<int64_t> first = CommitBatch(batch);
      for (size_t i = 0; i < batch.size(); ++i) {
        if (first.ok()) {
          batch[i]->done(*first + static_cast<int64_t>(i));
        } else {
          batch[i]->done(first.status());
        }
      }
      batch.clear();
    }
  }

  // One transaction for the whole batch. Returns the seq of batch[0]; the
  // others follow consecutively. On failure nothing is kept and the in-memory
  // head is unchanged.
  absl::StatusOr<int64_t> CommitBatch(const std::vector<std::unique_ptr<Pending>>& batch) {
    sqlite3* db = db_.get();
    int64_t seq = head_seq_;
    std::string hash = head_hash_;
    absl::Status status = [&]() -> absl::Status {
      {
        StmtScope scope(begin_.get());
        int rc = sqlite3_step(begin_.get());
        if (rc != SQLITE_DONE) return Unavailable("audit: BEGIN failed", db, rc);
      }
      {
        // Another process (a `fhirward` admin command) may have appended since
        // our last commit: continue from the stored head, under the write lock,
        // when its MACed anchor vouches for it.
        StmtScope scope(head_.get());
        int rc = sqlite3_step(head_.get());
        if (rc == SQLITE_ROW) {
          int64_t stored_seq = sqlite3_column_int64(head_.get(), 0);
          std::string stored_hash(ColumnBlob(head_.get(), 1));
          std::string stored_mac(ColumnBlob(head_.get(), 2));
          // Only forward, and only from our own head: the stored record at our
          // head's position must be our head (an older anchor replayed over a
          // truncated table is not adopted; the chain check then fails loudly).
          if (stored_seq > seq && stored_hash.size() == kHashBytes &&
              crypto::ConstantTimeEquals(stored_mac,
                                         AnchorMac(mac_key_, stored_seq, stored_hash)) &&
              StoredHashAt(seq) == hash) {
            seq = stored_seq;
            hash = stored_hash;
            head_seq_ = seq;
            head_hash_ = hash;
          }
        } else if (rc != SQLITE_DONE) {
          return Unavailable("audit: reading the anchor failed", db, rc);
        }
      }
      for (const auto& p : batch) {
        ++seq;
        std::string next = ChainHash(seq, hash, p->json);
        {
          sqlite3_stmt* s = insert_.get();
          StmtScope scope(s);  // unbinds before the bound buffers change
          sqlite3_bind_int64(s, 1, seq);
          sqlite3_bind_text(s, 2, p->time.data(), static_cast<int>(p->time.size()), SQLITE_STATIC);
          sqlite3_bind_text(s, 3, p->json.data(), static_cast<int>(p->json.size()), SQLITE_STATIC);
          sqlite3_bind_blob(s, 4, hash.data(), static_cast<int>(hash.size()), SQLITE_STATIC);
          sqlite3_bind_blob(s, 5, next.data(), static_cast<int>(next.size()), SQLITE_STATIC);
          int rc = sqlite3_step(s);
          if (rc != SQLITE_DONE) return Unavailable("audit: insert failed", db, rc);
        }
        hash = std::move(next);
      }
      {
        std::string mac = AnchorMac(mac_key_, seq, hash);
        sqlite3_stmt* s = anchor_.get();
        StmtScope scope(s);
        sqlite3_bind_int64(s, 1, seq);
        sqlite3_bind_blob(s, 2, hash.data(), static_cast<int>(hash.size()), SQLITE_STATIC);
        sqlite3_bind_blob(s, 3, mac.data(), static_cast<int>(mac.size()), SQLITE_STATIC);
        int rc = sqlite3_step(s);
        if (rc != SQLITE_DONE) return Unavailable("audit: anchor update failed", db, rc);
      }
      {
        // Durable on return: WAL + synchronous=FULL fsyncs the WAL at commit.
        StmtScope scope(commit_.get());
        int rc = sqlite3_step(commit_.get());
        if (rc != SQLITE_DONE) return Unavailable("audit: COMMIT failed", db, rc);
      }
      return absl::OkStatus();
    }();

    if (!status.ok()) {
      if (!sqlite3_get_autocommit(db)) {
        StmtScope scope(rollback_.get());
        sqlite3_step(rollback_.get());
      }
      failed_batches_.fetch_add(1);
      Resync();
      return status;
    }
    const int64_t first = head_seq_ + 1;
    head_seq_ = seq;
    head_hash_ = std::move(hash);
    commits_.fetch_add(1);
    records_.fetch_add(static_cast<int64_t>(batch.size()));
    int64_t n = static_cast<int64_t>(batch.size());
    int64_t prev = largest_batch_.load();
    while (n > prev && !largest_batch_.compare_exchange_weak(prev, n)) {
    }
    return first;
  }

  // After a failed batch the transaction was rolled back, so the stored tail
  // is normally the in-memory head. If it is not (a COMMIT reported failure
  // but reached the disk), continue from the stored tail, provided the MACed
  // anchor vouches for it; otherwise keep the head: the seq primary key then
  // makes every later insert fail rather than fork the chain.
  void Resync() {
    auto tail = ReadTail(db_.get());
    if (!tail.ok() || tail->last_seq == head_seq_) return;
    int64_t first_bad = 0;
    if (CheckAnchor(*tail, mac_key_, &first_bad).has_value()) return;
    if (tail->last_hash.size() != kHashBytes) return;
    head_seq_ = tail->last_seq;
    head_hash_ = tail->last_hash;
  }

  // The hash of record `seq` as stored (32 zero bytes for seq 0; "" if absent).
  std::string StoredHashAt(int64_t seq) {
    if (seq == 0) return std::string(kHashBytes, '\0');
    StmtScope scope(hash_at_.get());
    sqlite3_bind_int64(hash_at_.get(), 1, seq);
    if (sqlite3_step(hash_at_.get()) != SQLITE_ROW) return "";
    return std::string(ColumnBlob(hash_at_.get(), 0));
  }

  DbPtr db_;  // used by the writer thread only (after Init)
  SecretBytes mac_key_;
  AuditOptions options_;
  StmtPtr begin_, commit_, rollback_, insert_, anchor_, head_, hash_at_;

  // Chain head; writer thread only.
  int64_t head_seq_;
  std::string head_hash_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Pending>> queue_;
  bool closing_ = false;

  std::mutex close_mu_;
  std::thread writer_;

  std::atomic<int64_t> commits_{0};
  std::atomic<int64_t> records_{0};
  std::atomic<int64_t> failed_batches_{0};
  std::atomic<int64_t> largest_batch_{0};
};

}  // namespace

std::string AuditRecord::ToJson() const {
  using json::Value;
  auto s = [](const std::string& v) { return Value::String(v); };
  json::Object m;
  m.reserve(19);
  m.emplace_back("time", s(time));
  m.emplace_back("request_id", s(request_id));
  m.emplace_back("trace_id", s(trace_id));
  m.emplace_back("client_address", s(client_address));
  m.emplace_back("user_agent", s(user_agent));
  m.emplace_back("subject", s(subject));
  m.emplace_back("client_id", s(client_id));
  m.emplace_back("scopes", s(scopes));
  m.emplace_back("action", s(action));
  m.emplace_back("method", s(method));
  m.emplace_back("resource_type", s(resource_type));
  m.emplace_back("resource_id", s(resource_id));
  m.emplace_back("version_id", s(version_id));
  m.emplace_back("patient_id", s(patient_id));
  m.emplace_back("outcome", s(outcome));
  m.emplace_back("status_code", Value::Int(status_code));
  m.emplace_back("error", s(error));
  m.emplace_back("policy_id", s(policy_id));
  m.emplace_back("count", Value::Int(count));
  m.emplace_back("decision", s(decision));
  m.emplace_back("break_glass", s(break_glass));
  m.emplace_back("break_glass_reason", s(break_glass_reason));
  m.emplace_back("shadow", s(shadow));
  return json::Write(Value::MakeObject(std::move(m)));
}

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path,
                                                         SecretBytes mac_key,
                                                         const AuditOptions& options) {
  if (mac_key.size() != kMacKeyBytes) {
    return absl::InvalidArgumentError("audit: the MAC key must be 32 bytes");
  }
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  DbPtr db(raw);
  if (rc != SQLITE_OK) return Unavailable("audit: cannot open " + path, raw, rc);
  sqlite3_extended_result_codes(db.get(), 1);
  sqlite3_busy_timeout(db.get(), static_cast<int>(options.busy_timeout.count()));

  {
    auto st = Prepare(db.get(), "PRAGMA journal_mode=WAL");
    if (!st.ok()) return st.status();
    rc = sqlite3_step(st->get());
    if (rc != SQLITE_ROW || ColumnText(st->get(), 0) != "wal") {
      return Error(ErrorCode::kAuditUnavailable, "audit: cannot switch " + path + " to WAL mode");
    }
  }
  if (auto s = Exec(db.get(), "PRAGMA synchronous=FULL"); !s.ok()) return s;
  if (auto s = Exec(db.get(), kSchema); !s.ok()) return s;

  // Continue the chain from the stored tail, but only if the MACed anchor
  // vouches for it: never silently extend a truncated or rewritten chain.
  // (Only the tail is checked here; VerifyAuditLog() checks the whole chain.)
  auto tail = ReadTail(db.get());
  if (!tail.ok()) return tail.status();
  int64_t first_bad = 0;
  if (auto problem = CheckAnchor(*tail, mac_key, &first_bad)) {
    return Error(ErrorCode::kAuditUnavailable,
                 "audit: refusing to open " + path + ": " + *problem + "; run verification");
  }
  std::string head_hash(kHashBytes, '\0');
  if (tail->last_seq > 0) {
    if (tail->last_hash.size() != kHashBytes || tail->last_prev_hash.size() != kHashBytes ||
        ChainHash(tail->last_seq, tail->last_prev_hash, tail->last_record) != tail->last_hash) {
      return Error(ErrorCode::kAuditUnavailable,
                   "audit: refusing to open " + path + ": the last record (" +
                       std::to_string(tail->last_seq) +
                       ") does not match its hash (record altered); run verification");
    }
    head_hash = tail->last_hash;
  }

  auto log = std::make_unique<SqliteAuditLog>(std::move(db), std::move(mac_key), options,
                                              tail->last_seq, std::move(head_hash));
  if (auto s = log->Init(); !s.ok()) return s;
  return std::unique_ptr<AuditLog>(std::move(log));
}

// ---- verification ------------------------------------------------------------

absl::StatusOr<VerifyReport> VerifyAuditLog(const std::string& path, const SecretBytes& mac_key) {
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  DbPtr db(raw);
  if (rc != SQLITE_OK) {
    return absl::NotFoundError("audit verify: cannot open " + path + ": " + SqliteMessage(raw, rc));
  }
  sqlite3_busy_timeout(db.get(), 5000);
  auto fail = [&](std::string_view what, int code) {
    return absl::FailedPreconditionError("audit verify: " + std::string(what) + " (" + path +
                                         "): " + SqliteMessage(db.get(), code));
  };

  // Is this an audit database? (Also the first read: catches "not a database".)
  {
    sqlite3_stmt* s = nullptr;
    rc = sqlite3_prepare_v2(db.get(),
                            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                            "name IN ('audit_records', 'audit_anchor')",
                            -1, &s, nullptr);
    StmtPtr st(s);
    if (rc != SQLITE_OK) return fail("cannot read the schema", rc);
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) return fail("cannot read the schema", rc);
    if (sqlite3_column_int(s, 0) != 2) {
      return absl::FailedPreconditionError("audit verify: " + path + " is not an audit database");
    }
  }

  // One read transaction: the rows and the anchor come from the same snapshot
  // even while the server keeps appending.
  if (rc = sqlite3_exec(db.get(), "BEGIN", nullptr, nullptr, nullptr); rc != SQLITE_OK) {
    return fail("cannot begin a read transaction", rc);
  }

  VerifyReport report;
  std::string problem;
  auto mark_bad = [&](int64_t seq, std::string what) {
    if (report.first_bad_seq != 0) return;  // the first break wins
    report.first_bad_seq = seq;
    problem = std::move(what);
  };

  Tail tail;
  {
    sqlite3_stmt* s = nullptr;
    rc = sqlite3_prepare_v2(db.get(),
                            "SELECT seq, time, record, prev_hash, hash FROM audit_records "
                            "ORDER BY seq ASC",
                            -1, &s, nullptr);
    StmtPtr st(s);
    if (rc != SQLITE_OK) return fail("cannot read audit_records", rc);
    int64_t expected = 1;
    std::string prev(kHashBytes, '\0');
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      ++report.records;
      const int64_t seq = sqlite3_column_int64(s, 0);
      std::string_view time = ColumnText(s, 1);
      std::string_view record = ColumnText(s, 2);
      std::string_view prev_hash = ColumnBlob(s, 3);
      std::string_view hash = ColumnBlob(s, 4);
      tail.last_seq = seq;
      tail.last_hash = std::string(hash);
      if (report.first_bad_seq != 0) continue;  // just count the rest
      if (seq != expected) {
        if (seq > expected) {
          mark_bad(expected, "record missing (seq jumps from " + std::to_string(expected - 1) +
                                 " to " + std::to_string(seq) + ")");
        } else {
          mark_bad(expected, "unexpected seq " + std::to_string(seq));
        }
        continue;
      }
      if (prev_hash.size() != kHashBytes || hash.size() != kHashBytes) {
        mark_bad(seq, "malformed hash column");
        continue;
      }
      if (prev_hash != prev) {
        mark_bad(seq, "prev_hash mismatch (a record before it was altered, removed or reordered)");
        continue;
      }
      if (!crypto::ConstantTimeEquals(ChainHash(seq, prev, record), hash)) {
        mark_bad(seq, "hash mismatch (record altered)");
        continue;
      }
      // The time column is outside the hash: it must agree with the record.
      auto parsed = json::Parse(record);
      if (!parsed.ok() || !parsed->is_object() || parsed->GetString("time") != time) {
        mark_bad(seq, "time column does not match the record");
        continue;
      }
      prev = std::string(hash);
      ++expected;
    }
    if (rc != SQLITE_DONE) return fail("cannot read audit_records", rc);
  }
  {
    sqlite3_stmt* s = nullptr;
    rc = sqlite3_prepare_v2(db.get(), "SELECT seq, hash, mac FROM audit_anchor WHERE id = 1", -1,
                            &s, nullptr);
    StmtPtr st(s);
    if (rc != SQLITE_OK) return fail("cannot read audit_anchor", rc);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
      tail.has_anchor = true;
      tail.anchor_seq = sqlite3_column_int64(s, 0);
      tail.anchor_hash = std::string(ColumnBlob(s, 1));
      tail.anchor_mac = std::string(ColumnBlob(s, 2));
    } else if (rc != SQLITE_DONE) {
      return fail("cannot read audit_anchor", rc);
    }
  }
  sqlite3_exec(db.get(), "COMMIT", nullptr, nullptr, nullptr);

  if (report.first_bad_seq == 0) {
    int64_t first_bad = 0;
    if (auto p = CheckAnchor(tail, mac_key, &first_bad)) mark_bad(first_bad, *p);
  }

  if (report.first_bad_seq == 0) {
    report.ok = true;
    report.summary = "audit chain intact: " + std::to_string(report.records) + " records";
    if (report.records > 0) report.summary += ", head " + HexEncode(tail.last_hash);
  } else {
    report.ok = false;
    report.summary = "audit chain broken at record " + std::to_string(report.first_bad_seq) + ": " +
                     problem + " (" + std::to_string(report.records) + " records present)";
  }
  return report;
}

}  // namespace fhirward::audit
