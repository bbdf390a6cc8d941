#include "json/patch.h"

#include <optional>
#include <string>
#include <string_view>

#include "common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "json/value.h"

namespace fhirward::json {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

Value MustParse(std::string_view text) {
  auto r = Parse(text);
  EXPECT_TRUE(r.ok()) << r.status() << " in " << text;
  return r.ok() ? *std::move(r) : Value();
}

// Compact JSON text of `text` re-written, so expectations can be written with
// any spacing.
std::string Canonical(std::string_view text) { return Write(MustParse(text)); }

// The compact result of applying `patch` to `doc`; "<error: detail>" on failure.
std::string Patched(std::string_view doc, std::string_view patch, const PatchLimits& limits = {}) {
  Value d = MustParse(doc);
  absl::Status s = ApplyPatch(MustParse(patch), d, limits);
  if (!s.ok()) return "<error: " + DetailOf(s) + ">";
  return Write(d);
}

struct Failed {
  ErrorCode code;
  std::string detail;
};

// The error of applying `patch` to `doc`, checking that `doc` was left
// unchanged; nullopt when the patch applies.
std::optional<Failed> PatchFailure(std::string_view doc, std::string_view patch,
                                   const PatchLimits& limits = {}) {
  Value d = MustParse(doc);
  const Value before = d;
  absl::Status s = ApplyPatch(MustParse(patch), d, limits);
  if (s.ok()) return std::nullopt;
  EXPECT_TRUE(d == before) << "document changed by a failed patch: " << Write(d);
  EXPECT_EQ(Write(d), Write(before));
  return Failed{CodeOf(s), DetailOf(s)};
}

std::optional<ErrorCode> PatchError(std::string_view doc, std::string_view patch,
                                    const PatchLimits& limits = {}) {
  std::optional<Failed> f = PatchFailure(doc, patch, limits);
  if (!f) return std::nullopt;
  return f->code;
}

constexpr ErrorCode kMalformed = ErrorCode::kInvalidRequest;      // 400
constexpr ErrorCode kCannotApply = ErrorCode::kValidationFailed;  // 422
constexpr ErrorCode kLimit = ErrorCode::kTooCostly;               // 400 too-costly

TEST(JsonPatch, ErrorCodesMapToTheIntendedHttpStatuses) {
  EXPECT_EQ(Describe(kMalformed).http_status, 400);
  EXPECT_EQ(Describe(kCannotApply).http_status, 422);
  EXPECT_EQ(Describe(kLimit).http_status, 400);
}

// ---------------------------------------------------------------------------
// RFC 6902 Appendix A, one test per example (own documents in the same spirit).

TEST(JsonPatch, A1AddObjectMember) {
  EXPECT_EQ(
      Patched(R"({"family":"Chalmers"})", R"([{"op":"add","path":"/given","value":"Peter"}])"),
      Canonical(R"({"family":"Chalmers","given":"Peter"})"));
}

TEST(JsonPatch, A2AddArrayElement) {
  EXPECT_EQ(Patched(R"({"given":["Peter","Chalmers"]})",
                    R"([{"op":"add","path":"/given/1","value":"James"}])"),
            Canonical(R"({"given":["Peter","James","Chalmers"]})"));
}

TEST(JsonPatch, A3RemoveObjectMember) {
  EXPECT_EQ(Patched(R"({"active":true,"gender":"male"})", R"([{"op":"remove","path":"/active"}])"),
            Canonical(R"({"gender":"male"})"));
}

TEST(JsonPatch, A4RemoveArrayElement) {
  EXPECT_EQ(Patched(R"({"given":["Peter","James","Chalmers"]})",
                    R"([{"op":"remove","path":"/given/1"}])"),
            Canonical(R"({"given":["Peter","Chalmers"]})"));
}

TEST(JsonPatch, A5ReplaceValue) {
  EXPECT_EQ(Patched(R"({"status":"draft","id":"x"})",
                    R"([{"op":"replace","path":"/status","value":"final"}])"),
            Canonical(R"({"status":"final","id":"x"})"));  // member keeps its place
}

TEST(JsonPatch, A6MoveValue) {
  EXPECT_EQ(Patched(R"({"src":{"keep":1,"go":"moved"},"dst":{"old":2}})",
                    R"([{"op":"move","from":"/src/go","path":"/dst/new"}])"),
            Canonical(R"({"src":{"keep":1},"dst":{"old":2,"new":"moved"}})"));
}

TEST(JsonPatch, A7MoveArrayElement) {
  // The target index is evaluated after the removal.
  EXPECT_EQ(Patched(R"({"l":["a","b","c","d"]})", R"([{"op":"move","from":"/l/1","path":"/l/3"}])"),
            Canonical(R"({"l":["a","c","d","b"]})"));
  EXPECT_EQ(Patched(R"({"l":["a","b","c","d"]})", R"([{"op":"move","from":"/l/3","path":"/l/0"}])"),
            Canonical(R"({"l":["d","a","b","c"]})"));
}

TEST(JsonPatch, A8TestSuccess) {
  const std::string_view doc = R"({"status":"final","component":["a",2,"c"]})";
  EXPECT_EQ(Patched(doc, R"([{"op":"test","path":"/status","value":"final"},
                             {"op":"test","path":"/component/1","value":2}])"),
            Canonical(doc));
}

