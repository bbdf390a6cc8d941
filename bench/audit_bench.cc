// What the audit trail costs (`bench/audit-run`, `make bench-audit`): appends
// through the production path beside a plain SQLite insert of the same JSON,
// the Merkle kernel beside SHA-256, and proofs from a large trail.
//
//   audit_bench kernel [Google Benchmark flags]
//       merkle_append/N  LeafHash + Frontier::Append of an N-byte record (what the
//                        writer adds per record for the tree, SQL not included)
//       sha256/N         one SHA-256 of the same N bytes (the primitive)
//
//   audit_bench append --dir DIR [--threads 64] [--seconds 5] [--rounds 2] [--cases a,b]
//       THREADS threads each Append() ~600-byte read records in a loop (a thread per
//       in-flight request, as the server has one per connection; each Append returns
//       once its batch is durable) for SECONDS, into a fresh database per case:
//         sqlite_reference  a plain table (seq INTEGER PRIMARY KEY, record TEXT), WAL,
//                           synchronous=FULL, the same group commit as the audit writer
//                           (one writer thread, batches of up to 256, no delay)
//         audit             AuditLog (chain, anchor MAC, Merkle nodes, search terms)
//         audit_heads       + tree_head_key (ES256) and tree_head_interval 1 s
//         audit_heads_sinks + an AuditExporter with two file sinks running during it
//       One JSON line per case and round on stdout.
//
//   audit_bench build --db PATH --records N [--max-seconds S] [--inflight 4096]
//       Fills PATH to N records through AuditLog::AppendAsync (max_batch 256, the
//       default), continuing an existing file. The MAC key and the tree-head key are
//       kept beside it (PATH.mac, PATH.es256.pem, 0600). Progress on stderr; a JSON
//       line on stdout. Stops early (cleanly, with a signed head) after S seconds.
//
//   audit_bench proofs --db PATH [--samples 2000]
//       AuditReader on PATH: InclusionProof (random leaf, latest signed head),
//       ConsistencyProof (random first < second <= head), RootAt (random size),
//       TreeSize, LatestTreeHead, and AuditEvent searches (newest 50 of a random
//       patient, of a random user): p50/p99 microseconds and calls/s, one thread.
//       Every returned proof and root is then checked (merkle::VerifyInclusion /
//       VerifyConsistency against the signed head, whose ES256 signature is checked
//       with PATH.es256.pem), outside the timing.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "audit/audit_log.h"
#include "audit/audit_reader.h"
#include "audit/merkle.h"
#include "audit/sink.h"
#include "common/clock.h"
#include "common/secret_bytes.h"
#include "crypto/aead.h"
#include "jose/jws.h"

namespace fw = fhirward;
namespace audit = fhirward::audit;
namespace merkle = fhirward::audit::merkle;
namespace jose = fhirward::jose;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "audit_bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Must(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(std::string(what) + ": " + std::string(v.status().message()));
  return std::move(*v);
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// ---- realistic records ------------------------------------------------------------

// A read, search or write as the server records it: ~600 bytes of JSON for a read,
// subjects, clients, patients and resources drawn from large pools.
struct RecordGen {
  std::mt19937_64 rng;
  int64_t n = 0;
  explicit RecordGen(uint64_t seed) : rng(seed) {}

  std::string Hex(int len) {
    static const char* d = "0123456789abcdef";
    std::string s(len, '0');
    for (char& c : s) c = d[rng() & 15];
    return s;
  }
  std::string Uuid() {
    return Hex(8) + "-" + Hex(4) + "-4" + Hex(3) + "-a" + Hex(3) + "-" + Hex(12);
  }
  static std::string Time(int64_t ms) {  // FHIR instant, UTC, from 2026-01-01
    return fw::FormatInstantMs(int64_t{1767225600000} + ms);
  }

