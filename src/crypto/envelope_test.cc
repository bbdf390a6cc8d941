#include "crypto/envelope.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "common/clock.h"
#include "common/error.h"
#include "crypto/kms.h"
#include "crypto/test_util.h"
#include "gtest/gtest.h"

namespace fhirward::crypto {
namespace {

using testing_util::ModeOf;
using testing_util::TempDir;

void WriteRaw(const std::string& path, const std::string& bytes, mode_t mode) {
  int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, mode);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
  ASSERT_EQ(::chmod(path.c_str(), mode), 0);
}

TEST(LocalKeyFile, CreatesWith0600AndReopensWithSameId) {
  TempDir dir;
  std::string path = dir.File("kek");
  auto kek = OpenLocalKeyFile(path, /*create=*/true);
  ASSERT_TRUE(kek.ok()) << kek.status();
  EXPECT_EQ(ModeOf(path), 0600u);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 32);
  EXPECT_EQ((*kek)->key_id().rfind("local:", 0), 0u);
  EXPECT_EQ((*kek)->key_id().size(), 6u + 8u);

  auto again = OpenLocalKeyFile(path, /*create=*/false);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->key_id(), (*kek)->key_id());
  // The reopened KEK unwraps what the first one wrapped.
  SecretBytes dek(std::string(32, 'd'));
  auto wrapped = (*kek)->Wrap(dek, "ad");
  ASSERT_TRUE(wrapped.ok());
  auto unwrapped = (*again)->Unwrap(*wrapped, "ad");
  ASSERT_TRUE(unwrapped.ok());
  EXPECT_EQ(unwrapped->UnsafeView(), dek.UnsafeView());
  EXPECT_EQ(CodeOf((*again)->Unwrap(*wrapped, "other").status()), ErrorCode::kDecryptionFailed);
}

TEST(LocalKeyFile, MissingWithoutCreateFails) {
  TempDir dir;
  EXPECT_FALSE(OpenLocalKeyFile(dir.File("nope"), false).ok());
}

TEST(LocalKeyFile, RefusesGroupOrOtherAccessibleFile) {
  TempDir dir;
  for (mode_t mode : {0640, 0604, 0660, 0644, 0602}) {
    std::string path = dir.File("kek-" + std::to_string(mode));
    WriteRaw(path, std::string(32, 'k'), mode);
    auto kek = OpenLocalKeyFile(path, true);
    ASSERT_FALSE(kek.ok()) << std::oct << mode;
    std::string detail = DetailOf(kek.status());
    EXPECT_NE(detail.find(path), std::string::npos) << detail;
    EXPECT_NE(detail.find("chmod 600"), std::string::npos) << detail;
    EXPECT_EQ(detail.find(std::string(32, 'k')), std::string::npos);
  }
}

TEST(LocalKeyFile, RefusesWrongSize) {
  TempDir dir;
  for (size_t n : {0, 16, 31, 33, 64}) {
    std::string path = dir.File("kek-" + std::to_string(n));
    WriteRaw(path, std::string(n, 'k'), 0600);
    auto kek = OpenLocalKeyFile(path, true);
    EXPECT_FALSE(kek.ok()) << n;
  }
}

TEST(LocalKeyFile, RefusesDirectory) {
  TempDir dir;
  EXPECT_FALSE(OpenLocalKeyFile(dir.path(), true).ok());
}

class EnvelopeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto kek = OpenLocalKeyFile(dir_.File("kek"), true);
    ASSERT_TRUE(kek.ok()) << kek.status();
    kek_ = std::move(*kek);
  }
  TempDir dir_;
  std::unique_ptr<KeyEncryptionService> kek_;
};

