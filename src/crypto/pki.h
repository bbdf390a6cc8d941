// Development PKI: a local CA and a server certificate, generated on first
// start so `make run` serves HTTPS with no manual steps. Keys are P-256; CA key
// and server key files are written with mode 0600. Not for production use:
// operators configure their own certificate (docs/configuration.md).
#ifndef FHIRWARD_CRYPTO_PKI_H_
#define FHIRWARD_CRYPTO_PKI_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace fhirward::crypto {

struct DevPkiPaths {
  std::string ca_cert;      // DIR/ca.pem
  std::string ca_key;       // DIR/ca.key
  std::string server_cert;  // DIR/server.pem (leaf, then CA)
  std::string server_key;   // DIR/server.key
};

DevPkiPaths DevPkiIn(const std::string& dir);

// Creates DIR (0700) and the four files if ca.pem is missing; otherwise leaves
// them alone. Server certificate: SAN DNS:localhost, IP:127.0.0.1, IP:::1 plus
// `extra_hosts` (IPs or DNS names), valid 397 days, serverAuth.
absl::Status EnsureDevPki(const std::string& dir, const std::vector<std::string>& extra_hosts = {});

// Issues a client certificate (clientAuth, CN=`common_name`) signed by the
// development CA in DIR; writes OUT_PREFIX.pem and OUT_PREFIX.key (0600).
absl::Status IssueDevClientCert(const std::string& dir, const std::string& common_name,
                                const std::string& out_prefix);

}  // namespace fhirward::crypto

#endif  // FHIRWARD_CRYPTO_PKI_H_
