// The audit trail's Merkle tree, signed tree heads and proofs (audit_log.h,
// audit_reader.h): what an auditor holding a head can check.
#include <sqlite3.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "audit/audit_log.h"
#include "audit/audit_reader.h"
#include "audit/merkle.h"
#include "common/encoding.h"
#include "common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jose/jws.h"
#include "json/value.h"

namespace fhirward::audit {
namespace {

using ::testing::HasSubstr;

SecretBytes MacKey() { return SecretBytes(std::string(32, 'k')); }

AuditRecord Rec(int i, const std::string& who = "user-1") {
  AuditRecord r;
  r.time = "2026-12-05T12:00:00." + std::to_string(100000 + i) + "Z";
  r.request_id = "req-" + std::to_string(i);
  r.subject = who;
  r.action = "read";
  r.resource_type = "Patient";
  r.resource_id = "p" + std::to_string(i);
  r.outcome = "success";
  r.status_code = 200;
  return r;
}

// The first column of the first row, as an integer.
int64_t Query(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sql;
  int64_t v = -1;
  if (st != nullptr && sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

void Sql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  EXPECT_EQ(rc, SQLITE_OK) << (err ? err : "") << " in " << sql;
  sqlite3_free(err);
  sqlite3_close(db);
}

class MerkleLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "merkle_log_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/audit.db";
    key_ = jose::SigningKey::Generate(jose::Algorithm::kES256, "log-1").value();
    other_ = jose::SigningKey::Generate(jose::Algorithm::kES256, "log-1").value();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  AuditOptions Options(std::chrono::milliseconds interval = std::chrono::milliseconds(0)) {
    AuditOptions o;
    o.tree_head_key = &key_;
    o.log_id = "https://fhirward.test";
    o.tree_head_interval = interval;
    return o;
  }
  // Terms stored once `batch` records wait for them or the oldest waited `delay`.
  AuditOptions Batched(size_t batch, std::chrono::milliseconds delay = std::chrono::hours(1)) {
    AuditOptions o = Options();
    o.terms_batch = batch;
    o.terms_delay = delay;
    return o;
  }
  // The database as a process would leave it if stopped now (its WAL included).
  static void CopyLive(const std::string& from, const std::string& to) {
    std::filesystem::copy_file(from, to);
    if (std::filesystem::exists(from + "-wal"))
      std::filesystem::copy_file(from + "-wal", to + "-wal");
  }
  std::unique_ptr<AuditLog> Open(const std::string& path, const AuditOptions& o) {
    auto log = AuditLog::Open(path, MacKey(), o);
    EXPECT_TRUE(log.ok()) << log.status();
    return log.ok() ? std::move(*log) : nullptr;
  }
  // Appends records [from, to] and returns the head signed after them.
  TreeHead Write(
      const std::string& path, int from, int to,
      const std::function<AuditRecord(int)>& make = [](int i) { return Rec(i); }) {
    auto log = Open(path, Options());
    for (int i = from; i <= to; ++i) EXPECT_TRUE(log->Append(make(i)).ok());
    auto head = log->SignTreeHead();
    EXPECT_TRUE(head.ok()) << head.status();
    log->Close();
    return head.ok() ? *head : TreeHead{};
  }
  VerifyReport Verify(const std::string& path, std::vector<std::string> held = {},
                      const jose::SigningKey* key = nullptr) {
    jose::PublicKey pub = (key ? *key : key_).public_key();
    VerifyOptions o{.tree_head_key = &pub, .held_heads = std::move(held)};
    auto r = VerifyAuditLog(path, MacKey(), o);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : VerifyReport{};
  }
  std::unique_ptr<AuditReader> Reader(const std::string& path) {
    auto r = AuditReader::Open(path);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(*r) : nullptr;
  }

  std::string dir_, path_;
  jose::SigningKey key_, other_;
};

TEST_F(MerkleLogTest, SignedHeadNamesTheRootOfTheRecordsAndVerifiesWithThePublicKey) {
  TreeHead head = Write(path_, 1, 13);
  EXPECT_EQ(head.tree_size, 13);
  // The root is RFC 6962 MTH over the records' JSON, recomputed independently.
  merkle::MemoryNodes nodes;
  for (int i = 1; i <= 13; ++i) nodes.Append(merkle::LeafHash(Rec(i).ToJson()));
  EXPECT_EQ(HexEncode(head.root), HexEncode(*merkle::Root(nodes, 13)));
  auto parsed = ParseTreeHead(head.jws, key_.public_key());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->tree_size, 13);
  EXPECT_EQ(parsed->root, head.root);
  EXPECT_EQ(parsed->timestamp_ms, head.timestamp_ms);
  // Another key, or an edited payload, does not verify.
  EXPECT_FALSE(ParseTreeHead(head.jws, other_.public_key()).ok());
  std::string edited = head.jws;
  edited[edited.find('.') + 3] ^= 1;
  EXPECT_FALSE(ParseTreeHead(edited, key_.public_key()).ok());

