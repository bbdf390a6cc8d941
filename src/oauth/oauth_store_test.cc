#include "oauth/oauth_store.h"

#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "gtest/gtest.h"

namespace fhirward::oauth {
namespace {

constexpr int64_t kNow = 1'700'000'000;

class StoreTempDir {
 public:
  StoreTempDir() {
    std::string tmpl = ::testing::TempDir() + "fw-oauth-store-XXXXXX";
    char* p = mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path_ = tmpl;
  }
  ~StoreTempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

User MakeUser(const std::string& name) {
  User u;
  u.username = name;
  u.password_hash = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA";
  u.fhir_user = "Practitioner/" + name;
  u.roles = "doctor nurse";
  u.created = kNow;
  return u;
}

Client FullClient() {
  Client c;
  c.client_id = "full-client";
  c.name = "A full client";
  c.auth = ClientAuth::kPrivateKeyJwt;
  c.secret_hash = "cafebabe";
  c.previous_secret_hash = "deadbeef";
  c.previous_secret_expires = kNow + 10;
  c.secret_expires = kNow + 1000;
  c.jwks = R"({"keys":[]})";
  c.jwks_uri = "https://app.example/jwks";
  c.tls_subject_dn = "CN=app,O=Example";
  c.redirect_uris = {"https://app.example/cb", "http://127.0.0.1/cb", "https://app.example/cb2"};
  c.scope = "openid fhirUser patient/*.rs";
  c.grant_types = {"authorization_code", "refresh_token", "client_credentials"};
  c.rotate_refresh = false;
  c.sender_constraint = "dpop";
  c.id_token_alg = "ES256";
  c.disabled = true;
  c.created = kNow - 5;
  return c;
}

constexpr const char* kClient = "app";

GrantData MakeGrant() {
  GrantData g;
  g.client_id = "app";
  g.username = "alice";
  g.fhir_user = "Patient/p1";
  g.scope = "openid patient/*.rs offline_access";
  g.patient = "p1";
  g.encounter = "e1";
  g.purpose_of_use = "TREAT ETREAT";
  g.nonce = "n-0S6";
  g.auth_time = kNow - 30;
  g.dpop_jkt = "jkt-abc";
  return g;
}

class OAuthStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = OAuthStore::Open(dir_.File("oauth.db"));
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }
  User GetUser(const std::string& name) {
    auto u = store_->GetUser(name);
    EXPECT_TRUE(u.ok()) << u.status();
    EXPECT_TRUE(u.ok() && u->has_value());
    return u.ok() && u->has_value() ? **u : User{};
  }

  StoreTempDir dir_;
  std::unique_ptr<OAuthStore> store_;
};

// --- users --------------------------------------------------------------------

TEST_F(OAuthStoreTest, AddGetUserAndDuplicateIsVersionConflict) {
  User u = MakeUser("alice");
  u.totp_secret_wrapped = std::string("wr\0pped\xff", 8);
  ASSERT_TRUE(store_->AddUser(u).ok());
  User got = GetUser("alice");
  EXPECT_EQ(got.username, "alice");
  EXPECT_EQ(got.password_hash, u.password_hash);
  EXPECT_EQ(got.fhir_user, "Practitioner/alice");
  EXPECT_EQ(got.roles, "doctor nurse");
  EXPECT_EQ(got.totp_secret_wrapped, u.totp_secret_wrapped);
  EXPECT_EQ(got.totp_last_step, 0);
  EXPECT_FALSE(got.disabled);
  EXPECT_EQ(got.failed_logins, 0);
  EXPECT_EQ(got.locked_until, 0);
  EXPECT_EQ(got.created, kNow);

  User dup = MakeUser("alice");
  dup.fhir_user = "Practitioner/other";
  absl::Status st = store_->AddUser(dup);
  EXPECT_EQ(CodeOf(st), ErrorCode::kVersionConflict) << st;
  EXPECT_EQ(GetUser("alice").fhir_user, "Practitioner/alice");  // unchanged

  auto none = store_->GetUser("bob");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  ASSERT_TRUE(store_->AddUser(MakeUser("bob")).ok());
  auto all = store_->ListUsers();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].username, "alice");
  EXPECT_EQ((*all)[1].username, "bob");
}

