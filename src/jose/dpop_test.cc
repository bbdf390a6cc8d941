#include "jose/dpop.h"

#include <atomic>
#include <limits>
#include <map>
#include <thread>
#include <vector>

#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "gtest/gtest.h"
#include "jose/jws.h"

namespace fhirward::jose {
namespace {

constexpr int64_t kNow = 1'700'000'000;
constexpr std::string_view kUrl = "https://server.example.com/token";
constexpr std::string_view kNonceSecret = "0123456789abcdef0123456789abcdef";

json::Value J(std::string_view text) {
  absl::StatusOr<json::Value> v = json::Parse(text);
  EXPECT_TRUE(v.ok()) << v.status() << " in " << text;
  return v.ok() ? std::move(*v) : json::Value();
}

// Keys are generated once per algorithm and index (RSA generation is slow).
const SigningKey& Key(Algorithm alg, int index = 0) {
  static auto* keys = new std::map<std::pair<Algorithm, int>, SigningKey>();
  auto it = keys->find({alg, index});
  if (it == keys->end()) {
    absl::StatusOr<SigningKey> key = SigningKey::Generate(alg, "dpop-" + std::to_string(index));
    EXPECT_TRUE(key.ok()) << key.status();
    it = keys->emplace(std::make_pair(alg, index), std::move(*key)).first;
  }
  return it->second;
}

// The public JWK a client puts in its proofs: key members only.
json::Value PublicJwk(const SigningKey& key) {
  json::Value jwk = key.public_key().ToJwk();
  jwk.Erase("kid");
  jwk.Erase("alg");
  jwk.Erase("use");
  return jwk;
}

std::string Thumbprint(const SigningKey& key) {
  absl::StatusOr<std::string> jkt = JwkThumbprint(PublicJwk(key));
  EXPECT_TRUE(jkt.ok()) << jkt.status();
  return jkt.ok() ? *jkt : std::string();
}

json::Value Header(const SigningKey& key) {
  json::Value h = json::Value::MakeObject();
  h.Set("typ", json::Value::String("dpop+jwt"));
  h.Set("alg", json::Value::String(std::string(AlgorithmName(key.alg()))));
  h.Set("jwk", PublicJwk(key));
  return h;
}

json::Value Claims(std::string jti = "jti-1") {
  json::Value c = json::Value::MakeObject();
  c.Set("jti", json::Value::String(std::move(jti)));
  c.Set("htm", json::Value::String("POST"));
  c.Set("htu", json::Value::String(std::string(kUrl)));
  c.Set("iat", json::Value::Int(kNow));
  return c;
}

// A proof from literal header and payload texts, signed by `key` (or carrying `raw_sig` when
// key is null).
std::string Craft(std::string_view header, std::string_view payload, const SigningKey* key,
                  std::string_view raw_sig = {}) {
  std::string input = Base64UrlEncode(header) + "." + Base64UrlEncode(payload);
  std::string sig(raw_sig);
  if (key != nullptr) {
    absl::StatusOr<std::string> s = key->Sign(input);
    EXPECT_TRUE(s.ok()) << s.status();
    if (s.ok()) sig = *s;
  }
  return input + "." + Base64UrlEncode(sig);
}

std::string Sign(const SigningKey& key, const json::Value& header, const json::Value& claims) {
  return Craft(json::Write(header), json::Write(claims), &key);
}

std::string Proof(const SigningKey& key, const json::Value& claims = Claims()) {
  return Sign(key, Header(key), claims);
}

DpopExpectations Expect() {
  DpopExpectations e;
  e.method = "POST";
  e.url = std::string(kUrl);
  e.now = kNow;
  return e;
}

// The kInvalidToken detail of a failed verification, or "OK".
std::string Outcome(std::string_view proof, const DpopExpectations& expect = Expect()) {
  absl::StatusOr<DpopProof> v = VerifyDpopProof(proof, expect);
  if (v.ok()) return "OK";
  EXPECT_EQ(CodeOf(v.status()), ErrorCode::kInvalidToken) << v.status();
  return DetailOf(v.status());
}

const SigningKey& Es256() { return Key(Algorithm::kES256); }

// ---------------------------------------------------------------------------
// Valid proofs

TEST(Dpop, ValidEs256Proof) {
  absl::StatusOr<DpopProof> v = VerifyDpopProof(Proof(Es256()), Expect());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->jkt, Thumbprint(Es256()));
  EXPECT_EQ(v->jkt.size(), 43u);
  EXPECT_EQ(v->jti, "jti-1");
  EXPECT_EQ(v->iat, kNow);
  EXPECT_EQ(v->jwk, PublicJwk(Es256()));
}

TEST(Dpop, ValidRs256Proof) {
  const SigningKey& key = Key(Algorithm::kRS256);
  absl::StatusOr<DpopProof> v = VerifyDpopProof(Proof(key), Expect());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->jkt, Thumbprint(key));
}

