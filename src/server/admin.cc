#include "server/admin.h"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "audit/audit_log.h"
#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/password.h"
#include "crypto/totp.h"
#include "json/value.h"
#include "oauth/authorization_server.h"
#include "oauth/key_ring.h"
#include "oauth/oauth_store.h"
#include "policy/policy.h"
#include "server/config.h"
#include "server/instance.h"
#include "server/key_admin.h"
#include "server/policy_runtime.h"
#include "store/internal/sqlite.h"

namespace fhirward::server {
namespace {

constexpr size_t kMinPassword = 12;
// Tokens live at most an hour; ID tokens too. Plus clock leeway.
constexpr int64_t kKeyOverlapSeconds = 3600 + 300;

struct Opened {
  std::unique_ptr<Instance> inst;
  std::unique_ptr<oauth::OAuthStore> store;
};

absl::StatusOr<Opened> Open(const std::string& data_dir) {
  auto inst = Instance::Open(data_dir, /*create=*/false, "");
  if (!inst.ok()) return inst.status();
  auto store = oauth::OAuthStore::Open((*inst)->oauth_db_path());
  if (!store.ok()) return store.status();
  return Opened{std::move(*inst), std::move(*store)};
}

bool ValidName(std::string_view s, size_t max = 128) {
  return !s.empty() && s.size() <= max && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' ||
           c == '@';
  });
}

bool ValidFhirUser(std::string_view s) {
  for (std::string_view prefix : {"Practitioner/", "Patient/", "RelatedPerson/", "Person/"}) {
    if (s.substr(0, prefix.size()) == prefix) {
      std::string_view id = s.substr(prefix.size());
      return !id.empty() && id.size() <= 64 && std::all_of(id.begin(), id.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
      });
    }
  }
  return false;
}

// Who ran the command, as the operating system knows them.
std::string OsUser() {
  const uid_t uid = ::getuid();
  std::string name = "?";
  struct passwd pw {};
  struct passwd* found = nullptr;
  char buf[1024];
  if (::getpwuid_r(uid, &pw, buf, sizeof buf, &found) == 0 && found != nullptr) {
    name = found->pw_name;
  }
  return "fhirward-cli uid=" + std::to_string(uid) + "(" + name + ")";
}

// Appends the record of an administrative act done through the CLI (who holds
// which role, which clients exist, which key signs): the CLI signs no tree
// heads, the server's next head covers the record. Never a secret: no
// password, client secret, TOTP seed or launch id goes into `r`. Called after
// the change and after its output (a secret the change made is printed even
// when the record cannot be appended: the command then fails saying so).
absl::Status AuditAdmin(const Instance& inst, audit::AuditRecord r) {
  auto unaudited = [](const absl::Status& why) {
    return Error(ErrorCode::kAuditUnavailable,
                 "the change was made but could not be audited: " + std::string(why.message()));
  };
  auto log = audit::AuditLog::Open(inst.audit_db_path(), inst.audit_mac_key().Clone());
  if (!log.ok()) return unaudited(log.status());
  r.time = FormatInstant(SystemClock::Get().Now());
  r.request_id = RandomUuid();
  if (r.subject.empty()) r.subject = "fhirward-cli";
  r.user_agent = OsUser();
  if (r.outcome.empty()) r.outcome = "success";
  auto seq = (*log)->Append(r);
  (*log)->Close();
  return seq.ok() ? absl::OkStatus() : unaudited(seq.status());
}

audit::AuditRecord AdminRecord(std::string action, std::string type, std::string id,
                               std::string decision = {}) {
  audit::AuditRecord r;
  r.action = std::move(action);
  r.resource_type = std::move(type);
  r.resource_id = std::move(id);
  r.decision = std::move(decision);
  return r;
}

std::string GeneratePassword() {
  // 120 bits, in groups easy to type.
  std::string raw = Base64UrlEncode(RandomBytes(15));
  return raw.substr(0, 5) + "-" + raw.substr(5, 5) + "-" + raw.substr(10, 5) + "-" +
         raw.substr(15, 5);
}

