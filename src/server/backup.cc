#include "server/backup.h"

#include <dirent.h>
#include <openssl/crypto.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "audit/audit_log.h"
#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "crypto/secure_file.h"
#include "json/value.h"
#include "server/instance.h"
#include "server/key_admin.h"
#include "store/resource_store.h"

namespace fhirward::server {
namespace {

constexpr std::string_view kFormat = "fhirward-backup-1";
constexpr size_t kChunk = 1 << 20;
constexpr uint64_t kMaxChunks = 1 << 20;  // 1 TiB per part: far below the GCM random-nonce limit

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

absl::StatusOr<std::string> ReadWhole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error(ErrorCode::kInternal, "cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A consistent copy of an SQLite database (WAL included), made in memory.
// Statements run on the in-memory copy before it is serialized (`strip`).
absl::StatusOr<SecretBytes> Snapshot(const std::string& path, const char* strip = nullptr) {
  sqlite3* src = nullptr;
  sqlite3* dst = nullptr;
  auto close = [&] {
    sqlite3_close(src);
    sqlite3_close(dst);
  };
  if (sqlite3_open_v2(path.c_str(), &src, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK ||
      sqlite3_open(":memory:", &dst) != SQLITE_OK) {
    close();
    return Error(ErrorCode::kInternal, "cannot open " + path + " for a snapshot");
  }
  sqlite3_busy_timeout(src, 10000);
  sqlite3_backup* b = sqlite3_backup_init(dst, "main", src, "main");
  if (b == nullptr) {
    close();
    return Error(ErrorCode::kInternal, "cannot snapshot " + path);
  }
  int rc = sqlite3_backup_step(b, -1);
  sqlite3_backup_finish(b);
  if (rc != SQLITE_DONE) {
    close();
    return Error(ErrorCode::kInternal, "snapshot of " + path + " failed: " + sqlite3_errstr(rc));
  }
  if (strip != nullptr) {
    char* err = nullptr;
    if (sqlite3_exec(dst, strip, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string why = err ? err : "error";
      sqlite3_free(err);
      close();
      return Error(ErrorCode::kInternal, "preparing the snapshot of " + path + ": " + why);
    }
  }
  sqlite3_int64 size = 0;
  unsigned char* bytes = sqlite3_serialize(dst, "main", &size, 0);
  if (bytes == nullptr) {
    close();
    return Error(ErrorCode::kInternal, "cannot serialize the snapshot of " + path);
  }
  SecretBytes out(std::string_view(reinterpret_cast<const char*>(bytes), size));
  OPENSSL_cleanse(bytes, static_cast<size_t>(size));
  sqlite3_free(bytes);
  close();
  return out;
}

std::vector<std::string> FilesIn(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (struct dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    struct stat st;
    if (::stat((dir + "/" + n).c_str(), &st) == 0 && S_ISREG(st.st_mode)) out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

bool IsKekFile(const std::string& name) {
  return name == "kek.key" ||
         (name.rfind("kek-v", 0) == 0 && name.size() > 9 && name.substr(name.size() - 4) == ".key");
}

// Part names are relative paths below the data directory, from a fixed set
// of places (checked again on restore: the manifest is signed, but a restore
// never writes outside its target).
bool SafePartName(const std::string& n) {
  static const std::set<std::string> kDbs = {"db/fhir.db", "db/oauth.db", "db/policy.db",
                                             "audit/audit.db"};
  if (kDbs.count(n) != 0 || n == "instance.json" || n == "kms.toml") return true;
  for (std::string_view dir : {"keys/", "tls/"}) {
    if (n.size() > dir.size() && n.compare(0, dir.size(), dir) == 0) {
      std::string_view rest = std::string_view(n).substr(dir.size());
      if (rest.find('/') != std::string_view::npos || rest == "." || rest == ".." || rest.empty() ||
          rest[0] == '.') {
        return false;
      }
      return std::all_of(rest.begin(), rest.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
      });
    }
  }
  return false;
}

std::string ChunkAd(std::string_view id, std::string_view part, uint64_t index, bool last) {
  return "fhirward-backup-v1|" + std::string(id) + "|" + std::string(part) + "|" +
         std::to_string(index) + "|" + (last ? "last" : "more");
}

absl::StatusOr<std::string> EncryptPart(const SecretBytes& backup_key, const std::string& id,
                                        const std::string& name, std::string_view plain) {
  auto aead =
      crypto::Aead::NewAes256Gcm(crypto::HkdfSha256(backup_key, name, "fhirward-backup-part-v1"));
  if (!aead.ok()) return aead.status();
  std::string out;
  uint64_t index = 0;
  size_t off = 0;
  do {
    if (index >= kMaxChunks) return Error(ErrorCode::kInternal, name + " is too large to back up");
    size_t n = std::min(kChunk, plain.size() - off);
    bool last = off + n == plain.size();
    auto ct = (*aead)->Encrypt(plain.substr(off, n), ChunkAd(id, name, index, last));
    if (!ct.ok()) return ct.status();
    uint32_t len = static_cast<uint32_t>(ct->size());
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(len >> shift));
    out.append(*ct);
    off += n;
    ++index;
  } while (off < plain.size());
  return out;
}

absl::StatusOr<SecretBytes> DecryptPart(const SecretBytes& backup_key, const std::string& id,
                                        const std::string& name, std::string_view in) {
  auto aead =
      crypto::Aead::NewAes256Gcm(crypto::HkdfSha256(backup_key, name, "fhirward-backup-part-v1"));
  if (!aead.ok()) return aead.status();
  std::string plain;
  plain.reserve(in.size());  // never reallocated: one copy to wipe
  uint64_t index = 0;
  bool saw_last = false;
  while (!in.empty()) {
    if (saw_last || in.size() < 4 || index >= kMaxChunks) {
      return Error(ErrorCode::kDecryptionFailed, name + ": malformed part");
    }
    uint32_t len = 0;
    for (int i = 0; i < 4; ++i) len = (len << 8) | static_cast<uint8_t>(in[i]);
    in.remove_prefix(4);
    if (len > in.size()) return Error(ErrorCode::kDecryptionFailed, name + ": truncated part");
    bool last = len == in.size();
    auto pt = (*aead)->DecryptSecret(in.substr(0, len), ChunkAd(id, name, index, last));
    if (!pt.ok()) {
      OPENSSL_cleanse(plain.data(), plain.size());
      return Error(ErrorCode::kDecryptionFailed,
                   name + ": chunk " + std::to_string(index) + " failed its integrity check");
    }
    plain.append(pt->UnsafeView());
    in.remove_prefix(len);
    saw_last = last;
    ++index;
  }
  if (!saw_last) return Error(ErrorCode::kDecryptionFailed, name + ": truncated part");
  SecretBytes out(plain);
  OPENSSL_cleanse(plain.data(), plain.size());
  return out;
}

std::string Hex(std::string_view bytes) { return HexEncode(crypto::Sha256(bytes)); }

absl::Status Mkdir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0) {
    return Error(ErrorCode::kInternal, "cannot create " + path + ": " + std::strerror(errno));
  }
  return absl::OkStatus();
}

std::string BackupKeyAd(std::string_view id) { return "fhirward-backup-key-v1|" + std::string(id); }

// Backups and restores are on the live instance's audit trail.
absl::Status AuditOn(const Instance& live, const std::string& action, const std::string& outcome,
                     const std::string& detail, int64_t count,
                     const std::string& subject = "fhirward-cli") {
  auto log = audit::AuditLog::Open(live.audit_db_path(), live.audit_mac_key().Clone());
  if (!log.ok()) return log.status();
  audit::AuditRecord r;
  r.time = FormatInstant(SystemClock::Get().Now());
  r.request_id = RandomUuid();
  r.subject = subject;
  r.action = action;
  r.outcome = outcome;
  r.count = count;
  r.decision = detail;
  auto seq = (*log)->Append(r);
  (*log)->Close();
  return seq.ok() ? absl::OkStatus() : seq.status();
}

}  // namespace

absl::Status Backup(const BackupArgs& a, std::ostream& out) {
  if (a.to.empty()) return Error(ErrorCode::kInvalidParameter, "--to is required");
  if (Exists(a.to)) {
    return Error(ErrorCode::kInvalidParameter,
                 a.to + " exists: a backup goes into a new directory");
  }
  auto inst = Instance::Open(a.data_dir, /*create=*/false, "");
  if (!inst.ok()) return inst.status();
  Instance& live = **inst;

  std::vector<std::pair<std::string, SecretBytes>> parts;
  // The resource database goes without its search index (values in clear:
  // codes, dates, references; rebuilt from the decrypted records on restore,
  // so an erased patient's never come back) and without stored replay
  // responses (sealed under the KEK alone).
  static const char* kStripResources =
      "PRAGMA secure_delete=ON; DELETE FROM search_token; DELETE FROM search_string; "
      "DELETE FROM search_date; DELETE FROM search_number; DELETE FROM search_reference; "
      "DELETE FROM search_composite; DELETE FROM idempotency_keys; PRAGMA user_version=0; VACUUM;";
  for (const char* db : {"db/fhir.db", "db/oauth.db", "db/policy.db", "audit/audit.db"}) {
    std::string path = a.data_dir + "/" + db;
    if (!Exists(path)) continue;
    auto snap = Snapshot(path, std::string_view(db) == "db/fhir.db" ? kStripResources : nullptr);
    if (!snap.ok()) return snap.status();
    parts.emplace_back(db, std::move(*snap));
  }
  auto add_file = [&](const std::string& rel) -> absl::Status {
    auto bytes = ReadWhole(a.data_dir + "/" + rel);
    if (!bytes.ok()) return bytes.status();
    parts.emplace_back(rel, SecretBytes(*bytes));
    OPENSSL_cleanse(bytes->data(), bytes->size());
    return absl::OkStatus();
  };
  for (const char* f : {"instance.json", "kms.toml"}) {
    if (Exists(a.data_dir + "/" + f)) {
      if (auto s = add_file(f); !s.ok()) return s;
    }
  }
  for (const char* dir : {"keys", "tls"}) {
    for (const std::string& n : FilesIn(a.data_dir + "/" + dir)) {
      if (IsKekFile(n)) continue;  // the KEK never leaves its key service
      std::string rel = std::string(dir) + "/" + n;
      if (!SafePartName(rel)) continue;
      if (auto s = add_file(rel); !s.ok()) return s;
    }
  }

  const std::string id = RandomUuid();
  SecretBytes backup_key = RandomSecret(crypto::kAes256KeyBytes);
  auto wrapped = live.kek().Wrap(backup_key, BackupKeyAd(id));
  if (!wrapped.ok()) return wrapped.status();

  if (auto s = Mkdir(a.to); !s.ok()) return s;
  if (auto s = Mkdir(a.to + "/parts"); !s.ok()) return s;
  json::Value manifest_parts = json::Value::MakeArray();
  uint64_t total = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto& [name, plain] = parts[i];
    auto enc = EncryptPart(backup_key, id, name, plain.UnsafeView());
    if (!enc.ok()) return enc.status();
    char file[32];
    std::snprintf(file, sizeof file, "parts/%03zu.enc", i);
    if (auto s = crypto::WriteNewFile(a.to + "/" + file, *enc, 0600); !s.ok()) return s;
    json::Value p = json::Value::MakeObject();
    p.Set("name", json::Value::String(name));
    p.Set("file", json::Value::String(file));
    p.Set("bytes", json::Value::Int(static_cast<int64_t>(plain.size())));
    p.Set("sha256", json::Value::String(Hex(plain.UnsafeView())));
    p.Set("ciphertext_sha256", json::Value::String(Hex(*enc)));
    manifest_parts.Push(std::move(p));
    total += plain.size();
  }
  json::Value m = json::Value::MakeObject();
  m.Set("format", json::Value::String(std::string(kFormat)));
  m.Set("id", json::Value::String(id));
  m.Set("created", json::Value::String(FormatInstant(SystemClock::Get().Now())));
  m.Set("issuer", json::Value::String(live.issuer()));
  m.Set("kms", json::Value::String(live.versioned_kek().backend().Describe()));
  m.Set("kek_version", json::Value::Int(live.versioned_kek().current_version()));
  m.Set("wrapped_key", json::Value::String(Base64UrlEncode(*wrapped)));
  m.Set("signing_kid", json::Value::String(live.signing_kid()));
  m.Set("parts", std::move(manifest_parts));
  std::string manifest = json::Write(m, {.pretty = true}) + "\n";
  auto sig = live.signing_key().Sign(manifest);
  if (!sig.ok()) return sig.status();
  if (auto s = crypto::WriteNewFile(a.to + "/manifest.json", manifest, 0600); !s.ok()) return s;
  if (auto s = crypto::WriteNewFile(a.to + "/manifest.sig", Base64UrlEncode(*sig) + "\n", 0600);
      !s.ok()) {
    return s;
  }
  if (auto s = AuditOn(live, "backup.create", "success", "backup=" + id + " to=" + a.to,
                       static_cast<int64_t>(parts.size()));
      !s.ok()) {
    return s;
  }
  out << "backup " << id << " written to " << a.to << ": " << parts.size() << " parts, " << total
      << " bytes, encrypted; the key vault and the KEK are not in it\n";
  return absl::OkStatus();
}

absl::Status Restore(const RestoreArgs& a, std::ostream& out) {
  if (a.from.empty() || a.to.empty()) {
    return Error(ErrorCode::kInvalidParameter, "--from and --to are required");
  }
  if (Exists(a.to)) {
    return Error(ErrorCode::kInvalidParameter, a.to + " exists: restore into a new directory");
  }
  if (auto s = VerifyKeyAdmin({a.data_dir, a.admin, a.password, a.totp}, "restore"); !s.ok()) {
    return s;
  }
  auto inst = Instance::Open(a.data_dir, /*create=*/false, "");
  if (!inst.ok()) return inst.status();
  Instance& live = **inst;

  // 1. Signature and hashes, before anything is written.
  auto manifest = ReadWhole(a.from + "/manifest.json");
  if (!manifest.ok()) return manifest.status();
  auto sig_text = ReadWhole(a.from + "/manifest.sig");
  if (!sig_text.ok()) return sig_text.status();
  while (!sig_text->empty() && (sig_text->back() == '\n' || sig_text->back() == '\r')) {
    sig_text->pop_back();
  }
  auto sig = Base64UrlDecode(*sig_text);
  if (!sig || !live.signing_key().public_key().Verify(*manifest, *sig)) {
    return Error(ErrorCode::kForbidden,
                 "the manifest's signature does not verify with this instance's key");
  }
  out << "manifest signature: ok\n";
  auto m = json::Parse(*manifest);
  if (!m.ok() || !m->is_object() || m->GetString("format") != kFormat) {
    return Error(ErrorCode::kInvalidRequest, "not a " + std::string(kFormat) + " manifest");
  }
  std::string id(m->GetString("id").value_or(""));
  auto wrapped = Base64UrlDecode(std::string(m->GetString("wrapped_key").value_or("")));
  if (id.empty() || !wrapped) return Error(ErrorCode::kInvalidRequest, "manifest lacks id or key");
  auto backup_key = live.kek().Unwrap(*wrapped, BackupKeyAd(id));
  if (!backup_key.ok()) {
    return Error(ErrorCode::kDecryptionFailed,
                 "the backup key does not unwrap under this instance's KEK");
  }
  const json::Value* parts = m->Find("parts");
  if (parts == nullptr || !parts->is_array() || parts->items().empty()) {
    return Error(ErrorCode::kInvalidRequest, "manifest lists no parts");
  }
  std::vector<std::pair<std::string, SecretBytes>> plain_parts;
  std::set<std::string> names;
  for (const json::Value& p : parts->items()) {
    std::string name(p.GetString("name").value_or(""));
    std::string file(p.GetString("file").value_or(""));
    if (!SafePartName(name) || !names.insert(name).second || file.rfind("parts/", 0) != 0 ||
        file.find("..") != std::string::npos) {
      return Error(ErrorCode::kInvalidRequest, "manifest names an unsafe part: " + name);
    }
    auto enc = ReadWhole(a.from + "/" + file);
    if (!enc.ok()) return enc.status();
    if (Hex(*enc) != p.GetString("ciphertext_sha256").value_or("")) {
      return Error(ErrorCode::kDecryptionFailed, name + ": ciphertext hash mismatch");
    }
    auto plain = DecryptPart(*backup_key, id, name, *enc);
    if (!plain.ok()) return plain.status();
    const json::Value* bytes = p.Find("bytes");
    if (Hex(plain->UnsafeView()) != p.GetString("sha256").value_or("") || bytes == nullptr ||
        !bytes->is_number() ||
        bytes->as_int64().value_or(-1) != static_cast<int64_t>(plain->size())) {
      return Error(ErrorCode::kDecryptionFailed, name + ": plaintext hash or size mismatch");
    }
    plain_parts.emplace_back(name, std::move(*plain));
  }
  for (const char* required : {"db/fhir.db", "audit/audit.db", "instance.json"}) {
    if (names.count(required) == 0) {
      return Error(ErrorCode::kInvalidRequest, std::string("backup lacks ") + required);
    }
  }
  out << "parts: " << plain_parts.size() << " verified (hashes and authenticated encryption)\n";

  // 2. Write the new data directory; the vault and KEK come from the live instance.
  for (const char* sub : {"", "/db", "/audit", "/keys", "/tls"}) {
    if (auto s = Mkdir(a.to + sub); !s.ok()) return s;
  }
  for (const auto& [name, plain] : plain_parts) {
    if (name == "kms.toml") continue;  // the live one below
    mode_t mode = name == "instance.json" || name.rfind("tls/", 0) == 0 ? 0644 : 0600;
    if (name.rfind("tls/", 0) == 0 && name.find(".key") != std::string::npos) mode = 0600;
    if (auto s = crypto::WriteNewFile(a.to + "/" + name, plain.UnsafeView(), mode); !s.ok()) {
      return s;
    }
  }
  auto vault = Snapshot(live.keys_db_path());
  if (!vault.ok()) return vault.status();
  if (auto s = crypto::WriteNewFile(a.to + "/db/keys.db", vault->UnsafeView(), 0600); !s.ok()) {
    return s;
  }
  if (Exists(a.data_dir + "/kms.toml")) {
    auto kms = ReadWhole(a.data_dir + "/kms.toml");
    if (!kms.ok()) return kms.status();
    if (auto s = crypto::WriteNewFile(a.to + "/kms.toml", *kms, 0600); !s.ok()) return s;
  }
  for (const std::string& n : FilesIn(live.keys_dir())) {
    if (!IsKekFile(n)) continue;
    auto key = crypto::ReadPrivateFile(live.keys_dir() + "/" + n, 4096);
    if (!key.ok()) return key.status();
    if (auto s = crypto::WriteNewFile(a.to + "/keys/" + n, key->UnsafeView(), 0600); !s.ok()) {
      return s;
    }
  }

  // 3. Patients erased since the backup was made: their keys are gone; remove their records.
  auto restored = Instance::Open(a.to, /*create=*/false, "");
  if (!restored.ok()) return restored.status();
  auto store = store::OpenSqliteStore({.path = (*restored)->resource_db_path(),
                                       .kek = &(*restored)->kek(),
                                       .keyring = &(*restored)->keyring(),
                                       .read_connections = 2,
                                       .cache_bytes = 0,
                                       .index_key = &(*restored)->blind_index_key()});
  if (!store.ok()) return store.status();
  auto erasures = (*restored)->keyring().Erasures();
  if (!erasures.ok()) return erasures.status();
  uint64_t erased_resources = 0;
  for (const auto& [tenant, patient] : *erasures) {
    auto ids = (*restored)->keyring().PatientKeyIds(tenant, patient);
    if (!ids.ok()) return ids.status();
    auto report = (*store)->ErasePatient(tenant, patient, *ids);
    if (!report.ok()) return report.status();
    erased_resources += report->resources;
  }
  out << "erased patients: " << erasures->size() << " (" << erased_resources
      << " of their resources in the backup removed)\n";

  // 4. Integrity checks.
  if (a.verify) {
    auto report = audit::VerifyAuditLog((*restored)->audit_db_path(), (*restored)->audit_mac_key());
    if (!report.ok()) return report.status();
    if (!report->ok) {
      return Error(ErrorCode::kDecryptionFailed, "audit trail: " + report->summary);
    }
    out << "audit trail: " << report->summary << "\n";
    auto tenants = (*restored)->keyring().Tenants();
    if (!tenants.ok()) return tenants.status();
    uint64_t opened = 0;
    for (const auto& tenant : *tenants) {
      auto page = (*store)->History(
          {.tenant = tenant, .count = static_cast<int>(std::min<size_t>(a.sample, 10000))});
      if (!page.ok()) {
        if (CodeOf(page.status()) == ErrorCode::kErased) continue;  // a decommissioned tenant
        return Error(ErrorCode::kDecryptionFailed,
                     "records of tenant " + tenant +
                         " do not open: " + std::string(page.status().message()));
      }
      opened += page->entries.size();
    }
    out << "records: " << opened << " sampled versions opened and authenticated\n";
  }
  if (auto s = AuditOn(
          live, "backup.restore", "success",
          "backup=" + id + " from=" + a.from + " to=" + a.to + (a.verify ? " verified" : ""),
          static_cast<int64_t>(plain_parts.size()), a.admin);
      !s.ok()) {
    return s;
  }
  out << "restored into " << a.to << "\n";
  return absl::OkStatus();
}

}  // namespace fhirward::server
