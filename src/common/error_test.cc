#include "common/error.h"

#include <set>

#include "gtest/gtest.h"

namespace fhirward {
namespace {

TEST(ErrorTable, EveryCodeMappedOnceInOrder) {
  std::set<std::string_view> names;
  for (int i = 0; i < static_cast<int>(ErrorCode::kCount_); ++i) {
    const ErrorInfo& info = Describe(static_cast<ErrorCode>(i));
    EXPECT_EQ(static_cast<int>(info.code), i) << "table out of order at " << i;
    EXPECT_GE(info.http_status, 400);
    EXPECT_FALSE(info.issue_code.empty());
    EXPECT_FALSE(info.message.empty());
    EXPECT_TRUE(names.insert(info.name).second) << "duplicate name " << info.name;
  }
}

TEST(ErrorTable, RoundTripsThroughStatus) {
  absl::Status s = Error(ErrorCode::kPreconditionFailed, "expected W/\"2\"");
  EXPECT_EQ(CodeOf(s), ErrorCode::kPreconditionFailed);
  EXPECT_EQ(DetailOf(s), "expected W/\"2\"");
  EXPECT_EQ(Describe(CodeOf(s)).http_status, 412);
  EXPECT_EQ(CodeOf(absl::InternalError("x")), ErrorCode::kInternal);
}

}  // namespace
}  // namespace fhirward
