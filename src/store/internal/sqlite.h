// Small RAII helpers over the sqlite3 C API, shared by the store backends.
// Not thread-safe: one Db per thread at a time.
#ifndef FHIRWARD_STORE_INTERNAL_SQLITE_H_
#define FHIRWARD_STORE_INTERNAL_SQLITE_H_

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fhirward::store::internal {

class Db;

// A prepared statement. One from Db::Prepare goes back to its Db's cache when
// destroyed (reset, bindings cleared), so it must not outlive the Db.
class Stmt {
 public:
  Stmt() = default;
  Stmt(sqlite3* db, sqlite3_stmt* s, Db* owner = nullptr, std::string sql = {})
      : db_(db), s_(s), owner_(owner), sql_(std::move(sql)) {}
  ~Stmt();
  Stmt(Stmt&& o) noexcept : db_(o.db_), s_(o.s_), owner_(o.owner_), sql_(std::move(o.sql_)) {
    o.s_ = nullptr;
  }
  Stmt& operator=(Stmt&& o) noexcept {
    std::swap(db_, o.db_);
    std::swap(s_, o.s_);
    std::swap(owner_, o.owner_);
    std::swap(sql_, o.sql_);
    return *this;
  }

  Stmt& Reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
    return *this;
  }
  Stmt& Bind(int i, std::string_view v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, std::string_view v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& BindDouble(int i, double v) {
    sqlite3_bind_double(s_, i, v);
    return *this;
  }
  Stmt& BindNull(int i) {
    sqlite3_bind_null(s_, i);
    return *this;
  }
  // true: a row is available; false: done. Errors become a Status.
  absl::StatusOr<bool> Step();
  absl::Status Run();  // step to completion, expecting no rows

  int64_t Int(int col) const { return sqlite3_column_int64(s_, col); }
  std::string Text(int col) const {
    auto p = reinterpret_cast<const char*>(sqlite3_column_text(s_, col));
    return p ? std::string(p, sqlite3_column_bytes(s_, col)) : std::string();
  }
  std::string Blob(int col) const {
    auto p = static_cast<const char*>(sqlite3_column_blob(s_, col));
    return p ? std::string(p, sqlite3_column_bytes(s_, col)) : std::string();
  }
  bool IsNull(int col) const { return sqlite3_column_type(s_, col) == SQLITE_NULL; }

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* s_ = nullptr;
  Db* owner_ = nullptr;
  std::string sql_;
};

class Db {
 public:
  static absl::StatusOr<std::unique_ptr<Db>> Open(const std::string& path, bool read_only);
  ~Db();
  absl::Status Exec(const char* sql);
  // Prepares `sql`, reusing a cached statement when one is idle (parsing SQL
  // is most of the cost of a point read).
  absl::StatusOr<Stmt> Prepare(std::string_view sql);
  sqlite3* raw() { return db_; }

 private:
  friend class Stmt;
  explicit Db(sqlite3* db) : db_(db) {}
  void Return(std::string sql, sqlite3_stmt* s);
  sqlite3* db_;
  std::unordered_map<std::string, sqlite3_stmt*> idle_;
};

}  // namespace fhirward::store::internal

#endif  // FHIRWARD_STORE_INTERNAL_SQLITE_H_
