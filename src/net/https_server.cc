// HttpsServer on Boost.Beast 1.81 / Asio with plain callbacks.
//
// The only translation unit of fhirward that includes Beast and Asio (each
// such TU costs ~40 s of compile time); everything else sees net/server.h.
//
// Life of a connection (one Session, all of its handlers on one strand):
//   TLS handshake        deadline handshake_timeout
//   wait for a request   deadline header_timeout on the first request (it
//                        covers the whole header), idle_timeout between
//                        keep-alive requests
//   read the header      deadline header_timeout, parser header_limit
//   read the body        deadline body_timeout, parser body_limit
//   handler              on the worker pool, no deadline (the handler owns it)
//   write the response   deadline body_timeout
//   close                TLS close_notify / TCP FIN, then discard what the
//                        client still sends until it closes or linger_timeout
//
// Shutdown (Stop() or SIGTERM/SIGINT): the acceptor closes, connections that
// wait for a request or are in the handshake are closed, connections with a
// request in progress finish it with "Connection: close". Run() returns when
// the last connection is gone or drain_timeout passes.

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cctype>
#include <csignal>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "net/internal/tls_context.h"
#include "net/server.h"

namespace fhirward::net {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using error_code = beast::error_code;

constexpr size_t kReadChunk = 16 * 1024;
// Oversized declared bodies up to this size are read and discarded before the
// 413 is sent (see RefuseBody).
constexpr std::uint64_t kMaxDiscardBytes = 64ull * 1024 * 1024;
constexpr std::chrono::milliseconds kAcceptRetryDelay{50};
constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";

// Errors that end a connection in the ordinary course of things (client went
// away, deadline, shutdown) and are not worth even a debug line.
bool IsRoutine(const error_code& ec) {
  return ec == asio::error::eof || ec == asio::error::operation_aborted ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
         ec == beast::error::timeout || ec == http::error::end_of_stream ||
         ec == http::error::partial_message ||
         // The client closed TCP without a TLS close_notify. Harmless for us:
         // HTTP framing (Content-Length) already tells where messages end.
         ec == ssl::error::stream_truncated;
}

// The single place where a per-connection failure is reported. Only the error
// category and operation are logged: never request content.
void Fail(const error_code& ec, const char* what) {
  if (!IsRoutine(ec)) spdlog::debug("net: {}: {}", what, ec.message());
}

bool IsLoopback(const asio::ip::address& addr) {
  if (addr.is_v4()) return addr.to_v4().is_loopback();
  const auto v6 = addr.to_v6();
  if (v6.is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, v6).is_loopback();
  return v6.is_loopback();
}

bool IsTokenChar(unsigned char c) {
  return c != 0 && (std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr);
}

// Header names must be RFC 9110 tokens and values must not contain CR, LF or
// NUL: a handler bug must not become response splitting.
bool IsValidHeader(const std::string& name, const std::string& value) {
  if (name.empty()) return false;
  for (unsigned char c : name) {
    if (!IsTokenChar(c)) return false;
  }
  for (unsigned char c : value) {
    if (c == '\r' || c == '\n' || c == 0) return false;
  }
  return true;
}

bool HasCloseToken(beast::string_view value) {
  // "Connection" is a comma-separated token list; only "close" matters here.
  for (auto const& token : http::token_list{value}) {
    if (beast::iequals(token, "close")) return true;
  }
  return false;
}

class ServerImpl;

// What the server needs from a connection, independent of TLS or plain.
class SessionBase {
 public:
  virtual ~SessionBase() = default;
  virtual void Start() = 0;
  // Thread-safe: asks the connection (on its strand) to finish up.
  virtual void PostDrain() = 0;
};

class ServerImpl final : public HttpsServer {
 public:
  ServerImpl(const ServerOptions& options, Handler handler, AsyncHandler async_handler);
  ~ServerImpl() override;

  absl::Status Init();

  uint16_t port() const override { return port_; }
  void Run() override;
  void Stop() override;
  absl::Status ReloadCertificates() override;

