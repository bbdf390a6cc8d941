#include "crypto/secure_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include "crypto/test_util.h"
#include "gtest/gtest.h"

namespace fhirward::crypto {
namespace {

using testing_util::ModeOf;
using testing_util::TempDir;

TEST(SecureFile, WriteNewFileIsExclusiveAndPrivate) {
  TempDir dir;
  std::string path = dir.File("f");
  ASSERT_TRUE(WriteNewFile(path, "abc").ok());
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_FALSE(WriteNewFile(path, "def").ok());
  auto read = ReadPrivateFile(path, 16);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->UnsafeView(), "abc");
  EXPECT_FALSE(ReadPrivateFile(path, 2).ok());  // over the size limit
}

TEST(SecureFile, WriteNewFileDoesNotFollowSymlinks) {
  TempDir dir;
  ASSERT_EQ(::symlink(dir.File("target").c_str(), dir.File("link").c_str()), 0);
  EXPECT_FALSE(WriteNewFile(dir.File("link"), "x").ok());
  EXPECT_EQ(ModeOf(dir.File("target")), 0xffffffffu);
}

TEST(SecureFile, ReplaceFileSetsMode) {
  TempDir dir;
  std::string path = dir.File("f");
  ASSERT_TRUE(ReplaceFile(path, "one", 0644).ok());
  EXPECT_EQ(ModeOf(path), 0644u);
  ASSERT_TRUE(ReplaceFile(path, "two", 0600).ok());
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_EQ(ReadPrivateFile(path, 16)->UnsafeView(), "two");
}

TEST(SecureFile, ReadRefusesSharedFilesFifosAndDirectories) {
  TempDir dir;
  std::string path = dir.File("f");
  ASSERT_TRUE(ReplaceFile(path, "x", 0604).ok());
  auto read = ReadPrivateFile(path, 16);
  ASSERT_FALSE(read.ok());
  EXPECT_NE(read.status().message().find("chmod 600"), absl::string_view::npos);
  EXPECT_NE(read.status().message().find(path), absl::string_view::npos);
  std::string fifo = dir.File("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_FALSE(ReadPrivateFile(fifo, 16).ok());  // and does not block
  EXPECT_FALSE(ReadPrivateFile(dir.path(), 16).ok());
}

TEST(SecureFile, MakePrivateDirs) {
  TempDir dir;
  std::string nested = dir.File("a/b/c");
  ASSERT_TRUE(MakePrivateDirs(nested).ok());
  EXPECT_EQ(ModeOf(dir.File("a")), 0700u);
  EXPECT_EQ(ModeOf(nested), 0700u);
  EXPECT_TRUE(MakePrivateDirs(nested + "/").ok());
  ASSERT_TRUE(WriteNewFile(dir.File("file"), "x").ok());
  EXPECT_FALSE(MakePrivateDirs(dir.File("file")).ok());
}

}  // namespace
}  // namespace fhirward::crypto
