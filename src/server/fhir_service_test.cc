// In-process tests of the request pipeline: the real SQLite store, scope
// policy and authenticator; an in-memory audit log that records what the
// service appends (and can be made to fail). The full binary over TLS is
// exercised by tests/integration.
#include "server/fhir_service.h"

#include <atomic>
#include <mutex>
#include <thread>

#include "common/encoding.h"
#include "crypto/aead.h"
#include "crypto/kms.h"
#include "crypto/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jose/jws.h"
#include "json/value.h"
#include "server/log.h"

namespace fhirward::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kIssuer[] = "https://issuer.test";
constexpr char kBase[] = "https://fhir.test";

class RecordingAudit final : public audit::AuditLog {
 public:
  absl::StatusOr<int64_t> Append(const audit::AuditRecord& r) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (fail_) return Error(ErrorCode::kAuditUnavailable, "disk full");
    records_.push_back(r);
    return static_cast<int64_t>(records_.size());
  }
  void Close() override {}
  void set_fail(bool f) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_ = f;
  }
  std::vector<audit::AuditRecord> records() {
    std::lock_guard<std::mutex> lock(mu_);
    return records_;
  }
  audit::AuditRecord last() {
    std::lock_guard<std::mutex> lock(mu_);
    return records_.back();
  }

 private:
  std::mutex mu_;
  bool fail_ = false;
  std::vector<audit::AuditRecord> records_;
};

class FhirServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    InitLogging("off");
    keys_ = testing_util::MakeTestKeys(dir_.File("kek"), dir_.File("keys.db"));
    auto store = store::OpenSqliteStore({.path = dir_.File("fhir.db"),
                                         .kek = keys_.kek.get(),
                                         .keyring = keys_.ring.get(),
                                         .index_key = &index_key_});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto key = jose::SigningKey::Generate(jose::Algorithm::kES256, "k1");
    ASSERT_TRUE(key.ok());
    key_ = std::move(*key);
    policy_ = policy::NewScopePolicyEngine();
    Build(Config{});
  }

  void Build(Config config) {
    AuthenticatorOptions ao;
    IssuerTrust t;
    t.issuer = kIssuer;
    t.audiences = {kBase};
    t.keys.Add(key_.public_key());
    t.required_typ = "at+jwt";
    ao.issuers.push_back(std::move(t));
    auth_ = std::make_unique<Authenticator>(std::move(ao), &SystemClock::Get());
    limiter_ = std::make_unique<RateLimiter>(config.rate_per_second, config.rate_burst);
    ServiceDeps d;
    d.config = config;
    d.base_url = kBase;
    d.store = store_.get();
    d.audit = &audit_;
    d.policy = policy_.get();
    d.authenticator = auth_.get();
    d.rate_limiter = limiter_.get();
    d.cursor_key = &cursor_key_;
    d.clock = &SystemClock::Get();
    d.validator = &validator_;
    service_ = std::make_unique<FhirService>(std::move(d));
  }

  std::string Token(const std::string& sub, const std::string& scope,
                    const std::string& patient = "", int64_t exp_offset = 600,
                    const std::string& aud = kBase) {
    json::Value c = json::Value::MakeObject();
    int64_t now = SystemClock::Get().NowSeconds();
    c.Set("iss", json::Value::String(kIssuer));
    c.Set("aud", json::Value::String(aud));
    c.Set("sub", json::Value::String(sub));
    c.Set("scope", json::Value::String(scope));
    c.Set("iat", json::Value::Int(now));
    c.Set("exp", json::Value::Int(now + exp_offset));
    if (!patient.empty()) c.Set("patient", json::Value::String(patient));
    auto t = jose::SignCompact(key_, c, "at+jwt");
    EXPECT_TRUE(t.ok());
    return *t;
  }

  net::HttpResponse Call(const std::string& method, const std::string& target,
                         const std::string& token, const std::string& body = "",
                         net::Headers extra = {}) {
    net::HttpRequest r;
    r.method = method;
    r.target = target;
    r.remote_ip = "127.0.0.1";
    r.tls_version = "TLSv1.3";
    if (!token.empty()) r.headers.emplace_back("Authorization", "Bearer " + token);
    if (!body.empty()) r.headers.emplace_back("Content-Type", "application/fhir+json");
    for (auto& h : extra) r.headers.push_back(h);
    r.body = body;
    return service_->Handle(std::move(r));
  }

  static std::string H(const net::HttpResponse& r, std::string_view name) {
    return std::string(net::FindHeader(r.headers, name).value_or(""));
  }
  static json::Value J(const net::HttpResponse& r) {
    auto v = json::Parse(r.body);
    EXPECT_TRUE(v.ok()) << r.body;
    return v.ok() ? *v : json::Value();
  }
  static std::string ErrorName(const net::HttpResponse& r) {
    json::Value v = J(r);
    const json::Value* issue = v.Find("issue");
    if (!issue || !issue->is_array() || issue->items().empty()) return "";
    const json::Value* details = issue->items()[0].Find("details");
    if (!details) return "";
    return std::string(details->Find("coding")->items()[0].GetString("code").value_or(""));
  }

  std::string CreatePatient(const std::string& token, const std::string& family = "Doe") {
    auto r = Call("POST", "/Patient", token,
                  R"({"resourceType":"Patient","name":[{"family":")" + family + R"("}]})");
    EXPECT_EQ(r.status, 201) << r.body;
    return std::string(J(r).GetString("id").value_or(""));
  }

  testing_util::TempDir dir_;
  testing_util::TestKeys keys_;
  SecretBytes index_key_{std::string(32, 'k')};
  std::unique_ptr<store::ResourceStore> store_;
  jose::SigningKey key_;
  std::unique_ptr<policy::PolicyEngine> policy_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<RateLimiter> limiter_;
  SecretBytes cursor_key_{std::string(32, 'c')};
  RecordingAudit audit_;
  fhir::Validator validator_;
  std::unique_ptr<FhirService> service_;
};

