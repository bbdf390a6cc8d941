#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "net/internal/test_tls.h"
#include "net/server.h"

namespace fhirward::net {
namespace {

using test_util::ClientConfig;
using test_util::MakeCert;
using test_util::ParsedResponse;
using test_util::TempDir;
using test_util::TestCert;
using test_util::TestClient;
using test_util::WriteFileAtomically;

constexpr char kGet[] = "GET /Patient/1?_pretty=true HTTP/1.1\r\nHost: localhost\r\n\r\n";

// Polls `done` every 20 ms for at most `limit`; for waiting on effects that
// have no completion signal (a reload by a timer or a signal, Run() returning).
bool Eventually(const std::function<bool()>& done,
                std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

// A one-shot gate a handler can wait on, with a signal that it got there.
class Gate {
 public:
  void Enter() {
    std::unique_lock lock(mu_);
    entered_ = true;
    cv_.notify_all();
    cv_.wait(lock, [this] { return open_; });
  }
  bool WaitEntered() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(5), [this] { return entered_; });
  }
  void Open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;
  bool open_ = false;
};

// Records every request the handler sees.
class Recorder {
 public:
  void Add(const HttpRequest& req) {
    std::lock_guard lock(mu_);
    requests_.push_back(req);
  }
  std::vector<HttpRequest> All() {
    std::lock_guard lock(mu_);
    return requests_;
  }
  size_t Count() {
    std::lock_guard lock(mu_);
    return requests_.size();
  }

 private:
  std::mutex mu_;
  std::vector<HttpRequest> requests_;
};

class HttpsServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ::signal(SIGPIPE, SIG_IGN); }

  void SetUp() override {
    cert_ = MakeCert("server-one", 1001);
    WriteFileAtomically(dir_.File("cert.pem"), cert_.cert_pem);
    WriteFileAtomically(dir_.File("key.pem"), cert_.key_pem);
  }

  void TearDown() override {
    gate_.Open();  // never leave a handler blocked behind a failed assertion
    StopServer();
  }

  ServerOptions Options() {
    ServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.io_threads = 2;
    o.worker_threads = 4;
    o.tls.cert_file = dir_.File("cert.pem");
    o.tls.key_file = dir_.File("key.pem");
    o.cert_poll_interval = std::chrono::milliseconds(0);
    o.handle_signals = false;
    return o;
  }

  // Echoes method, target and body; records the request.
  Handler EchoHandler() {
    return [this](HttpRequest&& req) {
      recorder_.Add(req);
      HttpResponse res;
      if (req.transport_error == ErrorCode::kBodyTooLarge) {
        res.status = 413;
      } else if (req.transport_error == ErrorCode::kHeadersTooLarge) {
        res.status = 431;
      } else {
        res.SetHeader("Content-Type", "text/plain");
        res.SetHeader("X-Method", req.method);
        res.SetHeader("X-Target", req.target);
        res.body = "echo:" + req.body;
      }
      return res;
    };
  }

  void StartServer(const ServerOptions& options, Handler handler) {
    auto server = HttpsServer::Create(options, std::move(handler));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    thread_ = std::thread([this] {
      server_->Run();
      run_returned_ = true;
    });
  }

  void StopServer() {
    if (thread_.joinable()) {
      server_->Stop();
      thread_.join();
    }
    server_.reset();
  }

  uint16_t port() const { return server_->port(); }

  // Replaces the served certificate files with a fresh certificate.
  TestCert RotateCertFiles(const std::string& cn, long serial) {
    TestCert next = MakeCert(cn, serial);
    WriteFileAtomically(dir_.File("key.pem"), next.key_pem);
    WriteFileAtomically(dir_.File("cert.pem"), next.cert_pem);
    return next;
  }

  long SerialOfNewConnection() {
    TestClient c;
    if (!c.Connect(port())) return -1;
    return c.PeerSerial();
  }

  TempDir dir_;
  TestCert cert_;
  Recorder recorder_;
  Gate gate_;
  std::unique_ptr<HttpsServer> server_;
  std::thread thread_;
  std::atomic<bool> run_returned_{false};
};

