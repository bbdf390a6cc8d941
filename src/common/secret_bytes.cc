#include "common/secret_bytes.h"

#include <openssl/crypto.h>

namespace fhirward {

void SecretBytes::Wipe() {
  if (!data_.empty()) OPENSSL_cleanse(data_.data(), data_.size());
  data_.clear();
}

}  // namespace fhirward
