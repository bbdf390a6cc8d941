// Key administration and crypto-shredding: `fhirward keys …`, `fhirward erase`,
// `fhirward tenant decommission`.
//
// Separation of duties: every command that changes keys runs as a named user
// holding the `key-admin` role, who proves it with their login password on
// standard input (and, when enrolled, a TOTP code on the next line). Server
// operators (who start `fhirward serve`) and auditors do not hold that role.
// Failed attempts count towards the user's lockout like failed logins.
//
// Every key operation is appended to the audit trail (action "key.<op>"),
// before the destructive step for erasures: the record of the act survives it.
#ifndef FHIRWARD_SERVER_KEY_ADMIN_H_
#define FHIRWARD_SERVER_KEY_ADMIN_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "audit/audit_log.h"
#include "crypto/keyring.h"
#include "oauth/oauth_store.h"
#include "server/instance.h"

namespace fhirward::server {

struct KeyAdminArgs {
  std::string data_dir;
  std::string admin;     // the key-admin user
  std::string password;  // their login password
  std::string totp;      // their TOTP code, when enrolled
};

// The credential of a user acting through the CLI (a key administrator, a
// break-glass reviewer): active (not disabled, not locked out), password, the
// `role`, then the TOTP code when the user enrolled one. One answer for an
// unknown, disabled or locked user and a wrong password or code; those count
// towards the user's lockout, and a success resets it.
struct CliCredential {
  // "" when accepted; else bad_credentials, not_<role> (dashes as
  // underscores) or bad_totp.
  std::string why;
  // The name for the trail: a keyed digest when the name is no user's (it
  // may be a password typed in the wrong field).
  std::string actor;
  bool ok() const { return why.empty(); }
};
absl::StatusOr<CliCredential> CheckCliCredential(Instance& inst, oauth::OAuthStore& users,
                                                 const std::string& username,
                                                 const std::string& password,
                                                 const std::string& totp, const std::string& role);

// The audit record of a key operation (no key material, ever).
audit::AuditRecord KeyEventRecord(const crypto::KeyEvent& e, const std::string& actor);

// Checks the key-admin credential (audited either way), for commands outside
// this file that hand out keys (restore copies the key vault).
absl::Status VerifyKeyAdmin(const KeyAdminArgs& a, const std::string& action);

absl::Status KeysStatus(const std::string& data_dir, std::ostream& out);
absl::Status KeysRotateKek(const KeyAdminArgs& a, std::ostream& out);
absl::Status KeysRotateTenant(const KeyAdminArgs& a, const std::string& tenant, std::ostream& out);

struct RewrapArgs {
  KeyAdminArgs admin;
  size_t batch = 500;
  double rate = 0;  // records per second, 0: as fast as possible
  bool progress = true;
};
// Moves everything forward to the current keys: tenant keys to the current
// KEK version, data keys to the current tenant key version, and every stored
// record (format 1, or under a data key that is no longer current) re-sealed.
// Resumable: the position is saved after each batch.
absl::Status KeysRewrap(const RewrapArgs& a, std::ostream& out, std::ostream& progress);

struct EraseArgs {
  KeyAdminArgs admin;
  std::string tenant = "default";
  std::string target;  // "Patient/ID" or "patient/ID"
  std::string reason;
};
absl::Status ErasePatient(const EraseArgs& a, std::ostream& out);

absl::Status TenantDecommission(const KeyAdminArgs& a, const std::string& tenant,
                                const std::string& confirm, std::ostream& out);

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_KEY_ADMIN_H_
