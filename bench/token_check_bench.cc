// What the resource server's token check costs per request (server::Authenticator::Authenticate
// with an AuthInput, as the FHIR API calls it), on one thread, with Google Benchmark.
//
//   cached        the same Bearer token every time: verified-token cache hit (SHA-256 of the
//                 token, one hash lookup, the revocation list)
//   uncached      a different Bearer token every time (4096 pre-signed, cycled; the
//                 authenticator's cache holds 1 entry, so every check is a miss): JWT parse and
//                 ES256 signature verification, claims, scopes, then the cache insert
//   dpop_cached   a DPoP-bound token (cnf.jkt; cached after its first use) with a fresh proof
//                 per request (pre-signed, each with its own jti, htm/htu/iat/ath): the cache
//                 hit plus the proof's ES256 verification, thumbprint and replay cache
//   dpop_uncached both: a new DPoP-bound token and its proof per request
//   sign_es256 / verify_es256  the primitives alone (jose::SigningKey::Sign, PublicKey::Verify)
//
// usage: token_check_bench [--benchmark_min_time=1] [other Google Benchmark flags]
// The issuer key is jose::SigningKey::Generate(ES256); the revocation list holds 1000 entries
// (none of them the measured tokens). `make bench-token` runs it pinned to one core.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/encoding.h"
#include "crypto/aead.h"
#include "jose/dpop.h"
#include "jose/jws.h"
#include "json/value.h"
#include "oauth/revocation.h"
#include "server/authenticator.h"

namespace fw = fhirward;
using fw::json::Value;

namespace {

constexpr const char* kIssuer = "https://127.0.0.1:8443";
constexpr const char* kBase = "https://127.0.0.1:8443";
constexpr const char* kUrl = "https://127.0.0.1:8443/Patient/bench-1";
constexpr size_t kTokens = 4096;   // distinct tokens for the cache-miss cases
constexpr size_t kProofs = 50000;  // distinct DPoP proofs (40,000 measured)

template <typename T>
T Must(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "token_check_bench: %s: %s\n", what, v.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(v);
}

struct Fixture {
  fw::SystemClock clock;
  fw::jose::SigningKey issuer_key =
      Must(fw::jose::SigningKey::Generate(fw::jose::Algorithm::kES256, "own-1"), "issuer key");
  fw::jose::SigningKey dpop_key =
      Must(fw::jose::SigningKey::Generate(fw::jose::Algorithm::kES256, "dpop"), "dpop key");
  fw::oauth::RevocationList revocations;
  std::string jkt;
  Value dpop_jwk;
  int64_t now = clock.NowSeconds();
  size_t serial = 0;

  Fixture() {
    for (int i = 0; i < 1000; ++i) revocations.Add("revoked-" + std::to_string(i), now + 3600);
    dpop_jwk = dpop_key.public_key().ToJwk();
    dpop_jwk.Erase("kid");
    dpop_jwk.Erase("alg");
    dpop_jwk.Erase("use");
    jkt = Must(fw::jose::JwkThumbprint(dpop_jwk), "thumbprint");
  }

  // An access token as the authorization server issues it (RFC 9068, typ at+jwt).
  std::string Token(bool dpop_bound) {
    Value c = Value::MakeObject();
    c.Set("iss", Value::String(kIssuer));
    c.Set("sub", Value::String("bench-user"));
    c.Set("aud", Value::String(kBase));
    c.Set("exp", Value::Int(now + 3600));
    c.Set("iat", Value::Int(now));
    c.Set("jti", Value::String("tok-" + std::to_string(++serial)));
    c.Set("client_id", Value::String("bench"));
    c.Set("scope", Value::String("user/*.cruds"));
    if (dpop_bound) {
      Value cnf = Value::MakeObject();
      cnf.Set("jkt", Value::String(jkt));
      c.Set("cnf", std::move(cnf));
    }
    return Must(fw::jose::SignCompact(issuer_key, c, "at+jwt"), "sign token");
  }

  // A DPoP proof for GET kUrl bound to `token` (ath), with its own jti.
  std::string Proof(const std::string& token) {
    Value h = Value::MakeObject();
    h.Set("typ", Value::String("dpop+jwt"));
    h.Set("alg", Value::String("ES256"));
    h.Set("jwk", dpop_jwk);
    Value c = Value::MakeObject();
    c.Set("jti", Value::String("proof-" + std::to_string(++serial)));
    c.Set("htm", Value::String("GET"));
    c.Set("htu", Value::String(kUrl));
    c.Set("iat", Value::Int(now));
    c.Set("ath", Value::String(fw::Base64UrlEncode(fw::crypto::Sha256(token))));
    std::string input =
        fw::Base64UrlEncode(fw::json::Write(h)) + "." + fw::Base64UrlEncode(fw::json::Write(c));
    return input + "." + fw::Base64UrlEncode(Must(dpop_key.Sign(input), "sign proof"));
  }