TEST(JsonPatch, A9TestFailure) {
  std::optional<Failed> f =
      PatchFailure(R"({"status":"final"})", R"([{"op":"test","path":"/status","value":"draft"}])");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kCannotApply);
  EXPECT_EQ(f->detail, "operation 0 (test): the value at /status differs from the test value");
}

TEST(JsonPatch, A10AddNestedObject) {
  EXPECT_EQ(Patched(R"({"id":"1"})", R"([{"op":"add","path":"/meta","value":{"tag":{}}}])"),
            Canonical(R"({"id":"1","meta":{"tag":{}}})"));
}

TEST(JsonPatch, A11IgnoresUnrecognizedMembers) {
  EXPECT_EQ(Patched(R"({"id":"1"})", R"([{"op":"add","path":"/x","value":"y","note":123,
                                           "extra":{"op":"remove"},"from":"/nothing"}])"),
            Canonical(R"({"id":"1","x":"y"})"));
}

TEST(JsonPatch, A12AddToNonexistentTarget) {
  std::optional<Failed> f =
      PatchFailure(R"({"id":"1"})", R"([{"op":"add","path":"/meta/tag","value":"t"}])");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kCannotApply);
  EXPECT_EQ(f->detail,
            "operation 0 (add): path /meta/tag does not exist (no member \"meta\" in \"\")");
}

TEST(JsonPatch, A13RepeatedOpMemberIsInvalid) {
  // The reader refuses the repeated key before a patch is ever applied...
  const std::string_view text = R"([{"op":"add","path":"/a","value":1,"op":"remove"}])";
  auto parsed = Parse(text);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(CodeOf(parsed.status()), ErrorCode::kDuplicateKey);
  // ...and ApplyPatch refuses one built by hand.
  Value op = Value::MakeObject({{"op", Value::String("add")},
                                {"path", Value::String("/a")},
                                {"value", Value::Int(1)},
                                {"op", Value::String("remove")}});
  Value doc = MustParse("{}");
  absl::Status s = ApplyPatch(Value::MakeArray({op}), doc);
  EXPECT_EQ(CodeOf(s), kMalformed);
  EXPECT_EQ(DetailOf(s), "operation 0: member \"op\" appears more than once");
  EXPECT_EQ(Write(doc), "{}");
}

TEST(JsonPatch, A14EscapeOrdering) {
  // "~01" unescapes to "~1", not to "/".
  const std::string_view doc = R"({"/":9,"~1":10})";
  EXPECT_EQ(Patched(doc, R"([{"op":"test","path":"/~01","value":10}])"), Canonical(doc));
  EXPECT_EQ(PatchError(doc, R"([{"op":"test","path":"/~01","value":9}])"), kCannotApply);
}

TEST(JsonPatch, A15StringIsNotNumber) {
  std::optional<Failed> f =
      PatchFailure(R"({"/":9,"~1":10})", R"([{"op":"test","path":"/~01","value":"10"}])");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kCannotApply);
}

TEST(JsonPatch, A16AddArrayValue) {
  EXPECT_EQ(Patched(R"({"l":["a"]})", R"([{"op":"add","path":"/l/-","value":["b","c"]}])"),
            Canonical(R"({"l":["a",["b","c"]]})"));
}

// ---------------------------------------------------------------------------
// JSON Pointer

