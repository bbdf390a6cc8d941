// The on-disk identity of one fhirward instance (its data directory):
//
//   DIR/instance.json          issuer and audience (public settings, 0644)
//   DIR/tls/                   development CA and server certificate (generated)
//   DIR/kms.toml               optional: the key management service (docs/crypto.md);
//                              without it, the local key directory DIR/keys
//   DIR/keys/kek.key           local key-encryption key v1 (0600, 32 bytes); kek-vN.key later
//                              versions (local backend only; an HSM keeps them on the token)
//   DIR/keys/signing-es256.pem instance token-signing key (0600)
//   DIR/keys/audit-log-es256.pem audit log key: signs tree heads (0600)
//   DIR/keys/*.wrapped         secrets wrapped by the KEK (audit MAC key, cursor key,
//                              blind-index key)
//   DIR/keys/signing.json      token-signing key manifest (oauth/key_ring.h)
//   DIR/db/keys.db             key vault: tenant and data keys, wrapped (crypto/keyring.h)
//   DIR/db/fhir.db             resources (SQLite, every body sealed)
//   DIR/db/oauth.db            users, clients, codes, grants (oauth/oauth_store.h)
//   DIR/audit/audit.db         audit trail (hash-chained)
//
// Open() creates what is missing when `create` is true. Thread-safe after Open.
#ifndef FHIRWARD_SERVER_INSTANCE_H_
#define FHIRWARD_SERVER_INSTANCE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/secret_bytes.h"
#include "crypto/keyring.h"
#include "crypto/kms.h"
#include "jose/jws.h"

namespace fhirward::server {

class Instance {
 public:
  // `default_issuer` is used only when the directory is initialised.
  static absl::StatusOr<std::unique_ptr<Instance>> Open(const std::string& data_dir, bool create,
                                                        const std::string& default_issuer);

  const std::string& data_dir() const { return data_dir_; }
  const std::string& issuer() const { return issuer_; }
  const std::string& audience() const { return audience_; }
  const crypto::KeyEncryptionService& kek() const { return *kek_; }
  crypto::VersionedKek& versioned_kek() const { return *kek_; }
  crypto::KeyRing& keyring() const { return *keyring_; }
  std::string keys_db_path() const { return data_dir_ + "/db/keys.db"; }
  const jose::SigningKey& signing_key() const { return signing_key_; }
  const SecretBytes& audit_mac_key() const { return audit_mac_key_; }
  // Signs the audit trail's tree heads (ES256, kid = JWK thumbprint).
  const jose::SigningKey& audit_log_key() const { return audit_log_key_; }
  const SecretBytes& cursor_key() const { return cursor_key_; }
  // Secret from which each tenant's search blind-index key is derived
  // (separate from every encryption key).
  const SecretBytes& blind_index_key() const { return blind_index_key_; }
  // Authorization server: CSRF tokens of the login pages, and DPoP nonces.
  const SecretBytes& session_key() const { return session_key_; }
  const SecretBytes& dpop_nonce_key() const { return dpop_nonce_key_; }
  std::string keys_dir() const { return data_dir_ + "/keys"; }
  std::string oauth_db_path() const { return data_dir_ + "/db/oauth.db"; }
  // Break-glass episodes and their review queue.
  std::string policy_db_path() const { return data_dir_ + "/db/policy.db"; }
  const std::string& signing_kid() const { return signing_key_.kid(); }

  std::string tls_dir() const { return data_dir_ + "/tls"; }
  std::string resource_db_path() const { return data_dir_ + "/db/fhir.db"; }
  std::string audit_db_path() const { return data_dir_ + "/audit/audit.db"; }

 private:
  Instance() = default;
  std::string data_dir_;
  std::string issuer_;
  std::string audience_;
  std::unique_ptr<crypto::VersionedKek> kek_;
  std::unique_ptr<crypto::KeyRing> keyring_;
  jose::SigningKey signing_key_;
  jose::SigningKey audit_log_key_;
  SecretBytes audit_mac_key_;
  SecretBytes cursor_key_;
  SecretBytes blind_index_key_;
  SecretBytes session_key_;
  SecretBytes dpop_nonce_key_;
};

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_INSTANCE_H_
