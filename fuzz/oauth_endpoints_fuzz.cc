// libFuzzer target: the authorization server's endpoints on arbitrary input —
// form bodies (/token, /par, /revoke, /introspect, /authorize/login and
// /consent), query strings (/authorize), Authorization and DPoP headers and
// cookies — with a real OAuth store, key ring and replay caches in a temp dir.
// The first input byte picks the endpoint and which headers are attached.
#include <stdlib.h>

#include <cstdint>
#include <string>

#include "common/clock.h"
#include "crypto/kms.h"
#include "oauth/authorization_server.h"

using namespace fhirward;

namespace {

struct World {
  std::unique_ptr<crypto::KeyEncryptionService> kek;
  std::unique_ptr<oauth::OAuthStore> store;
  std::unique_ptr<oauth::SigningKeyRing> ring;
  oauth::RevocationList revocations;
  jose::ReplayCache replay{4096};
  jose::ReplayCache dpop_replay{4096};
  std::unique_ptr<jose::DpopNonces> nonces;
  SecretBytes session_key{std::string(32, 's')};
  std::unique_ptr<oauth::AuthorizationServer> server;
};

World& W() {
  static World* w = [] {
    auto* w = new World();
    char tmpl[] = "/tmp/fhirward-oauth-fuzz-XXXXXX";
    std::string dir = mkdtemp(tmpl);
    w->kek = std::move(*crypto::OpenLocalKeyFile(dir + "/kek.key", true));
    w->store = std::move(*oauth::OAuthStore::Open(dir + "/oauth.db"));
    w->ring = std::move(*oauth::SigningKeyRing::Open(dir, "k", 0));
    w->nonces = std::make_unique<jose::DpopNonces>(std::string(32, 'n'));
    oauth::Client pub;
    pub.client_id = "app";
    pub.redirect_uris = {"https://app/cb", "http://127.0.0.1/cb"};
    pub.scope = "openid fhirUser offline_access patient/*.rs launch/patient";
    pub.grant_types = {"authorization_code", "refresh_token"};
    (void)w->store->AddClient(pub);
    oauth::Client conf;
    conf.client_id = "svc";
    conf.auth = oauth::ClientAuth::kSecretBasic;
    conf.secret_hash = oauth::HashClientSecret("secret");
    conf.scope = "system/*.rs";
    conf.grant_types = {"client_credentials"};
    (void)w->store->AddClient(conf);
    oauth::AuthServerOptions o;
    o.issuer = "https://fhir";
    o.argon2.m_cost_kib = 8192;
    o.argon2.t_cost = 1;
    oauth::AuthServerDeps d;
    d.store = w->store.get();
    d.keys = w->ring.get();
    d.kek = w->kek.get();
    d.clock = &SystemClock::Get();
    d.revocations = &w->revocations;
    d.replay = &w->replay;
    d.dpop_replay = &w->dpop_replay;
    d.nonces = w->nonces.get();
    d.session_key = &w->session_key;
    w->server = std::make_unique<oauth::AuthorizationServer>(std::move(o), d);
    return w;
  }();
  return *w;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  World& w = W();
  const uint8_t sel = data[0];
  std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  static const char* kPaths[] = {"/token",
                                 "/par",
                                 "/revoke",
                                 "/introspect",
                                 "/authorize",
                                 "/authorize/login",
                                 "/authorize/consent",
                                 "/authorize/totp",
                                 "/userinfo"};
  net::HttpRequest req;
  req.tls_version = "TLSv1.3";
  req.remote_ip = "127.0.0.1";
  const char* path = kPaths[sel % 9];
  if (std::string(path) == "/authorize" && (sel & 0x10)) {
    req.method = "GET";
    req.target = std::string(path) + "?" + text;
  } else {
    req.method = "POST";
    req.target = path;
    req.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
    req.body = text;
  }
  // Split a header value off the end of the input ("\n" separated) when asked.
  if (sel & 0x20) {
    size_t nl = text.rfind('\n');
    std::string value = nl == std::string::npos ? text : text.substr(nl + 1);
    req.headers.emplace_back((sel & 0x40) ? "DPoP" : "Authorization", value);
  }
  if (sel & 0x80) req.headers.emplace_back("Cookie", "__Host-fw_browser=" + text.substr(0, 64));
  (void)w.server->Handle(req);
  return 0;
}
