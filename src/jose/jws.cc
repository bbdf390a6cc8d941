// SigningKey and compact JWS signing.
#include "jose/jws.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>

#include "common/c_ptr.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/secure_file.h"
#include "jose/openssl_util.h"

namespace fhirward::jose {
namespace {

using internal::KeyFamily;

void FreeBio(BIO* b) { BIO_free_all(b); }
using BioPtr = CPtr<BIO, FreeBio>;
using MdCtxPtr = CPtr<EVP_MD_CTX, EVP_MD_CTX_free>;
using PkeyCtxPtr = CPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using ParamsPtr = CPtr<OSSL_PARAM, OSSL_PARAM_free>;

constexpr size_t kMaxPemBytes = 64 * 1024;

absl::Status KeyError(std::string_view why) {
  ERR_clear_error();
  return Error(ErrorCode::kInternal, std::string(why));
}

// Never prompt on a terminal for a passphrase: encrypted keys are refused.
int NoPassphrase(char*, int, int, void*) { return -1; }

// A public-only copy of `pkey`, so a PublicKey never carries private material.
std::shared_ptr<EVP_PKEY> PublicOnly(EVP_PKEY* pkey) {
  OSSL_PARAM* raw_params = nullptr;
  if (EVP_PKEY_todata(pkey, EVP_PKEY_PUBLIC_KEY, &raw_params) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  ParamsPtr params(raw_params);
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey, nullptr));
  EVP_PKEY* out = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &out, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    ERR_clear_error();
    EVP_PKEY_free(out);
    return nullptr;
  }
  return internal::SharePkey(out);
}

}  // namespace

absl::StatusOr<SigningKey> SigningKey::Generate(Algorithm alg, std::string kid) {
  EVP_PKEY* raw = nullptr;
  switch (alg) {
    case Algorithm::kES256:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
      break;
    case Algorithm::kES384:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384");
      break;
    case Algorithm::kRS256:
    case Algorithm::kRS384:
    case Algorithm::kPS256:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048));
      break;
    case Algorithm::kEdDSA:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
      break;
  }
  if (raw == nullptr) return KeyError("key generation failed");
  SigningKey key;
  key.kid_ = std::move(kid);
  key.alg_ = alg;
  key.pkey_ = internal::SharePkey(raw);
  return key;
}

absl::StatusOr<SigningKey> SigningKey::LoadPem(const std::string& path, Algorithm alg,
                                               std::string kid) {
  absl::StatusOr<SecretBytes> pem = crypto::ReadPrivateFile(path, kMaxPemBytes);
  if (!pem.ok()) return pem.status();
  BioPtr bio(BIO_new_mem_buf(pem->UnsafeView().data(), static_cast<int>(pem->size())));
  if (!bio) return KeyError("BIO_new_mem_buf failed");
  EVP_PKEY* raw = PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr);
  if (raw == nullptr) {
    return KeyError(path + " does not hold an unencrypted PEM private key");
  }
  std::shared_ptr<EVP_PKEY> pkey = internal::SharePkey(raw);
  if (absl::Status s = internal::CheckKeyFitsAlgorithm(pkey.get(), alg); !s.ok()) {
    return Error(ErrorCode::kInternal,
                 path + ": " + DetailOf(s) + " " + std::string(AlgorithmName(alg)));
  }
  SigningKey key;
  key.kid_ = std::move(kid);
  key.alg_ = alg;
  key.pkey_ = std::move(pkey);
  return key;
}

absl::Status SigningKey::SavePem(const std::string& path) const {
  if (!pkey_) return KeyError("no key");
  // Secure-heap BIO: the buffer is wiped when freed.
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio || PEM_write_bio_PKCS8PrivateKey(bio.get(), pkey_.get(), nullptr, nullptr, 0, nullptr,
                                            nullptr) != 1) {
    return KeyError("cannot encode private key");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0 || data == nullptr) return KeyError("cannot encode private key");
  return crypto::WriteNewFile(path, std::string_view(data, static_cast<size_t>(len)), 0600);
}

PublicKey SigningKey::public_key() const {
  PublicKey key;
  key.kid_ = kid_;
  key.alg_ = alg_;
  if (pkey_) key.pkey_ = PublicOnly(pkey_.get());
  return key;
}

absl::StatusOr<std::string> SigningKey::Sign(std::string_view signing_input) const {
  if (!pkey_) return KeyError("no key");
  MdCtxPtr ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;  // owned by ctx
  const auto* in = reinterpret_cast<const unsigned char*>(signing_input.data());
  size_t len = 0;
  if (!ctx ||
      EVP_DigestSignInit_ex(ctx.get(), &pctx, internal::DigestName(alg_), nullptr, nullptr,
                            pkey_.get(), nullptr) != 1 ||
      !internal::ConfigurePadding(pctx, alg_) ||
      EVP_DigestSign(ctx.get(), nullptr, &len, in, signing_input.size()) != 1) {
    return KeyError("signing failed");
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, in,
                     signing_input.size()) != 1) {
    return KeyError("signing failed");
  }
  sig.resize(len);
  if (internal::FamilyOf(alg_) == KeyFamily::kEc) {
    std::optional<std::string> raw =
        internal::EcdsaDerToRaw(sig, internal::EcCoordinateBytes(alg_));
    if (!raw.has_value()) return KeyError("cannot convert ECDSA signature");
    return *raw;
  }
  return sig;
}

absl::StatusOr<std::string> SignCompact(const SigningKey& key, const json::Value& payload,
                                        std::string_view typ) {
  json::Value header = json::Value::MakeObject();
  header.Set("alg", json::Value::String(std::string(AlgorithmName(key.alg()))));
  if (!key.kid().empty()) header.Set("kid", json::Value::String(key.kid()));
  if (!typ.empty()) header.Set("typ", json::Value::String(std::string(typ)));
  std::string token = Base64UrlEncode(json::Write(header));
  token += '.';
  token += Base64UrlEncode(json::Write(payload));
  absl::StatusOr<std::string> sig = key.Sign(token);
  if (!sig.ok()) return sig.status();
  token += '.';
  token += Base64UrlEncode(*sig);
  return token;
}

}  // namespace fhirward::jose
