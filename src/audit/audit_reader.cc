#include "audit/audit_reader.h"

#include <sqlite3.h>

#include <algorithm>
#include <climits>
#include <utility>

#include "audit/internal/sqlite.h"
#include "audit/merkle.h"
#include "common/error.h"

namespace fhirward::audit {

using namespace internal;  // NOLINT(build/namespaces): the SQLite helpers

struct AuditReader::Impl {
  std::mutex mu;
  DbPtr db;
  StmtPtr node, leaves, latest_head, head_at, record, by_seq, after, last;
  // Null on a file whose writer has not created the term index yet: every
  // record is then after the mark and read directly.
  StmtPtr by_term, terms_mark;

  // A read transaction for the duration of one call.
  class Snapshot {
   public:
    explicit Snapshot(sqlite3* db) : db_(db) {
      ok_ = sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr) == SQLITE_OK;
    }
    ~Snapshot() {
      if (ok_) sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
    }
    bool ok() const { return ok_; }

   private:
    sqlite3* db_;
    bool ok_ = false;
  };

  absl::StatusOr<int64_t> Leaves() {
    StmtScope scope(leaves.get());
    int rc = sqlite3_step(leaves.get());
    if (rc != SQLITE_ROW) return Unavailable("audit: reading the tree failed", db.get(), rc);
    if (sqlite3_column_type(leaves.get(), 0) == SQLITE_NULL) return 0;
    return sqlite3_column_int64(leaves.get(), 0) + 1;
  }

  absl::StatusOr<std::optional<TreeHead>> Head(sqlite3_stmt* s) {
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) return std::optional<TreeHead>();
    if (rc != SQLITE_ROW) return Unavailable("audit: reading the tree heads failed", db.get(), rc);
    TreeHead h;
    h.tree_size = sqlite3_column_int64(s, 0);
    h.root = std::string(ColumnBlob(s, 1));
    h.timestamp_ms = sqlite3_column_int64(s, 2);
    h.jws = std::string(ColumnText(s, 3));
    return std::optional<TreeHead>(std::move(h));
  }
};

AuditReader::AuditReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AuditReader::~AuditReader() = default;

absl::StatusOr<std::unique_ptr<AuditReader>> AuditReader::Open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  impl->db.reset(raw);
  if (rc != SQLITE_OK) return Unavailable("audit: cannot open " + path, raw, rc);
  sqlite3_busy_timeout(raw, 5000);
  for (auto [slot, sql] : {
           std::pair{&impl->node, kSelectNode},
           std::pair{&impl->leaves, "SELECT max(idx) FROM audit_nodes WHERE level = 0"},
           std::pair{&impl->latest_head,
                     "SELECT tree_size, root, timestamp, jws FROM audit_tree_heads "
                     "ORDER BY tree_size DESC LIMIT 1"},
           std::pair{&impl->head_at,
                     "SELECT tree_size, root, timestamp, jws FROM audit_tree_heads "
                     "WHERE tree_size = ?1"},
           std::pair{&impl->record, "SELECT record FROM audit_records WHERE seq = ?1"},
           std::pair{&impl->after,
                     "SELECT seq, record FROM audit_records WHERE seq > ?1 ORDER BY seq LIMIT ?2"},
           std::pair{&impl->last, "SELECT max(seq) FROM audit_records"},
           std::pair{&impl->by_seq,
                     "SELECT seq FROM audit_records WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2"},
       }) {
    auto st = Prepare(raw, sql);
    if (!st.ok()) return st.status();
    *slot = std::move(*st);
  }
  auto by_term = Prepare(raw,
                         "SELECT seq FROM audit_postings WHERE bucket = ?1 AND k = ?2 AND v = ?3 "
                         "AND seq < ?4 ORDER BY seq DESC LIMIT ?5");
  auto mark = Prepare(raw, "SELECT seq FROM audit_postings_mark WHERE id = 1");
  if (by_term.ok() && mark.ok()) {
    impl->by_term = std::move(*by_term);
    impl->terms_mark = std::move(*mark);
  }
  return std::unique_ptr<AuditReader>(new AuditReader(std::move(impl)));
}

absl::StatusOr<int64_t> AuditReader::TreeSize() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->Leaves();
}

absl::StatusOr<std::optional<TreeHead>> AuditReader::LatestTreeHead() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  StmtScope scope(impl_->latest_head.get());
  return impl_->Head(impl_->latest_head.get());
}

