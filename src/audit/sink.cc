#include "audit/sink.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>

#include "audit/audit_log.h"
#include "audit/merkle.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "json/value.h"

namespace fhirward::audit {
namespace {

absl::Status SinkError(const std::string& what) { return Error(ErrorCode::kUnavailable, what); }

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

std::string OpenSslError() {
  unsigned long e = ERR_get_error();
  std::string out;
  while (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
    e = ERR_get_error();
  }
  return out.empty() ? "unknown TLS error" : out;
}

// RFC 5424 §6.3.3: '"', '\' and ']' are escaped in PARAM-VALUE.
std::string SdEscape(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '"' || c == '\\' || c == ']') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// Writes all of `data` to a file descriptor, retrying short writes.
bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// ---- sinks -------------------------------------------------------------------

class Sink {
 public:
  virtual ~Sink() = default;
  // Delivers the batch in order; on failure the connection (if any) is closed
  // and the next call reconnects.
  virtual absl::Status Send(const std::vector<StoredRecord>& batch) = 0;
  virtual void Close() {}
};

class FileSink final : public Sink {
 public:
  explicit FileSink(SinkConfig c) : c_(std::move(c)) {}
  ~FileSink() override { Close(); }

  absl::Status Send(const std::vector<StoredRecord>& batch) override {
    if (fd_ < 0) {
      fd_ = ::open(c_.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (fd_ < 0) return SinkError(Errno("cannot open " + c_.path));
    }
    std::string text;
    for (const StoredRecord& r : batch) text += FormatJsonLine(r);
    if (!WriteAll(fd_, text) || ::fsync(fd_) != 0) {
      std::string e = Errno("cannot write " + c_.path);
      Close();
      return SinkError(e);
    }
    struct stat st;
    if (::fstat(fd_, &st) == 0 && st.st_size >= c_.max_bytes) Rotate();
    return absl::OkStatus();
  }

  void Close() override {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  // path.K is dropped, path.i -> path.(i+1), path -> path.1.
  void Rotate() {
    Close();
    const std::string& p = c_.path;
    ::unlink((p + "." + std::to_string(c_.keep)).c_str());
    for (int i = c_.keep - 1; i >= 1; --i) {
      ::rename((p + "." + std::to_string(i)).c_str(), (p + "." + std::to_string(i + 1)).c_str());
    }
    if (c_.keep >= 1) {
      ::rename(p.c_str(), (p + ".1").c_str());
    } else {
      ::unlink(p.c_str());
    }
  }

  SinkConfig c_;
  int fd_ = -1;
};

// A TCP or TLS connection to a receiver (syslog, webhook): connect with a
// timeout, TLS 1.2+ with the receiver verified against ca_file (or the
// system's trust store when ca_file is empty and `system_trust`) and its
// name, optional client certificate, blocking I/O with timeouts.
class Connection {
 public:
  struct Target {
    std::string host;
    int port = 0;
    bool tls = false;
    std::string ca_file, server_name, cert_file, key_file;
  };
  Connection(Target t, std::chrono::milliseconds timeout) : t_(std::move(t)), timeout_(timeout) {}
  ~Connection() {
    Close();
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
  }
  bool open() const { return fd_ >= 0; }

  absl::Status Connect() {
    Close();
    struct addrinfo hints {};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    struct addrinfo* res = nullptr;
    const std::string port = std::to_string(t_.port);
    if (int rc = ::getaddrinfo(t_.host.c_str(), port.c_str(), &hints, &res); rc != 0) {
      return SinkError("cannot resolve " + t_.host + ": " + gai_strerror(rc));
    }
    std::string last = "no address";
    for (struct addrinfo* a = res; a != nullptr && fd_ < 0; a = a->ai_next) {
      int fd =
          ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
      if (fd < 0) continue;
      int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
      if (rc != 0 && errno == EINPROGRESS) {
        struct pollfd p {
          fd, POLLOUT, 0
        };
        rc = ::poll(&p, 1, static_cast<int>(timeout_.count()));
        int err = 0;
        socklen_t len = sizeof err;
        if (rc == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
          rc = 0;
        } else {
          errno = rc == 0 ? ETIMEDOUT : (err != 0 ? err : errno);
          rc = -1;
        }
      }
      if (rc != 0) {
        last = Errno("cannot connect to " + t_.host + ":" + port);
        ::close(fd);
        continue;
      }
      // Blocking from here, with timeouts on every send and receive.
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      struct timeval tv;
      tv.tv_sec = static_cast<time_t>(timeout_.count() / 1000);
      tv.tv_usec = static_cast<suseconds_t>((timeout_.count() % 1000) * 1000);
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      fd_ = fd;
    }
    ::freeaddrinfo(res);
    if (fd_ < 0) return SinkError(last);
    if (!t_.tls) return absl::OkStatus();

    if (ctx_ == nullptr) {
      ctx_ = SSL_CTX_new(TLS_client_method());
      if (ctx_ == nullptr) return SinkError("TLS: " + OpenSslError());
      SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
      SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
      const bool loaded = t_.ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx_) == 1
                                             : SSL_CTX_load_verify_locations(
                                                   ctx_, t_.ca_file.c_str(), nullptr) == 1;
      if (!loaded) {
        std::string e = OpenSslError();
        SSL_CTX_free(ctx_);
        ctx_ = nullptr;
        return SinkError("TLS: cannot load ca_file " + t_.ca_file + ": " + e);
      }
      if (!t_.cert_file.empty() &&
          (SSL_CTX_use_certificate_chain_file(ctx_, t_.cert_file.c_str()) != 1 ||
           SSL_CTX_use_PrivateKey_file(ctx_, t_.key_file.c_str(), SSL_FILETYPE_PEM) != 1)) {
        std::string e = OpenSslError();
        SSL_CTX_free(ctx_);
        ctx_ = nullptr;
        return SinkError("TLS: cannot load the client certificate: " + e);
      }
    }
    ssl_ = SSL_new(ctx_);
    if (ssl_ == nullptr) return SinkError("TLS: " + OpenSslError());
    const std::string& name = t_.server_name.empty() ? t_.host : t_.server_name;
    SSL_set_tlsext_host_name(ssl_, name.c_str());
    // The certificate must name the receiver (DNS name, or IP address).
    struct in6_addr a6;
    struct in_addr a4;
    if (inet_pton(AF_INET, name.c_str(), &a4) == 1 || inet_pton(AF_INET6, name.c_str(), &a6) == 1) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), name.c_str());
    } else {
      SSL_set1_host(ssl_, name.c_str());
    }
    SSL_set_fd(ssl_, fd_);
    if (SSL_connect(ssl_) != 1) {
      long v = SSL_get_verify_result(ssl_);
      std::string e = v != X509_V_OK ? X509_verify_cert_error_string(v) : OpenSslError();
      return SinkError("TLS handshake with " + t_.host + " failed: " + e);
    }
    return absl::OkStatus();
  }