TEST(JsonPatch, PointerExamplesOfRfc6901) {
  const std::string_view doc = R"({"foo":["bar","baz"],"":0,"a/b":1,"c%d":2,"e^f":3,
                                   "g|h":4,"i\\j":5,"k\"l":6," ":7,"m~n":8})";
  EXPECT_EQ(Patched(doc, R"([
      {"op":"test","path":"","value":)" +
                             std::string(doc) + R"(},
      {"op":"test","path":"/foo","value":["bar","baz"]},
      {"op":"test","path":"/foo/0","value":"bar"},
      {"op":"test","path":"/","value":0},
      {"op":"test","path":"/a~1b","value":1},
      {"op":"test","path":"/c%d","value":2},
      {"op":"test","path":"/e^f","value":3},
      {"op":"test","path":"/g|h","value":4},
      {"op":"test","path":"/i\\j","value":5},
      {"op":"test","path":"/k\"l","value":6},
      {"op":"test","path":"/ ","value":7},
      {"op":"test","path":"/m~0n","value":8}])"),
            Canonical(doc));
}

TEST(JsonPatch, EscapedTokensInEveryOperation) {
  EXPECT_EQ(Patched(R"({"a/b":{"m~n":1}})", R"([
      {"op":"add","path":"/a~1b/x~1y","value":2},
      {"op":"copy","from":"/a~1b/m~0n","path":"/~0~1"},
      {"op":"move","from":"/a~1b/x~1y","path":"/~1~0"},
      {"op":"replace","path":"/a~1b/m~0n","value":3}])"),
            Canonical(R"({"a/b":{"m~n":3},"~/":1,"/~":2})"));
}

TEST(JsonPatch, PointerSyntaxErrorsAreMalformed) {
  const std::string_view doc = R"({"a":1,"a~2":2})";
  std::optional<Failed> f = PatchFailure(doc, R"([{"op":"test","path":"/a~2","value":2}])");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kMalformed);
  EXPECT_EQ(f->detail,
            "operation 0 (test): path /a~2 has an invalid escape (\"~\" must be followed by 0 or "
            "1)");
  EXPECT_EQ(PatchError(doc, R"([{"op":"remove","path":"/a~"}])"), kMalformed);
  EXPECT_EQ(PatchError(doc, R"([{"op":"remove","path":"a"}])"), kMalformed);
  EXPECT_EQ(PatchError(doc, R"([{"op":"copy","from":"a","path":"/b"}])"), kMalformed);
  EXPECT_EQ(PatchError(doc, R"([{"op":"move","from":"/a","path":"#/b"}])"), kMalformed);
}

TEST(JsonPatch, EmptyPointerIsTheWholeDocument) {
  EXPECT_EQ(Patched(R"({"a":1})", R"([{"op":"replace","path":"","value":[1,2]}])"), "[1,2]");
  EXPECT_EQ(Patched(R"({"a":1})", R"([{"op":"add","path":"","value":"x"}])"), R"("x")");
  EXPECT_EQ(Patched(R"({"a":{"b":1}})", R"([{"op":"move","from":"/a","path":""}])"), R"({"b":1})");
  EXPECT_EQ(Patched(R"({"a":{"b":1}})", R"([{"op":"copy","from":"/a","path":""}])"), R"({"b":1})");
  EXPECT_EQ(Patched(R"({"a":1})", R"([{"op":"test","path":"","value":{"a":1.0}}])"), R"({"a":1})");
  // Removing the whole document has no result; refused as malformed.
  EXPECT_EQ(PatchError(R"({"a":1})", R"([{"op":"remove","path":""}])"), kMalformed);
  // An empty member name is "/", not "".
  EXPECT_EQ(Patched(R"({"a":1})", R"([{"op":"add","path":"/","value":2}])"), R"({"a":1,"":2})");
}

TEST(JsonPatch, DashIndex) {
  const std::string_view doc = R"({"l":[1,2],"o":{"k":0}})";
  EXPECT_EQ(Patched(doc, R"([{"op":"add","path":"/l/-","value":3}])"),
            Canonical(R"({"l":[1,2,3],"o":{"k":0}})"));
  EXPECT_EQ(Patched(doc, R"([{"op":"copy","from":"/o/k","path":"/l/-"}])"),
            Canonical(R"({"l":[1,2,0],"o":{"k":0}})"));
  EXPECT_EQ(Patched(doc, R"([{"op":"move","from":"/l/0","path":"/l/-"}])"),
            Canonical(R"({"l":[2,1],"o":{"k":0}})"));
  EXPECT_EQ(Patched(R"({"l":[]})", R"([{"op":"add","path":"/l/-","value":"first"}])"),
            Canonical(R"({"l":["first"]})"));
  // "-" exists only as a target of add, move and copy.
  EXPECT_EQ(PatchError(doc, R"([{"op":"remove","path":"/l/-"}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"replace","path":"/l/-","value":0}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"test","path":"/l/-","value":2}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"copy","from":"/l/-","path":"/x"}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"move","from":"/l/-","path":"/x"}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"add","path":"/l/-/x","value":0}])"), kCannotApply);
  // In an object "-" is an ordinary member name.
  EXPECT_EQ(Patched(doc, R"([{"op":"add","path":"/o/-","value":1},
                             {"op":"replace","path":"/o/-","value":2},
                             {"op":"test","path":"/o/-","value":2}])"),
            Canonical(R"({"l":[1,2],"o":{"k":0,"-":2}})"));
}

