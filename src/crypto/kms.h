// Key-encryption keys (KEKs) and the services that hold them.
//
// KeyEncryptionService wraps and unwraps data keys under a KEK that never
// leaves the service. Implementations are thread-safe after construction.
//
// KeyManagementService is a backend holding numbered KEK versions: a local
// key directory (development) or a PKCS#11 token (production HSMs; SoftHSM2
// in tests). `OpenVersionedKek` turns a backend into one KeyEncryptionService
// that wraps under the newest version and unwraps under whichever version a
// blob names, so a KEK rotation never strands what the old version wrapped:
//
//   "FWK2" | u32 version (big-endian) | backend wrap of the key
//
// A blob without that prefix is from before versioning and opens under
// version 1.
#ifndef FHIRWARD_CRYPTO_KMS_H_
#define FHIRWARD_CRYPTO_KMS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/secret_bytes.h"

namespace fhirward::crypto {

class KeyEncryptionService {
 public:
  virtual ~KeyEncryptionService() = default;
  // Identifies the KEK so envelopes can name it, e.g. "local:1a2b3c4d". Public.
  virtual const std::string& key_id() const = 0;
  // True when envelopes naming `id` were sealed under this service (a
  // versioned service also recognises the ids of its single versions).
  virtual bool Recognizes(std::string_view id) const { return id == key_id(); }
  virtual absl::StatusOr<std::string> Wrap(const SecretBytes& dek,
                                           std::string_view associated_data) const = 0;
  virtual absl::StatusOr<SecretBytes> Unwrap(std::string_view wrapped,
                                             std::string_view associated_data) const = 0;
};

class KeyManagementService {
 public:
  virtual ~KeyManagementService() = default;
  // e.g. "local key directory /srv/fhirward/keys" or "pkcs11 token 'hsm1' (libsofthsm2.so)";
  // never a PIN.
  virtual std::string Describe() const = 0;
  // Existing KEK versions, ascending.
  virtual absl::StatusOr<std::vector<uint32_t>> Versions() const = 0;
  virtual absl::StatusOr<std::unique_ptr<KeyEncryptionService>> OpenVersion(
      uint32_t version) const = 0;
  // Generates version `version` (which must not exist) inside the backend.
  virtual absl::Status CreateVersion(uint32_t version) = 0;
  // Destroys version `version` for good (the HSM object, or the key file
  // overwritten and unlinked).
  virtual absl::Status DestroyVersion(uint32_t version) = 0;
};

// A KeyEncryptionService over every version of a backend: wraps under the
// newest, unwraps under the one each blob names. `Reload()` picks up versions
// created or destroyed by another process (e.g. `fhirward keys rotate-kek`).
class VersionedKek final : public KeyEncryptionService {
 public:
  static absl::StatusOr<std::unique_ptr<VersionedKek>> Open(
      std::unique_ptr<KeyManagementService> backend, bool create);
  const std::string& key_id() const override { return key_id_; }
  bool Recognizes(std::string_view id) const override;
  absl::StatusOr<std::string> Wrap(const SecretBytes& dek,
                                   std::string_view associated_data) const override;
  absl::StatusOr<SecretBytes> Unwrap(std::string_view wrapped,
                                     std::string_view associated_data) const override;

  uint32_t current_version() const;
  std::vector<uint32_t> versions() const;
  // The KEK version a wrapped blob names (1 for a blob from before versioning).
  static uint32_t VersionOf(std::string_view wrapped);
  absl::Status Reload();
  // Creates version current+1 and makes it current. Returns it.
  absl::StatusOr<uint32_t> Rotate();
  // Destroys an older version. Refuses the current one.
  absl::Status Destroy(uint32_t version);
  KeyManagementService& backend() { return *backend_; }
  // Reload() is also done by Unwrap itself when a blob names a version it does
  // not hold yet (at most once a second).
  // Number of Unwrap calls since the last call (for the audited unwrap count).
  uint64_t TakeUnwrapCount() const { return unwraps_.exchange(0); }

 private:
  explicit VersionedKek(std::unique_ptr<KeyManagementService> backend);
  std::unique_ptr<KeyManagementService> backend_;
  std::string key_id_;
  mutable std::mutex mu_;
  std::map<uint32_t, std::shared_ptr<KeyEncryptionService>> keys_;
  mutable std::atomic<uint64_t> unwraps_{0};
  mutable std::atomic<int64_t> last_reload_{0};
};

// A 32-byte AES-256 KEK in a file (raw bytes). When the file is missing and
// `create` is true, a new random key is written with mode 0600 (O_EXCL, fsync).
// Refuses to use a file readable or writable by group/other, or of the wrong
// size. The key id is "local:" + first 8 hex chars of SHA-256(key).
absl::StatusOr<std::unique_ptr<KeyEncryptionService>> OpenLocalKeyFile(const std::string& path,
                                                                       bool create);

// Local backend: version 1 is DIR/kek.key, version N > 1 is DIR/kek-vN.key.
// For development and tests only: the key sits on the same disk as the data.
std::unique_ptr<KeyManagementService> NewLocalKms(std::string dir);

}  // namespace fhirward::crypto

#endif  // FHIRWARD_CRYPTO_KMS_H_
