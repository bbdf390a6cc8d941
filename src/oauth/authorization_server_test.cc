#include "oauth/authorization_server.h"

#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "audit/audit_log.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "crypto/kms.h"
#include "crypto/password.h"
#include "crypto/totp.h"
#include "gtest/gtest.h"
#include "jose/dpop.h"
#include "jose/jws.h"
#include "json/value.h"
#include "oauth/pages.h"

namespace fhirward::oauth {
namespace {

using Form = std::vector<std::pair<std::string, std::string>>;

constexpr char kIssuer[] = "https://fhir.example.org/fhir";
constexpr char kRedirect[] = "https://app.example/cb";
constexpr char kPassword[] = "Correct-Horse-Battery-9";
constexpr char kBobPassword[] = "Bob-Staple-Password-77";
// RFC 7636 appendix B.
constexpr char kVerifier[] = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
constexpr char kPatientScopes[] = "openid fhirUser offline_access patient/Observation.rs";

class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t now) : now_(now) {}
  std::chrono::system_clock::time_point Now() const override {
    return std::chrono::system_clock::time_point(std::chrono::seconds(now_.load()));
  }
  void Set(int64_t now) { now_ = now; }
  void Advance(int64_t seconds) { now_ += seconds; }

 private:
  std::atomic<int64_t> now_;
};

std::string Encode(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string Decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size()) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string FormText(const Form& f) {
  std::string out;
  for (const auto& [k, v] : f) {
    if (!out.empty()) out += '&';
    out += Encode(k) + "=" + Encode(v);
  }
  return out;
}

std::string Header(const net::HttpResponse& r, std::string_view name) {
  auto v = net::FindHeader(r.headers, name);
  return v ? std::string(*v) : std::string();
}

// The value="..." of the hidden input `name` in an HTML page ("" when absent).
std::string HiddenValue(const std::string& html, const std::string& name) {
  const std::string marker = "<input type=\"hidden\" name=\"" + name + "\" value=\"";
  size_t at = html.find(marker);
  if (at == std::string::npos) return {};
  at += marker.size();
  return html.substr(at, html.find('"', at) - at);
}

// Query parameters of a redirect Location.
std::map<std::string, std::string> LocationParams(const net::HttpResponse& r) {
  std::map<std::string, std::string> out;
  std::string loc = Header(r, "Location");
  size_t q = loc.find('?');
  if (q == std::string::npos) return out;
  std::string_view rest = std::string_view(loc).substr(q + 1);
  while (!rest.empty()) {
    size_t amp = rest.find('&');
    std::string_view part = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    size_t eq = part.find('=');
    out[Decode(part.substr(0, eq))] =
        eq == std::string_view::npos ? "" : Decode(part.substr(eq + 1));
  }
  return out;
}

json::Value Body(const net::HttpResponse& r) {
  auto v = json::Parse(r.body);
  EXPECT_TRUE(v.ok()) << v.status() << " in " << r.body;
  return v.ok() ? std::move(*v) : json::Value::MakeObject();
}

std::string Str(const json::Value& v, std::string_view key) {
  auto s = v.GetString(key);
  return s ? std::string(*s) : std::string();
}

// Claims of a JWT without verification.
json::Value PeekClaims(const std::string& jwt) {
  size_t d1 = jwt.find('.');
  size_t d2 = jwt.find('.', d1 + 1);
  auto text = Base64UrlDecode(std::string_view(jwt).substr(d1 + 1, d2 - d1 - 1));
  if (!text) return json::Value::MakeObject();
  auto v = json::Parse(*text);
  return v.ok() ? std::move(*v) : json::Value::MakeObject();
}

bool IsLoginPage(const net::HttpResponse& r) {
  return r.body.find("name=\"password\"") != std::string::npos;
}
bool IsConsentPage(const net::HttpResponse& r) {
  return r.body.find("name=\"decision\"") != std::string::npos;
}

std::string Challenge(std::string_view verifier) {
  return Base64UrlEncode(crypto::Sha256(verifier));
}

// The public JWK a DPoP client puts in its proofs.
json::Value ProofJwk(const jose::SigningKey& key) {
  json::Value jwk = key.public_key().ToJwk();
  jwk.Erase("kid");
  jwk.Erase("alg");
  jwk.Erase("use");
  return jwk;
}

std::string DpopProof(const jose::SigningKey& key, const std::string& htm, const std::string& htu,
                      int64_t iat, const std::string& nonce, const std::string& access_token = "",
                      std::string jti = "") {
  json::Value h = json::Value::MakeObject();
  h.Set("typ", json::Value::String("dpop+jwt"));
  h.Set("alg", json::Value::String(std::string(jose::AlgorithmName(key.alg()))));
  h.Set("jwk", ProofJwk(key));
  json::Value c = json::Value::MakeObject();
  c.Set("jti", json::Value::String(jti.empty() ? RandomUuid() : jti));
  c.Set("htm", json::Value::String(htm));
  c.Set("htu", json::Value::String(htu));
  c.Set("iat", json::Value::Int(iat));
  if (!nonce.empty()) c.Set("nonce", json::Value::String(nonce));
  if (!access_token.empty()) {
    c.Set("ath", json::Value::String(Base64UrlEncode(crypto::Sha256(access_token))));
  }
  std::string input = Base64UrlEncode(json::Write(h)) + "." + Base64UrlEncode(json::Write(c));
  auto sig = key.Sign(input);
  EXPECT_TRUE(sig.ok()) << sig.status();
  return input + "." + Base64UrlEncode(sig.ok() ? *sig : std::string());
}

// Cookies of one browser.
struct Browser {
  std::map<std::string, std::string> cookies;
  void Absorb(const net::HttpResponse& r) {
    for (const auto& [k, v] : r.headers) {
      if (strcasecmp(k.c_str(), "Set-Cookie") != 0) continue;
      size_t eq = v.find('=');
      size_t semi = v.find(';');
      cookies[v.substr(0, eq)] = v.substr(eq + 1, semi - eq - 1);
    }
  }
  std::string CookieHeader() const {
    std::string out;
    for (const auto& [k, v] : cookies) {
      if (!out.empty()) out += "; ";
      out += k + "=" + v;
    }
    return out;
  }
};

class AuthServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "fw-authz-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    ASSERT_EQ(mkdir((dir_ + "/keys").c_str(), 0700), 0);
    auto store = OAuthStore::Open(dir_ + "/oauth.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto keys = SigningKeyRing::Open(dir_ + "/keys", "legacy", clock_.NowSeconds());
    ASSERT_TRUE(keys.ok()) << keys.status();
    keys_ = std::move(*keys);
    auto audit = audit::AuditLog::Open(dir_ + "/audit.db", SecretBytes(std::string(32, 'a')));
    ASSERT_TRUE(audit.ok()) << audit.status();
    audit_ = std::move(*audit);
    auto kek = crypto::OpenLocalKeyFile(dir_ + "/kek", true);
    ASSERT_TRUE(kek.ok()) << kek.status();
    kek_ = std::move(*kek);

    options_.issuer = kIssuer;
    options_.argon2 = {.t_cost = 1, .m_cost_kib = 8, .parallelism = 1};

    AddUser("alice", kPassword, "Patient/p1");
    AddUser("bob", kBobPassword, "Practitioner/b1");

    Client app;
    app.client_id = "app";
    app.name = "Test App";
    app.auth = ClientAuth::kNone;
    app.redirect_uris = {kRedirect, "http://127.0.0.1/cb"};
    app.scope = "openid fhirUser offline_access launch launch/patient patient/*.rs user/*.rs";
    app.grant_types = {"authorization_code", "refresh_token"};
    app.created = clock_.NowSeconds();
    ASSERT_TRUE(store_->AddClient(app).ok());

    secret_ = Base64UrlEncode(RandomBytes(32));
    Client conf;
    conf.client_id = "conf";
    conf.name = "Confidential App";
    conf.auth = ClientAuth::kSecretBasic;
    conf.secret_hash = HashClientSecret(secret_);
    conf.redirect_uris = {kRedirect};
    conf.scope = "openid fhirUser offline_access patient/*.rs user/*.rs system/*.rs";
    conf.grant_types = {"authorization_code", "refresh_token", "client_credentials"};
    conf.created = clock_.NowSeconds();
    ASSERT_TRUE(store_->AddClient(conf).ok());

    MakeServer();
  }

  void TearDown() override {
    // Whatever a test did, no response carried a password or the client secret.
    for (const auto& r : responses_) {
      for (const std::string& secret :
           {std::string(kPassword), std::string(kBobPassword), secret_}) {
        EXPECT_EQ(r.body.find(secret), std::string::npos) << "status " << r.status;
        for (const auto& [k, v] : r.headers) {
          EXPECT_EQ(v.find(secret), std::string::npos) << k;
        }
      }
    }
    server_.reset();
    if (audit_) audit_->Close();
    // Nor did the audit trail.
    for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
      if (entry.path().filename().string().rfind("audit", 0) != 0) continue;
      std::ifstream in(entry.path(), std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      const std::string bytes = ss.str();
      EXPECT_EQ(bytes.find(kPassword), std::string::npos) << entry.path();
      EXPECT_EQ(bytes.find(kBobPassword), std::string::npos) << entry.path();
      EXPECT_EQ(bytes.find(secret_), std::string::npos) << entry.path();
    }
    audit_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void AddUser(const std::string& name, const std::string& password, const std::string& fhir_user) {
    User u;
    u.username = name;
    auto h = crypto::HashPassword(password, options_.argon2);
    ASSERT_TRUE(h.ok()) << h.status();
    u.password_hash = *h;
    u.fhir_user = fhir_user;
    u.created = clock_.NowSeconds();
    ASSERT_TRUE(store_->AddUser(u).ok());
  }

  void MakeServer() {
    AuthServerDeps d;
    d.store = store_.get();
    d.keys = keys_.get();
    d.audit = audit_.get();
    d.kek = kek_.get();
    d.clock = &clock_;
    d.revocations = &revocations_;
    d.replay = &replay_;
    d.dpop_replay = &dpop_replay_;
    d.nonces = &nonces_;
    d.session_key = &session_key_;
    server_ = std::make_unique<AuthorizationServer>(options_, d);
  }

  net::HttpResponse Send(net::HttpRequest req) {
    req.tls_version = "TLSv1.3";
    req.remote_ip = "192.0.2.10";
    req.remote_port = 50000;
    req.received_at = clock_.Now();
    net::HttpResponse r = server_->Handle(req);
    responses_.push_back(r);
    return r;
  }

  net::HttpResponse Get(const std::string& target, const Browser* b = nullptr) {
    net::HttpRequest req;
    req.method = "GET";
    req.target = target;
    if (b && !b->cookies.empty()) req.headers.emplace_back("Cookie", b->CookieHeader());
    return Send(std::move(req));
  }

  net::HttpResponse Post(const std::string& target, const std::string& body,
                         const Browser* b = nullptr, net::Headers extra = {}) {
    net::HttpRequest req;
    req.method = "POST";
    req.target = target;
    req.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
    if (b && !b->cookies.empty()) req.headers.emplace_back("Cookie", b->CookieHeader());
    for (auto& h : extra) req.headers.push_back(std::move(h));
    req.body = body;
    return Send(std::move(req));
  }

  Form AuthorizeParams(const std::string& scope, const std::string& client_id = "app") {
    return {{"response_type", "code"},
            {"client_id", client_id},
            {"redirect_uri", kRedirect},
            {"scope", scope},
            {"state", "st-123"},
            {"aud", kIssuer},
            {"nonce", "nonce-9"},
            {"code_challenge", Challenge(kVerifier)},
            {"code_challenge_method", "S256"}};
  }

  net::HttpResponse Authorize(Browser& b, const Form& params) {
    net::HttpResponse r = Get("/authorize?" + FormText(params), &b);
    b.Absorb(r);
    return r;
  }

  net::HttpResponse Login(Browser& b, const net::HttpResponse& page, const std::string& user,
                          const std::string& password) {
    Form f{{"request", HiddenValue(page.body, "request")},
           {"csrf", HiddenValue(page.body, "csrf")},
           {"username", user},
           {"password", password}};
    net::HttpResponse r = Post("/authorize/login", FormText(f), &b);
    b.Absorb(r);
    return r;
  }

  net::HttpResponse Consent(Browser& b, const net::HttpResponse& page,
                            const std::vector<std::string>& scopes,
                            const std::string& decision = "allow") {
    Form f{{"request", HiddenValue(page.body, "request")},
           {"csrf", HiddenValue(page.body, "csrf")}};
    for (const auto& s : scopes) f.emplace_back("scope", s);
    f.emplace_back("decision", decision);
    net::HttpResponse r = Post("/authorize/consent", FormText(f), &b);
    b.Absorb(r);
    return r;
  }

  // /authorize → (login) → consent → the code. Empty on failure.
  std::string GetCode(Browser& b, const std::string& scope, const std::string& user = "alice",
                      const std::string& password = kPassword,
                      const std::string& client_id = "app") {
    net::HttpResponse page = Authorize(b, AuthorizeParams(scope, client_id));
    EXPECT_EQ(page.status, 200) << page.body;
    if (IsLoginPage(page)) {
      page = Login(b, page, user, password);
      EXPECT_EQ(page.status, 200) << page.body;
    }
    EXPECT_TRUE(IsConsentPage(page)) << page.body;
    std::vector<std::string> scopes;
    size_t i = 0;
    std::string_view text = scope;
    while (i < text.size()) {
      size_t j = text.find(' ', i);
      if (j == std::string_view::npos) j = text.size();
      scopes.emplace_back(text.substr(i, j - i));
      i = j + 1;
    }
    net::HttpResponse r = Consent(b, page, scopes);
    EXPECT_EQ(r.status, 302) << r.body;
    auto params = LocationParams(r);
    return params["code"];
  }

  net::HttpResponse ExchangeCode(const std::string& code, net::Headers extra = {},
                                 const std::string& client_id = "app") {
    Form f{{"grant_type", "authorization_code"},
           {"code", code},
           {"redirect_uri", kRedirect},
           {"code_verifier", kVerifier}};
    if (client_id == "app") f.emplace_back("client_id", "app");
    if (client_id == "conf") extra.emplace_back("Authorization", BasicAuth());
    return Post("/token", FormText(f), nullptr, std::move(extra));
  }

  net::HttpResponse Refresh(const std::string& token, net::Headers extra = {},
                            const std::string& scope = "") {
    Form f{{"grant_type", "refresh_token"}, {"refresh_token", token}, {"client_id", "app"}};
    if (!scope.empty()) f.emplace_back("scope", scope);
    return Post("/token", FormText(f), nullptr, std::move(extra));
  }

  std::string BasicAuth(const std::string& secret = "") const {
    return "Basic " + Base64Encode("conf:" + (secret.empty() ? secret_ : secret));
  }

  int64_t Now() const { return clock_.NowSeconds(); }

  FakeClock clock_{std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count()};
  std::string dir_;
  std::unique_ptr<OAuthStore> store_;
  std::unique_ptr<SigningKeyRing> keys_;
  std::unique_ptr<audit::AuditLog> audit_;
  std::unique_ptr<crypto::KeyEncryptionService> kek_;
  RevocationList revocations_;
  jose::ReplayCache replay_;
  jose::ReplayCache dpop_replay_;
  jose::DpopNonces nonces_{std::string(32, 'n')};
  SecretBytes session_key_{std::string(32, 's')};
  AuthServerOptions options_;
  std::unique_ptr<AuthorizationServer> server_;
  std::string secret_;
  std::vector<net::HttpResponse> responses_;
};

// ---------------------------------------------------------------------------
// The full flow

