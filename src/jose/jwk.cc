// JWK parsing and emission (RFC 7517/7518/8037), PublicKey verification, KeySet.
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include <array>

#include "common/c_ptr.h"
#include "common/encoding.h"
#include "common/error.h"
#include "jose/jws.h"
#include "jose/openssl_util.h"

namespace fhirward::jose {
namespace {

using internal::KeyFamily;

constexpr size_t kMaxJwksKeys = 100;

using BnPtr = CPtr<BIGNUM, BN_free>;
using ParamBldPtr = CPtr<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using ParamsPtr = CPtr<OSSL_PARAM, OSSL_PARAM_free>;
using PkeyCtxPtr = CPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using MdCtxPtr = CPtr<EVP_MD_CTX, EVP_MD_CTX_free>;

constexpr std::array<std::pair<Algorithm, std::string_view>, 6> kAlgorithms = {{
    {Algorithm::kES256, "ES256"},
    {Algorithm::kES384, "ES384"},
    {Algorithm::kRS256, "RS256"},
    {Algorithm::kRS384, "RS384"},
    {Algorithm::kPS256, "PS256"},
    {Algorithm::kEdDSA, "EdDSA"},
}};

absl::Status JwkError(std::string_view why) {
  return Error(ErrorCode::kInvalidRequest, "jwk: " + std::string(why));
}

// A required base64url member, decoded.
absl::StatusOr<std::string> B64Member(const json::Value& jwk, std::string_view name) {
  std::optional<std::string_view> text = jwk.GetString(name);
  if (!text.has_value()) return JwkError("missing or non-string member " + std::string(name));
  std::optional<std::string> bytes = Base64UrlDecode(*text);
  if (!bytes.has_value() || bytes->empty()) {
    return JwkError("member " + std::string(name) + " is not base64url");
  }
  return *bytes;
}

// Builds a public EVP_PKEY of `type` from `params`.
absl::StatusOr<std::shared_ptr<EVP_PKEY>> FromData(const char* type, OSSL_PARAM_BLD* bld) {
  ParamsPtr params(OSSL_PARAM_BLD_to_param(bld));
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    ERR_clear_error();
    EVP_PKEY_free(raw);
    return JwkError("invalid public key");
  }
  return internal::SharePkey(raw);
}

absl::StatusOr<std::shared_ptr<EVP_PKEY>> EcKeyFromJwk(const json::Value& jwk, Algorithm alg) {
  std::optional<std::string_view> crv = jwk.GetString("crv");
  if (!crv.has_value() || *crv != internal::CurveName(alg)) {
    return JwkError("crv does not match alg");
  }
  const size_t n = internal::EcCoordinateBytes(alg);
  absl::StatusOr<std::string> x = B64Member(jwk, "x");
  if (!x.ok()) return x.status();
  absl::StatusOr<std::string> y = B64Member(jwk, "y");
  if (!y.ok()) return y.status();
  if (x->size() != n || y->size() != n) return JwkError("EC coordinate has the wrong length");
  std::string point = "\x04" + *x + *y;  // SEC 1 uncompressed point
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  const char* group = alg == Algorithm::kES256 ? "prime256v1" : "secp384r1";
  if (!bld ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                       point.size()) != 1) {
    return JwkError("cannot build EC key");
  }
  absl::StatusOr<std::shared_ptr<EVP_PKEY>> pkey = FromData("EC", bld.get());
  if (!pkey.ok()) return JwkError("EC point is not on the curve");
  // Full public-key validation (on curve, not infinity, right order).
  PkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey->get(), nullptr));
  if (!check || EVP_PKEY_public_check(check.get()) != 1) {
    ERR_clear_error();
    return JwkError("EC point is not valid");
  }
  return pkey;
}