  VerifyReport r = Verify(path_);
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.tree_heads, 1);
  EXPECT_EQ(r.root, HexEncode(head.root));
  EXPECT_THAT(r.summary, HasSubstr("1 signed tree heads verified"));
}

TEST_F(MerkleLogTest, ProofsFromTheStoreVerifyForEveryRecordAndEveryPairOfSizes) {
  std::vector<TreeHead> heads;
  for (int batch = 0; batch < 5; ++batch)
    heads.push_back(Write(path_, batch * 7 + 1, batch * 7 + 7));
  auto reader = Reader(path_);
  ASSERT_EQ(*reader->TreeSize(), 35);
  for (const TreeHead& h : heads) {
    for (int64_t seq = 1; seq <= h.tree_size; ++seq) {
      auto proof = reader->InclusionProof(seq, h.tree_size);
      ASSERT_TRUE(proof.ok()) << proof.status();
      auto rec = reader->Record(seq);
      ASSERT_TRUE(rec.ok());
      EXPECT_TRUE(merkle::VerifyInclusion(merkle::LeafHash(rec->json), seq - 1, h.tree_size, *proof,
                                          h.root))
          << seq << " in " << h.tree_size;
      // A different record at that position does not verify.
      EXPECT_FALSE(merkle::VerifyInclusion(merkle::LeafHash(Rec(1000).ToJson()), seq - 1,
                                           h.tree_size, *proof, h.root));
    }
  }
  for (const TreeHead& a : heads) {
    for (const TreeHead& b : heads) {
      if (a.tree_size > b.tree_size) continue;
      auto proof = reader->ConsistencyProof(a.tree_size, b.tree_size);
      ASSERT_TRUE(proof.ok()) << proof.status();
      EXPECT_TRUE(merkle::VerifyConsistency(a.tree_size, b.tree_size, a.root, b.root, *proof));
    }
  }
  EXPECT_EQ(CodeOf(reader->InclusionProof(0, 5).status()), ErrorCode::kInvalidParameter);
  EXPECT_EQ(CodeOf(reader->InclusionProof(6, 5).status()), ErrorCode::kInvalidParameter);
  EXPECT_EQ(CodeOf(reader->InclusionProof(1, 36).status()), ErrorCode::kInvalidParameter);
  EXPECT_EQ(CodeOf(reader->ConsistencyProof(9, 8).status()), ErrorCode::kInvalidParameter);
  EXPECT_EQ(CodeOf(reader->Record(36).status()), ErrorCode::kNotFound);
  auto latest = reader->LatestTreeHead();
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->tree_size, 35);
  EXPECT_EQ(HexEncode(*reader->RootAt(14)), HexEncode(heads[1].root));
}