TEST_F(AuthServerTest, FullCodeFlowIssuesTokens) {
  Browser b;
  net::HttpResponse login = Authorize(b, AuthorizeParams(kPatientScopes));
  ASSERT_EQ(login.status, 200) << login.body;
  ASSERT_TRUE(IsLoginPage(login));
  EXPECT_EQ(Header(login, "Content-Type"), "text/html; charset=utf-8");
  EXPECT_EQ(Header(login, "X-Frame-Options"), "DENY");
  EXPECT_EQ(Header(login, "Cache-Control"), "no-store");
  EXPECT_EQ(Header(login, "Content-Security-Policy"), PageContentSecurityPolicy());
  EXPECT_EQ(Header(login, "X-Content-Type-Options"), "nosniff");
  std::string set_cookie = Header(login, "Set-Cookie");
  EXPECT_EQ(set_cookie.rfind("__Host-fw_browser=", 0), 0u) << set_cookie;
  for (const char* attr : {"Path=/", "Secure", "HttpOnly", "SameSite=Lax"}) {
    EXPECT_NE(set_cookie.find(attr), std::string::npos) << attr;
  }
  EXPECT_EQ(b.cookies["__Host-fw_browser"].size(), 43u);
  EXPECT_FALSE(HiddenValue(login.body, "request").empty());
  EXPECT_FALSE(HiddenValue(login.body, "csrf").empty());

  net::HttpResponse consent = Login(b, login, "alice", kPassword);
  ASSERT_EQ(consent.status, 200) << consent.body;
  ASSERT_TRUE(IsConsentPage(consent));
  EXPECT_FALSE(b.cookies["__Host-fw_session"].empty());
  EXPECT_NE(Header(consent, "Set-Cookie").find("__Host-fw_session="), std::string::npos);
  EXPECT_NE(consent.body.find("Test App"), std::string::npos);

  net::HttpResponse redirect =
      Consent(b, consent, {"openid", "fhirUser", "offline_access", "patient/Observation.rs"});
  ASSERT_EQ(redirect.status, 302) << redirect.body;
  EXPECT_EQ(Header(redirect, "Location").rfind(std::string(kRedirect) + "?", 0), 0u);
  auto params = LocationParams(redirect);
  EXPECT_EQ(params["state"], "st-123");
  EXPECT_EQ(params["iss"], kIssuer);
  ASSERT_EQ(params["code"].size(), 43u);

  net::HttpResponse token = ExchangeCode(params["code"]);
  ASSERT_EQ(token.status, 200) << token.body;
  EXPECT_EQ(Header(token, "Cache-Control"), "no-store");
  EXPECT_EQ(Header(token, "Pragma"), "no-cache");
  json::Value body = Body(token);
  EXPECT_EQ(Str(body, "token_type"), "Bearer");
  EXPECT_EQ(body.Find("expires_in")->as_int64(), 3600);
  EXPECT_EQ(Str(body, "scope"), "openid fhirUser offline_access patient/Observation.rs");
  EXPECT_EQ(Str(body, "patient"), "p1");
  ASSERT_NE(body.Find("need_patient_banner"), nullptr);
  EXPECT_TRUE(body.Find("need_patient_banner")->as_bool());
  EXPECT_FALSE(Str(body, "refresh_token").empty());

  // The access token: RFC 9068, verifiable with the published keys.
  jose::JwtExpectations e;
  e.issuer = kIssuer;
  e.audience = {kIssuer};
  e.typ = "at+jwt";
  e.now = Now();
  auto at = jose::VerifyJwt(Str(body, "access_token"), keys_->Published(Now()), e);
  ASSERT_TRUE(at.ok()) << at.status();
  EXPECT_EQ(Str(at->claims, "sub"), "alice");
  EXPECT_EQ(Str(at->claims, "client_id"), "app");
  EXPECT_EQ(Str(at->claims, "patient"), "p1");
  EXPECT_EQ(Str(at->claims, "fhirUser"), "Patient/p1");
  EXPECT_EQ(Str(at->claims, "scope"), Str(body, "scope"));
  EXPECT_EQ(at->claims.Find("exp")->as_int64(), Now() + 3600);
  EXPECT_FALSE(Str(at->claims, "jti").empty());
  EXPECT_EQ(at->claims.Find("cnf"), nullptr);
  EXPECT_EQ(Str(at->header, "alg"), "ES256");

  // The ID token: RS256 by default, aud = client.
  jose::JwtExpectations ide;
  ide.issuer = kIssuer;
  ide.audience = {"app"};
  ide.now = Now();
  auto id = jose::VerifyJwt(Str(body, "id_token"), keys_->Published(Now()), ide);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(Str(id->header, "alg"), "RS256");
  EXPECT_EQ(Str(id->claims, "sub"), "alice");
  EXPECT_EQ(Str(id->claims, "azp"), "app");
  EXPECT_EQ(Str(id->claims, "nonce"), "nonce-9");
  EXPECT_EQ(Str(id->claims, "fhirUser"), std::string(kIssuer) + "/Patient/p1");

  // The refresh token works (and rotates).
  net::HttpResponse refreshed = Refresh(Str(body, "refresh_token"));
  ASSERT_EQ(refreshed.status, 200) << refreshed.body;
  json::Value rb = Body(refreshed);
  EXPECT_FALSE(Str(rb, "refresh_token").empty());
  EXPECT_NE(Str(rb, "refresh_token"), Str(body, "refresh_token"));
  EXPECT_EQ(rb.Find("id_token"), nullptr);

  // A second authorization in the same browser skips the login.
  net::HttpResponse again = Authorize(b, AuthorizeParams(kPatientScopes));
  EXPECT_TRUE(IsConsentPage(again)) << again.body;
}

TEST_F(AuthServerTest, DeniedConsentRedirectsWithAccessDenied) {
  Browser b;
  net::HttpResponse page =
      Login(b, Authorize(b, AuthorizeParams(kPatientScopes)), "alice", kPassword);
  net::HttpResponse r = Consent(b, page, {}, "deny");
  ASSERT_EQ(r.status, 302);
  auto p = LocationParams(r);
  EXPECT_EQ(p["error"], "access_denied");
  EXPECT_EQ(p["state"], "st-123");
  EXPECT_EQ(p["iss"], kIssuer);
  EXPECT_EQ(p.count("code"), 0u);
  // One decision per request.
  net::HttpResponse twice = Consent(b, page, {"openid"});
  EXPECT_EQ(twice.status, 400);
}

TEST_F(AuthServerTest, UntickedScopesAreDroppedButOpenidStays) {
  Browser b;
  net::HttpResponse page =
      Login(b, Authorize(b, AuthorizeParams(kPatientScopes)), "alice", kPassword);
  // The user submits only one resource scope (openid unticked is impossible: re-added).
  net::HttpResponse r = Consent(b, page, {"patient/Observation.rs", "user/Patient.rs"});
  ASSERT_EQ(r.status, 302);
  net::HttpResponse t = ExchangeCode(LocationParams(r)["code"]);
  ASSERT_EQ(t.status, 200) << t.body;
  EXPECT_EQ(Str(Body(t), "scope"), "patient/Observation.rs openid");
  EXPECT_EQ(Body(t).Find("refresh_token"), nullptr) << "offline_access was unticked";
}

TEST_F(AuthServerTest, CodeReplayRevokesTokensIssuedFromIt) {
  Browser b;
  std::string code = GetCode(b, kPatientScopes);
  net::HttpResponse first = ExchangeCode(code);
  ASSERT_EQ(first.status, 200) << first.body;
  json::Value body = Body(first);
  const std::string jti = Str(PeekClaims(Str(body, "access_token")), "jti");
  // A refresh before the replay: its tokens are issued under the same grant.
  net::HttpResponse refreshed = Refresh(Str(body, "refresh_token"));
  ASSERT_EQ(refreshed.status, 200);
  const std::string jti2 = Str(PeekClaims(Str(Body(refreshed), "access_token")), "jti");
  const std::string rt2 = Str(Body(refreshed), "refresh_token");
  EXPECT_FALSE(revocations_.IsRevoked(jti));

  net::HttpResponse replay = ExchangeCode(code);
  EXPECT_EQ(replay.status, 400);
  EXPECT_EQ(Str(Body(replay), "error"), "invalid_grant");
  EXPECT_TRUE(revocations_.IsRevoked(jti));
  EXPECT_TRUE(revocations_.IsRevoked(jti2));
  net::HttpResponse after = Refresh(rt2);
  EXPECT_EQ(after.status, 400);
  EXPECT_EQ(Str(Body(after), "error"), "invalid_grant");

  // An unknown code.
  net::HttpResponse unknown = ExchangeCode(Base64UrlEncode(RandomBytes(32)));
  EXPECT_EQ(Str(Body(unknown), "error"), "invalid_grant");
}

