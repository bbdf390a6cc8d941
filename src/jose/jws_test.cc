#include "jose/jws.h"

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include <map>

#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "crypto/secure_file.h"
#include "crypto/test_util.h"
#include "gtest/gtest.h"
#include "jose/openssl_util.h"

namespace fhirward::jose {
namespace {

using testing_util::ModeOf;
using testing_util::TempDir;

constexpr int64_t kNow = 1'700'000'000;
constexpr std::string_view kIssuer = "https://issuer.example/realms/fhir";
constexpr std::string_view kAudience = "https://fhir.example/r4";

constexpr Algorithm kAllAlgorithms[] = {Algorithm::kES256, Algorithm::kES384, Algorithm::kRS256,
                                        Algorithm::kRS384, Algorithm::kPS256, Algorithm::kEdDSA};

json::Value J(std::string_view text) {
  absl::StatusOr<json::Value> v = json::Parse(text);
  EXPECT_TRUE(v.ok()) << v.status() << " in " << text;
  return v.ok() ? std::move(*v) : json::Value();
}

// Keys are generated once per algorithm (RSA generation is slow).
const SigningKey& Key(Algorithm alg, int index = 0) {
  static auto* keys = new std::map<std::pair<Algorithm, int>, SigningKey>();
  auto it = keys->find({alg, index});
  if (it == keys->end()) {
    std::string kid = std::string(AlgorithmName(alg)) + "-" + std::to_string(index);
    absl::StatusOr<SigningKey> key = SigningKey::Generate(alg, kid);
    EXPECT_TRUE(key.ok()) << key.status();
    it = keys->emplace(std::make_pair(alg, index), std::move(*key)).first;
  }
  return it->second;
}

KeySet SetOf(std::initializer_list<const SigningKey*> keys) {
  KeySet set;
  for (const SigningKey* k : keys) set.Add(k->public_key());
  return set;
}

json::Value Claims() {
  json::Value c = json::Value::MakeObject();
  c.Set("iss", json::Value::String(std::string(kIssuer)));
  c.Set("sub", json::Value::String("user-1"));
  c.Set("aud", json::Value::String(std::string(kAudience)));
  c.Set("exp", json::Value::Int(kNow + 300));
  c.Set("iat", json::Value::Int(kNow));
  c.Set("nbf", json::Value::Int(kNow));
  c.Set("scope", json::Value::String("patient/*.rs"));
  return c;
}

JwtExpectations Expect() {
  JwtExpectations e;
  e.issuer = std::string(kIssuer);
  e.audience = {std::string(kAudience)};
  e.now = kNow;
  return e;
}

// A token from literal header and payload texts, signed by `key` (or with
// `raw_sig` as the signature when key is null).
std::string Craft(std::string_view header, std::string_view payload, const SigningKey* key,
                  std::string_view raw_sig = {}) {
  std::string input = Base64UrlEncode(header) + "." + Base64UrlEncode(payload);
  std::string sig(raw_sig);
  if (key != nullptr) {
    absl::StatusOr<std::string> s = key->Sign(input);
    EXPECT_TRUE(s.ok());
    sig = *s;
  }
  return input + "." + Base64UrlEncode(sig);
}

std::string Sign(const SigningKey& key, const json::Value& claims, std::string_view typ = "JWT") {
  absl::StatusOr<std::string> token = SignCompact(key, claims, typ);
  EXPECT_TRUE(token.ok()) << token.status();
  return token.ok() ? *token : std::string();
}

// The kInvalidToken detail of a failed verification, or "OK".
std::string Outcome(std::string_view token, const KeySet& keys,
                    const JwtExpectations& expect = Expect()) {
  absl::StatusOr<VerifiedJwt> v = VerifyJwt(token, keys, expect);
  if (v.ok()) return "OK";
  EXPECT_EQ(CodeOf(v.status()), ErrorCode::kInvalidToken) << v.status();
  return DetailOf(v.status());
}

std::string HeaderFor(const SigningKey& key, std::string_view alg = {}) {
  std::string a = alg.empty() ? std::string(AlgorithmName(key.alg())) : std::string(alg);
  return R"({"alg":")" + a + R"(","kid":")" + key.kid() + R"(","typ":"JWT"})";
}

// ---------------------------------------------------------------------------
// Round trips

TEST(Jws, AlgorithmNames) {
  for (Algorithm alg : kAllAlgorithms) {
    EXPECT_EQ(AlgorithmFromName(AlgorithmName(alg)), alg);
  }
  EXPECT_FALSE(AlgorithmFromName("HS256").has_value());
  EXPECT_FALSE(AlgorithmFromName("none").has_value());
  EXPECT_FALSE(AlgorithmFromName("es256").has_value());
  EXPECT_FALSE(AlgorithmFromName("ES512").has_value());
}

TEST(Jws, SignVerifyRoundTripEveryAlgorithm) {
  for (Algorithm alg : kAllAlgorithms) {
    SCOPED_TRACE(AlgorithmName(alg));
    const SigningKey& key = Key(alg);
    std::string token = Sign(key, Claims());
    absl::StatusOr<VerifiedJwt> v = VerifyJwt(token, SetOf({&key}), Expect());
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(v->claims, Claims());
    EXPECT_EQ(v->header.GetString("alg"), AlgorithmName(alg));
    EXPECT_EQ(v->header.GetString("kid"), key.kid());
    EXPECT_EQ(v->header.GetString("typ"), "JWT");

    size_t dot = token.rfind('.');
    std::optional<std::string> sig = Base64UrlDecode(token.substr(dot + 1));
    ASSERT_TRUE(sig.has_value());
    size_t want = alg == Algorithm::kES256   ? 64
                  : alg == Algorithm::kES384 ? 96
                  : alg == Algorithm::kEdDSA ? 64
                                             : 256;
    EXPECT_EQ(sig->size(), want);
    // Another key of the same algorithm does not verify it.
    EXPECT_EQ(Outcome(token, SetOf({&Key(alg, 1)})), "unknown_kid");
    KeySet impostor;
    json::Value jwk = Key(alg, 1).public_key().ToJwk();
    jwk.Set("kid", json::Value::String(key.kid()));
    impostor.Add(*PublicKey::FromJwk(jwk));
    EXPECT_EQ(Outcome(token, impostor), "bad_signature");
  }
}

TEST(Jws, SignCompactHeader) {
  const SigningKey& key = Key(Algorithm::kES256);
  std::string token = Sign(key, Claims(), "at+jwt");
  std::string header = *Base64UrlDecode(token.substr(0, token.find('.')));
  EXPECT_EQ(header, R"({"alg":"ES256","kid":"ES256-0","typ":"at+jwt"})");
  token = Sign(key, Claims(), "");
  header = *Base64UrlDecode(token.substr(0, token.find('.')));
  EXPECT_EQ(header, R"({"alg":"ES256","kid":"ES256-0"})");
}

TEST(Jws, JwkRoundTripEveryAlgorithm) {
  for (Algorithm alg : kAllAlgorithms) {
    SCOPED_TRACE(AlgorithmName(alg));
    const SigningKey& key = Key(alg);
    json::Value jwk = key.public_key().ToJwk();
    EXPECT_EQ(jwk.GetString("kid"), key.kid());
    EXPECT_EQ(jwk.GetString("alg"), AlgorithmName(alg));
    EXPECT_EQ(jwk.GetString("use"), "sig");
    EXPECT_EQ(jwk.Find("d"), nullptr);
    // Through text, as a JWKS would travel.
    json::Value reparsed = J(json::Write(jwk));
    absl::StatusOr<PublicKey> pub = PublicKey::FromJwk(reparsed);
    ASSERT_TRUE(pub.ok()) << pub.status();
    EXPECT_EQ(pub->kid(), key.kid());
    EXPECT_EQ(pub->alg(), alg);
    EXPECT_EQ(pub->ToJwk(), jwk);
    KeySet set;
    set.Add(*pub);
    EXPECT_EQ(Outcome(Sign(key, Claims()), set), "OK");
  }
}

TEST(Jws, JwkMembers) {
  json::Value ec = Key(Algorithm::kES256).public_key().ToJwk();
  EXPECT_EQ(ec.GetString("kty"), "EC");
  EXPECT_EQ(ec.GetString("crv"), "P-256");
  EXPECT_EQ(Base64UrlDecode(*ec.GetString("x"))->size(), 32u);
  EXPECT_EQ(Base64UrlDecode(*ec.GetString("y"))->size(), 32u);
  json::Value ec384 = Key(Algorithm::kES384).public_key().ToJwk();
  EXPECT_EQ(ec384.GetString("crv"), "P-384");
  EXPECT_EQ(Base64UrlDecode(*ec384.GetString("x"))->size(), 48u);
  json::Value rsa = Key(Algorithm::kRS256).public_key().ToJwk();
  EXPECT_EQ(rsa.GetString("kty"), "RSA");
  EXPECT_EQ(rsa.GetString("e"), "AQAB");
  EXPECT_EQ(Base64UrlDecode(*rsa.GetString("n"))->size(), 256u);
  json::Value okp = Key(Algorithm::kEdDSA).public_key().ToJwk();
  EXPECT_EQ(okp.GetString("kty"), "OKP");
  EXPECT_EQ(okp.GetString("crv"), "Ed25519");
  EXPECT_EQ(Base64UrlDecode(*okp.GetString("x"))->size(), 32u);
}

TEST(Jws, JwksRoundTrip) {
  KeySet set = SetOf({&Key(Algorithm::kES256), &Key(Algorithm::kRS256), &Key(Algorithm::kEdDSA)});
  json::Value jwks = J(json::Write(set.ToJwks()));
  absl::StatusOr<KeySet> back = KeySet::FromJwks(jwks);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->keys().size(), 3u);
  for (Algorithm alg : {Algorithm::kES256, Algorithm::kRS256, Algorithm::kEdDSA}) {
    EXPECT_EQ(Outcome(Sign(Key(alg), Claims()), *back), "OK");
  }
}

// ---------------------------------------------------------------------------
// Header attacks

TEST(Jwt, AlgNoneRefused) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  std::string payload = json::Write(Claims());
  for (const char* alg : {"none", "None", "NONE", "nOnE"}) {
    std::string header = std::string(R"({"alg":")") + alg + R"(","kid":"ES256-0"})";
    EXPECT_EQ(Outcome(Craft(header, payload, nullptr), keys), "alg_none") << alg;
    // Even with a trailing signature from the real key.
    EXPECT_EQ(Outcome(Craft(header, payload, &key), keys), "alg_none") << alg;
  }
  // Classic two-dot form with an empty signature and no kid.
  EXPECT_EQ(Outcome(Craft(R"({"alg":"none"})", payload, nullptr), keys), "alg_none");
}

TEST(Jwt, Hs256WithPublicKeyAsSecretRefused) {
  std::string payload = json::Write(Claims());
  for (Algorithm alg : {Algorithm::kES256, Algorithm::kRS256, Algorithm::kEdDSA}) {
    const SigningKey& key = Key(alg);
    KeySet keys = SetOf({&key});
    std::string header = HeaderFor(key, "HS256");
    std::string input = Base64UrlEncode(header) + "." + Base64UrlEncode(payload);
    // Every plausible "secret" a confused verifier might use.
    std::vector<std::string> secrets = {json::Write(key.public_key().ToJwk())};
    json::Value jwk = key.public_key().ToJwk();
    for (const char* m : {"x", "n"}) {
      if (auto v = jwk.GetString(m)) {
        secrets.push_back(std::string(*v));
        secrets.push_back(*Base64UrlDecode(*v));
      }
    }
    for (const std::string& secret : secrets) {
      std::string token = input + "." + Base64UrlEncode(crypto::HmacSha256(secret, input));
      EXPECT_EQ(Outcome(token, keys), "alg_mismatch");
    }
    for (const char* hs : {"HS384", "HS512"}) {
      EXPECT_EQ(Outcome(Craft(HeaderFor(key, hs), payload, nullptr, "x"), keys), "alg_mismatch");
    }
  }
}

TEST(Jwt, HeaderAlgMustMatchKeyAlg) {
  std::string payload = json::Write(Claims());
  const SigningKey& ec = Key(Algorithm::kES256);
  const SigningKey& rsa = Key(Algorithm::kRS256);
  // RS256 header on an EC key's kid, signed with an RSA key.
  {
    KeySet keys = SetOf({&ec});
    std::string header = R"({"alg":"RS256","kid":")" + ec.kid() + R"("})";
    EXPECT_EQ(Outcome(Craft(header, payload, &rsa), keys), "alg_mismatch");
  }
  // ES384 header on an ES256 key; PS256 header on an RS256 key; EdDSA on EC.
  struct Case {
    const SigningKey* key;
    const char* alg;
  } cases[] = {{&ec, "ES384"},
               {&rsa, "PS256"},
               {&rsa, "RS384"},
               {&ec, "EdDSA"},
               {&rsa, "ES256"},
               {&ec, "ES512"},
               {&ec, "es256"},
               {&ec, " ES256"},
               {&Key(Algorithm::kPS256), "RS256"},
               {&Key(Algorithm::kEdDSA), "Ed25519"}};
  for (const Case& c : cases) {
    KeySet keys = SetOf({c.key});
    EXPECT_EQ(Outcome(Craft(HeaderFor(*c.key, c.alg), payload, c.key), keys), "alg_mismatch")
        << c.alg;
  }
}

TEST(Jwt, PssAndPkcs1AreNotInterchangeable) {
  // Same RSA key material pinned to PS256 and RS256: signatures of one
  // algorithm never verify under the other.
  const SigningKey& rs = Key(Algorithm::kRS256);
  json::Value jwk = rs.public_key().ToJwk();
  jwk.Set("alg", json::Value::String("PS256"));
  PublicKey as_ps = *PublicKey::FromJwk(jwk);
  std::string input = "header.payload";
  std::string pkcs1_sig = *rs.Sign(input);
  EXPECT_TRUE(rs.public_key().Verify(input, pkcs1_sig));
  EXPECT_FALSE(as_ps.Verify(input, pkcs1_sig));
  const SigningKey& ps = Key(Algorithm::kPS256);
  std::string pss_sig = *ps.Sign(input);
  EXPECT_TRUE(ps.public_key().Verify(input, pss_sig));
  json::Value ps_jwk = ps.public_key().ToJwk();
  ps_jwk.Set("alg", json::Value::String("RS256"));
  EXPECT_FALSE(PublicKey::FromJwk(ps_jwk)->Verify(input, pss_sig));
}

TEST(Jwt, CritRefused) {
  const SigningKey& key = Key(Algorithm::kES256);
  std::string header = R"({"alg":"ES256","kid":"ES256-0","crit":["exp"],"exp":1})";
  EXPECT_EQ(Outcome(Craft(header, json::Write(Claims()), &key), SetOf({&key})), "crit_unsupported");
  header = R"({"alg":"ES256","kid":"ES256-0","crit":[]})";
  EXPECT_EQ(Outcome(Craft(header, json::Write(Claims()), &key), SetOf({&key})), "crit_unsupported");
}

TEST(Jwt, EmbeddedJwkIsIgnored) {
  // The attacker signs with their own key and embeds it; the verifier must
  // only use its trusted set.
  const SigningKey& trusted = Key(Algorithm::kES256);
  const SigningKey& attacker = Key(Algorithm::kES256, 1);
  std::string header = R"({"alg":"ES256","kid":")" + trusted.kid() + R"(","jwk":)" +
                       json::Write(attacker.public_key().ToJwk()) +
                       R"(,"jku":"https://evil.example/jwks"})";
  EXPECT_EQ(Outcome(Craft(header, json::Write(Claims()), &attacker), SetOf({&trusted})),
            "bad_signature");
}

TEST(Jwt, KidSelection) {
  const SigningKey& a = Key(Algorithm::kES256);
  const SigningKey& b = Key(Algorithm::kEdDSA);
  KeySet both = SetOf({&a, &b});
  EXPECT_EQ(Outcome(Sign(a, Claims()), both), "OK");
  EXPECT_EQ(Outcome(Sign(b, Claims()), both), "OK");
  std::string payload = json::Write(Claims());
  EXPECT_EQ(Outcome(Craft(R"({"alg":"ES256","kid":"nope"})", payload, &a), both), "unknown_kid");
  // No kid: only acceptable when exactly one key is trusted.
  EXPECT_EQ(Outcome(Craft(R"({"alg":"ES256"})", payload, &a), both), "unknown_kid");
  EXPECT_EQ(Outcome(Craft(R"({"alg":"ES256"})", payload, &a), SetOf({&a})), "OK");
  EXPECT_EQ(Outcome(Craft(R"({"alg":"ES256","kid":""})", payload, &a), SetOf({&a})), "OK");
  // A kid that names nothing is refused even with one key.
  EXPECT_EQ(Outcome(Craft(R"({"alg":"ES256","kid":"zzz"})", payload, &a), SetOf({&a})),
            "unknown_kid");
  EXPECT_EQ(Outcome(Craft(R"({"alg":"ES256","kid":7})", payload, &a), SetOf({&a})), "malformed");
  EXPECT_EQ(Outcome(Sign(a, Claims()), KeySet()), "unknown_kid");
}

// ---------------------------------------------------------------------------
// Signature tampering

TEST(Jwt, TruncatedSignatureRefused) {
  for (Algorithm alg : kAllAlgorithms) {
    SCOPED_TRACE(AlgorithmName(alg));
    const SigningKey& key = Key(alg);
    KeySet keys = SetOf({&key});
    std::string token = Sign(key, Claims());
    size_t dot = token.rfind('.');
    std::string input = token.substr(0, dot);
    std::string sig = *Base64UrlDecode(token.substr(dot + 1));
    for (size_t n : {size_t{0}, size_t{1}, sig.size() / 2, sig.size() - 1}) {
      EXPECT_EQ(Outcome(input + "." + Base64UrlEncode(sig.substr(0, n)), keys), "bad_signature")
          << n;
    }
    EXPECT_EQ(Outcome(input + "." + Base64UrlEncode(sig + '\0'), keys), "bad_signature");
    EXPECT_EQ(Outcome(input + ".", keys), "bad_signature");
  }
}

TEST(Jwt, BitFlippedSignatureRefused) {
  for (Algorithm alg : kAllAlgorithms) {
    SCOPED_TRACE(AlgorithmName(alg));
    const SigningKey& key = Key(alg);
    KeySet keys = SetOf({&key});
    std::string token = Sign(key, Claims());
    size_t dot = token.rfind('.');
    std::string input = token.substr(0, dot);
    std::string sig = *Base64UrlDecode(token.substr(dot + 1));
    for (size_t i = 0; i < sig.size(); ++i) {
      for (int bit : {0, 7}) {
        std::string bad = sig;
        bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
        ASSERT_EQ(Outcome(input + "." + Base64UrlEncode(bad), keys), "bad_signature")
            << i << "/" << bit;
      }
    }
  }
}

TEST(Jwt, TamperedPayloadOrHeaderRefused) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  std::string token = Sign(key, Claims());
  size_t dot1 = token.find('.');
  size_t dot2 = token.rfind('.');
  std::string header = *Base64UrlDecode(token.substr(0, dot1));
  std::string sig = token.substr(dot2 + 1);
  json::Value elevated = Claims();
  elevated.Set("scope", json::Value::String("system/*.cruds"));
  std::string forged =
      token.substr(0, dot1) + "." + Base64UrlEncode(json::Write(elevated)) + "." + sig;
  EXPECT_EQ(Outcome(forged, keys), "bad_signature");
  std::string header2 = R"({"alg":"ES256","kid":"ES256-0","typ":"JWT","x":1})";
  EXPECT_EQ(Outcome(Base64UrlEncode(header2) + token.substr(dot1), keys), "bad_signature");
}

