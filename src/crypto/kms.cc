#include "crypto/kms.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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
  SecretBytes key = RandomSecret(kAes256KeyBytes);
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

namespace {

constexpr std::string_view kVersionMagic = "FWK2";

class LocalKms final : public KeyManagementService {
 public:
  explicit LocalKms(std::string dir) : dir_(std::move(dir)) {}
  std::string Describe() const override { return "local key directory " + dir_; }

  absl::StatusOr<std::vector<uint32_t>> Versions() const override {
    std::vector<uint32_t> out;
    DIR* d = ::opendir(dir_.c_str());
    if (d == nullptr) {
      return Error(ErrorCode::kInternal, "cannot list " + dir_ + ": " + std::strerror(errno));
    }
    while (struct dirent* e = ::readdir(d)) {
      std::string_view name = e->d_name;
      if (name == "kek.key") {
        out.push_back(1);
      } else if (name.size() >= 10 && name.substr(0, 5) == "kek-v" &&
                 name.substr(name.size() - 4) == ".key") {
        std::string_view digits = name.substr(5, name.size() - 9);
        uint64_t v = 0;
        bool ok = !digits.empty() && digits.size() < 10;
        for (char c : digits) {
          if (c < '0' || c > '9') ok = false;
          v = v * 10 + static_cast<uint64_t>(c - '0');
        }
        if (ok && v > 1) out.push_back(static_cast<uint32_t>(v));
      }
    }
    ::closedir(d);
    std::sort(out.begin(), out.end());
    return out;
  }

  absl::StatusOr<std::unique_ptr<KeyEncryptionService>> OpenVersion(
      uint32_t version) const override {
    return OpenLocalKeyFile(PathOf(version), false);
  }

  absl::Status CreateVersion(uint32_t version) override {
    if (version == 0) return Error(ErrorCode::kInternal, "KEK versions start at 1");
    return CreateKeyFile(PathOf(version));
  }

  absl::Status DestroyVersion(uint32_t version) override {
    std::string path = PathOf(version);
    // Overwrite the key's own blocks in place, sync, then unlink; on flash
    // storage the old blocks may survive anyway, which is why production runs
    // on an HSM (docs/crypto.md).
    SecretBytes noise = RandomSecret(kAes256KeyBytes);
    int fd = ::open(path.c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      return Error(ErrorCode::kInternal, "cannot destroy " + path + ": " + std::strerror(errno));
    }
    bool ok = ::pwrite(fd, noise.UnsafeView().data(), noise.size(), 0) ==
                  static_cast<ssize_t>(noise.size()) &&
              ::fsync(fd) == 0;
    ::close(fd);
    if (!ok || ::unlink(path.c_str()) != 0) {
      return Error(ErrorCode::kInternal, "cannot destroy " + path + ": " + std::strerror(errno));
    }
    return absl::OkStatus();
  }

 private:
  std::string PathOf(uint32_t version) const {
    return version == 1 ? dir_ + "/kek.key" : dir_ + "/kek-v" + std::to_string(version) + ".key";
  }
  std::string dir_;
};

}  // namespace

std::unique_ptr<KeyManagementService> NewLocalKms(std::string dir) {
  return std::make_unique<LocalKms>(std::move(dir));
}

VersionedKek::VersionedKek(std::unique_ptr<KeyManagementService> backend)
    : backend_(std::move(backend)), key_id_("fhirward-kek") {}

absl::StatusOr<std::unique_ptr<VersionedKek>> VersionedKek::Open(
    std::unique_ptr<KeyManagementService> backend, bool create) {
  std::unique_ptr<VersionedKek> kek(new VersionedKek(std::move(backend)));
  auto versions = kek->backend_->Versions();
  if (!versions.ok()) return versions.status();
  if (versions->empty()) {
    if (!create) {
      return Error(ErrorCode::kInternal, "no key-encryption key in " + kek->backend_->Describe());
    }
    if (auto s = kek->backend_->CreateVersion(1); !s.ok()) return s;
  }
  if (auto s = kek->Reload(); !s.ok()) return s;
  return kek;
}

