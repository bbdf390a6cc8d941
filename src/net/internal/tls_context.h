// Server TLS context construction and certificate-file change detection.
// Boost-free so the policy can be read (and tested) without compiling Asio.
#ifndef FHIRWARD_NET_INTERNAL_TLS_CONTEXT_H_
#define FHIRWARD_NET_INTERNAL_TLS_CONTEXT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "net/server.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace fhirward::net::internal {

// TLS 1.2 suites when min_version is "1.2": forward-secret ECDHE with AEAD only.
inline constexpr char kTls12CipherList[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

struct SslCtxDeleter {
  void operator()(SSL_CTX* ctx) const;
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxDeleter>;

// A server SSL_CTX configured from `options`: protocol floor, cipher list,
// no compression or renegotiation, ALPN "http/1.1" only, client-certificate
// verification when client_ca_file is set. Fails (InvalidArgument) when a file
// cannot be read, the key is encrypted or does not match the certificate.
absl::StatusOr<SslCtxPtr> NewServerTlsContext(const TlsOptions& options);

// An opaque fingerprint (device, inode, size, mtime, ctime) of the certificate,
// key and client-CA files; it changes whenever one of them is replaced or edited.
std::string TlsFilesStamp(const TlsOptions& options);

}  // namespace fhirward::net::internal

#endif  // FHIRWARD_NET_INTERNAL_TLS_CONTEXT_H_