TEST_F(FhirServiceTest, CreateReadVreadUpdateDelete) {
  std::string t = Token("alice", "user/*.cruds");
  std::string id = CreatePatient(t);
  auto read = Call("GET", "/Patient/" + id, t);
  EXPECT_EQ(read.status, 200);
  EXPECT_EQ(H(read, "ETag"), "W/\"1\"");
  EXPECT_EQ(H(read, "Cache-Control"), "no-store");
  EXPECT_THAT(H(read, "Strict-Transport-Security"), HasSubstr("max-age="));
  auto upd = Call("PUT", "/Patient/" + id, t,
                  R"({"resourceType":"Patient","id":")" + id + R"(","active":true})");
  EXPECT_EQ(upd.status, 200) << upd.body;
  EXPECT_EQ(H(upd, "ETag"), "W/\"2\"");
  EXPECT_EQ(H(upd, "Location"), std::string(kBase) + "/Patient/" + id + "/_history/2");
  auto v1 = Call("GET", "/Patient/" + id + "/_history/1", t);
  EXPECT_EQ(v1.status, 200);
  EXPECT_THAT(v1.body, HasSubstr("Doe"));
  auto stale =
      Call("PUT", "/Patient/" + id, t, R"({"resourceType":"Patient","id":")" + id + R"("})",
           {{"If-Match", "W/\"1\""}});
  EXPECT_EQ(stale.status, 412);
  auto del = Call("DELETE", "/Patient/" + id, t);
  EXPECT_EQ(del.status, 204);
  auto gone = Call("GET", "/Patient/" + id, t);
  EXPECT_EQ(gone.status, 410);
  EXPECT_EQ(ErrorName(gone), "gone");
  auto still = Call("GET", "/Patient/" + id + "/_history/2", t);
  EXPECT_EQ(still.status, 200);
}

TEST_F(FhirServiceTest, IfNoneMatchGives304) {
  std::string t = Token("alice", "user/*.cruds");
  std::string id = CreatePatient(t);
  auto r = Call("GET", "/Patient/" + id, t, "", {{"If-None-Match", "W/\"1\""}});
  EXPECT_EQ(r.status, 304);
  EXPECT_TRUE(r.body.empty());
}