std::string NormalizeRoles(std::string roles) {
  std::replace(roles.begin(), roles.end(), ',', ' ');
  std::istringstream in(roles);
  std::string r, out;
  while (in >> r) out += (out.empty() ? "" : " ") + r;
  return out;
}

absl::Status CheckScopes(const std::string& scope) {
  std::istringstream in(scope);
  std::string s;
  while (in >> s) {
    static const char* kPlain[] = {"openid",         "fhirUser",       "profile",
                                   "launch",         "launch/patient", "launch/encounter",
                                   "offline_access", "online_access",  "introspect"};
    bool plain =
        std::any_of(std::begin(kPlain), std::end(kPlain), [&](const char* p) { return s == p; });
    if (!plain && !policy::ParseResourceScope(s)) {
      return Error(ErrorCode::kInvalidParameter, "not a SMART scope: " + s);
    }
  }
  return absl::OkStatus();
}

// The argon2id parameters the server uses (its [oauth] section), so that new
// hashes cost what the server's dummy verification for unknown users costs.
absl::StatusOr<crypto::Argon2Params> Argon2From(const std::string& config_file) {
  Config config;
  if (!config_file.empty()) {
    auto loaded = LoadConfig(config_file, config);
    if (!loaded.ok()) return loaded.status();
    config = std::move(*loaded);
  }
  crypto::Argon2Params p;
  p.m_cost_kib = static_cast<uint32_t>(config.oauth_argon2_memory_kib);
  p.t_cost = static_cast<uint32_t>(config.oauth_argon2_iterations);
  return p;
}

// The stored hash of a new password (at least kMinPassword characters).
absl::StatusOr<std::string> NewPasswordHash(const std::string& password,
                                            const std::string& config_file) {
  if (password.size() < kMinPassword) {
    return Error(ErrorCode::kInvalidParameter, "passwords have at least 12 characters");
  }
  auto params = Argon2From(config_file);
  if (!params.ok()) return params.status();
  return crypto::HashPassword(password, *params);
}

std::string Time(int64_t t) {
  return t == 0 ? "-"
                : FormatInstant(std::chrono::system_clock::time_point(std::chrono::seconds(t)));
}

}  // namespace

absl::Status UsersAdd(const UserArgs& a, std::ostream& out) {
  if (!ValidName(a.username)) {
    return Error(ErrorCode::kInvalidParameter, "username: letters, digits, - . _ @ (1-128)");
  }
  if (!ValidFhirUser(a.fhir_user)) {
    return Error(ErrorCode::kInvalidParameter,
                 "--fhir-user must be Practitioner/ID, Patient/ID, RelatedPerson/ID or Person/ID");
  }
  auto o = Open(a.data_dir);
  if (!o.ok()) return o.status();
  std::string password = a.password.empty() ? GeneratePassword() : a.password;
  auto hash = NewPasswordHash(password, a.config_file);
  if (!hash.ok()) return hash.status();
  oauth::User u;
  u.username = a.username;
  u.password_hash = *hash;
  u.fhir_user = a.fhir_user;
  u.roles = NormalizeRoles(a.roles);
  u.created = SystemClock::Get().NowSeconds();
  std::string uri;
  if (a.totp) {
    SecretBytes seed = crypto::GenerateTotpSecret();
    auto wrapped = o->inst->kek().Wrap(seed, "fhirward-totp-v1:" + a.username);
    if (!wrapped.ok()) return wrapped.status();
    u.totp_secret_wrapped = *wrapped;
    uri = crypto::TotpUri("fhirward", a.username, seed.UnsafeView());
  }
  if (auto s = o->store->AddUser(u); !s.ok()) return s;
  out << "user " << a.username << " added (" << u.fhir_user
      << (u.roles.empty() ? "" : ", roles " + u.roles) << ")\n";
  if (a.password.empty()) out << "password: " << password << "\n";
  if (!uri.empty()) out << "totp: " << uri << "\n";
  // Who holds which role is on the trail (a new key-admin or auditor above all).
  if (auto s = AuditAdmin(*o->inst, AdminRecord("user.add", "User", a.username,
                                                "fhir_user=" + u.fhir_user + " roles=" + u.roles +
                                                    (a.totp ? " totp" : "")));
      !s.ok()) {
    return s;
  }
  return absl::OkStatus();
}

