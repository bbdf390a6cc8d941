// Argon2id password hashing (RFC 9106) for user accounts and client secrets.
//
// Stored form: the PHC string
//   $argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>
// with unpadded standard base64 salt (16 random bytes) and hash (32 bytes), as
// produced by the reference argon2 command-line tool and most libraries.
//
// Verification reads the cost parameters from the stored string, so a tampered
// database row could otherwise make a login cost unbounded CPU or memory. Every
// string is therefore parsed strictly and refused, before any hashing, unless
// it is argon2id version 19 with m <= kMaxArgon2MemoryKib, t <= kMaxArgon2TimeCost,
// p <= kMaxArgon2Parallelism and salt and hash lengths within
// [kMinArgon2SaltBytes, 64] and [kMinArgon2HashBytes, 64].
//
// Passwords longer than kMaxPasswordBytes are refused. All functions are
// thread-safe; with p > 1 libargon2 hashes on p threads.
#ifndef FHIRWARD_CRYPTO_PASSWORD_H_
#define FHIRWARD_CRYPTO_PASSWORD_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fhirward::crypto {

inline constexpr size_t kMaxPasswordBytes = 1024;
inline constexpr uint32_t kMaxArgon2MemoryKib = 1024 * 1024;  // 1 GiB
inline constexpr uint32_t kMaxArgon2TimeCost = 16;
inline constexpr uint32_t kMaxArgon2Parallelism = 8;
inline constexpr size_t kMinArgon2SaltBytes = 16;
inline constexpr size_t kMinArgon2HashBytes = 16;
inline constexpr size_t kArgon2SaltBytes = 16;  // what HashPassword generates
inline constexpr size_t kArgon2HashBytes = 32;  // what HashPassword generates

// Defaults: the OWASP Password Storage Cheat Sheet minimum for argon2id.
struct Argon2Params {
  uint32_t t_cost = 2;
  uint32_t m_cost_kib = 19456;
  uint32_t parallelism = 1;
};

// A PHC string for `password` under `params` with a fresh random salt.
// kInvalidParameter for a password longer than kMaxPasswordBytes; kInternal
// for params outside the bounds above (t >= 1, 1 <= p, 8 * p <= m) or if
// libargon2 fails (e.g. cannot allocate the memory).
absl::StatusOr<std::string> HashPassword(std::string_view password,
                                         const Argon2Params& params = {});

// True only when `phc` is a well-formed argon2id v19 PHC string within the
// bounds above and its hash matches `password` (constant-time comparison).
// False for other variants (argon2i, argon2d), malformed or out-of-bounds
// strings (checked before any hashing), over-long passwords and hashing
// failures.
bool VerifyPassword(std::string_view password, std::string_view phc);

// True when `phc` was made with weaker parameters than `params` (smaller m or
// t, or a salt or hash shorter than HashPassword makes) and the password should
// be rehashed on the next successful login. Also true for a string that
// VerifyPassword would refuse. A different parallelism alone is not weaker.
bool NeedsRehash(std::string_view phc, const Argon2Params& params);

// Spends the same work as a VerifyPassword of a string made under `params` and
// returns false. Used when the account does not exist, so that the response
// time does not reveal which usernames exist. Like VerifyPassword it returns at
// once for a password longer than kMaxPasswordBytes.
bool VerifyAgainstDummy(std::string_view password, const Argon2Params& params = {});

}  // namespace fhirward::crypto

#endif  // FHIRWARD_CRYPTO_PASSWORD_H_