TEST_F(HttpsServerTest, GetReturnsHandlerResponse) {
  Handler handler = [this](HttpRequest&& req) {
    recorder_.Add(req);
    HttpResponse res;
    res.status = 201;
    res.SetHeader("X-Test", "yes");
    res.SetHeader("Content-Type", "application/fhir+json");
    res.body = "{\"resourceType\":\"Patient\"}";
    return res;
  };
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), handler));
  auto before = std::chrono::system_clock::now();

  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  EXPECT_EQ(c.Version(), "TLSv1.3");
  auto res = c.RoundTrip(
      "GET /Patient/1?_pretty=true HTTP/1.1\r\nHost: localhost\r\n"
      "Accept: application/fhir+json\r\n\r\n");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 201);
  EXPECT_EQ(res->Header("x-test"), "yes");
  EXPECT_EQ(res->Header("content-type"), "application/fhir+json");
  EXPECT_EQ(res->body, "{\"resourceType\":\"Patient\"}");
  EXPECT_EQ(res->Header("content-length"), std::to_string(res->body.size()));
  EXPECT_TRUE(res->Has("date"));
  EXPECT_FALSE(res->Has("server"));
  EXPECT_NE(res->Header("connection"), "close");

  auto seen = recorder_.All();
  ASSERT_EQ(seen.size(), 1u);
  const HttpRequest& req = seen[0];
  EXPECT_EQ(req.method, "GET");
  EXPECT_EQ(req.target, "/Patient/1?_pretty=true");
  EXPECT_EQ(req.header("accept"), "application/fhir+json");
  EXPECT_EQ(req.header("HOST"), "localhost");
  EXPECT_TRUE(req.body.empty());
  EXPECT_EQ(req.remote_ip, "127.0.0.1");
  EXPECT_NE(req.remote_port, 0);
  EXPECT_EQ(req.tls_version, "TLSv1.3");
  EXPECT_TRUE(req.client_cert_der.empty());
  EXPECT_FALSE(req.transport_error.has_value());
  EXPECT_GE(req.received_at, before);
  EXPECT_LE(req.received_at, std::chrono::system_clock::now());
}

TEST_F(HttpsServerTest, PostBodiesReachHandler) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  auto res = c.RoundTrip(
      "POST /Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
      "Content-Length: 11\r\n\r\n{\"a\":\"b c\"}");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "echo:{\"a\":\"b c\"}");
  EXPECT_EQ(res->Header("x-method"), "POST");

  res = c.RoundTrip(
      "PUT /Patient/2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "echo:abcdefg");
  EXPECT_EQ(res->Header("x-target"), "/Patient/2");
}

TEST_F(HttpsServerTest, KeepAliveCarriesSequentialAndPipelinedRequests) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  for (int i = 0; i < 20; ++i) {
    auto res = c.RoundTrip("GET /Patient/" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_TRUE(res) << i;
    EXPECT_EQ(res->Header("x-target"), "/Patient/" + std::to_string(i));
  }
  // Two requests in one write: both answered, in order.
  ASSERT_TRUE(c.Send("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto a = c.ReadResponse();
  auto b = c.ReadResponse();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->Header("x-target"), "/a");
  EXPECT_EQ(b->Header("x-target"), "/b");
  EXPECT_EQ(recorder_.Count(), 22u);
}

TEST_F(HttpsServerTest, ClientConnectionCloseIsHonoured) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  auto res = c.RoundTrip("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->Header("connection"), "close");
  EXPECT_TRUE(c.WaitClosed());
}

TEST_F(HttpsServerTest, ConcurrentClients) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), EchoHandler()));
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      TestClient c;
      if (!c.Connect(port())) return;
      for (int i = 0; i < 10; ++i) {
        std::string target = "/t" + std::to_string(t) + "/" + std::to_string(i);
        auto res = c.RoundTrip("GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n");
        if (res && res->Header("x-target") == target) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 60);
}

TEST_F(HttpsServerTest, Tls12RefusedByDefault) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), EchoHandler()));
  ClientConfig cfg;
  cfg.max_version = TLS1_2_VERSION;
  TestClient c;
  EXPECT_FALSE(c.Connect(port(), cfg));
  EXPECT_EQ(recorder_.Count(), 0u);
}