TEST(Jwt, EcdsaDerSignatureRefused) {
  // A DER-encoded ECDSA signature (what OpenSSL emits) is not the JOSE form.
  const SigningKey& key = Key(Algorithm::kES256);
  std::string token = Sign(key, Claims());
  size_t dot = token.rfind('.');
  std::string raw = *Base64UrlDecode(token.substr(dot + 1));
  std::optional<std::string> der = internal::EcdsaRawToDer(raw, 32);
  ASSERT_TRUE(der.has_value());
  EXPECT_EQ(Outcome(token.substr(0, dot) + "." + Base64UrlEncode(*der), SetOf({&key})),
            "bad_signature");
}

TEST(Jwt, EcdsaConversions) {
  std::string raw(64, '\0');
  raw[31] = 1;                                  // r = 1
  for (int i = 32; i < 64; ++i) raw[i] = 0x7f;  // s with no leading zero
  std::optional<std::string> der = internal::EcdsaRawToDer(raw, 32);
  ASSERT_TRUE(der.has_value());
  EXPECT_EQ(internal::EcdsaDerToRaw(*der, 32), raw);
  EXPECT_FALSE(internal::EcdsaRawToDer(raw.substr(1), 32).has_value());
  EXPECT_FALSE(internal::EcdsaRawToDer(raw + "x", 32).has_value());
  EXPECT_FALSE(internal::EcdsaDerToRaw("garbage", 32).has_value());
  EXPECT_FALSE(internal::EcdsaDerToRaw(*der + "x", 32).has_value());  // trailing bytes
  // A 48-byte r does not fit a 32-byte coordinate.
  std::string big(96, '\x55');
  EXPECT_FALSE(internal::EcdsaDerToRaw(*internal::EcdsaRawToDer(big, 48), 32).has_value());
}

