// Transport-independent HTTP messages. No Boost here: everything outside
// src/net sees only these structs and a Handler.
#ifndef FHIRWARD_NET_MESSAGE_H_
#define FHIRWARD_NET_MESSAGE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.h"

namespace fhirward::net {

using Headers = std::vector<std::pair<std::string, std::string>>;

// Case-insensitive header lookup: the first value, or nullopt.
std::optional<std::string_view> FindHeader(const Headers& headers, std::string_view name);

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // origin-form: path and query as received, e.g. "/Patient/1?_pretty=true"
  Headers headers;
  std::string body;
  std::string remote_ip;
  uint16_t remote_port = 0;
  std::string tls_version;      // "TLSv1.3", "TLSv1.2", or "" for plain HTTP
  std::string client_cert_der;  // DER of a verified client certificate, if any
  std::chrono::system_clock::time_point received_at;
  // Set when the transport refused the request before it was complete
  // (kBodyTooLarge, kHeadersTooLarge); the body is then empty and the
  // connection is closed after the response. The handler still answers and
  // audits it.
  std::optional<ErrorCode> transport_error;

  std::optional<std::string_view> header(std::string_view name) const {
    return FindHeader(headers, name);
  }
};

struct HttpResponse {
  int status = 200;
  Headers headers;
  std::string body;
  void SetHeader(std::string name, std::string value);
};

// Handles one request. Called on a worker thread (it may block on storage and
// on the audit group commit); must be thread-safe; must not throw.
using Handler = std::function<HttpResponse(HttpRequest&&)>;

// Completes one request; callable from any thread, exactly once.
using Responder = std::function<void(HttpResponse)>;

// Asynchronous handler: called on an I/O thread, so it must not block; work
// that blocks (storage writes, waiting for the audit commit) belongs on
// another thread, which then calls `respond`. Must call `respond` exactly
// once (the connection waits for it), and must not throw.
using AsyncHandler = std::function<void(HttpRequest&&, Responder)>;

}  // namespace fhirward::net

#endif  // FHIRWARD_NET_MESSAGE_H_
