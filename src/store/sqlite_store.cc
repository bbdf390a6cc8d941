// SQLite backend of ResourceStore: WAL, synchronous=FULL, one writer thread
// with group commit, a pool of read connections, every body sealed.
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/envelope.h"
#include "fhir/resources.h"
#include "store/internal/search_sql.h"
#include "store/internal/sqlite.h"
#include "store/resource_store.h"

namespace fhirward::store {
namespace {

using internal::Db;
using internal::Stmt;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS resource_versions(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  tenant TEXT NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
  deleted INTEGER NOT NULL, last_updated TEXT NOT NULL, envelope BLOB,
  UNIQUE(tenant, type, id, version));
CREATE INDEX IF NOT EXISTS resource_versions_by_type ON resource_versions(tenant, type, seq);
CREATE TABLE IF NOT EXISTS resource_current(
  tenant TEXT NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL,
  version INTEGER NOT NULL, seq INTEGER NOT NULL,
  PRIMARY KEY(tenant, type, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS compartment_members(
  tenant TEXT NOT NULL, patient TEXT NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL,
  version INTEGER NOT NULL,
  PRIMARY KEY(tenant, type, id, version, patient)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS compartment_members_by_patient
  ON compartment_members(tenant, patient, type);
CREATE TABLE IF NOT EXISTS idempotency_keys(
  tenant TEXT NOT NULL, client TEXT NOT NULL, key TEXT NOT NULL,
  request_hash BLOB NOT NULL, status INTEGER NOT NULL, headers TEXT NOT NULL,
  envelope BLOB, created_at TEXT NOT NULL,
  PRIMARY KEY(tenant, client, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS erased_resources(
  tenant TEXT NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL, erased_at TEXT NOT NULL,
  PRIMARY KEY(tenant, type, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_meta(name TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL);
)sql";

// Sorted, without duplicates: the canonical form bound into the AD.
std::vector<std::string> Canonical(std::vector<std::string> patients) {
  std::sort(patients.begin(), patients.end());
  patients.erase(std::unique(patients.begin(), patients.end()), patients.end());
  return patients;
}

// The associated data binds tenant, type, id, version and the Patient
// compartments of the version: the compartment rows are kept in clear (for
// search narrowing and history filters), and an edit of them makes the
// version fail to open instead of moving it into another patient's reach.
std::string ResourceAd(const ResourceKey& k, int64_t version,
                       const std::vector<std::string>& patients) {
  std::vector<std::string> parts = {"fhirward-resource-v1",  k.tenant,  k.type, k.id,
                                    std::to_string(version), "patients"};
  for (const auto& p : Canonical(patients)) parts.push_back(p);
  return LengthPrefixedOf(parts);
}

std::string IdempotencyAd(const std::string& tenant, const std::string& client,
                          const std::string& key) {
  return LengthPrefixed({"fhirward-idempotency-v1", tenant, client, key});
}

// Puts resourceType, id and meta first, with meta.versionId/lastUpdated set.
void StampMeta(json::Value& r, const std::string& type, const std::string& id, int64_t version,
               const std::string& instant) {
  json::Object out;
  json::Value meta = json::Value::MakeObject();
  for (auto& [k, v] : r.members()) {
    if (k == "meta" && v.is_object()) meta = std::move(v);
  }
  meta.Erase("versionId");
  meta.Erase("lastUpdated");
  json::Object meta_members;
  meta_members.emplace_back("versionId", json::Value::String(std::to_string(version)));
  meta_members.emplace_back("lastUpdated", json::Value::String(instant));
  for (auto& m : meta.members()) meta_members.push_back(std::move(m));
  out.emplace_back("resourceType", json::Value::String(type));
  out.emplace_back("id", json::Value::String(id));
  out.emplace_back("meta", json::Value::MakeObject(std::move(meta_members)));
  for (auto& [k, v] : r.members()) {
    if (k == "resourceType" || k == "id" || k == "meta") continue;
    out.emplace_back(std::move(k), std::move(v));
  }
  r = json::Value::MakeObject(std::move(out));
}

// The Patient compartments of `resource` as it will be stored, i.e. with id =
// key.id (StampMeta overwrites the body's id, so a Patient body without an id
// or with another one must not decide its own compartment).
std::vector<std::string> CompartmentsAsStored(const ResourceKey& key, json::Value& resource) {
  if (resource.is_object()) resource.Set("id", json::Value::String(key.id));
  return fhir::PatientCompartmentsOf(key.type, resource);
}

struct Prepared {
  int64_t version = 0;
  std::string json;
  std::string envelope;
  internal::IndexRows rows;  // of the resource as stored (versions do not change them)
};

// The newest known version of each resource, still sealed: a point read
// then costs a hash lookup and the envelope open instead of a SQLite read
// transaction. Entries hold ciphertext and the clear-text metadata the
// database holds anyway; they are filled after a commit (by writers) and on
// read misses, and an entry is only ever replaced by a newer version, so a
// slow reader cannot put back a version older than one a writer committed.
// Bounded per shard; a full shard is emptied (the database stays the truth).
class VersionCache {
 public:
  struct Entry {
    int64_t version = 0;
    bool deleted = false;
    std::string last_updated;
    std::string envelope;
    std::vector<std::string> patients;
  };

  explicit VersionCache(size_t max_bytes) : max_shard_bytes_(max_bytes / kShards) {}

  std::shared_ptr<const Entry> Get(const ResourceKey& k) {
    if (max_shard_bytes_ == 0) return nullptr;
    std::string key = KeyOf(k);
    Shard& sh = ShardOf(key);
    std::lock_guard<std::mutex> lock(sh.mu);
    auto it = sh.map.find(key);
    return it == sh.map.end() ? nullptr : it->second.entry;
  }

  // Take this before reading or writing the database, and pass it to Offer.
  uint64_t Generation(const ResourceKey& k) {
    std::string key = KeyOf(k);
    Shard& sh = ShardOf(key);
    std::lock_guard<std::mutex> lock(sh.mu);
    return sh.generation;
  }

  // Offers what a read found (`committed` false) or a write committed.
  // Refused when the cache already holds this version or a newer one, and
  // when the shard's generation moved since `generation` was taken (a shard
  // that was emptied forgot versions, so a read result from before cannot be
  // trusted to be the newest). A refused write also drops the key's entry
  // and moves the generation on: a reader that looked at the database before
  // this commit can then no longer put its older version in.
  void Offer(const ResourceKey& k, Entry e, uint64_t generation, bool committed) {
    if (max_shard_bytes_ == 0) return;
    // A format-1 envelope (from before the key ring) needs no destroyed key to
    // stop opening, so an erasure by another process could not reach a cached
    // copy: those are always read from the database.
    if (!e.deleted && !crypto::KeyRing::IsRecordEnvelope(e.envelope)) return;
    std::string key = KeyOf(k);
    size_t bytes = key.size() + e.envelope.size() + e.last_updated.size() + 128;
    for (const auto& p : e.patients) bytes += p.size() + 32;
    auto entry = std::make_shared<const Entry>(std::move(e));
    Shard& sh = ShardOf(key);
    std::lock_guard<std::mutex> lock(sh.mu);
    if (sh.generation != generation) {
      if (committed) {
        if (auto stale = sh.map.find(key); stale != sh.map.end()) {
          sh.bytes -= stale->second.bytes;
          sh.map.erase(stale);
        }
        ++sh.generation;
      }
      return;
    }
    auto it = sh.map.find(key);
    if (it != sh.map.end()) {
      if (it->second.entry->version >= entry->version) return;
      sh.bytes = sh.bytes - it->second.bytes + bytes;
      it->second = {std::move(entry), bytes};
    } else {
      sh.bytes += bytes;
      sh.map.emplace(std::move(key), Slot{std::move(entry), bytes});
    }
    if (sh.bytes > max_shard_bytes_) {
      sh.map.clear();
      sh.bytes = 0;
      ++sh.generation;
    }
  }

  // Forgets everything (a tenant was purged).
  void Clear() {
    for (Shard& sh : shards_) {
      std::lock_guard<std::mutex> lock(sh.mu);
      sh.map.clear();
      sh.bytes = 0;
      ++sh.generation;
    }
  }

  // Forgets `k` (its stored versions were rewritten or erased) and moves the
  // generation on, so no read from before can put the old entry back.
  void Drop(const ResourceKey& k) {
    std::string key = KeyOf(k);
    Shard& sh = ShardOf(key);
    std::lock_guard<std::mutex> lock(sh.mu);
    if (auto it = sh.map.find(key); it != sh.map.end()) {
      sh.bytes -= it->second.bytes;
      sh.map.erase(it);
    }
    ++sh.generation;
  }

 private:
  static constexpr size_t kShards = 16;
  struct Slot {
    std::shared_ptr<const Entry> entry;
    size_t bytes = 0;
  };
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, Slot> map;
    size_t bytes = 0;
    uint64_t generation = 0;
  };
  static std::string KeyOf(const ResourceKey& k) {
    return k.tenant + '\x1f' + k.type + '\x1f' + k.id;
  }
  Shard& ShardOf(const std::string& key) {
    return shards_[std::hash<std::string>{}(key) % kShards];
  }
  size_t max_shard_bytes_;
  std::array<Shard, kShards> shards_;
};

class SqliteStore final : public ResourceStore {
 public:
  static absl::StatusOr<std::unique_ptr<ResourceStore>> Open(const SqliteStoreOptions& o) {
    if (o.kek == nullptr) return Error(ErrorCode::kInternal, "store needs a key service");
    if (o.keyring == nullptr) return Error(ErrorCode::kInternal, "store needs a key ring");
    if (o.index_key == nullptr) return Error(ErrorCode::kInternal, "store needs a blind-index key");
    auto writer = Db::Open(o.path, false);
    if (!writer.ok()) return writer.status();
    ::chmod(o.path.c_str(), 0600);  // and so its -wal and -shm files
    Db& w = **writer;
    for (const char* sql :
         {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON"}) {
      if (auto s = w.Exec(sql); !s.ok()) return s;
    }
    // Freed pages are zeroed: an erased patient's ciphertext does not linger in the file.
    if (auto s = w.Exec("PRAGMA secure_delete=ON"); !s.ok()) return s;
    if (auto s = w.Exec(kSchema); !s.ok()) return s;
    // Checkpoints run on their own thread and connection (passive: they never
    // block the writer or readers), so the writer only appends to the WAL.
    sqlite3_wal_autocheckpoint(w.raw(), 0);
    if (auto s = w.Exec(internal::kSearchSchema); !s.ok()) return s;
    std::unique_ptr<SqliteStore> store(new SqliteStore(o));
    if (auto s = store->IndexExisting(w); !s.ok()) return s;
    {
      auto last = w.Prepare("SELECT last_updated FROM resource_versions ORDER BY seq DESC LIMIT 1");
      if (!last.ok()) return last.status();
      auto row = last->Step();
      if (!row.ok()) return row.status();
      if (*row) store->last_stamp_ = last->Text(0);
    }
    store->writer_db_ = std::move(*writer);
    for (int i = 0; i < std::max(1, o.read_connections); ++i) {
      auto r = Db::Open(o.path, true);
      if (!r.ok()) return r.status();
      store->readers_.push_back(std::move(*r));
    }
    auto checkpointer = Db::Open(o.path, false);
    if (!checkpointer.ok()) return checkpointer.status();
    store->checkpoint_db_ = std::move(*checkpointer);
    sqlite3_wal_hook(store->writer_db_->raw(), &SqliteStore::WalHook, store.get());
    store->writer_thread_ = std::thread([s = store.get()] { s->WriterLoop(); });
    store->checkpoint_thread_ = std::thread([s = store.get()] { s->CheckpointLoop(); });
    return std::unique_ptr<ResourceStore>(std::move(store));
  }

  // Called by SQLite after each commit with the WAL's size in pages.
  static int WalHook(void* self, sqlite3*, const char*, int pages) {
    auto* store = static_cast<SqliteStore*>(self);
    if (pages >= kCheckpointPages) {
      {
        std::lock_guard lk(store->checkpoint_mu_);
        store->checkpoint_wanted_ = true;
      }
      store->checkpoint_cv_.notify_one();
    }
    return SQLITE_OK;
  }

  void CheckpointLoop() {
    for (;;) {
      {
        std::unique_lock lk(checkpoint_mu_);
        checkpoint_cv_.wait_for(lk, std::chrono::seconds(5),
                                [&] { return checkpoint_wanted_ || checkpoint_closing_; });
        if (checkpoint_closing_) return;
        checkpoint_wanted_ = false;
      }
      int log = 0, done = 0;
      sqlite3_wal_checkpoint_v2(checkpoint_db_->raw(), nullptr, SQLITE_CHECKPOINT_PASSIVE, &log,
                                &done);
    }
  }

  ~SqliteStore() override {
    {
      std::lock_guard lk(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    if (writer_thread_.joinable()) writer_thread_.join();
    {
      std::lock_guard lk(checkpoint_mu_);
      checkpoint_closing_ = true;
    }
    checkpoint_cv_.notify_all();
    if (checkpoint_thread_.joinable()) checkpoint_thread_.join();
  }

  absl::StatusOr<StoredVersion> Read(const ResourceKey& key) override {
    if (auto hit = cache_.Get(key)) return FromEntry(key, *hit);
    const uint64_t generation = cache_.Generation(key);
    auto conn = AcquireReader();
    auto st = conn.db->Prepare(
        "SELECT v.version, v.deleted, v.last_updated, v.envelope, "
        "(SELECT group_concat(m.patient, char(31)) FROM compartment_members m "
        "WHERE m.tenant = v.tenant AND m.type = v.type AND m.id = v.id AND m.version = v.version) "
        "FROM resource_current c "
        "JOIN resource_versions v ON v.seq = c.seq "
        "WHERE c.tenant = ?1 AND c.type = ?2 AND c.id = ?3");
    if (!st.ok()) return st.status();
    st->Bind(1, key.tenant).Bind(2, key.type).Bind(3, key.id);
    auto v = LoadOne(*conn.db, *st, key, generation);
    if (!v.ok() && CodeOf(v.status()) == ErrorCode::kNotFound) return ErasedOr(*conn.db, key, v);
    return v;
  }

  absl::StatusOr<StoredVersion> ReadVersion(const ResourceKey& key, int64_t version) override {
    if (auto hit = cache_.Get(key); hit && hit->version == version) return FromEntry(key, *hit);
    auto conn = AcquireReader();
    auto st = conn.db->Prepare(
        "SELECT v.version, v.deleted, v.last_updated, v.envelope, "
        "(SELECT group_concat(m.patient, char(31)) FROM compartment_members m "
        "WHERE m.tenant = v.tenant AND m.type = v.type AND m.id = v.id AND m.version = v.version) "
        "FROM resource_versions v "
        "WHERE v.tenant = ?1 AND v.type = ?2 AND v.id = ?3 AND v.version = ?4");
    if (!st.ok()) return st.status();
    st->Bind(1, key.tenant).Bind(2, key.type).Bind(3, key.id).Bind(4, version);
    auto v = LoadOne(*conn.db, *st, key);
    if (!v.ok() && CodeOf(v.status()) == ErrorCode::kNotFound) return ErasedOr(*conn.db, key, v);
    return v;
  }

  absl::StatusOr<StoredVersion> Create(const ResourceKey& key, json::Value resource) override {
    const uint64_t generation = cache_.Generation(key);
    std::string now = FormatInstant(SystemClock::Get().Now());
    std::vector<std::string> patients = CompartmentsAsStored(key, resource);
    auto prepared = Prepare(key, resource, 1, now, patients);
    if (!prepared.ok()) return prepared.status();
    StoredVersion out;
    absl::Status s = SubmitWrite([&](Db& db) -> absl::Status {
      auto cur = CurrentVersion(db, key);
      if (!cur.ok()) return cur.status();
      if (*cur != 0) return Error(ErrorCode::kVersionConflict, "id already exists");
      if (KeepStampMonotonic(now)) {
        auto again = Prepare(key, resource, 1, now, patients, &prepared->rows);
        if (!again.ok()) return again.status();
        *prepared = std::move(*again);
      }
      return InsertVersion(db, key, *prepared, false, now, patients);
    });
    if (!s.ok()) return s;
    cache_.Offer(key, {1, false, now, prepared->envelope, patients}, generation, true);
    out.type = key.type;
    out.id = key.id;
    out.version = 1;
    out.last_updated = now;
    out.json = std::move(prepared->json);
    out.patients = std::move(patients);
    return out;
  }

  absl::StatusOr<WriteResult> Update(const ResourceKey& key, json::Value resource,
                                     std::optional<int64_t> if_match, bool allow_create) override {
    const uint64_t generation = cache_.Generation(key);
    std::string now = FormatInstant(SystemClock::Get().Now());
    std::vector<std::string> patients = CompartmentsAsStored(key, resource);
    // Seal outside the writer for the version we expect; re-seal inside only
    // when another writer got there first.
    int64_t guess = 1;
    if (if_match) {
      guess = *if_match + 1;
    } else {
      auto conn = AcquireReader();
      auto cur = CurrentVersion(*conn.db, key);
      if (!cur.ok()) return cur.status();
      guess = *cur + 1;
    }
    auto prepared = Prepare(key, resource, guess, now, patients);
    if (!prepared.ok()) return prepared.status();
    WriteResult out;
    absl::Status s = SubmitWrite([&](Db& db) -> absl::Status {
      auto cur = CurrentVersion(db, key);
      if (!cur.ok()) return cur.status();
      if (if_match && *cur != *if_match) {
        return Error(ErrorCode::kPreconditionFailed,
                     *cur == 0 ? "resource does not exist"
                               : "current version is W/\"" + std::to_string(*cur) + "\"");
      }
      if (*cur == 0 && !allow_create) {
        return Error(ErrorCode::kNotFound, "update-as-create is disabled");
      }
      bool restamped = KeepStampMonotonic(now);
      if (restamped || *cur + 1 != prepared->version) {
        auto again = Prepare(key, resource, *cur + 1, now, patients, &prepared->rows);
        if (!again.ok()) return again.status();
        *prepared = std::move(*again);
      }
      out.created = *cur == 0;
      return InsertVersion(db, key, *prepared, false, now, patients);
    });
    if (!s.ok()) return s;
    cache_.Offer(key, {prepared->version, false, now, prepared->envelope, patients}, generation,
                 true);
    out.stored.type = key.type;
    out.stored.id = key.id;
    out.stored.version = prepared->version;
    out.stored.last_updated = now;
    out.stored.json = std::move(prepared->json);
    out.stored.patients = std::move(patients);
    return out;
  }

  absl::StatusOr<StoredVersion> Delete(const ResourceKey& key,
                                       std::optional<int64_t> if_match) override {
    const uint64_t generation = cache_.Generation(key);
    std::string now = FormatInstant(SystemClock::Get().Now());
    StoredVersion out;
    out.type = key.type;
    out.id = key.id;
    out.deleted = true;
    absl::Status s = SubmitWrite([&](Db& db) -> absl::Status {
      auto st = db.Prepare(
          "SELECT c.version, v.deleted, v.last_updated FROM resource_current c "
          "JOIN resource_versions v ON v.seq = c.seq "
          "WHERE c.tenant = ?1 AND c.type = ?2 AND c.id = ?3");
      if (!st.ok()) return st.status();
      st->Bind(1, key.tenant).Bind(2, key.type).Bind(3, key.id);
      auto row = st->Step();
      if (!row.ok()) return row.status();
      int64_t cur = *row ? st->Int(0) : 0;
      bool already_deleted = *row && st->Int(1) != 0;
      std::string cur_updated = *row ? st->Text(2) : "";
      if (if_match && cur != *if_match) {
        return Error(ErrorCode::kPreconditionFailed,
                     cur == 0 ? "resource does not exist"
                              : "current version is W/\"" + std::to_string(cur) + "\"");
      }
      out.patients = CompartmentsOf(db, key, cur);
      if (cur == 0 || already_deleted) {
        out.version = cur;
        out.last_updated = cur_updated;
        return absl::OkStatus();
      }
      Prepared p;
      p.version = cur + 1;
      out.version = p.version;
      KeepStampMonotonic(now);
      out.last_updated = now;
      return InsertVersion(db, key, p, true, now, out.patients);
    });
    if (!s.ok()) return s;
    if (out.version > 0) {
      cache_.Offer(key, {out.version, true, out.last_updated, {}, out.patients}, generation, true);
    }
    return out;
  }

  absl::StatusOr<HistoryPage> History(const HistoryQuery& q) override {
    std::string sql =
        "SELECT v.seq, v.type, v.id, v.version, v.deleted, v.last_updated, v.envelope "
        "FROM resource_versions v WHERE v.tenant = ?1";
    if (!q.type.empty()) sql += " AND v.type = ?2";
    if (!q.id.empty()) sql += " AND v.id = ?3";
    if (q.since) sql += " AND v.last_updated >= ?4";
    if (q.before_seq > 0) sql += " AND v.seq < ?5";
    if (q.patients) {
      // Bound from ?8 on; an empty set matches nothing.
      std::string in = q.patients->empty() ? "0" : "m.patient IN (";
      for (size_t i = 0; i < q.patients->size(); ++i) {
        in += (i ? ", ?" : "?") + std::to_string(8 + i);
      }
      if (!q.patients->empty()) in += ")";
      sql +=
          " AND EXISTS (SELECT 1 FROM compartment_members m WHERE m.tenant = v.tenant AND "
          "m.type = v.type AND m.id = v.id AND m.version = v.version AND " +
          in + ")";
    }
    sql += " ORDER BY v.seq DESC LIMIT ?7";
    auto conn = AcquireReader();
    auto st = conn.db->Prepare(sql);
    if (!st.ok()) return st.status();
    st->Bind(1, q.tenant);
    if (!q.type.empty()) st->Bind(2, q.type);
    if (!q.id.empty()) st->Bind(3, q.id);
    if (q.since) st->Bind(4, *q.since);
    if (q.before_seq > 0) st->Bind(5, q.before_seq);
    if (q.patients) {
      for (size_t i = 0; i < q.patients->size(); ++i) {
        st->Bind(static_cast<int>(8 + i), (*q.patients)[i]);
      }
    }
    st->Bind(7, static_cast<int64_t>(q.count) + 1);
    HistoryPage page;
    if (!q.id.empty() && !q.type.empty() && q.before_seq == 0) {
      // The history of an erased resource is erased with it.
      ResourceKey key{q.tenant, q.type, q.id};
      absl::StatusOr<StoredVersion> none = Error(ErrorCode::kNotFound, "");
      auto erased = ErasedOr(*conn.db, key, none);
      if (CodeOf(erased.status()) == ErrorCode::kErased) {
        auto exists = conn.db->Prepare(
            "SELECT 1 FROM resource_current WHERE tenant = ?1 AND type = ?2 AND id = ?3");
        if (!exists.ok()) return exists.status();
        exists->Bind(1, q.tenant).Bind(2, q.type).Bind(3, q.id);
        auto row = exists->Step();
        if (!row.ok()) return row.status();
        if (!*row) return erased.status();
      }
    }
    for (;;) {
      auto row = st->Step();
      if (!row.ok()) return row.status();
      if (!*row) break;
      if (static_cast<int>(page.entries.size()) == q.count) {
        page.more = true;
        break;
      }
      HistoryEntry e;
      e.seq = st->Int(0);
      ResourceKey key{q.tenant, st->Text(1), st->Text(2)};
      e.version.type = key.type;
      e.version.id = key.id;
      e.version.version = st->Int(3);
      e.version.deleted = st->Int(4) != 0;
      e.version.last_updated = st->Text(5);
      if (!e.version.deleted) {
        e.version.patients = CompartmentsOf(*conn.db, key, e.version.version);
        auto plain = OpenRecord(q.tenant, st->Blob(6),
                                ResourceAd(key, e.version.version, e.version.patients));
        if (!plain.ok()) return plain.status();
        e.version.json = std::move(*plain);
      }
      page.entries.push_back(std::move(e));
    }
    return page;
  }

  absl::StatusOr<std::optional<IdempotencyRecord>> GetIdempotency(const std::string& tenant,
                                                                  const std::string& client,
                                                                  const std::string& key) override {
    auto conn = AcquireReader();
    return LoadIdempotency(*conn.db, tenant, client, key);
  }

  absl::StatusOr<IdempotencyRecord> PutIdempotency(const std::string& tenant,
                                                   const std::string& client,
                                                   const std::string& key,
                                                   IdempotencyRecord record) override {
    std::string envelope;
    if (!record.response_body.empty()) {
      auto sealed = cipher_.Seal(record.response_body, IdempotencyAd(tenant, client, key));
      if (!sealed.ok()) return sealed.status();
      envelope = std::move(*sealed);
    }
    IdempotencyRecord stored;
    absl::Status s = SubmitWrite([&](Db& db) -> absl::Status {
      auto existing = LoadIdempotency(db, tenant, client, key);
      if (!existing.ok()) return existing.status();
      // A pending reservation (status 0) is completed only by the request
      // that holds it (its token), never by another one with the same body.
      if (existing->has_value() && ((*existing)->status != 0 || record.status == 0 ||
                                    (*existing)->response_headers != record.reservation)) {
        stored = std::move(**existing);
        return absl::OkStatus();
      }
      auto st = db.Prepare(
          "INSERT OR REPLACE INTO idempotency_keys(tenant, client, key, request_hash, status, "
          "headers, envelope, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
      if (!st.ok()) return st.status();
      st->Bind(1, tenant).Bind(2, client).Bind(3, key).BindBlob(4, record.request_hash);
      st->Bind(5, static_cast<int64_t>(record.status)).Bind(6, record.response_headers);
      if (envelope.empty()) {
        st->BindNull(7);
      } else {
        st->BindBlob(7, envelope);
      }
      st->Bind(8, record.created_at);
      stored = record;
      return st->Run();
    });
    if (!s.ok()) return s;
    return stored;
  }

  absl::Status DeleteIdempotency(const std::string& tenant, const std::string& client,
                                 const std::string& key,
                                 const IdempotencyRecord* only_if) override {
    return SubmitWrite([&](Db& db) -> absl::Status {
      auto st = db.Prepare(only_if == nullptr
                               ? "DELETE FROM idempotency_keys WHERE tenant = ?1 AND client = ?2 "
                                 "AND key = ?3"
                               : "DELETE FROM idempotency_keys WHERE tenant = ?1 AND client = ?2 "
                                 "AND key = ?3 AND created_at = ?4 AND headers = ?5");
      if (!st.ok()) return st.status();
      st->Bind(1, tenant).Bind(2, client).Bind(3, key);
      if (only_if != nullptr) st->Bind(4, only_if->created_at).Bind(5, only_if->response_headers);
      return st->Run();
    });
  }

  absl::Status ExpireIdempotency(const std::string& cutoff) override {
    return SubmitWrite([&](Db& db) -> absl::Status {
      auto st = db.Prepare("DELETE FROM idempotency_keys WHERE created_at < ?1");
      if (!st.ok()) return st.status();
      st->Bind(1, cutoff);
      return st->Run();
    });
  }

  absl::StatusOr<EraseReport> ErasePatient(const std::string& tenant, const std::string& patient,
                                           const std::vector<std::string>& key_ids) override {
    std::set<std::string> ids(key_ids.begin(), key_ids.end());
    std::string now = FormatInstant(SystemClock::Get().Now());
    EraseReport report;
    std::vector<ResourceKey> erased;
    absl::Status s = SubmitWrite([&](Db& db) -> absl::Status {
      report = {};
      erased.clear();
      std::vector<std::pair<std::string, std::string>> candidates;
      {
        auto st = db.Prepare(
            "SELECT DISTINCT type, id FROM compartment_members WHERE tenant = ?1 AND patient = ?2");
        if (!st.ok()) return st.status();
        st->Bind(1, tenant).Bind(2, patient);
        for (;;) {
          auto row = st->Step();
          if (!row.ok()) return row.status();
          if (!*row) break;
          candidates.emplace_back(st->Text(0), st->Text(1));
        }
      }
      if (std::find(candidates.begin(), candidates.end(),
                    std::make_pair(std::string("Patient"), patient)) == candidates.end()) {
        candidates.emplace_back("Patient", patient);
      }
      for (const auto& [type, id] : candidates) {
        ResourceKey key{tenant, type, id};
        auto st = db.Prepare(
            "SELECT v.envelope, EXISTS (SELECT 1 FROM compartment_members m WHERE "
            "m.tenant = v.tenant AND m.type = v.type AND m.id = v.id AND m.version = v.version "
            "AND m.patient = ?4) FROM resource_versions v "
            "WHERE v.tenant = ?1 AND v.type = ?2 AND v.id = ?3");
        if (!st.ok()) return st.status();
        st->Bind(1, tenant).Bind(2, type).Bind(3, id).Bind(4, patient);
        bool shred = false;
        uint64_t versions = 0;
        for (;;) {
          auto row = st->Step();
          if (!row.ok()) return row.status();
          if (!*row) break;
          ++versions;
          if (st->IsNull(0)) continue;  // a deletion version
          // In the patient's compartment (whatever it was sealed under: a
          // Group of many members uses the tenant key), or sealed under one
          // of the patient's keys.
          if (st->Int(1) != 0) shred = true;
          std::string envelope = st->Blob(0);
          if (crypto::KeyRing::IsRecordEnvelope(envelope)) {
            for (const auto& k : crypto::KeyRing::KeyIdsOf(envelope)) {
              if (ids.count(k) != 0) shred = true;
            }
          }
        }
        if (!shred) continue;
        if (auto r = RemoveResource(db, tenant, type, id); !r.ok()) return r;
        auto mark = db.Prepare(
            "INSERT OR REPLACE INTO erased_resources(tenant, type, id, erased_at) "
            "VALUES (?1, ?2, ?3, ?4)");
        if (!mark.ok()) return mark.status();
        mark->Bind(1, tenant).Bind(2, type).Bind(3, id).Bind(4, now);
        if (auto r = mark->Run(); !r.ok()) return r;
        ++report.resources;
        report.versions += versions;
        erased.push_back(key);
      }
      // Idempotency records keep a response body (sealed under the KEK alone)
      // for replays: those that mention the patient go too.
      std::vector<std::pair<std::string, std::string>> replays;
      {
        auto st = db.Prepare(
            "SELECT client, key, envelope FROM idempotency_keys WHERE tenant = ?1 AND "
            "envelope IS NOT NULL");
        if (!st.ok()) return st.status();
        st->Bind(1, tenant);
        const std::string ref = "Patient/" + patient;
        const std::string quoted = "\"" + patient + "\"";
        for (;;) {
          auto row = st->Step();
          if (!row.ok()) return row.status();
          if (!*row) break;
          auto body = cipher_.Open(st->Blob(2), IdempotencyAd(tenant, st->Text(0), st->Text(1)));
          if (body.ok() &&
              (body->find(ref) != std::string::npos || body->find(quoted) != std::string::npos)) {
            replays.emplace_back(st->Text(0), st->Text(1));
          }
        }
      }
      for (const auto& [client, key] : replays) {
        auto del = db.Prepare(
            "DELETE FROM idempotency_keys WHERE tenant = ?1 AND client = ?2 AND key = ?3");
        if (!del.ok()) return del.status();
        del->Bind(1, tenant).Bind(2, client).Bind(3, key);
        if (auto r = del->Run(); !r.ok()) return r;
      }
      report.idempotency_records = replays.size();
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    for (const auto& key : erased) cache_.Drop(key);
    return report;
  }

  absl::StatusOr<uint64_t> PurgeTenant(const std::string& tenant) override {
    uint64_t removed = 0;
    absl::Status s = SubmitWrite([&](Db& db) -> absl::Status {
      auto count = db.Prepare("SELECT COUNT(*) FROM resource_versions WHERE tenant = ?1");
      if (!count.ok()) return count.status();
      count->Bind(1, tenant);
      auto row = count->Step();
      if (!row.ok()) return row.status();
      removed = static_cast<uint64_t>(count->Int(0));
      for (const char* table :
           {"resource_versions", "resource_current", "compartment_members", "erased_resources",
            "idempotency_keys", "search_token", "search_string", "search_date", "search_number",
            "search_reference", "search_composite"}) {
        auto del = db.Prepare(std::string("DELETE FROM ") + table + " WHERE tenant = ?1");
        if (!del.ok()) return del.status();
        del->Bind(1, tenant);
        if (auto r = del->Run(); !r.ok()) return r;
      }
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    cache_.Clear();
    return removed;
  }

  absl::StatusOr<ResealProgress> ResealBatch(int64_t after_seq, size_t limit) override {
    struct Row {
      int64_t seq;
      ResourceKey key;
      int64_t version;
      std::string old_envelope;
      std::string new_envelope;
    };
    std::vector<Row> stale;
    ResealProgress progress;
    progress.last_seq = after_seq;
    {
      auto conn = AcquireReader();
      auto st = conn.db->Prepare(
          "SELECT seq, tenant, type, id, version, envelope FROM resource_versions "
          "WHERE seq > ?1 ORDER BY seq LIMIT ?2");
      if (!st.ok()) return st.status();
      st->Bind(1, after_seq).Bind(2, static_cast<int64_t>(limit));
      for (;;) {
        auto row = st->Step();
        if (!row.ok()) return row.status();
        if (!*row) break;
        ++progress.scanned;
        progress.last_seq = st->Int(0);
        if (st->IsNull(5)) continue;
        std::string envelope = st->Blob(5);
        bool old = !crypto::KeyRing::IsRecordEnvelope(envelope);
        if (!old) {
          auto current = options_.keyring->IsCurrent(envelope);
          if (!current.ok()) return current.status();
          old = !*current;
        }
        if (!old) continue;
        stale.push_back({st->Int(0),
                         {st->Text(1), st->Text(2), st->Text(3)},
                         st->Int(4),
                         std::move(envelope),
                         {}});
      }
      for (Row& r : stale) {
        auto patients = CompartmentsOf(*conn.db, r.key, r.version);
        std::string ad = ResourceAd(r.key, r.version, patients);
        auto plain = OpenRecord(r.key.tenant, r.old_envelope, ad);
        if (!plain.ok()) {
          if (CodeOf(plain.status()) == ErrorCode::kErased) continue;  // shredded: nothing to move
          return OpenFailure(r.key, r.version, plain.status());
        }
        auto sealed = options_.keyring->Seal(r.key.tenant, patients, *plain, ad);
        if (!sealed.ok()) return sealed.status();
        r.new_envelope = std::move(*sealed);
      }
    }
    progress.done = progress.scanned < limit;
    std::erase_if(stale, [](const Row& r) { return r.new_envelope.empty(); });
    if (stale.empty()) return progress;
    absl::Status s = SubmitWrite([&](Db& db) -> absl::Status {
      progress.resealed = 0;
      for (const Row& r : stale) {
        // Only if the row still holds what was read (never overwrite a concurrent change).
        auto up = db.Prepare(
            "UPDATE resource_versions SET envelope = ?1 WHERE seq = ?2 AND envelope = ?3");
        if (!up.ok()) return up.status();
        up->BindBlob(1, r.new_envelope).Bind(2, r.seq).BindBlob(3, r.old_envelope);
        if (auto u = up->Run(); !u.ok()) return u;
        progress.resealed += static_cast<uint64_t>(sqlite3_changes(db.raw()));
      }
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    for (const Row& r : stale) cache_.Drop(r.key);
    return progress;
  }

  absl::StatusOr<uint64_t> PurgeBefore(const std::string& tenant, const std::string& type,
                                       const std::string& cutoff, size_t limit,
                                       bool dry_run) override {
    std::vector<ResourceKey> purged;
    absl::Status s = SubmitWrite([&](Db& db) -> absl::Status {
      purged.clear();
      std::vector<std::string> ids;
      {
        auto st = db.Prepare(
            "SELECT c.id FROM resource_current c JOIN resource_versions v ON v.seq = c.seq "
            "WHERE c.tenant = ?1 AND c.type = ?2 AND v.last_updated < ?3 LIMIT ?4");
        if (!st.ok()) return st.status();
        st->Bind(1, tenant).Bind(2, type).Bind(3, cutoff).Bind(4, static_cast<int64_t>(limit));
        for (;;) {
          auto row = st->Step();
          if (!row.ok()) return row.status();
          if (!*row) break;
          ids.push_back(st->Text(0));
        }
      }
      if (dry_run) {
        for (const auto& id : ids) purged.push_back({tenant, type, id});
        return absl::OkStatus();
      }
      for (const auto& id : ids) {
        if (auto r = RemoveResource(db, tenant, type, id); !r.ok()) return r;
        purged.push_back({tenant, type, id});
      }
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    if (!dry_run) {
      for (const auto& key : purged) cache_.Drop(key);
    }
    return static_cast<uint64_t>(purged.size());
  }

  absl::StatusOr<uint64_t> CountVersionsAfter(int64_t after_seq) override {
    auto conn = AcquireReader();
    auto st = conn.db->Prepare("SELECT COUNT(*) FROM resource_versions WHERE seq > ?1");
    if (!st.ok()) return st.status();
    st->Bind(1, after_seq);
    auto row = st->Step();
    if (!row.ok()) return row.status();
    return static_cast<uint64_t>(st->Int(0));
  }

  absl::StatusOr<std::string> GetMeta(const std::string& name) override {
    auto conn = AcquireReader();
    auto st = conn.db->Prepare("SELECT value FROM store_meta WHERE name = ?1");
    if (!st.ok()) return st.status();
    st->Bind(1, name);
    auto row = st->Step();
    if (!row.ok()) return row.status();
    return *row ? st->Text(0) : std::string();
  }

  absl::Status PutMeta(const std::string& name, const std::string& value) override {
    return SubmitWrite([&](Db& db) -> absl::Status {
      auto st = db.Prepare(
          "INSERT INTO store_meta(name, value) VALUES (?1, ?2) "
          "ON CONFLICT(name) DO UPDATE SET value = excluded.value");
      if (!st.ok()) return st.status();
      st->Bind(1, name).Bind(2, value);
      return st->Run();
    });
  }

  absl::StatusOr<SearchPage> Search(const SearchQuery& q) override {
    internal::SearchIds ids;
    {
      auto conn = AcquireReader();
      auto found = internal::RunSearch(*conn.db, BlindFor(q.tenant), q);
      if (!found.ok()) return found.status();
      ids = std::move(*found);
    }
    SearchPage page;
    if (ids.total >= 0) page.total = ids.total;
    if (static_cast<int64_t>(ids.ids.size()) > q.count) {
      page.more = true;
      ids.ids.resize(q.count);
    }
    for (const std::string& id : ids.ids) {
      auto v = Read({q.tenant, q.type, id});
      if (!v.ok()) {
        // Deleted or erased meanwhile.
        if (CodeOf(v.status()) == ErrorCode::kNotFound ||
            CodeOf(v.status()) == ErrorCode::kErased) {
          continue;
        }
        return v.status();
      }
      if (v->deleted) continue;
      page.matches.push_back(std::move(*v));
    }
    return page;
  }

  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReferencesFrom(
      const std::string& tenant, const std::string& type, const std::vector<std::string>& ids,
      const std::string& param, const std::string& target_type, int64_t time_budget_ms) override {
    auto conn = AcquireReader();
    internal::ScopedBudget budget(*conn.db, time_budget_ms);
    return internal::ReferencesFrom(*conn.db, tenant, type, ids, param, target_type);
  }

  absl::StatusOr<std::vector<std::string>> ReferencedBy(
      const std::string& tenant, const std::string& source_type, const std::string& param,
      const std::vector<std::pair<std::string, std::string>>& targets,
      const std::optional<std::vector<std::string>>& patient, int limit,
      int64_t time_budget_ms) override {
    auto conn = AcquireReader();
    internal::ScopedBudget budget(*conn.db, time_budget_ms);
    return internal::ReferencedBy(*conn.db, tenant, source_type, param, targets, patient, limit);
  }

  absl::StatusOr<std::vector<WriteOpResult>> Transaction(std::vector<WriteOp> ops) override {
    std::string now = FormatInstant(SystemClock::Get().Now());
    // Index rows, compartments and (for plain creates, whose version is 1)
    // the sealed envelope are prepared outside the writer; the writer only
    // re-seals when a version or the timestamp turns out different.
    struct Pre {
      std::vector<std::string> patients;
      internal::IndexRows rows;
      std::optional<Prepared> sealed;
    };
    std::vector<Pre> pre(ops.size());
    for (size_t i = 0; i < ops.size(); ++i) {
      WriteOp& op = ops[i];
      if (op.kind == WriteOp::Kind::kDelete) continue;
      json::Value copy = op.resource;
      pre[i].patients = CompartmentsAsStored(op.key, copy);
      if (op.kind == WriteOp::Kind::kCreate && !op.condition) {
        auto p = Prepare(op.key, std::move(copy), 1, now, pre[i].patients);
        if (!p.ok()) return p.status();
        pre[i].rows = p->rows;
        pre[i].sealed = std::move(*p);
        continue;
      }
      StampMeta(copy, op.key.type, op.key.id, 1, now);
      pre[i].rows =
          internal::BuildIndexRows(BlindFor(op.key.tenant), op.key.type, copy, options_.base_url);
    }
    std::vector<WriteOpResult> results(ops.size());
    std::vector<Prepared> sealed(ops.size());
    absl::Status s = SubmitWrite([&](Db& db) -> absl::Status {
      const bool restamped = KeepStampMonotonic(now);
      for (size_t i = 0; i < ops.size(); ++i) {
        std::optional<Prepared>* presealed = restamped ? nullptr : &pre[i].sealed;
        auto st = ApplyOp(db, ops[i], pre[i].patients, pre[i].rows, now, &results[i], &sealed[i],
                          presealed);
        if (!st.ok()) {
          return Error(CodeOf(st), "entry " + std::to_string(i) + ": " + DetailOf(st));
        }
      }
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    for (size_t i = 0; i < ops.size(); ++i) {
      const WriteOpResult& r = results[i];
      if (r.matched_existing || r.stored.version == 0) continue;
      ResourceKey key{ops[i].key.tenant, r.stored.type, r.stored.id};
      cache_.Offer(key,
                   {r.stored.version, r.stored.deleted, r.stored.last_updated, sealed[i].envelope,
                    r.stored.patients},
                   cache_.Generation(key), true);
    }
    return results;
  }

 private:
  // One op of a transaction, on the writer connection.
  absl::Status ApplyOp(Db& db, WriteOp& op, std::vector<std::string>& patients,
                       internal::IndexRows& rows, const std::string& now, WriteOpResult* out,
                       Prepared* sealed, std::optional<Prepared>* presealed) {
    ResourceKey key = op.key;
    std::optional<std::string> match;
    if (op.condition) {
      SearchQuery q = *op.condition;
      q.offset = 0;
      q.count = 1;
      q.total = false;
      auto found = internal::RunSearch(db, BlindFor(q.tenant), q);
      if (!found.ok()) return found.status();
      if (found->ids.size() > 1) {
        return Error(ErrorCode::kPreconditionFailed,
                     "the condition matches more than one resource");
      }
      if (!found->ids.empty()) match = found->ids[0];
      if (op.expect_match && match.value_or("") != *op.expect_match) {
        return Error(ErrorCode::kVersionConflict,
                     "the condition's result changed while the transaction ran; retry");
      }
    }
    if (op.kind == WriteOp::Kind::kCreate && match) {
      key.id = *match;
      auto st = db.Prepare(
          "SELECT v.version, v.deleted, v.last_updated, v.envelope, "
          "(SELECT group_concat(m.patient, char(31)) FROM compartment_members m "
          "WHERE m.tenant = v.tenant AND m.type = v.type AND m.id = v.id AND m.version = "
          "v.version) FROM resource_current c JOIN resource_versions v ON v.seq = c.seq "
          "WHERE c.tenant = ?1 AND c.type = ?2 AND c.id = ?3");
      if (!st.ok()) return st.status();
      st->Bind(1, key.tenant).Bind(2, key.type).Bind(3, key.id);
      auto v = LoadOne(db, *st, key);
      if (!v.ok()) return v.status();
      if (op.check) {
        if (auto c = op.check(v->patients); !c.ok()) return c;
      }
      out->stored = std::move(*v);
      out->matched_existing = true;
      return absl::OkStatus();
    }
    if (match) {
      if (op.kind == WriteOp::Kind::kUpdate && op.resource.is_object()) {
        auto id = op.resource.GetString("id");
        if (id && *id != *match) {
          return Error(ErrorCode::kIdMismatch, "the body's id is not the matching resource's");
        }
        op.resource.Set("id", json::Value::String(*match));
      }
      key.id = *match;
    } else if (op.condition && op.kind == WriteOp::Kind::kDelete) {
      out->stored.type = key.type;
      out->stored.id.clear();
      return absl::OkStatus();  // nothing matched: nothing to delete
    }
    auto cur = CurrentVersion(db, key);
    if (!cur.ok()) return cur.status();
    const auto not_found = [&] { return Error(ErrorCode::kNotFound, key.type + "/" + key.id); };
    if (op.condition && !match && op.kind == WriteOp::Kind::kUpdate && op.id_from_body) {
      // Nothing matched: this is a create under the body's id, never an
      // overwrite of an unrelated resource that happens to have that id.
      if (op.confined) {
        return Error(ErrorCode::kInvalidRequest,
                     "a conditional update that creates gets a server-assigned id: send the body "
                     "without an id");
      }
      if (*cur != 0) {
        return Error(ErrorCode::kVersionConflict,
                     "a resource with this id exists and does not match the condition");
      }
    }
    if (op.if_match && *cur != *op.if_match) {
      return Error(ErrorCode::kPreconditionFailed,
                   *cur == 0 ? "resource does not exist"
                             : "current version is W/\"" + std::to_string(*cur) + "\"");
    }
    bool cur_deleted = false;
    std::vector<std::string> existing;
    if (*cur != 0) {
      auto st = db.Prepare(
          "SELECT v.deleted FROM resource_current c JOIN resource_versions v ON v.seq = c.seq "
          "WHERE c.tenant = ?1 AND c.type = ?2 AND c.id = ?3");
      if (!st.ok()) return st.status();
      st->Bind(1, key.tenant).Bind(2, key.type).Bind(3, key.id);
      auto row = st->Step();
      if (!row.ok()) return row.status();
      cur_deleted = *row && st->Int(0) != 0;
      existing = CompartmentsOf(db, key, *cur);
      if (op.check) {
        if (auto c = op.check(existing); !c.ok()) return op.confined ? not_found() : c;
      }
    }
    if (op.confined && !op.condition && op.kind != WriteOp::Kind::kCreate &&
        (*cur == 0 || cur_deleted)) {
      return not_found();
    }
    out->stored.type = key.type;
    out->stored.id = key.id;
    if (op.kind == WriteOp::Kind::kDelete) {
      out->stored.deleted = true;
      out->stored.patients = existing;
      if (*cur == 0 || cur_deleted) {
        out->stored.version = *cur;
        return absl::OkStatus();
      }
      Prepared p;
      p.version = *cur + 1;
      out->stored.version = p.version;
      out->stored.last_updated = now;
      return InsertVersion(db, key, p, true, now, existing);
    }
    if (op.kind == WriteOp::Kind::kCreate && *cur != 0) {
      return Error(ErrorCode::kVersionConflict, "id already exists");
    }
    if (op.kind == WriteOp::Kind::kUpdate && (*cur == 0 || cur_deleted) && !op.allow_create) {
      // Re-creating a deleted resource is a create too.
      return Error(ErrorCode::kForbidden,
                   "creating here is not allowed (it needs the create permission, and "
                   "update-as-create for a chosen id)");
    }
    if (key.id != op.key.id) patients = CompartmentsAsStored(key, op.resource);
    if (op.check) {
      if (auto c = op.check(patients); !c.ok()) return c;
    }
    absl::StatusOr<Prepared> prepared;
    if (presealed != nullptr && presealed->has_value() && (*presealed)->version == *cur + 1 &&
        key.id == op.key.id) {
      prepared = std::move(**presealed);
    } else {
      prepared = Prepare(key, op.resource, *cur + 1, now, patients, &rows);
    }
    if (!prepared.ok()) return prepared.status();
    if (auto s = InsertVersion(db, key, *prepared, false, now, patients); !s.ok()) return s;
    out->created = *cur == 0 || cur_deleted;
    out->stored.version = prepared->version;
    out->stored.last_updated = now;
    out->stored.patients = patients;
    out->stored.json = prepared->json;
    *sealed = std::move(*prepared);
    return absl::OkStatus();
  }

  // user_version kIndexVersion: the search index covers every current version
  // as this build extracts it. A data directory from before (no index, or an
  // older extraction) is re-indexed once, at open.
  absl::Status IndexExisting(Db& db) {
    auto v = db.Prepare("PRAGMA user_version");
    if (!v.ok()) return v.status();
    auto row = v->Step();
    if (!row.ok()) return row.status();
    const int64_t version = *row ? v->Int(0) : 0;
    v = absl::StatusOr<Stmt>(Stmt());
    if (version >= kIndexVersion) return absl::OkStatus();
    if (auto s = db.Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
    auto fail = [&](absl::Status s) {
      (void)db.Exec("ROLLBACK");
      return s;
    };
    std::vector<std::tuple<std::string, std::string, std::string, int64_t, std::string>> rows;
    {
      auto st = db.Prepare(
          "SELECT c.tenant, c.type, c.id, c.version, v.envelope FROM resource_current c "
          "JOIN resource_versions v ON v.seq = c.seq WHERE v.deleted = 0");
      if (!st.ok()) return fail(st.status());
      for (;;) {
        auto r = st->Step();
        if (!r.ok()) return fail(r.status());
        if (!*r) break;
        rows.emplace_back(st->Text(0), st->Text(1), st->Text(2), st->Int(3), st->Blob(4));
      }
    }
    for (auto& [tenant, type, id, ver, envelope] : rows) {
      ResourceKey key{tenant, type, id};
      auto plain = OpenRecord(tenant, envelope, ResourceAd(key, ver, CompartmentsOf(db, key, ver)));
      if (!plain.ok()) continue;  // unreadable versions stay unindexed (reads report them)
      auto resource = json::Parse(*plain);
      if (!resource.ok()) continue;
      auto rows_of = internal::BuildIndexRows(BlindFor(tenant), type, *resource, options_.base_url);
      if (auto s = internal::WriteIndex(db, tenant, type, id, rows_of); !s.ok()) return fail(s);
    }
    if (auto s = db.Exec(("PRAGMA user_version=" + std::to_string(kIndexVersion)).c_str());
        !s.ok()) {
      return fail(s);
    }
    return db.Exec("COMMIT");
  }
  // 2: string normalization folds combining marks, Greek and Cyrillic case.
  // 3: identifying parameters shared by several types recognised for each.
  // 4: composite parameters (token pairs).
  // 5: references only as Type/id or Type/id/_history/v (others as URLs).
  static constexpr int64_t kIndexVersion = 5;

  const internal::BlindIndex& BlindFor(const std::string& tenant) {
    std::lock_guard lock(blind_mu_);
    auto it = blind_.find(tenant);
    if (it == blind_.end()) {
      it = blind_
               .emplace(tenant, std::make_unique<internal::BlindIndex>(*options_.index_key, tenant))
               .first;
    }
    return *it->second;
  }

  std::mutex blind_mu_;
  std::unordered_map<std::string, std::unique_ptr<internal::BlindIndex>> blind_;

  explicit SqliteStore(const SqliteStoreOptions& o)
      : options_(o), cipher_(o.kek), cache_(o.cache_bytes) {}

  struct ReaderLease {
    SqliteStore* store;
    Db* db;
    ~ReaderLease() {
      {
        std::lock_guard lk(store->readers_mu_);
        store->free_readers_.push_back(db);
      }
      store->readers_cv_.notify_one();
    }
  };

  ReaderLease AcquireReader() {
    std::unique_lock lk(readers_mu_);
    if (free_readers_.empty() && !readers_initialized_) {
      for (auto& r : readers_) free_readers_.push_back(r.get());
      readers_initialized_ = true;
    }
    readers_cv_.wait(lk, [&] { return !free_readers_.empty(); });
    Db* db = free_readers_.back();
    free_readers_.pop_back();
    return ReaderLease{this, db};
  }

  absl::StatusOr<Prepared> Prepare(const ResourceKey& key, json::Value resource, int64_t version,
                                   const std::string& now, const std::vector<std::string>& patients,
                                   const internal::IndexRows* rows = nullptr) {
    StampMeta(resource, key.type, key.id, version, now);
    Prepared p;
    p.version = version;
    if (rows != nullptr) {
      p.rows = *rows;
    } else {
      p.rows =
          internal::BuildIndexRows(BlindFor(key.tenant), key.type, resource, options_.base_url);
    }
    p.json = json::Write(resource);
    auto sealed =
        options_.keyring->Seal(key.tenant, patients, p.json, ResourceAd(key, version, patients));
    if (!sealed.ok()) return sealed.status();
    p.envelope = std::move(*sealed);
    return p;
  }

  // A resource version as stored (the envelope opened) from a cache entry.
  absl::StatusOr<StoredVersion> FromEntry(const ResourceKey& key, const VersionCache::Entry& e) {
    StoredVersion v;
    v.type = key.type;
    v.id = key.id;
    v.version = e.version;
    v.deleted = e.deleted;
    v.last_updated = e.last_updated;
    v.patients = e.patients;
    if (v.deleted) return v;
    auto plain = OpenRecord(key.tenant, e.envelope, ResourceAd(key, v.version, v.patients));
    if (!plain.ok()) return OpenFailure(key, v.version, plain.status());
    v.json = std::move(*plain);
    return v;
  }

  // `cache_generation`: offer what was read to the cache (Read only).
  absl::StatusOr<StoredVersion> LoadOne(Db& db, Stmt& st, const ResourceKey& key,
                                        std::optional<uint64_t> cache_generation = {}) {
    auto row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row) return Error(ErrorCode::kNotFound, key.type + "/" + key.id);
    StoredVersion v;
    v.type = key.type;
    v.id = key.id;
    v.version = st.Int(0);
    v.deleted = st.Int(1) != 0;
    v.last_updated = st.Text(2);
    // Compartments come from the same statement (one read transaction).
    if (!st.IsNull(4)) {
      const std::string joined = st.Text(4);
      size_t start = 0;
      while (start <= joined.size()) {
        size_t end = joined.find('\x1f', start);
        if (end == std::string::npos) end = joined.size();
        v.patients.push_back(joined.substr(start, end - start));
        start = end + 1;
      }
    }
    if (v.deleted) {
      if (cache_generation) {
        cache_.Offer(key, {v.version, true, v.last_updated, {}, v.patients}, *cache_generation,
                     false);
      }
      return v;
    }
    std::string envelope = st.Blob(3);
    auto plain = OpenRecord(key.tenant, envelope, ResourceAd(key, v.version, v.patients));
    // Never cached: a tampered row keeps failing from the database.
    if (!plain.ok()) return OpenFailure(key, v.version, plain.status());
    v.json = std::move(*plain);
    if (cache_generation) {
      cache_.Offer(key, {v.version, false, v.last_updated, std::move(envelope), v.patients},
                   *cache_generation, false);
    }
    return v;
  }

  // Format 2 (key ring) or format 1 (one data key wrapped by the KEK, from
  // before the key ring; `fhirward keys rewrap` re-seals those).
  absl::StatusOr<std::string> OpenRecord(const std::string& tenant, std::string_view envelope,
                                         const std::string& ad) const {
    if (crypto::KeyRing::IsRecordEnvelope(envelope)) {
      return options_.keyring->Open(tenant, envelope, ad);
    }
    return cipher_.Open(envelope, ad);
  }

  static absl::Status OpenFailure(const ResourceKey& key, int64_t version,
                                  const absl::Status& why) {
    if (CodeOf(why) == ErrorCode::kErased) {
      return Error(ErrorCode::kErased, key.type + "/" + key.id);
    }
    if (CodeOf(why) == ErrorCode::kUnavailable) return why;  // the key service, not the record
    return Error(ErrorCode::kDecryptionFailed,
                 key.type + "/" + key.id + " version " + std::to_string(version));
  }

  // `not_found` unless the resource was erased (crypto-shredded), then kErased.
  static absl::StatusOr<StoredVersion> ErasedOr(Db& db, const ResourceKey& key,
                                                absl::StatusOr<StoredVersion>& not_found) {
    auto st = db.Prepare(
        "SELECT erased_at FROM erased_resources WHERE tenant = ?1 AND type = ?2 AND id = ?3");
    if (!st.ok()) return not_found;
    st->Bind(1, key.tenant).Bind(2, key.type).Bind(3, key.id);
    auto row = st->Step();
    if (!row.ok() || !*row) return not_found;
    return Error(ErrorCode::kErased, key.type + "/" + key.id + " (erased " + st->Text(0) + ")");
  }

  // Every row of one resource: all versions, the current pointer, compartment
  // and index rows (erasure and retention).
  static absl::Status RemoveResource(Db& db, const std::string& tenant, const std::string& type,
                                     const std::string& id) {
    for (const char* sql :
         {"DELETE FROM resource_versions WHERE tenant = ?1 AND type = ?2 AND id = ?3",
          "DELETE FROM resource_current WHERE tenant = ?1 AND type = ?2 AND id = ?3",
          "DELETE FROM compartment_members WHERE tenant = ?1 AND type = ?2 AND id = ?3"}) {
      auto del = db.Prepare(sql);
      if (!del.ok()) return del.status();
      del->Bind(1, tenant).Bind(2, type).Bind(3, id);
      if (auto r = del->Run(); !r.ok()) return r;
    }
    return internal::DeleteIndex(db, tenant, type, id);
  }

  static std::vector<std::string> CompartmentsOf(Db& db, const ResourceKey& key, int64_t version) {
    std::vector<std::string> out;
    if (version == 0) return out;
    auto st = db.Prepare(
        "SELECT patient FROM compartment_members WHERE tenant = ?1 AND type = ?2 AND id = ?3 "
        "AND version = ?4");
    if (!st.ok()) return out;
    st->Bind(1, key.tenant).Bind(2, key.type).Bind(3, key.id).Bind(4, version);
    while (true) {
      auto row = st->Step();
      if (!row.ok() || !*row) break;
      out.push_back(st->Text(0));
    }
    return out;
  }

  static absl::StatusOr<int64_t> CurrentVersion(Db& db, const ResourceKey& key) {
    auto st = db.Prepare(
        "SELECT version FROM resource_current WHERE tenant = ?1 AND type = ?2 AND id = ?3");
    if (!st.ok()) return st.status();
    st->Bind(1, key.tenant).Bind(2, key.type).Bind(3, key.id);
    auto row = st->Step();
    if (!row.ok()) return row.status();
    return *row ? st->Int(0) : 0;
  }

  static absl::Status InsertVersion(Db& db, const ResourceKey& key, const Prepared& p, bool deleted,
                                    const std::string& now,
                                    const std::vector<std::string>& patients) {
    auto ins = db.Prepare(
        "INSERT INTO resource_versions(tenant, type, id, version, deleted, last_updated, "
        "envelope) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (!ins.ok()) return ins.status();
    ins->Bind(1, key.tenant).Bind(2, key.type).Bind(3, key.id).Bind(4, p.version);
    ins->Bind(5, static_cast<int64_t>(deleted ? 1 : 0)).Bind(6, now);
    if (deleted) {
      ins->BindNull(7);
    } else {
      ins->BindBlob(7, p.envelope);
    }
    if (auto s = ins->Run(); !s.ok()) return s;
    int64_t seq = sqlite3_last_insert_rowid(db.raw());
    auto cur = db.Prepare(
        "INSERT INTO resource_current(tenant, type, id, version, seq) VALUES (?1, ?2, ?3, ?4, ?5) "
        "ON CONFLICT(tenant, type, id) DO UPDATE SET version = excluded.version, "
        "seq = excluded.seq");
    if (!cur.ok()) return cur.status();
    cur->Bind(1, key.tenant).Bind(2, key.type).Bind(3, key.id).Bind(4, p.version).Bind(5, seq);
    if (auto s = cur->Run(); !s.ok()) return s;
    for (const auto& patient : patients) {
      auto m = db.Prepare(
          "INSERT OR IGNORE INTO compartment_members(tenant, patient, type, id, version) "
          "VALUES (?1, ?2, ?3, ?4, ?5)");
      if (!m.ok()) return m.status();
      m->Bind(1, key.tenant).Bind(2, patient).Bind(3, key.type).Bind(4, key.id).Bind(5, p.version);
      if (auto s = m->Run(); !s.ok()) return s;
    }
    if (p.version == 1) {
      // A resource created again under the id of an erased one.
      auto un =
          db.Prepare("DELETE FROM erased_resources WHERE tenant = ?1 AND type = ?2 AND id = ?3");
      if (!un.ok()) return un.status();
      un->Bind(1, key.tenant).Bind(2, key.type).Bind(3, key.id);
      if (auto s = un->Run(); !s.ok()) return s;
    }
    // The index describes the current version only.
    if (deleted) return internal::DeleteIndex(db, key.tenant, key.type, key.id);
    // Version 1: the resource never existed, so it has no rows to replace.
    return internal::WriteIndex(db, key.tenant, key.type, key.id, p.rows, p.version == 1);
  }

  absl::StatusOr<std::optional<IdempotencyRecord>> LoadIdempotency(Db& db,
                                                                   const std::string& tenant,
                                                                   const std::string& client,
                                                                   const std::string& key) {
    auto st = db.Prepare(
        "SELECT request_hash, status, headers, envelope, created_at FROM idempotency_keys "
        "WHERE tenant = ?1 AND client = ?2 AND key = ?3");
    if (!st.ok()) return st.status();
    st->Bind(1, tenant).Bind(2, client).Bind(3, key);
    auto row = st->Step();
    if (!row.ok()) return row.status();
    if (!*row) return std::optional<IdempotencyRecord>();
    IdempotencyRecord r;
    r.request_hash = st->Blob(0);
    r.status = static_cast<int>(st->Int(1));
    r.response_headers = st->Text(2);
    r.created_at = st->Text(4);
    if (!st->IsNull(3)) {
      auto plain = cipher_.Open(st->Blob(3), IdempotencyAd(tenant, client, key));
      if (!plain.ok()) return plain.status();
      r.response_body = std::move(*plain);
    }
    return std::optional<IdempotencyRecord>(std::move(r));
  }

  // Keeps last_updated non-decreasing in commit (seq) order: `now` is taken
  // before the write is queued, so a writer that was overtaken by a later
  // stamp takes that stamp instead. Writer thread only; true when `now` changed.
  bool KeepStampMonotonic(std::string& now) {
    if (now < last_stamp_) {
      now = last_stamp_;
      return true;
    }
    last_stamp_ = now;
    return false;
  }

  // Runs `fn` inside the next group-commit transaction; returns once that
  // transaction is durable (or `fn`'s own error, in which case its changes are
  // rolled back to a savepoint without affecting the rest of the batch).
  absl::Status SubmitWrite(std::function<absl::Status(Db&)> fn) {
    Job job{std::move(fn), {}};
    auto done = job.promise.get_future();
    {
      std::lock_guard lk(mu_);
      if (closing_) return Error(ErrorCode::kUnavailable, "store is closing");
      queue_.push_back(&job);
    }
    cv_.notify_one();
    return done.get();
  }

  struct Job {
    std::function<absl::Status(Db&)> fn;
    std::promise<absl::Status> promise;
  };

  void WriterLoop() {
    Db& db = *writer_db_;
    for (;;) {
      std::vector<Job*> batch;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return closing_ || !queue_.empty(); });
        if (queue_.empty() && closing_) return;
        while (!queue_.empty() && batch.size() < options_.max_batch) {
          batch.push_back(queue_.front());
          queue_.pop_front();
        }
      }
      std::vector<absl::Status> results(batch.size());
      absl::Status tx = db.Exec("BEGIN IMMEDIATE");
      if (tx.ok()) {
        for (size_t i = 0; i < batch.size(); ++i) {
          if (auto s = db.Exec("SAVEPOINT job"); !s.ok()) {
            results[i] = s;
            continue;
          }
          results[i] = batch[i]->fn(db);
          if (!results[i].ok()) (void)db.Exec("ROLLBACK TO job");
          (void)db.Exec("RELEASE job");
        }
        tx = db.Exec("COMMIT");
        if (!tx.ok()) (void)db.Exec("ROLLBACK");
      }
      for (size_t i = 0; i < batch.size(); ++i) {
        if (!tx.ok()) {
          batch[i]->promise.set_value(Error(ErrorCode::kUnavailable, "commit failed"));
        } else {
          batch[i]->promise.set_value(results[i]);
        }
      }
    }
  }

  SqliteStoreOptions options_;
  crypto::EnvelopeCipher cipher_;
  VersionCache cache_;  // after cipher_: initialised from options_
  std::unique_ptr<Db> writer_db_;
  std::vector<std::unique_ptr<Db>> readers_;
  std::mutex readers_mu_;
  std::condition_variable readers_cv_;
  std::vector<Db*> free_readers_;
  bool readers_initialized_ = false;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job*> queue_;
  bool closing_ = false;
  std::string last_stamp_;  // newest last_updated written; writer thread only
  std::thread writer_thread_;

  static constexpr int kCheckpointPages = 4096;
  std::unique_ptr<Db> checkpoint_db_;
  std::mutex checkpoint_mu_;
  std::condition_variable checkpoint_cv_;
  bool checkpoint_wanted_ = false;
  bool checkpoint_closing_ = false;
  std::thread checkpoint_thread_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ResourceStore>> OpenSqliteStore(const SqliteStoreOptions& options) {
  return SqliteStore::Open(options);
}

}  // namespace fhirward::store