// ---------------------------------------------------------------------------
// Claims

TEST(Jwt, Expiry) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  json::Value c = Claims();
  c.Set("exp", json::Value::Int(kNow - 31));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "expired");
  c.Set("exp", json::Value::Int(kNow - 30));  // within leeway
  EXPECT_EQ(Outcome(Sign(key, c), keys), "OK");
  c.Set("exp", json::Value::Int(kNow - 10'000'000));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "expired");
  JwtExpectations no_leeway = Expect();
  no_leeway.leeway_seconds = 0;
  c.Set("exp", json::Value::Int(kNow - 1));
  EXPECT_EQ(Outcome(Sign(key, c), keys, no_leeway), "expired");
  c.Set("exp", json::Value::Int(kNow));
  EXPECT_EQ(Outcome(Sign(key, c), keys, no_leeway), "OK");
  // Fractional NumericDate.
  c.Set("exp", json::Value::Number("1699999000.5"));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "expired");
  c.Set("exp", json::Value::Number("1.7000003e9"));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "OK");
  // An exp beyond any real date (here INT64_MAX) is refused rather than risking
  // overflow in arithmetic on it.
  c.Set("exp", json::Value::Int(INT64_MAX));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "malformed");
  c.Set("exp", json::Value::Int(999'999'999'999'999));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "OK");
  c.Set("exp", json::Value::Number("1e300"));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "malformed");
  // exp is required and must be a number.
  c.Set("exp", json::Value::String("1700000300"));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "malformed");
  c.Erase("exp");
  EXPECT_EQ(Outcome(Sign(key, c), keys), "missing_exp");
  JwtExpectations optional_exp = Expect();
  optional_exp.require_exp = false;
  EXPECT_EQ(Outcome(Sign(key, c), keys, optional_exp), "OK");
}

