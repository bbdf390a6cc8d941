// Compact JWT verification (RFC 7519 with the RFC 8725 best practices).
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>

#include "common/encoding.h"
#include "common/error.h"
#include "jose/internal/segments.h"
#include "jose/jws.h"

namespace fhirward::jose {
namespace {

constexpr size_t kMaxTokenBytes = 16 * 1024;

absl::Status Invalid(std::string_view detail) { return Error(ErrorCode::kInvalidToken, detail); }

json::Limits TokenJsonLimits() {
  json::Limits limits;
  limits.max_depth = 16;
  limits.max_string_bytes = kMaxTokenBytes;
  limits.max_array_items = 1024;
  limits.max_object_members = 256;
  limits.max_total_bytes = kMaxTokenBytes;
  return limits;
}

std::optional<json::Value> DecodeObject(std::string_view b64) {
  return internal::DecodeJsonObject(b64, TokenJsonLimits());
}

// "JWT", "at+jwt" and "application/at+jwt" compare per RFC 7515 §4.1.9.
std::string NormalizeTyp(std::string_view typ) {
  std::string out(typ);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  constexpr std::string_view kPrefix = "application/";
  if (out.rfind(kPrefix, 0) == 0) out.erase(0, kPrefix.size());
  return out;
}

bool IsNone(std::string_view alg) {
  if (alg.size() != 4) return false;
  std::string lower(alg);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return lower == "none";
}

absl::Status CheckClaims(const json::Value& claims, const JwtExpectations& expect) {
  std::optional<std::string_view> iss = claims.GetString("iss");
  if (expect.issuer.empty() || !iss.has_value() || *iss != expect.issuer) {
    return Invalid("wrong_issuer");
  }

  const json::Value* aud = claims.Find("aud");
  bool aud_ok = false;
  auto matches = [&](const json::Value& v) {
    if (!v.is_string()) return false;
    return std::find(expect.audience.begin(), expect.audience.end(), v.as_string()) !=
           expect.audience.end();
  };
  if (aud != nullptr && aud->is_string()) {
    aud_ok = matches(*aud);
  } else if (aud != nullptr && aud->is_array()) {
    for (const json::Value& a : aud->items()) aud_ok = aud_ok || matches(a);
  }
  if (!aud_ok) return Invalid("wrong_audience");

  const int64_t leeway = std::max<int64_t>(expect.leeway_seconds, 0);
  const int64_t now = expect.now;
  std::optional<int64_t> exp;
  if (const json::Value* v = claims.Find("exp"); v != nullptr) {
    exp = NumericDate(*v);
    if (!exp.has_value()) return Invalid("malformed");
  }
  if (!exp.has_value() && (expect.require_exp || expect.max_lifetime_seconds > 0)) {
    return Invalid("missing_exp");
  }
  // Written as now - leeway > exp so a huge exp cannot overflow.
  if (exp.has_value() && now - leeway > *exp) return Invalid("expired");

  std::optional<int64_t> iat;
  for (const char* name : {"nbf", "iat"}) {
    const json::Value* v = claims.Find(name);
    if (v == nullptr) continue;
    std::optional<int64_t> t = NumericDate(*v);
    if (!t.has_value()) return Invalid("malformed");
    if (*t > now + leeway) return Invalid("not_yet_valid");
    if (name[0] == 'i') iat = t;
  }

  if (expect.max_lifetime_seconds > 0) {
    int64_t start = iat.has_value() ? *iat : now;
    if (*exp - start > expect.max_lifetime_seconds) return Invalid("lifetime_too_long");
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

std::optional<json::Value> DecodeJsonObject(std::string_view b64, const json::Limits& limits) {
  std::optional<std::string> text = Base64UrlDecode(b64);
  if (!text.has_value()) return std::nullopt;
  absl::StatusOr<json::Value> value = json::Parse(*text, limits);
  if (!value.ok() || !value->is_object()) return std::nullopt;
  return std::move(*value);
}

}  // namespace internal

std::optional<int64_t> NumericDate(const json::Value& v) {
  if (!v.is_number()) return std::nullopt;
  constexpr int64_t kLimit = 1'000'000'000'000'000;  // far beyond any real date
  if (std::optional<int64_t> i = v.as_int64()) {
    if (*i > kLimit || *i < -kLimit) return std::nullopt;
    return i;
  }
  const std::string& text = v.number_text();
  double d = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), d);
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(d)) {
    return std::nullopt;
  }
  if (d > static_cast<double>(kLimit) || d < -static_cast<double>(kLimit)) return std::nullopt;
  return static_cast<int64_t>(std::floor(d));
}

absl::StatusOr<VerifiedJwt> VerifyJwt(std::string_view token, const KeySet& keys,
                                      const JwtExpectations& expect) {
  if (token.size() > kMaxTokenBytes) return Invalid("too_large");
  const size_t dot1 = token.find('.');
  const size_t dot2 = dot1 == std::string_view::npos ? dot1 : token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) {
    return Invalid("malformed");
  }
  const std::string_view header_b64 = token.substr(0, dot1);
  const std::string_view payload_b64 = token.substr(dot1 + 1, dot2 - dot1 - 1);
  const std::string_view sig_b64 = token.substr(dot2 + 1);

  std::optional<json::Value> header = DecodeObject(header_b64);
  if (!header.has_value()) return Invalid("malformed");
  const json::Value* alg_value = header->Find("alg");
  if (alg_value == nullptr || !alg_value->is_string()) return Invalid("malformed");
  const std::string& alg_name = alg_value->as_string();
  if (IsNone(alg_name)) return Invalid("alg_none");
  // No extension is understood, so any critical one must be refused (RFC 7515 §4.1.11).
  if (header->Find("crit") != nullptr) return Invalid("crit_unsupported");

  std::string_view kid;
  if (const json::Value* k = header->Find("kid"); k != nullptr) {
    if (!k->is_string()) return Invalid("malformed");
    kid = k->as_string();
  }
  // The key comes from our trusted set only; jwk/jku/x5u/x5c headers are ignored.
  const PublicKey* key = keys.Find(kid);
  if (key == nullptr) return Invalid("unknown_kid");
  // The algorithm is pinned by the key; the header only has to agree.
  std::optional<Algorithm> alg = AlgorithmFromName(alg_name);
  if (!alg.has_value() || *alg != key->alg()) return Invalid("alg_mismatch");

  std::optional<std::string> sig = Base64UrlDecode(sig_b64);
  if (!sig.has_value()) return Invalid("malformed");
  if (!key->Verify(token.substr(0, dot2), *sig)) return Invalid("bad_signature");

  if (!expect.typ.empty()) {
    std::optional<std::string_view> typ = header->GetString("typ");
    if (!typ.has_value() || NormalizeTyp(*typ) != NormalizeTyp(expect.typ)) {
      return Invalid("wrong_typ");
    }
  }

  std::optional<json::Value> claims = DecodeObject(payload_b64);
  if (!claims.has_value()) return Invalid("malformed");
  if (absl::Status s = CheckClaims(*claims, expect); !s.ok()) return s;
  return VerifiedJwt{std::move(*header), std::move(*claims)};
}

}  // namespace fhirward::jose
