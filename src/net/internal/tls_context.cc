#include "net/internal/tls_context.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/stat.h>

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fhirward::net::internal {
namespace {

// The reason of the most recent OpenSSL error (file names and library reasons
// only, never key material), and a clean error queue for the next caller.
std::string OpenSslReason() {
  unsigned long err = ERR_peek_last_error();
  std::string reason = "unknown error";
  if (err != 0) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    reason = buf;
  }
  ERR_clear_error();
  return reason;
}

// An encrypted key must fail to load instead of OpenSSL prompting on the
// terminal (which would hang a SIGHUP reload).
int NoPassword(char*, int, int, void*) { return 0; }

// RFC 7301 §3.2: we speak HTTP/1.1 only; a client that offers ALPN without it
// gets a fatal no_application_protocol alert. No ALPN at all is fine.
int SelectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
               unsigned int inlen, void*) {
  static constexpr char kHttp11[] = "http/1.1";
  constexpr unsigned kLen = sizeof(kHttp11) - 1;
  for (unsigned i = 0; i < inlen;) {
    unsigned len = in[i];
    if (i + 1 + len > inlen) break;
    if (len == kLen && std::memcmp(in + i + 1, kHttp11, kLen) == 0) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(kLen);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

void AppendStamp(const std::string& path, std::string& out) {
  if (path.empty()) return;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    absl::StrAppend(&out, "missing;");
    return;
  }
  absl::StrAppend(&out, st.st_dev, ":", st.st_ino, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                  st.st_mtim.tv_nsec, ":", st.st_ctim.tv_sec, ".", st.st_ctim.tv_nsec, ";");
}

}  // namespace

void SslCtxDeleter::operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }

absl::StatusOr<SslCtxPtr> NewServerTlsContext(const TlsOptions& options) {
  const bool tls12 = options.min_version == "1.2";
  if (!tls12 && options.min_version != "1.3") {
    return absl::InvalidArgumentError("tls.min_version must be \"1.3\" or \"1.2\"");
  }
  if (options.cert_file.empty() || options.key_file.empty()) {
    return absl::InvalidArgumentError("tls.cert_file and tls.key_file are required");
  }
  if (options.require_client_cert && options.client_ca_file.empty()) {
    return absl::InvalidArgumentError("tls.require_client_cert needs tls.client_ca_file");
  }
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) return absl::InternalError(absl::StrCat("SSL_CTX_new: ", OpenSslReason()));
  SSL_CTX* c = ctx.get();

  if (SSL_CTX_set_min_proto_version(c, tls12 ? TLS1_2_VERSION : TLS1_3_VERSION) != 1) {
    return absl::InternalError(absl::StrCat("min protocol version: ", OpenSslReason()));
  }
  if (tls12 && SSL_CTX_set_cipher_list(c, kTls12CipherList) != 1) {
    return absl::InternalError(absl::StrCat("cipher list: ", OpenSslReason()));
  }
  // Session tickets stay on: TLS 1.3 resumption saves a full handshake per
  // reconnect. Tickets are keyed per context, so a reload invalidates them.
  SSL_CTX_set_options(
      c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_default_passwd_cb(c, NoPassword);
  // Without a session id context, resuming a session on a context that verifies
  // client certificates fails the handshake (SSL_R_SESSION_ID_CONTEXT_UNINITIALIZED).
  static constexpr unsigned char kSessionIdContext[] = "fhirward";
  SSL_CTX_set_session_id_context(c, kSessionIdContext, sizeof(kSessionIdContext) - 1);
  SSL_CTX_set_alpn_select_cb(c, SelectAlpn, nullptr);

  if (SSL_CTX_use_certificate_chain_file(c, options.cert_file.c_str()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load certificate chain ", options.cert_file, ": ", OpenSslReason()));
  }
  if (SSL_CTX_use_PrivateKey_file(c, options.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load private key ", options.key_file, ": ", OpenSslReason()));
  }
  if (SSL_CTX_check_private_key(c) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("private key does not match the certificate");
  }

  if (!options.client_ca_file.empty()) {
    const char* ca = options.client_ca_file.c_str();
    if (SSL_CTX_load_verify_locations(c, ca, nullptr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot load client CA ", options.client_ca_file, ": ", OpenSslReason()));
    }
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(ca);
    if (names == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("no CA names in ", options.client_ca_file, ": ", OpenSslReason()));
    }
    SSL_CTX_set_client_CA_list(c, names);  // takes ownership
    int mode = SSL_VERIFY_PEER;
    if (options.require_client_cert) mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify(c, mode, nullptr);
  }
  return ctx;
}

std::string TlsFilesStamp(const TlsOptions& options) {
  std::string out;
  AppendStamp(options.cert_file, out);
  AppendStamp(options.key_file, out);
  AppendStamp(options.client_ca_file, out);
  return out;
}

}  // namespace fhirward::net::internal
