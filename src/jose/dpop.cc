// DPoP proof verification (RFC 9449), JWK thumbprints (RFC 7638), nonces and the replay cache.
#include "jose/dpop.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <optional>
#include <vector>

#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "jose/internal/segments.h"
#include "jose/jws.h"
#include "jose/openssl_util.h"

namespace fhirward::jose {
namespace {

constexpr size_t kMaxProofBytes = 8 * 1024;
constexpr size_t kMaxJtiBytes = 256;

absl::Status Invalid(std::string_view detail) { return Error(ErrorCode::kInvalidToken, detail); }

json::Limits ProofJsonLimits() {
  json::Limits limits;
  limits.max_depth = 8;
  limits.max_string_bytes = kMaxProofBytes;
  limits.max_array_items = 64;
  limits.max_object_members = 64;
  limits.max_total_bytes = kMaxProofBytes;
  return limits;
}

std::optional<json::Value> DecodeObject(std::string_view b64) {
  return internal::DecodeJsonObject(b64, ProofJsonLimits());
}

char AsciiLower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}
bool IsUnreserved(char c) { return IsAlnum(c) || c == '-' || c == '.' || c == '_' || c == '~'; }
int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The htu comparison form of an absolute http(s) URL (RFC 9449 §4.3 step 9): query and fragment
// dropped; scheme and host lowercased; default or empty port removed; empty path as "/";
// percent-encoded unreserved characters decoded and other escapes in uppercase hex
// (RFC 3986 §6.2.2-6.2.3). nullopt for anything else (relative, userinfo, other schemes, bytes
// outside printable ASCII, bad escapes), which then matches nothing.
std::optional<std::string> NormalizeHtu(std::string_view url) {
  url = url.substr(0, url.find('#'));
  url = url.substr(0, url.find('?'));
  const size_t sep = url.find("://");
  if (sep == std::string_view::npos) return std::nullopt;
  std::string out;
  out.reserve(url.size() + 1);
  for (char c : url.substr(0, sep)) out += AsciiLower(c);
  int default_port = 0;
  if (out == "https") {
    default_port = 443;
  } else if (out == "http") {
    default_port = 80;
  } else {
    return std::nullopt;
  }
  out += "://";

  std::string_view rest = url.substr(sep + 3);
  const size_t slash = rest.find('/');
  const std::string_view authority = rest.substr(0, slash);
  const std::string_view path = slash == std::string_view::npos ? "/" : rest.substr(slash);

  std::string_view host = authority;
  std::string_view port;
  bool has_port = false;
  if (!authority.empty() && authority.front() == '[') {  // IP literal
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = authority.substr(0, close + 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return std::nullopt;
      has_port = true;
      port = after.substr(1);
    }
    if (host.size() < 3) return std::nullopt;
    for (char c : host.substr(1, host.size() - 2)) {
      if (HexValue(c) < 0 && c != ':' && c != '.') return std::nullopt;
    }
  } else {
    const size_t colon = authority.find(':');
    if (colon != std::string_view::npos) {
      host = authority.substr(0, colon);
      has_port = true;
      port = authority.substr(colon + 1);
    }
    // Registered names as used in practice (punycode for IDNs); no userinfo, no escapes.
    if (host.empty()) return std::nullopt;
    for (char c : host) {
      if (!IsUnreserved(c)) return std::nullopt;
    }
  }
  for (char c : host) out += AsciiLower(c);

  if (has_port && !port.empty()) {
    if (port.size() > 5) return std::nullopt;
    int number = 0;
    for (char c : port) {
      if (c < '0' || c > '9') return std::nullopt;
      number = number * 10 + (c - '0');
    }
    if (number > 65535) return std::nullopt;
    if (number != default_port) {
      out += ':';
      out += std::to_string(number);
    }
  }

  for (size_t i = 0; i < path.size(); ++i) {
    const char c = path[i];
    if (c == '%') {
      if (i + 2 >= path.size()) return std::nullopt;
      const int hi = HexValue(path[i + 1]);
      const int lo = HexValue(path[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      const char decoded = static_cast<char>(hi * 16 + lo);
      if (IsUnreserved(decoded)) {
        out += decoded;
      } else {
        constexpr char kHex[] = "0123456789ABCDEF";
        out += '%';
        out += kHex[hi];
        out += kHex[lo];
      }
      i += 2;
    } else if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      return std::nullopt;
    } else {
      out += c;
    }
  }
  return out;
}

// True when the jwk's key type (and curve) are the ones `alg` requires.
bool KeyTypeFits(std::string_view kty, const json::Value& jwk, Algorithm alg) {
  switch (internal::FamilyOf(alg)) {
    case internal::KeyFamily::kEc:
      return kty == "EC" && jwk.GetString("crv") == internal::CurveName(alg);
    case internal::KeyFamily::kRsa:
      return kty == "RSA";
    case internal::KeyFamily::kEd25519:
      return kty == "OKP" && jwk.GetString("crv") == internal::CurveName(alg);
  }
  return false;
}

}  // namespace

namespace {

// Imported proof keys by (alg, SHA-256 of the JWK). Bounded: cleared when full.
absl::StatusOr<PublicKey> CachedKey(const json::Value& jwk, Algorithm alg) {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<std::string, PublicKey>();
  constexpr size_t kMaxKeys = 4096;
  // The whole JWK as sent (members such as "use" matter to the import too).
  std::string k = std::string(AlgorithmName(alg)) + ":" + crypto::Sha256(json::Write(jwk));
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache->find(k);
    if (it != cache->end()) return it->second;
  }
  absl::StatusOr<PublicKey> key = PublicKey::FromJwk(jwk, alg);
  if (!key.ok()) return key.status();
  std::lock_guard<std::mutex> lock(mu);
  if (cache->size() >= kMaxKeys) cache->clear();
  cache->emplace(std::move(k), *key);
  return key;
}

}  // namespace