TEST_F(HttpsServerTest, Tls11RefusedEvenWithMin12) {
  ServerOptions o = Options();
  o.tls.min_version = "1.2";
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  ClientConfig cfg;
  cfg.min_version = TLS1_1_VERSION;
  cfg.max_version = TLS1_1_VERSION;
  // Security level 0 so that our client really offers TLS 1.1.
  cfg.cipher_list = "DEFAULT:@SECLEVEL=0";
  TestClient c;
  EXPECT_FALSE(c.Connect(port(), cfg));
}

TEST_F(HttpsServerTest, Tls12WithMin12UsesEcdheAead) {
  ServerOptions o = Options();
  o.tls.min_version = "1.2";
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  ClientConfig cfg;
  cfg.max_version = TLS1_2_VERSION;
  TestClient c;
  ASSERT_TRUE(c.Connect(port(), cfg));
  EXPECT_EQ(c.Version(), "TLSv1.2");
  const std::string cipher = c.Cipher();
  EXPECT_TRUE(cipher == "ECDHE-ECDSA-AES128-GCM-SHA256" ||
              cipher == "ECDHE-ECDSA-AES256-GCM-SHA384" ||
              cipher == "ECDHE-ECDSA-CHACHA20-POLY1305")
      << cipher;
  auto res = c.RoundTrip(kGet);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(recorder_.All().at(0).tls_version, "TLSv1.2");

  // CBC suites are not offered even over TLS 1.2.
  cfg.cipher_list = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA";
  TestClient cbc;
  EXPECT_FALSE(cbc.Connect(port(), cfg));
}

TEST_F(HttpsServerTest, AlpnSelectsHttp11Only) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), EchoHandler()));
  ClientConfig cfg;
  cfg.alpn = {"h2", "http/1.1"};
  TestClient c;
  ASSERT_TRUE(c.Connect(port(), cfg));
  EXPECT_EQ(c.Alpn(), "http/1.1");
  ASSERT_TRUE(c.RoundTrip(kGet));

  cfg.alpn = {"h2"};
  TestClient h2;
  EXPECT_FALSE(h2.Connect(port(), cfg));
}

TEST_F(HttpsServerTest, PlaintextHttpToTlsPortGetsNoHttpResponse) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), EchoHandler()));
  ClientConfig cfg;
  cfg.tls = false;
  TestClient c;
  ASSERT_TRUE(c.Connect(port(), cfg));
  ASSERT_TRUE(c.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_FALSE(c.ReadResponse());
  EXPECT_EQ(c.buffered().find("HTTP/"), std::string::npos);
  EXPECT_EQ(recorder_.Count(), 0u);
}

TEST_F(HttpsServerTest, ChunkedBodyOverLimitIsRefusedWith413) {
  ServerOptions o = Options();
  o.max_body_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  std::string req = "POST /Bundle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string chunk(512, 'x');
  for (int i = 0; i < 64; ++i) req += "200\r\n" + chunk + "\r\n";
  req += "0\r\n\r\n";
  auto res = c.RoundTrip(req);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);
  EXPECT_EQ(res->Header("connection"), "close");
  EXPECT_TRUE(c.WaitClosed());

  auto seen = recorder_.All();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].transport_error, ErrorCode::kBodyTooLarge);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, "/Bundle");
  EXPECT_EQ(seen[0].header("transfer-encoding"), "chunked");
  EXPECT_TRUE(seen[0].body.empty());
}

TEST_F(HttpsServerTest, DeclaredContentLengthOverLimitIsRefusedUnread) {
  ServerOptions o = Options();
  o.max_body_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  // The body is never sent: the answer must come from the header alone.
  auto res = c.RoundTrip(
      "POST /Patient HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n"
      "Content-Length: 10485760\r\n\r\n");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);
  EXPECT_EQ(res->Header("connection"), "close");
  EXPECT_TRUE(c.WaitClosed());
  auto seen = recorder_.All();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].transport_error, ErrorCode::kBodyTooLarge);
  EXPECT_EQ(seen[0].target, "/Patient");
  EXPECT_EQ(seen[0].header("authorization"), "Bearer t");
}

