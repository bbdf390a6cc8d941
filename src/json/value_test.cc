#include "json/value.h"

#include <cstdint>
#include <limits>
#include <string>

#include "gtest/gtest.h"

namespace fhirward::json {
namespace {

TEST(JsonValue, KindsAndFactories) {
  EXPECT_EQ(Value().kind(), Value::Kind::kNull);
  EXPECT_TRUE(Value::Null().is_null());
  EXPECT_EQ(Value::Bool(true).kind(), Value::Kind::kBool);
  EXPECT_TRUE(Value::Bool(true).as_bool());
  EXPECT_FALSE(Value::Bool(false).as_bool());
  EXPECT_TRUE(Value::Number("1.50").is_number());
  EXPECT_EQ(Value::Number("1.50").number_text(), "1.50");
  EXPECT_TRUE(Value::String("x").is_string());
  EXPECT_EQ(Value::String("x").as_string(), "x");
  EXPECT_TRUE(Value::MakeArray().is_array());
  EXPECT_TRUE(Value::MakeObject().is_object());
  EXPECT_FALSE(Value::String("1").is_number());
}

TEST(JsonValue, IntProducesDecimalText) {
  EXPECT_EQ(Value::Int(0).number_text(), "0");
  EXPECT_EQ(Value::Int(-42).number_text(), "-42");
  EXPECT_EQ(Value::Int(std::numeric_limits<int64_t>::max()).number_text(), "9223372036854775807");
  EXPECT_EQ(Value::Int(std::numeric_limits<int64_t>::min()).number_text(), "-9223372036854775808");
}

TEST(JsonValue, AsInt64OnlyForIntegerTextsInRange) {
  EXPECT_EQ(Value::Number("42").as_int64(), 42);
  EXPECT_EQ(Value::Number("-7").as_int64(), -7);
  EXPECT_EQ(Value::Number("-0").as_int64(), 0);
  EXPECT_EQ(Value::Number("9223372036854775807").as_int64(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(Value::Number("-9223372036854775808").as_int64(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(Value::Number("9223372036854775808").as_int64(), std::nullopt);
  EXPECT_EQ(Value::Number("-9223372036854775809").as_int64(), std::nullopt);
  EXPECT_EQ(Value::Number("12345678901234567890123").as_int64(), std::nullopt);
  EXPECT_EQ(Value::Number("1.0").as_int64(), std::nullopt);
  EXPECT_EQ(Value::Number("1e2").as_int64(), std::nullopt);
  EXPECT_EQ(Value::Number("1E2").as_int64(), std::nullopt);
  EXPECT_EQ(Value::String("1").as_int64(), std::nullopt);
  EXPECT_EQ(Value().as_int64(), std::nullopt);
  EXPECT_EQ(Value::Int(123).as_int64(), 123);
}

TEST(JsonValue, ObjectHelpers) {
  Value o = Value::MakeObject();
  o.Set("resourceType", Value::String("Patient"));
  o.Set("id", Value::String("a"));
  o.Set("active", Value::Bool(true));
  ASSERT_EQ(o.members().size(), 3u);
  EXPECT_EQ(o.GetString("resourceType"), "Patient");
  EXPECT_EQ(o.GetString("active"), std::nullopt);  // not a string
  EXPECT_EQ(o.GetString("missing"), std::nullopt);
  ASSERT_NE(o.Find("active"), nullptr);
  EXPECT_TRUE(o.Find("active")->as_bool());
  EXPECT_EQ(o.Find("nope"), nullptr);

  // Set replaces in place, keeping order.
  o.Set("id", Value::String("b"));
  ASSERT_EQ(o.members().size(), 3u);
  EXPECT_EQ(o.members()[1].first, "id");
  EXPECT_EQ(o.GetString("id"), "b");

  // Mutable Find.
  *o.Find("active") = Value::Bool(false);
  EXPECT_FALSE(o.Find("active")->as_bool());

  EXPECT_TRUE(o.Erase("id"));
  EXPECT_FALSE(o.Erase("id"));
  ASSERT_EQ(o.members().size(), 2u);
  EXPECT_EQ(o.members()[0].first, "resourceType");
  EXPECT_EQ(o.members()[1].first, "active");
}

TEST(JsonValue, FindOnNonObjectReturnsNull) {
  EXPECT_EQ(Value().Find("a"), nullptr);
  EXPECT_EQ(Value::String("a").Find("a"), nullptr);
  EXPECT_EQ(Value::MakeArray({Value::String("a")}).Find("a"), nullptr);
  const Value n = Value::Int(1);
  EXPECT_EQ(n.Find("a"), nullptr);
  EXPECT_EQ(n.GetString("a"), std::nullopt);
  Value s = Value::String("x");
  EXPECT_FALSE(s.Erase("x"));
}

TEST(JsonValue, ArrayHelpers) {
  Value a = Value::MakeArray();
  a.Push(Value::Int(1));
  a.Push(Value::String("two"));
  a.Push(Value::MakeObject({{"k", Value::Null()}}));
  ASSERT_EQ(a.items().size(), 3u);
  EXPECT_EQ(a.items()[0].number_text(), "1");
  EXPECT_EQ(a.items()[1].as_string(), "two");
  EXPECT_TRUE(a.items()[2].Find("k")->is_null());
  a.items().pop_back();
  EXPECT_EQ(a.items().size(), 2u);
}

TEST(JsonValue, Equality) {
  EXPECT_EQ(Value(), Value::Null());
  EXPECT_EQ(Value::Number("1.50"), Value::Number("1.50"));
  EXPECT_NE(Value::Number("1.50"), Value::Number("1.5"));  // textual, like FHIR decimals
  EXPECT_NE(Value::Number("1"), Value::String("1"));
  EXPECT_NE(Value::Bool(false), Value::Null());
  EXPECT_EQ(Value::MakeArray({Value::Int(1), Value::String("a")}),
            Value::MakeArray({Value::Int(1), Value::String("a")}));
  EXPECT_NE(Value::MakeArray({Value::Int(1)}), Value::MakeArray({Value::Int(2)}));
  EXPECT_EQ(Value::MakeObject({{"a", Value::Int(1)}}), Value::MakeObject({{"a", Value::Int(1)}}));
  EXPECT_NE(Value::MakeObject({{"a", Value::Int(1)}, {"b", Value::Int(2)}}),
            Value::MakeObject({{"b", Value::Int(2)}, {"a", Value::Int(1)}}));  // order matters
  EXPECT_NE(Value::MakeObject(), Value::MakeArray());
}

TEST(JsonValue, CopyAndMoveAreDeep) {
  Value a = Value::MakeObject({{"list", Value::MakeArray({Value::Int(1)})}});
  Value b = a;
  b.Find("list")->Push(Value::Int(2));
  EXPECT_EQ(a.Find("list")->items().size(), 1u);
  EXPECT_EQ(b.Find("list")->items().size(), 2u);
  Value c = std::move(b);
  EXPECT_EQ(c.Find("list")->items().size(), 2u);
}

}  // namespace
}  // namespace fhirward::json
