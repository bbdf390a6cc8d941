#include "crypto/pkcs11.h"

#include <dlfcn.h>
#include <p11-kit/pkcs11.h>

#include <cstring>
#include <vector>

#include "common/error.h"
#include "crypto/aead.h"
#include "crypto/keyring.h"
#include "crypto/test_util.h"
#include "gtest/gtest.h"

namespace fhirward::crypto {
namespace {

using testing_util::NewSoftHsmToken;
using testing_util::SoftHsmToken;

Pkcs11Options OptionsFor(const SoftHsmToken& t, std::string mechanism = "aes-gcm") {
  Pkcs11Options o;
  o.module = t.module;
  o.token_label = t.label;
  o.pin_source = t.pin_source;
  o.mechanism = std::move(mechanism);
  return o;
}

std::unique_ptr<VersionedKek> OpenKek(const Pkcs11Options& o, bool create = true) {
  auto kms = OpenPkcs11Kms(o);
  EXPECT_TRUE(kms.ok()) << kms.status();
  if (!kms.ok()) return nullptr;
  auto kek = VersionedKek::Open(std::move(*kms), create);
  EXPECT_TRUE(kek.ok()) << kek.status();
  return kek.ok() ? std::move(*kek) : nullptr;
}

class Pkcs11Test : public ::testing::TestWithParam<std::string> {};

TEST_P(Pkcs11Test, WrapsUnderAKeyGeneratedOnTheToken) {
  SoftHsmToken token = NewSoftHsmToken();
  auto o = OptionsFor(token, GetParam());
  auto kek = OpenKek(o);
  ASSERT_NE(kek, nullptr);
  EXPECT_EQ(kek->current_version(), 1u);
  EXPECT_NE(kek->backend().Describe().find(token.label), std::string::npos);
  EXPECT_EQ(kek->backend().Describe().find("5678"), std::string::npos);

  SecretBytes dek = RandomSecret(32);
  auto wrapped = kek->Wrap(dek, "tenant-key|default|1");
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  EXPECT_EQ(wrapped->find(dek.UnsafeView()), std::string::npos);
  auto back = kek->Unwrap(*wrapped, "tenant-key|default|1");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->UnsafeView(), dek.UnsafeView());

  // Wrong associated data, and any flipped byte, are refused.
  auto wrong = kek->Unwrap(*wrapped, "tenant-key|other|1");
  EXPECT_EQ(CodeOf(wrong.status()), ErrorCode::kDecryptionFailed);
  for (size_t i = 8; i < wrapped->size(); i += 7) {
    std::string bad = *wrapped;
    bad[i] ^= 0x01;
    EXPECT_FALSE(kek->Unwrap(bad, "tenant-key|default|1").ok()) << "byte " << i;
  }

