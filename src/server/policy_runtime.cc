#include "server/policy_runtime.h"

#include <sys/stat.h>

#include <set>

#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "policy/policy_set.h"
#include "server/log.h"
#include "store/internal/sqlite.h"

namespace fhirward::server {

using store::internal::Db;
using store::internal::Stmt;

// --- break-glass episodes -----------------------------------------------------------

namespace {

constexpr const char* kBreakGlassSchema = R"sql(
PRAGMA journal_mode=WAL;
PRAGMA synchronous=FULL;
CREATE TABLE IF NOT EXISTS break_glass(
  id TEXT PRIMARY KEY,
  subject TEXT NOT NULL,
  client_id TEXT NOT NULL,
  role TEXT NOT NULL,
  reason BLOB NOT NULL,
  purposes TEXT NOT NULL,
  started INTEGER NOT NULL,
  expires INTEGER NOT NULL,
  reviewed_at INTEGER NOT NULL DEFAULT 0,
  reviewer TEXT NOT NULL DEFAULT '',
  outcome TEXT NOT NULL DEFAULT '',
  note TEXT NOT NULL DEFAULT '',
  issuer TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS break_glass_by_subject ON break_glass(subject, client_id, expires);
)sql";

std::string ReasonAd(const std::string& id) { return "fhirward:break-glass-reason:" + id; }

}  // namespace

struct BreakGlassStore::Impl {
  std::unique_ptr<Db> db;
  const crypto::KeyEncryptionService* kek = nullptr;
  std::mutex mu;

