// RFC 6238 TOTP (HMAC-SHA-1) for second-factor login, and RFC 4648 base32.
//
// TOTP secrets are raw bytes (20 random bytes, the SHA-1 block-size-friendly
// length RFC 4226 recommends); base32 is only the form shown to users and put
// in otpauth:// URIs. Codes have `digits` in [6, 8] and a time step of
// `step_seconds` in [1, 3600]; the time step number is T = floor(unix / step).
// All functions are pure and thread-safe (GenerateTotpSecret uses the CSPRNG).
#ifndef FHIRWARD_CRYPTO_TOTP_H_
#define FHIRWARD_CRYPTO_TOTP_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/secret_bytes.h"

namespace fhirward::crypto {

inline constexpr size_t kTotpSecretBytes = 20;
inline constexpr int kMaxTotpWindow = 10;

// RFC 4648 §6 base32: upper case, no '=' padding.
std::string Base32Encode(std::string_view bytes);
// Accepts upper or lower case, spaces anywhere (as users copy them), and either
// no padding or complete '=' padding at the end. nullopt for any other byte,
// an impossible length, or non-zero trailing bits (non-canonical encodings).
std::optional<std::string> Base32Decode(std::string_view text);

// 20 bytes from the CSPRNG.
SecretBytes GenerateTotpSecret();

// The code for time `unix_seconds`: `digits` decimal digits, zero-padded.
// Empty for digits outside [6, 8] or step_seconds outside [1, 3600].
std::string TotpCode(std::string_view secret, int64_t unix_seconds, int digits = 6,
                     int step_seconds = 30);

// The time step T whose code equals `code`, among the steps within ±window of
// the step of `now`, considering only steps > last_used_step so that a code is
// accepted at most once (callers store the returned step and pass it back as
// last_used_step). Every step in the window is computed and compared in
// constant time; when several eligible steps match (a coincidence), the
// earliest is returned. nullopt when no eligible step matches, for a code that
// is not exactly `digits` ASCII digits, and for window outside
// [0, kMaxTotpWindow] or digits/step_seconds outside the ranges above.
std::optional<int64_t> VerifyTotp(std::string_view secret, std::string_view code, int64_t now,
                                  int64_t last_used_step, int window = 1, int digits = 6,
                                  int step_seconds = 30);

// otpauth://totp/ISSUER:ACCOUNT?secret=BASE32&issuer=ISSUER&algorithm=SHA1&digits=6&period=30
// (Key Uri Format, as read by authenticator apps). ISSUER and ACCOUNT are
// percent-encoded (every byte but RFC 3986 unreserved ones) in both places.
// With an empty issuer the label is ACCOUNT alone and there is no issuer
// parameter. `secret` is the raw secret; the URI carries it base32-encoded.
std::string TotpUri(std::string_view issuer, std::string_view account, std::string_view secret);

}  // namespace fhirward::crypto

#endif  // FHIRWARD_CRYPTO_TOTP_H_
