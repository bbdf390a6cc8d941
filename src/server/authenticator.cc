#include "server/authenticator.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "json/value.h"

namespace fhirward::server {
namespace {

constexpr size_t kMaxTokenBytes = 16 * 1024;

bool IEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](unsigned char x, unsigned char y) {
           return std::tolower(x) == std::tolower(y);
         });
}

// The `iss` claim of a token that has not been verified yet: only used to
// choose which keys verify it.
std::optional<std::string> PeekIssuer(std::string_view token) {
  size_t d1 = token.find('.');
  if (d1 == std::string_view::npos) return std::nullopt;
  size_t d2 = token.find('.', d1 + 1);
  if (d2 == std::string_view::npos) return std::nullopt;
  auto text = Base64UrlDecode(token.substr(d1 + 1, d2 - d1 - 1));
  if (!text) return std::nullopt;
  json::Limits limits;
  limits.max_depth = 16;
  limits.max_total_bytes = kMaxTokenBytes;
  auto claims = json::Parse(*text, limits);
  if (!claims.ok() || !claims->is_object()) return std::nullopt;
  auto iss = claims->GetString("iss");
  if (!iss) return std::nullopt;
  return std::string(*iss);
}

// The credential of an Authorization value with `scheme` (lower case, with
// the trailing space; compared case-insensitively), or nullopt.
std::optional<std::string_view> SchemeToken(std::string_view authorization,
                                            std::string_view kScheme) {
  if (authorization.size() <= kScheme.size() ||
      !IEquals(authorization.substr(0, kScheme.size()), kScheme)) {
    return std::nullopt;
  }
  std::string_view token = authorization.substr(kScheme.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  if (token.empty()) return std::nullopt;
  return token;
}

// RFC 6750 §2.1 ("Bearer" is case-insensitive).
std::optional<std::string_view> BearerToken(std::string_view authorization) {
  return SchemeToken(authorization, "bearer ");
}

std::string StringClaim(const json::Value& claims, std::string_view name) {
  auto v = claims.GetString(name);
  return v ? std::string(*v) : std::string();
}

}  // namespace

Authenticator::Authenticator(AuthenticatorOptions options, const Clock* clock)
    : options_(std::move(options)), clock_(clock) {
  for (auto& t : options_.issuers) {
    keys_[t.issuer] = std::make_shared<const jose::KeySet>(std::move(t.keys));
    t.keys = jose::KeySet();
  }
}

bool Authenticator::IsCached(std::string_view authorization) const {
  std::optional<std::string_view> token = BearerToken(authorization);
  if (!token) token = SchemeToken(authorization, "dpop ");
  if (!token || token->size() > kMaxTokenBytes) return false;
  const std::string digest = crypto::Sha256(*token);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cache_.find(digest);
  return it != cache_.end() && it->second.exp > clock_->NowSeconds();
}

void Authenticator::SetKeys(const std::string& issuer, jose::KeySet keys) {
  std::lock_guard<std::mutex> lock(keys_mu_);
  auto it = keys_.find(issuer);
  if (it != keys_.end()) it->second = std::make_shared<const jose::KeySet>(std::move(keys));
}

void Authenticator::OnUnknownKid(std::function<void(const std::string&)> callback) {
  std::lock_guard<std::mutex> lock(keys_mu_);
  on_unknown_kid_ = std::move(callback);
}

absl::StatusOr<std::shared_ptr<const policy::Principal>> Authenticator::Authenticate(
    std::string_view authorization) const {
  AuthInput in;
  in.authorization = authorization;
  return Authenticate(in);
}