  absl::StatusOr<policy::BreakGlassEpisode> Row(const Stmt& st) {
    policy::BreakGlassEpisode e;
    e.id = st.Text(0);
    e.subject = st.Text(1);
    e.client_id = st.Text(2);
    e.role = st.Text(3);
    auto reason = kek->Unwrap(st.Blob(4), ReasonAd(e.id));
    if (!reason.ok()) return Error(ErrorCode::kDecryptionFailed, "break-glass justification");
    e.reason = std::string(reason->UnsafeView());
    e.purposes = st.Text(5);
    e.started = st.Int(6);
    e.expires = st.Int(7);
    e.issuer = st.Text(8);
    return e;
  }
};

BreakGlassStore::BreakGlassStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BreakGlassStore::~BreakGlassStore() = default;

absl::StatusOr<std::unique_ptr<BreakGlassStore>> BreakGlassStore::Open(
    const std::string& path, const crypto::KeyEncryptionService* kek) {
  auto db = Db::Open(path, /*read_only=*/false);
  if (!db.ok()) return db.status();
  ::chmod(path.c_str(), 0600);
  if (auto s = (*db)->Exec(kBreakGlassSchema); !s.ok()) return s;
  // Data directories made before episodes named their issuer.
  (void)(*db)->Exec("ALTER TABLE break_glass ADD COLUMN issuer TEXT NOT NULL DEFAULT ''");
  auto impl = std::make_unique<Impl>();
  impl->db = std::move(*db);
  impl->kek = kek;
  return std::unique_ptr<BreakGlassStore>(new BreakGlassStore(std::move(impl)));
}

constexpr const char* kEpisodeColumns =
    "id, subject, client_id, role, reason, purposes, started, expires, issuer";

absl::StatusOr<std::optional<policy::BreakGlassEpisode>> BreakGlassStore::Active(
    const std::string& issuer, const std::string& subject, const std::string& client_id,
    int64_t now) {
  std::lock_guard lock(impl_->mu);
  auto st = impl_->db->Prepare(std::string("SELECT ") + kEpisodeColumns +
                               " FROM break_glass WHERE subject = ?1 AND client_id = ?2 AND "
                               "started <= ?3 AND expires > ?3 AND issuer = ?4 "
                               "ORDER BY expires DESC LIMIT 1");
  if (!st.ok()) return st.status();
  st->Bind(1, subject).Bind(2, client_id).Bind(3, now).Bind(4, issuer);
  auto row = st->Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::optional<policy::BreakGlassEpisode>();
  auto e = impl_->Row(*st);
  if (!e.ok()) return e.status();
  return std::optional<policy::BreakGlassEpisode>(std::move(*e));
}

absl::StatusOr<policy::BreakGlassEpisode> BreakGlassStore::Open(policy::BreakGlassEpisode e) {
  e.id = "bg-" + RandomUuid();
  auto sealed = impl_->kek->Wrap(SecretBytes(e.reason), ReasonAd(e.id));
  if (!sealed.ok()) return sealed.status();
  std::lock_guard lock(impl_->mu);
  auto st = impl_->db->Prepare(
      "INSERT INTO break_glass(id, subject, client_id, role, reason, purposes, started, expires, "
      "issuer) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
  if (!st.ok()) return st.status();
  st->Bind(1, e.id).Bind(2, e.subject).Bind(3, e.client_id).Bind(4, e.role);
  st->BindBlob(5, *sealed).Bind(6, e.purposes).Bind(7, e.started).Bind(8, e.expires);
  st->Bind(9, e.issuer);
  if (auto s = st->Run(); !s.ok()) return s;
  return e;
}

absl::StatusOr<std::vector<BreakGlassRecord>> BreakGlassStore::List(bool pending_only) {
  std::lock_guard lock(impl_->mu);
  auto st = impl_->db->Prepare(std::string("SELECT ") + kEpisodeColumns +
                               ", reviewed_at, reviewer, outcome, note FROM break_glass" +
                               (pending_only ? " WHERE reviewed_at = 0" : "") +
                               " ORDER BY started DESC, id");
  if (!st.ok()) return st.status();
  std::vector<BreakGlassRecord> out;
  for (;;) {
    auto row = st->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    BreakGlassRecord r;
    auto e = impl_->Row(*st);
    if (!e.ok()) return e.status();
    r.episode = std::move(*e);
    r.reviewed_at = st->Int(9);
    r.reviewer = st->Text(10);
    r.outcome = st->Text(11);
    r.note = st->Text(12);
    out.push_back(std::move(r));
  }
  return out;
}

absl::Status BreakGlassStore::Review(const std::string& id, const std::string& reviewer,
                                     const std::string& outcome, const std::string& note,
                                     int64_t now) {
  std::lock_guard lock(impl_->mu);
  auto st = impl_->db->Prepare(
      "UPDATE break_glass SET reviewed_at = ?2, reviewer = ?3, outcome = ?4, note = ?5, "
      // An unjustified episode ends now.
      "expires = CASE WHEN ?4 = 'unjustified' AND expires > ?2 THEN ?2 ELSE expires END "
      "WHERE id = ?1 AND reviewed_at = 0");
  if (!st.ok()) return st.status();
  st->Bind(1, id).Bind(2, now).Bind(3, reviewer).Bind(4, outcome).Bind(5, note);
  if (auto s = st->Run(); !s.ok()) return s;
  auto changed = impl_->db->Prepare("SELECT changes()");
  if (!changed.ok()) return changed.status();
  auto row = changed->Step();
  if (!row.ok()) return row.status();
  if (*row && changed->Int(0) == 1) return absl::OkStatus();
  auto exists = impl_->db->Prepare("SELECT reviewed_at FROM break_glass WHERE id = ?1");
  if (!exists.ok()) return exists.status();
  exists->Bind(1, id);
  auto found = exists->Step();
  if (!found.ok()) return found.status();
  if (!*found) return Error(ErrorCode::kNotFound, "no break-glass episode " + id);
  return Error(ErrorCode::kVersionConflict, "episode " + id + " was already reviewed");
}

// --- facts over the store -----------------------------------------------------------

StorePolicyFacts::StorePolicyFacts(store::ResourceStore* store, std::string tenant,
                                   BreakGlassStore* break_glass, const Clock* clock,
                                   int64_t cache_seconds)
    : store_(store),
      tenant_(std::move(tenant)),
      break_glass_(break_glass),
      clock_(clock),
      cache_seconds_(cache_seconds) {}

bool StorePolicyFacts::Fresh(const Cached& c, int64_t now) const {
  return c.generation == generation_.load() && now - c.fetched < cache_seconds_;
}

bool StorePolicyFacts::FreshConsents(const Cached& c, int64_t now) const {
  return c.generation == consent_generation_.load() && now - c.fetched < cache_seconds_;
}

void StorePolicyFacts::Changed(std::string_view type) {
  generation_.fetch_add(1);
  if (type.empty() || type == "Consent") consent_generation_.fetch_add(1);
}

namespace {

constexpr size_t kMaxCached = 20000;
constexpr int kPage = 200;
constexpr size_t kMaxRelated = 20000;
constexpr size_t kMaxConsents = 200;
constexpr int64_t kFactBudgetMs = 2000;

store::SearchClause Reference(std::string param, std::string_view actor) {
  store::SearchClause c;
  c.kind = store::SearchClause::Kind::kReference;
  c.param = std::move(param);
  store::SearchValue v;
  size_t slash = actor.find('/');
  v.target_type = std::string(actor.substr(0, slash));
  v.target_id = std::string(actor.substr(slash + 1));
  c.values.push_back(std::move(v));
  return c;
}

// The Patient compartments of every resource `q` matches (all pages), sorted;
// more than kMaxRelated fails closed rather than ignoring some.
absl::StatusOr<std::vector<std::string>> PatientsOf(store::ResourceStore* store,
                                                    store::SearchQuery q) {
  q.count = kPage;
  q.time_budget_ms = kFactBudgetMs;
  std::set<std::string> patients;
  for (;;) {
    auto page = store->Search(q);
    if (!page.ok()) return page.status();
    for (const auto& m : page->matches) patients.insert(m.patients.begin(), m.patients.end());
    if (patients.size() > kMaxRelated) {
      return Error(ErrorCode::kTooCostly, "more than " + std::to_string(kMaxRelated) +
                                              " patients to evaluate (" + q.type + ")");
    }
    if (!page->more) break;
    q.offset += kPage;
  }
  return std::vector<std::string>(patients.begin(), patients.end());
}

}  // namespace

absl::StatusOr<std::vector<std::string>> StorePolicyFacts::RelatedPatients(
    const policy::RelationshipSource& source, const std::string& actor) {
  const int64_t now = clock_->NowSeconds();
  const int64_t generation = generation_.load();
  const std::string key = source.id + '\x1f' + source.type + '\x1f' + source.actor + '\x1f' + actor;
  {
    std::lock_guard lock(mu_);
    if (auto it = related_.find(key); it != related_.end() && Fresh(it->second, now)) {
      return it->second.patients;
    }
  }
  store::SearchQuery q;
  q.tenant = tenant_;
  q.type = source.type;
  q.clauses.push_back(Reference(source.actor, actor));
  if (!source.status.empty()) {
    store::SearchClause st;
    st.kind = store::SearchClause::Kind::kToken;
    st.param = "status";
    for (const auto& code : source.status) {
      store::SearchValue v;
      v.code = code;
      st.values.push_back(std::move(v));
    }
    q.clauses.push_back(std::move(st));
  }
  auto found = PatientsOf(store_, q);
  if (!found.ok()) return found.status();
  std::vector<std::string> out = std::move(*found);
  std::lock_guard lock(mu_);
  if (related_.size() >= kMaxCached) related_.clear();
  Cached& c = related_[key];
  c.generation = generation;
  c.fetched = now;
  c.patients = out;
  return out;
}

absl::StatusOr<std::vector<json::Value>> StorePolicyFacts::Consents(const std::string& patient) {
  const int64_t now = clock_->NowSeconds();
  const int64_t generation = consent_generation_.load();
  {
    std::lock_guard lock(mu_);
    if (auto it = consents_.find(patient);
        it != consents_.end() && FreshConsents(it->second, now)) {
      return it->second.consents;
    }
  }
  store::SearchQuery q;
  q.tenant = tenant_;
  q.type = "Consent";
  q.clauses.push_back(Reference("patient", "Patient/" + patient));
  q.count = static_cast<int>(kMaxConsents);
  q.time_budget_ms = kFactBudgetMs;
  auto page = store_->Search(q);
  if (!page.ok()) return page.status();
  // More consents than can be evaluated: fail closed rather than ignore some.
  if (page->more) return Error(ErrorCode::kTooCostly, "too many Consent resources");
  std::vector<json::Value> out;
  for (const auto& m : page->matches) {
    auto v = json::Parse(m.json);
    if (!v.ok()) return v.status();
    out.push_back(std::move(*v));
  }
  std::lock_guard lock(mu_);
  if (consents_.size() >= kMaxCached) consents_.clear();
  Cached& c = consents_[patient];
  c.generation = generation;
  c.fetched = now;
  c.consents = out;
  return out;
}

absl::StatusOr<std::vector<std::string>> StorePolicyFacts::ConsentPatients() {
  const int64_t now = clock_->NowSeconds();
  const int64_t generation = consent_generation_.load();
  {
    std::lock_guard lock(mu_);
    if (FreshConsents(consent_patients_, now) && consent_patients_.fetched != 0) {
      return consent_patients_.patients;
    }
  }
  store::SearchQuery q;
  q.tenant = tenant_;
  q.type = "Consent";
  auto found = PatientsOf(store_, q);
  if (!found.ok()) return found.status();
  std::vector<std::string> out = std::move(*found);
  std::lock_guard lock(mu_);
  consent_patients_.generation = generation;
  consent_patients_.fetched = now == 0 ? 1 : now;
  consent_patients_.patients = out;
  return out;
}

absl::StatusOr<std::optional<policy::BreakGlassEpisode>> StorePolicyFacts::ActiveBreakGlass(
    const std::string& issuer, const std::string& subject, const std::string& client_id,
    int64_t now) {
  if (!break_glass_) return std::optional<policy::BreakGlassEpisode>();
  const std::string key = issuer + '\x1f' + subject + '\x1f' + client_id;
  {
    std::lock_guard lock(mu_);
    if (auto it = active_.find(key); it != active_.end() && now - it->second.first < 5) {
      const auto& e = it->second.second;
      if (!e || (e->started <= now && e->expires > now)) return e;
    }
  }
  auto e = break_glass_->Active(issuer, subject, client_id, now);
  if (!e.ok()) return e.status();
  std::lock_guard lock(mu_);
  if (active_.size() >= kMaxCached) active_.clear();
  active_[key] = {now, *e};
  return e;
}

absl::StatusOr<policy::BreakGlassEpisode> StorePolicyFacts::OpenBreakGlass(
    policy::BreakGlassEpisode e) {
  if (!break_glass_) return Error(ErrorCode::kUnavailable, "break-glass is not configured");
  const std::string key = e.issuer + '\x1f' + e.subject + '\x1f' + e.client_id;
  auto opened = break_glass_->Open(std::move(e));
  if (!opened.ok()) return opened.status();
  std::lock_guard lock(mu_);
  active_[key] = {opened->started, *opened};
  return opened;
}

// --- the engine, reloaded -----------------------------------------------------------

PolicyRuntime::PolicyRuntime(PolicyFiles files, policy::PolicyFacts* facts, const Clock* clock)
    : files_(std::move(files)), facts_(facts), clock_(clock) {}

absl::StatusOr<std::unique_ptr<PolicyRuntime>> PolicyRuntime::Open(
    PolicyFiles files, policy::PolicyFacts* facts, const Clock* clock,
    std::function<void(const PolicyLoadEvent&)> on_load) {
  std::unique_ptr<PolicyRuntime> rt(new PolicyRuntime(std::move(files), facts, clock));
  rt->on_load_ = std::move(on_load);
  rt->stamp_ = rt->Stamp();
  if (auto s = rt->Load(); !s.ok()) return s;
  rt->checked_ = clock->NowSeconds();
  return rt;
}

std::string PolicyRuntime::Stamp() const {
  std::string out;
  for (const std::string* path : {&files_.enforced, &files_.candidate}) {
    struct stat st {};
    if (path->empty() || ::stat(path->c_str(), &st) != 0) {
      out += "-;";
      continue;
    }
    out += std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
           std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ";";
  }
  return out;
}

std::string PolicyRuntime::FileDigests() const {
  std::string out;
  for (const std::string* path : {&files_.enforced, &files_.candidate}) {
    if (path->empty()) continue;
    auto digest = crypto::Sha256File(*path);
    out += (out.empty() ? "" : "; ") + *path +
           (digest.ok() ? " sha256=" + HexEncode(*digest) : " unreadable");
  }
  return out;
}

absl::Status PolicyRuntime::Load() {
  // Every load is reported, a refused one with the policies still in force.
  auto report = [&](const absl::Status& status) {
    if (!on_load_) return;
    PolicyLoadEvent e;
    e.ok = status.ok();
    {
      std::lock_guard lock(mu_);
      e.enforced = enforced_id_;
      e.candidate = candidate_id_;
    }
    e.files = FileDigests();
    e.error = std::string(status.message()).substr(0, 1000);
    on_load_(e);
  };
  absl::Status status = LoadFiles();
  report(status);
  return status;
}

absl::Status PolicyRuntime::LoadFiles() {
  auto load =
      [](const std::string& path) -> absl::StatusOr<std::shared_ptr<const policy::PolicySet>> {
    policy::PolicyLoad l = policy::LoadPolicyFile(path);
    if (!l.errors.empty()) {
      std::string msg = "policy " + path + " is invalid:";
      for (size_t i = 0; i < l.errors.size() && i < 5; ++i) msg += " " + l.errors[i].ToString();
      return Error(ErrorCode::kInvalidRequest, msg);
    }
    return l.policy;
  };
  std::shared_ptr<const policy::PolicySet> enforced = policy::SmartScopesPolicy();
  if (!files_.enforced.empty()) {
    auto p = load(files_.enforced);
    if (!p.ok()) return p.status();
    enforced = std::move(*p);
  }
  std::shared_ptr<const policy::PolicySet> candidate;
  if (!files_.candidate.empty()) {
    auto p = load(files_.candidate);
    if (!p.ok()) return p.status();
    candidate = std::move(*p);
  }
  std::shared_ptr<const policy::PolicyEngine> engine =
      policy::NewPolicyEngine(enforced, candidate, facts_);
  LogEvent(LogLevel::kInfo, "policy_loaded",
           {{"policy", LogValue(enforced->IdVersion())},
            {"candidate", LogValue(candidate ? candidate->IdVersion() : std::string())}});
  std::lock_guard lock(mu_);
  engine_ = std::move(engine);
  enforced_id_ = enforced->IdVersion();
  candidate_id_ = candidate ? candidate->IdVersion() : std::string();
  return absl::OkStatus();
}

std::shared_ptr<const policy::PolicyEngine> PolicyRuntime::Current() {
  const int64_t now = clock_->NowSeconds();
  {
    std::lock_guard lock(mu_);
    if (now - checked_ < files_.reload_seconds ||
        (files_.enforced.empty() && files_.candidate.empty())) {
      return engine_;
    }
    checked_ = now;
  }
  std::string stamp = Stamp();
  bool changed = false;
  {
    std::lock_guard lock(mu_);
    if (stamp != stamp_) {
      stamp_ = stamp;
      changed = true;
    }
  }
  if (changed) {
    if (auto s = Load(); !s.ok()) {
      LogEvent(LogLevel::kError, "policy_reload_refused",
               {{"reason", LogValue(std::string(s.message()))}});
    }
  }
  std::lock_guard lock(mu_);
  return engine_;
}

}  // namespace fhirward::server
