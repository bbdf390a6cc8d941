// Read access to the audit trail for the API and tools: records, signed tree
// heads and Merkle proofs (RFC 6962 §2.1.1 PATH and §2.1.2 PROOF) computed
// from the stored perfect subtrees in O(log n) lookups. Opens the database
// read-only; every call reads one consistent snapshot. Thread-safe (calls are
// serialised on one connection).
#ifndef FHIRWARD_AUDIT_AUDIT_READER_H_
#define FHIRWARD_AUDIT_AUDIT_READER_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "audit/audit_log.h"

namespace fhirward::audit {

struct StoredRecord {
  int64_t seq = 0;
  std::string json;  // the record as appended (AuditRecord::ToJson)
};

// A search of the trail, newest first. Every hit is re-checked against the
// record itself (terms and time), so the term index can only speed a search
// up, never make it return a record that does not match.
struct AuditQuery {
  // All must hold (k, v as in IndexTerms). Several values of one k: any.
  std::vector<std::pair<std::string, std::vector<std::string>>> terms;
  std::string time_from;   // inclusive, a FormatInstant() string ("" = open)
  std::string time_to;     // exclusive
  int64_t before_seq = 0;  // only records older than this (0 = from the newest)
  int limit = 50;          // records returned at most
  int max_scan = 10000;    // records examined at most (a page may then be short)
};
struct AuditPage {
  std::vector<StoredRecord> records;
  int64_t next_before = 0;  // the before_seq of the next page; 0 when none
};

class AuditReader {
 public:
  static absl::StatusOr<std::unique_ptr<AuditReader>> Open(const std::string& path);
  ~AuditReader();

  // Leaves in the stored tree (records committed with their nodes).
  absl::StatusOr<int64_t> TreeSize();
  absl::StatusOr<std::optional<TreeHead>> LatestTreeHead();
  // The stored head of exactly `tree_size` records, if one was signed.
  absl::StatusOr<std::optional<TreeHead>> TreeHeadAt(int64_t tree_size);
  // kNotFound for a seq that does not exist.
  absl::StatusOr<StoredRecord> Record(int64_t seq);
  // Audit path of record `seq` (leaf seq - 1) in the tree of `tree_size`
  // leaves. kInvalidParameter unless 1 <= seq <= tree_size <= TreeSize().
  absl::StatusOr<std::vector<std::string>> InclusionProof(int64_t seq, int64_t tree_size);
  // Proof that the tree of `first` leaves is a prefix of the tree of
  // `second`. kInvalidParameter unless 1 <= first <= second <= TreeSize().
  absl::StatusOr<std::vector<std::string>> ConsistencyProof(int64_t first, int64_t second);
  absl::StatusOr<AuditPage> Search(const AuditQuery& query);
  // Records after `after_seq`, oldest first, at most `limit`.
  absl::StatusOr<std::vector<StoredRecord>> After(int64_t after_seq, int limit);
  // The newest record's seq (0 when empty).
  absl::StatusOr<int64_t> LastSeq();
  // MTH of the first `tree_size` records.
  absl::StatusOr<std::string> RootAt(int64_t tree_size);

 private:
  struct Impl;
  explicit AuditReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fhirward::audit

#endif  // FHIRWARD_AUDIT_AUDIT_READER_H_
