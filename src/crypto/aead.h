// AES-256-GCM authenticated encryption, hashing and MACs on OpenSSL 3 EVP.
//
// Aead output format: nonce (12 random bytes) | ciphertext | tag (16 bytes).
// Random 96-bit nonces: callers must keep the number of messages under one key
// well below 2^32 (NIST SP 800-38D §8.3); envelope encryption does so by using
// a fresh data key per record. Instances are immutable and thread-safe.
#ifndef FHIRWARD_CRYPTO_AEAD_H_
#define FHIRWARD_CRYPTO_AEAD_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/secret_bytes.h"

namespace fhirward::crypto {

inline constexpr size_t kAes256KeyBytes = 32;
inline constexpr size_t kGcmNonceBytes = 12;
inline constexpr size_t kGcmTagBytes = 16;

class Aead {
 public:
  // `key` must be 32 bytes.
  static absl::StatusOr<std::unique_ptr<Aead>> NewAes256Gcm(SecretBytes key);
  ~Aead();

  absl::StatusOr<std::string> Encrypt(std::string_view plaintext,
                                      std::string_view associated_data) const;
  // Fails (kDecryptionFailed) on a wrong key, wrong associated data, or any
  // modified, truncated or extended ciphertext.
  absl::StatusOr<std::string> Decrypt(std::string_view ciphertext,
                                      std::string_view associated_data) const;
  // As Decrypt, for plaintexts that are themselves secrets (wrapped keys): the
  // result never passes through an unwiped buffer.
  absl::StatusOr<SecretBytes> DecryptSecret(std::string_view ciphertext,
                                            std::string_view associated_data) const;

 private:
  explicit Aead(SecretBytes key) : key_(std::move(key)) {}
  SecretBytes key_;
};

std::string Sha256(std::string_view data);  // 32 raw bytes
// SHA-256 of a file's bytes (32 raw bytes), read in chunks; an error when it
// cannot be opened or read.
absl::StatusOr<std::string> Sha256File(const std::string& path);
std::string HmacSha256(std::string_view key, std::string_view data);  // 32 raw bytes
bool ConstantTimeEquals(std::string_view a, std::string_view b);
// HKDF-SHA256 (RFC 5869) with a 32-byte output: a key derived from `ikm`.
SecretBytes HkdfSha256(const SecretBytes& ikm, std::string_view salt, std::string_view info);

}  // namespace fhirward::crypto

#endif  // FHIRWARD_CRYPTO_AEAD_H_