absl::StatusOr<std::optional<TreeHead>> AuditReader::TreeHeadAt(int64_t tree_size) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  StmtScope scope(impl_->head_at.get());
  sqlite3_bind_int64(impl_->head_at.get(), 1, tree_size);
  return impl_->Head(impl_->head_at.get());
}

absl::StatusOr<StoredRecord> AuditReader::Record(int64_t seq) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  sqlite3_stmt* s = impl_->record.get();
  StmtScope scope(s);
  sqlite3_bind_int64(s, 1, seq);
  int rc = sqlite3_step(s);
  if (rc == SQLITE_DONE)
    return Error(ErrorCode::kNotFound, "no audit record " + std::to_string(seq));
  if (rc != SQLITE_ROW) return Unavailable("audit: reading a record failed", impl_->db.get(), rc);
  return StoredRecord{seq, std::string(ColumnText(s, 0))};
}

absl::StatusOr<std::vector<std::string>> AuditReader::InclusionProof(int64_t seq,
                                                                     int64_t tree_size) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl::Snapshot snap(impl_->db.get());
  auto leaves = impl_->Leaves();
  if (!leaves.ok()) return leaves.status();
  if (seq < 1 || tree_size < seq || tree_size > *leaves) {
    return Error(ErrorCode::kInvalidParameter,
                 "need 1 <= record <= tree_size <= " + std::to_string(*leaves));
  }
  SqliteNodes nodes(impl_->node.get());
  return merkle::InclusionProof(nodes, static_cast<uint64_t>(seq - 1),
                                static_cast<uint64_t>(tree_size));
}

absl::StatusOr<std::vector<std::string>> AuditReader::ConsistencyProof(int64_t first,
                                                                       int64_t second) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl::Snapshot snap(impl_->db.get());
  auto leaves = impl_->Leaves();
  if (!leaves.ok()) return leaves.status();
  if (first < 1 || second < first || second > *leaves) {
    return Error(ErrorCode::kInvalidParameter,
                 "need 1 <= first <= second <= " + std::to_string(*leaves));
  }
  SqliteNodes nodes(impl_->node.get());
  return merkle::ConsistencyProof(nodes, static_cast<uint64_t>(first),
                                  static_cast<uint64_t>(second));
}

