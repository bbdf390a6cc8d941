#include "server/log.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "json/value.h"
#include "spdlog/spdlog.h"

namespace fhirward::server {
namespace {

TEST(LogTest, EveryLineIsJsonWithEscapedFields) {
  ASSERT_TRUE(InitLogging("info"));
  ::testing::internal::CaptureStderr();
  LogEvent(LogLevel::kInfo, "request",
           {{"method", "GET\"\n\x01"}, {"status", 200}, {"path", std::string("a\\b")}});
  spdlog::info("net: plain text from another module");
  LogEvent(LogLevel::kDebug, "hidden", {});  // below the level
  FlushLogs();
  std::string out = ::testing::internal::GetCapturedStderr();
  std::vector<json::Value> lines;
  size_t start = 0;
  while (start < out.size()) {
    size_t nl = out.find('\n', start);
    auto v = json::Parse(out.substr(start, nl - start));
    ASSERT_TRUE(v.ok()) << out.substr(start, nl - start);
    lines.push_back(*v);
    start = nl + 1;
  }
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].GetString("event"), "request");
  EXPECT_EQ(lines[0].GetString("method"), "GET\"\n\x01");
  EXPECT_EQ(lines[0].Find("status")->as_int64(), 200);
  EXPECT_EQ(lines[0].GetString("path"), "a\\b");
  EXPECT_EQ(lines[1].GetString("msg"), "net: plain text from another module");
  EXPECT_FALSE(InitLogging("verbose"));
}

}  // namespace
}  // namespace fhirward::server
