// Hostile bytes where a stored record's envelope belongs: the format-2 parser
// of the key ring, the format-1 envelope, and the versioned KEK's unwrap.
// Properties: no crash, no sanitizer report, and nothing opens except an
// envelope that was really sealed (bytes unchanged, same associated data).
#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "crypto/envelope.h"
#include "crypto/keyring.h"
#include "crypto/kms.h"

using namespace fhirward;

namespace {

struct World {
  std::unique_ptr<crypto::VersionedKek> kek;
  std::unique_ptr<crypto::KeyRing> ring;
  std::vector<std::string> sealed;  // format 2 and format 1 envelopes of "plain", AD "ad"
};

World& W() {
  static World* w = [] {
    auto* w = new World();
    char tmpl[] = "/tmp/fhirward-fuzz-envelope-XXXXXX";
    std::string dir = mkdtemp(tmpl);
    w->kek = std::move(*crypto::VersionedKek::Open(crypto::NewLocalKms(dir), true));
    w->ring = std::move(*crypto::KeyRing::Open(
        {.path = dir + "/keys.db", .kek = w->kek.get(), .cache_seconds = 3600}));
    w->sealed.push_back(*w->ring->Seal("t", {"p1"}, "plain", "ad"));
    w->sealed.push_back(*w->ring->Seal("t", {"p1", "p2"}, "plain", "ad"));
    w->sealed.push_back(*w->ring->Seal("t", {}, "plain", "ad"));
    w->sealed.push_back(*crypto::EnvelopeCipher(w->kek.get()).Seal("plain", "ad"));
    return w;
  }();
  return *w;
}

bool IsSealed(const std::string& s) {
  for (const auto& e : W().sealed) {
    if (e == s) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = W();
  std::string in(reinterpret_cast<const char*>(data), size);
  // Mutations of a real envelope reach deeper than random bytes: the first
  // byte picks a seed, the rest are XORed over it.
  std::string candidate = in;
  if (!in.empty() && (static_cast<uint8_t>(in[0]) & 1)) {
    candidate = w.sealed[static_cast<uint8_t>(in[0]) % w.sealed.size()];
    for (size_t i = 1; i < in.size() && i - 1 < candidate.size(); ++i) candidate[i - 1] ^= in[i];
    if (in.size() > candidate.size() + 1) candidate.append(in.substr(candidate.size() + 1));
  }
  (void)crypto::KeyRing::KeyIdsOf(candidate);
  auto opened = w.ring->Open("t", candidate, "ad");
  if (opened.ok() && (!IsSealed(candidate) || *opened != "plain")) {
    std::fprintf(stderr, "a forged format-2 envelope opened\n");
    abort();
  }
  auto v1 = crypto::EnvelopeCipher(w.kek.get()).Open(candidate, "ad");
  if (v1.ok() && (!IsSealed(candidate) || *v1 != "plain")) {
    std::fprintf(stderr, "a forged format-1 envelope opened\n");
    abort();
  }
  (void)w.kek->Unwrap(candidate, "ad");
  return 0;
}
