#include "crypto/keyring.h"

#include <sqlite3.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "crypto/test_util.h"
#include "gtest/gtest.h"

namespace fhirward::crypto {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class KeyRingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto kek = VersionedKek::Open(NewLocalKms(dir_.path()), /*create=*/true);
    ASSERT_TRUE(kek.ok()) << kek.status();
    kek_ = std::move(*kek);
    ring_ = NewRing();
    ASSERT_NE(ring_, nullptr);
  }

  std::unique_ptr<KeyRing> NewRing(int cache_seconds = 300) {
    auto ring = KeyRing::Open({.path = dir_.File("keys.db"),
                               .kek = kek_.get(),
                               .cache_seconds = cache_seconds,
                               .on_event = [this](const KeyEvent& e) { events_.push_back(e); }});
    EXPECT_TRUE(ring.ok()) << ring.status();
    return ring.ok() ? std::move(*ring) : nullptr;
  }

  std::string Seal(KeyRing& ring, const std::vector<std::string>& patients, std::string_view text,
                   std::string_view ad = "ad") {
    auto s = ring.Seal("default", patients, text, ad);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : "";
  }

  // Every wrapped key in the vault (to look for them on disk later).
  std::vector<std::string> WrappedKeys() {
    sqlite3* db = nullptr;
    sqlite3_open(dir_.File("keys.db").c_str(), &db);
    std::vector<std::string> out;
    for (const char* sql : {"SELECT wrapped FROM data_keys WHERE wrapped IS NOT NULL",
                            "SELECT wrapped FROM tenant_keys WHERE wrapped IS NOT NULL"}) {
      sqlite3_stmt* st = nullptr;
      sqlite3_prepare_v2(db, sql, -1, &st, nullptr);
      while (sqlite3_step(st) == SQLITE_ROW) {
        out.emplace_back(static_cast<const char*>(sqlite3_column_blob(st, 0)),
                         sqlite3_column_bytes(st, 0));
      }
      sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return out;
  }

  testing_util::TempDir dir_;
  std::unique_ptr<VersionedKek> kek_;
  std::unique_ptr<KeyRing> ring_;
  std::vector<KeyEvent> events_;
};

TEST_F(KeyRingTest, SealsUnderThePatientsKeyAndBindsTheAssociatedData) {
  std::string env = Seal(*ring_, {"p1"}, "MARKER-plaintext-42", "tenant|Observation|o1|1");
  EXPECT_TRUE(KeyRing::IsRecordEnvelope(env));
  EXPECT_EQ(env.find("MARKER"), std::string::npos);
  EXPECT_EQ(env.find("p1"), std::string::npos) << "the envelope must not name its patient";
  ASSERT_EQ(KeyRing::KeyIdsOf(env).size(), 1u);

  auto opened = ring_->Open("default", env, "tenant|Observation|o1|1");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(*opened, "MARKER-plaintext-42");

  EXPECT_EQ(CodeOf(ring_->Open("default", env, "tenant|Observation|o2|1").status()),
            ErrorCode::kDecryptionFailed);
  EXPECT_EQ(CodeOf(ring_->Open("other", env, "tenant|Observation|o1|1").status()),
            ErrorCode::kDecryptionFailed)
      << "a data key of one tenant never opens another tenant's record";
  for (size_t i = 0; i < env.size(); i += 5) {
    std::string bad = env;
    bad[i] ^= 0x20;
    EXPECT_FALSE(ring_->Open("default", bad, "tenant|Observation|o1|1").ok()) << "byte " << i;
  }
  EXPECT_FALSE(
      ring_->Open("default", env.substr(0, env.size() - 1), "tenant|Observation|o1|1").ok());
  EXPECT_FALSE(ring_->Open("default", "", "x").ok());

  // One key per patient and one for the tenant; same patient → same key.
  std::string env2 = Seal(*ring_, {"p1"}, "x");
  std::string env3 = Seal(*ring_, {"p2"}, "x");
  std::string env4 = Seal(*ring_, {}, "x");
  EXPECT_EQ(KeyRing::KeyIdsOf(env2), KeyRing::KeyIdsOf(env));
  EXPECT_NE(KeyRing::KeyIdsOf(env3), KeyRing::KeyIdsOf(env));
  EXPECT_NE(KeyRing::KeyIdsOf(env4), KeyRing::KeyIdsOf(env));
  // A fresh salt per record: the same plaintext never seals to the same bytes.
  EXPECT_NE(Seal(*ring_, {"p1"}, "same"), Seal(*ring_, {"p1"}, "same"));
}

