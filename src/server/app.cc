#include "server/app.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "audit/alerts.h"
#include "audit/audit_log.h"
#include "audit/audit_reader.h"
#include "audit/sink.h"
#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "crypto/pki.h"
#include "fhir/profiles.h"
#include "fhir/validator.h"
#include "json/value.h"
#include "net/client.h"
#include "net/server.h"
#include "oauth/authorization_server.h"
#include "oauth/key_ring.h"
#include "oauth/oauth_store.h"
#include "oauth/revocation.h"
#include "policy/policy.h"
#include "server/authenticator.h"
#include "server/config.h"
#include "server/fhir_service.h"
#include "server/instance.h"
#include "server/key_admin.h"
#include "server/log.h"
#include "server/rate_limiter.h"
#include "store/resource_store.h"

namespace fhirward::server {
namespace {

// A record of the server's own act (no request behind it), outcome success.
audit::AuditRecord ServerRecord(std::string action, std::string resource_type = {}) {
  audit::AuditRecord r;
  r.time = FormatInstant(SystemClock::Get().Now());
  r.request_id = RandomUuid();
  r.subject = "fhirward-server";
  r.action = std::move(action);
  r.resource_type = std::move(resource_type);
  r.outcome = "success";
  return r;
}

// "PATH sha256=HEX" (or "PATH unreadable"), for the trail.
std::string FileDigest(const std::string& path) {
  auto d = crypto::Sha256File(path);
  return path + (d.ok() ? " sha256=" + HexEncode(*d) : " unreadable");
}

// The configured public base (no trailing slash): absolute references to it are
// indexed as references. Empty when the base is only known after binding
// (listen port 0); such references are then indexed as URLs.
std::string StoreBaseUrl(std::string base) {
  while (!base.empty() && base.back() == '/') base.pop_back();
  return base;
}

constexpr int64_t kMaxMintTtl = 86400;

std::string PublicHost(const std::string& host) {
  if (host == "0.0.0.0" || host == "::" || host.empty()) return "localhost";
  if (host.find(':') != std::string::npos) return "[" + host + "]";
  return host;
}

// Keeps only keys whose algorithm the issuer is allowed to use.
absl::StatusOr<jose::KeySet> ParseJwks(const std::string& text, const TrustedIssuer& ti,
                                       const std::string& where) {
  auto doc = json::Parse(text);
  if (!doc.ok()) return Error(ErrorCode::kInvalidParameter, "JWKS " + where + " is not JSON");
  auto all = jose::KeySet::FromJwks(*doc);
  if (!all.ok()) return all.status();
  std::vector<std::string> allowed = ti.algorithms;
  if (allowed.empty()) allowed = {"ES256", "ES384", "RS256", "RS384", "PS256", "EdDSA"};
  jose::KeySet keys;
  for (const auto& k : all->keys()) {
    if (std::find(allowed.begin(), allowed.end(), jose::AlgorithmName(k.alg())) != allowed.end()) {
      keys.Add(k);
    }
  }
  return keys;
}

absl::StatusOr<jose::KeySet> LoadJwks(const TrustedIssuer& ti) {
  if (!ti.jwks_url.empty()) {
    net::FetchOptions fo;
    fo.ca_file = ti.jwks_ca_file;
    auto body = net::HttpsGet(ti.jwks_url, fo);
    if (!body.ok()) return body.status();
    return ParseJwks(*body, ti, ti.jwks_url);
  }
  std::ifstream in(ti.jwks_file, std::ios::binary);
  if (!in) return Error(ErrorCode::kInvalidParameter, "cannot read JWKS file " + ti.jwks_file);
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseJwks(ss.str(), ti, ti.jwks_file);
}

// Re-reads issuers' JWKS (files and URLs) on a schedule, and early (at most
// every 30 s per issuer) when a token names an unknown key id.
class JwksRefresher {
 public:
  JwksRefresher(std::vector<TrustedIssuer> issuers, Authenticator* auth, int interval_seconds)
      : issuers_(std::move(issuers)), auth_(auth), interval_(std::max(10, interval_seconds)) {
    if (issuers_.empty()) return;
    auth_->OnUnknownKid([this](const std::string& issuer) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        wanted_ = issuer;
      }
      cv_.notify_all();
    });
    thread_ = std::thread([this] { Loop(); });
  }
  ~JwksRefresher() {
    if (!thread_.joinable()) return;
    auth_->OnUnknownKid(nullptr);
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  void Refresh(const TrustedIssuer& ti) {
    auto keys = LoadJwks(ti);
    if (!keys.ok()) {
      LogEvent(LogLevel::kWarn, "jwks_refresh_failed",
               {{"issuer", LogValue(ti.issuer)}, {"reason", LogValue(DetailOf(keys.status()))}});
      return;
    }
    auth_->SetKeys(ti.issuer, std::move(*keys));
  }
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    auto next = std::chrono::steady_clock::now() + std::chrono::seconds(interval_);
    std::map<std::string, std::chrono::steady_clock::time_point> last_early;
    while (!stop_) {
      cv_.wait_until(lock, next, [this] { return stop_ || !wanted_.empty(); });
      if (stop_) break;
      std::string wanted = std::move(wanted_);
      wanted_.clear();
      lock.unlock();
      auto now = std::chrono::steady_clock::now();
      for (const auto& ti : issuers_) {
        if (!wanted.empty()) {
          if (ti.issuer != wanted) continue;
          auto& last = last_early[ti.issuer];
          if (now - last < std::chrono::seconds(30)) continue;
          last = now;
        }
        Refresh(ti);
      }
      if (wanted.empty()) next = now + std::chrono::seconds(interval_);
      lock.lock();
    }
  }
  std::vector<TrustedIssuer> issuers_;
  Authenticator* auth_;
  int interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string wanted_;
  bool stop_ = false;
  std::thread thread_;
};

