#include "crypto/aead.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "common/error.h"

namespace fhirward::crypto {
namespace {

struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

// Fetched once: implicit fetches (EVP_aes_256_gcm()) take a lock and a
// provider lookup on every init in OpenSSL 3.
const EVP_CIPHER* Aes256Gcm() {
  static const EVP_CIPHER* const cipher = [] {
    EVP_CIPHER* c = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
    if (c == nullptr) {
      std::fputs("fatal: OpenSSL has no AES-256-GCM\n", stderr);
      std::abort();
    }
    return c;
  }();
  return cipher;
}

const unsigned char* U(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}
unsigned char* U(char* p) { return reinterpret_cast<unsigned char*>(p); }

bool FitsInt(size_t n) { return n <= static_cast<size_t>(INT_MAX); }

// Decrypts nonce|ct|tag into `out`, which has room for exactly the ciphertext
// size; on failure `out` is wiped.
absl::Status DecryptInto(std::string_view key, std::string_view in, std::string_view ad,
                         char* out) {
  const std::string_view nonce = in.substr(0, kGcmNonceBytes);
  const std::string_view ct = in.substr(kGcmNonceBytes, in.size() - kGcmNonceBytes - kGcmTagBytes);
  std::string_view tag = in.substr(in.size() - kGcmTagBytes);
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return Error(ErrorCode::kInternal, "EVP_CIPHER_CTX_new failed");
  int len = 0;
  int total = 0;
  // The tag goes through a mutable copy: the ctrl interface takes void*.
  unsigned char tag_buf[kGcmTagBytes];
  std::memcpy(tag_buf, tag.data(), kGcmTagBytes);
  bool ok = EVP_DecryptInit_ex2(ctx.get(), Aes256Gcm(), U(key), U(nonce), nullptr) == 1;
  if (ok && !ad.empty()) {
    ok = EVP_DecryptUpdate(ctx.get(), nullptr, &len, U(ad), static_cast<int>(ad.size())) == 1;
  }
  if (ok && !ct.empty()) {
    ok = EVP_DecryptUpdate(ctx.get(), U(out), &len, U(ct), static_cast<int>(ct.size())) == 1;
    total = len;
  }
  ok = ok && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kGcmTagBytes, tag_buf) == 1 &&
       EVP_DecryptFinal_ex(ctx.get(), U(out) + total, &len) == 1 &&
       static_cast<size_t>(total + len) == ct.size();
  if (!ok) {
    if (!ct.empty()) OPENSSL_cleanse(out, ct.size());
    return Error(ErrorCode::kDecryptionFailed, "authentication tag mismatch");
  }
  return absl::OkStatus();
}

absl::Status CheckDecryptInput(std::string_view ciphertext, std::string_view ad) {
  if (ciphertext.size() < kGcmNonceBytes + kGcmTagBytes) {
    return Error(ErrorCode::kDecryptionFailed, "ciphertext too short");
  }
  if (!FitsInt(ciphertext.size()) || !FitsInt(ad.size())) {
    return Error(ErrorCode::kDecryptionFailed, "ciphertext too large");
  }
  return absl::OkStatus();
}

}  // namespace

Aead::~Aead() = default;

absl::StatusOr<std::unique_ptr<Aead>> Aead::NewAes256Gcm(SecretBytes key) {
  if (key.size() != kAes256KeyBytes) {
    return Error(ErrorCode::kInternal, "AES-256-GCM key must be 32 bytes");
  }
  return std::unique_ptr<Aead>(new Aead(std::move(key)));
}

absl::StatusOr<std::string> Aead::Encrypt(std::string_view plaintext,
                                          std::string_view associated_data) const {
  if (!FitsInt(plaintext.size() + kGcmNonceBytes + kGcmTagBytes) ||
      !FitsInt(associated_data.size())) {
    return Error(ErrorCode::kInternal, "plaintext too large");
  }
  std::string out(kGcmNonceBytes + plaintext.size() + kGcmTagBytes, '\0');
  unsigned char* nonce = U(out.data());
  if (RAND_bytes(nonce, kGcmNonceBytes) != 1) {
    return Error(ErrorCode::kInternal, "RAND_bytes failed");
  }
  unsigned char* ct = nonce + kGcmNonceBytes;
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return Error(ErrorCode::kInternal, "EVP_CIPHER_CTX_new failed");
  int len = 0;
  int total = 0;
  bool ok = EVP_EncryptInit_ex2(ctx.get(), Aes256Gcm(), U(key_.UnsafeView()), nonce, nullptr) == 1;
  if (ok && !associated_data.empty()) {
    ok = EVP_EncryptUpdate(ctx.get(), nullptr, &len, U(associated_data),
                           static_cast<int>(associated_data.size())) == 1;
  }
  if (ok && !plaintext.empty()) {
    ok = EVP_EncryptUpdate(ctx.get(), ct, &len, U(plaintext), static_cast<int>(plaintext.size())) ==
         1;
    total = len;
  }
  if (ok) {
    ok = EVP_EncryptFinal_ex(ctx.get(), ct + total, &len) == 1;
    total += len;
  }
  if (ok) {
    ok = static_cast<size_t>(total) == plaintext.size() &&
         EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kGcmTagBytes, ct + total) == 1;
  }
  if (!ok) return Error(ErrorCode::kInternal, "AES-256-GCM encryption failed");
  return out;
}

