// Test-only helpers for src/net tests: certificates made with OpenSSL, a
// temporary directory, and a small blocking HTTP/1.1 client over TLS or TCP.
// Header-only so that it never becomes part of fhirward_net.
#ifndef FHIRWARD_NET_INTERNAL_TEST_TLS_H_
#define FHIRWARD_NET_INTERNAL_TEST_TLS_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace fhirward::net::test_util {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "fhirward-net-XXXXXX").string();
    char* made = ::mkdtemp(tmpl.data());
    path_ = made ? made : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Replaces `path` atomically (write + rename), as deployment tools do.
inline void WriteFileAtomically(const std::string& path, const std::string& content) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content;
  }
  std::filesystem::rename(tmp, path);
}

// A P-256 key and an X.509 certificate, both as PEM.
struct TestCert {
  std::string cert_pem;
  std::string key_pem;
  EVP_PKEY* key = nullptr;  // owned
  X509* cert = nullptr;     // owned

  TestCert() = default;
  TestCert(const TestCert&) = delete;
  TestCert& operator=(const TestCert&) = delete;
  TestCert(TestCert&& o) noexcept { *this = std::move(o); }
  TestCert& operator=(TestCert&& o) noexcept {
    std::swap(cert_pem, o.cert_pem);
    std::swap(key_pem, o.key_pem);
    std::swap(key, o.key);
    std::swap(cert, o.cert);
    return *this;
  }
  ~TestCert() {
    EVP_PKEY_free(key);
    X509_free(cert);
  }

  std::string Der() const {
    int len = i2d_X509(cert, nullptr);
    std::string der(static_cast<size_t>(len), '\0');
    auto* p = reinterpret_cast<unsigned char*>(der.data());
    i2d_X509(cert, &p);
    return der;
  }
};

