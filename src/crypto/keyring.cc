#include "crypto/keyring.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"

namespace fhirward::crypto {
namespace {

constexpr std::string_view kMagic = "FWE";
constexpr uint8_t kFormat = 2;
constexpr size_t kSaltBytes = 32;
constexpr size_t kMaxKeysPerRecord = 16;
constexpr std::string_view kRecordInfo = "fhirward-record-v2";
constexpr std::string_view kTenantScope = "tenant";

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS tenant_keys(
  tenant TEXT NOT NULL, version INTEGER NOT NULL, kek_version INTEGER NOT NULL,
  wrapped BLOB, created TEXT NOT NULL, destroyed TEXT,
  PRIMARY KEY(tenant, version));
CREATE TABLE IF NOT EXISTS data_keys(
  id TEXT NOT NULL PRIMARY KEY, tenant TEXT NOT NULL, scope TEXT NOT NULL,
  version INTEGER NOT NULL, created_under INTEGER NOT NULL, tenant_key_version INTEGER NOT NULL,
  wrapped BLOB, created TEXT NOT NULL, destroyed TEXT,
  UNIQUE(tenant, scope, version));
)sql";

std::string TenantKeyAd(std::string_view tenant, uint32_t version) {
  return LengthPrefixed({"fhirward-tenant-key-v1", tenant, std::to_string(version)});
}

std::string DataKeyAd(std::string_view tenant, std::string_view scope, int64_t version,
                      std::string_view id) {
  return LengthPrefixed({"fhirward-data-key-v1", tenant, scope, std::to_string(version), id});
}

std::string Now() { return FormatInstant(SystemClock::Get().Now()); }

SecretBytes DeriveRecordKey(const SecretBytes& ikm, std::string_view salt) {
  return HkdfSha256(ikm, salt, kRecordInfo);
}

// A minimal RAII statement over the raw SQLite API (crypto does not depend on store).
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK) s_ = nullptr;
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return s_ != nullptr; }
  Stmt& Bind(int i, std::string_view v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, std::string_view v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  // SQLITE_ROW → true, SQLITE_DONE → false, else error.
  absl::StatusOr<bool> Step() {
    if (s_ == nullptr)
      return Error(ErrorCode::kInternal, std::string("key vault: ") + sqlite3_errmsg(db_));
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return Error(ErrorCode::kInternal, std::string("key vault: ") + sqlite3_errmsg(db_));
  }
  absl::Status Run() {
    auto r = Step();
    return r.ok() ? absl::OkStatus() : r.status();
  }
  int64_t Int(int c) const { return sqlite3_column_int64(s_, c); }
  bool IsNull(int c) const { return sqlite3_column_type(s_, c) == SQLITE_NULL; }
  std::string Text(int c) const {
    auto p = reinterpret_cast<const char*>(sqlite3_column_text(s_, c));
    return p ? std::string(p, sqlite3_column_bytes(s_, c)) : std::string();
  }
  std::string Blob(int c) const {
    auto p = static_cast<const char*>(sqlite3_column_blob(s_, c));
    return p ? std::string(p, sqlite3_column_bytes(s_, c)) : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
};

struct ParsedEnvelope {
  std::vector<std::string> ids;
  std::string_view salt;
  std::string_view body;  // nonce | ciphertext | tag
};

std::optional<ParsedEnvelope> Parse(std::string_view in) {
  if (in.size() < kMagic.size() + 2 || in.substr(0, kMagic.size()) != kMagic ||
      static_cast<uint8_t>(in[kMagic.size()]) != kFormat) {
    return std::nullopt;
  }
  in.remove_prefix(kMagic.size() + 1);
  size_t n = static_cast<uint8_t>(in[0]);
  in.remove_prefix(1);
  if (n == 0 || n > kMaxKeysPerRecord) return std::nullopt;
  ParsedEnvelope p;
  for (size_t i = 0; i < n; ++i) {
    if (in.empty()) return std::nullopt;
    size_t len = static_cast<uint8_t>(in[0]);
    in.remove_prefix(1);
    if (len == 0 || in.size() < len) return std::nullopt;
    p.ids.emplace_back(in.substr(0, len));
    in.remove_prefix(len);
  }
  if (in.size() < kSaltBytes + kGcmNonceBytes + kGcmTagBytes) return std::nullopt;
  p.salt = in.substr(0, kSaltBytes);
  p.body = in.substr(kSaltBytes);
  return p;
}

}  // namespace

struct KeyRing::Impl {
  KeyRingOptions o;
  std::mutex mu;
  sqlite3* db = nullptr;
  int64_t data_version = -1;

  struct DataKey {
    SecretBytes key;
    std::string tenant;
    std::string scope;
    std::chrono::steady_clock::time_point expires;
  };
  struct TenantKey {
    std::unique_ptr<Aead> aead;
    std::chrono::steady_clock::time_point expires;
  };
  std::unordered_map<std::string, DataKey> data_keys;                  // by id
  std::map<std::pair<std::string, uint32_t>, TenantKey> tenant_keys;   // (tenant, version)
  std::map<std::pair<std::string, std::string>, std::string> current;  // (tenant, scope) → id
  uint64_t data_key_unwraps = 0;
  // Key events of a locked section, emitted once the lock is released (the
  // sink appends to the audit trail, which waits for a disk sync).
  std::vector<KeyEvent> pending;
  std::vector<KeyEvent> TakePending() {
    std::vector<KeyEvent> out;
    out.swap(pending);
    return out;
  }