TEST(JsonPatch, LeadingZeroIndexRefused) {
  const std::string_view doc = R"({"l":["a","b"],"o":{"01":"x"}})";
  std::optional<Failed> f = PatchFailure(doc, R"([{"op":"replace","path":"/l/01","value":0}])");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kCannotApply);
  EXPECT_EQ(f->detail,
            "operation 0 (replace): path /l/01 does not exist (array index \"01\" has a leading "
            "zero)");
  EXPECT_EQ(PatchError(doc, R"([{"op":"add","path":"/l/00","value":0}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"remove","path":"/l/01"}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"test","path":"/l/01","value":"b"}])"), kCannotApply);
  // "0" itself is fine, and "01" is an ordinary member name in an object.
  EXPECT_EQ(Patched(doc, R"([{"op":"remove","path":"/l/0"},{"op":"remove","path":"/o/01"}])"),
            Canonical(R"({"l":["b"],"o":{}})"));
}

TEST(JsonPatch, MalformedArrayIndexes) {
  const std::string_view doc = R"({"l":["a","b"]})";
  for (std::string_view path :
       {"/l/-1", "/l/+1", "/l/1.0", "/l/ 1", "/l/1 ", "/l/", "/l/0x1", "/l/one", "/l/1e0"}) {
    const std::string patch =
        R"([{"op":"replace","path":")" + std::string(path) + R"(","value":0}])";
    EXPECT_EQ(PatchError(doc, patch), kCannotApply) << path;
  }
}

TEST(JsonPatch, OutOfRangeIndexes) {
  const std::string_view doc = R"({"l":["a","b"]})";
  // add may target the position after the last item, nothing further.
  EXPECT_EQ(Patched(doc, R"([{"op":"add","path":"/l/2","value":"c"}])"),
            Canonical(R"({"l":["a","b","c"]})"));
  std::optional<Failed> f = PatchFailure(doc, R"([{"op":"add","path":"/l/3","value":"c"}])");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kCannotApply);
  EXPECT_EQ(f->detail,
            "operation 0 (add): path /l/3 does not exist (index 3 is out of range for an array of "
            "2 items)");
  EXPECT_EQ(PatchError(doc, R"([{"op":"remove","path":"/l/2"}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"replace","path":"/l/2","value":0}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"test","path":"/l/2","value":null}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"copy","from":"/l/2","path":"/l/0"}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"add","path":"/l/99999999999999999999999","value":0}])"),
            kCannotApply);
  EXPECT_EQ(PatchError(R"({"l":[]})", R"([{"op":"remove","path":"/l/0"}])"), kCannotApply);
}

TEST(JsonPatch, PathsThatDoNotResolve) {
  const std::string_view doc = R"({"s":"text","n":null,"o":{}})";
  std::optional<Failed> f = PatchFailure(doc, R"([{"op":"add","path":"/s/x","value":1}])");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kCannotApply);
  EXPECT_EQ(f->detail,
            "operation 0 (add): path /s/x does not exist (/s is a string, not an object or array)");
  EXPECT_EQ(PatchError(doc, R"([{"op":"test","path":"/n/0","value":1}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"remove","path":"/o/missing"}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"replace","path":"/missing","value":1}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"move","from":"/missing","path":"/x"}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"add","path":"/o/a/b","value":1}])"), kCannotApply);
  f = PatchFailure(R"({"name":[{"given":["a"]},{}]})",
                   R"([{"op":"test","path":"/name/0/given/0","value":"a"},
                       {"op":"add","path":"/name/1/given","value":[]},
                       {"op":"replace","path":"/name/5","value":{}}])");
  ASSERT_TRUE(f.has_value());
  EXPECT_THAT(f->detail, StartsWith("operation 2 (replace): path /name/5 does not exist"));
}