// Authorization-server upkeep: picks up signing-key rotations made with the
// CLI (and publishes the keys to the resource server), copies revocations
// made on other nodes, drops expired sessions, codes and grants.
class OAuthMaintenance {
 public:
  OAuthMaintenance(oauth::SigningKeyRing* ring, oauth::OAuthStore* store,
                   oauth::RevocationList* revocations, oauth::AuthorizationServer* server,
                   Authenticator* auth, std::vector<std::string> own_issuers)
      : ring_(ring),
        store_(store),
        revocations_(revocations),
        server_(server),
        auth_(auth),
        own_(std::move(own_issuers)) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~OAuthMaintenance() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    int64_t last_purge = 0;
    while (!stop_) {
      lock.unlock();
      const int64_t now = SystemClock::Get().NowSeconds();
      auto changed = ring_->ReloadIfChanged(now);
      if (!changed.ok()) {
        LogEvent(LogLevel::kWarn, "signing_keys_reload_failed",
                 {{"reason", LogValue(DetailOf(changed.status()))}});
      }
      // Also on a schedule: keys retire by time, not only by manifest change.
      for (const auto& iss : own_) auth_->SetKeys(iss, ring_->Published(now));
      (void)revocations_->Sync(*store_, now);
      if (now - last_purge >= 60) {
        last_purge = now;
        if (server_) server_->Sweep();
        (void)store_->Purge(now);
      }
      lock.lock();
      cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; });
    }
  }
  oauth::SigningKeyRing* ring_;
  oauth::OAuthStore* store_;
  oauth::RevocationList* revocations_;
  oauth::AuthorizationServer* server_;
  Authenticator* auth_;
  std::vector<std::string> own_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// Deletes expired idempotency records every few minutes until stopped.
class Janitor {
 public:
  Janitor(store::ResourceStore* store, int ttl_seconds, crypto::KeyRing* keyring,
          int unwrap_report_seconds, std::string tenant,
          std::vector<std::pair<std::string, int>> retention, audit::AuditLog* audit,
          crypto::VersionedKek* kek)
      : kek_(kek),
        store_(store),
        ttl_(ttl_seconds),
        keyring_(keyring),
        report_(unwrap_report_seconds),
        tenant_(std::move(tenant)),
        retention_(std::move(retention)),
        audit_(audit) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~Janitor() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      lock.unlock();
      auto cutoff = SystemClock::Get().Now() - std::chrono::seconds(ttl_);
      if (auto s = store_->ExpireIdempotency(FormatInstant(cutoff)); !s.ok()) {
        LogEvent(LogLevel::kWarn, "idempotency_expiry_failed", {});
      }
      Purge();
      // A KEK version made by `fhirward keys rotate-kek` is used for new wraps.
      if (auto s = kek_->Reload(); !s.ok()) {
        LogEvent(LogLevel::kWarn, "kek_reload_failed", {});
      }
      // The audited count of key unwraps, once per period.
      if (std::chrono::steady_clock::now() - last_report_ >= std::chrono::seconds(report_)) {
        keyring_->ReportUnwrapCount();
        last_report_ = std::chrono::steady_clock::now();
      }
      lock.lock();
      cv_.wait_for(lock, std::chrono::seconds(std::min(300, report_)), [this] { return stop_; });
    }
  }
  // Retention: resources past their type's period are removed, in batches,
  // each batch audited.
  void Purge() {
    for (const auto& [type, days] : retention_) {
      auto cutoff = FormatInstant(SystemClock::Get().Now() - std::chrono::hours(24) * days);
      for (int round = 0; round < 100; ++round) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (stop_) return;
        }
        auto due = store_->PurgeBefore(tenant_, type, cutoff, 500, /*dry_run=*/true);
        if (!due.ok() || *due == 0) break;
        // The purge is on the trail before anything goes; no trail, no purge.
        audit::AuditRecord r = ServerRecord("retention.purge", type);
        r.count = static_cast<int64_t>(*due);
        r.outcome = "requested";
        r.decision = "older than " + std::to_string(days) + " days (before " + cutoff + ")";
        if (!audit_->Append(r).ok()) {
          LogEvent(LogLevel::kWarn, "retention_purge_unaudited",
                   {{"resource_type", LogValue(type)}});
          return;
        }
        auto n = store_->PurgeBefore(tenant_, type, cutoff, 500);
        r.request_id = RandomUuid();
        r.time = FormatInstant(SystemClock::Get().Now());
        r.outcome = n.ok() ? "success" : "failed";
        r.count = n.ok() ? static_cast<int64_t>(*n) : 0;
        (void)audit_->Append(r);
        if (!n.ok()) {
          LogEvent(LogLevel::kWarn, "retention_purge_failed", {{"resource_type", LogValue(type)}});
          break;
        }
        if (*n == 0) break;
        LogEvent(
            LogLevel::kInfo, "retention_purged",
            {{"resource_type", LogValue(type)}, {"count", LogValue(static_cast<int64_t>(*n))}});
      }
    }
  }
  crypto::VersionedKek* kek_;
  store::ResourceStore* store_;
  int ttl_;
  crypto::KeyRing* keyring_;
  int report_;
  std::string tenant_;
  std::vector<std::pair<std::string, int>> retention_;
  audit::AuditLog* audit_;
  std::chrono::steady_clock::time_point last_report_ = std::chrono::steady_clock::now();
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// At most `max` + 1 bytes of `in`: enough for the JSON reader to refuse an
// oversized document without holding all of it.
std::string ReadAtMost(std::istream& in, size_t max) {
  std::string text;
  char buf[64 * 1024];
  while (text.size() <= max && in.read(buf, sizeof buf).gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
  }
  if (text.size() > max + 1) text.resize(max + 1);
  return text;
}

