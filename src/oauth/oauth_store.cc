#include "oauth/oauth_store.h"

#include <sys/stat.h>

#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "store/internal/sqlite.h"

namespace fhirward::oauth {
namespace {

using store::internal::Db;
using store::internal::Stmt;

constexpr const char* kSchema = R"sql(
PRAGMA journal_mode=WAL;
PRAGMA synchronous=FULL;
CREATE TABLE IF NOT EXISTS users(
  username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, fhir_user TEXT NOT NULL,
  roles TEXT NOT NULL, totp_secret BLOB NOT NULL DEFAULT '', totp_last_step INTEGER NOT NULL DEFAULT 0,
  disabled INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
  locked_until INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL,
  credential_version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS clients(
  client_id TEXT PRIMARY KEY, name TEXT NOT NULL, auth TEXT NOT NULL,
  secret_hash TEXT NOT NULL DEFAULT '', previous_secret_hash TEXT NOT NULL DEFAULT '',
  previous_secret_expires INTEGER NOT NULL DEFAULT 0, secret_expires INTEGER NOT NULL DEFAULT 0,
  jwks TEXT NOT NULL DEFAULT '', jwks_uri TEXT NOT NULL DEFAULT '',
  tls_subject_dn TEXT NOT NULL DEFAULT '', redirect_uris TEXT NOT NULL DEFAULT '',
  scope TEXT NOT NULL DEFAULT '', grant_types TEXT NOT NULL DEFAULT '',
  rotate_refresh INTEGER NOT NULL DEFAULT 1, sender_constraint TEXT NOT NULL DEFAULT '',
  id_token_alg TEXT NOT NULL DEFAULT 'RS256', disabled INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS launches(
  id TEXT PRIMARY KEY, patient TEXT NOT NULL, encounter TEXT NOT NULL, expires INTEGER NOT NULL,
  client_id TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS codes(
  hash TEXT PRIMARY KEY, client_id TEXT NOT NULL, username TEXT NOT NULL, fhir_user TEXT NOT NULL,
  scope TEXT NOT NULL, patient TEXT NOT NULL, encounter TEXT NOT NULL, purpose TEXT NOT NULL,
  nonce TEXT NOT NULL, auth_time INTEGER NOT NULL, dpop_jkt TEXT NOT NULL,
  credential_version INTEGER NOT NULL DEFAULT 0, session TEXT NOT NULL DEFAULT '',
  redirect_uri TEXT NOT NULL, challenge TEXT NOT NULL, expires INTEGER NOT NULL,
  used INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS grants(
  id TEXT PRIMARY KEY, client_id TEXT NOT NULL, username TEXT NOT NULL, fhir_user TEXT NOT NULL,
  scope TEXT NOT NULL, patient TEXT NOT NULL, encounter TEXT NOT NULL, purpose TEXT NOT NULL,
  auth_time INTEGER NOT NULL, dpop_jkt TEXT NOT NULL, code_hash TEXT NOT NULL,
  credential_version INTEGER NOT NULL DEFAULT 0, session TEXT NOT NULL DEFAULT '',
  created INTEGER NOT NULL, absolute_expires INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS grants_by_code ON grants(code_hash);
CREATE TABLE IF NOT EXISTS refresh_tokens(
  hash TEXT PRIMARY KEY, grant_id TEXT NOT NULL, idle_expires INTEGER NOT NULL,
  used INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS refresh_by_grant ON refresh_tokens(grant_id);
CREATE TABLE IF NOT EXISTS access_tokens(
  jti TEXT PRIMARY KEY, grant_id TEXT NOT NULL, exp INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS access_by_grant ON access_tokens(grant_id);
CREATE TABLE IF NOT EXISTS revoked_tokens(
  jti TEXT PRIMARY KEY, exp INTEGER NOT NULL, revoked_at INTEGER NOT NULL);
)sql";

std::string JoinLines(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) {
    if (!out.empty()) out += '\n';
    out += s;
  }
  return out;
}

std::vector<std::string> SplitLines(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find('\n', i);
    if (j == std::string::npos) j = s.size();
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

constexpr const char* kUserCols =
    "username,password_hash,fhir_user,roles,totp_secret,totp_last_step,disabled,failed,"
    "locked_until,created,credential_version";

User ReadUser(const Stmt& s) {
  User u;
  u.username = s.Text(0);
  u.password_hash = s.Text(1);
  u.fhir_user = s.Text(2);
  u.roles = s.Text(3);
  u.totp_secret_wrapped = s.Blob(4);
  u.totp_last_step = s.Int(5);
  u.disabled = s.Int(6) != 0;
  u.failed_logins = s.Int(7);
  u.locked_until = s.Int(8);
  u.created = s.Int(9);
  u.credential_version = s.Int(10);
  return u;
}

constexpr const char* kClientCols =
    "client_id,name,auth,secret_hash,previous_secret_hash,previous_secret_expires,secret_expires,"
    "jwks,jwks_uri,tls_subject_dn,redirect_uris,scope,grant_types,rotate_refresh,"
    "sender_constraint,disabled,created,id_token_alg";

Client ReadClient(const Stmt& s) {
  Client c;
  c.client_id = s.Text(0);
  c.name = s.Text(1);
  c.auth = ClientAuthFromName(s.Text(2)).value_or(ClientAuth::kNone);
  c.secret_hash = s.Text(3);
  c.previous_secret_hash = s.Text(4);
  c.previous_secret_expires = s.Int(5);
  c.secret_expires = s.Int(6);
  c.jwks = s.Text(7);
  c.jwks_uri = s.Text(8);
  c.tls_subject_dn = s.Text(9);
  c.redirect_uris = SplitLines(s.Text(10));
  c.scope = s.Text(11);
  c.grant_types = SplitLines(s.Text(12));
  c.rotate_refresh = s.Int(13) != 0;
  c.sender_constraint = s.Text(14);
  c.disabled = s.Int(15) != 0;
  c.created = s.Int(16);
  c.id_token_alg = s.Text(17);
  return c;
}

bool IsConstraint(const absl::Status& s) {
  return s.message().find("UNIQUE constraint") != std::string_view::npos ||
         s.message().find("PRIMARY KEY") != std::string_view::npos;
}

}  // namespace

std::string_view ClientAuthName(ClientAuth a) {
  switch (a) {
    case ClientAuth::kNone:
      return "none";
    case ClientAuth::kSecretBasic:
      return "client_secret_basic";
    case ClientAuth::kPrivateKeyJwt:
      return "private_key_jwt";
    case ClientAuth::kTlsClientAuth:
      return "tls_client_auth";
  }
  return "none";
}

std::optional<ClientAuth> ClientAuthFromName(std::string_view name) {
  for (ClientAuth a : {ClientAuth::kNone, ClientAuth::kSecretBasic, ClientAuth::kPrivateKeyJwt,
                       ClientAuth::kTlsClientAuth}) {
    if (ClientAuthName(a) == name) return a;
  }
  return std::nullopt;
}

bool Client::HasGrant(std::string_view g) const {
  for (const auto& x : grant_types) {
    if (x == g) return true;
  }
  return false;
}

struct OAuthStore::Impl {
  std::mutex mu;
  std::unique_ptr<Db> db;

  absl::StatusOr<Stmt> Prep(std::string_view sql) { return db->Prepare(sql); }
};

OAuthStore::OAuthStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OAuthStore::~OAuthStore() = default;

absl::StatusOr<std::unique_ptr<OAuthStore>> OAuthStore::Open(const std::string& path) {
  auto db = Db::Open(path, /*read_only=*/false);
  if (!db.ok()) return db.status();
  ::chmod(path.c_str(), 0600);
  if (auto s = (*db)->Exec(kSchema); !s.ok()) return s;
  // Columns added after the first version of the schema (errors: already there).
  for (const char* alter :
       {"ALTER TABLE users ADD COLUMN credential_version INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE codes ADD COLUMN credential_version INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE grants ADD COLUMN credential_version INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE codes ADD COLUMN session TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE grants ADD COLUMN session TEXT NOT NULL DEFAULT ''"}) {
    (void)(*db)->Exec(alter);
  }
  (void)(*db)->Exec("ALTER TABLE launches ADD COLUMN client_id TEXT NOT NULL DEFAULT ''");
  auto impl = std::make_unique<Impl>();
  impl->db = std::move(*db);
  return std::unique_ptr<OAuthStore>(new OAuthStore(std::move(impl)));
}

#define FW_PREP(var, sql)                       \
  auto var##_or = impl_->Prep(sql);             \
  if (!var##_or.ok()) return var##_or.status(); \
  Stmt& var = *var##_or

// --- users ------------------------------------------------------------------

absl::Status OAuthStore::AddUser(const User& u) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s,
          "INSERT INTO users(username,password_hash,fhir_user,roles,totp_secret,created) "
          "VALUES(?,?,?,?,?,?)");
  s.Bind(1, u.username).Bind(2, u.password_hash).Bind(3, u.fhir_user).Bind(4, u.roles);
  s.BindBlob(5, u.totp_secret_wrapped).Bind(6, u.created);
  auto r = s.Run();
  if (!r.ok() && IsConstraint(r)) {
    return Error(ErrorCode::kVersionConflict, "user " + u.username + " exists");
  }
  return r;
}

absl::StatusOr<std::optional<User>> OAuthStore::GetUser(const std::string& username) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, std::string("SELECT ") + kUserCols + " FROM users WHERE username=?");
  s.Bind(1, username);
  auto row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::optional<User>();
  return std::optional<User>(ReadUser(s));
}

absl::StatusOr<std::vector<User>> OAuthStore::ListUsers() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, std::string("SELECT ") + kUserCols + " FROM users ORDER BY username");
  std::vector<User> out;
  for (;;) {
    auto row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back(ReadUser(s));
  }
  return out;
}

namespace {
absl::Status ExpectChange(Db& db, const absl::Status& s, const std::string& what) {
  if (!s.ok()) return s;
  if (sqlite3_changes(db.raw()) == 0) return Error(ErrorCode::kNotFound, what + " not found");
  return absl::OkStatus();
}
}  // namespace

absl::Status OAuthStore::SetUserDisabled(const std::string& username, bool disabled) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s,
          "UPDATE users SET disabled=?, credential_version=credential_version+1 "
          "WHERE username=?");
  s.Bind(1, int64_t{disabled}).Bind(2, username);
  return ExpectChange(*impl_->db, s.Run(), "user " + username);
}

