#include "crypto/totp.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <climits>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "crypto/aead.h"

namespace fhirward::crypto {
namespace {

constexpr char kBase32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
constexpr uint32_t kPow10[] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};

bool DigitsOk(int digits) { return digits >= 6 && digits <= 8; }
bool StepOk(int step_seconds) { return step_seconds >= 1 && step_seconds <= 3600; }

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// RFC 4226 HOTP with HMAC-SHA-1 on the 8-byte big-endian counter.
std::string HotpCode(std::string_view secret, uint64_t counter, int digits) {
  static const unsigned char kEmpty[1] = {0};
  unsigned char msg[8];
  for (int i = 7; i >= 0; --i) {
    msg[i] = static_cast<unsigned char>(counter & 0xff);
    counter >>= 8;
  }
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  const unsigned char* key =
      secret.empty() ? kEmpty : reinterpret_cast<const unsigned char*>(secret.data());
  if (secret.size() > static_cast<size_t>(INT_MAX) ||
      HMAC(EVP_sha1(), key, static_cast<int>(secret.size()), msg, sizeof(msg), mac, &len) ==
          nullptr ||
      len != 20) {
    std::fputs("fatal: HMAC-SHA-1 failed\n", stderr);
    std::abort();
  }
  const int offset = mac[19] & 0x0f;
  const uint32_t bin = (static_cast<uint32_t>(mac[offset] & 0x7f) << 24) |
                       (static_cast<uint32_t>(mac[offset + 1]) << 16) |
                       (static_cast<uint32_t>(mac[offset + 2]) << 8) |
                       static_cast<uint32_t>(mac[offset + 3]);
  OPENSSL_cleanse(mac, sizeof(mac));
  uint32_t value = bin % kPow10[digits];
  std::string out(static_cast<size_t>(digits), '0');
  for (int i = digits - 1; i >= 0; --i) {
    out[static_cast<size_t>(i)] = static_cast<char>('0' + value % 10);
    value /= 10;
  }
  return out;
}

std::string PercentEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const auto b = static_cast<unsigned char>(c);
    if ((b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') || b == '-' ||
        b == '.' || b == '_' || b == '~') {
      out += c;
    } else {
      out += '%';
      out += kHex[b >> 4];
      out += kHex[b & 0x0f];
    }
  }
  return out;
}

}  // namespace

std::string Base32Encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() * 8 + 4) / 5);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : bytes) {
    acc = (acc << 8) | static_cast<uint8_t>(c);
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += kBase32[(acc >> bits) & 31];
    }
    acc &= (1u << bits) - 1;
  }
  if (bits > 0) out += kBase32[(acc << (5 - bits)) & 31];
  return out;
}

std::optional<std::string> Base32Decode(std::string_view text) {
  std::string clean;
  clean.reserve(text.size());
  for (char c : text) {
    if (c != ' ') clean += c;
  }
  size_t pads = 0;
  while (!clean.empty() && clean.back() == '=') {
    clean.pop_back();
    ++pads;
  }
  if (pads > 0 && (clean.size() + pads) % 8 != 0) return std::nullopt;
  // Valid unpadded lengths mod 8 are 0, 2, 4, 5 and 7 (0..4 trailing bytes);
  // complete padding fills the last quantum up to 8 characters, so pads < 8.
  const size_t rem = clean.size() % 8;
  if (rem == 1 || rem == 3 || rem == 6 || pads >= 8) return std::nullopt;
  std::string out;
  out.reserve(clean.size() * 5 / 8);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : clean) {
    int v;
    if (c >= 'A' && c <= 'Z') {
      v = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      v = c - 'a';
    } else if (c >= '2' && c <= '7') {
      v = c - '2' + 26;
    } else {
      return std::nullopt;  // includes '=' before the end
    }
    acc = (acc << 5) | static_cast<uint32_t>(v);
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
    acc &= (1u << bits) - 1;
  }
  if (acc != 0) return std::nullopt;  // non-zero trailing bits: not canonical
  return out;
}

SecretBytes GenerateTotpSecret() {
  std::string bytes = RandomBytes(kTotpSecretBytes);
  SecretBytes secret(bytes);
  OPENSSL_cleanse(bytes.data(), bytes.size());
  return secret;
}

std::string TotpCode(std::string_view secret, int64_t unix_seconds, int digits, int step_seconds) {
  if (!DigitsOk(digits) || !StepOk(step_seconds)) return {};
  return HotpCode(secret, static_cast<uint64_t>(FloorDiv(unix_seconds, step_seconds)), digits);
}

std::optional<int64_t> VerifyTotp(std::string_view secret, std::string_view code, int64_t now,
                                  int64_t last_used_step, int window, int digits,
                                  int step_seconds) {
  if (!DigitsOk(digits) || !StepOk(step_seconds) || window < 0 || window > kMaxTotpWindow) {
    return std::nullopt;
  }
  if (code.size() != static_cast<size_t>(digits)) return std::nullopt;
  for (char c : code) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  const int64_t current = FloorDiv(now, step_seconds);
  std::optional<int64_t> found;
  for (int k = -window; k <= window; ++k) {
    int64_t step;
    if (__builtin_add_overflow(current, static_cast<int64_t>(k), &step)) continue;
    // Every step is computed and compared, eligible or not, so the time taken
    // does not depend on which step (if any) matches.
    const std::string expected = HotpCode(secret, static_cast<uint64_t>(step), digits);
    const bool match = ConstantTimeEquals(expected, code);
    if (match && step > last_used_step && !found) found = step;
  }
  return found;
}

std::string TotpUri(std::string_view issuer, std::string_view account, std::string_view secret) {
  const std::string enc_issuer = PercentEncode(issuer);
  std::string uri = "otpauth://totp/";
  if (!issuer.empty()) absl::StrAppend(&uri, enc_issuer, ":");
  absl::StrAppend(&uri, PercentEncode(account), "?secret=", Base32Encode(secret));
  if (!issuer.empty()) absl::StrAppend(&uri, "&issuer=", enc_issuer);
  absl::StrAppend(&uri, "&algorithm=SHA1&digits=6&period=30");
  return uri;
}

}  // namespace fhirward::crypto