TEST(Dpop, EveryAlgorithm) {
  for (Algorithm alg : {Algorithm::kES256, Algorithm::kES384, Algorithm::kRS256, Algorithm::kRS384,
                        Algorithm::kPS256, Algorithm::kEdDSA}) {
    SCOPED_TRACE(AlgorithmName(alg));
    EXPECT_EQ(Outcome(Proof(Key(alg))), "OK");
  }
}

TEST(Dpop, JwkWithKidAlgAndUseAccepted) {
  json::Value header = Header(Es256());
  header.Set("jwk", Es256().public_key().ToJwk());  // kid, alg=ES256, use=sig
  EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "OK");
}

TEST(Dpop, FractionalIatFloored) {
  json::Value claims = Claims();
  claims.Set("iat", json::Value::Number("1700000000.75"));
  absl::StatusOr<DpopProof> v = VerifyDpopProof(Proof(Es256(), claims), Expect());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->iat, kNow);
}

// ---------------------------------------------------------------------------
// Binding to the request

TEST(Dpop, Ath) {
  DpopExpectations e = Expect();
  e.access_token = "eyJ.access.token";
  json::Value claims = Claims();
  claims.Set("ath", json::Value::String(Base64UrlEncode(crypto::Sha256(e.access_token))));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "OK");

  claims.Set("ath", json::Value::String(Base64UrlEncode(crypto::Sha256("another token"))));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "ath_mismatch");
  claims.Set("ath", json::Value::String(HexEncode(crypto::Sha256(e.access_token))));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "ath_mismatch");
  claims.Erase("ath");
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "ath_mismatch");
  // Without an access token to bind to, ath is not looked at.
  EXPECT_EQ(Outcome(Proof(Es256(), claims)), "OK");
}

TEST(Dpop, HtmMismatch) {
  json::Value claims = Claims();
  claims.Set("htm", json::Value::String("GET"));
  EXPECT_EQ(Outcome(Proof(Es256(), claims)), "htm_mismatch");
  claims.Set("htm", json::Value::String("post"));  // methods are case-sensitive
  EXPECT_EQ(Outcome(Proof(Es256(), claims)), "htm_mismatch");
  DpopExpectations e = Expect();
  e.method.clear();  // an empty expectation matches nothing
  EXPECT_EQ(Outcome(Proof(Es256()), e), "htm_mismatch");
}

std::string HtuOutcome(std::string_view htu, std::string_view expected_url = kUrl) {
  json::Value claims = Claims();
  claims.Set("htu", json::Value::String(std::string(htu)));
  DpopExpectations e = Expect();
  e.url = std::string(expected_url);
  return Outcome(Proof(Es256(), claims), e);
}

TEST(DpopHtu, QueryAndFragmentIgnored) {
  EXPECT_EQ(HtuOutcome("https://server.example.com/token?a=b"), "OK");
  EXPECT_EQ(HtuOutcome("https://server.example.com/token#frag"), "OK");
  EXPECT_EQ(HtuOutcome("https://server.example.com/token?a=b#frag"), "OK");
  EXPECT_EQ(HtuOutcome("https://server.example.com/token", "https://server.example.com/token?x=1"),
            "OK");
  // A fragment hides what follows it: "@" after "#" is no userinfo.
  EXPECT_EQ(HtuOutcome("https://server.example.com/token#@evil.example"), "OK");
}

