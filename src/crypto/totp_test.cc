#include "crypto/totp.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace fhirward::crypto {
namespace {

constexpr std::string_view kRfcSecret = "12345678901234567890";

TEST(Base32, Rfc4648Vectors) {
  struct Case {
    std::string_view plain, unpadded, padded;
  };
  const Case cases[] = {
      {"", "", ""},
      {"f", "MY", "MY======"},
      {"fo", "MZXQ", "MZXQ===="},
      {"foo", "MZXW6", "MZXW6==="},
      {"foob", "MZXW6YQ", "MZXW6YQ="},
      {"fooba", "MZXW6YTB", "MZXW6YTB"},
      {"foobar", "MZXW6YTBOI", "MZXW6YTBOI======"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Base32Encode(c.plain), c.unpadded) << c.plain;
    EXPECT_EQ(Base32Decode(c.unpadded), std::string(c.plain)) << c.unpadded;
    EXPECT_EQ(Base32Decode(c.padded), std::string(c.plain)) << c.padded;
  }
}

TEST(Base32, DecodeIsLenient) {
  EXPECT_EQ(Base32Decode("mzxw6ytboi"), "foobar");
  EXPECT_EQ(Base32Decode("MzXw 6yTb oI"), "foobar");
  EXPECT_EQ(Base32Decode(" MZXW 6YTB OI== ==== "), "foobar");
  EXPECT_EQ(Base32Decode("   "), "");
}

TEST(Base32, DecodeRefusesInvalid) {
  for (std::string_view bad : {
           "M",           // 5 bits: impossible length
           "MZX",         // 15 bits: impossible length
           "MZXW6Y",      // 30 bits: impossible length
           "MZ",          // non-zero trailing bits (canonical is "MY")
           "MZXW6YR",     // non-zero trailing bits
           "MY=",         // incomplete padding
           "MY=======",   // too much padding
           "========",    // padding only
           "MY==MY==",    // padding in the middle
           "MZXW1",       // '1' is not in the alphabet
           "MZXW8",       // '8' is not in the alphabet
           "MZXW6-YTB",   // separators other than space
           "MZXW6\tYTB",  // tab
       }) {
    EXPECT_EQ(Base32Decode(bad), std::nullopt) << bad;
  }
}

TEST(Base32, RoundTripAllLengths) {
  std::string bytes;
  for (int n = 0; n < 64; ++n) {
    std::string enc = Base32Encode(bytes);
    EXPECT_EQ(enc.size(), (bytes.size() * 8 + 4) / 5);
    EXPECT_EQ(Base32Decode(enc), bytes);
    bytes += static_cast<char>(n * 37 + 201);
  }
}

TEST(Totp, Rfc6238Sha1Vectors) {
  struct Case {
    int64_t time;
    std::string_view code;
  };
  const Case cases[] = {
      {59, "94287082"},         {1111111109, "07081804"}, {1111111111, "14050471"},
      {1234567890, "89005924"}, {2000000000, "69279037"}, {20000000000, "65353130"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(TotpCode(kRfcSecret, c.time, 8), c.code) << c.time;
    EXPECT_EQ(TotpCode(kRfcSecret, c.time, 6), c.code.substr(2)) << c.time;
    EXPECT_EQ(VerifyTotp(kRfcSecret, c.code, c.time, -1, 1, 8), c.time / 30) << c.time;
  }
}

TEST(Totp, Rfc4226HotpVectors) {
  // With a one-second step, T is the HOTP counter (RFC 4226 Appendix D).
  const char* codes[] = {"755224", "287082", "359152", "969429", "338314",
                         "254676", "287922", "162583", "399871", "520489"};
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(TotpCode(kRfcSecret, i, 6, 1), codes[i]) << i;
  }
}

TEST(Totp, SevenDigitsAndInvalidArguments) {
  EXPECT_EQ(TotpCode(kRfcSecret, 59, 7), "4287082");
  EXPECT_EQ(TotpCode(kRfcSecret, 59, 5), "");
  EXPECT_EQ(TotpCode(kRfcSecret, 59, 9), "");
  EXPECT_EQ(TotpCode(kRfcSecret, 59, 6, 0), "");
  EXPECT_EQ(TotpCode(kRfcSecret, 59, 6, -30), "");
  EXPECT_EQ(VerifyTotp(kRfcSecret, "4287082", 59, -1, 1, 7), 1);
  EXPECT_EQ(VerifyTotp(kRfcSecret, "287082", 59, -1, -1), std::nullopt);
  EXPECT_EQ(VerifyTotp(kRfcSecret, "287082", 59, -1, kMaxTotpWindow + 1), std::nullopt);
  EXPECT_EQ(VerifyTotp(kRfcSecret, "287082", 59, -1, 1, 6, 0), std::nullopt);
}

TEST(Totp, WindowAcceptsOneStepEitherSideOnly) {
  SecretBytes secret = GenerateTotpSecret();
  const std::string_view key = secret.UnsafeView();
  const int64_t now = 1'700'000'015;  // mid-step
  const int64_t step = now / 30;
  for (int k = -3; k <= 3; ++k) {
    std::string code = TotpCode(key, now + k * 30, 6);
    std::optional<int64_t> got = VerifyTotp(key, code, now, -1);
    // A random secret could give the same code for two steps; skip that case.
    bool collides = false;
    for (int j = -1; j <= 1; ++j) {
      if (j != k && TotpCode(key, now + j * 30, 6) == code) collides = true;
    }
    if (collides) continue;
    if (k >= -1 && k <= 1) {
      EXPECT_EQ(got, step + k) << k;
    } else {
      EXPECT_EQ(got, std::nullopt) << k;
    }
  }
  // A wider window accepts ±2; window 0 only the current step.
  EXPECT_EQ(VerifyTotp(kRfcSecret, TotpCode(kRfcSecret, now + 60), now, -1, 2), step + 2);
  EXPECT_EQ(VerifyTotp(kRfcSecret, TotpCode(kRfcSecret, now - 60), now, -1, 2), step - 2);
  EXPECT_EQ(VerifyTotp(kRfcSecret, TotpCode(kRfcSecret, now), now, -1, 0), step);
  EXPECT_EQ(VerifyTotp(kRfcSecret, TotpCode(kRfcSecret, now + 30), now, -1, 0), std::nullopt);
}

TEST(Totp, WindowRefusesTwoStepsAway) {
  const int64_t now = 1'234'567'890;
  const int64_t step = now / 30;
  EXPECT_EQ(VerifyTotp(kRfcSecret, TotpCode(kRfcSecret, now + 30), now, -1), step + 1);
  EXPECT_EQ(VerifyTotp(kRfcSecret, TotpCode(kRfcSecret, now - 30), now, -1), step - 1);
  EXPECT_EQ(VerifyTotp(kRfcSecret, TotpCode(kRfcSecret, now + 60), now, -1), std::nullopt);
  EXPECT_EQ(VerifyTotp(kRfcSecret, TotpCode(kRfcSecret, now - 60), now, -1), std::nullopt);
  // Step boundaries: 29 s into a step is the same step, 30 s is the next.
  const int64_t start = step * 30;
  EXPECT_EQ(TotpCode(kRfcSecret, start), TotpCode(kRfcSecret, start + 29));
  EXPECT_NE(TotpCode(kRfcSecret, start), TotpCode(kRfcSecret, start + 30));
}

TEST(Totp, ReplayRefused) {
  const int64_t now = 1'111'111'111;
  const std::string code = TotpCode(kRfcSecret, now);
  std::optional<int64_t> first = VerifyTotp(kRfcSecret, code, now, -1);
  ASSERT_TRUE(first.has_value());
  // The same code again, later in the same step or within the window: refused.
  EXPECT_EQ(VerifyTotp(kRfcSecret, code, now, *first), std::nullopt);
  EXPECT_EQ(VerifyTotp(kRfcSecret, code, now + 20, *first), std::nullopt);
  EXPECT_EQ(VerifyTotp(kRfcSecret, code, now + 30, *first), std::nullopt);
  // A previous-step code after a current-step code was used: refused too.
  EXPECT_EQ(VerifyTotp(kRfcSecret, TotpCode(kRfcSecret, now - 30), now, *first), std::nullopt);
  // The next step's code is still accepted.
  EXPECT_EQ(VerifyTotp(kRfcSecret, TotpCode(kRfcSecret, now + 30), now + 30, *first), *first + 1);
}

TEST(Totp, MalformedCodesRefused) {
  const int64_t now = 59;
  ASSERT_EQ(TotpCode(kRfcSecret, now), "287082");
  ASSERT_EQ(VerifyTotp(kRfcSecret, "287082", now, -1), 1);
  for (std::string_view bad : {"", "28708", "2870820", "0287082", "28708a", " 287082", "287082 ",
                               "+28708", "-28708", "28 082", "２87082"}) {
    EXPECT_EQ(VerifyTotp(kRfcSecret, bad, now, -1), std::nullopt) << bad;
  }
  EXPECT_EQ(VerifyTotp(kRfcSecret, std::string("287082\0", 7), now, -1), std::nullopt);
  EXPECT_EQ(VerifyTotp(kRfcSecret, "94287082", now, -1), std::nullopt);  // 8 digits, expected 6
  EXPECT_EQ(VerifyTotp(kRfcSecret, "287082", now, -1, 1, 8), std::nullopt);
  EXPECT_EQ(VerifyTotp("other secret", "287082", now, -1), std::nullopt);
}

TEST(Totp, GenerateSecret) {
  SecretBytes a = GenerateTotpSecret();
  SecretBytes b = GenerateTotpSecret();
  EXPECT_EQ(a.size(), kTotpSecretBytes);
  EXPECT_NE(a.UnsafeView(), b.UnsafeView());
  EXPECT_EQ(Base32Encode(a.UnsafeView()).size(), 32u);
}

TEST(Totp, Uri) {
  EXPECT_EQ(TotpUri("fhirward", "alice@example.org", kRfcSecret),
            "otpauth://totp/fhirward:alice%40example.org?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
            "&issuer=fhirward&algorithm=SHA1&digits=6&period=30");
  EXPECT_EQ(TotpUri("Acme Health: Prod", "bob/ü?&=#", "\x01"),
            "otpauth://totp/Acme%20Health%3A%20Prod:bob%2F%C3%BC%3F%26%3D%23?secret=AE"
            "&issuer=Acme%20Health%3A%20Prod&algorithm=SHA1&digits=6&period=30");
  EXPECT_EQ(TotpUri("", "carol", "\x01"),
            "otpauth://totp/carol?secret=AE&algorithm=SHA1&digits=6&period=30");
}

}  // namespace
}  // namespace fhirward::crypto