TEST_F(OAuthStoreTest, DisableSetPasswordAndUnknownUsers) {
  ASSERT_TRUE(store_->AddUser(MakeUser("alice")).ok());
  ASSERT_TRUE(store_->SetUserDisabled("alice", true).ok());
  EXPECT_TRUE(GetUser("alice").disabled);
  ASSERT_TRUE(store_->SetUserDisabled("alice", false).ok());
  EXPECT_FALSE(GetUser("alice").disabled);
  EXPECT_EQ(CodeOf(store_->SetUserDisabled("nobody", true)), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf(store_->SetPassword("nobody", "x")), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf(store_->SetTotp("nobody", "x")), ErrorCode::kNotFound);

  // A new password clears the failure count and the lock.
  ASSERT_TRUE(store_->RecordLoginFailure("alice", kNow, 1, 100).ok());
  EXPECT_GT(GetUser("alice").locked_until, kNow);
  ASSERT_TRUE(store_->SetPassword("alice", "new-hash").ok());
  User u = GetUser("alice");
  EXPECT_EQ(u.password_hash, "new-hash");
  EXPECT_EQ(u.failed_logins, 0);
  EXPECT_EQ(u.locked_until, 0);
}

TEST_F(OAuthStoreTest, LoginFailuresCountAndLockAtThreshold) {
  ASSERT_TRUE(store_->AddUser(MakeUser("alice")).ok());
  for (int64_t i = 1; i <= 2; ++i) {
    auto n = store_->RecordLoginFailure("alice", kNow + i, 3, 300);
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, i);
    EXPECT_EQ(GetUser("alice").locked_until, 0) << "not locked before the threshold";
  }
  auto third = store_->RecordLoginFailure("alice", kNow + 3, 3, 300);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(*third, 3);
  User u = GetUser("alice");
  EXPECT_EQ(u.failed_logins, 3);
  EXPECT_EQ(u.locked_until, kNow + 3 + 300);

  // A failure after the lock expired starts a new count (and unlocks).
  const int64_t later = kNow + 3 + 300;  // exactly at the end of the lock
  auto restart = store_->RecordLoginFailure("alice", later, 3, 300);
  ASSERT_TRUE(restart.ok());
  EXPECT_EQ(*restart, 1);
  u = GetUser("alice");
  EXPECT_EQ(u.failed_logins, 1);
  EXPECT_EQ(u.locked_until, 0);

  // Success resets.
  ASSERT_TRUE(store_->RecordLoginFailure("alice", later + 1, 3, 300).ok());
  ASSERT_TRUE(store_->RecordLoginSuccess("alice").ok());
  u = GetUser("alice");
  EXPECT_EQ(u.failed_logins, 0);
  EXPECT_EQ(u.locked_until, 0);

  // Unknown users: nothing recorded.
  auto unknown = store_->RecordLoginFailure("nobody", kNow, 3, 300);
  ASSERT_TRUE(unknown.ok());
  EXPECT_EQ(*unknown, 0);
}

TEST_F(OAuthStoreTest, UseTotpStepRefusesNonIncreasingSteps) {
  ASSERT_TRUE(store_->AddUser(MakeUser("alice")).ok());
  auto use = [&](int64_t step) {
    auto r = store_->UseTotpStep("alice", step);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && *r;
  };
  EXPECT_TRUE(use(56'666'666));
  EXPECT_FALSE(use(56'666'666)) << "same step twice";
  EXPECT_FALSE(use(56'666'665)) << "an older step";
  EXPECT_TRUE(use(56'666'667));
  EXPECT_EQ(GetUser("alice").totp_last_step, 56'666'667);
  auto unknown = store_->UseTotpStep("nobody", 99'999'999);
  ASSERT_TRUE(unknown.ok());
  EXPECT_FALSE(*unknown);

  // Re-enrolment resets the last step.
  ASSERT_TRUE(store_->SetTotp("alice", "wrapped-2").ok());
  EXPECT_EQ(GetUser("alice").totp_last_step, 0);
  EXPECT_EQ(GetUser("alice").totp_secret_wrapped, "wrapped-2");
  EXPECT_TRUE(use(1));
}