TEST(DpopHtu, DifferentPathHostSchemeOrPortRefused) {
  EXPECT_EQ(HtuOutcome("https://server.example.com/authorize"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com/token/"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com/Token"), "htu_mismatch");  // path case kept
  EXPECT_EQ(HtuOutcome("https://other.example.com/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com.evil/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("http://server.example.com/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com:8443/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com:80/token"), "htu_mismatch");
}

TEST(DpopHtu, CaseAndDefaultPortNormalised) {
  EXPECT_EQ(HtuOutcome("HTTPS://Server.EXAMPLE.com/token"), "OK");
  EXPECT_EQ(HtuOutcome("https://server.example.com:443/token"), "OK");
  EXPECT_EQ(HtuOutcome("https://server.example.com:/token"), "OK");  // empty port = default
  EXPECT_EQ(HtuOutcome("https://server.example.com/token", "https://SERVER.example.com:443/token"),
            "OK");
  EXPECT_EQ(HtuOutcome("http://localhost:80/token", "http://localhost/token"), "OK");
  EXPECT_EQ(HtuOutcome("http://localhost:8080/token", "http://LocalHost:08080/token"), "OK");
  EXPECT_EQ(HtuOutcome("https://[::1]:443/token", "https://[::1]/token"), "OK");
  EXPECT_EQ(HtuOutcome("https://server.example.com", "https://server.example.com/"), "OK");
}

TEST(DpopHtu, PercentEncodingNormalised) {
  EXPECT_EQ(HtuOutcome("https://server.example.com/%74oken"), "OK");  // %74 = 't'
  EXPECT_EQ(HtuOutcome("https://server.example.com/a%2fb", "https://server.example.com/a%2Fb"),
            "OK");
  EXPECT_EQ(HtuOutcome("https://server.example.com/a%2Fb", "https://server.example.com/a/b"),
            "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com/token%"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com/token%4"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com/token%zz"), "htu_mismatch");
}

TEST(DpopHtu, UnusableUrlsRefused) {
  EXPECT_EQ(HtuOutcome("/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("server.example.com/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("ftp://server.example.com/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://user@server.example.com/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com\\@evil/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https:///token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com:99999/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com:44x/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://server.example.com/to ken"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("https://[::1/token"), "htu_mismatch");
  // An expected URL that cannot be normalised matches nothing, not even itself.
  EXPECT_EQ(HtuOutcome("/token", "/token"), "htu_mismatch");
  EXPECT_EQ(HtuOutcome("", ""), "htu_mismatch");
}

// ---------------------------------------------------------------------------
// Time

TEST(Dpop, StaleAndFutureIat) {
  DpopExpectations e = Expect();
  json::Value claims = Claims();
  claims.Set("iat", json::Value::Int(kNow - 300));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "OK");
  claims.Set("iat", json::Value::Int(kNow - 301));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "stale_proof");
  claims.Set("iat", json::Value::Int(kNow + 60));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "OK");
  claims.Set("iat", json::Value::Int(kNow + 61));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "future_proof");

  e.max_age_seconds = 10;
  e.future_leeway_seconds = 0;
  claims.Set("iat", json::Value::Int(kNow - 11));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "stale_proof");
  claims.Set("iat", json::Value::Int(kNow + 1));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "future_proof");

  // Dates far beyond any real time are malformed rather than overflowing.
  claims.Set("iat", json::Value::Number("1e300"));
  EXPECT_EQ(Outcome(Proof(Es256(), claims)), "malformed");
  claims.Set("iat", json::Value::Int(std::numeric_limits<int64_t>::min()));
  EXPECT_EQ(Outcome(Proof(Es256(), claims)), "malformed");
}

// ---------------------------------------------------------------------------
// Header

TEST(Dpop, Typ) {
  json::Value header = Header(Es256());
  header.Erase("typ");
  EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "bad_typ");
  for (std::string_view typ : {"JWT", "at+jwt", "DPOP+JWT", "application/dpop+jwt", ""}) {
    SCOPED_TRACE(typ);
    header.Set("typ", json::Value::String(std::string(typ)));
    EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "bad_typ");
  }
  header.Set("typ", json::Value::Int(1));
  EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "bad_typ");
}