TEST_F(FhirServiceTest, InvalidResourcesAreRefusedWith422AndNotStored) {
  std::string t = Token("u", "user/*.cruds");
  auto r = Call("POST", "/Patient", t, R"({"resourceType":"Patient","gender":"man","foo":1})");
  EXPECT_EQ(r.status, 422);
  EXPECT_THAT(r.body, HasSubstr("\"OperationOutcome\""));
  EXPECT_THAT(r.body, HasSubstr("Patient.gender"));
  EXPECT_THAT(r.body, HasSubstr("Patient.foo"));
  auto h = Call("GET", "/Patient/_history", t);
  EXPECT_EQ(h.status, 200);
  EXPECT_THAT(h.body, HasSubstr("\"entry\":[]"));
  // $validate answers 200 with the same findings and stores nothing.
  auto v = Call("POST", "/Patient/$validate", t, R"({"resourceType":"Patient","gender":"man"})");
  EXPECT_EQ(v.status, 200);
  EXPECT_THAT(v.body, HasSubstr("Patient.gender"));
}

TEST_F(FhirServiceTest, ValidationModeOffStoresWhatStrictRefuses) {
  Config c;
  c.validation_mode = "off";
  Build(c);
  std::string t = Token("u", "user/*.cruds");
  EXPECT_EQ(Call("POST", "/Patient", t, R"({"resourceType":"Patient","gender":"man"})").status,
            201);
}

TEST_F(FhirServiceTest, BodyChecks) {
  std::string t = Token("alice", "user/*.cruds");
  EXPECT_EQ(Call("POST", "/Patient", t, R"({"resourceType":"Observation"})").status, 400);
  auto dup = Call("POST", "/Patient", t, R"({"resourceType":"Patient","a":1,"a":2})");
  EXPECT_EQ(dup.status, 400);
  EXPECT_EQ(ErrorName(dup), "duplicate_key");
  std::string deep(100, '[');
  EXPECT_EQ(Call("POST", "/Patient", t, R"({"resourceType":"Patient","x":)" + deep).status, 400);
  auto mismatch = Call("PUT", "/Patient/a", t, R"({"resourceType":"Patient","id":"b"})");
  EXPECT_EQ(mismatch.status, 400);
  EXPECT_EQ(ErrorName(mismatch), "id_mismatch");
  net::HttpRequest r;
  r.method = "POST";
  r.target = "/Patient";
  r.headers = {{"Authorization", "Bearer " + t}, {"Content-Type", "text/plain"}};
  r.body = "{}";
  EXPECT_EQ(service_->Handle(std::move(r)).status, 415);
  EXPECT_EQ(Call("GET", "/Patient/a", t, "", {{"Accept", "application/xml"}}).status, 406);
  EXPECT_EQ(Call("GET", "/Patient/bad_id!", t).status, 400);
  EXPECT_EQ(Call("GET", "/NotAType/1", t).status, 404);
  // Decimals come back exactly as written.
  auto obs = Call(
      "POST", "/Observation", t,
      R"({"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}})");
  EXPECT_EQ(obs.status, 201);
  EXPECT_THAT(obs.body, HasSubstr("\"value\":1.50"));
}

TEST_F(FhirServiceTest, TokensAreVerified) {
  auto none = Call("GET", "/Patient/x", "");
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(H(none, "WWW-Authenticate"), "Bearer realm=\"fhirward\"");
  auto expired = Call("GET", "/Patient/x", Token("a", "user/*.rs", "", -3600));
  EXPECT_EQ(expired.status, 401);
  EXPECT_THAT(H(expired, "WWW-Authenticate"), HasSubstr("error=\"invalid_token\""));
  EXPECT_EQ(Call("GET", "/Patient/x", Token("a", "user/*.rs", "", 600, "https://other")).status,
            401);
  std::string t = Token("a", "user/*.rs");
  std::string tampered = t.substr(0, t.size() - 2) + (t.back() == 'A' ? "BB" : "AA");
  EXPECT_EQ(Call("GET", "/Patient/x", tampered).status, 401);
  // alg=none with the same claims.
  std::string none_token = Base64UrlEncode(R"({"alg":"none","typ":"at+jwt"})") + "." +
                           t.substr(t.find('.') + 1, t.rfind('.') - t.find('.') - 1) + ".";
  EXPECT_EQ(Call("GET", "/Patient/x", none_token).status, 401);
  EXPECT_EQ(Call("GET", "/Patient/x?access_token=" + t, "").status, 400);
  auto rec = audit_.last();
  EXPECT_THAT(rec.ToJson(), Not(HasSubstr(t.substr(0, 40))));
}

