#include "server/rate_limiter.h"

#include <algorithm>
#include <cmath>
#include <functional>

namespace fhirward::server {

RateLimiter::RateLimiter(double rate_per_second, double burst, size_t max_keys_per_shard)
    : rate_(rate_per_second), burst_(std::max(1.0, burst)), max_keys_(max_keys_per_shard) {}

int RateLimiter::Acquire(const std::string& key, std::chrono::steady_clock::time_point now) {
  return Take(key, now, true);
}

int RateLimiter::Peek(const std::string& key, std::chrono::steady_clock::time_point now) {
  return Take(key, now, false);
}

int RateLimiter::Take(const std::string& key, std::chrono::steady_clock::time_point now,
                      bool consume) {
  if (rate_ <= 0) return 0;
  Shard& shard = shards_[std::hash<std::string>{}(key) % shards_.size()];
  std::lock_guard<std::mutex> lock(shard.mu);
  if (shard.buckets.size() >= max_keys_ && !shard.buckets.contains(key)) {
    // Evict buckets that have refilled completely: forgetting them changes
    // nothing. If that frees less than a quarter of the shard (a flood of new
    // keys), forget the shard: memory stays bounded, and the scan runs at
    // most once per max_keys/4 new keys.
    for (auto it = shard.buckets.begin(); it != shard.buckets.end();) {
      double elapsed = std::chrono::duration<double>(now - it->second.updated).count();
      it = it->second.tokens + elapsed * rate_ >= burst_ ? shard.buckets.erase(it) : std::next(it);
    }
    if (shard.buckets.size() > max_keys_ - max_keys_ / 4) shard.buckets.clear();
  }
  auto [it, inserted] = shard.buckets.try_emplace(key, Bucket{burst_, now});
  Bucket& b = it->second;
  if (!inserted) {
    double elapsed = std::chrono::duration<double>(now - b.updated).count();
    if (elapsed > 0) {
      b.tokens = std::min(burst_, b.tokens + elapsed * rate_);
      b.updated = now;
    }
  }
  if (b.tokens >= 1.0) {
    if (consume) b.tokens -= 1.0;
    return 0;
  }
  return std::max(1, static_cast<int>(std::ceil((1.0 - b.tokens) / rate_)));
}

}  // namespace fhirward::server
