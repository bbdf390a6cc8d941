// Injectable time and randomness. Production uses SystemClock and OsRandom;
// tests inject fixed clocks. Both are thread-safe.
#ifndef FHIRWARD_COMMON_CLOCK_H_
#define FHIRWARD_COMMON_CLOCK_H_

#include <chrono>
#include <cstdint>
#include <string>

namespace fhirward {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual std::chrono::system_clock::time_point Now() const = 0;
  int64_t NowSeconds() const {
    return std::chrono::duration_cast<std::chrono::seconds>(Now().time_since_epoch()).count();
  }
};

class SystemClock final : public Clock {
 public:
  std::chrono::system_clock::time_point Now() const override {
    return std::chrono::system_clock::now();
  }
  static const Clock& Get();
};

// `n` bytes from the OS CSPRNG (OpenSSL RAND_bytes). Aborts if the CSPRNG fails:
// continuing without randomness would be worse than stopping.
std::string RandomBytes(size_t n);

// A random RFC 4122 version-4 UUID in lowercase text form.
std::string RandomUuid();
// RFC 9562 UUIDv7: a millisecond timestamp then 74 random bits. Used for the
// ids of created resources: consecutive creates land next to each other in
// the store's indexes (the creation time is in meta.lastUpdated anyway).
std::string TimeOrderedUuid();

// FHIR instant with millisecond precision in UTC: 2026-11-29T03:36:46.123Z.
std::string FormatInstant(std::chrono::system_clock::time_point t);
// The same from milliseconds since the epoch, clamped to years 0000..9999
// (no nanosecond time_point: exact beyond 2262).
std::string FormatInstantMs(int64_t ms);
// RFC 7231 IMF-fixdate: Sun, 29 Nov 2026 03:36:46 GMT.
std::string FormatHttpDate(std::chrono::system_clock::time_point t);

// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12, day 1-31;
// H. Hinnant's algorithm), negative before it.
int64_t DaysFromCivil(int64_t year, int64_t month, int64_t day);

}  // namespace fhirward

#endif  // FHIRWARD_COMMON_CLOCK_H_
