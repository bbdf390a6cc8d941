#include <string>
#include <string_view>

#include "gtest/gtest.h"
#include "json/value.h"

namespace fhirward::json {
namespace {

Value MustParse(std::string_view text) {
  auto r = Parse(text);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : Value();
}

// Parse, write compactly, and expect `expected`.
std::string Compact(std::string_view text) { return Write(MustParse(text)); }

TEST(JsonWriter, CompactScalarsAndContainers) {
  EXPECT_EQ(Write(Value()), "null");
  EXPECT_EQ(Write(Value::Bool(true)), "true");
  EXPECT_EQ(Write(Value::Bool(false)), "false");
  EXPECT_EQ(Write(Value::Int(-12)), "-12");
  EXPECT_EQ(Write(Value::String("hi")), "\"hi\"");
  EXPECT_EQ(Write(Value::MakeArray()), "[]");
  EXPECT_EQ(Write(Value::MakeObject()), "{}");
  EXPECT_EQ(Compact(" { \"a\" : [ 1 , 2 , { } , [ ] ] , \"b\" : null } "),
            R"({"a":[1,2,{},[]],"b":null})");
}

TEST(JsonWriter, NumberTextsVerbatim) {
  EXPECT_EQ(Compact("[1.50,3.0,1e400,-0,12345678901234567890123,1E+2,0.10]"),
            "[1.50,3.0,1e400,-0,12345678901234567890123,1E+2,0.10]");
  EXPECT_EQ(Write(Value::Number("2.500")), "2.500");
}

TEST(JsonWriter, MemberOrderKept) {
  EXPECT_EQ(Compact(R"({"z":1,"a":2,"m":3})"), R"({"z":1,"a":2,"m":3})");
  Value v = Value::MakeObject();
  v.Set("resourceType", Value::String("Observation"));
  v.Set("id", Value::String("o1"));
  v.Set("status", Value::String("final"));
  v.Set("id", Value::String("o2"));
  EXPECT_EQ(Write(v), R"({"resourceType":"Observation","id":"o2","status":"final"})");
}

TEST(JsonWriter, StringEscapes) {
  EXPECT_EQ(Write(Value::String("\"\\/\b\f\n\r\t")), R"("\"\\/\b\f\n\r\t")");
  EXPECT_EQ(Write(Value::String(std::string("\0\x01\x1f\x7f", 4))),
            "\"\\u0000\\u0001\\u001f\x7f\"");
  EXPECT_EQ(Write(Value::String("a/b")), "\"a/b\"");  // '/' not escaped
  EXPECT_EQ(Write(Value::MakeObject({{"k\"ey\n", Value::Int(1)}})), R"({"k\"ey\n":1})");
}

TEST(JsonWriter, NonAsciiPassesThrough) {
  EXPECT_EQ(Write(Value::String("Z\xC3\xBCrich \xE2\x82\xAC \xF0\x9F\x98\x80")),
            "\"Z\xC3\xBCrich \xE2\x82\xAC \xF0\x9F\x98\x80\"");
  EXPECT_EQ(Compact(R"("\u00e9\ud83d\ude00")"), "\"\xC3\xA9\xF0\x9F\x98\x80\"");
}

TEST(JsonWriter, EscapesLineAndParagraphSeparators) {
  EXPECT_EQ(Write(Value::String("a\xE2\x80\xA8"
                                "b\xE2\x80\xA9"
                                "c")),
            R"("a\u2028b\u2029c")");
  EXPECT_EQ(Compact(R"("\u2028")"), R"("\u2028")");
  // Neighbouring code points are not escaped.
  EXPECT_EQ(Write(Value::String("\xE2\x80\xA7\xE2\x80\xAA")), "\"\xE2\x80\xA7\xE2\x80\xAA\"");
}

TEST(JsonWriter, InvalidUtf8InHandBuiltValuesBecomesReplacementChar) {
  const std::string out = Write(Value::String("a\xC0\x80z\xFF"));
  EXPECT_EQ(out, "\"a\xEF\xBF\xBD\xEF\xBF\xBDz\xEF\xBF\xBD\"");
  EXPECT_TRUE(Parse(out).ok());
}

TEST(JsonWriter, Pretty) {
  Value v = MustParse(R"({"resourceType":"Patient","name":[{"given":["A","B"]}],"e":[],"o":{}})");
  EXPECT_EQ(Write(v, {.pretty = true}),
            "{\n"
            "  \"resourceType\": \"Patient\",\n"
            "  \"name\": [\n"
            "    {\n"
            "      \"given\": [\n"
            "        \"A\",\n"
            "        \"B\"\n"
            "      ]\n"
            "    }\n"
            "  ],\n"
            "  \"e\": [],\n"
            "  \"o\": {}\n"
            "}");
  EXPECT_EQ(Write(Value::Int(1), {.pretty = true}), "1");
  EXPECT_EQ(Write(Value::MakeArray(), {.pretty = true}), "[]");
}

TEST(JsonWriter, RoundTrip) {
  for (std::string_view text : {
           R"({"resourceType":"Observation","valueQuantity":{"value":1.50,"unit":"mg"}})",
           R"([null,true,false,0,-0.0,1e-7,"",{},[],[[[]]],{"a":{"b":{"c":[1,{"d":"e"}]}}}])",
           R"({"s":"tab\there \"quoted\" back\\slash \u0001 \u2028 \ud83d\ude00 caf\u00e9"})",
           R"("\u0000")",
           R"(12345678901234567890123.45678901234567890e-999)",
       }) {
    Value v = MustParse(text);
    for (bool pretty : {false, true}) {
      const std::string out = Write(v, {.pretty = pretty});
      auto again = Parse(out);
      ASSERT_TRUE(again.ok()) << again.status() << "\n" << out;
      EXPECT_EQ(*again, v) << out;
      EXPECT_EQ(Write(*again, {.pretty = pretty}), out);
    }
  }
}

TEST(JsonWriter, CompactOutputOfCompactInputIsIdentical) {
  const std::string text =
      R"({"resourceType":"Bundle","type":"searchset","total":2,"entry":[{"fullUrl":"urn:uuid:1",)"
      R"("resource":{"resourceType":"Patient","id":"1","birthDate":"1970-01-01"}},)"
      R"({"resource":{"resourceType":"Observation","valueDecimal":98.60}}]})";
  EXPECT_EQ(Compact(text), text);
}

TEST(JsonWriter, LargeArrayRoundTrip) {
  Value arr = Value::MakeArray();
  for (int i = 0; i < 100000; ++i) arr.Push(Value::Int(i));
  const std::string out = Write(arr);
  EXPECT_EQ(out.substr(0, 7), "[0,1,2,");
  EXPECT_EQ(out.substr(out.size() - 7), ",99999]");
  auto back = Parse(out);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, arr);
}

}  // namespace
}  // namespace fhirward::json
