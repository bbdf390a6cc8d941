#include "server/key_admin.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/clock.h"
#include "common/error.h"
#include "crypto/password.h"
#include "crypto/secure_file.h"
#include "crypto/totp.h"
#include "oauth/authorization_server.h"
#include "oauth/oauth_store.h"
#include "server/admin.h"
#include "server/instance.h"
#include "store/resource_store.h"

namespace fhirward::server {
namespace {

constexpr std::string_view kRewrapCursor = "rewrap.cursor";
// A wrong password or code typed to a command acting as a user counts towards
// that user's lockout.
constexpr int64_t kCliMaxFailures = 5;
constexpr int64_t kCliLockSeconds = 900;

struct Session {
  std::unique_ptr<Instance> inst;
  std::unique_ptr<oauth::OAuthStore> users;
  std::unique_ptr<audit::AuditLog> audit;
  std::string actor;

  // Appends, and fails the command when the trail cannot take it: no key
  // operation goes unrecorded.
  absl::Status Audit(audit::AuditRecord r) {
    r.subject = actor;
    if (r.time.empty()) r.time = FormatInstant(SystemClock::Get().Now());
    if (r.request_id.empty()) r.request_id = RandomUuid();
    auto seq = audit->Append(r);
    return seq.ok() ? absl::OkStatus() : seq.status();
  }

  // Key events the trail could not take (the command then fails).
  std::atomic<int> unaudited{0};
  absl::Status Finish() const {
    if (unaudited.load() > 0) {
      return Error(ErrorCode::kAuditUnavailable,
                   std::to_string(unaudited.load()) + " key events could not be audited");
    }
    return absl::OkStatus();
  }

  ~Session() {
    if (inst != nullptr) {
      inst->keyring().SetEventSink(nullptr);
      inst->keyring().ClearCache();  // no unwrapped key outlives the command
    }
    if (audit != nullptr) audit->Close();
  }
};

bool ValidId(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
  });
}

bool ValidTenant(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

absl::StatusOr<std::unique_ptr<Session>> OpenSession(const std::string& data_dir) {
  auto s = std::make_unique<Session>();
  auto inst = Instance::Open(data_dir, /*create=*/false, "");
  if (!inst.ok()) return inst.status();
  s->inst = std::move(*inst);
  auto users = oauth::OAuthStore::Open(s->inst->oauth_db_path());
  if (!users.ok()) return users.status();
  s->users = std::move(*users);
  auto audit = audit::AuditLog::Open(s->inst->audit_db_path(), s->inst->audit_mac_key().Clone());
  if (!audit.ok()) return audit.status();
  s->audit = std::move(*audit);
  return s;
}

// The key-admin's credential (CheckCliCredential). A refusal is audited.
absl::StatusOr<std::unique_ptr<Session>> OpenAsKeyAdmin(const KeyAdminArgs& a,
                                                        const std::string& action) {
  if (a.admin.empty()) {
    return Error(ErrorCode::kForbidden, "--admin (a user with the key-admin role) is required");
  }
  auto s = OpenSession(a.data_dir);
  if (!s.ok()) return s.status();
  Session& session = **s;
  auto cred =
      CheckCliCredential(*session.inst, *session.users, a.admin, a.password, a.totp, "key-admin");
  if (!cred.ok()) return cred.status();
  session.actor = cred->actor;
  if (!cred->ok()) {
    audit::AuditRecord r;
    r.action = "key." + action;
    r.outcome = "denied";
    r.status_code = 403;
    r.error = cred->why;
    if (auto st = session.Audit(r); !st.ok()) return st;
    if (cred->why == "not_key_admin") {
      return Error(ErrorCode::kForbidden, a.admin + " does not hold the key-admin role");
    }
    return Error(ErrorCode::kForbidden,
                 a.admin + ": not an active user, wrong password, or wrong TOTP code");
  }
  // From here on every key event of the ring is on the trail, as this user.
  Session* raw = s->get();
  session.inst->keyring().SetEventSink([raw](const crypto::KeyEvent& e) {
    if (!raw->audit->Append(KeyEventRecord(e, raw->actor)).ok()) ++raw->unaudited;
  });
  return s;
}

absl::StatusOr<std::unique_ptr<store::ResourceStore>> OpenStore(const Instance& inst) {
  return store::OpenSqliteStore({.path = inst.resource_db_path(),
                                 .kek = &inst.kek(),
                                 .keyring = &inst.keyring(),
                                 .read_connections = 2,
                                 .cache_bytes = 0,
                                 .index_key = &inst.blind_index_key()});
}

// Instance secrets (DIR/keys/*.wrapped) wrapped under an older KEK version.
absl::StatusOr<uint64_t> RewrapInstanceSecrets(const Instance& inst) {
  uint64_t moved = 0;
  DIR* d = ::opendir(inst.keys_dir().c_str());
  if (d == nullptr) return Error(ErrorCode::kInternal, "cannot list " + inst.keys_dir());
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 8 && n.substr(n.size() - 8) == ".wrapped") names.push_back(n);
  }
  ::closedir(d);
  const uint32_t current = inst.versioned_kek().current_version();
  for (const std::string& n : names) {
    std::string path = inst.keys_dir() + "/" + n;
    auto data = crypto::ReadPrivateFile(path, 4096);
    if (!data.ok()) return data.status();
    if (crypto::VersionedKek::VersionOf(data->UnsafeView()) == current) continue;
    std::string ad = "fhirward-wrapped-secret-v1:" + n.substr(0, n.size() - 8);
    auto secret = inst.kek().Unwrap(data->UnsafeView(), ad);
    if (!secret.ok()) return Error(ErrorCode::kDecryptionFailed, path + " does not open");
    auto wrapped = inst.kek().Wrap(*secret, ad);
    if (!wrapped.ok()) return wrapped.status();
    if (auto s = crypto::ReplaceFile(path, *wrapped, 0600); !s.ok()) return s;
    ++moved;
  }
  return moved;
}