TEST_F(AuthServerTest, CodeExpiresExactlyAfter60Seconds) {
  Browser b;
  const int64_t t0 = Now();
  std::string c1 = GetCode(b, kPatientScopes);
  std::string c2 = GetCode(b, kPatientScopes);  // same browser: the session is reused
  ASSERT_FALSE(c1.empty());
  ASSERT_FALSE(c2.empty());
  clock_.Set(t0 + 59);
  net::HttpResponse ok = ExchangeCode(c1);
  EXPECT_EQ(ok.status, 200) << ok.body;
  clock_.Set(t0 + 60);
  net::HttpResponse late = ExchangeCode(c2);
  EXPECT_EQ(late.status, 400);
  EXPECT_EQ(Str(Body(late), "error"), "invalid_grant");
  EXPECT_NE(Str(Body(late), "error_description").find("expired"), std::string::npos) << late.body;
}

TEST_F(AuthServerTest, CodeIsBoundToClientRedirectAndVerifier) {
  Browser b;
  std::string code = GetCode(b, kPatientScopes);
  Form f{{"grant_type", "authorization_code"},
         {"code", code},
         {"redirect_uri", kRedirect},
         {"code_verifier", std::string(43, 'a')},
         {"client_id", "app"}};
  net::HttpResponse bad = Post("/token", FormText(f));
  EXPECT_EQ(Str(Body(bad), "error"), "invalid_grant");

  code = GetCode(b, kPatientScopes);
  Form g{{"grant_type", "authorization_code"},
         {"code", code},
         {"redirect_uri", "https://app.example/other"},
         {"code_verifier", kVerifier},
         {"client_id", "app"}};
  EXPECT_EQ(Str(Body(Post("/token", FormText(g))), "error"), "invalid_grant");

  code = GetCode(b, kPatientScopes);
  net::HttpResponse other = ExchangeCode(code, {}, "conf");
  EXPECT_EQ(Str(Body(other), "error"), "invalid_grant");
}

// ---------------------------------------------------------------------------
// Sessions

TEST_F(AuthServerTest, SessionIdleExpiryShowsTheLoginPageAgain) {
  Browser b;
  const int64_t t0 = Now();
  ASSERT_FALSE(GetCode(b, kPatientScopes).empty());
  clock_.Set(t0 + 899);
  net::HttpResponse still = Authorize(b, AuthorizeParams(kPatientScopes));
  EXPECT_TRUE(IsConsentPage(still)) << "idle for 899 s: the session lives";
  // Activity extends the idle window; 900 s of inactivity end it.
  clock_.Set(t0 + 899 + 900);
  net::HttpResponse again = Authorize(b, AuthorizeParams(kPatientScopes));
  EXPECT_TRUE(IsLoginPage(again)) << again.body;
  EXPECT_FALSE(IsConsentPage(again));
  // prompt=none without a session → login_required.
  Form params = AuthorizeParams(kPatientScopes);
  params.emplace_back("prompt", "none");
  net::HttpResponse none = Authorize(b, params);
  ASSERT_EQ(none.status, 302);
  EXPECT_EQ(LocationParams(none)["error"], "login_required");
}

TEST_F(AuthServerTest, ConsentAfterTheSessionIdledOutAsksForALogin) {
  options_.session_idle_seconds = 120;
  MakeServer();
  Browser b;
  net::HttpResponse page =
      Login(b, Authorize(b, AuthorizeParams(kPatientScopes)), "alice", kPassword);
  ASSERT_TRUE(IsConsentPage(page));
  clock_.Advance(120);
  net::HttpResponse stale = Consent(b, page, {"openid"});
  EXPECT_EQ(stale.status, 401);
  EXPECT_TRUE(IsLoginPage(stale));
  EXPECT_EQ(Header(stale, "Location"), "");
  // Signing in again on that page completes the same request.
  net::HttpResponse again = Login(b, stale, "alice", kPassword);
  ASSERT_TRUE(IsConsentPage(again)) << again.body;
  net::HttpResponse r = Consent(b, again, {"openid"});
  EXPECT_EQ(r.status, 302);
  EXPECT_FALSE(LocationParams(r)["code"].empty());
}

TEST_F(AuthServerTest, SessionAbsoluteExpiry) {
  options_.session_idle_seconds = 900;
  options_.session_absolute_seconds = 2000;
  MakeServer();
  Browser b;
  const int64_t t0 = Now();
  ASSERT_FALSE(GetCode(b, kPatientScopes).empty());
  for (int64_t t : {800, 1600, 1999}) {
    clock_.Set(t0 + t);
    EXPECT_TRUE(IsConsentPage(Authorize(b, AuthorizeParams(kPatientScopes)))) << t;
  }
  clock_.Set(t0 + 2000);
  EXPECT_TRUE(IsLoginPage(Authorize(b, AuthorizeParams(kPatientScopes))));
}

TEST_F(AuthServerTest, PromptLoginForcesANewLogin) {
  Browser b;
  ASSERT_FALSE(GetCode(b, kPatientScopes).empty());
  Form params = AuthorizeParams(kPatientScopes);
  params.emplace_back("prompt", "login");
  EXPECT_TRUE(IsLoginPage(Authorize(b, params)));
}

TEST_F(AuthServerTest, FormsAreBoundToTheBrowserAndCsrfToken) {
  Browser b;
  net::HttpResponse page = Authorize(b, AuthorizeParams(kPatientScopes));
  ASSERT_TRUE(IsLoginPage(page));
  // Another browser posting the same form.
  Browser other;
  other.cookies["__Host-fw_browser"] = Base64UrlEncode(RandomBytes(32));
  net::HttpResponse r = Login(other, page, "alice", kPassword);
  EXPECT_EQ(r.status, 403);
  // No cookie at all.
  Browser none;
  EXPECT_EQ(Login(none, page, "alice", kPassword).status, 403);
  // The right browser with a wrong CSRF token.
  Form f{{"request", HiddenValue(page.body, "request")},
         {"csrf", Base64UrlEncode(RandomBytes(32))},
         {"username", "alice"},
         {"password", kPassword}};
  EXPECT_EQ(Post("/authorize/login", FormText(f), &b).status, 403);
  // Without the token.
  Form g{{"request", HiddenValue(page.body, "request")},
         {"username", "alice"},
         {"password", kPassword}};
  EXPECT_EQ(Post("/authorize/login", FormText(g), &b).status, 403);
  // A pending request lives 10 minutes.
  clock_.Advance(600);
  EXPECT_EQ(Login(b, page, "alice", kPassword).status, 400);
}

// ---------------------------------------------------------------------------
// Login failures and lockout

TEST_F(AuthServerTest, WrongPasswordAndUnknownUserLookTheSame) {
  Browser b;
  net::HttpResponse page = Authorize(b, AuthorizeParams(kPatientScopes));
  net::HttpResponse wrong = Login(b, page, "alice", "not-the-password");
  net::HttpResponse unknown = Login(b, page, "mallory", "not-the-password");
  EXPECT_EQ(wrong.status, 401);
  EXPECT_EQ(unknown.status, 401);
  const std::string generic = "The username or password is not correct.";
  EXPECT_NE(wrong.body.find(generic), std::string::npos);
  EXPECT_NE(unknown.body.find(generic), std::string::npos);
  EXPECT_EQ(wrong.body.find("not-the-password"), std::string::npos);
  ASSERT_TRUE(store_->SetUserDisabled("bob", true).ok());
  net::HttpResponse disabled = Login(b, page, "bob", kBobPassword);
  EXPECT_EQ(disabled.status, 401);
  EXPECT_NE(disabled.body.find(generic), std::string::npos);
}

