// Pieces of compact JWS parsing shared by the JWT and DPoP verifiers.
#ifndef FHIRWARD_JOSE_INTERNAL_SEGMENTS_H_
#define FHIRWARD_JOSE_INTERNAL_SEGMENTS_H_

#include <optional>
#include <string_view>

#include "json/value.h"

namespace fhirward::jose::internal {

// A base64url-encoded JSON object parsed under `limits`; nullopt for bad
// base64, bad JSON or a value that is not an object.
std::optional<json::Value> DecodeJsonObject(std::string_view b64, const json::Limits& limits);

}  // namespace fhirward::jose::internal

#endif  // FHIRWARD_JOSE_INTERNAL_SEGMENTS_H_