  // For sessions.
  const ServerOptions& options() const { return options_; }
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }
  template <class Fn>
  void Submit(Fn&& fn) {
    asio::post(*pool_, std::forward<Fn>(fn));
  }
  HttpResponse Invoke(HttpRequest&& request);
  bool has_async_handler() const { return static_cast<bool>(async_handler_); }
  // Runs `fn` on an I/O thread. Responses completed by another thread (the
  // audit writer releases a whole batch at once) are queued here and handed
  // to the I/O threads with one wake-up per batch instead of one per response.
  void PostCompletion(std::function<void()> fn);
  void InvokeAsync(HttpRequest&& request, Responder respond);
  void Unregister(SessionBase* session);

 private:
  std::shared_ptr<ssl::context> CurrentTlsContext();
  bool Register(const std::shared_ptr<SessionBase>& session);
  void DoAccept();
  void OnAccept(const error_code& ec, tcp::socket socket);
  void ArmSignals();
  void ArmCertPoll();
  void BeginStop();
  void FinishDrain();
  void RunLoop();

  const ServerOptions options_;
  const Handler handler_;
  const AsyncHandler async_handler_;
  uint16_t port_ = 0;

  std::mutex mu_;
  std::mutex mailbox_mu_;
  std::vector<std::function<void()>> mailbox_;                             // guarded by mailbox_mu_
  std::unordered_map<SessionBase*, std::weak_ptr<SessionBase>> sessions_;  // guarded by mu_
  bool destroying_ = false;                                                // guarded by mu_
  std::shared_ptr<ssl::context> tls_ctx_;                                  // guarded by mu_
  std::atomic<bool> stopping_{false};  // written under mu_, read anywhere

  std::mutex reload_mu_;   // serializes certificate reloads
  std::string tls_stamp_;  // guarded by reload_mu_: files as last loaded (or tried)

  // Only touched on strand_.
  bool stop_begun_ = false;
  bool finished_ = false;

  // Asio objects: destroyed explicitly, in order, in ~ServerImpl, while the
  // members above (which sessions use in their destructors) are still alive.
  std::optional<asio::io_context> ioc_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::optional<asio::strand<asio::io_context::executor_type>> strand_;
  std::optional<tcp::acceptor> acceptor_;
  std::optional<asio::signal_set> signals_;
  std::optional<asio::steady_timer> poll_timer_;
  std::optional<asio::steady_timer> drain_timer_;
  std::optional<asio::steady_timer> accept_timer_;
  std::optional<asio::thread_pool> pool_;
};

// One HTTP/1.1 connection. kTls selects ssl_stream<tcp_stream> or tcp_stream.
// Every member is touched only on the connection's strand, except server_ and
// executor_ (immutable).
template <bool kTls>
class Session final : public SessionBase, public std::enable_shared_from_this<Session<kTls>> {
 public:
  using Stream = std::conditional_t<kTls, beast::ssl_stream<beast::tcp_stream>, beast::tcp_stream>;

  Session(ServerImpl* server, tcp::socket&& socket, const tcp::endpoint& remote,
          std::shared_ptr<ssl::context> ctx)
      : server_(server),
        opts_(server->options()),
        executor_(socket.get_executor()),
        ctx_(std::move(ctx)),
        stream_(MakeStream(std::move(socket), ctx_.get())) {
    asio::ip::address addr = remote.address();
    if (addr.is_v6() && addr.to_v6().is_v4_mapped()) {
      addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
    }
    remote_ip_ = addr.to_string();
    remote_port_ = remote.port();
  }

  ~Session() override { server_->Unregister(this); }

  void Start() override {
    asio::dispatch(executor_, [self = this->shared_from_this()] { self->Begin(); });
  }

  void PostDrain() override {
    asio::post(executor_, [self = this->shared_from_this()] { self->Drain(); });
  }

 private:
  enum class Phase {
    kNew,
    kHandshake,
    kWaitRequest,
    kReadHeader,
    kReadBody,
    kHandler,
    kWrite,
    kClosing
  };

  static Stream MakeStream(tcp::socket&& socket, ssl::context* ctx) {
    if constexpr (kTls) {
      return Stream(std::move(socket), *ctx);
    } else {
      return Stream(std::move(socket));
    }
  }

  beast::tcp_stream& Lowest() { return beast::get_lowest_layer(stream_); }

  void Close() { Lowest().close(); }

  void Begin() {
    if (draining_ || server_->stopping()) return Close();
    if constexpr (kTls) {
      phase_ = Phase::kHandshake;
      Lowest().expires_after(opts_.handshake_timeout);
      stream_.async_handshake(
          ssl::stream_base::server,
          [self = this->shared_from_this()](const error_code& ec) { self->OnHandshake(ec); });
    } else {
      WaitRequest();
    }
  }

