#include "audit/alerts.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "audit/audit_reader.h"
#include "audit/sink.h"
#include "common/clock.h"
#include "common/error.h"

namespace fhirward::audit {
namespace {

constexpr size_t kMaxKeysPerRule = 100000;       // new keys beyond this are not tracked
constexpr size_t kMaxPatientsPerBucket = 10000;  // anomaly breadth counted up to this
constexpr int64_t kMaxZeroFill = 1000;           // idle buckets folded into an EWMA at most

bool IsAlert(const AuditRecord& r) { return r.action.rfind("alert.", 0) == 0; }

bool IsRefused(const AuditRecord& r) {
  return r.outcome == "denied" || r.outcome == "unauthenticated";
}

// A response that carried patient data to the principal: a successful read,
// search, history or operation (writes and logins are not disclosures).
bool IsDataResponse(const AuditRecord& r) {
  const bool reads = r.action == "read" || r.action == "vread" || r.action == "operation" ||
                     r.action.rfind("search-", 0) == 0 || r.action.rfind("history-", 0) == 0;
  return reads && r.outcome == "success" &&
         (r.count > 0 || !r.patient_id.empty() || !r.patients.empty());
}

std::string Principal(const AuditRecord& r) {
  if (!r.subject.empty()) return r.subject;
  if (!r.client_id.empty()) return "client:" + r.client_id;
  return "address:" + r.client_address;
}

// Keys go into the decision text, space separated: escape what would split them.
std::string KeyText(std::string_view key) {
  std::string out;
  for (char c : key) {
    if (c == ' ' || c == '%' || c < 0x20) {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", static_cast<unsigned char>(c));
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

struct Event {
  int64_t t;
  int64_t v;
  int64_t seq;
};

// Sum of values in a sliding window.
struct Counter {
  std::deque<Event> ev;
  int64_t sum = 0;
  void Add(int64_t t, int64_t v, int64_t seq) {
    ev.push_back({t, v, seq});
    sum += v;
  }
  void Expire(int64_t horizon) {
    while (!ev.empty() && ev.front().t <= horizon) {
      sum -= ev.front().v;
      ev.pop_front();
    }
  }
};

// Distinct ids in a sliding window.
struct Distinct {
  struct E {
    int64_t t;
    std::string id;
    int64_t seq;
  };
  std::deque<E> ev;
  std::unordered_map<std::string, int64_t> refs;
  void Add(int64_t t, const std::string& id, int64_t seq) {
    ev.push_back({t, id, seq});
    ++refs[id];
  }
  void Expire(int64_t horizon) {
    while (!ev.empty() && ev.front().t <= horizon) {
      auto it = refs.find(ev.front().id);
      if (it != refs.end() && --it->second == 0) refs.erase(it);
      ev.pop_front();
    }
  }
  size_t size() const { return refs.size(); }
};

struct Ewma {
  double mean = 0;
  double var = 0;
  int64_t n = 0;
  // x's distance from the history in standard deviations (0 during warm-up).
  double Score(double x, int64_t warmup) {
    double z = 0;
    if (n >= warmup) z = (x - mean) / std::max(1.0, std::sqrt(var));
    return z;
  }
  void Update(double x, double alpha) {
    if (n == 0) {
      mean = x;
      var = 0;
    } else {
      const double diff = x - mean;
      const double incr = alpha * diff;
      mean += incr;
      var = (1 - alpha) * (var + diff * incr);
    }
    ++n;
  }
};

struct ClientWindow {
  Ewma requests, patients;
  int64_t bucket = -1;
  int64_t count = 0;
  std::unordered_set<std::string> seen;
  int64_t first_seq = 0, last_seq = 0;
};

}  // namespace

std::optional<int64_t> RecordTimeMs(std::string_view t) {
  // YYYY-MM-DDThh:mm:ss[.f{1,9}]Z
  auto digits = [&](size_t pos, size_t n, int64_t* out) {
    if (pos + n > t.size()) return false;
    int64_t v = 0;
    for (size_t i = pos; i < pos + n; ++i) {
      if (t[i] < '0' || t[i] > '9') return false;
      v = v * 10 + (t[i] - '0');
    }
    *out = v;
    return true;
  };
  int64_t y, mo, d, h, mi, s;
  if (t.size() < 20 || !digits(0, 4, &y) || t[4] != '-' || !digits(5, 2, &mo) || t[7] != '-' ||
      !digits(8, 2, &d) || t[10] != 'T' || !digits(11, 2, &h) || t[13] != ':' ||
      !digits(14, 2, &mi) || t[16] != ':' || !digits(17, 2, &s)) {
    return std::nullopt;
  }
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) return std::nullopt;
  size_t pos = 19;
  int64_t ms = 0;
  if (t[pos] == '.') {
    ++pos;
    size_t start = pos;
    while (pos < t.size() && t[pos] >= '0' && t[pos] <= '9') {
      if (pos - start < 3) ms = ms * 10 + (t[pos] - '0');
      ++pos;
    }
    if (pos == start || pos - start > 9) return std::nullopt;
    for (size_t k = pos - start; k < 3; ++k) ms *= 10;
  }
  if (pos + 1 != t.size() || t[pos] != 'Z') return std::nullopt;
  return ((DaysFromCivil(y, mo, d) * 24 + h) * 60 + mi) * 60000 + s * 1000 + ms;
}

bool IsFailedLogin(const AuditRecord& r) {
  return (r.action == "login" || r.action == "login-totp" || r.action == "token-client-auth") &&
         r.outcome != "success";
}

absl::Status CheckAlertRule(AlertRule& r) {
  auto bad = [&](const std::string& what) {
    return Error(ErrorCode::kInvalidParameter, "alert rule \"" + r.name + "\": " + what);
  };
  if (r.name.empty() || r.name.size() > 64 ||
      !std::all_of(r.name.begin(), r.name.end(), [](char ch) {
        return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
      })) {
    return bad("name must be 1-64 of a-z 0-9 - _");
  }
  if (r.window_seconds < 1 || r.window_seconds > 7 * 86400) {
    return bad("window_seconds must be 1..604800");
  }
  auto by_one_of = [&](std::initializer_list<const char*> allowed) -> absl::Status {
    if (r.by.empty()) r.by = *allowed.begin();
    for (const char* a : allowed) {
      if (r.by == a) return absl::OkStatus();
    }
    std::string list;
    for (const char* a : allowed) list += std::string(list.empty() ? "" : ", ") + a;
    return bad("by must be one of " + list);
  };
  if (r.kind == "mass_access") {
    if (r.patients < 0 || r.resources < 0 || (r.patients == 0 && r.resources == 0)) {
      return bad("mass_access needs patients > 0 or resources > 0");
    }
    return by_one_of({"principal"});
  }
  if (r.kind == "failed_login") {
    if (r.threshold < 1) return bad("threshold must be at least 1");
    return by_one_of({"user", "address"});
  }
  if (r.kind == "break_glass") return by_one_of({"episode"});
  if (r.kind == "denial_spike") {
    if (r.threshold < 1) return bad("threshold must be at least 1");
    return by_one_of({"all", "principal", "client", "address"});
  }
  if (r.kind == "anomaly") {
    if (r.bucket_seconds < 1 || r.bucket_seconds > 86400) return bad("bucket_seconds: 1..86400");
    if (!(r.alpha > 0 && r.alpha <= 1)) return bad("alpha must be in (0, 1]");
    if (!(r.z > 0)) return bad("z must be positive");
    if (r.warmup_buckets < 1) return bad("warmup_buckets must be at least 1");
    if (r.min_requests < 1 || r.min_patients < 1) return bad("min_requests, min_patients >= 1");
    return by_one_of({"client"});
  }
  return bad("kind is mass_access, failed_login, break_glass, denial_spike or anomaly");
}

// ---- the evaluator -------------------------------------------------------------

struct AlertRules::State {
  AlertRule rule;
  int64_t window_ms = 0;
  int64_t now = 0;  // newest record time seen
  std::unordered_map<std::string, Counter> counts;
  std::unordered_map<std::string, Distinct> distinct;
  std::unordered_map<std::string, int64_t> quiet_until;
  std::unordered_map<std::string, ClientWindow> clients;
  int64_t bucket = -1;  // anomaly: the newest bucket seen
};

AlertRules::AlertRules(std::vector<AlertRule> rules, std::string node) : node_(std::move(node)) {
  for (AlertRule& r : rules) {
    auto s = std::make_unique<State>();
    s->window_ms = r.window_seconds * 1000;
    s->rule = std::move(r);
    states_.push_back(std::move(s));
  }
}
AlertRules::~AlertRules() = default;

size_t AlertRules::tracked_keys() const {
  size_t n = 0;
  for (const auto& s : states_) {
    n += s->counts.size() + s->distinct.size() + s->clients.size() + s->quiet_until.size();
  }
  return n;
}

namespace {

struct Raise {
  const AlertRule& rule;
  const std::string& node;
  std::vector<AuditRecord>* out;
  // Fills the alert record; the caller sets who it is about.
  AuditRecord& Add(int64_t t_ms, const std::string& key, int64_t value, int64_t threshold,
                   int64_t first_seq, int64_t last_seq, int64_t trigger_seq,
                   const std::string& extra) {
    AuditRecord a;
    a.time = FormatInstantMs(t_ms);
    a.request_id = RandomUuid();
    a.action = "alert." + rule.name;
    a.outcome = "success";
    a.resource_type = "AuditEvent";
    a.resource_id = std::to_string(trigger_seq);
    a.count = value;
    a.node = node;
    a.decision =
        "rule=" + rule.name + " kind=" + rule.kind + " by=" + rule.by + " key=" + KeyText(key) +
        " value=" + std::to_string(value) + " threshold=" + std::to_string(threshold) +
        " window=" + std::to_string(rule.window_seconds) + "s" +
        " first_seq=" + std::to_string(first_seq) + " last_seq=" + std::to_string(last_seq) + extra;
    out->push_back(std::move(a));
    return out->back();
  }
};

// Whether `key` may alert at `t` (and, if so, silences it for a window).
bool Unmuted(std::unordered_map<std::string, int64_t>& quiet, const std::string& key, int64_t t,
             int64_t window_ms) {
  auto it = quiet.find(key);
  if (it != quiet.end() && t < it->second) return false;
  quiet[key] = t + window_ms;
  return true;
}

// Closes `c`'s bucket (scores it, maybe alerts) and folds in idle buckets up to `upto` (exclusive).
void CloseClient(const AlertRule& rule, int64_t bucket_ms, const std::string& key, ClientWindow& c,
                 int64_t upto, std::unordered_map<std::string, int64_t>& quiet, Raise& raise) {
  if (c.bucket < 0 || c.bucket >= upto) return;
  const double x_req = static_cast<double>(c.count);
  const double x_pat = static_cast<double>(c.seen.size());
  const double z_req = c.requests.Score(x_req, rule.warmup_buckets);
  const double z_pat = c.patients.Score(x_pat, rule.warmup_buckets);
  const bool by_rate = z_req >= rule.z && c.count >= rule.min_requests;
  const bool by_breadth =
      z_pat >= rule.z && static_cast<int64_t>(c.seen.size()) >= rule.min_patients;
  const int64_t end_ms = (c.bucket + 1) * bucket_ms;
  if ((by_rate || by_breadth) && Unmuted(quiet, key, end_ms, rule.window_seconds * 1000)) {
    char extra[160];
    std::snprintf(extra, sizeof extra,
                  " requests=%lld patients=%zu z_requests=%.2f z_patients=%.2f"
                  " mean_requests=%.2f mean_patients=%.2f",
                  static_cast<long long>(c.count), c.seen.size(), z_req, z_pat, c.requests.mean,
                  c.patients.mean);
    AuditRecord& a = raise.Add(end_ms - 1, key, c.count, static_cast<int64_t>(rule.z), c.first_seq,
                               c.last_seq, c.last_seq, extra);
    a.client_id = key;
  }
  c.requests.Update(x_req, rule.alpha);
  c.patients.Update(x_pat, rule.alpha);
  const int64_t idle = std::min<int64_t>(upto - c.bucket - 1, kMaxZeroFill);
  for (int64_t i = 0; i < idle; ++i) {
    c.requests.Update(0, rule.alpha);
    c.patients.Update(0, rule.alpha);
  }
  c.bucket = upto;
  c.count = 0;
  c.seen.clear();
  c.first_seq = c.last_seq = 0;
}

// Closes every client's bucket before `bucket`; forgets clients long idle.
void CloseBuckets(const AlertRule& rule, int64_t bucket,
                  std::unordered_map<std::string, ClientWindow>& clients,
                  std::unordered_map<std::string, int64_t>& quiet, Raise& raise) {
  const int64_t bucket_ms = rule.bucket_seconds * 1000;
  for (auto it = clients.begin(); it != clients.end();) {
    ClientWindow& c = it->second;
    const bool idle = c.count == 0;
    const int64_t gap = bucket - c.bucket;
    CloseClient(rule, bucket_ms, it->first, c, bucket, quiet, raise);
    // A client silent for the longest zero-fill has a baseline near zero:
    // forget it (it starts a new warm-up when it comes back).
    if (idle && gap > kMaxZeroFill) {
      it = clients.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace

std::vector<AuditRecord> AlertRules::Observe(int64_t seq, const AuditRecord& r) {
  std::vector<AuditRecord> out;
  if (IsAlert(r)) return out;
  auto t_opt = RecordTimeMs(r.time);
  if (!t_opt) return out;
  const int64_t t = *t_opt;
  for (auto& sp : states_) {
    State& s = *sp;
    const AlertRule& rule = s.rule;
    Raise raise{rule, node_, &out};
    s.now = std::max(s.now, t);
    const int64_t horizon = s.now - s.window_ms;
    auto counter = [&](const std::string& key) -> Counter* {
      auto it = s.counts.find(key);
      if (it != s.counts.end()) return &it->second;
      if (s.counts.size() >= kMaxKeysPerRule) return nullptr;
      return &s.counts[key];
    };
    if (rule.kind == "failed_login" || rule.kind == "denial_spike") {
      // Matching records per key within the window; more than threshold fires.
      if (rule.kind == "failed_login" ? !IsFailedLogin(r) : !IsRefused(r)) continue;
      const std::string key = rule.by == "all"         ? "*"
                              : rule.by == "principal" ? Principal(r)
                              : rule.by == "user"      ? r.subject
                              : rule.by == "client"    ? r.client_id
                                                       : r.client_address;
      if (key.empty()) continue;
      Counter* c = counter(key);
      if (c == nullptr) continue;
      c->Expire(horizon);
      c->Add(t, 1, seq);
      if (c->sum > rule.threshold && Unmuted(s.quiet_until, key, t, s.window_ms)) {
        AuditRecord& a = raise.Add(t, key, c->sum, rule.threshold, c->ev.front().seq, seq, seq, "");
        if (rule.by == "user") a.subject = key;
        if (rule.by == "principal") a.subject = r.subject;
        if (rule.by == "address") a.client_address = key;
        if (rule.by != "all") a.client_id = r.client_id;
      }
    } else if (rule.kind == "break_glass") {
      // The request that opened an episode carries "break_glass=opened" in its decision.
      if (r.break_glass.empty() || r.decision.find("break_glass=opened") == std::string::npos) {
        continue;
      }
      if (!Unmuted(s.quiet_until, r.break_glass, t, s.window_ms)) continue;
      AuditRecord& a = raise.Add(t, r.break_glass, 1, 0, seq, seq, seq, "");
      a.subject = r.subject;
      a.client_id = r.client_id;
      a.client_address = r.client_address;
      a.patient_id = r.patient_id;
      a.break_glass = r.break_glass;
      a.purpose_of_use = r.purpose_of_use;
    } else if (rule.kind == "mass_access") {
      if (!IsDataResponse(r)) continue;
      const std::string key = Principal(r);
      bool fired = false;
      int64_t value = 0, threshold = 0, first = seq;
      std::string what;
      if (rule.patients > 0) {
        auto it = s.distinct.find(key);
        if (it == s.distinct.end() && s.distinct.size() < kMaxKeysPerRule) {
          it = s.distinct.emplace(key, Distinct{}).first;
        }
        if (it != s.distinct.end()) {
          Distinct& d = it->second;
          d.Expire(horizon);
          if (!r.patient_id.empty()) d.Add(t, r.patient_id, seq);
          for (const std::string& p : r.patients) {
            if (p != r.patient_id) d.Add(t, p, seq);
          }
          if (static_cast<int64_t>(d.size()) > rule.patients) {
            fired = true;
            value = static_cast<int64_t>(d.size());
            threshold = rule.patients;
            first = d.ev.front().seq;
            what = " measure=patients";
          }
        }
      }
      if (rule.resources > 0) {
        Counter* c = counter(key);
        if (c != nullptr) {
          c->Expire(horizon);
          if (r.count > 0) c->Add(t, r.count, seq);
          if (!fired && c->sum > rule.resources) {
            fired = true;
            value = c->sum;
            threshold = rule.resources;
            first = c->ev.front().seq;
            what = " measure=resources";
          }
        }
      }
      if (fired && Unmuted(s.quiet_until, key, t, s.window_ms)) {
        AuditRecord& a = raise.Add(t, key, value, threshold, first, seq, seq, what);
        a.subject = r.subject;
        a.client_id = r.client_id;
        a.client_address = r.client_address;
      }
    } else if (rule.kind == "anomaly") {
      if (r.client_id.empty()) continue;
      const int64_t bucket_ms = rule.bucket_seconds * 1000;
      const int64_t b = t / bucket_ms;
      if (b > s.bucket) {
        if (s.bucket >= 0) CloseBuckets(rule, b, s.clients, s.quiet_until, raise);
        s.bucket = b;
      }
      auto it = s.clients.find(r.client_id);
      if (it == s.clients.end()) {
        if (s.clients.size() >= kMaxKeysPerRule) continue;
        it = s.clients.emplace(r.client_id, ClientWindow{}).first;
        it->second.bucket = s.bucket;
      }
      ClientWindow& c = it->second;
      ++c.count;
      if (c.first_seq == 0) c.first_seq = seq;
      c.last_seq = seq;
      auto note = [&](const std::string& p) {
        if (!p.empty() && c.seen.size() < kMaxPatientsPerBucket) c.seen.insert(p);
      };
      if (r.outcome == "success") {
        note(r.patient_id);
        for (const std::string& p : r.patients) note(p);
      }
    }
  }
  // Forget keys whose windows emptied (amortised: every 4096 records).
  if (++observed_ % 4096 == 0) {
    for (auto& sp : states_) {
      State& s = *sp;
      const int64_t horizon = s.now - s.window_ms;
      for (auto it = s.counts.begin(); it != s.counts.end();) {
        it->second.Expire(horizon);
        it = it->second.ev.empty() ? s.counts.erase(it) : std::next(it);
      }
      for (auto it = s.distinct.begin(); it != s.distinct.end();) {
        it->second.Expire(horizon);
        it = it->second.ev.empty() ? s.distinct.erase(it) : std::next(it);
      }
      for (auto it = s.quiet_until.begin(); it != s.quiet_until.end();) {
        it = it->second <= s.now ? s.quiet_until.erase(it) : std::next(it);
      }
    }
  }
  return out;
}

std::vector<AuditRecord> AlertRules::Advance(int64_t now_ms) {
  std::vector<AuditRecord> out;
  for (auto& sp : states_) {
    State& s = *sp;
    if (s.rule.kind != "anomaly" || s.bucket < 0) continue;
    const int64_t b = now_ms / (s.rule.bucket_seconds * 1000);
    if (b <= s.bucket) continue;
    Raise raise{s.rule, node_, &out};
    CloseBuckets(s.rule, b, s.clients, s.quiet_until, raise);
    s.bucket = b;
  }
  return out;
}

std::vector<AuditRecord> SyntheticTrigger(const AlertRule& rule, int64_t now_ms,
                                          int64_t* advance_to) {
  std::vector<AuditRecord> out;
  *advance_to = 0;
  auto base = [&](int64_t t_ms) {
    AuditRecord r;
    r.time = FormatInstantMs(t_ms);
    r.request_id = "alerts-test";
    r.subject = "fhirward-alerts-test";
    r.client_id = "fhirward-alerts-test";
    r.client_address = "192.0.2.1";
    return r;
  };
  if (rule.kind == "failed_login") {
    for (int64_t i = 0; i <= rule.threshold; ++i) {
      AuditRecord r = base(now_ms + i);
      r.action = "login";
      r.outcome = "denied";
      r.status_code = 401;
      r.error = "bad_password";
      out.push_back(std::move(r));
    }
  } else if (rule.kind == "denial_spike") {
    for (int64_t i = 0; i <= rule.threshold; ++i) {
      AuditRecord r = base(now_ms + i);
      r.action = "read";
      r.resource_type = "Patient";
      r.outcome = "denied";
      r.status_code = 403;
      out.push_back(std::move(r));
    }
  } else if (rule.kind == "break_glass") {
    AuditRecord r = base(now_ms);
    r.action = "read";
    r.resource_type = "Patient";
    r.resource_id = "alerts-test-1";
    r.patient_id = "alerts-test-1";
    r.outcome = "success";
    r.status_code = 200;
    r.count = 1;
    r.break_glass = "alerts-test-episode";
    r.decision = "alerts-test allow break_glass=opened";
    out.push_back(std::move(r));
  } else if (rule.kind == "mass_access") {
    const int64_t n = std::max(rule.patients, int64_t{0}) + 1;
    const int64_t each = rule.resources > 0 ? rule.resources / n + 1 : 1;
    for (int64_t i = 0; i < n; ++i) {
      AuditRecord r = base(now_ms + i);
      r.action = "read";
      r.resource_type = "Patient";
      r.patient_id = "alerts-test-" + std::to_string(i + 1);
      r.outcome = "success";
      r.status_code = 200;
      r.count = each;
      out.push_back(std::move(r));
    }
  } else if (rule.kind == "anomaly") {
    // warmup buckets of one request each, then a burst in one bucket.
    const int64_t bucket_ms = rule.bucket_seconds * 1000;
    const int64_t start = (now_ms / bucket_ms - rule.warmup_buckets - 1) * bucket_ms;
    for (int64_t b = 0; b < rule.warmup_buckets; ++b) {
      AuditRecord r = base(start + b * bucket_ms);
      r.action = "read";
      r.outcome = "success";
      r.patient_id = "alerts-test-0";
      out.push_back(std::move(r));
    }
    const int64_t burst_at = start + rule.warmup_buckets * bucket_ms;
    const int64_t burst = std::max(rule.min_requests, rule.min_patients) +
                          static_cast<int64_t>(std::ceil(rule.z)) + 1;
    for (int64_t i = 0; i < burst; ++i) {
      AuditRecord r = base(burst_at + std::min<int64_t>(i, bucket_ms - 1));
      r.action = "read";
      r.outcome = "success";
      r.patient_id = "alerts-test-" + std::to_string(i + 1);
      out.push_back(std::move(r));
    }
    *advance_to = burst_at + bucket_ms;
  }
  return out;
}

// ---- the engine ------------------------------------------------------------------

struct AlertEngine::Impl {
  AuditLog* log = nullptr;
  std::unique_ptr<AuditReader> reader;
  std::unique_ptr<AlertRules> rules;
  AlertEngineOptions options;
  int64_t replay_ms = 0;
  std::vector<AuditRecord> pending;  // raised, not yet appended
  mutable std::mutex mu;
  mutable std::condition_variable cv;
  mutable std::condition_variable progress;
  bool stopping = false;
  uint64_t generation = 0;
  std::atomic<int64_t> evaluated{0};
  std::atomic<int64_t> alerts{0};
  std::string last_error;  // guarded by mu
  std::thread thread;

  void SetError(const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu);
    last_error = s.ok() ? "" : std::string(s.message());
  }

  // Appends what is pending; false when the log refused (kept for a retry).
  bool Flush() {
    while (!pending.empty()) {
      auto seq = log->Append(pending.front());
      if (!seq.ok()) {
        SetError(seq.status());
        return false;
      }
      alerts.fetch_add(1);
      if (options.on_alert) options.on_alert(*seq, pending.front());
      pending.erase(pending.begin());
    }
    return true;
  }

  // Feeds the records of the longest window before `cursor` without alerting.
  void Replay(int64_t cursor) {
    if (cursor <= 0) return;
    auto last = reader->Record(cursor);
    if (!last.ok()) return;
    auto lr = AuditRecord::FromJson(last->json);
    if (!lr.ok()) return;
    auto end_t = RecordTimeMs(lr->time);
    if (!end_t) return;
    const int64_t from_t = *end_t - replay_ms;
    // Times grow with seq (closely enough): the first record at or after from_t.
    int64_t lo = 1, hi = cursor;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      auto r = reader->Record(mid);
      std::optional<int64_t> t;
      if (r.ok()) {
        auto ar = AuditRecord::FromJson(r->json);
        if (ar.ok()) t = RecordTimeMs(ar->time);
      }
      if (t && *t < from_t) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    int64_t next = lo - 1;
    while (next < cursor) {
      auto batch = reader->After(next, options.batch);
      if (!batch.ok() || batch->empty()) return;
      for (const StoredRecord& sr : *batch) {
        if (sr.seq > cursor) return;
        auto r = AuditRecord::FromJson(sr.json);
        if (r.ok()) (void)rules->Observe(sr.seq, *r);  // state only: these were evaluated
        next = sr.seq;
      }
    }
  }

  void Run() {
    Replay(evaluated.load());
    int64_t next = evaluated.load();
    for (;;) {
      uint64_t seen;
      {
        std::lock_guard<std::mutex> lock(mu);
        seen = generation;
      }
      bool ok = Flush();
      absl::StatusOr<std::vector<StoredRecord>> batch = std::vector<StoredRecord>{};
      if (ok) {
        batch = reader->After(next, options.batch);
        if (!batch.ok()) {
          SetError(batch.status());
          ok = false;
        }
      }
      if (ok && !batch->empty()) {
        for (const StoredRecord& sr : *batch) {
          auto r = AuditRecord::FromJson(sr.json);
          if (!r.ok()) continue;  // verify reports such a record; nothing to evaluate
          for (AuditRecord& a : rules->Observe(sr.seq, *r)) pending.push_back(std::move(a));
        }
        next = batch->back().seq;
        ok = Flush();
        if (ok) {
          if (auto s = SaveCursorFile(options.cursor_path, next); !s.ok()) SetError(s);
          evaluated = next;
          SetError(absl::OkStatus());
          progress.notify_all();
          continue;
        }
      }
      if (ok) {
        // Idle: anomaly buckets close on the clock (2 s grace for records in flight).
        const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count();
        for (AuditRecord& a : rules->Advance(now_ms - 2000)) pending.push_back(std::move(a));
        ok = Flush();
      }
      std::unique_lock<std::mutex> lock(mu);
      if (!stopping) {
        cv.wait_for(lock, options.poll, [&] { return stopping || generation != seen; });
      }
      if (stopping) {
        lock.unlock();
        FinalPass(next);
        return;
      }
    }
  }

  // At Stop: what was committed before it, once (the rest waits for the next start).
  void FinalPass(int64_t next) {
    if (!Flush()) return;
    auto rest = reader->After(next, options.batch);
    if (!rest.ok() || rest->empty()) return;
    for (const StoredRecord& sr : *rest) {
      auto r = AuditRecord::FromJson(sr.json);
      if (r.ok()) {
        for (AuditRecord& a : rules->Observe(sr.seq, *r)) pending.push_back(std::move(a));
      }
      next = sr.seq;
    }
    if (!Flush()) return;
    (void)SaveCursorFile(options.cursor_path, next);
    evaluated = next;
    progress.notify_all();
  }
};

AlertEngine::AlertEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AlertEngine::~AlertEngine() { Stop(); }

absl::StatusOr<std::unique_ptr<AlertEngine>> AlertEngine::Start(const std::string& audit_db_path,
                                                                AuditLog* log,
                                                                std::vector<AlertRule> rules,
                                                                AlertEngineOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->log = log;
  std::vector<std::string> names;
  int64_t replay_s = 0;
  for (AlertRule& r : rules) {
    if (auto s = CheckAlertRule(r); !s.ok()) return s;
    if (std::find(names.begin(), names.end(), r.name) != names.end()) {
      return Error(ErrorCode::kInvalidParameter,
                   "alert rule \"" + r.name + "\" is configured twice");
    }
    names.push_back(r.name);
    replay_s = std::max(replay_s, r.window_seconds);
    if (r.kind == "anomaly") replay_s = std::max(replay_s, r.warmup_buckets * r.bucket_seconds);
  }
  impl->replay_ms = std::min<int64_t>(replay_s, 86400) * 1000;
  if (options.batch < 1) options.batch = 1;
  impl->rules = std::make_unique<AlertRules>(std::move(rules), options.node);
  auto reader = AuditReader::Open(audit_db_path);
  if (!reader.ok()) return reader.status();
  impl->reader = std::move(*reader);
  auto cursor = LoadCursorFile(options.cursor_path);
  if (!cursor) {
    // First start with rules: the trail so far is history, not news.
    auto last = impl->reader->LastSeq();
    if (!last.ok()) return last.status();
    if (auto s = SaveCursorFile(options.cursor_path, *last); !s.ok()) return s;
    cursor = *last;
  }
  impl->evaluated = *cursor;
  impl->options = std::move(options);
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<AlertEngine>(new AlertEngine(std::move(impl)));
}

void AlertEngine::Notify() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    ++impl_->generation;
  }
  impl_->cv.notify_all();
}

AlertEngineStatus AlertEngine::Status() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return {impl_->evaluated.load(), impl_->alerts.load(), impl_->last_error};
}

bool AlertEngine::WaitEvaluated(int64_t seq, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(impl_->mu);
  return impl_->progress.wait_for(lock, timeout, [&] { return impl_->evaluated.load() >= seq; });
}

void AlertEngine::Stop() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace fhirward::audit
