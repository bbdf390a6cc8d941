// The policy at run time: the enforced (and candidate) policy files, reloaded
// when they change; the facts the engine reads from the data (relationships,
// consents) with a short cache invalidated by writes; break-glass episodes
// and their review queue in <data>/policy.db.
#ifndef FHIRWARD_SERVER_POLICY_RUNTIME_H_
#define FHIRWARD_SERVER_POLICY_RUNTIME_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "crypto/kms.h"
#include "policy/policy.h"
#include "store/resource_store.h"

namespace fhirward::server {

// A break-glass episode as the review queue shows it.
struct BreakGlassRecord {
  policy::BreakGlassEpisode episode;
  int64_t reviewed_at = 0;  // 0: awaiting review
  std::string reviewer;
  std::string outcome;  // "justified" | "unjustified"
  std::string note;
};

// Break-glass episodes in SQLite; justifications are sealed with the
// instance KEK (they may name a patient or a condition).
class BreakGlassStore {
 public:
  static absl::StatusOr<std::unique_ptr<BreakGlassStore>> Open(
      const std::string& path, const crypto::KeyEncryptionService* kek);
  ~BreakGlassStore();
  absl::StatusOr<std::optional<policy::BreakGlassEpisode>> Active(const std::string& issuer,
                                                                  const std::string& subject,
                                                                  const std::string& client_id,
                                                                  int64_t now);
  absl::StatusOr<policy::BreakGlassEpisode> Open(policy::BreakGlassEpisode e);
  // Newest first; `pending_only`: not yet reviewed.
  absl::StatusOr<std::vector<BreakGlassRecord>> List(bool pending_only);
  // Closes the review of episode `id` (kNotFound; kVersionConflict when already reviewed);
  // "unjustified" also ends the episode if it is still open.
  absl::Status Review(const std::string& id, const std::string& reviewer,
                      const std::string& outcome, const std::string& note, int64_t now);

 private:
  struct Impl;
  explicit BreakGlassStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// PolicyFacts over the resource store.
class StorePolicyFacts final : public policy::PolicyFacts {
 public:
  StorePolicyFacts(store::ResourceStore* store, std::string tenant, BreakGlassStore* break_glass,
                   const Clock* clock, int64_t cache_seconds = 30);

  absl::StatusOr<std::vector<std::string>> RelatedPatients(const policy::RelationshipSource& source,
                                                           const std::string& actor) override;
  absl::StatusOr<std::vector<json::Value>> Consents(const std::string& patient) override;
  absl::StatusOr<std::vector<std::string>> ConsentPatients() override;
  absl::StatusOr<std::optional<policy::BreakGlassEpisode>> ActiveBreakGlass(
      const std::string& issuer, const std::string& subject, const std::string& client_id,
      int64_t now) override;
  absl::StatusOr<policy::BreakGlassEpisode> OpenBreakGlass(policy::BreakGlassEpisode e) override;

  // A resource of `type` was written ("" : several types): cached facts
  // derived from that type are dropped.
  void Changed(std::string_view type);

 private:
  struct Cached {
    int64_t generation = 0;
    int64_t fetched = 0;
    std::vector<std::string> patients;
    std::vector<json::Value> consents;
  };
  bool Fresh(const Cached& c, int64_t now) const;
  bool FreshConsents(const Cached& c, int64_t now) const;

  store::ResourceStore* store_;
  std::string tenant_;
  BreakGlassStore* break_glass_;
  const Clock* clock_;
  int64_t cache_seconds_;
  std::atomic<int64_t> generation_{0};          // any write
  std::atomic<int64_t> consent_generation_{0};  // writes of Consent resources
  std::mutex mu_;
  std::map<std::string, Cached> related_;   // source id + actor
  std::map<std::string, Cached> consents_;  // patient
  Cached consent_patients_;
  std::map<std::string, std::pair<int64_t, std::optional<policy::BreakGlassEpisode>>> active_;
};

struct PolicyFiles {
  std::string enforced;   // path; empty: the built-in SMART-scopes policy
  std::string candidate;  // path; empty: no shadow mode
  int64_t reload_seconds = 5;
};

// What one load of the policy files did (at start, and each reload), for the
// audit trail: the policies in force after it and the files' digests.
struct PolicyLoadEvent {
  bool ok = false;
  std::string enforced;   // id@version in force after the load
  std::string candidate;  // id@version of the shadow policy ("" when none)
  std::string files;      // "path sha256=HEX" per file read, "; "-separated
  std::string error;      // why a new version was refused (the previous stays)
};

// The current engine; reloads the files when they change (an invalid new
// version is refused and logged: the previous one stays in force). `on_load`
// (optional) hears of every load, refused ones included, on the thread that
// did it.
class PolicyRuntime {
 public:
  static absl::StatusOr<std::unique_ptr<PolicyRuntime>> Open(
      PolicyFiles files, policy::PolicyFacts* facts, const Clock* clock,
      std::function<void(const PolicyLoadEvent&)> on_load = nullptr);
  std::shared_ptr<const policy::PolicyEngine> Current();

 private:
  PolicyRuntime(PolicyFiles files, policy::PolicyFacts* facts, const Clock* clock);
  absl::Status Load();       // LoadFiles(), reported to on_load_
  absl::Status LoadFiles();  // reads, checks and installs the files
  std::string FileDigests() const;
  std::string Stamp() const;  // files' identity: inode, size, mtime

  PolicyFiles files_;
  policy::PolicyFacts* facts_;
  const Clock* clock_;
  std::mutex mu_;
  std::shared_ptr<const policy::PolicyEngine> engine_;
  std::string enforced_id_, candidate_id_;  // of engine_
  std::function<void(const PolicyLoadEvent&)> on_load_;
  std::string stamp_;
  int64_t checked_ = 0;
};

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_POLICY_RUNTIME_H_