TEST_F(FhirServiceTest, ScopesAndPatientCompartment) {
  std::string admin = Token("admin", "user/*.cruds");
  std::string p1 = CreatePatient(admin, "One");
  std::string p2 = CreatePatient(admin, "Two");
  auto obs2 = Call(
      "POST", "/Observation", admin,
      R"({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/)" +
          p2 + R"("}})");
  ASSERT_EQ(obs2.status, 201);
  std::string obs2_id(J(obs2).GetString("id").value_or(""));

  std::string pt = Token("pat", "patient/*.cruds", p1);
  EXPECT_EQ(Call("GET", "/Patient/" + p1, pt).status, 200);
  EXPECT_EQ(Call("GET", "/Patient/" + p2, pt).status, 404);
  EXPECT_EQ(audit_.last().outcome, "denied");
  EXPECT_EQ(Call("GET", "/Observation/" + obs2_id, pt).status, 404);
  auto write_other = Call(
      "POST", "/Observation", pt,
      R"({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/)" +
          p2 + R"("}})");
  EXPECT_EQ(write_other.status, 403);
  auto hist = Call("GET", "/_history", pt);
  ASSERT_EQ(hist.status, 200);
  EXPECT_THAT(hist.body, HasSubstr(p1));
  EXPECT_THAT(hist.body, Not(HasSubstr(p2)));

  std::string readonly = Token("r", "user/Patient.rs");
  auto denied = Call("DELETE", "/Patient/" + p1, readonly);
  EXPECT_EQ(denied.status, 403);
  EXPECT_THAT(H(denied, "WWW-Authenticate"), HasSubstr("insufficient_scope"));
  EXPECT_EQ(Call("GET", "/Observation/" + obs2_id, readonly).status, 403);
}

TEST_F(FhirServiceTest, IdempotencyKeyReplaysAndRejectsReuse) {
  std::string t = Token("alice", "user/*.cruds");
  std::string body = R"({"resourceType":"Patient","name":[{"family":"Idem"}]})";
  auto first = Call("POST", "/Patient", t, body, {{"Idempotency-Key", "k-1"}});
  ASSERT_EQ(first.status, 201);
  auto again = Call("POST", "/Patient", t, body, {{"Idempotency-Key", "k-1"}});
  EXPECT_EQ(again.status, 201);
  EXPECT_EQ(again.body, first.body);
  EXPECT_EQ(H(again, "Idempotent-Replayed"), "true");
  EXPECT_EQ(H(again, "Location"), H(first, "Location"));
  auto other =
      Call("POST", "/Patient", t, R"({"resourceType":"Patient"})", {{"Idempotency-Key", "k-1"}});
  EXPECT_EQ(other.status, 422);
  // The same key from another principal is a different key.
  auto bob =
      Call("POST", "/Patient", Token("bob", "user/*.cruds"), body, {{"Idempotency-Key", "k-1"}});
  EXPECT_EQ(bob.status, 201);
  EXPECT_NE(J(bob).GetString("id"), J(first).GetString("id"));
  auto hist = Call("GET", "/Patient/_history", t);
  EXPECT_EQ(J(hist).Find("entry")->items().size(), 2u);
}

TEST_F(FhirServiceTest, HistoryPagesWithCursorBoundToPrincipal) {
  std::string t = Token("alice", "user/*.cruds");
  std::string id = CreatePatient(t);
  for (int i = 0; i < 6; ++i) {
    ASSERT_EQ(Call("PUT", "/Patient/" + id, t, R"({"resourceType":"Patient","id":")" + id + R"("})")
                  .status,
              200);
  }
  std::string next = "/Patient/" + id + "/_history?_count=3";
  std::set<std::string> versions;
  std::string cursor_url;
  while (!next.empty()) {
    auto page = Call("GET", next, t);
    ASSERT_EQ(page.status, 200) << page.body;
    json::Value b = J(page);
    for (const auto& e : b.Find("entry")->items()) {
      versions.insert(
          std::string(e.Find("resource")->Find("meta")->GetString("versionId").value()));
    }
    next.clear();
    for (const auto& l : b.Find("link")->items()) {
      if (l.GetString("relation") == "next") {
        next = std::string(l.GetString("url").value()).substr(std::string(kBase).size());
        cursor_url = next;
      }
    }
  }
  EXPECT_EQ(versions.size(), 7u);
  ASSERT_FALSE(cursor_url.empty());
  EXPECT_EQ(Call("GET", cursor_url, Token("mallory", "user/*.cruds")).status, 400);
  std::string altered = cursor_url;
  altered[altered.find("_cursor=") + 10] ^= 1;
  EXPECT_EQ(Call("GET", altered, t).status, 400);
}