  audit::AuditRecord Next() {
    static const char* kTypes[] = {
        "Observation", "Observation",       "Observation",      "Patient",   "Encounter",
        "Condition",   "MedicationRequest", "DiagnosticReport", "Procedure", "AllergyIntolerance"};
    static const char* kRoles[] = {"clinician", "clinician nurse", "clinician physician",
                                   "pharmacist", "admin"};
    audit::AuditRecord r;
    ++n;
    r.time = Time(n * 7);
    r.request_id = Uuid();
    r.trace_id = Hex(32);
    r.client_address = "10." + std::to_string(rng() % 256) + "." + std::to_string(rng() % 256) +
                       "." + std::to_string(rng() % 256);
    r.user_agent = "EHR-Desktop/24.3.1";
    const uint64_t user = rng() % 5000;
    r.subject = "user-" + std::to_string(user);
    r.client_id = "ehr-client-" + std::to_string(user % 20);
    r.roles = kRoles[user % 5];
    r.purpose_of_use = "TREAT";
    r.scopes = "openid fhirUser user/*.rs";
    const std::string patient = "pat-" + std::to_string(rng() % 1000000);
    const uint64_t kind = rng() % 100;
    r.resource_type = kTypes[rng() % 10];
    r.patient_id = patient;
    r.patients = {patient};
    r.outcome = "success";
    r.status_code = 200;
    r.policy_id = "hospital-policy@12";
    r.node = "fhirward-node-1";
    if (kind < 80) {  // read
      r.action = "read";
      r.method = "GET";
      r.resource_id = r.resource_type == std::string("Patient") ? patient : Uuid();
      r.version_id = std::to_string(1 + rng() % 4);
      r.count = 1;
      r.bytes = 900 + static_cast<int64_t>(rng() % 3000);
      r.decision = "hospital-policy@12 allow role=" + std::string(kRoles[user % 5]) +
                   " rule=team-read patients=1 masked=0";
    } else if (kind < 95) {  // search
      r.action = "search-type";
      r.method = "GET";
      r.count = static_cast<int64_t>(rng() % 50);
      r.bytes = 2000 + r.count * 1200;
      r.query = "patient=Patient/" + patient + "&code=http://loinc.org|8867-4&date=ge2025-01-01";
      r.decision = "hospital-policy@12 allow role=" + std::string(kRoles[user % 5]) +
                   " rule=care-team-search patients=1 masked=0";
    } else {  // create
      r.action = "create";
      r.method = "POST";
      r.resource_id = Uuid();
      r.version_id = "1";
      r.status_code = 201;
      r.count = 1;
      r.bytes = 700;
      r.decision = "hospital-policy@12 allow role=" + std::string(kRoles[user % 5]) +
                   " rule=care-team-write patients=1 masked=0";
    }
    return r;
  }

  // A read record (for the append benchmark: every record a read).
  audit::AuditRecord NextRead() {
    for (;;) {
      audit::AuditRecord r = Next();
      if (r.action == "read") return r;
    }
  }
};

// ---- arguments ------------------------------------------------------------------

struct Args {
  std::map<std::string, std::string> kv;
  Args(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0 || i + 1 >= argc) Die("bad argument " + a);
      kv[a.substr(2)] = argv[++i];
    }
  }
  std::string Str(const std::string& k, const std::string& def = "") const {
    auto it = kv.find(k);
    return it == kv.end() ? def : it->second;
  }
  int64_t Int(const std::string& k, int64_t def) const {
    auto it = kv.find(k);
    return it == kv.end() ? def : std::stoll(it->second);
  }
};

// ---- kernel ----------------------------------------------------------------------

