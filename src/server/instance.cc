#include "server/instance.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "crypto/pkcs11.h"
#include "jose/dpop.h"
#include "json/value.h"
#include "toml++/toml.h"

namespace fhirward::server {
namespace {

absl::Status MakeDir(const std::string& path, mode_t mode) {
  if (mkdir(path.c_str(), mode) == 0 || errno == EEXIST) return absl::OkStatus();
  return Error(ErrorCode::kInternal, "cannot create directory " + path);
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error(ErrorCode::kInternal, "cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteFileExclusive(const std::string& path, std::string_view data, mode_t mode) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return Error(ErrorCode::kInternal, "cannot create " + path);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n <= 0) {
      close(fd);
      return Error(ErrorCode::kInternal, "cannot write " + path);
    }
    off += static_cast<size_t>(n);
  }
  fsync(fd);
  close(fd);
  return absl::OkStatus();
}

// A 32-byte secret stored wrapped by the KEK, so that moving the secret to an
// HSM-backed KEK later protects it too.
absl::StatusOr<SecretBytes> LoadOrCreateWrappedSecret(const crypto::KeyEncryptionService& kek,
                                                      const std::string& path,
                                                      const std::string& purpose, bool create) {
  std::string ad = "fhirward-wrapped-secret-v1:" + purpose;
  if (!Exists(path)) {
    if (!create) return Error(ErrorCode::kInternal, "missing " + path);
    SecretBytes secret = RandomSecret(32);
    auto wrapped = kek.Wrap(secret, ad);
    if (!wrapped.ok()) return wrapped.status();
    if (auto s = WriteFileExclusive(path, *wrapped, 0600); !s.ok()) return s;
  }
  auto data = ReadFile(path);
  if (!data.ok()) return data.status();
  auto secret = kek.Unwrap(*data, ad);
  if (!secret.ok()) {
    return Error(ErrorCode::kDecryptionFailed, path + " does not open under the KEK");
  }
  return std::move(*secret);
}

struct KmsConfig {
  std::string backend = "local";
  crypto::Pkcs11Options pkcs11;
  int data_key_cache_seconds = 300;
};

// DIR/kms.toml: which key management service holds the KEK. Absent: local.
absl::StatusOr<KmsConfig> LoadKmsConfig(const std::string& path) {
  KmsConfig c;
  if (!Exists(path)) return c;
  toml::table t;
  try {
    t = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    return Error(ErrorCode::kInternal, path + ":" + std::to_string(e.source().begin.line) + ": " +
                                           std::string(e.description()));
  }
  for (const auto& entry : t) {
    const std::string key(entry.first.str());
    const toml::node& v = entry.second;  // not a structured binding: lambdas capture it (clang 14)
    auto str = [&](std::string& out) -> absl::Status {
      if (!v.is_string())
        return Error(ErrorCode::kInternal, path + ": " + key + " must be a string");
      out = v.as_string()->get();
      return absl::OkStatus();
    };
    absl::Status s;
    if (key == "backend") {
      s = str(c.backend);
    } else if (key == "module") {
      s = str(c.pkcs11.module);
    } else if (key == "token_label") {
      s = str(c.pkcs11.token_label);
    } else if (key == "pin_source") {
      s = str(c.pkcs11.pin_source);
    } else if (key == "key_label") {
      s = str(c.pkcs11.key_label);
    } else if (key == "mechanism") {
      s = str(c.pkcs11.mechanism);
    } else if (key == "slot") {
      if (!v.is_integer() || v.as_integer()->get() < 0) {
        return Error(ErrorCode::kInternal, path + ": slot must be a non-negative integer");
      }
      c.pkcs11.slot = static_cast<unsigned long>(v.as_integer()->get());
    } else if (key == "data_key_cache_seconds") {
      if (!v.is_integer() || v.as_integer()->get() < 0 || v.as_integer()->get() > 86400) {
        return Error(ErrorCode::kInternal, path + ": data_key_cache_seconds must be 0..86400");
      }
      c.data_key_cache_seconds = static_cast<int>(v.as_integer()->get());
    } else if (key == "pin") {
      return Error(ErrorCode::kInternal, path +
                                             ": a PIN is never written in kms.toml; use "
                                             "pin_source = \"env:NAME\" or \"file:PATH\"");
    } else {
      return Error(ErrorCode::kInternal, path + ": unknown key " + key);
    }
    if (!s.ok()) return s;
  }
  if (c.backend != "local" && c.backend != "pkcs11") {
    return Error(ErrorCode::kInternal, path + ": backend must be local or pkcs11");
  }
  if (c.backend == "pkcs11" && (c.pkcs11.module.empty() || c.pkcs11.pin_source.empty() ||
                                (c.pkcs11.token_label.empty() && !c.pkcs11.slot))) {
    return Error(ErrorCode::kInternal,
                 path + ": pkcs11 needs module, pin_source and token_label (or slot)");
  }
  return c;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Instance>> Instance::Open(const std::string& data_dir, bool create,
                                                         const std::string& default_issuer) {
  std::unique_ptr<Instance> inst(new Instance());
  inst->data_dir_ = data_dir;
  if (!Exists(data_dir)) {
    if (!create) return Error(ErrorCode::kInternal, "data directory " + data_dir + " not found");
    if (auto s = MakeDir(data_dir, 0700); !s.ok()) return s;
  }
  for (const char* sub : {"/keys", "/db", "/audit"}) {
    if (!create && !Exists(data_dir + sub)) {
      return Error(ErrorCode::kInternal,
                   data_dir + " is not an initialised fhirward data directory");
    }
    if (auto s = MakeDir(data_dir + sub, 0700); !s.ok()) return s;
  }

  auto kms_config = LoadKmsConfig(data_dir + "/kms.toml");
  if (!kms_config.ok()) return kms_config.status();
  std::unique_ptr<crypto::KeyManagementService> backend;
  if (kms_config->backend == "pkcs11") {
    auto hsm = crypto::OpenPkcs11Kms(kms_config->pkcs11);
    if (!hsm.ok()) return hsm.status();
    backend = std::move(*hsm);
  } else {
    backend = crypto::NewLocalKms(data_dir + "/keys");
  }
  auto kek = crypto::VersionedKek::Open(std::move(backend), create);
  if (!kek.ok()) return kek.status();
  inst->kek_ = std::move(*kek);
  auto keyring = crypto::KeyRing::Open({.path = data_dir + "/db/keys.db",
                                        .kek = inst->kek_.get(),
                                        .cache_seconds = kms_config->data_key_cache_seconds});
  if (!keyring.ok()) return keyring.status();
  inst->keyring_ = std::move(*keyring);

  std::string signing_path = data_dir + "/keys/signing-es256.pem";
  std::string identity_path = data_dir + "/instance.json";
  if (!Exists(identity_path)) {
    if (!create) return Error(ErrorCode::kInternal, "missing " + identity_path);
    std::string kid = HexEncode(RandomBytes(8));
    auto key = jose::SigningKey::Generate(jose::Algorithm::kES256, kid);
    if (!key.ok()) return key.status();
    if (!Exists(signing_path)) {
      if (auto s = key->SavePem(signing_path); !s.ok()) return s;
    }
    json::Value id = json::Value::MakeObject();
    id.Set("issuer", json::Value::String(default_issuer));
    id.Set("audience", json::Value::String(default_issuer));
    id.Set("signing_kid", json::Value::String(kid));
    id.Set("created", json::Value::String(FormatInstant(SystemClock::Get().Now())));
    if (auto s = WriteFileExclusive(identity_path, json::Write(id, {.pretty = true}) + "\n", 0644);
        !s.ok()) {
      return s;
    }
  }
  auto text = ReadFile(identity_path);
  if (!text.ok()) return text.status();
  auto identity = json::Parse(*text);
  if (!identity.ok() || !identity->is_object()) {
    return Error(ErrorCode::kInternal, identity_path + " is not valid JSON");
  }
  auto issuer = identity->GetString("issuer");
  auto audience = identity->GetString("audience");
  auto kid = identity->GetString("signing_kid");
  if (!issuer || !audience || !kid) {
    return Error(ErrorCode::kInternal, identity_path + " lacks issuer, audience or signing_kid");
  }
  inst->issuer_ = std::string(*issuer);
  inst->audience_ = std::string(*audience);
  auto key = jose::SigningKey::LoadPem(signing_path, jose::Algorithm::kES256, std::string(*kid));
  if (!key.ok()) return key.status();
  inst->signing_key_ = std::move(*key);

  // The audit log's tree-head key: one for the life of the log (verifiers pin
  // it), separate from the token keys that rotate. Created on first use also
  // in a data dir from before signed tree heads.
  {
    const std::string log_key_path = data_dir + "/keys/audit-log-es256.pem";
    if (!Exists(log_key_path)) {
      auto fresh = jose::SigningKey::Generate(jose::Algorithm::kES256, "audit-log");
      if (!fresh.ok()) return fresh.status();
      auto saved = fresh->SavePem(log_key_path);
      // Another process may have created it in between: load theirs.
      if (!saved.ok() && !Exists(log_key_path)) return saved;
    }
    auto loaded = jose::SigningKey::LoadPem(log_key_path, jose::Algorithm::kES256, "audit-log");
    if (!loaded.ok()) return loaded.status();
    // The kid is the key's RFC 7638 thumbprint, so a verifier can tell keys apart.
    auto thumb = jose::JwkThumbprint(loaded->public_key().ToJwk());
    if (!thumb.ok()) return thumb.status();
    auto keyed = jose::SigningKey::LoadPem(log_key_path, jose::Algorithm::kES256, *thumb);
    if (!keyed.ok()) return keyed.status();
    inst->audit_log_key_ = std::move(*keyed);
  }

  auto mac = LoadOrCreateWrappedSecret(*inst->kek_, data_dir + "/keys/audit-mac.wrapped",
                                       "audit-mac", create);
  if (!mac.ok()) return mac.status();
  inst->audit_mac_key_ = std::move(*mac);
  auto cursor =
      LoadOrCreateWrappedSecret(*inst->kek_, data_dir + "/keys/cursor.wrapped", "cursor", create);
  if (!cursor.ok()) return cursor.status();
  inst->cursor_key_ = std::move(*cursor);
  // Created on first use also in a data dir from before search existed.
  auto blind = LoadOrCreateWrappedSecret(*inst->kek_, data_dir + "/keys/blind-index.wrapped",
                                         "blind-index", true);
  if (!blind.ok()) return blind.status();
  inst->blind_index_key_ = std::move(*blind);
  auto session =
      LoadOrCreateWrappedSecret(*inst->kek_, data_dir + "/keys/session.wrapped", "session", true);
  if (!session.ok()) return session.status();
  inst->session_key_ = std::move(*session);
  auto nonce = LoadOrCreateWrappedSecret(*inst->kek_, data_dir + "/keys/dpop-nonce.wrapped",
                                         "dpop-nonce", true);
  if (!nonce.ok()) return nonce.status();
  inst->dpop_nonce_key_ = std::move(*nonce);
  return inst;
}

}  // namespace fhirward::server
