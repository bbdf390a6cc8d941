// SQLite helpers shared by the audit writer, verifier and reader.
#ifndef FHIRWARD_AUDIT_INTERNAL_SQLITE_H_
#define FHIRWARD_AUDIT_INTERNAL_SQLITE_H_

#include <sqlite3.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "audit/merkle.h"
#include "common/error.h"

namespace fhirward::audit::internal {

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;

struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

inline std::string SqliteMessage(sqlite3* db, int rc) {
  std::string msg = sqlite3_errstr(rc);
  if (db != nullptr) {
    const char* m = sqlite3_errmsg(db);
    if (m != nullptr && msg != m) {
      msg += ": ";
      msg += m;
    }
  }
  return msg;
}

inline absl::Status Unavailable(std::string_view what, sqlite3* db, int rc) {
  std::string detail(what);
  detail += ": ";
  detail += SqliteMessage(db, rc);
  return Error(ErrorCode::kAuditUnavailable, detail);
}

inline absl::StatusOr<StmtPtr> Prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* s = nullptr;
  int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(s);
    return Unavailable(std::string("audit: prepare failed (") + sql + ")", db, rc);
  }
  return StmtPtr(s);
}

inline absl::Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string detail = std::string("audit: ") + (err != nullptr ? err : sqlite3_errstr(rc));
    sqlite3_free(err);
    return Error(ErrorCode::kAuditUnavailable, detail);
  }
  return absl::OkStatus();
}

inline std::string_view ColumnBlob(sqlite3_stmt* s, int col) {
  const void* p = sqlite3_column_blob(s, col);
  int n = sqlite3_column_bytes(s, col);
  if (p == nullptr || n <= 0) return {};
  return std::string_view(static_cast<const char*>(p), static_cast<size_t>(n));
}

inline std::string_view ColumnText(sqlite3_stmt* s, int col) {
  const unsigned char* p = sqlite3_column_text(s, col);
  int n = sqlite3_column_bytes(s, col);
  if (p == nullptr || n <= 0) return {};
  return std::string_view(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
}

// Resets and unbinds on scope exit, so a statement is always reusable.
class StmtScope {
 public:
  explicit StmtScope(sqlite3_stmt* s) : s_(s) {}
  ~StmtScope() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  StmtScope(const StmtScope&) = delete;
  StmtScope& operator=(const StmtScope&) = delete;

 private:
  sqlite3_stmt* s_;
};

// Perfect subtrees stored in audit_nodes(level, idx, hash), through one
// prepared statement of the caller's connection.
class SqliteNodes final : public merkle::NodeSource {
 public:
  explicit SqliteNodes(sqlite3_stmt* select_node) : s_(select_node) {}
  absl::StatusOr<std::string> Perfect(int level, uint64_t index) override {
    StmtScope scope(s_);
    sqlite3_bind_int(s_, 1, level);
    sqlite3_bind_int64(s_, 2, static_cast<int64_t>(index));
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) {
      std::string_view h = ColumnBlob(s_, 0);
      if (h.size() != merkle::kHashBytes) {
        return Error(ErrorCode::kAuditUnavailable, "audit: malformed tree node");
      }
      return std::string(h);
    }
    if (rc == SQLITE_DONE) {
      return Error(ErrorCode::kAuditUnavailable, "audit: tree node " + std::to_string(level) + "/" +
                                                     std::to_string(index) + " missing");
    }
    return Unavailable("audit: reading a tree node failed", sqlite3_db_handle(s_), rc);
  }

 private:
  sqlite3_stmt* s_;
};

inline constexpr const char* kSelectNode =
    "SELECT hash FROM audit_nodes WHERE level = ?1 AND idx = ?2";

// Search terms are filed by bucket, 2^13 consecutive records each
// (audit_postings(bucket, k, v, seq)), so that a batch of terms lands in the
// pages of one small subtree instead of at random places in an index as large
// as the trail. A search probes the buckets newest first.
inline constexpr int kTermBucketShift = 13;
inline int64_t TermBucket(int64_t seq) { return seq >> kTermBucketShift; }

}  // namespace fhirward::audit::internal

#endif  // FHIRWARD_AUDIT_INTERNAL_SQLITE_H_
