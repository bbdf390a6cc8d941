#include "server/fhir_service.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstring>
#include <ctime>
#include <optional>
#include <string_view>
#include <vector>

#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "fhir/resources.h"
#include "json/value.h"
#include "server/log.h"
#include "server/worker_pool.h"

namespace fhirward::server {
namespace {

using policy::Interaction;
using Query = std::vector<std::pair<std::string, std::string>>;

constexpr std::string_view kFhirJson = "application/fhir+json; charset=utf-8";
constexpr std::string_view kErrorSystem = "https://fhirward.dev/CodeSystem/error";
constexpr int64_t kCursorLifetimeSeconds = 3600;
constexpr size_t kMaxIdempotencyKey = 255;
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
struct Ctx {
  std::string request_id;
  std::string trace_id;
  bool pretty = false;
  bool tls = false;
  std::shared_ptr<const policy::Principal> principal;  // shared with the token cache
  audit::AuditRecord audit;
  std::string forced_outcome;  // e.g. "denied" for a hidden 404
  std::chrono::steady_clock::time_point start;
};

struct Route {
  Interaction interaction = Interaction::kRead;
  bool search = false;  // not implemented yet (issue 4)
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
  if (r.interaction == Interaction::kHistorySystem || r.interaction == Interaction::kHistoryType ||
      r.interaction == Interaction::kHistoryInstance || r.interaction == Interaction::kVread) {
    return "GET";
  }
  if (r.id.empty()) return "GET, POST";
  return "GET, PUT, DELETE";
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
    security.Set("description",
                 Str("Bearer JWT access tokens (RFC 9068) with SMART App Launch v1/v2 scopes; "
                     "TLS 1.3"));
    rest.Set("security", std::move(security));
    json::Value resources = json::Value::MakeArray();
    for (std::string_view type : fhir::ResourceTypes()) {
      json::Value r = json::Value::MakeObject();
      r.Set("type", Str(std::string(type)));
      json::Value interactions = json::Value::MakeArray();
      for (const char* code :
           {"read", "vread", "update", "delete", "history-instance", "history-type", "create"}) {
        json::Value i = json::Value::MakeObject();
        i.Set("code", Str(code));
        interactions.Push(std::move(i));
      }
      r.Set("interaction", std::move(interactions));
      r.Set("versioning", Str("versioned-update"));
      r.Set("readHistory", json::Value::Bool(true));
      r.Set("updateCreate", json::Value::Bool(d.config.update_create));
      r.Set("conditionalCreate", json::Value::Bool(false));
      r.Set("conditionalRead", Str("not-supported"));
      r.Set("conditionalUpdate", json::Value::Bool(false));
      r.Set("conditionalDelete", Str("not-supported"));
      resources.Push(std::move(r));
    }
    rest.Set("resource", std::move(resources));
    json::Value sys = json::Value::MakeObject();
    sys.Set("code", Str("history-system"));
    rest.Set("interaction", json::Value::MakeArray({std::move(sys)}));
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