TEST_F(KeyRingTest, ErasingAPatientShredsEveryRecordThatNamesTheirKey) {
  std::string mine = Seal(*ring_, {"p1"}, "p1 only");
  std::string shared = Seal(*ring_, {"p2", "p1"}, "p1 and p2");
  std::string other = Seal(*ring_, {"p2"}, "p2 only");
  std::string tenant = Seal(*ring_, {}, "tenant");
  EXPECT_EQ(KeyRing::KeyIdsOf(shared).size(), 2u);
  auto wrapped_before = WrappedKeys();

  auto erased = ring_->ErasePatient("default", "p1");
  ASSERT_TRUE(erased.ok()) << erased.status();
  EXPECT_EQ(*erased, 1u);
  EXPECT_EQ(CodeOf(ring_->Open("default", mine, "ad").status()), ErrorCode::kErased);
  EXPECT_EQ(CodeOf(ring_->Open("default", shared, "ad").status()), ErrorCode::kErased);
  EXPECT_TRUE(ring_->Open("default", other, "ad").ok());
  EXPECT_TRUE(ring_->Open("default", tenant, "ad").ok());
  auto at = ring_->ErasedAt("default", "p1");
  ASSERT_TRUE(at.ok());
  EXPECT_TRUE(at->has_value());
  EXPECT_FALSE(ring_->ErasedAt("default", "p2")->has_value());

  // The destroyed wrapped key is nowhere in the vault's files any more.
  auto wrapped_after = WrappedKeys();
  std::string disk = Slurp(dir_.File("keys.db")) + Slurp(dir_.File("keys.db-wal"));
  int gone = 0;
  for (const auto& w : wrapped_before) {
    bool live = std::find(wrapped_after.begin(), wrapped_after.end(), w) != wrapped_after.end();
    if (live) continue;
    ++gone;
    EXPECT_EQ(disk.find(w), std::string::npos) << "a destroyed wrapped key is still on disk";
  }
  EXPECT_EQ(gone, 1);

  // A fresh ring (a restarted server) agrees; erasure is final: nothing new
  // about the patient can be sealed (alone or with another patient).
  auto fresh = NewRing();
  EXPECT_EQ(CodeOf(fresh->Open("default", mine, "ad").status()), ErrorCode::kErased);
  EXPECT_EQ(CodeOf(fresh->Seal("default", {"p1"}, "later", "ad").status()), ErrorCode::kErased);
  EXPECT_EQ(CodeOf(fresh->Seal("default", {"p2", "p1"}, "later", "ad").status()),
            ErrorCode::kErased);
  EXPECT_TRUE(fresh->Seal("default", {"p2"}, "later", "ad").ok());
  auto erasures = fresh->Erasures();
  ASSERT_TRUE(erasures.ok());
  EXPECT_EQ(*erasures, (std::vector<std::pair<std::string, std::string>>{{"default", "p1"}}));

  bool audited = false;
  for (const auto& e : events_) {
    if (e.action == "destroy" && e.kind == "data-key" && e.scope == "patient:p1") audited = true;
  }
  EXPECT_TRUE(audited);
}

TEST_F(KeyRingTest, AnErasureByAnotherProcessTakesEffectAtOnce) {
  std::string env = Seal(*ring_, {"p9"}, "cached");
  ASSERT_TRUE(ring_->Open("default", env, "ad").ok());  // key now cached
  auto other = NewRing();
  ASSERT_TRUE(other->ErasePatient("default", "p9").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(25));  // the vault is looked at every 20 ms
  EXPECT_EQ(CodeOf(ring_->Open("default", env, "ad").status()), ErrorCode::kErased);
}

TEST_F(KeyRingTest, ErasingAPatientWithoutDataLeavesATombstone) {
  auto erased = ring_->ErasePatient("default", "never-seen");
  ASSERT_TRUE(erased.ok());
  EXPECT_EQ(*erased, 0u);
  EXPECT_TRUE(ring_->ErasedAt("default", "never-seen")->has_value());
}

TEST_F(KeyRingTest, TenantRotationNewKeysAtOnceAndRewrapRetiresTheOldVersion) {
  std::string before = Seal(*ring_, {"p1"}, "before");
  std::string before_tenant = Seal(*ring_, {}, "before-tenant");
  EXPECT_TRUE(*ring_->IsCurrent(before));
  auto v = ring_->RotateTenant("default");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, 2u);
  std::string after = Seal(*ring_, {"p1"}, "after");
  EXPECT_NE(KeyRing::KeyIdsOf(after), KeyRing::KeyIdsOf(before)) << "a new data key version";
  EXPECT_FALSE(*ring_->IsCurrent(before));
  EXPECT_TRUE(*ring_->IsCurrent(after));

  auto status = ring_->Status();
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->stale_data_keys, 2u);

  auto moved = ring_->RewrapKeys();
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, 2u);
  status = ring_->Status();
  EXPECT_EQ(status->stale_data_keys, 0u);
  ASSERT_EQ(status->tenant_keys.size(), 2u);
  EXPECT_TRUE(status->tenant_keys[0].destroyed) << "v1 had no data keys left: retired";
  EXPECT_FALSE(status->tenant_keys[1].destroyed);

  // Old records still open, from a ring with nothing cached.
  auto fresh = NewRing();
  EXPECT_EQ(*fresh->Open("default", before, "ad"), "before");
  EXPECT_EQ(*fresh->Open("default", before_tenant, "ad"), "before-tenant");
  EXPECT_EQ(*fresh->Open("default", after, "ad"), "after");
  // Rewrap again: nothing left to do.
  EXPECT_EQ(*fresh->RewrapKeys(), 0u);
}