absl::StatusOr<uint64_t> RewrapTotpSeeds(const Instance& inst, oauth::OAuthStore& users) {
  auto list = users.ListUsers();
  if (!list.ok()) return list.status();
  const uint32_t current = inst.versioned_kek().current_version();
  uint64_t moved = 0;
  for (const auto& u : *list) {
    if (u.totp_secret_wrapped.empty() ||
        crypto::VersionedKek::VersionOf(u.totp_secret_wrapped) == current) {
      continue;
    }
    std::string ad = "fhirward-totp-v1:" + u.username;
    auto seed = inst.kek().Unwrap(u.totp_secret_wrapped, ad);
    if (!seed.ok()) return Error(ErrorCode::kDecryptionFailed, "TOTP seed of " + u.username);
    auto wrapped = inst.kek().Wrap(*seed, ad);
    if (!wrapped.ok()) return wrapped.status();
    auto changed = users.RewrapTotp(u.username, u.totp_secret_wrapped, *wrapped);
    if (!changed.ok()) return changed.status();
    if (*changed) ++moved;
  }
  return moved;
}

// Identifies the key generation a rewrap pass ran against: a rotation in
// between makes an interrupted pass start over.
absl::StatusOr<std::string> KeyGeneration(crypto::KeyRing& ring) {
  auto st = ring.Status();
  if (!st.ok()) return st.status();
  std::string g = "kek" + std::to_string(st->kek_version);
  for (const auto& t : st->tenant_keys) {
    if (!t.destroyed) g += "," + t.tenant + ":" + std::to_string(t.version);
  }
  return g;
}

void ProgressBar(std::ostream& out, uint64_t done, uint64_t total, uint64_t resealed) {
  constexpr int kWidth = 30;
  double f = total == 0 ? 1.0 : std::min(1.0, static_cast<double>(done) / total);
  int filled = static_cast<int>(f * kWidth);
  out << "\rrewrap [" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] "
      << static_cast<int>(f * 100) << "% " << done << "/" << total << " records, " << resealed
      << " re-sealed" << std::flush;
}

}  // namespace

absl::StatusOr<CliCredential> CheckCliCredential(Instance& inst, oauth::OAuthStore& users,
                                                 const std::string& username,
                                                 const std::string& password,
                                                 const std::string& totp, const std::string& role) {
  const int64_t now = SystemClock::Get().NowSeconds();
  auto user = users.GetUser(username);
  if (!user.ok()) return user.status();
  CliCredential c;
  c.actor = *user ? username : oauth::AuditNameForUnknownUser(inst.session_key(), username);
  const bool known = *user && !(*user)->disabled && (*user)->locked_until <= now;
  bool ok = false;
  if (known) {
    ok = crypto::VerifyPassword(password, (*user)->password_hash);
  } else {
    crypto::VerifyAgainstDummy(password);  // the same time either way
  }
  c.why = ok ? "" : "bad_credentials";
  if (ok) {
    std::istringstream roles((*user)->roles);
    bool has_role = false;
    for (std::string r; roles >> r;) has_role = has_role || r == role;
    if (!has_role) {
      c.why = "not_" + role;
      std::replace(c.why.begin(), c.why.end(), '-', '_');
      return c;  // the credential itself was right: no lockout count
    }
  }
  if (ok && !(*user)->totp_secret_wrapped.empty()) {
    auto seed =
        inst.kek().Unwrap((*user)->totp_secret_wrapped, "fhirward-totp-v1:" + (*user)->username);
    if (!seed.ok()) return seed.status();
    auto step = crypto::VerifyTotp(seed->UnsafeView(), totp, now, (*user)->totp_last_step);
    ok = step.has_value();
    if (ok) {
      auto fresh = users.UseTotpStep(username, *step);
      ok = fresh.ok() && *fresh;
    }
    if (!ok) c.why = "bad_totp";
  }
  if (!ok) {
    if (known) (void)users.RecordLoginFailure(username, now, kCliMaxFailures, kCliLockSeconds);
    return c;
  }
  (void)users.RecordLoginSuccess(username);
  return c;
}

