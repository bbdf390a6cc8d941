// The audit trail: one record per request in an append-only SQLite table,
// written with group commit, hash-chained and in an RFC 6962 Merkle tree
// with signed tree heads.
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
// Tree: record seq is leaf seq - 1, the leaf is the record's JSON (RFC 6962
// leaf hash SHA-256(0x00 | json)). Every perfect subtree is stored when the
// record completing it is committed (audit_nodes, same transaction), so any
// inclusion or consistency proof takes O(log n) lookups (AuditReader). A tree
// head {log_id, tree_size, root_hash, timestamp} is signed (compact JWS,
// ES256, typ "fhirward-sth") by the log key on a schedule, on demand, and at
// Close, and stored in audit_tree_heads. The chain's MAC needs the audit key
// to check; a signed head can be checked by anyone holding the public key,
// and a holder of an old head detects any rewrite of history with a
// consistency proof.
//
// Thread-safe.
#ifndef FHIRWARD_AUDIT_AUDIT_LOG_H_
#define FHIRWARD_AUDIT_AUDIT_LOG_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/secret_bytes.h"
#include "jose/jws.h"

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
  // Appended in the second version of the record (older records lack them):
  std::string roles;           // the principal's roles, space-separated
  std::string purpose_of_use;  // the token's PurposeOfUse codes, space-separated
  // Every patient whose data the response carried (reads, searches,
  // histories; at most kMaxPatients), besides patient_id.
  std::vector<std::string> patients;
  std::string query;  // a search's query string as received (at most 2048 bytes)
  std::string node;   // the fhirward node that served the request
  int64_t bytes = 0;  // response body size
  // A response carries at most [search] max_count + max_included (or
  // [fhir] history_max_count) resources; the configuration is refused when
  // that could exceed this, so the list is complete for every response.
  static constexpr size_t kMaxPatients = 2000;
  // Canonical JSON (fixed member order, all members present).
  std::string ToJson() const;
  // The fields of a stored record (members it lacks stay empty).
  static absl::StatusOr<AuditRecord> FromJson(std::string_view json);
};

// The search terms of a record, kept in audit_postings(bucket, k, v, seq) so
// that AuditEvent searches by patient, agent, entity, action or outcome need
// no scan. The writer stores them in batches (AuditOptions::terms_batch) and
// moves audit_postings_mark to the last record they cover; a search scans the
// few records after the mark directly. ("patient", id) for patient_id and every
// one of patients, ("agent", subject), ("client", client_id), ("action", a),
// ("outcome", o), ("type", resource type), ("entity", "Type/id"),
// ("break-glass", episode). Sorted, distinct. Derived data: searches re-check
// each hit against the record itself, and verification recomputes them.
std::vector<std::pair<std::string, std::string>> IndexTerms(const AuditRecord& record);

struct AuditOptions {
  size_t max_batch = 256;
  std::chrono::microseconds max_batch_delay{0};  // extra wait to fill a batch
  // How long a write waits for a SQLite lock held by another connection before
  // the batch fails with kAuditUnavailable.
  std::chrono::milliseconds busy_timeout{5000};
  // Signs tree heads; null: this process signs none (the CLI's commands: the
  // server's next head covers their records).
  const jose::SigningKey* tree_head_key = nullptr;
  std::string log_id;  // names the log in every head (the issuer URL)
  // A head is signed once this long has passed since the last one, if records
  // were added (0: only on demand and at Close).
  std::chrono::milliseconds tree_head_interval{0};
  // Search terms are written, in key order, in the transaction of the batch
  // that brings this many records without them, or once the oldest such record
  // has waited terms_delay (by itself when no records come). Fewer, larger
  // term batches dirty fewer pages; the records after the mark are searched
  // by reading them. 0 or 1: with every batch.
  size_t terms_batch = 2048;
  std::chrono::milliseconds terms_delay{200};
  // Called on the writer thread after each commit with the last seq (must be
  // quick: e.g. wake the SIEM exporter).
  std::function<void(int64_t)> on_commit;
};

// A signed tree head as stored.
struct TreeHead {
  int64_t tree_size = 0;
  std::string root;          // 32 raw bytes
  int64_t timestamp_ms = 0;  // milliseconds since the epoch
  std::string jws;           // compact JWS over {log_id, tree_size, root_hash, timestamp}
};

// Checks a head's signature and that its payload names `tree_size`, `root`
// and `timestamp_ms` (when they are non-zero / non-empty); returns the payload
// values. kInvalidToken on any mismatch or bad signature.
absl::StatusOr<TreeHead> ParseTreeHead(std::string_view jws, const jose::PublicKey& key);

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
  // Signs a head over everything committed now (returns the newest head
  // unchanged when nothing was added since). kFailedPrecondition without a
  // tree_head_key.
  virtual absl::StatusOr<TreeHead> SignTreeHead() {
    return absl::FailedPreconditionError("this audit log signs no tree heads");
  }
};

struct VerifyReport {
  bool ok = false;
  int64_t records = 0;
  int64_t tree_heads = 0;     // signed heads checked (stored and held)
  std::string root;           // hex MTH of all records, when ok
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
//
// The tree: every stored perfect subtree must equal the one recomputed from
// the records (a missing or extra node is a break at the record that
// completes it), and every stored head must be validly signed by
// `options.tree_head_key` and name the recomputed root at its size. Each of
// `options.held_heads` (JWS held outside, e.g. by an external auditor) must
// verify with the key, and the recomputed root at its size must be its root:
// a rewrite of any record below a held head is caught even when the rewriter
// recomputed the chain, the nodes, the anchor and re-signed every stored head.
struct VerifyOptions {
  const jose::PublicKey* tree_head_key = nullptr;  // null: stored heads are not checked
  std::vector<std::string> held_heads;
};
absl::StatusOr<VerifyReport> VerifyAuditLog(const std::string& path, const SecretBytes& mac_key,
                                            const VerifyOptions& options = {});

}  // namespace fhirward::audit

#endif  // FHIRWARD_AUDIT_AUDIT_LOG_H_