  void OnHandshake(const error_code& ec) {
    if (ec) {
      // Includes plaintext HTTP sent to the TLS port, refused protocol
      // versions and failed client-certificate verification: just close.
      Fail(ec, "handshake");
      return Close();
    }
    if constexpr (kTls) {
      SSL* ssl = stream_.native_handle();
      tls_version_ = SSL_get_version(ssl);
      if (X509* cert = SSL_get1_peer_certificate(ssl)) {
        // Only a certificate that chain-verified against client_ca_file counts.
        if (SSL_get_verify_result(ssl) == X509_V_OK) {
          int len = i2d_X509(cert, nullptr);
          if (len > 0) {
            client_cert_der_.resize(static_cast<size_t>(len));
            auto* p = reinterpret_cast<unsigned char*>(client_cert_der_.data());
            i2d_X509(cert, &p);
          }
        }
        X509_free(cert);
      }
    }
    WaitRequest();
  }

  // Waits for the first byte of the next request. Separate from the header
  // read so that idle keep-alive time (idle_timeout) and header transfer time
  // (header_timeout) have their own deadlines, and so that Drain() can tell an
  // idle connection from one in the middle of a request.
  void WaitRequest() {
    if (draining_ || server_->stopping()) return GracefulClose();
    phase_ = Phase::kWaitRequest;
    // The first request's header deadline starts right after the handshake.
    Lowest().expires_after(requests_ == 0 ? opts_.header_timeout : opts_.idle_timeout);
    if (buffer_.size() > 0) return ReadHeader();  // pipelined request already buffered
    stream_.async_read_some(buffer_.prepare(kReadChunk),
                            [self = this->shared_from_this()](const error_code& ec, size_t n) {
                              self->OnFirstBytes(ec, n);
                            });
  }

  void OnFirstBytes(const error_code& ec, size_t n) {
    if (ec) {
      if (ec == asio::error::operation_aborted && draining_) return GracefulClose();
      Fail(ec, "read");
      return Close();
    }
    buffer_.commit(n);
    ReadHeader();
  }

