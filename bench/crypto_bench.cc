// What sealing and opening a stored record costs (crypto::KeyRing), per resource size,
// beside the primitive (`bench/crypto-run` prints `openssl speed -evp aes-256-gcm` for the
// same sizes next to it). One thread, Google Benchmark:
//
//   aead_seal/N, aead_open/N     AES-256-GCM through crypto::Aead (a fresh random nonce,
//                                 key already expanded): the primitive as fhirward calls it
//   record_seal/N, record_open/N  the format-2 record envelope: data key from the cache,
//                                 HKDF-SHA256 record key, AES-256-GCM
//   record_open_uncached/N        as record_open with data_key_cache_seconds = 0: the
//                                 tenant key unwrapped by the KEK and the data key by the
//                                 tenant key on every open (local KEK file)
//   record_open_uncached_hsm/N    the same with the KEK on a PKCS#11 token: one HSM
//                                 C_Decrypt per open (only when FHIRWARD_BENCH_HSM_MODULE,
//                                 _TOKEN and _PIN_SOURCE are set; bench/crypto-run does)
//
// usage: crypto_bench [Google Benchmark flags]
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <cstdio>
#include <memory>
#include <string>

#include "common/clock.h"
#include "crypto/aead.h"
#include "crypto/keyring.h"
#include "crypto/kms.h"
#include "crypto/pkcs11.h"

namespace fw = fhirward;
namespace crypto = fhirward::crypto;

namespace {

constexpr int kSizes[] = {256, 1024, 4096, 16384, 65536};

std::string Dir() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/fhirward-crypto-bench-XXXXXX";
    return std::string(mkdtemp(tmpl));
  }();
  return dir;
}

struct Ring {
  std::unique_ptr<crypto::VersionedKek> kek;
  std::unique_ptr<crypto::KeyRing> ring;
};

Ring MakeRing(const std::string& name, int cache_seconds, bool hsm) {
  Ring r;
  std::unique_ptr<crypto::KeyManagementService> backend;
  if (hsm) {
    crypto::Pkcs11Options o;
    o.module = std::getenv("FHIRWARD_BENCH_HSM_MODULE");
    o.token_label = std::getenv("FHIRWARD_BENCH_HSM_TOKEN");
    o.pin_source = std::getenv("FHIRWARD_BENCH_HSM_PIN_SOURCE");
    auto kms = crypto::OpenPkcs11Kms(o);
    if (!kms.ok()) {
      std::fprintf(stderr, "crypto_bench: %s\n", std::string(kms.status().message()).c_str());
      std::abort();
    }
    backend = std::move(*kms);
  } else {
    backend = crypto::NewLocalKms(Dir());
  }
  r.kek = std::move(*crypto::VersionedKek::Open(std::move(backend), true));
  r.ring = std::move(*crypto::KeyRing::Open(
      {.path = Dir() + "/" + name + ".db", .kek = r.kek.get(), .cache_seconds = cache_seconds}));
  return r;
}

void AeadSeal(benchmark::State& state) {
  auto aead = std::move(*crypto::Aead::NewAes256Gcm(fw::RandomSecret(32)));
  std::string plain(state.range(0), 'x');
  for (auto _ : state) benchmark::DoNotOptimize(aead->Encrypt(plain, "ad"));
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void AeadOpen(benchmark::State& state) {
  auto aead = std::move(*crypto::Aead::NewAes256Gcm(fw::RandomSecret(32)));
  std::string sealed = *aead->Encrypt(std::string(state.range(0), 'x'), "ad");
  for (auto _ : state) benchmark::DoNotOptimize(aead->Decrypt(sealed, "ad"));
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void RecordSeal(benchmark::State& state) {
  static Ring r = MakeRing("seal", 3600, false);
  std::string plain(state.range(0), 'x');
  for (auto _ : state) benchmark::DoNotOptimize(r.ring->Seal("t", {"p1"}, plain, "ad"));
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void OpenWith(benchmark::State& state, Ring& r) {
  std::string sealed = *r.ring->Seal("t", {"p1"}, std::string(state.range(0), 'x'), "ad");
  for (auto _ : state) {
    auto p = r.ring->Open("t", sealed, "ad");
    if (!p.ok()) state.SkipWithError("open failed");
    benchmark::DoNotOptimize(p);
  }
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void RecordOpen(benchmark::State& state) {
  static Ring r = MakeRing("open", 3600, false);
  OpenWith(state, r);
}

void RecordOpenUncached(benchmark::State& state) {
  static Ring r = MakeRing("uncached", 0, false);
  OpenWith(state, r);
}

void RecordOpenUncachedHsm(benchmark::State& state) {
  if (std::getenv("FHIRWARD_BENCH_HSM_MODULE") == nullptr) {
    state.SkipWithError("no HSM configured (run bench/crypto-run)");
    return;
  }
  static Ring r = MakeRing("hsm", 0, true);
  OpenWith(state, r);
}

void Sizes(benchmark::internal::Benchmark* b) {
  for (int n : kSizes) b->Arg(n);
}

BENCHMARK(AeadSeal)->Name("aead_seal")->Apply(Sizes);
BENCHMARK(AeadOpen)->Name("aead_open")->Apply(Sizes);
BENCHMARK(RecordSeal)->Name("record_seal")->Apply(Sizes);
BENCHMARK(RecordOpen)->Name("record_open")->Apply(Sizes);
BENCHMARK(RecordOpenUncached)->Name("record_open_uncached")->Arg(1024);
BENCHMARK(RecordOpenUncachedHsm)->Name("record_open_uncached_hsm")->Arg(1024);

}  // namespace

BENCHMARK_MAIN();
