#include "crypto/kms.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "crypto/secure_file.h"

namespace fhirward::crypto {
namespace {

// Domain separation: a wrapped DEK can never be mistaken for any other AES-GCM
// output under the same KEK. Fixed length, so prefix + AD is unambiguous.
constexpr std::string_view kWrapDomain = "fhirward-kek-wrap-v1";

std::string WrapAd(std::string_view associated_data) {
  std::string ad;
  ad.reserve(kWrapDomain.size() + 1 + associated_data.size());
  ad.append(kWrapDomain);
  ad.push_back('\0');
  ad.append(associated_data);
  return ad;
}

class LocalKeyFile final : public KeyEncryptionService {
 public:
  LocalKeyFile(std::string key_id, std::unique_ptr<Aead> aead)
      : key_id_(std::move(key_id)), aead_(std::move(aead)) {}

  const std::string& key_id() const override { return key_id_; }

  absl::StatusOr<std::string> Wrap(const SecretBytes& dek,
                                   std::string_view associated_data) const override {
    if (dek.empty()) return Error(ErrorCode::kInternal, "empty data key");
    return aead_->Encrypt(dek.UnsafeView(), WrapAd(associated_data));
  }

  absl::StatusOr<SecretBytes> Unwrap(std::string_view wrapped,
                                     std::string_view associated_data) const override {
    absl::StatusOr<SecretBytes> dek = aead_->DecryptSecret(wrapped, WrapAd(associated_data));
    if (!dek.ok()) return Error(ErrorCode::kDecryptionFailed, "data key failed to unwrap");
    return dek;
  }

 private:
  std::string key_id_;
  std::unique_ptr<Aead> aead_;
};

absl::Status CreateKeyFile(const std::string& path) {
  SecretBytes key(RandomBytes(kAes256KeyBytes));
  return WriteNewFile(path, key.UnsafeView(), 0600);
}

}  // namespace

absl::StatusOr<std::unique_ptr<KeyEncryptionService>> OpenLocalKeyFile(const std::string& path,
                                                                       bool create) {
  if (path.empty()) return Error(ErrorCode::kInternal, "no key file configured");
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT || !create) {
      return Error(ErrorCode::kInternal,
                   "cannot open key file " + path + ": " + std::strerror(errno));
    }
    absl::Status created = CreateKeyFile(path);
    // Lost a race with another process creating it: use theirs.
    if (!created.ok() && ::stat(path.c_str(), &st) != 0) return created;
  }
  absl::StatusOr<SecretBytes> key = ReadPrivateFile(path, 4096);
  if (!key.ok()) return key.status();
  if (key->size() != kAes256KeyBytes) {
    return Error(ErrorCode::kInternal, "key file " + path + " must hold exactly 32 bytes, has " +
                                           std::to_string(key->size()));
  }
  std::string key_id = "local:" + HexEncode(Sha256(key->UnsafeView())).substr(0, 8);
  absl::StatusOr<std::unique_ptr<Aead>> aead = Aead::NewAes256Gcm(std::move(*key));
  if (!aead.ok()) return aead.status();
  return std::unique_ptr<KeyEncryptionService>(
      new LocalKeyFile(std::move(key_id), std::move(*aead)));
}

}  // namespace fhirward::crypto
