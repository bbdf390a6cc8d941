// ResourceStore: versioned FHIR resources, history and idempotency records.
//
// Contract:
// - A successful write means the version is durable (committed with
//   synchronous=FULL); concurrent writes are group-committed by one writer.
// - Versions are never lost: writes to one resource are serialized; with
//   `if_match` a stale version fails kPreconditionFailed, and a concurrent
//   writer that lost the race gets kVersionConflict only where a check could
//   not be re-done safely.
// - Every stored body is sealed with envelope encryption; associated data
//   binds tenant, type, id and version. Nothing readable is written in clear
//   except ids, versions, timestamps and compartment membership (patient ids).
// - Implementations are thread-safe.
#ifndef FHIRWARD_STORE_RESOURCE_STORE_H_
#define FHIRWARD_STORE_RESOURCE_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/secret_bytes.h"
#include "crypto/keyring.h"
#include "crypto/kms.h"
#include "json/value.h"
#include "store/search.h"

namespace fhirward::store {

struct ResourceKey {
  std::string tenant;
  std::string type;
  std::string id;
};

struct StoredVersion {
  std::string type;
  std::string id;
  int64_t version = 0;
  std::string last_updated;  // FHIR instant
  bool deleted = false;
  std::string json;  // the resource with meta.versionId/lastUpdated; empty when deleted
  // Patient compartments this version belongs to (reads, writes and history
  // fill it). Bound into the envelope's associated data: a stored version
  // whose compartment rows were edited fails to open.
  std::vector<std::string> patients;
};

struct WriteResult {
  StoredVersion stored;
  bool created = false;  // update-as-create
};

struct HistoryQuery {
  std::string tenant;
  std::string type;                  // empty: system history
  std::string id;                    // empty: type or system history
  std::optional<std::string> since;  // FHIR instant (normalized), inclusive
  int count = 50;
  int64_t before_seq = 0;  // paging: only entries with seq < before_seq (0 = from the newest)
  // When set, only versions in one of these patients' compartments.
  std::optional<std::vector<std::string>> patients;
};

struct HistoryEntry {
  int64_t seq = 0;
  StoredVersion version;
};

struct HistoryPage {
  std::vector<HistoryEntry> entries;  // newest first
  bool more = false;
};

struct IdempotencyRecord {
  std::string request_hash;  // SHA-256 of method, target and body
  int status = 0;
  std::string response_headers;  // JSON array of [name, value]
  std::string response_body;
  std::string created_at;
  // Completing a reservation: the pending record's token (its
  // response_headers while status is 0). Only that reservation is replaced.
  std::string reservation;
};

struct SearchPage {
  std::vector<StoredVersion> matches;  // current versions, in the query's order
  bool more = false;                   // further matches after this page
  std::optional<int64_t> total;        // when the query asked for it
};

// One write of a transaction. Conditional forms carry a search evaluated
// inside the transaction (so no concurrent writer can slip in between the
// check and the write):
// - kCreate with `condition`: no match creates, one match is the result
//   (nothing written), more than one fails kPreconditionFailed.
// - kUpdate with `condition`: no match creates under key.id, one match
//   updates it (the body's id must be absent or equal), more fails.
// - kDelete with `condition`: deletes the single match; none is a no-op.
// `check` (optional) is called with the Patient compartments of an existing
// resource about to be changed (deleted versions included) and with those of
// the version about to be stored; it may refuse (authorization).
struct WriteOp {
  enum class Kind { kCreate, kUpdate, kDelete };
  Kind kind = Kind::kCreate;
  ResourceKey key;
  json::Value resource;
  std::optional<int64_t> if_match;
  bool allow_create = true;
  std::optional<SearchQuery> condition;
  // The condition's result the caller planned for (other entries' references
  // were resolved against it): "" = no match, else the matching id. A
  // different result inside the transaction fails kVersionConflict.
  std::optional<std::string> expect_match;
  // The principal is confined to one Patient compartment: an absent, deleted
  // or forbidden target of an update or delete fails alike (kNotFound), so
  // writes cannot probe for resources.
  bool confined = false;
  // kUpdate with `condition`: key.id is the body's own id (not assigned).
  bool id_from_body = false;
  std::function<absl::Status(const std::vector<std::string>& patients)> check;
};

struct WriteOpResult {
  StoredVersion stored;  // for a delete: type, id and the deletion's version (0: nothing)
  bool created = false;
  bool matched_existing = false;  // conditional create that found its resource
};

class ResourceStore {
 public:
  virtual ~ResourceStore() = default;