TEST(Dpop, AlgNoneRefused) {
  json::Value header = Header(Es256());
  for (std::string_view alg : {"none", "None", "NONE"}) {
    SCOPED_TRACE(alg);
    header.Set("alg", json::Value::String(std::string(alg)));
    std::string h = json::Write(header);
    std::string c = json::Write(Claims());
    EXPECT_EQ(Outcome(Craft(h, c, &Es256())), "bad_alg");
    EXPECT_EQ(Outcome(Base64UrlEncode(h) + "." + Base64UrlEncode(c) + "."), "bad_alg");
  }
  header.Erase("alg");
  EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "bad_alg");
}

TEST(Dpop, AlgHs256Refused) {
  // HMAC keyed with the public key bytes, and HMAC with a symmetric jwk: both refused on alg.
  for (const json::Value& jwk : {PublicJwk(Es256()), J(R"({"kty":"oct","k":"c2VjcmV0"})")}) {
    json::Value header = Header(Es256());
    header.Set("alg", json::Value::String("HS256"));
    header.Set("jwk", jwk);
    std::string input =
        Base64UrlEncode(json::Write(header)) + "." + Base64UrlEncode(json::Write(Claims()));
    std::string proof = input + "." + Base64UrlEncode(crypto::HmacSha256(json::Write(jwk), input));
    EXPECT_EQ(Outcome(proof), "bad_alg");
  }
  for (std::string_view alg : {"HS384", "HS512", "ES512", "RS512", "PS384", "es256", "Ed25519"}) {
    SCOPED_TRACE(alg);
    json::Value header = Header(Es256());
    header.Set("alg", json::Value::String(std::string(alg)));
    EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "bad_alg");
  }
}

TEST(Dpop, PrivateKeyInJwkRefused) {
  for (std::string_view member : {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}) {
    SCOPED_TRACE(member);
    json::Value header = Header(Es256());
    json::Value jwk = PublicJwk(Es256());
    jwk.Set(std::string(member), json::Value::String("AAAA"));
    header.Set("jwk", jwk);
    EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "private_key_in_jwk");
  }
}

TEST(Dpop, JwkMissingOrUnusable) {
  json::Value header = Header(Es256());
  header.Erase("jwk");
  EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "bad_jwk");
  header.Set("jwk", json::Value::String("not an object"));
  EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "bad_jwk");
  // A kid is no substitute: the key must be in the proof.
  header.Erase("jwk");
  header.Set("kid", json::Value::String("dpop-0"));
  EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "bad_jwk");

  auto with_jwk = [](json::Value jwk) {
    json::Value h = Header(Es256());
    h.Set("jwk", std::move(jwk));
    return Outcome(Sign(Es256(), h, Claims()));
  };
  json::Value jwk = PublicJwk(Es256());
  jwk.Erase("kty");
  EXPECT_EQ(with_jwk(jwk), "bad_jwk");
  jwk.Set("kty", json::Value::String("oct"));
  EXPECT_EQ(with_jwk(jwk), "bad_jwk");
  jwk = PublicJwk(Es256());
  jwk.Erase("y");
  EXPECT_EQ(with_jwk(jwk), "bad_jwk");
  jwk = PublicJwk(Es256());
  jwk.Set("y", jwk.Find("x") != nullptr ? *jwk.Find("x") : json::Value());  // off the curve
  EXPECT_EQ(with_jwk(jwk), "bad_jwk");
  jwk = PublicJwk(Es256());
  jwk.Set("use", json::Value::String("enc"));
  EXPECT_EQ(with_jwk(jwk), "bad_jwk");
}