absl::Status UsersList(const std::string& data_dir, std::ostream& out) {
  auto o = Open(data_dir);
  if (!o.ok()) return o.status();
  auto users = o->store->ListUsers();
  if (!users.ok()) return users.status();
  const int64_t now = SystemClock::Get().NowSeconds();
  for (const auto& u : *users) {
    out << u.username << "\t" << u.fhir_user << "\troles=" << (u.roles.empty() ? "-" : u.roles)
        << "\ttotp=" << (u.totp_secret_wrapped.empty() ? "no" : "yes") << "\t"
        << (u.disabled             ? "disabled"
            : u.locked_until > now ? "locked"
                                   : "active")
        << "\n";
  }
  return absl::OkStatus();
}

absl::Status UsersDisable(const std::string& data_dir, const std::string& username, bool disable,
                          std::ostream& out) {
  auto o = Open(data_dir);
  if (!o.ok()) return o.status();
  if (auto s = o->store->SetUserDisabled(username, disable); !s.ok()) return s;
  // Everything the user was granted ends now (sessions end at their next use).
  if (disable) {
    if (auto s = o->store->RevokeUserGrants(username, SystemClock::Get().NowSeconds()); !s.ok()) {
      return s;
    }
  }
  if (auto s = AuditAdmin(*o->inst, AdminRecord(disable ? "user.disable" : "user.enable", "User",
                                                username, disable ? "grants revoked" : ""));
      !s.ok()) {
    return s;
  }
  out << "user " << username << (disable ? " disabled\n" : " enabled\n");
  return absl::OkStatus();
}

absl::Status UsersResetPassword(const UserArgs& a, std::ostream& out) {
  auto o = Open(a.data_dir);
  if (!o.ok()) return o.status();
  std::string password = a.password.empty() ? GeneratePassword() : a.password;
  auto hash = NewPasswordHash(password, a.config_file);
  if (!hash.ok()) return hash.status();
  if (auto s = o->store->SetPassword(a.username, *hash); !s.ok()) return s;
  if (auto s = o->store->RevokeUserGrants(a.username, SystemClock::Get().NowSeconds()); !s.ok()) {
    return s;
  }
  out << "password of " << a.username
      << " reset (lockout cleared; sessions and grants of the user revoked)\n";
  if (a.password.empty()) out << "password: " << password << "\n";
  if (auto s = AuditAdmin(*o->inst, AdminRecord("user.reset-password", "User", a.username,
                                                "lockout cleared, grants revoked"));
      !s.ok()) {
    return s;
  }
  return absl::OkStatus();
}