TEST_F(FhirServiceTest, NoResponseWithoutDurableAudit) {
  std::string t = Token("alice", "user/*.cruds");
  std::string id = CreatePatient(t, "Secretname");
  audit_.set_fail(true);
  auto r = Call("GET", "/Patient/" + id, t);
  EXPECT_EQ(r.status, 503);
  EXPECT_THAT(r.body, Not(HasSubstr("Secretname")));
  audit_.set_fail(false);
  EXPECT_EQ(Call("GET", "/Patient/" + id, t).status, 200);
}

TEST_F(FhirServiceTest, EveryRequestIsAuditedWithoutPayloadOrToken) {
  std::string t = Token("alice", "user/*.cruds");
  size_t before = audit_.records().size();
  std::string id = CreatePatient(t, "Payloadname");
  Call("GET", "/Patient/" + id, t, "",
       {{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}});
  Call("GET", "/Patient/" + id, "");
  auto recs = audit_.records();
  ASSERT_EQ(recs.size(), before + 3);
  EXPECT_EQ(recs[before].action, "create");
  EXPECT_EQ(recs[before].resource_id, id);
  EXPECT_EQ(recs[before].status_code, 201);
  EXPECT_EQ(recs[before].policy_id, "smart-scopes@1");
  EXPECT_EQ(recs[before + 1].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(recs[before + 1].count, 1);
  EXPECT_EQ(recs[before + 2].outcome, "unauthenticated");
  for (const auto& r : recs) {
    EXPECT_THAT(r.ToJson(), Not(HasSubstr("Payloadname")));
    EXPECT_THAT(r.ToJson(), Not(HasSubstr(t.substr(t.find('.') + 1, 30))));
  }
}

TEST_F(FhirServiceTest, RequireIfMatchAndUpdateCreateSettings) {
  Config c;
  c.require_if_match = true;
  c.update_create = false;
  Build(c);
  std::string t = Token("alice", "user/*.cruds");
  std::string id = CreatePatient(t);
  auto r = Call("PUT", "/Patient/" + id, t, R"({"resourceType":"Patient","id":")" + id + R"("})");
  EXPECT_EQ(r.status, 428);
  auto create = Call("PUT", "/Patient/new-one", t, R"({"resourceType":"Patient","id":"new-one"})",
                     {{"If-Match", "W/\"1\""}});
  EXPECT_EQ(create.status, 405);
}

TEST_F(FhirServiceTest, RateLimitAnswers429WithRetryAfter) {
  Config c;
  c.rate_per_second = 1;
  c.rate_burst = 2;
  Build(c);
  std::string t = Token("alice", "user/*.cruds");
  int limited = 0;
  std::string retry;
  for (int i = 0; i < 6; ++i) {
    auto r = Call("GET", "/Patient/x", t);
    if (r.status == 429) {
      ++limited;
      retry = H(r, "Retry-After");
    }
  }
  EXPECT_GE(limited, 3);
  EXPECT_EQ(retry, "1");
}

TEST_F(FhirServiceTest, ConcurrentConditionalUpdatesOneWins) {
  std::string t = Token("alice", "user/*.cruds");
  std::string id = CreatePatient(t);
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      auto r =
          Call("PUT", "/Patient/" + id, t, R"({"resourceType":"Patient","id":")" + id + R"("})",
               {{"If-Match", "W/\"1\""}});
      (r.status == 200 ? ok : failed)++;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 1);
  EXPECT_EQ(failed.load(), 7);
}

}  // namespace
}  // namespace fhirward::server

