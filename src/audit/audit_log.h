// The audit trail (first version): one record per request, hash-chained in an
// append-only SQLite table, written with group commit.
//
// Append() returns only once the record is durable (committed with
// synchronous=FULL): the server sends no response before that. Concurrent
// Append() calls are batched into one transaction by a single writer thread,
// so throughput does not collapse to one fsync per request.
//
// Chain: hash_n = SHA-256("fhirward-audit-v1" | u64be(seq) | hash_{n-1} | record_json),
// hash_0 = 32 zero bytes. Every commit also writes an anchor (last seq, last
// hash) MACed with the audit key, so removing records from the tail is
// detected too. Records never carry payloads or tokens.
//
// Thread-safe.
#ifndef FHIRWARD_AUDIT_AUDIT_LOG_H_
#define FHIRWARD_AUDIT_AUDIT_LOG_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/secret_bytes.h"

namespace fhirward::audit {

struct AuditRecord {
  std::string time;  // FHIR instant, UTC
  std::string request_id;
  std::string trace_id;
  std::string client_address;
  std::string user_agent;
  std::string subject;    // token sub, "" when unauthenticated
  std::string client_id;  // token client_id / azp
  std::string scopes;
  std::string action;  // interaction: read, vread, create, update, delete, history-*, search-*,
                       // capabilities, ...
  std::string method;  // HTTP method
  std::string resource_type;
  std::string resource_id;
  std::string version_id;
  std::string patient_id;  // patient compartment the request touched, if known
  std::string outcome;     // "success", "denied", "failed", "unauthenticated", "error"
  int status_code = 0;
  std::string error;      // ErrorCode name when refused/failed
  std::string policy_id;  // deciding policy id@version
  int64_t count = 0;      // resources returned
  // The decision: "id@version allow role=... rule=... patients=N masked=M".
  std::string decision;
  std::string break_glass;         // break-glass episode id of the access, if any
  std::string break_glass_reason;  // its written justification
  // Shadow mode: the candidate policy's outcome where it disagrees.
  std::string shadow;
  // Canonical JSON (fixed member order, all members present).
  std::string ToJson() const;
};

struct AuditOptions {
  size_t max_batch = 256;
  std::chrono::microseconds max_batch_delay{0};  // extra wait to fill a batch
  // How long a write waits for a SQLite lock held by another connection before
  // the batch fails with kAuditUnavailable.
  std::chrono::milliseconds busy_timeout{5000};
};

// Writer counters (monotonic since Open). commits < records means batching.
struct AuditStats {
  int64_t commits = 0;         // committed transactions
  int64_t records = 0;         // records committed
  int64_t failed_batches = 0;  // transactions rolled back (waiters got kAuditUnavailable)
  int64_t largest_batch = 0;   // most records in one transaction
};

class AuditLog {
 public:
  virtual ~AuditLog() = default;
  // Opens (creating if needed) the audit database at `path`. `mac_key` (32
  // bytes) authenticates the tail anchor.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(const std::string& path,
                                                        SecretBytes mac_key,
                                                        const AuditOptions& options = {});
  // Blocks until the record is durable; returns its sequence number.
  virtual absl::StatusOr<int64_t> Append(const AuditRecord& record) = 0;

  // As Append, without blocking: `done` runs once the record is durable (or
  // failed), on the writer thread, so it must be quick (e.g. post a response
  // to an I/O thread). Called exactly once, possibly before AppendAsync
  // returns (when the log is closed).
  using AppendCallback = std::function<void(absl::StatusOr<int64_t>)>;
  virtual void AppendAsync(const AuditRecord& record, AppendCallback done) { done(Append(record)); }
  // Flushes and stops the writer; further Append() calls fail.
  virtual void Close() = 0;
  // Writer counters; a default for fakes that do not batch.
  virtual AuditStats stats() const { return {}; }
};

struct VerifyReport {
  bool ok = false;
  int64_t records = 0;
  int64_t first_bad_seq = 0;  // 0 when ok
  std::string summary;        // one line for humans
};

// Recomputes the whole chain and checks the anchor. Opens the database read-only.
//
// `records` is the number of rows present. `first_bad_seq` is the first break
// found walking seq 1, 2, 3, ...: a missing seq (record removed), a prev_hash
// that is not the previous record's hash (record before it rewritten, or
// records reordered), a hash that does not match the record (record altered),
// or a time column that disagrees with the record. When the chain itself is
// consistent, the anchor decides: tail removed -> the first missing seq;
// records beyond the anchor -> the first one not covered; anchor MAC invalid
// (forged anchor, wrong key), anchor missing, or anchor hash != last hash ->
// the last record. A non-OK Status only when the file cannot be opened or read
// or is not an audit database.
absl::StatusOr<VerifyReport> VerifyAuditLog(const std::string& path, const SecretBytes& mac_key);

}  // namespace fhirward::audit

#endif  // FHIRWARD_AUDIT_AUDIT_LOG_H_
