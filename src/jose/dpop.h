// DPoP (RFC 9449): proof-of-possession JWTs bound to a client key, JWK thumbprints (RFC 7638),
// stateless server nonces, and a bounded cache of single-use identifiers.
//
// A DPoP proof carries its own public key in the `jwk` header. VerifyDpopProof checks the proof
// against that key and against the request it accompanies (method, URL, time, access token,
// expected key thumbprint, server nonce, single use). Every refusal is kInvalidToken with a fixed
// machine-readable detail (listed at VerifyDpopProof); none of them echoes input.
//
// Thread-safety: the functions are pure; ReplayCache and DpopNonces are thread-safe.
#ifndef FHIRWARD_JOSE_DPOP_H_
#define FHIRWARD_JOSE_DPOP_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "absl/status/statusor.h"
#include "json/value.h"

namespace fhirward::jose {

// RFC 7638 JWK thumbprint: base64url(SHA-256) of the canonical JSON of the required public
// members in lexicographic order (EC: crv,kty,x,y; RSA: e,kty,n; OKP: crv,kty,x). Error
// kInvalidToken "bad_jwk" when `jwk` is not an object, a required member is missing or not a
// string, or the kty is unknown. The key material itself is not validated.
absl::StatusOr<std::string> JwkThumbprint(const json::Value& jwk);

// Single-use identifiers (DPoP proof jti, client assertion jti) remembered until they expire.
// Thread-safe. Bounded: when `max_entries` live entries exist, expired ones are dropped; if it is
// still full, Use() returns false (fail closed: the caller refuses the request).
class ReplayCache {
 public:
  explicit ReplayCache(size_t max_entries = 1 << 20);
  ReplayCache(const ReplayCache&) = delete;
  ReplayCache& operator=(const ReplayCache&) = delete;

  // True when `key` was not seen (and records it until `expires_at`); false for a replay or when
  // full. An entry is live while now <= expires_at; afterwards the key may be used again. A key
  // whose `expires_at` is already past is accepted and not recorded.
  bool Use(std::string_view key, int64_t expires_at, int64_t now);

  size_t size() const;  // live or not yet purged entries

 private:
  // Drops entries that expired before `now`. Requires mu_.
  void PurgeExpired(int64_t now);

  struct KeyHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };

  const size_t max_entries_;
  mutable std::mutex mu_;
  // key -> expires_at. Guarded by mu_.
  std::unordered_map<std::string, int64_t, KeyHash, std::equal_to<>> expiry_by_key_;
  // (expires_at, key) for every entry; the view points at the key owned by expiry_by_key_ (node
  // keys are stable across rehashing). Guarded by mu_.
  std::set<std::pair<int64_t, std::string_view>> by_expiry_;
};

// Server-issued DPoP nonces (RFC 9449 §8/§9): stateless, HMAC of the time window under a secret;
// a nonce of the current or the previous window is accepted. Thread-safe (immutable).
class DpopNonces {
 public:
  // `secret`: at least 32 random bytes, shared by every instance that must accept the same
  // nonces. An empty secret makes Valid() refuse everything (fail closed). `window_seconds` below
  // 1 is treated as 1.
  DpopNonces(std::string secret, int64_t window_seconds = 300);
  std::string Current(int64_t now) const;  // 43 base64url characters
  bool Valid(std::string_view nonce, int64_t now) const;

 private:
  std::string ForWindow(int64_t window) const;
  int64_t WindowOf(int64_t now) const;

  std::string secret_;
  int64_t window_seconds_;
};

struct DpopExpectations {
  std::string method;  // "POST"; compared exactly with htm (an empty method matches nothing)
  std::string url;     // htu to expect: absolute http(s) URL; compared after dropping query and
                       // fragment and normalising scheme/host case, default port, empty path and
                       // percent-encoding (RFC 9449 §4.3, RFC 3986 §6.2.2-6.2.3)
  int64_t now = 0;
  int64_t max_age_seconds = 300;       // iat older than now - max_age refused ("stale_proof")
  int64_t future_leeway_seconds = 60;  // iat newer than now + this refused ("future_proof")
  std::string access_token;            // when non-empty, `ath` must equal base64url(SHA-256(token))
  std::string jkt;                     // when non-empty, the proof key's thumbprint must equal it
  const DpopNonces* nonces = nullptr;  // when set, `nonce` claim must be Valid()
  ReplayCache* replay = nullptr;       // when set, jti (scoped by jkt) must be unused
};

struct DpopProof {
  std::string jkt;  // RFC 7638 thumbprint of `jwk`
  std::string jti;
  int64_t iat = 0;
  json::Value jwk;  // the header jwk as sent
};

// Verifies a DPoP proof JWT (RFC 9449 §4.3): exactly one proof; header typ "dpop+jwt" (exact);
// alg asymmetric and supported (ES256, ES384, RS256, RS384, PS256, EdDSA — never none/HS*);
// no crit header; header jwk present, public (refuse any private member: d, p, q, dp, dq, qi, oth,
// k), alg consistent with the key (kty, crv, and the jwk's own alg if any); signature verified
// with that jwk; claims jti (non-empty string, ≤ 256 bytes), htm, htu, iat (number) present;
// size ≤ 8 KiB. Errors: ErrorCode kInvalidToken with details exactly:
// "malformed" (also oversized proofs, claims of the wrong type, a crit header), "bad_typ",
// "bad_alg", "bad_jwk", "private_key_in_jwk", "bad_signature", "missing_claim", "htm_mismatch",
// "htu_mismatch", "stale_proof", "future_proof", "ath_mismatch" (also a missing ath),
// "jkt_mismatch", "use_dpop_nonce" (nonce missing or not valid: the server then answers
// error=use_dpop_nonce with a DPoP-Nonce header), "replayed_jti" (also a full replay cache).
// Checks follow the order of RFC 9449 §4.3 (the proof itself, then htm, htu, nonce, iat, ath,
// jkt); the replay cache is consulted last, so a refused proof never consumes an entry. The jti is
// remembered (as jkt + ":" + jti) until iat + max_age_seconds + future_leeway_seconds.
absl::StatusOr<DpopProof> VerifyDpopProof(std::string_view proof, const DpopExpectations& expect);

}  // namespace fhirward::jose

#endif  // FHIRWARD_JOSE_DPOP_H_
