// Token-bucket rate limiting per principal (or per client address for
// unauthenticated requests). Thread-safe; memory is bounded by evicting idle
// buckets.
#ifndef FHIRWARD_SERVER_RATE_LIMITER_H_
#define FHIRWARD_SERVER_RATE_LIMITER_H_

#include <array>
#include <chrono>
#include <mutex>
#include <string>
#include <unordered_map>

namespace fhirward::server {

class RateLimiter {
 public:
  // rate <= 0 disables limiting.
  RateLimiter(double rate_per_second, double burst, size_t max_keys_per_shard = 65536);

  // Takes one token for `key`. Returns 0 when allowed, else the number of
  // whole seconds (>= 1) after which a retry can succeed.
  int Acquire(const std::string& key, std::chrono::steady_clock::time_point now);

  // As Acquire without taking a token: 0 when a token is available.
  int Peek(const std::string& key, std::chrono::steady_clock::time_point now);

 private:
  struct Bucket {
    double tokens = 0;
    std::chrono::steady_clock::time_point updated;
  };
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, Bucket> buckets;
  };
  int Take(const std::string& key, std::chrono::steady_clock::time_point now, bool consume);
  double rate_;
  double burst_;
  size_t max_keys_;
  std::array<Shard, 16> shards_;
};

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_RATE_LIMITER_H_
