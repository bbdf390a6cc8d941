// KeyRing: the key hierarchy below the KEK, and the record envelope that uses it.
//
//   KEK (VersionedKek: key file or HSM)
//    └─ tenant key, per tenant and version       wrapped under the KEK (one HSM call)
//        └─ data key, per scope and version       wrapped under the tenant key (AES-256-GCM)
//            scope = "patient:<id>" for resources in a patient's compartment,
//                    "tenant" for everything else
//
// Wrapped keys live in the key vault, an SQLite database of its own
// (DATA_DIR/db/keys.db, `secure_delete` on), which is never part of a data
// backup: destroying a data key there makes every copy of what it sealed,
// backups included, unreadable (crypto-shredding).
//
// Record envelope (format 2; all lengths big-endian):
//   "FWE" | 0x02 | u8 n (1..16) | n × (u8 len | data key id) | salt(32) | nonce(12)
//   | ciphertext | tag(16)
// The record key is HKDF-SHA256(ikm = the n data keys in order, salt,
// info = "fhirward-record-v2"): each record key encrypts exactly one message,
// so no nonce can repeat under a key whatever the volume, and opening needs
// every named data key (a resource in two patients' compartments is shredded
// when either patient is erased). The associated data (tenant, type, id,
// version, compartments) is the GCM AAD.
//
// Data key ids are random and opaque ("dk_" + 16 hex): an envelope does not
// name its patient. Unwrapped keys are cached for `cache_seconds`; any change
// to the vault by another process (an erasure, a rotation) empties the cache:
// the vault is looked at every 20 ms at most, so an erasure takes effect in a
// running server within 20 ms.
#ifndef FHIRWARD_CRYPTO_KEYRING_H_
#define FHIRWARD_CRYPTO_KEYRING_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "crypto/kms.h"

namespace fhirward::crypto {

// A key operation, for the audit trail. Never carries key material.
struct KeyEvent {
  std::string action;  // "create" | "rotate" | "destroy" | "rewrap" | "unwrap-count"
  std::string kind;    // "kek" | "tenant-key" | "data-key"
  std::string tenant;
  std::string scope;   // "patient:<id>" | "tenant" | ""
  std::string key_id;  // data key id, "tenant:<t>:v<n>" or "kek:v<n>"
  uint64_t count = 0;  // unwrap-count: unwraps in the period; rewrap: keys moved
};

struct KeyRingOptions {
  std::string path;               // the key vault
  VersionedKek* kek = nullptr;    // must outlive the ring
  int cache_seconds = 300;        // unwrapped keys kept at most this long (0: never cached)
  size_t cache_entries = 100000;  // and at most this many
  std::function<void(const KeyEvent&)> on_event;  // called after each key operation
};

struct TenantKeyInfo {
  std::string tenant;
  uint32_t version = 0;
  uint32_t kek_version = 0;
  std::string created;
  bool destroyed = false;
  uint64_t data_keys = 0;  // live data keys wrapped under this version
};

struct KeyRingStatus {
  std::string kms;  // KeyManagementService::Describe()
  uint32_t kek_version = 0;
  std::vector<uint32_t> kek_versions;
  std::vector<TenantKeyInfo> tenant_keys;
  uint64_t data_keys = 0;            // live
  uint64_t destroyed_data_keys = 0;  // erased or retired
  uint64_t stale_data_keys = 0;      // wrapped under an older tenant key version
  uint64_t stale_tenant_keys = 0;    // wrapped under an older KEK version
};

class KeyRing {
 public:
  static absl::StatusOr<std::unique_ptr<KeyRing>> Open(const KeyRingOptions& options);
  ~KeyRing();

  // Seals under the current data keys of `patients` (sorted, deduplicated;
  // each created on first use), or under the tenant data key when empty.
  absl::StatusOr<std::string> Seal(const std::string& tenant,
                                   const std::vector<std::string>& patients,
                                   std::string_view plaintext, std::string_view associated_data);
  // kErased when a named data key was destroyed (an erased patient or a
  // decommissioned tenant); kDecryptionFailed for anything else that fails.
  absl::StatusOr<std::string> Open(const std::string& tenant, std::string_view envelope,
                                   std::string_view associated_data);

  static bool IsRecordEnvelope(std::string_view envelope);  // format 2
  // The data key ids an envelope names (empty when it is not format 2).
  static std::vector<std::string> KeyIdsOf(std::string_view envelope);
  // True when every key the envelope names is the current one of its scope
  // (i.e. `keys rewrap` need not re-seal it).
  absl::StatusOr<bool> IsCurrent(std::string_view envelope);

  // Key administration. Each is audited through `on_event`.
  // A new tenant key version; from now on new data keys wrap under it, and
  // each scope gets a new data key version on its next write.
  absl::StatusOr<uint32_t> RotateTenant(const std::string& tenant);
  // Rewraps tenant keys still under an older KEK version and data keys under
  // an older tenant key version; returns how many keys moved.
  absl::StatusOr<uint64_t> RewrapKeys();
  // Destroys every data key of `patient` (all versions). The vault keeps a
  // tombstone (id, scope, time) so reads can answer "erased".
  absl::StatusOr<uint64_t> ErasePatient(const std::string& tenant, const std::string& patient);
  // Destroys every tenant key and data key of `tenant`.
  absl::StatusOr<uint64_t> DestroyTenant(const std::string& tenant);
  // Has this patient's data been erased (a tombstone and no live key)?
  absl::StatusOr<std::optional<std::string>> ErasedAt(const std::string& tenant,
                                                      const std::string& patient);
  absl::StatusOr<std::vector<std::string>> Tenants();
  // (tenant, patient) of every erased patient (a tombstone, no live key).
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Erasures();
  absl::StatusOr<KeyRingStatus> Status();
  // Emits an "unwrap-count" event with the KEK unwraps since the last call.
  void ReportUnwrapCount();
  // Replaces `on_event` (e.g. once the audit trail is open).
  void SetEventSink(std::function<void(const KeyEvent&)> sink);
  // Every data key id `patient` ever had, destroyed ones included.
  absl::StatusOr<std::vector<std::string>> PatientKeyIds(const std::string& tenant,
                                                         const std::string& patient);
  // Drops every cached unwrapped key (e.g. before a key-admin command exits).
  void ClearCache();

 private:
  struct Impl;
  explicit KeyRing(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fhirward::crypto

#endif  // FHIRWARD_CRYPTO_KEYRING_H_