absl::StatusOr<std::shared_ptr<EVP_PKEY>> RsaKeyFromJwk(const json::Value& jwk) {
  absl::StatusOr<std::string> n_bytes = B64Member(jwk, "n");
  if (!n_bytes.ok()) return n_bytes.status();
  absl::StatusOr<std::string> e_bytes = B64Member(jwk, "e");
  if (!e_bytes.ok()) return e_bytes.status();
  if (n_bytes->size() > internal::kMaxRsaBits / 8 + 1) return JwkError("RSA modulus too long");
  if (e_bytes->size() > 8) return JwkError("RSA exponent too long");
  auto to_bn = [](const std::string& b) {
    return BnPtr(BN_bin2bn(reinterpret_cast<const unsigned char*>(b.data()),
                           static_cast<int>(b.size()), nullptr));
  };
  BnPtr n = to_bn(*n_bytes);
  BnPtr e = to_bn(*e_bytes);
  if (!n || !e) return JwkError("cannot decode RSA key");
  if (BN_num_bits(n.get()) < internal::kMinRsaBits) {
    return JwkError("RSA key shorter than 2048 bits");
  }
  if (BN_num_bits(n.get()) > internal::kMaxRsaBits) return JwkError("RSA modulus too long");
  if (!BN_is_odd(n.get())) return JwkError("RSA modulus is even");
  if (!BN_is_odd(e.get()) || BN_is_one(e.get())) return JwkError("RSA exponent is invalid");
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1) {
    return JwkError("cannot build RSA key");
  }
  return FromData("RSA", bld.get());
}

absl::StatusOr<std::shared_ptr<EVP_PKEY>> OkpKeyFromJwk(const json::Value& jwk) {
  std::optional<std::string_view> crv = jwk.GetString("crv");
  if (!crv.has_value() || *crv != "Ed25519") return JwkError("only crv Ed25519 is supported");
  absl::StatusOr<std::string> x = B64Member(jwk, "x");
  if (!x.ok()) return x.status();
  if (x->size() != 32) return JwkError("Ed25519 key must be 32 bytes");
  EVP_PKEY* raw = EVP_PKEY_new_raw_public_key_ex(
      nullptr, "ED25519", nullptr, reinterpret_cast<const unsigned char*>(x->data()), x->size());
  if (raw == nullptr) {
    ERR_clear_error();
    return JwkError("invalid Ed25519 key");
  }
  return internal::SharePkey(raw);
}

std::string_view KtyFor(Algorithm alg) {
  switch (internal::FamilyOf(alg)) {
    case KeyFamily::kEc:
      return "EC";
    case KeyFamily::kRsa:
      return "RSA";
    case KeyFamily::kEd25519:
      return "OKP";
  }
  return {};
}

std::string BnBytes(const EVP_PKEY* pkey, const char* name, size_t pad_to) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, name, &bn) != 1 || bn == nullptr) {
    ERR_clear_error();
    return {};
  }
  BnPtr owned(bn);
  size_t len = pad_to != 0 ? pad_to : static_cast<size_t>(BN_num_bytes(bn));
  std::string out(len, '\0');
  if (BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(len)) < 0) {
    return {};
  }
  return out;
}

// The algorithm a JWKS entry without "alg" implies: unambiguous for EC/OKP
// curves (RFC 7518 ties P-256 to ES256 and P-384 to ES384); RSA needs a default.
std::optional<Algorithm> ImpliedAlgorithm(const json::Value& jwk, std::optional<Algorithm> rsa) {
  std::optional<std::string_view> kty = jwk.GetString("kty");
  std::optional<std::string_view> crv = jwk.GetString("crv");
  if (kty == "EC" && crv == "P-256") return Algorithm::kES256;
  if (kty == "EC" && crv == "P-384") return Algorithm::kES384;
  if (kty == "OKP" && crv == "Ed25519") return Algorithm::kEdDSA;
  if (kty == "RSA") return rsa;
  return std::nullopt;
}

}  // namespace

std::string_view AlgorithmName(Algorithm alg) {
  for (const auto& [a, name] : kAlgorithms) {
    if (a == alg) return name;
  }
  return "unknown";
}

std::optional<Algorithm> AlgorithmFromName(std::string_view name) {
  for (const auto& [a, n] : kAlgorithms) {
    if (n == name) return a;
  }
  return std::nullopt;
}