  void ReadHeader() {
    phase_ = Phase::kReadHeader;
    if (requests_ > 0) Lowest().expires_after(opts_.header_timeout);
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(
        std::min<size_t>(opts_.max_header_bytes, std::numeric_limits<std::uint32_t>::max())));
    parser_->body_limit(static_cast<std::uint64_t>(opts_.max_body_bytes));
    http::async_read_header(
        stream_, buffer_, *parser_,
        [self = this->shared_from_this()](const error_code& ec, size_t) { self->OnHeader(ec); });
  }

  void OnHeader(const error_code& ec) {
    received_at_ = std::chrono::system_clock::now();
    if (ec == http::error::header_limit) return Dispatch(ErrorCode::kHeadersTooLarge);
    // The parser compares a declared Content-Length with body_limit as soon as
    // the header is complete, so an oversized body is refused unread.
    if (ec == http::error::body_limit) return RefuseBody();
    if (ec) return OnReadError(ec, "read header");
    if (parser_->is_done()) return Dispatch(std::nullopt);
    const auto& msg = parser_->get();
    if (msg.version() >= 11 && beast::iequals(msg[http::field::expect], "100-continue")) {
      // RFC 9110 §10.1.1: the client waits for this before sending the body.
      phase_ = Phase::kReadBody;
      Lowest().expires_after(opts_.body_timeout);
      asio::async_write(stream_, asio::const_buffer(kContinue, sizeof(kContinue) - 1),
                        [self = this->shared_from_this()](const error_code& ec, size_t) {
                          if (ec) {
                            Fail(ec, "write 100-continue");
                            return self->Close();
                          }
                          self->ReadBody();
                        });
      return;
    }
    ReadBody();
  }

  // A declared Content-Length over the limit: the 413 goes out at once, but
  // unless the client waits for 100-continue it is already sending. Closing
  // over unread bytes makes the kernel reset the connection, and clients that
  // read only once they have written everything (Node's http, for one) then
  // never see the answer. So after the response the rest of the declared body
  // (up to kMaxDiscardBytes) is read and discarded, all of it within the
  // body deadline and each read within linger_timeout, before closing.
  void RefuseBody() {
    const auto& msg = parser_->get();
    auto length = parser_->content_length();
    discard_remaining_ = 0;
    if (length && *length <= kMaxDiscardBytes &&
        !beast::iequals(msg[http::field::expect], "100-continue")) {
      const std::uint64_t buffered = std::min<std::uint64_t>(buffer_.size(), *length);
      buffer_.consume(static_cast<size_t>(buffered));
      discard_remaining_ = *length - buffered;
    }
    Dispatch(ErrorCode::kBodyTooLarge);
  }

  void DiscardThenClose() {
    if (discard_remaining_ == 0) return GracefulClose();
    const auto now = std::chrono::steady_clock::now();
    if (phase_ != Phase::kClosing) {
      // The whole discard gets the deadline a body gets, so a client
      // trickling bytes cannot hold the connection beyond it; a client that
      // stops sending is let go after linger_timeout.
      phase_ = Phase::kClosing;
      discard_deadline_ = now + opts_.body_timeout;
    }
    Lowest().expires_at(std::min(discard_deadline_, now + opts_.linger_timeout));
    buffer_.clear();
    stream_.async_read_some(buffer_.prepare(kReadChunk), [self = this->shared_from_this()](
                                                             const error_code& ec, size_t n) {
      if (ec) return self->Close();
      self->discard_remaining_ -= std::min<std::uint64_t>(n, self->discard_remaining_);
      self->DiscardThenClose();
    });
  }

  void ReadBody() {
    phase_ = Phase::kReadBody;
    Lowest().expires_after(opts_.body_timeout);
    http::async_read(
        stream_, buffer_, *parser_,
        [self = this->shared_from_this()](const error_code& ec, size_t) { self->OnBody(ec); });
  }

  void OnBody(const error_code& ec) {
    // Chunked bodies grow past body_limit while being read.
    if (ec == http::error::body_limit) return Dispatch(ErrorCode::kBodyTooLarge);
    if (ec) return OnReadError(ec, "read body");
    Dispatch(std::nullopt);
  }

  void OnReadError(const error_code& ec, const char* what) {
    Fail(ec, what);
    const bool parse_error =
        &ec.category() == &http::make_error_code(http::error::bad_method).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message;
    if (!parse_error) return Close();
    // Malformed HTTP: a bare 400 from the transport (the handler never sees
    // unparseable input), then close.
    version_ = 11;
    keep_alive_ = false;
    head_request_ = false;
    HttpResponse bad;
    bad.status = 400;
    Write(std::move(bad), /*force_close=*/true);
  }

  // Hands the parsed request (or a transport refusal) to the worker pool.
  void Dispatch(std::optional<ErrorCode> transport_error) {
    phase_ = Phase::kHandler;
    auto& msg = parser_->get();
    version_ = msg.version() == 10 ? 10 : 11;
    keep_alive_ = !transport_error && msg.keep_alive();
    head_request_ = msg.method() == http::verb::head;

    HttpRequest req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    // After header_limit the field list is incomplete: better none than a
    // misleading subset.
    if (transport_error != ErrorCode::kHeadersTooLarge) {
      req.headers.reserve(16);
      for (const auto& field : msg) {
        req.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
      }
    }
    if (!transport_error) req.body = std::move(msg.body());
    req.remote_ip = remote_ip_;
    req.remote_port = remote_port_;
    req.tls_version = tls_version_;
    req.client_cert_der = client_cert_der_;
    req.received_at = received_at_;
    req.transport_error = transport_error;
    parser_.reset();

    if (server_->has_async_handler()) {
      server_->InvokeAsync(std::move(req), [self = this->shared_from_this()](HttpResponse res) {
        self->server_->PostCompletion([self, res = std::move(res)]() mutable {
          // On an I/O thread now: entering the connection's strand is cheap.
          asio::post(self->executor_, [self, res = std::move(res)]() mutable {
            self->Write(std::move(res), /*force_close=*/false);
          });
        });
      });
      return;
    }
    server_->Submit([self = this->shared_from_this(), req = std::move(req)]() mutable {
      HttpResponse res = self->server_->Invoke(std::move(req));
      asio::post(self->executor_, [self, res = std::move(res)]() mutable {
        self->Write(std::move(res), /*force_close=*/false);
      });
    });
  }

  void Write(HttpResponse res, bool force_close) {
    bool close = force_close || !keep_alive_ || draining_ || server_->stopping() ||
                 (opts_.max_requests_per_connection > 0 &&
                  requests_ + 1 >= opts_.max_requests_per_connection);
    int status = res.status;
    if (status < 200 || status > 599) {
      spdlog::warn("net: handler returned invalid status {}; sending 500", status);
      status = 500;
    }
    res_ = {};
    res_.version(version_);
    res_.result(static_cast<unsigned>(status));
    std::optional<std::string> declared_length;
    for (auto& [name, value] : res.headers) {
      if (!IsValidHeader(name, value)) {
        spdlog::warn("net: dropped an invalid response header from the handler");
        continue;
      }
      if (beast::iequals(name, "connection")) {
        if (HasCloseToken(value)) close = true;
        continue;
      }
      if (beast::iequals(name, "content-length")) {
        declared_length = std::move(value);
        continue;
      }
      if (beast::iequals(name, "transfer-encoding")) continue;
      res_.insert(name, value);
    }
    if (res_.find(http::field::date) == res_.end()) {
      res_.set(http::field::date, FormatHttpDate(std::chrono::system_clock::now()));
    }
    if (status == 204) {
      // RFC 9110 §8.6: no Content-Length, no body.
    } else if (head_request_ || status == 304) {
      // The length a GET would have had: as the handler declared it, else the
      // body it computed. No body is sent.
      if (declared_length) {
        res_.set(http::field::content_length, *declared_length);
      } else if (status != 304) {
        res_.content_length(res.body.size());
      }
    } else {
      res_.content_length(res.body.size());
      res_.body() = std::move(res.body);
    }
    res_.keep_alive(!close);

    phase_ = Phase::kWrite;
    Lowest().expires_after(opts_.body_timeout);
    http::async_write(stream_, res_,
                      [self = this->shared_from_this(), close](const error_code& ec, size_t) {
                        self->OnWrite(ec, close);
                      });
  }

  void OnWrite(const error_code& ec, bool close) {
    if (ec) {
      Fail(ec, "write");
      return Close();
    }
    ++requests_;
    res_ = {};
    if (close) return DiscardThenClose();
    WaitRequest();
  }

  // Ends the connection politely: TLS close_notify (or TCP FIN), then discard
  // whatever the client still sends until it closes or linger_timeout passes.
  // Closing with unread bytes in the receive queue makes the kernel send RST,
  // which can destroy the response before the client reads it (typical after
  // refusing an oversized body without reading it).
  void GracefulClose() {
    phase_ = Phase::kClosing;
    Lowest().expires_after(opts_.linger_timeout);
    if constexpr (kTls) {
      // After sending close_notify, SSL_shutdown discards application data
      // until the peer's close_notify or EOF.
      stream_.async_shutdown(
          [self = this->shared_from_this()](const error_code&) { self->Close(); });
    } else {
      error_code ignored;
      Lowest().socket().shutdown(tcp::socket::shutdown_send, ignored);
      buffer_.clear();
      Linger();
    }
  }

  void Linger() {
    stream_.async_read_some(buffer_.prepare(kReadChunk),
                            [self = this->shared_from_this()](const error_code& ec, size_t) {
                              if (ec) return self->Close();
                              self->Linger();
                            });
  }

  void Drain() {
    draining_ = true;
    switch (phase_) {
      case Phase::kHandshake:
        Close();  // the pending handshake fails and the session ends
        break;
      case Phase::kWaitRequest:
        Lowest().cancel();  // OnFirstBytes sees operation_aborted and closes politely
        break;
      default:
        break;  // the request in progress ends with "Connection: close"
    }
  }

  ServerImpl* const server_;
  const ServerOptions& opts_;
  std::uint64_t discard_remaining_ = 0;  // declared body bytes still to discard
  std::chrono::steady_clock::time_point discard_deadline_;
  const asio::any_io_executor executor_;
  std::shared_ptr<ssl::context> ctx_;  // the stream's SSL* refers to it; declared first
  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;

  Phase phase_ = Phase::kNew;
  bool draining_ = false;
  int requests_ = 0;
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool head_request_ = false;
  std::chrono::system_clock::time_point received_at_;

  std::string remote_ip_;
  uint16_t remote_port_ = 0;
  std::string tls_version_;
  std::string client_cert_der_;
};

