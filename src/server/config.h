// Server configuration: defaults, TOML loading and validation.
// Loading throws nothing: errors are a Status naming the key. Every setting
// is documented in docs/configuration.md with its default.
#ifndef FHIRWARD_SERVER_CONFIG_H_
#define FHIRWARD_SERVER_CONFIG_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "audit/alerts.h"
#include "audit/sink.h"
#include "json/value.h"
#include "net/server.h"
#include "server/search.h"

namespace fhirward::server {

struct TrustedIssuer {
  std::string issuer;
  std::vector<std::string> audiences;  // empty: the server's base_url
  std::string jwks_file;               // a JWKS document on disk, or
  std::string jwks_url;                // an https:// URL, fetched at start and refreshed
  std::string jwks_ca_file;            // trust anchors for jwks_url (default: system store)
  // Algorithms accepted from this issuer (default ES256 and RS256); each key
  // is pinned to its own `alg` in any case.
  std::vector<std::string> algorithms;
};

struct Config {
  std::string data_dir;
  std::string listen = "127.0.0.1:8443";
  std::string base_url;  // public FHIR base; default https://localhost:<port> of listen
  std::string tenant = "default";

  // [tls]
  std::string tls_cert_file;  // default: DATA_DIR/tls/server.pem (generated)
  std::string tls_key_file;   // default: DATA_DIR/tls/server.key (generated)
  std::string tls_client_ca_file;
  std::string tls_min_version = "1.3";
  bool plain_http = false;  // loopback only; for benchmarks and debugging

  // [http]
  int io_threads = 2;
  int worker_threads = 32;
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 8 * 1024 * 1024;
  int header_timeout_ms = 10000;
  int body_timeout_ms = 30000;
  int idle_timeout_ms = 60000;
  int hsts_max_age = 63072000;

  // [json]
  json::Limits json_limits;

  // [fhir]
  bool update_create = true;
  bool require_if_match = false;
  int history_default_count = 50;
  int history_max_count = 500;
  int idempotency_ttl_seconds = 86400;

  // [keys]
  int key_unwrap_report_seconds = 3600;  // audited key-unwrap counts, once per period
  // [audit]
  int audit_tree_head_seconds =
      60;  // a signed tree head at least this often (when records were added)
  // Roles whose principals read the whole trail (AuditEvent search, proofs).
  std::vector<std::string> audit_reader_roles = {"auditor"};
  // [[audit.sink]]: SIEM export (audit/sink.h)
  std::vector<audit::SinkConfig> audit_sinks;
  // [[audit.alert]]: alert rules (audit/alerts.h)
  std::vector<audit::AlertRule> audit_alerts;
  // [retention]: resource type → days after its last update, then purged
  std::vector<std::pair<std::string, int>> retention_days;

  // [search]
  SearchLimits search;
  std::string search_default_total = "none";  // none | estimate | accurate
  int cursor_lifetime_seconds = 3600;

  // [bundle]
  int bundle_max_entries = 1000;
  int bundle_max_conditions = 100;  // conditions + distinct conditional references per bundle

  // [validation]
  std::string validation_mode = "strict";  // "strict": errors refuse writes (422); "off"
  bool validate_invariants = true;
  bool validate_bindings = true;
  size_t validation_max_issues = 100;
  std::vector<std::string> profile_packages;  // npm-format FHIR package directories

  // [auth]
  std::vector<TrustedIssuer> issuers;  // besides the instance's own issuer
  int token_cache_entries = 100000;
  int64_t max_token_lifetime_seconds = 86400;
  int clock_leeway_seconds = 30;
  int jwks_refresh_seconds = 300;

  // [oauth] the built-in authorization server
  bool oauth_enabled = true;
  // [policy]: the policy file (empty: built-in SMART scopes only), a candidate
  // evaluated in shadow mode, how often the files are checked for changes,
  // and how long relationships and consents read from the data are cached.
  std::string policy_file;
  std::string policy_candidate;
  int64_t policy_reload_seconds = 5;
  int64_t policy_cache_seconds = 30;
  int64_t oauth_access_token_seconds = 3600;  // 60-3600
  int64_t oauth_backend_token_seconds = 300;  // 30-300
  int64_t oauth_refresh_idle_seconds = 7 * 86400;
  int64_t oauth_refresh_absolute_seconds = 90 * 86400;
  int64_t oauth_session_idle_seconds = 900;  // automatic logoff
  int64_t oauth_session_absolute_seconds = 8 * 3600;
  int64_t oauth_max_login_failures = 5;
  int64_t oauth_lockout_seconds = 900;
  bool oauth_dpop_nonce_required = true;   // at the token endpoint
  bool oauth_dpop_nonce_resource = false;  // also at the FHIR API
  int oauth_argon2_memory_kib = 19456;
  int oauth_argon2_iterations = 2;
  std::string oauth_jwks_ca_file;  // trust for clients' jwks_uri

  // [store]
  size_t store_cache_bytes = 64 * 1024 * 1024;  // sealed newest versions kept in memory
  int store_read_connections = 8;
  // [rate_limit]
  double rate_per_second = 200;  // per principal (client id or subject)
  double rate_burst = 400;

  // [log]
  std::string log_level = "info";
};

// Reads FILE (TOML) over the defaults. An unknown key is an error (typos in
// security settings must not pass silently).
absl::StatusOr<Config> LoadConfig(const std::string& path, Config base);

// Checks ranges and combinations; LoadConfig calls it.
absl::Status Validate(const Config& config);

// Splits "HOST:PORT" ("[::1]:8443" for IPv6).
absl::Status ParseListen(const std::string& listen, std::string* host, uint16_t* port);

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_CONFIG_H_
