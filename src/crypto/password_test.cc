#include "crypto/password.h"

#include <argon2.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "common/error.h"
#include "gtest/gtest.h"

namespace fhirward::crypto {
namespace {

constexpr Argon2Params kFast{.t_cost = 1, .m_cost_kib = 1024, .parallelism = 1};

std::string Hash(std::string_view password, const Argon2Params& params = kFast) {
  auto phc = HashPassword(password, params);
  EXPECT_TRUE(phc.ok()) << phc.status();
  return phc.ok() ? *phc : std::string();
}

// "$argon2id$v=19$m=M,t=T,p=P$" + the salt and hash of `phc`.
std::string WithParams(const std::string& phc, std::string_view params) {
  size_t salt_start = phc.find('$', std::string_view("$argon2id$v=19$").size()) + 1;
  return "$argon2id$v=19$" + std::string(params) + "$" + phc.substr(salt_start);
}

TEST(Password, RoundTripWithDefaults) {
  std::string phc = Hash("correct horse battery staple", {});
  EXPECT_TRUE(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$")) << phc;
  // 16-byte salt -> 22 base64 chars, 32-byte hash -> 43 base64 chars, unpadded.
  size_t salt_start = phc.rfind('$', phc.rfind('$') - 1) + 1;
  size_t hash_start = phc.rfind('$') + 1;
  EXPECT_EQ(hash_start - 1 - salt_start, 22u);
  EXPECT_EQ(phc.size() - hash_start, 43u);
  EXPECT_EQ(phc.find('=', salt_start), std::string::npos);
  EXPECT_TRUE(VerifyPassword("correct horse battery staple", phc));
  EXPECT_FALSE(VerifyPassword("correct horse battery stapl", phc));
  EXPECT_FALSE(NeedsRehash(phc, {}));
}

TEST(Password, RoundTripSmallParams) {
  std::string phc = Hash("s3cret");
  EXPECT_TRUE(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$")) << phc;
  EXPECT_TRUE(VerifyPassword("s3cret", phc));
  std::string empty = Hash("");
  EXPECT_TRUE(VerifyPassword("", empty));
  EXPECT_FALSE(VerifyPassword("x", empty));
  std::string nul = Hash(std::string("a\0b", 3));
  EXPECT_TRUE(VerifyPassword(std::string("a\0b", 3), nul));
  EXPECT_FALSE(VerifyPassword("a", nul));
  std::string p2 = Hash("parallel", {.t_cost = 1, .m_cost_kib = 1024, .parallelism = 2});
  EXPECT_TRUE(VerifyPassword("parallel", p2));
}

TEST(Password, WrongPassword) {
  std::string phc = Hash("hunter2");
  EXPECT_FALSE(VerifyPassword("hunter3", phc));
  EXPECT_FALSE(VerifyPassword("Hunter2", phc));
  EXPECT_FALSE(VerifyPassword("", phc));
  EXPECT_FALSE(VerifyPassword("hunter2 ", phc));
}

TEST(Password, DistinctSaltsGiveDistinctStrings) {
  std::string a = Hash("same");
  std::string b = Hash("same");
  EXPECT_NE(a, b);
  EXPECT_TRUE(VerifyPassword("same", a));
  EXPECT_TRUE(VerifyPassword("same", b));
}

TEST(Password, InteroperatesWithReferenceEncoding) {
  // A string made by libargon2's own encoder verifies, and ours verifies there.
  const std::string salt = "0123456789abcdef";
  char encoded[128];
  ASSERT_EQ(argon2id_hash_encoded(1, 1024, 1, "pw", 2, salt.data(), salt.size(), 32, encoded,
                                  sizeof(encoded)),
            ARGON2_OK);
  EXPECT_TRUE(VerifyPassword("pw", encoded));
  EXPECT_FALSE(VerifyPassword("pw2", encoded));
  std::string ours = Hash("pw");
  EXPECT_EQ(argon2id_verify(ours.c_str(), "pw", 2), ARGON2_OK);
}

TEST(Password, RefusesOtherVariants) {
  const std::string salt = "0123456789abcdef";
  char encoded[128];
  for (argon2_type type : {Argon2_i, Argon2_d}) {
    ASSERT_EQ(argon2_hash(1, 1024, 1, "pw", 2, salt.data(), salt.size(), nullptr, 32, encoded,
                          sizeof(encoded), type, ARGON2_VERSION_13),
              ARGON2_OK);
    EXPECT_FALSE(VerifyPassword("pw", encoded)) << encoded;
    EXPECT_TRUE(NeedsRehash(encoded, kFast));
  }
  // The same hash relabelled as argon2id does not verify either.
  std::string phc = Hash("pw");
  std::string relabelled = phc;
  relabelled.replace(0, 9, "$argon2i");
  EXPECT_FALSE(VerifyPassword("pw", relabelled));
  // Version 0x10 (v=16) is refused.
  std::string v16 = phc;
  v16.replace(v16.find("v=19"), 4, "v=16");
  EXPECT_FALSE(VerifyPassword("pw", v16));
}

TEST(Password, RefusesMalformed) {
  std::string phc = Hash("pw");
  ASSERT_TRUE(VerifyPassword("pw", phc));
  // Every truncation.
  for (size_t n = 0; n < phc.size(); ++n) {
    EXPECT_FALSE(VerifyPassword("pw", phc.substr(0, n))) << n;
  }
  // Every single-character change is refused, either as malformed or as a
  // different salt/hash/parameter set.
  for (size_t i = 0; i < phc.size(); ++i) {
    std::string bad = phc;
    bad[i] = bad[i] == 'A' ? 'B' : 'A';
    EXPECT_FALSE(VerifyPassword("pw", bad)) << bad;
  }
  size_t hash_start = phc.rfind('$') + 1;
  const std::string hash = phc.substr(hash_start);
  const std::string head = phc.substr(0, hash_start);
  std::vector<std::string> bad = {
      "",
      "$argon2id",
      "$argon2id$v=19$m=1024,t=1,p=1",
      head,                                          // no hash
      head + hash + "$",                             // trailing segment
      head + hash + "=",                             // padding
      head + hash.substr(0, hash.size() - 1) + "!",  // non-alphabet
      head + hash.substr(0, hash.size() - 1) + "B",  // non-zero trailing bits
      head + hash + "AAAA",                          // longer hash
      head + hash.substr(0, 20),                     // 15-byte hash: too short
      phc + " ",
      " " + phc,
      "$argon2id$v=19$t=1,m=1024,p=1$" + phc.substr(phc.find("p=1$") + 4),  // reordered
      "$argon2id$v=19$m=1024,t=1,p=1,keyid=abc$" + phc.substr(phc.find("p=1$") + 4),
      "$argon2id$m=1024,t=1,p=1$" + phc.substr(phc.find("p=1$") + 4),  // no version
      WithParams(phc, "m=01024,t=1,p=1"),                              // leading zero
      WithParams(phc, "m=+1024,t=1,p=1"),
      WithParams(phc, "m=1024,t=1,p=1,"),
      WithParams(phc, "m=,t=1,p=1"),
      WithParams(phc, "m=99999999999999999999,t=1,p=1"),  // overflows uint32
      WithParams(phc, "m=4294968320,t=1,p=1"),            // 2^32 + 1024
  };
  for (const std::string& s : bad) EXPECT_FALSE(VerifyPassword("pw", s)) << s;
  // Short salt: 8 bytes is argon2's minimum but below ours.
  const std::string salt8 = "01234567";
  char encoded[128];
  ASSERT_EQ(argon2id_hash_encoded(1, 1024, 1, "pw", 2, salt8.data(), salt8.size(), 32, encoded,
                                  sizeof(encoded)),
            ARGON2_OK);
  EXPECT_FALSE(VerifyPassword("pw", encoded)) << encoded;
}

TEST(Password, RefusesOutOfBoundsParametersWithoutHashing) {
  std::string phc = Hash("pw");
  // Each of these would take minutes or gigabytes if it were hashed; the test
  // finishing quickly shows the bounds are checked first.
  std::vector<std::string> bad = {
      WithParams(phc, "m=1048577,t=1,p=1"),     // 1 GiB + 1 KiB
      WithParams(phc, "m=4294967295,t=1,p=1"),  // 4 TiB
      WithParams(phc, "m=1024,t=17,p=1"),      WithParams(phc, "m=1024,t=4294967295,p=1"),
      WithParams(phc, "m=1024,t=1,p=9"),       WithParams(phc, "m=1024,t=1,p=16777215"),
      WithParams(phc, "m=1024,t=0,p=1"),       WithParams(phc, "m=1024,t=1,p=0"),
      WithParams(phc, "m=7,t=1,p=1"),  // below argon2's minimum of 8 KiB per lane
  };
  auto start = std::chrono::steady_clock::now();
  for (const std::string& s : bad) {
    EXPECT_FALSE(VerifyPassword("pw", s)) << s;
    EXPECT_TRUE(NeedsRehash(s, kFast)) << s;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  // The bounds themselves parse (not hashed here: m=1 GiB is too much for a test).
  EXPECT_FALSE(NeedsRehash(WithParams(phc, "m=1048576,t=16,p=8"), kFast));
}

TEST(Password, NeedsRehash) {
  std::string phc = Hash("pw");  // m=1024, t=1, p=1
  EXPECT_FALSE(NeedsRehash(phc, kFast));
  EXPECT_TRUE(NeedsRehash(phc, {.t_cost = 2, .m_cost_kib = 1024, .parallelism = 1}));
  EXPECT_TRUE(NeedsRehash(phc, {.t_cost = 1, .m_cost_kib = 2048, .parallelism = 1}));
  EXPECT_TRUE(NeedsRehash(phc, {}));
  // Stronger than required, or a different parallelism only: no rehash.
  EXPECT_FALSE(NeedsRehash(phc, {.t_cost = 1, .m_cost_kib = 512, .parallelism = 1}));
  EXPECT_FALSE(NeedsRehash(phc, {.t_cost = 1, .m_cost_kib = 1024, .parallelism = 2}));
  EXPECT_TRUE(NeedsRehash("not a hash", kFast));
  EXPECT_TRUE(NeedsRehash("", kFast));
  // A 16-byte hash verifies but is shorter than what HashPassword makes.
  const std::string salt = "0123456789abcdef";
  char encoded[128];
  ASSERT_EQ(argon2id_hash_encoded(1, 1024, 1, "pw", 2, salt.data(), salt.size(), 16, encoded,
                                  sizeof(encoded)),
            ARGON2_OK);
  EXPECT_TRUE(VerifyPassword("pw", encoded));
  EXPECT_TRUE(NeedsRehash(encoded, kFast));
}

TEST(Password, LongPasswordRefused) {
  std::string max(kMaxPasswordBytes, 'x');
  std::string phc = Hash(max);
  EXPECT_TRUE(VerifyPassword(max, phc));
  std::string longer(kMaxPasswordBytes + 1, 'x');
  auto refused = HashPassword(longer, kFast);
  EXPECT_EQ(CodeOf(refused.status()), ErrorCode::kInvalidParameter);
  EXPECT_FALSE(VerifyPassword(longer, phc));
  EXPECT_FALSE(VerifyAgainstDummy(longer, kFast));
}

TEST(Password, HashPasswordRefusesBadParams) {
  EXPECT_FALSE(HashPassword("pw", {.t_cost = 0, .m_cost_kib = 1024, .parallelism = 1}).ok());
  EXPECT_FALSE(HashPassword("pw", {.t_cost = 17, .m_cost_kib = 1024, .parallelism = 1}).ok());
  EXPECT_FALSE(HashPassword("pw", {.t_cost = 1, .m_cost_kib = 1048577, .parallelism = 1}).ok());
  EXPECT_FALSE(HashPassword("pw", {.t_cost = 1, .m_cost_kib = 1024, .parallelism = 9}).ok());
  EXPECT_FALSE(HashPassword("pw", {.t_cost = 1, .m_cost_kib = 8, .parallelism = 2}).ok());
}

TEST(Password, VerifyAgainstDummyIsFalseAndDoesTheWork) {
  EXPECT_FALSE(VerifyAgainstDummy("anything", kFast));
  EXPECT_FALSE(VerifyAgainstDummy("", kFast));
  // Spends about as long as a real verification under the same parameters.
  const Argon2Params heavier{.t_cost = 3, .m_cost_kib = 8192, .parallelism = 1};
  std::string phc = Hash("pw", heavier);
  auto time = [](auto f) {
    auto best = std::chrono::steady_clock::duration::max();
    for (int i = 0; i < 3; ++i) {
      auto start = std::chrono::steady_clock::now();
      f();
      best = std::min(best, std::chrono::steady_clock::now() - start);
    }
    return std::chrono::duration<double>(best).count();
  };
  double real = time([&] { EXPECT_TRUE(VerifyPassword("pw", phc)); });
  double dummy = time([&] { EXPECT_FALSE(VerifyAgainstDummy("pw", heavier)); });
  EXPECT_GT(dummy, real * 0.4) << real << " " << dummy;
  EXPECT_LT(dummy, real * 2.5) << real << " " << dummy;
}

}  // namespace
}  // namespace fhirward::crypto