TEST_F(EnvelopeTest, RoundTrip) {
  EnvelopeCipher cipher(kek_.get());
  std::string plaintext = R"({"resourceType":"Patient","id":"p1"})";
  auto sealed = cipher.Seal(plaintext, "t1|Patient|p1|1");
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  EXPECT_EQ(sealed->substr(0, 4), std::string("FWE\x01", 4));
  EXPECT_EQ(sealed->find("Patient"), std::string::npos);
  auto opened = cipher.Open(*sealed, "t1|Patient|p1|1");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(*opened, plaintext);
  // Layout: magic, version, id length, id, wrapped length, wrapped DEK (28+32), body.
  const std::string& id = kek_->key_id();
  EXPECT_EQ(static_cast<uint8_t>((*sealed)[4]), id.size());
  EXPECT_EQ(sealed->substr(5, id.size()), id);
  size_t wrapped_len = (static_cast<uint8_t>((*sealed)[5 + id.size()]) << 8) |
                       static_cast<uint8_t>((*sealed)[6 + id.size()]);
  EXPECT_EQ(wrapped_len, 12u + 32u + 16u);
  EXPECT_EQ(sealed->size(), 7 + id.size() + wrapped_len + 12 + plaintext.size() + 16);
}

TEST_F(EnvelopeTest, EmptyPlaintext) {
  EnvelopeCipher cipher(kek_.get());
  auto sealed = cipher.Seal("", "ad");
  ASSERT_TRUE(sealed.ok());
  auto opened = cipher.Open(*sealed, "ad");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(*opened, "");
}

TEST_F(EnvelopeTest, FreshDataKeyPerSeal) {
  EnvelopeCipher cipher(kek_.get());
  EXPECT_NE(*cipher.Seal("x", "ad"), *cipher.Seal("x", "ad"));
}

TEST_F(EnvelopeTest, WrongAssociatedDataRefused) {
  EnvelopeCipher cipher(kek_.get());
  std::string sealed = *cipher.Seal("secret", "tenant-a|Patient|p1|1");
  for (const char* ad : {"tenant-b|Patient|p1|1", "tenant-a|Patient|p2|1", "tenant-a|Patient|p1|2",
                         "tenant-a|Observation|p1|1", ""}) {
    auto opened = cipher.Open(sealed, ad);
    ASSERT_FALSE(opened.ok()) << ad;
    EXPECT_EQ(CodeOf(opened.status()), ErrorCode::kDecryptionFailed);
  }
}

TEST_F(EnvelopeTest, EveryFlippedByteRefused) {
  EnvelopeCipher cipher(kek_.get());
  std::string sealed = *cipher.Seal("tiny", "ad");
  for (size_t i = 0; i < sealed.size(); ++i) {
    for (unsigned char mask : {0x01, 0x80, 0xff}) {
      std::string bad = sealed;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      auto opened = cipher.Open(bad, "ad");
      ASSERT_FALSE(opened.ok()) << "byte " << i << " mask " << int(mask);
      EXPECT_EQ(CodeOf(opened.status()), ErrorCode::kDecryptionFailed);
      EXPECT_EQ(DetailOf(opened.status()).find("tiny"), std::string::npos);
    }
  }
}

TEST_F(EnvelopeTest, EveryTruncationRefused) {
  EnvelopeCipher cipher(kek_.get());
  std::string sealed = *cipher.Seal("tiny", "ad");
  for (size_t n = 0; n < sealed.size(); ++n) {
    auto opened = cipher.Open(std::string_view(sealed).substr(0, n), "ad");
    ASSERT_FALSE(opened.ok()) << n;
    EXPECT_EQ(CodeOf(opened.status()), ErrorCode::kDecryptionFailed);
  }
}

TEST_F(EnvelopeTest, ExtendedRefused) {
  EnvelopeCipher cipher(kek_.get());
  std::string sealed = *cipher.Seal("tiny", "ad");
  EXPECT_FALSE(cipher.Open(sealed + std::string(1, '\0'), "ad").ok());
  EXPECT_FALSE(cipher.Open(sealed + sealed, "ad").ok());
}

TEST_F(EnvelopeTest, DifferentKekRefused) {
  TempDir other_dir;
  auto other = OpenLocalKeyFile(other_dir.File("kek"), true);
  ASSERT_TRUE(other.ok());
  std::string sealed = *EnvelopeCipher(kek_.get()).Seal("secret", "ad");
  auto opened = EnvelopeCipher(other->get()).Open(sealed, "ad");
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(CodeOf(opened.status()), ErrorCode::kDecryptionFailed);
}