  absl::Status Write(std::string_view data) {
    while (!data.empty()) {
      int n;
      if (ssl_ != nullptr) {
        n = SSL_write(ssl_, data.data(), static_cast<int>(std::min<size_t>(data.size(), 1 << 20)));
        if (n <= 0) return SinkError("TLS write failed: " + OpenSslError());
      } else {
        n = static_cast<int>(::send(fd_, data.data(), data.size(), MSG_NOSIGNAL));
        if (n < 0) {
          if (errno == EINTR) continue;
          return SinkError(Errno("write to " + t_.host));
        }
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }

  // Reads what arrives, up to `max` bytes; "" at EOF. kUnavailable on error or timeout.
  absl::StatusOr<std::string> Read(size_t max) {
    std::string buf(max, '\0');
    for (;;) {
      int n;
      if (ssl_ != nullptr) {
        n = SSL_read(ssl_, buf.data(), static_cast<int>(max));
        if (n <= 0) {
          int err = SSL_get_error(ssl_, n);
          if (err == SSL_ERROR_ZERO_RETURN) return std::string();
          if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0) return std::string();
          return SinkError("TLS read from " + t_.host + " failed: " + OpenSslError());
        }
      } else {
        n = static_cast<int>(::recv(fd_, buf.data(), max, 0));
        if (n < 0) {
          if (errno == EINTR) continue;
          return SinkError(Errno("read from " + t_.host));
        }
      }
      buf.resize(static_cast<size_t>(n));
      return buf;
    }
  }

  // Whether the receiver still holds the connection open, without waiting:
  // EOF, a reset, or a TLS close_notify mean it does not.
  bool Alive() {
    if (ssl_ == nullptr) {
      char b;
      ssize_t n = ::recv(fd_, &b, 1, MSG_PEEK | MSG_DONTWAIT);
      return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
    }
    const int flags = ::fcntl(fd_, F_GETFL);
    ::fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
    char b;
    ERR_clear_error();
    int n = SSL_peek(ssl_, &b, 1);
    int err = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl_, n);
    ::fcntl(fd_, F_SETFL, flags);
    return n > 0 || err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE;
  }