absl::Status OAuthStore::SetPassword(const std::string& username, const std::string& hash,
                                     bool credential_change) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (!credential_change) {
    FW_PREP(r, "UPDATE users SET password_hash=? WHERE username=?");
    r.Bind(1, hash).Bind(2, username);
    return ExpectChange(*impl_->db, r.Run(), "user " + username);
  }
  FW_PREP(s,
          "UPDATE users SET password_hash=?, failed=0, locked_until=0, "
          "credential_version=credential_version+1 WHERE username=?");
  s.Bind(1, hash).Bind(2, username);
  return ExpectChange(*impl_->db, s.Run(), "user " + username);
}

absl::Status OAuthStore::SetTotp(const std::string& username, const std::string& wrapped) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "UPDATE users SET totp_secret=?, totp_last_step=0 WHERE username=?");
  s.BindBlob(1, wrapped).Bind(2, username);
  return ExpectChange(*impl_->db, s.Run(), "user " + username);
}

absl::StatusOr<bool> OAuthStore::RewrapTotp(const std::string& username,
                                             const std::string& old_wrapped,
                                             const std::string& new_wrapped) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "UPDATE users SET totp_secret=?1 WHERE username=?2 AND totp_secret=?3");
  s.BindBlob(1, new_wrapped).Bind(2, username).BindBlob(3, old_wrapped);
  if (auto r = s.Run(); !r.ok()) return r;
  return sqlite3_changes(impl_->db->raw()) > 0;
}