absl::StatusOr<Authenticator::CacheEntry> Authenticator::Lookup(std::string_view token) const {
  if (token.size() > kMaxTokenBytes) return Error(ErrorCode::kInvalidToken, "too_large");
  const int64_t now = clock_->NowSeconds();
  const std::string digest = crypto::Sha256(token);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(digest);
    if (it != cache_.end()) {
      if (it->second.exp > now - options_.leeway_seconds) return it->second;
      cache_.erase(it);
      return Error(ErrorCode::kInvalidToken, "expired");
    }
  }
  auto entry = Verify(token);
  if (!entry.ok()) return entry.status();
  std::lock_guard<std::mutex> lock(mu_);
  if (cache_.size() >= options_.cache_entries) {
    // Drop expired entries; if the cache is still full, start over.
    for (auto it = cache_.begin(); it != cache_.end();) {
      it = it->second.exp <= now ? cache_.erase(it) : std::next(it);
    }
    if (cache_.size() >= options_.cache_entries) cache_.clear();
  }
  cache_.emplace(digest, *entry);
  return *entry;
}

absl::StatusOr<std::shared_ptr<const policy::Principal>> Authenticator::Authenticate(
    const AuthInput& in) const {
  std::optional<std::string_view> bearer = BearerToken(in.authorization);
  std::optional<std::string_view> dpop_token = SchemeToken(in.authorization, "dpop ");
  if (!bearer && !dpop_token) return Error(ErrorCode::kMissingToken);
  std::string_view token = bearer ? *bearer : *dpop_token;
  auto entry = Lookup(token);
  if (!entry.ok()) return entry.status();
  // Per request, cached or not.
  if (entry->own && options_.revocations && options_.revocations->IsRevoked(entry->jti)) {
    return Error(ErrorCode::kInvalidToken, "revoked");
  }
  if (!entry->jkt.empty()) {
    if (!dpop_token) return Error(ErrorCode::kInvalidToken, "dpop_required");
    if (in.dpop.size() != 1) return Error(ErrorCode::kInvalidToken, "dpop_proof:missing");
    if (!options_.dpop_replay) return Error(ErrorCode::kInvalidToken, "dpop_proof:unsupported");
    jose::DpopExpectations e;
    e.method = in.method;
    e.url = in.url;
    e.now = clock_->NowSeconds();
    e.access_token = std::string(token);
    e.jkt = entry->jkt;
    e.nonces = options_.dpop_nonces;
    e.replay = options_.dpop_replay;
    auto proof = jose::VerifyDpopProof(in.dpop[0], e);
    if (!proof.ok()) {
      std::string why = DetailOf(proof.status());
      if (why == "use_dpop_nonce") return Error(ErrorCode::kInvalidToken, "use_dpop_nonce");
      return Error(ErrorCode::kInvalidToken, "dpop_proof:" + why);
    }
  } else if (dpop_token) {
    return Error(ErrorCode::kInvalidToken, "not_dpop_bound");
  }
  if (!entry->x5t.empty()) {
    if (in.client_cert_der.empty() ||
        !crypto::ConstantTimeEquals(Base64UrlEncode(crypto::Sha256(in.client_cert_der)),
                                    entry->x5t)) {
      return Error(ErrorCode::kInvalidToken, "certificate_mismatch");
    }
  }
  return entry->principal;
}