  void Close() {
    if (ssl_ != nullptr) {
      SSL_shutdown(ssl_);
      SSL_free(ssl_);
      ssl_ = nullptr;
    }
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  Target t_;
  std::chrono::milliseconds timeout_;
  int fd_ = -1;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
};

class SyslogSink final : public Sink {
 public:
  SyslogSink(SinkConfig c, std::string hostname, std::chrono::milliseconds timeout)
      : hostname_(std::move(hostname)),
        conn_({c.host, c.port, c.transport == "tls", c.ca_file, c.server_name, c.cert_file,
               c.key_file},
              timeout) {}

  absl::Status Send(const std::vector<StoredRecord>& batch) override {
    if (!conn_.open()) {
      if (auto s = conn_.Connect(); !s.ok()) {
        conn_.Close();
        return s;
      }
    }
    std::string frames;
    for (const StoredRecord& r : batch) {
      std::string msg = FormatSyslog(r, hostname_);
      frames += std::to_string(msg.size());
      frames += ' ';
      frames += msg;
    }
    if (auto s = conn_.Write(frames); !s.ok()) {
      conn_.Close();
      return s;
    }
    // A peer that closed the connection shows as EOF on the socket (looked
    // at below TLS: a TLS receiver may send tickets, which are not EOF): the
    // batch may not have arrived, so report failure (it is sent again).
    if (!conn_.Alive()) {
      conn_.Close();
      return SinkError("the receiver closed the connection");
    }
    return absl::OkStatus();
  }

  void Close() override { conn_.Close(); }

 private:
  std::string hostname_;
  Connection conn_;
};

// Parses http(s)://host[:port]/path; false when malformed.
bool ParseUrl(const std::string& url, bool* tls, std::string* host, int* port, std::string* path) {
  std::string_view u = url;
  if (u.rfind("https://", 0) == 0) {
    *tls = true;
    u.remove_prefix(8);
  } else if (u.rfind("http://", 0) == 0) {
    *tls = false;
    u.remove_prefix(7);
  } else {
    return false;
  }
  const size_t slash = u.find('/');
  std::string_view authority = u.substr(0, slash);
  *path = slash == std::string_view::npos ? "/" : std::string(u.substr(slash));
  if (authority.empty() || authority.find('@') != std::string_view::npos) return false;
  *port = *tls ? 443 : 80;
  size_t colon = std::string_view::npos;
  if (authority[0] == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return false;
    *host = std::string(authority.substr(1, close - 1));
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return false;
      colon = close + 1;
    }
  } else {
    colon = authority.find(':');
    *host = std::string(authority.substr(0, colon));
  }
  if (colon != std::string_view::npos) {
    std::string_view p = authority.substr(colon + 1);
    if (p.empty() || p.size() > 5 ||
        !std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return false;
    }
    *port = std::stoi(std::string(p));
  }
  for (char c : *path) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return false;
  }
  return !host->empty() && *port >= 1 && *port <= 65535;
}

bool IsLoopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// Alerts to an HTTP endpoint: one POST per alert (JSON, FormatWebhook),
// signed with HMAC-SHA256 when a secret is configured; delivered once the
// endpoint answers 2xx.
class WebhookSink final : public Sink {
 public:
  WebhookSink(const SinkConfig& c, std::chrono::milliseconds timeout)
      : url_(c.url), secret_file_(c.secret_file), timeout_(timeout) {
    ParseUrl(c.url, &tls_, &host_, &port_, &path_);  // checked by CheckSinkConfig
    target_ = {host_, port_, tls_, c.ca_file, c.server_name, c.cert_file, c.key_file};
  }

