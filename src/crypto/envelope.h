// Envelope encryption of stored records.
//
// Seal: a fresh random 256-bit data key (DEK) per record; the record is
// encrypted with AES-256-GCM under the DEK; the DEK is wrapped by the
// KeyEncryptionService. Both layers use the caller's associated data (for
// resources: tenant, type, id, version), so a blob moved to another row or
// another tenant fails to open.
//
// Format (all lengths big-endian):
//   "FWE" | format version (1 byte = 1) | u8 len | kek_id | u16 len | wrapped DEK
//   | nonce(12) | ciphertext | tag(16)
// Open never crashes on hostile bytes: every length is checked, and any failure
// is kDecryptionFailed. Thread-safe.
#ifndef FHIRWARD_CRYPTO_ENVELOPE_H_
#define FHIRWARD_CRYPTO_ENVELOPE_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "crypto/kms.h"

namespace fhirward::crypto {

class EnvelopeCipher {
 public:
  // `kek` must outlive this object.
  explicit EnvelopeCipher(const KeyEncryptionService* kek) : kek_(kek) {}
  absl::StatusOr<std::string> Seal(std::string_view plaintext,
                                   std::string_view associated_data) const;
  absl::StatusOr<std::string> Open(std::string_view envelope,
                                   std::string_view associated_data) const;

 private:
  const KeyEncryptionService* kek_;
};

}  // namespace fhirward::crypto

#endif  // FHIRWARD_CRYPTO_ENVELOPE_H_