TEST_F(AuthServerTest, LockoutExpiresAfterLockoutSeconds) {
  options_.max_login_failures = 3;
  options_.lockout_seconds = 300;
  MakeServer();
  Browser b;
  const int64_t t0 = Now();
  net::HttpResponse page = Authorize(b, AuthorizeParams(kPatientScopes));
  for (int i = 0; i < 3; ++i) {
    net::HttpResponse r = Login(b, page, "alice", "wrong-" + std::to_string(i));
    EXPECT_EQ(r.status, 401) << i;
  }
  net::HttpResponse locked = Login(b, page, "alice", kPassword);
  // Locked even with the right password, and it looks like a wrong password.
  EXPECT_EQ(locked.status, 401);
  EXPECT_FALSE(IsConsentPage(locked));
  clock_.Set(t0 + 299);
  EXPECT_FALSE(IsConsentPage(Login(b, page, "alice", kPassword)));
  clock_.Set(t0 + 300);
  // After the lock: a failure counts from one again (not locked at once) ...
  EXPECT_EQ(Login(b, page, "alice", "wrong-again").status, 401);
  auto u = store_->GetUser("alice");
  ASSERT_TRUE(u.ok() && u->has_value());
  EXPECT_EQ((*u)->failed_logins, 1);
  // ... and the right password works.
  net::HttpResponse ok = Login(b, page, "alice", kPassword);
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_TRUE(IsConsentPage(ok));
  u = store_->GetUser("alice");
  EXPECT_EQ((*u)->failed_logins, 0);
}

TEST_F(AuthServerTest, TotpSecondFactorIsSingleUse) {
  SecretBytes seed = crypto::GenerateTotpSecret();
  auto wrapped = kek_->Wrap(seed, "fhirward-totp-v1:bob");
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  ASSERT_TRUE(store_->SetTotp("bob", *wrapped).ok());
  Browser b;
  net::HttpResponse page = Authorize(b, AuthorizeParams("openid user/Observation.rs"));
  net::HttpResponse totp = Login(b, page, "bob", kBobPassword);
  ASSERT_EQ(totp.status, 200) << totp.body;
  ASSERT_NE(totp.body.find("name=\"totp\""), std::string::npos);
  EXPECT_EQ(b.cookies.count("__Host-fw_session"), 0u) << "no session before the second factor";
  auto post_totp = [&](const std::string& code) {
    Form f{{"request", HiddenValue(totp.body, "request")},
           {"csrf", HiddenValue(totp.body, "csrf")},
           {"totp", code}};
    net::HttpResponse r = Post("/authorize/totp", FormText(f), &b);
    b.Absorb(r);
    return r;
  };
  const std::string code = crypto::TotpCode(seed.UnsafeView(), Now());
  std::string wrong = code == "000000" ? "000001" : "000000";
  EXPECT_EQ(post_totp(wrong).status, 401);
  net::HttpResponse ok = post_totp(code);
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_TRUE(IsConsentPage(ok));

  // The same code in a new browser: refused (single use).
  Browser b2;
  net::HttpResponse page2 = Authorize(b2, AuthorizeParams("openid user/Observation.rs"));
  totp = Login(b2, page2, "bob", kBobPassword);
  b = b2;
  EXPECT_EQ(post_totp(code).status, 401);
  clock_.Advance(30);
  net::HttpResponse next = post_totp(crypto::TotpCode(seed.UnsafeView(), Now()));
  EXPECT_EQ(next.status, 200) << next.body;
}

// ---------------------------------------------------------------------------
// Refresh tokens

TEST_F(AuthServerTest, RefreshIdleAndAbsoluteExpiry) {
  options_.refresh_idle_seconds = 1000;
  options_.refresh_absolute_seconds = 2500;
  MakeServer();
  Browser b;
  int64_t t0 = Now();
  net::HttpResponse t = ExchangeCode(GetCode(b, kPatientScopes));
  ASSERT_EQ(t.status, 200) << t.body;
  std::string rt = Str(Body(t), "refresh_token");
  // Idle: used within 1000 s it lives on (and rotates) ...
  clock_.Set(t0 + 999);
  net::HttpResponse r1 = Refresh(rt);
  ASSERT_EQ(r1.status, 200) << r1.body;
  rt = Str(Body(r1), "refresh_token");
  // ... but not once 1000 s passed without use.
  clock_.Set(t0 + 999 + 1000);
  net::HttpResponse idle = Refresh(rt);
  EXPECT_EQ(idle.status, 400);
  EXPECT_EQ(Str(Body(idle), "error"), "invalid_grant");
  EXPECT_NE(Str(Body(idle), "error_description").find("expired"), std::string::npos);

  // Absolute: regular use does not extend the grant beyond 2500 s.
  Browser b2;
  t0 = Now();
  t = ExchangeCode(GetCode(b2, kPatientScopes));
  ASSERT_EQ(t.status, 200) << t.body;
  rt = Str(Body(t), "refresh_token");
  for (int64_t at : {900, 1800, 2499}) {
    clock_.Set(t0 + at);
    net::HttpResponse r = Refresh(rt);
    ASSERT_EQ(r.status, 200) << at << r.body;
    rt = Str(Body(r), "refresh_token");
  }
  clock_.Set(t0 + 2500);
  net::HttpResponse abs = Refresh(rt);
  EXPECT_EQ(abs.status, 400);
  EXPECT_EQ(Str(Body(abs), "error"), "invalid_grant");
}

TEST_F(AuthServerTest, RefreshReuseRevokesTheGrantAndScopeCanOnlyNarrow) {
  Browser b;
  net::HttpResponse t = ExchangeCode(GetCode(b, kPatientScopes));
  ASSERT_EQ(t.status, 200);
  const std::string rt1 = Str(Body(t), "refresh_token");
  net::HttpResponse wider = Refresh(rt1, {}, "patient/Observation.rs patient/Patient.rs");
  EXPECT_EQ(Str(Body(wider), "error"), "invalid_scope");
  net::HttpResponse narrow = Refresh(rt1, {}, "patient/Observation.rs");
  ASSERT_EQ(narrow.status, 200) << narrow.body;
  EXPECT_EQ(Str(Body(narrow), "scope"), "patient/Observation.rs");
  const std::string rt2 = Str(Body(narrow), "refresh_token");
  const std::string jti2 = Str(PeekClaims(Str(Body(narrow), "access_token")), "jti");
  // rt1 again: a reuse → the whole grant is revoked.
  net::HttpResponse reuse = Refresh(rt1);
  EXPECT_EQ(Str(Body(reuse), "error"), "invalid_grant");
  EXPECT_TRUE(revocations_.IsRevoked(jti2));
  EXPECT_EQ(Str(Body(Refresh(rt2)), "error"), "invalid_grant");
}

// ---------------------------------------------------------------------------
// DPoP at the token endpoint