  absl::Status Send(const std::vector<StoredRecord>& batch) override {
    std::string secret;
    if (!secret_file_.empty()) {
      int fd = ::open(secret_file_.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return SinkError(Errno("cannot read secret_file " + secret_file_));
      char buf[4096];
      ssize_t n = ::read(fd, buf, sizeof buf);
      ::close(fd);
      if (n <= 0) return SinkError("secret_file " + secret_file_ + " is empty");
      secret.assign(buf, static_cast<size_t>(n));
      while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) {
        secret.pop_back();
      }
    }
    for (const StoredRecord& r : batch) {
      if (auto s = Post(r, secret); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Post(const StoredRecord& r, const std::string& secret) {
    const std::string body = FormatWebhook(r);
    std::string req = "POST " + path_ + " HTTP/1.1\r\nHost: " + host_ +
                      (port_ == (tls_ ? 443 : 80) ? "" : ":" + std::to_string(port_)) +
                      "\r\nUser-Agent: fhirward\r\nContent-Type: application/json\r\n"
                      "Content-Length: " +
                      std::to_string(body.size()) +
                      "\r\nConnection: close\r\nX-Fhirward-Seq: " + std::to_string(r.seq) + "\r\n";
    if (!secret.empty()) {
      // Stripe-style: the timestamp is signed with the body, so a captured
      // delivery cannot be replayed later with a new time.
      const std::string t = std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                               std::chrono::system_clock::now().time_since_epoch())
                                               .count());
      req += "X-Fhirward-Signature: t=" + t +
             ",v1=" + HexEncode(crypto::HmacSha256(secret, t + "." + body)) + "\r\n";
    }
    req += "\r\n";
    req += body;
    Connection conn(target_, timeout_);
    if (auto s = conn.Connect(); !s.ok()) return s;
    if (auto s = conn.Write(req); !s.ok()) return s;
    // The status line is enough: 2xx delivered, anything else retried.
    std::string head;
    while (head.find("\r\n") == std::string::npos && head.size() < 8192) {
      auto chunk = conn.Read(4096);
      if (!chunk.ok()) return chunk.status();
      if (chunk->empty()) break;
      head += *chunk;
    }
    const size_t eol = head.find("\r\n");
    if (eol == std::string::npos || head.rfind("HTTP/1.", 0) != 0 || eol < 12) {
      return SinkError("webhook " + host_ + " sent no HTTP response");
    }
    const std::string status = head.substr(9, 3);
    if (status[0] != '2') {
      return SinkError("webhook " + host_ + " answered " + status);
    }
    return absl::OkStatus();
  }

  std::string url_, secret_file_;
  std::chrono::milliseconds timeout_;
  bool tls_ = true;
  std::string host_, path_;
  int port_ = 443;
  Connection::Target target_;
};

// ---- cursors -----------------------------------------------------------------

}  // namespace

std::optional<int64_t> LoadCursorFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char buf[32] = {0};
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0 || buf[0] < '0' || buf[0] > '9') return std::nullopt;
  return std::max<int64_t>(0, std::strtoll(buf, nullptr, 10));
}

absl::Status SaveCursorFile(const std::string& path, int64_t seq) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return SinkError(Errno("cannot write " + tmp));
  const std::string text = std::to_string(seq) + "\n";
  bool ok = WriteAll(fd, text) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0)
    return SinkError(Errno("cannot save " + path));
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d >= 0) {
    ::fsync(d);
    ::close(d);
  }
  return absl::OkStatus();
}

std::string FormatJsonLine(const StoredRecord& r) {
  std::string out = "{\"seq\":" + std::to_string(r.seq) + ",\"leaf_hash\":\"" +
                    Base64Encode(merkle::LeafHash(r.json)) + "\",\"record\":";
  out += r.json;  // canonical JSON, as hashed: the leaf is exactly these bytes
  out += "}\n";
  return out;
}

