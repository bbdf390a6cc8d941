// The authorization server's token-signing keys, with rotation.
//
//   DATA/keys/signing.json   manifest: [{kid, alg, file, activate_at, retire_at}]
//   DATA/keys/signing-*.pem  the private keys (0600)
//
// A key is published (JWKS) from the moment it is created, but signs only from
// `activate_at`, so every verifier that caches the JWKS has seen it before the
// first token it signed arrives. When a newer key of the same algorithm
// activates, the older one keeps being published until `retire_at` (its last
// token has expired), then it is removed. ES256 signs access tokens; RS256 and
// ES256 sign ID tokens (per the client's id_token_signed_response_alg).
//
// The CLI (`fhirward keys rotate-signing`) writes the manifest atomically
// (write + rename); a running server picks it up with ReloadIfChanged().
// Thread-safe.
#ifndef FHIRWARD_OAUTH_KEY_RING_H_
#define FHIRWARD_OAUTH_KEY_RING_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "jose/jws.h"

namespace fhirward::oauth {

struct KeyInfo {
  std::string kid;
  jose::Algorithm alg = jose::Algorithm::kES256;
  std::string file;  // relative to the keys dir
  int64_t activate_at = 0;
  int64_t retire_at = 0;  // 0: not retiring
};

class SigningKeyRing {
 public:
  // Loads DIR/signing.json. A data dir from before rotation existed has only
  // signing-es256.pem: it becomes the first ES256 key (kid `legacy_kid`). A
  // missing RS256 key is created (active at once: no token was signed yet).
  static absl::StatusOr<std::unique_ptr<SigningKeyRing>> Open(const std::string& keys_dir,
                                                              const std::string& legacy_kid,
                                                              int64_t now);

  // Creates a new key of `alg`, published now and signing from now +
  // `activate_in`; the key it replaces retires `overlap` seconds after that
  // (the longest token lifetime plus clock leeway).
  static absl::StatusOr<KeyInfo> Rotate(const std::string& keys_dir, jose::Algorithm alg,
                                        int64_t now, int64_t activate_in, int64_t overlap);

  // The key that signs now for `alg`: the newest active, not retired one.
  std::shared_ptr<const jose::SigningKey> Active(jose::Algorithm alg, int64_t now) const;
  // Every key that is published now (activated or not, not retired).
  jose::KeySet Published(int64_t now) const;
  std::vector<KeyInfo> Keys() const;
  // Re-reads the manifest when it was replaced or changed. True when it did.
  absl::StatusOr<bool> ReloadIfChanged(int64_t now);

 private:
  struct Entry {
    KeyInfo info;
    std::shared_ptr<const jose::SigningKey> key;
  };
  explicit SigningKeyRing(std::string dir) : dir_(std::move(dir)) {}
  absl::Status Load();
  std::string dir_;
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
  std::string version_;  // inode, size and times of the manifest last loaded
};

}  // namespace fhirward::oauth

#endif  // FHIRWARD_OAUTH_KEY_RING_H_