// The profiles of [validation] profile_packages (null when none are configured).
absl::StatusOr<std::unique_ptr<fhir::ProfileSet>> LoadProfiles(const Config& config) {
  if (config.profile_packages.empty()) return std::unique_ptr<fhir::ProfileSet>();
  auto set = fhir::ProfileSet::Load(config.profile_packages);
  if (!set.ok()) {
    return fhirward::Error(ErrorCode::kInvalidRequest,
                           "validation.profile_packages: " + DetailOf(set.status()));
  }
  return set;
}

fhir::ValidatorOptions ValidatorOptionsFor(const Config& config, const fhir::ProfileSet* profiles) {
  fhir::ValidatorOptions o;
  o.check_invariants = config.validate_invariants;
  o.check_bindings = config.validate_bindings;
  o.max_issues = config.validation_max_issues;
  o.profiles = profiles;
  return o;
}

}  // namespace

absl::StatusOr<int> ValidateFiles(const ValidateArgs& args, std::ostream& out) {
  Config config;
  if (!args.config_file.empty()) {
    auto loaded = LoadConfig(args.config_file, config);
    if (!loaded.ok()) return loaded.status();
    config = std::move(*loaded);
  }
  auto profiles = LoadProfiles(config);
  if (!profiles.ok()) return profiles.status();
  fhir::Validator validator(ValidatorOptionsFor(config, profiles->get()));
  int failed = 0;
  for (const std::string& file : args.files) {
    std::string text;
    if (file == "-") {
      text = ReadAtMost(std::cin, config.json_limits.max_total_bytes);
    } else {
      std::ifstream in(file, std::ios::binary);
      if (!in) {
        out << file << ": cannot be read\n";
        ++failed;
        continue;
      }
      text = ReadAtMost(in, config.json_limits.max_total_bytes);
    }
    auto doc = json::Parse(text, config.json_limits);
    if (!doc.ok()) {
      out << file << ": 1 errors, 0 warnings\n  error  [json] " << DetailOf(doc.status()) << "\n";
      ++failed;
      continue;
    }
    fhir::ValidationReport report = validator.Validate(*doc);
    if (!report.valid()) ++failed;
    if (args.outcome_json) {
      out << json::Write(report.ToOperationOutcome(), {.pretty = true}) << "\n";
      continue;
    }
    if (report.valid()) {
      out << file << ": OK (0 errors, " << report.warnings << " warnings)\n";
    } else {
      out << file << ": " << report.errors << " errors, " << report.warnings << " warnings\n";
    }
    for (const fhir::ValidationIssue& i : report.issues) {
      out << "  " << fhir::SeverityName(i.severity) << "  [" << i.rule << "] " << i.expression
          << ": " << i.message << "\n";
    }
    if (report.truncated) out << "  (more findings not listed)\n";
  }
  return failed;
}

