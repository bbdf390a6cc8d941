// SQLite audit trail: hash chain + MACed tail anchor, written by one writer
// thread with group commit. See audit_log.h for the format.
#include "audit/audit_log.h"

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>

#include "audit/internal/sqlite.h"
#include "audit/merkle.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "json/value.h"

namespace fhirward::audit {
namespace {

using namespace internal;  // NOLINT(build/namespaces): the SQLite helpers

constexpr std::string_view kChainDomain = "fhirward-audit-v1";
constexpr std::string_view kAnchorDomain = "fhirward-audit-anchor-v1";
constexpr size_t kHashBytes = 32;
constexpr size_t kMacKeyBytes = 32;
constexpr std::string_view kTreeHeadTyp = "fhirward-sth";

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::StatusOr<std::string> SignHead(const jose::SigningKey& key, const std::string& log_id,
                                     int64_t size, std::string_view root, int64_t timestamp_ms) {
  json::Value payload = json::Value::MakeObject();
  payload.Set("log_id", json::Value::String(log_id));
  payload.Set("tree_size", json::Value::Int(size));
  payload.Set("root_hash", json::Value::String(Base64UrlEncode(root)));
  payload.Set("timestamp", json::Value::Int(timestamp_ms));
  return jose::SignCompact(key, payload, kTreeHeadTyp);
}

// The newest stored head, if any.
absl::StatusOr<std::optional<TreeHead>> ReadLatestHead(sqlite3* db) {
  auto st = Prepare(db,
                    "SELECT tree_size, root, timestamp, jws FROM audit_tree_heads "
                    "ORDER BY tree_size DESC LIMIT 1");
  if (!st.ok()) return st.status();
  int rc = sqlite3_step(st->get());
  if (rc == SQLITE_DONE) return std::optional<TreeHead>();
  if (rc != SQLITE_ROW) return Unavailable("audit: reading the tree heads failed", db, rc);
  TreeHead h;
  h.tree_size = sqlite3_column_int64(st->get(), 0);
  h.root = std::string(ColumnBlob(st->get(), 1));
  h.timestamp_ms = sqlite3_column_int64(st->get(), 2);
  h.jws = std::string(ColumnText(st->get(), 3));
  return std::optional<TreeHead>(std::move(h));
}

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
CREATE TABLE IF NOT EXISTS audit_nodes(
  level INTEGER NOT NULL,
  idx INTEGER NOT NULL,
  hash BLOB NOT NULL,
  PRIMARY KEY(level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_tree_heads(
  tree_size INTEGER PRIMARY KEY,
  root BLOB NOT NULL,
  timestamp INTEGER NOT NULL,
  jws TEXT NOT NULL);
DROP TABLE IF EXISTS audit_terms;
CREATE TABLE IF NOT EXISTS audit_postings(
  bucket INTEGER NOT NULL,
  k TEXT NOT NULL,
  v TEXT NOT NULL,
  seq INTEGER NOT NULL,
  PRIMARY KEY(bucket, k, v, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_postings_mark(
  id INTEGER PRIMARY KEY CHECK(id=1),
  seq INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_postings_no_update BEFORE UPDATE ON audit_postings
BEGIN SELECT RAISE(ABORT, 'audit_postings is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_postings_no_delete BEFORE DELETE ON audit_postings
BEGIN SELECT RAISE(ABORT, 'audit_postings is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_postings_mark_forward BEFORE UPDATE ON audit_postings_mark
WHEN NEW.seq < OLD.seq BEGIN SELECT RAISE(ABORT, 'audit_postings_mark only moves forward'); END;
CREATE TRIGGER IF NOT EXISTS audit_postings_mark_no_delete BEFORE DELETE ON audit_postings_mark
BEGIN SELECT RAISE(ABORT, 'audit_postings_mark cannot be deleted'); END;
CREATE TRIGGER IF NOT EXISTS audit_nodes_no_update BEFORE UPDATE ON audit_nodes
BEGIN SELECT RAISE(ABORT, 'audit_nodes is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_nodes_no_delete BEFORE DELETE ON audit_nodes
BEGIN SELECT RAISE(ABORT, 'audit_nodes is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_tree_heads_no_update BEFORE UPDATE ON audit_tree_heads
BEGIN SELECT RAISE(ABORT, 'audit_tree_heads is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_tree_heads_no_delete BEFORE DELETE ON audit_tree_heads
BEGIN SELECT RAISE(ABORT, 'audit_tree_heads is append-only'); END;
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

// The last row and the anchor from one read snapshot: read apart, another
// process's commit in between would look like a truncated tail.
absl::StatusOr<Tail> ReadTailUnlocked(sqlite3* db);
absl::StatusOr<Tail> ReadTail(sqlite3* db) {
  const bool own_txn = sqlite3_get_autocommit(db) != 0;
  if (own_txn) {
    if (auto s = Exec(db, "BEGIN"); !s.ok()) return s;
  }
  auto t = ReadTailUnlocked(db);
  if (own_txn) sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  return t;
}

absl::StatusOr<Tail> ReadTailUnlocked(sqlite3* db) {
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
  struct Pending;

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
             std::pair{&node_insert_,
                       "INSERT INTO audit_nodes(level, idx, hash) VALUES(?1, ?2, ?3)"},
             std::pair{&node_select_, kSelectNode},
             std::pair{&leaf_count_, "SELECT max(idx) FROM audit_nodes WHERE level = 0"},
             std::pair{&record_at_, "SELECT record FROM audit_records WHERE seq = ?1"},
             std::pair{&term_insert_,
                       "INSERT OR IGNORE INTO audit_postings(bucket, k, v, seq) "
                       "VALUES(?1, ?2, ?3, ?4)"},
             std::pair{&term_mark_select_, "SELECT seq FROM audit_postings_mark WHERE id = 1"},
             std::pair{&term_mark_update_,
                       "INSERT INTO audit_postings_mark(id, seq) VALUES(1, ?1) "
                       "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq "
                       "WHERE excluded.seq > audit_postings_mark.seq"},
             std::pair{&head_insert_,
                       "INSERT OR IGNORE INTO audit_tree_heads(tree_size, root, timestamp, jws) "
                       "VALUES(?1, ?2, ?3, ?4)"},
         }) {
      auto st = Prepare(db_.get(), sql);
      if (!st.ok()) return st.status();
      *slot = std::move(*st);
    }
    // Build the tree of records written before it existed (or by an older
    // binary), then load its right edge.
    if (auto s = InTransaction([&] { return SyncTree(head_seq_); }); !s.ok()) return s;
    if (auto s = CatchUpTerms(); !s.ok()) return s;
    auto latest = ReadLatestHead(db_.get());
    if (!latest.ok()) return latest.status();
    if (*latest) last_head_ = std::move(**latest);
    next_head_due_ = std::chrono::steady_clock::now() + options_.tree_head_interval;
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

  absl::StatusOr<TreeHead> SignTreeHead() override {
    if (options_.tree_head_key == nullptr) {
      return absl::FailedPreconditionError("this audit log signs no tree heads");
    }
    std::promise<absl::StatusOr<int64_t>> result;
    std::future<absl::StatusOr<int64_t>> done = result.get_future();
    auto p = std::make_unique<Pending>();
    p->tree_head = true;
    p->done = [&result](absl::StatusOr<int64_t> size) { result.set_value(std::move(size)); };
    Enqueue(std::move(p));
    auto size = done.get();
    if (!size.ok()) return size.status();
    std::lock_guard<std::mutex> lock(head_mu_);
    return last_head_;
  }

  void AppendAsync(const AuditRecord& record, AppendCallback done) override {
    auto p = std::make_unique<Pending>();
    p->time = record.time;
    p->json = record.ToJson();  // in the caller's thread, off the writer's critical path
    p->terms = IndexTerms(record);
    p->done = std::move(done);
    Enqueue(std::move(p));
  }

  void Enqueue(std::unique_ptr<Pending> p) {
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
    node_insert_.reset();
    node_select_.reset();
    leaf_count_.reset();
    record_at_.reset();
    head_insert_.reset();
    term_insert_.reset();
    term_mark_select_.reset();
    term_mark_update_.reset();
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
  struct Posting {
    int64_t seq;
    std::string k, v;
  };
  struct Pending {
    std::string time;
    std::string json;
    std::vector<std::pair<std::string, std::string>> terms;
    bool tree_head = false;  // a request for a signed head, not a record
    AppendCallback done;
  };

  void WriterLoop() {
    std::vector<std::unique_ptr<Pending>> batch;
    batch.reserve(options_.max_batch);
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        const bool scheduled =
            options_.tree_head_key != nullptr && options_.tree_head_interval.count() > 0;
        auto wake = std::chrono::steady_clock::time_point::max();
        if (scheduled) wake = next_head_due_;
        if (!terms_pending_.empty()) wake = std::min(wake, terms_due_);
        auto ready = [&] { return !queue_.empty() || closing_; };
        if (wake == std::chrono::steady_clock::time_point::max()) {
          cv_.wait(lock, ready);
        } else {
          cv_.wait_until(lock, wake, ready);
        }
        if (queue_.empty() && (closing_ || HeadDue() || TermsDue())) {
          // The schedule, or the last head at Close: it covers every record
          // this process wrote, so none is left without a signed head. And
          // the terms of records that came and were followed by none.
          const bool final_head = closing_;
          const bool head_due = closing_ || HeadDue();
          lock.unlock();
          if (head_due) {
            if (options_.tree_head_key != nullptr && head_seq_ > LastHeadSize()) {
              auto p = std::make_unique<Pending>();
              p->tree_head = true;
              p->done = [](absl::StatusOr<int64_t>) {};
              batch.push_back(std::move(p));
              (void)CommitBatch(batch);
              batch.clear();
            }
            next_head_due_ = std::chrono::steady_clock::now() + options_.tree_head_interval;
          }
          if (final_head || TermsDue()) FlushTerms();
          if (final_head) {
            lock.lock();
            if (queue_.empty()) return;  // closing and drained
            continue;
          }
          continue;
        }
        if (queue_.empty()) continue;
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
    const merkle::Frontier frontier_before = frontier_;
    std::optional<TreeHead> new_head;
    std::vector<Posting> fresh;  // this batch's terms
    bool flush_terms = false;
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
            // Their records' terms join ours (if that process stored them
            // already, the duplicates are ignored when written).
            if (auto s = LoadTerms(seq, stored_seq, &terms_pending_); !s.ok()) return s;
            seq = stored_seq;
            hash = stored_hash;
            head_seq_ = seq;
            head_hash_ = hash;
            if (auto s = SyncTree(seq); !s.ok()) return s;
          }
        } else if (rc != SQLITE_DONE) {
          return Unavailable("audit: reading the anchor failed", db, rc);
        }
      }
      if (frontier_.size() != static_cast<uint64_t>(seq)) {
        if (auto s = SyncTree(seq); !s.ok()) return s;
      }
      bool head_requested = false;
      for (const auto& p : batch) {
        if (p->tree_head) {
          head_requested = true;
          continue;
        }
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
        if (auto s = AddLeaf(p->json); !s.ok()) return s;
        for (auto& [k, v] : p->terms) fresh.push_back(Posting{seq, std::move(k), std::move(v)});
      }
      flush_terms = seq - terms_mark_ >= static_cast<int64_t>(options_.terms_batch) ||
                    (seq > terms_mark_ && TermsDue());
      if (flush_terms) {
        if (auto s = WriteTerms(fresh, seq); !s.ok()) return s;
      }
      if (options_.tree_head_key != nullptr && (head_requested || HeadDue()) &&
          seq > LastHeadSize()) {
        TreeHead h;
        h.tree_size = seq;
        h.root = frontier_.Root();
        h.timestamp_ms = std::max(NowMs(), LastHeadTimestamp());
        auto jws = SignHead(*options_.tree_head_key, options_.log_id, seq, h.root, h.timestamp_ms);
        if (!jws.ok()) return jws.status();
        h.jws = std::move(*jws);
        sqlite3_stmt* s = head_insert_.get();
        StmtScope scope(s);
        sqlite3_bind_int64(s, 1, h.tree_size);
        sqlite3_bind_blob(s, 2, h.root.data(), static_cast<int>(h.root.size()), SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, h.timestamp_ms);
        sqlite3_bind_text(s, 4, h.jws.data(), static_cast<int>(h.jws.size()), SQLITE_STATIC);
        int rc = sqlite3_step(s);
        if (rc != SQLITE_DONE) return Unavailable("audit: storing the tree head failed", db, rc);
        new_head = std::move(h);
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
      frontier_ = frontier_before;
      Resync();
      return status;
    }
    if (flush_terms) {
      terms_pending_.clear();
      terms_mark_ = seq;
    } else if (!fresh.empty()) {
      if (terms_pending_.empty())
        terms_due_ = std::chrono::steady_clock::now() + options_.terms_delay;
      std::move(fresh.begin(), fresh.end(), std::back_inserter(terms_pending_));
    }
    if (options_.on_commit) options_.on_commit(seq);
    if (new_head) {
      std::lock_guard<std::mutex> lock(head_mu_);
      last_head_ = std::move(*new_head);
      next_head_due_ = std::chrono::steady_clock::now() + options_.tree_head_interval;
    }
    if (std::all_of(batch.begin(), batch.end(), [](const auto& p) { return p->tree_head; })) {
      commits_.fetch_add(1);
      return seq;  // only head requests: the tree size
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
    if (!InTransaction([&] { return SyncTree(tail->last_seq); }).ok()) return;
    std::vector<Posting> theirs;
    if (!LoadTerms(head_seq_, tail->last_seq, &theirs).ok()) return;
    if (terms_pending_.empty()) terms_due_ = std::chrono::steady_clock::now();
    std::move(theirs.begin(), theirs.end(), std::back_inserter(terms_pending_));
    head_seq_ = tail->last_seq;
    head_hash_ = tail->last_hash;
  }

  // Runs `body` in a write transaction (commits when it succeeds).
  template <typename F>
  absl::Status InTransaction(F body) {
    sqlite3* db = db_.get();
    {
      StmtScope scope(begin_.get());
      int rc = sqlite3_step(begin_.get());
      if (rc != SQLITE_DONE) return Unavailable("audit: BEGIN failed", db, rc);
    }
    absl::Status s = body();
    if (s.ok()) {
      StmtScope scope(commit_.get());
      int rc = sqlite3_step(commit_.get());
      if (rc == SQLITE_DONE) return absl::OkStatus();
      s = Unavailable("audit: COMMIT failed", db, rc);
    }
    if (!sqlite3_get_autocommit(db)) {
      StmtScope scope(rollback_.get());
      sqlite3_step(rollback_.get());
    }
    return s;
  }

  // Inside a write transaction: makes the stored tree cover records 1..`size`
  // (adding the nodes of records written without them) and loads its edge.
  absl::Status SyncTree(int64_t size) {
    sqlite3* db = db_.get();
    int64_t leaves = 0;
    {
      StmtScope scope(leaf_count_.get());
      int rc = sqlite3_step(leaf_count_.get());
      if (rc != SQLITE_ROW) return Unavailable("audit: reading the tree failed", db, rc);
      if (sqlite3_column_type(leaf_count_.get(), 0) != SQLITE_NULL) {
        leaves = sqlite3_column_int64(leaf_count_.get(), 0) + 1;
      }
    }
    SqliteNodes nodes(node_select_.get());
    if (leaves > size) {
      // Another process appended after our head was read (its records come
      // with their nodes): the prefix's edge is stored; the next commit
      // adopts their head under the write lock (or fails on the first node
      // it would duplicate rather than fork the tree).
      auto edge = merkle::Frontier::Load(nodes, static_cast<uint64_t>(size));
      if (!edge.ok()) return edge.status();
      frontier_ = std::move(*edge);
      return absl::OkStatus();
    }
    auto edge = merkle::Frontier::Load(nodes, static_cast<uint64_t>(leaves));
    if (!edge.ok()) return edge.status();
    frontier_ = std::move(*edge);
    for (int64_t seq = leaves + 1; seq <= size; ++seq) {
      std::string record;
      {
        StmtScope scope(record_at_.get());
        sqlite3_bind_int64(record_at_.get(), 1, seq);
        int rc = sqlite3_step(record_at_.get());
        if (rc != SQLITE_ROW) {
          return Error(ErrorCode::kAuditUnavailable,
                       "audit: record " + std::to_string(seq) + " missing; run verification");
        }
        record = std::string(ColumnText(record_at_.get(), 0));
      }
      if (auto s = AddLeaf(record); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  bool TermsDue() const {
    return !terms_pending_.empty() && std::chrono::steady_clock::now() >= terms_due_;
  }

  // The search terms of the stored records (from, to], appended to `out`.
  absl::Status LoadTerms(int64_t from, int64_t to, std::vector<Posting>* out) {
    for (int64_t seq = from + 1; seq <= to; ++seq) {
      std::string record;
      {
        StmtScope scope(record_at_.get());
        sqlite3_bind_int64(record_at_.get(), 1, seq);
        int rc = sqlite3_step(record_at_.get());
        if (rc == SQLITE_DONE) continue;  // verification reports it
        if (rc != SQLITE_ROW) return Unavailable("audit: reading a record failed", db_.get(), rc);
        record = std::string(ColumnText(record_at_.get(), 0));
      }
      auto parsed = AuditRecord::FromJson(record);
      if (!parsed.ok()) continue;  // verification reports it
      for (auto& [k, v] : IndexTerms(*parsed))
        out->push_back(Posting{seq, std::move(k), std::move(v)});
    }
    return absl::OkStatus();
  }

  // Inside a write transaction: stores the pending terms and `fresh`, in key
  // order (neighbouring rows share pages), and moves the mark to `upto`.
  absl::Status WriteTerms(const std::vector<Posting>& fresh, int64_t upto) {
    std::vector<const Posting*> rows;
    rows.reserve(terms_pending_.size() + fresh.size());
    for (const Posting& p : terms_pending_) rows.push_back(&p);
    for (const Posting& p : fresh) rows.push_back(&p);
    std::sort(rows.begin(), rows.end(), [](const Posting* a, const Posting* b) {
      const int64_t ba = TermBucket(a->seq), bb = TermBucket(b->seq);
      if (ba != bb) return ba < bb;
      return std::tie(a->k, a->v, a->seq) < std::tie(b->k, b->v, b->seq);
    });
    for (const Posting* p : rows) {
      sqlite3_stmt* s = term_insert_.get();
      StmtScope scope(s);
      sqlite3_bind_int64(s, 1, TermBucket(p->seq));
      sqlite3_bind_text(s, 2, p->k.data(), static_cast<int>(p->k.size()), SQLITE_STATIC);
      sqlite3_bind_text(s, 3, p->v.data(), static_cast<int>(p->v.size()), SQLITE_STATIC);
      sqlite3_bind_int64(s, 4, p->seq);
      int rc = sqlite3_step(s);
      if (rc != SQLITE_DONE)
        return Unavailable("audit: storing search terms failed", db_.get(), rc);
    }
    sqlite3_stmt* s = term_mark_update_.get();
    StmtScope scope(s);
    sqlite3_bind_int64(s, 1, upto);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
      return Unavailable("audit: storing the terms mark failed", db_.get(), rc);
    return absl::OkStatus();
  }

  // The pending terms in a transaction of their own (no records came).
  void FlushTerms() {
    if (terms_pending_.empty()) return;
    if (InTransaction([&] { return WriteTerms({}, head_seq_); }).ok()) {
      terms_pending_.clear();
      terms_mark_ = head_seq_;
    } else {
      terms_due_ = std::chrono::steady_clock::now() + options_.terms_delay;  // retried
    }
  }

  // At open: the terms of records stored without them (written by an older
  // binary, or pending in a process that stopped before storing them), in
  // transactions of up to 8 buckets.
  absl::Status CatchUpTerms() {
    int64_t mark = 0;
    {
      StmtScope scope(term_mark_select_.get());
      int rc = sqlite3_step(term_mark_select_.get());
      if (rc == SQLITE_ROW) {
        mark = sqlite3_column_int64(term_mark_select_.get(), 0);
      } else if (rc != SQLITE_DONE) {
        return Unavailable("audit: reading the terms mark failed", db_.get(), rc);
      }
    }
    terms_mark_ = std::min(mark, head_seq_);
    while (terms_mark_ < head_seq_) {
      const int64_t upto = std::min(head_seq_, terms_mark_ + (int64_t{8} << kTermBucketShift));
      auto s = InTransaction([&] {
        if (auto l = LoadTerms(terms_mark_, upto, &terms_pending_); !l.ok()) return l;
        return WriteTerms({}, upto);
      });
      terms_pending_.clear();
      if (!s.ok()) return s;
      terms_mark_ = upto;
    }
    return absl::OkStatus();
  }

  // Appends the record as the next leaf and stores the subtrees it completes.
  absl::Status AddLeaf(std::string_view record_json) {
    completed_.clear();
    frontier_.Append(merkle::LeafHash(record_json), &completed_);
    for (const merkle::Frontier::Node& n : completed_) {
      sqlite3_stmt* s = node_insert_.get();
      StmtScope scope(s);
      sqlite3_bind_int(s, 1, n.level);
      sqlite3_bind_int64(s, 2, static_cast<int64_t>(n.index));
      sqlite3_bind_blob(s, 3, n.hash.data(), static_cast<int>(n.hash.size()), SQLITE_STATIC);
      int rc = sqlite3_step(s);
      if (rc != SQLITE_DONE) return Unavailable("audit: storing a tree node failed", db_.get(), rc);
    }
    return absl::OkStatus();
  }

  bool HeadDue() const {
    return options_.tree_head_key != nullptr && options_.tree_head_interval.count() > 0 &&
           std::chrono::steady_clock::now() >= next_head_due_;
  }
  int64_t LastHeadSize() {
    std::lock_guard<std::mutex> lock(head_mu_);
    return last_head_.tree_size;
  }
  int64_t LastHeadTimestamp() {
    std::lock_guard<std::mutex> lock(head_mu_);
    return last_head_.timestamp_ms;
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
  StmtPtr node_insert_, node_select_, leaf_count_, record_at_, head_insert_, term_insert_,
      term_mark_select_, term_mark_update_;
  // The search terms of records (terms_mark_, head_seq_], not stored yet;
  // terms_due_ is when the oldest of them must be. Writer thread only.
  std::vector<Posting> terms_pending_;
  int64_t terms_mark_ = 0;
  std::chrono::steady_clock::time_point terms_due_{};
  // The tree's right edge (writer thread only) and a scratch list.
  merkle::Frontier frontier_;
  std::vector<merkle::Frontier::Node> completed_;
  std::chrono::steady_clock::time_point next_head_due_;
  std::mutex head_mu_;
  TreeHead last_head_;  // guarded by head_mu_

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
  m.reserve(29);
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
  m.emplace_back("roles", s(roles));
  m.emplace_back("purpose_of_use", s(purpose_of_use));
  json::Value list = Value::MakeArray();
  for (const std::string& p : patients) list.Push(s(p));
  m.emplace_back("patients", std::move(list));
  m.emplace_back("query", s(query));
  m.emplace_back("node", s(node));
  m.emplace_back("bytes", Value::Int(bytes));
  return json::Write(Value::MakeObject(std::move(m)));
}

std::vector<std::pair<std::string, std::string>> IndexTerms(const AuditRecord& r) {
  std::vector<std::pair<std::string, std::string>> t;
  auto add = [&](const char* k, const std::string& v) {
    if (!v.empty() && v.size() <= 512) t.emplace_back(k, v);
  };
  add("patient", r.patient_id);
  for (const std::string& p : r.patients) add("patient", p);
  add("agent", r.subject);
  add("client", r.client_id);
  add("action", r.action);
  add("outcome", r.outcome);
  add("type", r.resource_type);
  if (!r.resource_type.empty() && !r.resource_id.empty()) {
    add("entity", r.resource_type + "/" + r.resource_id);
  }
  add("break-glass", r.break_glass);
  std::sort(t.begin(), t.end());
  t.erase(std::unique(t.begin(), t.end()), t.end());
  return t;
}

absl::StatusOr<AuditRecord> AuditRecord::FromJson(std::string_view text) {
  auto v = json::Parse(text);
  if (!v.ok() || !v->is_object()) {
    return Error(ErrorCode::kAuditUnavailable, "audit: a stored record is not a JSON object");
  }
  AuditRecord r;
  auto str = [&](const char* k, std::string* out) {
    if (auto x = v->GetString(k)) *out = std::string(*x);
  };
  auto num = [&](const char* k) -> int64_t {
    const json::Value* x = v->Find(k);
    return x && x->as_int64() ? *x->as_int64() : 0;
  };
  str("time", &r.time);
  str("request_id", &r.request_id);
  str("trace_id", &r.trace_id);
  str("client_address", &r.client_address);
  str("user_agent", &r.user_agent);
  str("subject", &r.subject);
  str("client_id", &r.client_id);
  str("scopes", &r.scopes);
  str("action", &r.action);
  str("method", &r.method);
  str("resource_type", &r.resource_type);
  str("resource_id", &r.resource_id);
  str("version_id", &r.version_id);
  str("patient_id", &r.patient_id);
  str("outcome", &r.outcome);
  r.status_code = static_cast<int>(num("status_code"));
  str("error", &r.error);
  str("policy_id", &r.policy_id);
  r.count = num("count");
  str("decision", &r.decision);
  str("break_glass", &r.break_glass);
  str("break_glass_reason", &r.break_glass_reason);
  str("shadow", &r.shadow);
  str("roles", &r.roles);
  str("purpose_of_use", &r.purpose_of_use);
  if (const json::Value* list = v->Find("patients"); list && list->is_array()) {
    for (const json::Value& p : list->items()) {
      if (p.is_string()) r.patients.push_back(p.as_string());
    }
  }
  str("query", &r.query);
  str("node", &r.node);
  r.bytes = num("bytes");
  return r;
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

// ---- tree heads ----------------------------------------------------------------

absl::StatusOr<TreeHead> ParseTreeHead(std::string_view jws, const jose::PublicKey& key) {
  auto bad = [](std::string what) {
    return Error(ErrorCode::kInvalidToken, "tree head: " + std::move(what));
  };
  if (jws.size() > 4096) return bad("too large");
  const size_t d1 = jws.find('.');
  const size_t d2 = d1 == std::string_view::npos ? d1 : jws.find('.', d1 + 1);
  if (d2 == std::string_view::npos || jws.find('.', d2 + 1) != std::string_view::npos) {
    return bad("not a compact JWS");
  }
  auto header_raw = Base64UrlDecode(jws.substr(0, d1));
  auto payload_raw = Base64UrlDecode(jws.substr(d1 + 1, d2 - d1 - 1));
  auto sig = Base64UrlDecode(jws.substr(d2 + 1));
  if (!header_raw || !payload_raw || !sig) return bad("not base64url");
  auto header = json::Parse(*header_raw);
  auto payload = json::Parse(*payload_raw);
  if (!header.ok() || !header->is_object() || !payload.ok() || !payload->is_object()) {
    return bad("not JSON objects");
  }
  if (header->GetString("alg") != jose::AlgorithmName(key.alg())) return bad("wrong alg");
  if (header->GetString("typ") != kTreeHeadTyp) return bad("wrong typ");
  if (!key.kid().empty() && header->GetString("kid") != key.kid()) return bad("wrong kid");
  if (!key.Verify(jws.substr(0, d2), *sig)) return bad("bad signature");
  TreeHead h;
  const json::Value* size = payload->Find("tree_size");
  const json::Value* ts = payload->Find("timestamp");
  auto root = payload->GetString("root_hash");
  std::optional<std::string> root_raw = root ? Base64UrlDecode(*root) : std::nullopt;
  if (size == nullptr || !size->as_int64() || *size->as_int64() < 1 || ts == nullptr ||
      !ts->as_int64() || !root_raw || root_raw->size() != kHashBytes) {
    return bad("payload lacks tree_size, timestamp or a 32-byte root_hash");
  }
  h.tree_size = *size->as_int64();
  h.timestamp_ms = *ts->as_int64();
  h.root = std::move(*root_raw);
  h.jws = std::string(jws);
  return h;
}

// ---- verification ------------------------------------------------------------

absl::StatusOr<VerifyReport> VerifyAuditLog(const std::string& path, const SecretBytes& mac_key,
                                            const VerifyOptions& options) {
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
  bool has_tree = false;
  {
    sqlite3_stmt* s = nullptr;
    rc = sqlite3_prepare_v2(db.get(),
                            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                            "name IN ('audit_nodes', 'audit_tree_heads')",
                            -1, &s, nullptr);
    StmtPtr st(s);
    if (rc != SQLITE_OK || sqlite3_step(s) != SQLITE_ROW) return fail("cannot read the schema", rc);
    has_tree = sqlite3_column_int(s, 0) == 2;
  }
  bool has_terms = false;
  {
    sqlite3_stmt* s = nullptr;
    rc = sqlite3_prepare_v2(db.get(),
                            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                            "name IN ('audit_postings', 'audit_postings_mark')",
                            -1, &s, nullptr);
    StmtPtr st(s);
    if (rc != SQLITE_OK || sqlite3_step(s) != SQLITE_ROW) return fail("cannot read the schema", rc);
    has_terms = sqlite3_column_int(s, 0) == 2;
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
  // Tree breaks are reported after the chain's and the anchor's, whose
  // messages say more about a chain edit.
  int64_t tree_bad_seq = 0;
  std::string tree_problem;
  auto mark_tree_bad = [&](int64_t seq, std::string what) {
    if (tree_bad_seq != 0) return;
    tree_bad_seq = seq;
    tree_problem = std::move(what);
  };

  // Heads to check, by size: the stored ones (their columns must agree with
  // their signed payload) and the held ones.
  struct HeadCheck {
    int64_t size = 0;
    std::string root;
    std::string what;  // "stored head" / "held head"
  };
  std::multimap<int64_t, HeadCheck> heads;
  std::string head_problem;  // a head that cannot be checked at all
  if (has_tree) {
    sqlite3_stmt* s = nullptr;
    rc = sqlite3_prepare_v2(db.get(),
                            "SELECT tree_size, root, timestamp, jws FROM audit_tree_heads "
                            "ORDER BY tree_size",
                            -1, &s, nullptr);
    StmtPtr st(s);
    if (rc != SQLITE_OK) return fail("cannot read audit_tree_heads", rc);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      const int64_t size = sqlite3_column_int64(s, 0);
      std::string root(ColumnBlob(s, 1));
      const int64_t ts = sqlite3_column_int64(s, 2);
      std::string_view jws = ColumnText(s, 3);
      const std::string name = "signed tree head at " + std::to_string(size);
      if (options.tree_head_key != nullptr) {
        auto parsed = ParseTreeHead(jws, *options.tree_head_key);
        if (!parsed.ok()) {
          heads.emplace(size,
                        HeadCheck{size, "", name + ": " + std::string(parsed.status().message())});
          continue;
        }
        if (parsed->tree_size != size || parsed->root != root || parsed->timestamp_ms != ts) {
          heads.emplace(size,
                        HeadCheck{size, "", name + ": columns differ from the signed payload"});
          continue;
        }
      }
      heads.emplace(size, HeadCheck{size, root, name});
    }
    if (rc != SQLITE_DONE) return fail("cannot read audit_tree_heads", rc);
  }
  for (const std::string& jws : options.held_heads) {
    if (options.tree_head_key == nullptr) {
      return absl::InvalidArgumentError("audit verify: a held head needs the log's public key");
    }
    auto parsed = ParseTreeHead(jws, *options.tree_head_key);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError("audit verify: the held head is not valid: " +
                                        std::string(parsed.status().message()));
    }
    heads.emplace(parsed->tree_size,
                  HeadCheck{parsed->tree_size, parsed->root,
                            "held tree head at " + std::to_string(parsed->tree_size)});
  }

  // One cursor per tree level, advanced as the recomputed tree completes each
  // perfect subtree: O(n) time, O(log n) memory.
  std::vector<StmtPtr> level_rows;
  auto next_node = [&](int level, uint64_t index, std::string_view hash) -> std::string {
    while (level_rows.size() <= static_cast<size_t>(level)) {
      sqlite3_stmt* s = nullptr;
      sqlite3_prepare_v2(db.get(),
                         "SELECT idx, hash FROM audit_nodes WHERE level = ?1 ORDER BY idx", -1, &s,
                         nullptr);
      sqlite3_bind_int(s, 1, static_cast<int>(level_rows.size()));
      level_rows.emplace_back(s);
    }
    sqlite3_stmt* s = level_rows[level].get();
    const std::string where = "Merkle node " + std::to_string(level) + "/" + std::to_string(index);
    if (s == nullptr || sqlite3_step(s) != SQLITE_ROW) return where + " missing";
    if (static_cast<uint64_t>(sqlite3_column_int64(s, 0)) != index) {
      return where + " missing (next stored is " + std::to_string(sqlite3_column_int64(s, 0)) + ")";
    }
    if (!crypto::ConstantTimeEquals(ColumnBlob(s, 1), hash)) {
      return where + " does not match the records (tree rewritten)";
    }
    return "";
  };

  // The search terms, in (seq, k, v) order beside the records (sorted one
  // bucket at a time), and the mark: every record up to it must have exactly
  // its terms (a search reads the index up to the mark and the records after
  // it), none after it may have any.
  StmtPtr terms_rows;
  bool terms_pending = false;  // terms_rows holds an unconsumed row
  int64_t terms_mark = 0;
  if (has_terms) {
    sqlite3_stmt* s = nullptr;
    rc = sqlite3_prepare_v2(db.get(), "SELECT seq FROM audit_postings_mark WHERE id = 1", -1, &s,
                            nullptr);
    StmtPtr mark(s);
    if (rc != SQLITE_OK) return fail("cannot read audit_postings_mark", rc);
    if (sqlite3_step(s) == SQLITE_ROW) terms_mark = sqlite3_column_int64(s, 0);
    rc = sqlite3_prepare_v2(
        db.get(), "SELECT seq, k, v, bucket FROM audit_postings ORDER BY bucket, seq, k, v", -1, &s,
        nullptr);
    terms_rows.reset(s);
    if (rc != SQLITE_OK) return fail("cannot read audit_postings", rc);
    terms_pending = sqlite3_step(s) == SQLITE_ROW;
  }
  // Returns a problem ("" if none) and sets *at to the record it concerns.
  auto check_terms = [&](int64_t seq, std::string_view record, int64_t* at) -> std::string {
    std::vector<std::pair<std::string, std::string>> stored;
    sqlite3_stmt* s = terms_rows.get();
    *at = seq;
    while (terms_pending) {
      const int64_t row_seq = sqlite3_column_int64(s, 0);
      if (sqlite3_column_int64(s, 3) != TermBucket(row_seq)) {
        *at = row_seq;
        return "search terms filed under the wrong bucket (a search would miss the record)";
      }
      if (row_seq > seq) break;
      if (row_seq < seq) {
        return "search terms of a record that is not there (before record " + std::to_string(seq) +
               ")";
      }
      stored.emplace_back(ColumnText(s, 1), ColumnText(s, 2));
      terms_pending = sqlite3_step(s) == SQLITE_ROW;
    }
    if (seq > terms_mark) {
      if (!stored.empty()) return "search terms of a record after the index mark";
      return "";  // a search reads this record itself
    }
    auto parsed = AuditRecord::FromJson(record);
    if (!parsed.ok()) return "record is not a JSON object";
    if (stored != IndexTerms(*parsed)) {
      return "search terms differ from the record (a search would hide or misattribute it)";
    }
    return "";
  };

  merkle::Frontier tree;
  std::vector<merkle::Frontier::Node> completed;
  auto head_it = heads.begin();
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
      if (has_terms && tree_bad_seq == 0) {
        int64_t at = seq;
        if (std::string p = check_terms(seq, record, &at); !p.empty()) mark_tree_bad(at, p);
      }
      if (has_tree && tree_bad_seq == 0) {
        completed.clear();
        tree.Append(merkle::LeafHash(record), &completed);
        for (const auto& n : completed) {
          if (std::string p = next_node(n.level, n.index, n.hash); !p.empty()) {
            mark_tree_bad(seq, p);
            break;
          }
        }
        for (; head_it != heads.end() && head_it->first <= seq; ++head_it) {
          const HeadCheck& h = head_it->second;
          if (h.root.empty()) {
            mark_tree_bad(seq, h.what);
          } else if (h.size != seq || !crypto::ConstantTimeEquals(h.root, tree.Root())) {
            mark_tree_bad(seq, h.what + " does not match the records (history rewritten)");
          } else {
            ++report.tree_heads;
          }
        }
      }
      prev = std::string(hash);
      ++expected;
    }
    if (rc != SQLITE_DONE) return fail("cannot read audit_records", rc);
  }
  if (report.first_bad_seq == 0 && tree_bad_seq == 0 && has_tree) {
    if (head_it != heads.end()) {
      mark_tree_bad(tail.last_seq + 1, head_it->second.what + " covers records that are gone (" +
                                           std::to_string(report.records) + " present)");
    }
    for (size_t l = 0; l < level_rows.size() && tree_bad_seq == 0; ++l) {
      if (level_rows[l] && sqlite3_step(level_rows[l].get()) == SQLITE_ROW) {
        mark_tree_bad(tail.last_seq + 1,
                      "Merkle node " + std::to_string(l) + "/" +
                          std::to_string(sqlite3_column_int64(level_rows[l].get(), 0)) +
                          " has no records (records removed)");
      }
    }
    if (tree_bad_seq == 0 && terms_pending) {
      mark_tree_bad(tail.last_seq + 1, "search terms of records that are not there");
    }
    if (tree_bad_seq == 0 && terms_mark > tail.last_seq) {
      mark_tree_bad(tail.last_seq + 1,
                    "the search index mark (" + std::to_string(terms_mark) +
                        ") is past the last record (the next records would be missed)");
    }
    // Nodes at levels no record reached.
    if (tree_bad_seq == 0) {
      sqlite3_stmt* s = nullptr;
      sqlite3_prepare_v2(db.get(), "SELECT count(*) FROM audit_nodes WHERE level >= ?1", -1, &s,
                         nullptr);
      StmtPtr st(s);
      sqlite3_bind_int(s, 1, static_cast<int>(level_rows.size()));
      if (s != nullptr && sqlite3_step(s) == SQLITE_ROW && sqlite3_column_int64(s, 0) > 0) {
        mark_tree_bad(tail.last_seq + 1, "Merkle nodes above the tree (records removed)");
      }
    }
  }
  level_rows.clear();
  terms_rows.reset();
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
  if (report.first_bad_seq == 0 && tree_bad_seq != 0) mark_bad(tree_bad_seq, tree_problem);

  if (report.first_bad_seq == 0) {
    report.ok = true;
    report.root = HexEncode(tree.Root());
    report.summary = "audit chain intact: " + std::to_string(report.records) + " records";
    if (report.records > 0) report.summary += ", head " + HexEncode(tail.last_hash);
    if (has_tree) {
      report.summary += "; Merkle tree intact, root " + report.root + ", " +
                        std::to_string(report.tree_heads) + " signed tree heads verified";
      if (options.tree_head_key == nullptr) report.summary += " (signatures not checked)";
    }
  } else {
    report.ok = false;
    report.summary = "audit chain broken at record " + std::to_string(report.first_bad_seq) + ": " +
                     problem + " (" + std::to_string(report.records) + " records present)";
  }
  return report;
}

}  // namespace fhirward::audit