absl::StatusOr<int64_t> OAuthStore::RecordLoginFailure(const std::string& username, int64_t now,
                                                       int64_t max_failures, int64_t lock_seconds) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  // A failure after the lock expired starts a new count.
  FW_PREP(s,
          "UPDATE users SET failed = CASE WHEN locked_until>0 AND locked_until<=?1 THEN 1 "
          "ELSE failed+1 END, locked_until = CASE WHEN locked_until>0 AND locked_until<=?1 "
          "THEN 0 ELSE locked_until END WHERE username=?2 RETURNING failed");
  s.Bind(1, now).Bind(2, username);
  auto row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return int64_t{0};
  int64_t failed = s.Int(0);
  (void)s.Step();
  if (failed >= max_failures) {
    FW_PREP(l, "UPDATE users SET locked_until=? WHERE username=?");
    l.Bind(1, now + lock_seconds).Bind(2, username);
    if (auto st = l.Run(); !st.ok()) return st;
  }
  return failed;
}

absl::Status OAuthStore::RecordLoginSuccess(const std::string& username) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "UPDATE users SET failed=0, locked_until=0 WHERE username=?");
  s.Bind(1, username);
  return s.Run();
}

absl::Status OAuthStore::UndoLoginAttempt(const std::string& username, int64_t max_failures) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s,
          "UPDATE users SET failed=failed-1, locked_until=CASE WHEN failed-1 < ?2 THEN 0 "
          "ELSE locked_until END WHERE username=?1 AND failed>0");
  s.Bind(1, username).Bind(2, max_failures);
  return s.Run();
}

