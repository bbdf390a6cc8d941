#include "audit/merkle.h"

#include <fstream>
#include <map>
#include <sstream>

#include "common/encoding.h"
#include "gtest/gtest.h"
#include "json/value.h"

namespace fhirward::audit::merkle {
namespace {

std::string Hex(const std::string& b) { return HexEncode(b); }
std::string Raw(std::string_view hex) { return HexDecode(hex).value(); }

std::vector<std::string> Hashes(const json::Value& a) {
  std::vector<std::string> out;
  for (const auto& h : a.items()) out.push_back(Raw(h.as_string()));
  return out;
}

uint64_t U(const json::Value& v, std::string_view k) {
  return static_cast<uint64_t>(v.Find(k)->as_int64().value());
}

class MerkleVectors : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ifstream in(std::string(FHIRWARD_SOURCE_DIR) + "/src/audit/testdata/merkle_vectors.json");
    ASSERT_TRUE(in) << "missing src/audit/testdata/merkle_vectors.json";
    std::stringstream ss;
    ss << in.rdbuf();
    auto v = json::Parse(ss.str());
    ASSERT_TRUE(v.ok()) << v.status();
    vectors_ = std::move(*v);
    for (const auto& l : vectors_.Find("leaves")->items())
      nodes_.Append(LeafHash(Raw(l.as_string())));
  }
  json::Value vectors_;
  MemoryNodes nodes_;
};

