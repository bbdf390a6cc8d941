// KeyEncryptionService: wraps and unwraps data keys under a key-encryption key
// (KEK) that never leaves the service. Implementations are immutable and
// thread-safe after construction. The local-file backend is for development;
// PKCS#11 (HSM) arrives with the key-management issue behind the same interface.
#ifndef FHIRWARD_CRYPTO_KMS_H_
#define FHIRWARD_CRYPTO_KMS_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/secret_bytes.h"

namespace fhirward::crypto {

class KeyEncryptionService {
 public:
  virtual ~KeyEncryptionService() = default;
  // Identifies the KEK (and its version) so envelopes can name it, e.g. "local:1a2b3c4d".
  virtual const std::string& key_id() const = 0;
  virtual absl::StatusOr<std::string> Wrap(const SecretBytes& dek,
                                           std::string_view associated_data) const = 0;
  virtual absl::StatusOr<SecretBytes> Unwrap(std::string_view wrapped,
                                             std::string_view associated_data) const = 0;
};

// A 32-byte AES-256 KEK in a file (raw bytes). When the file is missing and
// `create` is true, a new random key is written with mode 0600 (O_EXCL, fsync).
// Refuses to use a file readable or writable by group/other, or of the wrong
// size. The key id is "local:" + first 8 hex chars of SHA-256(key).
absl::StatusOr<std::unique_ptr<KeyEncryptionService>> OpenLocalKeyFile(const std::string& path,
                                                                       bool create);

}  // namespace fhirward::crypto

#endif  // FHIRWARD_CRYPTO_KMS_H_