absl::Status ClientsAdd(const ClientArgs& a, std::ostream& out) {
  if (!ValidName(a.client_id)) {
    return Error(ErrorCode::kInvalidParameter, "client id: letters, digits, - . _ @ (1-128)");
  }
  auto auth = oauth::ClientAuthFromName(a.auth);
  if (!auth) {
    return Error(ErrorCode::kInvalidParameter,
                 "--auth must be none, client_secret_basic, private_key_jwt or tls_client_auth");
  }
  if (auto s = CheckScopes(a.scope); !s.ok()) return s;
  std::vector<std::string> grants = a.grant_types;
  if (grants.empty()) grants = {"authorization_code", "refresh_token"};
  for (const auto& g : grants) {
    if (g != "authorization_code" && g != "refresh_token" && g != "client_credentials") {
      return Error(ErrorCode::kInvalidParameter, "unsupported grant type " + g);
    }
  }
  bool code = std::find(grants.begin(), grants.end(), "authorization_code") != grants.end();
  bool cc = std::find(grants.begin(), grants.end(), "client_credentials") != grants.end();
  if (cc && *auth == oauth::ClientAuth::kNone) {
    return Error(ErrorCode::kInvalidParameter, "client_credentials needs a confidential client");
  }
  // `introspect` lets a client read every user's access-token details: only
  // for a confidential client that never acts for a user (a resource server).
  {
    std::istringstream in(a.scope);
    std::string s;
    while (in >> s) {
      if (s == "introspect" && (*auth == oauth::ClientAuth::kNone || code)) {
        return Error(ErrorCode::kInvalidParameter,
                     "introspect is for confidential clients without authorization_code "
                     "(resource servers)");
      }
    }
  }
  if (code && a.redirect_uris.empty()) {
    return Error(ErrorCode::kInvalidParameter, "authorization_code needs --redirect-uri");
  }
  for (const auto& r : a.redirect_uris) {
    if (!oauth::IsRegistrableRedirectUri(r)) {
      return Error(ErrorCode::kInvalidParameter,
                   "redirect URIs: https, http only on loopback, no fragment: " + r);
    }
  }
  if (a.sender_constraint != "" && a.sender_constraint != "dpop" && a.sender_constraint != "mtls") {
    return Error(ErrorCode::kInvalidParameter, "--sender-constraint must be dpop or mtls");
  }
  if (a.id_token_alg != "RS256" && a.id_token_alg != "ES256") {
    return Error(ErrorCode::kInvalidParameter, "--id-token-alg must be RS256 or ES256");
  }
  oauth::Client c;
  c.client_id = a.client_id;
  c.name = a.name.empty() ? a.client_id : a.name;
  c.auth = *auth;
  c.redirect_uris = a.redirect_uris;
  c.scope = a.scope;
  c.grant_types = grants;
  c.rotate_refresh = !a.no_rotate_refresh;
  c.sender_constraint = a.sender_constraint;
  c.id_token_alg = a.id_token_alg;
  c.created = SystemClock::Get().NowSeconds();
  std::string secret;
  switch (*auth) {
    case oauth::ClientAuth::kSecretBasic:
      secret = Base64UrlEncode(RandomBytes(32));
      c.secret_hash = oauth::HashClientSecret(secret);
      if (a.secret_days > 0) c.secret_expires = c.created + a.secret_days * 86400;
      break;
    case oauth::ClientAuth::kPrivateKeyJwt: {
      if (a.jwks_file.empty() == a.jwks_uri.empty()) {
        return Error(ErrorCode::kInvalidParameter,
                     "private_key_jwt needs --jwks-file or --jwks-uri");
      }
      if (!a.jwks_file.empty()) {
        std::ifstream in(a.jwks_file, std::ios::binary);
        if (!in) return Error(ErrorCode::kInvalidParameter, "cannot read " + a.jwks_file);
        std::stringstream ss;
        ss << in.rdbuf();
        auto doc = json::Parse(ss.str());
        if (!doc.ok()) return Error(ErrorCode::kInvalidParameter, a.jwks_file + " is not JSON");
        auto keys = jose::KeySet::FromJwks(*doc);
        if (!keys.ok()) {
          return Error(
              ErrorCode::kInvalidParameter,
              a.jwks_file + ": no usable public signing key (" + DetailOf(keys.status()) + ")");
        }
        for (const char* priv : {"d", "p", "q", "k"}) {
          if (ss.str().find(std::string("\"") + priv + "\"") != std::string::npos) {
            return Error(ErrorCode::kInvalidParameter,
                         a.jwks_file + " holds private key material: register public keys only");
          }
        }
        c.jwks = json::Write(keys->ToJwks());
      } else {
        if (a.jwks_uri.rfind("https://", 0) != 0) {
          return Error(ErrorCode::kInvalidParameter, "--jwks-uri must be https");
        }
        c.jwks_uri = a.jwks_uri;
      }
      break;
    }
    case oauth::ClientAuth::kTlsClientAuth:
      if (a.tls_subject.empty()) {
        return Error(ErrorCode::kInvalidParameter,
                     "tls_client_auth needs --tls-subject (RFC 2253, e.g. CN=app,O=Hospital)");
      }
      c.tls_subject_dn = a.tls_subject;
      break;
    case oauth::ClientAuth::kNone:
      break;
  }
  auto o = Open(a.data_dir);
  if (!o.ok()) return o.status();
  if (auto s = o->store->AddClient(c); !s.ok()) return s;
  {
    std::string grants_list;
    for (const auto& g : c.grant_types) grants_list += (grants_list.empty() ? "" : ",") + g;
    audit::AuditRecord r =
        AdminRecord("client.add", "Client", c.client_id,
                    "auth=" + a.auth + " grants=" + grants_list + " scope=" + c.scope +
                        " redirect_uris=" + std::to_string(c.redirect_uris.size()) +
                        (c.sender_constraint.empty() ? "" : " bound=" + c.sender_constraint));
    r.client_id = c.client_id;
    out << "client " << c.client_id << " added (" << a.auth << ")\n";
    if (!secret.empty()) out << "client_secret: " << secret << "\n";
    return AuditAdmin(*o->inst, std::move(r));
  }
}