  ~Impl() {
    sqlite3_finalize(data_version_stmt);
    if (db != nullptr) sqlite3_close(db);
  }

  std::mutex sink_mu;
  void Emit(const KeyEvent& e) {
    std::function<void(const KeyEvent&)> sink;
    {
      std::lock_guard lk(sink_mu);
      sink = o.on_event;
    }
    if (sink) sink(e);
  }

  absl::Status Exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string m = err ? err : "error";
      sqlite3_free(err);
      return Error(ErrorCode::kInternal, "key vault: " + m);
    }
    return absl::OkStatus();
  }

  // Also forgets cached keys: one made inside the failed transaction must not survive it.
  void Rollback() {
    (void)Exec("ROLLBACK");
    ClearLocked();
  }

  // Expired keys are wiped (SecretBytes), not just skipped.
  std::chrono::steady_clock::time_point last_sweep;
  void SweepLocked(std::chrono::steady_clock::time_point now) {
    last_sweep = now;
    std::erase_if(data_keys, [&](const auto& kv) { return kv.second.expires <= now; });
    std::erase_if(tenant_keys, [&](const auto& kv) { return kv.second.expires <= now; });
    std::erase_if(current, [&](const auto& kv) { return data_keys.count(kv.second) == 0; });
  }

  void ClearLocked() {
    data_keys.clear();
    tenant_keys.clear();
    current.clear();
  }

  // Another process changed the vault (an erasure, a rotation): forget every
  // cached key before using one.
  // PRAGMA data_version takes file locks (a few µs of system calls), so it is
  // asked at most every kSyncInterval; `force` asks now.
  static constexpr std::chrono::milliseconds kSyncInterval{20};
  std::chrono::steady_clock::time_point last_sync;
  void SyncLocked(bool force = false) {
    auto now = std::chrono::steady_clock::now();
    if (o.cache_seconds == 0) {
      ClearLocked();  // nothing outlives the call that unwrapped it
    } else if (now - last_sweep >= std::chrono::seconds(1)) {
      SweepLocked(now);
    }
    if (!force && now - last_sync < kSyncInterval) return;
    last_sync = now;
    if (data_version_stmt == nullptr &&
        sqlite3_prepare_v2(db, "PRAGMA data_version", -1, &data_version_stmt, nullptr) !=
            SQLITE_OK) {
      ClearLocked();
      return;
    }
    int rc = sqlite3_step(data_version_stmt);
    int64_t v = rc == SQLITE_ROW ? sqlite3_column_int64(data_version_stmt, 0) : -1;
    sqlite3_reset(data_version_stmt);
    if (v < 0 || v != data_version) {
      ClearLocked();
      data_version = v;
    }
  }
  sqlite3_stmt* data_version_stmt = nullptr;

  std::chrono::steady_clock::time_point Expiry() const {
    return std::chrono::steady_clock::now() + std::chrono::seconds(o.cache_seconds);
  }

  bool Fresh(std::chrono::steady_clock::time_point t) const {
    return o.cache_seconds > 0 && std::chrono::steady_clock::now() < t;
  }

  void Bound() {
    if (data_keys.size() >= o.cache_entries) data_keys.clear();
  }

  absl::StatusOr<uint32_t> CurrentTenantVersion(const std::string& tenant) {
    Stmt st(db,
            "SELECT version FROM tenant_keys WHERE tenant = ?1 AND destroyed IS NULL "
            "ORDER BY version DESC LIMIT 1");
    st.Bind(1, tenant);
    auto row = st.Step();
    if (!row.ok()) return row.status();
    return *row ? static_cast<uint32_t>(st.Int(0)) : 0;
  }

  // Within a write transaction.
  absl::StatusOr<uint32_t> CreateTenantKeyLocked(const std::string& tenant, uint32_t version) {
    SecretBytes key = RandomSecret(kAes256KeyBytes);
    auto wrapped = o.kek->Wrap(key, TenantKeyAd(tenant, version));
    if (!wrapped.ok()) return wrapped.status();
    Stmt ins(db,
             "INSERT INTO tenant_keys(tenant, version, kek_version, wrapped, created) "
             "VALUES (?1, ?2, ?3, ?4, ?5)");
    ins.Bind(1, tenant).Bind(2, static_cast<int64_t>(version));
    ins.Bind(3, static_cast<int64_t>(VersionedKek::VersionOf(*wrapped)));
    ins.BindBlob(4, *wrapped).Bind(5, Now());
    if (auto s = ins.Run(); !s.ok()) return s;
    return version;
  }

  absl::StatusOr<Aead*> TenantKeyLocked(const std::string& tenant, uint32_t version) {
    auto k = std::make_pair(tenant, version);
    auto it = tenant_keys.find(k);
    if (it != tenant_keys.end() && Fresh(it->second.expires)) return it->second.aead.get();
    Stmt st(db, "SELECT wrapped, destroyed FROM tenant_keys WHERE tenant = ?1 AND version = ?2");
    st.Bind(1, tenant).Bind(2, static_cast<int64_t>(version));
    auto row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row) {
      return Error(ErrorCode::kDecryptionFailed,
                   "no tenant key version " + std::to_string(version) + " for tenant " + tenant);
    }
    if (!st.IsNull(1) || st.IsNull(0)) {
      return Error(ErrorCode::kErased, "the tenant key was destroyed");
    }
    auto key = o.kek->Unwrap(st.Blob(0), TenantKeyAd(tenant, version));
    if (!key.ok()) {
      if (CodeOf(key.status()) == ErrorCode::kUnavailable) return key.status();  // the HSM
      return Error(ErrorCode::kDecryptionFailed, "tenant key does not open under the KEK");
    }
    auto aead = Aead::NewAes256Gcm(std::move(*key));
    if (!aead.ok()) return aead.status();
    Aead* raw = aead->get();
    tenant_keys[k] = TenantKey{std::move(*aead), Expiry()};
    return raw;
  }

  // The unwrapped data key `id`, which must belong to `tenant`.
  absl::StatusOr<const DataKey*> DataKeyLocked(const std::string& tenant, const std::string& id) {
    auto it = data_keys.find(id);
    if (it != data_keys.end() && Fresh(it->second.expires)) {
      if (it->second.tenant != tenant) {
        return Error(ErrorCode::kDecryptionFailed, "data key belongs to another tenant");
      }
      return &it->second;
    }
    Stmt st(db,
            "SELECT tenant, scope, version, tenant_key_version, wrapped, destroyed "
            "FROM data_keys WHERE id = ?1");
    st.Bind(1, id);
    auto row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row) return Error(ErrorCode::kDecryptionFailed, "unknown data key");
    std::string row_tenant = st.Text(0);
    if (row_tenant != tenant) {
      return Error(ErrorCode::kDecryptionFailed, "data key belongs to another tenant");
    }
    if (!st.IsNull(5) || st.IsNull(4)) {
      return Error(ErrorCode::kErased, "erased on " + st.Text(5));
    }
    std::string scope = st.Text(1);
    int64_t version = st.Int(2);
    auto tk = TenantKeyLocked(tenant, static_cast<uint32_t>(st.Int(3)));
    if (!tk.ok()) return tk.status();
    auto key = (*tk)->DecryptSecret(st.Blob(4), DataKeyAd(tenant, scope, version, id));
    if (!key.ok() || key->size() != kAes256KeyBytes) {
      return Error(ErrorCode::kDecryptionFailed, "data key does not open under its tenant key");
    }
    ++data_key_unwraps;
    Bound();
    auto& slot = data_keys[id];
    slot = DataKey{std::move(*key), tenant, scope, Expiry()};
    return &slot;
  }

  // The id of the current data key of (tenant, scope), created when missing.
  absl::StatusOr<std::string> CurrentDataKeyLocked(const std::string& tenant,
                                                   const std::string& scope) {
    auto ck = std::make_pair(tenant, scope);
    if (auto it = current.find(ck); it != current.end()) {
      auto d = data_keys.find(it->second);
      if (d != data_keys.end() && Fresh(d->second.expires)) return it->second;
    }
    for (int attempt = 0; attempt < 3; ++attempt) {
      auto tv = CurrentTenantVersion(tenant);
      if (!tv.ok()) return tv.status();
      if (*tv != 0) {
        Stmt st(db,
                "SELECT id FROM data_keys WHERE tenant = ?1 AND scope = ?2 AND created_under = ?3 "
                "AND destroyed IS NULL ORDER BY version DESC LIMIT 1");
        st.Bind(1, tenant).Bind(2, scope).Bind(3, static_cast<int64_t>(*tv));
        auto row = st.Step();
        if (!row.ok()) return row.status();
        if (*row) {
          std::string id = st.Text(0);
          auto dk = DataKeyLocked(tenant, id);
          if (!dk.ok()) return dk.status();
          current[ck] = id;
          return id;
        }
      }
      // Create it (and the tenant key, on first use) in one write transaction
      // that re-reads the current tenant key version: a concurrent rotation
      // or rewrap in another process is serialized with it.
      if (auto s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
      auto created = CreateDataKeyTx(tenant, scope);
      if (!created.ok()) {
        Rollback();
        if (CodeOf(created.status()) == ErrorCode::kVersionConflict) continue;
        return created.status();
      }
      if (auto s = Exec("COMMIT"); !s.ok()) {
        Rollback();
        return s;
      }
      for (KeyEvent& e : created->second) pending.push_back(std::move(e));
      return created->first;
    }
    return Error(ErrorCode::kInternal, "could not create a data key (concurrent changes)");
  }

  absl::StatusOr<std::pair<std::string, std::vector<KeyEvent>>> CreateDataKeyTx(
      const std::string& tenant, const std::string& scope) {
    std::vector<KeyEvent> events;
    auto tv = CurrentTenantVersion(tenant);
    if (!tv.ok()) return tv.status();
    uint32_t version = *tv;
    if (version == 0) {
      // A tenant whose keys were all destroyed stays decommissioned.
      Stmt any(db, "SELECT 1 FROM tenant_keys WHERE tenant = ?1 LIMIT 1");
      any.Bind(1, tenant);
      auto row = any.Step();
      if (!row.ok()) return row.status();
      if (*row) {
        return Error(ErrorCode::kErased, "tenant " + tenant + " was decommissioned");
      }
      auto made = CreateTenantKeyLocked(tenant, 1);
      if (!made.ok()) return made.status();
      version = 1;
      events.push_back({"create", "tenant-key", tenant, "", "tenant:" + tenant + ":v1", 0});
    }
    // Erasure is final: an erased patient's scope never gets a key again, so
    // no new record about them can be written (and later restores of older
    // backups keep finding them in Erasures()).
    Stmt tomb(db,
              "SELECT MAX(destroyed) FROM data_keys WHERE tenant = ?1 AND scope = ?2 "
              "HAVING SUM(destroyed IS NULL) = 0 AND COUNT(*) > 0");
    tomb.Bind(1, tenant).Bind(2, scope);
    auto trow = tomb.Step();
    if (!trow.ok()) return trow.status();
    if (*trow && scope != kTenantScope) {
      return Error(ErrorCode::kErased, "erased on " + tomb.Text(0));
    }
    Stmt existing(db,
                  "SELECT id FROM data_keys WHERE tenant = ?1 AND scope = ?2 AND "
                  "created_under = ?3 AND destroyed IS NULL ORDER BY version DESC LIMIT 1");
    existing.Bind(1, tenant).Bind(2, scope).Bind(3, static_cast<int64_t>(version));
    auto row = existing.Step();
    if (!row.ok()) return row.status();
    if (*row) return Error(ErrorCode::kVersionConflict, "created concurrently");
    Stmt maxv(db,
              "SELECT COALESCE(MAX(version), 0) FROM data_keys WHERE tenant = ?1 AND scope = ?2");
    maxv.Bind(1, tenant).Bind(2, scope);
    auto mrow = maxv.Step();
    if (!mrow.ok()) return mrow.status();
    int64_t next = maxv.Int(0) + 1;
    std::string id = "dk_" + HexEncode(RandomBytes(8));
    auto tk = TenantKeyLocked(tenant, version);
    if (!tk.ok()) return tk.status();
    SecretBytes key = RandomSecret(kAes256KeyBytes);
    auto wrapped = (*tk)->Encrypt(key.UnsafeView(), DataKeyAd(tenant, scope, next, id));
    if (!wrapped.ok()) return wrapped.status();
    Stmt ins(db,
             "INSERT INTO data_keys(id, tenant, scope, version, created_under, "
             "tenant_key_version, wrapped, created) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)");
    ins.Bind(1, id).Bind(2, tenant).Bind(3, scope).Bind(4, next);
    ins.Bind(5, static_cast<int64_t>(version)).BindBlob(6, *wrapped).Bind(7, Now());
    if (auto s = ins.Run(); !s.ok()) return s;
    Bound();
    data_keys[id] = DataKey{std::move(key), tenant, scope, Expiry()};
    current[{tenant, scope}] = id;
    events.push_back({"create", "data-key", tenant, scope, id, 0});
    return std::make_pair(id, std::move(events));
  }

  // Runs `fn` inside BEGIN IMMEDIATE … COMMIT; rolls back on failure.
  template <typename Fn>
  auto InWriteTx(Fn fn) -> decltype(fn()) {
    if (auto s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
    auto r = fn();
    if (!r.ok()) {
      Rollback();
      return r;
    }
    if (auto s = Exec("COMMIT"); !s.ok()) {
      Rollback();
      return s;
    }
    return r;
  }

  // Moves freed pages (wrapped keys just destroyed; zeroed by secure_delete)
  // out of the write-ahead log.
  // Retried for a while: a reader in another process (the server between two
  // statements, normally) can hold it off briefly.
  bool Checkpoint() {
    for (int i = 0; i < 50; ++i) {
      if (sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr) ==
          SQLITE_OK) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
};

KeyRing::KeyRing(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KeyRing::~KeyRing() = default;

absl::StatusOr<std::unique_ptr<KeyRing>> KeyRing::Open(const KeyRingOptions& options) {
  if (options.kek == nullptr) return Error(ErrorCode::kInternal, "key ring needs a KEK");
  auto impl = std::make_unique<Impl>();
  impl->o = options;
  int rc =
      sqlite3_open_v2(options.path.c_str(), &impl->db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    return Error(ErrorCode::kInternal, "cannot open key vault " + options.path);
  }
  sqlite3_busy_timeout(impl->db, 10000);
  // The vault is for this user only (the WAL and shared-memory files SQLite
  // creates next to it take the same mode).
  ::chmod(options.path.c_str(), 0600);
  for (const char* sql : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
                          "PRAGMA secure_delete=ON", "PRAGMA foreign_keys=ON"}) {
    if (auto s = impl->Exec(sql); !s.ok()) return s;
  }
  if (auto s = impl->Exec(kSchema); !s.ok()) return s;
  impl->SyncLocked();
  return std::unique_ptr<KeyRing>(new KeyRing(std::move(impl)));
}

bool KeyRing::IsRecordEnvelope(std::string_view envelope) { return Parse(envelope).has_value(); }

std::vector<std::string> KeyRing::KeyIdsOf(std::string_view envelope) {
  auto p = Parse(envelope);
  return p ? p->ids : std::vector<std::string>{};
}

absl::StatusOr<std::string> KeyRing::Seal(const std::string& tenant,
                                          const std::vector<std::string>& patients,
                                          std::string_view plaintext,
                                          std::string_view associated_data) {
  std::vector<std::string> scopes;
  if (!patients.empty() && patients.size() <= kMaxKeysPerRecord) {
    for (const auto& p : patients) scopes.push_back("patient:" + p);
    std::sort(scopes.begin(), scopes.end());
    scopes.erase(std::unique(scopes.begin(), scopes.end()), scopes.end());
  } else {
    // More compartments than an envelope names (e.g. a Group of many
    // members): the tenant data key (docs/crypto.md).
    scopes.emplace_back(kTenantScope);
  }
  std::vector<std::string> ids;
  SecretBytes ikm;
  std::vector<KeyEvent> events;
  absl::Status keyed = [&]() -> absl::Status {
    std::lock_guard lk(impl_->mu);
    impl_->SyncLocked();
    std::string joined;
    joined.reserve(scopes.size() * kAes256KeyBytes);  // never reallocated: one copy to wipe
    absl::Status st;
    for (const auto& scope : scopes) {
      auto id = impl_->CurrentDataKeyLocked(tenant, scope);
      if (!id.ok()) {
        st = id.status();
        break;
      }
      auto dk = impl_->DataKeyLocked(tenant, *id);
      if (!dk.ok()) {
        st = dk.status();
        break;
      }
      joined.append((*dk)->key.UnsafeView());
      ids.push_back(*id);
    }
    ikm = SecretBytes(joined);
    OPENSSL_cleanse(joined.data(), joined.size());
    events = impl_->TakePending();
    return st;
  }();
  for (const KeyEvent& e : events) impl_->Emit(e);
  if (!keyed.ok()) return keyed;
  std::string salt = RandomBytes(kSaltBytes);
  auto aead = Aead::NewAes256Gcm(DeriveRecordKey(ikm, salt));
  if (!aead.ok()) return aead.status();
  auto body = (*aead)->Encrypt(plaintext, associated_data);
  if (!body.ok()) return body.status();
  std::string out;
  out.reserve(8 + ids.size() * 20 + kSaltBytes + body->size());
  out.append(kMagic);
  out.push_back(static_cast<char>(kFormat));
  out.push_back(static_cast<char>(ids.size()));
  for (const auto& id : ids) {
    out.push_back(static_cast<char>(id.size()));
    out.append(id);
  }
  out.append(salt);
  out.append(*body);
  return out;
}

absl::StatusOr<std::string> KeyRing::Open(const std::string& tenant, std::string_view envelope,
                                          std::string_view associated_data) {
  auto p = Parse(envelope);
  if (!p) return Error(ErrorCode::kDecryptionFailed, "not a format-2 record envelope");
  SecretBytes ikm;
  {
    std::lock_guard lk(impl_->mu);
    impl_->SyncLocked();
    std::string joined;
    joined.reserve(p->ids.size() * kAes256KeyBytes);  // never reallocated: one copy to wipe
    for (const auto& id : p->ids) {
      auto dk = impl_->DataKeyLocked(tenant, id);
      if (!dk.ok()) {
        OPENSSL_cleanse(joined.data(), joined.size());
        return dk.status();
      }
      joined.append((*dk)->key.UnsafeView());
    }
    ikm = SecretBytes(joined);
    OPENSSL_cleanse(joined.data(), joined.size());
  }
  auto aead = Aead::NewAes256Gcm(DeriveRecordKey(ikm, p->salt));
  if (!aead.ok()) return aead.status();
  auto plain = (*aead)->Decrypt(p->body, associated_data);
  if (!plain.ok()) return Error(ErrorCode::kDecryptionFailed, "record failed its integrity check");
  return plain;
}

absl::StatusOr<bool> KeyRing::IsCurrent(std::string_view envelope) {
  auto p = Parse(envelope);
  if (!p) return false;
  std::lock_guard lk(impl_->mu);
  impl_->SyncLocked();
  for (const auto& id : p->ids) {
    Stmt st(
        impl_->db,
        "SELECT d.tenant, d.scope, d.created_under, d.destroyed FROM data_keys d WHERE d.id = ?1");
    st.Bind(1, id);
    auto row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row || !st.IsNull(3)) return true;  // unknown or destroyed: nothing to move forward
    auto tv = impl_->CurrentTenantVersion(st.Text(0));
    if (!tv.ok()) return tv.status();
    if (st.Int(2) != static_cast<int64_t>(*tv)) return false;
  }
  return true;
}

absl::StatusOr<uint32_t> KeyRing::RotateTenant(const std::string& tenant) {
  std::lock_guard lk(impl_->mu);
  auto r = impl_->InWriteTx([&]() -> absl::StatusOr<uint32_t> {
    auto tv = impl_->CurrentTenantVersion(tenant);
    if (!tv.ok()) return tv.status();
    Stmt maxv(impl_->db, "SELECT COALESCE(MAX(version), 0) FROM tenant_keys WHERE tenant = ?1");
    maxv.Bind(1, tenant);
    auto row = maxv.Step();
    if (!row.ok()) return row.status();
    if (*tv == 0 && maxv.Int(0) != 0) {
      return Error(ErrorCode::kErased, "tenant " + tenant + " was decommissioned");
    }
    return impl_->CreateTenantKeyLocked(tenant, static_cast<uint32_t>(maxv.Int(0) + 1));
  });
  impl_->ClearLocked();
  if (r.ok()) {
    impl_->Emit(
        {"rotate", "tenant-key", tenant, "", "tenant:" + tenant + ":v" + std::to_string(*r), 0});
  }
  return r;
}

absl::StatusOr<uint64_t> KeyRing::RewrapKeys() {
  std::lock_guard lk(impl_->mu);
  std::vector<KeyEvent> events;
  auto r = impl_->InWriteTx([&]() -> absl::StatusOr<uint64_t> {
    uint64_t moved = 0;
    uint32_t kek_now = impl_->o.kek->current_version();
    // 1. Tenant keys under an older KEK version.
    std::vector<std::pair<std::string, int64_t>> stale;
    {
      Stmt st(
          impl_->db,
          "SELECT tenant, version FROM tenant_keys WHERE destroyed IS NULL AND kek_version != ?1");
      st.Bind(1, static_cast<int64_t>(kek_now));
      while (true) {
        auto row = st.Step();
        if (!row.ok()) return row.status();
        if (!*row) break;
        stale.emplace_back(st.Text(0), st.Int(1));
      }
    }
    for (const auto& [tenant, version] : stale) {
      Stmt st(impl_->db, "SELECT wrapped FROM tenant_keys WHERE tenant = ?1 AND version = ?2");
      st.Bind(1, tenant).Bind(2, version);
      auto row = st.Step();
      if (!row.ok() || !*row) return Error(ErrorCode::kInternal, "tenant key vanished");
      std::string ad = TenantKeyAd(tenant, static_cast<uint32_t>(version));
      auto key = impl_->o.kek->Unwrap(st.Blob(0), ad);
      if (!key.ok())
        return Error(ErrorCode::kDecryptionFailed, "tenant key does not open under the KEK");
      auto wrapped = impl_->o.kek->Wrap(*key, ad);
      if (!wrapped.ok()) return wrapped.status();
      Stmt up(impl_->db,
              "UPDATE tenant_keys SET wrapped = ?3, kek_version = ?4 WHERE tenant = ?1 AND version "
              "= ?2");
      up.Bind(1, tenant).Bind(2, version).BindBlob(3, *wrapped);
      up.Bind(4, static_cast<int64_t>(VersionedKek::VersionOf(*wrapped)));
      if (auto s = up.Run(); !s.ok()) return s;
      ++moved;
      events.push_back({"rewrap", "tenant-key", tenant, "",
                        "tenant:" + tenant + ":v" + std::to_string(version), 1});
    }
    // 2. Data keys under an older tenant key version.
    struct Row {
      std::string id, tenant, scope;
      int64_t version, tkv;
      std::string wrapped;
    };
    std::vector<Row> rows;
    {
      Stmt st(impl_->db,
              "SELECT d.id, d.tenant, d.scope, d.version, d.tenant_key_version, d.wrapped FROM "
              "data_keys d "
              "WHERE d.destroyed IS NULL AND d.tenant_key_version != (SELECT MAX(t.version) FROM "
              "tenant_keys t WHERE t.tenant = d.tenant AND t.destroyed IS NULL)");
      while (true) {
        auto row = st.Step();
        if (!row.ok()) return row.status();
        if (!*row) break;
        rows.push_back({st.Text(0), st.Text(1), st.Text(2), st.Int(3), st.Int(4), st.Blob(5)});
      }
    }
    std::map<std::string, uint64_t> per_tenant;
    for (const Row& d : rows) {
      auto old_tk = impl_->TenantKeyLocked(d.tenant, static_cast<uint32_t>(d.tkv));
      if (!old_tk.ok()) return old_tk.status();
      std::string ad = DataKeyAd(d.tenant, d.scope, d.version, d.id);
      auto key = (*old_tk)->DecryptSecret(d.wrapped, ad);
      if (!key.ok())
        return Error(ErrorCode::kDecryptionFailed, "data key " + d.id + " does not open");
      auto tv = impl_->CurrentTenantVersion(d.tenant);
      if (!tv.ok()) return tv.status();
      auto new_tk = impl_->TenantKeyLocked(d.tenant, *tv);
      if (!new_tk.ok()) return new_tk.status();
      auto wrapped = (*new_tk)->Encrypt(key->UnsafeView(), ad);
      if (!wrapped.ok()) return wrapped.status();
      Stmt up(impl_->db,
              "UPDATE data_keys SET wrapped = ?2, tenant_key_version = ?3 WHERE id = ?1");
      up.Bind(1, d.id).BindBlob(2, *wrapped).Bind(3, static_cast<int64_t>(*tv));
      if (auto s = up.Run(); !s.ok()) return s;
      ++moved;
      ++per_tenant[d.tenant];
    }
    for (const auto& [tenant, n] : per_tenant) {
      events.push_back({"rewrap", "data-key", tenant, "", "", n});
    }
    // 3. Older tenant key versions that no data key is wrapped under any more
    //    are destroyed: that is what retiring them means.
    std::vector<std::pair<std::string, int64_t>> retired;
    {
      Stmt st(impl_->db,
              "SELECT t.tenant, t.version FROM tenant_keys t WHERE t.destroyed IS NULL "
              "AND t.version < (SELECT MAX(u.version) FROM tenant_keys u WHERE u.tenant = t.tenant "
              "AND u.destroyed IS NULL) AND NOT EXISTS (SELECT 1 FROM data_keys d WHERE "
              "d.tenant = t.tenant AND d.tenant_key_version = t.version AND d.destroyed IS NULL)");
      while (true) {
        auto row = st.Step();
        if (!row.ok()) return row.status();
        if (!*row) break;
        retired.emplace_back(st.Text(0), st.Int(1));
      }
    }
    std::string now = Now();
    for (const auto& [tenant, version] : retired) {
      Stmt up(impl_->db,
              "UPDATE tenant_keys SET wrapped = NULL, destroyed = ?3 WHERE tenant = ?1 AND version "
              "= ?2");
      up.Bind(1, tenant).Bind(2, version).Bind(3, now);
      if (auto s = up.Run(); !s.ok()) return s;
      events.push_back({"destroy", "tenant-key", tenant, "",
                        "tenant:" + tenant + ":v" + std::to_string(version), 0});
    }
    return moved;
  });
  impl_->ClearLocked();
  if (r.ok()) {
    impl_->Checkpoint();
    for (const auto& e : events) impl_->Emit(e);
  }
  return r;
}

absl::StatusOr<uint64_t> KeyRing::ErasePatient(const std::string& tenant,
                                               const std::string& patient) {
  std::string scope = "patient:" + patient;
  std::lock_guard lk(impl_->mu);
  std::vector<std::string> ids;
  auto r = impl_->InWriteTx([&]() -> absl::StatusOr<uint64_t> {
    std::string now = Now();
    {
      Stmt st(impl_->db,
              "SELECT id FROM data_keys WHERE tenant = ?1 AND scope = ?2 AND destroyed IS NULL");
      st.Bind(1, tenant).Bind(2, scope);
      while (true) {
        auto row = st.Step();
        if (!row.ok()) return row.status();
        if (!*row) break;
        ids.push_back(st.Text(0));
      }
    }
    Stmt up(impl_->db,
            "UPDATE data_keys SET wrapped = NULL, destroyed = ?3 WHERE tenant = ?1 AND scope = ?2 "
            "AND destroyed IS NULL");
    up.Bind(1, tenant).Bind(2, scope).Bind(3, now);
    if (auto s = up.Run(); !s.ok()) return s;
    Stmt any(impl_->db, "SELECT 1 FROM data_keys WHERE tenant = ?1 AND scope = ?2 LIMIT 1");
    any.Bind(1, tenant).Bind(2, scope);
    auto had = any.Step();
    if (!had.ok()) return had.status();
    if (ids.empty() && !*had) {
      // No key yet: a tombstone, so that the erasure is on record and a read answers "erased".
      Stmt maxv(impl_->db,
                "SELECT COALESCE(MAX(version), 0) FROM data_keys WHERE tenant = ?1 AND scope = ?2");
      maxv.Bind(1, tenant).Bind(2, scope);
      auto row = maxv.Step();
      if (!row.ok()) return row.status();
      Stmt ins(
          impl_->db,
          "INSERT INTO data_keys(id, tenant, scope, version, created_under, tenant_key_version, "
          "wrapped, created, destroyed) VALUES (?1, ?2, ?3, ?4, 0, 0, NULL, ?5, ?5)");
      ins.Bind(1, "dk_" + HexEncode(RandomBytes(8))).Bind(2, tenant).Bind(3, scope);
      ins.Bind(4, maxv.Int(0) + 1).Bind(5, now);
      if (auto s = ins.Run(); !s.ok()) return s;
    }
    return static_cast<uint64_t>(ids.size());
  });
  impl_->ClearLocked();
  if (r.ok()) {
    impl_->Checkpoint();
    for (const auto& id : ids) impl_->Emit({"destroy", "data-key", tenant, scope, id, 0});
  }
  return r;
}

absl::StatusOr<uint64_t> KeyRing::DestroyTenant(const std::string& tenant) {
  std::lock_guard lk(impl_->mu);
  uint64_t tenant_keys = 0;
  auto r = impl_->InWriteTx([&]() -> absl::StatusOr<uint64_t> {
    std::string now = Now();
    Stmt d(impl_->db,
           "UPDATE data_keys SET wrapped = NULL, destroyed = ?2 WHERE tenant = ?1 AND destroyed IS "
           "NULL");
    d.Bind(1, tenant).Bind(2, now);
    if (auto s = d.Run(); !s.ok()) return s;
    uint64_t data = static_cast<uint64_t>(sqlite3_changes(impl_->db));
    Stmt t(impl_->db,
           "UPDATE tenant_keys SET wrapped = NULL, destroyed = ?2 WHERE tenant = ?1 AND destroyed "
           "IS NULL");
    t.Bind(1, tenant).Bind(2, now);
    if (auto s = t.Run(); !s.ok()) return s;
    tenant_keys = static_cast<uint64_t>(sqlite3_changes(impl_->db));
    if (tenant_keys == 0) {
      Stmt any(impl_->db, "SELECT 1 FROM tenant_keys WHERE tenant = ?1 LIMIT 1");
      any.Bind(1, tenant);
      auto row = any.Step();
      if (!row.ok()) return row.status();
      if (!*row) {
        // Never used: a destroyed placeholder keeps the tenant from being revived.
        Stmt ins(
            impl_->db,
            "INSERT INTO tenant_keys(tenant, version, kek_version, wrapped, created, destroyed) "
            "VALUES (?1, 1, 0, NULL, ?2, ?2)");
        ins.Bind(1, tenant).Bind(2, now);
        if (auto s = ins.Run(); !s.ok()) return s;
      }
    }
    return data;
  });
  impl_->ClearLocked();
  if (r.ok()) {
    impl_->Checkpoint();
    impl_->Emit({"destroy", "tenant-key", tenant, "", "tenant:" + tenant + ":*", tenant_keys});
    impl_->Emit({"destroy", "data-key", tenant, "", "", *r});
  }
  return r;
}

absl::StatusOr<std::optional<std::string>> KeyRing::ErasedAt(const std::string& tenant,
                                                             const std::string& patient) {
  std::lock_guard lk(impl_->mu);
  Stmt st(impl_->db,
          "SELECT MAX(destroyed), SUM(destroyed IS NULL) FROM data_keys WHERE tenant = ?1 AND "
          "scope = ?2");
  st.Bind(1, tenant).Bind(2, "patient:" + patient);
  auto row = st.Step();
  if (!row.ok()) return row.status();
  if (!*row || st.IsNull(0) || st.Int(1) > 0) return std::optional<std::string>();
  return std::optional<std::string>(st.Text(0));
}

absl::StatusOr<std::vector<std::string>> KeyRing::Tenants() {
  std::lock_guard lk(impl_->mu);
  Stmt st(impl_->db, "SELECT DISTINCT tenant FROM tenant_keys ORDER BY tenant");
  std::vector<std::string> out;
  while (true) {
    auto row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back(st.Text(0));
  }
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> KeyRing::Erasures() {
  std::lock_guard lk(impl_->mu);
  Stmt st(impl_->db,
          "SELECT tenant, substr(scope, 9) FROM data_keys WHERE scope LIKE 'patient:%' "
          "GROUP BY tenant, scope HAVING SUM(destroyed IS NULL) = 0 ORDER BY tenant, scope");
  std::vector<std::pair<std::string, std::string>> out;
  while (true) {
    auto row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.emplace_back(st.Text(0), st.Text(1));
  }
  return out;
}

absl::StatusOr<KeyRingStatus> KeyRing::Status() {
  std::lock_guard lk(impl_->mu);
  KeyRingStatus s;
  s.kms = impl_->o.kek->backend().Describe();
  s.kek_version = impl_->o.kek->current_version();
  s.kek_versions = impl_->o.kek->versions();
  {
    Stmt st(impl_->db,
            "SELECT t.tenant, t.version, t.kek_version, t.created, t.destroyed IS NOT NULL, "
            "(SELECT COUNT(*) FROM data_keys d WHERE d.tenant = t.tenant AND "
            "d.tenant_key_version = t.version AND d.destroyed IS NULL) "
            "FROM tenant_keys t ORDER BY t.tenant, t.version");
    while (true) {
      auto row = st.Step();
      if (!row.ok()) return row.status();
      if (!*row) break;
      TenantKeyInfo t;
      t.tenant = st.Text(0);
      t.version = static_cast<uint32_t>(st.Int(1));
      t.kek_version = static_cast<uint32_t>(st.Int(2));
      t.created = st.Text(3);
      t.destroyed = st.Int(4) != 0;
      t.data_keys = static_cast<uint64_t>(st.Int(5));
      if (!t.destroyed && t.kek_version != s.kek_version) ++s.stale_tenant_keys;
      s.tenant_keys.push_back(std::move(t));
    }
  }
  {
    Stmt st(
        impl_->db,
        "SELECT SUM(destroyed IS NULL), SUM(destroyed IS NOT NULL), "
        "SUM(destroyed IS NULL AND tenant_key_version != (SELECT MAX(t.version) FROM tenant_keys t "
        "WHERE t.tenant = data_keys.tenant AND t.destroyed IS NULL)) FROM data_keys");
    auto row = st.Step();
    if (!row.ok()) return row.status();
    s.data_keys = static_cast<uint64_t>(st.Int(0));
    s.destroyed_data_keys = static_cast<uint64_t>(st.Int(1));
    s.stale_data_keys = static_cast<uint64_t>(st.Int(2));
  }
  return s;
}

void KeyRing::ReportUnwrapCount() {
  uint64_t kek = impl_->o.kek->TakeUnwrapCount();
  uint64_t data = 0;
  {
    std::lock_guard lk(impl_->mu);
    data = impl_->data_key_unwraps;
    impl_->data_key_unwraps = 0;
  }
  impl_->Emit({"unwrap-count", "kek", "", "",
               "kek:v" + std::to_string(impl_->o.kek->current_version()), kek});
  impl_->Emit({"unwrap-count", "data-key", "", "", "", data});
}

void KeyRing::SetEventSink(std::function<void(const KeyEvent&)> sink) {
  std::lock_guard lk(impl_->sink_mu);
  impl_->o.on_event = std::move(sink);
}

absl::StatusOr<std::vector<std::string>> KeyRing::PatientKeyIds(const std::string& tenant,
                                                                const std::string& patient) {
  std::lock_guard lk(impl_->mu);
  Stmt st(impl_->db, "SELECT id FROM data_keys WHERE tenant = ?1 AND scope = ?2 ORDER BY version");
  st.Bind(1, tenant).Bind(2, "patient:" + patient);
  std::vector<std::string> out;
  while (true) {
    auto row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back(st.Text(0));
  }
  return out;
}

void KeyRing::ClearCache() {
  std::lock_guard lk(impl_->mu);
  impl_->ClearLocked();
}

}  // namespace fhirward::crypto
