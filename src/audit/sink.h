// SIEM export of the audit trail: every record, in order, to each configured
// sink, with its Merkle position (seq = leaf index + 1) so that a receiver
// detects gaps and can ask for inclusion proofs.
//
// The durable audit log is the queue: each sink has a cursor (the last seq
// it delivered) in STATE_DIR/<name>.cursor, written atomically after each
// delivered batch. A sink that is down loses nothing: its records stay in the
// log, and it resumes from its cursor, in order, when it is back (also after
// a restart). Delivery is at least once: after a broken connection the
// batch written last is sent again, so receivers de-duplicate on seq.
//
// Sinks:
//   file    JSON lines {"seq":N,"leaf_hash":b64,"record":{...}}, fsync'd per
//           batch, rotated by size (path.1 ... path.K), mode 0600.
//   syslog  RFC 5424 messages over TCP (RFC 6587 octet counting) or TLS
//           (RFC 5425; TLS 1.2+, the server verified against ca_file and its
//           name, optional client certificate):
//           <PRI>1 TIME HOST fhirward - MSGID [fhirward@32473 seq="N" leaf_hash="..."] JSON
//           MSGID "audit" (facility 13 log audit, severity info; warning
//           for refusals) or "alert" (severity alert) for alert records.
//   webhook alerts only: one HTTPS POST per alert (FormatWebhook), delivered
//           when the endpoint answers 2xx, else retried with backoff. With
//           a secret_file, X-Fhirward-Signature: t=UNIX,v1=hex(HMAC-SHA256(
//           secret, "t.body")). The body names who and what tripped the
//           rule, never patient ids (the AuditEvent link leads to them).
// Any sink may take `records = "alerts"` (e.g. a pager's syslog).
//
// One thread per sink, so a slow or dead sink never delays another, nor any
// request (the exporter reads committed records; it is not on the request
// path). Thread-safe.
#ifndef FHIRWARD_AUDIT_SINK_H_
#define FHIRWARD_AUDIT_SINK_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "audit/audit_reader.h"

namespace fhirward::audit {

struct SinkConfig {
  std::string name;  // [a-z0-9_-]{1,64}: names the cursor file
  std::string type;  // "file", "syslog" or "webhook"
  // Which records: "all" (default for file and syslog) or "alerts" (alert.*
  // records only; the only choice for webhook).
  std::string records;
  // file
  std::string path;
  int64_t max_bytes = 100 << 20;  // rotate when the file reaches this size
  int keep = 10;                  // rotated files kept
  // syslog
  std::string host;
  int port = 0;
  std::string transport = "tcp";    // "tcp" or "tls"
  std::string ca_file;              // tls: trust anchors for the receiver
  std::string server_name;          // tls: name to verify (default: host)
  std::string cert_file, key_file;  // tls: optional client certificate
  // webhook (also ca_file: empty = the system's trust store; server_name,
  // cert_file, key_file as for syslog)
  std::string url;          // https://host[:port]/path (http:// only to a loopback host)
  std::string secret_file;  // optional HMAC-SHA256 key: X-Fhirward-Signature
};

struct SinkEvent {
  std::string sink;
  bool up = false;      // delivering again (true) or failing (false)
  std::string detail;   // the error when failing (no record content)
  int64_t pending = 0;  // records not yet delivered
};

struct ExporterOptions {
  std::string state_dir;  // cursor files
  std::string hostname;   // HOSTNAME of syslog messages
  int batch = 256;
  std::chrono::milliseconds poll{500};           // look for new records at least this often
  std::chrono::milliseconds max_backoff{30000};  // retry a failing sink at least this often
  std::chrono::milliseconds io_timeout{5000};    // connect, handshake and write
  // Told when a sink goes down or comes back (not per retry).
  std::function<void(const SinkEvent&)> on_event;
};

struct SinkStatus {
  std::string name;
  int64_t delivered = 0;  // last seq delivered
  int64_t failures = 0;   // consecutive failed attempts
  std::string last_error;
};

// Formats one record as the sink sends it (exposed for tests and the receiver docs).
std::string FormatJsonLine(const StoredRecord& r);
std::string FormatSyslog(const StoredRecord& r, const std::string& hostname);
// {"seq","leaf_hash","time","alert","kind","summary","subject","client_id",
//  "client_address","node","audit_event":"AuditEvent/SEQ","trigger":"AuditEvent/N","test"}
std::string FormatWebhook(const StoredRecord& r);
// Whether a stored record is an alert (action alert.*).
bool IsAlertRecord(const StoredRecord& r);

// A cursor file: one decimal seq. nullopt when the file does not exist or
// holds no number. Saved atomically (temporary file, fsync, rename, fsync of
// the directory). Shared with the alert engine.
std::optional<int64_t> LoadCursorFile(const std::string& path);
absl::Status SaveCursorFile(const std::string& path, int64_t seq);

// Validates a sink configuration (names, type, fields); kInvalidParameter.
absl::Status CheckSinkConfig(const SinkConfig& c);

class AuditExporter {
 public:
  static absl::StatusOr<std::unique_ptr<AuditExporter>> Start(const std::string& audit_db_path,
                                                              std::vector<SinkConfig> sinks,
                                                              ExporterOptions options);
  ~AuditExporter();
  // New records were committed: look now rather than at the next poll.
  void Notify();
  std::vector<SinkStatus> Status() const;
  // Waits until every sink delivered record `seq` (true) or `timeout` passed.
  bool WaitDelivered(int64_t seq, std::chrono::milliseconds timeout) const;
  // Tries to deliver what is committed for up to `drain`, then stops.
  void Stop(std::chrono::milliseconds drain = std::chrono::milliseconds(3000));

 private:
  struct Impl;
  explicit AuditExporter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fhirward::audit

#endif  // FHIRWARD_AUDIT_SINK_H_
