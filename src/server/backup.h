// Encrypted backups with a signed manifest, and verified restore.
//
// `fhirward backup --to DIR` writes, into a new directory DIR:
//   manifest.json   backup id, time, instance issuer, KMS, the backup key
//                   wrapped under the KEK, and every part: name, plaintext size
//                   and SHA-256, ciphertext SHA-256
//   manifest.sig    ES256 signature of manifest.json's exact bytes by the
//                   instance key (DATA_DIR/keys/signing-es256.pem)
//   parts/NNN.enc   one per part, encrypted in 1 MiB chunks with AES-256-GCM
//                   under a per-part key HKDF(backup key, part name); each
//                   chunk's associated data binds the backup id, the part
//                   name, the chunk index and whether it is the last one, so
//                   chunks cannot be reordered, dropped or swapped.
//
// The parts are consistent online snapshots (SQLite backup API, in memory:
// no plaintext temporary file) of the resource, OAuth, policy and audit
// databases, and the instance's files (identity, wrapped secrets, signing
// keys, TLS material, kms.toml). Never part of a backup: the key vault
// (db/keys.db) and the KEK. A restore takes both from the live instance, so
// a patient erased after the backup was made restores without their records
// (their data keys are gone), and a backup is useless without the KMS.
//
// `fhirward restore --from DIR --to NEWDIR [--verify]` checks the signature
// (with the live instance's key) and every hash before writing anything,
// decrypts into NEWDIR, copies the vault and KEK configuration from the live
// instance, removes the records of erased patients, and with --verify checks
// the audit chain and opens a sample of records.
#ifndef FHIRWARD_SERVER_BACKUP_H_
#define FHIRWARD_SERVER_BACKUP_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"

namespace fhirward::server {

struct BackupArgs {
  std::string data_dir;
  std::string to;
};
absl::Status Backup(const BackupArgs& a, std::ostream& out);

struct RestoreArgs {
  // The live instance: its KMS, key vault and instance key. A restore copies
  // the vault, so it runs as a key-admin (password, then TOTP, on stdin).
  std::string data_dir;
  std::string admin;
  std::string password;
  std::string totp;
  std::string from;
  std::string to;  // a new data directory (must not exist)
  bool verify = false;
  size_t sample = 1000;  // records opened by --verify
};
absl::Status Restore(const RestoreArgs& a, std::ostream& out);

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_BACKUP_H_
