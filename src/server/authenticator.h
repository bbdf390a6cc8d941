// Bearer-token authentication for the resource server.
//
// Access tokens are JWTs verified against the instance's own issuer key and,
// by configuration, external issuers' JWKS. Algorithms are pinned per key
// (the key's `alg`, never the token's choice); `alg=none`, algorithm
// confusion, bad signatures, wrong `iss`/`aud`, expired and not-yet-valid
// tokens are refused with kInvalidToken. Verified tokens are cached by their
// SHA-256 (never by their text) until they expire.
//
// Thread-safe.
#ifndef FHIRWARD_SERVER_AUTHENTICATOR_H_
#define FHIRWARD_SERVER_AUTHENTICATOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "jose/dpop.h"
#include "jose/jws.h"
#include "oauth/revocation.h"
#include "policy/policy.h"

namespace fhirward::server {

struct IssuerTrust {
  std::string issuer;
  std::vector<std::string> audiences;
  jose::KeySet keys;         // may start empty for issuers whose JWKS is fetched later
  std::string required_typ;  // e.g. "at+jwt"; empty: any
  bool own = false;          // tokens of this issuer are subject to the revocation list
};

// What one request presents.
struct AuthInput {
  std::string_view authorization;      // the Authorization header value
  std::vector<std::string_view> dpop;  // DPoP header values
  std::string method;
  std::string url;  // absolute URL of the request, without query (the DPoP htu)
  std::string_view client_cert_der;
};

struct AuthenticatorOptions {
  std::vector<IssuerTrust> issuers;
  int64_t leeway_seconds = 30;
  int64_t max_lifetime_seconds = 86400;
  size_t cache_entries = 100000;
  const oauth::RevocationList* revocations = nullptr;  // for `own` issuers
  jose::ReplayCache* dpop_replay = nullptr;            // DPoP proof jti (required for DPoP)
  const jose::DpopNonces* dpop_nonces = nullptr;       // when set, proofs must carry a nonce
};

class Authenticator {
 public:
  Authenticator(AuthenticatorOptions options, const Clock* clock);

  // `authorization` is the Authorization header value. kMissingToken when
  // there is no Bearer credential, kInvalidToken when it does not verify.
  absl::StatusOr<std::shared_ptr<const policy::Principal>> Authenticate(
      std::string_view authorization) const;
  // The full check of one request: scheme (Bearer or DPoP), token, revocation,
  // sender constraint. Details of kInvalidToken include "revoked",
  // "dpop_required" (a DPoP-bound token sent as Bearer), "not_dpop_bound",
  // "dpop_proof:<why>", "use_dpop_nonce", "certificate_mismatch".
  absl::StatusOr<std::shared_ptr<const policy::Principal>> Authenticate(
      const AuthInput& input) const;

  // True when this Authorization value carries a token that verified before
  // and has not expired (a cache hit, no signature work).
  bool IsCached(std::string_view authorization) const;

  // Replaces an issuer's keys (a refreshed JWKS). Unknown issuers are ignored.
  void SetKeys(const std::string& issuer, jose::KeySet keys);

  // Called (outside any lock) when a token names a key id its issuer does not
  // have, so that a refresher can fetch the issuer's JWKS early.
  void OnUnknownKid(std::function<void(const std::string& issuer)> callback);

 private:
  struct CacheEntry {
    std::shared_ptr<const policy::Principal> principal;
    int64_t exp = 0;
    std::string jti;
    std::string jkt;  // cnf.jkt
    std::string x5t;  // cnf.x5t#S256
    bool own = false;
  };
  absl::StatusOr<CacheEntry> Lookup(std::string_view token) const;
  absl::StatusOr<CacheEntry> Verify(std::string_view token) const;

  AuthenticatorOptions options_;
  const Clock* clock_;
  mutable std::mutex keys_mu_;
  std::unordered_map<std::string, std::shared_ptr<const jose::KeySet>> keys_;
  std::function<void(const std::string&)> on_unknown_kid_;
  mutable std::mutex mu_;
  mutable std::unordered_map<std::string, CacheEntry> cache_;
};

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_AUTHENTICATOR_H_
