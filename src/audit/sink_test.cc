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
#include "crypto/aead.h"
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

// An HTTP/1.1 endpoint on 127.0.0.1: answers `fail_first` requests with 500,
// then 200; keeps every request (head and body).
class WebhookReceiver {
 public:
  explicit WebhookReceiver(int fail_first) : fail_first_(fail_first) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ::listen(fd_, 8);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { Loop(); });
  }
  ~WebhookReceiver() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }
  struct Request {
    std::string head, body;
    int answered = 0;
  };
  std::vector<Request> Requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  void Loop() {
    for (;;) {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string buf;
      char tmp[4096];
      ssize_t n;
      size_t need = std::string::npos;
      while ((n = ::recv(c, tmp, sizeof tmp, 0)) > 0) {
        buf.append(tmp, static_cast<size_t>(n));
        size_t end = buf.find("\r\n\r\n");
        if (end == std::string::npos) continue;
        size_t cl = buf.find("Content-Length: ");
        need = end + 4 + std::stoul(buf.substr(cl + 16));
        if (buf.size() >= need) break;
      }
      Request r;
      const size_t end = buf.find("\r\n\r\n");
      r.head = buf.substr(0, end);
      r.body = buf.substr(end + 4);
      {
        std::lock_guard<std::mutex> lock(mu_);
        r.answered = static_cast<int>(requests_.size()) < fail_first_ ? 500 : 200;
        requests_.push_back(r);
      }
      std::string resp = "HTTP/1.1 " + std::to_string(r.answered) +
                         (r.answered == 200 ? " OK" : " Internal Server Error") +
                         "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
      (void)::send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
      ::close(c);
    }
  }
  int fail_first_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<Request> requests_;
};

TEST(SinkFormat, WebhookConfigIsChecked) {
  SinkConfig w{.name = "pager", .type = "webhook", .url = "https://pager.example/hook"};
  EXPECT_TRUE(CheckSinkConfig(w).ok());
  w.url = "http://pager.example/hook";  // plain HTTP off the machine
  EXPECT_FALSE(CheckSinkConfig(w).ok());
  w.url = "http://127.0.0.1:9/hook";
  EXPECT_TRUE(CheckSinkConfig(w).ok());
  w.records = "all";  // a webhook is for alerts
  EXPECT_FALSE(CheckSinkConfig(w).ok());
  w.records = "";
  for (const char* bad : {"ftp://x/", "https://", "https://user@h/", "https://h:99999/",
                          "https://h/a b", "https://[::1/"}) {
    w.url = bad;
    EXPECT_FALSE(CheckSinkConfig(w).ok()) << bad;
  }
  w.url = "https://[::1]:8443/x";
  EXPECT_TRUE(CheckSinkConfig(w).ok());
  w.secret_file = "relative";
  EXPECT_FALSE(CheckSinkConfig(w).ok());
  SinkConfig f{.name = "f", .type = "file", .records = "some", .path = "/x.log"};
  EXPECT_FALSE(CheckSinkConfig(f).ok());
}

TEST_F(SinkTest, WebhookGetsOnlyAlertsSignedWithoutPatientIdsAndRetriesUntil2xx) {
  const std::string secret_path = dir_ + "/hook.secret";
  std::ofstream(secret_path) << "s3cret-key\n";
  Append(1, 6);
  AuditRecord alert;
  alert.time = "2026-12-05T12:00:01.000Z";
  alert.action = "alert.bg";
  alert.outcome = "success";
  alert.subject = "dr-who";
  alert.patient_id = "patient-secret-id";
  alert.resource_type = "AuditEvent";
  alert.resource_id = "3";
  alert.decision = "rule=bg kind=break_glass by=episode key=ep1 value=1";
  auto seq = log_->Append(alert);
  ASSERT_TRUE(seq.ok());
  Append(8, 12);
  WebhookReceiver hook(/*fail_first=*/2);
  SinkConfig c{.name = "pager",
               .type = "webhook",
               .url = "http://127.0.0.1:" + std::to_string(hook.port()) + "/alerts",
               .secret_file = secret_path};
  auto ex = AuditExporter::Start(db_, {c}, Options());
  ASSERT_TRUE(ex.ok());
  const int64_t last = *seq + 5;
  EXPECT_TRUE((*ex)->WaitDelivered(last, std::chrono::seconds(10)));
  (*ex)->Stop(std::chrono::milliseconds(50));
  auto reqs = hook.Requests();
  // One alert among 12 records; answered 500 twice before it was taken.
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[0].answered, 500);
  EXPECT_EQ(reqs[1].answered, 500);
  EXPECT_EQ(reqs[2].answered, 200);
  EXPECT_EQ(reqs[0].body, reqs[2].body);
  std::vector<int64_t> seqs;
  for (size_t i = 2; i < reqs.size(); ++i) {
    const auto& r = reqs[i];
    EXPECT_THAT(r.head, StartsWith("POST /alerts HTTP/1.1\r\n"));
    EXPECT_THAT(r.head, HasSubstr("Content-Type: application/json"));
    auto v = json::Parse(r.body);
    ASSERT_TRUE(v.ok()) << r.body;
    seqs.push_back(*v->Find("seq")->as_int64());
    // The signature covers the timestamp and the body.
    size_t at = r.head.find("X-Fhirward-Signature: t=");
    ASSERT_NE(at, std::string::npos);
    std::string sig = r.head.substr(at + 24, r.head.find("\r\n", at) - at - 24);
    std::string t = sig.substr(0, sig.find(','));
    EXPECT_EQ(sig.substr(sig.find(",v1=") + 4),
              HexEncode(crypto::HmacSha256("s3cret-key", t + "." + r.body)));
    EXPECT_THAT(r.body, ::testing::Not(HasSubstr("patient-secret-id")));
  }
  EXPECT_EQ(seqs, std::vector<int64_t>{*seq});
  auto bg = json::Parse(reqs[2].body);
  ASSERT_TRUE(bg.ok());
  EXPECT_EQ(bg->GetString("alert"), "bg");
  EXPECT_EQ(bg->GetString("kind"), "break_glass");
  EXPECT_EQ(bg->GetString("subject"), "dr-who");
  EXPECT_EQ(bg->GetString("trigger"), "AuditEvent/3");
  EXPECT_EQ(bg->GetString("audit_event"), "AuditEvent/" + std::to_string(*seq));
  // The cursor passed every record, alerts or not.
  EXPECT_EQ(LoadCursorFile(dir_ + "/sinks/pager.cursor"), last);
}

}  // namespace
}  // namespace fhirward::audit