// ---------------------------------------------------------------------------
// Operations

TEST(JsonPatch, AddReplacesAnExistingMemberInPlace) {
  EXPECT_EQ(Patched(R"({"a":1,"b":2,"c":3})", R"([{"op":"add","path":"/b","value":[true]}])"),
            Canonical(R"({"a":1,"b":[true],"c":3})"));
}

TEST(JsonPatch, ValuesMayBeNullAndAreCopiedVerbatim) {
  EXPECT_EQ(Patched(R"({"a":1})", R"([{"op":"add","path":"/b","value":null},
                                      {"op":"replace","path":"/a","value":1.50}])"),
            R"({"a":1.50,"b":null})");
}

TEST(JsonPatch, MoveIntoOwnChildIsRefused) {
  std::optional<Failed> f =
      PatchFailure(R"({"a":{"b":{}}})", R"([{"op":"move","from":"/a","path":"/a/b/c"}])");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kMalformed);
  EXPECT_EQ(
      f->detail,
      "operation 0 (move): path /a/b/c is inside from /a (a value cannot be moved into one of "
      "its own children)");
  EXPECT_EQ(PatchError(R"({"a":{"b":{}}})", R"([{"op":"move","from":"","path":"/a"}])"),
            kMalformed);
  // A sibling whose name merely starts with the same characters is fine.
  EXPECT_EQ(Patched(R"({"a":1})", R"([{"op":"move","from":"/a","path":"/ab"}])"), R"({"ab":1})");
}

TEST(JsonPatch, MoveToItselfIsANoOpButMustExist) {
  EXPECT_EQ(Patched(R"({"a":1,"b":2})", R"([{"op":"move","from":"/a","path":"/a"}])"),
            R"({"a":1,"b":2})");
  EXPECT_EQ(PatchError(R"({"a":1})", R"([{"op":"move","from":"/x","path":"/x"}])"), kCannotApply);
}

TEST(JsonPatch, MoveBetweenContainers) {
  EXPECT_EQ(Patched(R"({"l":[{"k":1}],"o":{}})", R"([{"op":"move","from":"/l/0","path":"/o/x"},
                                                     {"op":"move","from":"/o","path":"/l/0"}])"),
            Canonical(R"({"l":[{"x":{"k":1}}]})"));
}

TEST(JsonPatch, CopyIntoOwnChildIsAllowed) {
  EXPECT_EQ(Patched(R"({"a":{"b":1}})", R"([{"op":"copy","from":"/a","path":"/a/c"}])"),
            Canonical(R"({"a":{"b":1,"c":{"b":1}}})"));
  EXPECT_EQ(Patched(R"({"l":[1,[2]]})", R"([{"op":"copy","from":"/l","path":"/l/1/0"}])"),
            Canonical(R"({"l":[1,[[1,[2]],2]]})"));
  EXPECT_EQ(Patched(R"({"a":{"b":1}})", R"([{"op":"copy","from":"","path":"/a/c"}])"),
            Canonical(R"({"a":{"b":1,"c":{"a":{"b":1}}}})"));
}

TEST(JsonPatch, CopyReplacesAnExistingTarget) {
  EXPECT_EQ(Patched(R"({"a":{"b":[1]},"c":0})", R"([{"op":"copy","from":"/a/b","path":"/a"}])"),
            Canonical(R"({"a":[1],"c":0})"));
}

TEST(JsonPatch, OperationsSeeEarlierResults) {
  EXPECT_EQ(Patched(R"({})", R"([{"op":"add","path":"/name","value":[]},
                                 {"op":"add","path":"/name/-","value":{"family":"X"}},
                                 {"op":"add","path":"/name/0/given","value":["Y"]},
                                 {"op":"copy","from":"/name/0","path":"/name/-"},
                                 {"op":"replace","path":"/name/1/family","value":"Z"},
                                 {"op":"test","path":"/name/0/family","value":"X"},
                                 {"op":"remove","path":"/name/0/given"}])"),
            Canonical(R"({"name":[{"family":"X"},{"family":"Z","given":["Y"]}]})"));
}