bool IsAlertRecord(const StoredRecord& r) {
  // Cheap pre-check on the canonical JSON, then the parsed record decides.
  if (r.json.find("\"action\":\"alert.") == std::string::npos) return false;
  auto rec = AuditRecord::FromJson(r.json);
  return rec.ok() && rec->action.rfind("alert.", 0) == 0;
}

std::string FormatWebhook(const StoredRecord& r) {
  using json::Value;
  Value o = Value::MakeObject();
  o.Set("seq", Value::Int(r.seq));
  o.Set("leaf_hash", Value::String(Base64Encode(merkle::LeafHash(r.json))));
  auto rec = AuditRecord::FromJson(r.json);
  if (rec.ok()) {
    const std::string& d = rec->decision;
    auto field = [&](const std::string& k) -> std::string {
      const std::string key = k + "=";
      size_t at = d.rfind(" " + key);
      at = d.rfind(key, 0) == 0 ? 0 : (at == std::string::npos ? at : at + 1);
      if (at == std::string::npos) return "";
      const size_t from = at + key.size();
      return d.substr(from, d.find(' ', from) - from);
    };
    o.Set("time", Value::String(rec->time));
    o.Set("alert", Value::String(rec->action.substr(rec->action.rfind("alert.", 0) == 0 ? 6 : 0)));
    o.Set("kind", Value::String(field("kind")));
    o.Set("summary", Value::String(d));
    o.Set("subject", Value::String(rec->subject));
    o.Set("client_id", Value::String(rec->client_id));
    o.Set("client_address", Value::String(rec->client_address));
    o.Set("node", Value::String(rec->node));
    o.Set("audit_event", Value::String("AuditEvent/" + std::to_string(r.seq)));
    o.Set("trigger",
          Value::String(rec->resource_type == "AuditEvent" ? "AuditEvent/" + rec->resource_id
                                                           : std::string()));
    o.Set("test", Value::Bool(field("test") == "1"));
  }
  return json::Write(o);
}

std::string FormatSyslog(const StoredRecord& r, const std::string& hostname) {
  auto rec = AuditRecord::FromJson(r.json);
  const bool alert = rec.ok() && rec->action.rfind("alert.", 0) == 0;
  const bool refused = rec.ok() && rec->outcome != "success";
  // Facility 13 (log audit): alert = severity 1, refusals 4 (warning), else 6 (info).
  const int pri = 13 * 8 + (alert ? 1 : refused ? 4 : 6);
  std::string host = hostname.empty() ? "-" : hostname.substr(0, 255);
  std::string time = rec.ok() && !rec->time.empty() ? rec->time : "-";
  std::string out = "<" + std::to_string(pri) + ">1 " + time + " " + host + " fhirward - " +
                    (alert ? "alert" : "audit") + " [fhirward@32473 seq=\"" +
                    std::to_string(r.seq) + "\" leaf_hash=\"" +
                    SdEscape(Base64Encode(merkle::LeafHash(r.json))) + "\"] ";
  out += r.json;
  return out;
}

absl::Status CheckSinkConfig(const SinkConfig& c) {
  auto bad = [&](const std::string& what) {
    return Error(ErrorCode::kInvalidParameter, "audit sink \"" + c.name + "\": " + what);
  };
  if (c.name.empty() || c.name.size() > 64 ||
      !std::all_of(c.name.begin(), c.name.end(), [](char ch) {
        return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
      })) {
    return bad("name must be 1-64 of a-z 0-9 - _");
  }
  if (c.records != "" && c.records != "all" && c.records != "alerts") {
    return bad("records is all or alerts");
  }
  if (c.type == "file") {
    if (c.path.empty() || c.path[0] != '/') return bad("path must be an absolute file path");
    if (c.max_bytes < 4096) return bad("max_bytes must be at least 4096");
    if (c.keep < 0 || c.keep > 1000) return bad("keep must be 0..1000");
    return absl::OkStatus();
  }
  if (c.type == "syslog") {
    if (c.host.empty()) return bad("host is required");
    if (c.port < 1 || c.port > 65535) return bad("port must be 1..65535");
    if (c.transport != "tcp" && c.transport != "tls") return bad("transport is tcp or tls");
    if (c.transport == "tls" && c.ca_file.empty()) return bad("tls needs ca_file");
    if (c.cert_file.empty() != c.key_file.empty()) return bad("cert_file and key_file go together");
    return absl::OkStatus();
  }
  if (c.type == "webhook") {
    bool tls = false;
    std::string host, path;
    int port = 0;
    if (!ParseUrl(c.url, &tls, &host, &port, &path)) {
      return bad("url must be https://host[:port]/path");
    }
    if (!tls && !IsLoopback(host)) return bad("url must be https (http only to a loopback host)");
    if (c.records == "all") return bad("a webhook takes alerts only");
    if (c.cert_file.empty() != c.key_file.empty()) return bad("cert_file and key_file go together");
    if (!c.secret_file.empty() && c.secret_file[0] != '/') {
      return bad("secret_file must be an absolute path");
    }
    return absl::OkStatus();
  }
  return bad("type is file, syslog or webhook");
}

