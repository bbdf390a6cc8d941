#include "audit/merkle.h"

#include "common/error.h"
#include "crypto/aead.h"

namespace fhirward::audit::merkle {
namespace {

bool IsPowerOfTwo(uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

// The largest power of two strictly smaller than n (n >= 2).
uint64_t SplitPoint(uint64_t n) {
  uint64_t k = 1;
  while (k << 1 < n) k <<= 1;
  return k;
}

int Log2(uint64_t n) {
  int l = 0;
  while ((uint64_t{1} << l) < n) ++l;
  return l;
}

absl::Status Path(NodeSource& nodes, uint64_t index, uint64_t begin, uint64_t end,
                  std::vector<std::string>& out) {
  const uint64_t n = end - begin;
  if (n == 1) return absl::OkStatus();
  const uint64_t k = SplitPoint(n);
  if (index < k) {
    if (auto s = Path(nodes, index, begin, begin + k, out); !s.ok()) return s;
    auto right = RangeHash(nodes, begin + k, end);
    if (!right.ok()) return right.status();
    out.push_back(std::move(*right));
  } else {
    if (auto s = Path(nodes, index - k, begin + k, end, out); !s.ok()) return s;
    auto left = RangeHash(nodes, begin, begin + k);
    if (!left.ok()) return left.status();
    out.push_back(std::move(*left));
  }
  return absl::OkStatus();
}

absl::Status SubProof(NodeSource& nodes, uint64_t m, uint64_t begin, uint64_t end, bool whole,
                      std::vector<std::string>& out) {
  const uint64_t n = end - begin;
  if (m == n) {
    if (whole) return absl::OkStatus();
    auto h = RangeHash(nodes, begin, end);
    if (!h.ok()) return h.status();
    out.push_back(std::move(*h));
    return absl::OkStatus();
  }
  const uint64_t k = SplitPoint(n);
  if (m <= k) {
    if (auto s = SubProof(nodes, m, begin, begin + k, whole, out); !s.ok()) return s;
    auto right = RangeHash(nodes, begin + k, end);
    if (!right.ok()) return right.status();
    out.push_back(std::move(*right));
  } else {
    if (auto s = SubProof(nodes, m - k, begin + k, end, false, out); !s.ok()) return s;
    auto left = RangeHash(nodes, begin, begin + k);
    if (!left.ok()) return left.status();
    out.push_back(std::move(*left));
  }
  return absl::OkStatus();
}

bool Lsb(uint64_t x) { return (x & 1) != 0; }

}  // namespace

std::string LeafHash(std::string_view leaf) {
  std::string in;
  in.reserve(1 + leaf.size());
  in.push_back('\x00');
  in.append(leaf);
  return crypto::Sha256(in);
}

std::string NodeHash(std::string_view left, std::string_view right) {
  std::string in;
  in.reserve(1 + left.size() + right.size());
  in.push_back('\x01');
  in.append(left);
  in.append(right);
  return crypto::Sha256(in);
}

std::string EmptyRoot() { return crypto::Sha256(""); }

void MemoryNodes::Append(std::string leaf_hash) {
  if (levels_.empty()) levels_.emplace_back();
  levels_[0].push_back(std::move(leaf_hash));
  // Complete every perfect subtree the new leaf closes.
  for (size_t l = 0; levels_[l].size() % 2 == 0; ++l) {
    if (levels_.size() == l + 1) levels_.emplace_back();
    const auto& row = levels_[l];
    levels_[l + 1].push_back(NodeHash(row[row.size() - 2], row[row.size() - 1]));
  }
}

absl::StatusOr<std::string> MemoryNodes::Perfect(int level, uint64_t index) {
  if (level < 0 || static_cast<size_t>(level) >= levels_.size() || index >= levels_[level].size()) {
    return Error(ErrorCode::kNotFound, "no complete subtree at level " + std::to_string(level) +
                                           " index " + std::to_string(index));
  }
  return levels_[level][index];
}

void Frontier::Append(std::string leaf_hash, std::vector<Node>* completed) {
  std::string h = std::move(leaf_hash);
  int level = 0;
  uint64_t index = size_;
  if (completed != nullptr) completed->push_back({0, index, h});
  // Each set low bit of the old size is a subtree the new one merges with.
  while ((size_ >> level) & 1) {
    h = NodeHash(edge_[level], h);
    ++level;
    index >>= 1;
    if (completed != nullptr) completed->push_back({level, index, h});
  }
  if (edge_.size() <= static_cast<size_t>(level)) edge_.resize(level + 1);
  edge_[level] = std::move(h);
  ++size_;
}

std::string Frontier::Root() const {
  if (size_ == 0) return EmptyRoot();
  std::string r;
  for (size_t l = 0; l < edge_.size(); ++l) {
    if (((size_ >> l) & 1) == 0) continue;
    r = r.empty() ? edge_[l] : NodeHash(edge_[l], r);
  }
  return r;
}

absl::StatusOr<Frontier> Frontier::Load(NodeSource& nodes, uint64_t size) {
  Frontier f;
  f.size_ = size;
  for (int l = 0; l < 64 && (size >> l) != 0; ++l) {
    if (((size >> l) & 1) == 0) continue;
    auto h = nodes.Perfect(l, (size >> l) - 1);
    if (!h.ok()) return h.status();
    if (f.edge_.size() <= static_cast<size_t>(l)) f.edge_.resize(l + 1);
    f.edge_[l] = std::move(*h);
  }
  return f;
}

absl::StatusOr<std::string> RangeHash(NodeSource& nodes, uint64_t begin, uint64_t end) {
  if (end <= begin) return Error(ErrorCode::kInvalidParameter, "empty or reversed leaf range");
  const uint64_t n = end - begin;
  if (IsPowerOfTwo(n) && begin % n == 0) return nodes.Perfect(Log2(n), begin / n);
  const uint64_t k = SplitPoint(n);
  auto left = RangeHash(nodes, begin, begin + k);
  if (!left.ok()) return left.status();
  auto right = RangeHash(nodes, begin + k, end);
  if (!right.ok()) return right.status();
  return NodeHash(*left, *right);
}

absl::StatusOr<std::string> Root(NodeSource& nodes, uint64_t size) {
  if (size == 0) return EmptyRoot();
  return RangeHash(nodes, 0, size);
}

absl::StatusOr<std::vector<std::string>> InclusionProof(NodeSource& nodes, uint64_t index,
                                                        uint64_t size) {
  if (index >= size) {
    return Error(ErrorCode::kInvalidParameter, "leaf index " + std::to_string(index) +
                                                   " is not in a tree of " + std::to_string(size));
  }
  std::vector<std::string> out;
  if (auto s = Path(nodes, index, 0, size, out); !s.ok()) return s;
  return out;
}

absl::StatusOr<std::vector<std::string>> ConsistencyProof(NodeSource& nodes, uint64_t old_size,
                                                          uint64_t new_size) {
  if (old_size > new_size) {
    return Error(ErrorCode::kInvalidParameter, "the first tree is larger than the second");
  }
  std::vector<std::string> out;
  if (old_size == 0 || old_size == new_size) return out;
  if (auto s = SubProof(nodes, old_size, 0, new_size, true, out); !s.ok()) return s;
  return out;
}

bool VerifyInclusion(std::string_view leaf_hash, uint64_t index, uint64_t size,
                     const std::vector<std::string>& proof, std::string_view root) {
  if (index >= size || leaf_hash.size() != kHashBytes || root.size() != kHashBytes) return false;
  uint64_t fn = index;
  uint64_t sn = size - 1;
  std::string r(leaf_hash);
  for (const std::string& p : proof) {
    if (sn == 0 || p.size() != kHashBytes) return false;
    if (Lsb(fn) || fn == sn) {
      r = NodeHash(p, r);
      if (!Lsb(fn)) {
        while (!Lsb(fn) && fn != 0) {
          fn >>= 1;
          sn >>= 1;
        }
      }
    } else {
      r = NodeHash(r, p);
    }
    fn >>= 1;
    sn >>= 1;
  }
  return sn == 0 && crypto::ConstantTimeEquals(r, root);
}

bool VerifyConsistency(uint64_t old_size, uint64_t new_size, std::string_view old_root,
                       std::string_view new_root, const std::vector<std::string>& proof) {
  if (old_root.size() != kHashBytes || new_root.size() != kHashBytes) return false;
  if (old_size > new_size) return false;
  if (old_size == new_size) return proof.empty() && crypto::ConstantTimeEquals(old_root, new_root);
  if (old_size == 0) return proof.empty();  // the empty tree is a prefix of every tree
  if (proof.empty()) return false;
  std::vector<std::string> c;
  c.reserve(proof.size() + 1);
  if (IsPowerOfTwo(old_size)) c.emplace_back(old_root);
  for (const auto& p : proof) {
    if (p.size() != kHashBytes) return false;
    c.push_back(p);
  }
  uint64_t fn = old_size - 1;
  uint64_t sn = new_size - 1;
  while (Lsb(fn)) {
    fn >>= 1;
    sn >>= 1;
  }
  std::string fr = c[0];
  std::string sr = c[0];
  for (size_t i = 1; i < c.size(); ++i) {
    if (sn == 0) return false;
    if (Lsb(fn) || fn == sn) {
      fr = NodeHash(c[i], fr);
      sr = NodeHash(c[i], sr);
      if (!Lsb(fn)) {
        while (!Lsb(fn) && fn != 0) {
          fn >>= 1;
          sn >>= 1;
        }
      }
    } else {
      sr = NodeHash(sr, c[i]);
    }
    fn >>= 1;
    sn >>= 1;
  }
  return sn == 0 && crypto::ConstantTimeEquals(fr, old_root) &&
         crypto::ConstantTimeEquals(sr, new_root);
}

}  // namespace fhirward::audit::merkle