absl::Status ClientsList(const std::string& data_dir, std::ostream& out) {
  auto o = Open(data_dir);
  if (!o.ok()) return o.status();
  auto clients = o->store->ListClients();
  if (!clients.ok()) return clients.status();
  for (const auto& c : *clients) {
    std::string grants, redirects;
    for (const auto& g : c.grant_types) grants += (grants.empty() ? "" : ",") + g;
    for (const auto& r : c.redirect_uris) redirects += (redirects.empty() ? "" : ",") + r;
    out << c.client_id << "\t" << oauth::ClientAuthName(c.auth) << "\tgrants=" << grants
        << "\tscope=" << c.scope << "\tredirect=" << (redirects.empty() ? "-" : redirects)
        << "\tsecret_expires=" << Time(c.secret_expires)
        << (c.sender_constraint.empty() ? "" : "\tbound=" + c.sender_constraint) << "\t"
        << (c.disabled ? "disabled" : "active") << "\n";
  }
  return absl::OkStatus();
}

absl::Status ClientsDisable(const std::string& data_dir, const std::string& client_id, bool disable,
                            std::ostream& out) {
  auto o = Open(data_dir);
  if (!o.ok()) return o.status();
  if (auto s = o->store->SetClientDisabled(client_id, disable); !s.ok()) return s;
  {
    audit::AuditRecord r =
        AdminRecord(disable ? "client.disable" : "client.enable", "Client", client_id);
    r.client_id = client_id;
    if (auto st = AuditAdmin(*o->inst, std::move(r)); !st.ok()) return st;
  }
  out << "client " << client_id << (disable ? " disabled\n" : " enabled\n");
  return absl::OkStatus();
}

absl::Status ClientsRotateSecret(const ClientArgs& a, std::ostream& out) {
  auto o = Open(a.data_dir);
  if (!o.ok()) return o.status();
  std::string secret = Base64UrlEncode(RandomBytes(32));
  const int64_t now = SystemClock::Get().NowSeconds();
  int64_t expires = a.secret_days > 0 ? now + a.secret_days * 86400 : 0;
  if (auto s = o->store->RotateSecret(a.client_id, oauth::HashClientSecret(secret), now,
                                      a.grace_seconds, expires);
      !s.ok()) {
    return s;
  }
  {
    audit::AuditRecord r =
        AdminRecord("client.rotate-secret", "Client", a.client_id,
                    "previous secret valid " + std::to_string(a.grace_seconds) + " s" +
                        (expires ? ", new one expires " + Time(expires) : ""));
    r.client_id = a.client_id;
    out << "client_secret: " << secret << "\n";
    out << "the previous secret works for " << a.grace_seconds << " more seconds\n";
    return AuditAdmin(*o->inst, std::move(r));
  }
}

absl::Status LaunchCreate(const LaunchArgs& a, std::ostream& out) {
  auto valid_id = [](std::string_view s) {
    return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
    });
  };
  if (!valid_id(a.patient))
    return Error(ErrorCode::kInvalidParameter, "--patient must be a FHIR id");
  if (!a.encounter.empty() && !valid_id(a.encounter)) {
    return Error(ErrorCode::kInvalidParameter, "--encounter must be a FHIR id");
  }
  if (a.ttl_seconds < 10 || a.ttl_seconds > 86400) {
    return Error(ErrorCode::kInvalidParameter, "--ttl must be 10-86400 seconds");
  }
  auto o = Open(a.data_dir);
  if (!o.ok()) return o.status();
  oauth::LaunchContext l;
  l.id = Base64UrlEncode(RandomBytes(16));
  l.patient = a.patient;
  l.encounter = a.encounter;
  l.client_id = a.client_id;
  l.expires = SystemClock::Get().NowSeconds() + a.ttl_seconds;
  if (auto s = o->store->AddLaunch(l); !s.ok()) return s;
  {
    // The launch id is a handle to the context: it stays out of the trail.
    audit::AuditRecord r =
        AdminRecord("launch.create", "Launch", "",
                    (a.encounter.empty() ? "" : "encounter=" + a.encounter + " ") +
                        "ttl=" + std::to_string(a.ttl_seconds) + "s");
    r.patient_id = a.patient;
    r.client_id = a.client_id;
    out << l.id << "\n";
    return AuditAdmin(*o->inst, std::move(r));
  }
}

