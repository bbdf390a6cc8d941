// Hostile proofs for the Merkle verifiers (a verifier gets proofs, sizes and
// roots from outside). Properties: no crash, and a proof for a leaf that is not
// in the tree never verifies.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "audit/merkle.h"

using namespace fhirward::audit;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static merkle::MemoryNodes* nodes = [] {
    auto* n = new merkle::MemoryNodes();
    for (int i = 0; i < 100; ++i) n->Append(merkle::LeafHash("record " + std::to_string(i)));
    return n;
  }();
  if (size < 4) return 0;
  const uint64_t a = data[0] % 101, b = data[1] % 101;
  const bool mutate_root = data[2] & 1;
  std::string rest(reinterpret_cast<const char*>(data + 4), size - 4);
  std::vector<std::string> proof;
  for (size_t off = 0; off + merkle::kHashBytes <= rest.size(); off += merkle::kHashBytes) {
    proof.push_back(rest.substr(off, merkle::kHashBytes));
  }
  if (rest.size() % merkle::kHashBytes != 0) proof.push_back(rest.substr(rest.size() / 32 * 32));
  const uint64_t n = std::max(a, b), m = std::min(a, b);
  std::string root_n = *merkle::Root(*nodes, n);
  std::string root_m = *merkle::Root(*nodes, m);
  if (mutate_root) root_n[data[3] % 32] ^= 1;
  if (merkle::VerifyInclusion(merkle::LeafHash("not a record"), m, n, proof, root_n)) {
    std::fprintf(stderr, "a leaf outside the tree verified\n");
    std::abort();
  }
  (void)merkle::VerifyConsistency(m, n, root_m, root_n, proof);
  // Real proofs with the fuzzer's bytes XORed in verify only when unchanged.
  if (n > 0) {
    auto real = merkle::InclusionProof(*nodes, m % n, n);
    if (real.ok()) {
      auto p = *real;
      bool changed = false;
      for (size_t i = 0; i < p.size() && i < rest.size(); ++i) {
        p[i][0] ^= rest[i];
        changed |= rest[i] != 0;
      }
      bool ok = merkle::VerifyInclusion(merkle::LeafHash("record " + std::to_string(m % n)), m % n,
                                        n, p, root_n);
      if (ok && (changed || mutate_root)) {
        std::fprintf(stderr, "a modified inclusion proof verified\n");
        std::abort();
      }
    }
  }
  return 0;
}