absl::StatusOr<bool> OAuthStore::UseTotpStep(const std::string& username, int64_t step) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "UPDATE users SET totp_last_step=? WHERE username=? AND totp_last_step<?");
  s.Bind(1, step).Bind(2, username).Bind(3, step);
  if (auto st = s.Run(); !st.ok()) return st;
  return sqlite3_changes(impl_->db->raw()) == 1;
}

// --- clients ------------------------------------------------------------------

absl::Status OAuthStore::AddClient(const Client& c) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, std::string("INSERT INTO clients(") + kClientCols +
                 ") VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  s.Bind(1, c.client_id).Bind(2, c.name).Bind(3, ClientAuthName(c.auth)).Bind(4, c.secret_hash);
  s.Bind(5, c.previous_secret_hash).Bind(6, c.previous_secret_expires).Bind(7, c.secret_expires);
  s.Bind(8, c.jwks).Bind(9, c.jwks_uri).Bind(10, c.tls_subject_dn);
  s.Bind(11, JoinLines(c.redirect_uris)).Bind(12, c.scope).Bind(13, JoinLines(c.grant_types));
  s.Bind(14, int64_t{c.rotate_refresh}).Bind(15, c.sender_constraint);
  s.Bind(16, int64_t{c.disabled}).Bind(17, c.created).Bind(18, c.id_token_alg);
  auto r = s.Run();
  if (!r.ok() && IsConstraint(r)) {
    return Error(ErrorCode::kVersionConflict, "client " + c.client_id + " exists");
  }
  return r;
}

absl::StatusOr<std::optional<Client>> OAuthStore::GetClient(const std::string& client_id) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, std::string("SELECT ") + kClientCols + " FROM clients WHERE client_id=?");
  s.Bind(1, client_id);
  auto row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::optional<Client>();
  return std::optional<Client>(ReadClient(s));
}

absl::StatusOr<std::vector<Client>> OAuthStore::ListClients() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, std::string("SELECT ") + kClientCols + " FROM clients ORDER BY client_id");
  std::vector<Client> out;
  for (;;) {
    auto row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back(ReadClient(s));
  }
  return out;
}

absl::Status OAuthStore::SetClientDisabled(const std::string& client_id, bool disabled) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "UPDATE clients SET disabled=? WHERE client_id=?");
  s.Bind(1, int64_t{disabled}).Bind(2, client_id);
  return ExpectChange(*impl_->db, s.Run(), "client " + client_id);
}

absl::Status OAuthStore::RotateSecret(const std::string& client_id, const std::string& new_hash,
                                      int64_t now, int64_t grace_seconds, int64_t secret_expires) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s,
          "UPDATE clients SET previous_secret_hash=secret_hash, previous_secret_expires=?, "
          "secret_hash=?, secret_expires=? WHERE client_id=? AND auth='client_secret_basic'");
  s.Bind(1, grace_seconds > 0 ? now + grace_seconds : 0).Bind(2, new_hash);
  s.Bind(3, secret_expires).Bind(4, client_id);
  return ExpectChange(*impl_->db, s.Run(), "confidential client " + client_id);
}

// --- launches -----------------------------------------------------------------

absl::Status OAuthStore::AddLaunch(const LaunchContext& l) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "INSERT INTO launches(id,patient,encounter,expires,client_id) VALUES(?,?,?,?,?)");
  s.Bind(1, l.id).Bind(2, l.patient).Bind(3, l.encounter).Bind(4, l.expires).Bind(5, l.client_id);
  return s.Run();
}

