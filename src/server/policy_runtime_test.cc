#include "server/policy_runtime.h"

#include <fstream>
#include <iterator>

#include "crypto/kms.h"
#include "crypto/test_util.h"
#include "gtest/gtest.h"

namespace fhirward::server {
namespace {

class BreakGlassStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto kek = crypto::OpenLocalKeyFile(dir_.File("kek.key"), true);
    ASSERT_TRUE(kek.ok());
    kek_ = std::move(*kek);
    auto store = BreakGlassStore::Open(dir_.File("policy.db"), kek_.get());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  policy::BreakGlassEpisode Episode(int64_t started) {
    policy::BreakGlassEpisode e;
    e.issuer = "https://iss";
    e.subject = "dr-ada";
    e.client_id = "ehr";
    e.role = "clinician";
    e.reason = "Unconscious patient in the ED, care team unreachable";
    e.purposes = "ETREAT";
    e.started = started;
    e.expires = started + 3600;
    return e;
  }
  testing_util::TempDir dir_;
  std::unique_ptr<crypto::KeyEncryptionService> kek_;
  std::unique_ptr<BreakGlassStore> store_;
};

TEST_F(BreakGlassStoreTest, OpenActiveListReview) {
  auto opened = store_->Open(Episode(1000));
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->id.rfind("bg-", 0), 0u);
  auto active = store_->Active("https://iss", "dr-ada", "ehr", 1500);
  ASSERT_TRUE(active.ok());
  ASSERT_TRUE(active->has_value());
  EXPECT_EQ((*active)->reason, "Unconscious patient in the ED, care team unreachable");
  // The same subject at another issuer, another client of the same user, and
  // after expiry: none.
  EXPECT_FALSE(store_->Active("https://other", "dr-ada", "ehr", 1500)->has_value());
  EXPECT_FALSE(store_->Active("https://iss", "dr-ada", "other-app", 1500)->has_value());
  EXPECT_FALSE(store_->Active("https://iss", "dr-ada", "ehr", 4600)->has_value());
  // The justification is sealed on disk.
  store_.reset();  // flush and close
  std::ifstream in(dir_.File("policy.db"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_FALSE(bytes.empty());
  EXPECT_EQ(bytes.find("Unconscious"), std::string::npos);
  auto reopened = BreakGlassStore::Open(dir_.File("policy.db"), kek_.get());
  ASSERT_TRUE(reopened.ok());
  store_ = std::move(*reopened);

  auto pending = store_->List(true);
  ASSERT_TRUE(pending.ok());
  ASSERT_EQ(pending->size(), 1u);
  EXPECT_TRUE(store_->Review(opened->id, "aud", "justified", "ok", 1600).ok());
  EXPECT_TRUE(store_->List(true)->empty());
  EXPECT_FALSE(store_->Review(opened->id, "aud", "justified", "again", 1700).ok());
  EXPECT_FALSE(store_->Review("bg-none", "aud", "justified", "x", 1700).ok());
  // A justified episode stays open until it expires.
  EXPECT_TRUE(store_->Active("https://iss", "dr-ada", "ehr", 1800)->has_value());
}

TEST_F(BreakGlassStoreTest, UnjustifiedEndsTheEpisode) {
  auto opened = store_->Open(Episode(1000));
  ASSERT_TRUE(opened.ok());
  ASSERT_TRUE(store_->Review(opened->id, "aud", "unjustified", "no emergency", 1200).ok());
  EXPECT_FALSE(store_->Active("https://iss", "dr-ada", "ehr", 1201)->has_value());
  auto all = store_->List(false);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].outcome, "unjustified");
  EXPECT_EQ((*all)[0].episode.expires, 1200);
}

}  // namespace
}  // namespace fhirward::server