  // Current version; kNotFound when absent. A deletion comes back as a
  // version with deleted=true and empty json (the caller answers 410), so the
  // caller can still authorize against `patients` before revealing it.
  // kDecryptionFailed when the stored envelope does not open.
  virtual absl::StatusOr<StoredVersion> Read(const ResourceKey& key) = 0;
  // A specific version; kNotFound when absent; deletions as for Read.
  virtual absl::StatusOr<StoredVersion> ReadVersion(const ResourceKey& key, int64_t version) = 0;
  // Stores version 1 under key.id (the caller assigns ids for create).
  // kVersionConflict if the id exists.
  virtual absl::StatusOr<StoredVersion> Create(const ResourceKey& key, json::Value resource) = 0;
  // New version of key; creates it when absent and `allow_create`.
  // if_match: the expected current version (kPreconditionFailed otherwise).
  virtual absl::StatusOr<WriteResult> Update(const ResourceKey& key, json::Value resource,
                                             std::optional<int64_t> if_match,
                                             bool allow_create) = 0;
  // Records a deletion version. Deleting an absent or already deleted
  // resource succeeds without a new version (returns version 0 when absent).
  virtual absl::StatusOr<StoredVersion> Delete(const ResourceKey& key,
                                               std::optional<int64_t> if_match) = 0;
  virtual absl::StatusOr<HistoryPage> History(const HistoryQuery& query) = 0;

  // Current, non-deleted resources matching `query` (see store/search.h).
  // kTooCostly when the query's time budget runs out.
  virtual absl::StatusOr<SearchPage> Search(const SearchQuery& query) = 0;
  // (type, id) of the resources that resources `ids` of `type` reference
  // through search parameter `param` ("*": any), optionally of `target_type`.
  virtual absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReferencesFrom(
      const std::string& tenant, const std::string& type, const std::vector<std::string>& ids,
      const std::string& param, const std::string& target_type, int64_t time_budget_ms) = 0;
  // Ids of resources of `source_type` referencing one of `targets` through
  // `param` ("*": any), confined to `patients`' compartments when set. Both
  // lookups stop with kTooCostly beyond `time_budget_ms` (0: none).
  virtual absl::StatusOr<std::vector<std::string>> ReferencedBy(
      const std::string& tenant, const std::string& source_type, const std::string& param,
      const std::vector<std::pair<std::string, std::string>>& targets,
      const std::optional<std::vector<std::string>>& patients, int limit,
      int64_t time_budget_ms) = 0;
  // All or nothing: every op is applied in one database transaction, in the
  // given order, or none is (the error names the failing op: "entry N: ...").
  virtual absl::StatusOr<std::vector<WriteOpResult>> Transaction(std::vector<WriteOp> ops) = 0;

  virtual absl::StatusOr<std::optional<IdempotencyRecord>> GetIdempotency(
      const std::string& tenant, const std::string& client, const std::string& key) = 0;
  // Stores the record if the key is unused; returns the record that is stored
  // (the existing one when another request stored it first).
  virtual absl::StatusOr<IdempotencyRecord> PutIdempotency(const std::string& tenant,
                                                           const std::string& client,
                                                           const std::string& key,
                                                           IdempotencyRecord record) = 0;
  // Removes one record (a reservation whose request failed, so a retry can run).
  // With `only_if`, only when the stored record is still that one (same
  // created_at and response_headers), so that a stale view never removes a
  // newer reservation.
  virtual absl::Status DeleteIdempotency(const std::string& tenant, const std::string& client,
                                         const std::string& key,
                                         const IdempotencyRecord* only_if = nullptr) = 0;
  // Deletes idempotency records created before `cutoff` (FHIR instant).
  virtual absl::Status ExpireIdempotency(const std::string& cutoff) = 0;

