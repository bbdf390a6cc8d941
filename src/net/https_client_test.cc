#include <thread>

#include "common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "net/client.h"
#include "net/internal/test_tls.h"
#include "net/server.h"

namespace fhirward::net {
namespace {

using test_util::MakeCert;
using test_util::TempDir;
using test_util::TestCert;
using test_util::WriteFileAtomically;

class HttpsClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = MakeCert("test-ca", 1, nullptr, true);
    leaf_ = MakeCert("localhost", 2, &ca_);
    WriteFileAtomically(dir_.File("cert.pem"), leaf_.cert_pem);
    WriteFileAtomically(dir_.File("key.pem"), leaf_.key_pem);
    WriteFileAtomically(dir_.File("ca.pem"), ca_.cert_pem);
    ServerOptions o;
    o.port = 0;
    o.handle_signals = false;
    o.tls.cert_file = dir_.File("cert.pem");
    o.tls.key_file = dir_.File("key.pem");
    auto server = HttpsServer::Create(o, [](HttpRequest&& req) {
      HttpResponse r;
      if (req.target == "/jwks") {
        r.body = R"({"keys":[]})";
      } else if (req.target == "/big") {
        r.body = std::string(4096, 'x');
      } else {
        r.status = 404;
      }
      return r;
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    thread_ = std::thread([this] { server_->Run(); });
  }
  void TearDown() override {
    server_->Stop();
    thread_.join();
  }
  std::string Url(const std::string& host, const std::string& path) {
    return "https://" + host + ":" + std::to_string(server_->port()) + path;
  }

  TempDir dir_;
  TestCert ca_, leaf_;
  std::unique_ptr<HttpsServer> server_;
  std::thread thread_;
};

TEST_F(HttpsClientTest, FetchesWithConfiguredTrustAnchor) {
  FetchOptions fo;
  fo.ca_file = dir_.File("ca.pem");
  auto body = HttpsGet(Url("127.0.0.1", "/jwks"), fo);
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, R"({"keys":[]})");
  auto by_name = HttpsGet(Url("localhost", "/jwks"), fo);
  EXPECT_TRUE(by_name.ok()) << by_name.status();
}

TEST_F(HttpsClientTest, RefusesUntrustedCertificate) {
  FetchOptions fo;  // system store: the test CA is not in it
  auto body = HttpsGet(Url("127.0.0.1", "/jwks"), fo);
  EXPECT_FALSE(body.ok());
  TestCert other = MakeCert("other-ca", 9, nullptr, true);
  WriteFileAtomically(dir_.File("other.pem"), other.cert_pem);
  fo.ca_file = dir_.File("other.pem");
  EXPECT_FALSE(HttpsGet(Url("127.0.0.1", "/jwks"), fo).ok());
}

TEST_F(HttpsClientTest, NonOkStatusBodyLimitAndSchemeAreErrors) {
  FetchOptions fo;
  fo.ca_file = dir_.File("ca.pem");
  EXPECT_FALSE(HttpsGet(Url("127.0.0.1", "/missing"), fo).ok());
  fo.max_body_bytes = 100;
  EXPECT_FALSE(HttpsGet(Url("127.0.0.1", "/big"), fo).ok());
  EXPECT_FALSE(HttpsGet("http://127.0.0.1/jwks", fo).ok());
  EXPECT_FALSE(HttpsGet("https://user@127.0.0.1/jwks", fo).ok());
}

TEST_F(HttpsClientTest, TimesOutOnSilentPeer) {
  // A listening socket that never answers the handshake.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  FetchOptions fo;
  fo.ca_file = dir_.File("ca.pem");
  fo.timeout = std::chrono::milliseconds(300);
  auto start = std::chrono::steady_clock::now();
  auto body = HttpsGet("https://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/", fo);
  EXPECT_FALSE(body.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  ::close(fd);
}

}  // namespace
}  // namespace fhirward::net
