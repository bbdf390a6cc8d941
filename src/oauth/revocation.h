// Access tokens revoked before they expire, as the resource server sees them.
//
// The authorization server on this node adds to it at once (so a revocation
// wins over the verified-token cache on the very next request); tokens revoked
// through another node reach it when Sync() copies new entries from the shared
// store (the server calls it every second). Lookups take a shared lock: one
// hash probe per request. Thread-safe.
#ifndef FHIRWARD_OAUTH_REVOCATION_H_
#define FHIRWARD_OAUTH_REVOCATION_H_

#include <atomic>
#include <cstdint>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "absl/status/status.h"
#include "oauth/oauth_store.h"

namespace fhirward::oauth {

class RevocationList {
 public:
  bool IsRevoked(std::string_view jti) const {
    std::shared_lock lock(mu_);
    return revoked_.find(std::string(jti)) != revoked_.end();
  }
  void Add(const std::string& jti, int64_t exp) {
    std::unique_lock lock(mu_);
    revoked_[jti] = exp;
  }
  // Copies entries revoked in the store since the last sync (with a few
  // seconds of overlap for clock skew between nodes) and drops expired ones.
  absl::Status Sync(OAuthStore& store, int64_t now) {
    auto fresh = store.RevokedSince(last_sync_.load() - 5, now);
    if (!fresh.ok()) return fresh.status();
    std::unique_lock lock(mu_);
    for (auto& [jti, exp] : *fresh) revoked_[jti] = exp;
    for (auto it = revoked_.begin(); it != revoked_.end();) {
      it = it->second <= now - 300 ? revoked_.erase(it) : std::next(it);
    }
    last_sync_ = now;
    return absl::OkStatus();
  }

 private:
  mutable std::shared_mutex mu_;
  std::unordered_map<std::string, int64_t> revoked_;
  std::atomic<int64_t> last_sync_{0};
};

}  // namespace fhirward::oauth

#endif  // FHIRWARD_OAUTH_REVOCATION_H_
