// Beast is confined to src/net: this file and https_server.cc.
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <charconv>

#include "common/error.h"
#include "net/client.h"

namespace fhirward::net {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct Url {
  std::string host;
  std::string port = "443";
  std::string target = "/";
};

absl::StatusOr<Url> ParseHttpsUrl(const std::string& url) {
  constexpr std::string_view kScheme = "https://";
  if (url.rfind(kScheme, 0) != 0) {
    return Error(ErrorCode::kInvalidParameter, "only https:// URLs can be fetched");
  }
  std::string_view rest = std::string_view(url).substr(kScheme.size());
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  Url u;
  if (slash != std::string_view::npos) u.target = std::string(rest.substr(slash));
  if (authority.find('@') != std::string_view::npos) {
    return Error(ErrorCode::kInvalidParameter, "credentials in URLs are refused");
  }
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return Error(ErrorCode::kInvalidParameter, "bad URL");
    u.host = std::string(authority.substr(1, close - 1));
    authority.remove_prefix(close + 1);
    if (!authority.empty()) {
      if (authority.front() != ':') return Error(ErrorCode::kInvalidParameter, "bad URL");
      u.port = std::string(authority.substr(1));
    }
  } else {
    size_t colon = authority.rfind(':');
    u.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) u.port = std::string(authority.substr(colon + 1));
  }
  int port = 0;
  auto [end, ec] = std::from_chars(u.port.data(), u.port.data() + u.port.size(), port);
  if (u.host.empty() || ec != std::errc() || end != u.port.data() + u.port.size() || port < 1 ||
      port > 65535) {
    return Error(ErrorCode::kInvalidParameter, "bad URL");
  }
  return u;
}

}  // namespace

absl::StatusOr<std::string> HttpsGet(const std::string& url, const FetchOptions& options) {
  auto u = ParseHttpsUrl(url);
  if (!u.ok()) return u.status();
  try {
    asio::io_context ioc;
    asio::ssl::context ctx(asio::ssl::context::tls_client);
    SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
    ctx.set_verify_mode(asio::ssl::verify_peer);
    if (options.ca_file.empty()) {
      ctx.set_default_verify_paths();
    } else {
      ctx.load_verify_file(options.ca_file);
    }
    beast::ssl_stream<beast::tcp_stream> stream(ioc, ctx);
    SSL* ssl = stream.native_handle();
    beast::error_code addr_ec;
    asio::ip::make_address(u->host, addr_ec);
    if (addr_ec) {
      SSL_set_tlsext_host_name(ssl, u->host.c_str());
      SSL_set1_host(ssl, u->host.c_str());
    } else {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), u->host.c_str());
    }

    beast::error_code ec;
    bool done = false;
    auto step = [&](auto&& start) {
      done = false;
      start();
      ioc.restart();
      ioc.run();
      return !ec && done;
    };
    beast::get_lowest_layer(stream).expires_after(options.timeout);
    tcp::resolver resolver(ioc);
    tcp::resolver::results_type endpoints;
    if (!step([&] {
          resolver.async_resolve(u->host, u->port,
                                 [&](beast::error_code e, tcp::resolver::results_type r) {
                                   ec = e;
                                   endpoints = std::move(r);
                                   done = true;
                                 });
        })) {
      return Error(ErrorCode::kUnavailable, "cannot resolve " + u->host);
    }
    if (!step([&] {
          beast::get_lowest_layer(stream).async_connect(
              endpoints, [&](beast::error_code e, const tcp::endpoint&) {
                ec = e;
                done = true;
              });
        })) {
      return Error(ErrorCode::kUnavailable, "cannot connect to " + u->host);
    }
    if (!step([&] {
          stream.async_handshake(asio::ssl::stream_base::client, [&](beast::error_code e) {
            ec = e;
            done = true;
          });
        })) {
      return Error(ErrorCode::kUnavailable, "TLS handshake with " + u->host + " failed");
    }
    http::request<http::empty_body> req{http::verb::get, u->target, 11};
    req.set(http::field::host, u->host);
    req.set(http::field::user_agent, "fhirward");
    req.set(http::field::accept, "application/json, application/jwk-set+json");
    req.set(http::field::connection, "close");
    if (!step([&] {
          http::async_write(stream, req, [&](beast::error_code e, size_t) {
            ec = e;
            done = true;
          });
        })) {
      return Error(ErrorCode::kUnavailable, "cannot send request to " + u->host);
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(options.max_body_bytes);
    if (!step([&] {
          http::async_read(stream, buffer, parser, [&](beast::error_code e, size_t) {
            ec = e;
            done = true;
          });
        })) {
      return Error(ErrorCode::kUnavailable, "no valid response from " + u->host);
    }
    auto res = parser.release();
    if (res.result_int() != 200) {
      return Error(ErrorCode::kUnavailable,
                   u->host + " answered " + std::to_string(res.result_int()));
    }
    return std::move(res.body());
  } catch (const std::exception& e) {
    return Error(ErrorCode::kUnavailable, std::string("fetch failed: ") + e.what());
  }
}

}  // namespace fhirward::net