TEST(JsonPatch, EmptyPatchChangesNothing) {
  EXPECT_EQ(Patched(R"({"a":[1,2]})", "[]"), R"({"a":[1,2]})");
}

// ---------------------------------------------------------------------------
// Atomicity

TEST(JsonPatch, FailedThirdOperationLeavesDocumentUnchanged) {
  const std::string_view text =
      R"({"resourceType":"Patient","name":[{"family":"A"}],"active":true})";
  Value doc = MustParse(text);
  const Value patch = MustParse(R"([
      {"op":"replace","path":"/name/0/family","value":"B"},
      {"op":"remove","path":"/active"},
      {"op":"add","path":"/telecom/0","value":{"system":"phone"}},
      {"op":"add","path":"/gender","value":"male"}])");
  absl::Status s = ApplyPatch(patch, doc);
  EXPECT_EQ(CodeOf(s), kCannotApply);
  EXPECT_THAT(DetailOf(s), StartsWith("operation 2 (add): path /telecom/0 does not exist"));
  EXPECT_EQ(Write(doc), Canonical(text));
}

TEST(JsonPatch, FailedTestLeavesDocumentUnchanged) {
  const std::string_view text = R"({"v":"1","l":[1,2,3]})";
  Value doc = MustParse(text);
  absl::Status s = ApplyPatch(MustParse(R"([{"op":"remove","path":"/l/0"},
                                           {"op":"replace","path":"/v","value":"2"},
                                           {"op":"test","path":"/v","value":"1"}])"),
                              doc);
  EXPECT_EQ(CodeOf(s), kCannotApply);
  EXPECT_EQ(Write(doc), Canonical(text));
}

TEST(JsonPatch, MalformedLaterOperationAppliesNothing) {
  // The whole patch is checked before the first operation runs: a malformed
  // operation wins over one that would fail against the document.
  std::optional<Failed> f = PatchFailure(R"({"a":1})", R"([{"op":"remove","path":"/a"},
                                                          {"op":"test","path":"/a","value":1},
                                                          {"op":"frobnicate","path":"/a"}])");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kMalformed);
  EXPECT_EQ(f->detail,
            "operation 2: op \"frobnicate\" is not one of add, remove, replace, move, copy, test");
}

// ---------------------------------------------------------------------------
// test: JSON equality

TEST(JsonPatch, TestComparesNumbersByValue) {
  const std::string_view doc = R"({"n":1,"d":1.50,"z":0,"big":12345678901234567890123})";
  for (std::string_view equal :
       {R"({"op":"test","path":"/n","value":1.0})", R"({"op":"test","path":"/n","value":1})",
        R"({"op":"test","path":"/n","value":10e-1})", R"({"op":"test","path":"/n","value":0.1E+1})",
        R"({"op":"test","path":"/n","value":1.000e0})", R"({"op":"test","path":"/d","value":1.5})",
        R"({"op":"test","path":"/d","value":150e-2})", R"({"op":"test","path":"/z","value":-0.0})",
        R"({"op":"test","path":"/z","value":0e99})",
        R"({"op":"test","path":"/big","value":1.2345678901234567890123e22})"}) {
    const std::string patch = "[" + std::string(equal) + "]";
    EXPECT_EQ(Patched(doc, patch), Canonical(doc)) << equal;
  }
  for (std::string_view differ :
       {R"({"op":"test","path":"/n","value":1.01})", R"({"op":"test","path":"/n","value":-1})",
        R"({"op":"test","path":"/n","value":10})", R"({"op":"test","path":"/n","value":"1"})",
        R"({"op":"test","path":"/n","value":true})", R"({"op":"test","path":"/d","value":15})",
        R"({"op":"test","path":"/z","value":null})",
        R"({"op":"test","path":"/big","value":12345678901234567890124})"}) {
    const std::string patch = "[" + std::string(differ) + "]";
    EXPECT_EQ(PatchError(doc, patch), kCannotApply) << differ;
  }
}

