// FHIRPath System values: exact decimals, partial dates and times, UCUM quantities, and the
// equality, equivalence, ordering and arithmetic rules of FHIRPath N1 §6.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/clock.h"
#include "common/str_cat.h"
#include "fhir/fhirpath.h"
#include "fhir/fhirpath_internal.h"

namespace fhirward::fhir::fhirpath {
namespace internal {
namespace {

using i128 = __int128;
using u128 = unsigned __int128;

constexpr std::array<i128, 39> MakePow10() {
  std::array<i128, 39> p{};
  p[0] = 1;
  for (size_t i = 1; i < p.size(); ++i) p[i] = p[i - 1] * 10;
  return p;
}
constexpr std::array<i128, 39> kPow10 = MakePow10();
constexpr i128 kMantissaLimit = kPow10[38];  // |mantissa| < 10^38

bool InRange(i128 m) { return m < kMantissaLimit && m > -kMantissaLimit; }

// m × 10^k with overflow detection.
std::optional<i128> ScaleUp(i128 m, int k) {
  if (k < 0 || k > 38) return std::nullopt;
  i128 r;
  if (__builtin_mul_overflow(m, kPow10[k], &r) || !InRange(r)) return std::nullopt;
  return r;
}

// n / d rounded by `mode`.
i128 DivRound(i128 n, i128 d, Rounding mode) {
  i128 q = n / d;
  i128 r = n % d;
  if (r == 0) return q;
  bool negative = (n < 0) != (d < 0);
  switch (mode) {
    case Rounding::kTruncate:
      return q;
    case Rounding::kFloor:
      return negative ? q - 1 : q;
    case Rounding::kCeiling:
      return negative ? q : q + 1;
    case Rounding::kHalfAwayFromZero: {
      u128 ar = r < 0 ? static_cast<u128>(-r) : static_cast<u128>(r);
      u128 ad = d < 0 ? static_cast<u128>(-d) : static_cast<u128>(d);
      if (ar * 2 >= ad) return negative ? q - 1 : q + 1;
      return q;
    }
  }
  return q;
}

std::optional<Decimal> Normalize(i128 m, int scale) {
  if (scale > Decimal::kMaxScale) {
    int drop = scale - Decimal::kMaxScale;
    if (drop > 38) return Decimal(0, Decimal::kMaxScale);
    m = DivRound(m, kPow10[drop], Rounding::kHalfAwayFromZero);
    scale = Decimal::kMaxScale;
  }
  if (!InRange(m)) return std::nullopt;
  return Decimal(m, scale);
}

// Aligns both operands to the larger scale.
bool Align(const Decimal& a, const Decimal& b, i128* ma, i128* mb, int* scale) {
  int s = std::max(a.scale(), b.scale());
  auto x = ScaleUp(a.mantissa(), s - a.scale());
  auto y = ScaleUp(b.mantissa(), s - b.scale());
  if (!x || !y) return false;
  *ma = *x;
  *mb = *y;
  *scale = s;
  return true;
}

}  // namespace

std::optional<Decimal> DecAdd(const Decimal& a, const Decimal& b) {
  i128 x, y, r;
  int s;
  if (!Align(a, b, &x, &y, &s) || __builtin_add_overflow(x, y, &r)) return std::nullopt;
  return Normalize(r, s);
}

std::optional<Decimal> DecSub(const Decimal& a, const Decimal& b) {
  i128 x, y, r;
  int s;
  if (!Align(a, b, &x, &y, &s) || __builtin_sub_overflow(x, y, &r)) return std::nullopt;
  return Normalize(r, s);
}

std::optional<Decimal> DecMul(const Decimal& a, const Decimal& b) {
  Decimal x = DecStrip(a), y = DecStrip(b);
  i128 r;
  if (__builtin_mul_overflow(x.mantissa(), y.mantissa(), &r)) return std::nullopt;
  // Keep the written precision where it fits: 1.2 * 1.8 = 2.16, 2.0 * 2.0 = 4.00.
  int scale = x.scale() + y.scale();
  int wanted = a.scale() + b.scale();
  if (wanted > scale && wanted <= Decimal::kMaxScale) {
    if (auto up = ScaleUp(r, wanted - scale)) {
      r = *up;
      scale = wanted;
    }
  }
  return Normalize(r, scale);
}

std::optional<Decimal> DecDiv(const Decimal& a, const Decimal& b) {
  if (b.mantissa() == 0) return std::nullopt;
  // result = (ma × 10^k / mb) × 10^-(sa + k - sb); pick k for at least 8 decimal places and as
  // many significant digits as fit.
  Decimal x = DecStrip(a), y = DecStrip(b);
  for (int target = 20; target >= 0; --target) {
    int k = target + y.scale() - x.scale();
    if (k < 0) {
      // Dividend has more decimals than wanted: scale the divisor instead.
      auto d = ScaleUp(y.mantissa(), -k);
      if (!d) continue;
      i128 q = DivRound(x.mantissa(), *d, Rounding::kHalfAwayFromZero);
      auto r = Normalize(q, target);
      if (r) return DecStrip(*r);
      continue;
    }
    auto n = ScaleUp(x.mantissa(), k);
    if (!n) continue;
    i128 q = DivRound(*n, y.mantissa(), Rounding::kHalfAwayFromZero);
    auto r = Normalize(q, target);
    if (r) return DecStrip(*r);
  }
  return std::nullopt;
}

std::optional<Decimal> DecMod(const Decimal& a, const Decimal& b) {
  i128 x, y;
  int s;
  if (!Align(a, b, &x, &y, &s) || y == 0) return std::nullopt;
  return Normalize(x % y, s);
}

std::optional<Decimal> DecIntDiv(const Decimal& a, const Decimal& b) {
  i128 x, y;
  int s;
  if (!Align(a, b, &x, &y, &s) || y == 0) return std::nullopt;
  return Decimal(x / y, 0);
}

int DecCompare(const Decimal& a, const Decimal& b) {
  i128 ma = a.mantissa(), mb = b.mantissa();
  int sa = (ma > 0) - (ma < 0), sb = (mb > 0) - (mb < 0);
  if (sa != sb) return sa < sb ? -1 : 1;
  i128 ia = ma / kPow10[a.scale()], ib = mb / kPow10[b.scale()];
  if (ia != ib) return ia < ib ? -1 : 1;
  int s = std::max(a.scale(), b.scale());
  i128 fa = (ma % kPow10[a.scale()]) * kPow10[s - a.scale()];
  i128 fb = (mb % kPow10[b.scale()]) * kPow10[s - b.scale()];
  return fa < fb ? -1 : fa > fb ? 1 : 0;
}

Decimal DecNegate(const Decimal& a) { return Decimal(-a.mantissa(), a.scale()); }

std::optional<Decimal> DecRescale(const Decimal& a, int scale, Rounding mode) {
  if (scale < 0 || scale > Decimal::kMaxScale) return std::nullopt;
  if (scale >= a.scale()) {
    auto m = ScaleUp(a.mantissa(), scale - a.scale());
    if (!m) return std::nullopt;
    return Decimal(*m, scale);
  }
  return Decimal(DivRound(a.mantissa(), kPow10[a.scale() - scale], mode), scale);
}

Decimal DecStrip(const Decimal& a) {
  i128 m = a.mantissa();
  int s = a.scale();
  while (s > 0 && m % 10 == 0) {
    m /= 10;
    --s;
  }
  return Decimal(m, s);
}

std::optional<Decimal> DecFromDouble(double v) {
  if (!std::isfinite(v)) return std::nullopt;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  auto d = Decimal::Parse(buf);
  if (!d) return std::nullopt;
  return DecStrip(*d);
}

std::optional<int64_t> DecToInt64(const Decimal& a) {
  Decimal s = DecStrip(a);
  if (s.scale() != 0) return std::nullopt;
  if (s.mantissa() > INT64_MAX || s.mantissa() < INT64_MIN) return std::nullopt;
  return static_cast<int64_t>(s.mantissa());
}

}  // namespace internal

using internal::i128;

std::optional<Decimal> Decimal::Parse(std::string_view s) {
  size_t i = 0;
  bool negative = false;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) negative = s[i++] == '-';
  i128 m = 0;
  int scale = 0;
  bool digits = false;
  bool truncated = false;
  // m × 10 + digit without overflow (the mantissa limit is far below i128's).
  auto push_digit = [](i128 m, char c, i128* out) {
    return !__builtin_mul_overflow(m, 10, out) && !__builtin_add_overflow(*out, c - '0', out) &&
           internal::InRange(*out);
  };
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    if (!push_digit(m, s[i++], &m)) return std::nullopt;
    digits = true;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    bool frac = false;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      frac = true;
      if (!truncated) {
        i128 next;
        if (push_digit(m, s[i], &next) && scale < kMaxScale) {
          m = next;
          ++scale;
        } else {
          truncated = true;
        }
      }
      ++i;
    }
    if (!frac) return std::nullopt;
  }
  if (!digits) return std::nullopt;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    bool exp_negative = false;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) exp_negative = s[i++] == '-';
    int exp = 0;
    bool exp_digits = false;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      exp = std::min(exp * 10 + (s[i++] - '0'), 100000);
      exp_digits = true;
    }
    if (!exp_digits) return std::nullopt;
    scale += exp_negative ? exp : -exp;
  }
  if (i != s.size()) return std::nullopt;
  if (negative) m = -m;
  if (scale < 0) {
    auto up = internal::ScaleUp(m, -scale);
    if (!up) return std::nullopt;
    return Decimal(*up, 0);
  }
  return internal::Normalize(m, scale);
}