inline void AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A certificate for `cn` with `serial`, signed by `issuer` (self-signed when
// null). Server certificates carry subjectAltName IP:127.0.0.1.
inline TestCert MakeCert(const std::string& cn, long serial, const TestCert* issuer = nullptr,
                         bool is_ca = false) {
  TestCert out;
  out.key = EVP_EC_gen("P-256");
  out.cert = X509_new();
  X509_set_version(out.cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(out.cert), serial);
  X509_gmtime_adj(X509_getm_notBefore(out.cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(out.cert), 24 * 3600);
  X509_set_pubkey(out.cert, out.key);
  X509_NAME* name = X509_get_subject_name(out.cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509* issuer_cert = issuer ? issuer->cert : out.cert;
  X509_set_issuer_name(out.cert, X509_get_subject_name(issuer_cert));
  if (is_ca) {
    AddExtension(out.cert, issuer_cert, NID_basic_constraints, "critical,CA:TRUE");
    AddExtension(out.cert, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    AddExtension(out.cert, issuer_cert, NID_basic_constraints, "CA:FALSE");
    AddExtension(out.cert, issuer_cert, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost");
  }
  X509_sign(out.cert, issuer ? issuer->key : out.key, EVP_sha256());

  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, out.cert);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  out.cert_pem.assign(data, static_cast<size_t>(len));
  BIO_free(bio);
  bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, out.key, nullptr, nullptr, 0, nullptr, nullptr);
  len = BIO_get_mem_data(bio, &data);
  out.key_pem.assign(data, static_cast<size_t>(len));
  BIO_free(bio);
  return out;
}

struct ClientConfig {
  bool tls = true;
  int min_version = 0;  // 0: library default
  int max_version = 0;
  std::string cipher_list;  // TLS <= 1.2
  std::vector<std::string> alpn;
  std::string cert_file;  // client certificate
  std::string key_file;
  SSL_SESSION* resume = nullptr;  // a session to resume (not owned)
};

struct ParsedResponse {
  int status = 0;
  std::multimap<std::string, std::string> headers;  // names lower-cased
  std::string body;

  std::string Header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
  bool Has(const std::string& lower_name) const { return headers.count(lower_name) > 0; }
};

// A blocking client. Reads time out after 5 s so that a broken server fails a
// test instead of hanging it.
class TestClient {
 public:
  enum class ReadState { kData, kClosed, kTimeout };

  ~TestClient() { Reset(); }

  bool Connect(uint16_t port, const ClientConfig& config = {}) {
    Reset();
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) return false;
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return false;
    if (!config.tls) return true;

    ctx_ = SSL_CTX_new(TLS_client_method());
    if (config.min_version) SSL_CTX_set_min_proto_version(ctx_, config.min_version);
    if (config.max_version) SSL_CTX_set_max_proto_version(ctx_, config.max_version);
    if (!config.cipher_list.empty() &&
        SSL_CTX_set_cipher_list(ctx_, config.cipher_list.c_str()) != 1) {
      return false;
    }
    if (!config.alpn.empty()) {
      std::string wire;
      for (const auto& p : config.alpn) {
        wire.push_back(static_cast<char>(p.size()));
        wire += p;
      }
      SSL_CTX_set_alpn_protos(ctx_, reinterpret_cast<const unsigned char*>(wire.data()),
                              static_cast<unsigned>(wire.size()));
    }
    if (!config.cert_file.empty()) {
      if (SSL_CTX_use_certificate_chain_file(ctx_, config.cert_file.c_str()) != 1 ||
          SSL_CTX_use_PrivateKey_file(ctx_, config.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
        return false;
      }
    }
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd_);
    if (config.resume) SSL_set_session(ssl_, config.resume);
    int rc = SSL_connect(ssl_);
    ERR_clear_error();
    return rc == 1;
  }

  bool Send(const std::string& data) {
    size_t off = 0;
    while (off < data.size()) {
      int n;
      if (ssl_) {
        n = SSL_write(ssl_, data.data() + off, static_cast<int>(data.size() - off));
      } else {
        n = static_cast<int>(::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL));
      }
      if (n <= 0) {
        ERR_clear_error();
        return false;
      }
      off += static_cast<size_t>(n);
    }
    return true;
  }

  // Reads one response (Content-Length framed); nullopt if the connection
  // closed or timed out first.
  std::optional<ParsedResponse> ReadResponse() {
    size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (ReadMore() != ReadState::kData) return std::nullopt;
    }
    ParsedResponse res;
    std::string head = buf_.substr(0, end);
    buf_.erase(0, end + 4);
    size_t line_end = head.find("\r\n");
    std::string status_line = head.substr(0, line_end);
    if (status_line.size() < 12 || status_line.compare(0, 5, "HTTP/") != 0) return std::nullopt;
    res.status = std::stoi(status_line.substr(9, 3));
    size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
    while (pos < head.size()) {
      size_t next = head.find("\r\n", pos);
      if (next == std::string::npos) next = head.size();
      std::string line = head.substr(pos, next - pos);
      size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        size_t v = colon + 1;
        while (v < line.size() && line[v] == ' ') ++v;
        res.headers.emplace(name, line.substr(v));
      }
      pos = next + 2;
    }
    size_t length = 0;
    if (res.Has("content-length") && !head_request_) {
      length = std::stoul(res.Header("content-length"));
    }
    if (res.status == 204 || res.status == 304 || res.status / 100 == 1) length = 0;
    while (buf_.size() < length) {
      if (ReadMore() != ReadState::kData) return std::nullopt;
    }
    res.body = buf_.substr(0, length);
    buf_.erase(0, length);
    return res;
  }

  // Sends a request and reads its response.
  std::optional<ParsedResponse> RoundTrip(const std::string& request) {
    head_request_ = request.compare(0, 5, "HEAD ") == 0;
    if (!Send(request)) return std::nullopt;
    auto res = ReadResponse();
    head_request_ = false;
    return res;
  }

  // Waits until the server closes the connection: true when it did, false if
  // data arrived or 5 s passed.
  bool WaitClosed() {
    if (!buf_.empty()) return false;
    ReadState s = ReadMore();
    return s == ReadState::kClosed;
  }

  ReadState ReadMore() {
    char tmp[16384];
    int n;
    if (ssl_) {
      n = SSL_read(ssl_, tmp, sizeof(tmp));
      if (n <= 0) {
        int err = SSL_get_error(ssl_, n);
        ERR_clear_error();
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return ReadState::kTimeout;
        if (err == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          return ReadState::kTimeout;
        }
        return ReadState::kClosed;
      }
    } else {
      n = static_cast<int>(::recv(fd_, tmp, sizeof(tmp), 0));
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return ReadState::kTimeout;
      if (n <= 0) return ReadState::kClosed;
    }
    buf_.append(tmp, static_cast<size_t>(n));
    return ReadState::kData;
  }

  const std::string& buffered() const { return buf_; }
  SSL* ssl() const { return ssl_; }

  long PeerSerial() const {
    X509* cert = SSL_get1_peer_certificate(ssl_);
    if (!cert) return -1;
    long serial = ASN1_INTEGER_get(X509_get0_serialNumber(cert));
    X509_free(cert);
    return serial;
  }

  // The session for resumption (caller frees); with TLS 1.3 only after the
  // server's ticket was read, i.e. after a response.
  SSL_SESSION* Session() const { return SSL_get1_session(ssl_); }
  bool Resumed() const { return SSL_session_reused(ssl_) == 1; }

  std::string Cipher() const { return SSL_get_cipher_name(ssl_); }
  std::string Version() const { return SSL_get_version(ssl_); }
  std::string Alpn() const {
    const unsigned char* data = nullptr;
    unsigned len = 0;
    SSL_get0_alpn_selected(ssl_, &data, &len);
    return std::string(reinterpret_cast<const char*>(data), len);
  }

 private:
  void Reset() {
    if (ssl_) SSL_free(ssl_);
    if (ctx_) SSL_CTX_free(ctx_);
    if (fd_ >= 0) ::close(fd_);
    ssl_ = nullptr;
    ctx_ = nullptr;
    fd_ = -1;
    buf_.clear();
  }

  int fd_ = -1;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  std::string buf_;
  bool head_request_ = false;
};

}  // namespace fhirward::net::test_util

#endif  // FHIRWARD_NET_INTERNAL_TEST_TLS_H_