TEST_F(AuthServerTest, DpopNonceRequiredThenAccepted) {
  auto key = jose::SigningKey::Generate(jose::Algorithm::kES256, "client-dpop");
  ASSERT_TRUE(key.ok());
  auto jkt = jose::JwkThumbprint(ProofJwk(*key));
  ASSERT_TRUE(jkt.ok());
  const std::string htu = std::string(kIssuer) + "/token";
  Browser b;
  const std::string code = GetCode(b, kPatientScopes);

  net::HttpResponse first = ExchangeCode(code, {{"DPoP", DpopProof(*key, "POST", htu, Now(), "")}});
  ASSERT_EQ(first.status, 400) << first.body;
  EXPECT_EQ(Str(Body(first), "error"), "use_dpop_nonce");
  const std::string nonce = Header(first, "DPoP-Nonce");
  ASSERT_EQ(nonce.size(), 43u);
  EXPECT_TRUE(nonces_.Valid(nonce, Now()));

  // The code was not consumed by the refused request.
  net::HttpResponse ok = ExchangeCode(code, {{"DPoP", DpopProof(*key, "POST", htu, Now(), nonce)}});
  ASSERT_EQ(ok.status, 200) << ok.body;
  json::Value body = Body(ok);
  EXPECT_EQ(Str(body, "token_type"), "DPoP");
  json::Value claims = PeekClaims(Str(body, "access_token"));
  ASSERT_NE(claims.Find("cnf"), nullptr);
  EXPECT_EQ(Str(*claims.Find("cnf"), "jkt"), *jkt);
  const std::string rt = Str(body, "refresh_token");

  // A public client's grant is bound to the DPoP key.
  net::HttpResponse no_proof = Refresh(rt);
  EXPECT_EQ(Str(Body(no_proof), "error"), "invalid_grant") << no_proof.body;
  auto other = jose::SigningKey::Generate(jose::Algorithm::kES256, "other");
  net::HttpResponse other_key =
      Refresh(rt, {{"DPoP", DpopProof(*other, "POST", htu, Now(), nonce)}});
  EXPECT_EQ(Str(Body(other_key), "error"), "invalid_grant") << other_key.body;
  // A proof for another URL or method.
  EXPECT_EQ(Str(Body(Refresh(rt, {{"DPoP", DpopProof(*key, "GET", htu, Now(), nonce)}})), "error"),
            "invalid_dpop_proof");
  EXPECT_EQ(
      Str(Body(Refresh(
              rt, {{"DPoP", DpopProof(*key, "POST", std::string(kIssuer) + "/x", Now(), nonce)}})),
          "error"),
      "invalid_dpop_proof");
  // Two proofs.
  EXPECT_EQ(Str(Body(Refresh(rt, {{"DPoP", DpopProof(*key, "POST", htu, Now(), nonce)},
                                  {"DPoP", DpopProof(*key, "POST", htu, Now(), nonce)}})),
                "error"),
            "invalid_dpop_proof");
  const std::string proof = DpopProof(*key, "POST", htu, Now(), nonce, "", "fixed-jti");
  net::HttpResponse good = Refresh(rt, {{"DPoP", proof}});
  ASSERT_EQ(good.status, 200) << good.body;
  EXPECT_EQ(Str(Body(good), "token_type"), "DPoP");
  // The same proof again: replayed.
  net::HttpResponse replayed = Refresh(Str(Body(good), "refresh_token"), {{"DPoP", proof}});
  EXPECT_EQ(Str(Body(replayed), "error"), "invalid_dpop_proof");
  // A nonce from long ago is not valid any more.
  const std::string old_nonce = nonce;
  clock_.Advance(1000);
  net::HttpResponse stale = Refresh(Str(Body(good), "refresh_token"),
                                    {{"DPoP", DpopProof(*key, "POST", htu, Now(), old_nonce)}});
  EXPECT_EQ(Str(Body(stale), "error"), "use_dpop_nonce");
  EXPECT_FALSE(Header(stale, "DPoP-Nonce").empty());
}

TEST_F(AuthServerTest, DpopWithoutNonceWhenNotRequired) {
  options_.dpop_nonce_required = false;
  MakeServer();
  auto key = jose::SigningKey::Generate(jose::Algorithm::kES256, "k");
  Browser b;
  net::HttpResponse ok =
      ExchangeCode(GetCode(b, kPatientScopes),
                   {{"DPoP", DpopProof(*key, "POST", std::string(kIssuer) + "/token", Now(), "")}});
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(Str(Body(ok), "token_type"), "DPoP");
}

// ---------------------------------------------------------------------------
// Client authentication

TEST_F(AuthServerTest, ClientCredentialsAndSecretRotationGrace) {
  Form f{{"grant_type", "client_credentials"}, {"scope", "system/Observation.rs"}};
  net::HttpResponse ok = Post("/token", FormText(f), nullptr, {{"Authorization", BasicAuth()}});
  ASSERT_EQ(ok.status, 200) << ok.body;
  json::Value body = Body(ok);
  EXPECT_EQ(Str(body, "scope"), "system/Observation.rs");
  EXPECT_EQ(body.Find("expires_in")->as_int64(), 300);
  EXPECT_EQ(body.Find("refresh_token"), nullptr);
  EXPECT_EQ(Str(PeekClaims(Str(body, "access_token")), "sub"), "conf");

  net::HttpResponse wrong =
      Post("/token", FormText(f), nullptr, {{"Authorization", BasicAuth("wrong-secret")}});
  EXPECT_EQ(wrong.status, 401);
  EXPECT_EQ(Str(Body(wrong), "error"), "invalid_client");
  EXPECT_NE(Header(wrong, "WWW-Authenticate").find("Basic"), std::string::npos);

  // Not a system scope, or not registered.
  Form user_scope{{"grant_type", "client_credentials"}, {"scope", "user/Observation.rs"}};
  EXPECT_EQ(
      Str(Body(Post("/token", FormText(user_scope), nullptr, {{"Authorization", BasicAuth()}})),
          "error"),
      "invalid_scope");
  // A public client cannot use client_credentials.
  Form pub{{"grant_type", "client_credentials"}, {"client_id", "app"}};
  EXPECT_EQ(Str(Body(Post("/token", FormText(pub))), "error"), "unauthorized_client");

  // Rotation: the old secret stays valid for the grace period only.
  const std::string old_secret = secret_;
  secret_ = Base64UrlEncode(RandomBytes(32));
  ASSERT_TRUE(store_->RotateSecret("conf", HashClientSecret(secret_), Now(), 100, 0).ok());
  const int64_t t0 = Now();
  EXPECT_EQ(Post("/token", FormText(f), nullptr, {{"Authorization", BasicAuth()}}).status, 200);
  EXPECT_EQ(Post("/token", FormText(f), nullptr, {{"Authorization", BasicAuth(old_secret)}}).status,
            200);
  clock_.Set(t0 + 100);
  EXPECT_EQ(Post("/token", FormText(f), nullptr, {{"Authorization", BasicAuth(old_secret)}}).status,
            401);
  EXPECT_EQ(Post("/token", FormText(f), nullptr, {{"Authorization", BasicAuth()}}).status, 200);
  // The old secret must not leak either.
  for (const auto& r : responses_) EXPECT_EQ(r.body.find(old_secret), std::string::npos);
}

TEST_F(AuthServerTest, RevokeAndIntrospect) {
  Browser b;
  net::HttpResponse t =
      ExchangeCode(GetCode(b, kPatientScopes, "alice", kPassword, "conf"), {}, "conf");
  ASSERT_EQ(t.status, 200) << t.body;
  const std::string at = Str(Body(t), "access_token");
  const std::string rt = Str(Body(t), "refresh_token");
  auto introspect = [&](const std::string& token) {
    return Body(Post("/introspect", FormText({{"token", token}}), nullptr,
                     {{"Authorization", BasicAuth()}}));
  };
  json::Value active = introspect(at);
  ASSERT_NE(active.Find("active"), nullptr);
  EXPECT_TRUE(active.Find("active")->as_bool());
  EXPECT_EQ(Str(active, "sub"), "alice");
  EXPECT_EQ(Str(active, "token_type"), "Bearer");
  EXPECT_TRUE(introspect(rt).Find("active")->as_bool());
  EXPECT_EQ(json::Write(introspect("garbage")), R"({"active":false})");
  // Public clients cannot introspect.
  net::HttpResponse pub = Post("/introspect", FormText({{"token", at}, {"client_id", "app"}}));
  EXPECT_EQ(pub.status, 401);

  // Another client revoking the token: 200, nothing happens.
  net::HttpResponse foreign = Post("/revoke", FormText({{"token", at}, {"client_id", "app"}}));
  EXPECT_EQ(foreign.status, 200);
  EXPECT_TRUE(introspect(at).Find("active")->as_bool());

  net::HttpResponse rev =
      Post("/revoke", FormText({{"token", at}}), nullptr, {{"Authorization", BasicAuth()}});
  EXPECT_EQ(rev.status, 200);
  EXPECT_TRUE(revocations_.IsRevoked(Str(PeekClaims(at), "jti")));
  EXPECT_EQ(json::Write(introspect(at)), R"({"active":false})");
  // The refresh token revokes the grant.
  EXPECT_EQ(
      Post("/revoke", FormText({{"token", rt}}), nullptr, {{"Authorization", BasicAuth()}}).status,
      200);
  EXPECT_EQ(json::Write(introspect(rt)), R"({"active":false})");
  EXPECT_EQ(
      Post("/revoke", FormText({{"token", "unknown"}}), nullptr, {{"Authorization", BasicAuth()}})
          .status,
      200);
}

// ---------------------------------------------------------------------------
// Authorization request validation

