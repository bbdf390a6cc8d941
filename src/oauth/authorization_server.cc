#include "oauth/authorization_server.h"

#include <openssl/x509.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "crypto/totp.h"
#include "jose/jws.h"
#include "json/value.h"
#include "net/client.h"
#include "oauth/pages.h"
#include "policy/policy.h"

namespace fhirward::oauth {
namespace {

using Params = std::vector<std::pair<std::string, std::string>>;
using json::Value;

constexpr size_t kMaxParams = 64;
constexpr size_t kMaxParamBytes = 8 * 1024;
constexpr std::string_view kAssertionType =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
constexpr std::string_view kRequestUriPrefix = "urn:ietf:params:oauth:request_uri:";

Value Str(std::string s) { return Value::String(std::move(s)); }

Value StrArray(std::initializer_list<const char*> items) {
  Value a = Value::MakeArray();
  for (const char* i : items) a.Push(Str(i));
  return a;
}

int Hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> PercentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      int h = Hex(s[i + 1]), l = Hex(s[i + 2]);
      if (h < 0 || l < 0) return std::nullopt;
      out += static_cast<char>(h * 16 + l);
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

std::string PercentEncode(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// application/x-www-form-urlencoded (also query strings). Refuses malformed
// escapes and oversized input.
absl::StatusOr<Params> ParseForm(std::string_view text) {
  Params out;
  if (text.size() > 64 * 1024) return Error(ErrorCode::kInvalidRequest, "request too large");
  size_t i = 0;
  while (i < text.size()) {
    size_t j = text.find('&', i);
    if (j == std::string_view::npos) j = text.size();
    std::string_view part = text.substr(i, j - i);
    i = j + 1;
    if (part.empty()) continue;
    size_t eq = part.find('=');
    auto k = PercentDecode(part.substr(0, eq));
    auto v = PercentDecode(eq == std::string_view::npos ? "" : part.substr(eq + 1));
    if (!k || !v || v->size() > kMaxParamBytes) {
      return Error(ErrorCode::kInvalidRequest, "malformed form encoding");
    }
    out.emplace_back(std::move(*k), std::move(*v));
    if (out.size() > kMaxParams) return Error(ErrorCode::kInvalidRequest, "too many parameters");
  }
  return out;
}

const std::string* Get(const Params& p, std::string_view name) {
  for (const auto& [k, v] : p) {
    if (k == name) return &v;
  }
  return nullptr;
}

std::string GetOr(const Params& p, std::string_view name) {
  const std::string* v = Get(p, name);
  return v ? *v : std::string();
}

// RFC 6749 §3.1/§3.2: parameters must not be repeated. `multi` lists those a
// form may repeat (the consent page's scope checkboxes).
std::optional<std::string> Repeated(const Params& p,
                                    std::initializer_list<std::string_view> multi = {}) {
  std::map<std::string_view, int> seen;
  for (const auto& [k, v] : p) {
    if (std::find(multi.begin(), multi.end(), k) != multi.end()) continue;
    if (++seen[k] > 1) return k;
  }
  return std::nullopt;
}

std::vector<std::string> SplitSpaces(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(' ', i);
    if (j == std::string_view::npos) j = s.size();
    if (j > i) out.emplace_back(s.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

std::string JoinSpaces(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) {
    if (!out.empty()) out += ' ';
    out += s;
  }
  return out;
}

bool Contains(const std::vector<std::string>& v, std::string_view x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

std::string PathOf(std::string_view target) {
  size_t q = target.find('?');
  return std::string(target.substr(0, q));
}

std::string QueryOf(std::string_view target) {
  size_t q = target.find('?');
  return q == std::string_view::npos ? std::string() : std::string(target.substr(q + 1));
}

std::optional<std::string> Cookie(const net::HttpRequest& req, std::string_view name) {
  for (const auto& [k, v] : req.headers) {
    if (k.size() != 6 || strncasecmp(k.c_str(), "cookie", 6) != 0) continue;
    std::string_view rest = v;
    while (!rest.empty()) {
      size_t semi = rest.find(';');
      std::string_view part = rest.substr(0, semi);
      rest = semi == std::string_view::npos ? std::string_view() : rest.substr(semi + 1);
      while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
      size_t eq = part.find('=');
      if (eq != std::string_view::npos && part.substr(0, eq) == name) {
        return std::string(part.substr(eq + 1));
      }
    }
  }
  return std::nullopt;
}

// A loopback redirect URI split into host and the part after the port:
// "http://" HOST [":" DIGITS] ("/" ... | "?" ... | end), HOST one of
// 127.0.0.1, [::1], localhost. Anything else (user info, another host that
// merely starts like one, a non-numeric port) is not loopback.
struct LoopbackUri {
  std::string host;
  std::string rest;
};
std::optional<LoopbackUri> ParseLoopback(std::string_view uri) {
  constexpr std::string_view kScheme = "http://";
  if (uri.substr(0, kScheme.size()) != kScheme) return std::nullopt;
  std::string_view r = uri.substr(kScheme.size());
  for (std::string_view host : {"127.0.0.1", "[::1]", "localhost"}) {
    if (r.substr(0, host.size()) != host) continue;
    std::string_view after = r.substr(host.size());
    if (!after.empty() && after.front() == ':') {
      size_t digits = 1;
      while (digits < after.size() && std::isdigit(static_cast<unsigned char>(after[digits]))) {
        ++digits;
      }
      if (digits == 1 || digits > 6) return std::nullopt;
      after.remove_prefix(digits);
    }
    if (!after.empty() && after.front() != '/' && after.front() != '?') return std::nullopt;
    return LoopbackUri{std::string(host), std::string(after)};
  }
  return std::nullopt;
}

// Loopback redirect URIs may differ in port only (RFC 8252 §7.3); every other
// URI must match exactly.
bool RedirectMatches(std::string_view registered, std::string_view given) {
  if (registered == given) return true;
  auto a = ParseLoopback(registered);
  auto b = ParseLoopback(given);
  return a && b && a->host == b->host && a->rest == b->rest;
}

bool IsUnreserved(unsigned char c) {
  return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

// RFC 7636 §4.1/§4.2: 43-128 characters of the unreserved set.
bool IsPkceText(std::string_view s) {
  return s.size() >= 43 && s.size() <= 128 && std::all_of(s.begin(), s.end(), [](char c) {
           return IsUnreserved(static_cast<unsigned char>(c));
         });
}

std::string Sha256B64u(std::string_view s) { return Base64UrlEncode(crypto::Sha256(s)); }

std::string NewSecret() { return Base64UrlEncode(RandomBytes(32)); }

bool IsFhirId(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
  });
}

// The RFC 2253 subject of a DER certificate, or "" when it does not parse.
std::string SubjectDn(std::string_view der) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  X509* cert = d2i_X509(nullptr, &p, static_cast<long>(der.size()));
  if (!cert) return {};
  BIO* bio = BIO_new(BIO_s_mem());
  X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  X509_free(cert);
  return out;
}

const char* kPurposeCodes[] = {"TREAT",  "ETREAT",   "HPAYMT",    "HOPERAT",  "HRESCH", "PUBHLTH",
                               "PATRQT", "FAMRQT",   "PWATRNY",   "SUPNWK",   "HMARKT", "COC",
                               "BTG",    "CLINTRCH", "HSYSADMIN", "HQUALIMP", "HLEGAL", "CAREMGT"};

bool IsPurposeCode(std::string_view c) {
  for (const char* p : kPurposeCodes) {
    if (c == p) return true;
  }
  return false;
}

}  // namespace

// ---------------------------------------------------------------------------
// Scopes

namespace {
// A resource scope in v2 letters, with its restriction text ("" or "?...").
struct NormScope {
  std::string context, type, perms, restriction;
};
std::optional<NormScope> Normalize(std::string_view scope) {
  auto parsed = policy::ParseResourceScope(scope);
  if (!parsed) return std::nullopt;
  NormScope n;
  n.context = parsed->context == policy::ResourceScope::Context::kPatient ? "patient"
              : parsed->context == policy::ResourceScope::Context::kUser  ? "user"
                                                                          : "system";
  n.type = parsed->type;
  if (parsed->c) n.perms += 'c';
  if (parsed->r) n.perms += 'r';
  if (parsed->u) n.perms += 'u';
  if (parsed->d) n.perms += 'd';
  if (parsed->s) n.perms += 's';
  size_t q = scope.find('?');
  if (q != std::string_view::npos) n.restriction = std::string(scope.substr(q));
  return n;
}
}  // namespace

bool ScopeAllowed(std::string_view requested, std::string_view registered) {
  auto req = Normalize(requested);
  for (const std::string& reg : SplitSpaces(registered)) {
    if (reg == requested) return true;
    if (!req) continue;
    auto r = Normalize(reg);
    if (!r || r->context != req->context) continue;
    if (r->type != "*" && r->type != req->type) continue;
    if (!r->restriction.empty() && r->restriction != req->restriction) continue;
    bool covered = std::all_of(req->perms.begin(), req->perms.end(),
                               [&](char c) { return r->perms.find(c) != std::string::npos; });
    if (covered) return true;
  }
  return false;
}

namespace {
// ":" DIGITS with a value 1-65535, or nothing.
bool ValidPort(std::string_view port) {
  if (port.empty()) return true;
  if (port.size() > 5) return false;
  int v = 0;
  for (char c : port) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    v = v * 10 + (c - '0');
  }
  return v >= 1 && v <= 65535;
}
}  // namespace

bool IsRegistrableRedirectUri(std::string_view uri) {
  if (uri.empty() || uri.size() > 2048 || uri.find('#') != std::string_view::npos) return false;
  for (char c : uri) {
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f)
      return false;
    if (c == '\\') return false;
  }
  if (uri.substr(0, 7) == "http://") {
    if (!ParseLoopback(uri)) return false;
    std::string_view rest = uri.substr(7);
    std::string_view authority = rest.substr(0, rest.find_first_of("/?"));
    size_t colon = authority.rfind(':');
    return colon == std::string_view::npos || authority.back() == ']' ||
           (colon + 1 < authority.size() && ValidPort(authority.substr(colon + 1)));
  }
  if (uri.substr(0, 8) == "https://") {
    std::string_view rest = uri.substr(8);
    std::string_view authority = rest.substr(0, rest.find_first_of("/?"));
    if (authority.empty() || authority.find('@') != std::string_view::npos) return false;
    std::string_view host = authority;
    if (size_t colon = authority.rfind(':');
        colon != std::string_view::npos && authority.back() != ']') {
      if (colon + 1 >= authority.size() || !ValidPort(authority.substr(colon + 1))) return false;
      host = authority.substr(0, colon);
    }
    return !host.empty() && std::all_of(host.begin(), host.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '[' ||
             c == ']' || c == ':';
    });
  }
  // A private-use scheme (RFC 8252 §7.1): a reverse domain name, i.e. labels
  // that start with a letter, separated by dots.
  size_t colon = uri.find(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  std::string_view scheme = uri.substr(0, colon);
  if (scheme.find('.') == std::string_view::npos) return false;
  size_t start = 0;
  while (start <= scheme.size()) {
    size_t dot = scheme.find('.', start);
    std::string_view label =
        scheme.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (label.empty() || !std::isalpha(static_cast<unsigned char>(label.front())) ||
        !std::all_of(label.begin(), label.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '-';
        })) {
      return false;
    }
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return true;
}

std::string HashClientSecret(std::string_view secret) {
  return HexEncode(crypto::Sha256(std::string("fhirward-client-secret-v1:") + std::string(secret)));
}