audit::AuditRecord KeyEventRecord(const crypto::KeyEvent& e, const std::string& actor) {
  audit::AuditRecord r;
  r.time = FormatInstant(SystemClock::Get().Now());
  r.request_id = RandomUuid();
  r.subject = actor;
  r.action = "key." + e.action;
  r.outcome = "success";
  r.resource_type = e.kind;
  r.resource_id = e.key_id;
  if (e.scope.rfind("patient:", 0) == 0) r.patient_id = e.scope.substr(8);
  r.count = static_cast<int64_t>(e.count);
  r.decision = "tenant=" + e.tenant + (e.scope.empty() ? "" : " scope=" + e.scope);
  return r;
}

absl::Status VerifyKeyAdmin(const KeyAdminArgs& a, const std::string& action) {
  auto s = OpenAsKeyAdmin(a, action);
  return s.ok() ? absl::OkStatus() : s.status();
}

absl::Status KeysStatus(const std::string& data_dir, std::ostream& out) {
  auto inst = Instance::Open(data_dir, /*create=*/false, "");
  if (!inst.ok()) return inst.status();
  auto st = (*inst)->keyring().Status();
  if (!st.ok()) return st.status();
  out << "kms: " << st->kms << "\n";
  out << "kek: current version " << st->kek_version << " (versions:";
  for (uint32_t v : st->kek_versions) out << " " << v;
  out << ")\n";
  out << "tenant keys:\n";
  for (const auto& t : st->tenant_keys) {
    out << "  " << t.tenant << " v" << t.version << "  "
        << (t.destroyed ? "destroyed" : "kek v" + std::to_string(t.kek_version)) << "  created "
        << t.created << "  data keys " << t.data_keys << "\n";
  }
  out << "data keys: " << st->data_keys << " live, " << st->destroyed_data_keys << " destroyed\n";
  out << "to move forward (fhirward keys rewrap): " << st->stale_tenant_keys << " tenant keys, "
      << st->stale_data_keys << " data keys\n";
  return absl::OkStatus();
}

absl::Status KeysRotateKek(const KeyAdminArgs& a, std::ostream& out) {
  auto s = OpenAsKeyAdmin(a, "rotate");
  if (!s.ok()) return s.status();
  Session& session = **s;
  // Two rotations at once would make two keys with one label on an HSM.
  const std::string lock_path = session.inst->keys_dir() + "/.kek-rotate.lock";
  int lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (lock < 0 || ::flock(lock, LOCK_EX | LOCK_NB) != 0) {
    if (lock >= 0) ::close(lock);
    return Error(ErrorCode::kUnavailable, "another key-encryption key rotation is running");
  }
  audit::AuditRecord intent = KeyEventRecord(
      {"rotate", "kek", "", "",
       "kek:v" + std::to_string(session.inst->versioned_kek().current_version() + 1), 0},
      session.actor);
  intent.outcome = "requested";
  if (auto st = session.Audit(intent); !st.ok()) {
    ::close(lock);
    return st;
  }
  auto v = session.inst->versioned_kek().Rotate();
  ::close(lock);
  if (!v.ok()) return v.status();
  auto st = session.Audit(
      KeyEventRecord({"rotate", "kek", "", "", "kek:v" + std::to_string(*v), 0}, session.actor));
  if (!st.ok()) return st;
  out << "key-encryption key version " << *v << " created in "
      << session.inst->versioned_kek().backend().Describe()
      << "; new wraps use it now. Run `fhirward keys rewrap` to move the tenant keys and "
         "instance secrets forward.\n";
  return session.Finish();
}