  // Crypto-shredding, second half (the key ring destroyed the patient's data
  // keys first): every resource with a version in the patient's compartment
  // or sealed under one of `key_ids` is removed with all its versions, index
  // rows and compartment rows, and recorded as erased, so reads answer
  // kErased; so are idempotency records whose stored response mentions the
  // patient. Idempotent: running it again finishes an interrupted erasure.
  struct EraseReport {
    uint64_t resources = 0;
    uint64_t versions = 0;
    uint64_t idempotency_records = 0;  // replays whose response mentioned the patient
  };
  virtual absl::StatusOr<EraseReport> ErasePatient(const std::string& tenant,
                                                   const std::string& patient,
                                                   const std::vector<std::string>& key_ids) = 0;

  // Key rotation: re-seals, under the current keys, the stored versions with
  // seq > `after_seq` (at most `limit`) whose envelope is format 1 or names a
  // data key that is no longer current. Each batch commits on its own.
  struct ResealProgress {
    int64_t last_seq = 0;  // resume after this
    uint64_t scanned = 0;
    uint64_t resealed = 0;
    bool done = false;  // no versions after last_seq
  };
  virtual absl::StatusOr<ResealProgress> ResealBatch(int64_t after_seq, size_t limit) = 0;
  // Number of stored versions with seq > after_seq (for progress reports).
  virtual absl::StatusOr<uint64_t> CountVersionsAfter(int64_t after_seq) = 0;
  // Tenant decommissioning (after its keys were destroyed): every row of the
  // tenant, index and idempotency records included. Returns the versions removed.
  virtual absl::StatusOr<uint64_t> PurgeTenant(const std::string& tenant) = 0;
  // Retention: removes at most `limit` resources of `type` whose current
  // version was last updated before `cutoff` (FHIR instant), with all their
  // versions, index and compartment rows. Returns how many.
  // With `dry_run`, only counts them (up to `limit`).
  virtual absl::StatusOr<uint64_t> PurgeBefore(const std::string& tenant, const std::string& type,
                                               const std::string& cutoff, size_t limit,
                                               bool dry_run = false) = 0;
  // Small named values kept with the data (e.g. a rewrap cursor); "" when unset.
  virtual absl::StatusOr<std::string> GetMeta(const std::string& name) = 0;
  virtual absl::Status PutMeta(const std::string& name, const std::string& value) = 0;
};

struct SqliteStoreOptions {
  std::string path;
  // Opens format-1 envelopes (one data key wrapped by the KEK) from before
  // the key ring, and seals idempotency records. Must outlive the store.
  const crypto::KeyEncryptionService* kek = nullptr;
  // Seals every resource version under the tenant's or its patients' data
  // keys (crypto/keyring.h). Must outlive the store.
  crypto::KeyRing* keyring = nullptr;
  int read_connections = 8;
  size_t max_batch = 128;
  // In-memory cache of the newest version of each resource, still sealed
  // (ciphertext and metadata only). 0 disables it.
  size_t cache_bytes = 64 * 1024 * 1024;
  // Instance secret from which each tenant's blind-index key is derived;
  // must outlive the store.
  const SecretBytes* index_key = nullptr;
  // Public base URL (no trailing slash): absolute references to it are
  // indexed as relative ones.
  std::string base_url;
};

absl::StatusOr<std::unique_ptr<ResourceStore>> OpenSqliteStore(const SqliteStoreOptions& options);

}  // namespace fhirward::store

#endif  // FHIRWARD_STORE_RESOURCE_STORE_H_
