#include "jose/openssl_util.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/rsa.h>

#include "common/error.h"

namespace fhirward::jose::internal {
namespace {

struct SigDeleter {
  void operator()(ECDSA_SIG* s) const { ECDSA_SIG_free(s); }
};
using SigPtr = std::unique_ptr<ECDSA_SIG, SigDeleter>;

absl::Status Mismatch(std::string_view why) {
  return Error(ErrorCode::kInvalidRequest,
               std::string("key does not fit algorithm: ") + std::string(why));
}

// The NID of an EC key's curve, or NID_undef.
int CurveNid(const EVP_PKEY* pkey) {
  char name[64];
  size_t len = 0;
  if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof name, &len) !=
      1) {
    ERR_clear_error();
    return NID_undef;
  }
  int nid = OBJ_sn2nid(name);
  if (nid == NID_undef) nid = EC_curve_nist2nid(name);
  return nid;
}

}  // namespace

KeyFamily FamilyOf(Algorithm alg) {
  switch (alg) {
    case Algorithm::kES256:
    case Algorithm::kES384:
      return KeyFamily::kEc;
    case Algorithm::kRS256:
    case Algorithm::kRS384:
    case Algorithm::kPS256:
      return KeyFamily::kRsa;
    case Algorithm::kEdDSA:
      return KeyFamily::kEd25519;
  }
  return KeyFamily::kEc;
}

const char* DigestName(Algorithm alg) {
  switch (alg) {
    case Algorithm::kES256:
    case Algorithm::kRS256:
    case Algorithm::kPS256:
      return "SHA256";
    case Algorithm::kES384:
    case Algorithm::kRS384:
      return "SHA384";
    case Algorithm::kEdDSA:
      return nullptr;
  }
  return nullptr;
}

std::string_view CurveName(Algorithm alg) {
  switch (alg) {
    case Algorithm::kES256:
      return "P-256";
    case Algorithm::kES384:
      return "P-384";
    case Algorithm::kEdDSA:
      return "Ed25519";
    default:
      return {};
  }
}

size_t EcCoordinateBytes(Algorithm alg) {
  switch (alg) {
    case Algorithm::kES256:
      return 32;
    case Algorithm::kES384:
      return 48;
    default:
      return 0;
  }
}

absl::Status CheckKeyFitsAlgorithm(const EVP_PKEY* pkey, Algorithm alg) {
  if (pkey == nullptr) return Mismatch("no key");
  switch (FamilyOf(alg)) {
    case KeyFamily::kEc: {
      if (!EVP_PKEY_is_a(pkey, "EC")) return Mismatch("not an EC key");
      int want = alg == Algorithm::kES256 ? NID_X9_62_prime256v1 : NID_secp384r1;
      if (CurveNid(pkey) != want) return Mismatch("wrong curve");
      return absl::OkStatus();
    }
    case KeyFamily::kRsa: {
      if (!EVP_PKEY_is_a(pkey, "RSA")) return Mismatch("not an RSA key");
      int bits = EVP_PKEY_get_bits(pkey);
      if (bits < kMinRsaBits) return Mismatch("RSA key shorter than 2048 bits");
      if (bits > kMaxRsaBits) return Mismatch("RSA key longer than 16384 bits");
      return absl::OkStatus();
    }
    case KeyFamily::kEd25519:
      if (!EVP_PKEY_is_a(pkey, "ED25519")) return Mismatch("not an Ed25519 key");
      return absl::OkStatus();
  }
  return Mismatch("unknown algorithm");
}

std::optional<std::string> EcdsaDerToRaw(std::string_view der, size_t n) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  const unsigned char* end = p + der.size();
  SigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size())));
  if (!sig || p != end) {
    ERR_clear_error();
    return std::nullopt;
  }
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  std::string out(2 * n, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  if (BN_bn2binpad(r, o, static_cast<int>(n)) != static_cast<int>(n) ||
      BN_bn2binpad(s, o + n, static_cast<int>(n)) != static_cast<int>(n)) {
    return std::nullopt;
  }
  return out;
}

std::optional<std::string> EcdsaRawToDer(std::string_view raw, size_t n) {
  if (n == 0 || raw.size() != 2 * n) return std::nullopt;
  const auto* p = reinterpret_cast<const unsigned char*>(raw.data());
  BIGNUM* r = BN_bin2bn(p, static_cast<int>(n), nullptr);
  BIGNUM* s = BN_bin2bn(p + n, static_cast<int>(n), nullptr);
  SigPtr sig(ECDSA_SIG_new());
  if (r == nullptr || s == nullptr || !sig || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return std::nullopt;
  }
  unsigned char* der = nullptr;
  int len = i2d_ECDSA_SIG(sig.get(), &der);
  if (len <= 0) return std::nullopt;
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

bool ConfigurePadding(EVP_PKEY_CTX* pctx, Algorithm alg) {
  switch (alg) {
    case Algorithm::kRS256:
    case Algorithm::kRS384:
      return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) > 0;
    case Algorithm::kPS256:
      // RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash.
      return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, "SHA256", nullptr) > 0;
    default:
      return true;
  }
}

}  // namespace fhirward::jose::internal