absl::StatusOr<std::optional<LaunchContext>> OAuthStore::ConsumeLaunch(const std::string& id,
                                                                       int64_t now) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s,
          "DELETE FROM launches WHERE id=? AND expires>? "
          "RETURNING id,patient,encounter,expires,client_id");
  s.Bind(1, id).Bind(2, now);
  auto row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::optional<LaunchContext>();
  LaunchContext l{s.Text(0), s.Text(1), s.Text(2), s.Int(3), s.Text(4)};
  (void)s.Step();
  return std::optional<LaunchContext>(std::move(l));
}

absl::StatusOr<std::optional<LaunchContext>> OAuthStore::GetLaunch(const std::string& id,
                                                                   int64_t now) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s,
          "SELECT id,patient,encounter,expires,client_id FROM launches WHERE id=? AND expires>?");
  s.Bind(1, id).Bind(2, now);
  auto row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::optional<LaunchContext>();
  LaunchContext l{s.Text(0), s.Text(1), s.Text(2), s.Int(3), s.Text(4)};
  return std::optional<LaunchContext>(std::move(l));
}

// --- codes --------------------------------------------------------------------

absl::Status OAuthStore::AddCode(const std::string& code_hash, const CodeRecord& c) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s,
          "INSERT INTO codes(hash,client_id,username,fhir_user,scope,patient,encounter,purpose,"
          "nonce,auth_time,dpop_jkt,redirect_uri,challenge,expires,credential_version,session) "
          "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  const GrantData& g = c.grant;
  s.Bind(1, code_hash).Bind(2, g.client_id).Bind(3, g.username).Bind(4, g.fhir_user);
  s.Bind(5, g.scope).Bind(6, g.patient).Bind(7, g.encounter).Bind(8, g.purpose_of_use);
  s.Bind(9, g.nonce).Bind(10, g.auth_time).Bind(11, g.dpop_jkt).Bind(12, c.redirect_uri);
  s.Bind(13, c.code_challenge).Bind(14, c.expires).Bind(15, g.credential_version);
  s.Bind(16, g.session);
  return s.Run();
}

absl::StatusOr<CodeUse> OAuthStore::ConsumeCode(const std::string& code_hash,
                                                const std::string& client_id, CodeRecord* out) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s,
          "UPDATE codes SET used=used+1 WHERE hash=? AND client_id=? RETURNING used,client_id,"
          "username,fhir_user,scope,patient,encounter,purpose,nonce,auth_time,dpop_jkt,"
          "redirect_uri,challenge,expires,credential_version,session");
  s.Bind(1, code_hash).Bind(2, client_id);
  auto row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) {
    FW_PREP(e, "SELECT 1 FROM codes WHERE hash=?");
    e.Bind(1, code_hash);
    auto found = e.Step();
    if (!found.ok()) return found.status();
    return *found ? CodeUse::kOtherClient : CodeUse::kUnknown;
  }
  const int64_t used = s.Int(0);
  GrantData& g = out->grant;
  g.client_id = s.Text(1);
  g.username = s.Text(2);
  g.fhir_user = s.Text(3);
  g.scope = s.Text(4);
  g.patient = s.Text(5);
  g.encounter = s.Text(6);
  g.purpose_of_use = s.Text(7);
  g.nonce = s.Text(8);
  g.auth_time = s.Int(9);
  g.dpop_jkt = s.Text(10);
  out->redirect_uri = s.Text(11);
  out->code_challenge = s.Text(12);
  out->expires = s.Int(13);
  g.credential_version = s.Int(14);
  g.session = s.Text(15);
  (void)s.Step();
  return used == 1 ? CodeUse::kOk : CodeUse::kReplayed;
}

absl::StatusOr<int64_t> OAuthStore::CodeUses(const std::string& code_hash) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "SELECT used FROM codes WHERE hash=?");
  s.Bind(1, code_hash);
  auto row = s.Step();
  if (!row.ok()) return row.status();
  return *row ? s.Int(0) : int64_t{0};
}

// --- grants -------------------------------------------------------------------