ServerImpl::ServerImpl(const ServerOptions& options, Handler handler, AsyncHandler async_handler)
    : options_(options), handler_(std::move(handler)), async_handler_(std::move(async_handler)) {
  ioc_.emplace(options_.io_threads);  // concurrency hint
  work_.emplace(ioc_->get_executor());
  strand_.emplace(asio::make_strand(ioc_->get_executor()));
  acceptor_.emplace(*strand_);
  signals_.emplace(*strand_);
  poll_timer_.emplace(*strand_);
  drain_timer_.emplace(*strand_);
  accept_timer_.emplace(*strand_);
  pool_.emplace(static_cast<size_t>(async_handler_ ? 1 : options_.worker_threads));
}

ServerImpl::~ServerImpl() {
  {
    std::lock_guard lock(mu_);
    destroying_ = true;  // sessions dying from here on must not post to the io_context
  }
  {
    // Completions that arrived after the I/O threads stopped: drop them (and
    // the sessions they hold) while the io_context and the session registry
    // still exist.
    std::vector<std::function<void()>> late;
    {
      std::lock_guard lock(mailbox_mu_);
      late.swap(mailbox_);
    }
  }
  ioc_->stop();
  // Handlers still running (drain_timeout passed) are waited for; queued ones
  // are dropped. Their sessions die with them.
  pool_->stop();
  pool_->join();
  pool_.reset();
  accept_timer_.reset();
  drain_timer_.reset();
  poll_timer_.reset();
  signals_.reset();
  acceptor_.reset();
  strand_.reset();
  work_.reset();
  ioc_.reset();  // destroys pending handlers, and with them the last sessions
}