void MerkleAppend(benchmark::State& state) {
  RecordGen gen(1);
  std::string json = gen.NextRead().ToJson();
  json.resize(state.range(0), ' ');
  merkle::Frontier f;
  std::vector<merkle::Frontier::Node> completed;
  for (auto _ : state) {
    completed.clear();
    f.Append(merkle::LeafHash(json), &completed);
    benchmark::DoNotOptimize(completed.data());
  }
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void Sha256(benchmark::State& state) {
  std::string data(state.range(0), 'x');
  for (auto _ : state) benchmark::DoNotOptimize(fw::crypto::Sha256(data));
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

BENCHMARK(MerkleAppend)->Name("merkle_append")->Arg(256)->Arg(600)->Arg(1024);
BENCHMARK(Sha256)->Name("sha256")->Arg(256)->Arg(600)->Arg(1024);

// ---- the reference: a plain SQLite insert with the same group commit ------------------

class PlainLog {
 public:
  explicit PlainLog(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        nullptr) != SQLITE_OK) {
      Die("sqlite open " + path);
    }
    Exec("PRAGMA journal_mode=WAL");
    Exec("PRAGMA synchronous=FULL");
    Exec("CREATE TABLE IF NOT EXISTS records(seq INTEGER PRIMARY KEY, record TEXT NOT NULL)");
    sqlite3_prepare_v2(db_, "INSERT INTO records(seq, record) VALUES(?1, ?2)", -1, &insert_,
                       nullptr);
    writer_ = std::thread([this] { Loop(); });
  }
  ~PlainLog() {
    {
      std::lock_guard<std::mutex> l(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    writer_.join();
    sqlite3_finalize(insert_);
    sqlite3_close(db_);
  }
  int64_t Append(const audit::AuditRecord& r) {
    Pending p;
    p.json = r.ToJson();  // in the caller's thread, as AuditLog does
    std::promise<int64_t> done;
    auto f = done.get_future();
    p.done = &done;
    {
      std::lock_guard<std::mutex> l(mu_);
      queue_.push_back(std::move(p));
    }
    cv_.notify_one();
    return f.get();
  }
  int64_t commits() const { return commits_; }
  int64_t records() const { return seq_; }
  int64_t largest_batch() const { return largest_; }

 private:
  struct Pending {
    std::string json;
    std::promise<int64_t>* done = nullptr;
  };
  void Exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) Die(err ? err : sql);
  }
  void Loop() {
    std::vector<Pending> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return !queue_.empty() || closing_; });
        if (queue_.empty()) return;
        while (!queue_.empty() && batch.size() < 256) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      Exec("BEGIN IMMEDIATE");
      const int64_t first = seq_ + 1;
      for (auto& p : batch) {
        ++seq_;
        sqlite3_bind_int64(insert_, 1, seq_);
        sqlite3_bind_text(insert_, 2, p.json.data(), static_cast<int>(p.json.size()),
                          SQLITE_STATIC);
        if (sqlite3_step(insert_) != SQLITE_DONE) Die(sqlite3_errmsg(db_));
        sqlite3_reset(insert_);
      }
      Exec("COMMIT");  // WAL + synchronous=FULL: fsync of the WAL
      ++commits_;
      largest_ = std::max<int64_t>(largest_, static_cast<int64_t>(batch.size()));
      for (size_t i = 0; i < batch.size(); ++i) batch[i].done->set_value(first + i);
      batch.clear();
    }
  }
  sqlite3* db_ = nullptr;
  sqlite3_stmt* insert_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  bool closing_ = false;
  std::thread writer_;
  int64_t seq_ = 0, commits_ = 0, largest_ = 0;
};

// ---- append --------------------------------------------------------------------------

// THREADS threads append for `seconds`; returns records appended in the window.
int64_t Drive(int threads, double seconds,
              const std::function<void(const audit::AuditRecord&)>& append, double* elapsed) {
  // Records are made before the clock starts (ToJson is still inside append()).
  std::vector<std::vector<audit::AuditRecord>> pool(threads);
  for (int t = 0; t < threads; ++t) {
    RecordGen g(1000 + t);
    for (int i = 0; i < 256; ++i) pool[t].push_back(g.NextRead());
  }
  std::atomic<bool> stop{false};
  std::atomic<int64_t> total{0};
  std::vector<std::thread> ts;
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      int64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        append(pool[t][n % pool[t].size()]);
        ++n;
      }
      total += n;
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : ts) t.join();
  *elapsed = Seconds(start, Clock::now());
  return total.load();
}