// --- clients ------------------------------------------------------------------

TEST_F(OAuthStoreTest, ClientRoundTripsEveryField) {
  const Client c = FullClient();
  ASSERT_TRUE(store_->AddClient(c).ok());
  auto got = store_->GetClient(c.client_id);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->has_value());
  const Client& g = **got;
  EXPECT_EQ(g.client_id, c.client_id);
  EXPECT_EQ(g.name, c.name);
  EXPECT_EQ(g.auth, ClientAuth::kPrivateKeyJwt);
  EXPECT_EQ(g.secret_hash, c.secret_hash);
  EXPECT_EQ(g.previous_secret_hash, c.previous_secret_hash);
  EXPECT_EQ(g.previous_secret_expires, c.previous_secret_expires);
  EXPECT_EQ(g.secret_expires, c.secret_expires);
  EXPECT_EQ(g.jwks, c.jwks);
  EXPECT_EQ(g.jwks_uri, c.jwks_uri);
  EXPECT_EQ(g.tls_subject_dn, c.tls_subject_dn);
  EXPECT_EQ(g.redirect_uris, c.redirect_uris);
  EXPECT_EQ(g.scope, c.scope);
  EXPECT_EQ(g.grant_types, c.grant_types);
  EXPECT_EQ(g.rotate_refresh, false);
  EXPECT_EQ(g.sender_constraint, "dpop");
  EXPECT_EQ(g.id_token_alg, "ES256");
  EXPECT_EQ(g.disabled, true);
  EXPECT_EQ(g.created, c.created);
  EXPECT_TRUE(g.HasGrant("client_credentials"));
  EXPECT_FALSE(g.HasGrant("password"));
  EXPECT_FALSE(g.is_public());

  // Defaults and empty lists round-trip too.
  Client pub;
  pub.client_id = "pub";
  pub.created = kNow;
  ASSERT_TRUE(store_->AddClient(pub).ok());
  auto p = store_->GetClient("pub");
  ASSERT_TRUE(p.ok() && p->has_value());
  EXPECT_TRUE((*p)->is_public());
  EXPECT_TRUE((*p)->redirect_uris.empty());
  EXPECT_TRUE((*p)->grant_types.empty());
  EXPECT_TRUE((*p)->rotate_refresh);
  EXPECT_EQ((*p)->id_token_alg, "RS256");
  EXPECT_FALSE((*p)->disabled);

  EXPECT_EQ(CodeOf(store_->AddClient(pub)), ErrorCode::kVersionConflict);
  auto list = store_->ListClients();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].client_id, "full-client");
  EXPECT_EQ((*list)[1].client_id, "pub");

  ASSERT_TRUE(store_->SetClientDisabled("full-client", false).ok());
  EXPECT_FALSE((*store_->GetClient("full-client"))->disabled);
  EXPECT_EQ(CodeOf(store_->SetClientDisabled("nobody", true)), ErrorCode::kNotFound);
  auto none = store_->GetClient("nobody");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_F(OAuthStoreTest, ClientAuthNamesRoundTrip) {
  for (ClientAuth a : {ClientAuth::kNone, ClientAuth::kSecretBasic, ClientAuth::kPrivateKeyJwt,
                       ClientAuth::kTlsClientAuth}) {
    EXPECT_EQ(ClientAuthFromName(ClientAuthName(a)), a);
  }
  EXPECT_EQ(ClientAuthName(ClientAuth::kSecretBasic), "client_secret_basic");
  EXPECT_FALSE(ClientAuthFromName("client_secret_post").has_value());
}