TEST(Jwt, NotYetValid) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  json::Value c = Claims();
  c.Set("nbf", json::Value::Int(kNow + 31));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "not_yet_valid");
  c.Set("nbf", json::Value::Int(kNow + 30));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "OK");
  c = Claims();
  c.Set("iat", json::Value::Int(kNow + 3600));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "not_yet_valid");
  c.Set("iat", json::Value::Bool(true));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "malformed");
  c = Claims();
  c.Erase("nbf");
  c.Erase("iat");
  EXPECT_EQ(Outcome(Sign(key, c), keys), "OK");
}

TEST(Jwt, MaxLifetime) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  JwtExpectations e = Expect();
  e.max_lifetime_seconds = 300;
  EXPECT_EQ(Outcome(Sign(key, Claims()), keys, e), "OK");
  json::Value c = Claims();
  c.Set("exp", json::Value::Int(kNow + 301));
  EXPECT_EQ(Outcome(Sign(key, c), keys, e), "lifetime_too_long");
  c.Erase("iat");  // then measured from now
  EXPECT_EQ(Outcome(Sign(key, c), keys, e), "lifetime_too_long");
  c.Set("exp", json::Value::Int(kNow + 100));
  EXPECT_EQ(Outcome(Sign(key, c), keys, e), "OK");
}

TEST(Jwt, Issuer) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  json::Value c = Claims();
  for (const char* iss : {"https://issuer.example/realms/fhir/", "https://evil.example",
                          "HTTPS://ISSUER.EXAMPLE/REALMS/FHIR", ""}) {
    c.Set("iss", json::Value::String(iss));
    EXPECT_EQ(Outcome(Sign(key, c), keys), "wrong_issuer") << iss;
  }
  c.Set("iss", json::Value::Int(1));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "wrong_issuer");
  c.Erase("iss");
  EXPECT_EQ(Outcome(Sign(key, c), keys), "wrong_issuer");
  // An empty expectation fails closed.
  JwtExpectations e = Expect();
  e.issuer.clear();
  EXPECT_EQ(Outcome(Sign(key, Claims()), keys, e), "wrong_issuer");
}