TEST(Dpop, JwkAlgConfusionRefused) {
  const SigningKey& rsa = Key(Algorithm::kRS256);
  // EC key under an RSA header alg; the proof is even signed with the RSA key.
  json::Value header = Header(rsa);
  header.Set("jwk", PublicJwk(Es256()));
  EXPECT_EQ(Outcome(Sign(rsa, header, Claims())), "bad_alg");
  // RSA key under ES256.
  header = Header(Es256());
  header.Set("jwk", PublicJwk(rsa));
  EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "bad_alg");
  // P-256 key under ES384, Ed25519 key under ES256.
  header = Header(Key(Algorithm::kES384));
  header.Set("jwk", PublicJwk(Es256()));
  EXPECT_EQ(Outcome(Sign(Key(Algorithm::kES384), header, Claims())), "bad_alg");
  header = Header(Es256());
  header.Set("jwk", PublicJwk(Key(Algorithm::kEdDSA)));
  EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "bad_alg");
  // The jwk's own alg must agree with the header: PKCS#1 v1.5 proof for a PS256-only key.
  header = Header(rsa);
  json::Value jwk = PublicJwk(rsa);
  jwk.Set("alg", json::Value::String("PS256"));
  header.Set("jwk", jwk);
  EXPECT_EQ(Outcome(Sign(rsa, header, Claims())), "bad_alg");
  jwk.Set("alg", json::Value::Int(256));
  header.Set("jwk", jwk);
  EXPECT_EQ(Outcome(Sign(rsa, header, Claims())), "bad_alg");
}

TEST(Dpop, BadSignature) {
  std::string proof = Proof(Es256());
  size_t dot = proof.rfind('.');
  std::string sig = *Base64UrlDecode(proof.substr(dot + 1));
  sig[7] ^= 0x01;
  EXPECT_EQ(Outcome(proof.substr(0, dot + 1) + Base64UrlEncode(sig)), "bad_signature");
  // Truncated or empty signature.
  EXPECT_EQ(Outcome(proof.substr(0, dot + 1) + Base64UrlEncode(sig.substr(0, 63))),
            "bad_signature");
  EXPECT_EQ(Outcome(proof.substr(0, dot + 1)), "bad_signature");
  // Signed by another key than the one in the header.
  EXPECT_EQ(Outcome(Sign(Key(Algorithm::kES256, 1), Header(Es256()), Claims())), "bad_signature");
  // Payload swapped after signing.
  std::string other = Proof(Es256(), Claims("jti-2"));
  size_t p1 = proof.find('.');
  size_t o1 = other.find('.');
  size_t o2 = other.rfind('.');
  EXPECT_EQ(Outcome(proof.substr(0, p1) + other.substr(o1, o2 - o1) + proof.substr(dot)),
            "bad_signature");
}

TEST(Dpop, Malformed) {
  std::string proof = Proof(Es256());
  EXPECT_EQ(Outcome(""), "malformed");
  EXPECT_EQ(Outcome("a.b"), "malformed");
  EXPECT_EQ(Outcome(proof + ".x"), "malformed");
  EXPECT_EQ(Outcome(proof + "," + proof), "malformed");   // two DPoP header values
  EXPECT_EQ(Outcome(proof + ", " + proof), "malformed");  // two DPoP header values
  EXPECT_EQ(Outcome(" " + proof), "malformed");
  EXPECT_EQ(Outcome("!!!." + proof.substr(proof.find('.') + 1)), "malformed");
  EXPECT_EQ(Outcome(proof + "!"), "malformed");  // signature not base64url
  EXPECT_EQ(Outcome(Craft("[1]", json::Write(Claims()), &Es256())), "malformed");
  EXPECT_EQ(Outcome(Craft(json::Write(Header(Es256())), "[1]", &Es256())), "malformed");
  EXPECT_EQ(Outcome(Craft(json::Write(Header(Es256())), "{", &Es256())), "malformed");

  json::Value header = Header(Es256());
  header.Set("crit", J(R"(["exp"])"));
  EXPECT_EQ(Outcome(Sign(Es256(), header, Claims())), "malformed");

  // Size: 8 KiB at most.
  json::Value claims = Claims();
  claims.Set("pad", json::Value::String(std::string(8 * 1024, 'a')));
  EXPECT_EQ(Outcome(Proof(Es256(), claims)), "malformed");
  claims.Set("pad", json::Value::String(std::string(5 * 1024, 'a')));
  std::string big = Proof(Es256(), claims);
  EXPECT_LT(big.size(), 8u * 1024);
  EXPECT_EQ(Outcome(big), "OK");
}

// ---------------------------------------------------------------------------
// Claims

