// Test helpers for the crypto and jose tests (header-only; not part of the library API).
#ifndef FHIRWARD_CRYPTO_TEST_UTIL_H_
#define FHIRWARD_CRYPTO_TEST_UTIL_H_

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

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

}  // namespace fhirward::testing_util

#endif  // FHIRWARD_CRYPTO_TEST_UTIL_H_
