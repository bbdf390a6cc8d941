#include <chrono>
#include <string>
#include <string_view>

#include "common/error.h"
#include "gtest/gtest.h"
#include "json/value.h"

namespace fhirward::json {
namespace {

using namespace std::string_view_literals;

// The ErrorCode of Parse(text), or nullopt when it parses.
std::optional<ErrorCode> ParseError(std::string_view text, const Limits& limits = {}) {
  auto r = Parse(text, limits);
  if (r.ok()) return std::nullopt;
  return CodeOf(r.status());
}

std::string DetailOfParse(std::string_view text, const Limits& limits = {}) {
  auto r = Parse(text, limits);
  return r.ok() ? std::string() : DetailOf(r.status());
}

Value MustParse(std::string_view text) {
  auto r = Parse(text);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : Value();
}

TEST(JsonReader, ParsesScalars) {
  EXPECT_TRUE(MustParse("null").is_null());
  EXPECT_TRUE(MustParse("true").as_bool());
  EXPECT_FALSE(MustParse("false").as_bool());
  EXPECT_EQ(MustParse("\"abc\"").as_string(), "abc");
  EXPECT_EQ(MustParse("42").number_text(), "42");
  EXPECT_EQ(MustParse(" \t\r\n 7 \t\r\n ").number_text(), "7");
}

TEST(JsonReader, PreservesDecimalText) {
  EXPECT_EQ(MustParse("1.50").number_text(), "1.50");
  EXPECT_EQ(MustParse("3.0").number_text(), "3.0");
  EXPECT_EQ(MustParse("1e400").number_text(), "1e400");
  EXPECT_EQ(MustParse("-0").number_text(), "-0");
  EXPECT_EQ(MustParse("-0.0").number_text(), "-0.0");
  EXPECT_EQ(MustParse("12345678901234567890123").number_text(), "12345678901234567890123");
  EXPECT_EQ(MustParse("1E+2").number_text(), "1E+2");
  EXPECT_EQ(MustParse("2.5e-3").number_text(), "2.5e-3");
  EXPECT_EQ(MustParse("0.000000000000000000001").number_text(), "0.000000000000000000001");
  Value v = MustParse(R"({"valueDecimal":1.50,"n":[3.0,100]})");
  EXPECT_EQ(v.Find("valueDecimal")->number_text(), "1.50");
  EXPECT_EQ(v.Find("n")->items()[0].number_text(), "3.0");
}

TEST(JsonReader, ParsesNestedFhirResource) {
  Value v = MustParse(R"({
    "resourceType": "Patient",
    "id": "p1",
    "active": true,
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
    "deceasedBoolean": false,
    "extension": []
  })");
  ASSERT_TRUE(v.is_object());
  EXPECT_EQ(v.GetString("resourceType"), "Patient");
  EXPECT_EQ(v.members().size(), 6u);
  EXPECT_EQ(v.members()[0].first, "resourceType");  // order kept
  EXPECT_EQ(v.members()[5].first, "extension");
  const Value* name = v.Find("name");
  ASSERT_NE(name, nullptr);
  ASSERT_TRUE(name->is_array());
  EXPECT_EQ(name->items()[0].Find("given")->items()[1].as_string(), "James");
  EXPECT_TRUE(v.Find("extension")->items().empty());
}

TEST(JsonReader, EmptyContainers) {
  EXPECT_TRUE(MustParse("{}").members().empty());
  EXPECT_TRUE(MustParse("[]").items().empty());
  EXPECT_TRUE(MustParse("[ ]").is_array());
  EXPECT_TRUE(MustParse("{ \n}").is_object());
  Value v = MustParse("[{},[],[[]]]");
  EXPECT_EQ(v.items().size(), 3u);
  EXPECT_TRUE(v.items()[2].items()[0].is_array());
}

TEST(JsonReader, Escapes) {
  EXPECT_EQ(MustParse(R"("\"\\\/\b\f\n\r\t")").as_string(), "\"\\/\b\f\n\r\t");
  EXPECT_EQ(MustParse(R"("\u0041\u00e9\u20AC")").as_string(), "A\xC3\xA9\xE2\x82\xAC");
  EXPECT_EQ(MustParse(R"("\u0000")").as_string(), std::string("\0", 1));
  EXPECT_EQ(MustParse(R"("a\u0020b")").as_string(), "a b");
  // Escaped keys are compared after unescaping.
  EXPECT_EQ(MustParse(R"({"\u0069d":"x"})").GetString("id"), "x");
}

TEST(JsonReader, SurrogatePairs) {
  EXPECT_EQ(MustParse(R"("\ud83d\ude00")").as_string(), "\xF0\x9F\x98\x80");  // U+1F600
  EXPECT_EQ(MustParse(R"("\uD800\uDC00")").as_string(), "\xF0\x90\x80\x80");  // U+10000
  EXPECT_EQ(MustParse(R"("\uDBFF\uDFFF")").as_string(), "\xF4\x8F\xBF\xBF");  // U+10FFFF
}

TEST(JsonReader, RejectsInvalidSurrogates) {
  EXPECT_EQ(ParseError(R"("\ud83d")"), ErrorCode::kInvalidJson);        // lone high
  EXPECT_EQ(ParseError(R"("\ude00")"), ErrorCode::kInvalidJson);        // lone low
  EXPECT_EQ(ParseError(R"("\ud83dx")"), ErrorCode::kInvalidJson);       // high + text
  EXPECT_EQ(ParseError(R"("\ud83d\u0041")"), ErrorCode::kInvalidJson);  // high + non-low
  EXPECT_EQ(ParseError(R"("\ud83d\ud83d")"), ErrorCode::kInvalidJson);  // high + high
  EXPECT_EQ(ParseError(R"("\ude00\ud83d")"), ErrorCode::kInvalidJson);  // reversed
  EXPECT_EQ(ParseError(R"("\ud83d\n")"), ErrorCode::kInvalidJson);      // high + other escape
}

TEST(JsonReader, RejectsBadEscapes) {
  EXPECT_EQ(ParseError(R"("\x41")"), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError(R"("\u12")"), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError(R"("\u12G4")"), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError(R"("\')"), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError("\"\\"), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError("\"abc"), ErrorCode::kInvalidJson);
}

TEST(JsonReader, RejectsRawControlCharactersInStrings) {
  EXPECT_EQ(ParseError("\"a\nb\""), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError("\"a\tb\""), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError(std::string("\"a\0b\"", 5)), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError("\"\x1f\""), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError("{\"a\nb\":1}"), ErrorCode::kInvalidJson);
  EXPECT_FALSE(ParseError("\"\x7f\"").has_value());  // DEL is not a control char in JSON
}

TEST(JsonReader, RejectsBadNumbers) {
  for (std::string_view bad :
       {"01",  "-01",   "00",  "+1",    "1.",   ".5",        "-",        "-.5",
        "1e",  "1e+",   "1E-", "1.e5",  "0x10", "NaN",       "Infinity", "-Infinity",
        "nan", "1.5.2", "--1", "1e5e5", "[01]", "{\"a\":01}"}) {
    EXPECT_EQ(ParseError(bad), ErrorCode::kInvalidJson) << bad;
  }
  EXPECT_FALSE(ParseError("0").has_value());
  EXPECT_FALSE(ParseError("-0e-0").has_value());
  EXPECT_FALSE(ParseError("10.01E10").has_value());
}

TEST(JsonReader, RejectsSyntaxErrors) {
  for (std::string_view bad : {"",
                               "   ",
                               "[1,]",
                               "{\"a\":1,}",
                               "[,1]",
                               "{,}",
                               "[1 2]",
                               "{\"a\" 1}",
                               "{\"a\":}",
                               "{a:1}",
                               "{'a':1}",
                               "['a']",
                               "[",
                               "]",
                               "{",
                               "}",
                               "[1",
                               "{\"a\":1",
                               "tru",
                               "nul",
                               "falsey",
                               "True",
                               "undefined",
                               "[1]]",
                               "{}{}",
                               "1 2",
                               "// c\n1",
                               "/* c */1",
                               "[1]// c",
                               "#1",
                               "{\"a\":1 \"b\":2}",
                               "[1;2]",
                               "\"a\" x",
                               "{\"a\"}"}) {
    EXPECT_EQ(ParseError(bad), ErrorCode::kInvalidJson) << bad;
  }
}

TEST(JsonReader, WhitespaceIsOnlySpaceTabCrLf) {
  EXPECT_EQ(ParseError("\f1"), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError("\v1"), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError("1\f"), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError("[1,\xC2\xA0"
                       "2]"),
            ErrorCode::kInvalidJson);  // NBSP
  EXPECT_EQ(ParseError("\xE2\x80\x8B"
                       "1"),
            ErrorCode::kInvalidJson);  // ZWSP
}

TEST(JsonReader, RejectsTrailingGarbage) {
  EXPECT_EQ(ParseError("{} x"), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError("1x"), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError(std::string("{}\0", 3)), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError("truefalse"), ErrorCode::kInvalidJson);
  EXPECT_FALSE(ParseError("{}  \n").has_value());
}

TEST(JsonReader, RejectsByteOrderMark) {
  EXPECT_EQ(ParseError("\xEF\xBB\xBF{}"), ErrorCode::kInvalidJson);
  EXPECT_EQ(ParseError("\xEF\xBB\xBF"), ErrorCode::kInvalidJson);
}

TEST(JsonReader, AcceptsValidUtf8) {
  EXPECT_EQ(MustParse("\"\xC3\xA9\"").as_string(), "\xC3\xA9");          // é
  EXPECT_EQ(MustParse("\"\xE2\x82\xAC\"").as_string(), "\xE2\x82\xAC");  // €
  EXPECT_EQ(MustParse("\"\xF0\x9F\x98\x80\"").as_string(), "\xF0\x9F\x98\x80");
  EXPECT_EQ(MustParse("\"\xF4\x8F\xBF\xBF\"").as_string(), "\xF4\x8F\xBF\xBF");  // U+10FFFF
  EXPECT_EQ(MustParse("\"\xED\x9F\xBF\"").as_string(), "\xED\x9F\xBF");          // U+D7FF
  EXPECT_EQ(MustParse("\"\xEE\x80\x80\"").as_string(), "\xEE\x80\x80");          // U+E000
  EXPECT_EQ(MustParse("{\"n\xC3\xA4me\":1}").members()[0].first, "n\xC3\xA4me");
}

TEST(JsonReader, RejectsInvalidUtf8) {
  for (std::string_view bad : {
           "\"\xC0\x80\""sv,          // overlong NUL
           "\"\xC1\xBF\""sv,          // overlong
           "\"\xE0\x80\xAF\""sv,      // overlong '/'
           "\"\xF0\x80\x80\xAF\""sv,  // overlong
           "\"\xED\xA0\x80\""sv,      // UTF-8 encoded high surrogate
           "\"\xED\xBF\xBF\""sv,      // UTF-8 encoded low surrogate
           "\"\xF4\x90\x80\x80\""sv,  // > U+10FFFF
           "\"\xF5\x80\x80\x80\""sv,  // invalid lead
           "\"\xFF\""sv,
           "\"\x80\""sv,          // stray continuation
           "\"\xE2\x82\""sv,      // truncated, then quote
           "\"\xE2\x82"sv,        // truncated at end of input
           "\"\xC3\""sv,          // truncated 2-byte
           "\"\xF0\x9F\x98\""sv,  // truncated 4-byte
           "\"\xC3\x28\""sv,      // bad continuation
           "{\"\xC0\x80\":1}"sv,  // in a key
           "[\xC0\x80]"sv,        // outside strings
           "1 \xFF"sv,
       }) {
    EXPECT_EQ(ParseError(bad), ErrorCode::kInvalidUtf8) << testing::PrintToString(bad);
  }
}

TEST(JsonReader, RejectsDuplicateKeys) {
  EXPECT_EQ(ParseError(R"({"id":"a","id":"b"})"), ErrorCode::kDuplicateKey);
  EXPECT_EQ(ParseError(R"({"id":1,"x":2,"id":1})"), ErrorCode::kDuplicateKey);
  EXPECT_EQ(ParseError(R"({"a":{"b":1,"b":2}})"), ErrorCode::kDuplicateKey);
  EXPECT_EQ(ParseError(R"([{"b":1},{"b":2,"\u0062":3}])"), ErrorCode::kDuplicateKey);
  EXPECT_EQ(ParseError(R"({"":1,"":2})"), ErrorCode::kDuplicateKey);
  // Same key in sibling objects is fine, and so are keys differing only in case.
  EXPECT_FALSE(ParseError(R"([{"b":1},{"b":2}])").has_value());
  EXPECT_FALSE(ParseError(R"({"id":1,"Id":2,"ID":3})").has_value());
}

std::string ObjectWithKeys(size_t n, std::string_view extra_key = {}) {
  std::string s = "{";
  for (size_t i = 0; i < n; ++i) {
    if (i) s += ',';
    s += "\"k" + std::to_string(i) + "\":" + std::to_string(i);
  }
  if (!extra_key.empty()) {
    s += ",\"";
    s += extra_key;
    s += "\":0";
  }
  return s + "}";
}

TEST(JsonReader, DuplicateKeysInLargeObjects) {
  // Around and well beyond the linear-scan threshold.
  for (size_t n : {15u, 16u, 17u, 100u, 5000u}) {
    EXPECT_FALSE(ParseError(ObjectWithKeys(n)).has_value()) << n;
    EXPECT_EQ(ParseError(ObjectWithKeys(n, "k0")), ErrorCode::kDuplicateKey) << n;
    EXPECT_EQ(ParseError(ObjectWithKeys(n, "k" + std::to_string(n - 1))), ErrorCode::kDuplicateKey)
        << n;
    EXPECT_EQ(ParseError(ObjectWithKeys(n, "k" + std::to_string(n / 2))), ErrorCode::kDuplicateKey)
        << n;
  }
  Value v = MustParse(ObjectWithKeys(3000));
  EXPECT_EQ(v.members().size(), 3000u);
  EXPECT_EQ(v.members()[2999].first, "k2999");
  EXPECT_EQ(*v.Find("k1234")->as_int64(), 1234);
}

TEST(JsonReader, ErrorDetailNamesByteOffset) {
  EXPECT_EQ(DetailOfParse(R"({"id":"a","id":"b"})"), "at byte 10: duplicate key \"id\"");
  EXPECT_NE(DetailOfParse("[1,]").find("at byte 3"), std::string::npos);
  EXPECT_NE(DetailOfParse("[1, 2 x]").find("at byte 6"), std::string::npos);
  EXPECT_NE(DetailOfParse("\"ab\xC0\x80\"").find("at byte 3"), std::string::npos);
  EXPECT_NE(DetailOfParse("01").find("at byte 0"), std::string::npos);
}

TEST(JsonReader, ErrorDetailNeverEchoesStringValues) {
  const std::string secret = "SSN-123-45-6789-very-private-patient-data";
  for (const std::string& text : {
           "{\"note\":\"" + secret + "\n\"}",        // control char
           "{\"note\":\"" + secret + "\\q\"}",       // bad escape
           "{\"note\":\"" + secret + "\xC0\x80\"}",  // bad UTF-8
           "{\"note\":\"" + secret + "\"",           // unterminated object
           "{\"note\":\"" + secret,                  // unterminated string
           "[\"" + secret + "\" \"" + secret + "\"]",
       }) {
    auto r = Parse(text);
    ASSERT_FALSE(r.ok());
    const std::string detail = DetailOf(r.status());
    EXPECT_EQ(detail.find("SSN"), std::string::npos) << detail;
    EXPECT_EQ(detail.find("private"), std::string::npos) << detail;
    EXPECT_LT(detail.size(), 120u) << detail;
  }
}

TEST(JsonReader, DuplicateKeyEchoIsTruncatedAndSanitized) {
  const std::string long_key(500, 'k');
  const std::string text = "{\"" + long_key + "\":1,\"" + long_key + "\":2}";
  const std::string detail = DetailOfParse(text);
  EXPECT_EQ(ParseError(text), ErrorCode::kDuplicateKey);
  EXPECT_LT(detail.size(), 100u) << detail;
  EXPECT_NE(detail.find("..."), std::string::npos);
  const std::string odd = DetailOfParse("{\"a\\n\\\"b\":1,\"a\\n\\\"b\":1}");
  EXPECT_EQ(odd.find('\n'), std::string::npos);
}

std::string Nested(size_t depth, char open = '[', char close = ']') {
  return std::string(depth, open) + std::string(depth, close);
}

TEST(JsonReader, DepthLimitExact) {
  Limits limits;  // max_depth 64
  EXPECT_FALSE(ParseError(Nested(64), limits).has_value());
  EXPECT_EQ(ParseError(Nested(65), limits), ErrorCode::kJsonTooDeep);
  std::string objs;
  for (int i = 0; i < 64; ++i) objs += "{\"a\":";
  objs += "1" + std::string(64, '}');
  EXPECT_FALSE(ParseError(objs, limits).has_value());
  EXPECT_EQ(ParseError("[" + objs + "]", limits), ErrorCode::kJsonTooDeep);
  limits.max_depth = 3;
  EXPECT_FALSE(ParseError(R"([{"a":[1]}])", limits).has_value());
  EXPECT_EQ(ParseError(R"([{"a":[[1]]}])", limits), ErrorCode::kJsonTooDeep);
  limits.max_depth = 0;
  EXPECT_FALSE(ParseError("1", limits).has_value());
  EXPECT_EQ(ParseError("[]", limits), ErrorCode::kJsonTooDeep);
}

TEST(JsonReader, HostileNestingFailsFast) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(ParseError(std::string(100000, '[')), ErrorCode::kJsonTooDeep);
  EXPECT_EQ(ParseError(Nested(100000)), ErrorCode::kJsonTooDeep);
  std::string objs;
  for (int i = 0; i < 100000; ++i) objs += "{\"a\":";
  EXPECT_EQ(ParseError(objs), ErrorCode::kJsonTooDeep);
  // Even a caller-supplied huge limit does not recurse without bound.
  Limits big;
  big.max_depth = 1000000;
  EXPECT_EQ(ParseError(Nested(100000), big), ErrorCode::kJsonTooDeep);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST(JsonReader, StringLimitExact) {
  Limits limits;
  limits.max_string_bytes = 8;
  EXPECT_FALSE(ParseError("\"12345678\"", limits).has_value());
  EXPECT_EQ(ParseError("\"123456789\"", limits), ErrorCode::kJsonTooLarge);
  // Counted after unescaping: 8 escapes of 6 bytes each unescape to 8 bytes.
  EXPECT_FALSE(
      ParseError(R"("\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041")", limits).has_value());
  EXPECT_EQ(ParseError(R"("\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\n")", limits),
            ErrorCode::kJsonTooLarge);
  // Keys too.
  EXPECT_FALSE(ParseError("{\"12345678\":1}", limits).has_value());
  EXPECT_EQ(ParseError("{\"123456789\":1}", limits), ErrorCode::kJsonTooLarge);
  // Multi-byte characters count in bytes: 4 x 2-byte = 8 ok, 9 bytes over.
  EXPECT_FALSE(ParseError("\"\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\"", limits).has_value());
  EXPECT_EQ(ParseError("\"\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9x\"", limits), ErrorCode::kJsonTooLarge);
}

TEST(JsonReader, ArrayLimitExact) {
  Limits limits;
  limits.max_array_items = 3;
  EXPECT_FALSE(ParseError("[1,2,3]", limits).has_value());
  EXPECT_EQ(ParseError("[1,2,3,4]", limits), ErrorCode::kJsonTooLarge);
  EXPECT_EQ(ParseError("[[],[1,2,3,4]]", limits), ErrorCode::kJsonTooLarge);
}

TEST(JsonReader, ObjectLimitExact) {
  Limits limits;
  limits.max_object_members = 20;
  EXPECT_FALSE(ParseError(ObjectWithKeys(20), limits).has_value());
  EXPECT_EQ(ParseError(ObjectWithKeys(21), limits), ErrorCode::kJsonTooLarge);
  limits.max_object_members = 2;
  EXPECT_FALSE(ParseError(R"({"a":1,"b":2})", limits).has_value());
  EXPECT_EQ(ParseError(R"({"a":1,"b":2,"c":3})", limits), ErrorCode::kJsonTooLarge);
}

TEST(JsonReader, TotalSizeLimitExact) {
  Limits limits;
  limits.max_total_bytes = 10;
  EXPECT_FALSE(ParseError("[1,2,3,45]", limits).has_value());  // 10 bytes
  EXPECT_EQ(ParseError("[1,2,3,456]", limits), ErrorCode::kJsonTooLarge);
  EXPECT_EQ(ParseError("[1,2,3,4]  ", limits), ErrorCode::kJsonTooLarge);  // whitespace counts
}

TEST(JsonReader, DefaultLimits) {
  const Limits limits;
  EXPECT_EQ(limits.max_depth, 64u);
  std::string big = "[";
  for (int i = 0; i < 100000; ++i) big += i ? ",0" : "0";
  big += "]";
  EXPECT_FALSE(ParseError(big).has_value());
  EXPECT_EQ(ParseError(big.substr(0, big.size() - 1) + ",0]"), ErrorCode::kJsonTooLarge);
}

TEST(JsonReader, LargeArrays) {
  std::string text = "[";
  for (int i = 0; i < 50000; ++i) {
    if (i) text += ',';
    text += R"({"v":)" + std::to_string(i) + ".5}";
  }
  text += "]";
  Value v = MustParse(text);
  ASSERT_EQ(v.items().size(), 50000u);
  EXPECT_EQ(v.items()[49999].Find("v")->number_text(), "49999.5");
}

TEST(JsonReader, LargeString) {
  std::string body(1 << 20, 'x');
  body[12345] = '\xC3';
  body[12346] = '\xA9';
  Value v = MustParse("\"" + body + "\"");
  EXPECT_EQ(v.as_string(), body);
}

}  // namespace
}  // namespace fhirward::json