TEST_F(HttpsServerTest, OversizedBodyAnswerSurvivesUnreadBytes) {
  ServerOptions o = Options();
  o.max_body_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  // The whole body is on its way before the refusal: the server must neither
  // reset the connection over the unread bytes nor wait for them.
  std::string req = "POST /Bundle HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n";
  req += std::string(65536, 'z');
  auto res = c.RoundTrip(req);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);
  EXPECT_EQ(res->Header("connection"), "close");
  EXPECT_TRUE(c.WaitClosed());
}

TEST_F(HttpsServerTest, BodyExactlyAtLimitIsAccepted) {
  ServerOptions o = Options();
  o.max_body_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  const std::string body(1024, 'y');
  auto res = c.RoundTrip("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n" + body);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "echo:" + body);
}

TEST_F(HttpsServerTest, HeaderOverLimitIsRefusedWith431) {
  ServerOptions o = Options();
  o.max_header_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  auto res = c.RoundTrip("GET /Patient HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4000, 'a') +
                         "\r\n\r\n");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 431);
  EXPECT_EQ(res->Header("connection"), "close");
  EXPECT_TRUE(c.WaitClosed());
  auto seen = recorder_.All();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].transport_error, ErrorCode::kHeadersTooLarge);
  EXPECT_TRUE(seen[0].headers.empty());
}

TEST_F(HttpsServerTest, SilentClientIsClosedAfterHeaderTimeout) {
  ServerOptions o = Options();
  o.header_timeout = std::chrono::milliseconds(300);
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  EXPECT_TRUE(c.WaitClosed());  // the client gives up after 5 s
}

TEST_F(HttpsServerTest, PartialHeaderIsClosedAfterHeaderTimeout) {
  ServerOptions o = Options();
  o.header_timeout = std::chrono::milliseconds(300);
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  ASSERT_TRUE(c.Send("GET /Patient HTTP/1.1\r\nHost: x\r\n"));
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_EQ(recorder_.Count(), 0u);
}

TEST_F(HttpsServerTest, IdleKeepAliveIsClosedAfterIdleTimeout) {
  ServerOptions o = Options();
  o.idle_timeout = std::chrono::milliseconds(200);
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  ASSERT_TRUE(c.RoundTrip(kGet));
  EXPECT_TRUE(c.WaitClosed());
}

TEST_F(HttpsServerTest, MaxRequestsPerConnectionClosesAfterLast) {
  ServerOptions o = Options();
  o.max_requests_per_connection = 2;
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  auto first = c.RoundTrip(kGet);
  ASSERT_TRUE(first);
  EXPECT_NE(first->Header("connection"), "close");
  auto second = c.RoundTrip(kGet);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->Header("connection"), "close");
  EXPECT_TRUE(c.WaitClosed());
}

TEST_F(HttpsServerTest, MalformedRequestGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  auto res = c.RoundTrip("GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_EQ(res->Header("connection"), "close");
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_EQ(recorder_.Count(), 0u);
}

TEST_F(HttpsServerTest, ExpectContinueGets100BeforeBody) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  auto interim = c.RoundTrip(
      "POST /Patient HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
  ASSERT_TRUE(interim);
  EXPECT_EQ(interim->status, 100);
  auto res = c.RoundTrip("hello");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "echo:hello");
}

TEST_F(HttpsServerTest, HeadResponseKeepsDeclaredLengthWithoutBody) {
  Handler handler = [](HttpRequest&& req) {
    HttpResponse res;
    res.SetHeader("Content-Length", "42");
    res.SetHeader("ETag", "W/\"3\"");
    return res;
  };
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), handler));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  auto head = c.RoundTrip("HEAD /Patient/1 HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(head);
  EXPECT_EQ(head->Header("content-length"), "42");
  EXPECT_EQ(head->Header("etag"), "W/\"3\"");
  // No body bytes were sent: the next response parses cleanly.
  auto next = c.RoundTrip(kGet);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->status, 200);
  EXPECT_EQ(next->Header("content-length"), "0");
}