  // A second session (another process, in effect) finds the same key.
  auto again = OpenKek(o, /*create=*/false);
  ASSERT_NE(again, nullptr);
  auto back2 = again->Unwrap(*wrapped, "tenant-key|default|1");
  ASSERT_TRUE(back2.ok()) << back2.status();
  EXPECT_EQ(back2->UnsafeView(), dek.UnsafeView());
}

TEST_P(Pkcs11Test, WrapsSecretsOfAnySizeNotOnlyKeys) {
  SoftHsmToken token = NewSoftHsmToken();
  auto kek = OpenKek(OptionsFor(token, GetParam()));
  ASSERT_NE(kek, nullptr);
  for (size_t n : {1u, 20u, 31u, 33u, 300u, 4096u}) {
    SecretBytes secret = RandomSecret(n);
    auto wrapped = kek->Wrap(secret, "fhirward-totp-v1:alice");
    ASSERT_TRUE(wrapped.ok()) << n << ": " << wrapped.status();
    auto back = kek->Unwrap(*wrapped, "fhirward-totp-v1:alice");
    ASSERT_TRUE(back.ok()) << n << ": " << back.status();
    EXPECT_EQ(back->UnsafeView(), secret.UnsafeView()) << n;
    EXPECT_FALSE(kek->Unwrap(*wrapped, "fhirward-totp-v1:bob").ok()) << n;
  }
  EXPECT_FALSE(kek->Wrap(RandomSecret(4097), "ad").ok());
}

TEST_P(Pkcs11Test, RotationKeepsOldBlobsUntilTheOldVersionIsDestroyed) {
  SoftHsmToken token = NewSoftHsmToken();
  auto kek = OpenKek(OptionsFor(token, GetParam()));
  ASSERT_NE(kek, nullptr);
  SecretBytes dek = RandomSecret(32);
  auto v1 = kek->Wrap(dek, "ad");
  ASSERT_TRUE(v1.ok());
  auto rotated = kek->Rotate();
  ASSERT_TRUE(rotated.ok()) << rotated.status();
  EXPECT_EQ(*rotated, 2u);
  auto v2 = kek->Wrap(dek, "ad");
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(VersionedKek::VersionOf(*v1), 1u);
  EXPECT_EQ(VersionedKek::VersionOf(*v2), 2u);
  EXPECT_TRUE(kek->Unwrap(*v1, "ad").ok());
  EXPECT_FALSE(kek->Destroy(2).ok()) << "the current version cannot be destroyed";
  ASSERT_TRUE(kek->Destroy(1).ok());
  EXPECT_EQ(kek->versions(), std::vector<uint32_t>{2});
  EXPECT_EQ(CodeOf(kek->Unwrap(*v1, "ad").status()), ErrorCode::kDecryptionFailed);
  EXPECT_TRUE(kek->Unwrap(*v2, "ad").ok());
}

TEST_P(Pkcs11Test, KeyRingOverTheHsm) {
  SoftHsmToken token = NewSoftHsmToken();
  auto kek = OpenKek(OptionsFor(token, GetParam()));
  ASSERT_NE(kek, nullptr);
  testing_util::TempDir dir;
  auto ring = KeyRing::Open({.path = dir.File("keys.db"), .kek = kek.get()});
  ASSERT_TRUE(ring.ok()) << ring.status();
  auto sealed = (*ring)->Seal("default", {"p1"}, "{\"resourceType\":\"Patient\"}", "ad");
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  auto opened = (*ring)->Open("default", *sealed, "ad");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(*opened, "{\"resourceType\":\"Patient\"}");
  EXPECT_FALSE((*ring)->Open("default", *sealed, "other").ok());
}

INSTANTIATE_TEST_SUITE_P(Mechanisms, Pkcs11Test, ::testing::Values("aes-gcm", "aes-key-wrap-pad"));

// Closes every session on the token, as an HSM restart or failover does.
void CloseAllSessions(const SoftHsmToken& token) {
  void* h = dlopen(token.module.c_str(), RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(h, nullptr) << "the module is not loaded";
  auto get = reinterpret_cast<CK_RV (*)(CK_FUNCTION_LIST**)>(dlsym(h, "C_GetFunctionList"));
  CK_FUNCTION_LIST* fn = nullptr;
  ASSERT_EQ(get(&fn), CKR_OK);
  CK_ULONG n = 0;
  ASSERT_EQ(fn->C_GetSlotList(CK_TRUE, nullptr, &n), CKR_OK);
  std::vector<CK_SLOT_ID> slots(n);
  ASSERT_EQ(fn->C_GetSlotList(CK_TRUE, slots.data(), &n), CKR_OK);
  std::string want = token.label;
  want.resize(32, ' ');
  int closed = 0;
  for (CK_SLOT_ID slot : slots) {
    CK_TOKEN_INFO info{};
    if (fn->C_GetTokenInfo(slot, &info) == CKR_OK &&
        std::memcmp(info.label, want.data(), 32) == 0) {
      EXPECT_EQ(fn->C_CloseAllSessions(slot), CKR_OK);
      ++closed;
    }
  }
  EXPECT_EQ(closed, 1);
  dlclose(h);
}

TEST_P(Pkcs11Test, ALostSessionIsReopenedAndTheCallRetried) {
  SoftHsmToken token = NewSoftHsmToken();
  auto kek = OpenKek(OptionsFor(token, GetParam()));
  ASSERT_NE(kek, nullptr);
  SecretBytes dek = RandomSecret(32);
  auto wrapped = kek->Wrap(dek, "ad");
  ASSERT_TRUE(wrapped.ok());
  CloseAllSessions(token);
  auto back = kek->Unwrap(*wrapped, "ad");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->UnsafeView(), dek.UnsafeView());
  CloseAllSessions(token);
  auto again = kek->Wrap(dek, "ad");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(kek->Unwrap(*again, "ad").ok());
  // Wrong associated data is still a refusal, not a reconnect loop.
  EXPECT_EQ(CodeOf(kek->Unwrap(*wrapped, "other").status()), ErrorCode::kDecryptionFailed);
}

TEST(Pkcs11, WrongPinIsRefusedWithoutNamingIt) {
  SoftHsmToken token = NewSoftHsmToken();
  setenv("FHIRWARD_TEST_WRONG_PIN", "0000-wrong", 1);
  Pkcs11Options o = OptionsFor(token);
  o.pin_source = "env:FHIRWARD_TEST_WRONG_PIN";
  auto kms = OpenPkcs11Kms(o);
  ASSERT_FALSE(kms.ok());
  EXPECT_NE(kms.status().message().find("CKR_PIN_INCORRECT"), std::string::npos) << kms.status();
  EXPECT_EQ(kms.status().message().find("0000-wrong"), std::string::npos);
}

TEST(Pkcs11, UnknownTokenModuleAndMechanismAreClearErrors) {
  SoftHsmToken token = NewSoftHsmToken();
  Pkcs11Options o = OptionsFor(token);
  o.token_label = "no-such-token";
  auto a = OpenPkcs11Kms(o);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("no-such-token"), std::string::npos);
  o = OptionsFor(token);
  o.module = "/nonexistent/libpkcs11.so";
  EXPECT_FALSE(OpenPkcs11Kms(o).ok());
  o = OptionsFor(token, "aes-cbc");
  EXPECT_FALSE(OpenPkcs11Kms(o).ok());
  o = OptionsFor(token);
  o.pin_source = "env:FHIRWARD_TEST_UNSET_VARIABLE";
  EXPECT_FALSE(OpenPkcs11Kms(o).ok());
  // Without create, an empty token is an error, not a new key.
  auto kms = OpenPkcs11Kms(OptionsFor(token));
  ASSERT_TRUE(kms.ok()) << kms.status();
  EXPECT_FALSE(VersionedKek::Open(std::move(*kms), /*create=*/false).ok());
}

TEST(Pkcs11, SecretSources) {
  testing_util::TempDir dir;
  setenv("FHIRWARD_TEST_SECRET", "s3cret", 1);
  auto env = ReadSecretSource("env:FHIRWARD_TEST_SECRET");
  ASSERT_TRUE(env.ok());
  EXPECT_EQ(env->UnsafeView(), "s3cret");
  FILE* f = fopen(dir.File("pin").c_str(), "w");
  fputs("1234\n", f);
  fclose(f);
  chmod(dir.File("pin").c_str(), 0644);
  EXPECT_FALSE(ReadSecretSource("file:" + dir.File("pin")).ok()) << "group-readable PIN file";
  chmod(dir.File("pin").c_str(), 0600);
  auto file = ReadSecretSource("file:" + dir.File("pin"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->UnsafeView(), "1234");
  EXPECT_FALSE(ReadSecretSource("1234").ok());
}

}  // namespace
}  // namespace fhirward::crypto