// Candidates come in rounds, newest first, and each round is checked against
// the records before the next is read, so a page that fills early reads no
// further: without terms, the records themselves; with terms, the records
// after the index mark (the writer stores terms in batches), then the index,
// one bucket at a time from the newest.
absl::StatusOr<AuditPage> AuditReader::Search(const AuditQuery& q) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl::Snapshot snap(impl_->db.get());
  sqlite3* db = impl_->db.get();
  const int limit = std::max(0, q.limit);
  const int max_scan = std::max(1, q.max_scan);
  const int64_t start = q.before_seq > 0 ? q.before_seq : INT64_MAX;
  AuditPage page;
  if (limit == 0) return page;

  int64_t mark = 0;  // records up to it are in the index
  if (!q.terms.empty() && impl_->terms_mark) {
    sqlite3_stmt* s = impl_->terms_mark.get();
    StmtScope scope(s);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
      mark = sqlite3_column_int64(s, 0);
    } else if (rc != SQLITE_DONE) {
      return Unavailable("audit: reading the terms mark failed", db, rc);
    }
  }
  const bool use_index = !q.terms.empty() && impl_->by_term != nullptr;
  if (!use_index) mark = 0;
  const int64_t below = std::min(start, mark + 1);  // index rows: seq < below
  int64_t cursor = start;                           // records phase: seq < cursor
  bool records_phase = true;
  int64_t bucket = below > 1 ? TermBucket(below - 1) : -1;
  std::vector<int64_t> round;
  // The next non-empty round into `round`; false when there is none.
  auto next_round = [&]() -> absl::StatusOr<bool> {
    round.clear();
    while (round.empty()) {
      if (records_phase) {
        sqlite3_stmt* s = impl_->by_seq.get();
        StmtScope scope(s);
        sqlite3_bind_int64(s, 1, cursor);
        sqlite3_bind_int(s, 2, 256);
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW && sqlite3_column_int64(s, 0) > mark) {
          round.push_back(sqlite3_column_int64(s, 0));
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
          return Unavailable("audit: search failed", db, rc);
        if (round.empty()) {
          if (!use_index) return false;
          records_phase = false;
          continue;
        }
        cursor = round.back();
        continue;
      }
      if (bucket < 0) return false;
      const auto& [k, values] = q.terms.front();
      for (const std::string& v : values) {
        sqlite3_stmt* s = impl_->by_term.get();
        StmtScope scope(s);
        sqlite3_bind_int64(s, 1, bucket);
        sqlite3_bind_text(s, 2, k.data(), static_cast<int>(k.size()), SQLITE_STATIC);
        sqlite3_bind_text(s, 3, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
        sqlite3_bind_int64(s, 4, below);
        sqlite3_bind_int(s, 5, max_scan + 1);
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) round.push_back(sqlite3_column_int64(s, 0));
        if (rc != SQLITE_DONE) return Unavailable("audit: search failed", db, rc);
      }
      --bucket;
      std::sort(round.rbegin(), round.rend());
      round.erase(std::unique(round.begin(), round.end()), round.end());
    }
    return true;
  };

  int scanned = 0;
  int64_t last_examined = 0;
  for (;;) {
    auto more = next_round();
    if (!more.ok()) return more.status();
    if (!*more) return page;  // every candidate examined
    for (size_t i = 0; i < round.size(); ++i) {
      const int64_t seq = round[i];
      if (scanned == max_scan) {  // a short page: go on below the last one examined
        page.next_before = last_examined;
        return page;
      }
      ++scanned;
      last_examined = seq;
      std::string json;
      {
        sqlite3_stmt* s = impl_->record.get();
        StmtScope scope(s);
        sqlite3_bind_int64(s, 1, seq);
        int rc = sqlite3_step(s);
        if (rc == SQLITE_DONE) continue;
        if (rc != SQLITE_ROW) return Unavailable("audit: reading a record failed", db, rc);
        json = std::string(ColumnText(s, 0));
      }
      auto rec = AuditRecord::FromJson(json);
      if (!rec.ok()) continue;
      if (!q.time_from.empty() && rec->time < q.time_from) continue;
      if (!q.time_to.empty() && rec->time >= q.time_to) continue;
      const auto terms = IndexTerms(*rec);
      bool match = true;
      for (const auto& [k, values] : q.terms) {
        bool any = false;
        for (const std::string& v : values) {
          any = any || std::binary_search(terms.begin(), terms.end(), std::make_pair(k, v));
        }
        if (!any) {
          match = false;
          break;
        }
      }
      if (!match) continue;
      page.records.push_back({seq, std::move(json)});
      if (page.records.size() == static_cast<size_t>(limit)) {
        // A next page only when there is another candidate.
        bool another = i + 1 < round.size();
        if (!another) {
          auto m = next_round();
          if (!m.ok()) return m.status();
          another = *m;
        }
        if (another) page.next_before = seq;
        return page;
      }
    }
  }
}

absl::StatusOr<std::vector<StoredRecord>> AuditReader::After(int64_t after_seq, int limit) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  sqlite3_stmt* s = impl_->after.get();
  StmtScope scope(s);
  sqlite3_bind_int64(s, 1, after_seq);
  sqlite3_bind_int(s, 2, std::max(1, limit));
  std::vector<StoredRecord> out;
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    out.push_back({sqlite3_column_int64(s, 0), std::string(ColumnText(s, 1))});
  }
  if (rc != SQLITE_DONE) return Unavailable("audit: reading records failed", impl_->db.get(), rc);
  return out;
}

absl::StatusOr<int64_t> AuditReader::LastSeq() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  sqlite3_stmt* s = impl_->last.get();
  StmtScope scope(s);
  int rc = sqlite3_step(s);
  if (rc != SQLITE_ROW)
    return Unavailable("audit: reading the last record failed", impl_->db.get(), rc);
  return sqlite3_column_int64(s, 0);
}

absl::StatusOr<std::string> AuditReader::RootAt(int64_t tree_size) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl::Snapshot snap(impl_->db.get());
  auto leaves = impl_->Leaves();
  if (!leaves.ok()) return leaves.status();
  if (tree_size < 0 || tree_size > *leaves) {
    return Error(ErrorCode::kInvalidParameter, "need 0 <= tree_size <= " + std::to_string(*leaves));
  }
  SqliteNodes nodes(impl_->node.get());
  return merkle::Root(nodes, static_cast<uint64_t>(tree_size));
}

}  // namespace fhirward::audit
