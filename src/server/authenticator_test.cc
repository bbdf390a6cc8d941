#include "server/authenticator.h"

#include <openssl/hmac.h>

#include "common/encoding.h"
#include "common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "json/value.h"

namespace fhirward::server {
namespace {

class FixedClock final : public Clock {
 public:
  std::chrono::system_clock::time_point Now() const override { return now; }
  std::chrono::system_clock::time_point now = std::chrono::system_clock::now();
};

json::Value Claims(const std::string& iss, const std::string& aud, int64_t now, int64_t ttl) {
  json::Value c = json::Value::MakeObject();
  c.Set("iss", json::Value::String(iss));
  c.Set("aud", json::Value::String(aud));
  c.Set("sub", json::Value::String("u1"));
  c.Set("client_id", json::Value::String("app"));
  c.Set("scope", json::Value::String("patient/Observation.rs launch/patient"));
  c.Set("patient", json::Value::String("p1"));
  c.Set("iat", json::Value::Int(now));
  c.Set("exp", json::Value::Int(now + ttl));
  return c;
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    own_ = *jose::SigningKey::Generate(jose::Algorithm::kES256, "own");
    ext_ = *jose::SigningKey::Generate(jose::Algorithm::kRS256, "ext1");
    AuthenticatorOptions o;
    IssuerTrust a;
    a.issuer = "https://own";
    a.audiences = {"https://fhir"};
    a.keys.Add(own_.public_key());
    a.required_typ = "at+jwt";
    IssuerTrust b;
    b.issuer = "https://idp";
    b.audiences = {"https://fhir"};
    b.keys.Add(ext_.public_key());
    o.issuers = {a, b};
    auth_ = std::make_unique<Authenticator>(std::move(o), &clock_);
  }
  int64_t Now() const { return clock_.NowSeconds(); }
  std::string Sign(const jose::SigningKey& k, const std::string& iss, int64_t ttl = 300,
                   std::string_view typ = "at+jwt") {
    return *jose::SignCompact(k, Claims(iss, "https://fhir", Now(), ttl), typ);
  }

  FixedClock clock_;
  jose::SigningKey own_, ext_;
  std::unique_ptr<Authenticator> auth_;
};

TEST_F(AuthenticatorTest, RolesAndBreakGlassClaims) {
  auto with = [&](const char* name, json::Value v) {
    json::Value c = Claims("https://own", "https://fhir", Now(), 300);
    c.Set(name, std::move(v));
    return "Bearer " + *jose::SignCompact(own_, c, "at+jwt");
  };
  json::Value list = json::Value::MakeArray();
  list.Push(json::Value::String("clinician"));
  list.Push(json::Value::String("auditor"));
  auto p = auth_->Authenticate(with("roles", std::move(list)));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE((*p)->has_roles_claim);
  EXPECT_EQ((*p)->roles, (std::vector<std::string>{"clinician", "auditor"}));
  p = auth_->Authenticate(with("roles", json::Value::String(" clinician  admin ")));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->roles, (std::vector<std::string>{"clinician", "admin"}));
  p = auth_->Authenticate("Bearer " + Sign(own_, "https://own"));
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE((*p)->has_roles_claim);

  // Not a list or a string, or more than 32 roles: the token is refused.
  EXPECT_EQ(CodeOf(auth_->Authenticate(with("roles", json::Value::Int(1))).status()),
            ErrorCode::kInvalidToken);
  json::Value many = json::Value::MakeArray();
  for (int i = 0; i < 33; ++i) many.Push(json::Value::String("r" + std::to_string(i)));
  EXPECT_EQ(CodeOf(auth_->Authenticate(with("roles", std::move(many))).status()),
            ErrorCode::kInvalidToken);

  p = auth_->Authenticate(with("break_glass_reason", json::Value::String("Unconscious in the ED")));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->break_glass_reason, "Unconscious in the ED");
  EXPECT_EQ(CodeOf(auth_
                       ->Authenticate(
                           with("break_glass_reason", json::Value::String(std::string(501, 'x'))))
                       .status()),
            ErrorCode::kInvalidToken);
  EXPECT_EQ(
      CodeOf(auth_->Authenticate(with("break_glass_reason", json::Value::String("a\nb"))).status()),
      ErrorCode::kInvalidToken);
}

