#include "server/rate_limiter.h"

#include "gtest/gtest.h"

namespace fhirward::server {
namespace {

using std::chrono::milliseconds;

TEST(RateLimiterTest, BurstThenRefillAtRate) {
  RateLimiter rl(2, 3);
  auto t = std::chrono::steady_clock::now();
  EXPECT_EQ(rl.Acquire("a", t), 0);
  EXPECT_EQ(rl.Acquire("a", t), 0);
  EXPECT_EQ(rl.Peek("a", t), 0);  // peeking takes nothing
  EXPECT_EQ(rl.Acquire("a", t), 0);
  EXPECT_GE(rl.Acquire("a", t), 1);
  EXPECT_GE(rl.Peek("a", t), 1);
  EXPECT_EQ(rl.Acquire("b", t), 0);                      // keys are independent
  EXPECT_EQ(rl.Acquire("a", t + milliseconds(600)), 0);  // 2/s refill
}

TEST(RateLimiterTest, DisabledWhenRateIsZero) {
  RateLimiter rl(0, 1);
  auto t = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) EXPECT_EQ(rl.Acquire("a", t), 0);
}

TEST(RateLimiterTest, AFloodOfNewKeysStaysBounded) {
  RateLimiter rl(1, 1, /*max_keys_per_shard=*/16);
  auto t = std::chrono::steady_clock::now();
  // Every key spends its only token and never refills within the test, so
  // nothing can be evicted as "refilled": the shard is forgotten instead.
  for (int i = 0; i < 20000; ++i) EXPECT_EQ(rl.Acquire("k" + std::to_string(i), t), 0);
  // Still limiting the keys it holds.
  EXPECT_EQ(rl.Acquire("hot", t), 0);
  EXPECT_GE(rl.Acquire("hot", t), 1);
}

}  // namespace
}  // namespace fhirward::server
