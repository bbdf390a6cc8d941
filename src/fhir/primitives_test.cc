#include "fhir/primitives.h"

#include <optional>
#include <string>
#include <string_view>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "json/value.h"

namespace fhirward::fhir {
namespace {

using json::Value;
using ::testing::HasSubstr;

Value S(std::string_view s) { return Value::String(std::string(s)); }
Value N(std::string_view text) { return Value::Number(std::string(text)); }

// Expects every value valid for `type`.
void ExpectValid(std::string_view type, std::initializer_list<Value> values) {
  for (const Value& v : values) {
    const auto problem = CheckPrimitive(type, v);
    EXPECT_EQ(problem, std::nullopt) << type << " " << json::Write(v) << ": " << *problem;
  }
}

// Expects every value invalid for `type`.
void ExpectInvalid(std::string_view type, std::initializer_list<Value> values) {
  for (const Value& v : values) {
    EXPECT_NE(CheckPrimitive(type, v), std::nullopt) << type << " " << json::Write(v);
  }
}

std::string Problem(std::string_view type, const Value& v) {
  return CheckPrimitive(type, v).value_or("<valid>");
}

TEST(PrimitiveTest, KnowsTheR4PrimitiveTypes) {
  for (std::string_view t :
       {"base64Binary", "boolean",     "canonical", "code",     "date", "dateTime",    "decimal",
        "id",           "instant",     "integer",   "markdown", "oid",  "positiveInt", "string",
        "time",         "unsignedInt", "uri",       "url",      "uuid", "xhtml"}) {
    EXPECT_TRUE(IsPrimitiveType(t)) << t;
  }
  for (std::string_view t : {"", "String", "integer64", "Quantity", "Patient", "Element"}) {
    EXPECT_FALSE(IsPrimitiveType(t)) << t;
  }
  EXPECT_THAT(Problem("integer64", N("1")), HasSubstr("not an R4 primitive type"));
}

TEST(PrimitiveTest, JsonKindMismatchesAreNamed) {
  EXPECT_EQ(Problem("boolean", S("true")),
            "boolean must be JSON true or false, not the string 'true'");
  EXPECT_EQ(Problem("decimal", S("1.5")), "decimal must be a JSON number, not the string '1.5'");
  EXPECT_EQ(Problem("integer", S("42")), "integer must be a JSON number, not the string '42'");
  EXPECT_EQ(Problem("string", N("42")), "string must be a JSON string, not the number '42'");
  EXPECT_EQ(Problem("date", Value::Bool(false)),
            "date must be a JSON string, not the boolean false");
  EXPECT_EQ(Problem("code", Value()), "code must be a JSON string, not null");
  EXPECT_EQ(Problem("uri", Value::MakeArray()), "uri must be a JSON string, not an array");
  EXPECT_EQ(Problem("boolean", Value::MakeObject()),
            "boolean must be JSON true or false, not an object");
  EXPECT_EQ(Problem("boolean", N("1")), "boolean must be JSON true or false, not the number '1'");
}

TEST(PrimitiveTest, Boolean) {
  ExpectValid("boolean", {Value::Bool(true), Value::Bool(false)});
  ExpectInvalid("boolean", {S("false"), N("0"), Value()});
}

TEST(PrimitiveTest, Integer) {
  ExpectValid("integer", {N("0"), N("-0"), N("1"), N("-1"), N("2147483647"), N("-2147483648")});
  ExpectInvalid("integer",
                {N("2147483648"), N("-2147483649"), N("99999999999"), N("1.0"), N("1e2"), N("1E2"),
                 N("01"), N("-01"), N("+1"), N(""), N("-"), N("12345678901234567890123456789")});
  EXPECT_EQ(Problem("integer", N("2147483648")),
            "'2147483648' is not a valid integer: it must be in -2147483648..2147483647");
  EXPECT_THAT(Problem("integer", N("1.0")), HasSubstr("fraction or exponent"));
}

TEST(PrimitiveTest, PositiveAndUnsignedInt) {
  ExpectValid("positiveInt", {N("1"), N("2147483647")});
  ExpectInvalid("positiveInt", {N("0"), N("-1"), N("-0"), N("2147483648"), N("1.5"), S("1")});
  ExpectValid("unsignedInt", {N("0"), N("1"), N("2147483647")});
  ExpectInvalid("unsignedInt", {N("-1"), N("-0"), N("2147483648"), N("00"), N("0.0")});
  EXPECT_THAT(Problem("positiveInt", N("0")), HasSubstr("1..2147483647"));
  EXPECT_THAT(Problem("unsignedInt", N("-1")), HasSubstr("must not be negative"));
}

TEST(PrimitiveTest, Decimal) {
  ExpectValid("decimal", {N("0"), N("-0"), N("1.0"), N("1.50"), N("-0.001"), N("1.0e2"), N("1E-7"),
                          N("6.02e+23"), N("123456789012345678901234567890.5")});
  // Texts a JSON reader never produces, but a programmatic Value can hold.
  ExpectInvalid("decimal", {N(".5"), N("1."), N("01"), N("1e"), N("+1"), N("1.5.5"), N("NaN"),
                            N("Infinity"), N("0x10"), N(""), N("1 ")});
  EXPECT_EQ(Problem("decimal", N("1.")), "'1.' is not a valid decimal");
}

TEST(PrimitiveTest, StringAndMarkdown) {
  for (std::string_view type : {"string", "markdown"}) {
    ExpectValid(type, {S("x"), S(" "), S(" padded "), S("line\r\nbreak\ttab"), S("caf\xc3\xa9"),
                       S("non\xc2\xa0space"), S("\xf0\x9f\x98\x80")});
    ExpectInvalid(type, {S(""), S("bell\x07"), S(std::string("nul\0", 4)), S("v\vtab"),
                         S("form\ffeed"), S("bad\xffutf8"), S("\xc0\xaf")});
  }
  EXPECT_EQ(Problem("string", S("")),
            "string must not be an empty string (omit the element instead)");
  EXPECT_THAT(Problem("string", S("a\x01")), HasSubstr("'a\\x01' is not a valid string"));
  EXPECT_EQ(Problem("string", S("\xff")), "string value is not valid UTF-8");
}

TEST(PrimitiveTest, StringLengthIsCountedInCharacters) {
  ExpectValid("string", {S(std::string(kMaxStringCharacters, 'a'))});
  ExpectInvalid("string", {S(std::string(kMaxStringCharacters + 1, 'a'))});
  // 1 MiB two-byte characters is 2 MiB of UTF-8 and still allowed.
  std::string two_byte;
  for (size_t i = 0; i < kMaxStringCharacters; ++i) two_byte += "\xc3\xa9";
  ExpectValid("string", {S(two_byte)});
  two_byte += "x";
  ExpectInvalid("string", {S(two_byte)});
}

TEST(PrimitiveTest, Code) {
  ExpectValid("code", {S("final"), S("a b c"), S("http://x|1"), S("caf\xc3\xa9"), S("x\xc2\xa0y")});
  ExpectInvalid(
      "code", {S(""), S(" code"), S("code "), S("a  b"), S("a\tb"), S("a\nb"), S(" "), S("a\x01")});
  EXPECT_THAT(Problem("code", S(" code")), HasSubstr("leading or trailing whitespace"));
}

TEST(PrimitiveTest, Id) {
  ExpectValid("id", {S("a"), S("example-1.2"), S("A-Za-z0-9"), S(std::string(64, 'x'))});
  ExpectInvalid("id",
                {S(""), S(std::string(65, 'x')), S("a_b"), S("a b"), S("a/b"), S("caf\xc3\xa9")});
}

TEST(PrimitiveTest, UriUrlCanonical) {
  for (std::string_view type : {"uri", "url", "canonical"}) {
    ExpectValid(type, {S("http://hl7.org/fhir"), S("urn:oid:1.2.3"), S("Patient/1"), S("#x"),
                       S("http://x.org/\xc3\xa9")});
    ExpectInvalid(
        type, {S(""), S("http://x.org/a b"), S(" http://x"), S("a\tb"), S("a\x01"), S("a\x7f")});
  }
  ExpectValid("canonical", {S("http://hl7.org/fhir/ValueSet/x|4.0.1")});
  ExpectInvalid("canonical", {S("http://x|"), S("|1.0")});
  EXPECT_THAT(Problem("uri", S("a b")), HasSubstr("whitespace"));
}

TEST(PrimitiveTest, Oid) {
  ExpectValid("oid", {S("urn:oid:1.2.3"), S("urn:oid:2.16.840.1.113883"), S("urn:oid:0.0")});
  ExpectInvalid(
      "oid", {S("urn:oid:1"), S("urn:oid:3.1"), S("urn:oid:1.02"), S("urn:oid:1..2"),
              S("urn:oid:1.2."), S("1.2.3"), S("URN:OID:1.2"), S("urn:oid:.1"), S("urn:oid:1.2 ")});
}

TEST(PrimitiveTest, Uuid) {
  ExpectValid("uuid", {S("urn:uuid:c757873d-ec9a-4326-a141-556f43239520")});
  ExpectInvalid("uuid", {S("urn:uuid:C757873D-EC9A-4326-A141-556F43239520"),
                         S("c757873d-ec9a-4326-a141-556f43239520"),
                         S("urn:uuid:c757873d-ec9a-4326-a141-556f4323952"),
                         S("urn:uuid:c757873d-ec9a-4326-a141-556f432395200"),
                         S("urn:uuid:c757873dec9a-4326-a141-556f43239520-"),
                         S("urn:uuid:g757873d-ec9a-4326-a141-556f43239520")});
}

TEST(PrimitiveTest, Base64Binary) {
  ExpectValid("base64Binary", {S("AAAA"), S("aGVsbG8="), S("aGk="), S("aA=="), S("+/+/"),
                               S("aGVs bG8="), S(" aGVs\r\nbG8= "), S("AAAA\nAAAA"), S("aG Vs")});
  ExpectInvalid("base64Binary",
                {S(""), S("A"), S("AAA"), S("AAAAA"), S("aGVsbG8"), S("a==="), S("aA=A"),
                 S("aA==aGk="), S("aGVs-bG8="), S("aGVs_bG8="), S("aGVs!bG8="), S("===="), S(" ")});
  EXPECT_THAT(Problem("base64Binary", S("aA==aGk=")), HasSubstr("padding"));
}

TEST(PrimitiveTest, Date) {
  ExpectValid("date", {S("2024"), S("2024-02"), S("2024-02-29"), S("2000-02-29"), S("0001-01-01"),
                       S("9999-12-31"), S("1900-02-28")});
  ExpectInvalid("date", {S("2023-02-29"),  S("1900-02-29"), S("2023-02-30"),
                         S("2023-04-31"),  S("2023-13"),    S("2023-00"),
                         S("2023-01-00"),  S("2023-01-32"), S("0000"),
                         S("202"),         S("20230"),      S("2023-1"),
                         S("2023-01-1"),   S("2023/01/01"), S("2023-01-01T00:00:00Z"),
                         S("2023-01-01 "), S("-2023"),      S("+2023"),
                         S("2023-"),       S("2023-01-")});
  EXPECT_EQ(Problem("date", S("2023-02-30")),
            "'2023-02-30' is not a valid date: 2023-02 has 28 days");
  EXPECT_EQ(Problem("date", S("2023-02-29")),
            "'2023-02-29' is not a valid date: 2023-02 has 28 days");
  EXPECT_THAT(Problem("date", S("2023-01-01T10:00:00Z")), HasSubstr("use dateTime"));
}

TEST(PrimitiveTest, DateTime) {
  ExpectValid("dateTime", {S("2015"), S("2015-02"), S("2015-02-07"), S("2015-02-07T13:28:17Z"),
                           S("2015-02-07T13:28:17-05:00"), S("2015-02-07T13:28:17.239+02:00"),
                           S("2017-01-01T00:00:00.000000001Z"), S("2016-12-31T23:59:60Z"),
                           S("2015-02-07T13:28:17+14:00"), S("2015-02-07T13:28:17-14:00"),
                           S("2015-02-07T13:28:17+13:59"), S("2015-02-07T13:28:17-00:00"),
                           S("2024-02-29T00:00:00Z")});
  ExpectInvalid("dateTime",
                {S("2015-02-07T13:28:17"),  // time without timezone
                 S("2015-02-07T13:28Z"),    // no seconds
                 S("2015-02-07T13Z"),
                 S("2015-02-07T"),
                 S("2015-02T13:28:17Z"),
                 S("2015T13:28:17Z"),
                 S("2015-02-07T24:00:00Z"),
                 S("2015-02-07T23:60:00Z"),
                 S("2015-02-07T23:59:61Z"),
                 S("2015-02-07T13:28:17.Z"),
                 S("2015-02-07T13:28:17+14:01"),
                 S("2015-02-07T13:28:17+15:00"),
                 S("2015-02-07T13:28:17+05"),
                 S("2015-02-07T13:28:17+0500"),
                 S("2015-02-07T13:28:17+05:60"),
                 S("2015-02-07T13:28:17z"),
                 S("2015-02-07t13:28:17Z"),
                 S("2015-02-07 13:28:17Z"),
                 S("2015-02-07T13:28:17ZZ"),
                 S("2015-02-07T13:28:17Z "),
                 S("2023-02-29T00:00:00Z"),
                 S("2015-02-07T1:28:17Z"),
                 S("")});
  EXPECT_EQ(Problem("dateTime", S("2015-02-07T13:28:17")),
            "'2015-02-07T13:28:17' is not a valid dateTime: a time of day needs a timezone (Z or "
            "+hh:mm / -hh:mm)");
  EXPECT_THAT(Problem("dateTime", S("2015-02-07T24:00:00Z")), HasSubstr("24:00 is not allowed"));
}

TEST(PrimitiveTest, Instant) {
  ExpectValid("instant", {S("2015-02-07T13:28:17.239+02:00"), S("2017-01-01T00:00:00Z"),
                          S("2016-12-31T23:59:60.5-14:00")});
  ExpectInvalid("instant", {S("2015"), S("2015-02"), S("2015-02-07"), S("2015-02-07T13:28:17"),
                            S("2015-02-07T13:28Z"), S("2015-02-30T13:28:17Z")});
  EXPECT_THAT(Problem("instant", S("2015-02-07")), HasSubstr("an instant needs"));
}

TEST(PrimitiveTest, Time) {
  ExpectValid("time", {S("00:00:00"), S("23:59:59"), S("23:59:60"), S("12:30:00.5"),
                       S("12:30:00.123456789")});
  ExpectInvalid("time",
                {S("24:00:00"), S("12:60:00"), S("12:30:61"), S("12:30"), S("12"), S("12:30:00Z"),
                 S("12:30:00+01:00"), S("1:30:00"), S("12:30:00."), S("T12:30:00")});
  EXPECT_THAT(Problem("time", S("12:30:00Z")), HasSubstr("a time has no timezone"));
}

TEST(PrimitiveTest, Xhtml) {
  // Only the JSON kind here; the content rules are CheckNarrativeXhtml's.
  ExpectValid("xhtml", {S("<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>")});
  ExpectInvalid("xhtml", {S(""), N("1"), Value()});
}

TEST(PrimitiveTest, MessagesQuoteAShortPrefixSafely) {
  const std::string long_value = std::string(100, 'x') + " y";
  const std::string problem = Problem("code", S(std::string(100, 'x') + "  y"));
  EXPECT_THAT(problem, HasSubstr("'" + std::string(40, 'x') + "...'"));
  EXPECT_THAT(problem, ::testing::Not(HasSubstr(std::string(41, 'x'))));
  // Cut on a character boundary: 39 ASCII bytes then a two-byte character.
  const std::string multibyte = std::string(39, 'a') + "\xc3\xa9" + "  b";
  EXPECT_THAT(Problem("code", S(multibyte)), HasSubstr("'" + std::string(39, 'a') + "...'"));
}

}  // namespace
}  // namespace fhirward::fhir