TEST(Jwt, Audience) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  json::Value c = Claims();
  c.Set("aud", json::Value::String("https://other.example"));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "wrong_audience");
  c.Erase("aud");
  EXPECT_EQ(Outcome(Sign(key, c), keys), "wrong_audience");
  c.Set("aud", J(R"(["https://other.example","https://fhir.example/r4"])"));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "OK");
  c.Set("aud", J(R"(["https://other.example","https://third.example"])"));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "wrong_audience");
  c.Set("aud", J(R"([])"));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "wrong_audience");
  c.Set("aud", J(R"([1, {"a":"https://fhir.example/r4"}, ["https://fhir.example/r4"]])"));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "wrong_audience");
  c.Set("aud", json::Value::Int(5));
  EXPECT_EQ(Outcome(Sign(key, c), keys), "wrong_audience");
  // Any of several expected audiences.
  JwtExpectations e = Expect();
  e.audience = {"a", "https://fhir.example/r4"};
  EXPECT_EQ(Outcome(Sign(key, Claims()), keys, e), "OK");
  e.audience.clear();
  EXPECT_EQ(Outcome(Sign(key, Claims()), keys, e), "wrong_audience");
}

TEST(Jwt, Typ) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  JwtExpectations e = Expect();
  e.typ = "at+jwt";
  EXPECT_EQ(Outcome(Sign(key, Claims(), "at+jwt"), keys, e), "OK");
  EXPECT_EQ(Outcome(Sign(key, Claims(), "application/at+jwt"), keys, e), "OK");
  EXPECT_EQ(Outcome(Sign(key, Claims(), "AT+JWT"), keys, e), "OK");
  EXPECT_EQ(Outcome(Sign(key, Claims(), "JWT"), keys, e), "wrong_typ");
  EXPECT_EQ(Outcome(Sign(key, Claims(), ""), keys, e), "wrong_typ");
  EXPECT_EQ(Outcome(Sign(key, Claims(), "JWT"), keys), "OK");  // no expectation
}

// ---------------------------------------------------------------------------
// Malformed tokens

TEST(Jwt, OversizedTokenRefused) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  json::Value c = Claims();
  c.Set("pad", json::Value::String(std::string(13000, 'a')));
  std::string token = Sign(key, c);
  ASSERT_GT(token.size(), 16384u);
  EXPECT_EQ(Outcome(token, keys), "too_large");
  EXPECT_EQ(Outcome(std::string(16385, 'a'), keys), "too_large");
  c.Set("pad", json::Value::String(std::string(11000, 'a')));
  token = Sign(key, c);
  ASSERT_LE(token.size(), 16384u);
  EXPECT_EQ(Outcome(token, keys), "OK");
}

TEST(Jwt, WrongNumberOfParts) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  std::string token = Sign(key, Claims());
  size_t dot2 = token.rfind('.');
  EXPECT_EQ(Outcome(token.substr(0, dot2), keys), "malformed");                 // 2 parts
  EXPECT_EQ(Outcome(token + "." + token.substr(dot2 + 1), keys), "malformed");  // 4 parts
  EXPECT_EQ(Outcome(token + ".", keys), "malformed");
  EXPECT_EQ(Outcome("", keys), "malformed");
  EXPECT_EQ(Outcome(".", keys), "malformed");
  EXPECT_EQ(Outcome("..", keys), "malformed");
  EXPECT_EQ(Outcome("...", keys), "malformed");
  EXPECT_EQ(Outcome("abc", keys), "malformed");
  // JWE compact form (5 parts).
  EXPECT_EQ(Outcome("a.b.c.d.e", keys), "malformed");
}

TEST(Jwt, MalformedBase64Refused) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  std::string token = Sign(key, Claims());
  size_t dot1 = token.find('.');
  size_t dot2 = token.rfind('.');
  std::string h = token.substr(0, dot1);
  std::string p = token.substr(dot1 + 1, dot2 - dot1 - 1);
  std::string s = token.substr(dot2 + 1);
  auto join = [](const std::string& a, const std::string& b, const std::string& c) {
    return a + "." + b + "." + c;
  };
  EXPECT_EQ(Outcome(join(h + "=", p, s), keys), "malformed");
  EXPECT_EQ(Outcome(join(h, p, s + "="), keys), "malformed");
  EXPECT_EQ(Outcome(join(h, p, s + "=="), keys), "malformed");
  EXPECT_EQ(Outcome(join(" " + h, p, s), keys), "malformed");
  EXPECT_EQ(Outcome(join(h, p, s + "\n"), keys), "malformed");
  EXPECT_EQ(Outcome(join(h, p, s.substr(0, 10) + "+" + s.substr(11)), keys), "malformed");
  EXPECT_EQ(Outcome(join(h, p, s.substr(0, 10) + "/" + s.substr(11)), keys), "malformed");
  ASSERT_EQ((s.size() + 3) % 4, 1u);
  EXPECT_EQ(Outcome(join(h, p, s + "AAA"), keys), "malformed");  // length % 4 == 1
  EXPECT_EQ(Outcome(join(h.substr(0, 5) + "*" + h.substr(6), p, s), keys), "malformed");
  // A payload that is not base64url is refused too.
  EXPECT_NE(Outcome(join(h, p.substr(0, 5) + "!" + p.substr(6), s), keys), "OK");
}

TEST(Jwt, MalformedHeaderRefused) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  std::string payload = json::Write(Claims());
  for (const char* header :
       {"[]", "\"ES256\"", "null", "{", "{\"alg\":\"ES256\",\"alg\":\"none\"}",
        "{\"alg\":\"ES256\"} x", "{\"kid\":\"ES256-0\"}", "{\"alg\":null,\"kid\":\"ES256-0\"}",
        "{\"alg\":[\"ES256\"]}", "", "{\"alg\":\"ES256\",\"kid\":\"ES256-0\",\"x\":\"\xff\"}"}) {
    EXPECT_EQ(Outcome(Craft(header, payload, &key), keys), "malformed") << header;
  }
  // Deeply nested header.
  std::string deep =
      R"({"alg":"ES256","kid":"ES256-0","x":)" + std::string(40, '[') + std::string(40, ']') + "}";
  EXPECT_EQ(Outcome(Craft(deep, payload, &key), keys), "malformed");
}

