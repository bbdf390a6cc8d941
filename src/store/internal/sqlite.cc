#include "store/internal/sqlite.h"

#include <string>

#include "common/error.h"

namespace fhirward::store::internal {
namespace {
absl::Status SqlError(sqlite3* db, std::string_view what) {
  std::string detail = std::string(what) + ": " + (db ? sqlite3_errmsg(db) : "out of memory");
  // Primary codes: extended result codes are on (SQLITE_BUSY_SNAPSHOT, ...).
  int code = (db ? sqlite3_errcode(db) : SQLITE_NOMEM) & 0xff;
  if (code == SQLITE_BUSY || code == SQLITE_LOCKED) return Error(ErrorCode::kUnavailable, detail);
  if (code == SQLITE_INTERRUPT) {
    return Error(ErrorCode::kTooCostly, "the query went beyond its time budget");
  }
  return Error(ErrorCode::kInternal, detail);
}
}  // namespace

absl::StatusOr<bool> Stmt::Step() {
  int rc = sqlite3_step(s_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return SqlError(db_, "sqlite step");
}

absl::Status Stmt::Run() {
  for (;;) {
    auto r = Step();
    if (!r.ok()) return r.status();
    if (!*r) return absl::OkStatus();
  }
}

absl::StatusOr<std::unique_ptr<Db>> Db::Open(const std::string& path, bool read_only) {
  sqlite3* db = nullptr;
  int flags = SQLITE_OPEN_NOMUTEX |
              (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (sqlite3_open_v2(path.c_str(), &db, flags, nullptr) != SQLITE_OK) {
    absl::Status s = SqlError(db, "open database");
    sqlite3_close(db);
    return s;
  }
  sqlite3_busy_timeout(db, 5000);
  sqlite3_extended_result_codes(db, 1);
  // A writer touches many index pages per commit: keep them cached (32 MB);
  // each reader keeps 8 MB.
  sqlite3_exec(db, read_only ? "PRAGMA cache_size=-8192" : "PRAGMA cache_size=-32768", nullptr,
               nullptr, nullptr);
  return std::unique_ptr<Db>(new Db(db));
}

Db::~Db() {
  for (auto& [sql, s] : idle_) sqlite3_finalize(s);
  sqlite3_close_v2(db_);
}

absl::Status Db::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown";
    sqlite3_free(err);
    return Error(ErrorCode::kInternal, "sqlite exec: " + msg);
  }
  return absl::OkStatus();
}

absl::StatusOr<Stmt> Db::Prepare(std::string_view sql) {
  std::string key(sql);
  if (auto it = idle_.find(key); it != idle_.end()) {
    sqlite3_stmt* s = it->second;
    idle_.erase(it);
    return Stmt(db_, s, this, std::move(key));
  }
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT,
                         &s, nullptr) != SQLITE_OK) {
    return SqlError(db_, "prepare");
  }
  return Stmt(db_, s, this, std::move(key));
}

void Db::Return(std::string sql, sqlite3_stmt* s) {
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  // Bounded: queries built from optional clauses have a few shapes each.
  if (idle_.size() < 64 && idle_.emplace(std::move(sql), s).second) return;
  sqlite3_finalize(s);
}

Stmt::~Stmt() {
  if (s_ == nullptr) return;
  if (owner_ != nullptr) {
    owner_->Return(std::move(sql_), s_);
  } else {
    sqlite3_finalize(s_);
  }
}

}  // namespace fhirward::store::internal