absl::StatusOr<std::string> OAuthStore::AddGrant(const GrantData& g, const std::string& code_hash,
                                                 int64_t now, int64_t absolute_expires) {
  std::string id = HexEncode(RandomBytes(16));
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s,
          "INSERT INTO grants(id,client_id,username,fhir_user,scope,patient,encounter,purpose,"
          "auth_time,dpop_jkt,code_hash,created,absolute_expires,credential_version,session) "
          "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  s.Bind(1, id).Bind(2, g.client_id).Bind(3, g.username).Bind(4, g.fhir_user).Bind(5, g.scope);
  s.Bind(6, g.patient).Bind(7, g.encounter).Bind(8, g.purpose_of_use).Bind(9, g.auth_time);
  s.Bind(10, g.dpop_jkt).Bind(11, code_hash).Bind(12, now).Bind(13, absolute_expires);
  s.Bind(14, g.credential_version).Bind(15, g.session);
  if (auto st = s.Run(); !st.ok()) return st;
  return id;
}

absl::StatusOr<std::optional<GrantRecord>> OAuthStore::GetGrant(const std::string& id) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s,
          "SELECT id,client_id,username,fhir_user,scope,patient,encounter,purpose,auth_time,"
          "dpop_jkt,created,absolute_expires,revoked,credential_version,session FROM grants "
          "WHERE id=?");
  s.Bind(1, id);
  auto row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::optional<GrantRecord>();
  GrantRecord r;
  r.id = s.Text(0);
  r.data.client_id = s.Text(1);
  r.data.username = s.Text(2);
  r.data.fhir_user = s.Text(3);
  r.data.scope = s.Text(4);
  r.data.patient = s.Text(5);
  r.data.encounter = s.Text(6);
  r.data.purpose_of_use = s.Text(7);
  r.data.auth_time = s.Int(8);
  r.data.dpop_jkt = s.Text(9);
  r.created = s.Int(10);
  r.absolute_expires = s.Int(11);
  r.revoked = s.Int(12) != 0;
  r.data.credential_version = s.Int(13);
  r.data.session = s.Text(14);
  return std::optional<GrantRecord>(std::move(r));
}

namespace {
absl::Status RevokeGrantLocked(Db& db, const std::string& grant_id, int64_t now) {
  for (const char* sql : {"UPDATE grants SET revoked=1 WHERE id=?1",
                          "UPDATE refresh_tokens SET used=1 WHERE grant_id=?1",
                          "INSERT OR IGNORE INTO revoked_tokens(jti,exp,revoked_at) "
                          "SELECT jti,exp,?2 FROM access_tokens WHERE grant_id=?1 AND exp>?2"}) {
    auto s = db.Prepare(sql);
    if (!s.ok()) return s.status();
    s->Bind(1, grant_id).Bind(2, now);
    if (auto st = s->Run(); !st.ok()) return st;
  }
  return absl::OkStatus();
}
}  // namespace

absl::StatusOr<std::string> OAuthStore::RevokeGrantOfCode(const std::string& code_hash,
                                                          int64_t now) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "SELECT id FROM grants WHERE code_hash=?");
  s.Bind(1, code_hash);
  auto row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::string();
  std::string id = s.Text(0);
  (void)s.Step();
  if (auto st = impl_->db->Exec("BEGIN IMMEDIATE"); !st.ok()) return st;
  auto st = RevokeGrantLocked(*impl_->db, id, now);
  (void)impl_->db->Exec(st.ok() ? "COMMIT" : "ROLLBACK");
  if (!st.ok()) return st;
  return id;
}

absl::Status OAuthStore::RevokeGrant(const std::string& grant_id, int64_t now) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (auto st = impl_->db->Exec("BEGIN IMMEDIATE"); !st.ok()) return st;
  auto st = RevokeGrantLocked(*impl_->db, grant_id, now);
  (void)impl_->db->Exec(st.ok() ? "COMMIT" : "ROLLBACK");
  return st;
}