TEST(Jwt, MalformedPayloadRefused) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  for (const char* payload :
       {"[]", "\"x\"", "42", "{", "not json", R"({"iss":"a","iss":"b"})", ""}) {
    EXPECT_EQ(Outcome(Craft(HeaderFor(key), payload, &key), keys), "malformed") << payload;
  }
}

// ---------------------------------------------------------------------------
// Known answers from the RFCs

// RFC 7515 Appendix A.3 (ES256).
constexpr std::string_view kRfc7515A3Jwk =
    R"({"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",)"
    R"("y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})";
constexpr std::string_view kRfc7515A3Token =
    "eyJhbGciOiJFUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVl"
    "fQ."
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

// RFC 7515 Appendix A.2 (RS256).
constexpr std::string_view kRfc7515A2Jwk =
    R"({"kty":"RSA","n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJ)"
    R"(rcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bS)"
    R"(f63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4)"
    R"(LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ","e":"AQAB"})";
constexpr std::string_view kRfc7515A2Token =
    "eyJhbGciOiJSUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVl"
    "fQ."
    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5j"
    "ujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L0"
    "7Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUi"
    "pUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

// RFC 8037 Appendix A.4 (Ed25519); the payload is "Example of Ed25519 signing".
constexpr std::string_view kRfc8037Jwk =
    R"({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})";
constexpr std::string_view kRfc8037Token =
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

void CheckKnownAnswer(std::string_view jwk_text, Algorithm alg, std::string_view token) {
  absl::StatusOr<PublicKey> key = PublicKey::FromJwk(J(jwk_text), alg);
  ASSERT_TRUE(key.ok()) << key.status();
  size_t dot = token.rfind('.');
  std::string sig = *Base64UrlDecode(token.substr(dot + 1));
  EXPECT_TRUE(key->Verify(token.substr(0, dot), sig));
  std::string bad = sig;
  bad[5] ^= 0x10;
  EXPECT_FALSE(key->Verify(token.substr(0, dot), bad));
  EXPECT_FALSE(key->Verify(std::string(token.substr(0, dot)) + "x", sig));
}

TEST(Jwt, Rfc7515A3Es256KnownAnswer) {
  CheckKnownAnswer(kRfc7515A3Jwk, Algorithm::kES256, kRfc7515A3Token);
  // Through VerifyJwt: the signature passes; the RFC claims have no aud.
  KeySet keys;
  keys.Add(*PublicKey::FromJwk(J(kRfc7515A3Jwk), Algorithm::kES256));
  JwtExpectations e;
  e.issuer = "joe";
  e.audience = {"x"};
  e.now = 1300819380;
  EXPECT_EQ(Outcome(kRfc7515A3Token, keys, e), "wrong_audience");
  e.now = 1300819380 + 31;
  EXPECT_EQ(Outcome(kRfc7515A3Token, keys, e), "wrong_audience");  // aud checked first
}

TEST(Jwt, Rfc7515A2Rs256KnownAnswer) {
  CheckKnownAnswer(kRfc7515A2Jwk, Algorithm::kRS256, kRfc7515A2Token);
  // The same key pinned to PS256 refuses the PKCS#1 v1.5 signature.
  absl::StatusOr<PublicKey> ps = PublicKey::FromJwk(J(kRfc7515A2Jwk), Algorithm::kPS256);
  ASSERT_TRUE(ps.ok());
  size_t dot = kRfc7515A2Token.rfind('.');
  EXPECT_FALSE(ps->Verify(kRfc7515A2Token.substr(0, dot),
                          *Base64UrlDecode(kRfc7515A2Token.substr(dot + 1))));
}

TEST(Jwt, Rfc8037Ed25519KnownAnswer) {
  CheckKnownAnswer(kRfc8037Jwk, Algorithm::kEdDSA, kRfc8037Token);
  KeySet keys;
  keys.Add(*PublicKey::FromJwk(J(kRfc8037Jwk), Algorithm::kEdDSA));
  // Signature valid, payload is not a JSON object.
  EXPECT_EQ(Outcome(kRfc8037Token, keys), "malformed");
}

// ---------------------------------------------------------------------------
// JWK validation