TEST_F(AuthServerTest, UnregisteredRedirectIsAnErrorPageNeverARedirect) {
  Browser b;
  Form p = AuthorizeParams(kPatientScopes);
  p[2].second = "https://evil.example/cb";
  net::HttpResponse r = Authorize(b, p);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(Header(r, "Location"), "");
  EXPECT_EQ(Header(r, "Content-Type"), "text/html; charset=utf-8");
  // Unknown client.
  Form q = AuthorizeParams(kPatientScopes, "nobody");
  net::HttpResponse u = Authorize(b, q);
  EXPECT_EQ(u.status, 400);
  EXPECT_EQ(Header(u, "Location"), "");
  // Prefix of a registered URI.
  p[2].second = std::string(kRedirect) + "/more";
  EXPECT_EQ(Authorize(b, p).status, 400);
}

TEST_F(AuthServerTest, LoopbackRedirectMayDifferInPortOnly) {
  Browser b;
  Form p = AuthorizeParams(kPatientScopes);
  p[2].second = "http://127.0.0.1:51234/cb";
  EXPECT_EQ(Authorize(b, p).status, 200);
  p[2].second = "http://127.0.0.1:51234/other";
  EXPECT_EQ(Authorize(b, p).status, 400);
  p[2].second = "http://localhost:51234/cb";
  EXPECT_EQ(Authorize(b, p).status, 400) << "another host";
}

// Regression: RedirectMatches() once treated everything between the loopback
// host and the first '/' as a port, so "http://127.0.0.1:1@evil.example/cb"
// (userinfo "127.0.0.1:1", host evil.example) matched the registered
// "http://127.0.0.1/cb" and the code went to evil.example.
TEST_F(AuthServerTest, LoopbackRedirectWithUserinfoIsNotLoopback) {
  Browser b;
  Form p = AuthorizeParams(kPatientScopes);
  p[2].second = "http://127.0.0.1:1@evil.example/cb";
  net::HttpResponse r = Authorize(b, p);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(Header(r, "Location"), "");
  EXPECT_FALSE(IsLoginPage(r));
  for (const char* uri : {"http://127.0.0.1:abc/cb", "http://127.0.0.1.evil.example/cb",
                          "http://127.0.0.1:51234@evil.example:80/cb"}) {
    p[2].second = uri;
    EXPECT_EQ(Authorize(b, p).status, 400) << uri;
  }
}

TEST_F(AuthServerTest, AuthorizeErrorsRedirectBackWithStateAndIss) {
  struct Case {
    std::string param, value, error;
  };
  for (const Case& c : std::vector<Case>{
           {"response_type", "token", "unsupported_response_type"},
           {"code_challenge_method", "plain", "invalid_request"},
           {"code_challenge", "short", "invalid_request"},
           {"aud", "https://other.example/fhir", "invalid_request"},
           {"scope", "patient/Observation.cruds system/*.rs", "invalid_scope"},
           {"scope", "", "invalid_scope"},
           {"purpose_of_use", "TREAT NOPE", "invalid_request"},
       }) {
    Browser b;
    Form p = AuthorizeParams(kPatientScopes);
    bool replaced = false;
    for (auto& [k, v] : p) {
      if (k == c.param) {
        v = c.value;
        replaced = true;
      }
    }
    if (!replaced) p.emplace_back(c.param, c.value);
    net::HttpResponse r = Authorize(b, p);
    ASSERT_EQ(r.status, 302) << c.param << "=" << c.value << ": " << r.body;
    auto params = LocationParams(r);
    EXPECT_EQ(params["error"], c.error) << c.param << "=" << c.value;
    EXPECT_EQ(params["state"], "st-123");
    EXPECT_EQ(params["iss"], kIssuer);
  }
  // An unknown launch.
  Browser b;
  Form p = AuthorizeParams(kPatientScopes);
  p.emplace_back("launch", "nope");
  EXPECT_EQ(LocationParams(Authorize(b, p))["error"], "invalid_request");
  // A trailing slash on aud is fine.
  Form q = AuthorizeParams(kPatientScopes);
  q[5].second = std::string(kIssuer) + "/";
  EXPECT_EQ(Authorize(b, q).status, 200);
}

TEST_F(AuthServerTest, PatientScopesNeedAPatient) {
  // bob is a Practitioner and there is no launch context.
  Browser b;
  net::HttpResponse page =
      Login(b, Authorize(b, AuthorizeParams("openid patient/Observation.rs")), "bob", kBobPassword);
  ASSERT_TRUE(IsConsentPage(page));
  net::HttpResponse r = Consent(b, page, {"patient/Observation.rs"});
  ASSERT_EQ(r.status, 302);
  EXPECT_EQ(LocationParams(r)["error"], "invalid_request");

  // With an EHR launch context.
  ASSERT_TRUE(store_->AddLaunch({"L1", "p42", "e7", Now() + 300}).ok());
  Form p = AuthorizeParams("openid launch patient/Observation.rs");
  p.emplace_back("launch", "L1");
  net::HttpResponse page2 = Authorize(b, p);
  ASSERT_TRUE(IsConsentPage(page2)) << page2.body;
  net::HttpResponse r2 = Consent(b, page2, {"patient/Observation.rs"});
  ASSERT_EQ(r2.status, 302);
  net::HttpResponse t = ExchangeCode(LocationParams(r2)["code"]);
  ASSERT_EQ(t.status, 200) << t.body;
  EXPECT_EQ(Str(Body(t), "patient"), "p42");
  EXPECT_EQ(Str(Body(t), "encounter"), "e7");
  EXPECT_EQ(Str(PeekClaims(Str(Body(t), "access_token")), "fhirUser"), "Practitioner/b1");
}

TEST_F(AuthServerTest, PushedAuthorizationRequestIsSingleUseAndExpires) {
  Form f = AuthorizeParams(kPatientScopes);
  net::HttpResponse par = Post("/par", FormText(f));
  ASSERT_EQ(par.status, 201) << par.body;
  const std::string uri = Str(Body(par), "request_uri");
  ASSERT_EQ(uri.rfind("urn:ietf:params:oauth:request_uri:", 0), 0u);
  EXPECT_EQ(Body(par).Find("expires_in")->as_int64(), 60);
  Browser b;
  Form use{{"client_id", "app"}, {"request_uri", uri}};
  net::HttpResponse page = Authorize(b, use);
  EXPECT_EQ(page.status, 200) << page.body;
  EXPECT_TRUE(IsLoginPage(page));
  net::HttpResponse again = Authorize(b, use);
  EXPECT_EQ(again.status, 400) << "single use";
  // Expiry after 60 s.
  const std::string uri2 = Str(Body(Post("/par", FormText(f))), "request_uri");
  clock_.Advance(60);
  EXPECT_EQ(Authorize(b, {{"client_id", "app"}, {"request_uri", uri2}}).status, 400);
  // Another client cannot use it.
  const std::string uri3 = Str(Body(Post("/par", FormText(f))), "request_uri");
  EXPECT_EQ(Authorize(b, {{"client_id", "conf"}, {"request_uri", uri3}}).status, 400);
  // request_uri is not accepted at /par itself.
  Form nested = f;
  nested.emplace_back("request_uri", uri3);
  EXPECT_EQ(Str(Body(Post("/par", FormText(nested))), "error"), "invalid_request");
}

TEST_F(AuthServerTest, Userinfo) {
  Browser b;
  net::HttpResponse t = ExchangeCode(GetCode(b, kPatientScopes));
  ASSERT_EQ(t.status, 200);
  const std::string at = Str(Body(t), "access_token");
  net::HttpRequest req;
  req.method = "GET";
  req.target = "/userinfo";
  req.headers.emplace_back("Authorization", "Bearer " + at);
  net::HttpResponse ok = Send(req);
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(Str(Body(ok), "sub"), "alice");
  EXPECT_EQ(Str(Body(ok), "fhirUser"), std::string(kIssuer) + "/Patient/p1");
  // Revoked → 401.
  ASSERT_EQ(Post("/revoke", FormText({{"token", at}, {"client_id", "app"}})).status, 200);
  EXPECT_EQ(Send(req).status, 401);
  // Without openid → 403.
  net::HttpResponse t2 = ExchangeCode(GetCode(b, "patient/Observation.rs"));
  ASSERT_EQ(t2.status, 200) << t2.body;
  net::HttpRequest req2 = req;
  req2.headers = {{"Authorization", "Bearer " + Str(Body(t2), "access_token")}};
  EXPECT_EQ(Send(req2).status, 403);
  // An unbound token under the DPoP scheme → 401.
  req2.headers = {{"Authorization", "DPoP " + Str(Body(t2), "access_token")}};
  EXPECT_EQ(Send(req2).status, 401);
  req2.headers = {{"Authorization", "Bearer not-a-token"}};
  EXPECT_EQ(Send(req2).status, 401);
}