// Bytes this process has passed to write()/pwrite() so far (/proc/self/io wchar): the
// WAL frames, checkpoints and sink files a case writes.
int64_t WrittenBytes() {
  std::ifstream in("/proc/self/io");
  std::string k;
  int64_t v = 0;
  while (in >> k >> v) {
    if (k == "wchar:") return v;
  }
  return 0;
}

std::string Fixed(double v, int digits = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

int AppendMain(const Args& args) {
  const std::string dir = args.Str("dir");
  if (dir.empty()) Die("append: --dir DIR");
  const int threads = static_cast<int>(args.Int("threads", 64));
  const double seconds = static_cast<double>(args.Int("seconds", 5));
  const int rounds = static_cast<int>(args.Int("rounds", 2));
  jose::SigningKey key = Must(jose::SigningKey::Generate(jose::Algorithm::kES256, "log-1"), "key");
  {
    RecordGen g(7);
    std::fprintf(stderr, "audit_bench: a read record is %zu bytes of JSON, %zu search terms\n",
                 g.NextRead().ToJson().size(), audit::IndexTerms(g.NextRead()).size());
  }
  const char* kCases[] = {"sqlite_reference", "audit", "audit_heads", "audit_heads_sinks"};
  // --cases a,b: only these (all by default).
  const std::string only = "," + args.Str("cases", "") + ",";
  int run = 0;
  for (int round = 1; round <= rounds; ++round) {
    for (const char* name : kCases) {
      const std::string c = name;
      if (only != ",," && only.find("," + c + ",") == std::string::npos) continue;
      const std::string sub = dir + "/" + c + "-" + std::to_string(++run);
      mkdir(sub.c_str(), 0700);
      const std::string db = sub + "/audit.db";
      double elapsed = 0;
      int64_t n = 0, commits = 0, largest = 0;
      const int64_t written_before = WrittenBytes();
      std::string extra;
      if (c == "sqlite_reference") {
        PlainLog log(db);
        n = Drive(
            threads, seconds, [&](const audit::AuditRecord& r) { log.Append(r); }, &elapsed);
        commits = log.commits();
        largest = log.largest_batch();
        n = log.records();  // all committed (every Append returned)
      } else {
        audit::AuditOptions o;
        if (c != "audit") {
          o.tree_head_key = &key;
          o.log_id = "https://bench.invalid/fhir";
          o.tree_head_interval = std::chrono::milliseconds(1000);
        }
        std::unique_ptr<audit::AuditExporter> exporter;
        std::atomic<audit::AuditExporter*> exp_ptr{nullptr};
        o.on_commit = [&exp_ptr](int64_t) {
          if (auto* e = exp_ptr.load()) e->Notify();
        };
        auto log = Must(audit::AuditLog::Open(db, fw::RandomSecret(32), o), "AuditLog::Open");
        if (c == "audit_heads_sinks") {
          std::vector<audit::SinkConfig> sinks(2);
          sinks[0].name = "siem-a";
          sinks[0].type = "file";
          sinks[0].path = sub + "/siem-a.jsonl";
          sinks[1].name = "siem-b";
          sinks[1].type = "file";
          sinks[1].path = sub + "/siem-b.jsonl";
          audit::ExporterOptions eo;
          eo.state_dir = sub + "/sinks";
          mkdir(eo.state_dir.c_str(), 0700);
          eo.hostname = "bench";
          exporter = Must(audit::AuditExporter::Start(db, sinks, eo), "AuditExporter::Start");
          exp_ptr = exporter.get();
        }
        n = Drive(
            threads, seconds, [&](const audit::AuditRecord& r) { Must(log->Append(r), "Append"); },
            &elapsed);
        audit::AuditStats st = log->stats();
        n = st.records;
        commits = st.commits;
        largest = st.largest_batch;
        if (exporter) {
          // How far behind the sinks were when the window closed, and how long they
          // took to catch up.
          int64_t behind = 0;
          for (const auto& s : exporter->Status()) behind = std::max(behind, n - s.delivered);
          const auto t0 = Clock::now();
          const bool caught_up = exporter->WaitDelivered(n, std::chrono::milliseconds(60000));
          extra = ", \"sink_lag_records\": " + std::to_string(behind) +
                  ", \"sink_catch_up_s\": " + Fixed(Seconds(t0, Clock::now()), 2) +
                  ", \"sinks_caught_up\": " + (caught_up ? "true" : "false");
          exp_ptr = nullptr;
          exporter->Stop();
        }
        log->Close();
      }
      const double written = static_cast<double>(WrittenBytes() - written_before);
      std::printf(
          "{\"case\": \"%s\", \"round\": %d, \"threads\": %d, \"seconds\": %.2f, \"records\": "
          "%lld, "
          "\"records_per_s\": %.1f, \"commits\": %lld, \"mean_batch\": %.1f, \"largest_batch\": "
          "%lld, \"written_bytes_per_record\": %.0f%s}\n",
          name, round, threads, elapsed, static_cast<long long>(n), n / elapsed,
          static_cast<long long>(commits), commits ? static_cast<double>(n) / commits : 0.0,
          static_cast<long long>(largest), n ? written / static_cast<double>(n) : 0.0,
          extra.c_str());
      std::fflush(stdout);
      std::fprintf(stderr, "audit_bench: %-18s round %d: %.0f records/s (mean batch %.1f)\n", name,
                   round, n / elapsed, commits ? static_cast<double>(n) / commits : 0.0);
    }
  }
  return 0;
}

// ---- build ---------------------------------------------------------------------------

std::string ReadOrMakeMacKey(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (in) {
    std::string k((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (k.size() != 32) Die(path + ": not a 32-byte key");
    return k;
  }
  fw::SecretBytes s = fw::RandomSecret(32);
  std::string k(s.UnsafeView());
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0 || ::write(fd, k.data(), k.size()) != 32 || ::close(fd) != 0)
    Die("cannot write " + path);
  return k;
}

jose::SigningKey ReadOrMakeHeadKey(const std::string& path) {
  if (access(path.c_str(), F_OK) == 0) {
    return Must(jose::SigningKey::LoadPem(path, jose::Algorithm::kES256, "log-1"), "LoadPem");
  }
  jose::SigningKey k = Must(jose::SigningKey::Generate(jose::Algorithm::kES256, "log-1"), "key");
  if (auto s = k.SavePem(path); !s.ok()) Die(std::string(s.message()));
  return k;
}

int64_t StoredRecords(const std::string& db) {
  if (access(db.c_str(), F_OK) != 0) return 0;
  auto r = Must(audit::AuditReader::Open(db), "AuditReader::Open");
  return Must(r->LastSeq(), "LastSeq");
}

int BuildMain(const Args& args) {
  const std::string db = args.Str("db");
  if (db.empty()) Die("build: --db PATH");
  const int64_t want = args.Int("records", 10000000);
  const int64_t max_seconds = args.Int("max-seconds", 0);
  const int64_t inflight = args.Int("inflight", 4096);
  const int64_t have = StoredRecords(db);
  if (have >= want) {
    std::fprintf(stderr, "audit_bench: %s already holds %lld records (>= %lld): reused\n",
                 db.c_str(), static_cast<long long>(have), static_cast<long long>(want));
    std::printf("{\"db\": \"%s\", \"records\": %lld, \"added\": 0, \"reused\": true}\n", db.c_str(),
                static_cast<long long>(have));
    return 0;
  }
  const std::string mac = ReadOrMakeMacKey(db + ".mac");
  jose::SigningKey key = ReadOrMakeHeadKey(db + ".es256.pem");
  audit::AuditOptions o;
  o.tree_head_key = &key;
  o.log_id = "https://bench.invalid/fhir";
  o.tree_head_interval = std::chrono::milliseconds(60000);  // the server's default
  const auto open_start = Clock::now();
  auto log = Must(audit::AuditLog::Open(db, fw::SecretBytes(mac), o), "AuditLog::Open");
  std::fprintf(stderr, "audit_bench: building %s: %lld -> %lld records (open took %.1f s)%s\n",
               db.c_str(), static_cast<long long>(have), static_cast<long long>(want),
               Seconds(open_start, Clock::now()),
               max_seconds ? (", at most " + std::to_string(max_seconds) + " s").c_str() : "");

  std::mutex mu;
  std::condition_variable cv;
  int64_t outstanding = 0, done_count = 0;
  std::atomic<bool> failed{false};
  RecordGen gen(static_cast<uint64_t>(have) * 7919 + 17);
  gen.n = have;
  const auto start = Clock::now();
  auto last_report = start;
  int64_t added = 0;
  bool out_of_time = false;
  while (have + added < want && !failed) {
    if (max_seconds > 0 && Seconds(start, Clock::now()) > static_cast<double>(max_seconds)) {
      out_of_time = true;
      break;
    }
    // Enough in flight to fill every batch (max_batch 256).
    {
      std::unique_lock<std::mutex> l(mu);
      cv.wait(l, [&] { return outstanding < inflight; });
      ++outstanding;
    }
    log->AppendAsync(gen.Next(), [&](absl::StatusOr<int64_t> seq) {
      if (!seq.ok()) {
        if (!failed.exchange(true)) {
          std::fprintf(stderr, "audit_bench: append failed: %s\n",
                       std::string(seq.status().message()).c_str());
        }
      }
      {
        std::lock_guard<std::mutex> l(mu);
        --outstanding;
        ++done_count;
      }
      cv.notify_one();
    });
    ++added;
    const auto now = Clock::now();
    if (Seconds(last_report, now) >= 10) {
      last_report = now;
      int64_t d;
      {
        std::lock_guard<std::mutex> l(mu);
        d = done_count;
      }
      const double el = Seconds(start, now);
      const double rate = d / el;
      std::fprintf(stderr,
                   "audit_bench: %lld / %lld records (%.1f%%), %.0f records/s, %.0f s elapsed, "
                   "~%.0f s to go\n",
                   static_cast<long long>(have + d), static_cast<long long>(want),
                   100.0 * static_cast<double>(have + d) / static_cast<double>(want), rate, el,
                   rate > 0 ? static_cast<double>(want - have - d) / rate : 0.0);
    }
  }
  {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return outstanding == 0; });
  }
  const double el = Seconds(start, Clock::now());
  auto head = log->SignTreeHead();
  log->Close();
  if (failed) Die("build failed");
  const int64_t total = have + added;
  std::fprintf(stderr,
               "audit_bench: %lld records added in %.0f s (%.0f records/s); %lld stored%s\n",
               static_cast<long long>(added), el, added / el, static_cast<long long>(total),
               out_of_time ? " (stopped at --max-seconds)" : "");
  std::printf(
      "{\"db\": \"%s\", \"records\": %lld, \"added\": %lld, \"seconds\": %.1f, \"records_per_s\": "
      "%.1f, \"reused\": false, \"complete\": %s, \"head_size\": %lld}\n",
      db.c_str(), static_cast<long long>(total), static_cast<long long>(added), el, added / el,
      total >= want ? "true" : "false", static_cast<long long>(head.ok() ? head->tree_size : 0));
  return 0;
}

