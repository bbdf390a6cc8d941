// Persistent state of the authorization server: users, clients, EHR launch
// contexts, authorization codes, grants, refresh tokens and revoked access
// tokens, in one SQLite database (DATA/db/oauth.db, WAL) shared by the server
// and the command line (`fhirward users|clients|launch`), so that a change made
// with the CLI applies to the next request without a restart.
//
// Secrets are never stored: passwords as argon2id PHC strings, client secrets,
// codes and refresh tokens as SHA-256 of their (256-bit random) value, TOTP
// seeds wrapped by the instance KEK. Single-use rules (codes, refresh tokens)
// are enforced by conditional UPDATEs, so two nodes or two threads racing on
// the same code cannot both win.
//
// Thread-safe (one connection behind a mutex; statements are short).
#ifndef FHIRWARD_OAUTH_OAUTH_STORE_H_
#define FHIRWARD_OAUTH_OAUTH_STORE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fhirward::oauth {

struct User {
  std::string username;
  std::string password_hash;        // argon2id PHC
  std::string fhir_user;            // "Practitioner/123", "Patient/p1", "RelatedPerson/r"
  std::string roles;                // space-separated
  std::string totp_secret_wrapped;  // KEK-wrapped seed; empty: no second factor
  int64_t totp_last_step = 0;
  bool disabled = false;
  int64_t failed_logins = 0;  // consecutive
  int64_t locked_until = 0;   // unix seconds
  int64_t created = 0;
  // Incremented by every password reset, disable and enable: sessions, codes
  // and grants made under an older version end.
  int64_t credential_version = 0;
};

enum class ClientAuth { kNone, kSecretBasic, kPrivateKeyJwt, kTlsClientAuth };
std::string_view ClientAuthName(ClientAuth a);
std::optional<ClientAuth> ClientAuthFromName(std::string_view name);

struct Client {
  std::string client_id;
  std::string name;
  ClientAuth auth = ClientAuth::kNone;  // kNone: public client
  std::string secret_hash;              // SHA-256 hex of the current secret
  std::string previous_secret_hash;     // accepted until previous_secret_expires
  int64_t previous_secret_expires = 0;
  int64_t secret_expires = 0;  // 0: no expiry
  std::string jwks;            // inline JWKS (private_key_jwt)
  std::string jwks_uri;        // or fetched from here
  std::string tls_subject_dn;  // tls_client_auth: RFC 2253 subject of the certificate
  std::vector<std::string> redirect_uris;
  std::string scope;  // registered (allowed) scopes, space-separated
  std::vector<std::string> grant_types;
  bool rotate_refresh = true;          // refresh token rotation on every use
  std::string sender_constraint;       // "", "dpop" or "mtls": tokens must be bound
  std::string id_token_alg = "RS256";  // RS256 (OpenID default) or ES256
  bool disabled = false;
  int64_t created = 0;
  bool is_public() const { return auth == ClientAuth::kNone; }
  bool HasGrant(std::string_view g) const;
};

struct LaunchContext {
  std::string id;
  std::string patient;
  std::string encounter;
  int64_t expires = 0;
  std::string client_id;  // when set, only this client may use it
};

// What an authorization (a code, then a grant) carries.
struct GrantData {
  std::string client_id;
  std::string username;
  std::string fhir_user;
  std::string scope;  // granted
  std::string patient;
  std::string encounter;
  std::string purpose_of_use;  // space-separated HL7 v3 PurposeOfUse codes
  std::string nonce;           // OIDC nonce (codes only)
  int64_t auth_time = 0;
  std::string dpop_jkt;            // grant bound to a DPoP key (public clients' refresh tokens)
  int64_t credential_version = 0;  // the user's, when they authorized
  // online_access (without offline_access): the login session (hash of its id)
  // whose end ends the refresh tokens too.
  std::string session;
};

struct CodeRecord {
  GrantData grant;
  std::string redirect_uri;
  std::string code_challenge;
  int64_t expires = 0;
};

struct GrantRecord {
  std::string id;
  GrantData data;
  int64_t created = 0;
  int64_t absolute_expires = 0;
  bool revoked = false;
};

struct RefreshRecord {
  std::string grant_id;
  int64_t idle_expires = 0;
  bool used = false;
};

// Result of consuming a code.
enum class CodeUse { kOk, kUnknown, kReplayed, kOtherClient };

class OAuthStore {
 public:
  static absl::StatusOr<std::unique_ptr<OAuthStore>> Open(const std::string& path);
  ~OAuthStore();

