// The Merkle tree of RFC 6962 §2.1 (RFC 9162 §2.1), over SHA-256:
//
//   leaf hash  = SHA-256(0x00 || leaf)
//   node hash  = SHA-256(0x01 || left || right)
//   MTH(D[n])  = the node hash of MTH(D[0:k]) and MTH(D[k:n]), k the largest
//                power of two smaller than n; MTH of one leaf is its leaf hash;
//                MTH of no leaves is SHA-256("").
//
// Proofs are computed from a NodeSource that returns the hash of a perfect
// subtree (2^level leaves starting at index * 2^level), so a store that keeps
// those hashes answers any proof with O(log n) lookups; `MemoryNodes` keeps
// them in memory (tests, small trees). Verification follows RFC 9162
// §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) and needs only hashes.
// All hashes are 32 raw bytes.
#ifndef FHIRWARD_AUDIT_MERKLE_H_
#define FHIRWARD_AUDIT_MERKLE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fhirward::audit::merkle {

inline constexpr size_t kHashBytes = 32;

std::string LeafHash(std::string_view leaf);
std::string NodeHash(std::string_view left, std::string_view right);
std::string EmptyRoot();  // SHA-256 of the empty string

class NodeSource {
 public:
  virtual ~NodeSource() = default;
  // The hash of leaves [index << level, (index + 1) << level); level 0 is a leaf hash.
  virtual absl::StatusOr<std::string> Perfect(int level, uint64_t index) = 0;
};

// Leaf hashes in memory; perfect subtrees are computed once and kept.
class MemoryNodes final : public NodeSource {
 public:
  void Append(std::string leaf_hash);
  uint64_t size() const { return levels_.empty() ? 0 : levels_[0].size(); }
  absl::StatusOr<std::string> Perfect(int level, uint64_t index) override;

 private:
  // levels_[l][i]: the perfect subtree of level l at index i, as far as complete.
  std::vector<std::vector<std::string>> levels_;
};

// The right edge of a growing tree: one perfect subtree per set bit of its
// size (the "compact range" of [0, size)). Appending a leaf completes the
// perfect subtrees it closes; the root of the current size folds the edge.
// Memory O(log n): used by the audit writer and by the streaming verifier.
class Frontier {
 public:
  struct Node {
    int level = 0;
    uint64_t index = 0;
    std::string hash;
  };
  uint64_t size() const { return size_; }
  // Adds a leaf hash. `completed` gets every perfect subtree the leaf
  // completes, the leaf itself (level 0) first, then upwards.
  void Append(std::string leaf_hash, std::vector<Node>* completed);
  // MTH of the `size()` leaves so far (EmptyRoot() when none).
  std::string Root() const;
  // The edge of a tree of `size` leaves, read from stored perfect subtrees.
  static absl::StatusOr<Frontier> Load(NodeSource& nodes, uint64_t size);

 private:
  uint64_t size_ = 0;
  std::vector<std::string> edge_;  // edge_[l] is meaningful iff bit l of size_ is set
};

// MTH(D[begin:end]). kInvalidParameter for an empty or reversed range.
absl::StatusOr<std::string> RangeHash(NodeSource& nodes, uint64_t begin, uint64_t end);
// The root of the first `size` leaves (EmptyRoot() for 0).
absl::StatusOr<std::string> Root(NodeSource& nodes, uint64_t size);

// PATH(index, D[size]) of RFC 6962 §2.1.1, leaf to root.
absl::StatusOr<std::vector<std::string>> InclusionProof(NodeSource& nodes, uint64_t index,
                                                        uint64_t size);
// PROOF(old_size, D[new_size]) of RFC 6962 §2.1.2 (empty when equal).
absl::StatusOr<std::vector<std::string>> ConsistencyProof(NodeSource& nodes, uint64_t old_size,
                                                          uint64_t new_size);

// RFC 9162 §2.1.3.2: does `proof` show `leaf_hash` at `index` in the tree of
// `size` leaves with `root`? False on any malformed input (never throws).
bool VerifyInclusion(std::string_view leaf_hash, uint64_t index, uint64_t size,
                     const std::vector<std::string>& proof, std::string_view root);
// RFC 9162 §2.1.4.2: is the tree (old_size, old_root) a prefix of (new_size, new_root)?
bool VerifyConsistency(uint64_t old_size, uint64_t new_size, std::string_view old_root,
                       std::string_view new_root, const std::vector<std::string>& proof);

}  // namespace fhirward::audit::merkle

#endif  // FHIRWARD_AUDIT_MERKLE_H_
