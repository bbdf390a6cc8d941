// Test helpers for the crypto and jose tests (header-only; not part of the library API).
#ifndef FHIRWARD_CRYPTO_TEST_UTIL_H_
#define FHIRWARD_CRYPTO_TEST_UTIL_H_

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "crypto/keyring.h"
#include "crypto/kms.h"
#include "gtest/gtest.h"

namespace fhirward::testing_util {

// A fresh private directory, removed recursively on destruction.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "fhirward-test-XXXXXX";
    char* p = mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline unsigned ModeOf(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return 0xffffffffu;
  return st.st_mode & 07777;
}

// A local versioned KEK in `kek_dir` (created) and a key ring over `vault`.
struct TestKeys {
  std::unique_ptr<crypto::VersionedKek> kek;
  std::unique_ptr<crypto::KeyRing> ring;
};

inline TestKeys MakeTestKeys(const std::string& kek_dir, const std::string& vault) {
  std::filesystem::create_directories(kek_dir);
  std::filesystem::permissions(kek_dir, std::filesystem::perms::owner_all);
  TestKeys k;
  auto kek = crypto::VersionedKek::Open(crypto::NewLocalKms(kek_dir), /*create=*/true);
  EXPECT_TRUE(kek.ok()) << kek.status();
  if (!kek.ok()) return k;
  k.kek = std::move(*kek);
  auto ring = crypto::KeyRing::Open({.path = vault, .kek = k.kek.get()});
  EXPECT_TRUE(ring.ok()) << ring.status();
  if (ring.ok()) k.ring = std::move(*ring);
  return k;
}

// A SoftHSM2 token for tests: SOFTHSM2_CONF points at a private token
// directory (set once per process, before the module is first loaded), and
// each call initialises a new token with its own label and the user PIN in
// the environment variable FHIRWARD_TEST_HSM_PIN.
struct SoftHsmToken {
  std::string module;
  std::string label;
  std::string pin_source;
};

inline SoftHsmToken NewSoftHsmToken() {
  // SoftHSM2 reads its token directory when the module initialises and does
  // not see tokens added later, so a pool is made before the first use.
  constexpr int kPool = 24;
  static std::string dir = [] {
    std::string tmpl = ::testing::TempDir() + "fhirward-softhsm-XXXXXX";
    char* p = mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    std::filesystem::create_directories(tmpl + "/tokens");
    FILE* f = fopen((tmpl + "/softhsm2.conf").c_str(), "w");
    fprintf(f, "directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            tmpl.c_str());
    fclose(f);
    setenv("SOFTHSM2_CONF", (tmpl + "/softhsm2.conf").c_str(), 1);
    setenv("FHIRWARD_TEST_HSM_PIN", "5678-test-pin", 1);
    for (int i = 1; i <= kPool; ++i) {
      std::string cmd = "softhsm2-util --init-token --free --label fhirward-test-" +
                        std::to_string(i) + " --so-pin 1234-test-so --pin 5678-test-pin >/dev/null";
      EXPECT_EQ(system(cmd.c_str()), 0) << "softhsm2-util failed (is softhsm2 installed?)";
    }
    return tmpl;
  }();
  static int n = 0;
  EXPECT_LT(n, kPool) << "raise kPool";
  SoftHsmToken t;
  t.module = "/usr/lib/softhsm/libsofthsm2.so";
  t.label = "fhirward-test-" + std::to_string(++n);
  t.pin_source = "env:FHIRWARD_TEST_HSM_PIN";
  return t;
}

}  // namespace fhirward::testing_util

#endif  // FHIRWARD_CRYPTO_TEST_UTIL_H_