TEST(Dpop, MissingClaims) {
  for (std::string_view name : {"jti", "htm", "htu", "iat"}) {
    SCOPED_TRACE(name);
    json::Value claims = Claims();
    claims.Erase(name);
    EXPECT_EQ(Outcome(Proof(Es256(), claims)), "missing_claim");
  }
}

TEST(Dpop, ClaimsOfWrongTypeMalformed) {
  auto with = [](std::string_view name, json::Value v) {
    json::Value claims = Claims();
    claims.Set(std::string(name), std::move(v));
    return Outcome(Proof(Es256(), claims));
  };
  EXPECT_EQ(with("jti", json::Value::Int(7)), "malformed");
  EXPECT_EQ(with("jti", json::Value::String("")), "malformed");
  EXPECT_EQ(with("jti", json::Value::String(std::string(257, 'j'))), "malformed");
  EXPECT_EQ(with("jti", json::Value::String(std::string(256, 'j'))), "OK");
  EXPECT_EQ(with("htm", json::Value::Null()), "malformed");
  EXPECT_EQ(with("htu", J(R"(["https://server.example.com/token"])")), "malformed");
  EXPECT_EQ(with("iat", json::Value::String("1700000000")), "malformed");
}

TEST(Dpop, JktMismatch) {
  DpopExpectations e = Expect();
  e.jkt = Thumbprint(Key(Algorithm::kES256, 1));
  EXPECT_EQ(Outcome(Proof(Es256()), e), "jkt_mismatch");
  e.jkt = Thumbprint(Es256());
  EXPECT_EQ(Outcome(Proof(Es256()), e), "OK");
}

// ---------------------------------------------------------------------------
// Nonces

TEST(Dpop, Nonce) {
  DpopNonces nonces{std::string(kNonceSecret), 300};
  DpopExpectations e = Expect();
  e.nonces = &nonces;
  json::Value claims = Claims();
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "use_dpop_nonce");  // required, missing
  claims.Set("nonce", json::Value::String("made-up"));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "use_dpop_nonce");
  claims.Set("nonce", json::Value::Int(1));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "use_dpop_nonce");

  claims.Set("nonce", json::Value::String(nonces.Current(kNow)));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "OK");
  claims.Set("nonce", json::Value::String(nonces.Current(kNow - 300)));  // previous window
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "OK");
  claims.Set("nonce", json::Value::String(nonces.Current(kNow - 600)));  // two windows ago
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "use_dpop_nonce");
  // Another server's secret.
  DpopNonces other{"another secret of thirty-two bytes", 300};
  claims.Set("nonce", json::Value::String(other.Current(kNow)));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "use_dpop_nonce");
  // Without a nonce source, a nonce claim is ignored.
  EXPECT_EQ(Outcome(Proof(Es256(), claims)), "OK");
}

TEST(DpopNonces, Windows) {
  DpopNonces nonces{std::string(kNonceSecret), 300};
  const int64_t start = 1'699'999'800;  // a multiple of 300
  std::string n = nonces.Current(start);
  EXPECT_EQ(n.size(), 43u);
  EXPECT_TRUE(Base64UrlDecode(n).has_value());
  EXPECT_EQ(nonces.Current(start + 299), n);
  EXPECT_NE(nonces.Current(start + 300), n);
  EXPECT_NE(nonces.Current(start - 1), n);
  EXPECT_TRUE(nonces.Valid(n, start));
  EXPECT_TRUE(nonces.Valid(n, start + 599));
  EXPECT_FALSE(nonces.Valid(n, start + 600));
  EXPECT_FALSE(nonces.Valid(n, start - 1));  // a nonce of the next window is not yet valid
  EXPECT_FALSE(nonces.Valid("", start));
  EXPECT_FALSE(nonces.Valid(n.substr(1), start));
  // The window length is part of the nonce; other lengths do not share nonces.
  DpopNonces minute{std::string(kNonceSecret), 60};
  EXPECT_FALSE(minute.Valid(n, start));
  // Before the epoch windows stay contiguous.
  EXPECT_TRUE(nonces.Valid(nonces.Current(-1), 0));
  EXPECT_EQ(nonces.Current(-1), nonces.Current(-300));
  EXPECT_NE(nonces.Current(-1), nonces.Current(0));
}

