#include "server/fhir_service.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>
#include <vector>

#include "absl/strings/str_join.h"
#include "audit/merkle.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "fhir/model.h"
#include "fhir/resources.h"
#include "fhir/search_index.h"
#include "json/patch.h"
#include "json/value.h"
#include "policy/obligations.h"
#include "server/audit_api.h"
#include "server/log.h"
#include "server/search.h"
#include "server/worker_pool.h"

namespace fhirward::server {
namespace {

using policy::Interaction;
using Query = std::vector<std::pair<std::string, std::string>>;

constexpr std::string_view kFhirJson = "application/fhir+json; charset=utf-8";
constexpr std::string_view kErrorSystem = "https://fhirward.dev/CodeSystem/error";
constexpr size_t kMaxIdempotencyKey = 255;
// Conditions are evaluated again inside the write transaction, on the single
// writer connection: they get a short budget there.
constexpr int64_t kWriterSearchBudgetMs = 250;
// Far longer than any request can take (body deadline, group commit).
constexpr std::chrono::seconds kAbandonedReservation{120};

// ---------------------------------------------------------------------------
// Small parsers

bool IEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](unsigned char x, unsigned char y) {
           return std::tolower(x) == std::tolower(y);
         });
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    size_t pos = s.find(sep, start);
    out.push_back(s.substr(start, pos == std::string_view::npos ? pos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> PercentDecode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      int hi = HexValue(s[i + 1]), lo = HexValue(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string PercentEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

// Splits an origin-form target into decoded path segments and query pairs.
absl::Status ParseTarget(std::string_view target, std::vector<std::string>* segments,
                         Query* query) {
  if (target.empty() || target.front() != '/') {
    return Error(ErrorCode::kInvalidRequest, "request target must be a path");
  }
  size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  std::string_view qs = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  for (std::string_view seg : Split(path.substr(1), '/')) {
    if (seg.empty()) continue;  // tolerate "//" and a trailing "/"
    auto decoded = PercentDecode(seg, false);
    if (!decoded || decoded->find('/') != std::string::npos) {
      return Error(ErrorCode::kInvalidRequest, "malformed path");
    }
    segments->push_back(std::move(*decoded));
  }
  if (!qs.empty()) {
    for (std::string_view pair : Split(qs, '&')) {
      if (pair.empty()) continue;
      size_t eq = pair.find('=');
      auto name = PercentDecode(pair.substr(0, eq), true);
      auto value = PercentDecode(eq == std::string_view::npos ? "" : pair.substr(eq + 1), true);
      if (!name || !value) return Error(ErrorCode::kInvalidParameter, "malformed query string");
      query->emplace_back(std::move(*name), std::move(*value));
    }
  }
  return absl::OkStatus();
}

const std::string* QueryParam(const Query& q, std::string_view name) {
  for (const auto& [k, v] : q) {
    if (k == name) return &v;
  }
  return nullptr;
}

// "W/\"3\"" or "\"3\"" -> 3.
std::optional<int64_t> ParseETagVersion(std::string_view v) {
  v = Trim(v);
  if (v.size() >= 2 && v[0] == 'W' && v[1] == '/') v.remove_prefix(2);
  if (v.size() < 3 || v.front() != '"' || v.back() != '"') return std::nullopt;
  v = v.substr(1, v.size() - 2);
  int64_t n = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size() || n < 1) return std::nullopt;
  return n;
}

std::optional<int64_t> ParsePositive(std::string_view v) {
  int64_t n = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size() || n < 0) return std::nullopt;
  return n;
}

std::string ETag(int64_t version) { return "W/\"" + std::to_string(version) + "\""; }

// FHIR instant "YYYY-MM-DDThh:mm:ss(.sss)?(Z|+hh:mm)" -> time_point; also
// accepts a date or dateTime without seconds for _since.
std::optional<std::chrono::system_clock::time_point> ParseInstant(std::string_view s) {
  int y = 0, mo = 1, d = 1, h = 0, mi = 0, sec = 0;
  int64_t micros = 0;
  auto num = [&](size_t pos, size_t len, int* out) {
    if (pos + len > s.size()) return false;
    int v = 0;
    for (size_t i = pos; i < pos + len; ++i) {
      if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
      v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
  };
  if (!num(0, 4, &y)) return std::nullopt;
  size_t pos = 4;
  int offset_seconds = 0;
  if (pos < s.size()) {
    if (s[pos] != '-' || !num(pos + 1, 2, &mo)) return std::nullopt;
    pos += 3;
  }
  if (pos < s.size()) {
    if (s[pos] != '-' || !num(pos + 1, 2, &d)) return std::nullopt;
    pos += 3;
  }
  if (pos < s.size()) {
    if (s[pos] != 'T' || !num(pos + 1, 2, &h) || s.size() < pos + 6 || s[pos + 3] != ':' ||
        !num(pos + 4, 2, &mi)) {
      return std::nullopt;
    }
    pos += 6;
    if (pos < s.size() && s[pos] == ':') {
      if (!num(pos + 1, 2, &sec)) return std::nullopt;
      pos += 3;
      if (pos < s.size() && s[pos] == '.') {
        ++pos;
        int digits = 0;
        while (pos < s.size() && std::isdigit(static_cast<unsigned char>(s[pos]))) {
          if (digits < 6) micros = micros * 10 + (s[pos] - '0');
          ++digits;
          ++pos;
        }
        if (digits == 0) return std::nullopt;
        for (int i = digits; i < 6; ++i) micros *= 10;
      }
    }
    if (pos >= s.size()) return std::nullopt;  // a time needs a zone
    if (s[pos] == 'Z') {
      ++pos;
    } else if (s[pos] == '+' || s[pos] == '-') {
      int oh = 0, om = 0;
      if (!num(pos + 1, 2, &oh) || s.size() < pos + 6 || s[pos + 3] != ':' ||
          !num(pos + 4, 2, &om)) {
        return std::nullopt;
      }
      offset_seconds = (oh * 3600 + om * 60) * (s[pos] == '-' ? -1 : 1);
      pos += 6;
    } else {
      return std::nullopt;
    }
  }
  if (pos != s.size() || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) {
    return std::nullopt;
  }
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = sec;
  time_t t = timegm(&tm);
  return std::chrono::system_clock::from_time_t(t - offset_seconds) +
         std::chrono::microseconds(micros);
}

// 32 bytes from a per-thread xoshiro256** generator seeded by the CSPRNG.
std::string RequestIdBytes() {
  thread_local std::array<uint64_t, 4> st = [] {
    std::array<uint64_t, 4> seed{};
    std::string r = RandomBytes(sizeof(seed));
    std::memcpy(seed.data(), r.data(), sizeof(seed));
    if ((seed[0] | seed[1] | seed[2] | seed[3]) == 0) seed[0] = 1;
    return seed;
  }();
  auto rotl = [](uint64_t x, int k) { return (x << k) | (x >> (64 - k)); };
  std::string out(32, '\0');
  for (int i = 0; i < 4; ++i) {
    uint64_t result = rotl(st[1] * 5, 7) * 9;
    uint64_t t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = rotl(st[3], 45);
    std::memcpy(out.data() + i * 8, &result, 8);
  }
  return out;
}

// W3C traceparent: "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>".
std::optional<std::string> TraceIdFrom(std::string_view tp) {
  tp = Trim(tp);
  if (tp.size() < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-') return std::nullopt;
  if (tp.substr(0, 2) == "ff") return std::nullopt;
  auto lowhex = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(),
                       [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
  };
  std::string_view trace = tp.substr(3, 32);
  std::string_view parent = tp.substr(36, 16);
  if (!lowhex(tp.substr(0, 2)) || !lowhex(trace) || !lowhex(parent) || !lowhex(tp.substr(53, 2))) {
    return std::nullopt;
  }
  if (trace == std::string(32, '0') || parent == std::string(16, '0')) return std::nullopt;
  return std::string(trace);
}

bool IsJsonMediaType(std::string_view mt) {
  mt = Trim(mt.substr(0, mt.find(';')));
  return IEquals(mt, "application/fhir+json") || IEquals(mt, "application/json") ||
         IEquals(mt, "application/json+fhir");
}

// ---------------------------------------------------------------------------
// Responses

json::Value Str(std::string s) { return json::Value::String(std::move(s)); }

json::Value OperationOutcome(std::string_view severity, std::string_view issue_code,
                             std::string_view name, std::string_view text,
                             std::string_view diagnostics) {
  json::Value coding = json::Value::MakeObject();
  coding.Set("system", Str(std::string(kErrorSystem)));
  coding.Set("code", Str(std::string(name)));
  json::Value details = json::Value::MakeObject();
  details.Set("coding", json::Value::MakeArray({std::move(coding)}));
  details.Set("text", Str(std::string(text)));
  json::Value issue = json::Value::MakeObject();
  issue.Set("severity", Str(std::string(severity)));
  issue.Set("code", Str(std::string(issue_code)));
  issue.Set("details", std::move(details));
  if (!diagnostics.empty()) issue.Set("diagnostics", Str(std::string(diagnostics)));
  json::Value oo = json::Value::MakeObject();
  oo.Set("resourceType", Str("OperationOutcome"));
  oo.Set("issue", json::Value::MakeArray({std::move(issue)}));
  return oo;
}

// Diagnostics safe to show the client: store and crypto details never leave
// the server (they may name files or internal state).
std::string ClientDiagnostics(ErrorCode code, const absl::Status& status) {
  switch (code) {
    case ErrorCode::kDecryptionFailed:
    case ErrorCode::kInternal:
    case ErrorCode::kAuditUnavailable:
    case ErrorCode::kUnavailable:
    case ErrorCode::kInvalidToken:  // the reason is audited, not told to a forger
    case ErrorCode::kNotFound:      // identical for absent and hidden resources
      return "";
    default:
      return DetailOf(status);
  }
}

std::string BearerChallenge(ErrorCode code, std::string_view description) {
  std::string v = "Bearer realm=\"fhirward\"";
  if (code == ErrorCode::kInvalidToken) {
    v += ", error=\"invalid_token\", error_description=\"";
    v += description;
    v += "\"";
  } else if (code == ErrorCode::kInsufficientScope) {
    v += ", error=\"insufficient_scope\", error_description=\"";
    v += description;
    v += "\"";
  }
  return v;
}

// Per-request state: what the audit record and the log line need.
constexpr size_t kMaxBreakGlassReason = 500;

struct Ctx {
  std::string request_id;
  std::string trace_id;
  bool pretty = false;
  bool tls = false;
  std::shared_ptr<const policy::Principal> principal;  // shared with the token cache
  audit::AuditRecord audit;
  std::string forced_outcome;  // e.g. "denied" for a hidden 404
  std::chrono::steady_clock::time_point start;
  policy::Environment env;  // time, address and break-glass header of the request
  std::shared_ptr<const policy::PolicyEngine> engine;  // null: ServiceDeps::policy
  // Obligations gathered from every decision of the request (Decide): masks
  // apply to every resource of their type the response carries.
  mutable std::vector<std::string> masked;
  mutable std::vector<std::string> read_only;
  mutable std::string break_glass_episode;
  mutable std::string break_glass_reason;
  mutable bool break_glass_opened = false;
  mutable std::string shadow;    // shadow-mode disagreement of the first decision
  mutable std::string decision;  // summary of the request's decision
  // The request's decision confines the principal to some patients' records:
  // an erased resource is then answered like an absent one (404, not 410).
  mutable bool confined = false;
};

struct Route {
  Interaction interaction = Interaction::kRead;
  bool search = false;
  bool bundle = false;       // POST to the base: transaction or batch
  bool conditional = false;  // PUT/DELETE Type?query
  std::string compartment;   // Patient/{id}/Type search: the Patient id
  bool operation = false;
  std::string operation_name;  // "validate"
  std::string type;
  std::string id;
  int64_t vid = 0;
};

// The request target, parsed once (HandleAsync needs the route to choose a
// thread; Dispatch needs all of it).
struct Parsed {
  absl::Status target;  // malformed path or query string
  std::vector<std::string> segments;
  Query query;
  Route route;
  absl::Status routed;  // unknown type, bad id, method not allowed, ...
};

std::string Allowed(const Route& r) {
  if (r.interaction == Interaction::kCapabilities) return "GET";
  if (r.type == "AuditEvent") return r.operation_name == "tree-head" ? "GET, POST" : "GET";
  if (r.interaction == Interaction::kHistorySystem || r.interaction == Interaction::kHistoryType ||
      r.interaction == Interaction::kHistoryInstance || r.interaction == Interaction::kVread) {
    return "GET";
  }
  if (r.id.empty()) return "GET, POST";
  return "GET, PUT, PATCH, DELETE";
}

}  // namespace

// ---------------------------------------------------------------------------

struct FhirService::Impl {
  ServiceDeps d;
  std::string capability_json;
  std::unique_ptr<crypto::Aead> cursor_aead;
  std::unique_ptr<fhir::Validator> default_validator;  // when the deps name none

  explicit Impl(ServiceDeps deps) : d(std::move(deps)) {
    if (d.validator == nullptr) {
      default_validator = std::make_unique<fhir::Validator>();
      d.validator = default_validator.get();
    }
    capability_json = BuildCapability();
    auto aead = crypto::Aead::NewAes256Gcm(
        SecretBytes(crypto::HmacSha256(d.cursor_key->UnsafeView(), "fhirward-cursor-aead-v1")));
    if (aead.ok()) cursor_aead = std::move(*aead);
    pool = std::make_unique<WorkerPool>(std::max(1, d.config.worker_threads));
  }

  std::string BuildCapability() const {
    json::Value cs = json::Value::MakeObject();
    cs.Set("resourceType", Str("CapabilityStatement"));
    cs.Set("status", Str("active"));
    cs.Set("date", Str(FormatInstant(d.clock->Now()).substr(0, 10)));
    cs.Set("kind", Str("instance"));
    json::Value software = json::Value::MakeObject();
    software.Set("name", Str("fhirward"));
    software.Set("version", Str(FHIRWARD_VERSION));
    cs.Set("software", std::move(software));
    json::Value impl = json::Value::MakeObject();
    impl.Set("description", Str("fhirward FHIR R4 server"));
    impl.Set("url", Str(d.base_url));
    cs.Set("implementation", std::move(impl));
    cs.Set("fhirVersion", Str("4.0.1"));
    cs.Set("format", json::Value::MakeArray({Str("json")}));
    json::Value rest = json::Value::MakeObject();
    rest.Set("mode", Str("server"));
    json::Value security = json::Value::MakeObject();
    json::Value svc = json::Value::MakeObject();
    json::Value coding = json::Value::MakeObject();
    coding.Set("system", Str("http://terminology.hl7.org/CodeSystem/restful-security-service"));
    coding.Set("code", Str("SMART-on-FHIR"));
    svc.Set("coding", json::Value::MakeArray({std::move(coding)}));
    security.Set("service", json::Value::MakeArray({std::move(svc)}));
    if (d.oauth != nullptr) {
      // SMART App Launch v1 discovery (still read by clients and test kits):
      // the built-in authorization server's endpoints.
      json::Value uris = json::Value::MakeObject();
      uris.Set("url", Str("http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"));
      json::Value parts = json::Value::MakeArray();
      for (const char* name : {"authorize", "token", "revoke", "introspect"}) {
        json::Value e = json::Value::MakeObject();
        e.Set("url", Str(name));
        e.Set("valueUri", Str(d.base_url + "/" + name));
        parts.Push(std::move(e));
      }
      uris.Set("extension", std::move(parts));
      security.Set("extension", json::Value::MakeArray({std::move(uris)}));
    }
    security.Set("description",
                 Str("Bearer JWT access tokens (RFC 9068) with SMART App Launch v1/v2 scopes; "
                     "TLS 1.3"));
    rest.Set("security", std::move(security));
    json::Value resources = json::Value::MakeArray();
    for (std::string_view type : fhir::ResourceTypes()) {
      json::Value r = json::Value::MakeObject();
      r.Set("type", Str(std::string(type)));
      if (type == "AuditEvent") {
        // The audit trail: read and search only (audit_api.h), never written through the API.
        json::Value interactions = json::Value::MakeArray();
        for (const char* code : {"read", "search-type"}) {
          json::Value i = json::Value::MakeObject();
          i.Set("code", Str(code));
          interactions.Push(std::move(i));
        }
        r.Set("interaction", std::move(interactions));
        r.Set("documentation",
              Str("Served from the append-only audit trail (IHE BALP shaped); read-only. "
                  "Auditors also have $tree-head, $inclusion-proof and $consistency-proof."));
        r.Set("versioning", Str("no-version"));
        r.Set("readHistory", json::Value::Bool(false));
        r.Set("updateCreate", json::Value::Bool(false));
        r.Set("conditionalCreate", json::Value::Bool(false));
        r.Set("conditionalUpdate", json::Value::Bool(false));
        r.Set("conditionalDelete", Str("not-supported"));
        json::Value params = json::Value::MakeArray();
        for (const fhir::SearchParamDef* def : fhir::Model::R4().SearchParamsOf(type)) {
          static const std::set<std::string_view> kServed = {
              "patient", "agent", "entity", "entity-type", "subtype", "action", "outcome", "date"};
          if (kServed.count(def->code) == 0) continue;
          json::Value sp = json::Value::MakeObject();
          sp.Set("name", Str(def->code));
          sp.Set("definition", Str(def->url));
          sp.Set("type", Str(def->type));
          params.Push(std::move(sp));
        }
        r.Set("searchParam", std::move(params));
        resources.Push(std::move(r));
        continue;
      }
      json::Value interactions = json::Value::MakeArray();
      for (const char* code : {"read", "vread", "update", "patch", "delete", "history-instance",
                               "history-type", "create", "search-type"}) {
        json::Value i = json::Value::MakeObject();
        i.Set("code", Str(code));
        interactions.Push(std::move(i));
      }
      r.Set("interaction", std::move(interactions));
      r.Set("versioning", Str("versioned-update"));
      r.Set("readHistory", json::Value::Bool(true));
      r.Set("updateCreate", json::Value::Bool(d.config.update_create));
      r.Set("conditionalCreate", json::Value::Bool(true));
      r.Set("conditionalRead", Str("not-supported"));
      r.Set("conditionalUpdate", json::Value::Bool(true));
      r.Set("conditionalDelete", Str("single"));
      json::Value params = json::Value::MakeArray();
      for (const fhir::SearchParamDef* def : fhir::Model::R4().SearchParamsOf(type)) {
        if (!fhir::IsIndexedParamType(def->type) && def->code != "_id" &&
            def->code != "_lastUpdated") {
          continue;
        }
        json::Value sp = json::Value::MakeObject();
        sp.Set("name", Str(def->code));
        sp.Set("definition", Str(def->url));
        sp.Set("type", Str(def->type));
        params.Push(std::move(sp));
      }
      r.Set("searchParam", std::move(params));
      json::Value includes = json::Value::MakeArray();
      includes.Push(Str("*"));
      r.Set("searchInclude", std::move(includes));
      resources.Push(std::move(r));
    }
    rest.Set("resource", std::move(resources));
    json::Value sys_interactions = json::Value::MakeArray();
    for (const char* code : {"history-system", "transaction", "batch"}) {
      json::Value i = json::Value::MakeObject();
      i.Set("code", Str(code));
      sys_interactions.Push(std::move(i));
    }
    rest.Set("interaction", std::move(sys_interactions));
    cs.Set("rest", json::Value::MakeArray({std::move(rest)}));
    return json::Write(cs);
  }

  // --- response helpers ----------------------------------------------------

  std::string Body(const Ctx& ctx, const json::Value& v) const {
    return json::Write(v, {.pretty = ctx.pretty});
  }

  // A stored resource's JSON, re-indented when _pretty asks for it.
  std::string Body(const Ctx& ctx, const std::string& stored_json) const {
    if (!ctx.pretty) return stored_json;
    auto v = json::Parse(stored_json);
    return v.ok() ? json::Write(*v, {.pretty = true}) : stored_json;
  }

  // One request is decided by one policy version.
  const policy::PolicyEngine& Engine(const Ctx& ctx) const {
    return ctx.engine ? *ctx.engine : *d.policy;
  }

  // The policy decision for `areq`, gathering its obligations into ctx.
  policy::Decision Decide(const Ctx& ctx, const policy::AccessRequest& areq) const {
    policy::Decision dec = Engine(ctx).Authorize(*ctx.principal, areq, ctx.env);
    if (!dec.shadow.empty() && ctx.shadow.empty()) ctx.shadow = dec.shadow;
    if (!dec.allow) return dec;
    const policy::Obligations& ob = dec.obligations;
    auto gather = [](std::vector<std::string>& into, const std::vector<std::string>& from) {
      for (const auto& x : from) {
        if (std::find(into.begin(), into.end(), x) == into.end()) into.push_back(x);
      }
    };
    gather(ctx.masked, ob.masked);
    gather(ctx.read_only, ob.read_only);
    if (!ob.break_glass_episode.empty()) {
      ctx.break_glass_episode = ob.break_glass_episode;
      ctx.break_glass_reason = ob.break_glass_reason;
      ctx.break_glass_opened = ctx.break_glass_opened || ob.alert;
    }
    return dec;
  }

  // The per-resource check of `dec` for one resource (its compartments, and
  // its JSON or parsed body when labels or consents must be looked at).
  policy::Decision CheckResource(const Ctx& ctx, const policy::Decision& dec,
                                 Interaction interaction, std::string_view type,
                                 std::string_view id, const std::vector<std::string>& patients,
                                 std::string_view json_text = {},
                                 const json::Value* body = nullptr) const {
    policy::ResourceFacts f;
    f.type = type;
    f.id = id;
    f.patients = &patients;
    f.in_compartment_definition = fhir::InPatientCompartmentDefinition(type);
    std::vector<std::string> labels;
    const policy::Obligations& ob = dec.obligations;
    if (dec.allow && (!ob.denied_labels.empty() || ob.consent)) {
      if (body) {
        labels = policy::SecurityLabels(*body);
      } else if (json_text.find("\"security\"") != std::string_view::npos) {
        auto v = json::Parse(json_text, d.config.json_limits);
        if (!v.ok()) {
          policy::Decision refused = dec;
          refused.allow = false;
          refused.reason = "unreadable_resource";
          return refused;
        }
        labels = policy::SecurityLabels(*v);
      }
      f.labels = &labels;
    }
    return Engine(ctx).AuthorizeResource(*ctx.principal, dec, interaction, f, ctx.env);
  }

  // A stored resource as this principal may see it: masked elements replaced
  // by data-absent-reason placeholders.
  std::string Shown(const Ctx& ctx, const std::string& stored_json) const {
    if (ctx.masked.empty()) return stored_json;
    auto v = json::Parse(stored_json, d.config.json_limits);
    if (!v.ok()) return "{}";
    if (policy::ApplyMasks(*v, ctx.masked) == 0) return stored_json;
    return json::Write(*v);
  }

  net::HttpResponse ErrorResponse(Ctx& ctx, const absl::Status& status) const {
    ErrorCode code = CodeOf(status);
    if (code == ErrorCode::kErased && ctx.confined) {
      // Whether a record outside one's reach existed is not told (any path:
      // update, patch, transaction entries, operations).
      ctx.audit.error = "erased";
      code = ErrorCode::kNotFound;
    }
    const ErrorInfo& info = Describe(code);
    net::HttpResponse r;
    r.status = info.http_status;
    r.SetHeader("Content-Type", std::string(kFhirJson));
    std::string diag = ClientDiagnostics(code, status);
    r.body = Body(ctx, OperationOutcome("error", info.issue_code, info.name, info.message, diag));
    if (code == ErrorCode::kMissingToken || code == ErrorCode::kInvalidToken ||
        code == ErrorCode::kInsufficientScope) {
      r.SetHeader("WWW-Authenticate", BearerChallenge(code, info.message));
      const std::string detail = DetailOf(status);
      if (code == ErrorCode::kInvalidToken &&
          (detail.rfind("dpop", 0) == 0 || detail == "not_dpop_bound")) {
        // RFC 9449 §7.1: a DPoP-bound token's failure is challenged with DPoP.
        r.SetHeader("WWW-Authenticate",
                    "DPoP algs=\"ES256 ES384 RS256 PS256 EdDSA\", error=\"invalid_token\", "
                    "error_description=\"" +
                        detail + "\"");
      }
    }
    if (code == ErrorCode::kTooManyRequests) r.SetHeader("Retry-After", "1");
    if (ctx.audit.error.empty()) {
      ctx.audit.error = std::string(info.name);
      if (code == ErrorCode::kInvalidToken) ctx.audit.error += ":" + DetailOf(status);
    }
    return r;
  }

  net::HttpResponse Error(Ctx& ctx, ErrorCode code, std::string_view detail = {}) const {
    return ErrorResponse(ctx, fhirward::Error(code, detail));
  }

  // Adds ETag, Last-Modified and Location for a stored version.
  void VersionHeaders(net::HttpResponse& r, const store::StoredVersion& v, bool location) const {
    r.SetHeader("ETag", ETag(v.version));
    if (auto t = ParseInstant(v.last_updated)) r.SetHeader("Last-Modified", FormatHttpDate(*t));
    if (location) {
      r.SetHeader("Location", d.base_url + "/" + v.type + "/" + v.id + "/_history/" +
                                  std::to_string(v.version));
    }
  }

  // Prefer: return=minimal | representation | OperationOutcome.
  void WriteBody(Ctx& ctx, const net::HttpRequest& req, net::HttpResponse& r,
                 const store::StoredVersion& v, std::string_view what) const {
    std::string_view prefer = req.header("Prefer").value_or("");
    bool minimal = false, outcome = false;
    for (std::string_view part : Split(prefer, ',')) {
      part = Trim(part);
      if (IEquals(part, "return=minimal")) minimal = true;
      if (IEquals(part, "return=OperationOutcome")) outcome = true;
    }
    if (minimal) return;
    r.SetHeader("Content-Type", std::string(kFhirJson));
    if (outcome) {
      r.body = Body(ctx, OperationOutcome("information", "informational", "ok",
                                          std::string(what) + " " + v.type + "/" + v.id +
                                              " version " + std::to_string(v.version),
                                          ""));
      return;
    }
    r.body = Body(ctx, Shown(ctx, v.json));
    ctx.audit.count = 1;
  }

  // --- routing ----------------------------------------------------------------

  absl::Status ParseRoute(const std::string& method, const std::vector<std::string>& seg,
                          bool has_query, Route* r) const {
    auto check_type = [&](const std::string& t) -> absl::Status {
      if (!fhir::IsResourceType(t)) {
        return fhirward::Error(ErrorCode::kUnknownResourceType, "unknown resource type " + t);
      }
      return absl::OkStatus();
    };
    auto check_id = [&](const std::string& id) -> absl::Status {
      if (!fhir::IsValidId(id)) return fhirward::Error(ErrorCode::kInvalidId);
      return absl::OkStatus();
    };
    auto method_is = [&](std::initializer_list<std::string_view> allowed) {
      return std::find(allowed.begin(), allowed.end(), method) != allowed.end();
    };
    auto not_allowed = [&]() {
      return fhirward::Error(ErrorCode::kMethodNotAllowed, method + " is not allowed here");
    };
    const size_t n = seg.size();
    if (n == 0) {
      if (method == "POST") {
        r->bundle = true;
        r->interaction = Interaction::kCreate;
        return absl::OkStatus();
      }
      return fhirward::Error(ErrorCode::kRouteNotFound);
    }
    if (n == 1 && seg[0] == "metadata") {
      r->interaction = Interaction::kCapabilities;
      return method_is({"GET"}) ? absl::OkStatus() : not_allowed();
    }
    if (n == 1 && seg[0] == "_history") {
      r->interaction = Interaction::kHistorySystem;
      return method_is({"GET"}) ? absl::OkStatus() : not_allowed();
    }
    if (!seg[0].empty() && seg[0][0] == '$') {
      r->operation = true;
      if (n == 1 && seg[0] == "$explain-access") {
        r->operation_name = "explain-access";
        return method_is({"POST"}) ? absl::OkStatus() : not_allowed();
      }
      return fhirward::Error(ErrorCode::kNotImplemented, "operations are not supported yet");
    }
    if (auto s = check_type(seg[0]); !s.ok()) return s;
    r->type = seg[0];
    if (r->type == "AuditEvent") {
      // The audit trail: read-only through every API; served from the audit
      // log, never from the resource store.
      auto read_only = [&]() {
        return fhirward::Error(ErrorCode::kMethodNotAllowed,
                               "the audit trail is read-only: only the server writes AuditEvents");
      };
      if (n == 1) {
        r->interaction = Interaction::kSearch;
        r->search = true;
        return method_is({"GET"}) ? absl::OkStatus() : read_only();
      }
      if (n == 2 && !seg[1].empty() && seg[1][0] == '$') {
        r->operation = true;
        r->interaction = Interaction::kSearch;
        const std::string op = seg[1].substr(1);
        if (op == "tree-head") {
          r->operation_name = op;
          return method_is({"GET", "POST"}) ? absl::OkStatus() : not_allowed();
        }
        if (op == "inclusion-proof" || op == "consistency-proof") {
          r->operation_name = op;
          return method_is({"GET"}) ? absl::OkStatus() : not_allowed();
        }
        return fhirward::Error(ErrorCode::kNotImplemented, "unknown AuditEvent operation");
      }
      if (n == 2 && seg[1] == "_search") {
        r->interaction = Interaction::kSearch;
        r->search = true;
        return fhirward::Error(ErrorCode::kMethodNotAllowed, "search the audit trail with GET");
      }
      if (n == 2 && seg[1] != "_history") {
        if (auto s = check_id(seg[1]); !s.ok()) return s;
        r->id = seg[1];
        r->interaction = Interaction::kRead;
        return method_is({"GET"}) ? absl::OkStatus() : read_only();
      }
      if (!method_is({"GET"})) return read_only();
      r->interaction = Interaction::kHistoryType;
      return fhirward::Error(ErrorCode::kNotImplemented,
                             "audit records have no history: they never change");
    }
    if (n == 1) {
      if (method == "POST") {
        r->interaction = Interaction::kCreate;
        return absl::OkStatus();
      }
      if ((method == "PUT" || method == "DELETE") && has_query) {
        r->conditional = true;
        r->interaction = method == "PUT" ? Interaction::kUpdate : Interaction::kDelete;
        return absl::OkStatus();
      }
      r->interaction = Interaction::kSearch;
      r->search = true;
      return method_is({"GET"}) ? absl::OkStatus() : not_allowed();
    }
    if (n == 2 && seg[1] == "_history") {
      r->interaction = Interaction::kHistoryType;
      return method_is({"GET"}) ? absl::OkStatus() : not_allowed();
    }
    if (n == 2 && seg[1] == "_search") {
      r->interaction = Interaction::kSearch;
      r->search = true;
      return method_is({"POST"}) ? absl::OkStatus() : not_allowed();
    }
    if (!seg[1].empty() && seg[1][0] == '$') {
      r->operation = true;
      if (n == 2 && seg[1] == "$validate") {
        // Authorized as the write it checks (mode, Dispatch); never stores.
        r->operation_name = "validate";
        r->interaction = Interaction::kCreate;
        return method_is({"POST"}) ? absl::OkStatus() : not_allowed();
      }
      return fhirward::Error(ErrorCode::kNotImplemented, "operations are not supported yet");
    }
    if (auto s = check_id(seg[1]); !s.ok()) return s;
    r->id = seg[1];
    if (n == 2) {
      if (method == "GET") {
        r->interaction = Interaction::kRead;
      } else if (method == "PUT") {
        r->interaction = Interaction::kUpdate;
      } else if (method == "DELETE") {
        r->interaction = Interaction::kDelete;
      } else if (method == "PATCH") {
        r->interaction = Interaction::kPatch;
      } else {
        r->interaction = Interaction::kRead;
        return not_allowed();
      }
      return absl::OkStatus();
    }
    if (n == 3 && seg[2] == "$validate") {
      r->operation = true;
      r->operation_name = "validate";
      r->interaction = Interaction::kRead;  // the stored instance, or a body (mode, Dispatch)
      return method_is({"GET", "POST"}) ? absl::OkStatus() : not_allowed();
    }
    if (!seg[2].empty() && seg[2][0] == '$') {
      r->operation = true;
      return fhirward::Error(ErrorCode::kNotImplemented, "operations are not supported yet");
    }
    if (n == 3 && fhir::IsResourceType(seg[2])) {
      // Compartment search: Patient/123/Observation.
      if (r->type != "Patient") {
        return fhirward::Error(ErrorCode::kNotImplemented,
                               "only the Patient compartment can be searched");
      }
      r->compartment = r->id;
      r->id.clear();
      r->type = seg[2];
      if (r->type != "Patient" && !fhir::InPatientCompartmentDefinition(r->type)) {
        return fhirward::Error(ErrorCode::kInvalidRequest,
                               r->type + " is not in the Patient compartment");
      }
      r->interaction = Interaction::kSearch;
      r->search = true;
      return method_is({"GET"}) ? absl::OkStatus() : not_allowed();
    }
    if (seg[2] != "_history") return fhirward::Error(ErrorCode::kRouteNotFound);
    if (n == 3) {
      r->interaction = Interaction::kHistoryInstance;
      return method_is({"GET"}) ? absl::OkStatus() : not_allowed();
    }
    if (n == 4) {
      r->interaction = Interaction::kVread;
      auto v = ParsePositive(seg[3]);
      if (!v || *v < 1) return fhirward::Error(ErrorCode::kNotFound, "no such version");
      r->vid = *v;
      return method_is({"GET"}) ? absl::OkStatus() : not_allowed();
    }
    return fhirward::Error(ErrorCode::kRouteNotFound);
  }

  // --- the pipeline -----------------------------------------------------------

  Parsed Parse(const net::HttpRequest& req) const {
    Parsed p;
    p.target = ParseTarget(req.target, &p.segments, &p.query);
    if (p.target.ok()) {
      p.routed =
          ParseRoute(req.method, p.segments, req.target.find('?') != std::string::npos, &p.route);
    }
    return p;
  }

  net::HttpResponse Dispatch(Ctx& ctx, net::HttpRequest& req, const Parsed& parsed) {
    if (req.transport_error) return Error(ctx, *req.transport_error);
    if (!parsed.target.ok()) return ErrorResponse(ctx, parsed.target);
    const Query& query = parsed.query;
    for (const auto& [k, v] : query) {
      if (k == "access_token") return Error(ctx, ErrorCode::kTokenInQuery);
    }

    // Content negotiation (before anything is done on the caller's behalf).
    if (const std::string* fmt = QueryParam(query, "_format")) {
      if (*fmt != "json" && !IsJsonMediaType(*fmt)) {
        return Error(ctx, ErrorCode::kNotAcceptable, "only JSON is supported");
      }
    }
    if (auto accept = req.header("Accept"); accept && !QueryParam(query, "_format")) {
      bool ok = false;
      for (std::string_view range : Split(*accept, ',')) {
        std::string_view mt = Trim(range.substr(0, range.find(';')));
        if (mt == "*/*" || IEquals(mt, "application/*") || IsJsonMediaType(mt) || mt.empty()) {
          ok = true;
        }
      }
      if (!ok) return Error(ctx, ErrorCode::kNotAcceptable, "only JSON is supported");
    }
    if (const std::string* pretty = QueryParam(query, "_pretty")) ctx.pretty = *pretty == "true";

    const Route& route = parsed.route;
    const absl::Status& routed = parsed.routed;
    ctx.audit.action = std::string(policy::InteractionName(route.interaction));
    ctx.audit.resource_type = route.type;
    ctx.audit.resource_id = route.id;
    if (route.vid) ctx.audit.version_id = std::to_string(route.vid);
    if (!routed.ok()) {
      if (route.operation) ctx.audit.action = "operation";
      net::HttpResponse r = ErrorResponse(ctx, routed);
      if (CodeOf(routed) == ErrorCode::kMethodNotAllowed) r.SetHeader("Allow", Allowed(route));
      if (CodeOf(routed) != ErrorCode::kNotImplemented) return r;
      // Unsupported interactions still require a valid token before saying so.
      if (auto s = Authenticate(ctx, req); !s.ok()) return ErrorResponse(ctx, s);
      ctx.audit.error.clear();
      return ErrorResponse(ctx, routed);
    }

    if (route.interaction == Interaction::kCapabilities) {
      // Anonymous: limited per client address.
      if (int retry = d.rate_limiter->Acquire("meta\x1f" + req.remote_ip,
                                              std::chrono::steady_clock::now())) {
        return Throttled(ctx, retry);
      }
      net::HttpResponse r;
      r.SetHeader("Content-Type", std::string(kFhirJson));
      r.body = ctx.pretty ? Body(ctx, capability_json) : capability_json;
      return r;
    }

    if (auto s = Authenticate(ctx, req); !s.ok()) return ErrorResponse(ctx, s);
    const policy::Principal& p = *ctx.principal;

    if (int retry = d.rate_limiter->Acquire(PrincipalKey(p), std::chrono::steady_clock::now())) {
      return Throttled(ctx, retry);
    }

    if (route.bundle) return BundleRequest(ctx, req);
    if (route.operation_name == "explain-access") return ExplainAccess(ctx, req);
    return Perform(ctx, req, parsed);
  }

  // POST /$explain-access (admins and auditors): which policy, role and rule
  // decide a request of a given principal, and why. Never opens a break-glass
  // episode; reads relationships and consents as the request would.
  net::HttpResponse ExplainAccess(Ctx& ctx, const net::HttpRequest& req) {
    ctx.audit.action = "explain-access";
    const policy::PolicyEngine& engine = Engine(ctx);
    const std::shared_ptr<const policy::PolicySet> pol = engine.policy();
    if (!policy::MayExplain(*pol, *ctx.principal, ctx.env)) {
      ctx.audit.error = "forbidden:explain_needs_admin_or_auditor";
      return Error(ctx, ErrorCode::kForbidden,
                   "$explain-access is for the roles " + absl::StrJoin(pol->explain_roles, ", ") +
                       ", where no rule of the role denies it now");
    }
    // What the explanation reveals of the data (which patients a principal
    // relates to, a resource's labels and consents) is shown only as far as
    // the caller may read it.
    policy::AccessRequest read_patients;
    read_patients.interaction = Interaction::kSearch;
    read_patients.resource_type = "Patient";
    const policy::Decision caller_patients = Decide(ctx, read_patients);
    const bool show_patients = caller_patients.allow && !caller_patients.obligations.confined();
    auto ct = req.header("Content-Type");
    if (!ct || !IsJsonMediaType(*ct)) return Error(ctx, ErrorCode::kUnsupportedMediaType);
    auto body = json::Parse(req.body, d.config.json_limits);
    if (!body.ok()) return ErrorResponse(ctx, body.status());
    if (body->GetString("resourceType") != "Parameters") {
      return Error(ctx, ErrorCode::kInvalidRequest, "send a Parameters resource");
    }
    policy::Principal who;
    who.subject = "explain";
    policy::AccessRequest areq;
    policy::Environment env;
    env.now = ctx.env.now;
    env.dry_run = true;
    std::string interaction = "read";
    const json::Value* params = body->Find("parameter");
    if (params && !params->is_array()) return Error(ctx, ErrorCode::kInvalidRequest);
    for (const json::Value& prm : params ? params->items() : json::Array{}) {
      auto name = prm.GetString("name");
      std::optional<std::string_view> value;
      for (const char* k : {"valueString", "valueCode", "valueUri", "valueId", "valueInstant"}) {
        if (!value) value = prm.GetString(k);
      }
      if (!name || !value) {
        return Error(ctx, ErrorCode::kInvalidRequest, "each parameter needs a name and a value");
      }
      std::string v(*value);
      if (*name == "subject") {
        who.subject = v;
      } else if (*name == "client_id") {
        who.client_id = v;
      } else if (*name == "role") {
        who.roles.push_back(v);
        who.has_roles_claim = true;
      } else if (*name == "scope") {
        who.scope_text += (who.scope_text.empty() ? "" : " ") + v;
      } else if (*name == "fhirUser") {
        who.fhir_user = v;
      } else if (*name == "patient") {
        who.patient = v;
      } else if (*name == "purpose_of_use") {
        who.purpose_of_use.push_back(v);
      } else if (*name == "interaction") {
        interaction = v;
      } else if (*name == "type") {
        areq.resource_type = v;
      } else if (*name == "id") {
        areq.resource_id = v;
      } else if (*name == "address") {
        env.client_address = v;
      } else if (*name == "time") {
        auto t = ParseInstant(v);
        if (!t) return Error(ctx, ErrorCode::kInvalidParameter, "time must be an instant");
        env.now = std::chrono::duration_cast<std::chrono::seconds>(t->time_since_epoch()).count();
      } else if (*name == "break_glass_reason") {
        env.break_glass_reason = v;
      } else {
        return Error(ctx, ErrorCode::kInvalidParameter, "unknown parameter " + std::string(*name));
      }
    }
    who.scopes = policy::ParseScopes(who.scope_text);
    auto parsed = policy::InteractionFromName(interaction);
    if (!parsed) return Error(ctx, ErrorCode::kInvalidParameter, "unknown interaction");
    areq.interaction = *parsed;
    if (!areq.resource_type.empty() && !fhir::IsResourceType(areq.resource_type)) {
      return Error(ctx, ErrorCode::kUnknownResourceType);
    }
    policy::Decision dec = engine.Authorize(who, areq, env);
    json::Value out = json::Value::MakeObject();
    out.Set("resourceType", Str("Parameters"));
    json::Value list = json::Value::MakeArray();
    auto add = [&](const char* name, const char* kind, std::string value) {
      json::Value prm = json::Value::MakeObject();
      prm.Set("name", Str(name));
      prm.Set(kind, Str(std::move(value)));
      list.Push(std::move(prm));
    };
    add("decision", "valueCode", dec.allow ? "allow" : "deny");
    add("policy", "valueString", dec.policy_id);
    if (!dec.role.empty()) add("role", "valueString", dec.role);
    if (!dec.rule.empty()) add("rule", "valueString", dec.rule);
    if (!dec.allow) add("reason", "valueString", dec.reason);
    add("summary", "valueString", dec.Summary());
    const policy::Obligations& ob = dec.obligations;
    if (dec.allow) {
      if (ob.patients) {
        add("confined", "valueString", std::to_string(ob.patients->size()) + " patient(s)");
        if (show_patients) {
          for (const auto& pt : *ob.patients) add("patient", "valueString", pt);
        }
      }
      for (const auto& m : ob.masked) add("masked", "valueString", m);
      for (const auto& m : ob.read_only) add("read_only", "valueString", m);
      for (const auto& l : ob.denied_labels) add("hidden_label", "valueCode", l);
      if (ob.consent) add("consent", "valueString", "evaluated per resource");
      if (!ob.break_glass_episode.empty())
        add("break_glass", "valueString", ob.break_glass_episode);
    }
    if (!dec.shadow.empty()) add("shadow", "valueString", dec.shadow);
    if (dec.allow && !areq.resource_type.empty() && !areq.resource_id.empty()) {
      policy::AccessRequest caller_read;
      caller_read.interaction = Interaction::kRead;
      caller_read.resource_type = areq.resource_type;
      caller_read.resource_id = areq.resource_id;
      const policy::Decision mine = Decide(ctx, caller_read);
      auto v = d.store->Read({d.config.tenant, areq.resource_type, areq.resource_id});
      const bool caller_sees = mine.allow && v.ok() && !v->deleted &&
                               CheckResource(ctx, mine, Interaction::kRead, areq.resource_type,
                                             areq.resource_id, v->patients, v->json)
                                   .allow &&
                               CheckCurrent(ctx, mine, areq.resource_type, areq.resource_id).allow;
      if (!caller_sees) {
        // Whether it exists, its labels, its patient: not for this caller.
        add("resource_decision", "valueCode", "not-shown");
        add("resource_note", "valueString",
            "the caller may not read this resource: its facts are not shown");
      } else {
        std::vector<std::string> labels;
        if (auto doc = json::Parse(v->json.empty() ? "{}" : v->json, d.config.json_limits);
            doc.ok()) {
          labels = policy::SecurityLabels(*doc);
        }
        policy::ResourceFacts f;
        f.type = areq.resource_type;
        f.id = areq.resource_id;
        f.patients = &v->patients;
        f.in_compartment_definition = fhir::InPatientCompartmentDefinition(areq.resource_type);
        f.labels = &labels;
        policy::Decision rd = engine.AuthorizeResource(who, dec, areq.interaction, f, env);
        add("resource_decision", "valueCode", rd.allow ? "allow" : "deny");
        if (!rd.allow) add("resource_reason", "valueString", rd.reason);
        if (!rd.allow && rd.rule != dec.rule) add("resource_rule", "valueString", rd.rule);
      }
    }
    out.Set("parameter", std::move(list));
    net::HttpResponse r;
    r.SetHeader("Content-Type", std::string(kFhirJson));
    r.body = Body(ctx, out);
    return r;
  }

  // An authenticated request (or one entry of a batch): authorization, then
  // the interaction.
  net::HttpResponse Perform(Ctx& ctx, net::HttpRequest& req, const Parsed& parsed) {
    const Route& route = parsed.route;
    const Query& query = parsed.query;
    const policy::Principal& p = *ctx.principal;
    if (route.type == "AuditEvent") return AuditTrail(ctx, req, parsed);
    // $validate is authorized as the interaction it checks: a body to create
    // or update needs that permission; the stored instance needs read.
    Interaction interaction = route.interaction;
    std::optional<json::Value> validate_body;
    if (route.operation_name == "validate") {
      ctx.audit.action = "validate";
      auto in = ValidateInput(req, route, query, &interaction);
      if (!in.ok()) return ErrorResponse(ctx, in.status());
      validate_body = std::move(*in);
    }

    policy::AccessRequest areq;
    areq.interaction = interaction;
    areq.resource_type = route.type;
    areq.resource_id = route.id;
    policy::Decision decision = Decide(ctx, areq);
    ctx.decision = decision.Summary();
    ctx.confined = decision.obligations.confined();
    ctx.audit.policy_id = decision.policy_id;
    if (!decision.allow) {
      ctx.audit.error = std::string(Describe(decision.deny_code).name) + ":" + decision.reason;
      return Error(ctx, decision.deny_code, decision.reason);
    }
    if (decision.obligations.patients && decision.obligations.patients->size() == 1) {
      ctx.audit.patient_id = decision.obligations.patients->front();
    }

    if (route.search) return Search(ctx, req, route, query, decision);

    if (route.operation_name == "validate") {
      return ValidateOperation(ctx, route, interaction, std::move(validate_body), decision);
    }

    switch (route.interaction) {
      case Interaction::kRead:
        return Read(ctx, req, route, decision);
      case Interaction::kVread:
        return Read(ctx, req, route, decision);
      case Interaction::kHistoryInstance:
      case Interaction::kHistoryType:
      case Interaction::kHistorySystem:
        return History(ctx, req, route, query, decision);
      case Interaction::kCreate:
        if (req.header("If-None-Exist")) {
          return Idempotent(ctx, req,
                            [&]() { return ConditionalWrite(ctx, req, route, decision); });
        }
        return Idempotent(ctx, req, [&]() { return Write(ctx, req, route, decision); });
      case Interaction::kUpdate:
      case Interaction::kDelete:
        if (route.conditional) {
          return Idempotent(ctx, req,
                            [&]() { return ConditionalWrite(ctx, req, route, decision); });
        }
        return Idempotent(ctx, req, [&]() { return Write(ctx, req, route, decision); });
      case Interaction::kPatch:
        return Idempotent(ctx, req, [&]() { return Patch(ctx, req, route, decision); });
      default:
        return Error(ctx, ErrorCode::kNotImplemented);
    }
  }

  // A search's parameters for its audit record (at most 2048 bytes). Values
  // that identify a person (blind-indexed parameters, chains, _has, text
  // search) are replaced by a keyed pseudonym "~" + 16 hex: equal searches
  // stay recognisable, names and identifiers never reach the trail in clear.
  std::string AuditedQuery(const std::string& type, const Query& params) const {
    const fhir::SearchIndexer& indexer = fhir::SearchIndexer::R4();
    std::string out;
    for (const auto& [k, v] : params) {
      const std::string code = k.substr(0, k.find_first_of(":."));
      const bool identifying = k.find('.') != std::string::npos || code == "_has" ||
                               code == "_content" || code == "_text" || code == "_filter" ||
                               indexer.IsIdentifying(type, code);
      std::string value = v;
      if (identifying && d.audit_pseudonym_key != nullptr) {
        value = "~" +
                HexEncode(crypto::HmacSha256(d.audit_pseudonym_key->UnsafeView(),
                                             "fhirward-audit-query-v1|" + type + "|" + k + "|" + v))
                    .substr(0, 16);
      } else if (identifying) {
        value = "~";
      }
      std::string part = QueryEncode(k) + "=" + QueryEncode(value);
      if (out.size() + part.size() + 1 > 2048) break;
      if (!out.empty()) out += '&';
      out += part;
    }
    return out;
  }

  // Records the patients whose data a response carries (distinct, bounded).
  static void NotePatients(Ctx& ctx, const std::vector<std::string>& patients) {
    auto& list = ctx.audit.patients;
    for (const std::string& p : patients) {
      if (list.size() >= audit::AuditRecord::kMaxPatients) return;
      if (p.empty() || std::find(list.begin(), list.end(), p) != list.end()) continue;
      list.push_back(p);
    }
  }

  // ---- the audit trail (audit_api.h) ------------------------------------------

  // AuditEvent read and search, and the Merkle operations. Auditors (a role
  // in [audit] reader_roles, unconfined) see everything; a principal confined
  // to their own patient record (patient/AuditEvent.rs) gets the accounting
  // of disclosures of that record; everyone else is refused.
  net::HttpResponse AuditTrail(Ctx& ctx, net::HttpRequest& req, const Parsed& parsed) {
    const Route& route = parsed.route;
    const policy::Principal& p = *ctx.principal;
    if (route.operation) ctx.audit.action = "audit." + route.operation_name;
    if (d.audit_reader == nullptr) {
      return Error(ctx, ErrorCode::kNotImplemented, "the audit trail is not readable here");
    }
    policy::AccessRequest areq;
    areq.interaction = route.interaction;
    areq.resource_type = "AuditEvent";
    areq.resource_id = route.id;
    // Auditor view: the token names a reader role ([audit] reader_roles; the
    // claim comes from the trusted issuer) and the policy, deciding for that
    // role alone, allows the interaction unconfined.
    const auto& reader_roles = d.config.audit_reader_roles;
    policy::Principal as_reader = p;
    as_reader.roles.clear();
    for (const std::string& r : p.roles) {
      if (std::find(reader_roles.begin(), reader_roles.end(), r) != reader_roles.end()) {
        as_reader.roles.push_back(r);
      }
    }
    std::optional<policy::Decision> reader_decision;
    if (p.has_roles_claim && !as_reader.roles.empty()) {
      policy::Decision rd = Engine(ctx).Authorize(as_reader, areq, ctx.env);
      if (rd.allow && !rd.obligations.confined()) reader_decision = std::move(rd);
    }
    policy::Decision decision = reader_decision ? *reader_decision : Decide(ctx, areq);
    ctx.decision = decision.Summary();
    ctx.confined = decision.obligations.confined();
    ctx.audit.policy_id = decision.policy_id;
    if (!decision.allow) {
      ctx.audit.error = std::string(Describe(decision.deny_code).name) + ":" + decision.reason;
      return Error(ctx, decision.deny_code, decision.reason);
    }
    AuditView view = AuditView::kAuditor;
    std::string own_patient;
    const auto& confined = decision.obligations.patients;
    if (!reader_decision) {
      // Only a principal whose own record it is: the launch patient of a
      // patient-scoped token, or the Patient they are (fhirUser).
      const bool own =
          confined && confined->size() == 1 &&
          (p.patient == confined->front() || p.fhir_user == "Patient/" + confined->front());
      if (!own || route.operation) {
        ctx.audit.error = "forbidden:audit_trail_needs_reader_role";
        return Error(ctx, ErrorCode::kForbidden,
                     "the audit trail is for the roles " + absl::StrJoin(reader_roles, ", ") +
                         "; a patient sees the accounting of disclosures of their own record");
      }
      view = AuditView::kPatient;
      own_patient = confined->front();
      ctx.audit.patient_id = own_patient;
    }
    if (route.operation_name == "tree-head") return TreeHeadOperation(ctx, req, parsed.query);
    if (route.operation_name == "inclusion-proof") return InclusionOperation(ctx, parsed.query);
    if (route.operation_name == "consistency-proof") return ConsistencyOperation(ctx, parsed.query);

    if (!route.search) {
      auto seq = ParsePositive(route.id);
      auto stored = seq ? d.audit_reader->Record(*seq)
                        : absl::StatusOr<audit::StoredRecord>(
                              fhirward::Error(ErrorCode::kNotFound, "no such AuditEvent"));
      if (!stored.ok()) return ErrorResponse(ctx, stored.status());
      auto rec = audit::AuditRecord::FromJson(stored->json);
      if (!rec.ok()) return ErrorResponse(ctx, rec.status());
      if (view == AuditView::kPatient && !IsDisclosureTo(*rec, own_patient)) {
        return Error(ctx, ErrorCode::kNotFound, "no such AuditEvent");
      }
      if (view == AuditView::kAuditor && !rec->patient_id.empty()) {
        ctx.audit.patient_id = rec->patient_id;
      }
      ctx.audit.count = 1;
      net::HttpResponse r;
      r.SetHeader("Content-Type", std::string(kFhirJson));
      r.body = Body(ctx, ToAuditEvent(*seq, *rec, view, d.base_url, own_patient));
      return r;
    }

    auto q = ParseAuditSearch(parsed.query, view, own_patient);
    if (!q.ok()) return ErrorResponse(ctx, q.status());
    for (const auto& [k, vs] : q->terms) {
      if (k == "patient" && vs.size() == 1 && ctx.audit.patient_id.empty()) {
        ctx.audit.patient_id = vs.front();
      }
    }
    const std::string target_query = req.target.find('?') == std::string::npos
                                         ? ""
                                         : req.target.substr(req.target.find('?') + 1);
    ctx.audit.query = target_query.substr(0, 2048);
    // A patient's page is filtered further per hit (disclosures only): ask
    // for more and stop at the page size.
    const int want = q->limit;
    json::Value bundle = NewBundle("searchset");
    json::Value entries = json::Value::MakeArray();
    int64_t next = 0;
    int shown = 0;
    audit::AuditQuery page_query = *q;
    while (want > 0) {
      auto page = d.audit_reader->Search(page_query);
      if (!page.ok()) return ErrorResponse(ctx, page.status());
      for (const audit::StoredRecord& sr : page->records) {
        auto rec = audit::AuditRecord::FromJson(sr.json);
        if (!rec.ok()) continue;
        if (view == AuditView::kPatient && !IsDisclosureTo(*rec, own_patient)) continue;
        json::Value entry = json::Value::MakeObject();
        entry.Set("fullUrl", Str(d.base_url + "/AuditEvent/" + std::to_string(sr.seq)));
        entry.Set("resource", ToAuditEvent(sr.seq, *rec, view, d.base_url, own_patient));
        json::Value search = json::Value::MakeObject();
        search.Set("mode", Str("match"));
        entry.Set("search", std::move(search));
        entries.Push(std::move(entry));
        next = sr.seq;
        if (++shown == want) break;
      }
      if (shown == want) {
        // More may follow the last one shown.
        if (page->next_before == 0 &&
            page->records.size() < static_cast<size_t>(page_query.limit) &&
            page->records.back().seq == next) {
          next = 0;
        }
        break;
      }
      if (page->next_before == 0) {
        next = 0;
        break;
      }
      page_query.before_seq = page->next_before;
      next = page->next_before;
      if (view == AuditView::kAuditor) break;  // a short page with a next link
    }
    ctx.audit.count = shown;
    json::Value links = json::Value::MakeArray();
    std::string kept;
    for (const auto& [k, v] : parsed.query) {
      if (k == "_cursor") continue;
      kept += (kept.empty() ? "" : "&") + QueryEncode(k) + "=" + QueryEncode(v);
    }
    AddLink(links, "self", d.base_url + "/AuditEvent" + (kept.empty() ? "" : "?" + kept));
    if (next > 0) {
      AddLink(links, "next",
              d.base_url + "/AuditEvent?" + kept + (kept.empty() ? "" : "&") +
                  "_cursor=" + std::to_string(next));
    }
    bundle.Set("link", std::move(links));
    bundle.Set("entry", std::move(entries));
    net::HttpResponse r;
    r.SetHeader("Content-Type", std::string(kFhirJson));
    r.body = Body(ctx, bundle);
    return r;
  }

  static std::optional<int64_t> IntParam(const Query& query, const char* name) {
    const std::string* v = QueryParam(query, name);
    if (v == nullptr) return std::nullopt;
    auto n = ParsePositive(*v);
    if (!n) return -1;
    return *n;
  }

  json::Value TreeHeadJson(const audit::TreeHead& h) const {
    json::Value out = json::Value::MakeObject();
    out.Set("log_id", Str(d.base_url));
    out.Set("tree_size", json::Value::Int(h.tree_size));
    out.Set("timestamp", json::Value::Int(h.timestamp_ms));
    out.Set("root_hash", Str(Base64Encode(h.root)));
    out.Set("jws", Str(h.jws));
    if (d.audit_log_key != nullptr) out.Set("key", d.audit_log_key->public_key().ToJwk());
    return out;
  }

  net::HttpResponse PlainJson(Ctx& ctx, const json::Value& v) {
    net::HttpResponse r;
    r.SetHeader("Content-Type", "application/json");
    r.body = Body(ctx, v);
    return r;
  }

  // GET: the newest signed tree head (or ?tree_size=N, one signed at that
  // size). POST: sign one now over everything committed.
  net::HttpResponse TreeHeadOperation(Ctx& ctx, const net::HttpRequest& req, const Query& query) {
    if (req.method == "POST") {
      if (d.audit == nullptr) return Error(ctx, ErrorCode::kNotImplemented);
      auto head = d.audit->SignTreeHead();
      if (!head.ok()) return ErrorResponse(ctx, head.status());
      return PlainJson(ctx, TreeHeadJson(*head));
    }
    for (const auto& [k, v] : query) {
      if (k != "tree_size" && k != "_format" && k != "_pretty") {
        return Error(ctx, ErrorCode::kInvalidParameter, "unknown parameter " + k);
      }
    }
    absl::StatusOr<std::optional<audit::TreeHead>> head;
    if (auto size = IntParam(query, "tree_size")) {
      if (*size < 1)
        return Error(ctx, ErrorCode::kInvalidParameter, "tree_size is a positive number");
      head = d.audit_reader->TreeHeadAt(*size);
    } else {
      head = d.audit_reader->LatestTreeHead();
    }
    if (!head.ok()) return ErrorResponse(ctx, head.status());
    if (!head->has_value())
      return Error(ctx, ErrorCode::kNotFound, "no tree head signed at that size");
    return PlainJson(ctx, TreeHeadJson(**head));
  }

  // The tree size a proof is for: the query parameter `name` (with the head
  // signed at that size, if any), else the newest signed head.
  absl::StatusOr<std::pair<int64_t, std::optional<audit::TreeHead>>> ProofTarget(
      const Query& query, const char* name) const {
    if (auto size = IntParam(query, name)) {
      if (*size < 1) {
        return fhirward::Error(ErrorCode::kInvalidParameter,
                               std::string(name) + " is a positive tree size");
      }
      auto h = d.audit_reader->TreeHeadAt(*size);
      if (!h.ok()) return h.status();
      return std::make_pair(*size, *h);
    }
    auto h = d.audit_reader->LatestTreeHead();
    if (!h.ok()) return h.status();
    if (!h->has_value()) return fhirward::Error(ErrorCode::kNotFound, "no tree head signed yet");
    return std::make_pair((*h)->tree_size, *h);
  }

  // ?id=N[&tree_size=M]: the audit path of AuditEvent N in the tree of M
  // records (default: the newest signed head), with the record itself so the
  // caller can hash the leaf.
  net::HttpResponse InclusionOperation(Ctx& ctx, const Query& query) {
    for (const auto& [k, v] : query) {
      if (k != "id" && k != "tree_size" && k != "_format" && k != "_pretty") {
        return Error(ctx, ErrorCode::kInvalidParameter, "unknown parameter " + k);
      }
    }
    auto id = IntParam(query, "id");
    if (!id || *id < 1) return Error(ctx, ErrorCode::kInvalidParameter, "id is an AuditEvent id");
    auto target = ProofTarget(query, "tree_size");
    if (!target.ok()) return ErrorResponse(ctx, target.status());
    const auto& [size, head] = *target;
    auto proof = d.audit_reader->InclusionProof(*id, size);
    if (!proof.ok()) return ErrorResponse(ctx, proof.status());
    auto rec = d.audit_reader->Record(*id);
    if (!rec.ok()) return ErrorResponse(ctx, rec.status());
    json::Value out = json::Value::MakeObject();
    out.Set("id", Str(std::to_string(*id)));
    out.Set("leaf_index", json::Value::Int(*id - 1));
    out.Set("tree_size", json::Value::Int(size));
    out.Set("record", Str(rec->json));
    out.Set("leaf_hash", Str(Base64Encode(audit::merkle::LeafHash(rec->json))));
    json::Value path = json::Value::MakeArray();
    for (const std::string& h : *proof) path.Push(Str(Base64Encode(h)));
    out.Set("audit_path", std::move(path));
    if (head) out.Set("tree_head", TreeHeadJson(*head));
    ctx.audit.count = 1;
    return PlainJson(ctx, out);
  }

  // ?first=A[&second=B]: RFC 6962 PROOF(A, D[B]) (default B: the newest signed head).
  net::HttpResponse ConsistencyOperation(Ctx& ctx, const Query& query) {
    for (const auto& [k, v] : query) {
      if (k != "first" && k != "second" && k != "_format" && k != "_pretty") {
        return Error(ctx, ErrorCode::kInvalidParameter, "unknown parameter " + k);
      }
    }
    auto first = IntParam(query, "first");
    if (!first || *first < 1) {
      return Error(ctx, ErrorCode::kInvalidParameter, "first is a tree size");
    }
    auto target = ProofTarget(query, "second");
    if (!target.ok()) return ErrorResponse(ctx, target.status());
    const auto& [second, head] = *target;
    auto proof = d.audit_reader->ConsistencyProof(*first, second);
    if (!proof.ok()) return ErrorResponse(ctx, proof.status());
    json::Value out = json::Value::MakeObject();
    out.Set("first", json::Value::Int(*first));
    out.Set("second", json::Value::Int(second));
    json::Value path = json::Value::MakeArray();
    for (const std::string& h : *proof) path.Push(Str(Base64Encode(h)));
    out.Set("consistency", std::move(path));
    if (head) out.Set("tree_head", TreeHeadJson(*head));
    return PlainJson(ctx, out);
  }

  // Who is asking, for rate limits, idempotency keys and cursors: issuer,
  // client, subject and patient context, length-prefixed so that no two
  // principals share a key.
  static std::string PrincipalKey(const policy::Principal& p) {
    std::string k;
    for (const std::string* part : {&p.issuer, &p.client_id, &p.subject, &p.patient}) {
      k += std::to_string(part->size());
      k += ':';
      k += *part;
    }
    return k;
  }

  static std::string AddressKey(const net::HttpRequest& req) { return "addr\x1f" + req.remote_ip; }

  net::HttpResponse Throttled(Ctx& ctx, int retry) const {
    net::HttpResponse r = Error(ctx, ErrorCode::kTooManyRequests);
    r.SetHeader("Retry-After", std::to_string(retry));
    return r;
  }

  // Failed authentications are counted per client address; an address that
  // used up its budget is refused (429) before any signature is verified, so
  // a flood of forged tokens cannot buy ECDSA work. Valid tokens are limited
  // per principal instead (many users can share one address).
  absl::Status Authenticate(Ctx& ctx, const net::HttpRequest& req) const {
    const auto now = std::chrono::steady_clock::now();
    auto auth_header = req.header("Authorization");
    // Tokens already verified cost nothing more: an address whose failure
    // budget is spent (e.g. a NAT shared with an attacker) keeps working for
    // them.
    if (int retry = d.rate_limiter->Peek(AddressKey(req), now);
        retry && !(auth_header && d.authenticator->IsCached(*auth_header))) {
      return fhirward::Error(
          ErrorCode::kTooManyRequests,
          "too many failed authentications; retry in " + std::to_string(retry) + " s");
    }
    const auto& auth = auth_header;
    if (!auth) {
      d.rate_limiter->Acquire(AddressKey(req), now);
      return fhirward::Error(ErrorCode::kMissingToken);
    }
    AuthInput in;
    in.authorization = *auth;
    for (const auto& [k, v] : req.headers) {
      if (k.size() == 4 && IEquals(k, "dpop")) in.dpop.push_back(v);
    }
    in.method = req.method;
    in.url = d.base_url + req.target.substr(0, req.target.find('?'));
    in.client_cert_der = req.client_cert_der;
    auto principal = d.authenticator->Authenticate(in);
    if (!principal.ok()) {
      d.rate_limiter->Acquire(AddressKey(req), now);
      if (CodeOf(principal.status()) == ErrorCode::kMissingToken) {
        return principal.status();
      }
      return fhirward::Error(ErrorCode::kInvalidToken, DetailOf(principal.status()));
    }
    ctx.principal = std::move(*principal);
    ctx.audit.subject = ctx.principal->subject;
    ctx.audit.client_id = ctx.principal->client_id;
    ctx.audit.scopes = ctx.principal->scope_text;
    ctx.audit.roles = absl::StrJoin(ctx.principal->roles, " ");
    ctx.audit.purpose_of_use = absl::StrJoin(ctx.principal->purpose_of_use, " ");
    if (d.policies) ctx.engine = d.policies->Current();
    ctx.env.now = d.clock->NowSeconds();
    ctx.env.client_address = req.remote_ip;
    if (auto reason = req.header("X-Break-Glass-Reason")) {
      // A written justification: printable text (UTF-8 allowed), bounded.
      std::string_view text = Trim(*reason);
      if (text.size() > kMaxBreakGlassReason || std::any_of(text.begin(), text.end(), [](char c) {
            return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
          })) {
        return fhirward::Error(ErrorCode::kInvalidRequest,
                               "X-Break-Glass-Reason must be printable text of at most " +
                                   std::to_string(kMaxBreakGlassReason) + " characters");
      }
      ctx.env.break_glass_reason = std::string(text);
    }
    return absl::OkStatus();
  }

  // Whether the principal may read resources of `type` (type level).
  bool MayRead(const Ctx& ctx, const std::string& type) const {
    policy::AccessRequest read;
    read.interaction = Interaction::kRead;
    read.resource_type = type;
    return Decide(ctx, read).allow;
  }

  bool MayCreate(const Ctx& ctx, const std::string& type) const {
    policy::AccessRequest create;
    create.interaction = Interaction::kCreate;
    create.resource_type = type;
    return Decide(ctx, create).allow;
  }

  // The check of a resource as it is now: its current version, or for a
  // deleted one the last version with content (a tombstone carries no labels).
  // An older version is shown only when the resource as it is now may be too:
  // a label added later, or a move to another patient, protects the earlier
  // versions as well.
  policy::Decision CheckCurrent(const Ctx& ctx, const policy::Decision& dec,
                                const std::string& type, const std::string& id) const {
    auto cur = d.store->Read({d.config.tenant, type, id});
    if (!cur.ok()) {
      policy::Decision refused = dec;
      if (CodeOf(cur.status()) == ErrorCode::kNotFound) return refused;
      refused.allow = false;
      refused.reason = "current_version_unreadable";
      return refused;
    }
    if (cur->deleted && cur->version > 1 &&
        (!dec.obligations.denied_labels.empty() || dec.obligations.consent)) {
      auto last = d.store->ReadVersion({d.config.tenant, type, id}, cur->version - 1);
      if (last.ok() && !last->deleted) {
        return CheckResource(ctx, dec, Interaction::kRead, type, id, last->patients, last->json);
      }
    }
    return CheckResource(ctx, dec, Interaction::kRead, type, id, cur->patients, cur->json);
  }

  // A resource the policy hides is answered exactly like an absent one.
  net::HttpResponse Hidden(Ctx& ctx, const policy::Decision& rd) const {
    ctx.forced_outcome = "denied";
    ctx.audit.error = "forbidden:" + rd.reason;
    return Error(ctx, ErrorCode::kNotFound);
  }

  net::HttpResponse Read(Ctx& ctx, const net::HttpRequest& req, const Route& route,
                         const policy::Decision& decision) {
    store::ResourceKey key{d.config.tenant, route.type, route.id};
    auto v = route.interaction == Interaction::kVread ? d.store->ReadVersion(key, route.vid)
                                                      : d.store->Read(key);
    if (!v.ok()) {
      if (CodeOf(v.status()) == ErrorCode::kDecryptionFailed) {
        LogEvent(
            LogLevel::kError, "decryption_failed",
            {{"request_id", LogValue(ctx.request_id)}, {"resource_type", LogValue(route.type)}});
      }
      if (CodeOf(v.status()) == ErrorCode::kErased) {
        // Crypto-shredded: nothing is left to check it against. Only a principal
        // who may read the type beyond one patient's records learns that it
        // existed; a confined one gets the answer for an absent resource.
        if (decision.obligations.confined()) return Error(ctx, ErrorCode::kNotFound);
        ctx.audit.error = "erased";
        return Error(ctx, ErrorCode::kErased);
      }
      return ErrorResponse(ctx, v.status());
    }
    policy::Decision rd =
        CheckResource(ctx, decision, route.interaction, route.type, route.id, v->patients, v->json);
    if (!rd.allow) return Hidden(ctx, rd);
    if (route.interaction == Interaction::kVread || v->deleted) {
      rd = CheckCurrent(ctx, decision, route.type, route.id);
      if (!rd.allow) return Hidden(ctx, rd);
    }
    if (!v->patients.empty() && ctx.audit.patient_id.empty()) ctx.audit.patient_id = v->patients[0];
    NotePatients(ctx, v->patients);
    ctx.audit.version_id = std::to_string(v->version);
    if (v->deleted) {
      net::HttpResponse r = Error(ctx, ErrorCode::kGone);
      r.SetHeader("ETag", ETag(v->version));
      return r;
    }
    net::HttpResponse r;
    VersionHeaders(r, *v, false);
    if (auto inm = req.header("If-None-Match"); inm && route.interaction == Interaction::kRead) {
      for (std::string_view tag : Split(*inm, ',')) {
        if (Trim(tag) == "*" || ParseETagVersion(tag) == v->version) {
          r.status = 304;
          return r;
        }
      }
    }
    r.SetHeader("Content-Type", std::string(kFhirJson));
    r.body = Body(ctx, Shown(ctx, v->json));
    ctx.audit.count = 1;
    return r;
  }

  absl::StatusOr<json::Value> ParseResourceBody(const net::HttpRequest& req,
                                                const Route& route) const {
    auto ct = req.header("Content-Type");
    if (!ct || !IsJsonMediaType(*ct)) {
      return fhirward::Error(ErrorCode::kUnsupportedMediaType,
                             "send application/fhir+json or application/json");
    }
    for (std::string_view param : Split(*ct, ';')) {
      param = Trim(param);
      if (param.size() > 8 && IEquals(param.substr(0, 8), "charset=")) {
        std::string_view cs = Trim(param.substr(8));
        if (!cs.empty() && cs.front() == '"' && cs.back() == '"' && cs.size() >= 2) {
          cs = cs.substr(1, cs.size() - 2);
        }
        if (!IEquals(cs, "utf-8")) {
          return fhirward::Error(ErrorCode::kUnsupportedMediaType, "only UTF-8 is accepted");
        }
      }
    }
    auto v = json::Parse(req.body, d.config.json_limits);
    if (!v.ok()) return v.status();
    if (!v->is_object()) {
      return fhirward::Error(ErrorCode::kInvalidResource, "the body must be a JSON object");
    }
    const json::Value* rt = v->Find("resourceType");
    if (!rt || !rt->is_string()) {
      return fhirward::Error(ErrorCode::kInvalidResource, "resourceType is missing");
    }
    if (rt->as_string() != route.type) {
      return fhirward::Error(ErrorCode::kResourceTypeMismatch,
                             "the body's resourceType does not match the URL");
    }
    return std::move(*v);
  }

  absl::StatusOr<std::optional<int64_t>> IfMatch(const net::HttpRequest& req) const {
    auto im = req.header("If-Match");
    if (!im) {
      if (d.config.require_if_match) {
        return fhirward::Error(ErrorCode::kPreconditionRequired, "send If-Match: W/\"<version>\"");
      }
      return std::optional<int64_t>();
    }
    auto v = ParseETagVersion(*im);
    if (!v) return fhirward::Error(ErrorCode::kInvalidRequest, "If-Match must be W/\"<version>\"");
    return std::optional<int64_t>(*v);
  }

  // Field-level write rules of the request's decisions: masked elements keep
  // their stored values (the principal cannot see them, so it cannot change
  // them, and placeholders never overwrite data); a change to a read-only
  // element is refused. `stored_json` is the current version (null: none).
  std::optional<net::HttpResponse> ProtectElements(Ctx& ctx, json::Value& body,
                                                   const std::string* stored_json) const {
    if (ctx.masked.empty() && ctx.read_only.empty()) return std::nullopt;
    std::optional<json::Value> stored;
    if (stored_json) {
      auto v = json::Parse(*stored_json, d.config.json_limits);
      if (!v.ok()) return Error(ctx, ErrorCode::kInternal, "stored resource is unreadable");
      stored = std::move(*v);
    }
    const json::Value* before = stored ? &*stored : nullptr;
    if (!ctx.masked.empty() && before) policy::KeepStored(body, before, ctx.masked);
    if (auto changed = policy::ChangedPath(body, before, ctx.read_only)) {
      ctx.audit.error = "forbidden:read_only_element";
      return Error(ctx, ErrorCode::kForbidden, "element " + *changed + " is read-only for you");
    }
    return std::nullopt;
  }

  // Whether the request's decisions mask or protect elements of `type`.
  static bool HasFieldRules(const Ctx& ctx, std::string_view type) {
    for (const auto* paths : {&ctx.masked, &ctx.read_only}) {
      for (const auto& path : *paths) {
        if (path.size() > type.size() && path.starts_with(type) && path[type.size()] == '.') {
          return true;
        }
      }
    }
    return false;
  }

  net::HttpResponse Write(Ctx& ctx, const net::HttpRequest& req, const Route& route,
                          const policy::Decision& decision) {
    store::ResourceKey key{d.config.tenant, route.type, route.id};
    auto authorize = [&](const std::vector<std::string>& patients, std::string_view text,
                         const json::Value* body) {
      return CheckResource(ctx, decision, route.interaction, route.type, route.id, patients, text,
                           body);
    };
    auto deny = [&](const policy::Decision& rd) {
      ctx.audit.error = "forbidden:" + rd.reason;
      return Error(ctx, ErrorCode::kForbidden, rd.reason);
    };

    if (route.interaction == Interaction::kCreate) {
      auto body = ParseResourceBody(req, route);
      if (!body.ok()) return ErrorResponse(ctx, body.status());
      key.id = TimeOrderedUuid();
      body->Set("id", Str(key.id));
      ctx.audit.resource_id = key.id;
      if (auto refused = Refuse(ctx, *body)) return std::move(*refused);
      if (auto refused = ProtectElements(ctx, *body, nullptr)) return std::move(*refused);
      auto patients = fhir::PatientCompartmentsOf(route.type, *body);
      if (auto rd = authorize(patients, {}, &*body); !rd.allow) return deny(rd);
      auto stored = d.store->Create(key, std::move(*body));
      if (!stored.ok()) return ErrorResponse(ctx, stored.status());
      return Written(ctx, req, *stored, 201, "created");
    }

    auto if_match = IfMatch(req);
    if (!if_match.ok()) return ErrorResponse(ctx, if_match.status());
    std::optional<int64_t> expect = *if_match;
    // Under a compartment obligation, the write is bound to the version that
    // was authorized: a concurrent change in between fails instead of
    // slipping past the check.
    bool bound = false;
    auto current = d.store->Read(key);
    if (!current.ok() && CodeOf(current.status()) != ErrorCode::kNotFound) {
      return ErrorResponse(ctx, current.status());
    }
    const bool confined = decision.obligations.confined();
    const bool absent = !current.ok() || current->deleted;
    if (confined && absent) {
      // A compartment-confined principal may change only what it can read:
      // an absent id answers exactly like one outside the compartment (no
      // update-as-create, no delete of nothing), so writes cannot probe
      // for other patients' resources.
      return Error(ctx, ErrorCode::kNotFound);
    }
    if (!absent) {
      if (auto rd = authorize(current->patients, current->json, nullptr); !rd.allow) {
        if (confined) return Hidden(ctx, rd);
        return deny(rd);
      }
      if (confined) {
        // The write is bound to the version that was authorized: a client's
        // own If-Match must name it, and without one it is implied.
        if (expect && *expect != current->version) {
          return Error(ctx, ErrorCode::kPreconditionFailed,
                       "current version is W/\"" + std::to_string(current->version) + "\"");
        }
        bound = !expect.has_value();
        expect = current->version;
      }
    }

    if (route.interaction == Interaction::kDelete) {
      auto v = d.store->Delete(key, expect);
      if (!v.ok()) {
        if (bound && CodeOf(v.status()) == ErrorCode::kPreconditionFailed) {
          return Error(ctx, ErrorCode::kVersionConflict, "the resource changed; retry");
        }
        return ErrorResponse(ctx, v.status());
      }
      net::HttpResponse r;
      r.status = 204;
      if (v->version > 0) {
        // Only a reader learns the version (and with it, that the id existed).
        if (MayRead(ctx, route.type)) r.SetHeader("ETag", ETag(v->version));
        ctx.audit.version_id = std::to_string(v->version);
      }
      if (!v->patients.empty() && ctx.audit.patient_id.empty()) {
        ctx.audit.patient_id = v->patients[0];
      }
      return r;
    }

    // Update.
    auto body = ParseResourceBody(req, route);
    if (!body.ok()) return ErrorResponse(ctx, body.status());
    const json::Value* id = body->Find("id");
    if (!id || !id->is_string()) return Error(ctx, ErrorCode::kIdMismatch, "the body needs an id");
    if (id->as_string() != route.id) {
      return Error(ctx, ErrorCode::kIdMismatch, "the body's id does not match the URL");
    }
    if (auto refused = Refuse(ctx, *body)) return std::move(*refused);
    if (auto refused = ProtectElements(ctx, *body, absent ? nullptr : &current->json)) {
      return std::move(*refused);
    }
    auto patients = fhir::PatientCompartmentsOf(route.type, *body);
    if (auto rd = authorize(patients, {}, &*body); !rd.allow) return deny(rd);
    if (absent && !d.config.update_create && !current.ok()) {
      return Error(ctx, ErrorCode::kMethodNotAllowed, "update cannot create; use POST");
    }
    if (absent && !MayCreate(ctx, route.type)) {
      // Creating under a chosen id, or re-creating a deleted resource, is a create.
      ctx.audit.error = "forbidden:update_creates_without_create_permission";
      return Error(ctx, ErrorCode::kForbidden,
                   "this update would create the resource: it needs the create permission");
    }
    auto w = d.store->Update(key, std::move(*body), expect, d.config.update_create);
    if (!w.ok()) {
      if (bound && CodeOf(w.status()) == ErrorCode::kPreconditionFailed) {
        return Error(ctx, ErrorCode::kVersionConflict, "the resource changed; retry");
      }
      if (CodeOf(w.status()) == ErrorCode::kNotFound) {
        return Error(ctx, ErrorCode::kMethodNotAllowed, "update cannot create; use POST");
      }
      return ErrorResponse(ctx, w.status());
    }
    // Re-creating a deleted resource is a creation for the client (201).
    const bool created = w->created || absent;
    return Written(ctx, req, w->stored, created ? 201 : 200, created ? "created" : "updated");
  }

  // A Bundle of `type` (searchset, history) with a fresh id and meta.lastUpdated.
  json::Value NewBundle(std::string_view type) const {
    json::Value bundle = json::Value::MakeObject();
    bundle.Set("resourceType", Str("Bundle"));
    bundle.Set("id", Str(RandomUuid()));
    json::Value meta = json::Value::MakeObject();
    meta.Set("lastUpdated", Str(FormatInstant(d.clock->Now())));
    bundle.Set("meta", std::move(meta));
    bundle.Set("type", Str(std::string(type)));
    return bundle;
  }

  static void AddLink(json::Value& links, std::string_view relation, std::string url) {
    json::Value l = json::Value::MakeObject();
    l.Set("relation", Str(std::string(relation)));
    l.Set("url", Str(std::move(url)));
    links.Push(std::move(l));
  }

  // --- search -----------------------------------------------------------------------

  // Types whose resources can be confined to a Patient compartment.
  static bool Confinable(std::string_view type) {
    return type == "Patient" || fhir::InPatientCompartmentDefinition(type);
  }

  // The narrowing of a search of `type` under `dec`: its patient
  // confinement (for confinable types) and the labels it hides.
  static Narrowing NarrowingOf(const policy::Decision& dec, std::string_view type) {
    Narrowing n;
    if (Confinable(type)) {
      n.patients = dec.obligations.patients;
      n.hidden_labels_of = dec.obligations.consent_hidden_labels;
      n.excluded_patients = dec.obligations.consent_excluded_patients;
    }
    n.hidden_labels = dec.obligations.denied_labels;
    return n;
  }

  // Refuses a search or condition on elements masked from this principal.
  absl::Status RefuseMasked(const Ctx& ctx, std::string_view type, const store::SearchQuery& q,
                            const policy::Decision* decided = nullptr) const {
    std::map<std::string, std::vector<std::string>, std::less<>> cache;
    // The request's own decision for `type`, when the caller has it.
    if (decided && decided->allow) cache.emplace(std::string(type), decided->obligations.masked);
    auto masked_of = [&](std::string_view t) -> std::vector<std::string> {
      auto it = cache.find(t);
      if (it == cache.end()) {
        policy::AccessRequest areq;
        areq.interaction = Interaction::kSearch;
        areq.resource_type = std::string(t);
        policy::Decision dec = Decide(ctx, areq);
        it = cache
                 .emplace(std::string(t),
                          dec.allow ? dec.obligations.masked : std::vector<std::string>())
                 .first;
      }
      return it->second;
    };
    return RefuseMaskedSearch(type, q, masked_of);
  }

  // The narrowing of a search of `type` for this principal; an error when the
  // principal may not search that type.
  absl::StatusOr<Narrowing> NarrowFor(const Ctx& ctx, std::string_view type,
                                      Interaction interaction) const {
    policy::AccessRequest areq;
    areq.interaction = interaction;
    areq.resource_type = std::string(type);
    policy::Decision dec = Decide(ctx, areq);
    if (!dec.allow) {
      return fhirward::Error(ErrorCode::kForbidden,
                             "not permitted to search " + std::string(type) + ": " + dec.reason);
    }
    return NarrowingOf(dec, type);
  }

  // A search cursor: the canonical query and its position.
  std::string SearchCursor(const Ctx& ctx, const std::string& path, const std::string& canonical,
                           int64_t offset, int count) const {
    json::Value c = json::Value::MakeObject();
    c.Set("q", Str(canonical));
    c.Set("o", json::Value::Int(offset));
    c.Set("n", json::Value::Int(count));
    return SealCursor(ctx, "search", path, std::move(c));
  }

  absl::Status OpenSearchCursor(const Ctx& ctx, const std::string& path, const std::string& cursor,
                                std::string* canonical, int64_t* offset, int* count) const {
    auto c = OpenCursorFields(ctx, "search", path, cursor);
    if (!c.ok()) return c.status();
    auto q = c->GetString("q");
    const json::Value* o = c->Find("o");
    const json::Value* n = c->Find("n");
    if (!q || !o || !n || !o->as_int64() || !n->as_int64()) return CursorError("is malformed");
    *canonical = std::string(*q);
    *offset = *o->as_int64();
    *count = static_cast<int>(*n->as_int64());
    return absl::OkStatus();
  }

  static bool PreferStrict(const net::HttpRequest& req) {
    for (std::string_view part : Split(req.header("Prefer").value_or(""), ',')) {
      part = Trim(part);
      if (IEquals(part, "handling=strict")) return true;
    }
    return false;
  }

  // _summary / _elements applied to one resource (R4 §3.1.1.5.8-9); the
  // result is marked SUBSETTED.
  json::Value Subset(json::Value resource, const ParsedSearch& ps) const {
    const bool summary = ps.summary == "true" || ps.summary == "text" || ps.summary == "data";
    if (!summary && ps.elements.empty()) return resource;
    const std::string type(resource.GetString("resourceType").value_or(""));
    const fhir::Model& model = fhir::Model::R4();
    json::Object out;
    for (auto& [k, v] : resource.members()) {
      bool keep = k == "resourceType" || k == "id" || k == "meta";
      const std::string name = k.starts_with("_") ? k.substr(1) : k;
      const fhir::ElementDef* e = model.FindElement(type + "." + name);
      if (e == nullptr) {
        // choice elements: valueQuantity → value[x]
        for (size_t i = 1; i < name.size() && e == nullptr; ++i) {
          if (name[i] >= 'A' && name[i] <= 'Z') {
            e = model.FindElement(type + "." + name.substr(0, i) + "[x]");
          }
        }
      }
      // Mandatory elements stay in every subset (R4 §3.1.1.5.8-9).
      if (!keep && ps.summary != "data" && e != nullptr && e->min >= 1) keep = true;
      if (!keep && ps.summary == "text") keep = k == "text";
      if (!keep && ps.summary == "data") keep = k != "text";
      if (!keep && ps.summary == "true") keep = e != nullptr && e->is_summary;
      if (!keep && !ps.elements.empty()) {
        for (const std::string& el : ps.elements) {
          if (el == k || (k.starts_with(el) && k.size() > el.size() && k[el.size()] >= 'A' &&
                          k[el.size()] <= 'Z')) {
            keep = true;
          }
        }
      }
      if (keep) out.emplace_back(std::move(k), std::move(v));
    }
    json::Value r = json::Value::MakeObject(std::move(out));
    json::Value* meta = r.Find("meta");
    if (meta == nullptr) {
      r.Set("meta", json::Value::MakeObject());
      meta = r.Find("meta");
    }
    json::Value tag = json::Value::MakeObject();
    tag.Set("system", Str("http://terminology.hl7.org/CodeSystem/v3-ObservationValue"));
    tag.Set("code", Str("SUBSETTED"));
    json::Value* tags = meta->Find("tag");
    if (tags == nullptr || !tags->is_array()) {
      meta->Set("tag", json::Value::MakeArray({std::move(tag)}));
    } else {
      tags->Push(std::move(tag));
    }
    return r;
  }

  net::HttpResponse Search(Ctx& ctx, const net::HttpRequest& req, const Route& route,
                           const Query& url_query, const policy::Decision& decision) {
    ctx.audit.action = "search-type";
    const std::string path =
        "/" + (route.compartment.empty() ? std::string() : "Patient/" + route.compartment + "/") +
        route.type;
    Query params = url_query;
    if (req.method == "POST") {
      // POST [type]/_search: parameters in an x-www-form-urlencoded body.
      auto ct = req.header("Content-Type");
      if (!ct ||
          !IEquals(Trim(ct->substr(0, ct->find(';'))), "application/x-www-form-urlencoded")) {
        return Error(ctx, ErrorCode::kUnsupportedMediaType,
                     "send the parameters as application/x-www-form-urlencoded");
      }
      auto form = ParseQueryString(req.body);
      if (!form.ok()) return ErrorResponse(ctx, form.status());
      for (auto& kv : *form) params.push_back(std::move(kv));
    }
    int64_t offset = 0;
    std::optional<int> cursor_count;
    if (const std::string* cursor = QueryParam(params, "_cursor")) {
      std::string canonical;
      int count = 0;
      if (auto s = OpenSearchCursor(ctx, path, *cursor, &canonical, &offset, &count); !s.ok()) {
        return ErrorResponse(ctx, s);
      }
      auto q = ParseQueryString(canonical);
      if (!q.ok()) return ErrorResponse(ctx, q.status());
      params = std::move(*q);
      cursor_count = count;
    }
    ctx.audit.query = AuditedQuery(route.type, params);
    SearchLimits limits = d.config.search;
    const bool strict = PreferStrict(req);
    auto narrow = [&](std::string_view type) { return NarrowFor(ctx, type, Interaction::kSearch); };
    auto parsed = ParseSearch(route.type, params, limits, strict, d.base_url, narrow);
    if (!parsed.ok()) return ErrorResponse(ctx, parsed.status());
    ParsedSearch& ps = *parsed;
    if (auto s = RefuseMasked(ctx, route.type, ps.query, &decision); !s.ok())
      return ErrorResponse(ctx, s);
    if (!QueryParam(params, "_total")) {
      ps.total = ps.summary == "count" ? "accurate" : d.config.search_default_total;
      ps.query.total = ps.total != "none";
    }
    store::SearchQuery& q = ps.query;
    q.tenant = d.config.tenant;
    q.offset = offset;
    if (cursor_count) q.count = std::clamp(*cursor_count, 1, limits.max_count);
    if (q.offset + q.count > limits.max_window) {
      return Error(ctx, ErrorCode::kTooCostly,
                   "paging beyond " + std::to_string(limits.max_window) +
                       " results is not allowed; narrow the search");
    }
    // The policy's confinement is part of the query: counts and pages never
    // include what the principal may not read.
    bool empty_compartment = false;
    Narrowing narrowing = NarrowingOf(decision, route.type);
    q.patients = std::move(narrowing.patients);
    ExcludeHidden(narrowing, &q.clauses);
    if (!route.compartment.empty()) {
      ctx.audit.action = "search-compartment";
      if (q.patients && std::find(q.patients->begin(), q.patients->end(), route.compartment) ==
                            q.patients->end()) {
        empty_compartment = true;
      }
      q.patients = std::vector<std::string>{route.compartment};
    }
    if (q.patients && q.patients->size() == 1) ctx.audit.patient_id = q.patients->front();
    if (ps.summary == "count") q.count = 0;

    store::SearchPage page;
    if (!empty_compartment) {
      auto found = d.store->Search(q);
      if (!found.ok()) return ErrorResponse(ctx, found.status());
      page = std::move(*found);
    } else if (q.total) {
      page.total = 0;
    }

    const bool in_def = fhir::InPatientCompartmentDefinition(route.type);
    // A search returns the resources themselves: each passes a direct read.
    policy::AccessRequest read_req;
    read_req.interaction = Interaction::kRead;
    read_req.resource_type = route.type;
    const policy::Decision read = Decide(ctx, read_req);
    if (!read.allow && ps.summary != "count") {
      ctx.audit.error = "forbidden:" + read.reason;
      return Error(ctx, ErrorCode::kForbidden,
                   "search results are resources: returning them needs read (r) on " + route.type +
                       " as well as search (s); _summary=count needs search only");
    }
    std::vector<std::pair<const store::StoredVersion*, const char*>> entries;
    std::vector<store::StoredVersion> included;
    std::vector<std::string> match_ids;
    for (const store::StoredVersion& v : page.matches) {
      policy::Decision rd =
          CheckResource(ctx, read, Interaction::kRead, v.type, v.id, v.patients, v.json);
      if (!rd.allow) continue;  // defence in depth: the query was already confined
      match_ids.push_back(v.id);
      entries.emplace_back(&v, "match");
    }
    if (auto s = Includes(ctx, ps, route.type, page.matches, match_ids, &included); !s.ok()) {
      return ErrorResponse(ctx, s);
    }
    for (const store::StoredVersion& v : included) entries.emplace_back(&v, "include");

    json::Value bundle = NewBundle("searchset");
    if (page.total) bundle.Set("total", json::Value::Int(*page.total));
    json::Value links = json::Value::MakeArray();
    auto link = [&](std::string rel, std::string url) { AddLink(links, rel, std::move(url)); };
    const std::string base = d.base_url + path;
    link("self", base + (ps.canonical.empty() ? "" : "?" + ps.canonical));
    // The last page inside the result window is shortened rather than
    // offered as a link that would be refused.
    const int64_t next_count = std::min<int64_t>(q.count, limits.max_window - (q.offset + q.count));
    if (page.more && q.count > 0 && next_count > 0) {
      link("next", base + "?_cursor=" +
                       SearchCursor(ctx, path, ps.canonical, q.offset + q.count,
                                    static_cast<int>(next_count)));
    }
    if (q.offset > 0 && q.count > 0) {
      link("previous", base + "?_cursor=" +
                           SearchCursor(ctx, path, ps.canonical,
                                        std::max<int64_t>(0, q.offset - q.count), q.count));
    }
    bundle.Set("link", std::move(links));
    // Entries are written as text: a stored resource (written by this
    // server's JSON writer) is copied in as it is, without a parse and a
    // second serialization, unless _summary/_elements subset it.
    const bool subset = ps.summary == "true" || ps.summary == "text" || ps.summary == "data" ||
                        !ps.elements.empty();
    std::string entry_text;
    for (const auto& [v, mode] : entries) {
      if (!entry_text.empty()) entry_text += ',';
      entry_text += "{\"fullUrl\":";
      entry_text += json::Write(Str(d.base_url + "/" + v->type + "/" + v->id));
      entry_text += ",\"resource\":";
      if (subset) {
        auto res = json::Parse(v->json);
        if (!res.ok()) return Error(ctx, ErrorCode::kInternal);
        if (!ctx.masked.empty()) policy::ApplyMasks(*res, ctx.masked);
        entry_text += json::Write(Subset(std::move(*res), ps));
      } else {
        entry_text += Shown(ctx, v->json);
      }
      entry_text += ",\"search\":{\"mode\":\"";
      entry_text += mode;
      entry_text += "\"}}";
    }
    if (!ps.ignored.empty()) {
      // Lenient handling: what was not used is said, not silently dropped.
      json::Value oo = json::Value::MakeObject();
      oo.Set("resourceType", Str("OperationOutcome"));
      json::Value issues = json::Value::MakeArray();
      for (const std::string& why : ps.ignored) {
        json::Value issue = json::Value::MakeObject();
        issue.Set("severity", Str("warning"));
        issue.Set("code", Str("not-supported"));
        issue.Set("diagnostics", Str("parameter ignored: " + why));
        issues.Push(std::move(issue));
      }
      oo.Set("issue", std::move(issues));
      json::Value entry = json::Value::MakeObject();
      entry.Set("resource", std::move(oo));
      json::Value search = json::Value::MakeObject();
      search.Set("mode", Str("outcome"));
      entry.Set("search", std::move(search));
      if (!entry_text.empty()) entry_text += ',';
      entry_text += json::Write(entry);
    }
    ctx.audit.count = static_cast<int64_t>(entries.size());
    for (const auto& [v, mode] : entries) NotePatients(ctx, v->patients);
    std::string text = json::Write(bundle);  // compact: ends with '}'
    if (!entry_text.empty()) {
      text.pop_back();
      text += ",\"entry\":[";
      text += entry_text;
      text += "]}";
    }
    net::HttpResponse r;
    r.SetHeader("Content-Type", std::string(kFhirJson));
    r.body = Body(ctx, text);
    return r;
  }

  // _include and _revinclude: every resource added passes the same
  // authorization as a direct read of it (type-level decision for a read of
  // its type, then the resource's compartments).
  absl::Status Includes(Ctx& ctx, const ParsedSearch& ps, const std::string& type,
                        const std::vector<store::StoredVersion>& matches,
                        const std::vector<std::string>& match_ids,
                        std::vector<store::StoredVersion>* included) {
    if (ps.includes.empty() || match_ids.empty()) return absl::OkStatus();
    const int cap = d.config.search.max_included;
    std::set<std::pair<std::string, std::string>> seen;
    for (const auto& v : matches) seen.emplace(v.type, v.id);
    // The resources the next round starts from, by type.
    std::map<std::string, std::vector<std::string>> frontier;
    frontier[type] = match_ids;
    std::map<std::string, std::optional<policy::Decision>> read_decisions;
    auto read_decision = [&](const std::string& t) -> const policy::Decision* {
      auto it = read_decisions.find(t);
      if (it == read_decisions.end()) {
        policy::AccessRequest areq;
        areq.interaction = Interaction::kRead;
        areq.resource_type = t;
        policy::Decision dec = Decide(ctx, areq);
        it = read_decisions
                 .emplace(t, dec.allow ? std::optional<policy::Decision>(dec) : std::nullopt)
                 .first;
      }
      return it->second ? &*it->second : nullptr;
    };
    auto add = [&](const std::string& t, const std::string& id,
                   std::map<std::string, std::vector<std::string>>* next) -> absl::Status {
      if (static_cast<int>(included->size()) >= cap) return absl::OkStatus();
      if (!seen.emplace(t, id).second) return absl::OkStatus();
      const policy::Decision* dec = read_decision(t);
      if (dec == nullptr) return absl::OkStatus();
      auto v = d.store->Read({d.config.tenant, t, id});
      if (!v.ok()) {
        if (CodeOf(v.status()) == ErrorCode::kNotFound) return absl::OkStatus();
        return v.status();
      }
      if (v->deleted) return absl::OkStatus();
      policy::Decision rd =
          CheckResource(ctx, *dec, Interaction::kRead, t, id, v->patients, v->json);
      if (!rd.allow) return absl::OkStatus();
      (*next)[t].push_back(id);
      included->push_back(std::move(*v));
      return absl::OkStatus();
    };
    for (int round = 0; round < 3 && !frontier.empty(); ++round) {
      std::map<std::string, std::vector<std::string>> next;
      for (const IncludeSpec& inc : ps.includes) {
        if (round > 0 && !inc.iterate) continue;
        if (!inc.reverse) {
          auto it = frontier.find(inc.source_type);
          if (it == frontier.end()) continue;
          auto refs =
              d.store->ReferencesFrom(d.config.tenant, inc.source_type, it->second, inc.param,
                                      inc.target_type, d.config.search.time_budget_ms);
          if (!refs.ok()) return refs.status();
          for (const auto& [t, id] : *refs) {
            if (auto s = add(t, id, &next); !s.ok()) return s;
          }
        } else {
          std::vector<std::pair<std::string, std::string>> targets;
          for (const auto& [t, ids] : frontier) {
            for (const auto& id : ids) targets.emplace_back(t, id);
          }
          auto narrow = NarrowFor(ctx, inc.source_type, Interaction::kRead);
          if (!narrow.ok()) continue;  // not readable: nothing to add
          auto ids = d.store->ReferencedBy(d.config.tenant, inc.source_type, inc.param, targets,
                                           narrow->patients, cap, d.config.search.time_budget_ms);
          if (!ids.ok()) return ids.status();
          for (const auto& id : *ids) {
            if (auto s = add(inc.source_type, id, &next); !s.ok()) return s;
          }
        }
      }
      frontier = std::move(next);
    }
    return absl::OkStatus();
  }

  // --- conditional writes, patch ------------------------------------------------------

  // Authorization of a write of `resource` (compartments as it would be
  // stored) under `decision`.
  absl::Status AuthorizeWrite(const Ctx& ctx, const policy::Decision& decision,
                              Interaction interaction, const std::string& type,
                              const std::vector<std::string>& patients) const {
    policy::Decision rd = CheckResource(ctx, decision, interaction, type, "", patients);
    if (!rd.allow) return fhirward::Error(ErrorCode::kForbidden, rd.reason);
    return absl::OkStatus();
  }

  // POST with If-None-Exist, PUT Type?query, DELETE Type?query: the
  // condition is searched inside the write transaction, confined like a
  // search by this principal.
  // The confinement of a condition on `type`: the narrower of what a search
  // of that type and the write decision allow (one token has one patient
  // context, so they never name two different patients). An error when the
  // principal may not search the type: a condition is a search, and its
  // outcome (match or not) reveals what exists.
  absl::StatusOr<Narrowing> ConditionConfinement(const Ctx& ctx, const std::string& type,
                                                 const policy::Decision& write) const {
    auto searched = NarrowFor(ctx, type, Interaction::kSearch);
    if (!searched.ok()) {
      return fhirward::Error(ErrorCode::kForbidden,
                             "a conditional request is a search: " + DetailOf(searched.status()));
    }
    if (!searched->patients) searched->patients = NarrowingOf(write, type).patients;
    return searched;
  }

  // POST with If-None-Exist, PUT Type?query, DELETE Type?query: the
  // condition is searched inside the write transaction, confined like a
  // search by this principal (which must be allowed to search the type).
  net::HttpResponse ConditionalWrite(Ctx& ctx, const net::HttpRequest& req, const Route& route,
                                     const policy::Decision& decision) {
    auto narrow = [&](std::string_view type) { return NarrowFor(ctx, type, Interaction::kSearch); };
    std::string condition_text;
    if (route.interaction == Interaction::kCreate) {
      condition_text = std::string(*req.header("If-None-Exist"));
      // The header may carry a full URL or just the query.
      if (size_t qm = condition_text.find('?'); qm != std::string::npos) {
        condition_text = condition_text.substr(qm + 1);
      }
    } else {
      condition_text = req.target.substr(req.target.find('?') + 1);
    }
    auto confine = ConditionConfinement(ctx, route.type, decision);
    if (!confine.ok()) {
      ctx.audit.error = "forbidden:" + DetailOf(confine.status());
      return ErrorResponse(ctx, confine.status());
    }
    auto cond = ParseCondition(route.type, condition_text, d.config.search, d.base_url, narrow);
    if (!cond.ok()) return ErrorResponse(ctx, cond.status());
    if (auto s = RefuseMasked(ctx, route.type, *cond); !s.ok()) return ErrorResponse(ctx, s);
    cond->tenant = d.config.tenant;
    cond->time_budget_ms = std::min<int64_t>(d.config.search.time_budget_ms, kWriterSearchBudgetMs);
    cond->patients = std::move(confine->patients);
    ExcludeHidden(*confine, &cond->clauses);
    store::WriteOp op;
    op.key = {d.config.tenant, route.type, ""};
    op.condition = std::move(*cond);
    op.confined = decision.obligations.confined();
    Interaction interaction = route.interaction;
    op.check = [&, interaction](const std::vector<std::string>& patients) {
      return AuthorizeWrite(ctx, decision, interaction, route.type, patients);
    };
    bool may_create = true;
    if (route.interaction == Interaction::kDelete) {
      op.kind = store::WriteOp::Kind::kDelete;
    } else {
      auto body = ParseResourceBody(req, route);
      if (!body.ok()) return ErrorResponse(ctx, body.status());
      // A conditional update keeps the body's id: it must be the match's, or
      // names the resource to create when nothing matches (the store checks
      // both). The id is in the body before authorization, so that the
      // compartments checked are those that will be stored.
      std::string id(body->GetString("id").value_or(""));
      op.id_from_body = route.interaction == Interaction::kUpdate && !id.empty();
      if (route.interaction == Interaction::kCreate || id.empty()) id = TimeOrderedUuid();
      if (!fhir::IsValidId(id)) return Error(ctx, ErrorCode::kInvalidId);
      if (route.interaction == Interaction::kCreate) body->Set("id", Str(id));
      if (auto refused = Refuse(ctx, *body)) return std::move(*refused);
      if (HasFieldRules(ctx, route.type)) {
        if (route.interaction == Interaction::kUpdate) {
          ctx.audit.error = "forbidden:field_rules";
          return Error(ctx, ErrorCode::kForbidden,
                       "you have masked or read-only elements of " + route.type +
                           ": update it by id, not conditionally");
        }
        if (auto refused = ProtectElements(ctx, *body, nullptr)) return std::move(*refused);
      }
      json::Value as_stored = *body;  // with the id it gets when nothing matches
      as_stored.Set("id", Str(id));
      if (auto s = AuthorizeWrite(ctx, decision, route.interaction, route.type,
                                  fhir::PatientCompartmentsOf(route.type, as_stored));
          !s.ok()) {
        ctx.audit.error = "forbidden:" + DetailOf(s);
        return ErrorResponse(ctx, s);
      }
      if (route.interaction == Interaction::kUpdate) {
        // Creating when nothing matches needs the create permission too.
        policy::AccessRequest create;
        create.interaction = Interaction::kCreate;
        create.resource_type = route.type;
        may_create = Decide(ctx, create).allow && (!op.id_from_body || d.config.update_create);
      }
      op.kind = route.interaction == Interaction::kCreate ? store::WriteOp::Kind::kCreate
                                                          : store::WriteOp::Kind::kUpdate;
      op.key.id = id;
      op.resource = std::move(*body);
      op.allow_create = may_create;
    }
    std::vector<store::WriteOp> ops;
    ops.push_back(std::move(op));
    auto results = d.store->Transaction(std::move(ops));
    if (!results.ok()) {
      // "entry 0: " is an internal prefix here.
      std::string detail = DetailOf(results.status());
      if (detail.starts_with("entry 0: ")) detail = detail.substr(9);
      ErrorCode code = CodeOf(results.status());
      if ((code == ErrorCode::kNotFound || code == ErrorCode::kForbidden) && !may_create &&
          detail.starts_with("creating here is not allowed")) {
        code = ErrorCode::kForbidden;
        detail = "nothing matches the condition, and creating needs the create permission";
      }
      if (code == ErrorCode::kForbidden) ctx.audit.error = "forbidden:" + detail;
      return ErrorResponse(ctx, fhirward::Error(code, detail));
    }
    const store::WriteOpResult& w = (*results)[0];
    ctx.audit.resource_id = w.stored.id;
    if (route.interaction == Interaction::kDelete) {
      net::HttpResponse r;
      r.status = 204;
      if (w.stored.version > 0 && MayRead(ctx, route.type)) {
        r.SetHeader("ETag", ETag(w.stored.version));
      }
      return r;
    }
    if (w.matched_existing) {
      net::HttpResponse r;
      r.status = 200;
      // The existing resource (its id, version and content) only to a
      // principal that may read it; others learn only that it exists.
      policy::AccessRequest read;
      read.interaction = Interaction::kRead;
      read.resource_type = route.type;
      policy::Decision rd = Decide(ctx, read);
      if (rd.allow) {
        rd = CheckResource(ctx, rd, Interaction::kRead, route.type, w.stored.id, w.stored.patients,
                           w.stored.json);
      }
      if (rd.allow) {
        VersionHeaders(r, w.stored, true);
        WriteBody(ctx, req, r, w.stored, "exists:");
      }
      return r;
    }
    return Written(ctx, req, w.stored, w.created ? 201 : 200, w.created ? "created" : "updated");
  }

  // PATCH with JSON Patch: applied to the current version, validated, and
  // written bound to that version (a concurrent change fails with 409/412).
  net::HttpResponse Patch(Ctx& ctx, const net::HttpRequest& req, const Route& route,
                          const policy::Decision& decision) {
    auto ct = req.header("Content-Type");
    if (!ct || !IEquals(Trim(ct->substr(0, ct->find(';'))), "application/json-patch+json")) {
      return Error(ctx, ErrorCode::kUnsupportedMediaType,
                   "send a JSON Patch as application/json-patch+json");
    }
    // A patch works on the current content and answers with it (and a `test`
    // operation tells whether a field holds a value): it needs read as well.
    if (!MayRead(ctx, route.type)) {
      ctx.audit.error = "forbidden:patch_without_read";
      return Error(ctx, ErrorCode::kForbidden,
                   "a patch reads the resource it changes: it needs read (r) as well as update "
                   "(u)");
    }
    auto patch = json::Parse(req.body, d.config.json_limits);
    if (!patch.ok()) return ErrorResponse(ctx, patch.status());
    auto if_match = IfMatch(req);
    if (!if_match.ok()) return ErrorResponse(ctx, if_match.status());
    store::ResourceKey key{d.config.tenant, route.type, route.id};
    auto current = d.store->Read(key);
    if (!current.ok()) return ErrorResponse(ctx, current.status());
    policy::Decision rd = CheckResource(ctx, decision, Interaction::kPatch, route.type, route.id,
                                        current->patients, current->json);
    if (!rd.allow) {
      if (decision.obligations.confined()) return Hidden(ctx, rd);
      ctx.audit.error = "forbidden:" + rd.reason;
      return Error(ctx, ErrorCode::kForbidden, rd.reason);
    }
    if (current->deleted) return Error(ctx, ErrorCode::kGone);
    if (*if_match && **if_match != current->version) {
      return Error(ctx, ErrorCode::kPreconditionFailed,
                   "current version is W/\"" + std::to_string(current->version) + "\"");
    }
    // The patch works on what the principal may see: masked elements are
    // placeholders (a `test`, `copy` or `move` cannot reveal them) and keep
    // their stored values afterwards.
    auto doc = json::Parse(Shown(ctx, current->json), d.config.json_limits);
    if (!doc.ok()) return Error(ctx, ErrorCode::kInternal, "stored resource is unreadable");
    json::PatchLimits pl;
    pl.max_depth = d.config.json_limits.max_depth;
    pl.max_result_bytes = d.config.max_body_bytes;
    if (auto s = json::ApplyPatch(*patch, *doc, pl); !s.ok()) {
      if (CodeOf(s) == ErrorCode::kValidationFailed) {
        return OutcomeResponse(ctx, 422,
                               OperationOutcome("error", "processing", "patch-failed",
                                                "the patch cannot be applied", DetailOf(s)));
      }
      return ErrorResponse(ctx, s);
    }
    if (doc->GetString("resourceType") != route.type || doc->GetString("id") != route.id) {
      return Error(ctx, ErrorCode::kInvalidRequest, "a patch cannot change resourceType or id");
    }
    if (auto refused = ProtectElements(ctx, *doc, &current->json)) return std::move(*refused);
    if (auto refused = Refuse(ctx, *doc)) return std::move(*refused);
    if (auto s = AuthorizeWrite(ctx, decision, Interaction::kPatch, route.type,
                                fhir::PatientCompartmentsOf(route.type, *doc));
        !s.ok()) {
      ctx.audit.error = "forbidden:" + DetailOf(s);
      return ErrorResponse(ctx, s);
    }
    auto w = d.store->Update(key, std::move(*doc), current->version, false);
    if (!w.ok()) {
      if (CodeOf(w.status()) == ErrorCode::kPreconditionFailed && !*if_match) {
        return Error(ctx, ErrorCode::kVersionConflict, "the resource changed; retry");
      }
      return ErrorResponse(ctx, w.status());
    }
    return Written(ctx, req, w->stored, 200, "patched");
  }

  // --- transaction and batch -----------------------------------------------------------

  // Replaces, in every string of `v`, references to the bundle's own
  // fullUrls by the ids they were given: exact string values (references,
  // uris) and, inside narrative XHTML, attribute values.
  static void ResolveUrls(json::Value& v, const std::map<std::string, std::string>& ids,
                          bool in_div = false) {
    if (v.is_string()) {
      const std::string& s = v.as_string();
      if (auto it = ids.find(s); it != ids.end()) {
        v = json::Value::String(it->second);
        return;
      }
      if (in_div && s.find("urn:uuid:") != std::string::npos) {
        std::string text = s;
        for (const auto& [from, to] : ids) {
          for (const char* q : {"\"", "'"}) {
            std::string needle = q + from + q;
            size_t pos = 0;
            while ((pos = text.find(needle, pos)) != std::string::npos) {
              text.replace(pos, needle.size(), q + to + q);
              pos += to.size() + 2;
            }
          }
        }
        v = json::Value::String(std::move(text));
      }
      return;
    }
    if (v.is_array()) {
      for (json::Value& x : v.items()) ResolveUrls(x, ids, in_div);
    } else if (v.is_object()) {
      for (auto& [k, x] : v.members()) ResolveUrls(x, ids, k == "div");
    }
  }

  // The first `reference` value of `v` that `pred` accepts, or "".
  template <typename Pred>
  static std::string FindReference(const json::Value& v, const Pred& pred) {
    if (v.is_array()) {
      for (const json::Value& x : v.items()) {
        if (std::string r = FindReference(x, pred); !r.empty()) return r;
      }
    } else if (v.is_object()) {
      for (const auto& [k, x] : v.members()) {
        if (k == "reference" && x.is_string() && pred(x.as_string())) return x.as_string();
        if (std::string r = FindReference(x, pred); !r.empty()) return r;
      }
    }
    return "";
  }

  // Conditional references ("Patient?identifier=a|b") resolved by a search
  // confined like one by this principal: exactly one match, or the entry fails.
  absl::Status ResolveConditionalRefs(const Ctx& ctx, json::Value& v,
                                      std::map<std::string, std::string>& cache) {
    if (v.is_array()) {
      for (json::Value& x : v.items()) {
        if (auto s = ResolveConditionalRefs(ctx, x, cache); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
    if (!v.is_object()) return absl::OkStatus();
    for (auto& [k, x] : v.members()) {
      if (k == "reference" && x.is_string()) {
        const std::string& ref = x.as_string();
        size_t qm = ref.find('?');
        if (qm == std::string::npos || qm == 0 || ref.find('/') < qm) continue;
        auto it = cache.find(ref);
        if (it == cache.end()) {
          if (cache.size() >= static_cast<size_t>(d.config.bundle_max_conditions)) {
            return fhirward::Error(ErrorCode::kTooCostly,
                                   "more than " + std::to_string(d.config.bundle_max_conditions) +
                                       " distinct conditional references in one bundle");
          }
          std::string type = ref.substr(0, qm);
          if (!fhir::IsResourceType(type)) {
            return fhirward::Error(ErrorCode::kInvalidRequest, "unknown type in " + ref);
          }
          auto narrow = [&](std::string_view t) { return NarrowFor(ctx, t, Interaction::kSearch); };
          auto cond = ParseCondition(type, ref.substr(qm + 1), d.config.search, d.base_url, narrow);
          if (!cond.ok()) return cond.status();
          if (auto s = RefuseMasked(ctx, type, *cond); !s.ok()) return s;
          auto n = narrow(type);
          if (!n.ok()) return n.status();
          cond->patients = n->patients;
          ExcludeHidden(*n, &cond->clauses);
          cond->tenant = d.config.tenant;
          cond->count = 2;
          cond->time_budget_ms = d.config.search.time_budget_ms;
          auto found = d.store->Search(*cond);
          if (!found.ok()) return found.status();
          if (found->matches.size() != 1) {
            return fhirward::Error(ErrorCode::kPreconditionFailed,
                                   "conditional reference " + ref + " matches " +
                                       std::to_string(found->matches.size()) +
                                       (found->more ? "+" : "") + " resources (needs exactly 1)");
          }
          it = cache.emplace(ref, type + "/" + found->matches[0].id).first;
        }
        x = json::Value::String(it->second);
      } else if (auto s = ResolveConditionalRefs(ctx, x, cache); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  // Appends the audit records of a bundle's entries (one per entry, linked to
  // the bundle's record by the request id) and waits until all are durable:
  // submitted together, they share group commits.
  absl::Status AuditEntries(const std::vector<audit::AuditRecord>& records) const {
    if (records.empty()) return absl::OkStatus();
    struct Wait {
      std::mutex mu;
      std::condition_variable cv;
      size_t remaining;
      absl::Status first;
    };
    auto w = std::make_shared<Wait>();
    w->remaining = records.size();
    for (const audit::AuditRecord& rec : records) {
      d.audit->AppendAsync(rec, [w](absl::StatusOr<int64_t> seq) {
        std::lock_guard lk(w->mu);
        if (!seq.ok() && w->first.ok()) w->first = seq.status();
        if (--w->remaining == 0) w->cv.notify_all();
      });
    }
    std::unique_lock lk(w->mu);
    w->cv.wait(lk, [&] { return w->remaining == 0; });
    return w->first;
  }

  // The context of one bundle entry: the bundle's request, principal and
  // audit fields, with the entry's own action and target.
  static Ctx EntryCtx(const Ctx& ctx, const Route& route) {
    Ctx sctx = ctx;
    sctx.audit.error.clear();
    sctx.forced_outcome.clear();
    sctx.audit.action = std::string(policy::InteractionName(route.interaction));
    sctx.audit.resource_type = route.type;
    sctx.audit.resource_id = route.id;
    sctx.audit.version_id = route.vid ? std::to_string(route.vid) : "";
    sctx.audit.patient_id.clear();
    sctx.audit.count = 0;
    sctx.audit.patients.clear();
    sctx.audit.query.clear();
    return sctx;
  }

  // The audit record of one bundle entry, from the entry's own context.
  static audit::AuditRecord EntryRecord(Ctx& sctx, const net::HttpResponse& r) {
    Outcome(sctx, r);
    return sctx.audit;
  }

  struct BundleEntry {
    size_t index = 0;
    std::string method;
    std::string url;
    std::string full_url;
    std::string if_none_exist;
    std::string if_match;
    json::Value resource;
    bool has_resource = false;
  };

  static int MethodOrder(const std::string& m) {
    if (m == "DELETE") return 0;
    if (m == "POST") return 1;
    if (m == "PUT" || m == "PATCH") return 2;
    return 3;  // GET, HEAD
  }

  net::HttpResponse BundleRequest(Ctx& ctx, net::HttpRequest& req) {
    Route broute;
    broute.type = "Bundle";
    auto body = ParseResourceBody(req, broute);
    if (!body.ok()) return ErrorResponse(ctx, body.status());
    std::string btype(body->GetString("type").value_or(""));
    if (btype != "transaction" && btype != "batch") {
      return Error(ctx, ErrorCode::kInvalidRequest,
                   "POST to the base takes a Bundle of type transaction or batch");
    }
    ctx.audit.action = btype;
    ctx.audit.resource_type = "Bundle";
    std::vector<BundleEntry> entries;
    if (const json::Value* list = body->Find("entry"); list != nullptr) {
      if (!list->is_array())
        return Error(ctx, ErrorCode::kInvalidResource, "entry must be an array");
      if (list->items().size() > static_cast<size_t>(d.config.bundle_max_entries)) {
        return Error(ctx, ErrorCode::kTooCostly,
                     "more than " + std::to_string(d.config.bundle_max_entries) + " entries");
      }
      for (json::Value& e : body->Find("entry")->items()) {
        BundleEntry be;
        be.index = entries.size();
        auto bad = [&](std::string why) {
          return Error(ctx, ErrorCode::kInvalidRequest,
                       "entry " + std::to_string(be.index) + ": " + why);
        };
        if (!e.is_object()) return bad("not an object");
        const json::Value* request = e.Find("request");
        if (request == nullptr || !request->is_object()) return bad("request is missing");
        be.method = std::string(request->GetString("method").value_or(""));
        be.url = std::string(request->GetString("url").value_or(""));
        be.if_none_exist = std::string(request->GetString("ifNoneExist").value_or(""));
        be.if_match = std::string(request->GetString("ifMatch").value_or(""));
        be.full_url = std::string(e.GetString("fullUrl").value_or(""));
        if (be.method != "GET" && be.method != "HEAD" && be.method != "POST" &&
            be.method != "PUT" && be.method != "DELETE" && be.method != "PATCH") {
          return bad("request.method must be GET, HEAD, POST, PUT, PATCH or DELETE");
        }
        if (be.url.empty()) return bad("request.url is missing");
        if (json::Value* r = e.Find("resource")) {
          be.resource = std::move(*r);
          be.has_resource = true;
        }
        entries.push_back(std::move(be));
      }
    }
    if (btype == "batch") return Batch(ctx, req, entries);
    return Transaction(ctx, req, entries);
  }

  // A batch: each entry is a request of its own (authorization, validation,
  // execution), with its own outcome; one failing does not affect the others.
  net::HttpResponse Batch(Ctx& ctx, const net::HttpRequest& req,
                          std::vector<BundleEntry>& entries) {
    json::Value out = json::Value::MakeArray();
    int64_t count = 0;
    std::vector<audit::AuditRecord> entry_records;
    std::set<std::string> full_urls;
    for (const BundleEntry& be : entries) {
      if (!be.full_url.empty()) full_urls.insert(be.full_url);
    }
    for (BundleEntry& be : entries) {
      // Batch entries are independent (R4 http.html#brules): one that refers
      // to another entry is refused.
      std::string dependent =
          be.has_resource
              ? FindReference(be.resource,
                              [&](const std::string& ref) { return full_urls.count(ref) > 0; })
              : std::string();
      if (!dependent.empty()) {
        Ctx sctx = ctx;
        sctx.audit.action = "batch-entry";
        net::HttpResponse refused =
            Error(sctx, ErrorCode::kInvalidRequest,
                  "batch entries are independent: " + dependent + " is another entry");
        entry_records.push_back(EntryRecord(sctx, refused));
        out.Push(ResponseEntry(refused));
        continue;
      }
      net::HttpRequest sub;
      sub.method = be.method == "HEAD" ? "GET" : be.method;
      sub.target = "/" + be.url;
      sub.remote_ip = req.remote_ip;
      sub.tls_version = req.tls_version;
      if (be.has_resource) {
        sub.body = json::Write(be.resource);
        sub.headers.emplace_back("Content-Type", be.method == "PATCH"
                                                     ? "application/json-patch+json"
                                                     : std::string(kFhirJson));
      }
      if (!be.if_none_exist.empty()) sub.headers.emplace_back("If-None-Exist", be.if_none_exist);
      if (!be.if_match.empty()) sub.headers.emplace_back("If-Match", be.if_match);
      if (be.method == "PATCH" && be.has_resource &&
          be.resource.GetString("resourceType") == "Binary") {
        // A JSON Patch carried as Binary.data (base64).
        auto data = Base64Decode(std::string(be.resource.GetString("data").value_or("")));
        sub.body = data ? *data : std::string();
      }
      Parsed parsed;
      parsed.target = ParseTarget(sub.target, &parsed.segments, &parsed.query);
      Ctx sctx = EntryCtx(ctx, Route{});
      sctx.audit.action = "batch-entry";
      net::HttpResponse r;
      if (!parsed.target.ok()) {
        r = ErrorResponse(sctx, parsed.target);
      } else {
        parsed.routed = ParseRoute(sub.method, parsed.segments,
                                   sub.target.find('?') != std::string::npos, &parsed.route);
        sctx = EntryCtx(ctx, parsed.route);
        if (!parsed.routed.ok()) {
          r = ErrorResponse(sctx, parsed.routed);
        } else if (parsed.route.bundle || parsed.route.operation) {
          r = Error(sctx, ErrorCode::kNotImplemented, "not supported inside a batch");
        } else {
          r = Perform(sctx, sub, parsed);
        }
      }
      count += sctx.audit.count;
      entry_records.push_back(EntryRecord(sctx, r));
      out.Push(ResponseEntry(r, be.method == "HEAD"));
    }
    ctx.audit.count = count;
    if (auto s = AuditEntries(entry_records); !s.ok()) {
      return Error(ctx, ErrorCode::kAuditUnavailable);
    }
    return BundleResponse(ctx, "batch-response", std::move(out));
  }

  json::Value ResponseEntry(const net::HttpResponse& r, bool head = false) const {
    json::Value entry = json::Value::MakeObject();
    json::Value response = json::Value::MakeObject();
    response.Set("status", Str(std::to_string(r.status)));
    for (const auto& [name, value] : r.headers) {
      if (name == "Location") response.Set("location", Str(value));
      if (name == "ETag") response.Set("etag", Str(value));
      if (name == "Last-Modified") {
        // HTTP-date → FHIR instant.
        struct tm tm {};
        if (strptime(value.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm) != nullptr) {
          response.Set("lastModified",
                       Str(FormatInstant(std::chrono::system_clock::from_time_t(timegm(&tm)))));
        }
      }
    }
    if (!r.body.empty() && !head) {
      auto body = json::Parse(r.body);
      if (body.ok()) {
        if (r.status >= 400 || body->GetString("resourceType") == "OperationOutcome") {
          response.Set("outcome", std::move(*body));
        } else {
          // The exact instant (the HTTP date has only seconds).
          if (const json::Value* meta = body->Find("meta"); meta && meta->is_object()) {
            if (auto lu = meta->GetString("lastUpdated"))
              response.Set("lastModified", Str(std::string(*lu)));
          }
          entry.Set("resource", std::move(*body));
        }
      }
    }
    entry.Set("response", std::move(response));
    return entry;
  }

  net::HttpResponse BundleResponse(Ctx& ctx, const char* type, json::Value entries) const {
    json::Value bundle = json::Value::MakeObject();
    bundle.Set("resourceType", Str("Bundle"));
    bundle.Set("id", Str(RandomUuid()));
    bundle.Set("type", Str(type));
    bundle.Set("entry", std::move(entries));
    net::HttpResponse r;
    r.SetHeader("Content-Type", std::string(kFhirJson));
    r.body = Body(ctx, bundle);
    return r;
  }

  // A transaction: all or nothing. Ids are assigned and fullUrls resolved
  // first; every entry is validated and authorized; the writes then go to
  // the store as one database transaction (conditions evaluated inside it);
  // reads run after the writes.
  net::HttpResponse Transaction(Ctx& ctx, const net::HttpRequest& req,
                                std::vector<BundleEntry>& entries) {
    auto fail = [&](size_t i, const absl::Status& s) {
      ErrorCode code = CodeOf(s);
      if (code == ErrorCode::kForbidden) ctx.audit.error = "forbidden:" + DetailOf(s);
      return ErrorResponse(
          ctx, fhirward::Error(code, "entry " + std::to_string(i) + ": " + DetailOf(s)));
    };
    // Parse each entry's url; assign ids to creates.
    struct Plan {
      Route route;
      Query query;
      std::string condition;              // query of a conditional update/delete or ifNoneExist
      std::string id;                     // id written (create: new; update: from url)
      std::optional<std::string> expect;  // planned result of the condition
      Narrowing confine;                  // the condition's narrowing
      bool id_from_body = false;          // conditional PUT creating under the body's id
      policy::Decision decision;
    };
    std::vector<Plan> plans(entries.size());
    std::map<std::string, std::string> ids;  // fullUrl -> "Type/id"
    std::set<std::string> full_urls;
    for (BundleEntry& be : entries) {
      Plan& pl = plans[be.index];
      if (!be.full_url.empty() && !full_urls.insert(be.full_url).second) {
        return fail(be.index, fhirward::Error(ErrorCode::kInvalidRequest,
                                              "fullUrl " + be.full_url + " is used twice"));
      }
      if (be.method == "PATCH") {
        return fail(be.index, fhirward::Error(ErrorCode::kNotImplemented,
                                              "PATCH inside a transaction is not supported yet"));
      }
      std::vector<std::string> segs;
      std::string target = "/" + be.url;
      if (auto s = ParseTarget(target, &segs, &pl.query); !s.ok()) return fail(be.index, s);
      const bool has_query = target.find('?') != std::string::npos;
      std::string method = be.method == "HEAD" ? "GET" : be.method;
      if (auto s = ParseRoute(method, segs, has_query, &pl.route); !s.ok()) {
        return fail(be.index, s);
      }
      if (pl.route.bundle || pl.route.operation) {
        return fail(be.index, fhirward::Error(ErrorCode::kNotImplemented,
                                              "not supported inside a transaction"));
      }
      if (be.method == "POST") {
        if (has_query) {
          return fail(be.index, fhirward::Error(ErrorCode::kInvalidRequest,
                                                "POST url must be a resource type"));
        }
        pl.id = TimeOrderedUuid();
        pl.condition = be.if_none_exist;
        if (size_t qm = pl.condition.find('?'); qm != std::string::npos) {
          pl.condition = pl.condition.substr(qm + 1);
        }
      } else if (be.method == "PUT" || be.method == "DELETE") {
        if (pl.route.conditional) {
          pl.condition = target.substr(target.find('?') + 1);
          pl.id = be.method == "PUT" ? TimeOrderedUuid() : "";
        } else {
          pl.id = pl.route.id;
        }
      }
      if ((be.method == "POST" || be.method == "PUT") && !be.has_resource) {
        return fail(be.index,
                    fhirward::Error(ErrorCode::kInvalidRequest, "a resource is required"));
      }
      if (be.method == "POST" || be.method == "PUT") {
        if (be.resource.GetString("resourceType") != pl.route.type) {
          return fail(be.index, fhirward::Error(ErrorCode::kResourceTypeMismatch,
                                                "the resource's type does not match the url"));
        }
      }
      if (!be.full_url.empty() && !pl.id.empty() && !pl.route.type.empty() &&
          (be.method == "POST" || be.method == "PUT")) {
        ids[be.full_url] = pl.route.type + "/" + pl.id;
      }
    }
    // Conditions are resolved before references are rewritten, so that a
    // fullUrl of a conditional entry points at what the condition finds
    // (re-checked inside the transaction: a different result fails it).
    std::map<std::string, std::string> planned;  // type + "?" + condition -> id (creates)
    int conditions = 0;
    for (BundleEntry& be : entries) {
      Plan& pl = plans[be.index];
      if (be.method != "GET" && be.method != "HEAD") {
        policy::AccessRequest areq;
        areq.interaction = pl.route.interaction;
        areq.resource_type = pl.route.type;
        pl.decision = Decide(ctx, areq);
        if (!pl.decision.allow) {
          return fail(be.index, fhirward::Error(pl.decision.deny_code, pl.decision.reason));
        }
      }
      if (pl.condition.empty()) continue;
      if (++conditions > d.config.bundle_max_conditions) {
        return fail(be.index,
                    fhirward::Error(ErrorCode::kTooCostly,
                                    "more than " + std::to_string(d.config.bundle_max_conditions) +
                                        " conditions and conditional references in one bundle"));
      }
      auto narrow = [&](std::string_view t) { return NarrowFor(ctx, t, Interaction::kSearch); };
      auto confine = ConditionConfinement(ctx, pl.route.type, pl.decision);
      if (!confine.ok()) return fail(be.index, confine.status());
      pl.confine = *confine;
      auto cond = ParseCondition(pl.route.type, pl.condition, d.config.search, d.base_url, narrow);
      if (!cond.ok()) return fail(be.index, cond.status());
      if (auto s = RefuseMasked(ctx, pl.route.type, *cond); !s.ok()) return fail(be.index, s);
      cond->patients = pl.confine.patients;
      ExcludeHidden(pl.confine, &cond->clauses);
      cond->tenant = d.config.tenant;
      cond->count = 2;
      cond->time_budget_ms = d.config.search.time_budget_ms;
      auto found = d.store->Search(*cond);
      if (!found.ok()) return fail(be.index, found.status());
      if (found->matches.size() > 1) {
        return fail(be.index, fhirward::Error(ErrorCode::kPreconditionFailed,
                                              "the condition matches more than one resource"));
      }
      const std::string key = pl.route.type + "?" + pl.condition;
      if (found->matches.size() == 1) {
        pl.id = found->matches[0].id;
        pl.expect = pl.id;
      } else if (be.method == "POST") {
        // Two creates with one condition in a bundle: the second finds the first.
        if (auto it = planned.find(key); it != planned.end()) {
          pl.id = it->second;
          pl.expect = pl.id;
        } else {
          planned[key] = pl.id;
          pl.expect = "";
        }
      } else {
        pl.expect = "";
      }
      if (be.method == "PUT" && be.has_resource) {
        auto body_id = be.resource.GetString("id");
        if (body_id && !body_id->empty() && *pl.expect != "" && *body_id != pl.id) {
          return fail(be.index, fhirward::Error(ErrorCode::kIdMismatch,
                                                "the resource's id is not the matching one's"));
        }
        if (body_id && !body_id->empty() && *pl.expect == "") {
          if (!fhir::IsValidId(*body_id))
            return fail(be.index, fhirward::Error(ErrorCode::kInvalidId));
          pl.id = std::string(*body_id);
          pl.id_from_body = true;
        }
      }
      if (!be.full_url.empty() && !pl.id.empty() && be.method != "DELETE") {
        ids[be.full_url] = pl.route.type + "/" + pl.id;
      }
    }
    // Resolve references, validate and authorize every entry.
    std::map<std::string, std::string> conditional_refs;
    std::vector<store::WriteOp> ops;
    std::vector<size_t> op_entry;
    std::vector<size_t> order(entries.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return MethodOrder(entries[a].method) < MethodOrder(entries[b].method);
    });
    std::set<std::pair<std::string, std::string>> written;
    for (size_t i : order) {
      BundleEntry& be = entries[i];
      Plan& pl = plans[i];
      if (be.method == "GET" || be.method == "HEAD") continue;
      store::WriteOp op;
      op.confined = pl.decision.obligations.confined();
      op.id_from_body = pl.id_from_body;
      op.key = {d.config.tenant, pl.route.type, pl.id};
      const Interaction interaction = pl.route.interaction;
      const std::string type = pl.route.type;
      const policy::Decision decision = pl.decision;
      op.check = [this, &ctx, interaction, type, decision](const std::vector<std::string>& pts) {
        return AuthorizeWrite(ctx, decision, interaction, type, pts);
      };
      if (pl.condition.empty() && !pl.id.empty() && be.method != "POST") {
        // As for a direct write: the stored version must be one this
        // principal may see (its labels and the patient's consents too, not
        // only its compartments), or it answers as absent; a confined write
        // is bound to the version checked.
        auto current = d.store->Read(op.key);
        if (!current.ok() && CodeOf(current.status()) != ErrorCode::kNotFound) {
          return fail(i, current.status());
        }
        if (current.ok() && !current->deleted) {
          policy::Decision rd = CheckResource(ctx, decision, interaction, type, pl.id,
                                              current->patients, current->json);
          if (!rd.allow) {
            return fail(i, decision.obligations.confined()
                               ? fhirward::Error(ErrorCode::kNotFound, type + "/" + pl.id)
                               : fhirward::Error(ErrorCode::kForbidden, rd.reason));
          }
          // (A client's own If-Match, set below, replaces this one.)
          if (decision.obligations.confined()) op.if_match = current->version;
        }
      }
      if (!pl.condition.empty()) {
        auto narrow = [&](std::string_view t) { return NarrowFor(ctx, t, Interaction::kSearch); };
        auto cond = ParseCondition(type, pl.condition, d.config.search, d.base_url, narrow);
        if (!cond.ok()) return fail(i, cond.status());
        if (auto s = RefuseMasked(ctx, type, *cond); !s.ok()) return fail(i, s);
        cond->tenant = d.config.tenant;
        cond->time_budget_ms =
            std::min<int64_t>(d.config.search.time_budget_ms, kWriterSearchBudgetMs);
        cond->patients = pl.confine.patients;
        ExcludeHidden(pl.confine, &cond->clauses);
        op.condition = std::move(*cond);
        op.expect_match = pl.expect;
      }
      if (!be.if_match.empty()) {
        auto v = ParseETagVersion(be.if_match);
        if (!v) {
          return fail(
              i, fhirward::Error(ErrorCode::kInvalidRequest, "ifMatch must be W/\"<version>\""));
        }
        op.if_match = *v;
      }
      if (be.method == "DELETE") {
        op.kind = store::WriteOp::Kind::kDelete;
      } else {
        json::Value& r = be.resource;
        ResolveUrls(r, ids);
        if (auto s = ResolveConditionalRefs(ctx, r, conditional_refs); !s.ok()) return fail(i, s);
        std::string dangling = FindReference(r, [](const std::string& ref) {
          return ref.starts_with("urn:uuid:") || ref.starts_with("urn:oid:");
        });
        if (!dangling.empty()) {
          return fail(i, fhirward::Error(ErrorCode::kInvalidRequest,
                                         "reference " + dangling +
                                             " is not the fullUrl of an entry of this bundle"));
        }
        if (be.method == "PUT" && !pl.route.conditional) {
          auto id = r.GetString("id");
          if (!id || *id != pl.id) {
            return fail(i, fhirward::Error(ErrorCode::kIdMismatch,
                                           "the resource's id does not match the url"));
          }
        }
        r.Set("id", Str(pl.id));
        if (d.config.validation_mode == "strict") {
          fhir::ValidationReport report = d.validator->Validate(r);
          if (!report.valid()) {
            ctx.audit.error = std::string(Describe(ErrorCode::kValidationFailed).name) + ":" +
                              std::to_string(report.errors);
            json::Value oo = report.ToOperationOutcome();
            // Name the entry in each issue.
            if (json::Value* issues = oo.Find("issue"); issues && issues->is_array()) {
              for (json::Value& issue : issues->items()) {
                std::string diag(issue.GetString("diagnostics").value_or(""));
                issue.Set("diagnostics",
                          Str("entry " + std::to_string(i) + (diag.empty() ? "" : ": " + diag)));
              }
            }
            return OutcomeResponse(ctx, 422, oo);
          }
        }
        if (auto s = AuthorizeWrite(ctx, pl.decision, interaction, type,
                                    fhir::PatientCompartmentsOf(type, r));
            !s.ok()) {
          return fail(i, s);
        }
        if (HasFieldRules(ctx, type)) {
          // Field rules need the stored version: an update goes one by one.
          if (be.method != "POST") {
            return fail(i, fhirward::Error(ErrorCode::kForbidden,
                                           "you have masked or read-only elements of " + type +
                                               ": update it with its own PUT, not in a bundle"));
          }
          if (auto changed = policy::ChangedPath(r, nullptr, ctx.read_only)) {
            return fail(i, fhirward::Error(ErrorCode::kForbidden,
                                           "element " + *changed + " is read-only for you"));
          }
        }
        op.kind =
            be.method == "POST" ? store::WriteOp::Kind::kCreate : store::WriteOp::Kind::kUpdate;
        op.resource = std::move(r);
        if (be.method == "POST") {
          op.allow_create = true;
        } else {
          // Creating through PUT needs the create permission (and, with a
          // client-chosen id, update-as-create enabled).
          policy::AccessRequest create;
          create.interaction = Interaction::kCreate;
          create.resource_type = type;
          const bool chosen_id = !pl.route.conditional || pl.id_from_body;
          op.allow_create = Decide(ctx, create).allow && (!chosen_id || d.config.update_create);
        }
      }
      const bool writes = !(be.method == "POST" && pl.expect && !pl.expect->empty());
      if (writes && !pl.id.empty() && !written.emplace(type, pl.id).second) {
        return fail(i, fhirward::Error(ErrorCode::kInvalidRequest,
                                       "two entries write " + type + "/" + pl.id));
      }
      ops.push_back(std::move(op));
      op_entry.push_back(i);
    }
    std::vector<json::Value> responses(entries.size());
    std::vector<audit::AuditRecord> entry_records;  // one per entry, after the commit
    int64_t count = 0;
    if (!ops.empty()) {
      auto results = d.store->Transaction(std::move(ops));
      if (!results.ok()) {
        // "entry N" in the store's error counts ops: name the bundle entry.
        std::string detail = DetailOf(results.status());
        size_t n = 0;
        if (detail.starts_with("entry ")) {
          n = std::strtoul(detail.c_str() + 6, nullptr, 10);
          size_t colon = detail.find(": ");
          detail = colon == std::string::npos ? detail : detail.substr(colon + 2);
        }
        return fail(n < op_entry.size() ? op_entry[n] : 0,
                    fhirward::Error(CodeOf(results.status()), detail));
      }
      for (size_t k = 0; k < results->size(); ++k) {
        const store::WriteOpResult& w = (*results)[k];
        const size_t i = op_entry[k];
        json::Value entry = json::Value::MakeObject();
        json::Value response = json::Value::MakeObject();
        audit::AuditRecord rec = ctx.audit;
        rec.action = std::string(policy::InteractionName(plans[i].route.interaction));
        if (w.matched_existing) rec.action += "-matched";
        rec.resource_type = w.stored.type;
        rec.resource_id = w.stored.id;
        rec.version_id = w.stored.version > 0 ? std::to_string(w.stored.version) : "";
        rec.patient_id = w.stored.patients.empty() ? "" : w.stored.patients[0];
        rec.policy_id = plans[i].decision.policy_id;
        rec.decision = plans[i].decision.Summary();
        rec.outcome = "success";
        rec.status_code = entries[i].method == "DELETE" ? 204 : (w.created ? 201 : 200);
        rec.error.clear();
        rec.count = 1;
        entry_records.push_back(std::move(rec));
        if (entries[i].method == "DELETE") {
          response.Set("status", Str("204 No Content"));
          if (w.stored.version > 0) response.Set("etag", Str(ETag(w.stored.version)));
        } else {
          response.Set("status", Str(w.matched_existing ? "200 OK"
                                     : w.created        ? "201 Created"
                                                        : "200 OK"));
          response.Set("location", Str(w.stored.type + "/" + w.stored.id + "/_history/" +
                                       std::to_string(w.stored.version)));
          response.Set("etag", Str(ETag(w.stored.version)));
          response.Set("lastModified", Str(w.stored.last_updated));
          if (!entries[i].full_url.empty()) {
            entry.Set("fullUrl", Str(d.base_url + "/" + w.stored.type + "/" + w.stored.id));
          }
          ++count;
        }
        entry.Set("response", std::move(response));
        responses[i] = std::move(entry);
      }
    }
    // Reads, after the writes.
    for (size_t i : order) {
      BundleEntry& be = entries[i];
      if (be.method != "GET" && be.method != "HEAD") continue;
      net::HttpRequest sub;
      sub.method = "GET";
      sub.target = "/" + be.url;
      sub.remote_ip = req.remote_ip;
      Parsed parsed;
      parsed.target = absl::OkStatus();
      parsed.route = plans[i].route;
      parsed.query = plans[i].query;
      parsed.routed = absl::OkStatus();
      Ctx sctx = EntryCtx(ctx, parsed.route);
      net::HttpResponse r = Perform(sctx, sub, parsed);
      count += sctx.audit.count;
      entry_records.push_back(EntryRecord(sctx, r));
      responses[i] = ResponseEntry(r, be.method == "HEAD");
    }
    json::Value out = json::Value::MakeArray();
    for (auto& r : responses) out.Push(std::move(r));
    ctx.audit.count = count;
    if (auto s = AuditEntries(entry_records); !s.ok()) {
      return Error(ctx, ErrorCode::kAuditUnavailable);
    }
    return BundleResponse(ctx, "transaction-response", std::move(out));
  }

  // --- validation ---------------------------------------------------------------

  net::HttpResponse OutcomeResponse(Ctx& ctx, int status, const json::Value& outcome) const {
    net::HttpResponse r;
    r.status = status;
    r.SetHeader("Content-Type", std::string(kFhirJson));
    r.body = Body(ctx, outcome);
    return r;
  }

  // Under validation mode "strict", a resource with errors is refused with the
  // validator's OperationOutcome (422) before authorization looks at it or the
  // store sees it. Warnings never refuse.
  std::optional<net::HttpResponse> Refuse(Ctx& ctx, const json::Value& resource) const {
    if (d.config.validation_mode != "strict") return std::nullopt;
    fhir::ValidationReport report = d.validator->Validate(resource);
    if (report.valid()) return std::nullopt;
    ctx.audit.error = std::string(Describe(ErrorCode::kValidationFailed).name) + ":" +
                      std::to_string(report.errors);
    return OutcomeResponse(ctx, 422, report.ToOperationOutcome());
  }

  // The resource a $validate request carries (a resource, or Parameters with
  // `resource` and `mode`), or nullopt for the stored instance; sets the
  // interaction to authorize.
  absl::StatusOr<std::optional<json::Value>> ValidateInput(const net::HttpRequest& req,
                                                           const Route& route, const Query& query,
                                                           Interaction* interaction) const {
    std::string mode;
    if (const std::string* m = QueryParam(query, "mode")) mode = *m;
    const bool instance = !route.id.empty();
    if (req.body.empty()) {
      if (!instance) {
        return fhirward::Error(ErrorCode::kInvalidRequest, "$validate needs a resource to check");
      }
      if (!mode.empty()) {
        return fhirward::Error(ErrorCode::kInvalidParameter, "mode needs a resource in the body");
      }
      *interaction = Interaction::kRead;
      return std::optional<json::Value>();
    }
    auto ct = req.header("Content-Type");
    if (!ct || !IsJsonMediaType(*ct)) {
      return fhirward::Error(ErrorCode::kUnsupportedMediaType,
                             "send application/fhir+json or application/json");
    }
    auto v = json::Parse(req.body, d.config.json_limits);
    if (!v.ok()) return v.status();
    if (!v->is_object()) {
      return fhirward::Error(ErrorCode::kInvalidResource, "the body must be a JSON object");
    }
    json::Value resource;
    if (v->GetString("resourceType") == "Parameters" && route.type != "Parameters") {
      const json::Value* params = v->Find("parameter");
      bool found = false;
      if (params != nullptr && params->is_array()) {
        for (const json::Value& param : params->items()) {
          auto name = param.GetString("name");
          if (name == "resource" && param.Find("resource") != nullptr && !found) {
            resource = *param.Find("resource");
            found = true;
          } else if (name == "mode") {
            if (auto m = param.GetString("valueCode")) mode = std::string(*m);
          } else if (name == "profile") {
            return fhirward::Error(ErrorCode::kInvalidParameter,
                                   "the profile parameter is not supported; use meta.profile");
          }
        }
      }
      if (!found) {
        return fhirward::Error(ErrorCode::kInvalidRequest,
                               "Parameters needs a 'resource' parameter holding the resource");
      }
    } else {
      resource = std::move(*v);
    }
    if (resource.GetString("resourceType") != route.type) {
      return fhirward::Error(ErrorCode::kResourceTypeMismatch,
                             "the resource's resourceType does not match the URL");
    }
    if (mode.empty()) mode = instance ? "update" : "create";
    if (mode == "create") {
      *interaction = Interaction::kCreate;
    } else if (mode == "update") {
      *interaction = Interaction::kUpdate;
      if (instance && resource.GetString("id") != route.id) {
        return fhirward::Error(ErrorCode::kIdMismatch, "the resource's id does not match the URL");
      }
    } else {
      return fhirward::Error(ErrorCode::kInvalidParameter,
                             "mode must be create or update (delete is not supported)");
    }
    return std::optional<json::Value>(std::move(resource));
  }

  // $validate answers 200 with the OperationOutcome whatever it finds; nothing
  // is stored.
  net::HttpResponse ValidateOperation(Ctx& ctx, const Route& route, Interaction interaction,
                                      std::optional<json::Value> body,
                                      const policy::Decision& decision) {
    const policy::Principal& p = *ctx.principal;
    const bool in_def = fhir::InPatientCompartmentDefinition(route.type);
    if (!body) {
      store::ResourceKey key{d.config.tenant, route.type, route.id};
      auto v = d.store->Read(key);
      if (!v.ok()) return ErrorResponse(ctx, v.status());
      policy::Decision rd = CheckResource(ctx, decision, Interaction::kRead, route.type, route.id,
                                          v->patients, v->json);
      if (!rd.allow) return Hidden(ctx, rd);
      if (v->deleted) return Error(ctx, ErrorCode::kGone);
      if (!v->patients.empty()) ctx.audit.patient_id = v->patients[0];
      ctx.audit.version_id = std::to_string(v->version);
      auto stored = json::Parse(v->json, d.config.json_limits);
      if (!stored.ok()) return Error(ctx, ErrorCode::kInternal, "stored resource is unreadable");
      body = std::move(*stored);
    } else {
      // The principal must be allowed to write what it asks about: a
      // patient-scoped client validates only its own compartment's data.
      auto patients = fhir::PatientCompartmentsOf(route.type, *body);
      policy::Decision rd =
          CheckResource(ctx, decision, interaction, route.type, route.id, patients, {}, &*body);
      if (!rd.allow) {
        ctx.audit.error = "forbidden:" + rd.reason;
        return Error(ctx, ErrorCode::kForbidden, rd.reason);
      }
    }
    fhir::ValidationReport report = d.validator->Validate(*body);
    ctx.audit.count = 1;
    return OutcomeResponse(ctx, 200, report.ToOperationOutcome());
  }

  net::HttpResponse Written(Ctx& ctx, const net::HttpRequest& req, const store::StoredVersion& v,
                            int status, std::string_view what) const {
    net::HttpResponse r;
    r.status = status;
    VersionHeaders(r, v, true);
    ctx.audit.version_id = std::to_string(v.version);
    if (!v.patients.empty() && ctx.audit.patient_id.empty()) ctx.audit.patient_id = v.patients[0];
    WriteBody(ctx, req, r, v, what);
    return r;
  }

  // --- idempotency --------------------------------------------------------------

  template <typename Fn>
  net::HttpResponse Idempotent(Ctx& ctx, const net::HttpRequest& req, Fn execute) {
    auto key_header = req.header("Idempotency-Key");
    if (!key_header) return execute();
    std::string key(Trim(*key_header));
    if (key.empty() || key.size() > kMaxIdempotencyKey ||
        !std::all_of(key.begin(), key.end(), [](char c) { return c > 0x20 && c < 0x7f; })) {
      return Error(ctx, ErrorCode::kInvalidRequest,
                   "Idempotency-Key must be 1-255 visible ASCII characters");
    }
    const std::string client = HexEncode(crypto::Sha256(PrincipalKey(*ctx.principal)));
    std::string material = req.method;
    material.push_back('\0');
    material += req.target;
    material.push_back('\0');
    material += req.body;
    const std::string hash = crypto::Sha256(material);
    const auto now = d.clock->Now();
    const std::string cutoff =
        FormatInstant(now - std::chrono::seconds(d.config.idempotency_ttl_seconds));

    store::IdempotencyRecord mine;
    mine.request_hash = hash;
    mine.status = 0;
    mine.response_headers = "pending:" + RandomUuid();
    mine.created_at = FormatInstant(now);
    bool reserved = false;
    for (int attempt = 0; attempt < 3 && !reserved; ++attempt) {
      auto existing = d.store->GetIdempotency(d.config.tenant, client, key);
      if (!existing.ok()) return ErrorResponse(ctx, existing.status());
      // Expired records, and reservations left pending by a request that
      // never finished (the process died mid-write), no longer hold the key.
      const bool abandoned = existing->has_value() && (*existing)->status == 0 &&
                             (*existing)->created_at < FormatInstant(now - kAbandonedReservation);
      if (existing->has_value() && ((*existing)->created_at < cutoff || abandoned)) {
        // Only that very record: a concurrent retry may have replaced it.
        if (auto s = d.store->DeleteIdempotency(d.config.tenant, client, key, &**existing);
            !s.ok()) {
          return ErrorResponse(ctx, s);
        }
        continue;  // look again
      }
      if (existing->has_value()) {
        const store::IdempotencyRecord& rec = **existing;
        if (!crypto::ConstantTimeEquals(rec.request_hash, hash)) {
          return Error(ctx, ErrorCode::kIdempotencyKeyReused,
                       "this Idempotency-Key was used with a different request");
        }
        if (rec.status == 0) {
          return Error(ctx, ErrorCode::kVersionConflict,
                       "a request with this Idempotency-Key is still in progress");
        }
        return Replay(ctx, rec);
      }
      auto stored = d.store->PutIdempotency(d.config.tenant, client, key, mine);
      if (!stored.ok()) return ErrorResponse(ctx, stored.status());
      reserved = stored->response_headers == mine.response_headers;
      // Otherwise another request reserved the key first: decide again on its record.
    }
    if (!reserved) {
      return Error(ctx, ErrorCode::kVersionConflict,
                   "a request with this Idempotency-Key is still in progress");
    }

    net::HttpResponse r = execute();
    if (r.status >= 500 || r.status == 409) {
      // A failed or conflicting attempt must not block a retry.
      (void)d.store->DeleteIdempotency(d.config.tenant, client, key, &mine);
      return r;
    }
    store::IdempotencyRecord done = mine;
    done.reservation = mine.response_headers;
    done.status = r.status;
    json::Value headers = json::Value::MakeArray();
    for (const auto& [name, value] : r.headers) {
      if (name == "ETag" || name == "Location" || name == "Last-Modified" ||
          name == "Content-Type" || name == "WWW-Authenticate") {
        headers.Push(json::Value::MakeArray({Str(name), Str(value)}));
      }
    }
    done.response_headers = json::Write(headers);
    done.response_body = r.body;
    if (auto s = d.store->PutIdempotency(d.config.tenant, client, key, std::move(done)); !s.ok()) {
      // The write itself is durable; the client can still read it. Record why
      // a replay would not work.
      LogEvent(LogLevel::kWarn, "idempotency_record_failed",
               {{"request_id", LogValue(ctx.request_id)}});
    }
    return r;
  }

  net::HttpResponse Replay(Ctx& ctx, const store::IdempotencyRecord& rec) const {
    net::HttpResponse r;
    r.status = rec.status;
    auto headers = json::Parse(rec.response_headers);
    if (headers.ok() && headers->is_array()) {
      for (const auto& h : headers->items()) {
        if (h.is_array() && h.items().size() == 2 && h.items()[0].is_string() &&
            h.items()[1].is_string()) {
          r.SetHeader(h.items()[0].as_string(), h.items()[1].as_string());
        }
      }
    }
    r.SetHeader("Idempotent-Replayed", "true");
    r.body = rec.response_body;
    ctx.audit.action += "-replay";
    return r;
  }

  // --- history --------------------------------------------------------------------

  // Paging cursors (history and search) are AES-256-GCM sealed (key derived
  // from the instance's cursor key) over their fields, the request path and an
  // expiry, with the kind and the principal in the associated data: opaque to
  // the client, unforgeable, expiring, and useless to anyone else.
  std::string CursorAd(const Ctx& ctx, std::string_view kind) const {
    return "fhirward-" + std::string(kind) + "-cursor-v1\x1f" + PrincipalKey(*ctx.principal);
  }

  std::string SealCursor(const Ctx& ctx, std::string_view kind, const std::string& path,
                         json::Value fields) const {
    fields.Set("p", Str(path));
    fields.Set("x", json::Value::Int(d.clock->NowSeconds() + d.config.cursor_lifetime_seconds));
    auto sealed = cursor_aead->Encrypt(json::Write(fields), CursorAd(ctx, kind));
    return sealed.ok() ? Base64UrlEncode(*sealed) : std::string();
  }

  static absl::Status CursorError(std::string_view why) {
    return fhirward::Error(ErrorCode::kInvalidParameter, "_cursor " + std::string(why));
  }

  // The fields of a cursor sealed for this principal, kind and path, unexpired.
  absl::StatusOr<json::Value> OpenCursorFields(const Ctx& ctx, std::string_view kind,
                                               const std::string& path,
                                               const std::string& cursor) const {
    auto raw = Base64UrlDecode(cursor);
    if (!raw) return CursorError("is malformed");
    // Fails for an altered cursor and for one issued to another principal.
    auto text = cursor_aead->Decrypt(*raw, CursorAd(ctx, kind));
    if (!text.ok()) return CursorError("is not valid for this principal");
    auto c = json::Parse(*text);
    if (!c.ok() || !c->is_object()) return CursorError("is malformed");
    auto p = c->GetString("p");
    const json::Value* x = c->Find("x");
    if (!p || !x || !x->as_int64()) return CursorError("is malformed");
    if (*p != path) return CursorError("belongs to another query");
    if (*x->as_int64() < d.clock->NowSeconds()) return CursorError("has expired");
    return std::move(*c);
  }

  std::string CursorFor(const Ctx& ctx, const std::string& path, int64_t before_seq,
                        const std::optional<std::string>& since, int count) const {
    json::Value c = json::Value::MakeObject();
    c.Set("b", json::Value::Int(before_seq));
    c.Set("n", json::Value::Int(count));
    if (since) c.Set("s", Str(*since));
    return SealCursor(ctx, "history", path, std::move(c));
  }

  absl::Status OpenCursor(const Ctx& ctx, const std::string& path, const std::string& cursor,
                          int64_t* before_seq, std::optional<std::string>* since,
                          int* count) const {
    auto c = OpenCursorFields(ctx, "history", path, cursor);
    if (!c.ok()) return c.status();
    const json::Value* b = c->Find("b");
    const json::Value* n = c->Find("n");
    if (!b || !n || !b->as_int64() || !n->as_int64()) return CursorError("is malformed");
    *before_seq = *b->as_int64();
    *count = static_cast<int>(*n->as_int64());
    if (auto s = c->GetString("s")) *since = std::string(*s);
    return absl::OkStatus();
  }

  net::HttpResponse History(Ctx& ctx, const net::HttpRequest& req, const Route& route,
                            const Query& query, const policy::Decision& decision) {
    std::string path = "/" + (route.type.empty() ? std::string() : route.type + "/") +
                       (route.id.empty() ? std::string() : route.id + "/") + "_history";
    store::HistoryQuery q;
    q.tenant = d.config.tenant;
    q.type = route.type;
    q.id = route.id;
    q.count = d.config.history_default_count;
    for (const auto& [k, v] : query) {
      if (k == "_count") {
        auto n = ParsePositive(v);
        if (!n || *n < 1) return Error(ctx, ErrorCode::kInvalidParameter, "_count must be >= 1");
        q.count = static_cast<int>(std::min<int64_t>(*n, d.config.history_max_count));
      } else if (k == "_since") {
        auto t = ParseInstant(v);
        if (!t) return Error(ctx, ErrorCode::kInvalidParameter, "_since must be an instant");
        q.since = FormatInstant(*t);
      } else if (k == "_cursor") {
        int count = 0;
        if (auto s = OpenCursor(ctx, path, v, &q.before_seq, &q.since, &count); !s.ok()) {
          return ErrorResponse(ctx, s);
        }
        q.count = std::clamp(count, 1, d.config.history_max_count);
      } else if (k == "_format" || k == "_pretty") {
        continue;
      } else {
        return Error(ctx, ErrorCode::kInvalidParameter, "unsupported parameter " + k);
      }
    }
    q.patients = decision.obligations.patients;
    // History returns resources: type and system history need read too (the
    // instance's history is authorized as a read already).
    if (route.interaction != Interaction::kHistoryInstance &&
        !MayRead(ctx, route.type.empty() ? std::string() : route.type)) {
      ctx.audit.error = "forbidden:history_without_read";
      return Error(ctx, ErrorCode::kForbidden,
                   "history returns resources: it needs read (r) as well as search (s)");
    }

    if (route.interaction == Interaction::kHistoryType && !Confinable(route.type)) {
      // Shared reference data (Medication, Practitioner) is readable under a
      // confinement, and so is its history; each version is still checked.
      q.patients.reset();
    }
    if (route.interaction == Interaction::kHistoryInstance) {
      auto cur = d.store->Read({d.config.tenant, route.type, route.id});
      if (!cur.ok()) {
        // As a read: an erased resource is "gone" only to an unconfined principal.
        if (CodeOf(cur.status()) == ErrorCode::kErased && decision.obligations.confined()) {
          return Error(ctx, ErrorCode::kNotFound);
        }
        return ErrorResponse(ctx, cur.status());
      }
      policy::Decision rd = CheckResource(ctx, decision, Interaction::kRead, route.type, route.id,
                                          cur->patients, cur->json);
      if (!rd.allow) return Hidden(ctx, rd);
      // Reference data outside any compartment is readable under a patient
      // scope; its history is too.
      if (decision.obligations.confined() && !fhir::InPatientCompartmentDefinition(route.type) &&
          route.type != "Patient") {
        q.patients.reset();
      }
    }

    auto page = d.store->History(q);
    if (!page.ok()) return ErrorResponse(ctx, page.status());

    json::Value bundle = NewBundle("history");
    json::Value links = json::Value::MakeArray();
    auto link = [&](std::string rel, std::string url) { AddLink(links, rel, std::move(url)); };
    std::string self = d.base_url + path + "?_count=" + std::to_string(q.count);
    if (q.since) self += "&_since=" + PercentEncode(*q.since);
    link("self", self);
    if (page->more && !page->entries.empty()) {
      link("next", d.base_url + path + "?_count=" + std::to_string(q.count) + "&_cursor=" +
                       CursorFor(ctx, path, page->entries.back().seq, q.since, q.count));
    }
    bundle.Set("link", std::move(links));
    json::Value entries = json::Value::MakeArray();
    int64_t shown = 0;
    std::map<std::pair<std::string, std::string>, bool> current_allowed;
    for (const auto& e : page->entries) {
      const store::StoredVersion& v = e.version;
      // Each version passes the checks of a read of it (labels and consents
      // can differ between versions); hidden versions are left out.
      if (!CheckResource(ctx, decision, Interaction::kRead, v.type, v.id, v.patients, v.json)
               .allow) {
        continue;
      }
      auto now = current_allowed.find({v.type, v.id});
      if (now == current_allowed.end()) {
        now = current_allowed
                  .emplace(std::make_pair(v.type, v.id),
                           CheckCurrent(ctx, decision, v.type, v.id).allow)
                  .first;
      }
      if (!now->second) continue;
      ++shown;
      NotePatients(ctx, v.patients);
      json::Value entry = json::Value::MakeObject();
      entry.Set("fullUrl", Str(d.base_url + "/" + v.type + "/" + v.id));
      if (!v.deleted) {
        auto res = json::Parse(v.json);
        if (!res.ok()) return Error(ctx, ErrorCode::kInternal);
        if (!ctx.masked.empty()) policy::ApplyMasks(*res, ctx.masked);
        entry.Set("resource", std::move(*res));
      }
      json::Value request = json::Value::MakeObject();
      request.Set("method", Str(v.deleted ? "DELETE" : (v.version == 1 ? "POST" : "PUT")));
      request.Set("url", Str(v.version == 1 && !v.deleted ? v.type : v.type + "/" + v.id));
      entry.Set("request", std::move(request));
      json::Value response = json::Value::MakeObject();
      response.Set("status", Str(v.deleted ? "204" : (v.version == 1 ? "201" : "200")));
      response.Set("etag", Str(ETag(v.version)));
      response.Set("lastModified", Str(v.last_updated));
      entry.Set("response", std::move(response));
      entries.Push(std::move(entry));
    }
    ctx.audit.count = shown;
    bundle.Set("entry", std::move(entries));
    net::HttpResponse r;
    r.SetHeader("Content-Type", std::string(kFhirJson));
    r.body = Body(ctx, bundle);
    return r;
  }

  // --- finishing ------------------------------------------------------------------

  // Sets the audit outcome from the response.
  static void Outcome(Ctx& ctx, const net::HttpResponse& r) {
    ctx.audit.status_code = r.status;
    ctx.audit.bytes = static_cast<int64_t>(r.body.size());
    ctx.audit.decision = ctx.decision;
    ctx.audit.break_glass = ctx.break_glass_episode;
    ctx.audit.break_glass_reason = ctx.break_glass_reason;
    ctx.audit.shadow = ctx.shadow;
    if (ctx.break_glass_opened) {
      // Marks the record that opened the episode (break_glass alert rules fire on it).
      ctx.audit.decision += " break_glass=opened";
      // The alert: operators watch for this event (the justification stays in
      // the audit trail, never in logs).
      LogEvent(LogLevel::kWarn, "break_glass_opened",
               {{"request_id", LogValue(ctx.request_id)},
                {"episode", LogValue(ctx.break_glass_episode)},
                {"subject", LogValue(ctx.audit.subject)},
                {"client_id", LogValue(ctx.audit.client_id)}});
    }
    if (!ctx.shadow.empty()) {
      LogEvent(LogLevel::kWarn, "policy_shadow_disagreement",
               {{"request_id", LogValue(ctx.request_id)},
                {"action", LogValue(ctx.audit.action)},
                {"resource_type", LogValue(ctx.audit.resource_type)},
                {"enforced", LogValue(ctx.decision)},
                {"candidate", LogValue(ctx.shadow)}});
    }
    if (!ctx.forced_outcome.empty()) {
      ctx.audit.outcome = ctx.forced_outcome;
    } else if (r.status < 400) {
      ctx.audit.outcome = "success";
    } else if (r.status == 401) {
      ctx.audit.outcome = "unauthenticated";
    } else if (r.status == 403) {
      ctx.audit.outcome = "denied";
    } else if (r.status >= 500) {
      ctx.audit.outcome = "error";
    } else {
      ctx.audit.outcome = "failed";
    }
  }

  // After the audit record is durable (or failed): headers, log line.
  void Complete(Ctx& ctx, const std::string& method, net::HttpResponse& r,
                const absl::StatusOr<int64_t>& seq) const {
    if (!seq.ok()) {
      // No response leaves without its audit record: the answer becomes 503.
      LogEvent(
          LogLevel::kError, "audit_unavailable",
          {{"request_id", LogValue(ctx.request_id)}, {"reason", LogValue(DetailOf(seq.status()))}});
      Ctx fail = ctx;
      fail.audit.error.clear();
      r = Error(fail, ErrorCode::kAuditUnavailable);
      r.SetHeader("Retry-After", "1");
    }
    r.SetHeader("X-Request-Id", ctx.request_id);
    r.SetHeader("Date", FormatHttpDate(d.clock->Now()));
    r.SetHeader("X-Content-Type-Options", "nosniff");
    r.SetHeader("Cache-Control", "no-store");
    r.SetHeader("X-Frame-Options", "DENY");
    r.SetHeader("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'");
    r.SetHeader("Referrer-Policy", "no-referrer");
    if (ctx.tls && d.config.hsts_max_age > 0) {
      r.SetHeader("Strict-Transport-Security",
                  "max-age=" + std::to_string(d.config.hsts_max_age) + "; includeSubDomains");
    }
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                  std::chrono::steady_clock::now() - ctx.start)
                  .count();
    // Ids, names and query strings stay out of the log: the audit record,
    // found by request_id, holds what an investigator needs.
    LogEvent(r.status >= 500 ? LogLevel::kWarn : LogLevel::kInfo, "request",
             {{"request_id", LogValue(ctx.request_id)},
              {"trace_id", LogValue(ctx.trace_id)},
              {"method", LogValue(method)},
              {"action", LogValue(ctx.audit.action)},
              {"type", LogValue(ctx.audit.resource_type)},
              {"status", LogValue(r.status)},
              {"outcome", LogValue(ctx.audit.outcome)},
              {"error", LogValue(ctx.audit.error.substr(0, ctx.audit.error.find(':')))},
              {"duration_us", LogValue(us)}});
  }

  Ctx Begin(const net::HttpRequest& req) const {
    Ctx ctx;
    ctx.start = std::chrono::steady_clock::now();
    // Request and trace ids are identifiers, not secrets: a per-thread
    // generator seeded from the CSPRNG avoids a locked RAND_bytes call (and
    // its fork-check syscall) on every request.
    std::string random = RequestIdBytes();
    random[6] = static_cast<char>((random[6] & 0x0f) | 0x40);  // UUID version 4
    random[8] = static_cast<char>((random[8] & 0x3f) | 0x80);  // RFC 4122 variant
    std::string hex = HexEncode(std::string_view(random).substr(0, 16));
    ctx.request_id = hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" +
                     hex.substr(16, 4) + "-" + hex.substr(20);
    ctx.tls = !req.tls_version.empty();
    auto tp = req.header("traceparent");
    auto trace = tp ? TraceIdFrom(*tp) : std::nullopt;
    ctx.trace_id = trace ? *trace : HexEncode(std::string_view(random).substr(16));
    ctx.audit.time = FormatInstant(d.clock->Now());
    ctx.audit.request_id = ctx.request_id;
    ctx.audit.trace_id = ctx.trace_id;
    ctx.audit.client_address = req.remote_ip;
    ctx.audit.user_agent = std::string(req.header("User-Agent").value_or("").substr(0, 256));
    ctx.audit.method = req.method.substr(0, 16);
    ctx.audit.node = d.node;
    return ctx;
  }

  net::HttpResponse SafeDispatch(Ctx& ctx, net::HttpRequest& req, const Parsed& parsed) {
    try {
      net::HttpResponse r = Dispatch(ctx, req, parsed);
      // Cached policy facts (relationships, consents) derive from the data.
      if (d.facts && r.status < 400 && req.method != "GET" && req.method != "HEAD") {
        d.facts->Changed(ctx.audit.resource_type);
      }
      return r;
    } catch (const std::exception& e) {
      LogEvent(LogLevel::kError, "handler_exception", {{"request_id", LogValue(ctx.request_id)}});
      return Error(ctx, ErrorCode::kInternal);
    }
  }

  net::HttpResponse Handle(net::HttpRequest&& req) {
    Ctx ctx = Begin(req);
    net::HttpResponse r = SafeDispatch(ctx, req, Parse(req));
    Outcome(ctx, r);
    auto seq = d.audit->Append(ctx.audit);
    Complete(ctx, req.method, r, seq);
    return r;
  }

  // Runs the request, then hands the response to `respond` once the audit
  // record is durable, without a thread waiting for the commit.
  void Run(net::HttpRequest&& req, const Parsed& parsed, net::Responder respond) {
    auto state = std::make_shared<std::pair<Ctx, net::HttpResponse>>();
    state->first = Begin(req);
    state->second = SafeDispatch(state->first, req, parsed);
    Outcome(state->first, state->second);
    d.audit->AppendAsync(state->first.audit,
                         [this, state, method = req.method,
                          respond = std::move(respond)](absl::StatusOr<int64_t> seq) {
                           Complete(state->first, method, state->second, seq);
                           respond(std::move(state->second));
                         });
  }

  // Reads of one resource (and the capability statement) touch one SQLite
  // read connection and never wait for a write: they run on the I/O thread.
  // Everything else (writes wait for the group commit; history pages can be
  // large) runs on the worker pool. Decided on the parsed route, not the raw
  // target, so that no spelling of a history request ("/_history/",
  // "%5Fhistory") lands on an I/O thread; requests refused while parsing are
  // answered inline.
  static bool RunsInline(const net::HttpRequest& req, const Parsed& p) {
    if (req.transport_error || !p.target.ok() || !p.routed.ok()) return true;
    if (req.method != "GET" || p.route.operation) return false;
    return p.route.interaction == Interaction::kRead ||
           p.route.interaction == Interaction::kVread ||
           p.route.interaction == Interaction::kCapabilities;
  }

  // Authorization-server requests: answered by it on the worker pool (argon2
  // and SQLite writes block), with the transport's security headers. It
  // audits its own security events (logins, token issue and refusal, ...).
  void HandleOAuth(net::HttpRequest&& req, net::Responder respond) {
    pool->Submit([this, req = std::move(req), respond = std::move(respond)]() mutable {
      Ctx ctx = Begin(req);
      net::HttpResponse r;
      std::vector<audit::AuditRecord> records;
      if (req.transport_error) {
        r = Error(ctx, *req.transport_error);
      } else {
        r = d.oauth->Handle(req, &records);
      }
      r.SetHeader("X-Request-Id", ctx.request_id);
      r.SetHeader("Date", FormatHttpDate(d.clock->Now()));
      r.SetHeader("X-Content-Type-Options", "nosniff");
      r.SetHeader("X-Frame-Options", "DENY");
      r.SetHeader("Referrer-Policy", "no-referrer");
      bool has_csp = false, has_cache = false;
      for (const auto& [k, v] : r.headers) {
        has_csp = has_csp || k == "Content-Security-Policy";
        has_cache = has_cache || k == "Cache-Control";
      }
      if (!has_csp)
        r.SetHeader("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'");
      if (!has_cache) r.SetHeader("Cache-Control", "no-store");
      if (ctx.tls && d.config.hsts_max_age > 0) {
        r.SetHeader("Strict-Transport-Security",
                    "max-age=" + std::to_string(d.config.hsts_max_age) + "; includeSubDomains");
      }
      auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::steady_clock::now() - ctx.start)
                    .count();
      LogEvent(r.status >= 500 ? LogLevel::kWarn : LogLevel::kInfo, "request",
               {{"request_id", LogValue(ctx.request_id)},
                {"method", LogValue(req.method)},
                {"action", LogValue("oauth")},
                {"path", LogValue(req.target.substr(0, req.target.find('?')))},
                {"status", LogValue(r.status)},
                {"duration_us", LogValue(us)}});
      if (records.empty()) return respond(std::move(r));
      // As for FHIR requests: the response leaves once its audit records are
      // durable (group commit; no worker waits), or becomes 503.
      struct Pending {
        net::HttpResponse r;
        net::Responder respond;
        std::atomic<int> left{0};
        std::atomic<bool> failed{false};
      };
      auto state = std::make_shared<Pending>();
      state->r = std::move(r);
      state->respond = std::move(respond);
      state->left = static_cast<int>(records.size());
      for (audit::AuditRecord& rec : records) {
        rec.request_id = ctx.request_id;
        d.audit->AppendAsync(rec, [state](absl::StatusOr<int64_t> seq) {
          if (!seq.ok()) state->failed = true;
          if (--state->left != 0) return;
          if (state->failed) {
            net::HttpResponse fail;
            fail.status = 503;
            // The security headers stay; no cookie, redirect or body of the refused one.
            for (const auto& [k, v] : state->r.headers) {
              if (!IEquals(k, "Set-Cookie") && !IEquals(k, "Location") &&
                  !IEquals(k, "Content-Type")) {
                fail.headers.emplace_back(k, v);
              }
            }
            fail.SetHeader("Content-Type", "application/json");
            fail.SetHeader("Retry-After", "1");
            fail.body =
                R"({"error":"temporarily_unavailable","error_description":"the audit trail is unavailable"})";
            state->r = std::move(fail);
          }
          state->respond(std::move(state->r));
        });
      }
    });
  }

  void HandleAsync(net::HttpRequest&& req, net::Responder respond) {
    if (d.oauth && oauth::AuthorizationServer::Handles(
                       std::string_view(req.target).substr(0, req.target.find('?')))) {
      return HandleOAuth(std::move(req), std::move(respond));
    }
    Parsed parsed = Parse(req);
    if (RunsInline(req, parsed)) return Run(std::move(req), parsed, std::move(respond));
    pool->Submit([this, req = std::move(req), parsed = std::move(parsed),
                  respond = std::move(respond)]() mutable {
      Run(std::move(req), parsed, std::move(respond));
    });
  }

  std::unique_ptr<WorkerPool> pool;
};

FhirService::FhirService(ServiceDeps deps) : impl_(std::make_unique<Impl>(std::move(deps))) {}
FhirService::~FhirService() = default;

net::HttpResponse FhirService::Handle(net::HttpRequest&& request) {
  return impl_->Handle(std::move(request));
}

void FhirService::Shutdown() { impl_->pool->Join(); }

void FhirService::HandleAsync(net::HttpRequest&& request, net::Responder respond) {
  impl_->HandleAsync(std::move(request), std::move(respond));
}

}  // namespace fhirward::server