absl::Status Serve(const ServeArgs& args) {
  Config config;
  if (!args.config_file.empty()) {
    auto loaded = LoadConfig(args.config_file, config);
    if (!loaded.ok()) return loaded.status();
    config = std::move(*loaded);
  }
  if (!args.listen.empty()) config.listen = args.listen;
  config.data_dir = args.data_dir;
  if (config.data_dir.empty()) return Error(ErrorCode::kInvalidParameter, "--data-dir is required");
  if (!InitLogging(config.log_level)) {
    return Error(ErrorCode::kInvalidParameter, "config log.level: unknown level");
  }
  std::string host;
  uint16_t port = 0;
  if (auto s = ParseListen(config.listen, &host, &port); !s.ok()) return s;

  std::string default_issuer = config.base_url.empty()
                                   ? "https://localhost:" + std::to_string(port ? port : 8443)
                                   : config.base_url;
  auto instance = Instance::Open(config.data_dir, /*create=*/true, default_issuer);
  if (!instance.ok()) return instance.status();
  const Instance& inst = **instance;

  if (config.tls_cert_file.empty() || config.tls_key_file.empty()) {
    std::vector<std::string> hosts;
    if (host != "localhost" && host != "127.0.0.1" && host != "0.0.0.0" && host != "::") {
      hosts.push_back(host);
    }
    if (auto s = crypto::EnsureDevPki(inst.tls_dir(), hosts); !s.ok()) return s;
    crypto::DevPkiPaths pki = crypto::DevPkiIn(inst.tls_dir());
    if (config.tls_cert_file.empty()) config.tls_cert_file = pki.server_cert;
    if (config.tls_key_file.empty()) config.tls_key_file = pki.server_key;
  }

  auto store = store::OpenSqliteStore({.path = inst.resource_db_path(),
                                       .kek = &inst.kek(),
                                       .keyring = &inst.keyring(),
                                       .read_connections = config.store_read_connections,
                                       .cache_bytes = config.store_cache_bytes,
                                       .index_key = &inst.blind_index_key(),
                                       .base_url = StoreBaseUrl(config.base_url)});
  if (!store.ok()) return store.status();
  // SIEM export: one thread per sink reading committed records from its
  // cursor (audit/sink.h); the writer tells it about each commit.
  char host_name[256] = {0};
  if (gethostname(host_name, sizeof host_name - 1) != 0) host_name[0] = '\0';
  audit::ExporterOptions export_options;
  export_options.state_dir = inst.data_dir() + "/audit/sinks";
  export_options.hostname = host_name;
  export_options.on_event = [](const audit::SinkEvent& e) {
    LogEvent(e.up ? LogLevel::kInfo : LogLevel::kWarn, e.up ? "audit_sink_up" : "audit_sink_down",
             {{"sink", LogValue(e.sink)},
              {"pending", LogValue(e.pending)},
              {"detail", LogValue(e.detail)}});
  };
  std::atomic<audit::AuditExporter*> exporter_ptr{nullptr};
  std::atomic<audit::AlertEngine*> alerts_ptr{nullptr};
  audit::AuditOptions audit_options;
  audit_options.on_commit = [&exporter_ptr, &alerts_ptr](int64_t) {
    if (audit::AuditExporter* e = exporter_ptr.load()) e->Notify();
    if (audit::AlertEngine* a = alerts_ptr.load()) a->Notify();
  };
  audit_options.tree_head_key = &inst.audit_log_key();
  audit_options.log_id = inst.issuer();
  audit_options.tree_head_interval = std::chrono::seconds(config.audit_tree_head_seconds);
  auto audit_log =
      audit::AuditLog::Open(inst.audit_db_path(), inst.audit_mac_key().Clone(), audit_options);
  if (!audit_log.ok()) return audit_log.status();
  auto audit_reader = audit::AuditReader::Open(inst.audit_db_path());
  if (!audit_reader.ok()) return audit_reader.status();
  auto exporter =
      audit::AuditExporter::Start(inst.audit_db_path(), config.audit_sinks, export_options);
  if (!exporter.ok()) return exporter.status();
  exporter_ptr = exporter->get();
  // Alert rules run over the committed trail and append alert.* records.
  std::unique_ptr<audit::AlertEngine> alert_engine;
  if (!config.audit_alerts.empty()) {
    audit::AlertEngineOptions alert_options;
    alert_options.cursor_path = inst.data_dir() + "/audit/alerts.cursor";
    alert_options.node = host_name;
    alert_options.on_alert = [](int64_t seq, const audit::AuditRecord& a) {
      // Who and what stay in the trail; the log says which rule, and where to look.
      LogEvent(LogLevel::kWarn, "security_alert",
               {{"rule", LogValue(a.action.substr(6))}, {"audit_seq", LogValue(seq)}});
    };
    auto engine = audit::AlertEngine::Start(inst.audit_db_path(), audit_log->get(),
                                            config.audit_alerts, alert_options);
    if (!engine.ok()) return engine.status();
    alert_engine = std::move(*engine);
    alerts_ptr = alert_engine.get();
  }

  const int64_t start_time = SystemClock::Get().NowSeconds();
  auto oauth_store = oauth::OAuthStore::Open(inst.oauth_db_path());
  if (!oauth_store.ok()) return oauth_store.status();
  auto ring = oauth::SigningKeyRing::Open(inst.keys_dir(), inst.signing_kid(), start_time);
  if (!ring.ok()) return ring.status();
  oauth::RevocationList revocations;
  if (auto s = revocations.Sync(**oauth_store, start_time); !s.ok()) return s;
  // Separate single-use caches, so that filling one (e.g. with DPoP proofs at
  // the token endpoint) cannot make the others fail closed.
  jose::ReplayCache assertion_replay;
  jose::ReplayCache token_dpop_replay;
  jose::ReplayCache replay;  // DPoP proofs at the FHIR API
  jose::DpopNonces nonces(std::string(inst.dpop_nonce_key().UnsafeView()), 300);

  AuthenticatorOptions auth_options;
  auth_options.revocations = &revocations;
  auth_options.dpop_replay = &replay;
  if (config.oauth_dpop_nonce_resource) auth_options.dpop_nonces = &nonces;
  auth_options.leeway_seconds = config.clock_leeway_seconds;
  auth_options.max_lifetime_seconds = config.max_token_lifetime_seconds;
  auth_options.cache_entries = static_cast<size_t>(std::max(1, config.token_cache_entries));

  net::ServerOptions so;
  so.host = host;
  so.port = port;
  so.io_threads = config.io_threads;
  so.worker_threads = config.worker_threads;
  so.plain_http = config.plain_http;
  so.tls.cert_file = config.tls_cert_file;
  so.tls.key_file = config.tls_key_file;
  so.tls.client_ca_file = config.tls_client_ca_file;
  so.tls.min_version = config.tls_min_version;
  so.max_header_bytes = config.max_header_bytes;
  so.max_body_bytes = config.max_body_bytes;
  so.header_timeout = std::chrono::milliseconds(config.header_timeout_ms);
  so.body_timeout = std::chrono::milliseconds(config.body_timeout_ms);
  so.idle_timeout = std::chrono::milliseconds(config.idle_timeout_ms);
  // A new certificate, or a refused one, is on the trail (asynchronously: this
  // runs on an I/O thread).
  so.on_cert_reload = [log = audit_log->get(), cert = config.tls_cert_file](const absl::Status& s) {
    audit::AuditRecord r = ServerRecord("tls.reload", "Certificate");
    r.outcome = s.ok() ? "success" : "failed";
    r.status_code = s.ok() ? 200 : 500;
    if (!s.ok()) r.error = "certificate_refused";
    r.decision =
        FileDigest(cert) +
        (s.ok() ? "" : "; kept the previous one: " + std::string(s.message()).substr(0, 500));
    log->AppendAsync(r, [](absl::StatusOr<int64_t> seq) {
      if (!seq.ok()) LogEvent(LogLevel::kError, "tls_reload_unaudited", {});
    });
  };

  // The service needs the real port (for links) before it can be built, and
  // the server needs the handler: bind late. No request arrives before Run().
  std::unique_ptr<FhirService> service;
  auto server = net::HttpsServer::Create(
      so, net::AsyncHandler([&service](net::HttpRequest&& r, net::Responder respond) {
        service->HandleAsync(std::move(r), std::move(respond));
      }));
  if (!server.ok()) return server.status();
  const uint16_t bound = (*server)->port();
  std::string scheme = config.plain_http ? "http" : "https";
  std::string base_url = config.base_url.empty()
                             ? "https://" + PublicHost(host) + ":" + std::to_string(bound)
                             : config.base_url;
  while (!base_url.empty() && base_url.back() == '/') base_url.pop_back();

  // The instance's own tokens: minted by the CLI (issuer from instance.json)
  // and issued by the authorization server (issuer = the public base URL).
  std::vector<std::string> own_issuers = {inst.issuer()};
  if (base_url != inst.issuer()) own_issuers.push_back(base_url);
  for (const std::string& iss : own_issuers) {
    IssuerTrust own;
    own.issuer = iss;
    own.audiences = {inst.audience()};
    if (base_url != inst.audience()) own.audiences.push_back(base_url);
    own.keys = (*ring)->Published(start_time);
    own.required_typ = "at+jwt";
    own.own = true;
    auth_options.issuers.push_back(std::move(own));
  }
  for (const TrustedIssuer& ti : config.issuers) {
    IssuerTrust t;
    t.issuer = ti.issuer;
    t.audiences = ti.audiences.empty() ? std::vector<std::string>{base_url} : ti.audiences;
    auto keys = LoadJwks(ti);
    if (keys.ok()) {
      t.keys = std::move(*keys);
    } else if (!ti.jwks_url.empty()) {
      // An unreachable identity provider must not keep the server down: its
      // tokens are refused until the refresher gets its keys.
      LogEvent(LogLevel::kWarn, "jwks_fetch_failed",
               {{"issuer", LogValue(ti.issuer)}, {"reason", LogValue(DetailOf(keys.status()))}});
    } else {
      return keys.status();
    }
    auth_options.issuers.push_back(std::move(t));
  }
  Authenticator authenticator(std::move(auth_options), &SystemClock::Get());
  JwksRefresher refresher(config.issuers, &authenticator, config.jwks_refresh_seconds);
  RateLimiter limiter(config.rate_per_second, config.rate_burst);
  std::unique_ptr<policy::PolicyEngine> policy = policy::NewScopePolicyEngine();
  auto break_glass = BreakGlassStore::Open(inst.policy_db_path(), &inst.kek());
  if (!break_glass.ok()) return break_glass.status();
  StorePolicyFacts facts(store->get(), config.tenant, break_glass->get(), &SystemClock::Get(),
                         config.policy_cache_seconds);
  // Which policy decided is in every record; which file it came from, and
  // every change of it (a refused one too), is on the trail as policy.load.
  auto policies = PolicyRuntime::Open(
      {config.policy_file, config.policy_candidate, config.policy_reload_seconds}, &facts,
      &SystemClock::Get(), [log = audit_log->get()](const PolicyLoadEvent& e) {
        audit::AuditRecord r = ServerRecord("policy.load", "Policy");
        r.resource_id = e.enforced;
        r.policy_id = e.enforced;
        r.outcome = e.ok ? "success" : "failed";
        r.status_code = e.ok ? 200 : 422;
        if (!e.ok) r.error = "policy_refused";
        r.decision = "enforced=" + (e.enforced.empty() ? std::string("-") : e.enforced) +
                     " candidate=" + (e.candidate.empty() ? std::string("-") : e.candidate) +
                     (e.files.empty() ? "" : " files: " + e.files) +
                     (e.ok ? "" : " refused: " + e.error);
        if (!log->Append(r).ok()) {
          LogEvent(LogLevel::kError, "policy_load_unaudited", {{"policy", LogValue(e.enforced)}});
        }
      });
  if (!policies.ok()) return policies.status();
  auto profiles = LoadProfiles(config);
  if (!profiles.ok()) return profiles.status();
  fhir::Validator validator(ValidatorOptionsFor(config, profiles->get()));

  ServiceDeps deps;
  deps.config = config;
  deps.base_url = base_url;
  deps.store = store->get();
  deps.audit = audit_log->get();
  deps.audit_reader = audit_reader->get();
  deps.audit_log_key = &inst.audit_log_key();
  deps.audit_pseudonym_key = &inst.session_key();
  deps.node = host_name;
  deps.policy = policy.get();
  deps.policies = policies->get();
  deps.facts = &facts;
  deps.authenticator = &authenticator;
  deps.rate_limiter = &limiter;
  deps.cursor_key = &inst.cursor_key();
  deps.clock = &SystemClock::Get();
  deps.validator = &validator;
  std::unique_ptr<oauth::AuthorizationServer> auth_server;
  if (config.oauth_enabled) {
    oauth::AuthServerOptions ao;
    ao.issuer = base_url;
    ao.access_token_seconds = config.oauth_access_token_seconds;
    ao.backend_token_seconds = config.oauth_backend_token_seconds;
    ao.refresh_idle_seconds = config.oauth_refresh_idle_seconds;
    ao.refresh_absolute_seconds = config.oauth_refresh_absolute_seconds;
    ao.session_idle_seconds = config.oauth_session_idle_seconds;
    ao.session_absolute_seconds = config.oauth_session_absolute_seconds;
    ao.max_login_failures = config.oauth_max_login_failures;
    ao.lockout_seconds = config.oauth_lockout_seconds;
    ao.dpop_nonce_required = config.oauth_dpop_nonce_required;
    ao.argon2.m_cost_kib = static_cast<uint32_t>(config.oauth_argon2_memory_kib);
    ao.argon2.t_cost = static_cast<uint32_t>(config.oauth_argon2_iterations);
    ao.jwks_ca_file = config.oauth_jwks_ca_file;
    oauth::AuthServerDeps ad;
    ad.store = oauth_store->get();
    ad.keys = ring->get();
    ad.audit = audit_log->get();
    ad.kek = &inst.kek();
    ad.clock = &SystemClock::Get();
    ad.revocations = &revocations;
    ad.replay = &assertion_replay;
    ad.dpop_replay = &token_dpop_replay;
    ad.nonces = &nonces;
    ad.session_key = &inst.session_key();
    auth_server = std::make_unique<oauth::AuthorizationServer>(std::move(ao), ad);
    deps.oauth = auth_server.get();
  }
  service = std::make_unique<FhirService>(std::move(deps));
  OAuthMaintenance maintenance(ring->get(), oauth_store->get(), &revocations, auth_server.get(),
                               &authenticator, own_issuers);

  audit::AuditRecord start = ServerRecord("server-start");
  start.node = host_name;
  // Which configuration and certificate this run has.
  if (!args.config_file.empty()) start.decision = "config " + FileDigest(args.config_file);
  if (!config.plain_http) {
    start.decision +=
        (start.decision.empty() ? "" : "; ") + ("tls_cert " + FileDigest(config.tls_cert_file));
  }
  if (auto s = (*audit_log)->Append(start); !s.ok()) return s.status();

  // Key events of the running server (data keys created on first use, unwrap
  // counts) go to the audit trail as the server's own acts.
  inst.keyring().SetEventSink([log = audit_log->get()](const crypto::KeyEvent& e) {
    if (auto s = log->Append(KeyEventRecord(e, "fhirward-server")); !s.ok()) {
      LogEvent(LogLevel::kError, "key_event_unaudited", {{"action", LogValue(e.action)}});
    }
  });
  auto janitor =
      std::make_unique<Janitor>(store->get(), config.idempotency_ttl_seconds, &inst.keyring(),
                                config.key_unwrap_report_seconds, config.tenant,
                                config.retention_days, audit_log->get(), &inst.versioned_kek());
  LogEvent(LogLevel::kInfo, "listening",
           {{"url", LogValue(scheme + "://" + PublicHost(host) + ":" + std::to_string(bound))},
            {"tls_min_version", LogValue(config.tls_min_version)}});
  std::printf("listening on %s://%s:%u\n", scheme.c_str(), PublicHost(host).c_str(),
              static_cast<unsigned>(bound));
  std::fflush(stdout);
  FlushLogs();

  (*server)->Run();
  // No request arrives any more. In order: finish what the worker pool still
  // holds (each appends its audit record); record the stop; close the audit
  // log, which flushes every pending record and runs its callbacks while the
  // service is alive (responses to connections already gone are dropped by
  // the server); only then destroy the service. The server is destroyed last.
  service->Shutdown();
  janitor.reset();  // no purge or key report after the audit log closes
  inst.keyring().ReportUnwrapCount();
  inst.keyring().SetEventSink(nullptr);
  audit::AuditRecord stop = ServerRecord("server-stop");
  stop.node = host_name;
  (void)(*audit_log)->Append(stop);
  // The alert engine appends to the log: it stops first (what it has not
  // evaluated yet is evaluated at the next start, from its cursor).
  alerts_ptr = nullptr;
  if (alert_engine) alert_engine->Stop();
  (*audit_log)->Close();
  // Ship what the sinks have not delivered yet (the stop, the last tree head
  // covers it) for a few seconds; the rest waits in the log for the next start.
  exporter_ptr = nullptr;
  (*exporter)->Stop(std::chrono::milliseconds(3000));
  service.reset();
  LogEvent(LogLevel::kInfo, "stopped", {});
  FlushLogs();
  return absl::OkStatus();
}