TEST_F(OAuthStoreTest, RotateSecretKeepsPreviousHashWithGraceExpiry) {
  Client c;
  c.client_id = "conf";
  c.auth = ClientAuth::kSecretBasic;
  c.secret_hash = "hash-1";
  c.created = kNow;
  ASSERT_TRUE(store_->AddClient(c).ok());
  ASSERT_TRUE(store_->RotateSecret("conf", "hash-2", kNow, 3600, kNow + 86400).ok());
  auto g = store_->GetClient("conf");
  ASSERT_TRUE(g.ok() && g->has_value());
  EXPECT_EQ((*g)->secret_hash, "hash-2");
  EXPECT_EQ((*g)->previous_secret_hash, "hash-1");
  EXPECT_EQ((*g)->previous_secret_expires, kNow + 3600);
  EXPECT_EQ((*g)->secret_expires, kNow + 86400);

  // No grace: the previous secret has no validity (expires 0 means never accepted).
  ASSERT_TRUE(store_->RotateSecret("conf", "hash-3", kNow + 10, 0, 0).ok());
  g = store_->GetClient("conf");
  EXPECT_EQ((*g)->secret_hash, "hash-3");
  EXPECT_EQ((*g)->previous_secret_hash, "hash-2");
  EXPECT_EQ((*g)->previous_secret_expires, 0);
  EXPECT_EQ((*g)->secret_expires, 0);

  // Only client_secret_basic clients have secrets to rotate.
  Client pub;
  pub.client_id = "pub";
  pub.created = kNow;
  ASSERT_TRUE(store_->AddClient(pub).ok());
  EXPECT_EQ(CodeOf(store_->RotateSecret("pub", "h", kNow, 10, 0)), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf(store_->RotateSecret("nobody", "h", kNow, 10, 0)), ErrorCode::kNotFound);
  EXPECT_TRUE((*store_->GetClient("pub"))->secret_hash.empty());
}

// --- launches -------------------------------------------------------------------

TEST_F(OAuthStoreTest, LaunchContextsExpire) {
  ASSERT_TRUE(store_->AddLaunch({"L1", "p1", "e1", kNow + 60}).ok());
  auto l = store_->GetLaunch("L1", kNow + 59);
  ASSERT_TRUE(l.ok() && l->has_value());
  EXPECT_EQ((*l)->patient, "p1");
  EXPECT_EQ((*l)->encounter, "e1");
  EXPECT_EQ((*l)->expires, kNow + 60);
  l = store_->GetLaunch("L1", kNow + 60);
  ASSERT_TRUE(l.ok());
  EXPECT_FALSE(l->has_value());
  l = store_->GetLaunch("L2", kNow);
  ASSERT_TRUE(l.ok());
  EXPECT_FALSE(l->has_value());
}

// --- codes, grants, tokens ----------------------------------------------------------

TEST_F(OAuthStoreTest, ConsumeCodeOkThenReplayedUnknownIsUnknown) {
  CodeRecord rec{MakeGrant(), "https://app.example/cb", "challenge-xyz", kNow + 60};
  ASSERT_TRUE(store_->AddCode("code-hash", rec).ok());
  CodeRecord out;
  auto first = store_->ConsumeCode("code-hash", kClient, &out);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, CodeUse::kOk);
  EXPECT_EQ(out.grant.client_id, "app");
  EXPECT_EQ(out.grant.username, "alice");
  EXPECT_EQ(out.grant.fhir_user, "Patient/p1");
  EXPECT_EQ(out.grant.scope, rec.grant.scope);
  EXPECT_EQ(out.grant.patient, "p1");
  EXPECT_EQ(out.grant.encounter, "e1");
  EXPECT_EQ(out.grant.purpose_of_use, "TREAT ETREAT");
  EXPECT_EQ(out.grant.nonce, "n-0S6");
  EXPECT_EQ(out.grant.auth_time, kNow - 30);
  EXPECT_EQ(out.grant.dpop_jkt, "jkt-abc");
  EXPECT_EQ(out.redirect_uri, "https://app.example/cb");
  EXPECT_EQ(out.code_challenge, "challenge-xyz");
  EXPECT_EQ(out.expires, kNow + 60);

  CodeRecord again;
  auto second = store_->ConsumeCode("code-hash", kClient, &again);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*second, CodeUse::kReplayed);
  EXPECT_EQ(again.grant.username, "alice") << "the record is still returned for auditing";
  auto third = store_->ConsumeCode("code-hash", kClient, &again);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(*third, CodeUse::kReplayed);

  CodeRecord none;
  auto unknown = store_->ConsumeCode("other-hash", kClient, &none);
  // Another client's presentation neither consumes nor counts as a replay.
  CodeRecord rec2{MakeGrant(), "https://app.example/cb", "challenge-xyz", kNow + 60};
  ASSERT_TRUE(store_->AddCode("code-2", rec2).ok());
  EXPECT_EQ(*store_->ConsumeCode("code-2", "mallory", &none), CodeUse::kOtherClient);
  EXPECT_EQ(*store_->CodeUses("code-2"), 0);
  EXPECT_EQ(*store_->ConsumeCode("code-2", kClient, &none), CodeUse::kOk);
  ASSERT_TRUE(unknown.ok());
  EXPECT_EQ(*unknown, CodeUse::kUnknown);
}