TEST(Jwk, RefusesBadKeys) {
  std::string ec_x = R"("x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU")";
  std::string ec_y = R"("y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0")";
  std::string good_ec = R"({"kty":"EC","crv":"P-256","alg":"ES256",)" + ec_x + "," + ec_y + "}";
  ASSERT_TRUE(PublicKey::FromJwk(J(good_ec)).ok());
  std::string small_n = Base64UrlEncode(std::string(128, '\xff'));  // 1024-bit modulus
  std::string cases[] = {
      // alg missing and no default
      R"({"kty":"EC","crv":"P-256",)" + ec_x + "," + ec_y + "}",
      // symmetric algorithms and keys
      R"({"kty":"EC","crv":"P-256","alg":"HS256",)" + ec_x + "," + ec_y + "}",
      R"({"kty":"oct","alg":"HS256","k":"c2VjcmV0"})",
      R"({"kty":"EC","crv":"P-256","alg":"none",)" + ec_x + "," + ec_y + "}",
      // curve/alg/kty mismatches
      R"({"kty":"EC","crv":"P-256","alg":"ES384",)" + ec_x + "," + ec_y + "}",
      R"({"kty":"EC","crv":"P-384","alg":"ES256",)" + ec_x + "," + ec_y + "}",
      R"({"kty":"RSA","crv":"P-256","alg":"ES256",)" + ec_x + "," + ec_y + "}",
      R"({"kty":"EC","crv":"P-256","alg":"RS256",)" + ec_x + "," + ec_y + "}",
      R"({"kty":"EC","crv":"secp256k1","alg":"ES256",)" + ec_x + "," + ec_y + "}",
      // wrong coordinate length, point not on the curve, bad base64
      R"({"kty":"EC","crv":"P-256","alg":"ES256","x":"AAAA",)" + ec_y + "}",
      R"({"kty":"EC","crv":"P-256","alg":"ES256",)" + ec_x +
          R"(,"y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a1"})",
      R"({"kty":"EC","crv":"P-256","alg":"ES256",)" + ec_x + R"(,"y":"x_FEzRu9m36HLN_tue6=="})",
      R"({"kty":"EC","crv":"P-256","alg":"ES256",)" + ec_x + "}",
      // private material
      R"({"kty":"EC","crv":"P-256","alg":"ES256",)" + ec_x + "," + ec_y +
          R"(,"d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"})",
      // use/key_ops
      R"({"kty":"EC","crv":"P-256","alg":"ES256","use":"enc",)" + ec_x + "," + ec_y + "}",
      R"({"kty":"EC","crv":"P-256","alg":"ES256","key_ops":["encrypt"],)" + ec_x + "," + ec_y + "}",
      // RSA under 2048 bits, even modulus, bad exponent
      R"({"kty":"RSA","alg":"RS256","n":")" + small_n + R"(","e":"AQAB"})",
      R"({"kty":"RSA","alg":"RS256","n":")" + Base64UrlEncode(std::string(256, '\xfe')) +
          R"(","e":"AQAB"})",
      R"({"kty":"RSA","alg":"RS256","n":")" + Base64UrlEncode(std::string(256, '\xff')) +
          R"(","e":"AQ"})",
      R"({"kty":"RSA","alg":"RS256","n":")" + Base64UrlEncode(std::string(256, '\xff')) +
          R"(","e":"AAE"})",
      R"({"kty":"RSA","alg":"RS256","e":"AQAB"})",
      // OKP: only Ed25519, 32 bytes
      R"({"kty":"OKP","crv":"Ed448","alg":"EdDSA","x":")" + Base64UrlEncode(std::string(57, 'a')) +
          R"("})",
      R"({"kty":"OKP","crv":"Ed25519","alg":"EdDSA","x":"AAAA"})",
      R"({"kty":"OKP","crv":"X25519","alg":"EdDSA","x":")" + Base64UrlEncode(std::string(32, 'a')) +
          R"("})",
      // structure
      R"({"crv":"P-256","alg":"ES256",)" + ec_x + "," + ec_y + "}",
      R"({"kty":"EC","crv":"P-256","alg":"ES256","kid":5,)" + ec_x + "," + ec_y + "}",
      R"([])",
  };
  for (const std::string& text : cases) {
    absl::StatusOr<PublicKey> key = PublicKey::FromJwk(J(text));
    EXPECT_FALSE(key.ok()) << text;
  }
  // A 2048-bit key generated by OpenSSL is accepted; default_alg applies when alg is absent.
  json::Value rsa = Key(Algorithm::kRS256).public_key().ToJwk();
  rsa.Erase("alg");
  EXPECT_FALSE(PublicKey::FromJwk(rsa).ok());
  absl::StatusOr<PublicKey> ps = PublicKey::FromJwk(rsa, Algorithm::kPS256);
  ASSERT_TRUE(ps.ok());
  EXPECT_EQ(ps->alg(), Algorithm::kPS256);
  // default_alg does not override an explicit alg.
  EXPECT_EQ(
      PublicKey::FromJwk(Key(Algorithm::kRS256).public_key().ToJwk(), Algorithm::kPS256)->alg(),
      Algorithm::kRS256);
}

TEST(Jwk, RefusesRsa1024GeneratedKey) {
  EVP_PKEY* small = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(1024));
  ASSERT_NE(small, nullptr);
  BIGNUM* n = nullptr;
  ASSERT_EQ(EVP_PKEY_get_bn_param(small, "n", &n), 1);
  std::string nb(BN_num_bytes(n), '\0');
  BN_bn2bin(n, reinterpret_cast<unsigned char*>(nb.data()));
  BN_free(n);
  EVP_PKEY_free(small);
  json::Value jwk =
      J(R"({"kty":"RSA","alg":"RS256","n":")" + Base64UrlEncode(nb) + R"(","e":"AQAB"})");
  absl::StatusOr<PublicKey> key = PublicKey::FromJwk(jwk);
  ASSERT_FALSE(key.ok());
  EXPECT_NE(DetailOf(key.status()).find("2048"), std::string::npos);
}

TEST(Jwks, ParsesAndSkips) {
  json::Value ec = Key(Algorithm::kES256).public_key().ToJwk();
  json::Value ec_no_alg = Key(Algorithm::kES384).public_key().ToJwk();
  ec_no_alg.Erase("alg");
  json::Value ed_no_alg = Key(Algorithm::kEdDSA).public_key().ToJwk();
  ed_no_alg.Erase("alg");
  json::Value rsa_no_alg = Key(Algorithm::kRS256).public_key().ToJwk();
  rsa_no_alg.Erase("alg");
  json::Value enc = Key(Algorithm::kRS384).public_key().ToJwk();
  enc.Set("use", json::Value::String("enc"));
  json::Value rs512 = Key(Algorithm::kRS384).public_key().ToJwk();
  rs512.Set("alg", json::Value::String("RS512"));
  json::Value dup = Key(Algorithm::kES256, 1).public_key().ToJwk();
  dup.Set("kid", json::Value::String(Key(Algorithm::kES256).kid()));

  json::Array keys;
  keys.push_back(ec);
  keys.push_back(ec_no_alg);
  keys.push_back(ed_no_alg);
  keys.push_back(rsa_no_alg);
  keys.push_back(enc);
  keys.push_back(rs512);
  keys.push_back(J(R"({"kty":"oct","k":"c2VjcmV0","alg":"HS256"})"));
  keys.push_back(J(R"({"kty":"EC","crv":"P-521","x":"AA","y":"AA"})"));
  keys.push_back(J(R"("not an object")"));
  keys.push_back(dup);
  json::Value jwks = json::Value::MakeObject();
  jwks.Set("keys", json::Value::MakeArray(keys));

  absl::StatusOr<KeySet> set = KeySet::FromJwks(jwks);
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->keys().size(), 3u);
  EXPECT_EQ(set->keys()[0].kid(), Key(Algorithm::kES256).kid());
  EXPECT_EQ(set->keys()[1].alg(), Algorithm::kES384);
  EXPECT_EQ(set->keys()[2].alg(), Algorithm::kEdDSA);
  // The first key with a kid wins; the duplicate is not trusted.
  EXPECT_EQ(Outcome(Sign(Key(Algorithm::kES256), Claims()), *set), "OK");
  std::string by_dup = Sign(Key(Algorithm::kES256, 1), Claims());
  EXPECT_EQ(Outcome(by_dup, *set), "unknown_kid");

  absl::StatusOr<KeySet> with_rsa = KeySet::FromJwks(jwks, Algorithm::kRS256);
  ASSERT_TRUE(with_rsa.ok());
  EXPECT_EQ(with_rsa->keys().size(), 4u);
  EXPECT_EQ(Outcome(Sign(Key(Algorithm::kRS256), Claims()), *with_rsa), "OK");
}