absl::StatusOr<std::string> MintToken(const MintArgs& args) {
  if (args.subject.empty()) return Error(ErrorCode::kInvalidParameter, "--sub is required");
  if (args.ttl_seconds < 1 || args.ttl_seconds > kMaxMintTtl) {
    return Error(ErrorCode::kInvalidParameter, "--ttl must be between 1 and 86400 seconds");
  }
  if (!args.patient.empty()) {
    for (char c : args.patient) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.') {
        return Error(ErrorCode::kInvalidParameter, "--patient must be a FHIR id");
      }
    }
  }
  auto instance = Instance::Open(args.data_dir, /*create=*/false, "");
  if (!instance.ok()) return instance.status();
  const int64_t now = SystemClock::Get().NowSeconds();
  json::Value claims = json::Value::MakeObject();
  claims.Set("iss", json::Value::String((*instance)->issuer()));
  claims.Set("aud", json::Value::String((*instance)->audience()));
  claims.Set("sub", json::Value::String(args.subject));
  claims.Set("client_id", json::Value::String(args.client_id));
  claims.Set("scope", json::Value::String(args.scope));
  claims.Set("iat", json::Value::Int(now));
  claims.Set("exp", json::Value::Int(now + args.ttl_seconds));
  claims.Set("jti", json::Value::String(RandomUuid()));
  if (!args.patient.empty()) claims.Set("patient", json::Value::String(args.patient));
  if (!args.fhir_user.empty()) claims.Set("fhirUser", json::Value::String(args.fhir_user));
  auto list = [](const std::vector<std::string>& items) {
    json::Value a = json::Value::MakeArray();
    for (const auto& i : items) a.Push(json::Value::String(i));
    return a;
  };
  if (!args.roles.empty()) claims.Set("roles", list(args.roles));
  if (!args.purpose_of_use.empty()) claims.Set("purpose_of_use", list(args.purpose_of_use));
  auto ring = oauth::SigningKeyRing::Open((*instance)->keys_dir(), (*instance)->signing_kid(), now);
  if (!ring.ok()) return ring.status();
  auto key = (*ring)->Active(jose::Algorithm::kES256, now);
  if (!key) return Error(ErrorCode::kInternal, "no active ES256 signing key");
  return jose::SignCompact(*key, claims, "at+jwt");
}