TEST_F(OAuthStoreTest, GrantRoundTrip) {
  auto id = store_->AddGrant(MakeGrant(), "code-hash", kNow, kNow + 1000);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->size(), 32u);
  auto g = store_->GetGrant(*id);
  ASSERT_TRUE(g.ok() && g->has_value());
  EXPECT_EQ((*g)->id, *id);
  EXPECT_EQ((*g)->data.client_id, "app");
  EXPECT_EQ((*g)->data.username, "alice");
  EXPECT_EQ((*g)->data.fhir_user, "Patient/p1");
  EXPECT_EQ((*g)->data.scope, MakeGrant().scope);
  EXPECT_EQ((*g)->data.patient, "p1");
  EXPECT_EQ((*g)->data.encounter, "e1");
  EXPECT_EQ((*g)->data.purpose_of_use, "TREAT ETREAT");
  EXPECT_EQ((*g)->data.auth_time, kNow - 30);
  EXPECT_EQ((*g)->data.dpop_jkt, "jkt-abc");
  EXPECT_EQ((*g)->created, kNow);
  EXPECT_EQ((*g)->absolute_expires, kNow + 1000);
  EXPECT_FALSE((*g)->revoked);
  auto none = store_->GetGrant("nope");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_F(OAuthStoreTest, RevokeGrantOfCodeRevokesGrantRefreshAndAccessTokens) {
  auto id = store_->AddGrant(MakeGrant(), "code-hash", kNow, kNow + 10000);
  ASSERT_TRUE(id.ok());
  // An unrelated grant that must stay untouched.
  auto other = store_->AddGrant(MakeGrant(), "other-code", kNow, kNow + 10000);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(store_->AddRefresh("r1", *id, kNow + 500).ok());
  ASSERT_TRUE(store_->AddRefresh("r2", *id, kNow + 500).ok());
  ASSERT_TRUE(store_->AddRefresh("r-other", *other, kNow + 500).ok());
  ASSERT_TRUE(store_->AddAccessToken("jti-1", *id, kNow + 3600).ok());
  ASSERT_TRUE(store_->AddAccessToken("jti-2", *id, kNow + 1800).ok());
  ASSERT_TRUE(store_->AddAccessToken("jti-old", *id, kNow + 100).ok());  // expired at revocation
  ASSERT_TRUE(store_->AddAccessToken("jti-other", *other, kNow + 3600).ok());

  const int64_t at = kNow + 200;
  auto revoked = store_->RevokeGrantOfCode("code-hash", at);
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(*revoked, *id);

  auto g = store_->GetGrant(*id);
  ASSERT_TRUE(g.ok() && g->has_value());
  EXPECT_TRUE((*g)->revoked);
  for (const char* r : {"r1", "r2"}) {
    auto rec = store_->GetRefresh(r);
    ASSERT_TRUE(rec.ok() && rec->has_value()) << r;
    EXPECT_TRUE((*rec)->used) << r;
    EXPECT_EQ((*rec)->grant_id, *id);
  }
  auto since = store_->RevokedSince(at - 5, at);
  ASSERT_TRUE(since.ok()) << since.status();
  std::vector<std::pair<std::string, int64_t>> list = *since;
  std::sort(list.begin(), list.end());
  std::vector<std::pair<std::string, int64_t>> want = {{"jti-1", kNow + 3600},
                                                       {"jti-2", kNow + 1800}};
  EXPECT_EQ(list, want);

  // The other grant is untouched.
  EXPECT_FALSE((*store_->GetGrant(*other))->revoked);
  EXPECT_FALSE((*store_->GetRefresh("r-other"))->used);

  // Later syncs do not see the entries again; expired entries are not listed.
  auto later = store_->RevokedSince(at + 1, at + 1);
  ASSERT_TRUE(later.ok());
  EXPECT_TRUE(later->empty());
  auto after_exp = store_->RevokedSince(0, kNow + 1800);
  ASSERT_TRUE(after_exp.ok());
  ASSERT_EQ(after_exp->size(), 1u);
  EXPECT_EQ((*after_exp)[0].first, "jti-1");

  // A code without a grant.
  auto none = store_->RevokeGrantOfCode("unknown-code", at);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, "");
}

