// HTTPS server on Boost.Beast/Asio. This header does not include Boost.
//
// TLS 1.3 by default; TLS 1.2 only when `min_tls` is "1.2", then only ECDHE
// with AES-GCM or ChaCha20-Poly1305. No renegotiation, no compression, TLS 1.1
// and below refused. Plain HTTP only when `plain_http` is set and the listen
// address is loopback. TCP_NODELAY and keep-alive on every connection; deadlines
// on header read, body read and idle; limits on header and body size.
//
// I/O runs on `io_threads` threads; handlers run on `worker_threads` threads so
// a handler blocking on storage or the audit commit never stalls I/O.
// Thread-safe: Stop() and ReloadCertificates() may be called from any thread.
#ifndef FHIRWARD_NET_SERVER_H_
#define FHIRWARD_NET_SERVER_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "net/message.h"

namespace fhirward::net {

struct TlsOptions {
  std::string cert_file;       // PEM chain, leaf first
  std::string key_file;        // PEM private key
  std::string client_ca_file;  // if set, client certificates are requested and verified
  bool require_client_cert = false;
  std::string min_version = "1.3";  // "1.3" or "1.2"
};

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8443;  // 0 picks a free port
  int io_threads = 2;
  int worker_threads = 32;
  bool plain_http = false;  // only honoured on loopback addresses
  TlsOptions tls;
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 8 * 1024 * 1024;
  std::chrono::milliseconds header_timeout{10000};
  std::chrono::milliseconds body_timeout{30000};
  std::chrono::milliseconds idle_timeout{60000};
  std::chrono::milliseconds handshake_timeout{10000};
  int max_requests_per_connection = 10000;  // 0: unlimited
  // Poll the certificate files and reload when they change (0 disables).
  std::chrono::milliseconds cert_poll_interval{2000};
  // Told of every certificate reload (SIGHUP, changed files, or a call to
  // ReloadCertificates) with its outcome; may run on an I/O thread, so it
  // must not block.
  std::function<void(const absl::Status&)> on_cert_reload;
  std::chrono::milliseconds drain_timeout{20000};
  // After a response with "Connection: close" the server sends its TLS
  // close_notify (plain: shuts down its sending side) and discards what the
  // client still sends, for at most this long, so that closing over unread
  // request bytes does not reset the connection before the client has read
  // the response.
  std::chrono::milliseconds linger_timeout{2000};
  // Install SIGTERM/SIGINT (drain and stop; a second one stops at once) and
  // SIGHUP (reload certificates) handlers. Tests running several servers in
  // one process turn this off.
  bool handle_signals = true;
};

class HttpsServer {
 public:
  virtual ~HttpsServer() = default;

  // Loads certificates, binds and listens (not yet serving). Errors: bad
  // certificate or key, address in use, plain HTTP on a non-loopback address.
  static absl::StatusOr<std::unique_ptr<HttpsServer>> Create(const ServerOptions& options,
                                                             Handler handler);
  // As above with an asynchronous handler, called inline on the I/O threads
  // (the worker pool is then unused).
  static absl::StatusOr<std::unique_ptr<HttpsServer>> Create(const ServerOptions& options,
                                                             AsyncHandler handler);

  // The bound port (the real one when options.port was 0).
  virtual uint16_t port() const = 0;

  // Serves until Stop() or SIGTERM/SIGINT; SIGHUP reloads certificates. Returns
  // after in-flight requests are drained (or drain_timeout passes). Call it
  // once. Destroy the server only after Run() returned (or if it never ran);
  // the destructor waits for handlers still running past drain_timeout.
  virtual void Run() = 0;

  // Stops accepting, lets in-flight requests finish, then makes Run() return.
  virtual void Stop() = 0;

  // Re-reads cert_file/key_file; new handshakes use them, open connections are
  // kept. On error the old certificate stays in use.
  virtual absl::Status ReloadCertificates() = 0;
};

}  // namespace fhirward::net

#endif  // FHIRWARD_NET_SERVER_H_