absl::StatusOr<AuditVerifyResult> VerifyAudit(const std::string& data_dir,
                                              const std::vector<std::string>& held_head_files) {
  auto instance = Instance::Open(data_dir, /*create=*/false, "");
  if (!instance.ok()) return instance.status();
  const jose::PublicKey log_key = (*instance)->audit_log_key().public_key();
  audit::VerifyOptions options;
  options.tree_head_key = &log_key;
  for (const std::string& file : held_head_files) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return Error(ErrorCode::kNotFound, "cannot read " + file);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // A file holds the compact JWS, or the JSON of GET /AuditEvent/$tree-head.
    std::string jws(absl::StripAsciiWhitespace(text));
    if (!jws.empty() && jws[0] == '{') {
      auto doc = json::Parse(jws);
      std::optional<std::string_view> found;
      if (doc.ok()) {
        found = doc->GetString("jws");
        for (const json::Value& p :
             doc->Find("parameter") ? doc->Find("parameter")->items() : json::Array{}) {
          if (p.GetString("name") == "jws") found = p.GetString("valueString");
        }
      }
      if (!found) {
        return Error(ErrorCode::kInvalidParameter, file + " holds no tree head (jws)");
      }
      jws = std::string(*found);
    }
    options.held_heads.push_back(std::move(jws));
  }
  auto report =
      audit::VerifyAuditLog((*instance)->audit_db_path(), (*instance)->audit_mac_key(), options);
  if (!report.ok()) return report.status();
  return AuditVerifyResult{report->ok, report->records, report->first_bad_seq, report->summary};
}

}  // namespace fhirward::server

