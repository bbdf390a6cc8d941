// The built-in OAuth 2 / SMART App Launch 2.2 authorization server.
//
// Endpoints (all under the FHIR base, which is also the issuer):
//   GET  /.well-known/smart-configuration, /.well-known/openid-configuration,
//        /.well-known/oauth-authorization-server, /jwks
//   GET|POST /authorize, POST /authorize/login|totp|consent (server-rendered pages)
//   POST /token (authorization_code + PKCE S256, refresh_token, client_credentials)
//   POST /revoke (RFC 7009), /introspect (RFC 7662), /par (RFC 9126)
//   GET|POST /userinfo (OpenID Connect)
//
// Rules are those of docs/oauth.md (derived from ../shared/design/OAUTH_SMART.md);
// every refusal carries an RFC 6749 `error` and every security event (login
// success or failure, lockout, token issue, refresh, reuse detection,
// revocation) is audited. Secrets never reach logs or audit records.
//
// Handle() blocks (argon2id, SQLite, audit commit): call it on a worker
// thread. Thread-safe.
#ifndef FHIRWARD_OAUTH_AUTHORIZATION_SERVER_H_
#define FHIRWARD_OAUTH_AUTHORIZATION_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "audit/audit_log.h"
#include "common/clock.h"
#include "common/secret_bytes.h"
#include "crypto/kms.h"
#include "crypto/password.h"
#include "jose/dpop.h"
#include "net/message.h"
#include "oauth/key_ring.h"
#include "oauth/oauth_store.h"
#include "oauth/revocation.h"

namespace fhirward::oauth {

struct AuthServerOptions {
  std::string issuer;  // the FHIR base URL (no trailing slash); also the required `aud`
  int64_t access_token_seconds = 3600;  // user-facing apps (at most 3600)
  int64_t backend_token_seconds = 300;  // client_credentials (at most 300)
  int64_t code_seconds = 60;
  int64_t refresh_idle_seconds = 7 * 86400;
  int64_t refresh_absolute_seconds = 90 * 86400;
  int64_t session_idle_seconds = 900;  // automatic logoff
  int64_t session_absolute_seconds = 8 * 3600;
  int64_t login_form_seconds = 600;  // a pending authorization request lives this long
  int64_t max_login_failures = 5;
  int64_t lockout_seconds = 900;
  int64_t par_seconds = 60;
  int64_t client_assertion_max_seconds = 300;
  bool dpop_nonce_required = true;  // at the token endpoint
  crypto::Argon2Params argon2;
  std::string jwks_ca_file;  // trust for clients' jwks_uri (empty: system store)
};

struct AuthServerDeps {
  OAuthStore* store = nullptr;
  SigningKeyRing* keys = nullptr;
  audit::AuditLog* audit = nullptr;
  const crypto::KeyEncryptionService* kek = nullptr;  // unwraps TOTP seeds
  const Clock* clock = nullptr;
  RevocationList* revocations = nullptr;
  jose::ReplayCache* replay = nullptr;       // client assertion jti
  jose::ReplayCache* dpop_replay = nullptr;  // DPoP proof jti at /token and /userinfo
  const jose::DpopNonces* nonces = nullptr;  // DPoP nonces (shared with the resource server)
  const SecretBytes* session_key = nullptr;  // CSRF tokens
};

class AuthorizationServer {
 public:
  AuthorizationServer(AuthServerOptions options, AuthServerDeps deps);
  ~AuthorizationServer();

  // True for the paths this server answers (the caller routes them here).
  static bool Handles(std::string_view path);
  // When `records` is given, the request's audit records (security events) are
  // returned there for the caller to append, and the caller must not send the
  // response before they are durable; otherwise they are appended here.
  net::HttpResponse Handle(const net::HttpRequest& request,
                           std::vector<audit::AuditRecord>* records = nullptr);

  // Removes expired sessions and pending requests (called periodically).
  void Sweep();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Scope helpers shared with the CLI and tests.
// True when `requested` (one scope token) is allowed by the space-separated
// `registered` scopes: equal, or a resource scope covered by a registered one
// with the same context, the same type or `*`, a superset of permissions and
// no (or the same) query restriction. v1 forms are normalised first.
bool ScopeAllowed(std::string_view requested, std::string_view registered);

// A redirect URI a client may register: https (no fragment, no user info),
// http only on a loopback host (127.0.0.1, [::1], localhost; any port), or a
// private-use scheme (RFC 8252 §7.1, e.g. com.example.app:/cb).
bool IsRegistrableRedirectUri(std::string_view uri);

// The SHA-256 (hex) stored for a client secret.
std::string HashClientSecret(std::string_view secret);

// How a typed user name not known to exist appears in the audit trail (login
// pages and key-admin commands alike): it may be a password typed into the
// wrong field, so only a keyed hash (the same name gives the same value).
std::string AuditNameForUnknownUser(const SecretBytes& session_key, const std::string& typed);

}  // namespace fhirward::oauth

#endif  // FHIRWARD_OAUTH_AUTHORIZATION_SERVER_H_