std::string Decimal::ToString() const {
  __int128 m = mantissa();
  internal::u128 u = m < 0 ? static_cast<internal::u128>(-m) : static_cast<internal::u128>(m);
  std::string digits;
  do {
    digits.push_back(static_cast<char>('0' + static_cast<int>(u % 10)));
    u /= 10;
  } while (u != 0);
  while (static_cast<int>(digits.size()) <= scale_) digits.push_back('0');
  std::reverse(digits.begin(), digits.end());
  if (scale_ > 0) digits.insert(digits.size() - scale_, 1, '.');
  if (m < 0) digits.insert(0, 1, '-');
  return digits;
}

double Decimal::ToDouble() const { return std::strtod(ToString().c_str(), nullptr); }

// ---------------------------------------------------------------------------------------------
// Temporal

namespace {

bool ReadDigits(std::string_view s, size_t* i, size_t n, int* out) {
  if (*i + n > s.size()) return false;
  int v = 0;
  for (size_t k = 0; k < n; ++k) {
    char c = s[*i + k];
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *i += n;
  *out = v;
  return true;
}

bool IsLeap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }
int DaysInMonth(int y, int m) {
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && IsLeap(y) ? 29 : kDays[m - 1];
}

void CivilFromDays(int64_t z, int64_t* y, unsigned* m, unsigned* d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t yy = static_cast<int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = yy + (*m <= 2);
}

bool ParseDatePart(std::string_view s, size_t* i, Temporal* t) {
  int v;
  if (!ReadDigits(s, i, 4, &v)) return false;
  t->year = static_cast<int16_t>(v);
  t->precision = Temporal::kYear;
  if (*i < s.size() && s[*i] == '-') {
    ++*i;
    if (!ReadDigits(s, i, 2, &v) || v < 1 || v > 12) return false;
    t->month = static_cast<uint8_t>(v);
    t->precision = Temporal::kMonth;
    if (*i < s.size() && s[*i] == '-') {
      ++*i;
      if (!ReadDigits(s, i, 2, &v) || v < 1 || v > DaysInMonth(t->year, t->month)) return false;
      t->day = static_cast<uint8_t>(v);
      t->precision = Temporal::kDay;
    }
  }
  return true;
}

bool ParseTimePart(std::string_view s, size_t* i, Temporal* t) {
  int v;
  if (!ReadDigits(s, i, 2, &v) || v > 23) return false;
  t->hour = static_cast<uint8_t>(v);
  t->precision = Temporal::kHour;
  if (*i < s.size() && s[*i] == ':') {
    ++*i;
    if (!ReadDigits(s, i, 2, &v) || v > 59) return false;
    t->minute = static_cast<uint8_t>(v);
    t->precision = Temporal::kMinute;
    if (*i < s.size() && s[*i] == ':') {
      ++*i;
      if (!ReadDigits(s, i, 2, &v) || v > 59) return false;
      t->second = static_cast<uint8_t>(v);
      t->precision = Temporal::kSecond;
      if (*i < s.size() && s[*i] == '.') {
        ++*i;
        size_t start = *i;
        int ms = 0, n = 0;
        while (*i < s.size() && s[*i] >= '0' && s[*i] <= '9') {
          if (n < 3) {
            ms = ms * 10 + (s[*i] - '0');
            ++n;
          }
          ++*i;
        }
        if (*i == start) return false;
        while (n < 3) {
          ms *= 10;
          ++n;
        }
        t->millisecond = static_cast<uint16_t>(ms);
        t->precision = Temporal::kMillisecond;
      }
    }
  }
  return true;
}

bool ParseTz(std::string_view s, size_t* i, Temporal* t) {
  if (*i >= s.size()) return true;
  if (s[*i] == 'Z') {
    ++*i;
    t->has_tz = true;
    t->tz_minutes = 0;
    return true;
  }
  if (s[*i] != '+' && s[*i] != '-') return false;
  int sign = s[*i] == '-' ? -1 : 1;
  ++*i;
  int h, m;
  if (!ReadDigits(s, i, 2, &h) || *i >= s.size() || s[*i] != ':') return false;
  ++*i;
  if (!ReadDigits(s, i, 2, &m) || h > 14 || m > 59) return false;
  t->has_tz = true;
  t->tz_minutes = static_cast<int16_t>(sign * (h * 60 + m));
  return true;
}

void Append2(std::string* out, int v) {
  out->push_back(static_cast<char>('0' + v / 10 % 10));
  out->push_back(static_cast<char>('0' + v % 10));
}

void AppendTime(std::string* out, const Temporal& t) {
  Append2(out, t.hour);
  if (t.precision >= Temporal::kMinute) {
    out->push_back(':');
    Append2(out, t.minute);
  }
  if (t.precision >= Temporal::kSecond) {
    out->push_back(':');
    Append2(out, t.second);
  }
  if (t.precision >= Temporal::kMillisecond) {
    char buf[8];
    std::snprintf(buf, sizeof buf, ".%03d", t.millisecond);
    out->append(buf);
  }
}

int64_t EpochMillis(const Temporal& t) {
  int64_t days = DaysFromCivil(t.year, t.month, t.day);
  return ((days * 24 + t.hour) * 60 + t.minute) * 60000 + t.second * 1000 + t.millisecond;
}

bool SetFromEpochMillis(int64_t ms, Temporal* t) {
  int64_t days = ms >= 0 ? ms / 86400000 : -((-ms + 86399999) / 86400000);
  int64_t rest = ms - days * 86400000;
  int64_t y;
  unsigned m, d;
  CivilFromDays(days, &y, &m, &d);
  if (y < 1 || y > 9999) return false;
  t->year = static_cast<int16_t>(y);
  t->month = static_cast<uint8_t>(m);
  t->day = static_cast<uint8_t>(d);
  t->hour = static_cast<uint8_t>(rest / 3600000);
  t->minute = static_cast<uint8_t>(rest / 60000 % 60);
  t->second = static_cast<uint8_t>(rest / 1000 % 60);
  t->millisecond = static_cast<uint16_t>(rest % 1000);
  return true;
}

// Components below the precision are reset so that equal values have equal fields.
void ClearBelowPrecision(Temporal* t) {
  if (t->kind != Temporal::Kind::kTime) {
    if (t->precision < Temporal::kMonth) t->month = 1;
    if (t->precision < Temporal::kDay) t->day = 1;
  }
  if (t->precision < Temporal::kHour) t->hour = 0;
  if (t->precision < Temporal::kMinute) t->minute = 0;
  if (t->precision < Temporal::kSecond) t->second = 0;
  if (t->precision < Temporal::kMillisecond) t->millisecond = 0;
}

Temporal ToUtc(const Temporal& t) {
  if (!t.has_tz || t.tz_minutes == 0) return t;
  Temporal u = t;
  SetFromEpochMillis(EpochMillis(t) - static_cast<int64_t>(t.tz_minutes) * 60000, &u);
  u.tz_minutes = 0;
  return u;
}

}  // namespace

std::string Temporal::ToString() const {
  std::string out;
  if (kind != Kind::kTime) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04d", year);
    out.append(buf);
    if (precision >= kMonth) {
      out.push_back('-');
      Append2(&out, month);
    }
    if (precision >= kDay) {
      out.push_back('-');
      Append2(&out, day);
    }
    if (kind == Kind::kDate || precision <= kDay) return out;
    out.push_back('T');
  }
  AppendTime(&out, *this);
  if (kind == Kind::kDateTime && has_tz) {
    if (tz_minutes == 0) {
      out.push_back('Z');
    } else {
      int m = tz_minutes < 0 ? -tz_minutes : tz_minutes;
      out.push_back(tz_minutes < 0 ? '-' : '+');
      Append2(&out, m / 60);
      out.push_back(':');
      Append2(&out, m % 60);
    }
  }
  return out;
}

std::optional<Temporal> Temporal::ParseDate(std::string_view s) {
  Temporal t;
  t.kind = Kind::kDate;
  size_t i = 0;
  if (!ParseDatePart(s, &i, &t) || i != s.size()) return std::nullopt;
  return t;
}

std::optional<Temporal> Temporal::ParseDateTime(std::string_view s) {
  Temporal t;
  t.kind = Kind::kDateTime;
  size_t i = 0;
  if (!ParseDatePart(s, &i, &t)) return std::nullopt;
  if (i < s.size() && s[i] == 'T') {
    ++i;
    if (i < s.size()) {
      if (t.precision != kDay) return std::nullopt;
      if (!ParseTimePart(s, &i, &t) || !ParseTz(s, &i, &t)) return std::nullopt;
    }
  }
  if (i != s.size()) return std::nullopt;
  return t;
}

std::optional<Temporal> Temporal::ParseTime(std::string_view s) {
  Temporal t;
  t.kind = Kind::kTime;
  size_t i = 0;
  if (!ParseTimePart(s, &i, &t) || i != s.size()) return std::nullopt;
  return t;
}

