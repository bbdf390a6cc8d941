#include "server/config.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "common/error.h"
#include "fhir/resources.h"
#include "toml++/toml.h"

namespace fhirward::server {
namespace {

absl::Status Bad(const std::string& key, const std::string& why) {
  return Error(ErrorCode::kInvalidParameter, "config " + key + ": " + why);
}

template <typename T>
absl::Status Get(const toml::table& t, const std::string& section, const char* key, T* out) {
  const toml::node* n = t.get(key);
  if (!n) return absl::OkStatus();
  std::string name = section.empty() ? key : section + "." + key;
  if constexpr (std::is_same_v<T, bool>) {
    if (!n->is_boolean()) return Bad(name, "expected true or false");
    *out = n->as_boolean()->get();
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!n->is_string()) return Bad(name, "expected a string");
    *out = n->as_string()->get();
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    const toml::array* a = n->as_array();
    if (!a) return Bad(name, "expected an array of strings");
    out->clear();
    for (const toml::node& e : *a) {
      if (!e.is_string()) return Bad(name, "expected an array of strings");
      out->push_back(e.as_string()->get());
    }
  } else if constexpr (std::is_same_v<T, double>) {
    if (n->is_integer()) {
      *out = static_cast<double>(n->as_integer()->get());
    } else if (n->is_floating_point()) {
      *out = n->as_floating_point()->get();
    } else {
      return Bad(name, "expected a number");
    }
  } else {
    if (!n->is_integer()) return Bad(name, "expected an integer");
    int64_t v = n->as_integer()->get();
    if (v < 0) return Bad(name, "must not be negative");
    *out = static_cast<T>(v);
  }
  return absl::OkStatus();
}

absl::Status CheckKeys(const toml::table& t, const std::string& section,
                       std::set<std::string> allowed) {
  for (const auto& [k, v] : t) {
    std::string key(k.str());
    if (!allowed.count(key)) {
      return Bad(section.empty() ? key : section + "." + key, "unknown setting");
    }
  }
  return absl::OkStatus();
}

#define FW_TRY(expr)          \
  do {                        \
    absl::Status _s = (expr); \
    if (!_s.ok()) return _s;  \
  } while (0)

}  // namespace

absl::Status ParseListen(const std::string& listen, std::string* host, uint16_t* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return Bad("listen", "expected HOST:PORT");
  }
  std::string h = listen.substr(0, colon);
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  std::string p = listen.substr(colon + 1);
  if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos) {
    return Bad("listen", "bad port");
  }
  int v = std::stoi(p);
  if (v > 65535) return Bad("listen", "bad port");
  *host = h;
  *port = static_cast<uint16_t>(v);
  return absl::OkStatus();
}