absl::Status KeysRotateTenant(const KeyAdminArgs& a, const std::string& tenant, std::ostream& out) {
  if (!ValidTenant(tenant)) return Error(ErrorCode::kInvalidParameter, "invalid --tenant");
  auto s = OpenAsKeyAdmin(a, "rotate");
  if (!s.ok()) return s.status();
  auto v = (*s)->inst->keyring().RotateTenant(tenant);
  if (!v.ok()) return v.status();
  out << "tenant key " << tenant << " version " << *v
      << " created; new writes use new data keys now. Run `fhirward keys rewrap` to re-seal "
         "older records and retire the old version.\n";
  return (*s)->Finish();
}

absl::Status KeysRewrap(const RewrapArgs& a, std::ostream& out, std::ostream& progress) {
  if (a.batch == 0 || a.batch > 100000) {
    return Error(ErrorCode::kInvalidParameter, "--batch must be 1..100000");
  }
  if (a.rate < 0) return Error(ErrorCode::kInvalidParameter, "--rate must be >= 0");
  auto s = OpenAsKeyAdmin(a.admin, "rewrap");
  if (!s.ok()) return s.status();
  Session& session = **s;
  crypto::KeyRing& ring = session.inst->keyring();

  // 1. Keys: tenant keys to the current KEK, data keys to the current tenant keys.
  auto keys = ring.RewrapKeys();
  if (!keys.ok()) return keys.status();
  auto secrets = RewrapInstanceSecrets(*session.inst);
  if (!secrets.ok()) return secrets.status();
  auto seeds = RewrapTotpSeeds(*session.inst, *session.users);
  if (!seeds.ok()) return seeds.status();
  out << "keys re-wrapped: " << *keys << " in the vault, " << *secrets << " instance secrets, "
      << *seeds << " TOTP seeds\n";

  // 2. Records, resumable.
  auto store = OpenStore(*session.inst);
  if (!store.ok()) return store.status();
  auto generation = KeyGeneration(ring);
  if (!generation.ok()) return generation.status();
  auto saved = (*store)->GetMeta(std::string(kRewrapCursor));
  if (!saved.ok()) return saved.status();
  int64_t cursor = 0;
  if (size_t bar = saved->find('|'); bar != std::string::npos) {
    if (saved->substr(bar + 1) == *generation) {
      cursor = std::strtoll(saved->c_str(), nullptr, 10);
      out << "resuming after record " << cursor << "\n";
    } else {
      out << "keys changed since the interrupted pass: starting over\n";
    }
  }
  auto remaining = (*store)->CountVersionsAfter(cursor);
  if (!remaining.ok()) return remaining.status();
  const uint64_t total = *remaining;
  uint64_t scanned = 0, resealed = 0;
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    auto p = (*store)->ResealBatch(cursor, a.batch);
    if (!p.ok()) {
      if (a.progress) progress << "\n";
      return p.status();
    }
    scanned += p->scanned;
    resealed += p->resealed;
    cursor = p->last_seq;
    if (auto st = (*store)->PutMeta(std::string(kRewrapCursor),
                                    std::to_string(cursor) + "|" + *generation);
        !st.ok()) {
      return st;
    }
    if (a.progress) ProgressBar(progress, scanned, total, resealed);
    if (p->done) break;
    if (a.rate > 0) {
      auto due = start + std::chrono::duration<double>(static_cast<double>(scanned) / a.rate);
      std::this_thread::sleep_until(due);
    }
  }
  if (a.progress) progress << "\n";
  if (auto st = (*store)->PutMeta(std::string(kRewrapCursor), ""); !st.ok()) return st;
  // Data keys re-wrapped above may now leave older tenant key versions unused.
  auto retired = ring.RewrapKeys();
  if (!retired.ok()) return retired.status();
  audit::AuditRecord r;
  r.action = "key.rewrap";
  r.outcome = "success";
  r.resource_type = "record";
  r.count = static_cast<int64_t>(resealed);
  r.decision = "scanned=" + std::to_string(scanned) + " keys=" + std::to_string(*keys) +
               " secrets=" + std::to_string(*secrets) + " totp=" + std::to_string(*seeds);
  if (auto st = session.Audit(r); !st.ok()) return st;
  out << "records: " << scanned << " scanned, " << resealed << " re-sealed under current keys\n";
  return session.Finish();
}

