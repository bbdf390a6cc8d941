// The one error table of fhirward.
//
// Every refusal or failure on the request path is an absl::Status carrying an
// ErrorCode payload. The table maps each code to an HTTP status, an
// OperationOutcome issue.code (http://hl7.org/fhir/issue-type) and a fixed
// message; the detail string of the Status adds request-specific context and
// must never contain a secret or PHI. error_test.cc checks every code is mapped.
#ifndef FHIRWARD_COMMON_ERROR_H_
#define FHIRWARD_COMMON_ERROR_H_

#include <string_view>

#include "absl/status/status.h"

namespace fhirward {

enum class ErrorCode {
  kInvalidJson,           // 400 invalid
  kInvalidUtf8,           // 400 invalid
  kDuplicateKey,          // 400 invalid
  kJsonTooDeep,           // 400 too-long
  kJsonTooLarge,          // 400 too-long
  kInvalidResource,       // 400 invalid
  kResourceTypeMismatch,  // 400 invalid
  kIdMismatch,            // 400 invalid
  kInvalidId,             // 400 invalid
  kUnknownResourceType,   // 404 not-supported
  kInvalidRequest,        // 400 invalid
  kInvalidParameter,      // 400 invalid
  kTokenInQuery,          // 400 security
  kBodyTooLarge,          // 413 too-long
  kHeadersTooLarge,       // 431 too-long
  kUnsupportedMediaType,  // 415 not-supported
  kNotAcceptable,         // 406 not-supported
  kMethodNotAllowed,      // 405 not-supported
  kNotImplemented,        // 501 not-supported
  kNotFound,              // 404 not-found
  kRouteNotFound,         // 404 not-found
  kGone,                  // 410 deleted
  kErased,                // 410 deleted (crypto-shredded: its key was destroyed)
  kVersionConflict,       // 409 conflict
  kPreconditionFailed,    // 412 conflict
  kPreconditionRequired,  // 428 required
  kIdempotencyKeyReused,  // 422 conflict
  kValidationFailed,      // 422 processing (body: the validator's OperationOutcome)
  kMissingToken,          // 401 login
  kInvalidToken,          // 401 login
  kInsufficientScope,     // 403 forbidden
  kForbidden,             // 403 forbidden
  kTooManyRequests,       // 429 throttled
  kTooCostly,             // 400 too-costly
  kDecryptionFailed,      // 500 exception
  kAuditUnavailable,      // 503 transient
  kUnavailable,           // 503 transient
  kInternal,              // 500 exception
  kCount_,                // sentinel, keep last
};

struct ErrorInfo {
  ErrorCode code;
  int http_status;
  std::string_view issue_code;  // OperationOutcome.issue.code
  std::string_view name;        // stable machine-readable name, e.g. "invalid_token"
  std::string_view message;     // fixed human message
};

// The table entry for `code`. Never fails: every code is mapped.
const ErrorInfo& Describe(ErrorCode code);

// A Status carrying `code`; `detail` is appended to the fixed message.
absl::Status Error(ErrorCode code, std::string_view detail = {});

// The ErrorCode of a Status made by Error(); kInternal for any other non-OK status.
ErrorCode CodeOf(const absl::Status& status);

// The detail text given to Error(), or the status message for foreign statuses.
std::string DetailOf(const absl::Status& status);

}  // namespace fhirward

#endif  // FHIRWARD_COMMON_ERROR_H_