TEST(DpopNonces, EmptySecretFailsClosed) {
  DpopNonces nonces{"", 300};
  EXPECT_FALSE(nonces.Valid(nonces.Current(kNow), kNow));
  DpopNonces zero_window{std::string(kNonceSecret), 0};  // treated as 1 second
  EXPECT_TRUE(zero_window.Valid(zero_window.Current(kNow), kNow + 1));
  EXPECT_FALSE(zero_window.Valid(zero_window.Current(kNow), kNow + 2));
}

// ---------------------------------------------------------------------------
// Replay

TEST(Dpop, ReplayedJti) {
  ReplayCache cache;
  DpopExpectations e = Expect();
  e.replay = &cache;
  std::string proof = Proof(Es256());
  EXPECT_EQ(Outcome(proof, e), "OK");
  EXPECT_EQ(Outcome(proof, e), "replayed_jti");
  // A new proof with the same jti and key is a replay too.
  json::Value claims = Claims();
  claims.Set("iat", json::Value::Int(kNow + 1));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "replayed_jti");
  // The same jti under another key is another identifier.
  EXPECT_EQ(Outcome(Proof(Key(Algorithm::kES256, 1)), e), "OK");
  EXPECT_EQ(Outcome(Proof(Key(Algorithm::kES256, 1)), e), "replayed_jti");
  EXPECT_EQ(Outcome(Proof(Es256(), Claims("jti-2")), e), "OK");
  EXPECT_EQ(cache.size(), 3u);

  // Remembered until iat + max_age + future_leeway = kNow + 360.
  const std::string key = Thumbprint(Es256()) + ":jti-1";
  EXPECT_FALSE(cache.Use(key, kNow + 360, kNow + 360));
  EXPECT_TRUE(cache.Use(key, kNow + 1000, kNow + 361));
}

TEST(Dpop, RefusedProofDoesNotConsumeJti) {
  ReplayCache cache;
  DpopExpectations e = Expect();
  e.replay = &cache;
  json::Value claims = Claims();
  claims.Set("htm", json::Value::String("GET"));
  EXPECT_EQ(Outcome(Proof(Es256(), claims), e), "htm_mismatch");
  DpopNonces nonces{std::string(kNonceSecret), 300};
  e.nonces = &nonces;
  EXPECT_EQ(Outcome(Proof(Es256()), e), "use_dpop_nonce");
  e.nonces = nullptr;
  e.jkt = "wrong";
  EXPECT_EQ(Outcome(Proof(Es256()), e), "jkt_mismatch");
  EXPECT_EQ(cache.size(), 0u);
  e.jkt.clear();
  EXPECT_EQ(Outcome(Proof(Es256()), e), "OK");
  EXPECT_EQ(cache.size(), 1u);
}

TEST(Dpop, FullReplayCacheFailsClosed) {
  ReplayCache cache(1);
  DpopExpectations e = Expect();
  e.replay = &cache;
  EXPECT_EQ(Outcome(Proof(Es256(), Claims("a")), e), "OK");
  EXPECT_EQ(Outcome(Proof(Es256(), Claims("b")), e), "replayed_jti");
}

TEST(ReplayCache, UseAndExpiry) {
  ReplayCache cache;
  EXPECT_TRUE(cache.Use("k", 100, 50));
  EXPECT_FALSE(cache.Use("k", 100, 60));
  EXPECT_FALSE(cache.Use("k", 500, 100));  // live through expires_at itself
  EXPECT_TRUE(cache.Use("k", 200, 101));   // forgotten after expiry
  EXPECT_FALSE(cache.Use("k", 200, 150));
  EXPECT_TRUE(cache.Use("other", 200, 150));
  // Already expired: accepted, nothing remembered.
  EXPECT_TRUE(cache.Use("old", 10, 150));
  EXPECT_TRUE(cache.Use("old", 10, 150));
  EXPECT_EQ(cache.size(), 2u);
  // Keys are compared as bytes.
  EXPECT_TRUE(cache.Use(std::string_view("k\0x", 3), 200, 150));
  EXPECT_FALSE(cache.Use(std::string_view("k\0x", 3), 200, 150));
}