  // --- users
  absl::Status AddUser(const User& u);  // kVersionConflict when the username exists
  absl::StatusOr<std::optional<User>> GetUser(const std::string& username);
  absl::StatusOr<std::vector<User>> ListUsers();
  absl::Status SetUserDisabled(const std::string& username, bool disabled);
  // `credential_change`: a new password (ends sessions and grants made before
  // it); false for a re-hash of the same password with stronger parameters.
  absl::Status SetPassword(const std::string& username, const std::string& hash,
                           bool credential_change = true);
  absl::Status SetTotp(const std::string& username, const std::string& wrapped_secret);
  // Key rotation: replaces the wrapped seed (same seed, new KEK version) only
  // if it is still `old_wrapped`; keeps the last used step (no replay window).
  absl::StatusOr<bool> RewrapTotp(const std::string& username, const std::string& old_wrapped,
                                  const std::string& new_wrapped);
  // Records a failed login; locks the account for `lock_seconds` once
  // `max_failures` consecutive failures are reached. Returns the new count.
  absl::StatusOr<int64_t> RecordLoginFailure(const std::string& username, int64_t now,
                                             int64_t max_failures, int64_t lock_seconds);
  absl::Status RecordLoginSuccess(const std::string& username);
  // Takes back one counted attempt (a right password while the second factor
  // is still to come: the count is only reset once the login is complete), and
  // the lock that attempt set, if the count is below `max_failures` again.
  absl::Status UndoLoginAttempt(const std::string& username, int64_t max_failures);
  // Stores the TOTP step just used; false when it is not newer than the stored one.
  absl::StatusOr<bool> UseTotpStep(const std::string& username, int64_t step);

  // --- clients
  absl::Status AddClient(const Client& c);
  absl::StatusOr<std::optional<Client>> GetClient(const std::string& client_id);
  absl::StatusOr<std::vector<Client>> ListClients();
  absl::Status SetClientDisabled(const std::string& client_id, bool disabled);
  // New secret hash; the old one stays valid for `grace_seconds`.
  absl::Status RotateSecret(const std::string& client_id, const std::string& new_hash, int64_t now,
                            int64_t grace_seconds, int64_t secret_expires);

  // --- EHR launch contexts
  absl::Status AddLaunch(const LaunchContext& l);
  absl::StatusOr<std::optional<LaunchContext>> GetLaunch(const std::string& id, int64_t now);
  // Removes and returns a live launch context: each launch is used once.
  absl::StatusOr<std::optional<LaunchContext>> ConsumeLaunch(const std::string& id, int64_t now);

  // --- authorization codes (stored by SHA-256 of the code)
  absl::Status AddCode(const std::string& code_hash, const CodeRecord& c);
  // Marks the code used when it belongs to `client_id`. kReplayed when it was
  // used before (the caller then revokes the grant issued from it); kUnknown
  // when it does not exist; kOtherClient (code untouched) when it belongs to
  // another client.
  absl::StatusOr<CodeUse> ConsumeCode(const std::string& code_hash, const std::string& client_id,
                                      CodeRecord* out);
  // How many times the code was presented by its client (a value above 1 means
  // a replay raced with the first exchange).
  absl::StatusOr<int64_t> CodeUses(const std::string& code_hash);

  // --- grants, refresh tokens, access tokens
  absl::StatusOr<std::string> AddGrant(const GrantData& g, const std::string& code_hash,
                                       int64_t now, int64_t absolute_expires);
  absl::StatusOr<std::optional<GrantRecord>> GetGrant(const std::string& id);
  // Revokes the grant issued from `code_hash`, if any; returns its id.
  absl::StatusOr<std::string> RevokeGrantOfCode(const std::string& code_hash, int64_t now);
  // Marks the grant revoked, all its refresh tokens used, and every access
  // token issued under it revoked (recorded in the revocation list).
  absl::Status RevokeGrant(const std::string& grant_id, int64_t now);
  // Revokes every live grant of a user and burns their unused codes (disable,
  // password reset).
  absl::Status RevokeUserGrants(const std::string& username, int64_t now);
  absl::Status AddRefresh(const std::string& token_hash, const std::string& grant_id,
                          int64_t idle_expires);
  absl::StatusOr<std::optional<RefreshRecord>> GetRefresh(const std::string& token_hash);
  // Marks a refresh token used; false when it was already used (a reuse).
  absl::StatusOr<bool> UseRefresh(const std::string& token_hash);
  absl::Status TouchRefresh(const std::string& token_hash, int64_t idle_expires);
  // Records an access token issued under a grant (so that revoking the grant revokes it).
  absl::Status AddAccessToken(const std::string& jti, const std::string& grant_id, int64_t exp);
  // Adds one access token to the revocation list.
  absl::Status RevokeAccessToken(const std::string& jti, int64_t exp, int64_t now);
  // Revoked access tokens that have not expired yet, revoked at or after `since`.
  absl::StatusOr<std::vector<std::pair<std::string, int64_t>>> RevokedSince(int64_t since,
                                                                            int64_t now);
  // Drops expired codes, launches, refresh tokens and revocation entries.
  absl::Status Purge(int64_t now);

 private:
  struct Impl;
  explicit OAuthStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fhirward::oauth

#endif  // FHIRWARD_OAUTH_OAUTH_STORE_H_