TEST(Jwks, RefusesEmptyOrMalformed) {
  for (const char* text :
       {R"({})", R"({"keys":{}})", R"({"keys":[]})", R"([])",
        R"({"keys":[{"kty":"oct","k":"c2VjcmV0"}]})",
        R"({"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","use":"enc","x":"AA","y":"AA"}]})",
        R"({"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","x":"AA","y":"AA"}]})"}) {
    absl::StatusOr<KeySet> set = KeySet::FromJwks(J(text));
    EXPECT_FALSE(set.ok()) << text;
  }
}

TEST(KeySet, Find) {
  KeySet empty;
  EXPECT_EQ(empty.Find(""), nullptr);
  EXPECT_EQ(empty.Find("a"), nullptr);
  KeySet one = SetOf({&Key(Algorithm::kES256)});
  EXPECT_NE(one.Find(""), nullptr);
  EXPECT_NE(one.Find("ES256-0"), nullptr);
  EXPECT_EQ(one.Find("ES256-1"), nullptr);
  KeySet two = SetOf({&Key(Algorithm::kES256), &Key(Algorithm::kEdDSA)});
  EXPECT_EQ(two.Find(""), nullptr);
  EXPECT_EQ(two.Find("EdDSA-0")->alg(), Algorithm::kEdDSA);
}

// ---------------------------------------------------------------------------
// PEM files

TEST(SigningKey, SaveLoadRoundTrip) {
  TempDir dir;
  for (Algorithm alg : kAllAlgorithms) {
    SCOPED_TRACE(AlgorithmName(alg));
    const SigningKey& key = Key(alg);
    std::string path = dir.File(std::string(AlgorithmName(alg)) + ".pem");
    ASSERT_TRUE(key.SavePem(path).ok());
    EXPECT_EQ(ModeOf(path), 0600u);
    absl::StatusOr<SigningKey> loaded = SigningKey::LoadPem(path, alg, "loaded");
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->kid(), "loaded");
    EXPECT_EQ(loaded->alg(), alg);
    // Same key: the loaded key's signatures verify under the original public key.
    std::string input = "a.b";
    EXPECT_TRUE(key.public_key().Verify(input, *loaded->Sign(input)));
    json::Value a = key.public_key().ToJwk(), b = loaded->public_key().ToJwk();
    a.Erase("kid");
    b.Erase("kid");
    EXPECT_EQ(a, b);
    // O_EXCL: never overwrites.
    EXPECT_FALSE(key.SavePem(path).ok());
  }
}

TEST(SigningKey, PemIsPkcs8) {
  TempDir dir;
  std::string path = dir.File("k.pem");
  ASSERT_TRUE(Key(Algorithm::kES256).SavePem(path).ok());
  absl::StatusOr<SecretBytes> text = crypto::ReadPrivateFile(path, 65536);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text->UnsafeView().rfind("-----BEGIN PRIVATE KEY-----", 0), 0u);
}

TEST(SigningKey, LoadRefusesGroupReadableFile) {
  TempDir dir;
  std::string path = dir.File("k.pem");
  ASSERT_TRUE(Key(Algorithm::kES256).SavePem(path).ok());
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  absl::StatusOr<SigningKey> loaded = SigningKey::LoadPem(path, Algorithm::kES256, "k");
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(DetailOf(loaded.status()).find("chmod 600"), std::string::npos);
  EXPECT_EQ(DetailOf(loaded.status()).find("PRIVATE"), std::string::npos);
  ASSERT_EQ(::chmod(path.c_str(), 0640), 0);
  EXPECT_FALSE(SigningKey::LoadPem(path, Algorithm::kES256, "k").ok());
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  EXPECT_TRUE(SigningKey::LoadPem(path, Algorithm::kES256, "k").ok());
}

TEST(SigningKey, LoadRefusesKeyOfWrongType) {
  TempDir dir;
  std::string ec = dir.File("ec.pem");
  std::string rsa = dir.File("rsa.pem");
  ASSERT_TRUE(Key(Algorithm::kES256).SavePem(ec).ok());
  ASSERT_TRUE(Key(Algorithm::kRS256).SavePem(rsa).ok());
  EXPECT_FALSE(SigningKey::LoadPem(ec, Algorithm::kES384, "k").ok());
  EXPECT_FALSE(SigningKey::LoadPem(ec, Algorithm::kRS256, "k").ok());
  EXPECT_FALSE(SigningKey::LoadPem(ec, Algorithm::kEdDSA, "k").ok());
  EXPECT_FALSE(SigningKey::LoadPem(rsa, Algorithm::kES256, "k").ok());
  EXPECT_TRUE(SigningKey::LoadPem(rsa, Algorithm::kPS256, "k").ok());
  EXPECT_FALSE(SigningKey::LoadPem(dir.File("missing.pem"), Algorithm::kES256, "k").ok());
  std::string junk = dir.File("junk.pem");
  ASSERT_TRUE(crypto::WriteNewFile(junk, "-----BEGIN PRIVATE KEY-----\nAAAA\n", 0600).ok());
  EXPECT_FALSE(SigningKey::LoadPem(junk, Algorithm::kES256, "k").ok());
}

}  // namespace
}  // namespace fhirward::jose

namespace fhirward::jose {
namespace {

TEST(Jwt, RandomGarbageNeverVerifies) {
  const SigningKey& key = Key(Algorithm::kES256);
  KeySet keys = SetOf({&key});
  std::string valid = Sign(key, Claims());
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_...";
  for (int i = 0; i < 3000; ++i) {
    std::string r = RandomBytes(1 + i % 200);
    std::string token;
    for (char c : r) token += kAlphabet[static_cast<unsigned char>(c) % (sizeof kAlphabet - 1)];
    EXPECT_FALSE(VerifyJwt(token, keys, Expect()).ok());
    // Random single-byte corruption of a valid token.
    std::string bad = valid;
    size_t pos = static_cast<unsigned char>(r[0]) * bad.size() / 256;
    char repl = kAlphabet[static_cast<unsigned char>(r.back()) % (sizeof kAlphabet - 1)];
    if (bad[pos] == repl) continue;
    bad[pos] = repl;
    EXPECT_FALSE(VerifyJwt(bad, keys, Expect()).ok()) << bad;
  }
}

}  // namespace
}  // namespace fhirward::jose