namespace fhirward::server {
namespace {

TEST_F(FhirServiceTest, ConfinedWritesCannotProbeOtherCompartments) {
  std::string admin = Token("admin", "user/*.cruds");
  std::string p1 = CreatePatient(admin, "One");
  std::string p2 = CreatePatient(admin, "Two");
  auto obs = Call(
      "POST", "/Observation", admin,
      R"({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/)" +
          p2 + R"("}})");
  ASSERT_EQ(obs.status, 201);
  std::string hidden(J(obs).GetString("id").value_or(""));
  std::string pt = Token("pat", "patient/*.cruds", p1);
  std::string body_for =
      R"({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/)" +
      p1 + R"("},"id":")";
  auto put_hidden = Call("PUT", "/Observation/" + hidden, pt, body_for + hidden + "\"}");
  auto put_absent = Call("PUT", "/Observation/nope", pt, body_for + "nope\"}");
  EXPECT_EQ(put_hidden.status, 404);
  EXPECT_EQ(put_absent.status, 404);
  EXPECT_EQ(put_hidden.body, put_absent.body);
  auto del_hidden = Call("DELETE", "/Observation/" + hidden, pt);
  auto del_absent = Call("DELETE", "/Observation/nope", pt);
  EXPECT_EQ(del_hidden.status, 404);
  EXPECT_EQ(del_hidden.body, del_absent.body);
  // The other patient's resource is untouched.
  auto still = Call("GET", "/Observation/" + hidden, admin);
  EXPECT_EQ(still.status, 200);
  EXPECT_EQ(H(still, "ETag"), "W/\"1\"");
}

TEST_F(FhirServiceTest, FailedAuthenticationsAreThrottledPerAddress) {
  Config c;
  c.rate_per_second = 1;
  c.rate_burst = 3;
  Build(c);
  std::string known = Token("alice", "user/*.cruds");
  ASSERT_EQ(Call("GET", "/Patient/x", known).status, 404);  // verified once: now cached
  std::string fresh = Token("bob", "user/*.cruds");
  int throttled = 0;
  for (int i = 0; i < 8; ++i) {
    auto r = Call("GET", "/Patient/x", "not-a-jwt");
    if (r.status == 429) {
      ++throttled;
      EXPECT_FALSE(H(r, "Retry-After").empty());
    }
  }
  EXPECT_GE(throttled, 4);
  // The address is out of failure budget: a token that would need a
  // signature check waits, one verified before goes through.
  EXPECT_EQ(Call("GET", "/Patient/x", fresh).status, 429);
  EXPECT_EQ(Call("GET", "/Patient/x", known).status, 404);
  // The capability statement has its own per-address budget.
  int meta_throttled = 0;
  for (int i = 0; i < 6; ++i) meta_throttled += Call("GET", "/metadata", "").status == 429;
  EXPECT_GE(meta_throttled, 2);
}

}  // namespace
}  // namespace fhirward::server

namespace fhirward::server {
namespace {

TEST_F(FhirServiceTest, AbandonedIdempotencyReservationDoesNotBlockTheKey) {
  std::string t = Token("alice", "user/*.cruds");
  // What a request that died mid-write leaves behind: a pending reservation.
  // PrincipalKey: length-prefixed issuer, client id, subject, patient.
  std::string principal_key =
      std::to_string(std::string(kIssuer).size()) + ":" + kIssuer + "0:" + "5:alice" + "0:";
  std::string client = HexEncode(crypto::Sha256(principal_key));
  store::IdempotencyRecord pending;
  pending.request_hash = "whatever";
  pending.status = 0;
  pending.response_headers = "pending:x";
  pending.created_at = FormatInstant(SystemClock::Get().Now() - std::chrono::minutes(10));
  ASSERT_TRUE(store_->PutIdempotency("default", client, "k-dead", pending).ok());
  auto r =
      Call("POST", "/Patient", t, R"({"resourceType":"Patient"})", {{"Idempotency-Key", "k-dead"}});
  EXPECT_EQ(r.status, 201) << r.body;
  // A fresh reservation of the same request still means "in progress".
  std::string body = R"({"resourceType":"Patient"})";
  pending.request_hash = crypto::Sha256(std::string("POST") + '\0' + "/Patient" + '\0' + body);
  pending.created_at = FormatInstant(SystemClock::Get().Now());
  ASSERT_TRUE(store_->PutIdempotency("default", client, "k-live", pending).ok());
  auto busy = Call("POST", "/Patient", t, body, {{"Idempotency-Key", "k-live"}});
  EXPECT_EQ(busy.status, 409);
}

}  // namespace
}  // namespace fhirward::server
