#include "common/secret_bytes.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <cstdio>
#include <cstdlib>

namespace fhirward {

void SecretBytes::Wipe() {
  if (!data_.empty()) OPENSSL_cleanse(data_.data(), data_.size());
  data_.clear();
}

SecretBytes RandomSecret(size_t n) {
  SecretBytes out(n);
  if (n > 0 && RAND_bytes(reinterpret_cast<unsigned char*>(out.UnsafeMutableData()),
                          static_cast<int>(n)) != 1) {
    std::fputs("fatal: CSPRNG failure\n", stderr);
    std::abort();
  }
  return out;
}

}  // namespace fhirward