TEST_F(HttpsServerTest, UnsafeHandlerHeadersAndStatusesAreNeutralised) {
  Handler handler = [](HttpRequest&& req) {
    HttpResponse res;
    if (req.target == "/bad-status") {
      res.status = 42;
      return res;
    }
    res.headers.emplace_back("X-Split", "a\r\nSet-Cookie: evil=1");
    res.headers.emplace_back("Bad Name", "v");
    res.headers.emplace_back("X-Fine", "ok");
    res.headers.emplace_back("Content-Length", "999");  // ignored: the body decides
    res.body = "abc";
    return res;
  };
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), handler));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  auto res = c.RoundTrip(kGet);
  ASSERT_TRUE(res);
  EXPECT_FALSE(res->Has("x-split"));
  EXPECT_FALSE(res->Has("set-cookie"));
  EXPECT_FALSE(res->Has("bad name"));
  EXPECT_EQ(res->Header("x-fine"), "ok");
  EXPECT_EQ(res->Header("content-length"), "3");
  EXPECT_EQ(res->body, "abc");
  auto bad = c.RoundTrip("GET /bad-status HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 500);
}

TEST_F(HttpsServerTest, HandlerConnectionCloseIsHonoured) {
  Handler handler = [](HttpRequest&&) {
    HttpResponse res;
    res.SetHeader("Connection", "close");
    return res;
  };
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), handler));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  auto res = c.RoundTrip(kGet);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->Header("connection"), "close");
  EXPECT_TRUE(c.WaitClosed());
}

TEST_F(HttpsServerTest, ReloadServesNewCertificateAndKeepsOpenConnections) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), EchoHandler()));
  TestClient old_conn;
  ASSERT_TRUE(old_conn.Connect(port()));
  EXPECT_EQ(old_conn.PeerSerial(), 1001);
  ASSERT_TRUE(old_conn.RoundTrip(kGet));

  RotateCertFiles("server-two", 2002);
  ASSERT_TRUE(server_->ReloadCertificates().ok());
  EXPECT_EQ(SerialOfNewConnection(), 2002);

  auto res = old_conn.RoundTrip(kGet);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST_F(HttpsServerTest, FailedReloadKeepsOldCertificate) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), EchoHandler()));
  // A valid key that does not belong to the certificate.
  TestCert other = MakeCert("other", 3003);
  WriteFileAtomically(dir_.File("key.pem"), other.key_pem);
  absl::Status status = server_->ReloadCertificates();
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(SerialOfNewConnection(), 1001);

  WriteFileAtomically(dir_.File("key.pem"), "not a key");
  EXPECT_FALSE(server_->ReloadCertificates().ok());
  std::filesystem::remove(dir_.File("cert.pem"));
  EXPECT_FALSE(server_->ReloadCertificates().ok());
  EXPECT_EQ(SerialOfNewConnection(), 1001);
}

TEST_F(HttpsServerTest, ChangedCertificateFilesAreReloadedByPolling) {
  ServerOptions o = Options();
  o.cert_poll_interval = std::chrono::milliseconds(50);
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  EXPECT_EQ(SerialOfNewConnection(), 1001);
  RotateCertFiles("server-two", 2002);
  EXPECT_TRUE(Eventually([&] { return SerialOfNewConnection() == 2002; }));
}

TEST_F(HttpsServerTest, SighupReloadsCertificates) {
  ServerOptions o = Options();
  o.handle_signals = true;
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  RotateCertFiles("server-two", 2002);
  ASSERT_EQ(::kill(::getpid(), SIGHUP), 0);
  EXPECT_TRUE(Eventually([&] { return SerialOfNewConnection() == 2002; }));
}

TEST_F(HttpsServerTest, SigtermDrainsAndRunReturns) {
  ServerOptions o = Options();
  o.handle_signals = true;
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  ASSERT_TRUE(c.RoundTrip(kGet));
  ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_TRUE(Eventually([&] { return run_returned_.load(); }));
}

