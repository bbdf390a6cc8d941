#include "common/error.h"

#include <array>
#include <string>

#include "absl/strings/cord.h"

namespace fhirward {
namespace {

constexpr absl::string_view kPayloadUrl = "type.fhirward/error_code";

constexpr std::array<ErrorInfo, static_cast<size_t>(ErrorCode::kCount_)> kTable = {{
    {ErrorCode::kInvalidJson, 400, "invalid", "invalid_json", "The body is not valid JSON"},
    {ErrorCode::kInvalidUtf8, 400, "invalid", "invalid_utf8", "The body is not valid UTF-8"},
    {ErrorCode::kDuplicateKey, 400, "invalid", "duplicate_key",
     "The body repeats a property name in one object"},
    {ErrorCode::kJsonTooDeep, 400, "too-long", "json_too_deep", "The body is nested too deeply"},
    {ErrorCode::kJsonTooLarge, 400, "too-long", "json_too_large",
     "The body exceeds a size limit (string, array or total)"},
    {ErrorCode::kInvalidResource, 400, "invalid", "invalid_resource",
     "The body is not a valid FHIR resource"},
    {ErrorCode::kResourceTypeMismatch, 400, "invalid", "resource_type_mismatch",
     "The resourceType of the body does not match the URL"},
    {ErrorCode::kIdMismatch, 400, "invalid", "id_mismatch",
     "The id of the body does not match the URL"},
    {ErrorCode::kInvalidId, 400, "invalid", "invalid_id",
     "The id does not match [A-Za-z0-9-.]{1,64}"},
    {ErrorCode::kUnknownResourceType, 404, "not-supported", "unknown_resource_type",
     "The resource type is not an R4 resource type"},
    {ErrorCode::kInvalidRequest, 400, "invalid", "invalid_request", "The request is malformed"},
    {ErrorCode::kInvalidParameter, 400, "invalid", "invalid_parameter",
     "A request parameter is invalid"},
    {ErrorCode::kTokenInQuery, 400, "security", "token_in_query",
     "Access tokens are not accepted in the query string"},
    {ErrorCode::kBodyTooLarge, 413, "too-long", "body_too_large", "The request body is too large"},
    {ErrorCode::kHeadersTooLarge, 431, "too-long", "headers_too_large",
     "The request headers are too large"},
    {ErrorCode::kUnsupportedMediaType, 415, "not-supported", "unsupported_media_type",
     "Content-Type must be application/fhir+json or application/json"},
    {ErrorCode::kNotAcceptable, 406, "not-supported", "not_acceptable",
     "Only application/fhir+json and application/json can be returned"},
    {ErrorCode::kMethodNotAllowed, 405, "not-supported", "method_not_allowed",
     "The method is not allowed on this URL"},
    {ErrorCode::kNotImplemented, 501, "not-supported", "not_implemented",
     "This interaction is not supported by this server yet"},
    {ErrorCode::kNotFound, 404, "not-found", "not_found", "The resource was not found"},
    {ErrorCode::kRouteNotFound, 404, "not-found", "route_not_found", "No such endpoint"},
    {ErrorCode::kGone, 410, "deleted", "gone", "The resource has been deleted"},
    {ErrorCode::kErased, 410, "deleted", "erased",
     "The record was erased: its encryption key was destroyed and it can no longer be read"},
    {ErrorCode::kVersionConflict, 409, "conflict", "version_conflict",
     "The resource was changed concurrently"},
    {ErrorCode::kPreconditionFailed, 412, "conflict", "precondition_failed",
     "If-Match does not match the current version"},
    {ErrorCode::kPreconditionRequired, 428, "required", "precondition_required",
     "This server requires If-Match on update and delete"},
    {ErrorCode::kIdempotencyKeyReused, 422, "conflict", "idempotency_key_reused",
     "The Idempotency-Key was already used with a different request"},
    {ErrorCode::kValidationFailed, 422, "processing", "validation_failed",
     "The resource does not conform to the FHIR R4 specification"},
    {ErrorCode::kMissingToken, 401, "login", "missing_token", "An access token is required"},
    {ErrorCode::kInvalidToken, 401, "login", "invalid_token", "The access token is not valid"},
    {ErrorCode::kInsufficientScope, 403, "forbidden", "insufficient_scope",
     "The access token's scopes do not allow this interaction"},
    {ErrorCode::kForbidden, 403, "forbidden", "forbidden", "Access to this resource is denied"},
    {ErrorCode::kTooManyRequests, 429, "throttled", "too_many_requests",
     "Too many requests; retry later"},
    {ErrorCode::kTooCostly, 400, "too-costly", "too_costly",
     "The request exceeds a processing limit"},
    {ErrorCode::kDecryptionFailed, 500, "exception", "decryption_failed",
     "A stored record failed its integrity check"},
    {ErrorCode::kAuditUnavailable, 503, "transient", "audit_unavailable",
     "The audit trail cannot be written; the request was not answered"},
    {ErrorCode::kUnavailable, 503, "transient", "unavailable",
     "The server is shutting down or overloaded"},
    {ErrorCode::kInternal, 500, "exception", "internal", "Internal error"},
}};

}  // namespace

const ErrorInfo& Describe(ErrorCode code) {
  auto i = static_cast<size_t>(code);
  if (i >= kTable.size()) return kTable[static_cast<size_t>(ErrorCode::kInternal)];
  return kTable[i];
}

absl::Status Error(ErrorCode code, std::string_view detail) {
  const ErrorInfo& info = Describe(code);
  absl::StatusCode sc = absl::StatusCode::kInvalidArgument;
  switch (info.http_status) {
    case 401:
      sc = absl::StatusCode::kUnauthenticated;
      break;
    case 403:
      sc = absl::StatusCode::kPermissionDenied;
      break;
    case 404:
    case 410:
      sc = absl::StatusCode::kNotFound;
      break;
    case 409:
    case 412:
    case 428:
    case 422:
      sc = absl::StatusCode::kFailedPrecondition;
      break;
    case 429:
      sc = absl::StatusCode::kResourceExhausted;
      break;
    case 500:
      sc = absl::StatusCode::kInternal;
      break;
    case 503:
      sc = absl::StatusCode::kUnavailable;
      break;
    default:
      break;
  }
  absl::Status s(sc, absl::string_view(detail.data(), detail.size()));
  s.SetPayload(kPayloadUrl, absl::Cord(std::to_string(static_cast<int>(code))));
  return s;
}

ErrorCode CodeOf(const absl::Status& status) {
  auto p = status.GetPayload(kPayloadUrl);
  if (!p.has_value()) return ErrorCode::kInternal;
  int v = std::stoi(std::string(*p));
  if (v < 0 || v >= static_cast<int>(ErrorCode::kCount_)) return ErrorCode::kInternal;
  return static_cast<ErrorCode>(v);
}

std::string DetailOf(const absl::Status& status) { return std::string(status.message()); }

}  // namespace fhirward