// Vectors from an independent implementation of RFC 6962 §2.1
// (tools/gen-merkle-vectors.py); the 8-leaf root is the Certificate
// Transparency reference value.
TEST_F(MerkleVectors, RootsOfEveryPrefix) {
  for (const auto& r : vectors_.Find("roots")->items()) {
    auto root = Root(nodes_, U(r, "size"));
    ASSERT_TRUE(root.ok()) << root.status();
    EXPECT_EQ(Hex(*root), r.GetString("root").value()) << "size " << U(r, "size");
  }
  EXPECT_EQ(Hex(*Root(nodes_, 8)),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328");
}

// The writer's streaming edge gives the vectors' roots at every size, reports
// exactly the perfect subtrees the store keeps, and reloads from them.
TEST_F(MerkleVectors, FrontierRootsCompletedNodesAndReload) {
  std::map<uint64_t, std::string> roots;
  for (const auto& r : vectors_.Find("roots")->items()) roots[U(r, "size")] = *r.GetString("root");
  Frontier f;
  EXPECT_EQ(Hex(f.Root()), roots.at(0));
  MemoryNodes again;
  int completed_total = 0;
  for (const auto& l : vectors_.Find("leaves")->items()) {
    std::vector<Frontier::Node> done;
    const uint64_t index = f.size();
    f.Append(LeafHash(Raw(l.as_string())), &done);
    again.Append(LeafHash(Raw(l.as_string())));
    ASSERT_FALSE(done.empty());
    EXPECT_EQ(done[0].level, 0);
    EXPECT_EQ(done[0].index, index);
    for (const auto& n : done) {
      auto want = nodes_.Perfect(n.level, n.index);
      ASSERT_TRUE(want.ok()) << n.level << "/" << n.index;
      EXPECT_EQ(Hex(n.hash), Hex(*want)) << n.level << "/" << n.index;
    }
    completed_total += static_cast<int>(done.size());
    if (roots.count(f.size())) EXPECT_EQ(Hex(f.Root()), roots.at(f.size())) << f.size();
    auto reloaded = Frontier::Load(again, f.size());
    ASSERT_TRUE(reloaded.ok()) << reloaded.status();
    EXPECT_EQ(Hex(reloaded->Root()), Hex(f.Root())) << f.size();
  }
  // A tree of n leaves stores 2n - popcount(n) perfect subtrees.
  const uint64_t n = f.size();
  EXPECT_EQ(completed_total, static_cast<int>(2 * n - __builtin_popcountll(n)));
  EXPECT_FALSE(Frontier::Load(again, n + 1).ok());
}

TEST_F(MerkleVectors, InclusionProofsAndTheirCorruptions) {
  int valid = 0, invalid = 0;
  for (const auto& c : vectors_.Find("inclusion")->items()) {
    const uint64_t index = U(c, "index"), size = U(c, "size");
    const auto proof = Hashes(*c.Find("proof"));
    const bool expect = c.Find("valid")->as_bool();
    EXPECT_EQ(VerifyInclusion(Raw(*c.GetString("leaf_hash")), index, size, proof,
                              Raw(*c.GetString("root"))),
              expect)
        << c.GetString("case").value_or("valid") << " index " << index << " size " << size;
    if (expect) {
      ++valid;
      auto mine = InclusionProof(nodes_, index, size);
      ASSERT_TRUE(mine.ok()) << mine.status();
      EXPECT_EQ(*mine, proof) << "index " << index << " size " << size;
    } else {
      ++invalid;
    }
  }
  EXPECT_GT(valid, 40);
  EXPECT_GT(invalid, 200);
}

TEST_F(MerkleVectors, ConsistencyProofsAndTheirCorruptions) {
  int valid = 0, invalid = 0;
  for (const auto& c : vectors_.Find("consistency")->items()) {
    const uint64_t m = U(c, "old_size"), n = U(c, "new_size");
    const auto proof = Hashes(*c.Find("proof"));
    const bool expect = c.Find("valid")->as_bool();
    EXPECT_EQ(VerifyConsistency(m, n, Raw(*c.GetString("old_root")), Raw(*c.GetString("new_root")),
                                proof),
              expect)
        << c.GetString("case").value_or("valid") << " " << m << " -> " << n;
    if (expect) {
      ++valid;
      auto mine = ConsistencyProof(nodes_, m, n);
      ASSERT_TRUE(mine.ok()) << mine.status();
      EXPECT_EQ(*mine, proof) << m << " -> " << n;
    } else {
      ++invalid;
    }
  }
  EXPECT_GT(valid, 40);
  EXPECT_GT(invalid, 150);
}

// Every pair up to 40 leaves: proofs made by this code verify, and a verifier
// holding only an old tree head detects a rewrite of any earlier leaf.
TEST(Merkle, EveryProofUpTo40LeavesAndAnyRewriteIsDetected) {
  MemoryNodes nodes;
  for (int i = 0; i < 40; ++i) nodes.Append(LeafHash("record " + std::to_string(i)));
  for (uint64_t n = 1; n <= 40; ++n) {
    const std::string root = *Root(nodes, n);
    for (uint64_t i = 0; i < n; ++i) {
      auto p = InclusionProof(nodes, i, n);
      ASSERT_TRUE(p.ok());
      ASSERT_TRUE(VerifyInclusion(LeafHash("record " + std::to_string(i)), i, n, *p, root))
          << i << "/" << n;
      ASSERT_FALSE(VerifyInclusion(LeafHash("forged"), i, n, *p, root));
    }
    for (uint64_t m = 0; m <= n; ++m) {
      auto p = ConsistencyProof(nodes, m, n);
      ASSERT_TRUE(p.ok());
      ASSERT_TRUE(VerifyConsistency(m, n, *Root(nodes, m), root, *p)) << m << " -> " << n;
    }
  }
  // The same 40 records with record 7 rewritten: every tree head from before
  // size 8 still matches, none after, and no consistency proof bridges the two.
  MemoryNodes rewritten;
  for (int i = 0; i < 40; ++i) {
    rewritten.Append(LeafHash(i == 7 ? std::string("altered") : "record " + std::to_string(i)));
  }
  for (uint64_t m = 8; m < 40; ++m) {
    auto p = ConsistencyProof(rewritten, m, 40);
    ASSERT_TRUE(p.ok());
    EXPECT_FALSE(VerifyConsistency(m, 40, *Root(nodes, m), *Root(rewritten, 40), *p)) << m;
  }
  EXPECT_EQ(*Root(nodes, 7), *Root(rewritten, 7));
}

TEST(Merkle, BadArgumentsAreErrorsNotCrashes) {
  MemoryNodes nodes;
  for (int i = 0; i < 5; ++i) nodes.Append(LeafHash(std::to_string(i)));
  EXPECT_FALSE(InclusionProof(nodes, 5, 5).ok());
  EXPECT_FALSE(InclusionProof(nodes, 0, 6).ok()) << "beyond the stored leaves";
  EXPECT_FALSE(ConsistencyProof(nodes, 4, 3).ok());
  EXPECT_FALSE(RangeHash(nodes, 3, 3).ok());
  EXPECT_EQ(*Root(nodes, 0), EmptyRoot());
  const std::string root = *Root(nodes, 5);
  EXPECT_FALSE(VerifyInclusion("short", 0, 5, {}, root));
  EXPECT_FALSE(VerifyInclusion(LeafHash("0"), 0, 0, {}, root));
  EXPECT_FALSE(VerifyInclusion(LeafHash("0"), 0, 5, {"short"}, root));
  EXPECT_FALSE(VerifyConsistency(5, 5, root, root, {root}));
  EXPECT_FALSE(VerifyConsistency(3, 5, *Root(nodes, 3), root, {}));
  EXPECT_TRUE(VerifyConsistency(0, 5, EmptyRoot(), root, {}));
}

}  // namespace
}  // namespace fhirward::audit::merkle