// A complete, self-consistent rewrite of history (chain, anchor, nodes and
// every stored head re-signed, as by someone holding every key) passes the
// stored checks; an auditor's copy of an old head catches it.
TEST_F(MerkleLogTest, HolderOfAnOldHeadDetectsARewriteThatPassesEveryStoredCheck) {
  TreeHead held = Write(path_, 1, 20);
  Write(path_, 21, 30);
  const std::string forged = dir_ + "/forged.db";
  Write(forged, 1, 30, [](int i) { return i == 7 ? Rec(i, "someone-else") : Rec(i); });
  VerifyReport stored_only = Verify(forged);
  EXPECT_TRUE(stored_only.ok) << stored_only.summary;
  VerifyReport with_held = Verify(forged, {held.jws});
  EXPECT_FALSE(with_held.ok);
  EXPECT_EQ(with_held.first_bad_seq, 20);
  EXPECT_THAT(with_held.summary, HasSubstr("held tree head at 20 does not match the records"));
  // And through the API: no consistency proof links the held head to the new one.
  auto reader = Reader(forged);
  auto latest = *reader->LatestTreeHead();
  auto proof = reader->ConsistencyProof(20, latest->tree_size);
  ASSERT_TRUE(proof.ok());
  EXPECT_FALSE(merkle::VerifyConsistency(20, latest->tree_size, held.root, latest->root, *proof));
  // The genuine log passes with the held head.
  EXPECT_TRUE(Verify(path_, {held.jws}).ok);
  EXPECT_EQ(Verify(path_, {held.jws}).tree_heads, 3);
}

TEST_F(MerkleLogTest, RecordsRemovedFromTheTailBelowASignedHeadAreCaught) {
  Write(path_, 1, 10);
  // Remove the tail and rebuild the anchor the way the writer would: needs the
  // MAC key; here the point is the head, so rewrite with the real writer.
  const std::string shorter = dir_ + "/shorter.db";
  Write(shorter, 1, 8);
  Sql(shorter, "DROP TRIGGER audit_tree_heads_no_update; DROP TRIGGER audit_tree_heads_no_delete;");
  // Copy the genuine head at 10 into the shorter log.
  auto reader = Reader(path_);
  auto head = *reader->LatestTreeHead();
  Sql(shorter, "INSERT INTO audit_tree_heads VALUES(10, x'" + HexEncode(head->root) + "', " +
                   std::to_string(head->timestamp_ms) + ", '" + head->jws + "')");
  VerifyReport r = Verify(shorter);
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.summary, HasSubstr("signed tree head at 10 covers records that are gone"));
}

TEST_F(MerkleLogTest, TamperedNodesAndHeadsAreCaught) {
  Write(path_, 1, 9);
  Sql(path_,
      "DROP TRIGGER audit_nodes_no_update; DROP TRIGGER audit_nodes_no_delete;"
      "DROP TRIGGER audit_tree_heads_no_update; DROP TRIGGER audit_tree_heads_no_delete;");
  {
    const std::string copy = dir_ + "/node.db";
    std::filesystem::copy_file(path_, copy);
    Sql(copy, "UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 1 AND idx = 2");
    VerifyReport r = Verify(copy);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.first_bad_seq, 6);
    EXPECT_THAT(r.summary, HasSubstr("Merkle node 1/2 does not match"));
  }
  {
    const std::string copy = dir_ + "/missing.db";
    std::filesystem::copy_file(path_, copy);
    Sql(copy, "DELETE FROM audit_nodes WHERE level = 3");
    VerifyReport r = Verify(copy);
    EXPECT_FALSE(r.ok);
    EXPECT_THAT(r.summary, HasSubstr("Merkle node 3/0 missing"));
  }
  {
    const std::string copy = dir_ + "/sig.db";
    std::filesystem::copy_file(path_, copy);
    Sql(copy, "UPDATE audit_tree_heads SET jws = jws || 'A'");
    VerifyReport r = Verify(copy);
    EXPECT_FALSE(r.ok);
    EXPECT_THAT(r.summary, HasSubstr("signed tree head at 9"));
  }
  {
    const std::string copy = dir_ + "/col.db";
    std::filesystem::copy_file(path_, copy);
    Sql(copy, "UPDATE audit_tree_heads SET root = zeroblob(32)");
    VerifyReport r = Verify(copy);
    EXPECT_FALSE(r.ok);
    EXPECT_THAT(r.summary, HasSubstr("columns differ from the signed payload"));
  }
  // Heads signed by another key.
  VerifyReport wrong_key = Verify(path_, {}, &other_);
  EXPECT_FALSE(wrong_key.ok);
  EXPECT_THAT(wrong_key.summary, HasSubstr("bad signature"));
}