absl::StatusOr<PublicKey> PublicKey::FromJwk(const json::Value& jwk,
                                             std::optional<Algorithm> default_alg) {
  if (!jwk.is_object()) return JwkError("not a JSON object");
  std::optional<std::string_view> kty = jwk.GetString("kty");
  if (!kty.has_value()) return JwkError("missing kty");
  // Private or symmetric material has no business in a verification key.
  for (const char* secret : {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}) {
    if (jwk.Find(secret) != nullptr) return JwkError("contains private key material");
  }
  if (const json::Value* use = jwk.Find("use"); use != nullptr) {
    if (!use->is_string() || use->as_string() != "sig") return JwkError("use is not sig");
  }
  if (const json::Value* ops = jwk.Find("key_ops"); ops != nullptr) {
    bool verify = false;
    if (ops->is_array()) {
      for (const json::Value& op : ops->items()) {
        verify = verify || (op.is_string() && op.as_string() == "verify");
      }
    }
    if (!verify) return JwkError("key_ops does not allow verify");
  }
  std::optional<Algorithm> alg = default_alg;
  if (const json::Value* a = jwk.Find("alg"); a != nullptr) {
    if (!a->is_string()) return JwkError("alg is not a string");
    alg = AlgorithmFromName(a->as_string());
    if (!alg.has_value()) return JwkError("unsupported alg " + a->as_string());
  }
  if (!alg.has_value()) return JwkError("missing alg");
  if (*kty != KtyFor(*alg)) return JwkError("kty does not match alg");

  PublicKey key;
  key.alg_ = *alg;
  if (const json::Value* kid = jwk.Find("kid"); kid != nullptr) {
    if (!kid->is_string()) return JwkError("kid is not a string");
    key.kid_ = kid->as_string();
  }
  absl::StatusOr<std::shared_ptr<EVP_PKEY>> pkey;
  switch (internal::FamilyOf(*alg)) {
    case KeyFamily::kEc:
      pkey = EcKeyFromJwk(jwk, *alg);
      break;
    case KeyFamily::kRsa:
      pkey = RsaKeyFromJwk(jwk);
      break;
    case KeyFamily::kEd25519:
      pkey = OkpKeyFromJwk(jwk);
      break;
  }
  if (!pkey.ok()) return pkey.status();
  if (absl::Status s = internal::CheckKeyFitsAlgorithm(pkey->get(), *alg); !s.ok()) return s;
  key.pkey_ = std::move(*pkey);
  return key;
}

json::Value PublicKey::ToJwk() const {
  json::Value jwk = json::Value::MakeObject();
  jwk.Set("kty", json::Value::String(std::string(KtyFor(alg_))));
  const EVP_PKEY* pkey = pkey_.get();
  switch (internal::FamilyOf(alg_)) {
    case KeyFamily::kEc: {
      size_t n = internal::EcCoordinateBytes(alg_);
      jwk.Set("crv", json::Value::String(std::string(internal::CurveName(alg_))));
      jwk.Set("x",
              json::Value::String(Base64UrlEncode(BnBytes(pkey, OSSL_PKEY_PARAM_EC_PUB_X, n))));
      jwk.Set("y",
              json::Value::String(Base64UrlEncode(BnBytes(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, n))));
      break;
    }
    case KeyFamily::kRsa:
      jwk.Set("n", json::Value::String(Base64UrlEncode(BnBytes(pkey, OSSL_PKEY_PARAM_RSA_N, 0))));
      jwk.Set("e", json::Value::String(Base64UrlEncode(BnBytes(pkey, OSSL_PKEY_PARAM_RSA_E, 0))));
      break;
    case KeyFamily::kEd25519: {
      unsigned char raw[32];
      size_t len = sizeof raw;
      std::string x;
      if (pkey != nullptr && EVP_PKEY_get_raw_public_key(pkey, raw, &len) == 1) {
        x.assign(reinterpret_cast<char*>(raw), len);
      }
      jwk.Set("crv", json::Value::String("Ed25519"));
      jwk.Set("x", json::Value::String(Base64UrlEncode(x)));
      break;
    }
  }
  if (!kid_.empty()) jwk.Set("kid", json::Value::String(kid_));
  jwk.Set("alg", json::Value::String(std::string(AlgorithmName(alg_))));
  jwk.Set("use", json::Value::String("sig"));
  return jwk;
}

