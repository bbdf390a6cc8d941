// Resource-server checks that run on every request: revocation of our own
// tokens and sender constraints (DPoP, mTLS), including on cache hits.
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "gtest/gtest.h"
#include "jose/dpop.h"
#include "jose/jws.h"
#include "json/value.h"
#include "oauth/oauth_store.h"
#include "oauth/revocation.h"
#include "server/authenticator.h"

namespace fhirward::server {
namespace {

constexpr char kOwn[] = "https://fhir.example.org/fhir";
constexpr char kExt[] = "https://idp.example";
constexpr char kUrl[] = "https://fhir.example.org/fhir/Observation";

class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t now) : now_(now) {}
  std::chrono::system_clock::time_point Now() const override {
    return std::chrono::system_clock::time_point(std::chrono::seconds(now_.load()));
  }
  void Advance(int64_t s) { now_ += s; }

 private:
  std::atomic<int64_t> now_;
};

json::Value ProofJwk(const jose::SigningKey& key) {
  json::Value jwk = key.public_key().ToJwk();
  jwk.Erase("kid");
  jwk.Erase("alg");
  jwk.Erase("use");
  return jwk;
}

std::string Thumbprint(const jose::SigningKey& key) {
  auto t = jose::JwkThumbprint(ProofJwk(key));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : std::string();
}

struct ProofSpec {
  std::string htm = "GET";
  std::string htu = kUrl;
  int64_t iat = 0;
  std::string ath_token;  // the token `ath` is computed from; empty: no ath
  std::string jti;        // empty: random
  std::string nonce;
};

std::string Proof(const jose::SigningKey& key, const ProofSpec& p) {
  json::Value h = json::Value::MakeObject();
  h.Set("typ", json::Value::String("dpop+jwt"));
  h.Set("alg", json::Value::String(std::string(jose::AlgorithmName(key.alg()))));
  h.Set("jwk", ProofJwk(key));
  json::Value c = json::Value::MakeObject();
  c.Set("jti", json::Value::String(p.jti.empty() ? RandomUuid() : p.jti));
  c.Set("htm", json::Value::String(p.htm));
  c.Set("htu", json::Value::String(p.htu));
  c.Set("iat", json::Value::Int(p.iat));
  if (!p.ath_token.empty()) {
    c.Set("ath", json::Value::String(Base64UrlEncode(crypto::Sha256(p.ath_token))));
  }
  if (!p.nonce.empty()) c.Set("nonce", json::Value::String(p.nonce));
  std::string input = Base64UrlEncode(json::Write(h)) + "." + Base64UrlEncode(json::Write(c));
  auto sig = key.Sign(input);
  EXPECT_TRUE(sig.ok()) << sig.status();
  return input + "." + Base64UrlEncode(sig.ok() ? *sig : std::string());
}

class AuthenticatorDpopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    own_ = *jose::SigningKey::Generate(jose::Algorithm::kES256, "own-1");
    ext_ = *jose::SigningKey::Generate(jose::Algorithm::kES256, "ext-1");
    client_ = *jose::SigningKey::Generate(jose::Algorithm::kES256, "client");
    other_client_ = *jose::SigningKey::Generate(jose::Algorithm::kES256, "other");
    Make();
  }

  void Make(const jose::DpopNonces* nonces = nullptr, bool with_replay = true) {
    AuthenticatorOptions o;
    server::IssuerTrust own;
    own.issuer = kOwn;
    own.audiences = {kOwn};
    own.keys.Add(own_.public_key());
    own.required_typ = "at+jwt";
    own.own = true;
    server::IssuerTrust ext;
    ext.issuer = kExt;
    ext.audiences = {kOwn};
    ext.keys.Add(ext_.public_key());
    o.issuers = {own, ext};
    o.revocations = &revocations_;
    o.dpop_replay = with_replay ? &replay_ : nullptr;
    o.dpop_nonces = nonces;
    auth_ = std::make_unique<Authenticator>(std::move(o), &clock_);
  }

  int64_t Now() const { return clock_.NowSeconds(); }

  json::Value Claims(const std::string& iss, const std::string& jti) const {
    json::Value c = json::Value::MakeObject();
    c.Set("iss", json::Value::String(iss));
    c.Set("aud", json::Value::String(kOwn));
    c.Set("sub", json::Value::String("alice"));
    c.Set("client_id", json::Value::String("app"));
    c.Set("scope", json::Value::String("patient/Observation.rs"));
    c.Set("patient", json::Value::String("p1"));
    c.Set("iat", json::Value::Int(Now()));
    c.Set("exp", json::Value::Int(Now() + 300));
    if (!jti.empty()) c.Set("jti", json::Value::String(jti));
    return c;
  }

  std::string OwnToken(const std::string& jti, json::Value cnf = json::Value()) const {
    json::Value c = Claims(kOwn, jti);
    if (!cnf.is_null()) c.Set("cnf", std::move(cnf));
    return *jose::SignCompact(own_, c, "at+jwt");
  }

  std::string BoundToken(const std::string& jti) const {
    json::Value cnf = json::Value::MakeObject();
    cnf.Set("jkt", json::Value::String(Thumbprint(client_)));
    return OwnToken(jti, std::move(cnf));
  }

  absl::Status Call(const std::string& authorization, std::vector<std::string> proofs = {},
                    std::string method = "GET", std::string url = kUrl, std::string cert = "") {
    AuthInput in;
    in.authorization = authorization;
    for (const auto& p : proofs) in.dpop.push_back(p);
    in.method = method;
    in.url = url;
    in.client_cert_der = cert;
    auto r = auth_->Authenticate(in);
    if (r.ok()) {
      EXPECT_NE(*r, nullptr);
      if (*r) EXPECT_EQ((*r)->subject, "alice");
    }
    return r.status();
  }

  ProofSpec Spec(const std::string& token) const {
    ProofSpec s;
    s.iat = Now();
    s.ath_token = token;
    return s;
  }

  FakeClock clock_{1'700'000'000};
  jose::SigningKey own_, ext_, client_, other_client_;
  oauth::RevocationList revocations_;
  jose::ReplayCache replay_;
  std::unique_ptr<Authenticator> auth_;
};

void ExpectDetail(const absl::Status& s, const std::string& detail) {
  EXPECT_EQ(CodeOf(s), ErrorCode::kInvalidToken) << s;
  EXPECT_EQ(DetailOf(s), detail) << s;
}

TEST_F(AuthenticatorDpopTest, RevokedJtiFailsOnTheNextCallEvenWhenCached) {
  const std::string t = OwnToken("jti-1");
  ASSERT_TRUE(Call("Bearer " + t).ok());
  EXPECT_TRUE(auth_->IsCached("Bearer " + t));
  ASSERT_TRUE(Call("Bearer " + t).ok());
  revocations_.Add("jti-1", Now() + 300);
  ExpectDetail(Call("Bearer " + t), "revoked");
  EXPECT_TRUE(auth_->IsCached("Bearer " + t)) << "the cache still holds it; the check is per call";
  ExpectDetail(Call("Bearer " + t), "revoked");
  // Other tokens are unaffected.
  EXPECT_TRUE(Call("Bearer " + OwnToken("jti-2")).ok());
  // The revocation list applies to our own issuer only.
  const std::string ext = *jose::SignCompact(ext_, Claims(kExt, "jti-1"), "JWT");
  EXPECT_TRUE(Call("Bearer " + ext).ok());
  // The single-argument overload runs the same checks.
  EXPECT_EQ(DetailOf(auth_->Authenticate("Bearer " + t).status()), "revoked");
}

TEST_F(AuthenticatorDpopTest, RevocationSyncedFromTheStoreApplies) {
  // Another node revoked the grant in the shared store; Sync() brings it here.
  std::string tmpl = ::testing::TempDir() + "fw-authn-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  {
    auto store = oauth::OAuthStore::Open(tmpl + "/oauth.db");
    ASSERT_TRUE(store.ok()) << store.status();
    oauth::GrantData g;
    g.client_id = "app";
    g.username = "alice";
    auto gid = (*store)->AddGrant(g, "code-hash", Now(), Now() + 1000);
    ASSERT_TRUE(gid.ok());
    ASSERT_TRUE((*store)->AddAccessToken("jti-sync", *gid, Now() + 300).ok());
    const std::string t = OwnToken("jti-sync");
    ASSERT_TRUE(Call("Bearer " + t).ok());
    ASSERT_TRUE((*store)->RevokeGrant(*gid, Now()).ok());
    EXPECT_TRUE(Call("Bearer " + t).ok()) << "not synced yet";
    ASSERT_TRUE(revocations_.Sync(**store, Now()).ok());
    ExpectDetail(Call("Bearer " + t), "revoked");
  }
  std::error_code ec;
  std::filesystem::remove_all(tmpl, ec);
}