// ---- proofs --------------------------------------------------------------------------

struct Timing {
  std::vector<double> us;
  double total_s = 0;
  std::string Json(const char* name) {
    std::sort(us.begin(), us.end());
    auto pct = [&](double p) {
      return us.empty() ? 0.0 : us[std::min(us.size() - 1, static_cast<size_t>(p * us.size()))];
    };
    return std::string("{\"op\": \"") + name + "\", \"calls\": " + std::to_string(us.size()) +
           ", \"p50_us\": " + Fixed(pct(0.5)) + ", \"p99_us\": " + Fixed(pct(0.99)) +
           ", \"max_us\": " + Fixed(us.empty() ? 0 : us.back()) +
           ", \"per_s\": " + Fixed(us.size() / total_s) + "}";
  }
};

template <typename F>
void Time(Timing& t, F f) {
  const auto a = Clock::now();
  f();
  const auto b = Clock::now();
  t.us.push_back(std::chrono::duration<double, std::micro>(b - a).count());
  t.total_s += Seconds(a, b);
}

int ProofsMain(const Args& args) {
  const std::string db = args.Str("db");
  if (db.empty()) Die("proofs: --db PATH");
  const int samples = static_cast<int>(args.Int("samples", 2000));
  struct stat st_db;
  if (stat(db.c_str(), &st_db) != 0) Die("no " + db);
  const auto open_start = Clock::now();
  auto reader = Must(audit::AuditReader::Open(db), "AuditReader::Open");
  const double open_s = Seconds(open_start, Clock::now());
  auto head_opt = Must(reader->LatestTreeHead(), "LatestTreeHead");
  if (!head_opt) Die("no signed tree head in " + db);
  const audit::TreeHead head = *head_opt;
  jose::SigningKey key =
      Must(jose::SigningKey::LoadPem(db + ".es256.pem", jose::Algorithm::kES256, "log-1"), "key");
  const jose::PublicKey pub = key.public_key();
  Must(audit::ParseTreeHead(head.jws, pub), "the latest tree head does not verify");
  const int64_t n = head.tree_size;
  std::fprintf(stderr, "audit_bench: %s: signed head at %lld records; %d samples per operation\n",
               db.c_str(), static_cast<long long>(n), samples);

  std::mt19937_64 rng(42);
  auto pick = [&](int64_t lo, int64_t hi) {  // uniform in [lo, hi]
    return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
  };
  Timing t_incl, t_cons, t_root, t_size, t_head, t_search_patient, t_search_agent;
  int64_t search_hits = 0;
  std::vector<std::pair<int64_t, std::vector<std::string>>> incl;
  std::vector<std::tuple<int64_t, int64_t, std::vector<std::string>>> cons;
  std::vector<std::pair<int64_t, std::string>> roots;
  for (int i = 0; i < samples; ++i) {
    const int64_t seq = pick(1, n);
    Time(t_incl,
         [&] { incl.emplace_back(seq, Must(reader->InclusionProof(seq, n), "InclusionProof")); });
    int64_t a = pick(1, n), b = pick(1, n);
    if (a > b) std::swap(a, b);
    Time(t_cons, [&] {
      cons.emplace_back(a, b, Must(reader->ConsistencyProof(a, b), "ConsistencyProof"));
    });
    const int64_t size = pick(1, n);
    Time(t_root, [&] { roots.emplace_back(size, Must(reader->RootAt(size), "RootAt")); });
    Time(t_size, [&] { benchmark::DoNotOptimize(Must(reader->TreeSize(), "TreeSize")); });
    Time(t_head,
         [&] { benchmark::DoNotOptimize(Must(reader->LatestTreeHead(), "LatestTreeHead")); });
    // AuditEvent searches, newest 50: a patient (~10 records each in 10 M: the
    // index is probed in every bucket) and a user (~2,000 each: the newest
    // buckets answer).
    audit::AuditQuery q;
    q.limit = 50;
    q.terms = {{"patient", {"pat-" + std::to_string(rng() % 1000000)}}};
    Time(t_search_patient,
         [&] { search_hits += Must(reader->Search(q), "Search").records.size(); });
    q.terms = {{"agent", {"user-" + std::to_string(rng() % 5000)}}};
    Time(t_search_agent, [&] { search_hits += Must(reader->Search(q), "Search").records.size(); });
  }

  // Check every answer (outside the timing): the numbers are of correct proofs.
  int64_t bad = 0;
  for (const auto& [seq, proof] : incl) {
    const std::string leaf = merkle::LeafHash(Must(reader->Record(seq), "Record").json);
    if (!merkle::VerifyInclusion(leaf, static_cast<uint64_t>(seq - 1), static_cast<uint64_t>(n),
                                 proof, head.root)) {
      ++bad;
    }
  }
  for (const auto& [a, b, proof] : cons) {
    const std::string ra = Must(reader->RootAt(a), "RootAt");
    const std::string rb = Must(reader->RootAt(b), "RootAt");
    // b's root is itself tied to the signed head by a consistency proof to n.
    const auto to_head = Must(reader->ConsistencyProof(b, n), "ConsistencyProof");
    if (!merkle::VerifyConsistency(static_cast<uint64_t>(a), static_cast<uint64_t>(b), ra, rb,
                                   proof) ||
        !merkle::VerifyConsistency(static_cast<uint64_t>(b), static_cast<uint64_t>(n), rb,
                                   head.root, to_head)) {
      ++bad;
    }
  }
  for (const auto& [size, root] : roots) {
    const auto to_head = Must(reader->ConsistencyProof(size, n), "ConsistencyProof");
    if (!merkle::VerifyConsistency(static_cast<uint64_t>(size), static_cast<uint64_t>(n), root,
                                   head.root, to_head)) {
      ++bad;
    }
  }
  const std::string root_n = Must(reader->RootAt(n), "RootAt");
  if (root_n != head.root) ++bad;
  size_t proof_len = incl.empty() ? 0 : incl.front().second.size();
  std::printf(
      "{\"db\": \"%s\", \"tree_size\": %lld, \"db_bytes\": %lld, \"open_s\": %.2f, "
      "\"samples\": %d, \"verified\": %lld, \"bad\": %lld, \"inclusion_proof_hashes\": %zu}\n",
      db.c_str(), static_cast<long long>(n), static_cast<long long>(st_db.st_size), open_s, samples,
      static_cast<long long>(incl.size() + cons.size() + roots.size() + 1),
      static_cast<long long>(bad), proof_len);
  std::printf("%s\n%s\n%s\n%s\n%s\n%s\n%s\n", t_incl.Json("inclusion_proof").c_str(),
              t_cons.Json("consistency_proof").c_str(), t_root.Json("root_at").c_str(),
              t_size.Json("tree_size").c_str(), t_head.Json("latest_tree_head").c_str(),
              t_search_patient.Json("search_patient_newest_50").c_str(),
              t_search_agent.Json("search_agent_newest_50").c_str());
  std::fprintf(stderr, "audit_bench: the searches returned %lld records\n",
               static_cast<long long>(search_hits));
  if (bad != 0) Die(std::to_string(bad) + " proofs did not verify");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "kernel") {
    argv[1] = argv[0];
    int n = argc - 1;
    benchmark::Initialize(&n, argv + 1);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
  }
  if (cmd == "append") return AppendMain(Args(argc, argv, 2));
  if (cmd == "build") return BuildMain(Args(argc, argv, 2));
  if (cmd == "proofs") return ProofsMain(Args(argc, argv, 2));
  std::fprintf(
      stderr,
      "usage: audit_bench kernel [benchmark flags]\n"
      "       audit_bench append --dir DIR [--threads 64] [--seconds 5] [--rounds 2]\n"
      "       audit_bench build --db PATH --records N [--max-seconds S] [--inflight 4096]\n"
      "       audit_bench proofs --db PATH [--samples 2000]\n");
  return 2;
}