bool PublicKey::Verify(std::string_view signing_input, std::string_view signature) const {
  if (!pkey_) return false;
  std::string der;
  std::string_view sig = signature;
  switch (internal::FamilyOf(alg_)) {
    case KeyFamily::kEc: {
      // RFC 7518 §3.4: exactly r||s, each the coordinate size; DER is refused.
      std::optional<std::string> converted =
          internal::EcdsaRawToDer(signature, internal::EcCoordinateBytes(alg_));
      if (!converted.has_value()) return false;
      der = std::move(*converted);
      sig = der;
      break;
    }
    case KeyFamily::kRsa:
      if (signature.size() != static_cast<size_t>(EVP_PKEY_get_size(pkey_.get()))) return false;
      break;
    case KeyFamily::kEd25519:
      if (signature.size() != 64) return false;
      break;
  }
  MdCtxPtr ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;  // owned by ctx
  bool ok =
      ctx != nullptr &&
      EVP_DigestVerifyInit_ex(ctx.get(), &pctx, internal::DigestName(alg_), nullptr, nullptr,
                              pkey_.get(), nullptr) == 1 &&
      internal::ConfigurePadding(pctx, alg_) &&
      EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                       reinterpret_cast<const unsigned char*>(signing_input.data()),
                       signing_input.size()) == 1;
  ERR_clear_error();
  return ok;
}

absl::StatusOr<KeySet> KeySet::FromJwks(const json::Value& jwks) {
  return FromJwks(jwks, std::nullopt);
}

absl::StatusOr<KeySet> KeySet::FromJwks(const json::Value& jwks,
                                        std::optional<Algorithm> default_rsa_alg) {
  const json::Value* keys = jwks.is_object() ? jwks.Find("keys") : nullptr;
  if (keys == nullptr || !keys->is_array()) {
    return Error(ErrorCode::kInvalidRequest, "jwks: no \"keys\" array");
  }
  if (keys->items().size() > kMaxJwksKeys) {
    return Error(ErrorCode::kInvalidRequest, "jwks: too many keys");
  }
  KeySet set;
  std::string first_problem;
  for (const json::Value& jwk : keys->items()) {
    if (!jwk.is_object()) continue;
    // Encryption keys and key types this server does not verify with are skipped.
    if (const json::Value* use = jwk.Find("use"); use != nullptr) {
      if (!use->is_string() || use->as_string() != "sig") continue;
    }
    std::optional<std::string_view> kty = jwk.GetString("kty");
    if (kty != "EC" && kty != "RSA" && kty != "OKP") continue;
    std::optional<Algorithm> implied;
    if (jwk.Find("alg") == nullptr) {
      implied = ImpliedAlgorithm(jwk, default_rsa_alg);
      if (!implied.has_value()) continue;
    } else if (std::optional<std::string_view> alg = jwk.GetString("alg");
               !alg.has_value() || !AlgorithmFromName(*alg).has_value()) {
      continue;  // RS512, ES512, RSA-OAEP, ...
    }
    absl::StatusOr<PublicKey> key = PublicKey::FromJwk(jwk, implied);
    if (!key.ok()) {
      if (first_problem.empty()) first_problem = DetailOf(key.status());
      continue;
    }
    // Kids must be unambiguous: the first key with a kid wins.
    if (!key->kid().empty() && set.Find(key->kid()) != nullptr) continue;
    set.Add(std::move(*key));
  }
  if (set.keys_.empty()) {
    std::string detail = "jwks: no usable signing keys";
    if (!first_problem.empty()) detail += " (" + first_problem + ")";
    return Error(ErrorCode::kInvalidRequest, detail);
  }
  return set;
}

const PublicKey* KeySet::Find(std::string_view kid) const {
  if (kid.empty()) return keys_.size() == 1 ? &keys_.front() : nullptr;
  for (const PublicKey& key : keys_) {
    if (key.kid() == kid) return &key;
  }
  return nullptr;
}

json::Value KeySet::ToJwks() const {
  json::Array keys;
  keys.reserve(keys_.size());
  for (const PublicKey& key : keys_) keys.push_back(key.ToJwk());
  json::Value out = json::Value::MakeObject();
  out.Set("keys", json::Value::MakeArray(std::move(keys)));
  return out;
}

}  // namespace fhirward::jose