// ---- the exporter --------------------------------------------------------------

struct AuditExporter::Impl {
  struct Worker {
    SinkConfig config;
    std::unique_ptr<Sink> sink;
    std::unique_ptr<AuditReader> reader;
    std::string cursor_path;
    bool alerts_only = false;
    std::atomic<int64_t> delivered{0};
    std::atomic<int64_t> failures{0};
    std::string last_error;  // guarded by Impl::mu
    std::thread thread;
  };

  ExporterOptions options;
  std::vector<std::unique_ptr<Worker>> workers;
  mutable std::mutex mu;
  mutable std::condition_variable cv;         // wakes the workers
  mutable std::condition_variable delivered;  // wakes WaitDelivered
  bool stopping = false;
  std::chrono::steady_clock::time_point drain_deadline{};
  uint64_t generation = 0;  // bumped by Notify

  void Run(Worker* w) {
    bool down = false;
    int64_t attempt = 0;
    // A network receiver may die just after taking the last batch into its
    // socket buffer, unseen: after a failure, that batch is sent again
    // (receivers de-duplicate on seq). A file is fsync'd: no rewind.
    const bool rewind = w->config.type == "syslog";
    int64_t last_batch_first = 0;
    int64_t next = w->delivered.load();
    uint64_t seen_generation = 0;
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu);
        seen_generation = generation;
        if (stopping && std::chrono::steady_clock::now() >= drain_deadline) return;
      }
      auto batch = w->reader->After(next, options.batch);
      absl::Status s = batch.ok() ? absl::OkStatus() : batch.status();
      if (s.ok() && batch->empty()) {
        std::unique_lock<std::mutex> lock(mu);
        if (stopping) return;  // drained
        cv.wait_for(lock, options.poll, [&] { return stopping || generation != seen_generation; });
        continue;
      }
      int64_t first_seq = 0, last_seq = 0;
      if (s.ok()) {
        first_seq = batch->front().seq;
        last_seq = batch->back().seq;
        if (w->alerts_only) {
          std::vector<StoredRecord> alerts;
          for (StoredRecord& r : *batch) {
            if (IsAlertRecord(r)) alerts.push_back(std::move(r));
          }
          if (!alerts.empty()) s = w->sink->Send(alerts);
        } else {
          s = w->sink->Send(*batch);
        }
      }
      if (s.ok()) s = SaveCursorFile(w->cursor_path, std::max(w->delivered.load(), last_seq));
      if (s.ok()) {
        last_batch_first = first_seq;
        next = last_seq;
        w->delivered = std::max(w->delivered.load(), next);
        w->failures = 0;
        attempt = 0;
        delivered.notify_all();
        if (down) {
          down = false;
          Event(w, true, "");
        }
        continue;
      }
      w->failures.fetch_add(1);
      if (rewind && last_batch_first > 0) {
        next = std::min(next, last_batch_first - 1);
        last_batch_first = 0;
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        w->last_error = std::string(s.message());
      }
      if (!down) {
        down = true;
        Event(w, false, std::string(s.message()));
      }
      // Back off: 250 ms doubling up to max_backoff; Notify does not cut it short.
      auto wait = std::min<std::chrono::milliseconds>(
          options.max_backoff,
          std::chrono::milliseconds(250) * (int64_t{1} << std::min<int64_t>(attempt, 10)));
      ++attempt;
      std::unique_lock<std::mutex> lock(mu);
      auto until = std::chrono::steady_clock::now() + wait;
      if (stopping) until = std::min(until, drain_deadline);
      cv.wait_until(lock, until,
                    [&] { return stopping && std::chrono::steady_clock::now() >= drain_deadline; });
    }
  }

  void Event(Worker* w, bool up, std::string detail) {
    if (!options.on_event) return;
    SinkEvent e;
    e.sink = w->config.name;
    e.up = up;
    e.detail = std::move(detail);
    auto last = w->reader->LastSeq();
    e.pending = last.ok() ? std::max<int64_t>(0, *last - w->delivered.load()) : 0;
    options.on_event(e);
  }
};