TEST_F(MerkleLogTest, TrailsWithoutATreeGetOneAtOpen) {
  Write(path_, 1, 11);
  // As written by a binary from before the tree.
  Sql(path_, "DROP TABLE audit_nodes; DROP TABLE audit_tree_heads;");
  {
    auto log = Open(path_, Options());
    ASSERT_NE(log, nullptr);
    EXPECT_TRUE(log->Append(Rec(12)).ok());
    auto head = log->SignTreeHead();
    ASSERT_TRUE(head.ok());
    EXPECT_EQ(head->tree_size, 12);
    log->Close();
  }
  VerifyReport r = Verify(path_);
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.records, 12);
}

TEST_F(MerkleLogTest, HeadsOnScheduleOnDemandAndAtClose) {
  auto log = Open(path_, Options(std::chrono::milliseconds(50)));
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(log->Append(Rec(i)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  {
    auto reader = Reader(path_);
    auto latest = *reader->LatestTreeHead();
    ASSERT_TRUE(latest.has_value()) << "no scheduled head";
    EXPECT_EQ(latest->tree_size, 4);
  }
  // On demand with nothing new: the same head.
  auto again = log->SignTreeHead();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->tree_size, 4);
  ASSERT_TRUE(log->Append(Rec(5)).ok());
  log->Close();
  auto reader = Reader(path_);
  EXPECT_EQ((*reader->LatestTreeHead())->tree_size, 5);  // signed at Close
  VerifyReport r = Verify(path_);
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_GE(r.tree_heads, 2);
}

TEST_F(MerkleLogTest, AnotherProcessAppendsWithoutAKeyAndTheServerHeadCoversIt) {
  auto server = Open(path_, Options());
  ASSERT_TRUE(server->Append(Rec(1)).ok());
  {
    auto cli = AuditLog::Open(path_, MacKey());  // no tree_head_key
    ASSERT_TRUE(cli.ok());
    ASSERT_TRUE((*cli)->Append(Rec(2)).ok());
    ASSERT_TRUE((*cli)->Append(Rec(3)).ok());
    EXPECT_FALSE((*cli)->SignTreeHead().ok());
    (*cli)->Close();
  }
  ASSERT_TRUE(server->Append(Rec(4)).ok());
  auto head = server->SignTreeHead();
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->tree_size, 4);
  server->Close();
  VerifyReport r = Verify(path_);
  EXPECT_TRUE(r.ok) << r.summary;
}

// A log opened while another process appends sees more stored leaves than the
// head it read: it opens, and its next commit adopts the other head. Nodes
// with no records behind them (and no anchor vouching) make the append fail
// rather than fork the tree.
TEST_F(MerkleLogTest, StoredLeavesBeyondTheHeadOpenAndNeverFork) {
  Write(path_, 1, 5);
  Sql(path_, "INSERT INTO audit_nodes VALUES(0, 5, zeroblob(32))");
  auto log = Open(path_, Options());
  ASSERT_NE(log, nullptr);
  auto seq = log->Append(Rec(6));
  EXPECT_FALSE(seq.ok());
  EXPECT_EQ(CodeOf(seq.status()), ErrorCode::kAuditUnavailable);
  log->Close();
  auto reader = Reader(path_);
  EXPECT_EQ(CodeOf(reader->Record(6).status()), ErrorCode::kNotFound);
}

// The same answers whether the writer has stored every record's terms (after
// Close), none yet (records after the mark are read directly), or some.
class SearchTest : public MerkleLogTest, public ::testing::WithParamInterface<int> {};