absl::Status ServerImpl::Init() {
  error_code ec;
  asio::ip::address addr = asio::ip::make_address(options_.host, ec);
  if (ec) {
    tcp::resolver resolver(*ioc_);
    auto results = resolver.resolve(options_.host, "", ec);
    if (ec || results.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot resolve listen host ", options_.host));
    }
    addr = results.begin()->endpoint().address();
  }
  if (options_.plain_http) {
    if (!IsLoopback(addr)) {
      return absl::InvalidArgumentError(
          "plain_http is only allowed on a loopback address (127.0.0.0/8 or ::1)");
    }
  } else {
    std::string stamp = internal::TlsFilesStamp(options_.tls);
    auto ctx = internal::NewServerTlsContext(options_.tls);
    if (!ctx.ok()) return ctx.status();
    tls_ctx_ = std::make_shared<ssl::context>(ctx->release());
    tls_stamp_ = std::move(stamp);
  }

  const tcp::endpoint endpoint(addr, options_.port);
  std::string where = absl::StrCat(addr.to_string(), ":", options_.port);
  if (acceptor_->open(endpoint.protocol(), ec)) {
    return absl::InternalError(absl::StrCat("socket for ", where, ": ", ec.message()));
  }
  acceptor_->set_option(asio::socket_base::reuse_address(true), ec);
  if (acceptor_->bind(endpoint, ec)) {
    return absl::UnavailableError(absl::StrCat("bind ", where, ": ", ec.message()));
  }
  if (acceptor_->listen(asio::socket_base::max_listen_connections, ec)) {
    return absl::UnavailableError(absl::StrCat("listen ", where, ": ", ec.message()));
  }
  port_ = acceptor_->local_endpoint(ec).port();

  if (options_.handle_signals) {
    signals_->add(SIGINT, ec);
    signals_->add(SIGTERM, ec);
    signals_->add(SIGHUP, ec);  // also in plain mode, where it only logs
    ArmSignals();
  }
  ArmCertPoll();
  DoAccept();
  return absl::OkStatus();
}

void ServerImpl::RunLoop() {
  for (;;) {
    try {
      ioc_->run();
      return;
    } catch (const std::exception& e) {
      // Handlers do not throw by design; keep serving if one does.
      spdlog::error("net: exception escaped the I/O loop: {}", e.what());
    }
  }
}

void ServerImpl::Run() {
  std::vector<std::thread> threads;
  for (int i = 1; i < options_.io_threads; ++i) threads.emplace_back([this] { RunLoop(); });
  RunLoop();
  for (auto& t : threads) t.join();
}

