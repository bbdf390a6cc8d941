// libFuzzer target: DPoP proof verification (outside input: the DPoP header of every token and
// resource request). Must never crash; the replay cache must stay bounded.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "jose/dpop.h"

using namespace fhirward;

namespace {
constexpr int64_t kNow = 1700000000;

const jose::DpopNonces& Nonces() {
  static const auto* nonces = new jose::DpopNonces(std::string(32, 'n'), 300);
  return *nonces;
}

jose::ReplayCache& Replay() {
  static auto* cache = new jose::ReplayCache(1024);
  return *cache;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view proof(reinterpret_cast<const char*>(data), size);
  // Without nonce, token, key binding or replay cache: reaches every claim check.
  jose::DpopExpectations plain;
  plain.method = "POST";
  plain.url = "https://fhir.example/token?x=1";
  plain.now = kNow;
  auto v = jose::VerifyDpopProof(proof, plain);
  // A proof that verifies carries a signature made with its own header key, which the fuzzer
  // can only produce by accident or from the corpus; its result must then be consistent.
  if (v.ok() && (v->jkt.size() != 43 || v->jti.empty() || v->jti.size() > 256)) std::abort();

  // Everything bound: nonce, access token, key thumbprint and replay cache.
  jose::DpopExpectations bound = plain;
  bound.access_token = "access-token";
  bound.jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
  bound.nonces = &Nonces();
  bound.replay = &Replay();
  (void)jose::VerifyDpopProof(proof, bound);

  // The thumbprint of an arbitrary JSON value.
  if (auto parsed = json::Parse(proof); parsed.ok()) (void)jose::JwkThumbprint(*parsed);
  return 0;
}