AuditExporter::AuditExporter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AuditExporter::~AuditExporter() { Stop(std::chrono::milliseconds(0)); }

absl::StatusOr<std::unique_ptr<AuditExporter>> AuditExporter::Start(
    const std::string& audit_db_path, std::vector<SinkConfig> sinks, ExporterOptions options) {
  auto impl = std::make_unique<Impl>();
  if (options.batch < 1) options.batch = 1;
  if (!sinks.empty()) {
    if (::mkdir(options.state_dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return Error(ErrorCode::kInternal, Errno("cannot create " + options.state_dir));
    }
  }
  impl->options = std::move(options);
  std::vector<std::string> names;
  for (SinkConfig& c : sinks) {
    if (auto s = CheckSinkConfig(c); !s.ok()) return s;
    if (std::find(names.begin(), names.end(), c.name) != names.end()) {
      return Error(ErrorCode::kInvalidParameter,
                   "audit sink \"" + c.name + "\" is configured twice");
    }
    names.push_back(c.name);
    auto w = std::make_unique<Impl::Worker>();
    auto reader = AuditReader::Open(audit_db_path);
    if (!reader.ok()) return reader.status();
    w->reader = std::move(*reader);
    w->cursor_path = impl->options.state_dir + "/" + c.name + ".cursor";
    w->delivered = LoadCursorFile(w->cursor_path).value_or(0);
    w->alerts_only = c.type == "webhook" || c.records == "alerts";
    if (c.type == "file") {
      w->sink = std::make_unique<FileSink>(c);
    } else if (c.type == "webhook") {
      w->sink = std::make_unique<WebhookSink>(c, impl->options.io_timeout);
    } else {
      w->sink = std::make_unique<SyslogSink>(c, impl->options.hostname, impl->options.io_timeout);
    }
    w->config = std::move(c);
    impl->workers.push_back(std::move(w));
  }
  Impl* raw = impl.get();
  for (auto& w : impl->workers) {
    Impl::Worker* wp = w.get();
    w->thread = std::thread([raw, wp] {
      // A receiver that went away makes writes fail with EPIPE in this
      // thread, never a SIGPIPE that would end the process.
      sigset_t pipe;
      sigemptyset(&pipe);
      sigaddset(&pipe, SIGPIPE);
      pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
      raw->Run(wp);
    });
  }
  return std::unique_ptr<AuditExporter>(new AuditExporter(std::move(impl)));
}

void AuditExporter::Notify() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    ++impl_->generation;
  }
  impl_->cv.notify_all();
}

std::vector<SinkStatus> AuditExporter::Status() const {
  std::vector<SinkStatus> out;
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (const auto& w : impl_->workers) {
    out.push_back({w->config.name, w->delivered.load(), w->failures.load(), w->last_error});
  }
  return out;
}

bool AuditExporter::WaitDelivered(int64_t seq, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(impl_->mu);
  return impl_->delivered.wait_for(lock, timeout, [&] {
    for (const auto& w : impl_->workers) {
      if (w->delivered.load() < seq) return false;
    }
    return true;
  });
}

void AuditExporter::Stop(std::chrono::milliseconds drain) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (!impl_->stopping) {
      impl_->stopping = true;
      impl_->drain_deadline = std::chrono::steady_clock::now() + drain;
    }
  }
  impl_->cv.notify_all();
  for (auto& w : impl_->workers) {
    if (w->thread.joinable()) w->thread.join();
    if (w->sink) w->sink->Close();
  }
}

}  // namespace fhirward::audit