absl::Status KeysRotateSigning(const RotateArgs& a, std::ostream& out) {
  auto alg = jose::AlgorithmFromName(a.alg);
  if (!alg || (*alg != jose::Algorithm::kES256 && *alg != jose::Algorithm::kRS256)) {
    return Error(ErrorCode::kInvalidParameter, "--alg must be ES256 or RS256");
  }
  if (a.activate_in < 0 || a.activate_in > 7 * 86400) {
    return Error(ErrorCode::kInvalidParameter, "--activate-in must be 0-604800 seconds");
  }
  auto inst = Instance::Open(a.data_dir, /*create=*/false, "");
  if (!inst.ok()) return inst.status();
  const int64_t now = SystemClock::Get().NowSeconds();
  // Make sure the manifest exists (migrates an older data dir).
  auto ring = oauth::SigningKeyRing::Open((*inst)->keys_dir(), (*inst)->signing_kid(), now);
  if (!ring.ok()) return ring.status();
  auto info = oauth::SigningKeyRing::Rotate((*inst)->keys_dir(), *alg, now, a.activate_in,
                                            kKeyOverlapSeconds);
  if (!info.ok()) return info.status();
  out << "new " << a.alg << " key " << info->kid << " published now, signs from "
      << Time(info->activate_at) << "\n";
  return AuditAdmin(**inst, AdminRecord("key.rotate-signing", "SigningKey", info->kid,
                                        "alg=" + a.alg + " signs from " + Time(info->activate_at)));
}

absl::Status KeysList(const std::string& data_dir, std::ostream& out) {
  auto inst = Instance::Open(data_dir, /*create=*/false, "");
  if (!inst.ok()) return inst.status();
  const int64_t now = SystemClock::Get().NowSeconds();
  auto ring = oauth::SigningKeyRing::Open((*inst)->keys_dir(), (*inst)->signing_kid(), now);
  if (!ring.ok()) return ring.status();
  for (const auto& k : (*ring)->Keys()) {
    std::string state = k.retire_at != 0 && k.retire_at <= now ? "retired"
                        : k.activate_at > now                  ? "published"
                                                               : "active";
    auto active = (*ring)->Active(k.alg, now);
    if (state == "active" && active && active->kid() != k.kid) state = "retiring";
    out << k.kid << "\t" << jose::AlgorithmName(k.alg) << "\t" << state
        << "\tactivate_at=" << Time(k.activate_at) << "\tretire_at=" << Time(k.retire_at) << "\n";
  }
  return absl::OkStatus();
}

// --- break-glass review queue ------------------------------------------------------

namespace {

// How many audit records carry the episode (its accesses).
int64_t EpisodeAccesses(const Instance& inst, const std::string& id) {
  auto db = store::internal::Db::Open(inst.audit_db_path(), /*read_only=*/true);
  if (!db.ok()) return -1;
  auto st = (*db)->Prepare(
      "SELECT count(*) FROM audit_records WHERE json_extract(record, '$.break_glass') = ?1");
  if (!st.ok()) return -1;
  st->Bind(1, id);
  auto row = st->Step();
  return row.ok() && *row ? st->Int(0) : -1;
}

}  // namespace

