// The audit trail through the FHIR API (read-only): stored audit records as
// AuditEvents shaped after IHE Basic Audit Log Patterns (BALP), and the
// AuditEvent search parameters. Two views:
//
//   auditor  every record, every detail (network addresses, user agent,
//            scopes, policy decision, query, request and trace ids).
//   patient  an accounting of disclosures: only successful accesses to the
//            patient's own data, showing who (user and app), when, what and
//            for what purpose; never staff network addresses, user agents,
//            scopes, policy internals, queries (they may name other
//            patients), other patients, or break-glass justification texts.
#ifndef FHIRWARD_SERVER_AUDIT_API_H_
#define FHIRWARD_SERVER_AUDIT_API_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "audit/audit_log.h"
#include "audit/audit_reader.h"
#include "json/value.h"

namespace fhirward::server {

enum class AuditView { kAuditor, kPatient };

// The interactions that read or change patient data (what a patient's
// accounting of disclosures lists).
bool IsDataAccess(const audit::AuditRecord& r);

// Whether `r` belongs in `patient`'s accounting of disclosures.
bool IsDisclosureTo(const audit::AuditRecord& r, const std::string& patient);

// The BALP AuditEvent of record `seq`. `base_url` names this server (source).
json::Value ToAuditEvent(int64_t seq, const audit::AuditRecord& r, AuditView view,
                         const std::string& base_url, const std::string& patient = "");

// AuditEvent search parameters → a query. Auditor: patient, agent, client,
// entity, entity-type, subtype, action (C R U D E), outcome (0 4 8 12 or
// success|denied|failed|error|unauthenticated), date (eq ge gt le lt; may
// repeat), break-glass, _count, _cursor. Patient view: date, subtype,
// action, _count, _cursor, and patient only as their own id; the query is
// confined to `patient`. `_format` and `_pretty` are ignored here. Unknown
// parameters and malformed values are kInvalidParameter. `count` gets the
// page size (default 50, at most 500).
absl::StatusOr<audit::AuditQuery> ParseAuditSearch(
    const std::vector<std::pair<std::string, std::string>>& params, AuditView view,
    const std::string& patient);

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_AUDIT_API_H_