TEST_F(OAuthStoreTest, RevokeAccessTokenIsListed) {
  ASSERT_TRUE(store_->RevokeAccessToken("jti-x", kNow + 10'000'000'000, kNow).ok());
  ASSERT_TRUE(store_->RevokeAccessToken("jti-x", kNow + 10'000'000'000, kNow).ok()) << "idempotent";
  auto list = store_->RevokedSince(0, kNow);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].first, "jti-x");
}

TEST_F(OAuthStoreTest, UseRefreshIsSingleUse) {
  auto id = store_->AddGrant(MakeGrant(), "c", kNow, kNow + 10000);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(store_->AddRefresh("r1", *id, kNow + 500).ok());
  auto rec = store_->GetRefresh("r1");
  ASSERT_TRUE(rec.ok() && rec->has_value());
  EXPECT_FALSE((*rec)->used);
  EXPECT_EQ((*rec)->idle_expires, kNow + 500);
  auto first = store_->UseRefresh("r1");
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(*first);
  auto second = store_->UseRefresh("r1");
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(*second);
  EXPECT_TRUE((*store_->GetRefresh("r1"))->used);
  auto unknown = store_->UseRefresh("nope");
  ASSERT_TRUE(unknown.ok());
  EXPECT_FALSE(*unknown);
  auto missing = store_->GetRefresh("nope");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());

  ASSERT_TRUE(store_->TouchRefresh("r1", kNow + 900).ok());
  EXPECT_EQ((*store_->GetRefresh("r1"))->idle_expires, kNow + 900);

  // RevokeGrant by id.
  ASSERT_TRUE(store_->AddRefresh("r2", *id, kNow + 500).ok());
  ASSERT_TRUE(store_->RevokeGrant(*id, kNow).ok());
  EXPECT_TRUE((*store_->GetRefresh("r2"))->used);
  EXPECT_TRUE((*store_->GetGrant(*id))->revoked);
}

TEST_F(OAuthStoreTest, PurgeDropsExpiredRows) {
  // Codes are kept an hour after they expire (so a late replay is still detected).
  ASSERT_TRUE(store_->AddCode("code-old", {MakeGrant(), "u", "c", kNow - 3601}).ok());
  ASSERT_TRUE(store_->AddCode("code-recent", {MakeGrant(), "u", "c", kNow - 10}).ok());
  ASSERT_TRUE(store_->AddLaunch({"L-old", "p", "", kNow - 1}).ok());
  ASSERT_TRUE(store_->AddLaunch({"L-new", "p", "", kNow + 100}).ok());
  auto dead = store_->AddGrant(MakeGrant(), "x", kNow - 1000, kNow - 1);
  auto live = store_->AddGrant(MakeGrant(), "y", kNow - 1000, kNow + 1000);
  auto held = store_->AddGrant(MakeGrant(), "z", kNow - 1000, kNow - 1);  // has a live token
  ASSERT_TRUE(dead.ok() && live.ok() && held.ok());
  ASSERT_TRUE(store_->AddRefresh("r-old", *live, kNow - 1).ok());
  ASSERT_TRUE(store_->AddRefresh("r-new", *live, kNow + 1).ok());
  ASSERT_TRUE(store_->AddAccessToken("a-old", *live, kNow - 1).ok());
  ASSERT_TRUE(store_->AddAccessToken("a-held", *held, kNow + 100).ok());
  ASSERT_TRUE(store_->RevokeAccessToken("rev-old", kNow - 1, kNow).ok());
  ASSERT_TRUE(store_->RevokeAccessToken("rev-new", kNow + 100, kNow).ok());

  ASSERT_TRUE(store_->Purge(kNow).ok());

  CodeRecord out;
  EXPECT_EQ(*store_->ConsumeCode("code-old", kClient, &out), CodeUse::kUnknown);
  EXPECT_EQ(*store_->ConsumeCode("code-recent", kClient, &out), CodeUse::kOk);
  EXPECT_FALSE(store_->GetLaunch("L-old", 0)->has_value());
  EXPECT_TRUE(store_->GetLaunch("L-new", 0)->has_value());
  EXPECT_FALSE(store_->GetGrant(*dead)->has_value());
  EXPECT_TRUE(store_->GetGrant(*live)->has_value());
  EXPECT_TRUE(store_->GetGrant(*held)->has_value()) << "a grant with a live access token stays";
  EXPECT_FALSE(store_->GetRefresh("r-old")->has_value());
  EXPECT_TRUE(store_->GetRefresh("r-new")->has_value());
  auto revoked = store_->RevokedSince(0, 0);
  ASSERT_TRUE(revoked.ok());
  ASSERT_EQ(revoked->size(), 1u);
  EXPECT_EQ((*revoked)[0].first, "rev-new");

  // Once its access token expired and was purged, the held grant goes too.
  ASSERT_TRUE(store_->Purge(kNow + 101).ok());
  EXPECT_FALSE(store_->GetGrant(*held)->has_value());
}

TEST_F(OAuthStoreTest, TwoInstancesOnTheSameFileSeeEachOthersWrites) {
  // The CLI and the server open the same database.
  auto cli_or = OAuthStore::Open(dir_.File("oauth.db"));
  ASSERT_TRUE(cli_or.ok()) << cli_or.status();
  std::unique_ptr<OAuthStore> cli = std::move(*cli_or);

  ASSERT_TRUE(cli->AddUser(MakeUser("alice")).ok());
  EXPECT_EQ(GetUser("alice").fhir_user, "Practitioner/alice");
  ASSERT_TRUE(cli->SetUserDisabled("alice", true).ok());
  EXPECT_TRUE(GetUser("alice").disabled);
  EXPECT_EQ(CodeOf(store_->AddUser(MakeUser("alice"))), ErrorCode::kVersionConflict);

  Client c;
  c.client_id = "conf";
  c.auth = ClientAuth::kSecretBasic;
  c.secret_hash = "h1";
  c.created = kNow;
  ASSERT_TRUE(cli->AddClient(c).ok());
  ASSERT_TRUE(cli->RotateSecret("conf", "h2", kNow, 60, 0).ok());
  auto seen = store_->GetClient("conf");
  ASSERT_TRUE(seen.ok() && seen->has_value());
  EXPECT_EQ((*seen)->secret_hash, "h2");
  EXPECT_EQ((*seen)->previous_secret_hash, "h1");

  // Single use across connections: one wins, the other sees a replay.
  ASSERT_TRUE(store_->AddCode("code", {MakeGrant(), "u", "c", kNow + 60}).ok());
  CodeRecord out;
  EXPECT_EQ(*cli->ConsumeCode("code", kClient, &out), CodeUse::kOk);
  EXPECT_EQ(*store_->ConsumeCode("code", kClient, &out), CodeUse::kReplayed);

  auto gid = store_->AddGrant(MakeGrant(), "code", kNow, kNow + 100);
  ASSERT_TRUE(gid.ok());
  ASSERT_TRUE(store_->AddRefresh("r", *gid, kNow + 100).ok());
  EXPECT_TRUE(*cli->UseRefresh("r"));
  EXPECT_FALSE(*store_->UseRefresh("r"));

  // A revocation through one node reaches the other's sync.
  ASSERT_TRUE(store_->AddAccessToken("jti", *gid, kNow + 100).ok());
  ASSERT_TRUE(cli->RevokeGrant(*gid, kNow).ok());
  auto list = store_->RevokedSince(kNow - 5, kNow);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].first, "jti");
}

}  // namespace
}  // namespace fhirward::oauth