TEST_F(HttpsServerTest, StopFinishesInFlightRequestAndClosesIdleConnections) {
  Handler handler = [this](HttpRequest&& req) {
    if (req.target == "/slow") gate_.Enter();
    HttpResponse res;
    res.body = "done:" + req.target;
    return res;
  };
  ASSERT_NO_FATAL_FAILURE(StartServer(Options(), handler));
  TestClient idle;
  ASSERT_TRUE(idle.Connect(port()));
  ASSERT_TRUE(idle.RoundTrip(kGet));
  TestClient busy;
  ASSERT_TRUE(busy.Connect(port()));
  ASSERT_TRUE(busy.Send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(gate_.WaitEntered());

  server_->Stop();
  EXPECT_TRUE(idle.WaitClosed());
  TestClient late;
  EXPECT_FALSE(late.Connect(port()));  // no longer accepting
  EXPECT_FALSE(run_returned_.load());  // the slow request is still in flight

  gate_.Open();
  auto res = busy.ReadResponse();
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "done:/slow");
  EXPECT_EQ(res->Header("connection"), "close");
  EXPECT_TRUE(busy.WaitClosed());
  EXPECT_TRUE(Eventually([&] { return run_returned_.load(); }));
}

TEST_F(HttpsServerTest, DrainTimeoutBoundsRun) {
  Handler handler = [this](HttpRequest&&) {
    gate_.Enter();
    return HttpResponse{};
  };
  ServerOptions o = Options();
  o.drain_timeout = std::chrono::milliseconds(200);
  ASSERT_NO_FATAL_FAILURE(StartServer(o, handler));
  TestClient c;
  ASSERT_TRUE(c.Connect(port()));
  ASSERT_TRUE(c.Send(kGet));
  ASSERT_TRUE(gate_.WaitEntered());
  server_->Stop();
  EXPECT_TRUE(Eventually([&] { return run_returned_.load(); }));
  gate_.Open();  // the server's destructor waits for the stuck handler
  StopServer();
}

TEST_F(HttpsServerTest, StopBeforeRunMakesRunReturn) {
  auto server = HttpsServer::Create(Options(), EchoHandler());
  ASSERT_TRUE(server.ok()) << server.status();
  (*server)->Stop();
  (*server)->Run();   // returns at once: nothing to drain
  (*server)->Stop();  // idempotent, also after Run()
}

TEST_F(HttpsServerTest, VerifiedClientCertificateReachesHandler) {
  TestCert ca = MakeCert("test-ca", 1, nullptr, /*is_ca=*/true);
  TestCert client = MakeCert("client-app", 77, &ca);
  WriteFileAtomically(dir_.File("ca.pem"), ca.cert_pem);
  WriteFileAtomically(dir_.File("client.pem"), client.cert_pem);
  WriteFileAtomically(dir_.File("client.key"), client.key_pem);
  TestCert rogue = MakeCert("rogue", 78);
  WriteFileAtomically(dir_.File("rogue.pem"), rogue.cert_pem);
  WriteFileAtomically(dir_.File("rogue.key"), rogue.key_pem);

  ServerOptions o = Options();
  o.tls.client_ca_file = dir_.File("ca.pem");
  o.tls.require_client_cert = true;
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));

  ClientConfig cfg;
  cfg.cert_file = dir_.File("client.pem");
  cfg.key_file = dir_.File("client.key");
  TestClient c;
  ASSERT_TRUE(c.Connect(port(), cfg));
  ASSERT_TRUE(c.RoundTrip(kGet));
  auto seen = recorder_.All();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].client_cert_der, client.Der());

  // No certificate, or one from another issuer: no request gets through. With
  // TLS 1.3 the refusal may only show after the client's handshake finished.
  TestClient anonymous;
  if (anonymous.Connect(port())) {
    EXPECT_FALSE(anonymous.RoundTrip(kGet));
  }
  ClientConfig rogue_cfg;
  rogue_cfg.cert_file = dir_.File("rogue.pem");
  rogue_cfg.key_file = dir_.File("rogue.key");
  TestClient impostor;
  if (impostor.Connect(port(), rogue_cfg)) {
    EXPECT_FALSE(impostor.RoundTrip(kGet));
  }
  EXPECT_EQ(recorder_.Count(), 1u);
}