absl::Status ErasePatient(const EraseArgs& a, std::ostream& out) {
  std::string_view target = a.target;
  for (std::string_view prefix : {"Patient/", "patient/"}) {
    if (target.substr(0, prefix.size()) == prefix) target.remove_prefix(prefix.size());
  }
  if (target.size() == a.target.size() || !ValidId(target)) {
    return Error(ErrorCode::kInvalidParameter, "the target is patient/ID (a valid FHIR id)");
  }
  if (!ValidTenant(a.tenant)) return Error(ErrorCode::kInvalidParameter, "invalid --tenant");
  if (a.reason.empty() || a.reason.size() > 1000) {
    return Error(ErrorCode::kInvalidParameter, "--reason is required (at most 1000 characters)");
  }
  const std::string patient(target);
  auto s = OpenAsKeyAdmin(a.admin, "erase");
  if (!s.ok()) return s.status();
  Session& session = **s;
  // The act is on the trail before anything is destroyed.
  audit::AuditRecord intent;
  intent.action = "key.erase";
  intent.outcome = "requested";
  intent.resource_type = "Patient";
  intent.resource_id = patient;
  intent.patient_id = patient;
  intent.decision = "tenant=" + a.tenant + " reason=" + a.reason;
  if (auto st = session.Audit(intent); !st.ok()) return st;

  auto destroyed = session.inst->keyring().ErasePatient(a.tenant, patient);
  if (!destroyed.ok()) return destroyed.status();
  auto ids = session.inst->keyring().PatientKeyIds(a.tenant, patient);
  if (!ids.ok()) return ids.status();
  auto store = OpenStore(*session.inst);
  if (!store.ok()) return store.status();
  auto report = (*store)->ErasePatient(a.tenant, patient, *ids);
  // A second pass: a write the server sealed just before the keys went, and
  // committed after the first pass, is removed too (new writes about the
  // patient are refused from the moment the keys are destroyed).
  if (report.ok()) {
    auto again = (*store)->ErasePatient(a.tenant, patient, *ids);
    if (!again.ok()) {
      report = again.status();
    } else {
      report->resources += again->resources;
      report->versions += again->versions;
      report->idempotency_records += again->idempotency_records;
    }
  }
  if (!report.ok()) {
    out << "the patient's keys are destroyed, but removing the records failed: run the same "
           "command again to finish\n";
    return report.status();
  }
  audit::AuditRecord done = intent;
  done.request_id.clear();
  done.time.clear();
  done.outcome = "success";
  done.count = static_cast<int64_t>(report->resources);
  if (auto st = session.Audit(done); !st.ok()) return st;
  out << "erased Patient/" << patient << " (tenant " << a.tenant << "): " << *destroyed
      << " data keys destroyed, " << report->resources << " resources (" << report->versions
      << " versions) removed, " << report->idempotency_records
      << " stored replay responses removed; copies in backups can no longer be decrypted, and "
         "new records about the patient are refused\n";
  return session.Finish();
}

absl::Status TenantDecommission(const KeyAdminArgs& a, const std::string& tenant,
                                const std::string& confirm, std::ostream& out) {
  if (!ValidTenant(tenant)) return Error(ErrorCode::kInvalidParameter, "invalid tenant");
  if (confirm != tenant) {
    return Error(
        ErrorCode::kInvalidParameter,
        "decommissioning destroys every key of the tenant: repeat its name with --confirm");
  }
  auto s = OpenAsKeyAdmin(a, "decommission");
  if (!s.ok()) return s.status();
  Session& session = **s;
  audit::AuditRecord intent;
  intent.action = "key.decommission";
  intent.outcome = "requested";
  intent.decision = "tenant=" + tenant;
  if (auto st = session.Audit(intent); !st.ok()) return st;
  auto n = session.inst->keyring().DestroyTenant(tenant);
  if (!n.ok()) return n.status();
  // The ciphertext is unreadable now; the rows go too (index values and
  // compartment ids are not encrypted).
  auto store = OpenStore(*session.inst);
  if (!store.ok()) return store.status();
  auto purged = (*store)->PurgeTenant(tenant);
  if (!purged.ok()) {
    out << "the tenant's keys are destroyed, but removing its rows failed: run the same command "
           "again to finish\n";
    return purged.status();
  }
  intent.outcome = "success";
  intent.count = static_cast<int64_t>(*n);
  intent.request_id.clear();
  intent.time.clear();
  if (auto st = session.Audit(intent); !st.ok()) return st;
  out << "tenant " << tenant << " decommissioned: its tenant keys and " << *n
      << " data keys are destroyed, " << *purged
      << " stored versions removed; copies in backups can no longer be decrypted\n";
  return session.Finish();
}

}  // namespace fhirward::server