TEST_F(KeyRingTest, KekRotationRewrapThenTheOldKekCanBeDestroyed) {
  std::string env = Seal(*ring_, {"p1"}, "kek rotation");
  auto v2 = kek_->Rotate();
  ASSERT_TRUE(v2.ok());
  auto status = ring_->Status();
  EXPECT_EQ(status->stale_tenant_keys, 1u);
  auto moved = ring_->RewrapKeys();
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, 1u);
  ASSERT_TRUE(kek_->Destroy(1).ok());
  auto fresh = NewRing();
  auto opened = fresh->Open("default", env, "ad");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(*opened, "kek rotation");
}

TEST_F(KeyRingTest, DecommissionedTenantCannotBeReadOrWritten) {
  std::string env = Seal(*ring_, {"p1"}, "x");
  std::string tenant_env = Seal(*ring_, {}, "y");
  auto n = ring_->DestroyTenant("default");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 2u);
  EXPECT_EQ(CodeOf(ring_->Open("default", env, "ad").status()), ErrorCode::kErased);
  EXPECT_EQ(CodeOf(ring_->Open("default", tenant_env, "ad").status()), ErrorCode::kErased);
  EXPECT_EQ(CodeOf(ring_->Seal("default", {"p2"}, "z", "ad").status()), ErrorCode::kErased);
  EXPECT_EQ(CodeOf(ring_->RotateTenant("default").status()), ErrorCode::kErased);
  // Other tenants are unaffected.
  auto other = ring_->Seal("t2", {"p1"}, "z", "ad");
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(ring_->Open("t2", *other, "ad").ok());
  EXPECT_TRUE(WrappedKeys().size() == 2u) << "only t2's tenant and data key remain";
}

TEST_F(KeyRingTest, WithoutCacheEveryOpenUnwrapsAndCountsAreReported) {
  auto ring = NewRing(/*cache_seconds=*/0);
  std::string env = Seal(*ring, {"p1"}, "x");
  ring->ReportUnwrapCount();  // starts a new period
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ring->Open("default", env, "ad").ok());
  events_.clear();
  ring->ReportUnwrapCount();
  ASSERT_EQ(events_.size(), 2u);
  EXPECT_EQ(events_[0].kind, "kek");
  EXPECT_EQ(events_[0].count, 3u);
  EXPECT_EQ(events_[1].kind, "data-key");
  EXPECT_EQ(events_[1].count, 3u);
}

TEST_F(KeyRingTest, ManyCompartmentsFallBackToTheTenantKey) {
  std::vector<std::string> members;
  for (int i = 0; i < 40; ++i) members.push_back("m" + std::to_string(i));
  std::string env = Seal(*ring_, members, "group");
  EXPECT_EQ(KeyRing::KeyIdsOf(env), KeyRing::KeyIdsOf(Seal(*ring_, {}, "t")));
}

TEST(VersionedKek, BlobsFromBeforeVersioningOpenUnderVersionOne) {
  testing_util::TempDir dir;
  auto legacy = OpenLocalKeyFile(dir.File("kek.key"), true);
  ASSERT_TRUE(legacy.ok());
  SecretBytes dek = RandomSecret(32);
  auto old_blob = (*legacy)->Wrap(dek, "ad");
  ASSERT_TRUE(old_blob.ok());
  auto kek = VersionedKek::Open(NewLocalKms(dir.path()), false);
  ASSERT_TRUE(kek.ok()) << kek.status();
  EXPECT_TRUE((*kek)->Recognizes((*legacy)->key_id()));
  auto back = (*kek)->Unwrap(*old_blob, "ad");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->UnsafeView(), dek.UnsafeView());
  ASSERT_TRUE((*kek)->Rotate().ok());
  EXPECT_EQ(testing_util::ModeOf(dir.File("kek-v2.key")), 0600u);
  auto again = VersionedKek::Open(NewLocalKms(dir.path()), false);
  EXPECT_EQ((*again)->current_version(), 2u);
  EXPECT_TRUE((*again)->Unwrap(*old_blob, "ad").ok());
}

}  // namespace
}  // namespace fhirward::crypto