void ServerImpl::Stop() {
  asio::post(*strand_, [this] { BeginStop(); });
}

void ServerImpl::PostCompletion(std::function<void()> fn) {
  bool first = false;
  {
    std::lock_guard lock(mailbox_mu_);
    first = mailbox_.empty();
    mailbox_.push_back(std::move(fn));
  }
  if (!first) return;  // a drain is already on its way
  asio::post(*ioc_, [this] {
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard lock(mailbox_mu_);
      batch.swap(mailbox_);
    }
    for (auto& f : batch) f();
  });
}

void ServerImpl::InvokeAsync(HttpRequest&& request, Responder respond) {
  // `respond` must run exactly once; if the handler throws before calling it,
  // answer 500 here (a handler that throws after responding is a bug, and
  // the second call is dropped by the guard).
  auto once = std::make_shared<std::atomic<bool>>(false);
  Responder guarded = [once, respond = std::move(respond)](HttpResponse res) {
    if (!once->exchange(true)) respond(std::move(res));
  };
  try {
    async_handler_(std::move(request), guarded);
  } catch (...) {
    spdlog::error("net: handler threw; sending 500");
    HttpResponse res;
    res.status = 500;
    guarded(std::move(res));
  }
}

HttpResponse ServerImpl::Invoke(HttpRequest&& request) {
  try {
    return handler_(std::move(request));
  } catch (...) {
    spdlog::error("net: handler threw; sending 500");
    HttpResponse res;
    res.status = 500;
    return res;
  }
}

std::shared_ptr<ssl::context> ServerImpl::CurrentTlsContext() {
  std::lock_guard lock(mu_);
  return tls_ctx_;
}

absl::Status ServerImpl::ReloadCertificates() {
  if (options_.plain_http) return absl::FailedPreconditionError("plain HTTP has no certificates");
  absl::Status status = [&]() -> absl::Status {
    std::lock_guard reload_lock(reload_mu_);
    // Stamp before reading: a file replaced while we read is seen as changed by
    // the next poll and read again.
    std::string stamp = internal::TlsFilesStamp(options_.tls);
    auto ctx = internal::NewServerTlsContext(options_.tls);
    tls_stamp_ = std::move(stamp);
    if (!ctx.ok()) return ctx.status();
    auto next = std::make_shared<ssl::context>(ctx->release());
    {
      std::lock_guard lock(mu_);
      tls_ctx_.swap(next);
    }
    // `next` (the old context) is released here; open connections keep their own reference.
    return absl::OkStatus();
  }();
  if (options_.on_cert_reload) options_.on_cert_reload(status);
  return status;
}

bool ServerImpl::Register(const std::shared_ptr<SessionBase>& session) {
  std::lock_guard lock(mu_);
  if (stopping_.load(std::memory_order_relaxed)) return false;
  sessions_.emplace(session.get(), session);
  return true;
}

void ServerImpl::Unregister(SessionBase* session) {
  std::lock_guard lock(mu_);
  sessions_.erase(session);
  if (stopping_.load(std::memory_order_relaxed) && sessions_.empty() && !destroying_) {
    asio::post(*strand_, [this] { FinishDrain(); });
  }
}

void ServerImpl::DoAccept() {
  acceptor_->async_accept(
      asio::make_strand(ioc_->get_executor()),
      [this](const error_code& ec, tcp::socket socket) { OnAccept(ec, std::move(socket)); });
}

void ServerImpl::OnAccept(const error_code& ec, tcp::socket socket) {
  if (stop_begun_ || ec == asio::error::operation_aborted) return;
  if (ec) {
    // Typically EMFILE/ENFILE: back off instead of spinning on the error.
    spdlog::warn("net: accept: {}", ec.message());
    accept_timer_->expires_after(kAcceptRetryDelay);
    accept_timer_->async_wait([this](const error_code& wait_ec) {
      if (!wait_ec && !stop_begun_) DoAccept();
    });
    return;
  }
  error_code opt_ec;
  // Without TCP_NODELAY small responses wait for the peer's delayed ACK (Nagle).
  socket.set_option(tcp::no_delay(true), opt_ec);
  tcp::endpoint remote = socket.remote_endpoint(opt_ec);
  if (!opt_ec) {
    std::shared_ptr<SessionBase> session;
    if (options_.plain_http) {
      session = std::make_shared<Session<false>>(this, std::move(socket), remote, nullptr);
    } else {
      session =
          std::make_shared<Session<true>>(this, std::move(socket), remote, CurrentTlsContext());
    }
    if (Register(session)) session->Start();
  }
  DoAccept();
}