TEST_F(AuthenticatorDpopTest, OwnTokensNeedAJti) {
  ExpectDetail(Call("Bearer " + OwnToken("")), "missing_jti");
  // External issuers' tokens need none.
  EXPECT_TRUE(Call("Bearer " + *jose::SignCompact(ext_, Claims(kExt, ""), "JWT")).ok());
}

TEST_F(AuthenticatorDpopTest, BoundTokenNeedsDpopSchemeAndAValidProof) {
  const std::string t = BoundToken("jti-b");
  // Sent as Bearer: refused, even with a proof.
  ExpectDetail(Call("Bearer " + t), "dpop_required");
  ExpectDetail(Call("Bearer " + t, {Proof(client_, Spec(t))}), "dpop_required");
  // DPoP scheme without a proof, or with two.
  ExpectDetail(Call("DPoP " + t), "dpop_proof:missing");
  ExpectDetail(Call("DPoP " + t, {Proof(client_, Spec(t)), Proof(client_, Spec(t))}),
               "dpop_proof:missing");
  // A valid proof.
  EXPECT_TRUE(Call("DPoP " + t, {Proof(client_, Spec(t))}).ok());
  EXPECT_TRUE(auth_->IsCached("DPoP " + t));
  EXPECT_TRUE(Call("dpop " + t, {Proof(client_, Spec(t))}).ok()) << "scheme is case-insensitive";

  // Every later call is a cache hit and still checks the proof.
  ProofSpec no_ath = Spec(t);
  no_ath.ath_token.clear();
  ExpectDetail(Call("DPoP " + t, {Proof(client_, no_ath)}), "dpop_proof:ath_mismatch");
  ExpectDetail(Call("DPoP " + t, {Proof(client_, Spec("another-token"))}),
               "dpop_proof:ath_mismatch");
  ProofSpec wrong_htu = Spec(t);
  wrong_htu.htu = "https://fhir.example.org/fhir/Patient";
  ExpectDetail(Call("DPoP " + t, {Proof(client_, wrong_htu)}), "dpop_proof:htu_mismatch");
  ProofSpec wrong_htm = Spec(t);
  wrong_htm.htm = "POST";
  ExpectDetail(Call("DPoP " + t, {Proof(client_, wrong_htm)}), "dpop_proof:htm_mismatch");
  ExpectDetail(Call("DPoP " + t, {Proof(client_, Spec(t))}, "DELETE"), "dpop_proof:htm_mismatch");
  ExpectDetail(Call("DPoP " + t, {Proof(other_client_, Spec(t))}), "dpop_proof:jkt_mismatch");
  ProofSpec stale = Spec(t);
  stale.iat = Now() - 301;
  ExpectDetail(Call("DPoP " + t, {Proof(client_, stale)}), "dpop_proof:stale_proof");
  ProofSpec future = Spec(t);
  future.iat = Now() + 61;
  ExpectDetail(Call("DPoP " + t, {Proof(client_, future)}), "dpop_proof:future_proof");
  ExpectDetail(Call("DPoP " + t, {"not.a.proof"}), "dpop_proof:malformed");

  // A replayed proof (same jti) fails.
  ProofSpec once = Spec(t);
  once.jti = "proof-jti-1";
  const std::string proof = Proof(client_, once);
  EXPECT_TRUE(Call("DPoP " + t, {proof}).ok());
  ExpectDetail(Call("DPoP " + t, {proof}), "dpop_proof:replayed_jti");
  // A query string is not part of htu.
  EXPECT_TRUE(
      Call("DPoP " + t, {Proof(client_, Spec(t))}, "GET", std::string(kUrl) + "?code=1234").ok());

  // Revocation wins over a valid proof.
  revocations_.Add("jti-b", Now() + 300);
  ExpectDetail(Call("DPoP " + t, {Proof(client_, Spec(t))}), "revoked");
}

