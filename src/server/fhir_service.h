// The FHIR REST request pipeline (see ARCHITECTURE.md): transport checks,
// routing, content negotiation, authentication, rate limiting, authorization,
// execution against the ResourceStore, and an audit record that is durable
// before the response leaves.
//
// FhirService::Handle is the net::Handler; it never throws and is
// thread-safe.
#ifndef FHIRWARD_SERVER_FHIR_SERVICE_H_
#define FHIRWARD_SERVER_FHIR_SERVICE_H_

#include <memory>
#include <string>

#include "audit/audit_log.h"
#include "audit/audit_reader.h"
#include "common/clock.h"
#include "common/secret_bytes.h"
#include "fhir/validator.h"
#include "net/message.h"
#include "oauth/authorization_server.h"
#include "policy/policy.h"
#include "server/authenticator.h"
#include "server/config.h"
#include "server/policy_runtime.h"
#include "server/rate_limiter.h"
#include "store/resource_store.h"

namespace fhirward::server {

struct ServiceDeps {
  Config config;
  std::string base_url;  // no trailing slash
  store::ResourceStore* store = nullptr;
  audit::AuditLog* audit = nullptr;
  // The policy: `policies` (reloaded policy files) when set, else `policy`.
  const policy::PolicyEngine* policy = nullptr;
  PolicyRuntime* policies = nullptr;
  // Told about every successful write (cached relationships and consents).
  StorePolicyFacts* facts = nullptr;
  const Authenticator* authenticator = nullptr;
  RateLimiter* rate_limiter = nullptr;
  const SecretBytes* cursor_key = nullptr;  // authenticates paging cursors
  const Clock* clock = nullptr;
  // Validates created and updated resources (refused with 422 when
  // config.validation_mode is "strict") and serves $validate. When null, the
  // service uses a validator with default options.
  const fhir::Validator* validator = nullptr;
  // Reads the audit trail for AuditEvent read/search and the Merkle
  // operations; `audit_log_key` is published with each tree head.
  audit::AuditReader* audit_reader = nullptr;
  const jose::SigningKey* audit_log_key = nullptr;
  std::string node;  // names this node in audit records (host name)
  // Pseudonymises identifying search values in audit records (keyed hash).
  const SecretBytes* audit_pseudonym_key = nullptr;
  // The built-in authorization server; its paths (/token, /authorize,
  // /.well-known/*, ...) are routed to it when set.
  oauth::AuthorizationServer* oauth = nullptr;
};

class FhirService {
 public:
  explicit FhirService(ServiceDeps deps);
  ~FhirService();

  // Synchronous: blocks until the audit record is durable.
  net::HttpResponse Handle(net::HttpRequest&& request);

  // net::AsyncHandler: reads of one resource run inline on the calling (I/O)
  // thread; other requests on the service's worker pool. `respond` is called
  // once the audit record is durable, from the audit writer thread.
  void HandleAsync(net::HttpRequest&& request, net::Responder respond);

  // After the server stopped accepting: finishes the requests queued on the
  // worker pool (their audit records are appended). Close the audit log
  // after this and before destroying the service, so that every pending
  // audit callback runs while the service is alive.
  void Shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_FHIR_SERVICE_H_