TEST(JsonPatch, TestIgnoresObjectMemberOrder) {
  const std::string_view doc = R"({"o":{"a":1,"b":{"x":[1,{"p":1,"q":2}],"y":null}}})";
  EXPECT_EQ(Patched(doc, R"([{"op":"test","path":"/o",
                              "value":{"b":{"y":null,"x":[1.0,{"q":2,"p":1}]},"a":1}}])"),
            Canonical(doc));
  // Arrays stay ordered; member sets must match exactly.
  EXPECT_EQ(PatchError(doc, R"([{"op":"test","path":"/o/b/x","value":[{"p":1,"q":2},1]}])"),
            kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"test","path":"/o","value":{"a":1}}])"), kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"test","path":"/o/b/x/1","value":{"p":1,"q":2,"r":3}}])"),
            kCannotApply);
  EXPECT_EQ(PatchError(doc, R"([{"op":"test","path":"/o/b/x/1","value":{"p":1,"r":2}}])"),
            kCannotApply);
}

TEST(JsonPatch, JsonEqualsDirectly) {
  EXPECT_TRUE(
      JsonEquals(MustParse("[1,{\"a\":2.0,\"b\":[]}]"), MustParse("[1.0,{\"b\":[],\"a\":2}]")));
  EXPECT_TRUE(JsonEquals(MustParse("\"x\""), MustParse("\"x\"")));
  EXPECT_TRUE(JsonEquals(MustParse("null"), MustParse("null")));
  EXPECT_FALSE(JsonEquals(MustParse("[]"), MustParse("{}")));
  EXPECT_FALSE(JsonEquals(MustParse("false"), MustParse("0")));
  EXPECT_FALSE(JsonEquals(MustParse("\"a\""), MustParse("\"a \"")));
  EXPECT_FALSE(JsonEquals(MustParse("[[1]]"), MustParse("[[1,1]]")));
  // Exponents too long to normalize are compared as text.
  EXPECT_TRUE(JsonEquals(MustParse("1e1234567890123456789"), MustParse("1e1234567890123456789")));
  EXPECT_FALSE(JsonEquals(MustParse("1e1234567890123456789"), MustParse("1e1234567890123456788")));
  EXPECT_TRUE(JsonEquals(MustParse("1e000000000000000000000001"), MustParse("10")));
}

// ---------------------------------------------------------------------------
// Malformed patch documents

TEST(JsonPatch, PatchThatIsNotAnArray) {
  std::optional<Failed> f = PatchFailure(R"({"a":1})", R"({"op":"remove","path":"/a"})");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kMalformed);
  EXPECT_EQ(f->detail, "the patch document is an object, not an array of operations");
  EXPECT_EQ(PatchError(R"({"a":1})", "null"), kMalformed);
  EXPECT_EQ(PatchError(R"({"a":1})", R"("[]")"), kMalformed);
  EXPECT_EQ(PatchError(R"({"a":1})", "0"), kMalformed);
}

TEST(JsonPatch, MalformedOperations) {
  const std::string_view doc = R"({"a":1})";
  struct Case {
    std::string_view patch;
    std::string_view detail;
  };
  for (const Case& c : {
           Case{R"([1])", "operation 0: is a number, not an object"},
           Case{R"([{"op":"test","path":"/a","value":1},[]])",
                "operation 1: is an array, not an object"},
           Case{R"([{"path":"/a"}])", "operation 0: member \"op\" is missing"},
           Case{R"([{"op":null,"path":"/a"}])", "operation 0: member \"op\" is null, not a string"},
           Case{R"([{"op":"ADD","path":"/a","value":1}])",
                "operation 0: op \"ADD\" is not one of add, remove, replace, move, copy, test"},
           Case{R"([{"op":"add","value":1}])", "operation 0 (add): member \"path\" is missing"},
           Case{R"([{"op":"remove","path":["a"]}])",
                "operation 0 (remove): member \"path\" is an array, not a string"},
           Case{R"([{"op":"add","path":"/b"}])", "operation 0 (add): member \"value\" is missing"},
           Case{R"([{"op":"replace","path":"/a"}])",
                "operation 0 (replace): member \"value\" is missing"},
           Case{R"([{"op":"test","path":"/a"}])",
                "operation 0 (test): member \"value\" is missing"},
           Case{R"([{"op":"move","path":"/b"}])", "operation 0 (move): member \"from\" is missing"},
           Case{R"([{"op":"copy","path":"/b","from":1}])",
                "operation 0 (copy): member \"from\" is a number, not a string"},
           Case{R"([{"op":"add","path":"b","value":1}])",
                "operation 0 (add): path b is not a JSON Pointer (it must be empty or start with "
                "\"/\")"},
           Case{R"([{"op":"remove","path":""}])",
                "operation 0 (remove): path \"\" would remove the whole document"},
       }) {
    std::optional<Failed> f = PatchFailure(doc, c.patch);
    ASSERT_TRUE(f.has_value()) << c.patch;
    EXPECT_EQ(f->code, kMalformed) << c.patch;
    EXPECT_EQ(f->detail, c.detail) << c.patch;
  }
}

