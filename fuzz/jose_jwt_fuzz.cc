// libFuzzer target: compact JWT verification (outside input: every bearer
// token). Must never crash, and must never accept a token it did not sign.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "jose/jws.h"
#include "json/value.h"

using namespace fhirward;

namespace {
const jose::KeySet& Keys() {
  static const jose::KeySet* keys = [] {
    auto* ks = new jose::KeySet();
    ks->Add(jose::SigningKey::Generate(jose::Algorithm::kES256, "es")->public_key());
    ks->Add(jose::SigningKey::Generate(jose::Algorithm::kRS256, "rs")->public_key());
    return ks;
  }();
  return *keys;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view token(reinterpret_cast<const char*>(data), size);
  jose::JwtExpectations expect;
  expect.issuer = "https://issuer";
  expect.audience = {"https://fhir"};
  expect.now = 1700000000;
  auto v = jose::VerifyJwt(token, Keys(), expect);
  // The keys are fresh per process: no input can carry a valid signature.
  if (v.ok()) std::abort();
  return 0;
}
