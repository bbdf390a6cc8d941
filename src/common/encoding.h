// Byte encodings used across modules: base64url (RFC 4648 §5, no padding),
// standard base64, and lowercase hex. Decoders reject any non-alphabet byte.
#ifndef FHIRWARD_COMMON_ENCODING_H_
#define FHIRWARD_COMMON_ENCODING_H_

#include <optional>
#include <string>
#include <string_view>

namespace fhirward {

std::string Base64UrlEncode(std::string_view bytes);
std::optional<std::string> Base64UrlDecode(std::string_view text);
std::string Base64Encode(std::string_view bytes);
std::optional<std::string> Base64Decode(std::string_view text);
std::string HexEncode(std::string_view bytes);
std::optional<std::string> HexDecode(std::string_view text);

}  // namespace fhirward

#endif  // FHIRWARD_COMMON_ENCODING_H_