TEST(JsonPatch, LongPointersAreTruncatedInDetails) {
  const std::string key(500, 'k');
  std::optional<Failed> f = PatchFailure("{}", R"([{"op":"remove","path":"/)" + key + R"("}])");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kCannotApply);
  EXPECT_LT(f->detail.size(), 300u);
  EXPECT_THAT(f->detail, HasSubstr("..."));
}

// ---------------------------------------------------------------------------
// Limits

TEST(JsonPatch, MaxOperations) {
  PatchLimits limits;
  limits.max_operations = 2;
  const std::string_view two = R"([{"op":"add","path":"/a","value":1},
                                   {"op":"add","path":"/b","value":2}])";
  const std::string_view three = R"([{"op":"add","path":"/a","value":1},
                                     {"op":"add","path":"/b","value":2},
                                     {"op":"add","path":"/c","value":3}])";
  EXPECT_EQ(Patched("{}", two, limits), R"({"a":1,"b":2})");
  std::optional<Failed> f = PatchFailure("{}", three, limits);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kLimit);
  EXPECT_EQ(f->detail, "the patch has 3 operations; at most 2 are allowed");
  EXPECT_EQ(PatchLimits().max_operations, 1000u);
}

TEST(JsonPatch, MaxDepth) {
  PatchLimits limits;
  limits.max_depth = 3;  // at most three levels of arrays/objects
  EXPECT_EQ(Patched(R"({"a":{}})", R"([{"op":"add","path":"/a/b","value":[]}])", limits),
            R"({"a":{"b":[]}})");
  EXPECT_EQ(PatchError(R"({"a":{}})", R"([{"op":"add","path":"/a/b","value":[[]]}])", limits),
            kLimit);
  EXPECT_EQ(PatchError(R"({"a":{}})", R"([{"op":"replace","path":"/a","value":[[[]]]}])", limits),
            kLimit);
  EXPECT_EQ(
      PatchError(R"({"a":{"b":{}}})", R"([{"op":"copy","from":"/a","path":"/a/b/c"}])", limits),
      kLimit);
  // A pointer deeper than the limit can never name anything inside it.
  EXPECT_EQ(PatchError("{}", R"([{"op":"test","path":"/a/b/c/d","value":1}])", limits), kLimit);
}

TEST(JsonPatch, MaxResultBytes) {
  // Each copy of the whole document into itself doubles it.
  std::string patch = "[";
  for (int i = 0; i < 40; ++i) {
    if (i > 0) patch += ",";
    patch += R"({"op":"copy","from":"","path":"/c)" + std::to_string(i) + R"("})";
  }
  patch += "]";
  std::optional<Failed> f = PatchFailure(R"({"s":"0123456789"})", patch);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->code, kLimit);
  EXPECT_THAT(f->detail, HasSubstr("the result would exceed 16777216 bytes"));

  PatchLimits small;
  small.max_result_bytes = 64;
  EXPECT_EQ(Patched(R"({"s":"0123456789"})", R"([{"op":"copy","from":"/s","path":"/t"}])", small),
            R"({"s":"0123456789","t":"0123456789"})");
  EXPECT_EQ(PatchError(R"({"s":"0123456789"})", R"([{"op":"copy","from":"","path":"/t"},
                                                   {"op":"copy","from":"","path":"/u"}])",
                       small),
            kLimit);
  // Removing first makes room.
  EXPECT_EQ(Patched(R"({"s":"0123456789012345678901234567890123456789"})",
                    R"([{"op":"remove","path":"/s"},
                        {"op":"add","path":"/t","value":"01234567890123456789012345678901234"}])",
                    small),
            R"({"t":"01234567890123456789012345678901234"})");
}

}  // namespace
}  // namespace fhirward::json