absl::StatusOr<Authenticator::CacheEntry> Authenticator::Verify(std::string_view token) const {
  auto iss = PeekIssuer(token);
  if (!iss) return Error(ErrorCode::kInvalidToken, "malformed");
  const IssuerTrust* trust = nullptr;
  for (const auto& t : options_.issuers) {
    if (t.issuer == *iss) {
      trust = &t;
      break;
    }
  }
  if (!trust) return Error(ErrorCode::kInvalidToken, "wrong_issuer");
  std::shared_ptr<const jose::KeySet> keys;
  std::function<void(const std::string&)> on_unknown_kid;
  {
    std::lock_guard<std::mutex> lock(keys_mu_);
    keys = keys_.at(trust->issuer);
    on_unknown_kid = on_unknown_kid_;
  }
  jose::JwtExpectations expect;
  expect.issuer = trust->issuer;
  expect.audience = trust->audiences;
  expect.typ = trust->required_typ;
  expect.now = clock_->NowSeconds();
  expect.leeway_seconds = options_.leeway_seconds;
  expect.require_exp = true;
  expect.max_lifetime_seconds = options_.max_lifetime_seconds;
  auto jwt = jose::VerifyJwt(token, *keys, expect);
  if (!jwt.ok()) {
    if (DetailOf(jwt.status()) == "unknown_kid" && on_unknown_kid) on_unknown_kid(trust->issuer);
    return jwt.status();
  }
  const json::Value& c = jwt->claims;
  CacheEntry e;
  auto principal = std::make_shared<policy::Principal>();
  policy::Principal& p = *principal;
  p.issuer = trust->issuer;
  p.subject = StringClaim(c, "sub");
  if (p.subject.empty()) return Error(ErrorCode::kInvalidToken, "missing_sub");
  p.client_id = StringClaim(c, "client_id");
  if (p.client_id.empty()) p.client_id = StringClaim(c, "azp");
  if (const json::Value* scope = c.Find("scope"); scope && scope->is_string()) {
    p.scope_text = scope->as_string();
  } else if (const json::Value* scp = c.Find("scp"); scp && scp->is_array()) {
    for (const auto& s : scp->items()) {
      if (!s.is_string()) continue;
      if (!p.scope_text.empty()) p.scope_text += ' ';
      p.scope_text += s.as_string();
    }
  }
  p.scopes = policy::ParseScopes(p.scope_text);
  p.patient = StringClaim(c, "patient");
  if (!p.patient.empty() && !std::all_of(p.patient.begin(), p.patient.end(), [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.';
      })) {
    return Error(ErrorCode::kInvalidToken, "bad_patient_claim");
  }
  p.fhir_user = StringClaim(c, "fhirUser");
  if (const json::Value* pou = c.Find("purpose_of_use")) {
    if (pou->is_string()) p.purpose_of_use.push_back(pou->as_string());
    if (pou->is_array()) {
      for (const auto& v : pou->items()) {
        if (v.is_string()) p.purpose_of_use.push_back(v.as_string());
      }
    }
  }
  // Roles: an array of names, or a space-separated string.
  if (const json::Value* roles = c.Find("roles")) {
    p.has_roles_claim = true;
    if (roles->is_string()) {
      std::string_view text = roles->as_string();
      size_t i = 0;
      while (i < text.size()) {
        size_t j = text.find(' ', i);
        if (j == std::string_view::npos) j = text.size();
        if (j > i) p.roles.emplace_back(text.substr(i, j - i));
        i = j + 1;
      }
    } else if (roles->is_array()) {
      for (const auto& v : roles->items()) {
        if (v.is_string()) p.roles.push_back(v.as_string());
      }
    } else {
      return Error(ErrorCode::kInvalidToken, "bad_roles_claim");
    }
    if (p.roles.size() > 32) return Error(ErrorCode::kInvalidToken, "bad_roles_claim");
  }
  p.break_glass_reason = StringClaim(c, "break_glass_reason");
  if (p.break_glass_reason.size() > 500 ||
      std::any_of(p.break_glass_reason.begin(), p.break_glass_reason.end(),
                  [](char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f; })) {
    return Error(ErrorCode::kInvalidToken, "bad_break_glass_reason");
  }
  // NumericDate may have a fraction (RFC 7519 §2): rounded down.
  const json::Value* exp = c.Find("exp");
  e.exp = exp ? jose::NumericDate(*exp).value_or(0) : 0;
  e.jti = StringClaim(c, "jti");
  e.own = trust->own;
  if (e.own && e.jti.empty()) return Error(ErrorCode::kInvalidToken, "missing_jti");
  if (const json::Value* cnf = c.Find("cnf")) {
    if (!cnf->is_object()) return Error(ErrorCode::kInvalidToken, "bad_cnf");
    e.jkt = StringClaim(*cnf, "jkt");
    e.x5t = StringClaim(*cnf, "x5t#S256");
    // A confirmation this server cannot check must not be ignored.
    if (e.jkt.empty() && e.x5t.empty()) return Error(ErrorCode::kInvalidToken, "unsupported_cnf");
  }
  e.principal = std::move(principal);
  return e;
}

}  // namespace fhirward::server