absl::StatusOr<std::string> Aead::Decrypt(std::string_view ciphertext,
                                          std::string_view associated_data) const {
  if (absl::Status s = CheckDecryptInput(ciphertext, associated_data); !s.ok()) return s;
  std::string out(ciphertext.size() - kGcmNonceBytes - kGcmTagBytes, '\0');
  if (absl::Status s = DecryptInto(key_.UnsafeView(), ciphertext, associated_data, out.data());
      !s.ok()) {
    return s;
  }
  return out;
}

absl::StatusOr<SecretBytes> Aead::DecryptSecret(std::string_view ciphertext,
                                                std::string_view associated_data) const {
  if (absl::Status s = CheckDecryptInput(ciphertext, associated_data); !s.ok()) return s;
  SecretBytes out(ciphertext.size() - kGcmNonceBytes - kGcmTagBytes);
  if (absl::Status s =
          DecryptInto(key_.UnsafeView(), ciphertext, associated_data, out.UnsafeMutableData());
      !s.ok()) {
    return s;
  }
  return out;
}

std::string Sha256(std::string_view data) {
  std::string out(32, '\0');
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), U(out.data()), &len, EVP_sha256(), nullptr) != 1 ||
      len != 32) {
    std::fputs("fatal: SHA-256 failed\n", stderr);
    std::abort();
  }
  return out;
}

absl::StatusOr<std::string> Sha256File(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return Error(ErrorCode::kNotFound, "cannot open " + path);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  bool ok = ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1;
  char buf[65536];
  size_t n;
  while (ok && (n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    ok = EVP_DigestUpdate(ctx.get(), buf, n) == 1;
  }
  ok = ok && !std::ferror(f);
  std::fclose(f);
  std::string out(32, '\0');
  unsigned int len = 0;
  if (!ok || EVP_DigestFinal_ex(ctx.get(), U(out.data()), &len) != 1 || len != 32) {
    return Error(ErrorCode::kInternal, "cannot read " + path);
  }
  return out;
}

std::string HmacSha256(std::string_view key, std::string_view data) {
  static const unsigned char kEmpty[1] = {0};
  std::string out(32, '\0');
  unsigned int len = 0;
  const unsigned char* k = key.empty() ? kEmpty : U(key);
  const unsigned char* d = data.empty() ? kEmpty : U(data);
  if (!FitsInt(key.size()) ||
      HMAC(EVP_sha256(), k, static_cast<int>(key.size()), d, data.size(), U(out.data()), &len) ==
          nullptr ||
      len != 32) {
    std::fputs("fatal: HMAC-SHA-256 failed\n", stderr);
    std::abort();
  }
  return out;
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // The lengths are not secret (MAC and token sizes are fixed), only the bytes.
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

namespace {

// HMAC-SHA-256 without a provider lookup per call: a context with the digest
// set is made once, and each call duplicates it and sets only the key.
const EVP_MAC_CTX* HmacTemplate() {
  static EVP_MAC_CTX* const tmpl = [] {
    EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    EVP_MAC_CTX* ctx = mac ? EVP_MAC_CTX_new(mac) : nullptr;
    EVP_MAC_free(mac);
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0),
                           OSSL_PARAM_construct_end()};
    if (ctx == nullptr || EVP_MAC_CTX_set_params(ctx, params) != 1) {
      std::fputs("fatal: OpenSSL has no HMAC-SHA-256\n", stderr);
      std::abort();
    }
    return ctx;
  }();
  return tmpl;
}

void HmacInto(std::string_view key, std::string_view data, unsigned char out[32]) {
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_dup(HmacTemplate());
  size_t len = 0;
  static const unsigned char kEmpty[1] = {0};
  bool ok = ctx != nullptr &&
            EVP_MAC_init(ctx, key.empty() ? kEmpty : U(key), key.size(), nullptr) == 1 &&
            EVP_MAC_update(ctx, data.empty() ? kEmpty : U(data), data.size()) == 1 &&
            EVP_MAC_final(ctx, out, &len, 32) == 1 && len == 32;
  EVP_MAC_CTX_free(ctx);
  if (!ok) {
    std::fputs("fatal: HMAC-SHA-256 failed\n", stderr);
    std::abort();
  }
}

}  // namespace

SecretBytes HkdfSha256(const SecretBytes& ikm, std::string_view salt, std::string_view info) {
  unsigned char prk[32];
  HmacInto(salt, ikm.UnsafeView(), prk);
  std::string t(info);
  t.push_back('\x01');
  SecretBytes okm(kAes256KeyBytes);
  HmacInto(std::string_view(reinterpret_cast<const char*>(prk), sizeof prk), t,
           reinterpret_cast<unsigned char*>(okm.UnsafeMutableData()));
  OPENSSL_cleanse(prk, sizeof prk);
  return okm;
}

}  // namespace fhirward::crypto