TEST_F(AuthenticatorTest, OwnAndExternalIssuers) {
  auto p = auth_->Authenticate("Bearer " + Sign(own_, "https://own"));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->subject, "u1");
  EXPECT_EQ((*p)->client_id, "app");
  EXPECT_EQ((*p)->patient, "p1");
  EXPECT_EQ((*p)->scopes.size(), 1u);
  auto q = auth_->Authenticate("bearer " + Sign(ext_, "https://idp", 300, "JWT"));
  EXPECT_TRUE(q.ok()) << q.status();
}

TEST_F(AuthenticatorTest, RefusesWrongIssuerKeyTypAndScheme) {
  // A key of one issuer cannot sign for another.
  EXPECT_EQ(CodeOf(auth_->Authenticate("Bearer " + Sign(ext_, "https://own")).status()),
            ErrorCode::kInvalidToken);
  EXPECT_EQ(CodeOf(auth_->Authenticate("Bearer " + Sign(own_, "https://nobody")).status()),
            ErrorCode::kInvalidToken);
  EXPECT_EQ(CodeOf(auth_->Authenticate("Bearer " + Sign(own_, "https://own", 300, "JWT")).status()),
            ErrorCode::kInvalidToken);
  EXPECT_EQ(CodeOf(auth_->Authenticate("Basic dXNlcjpwdw==").status()), ErrorCode::kMissingToken);
  EXPECT_EQ(CodeOf(auth_->Authenticate("Bearer ").status()), ErrorCode::kMissingToken);
}

TEST_F(AuthenticatorTest, RefusesHs256KeyedWithThePublicKey) {
  // Algorithm confusion: HMAC keyed with the RSA public key's JWK text.
  std::string header = Base64UrlEncode(R"({"alg":"HS256","typ":"JWT","kid":"ext1"})");
  std::string payload =
      Base64UrlEncode(json::Write(Claims("https://idp", "https://fhir", Now(), 300)));
  std::string input = header + "." + payload;
  std::string key = json::Write(ext_.public_key().ToJwk());
  unsigned char mac[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
  std::string token = input + "." + Base64UrlEncode(std::string(reinterpret_cast<char*>(mac), len));
  EXPECT_EQ(CodeOf(auth_->Authenticate("Bearer " + token).status()), ErrorCode::kInvalidToken);
}

TEST_F(AuthenticatorTest, CachedTokenStillExpires) {
  std::string t = Sign(own_, "https://own", 60);
  ASSERT_TRUE(auth_->Authenticate("Bearer " + t).ok());
  ASSERT_TRUE(auth_->Authenticate("Bearer " + t).ok());
  clock_.now += std::chrono::seconds(120);
  EXPECT_EQ(CodeOf(auth_->Authenticate("Bearer " + t).status()), ErrorCode::kInvalidToken);
}

TEST_F(AuthenticatorTest, KeyRotationThroughSetKeysAndUnknownKidCallback) {
  jose::SigningKey next = *jose::SigningKey::Generate(jose::Algorithm::kRS256, "ext2");
  std::string asked;
  auth_->OnUnknownKid([&](const std::string& iss) { asked = iss; });
  std::string t = Sign(next, "https://idp");
  EXPECT_FALSE(auth_->Authenticate("Bearer " + t).ok());
  EXPECT_EQ(asked, "https://idp");
  jose::KeySet ks;
  ks.Add(next.public_key());
  auth_->SetKeys("https://idp", std::move(ks));
  EXPECT_TRUE(auth_->Authenticate("Bearer " + t).ok());
  // The retired key no longer verifies.
  EXPECT_FALSE(auth_->Authenticate("Bearer " + Sign(ext_, "https://idp", 200)).ok());
}

}  // namespace
}  // namespace fhirward::server