namespace fhirward::server {

namespace {
const std::string& KindOf(const std::vector<audit::AlertRule>& rules, const std::string& name) {
  for (const audit::AlertRule& r : rules) {
    if (r.name == name) return r.kind;
  }
  static const std::string kNone;
  return kNone;
}
}  // namespace

absl::Status AlertsTest(const AlertsTestArgs& args, std::ostream& out) {
  Config config;
  if (!args.config_file.empty()) {
    auto loaded = LoadConfig(args.config_file, config);
    if (!loaded.ok()) return loaded.status();
    config = std::move(*loaded);
  }
  if (config.audit_alerts.empty()) {
    return Error(ErrorCode::kInvalidParameter,
                 "no [[audit.alert]] rules in the configuration: nothing to test");
  }
  if (config.audit_sinks.empty()) {
    return Error(ErrorCode::kInvalidParameter,
                 "no [[audit.sink]] in the configuration: alerts would reach no one");
  }
  if (args.timeout_seconds < 1 || args.timeout_seconds > 3600) {
    return Error(ErrorCode::kInvalidParameter, "--timeout must be 1..3600 seconds");
  }
  auto instance = Instance::Open(args.data_dir, /*create=*/false, "");
  if (!instance.ok()) return instance.status();
  char host_name[256] = {0};
  if (gethostname(host_name, sizeof host_name - 1) != 0) host_name[0] = '\0';

  // 1. Each rule must fire on its synthetic trigger (evaluated here, in
  // memory: the synthetic records are not written to the trail).
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             SystemClock::Get().Now().time_since_epoch())
                             .count();
  std::vector<std::pair<std::string, audit::AuditRecord>> alerts;
  bool all_fired = true;
  for (const audit::AlertRule& rule : config.audit_alerts) {
    int64_t advance = 0;
    audit::AlertRules eval({rule}, host_name);
    std::vector<audit::AuditRecord> fired;
    int64_t seq = 0;
    for (const audit::AuditRecord& r : audit::SyntheticTrigger(rule, now_ms, &advance)) {
      for (audit::AuditRecord& a : eval.Observe(++seq, r)) fired.push_back(std::move(a));
    }
    if (advance > 0) {
      for (audit::AuditRecord& a : eval.Advance(advance)) fired.push_back(std::move(a));
    }
    if (fired.empty()) {
      all_fired = false;
      out << "rule " << rule.name << " (" << rule.kind
          << "): did NOT fire on its synthetic trigger\n";
      continue;
    }
    audit::AuditRecord a = std::move(fired.front());
    // A synthetic alert: marked, timed now, pointing at no real record.
    a.time = FormatInstant(SystemClock::Get().Now());
    a.resource_type.clear();
    a.resource_id.clear();
    a.decision += " test=1";
    alerts.emplace_back(rule.name, std::move(a));
  }

