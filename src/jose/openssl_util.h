// Internal helpers shared by the jose implementation files. Not a public API.
#ifndef FHIRWARD_JOSE_OPENSSL_UTIL_H_
#define FHIRWARD_JOSE_OPENSSL_UTIL_H_

#include <openssl/evp.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "jose/jws.h"

namespace fhirward::jose::internal {

inline constexpr int kMinRsaBits = 2048;
inline constexpr int kMaxRsaBits = 16384;

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
// Takes ownership of `p` (may be null).
inline std::shared_ptr<EVP_PKEY> SharePkey(EVP_PKEY* p) {
  return std::shared_ptr<EVP_PKEY>(p, PkeyDeleter());
}

enum class KeyFamily { kEc, kRsa, kEd25519 };
KeyFamily FamilyOf(Algorithm alg);
// "SHA256"/"SHA384" or nullptr (EdDSA signs the message itself).
const char* DigestName(Algorithm alg);
// JWK curve name for EC/OKP algorithms ("P-256", "P-384", "Ed25519").
std::string_view CurveName(Algorithm alg);
// Size of one EC coordinate / of r and s (32 for ES256, 48 for ES384), else 0.
size_t EcCoordinateBytes(Algorithm alg);

// OK when `pkey` has the type, curve or size that `alg` requires. The detail
// names the mismatch, never key bytes.
absl::Status CheckKeyFitsAlgorithm(const EVP_PKEY* pkey, Algorithm alg);

// ECDSA signature conversions between DER (OpenSSL) and the fixed-size r||s
// form of RFC 7518 §3.4. nullopt on malformed input or wrong sizes.
std::optional<std::string> EcdsaDerToRaw(std::string_view der, size_t coordinate_bytes);
std::optional<std::string> EcdsaRawToDer(std::string_view raw, size_t coordinate_bytes);

// Sets up RSA padding (PKCS#1 v1.5 or PSS with salt = digest length) on `pctx`.
bool ConfigurePadding(EVP_PKEY_CTX* pctx, Algorithm alg);

}  // namespace fhirward::jose::internal

#endif  // FHIRWARD_JOSE_OPENSSL_UTIL_H_
