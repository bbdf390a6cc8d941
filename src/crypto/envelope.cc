#include "crypto/envelope.h"

#include "common/clock.h"
#include "common/error.h"
#include "crypto/aead.h"

namespace fhirward::crypto {
namespace {

constexpr std::string_view kMagic = "FWE";
constexpr uint8_t kFormatVersion = 1;

absl::Status Refuse(std::string_view why) { return Error(ErrorCode::kDecryptionFailed, why); }

}  // namespace

absl::StatusOr<std::string> EnvelopeCipher::Seal(std::string_view plaintext,
                                                 std::string_view associated_data) const {
  const std::string& kek_id = kek_->key_id();
  if (kek_id.empty() || kek_id.size() > 255) {
    return Error(ErrorCode::kInternal, "key-encryption key id must be 1..255 bytes");
  }
  SecretBytes dek = RandomSecret(kAes256KeyBytes);
  absl::StatusOr<std::string> wrapped = kek_->Wrap(dek, associated_data);
  if (!wrapped.ok()) return wrapped.status();
  if (wrapped->size() > 0xffff) return Error(ErrorCode::kInternal, "wrapped data key too long");
  absl::StatusOr<std::unique_ptr<Aead>> aead = Aead::NewAes256Gcm(std::move(dek));
  if (!aead.ok()) return aead.status();
  absl::StatusOr<std::string> body = (*aead)->Encrypt(plaintext, associated_data);
  if (!body.ok()) return body.status();

  std::string out;
  out.reserve(kMagic.size() + 2 + kek_id.size() + 2 + wrapped->size() + body->size());
  out.append(kMagic);
  out.push_back(static_cast<char>(kFormatVersion));
  out.push_back(static_cast<char>(kek_id.size()));
  out.append(kek_id);
  out.push_back(static_cast<char>(wrapped->size() >> 8));
  out.push_back(static_cast<char>(wrapped->size() & 0xff));
  out.append(*wrapped);
  out.append(*body);
  return out;
}

absl::StatusOr<std::string> EnvelopeCipher::Open(std::string_view envelope,
                                                 std::string_view associated_data) const {
  std::string_view in = envelope;
  if (in.size() < kMagic.size() + 2 || in.substr(0, kMagic.size()) != kMagic) {
    return Refuse("not an encrypted record");
  }
  in.remove_prefix(kMagic.size());
  if (static_cast<uint8_t>(in[0]) != kFormatVersion) {
    return Refuse("unknown envelope format version");
  }
  size_t id_len = static_cast<uint8_t>(in[1]);
  in.remove_prefix(2);
  if (in.size() < id_len + 2) return Refuse("truncated envelope");
  std::string_view kek_id = in.substr(0, id_len);
  in.remove_prefix(id_len);
  if (!kek_->Recognizes(kek_id)) {
    // Key ids are public identifiers, not secrets; naming ours helps rotation.
    return Refuse("envelope was sealed under a different key-encryption key than " +
                  kek_->key_id());
  }
  size_t wrapped_len =
      (static_cast<size_t>(static_cast<uint8_t>(in[0])) << 8) | static_cast<uint8_t>(in[1]);
  in.remove_prefix(2);
  if (in.size() < wrapped_len + kGcmNonceBytes + kGcmTagBytes) {
    return Refuse("truncated envelope");
  }
  std::string_view wrapped = in.substr(0, wrapped_len);
  in.remove_prefix(wrapped_len);

  absl::StatusOr<SecretBytes> dek = kek_->Unwrap(wrapped, associated_data);
  if (!dek.ok()) return Refuse("data key failed to unwrap (wrong key or associated data)");
  if (dek->size() != kAes256KeyBytes) return Refuse("data key has the wrong size");
  absl::StatusOr<std::unique_ptr<Aead>> aead = Aead::NewAes256Gcm(std::move(*dek));
  if (!aead.ok()) return Refuse("data key unusable");
  absl::StatusOr<std::string> plaintext = (*aead)->Decrypt(in, associated_data);
  if (!plaintext.ok()) return Refuse("record failed its integrity check");
  return plaintext;
}

}  // namespace fhirward::crypto