// ---------------------------------------------------------------------------
// Form parsing refusals through the endpoints

TEST_F(AuthServerTest, MalformedFormsAreInvalidRequest) {
  for (const char* body :
       {"grant_type=authorization_code&code=%zz&client_id=app",
        "grant_type=authorization_code&code=abc%&client_id=app",
        "grant_type=authorization_code&code=abc%4&client_id=app",
        "grant_type=authorization_code&code=%G0&client_id=app",
        "grant_type=client_credentials&grant_type=client_credentials&client_id=app",
        "grant_type=refresh_token&client_id=app&client_id=app&refresh_token=x"}) {
    for (const char* path : {"/token", "/revoke", "/par"}) {
      net::HttpResponse r = Post(path, body);
      EXPECT_EQ(r.status, 400) << path << " " << body << ": " << r.body;
      EXPECT_EQ(Str(Body(r), "error"), "invalid_request") << path << " " << body;
    }
  }
  net::HttpResponse rep = Post("/token", "grant_type=client_credentials&grant_type=refresh_token");
  EXPECT_NE(Str(Body(rep), "error_description").find("grant_type"), std::string::npos);
  // Introspection refuses before authenticating too.
  net::HttpResponse intro =
      Post("/introspect", "token=%zz", nullptr, {{"Authorization", BasicAuth()}});
  EXPECT_EQ(Str(Body(intro), "error"), "invalid_request");
  // Too many parameters.
  std::string many;
  for (int i = 0; i < 70; ++i) many += "p" + std::to_string(i) + "=1&";
  EXPECT_EQ(Str(Body(Post("/token", many)), "error"), "invalid_request");
  // Parameters in the URL, wrong content type, wrong method.
  EXPECT_EQ(Str(Body(Post("/token?grant_type=client_credentials", "client_id=app")), "error"),
            "invalid_request");
  net::HttpRequest json_req;
  json_req.method = "POST";
  json_req.target = "/token";
  json_req.headers.emplace_back("Content-Type", "application/json");
  json_req.body = R"({"grant_type":"client_credentials"})";
  EXPECT_EQ(Str(Body(Send(json_req)), "error"), "invalid_request");
  net::HttpResponse get = Get("/token");
  EXPECT_EQ(get.status, 405);

  // The authorization endpoint answers with an error page (no redirect).
  Browser b;
  std::string q = FormText(AuthorizeParams(kPatientScopes));
  net::HttpResponse bad = Get("/authorize?" + q + "&state=%zz", &b);
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(Header(bad, "Location"), "");
  net::HttpResponse repeated = Get("/authorize?" + q + "&state=again", &b);
  EXPECT_EQ(repeated.status, 400);
  EXPECT_EQ(Header(repeated, "Location"), "");
  net::HttpResponse post_bad = Post("/authorize", q + "&x=%", &b);
  EXPECT_EQ(post_bad.status, 400);
  // The same parameters well formed, by POST, work.
  EXPECT_EQ(Post("/authorize", q, &b).status, 200);
  // Login form with bad encoding.
  EXPECT_EQ(Post("/authorize/login", "request=%zz", &b).status, 400);
}

TEST_F(AuthServerTest, DiscoveryAndJwks) {
  net::HttpResponse smart = Get("/.well-known/smart-configuration");
  ASSERT_EQ(smart.status, 200);
  EXPECT_EQ(Header(smart, "Access-Control-Allow-Origin"), "*");
  json::Value m = Body(smart);
  EXPECT_EQ(Str(m, "issuer"), kIssuer);
  EXPECT_EQ(Str(m, "token_endpoint"), std::string(kIssuer) + "/token");
  EXPECT_NE(m.Find("capabilities"), nullptr);
  json::Value oidc = Body(Get("/.well-known/openid-configuration"));
  ASSERT_NE(oidc.Find("authorization_response_iss_parameter_supported"), nullptr);
  EXPECT_TRUE(oidc.Find("authorization_response_iss_parameter_supported")->as_bool());
  net::HttpResponse jwks = Get("/jwks");
  ASSERT_EQ(jwks.status, 200);
  EXPECT_EQ(Header(jwks, "Access-Control-Allow-Origin"), "*");
  json::Value set = Body(jwks);
  ASSERT_NE(set.Find("keys"), nullptr);
  EXPECT_EQ(set.Find("keys")->items().size(), 2u);
  EXPECT_EQ(jwks.body.find("\"d\""), std::string::npos) << "no private members";
  EXPECT_EQ(Post("/jwks", "").status, 405);
  EXPECT_TRUE(AuthorizationServer::Handles("/token"));
  EXPECT_FALSE(AuthorizationServer::Handles("/Patient"));
}

// ---------------------------------------------------------------------------
// Scopes

TEST(ScopeAllowedTest, Table) {
  struct Row {
    const char* requested;
    const char* registered;
    bool allowed;
  };
  const Row rows[] = {
      {"patient/Observation.rs", "patient/*.rs", true},
      {"patient/Observation.r", "patient/*.rs", true},
      {"patient/Observation.s", "patient/*.rs", true},
      {"patient/*.rs", "patient/*.rs", true},
      {"patient/Observation.c", "patient/*.rs", false},
      {"patient/Observation.cruds", "patient/*.rs", false},
      {"user/Observation.rs", "patient/*.rs", false},
      {"system/Observation.rs", "patient/*.rs", false},
      {"patient/*.rs", "patient/Observation.rs", false},
      {"patient/Patient.rs", "patient/Observation.rs", false},
      // v1 forms are normalised.
      {"patient/Observation.rs", "patient/*.read", true},
      {"patient/Observation.read", "patient/*.rs", true},
      {"patient/Observation.write", "patient/*.cruds", true},
      {"patient/Observation.write", "patient/*.rs", false},
      {"patient/Observation.cud", "patient/*.write", true},
      {"patient/Observation.cruds", "patient/*.*", true},
      // Query restrictions.
      {"patient/Observation.rs?category=x", "patient/Observation.rs?category=x", true},
      {"patient/Observation.r?category=x", "patient/Observation.rs?category=x", true},
      {"patient/Observation.rs", "patient/Observation.rs?category=x", false},
      {"patient/Observation.rs?category=y", "patient/Observation.rs?category=x", false},
      {"patient/Observation.rs?category=x&code=1", "patient/Observation.rs?category=x", false},
      {"patient/Observation.rs?category=x", "patient/*.rs", true},
      // Non-resource scopes: exact only.
      {"openid", "openid fhirUser", true},
      {"fhirUser", "openid fhirUser", true},
      {"profile", "openid fhirUser", false},
      {"launch", "launch/patient", false},
      {"launch/patient", "launch", false},
      {"offline_access", "online_access", false},
      {"openid", "", false},
      // Malformed resource scopes are not covered by wildcards.
      {"patient/Observation.sr", "patient/*.rs", false},
      {"patient/Observation", "patient/*.rs", false},
      {"patient/Observation.rs", "patient/*.sr user/*.rs", false},
      // Several registered scopes.
      {"user/Observation.rs", "openid patient/*.rs user/Observation.cruds", true},
  };
  for (const Row& r : rows) {
    EXPECT_EQ(ScopeAllowed(r.requested, r.registered), r.allowed)
        << r.requested << " under \"" << r.registered << "\"";
  }
}

TEST(HashClientSecretTest, IsStableHexAndSalted) {
  const std::string h = HashClientSecret("s3cret");
  EXPECT_EQ(h.size(), 64u);
  EXPECT_EQ(h, HashClientSecret("s3cret"));
  EXPECT_NE(h, HashClientSecret("s3cret2"));
  EXPECT_NE(h, HexEncode(crypto::Sha256("s3cret"))) << "domain-separated";
}

}  // namespace
}  // namespace fhirward::oauth