absl::StatusOr<std::string> JwkThumbprint(const json::Value& jwk) {
  if (!jwk.is_object()) return Invalid("bad_jwk");
  std::optional<std::string_view> kty = jwk.GetString("kty");
  std::vector<std::string_view> names;
  if (kty == "EC") {
    names = {"crv", "kty", "x", "y"};
  } else if (kty == "RSA") {
    names = {"e", "kty", "n"};
  } else if (kty == "OKP") {
    names = {"crv", "kty", "x"};
  } else {
    return Invalid("bad_jwk");
  }
  json::Value canonical = json::Value::MakeObject();
  for (std::string_view name : names) {
    std::optional<std::string_view> value = jwk.GetString(name);
    if (!value.has_value()) return Invalid("bad_jwk");
    canonical.Set(std::string(name), json::Value::String(std::string(*value)));
  }
  return Base64UrlEncode(crypto::Sha256(json::Write(canonical)));
}

// ---------------------------------------------------------------------------
// ReplayCache

ReplayCache::ReplayCache(size_t max_entries) : max_entries_(max_entries) {}

void ReplayCache::PurgeExpired(int64_t now) {
  while (!by_expiry_.empty() && by_expiry_.begin()->first < now) {
    auto it = by_expiry_.begin();
    auto entry = expiry_by_key_.find(it->second);
    by_expiry_.erase(it);  // before the key the view points at is freed
    if (entry != expiry_by_key_.end()) expiry_by_key_.erase(entry);
  }
}

bool ReplayCache::Use(std::string_view key, int64_t expires_at, int64_t now) {
  std::lock_guard<std::mutex> lock(mu_);
  PurgeExpired(now);
  if (expiry_by_key_.find(key) != expiry_by_key_.end()) return false;  // live: a replay
  if (expires_at < now) return true;                        // already dead: nothing to remember
  if (expiry_by_key_.size() >= max_entries_) return false;  // full of live entries: fail closed
  auto [entry, inserted] = expiry_by_key_.emplace(std::string(key), expires_at);
  if (!inserted) return false;
  by_expiry_.emplace(expires_at, std::string_view(entry->first));
  return true;
}

size_t ReplayCache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return expiry_by_key_.size();
}

// ---------------------------------------------------------------------------
// DpopNonces

DpopNonces::DpopNonces(std::string secret, int64_t window_seconds)
    : secret_(std::move(secret)), window_seconds_(std::max<int64_t>(window_seconds, 1)) {}

int64_t DpopNonces::WindowOf(int64_t now) const {
  // Floor division, so that windows stay contiguous before the epoch too.
  int64_t q = now / window_seconds_;
  if (now % window_seconds_ < 0) --q;
  return q;
}

std::string DpopNonces::ForWindow(int64_t window) const {
  // The window length is bound in, so a configuration change invalidates old nonces.
  std::string input =
      "fhirward dpop nonce v1|" + std::to_string(window_seconds_) + "|" + std::to_string(window);
  return Base64UrlEncode(crypto::HmacSha256(secret_, input));
}

std::string DpopNonces::Current(int64_t now) const { return ForWindow(WindowOf(now)); }

bool DpopNonces::Valid(std::string_view nonce, int64_t now) const {
  if (secret_.empty()) return false;
  const int64_t window = WindowOf(now);
  // Both compared, so the timing does not reveal which window matched.
  const bool current = crypto::ConstantTimeEquals(nonce, ForWindow(window));
  const bool previous = crypto::ConstantTimeEquals(nonce, ForWindow(window - 1));
  return current || previous;
}

// ---------------------------------------------------------------------------
// VerifyDpopProof

