// JOSE: JWKs, JWS compact signatures and JWT verification on OpenSSL 3 EVP.
//
// The algorithm belongs to the key, never to the token header: a verifier
// selects the key by `kid` (or the only key) and refuses any token whose `alg`
// differs from that key's algorithm. `alg=none` and HMAC algorithms are never
// accepted. ECDSA signatures are the raw r||s form of RFC 7518 §3.4.
// Keys and verifiers are immutable and thread-safe after construction.
#ifndef FHIRWARD_JOSE_JWS_H_
#define FHIRWARD_JOSE_JWS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "json/value.h"

typedef struct evp_pkey_st EVP_PKEY;

namespace fhirward::jose {

enum class Algorithm { kES256, kES384, kRS256, kRS384, kPS256, kEdDSA };
std::string_view AlgorithmName(Algorithm alg);
std::optional<Algorithm> AlgorithmFromName(std::string_view name);

// A public key with its pinned algorithm.
class PublicKey {
 public:
  // From a JWK object (kty EC/RSA/OKP). `alg` in the JWK is required unless
  // `default_alg` is given; the curve/key type must fit the algorithm
  // (RSA keys under 2048 bits refused).
  static absl::StatusOr<PublicKey> FromJwk(const json::Value& jwk,
                                           std::optional<Algorithm> default_alg = std::nullopt);
  const std::string& kid() const { return kid_; }
  Algorithm alg() const { return alg_; }
  json::Value ToJwk() const;  // public members only, with kid, alg, use=sig
  // Verifies `signature` (raw JOSE form) over `signing_input`.
  bool Verify(std::string_view signing_input, std::string_view signature) const;

 private:
  std::string kid_;
  Algorithm alg_ = Algorithm::kES256;
  std::shared_ptr<EVP_PKEY> pkey_;
  friend class SigningKey;
};

// A private key with its pinned algorithm (ES256 by default).
class SigningKey {
 public:
  static absl::StatusOr<SigningKey> Generate(Algorithm alg, std::string kid);
  // PKCS#8 PEM. LoadPem refuses files readable by group/other.
  static absl::StatusOr<SigningKey> LoadPem(const std::string& path, Algorithm alg,
                                            std::string kid);
  absl::Status SavePem(const std::string& path) const;  // mode 0600, O_EXCL
  const std::string& kid() const { return kid_; }
  Algorithm alg() const { return alg_; }
  PublicKey public_key() const;
  absl::StatusOr<std::string> Sign(std::string_view signing_input) const;  // raw JOSE form

 private:
  std::string kid_;
  Algorithm alg_ = Algorithm::kES256;
  std::shared_ptr<EVP_PKEY> pkey_;
};

// Compact JWS: base64url(header).base64url(payload).base64url(sig). The header
// gets alg and kid from the key; `typ` (e.g. "at+jwt") is added when non-empty.
absl::StatusOr<std::string> SignCompact(const SigningKey& key, const json::Value& payload,
                                        std::string_view typ = "JWT");

// A set of trusted public keys for one issuer (a JWKS).
class KeySet {
 public:
  // Keys with use other than "sig", unknown kty or an unsupported alg are
  // skipped; EC/OKP keys without "alg" get the one their curve implies; RSA keys
  // without "alg" are skipped. Fails when no usable key remains.
  static absl::StatusOr<KeySet> FromJwks(const json::Value& jwks);
  // As above, but RSA keys without "alg" get `default_rsa_alg` when given.
  static absl::StatusOr<KeySet> FromJwks(const json::Value& jwks,
                                         std::optional<Algorithm> default_rsa_alg);
  void Add(PublicKey key) { keys_.push_back(std::move(key)); }
  // By kid; when kid is empty and exactly one key exists, that key.
  const PublicKey* Find(std::string_view kid) const;
  json::Value ToJwks() const;
  const std::vector<PublicKey>& keys() const { return keys_; }

 private:
  std::vector<PublicKey> keys_;
};

struct JwtExpectations {
  std::string issuer;                 // exact match on `iss`
  std::vector<std::string> audience;  // `aud` (string or array) must contain one of these
  std::string typ;                    // if non-empty, header typ must match (case-insensitive,
                                      // "application/" prefix allowed)
  int64_t now = 0;                    // seconds since epoch
  int64_t leeway_seconds = 30;
  bool require_exp = true;
  int64_t max_lifetime_seconds = 0;  // if > 0, exp - iat must not exceed it
};

struct VerifiedJwt {
  json::Value header;
  json::Value claims;
};

// A NumericDate (RFC 7519 §2): seconds, possibly fractional, floored; nullopt
// for a non-number or a value beyond ±10^15 (so arithmetic on it cannot overflow).
std::optional<int64_t> NumericDate(const json::Value& v);

// Parses and verifies a compact JWT. Every failure is kInvalidToken with a
// machine-readable detail such as "alg_mismatch", "bad_signature", "expired",
// "not_yet_valid", "wrong_issuer", "wrong_audience", "malformed", "unknown_kid",
// "alg_none". Size-limited: tokens over 16 KiB are refused.
absl::StatusOr<VerifiedJwt> VerifyJwt(std::string_view token, const KeySet& keys,
                                      const JwtExpectations& expect);

}  // namespace fhirward::jose

#endif  // FHIRWARD_JOSE_JWS_H_