void ServerImpl::ArmSignals() {
  signals_->async_wait([this](const error_code& ec, int signo) {
    if (ec) return;
    if (signo == SIGHUP) {
      absl::Status status = ReloadCertificates();
      if (status.ok()) {
        spdlog::info("net: SIGHUP: TLS certificates reloaded");
      } else {
        spdlog::warn("net: SIGHUP: certificate reload failed, keeping the old ones: {}",
                     status.ToString());
      }
    } else if (!stop_begun_) {
      spdlog::info("net: signal {}: draining connections", signo);
      BeginStop();
    } else {
      spdlog::warn("net: signal {} during drain: stopping now", signo);
      FinishDrain();
    }
    if (!finished_) ArmSignals();
  });
}

void ServerImpl::ArmCertPoll() {
  if (options_.plain_http || options_.cert_poll_interval.count() <= 0 || stop_begun_) return;
  poll_timer_->expires_after(options_.cert_poll_interval);
  poll_timer_->async_wait([this](const error_code& ec) {
    if (ec || stop_begun_) return;
    bool changed;
    {
      std::lock_guard lock(reload_mu_);
      changed = internal::TlsFilesStamp(options_.tls) != tls_stamp_;
    }
    if (changed) {
      absl::Status status = ReloadCertificates();
      if (status.ok()) {
        spdlog::info("net: certificate files changed: reloaded");
      } else {
        spdlog::warn("net: certificate files changed but reload failed, keeping the old ones: {}",
                     status.ToString());
      }
    }
    ArmCertPoll();
  });
}

void ServerImpl::BeginStop() {
  if (stop_begun_) return;
  stop_begun_ = true;
  error_code ec;
  acceptor_->close(ec);
  accept_timer_->cancel();
  poll_timer_->cancel();
  std::vector<std::weak_ptr<SessionBase>> live;
  bool empty;
  {
    std::lock_guard lock(mu_);
    stopping_.store(true, std::memory_order_release);
    live.reserve(sessions_.size());
    for (const auto& [ptr, weak] : sessions_) live.push_back(weak);
    empty = sessions_.empty();
  }
  if (empty) return FinishDrain();
  for (const auto& weak : live) {
    if (auto session = weak.lock()) session->PostDrain();
  }
  drain_timer_->expires_after(options_.drain_timeout);
  drain_timer_->async_wait([this](const error_code& wait_ec) {
    if (wait_ec) return;
    size_t left;
    {
      std::lock_guard lock(mu_);
      left = sessions_.size();
    }
    spdlog::warn("net: drain timeout: abandoning {} connection(s)", left);
    FinishDrain();
  });
}

void ServerImpl::FinishDrain() {
  if (finished_) return;
  finished_ = true;
  drain_timer_->cancel();
  signals_->cancel();
  poll_timer_->cancel();
  work_.reset();
  ioc_->stop();
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpsServer>> HttpsServer::Create(const ServerOptions& options,
                                                                 Handler handler) {
  if (!handler) return absl::InvalidArgumentError("a handler is required");
  if (options.io_threads < 1 || options.worker_threads < 1) {
    return absl::InvalidArgumentError("io_threads and worker_threads must be at least 1");
  }
  auto server = std::make_unique<ServerImpl>(options, std::move(handler), nullptr);
  if (absl::Status status = server->Init(); !status.ok()) return status;
  return std::unique_ptr<HttpsServer>(std::move(server));
}

absl::StatusOr<std::unique_ptr<HttpsServer>> HttpsServer::Create(const ServerOptions& options,
                                                                 AsyncHandler handler) {
  if (!handler) return absl::InvalidArgumentError("a handler is required");
  if (options.io_threads < 1) return absl::InvalidArgumentError("io_threads must be at least 1");
  auto server = std::make_unique<ServerImpl>(options, nullptr, std::move(handler));
  if (absl::Status status = server->Init(); !status.ok()) return status;
  return std::unique_ptr<HttpsServer>(std::move(server));
}

}  // namespace fhirward::net