absl::StatusOr<DpopProof> VerifyDpopProof(std::string_view proof, const DpopExpectations& expect) {
  // One compact JWS; several DPoP header values joined by a comma fail the base64url decode.
  if (proof.empty() || proof.size() > kMaxProofBytes) return Invalid("malformed");
  const size_t dot1 = proof.find('.');
  const size_t dot2 = dot1 == std::string_view::npos ? dot1 : proof.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || proof.find('.', dot2 + 1) != std::string_view::npos) {
    return Invalid("malformed");
  }
  std::optional<json::Value> header = DecodeObject(proof.substr(0, dot1));
  if (!header.has_value()) return Invalid("malformed");

  if (header->GetString("typ") != "dpop+jwt") return Invalid("bad_typ");
  // Only the asymmetric algorithms this server implements; none and HS* are not among them.
  std::optional<std::string_view> alg_name = header->GetString("alg");
  std::optional<Algorithm> alg = alg_name.has_value() ? AlgorithmFromName(*alg_name) : std::nullopt;
  if (!alg.has_value()) return Invalid("bad_alg");
  // No extension is understood (RFC 7515 §4.1.11).
  if (header->Find("crit") != nullptr) return Invalid("malformed");

  const json::Value* jwk = header->Find("jwk");
  if (jwk == nullptr || !jwk->is_object()) return Invalid("bad_jwk");
  for (const char* secret : {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}) {
    if (jwk->Find(secret) != nullptr) return Invalid("private_key_in_jwk");
  }
  std::optional<std::string_view> kty = jwk->GetString("kty");
  if (kty != "EC" && kty != "RSA" && kty != "OKP") return Invalid("bad_jwk");
  // The header alg must be the one the key implies: no EC key under RS256, no P-384 key under
  // ES256, and no jwk "alg" other than the header's.
  if (!KeyTypeFits(*kty, *jwk, *alg)) return Invalid("bad_alg");
  if (const json::Value* jwk_alg = jwk->Find("alg"); jwk_alg != nullptr) {
    if (!jwk_alg->is_string() || jwk_alg->as_string() != AlgorithmName(*alg)) {
      return Invalid("bad_alg");
    }
  }
  absl::StatusOr<std::string> jkt = JwkThumbprint(*jwk);
  if (!jkt.ok()) return jkt.status();
  // Importing the key costs as much as checking the signature: a client sends
  // the same key with every proof, so imported keys are kept.
  absl::StatusOr<PublicKey> key = CachedKey(*jwk, *alg);
  if (!key.ok()) return Invalid("bad_jwk");
  if (key->alg() != *alg) return Invalid("bad_alg");

  std::optional<std::string> signature = Base64UrlDecode(proof.substr(dot2 + 1));
  if (!signature.has_value()) return Invalid("malformed");
  if (!key->Verify(proof.substr(0, dot2), *signature)) return Invalid("bad_signature");

  std::optional<json::Value> claims = DecodeObject(proof.substr(dot1 + 1, dot2 - dot1 - 1));
  if (!claims.has_value()) return Invalid("malformed");
  const json::Value* jti = claims->Find("jti");
  const json::Value* htm = claims->Find("htm");
  const json::Value* htu = claims->Find("htu");
  const json::Value* iat_value = claims->Find("iat");
  if (jti == nullptr || htm == nullptr || htu == nullptr || iat_value == nullptr) {
    return Invalid("missing_claim");
  }
  if (!jti->is_string() || jti->as_string().empty() || jti->as_string().size() > kMaxJtiBytes ||
      !htm->is_string() || !htu->is_string()) {
    return Invalid("malformed");
  }
  std::optional<int64_t> iat = NumericDate(*iat_value);
  if (!iat.has_value()) return Invalid("malformed");

  if (expect.method.empty() || htm->as_string() != expect.method) return Invalid("htm_mismatch");
  std::optional<std::string> want_htu = NormalizeHtu(expect.url);
  std::optional<std::string> got_htu = NormalizeHtu(htu->as_string());
  if (!want_htu.has_value() || !got_htu.has_value() || *want_htu != *got_htu) {
    return Invalid("htu_mismatch");
  }

  if (expect.nonces != nullptr) {
    std::optional<std::string_view> nonce = claims->GetString("nonce");
    if (!nonce.has_value() || !expect.nonces->Valid(*nonce, expect.now)) {
      return Invalid("use_dpop_nonce");
    }
  }

  const int64_t max_age = std::max<int64_t>(expect.max_age_seconds, 0);
  const int64_t leeway = std::max<int64_t>(expect.future_leeway_seconds, 0);
  if (*iat < expect.now - max_age) return Invalid("stale_proof");
  if (*iat > expect.now + leeway) return Invalid("future_proof");

  if (!expect.access_token.empty()) {
    std::optional<std::string_view> ath = claims->GetString("ath");
    if (!ath.has_value() ||
        !crypto::ConstantTimeEquals(*ath, Base64UrlEncode(crypto::Sha256(expect.access_token)))) {
      return Invalid("ath_mismatch");
    }
  }
  if (!expect.jkt.empty() && !crypto::ConstantTimeEquals(*jkt, expect.jkt)) {
    return Invalid("jkt_mismatch");
  }

  // Last, so that a proof refused for any other reason does not take a cache entry. The
  // thumbprint (43 characters, no ':') scopes the jti to the key.
  if (expect.replay != nullptr &&
      !expect.replay->Use(*jkt + ":" + jti->as_string(), *iat + max_age + leeway, expect.now)) {
    return Invalid("replayed_jti");
  }

  DpopProof out;
  out.jkt = std::move(*jkt);
  out.jti = jti->as_string();
  out.iat = *iat;
  out.jwk = *jwk;
  return out;
}

}  // namespace fhirward::jose