TEST_P(SearchTest, ByTermsAndTimeNewestFirstWithPages) {
  const int indexed = GetParam();  // records whose terms are stored: 30, 0 or 16
  auto log = Open(path_, Batched(indexed == 0 ? 1000 : 16));
  for (int i = 1; i <= 30; ++i) {
    AuditRecord r = Rec(i, i % 3 == 0 ? "alice" : "bob");
    r.patient_id = "p" + std::to_string(i % 5);
    if (i == 7) r.patients = {"p2", "p99"};
    r.outcome = i % 10 == 0 ? "denied" : "success";
    ASSERT_TRUE(log->Append(r).ok());
  }
  if (indexed == 30) log->Close();
  EXPECT_EQ(Query(path_, "SELECT coalesce(max(seq), 0) FROM audit_postings"), indexed);
  EXPECT_EQ(Query(path_, "SELECT coalesce(max(seq), 0) FROM audit_postings_mark"), indexed);
  auto reader = Reader(path_);
  auto seqs = [](const AuditPage& p) {
    std::vector<int64_t> v;
    for (const auto& r : p.records) v.push_back(r.seq);
    return v;
  };
  AuditQuery q;
  q.terms = {{"patient", {"p99"}}};
  EXPECT_THAT(seqs(*reader->Search(q)), ::testing::ElementsAre(7));
  q.terms = {{"patient", {"p2"}}, {"agent", {"bob"}}};
  EXPECT_THAT(seqs(*reader->Search(q)), ::testing::ElementsAre(22, 17, 7, 2));
  q.terms = {{"agent", {"alice"}}, {"outcome", {"denied"}}};
  EXPECT_THAT(seqs(*reader->Search(q)), ::testing::ElementsAre(30));
  q.terms = {{"patient", {"p1", "p2"}}};
  q.limit = 3;
  auto first = *reader->Search(q);
  EXPECT_THAT(seqs(first), ::testing::ElementsAre(27, 26, 22));
  q.before_seq = first.next_before;
  auto second = *reader->Search(q);
  EXPECT_THAT(seqs(second), ::testing::ElementsAre(21, 17, 16));
  // Time bounds: [from, to).
  AuditQuery t;
  t.time_from = Rec(10).time;
  t.time_to = Rec(13).time;
  EXPECT_THAT(seqs(*reader->Search(t)), ::testing::ElementsAre(12, 11, 10));
  // A scan bound gives a short page that says where to go on.
  AuditQuery bounded;
  bounded.terms = {{"outcome", {"denied"}}};
  bounded.max_scan = 2;
  if (indexed == 30) {  // two index hits per page
    auto part = *reader->Search(bounded);
    EXPECT_THAT(seqs(part), ::testing::ElementsAre(30, 20));
    EXPECT_EQ(part.next_before, 20);
    bounded.before_seq = 20;
    auto rest = *reader->Search(bounded);
    EXPECT_THAT(seqs(rest), ::testing::ElementsAre(10));
    EXPECT_EQ(rest.next_before, 0);
  }
  // Records after the mark count against the bound one by one: shorter pages,
  // the same records in the end.
  std::vector<int64_t> all;
  bounded.before_seq = 0;
  for (int pages = 0; pages < 40; ++pages) {
    auto page = *reader->Search(bounded);
    for (int64_t seq : seqs(page)) all.push_back(seq);
    if (page.next_before == 0) break;
    EXPECT_LT(page.next_before, bounded.before_seq == 0 ? 31 : bounded.before_seq);
    bounded.before_seq = page.next_before;
  }
  EXPECT_THAT(all, ::testing::ElementsAre(30, 20, 10));
}

INSTANTIATE_TEST_SUITE_P(IndexedUpTo, SearchTest, ::testing::Values(30, 0, 16));