// A KEK that claims the same id as another but holds a different key.
class SameIdKek final : public KeyEncryptionService {
 public:
  SameIdKek(std::string id, std::unique_ptr<KeyEncryptionService> inner)
      : id_(std::move(id)), inner_(std::move(inner)) {}
  const std::string& key_id() const override { return id_; }
  absl::StatusOr<std::string> Wrap(const SecretBytes& dek, std::string_view ad) const override {
    return inner_->Wrap(dek, ad);
  }
  absl::StatusOr<SecretBytes> Unwrap(std::string_view w, std::string_view ad) const override {
    return inner_->Unwrap(w, ad);
  }

 private:
  std::string id_;
  std::unique_ptr<KeyEncryptionService> inner_;
};

TEST_F(EnvelopeTest, SameIdDifferentKeyRefused) {
  TempDir other_dir;
  auto other = OpenLocalKeyFile(other_dir.File("kek"), true);
  ASSERT_TRUE(other.ok());
  SameIdKek impostor(kek_->key_id(), std::move(*other));
  std::string sealed = *EnvelopeCipher(kek_.get()).Seal("secret", "ad");
  auto opened = EnvelopeCipher(&impostor).Open(sealed, "ad");
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(CodeOf(opened.status()), ErrorCode::kDecryptionFailed);
}

TEST_F(EnvelopeTest, WrongMagicOrVersionRefused) {
  EnvelopeCipher cipher(kek_.get());
  std::string sealed = *cipher.Seal("secret", "ad");
  std::string bad_magic = sealed;
  bad_magic[0] = 'X';
  EXPECT_EQ(CodeOf(cipher.Open(bad_magic, "ad").status()), ErrorCode::kDecryptionFailed);
  for (int v : {0, 2, 255}) {
    std::string bad_version = sealed;
    bad_version[3] = static_cast<char>(v);
    auto opened = cipher.Open(bad_version, "ad");
    ASSERT_FALSE(opened.ok());
    EXPECT_EQ(CodeOf(opened.status()), ErrorCode::kDecryptionFailed);
    EXPECT_NE(DetailOf(opened.status()).find("version"), std::string::npos);
  }
  EXPECT_FALSE(cipher.Open("", "ad").ok());
  EXPECT_FALSE(cipher.Open("FWE", "ad").ok());
  EXPECT_FALSE(cipher.Open(std::string("FWE\x01\xff", 5), "ad").ok());
  EXPECT_FALSE(cipher.Open(R"({"resourceType":"Patient"})", "ad").ok());
}

TEST_F(EnvelopeTest, HostileLengthsDoNotCrash) {
  EnvelopeCipher cipher(kek_.get());
  const std::string& id = kek_->key_id();
  std::string header = std::string("FWE\x01", 4) + static_cast<char>(id.size()) + id;
  for (std::string len : {std::string("\xff\xff", 2), std::string("\x00\x00", 2),
                          std::string("\x00\x3c", 2), std::string("\x00\x01", 2)}) {
    for (size_t tail : {0, 1, 27, 28, 60, 100}) {
      std::string env = header + len + std::string(tail, 'A');
      EXPECT_EQ(CodeOf(cipher.Open(env, "ad").status()), ErrorCode::kDecryptionFailed);
    }
  }
}

}  // namespace
}  // namespace fhirward::crypto

namespace fhirward::crypto {
namespace {

TEST_F(EnvelopeTest, RandomBytesNeverOpen) {
  EnvelopeCipher cipher(kek_.get());
  const std::string& id = kek_->key_id();
  std::string header = std::string("FWE\x01", 4) + static_cast<char>(id.size()) + id;
  for (int i = 0; i < 2000; ++i) {
    std::string noise = RandomBytes(static_cast<size_t>(i % 150));
    EXPECT_FALSE(cipher.Open(noise, "ad").ok());
    EXPECT_FALSE(cipher.Open(header + noise, "ad").ok());
  }
}

}  // namespace
}  // namespace fhirward::crypto