namespace internal {

bool TemporalComparable(const Temporal& a, const Temporal& b) {
  return (a.kind == Temporal::Kind::kTime) == (b.kind == Temporal::Kind::kTime);
}

namespace {
// Seconds and milliseconds are one precision for comparisons (FHIRPath §6.1.1).
int EffectivePrecision(const Temporal& t) {
  return t.precision == Temporal::kMillisecond ? Temporal::kSecond : t.precision;
}
}  // namespace

bool SamePrecision(const Temporal& a, const Temporal& b) {
  return EffectivePrecision(a) == EffectivePrecision(b);
}

std::optional<int> TemporalCompare(const Temporal& a0, const Temporal& b0) {
  Temporal a = a0, b = b0;
  if (a.kind != Temporal::Kind::kTime && a.precision >= Temporal::kHour &&
      b.precision >= Temporal::kHour) {
    if (a.has_tz != b.has_tz) return std::nullopt;
    a = ToUtc(a);
    b = ToUtc(b);
  }
  int pa = EffectivePrecision(a), pb = EffectivePrecision(b);
  int common = std::min(pa, pb);
  int first = a.kind == Temporal::Kind::kTime ? Temporal::kHour : Temporal::kYear;
  for (int p = first; p <= common; ++p) {
    int x = 0, y = 0;
    switch (p) {
      case Temporal::kYear:
        x = a.year, y = b.year;
        break;
      case Temporal::kMonth:
        x = a.month, y = b.month;
        break;
      case Temporal::kDay:
        x = a.day, y = b.day;
        break;
      case Temporal::kHour:
        x = a.hour, y = b.hour;
        break;
      case Temporal::kMinute:
        x = a.minute, y = b.minute;
        break;
      default:
        x = a.second * 1000 + (a.precision == Temporal::kMillisecond ? a.millisecond : 0);
        y = b.second * 1000 + (b.precision == Temporal::kMillisecond ? b.millisecond : 0);
        break;
    }
    if (x != y) return x < y ? -1 : 1;
  }
  if (pa != pb) return std::nullopt;
  return 0;
}

Temporal TemporalToDate(const Temporal& a) {
  Temporal d = a;
  d.kind = Temporal::Kind::kDate;
  d.precision = std::min(a.precision, Temporal::kDay);
  d.has_tz = false;
  d.tz_minutes = 0;
  ClearBelowPrecision(&d);
  return d;
}

absl::StatusOr<Temporal> TemporalAdd(const Temporal& a, const Quantity& q, int sign) {
  enum Unit { kYears, kMonths, kWeeks, kDays, kHours, kMinutes, kSeconds, kMillis };
  std::string_view u = q.unit;
  if (!q.calendar && (u == "a" || u == "mo")) {
    return absl::InvalidArgumentError(Cat("date arithmetic with the UCUM unit '", u,
                                          "' is not defined (use ", u == "a" ? "year" : "month",
                                          ")"));
  }
  if (u.ends_with('s') && u.size() > 3 && u != "ms") u.remove_suffix(1);  // plurals
  Unit unit;
  if (u == "year")
    unit = kYears;
  else if (u == "month")
    unit = kMonths;
  else if (u == "week" || u == "wk")
    unit = kWeeks;
  else if (u == "day" || u == "d")
    unit = kDays;
  else if (u == "hour" || u == "h")
    unit = kHours;
  else if (u == "minute" || u == "min")
    unit = kMinutes;
  else if (u == "second" || u == "s")
    unit = kSeconds;
  else if (u == "millisecond" || u == "ms")
    unit = kMillis;
  else {
    return absl::InvalidArgumentError(
        Cat("cannot add a quantity in '", q.unit, "' to a date/time"));
  }
  auto whole = DecRescale(q.value, 0, Rounding::kTruncate);
  if (!whole || whole->mantissa() > 1000000000000LL || whole->mantissa() < -1000000000000LL) {
    return absl::InvalidArgumentError("date arithmetic out of range");
  }
  int64_t n = static_cast<int64_t>(whole->mantissa()) * sign;
  Temporal r = a;
  if (a.kind == Temporal::Kind::kTime) {
    int64_t ms;
    switch (unit) {
      case kHours:
        ms = n * 3600000;
        break;
      case kMinutes:
        ms = n * 60000;
        break;
      case kSeconds:
        ms = n * 1000;
        break;
      case kMillis:
        ms = n;
        break;
      default:
        return absl::InvalidArgumentError("cannot add a calendar duration to a time");
    }
    int64_t t = (a.hour * 3600000LL + a.minute * 60000LL + a.second * 1000LL + a.millisecond + ms) %
                86400000LL;
    if (t < 0) t += 86400000LL;
    r.hour = static_cast<uint8_t>(t / 3600000);
    r.minute = static_cast<uint8_t>(t / 60000 % 60);
    r.second = static_cast<uint8_t>(t / 1000 % 60);
    r.millisecond = static_cast<uint16_t>(t % 1000);
    ClearBelowPrecision(&r);
    return r;
  }
  if (unit == kYears || unit == kMonths) {
    int64_t months =
        static_cast<int64_t>(a.year) * 12 + (a.month - 1) + (unit == kYears ? n * 12 : n);
    if (months < 12 || months >= 10000 * 12) {
      return absl::InvalidArgumentError("date arithmetic out of range");
    }
    r.year = static_cast<int16_t>(months / 12);
    r.month = static_cast<uint8_t>(months % 12 + 1);
    r.day = static_cast<uint8_t>(std::min<int>(a.day, DaysInMonth(r.year, r.month)));
    ClearBelowPrecision(&r);
    return r;
  }
  int64_t ms;
  switch (unit) {
    case kWeeks:
      ms = n * 7 * 86400000;
      break;
    case kDays:
      ms = n * 86400000;
      break;
    case kHours:
      ms = n * 3600000;
      break;
    case kMinutes:
      ms = n * 60000;
      break;
    case kSeconds:
      ms = n * 1000;
      break;
    default:
      ms = n;
      break;
  }
  if (!SetFromEpochMillis(EpochMillis(a) + ms, &r)) {
    return absl::InvalidArgumentError("date arithmetic out of range");
  }
  ClearBelowPrecision(&r);
  return r;
}

// ---------------------------------------------------------------------------------------------
// UCUM

namespace {

struct AtomSpec {
  std::string_view code;
  std::string_view factor;
  std::array<int8_t, 8> dims;  // m g s rad K C cd calendar-month
  bool metric;
};

// A practical subset of UCUM (https://ucum.org/ucum): base units, SI derived units, time,
// customary length/mass/volume, and the units common in clinical data. Special (non-ratio)
// units such as Cel and [degF] are absent: they only compare with themselves.
constexpr AtomSpec kAtoms[] = {
    {"m", "1", {1, 0, 0, 0, 0, 0, 0, 0}, true},
    {"s", "1", {0, 0, 1, 0, 0, 0, 0, 0}, true},
    {"g", "1", {0, 1, 0, 0, 0, 0, 0, 0}, true},
    {"rad", "1", {0, 0, 0, 1, 0, 0, 0, 0}, true},
    {"K", "1", {0, 0, 0, 0, 1, 0, 0, 0}, true},
    {"C", "1", {0, 0, 0, 0, 0, 1, 0, 0}, true},
    {"cd", "1", {0, 0, 0, 0, 0, 0, 1, 0}, true},
    {"mol", "602213670000000000000000", {}, true},
    {"sr", "1", {0, 0, 0, 2, 0, 0, 0, 0}, true},
    {"Hz", "1", {0, 0, -1, 0, 0, 0, 0, 0}, true},
    {"N", "1000", {1, 1, -2, 0, 0, 0, 0, 0}, true},
    {"Pa", "1000", {-1, 1, -2, 0, 0, 0, 0, 0}, true},
    {"J", "1000", {2, 1, -2, 0, 0, 0, 0, 0}, true},
    {"W", "1000", {2, 1, -3, 0, 0, 0, 0, 0}, true},
    {"A", "1", {0, 0, -1, 0, 0, 1, 0, 0}, true},
    {"V", "1000", {2, 1, -2, 0, 0, -1, 0, 0}, true},
    {"F", "0.001", {-2, -1, 2, 0, 0, 2, 0, 0}, true},
    {"Ohm", "1000", {2, 1, -1, 0, 0, -2, 0, 0}, true},
    {"S", "0.001", {-2, -1, 1, 0, 0, 2, 0, 0}, true},
    {"Wb", "1000", {2, 1, -1, 0, 0, -1, 0, 0}, true},
    {"T", "1000", {0, 1, -1, 0, 0, -1, 0, 0}, true},
    {"H", "1000", {2, 1, 0, 0, 0, -2, 0, 0}, true},
    {"lm", "1", {0, 0, 0, 2, 0, 0, 1, 0}, true},
    {"lx", "1", {-2, 0, 0, 2, 0, 0, 1, 0}, true},
    {"Bq", "1", {0, 0, -1, 0, 0, 0, 0, 0}, true},
    {"Gy", "1", {2, 0, -2, 0, 0, 0, 0, 0}, true},
    {"Sv", "1", {2, 0, -2, 0, 0, 0, 0, 0}, true},
    {"l", "0.001", {3, 0, 0, 0, 0, 0, 0, 0}, true},
    {"L", "0.001", {3, 0, 0, 0, 0, 0, 0, 0}, true},
    {"ar", "100", {2, 0, 0, 0, 0, 0, 0, 0}, true},
    {"t", "1000000", {0, 1, 0, 0, 0, 0, 0, 0}, true},
    {"bar", "100000000", {-1, 1, -2, 0, 0, 0, 0, 0}, true},
    {"eq", "602213670000000000000000", {}, true},
    {"osm", "602213670000000000000000", {}, true},
    {"kat", "602213670000000000000000", {0, 0, -1, 0, 0, 0, 0, 0}, true},
    {"cal", "4184", {2, 1, -2, 0, 0, 0, 0, 0}, true},
    {"m[Hg]", "133322000", {-1, 1, -2, 0, 0, 0, 0, 0}, true},
    {"m[H2O]", "9806650", {-1, 1, -2, 0, 0, 0, 0, 0}, true},
    {"[Cal]", "4184000", {2, 1, -2, 0, 0, 0, 0, 0}, false},
    {"min", "60", {0, 0, 1, 0, 0, 0, 0, 0}, false},
    {"h", "3600", {0, 0, 1, 0, 0, 0, 0, 0}, false},
    {"d", "86400", {0, 0, 1, 0, 0, 0, 0, 0}, false},
    {"wk", "604800", {0, 0, 1, 0, 0, 0, 0, 0}, false},
    {"mo", "2629800", {0, 0, 1, 0, 0, 0, 0, 0}, false},
    {"a", "31557600", {0, 0, 1, 0, 0, 0, 0, 0}, false},
    {"mo_j", "2629800", {0, 0, 1, 0, 0, 0, 0, 0}, false},
    {"a_j", "31557600", {0, 0, 1, 0, 0, 0, 0, 0}, false},
    {"mo_g", "2629746", {0, 0, 1, 0, 0, 0, 0, 0}, false},
    {"a_g", "31556952", {0, 0, 1, 0, 0, 0, 0, 0}, false},
    {"[in_i]", "0.0254", {1, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[ft_i]", "0.3048", {1, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[yd_i]", "0.9144", {1, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[mi_i]", "1609.344", {1, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[nmi_i]", "1852", {1, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[lb_av]", "453.59237", {0, 1, 0, 0, 0, 0, 0, 0}, false},
    {"[oz_av]", "28.349523125", {0, 1, 0, 0, 0, 0, 0, 0}, false},
    {"[dr_av]", "1.7718451953125", {0, 1, 0, 0, 0, 0, 0, 0}, false},
    {"[gr]", "0.06479891", {0, 1, 0, 0, 0, 0, 0, 0}, false},
    {"[stone_av]", "6350.29318", {0, 1, 0, 0, 0, 0, 0, 0}, false},
    {"[gal_us]", "0.003785411784", {3, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[qt_us]", "0.000946352946", {3, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[pt_us]", "0.000473176473", {3, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[cup_us]", "0.0002365882365", {3, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[foz_us]", "0.0000295735295625", {3, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[tbs_us]", "0.00001478676478125", {3, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[tsp_us]", "0.00000492892159375", {3, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[drp]", "0.00000005", {3, 0, 0, 0, 0, 0, 0, 0}, false},
    {"[psi]", "6894757.29316836", {-1, 1, -2, 0, 0, 0, 0, 0}, false},
    {"%", "0.01", {}, false},
    {"[ppth]", "0.001", {}, false},
    {"[ppm]", "0.000001", {}, false},
    {"[ppb]", "0.000000001", {}, false},
    {"[pi]", "3.1415926535897932384626433832795028842", {}, false},
    {"deg", "0.017453292519943295769236907684886127134", {0, 0, 0, 1, 0, 0, 0, 0}, false},
};

struct Prefix {
  std::string_view code;
  int exponent;
};
constexpr Prefix kPrefixes[] = {
    {"da", 1}, {"Y", 24},  {"Z", 21},  {"E", 18},  {"P", 15},  {"T", 12},  {"G", 9},
    {"M", 6},  {"k", 3},   {"h", 2},   {"d", -1},  {"c", -2},  {"m", -3},  {"u", -6},
    {"n", -9}, {"p", -12}, {"f", -15}, {"a", -18}, {"z", -21}, {"y", -24},
};

struct Atom {
  UnitInfo info;
  bool metric;
};

const std::unordered_map<std::string_view, Atom>& Atoms() {
  static const auto* atoms = [] {
    auto* m = new std::unordered_map<std::string_view, Atom>();
    for (const AtomSpec& spec : kAtoms) {
      Atom a;
      a.info.num = *Decimal::Parse(spec.factor);
      a.info.dims = spec.dims;
      a.metric = spec.metric;
      m->emplace(spec.code, a);
    }
    return m;
  }();
  return *atoms;
}

std::optional<Decimal> Power10(int e) {
  if (e >= 0) {
    auto m = ScaleUp(1, e);
    if (!m) return std::nullopt;
    return Decimal(*m, 0);
  }
  if (-e > Decimal::kMaxScale) return std::nullopt;
  return Decimal(1, -e);
}

bool Multiply(UnitInfo* acc, const UnitInfo& c, int sign) {
  auto num = DecMul(acc->num, sign > 0 ? c.num : c.den);
  auto den = DecMul(acc->den, sign > 0 ? c.den : c.num);
  if (!num || !den) return false;
  acc->num = DecStrip(*num);
  acc->den = DecStrip(*den);
  for (size_t i = 0; i < acc->dims.size(); ++i) {
    int d = acc->dims[i] + sign * c.dims[i];
    if (d > 100 || d < -100) return false;
    acc->dims[i] = static_cast<int8_t>(d);
  }
  return true;
}

bool Pow(UnitInfo* u, int e) {
  if (e == 1) return true;
  if (e == 0 || e > 10 || e < -10) return e == 0 ? (*u = UnitInfo(), true) : false;
  UnitInfo base = *u;
  UnitInfo r;
  for (int i = 0; i < (e < 0 ? -e : e); ++i) {
    if (!Multiply(&r, base, e < 0 ? -1 : 1)) return false;
  }
  *u = r;
  return true;
}

class UnitParser {
 public:
  explicit UnitParser(std::string_view s) : s_(s) {}

  std::optional<UnitInfo> Parse() {
    UnitInfo u;
    if (s_.empty() || !Term(&u, 0) || i_ != s_.size()) return std::nullopt;
    return u;
  }

 private:
  bool Term(UnitInfo* out, int depth) {
    if (depth > 8) return false;
    int sign = 1;
    if (i_ < s_.size() && s_[i_] == '/') {
      sign = -1;
      ++i_;
    }
    while (true) {
      UnitInfo c;
      if (!Component(&c, depth) || !Multiply(out, c, sign)) return false;
      if (i_ < s_.size() && (s_[i_] == '.' || s_[i_] == '/')) {
        sign = s_[i_++] == '/' ? -1 : 1;
        continue;
      }
      return true;
    }
  }

  bool Component(UnitInfo* out, int depth) {
    if (i_ >= s_.size()) return false;
    if (s_[i_] == '(') {
      ++i_;
      if (!Term(out, depth + 1) || i_ >= s_.size() || s_[i_] != ')') return false;
      ++i_;
      int e;
      if (Exponent(&e) && !Pow(out, e)) return false;
      return true;
    }
    if (s_[i_] == '{') return Annotation();
    size_t start = i_;
    while (i_ < s_.size()) {
      char c = s_[i_];
      if (c == '.' || c == '/' || c == '(' || c == ')' || c == '{') break;
      if (c == '[') {
        size_t close = s_.find(']', i_);
        if (close == std::string_view::npos) return false;
        i_ = close + 1;
        continue;
      }
      ++i_;
    }
    std::string_view symbol = s_.substr(start, i_ - start);
    if (symbol.empty() || !Symbol(symbol, out)) return false;
    if (i_ < s_.size() && s_[i_] == '{') return Annotation();
    return true;
  }

  bool Annotation() {
    size_t close = s_.find('}', i_);
    if (close == std::string_view::npos) return false;
    i_ = close + 1;
    return true;
  }

  bool Exponent(int* e) {
    size_t j = i_;
    int sign = 1;
    if (j < s_.size() && (s_[j] == '-' || s_[j] == '+')) sign = s_[j++] == '-' ? -1 : 1;
    if (j >= s_.size() || s_[j] < '0' || s_[j] > '9') return false;
    int v = 0;
    while (j < s_.size() && s_[j] >= '0' && s_[j] <= '9')
      v = std::min(v * 10 + (s_[j++] - '0'), 99);
    i_ = j;
    *e = sign * v;
    return true;
  }

  static bool AllDigits(std::string_view s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  }

  static bool Symbol(std::string_view sym, UnitInfo* out) {
    if (AllDigits(sym)) {
      if (sym.size() > 30) return false;
      *out = UnitInfo();
      out->num = *Decimal::Parse(sym);
      return true;
    }
    if (sym.starts_with("10*") || sym.starts_with("10^")) {
      std::string_view rest = sym.substr(3);
      int sign = 1;
      if (!rest.empty() && (rest[0] == '-' || rest[0] == '+')) {
        sign = rest[0] == '-' ? -1 : 1;
        rest.remove_prefix(1);
      }
      if (!AllDigits(rest) || rest.size() > 2) return false;
      auto p = Power10(sign * std::atoi(std::string(rest).c_str()));
      if (!p) return false;
      *out = UnitInfo();
      out->num = *p;
      return true;
    }
    // Trailing exponent: m2, s-1, [in_i]3.
    size_t end = sym.size();
    while (end > 0 && sym[end - 1] >= '0' && sym[end - 1] <= '9') --end;
    int exponent = 1;
    if (end < sym.size()) {
      size_t digits_start = end;
      if (end > 0 && (sym[end - 1] == '-' || sym[end - 1] == '+')) --end;
      if (end == 0) return false;
      exponent = std::atoi(std::string(sym.substr(digits_start)).c_str());
      if (sym[end] == '-') exponent = -exponent;
      if (exponent > 10) return false;
    }
    std::string_view atom = sym.substr(0, end);
    const auto& atoms = Atoms();
    auto it = atoms.find(atom);
    if (it != atoms.end()) {
      *out = it->second.info;
    } else {
      bool found = false;
      for (const Prefix& p : kPrefixes) {
        if (!atom.starts_with(p.code) || atom.size() == p.code.size()) continue;
        auto a = atoms.find(atom.substr(p.code.size()));
        if (a == atoms.end() || !a->second.metric) continue;
        *out = a->second.info;
        auto factor = Power10(p.exponent);
        auto num = factor ? DecMul(out->num, *factor) : std::nullopt;
        if (!num) return false;
        out->num = DecStrip(*num);
        found = true;
        break;
      }
      if (!found) return false;
    }
    return Pow(out, exponent);
  }

  std::string_view s_;
  size_t i_ = 0;
};

struct CalendarWord {
  std::string_view word;
  std::string_view ucum;
};
constexpr CalendarWord kCalendar[] = {
    {"year", "a"},   {"years", "a"},   {"month", "mo"},       {"months", "mo"},
    {"week", "wk"},  {"weeks", "wk"},  {"day", "d"},          {"days", "d"},
    {"hour", "h"},   {"hours", "h"},   {"minute", "min"},     {"minutes", "min"},
    {"second", "s"}, {"seconds", "s"}, {"millisecond", "ms"}, {"milliseconds", "ms"},
};

}  // namespace

std::optional<UnitInfo> ParseUnit(std::string_view ucum) {
  if (ucum.size() > 256) return std::nullopt;
  if (ucum == "1") return UnitInfo();
  return UnitParser(ucum).Parse();
}

bool IsCalendarKeyword(std::string_view word) { return CalendarToUcum(word).has_value(); }

std::optional<std::string_view> CalendarToUcum(std::string_view keyword) {
  for (const CalendarWord& c : kCalendar) {
    if (c.word == keyword) return c.ucum;
  }
  return std::nullopt;
}

std::optional<UnitInfo> QuantityUnit(const Quantity& q) {
  if (q.calendar) {
    auto ucum = CalendarToUcum(q.unit);
    if (!ucum) return std::nullopt;
    if (*ucum == "a" || *ucum == "mo") {
      // Calendar years and months are not definite durations: they only compare with each other.
      UnitInfo u;
      u.num = Decimal::FromInt(*ucum == "a" ? 12 : 1);
      u.dims[7] = 1;
      return u;
    }
    return ParseUnit(*ucum);
  }
  return ParseUnit(q.unit);
}

bool SameDims(const UnitInfo& a, const UnitInfo& b) { return a.dims == b.dims; }

std::optional<Decimal> ConvertQuantity(const Quantity& q, const UnitInfo& from,
                                       const UnitInfo& to) {
  if (!SameDims(from, to)) return std::nullopt;
  auto n = DecMul(q.value, from.num);
  if (n) n = DecMul(*n, to.den);
  auto d = DecMul(from.den, to.num);
  if (!n || !d) return std::nullopt;
  return DecDiv(*n, *d);
}

std::optional<int> QuantityCompare(const Quantity& a, const Quantity& b) {
  if (a.calendar == b.calendar && a.unit == b.unit) return DecCompare(a.value, b.value);
  auto ua = QuantityUnit(a), ub = QuantityUnit(b);
  if (!ua || !ub || !SameDims(*ua, *ub)) return std::nullopt;
  auto l = DecMul(a.value, ua->num);
  if (l) l = DecMul(*l, ub->den);
  auto r = DecMul(b.value, ub->num);
  if (r) r = DecMul(*r, ua->den);
  if (!l || !r) return std::nullopt;
  return DecCompare(*l, *r);
}

std::optional<bool> QuantityEquivalent(const Quantity& a, const Quantity& b) {
  Decimal bv = b.value;
  if (!(a.calendar == b.calendar && a.unit == b.unit)) {
    auto ua = QuantityUnit(a), ub = QuantityUnit(b);
    if (!ua || !ub) return std::nullopt;
    auto converted = ConvertQuantity(b, *ub, *ua);
    if (!converted) return std::nullopt;
    bv = *converted;
  }
  int scale = std::min(a.value.scale(), bv.scale());
  auto x = DecRescale(a.value, scale, Rounding::kHalfAwayFromZero);
  auto y = DecRescale(bv, scale, Rounding::kHalfAwayFromZero);
  if (!x || !y) return std::nullopt;
  return DecCompare(*x, *y) == 0;
}

// ---------------------------------------------------------------------------------------------
// Items

namespace {

enum class Prim : uint8_t { kString, kBoolean, kInteger, kDecimal, kDate, kDateTime, kTime };

Prim PrimitiveCategory(std::string_view name) {
  switch (name.empty() ? '\0' : name[0]) {
    case 'b':
      if (name == "boolean") return Prim::kBoolean;
      break;
    case 'i':
      if (name == "integer" || name == "integer64") return Prim::kInteger;
      if (name == "instant") return Prim::kDateTime;
      break;
    case 'p':
      if (name == "positiveInt") return Prim::kInteger;
      break;
    case 'u':
      if (name == "unsignedInt") return Prim::kInteger;
      break;
    case 'd':
      if (name == "decimal") return Prim::kDecimal;
      if (name == "date") return Prim::kDate;
      if (name == "dateTime") return Prim::kDateTime;
      break;
    case 't':
      if (name == "time") return Prim::kTime;
      break;
  }
  return Prim::kString;
}

bool IsQuantityType(const TypeDef* t) {
  for (; t != nullptr; t = t->base_def) {
    if (t->name == "Quantity") return true;
  }
  return false;
}

std::optional<Item> NumberItem(const json::Value& v) {
  if (auto i = v.as_int64()) return Item::MakeInteger(*i);
  if (auto d = Decimal::Parse(v.number_text())) return Item::MakeDecimal(*d);
  return std::nullopt;
}

std::optional<Item> QuantityFromNode(const json::Value& v) {
  if (!v.is_object()) return std::nullopt;
  const json::Value* value = v.Find("value");
  if (value == nullptr || !value->is_number()) return std::nullopt;
  auto d = Decimal::Parse(value->number_text());
  if (!d) return std::nullopt;
  Quantity q;
  q.value = *d;
  auto code = v.GetString("code");
  auto unit = v.GetString("unit");
  auto system = v.GetString("system");
  if (code && (!system || *system == "http://unitsofmeasure.org")) {
    q.unit = std::string(*code);
  } else if (unit) {
    q.unit = std::string(*unit);
    if (IsCalendarKeyword(q.unit)) q.calendar = true;
  } else if (code) {
    q.unit = std::string(*code);
  }
  return Item::MakeQuantity(std::move(q));
}

bool IsComplexNode(const Item& a) {
  if (!a.is_node()) return false;
  const Item::Node& n = a.node();
  if (n.type != nullptr) return !IsPrimitiveType(n.type);
  return n.value == nullptr ? false : (n.value->is_object() || n.value->is_array());
}

bool JsonEqual(const json::Value& a, const json::Value& b, int depth, bool equivalent);

// Case-insensitive, whitespace runs as one space, ends trimmed (FHIRPath §6.1.3).
std::string NormalizeForEquivalence(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool pending_space = false;
  for (unsigned char c : s) {
    if (std::isspace(c)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(static_cast<char>(std::tolower(c)));
  }
  return out;
}

bool StringEquivalent(std::string_view a, std::string_view b) {
  return NormalizeForEquivalence(a) == NormalizeForEquivalence(b);
}

bool JsonEqual(const json::Value& a, const json::Value& b, int depth, bool equivalent) {
  if (depth > 128) return false;
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case json::Value::Kind::kNull:
      return true;
    case json::Value::Kind::kBool:
      return a.as_bool() == b.as_bool();
    case json::Value::Kind::kNumber: {
      auto x = Decimal::Parse(a.number_text()), y = Decimal::Parse(b.number_text());
      if (x && y) return DecCompare(*x, *y) == 0;
      return a.number_text() == b.number_text();
    }
    case json::Value::Kind::kString:
      return equivalent ? StringEquivalent(a.as_string(), b.as_string())
                        : a.as_string() == b.as_string();
    case json::Value::Kind::kArray: {
      const json::Array& x = a.items();
      const json::Array& y = b.items();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (!JsonEqual(x[i], y[i], depth + 1, equivalent)) return false;
      }
      return true;
    }
    case json::Value::Kind::kObject: {
      const json::Object& x = a.members();
      const json::Object& y = b.members();
      if (x.size() != y.size()) return false;
      bool same_order = true;
      for (size_t i = 0; i < x.size() && same_order; ++i) same_order = x[i].first == y[i].first;
      if (same_order) {
        for (size_t i = 0; i < x.size(); ++i) {
          if (!JsonEqual(x[i].second, y[i].second, depth + 1, equivalent)) return false;
        }
        return true;
      }
      // Different member order: pair members by name in O(n log n).
      auto by_name = [](const json::Object& o) {
        std::vector<const json::Member*> v;
        v.reserve(o.size());
        for (const json::Member& m : o) v.push_back(&m);
        std::sort(v.begin(), v.end(),
                  [](const json::Member* p, const json::Member* q) { return p->first < q->first; });
        return v;
      };
      auto xs = by_name(x), ys = by_name(y);
      for (size_t i = 0; i < xs.size(); ++i) {
        if (xs[i]->first != ys[i]->first ||
            !JsonEqual(xs[i]->second, ys[i]->second, depth + 1, equivalent)) {
          return false;
        }
      }
      return true;
    }
  }
  return false;
}

bool NodesStructurallyEqual(const Item::Node& a, const Item::Node& b, bool equivalent) {
  auto eq = [&](const json::Value* x, const json::Value* y) {
    if (x == nullptr || y == nullptr) return x == y;
    return x == y || JsonEqual(*x, *y, 0, equivalent);
  };
  return eq(a.value, b.value) && eq(a.ext, b.ext);
}

size_t Mix(size_t h, size_t v) { return h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2)); }

size_t DecimalHash(const Decimal& d) {
  Decimal s = DecStrip(d);
  u128 m = static_cast<u128>(s.mantissa());
  return Mix(Mix(static_cast<size_t>(m), static_cast<size_t>(m >> 64)), s.scale());
}

// A hash of JSON content consistent with JsonEqual, in time linear in the top level only:
// nested arrays and objects contribute their size. Collisions only cost comparisons, which
// the evaluator charges to the step budget.
size_t JsonHash(const json::Value& v, int depth) {
  switch (v.kind()) {
    case json::Value::Kind::kNull:
      return 1;
    case json::Value::Kind::kBool:
      return v.as_bool() ? 2 : 3;
    case json::Value::Kind::kNumber: {
      auto d = Decimal::Parse(v.number_text());
      return d ? DecimalHash(*d) : std::hash<std::string_view>{}(v.number_text());
    }
    case json::Value::Kind::kString:
      return std::hash<std::string_view>{}(v.as_string());
    case json::Value::Kind::kArray: {
      size_t h = Mix(5, v.items().size());
      if (depth > 0) return h;
      for (const json::Value& x : v.items()) h = Mix(h, JsonHash(x, depth + 1));
      return h;
    }
    case json::Value::Kind::kObject: {
      size_t h = Mix(7, v.members().size());
      if (depth > 0) return h;
      for (const auto& [k, x] : v.members()) {  // order-independent
        h += Mix(std::hash<std::string_view>{}(k), JsonHash(x, depth + 1));
      }
      return h;
    }
  }
  return 0;
}

bool IsNumber(const Item& a) {
  return a.kind() == Item::Kind::kInteger || a.kind() == Item::Kind::kDecimal;
}
Decimal AsDecimal(const Item& a) {
  return a.kind() == Item::Kind::kInteger ? Decimal::FromInt(a.integer()) : a.decimal();
}
bool IsTemporal(const Item& a) {
  return a.kind() == Item::Kind::kDate || a.kind() == Item::Kind::kDateTime ||
         a.kind() == Item::Kind::kTime;
}

Tri SystemEqual(const Item& a, const Item& b) {
  if (IsNumber(a) && IsNumber(b)) {
    if (a.kind() == Item::Kind::kInteger && b.kind() == Item::Kind::kInteger) {
      return a.integer() == b.integer() ? Tri::kTrue : Tri::kFalse;
    }
    return DecCompare(AsDecimal(a), AsDecimal(b)) == 0 ? Tri::kTrue : Tri::kFalse;
  }
  if (IsTemporal(a) && IsTemporal(b)) {
    if (!TemporalComparable(a.temporal(), b.temporal())) return Tri::kFalse;
    auto c = TemporalCompare(a.temporal(), b.temporal());
    if (!c) return Tri::kEmpty;
    return *c == 0 ? Tri::kTrue : Tri::kFalse;
  }
  if (a.kind() != b.kind()) return Tri::kFalse;
  switch (a.kind()) {
    case Item::Kind::kBoolean:
      return a.boolean() == b.boolean() ? Tri::kTrue : Tri::kFalse;
    case Item::Kind::kString:
      return a.string() == b.string() ? Tri::kTrue : Tri::kFalse;
    case Item::Kind::kQuantity: {
      auto c = QuantityCompare(a.quantity(), b.quantity());
      if (!c) return Tri::kEmpty;
      return *c == 0 ? Tri::kTrue : Tri::kFalse;
    }
    case Item::Kind::kTypeInfo:
      return a.type_info().ns == b.type_info().ns && a.type_info().name == b.type_info().name
                 ? Tri::kTrue
                 : Tri::kFalse;
    default:
      return Tri::kFalse;
  }
}

}  // namespace

bool IsPrimitiveType(const TypeDef* type) {
  return type != nullptr && type->kind == TypeKind::kPrimitive;
}

std::optional<Item> ToSystem(const Item& item) {
  if (!item.is_node()) return item;
  const Item::Node& n = item.node();
  if (n.value == nullptr) return std::nullopt;
  const json::Value& v = *n.value;
  if (n.type == nullptr) {
    switch (v.kind()) {
      case json::Value::Kind::kBool:
        return Item::MakeBoolean(v.as_bool());
      case json::Value::Kind::kNumber:
        return NumberItem(v);
      case json::Value::Kind::kString:
        return Item::MakeStringView(v.as_string());
      default:
        return std::nullopt;
    }
  }
  if (!IsPrimitiveType(n.type)) {
    if (IsQuantityType(n.type)) return QuantityFromNode(v);
    return std::nullopt;
  }
  // A primitive: convert by its FHIR type; a value of the wrong JSON kind is taken as it is.
  switch (v.kind()) {
    case json::Value::Kind::kBool:
      return Item::MakeBoolean(v.as_bool());
    case json::Value::Kind::kNumber:
      if (PrimitiveCategory(n.type->name) == Prim::kDecimal) {
        if (auto d = Decimal::Parse(v.number_text())) return Item::MakeDecimal(*d);
        return std::nullopt;
      }
      return NumberItem(v);
    case json::Value::Kind::kString: {
      std::string_view s = v.as_string();
      std::optional<Temporal> t;
      switch (PrimitiveCategory(n.type->name)) {
        case Prim::kDate:
          t = Temporal::ParseDate(s);
          break;
        case Prim::kDateTime:
          t = Temporal::ParseDateTime(s);
          break;
        case Prim::kTime:
          t = Temporal::ParseTime(s);
          break;
        default:
          break;
      }
      if (t) return Item::MakeTemporal(*t);
      return Item::MakeStringView(s);
    }
    default:
      return std::nullopt;
  }
}

Tri ItemEqual(const Item& a, const Item& b) {
  bool ca = IsComplexNode(a), cb = IsComplexNode(b);
  if (ca && cb) {
    return NodesStructurallyEqual(a.node(), b.node(), false) ? Tri::kTrue : Tri::kFalse;
  }
  auto sa = ToSystem(a), sb = ToSystem(b);
  if (!sa || !sb) {
    if (a.is_node() && b.is_node() && !sa && !sb) {
      return NodesStructurallyEqual(a.node(), b.node(), false) ? Tri::kTrue : Tri::kFalse;
    }
    return Tri::kFalse;
  }
  return SystemEqual(*sa, *sb);
}

bool ItemEquivalent(const Item& a, const Item& b) {
  bool ca = IsComplexNode(a), cb = IsComplexNode(b);
  if (ca && cb) return NodesStructurallyEqual(a.node(), b.node(), true);
  auto sa = ToSystem(a), sb = ToSystem(b);
  if (!sa || !sb) {
    if (a.is_node() && b.is_node() && !sa && !sb) {
      return NodesStructurallyEqual(a.node(), b.node(), true);
    }
    return false;
  }
  const Item& x = *sa;
  const Item& y = *sb;
  if (IsNumber(x) && IsNumber(y)) {
    Decimal dx = AsDecimal(x), dy = AsDecimal(y);
    int scale = std::min(dx.scale(), dy.scale());
    auto rx = DecRescale(dx, scale, Rounding::kHalfAwayFromZero);
    auto ry = DecRescale(dy, scale, Rounding::kHalfAwayFromZero);
    return rx && ry && DecCompare(*rx, *ry) == 0;
  }
  if (IsTemporal(x) && IsTemporal(y)) {
    if (!TemporalComparable(x.temporal(), y.temporal())) return false;
    if (!SamePrecision(x.temporal(), y.temporal())) return false;
    auto c = TemporalCompare(x.temporal(), y.temporal());
    return c && *c == 0;
  }
  if (x.kind() != y.kind()) return false;
  switch (x.kind()) {
    case Item::Kind::kString:
      return StringEquivalent(x.string(), y.string());
    case Item::Kind::kQuantity:
      return QuantityEquivalent(x.quantity(), y.quantity()).value_or(false);
    default:
      return SystemEqual(x, y) == Tri::kTrue;
  }
}

absl::StatusOr<std::optional<int>> ItemCompare(const Item& a, const Item& b) {
  auto sa = ToSystem(a), sb = ToSystem(b);
  if (!sa || !sb) {
    return absl::InvalidArgumentError("comparison operands must be primitive values");
  }
  const Item& x = *sa;
  const Item& y = *sb;
  if (IsNumber(x) && IsNumber(y)) {
    if (x.kind() == Item::Kind::kInteger && y.kind() == Item::Kind::kInteger) {
      return std::optional<int>(x.integer() < y.integer() ? -1 : x.integer() > y.integer());
    }
    return std::optional<int>(DecCompare(AsDecimal(x), AsDecimal(y)));
  }
  if (IsTemporal(x) && IsTemporal(y) && TemporalComparable(x.temporal(), y.temporal())) {
    return TemporalCompare(x.temporal(), y.temporal());
  }
  if (x.kind() == y.kind()) {
    if (x.kind() == Item::Kind::kString) {
      int c = x.string().compare(y.string());
      return std::optional<int>(c < 0 ? -1 : c > 0);
    }
    if (x.kind() == Item::Kind::kQuantity) return QuantityCompare(x.quantity(), y.quantity());
  }
  return absl::InvalidArgumentError(
      Cat("cannot compare ", KindName(x.kind()), " with ", KindName(y.kind())));
}

size_t ItemHash(const Item& a) {
  if (IsComplexNode(a)) {
    const Item::Node& n = a.node();
    return n.value ? JsonHash(*n.value, 0) : 11;
  }
  auto s = ToSystem(a);
  if (!s) {
    const Item::Node& n = a.node();
    return n.ext ? JsonHash(*n.ext, 0) : 13;
  }
  switch (s->kind()) {
    case Item::Kind::kBoolean:
      return s->boolean() ? 2 : 3;
    case Item::Kind::kInteger:
      return DecimalHash(Decimal::FromInt(s->integer()));
    case Item::Kind::kDecimal:
      return DecimalHash(s->decimal());
    case Item::Kind::kString:
      return std::hash<std::string_view>{}(s->string());
    case Item::Kind::kTypeInfo:
      return std::hash<std::string_view>{}(s->type_info().name);
    case Item::Kind::kDate:
    case Item::Kind::kDateTime:
    case Item::Kind::kTime: {
      // Equal values: same precision class, same instant once in UTC (Date and DateTime alike).
      const Temporal& t0 = s->temporal();
      Temporal t =
          t0.kind != Temporal::Kind::kTime && t0.precision >= Temporal::kHour ? ToUtc(t0) : t0;
      size_t h = Mix(t.kind == Temporal::Kind::kTime ? 23 : 29, EffectivePrecision(t));
      h = Mix(h, ((t.year * 13 + t.month) * 32 + t.day) * 24 + t.hour);
      return Mix(h, (t.minute * 60 + t.second) * 1000 + t.millisecond);
    }
    default: {
      // Quantities: equal values may have different units; the dimensions agree.
      auto u = QuantityUnit(s->quantity());
      size_t h = 31;
      if (u) {
        for (int8_t d : u->dims) h = Mix(h, static_cast<size_t>(d + 128));
      }
      return h;
    }
  }
}

std::string_view KindName(Item::Kind kind) {
  switch (kind) {
    case Item::Kind::kNode:
      return "node";
    case Item::Kind::kBoolean:
      return "Boolean";
    case Item::Kind::kInteger:
      return "Integer";
    case Item::Kind::kDecimal:
      return "Decimal";
    case Item::Kind::kString:
      return "String";
    case Item::Kind::kDate:
      return "Date";
    case Item::Kind::kDateTime:
      return "DateTime";
    case Item::Kind::kTime:
      return "Time";
    case Item::Kind::kQuantity:
      return "Quantity";
    case Item::Kind::kTypeInfo:
      return "TypeInfo";
  }
  return "?";
}

bool Deduplicator::Add(const Item& item, bool* added) {
  auto& bucket = buckets_[ItemHash(item)];
  *added = false;
  for (size_t k : bucket) {
    if (++comparisons_ > max_comparisons_) return false;
    if (ItemEqual(kept_[k], item) == Tri::kTrue) return true;
  }
  bucket.push_back(kept_.size());
  kept_.push_back(item);
  *added = true;
  return true;
}

bool Distinct(Collection* items, uint64_t max_comparisons, uint64_t* comparisons) {
  *comparisons = 0;
  if (items->size() < 2) return true;
  Deduplicator d(max_comparisons);
  bool added;
  for (const Item& item : *items) {
    if (!d.Add(item, &added)) return false;
  }
  *comparisons = d.comparisons();
  *items = d.Take();
  return true;
}

namespace {

std::string ComposeUnit(std::string_view a, std::string_view b, char op) {
  auto wrap = [](std::string_view u) {
    if (u.find_first_of("./") != std::string_view::npos) return Cat("(", u, ")");
    return std::string(u);
  };
  if (b == "1") return std::string(a);
  if (a == "1") return op == '.' ? std::string(b) : Cat("/", wrap(b));
  return Cat(wrap(a), std::string(1, op), wrap(b));
}

std::string UcumUnit(const Quantity& q) {
  if (!q.calendar) return q.unit;
  return std::string(CalendarToUcum(q.unit).value_or(q.unit));
}

absl::StatusOr<std::optional<Item>> QuantityArithmetic(BinOp op, const Item& x, const Item& y) {
  bool qx = x.kind() == Item::Kind::kQuantity, qy = y.kind() == Item::Kind::kQuantity;
  auto fail = [] { return absl::InvalidArgumentError("invalid quantity arithmetic"); };
  if (op == BinOp::kAdd || op == BinOp::kSub) {
    if (!qx || !qy) return fail();
    const Quantity& a = x.quantity();
    const Quantity& b = y.quantity();
    Decimal bv = b.value;
    if (!(a.calendar == b.calendar && a.unit == b.unit)) {
      auto ua = QuantityUnit(a), ub = QuantityUnit(b);
      auto converted = ua && ub ? ConvertQuantity(b, *ub, *ua) : std::nullopt;
      if (!converted) return std::optional<Item>();
      bv = *converted;
    }
    auto v = op == BinOp::kAdd ? DecAdd(a.value, bv) : DecSub(a.value, bv);
    if (!v) return std::optional<Item>();
    Quantity r = a;
    r.value = *v;
    return std::optional<Item>(Item::MakeQuantity(std::move(r)));
  }
  if (op == BinOp::kMul || op == BinOp::kDiv) {
    Quantity a, b;
    if (qx)
      a = x.quantity();
    else if (IsNumber(x))
      a.value = AsDecimal(x);
    else
      return fail();
    if (qy)
      b = y.quantity();
    else if (IsNumber(y))
      b.value = AsDecimal(y);
    else
      return fail();
    auto v = op == BinOp::kMul ? DecMul(a.value, b.value) : DecDiv(a.value, b.value);
    if (!v) return std::optional<Item>();
    Quantity r;
    r.value = *v;
    if (qx && !qy) {
      r.unit = a.unit;
      r.calendar = a.calendar;
    } else if (!qx && qy && op == BinOp::kMul) {
      r.unit = b.unit;
      r.calendar = b.calendar;
    } else {
      r.unit = ComposeUnit(UcumUnit(a), UcumUnit(b), op == BinOp::kMul ? '.' : '/');
    }
    return std::optional<Item>(Item::MakeQuantity(std::move(r)));
  }
  return fail();
}

}  // namespace

absl::StatusOr<std::optional<Item>> Arithmetic(BinOp op, const Item& a, const Item& b,
                                               size_t max_string_bytes) {
  auto sa = ToSystem(a), sb = ToSystem(b);
  if (!sa || !sb) return absl::InvalidArgumentError("arithmetic operands must be values");
  const Item& x = *sa;
  const Item& y = *sb;
  using K = Item::Kind;
  auto type_error = [&] {
    return absl::InvalidArgumentError(
        Cat("operator not defined for ", KindName(x.kind()), " and ", KindName(y.kind())));
  };
  if (x.kind() == K::kString && y.kind() == K::kString) {
    if (op != BinOp::kAdd) return type_error();
    if (x.string().size() + y.string().size() > max_string_bytes) {
      return absl::ResourceExhaustedError("fhirpath: string result too large");
    }
    return std::optional<Item>(Item::MakeString(Cat(x.string(), y.string())));
  }
  if (x.kind() == K::kInteger && y.kind() == K::kInteger && op != BinOp::kDiv) {
    int64_t p = x.integer(), q = y.integer(), r = 0;
    bool overflow = false;
    switch (op) {
      case BinOp::kAdd:
        overflow = __builtin_add_overflow(p, q, &r);
        break;
      case BinOp::kSub:
        overflow = __builtin_sub_overflow(p, q, &r);
        break;
      case BinOp::kMul:
        overflow = __builtin_mul_overflow(p, q, &r);
        break;
      case BinOp::kIntDiv:
        if (q == 0 || (p == INT64_MIN && q == -1)) return std::optional<Item>();
        r = p / q;
        break;
      case BinOp::kMod:
        if (q == 0 || (p == INT64_MIN && q == -1)) return std::optional<Item>();
        r = p % q;
        break;
      default:
        return type_error();
    }
    if (overflow) return std::optional<Item>();
    return std::optional<Item>(Item::MakeInteger(r));
  }
  if (IsNumber(x) && IsNumber(y)) {
    Decimal p = AsDecimal(x), q = AsDecimal(y);
    std::optional<Decimal> r;
    switch (op) {
      case BinOp::kAdd:
        r = DecAdd(p, q);
        break;
      case BinOp::kSub:
        r = DecSub(p, q);
        break;
      case BinOp::kMul:
        r = DecMul(p, q);
        break;
      case BinOp::kDiv:
        r = DecDiv(p, q);
        break;
      case BinOp::kMod:
        r = DecMod(p, q);
        break;
      case BinOp::kIntDiv: {
        r = DecIntDiv(p, q);
        if (!r) return std::optional<Item>();
        auto i = DecToInt64(*r);
        if (!i) return std::optional<Item>();
        return std::optional<Item>(Item::MakeInteger(*i));
      }
      default:
        return type_error();
    }
    if (!r) return std::optional<Item>();
    return std::optional<Item>(Item::MakeDecimal(*r));
  }
  if (IsTemporal(x) && y.kind() == K::kQuantity && (op == BinOp::kAdd || op == BinOp::kSub)) {
    auto t = TemporalAdd(x.temporal(), y.quantity(), op == BinOp::kAdd ? 1 : -1);
    if (!t.ok()) return t.status();
    return std::optional<Item>(Item::MakeTemporal(*t));
  }
  if (x.kind() == K::kQuantity || y.kind() == K::kQuantity) return QuantityArithmetic(op, x, y);
  return type_error();
}

std::optional<std::string> ItemToString(const Item& item) {
  auto s = ToSystem(item);
  if (!s) return std::nullopt;
  switch (s->kind()) {
    case Item::Kind::kBoolean:
      return std::string(s->boolean() ? "true" : "false");
    case Item::Kind::kInteger:
      return std::to_string(s->integer());
    case Item::Kind::kDecimal:
      return s->decimal().ToString();
    case Item::Kind::kString:
      return std::string(s->string());
    case Item::Kind::kDate:
    case Item::Kind::kDateTime:
    case Item::Kind::kTime:
      return s->temporal().ToString();
    case Item::Kind::kQuantity:
      return s->quantity().ToString();
    default:
      return std::nullopt;
  }
}

size_t Utf8Length(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace internal

// ---------------------------------------------------------------------------------------------
// Public Item helpers

std::string Quantity::ToString() const {
  if (calendar) return Cat(value.ToString(), " ", unit);
  return Cat(value.ToString(), " '", unit, "'");
}

namespace internal {

// An open-addressing table from the address of a type name held by the Model to its TypeDef.
class TypeNameTable {
 public:
  TypeNameTable() {
    const Model& model = Model::R4();
    std::vector<std::pair<const char*, const TypeDef*>> entries;
    std::vector<const ElementDef*> stack;
    std::unordered_set<const ElementDef*> seen;
    for (const TypeDef* t : model.types()) {
      entries.emplace_back(t->name.data(), t);
      if (t->root != nullptr) stack.push_back(t->root);
      stack.insert(stack.end(), t->children.begin(), t->children.end());
    }
    while (!stack.empty()) {
      const ElementDef* e = stack.back();
      stack.pop_back();
      if (!seen.insert(e).second) continue;
      for (const std::string& type : e->types) {
        if (const TypeDef* def = model.FindType(type)) entries.emplace_back(type.data(), def);
      }
      stack.insert(stack.end(), e->children.begin(), e->children.end());
    }
    size_t capacity = 16;
    while (capacity < entries.size() * 2) capacity *= 2;
    mask_ = capacity - 1;
    slots_.assign(capacity, {nullptr, nullptr});
    for (const auto& [key, def] : entries) {
      size_t i = Hash(key);
      while (slots_[i].first != nullptr && slots_[i].first != key) i = (i + 1) & mask_;
      slots_[i] = {key, def};
    }
  }

  const TypeDef* Find(const char* key) const {
    for (size_t i = Hash(key);; i = (i + 1) & mask_) {
      if (slots_[i].first == key) return slots_[i].second;
      if (slots_[i].first == nullptr) return nullptr;
    }
  }

 private:
  size_t Hash(const char* key) const {
    return static_cast<size_t>((reinterpret_cast<uintptr_t>(key) >> 3) * 0x9E3779B97F4A7C15ULL >>
                               20) &
           mask_;
  }
  std::vector<std::pair<const char*, const TypeDef*>> slots_;
  size_t mask_ = 0;
};

const TypeDef* FindTypeFast(std::string_view name) {
  static const TypeNameTable* table = new TypeNameTable();
  const TypeDef* def = table->Find(name.data());
  if (def != nullptr && def->name.size() == name.size()) return def;
  return Model::R4().FindType(name);
}

}  // namespace internal

namespace {
const TypeDef* ResourceTypeOf(const json::Value* v) {
  if (v == nullptr || !v->is_object()) return nullptr;
  auto rt = v->GetString("resourceType");
  return rt ? Model::R4().FindType(*rt) : nullptr;
}
}  // namespace

Item Item::MakeNode(const json::Value* value, std::string_view fhir_type, const ElementDef* def,
                    const json::Value* primitive_ext) {
  Node n;
  n.value = value;
  n.ext = primitive_ext;
  n.def = def;
  n.type = fhir_type.empty() ? nullptr : internal::FindTypeFast(fhir_type);
  if (n.type != nullptr && n.type->kind == TypeKind::kResource && n.type->is_abstract) {
    if (const TypeDef* actual = ResourceTypeOf(value)) n.type = actual;
  }
  return MakeNode(n);
}

Item Item::Resource(const json::Value& resource) {
  Node n;
  n.value = &resource;
  n.type = ResourceTypeOf(&resource);
  return MakeNode(n);
}

struct Item::OwnedString : Item::Owned {
  explicit OwnedString(std::string v) : value(std::move(v)) {}
  std::string value;
};

struct Item::OwnedQuantity : Item::Owned {
  explicit OwnedQuantity(Quantity v) : value(std::move(v)) {}
  Quantity value;
};

Item Item::MakeString(std::string s) {
  auto* owned = new OwnedString(std::move(s));
  Item i(Kind::kString);
  i.p_.str = {owned->value.data(), owned->value.size()};
  i.owned_ = owned;
  return i;
}

Item Item::MakeQuantity(Quantity q) {
  auto* owned = new OwnedQuantity(std::move(q));
  Item i(Kind::kQuantity);
  i.p_.quantity = &owned->value;
  i.owned_ = owned;
  return i;
}

Item Item::MakeTemporal(const Temporal& t) {
  Item i(t.kind == Temporal::Kind::kDate       ? Kind::kDate
         : t.kind == Temporal::Kind::kDateTime ? Kind::kDateTime
                                               : Kind::kTime);
  i.p_.temporal = t;
  return i;
}

std::string_view Item::type_name() const {
  if (is_node()) return node().type ? std::string_view(node().type->name) : std::string_view();
  return internal::KindName(kind());
}

std::string ToDebugString(const Item& item) {
  switch (item.kind()) {
    case Item::Kind::kNode: {
      const Item::Node& n = item.node();
      std::string out(n.type ? std::string_view(n.type->name) : std::string_view("?"));
      out.push_back(' ');
      if (n.value) {
        out += json::Write(*n.value);
      } else {
        out += "(no value)";
      }
      if (n.ext) out += Cat(" _", json::Write(*n.ext));
      return out;
    }
    case Item::Kind::kBoolean:
      return item.boolean() ? "true" : "false";
    case Item::Kind::kInteger:
      return std::to_string(item.integer());
    case Item::Kind::kDecimal:
      return item.decimal().ToString();
    case Item::Kind::kString: {
      std::string out = "'";
      for (char c : item.string()) {
        if (c == '\'' || c == '\\') out.push_back('\\');
        out.push_back(c);
      }
      out.push_back('\'');
      return out;
    }
    case Item::Kind::kDate:
    case Item::Kind::kDateTime:
      return Cat("@", item.temporal().ToString(),
                 item.kind() == Item::Kind::kDateTime && item.temporal().precision <= Temporal::kDay
                     ? "T"
                     : "");
    case Item::Kind::kTime:
      return Cat("@T", item.temporal().ToString());
    case Item::Kind::kQuantity:
      return item.quantity().ToString();
    case Item::Kind::kTypeInfo:
      return Cat(item.type_info().ns, ".", item.type_info().name);
  }
  return "?";
}

std::string ToDebugString(const Collection& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ", ";
    out += ToDebugString(items[i]);
  }
  out += "]";
  return out;
}

}  // namespace fhirward::fhir::fhirpath