absl::StatusOr<Config> LoadConfig(const std::string& path, Config c) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    return Error(ErrorCode::kInvalidParameter,
                 absl::StrCat("config ", path, " line ", e.source().begin.line, ": ",
                              std::string(e.description())));
  }
  FW_TRY(CheckKeys(root, "",
                   {"listen", "base_url", "tenant", "tls", "http", "json", "fhir", "search",
                    "bundle", "validation", "auth", "oauth", "policy", "store", "rate_limit", "log",
                    "keys", "retention", "audit"}));
  FW_TRY(Get(root, "", "listen", &c.listen));
  FW_TRY(Get(root, "", "base_url", &c.base_url));
  FW_TRY(Get(root, "", "tenant", &c.tenant));
  if (auto* t = root["tls"].as_table()) {
    FW_TRY(CheckKeys(*t, "tls",
                     {"cert_file", "key_file", "client_ca_file", "min_version", "plain_http"}));
    FW_TRY(Get(*t, "tls", "cert_file", &c.tls_cert_file));
    FW_TRY(Get(*t, "tls", "key_file", &c.tls_key_file));
    FW_TRY(Get(*t, "tls", "client_ca_file", &c.tls_client_ca_file));
    FW_TRY(Get(*t, "tls", "min_version", &c.tls_min_version));
    FW_TRY(Get(*t, "tls", "plain_http", &c.plain_http));
    if (c.tls_min_version != "1.3" && c.tls_min_version != "1.2") {
      return Bad("tls.min_version", "must be \"1.3\" or \"1.2\"");
    }
  }
  if (auto* t = root["http"].as_table()) {
    FW_TRY(CheckKeys(*t, "http",
                     {"io_threads", "worker_threads", "max_header_bytes", "max_body_bytes",
                      "header_timeout_ms", "body_timeout_ms", "idle_timeout_ms", "hsts_max_age"}));
    FW_TRY(Get(*t, "http", "io_threads", &c.io_threads));
    FW_TRY(Get(*t, "http", "worker_threads", &c.worker_threads));
    FW_TRY(Get(*t, "http", "max_header_bytes", &c.max_header_bytes));
    FW_TRY(Get(*t, "http", "max_body_bytes", &c.max_body_bytes));
    FW_TRY(Get(*t, "http", "header_timeout_ms", &c.header_timeout_ms));
    FW_TRY(Get(*t, "http", "body_timeout_ms", &c.body_timeout_ms));
    FW_TRY(Get(*t, "http", "idle_timeout_ms", &c.idle_timeout_ms));
    FW_TRY(Get(*t, "http", "hsts_max_age", &c.hsts_max_age));
    if (c.io_threads < 1 || c.worker_threads < 1) return Bad("http", "threads must be >= 1");
  }
  if (auto* t = root["json"].as_table()) {
    FW_TRY(CheckKeys(*t, "json",
                     {"max_depth", "max_string_bytes", "max_array_items", "max_object_members"}));
    FW_TRY(Get(*t, "json", "max_depth", &c.json_limits.max_depth));
    FW_TRY(Get(*t, "json", "max_string_bytes", &c.json_limits.max_string_bytes));
    FW_TRY(Get(*t, "json", "max_array_items", &c.json_limits.max_array_items));
    FW_TRY(Get(*t, "json", "max_object_members", &c.json_limits.max_object_members));
  }
  c.json_limits.max_total_bytes = c.max_body_bytes;
  if (auto* t = root["fhir"].as_table()) {
    FW_TRY(CheckKeys(*t, "fhir",
                     {"update_create", "require_if_match", "history_default_count",
                      "history_max_count", "idempotency_ttl_seconds"}));
    FW_TRY(Get(*t, "fhir", "update_create", &c.update_create));
    FW_TRY(Get(*t, "fhir", "require_if_match", &c.require_if_match));
    FW_TRY(Get(*t, "fhir", "history_default_count", &c.history_default_count));
    FW_TRY(Get(*t, "fhir", "history_max_count", &c.history_max_count));
    FW_TRY(Get(*t, "fhir", "idempotency_ttl_seconds", &c.idempotency_ttl_seconds));
  }
  if (auto* t = root["keys"].as_table()) {
    FW_TRY(CheckKeys(*t, "keys", {"unwrap_report_seconds"}));
    FW_TRY(Get(*t, "keys", "unwrap_report_seconds", &c.key_unwrap_report_seconds));
    if (c.key_unwrap_report_seconds < 60 || c.key_unwrap_report_seconds > 86400) {
      return Bad("keys.unwrap_report_seconds", "must be 60..86400");
    }
  }
  if (auto* t = root["audit"].as_table()) {
    FW_TRY(CheckKeys(*t, "audit", {"tree_head_seconds", "reader_roles", "sink", "alert"}));
    if (const toml::node* alerts = t->get("alert")) {
      const toml::array* arr = alerts->as_array();
      if (arr == nullptr) return Bad("audit.alert", "expected [[audit.alert]] tables");
      for (const toml::node& n : *arr) {
        const toml::table* at = n.as_table();
        if (at == nullptr) return Bad("audit.alert", "expected [[audit.alert]] tables");
        audit::AlertRule r;
        const std::string sec = "audit.alert";
        FW_TRY(CheckKeys(
            *at, sec,
            {"name", "kind", "by", "threshold", "patients", "resources", "window_seconds",
             "bucket_seconds", "alpha", "z", "warmup_buckets", "min_requests", "min_patients"}));
        FW_TRY(Get(*at, sec, "name", &r.name));
        FW_TRY(Get(*at, sec, "kind", &r.kind));
        FW_TRY(Get(*at, sec, "by", &r.by));
        FW_TRY(Get(*at, sec, "threshold", &r.threshold));
        FW_TRY(Get(*at, sec, "patients", &r.patients));
        FW_TRY(Get(*at, sec, "resources", &r.resources));
        FW_TRY(Get(*at, sec, "window_seconds", &r.window_seconds));
        FW_TRY(Get(*at, sec, "bucket_seconds", &r.bucket_seconds));
        FW_TRY(Get(*at, sec, "alpha", &r.alpha));
        FW_TRY(Get(*at, sec, "z", &r.z));
        FW_TRY(Get(*at, sec, "warmup_buckets", &r.warmup_buckets));
        FW_TRY(Get(*at, sec, "min_requests", &r.min_requests));
        FW_TRY(Get(*at, sec, "min_patients", &r.min_patients));
        if (auto s = audit::CheckAlertRule(r); !s.ok()) return Bad(sec, std::string(s.message()));
        for (const audit::AlertRule& other : c.audit_alerts) {
          if (other.name == r.name) return Bad(sec, "rule \"" + r.name + "\" is defined twice");
        }
        c.audit_alerts.push_back(std::move(r));
      }
    }
    if (const toml::node* sinks = t->get("sink")) {
      const toml::array* arr = sinks->as_array();
      if (arr == nullptr) return Bad("audit.sink", "expected [[audit.sink]] tables");
      for (const toml::node& n : *arr) {
        const toml::table* st = n.as_table();
        if (st == nullptr) return Bad("audit.sink", "expected [[audit.sink]] tables");
        audit::SinkConfig sc;
        FW_TRY(CheckKeys(
            *st, "audit.sink",
            {"name", "type", "path", "max_bytes", "keep", "host", "port", "transport", "ca_file",
             "server_name", "cert_file", "key_file", "records", "url", "secret_file"}));
        FW_TRY(Get(*st, "audit.sink", "records", &sc.records));
        FW_TRY(Get(*st, "audit.sink", "url", &sc.url));
        FW_TRY(Get(*st, "audit.sink", "secret_file", &sc.secret_file));
        FW_TRY(Get(*st, "audit.sink", "name", &sc.name));
        FW_TRY(Get(*st, "audit.sink", "type", &sc.type));
        FW_TRY(Get(*st, "audit.sink", "path", &sc.path));
        FW_TRY(Get(*st, "audit.sink", "max_bytes", &sc.max_bytes));
        FW_TRY(Get(*st, "audit.sink", "keep", &sc.keep));
        FW_TRY(Get(*st, "audit.sink", "host", &sc.host));
        FW_TRY(Get(*st, "audit.sink", "port", &sc.port));
        FW_TRY(Get(*st, "audit.sink", "transport", &sc.transport));
        FW_TRY(Get(*st, "audit.sink", "ca_file", &sc.ca_file));
        FW_TRY(Get(*st, "audit.sink", "server_name", &sc.server_name));
        FW_TRY(Get(*st, "audit.sink", "cert_file", &sc.cert_file));
        FW_TRY(Get(*st, "audit.sink", "key_file", &sc.key_file));
        if (auto s = audit::CheckSinkConfig(sc); !s.ok()) {
          return Bad("audit.sink", std::string(s.message()));
        }
        c.audit_sinks.push_back(std::move(sc));
      }
    }
    FW_TRY(Get(*t, "audit", "tree_head_seconds", &c.audit_tree_head_seconds));
    if (c.audit_tree_head_seconds < 1 || c.audit_tree_head_seconds > 86400) {
      return Bad("audit.tree_head_seconds", "must be 1..86400");
    }
    FW_TRY(Get(*t, "audit", "reader_roles", &c.audit_reader_roles));
  }
  if (auto* t = root["retention"].as_table()) {
    for (const auto& [k, v] : *t) {
      std::string type(k.str());
      if (!fhir::IsResourceType(type)) {
        return Bad("retention." + type, "is not an R4 resource type");
      }
      if (!v.is_integer() || v.as_integer()->get() < 1 || v.as_integer()->get() > 36500) {
        return Bad("retention." + type, "must be a number of days, 1..36500");
      }
      c.retention_days.emplace_back(type, static_cast<int>(v.as_integer()->get()));
    }
  }
  if (auto* t = root["search"].as_table()) {
    FW_TRY(CheckKeys(*t, "search",
                     {"default_count", "max_count", "max_params", "max_values", "max_chain_depth",
                      "max_includes", "max_included", "max_window", "time_budget_ms",
                      "default_total", "cursor_lifetime_seconds"}));
    FW_TRY(Get(*t, "search", "default_count", &c.search.default_count));
    FW_TRY(Get(*t, "search", "max_count", &c.search.max_count));
    FW_TRY(Get(*t, "search", "max_params", &c.search.max_params));
    FW_TRY(Get(*t, "search", "max_values", &c.search.max_values));
    FW_TRY(Get(*t, "search", "max_chain_depth", &c.search.max_chain_depth));
    FW_TRY(Get(*t, "search", "max_includes", &c.search.max_includes));
    FW_TRY(Get(*t, "search", "max_included", &c.search.max_included));
    FW_TRY(Get(*t, "search", "max_window", &c.search.max_window));
    FW_TRY(Get(*t, "search", "time_budget_ms", &c.search.time_budget_ms));
    FW_TRY(Get(*t, "search", "default_total", &c.search_default_total));
    FW_TRY(Get(*t, "search", "cursor_lifetime_seconds", &c.cursor_lifetime_seconds));
  }
  if (auto* t = root["policy"].as_table()) {
    FW_TRY(CheckKeys(*t, "policy", {"file", "candidate", "reload_seconds", "cache_seconds"}));
    FW_TRY(Get(*t, "policy", "file", &c.policy_file));
    FW_TRY(Get(*t, "policy", "candidate", &c.policy_candidate));
    FW_TRY(Get(*t, "policy", "reload_seconds", &c.policy_reload_seconds));
    FW_TRY(Get(*t, "policy", "cache_seconds", &c.policy_cache_seconds));
    if (c.policy_reload_seconds < 1 || c.policy_reload_seconds > 3600) {
      return Error(ErrorCode::kInvalidParameter, "policy.reload_seconds must be 1..3600");
    }
    if (c.policy_cache_seconds < 0 || c.policy_cache_seconds > 300) {
      return Error(ErrorCode::kInvalidParameter, "policy.cache_seconds must be 0..300");
    }
  }
  if (auto* t = root["oauth"].as_table()) {
    FW_TRY(CheckKeys(
        *t, "oauth",
        {"enabled", "access_token_seconds", "backend_token_seconds", "refresh_idle_seconds",
         "refresh_absolute_seconds", "session_idle_seconds", "session_absolute_seconds",
         "max_login_failures", "lockout_seconds", "dpop_nonce_required", "dpop_nonce_resource",
         "argon2_memory_kib", "argon2_iterations", "jwks_ca_file"}));
    FW_TRY(Get(*t, "oauth", "enabled", &c.oauth_enabled));
    FW_TRY(Get(*t, "oauth", "access_token_seconds", &c.oauth_access_token_seconds));
    FW_TRY(Get(*t, "oauth", "backend_token_seconds", &c.oauth_backend_token_seconds));
    FW_TRY(Get(*t, "oauth", "refresh_idle_seconds", &c.oauth_refresh_idle_seconds));
    FW_TRY(Get(*t, "oauth", "refresh_absolute_seconds", &c.oauth_refresh_absolute_seconds));
    FW_TRY(Get(*t, "oauth", "session_idle_seconds", &c.oauth_session_idle_seconds));
    FW_TRY(Get(*t, "oauth", "session_absolute_seconds", &c.oauth_session_absolute_seconds));
    FW_TRY(Get(*t, "oauth", "max_login_failures", &c.oauth_max_login_failures));
    FW_TRY(Get(*t, "oauth", "lockout_seconds", &c.oauth_lockout_seconds));
    FW_TRY(Get(*t, "oauth", "dpop_nonce_required", &c.oauth_dpop_nonce_required));
    FW_TRY(Get(*t, "oauth", "dpop_nonce_resource", &c.oauth_dpop_nonce_resource));
    FW_TRY(Get(*t, "oauth", "argon2_memory_kib", &c.oauth_argon2_memory_kib));
    FW_TRY(Get(*t, "oauth", "argon2_iterations", &c.oauth_argon2_iterations));
    FW_TRY(Get(*t, "oauth", "jwks_ca_file", &c.oauth_jwks_ca_file));
  }
  if (auto* t = root["bundle"].as_table()) {
    FW_TRY(CheckKeys(*t, "bundle", {"max_entries", "max_conditions"}));
    FW_TRY(Get(*t, "bundle", "max_entries", &c.bundle_max_entries));
    FW_TRY(Get(*t, "bundle", "max_conditions", &c.bundle_max_conditions));
  }
  if (auto* t = root["validation"].as_table()) {
    FW_TRY(CheckKeys(*t, "validation",
                     {"mode", "invariants", "bindings", "max_issues", "profile_packages"}));
    FW_TRY(Get(*t, "validation", "mode", &c.validation_mode));
    FW_TRY(Get(*t, "validation", "invariants", &c.validate_invariants));
    FW_TRY(Get(*t, "validation", "bindings", &c.validate_bindings));
    FW_TRY(Get(*t, "validation", "max_issues", &c.validation_max_issues));
    if (const toml::node* n = t->get("profile_packages")) {
      const toml::array* dirs = n->as_array();
      if (dirs == nullptr) return Bad("validation.profile_packages", "expected an array of paths");
      c.profile_packages.clear();
      for (const toml::node& d : *dirs) {
        if (!d.is_string()) return Bad("validation.profile_packages", "expected strings");
        c.profile_packages.push_back(d.as_string()->get());
      }
    }
  }
  if (auto* t = root["auth"].as_table()) {
    FW_TRY(CheckKeys(*t, "auth",
                     {"issuers", "token_cache_entries", "max_token_lifetime_seconds",
                      "clock_leeway_seconds", "jwks_refresh_seconds"}));
    FW_TRY(Get(*t, "auth", "jwks_refresh_seconds", &c.jwks_refresh_seconds));
    FW_TRY(Get(*t, "auth", "token_cache_entries", &c.token_cache_entries));
    FW_TRY(Get(*t, "auth", "max_token_lifetime_seconds", &c.max_token_lifetime_seconds));
    FW_TRY(Get(*t, "auth", "clock_leeway_seconds", &c.clock_leeway_seconds));
    if (auto* arr = (*t)["issuers"].as_array()) {
      for (size_t i = 0; i < arr->size(); ++i) {
        auto* it = arr->get(i)->as_table();
        std::string sec = "auth.issuers[" + std::to_string(i) + "]";
        if (!it) return Bad(sec, "expected a table");
        FW_TRY(CheckKeys(
            *it, sec,
            {"issuer", "audiences", "jwks_file", "jwks_url", "jwks_ca_file", "algorithms"}));
        TrustedIssuer ti;
        FW_TRY(Get(*it, sec, "issuer", &ti.issuer));
        FW_TRY(Get(*it, sec, "jwks_file", &ti.jwks_file));
        FW_TRY(Get(*it, sec, "jwks_url", &ti.jwks_url));
        FW_TRY(Get(*it, sec, "jwks_ca_file", &ti.jwks_ca_file));
        if (auto* algs = (*it)["algorithms"].as_array()) {
          for (auto& a : *algs) {
            if (!a.is_string()) return Bad(sec + ".algorithms", "expected strings");
            ti.algorithms.push_back(a.as_string()->get());
          }
        }
        if (auto* auds = (*it)["audiences"].as_array()) {
          for (auto& a : *auds) {
            if (!a.is_string()) return Bad(sec + ".audiences", "expected strings");
            ti.audiences.push_back(a.as_string()->get());
          }
        }
        if (ti.issuer.empty()) return Bad(sec + ".issuer", "required");
        if (ti.jwks_file.empty() == ti.jwks_url.empty()) {
          return Bad(sec, "exactly one of jwks_file and jwks_url is required");
        }
        if (!ti.jwks_url.empty() && ti.jwks_url.rfind("https://", 0) != 0) {
          return Bad(sec + ".jwks_url", "must be an https:// URL");
        }
        c.issuers.push_back(std::move(ti));
      }
    }
  }
  if (auto* t = root["store"].as_table()) {
    FW_TRY(CheckKeys(*t, "store", {"cache_bytes", "read_connections"}));
    FW_TRY(Get(*t, "store", "cache_bytes", &c.store_cache_bytes));
    FW_TRY(Get(*t, "store", "read_connections", &c.store_read_connections));
  }
  if (auto* t = root["rate_limit"].as_table()) {
    FW_TRY(CheckKeys(*t, "rate_limit", {"per_second", "burst"}));
    FW_TRY(Get(*t, "rate_limit", "per_second", &c.rate_per_second));
    FW_TRY(Get(*t, "rate_limit", "burst", &c.rate_burst));
  }
  if (auto* t = root["log"].as_table()) {
    FW_TRY(CheckKeys(*t, "log", {"level"}));
    FW_TRY(Get(*t, "log", "level", &c.log_level));
  }
  FW_TRY(Validate(c));
  return c;
}

