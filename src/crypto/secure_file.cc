#include "crypto/secure_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"

namespace fhirward::crypto {
namespace {

std::string Errno(int err) { return std::strerror(err); }

absl::Status IoError(std::string_view what, const std::string& path, int err) {
  std::string detail(what);
  detail += " ";
  detail += path;
  detail += ": ";
  detail += Errno(err);
  return Error(ErrorCode::kInternal, detail);
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int Release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_;
};

std::string DirOf(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError("cannot write", path, errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// Best effort: makes a new directory entry durable.
void SyncDir(const std::string& path) {
  int fd = ::open(DirOf(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Writes and closes `fd` (which refers to `path`); removes `path` on failure.
absl::Status FillAndClose(int raw_fd, const std::string& path, std::string_view data, mode_t mode) {
  Fd fd(raw_fd);
  absl::Status s = WriteAll(fd.get(), data, path);
  // The umask may have narrowed the mode; never widens it beyond `mode`.
  if (s.ok() && ::fchmod(fd.get(), mode) != 0) s = IoError("cannot chmod", path, errno);
  if (s.ok() && ::fsync(fd.get()) != 0) s = IoError("cannot fsync", path, errno);
  if (s.ok() && ::close(fd.Release()) != 0) s = IoError("cannot close", path, errno);
  if (!s.ok()) ::unlink(path.c_str());
  return s;
}

}  // namespace

absl::Status WriteNewFile(const std::string& path, std::string_view data, mode_t mode) {
  int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) return IoError("cannot create", path, errno);
  absl::Status s = FillAndClose(fd, path, data, mode);
  if (s.ok()) SyncDir(path);
  return s;
}

absl::Status ReplaceFile(const std::string& path, std::string_view data, mode_t mode) {
  std::string tmp = path + ".tmp-" + HexEncode(RandomBytes(6));
  int fd = ::open(tmp.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) return IoError("cannot create", tmp, errno);
  if (absl::Status s = FillAndClose(fd, tmp, data, mode); !s.ok()) return s;
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return IoError("cannot rename onto", path, err);
  }
  SyncDir(path);
  return absl::OkStatus();
}

absl::StatusOr<SecretBytes> ReadPrivateFile(const std::string& path, size_t max_bytes) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (fd.get() < 0) return IoError("cannot open", path, errno);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return IoError("cannot stat", path, errno);
  if (!S_ISREG(st.st_mode)) {
    return Error(ErrorCode::kInternal, path + " is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Error(ErrorCode::kInternal, path + " is accessible by group or other (mode " + mode +
                                           "); run: chmod 600 " + path);
  }
  if (st.st_size < 0 || static_cast<size_t>(st.st_size) > max_bytes) {
    return Error(ErrorCode::kInternal,
                 path + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  SecretBytes buf(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::read(fd.get(), buf.UnsafeMutableData() + got, buf.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError("cannot read", path, errno);
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got != buf.size()) return Error(ErrorCode::kInternal, path + " changed while being read");
  return buf;
}

absl::Status MakePrivateDirs(const std::string& dir) {
  if (dir.empty()) return Error(ErrorCode::kInternal, "empty directory name");
  for (size_t pos = 1;; ++pos) {
    pos = dir.find('/', pos);
    std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) {
      return IoError("cannot create directory", prefix, errno);
    }
    if (pos == std::string::npos) break;
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return IoError("cannot stat", dir, errno);
  if (!S_ISDIR(st.st_mode)) return Error(ErrorCode::kInternal, dir + " is not a directory");
  return absl::OkStatus();
}

}  // namespace fhirward::crypto