TEST_F(HttpsServerTest, ResumedSessionKeepsVerifiedClientCertificate) {
  TestCert ca = MakeCert("test-ca", 1, nullptr, /*is_ca=*/true);
  TestCert client = MakeCert("client-app", 77, &ca);
  WriteFileAtomically(dir_.File("ca.pem"), ca.cert_pem);
  WriteFileAtomically(dir_.File("client.pem"), client.cert_pem);
  WriteFileAtomically(dir_.File("client.key"), client.key_pem);
  ServerOptions o = Options();
  o.tls.client_ca_file = dir_.File("ca.pem");
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));

  ClientConfig cfg;
  cfg.cert_file = dir_.File("client.pem");
  cfg.key_file = dir_.File("client.key");
  TestClient first;
  ASSERT_TRUE(first.Connect(port(), cfg));
  ASSERT_TRUE(first.RoundTrip(kGet));
  SSL_SESSION* session = first.Session();
  ASSERT_NE(session, nullptr);

  cfg.resume = session;
  TestClient second;
  ASSERT_TRUE(second.Connect(port(), cfg));
  EXPECT_TRUE(second.Resumed());
  EXPECT_TRUE(second.RoundTrip(kGet));
  SSL_SESSION_free(session);
  auto seen = recorder_.All();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].client_cert_der, client.Der());
}

TEST_F(HttpsServerTest, PlainHttpOnLoopbackServes) {
  ServerOptions o = Options();
  o.plain_http = true;
  o.tls = {};
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  ClientConfig cfg;
  cfg.tls = false;
  TestClient c;
  ASSERT_TRUE(c.Connect(port(), cfg));
  auto res = c.RoundTrip(kGet);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  ASSERT_TRUE(c.RoundTrip(kGet));
  EXPECT_EQ(recorder_.All().at(0).tls_version, "");
  EXPECT_FALSE(server_->ReloadCertificates().ok());
}

TEST_F(HttpsServerTest, PlainHttpOversizedBodyAnswerSurvivesUnreadBytes) {
  ServerOptions o = Options();
  o.plain_http = true;
  o.max_body_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(StartServer(o, EchoHandler()));
  ClientConfig cfg;
  cfg.tls = false;
  TestClient c;
  ASSERT_TRUE(c.Connect(port(), cfg));
  std::string req = "POST /Bundle HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n";
  req += std::string(65536, 'z');
  auto res = c.RoundTrip(req);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);
  EXPECT_TRUE(c.WaitClosed());
}

TEST(HttpsServerCreateTest, PlainHttpRefusedOffLoopback) {
  ServerOptions o;
  o.port = 0;
  o.plain_http = true;
  o.handle_signals = false;
  for (const char* host : {"0.0.0.0", "::", "192.0.2.1"}) {
    o.host = host;
    auto server = HttpsServer::Create(o, [](HttpRequest&&) { return HttpResponse{}; });
    ASSERT_FALSE(server.ok()) << host;
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << host;
  }
}

TEST(HttpsServerCreateTest, BadCertificatesAndBusyPortAreErrors) {
  TempDir dir;
  TestCert cert = MakeCert("server", 5);
  TestCert other = MakeCert("other", 6);
  WriteFileAtomically(dir.File("cert.pem"), cert.cert_pem);
  WriteFileAtomically(dir.File("key.pem"), cert.key_pem);
  WriteFileAtomically(dir.File("other.key"), other.key_pem);
  Handler handler = [](HttpRequest&&) { return HttpResponse{}; };

  ServerOptions o;
  o.port = 0;
  o.handle_signals = false;
  o.tls.cert_file = dir.File("missing.pem");
  o.tls.key_file = dir.File("key.pem");
  EXPECT_FALSE(HttpsServer::Create(o, handler).ok());

  o.tls.cert_file = dir.File("cert.pem");
  o.tls.key_file = dir.File("other.key");
  EXPECT_FALSE(HttpsServer::Create(o, handler).ok());

  o.tls.key_file = dir.File("key.pem");
  o.tls.min_version = "1.1";
  EXPECT_FALSE(HttpsServer::Create(o, handler).ok());

  o.tls.min_version = "1.3";
  auto first = HttpsServer::Create(o, handler);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_NE((*first)->port(), 0);
  o.port = (*first)->port();
  auto second = HttpsServer::Create(o, handler);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace fhirward::net
