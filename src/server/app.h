// Entry points behind the command line: serve, token mint, audit verify.
#ifndef FHIRWARD_SERVER_APP_H_
#define FHIRWARD_SERVER_APP_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fhirward::server {

struct ServeArgs {
  std::string data_dir;
  std::string listen;       // overrides the config file when set
  std::string config_file;  // optional TOML
};

// Initialises DATA_DIR on first start, serves until SIGTERM/SIGINT, drains.
// Prints "listening on https://HOST:PORT" on stdout once ready.
absl::Status Serve(const ServeArgs& args);

struct MintArgs {
  std::string data_dir;
  std::string subject;
  std::string scope;
  int64_t ttl_seconds = 3600;
  std::string patient;
  std::string client_id = "fhirward-cli";
  std::vector<std::string> roles;           // `roles` claim (policy roles)
  std::string fhir_user;                    // "Practitioner/pr1"
  std::vector<std::string> purpose_of_use;  // HL7 v3 PurposeOfUse codes
};

// An RFC 9068 access token signed by the instance's issuer key.
absl::StatusOr<std::string> MintToken(const MintArgs& args);

// `fhirward alerts test`: for every [[audit.alert]] rule, checks that the
// rule fires on a synthetic trigger, appends that alert (marked test=1) to
// the trail, and waits until every [[audit.sink]] delivered it (cursor; for a
// file sink the line is also read back and its leaf hash checked). The
// running server's exporter does the delivering. Prints one line per rule
// and sink; kUnavailable when any alert was not confirmed in time.
struct AlertsTestArgs {
  std::string data_dir;
  std::string config_file;
  int timeout_seconds = 30;
};
absl::Status AlertsTest(const AlertsTestArgs& args, std::ostream& out);

struct AuditVerifyResult {
  bool ok = false;
  int64_t records = 0;
  int64_t first_bad_seq = 0;
  std::string summary;
};
// `held_head_files`: tree heads kept outside the data directory (compact JWS,
// or the JSON of GET /AuditEvent/$tree-head); each must match the records.
absl::StatusOr<AuditVerifyResult> VerifyAudit(const std::string& data_dir,
                                              const std::vector<std::string>& held_head_files = {});

struct ValidateArgs {
  std::vector<std::string> files;  // FHIR JSON resources; "-" reads standard input
  std::string config_file;         // optional: the [validation] section applies
  bool outcome_json = false;       // print each file's OperationOutcome instead of lines
};
// Validates each file with the server's validator. Per file, prints
// "FILE: OK (0 errors, W warnings)" or "FILE: N errors, W warnings" and one
// line per finding. Returns the number of files with errors (unreadable or
// unparsable files count as files with errors).
absl::StatusOr<int> ValidateFiles(const ValidateArgs& args, std::ostream& out);

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_APP_H_