  // 2. Into the trail: the server's exporter ships them like any alert.
  auto log =
      audit::AuditLog::Open((*instance)->audit_db_path(), (*instance)->audit_mac_key().Clone());
  if (!log.ok()) return log.status();
  std::vector<std::pair<std::string, int64_t>> appended;
  for (auto& [name, a] : alerts) {
    auto seq = (*log)->Append(a);
    if (!seq.ok()) {
      (*log)->Close();
      return seq.status();
    }
    out << "rule " << name << " (" << KindOf(config.audit_alerts, name)
        << "): fired; alert appended as AuditEvent/" << *seq << "\n";
    appended.emplace_back(name, *seq);
  }
  (*log)->Close();
  if (appended.empty()) {
    return Error(ErrorCode::kInternal, "no rule fired on its synthetic trigger");
  }

  // 3. Wait for every sink to deliver every alert.
  auto reader = audit::AuditReader::Open((*instance)->audit_db_path());
  if (!reader.ok()) return reader.status();
  const std::string sinks_dir = (*instance)->data_dir() + "/audit/sinks";
  const int64_t last = appended.back().second;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(args.timeout_seconds);
  std::map<std::string, int64_t> cursor;
  for (;;) {
    bool done = true;
    for (const audit::SinkConfig& s : config.audit_sinks) {
      cursor[s.name] = audit::LoadCursorFile(sinks_dir + "/" + s.name + ".cursor").value_or(0);
      done = done && cursor[s.name] >= last;
    }
    if (done || std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  bool all_confirmed = all_fired;
  for (const audit::SinkConfig& s : config.audit_sinks) {
    // A file sink is read back: the line must be there with the record's leaf hash.
    std::string file_text;
    if (s.type == "file") {
      for (int i = std::min(s.keep, 3); i >= 0; --i) {
        std::ifstream in(i == 0 ? s.path : s.path + "." + std::to_string(i), std::ios::binary);
        if (in) file_text.append(std::istreambuf_iterator<char>(in), {});
      }
    }
    for (const auto& [name, seq] : appended) {
      std::string state;
      bool ok = cursor[s.name] >= seq;
      if (!ok) {
        state = "NOT delivered (sink cursor at " + std::to_string(cursor[s.name]) +
                "; is the server running, and the sink up?)";
      } else if (s.type == "file") {
        auto rec = (*reader)->Record(seq);
        ok = rec.ok() && file_text.find(audit::FormatJsonLine(*rec)) != std::string::npos;
        state = ok ? "confirmed: the line is in " + s.path + " with its leaf hash"
                   : "delivered, but NOT found in " + s.path + " or its rotations";
      } else if (s.type == "webhook") {
        state = "confirmed: the endpoint answered 2xx";
      } else {
        state = "delivered: written to the receiver's " + s.transport +
                " connection (syslog has no acknowledgement)";
      }
      all_confirmed = all_confirmed && ok;
      out << "  sink " << s.name << " (" << s.type << "): alert." << name << " AuditEvent/" << seq
          << " " << state << "\n";
    }
  }
  if (!all_confirmed) {
    return Error(ErrorCode::kUnavailable, "not every alert was confirmed at every sink");
  }
  out << "ok: " << appended.size() << " rules fired, every alert reached all "
      << config.audit_sinks.size() << " sinks\n";
  return absl::OkStatus();
}

}  // namespace fhirward::server
