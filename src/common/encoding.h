// Byte encodings used across modules: base64url (RFC 4648 §5, no padding),
// standard base64, lowercase hex, and the length-prefixed tuples bound into
// associated data. Decoders reject any non-alphabet byte.
#ifndef FHIRWARD_COMMON_ENCODING_H_
#define FHIRWARD_COMMON_ENCODING_H_

#include <initializer_list>
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

// "<decimal length>:<part>" for each part, concatenated: no two tuples share an
// encoding (the form of every associated data that binds several fields).
template <typename Parts>
std::string LengthPrefixedOf(const Parts& parts) {
  std::string out;
  for (std::string_view p : parts) {
    out += std::to_string(p.size());
    out += ':';
    out += p;
  }
  return out;
}
inline std::string LengthPrefixed(std::initializer_list<std::string_view> parts) {
  return LengthPrefixedOf(parts);
}

}  // namespace fhirward

#endif  // FHIRWARD_COMMON_ENCODING_H_
