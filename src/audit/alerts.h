// Security alerts computed from the audit trail.
//
// The engine reads committed records in order (like a SIEM sink, from its own
// cursor, so records appended by the CLI or by a crash-interrupted run are
// evaluated too) and applies the configured rules. An alert is itself an
// audit record, action "alert.<rule>", appended to the same trail: it is
// chained, in the Merkle tree, searchable as an AuditEvent, and every sink
// ships it (syslog with severity alert, MSGID "alert"; webhook sinks ship
// only alerts).
//
// Rules (all counts use the records' own times, so evaluation is the same
// when records are replayed):
//   mass_access   one principal (token subject, else client, else address)
//                 received data of more than `patients` distinct patients, or
//                 more than `resources` resources, within `window_seconds`
//                 (successful reads, searches, histories and operations).
//   failed_login  more than `threshold` failed logins (login, login-totp,
//                 token-client-auth refused) within the window, per `by`:
//                 "user" (the name tried; unknown names are pseudonyms) or
//                 "address".
//   break_glass   a break-glass episode was opened (every episode alerts).
//   denial_spike  more than `threshold` refused requests (denied or
//                 unauthenticated) within the window, per `by`: "all",
//                 "principal", "client" or "address".
//   anomaly       per client, requests and distinct patients per
//                 `bucket_seconds` bucket are scored against an EWMA
//                 (weight `alpha`) of that client's own history:
//                 z = (x - mean) / max(stddev, 1). A bucket with
//                 z >= `z` and at least `min_requests` requests (or
//                 `min_patients` patients) alerts, once the client has
//                 `warmup_buckets` buckets of history.
// After an alert, the same rule and key stay quiet for `window_seconds`.
//
// Alert records carry: subject/client_id/client_address of the key,
// resource "AuditEvent/<seq>" of the record that tripped the rule, count =
// the observed value, and decision = "rule=NAME kind=KIND key=KEY value=V
// threshold=T window=Ws first_seq=A last_seq=B" (+ " test=1" for `alerts
// test`). Never a resource payload.
#ifndef FHIRWARD_AUDIT_ALERTS_H_
#define FHIRWARD_AUDIT_ALERTS_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "audit/audit_log.h"

namespace fhirward::audit {

struct AlertRule {
  std::string name;  // [a-z0-9_-]{1,64}
  std::string kind;  // mass_access | failed_login | break_glass | denial_spike | anomaly
  std::string by;    // see above; "" takes the kind's default
  int64_t threshold = 0;
  int64_t patients = 0;
  int64_t resources = 0;
  int64_t window_seconds = 300;
  // anomaly
  int64_t bucket_seconds = 60;
  double alpha = 0.1;
  double z = 4.0;
  int64_t warmup_buckets = 30;
  int64_t min_requests = 20;
  int64_t min_patients = 10;
};

// Validates a rule and fills in the default `by`; kInvalidParameter.
absl::Status CheckAlertRule(AlertRule& rule);

// Milliseconds since the epoch of a record time ("YYYY-MM-DDThh:mm:ss[.fff]Z").
std::optional<int64_t> RecordTimeMs(std::string_view time);

// Whether a record is a failed login (what failed_login rules count).
bool IsFailedLogin(const AuditRecord& r);

// The rule evaluator: deterministic, no I/O, not thread-safe. State is
// bounded: keys idle for longer than their window are dropped.
class AlertRules {
 public:
  AlertRules(std::vector<AlertRule> rules, std::string node);
  ~AlertRules();
  AlertRules(const AlertRules&) = delete;
  AlertRules& operator=(const AlertRules&) = delete;

  // Feeds record `seq`; returns the alert records it raised (not yet appended).
  // Alert records (action alert.*) are ignored.
  std::vector<AuditRecord> Observe(int64_t seq, const AuditRecord& r);
  // No record arrived until `now_ms`: closes anomaly buckets that ended.
  std::vector<AuditRecord> Advance(int64_t now_ms);
  // Keys currently tracked (all rules): the state's size.
  size_t tracked_keys() const;

 private:
  struct State;
  std::vector<std::unique_ptr<State>> states_;
  std::string node_;
  int64_t observed_ = 0;
};

// Records that make `rule` fire when observed in order (for `alerts test`):
// synthetic principal "fhirward-alerts-test", client "fhirward-alerts-test",
// address 192.0.2.1 (TEST-NET-1), patients "alerts-test-N", times from
// `now_ms`. Followed by Advance(`*advance_to`) for anomaly rules.
std::vector<AuditRecord> SyntheticTrigger(const AlertRule& rule, int64_t now_ms,
                                          int64_t* advance_to);

struct AlertEngineOptions {
  std::string cursor_path;  // last seq evaluated
  std::string node;         // written into alert records
  std::chrono::milliseconds poll{1000};
  int batch = 512;
  // Told about each alert appended (e.g. to log it; no PHI in the record's
  // decision, but subject and address are there).
  std::function<void(int64_t seq, const AuditRecord&)> on_alert;
};

struct AlertEngineStatus {
  int64_t evaluated = 0;  // last seq evaluated
  int64_t alerts = 0;     // alerts appended since start
  std::string last_error;
};

// Runs AlertRules over the trail in a thread and appends the alerts to `log`.
// On start, the records of the longest window before the cursor are replayed
// without alerting, so windows and quiet periods survive a restart.
class AlertEngine {
 public:
  static absl::StatusOr<std::unique_ptr<AlertEngine>> Start(const std::string& audit_db_path,
                                                            AuditLog* log,
                                                            std::vector<AlertRule> rules,
                                                            AlertEngineOptions options);
  ~AlertEngine();
  void Notify();  // records were committed
  AlertEngineStatus Status() const;
  // Waits until every record up to `seq` was evaluated.
  bool WaitEvaluated(int64_t seq, std::chrono::milliseconds timeout) const;
  void Stop();  // evaluates what is committed, then stops

 private:
  struct Impl;
  explicit AlertEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fhirward::audit

#endif  // FHIRWARD_AUDIT_ALERTS_H_
