#include "crypto/password.h"

#include <argon2.h>
#include <openssl/crypto.h>

#include <optional>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"

namespace fhirward::crypto {
namespace {

// A char array, not std::string_view: this absl build has its own string_view
// type, and absl::StrCat does not take std::string_view.
constexpr char kPrefix[] = "$argon2id$v=19$";
constexpr size_t kPrefixLen = sizeof(kPrefix) - 1;
constexpr size_t kMaxSaltBytes = 64;
constexpr size_t kMaxHashBytes = 64;
// Longest well-formed string within the bounds, with room to spare; longer
// input is refused without being scanned.
constexpr size_t kMaxPhcChars = 256;

struct Phc {
  Argon2Params params;
  std::string salt;
  std::string hash;
};

// libargon2 needs at least 2 blocks per lane per sync point (4 sync points).
bool ParamsInBounds(const Argon2Params& p) {
  return p.t_cost >= 1 && p.t_cost <= kMaxArgon2TimeCost && p.parallelism >= 1 &&
         p.parallelism <= kMaxArgon2Parallelism && p.m_cost_kib <= kMaxArgon2MemoryKib &&
         p.m_cost_kib >= 8 * p.parallelism;
}

// Consumes `name`=<decimal> from the front of `s`. Canonical decimals only (no
// sign, no leading zeros), at most 10 digits, so the value cannot overflow.
std::optional<uint32_t> ConsumeParam(std::string_view& s, std::string_view name) {
  if (s.substr(0, name.size()) != name) return std::nullopt;
  s.remove_prefix(name.size());
  size_t n = 0;
  while (n < s.size() && s[n] >= '0' && s[n] <= '9') ++n;
  if (n == 0 || n > 10 || (n > 1 && s[0] == '0')) return std::nullopt;
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v = v * 10 + static_cast<uint64_t>(s[i] - '0');
  if (v > UINT32_MAX) return std::nullopt;
  s.remove_prefix(n);
  return static_cast<uint32_t>(v);
}

// PHC strings use standard base64 without padding.
std::string B64Encode(std::string_view bytes) {
  std::string out = Base64Encode(bytes);
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

std::optional<std::string> B64Decode(std::string_view text) {
  if (text.find('=') != std::string_view::npos || text.size() % 4 == 1) return std::nullopt;
  std::string padded(text);
  padded.append((4 - padded.size() % 4) % 4, '=');
  return Base64Decode(padded);  // rejects non-alphabet bytes and non-zero trailing bits
}

// Strict parse of "$argon2id$v=19$m=M,t=T,p=P$SALT$HASH" including the bounds
// check; nothing else (other variants or versions, keyid/data fields, extra
// '$' segments) is accepted.
std::optional<Phc> ParsePhc(std::string_view s) {
  if (s.size() > kMaxPhcChars || s.substr(0, kPrefixLen) != kPrefix) return std::nullopt;
  s.remove_prefix(kPrefixLen);
  Phc phc;
  std::optional<uint32_t> m = ConsumeParam(s, "m=");
  if (!m) return std::nullopt;
  std::optional<uint32_t> t = ConsumeParam(s, ",t=");
  if (!t) return std::nullopt;
  std::optional<uint32_t> p = ConsumeParam(s, ",p=");
  if (!p) return std::nullopt;
  phc.params = {.t_cost = *t, .m_cost_kib = *m, .parallelism = *p};
  if (!ParamsInBounds(phc.params)) return std::nullopt;
  if (s.empty() || s[0] != '$') return std::nullopt;
  s.remove_prefix(1);
  size_t dollar = s.find('$');
  if (dollar == std::string_view::npos) return std::nullopt;
  std::optional<std::string> salt = B64Decode(s.substr(0, dollar));
  std::optional<std::string> hash = B64Decode(s.substr(dollar + 1));  // a further '$' fails here
  if (!salt || !hash) return std::nullopt;
  if (salt->size() < kMinArgon2SaltBytes || salt->size() > kMaxSaltBytes ||
      hash->size() < kMinArgon2HashBytes || hash->size() > kMaxHashBytes) {
    return std::nullopt;
  }
  phc.salt = std::move(*salt);
  phc.hash = std::move(*hash);
  return phc;
}

// Argon2id v19 of `password` into `out` (whose size is the hash length).
bool Argon2idRaw(std::string_view password, std::string_view salt, const Argon2Params& params,
                 std::string& out) {
  return argon2id_hash_raw(params.t_cost, params.m_cost_kib, params.parallelism, password.data(),
                           password.size(), salt.data(), salt.size(), out.data(),
                           out.size()) == ARGON2_OK;
}

}  // namespace

absl::StatusOr<std::string> HashPassword(std::string_view password, const Argon2Params& params) {
  if (password.size() > kMaxPasswordBytes) {
    return Error(ErrorCode::kInvalidParameter,
                 absl::StrCat("password longer than ", kMaxPasswordBytes, " bytes"));
  }
  if (!ParamsInBounds(params)) {
    return Error(ErrorCode::kInternal, "argon2id parameters out of bounds");
  }
  const std::string salt = RandomBytes(kArgon2SaltBytes);
  std::string hash(kArgon2HashBytes, '\0');
  if (!Argon2idRaw(password, salt, params, hash)) {
    return Error(ErrorCode::kInternal, "argon2id hashing failed");
  }
  return absl::StrCat(kPrefix, "m=", params.m_cost_kib, ",t=", params.t_cost,
                      ",p=", params.parallelism, "$", B64Encode(salt), "$", B64Encode(hash));
}

bool VerifyPassword(std::string_view password, std::string_view phc) {
  if (password.size() > kMaxPasswordBytes) return false;
  std::optional<Phc> parsed = ParsePhc(phc);
  if (!parsed) return false;  // bounds checked before any hashing
  std::string computed(parsed->hash.size(), '\0');
  bool ok = Argon2idRaw(password, parsed->salt, parsed->params, computed) &&
            ConstantTimeEquals(computed, parsed->hash);
  OPENSSL_cleanse(computed.data(), computed.size());
  return ok;
}

bool NeedsRehash(std::string_view phc, const Argon2Params& params) {
  std::optional<Phc> parsed = ParsePhc(phc);
  if (!parsed) return true;
  return parsed->params.m_cost_kib < params.m_cost_kib || parsed->params.t_cost < params.t_cost ||
         parsed->salt.size() < kArgon2SaltBytes || parsed->hash.size() < kArgon2HashBytes;
}

bool VerifyAgainstDummy(std::string_view password, const Argon2Params& params) {
  if (password.size() > kMaxPasswordBytes || !ParamsInBounds(params)) return false;
  // A fixed salt is fine: the result is never stored or compared to anything a
  // caller supplies; the comparison only mirrors VerifyPassword's work.
  static const std::string kSalt(kArgon2SaltBytes, '\x5a');
  static const std::string kExpected(kArgon2HashBytes, '\0');
  std::string computed(kArgon2HashBytes, '\0');
  if (Argon2idRaw(password, kSalt, params, computed)) {
    (void)ConstantTimeEquals(computed, kExpected);
  }
  OPENSSL_cleanse(computed.data(), computed.size());
  return false;
}

}  // namespace fhirward::crypto
