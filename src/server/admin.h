// Administration commands behind `fhirward users|clients|launch|keys`. They
// work on a data directory directly (the OAuth SQLite database and the key
// manifest), also while a server runs on it: changes apply to its next
// request (keys: within a second). Secrets they create (passwords, client
// secrets, TOTP seeds) are printed once and stored only hashed or wrapped.
#ifndef FHIRWARD_SERVER_ADMIN_H_
#define FHIRWARD_SERVER_ADMIN_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace fhirward::server {

struct UserArgs {
  std::string data_dir;
  std::string username;
  std::string fhir_user;    // Practitioner/ID, Patient/ID, RelatedPerson/ID
  std::string roles;        // comma or space separated
  std::string password;     // empty: generate one and print it
  bool totp = false;        // enrol a TOTP second factor and print its otpauth:// URI
  std::string config_file;  // optional: hash with the server's [oauth] argon2 parameters
};
absl::Status UsersAdd(const UserArgs& a, std::ostream& out);
absl::Status UsersList(const std::string& data_dir, std::ostream& out);
absl::Status UsersDisable(const std::string& data_dir, const std::string& username, bool disable,
                          std::ostream& out);
absl::Status UsersResetPassword(const UserArgs& a, std::ostream& out);

struct ClientArgs {
  std::string data_dir;
  std::string client_id;
  std::string name;
  std::string auth = "none";  // none | client_secret_basic | private_key_jwt | tls_client_auth
  std::vector<std::string> redirect_uris;
  std::string scope;
  std::vector<std::string> grant_types;
  std::string jwks_file;  // private_key_jwt: JWKS inline (read from this file)
  std::string jwks_uri;   // or fetched from here
  std::string tls_subject;
  bool no_rotate_refresh = false;
  std::string sender_constraint;  // "", dpop, mtls
  std::string id_token_alg = "RS256";
  int64_t secret_days = 0;        // client secret lifetime (0: none)
  int64_t grace_seconds = 86400;  // rotate-secret: how long the old secret still works
};
absl::Status ClientsAdd(const ClientArgs& a, std::ostream& out);
absl::Status ClientsList(const std::string& data_dir, std::ostream& out);
absl::Status ClientsDisable(const std::string& data_dir, const std::string& client_id, bool disable,
                            std::ostream& out);
absl::Status ClientsRotateSecret(const ClientArgs& a, std::ostream& out);

struct LaunchArgs {
  std::string data_dir;
  std::string patient;
  std::string encounter;
  std::string client_id;  // when set, only this app may use the launch
  int64_t ttl_seconds = 3600;
};
absl::Status LaunchCreate(const LaunchArgs& a, std::ostream& out);

struct RotateArgs {
  std::string data_dir;
  std::string alg = "ES256";
  int64_t activate_in = 300;  // publish this long before signing
};
absl::Status KeysRotateSigning(const RotateArgs& a, std::ostream& out);
absl::Status KeysList(const std::string& data_dir, std::ostream& out);

// `fhirward breakglass list|review`: the review queue of break-glass episodes.
absl::Status BreakGlassList(const std::string& data_dir, bool all, std::ostream& out);
struct BreakGlassReviewArgs {
  std::string data_dir;
  std::string id;
  std::string reviewer;  // a user with the auditor role (not the episode's subject)
  std::string outcome;   // justified | unjustified
  std::string note;
  std::string password;  // the reviewer's login password (verified)
  std::string totp;      // their TOTP code, when enrolled
};
absl::Status BreakGlassReview(const BreakGlassReviewArgs& a, std::ostream& out);

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_ADMIN_H_
