#include "audit/sink.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "audit/audit_log.h"
#include "audit/merkle.h"
#include "common/encoding.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "json/value.h"

namespace fhirward::audit {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

AuditRecord Rec(int i) {
  AuditRecord r;
  r.time = "2026-12-05T12:00:00." + std::to_string(100 + i % 800) + "Z";
  r.request_id = "req-" + std::to_string(i);
  r.action = i % 7 == 0 ? "alert.mass-access" : "read";
  r.outcome = i % 5 == 0 ? "denied" : "success";
  r.subject = "user \"q\" ]x";
  return r;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A TCP receiver on 127.0.0.1 that parses RFC 6587 octet-counted frames.
class Receiver {
 public:
  explicit Receiver(int port = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ::listen(fd_, 4);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { Loop(); });
  }
  ~Receiver() { Stop(); }
  void Stop() {
    if (fd_ < 0) return;
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    fd_ = -1;
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }
  std::vector<std::string> Messages() {
    std::lock_guard<std::mutex> lock(mu_);
    return messages_;
  }

 private:
  void Loop() {
    while (!stop_) {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string buf;
      char tmp[4096];
      ssize_t n;
      while ((n = ::recv(c, tmp, sizeof tmp, 0)) > 0) {
        buf.append(tmp, static_cast<size_t>(n));
        for (;;) {
          size_t sp = buf.find(' ');
          if (sp == std::string::npos) break;
          size_t len = std::stoul(buf.substr(0, sp));
          if (buf.size() < sp + 1 + len) break;
          std::lock_guard<std::mutex> lock(mu_);
          messages_.push_back(buf.substr(sp + 1, len));
          buf.erase(0, sp + 1 + len);
        }
      }
      ::close(c);
    }
  }
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> messages_;
};

class SinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "sink_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    db_ = dir_ + "/audit.db";
    auto log = AuditLog::Open(db_, SecretBytes(std::string(32, 'k')));
    ASSERT_TRUE(log.ok());
    log_ = std::move(*log);
  }
  void TearDown() override {
    if (log_) log_->Close();
    std::filesystem::remove_all(dir_);
  }
  void Append(int from, int to) {
    for (int i = from; i <= to; ++i) ASSERT_TRUE(log_->Append(Rec(i)).ok());
  }
  ExporterOptions Options() {
    ExporterOptions o;
    o.state_dir = dir_ + "/sinks";
    o.hostname = "node-1";
    o.poll = std::chrono::milliseconds(20);
    o.max_backoff = std::chrono::milliseconds(100);
    o.io_timeout = std::chrono::milliseconds(500);
    o.batch = 7;
    return o;
  }
  std::string dir_, db_;
  std::unique_ptr<AuditLog> log_;
};

TEST(SinkFormat, JsonLineCarriesSeqLeafHashAndTheExactRecordBytes) {
  StoredRecord r{12, Rec(12).ToJson()};
  std::string line = FormatJsonLine(r);
  ASSERT_EQ(line.back(), '\n');
  auto v = json::Parse(line);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->Find("seq")->as_int64(), 12);
  EXPECT_EQ(v->GetString("leaf_hash"), Base64Encode(merkle::LeafHash(r.json)));
  EXPECT_THAT(line, HasSubstr("\"record\":" + r.json + "}"));
}

TEST(SinkFormat, SyslogIsRfc5424WithPositionAndSeverity) {
  std::string m = FormatSyslog({3, Rec(3).ToJson()}, "node-1");
  EXPECT_THAT(m, StartsWith("<110>1 2026-12-05T12:00:00.103Z node-1 fhirward - audit "
                            "[fhirward@32473 seq=\"3\" leaf_hash=\""));
  EXPECT_THAT(FormatSyslog({5, Rec(5).ToJson()}, "h"), StartsWith("<108>1 "));  // refused: warning
  EXPECT_THAT(FormatSyslog({7, Rec(7).ToJson()}, "h"), HasSubstr("<105>1 "));   // alert
  EXPECT_THAT(FormatSyslog({7, Rec(7).ToJson()}, "h"), HasSubstr(" fhirward - alert "));
  EXPECT_THAT(m, HasSubstr("\"] {\"time\""));
}

TEST(SinkFormat, ConfigIsChecked) {
  SinkConfig c{.name = "siem", .type = "syslog", .host = "h", .port = 6514, .transport = "tls"};
  EXPECT_FALSE(CheckSinkConfig(c).ok());  // tls without ca_file
  c.ca_file = "/ca.pem";
  EXPECT_TRUE(CheckSinkConfig(c).ok());
  c.name = "Bad Name";
  EXPECT_FALSE(CheckSinkConfig(c).ok());
  SinkConfig f{.name = "f", .type = "file", .path = "relative.log"};
  EXPECT_FALSE(CheckSinkConfig(f).ok());
  SinkConfig t{.name = "t", .type = "kafka"};
  EXPECT_FALSE(CheckSinkConfig(t).ok());
}