absl::Status Validate(const Config& c) {
  std::string host;
  uint16_t port = 0;
  FW_TRY(ParseListen(c.listen, &host, &port));
  if (!c.base_url.empty() && c.base_url.rfind("https://", 0) != 0 &&
      c.base_url.rfind("http://", 0) != 0) {
    return Bad("base_url", "must be an http(s):// URL");
  }
  if (c.tls_min_version != "1.3" && c.tls_min_version != "1.2") {
    return Bad("tls.min_version", "must be \"1.3\" or \"1.2\"");
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    return Bad("tls", "cert_file and key_file go together");
  }
  if (c.io_threads < 1 || c.io_threads > 256) return Bad("http.io_threads", "must be 1-256");
  if (c.worker_threads < 1 || c.worker_threads > 1024) {
    return Bad("http.worker_threads", "must be 1-1024");
  }
  if (c.max_header_bytes < 1024) return Bad("http.max_header_bytes", "must be at least 1024");
  if (c.max_body_bytes < 1024) return Bad("http.max_body_bytes", "must be at least 1024");
  if (c.header_timeout_ms < 100 || c.body_timeout_ms < 100 || c.idle_timeout_ms < 100) {
    return Bad("http", "timeouts must be at least 100 ms");
  }
  if (c.json_limits.max_depth < 2 || c.json_limits.max_depth > 1000) {
    return Bad("json.max_depth", "must be 2-1000");
  }
  if (c.history_default_count < 1 || c.history_max_count < c.history_default_count) {
    return Bad("fhir.history_default_count", "must be >= 1 and <= fhir.history_max_count");
  }
  if (c.search.default_count < 1 || c.search.max_count < c.search.default_count) {
    return Bad("search.default_count", "must be >= 1 and <= search.max_count");
  }
  // Every patient a response carries is named in its audit record (the
  // patients' accounting of disclosures, mass-access alerts): a page may not
  // carry more resources than a record can name.
  if (static_cast<int64_t>(c.search.max_count) + c.search.max_included >
      static_cast<int64_t>(audit::AuditRecord::kMaxPatients)) {
    return Bad("search.max_count",
               "search.max_count + search.max_included must be at most " +
                   std::to_string(audit::AuditRecord::kMaxPatients) +
                   " (every patient a page carries is named in its audit record)");
  }
  if (c.history_max_count > static_cast<int>(audit::AuditRecord::kMaxPatients)) {
    return Bad("fhir.history_max_count",
               "must be at most " + std::to_string(audit::AuditRecord::kMaxPatients));
  }
  if (c.search.max_params < 1 || c.search.max_values < 1 || c.search.max_chain_depth < 0 ||
      c.search.max_chain_depth > 4 || c.search.max_includes < 0 || c.search.max_included < 0) {
    return Bad("search", "limits must be >= 1 (max_chain_depth 0-4, includes >= 0)");
  }
  if (c.search.max_window < c.search.max_count) {
    return Bad("search.max_window", "must be >= search.max_count");
  }
  if (c.search.time_budget_ms < 10) return Bad("search.time_budget_ms", "must be at least 10");
  if (c.search_default_total != "none" && c.search_default_total != "estimate" &&
      c.search_default_total != "accurate") {
    return Bad("search.default_total", "must be none, estimate or accurate");
  }
  if (c.cursor_lifetime_seconds < 10) {
    return Bad("search.cursor_lifetime_seconds", "must be at least 10");
  }
  if (c.oauth_access_token_seconds < 60 || c.oauth_access_token_seconds > 3600) {
    return Bad("oauth.access_token_seconds", "must be 60-3600");
  }
  if (c.oauth_backend_token_seconds < 30 || c.oauth_backend_token_seconds > 300) {
    return Bad("oauth.backend_token_seconds", "must be 30-300");
  }
  if (c.oauth_refresh_idle_seconds < 60 ||
      c.oauth_refresh_absolute_seconds < c.oauth_refresh_idle_seconds) {
    return Bad("oauth.refresh_idle_seconds", "must be >= 60 and <= refresh_absolute_seconds");
  }
  if (c.oauth_session_idle_seconds < 10 ||
      c.oauth_session_absolute_seconds < c.oauth_session_idle_seconds) {
    return Bad("oauth.session_idle_seconds", "must be >= 10 and <= session_absolute_seconds");
  }
  if (c.oauth_max_login_failures < 1 || c.oauth_lockout_seconds < 1) {
    return Bad("oauth.max_login_failures", "failures and lockout must be >= 1");
  }
  if (c.oauth_argon2_memory_kib < 8192 || c.oauth_argon2_memory_kib > 1048576 ||
      c.oauth_argon2_iterations < 1 || c.oauth_argon2_iterations > 16) {
    return Bad("oauth.argon2_memory_kib", "memory must be 8192-1048576 KiB, iterations 1-16");
  }
  if (c.bundle_max_entries < 1 || c.bundle_max_entries > 100000) {
    return Bad("bundle.max_entries", "must be 1-100000");
  }
  if (c.bundle_max_conditions < 0 || c.bundle_max_conditions > 100000) {
    return Bad("bundle.max_conditions", "must be 0-100000");
  }
  if (c.idempotency_ttl_seconds < 1) {
    return Bad("fhir.idempotency_ttl_seconds", "must be at least 1");
  }
  if (c.validation_mode != "strict" && c.validation_mode != "off") {
    return Bad("validation.mode", "must be \"strict\" or \"off\"");
  }
  if (c.validation_max_issues < 1 || c.validation_max_issues > 10000) {
    return Bad("validation.max_issues", "must be between 1 and 10000");
  }
  if (c.tenant.empty() || c.tenant.size() > 64 ||
      c.tenant.find_first_not_of(
          "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != std::string::npos) {
    return Bad("tenant", "must be 1-64 letters, digits or '-'");
  }
  if (c.max_token_lifetime_seconds < 60) {
    return Bad("auth.max_token_lifetime_seconds", "must be at least 60");
  }
  if (c.clock_leeway_seconds > 300) return Bad("auth.clock_leeway_seconds", "must be <= 300");
  if (c.store_read_connections < 1 || c.store_read_connections > 256) {
    return Bad("store.read_connections", "must be 1-256");
  }
  if (c.token_cache_entries < 1) return Bad("auth.token_cache_entries", "must be >= 1");
  if (c.rate_per_second > 0 && c.rate_burst < 1) return Bad("rate_limit.burst", "must be >= 1");
  static const std::set<std::string> kLevels = {"debug", "info", "warn", "error", "off"};
  if (!kLevels.count(c.log_level)) return Bad("log.level", "debug, info, warn, error or off");
  return absl::OkStatus();
}

}  // namespace fhirward::server