TEST_F(MerkleLogTest, EditedSearchTermsAreCaughtAndCannotInjectHits) {
  auto log = Open(path_, Options());
  for (int i = 1; i <= 6; ++i) {
    AuditRecord r = Rec(i);
    r.patient_id = "p" + std::to_string(i);
    ASSERT_TRUE(log->Append(r).ok());
  }
  log->Close();
  Sql(path_, "DROP TRIGGER audit_postings_no_update; DROP TRIGGER audit_postings_no_delete;");
  // A term pointing record 2 at another patient: the search re-checks the record.
  Sql(path_, "INSERT INTO audit_postings VALUES(0, 'patient', 'p5', 2)");
  auto reader = Reader(path_);
  AuditQuery q;
  q.terms = {{"patient", {"p5"}}};
  auto page = reader->Search(q);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->records.size(), 1u);
  EXPECT_EQ(page->records[0].seq, 5);
  VerifyReport r = Verify(path_);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.first_bad_seq, 2);
  EXPECT_THAT(r.summary, HasSubstr("search terms differ from the record"));
  // Hiding a record from searches is caught too.
  const std::string hidden = dir_ + "/hidden.db";
  Write(hidden, 1, 4);
  Sql(hidden, "DROP TRIGGER audit_postings_no_delete; DELETE FROM audit_postings WHERE seq = 3");
  VerifyReport h = Verify(hidden);
  EXPECT_FALSE(h.ok);
  EXPECT_EQ(h.first_bad_seq, 3);
}

// A process that stops before storing its pending terms (here: a copy of the
// files taken while the writer held them) leaves records after the mark; the
// next open indexes them.
TEST_F(MerkleLogTest, TermsPendingWhenTheWriterStoppedAreStoredAtTheNextOpen) {
  const AuditOptions o = Batched(1000);
  auto log = Open(path_, o);
  for (int i = 1; i <= 12; ++i) {
    AuditRecord r = Rec(i);
    r.patient_id = "p" + std::to_string(i % 4);
    ASSERT_TRUE(log->Append(r).ok());
  }
  const std::string copy = dir_ + "/copy.db";
  CopyLive(path_, copy);
  log->Close();
  EXPECT_EQ(Query(copy, "SELECT count(*) FROM audit_postings"), 0);
  VerifyReport before = Verify(copy);  // records after the mark need no terms
  EXPECT_TRUE(before.ok) << before.summary;
  auto reopened = Open(copy, o);
  EXPECT_EQ(Query(copy, "SELECT seq FROM audit_postings_mark"), 12);
  EXPECT_EQ(Query(copy, "SELECT count(*) FROM audit_postings WHERE k = 'patient' AND v = 'p1'"), 3);
  reopened->Close();
  VerifyReport after = Verify(copy);
  EXPECT_TRUE(after.ok) << after.summary;
}

// Records followed by no others still get their terms, terms_delay later.
TEST_F(MerkleLogTest, TermsOfAQuietWriterAreStoredAfterTheDelay) {
  auto log = Open(path_, Batched(1000, std::chrono::milliseconds(50)));
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(log->Append(Rec(i)).ok());
  int64_t mark = 0;
  for (int tries = 0; tries < 200 && mark != 3; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    mark = Query(path_, "SELECT coalesce(max(seq), 0) FROM audit_postings_mark");
  }
  EXPECT_EQ(mark, 3);
  EXPECT_EQ(Query(path_, "SELECT count(DISTINCT seq) FROM audit_postings"), 3);
}