absl::Status VersionedKek::Reload() {
  auto versions = backend_->Versions();
  if (!versions.ok()) return versions.status();
  std::map<uint32_t, std::shared_ptr<KeyEncryptionService>> keys;
  {
    std::lock_guard lk(mu_);
    for (uint32_t v : *versions) {
      auto it = keys_.find(v);
      if (it != keys_.end()) keys.emplace(v, it->second);
    }
  }
  for (uint32_t v : *versions) {
    if (keys.count(v) != 0) continue;
    auto k = backend_->OpenVersion(v);
    if (!k.ok()) return k.status();
    keys.emplace(v, std::shared_ptr<KeyEncryptionService>(std::move(*k)));
  }
  if (keys.empty()) {
    return Error(ErrorCode::kInternal, "no key-encryption key in " + backend_->Describe());
  }
  std::lock_guard lk(mu_);
  keys_ = std::move(keys);
  return absl::OkStatus();
}

uint32_t VersionedKek::current_version() const {
  std::lock_guard lk(mu_);
  return keys_.empty() ? 0 : keys_.rbegin()->first;
}

std::vector<uint32_t> VersionedKek::versions() const {
  std::lock_guard lk(mu_);
  std::vector<uint32_t> out;
  for (const auto& [v, k] : keys_) out.push_back(v);
  return out;
}

bool VersionedKek::Recognizes(std::string_view id) const {
  if (id == key_id_) return true;
  std::lock_guard lk(mu_);
  for (const auto& [v, k] : keys_) {
    if (k->key_id() == id) return true;
  }
  return false;
}

uint32_t VersionedKek::VersionOf(std::string_view wrapped) {
  if (wrapped.size() < kVersionMagic.size() + 4 ||
      wrapped.substr(0, kVersionMagic.size()) != kVersionMagic) {
    return 1;
  }
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) {
    v = (v << 8) | static_cast<uint8_t>(wrapped[kVersionMagic.size() + i]);
  }
  return v;
}

absl::StatusOr<std::string> VersionedKek::Wrap(const SecretBytes& dek,
                                               std::string_view associated_data) const {
  uint32_t version = 0;
  std::shared_ptr<KeyEncryptionService> key;
  {
    std::lock_guard lk(mu_);
    if (keys_.empty()) return Error(ErrorCode::kInternal, "no key-encryption key");
    version = keys_.rbegin()->first;
    key = keys_.rbegin()->second;
  }
  auto inner = key->Wrap(dek, associated_data);
  if (!inner.ok()) return inner.status();
  std::string out(kVersionMagic);
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(version >> shift));
  out.append(*inner);
  return out;
}

absl::StatusOr<SecretBytes> VersionedKek::Unwrap(std::string_view wrapped,
                                                 std::string_view associated_data) const {
  unwraps_.fetch_add(1, std::memory_order_relaxed);
  bool prefixed = wrapped.size() >= kVersionMagic.size() + 4 &&
                  wrapped.substr(0, kVersionMagic.size()) == kVersionMagic;
  uint32_t version = VersionOf(wrapped);
  std::shared_ptr<KeyEncryptionService> key;
  auto find = [&] {
    std::lock_guard lk(mu_);
    auto it = keys_.find(version);
    if (it != keys_.end()) key = it->second;
  };
  find();
  if (key == nullptr) {
    // A version created since we loaded (`fhirward keys rotate-kek` in another
    // process): look again, at most once a second.
    const int64_t now = SystemClock::Get().NowSeconds();
    int64_t last = last_reload_.load();
    if (now != last && last_reload_.compare_exchange_strong(last, now)) {
      (void)const_cast<VersionedKek*>(this)->Reload();
      find();
    }
  }
  if (key == nullptr) {
    return Error(ErrorCode::kDecryptionFailed,
                 "data key was wrapped under key-encryption key version " +
                     std::to_string(version) + ", which this service does not hold");
  }
  return key->Unwrap(prefixed ? wrapped.substr(kVersionMagic.size() + 4) : wrapped,
                     associated_data);
}

absl::StatusOr<uint32_t> VersionedKek::Rotate() {
  if (auto s = Reload(); !s.ok()) return s;
  uint32_t next = current_version() + 1;
  if (auto s = backend_->CreateVersion(next); !s.ok()) return s;
  if (auto s = Reload(); !s.ok()) return s;
  return next;
}

absl::Status VersionedKek::Destroy(uint32_t version) {
  if (auto s = Reload(); !s.ok()) return s;
  if (version == current_version()) {
    return Error(ErrorCode::kInvalidRequest,
                 "refusing to destroy the current key-encryption key version");
  }
  {
    std::lock_guard lk(mu_);
    if (keys_.count(version) == 0) {
      return Error(ErrorCode::kNotFound,
                   "no key-encryption key version " + std::to_string(version));
    }
  }
  if (auto s = backend_->DestroyVersion(version); !s.ok()) return s;
  return Reload();
}

}  // namespace fhirward::crypto
