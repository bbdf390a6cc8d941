// A minimal HTTPS client for fetching small documents (external issuers'
// JWKS). Peer verification is always on: the system trust store, or
// `ca_file` when set; the host name (or IP) must match the certificate.
// TLS 1.2 or newer. One whole deadline covers resolve, connect, handshake,
// request and response. This header does not include Boost.
#ifndef FHIRWARD_NET_CLIENT_H_
#define FHIRWARD_NET_CLIENT_H_

#include <chrono>
#include <string>

#include "absl/status/statusor.h"

namespace fhirward::net {

struct FetchOptions {
  std::string ca_file;  // PEM bundle; empty: the system trust store
  std::chrono::milliseconds timeout{5000};
  size_t max_body_bytes = 1024 * 1024;
};

// GET an https:// URL; the body of a 200 response, else an error (kUnavailable).
absl::StatusOr<std::string> HttpsGet(const std::string& url, const FetchOptions& options);

}  // namespace fhirward::net

#endif  // FHIRWARD_NET_CLIENT_H_