TEST_F(MerkleLogTest, TermsAfterTheMarkInTheWrongBucketOrAMarkPastTheRecordsAreCaught) {
  auto log = Open(path_, Batched(4));
  for (int i = 1; i <= 6; ++i) ASSERT_TRUE(log->Append(Rec(i)).ok());
  const std::string a = dir_ + "/a.db", b = dir_ + "/b.db", c = dir_ + "/c.db";
  CopyLive(path_, a);  // mark 4; records 5 and 6 after it
  CopyLive(path_, b);
  log->Close();
  CopyLive(path_, c);  // mark 6: all indexed
  ASSERT_EQ(Query(a, "SELECT seq FROM audit_postings_mark"), 4);
  // Terms for a record after the mark: written by no writer.
  Sql(a, "INSERT INTO audit_postings VALUES(0, 'agent', 'user-1', 5)");
  VerifyReport ra = Verify(a);
  EXPECT_FALSE(ra.ok);
  EXPECT_EQ(ra.first_bad_seq, 5);
  EXPECT_THAT(ra.summary, HasSubstr("after the index mark"));
  // A record's terms moved to another bucket: a search would not find it.
  Sql(b,
      "DROP TRIGGER audit_postings_no_update; "
      "UPDATE audit_postings SET bucket = -1 WHERE seq = 2");  // sorts first
  VerifyReport rb = Verify(b);
  EXPECT_FALSE(rb.ok);
  EXPECT_EQ(rb.first_bad_seq, 2);
  EXPECT_THAT(rb.summary, HasSubstr("wrong bucket"));
  // The mark moved past the records: the next records would be hidden until
  // their terms are stored.
  Sql(c, "UPDATE audit_postings_mark SET seq = 50");
  VerifyReport rc = Verify(c);
  EXPECT_FALSE(rc.ok);
  EXPECT_EQ(rc.first_bad_seq, 7);
  EXPECT_THAT(rc.summary, HasSubstr("index mark (50) is past the last record"));
  // The mark never moves back (a trigger, and the writer only moves it forward).
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  EXPECT_NE(sqlite3_exec(db, "UPDATE audit_postings_mark SET seq = 1", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
}

// A trail written before the bucketed index (audit_terms(k, v, seq)) gets it
// at open, and the old table goes.
TEST_F(MerkleLogTest, TheOldTermTableIsReplacedAtOpen) {
  Write(path_, 1, 5, [](int i) {
    AuditRecord r = Rec(i);
    r.patient_id = "p" + std::to_string(i % 2);
    return r;
  });
  Sql(path_,
      "DROP TABLE audit_postings; DROP TABLE audit_postings_mark; "
      "CREATE TABLE audit_terms(k TEXT NOT NULL, v TEXT NOT NULL, seq INTEGER NOT NULL, "
      "PRIMARY KEY(k, v, seq)) WITHOUT ROWID; "
      "INSERT INTO audit_terms VALUES('patient', 'p1', 1)");
  auto log = Open(path_, Options());
  log->Close();
  EXPECT_EQ(Query(path_, "SELECT count(*) FROM sqlite_master WHERE name = 'audit_terms'"), 0);
  EXPECT_EQ(Query(path_, "SELECT seq FROM audit_postings_mark"), 5);
  AuditQuery q;
  q.terms = {{"patient", {"p1"}}};
  auto page = Reader(path_)->Search(q);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->records.size(), 3u);
  EXPECT_EQ(page->records[0].seq, 5);
  EXPECT_TRUE(Verify(path_).ok);
}

// A search reaches back across buckets (2^13 records each), newest first,
// and pages through them.
TEST_F(MerkleLogTest, SearchesReachBackAcrossBuckets) {
  auto log = Open(path_, Options());
  const int n = (1 << 13) * 2 + 100;
  std::atomic<int> done{0};
  for (int i = 1; i <= n; ++i) {
    AuditRecord r = Rec(i);
    r.patient_id = i % 4000 == 7 ? "rare" : "common";
    log->AppendAsync(r, [&](absl::StatusOr<int64_t> seq) {
      EXPECT_TRUE(seq.ok());
      done.fetch_add(1);
    });
  }
  log->Close();
  ASSERT_EQ(done.load(), n);
  EXPECT_EQ(Query(path_, "SELECT count(DISTINCT bucket) FROM audit_postings"), 3);
  auto reader = Reader(path_);
  AuditQuery q;
  q.terms = {{"patient", {"rare"}}};
  q.limit = 3;
  auto first = reader->Search(q);
  ASSERT_TRUE(first.ok());
  std::vector<int64_t> seqs;
  for (const auto& r : first->records) seqs.push_back(r.seq);
  EXPECT_THAT(seqs, ::testing::ElementsAre(16007, 12007, 8007));
  q.before_seq = first->next_before;
  auto rest = reader->Search(q);
  ASSERT_TRUE(rest.ok());
  seqs.clear();
  for (const auto& r : rest->records) seqs.push_back(r.seq);
  EXPECT_THAT(seqs, ::testing::ElementsAre(4007, 7));
  EXPECT_EQ(rest->next_before, 0);
  EXPECT_TRUE(Verify(path_).ok);
}

// Searches against a brute-force filter of every record: random records across
// three buckets, part of them after the mark, random queries of one or two
// parameters with one or two values, read page by page with small scan bounds.
TEST_F(MerkleLogTest, SearchPagesMatchABruteForceFilter) {
  std::mt19937 rng(20261206);
  auto log = Open(path_, Batched(700));
  const int n = (1 << 13) * 2 + 1500;
  std::vector<AuditRecord> recs;
  std::atomic<int> done{0};
  for (int i = 1; i <= n; ++i) {
    AuditRecord r = Rec(i, "user-" + std::to_string(rng() % 40));
    r.patient_id = "p" + std::to_string(rng() % 300);
    if (rng() % 5 == 0) r.patients = {r.patient_id, "p" + std::to_string(rng() % 300)};
    r.outcome = rng() % 7 == 0 ? "denied" : "success";
    recs.push_back(r);
    log->AppendAsync(r, [&](absl::StatusOr<int64_t> seq) {
      EXPECT_TRUE(seq.ok());
      done.fetch_add(1);
    });
  }
  while (done.load() < n) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const int64_t mark = Query(path_, "SELECT seq FROM audit_postings_mark");
  EXPECT_LT(mark, n);  // some records are after the mark
  EXPECT_GT(mark, 1 << 14);
  std::vector<std::vector<std::pair<std::string, std::string>>> terms_of;
  for (const AuditRecord& r : recs) terms_of.push_back(IndexTerms(r));
  auto reader = Reader(path_);
  for (int trial = 0; trial < 60; ++trial) {
    AuditQuery q;
    auto pick = [&](const std::string& k) -> std::vector<std::string> {
      std::vector<std::string> vs;
      for (int j = 0, m = 1 + static_cast<int>(rng() % 2); j < m; ++j) {
        if (k == "patient") vs.push_back("p" + std::to_string(rng() % 300));
        if (k == "agent") vs.push_back("user-" + std::to_string(rng() % 40));
        if (k == "outcome") vs.push_back(rng() % 2 ? "denied" : "success");
      }
      return vs;
    };
    const char* keys[] = {"patient", "agent", "outcome"};
    q.terms.emplace_back(keys[rng() % 3], std::vector<std::string>{});
    q.terms.back().second = pick(q.terms.back().first);
    if (rng() % 2) {
      q.terms.emplace_back(keys[rng() % 3], std::vector<std::string>{});
      q.terms.back().second = pick(q.terms.back().first);
    }
    q.limit = 1 + static_cast<int>(rng() % 30);
    q.max_scan = 5 + static_cast<int>(rng() % 400);
    std::vector<int64_t> want;
    for (int i = n; i >= 1; --i) {
      const auto& terms = terms_of[i - 1];
      bool all = true;
      for (const auto& [k, vs] : q.terms) {
        bool any = false;
        for (const auto& v : vs)
          any = any || std::binary_search(terms.begin(), terms.end(), std::make_pair(k, v));
        all = all && any;
      }
      if (all) want.push_back(i);
    }
    std::vector<int64_t> got;
    int pages = 0;
    for (;; ++pages) {
      ASSERT_LT(pages, 100000);
      auto page = reader->Search(q);
      ASSERT_TRUE(page.ok()) << page.status();
      ASSERT_LE(page->records.size(), static_cast<size_t>(q.limit));
      for (const auto& r : page->records) got.push_back(r.seq);
      if (page->next_before == 0) break;
      ASSERT_TRUE(q.before_seq == 0 || page->next_before < q.before_seq);
      q.before_seq = page->next_before;
    }
    ASSERT_EQ(got, want) << "trial " << trial;
  }
  log->Close();
}

}  // namespace
}  // namespace fhirward::audit