  std::unique_ptr<fw::server::Authenticator> MakeAuthenticator(size_t cache_entries,
                                                               fw::jose::ReplayCache* replay) {
    fw::server::AuthenticatorOptions o;
    fw::server::IssuerTrust t;
    t.issuer = kIssuer;
    t.audiences = {kBase};
    t.keys.Add(issuer_key.public_key());
    t.required_typ = "at+jwt";
    t.own = true;
    o.issuers = {t};
    o.cache_entries = cache_entries;
    o.revocations = &revocations;
    o.dpop_replay = replay;
    return std::make_unique<fw::server::Authenticator>(std::move(o), &clock);
  }
};

Fixture& F() {
  static Fixture* f = new Fixture();
  return *f;
}

void Check(const absl::StatusOr<std::shared_ptr<const fw::policy::Principal>>& p,
           benchmark::State& state) {
  if (!p.ok()) state.SkipWithError(("refused: " + p.status().ToString()).c_str());
}

void BM_Cached(benchmark::State& state) {
  auto auth = F().MakeAuthenticator(100000, nullptr);
  const std::string header = "Bearer " + F().Token(false);
  fw::server::AuthInput in;
  in.authorization = header;
  in.method = "GET";
  in.url = kUrl;
  Check(auth->Authenticate(in), state);  // the first check verifies and caches
  for (auto _ : state) {
    auto p = auth->Authenticate(in);
    benchmark::DoNotOptimize(p);
  }
  Check(auth->Authenticate(in), state);
  if (!auth->IsCached(header)) state.SkipWithError("token not cached");
}
BENCHMARK(BM_Cached)->Name("cached");

void BM_Uncached(benchmark::State& state) {
  auto auth = F().MakeAuthenticator(1, nullptr);
  std::vector<std::string> headers;
  for (size_t i = 0; i < kTokens; ++i) headers.push_back("Bearer " + F().Token(false));
  fw::server::AuthInput in;
  in.method = "GET";
  in.url = kUrl;
  size_t i = 0;
  for (auto _ : state) {
    in.authorization = headers[i++ % kTokens];
    auto p = auth->Authenticate(in);
    if (!p.ok()) {
      state.SkipWithError(p.status().ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(p);
  }
}
BENCHMARK(BM_Uncached)->Name("uncached");

void BM_DpopCached(benchmark::State& state) {
  fw::jose::ReplayCache replay(kProofs + 1024);
  auto auth = F().MakeAuthenticator(100000, &replay);
  const std::string token = F().Token(true);
  const std::string header = "DPoP " + token;
  std::vector<std::string> proofs;
  proofs.reserve(kProofs);
  for (size_t i = 0; i < kProofs; ++i) proofs.push_back(F().Proof(token));
  fw::server::AuthInput in;
  in.authorization = header;
  in.method = "GET";
  in.url = kUrl;
  size_t i = 0;
  in.dpop = {proofs[i++]};
  Check(auth->Authenticate(in), state);  // caches the token
  for (auto _ : state) {
    if (i == kProofs) {
      state.SkipWithError("ran out of pre-signed proofs");
      break;
    }
    in.dpop[0] = proofs[i++];
    auto p = auth->Authenticate(in);
    if (!p.ok()) {
      state.SkipWithError(p.status().ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(p);
  }
}
BENCHMARK(BM_DpopCached)->Name("dpop_cached")->Iterations(40000);

void BM_DpopUncached(benchmark::State& state) {
  fw::jose::ReplayCache replay(kTokens * 2);
  auto auth = F().MakeAuthenticator(1, &replay);
  std::vector<std::pair<std::string, std::string>> reqs;
  for (size_t i = 0; i < kTokens; ++i) {
    std::string t = F().Token(true);
    reqs.emplace_back("DPoP " + t, F().Proof(t));
  }
  fw::server::AuthInput in;
  in.method = "GET";
  in.url = kUrl;
  in.dpop = {std::string_view()};
  size_t i = 0;
  for (auto _ : state) {
    if (i == kTokens) {
      state.SkipWithError("ran out of pre-signed requests");
      break;
    }
    in.authorization = reqs[i].first;
    in.dpop[0] = reqs[i].second;
    ++i;
    auto p = auth->Authenticate(in);
    if (!p.ok()) {
      state.SkipWithError(p.status().ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(p);
  }
}
BENCHMARK(BM_DpopUncached)->Name("dpop_uncached")->Iterations(4000);

void BM_Verify(benchmark::State& state) {
  const fw::jose::PublicKey pub = F().issuer_key.public_key();
  const std::string input = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9";
  const std::string sig = Must(F().issuer_key.Sign(input), "sign");
  for (auto _ : state) {
    bool ok = pub.Verify(input, sig);
    if (!ok) {
      state.SkipWithError("verify failed");
      break;
    }
    benchmark::DoNotOptimize(ok);
  }
}
BENCHMARK(BM_Verify)->Name("verify_es256");

void BM_Sign(benchmark::State& state) {
  const std::string input = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9";
  for (auto _ : state) {
    auto s = F().issuer_key.Sign(input);
    benchmark::DoNotOptimize(s);
  }
}
BENCHMARK(BM_Sign)->Name("sign_es256");

}  // namespace

BENCHMARK_MAIN();