  net::HttpResponse ErrorResponse(Ctx& ctx, const absl::Status& status) const {
    ErrorCode code = CodeOf(status);
    const ErrorInfo& info = Describe(code);
    net::HttpResponse r;
    r.status = info.http_status;
    r.SetHeader("Content-Type", std::string(kFhirJson));
    std::string diag = ClientDiagnostics(code, status);
    r.body = Body(ctx, OperationOutcome("error", info.issue_code, info.name, info.message, diag));
    if (code == ErrorCode::kMissingToken || code == ErrorCode::kInvalidToken ||
        code == ErrorCode::kInsufficientScope) {
      r.SetHeader("WWW-Authenticate", BearerChallenge(code, info.message));
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
    r.body = Body(ctx, v.json);
    ctx.audit.count = 1;
  }

  // --- routing ----------------------------------------------------------------

  absl::Status ParseRoute(const std::string& method, const std::vector<std::string>& seg,
                          Route* r) const {
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
    if (n == 0) return fhirward::Error(ErrorCode::kRouteNotFound);
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
      return fhirward::Error(ErrorCode::kNotImplemented, "operations are not supported yet");
    }
    if (auto s = check_type(seg[0]); !s.ok()) return s;
    r->type = seg[0];
    if (n == 1) {
      if (method == "POST") {
        r->interaction = Interaction::kCreate;
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
        return fhirward::Error(ErrorCode::kNotImplemented, "patch is not supported yet");
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
    if (p.target.ok()) p.routed = ParseRoute(req.method, p.segments, &p.route);
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
    policy::Decision decision = d.policy->Authorize(p, areq);
    ctx.audit.policy_id = decision.policy_id;
    if (!decision.allow) {
      ctx.audit.error = std::string(Describe(decision.deny_code).name) + ":" + decision.reason;
      return Error(ctx, decision.deny_code, decision.reason);
    }
    if (!decision.patient_compartment.empty()) ctx.audit.patient_id = decision.patient_compartment;

    if (route.search) {
      return Error(ctx, ErrorCode::kNotImplemented, "search is not supported yet");
    }

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
      case Interaction::kUpdate:
      case Interaction::kDelete:
        return Idempotent(ctx, req, [&]() { return Write(ctx, req, route, decision); });
      default:
        return Error(ctx, ErrorCode::kNotImplemented);
    }
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
    auto principal = d.authenticator->Authenticate(*auth);
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
    return absl::OkStatus();
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
      return ErrorResponse(ctx, v.status());
    }
    policy::Decision rd =
        d.policy->AuthorizeResource(*ctx.principal, decision, route.interaction, route.type,
                                    v->patients, fhir::InPatientCompartmentDefinition(route.type));
    if (!rd.allow) return Hidden(ctx, rd);
    if (!v->patients.empty() && ctx.audit.patient_id.empty()) ctx.audit.patient_id = v->patients[0];
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
    r.body = Body(ctx, v->json);
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

  net::HttpResponse Write(Ctx& ctx, const net::HttpRequest& req, const Route& route,
                          const policy::Decision& decision) {
    store::ResourceKey key{d.config.tenant, route.type, route.id};
    const bool in_def = fhir::InPatientCompartmentDefinition(route.type);
    const policy::Principal& p = *ctx.principal;
    auto authorize = [&](const std::vector<std::string>& patients) {
      return d.policy->AuthorizeResource(p, decision, route.interaction, route.type, patients,
                                         in_def);
    };
    auto deny = [&](const policy::Decision& rd) {
      ctx.audit.error = "forbidden:" + rd.reason;
      return Error(ctx, ErrorCode::kForbidden, rd.reason);
    };

    if (route.interaction == Interaction::kCreate) {
      auto body = ParseResourceBody(req, route);
      if (!body.ok()) return ErrorResponse(ctx, body.status());
      key.id = RandomUuid();
      body->Set("id", Str(key.id));
      ctx.audit.resource_id = key.id;
      if (auto refused = Refuse(ctx, *body)) return std::move(*refused);
      auto patients = fhir::PatientCompartmentsOf(route.type, *body);
      if (auto rd = authorize(patients); !rd.allow) return deny(rd);
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
    const bool confined = !decision.patient_compartment.empty();
    const bool absent = !current.ok() || current->deleted;
    if (confined && absent) {
      // A compartment-confined principal may change only what it can read:
      // an absent id answers exactly like one outside the compartment (no
      // update-as-create, no delete of nothing), so writes cannot probe
      // for other patients' resources.
      return Error(ctx, ErrorCode::kNotFound);
    }
    if (!absent) {
      if (auto rd = authorize(current->patients); !rd.allow) {
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
        r.SetHeader("ETag", ETag(v->version));
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
    auto patients = fhir::PatientCompartmentsOf(route.type, *body);
    if (auto rd = authorize(patients); !rd.allow) return deny(rd);
    if (absent && !d.config.update_create && !current.ok()) {
      return Error(ctx, ErrorCode::kMethodNotAllowed, "update cannot create; use POST");
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
      policy::Decision rd = d.policy->AuthorizeResource(p, decision, Interaction::kRead, route.type,
                                                        v->patients, in_def);
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
          d.policy->AuthorizeResource(p, decision, interaction, route.type, patients, in_def);
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

  // Paging cursors are AES-256-GCM sealed (key derived from the instance's
  // cursor key) with the principal in the associated data: opaque to the
  // client, unforgeable, and useless to anyone else.
  std::string CursorAd(const Ctx& ctx) const {
    return "fhirward-history-cursor-v1\x1f" + PrincipalKey(*ctx.principal);
  }

  std::string CursorFor(const Ctx& ctx, const std::string& path, int64_t before_seq,
                        const std::optional<std::string>& since, int count) const {
    json::Value c = json::Value::MakeObject();
    c.Set("p", Str(path));
    c.Set("b", json::Value::Int(before_seq));
    c.Set("n", json::Value::Int(count));
    if (since) c.Set("s", Str(*since));
    c.Set("x", json::Value::Int(d.clock->NowSeconds() + kCursorLifetimeSeconds));
    auto sealed = cursor_aead->Encrypt(json::Write(c), CursorAd(ctx));
    return sealed.ok() ? Base64UrlEncode(*sealed) : std::string();
  }

  absl::Status OpenCursor(const Ctx& ctx, const std::string& path, const std::string& cursor,
                          int64_t* before_seq, std::optional<std::string>* since,
                          int* count) const {
    auto bad = [](std::string_view why) {
      return fhirward::Error(ErrorCode::kInvalidParameter,
                             std::string("_cursor ") + std::string(why));
    };
    auto raw = Base64UrlDecode(cursor);
    if (!raw) return bad("is malformed");
    // Fails for an altered cursor and for one issued to another principal.
    auto text = cursor_aead->Decrypt(*raw, CursorAd(ctx));
    if (!text.ok()) return bad("is not valid for this principal");
    auto c = json::Parse(*text);
    if (!c.ok() || !c->is_object()) return bad("is malformed");
    auto p = c->GetString("p");
    const json::Value* b = c->Find("b");
    const json::Value* n = c->Find("n");
    const json::Value* x = c->Find("x");
    if (!p || !b || !n || !x || !b->as_int64() || !n->as_int64() || !x->as_int64()) {
      return bad("is malformed");
    }
    if (*p != path) return bad("belongs to another query");
    if (*x->as_int64() < d.clock->NowSeconds()) return bad("has expired");
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
    if (!decision.patient_compartment.empty()) q.patient = decision.patient_compartment;

    if (route.interaction == Interaction::kHistoryInstance) {
      auto cur = d.store->Read({d.config.tenant, route.type, route.id});
      if (!cur.ok()) return ErrorResponse(ctx, cur.status());
      policy::Decision rd = d.policy->AuthorizeResource(
          *ctx.principal, decision, Interaction::kRead, route.type, cur->patients,
          fhir::InPatientCompartmentDefinition(route.type));
      if (!rd.allow) return Hidden(ctx, rd);
      // Reference data outside any compartment is readable under a patient
      // scope; its history is too.
      if (!decision.patient_compartment.empty() &&
          !fhir::InPatientCompartmentDefinition(route.type) && route.type != "Patient") {
        q.patient.reset();
      }
    }

    auto page = d.store->History(q);
    if (!page.ok()) return ErrorResponse(ctx, page.status());

    json::Value bundle = json::Value::MakeObject();
    bundle.Set("resourceType", Str("Bundle"));
    bundle.Set("id", Str(RandomUuid()));
    json::Value meta = json::Value::MakeObject();
    meta.Set("lastUpdated", Str(FormatInstant(d.clock->Now())));
    bundle.Set("meta", std::move(meta));
    bundle.Set("type", Str("history"));
    json::Value links = json::Value::MakeArray();
    auto link = [&](std::string rel, std::string url) {
      json::Value l = json::Value::MakeObject();
      l.Set("relation", Str(std::move(rel)));
      l.Set("url", Str(std::move(url)));
      links.Push(std::move(l));
    };
    std::string self = d.base_url + path + "?_count=" + std::to_string(q.count);
    if (q.since) self += "&_since=" + PercentEncode(*q.since);
    link("self", self);
    if (page->more && !page->entries.empty()) {
      link("next", d.base_url + path + "?_count=" + std::to_string(q.count) + "&_cursor=" +
                       CursorFor(ctx, path, page->entries.back().seq, q.since, q.count));
    }
    bundle.Set("link", std::move(links));
    json::Value entries = json::Value::MakeArray();
    for (const auto& e : page->entries) {
      const store::StoredVersion& v = e.version;
      json::Value entry = json::Value::MakeObject();
      entry.Set("fullUrl", Str(d.base_url + "/" + v.type + "/" + v.id));
      if (!v.deleted) {
        auto res = json::Parse(v.json);
        if (!res.ok()) return Error(ctx, ErrorCode::kInternal);
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
    ctx.audit.count = static_cast<int64_t>(page->entries.size());
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
    return ctx;
  }

  net::HttpResponse SafeDispatch(Ctx& ctx, net::HttpRequest& req, const Parsed& parsed) {
    try {
      return Dispatch(ctx, req, parsed);
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

  void HandleAsync(net::HttpRequest&& req, net::Responder respond) {
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
