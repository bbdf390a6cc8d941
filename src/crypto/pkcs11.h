// PKCS#11 backend of KeyManagementService: KEKs are AES-256 secret-key objects
// on an HSM token (sensitive, never extractable, generated on the token),
// labelled "<key_label>-v<N>". The module is loaded with dlopen; no PKCS#11
// wrapper library is needed.
//
// Wrapping a secret (a tenant key, a TOTP seed, a sealed text: 1..4096 bytes):
// - "aes-gcm" (default): C_Encrypt with CKM_AES_GCM, a random 96-bit IV and
//   the associated data as GCM AAD. Output: IV(12) | ciphertext | tag(16).
// - "aes-key-wrap-pad": for tokens without GCM encryption.
//   u16 length | secret | SHA-256(associated data), zero-padded to a multiple
//   of 8, is imported as a session object and wrapped with
//   C_WrapKey(CKM_AES_KEY_WRAP_PAD) (RFC 5649); unwrap checks the digest in
//   constant time, so wrong associated data is refused there too.
// One session per service, serialized by a mutex (HSM calls are rare: data
// keys are cached unwrapped by the key ring for a bounded time).
#ifndef FHIRWARD_CRYPTO_PKCS11_H_
#define FHIRWARD_CRYPTO_PKCS11_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "crypto/kms.h"

namespace fhirward::crypto {

struct Pkcs11Options {
  std::string module;                 // path of the PKCS#11 module (.so)
  std::string token_label;            // the token to use, by label, or
  std::optional<unsigned long> slot;  // by slot id
  // Where the user PIN comes from: "env:NAME" (environment variable) or
  // "file:PATH" (a 0600 file; trailing newline ignored). Never logged.
  std::string pin_source;
  std::string key_label = "fhirward-kek";
  std::string mechanism = "aes-gcm";  // or "aes-key-wrap-pad"
};

// Loads the module, finds the token, logs in. Errors name the module, token
// and PKCS#11 return code, never the PIN.
absl::StatusOr<std::unique_ptr<KeyManagementService>> OpenPkcs11Kms(const Pkcs11Options& options);

// Reads a secret from "env:NAME" or "file:PATH".
absl::StatusOr<SecretBytes> ReadSecretSource(const std::string& source);

}  // namespace fhirward::crypto

#endif  // FHIRWARD_CRYPTO_PKCS11_H_
