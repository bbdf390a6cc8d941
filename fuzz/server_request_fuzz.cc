// libFuzzer target: the whole request pipeline on arbitrary method, target,
// headers and body (routing, query parsing, content negotiation, JSON body,
// idempotency keys, history cursors), with a real SQLite store in a temp dir.
// The first input byte chooses whether a valid token is attached so that
// paths behind authentication are reached too.
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "common/clock.h"
#include "crypto/keyring.h"
#include "crypto/kms.h"
#include "jose/jws.h"
#include "json/value.h"
#include "server/fhir_service.h"
#include "server/log.h"

using namespace fhirward;

namespace {

class NullAudit final : public audit::AuditLog {
 public:
  absl::StatusOr<int64_t> Append(const audit::AuditRecord&) override { return ++n_; }
  void Close() override {}

 private:
  int64_t n_ = 0;
};

struct World {
  std::unique_ptr<crypto::VersionedKek> kek;
  std::unique_ptr<crypto::KeyRing> ring;
  SecretBytes index_key{std::string(32, 'k')};
  std::unique_ptr<store::ResourceStore> store;
  NullAudit audit;
  std::unique_ptr<policy::PolicyEngine> policy;
  std::unique_ptr<server::Authenticator> auth;
  std::unique_ptr<server::RateLimiter> limiter;
  SecretBytes cursor_key{std::string(32, 'c')};
  std::unique_ptr<server::FhirService> service;
  std::string token;
};

World& W() {
  static World* w = [] {
    auto* w = new World();
    server::InitLogging("off");
    char tmpl[] = "/tmp/fhirward-fuzz-XXXXXX";
    std::string dir = mkdtemp(tmpl);
    w->kek = std::move(*crypto::VersionedKek::Open(crypto::NewLocalKms(dir), true));
    w->ring = std::move(*crypto::KeyRing::Open({.path = dir + "/keys.db", .kek = w->kek.get()}));
    w->store = std::move(*store::OpenSqliteStore({.path = dir + "/fhir.db",
                                                  .kek = w->kek.get(),
                                                  .keyring = w->ring.get(),
                                                  .index_key = &w->index_key}));
    w->policy = policy::NewScopePolicyEngine();
    auto key = *jose::SigningKey::Generate(jose::Algorithm::kES256, "k");
    server::AuthenticatorOptions ao;
    server::IssuerTrust t;
    t.issuer = "https://iss";
    t.audiences = {"https://fhir"};
    t.keys.Add(key.public_key());
    ao.issuers.push_back(std::move(t));
    w->auth = std::make_unique<server::Authenticator>(std::move(ao), &SystemClock::Get());
    w->limiter = std::make_unique<server::RateLimiter>(0, 1);
    json::Value c = json::Value::MakeObject();
    c.Set("iss", json::Value::String("https://iss"));
    c.Set("aud", json::Value::String("https://fhir"));
    c.Set("sub", json::Value::String("fuzz"));
    c.Set("scope", json::Value::String("patient/*.cruds"));
    c.Set("patient", json::Value::String("p1"));
    c.Set("exp", json::Value::Int(SystemClock::Get().NowSeconds() + 86400 * 365));
    w->token = *jose::SignCompact(key, c, "at+jwt");
    server::ServiceDeps d;
    d.base_url = "https://fhir";
    d.store = w->store.get();
    d.audit = &w->audit;
    d.policy = w->policy.get();
    d.authenticator = w->auth.get();
    d.rate_limiter = w->limiter.get();
    d.cursor_key = &w->cursor_key;
    d.clock = &SystemClock::Get();
    w->service = std::make_unique<server::FhirService>(std::move(d));
    return w;
  }();
  return *w;
}

// Splits the input at '\n' into: method, target, then "Name: value" headers
// up to an empty line, then the body.
net::HttpRequest RequestFrom(std::string_view in) {
  net::HttpRequest r;
  auto next_line = [&]() {
    size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
    return line;
  };
  r.method = std::string(next_line());
  r.target = std::string(next_line());
  while (!in.empty()) {
    std::string_view line = next_line();
    if (line.empty()) break;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    r.headers.emplace_back(std::string(line.substr(0, colon)), std::string(line.substr(colon + 1)));
  }
  r.body = std::string(in);
  r.remote_ip = "127.0.0.1";
  r.tls_version = "TLSv1.3";
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  World& w = W();
  net::HttpRequest r =
      RequestFrom(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  if (data[0] & 1) r.headers.emplace_back("Authorization", "Bearer " + w.token);
  net::HttpResponse res = w.service->Handle(std::move(r));
  if (res.status < 100 || res.status > 599) abort();
  return 0;
}