absl::Status OAuthStore::RevokeUserGrants(const std::string& username, int64_t now) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Db& db = *impl_->db;
  if (auto st = db.Exec("BEGIN IMMEDIATE"); !st.ok()) return st;
  auto work = [&]() -> absl::Status {
    std::vector<std::string> ids;
    auto sel = db.Prepare("SELECT id FROM grants WHERE username=? AND revoked=0");
    if (!sel.ok()) return sel.status();
    sel->Bind(1, username);
    for (;;) {
      auto row = sel->Step();
      if (!row.ok()) return row.status();
      if (!*row) break;
      ids.push_back(sel->Text(0));
    }
    // Unused codes: burnt (a later exchange counts as a replay).
    auto burn = db.Prepare("UPDATE codes SET used=used+1 WHERE username=?");
    if (!burn.ok()) return burn.status();
    if (auto st = burn->Bind(1, username).Run(); !st.ok()) return st;
    for (const auto& id : ids) {
      if (auto st = RevokeGrantLocked(db, id, now); !st.ok()) return st;
    }
    return absl::OkStatus();
  };
  absl::Status st = work();
  (void)db.Exec(st.ok() ? "COMMIT" : "ROLLBACK");
  return st;
}

absl::Status OAuthStore::AddRefresh(const std::string& token_hash, const std::string& grant_id,
                                    int64_t idle_expires) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "INSERT INTO refresh_tokens(hash,grant_id,idle_expires) VALUES(?,?,?)");
  s.Bind(1, token_hash).Bind(2, grant_id).Bind(3, idle_expires);
  return s.Run();
}

absl::StatusOr<std::optional<RefreshRecord>> OAuthStore::GetRefresh(const std::string& token_hash) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "SELECT grant_id,idle_expires,used FROM refresh_tokens WHERE hash=?");
  s.Bind(1, token_hash);
  auto row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::optional<RefreshRecord>();
  RefreshRecord r{s.Text(0), s.Int(1), s.Int(2) != 0};
  return std::optional<RefreshRecord>(std::move(r));
}

absl::StatusOr<bool> OAuthStore::UseRefresh(const std::string& token_hash) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "UPDATE refresh_tokens SET used=1 WHERE hash=? AND used=0");
  s.Bind(1, token_hash);
  if (auto st = s.Run(); !st.ok()) return st;
  return sqlite3_changes(impl_->db->raw()) == 1;
}

absl::Status OAuthStore::TouchRefresh(const std::string& token_hash, int64_t idle_expires) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "UPDATE refresh_tokens SET idle_expires=? WHERE hash=?");
  s.Bind(1, idle_expires).Bind(2, token_hash);
  return s.Run();
}

absl::Status OAuthStore::AddAccessToken(const std::string& jti, const std::string& grant_id,
                                        int64_t exp) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "INSERT INTO access_tokens(jti,grant_id,exp) VALUES(?,?,?)");
  s.Bind(1, jti).Bind(2, grant_id).Bind(3, exp);
  return s.Run();
}

absl::Status OAuthStore::RevokeAccessToken(const std::string& jti, int64_t exp, int64_t now) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "INSERT OR IGNORE INTO revoked_tokens(jti,exp,revoked_at) VALUES(?,?,?)");
  s.Bind(1, jti).Bind(2, exp).Bind(3, now);
  return s.Run();
}

absl::StatusOr<std::vector<std::pair<std::string, int64_t>>> OAuthStore::RevokedSince(int64_t since,
                                                                                      int64_t now) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  FW_PREP(s, "SELECT jti,exp FROM revoked_tokens WHERE revoked_at>=? AND exp>?");
  s.Bind(1, since).Bind(2, now);
  std::vector<std::pair<std::string, int64_t>> out;
  for (;;) {
    auto row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.emplace_back(s.Text(0), s.Int(1));
  }
  return out;
}

absl::Status OAuthStore::Purge(int64_t now) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (const char* sql :
       {"DELETE FROM codes WHERE expires<?1 - 3600", "DELETE FROM launches WHERE expires<?1",
        "DELETE FROM revoked_tokens WHERE exp<?1", "DELETE FROM access_tokens WHERE exp<?1",
        "DELETE FROM refresh_tokens WHERE idle_expires<?1",
        "DELETE FROM grants WHERE absolute_expires<?1 AND NOT EXISTS (SELECT 1 FROM "
        "access_tokens a WHERE a.grant_id=grants.id)"}) {
    auto s = impl_->db->Prepare(sql);
    if (!s.ok()) return s.status();
    s->Bind(1, now);
    if (auto st = s->Run(); !st.ok()) return st;
  }
  return absl::OkStatus();
}

#undef FW_PREP

}  // namespace fhirward::oauth