bool AuthorizationServer::Handles(std::string_view path) {
  for (std::string_view p :
       {"/.well-known/smart-configuration", "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server", "/jwks", "/authorize", "/authorize/login",
        "/authorize/totp", "/authorize/consent", "/token", "/revoke", "/introspect", "/par",
        "/userinfo"}) {
    if (path == p) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------

namespace {

// An authorization request between /authorize and the consent decision. Bound
// to the browser that started it (a cookie) and to a CSRF token.
struct Pending {
  std::string id;
  std::string browser;
  std::string client_id;
  std::string client_name;
  std::string redirect_uri;
  std::vector<std::string> scopes;  // requested and registered
  std::string state;
  std::string challenge;
  std::string nonce;
  std::string launch_id;  // EHR launch: consumed when the code is issued
  std::string patient;    // from the EHR launch context
  std::string encounter;
  std::string purpose;
  std::string username;            // set once the password was accepted
  std::string fhir_user;           // the user's fhirUser once logged in
  bool authenticated = false;      // password (and TOTP when enrolled) accepted
  int64_t credential_version = 0;  // the user's when they authenticated
  std::string address;             // client address that started it (quota)
  int64_t expires = 0;
};

struct Session {
  std::string username;
  std::string browser;
  int64_t auth_time = 0;
  int64_t last_seen = 0;
  int64_t credential_version = 0;
  std::string id_hash;  // its key in `sessions`
};

struct ParRecord {
  std::string client_id;
  Params params;
  int64_t expires = 0;
};

struct ClientKeys {
  jose::KeySet keys;
  int64_t fetched = 0;
  std::string source;  // the inline JWKS text they were parsed from ("" for jwks_uri)
};

// An authenticated token-endpoint caller.
struct Caller {
  Client client;
  std::string method;  // how it authenticated
};

struct OAuthFailure {
  int status = 400;
  std::string error;
  std::string description;
  bool basic_challenge = false;
  std::string dpop_nonce;  // set for use_dpop_nonce
};

using Result = std::variant<net::HttpResponse, OAuthFailure>;

}  // namespace

namespace {
// Where Audit() puts the records of the request being handled on this thread
// (set by Handle when its caller appends them itself).
thread_local std::vector<audit::AuditRecord>* tl_records = nullptr;
}  // namespace

struct AuthorizationServer::Impl {
  AuthServerOptions o;
  AuthServerDeps d;
  std::mutex mu;  // pending, sessions, par, client key cache
  std::unordered_map<std::string, Pending> pending;
  std::unordered_map<std::string, Session> sessions;
  std::unordered_map<std::string, ParRecord> par;
  std::unordered_map<std::string, ClientKeys> client_keys;
  // Failed sign-ins per client address in the current window: an address
  // spraying passwords over many accounts is slowed down even though no
  // single account reaches its lockout.
  struct AddressFailures {
    int64_t window_start = 0;
    int64_t count = 0;
  };
  std::unordered_map<std::string, AddressFailures> address_failures;
  static constexpr int64_t kAddressWindowSeconds = 300;
  // Hard caps on what unauthenticated callers can make the server hold.
  static constexpr size_t kMaxPending = 20000;
  static constexpr size_t kMaxPar = 10000;
  static constexpr size_t kMaxPendingPerAddress = 1000;
  static constexpr size_t kMaxParPerClient = 100;

  // Room for one more pending authorization from `address`: at most
  // kMaxPendingPerAddress each; when the table is full the oldest request not
  // yet signed in is dropped (its user starts again), so no one can lock
  // everybody out by filling it.
  bool AdmitPendingLocked(const std::string& address) {
    if (pending.size() >= kMaxPending) SweepLocked();
    size_t same = 0;
    auto oldest = pending.end();
    for (auto it = pending.begin(); it != pending.end(); ++it) {
      if (it->second.address == address) ++same;
      if (!it->second.authenticated &&
          (oldest == pending.end() || it->second.expires < oldest->second.expires)) {
        oldest = it;
      }
    }
    if (same >= kMaxPendingPerAddress) return false;
    if (pending.size() >= kMaxPending) {
      if (oldest == pending.end()) return false;
      pending.erase(oldest);
    }
    return true;
  }

  // Room for one more pushed request of `client_id`: each client keeps at most
  // kMaxParPerClient (its oldest is dropped), the table at most kMaxPar.
  void AdmitParLocked(const std::string& client_id) {
    if (par.size() >= kMaxPar) SweepLocked();
    size_t same = 0;
    auto oldest_own = par.end(), oldest = par.end();
    for (auto it = par.begin(); it != par.end(); ++it) {
      if (oldest == par.end() || it->second.expires < oldest->second.expires) oldest = it;
      if (it->second.client_id != client_id) continue;
      ++same;
      if (oldest_own == par.end() || it->second.expires < oldest_own->second.expires) {
        oldest_own = it;
      }
    }
    if (same >= kMaxParPerClient && oldest_own != par.end()) {
      par.erase(oldest_own);
    } else if (par.size() >= kMaxPar && oldest != par.end()) {
      par.erase(oldest);
    }
  }
  static constexpr int64_t kAddressMaxFailures = 30;

  bool AddressThrottled(const std::string& ip) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = address_failures.find(ip);
    return it != address_failures.end() &&
           it->second.window_start + kAddressWindowSeconds > Now() &&
           it->second.count >= kAddressMaxFailures;
  }
  // How a typed username that is not known to exist appears in the audit
  // trail: it may be a password typed into the wrong field, so only a keyed
  // hash (the same name gives the same value, for correlation).
  std::string AuditName(const std::string& typed) const {
    return AuditNameForUnknownUser(*d.session_key, typed);
  }

  void AddressSucceeded(const std::string& ip) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = address_failures.find(ip);
    if (it != address_failures.end() && it->second.count > 0) --it->second.count;
  }
  void AddressFailed(const std::string& ip) {
    std::lock_guard<std::mutex> lock(mu);
    if (address_failures.size() > 100000) address_failures.clear();
    AddressFailures& f = address_failures[ip];
    const int64_t now = Now();
    if (f.window_start + kAddressWindowSeconds <= now) f = {now, 0};
    ++f.count;
  }

  int64_t Now() const { return d.clock->NowSeconds(); }
  std::string Url(std::string_view path) const { return o.issuer + std::string(path); }

  // --- responses --------------------------------------------------------------

  static net::HttpResponse Json(int status, const Value& body) {
    net::HttpResponse r;
    r.status = status;
    r.SetHeader("Content-Type", "application/json");
    r.SetHeader("Cache-Control", "no-store");
    r.SetHeader("Pragma", "no-cache");
    r.body = json::Write(body);
    return r;
  }

  static net::HttpResponse Failure(const OAuthFailure& f) {
    Value body = Value::MakeObject();
    body.Set("error", Str(f.error));
    if (!f.description.empty()) body.Set("error_description", Str(f.description));
    net::HttpResponse r = Json(f.status, body);
    if (f.status == 401) {
      r.SetHeader("WWW-Authenticate", f.basic_challenge
                                          ? "Basic realm=\"fhirward\""
                                          : "Bearer realm=\"fhirward\", error=\"" + f.error + "\"");
    }
    if (!f.dpop_nonce.empty()) {
      r.SetHeader("DPoP-Nonce", f.dpop_nonce);
      if (f.status == 401) {
        r.SetHeader("WWW-Authenticate", "DPoP error=\"use_dpop_nonce\"");
      }
    }
    return r;
  }

  static OAuthFailure Fail(std::string error, std::string description, int status = 400) {
    return OAuthFailure{status, std::move(error), std::move(description), false, {}};
  }

  static net::HttpResponse Html(int status, std::string body, std::string_view redirect_uri = {}) {
    net::HttpResponse r;
    r.status = status;
    r.SetHeader("Content-Type", "text/html; charset=utf-8");
    r.SetHeader("Content-Security-Policy", PageContentSecurityPolicy(redirect_uri));
    r.SetHeader("X-Frame-Options", "DENY");
    r.SetHeader("Cache-Control", "no-store");
    r.SetHeader("Referrer-Policy", "no-referrer");
    r.SetHeader("X-Content-Type-Options", "nosniff");
    r.body = std::move(body);
    return r;
  }

  static net::HttpResponse ErrorPageResponse(int status, std::string title, std::string message) {
    return Html(status, RenderErrorPage({std::move(title), std::move(message)}));
  }

  // A redirect back to the client with `params`, plus `iss` (RFC 9207).
  net::HttpResponse Redirect(const std::string& redirect_uri, Params params) const {
    params.emplace_back("iss", o.issuer);
    std::string url = redirect_uri;
    char sep = url.find('?') == std::string::npos ? '?' : '&';
    for (const auto& [k, v] : params) {
      url += sep;
      url += PercentEncode(k) + "=" + PercentEncode(v);
      sep = '&';
    }
    net::HttpResponse r;
    r.status = 302;
    r.SetHeader("Location", url);
    r.SetHeader("Cache-Control", "no-store");
    r.SetHeader("Referrer-Policy", "no-referrer");
    return r;
  }

  net::HttpResponse RedirectError(const std::string& redirect_uri, const std::string& state,
                                  const std::string& error, const std::string& description) const {
    Params p{{"error", error}};
    if (!description.empty()) p.emplace_back("error_description", description);
    if (!state.empty()) p.emplace_back("state", state);
    return Redirect(redirect_uri, std::move(p));
  }

  // --- audit ------------------------------------------------------------------

  void Audit(const net::HttpRequest& req, std::string action, std::string outcome, int status,
             std::string client_id, std::string subject, std::string error, std::string scopes = {},
             std::string patient = {}) const {
    if (!d.audit) return;
    audit::AuditRecord a;
    a.time = FormatInstant(d.clock->Now());
    a.request_id = RandomUuid();
    a.client_address = req.remote_ip;
    if (auto ua = req.header("User-Agent")) a.user_agent = std::string(ua->substr(0, 256));
    a.subject = std::move(subject);
    a.client_id = std::move(client_id);
    a.scopes = std::move(scopes);
    a.action = std::move(action);
    a.method = req.method;
    a.patient_id = std::move(patient);
    a.outcome = std::move(outcome);
    a.status_code = status;
    a.error = std::move(error);
    if (tl_records != nullptr) {
      tl_records->push_back(std::move(a));
      return;
    }
    (void)d.audit->Append(a);
  }

  // --- client authentication ----------------------------------------------------

  absl::StatusOr<jose::KeySet> KeysOf(const Client& c, bool refresh) {
    if (!c.jwks.empty()) {
      // Parsed once per registration (the text is compared, so a re-registered
      // client's new keys apply at once).
      {
        std::lock_guard<std::mutex> lock(mu);
        auto it = client_keys.find(c.client_id);
        if (it != client_keys.end() && it->second.source == c.jwks) return it->second.keys;
      }
      auto doc = json::Parse(c.jwks);
      if (!doc.ok()) return doc.status();
      auto keys = jose::KeySet::FromJwks(*doc);
      if (!keys.ok()) return keys.status();
      std::lock_guard<std::mutex> lock(mu);
      client_keys[c.client_id] = {*keys, Now(), c.jwks};
      return *keys;
    }
    if (c.jwks_uri.empty()) return Error(ErrorCode::kInvalidToken, "no_keys");
    const int64_t now = Now();
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = client_keys.find(c.client_id);
      if (it != client_keys.end() &&
          (now - it->second.fetched < 300 && !(refresh && now - it->second.fetched >= 30))) {
        return it->second.keys;
      }
    }
    net::FetchOptions fo;
    fo.ca_file = o.jwks_ca_file;
    fo.max_body_bytes = 64 * 1024;
    auto body = net::HttpsGet(c.jwks_uri, fo);
    if (!body.ok()) return body.status();
    auto doc = json::Parse(*body);
    if (!doc.ok()) return doc.status();
    auto keys = jose::KeySet::FromJwks(*doc);
    if (!keys.ok()) return keys.status();
    std::lock_guard<std::mutex> lock(mu);
    client_keys[c.client_id] = {*keys, now, ""};
    return *keys;
  }

  // RFC 7523 §3 client assertion.
  std::optional<OAuthFailure> CheckAssertion(const Client& c, const std::string& assertion) {
    auto bad = [](std::string why) {
      return OAuthFailure{401, "invalid_client", "client assertion refused: " + why, false, {}};
    };
    const int64_t now = Now();
    jose::JwtExpectations e;
    e.issuer = c.client_id;
    e.audience = {Url("/token"), o.issuer};
    e.now = now;
    e.leeway_seconds = 30;
    e.require_exp = true;
    auto keys = KeysOf(c, false);
    if (!keys.ok()) return bad("no usable client keys");
    auto jwt = jose::VerifyJwt(assertion, *keys, e);
    if (!jwt.ok() && DetailOf(jwt.status()) == "unknown_kid" && !c.jwks_uri.empty()) {
      keys = KeysOf(c, true);
      if (keys.ok()) jwt = jose::VerifyJwt(assertion, *keys, e);
    }
    if (!jwt.ok()) return bad(DetailOf(jwt.status()));
    const Value& claims = jwt->claims;
    if (claims.GetString("sub").value_or("") != c.client_id) return bad("sub must be the client");
    auto jti = claims.GetString("jti");
    if (!jti || jti->empty() || jti->size() > 256) return bad("jti missing");
    // NumericDate may have a fraction (RFC 7519 §2): rounded down, never 0,
    // so that neither the lifetime limit nor the replay window can be skipped.
    const Value* exp = claims.Find("exp");
    int64_t exp_v = exp ? jose::NumericDate(*exp).value_or(0) : 0;
    if (exp_v <= now - 30) return bad("expired");
    if (exp_v > now + o.client_assertion_max_seconds + 30) return bad("exp too far in the future");
    if (!d.replay->Use("assertion\x1f" + c.client_id + "\x1f" + std::string(*jti), exp_v + 60,
                       now)) {
      return bad("jti already used");
    }
    return std::nullopt;
  }

  // Authenticates the caller of /token, /revoke, /introspect or /par.
  // `allow_public`: a public client identified by client_id alone is accepted.
  std::variant<Caller, OAuthFailure> AuthenticateClient(const net::HttpRequest& req,
                                                        const Params& form, bool allow_public) {
    auto invalid = [](std::string why, bool basic = false) {
      return OAuthFailure{401, "invalid_client", std::move(why), basic, {}};
    };
    std::string client_id = GetOr(form, "client_id");
    std::string secret;
    std::string method;
    if (auto auth = req.header("Authorization")) {
      if (auth->size() > 6 && strncasecmp(auth->data(), "basic ", 6) == 0) {
        auto decoded = Base64Decode(auth->substr(6));
        size_t colon = decoded ? decoded->find(':') : std::string::npos;
        if (colon == std::string::npos) return invalid("malformed Basic credentials", true);
        auto id = PercentDecode(decoded->substr(0, colon));
        auto sec = PercentDecode(decoded->substr(colon + 1));
        if (!id || !sec) return invalid("malformed Basic credentials", true);
        if (!client_id.empty() && client_id != *id) {
          return Fail("invalid_request", "client_id differs from the authenticated client");
        }
        client_id = *id;
        secret = *sec;
        method = "client_secret_basic";
      }
    }
    const std::string* assertion_type = Get(form, "client_assertion_type");
    const std::string* assertion = Get(form, "client_assertion");
    if (assertion_type || assertion) {
      if (!method.empty()) return Fail("invalid_request", "more than one client authentication");
      if (!assertion_type || *assertion_type != kAssertionType || !assertion) {
        return invalid("unsupported client_assertion_type");
      }
      if (client_id.empty()) {
        // The assertion names its client (iss); verified below.
        size_t d1 = assertion->find('.');
        size_t d2 = assertion->find('.', d1 == std::string::npos ? 0 : d1 + 1);
        if (d1 == std::string::npos || d2 == std::string::npos)
          return invalid("malformed assertion");
        auto text = Base64UrlDecode(std::string_view(*assertion).substr(d1 + 1, d2 - d1 - 1));
        auto claims = text ? json::Parse(*text) : absl::StatusOr<Value>(absl::InternalError(""));
        if (!claims.ok() || !claims->GetString("iss")) return invalid("malformed assertion");
        client_id = std::string(*claims->GetString("iss"));
      }
      method = "private_key_jwt";
    }
    if (!req.client_cert_der.empty() && method.empty()) method = "tls_client_auth";
    if (client_id.empty()) return invalid("client authentication required");
    auto client = d.store->GetClient(client_id);
    if (!client.ok()) return Fail("server_error", "", 500);
    if (!*client || (*client)->disabled)
      return invalid("unknown or disabled client", method == "client_secret_basic");
    Client& c = **client;
    const int64_t now = Now();
    switch (c.auth) {
      case ClientAuth::kNone:
        if (method == "tls_client_auth") method.clear();  // a certificate alone does not matter
        if (!method.empty()) return invalid("this client is public");
        if (!allow_public) return invalid("a confidential client is required");
        return Caller{std::move(c), "none"};
      case ClientAuth::kSecretBasic: {
        if (method != "client_secret_basic") return invalid("client_secret_basic required", true);
        std::string h = HashClientSecret(secret);
        bool ok = crypto::ConstantTimeEquals(h, c.secret_hash) &&
                  (c.secret_expires == 0 || c.secret_expires > now);
        bool prev = !c.previous_secret_hash.empty() && c.previous_secret_expires > now &&
                    crypto::ConstantTimeEquals(h, c.previous_secret_hash);
        if (!ok && !prev) return invalid("wrong client secret", true);
        return Caller{std::move(c), method};
      }
      case ClientAuth::kPrivateKeyJwt: {
        if (method != "private_key_jwt") return invalid("private_key_jwt required");
        if (auto f = CheckAssertion(c, *assertion)) return *f;
        return Caller{std::move(c), method};
      }
      case ClientAuth::kTlsClientAuth: {
        if (req.client_cert_der.empty()) return invalid("client certificate required");
        if (method != "tls_client_auth") return invalid("tls_client_auth required");
        if (SubjectDn(req.client_cert_der) != c.tls_subject_dn) {
          return invalid("client certificate subject does not match");
        }
        return Caller{std::move(c), method};
      }
    }
    return invalid("unsupported client authentication");
  }

  // --- DPoP ---------------------------------------------------------------------

  // Verifies the DPoP header of a token request when there is one. Returns the
  // key thumbprint ("" without DPoP).
  std::variant<std::string, OAuthFailure> TokenDpop(const net::HttpRequest& req) {
    std::vector<std::string_view> proofs;
    for (const auto& [k, v] : req.headers) {
      if (k.size() == 4 && strncasecmp(k.c_str(), "dpop", 4) == 0) proofs.push_back(v);
    }
    if (proofs.empty()) return std::string();
    if (proofs.size() > 1) return Fail("invalid_dpop_proof", "more than one DPoP header");
    jose::DpopExpectations e;
    e.method = "POST";
    e.url = Url("/token");
    e.now = Now();
    e.nonces = o.dpop_nonce_required ? d.nonces : nullptr;
    e.replay = d.dpop_replay;
    auto proof = jose::VerifyDpopProof(proofs[0], e);
    if (!proof.ok()) {
      if (DetailOf(proof.status()) == "use_dpop_nonce") {
        OAuthFailure f = Fail("use_dpop_nonce", "a DPoP nonce is required");
        f.dpop_nonce = d.nonces->Current(Now());
        return f;
      }
      return Fail("invalid_dpop_proof", DetailOf(proof.status()));
    }
    return proof->jkt;
  }

  // --- tokens -------------------------------------------------------------------

  struct Issued {
    std::string token;
    std::string jti;
    int64_t exp = 0;
  };

  absl::StatusOr<Issued> SignAccess(const std::string& subject, const std::string& client_id,
                                    const GrantData& g, const std::string& scope, int64_t ttl,
                                    const std::string& jkt, const std::string& x5t,
                                    const std::string& roles = "") const {
    const int64_t now = Now();
    auto key = d.keys->Active(jose::Algorithm::kES256, now);
    if (!key) return Error(ErrorCode::kInternal, "no active ES256 signing key");
    Issued out;
    out.jti = Base64UrlEncode(RandomBytes(18));
    out.exp = now + ttl;
    Value c = Value::MakeObject();
    c.Set("iss", Str(o.issuer));
    c.Set("sub", Str(subject));
    c.Set("aud", Str(o.issuer));
    c.Set("exp", Value::Int(out.exp));
    c.Set("iat", Value::Int(now));
    c.Set("jti", Str(out.jti));
    c.Set("client_id", Str(client_id));
    c.Set("scope", Str(scope));
    if (!g.patient.empty()) c.Set("patient", Str(g.patient));
    if (!g.encounter.empty()) c.Set("encounter", Str(g.encounter));
    if (!g.fhir_user.empty()) c.Set("fhirUser", Str(g.fhir_user));
    if (!roles.empty()) {
      Value a = Value::MakeArray();
      for (const auto& r : SplitSpaces(roles)) a.Push(Str(r));
      c.Set("roles", std::move(a));
    }
    if (!g.purpose_of_use.empty()) {
      Value a = Value::MakeArray();
      for (const auto& p : SplitSpaces(g.purpose_of_use)) a.Push(Str(p));
      c.Set("purpose_of_use", std::move(a));
    }
    if (!jkt.empty() || !x5t.empty()) {
      Value cnf = Value::MakeObject();
      if (!jkt.empty()) cnf.Set("jkt", Str(jkt));
      if (!x5t.empty()) cnf.Set("x5t#S256", Str(x5t));
      c.Set("cnf", std::move(cnf));
    }
    auto token = jose::SignCompact(*key, c, "at+jwt");
    if (!token.ok()) return token.status();
    out.token = std::move(*token);
    return out;
  }

  absl::StatusOr<std::string> SignIdToken(const Client& client, const GrantData& g,
                                          const std::string& scope) const {
    const int64_t now = Now();
    jose::Algorithm alg =
        client.id_token_alg == "ES256" ? jose::Algorithm::kES256 : jose::Algorithm::kRS256;
    auto key = d.keys->Active(alg, now);
    if (!key) return Error(ErrorCode::kInternal, "no active ID token signing key");
    Value c = Value::MakeObject();
    c.Set("iss", Str(o.issuer));
    c.Set("sub", Str(g.username));
    c.Set("aud", Str(client.client_id));
    c.Set("azp", Str(client.client_id));
    c.Set("exp", Value::Int(now + 3600));
    c.Set("iat", Value::Int(now));
    c.Set("auth_time", Value::Int(g.auth_time));
    if (!g.nonce.empty()) c.Set("nonce", Str(g.nonce));
    if (Contains(SplitSpaces(scope), "fhirUser") && !g.fhir_user.empty()) {
      c.Set("fhirUser", Str(o.issuer + "/" + g.fhir_user));
    }
    return jose::SignCompact(*key, c, "JWT");
  }

  // The token response for a grant (authorization_code or refresh_token).
  Result GrantResponse(const net::HttpRequest& req, const Client& client, const GrantData& g,
                       const std::string& grant_id, const std::string& scope,
                       const std::string& jkt, const std::string& x5t,
                       const std::string& refresh_token, bool with_id_token) {
    // The user's roles as they are now (a change applies from the next
    // token); a user without roles gets none (the policy's default roles).
    auto user = d.store->GetUser(g.username);
    if (!user.ok()) return Fail("server_error", "", 500);
    if (!*user) return Fail("invalid_grant", "the user no longer exists");
    auto access = SignAccess(g.username, client.client_id, g, scope, o.access_token_seconds, jkt,
                             x5t, (*user)->roles);
    if (!access.ok()) return Fail("server_error", "", 500);
    if (auto s = d.store->AddAccessToken(access->jti, grant_id, access->exp); !s.ok()) {
      return Fail("server_error", "", 500);
    }
    // Revoked meanwhile (a concurrent reuse or replay)? Its revocation may have
    // run before this token was recorded: revoke it here.
    auto current = d.store->GetGrant(grant_id);
    if (!current.ok() || !*current || (*current)->revoked) {
      (void)d.store->RevokeAccessToken(access->jti, access->exp, Now());
      if (d.revocations) d.revocations->Add(access->jti, access->exp);
      return Fail("invalid_grant", "the grant was revoked");
    }
    Value body = Value::MakeObject();
    body.Set("access_token", Str(access->token));
    body.Set("token_type", Str(jkt.empty() ? "Bearer" : "DPoP"));
    body.Set("expires_in", Value::Int(o.access_token_seconds));
    body.Set("scope", Str(scope));
    if (!refresh_token.empty()) body.Set("refresh_token", Str(refresh_token));
    if (with_id_token && Contains(SplitSpaces(scope), "openid")) {
      auto id = SignIdToken(client, g, scope);
      if (!id.ok()) return Fail("server_error", "", 500);
      body.Set("id_token", Str(*id));
    }
    if (!g.patient.empty()) body.Set("patient", Str(g.patient));
    if (!g.encounter.empty()) body.Set("encounter", Str(g.encounter));
    if (!g.patient.empty()) body.Set("need_patient_banner", Value::Bool(true));
    if (!g.fhir_user.empty() && Contains(SplitSpaces(scope), "fhirUser")) {
      // Not a token claim here: the ID token carries it. Kept for apps that read it.
    }
    Audit(req, "token-issue", "success", 200, client.client_id, g.username, "", scope, g.patient);
    return Json(200, body);
  }

  // Issues a refresh token for the grant when the scope asks for one.
  absl::StatusOr<std::string> MaybeRefresh(const Client& client, const std::string& scope,
                                           const std::string& grant_id) {
    auto scopes = SplitSpaces(scope);
    if (!(Contains(scopes, "offline_access") || Contains(scopes, "online_access")) ||
        !client.HasGrant("refresh_token")) {
      return std::string();
    }
    std::string token = NewSecret();
    auto s = d.store->AddRefresh(Sha256B64u(token), grant_id, Now() + o.refresh_idle_seconds);
    if (!s.ok()) return s;
    return token;
  }

  std::string X5t(const net::HttpRequest& req) const {
    return req.client_cert_der.empty() ? std::string() : Sha256B64u(req.client_cert_der);
  }

  // Sender constraint required by the client's registration.
  std::optional<OAuthFailure> CheckConstraint(const Client& c, const net::HttpRequest& req,
                                              const std::string& jkt) const {
    if (c.sender_constraint == "dpop" && jkt.empty()) {
      return Fail("invalid_request", "this client's tokens must be DPoP-bound: send a DPoP proof");
    }
    if (c.sender_constraint == "mtls" && req.client_cert_der.empty()) {
      return Fail("invalid_request",
                  "this client's tokens are bound to its TLS client certificate: present one");
    }
    return std::nullopt;
  }

  Result TokenAuthorizationCode(const net::HttpRequest& req, const Params& form,
                                const Client& client, const std::string& jkt) {
    if (!client.HasGrant("authorization_code")) {
      return Fail("unauthorized_client", "authorization_code is not allowed for this client");
    }
    const std::string* code = Get(form, "code");
    const std::string* redirect = Get(form, "redirect_uri");
    const std::string* verifier = Get(form, "code_verifier");
    if (!code || code->empty()) return Fail("invalid_request", "code is required");
    const std::string code_hash = Sha256B64u(*code);
    CodeRecord rec;
    auto use = d.store->ConsumeCode(code_hash, client.client_id, &rec);
    if (!use.ok()) return Fail("server_error", "", 500);
    const int64_t now = Now();
    if (*use == CodeUse::kUnknown) return Fail("invalid_grant", "unknown authorization code");
    if (*use == CodeUse::kOtherClient) {
      // Not consumed: another client cannot burn a code or revoke its grant.
      return Fail("invalid_grant", "unknown authorization code");
    }
    if (*use == CodeUse::kReplayed) {
      auto gid = d.store->RevokeGrantOfCode(code_hash, now);
      if (gid.ok()) SyncRevocations();
      Audit(req, "token-code-replay", "denied", 400, client.client_id, rec.grant.username,
            "code_replayed");
      return Fail("invalid_grant", "authorization code already used; its tokens are revoked");
    }
    if (rec.grant.client_id != client.client_id) {
      return Fail("invalid_grant", "unknown authorization code");
    }
    if (rec.expires <= now) return Fail("invalid_grant", "authorization code expired");
    if (!redirect || *redirect != rec.redirect_uri) {
      return Fail("invalid_grant", "redirect_uri does not match the authorization request");
    }
    if (!verifier) return Fail("invalid_grant", "code_verifier is required (PKCE)");
    if (!IsPkceText(*verifier)) return Fail("invalid_grant", "malformed code_verifier");
    if (!crypto::ConstantTimeEquals(Sha256B64u(*verifier), rec.code_challenge)) {
      return Fail("invalid_grant", "code_verifier does not match the code_challenge");
    }
    if (auto f = CheckConstraint(client, req, jkt)) return *f;
    if (!UserStillValid(rec.grant)) {
      return Fail("invalid_grant", "the user's account changed; authorize again");
    }
    GrantData g = rec.grant;
    // A public client's refresh tokens are bound to its DPoP key.
    if (client.is_public() && !jkt.empty()) g.dpop_jkt = jkt;
    auto grant_id = d.store->AddGrant(g, code_hash, now, now + o.refresh_absolute_seconds);
    if (!grant_id.ok()) return Fail("server_error", "", 500);
    // A replay that arrived before the grant existed could not revoke it.
    if (auto uses = d.store->CodeUses(code_hash); !uses.ok() || *uses > 1 || !UserStillValid(g)) {
      (void)d.store->RevokeGrant(*grant_id, now);
      SyncRevocations();
      return Fail("invalid_grant", "authorization code already used; its tokens are revoked");
    }
    auto refresh = MaybeRefresh(client, g.scope, *grant_id);
    if (!refresh.ok()) return Fail("server_error", "", 500);
    std::string x5t = client.sender_constraint == "mtls" ? X5t(req) : std::string();
    return GrantResponse(req, client, g, *grant_id, g.scope, jkt, x5t, *refresh, true);
  }

  Result TokenRefresh(const net::HttpRequest& req, const Params& form, const Client& client,
                      const std::string& jkt) {
    if (!client.HasGrant("refresh_token")) {
      return Fail("unauthorized_client", "refresh_token is not allowed for this client");
    }
    const std::string* token = Get(form, "refresh_token");
    if (!token || token->empty()) return Fail("invalid_request", "refresh_token is required");
    const std::string hash = Sha256B64u(*token);
    auto rec = d.store->GetRefresh(hash);
    if (!rec.ok()) return Fail("server_error", "", 500);
    if (!*rec) return Fail("invalid_grant", "unknown refresh token");
    auto grant = d.store->GetGrant((*rec)->grant_id);
    if (!grant.ok() || !*grant) return Fail("invalid_grant", "unknown refresh token");
    const GrantRecord& gr = **grant;
    const int64_t now = Now();
    if (gr.data.client_id != client.client_id) {
      // Not this client's token: refuse without revealing or touching it.
      return Fail("invalid_grant", "the refresh token was issued to another client");
    }
    if (gr.revoked) return Fail("invalid_grant", "the grant was revoked");
    // A disabled user, or one whose password changed since the authorization,
    // keeps nothing.
    if (!gr.data.session.empty() && !SessionAlive(gr.data.session)) {
      return Fail("invalid_grant", "the login session of this online_access grant has ended");
    }
    if (!UserStillValid(gr.data)) {
      (void)d.store->RevokeGrant(gr.id, now);
      SyncRevocations();
      return Fail("invalid_grant", "the user's account changed; authorize again");
    }
    if ((*rec)->used && client.rotate_refresh) {
      (void)d.store->RevokeGrant(gr.id, now);
      SyncRevocations();
      Audit(req, "token-refresh-reuse", "denied", 400, client.client_id, gr.data.username,
            "refresh_token_reused");
      return Fail("invalid_grant", "refresh token reused; the grant is revoked");
    }
    if ((*rec)->idle_expires <= now || gr.absolute_expires <= now) {
      return Fail("invalid_grant", "refresh token expired");
    }
    if (!gr.data.dpop_jkt.empty() && jkt != gr.data.dpop_jkt) {
      return Fail("invalid_grant", "the refresh token is bound to another DPoP key");
    }
    if (auto f = CheckConstraint(client, req, jkt)) return *f;
    std::string scope = gr.data.scope;
    if (const std::string* want = Get(form, "scope")) {
      auto granted = SplitSpaces(gr.data.scope);
      auto asked = SplitSpaces(*want);
      for (const auto& s : asked) {
        if (!Contains(granted, s)) {
          return Fail("invalid_scope", "scope " + s + " was not part of the original grant");
        }
      }
      if (asked.empty()) return Fail("invalid_scope", "empty scope");
      scope = JoinSpaces(asked);
    }
    std::string next;
    if (client.rotate_refresh) {
      auto won = d.store->UseRefresh(hash);
      if (!won.ok()) return Fail("server_error", "", 500);
      if (!*won) {  // lost a race with another use of the same token: a reuse
        (void)d.store->RevokeGrant(gr.id, now);
        SyncRevocations();
        return Fail("invalid_grant", "refresh token reused; the grant is revoked");
      }
      next = NewSecret();
      if (auto s = d.store->AddRefresh(Sha256B64u(next), gr.id, now + o.refresh_idle_seconds);
          !s.ok()) {
        return Fail("server_error", "", 500);
      }
    } else {
      (void)d.store->TouchRefresh(hash, now + o.refresh_idle_seconds);
    }
    std::string x5t = client.sender_constraint == "mtls" ? X5t(req) : std::string();
    GrantData g = gr.data;
    g.nonce.clear();
    Audit(req, "token-refresh", "success", 200, client.client_id, g.username, "", scope, g.patient);
    return GrantResponse(req, client, g, gr.id, scope, jkt, x5t, next, false);
  }

  Result TokenClientCredentials(const net::HttpRequest& req, const Params& form,
                                const Client& client, const std::string& jkt) {
    if (client.is_public()) {
      return Fail("unauthorized_client", "client_credentials needs a confidential client");
    }
    if (!client.HasGrant("client_credentials")) {
      return Fail("unauthorized_client", "client_credentials is not allowed for this client");
    }
    std::vector<std::string> asked = SplitSpaces(GetOr(form, "scope"));
    if (asked.empty()) {
      for (const auto& s : SplitSpaces(client.scope)) {
        if (s.rfind("system/", 0) == 0) asked.push_back(s);
      }
    }
    if (asked.empty()) return Fail("invalid_scope", "no scope requested or registered");
    for (const auto& s : asked) {
      if (s.rfind("system/", 0) != 0 || !policy::ParseResourceScope(s)) {
        return Fail("invalid_scope", "backend services may only request system/ scopes: " + s);
      }
      if (!ScopeAllowed(s, client.scope)) {
        return Fail("invalid_scope", "scope " + s + " is not registered for this client");
      }
    }
    if (auto f = CheckConstraint(client, req, jkt)) return *f;
    const std::string scope = JoinSpaces(asked);
    std::string x5t = client.sender_constraint == "mtls" ? X5t(req) : std::string();
    GrantData g;
    auto access = SignAccess(client.client_id, client.client_id, g, scope,
                             std::min<int64_t>(o.backend_token_seconds, 300), jkt, x5t);
    if (!access.ok()) return Fail("server_error", "", 500);
    Value body = Value::MakeObject();
    body.Set("access_token", Str(access->token));
    body.Set("token_type", Str(jkt.empty() ? "Bearer" : "DPoP"));
    body.Set("expires_in", Value::Int(std::min<int64_t>(o.backend_token_seconds, 300)));
    body.Set("scope", Str(scope));
    Audit(req, "token-issue", "success", 200, client.client_id, client.client_id, "", scope);
    return Json(200, body);
  }

  net::HttpResponse Token(const net::HttpRequest& req) {
    auto result = TokenResult(req);
    if (auto* f = std::get_if<OAuthFailure>(&result)) {
      return Failure(*f);
    }
    return std::get<net::HttpResponse>(std::move(result));
  }

  std::optional<OAuthFailure> CheckFormRequest(const net::HttpRequest& req) const {
    if (req.method != "POST") return OAuthFailure{405, "invalid_request", "use POST", false, {}};
    auto ct = req.header("Content-Type").value_or("");
    std::string_view mt = ct.substr(0, ct.find(';'));
    while (!mt.empty() && mt.back() == ' ') mt.remove_suffix(1);
    if (strncasecmp(std::string(mt).c_str(), "application/x-www-form-urlencoded", 33) != 0 ||
        mt.size() != 33) {
      return Fail("invalid_request", "Content-Type must be application/x-www-form-urlencoded");
    }
    if (!QueryOf(req.target).empty()) {
      return Fail("invalid_request", "parameters belong in the body, not the URL");
    }
    return std::nullopt;
  }

  Result TokenResult(const net::HttpRequest& req) {
    if (auto f = CheckFormRequest(req)) return *f;
    auto form = ParseForm(req.body);
    if (!form.ok()) return Fail("invalid_request", DetailOf(form.status()));
    if (auto rep = Repeated(*form)) return Fail("invalid_request", "repeated parameter " + *rep);
    auto caller = AuthenticateClient(req, *form, /*allow_public=*/true);
    if (auto* f = std::get_if<OAuthFailure>(&caller)) {
      Audit(req, "token-client-auth", "denied", f->status, GetOr(*form, "client_id"), "", f->error);
      return *f;
    }
    const Client& client = std::get<Caller>(caller).client;
    const std::string grant_type = GetOr(*form, "grant_type");
    if (grant_type.empty()) return Fail("invalid_request", "grant_type is required");
    if (grant_type != "authorization_code" && grant_type != "refresh_token" &&
        grant_type != "client_credentials") {
      return Fail("unsupported_grant_type",
                  "supported: authorization_code, refresh_token, client_credentials");
    }
    auto dpop = TokenDpop(req);
    if (auto* f = std::get_if<OAuthFailure>(&dpop)) return *f;
    const std::string& jkt = std::get<std::string>(dpop);
    Result r;
    if (grant_type == "authorization_code") {
      r = TokenAuthorizationCode(req, *form, client, jkt);
    } else if (grant_type == "refresh_token") {
      r = TokenRefresh(req, *form, client, jkt);
    } else if (grant_type == "client_credentials") {
      r = TokenClientCredentials(req, *form, client, jkt);
    } else if (grant_type.empty()) {
      return Fail("invalid_request", "grant_type is required");
    } else {
      return Fail("unsupported_grant_type",
                  "supported: authorization_code, refresh_token, "
                  "client_credentials");
    }
    if (auto* f = std::get_if<OAuthFailure>(&r); f && f->error != "server_error") {
      Audit(req, "token-" + grant_type, "denied", f->status, client.client_id, "", f->error);
    }
    return r;
  }

  // The user who authorized still exists, is enabled and has not had their
  // password reset (or been disabled and enabled) since.
  bool SessionAlive(const std::string& id_hash) {
    const int64_t now = Now();
    std::lock_guard<std::mutex> lock(mu);
    auto it = sessions.find(id_hash);
    return it != sessions.end() && it->second.last_seen + o.session_idle_seconds > now &&
           it->second.auth_time + o.session_absolute_seconds > now;
  }

  bool UserStillValid(const GrantData& g) const {
    auto user = d.store->GetUser(g.username);
    return user.ok() && *user && !(*user)->disabled &&
           (*user)->credential_version == g.credential_version;
  }

  void SyncRevocations() {
    if (d.revocations) (void)d.revocations->Sync(*d.store, Now());
  }

  // --- authorization endpoint ---------------------------------------------------

  std::string Csrf(const std::string& browser, const std::string& pending_id) const {
    return Base64UrlEncode(crypto::HmacSha256(d.session_key->UnsafeView(),
                                              "csrf\x1f" + browser + "\x1f" + pending_id));
  }

  static void SetCookie(net::HttpResponse& r, const std::string& name, const std::string& value,
                        int64_t max_age) {
    r.headers.emplace_back("Set-Cookie", name + "=" + value +
                                             "; Path=/; Secure; HttpOnly; "
                                             "SameSite=Lax; Max-Age=" +
                                             std::to_string(max_age));
  }

  // Validates an authorization request. Errors before the client and redirect
  // URI are known end on an error page (never a redirect, RFC 6749 §4.1.2.1);
  // later ones go back to the client.
  net::HttpResponse Authorize(const net::HttpRequest& req) {
    Params params;
    if (req.method == "GET") {
      auto q = ParseForm(QueryOf(req.target));
      if (!q.ok()) return ErrorPageResponse(400, "Invalid request", DetailOf(q.status()));
      params = std::move(*q);
    } else if (req.method == "POST") {
      auto ct = req.header("Content-Type").value_or("");
      if (ct.substr(0, 33) != "application/x-www-form-urlencoded") {
        return ErrorPageResponse(400, "Invalid request",
                                 "Send the request as application/x-www-form-urlencoded.");
      }
      auto f = ParseForm(req.body);
      if (!f.ok()) return ErrorPageResponse(400, "Invalid request", DetailOf(f.status()));
      params = std::move(*f);
    } else {
      net::HttpResponse r = ErrorPageResponse(405, "Method not allowed", "Use GET or POST.");
      r.SetHeader("Allow", "GET, POST");
      return r;
    }
    if (auto rep = Repeated(params)) {
      return ErrorPageResponse(400, "Invalid request", "The parameter " + *rep + " is repeated.");
    }
    const std::string client_id = GetOr(params, "client_id");
    auto client = d.store->GetClient(client_id);
    if (!client.ok()) return ErrorPageResponse(500, "Server error", "Please try again later.");
    if (client_id.empty() || !*client || (*client)->disabled) {
      return ErrorPageResponse(400, "Unknown application",
                               "The application that sent you here is not registered.");
    }
    const Client& c = **client;
    // PAR: the pushed parameters replace the query (RFC 9126 §4).
    if (const std::string* ru = Get(params, "request_uri")) {
      std::lock_guard<std::mutex> lock(mu);
      auto it = par.find(*ru);
      if (it == par.end() || it->second.expires <= Now() || it->second.client_id != client_id) {
        // Another client's request_uri stays (whoever saw the URL cannot burn it).
        if (it != par.end() && it->second.client_id == client_id) par.erase(it);
        return ErrorPageResponse(400, "Invalid request",
                                 "The pushed authorization request is unknown or expired.");
      }
      params = std::move(it->second.params);
      par.erase(it);
    }
    const std::string redirect_uri = GetOr(params, "redirect_uri");
    bool registered = false;
    for (const auto& r : c.redirect_uris)
      registered = registered || RedirectMatches(r, redirect_uri);
    if (redirect_uri.empty() || !registered) {
      Audit(req, "authorize", "denied", 400, client_id, "", "redirect_uri_mismatch");
      return ErrorPageResponse(
          400, "Invalid redirect",
          "The address this application asked to return to is not registered.");
    }
    const std::string state = GetOr(params, "state");
    if (state.size() > 1024) {
      return ErrorPageResponse(400, "Invalid request", "The state parameter is too long.");
    }
    auto error = [&](const std::string& e, const std::string& why) {
      Audit(req, "authorize", "denied", 302, client_id, "", e);
      return RedirectError(redirect_uri, state, e, why);
    };
    auto validated = ValidateAuthorizeParams(c, params);
    if (auto* f = std::get_if<OAuthFailure>(&validated)) return error(f->error, f->description);
    Pending p = std::move(std::get<Pending>(validated));
    p.redirect_uri = redirect_uri;
    p.state = state;
    // The browser: an existing cookie, or a new one.
    std::string browser = Cookie(req, "__Host-fw_browser").value_or("");
    bool new_browser = browser.size() != 43;
    if (new_browser) browser = NewSecret();
    p.browser = browser;
    p.id = NewSecret();
    p.expires = Now() + o.login_form_seconds;
    const std::string prompt = GetOr(params, "prompt");
    std::optional<Session> session = prompt == "login" ? std::nullopt : SessionOf(req, browser);
    if (prompt == "none" && !session) return error("login_required", "no active session");
    // Consent is not remembered: without a page it cannot be given (OIDC Core §3.1.2.1).
    if (prompt == "none") return error("consent_required", "consent needs the consent page");
    if (session) {
      auto user = d.store->GetUser(session->username);
      if (user.ok() && *user && !(*user)->disabled &&
          (*user)->credential_version == session->credential_version) {
        p.username = session->username;
        p.credential_version = session->credential_version;
        p.fhir_user = (*user)->fhir_user;
        p.authenticated = true;
      }
    }
    net::HttpResponse r;
    {
      std::lock_guard<std::mutex> lock(mu);
      p.address = req.remote_ip;
      if (!AdmitPendingLocked(p.address)) {
        return ErrorPageResponse(429, "Too many sign-ins",
                                 "Too many sign-ins were started from this network. Try again "
                                 "in a few minutes.");
      }
      pending[p.id] = p;
    }
    r = p.authenticated ? ShowConsent(p, "") : ShowLogin(p, "", "");
    if (new_browser) SetCookie(r, "__Host-fw_browser", browser, 30 * 86400);
    return r;
  }

  std::variant<Pending, OAuthFailure> ValidateAuthorizeParams(const Client& c,
                                                              const Params& params) {
    if (GetOr(params, "response_type") != "code") {
      return Fail("unsupported_response_type", "only response_type=code is supported");
    }
    if (c.is_public() == false && !c.HasGrant("authorization_code")) {
      return Fail("unauthorized_client", "authorization_code is not allowed for this client");
    }
    if (!c.HasGrant("authorization_code")) {
      return Fail("unauthorized_client", "authorization_code is not allowed for this client");
    }
    const std::string* challenge = Get(params, "code_challenge");
    const std::string method = GetOr(params, "code_challenge_method");
    if (!challenge) return Fail("invalid_request", "code_challenge is required (PKCE S256)");
    if (method != "S256") return Fail("invalid_request", "code_challenge_method must be S256");
    if (challenge->size() != 43 || !IsPkceText(*challenge)) {
      return Fail("invalid_request", "malformed code_challenge");
    }
    std::string aud = GetOr(params, "aud");
    if (aud.empty()) aud = GetOr(params, "resource");
    while (!aud.empty() && aud.back() == '/') aud.pop_back();
    if (aud != o.issuer) {
      return Fail("invalid_request", "aud must be this server's FHIR base URL " + o.issuer);
    }
    Pending p;
    p.client_id = c.client_id;
    p.client_name = c.name.empty() ? c.client_id : c.name;
    p.challenge = *challenge;
    p.nonce = GetOr(params, "nonce");
    if (p.nonce.size() > 512) return Fail("invalid_request", "nonce too long");
    std::vector<std::string> asked = SplitSpaces(GetOr(params, "scope"));
    if (asked.empty()) return Fail("invalid_scope", "scope is required");
    for (const auto& s : asked) {
      // Never through a user's authorization: system scopes, resource-server rights.
      if (s.rfind("system/", 0) == 0 || s == "introspect") continue;
      if (ScopeAllowed(s, c.scope) && !Contains(p.scopes, s)) p.scopes.push_back(s);
    }
    if (p.scopes.empty()) return Fail("invalid_scope", "none of the requested scopes is allowed");
    if (const std::string* launch = Get(params, "launch")) {
      auto ctx = d.store->GetLaunch(*launch, Now());
      if (!ctx.ok() || !*ctx) return Fail("invalid_request", "unknown or expired launch");
      if (!(*ctx)->client_id.empty() && (*ctx)->client_id != c.client_id) {
        return Fail("invalid_request", "unknown or expired launch");
      }
      p.launch_id = *launch;
      p.patient = (*ctx)->patient;
      p.encounter = (*ctx)->encounter;
    }
    std::vector<std::string> purposes;
    for (const auto& code : SplitSpaces(GetOr(params, "purpose_of_use"))) {
      if (!IsPurposeCode(code)) {
        return Fail("invalid_request", "purpose_of_use must be HL7 v3 PurposeOfUse codes");
      }
      if (!Contains(purposes, code)) purposes.push_back(code);
    }
    if (purposes.size() > 4) return Fail("invalid_request", "at most 4 purpose_of_use codes");
    p.purpose = JoinSpaces(purposes);
    return p;
  }

  std::optional<Session> SessionOf(const net::HttpRequest& req, const std::string& browser) {
    auto sid = Cookie(req, "__Host-fw_session");
    if (!sid) return std::nullopt;
    const int64_t now = Now();
    std::lock_guard<std::mutex> lock(mu);
    auto it = sessions.find(Sha256B64u(*sid));
    if (it == sessions.end()) return std::nullopt;
    Session& s = it->second;
    if (s.browser != browser || s.last_seen + o.session_idle_seconds <= now ||
        s.auth_time + o.session_absolute_seconds <= now) {
      sessions.erase(it);  // automatic logoff
      return std::nullopt;
    }
    s.last_seen = now;
    return s;
  }

  static bool NeedsPatient(const std::vector<std::string>& scopes) {
    for (const auto& s : scopes) {
      if (s.rfind("patient/", 0) == 0 || s == "launch/patient") return true;
    }
    return false;
  }

  std::vector<HiddenField> Hidden(const Pending& p) const {
    return {{"request", p.id}, {"csrf", Csrf(p.browser, p.id)}};
  }

  net::HttpResponse ShowLogin(const Pending& p, const std::string& username,
                              const std::string& error, int status = 200) const {
    return Html(status,
                RenderLoginPage({"/authorize/login", Hidden(p), p.client_name, username, error}));
  }

  net::HttpResponse ShowConsent(const Pending& p, const std::string& error) {
    oauth::ConsentPage page;
    page.action = "/authorize/consent";
    page.hidden = Hidden(p);
    page.client_name = p.client_name;
    page.user_display = p.username;
    page.patient_display = p.patient;
    page.ask_patient =
        p.patient.empty() && NeedsPatient(p.scopes) && p.fhir_user.rfind("Practitioner/", 0) == 0;
    for (const auto& s : p.scopes) {
      ScopeChoice ch;
      ch.scope = s;
      ch.description = DescribeScope(s);
      ch.checked = true;
      ch.required = s == "openid" || s == "launch" || s.rfind("launch/", 0) == 0;
      page.scopes.push_back(std::move(ch));
    }
    return Html(200, RenderConsentPage(page), p.redirect_uri);
  }

  // The pending request a form posts to, checked against the browser cookie
  // and the CSRF token.
  std::variant<Pending, net::HttpResponse> FormPending(const net::HttpRequest& req,
                                                       const Params& form) {
    const std::string id = GetOr(form, "request");
    const std::string csrf = GetOr(form, "csrf");
    const std::string browser = Cookie(req, "__Host-fw_browser").value_or("");
    std::lock_guard<std::mutex> lock(mu);
    auto it = pending.find(id);
    if (id.empty() || it == pending.end() || it->second.expires <= Now()) {
      return ErrorPageResponse(400, "Sign-in expired",
                               "This sign-in took too long or was already completed. Return to "
                               "the application and start again.");
    }
    if (browser.empty() || it->second.browser != browser ||
        !crypto::ConstantTimeEquals(csrf, Csrf(browser, id))) {
      return ErrorPageResponse(403, "Request refused",
                               "The form did not come from this browser's sign-in page.");
    }
    return it->second;
  }

  void SavePending(const Pending& p) {
    std::lock_guard<std::mutex> lock(mu);
    pending[p.id] = p;
  }

  absl::StatusOr<Params> FormOf(const net::HttpRequest& req) const {
    if (req.method != "POST") return Error(ErrorCode::kMethodNotAllowed, "use POST");
    auto ct = req.header("Content-Type").value_or("");
    if (ct.substr(0, 33) != "application/x-www-form-urlencoded") {
      return Error(ErrorCode::kUnsupportedMediaType, "form encoding expected");
    }
    return ParseForm(req.body);
  }

  net::HttpResponse Login(const net::HttpRequest& req) {
    auto form = FormOf(req);
    if (!form.ok()) return ErrorPageResponse(400, "Invalid request", DetailOf(form.status()));
    auto pend = FormPending(req, *form);
    if (auto* r = std::get_if<net::HttpResponse>(&pend)) return std::move(*r);
    Pending p = std::get<Pending>(std::move(pend));
    const std::string username = GetOr(*form, "username");
    const std::string password = GetOr(*form, "password");
    const int64_t now = Now();
    const std::string generic = "The username or password is not correct.";
    if (AddressThrottled(req.remote_ip)) {
      Audit(req, "login", "denied", 429, p.client_id, AuditName(username), "address_throttled");
      net::HttpResponse r = ShowLogin(p, username.substr(0, 128),
                                      "Too many failed sign-ins from this network. Wait a few "
                                      "minutes and try again.",
                                      429);
      r.SetHeader("Retry-After", std::to_string(kAddressWindowSeconds));
      return r;
    }
    if (username.empty() || username.size() > 128 || password.size() > 1024) {
      return ShowLogin(p, username.substr(0, 128), generic, 401);
    }
    auto user = d.store->GetUser(username);
    if (!user.ok()) return ErrorPageResponse(500, "Server error", "Please try again later.");
    if (!*user) {
      AddressFailed(req.remote_ip);
      crypto::VerifyAgainstDummy(password, o.argon2);
      Audit(req, "login", "denied", 401, p.client_id, AuditName(username), "unknown_user");
      return ShowLogin(p, username, generic, 401);
    }
    const User& u = **user;
    if (u.disabled) {
      AddressFailed(req.remote_ip);
      crypto::VerifyAgainstDummy(password, o.argon2);
      Audit(req, "login", "denied", 401, p.client_id, username, "user_disabled");
      return ShowLogin(p, username, generic, 401);
    }
    // A locked account looks like a wrong password (no account oracle); the
    // audit trail and `users list` say it is locked.
    if (u.locked_until > now) {
      crypto::VerifyAgainstDummy(password, o.argon2);
      Audit(req, "login", "denied", 401, p.client_id, username, "account_locked");
      return ShowLogin(p, username, generic, 401);
    }
    // The attempt is counted before the password is checked, so concurrent
    // guesses cannot outrun the lockout; a success resets the count.
    AddressFailed(req.remote_ip);
    auto attempts =
        d.store->RecordLoginFailure(username, now, o.max_login_failures, o.lockout_seconds);
    if (!attempts.ok()) return ErrorPageResponse(500, "Server error", "Please try again later.");
    if (*attempts > o.max_login_failures) {
      crypto::VerifyAgainstDummy(password, o.argon2);
      Audit(req, "login", "denied", 401, p.client_id, username, "account_locked");
      return ShowLogin(p, username, generic, 401);
    }
    if (!crypto::VerifyPassword(password, u.password_hash)) {
      bool locked = *attempts >= o.max_login_failures;
      Audit(req, "login", "denied", 401, p.client_id, username,
            locked ? "bad_password:locked" : "bad_password");
      return ShowLogin(p, username, generic, 401);
    }
    AddressSucceeded(req.remote_ip);
    if (crypto::NeedsRehash(u.password_hash, o.argon2)) {
      if (auto h = crypto::HashPassword(password, o.argon2); h.ok()) {
        (void)d.store->SetPassword(username, *h, /*credential_change=*/false);
      }
    }
    p.username = username;
    p.fhir_user = u.fhir_user;
    p.credential_version = u.credential_version;
    if (!u.totp_secret_wrapped.empty()) {
      (void)d.store->UndoLoginAttempt(username, o.max_login_failures);
      SavePending(p);
      Audit(req, "login-password", "success", 200, p.client_id, username, "");
      return Html(200, RenderTotpPage({"/authorize/totp", Hidden(p), ""}));
    }
    (void)d.store->RecordLoginSuccess(username);
    return CompleteLogin(req, p, now);
  }

  net::HttpResponse CompleteLogin(const net::HttpRequest& req, Pending& p, int64_t now) {
    p.authenticated = true;
    SavePending(p);
    std::string sid = NewSecret();
    {
      std::lock_guard<std::mutex> lock(mu);
      // One session per browser: a new sign-in replaces the old one.
      for (auto it = sessions.begin(); it != sessions.end();) {
        it = it->second.browser == p.browser ? sessions.erase(it) : std::next(it);
      }
      sessions[Sha256B64u(sid)] =
          Session{p.username, p.browser, now, now, p.credential_version, Sha256B64u(sid)};
    }
    Audit(req, "login", "success", 200, p.client_id, p.username, "");
    net::HttpResponse r = ShowConsent(p, "");
    SetCookie(r, "__Host-fw_session", sid, o.session_absolute_seconds);
    return r;
  }

  net::HttpResponse Totp(const net::HttpRequest& req) {
    auto form = FormOf(req);
    if (!form.ok()) return ErrorPageResponse(400, "Invalid request", DetailOf(form.status()));
    auto pend = FormPending(req, *form);
    if (auto* r = std::get_if<net::HttpResponse>(&pend)) return std::move(*r);
    Pending p = std::get<Pending>(std::move(pend));
    if (p.username.empty()) {
      return ErrorPageResponse(400, "Sign in first", "Enter your password before the code.");
    }
    const int64_t now = Now();
    auto user = d.store->GetUser(p.username);
    if (!user.ok() || !*user || (*user)->disabled || (*user)->totp_secret_wrapped.empty()) {
      return ErrorPageResponse(403, "Sign-in refused", "This account cannot sign in.");
    }
    const User& u = **user;
    const std::string wrong = "The code is not correct or was already used.";
    if (AddressThrottled(req.remote_ip)) {
      Audit(req, "login-totp", "denied", 429, p.client_id, p.username, "address_throttled");
      return Html(429, RenderTotpPage({"/authorize/totp", Hidden(p), wrong}));
    }
    // Locked looks like a wrong code (as on the password page).
    if (u.locked_until > now || u.credential_version != p.credential_version) {
      Audit(req, "login-totp", "denied", 401, p.client_id, p.username, "account_locked");
      return Html(401, RenderTotpPage({"/authorize/totp", Hidden(p), wrong}));
    }
    auto seed = d.kek->Unwrap(u.totp_secret_wrapped, "fhirward-totp-v1:" + u.username);
    if (!seed.ok()) return ErrorPageResponse(500, "Server error", "Please try again later.");
    auto step = crypto::VerifyTotp(seed->UnsafeView(), GetOr(*form, "totp"), now, u.totp_last_step);
    bool ok = step.has_value();
    if (ok) {
      auto fresh = d.store->UseTotpStep(p.username, *step);
      ok = fresh.ok() && *fresh;
    }
    if (!ok) {
      AddressFailed(req.remote_ip);
      (void)d.store->RecordLoginFailure(p.username, now, o.max_login_failures, o.lockout_seconds);
      Audit(req, "login-totp", "denied", 401, p.client_id, p.username, "bad_totp");
      return Html(401, RenderTotpPage({"/authorize/totp", Hidden(p), wrong}));
    }
    (void)d.store->RecordLoginSuccess(p.username);
    return CompleteLogin(req, p, now);
  }

  net::HttpResponse Consent(const net::HttpRequest& req) {
    auto form = FormOf(req);
    if (!form.ok()) return ErrorPageResponse(400, "Invalid request", DetailOf(form.status()));
    auto pend = FormPending(req, *form);
    if (auto* r = std::get_if<net::HttpResponse>(&pend)) return std::move(*r);
    Pending p = std::get<Pending>(std::move(pend));
    auto session = SessionOf(req, p.browser);
    if (!p.authenticated || !session || session->username != p.username) {
      return ShowLogin(p, "", "Your session ended. Sign in again.", 401);
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      pending.erase(p.id);  // one decision per request
    }
    if (GetOr(*form, "decision") != "allow") {
      Audit(req, "consent", "denied", 302, p.client_id, p.username, "access_denied");
      return RedirectError(p.redirect_uri, p.state, "access_denied", "the user declined");
    }
    std::vector<std::string> granted;
    for (const auto& [k, v] : *form) {
      if (k == "scope" && Contains(p.scopes, v) && !Contains(granted, v)) granted.push_back(v);
    }
    for (const auto& s : p.scopes) {  // required ones cannot be unticked
      if ((s == "openid" || s == "launch" || s.rfind("launch/", 0) == 0) && !Contains(granted, s)) {
        granted.push_back(s);
      }
    }
    auto user = d.store->GetUser(p.username);
    if (!user.ok() || !*user || (*user)->disabled ||
        (*user)->credential_version != session->credential_version) {
      return ErrorPageResponse(403, "Sign-in refused", "This account cannot sign in.");
    }
    if (!p.launch_id.empty()) {
      // An EHR launch context is for a practitioner, or for the patient
      // themself; checked before it is used up, which it is once.
      const std::string& fu = (*user)->fhir_user;
      auto peek = d.store->GetLaunch(p.launch_id, Now());
      if (peek.ok() && *peek) {
        bool allowed = fu.rfind("Practitioner/", 0) == 0 ||
                       (fu.rfind("Patient/", 0) == 0 && fu.substr(8) == (*peek)->patient);
        if (!allowed) {
          Audit(req, "consent", "denied", 302, p.client_id, p.username, "launch_patient_mismatch");
          return RedirectError(p.redirect_uri, p.state, "invalid_request",
                               "this user cannot take that launch context");
        }
      }
      auto launch = d.store->ConsumeLaunch(p.launch_id, Now());
      if (!launch.ok() || !*launch) {
        Audit(req, "consent", "denied", 302, p.client_id, p.username, "launch_used_or_expired");
        return RedirectError(p.redirect_uri, p.state, "invalid_request",
                             "the launch was already used or has expired");
      }
    }
    GrantData g;
    g.client_id = p.client_id;
    g.username = p.username;
    g.fhir_user = (*user)->fhir_user;
    g.patient = p.patient;
    g.encounter = p.encounter;
    g.nonce = p.nonce;
    g.purpose_of_use = p.purpose;
    g.auth_time = session->auth_time;
    g.credential_version = session->credential_version;
    bool patient_scope = false;
    for (const auto& s : granted) {
      patient_scope = patient_scope || s.rfind("patient/", 0) == 0 || s == "launch/patient";
    }
    if (patient_scope && g.patient.empty() && g.fhir_user.rfind("Patient/", 0) == 0) {
      g.patient = g.fhir_user.substr(8);
    }
    // A practitioner's standalone launch: the patient chosen on the consent
    // page. (Whether this user may see that patient is the policy engine's
    // decision at every request; the choice itself grants nothing more.)
    if (patient_scope && g.patient.empty() && g.fhir_user.rfind("Practitioner/", 0) == 0) {
      g.patient = GetOr(*form, "patient");
    }
    if (patient_scope && (g.patient.empty() || !IsFhirId(g.patient))) {
      Audit(req, "consent", "denied", 302, p.client_id, p.username, "no_patient_context");
      return RedirectError(p.redirect_uri, p.state, "invalid_request",
                           "patient scopes need a patient: launch from the EHR with a patient "
                           "context or sign in as a patient");
    }
    if (!Contains(granted, "launch/encounter") && !Contains(granted, "launch")) g.encounter.clear();
    g.scope = JoinSpaces(granted);
    // online_access: refresh tokens last as long as this login session.
    if (Contains(granted, "online_access") && !Contains(granted, "offline_access")) {
      g.session = session->id_hash;
    }
    std::string code = NewSecret();
    CodeRecord rec{g, p.redirect_uri, p.challenge, Now() + o.code_seconds};
    if (auto s = d.store->AddCode(Sha256B64u(code), rec); !s.ok()) {
      return ErrorPageResponse(500, "Server error", "Please try again later.");
    }
    Audit(req, "consent", "success", 302, p.client_id, p.username, "", g.scope, g.patient);
    Params out{{"code", code}};
    if (!p.state.empty()) out.emplace_back("state", p.state);
    return Redirect(p.redirect_uri, std::move(out));
  }

  // --- PAR, revocation, introspection, userinfo ----------------------------------

  Result ParResult(const net::HttpRequest& req) {
    if (auto f = CheckFormRequest(req)) return *f;
    auto form = ParseForm(req.body);
    if (!form.ok()) return Fail("invalid_request", DetailOf(form.status()));
    if (auto rep = Repeated(*form)) return Fail("invalid_request", "repeated parameter " + *rep);
    if (Get(*form, "request_uri"))
      return Fail("invalid_request", "request_uri is not allowed here");
    auto caller = AuthenticateClient(req, *form, /*allow_public=*/true);
    if (auto* f = std::get_if<OAuthFailure>(&caller)) return *f;
    const Client& c = std::get<Caller>(caller).client;
    const std::string redirect_uri = GetOr(*form, "redirect_uri");
    bool registered = false;
    for (const auto& r : c.redirect_uris)
      registered = registered || RedirectMatches(r, redirect_uri);
    if (!registered) return Fail("invalid_request", "redirect_uri is not registered");
    auto v = ValidateAuthorizeParams(c, *form);
    if (auto* f = std::get_if<OAuthFailure>(&v)) return *f;
    Params kept;
    for (const auto& [k, val] : *form) {
      for (const char* known : {"response_type", "client_id", "redirect_uri", "scope", "state",
                                "code_challenge", "code_challenge_method", "aud", "resource",
                                "nonce", "launch", "prompt", "purpose_of_use"}) {
        if (k == known) kept.emplace_back(k, val);
      }
    }
    if (GetOr(*form, "state").size() > 1024) return Fail("invalid_request", "state too long");
    std::string uri = std::string(kRequestUriPrefix) + NewSecret();
    {
      std::lock_guard<std::mutex> lock(mu);
      AdmitParLocked(c.client_id);
      par[uri] = ParRecord{c.client_id, std::move(kept), Now() + o.par_seconds};
    }
    Value body = Value::MakeObject();
    body.Set("request_uri", Str(uri));
    body.Set("expires_in", Value::Int(o.par_seconds));
    return Json(201, body);
  }

  // Our own access token, signature checked (expiry too unless `allow_expired`).
  std::optional<jose::VerifiedJwt> OwnAccessToken(std::string_view token) const {
    jose::JwtExpectations e;
    e.issuer = o.issuer;
    e.audience = {o.issuer};
    e.typ = "at+jwt";
    e.now = Now();
    e.leeway_seconds = 0;
    e.require_exp = true;
    jose::KeySet keys = d.keys->Published(Now());
    auto jwt = jose::VerifyJwt(token, keys, e);
    if (!jwt.ok()) return std::nullopt;
    return std::move(*jwt);
  }

  Result RevokeResult(const net::HttpRequest& req) {
    if (auto f = CheckFormRequest(req)) return *f;
    auto form = ParseForm(req.body);
    if (!form.ok()) return Fail("invalid_request", DetailOf(form.status()));
    if (auto rep = Repeated(*form)) return Fail("invalid_request", "repeated parameter " + *rep);
    auto caller = AuthenticateClient(req, *form, /*allow_public=*/true);
    if (auto* f = std::get_if<OAuthFailure>(&caller)) return *f;
    const Client& c = std::get<Caller>(caller).client;
    const std::string* token = Get(*form, "token");
    if (!token || token->empty()) return Fail("invalid_request", "token is required");
    const int64_t now = Now();
    net::HttpResponse ok;
    ok.status = 200;
    ok.SetHeader("Cache-Control", "no-store");
    // A refresh token: revoke its whole grant (RFC 7009 §2.1).
    auto rec = d.store->GetRefresh(Sha256B64u(*token));
    if (rec.ok() && *rec) {
      auto grant = d.store->GetGrant((*rec)->grant_id);
      if (grant.ok() && *grant && (*grant)->data.client_id == c.client_id) {
        (void)d.store->RevokeGrant((*grant)->id, now);
        SyncRevocations();
        Audit(req, "token-revoke", "success", 200, c.client_id, (*grant)->data.username, "");
      }
      return ok;
    }
    if (auto jwt = OwnAccessToken(*token)) {
      const Value& claims = jwt->claims;
      if (claims.GetString("client_id").value_or("") == c.client_id) {
        std::string jti(claims.GetString("jti").value_or(""));
        int64_t exp = claims.Find("exp")->as_int64().value_or(now);
        if (!jti.empty()) {
          if (d.revocations) d.revocations->Add(jti, exp);
          (void)d.store->RevokeAccessToken(jti, exp, now);
          Audit(req, "token-revoke", "success", 200, c.client_id,
                std::string(claims.GetString("sub").value_or("")), "");
        }
      }
    }
    return ok;  // unknown, foreign and invalid tokens alike (RFC 7009 §2.2)
  }

  Result IntrospectResult(const net::HttpRequest& req) {
    if (auto f = CheckFormRequest(req)) return *f;
    auto form = ParseForm(req.body);
    if (!form.ok()) return Fail("invalid_request", DetailOf(form.status()));
    if (auto rep = Repeated(*form)) return Fail("invalid_request", "repeated parameter " + *rep);
    auto caller = AuthenticateClient(req, *form, /*allow_public=*/false);
    if (auto* f = std::get_if<OAuthFailure>(&caller)) return *f;
    const Client& who = std::get<Caller>(caller).client;
    const std::string* token = Get(*form, "token");
    if (!token) return Fail("invalid_request", "token is required");
    // A client sees its own tokens; a resource server registered with the
    // `introspect` scope sees every access token (never others' refresh tokens).
    const bool resource_server = Contains(SplitSpaces(who.scope), "introspect");
    Value inactive = Value::MakeObject();
    inactive.Set("active", Value::Bool(false));
    const int64_t now = Now();
    auto jwt = OwnAccessToken(*token);
    if (jwt) {
      const Value& c = jwt->claims;
      std::string jti(c.GetString("jti").value_or(""));
      if (jti.empty() || (d.revocations && d.revocations->IsRevoked(jti))) {
        return Json(200, inactive);
      }
      if (!resource_server && c.GetString("client_id").value_or("") != who.client_id) {
        return Json(200, inactive);
      }
      Value out = Value::MakeObject();
      out.Set("active", Value::Bool(true));
      for (const char* k : {"scope", "client_id", "sub", "iss", "aud", "exp", "iat", "jti",
                            "patient", "encounter", "fhirUser", "cnf", "purpose_of_use", "roles"}) {
        if (const Value* v = c.Find(k)) out.Set(k, *v);
      }
      out.Set("token_type", Str(c.Find("cnf") && c.Find("cnf")->Find("jkt") ? "DPoP" : "Bearer"));
      return Json(200, out);
    }
    auto rec = d.store->GetRefresh(Sha256B64u(*token));
    if (rec.ok() && *rec && !(*rec)->used && (*rec)->idle_expires > now) {
      auto grant = d.store->GetGrant((*rec)->grant_id);
      if (grant.ok() && *grant && !(*grant)->revoked && (*grant)->absolute_expires > now &&
          (*grant)->data.client_id == who.client_id) {
        const GrantRecord& g = **grant;
        Value out = Value::MakeObject();
        out.Set("active", Value::Bool(true));
        out.Set("scope", Str(g.data.scope));
        out.Set("client_id", Str(g.data.client_id));
        out.Set("sub", Str(g.data.username));
        out.Set("iss", Str(o.issuer));
        out.Set("exp", Value::Int(std::min((*rec)->idle_expires, g.absolute_expires)));
        out.Set("iat", Value::Int(g.created));
        out.Set("token_type", Str("refresh_token"));
        if (!g.data.patient.empty()) out.Set("patient", Str(g.data.patient));
        if (!g.data.fhir_user.empty()) out.Set("fhirUser", Str(g.data.fhir_user));
        return Json(200, out);
      }
    }
    return Json(200, inactive);
  }

  net::HttpResponse Userinfo(const net::HttpRequest& req) {
    auto unauthorized = [](std::string error) {
      net::HttpResponse r;
      r.status = 401;
      r.SetHeader("WWW-Authenticate", "Bearer realm=\"fhirward\", error=\"" + error + "\"");
      r.SetHeader("Cache-Control", "no-store");
      return r;
    };
    if (req.method != "GET" && req.method != "POST") return unauthorized("invalid_request");
    std::string_view auth = req.header("Authorization").value_or("");
    std::string_view token;
    bool dpop_scheme = false;
    if (auth.size() > 7 && strncasecmp(auth.data(), "bearer ", 7) == 0) {
      token = auth.substr(7);
    } else if (auth.size() > 5 && strncasecmp(auth.data(), "dpop ", 5) == 0) {
      token = auth.substr(5);
      dpop_scheme = true;
    } else {
      return unauthorized("invalid_request");
    }
    auto jwt = OwnAccessToken(token);
    if (!jwt) return unauthorized("invalid_token");
    const Value& c = jwt->claims;
    if (d.revocations && d.revocations->IsRevoked(c.GetString("jti").value_or(""))) {
      return unauthorized("invalid_token");
    }
    const Value* cnf = c.Find("cnf");
    if (cnf && cnf->GetString("jkt")) {
      auto proof = req.header("DPoP");
      if (!dpop_scheme || !proof) return unauthorized("invalid_token");
      jose::DpopExpectations e;
      e.method = req.method;
      e.url = Url("/userinfo");
      e.now = Now();
      e.access_token = std::string(token);
      e.jkt = std::string(*cnf->GetString("jkt"));
      e.replay = d.dpop_replay;
      if (!jose::VerifyDpopProof(*proof, e).ok()) return unauthorized("invalid_token");
    } else if (dpop_scheme) {
      return unauthorized("invalid_token");
    }
    if (cnf && cnf->GetString("x5t#S256") && *cnf->GetString("x5t#S256") != X5t(req)) {
      return unauthorized("invalid_token");
    }
    if (!Contains(SplitSpaces(c.GetString("scope").value_or("")), "openid")) {
      net::HttpResponse r;
      r.status = 403;
      r.SetHeader("WWW-Authenticate", "Bearer error=\"insufficient_scope\", scope=\"openid\"");
      return r;
    }
    Value out = Value::MakeObject();
    out.Set("sub", Str(std::string(c.GetString("sub").value_or(""))));
    if (auto fu = c.GetString("fhirUser"))
      out.Set("fhirUser", Str(o.issuer + "/" + std::string(*fu)));
    return Json(200, out);
  }

  // --- discovery ------------------------------------------------------------------

  Value Metadata(bool smart) const {
    Value m = Value::MakeObject();
    m.Set("issuer", Str(o.issuer));
    m.Set("jwks_uri", Str(Url("/jwks")));
    m.Set("authorization_endpoint", Str(Url("/authorize")));
    m.Set("token_endpoint", Str(Url("/token")));
    m.Set("revocation_endpoint", Str(Url("/revoke")));
    m.Set("introspection_endpoint", Str(Url("/introspect")));
    m.Set("pushed_authorization_request_endpoint", Str(Url("/par")));
    m.Set("userinfo_endpoint", Str(Url("/userinfo")));
    m.Set("grant_types_supported",
          StrArray({"authorization_code", "refresh_token", "client_credentials"}));
    m.Set("response_types_supported", StrArray({"code"}));
    m.Set("response_modes_supported", StrArray({"query"}));
    m.Set("code_challenge_methods_supported", StrArray({"S256"}));
    m.Set("token_endpoint_auth_methods_supported",
          StrArray({"private_key_jwt", "client_secret_basic", "tls_client_auth", "none"}));
    m.Set("token_endpoint_auth_signing_alg_values_supported",
          StrArray({"RS384", "ES384", "RS256", "ES256", "PS256"}));
    m.Set("revocation_endpoint_auth_methods_supported",
          StrArray({"private_key_jwt", "client_secret_basic", "tls_client_auth", "none"}));
    m.Set("introspection_endpoint_auth_methods_supported",
          StrArray({"private_key_jwt", "client_secret_basic", "tls_client_auth"}));
    m.Set("scopes_supported",
          StrArray({"openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                    "offline_access", "online_access", "patient/*.rs", "patient/*.cruds",
                    "user/*.rs", "user/*.cruds", "system/*.rs", "system/*.cruds", "patient/*.read",
                    "user/*.read", "system/*.read"}));
    m.Set("subject_types_supported", StrArray({"public"}));
    m.Set("id_token_signing_alg_values_supported", StrArray({"RS256", "ES256"}));
    m.Set("claims_supported",
          StrArray({"iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"}));
    m.Set("authorization_response_iss_parameter_supported", Value::Bool(true));
    m.Set("dpop_signing_alg_values_supported",
          StrArray({"ES256", "ES384", "RS256", "PS256", "EdDSA"}));
    m.Set("tls_client_certificate_bound_access_tokens", Value::Bool(true));
    m.Set("require_pushed_authorization_requests", Value::Bool(false));
    if (smart) {
      m.Set("capabilities",
            StrArray({"launch-standalone", "launch-ehr", "authorize-post", "client-public",
                      "client-confidential-symmetric", "client-confidential-asymmetric",
                      "context-passthrough-banner", "context-ehr-patient", "context-ehr-encounter",
                      "context-standalone-patient", "permission-offline", "permission-online",
                      "permission-patient", "permission-user", "permission-v1", "permission-v2",
                      "sso-openid-connect"}));
    }
    return m;
  }

  static net::HttpResponse PublicJson(const Value& v) {
    net::HttpResponse r;
    r.SetHeader("Content-Type", "application/json");
    r.SetHeader("Access-Control-Allow-Origin", "*");
    r.SetHeader("Cache-Control", "max-age=300");
    r.body = json::Write(v);
    return r;
  }

  net::HttpResponse Dispatch(const net::HttpRequest& req) {
    const std::string path = PathOf(req.target);
    const bool get = req.method == "GET" || req.method == "HEAD";
    auto only_get = [&](net::HttpResponse r) {
      if (get) return r;
      net::HttpResponse m = Failure(OAuthFailure{405, "invalid_request", "use GET", false, {}});
      m.SetHeader("Allow", "GET");
      return m;
    };
    auto result = [](Result r) {
      if (auto* f = std::get_if<OAuthFailure>(&r)) return Failure(*f);
      return std::get<net::HttpResponse>(std::move(r));
    };
    if (path == "/.well-known/smart-configuration") return only_get(PublicJson(Metadata(true)));
    if (path == "/.well-known/openid-configuration" ||
        path == "/.well-known/oauth-authorization-server") {
      return only_get(PublicJson(Metadata(false)));
    }
    if (path == "/jwks") return only_get(PublicJson(d.keys->Published(Now()).ToJwks()));
    if (path == "/authorize") return Authorize(req);
    if (path == "/authorize/login") return Login(req);
    if (path == "/authorize/totp") return Totp(req);
    if (path == "/authorize/consent") return Consent(req);
    if (path == "/token") return Token(req);
    if (path == "/par") return result(ParResult(req));
    if (path == "/revoke") return result(RevokeResult(req));
    if (path == "/introspect") return result(IntrospectResult(req));
    if (path == "/userinfo") return Userinfo(req);
    return Failure(OAuthFailure{404, "invalid_request", "not found", false, {}});
  }

  void SweepLocked() {
    const int64_t now = Now();
    for (auto it = pending.begin(); it != pending.end();) {
      it = it->second.expires <= now ? pending.erase(it) : std::next(it);
    }
    for (auto it = par.begin(); it != par.end();) {
      it = it->second.expires <= now ? par.erase(it) : std::next(it);
    }
    for (auto it = address_failures.begin(); it != address_failures.end();) {
      it = it->second.window_start + kAddressWindowSeconds <= now ? address_failures.erase(it)
                                                                  : std::next(it);
    }
    for (auto it = sessions.begin(); it != sessions.end();) {
      const Session& s = it->second;
      bool dead = s.last_seen + o.session_idle_seconds <= now ||
                  s.auth_time + o.session_absolute_seconds <= now;
      it = dead ? sessions.erase(it) : std::next(it);
    }
  }
};

AuthorizationServer::AuthorizationServer(AuthServerOptions options, AuthServerDeps deps)
    : impl_(std::make_unique<Impl>()) {
  while (!options.issuer.empty() && options.issuer.back() == '/') options.issuer.pop_back();
  options.access_token_seconds = std::clamp<int64_t>(options.access_token_seconds, 60, 3600);
  options.backend_token_seconds = std::clamp<int64_t>(options.backend_token_seconds, 30, 300);
  options.code_seconds = std::clamp<int64_t>(options.code_seconds, 10, 60);
  impl_->o = std::move(options);
  impl_->d = deps;
}

AuthorizationServer::~AuthorizationServer() = default;

net::HttpResponse AuthorizationServer::Handle(const net::HttpRequest& request,
                                              std::vector<audit::AuditRecord>* records) {
  // The records of this request go to the caller (Dispatch runs on this thread).
  struct Collect {
    explicit Collect(std::vector<audit::AuditRecord>* v) : prev(tl_records) { tl_records = v; }
    ~Collect() { tl_records = prev; }
    std::vector<audit::AuditRecord>* prev;
  } collect(records);
  net::HttpResponse r = impl_->Dispatch(request);
  r.SetHeader("X-Content-Type-Options", "nosniff");
  return r;
}

void AuthorizationServer::Sweep() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->SweepLocked();
}

std::string AuditNameForUnknownUser(const SecretBytes& session_key, const std::string& typed) {
  return "unknown:" +
         HexEncode(crypto::HmacSha256(session_key.UnsafeView(), "audit-username\x1f" + typed))
             .substr(0, 16);
}

}  // namespace fhirward::oauth
