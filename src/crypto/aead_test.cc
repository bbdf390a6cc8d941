#include "crypto/aead.h"

#include <cstdio>

#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "gtest/gtest.h"

namespace fhirward::crypto {
namespace {

std::unique_ptr<Aead> NewAead(std::string_view key = {}) {
  auto aead = Aead::NewAes256Gcm(SecretBytes(key.empty() ? RandomBytes(32) : std::string(key)));
  EXPECT_TRUE(aead.ok()) << aead.status();
  return std::move(*aead);
}

TEST(Aead, RoundTrip) {
  auto aead = NewAead();
  auto ct = aead->Encrypt("hello world", "ad");
  ASSERT_TRUE(ct.ok()) << ct.status();
  EXPECT_EQ(ct->size(), 12 + 11 + 16);
  auto pt = aead->Decrypt(*ct, "ad");
  ASSERT_TRUE(pt.ok()) << pt.status();
  EXPECT_EQ(*pt, "hello world");
  auto secret = aead->DecryptSecret(*ct, "ad");
  ASSERT_TRUE(secret.ok());
  EXPECT_EQ(secret->UnsafeView(), "hello world");
}

TEST(Aead, EmptyPlaintextAndAd) {
  auto aead = NewAead();
  auto ct = aead->Encrypt("", "");
  ASSERT_TRUE(ct.ok());
  EXPECT_EQ(ct->size(), 28u);
  auto pt = aead->Decrypt(*ct, "");
  ASSERT_TRUE(pt.ok()) << pt.status();
  EXPECT_EQ(*pt, "");
  EXPECT_FALSE(aead->Decrypt(*ct, "x").ok());
}

TEST(Aead, NoncesDiffer) {
  auto aead = NewAead();
  EXPECT_NE(*aead->Encrypt("same", ""), *aead->Encrypt("same", ""));
}

TEST(Aead, RefusesWrongKeyAdAndTampering) {
  auto aead = NewAead();
  auto other = NewAead();
  std::string ct = *aead->Encrypt("attack at dawn", "row-1");
  EXPECT_EQ(CodeOf(aead->Decrypt(ct, "row-2").status()), ErrorCode::kDecryptionFailed);
  EXPECT_EQ(CodeOf(other->Decrypt(ct, "row-1").status()), ErrorCode::kDecryptionFailed);
  for (size_t i = 0; i < ct.size(); ++i) {
    std::string bad = ct;
    bad[i] ^= 0x01;
    EXPECT_EQ(CodeOf(aead->Decrypt(bad, "row-1").status()), ErrorCode::kDecryptionFailed) << i;
  }
  for (size_t n = 0; n < ct.size(); ++n) {
    EXPECT_EQ(CodeOf(aead->Decrypt(ct.substr(0, n), "row-1").status()),
              ErrorCode::kDecryptionFailed)
        << n;
  }
  EXPECT_FALSE(aead->Decrypt(ct + "x", "row-1").ok());
}

TEST(Aead, KnownAnswer) {
  // NIST GCM test vector (gcmEncryptExtIV256.rsp, Count 0 with 128-bit PT/AAD):
  // Key = 92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b
  // IV = ac93a1a6145299bde902f21a, PT = 2d71bcfa914e4ac045b2aa60955fad24,
  // AAD = 1e0889016f67601c8ebea4943bc23ad6,
  // CT = 8995ae2e6df3dbf96fac7b7137bae67f, Tag = eca5aa77d51d4a0a14d9c51e1da474ab
  auto aead =
      NewAead(*HexDecode("92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b"));
  std::string in = *HexDecode(
      "ac93a1a6145299bde902f21a8995ae2e6df3dbf96fac7b7137bae67feca5aa77d51d4a0a14d9c51e1da474ab");
  auto pt = aead->Decrypt(in, *HexDecode("1e0889016f67601c8ebea4943bc23ad6"));
  ASSERT_TRUE(pt.ok()) << pt.status();
  EXPECT_EQ(HexEncode(*pt), "2d71bcfa914e4ac045b2aa60955fad24");
}

TEST(Aead, RejectsBadKeySize) {
  EXPECT_FALSE(Aead::NewAes256Gcm(SecretBytes(std::string(16, 'k'))).ok());
  EXPECT_FALSE(Aead::NewAes256Gcm(SecretBytes()).ok());
}

TEST(Hash, Sha256KnownAnswers) {
  EXPECT_EQ(HexEncode(Sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HexEncode(Sha256("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Hash, Sha256FileMatchesTheBytesAndFailsOnAMissingFile) {
  const std::string path = ::testing::TempDir() + "sha256_file_test.bin";
  std::string bytes(200000, 'x');  // several read chunks
  bytes += "abc";
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
    std::fclose(f);
  }
  auto d = Sha256File(path);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, Sha256(bytes));
  std::remove(path.c_str());
  auto missing = Sha256File(path);
  EXPECT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(Hash, HmacSha256Rfc4231) {
  // RFC 4231 test case 2.
  EXPECT_EQ(HexEncode(HmacSha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // Test case 1.
  EXPECT_EQ(HexEncode(HmacSha256(std::string(20, '\x0b'), "Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(HmacSha256("", "").size(), 32u);
}

TEST(Hash, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
}

}  // namespace
}  // namespace fhirward::crypto

namespace fhirward::crypto {
namespace {

TEST(Hkdf, Rfc5869TestCase1FirstBlock) {
  SecretBytes ikm(std::string(22, '\x0b'));
  std::string salt;
  for (int i = 0; i <= 0x0c; ++i) salt.push_back(static_cast<char>(i));
  std::string info;
  for (int i = 0xf0; i <= 0xf9; ++i) info.push_back(static_cast<char>(i));
  SecretBytes okm = HkdfSha256(ikm, salt, info);
  EXPECT_EQ(HexEncode(std::string(okm.UnsafeView())),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf");
}

}  // namespace
}  // namespace fhirward::crypto