absl::Status BreakGlassList(const std::string& data_dir, bool all, std::ostream& out) {
  auto opened = Open(data_dir);
  if (!opened.ok()) return opened.status();
  auto store = BreakGlassStore::Open(opened->inst->policy_db_path(), &opened->inst->kek());
  if (!store.ok()) return store.status();
  auto list = (*store)->List(!all);
  if (!list.ok()) return list.status();
  const int64_t now = SystemClock::Get().NowSeconds();
  for (const BreakGlassRecord& r : *list) {
    const policy::BreakGlassEpisode& e = r.episode;
    out << e.id << "\t" << (e.expires > now ? "open" : "expired") << "\tstarted=" << Time(e.started)
        << "\texpires=" << Time(e.expires) << "\tsubject=" << e.subject << "\tissuer=" << e.issuer
        << "\tclient=" << e.client_id << "\trole=" << e.role << "\tpurpose=" << e.purposes
        << "\taccesses=" << EpisodeAccesses(*opened->inst, e.id);
    if (r.reviewed_at != 0) {
      out << "\treviewed=" << Time(r.reviewed_at) << "\treviewer=" << r.reviewer
          << "\toutcome=" << r.outcome;
    } else {
      out << "\treview=pending";
    }
    out << "\n\tjustification: " << e.reason << "\n";
    if (!r.note.empty()) out << "\tnote: " << r.note << "\n";
  }
  if (list->empty()) out << (all ? "no break-glass episodes\n" : "no episode awaits review\n");
  return absl::OkStatus();
}

absl::Status BreakGlassReview(const BreakGlassReviewArgs& a, std::ostream& out) {
  if (a.outcome != "justified" && a.outcome != "unjustified") {
    return Error(ErrorCode::kInvalidParameter, "--outcome must be justified or unjustified");
  }
  if (a.note.empty() || a.note.size() > 2000) {
    return Error(ErrorCode::kInvalidParameter, "--note is required (at most 2000 characters)");
  }
  auto opened = Open(a.data_dir);
  if (!opened.ok()) return opened.status();
  // Every attempt is on the trail under the episode (AuditEvent?break-glass=ID),
  // a refusal with its reason; the note stays sealed in policy.db.
  auto audit_review = [&](const std::string& who, const std::string& outcome,
                          const std::string& why, int status) {
    audit::AuditRecord r = AdminRecord("breakglass.review", "BreakGlass", a.id,
                                       why.empty() ? "outcome=" + a.outcome : "");
    r.subject = who;
    r.break_glass = a.id;
    r.outcome = outcome;
    r.status_code = status;
    r.error = why;
    return AuditAdmin(*opened->inst, std::move(r));
  };
  auto refuse = [&](const std::string& who, const std::string& why,
                    const std::string& message) -> absl::Status {
    if (auto s = audit_review(who, "denied", why, 403); !s.ok()) return s;
    return Error(ErrorCode::kForbidden, message);
  };
  // The reviewer is an auditor known to the authorization server (password,
  // and TOTP code when enrolled), and not the person who broke the glass.
  auto cred =
      CheckCliCredential(*opened->inst, *opened->store, a.reviewer, a.password, a.totp, "auditor");
  if (!cred.ok()) return cred.status();
  const std::string& who = cred->actor;
  if (cred->why == "not_auditor") {
    return refuse(who, cred->why, "the reviewer needs the auditor role");
  }
  if (!cred->ok()) {
    return refuse(
        who, cred->why,
        "reviewer " + a.reviewer + ": not an active user, wrong password, or wrong TOTP code");
  }
  auto store = BreakGlassStore::Open(opened->inst->policy_db_path(), &opened->inst->kek());
  if (!store.ok()) return store.status();
  auto list = (*store)->List(false);
  if (!list.ok()) return list.status();
  for (const BreakGlassRecord& r : *list) {
    if (r.episode.id == a.id && r.episode.subject == a.reviewer) {
      return refuse(who, "own_episode", "an episode is reviewed by someone else");
    }
  }
  if (auto s =
          (*store)->Review(a.id, a.reviewer, a.outcome, a.note, SystemClock::Get().NowSeconds());
      !s.ok()) {
    (void)audit_review(who, "failed", "not_reviewable", 409);  // unknown or already reviewed
    return s;
  }
  if (auto s = audit_review(who, "success", "", 200); !s.ok()) return s;
  out << "episode " << a.id << " reviewed: " << a.outcome << "\n";
  return absl::OkStatus();
}

}  // namespace fhirward::server
