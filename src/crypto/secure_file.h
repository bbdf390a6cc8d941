// Small POSIX file helpers for key material: exclusive creation with mode 0600
// and fsync, and reads that refuse files other users can read or write.
// Failures are kInternal with a detail naming the path (never the contents).
#ifndef FHIRWARD_CRYPTO_SECURE_FILE_H_
#define FHIRWARD_CRYPTO_SECURE_FILE_H_

#include <sys/types.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/secret_bytes.h"

namespace fhirward::crypto {

// Creates `path` (O_CREAT|O_EXCL|O_NOFOLLOW) with `mode`, writes `data`, fsyncs
// the file and its directory. Fails if the file exists; removes a partial file
// on failure.
absl::Status WriteNewFile(const std::string& path, std::string_view data, mode_t mode = 0600);

// Writes `data` to a fresh temporary file beside `path` with `mode`, fsyncs it
// and renames it over `path` (atomic replace), then fsyncs the directory.
absl::Status ReplaceFile(const std::string& path, std::string_view data, mode_t mode);

// Reads a regular file of at most `max_bytes` bytes that is not accessible by
// group or other (mode & 077 == 0); the error says to chmod 600.
absl::StatusOr<SecretBytes> ReadPrivateFile(const std::string& path, size_t max_bytes);

// Creates `dir` and missing parents with mode 0700 (existing ones are left alone).
absl::Status MakePrivateDirs(const std::string& dir);

}  // namespace fhirward::crypto

#endif  // FHIRWARD_CRYPTO_SECURE_FILE_H_