TEST_F(AuthenticatorDpopTest, UnboundTokenUnderDpopSchemeIsRefused) {
  const std::string t = OwnToken("jti-u");
  ExpectDetail(Call("DPoP " + t, {Proof(client_, Spec(t))}), "not_dpop_bound");
  ExpectDetail(Call("DPoP " + t), "not_dpop_bound");
  EXPECT_TRUE(Call("Bearer " + t).ok());
  // Also on a cache hit.
  EXPECT_TRUE(auth_->IsCached("DPoP " + t));
  ExpectDetail(Call("DPoP " + t, {Proof(client_, Spec(t))}), "not_dpop_bound");
}

TEST_F(AuthenticatorDpopTest, NoncesWhenConfiguredAndNoReplayCacheFailsClosed) {
  jose::DpopNonces nonces(std::string(32, 'x'));
  Make(&nonces);
  const std::string t = BoundToken("jti-n");
  ExpectDetail(Call("DPoP " + t, {Proof(client_, Spec(t))}), "use_dpop_nonce");
  ProofSpec with_nonce = Spec(t);
  with_nonce.nonce = nonces.Current(Now());
  EXPECT_TRUE(Call("DPoP " + t, {Proof(client_, with_nonce)}).ok());

  Make(nullptr, /*with_replay=*/false);
  ExpectDetail(Call("DPoP " + t, {Proof(client_, Spec(t))}), "dpop_proof:unsupported");
}

TEST_F(AuthenticatorDpopTest, CertificateBoundTokenNeedsTheSameCertificate) {
  const std::string der = std::string("\x30\x82\x01\x0a", 4) + "fake certificate DER bytes";
  json::Value cnf = json::Value::MakeObject();
  cnf.Set("x5t#S256", json::Value::String(Base64UrlEncode(crypto::Sha256(der))));
  const std::string t = OwnToken("jti-x", std::move(cnf));
  ExpectDetail(Call("Bearer " + t), "certificate_mismatch");
  ExpectDetail(Call("Bearer " + t, {}, "GET", kUrl, "another certificate"), "certificate_mismatch");
  EXPECT_TRUE(Call("Bearer " + t, {}, "GET", kUrl, der).ok());
  EXPECT_TRUE(auth_->IsCached("Bearer " + t));
  // Cache hit: the certificate is still checked.
  ExpectDetail(Call("Bearer " + t), "certificate_mismatch");
  EXPECT_TRUE(Call("Bearer " + t, {}, "GET", kUrl, der).ok());
  // Not a DPoP token.
  ExpectDetail(Call("DPoP " + t, {Proof(client_, Spec(t))}, "GET", kUrl, der), "not_dpop_bound");
}

TEST_F(AuthenticatorDpopTest, UnsupportedOrMalformedCnfIsRefused) {
  json::Value cnf = json::Value::MakeObject();
  cnf.Set("kid", json::Value::String("some-key"));
  ExpectDetail(Call("Bearer " + OwnToken("jti-c1", std::move(cnf))), "unsupported_cnf");
  ExpectDetail(Call("Bearer " + OwnToken("jti-c2", json::Value::MakeObject())), "unsupported_cnf");
  ExpectDetail(Call("Bearer " + OwnToken("jti-c3", json::Value::String("jkt"))), "bad_cnf");
  // A refused token is not cached.
  json::Value cnf2 = json::Value::MakeObject();
  cnf2.Set("kid", json::Value::String("k"));
  const std::string t = OwnToken("jti-c4", std::move(cnf2));
  EXPECT_FALSE(Call("Bearer " + t).ok());
  EXPECT_FALSE(auth_->IsCached("Bearer " + t));
}

TEST_F(AuthenticatorDpopTest, CacheStillExpiresForBoundTokens) {
  const std::string t = BoundToken("jti-e");
  ASSERT_TRUE(Call("DPoP " + t, {Proof(client_, Spec(t))}).ok());
  EXPECT_TRUE(auth_->IsCached("DPoP " + t));
  clock_.Advance(300 + 31);  // exp + leeway
  EXPECT_FALSE(auth_->IsCached("DPoP " + t));
  EXPECT_EQ(CodeOf(Call("DPoP " + t, {Proof(client_, Spec(t))})), ErrorCode::kInvalidToken);
  EXPECT_EQ(CodeOf(Call("Basic abc")), ErrorCode::kMissingToken);
  EXPECT_EQ(CodeOf(Call("DPoP ")), ErrorCode::kMissingToken);
}

}  // namespace
}  // namespace fhirward::server