TEST(ReplayCache, FullFailsClosedAndEvictsExpired) {
  ReplayCache cache(2);
  EXPECT_TRUE(cache.Use("a", 100, 0));
  EXPECT_TRUE(cache.Use("b", 200, 0));
  EXPECT_FALSE(cache.Use("c", 300, 50));   // full of live entries
  EXPECT_FALSE(cache.Use("c", 300, 100));  // "a" still live at its expiry second
  EXPECT_TRUE(cache.Use("c", 300, 101));   // "a" expired and dropped
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_FALSE(cache.Use("b", 300, 101));  // still a replay
  EXPECT_FALSE(cache.Use("d", 300, 150));
  EXPECT_TRUE(cache.Use("d", 400, 250));    // "b" dropped
  EXPECT_TRUE(cache.Use("e", 1500, 1000));  // everything else dropped
  EXPECT_EQ(cache.size(), 1u);

  ReplayCache none(0);
  EXPECT_FALSE(none.Use("a", 100, 0));
}

TEST(ReplayCache, ConcurrentUseHasOneWinner) {
  ReplayCache cache(1000);
  std::atomic<int> winners{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&cache, &winners, t] {
      for (int i = 0; i < 200; ++i) {
        if (cache.Use("key-" + std::to_string(i % 50), 1000 + i, 100 + t)) ++winners;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(winners.load(), 50);
  EXPECT_EQ(cache.size(), 50u);
}

// ---------------------------------------------------------------------------
// Thumbprints

TEST(JwkThumbprint, Rfc7638Example) {
  // RFC 7638 §3.1.
  json::Value jwk =
      J(std::string(R"({"kty":"RSA","n":")") +
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
        "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4"
        "QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
        "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
        "Cur-kEgU8awapJzKnqDKgw" +
        R"(","e":"AQAB","alg":"RS256","kid":"2011-04-29"})");
  absl::StatusOr<std::string> jkt = JwkThumbprint(jwk);
  ASSERT_TRUE(jkt.ok()) << jkt.status();
  EXPECT_EQ(*jkt, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
  // Optional members and member order do not change it.
  jwk.Erase("alg");
  jwk.Erase("kid");
  jwk.Set("use", json::Value::String("sig"));
  EXPECT_EQ(*JwkThumbprint(jwk), *jkt);
}

TEST(JwkThumbprint, EcAndOkpMembers) {
  json::Value ec = J(R"({"y":"Y","x":"X","kid":"k","crv":"P-256","kty":"EC"})");
  std::string want =
      Base64UrlEncode(crypto::Sha256(R"({"crv":"P-256","kty":"EC","x":"X","y":"Y"})"));
  EXPECT_EQ(*JwkThumbprint(ec), want);
  json::Value okp = J(R"({"x":"X","kty":"OKP","crv":"Ed25519","alg":"EdDSA"})");
  want = Base64UrlEncode(crypto::Sha256(R"({"crv":"Ed25519","kty":"OKP","x":"X"})"));
  EXPECT_EQ(*JwkThumbprint(okp), want);
  // Thumbprints of generated keys are stable and distinct.
  EXPECT_EQ(Thumbprint(Es256()), Thumbprint(Es256()));
  EXPECT_NE(Thumbprint(Es256()), Thumbprint(Key(Algorithm::kES256, 1)));
}

TEST(JwkThumbprint, RefusesIncompleteOrUnknown) {
  for (std::string_view text : {R"({"kty":"EC","crv":"P-256","x":"X"})", R"({"kty":"RSA","n":"N"})",
                                R"({"kty":"OKP","x":"X"})", R"({"kty":"oct","k":"K"})",
                                R"({"crv":"P-256","x":"X","y":"Y"})",
                                R"({"kty":"RSA","n":"N","e":65537})", R"(["kty"])", "null"}) {
    SCOPED_TRACE(text);
    absl::StatusOr<std::string> jkt = JwkThumbprint(J(text));
    ASSERT_FALSE(jkt.ok());
    EXPECT_EQ(CodeOf(jkt.status()), ErrorCode::kInvalidToken);
    EXPECT_EQ(DetailOf(jkt.status()), "bad_jwk");
  }
}

}  // namespace
}  // namespace fhirward::jose