TEST_F(SinkTest, FileSinkWritesEveryRecordInOrderRotatesAndResumesFromItsCursor) {
  Append(1, 30);
  SinkConfig c{.name = "file",
               .type = "file",
               .path = dir_ + "/audit.jsonl",
               .max_bytes = 4096,
               .keep = 100};
  {
    auto ex = AuditExporter::Start(db_, {c}, Options());
    ASSERT_TRUE(ex.ok()) << ex.status();
    ASSERT_TRUE((*ex)->WaitDelivered(30, std::chrono::seconds(10)));
    (*ex)->Stop();
  }
  EXPECT_EQ(ReadAll(dir_ + "/sinks/file.cursor"), "30\n");
  Append(31, 40);
  {
    auto ex = AuditExporter::Start(db_, {c}, Options());
    ASSERT_TRUE(ex.ok());
    (*ex)->Notify();
    ASSERT_TRUE((*ex)->WaitDelivered(40, std::chrono::seconds(10)));
    (*ex)->Stop();
  }
  // Every record once, in order, across the rotated files (oldest = highest suffix).
  std::vector<int64_t> seqs;
  std::vector<std::string> files;
  for (int i = 100; i >= 1; --i) {
    std::string p = dir_ + "/audit.jsonl." + std::to_string(i);
    if (std::filesystem::exists(p)) files.push_back(p);
  }
  ASSERT_GE(files.size(), 2u) << "rotation at 4096 bytes";
  files.push_back(dir_ + "/audit.jsonl");
  for (const auto& f : files) {
    if (!std::filesystem::exists(f)) continue;
    EXPECT_EQ(std::filesystem::status(f).permissions() & std::filesystem::perms::all,
              std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    std::istringstream in(ReadAll(f));
    std::string line;
    while (std::getline(in, line)) seqs.push_back(*json::Parse(line)->Find("seq")->as_int64());
  }
  ASSERT_EQ(seqs.size(), 40u);
  for (int i = 0; i < 40; ++i) EXPECT_EQ(seqs[i], i + 1);
}

TEST_F(SinkTest, SyslogSinkThatIsDownQueuesAndResendsInOrderWhenBack) {
  Receiver probe;  // find a free port, then free it: nothing listens there
  const int port = probe.port();
  probe.Stop();
  Append(1, 12);
  std::vector<SinkEvent> events;
  std::mutex mu;
  ExporterOptions o = Options();
  o.on_event = [&](const SinkEvent& e) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(e);
  };
  SinkConfig c{.name = "siem", .type = "syslog", .host = "127.0.0.1", .port = port};
  auto ex = AuditExporter::Start(db_, {c}, o);
  ASSERT_TRUE(ex.ok()) << ex.status();
  EXPECT_FALSE((*ex)->WaitDelivered(1, std::chrono::milliseconds(300)));
  EXPECT_GE((*ex)->Status()[0].failures, 1);
  EXPECT_THAT((*ex)->Status()[0].last_error, HasSubstr("cannot connect"));
  Append(13, 20);  // more while down
  Receiver rx(port);
  ASSERT_TRUE((*ex)->WaitDelivered(20, std::chrono::seconds(10)));
  Append(21, 25);
  (*ex)->Notify();
  ASSERT_TRUE((*ex)->WaitDelivered(25, std::chrono::seconds(10)));
  (*ex)->Stop();
  rx.Stop();
  std::vector<std::string> got = rx.Messages();
  ASSERT_EQ(got.size(), 25u);
  for (int i = 0; i < 25; ++i) {
    EXPECT_THAT(got[i], HasSubstr("seq=\"" + std::to_string(i + 1) + "\"")) << got[i];
  }
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_GE(events.size(), 2u);
  EXPECT_FALSE(events[0].up);
  EXPECT_EQ(events[0].pending, 12);
  EXPECT_TRUE(events[1].up);
}

TEST_F(SinkTest, OneDeadSinkDoesNotHoldUpAnother) {
  Append(1, 10);
  SinkConfig dead{.name = "dead", .type = "syslog", .host = "127.0.0.1", .port = 1};
  SinkConfig file{.name = "file", .type = "file", .path = dir_ + "/a.jsonl"};
  auto ex = AuditExporter::Start(db_, {dead, file}, Options());
  ASSERT_TRUE(ex.ok());
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while ((*ex)->Status()[1].delivered < 10 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ((*ex)->Status()[1].delivered, 10);
  EXPECT_EQ((*ex)->Status()[0].delivered, 0);
  (*ex)->Stop(std::chrono::milliseconds(50));
  EXPECT_FALSE(AuditExporter::Start(db_, {file, file}, Options()).ok());  // duplicate names
}

}  // namespace
}  // namespace fhirward::audit
